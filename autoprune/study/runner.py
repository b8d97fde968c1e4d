"""Run a search end to end: workspace → sensitivity → heuristics → study → optimize → test re-evaluation."""

from __future__ import annotations

import contextlib
import functools
import multiprocessing as mp
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from autoprune.evaluate import evaluate
from autoprune.heuristics import Allocation, allocations
from autoprune.models import layer_shapes
from autoprune.policy import Policy
from autoprune.processes import exit_with_parent, interrupt_on_sigterm
from autoprune.records import SearchListener, StudyInfo
from autoprune.sensitivity import SensitivityCurves, load_or_scan
from autoprune.space import SampleContext, SearchSpace
from autoprune.study.ladder import compute_spent
from autoprune.study.objective import CANDIDATE_ERRORS, Objective
from autoprune.study.records import front_trials, to_record, trial_policy
from autoprune.study.sampler import make_sampler, search_distributions
from autoprune.study.storage import make_storage, metric_names, open_study
from autoprune.tasks import task_class
from autoprune.training import choose_threads, resolve_device
from autoprune.workspace import Workspace, load_workspace

_FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)


@dataclass(frozen=True)
class SearchOptions:
    """How to run a search (the CLI flags); ``None`` means "take it from the space file"."""

    n_trials: int | None = None
    timeout: float | None = None
    storage: str | None = None
    study_name: str | None = None
    workers: int = 1
    seed: int | None = None
    sampler: str | None = None
    device: str = "auto"
    runs_dir: Path = Path("runs")
    threads: int | None = None  # torch threads per process; None = 1 for a small model, else cores / workers


@dataclass
class Prepared:
    """Everything loaded once per process: workspace, curves, heuristics, sampling context."""

    ws: Workspace
    curves: SensitivityCurves | None
    curves_path: Path | None
    heuristics: dict[str, Allocation]
    ctx: SampleContext


def prepare(space: SearchSpace, device: str, runs_dir: Path, advance: Any = None, threads: int | None = None,
            workers: int = 1) -> Prepared:
    """Load the workspace, the (cached) sensitivity curves if needed, and the heuristic allocations; set torch's
    thread count for this process (see :func:`~autoprune.training.choose_threads`)."""
    ws = load_workspace(space, device, runs_dir)
    choose_threads(ws.model, workers, threads)
    curves = path = None
    if space.anchor == "sensitivity" or "sensitivity" in space.baselines:
        curves, path, _ = load_or_scan(runs_dir / "sensitivity", ws.model, ws.splits, ws.layers,
                                       space.sensitivity.ratios, space.criteria[0], space.granularity,
                                       space.sensitivity.bn_batches, advance, task=ws.task)
    prefs = curves.preferences() if curves is not None else None
    heur: dict[str, Allocation] = {k: functools.lru_cache(maxsize=64)(v)
            for k, v in allocations(ws.model, ws.layers, ws.bounds, prefs).items()}
    anchor = heur.get(space.anchor) if space.anchor != "none" else None
    ctx = SampleContext(model=space.model.name, fingerprint=ws.fingerprint, dense_key=ws.dense_key, sizes=ws.sizes,
                        bounds=ws.bounds,
                        anchor=anchor, shapes=layer_shapes(ws.model))
    return Prepared(ws, curves, path, heur, ctx)


def study_name_for(space: SearchSpace, opts: SearchOptions) -> str:
    """``--study`` or the space's ``name``."""
    return opts.study_name or space.name


def _open(space: SearchSpace, opts: SearchOptions, ctx: SampleContext, offset: int = 0) -> optuna.Study:
    storage = make_storage(opts.storage, opts.runs_dir)
    seed = space.seed if opts.seed is None else opts.seed
    name = study_name_for(space, opts)
    existing = 0
    with contextlib.suppress(KeyError):
        existing = len(optuna.load_study(study_name=name, storage=storage).trials)
    # seed + trials so far: a resumed study does not replay the first run's random draws
    sampler = make_sampler(opts.sampler or space.sampler, seed + existing + 7919 * offset,
                           search_distributions(space, ctx), opts.workers > 1, space.targets.grid)
    task = task_class(space.task.kind)
    names = metric_names(space.size_metric, str(resolve_device(opts.device)), task.primary)
    return open_study(name, storage, sampler, names, task.direction)


def worker_main(space: SearchSpace, opts: SearchOptions, n_trials: int, index: int, parent: int) -> None:
    """Entry point of a worker process: load everything, then optimize against the shared storage."""
    exit_with_parent(parent)  # a killed search leaves no worker behind (its running trial is re-run on resume)
    interrupt_on_sigterm()  # terminated with the main process at exit: its trial is marked interrupted
    prep = prepare(space, opts.device, opts.runs_dir, threads=opts.threads, workers=opts.workers)
    study = _open(space, opts, prep.ctx, offset=index + 1)
    seed = space.seed if opts.seed is None else opts.seed
    study.optimize(Objective(prep.ws, prep.ctx, prep.heuristics, seed), n_trials=n_trials, timeout=opts.timeout,
                   catch=CANDIDATE_ERRORS)


@dataclass
class SearchResult:
    """What a search leaves behind (also returned by ``autoprune.study``)."""

    study_name: str
    storage: str
    n_trials: int
    front: list[dict[str, Any]]
    dense_val: dict[str, float]
    dense_test: dict[str, float]
    summary: dict[str, Any] = field(default_factory=dict)
    primary: str = "accuracy"  # the task's primary metric (keys of dense_val and of the front rows)


