"""The search: resume without duplicates, baselines reproduce heuristics, early stop, constraints."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from autoprune.config.budget import weighted_sparsity
from autoprune.config.policy import Policy
from autoprune.config.space import SearchSpace
from autoprune.study import SearchOptions, run_search
from autoprune.study.attrs import first_epoch_score
from autoprune.study.objective import Objective
from autoprune.study.setup import prepare
from conftest import write_space


def _trials(runs: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    from autoprune.study.storage import load_existing, make_storage

    return load_existing(name, make_storage(None, runs)).trials


def test_resume_adds_exactly_m_trials_without_duplicates(space_path: Path, runs_dir: Path) -> None:
    space = SearchSpace.from_yaml(space_path)
    opts = SearchOptions(n_trials=12, runs_dir=runs_dir, device="cpu", study_name="resume")
    first = run_search(space, opts)
    assert first.n_trials == 12
    second = run_search(space, SearchOptions(n_trials=5, runs_dir=runs_dir, device="cpu", study_name="resume"))
    trials = _trials(runs_dir, "resume")
    assert second.n_trials == 17 and len(trials) == 17
    assert sorted(t.number for t in trials) == list(range(17))
    baselines = [(t.user_attrs["baseline"], t.user_attrs["target"]) for t in trials if "baseline" in t.user_attrs]
    assert len(baselines) == len(set(baselines)) == 2 * 5  # 5 heuristics × 2 targets, enqueued once
    searched = [tuple(sorted(t.params.items())) for t in trials if "baseline" not in t.user_attrs]
    assert len(searched) == len(set(searched))  # no repeated parameter sets after resume
    assert all(t.state != optuna.trial.TrialState.RUNNING for t in trials)


@pytest.fixture(scope="module")
def baseline_trials(space_path: Path, runs_dir: Path) -> list[optuna.trial.FrozenTrial]:
    """The trials of a 10-trial search (the enqueued baselines first), run once for the tests below."""
    run_search(SearchSpace.from_yaml(space_path),
               SearchOptions(n_trials=10, runs_dir=runs_dir, device="cpu", study_name="baselines"))
    return _trials(runs_dir, "baselines")


def test_enqueued_baselines_reproduce_heuristic_ratios(space_path: Path, runs_dir: Path,
                                                       baseline_trials: list[optuna.trial.FrozenTrial]) -> None:
    space = SearchSpace.from_yaml(space_path)
    prep = prepare(space, "cpu", runs_dir)
    trials = [t for t in baseline_trials if "baseline" in t.user_attrs
              and t.state == optuna.trial.TrialState.COMPLETE]
    assert trials
    for t in trials:
        want = prep.heuristics[t.user_attrs["baseline"]](t.user_attrs["target"])
        got = Policy.model_validate_json(t.user_attrs["eval"]["policy"]).sparsity
        assert set(got) == set(want)
        assert all(abs(got[k] - want[k]) < 1e-9 for k in want), t.user_attrs["baseline"]
        assert abs(weighted_sparsity(got, prep.ws.sizes) - t.user_attrs["target"]) < 1e-6


def test_lamp_baseline_carries_zero_offsets(baseline_trials: list[optuna.trial.FrozenTrial]) -> None:
    trials = [t for t in baseline_trials if t.user_attrs.get("baseline") == "lamp"]
    assert trials and all(t.user_attrs["via_params"] for t in trials)
    assert all(abs(v) < 1e-9 for t in trials for k, v in t.params.items() if k.startswith("pref/"))


def test_early_stop_hits_hopeless_candidate_not_good_one(tmp_path: Path, runs_dir: Path) -> None:
    space = SearchSpace.from_yaml(write_space(
        tmp_path / "s.yaml", criteria=["magnitude", "random"], finetune={"epochs": [3], "lr_scale": [0.3]},
        early_stop={"enabled": True, "margin": 0.1, "min_trials": 1}))
    prep = prepare(space, "cpu", runs_dir)
    objective = Objective(prep.ws, prep.ctx, prep.heuristics, seed=0)
    study = optuna.create_study(directions=["maximize", "minimize"])
    good = {"criterion": "magnitude", "target": 0.9,
            **{f"pref/{f}": 0.0 for f in prep.ws.layers}}
    hopeless = {**good, "criterion": "random"}
    for params in (good, hopeless, good):
        study.enqueue_trial(params)
    study.optimize(objective, n_trials=3)
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
                      optuna.trial.TrialState.COMPLETE]
    stopped = study.trials[1].user_attrs["stopped"]
    assert stopped["epoch"] == 1 and stopped["saved_s"] > 0
    assert stopped["val_score"] < study.trials[0].user_attrs["eval"]["epoch1_val_score"] - 0.1
    assert len(objective.stopped) == 1
    # the early stop reads its peers through one function, which still reads studies written before the rename
    first = study.trials[0].user_attrs["eval"]
    assert first_epoch_score(first) == first["epoch1_val_score"]
    assert first_epoch_score({"epoch1_val_accuracy": 0.7}) == 0.7 and first_epoch_score({}) == 0.0


def test_constraints_mark_infeasible_trials(tmp_path: Path, runs_dir: Path) -> None:
    space = SearchSpace.from_yaml(write_space(tmp_path / "s.yaml", name="constrained",
                                              constraints={"min_accuracy": 0.999}))
    run_search(space, SearchOptions(n_trials=3, runs_dir=runs_dir, device="cpu"))
    trials = _trials(runs_dir, "constrained")
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert done and all(t.constraints["min_accuracy"] > 0 for t in done)


def test_unknown_study_is_a_clear_error(runs_dir: Path) -> None:
    from autoprune.errors import ConfigError
    from autoprune.study import front_table

    with pytest.raises(ConfigError, match="study 'nope' not found"):
        front_table("nope", None, runs_dir)


@pytest.mark.parametrize("sampler", ["nsga2", "random", "gp", "rl"])
def test_other_samplers_run_and_reach_the_targets(sampler: str, space_path: Path, runs_dir: Path) -> None:
    space = SearchSpace.from_yaml(space_path)
    result = run_search(space, SearchOptions(n_trials=13, runs_dir=runs_dir, device="cpu", sampler=sampler,
                                             study_name=f"sampler-{sampler}"))
    trials = [t for t in _trials(runs_dir, f"sampler-{sampler}") if t.state == optuna.trial.TrialState.COMPLETE]
    searched = [t for t in trials if "baseline" not in t.user_attrs]
    assert result.n_trials == 13 and searched  # 10 enqueued heuristics + searched trials
    for t in searched:  # every sampled candidate sits exactly on one of the requested sizes
        assert min(abs(t.user_attrs["eval"]["sparsity"] - g) for g in (0.8, 0.9)) < 2e-3


def test_journal_workers_share_one_study(space_path: Path, runs_dir: Path) -> None:
    space = SearchSpace.from_yaml(space_path)
    result = run_search(space, SearchOptions(n_trials=6, runs_dir=runs_dir, device="cpu", workers=2,
                                             study_name="journal-workers"))
    trials = [t for t in _trials(runs_dir, "journal-workers") if t.state.is_finished()]
    assert result.n_trials == len(trials) == 6
    keys = [(t.user_attrs["baseline"], t.user_attrs["target"]) for t in trials if "baseline" in t.user_attrs]
    assert len(keys) == len(set(keys))


def test_reused_study_name_with_another_space_is_refused(tmp_path: Path, runs_dir: Path) -> None:
    import subprocess
    import sys

    from autoprune.errors import ConfigError

    first = SearchSpace.from_yaml(write_space(tmp_path / "a.yaml", name="ident"))
    run_search(first, SearchOptions(n_trials=2, runs_dir=runs_dir, device="cpu"))
    grid = SearchSpace.from_yaml(write_space(tmp_path / "b.yaml", name="ident", targets={"grid": [0.7, 0.9]}))
    with pytest.raises(ConfigError, match=r"study 'ident' was created with another searched distributions, "
                                          r"targets; .* Use --study NEW"):
        run_search(grid, SearchOptions(n_trials=2, runs_dir=runs_dir, device="cpu"))
    wider = write_space(tmp_path / "c.yaml", name="ident", model={"name": "digits_cnn", "kwargs": {"width": 12}})
    exe = str(Path(sys.executable).parent / "autoprune")
    res = subprocess.run([exe, "search", str(wider), "--no-track", "--runs", str(runs_dir), "--trials", "1"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "created with another model, layers" in res.stderr and "Traceback" not in res.stderr
    assert sum(t.state.is_finished() for t in _trials(runs_dir, "ident")) == 2  # nothing added to the study


def test_per_target_tpe_shares_trials_evenly_and_models_each_size_alone(space_path: Path, runs_dir: Path) -> None:
    from collections import Counter

    from autoprune.study.sampler import _TargetView, target_of
    from autoprune.study.storage import load_existing, make_storage

    space = SearchSpace.from_yaml(space_path)  # targets 0.8 and 0.9
    run_search(space, SearchOptions(n_trials=25, runs_dir=runs_dir, device="cpu", study_name="per-target"))
    study = load_existing("per-target", make_storage(None, runs_dir))
    assert study.metric_names == ["val_accuracy", "size (nonzero parameters, fraction of dense)"]  # axis names
    targets = Counter(target_of(t) for t in study.trials if t.state.is_finished())
    assert set(targets) == {0.8, 0.9} and abs(targets[0.8] - targets[0.9]) <= 1 and sum(targets.values()) == 25
    view = _TargetView(study, 0.9, target_of)
    seen = view._get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    originals = {t.number: t for t in study.trials}
    assert seen and all(target_of(t) == 0.9 for t in seen)
    assert all(t.values == [originals[t.number].values[0]] for t in seen)  # single objective: val accuracy
    assert all(len(originals[t.number].values) == 2 for t in seen)  # the study's own trials are untouched


def test_a_diverging_finetune_fails_the_trial_with_its_reason(tmp_path: Path, runs_dir: Path) -> None:
    space = SearchSpace.from_yaml(write_space(tmp_path / "s.yaml", name="diverge", baselines=[],
                                              finetune={"epochs": [3], "lr_scale": [1e5]}))
    result = run_search(space, SearchOptions(n_trials=3, runs_dir=runs_dir, device="cpu"))
    trials = _trials(runs_dir, "diverge")
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL] * 3  # the search went on after each
    assert all("fine-tune diverged" in t.user_attrs["fail_reason"] for t in trials)
    assert [r["trial"] for r in result.front] == ["dense"] and result.summary["failed"] == 3  # no trial
    assert any("lower the LR" in r for r in result.summary["fail_reasons"])


def test_a_latency_study_names_the_device_it_timed_on(tmp_path: Path, runs_dir: Path) -> None:
    from autoprune.study.storage import load_existing, make_storage

    space = SearchSpace.from_yaml(write_space(tmp_path / "lat.yaml", name="lat", size_metric="latency"))
    run_search(space, SearchOptions(n_trials=2, runs_dir=runs_dir, device="cpu"))
    study = load_existing("lat", make_storage(None, runs_dir))
    assert study.metric_names == ["val_accuracy", "latency_ms (cpu)"]
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert done and all(t.values[1] > 0 for t in done)
    attrs = [t.user_attrs for t in done]
    assert all(a["eval"]["latency_device"] == "cpu" for a in attrs)


def test_tpe_random_start_is_a_third_of_each_sizes_trials_and_at_least_ten() -> None:
    from autoprune.study.sampler import PerTargetTPE, tpe_startup
    from autoprune.study.samplers import make_sampler

    assert tpe_startup(300, 5) == 20 and tpe_startup(60, 4) == 10 and tpe_startup(5, 0) == 10
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    space = {"target": CategoricalDistribution([0.5, 0.9]), "pref/a": FloatDistribution(-1, 1)}
    sampler = make_sampler("tpe", 0, space, targets=[0.5, 0.9], startup=tpe_startup(300, 2))
    assert isinstance(sampler, PerTargetTPE) and sampler._n_startup_trials == 50
