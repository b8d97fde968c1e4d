"""Trials whose process died or was interrupted: failed with a reason and run again, once.

The journal storage has no heartbeat in Optuna 5, so a trial whose process was killed stays RUNNING forever and,
if it was an enqueued baseline, its (heuristic, target) pair never runs. Each trial records the process that runs
it (host, pid, process start time); when a study is opened, a RUNNING trial whose process is gone on this host is
marked FAIL ("worker died") and its params and attrs are enqueued again. A trial stopped by Ctrl-C is FAIL with
"interrupted" and is re-enqueued the same way. RUNNING trials of other hosts are left alone (PostgreSQL studies
have Optuna's heartbeat for those).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from autoprune.study.attrs import CARRIED, REASON, RETRY_OF, WORKER

__all__ = ["is_gone", "recover", "this_worker"]


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid from the original."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22 of /proc/<pid>/stat, counted after the command name


def this_worker() -> dict[str, Any]:
    """Who runs a trial: host, pid and process start time."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "start": _start_time(pid)}


def is_gone(worker: dict[str, Any]) -> bool:
    """Whether the recorded process has ended (False for another host: it cannot be checked from here)."""
    if worker.get("host") != socket.gethostname():
        return False
    pid = int(worker["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return worker.get("start") is not None and _start_time(pid) != worker["start"]


def recover(study: optuna.Study) -> list[int]:
    """Fail the trials of dead processes and re-enqueue every dead or interrupted trial once; returns their numbers."""
    trials = study.get_trials(deepcopy=False)
    retried = {int(t.user_attrs[RETRY_OF]) for t in trials if RETRY_OF in t.user_attrs}
    out = []
    for t in trials:
        dead = t.state == TrialState.RUNNING and WORKER in t.user_attrs and is_gone(t.user_attrs[WORKER])
        if dead:
            study._storage.set_trial_user_attr(t._trial_id, REASON, "worker died")
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        interrupted = t.state == TrialState.FAIL and t.user_attrs.get(REASON) == "interrupted"
        if (dead or interrupted) and t.number not in retried:
            attrs = {k: v for k, v in t.user_attrs.items() if k in CARRIED}
            study.enqueue_trial(dict(t.params), user_attrs={**attrs, RETRY_OF: t.number})
            out.append(t.number)
    return out
