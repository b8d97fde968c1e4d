"""Importance scores per weight, one :class:`Criterion` subclass each, found by name in a registry.

Built-in: magnitude (L1), first-order Taylor |w·∂L/∂w|, Wanda |W_ij|·‖X_j‖₂ (weights times the norm of their input
feature over calibration data; Sun et al. 2024), random (a control); SparseGPT (``autoprune.pruning.sparsegpt``)
and RIA (``autoprune.pruning.ria``) register themselves from their own modules. A user's criterion is a
``Criterion`` subclass registered with ``@register_criterion("name")``, or named ``package.module:Class`` in a
space's ``criteria`` — like a user's ``Task``.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from autoprune.models.layers import RNN_TYPES, is_transposed, out_by_in, unit_module, weight_of
from autoprune.plugins import Registry
from autoprune.tasks.data import Split
from autoprune.tasks.training import LossFn

__all__ = ["CALIBRATION_WINDOWS", "CRITERIA", "ActivationCriterion", "Criterion", "Magnitude", "RandomScores", "Taylor",
           "Wanda", "activation_problem", "criterion_for", "importance", "input_norms", "input_sums",
           "register_criterion", "row_wise"]

# calibration examples (token windows, the first of the train split) whose activations the activation-aware
# criteria read: Wanda's and RIA's input norms, SparseGPT's Hessians (and the level databases built from them)
CALIBRATION_WINDOWS = 32


class Criterion(ABC):
    """How important each weight of a unit is (higher = kept longer). Subclass it and implement :meth:`scores`.

    Class attributes say how the scores are used: ``row_wise`` compares weights within each output row (Wanda's
    comparison group) instead of across the unit; ``needs_data`` says the scores read training data (a policy
    applied without data refuses it); ``activations`` says they read each unit's input activations, which only a
    Linear (or Hugging Face Conv1D) unit has (others are refused in one line before any training);
    ``updates_weights`` marks a pruner that also rewrites the kept weights (SparseGPT) and is not a score.
    """

    name: ClassVar[str] = ""
    row_wise: ClassVar[bool] = False
    needs_data: ClassVar[bool] = True
    activations: ClassVar[bool] = False
    updates_weights: ClassVar[bool] = False

    @abstractmethod
    def scores(self, model: nn.Module, layers: list[str], data: Split | None, *, seed: int = 0,
               loss_fn: LossFn = nn.functional.cross_entropy) -> dict[str, torch.Tensor]:
        """A score per weight of each named unit (shaped like its weight; higher = more important)."""


# criteria defined in their own module register themselves when it is imported
CRITERIA: Registry[Criterion] = Registry("criterion", Criterion,
                                         ("autoprune.pruning.sparsegpt", "autoprune.pruning.ria"))
register_criterion = CRITERIA.register


def criterion_for(name: str) -> Criterion:
    """The criterion registered as ``name``, or the ``package.module:Class`` a user named; a ValueError names what
    is wrong (unknown name, module that does not import, a class that is not a Criterion)."""
    cls = CRITERIA.resolve(name)
    cls.name = cls.name or name
    return cls()


def row_wise(criterion: str) -> bool:
    """Whether the criterion compares weights within each output row (Wanda) rather than across the layer."""
    return criterion_for(criterion).row_wise


def activation_problem(model: nn.Module, layers: list[str], criterion: str) -> str | None:
    """Why ``criterion``, which reads each unit's input activations, cannot score ``layers`` (the first unit that is
    not a Linear or a Hugging Face Conv1D), or None when it can."""
    for f in layers:
        module = unit_module(model, f)
        if isinstance(module, RNN_TYPES):
            return (f"{criterion} reads each layer's input features; {f} is a recurrent matrix (use magnitude or "
                    "taylor for recurrent units)")
        if not (isinstance(module, nn.Linear) or is_transposed(model, f)):
            return (f"{criterion} scores Linear layers only; {f} is {type(module).__name__} (exclude it in "
                    "layers.exclude, or use magnitude or taylor)")
    return None


def importance(model: nn.Module, layers: list[str], criterion: str, data: Split | None = None, seed: int = 0,
               loss_fn: LossFn = nn.functional.cross_entropy) -> dict[str, torch.Tensor]:
    """Score every weight of each named layer with the named criterion (higher = more important); shapes match the
    weights. ``loss_fn``: the task's loss, whose gradients the Taylor criterion uses."""
    crit = criterion_for(criterion)
    if crit.needs_data and data is None:
        raise ValueError(f"the {criterion} criterion needs training data")
    problem = activation_problem(model, layers, criterion) if crit.activations else None
    if problem:
        raise ValueError(problem)
    return crit.scores(model, layers, data, seed=seed, loss_fn=loss_fn)


@register_criterion("magnitude")
class Magnitude(Criterion):
    """|w| (L1 magnitude): data-free."""

    needs_data = False

    def scores(self, model: nn.Module, layers: list[str], data: Split | None, *, seed: int = 0,
               loss_fn: LossFn = nn.functional.cross_entropy) -> dict[str, torch.Tensor]:
        """|w| of every weight."""
        return {f: weight_of(model, f).detach().abs() for f in layers}


