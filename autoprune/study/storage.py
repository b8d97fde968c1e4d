"""Optuna storages: journal file by default (fsynced off the search thread), any URL (PostgreSQL to scale out)."""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

import optuna
from optuna.storages import JournalStorage, RDBStorage, RetryFailedTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock
from optuna.trial import TrialState

from autoprune.errors import ConfigError

__all__ = ["SIZE_NAMES", "TrialDurableJournal", "deliver_interrupts", "enqueue_lock", "first_damage", "hold_interrupts",
           "load_existing", "make_storage", "metric_names", "open_study", "repair_journal"]

SIZE_NAMES = {"nonzeros": "size (nonzero parameters, fraction of dense)",
              "bytes": "size (bytes in the best sparse format, fraction of dense)",
              "flops": "size (MACs, fraction of dense)"}


def metric_names(size_metric: str, device: str, primary: str = "accuracy") -> list[str]:
    """Names of the two objectives as dashboards show them; latency names the device it was timed on."""
    return [f"val_{primary}", SIZE_NAMES.get(size_metric, f"latency_ms ({device})")]

# Op codes of Optuna's journal file format (optuna.storages.journal._storage.JournalOperation, a stable on-disk
# format): create trial, set param, set state/values, intermediate value, user attr, system attr.
_TRIAL_OPS = frozenset({4, 5, 6, 7, 8, 9})
_UNFINISHED = (TrialState.RUNNING, TrialState.WAITING)


class _BackgroundFsync:
    """fsyncs one file on a helper thread whenever asked; requests that arrive while it works are merged.

    ``os.fsync`` releases the GIL, so the search thread does not wait for the disk.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._cond = threading.Condition()
        self._asked = self._done = 0  # requests made / requests covered by a finished fsync
        self._thread: threading.Thread | None = None

    def request(self) -> None:
        """Ask for an fsync of everything written so far."""
        with self._cond:
            self._asked += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="journal-fsync", daemon=True)
                self._thread.start()
                atexit.register(self.wait, 5.0)  # a process that ends has its last trial on disk too
            self._cond.notify_all()

    def wait(self, timeout: float | None = 10.0) -> bool:
        """Block until every requested fsync is done (True) or ``timeout`` passes (False; None: no limit)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._done >= self._asked, timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._asked > self._done)
                covers = self._asked
            fd = os.open(self._path, os.O_WRONLY | os.O_APPEND)
            try:
                os.fsync(fd)  # flushes the whole file: every write made before the request
            finally:
                os.close(fd)
            with self._cond:
                self._done = covers
                self._cond.notify_all()


def _hold_into(caught: list[int]) -> dict[int, Any]:
    """Swap SIGINT's and SIGTERM's handlers for ones that append to ``caught``; returns the previous handlers."""
    return {sig: signal.signal(sig, lambda signum, frame: caught.append(signum))
            for sig in (signal.SIGINT, signal.SIGTERM)}


def _deliver(caught: list[int], previous: dict[int, Any]) -> None:
    """Restore ``previous`` handlers, then raise what was held: SIGTERM through its own handler (Terminated, see
    autoprune.processes) or its default, a Ctrl-C as KeyboardInterrupt."""
    for sig, handler in previous.items():
        signal.signal(sig, handler)
    if signal.SIGTERM in caught:
        term = previous[signal.SIGTERM]
        if callable(term):
            term(signal.SIGTERM, None)
        else:
            signal.raise_signal(signal.SIGTERM)
    if caught:
        raise KeyboardInterrupt


class _Hold:
    """The signals held between a trial's end and the search's trial callback (see :func:`hold_interrupts`)."""

    previous: ClassVar[dict[int, Any] | None] = None
    caught: ClassVar[list[int]] = []


def hold_interrupts() -> None:
    """Hold a Ctrl-C or SIGTERM from now until :func:`deliver_interrupts`. Optuna 5's ``_run_trial`` cannot take
    one while it tells the storage a trial's result: the interrupt becomes an ``UnboundLocalError`` traceback and
    exit code 1 instead of the one-line stop (seen on CI). The objective holds them as it ends; the search's trial
    callback, called after the tell, delivers them. Main thread only; a second hold is a no-op."""
    if threading.current_thread() is not threading.main_thread() or _Hold.previous is not None:
        return
    _Hold.caught = []
    _Hold.previous = _hold_into(_Hold.caught)


