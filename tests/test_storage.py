"""The journal storage: fsync off the search thread, every write visible to other readers at once;
the TPE sampler's joint search space is exactly what a searched candidate asks for."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage

from autoprune.config.space import SearchSpace
from autoprune.study import SearchOptions, run_search
from autoprune.study.sampler import StaticSpaceTPE, search_distributions
from autoprune.study.samplers import make_sampler
from autoprune.study.setup import prepare
from autoprune.study.storage import TrialDurableJournal, make_storage


def test_journal_fsyncs_off_the_search_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced_on: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced_on.append(threading.current_thread().name)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    backend = TrialDurableJournal(str(tmp_path / "optuna.journal"))
    study = optuna.create_study(study_name="s", storage=JournalStorage(backend), directions=["maximize", "minimize"])

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        x = trial.suggest_float("x", 0, 1)
        y = trial.suggest_float("y", 0, 1)
        trial.set_user_attr("note", {"x": x})
        # another process reading the journal sees the running trial's params before it finishes
        peek = optuna.load_study(study_name="s", storage=make_storage(None, tmp_path)).trials[-1]
        assert peek.state == optuna.trial.TrialState.RUNNING and peek.params == {"x": x, "y": y}
        return x, y

    study.optimize(objective, n_trials=4)
    assert backend.fsync.wait(timeout=None)
    # Optuna alone would fsync ~6 times per trial on the search thread; here: none there, ≤ 1 per finished trial
    assert synced_on and set(synced_on) == {"journal-fsync"} and len(synced_on) <= 1 + 4
    reread = optuna.load_study(study_name="s", storage=make_storage(None, tmp_path))
    assert [t.user_attrs["note"]["x"] for t in reread.trials] == [t.params["x"] for t in study.trials]


def test_a_ctrl_c_while_optuna_records_a_trial_stops_the_search_cleanly_after_it(
        space_path: Path, runs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import signal

    from autoprune.study import load_existing

    real = JournalStorage.set_trial_state_values
    fired: list[int] = []

    def ctrl_c_during_tell(self: JournalStorage, trial_id: int, state: optuna.trial.TrialState,
                           values: object = None) -> bool:
        if state == optuna.trial.TrialState.COMPLETE and not fired:
            fired.append(trial_id)
            signal.raise_signal(signal.SIGINT)  # as a terminal's Ctrl-C would land, inside Optuna's tell
        return real(self, trial_id, state, values)  # type: ignore[arg-type]

    monkeypatch.setattr(JournalStorage, "set_trial_state_values", ctrl_c_during_tell)
    space = SearchSpace.from_yaml(space_path).model_copy(update={"name": "ctrl_c_tell"})
    # Optuna's _run_trial alone turns this into an UnboundLocalError; held, it is the interrupt, after the tell
    with pytest.raises(KeyboardInterrupt):
        run_search(space, SearchOptions(n_trials=5, runs_dir=runs_dir, threads=1))
    assert fired and signal.getsignal(signal.SIGINT) is signal.default_int_handler  # nothing left held
    trials = load_existing("ctrl_c_tell", make_storage(None, runs_dir)).trials
    told = next(t for t in trials if t._trial_id == fired[0])
    assert told.state == optuna.trial.TrialState.COMPLETE  # recorded whole
    later = [t.state for t in trials if t.number > told.number]  # the search stopped at that trial: nothing ran after
    assert all(state == optuna.trial.TrialState.WAITING for state in later)


def test_tpe_space_is_what_a_searched_candidate_asks(space_path: Path, runs_dir: Path) -> None:
    space = SearchSpace.from_yaml(space_path)
    prep = prepare(space, "cpu", runs_dir)
    dists = search_distributions(space, prep.ctx)
    assert "target" in dists and {f"pref/{f}" for f in prep.ws.layers} <= set(dists)
    run_search(space, SearchOptions(n_trials=16, runs_dir=runs_dir, device="cpu", study_name="tpe-space"))
    trials = optuna.load_study(study_name="tpe-space", storage=make_storage(None, runs_dir)).trials
    searched = [t for t in trials if "baseline" not in t.user_attrs]
    outside = [t for t in trials if t.user_attrs.get("baseline") and not t.user_attrs["via_params"]]
    assert searched and all(t.distributions == dists for t in searched)  # TPE's joint space matches exactly
    assert outside and all(t.params == {} for t in outside)  # no partial param sets to split TPE's space
    sampler = make_sampler("tpe", 0, dists)
    assert isinstance(sampler, StaticSpaceTPE)
    study = optuna.load_study(study_name="tpe-space", storage=make_storage(None, runs_dir), sampler=sampler)
    assert sampler.infer_relative_search_space(study, trials[-1]) == {k: d for k, d in dists.items()
                                                                      if not d.single()}


def _damage(journal: Path, kind: str) -> None:
    data = journal.read_bytes()
    if kind == "truncated tail":
        journal.write_bytes(data[:-120])
    elif kind == "garbage line appended":
        journal.write_bytes(data + b"garbage\n")
    else:  # a bad line in the middle: the 40th line cut in half
        lines = data.split(b"\n")
        lines[40] = lines[40][: len(lines[40]) // 2]
        journal.write_bytes(b"\n".join(lines))


@pytest.mark.parametrize("kind", ["truncated tail", "garbage line appended", "bad line in the middle"])
def test_a_damaged_journal_is_cut_back_never_appended_to(kind: str, space_path: Path, runs_dir: Path,
                                                          tmp_path: Path, workspace: object) -> None:
    import shutil
    import subprocess
    import sys

    from autoprune.study.storage import first_damage, load_existing

    runs = tmp_path / "runs"
    shutil.copytree(runs_dir / "models", runs / "models")  # the dense model the workspace fixture trained
    exe = str(Path(sys.executable).parent / "autoprune")
    cmd = [exe, "search", str(space_path), "--no-track", "--runs", str(runs), "--study", "cj", "--trials"]
    assert subprocess.run([*cmd, "4"], capture_output=True, text=True).returncode == 0
    journal = runs / "optuna.journal"
    before = {t.number: t.values for t in load_existing("cj", make_storage(None, runs)).trials
              if t.state == optuna.trial.TrialState.COMPLETE}
    _damage(journal, kind)
    cut = first_damage(journal.read_bytes())
    assert cut is not None
    res = subprocess.run([*cmd, "3"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    report = [line for line in res.stderr.splitlines() if "was damaged" in line]
    assert len(report) == 1 and f"at byte {cut[0]}" in report[0]
    assert first_damage(journal.read_bytes()) is None  # whole again, and every later command reads it
    copies = list(runs.glob("optuna.journal.damaged-*"))
    assert len(copies) == 1 and first_damage(copies[0].read_bytes()) == cut
    after = {t.number: t.values for t in load_existing("cj", make_storage(None, runs)).trials
             if t.state == optuna.trial.TrialState.COMPLETE}
    kept = {n: v for n, v in before.items() if n in after}
    assert all(after[n] == v for n, v in kept.items())  # what survived the cut is unchanged
    if kind != "bad line in the middle":  # a damaged tail loses no complete trial at all
        assert set(before) <= set(after)
    front = subprocess.run([exe, "front", "--study", "cj", "--runs", str(runs)], capture_output=True, text=True)
    assert front.returncode == 0 and "Pareto front" in front.stdout


@pytest.mark.parametrize(("where", "workers"), [("journal", 1), ("journal", 2), ("postgres", 1)])
def test_kill_9_mid_trial_then_rerun_reruns_the_killed_trials(where: str, workers: int, tmp_path: Path,
                                                              runs_dir: Path, workspace: object) -> None:
    """kill -9 of the main search process (its workers die with it): every trial it left RUNNING is failed with
    "worker died" and re-run exactly once on the next run, which ends with exactly the complete trials asked for."""
    import shutil
    import signal
    import subprocess
    import sys
    import time
    import uuid

    from autoprune.study.attrs import REASON, RETRY_OF, WORKER
    from autoprune.study.liveness import is_gone
    from autoprune.study.storage import load_existing
    from conftest import write_space

    url = os.environ.get("AUTOPRUNE_TEST_PG_URL") if where == "postgres" else None
    if where == "postgres" and url is None:
        if os.environ.get("CI"):
            pytest.fail("CI must provide PostgreSQL (scripts/pg.sh sets AUTOPRUNE_TEST_PG_URL)")
        pytest.skip("no PostgreSQL: run through scripts/test.sh")
    runs = tmp_path / "runs"
    shutil.copytree(runs_dir / "models", runs / "models")
    name = f"killed-{uuid.uuid4().hex[:6]}"
    space = write_space(tmp_path / "slow.yaml", name=name, ladder={"epochs": [0, 40], "keep": 1.0},
                        finetune={"lr_scale": [0.3]})
    exe = str(Path(sys.executable).parent / "autoprune")
    cmd = [exe, "search", str(space), "--no-track", "--runs", str(runs), "--workers", str(workers),
           *(["--storage", url] if url else []), "--trials"]
    err = tmp_path / "stderr.txt"
    proc = subprocess.Popen([*cmd, "50"], stdout=subprocess.DEVNULL, stderr=err.open("w"))

    storage = make_storage(url, runs) if url else None  # one engine: polling must not open a connection each time

    def trials() -> list[optuna.trial.FrozenTrial]:
        try:
            return load_existing(name, storage or make_storage(None, runs)).trials
        except Exception:  # the study does not exist yet
            return []

    killed = False
    while not killed and proc.poll() is None:  # wait for a condition: a trial mid-fine-tune after 2 complete
        time.sleep(0.2)
        now = trials()
        done = [t for t in now if t.state == optuna.trial.TrialState.COMPLETE]
        busy = [t for t in now if t.state == optuna.trial.TrialState.RUNNING and "rung/0" in t.user_attrs]
        if len(done) >= 2 and busy:
            proc.send_signal(signal.SIGKILL)
            killed = True
    proc.wait()
    assert killed, f"the search ended (rc {proc.returncode}) before it could be killed: {err.read_text()[-2000:]}"
    left = [t for t in trials() if t.state == optuna.trial.TrialState.RUNNING]
    while not all(is_gone(t.user_attrs[WORKER]) for t in left):  # workers end within a second of the main process
        time.sleep(0.2)
        left = [t for t in trials() if t.state == optuna.trial.TrialState.RUNNING]
    assert left and all(WORKER in t.user_attrs for t in left)
    before = trials()
    waiting = sum(t.state == optuna.trial.TrialState.WAITING for t in before)  # enqueued baselines not run yet
    complete = sum(t.state == optuna.trial.TrialState.COMPLETE for t in before)
    res = subprocess.run([*cmd, str(waiting + len(left))], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    after = trials()
    for dead in left:
        assert after[dead.number].state == optuna.trial.TrialState.FAIL
        assert after[dead.number].user_attrs[REASON] == "worker died"
        retries = [t for t in after if t.user_attrs.get(RETRY_OF) == dead.number]
        assert len(retries) == 1 and retries[0].state == optuna.trial.TrialState.COMPLETE
        assert retries[0].params == dead.params
        assert {k: dead.user_attrs.get(k) for k in ("baseline", "target")} == \
            {k: retries[0].user_attrs.get(k) for k in ("baseline", "target")}
    assert not [t for t in after if t.state in (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)]
    # exactly the trials asked for: every waiting one and one re-run of each killed one
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in after) == complete + waiting + len(left)


def test_two_processes_started_together_enqueue_and_log_each_trial_once(space_path: Path, runs_dir: Path,
                                                                    tmp_path: Path, workspace: object) -> None:
    import shutil
    import subprocess
    import sys

    from autoprune.study.storage import load_existing

    runs = tmp_path / "runs"
    shutil.copytree(runs_dir / "models", runs / "models")
    exe = str(Path(sys.executable).parent / "autoprune")
    cmd = [exe, "search", str(space_path), "--runs", str(runs), "--study", "twice", "--trials", "3"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:  # (a few lines of stderr each: the pipe cannot fill)
        err = p.stderr.read() if p.stderr else ""
        assert p.wait() == 0, err
        assert "MLflow logging disabled" not in err, err  # e.g. both creating the MLflow database at once
    trials = load_existing("twice", make_storage(None, runs)).trials
    keys = [(t.user_attrs["baseline"], t.user_attrs["target"]) for t in trials if "baseline" in t.user_attrs]
    assert len(keys) == len(set(keys)) == 5 * 2  # five heuristics at two targets, once each
    assert sum(t.state.is_finished() for t in trials) == 6  # each process ran its three trials
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{runs / 'mlflow.db'}")
    finished = sum(t.state.is_finished() for t in trials)
    runs_found: list = []
    for _ in range(240):  # the condition, not a deadline: both loggers' runs are in the store (a busy CI is slow)
        exp = client.get_experiment_by_name("twice")
        runs_found = client.search_runs([exp.experiment_id], max_results=1000) if exp is not None else []
        if sum("autoprune.trial" in r.data.tags for r in runs_found) >= finished:
            break
        time.sleep(0.5)
    parents = [r for r in runs_found if r.data.tags.get("autoprune.role") == "parent"]
    children = [int(r.data.tags["autoprune.trial"]) for r in runs_found if "autoprune.trial" in r.data.tags]
    assert len(parents) == 1  # one parent run, and one child run per finished trial
    assert sorted(children) == sorted(t.number for t in trials if t.state.is_finished())

