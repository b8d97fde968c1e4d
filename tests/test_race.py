"""The recipe race (ladder.race): every recipe at the largest target on the production rung, the best at the others."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from autoprune.config.sampling import SampleContext
from autoprune.config.space import SearchSpace
from autoprune.study.race import enqueue_race, recipe_grid_params
from conftest import write_space

EXE = str(Path(sys.executable).parent / "autoprune")

SPACE = SearchSpace.model_validate({
    "name": "r", "model": {"name": "mlp"}, "data": {"name": "digits"}, "targets": {"grid": [0.5, 0.8, 0.9]},
    "anchor": ["lamp", "erk"], "baselines": ["lamp", "erk"],
    "schedules": [{"kind": "oneshot"}, {"kind": "iterative", "steps": 3}],
    "finetune": {"lr_scale": [0.3, 3.0]}, "ladder": {"epochs": [0, 1, 2], "race": 2}})
CTX = SampleContext(model="mlp", fingerprint="", sizes={"a": 10, "b": 10}, bounds={"a": (0, 1), "b": (0, 1)},
                    anchors={"lamp": lambda t: {"a": t, "b": t}, "erk": lambda t: {"a": t, "b": t}})
DISTS = {"target": CategoricalDistribution([0.5, 0.8, 0.9]), "ft_lr_scale": CategoricalDistribution([0.3, 3.0]),
         "schedule": CategoricalDistribution(["oneshot", "cubic×3"]),
         "anchor": CategoricalDistribution(["lamp", "erk"]),
         "pref/a": FloatDistribution(-2, 2), "pref/b": FloatDistribution(-2, 2)}


def _finish(study: optuna.Study, values: dict[tuple[float, str], float]) -> None:
    """Run every waiting trial with the value ``values[(lr_scale, schedule)]`` (a baseline: 0.5)."""
    while (waiting := [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.WAITING]):
        trial = study.ask({k: DISTS[k] for k in waiting[0].system_attrs["fixed_params"]})
        p = trial.params
        study.tell(trial, [values.get((p.get("ft_lr_scale"), p.get("schedule")), 0.5), p["target"]])


def test_the_race_runs_every_recipe_at_the_top_then_the_best_ones_at_the_other_sizes() -> None:
    assert [tuple(r.values()) for r in recipe_grid_params(SPACE)] == [
        ("oneshot", 0.3), ("oneshot", 3.0), ("cubic×3", 0.3), ("cubic×3", 3.0)]  # declared recipe first
    study = optuna.create_study(directions=["maximize", "minimize"])
    for name in ("lamp", "erk"):  # ERK's baseline (told second, 0.7) is the better one at the top
        study.enqueue_trial({"target": 0.9}, user_attrs={"baseline": name, "target": 0.9})
    running = study.ask({"target": DISTS["target"]})
    assert enqueue_race(study, SPACE, CTX) == 0  # waits until every anchor's baseline at the top has finished
    study.tell(running, [0.6, 0.9])
    trial = study.ask({"target": DISTS["target"]})
    study.tell(trial, [0.7, 0.9])
    assert enqueue_race(study, SPACE, CTX) == 4  # round 1: each of the 4 recipes at 90 %
    first = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("race") == 1]
    assert {t.system_attrs["fixed_params"]["target"] for t in first} == {0.9}
    assert {t.system_attrs["fixed_params"]["anchor"] for t in first} == {"erk"}
    assert all(t.system_attrs["fixed_params"]["pref/a"] == 0.0 for t in first)  # the anchor's own allocation
    assert all(t.user_attrs["start_rung"] == 2 for t in first)  # straight to the production rung
    assert enqueue_race(study, SPACE, CTX) == 0  # round 2 waits for round 1
    _finish(study, {(3.0, "cubic×3"): 0.95, (0.3, "cubic×3"): 0.9, (3.0, "oneshot"): 0.8})
    assert enqueue_race(study, SPACE, CTX) == 4  # round 2: the best 2 recipes at 50 % and 80 %
    second = [t.system_attrs["fixed_params"] for t in study.get_trials(deepcopy=False) if t.user_attrs.get("race") == 2]
    assert sorted((p["target"], p["ft_lr_scale"], p["schedule"]) for p in second) == [
        (0.5, 0.3, "cubic×3"), (0.5, 3.0, "cubic×3"), (0.8, 0.3, "cubic×3"), (0.8, 3.0, "cubic×3")]
    _finish(study, {})
    assert enqueue_race(study, SPACE, CTX) == 0  # never a round twice
    off = SPACE.model_copy(update={"ladder": SPACE.ladder.model_copy(update={"race": 0})})
    assert enqueue_race(optuna.create_study(directions=["maximize", "minimize"]), off, CTX) == 0


def test_a_race_search_through_the_cli_scores_its_recipes_on_the_production_rung_only(tmp_path: Path) -> None:
    from autoprune.study import load_existing, make_storage
    from autoprune.study.attrs import rung_key

    path = write_space(tmp_path / "s.yaml", name="race", trials=14, anchor=["lamp", "erk"], baselines=["lamp"],
                       finetune={"lr_scale": [0.3, 3.0]}, schedules=[{"kind": "oneshot"}, {"kind": "iterative",
                                                                                           "steps": 2}],
                       ladder={"epochs": [0, 1, 2], "race": 1})
    runs = tmp_path / "runs"
    res = subprocess.run([EXE, "search", str(path), "--no-track", "--runs", str(runs)], capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    trials = load_existing("race", make_storage(None, runs)).get_trials(deepcopy=False)
    first = [t for t in trials if t.user_attrs.get("race") == 1]
    second = [t for t in trials if t.user_attrs.get("race") == 2]
    assert len(first) == 4 and len(second) == 1  # 4 recipes at 90 %; the best one at 80 %
    for t in first + second:  # the production fine-tune and nothing below it
        assert t.state == TrialState.COMPLETE and rung_key(2) in t.user_attrs and rung_key(0) not in t.user_attrs
    best = max(first, key=lambda t: t.values[0])
    assert {k: second[0].params[k] for k in ("ft_lr_scale", "schedule")} == {
        k: best.params[k] for k in ("ft_lr_scale", "schedule")}
    assert second[0].params["target"] == 0.8 and second[0].params["anchor"] == "lamp"
