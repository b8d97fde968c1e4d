"""Optuna samplers: multivariate TPE over the search space known up front (default), NSGA-II, random, GP, and the
reinforcement-learning controller (``rl``, in controller.py)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution

from autoprune.errors import ConfigError
from autoprune.space import SampleContext, SearchSpace, sample


class SpaceRecorder:
    """A ``Suggest`` that records every parameter a candidate asks for, with its distribution."""

    def __init__(self) -> None:
        self.distributions: dict[str, BaseDistribution] = {}

    def suggest_float(self, name: str, low: float, high: float) -> float:
        """Record a float parameter; answer its lower bound."""
        self.distributions[name] = FloatDistribution(low, high)
        return low

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        """Record a categorical parameter; answer its first choice."""
        self.distributions[name] = CategoricalDistribution(list(choices))
        return choices[0]


def search_distributions(space: SearchSpace, ctx: SampleContext) -> dict[str, BaseDistribution]:
    """Every parameter a searched (non-baseline) candidate of ``space`` carries, by name."""
    recorder = SpaceRecorder()
    sample(space, recorder, ctx)
    return recorder.distributions


class StaticSpaceTPE(optuna.samplers.TPESampler):
    """Multivariate TPE whose joint search space is given up front instead of inferred from the trials.

    Why: Optuna infers the relative search space from the finished trials, by intersection (``group=False``) or
    by decomposition into groups (``group=True``). Enqueued heuristics that lie outside the searched box carry
    no params, so intersection would be empty (every param sampled independently) and decomposition re-scans
    the whole history on every ask (0.6 ms at 200 trials). A sampled candidate always asks the same params, so
    the space is known: TPE models all of them jointly and uses the trials that carry them all.
    """

    def __init__(self, search_space: dict[str, BaseDistribution], **kwargs: Any) -> None:
        super().__init__(multivariate=True, **kwargs)
        self._static = {k: d for k, d in search_space.items() if not d.single()}

    def infer_relative_search_space(self, study: optuna.Study, trial: optuna.trial.FrozenTrial
                                    ) -> dict[str, BaseDistribution]:
        """The search space given at construction (the trials are not scanned)."""
        return dict(self._static)


def make_sampler(name: str, seed: int, search_space: dict[str, BaseDistribution], parallel: bool = False
                 ) -> optuna.samplers.BaseSampler:
    """TPE (multivariate over ``search_space``, default), NSGA-II, random, GP or the RL controller, seeded.

    The constant liar (running trials count as bad) only matters with several workers.
    """
    if name == "tpe":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # `constant_liar` is flagged experimental
            return StaticSpaceTPE(search_space, seed=seed, n_startup_trials=10, constant_liar=parallel)
    if name == "rl":
        from autoprune.search.controller import RLControllerSampler

        return RLControllerSampler(search_space, seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=20)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ConfigError(f"unknown sampler '{name}' (tpe, nsga2, random, gp, rl)")
