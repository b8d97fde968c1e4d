"""Drawing one candidate policy from a search space (no torch, no optuna import): the target on the user's grid or
range, per-layer (or per-group) preferences anchored on a heuristic and projected onto the budget, and the recipe
choices. Anything with ``suggest_float`` and ``suggest_categorical`` suggests: an Optuna trial, a ``FixedTrial``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from autoprune.config.budget import project_to_budget, snap_to_levels, weighted_sparsity
from autoprune.config.policy import Policy
from autoprune.config.space import SearchSpace

__all__ = ["SampleContext", "Suggest", "choose", "fixed_choices", "on_levels", "recipe_choices", "sample",
           "sample_target", "unit_group"]


class Suggest(Protocol):
    """The part of ``optuna.Trial`` that sampling needs (``optuna.trial.FixedTrial`` fits too)."""

    def suggest_float(self, name: str, low: float, high: float) -> float: ...

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...


@dataclass(frozen=True)
class SampleContext:
    """What sampling needs to know about the model: layer sizes, bounds and anchor densities."""

    model: str
    fingerprint: str
    sizes: dict[str, int]  # fqn -> number of weights
    bounds: dict[str, tuple[float, float]]  # fqn -> [min, max] ratio
    anchor: Callable[[float], dict[str, float]] | None = None  # target -> anchor heuristic's ratios
    shapes: dict[str, list[int]] | None = None  # weight shapes of all prunable layers (copied into policies)
    dense_key: str = ""  # the dense model's key (copied into policies, checked by apply)
    levels: tuple[float, float] | None = None  # (step, top) of a level store that needs stored levels (SparseGPT)
    anchors: dict[str, Callable[[float], dict[str, float]]] | None = None  # a searched anchor: name -> allocation

    @property
    def anchor_choices(self) -> list[str]:
        """The anchors a candidate chooses between (empty when the anchor is fixed)."""
        return list(self.anchors) if self.anchors is not None and len(self.anchors) > 1 else []

    def anchor_prefs(self, target: float, name: str | None = None) -> dict[str, float]:
        """Log-densities of the anchor allocation at ``target`` (all zero without an anchor); ``name``: which of a
        searched anchor's heuristics (default: the fixed one)."""
        alloc = self.anchors[name] if name is not None and self.anchors else self.anchor
        if alloc is None:
            return dict.fromkeys(self.sizes, 0.0)
        return {f: math.log(max(1.0 - r, 1e-6)) for f, r in alloc(target).items()}


def sample(space: SearchSpace, suggest: Suggest, ctx: SampleContext,
           ratios_for: Callable[[float], dict[str, float]] | None = None) -> Policy:
    """Draw one candidate policy from ``space`` (parameter names are MLflow-safe: ``pref/<fqn>``).

    With ``ratios_for`` (a heuristic allocation) only the target is sampled and the heuristic fills the layers.
    """
    criterion = choose(suggest, "criterion", list(space.criteria))
    sched_labels = [s.label for s in space.schedules]
    schedule = space.schedules[sched_labels.index(choose(suggest, "schedule", sched_labels))]
    if space.ladder is not None:  # the production epochs are fixed; rungs only shorten them
        epochs = space.ladder.epochs[-1]
    else:
        epochs = float(choose(suggest, "ft_epochs", list(space.finetune.epochs)))
    lr_scale = float(choose(suggest, "ft_lr_scale", list(space.finetune.lr_scale)))
    decay = choose(suggest, "ft_decay", list(space.finetune.decay))
    distill = float(choose(suggest, "ft_distill", list(space.finetune.distill)))
    ratios = ratios_for(sample_target(space, suggest)) if ratios_for else _sample_ratios(space, suggest, ctx)
    if ctx.levels is not None and space.granularity.kind == "unstructured":
        ratios = on_levels(ratios, ctx)
    return Policy(model=ctx.model, fingerprint=ctx.fingerprint, dense_key=ctx.dense_key, shapes=ctx.shapes or {},
                  task=space.task.kind, task_options=space.task.options, criterion=criterion,
                  granularity=space.granularity, schedule=schedule,
                  finetune=space.finetune_recipe(epochs, lr_scale, decay, distill), sparsity=ratios,
                  **calibration_of(space, criterion, ratios, ctx))


