"""``autoprune ui``: serve the MLflow UI on runs/ in its own process group and end the whole group on exit.

``mlflow ui`` starts job-consumer processes that survive a plain kill of the parent, so the server runs as a
session leader and is stopped with ``killpg`` (no orphans left behind).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

__all__ = ["start_server", "stop_server", "wait_ready"]


def start_server(backend_uri: str, artifacts: Path, host: str, port: int) -> subprocess.Popen[bytes]:
    """Start ``mlflow ui`` as a new session (its own process group)."""
    artifacts.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", backend_uri,
           "--default-artifact-root", artifacts.resolve().as_uri(), "--host", host, "--port", str(port)]
    return subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_ready(host: str, port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> bool:
    """Poll the server until it answers (or the process died / time ran out)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            time.sleep(0.5)
    return False


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """End the whole process group: TERM, then KILL after a grace period."""
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        return
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _group_alive(pgid):
                proc.wait(timeout=1)
                return
            time.sleep(0.2)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