def deliver_interrupts(raise_held: bool = True) -> None:
    """End a hold (nothing without one) and raise what arrived during it; ``raise_held=False`` only ends it (an
    exception is already on its way out)."""
    previous, caught = _Hold.previous, _Hold.caught
    if previous is None:
        return
    _Hold.previous = None
    _deliver(caught if raise_held else [], previous)


@contextlib.contextmanager
def _ctrl_c_after() -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT) or SIGTERM until the block ends, then raise it: a journal write and its lock release
    are done whole. (Python runs signal handlers in the main thread only, so only there can they be swapped; under
    :func:`hold_interrupts` they are held already.)"""
    if threading.current_thread() is not threading.main_thread() or _Hold.previous is not None:
        yield
        return
    caught: list[int] = []
    previous = _hold_into(caught)
    try:
        yield
    except BaseException:
        _deliver([], previous)  # the handlers back; the error goes on
        raise
    _deliver(caught, previous)


class TrialDurableJournal(JournalFileBackend):
    """Optuna's journal file, written without an fsync per write; fsynced on a helper thread as trials finish.

    Why: Optuna fsyncs each of a trial's ~9 writes (create, params, user attrs, tell) on the search thread; on
    the digits search that was 4.5 ms of a 13.5 ms per-trial machinery cost, and one synchronous fsync per
    finished trial still cost 0.7 ms. Every write still happens under Optuna's own file lock and reaches the OS
    at once, so other workers see it immediately and a crashed or killed process loses nothing. A finished
    trial (or a study change) asks the helper thread for an fsync, which lands a millisecond or so later: only a
    power loss in that window could drop the newest trial, and a resume would run it again.
    """

    def __init__(self, file_path: str) -> None:
        self._journal_lock = JournalFileSymlinkLock(file_path)
        super().__init__(file_path, self._journal_lock)
        self._path = file_path
        self.fsync = _BackgroundFsync(file_path)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["fsync"] = None  # a thread does not cross process boundaries; the copy gets its own
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.fsync = _BackgroundFsync(self._path)

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        """Append ``logs`` under the journal lock; a finishing or study-level write also requests an fsync."""
        text = "\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n"
        with _ctrl_c_after():  # a Ctrl-C never splits an operation or a lock release (it lands right after)
            self._journal_lock.acquire()  # blocks (breaking a stale lock after its grace period) like Optuna's
            try:
                with open(self._path, "ab") as f:  # closing hands the bytes to the OS: other workers see them
                    f.write(text.encode("utf-8"))
            finally:
                self._journal_lock.release()
        if not all(log["op_code"] in _TRIAL_OPS and log.get("state", TrialState.RUNNING) in _UNFINISHED
                   for log in logs):
            self.fsync.request()


def first_damage(data: bytes) -> tuple[int, int, int] | None:
    """(byte offset, line number, operations after it) of the first line that is not one complete JSON operation."""
    offset = 0
    lines = data.split(b"\n")
    complete = lines[:-1]  # the text after the last newline is an unfinished line (b"" when the file ends well)
    for i, line in enumerate(complete):
        try:
            ok = isinstance(json.loads(line), dict)
        except ValueError:
            ok = False
        if not ok:
            return offset, i + 1, len(complete) - i - 1
        offset += len(line) + 1
    return (offset, len(complete) + 1, 0) if lines[-1] else None


def repair_journal(path: Path) -> str | None:
    """Cut a damaged journal back to its last complete operation, keeping a copy of the damaged file.

    Optuna skips an unreadable last line when reading but appends the next operation right after it, which buries
    the damage mid-file and makes every later read fail: so a damaged journal is never appended to. Returns the
    one-line report, or None when the file is whole. Runs under Optuna's journal lock (no writer is mid-append).
    """
    if not path.exists():
        return None
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        data = path.read_bytes()
        damage = first_damage(data)
        if damage is None:
            return None
        offset, line, dropped = damage
        copy = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        copy.write_bytes(data)
        with open(path, "r+b") as f:
            f.truncate(offset)
            os.fsync(f.fileno())
    finally:
        lock.release()
    return (f"warning: {path} was damaged at byte {offset} (line {line}); cut back to the last complete operation "
            f"({dropped} later operation(s) dropped, the damaged line too); the damaged file is kept as {copy}")


def _journal(path: Path) -> JournalStorage:
    """A journal storage on ``path``, repaired first if a crash or an edit left it damaged."""
    path.parent.mkdir(parents=True, exist_ok=True)
    report = repair_journal(path)
    if report:
        print(report, file=sys.stderr)
    return JournalStorage(TrialDurableJournal(str(path)))


def make_storage(url: str | None, runs_dir: Path) -> optuna.storages.BaseStorage:
    """``None`` → ``runs/optuna.journal``; a ``*.journal``/``*.log`` path → journal file; else an RDB URL.

    RDB storages get heartbeats so trials of a crashed worker are marked failed and retried once.
    """
    if url is None:
        return _journal(runs_dir / "optuna.journal")
    if url.endswith((".journal", ".log")) and "://" not in url:
        return _journal(Path(url))
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 5 but are the documented way
            warnings.simplefilter("ignore")
            return RDBStorage(url, heartbeat_interval=30, grace_period=90,
                              heartbeat_stale_trial_callback=RetryFailedTrialCallback(max_retry=1),
                              engine_kwargs={"pool_pre_ping": True} if not url.startswith("sqlite") else None)
    except Exception as err:
        hint = ""
        if isinstance(err, ImportError):  # SQLAlchemy's "Failed to import DB access module": the driver is missing
            hint = "; for PostgreSQL: pip install 'autoprune[postgres]'"
        raise ConfigError(f"--storage '{url}': cannot open the Optuna storage ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''}){hint}") from None


@contextlib.contextmanager
def enqueue_lock(study: optuna.Study) -> Iterator[None]:
    """Hold a lock beside a journal study while checking what is enqueued and enqueuing, so that two processes
    started together on one study enqueue each baseline, retry and promotion once. (RDB storages: no lock; their
    studies are scaled out by processes started one after another.)"""
    storage = study._storage
    backend = getattr(storage, "_backend", None)
    if not isinstance(backend, TrialDurableJournal):
        yield
        return
    lock = JournalFileSymlinkLock(f"{backend._path}.enqueue")
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


class _NoInterruptTraceback(logging.Filter):
    """Drops Optuna's "Trial N failed" record (and its traceback) for a Ctrl-C: the CLI says it in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt))


