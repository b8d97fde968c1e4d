"""Importance scores per weight: magnitude (L1), first-order Taylor |w·∂L/∂w|, random (a control)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from autoprune.config.policy import Criterion
from autoprune.models.zoo import weight_of
from autoprune.tasks.data import Split
from autoprune.tasks.training import LossFn

__all__ = ["importance"]


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
        raise ValueError("the taylor criterion needs training data")
    return _taylor(model, weights, data, batches, batch_size, seed, loss_fn)


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
