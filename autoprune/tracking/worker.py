"""Run the MLflow logger in its own process: the search process only pickles a small record per trial.

MLflow's client does tens of milliseconds of Python work per child run (SQLAlchemy, artifact copies); in a
thread it would hold the GIL against the search's sampler. In a spawned process it costs the search only the
hand-over (well under a millisecond), measured as ``tracking_s_per_trial``.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import time
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

from autoprune.config.events import StudyInfo, TrialRecord
from autoprune.processes import exit_with_parent

__all__ = ["MlflowListener"]

_LOGGER: Any = None


def _init(uri: str | None, runs_dir: Path, experiment: str | None, parent: int) -> None:
    global _LOGGER
    exit_with_parent(parent)
    with contextlib.suppress(AttributeError, OSError):  # no os.nice on Windows
        os.nice(10)  # logging is background work: on a busy machine the search's own process goes first
    from autoprune.tracking.logger import MlflowLogger

    _LOGGER = MlflowLogger(uri, runs_dir, experiment)


def _call(method: str, *args: Any) -> dict[str, Any]:
    getattr(_LOGGER, method)(*args)
    return {"failed": _LOGGER.failed, "children": len(_LOGGER.children), "log_seconds": list(_LOGGER.log_seconds)}


class MlflowListener:
    """A :class:`~autoprune.events.SearchListener` that forwards every event to a logger process."""

    def __init__(self, tracking_uri: str | None, runs_dir: Path, experiment: str | None = None) -> None:
        self._pool = ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn"), initializer=_init,
                                         initargs=(tracking_uri, runs_dir, experiment, os.getpid()))
        self._pending: list[Future[dict[str, Any]]] = []
        self.enqueue_seconds: list[float] = []
        self.log_seconds: list[float] = []
        self.failed: str | None = None

    def _wait(self) -> None:
        state: dict[str, Any] = {}
        for f in self._pending:
            state = f.result()
        self._pending.clear()
        if state:
            self.failed = state["failed"]
            self.log_seconds = state["log_seconds"]

    def on_start(self, info: StudyInfo) -> None:
        """Open the parent run (waited for: the experiment exists before any trial runs)."""
        self._pending.append(self._pool.submit(_call, "on_start", info))
        self._wait()

    def on_trial(self, record: TrialRecord) -> None:
        """Hand the trial to the logger process and return at once."""
        t0 = time.perf_counter()
        self._pending.append(self._pool.submit(_call, "on_trial", record))
        self.enqueue_seconds.append(time.perf_counter() - t0)

    def on_front(self, front: set[int]) -> None:
        """Hand the current front over (tags are updated in the logger process)."""
        self._pending.append(self._pool.submit(_call, "on_front", front))

    def on_finish(self, records: list[TrialRecord], summary: dict[str, Any]) -> None:
        """Backfill, refresh Pareto tags, log the front; then end the logger process."""
        self._pending.append(self._pool.submit(_call, "on_finish", records, summary))
        self._wait()
        self._pool.shutdown(wait=True)

    def on_abort(self) -> None:
        """Log the trials already handed over, then end the logger process (nothing handed over is lost)."""
        try:
            self._wait()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