def calibration_of(space: SearchSpace, criterion: str, ratios: dict[str, float], ctx: SampleContext
                   ) -> dict[str, Any]:
    """The policy's SparseGPT calibration fields: none (dense), or sequential with the grid's target nearest the
    candidate's weighted sparsity as its reference (the level database it is screened on)."""
    if space.calibration == "dense" or criterion != "sparsegpt" or not space.targets.grid:
        return {}
    total = weighted_sparsity(ratios, ctx.sizes) if ctx.sizes else sum(ratios.values()) / max(len(ratios), 1)
    return {"calibration": "sequential",
            "calibration_reference": min(space.targets.grid, key=lambda t: abs(t - total))}


def on_levels(ratios: dict[str, float], ctx: SampleContext) -> dict[str, float]:
    """``ratios`` snapped to the context's stored levels, their weighted total kept (see
    :func:`~autoprune.config.budget.snap_to_levels`)."""
    assert ctx.levels is not None
    step, top = ctx.levels
    return snap_to_levels(ratios, ctx.sizes, weighted_sparsity(ratios, ctx.sizes), step, top, ctx.bounds)


def choose(suggest: Suggest, name: str, choices: list[Any]) -> Any:
    """A categorical choice; a single option is not a search dimension, so it is not asked (nor stored)."""
    return choices[0] if len(choices) == 1 else suggest.suggest_categorical(name, choices)


def recipe_choices(space: SearchSpace) -> dict[str, list[Any]]:
    """The categorical params a trial of ``space`` carries (its recipe: criterion, schedule, fine-tune epochs without
    a ladder, LR scale, decay, distillation), each with its choices; single-option ones are not params."""
    cats: dict[str, list[Any]] = {"criterion": list(space.criteria), "schedule": [s.label for s in space.schedules],
            "ft_epochs": [] if space.ladder is not None else list(space.finetune.epochs),
            "ft_lr_scale": list(space.finetune.lr_scale), "ft_decay": list(space.finetune.decay),
            "ft_distill": list(space.finetune.distill)}
    return {k: v for k, v in cats.items() if len(v) > 1}


def fixed_choices(space: SearchSpace) -> dict[str, Any]:
    """The categorical params a trial of ``space`` carries, each at its first (declared) choice."""
    return {k: v[0] for k, v in recipe_choices(space).items()}


def _sample_ratios(space: SearchSpace, suggest: Suggest, ctx: SampleContext) -> dict[str, float]:
    if space.granularity.kind == "nm":
        nm_ratio = 1.0 - space.granularity.n / space.granularity.m
        return {f: (nm_ratio if suggest.suggest_categorical(f"nm/{f}", [True, False]) else 0.0)
                for f in ctx.sizes}
    if space.parametrization == "independent":
        return {f: suggest.suggest_float(f"ratio/{f}", lo, hi) for f, (lo, hi) in ctx.bounds.items()}
    target = sample_target(space, suggest)
    anchor = ctx.anchor_prefs(target, choose(suggest, "anchor", ctx.anchor_choices) if ctx.anchor_choices else None)
    groups = {f: unit_group(f, space.layers.group) for f in ctx.sizes}
    offsets = {g: suggest.suggest_float(f"pref/{g}", -space.offset, space.offset)
               for g in dict.fromkeys(groups.values())}
    prefs = {f: anchor[f] + offsets[groups[f]] for f in ctx.sizes}
    return project_to_budget(target, prefs, ctx.sizes, ctx.bounds)


def unit_group(fqn: str, group: str) -> str:
    """The name of the preference a unit shares (``layers.group``): itself (``unit``), its block (the name up to
    the first numeric part: ``hf.model.layers.3``) or its type (the name after it: ``self_attn.q_proj``)."""
    if group == "unit":
        return fqn
    parts = fqn.split(".")
    at = next((i for i, p in enumerate(parts) if p.isdigit()), None)
    if at is None:
        return fqn
    return ".".join(parts[: at + 1]) if group == "block" else ".".join(parts[at + 1:]) or fqn


def sample_target(space: SearchSpace, suggest: Suggest) -> float:
    """The global target sparsity: on the user's grid if given, else in the continuous range."""
    if space.targets.grid:
        return float(suggest.suggest_categorical("target", list(space.targets.grid)))
    lo, hi = space.targets.range or (0.5, 0.95)
    return suggest.suggest_float("target", lo, hi)
