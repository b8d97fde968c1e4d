"""The RL controller (``--sampler rl``) learns, is deterministic, and rebuilds its state from the study."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution

from autoprune.study.controller import RLControllerSampler

SPACE = {"target": CategoricalDistribution([0.9, 0.95]), "pref/a": FloatDistribution(-2.0, 2.0),
         "pref/b": FloatDistribution(-2.0, 2.0)}
BEST = {"pref/a": 1.2, "pref/b": -0.8}


def synthetic(trial: optuna.Trial) -> tuple[float, float]:
    """Accuracy peaks at BEST for either size; the bigger target costs a fixed 0.2."""
    target = trial.suggest_categorical("target", [0.9, 0.95])
    gap = sum((trial.suggest_float(k, -2.0, 2.0) - v) ** 2 for k, v in BEST.items())
    return 1.0 - 0.1 * gap - (0.2 if target == 0.95 else 0.0), 1.0 - float(target)


def _run(seed: int, n: int, minimize: bool = False) -> tuple[optuna.Study, RLControllerSampler]:
    sampler = RLControllerSampler(SPACE, seed=seed)
    if minimize:  # the same problem as an error to minimize (an MSE, a perplexity): 100 × (2 − accuracy)
        study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
        study.optimize(lambda t: (100.0 * (2.0 - synthetic(t)[0]), synthetic(t)[1]), n_trials=n)
        return study, sampler
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    study.optimize(synthetic, n_trials=n)
    return study, sampler


@pytest.mark.parametrize("minimize", [False, True])
def test_controller_moves_toward_the_best_preferences(minimize: bool) -> None:
    study, sampler = _run(seed=0, n=200, minimize=minimize)
    for name, best in BEST.items():
        dist = SPACE[name]
        assert isinstance(dist, FloatDistribution)
        learnt = dist.low + sampler.state.mean[name] * (dist.high - dist.low)
        assert abs(learnt - best) < 0.4, (name, learnt)
        assert math.exp(sampler.state.log_std[name]) < 0.25  # it narrowed its search from the starting spread
    gaps = [sum((t.params[k] - v) ** 2 for k, v in BEST.items()) for t in study.trials]
    assert sum(gaps[-40:]) / 40 < 0.5 * sum(gaps[:40]) / 40  # late candidates are much closer to the optimum


def test_controller_is_deterministic_and_rebuilds_from_the_study() -> None:
    a, sampler_a = _run(seed=3, n=60)
    b, _ = _run(seed=3, n=60)
    assert [t.params for t in a.trials] == [t.params for t in b.trials]
    sampler_a.learn(a.trials)  # the running controller has not yet learnt from the last trial
    fresh = RLControllerSampler(SPACE, seed=3)
    assert fresh.learn(a.trials) == 60  # a resumed study replays every finished trial
    assert fresh.state.mean == sampler_a.state.mean and fresh.state.log_std == sampler_a.state.log_std
