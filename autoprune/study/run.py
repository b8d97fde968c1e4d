"""``run_search``: the whole search, with a progress sink and an optional listener (e.g. MLflow)."""

from __future__ import annotations

import math
import time
from typing import Any, Protocol

import optuna

from autoprune.pareto import best_at
from autoprune.records import SearchListener
from autoprune.space import SearchSpace
from autoprune.study.baselines import enqueue_baselines
from autoprune.study.identity import check_study_parts, study_parts
from autoprune.study.ladder import enqueue_promotions
from autoprune.study.liveness import recover
from autoprune.study.objective import CANDIDATE_ERRORS, Objective
from autoprune.study.records import front_trials, metric_sign, to_record
from autoprune.study.runner import (
    _FINISHED,
    SearchOptions,
    SearchResult,
    _open,
    finish,
    prepare,
    spawn_workers,
    study_info,
    worker_shares,
)
from autoprune.study.sampler import search_distributions
from autoprune.study.storage import enqueue_lock


class ProgressSink(Protocol):
    """Where progress goes (the CLI renders it with rich; the API may pass nothing)."""

    def start(self, total: int, description: str) -> None:
        """Begin a task of ``total`` steps."""

    def update(self, done: int, fields: dict[str, Any]) -> None:
        """``done`` steps finished; ``fields`` holds short status values."""

    def stop(self) -> None:
        """End the task."""


FRONT_EVERY = 10  # trials between Pareto-tag refreshes in MLflow
BEST_EVERY_S = 0.5  # seconds between recomputing the progress bar's best accuracy at each target


def _best_at_targets(study: optuna.Study, targets: list[float]) -> dict[str, Any]:
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    sign = metric_sign(study)
    points = [(sign * t.values[0], t.values[1]) for t in done]
    sparsities = [t.user_attrs.get("eval", {}).get("sparsity", 0.0) for t in done]
    best = {tgt: best_at(points, sparsities, tgt) for tgt in targets}
    fmt = ".3f" if sign > 0 else ".4g"  # accuracy-like in [0, 1]; errors such as MSE have any scale
    return {f"{tgt:.0%}": "–" if acc is None else format(sign * acc, fmt) for tgt, acc in best.items()}


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


def run_search(space: SearchSpace, opts: SearchOptions, listener: SearchListener | None = None,
               progress: ProgressSink | None = None) -> SearchResult:
    """Create or resume the study, enqueue baselines, optimize ``n_trials`` more trials, test the front."""
    t0 = time.perf_counter()
    prep = prepare(space, opts.device, opts.runs_dir, threads=opts.threads, workers=opts.workers)
    study = _open(space, opts, prep.ctx)
    check_study_parts(study, study_parts(space, prep.ws.sizes, search_distributions(space, prep.ctx)), space)
    seed = space.seed if opts.seed is None else opts.seed
    info = study_info(prep, study, opts)
    if "space_yaml" not in study.user_attrs:
        study.set_user_attr("space_yaml", info.space_yaml)
        study.set_user_attr("dense_val", prep.ws.dense_val)
        study.set_user_attr("dense_test", prep.ws.dense_test)
        study.set_user_attr("sampler", info.sampler)
        study.set_user_attr("size_metric", info.size_metric)
    if listener is not None:
        listener.on_start(info)
    n_trials = opts.n_trials if opts.n_trials is not None else space.trials
    with enqueue_lock(study):  # two processes started together on one study enqueue everything once
        recover(study)  # trials of a killed or interrupted run: failed with the reason, and enqueued again once
        enqueue_baselines(study, space, prep.ctx, prep.heuristics)
        enqueue_promotions(study, space)  # a resumed study continues its ladder first
    objective = Objective(prep.ws, prep.ctx, prep.heuristics, seed)
    targets = list(space.targets.grid or [])
    shares = worker_shares(n_trials, opts.workers)
    procs = spawn_workers(space, opts, shares[:-1])  # the main process runs the last share
    if progress is not None:
        progress.start(n_trials, f"search {study.study_name}")

    def on_trial(st: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if space.ladder is not None:
            with enqueue_lock(st):  # new scores at a rung may lift a stopped candidate into its best part
                enqueue_promotions(st, space)
        if listener is not None:
            listener.on_trial(to_record(trial))
            handed.append(trial.number)
            if len(handed) % FRONT_EVERY == 0:
                listener.on_front({t.number for t in front_trials(st)})
        if progress is not None:
            done = len(st.get_trials(deepcopy=False, states=_FINISHED)) - _finished_before
            if time.perf_counter() - best[0] > BEST_EVERY_S or done >= n_trials:  # a scan of all trials: throttled
                best[:] = [time.perf_counter(), _best_at_targets(st, targets)]
            stopped[0] += trial.state == optuna.trial.TrialState.PRUNED  # early stop, or a lower ladder rung
            progress.update(min(done, n_trials), {"best": best[1], "stopped": stopped[0]})

    handed: list[int] = []
    stopped = [0]  # trials of this run that stopped before the last rung (or early)
    best: list[Any] = [-math.inf, {}]  # when the best-at-target figures were computed, and their values
    _finished_before = len(study.get_trials(deepcopy=False, states=_FINISHED))
    t_opt = time.perf_counter()
    try:
        study.optimize(objective, n_trials=shares[-1], timeout=opts.timeout, callbacks=[on_trial],
                       catch=CANDIDATE_ERRORS)
        for p in procs:
            p.join()
    finally:
        if progress is not None:
            progress.stop()
        stop_workers(procs)
    optimize_s = time.perf_counter() - t_opt
    result = finish(study, prep, listener, time.perf_counter() - t0, objective.stopped)
    n = len(objective.eval_seconds)
    eval_s = sum(objective.eval_seconds)
    overhead = (optimize_s - eval_s) / max(n, 1)  # everything in the loop that is not evaluating a candidate
    result.summary.update(optimize_s=optimize_s, eval_s=eval_s, trials_here=n, overhead_s_per_trial=overhead,
                          overhead_share_of_eval=overhead * n / eval_s if eval_s > 0 else 0.0)
    return result

