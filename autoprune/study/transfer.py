"""Warm start across targets: what wins at one size is tried at the others.

TPE models each size of the grid on its own trials, so a recipe (LR, decay, schedule, distillation, anchor) found to
be best after the production fine-tune at 95 % is rediscovered from scratch at 97 % — or not, in the few trials a
size gets. After each trial that finishes the production rung as the new best of its size (a searched candidate,
not an enqueued heuristic at the declared recipe), its design is enqueued at every other size twice: as it is
(the same recipe, anchor and preference offsets) and with zero offsets (the anchor heuristic's own allocation under
that recipe, which is what a recipe-tuned heuristic would try). These candidates climb the ladder like any other
(no free pass to the production rung) and count against the trial budget.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autoprune.config.space import SearchSpace
from autoprune.study.attrs import BASELINE, RACE, TARGET, TRANSFER_OF
from autoprune.study.sampler import target_of
from autoprune.study.trials import metric_sign

__all__ = ["enqueue_transfers", "transfer_params"]


def transfer_params(params: dict[str, Any], target: float, zero: bool) -> dict[str, Any]:
    """``params`` moved to ``target`` (offsets set to 0 with ``zero``)."""
    out = {**params, "target": target}
    if zero:
        out.update({k: 0.0 for k in out if k.startswith("pref/")})
    return out


def _key(params: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((k, round(v, 9) if isinstance(v, float) else v) for k, v in params.items()))


def enqueue_transfers(study: optuna.Study, space: SearchSpace) -> int:
    """Enqueue, at every other size of the grid, each size's best production-rung candidate (as it is and with
    zero offsets) unless that exact candidate exists there already; returns how many were enqueued."""
    grid = list(space.targets.grid or [])
    if len(grid) < 2 or space.ladder is None or space.parametrization != "projected":
        return 0
    trials = study.get_trials(deepcopy=False)
    sign = metric_sign(study)
    best: dict[float, FrozenTrial] = {}
    for t in trials:
        target = target_of(t)
        if t.state != TrialState.COMPLETE or not t.values or target is None or not t.params:
            continue
        if target not in best or sign * t.values[0] > sign * best[target].values[0]:
            best[target] = t
    existing = {_key(t.params) for t in trials if t.params} | {
        _key(t.system_attrs["fixed_params"]) for t in trials if "fixed_params" in t.system_attrs}
    added = 0
    for source in best.values():
        if BASELINE in source.user_attrs or RACE in source.user_attrs:  # the declared recipe: nothing to carry
            continue  # over; the recipe race carries its own recipes to the other sizes
        for target in grid:
            if target == target_of(source):
                continue
            for zero in (False, True):
                params = transfer_params(source.params, target, zero)
                if _key(params) in existing:
                    continue
                study.enqueue_trial(params, user_attrs={TRANSFER_OF: source.number, TARGET: target})
                existing.add(_key(params))
                added += 1
    return added