@register_criterion("random")
class RandomScores(Criterion):
    """Uniform random scores, seeded (a control: what an allocation is worth without a criterion)."""

    needs_data = False

    def scores(self, model: nn.Module, layers: list[str], data: Split | None, *, seed: int = 0,
               loss_fn: LossFn = nn.functional.cross_entropy) -> dict[str, torch.Tensor]:
        """One seeded uniform draw per weight."""
        gen = torch.Generator().manual_seed(seed)
        out = {}
        for f in layers:
            w = weight_of(model, f)
            out[f] = torch.rand(w.shape, generator=gen).to(w.device)
        return out


class ActivationCriterion(Criterion):
    """A score from each unit's weight magnitudes |W| (read as out × in) and the norms ‖X_j‖₂ of its input features
    over the first calibration windows of the train split, compared within each output row. Subclasses say how the
    two combine (:meth:`weigh`)."""

    row_wise = True
    activations = True

    @abstractmethod
    def weigh(self, magnitudes: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        """Scores (out, in) from |W| (out, in) and the input norms (in,)."""

    def scores(self, model: nn.Module, layers: list[str], data: Split | None, *, seed: int = 0,
               loss_fn: LossFn = nn.functional.cross_entropy) -> dict[str, torch.Tensor]:
        """:meth:`weigh` of every unit, returned in the weight's own layout."""
        assert data is not None
        norms = input_norms(model, layers, data.x[:CALIBRATION_WINDOWS])
        out = {}
        for f in layers:
            transposed = is_transposed(model, f)
            w = out_by_in(weight_of(model, f).detach(), transposed).abs()
            out[f] = out_by_in(self.weigh(w, norms[f].to(w.dtype)), transposed)
        return out


@register_criterion("wanda")
class Wanda(ActivationCriterion):
    """|W_ij|·‖X_j‖₂ (Sun et al. 2024)."""

    def weigh(self, magnitudes: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        """Weight magnitudes times their input feature's norm."""
        return magnitudes * norms[None, :]


@register_criterion("taylor")
class Taylor(Criterion):
    """Σ over a few batches of |w · ∂L/∂w| (Molchanov et al. 2019), gradients w.r.t. the effective weight."""

    def __init__(self, batches: int = 4, batch_size: int = 64) -> None:
        self.batches, self.batch_size = batches, batch_size

    def scores(self, model: nn.Module, layers: list[str], data: Split | None, *, seed: int = 0,
               loss_fn: LossFn = nn.functional.cross_entropy) -> dict[str, torch.Tensor]:
        """Taylor scores over ``batches`` random batches of ``batch_size`` training examples."""
        assert data is not None
        scores = {f: torch.zeros_like(weight_of(model, f)) for f in layers}
        gen = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(data), generator=gen).to(data.x.device)
        was_training = model.training
        model.eval()
        for b in range(self.batches):
            idx = perm[b * self.batch_size:(b + 1) * self.batch_size]
            if idx.numel() == 0:
                break
            with parametrize.cached():  # one effective-weight tensor per layer, shared with the forward pass
                live = {f: weight_of(model, f) for f in layers}
                loss = loss_fn(model(data.x[idx]), data.y[idx])
            grads = torch.autograd.grad(loss, list(live.values()), allow_unused=True)
            for (f, w), g in zip(live.items(), grads, strict=True):
                if g is not None:
                    scores[f] += (w.detach() * g).abs()
        model.train(was_training)
        return scores


class _PassEnds(Exception):
    """Raised by the ``stop_after`` module's forward hook: what the statistics need has run."""


@torch.no_grad()
def input_sums(model: nn.Module, layers: list[str], inputs: torch.Tensor,
               stat: Callable[[torch.Tensor], torch.Tensor], batch_size: int = 8, stop_after: str | None = None
               ) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Σ ``stat(X)`` of each layer's input rows X (tokens × in_features) over every example of ``inputs`` (forward
    hooks, batches of ``batch_size``, sums in float64 so they do not depend on how the batches are cut), and how
    many rows each layer saw. ``stop_after``: a module whose forward ends each batch's pass (the decoder block that
    holds ``layers``: the blocks after it and the head would compute nothing the sums use; a module run more than
    once per forward, e.g. a block shared across depth, ends the pass at its first run)."""
    sums: dict[str, torch.Tensor] = {}
    rows: dict[str, int] = {}

    def hook(fqn: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], None]:
        def record(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1])
            sums[fqn] = sums.get(fqn, 0) + stat(x).double()
            rows[fqn] = rows.get(fqn, 0) + x.shape[0]
        return record

    def end(*_: object) -> None:
        raise _PassEnds

    handles = [unit_module(model, f).register_forward_hook(hook(f)) for f in layers]
    if stop_after is not None:  # registered last: on a unit that is its own group, its sums are recorded first
        handles.append(model.get_submodule(stop_after).register_forward_hook(end))
    was_training = model.training
    model.eval()
    try:
        for i in range(0, inputs.shape[0], batch_size):
            with contextlib.suppress(_PassEnds):
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
