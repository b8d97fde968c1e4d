"""Helper processes end with the process that started them (stdlib only)."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

__all__ = ["PARENT_POLL_S", "Terminated", "exit_with_parent", "interrupt_on_sigterm"]

PARENT_POLL_S = 1.0  # how often a helper process checks that the process that started it still lives


def exit_with_parent(parent: int) -> None:
    """End this helper process as soon as ``parent`` is gone (kill -9 of a search leaves no orphan behind).

    A daemon thread polls the parent pid: once the process is re-parented (to init or a subreaper) it exits at
    once, without cleanup (the parent that owned the work is gone). Multiprocessing's resource tracker exits by
    itself when the last process holding its pipe ends.
    """
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so the same clean-up runs: the running trial is marked interrupted (re-run on
    resume), the MLflow logger is closed, worker processes end; the command exits with 143."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated


def interrupt_on_sigterm() -> None:
    """Turn SIGTERM into :class:`Terminated` in this process (a plain SIGTERM would end it without clean-up)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)
