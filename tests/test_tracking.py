"""MLflow tracking against a real SQLite store: one parent, N children, Pareto tags, artifacts, safe keys."""

from __future__ import annotations

from pathlib import Path

import mlflow
import optuna
import pytest

from autoprune.api import search
from autoprune.study.storage import load_existing, make_storage
from autoprune.study.trials import front_trials
from autoprune.tracking.logger import default_tracking_uri, safe_key
from conftest import mlflow_runs


def test_trials_become_child_runs_with_front_artifacts(space_path: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    search(space_path, n_trials=8, study="tracked", runs_dir=runs, device="cpu")
    search(space_path, n_trials=3, study="tracked", runs_dir=runs, device="cpu")  # resume: same parent
    client, parent, children = mlflow_runs(runs, "tracked")
    exp = client.get_experiment_by_name("tracked")
    assert exp is not None and exp.tags["mlflow.experimentKind"] == "custom_model_development"  # not GenAI pages
    study = load_existing("tracked", make_storage(None, runs))
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(children) == len(finished) == 11
    assert sorted(int(c.data.tags["autoprune.trial"]) for c in children) == [t.number for t in finished]
    front = {t.number for t in front_trials(study)}  # Optuna's best_trials, less hair-smaller worse points
    tagged = {int(c.data.tags["autoprune.trial"]) for c in children if c.data.tags["pareto"] == "true"}
    assert tagged == front
    assert any(c.data.tags.get("baseline") == "lamp" for c in children)
    arts = {a.path for a in client.list_artifacts(parent.info.run_id, "pareto")}
    assert {"pareto/pareto.png", "pareto/pareto.html", "pareto/pareto.csv", "pareto/pareto.json"} <= arts
    png = Path(client.download_artifacts(parent.info.run_id, "pareto/pareto.png", str(tmp_path)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "hypervolume" in client.get_run(parent.info.run_id).data.metrics
    one = next(c for c in children if c.data.tags["state"] == "COMPLETE")
    assert "val_accuracy" in one.data.metrics and "ratio/features.0" in one.data.params
    assert (runs / "mlflow.db").exists() and (runs / "optuna.journal").exists()
    # a child run lasts as long as its trial did (not the moment it was logged)
    trial = next(t for t in finished if t.number == int(one.data.tags["autoprune.trial"]))
    assert trial.datetime_start is not None and trial.datetime_complete is not None
    assert abs(one.info.start_time - trial.datetime_start.timestamp() * 1000) < 2
    assert abs(one.info.end_time - trial.datetime_complete.timestamp() * 1000) < 2
    # the parent run carries the search's configuration and describes the front on its page
    params = client.get_run(parent.info.run_id).data.params
    assert params["model"] == "digits_cnn" and params["task"] == "classification" and params["data"] == "digits"
    note = client.get_run(parent.info.run_id).data.tags["mlflow.note.content"]
    assert note.startswith("![Pareto front](get-artifact?path=pareto%2Fpareto.png")  # the plot first, then the table
    assert "**Pareto front**" in note and "| dense |" in note
    assert all(f"| {n} |" in note for n in front)


def test_param_keys_for_real_fqns_are_accepted(tmp_path: Path) -> None:
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'm.db'}")
    with mlflow.start_run():
        for fqn in ("layer1.0.conv1", "features.0", "blocks[3].attn", "enc/dec:1"):
            mlflow.log_param(safe_key(f"pref/{fqn}"), 0.5)
    assert safe_key("blocks[3].attn") == "blocks_3_.attn"


def test_broken_mlflow_does_not_lose_trials(space_path: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    result = search(space_path, n_trials=4, study="offline", runs_dir=runs, device="cpu",
                    tracking_uri="http://127.0.0.1:9/")  # nothing listens on port 9
    study = load_existing("offline", make_storage(None, runs))
    assert result.n_trials == 4
    assert len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]) >= 3


def test_sync_backfills_runs_after_mlflow_was_down(space_path: Path, tmp_path: Path) -> None:
    from autoprune.api import sync

    runs = tmp_path / "runs"
    search(space_path, n_trials=4, study="later", runs_dir=runs, device="cpu", tracking_uri="http://127.0.0.1:9/")
    assert sync("later", runs_dir=runs) == 4
    _, _, children = mlflow_runs(runs, "later")
    assert len(children) == 4
    assert sync("later", runs_dir=runs) == 0  # idempotent: no duplicate child runs


def test_pareto_tags_follow_the_front_during_a_search(tmp_path: Path) -> None:
    from autoprune.config.events import StudyInfo, TrialRecord
    from autoprune.tracking.logger import MlflowLogger

    runs = tmp_path / "runs"
    logger = MlflowLogger(None, runs)
    logger.on_start(StudyInfo("live", "journal", "name: live\n", "live", "tpe", "nonzeros", {"accuracy": 0.9}, {}))
    for n in range(3):
        logger.on_trial(TrialRecord(n, "COMPLETE", {"target": 0.9}, (0.5 + n / 10, 0.1), {"sparsity": 0.9}))
    logger.on_front({2})
    _, _, children = mlflow_runs(runs, "live")
    tags = {int(c.data.tags["autoprune.trial"]): c.data.tags["pareto"] for c in children}
    assert tags == {0: "false", 1: "false", 2: "true"}
    logger.on_front({1, 2})
    _, _, children = mlflow_runs(runs, "live")
    assert {int(c.data.tags["autoprune.trial"]): c.data.tags["pareto"] for c in children}[1] == "true"
    assert logger.failed is None


def _children(pid: int) -> set[int]:
    """Pids whose parent is ``pid`` (from /proc)."""
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.add(int(stat.parent.name))
    return out


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM"])
def test_a_killed_search_leaves_no_helper_process(sig: str, tmp_path: Path, runs_dir: Path,
                                                  workspace: object) -> None:
    """kill -9 and SIGTERM of a search with MLflow on: helpers exit; SIGTERM also ends like Ctrl-C (143, one line)."""
    import shutil
    import signal
    import subprocess
    import sys
    import time

    from conftest import write_space

    runs = tmp_path / "runs"
    shutil.copytree(runs_dir / "models", runs / "models")
    space = write_space(tmp_path / "slow.yaml", name="orphans", ladder={"epochs": [0, 40], "keep": 1.0},
                        finetune={"lr_scale": [0.3]})
    exe = str(Path(sys.executable).parent / "autoprune")
    proc = subprocess.Popen([exe, "search", str(space), "--runs", str(runs), "--trials", "50"],
                            stdout=subprocess.DEVNULL, stderr=(tmp_path / "err").open("w"))
    helpers: set[int] = set()

    def logger_started() -> bool:  # the MLflow logger (a spawned child), started after the resource tracker
        return any("spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")
                   for p in helpers if Path(f"/proc/{p}/cmdline").exists())

    while proc.poll() is None and not logger_started():
        time.sleep(0.2)
        helpers = _children(proc.pid)
    assert len(helpers) >= 2, "the search ended before its logger process started"  # logger + resource tracker
    proc.send_signal(getattr(signal, sig))
    rc = proc.wait()
    waited = 0.0
    while any(Path(f"/proc/{p}").exists() for p in helpers) and waited < 120:  # condition, with a hang guard
        time.sleep(0.5)
        waited += 0.5
    alive = [p for p in helpers if Path(f"/proc/{p}").exists()]
    assert alive == [], f"helpers still running {waited:.0f}s after {sig}: {alive}"
    if sig == "SIGTERM":
        lines = (tmp_path / "err").read_text().strip().splitlines()
        assert rc == 143 and lines[-1].startswith("terminated: finished trials are kept"), lines[-3:]


def test_mlflow_fluent_calls_leave_the_callers_tracking_uri_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                  ) -> None:
    import os

    from autoprune.tracking.records import tracking_at

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
    ours = default_tracking_uri(tmp_path)
    with tracking_at(ours):
        assert mlflow.get_tracking_uri() == ours
    assert not mlflow.is_tracking_uri_set() and "MLFLOW_TRACKING_URI" not in os.environ
    theirs = f"sqlite:///{tmp_path / 'theirs.db'}"
    mlflow.set_tracking_uri(theirs)  # a notebook that set its own server keeps it
    try:
        with tracking_at(ours):
            assert mlflow.get_tracking_uri() == ours
        assert mlflow.get_tracking_uri() == theirs and os.environ["MLFLOW_TRACKING_URI"] == theirs
    finally:
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