def _quiet_interrupts() -> None:
    for handler in logging.getLogger("optuna").handlers:
        if not any(isinstance(f, _NoInterruptTraceback) for f in handler.filters):
            handler.addFilter(_NoInterruptTraceback())


def open_study(name: str, storage: optuna.storages.BaseStorage, sampler: optuna.samplers.BaseSampler,
               names: list[str] | None = None, metric_direction: Literal["maximize", "minimize"] = "maximize"
               ) -> optuna.Study:
    """Create the two-objective study (the task's primary metric in its direction, size ↓) or resume it."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _quiet_interrupts()
    study = optuna.create_study(study_name=name, storage=storage, directions=[metric_direction, "minimize"],
                                sampler=sampler, load_if_exists=True)
    if study.metric_names is None:  # dashboards label the axes with these instead of "Objective 0/1"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # flagged experimental in Optuna 5, but the documented way
            study.set_metric_names(names or metric_names("nonzeros", "cpu"))
    return study


def load_existing(name: str, storage: optuna.storages.BaseStorage) -> optuna.Study:
    """Open an existing study; a clear error lists the studies that do exist."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    if name not in names:
        raise ConfigError(f"study '{name}' not found in the storage (studies: {', '.join(names) or 'none'})")
    return optuna.load_study(study_name=name, storage=storage)
