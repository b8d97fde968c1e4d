"""Warm start across targets (ladder.transfer): each size's best production candidate is tried at the others."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution

from autoprune.config.space import SearchSpace
from autoprune.study.transfer import enqueue_transfers
from conftest import write_space

EXE = str(Path(sys.executable).parent / "autoprune")

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


def test_a_moving_budget_gives_the_next_trial_to_the_size_whose_front_just_moved() -> None:
    import optuna
    from optuna.distributions import CategoricalDistribution

    from autoprune.study.sampler import assign_target, stagnation

    study = optuna.create_study(directions=["maximize", "minimize"])
    dist = {"target": CategoricalDistribution([0.5, 0.9])}
    # 0.5: best at its first trial, then 3 worse; 0.9: improving until its last trial; 0.9 has more trials
    for tgt, acc in [(0.5, 0.9), (0.9, 0.5), (0.5, 0.8), (0.9, 0.6), (0.5, 0.7), (0.9, 0.7), (0.5, 0.6), (0.9, 0.8),
                     (0.9, 0.85)]:
        study.add_trial(optuna.trial.create_trial(params={"target": tgt}, distributions=dist, values=[acc, 1 - tgt]))
    pruned = optuna.trial.create_trial(params={"target": 0.9}, distributions=dist, state=optuna.trial.TrialState.PRUNED)
    study.add_trial(pruned)
    trials = study.get_trials()
    assert stagnation(trials, [0.5, 0.9], 1.0) == {0.5: 3, 0.9: 1}  # the pruned trial came after 0.9's best
    nxt = study.ask()
    frozen = study._storage.get_trial(nxt._trial_id)
    assert assign_target(study, frozen, [0.5, 0.9]) == 0.5  # equal: the size with the fewest trials
    assert assign_target(study, frozen, [0.5, 0.9], "moving", floor=4) == 0.9  # moving: where the front moves
    assert assign_target(study, frozen, [0.5, 0.9], "moving", floor=5) == 0.5  # each size's random start first


def test_a_moving_budget_search_assigns_every_trial_by_the_rule_through_the_cli(tmp_path: Path) -> None:
    from autoprune.study.sampler import assign_target, target_of, tpe_startup

    path = write_space(tmp_path / "s.yaml", name="mov", targets={"grid": [0.5, 0.95], "budget": "moving"},
                       trials=26, baselines=["lamp"])
    runs = tmp_path / "runs"
    res = subprocess.run([EXE, "search", str(path), "--no-track", "--runs", str(runs)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    study = optuna.load_study(study_name="mov", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(runs / "optuna.journal"))))
    floor = tpe_startup(26, 2)
    sampled = [t for t in study.trials if "fixed_params" not in t.system_attrs]
    assert len(sampled) == 24
    for t in sampled:  # every sampled trial went where the rule, replayed on the trials before it, sends it
        assert target_of(t) == assign_target(study, t, [0.5, 0.95], "moving", floor)
    counts = [sum(target_of(t) == g for t in study.trials) for g in (0.5, 0.95)]
    assert min(counts) >= floor and sum(counts) == 26
    bad = write_space(tmp_path / "b.yaml", targets={"grid": None, "range": [0.5, 0.9], "budget": "moving"})
    res = subprocess.run([EXE, "search", str(bad), "--no-track", "--runs", str(runs)], capture_output=True, text=True)
    assert res.returncode == 2 and "targets" in res.stderr and "grid" in res.stderr
