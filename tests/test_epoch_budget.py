"""``--max-epochs``: a search stops starting trials once its study has spent that many fine-tune epochs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from autoprune.api import load_space
from autoprune.bench.methods import grid_epochs
from autoprune.study import load_existing, make_storage
from autoprune.study.budget import epochs_spent
from autoprune.study.trials import FINISHED
from conftest import write_space

EXE = str(Path(sys.executable).parent / "autoprune")


def _search(path: Path, runs: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EXE, "search", str(path), "--no-track", "--runs", str(runs), *extra], capture_output=True,
                          text=True)


def test_a_ladder_search_stops_at_its_epoch_budget_and_a_rerun_adds_nothing(tmp_path: Path) -> None:
    path = write_space(tmp_path / "s.yaml", name="budget", trials=40, baselines=["lamp"], anchor=["lamp", "erk"],
                       finetune={"lr_scale": [0.3]}, ladder={"epochs": [0, 1, 2]})
    runs = tmp_path / "runs"
    res = _search(path, runs, "--max-epochs", "8")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "--max-epochs budget (8 fine-tune epochs) is spent" in res.stdout
    study = load_existing("budget", make_storage(None, runs))
    spent = epochs_spent(study, load_space(path))
    assert 8 <= spent < 8 + 1 + 2  # the trial that crossed it ran to its end (rungs 1 and 2 at most)
    n = len(study.get_trials(deepcopy=False, states=FINISHED))
    assert n < 40  # the budget, not the trial count, ended it
    again = _search(path, runs, "--max-epochs", "8")
    assert again.returncode == 0, again.stderr[-2000:]
    finished = load_existing("budget", make_storage(None, runs)).get_trials(deepcopy=False, states=FINISHED)
    assert len(finished) == n  # spent already: nothing added
    more = _search(path, runs, "--max-epochs", "12")  # a larger budget resumes the same study
    assert more.returncode == 0, more.stderr[-2000:]
    study = load_existing("budget", make_storage(None, runs))
    assert len(study.get_trials(deepcopy=False, states=FINISHED)) > n
    assert 12 <= epochs_spent(study, load_space(path)) < 12 + 3


def test_without_a_ladder_each_trial_costs_its_policy_epochs(tmp_path: Path) -> None:
    path = write_space(tmp_path / "s.yaml", name="flat", trials=20, finetune={"epochs": [1], "lr_scale": [0.3]})
    runs = tmp_path / "runs"
    res = _search(path, runs, "--max-epochs", "3")
    assert res.returncode == 0, res.stderr[-2000:]
    study = load_existing("flat", make_storage(None, runs))
    done = study.get_trials(deepcopy=False, states=FINISHED)
    assert len(done) == 3 and epochs_spent(study, load_space(path)) == 3.0  # (enqueued baselines wait their turn)


def test_the_grid_budget_is_every_recipe_at_every_level_and_a_bad_one_is_refused(tmp_path: Path) -> None:
    space = load_space(write_space(tmp_path / "s.yaml", schedules=[{"kind": "oneshot"}, {"kind": "iterative",
                                                                                       "steps": 2}],
                                   finetune={"lr_scale": [0.3, 1.0, 3.0]}, ladder={"epochs": [0, 5]}))
    assert grid_epochs(space, [0.8, 0.9]) == 2 * 3 * 2 * 5  # schedules × LR scales × levels × production epochs
    res = subprocess.run([EXE, "bench", "--space", str(tmp_path / "s.yaml"), "--max-epochs", "lots", "--out",
                          str(tmp_path / "b")], capture_output=True, text=True)
    assert res.returncode == 2
    assert "--max-epochs: 'lots' is neither a number of epochs" in res.stdout + res.stderr


def test_every_seed_of_a_bench_gets_the_whole_budget(tmp_path: Path) -> None:
    path = write_space(tmp_path / "s.yaml", name="eq", trials=40, baselines=["lamp"], finetune={"lr_scale": [0.3]},
                       ladder={"epochs": [0, 1, 2]})
    out = tmp_path / "b"
    res = subprocess.run([EXE, "bench", "--space", str(path), "--seeds", "2", "--trials", "40", "--max-epochs", "8",
                          "--methods", "autoprune", "--sparsities", "0.8,0.9", "--threads", "1", "--out", str(out)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    space = load_space(path)
    for seed in (0, 1):  # (the tuned rows' own budget once shadowed the search's after seed 0)
        assert 8 <= epochs_spent(load_existing(f"bench-eq-autoprune-s{seed}", make_storage(None, out)), space) < 11
