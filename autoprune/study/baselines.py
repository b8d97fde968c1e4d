"""Enqueue heuristic allocations (uniform, global, LAMP, ERK, sensitivity) as the study's first trials."""

from __future__ import annotations

import math
from typing import Any

import optuna

from autoprune.config.sampling import SampleContext, fixed_choices, unit_group
from autoprune.config.space import SearchSpace
from autoprune.pruning.heuristics import Allocation
from autoprune.study.attrs import BASELINE, TARGET, VIA_PARAMS

__all__ = ["baseline_params", "baseline_targets", "enqueue_baselines"]


def baseline_targets(space: SearchSpace) -> list[float]:
    """The sizes at which heuristics are enqueued: the grid, or low/middle/high of the range."""
    if space.targets.grid:
        return list(space.targets.grid)
    lo, hi = space.targets.range or (0.5, 0.95)
    return [lo, (lo + hi) / 2, hi]


def baseline_params(space: SearchSpace, ctx: SampleContext, ratios: dict[str, float], target: float,
                    name: str | None = None) -> tuple[dict[str, Any], bool]:
    """Trial params reproducing ``ratios``; the bool says whether the layer params themselves do it.

    When the heuristic lies inside the searched box (|δ| ≤ offset) the trial carries real preference
    params, so TPE learns from it. Otherwise it carries no params at all (the objective asks the heuristic,
    at the target stored in the trial's user attrs): a trial with only some of the params would split TPE's
    search space into two groups sampled independently, which costs twice the sampling time and loses the
    joint model of target and preferences. With a searched anchor, a heuristic that is one of the anchors is that
    anchor with zero offsets (``name``: the heuristic's name); another is expressed around the first anchor.
    """
    params: dict[str, Any] = {**fixed_choices(space), "target": target}
    if space.parametrization == "independent":
        inside = all(lo <= ratios[f] <= hi for f, (lo, hi) in ctx.bounds.items())
        layer_params = {f"ratio/{f}": ratios[f] for f in ctx.sizes}
    else:
        chosen = None
        if ctx.anchor_choices:
            chosen = name if name in ctx.anchor_choices else ctx.anchor_choices[0]
            params["anchor"] = chosen
        anchor = ctx.anchor_prefs(target, chosen)
        delta = {f: math.log(max(1.0 - ratios[f], 1e-6)) - anchor[f] for f in ctx.sizes}
        shared: dict[str, list[float]] = {}  # a group's units share one param: inside only if they agree
        for f, d in delta.items():
            shared.setdefault(unit_group(f, space.layers.group), []).append(d)
        inside = all(abs(d) <= space.offset and max(ds) - min(ds) < 1e-9 for ds in shared.values() for d in ds)
        layer_params = {f"pref/{g}": ds[0] for g, ds in shared.items()}
    return ({**params, **layer_params}, True) if inside else ({}, False)


def enqueue_baselines(study: optuna.Study, space: SearchSpace, ctx: SampleContext,
                      heuristics: dict[str, Allocation]) -> int:
    """Enqueue each heuristic at each baseline target once per study (a resumed study adds none)."""
    if space.granularity.kind == "nm":
        return 0  # N:M fixes each layer's ratio; allocation heuristics do not apply
    seen = {(t.user_attrs.get(BASELINE), t.user_attrs.get(TARGET)) for t in study.get_trials(deepcopy=False)}
    added = 0
    for target in baseline_targets(space):
        for name in space.baselines:
            if name not in heuristics or (name, target) in seen:
                continue
            params, via_params = baseline_params(space, ctx, heuristics[name](target), target, name)
            study.enqueue_trial(params, user_attrs={BASELINE: name, TARGET: target, VIA_PARAMS: via_params})
            added += 1
    return added
