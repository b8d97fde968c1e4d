"""Warm start across targets (ladder.transfer): each size's best production candidate is tried at the others."""

from __future__ import annotations

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution

from autoprune.config.space import SearchSpace
from autoprune.study.transfer import enqueue_transfers

SPACE = SearchSpace.model_validate({"name": "t", "model": {"name": "mlp"}, "data": {"name": "digits"},
                                    "targets": {"grid": [0.5, 0.8, 0.9]}, "ladder": {"epochs": [0, 1, 2],
                                                                                     "transfer": True}})
DISTS = {"target": CategoricalDistribution([0.5, 0.8, 0.9]), "ft_lr_scale": CategoricalDistribution([0.3, 3.0]),
         "pref/a": FloatDistribution(-2, 2), "pref/b": FloatDistribution(-2, 2)}


def _add(study: optuna.Study, value: float, attrs: dict | None = None, **params: float) -> None:
    study.add_trial(optuna.trial.create_trial(params=params, distributions={k: DISTS[k] for k in params},
                                              values=[value, params["target"]], user_attrs=attrs or {}))


def test_each_sizes_best_is_enqueued_at_the_other_sizes_as_it_is_and_at_zero_offsets() -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])
    _add(study, 0.90, {"baseline": "lamp"}, target=0.5, ft_lr_scale=0.3, **{"pref/a": 0.0, "pref/b": 0.0})
    _add(study, 0.80, target=0.8, ft_lr_scale=3.0, **{"pref/a": 0.5, "pref/b": -0.5})
    _add(study, 0.70, target=0.8, ft_lr_scale=0.3, **{"pref/a": 1.0, "pref/b": 1.0})
    assert enqueue_transfers(study, SPACE) == 4  # 0.8's best → 0.5 and 0.9, twice; 0.5's best is a baseline
    waiting = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.WAITING]
    got = sorted((t.system_attrs["fixed_params"]["target"], t.system_attrs["fixed_params"]["pref/a"]) for t in waiting)
    assert got == [(0.5, 0.0), (0.5, 0.5), (0.9, 0.0), (0.9, 0.5)]
    assert all(t.system_attrs["fixed_params"]["ft_lr_scale"] == 3.0 for t in waiting)
    assert all(t.user_attrs["transfer_of"] == 1 for t in waiting)
    assert enqueue_transfers(study, SPACE) == 0  # never the same candidate twice


def test_no_transfer_without_a_grid_of_sizes_or_a_ladder() -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])
    _add(study, 0.8, target=0.8, ft_lr_scale=3.0, **{"pref/a": 0.5, "pref/b": -0.5})
    off = SPACE.model_copy(update={"targets": SPACE.targets.model_copy(update={"grid": [0.8]})})
    assert enqueue_transfers(study, off) == 0
    assert enqueue_transfers(study, SPACE.model_copy(update={"ladder": None})) == 0
