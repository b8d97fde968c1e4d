"""Importance scores per weight: magnitude (L1), first-order Taylor |w·∂L/∂w|, Wanda |W_ij|·‖X_j‖₂ (weights times
the norm of their input feature over calibration data; Sun et al. 2024), random (a control)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils import parametrize

from autoprune.config.policy import Criterion
from autoprune.models.layers import RNN_TYPES, is_transposed, unit_module, weight_of
from autoprune.tasks.data import Split
from autoprune.tasks.training import LossFn

__all__ = ["WANDA_WINDOWS", "importance", "input_norms", "input_sums", "row_wise"]

WANDA_WINDOWS = 32  # calibration examples (token windows) whose activations Wanda reads: the first of the train split


def row_wise(criterion: Criterion) -> bool:
    """Whether the criterion compares weights within each output row (Wanda) rather than across the layer."""
    return criterion == "wanda"


def importance(model: nn.Module, layers: list[str], criterion: Criterion, data: Split | None = None,
               batches: int = 4, batch_size: int = 64, seed: int = 0,
               loss_fn: LossFn = nn.functional.cross_entropy) -> dict[str, torch.Tensor]:
    """Score every weight of each named layer (higher = more important); shapes match the weights.
    ``loss_fn``: the task's loss, whose gradients the Taylor criterion uses."""
    weights = {f: weight_of(model, f) for f in layers}
    if criterion == "magnitude":
        return {f: w.detach().abs() for f, w in weights.items()}
    if criterion == "random":
        gen = torch.Generator().manual_seed(seed)
        return {f: torch.rand(w.shape, generator=gen).to(w.device) for f, w in weights.items()}
    if data is None:
        raise ValueError(f"the {criterion} criterion needs training data")
    if criterion == "wanda":
        unsupported = [f for f in layers if isinstance(unit_module(model, f), RNN_TYPES)]
        if unsupported:
            raise ValueError(f"wanda reads each layer's input features; {unsupported[0]} is a recurrent matrix "
                             "(use magnitude or taylor for recurrent units)")
        norms = input_norms(model, layers, data.x[:WANDA_WINDOWS])
        return {f: w.detach().abs() * _per_input(norms[f].to(w.dtype), is_transposed(model, f))
                for f, w in weights.items()}
    return _taylor(model, weights, data, batches, batch_size, seed, loss_fn)


def _per_input(norms: torch.Tensor, transposed: bool) -> torch.Tensor:
    """An input-feature vector broadcast over a weight: (1, in) for (out, in), (in, 1) for a Conv1D's (in, out)."""
    return norms[:, None] if transposed else norms[None, :]


def _taylor(model: nn.Module, weights: dict[str, torch.Tensor], data: Split, batches: int,
            batch_size: int, seed: int, loss_fn: LossFn = nn.functional.cross_entropy) -> dict[str, torch.Tensor]:
    """Σ over a few batches of |w · ∂L/∂w| (Molchanov et al. 2019), gradients taken w.r.t. the effective weight."""
    scores = {f: torch.zeros_like(w) for f, w in weights.items()}
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(data), generator=gen).to(data.x.device)
    was_training = model.training
    model.eval()
    for b in range(batches):
        idx = perm[b * batch_size:(b + 1) * batch_size]
        if idx.numel() == 0:
            break
        with parametrize.cached():  # one effective-weight tensor per layer, shared with the forward pass
            live = {f: weight_of(model, f) for f in weights}
            loss = loss_fn(model(data.x[idx]), data.y[idx])
        grads = torch.autograd.grad(loss, list(live.values()), allow_unused=True)
        for (f, w), g in zip(live.items(), grads, strict=True):
            if g is not None:
                scores[f] += (w.detach() * g).abs()
    model.train(was_training)
    return scores


@torch.no_grad()
def input_sums(model: nn.Module, layers: list[str], inputs: torch.Tensor,
               stat: Callable[[torch.Tensor], torch.Tensor], batch_size: int = 8
               ) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Σ ``stat(X)`` of each layer's input rows X (tokens × in_features) over every example of ``inputs`` (forward
    hooks, batches of ``batch_size``, sums in float64 so they do not depend on how the batches are cut), and how
    many rows each layer saw."""
    sums: dict[str, torch.Tensor] = {}
    rows: dict[str, int] = {}

    def hook(fqn: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], None]:
        def record(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1])
            sums[fqn] = sums.get(fqn, 0) + stat(x).double()
            rows[fqn] = rows.get(fqn, 0) + x.shape[0]
        return record

    handles = [unit_module(model, f).register_forward_hook(hook(f)) for f in layers]
    was_training = model.training
    model.eval()
    try:
        for i in range(0, inputs.shape[0], batch_size):
            model(inputs[i:i + batch_size])
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return sums, rows


def input_norms(model: nn.Module, layers: list[str], inputs: torch.Tensor, batch_size: int = 8
                ) -> dict[str, torch.Tensor]:
    """‖X_j‖₂ of each Linear's input feature j over every token of ``inputs``."""
    sums, _ = input_sums(model, layers, inputs, lambda x: x.double().pow(2).sum(0), batch_size)
    return {f: sums[f].sqrt().float() for f in layers}
