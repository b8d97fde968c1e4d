"""The command line, run as a user would: exit codes, one-line errors, tables and files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_space

EXE = str(Path(sys.executable).parent / "autoprune")


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EXE, *args], capture_output=True, text=True, cwd=cwd)


def test_help_teaches_the_commands() -> None:
    res = run("--help")
    assert res.returncode == 0
    for cmd in ("search", "sensitivity", "front"):
        assert cmd in res.stdout
    assert "Optuna storage URL" in run("search", "--help").stdout


def test_bad_yaml_exits_nonzero_with_one_line_naming_the_field(tmp_path: Path) -> None:
    p = write_space(tmp_path / "bad.yaml", sampler="annealing")
    res = run("search", str(p), "--runs", str(tmp_path / "runs"))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "field 'sampler'" in lines[0] and "bad.yaml" in lines[0]


def test_missing_file_and_unknown_model(tmp_path: Path) -> None:
    res = run("search", str(tmp_path / "nope.yaml"))
    assert res.returncode == 2 and "nope.yaml: file not found" in res.stderr
    p = write_space(tmp_path / "m.yaml", model={"name": "resnet21"})
    res = run("search", str(p), "--runs", str(tmp_path / "runs"), "--no-track")
    assert res.returncode == 2 and "unknown model 'resnet21'" in res.stderr


def test_pattern_matching_no_layer(tmp_path: Path) -> None:
    p = write_space(tmp_path / "p.yaml", layers={"include": ["encoder.*"]})
    res = run("sensitivity", str(p), "--runs", str(tmp_path / "runs"))
    assert res.returncode == 2 and "layers.include" in res.stderr and "encoder.*" in res.stderr


def test_search_then_front_then_sensitivity(space_path: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    res = run("search", str(space_path), "--trials", "5", "--runs", str(runs), "--device", "cpu")
    assert res.returncode == 0, res.stderr
    assert "Pareto front of study 'digits_small'" in res.stdout and "test_accuracy" in res.stdout
    assert "│ dense │" in res.stdout.replace("  ", " ").replace("  ", " ")  # the dense model is the first row
    # not a terminal: plain log lines, one per phase event, each phase started and done (dense training, the
    # sensitivity scan, the search, the front on test), never a progress bar cut at 80 columns
    progress = [line for line in res.stderr.splitlines() if ": started (" in line or ": done " in line]
    phases = [line.split(": ")[0] for line in progress if ": done " in line]
    assert phases[0].startswith("dense model") and "sensitivity scan" in phases
    assert "search digits_small" in phases and phases[-1] == "front re-scored on test"
    assert all(len(line) < 200 and "━" not in line for line in res.stderr.splitlines())
    assert (runs / "optuna.journal").exists() and (runs / "mlflow.db").exists()
    res = run("front", "--study", "digits_small", "--runs", str(runs))
    assert res.returncode == 0 and "val_accuracy" in res.stdout
    res = run("sensitivity", str(space_path), "--runs", str(runs), "--device", "cpu")
    assert res.returncode == 0
    assert list((runs / "sensitivity").glob("*.png")) and list((runs / "sensitivity").glob("*.csv"))
    res = run("front", "--study", "nope", "--runs", str(runs))
    assert res.returncode == 2 and "study 'nope' not found" in res.stderr


@pytest.mark.slow
def test_ctrl_c_keeps_finished_trials_and_rerun_resumes(space_path: Path, tmp_path: Path) -> None:
    import signal
    import time

    import optuna

    from autoprune.study.storage import load_existing, make_storage

    runs = tmp_path / "runs"
    # Ctrl-C as a terminal delivers it: a test run started in the background of a shell without job control
    # inherits SIGINT ignored, which the search would inherit too (seen on CI); the child starts with the default
    proc = subprocess.Popen([EXE, "search", str(space_path), "--trials", "400", "--runs", str(runs), "--no-track",
                             "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    def complete() -> int:
        try:
            study = load_existing("digits_small", make_storage(None, runs))
        except Exception:
            return 0
        return sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)

    while complete() < 5 and proc.poll() is None:  # a condition, not a deadline
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate()
    assert proc.returncode == 130, err[-2000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert "rerun the same command to resume" in lines[-1] and "Traceback" not in err  # one line, nothing after
    kept = complete()
    assert kept >= 5
    study = load_existing("digits_small", make_storage(None, runs))
    interrupted = [t.number for t in study.trials if t.user_attrs.get("fail_reason") == "interrupted"]
    finished = sum(t.state.is_finished() for t in study.trials)
    res = run("search", str(space_path), "--trials", "3", "--runs", str(runs), "--no-track", "--device", "cpu")
    assert res.returncode == 0
    assert complete() >= kept  # the finished trials are kept
    study = load_existing("digits_small", make_storage(None, runs))
    assert sum(t.state.is_finished() for t in study.trials) == finished + 3  # resumed: exactly 3 more
    retried = {t.user_attrs.get("retry_of") for t in study.trials}
    assert set(interrupted) <= retried  # the interrupted trial was enqueued again


def test_api_search_can_be_called_twice_in_one_process(space_path: Path, runs_dir: Path) -> None:
    code = (f"import autoprune\n"
            f"for n in (1, 2):\n"
            f"    r = autoprune.search({str(space_path)!r}, n_trials=1, study='twice', runs_dir={str(runs_dir)!r}, "
            f"device='cpu', track=False)\n"
            f"    print(r.n_trials)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["1", "2"]  # the second call resumed the same study
