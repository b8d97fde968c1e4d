"""An evolutionary sampler (``--sampler evolution``): the genetic search of the pruning literature and EvoPress.

Per target size, the population is the study's best trials at that size (ranked by the highest fidelity rung they
reached, then by their score there); a new candidate is a parent chosen by tournament from it, mutated by a few
*moves*: ``step`` of the smaller unit's weights are taken from one unit's kept weights and given to another's, so the
weighted sparsity stays exactly on the target (EvoPress's level-switch mutation, for units of unequal size).
Before the population fills, parents are the anchor heuristic's allocation (OWL for language models, LAMP for
CNNs), so the search starts where the best rule is. Recipe choices are inherited, each re-drawn with a small
probability. Candidates are written back as the space's own parameters (``pref/<fqn>`` = log density minus the
anchor's), so the projection reproduces the mutated ratios and every other part of autoprune (ladder, export,
TPE's view) sees ordinary trials. The sampler keeps no state: it is a function of the study's trials and the
trial number (seeded per trial), so resume and workers rebuild it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from autoprune.config.budget import level_units, project_to_budget
from autoprune.config.sampling import SampleContext, on_levels
from autoprune.study.attrs import LADDER_STOP, rung_key
from autoprune.study.sampler import assign_target
from autoprune.study.trials import metric_sign

__all__ = ["EvolutionSampler", "mutate", "mutate_levels", "mutate_offsets", "preferences"]


def _pair_moves(names: list[str], rng: np.random.Generator, moves: int, move: Callable[[str, str], bool]) -> None:
    """``moves`` times, draw random pairs of ``names`` (up to 20) until ``move(a, b)`` makes a move (returns True);
    a move that cannot be made is drawn again, one that cannot be drawn in 20 tries is skipped."""
    for _ in range(moves):
        for _attempt in range(20):
            a, b = rng.choice(len(names), size=2, replace=False)
            if move(names[int(a)], names[int(b)]):
                break


def mutate(ratios: dict[str, float], sizes: dict[str, int], bounds: dict[str, tuple[float, float]],
           rng: np.random.Generator, moves: int, step: float = 0.05,
           allowed: Callable[[dict[str, float]], bool] | None = None) -> dict[str, float]:
    """``moves`` moves of sparsity between random pairs of units; each moves ``step`` × the smaller unit's weights,
    so Σ size·ratio is unchanged. A move that would leave a unit's bounds (or make ``allowed`` false) is drawn
    again."""
    out = dict(ratios)

    def move(fa: str, fb: str) -> bool:
        moved = step * min(sizes[fa], sizes[fb])
        ra, rb = out[fa] + moved / sizes[fa], out[fb] - moved / sizes[fb]  # fa pruned more, fb less
        if not (bounds[fa][0] <= ra <= bounds[fa][1] and bounds[fb][0] <= rb <= bounds[fb][1]):
            return False
        if allowed is not None and not allowed({**out, fa: ra, fb: rb}):
            return False
        out[fa], out[fb] = ra, rb
        return True

    _pair_moves(list(out), rng, moves, move)
    return out


def mutate_levels(ratios: dict[str, float], sizes: dict[str, int], bounds: dict[str, tuple[float, float]],
                  levels: tuple[float, float], rng: np.random.Generator, moves: int,
                  allowed: Callable[[dict[str, float]], bool] | None = None) -> dict[str, float]:
    """On stored levels (a SparseGPT database): each move takes one unit one level up (or down) and as many
    weights from other units, one level each, in random order, so that every ratio stays a stored level and
    Σ size·ratio is unchanged (units of unequal size: see :func:`~autoprune.config.budget.level_units`). A move
    that cannot balance (or that makes ``allowed`` false) is drawn again, up to 20 times."""
    step, top = levels
    units = level_units(sizes)
    names = list(ratios)
    out = dict(ratios)

    def inside(f: str, r: float) -> bool:
        return bounds[f][0] - 1e-9 <= r <= min(bounds[f][1], top) + 1e-9

    def move() -> dict[str, float] | None:
        a, sign = names[int(rng.integers(len(names)))], 1 if rng.random() < 0.5 else -1
        new = {**out, a: round(out[a] + sign * step, 10)}
        debt = units[a]
        if not inside(a, new[a]):
            return None
        for j in (names[int(i)] for i in rng.permutation(len(names))):
            r = round(new[j] - sign * step, 10)
            if j != a and units[j] <= debt and inside(j, r):
                new[j], debt = r, debt - units[j]
                if debt == 0:
                    return new
        return None

    for _ in range(moves):
        for _attempt in range(20):
            child = move()
            if child is not None and (allowed is None or allowed(child)):
                out = child
                break
    return out


def mutate_offsets(offsets: dict[str, float], rng: np.random.Generator, moves: int, step: float, bound: float
                   ) -> dict[str, float]:
    """Grouped preferences (``layers.group`` block or type): each move raises one group's preference by ``step``
    and lowers another's (within ±``bound``); the projection then keeps the total sparsity exactly on target."""
    out = dict(offsets)

    def move(ga: str, gb: str) -> bool:
        if out[ga] + step > bound or out[gb] - step < -bound:
            return False
        out[ga], out[gb] = out[ga] + step, out[gb] - step
        return True

    _pair_moves(list(out), rng, moves, move)
    return out


