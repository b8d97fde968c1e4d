"""`autoprune ui`: serves the MLflow UI on runs/, prints where the study's front is, leaves no orphan processes;
a headless Chromium opens what it prints and finds the front. optuna-dashboard serves the same study's journal and
shows its Pareto front with autoprune's metric names."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from autoprune.api import search
from autoprune.tracking.logger import default_tracking_uri

EXE = str(Path(sys.executable).parent / "autoprune")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _procs_mentioning(text: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if text in line and "ps -eo" not in line]


@pytest.fixture(scope="module")
def ui_runs(space_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("uiruns")
    search(space_path, n_trials=6, study="ui_study", runs_dir=runs, device="cpu")
    return runs


def _serve(runs: Path, port: int, seconds: int) -> subprocess.Popen[str]:
    return subprocess.Popen([EXE, "ui", "--runs", str(runs), "--port", str(port), "--study", "ui_study",
                             "--timeout", str(seconds)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_url(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    buf = ""
    while True:  # readline waits for the next line (or the end of the process): a condition, not a deadline
        line = proc.stdout.readline()
        buf += line
        if "MLflow UI:" in line:
            return line.split("MLflow UI:", 1)[1].strip()
        if proc.poll() is not None:
            break
    raise AssertionError(f"no URL printed: {buf} {proc.stderr.read() if proc.stderr else ''}")


@pytest.mark.slow
def test_ui_prints_the_studys_landing_page_and_leaves_no_orphans(ui_runs: Path) -> None:
    port = _free_port()
    proc = _serve(ui_runs, port, 8)
    url = _wait_url(proc)
    exp = MlflowClient(default_tracking_uri(ui_runs)).get_experiment_by_name("ui_study")
    assert exp is not None
    parent = next(r for r in MlflowClient(default_tracking_uri(ui_runs)).search_runs([exp.experiment_id])
                  if r.data.tags.get("autoprune.role") == "parent")
    # the landing page is the study's parent run (its description shows the plot and the front) in the
    # model-training pages, not the GenAI ones
    assert url == (f"http://127.0.0.1:{port}/#/experiments/{exp.experiment_id}/runs/{parent.info.run_id}"
                   "/artifacts/pareto/pareto.png?workflowType=machine_learning")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
        assert r.status == 200
    assert proc.wait() == 0
    waited = 0.0
    while _procs_mentioning(str(ui_runs)) and waited < 120:  # a condition, with a hang guard
        time.sleep(0.5)
        waited += 0.5
    assert _procs_mentioning(str(ui_runs)) == []  # mlflow ui and its job consumers are all gone


@pytest.mark.slow
@pytest.mark.browser
def test_chromium_lands_on_the_front_in_mlflow_ui(ui_runs: Path) -> None:
    """What `autoprune ui` prints opens on the front: the Pareto plot and the front table in the parent run's
    description, in the model-training pages; the plot link serves the PNG. Screenshots kept as test artifacts."""
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium missing: scripts/test.sh installs Debian's chromium package")
        pytest.skip("Chromium not installed (apt-get install chromium)")
    port = _free_port()
    proc = _serve(ui_runs, port, 300)
    try:
        landing = _wait_url(proc)
        assert proc.stdout is not None
        run_page = proc.stdout.readline().split("(run page):", 1)[1].strip()
        plot = proc.stdout.readline().split("Pareto plot (PNG):", 1)[1].strip()
        with urllib.request.urlopen(plot, timeout=30) as r:
            assert r.read()[:8] == b"\x89PNG\r\n\x1a\n"
        keep = Path(__file__).resolve().parents[1] / "runs" / "test-artifacts"
        keep.mkdir(parents=True, exist_ok=True)
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tempfile.mkdtemp()}", "--window-size=1400,1400", "--virtual-time-budget=20000"]
        for page, name in ((landing, "mlflow_ui_landing.png"), (run_page, "mlflow_ui_parent_run.png")):
            dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", page], capture_output=True, text=True).stdout
            subprocess.run([CHROMIUM, *flags, f"--screenshot={keep / name}", page], capture_output=True)
            assert (keep / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert "Evaluation runs" not in dom and "Judges" not in dom  # the GenAI pages are not shown
            if page == landing:  # opened on the Pareto plot itself
                assert "pareto/pareto.png" in dom and "<img" in dom, dom[-2000:]
            else:  # the run page: the front table (and the plot) in the description, the search's settings
                assert "Pareto front" in dom and "val accuracy" in dom and "test accuracy" in dom, dom[-2000:]
                assert "get-artifact?path=pareto%2Fpareto.png" in dom
    finally:
        proc.terminate()  # SIGTERM: the CLI must still end the whole mlflow process group
        proc.wait()
    waited = 0.0
    while _procs_mentioning(str(ui_runs)) and waited < 120:  # a condition, with a hang guard
        time.sleep(0.5)
        waited += 0.5
    assert _procs_mentioning(str(ui_runs)) == []


def _chromium_flags() -> list[str]:
    return ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tempfile.mkdtemp()}", "--window-size=1400,1100", "--virtual-time-budget=20000"]


@pytest.mark.slow
@pytest.mark.browser
def test_optuna_dashboard_shows_the_front_with_metric_names(ui_runs: Path) -> None:
    import json
    import signal

    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium missing: scripts/test.sh installs Debian's chromium package")
        pytest.skip("Chromium not installed (apt-get install chromium)")
    dashboard = str(Path(sys.executable).parent / "optuna-dashboard")
    port = _free_port()
    proc = subprocess.Popen([dashboard, str(ui_runs / "optuna.journal"), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        studies = None
        while studies is None and proc.poll() is None:  # a condition: the server answers
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
                    studies = json.loads(r.read())["study_summaries"]
            except OSError:
                time.sleep(0.5)
        assert studies is not None, "optuna-dashboard ended before it served"
        study = next(x for x in studies if x["study_name"] == "ui_study")
        page = f"http://127.0.0.1:{port}/dashboard/studies/{study['study_id']}"
        dom = subprocess.run([CHROMIUM, *_chromium_flags(), "--dump-dom", page], capture_output=True,
                             text=True).stdout
        keep = Path(__file__).resolve().parents[1] / "runs" / "test-artifacts"
        keep.mkdir(parents=True, exist_ok=True)
        subprocess.run([CHROMIUM, *_chromium_flags(), f"--screenshot={keep / 'optuna_dashboard.png'}", page],
                       capture_output=True)
        assert "Pareto Front" in dom, dom[-2000:]
        assert "val_accuracy" in dom and "size (nonzero parameters, fraction of dense)" in dom  # not "Objective 0"
        note = subprocess.run([CHROMIUM, *_chromium_flags(), "--dump-dom", f"{page}/note"], capture_output=True,
                              text=True).stdout
        assert "Chosen on validation" in note and "test accuracy" in note  # the study's note: the front on test
        assert (keep / "optuna_dashboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{study['study_id']}", timeout=30) as r:
            trials = json.loads(r.read())["trials"]
        attrs = [{a["key"]: a["value"] for a in t["user_attrs"]} for t in trials if t["state"] == "Complete"]
        assert attrs and all("sparse" in a["summary"] and "val accuracy" in a["summary"] for a in attrs)
        assert any(a.get("baseline") for a in attrs)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its gunicorn workers
        proc.wait()