def test_front(study: optuna.Study, prep: Prepared) -> dict[int, dict[str, float]]:
    """Re-evaluate every Pareto trial on the held-out test split (stored as study user attrs ``test/<n>``)."""
    out: dict[int, dict[str, float]] = {}
    for t in front_trials(study):
        key = f"test/{t.number}"
        cached = study.user_attrs.get(key)
        if cached is None:
            policy = trial_policy(t)
            ev = evaluate(prep.ws.model, policy, prep.ws.splits, with_test=True, task=prep.ws.task)
            cached = {**(ev.test or {}), f"val_{ev.primary}_rerun": ev.score}
            study.set_user_attr(key, cached)
        out[t.number] = cached
    return out


def study_info(prep: Prepared, study: optuna.Study, opts: SearchOptions) -> StudyInfo:
    """Plain description of the study for listeners."""
    space = prep.ws.space
    files = []
    if prep.curves_path is not None:
        files = [str(prep.curves_path.with_suffix(s)) for s in (".png", ".csv")]
    return StudyInfo(study_name=study.study_name, storage=opts.storage or str(opts.runs_dir / "optuna.journal"),
                     space_yaml=Path(space.source).read_text() if space.source else space.model_dump_json(),
                     space_name=space.name, sampler=opts.sampler or space.sampler, size_metric=space.size_metric,
                     dense_val=prep.ws.dense_val, dense_test=prep.ws.dense_test, sensitivity_files=files,
                     primary=prep.ws.task.primary, direction=prep.ws.task.direction)


def finish(study: optuna.Study, prep: Prepared, listener: SearchListener | None,
           wall_s: float, stopped: list[float]) -> SearchResult:
    """Test-evaluate the front, build records and the summary, notify the listener."""
    tests = test_front(study, prep)
    front_ids = set(tests)
    finished = study.get_trials(deepcopy=False, states=_FINISHED)  # enqueued-but-unrun trials wait for a resume
    records = [to_record(t, t.number in front_ids, tests.get(t.number)) for t in finished]
    front = [r for r in records if r.pareto]
    front_rows = [front_row(r, prep.ws.task.primary) for r in sorted(front, key=lambda r: r.sparsity)]
    done = [r for r in records if r.state == "COMPLETE"]
    evals = [float(r.metrics.get("time_total", 0.0)) for r in done]
    summary = {
        "trials": len(records), "complete": len(done),
        "stopped_on_rung": {r: sum(x.state == "PRUNED" and x.metrics.get("rung") == r for x in records)
                            for r in range(len(prep.ws.space.ladder.epochs) - 1)} if prep.ws.space.ladder else {},
        "pruned": sum(r.state == "PRUNED" for r in records), "failed": sum(r.state == "FAIL" for r in records),
        "early_stop_saved_s": sum(stopped), "wall_s": wall_s,
        "fail_reasons": sorted({str(r.metrics.get("fail_reason")) for r in records
                                if r.state == "FAIL" and r.metrics.get("fail_reason")}),
        "mean_eval_s": sum(evals) / max(len(evals), 1),
        **{f"mean_{k}": sum(float(r.metrics.get(k, 0.0)) for r in done) / max(len(done), 1)
           for k in ("time_sample", "time_prune", "time_finetune", "time_measure")},
    }
    if prep.ws.space.ladder is not None:
        summary.update(compute_spent((t.user_attrs for t in study.get_trials(deepcopy=False)),
                                     len(prep.ws.space.ladder.epochs)))
    if listener is not None:
        listener.on_finish(records, summary)
    return SearchResult(study.study_name, str(prep.ws.runs_dir), len(records), front_rows, prep.ws.dense_val,
                        prep.ws.dense_test, summary, prep.ws.task.primary)


def front_row(r: Any, primary: str = "accuracy") -> dict[str, Any]:
    """A row of the Pareto table (``primary``: the task's primary metric, e.g. accuracy or mse)."""
    pol = Policy.model_validate_json(r.policy_json) if r.policy_json else None
    return {
        "trial": r.number, "baseline": r.baseline or "", "sparsity": r.sparsity,
        "target": float(r.metrics.get("target_sparsity", r.sparsity)),  # the policy's; channel groups miss it a bit
        "nonzeros": int(r.metrics.get("nonzeros", 0)),
        "size": r.values[1] if r.values else float("nan"),
        f"val_{primary}": r.values[0] if r.values else float("nan"),
        f"test_{primary}": (r.test or {}).get(primary, float("nan")),
        "schedule": pol.schedule.label if pol else "", "criterion": pol.criterion if pol else "",
    }


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


def front_table(study_name: str, storage: str | None, runs_dir: Path) -> list[dict[str, Any]]:
    """Pareto rows of an existing study (test accuracy where the search stored it)."""
    from autoprune.study.export import primary_metric
    from autoprune.study.storage import load_existing

    study = load_existing(study_name, make_storage(storage, runs_dir))
    rows = []
    for t in front_trials(study):
        rows.append(front_row(to_record(t, True, study.user_attrs.get(f"test/{t.number}")), primary_metric(study)))
    return sorted(rows, key=lambda r: r["sparsity"])


def study_user_attrs(study_name: str, storage: str | None, runs_dir: Path) -> list[dict[str, Any]]:
    """The user attrs of every complete trial of an existing study, as plain dicts (rung records included)."""
    from autoprune.study.storage import load_existing

    study = load_existing(study_name, make_storage(storage, runs_dir))
    return [dict(t.user_attrs) for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