def preferences(ratios: dict[str, float], anchor: dict[str, float]) -> dict[str, float]:
    """Preference offsets whose projection gives ``ratios`` back: log density minus the anchor's, shifted by the
    constant that centres them (the projection's scale absorbs any common shift)."""
    raw = {f: math.log(max(1.0 - r, 1e-6)) - anchor[f] for f, r in ratios.items()}
    centre = (max(raw.values()) + min(raw.values())) / 2
    return {f: v - centre for f, v in raw.items()}


class EvolutionSampler(optuna.samplers.BaseSampler):
    """Tournament selection per target + sparsity-moving mutations, over the space's ``pref/`` params."""

    def __init__(self, search_space: dict[str, BaseDistribution], ctx: SampleContext, targets: list[float],
                 offset: float, seed: int = 0, population: int = 8, max_moves: int = 3, step: float = 0.05,
                 redraw: float = 0.1, group: str = "unit", budget: str = "equal", floor: int = 0) -> None:
        self._space = {k: d for k, d in search_space.items() if k != "target" and not d.single()}
        self._ctx, self._targets, self._offset = ctx, list(targets), offset
        self._seed, self._population, self._max_moves, self._step, self._redraw = (
            seed, population, max_moves, step, redraw)
        self._random = optuna.samplers.RandomSampler(seed=seed)
        self._group = group  # layers.group: unit moves sparsity between units; block/type move preferences
        self._budget, self._floor = budget, floor  # targets.budget (see sampler.assign_target)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        """The space's params (the target is assigned, not sampled)."""
        return dict(self._space)

    def _rank(self, t: FrozenTrial, sign: float) -> tuple[float, float] | None:
        """(rung reached, higher-is-better score there) of a finished trial, None when it has no score."""
        if t.state == TrialState.COMPLETE and t.values is not None:
            return (math.inf, sign * t.values[0])
        if t.state == TrialState.PRUNED and LADDER_STOP in t.user_attrs:
            r = int(t.user_attrs[LADDER_STOP])
            rank = t.user_attrs.get(rung_key(r), {}).get("rank")
            return None if rank is None else (float(r), float(rank))
        return None

    def parents(self, study: optuna.Study, target: float) -> list[FrozenTrial]:
        """The population at ``target``: its best finished trials that carry every searched param."""
        sign = metric_sign(study)
        scored = []
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            rank = self._rank(t, sign)
            if rank is not None and t.params.get("target") == target and all(k in t.params for k in self._space):
                scored.append((rank, -t.number, t))
        scored.sort(key=lambda x: (x[0], x[1]), reverse=True)
        return [t for _, _, t in scored[: self._population]]

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        """A mutated child of a tournament winner at this trial's target (or of the anchor, early on)."""
        if not search_space:
            return {}
        target = assign_target(study, trial, self._targets, self._budget, self._floor)
        rng = np.random.default_rng([self._seed, trial.number])
        pool = self.parents(study, target)
        parent: dict[str, Any] = {}
        if len(pool) >= 2:
            best = min(rng.choice(len(pool), size=2, replace=False))  # the better of two: the pool is sorted best first
            parent = pool[int(best)].params
        elif pool and self._population == 1:  # population 1: always the best so far (EvoPress's (1 + λ) search)
            parent = pool[0].params
        moves = int(rng.integers(1, self._max_moves + 1))
        if self._group != "unit":
            offsets = {k: float(parent.get(k, 0.0)) for k in search_space if k.startswith("pref/")}
            out = mutate_offsets(offsets, rng, moves, self._step * 2 * self._offset, self._offset)
            return {**out, **self._recipe(search_space, parent, rng)}
        prefs = {f: float(parent.get(f"pref/{f}", 0.0)) for f in self._ctx.sizes}  # no parent: the anchor itself
        recipe = self._recipe(search_space, parent, rng)  # (a searched anchor is inherited or re-drawn with it)
        ratios = project_to_budget(target, {f: a + prefs[f] for f, a in
                                            self._ctx.anchor_prefs(target, parent.get("anchor")).items()},
                                   self._ctx.sizes, self._ctx.bounds)
        anchor = self._ctx.anchor_prefs(target, recipe.get("anchor"))  # the child's: its offsets are around it

        def inside(candidate: dict[str, float]) -> bool:  # expressible in the box [-offset, offset]
            return all(abs(v) <= self._offset for v in preferences(candidate, anchor).values())

        if self._ctx.levels is not None:  # candidates must be stored levels: move whole levels
            child = mutate_levels(on_levels(ratios, self._ctx), self._ctx.sizes, self._ctx.bounds, self._ctx.levels,
                                  rng, moves, inside)
        else:
            child = mutate(ratios, self._ctx.sizes, self._ctx.bounds, rng, moves, self._step, inside)
        child_prefs = preferences(child, anchor)
        out = {name: min(max(child_prefs[name.removeprefix("pref/")], -self._offset), self._offset)
               for name in search_space if name.startswith("pref/")}
        return {**out, **recipe}

    def _recipe(self, search_space: dict[str, BaseDistribution], parent: dict[str, Any], rng: np.random.Generator
                ) -> dict[str, Any]:
        """The recipe choices: the parent's, each re-drawn with probability ``redraw`` (all drawn without one)."""
        out: dict[str, Any] = {}
        for name, dist in search_space.items():
            if isinstance(dist, CategoricalDistribution):
                keep = name in parent and rng.random() >= self._redraw
                out[name] = parent[name] if keep else dist.choices[int(rng.integers(len(dist.choices)))]
        return out

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        """The target is assigned (fewest trials first); anything else is drawn at random."""
        if param_name == "target":
            return assign_target(study, trial, self._targets, self._budget, self._floor)
        return self._random.sample_independent(study, trial, param_name, param_distribution)
