"""The recipe race (``ladder.race``): the fine-tune recipe is chosen at the production rung, not by the lower rungs.

The lower rungs of the ladder rank candidates after a short fine-tune, and a short fine-tune ranks recipes badly: a
cubic 3-step schedule squeezed into 2 epochs, or a high learning rate that pays off only over the whole run, looks
worse there than it ends (README, digits at 97-98 %: the tuned heuristics won with exactly such recipes, which the
search's lower rungs stopped). So before the search trusts them with the recipe, a race settles it where it counts:

1. every recipe of the space (each combination of its criterion, schedule, LR scale, decay and distillation
   choices) is run on the race anchor's own allocation (zero offsets) at the largest target, straight to the
   production rung; the race anchor is the anchor heuristic whose baseline scored best there (the first anchor
   when the space has no baseline for it);
2. the best ``race`` recipes of that round are then run the same way at every other target (recipes are shared
   across sizes: what wins at 98 % is tried, not rediscovered, at 95 %).

Race trials carry the space's own params (TPE learns from them like from any trial), skip the rungs below the last
(their ranking is what the race replaces) and do not take a searched candidate's place in any rung's quota. They
count against the trial budget. A resumed study enqueues no round twice.
"""

from __future__ import annotations

import itertools
from typing import Any

import optuna
from optuna.trial import TrialState

from autoprune.config.sampling import SampleContext, recipe_choices, unit_group
from autoprune.config.space import SearchSpace
from autoprune.study.attrs import BASELINE, RACE, START_RUNG, TARGET
from autoprune.study.baselines import baseline_targets
from autoprune.study.sampler import target_of
from autoprune.study.trials import metric_sign

__all__ = ["enqueue_race", "race_anchor", "recipe_grid_params"]

_OPEN = (TrialState.WAITING, TrialState.RUNNING)


def recipe_grid_params(space: SearchSpace) -> list[dict[str, Any]]:
    """Every recipe of ``space`` as trial params, the declared recipe (each list's first choice) first."""
    choices = recipe_choices(space)
    return [dict(zip(choices, combo, strict=True)) for combo in itertools.product(*choices.values())]


def race_anchor(trials: list[optuna.trial.FrozenTrial], anchors: list[str], target: float, sign: float
                ) -> str | None:
    """The anchor whose baseline scored best at ``target`` once every anchor's baseline there has finished; the
    first anchor when none of them has a baseline at ``target``; None while one is still to finish. ``sign``: the
    study's :func:`~autoprune.study.trials.metric_sign`."""
    mine = [t for t in trials if t.user_attrs.get(BASELINE) in anchors and target_of(t) == target]
    if not mine:
        return anchors[0]
    if any(t.state in _OPEN for t in mine):
        return None
    done = [t for t in mine if t.state == TrialState.COMPLETE and t.values]
    if not done:
        return anchors[0]
    best = max(done, key=lambda t: sign * t.values[0])
    return str(best.user_attrs[BASELINE])


def _params(space: SearchSpace, ctx: SampleContext, recipe: dict[str, Any], anchor: str, target: float
            ) -> dict[str, Any]:
    """Trial params of ``anchor``'s own allocation (zero offsets) at ``target`` under ``recipe``."""
    groups = dict.fromkeys(unit_group(f, space.layers.group) for f in ctx.sizes)
    params: dict[str, Any] = {**recipe, "target": target, **{f"pref/{g}": 0.0 for g in groups}}
    if ctx.anchor_choices:
        params["anchor"] = anchor
    return params


def enqueue_race(study: optuna.Study, space: SearchSpace, ctx: SampleContext) -> int:
    """Enqueue the race's next round when it is due (see the module doc); returns how many trials were enqueued."""
    ladder = space.ladder
    anchors = space.anchors
    if (ladder is None or not ladder.race or space.parametrization != "projected" or not anchors
            or space.granularity.kind == "nm"):
        return 0
    trials = study.get_trials(deepcopy=False)
    race = [t for t in trials if RACE in t.user_attrs]
    targets = sorted(baseline_targets(space))
    top = targets[-1]
    sign = metric_sign(study)
    last = len(ladder.epochs) - 1
    if not race:  # round 1: every recipe at the largest target
        anchor = race_anchor(trials, anchors, top, sign)
        if anchor is None:
            return 0
        todo = [(_params(space, ctx, recipe, anchor, top), 1) for recipe in recipe_grid_params(space)]
    else:
        first = [t for t in race if t.user_attrs[RACE] == 1]
        if any(t.user_attrs[RACE] == 2 for t in race) or any(t.state in _OPEN for t in first):
            return 0
        done = [t for t in first if t.state == TrialState.COMPLETE and t.values]
        done.sort(key=lambda t: -sign * t.values[0])
        keys = list(recipe_choices(space))
        recipes = list({tuple(t.params[k] for k in keys): None for t in done})[: ladder.race]
        anchor = done[0].params.get("anchor", anchors[0]) if done else anchors[0]
        todo = [(_params(space, ctx, dict(zip(keys, recipe, strict=True)), anchor, target), 2)
                for target in targets[:-1] for recipe in recipes]
    for params, round_ in todo:
        study.enqueue_trial(params, user_attrs={RACE: round_, TARGET: params["target"], START_RUNG: last})
    return len(todo)
