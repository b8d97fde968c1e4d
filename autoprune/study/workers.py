"""Worker processes: extra searchers on the same study storage, started and ended with the search."""

from __future__ import annotations

import multiprocessing as mp
import os
from typing import Any

from autoprune.config.space import SearchSpace
from autoprune.processes import exit_with_parent, interrupt_on_sigterm
from autoprune.study.budget import EpochBudget
from autoprune.study.objective import CANDIDATE_ERRORS, Objective
from autoprune.study.setup import SearchOptions, open_search_study, prepare
from autoprune.study.storage import deliver_interrupts

__all__ = ["spawn_workers", "stop_workers", "worker_main", "worker_shares"]


def worker_main(space: SearchSpace, opts: SearchOptions, n_trials: int, index: int, parent: int) -> None:
    """Entry point of a worker process: load everything, then optimize against the shared storage."""
    exit_with_parent(parent)  # a killed search leaves no worker behind (its running trial is re-run on resume)
    interrupt_on_sigterm()  # terminated with the main process at exit: its trial is marked interrupted
    prep = prepare(space, opts.device, opts.runs_dir, threads=opts.threads, workers=opts.workers)
    space = prep.ws.space  # budgets in steps resolved to epochs of the loaded train split
    study = open_search_study(space, opts, prep.ctx, offset=index + 1)
    seed = space.seed if opts.seed is None else opts.seed
    objective = Objective(prep.ws, prep.ctx, prep.heuristics, seed, stores=prep.stores)
    budget = EpochBudget(space, opts.max_epochs)
    if budget.exhausted(study):
        return
    try:  # an interrupt held through a trial's tell (see hold_interrupts) lands after it
        study.optimize(objective, n_trials=n_trials, timeout=opts.timeout, catch=CANDIDATE_ERRORS,
                       callbacks=[lambda st, t: deliver_interrupts(), budget])
        deliver_interrupts()
    finally:
        deliver_interrupts(raise_held=False)


def worker_shares(n_trials: int, workers: int) -> list[int]:
    """Split ``n_trials`` over ``workers`` processes as evenly as possible."""
    return [n_trials // workers + (1 if i < n_trials % workers else 0) for i in range(workers)]


def spawn_workers(space: SearchSpace, opts: SearchOptions, shares: list[int]) -> list[Any]:
    """Start one extra process per share, all on the same study storage."""
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=worker_main, args=(space, opts, n, i, os.getpid()), daemon=True)
             for i, n in enumerate(shares)]
    for p in procs:
        p.start()
    return procs


def stop_workers(procs: list[Any], grace_s: float = 30.0) -> None:
    """End worker processes still running: SIGTERM first (each marks its running trial interrupted), then kill."""
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(grace_s)  # bounds a worker stuck in a native call; a normal one ends in well under a second
        if p.is_alive():
            p.kill()
            p.join()
