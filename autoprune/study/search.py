"""``run_search``, the one orchestrator: open the study, enqueue, optimize (with workers), re-score the front on
test, summarise, and tell the listener (e.g. MLflow) and the progress sink what happened."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch

from autoprune.config.events import ProgressSink, SearchListener, StudyInfo
from autoprune.config.pareto import best_at
from autoprune.config.sampling import SampleContext
from autoprune.config.space import SearchSpace
from autoprune.config.specs import LadderSpec
from autoprune.errors import ConfigError
from autoprune.models.layers import weight_of
from autoprune.pruning.evaluate import evaluate
from autoprune.study.attrs import DENSE_PARAMS, DENSE_TEST, DENSE_VAL, test_metrics_key
from autoprune.study.baselines import enqueue_baselines
from autoprune.study.budget import EpochBudget, epochs_spent
from autoprune.study.identity import check_study_parts, refuse_other_parts, study_parts
from autoprune.study.ladder import compute_spent, enqueue_promotions
from autoprune.study.liveness import recover
from autoprune.study.objective import CANDIDATE_ERRORS, Objective
from autoprune.study.race import enqueue_race
from autoprune.study.sampler import search_distributions
from autoprune.study.setup import Prepared, SearchOptions, open_search_study, prepare
from autoprune.study.storage import deliver_interrupts, enqueue_lock, load_existing, make_storage
from autoprune.study.transfer import enqueue_transfers
from autoprune.study.trials import (
    FINISHED,
    dense_row,
    front_row,
    front_trials,
    metric_sign,
    policy_sparsity,
    to_record,
    trial_policy,
)
from autoprune.study.workers import spawn_workers, stop_workers, worker_shares
from autoprune.workspace import PreCheck

__all__ = ["BEST_EVERY_S", "FRONT_EVERY", "ProgressSink", "SearchResult", "finish", "run_search", "study_info",
           "summarize", "test_front"]


FRONT_EVERY = 10  # trials between Pareto-tag refreshes in MLflow


BEST_EVERY_S = 0.5  # seconds between recomputing the progress bar's best score at each target


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


def _best_at_targets(study: optuna.Study, targets: list[float]) -> dict[str, Any]:
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    sign = metric_sign(study)
    points = [(sign * t.values[0], t.values[1]) for t in done]
    sparsities = [policy_sparsity(t) for t in done]
    best = {tgt: best_at(points, sparsities, tgt) for tgt in targets}
    fmt = ".3f" if sign > 0 else ".4g"  # accuracy-like in [0, 1]; errors such as MSE have any scale
    return {f"{tgt:.0%}": "–" if acc is None else format(sign * acc, fmt) for tgt, acc in best.items()}


def test_front(study: optuna.Study, prep: Prepared, progress: ProgressSink | None = None
               ) -> dict[int, dict[str, float]]:
    """Re-evaluate every Pareto trial on the held-out test split (stored as study user attrs ``test/<n>``)."""
    out: dict[int, dict[str, float]] = {}
    front = front_trials(study)
    todo = [t for t in front if test_metrics_key(t.number) not in study.user_attrs]
    if progress is not None and todo:
        progress.start(len(todo), "front re-scored on test")
    for t in front:
        key = test_metrics_key(t.number)
        cached = study.user_attrs.get(key)
        if cached is None:
            if progress is not None:
                progress.update(todo.index(t), {"trial": t.number})
            policy = trial_policy(t)
            ev = evaluate(prep.ws.model, policy, prep.ws.splits, with_test=True, task=prep.ws.task)
            cached = {**(ev.test or {}), f"val_{ev.primary}_rerun": ev.score}
            study.set_user_attr(key, cached)
        out[t.number] = cached
    if progress is not None and todo:
        progress.update(len(todo), {})
        progress.stop()
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
                     primary=prep.ws.task.primary, direction=prep.ws.task.direction, config=search_config(space, opts))


def search_config(space: SearchSpace, opts: SearchOptions) -> dict[str, str]:
    """What defines the search, as short strings (MLflow params of the parent run)."""
    ft = space.finetune
    ladder = space.ladder
    return {
        "model": space.model.name, "model_kwargs": str(space.model.kwargs), "data": space.data.name,
        "task": space.task.kind, "granularity": space.granularity.label,
        "targets": str(space.targets.grid or list(space.targets.range or [])),
        "sampler": opts.sampler or space.sampler, "trials": str(opts.n_trials or space.trials),
        "seed": str(space.seed if opts.seed is None else opts.seed), "size_metric": space.size_metric,
        "finetune_lr_scale": str(ft.lr_scale), "finetune_decay": str(ft.decay),
        "finetune_epochs": str(ladder.epochs if ladder else ft.epochs),
        "ladder": "none" if ladder is None else ladder_label(ladder),
        "criteria": str(space.criteria), "schedules": str([s.label for s in space.schedules]),
        "baselines": str(space.baselines), "workers": str(opts.workers),
    }


def ladder_label(ladder: LadderSpec) -> str:
    """The ladder in one line: its rungs (tokens, epochs), how many climb and by which rule."""
    held_out = " (held-out windows)" if ladder.tokens_from == "held_out" else ""
    tokens = "" if ladder.tokens is None else f"tokens {ladder.tokens}{held_out}, "
    rule = f"keep {ladder.keep}" if ladder.promote == "fraction" else "elitist (climb past the incumbent)"
    return f"{tokens}epochs {ladder.epochs}, {rule}"


def summarize(study: optuna.Study, prep: Prepared, records: list[Any], wall_s: float, objective: Objective,
              optimize_s: float) -> dict[str, Any]:
    """The run's summary, built once: trial counts by state and rung, failure reasons, time per evaluation phase,
    compute spent on each ladder rung, and the search machinery's cost per trial (all of it goes to MLflow)."""
    done = [r for r in records if r.state == "COMPLETE"]
    evals = [float(r.metrics.get("time_total", 0.0)) for r in done]
    ladder = prep.ws.space.ladder
    summary: dict[str, Any] = {
        "trials": len(records), "complete": len(done),
        "stopped_on_rung": {r: sum(x.state == "PRUNED" and x.metrics.get("rung") == r for x in records)
                            for r in range(len(ladder.epochs) - 1)} if ladder else {},
        "pruned": sum(r.state == "PRUNED" for r in records), "failed": sum(r.state == "FAIL" for r in records),
        "early_stop_saved_s": sum(objective.stopped), "wall_s": wall_s,
        "fail_reasons": sorted({str(r.metrics.get("fail_reason")) for r in records
                                if r.state == "FAIL" and r.metrics.get("fail_reason")}),
        "mean_eval_s": sum(evals) / max(len(evals), 1),
        **{f"mean_{k}": sum(float(r.metrics.get(k, 0.0)) for r in done) / max(len(done), 1)
           for k in ("time_sample", "time_prune", "time_finetune", "time_measure")},
    }
    if ladder is not None:
        summary.update(compute_spent((t.user_attrs for t in study.get_trials(deepcopy=False)), len(ladder.epochs)))
    else:
        summary["finetune_epochs"] = epochs_spent(study, prep.ws.space)
    n, eval_s = max(objective.trials_run, 1), sum(objective.eval_seconds)
    overhead = (optimize_s - eval_s) / n  # everything in the loop that is not evaluating a candidate, per trial
    summary.update(optimize_s=optimize_s, eval_s=eval_s, trials_here=objective.trials_run,
                   overhead_s_per_trial=overhead, overhead_share_of_eval=overhead * n / eval_s if eval_s > 0 else 0.0)
    return summary


def dashboard_note(study: optuna.Study, rows: list[dict[str, Any]], primary: str) -> None:
    """The front with its test scores as the study's note in optuna-dashboard (markdown; a finished trial's own
    attrs can no longer be written). Only when optuna-dashboard is installed: it is an optional viewer."""
    try:
        from optuna_dashboard import save_note
    except ImportError:
        return
    head = f"| trial | baseline | sparsity | size | val {primary} | test {primary} |\n|---|---|---|---|---|---|\n"
    body = "".join(f"| {r['trial']} | {r['baseline']} | {r['sparsity']:.4f} | {r['size']:.4f} | "
                   f"{r[f'val_{primary}']:.4f} | {r[f'test_{primary}']:.4f} |\n" for r in rows)
    save_note(study, f"## Pareto front\n\nChosen on validation; the test split is only reported.\n\n{head}{body}")


def finish(study: optuna.Study, prep: Prepared, listener: SearchListener | None, wall_s: float,
           objective: Objective, optimize_s: float, progress: ProgressSink | None = None) -> SearchResult:
    """Test-evaluate the front, build records and the summary, notify the listener."""
    tests = test_front(study, prep, progress)
    finished = study.get_trials(deepcopy=False, states=FINISHED)  # enqueued-but-unrun trials wait for a resume
    records = [to_record(t, t.number in tests, tests.get(t.number)) for t in finished]
    primary = prep.ws.task.primary
    front_rows = [dense_row(prep.ws.dense_val, prep.ws.dense_test, sum(p.numel() for p in prep.ws.model.parameters()),
                            primary)]
    front_rows += [front_row(r, primary) for r in sorted((r for r in records if r.pareto), key=lambda r: r.sparsity)]
    summary = summarize(study, prep, records, wall_s, objective, optimize_s)
    dashboard_note(study, front_rows, primary)
    if listener is not None:
        listener.on_finish(records, summary)
    return SearchResult(study.study_name, str(prep.ws.runs_dir), len(records), front_rows, prep.ws.dense_val,
                        prep.ws.dense_test, summary, prep.ws.task.primary)


def study_precheck(opts: SearchOptions, opened: list[optuna.storages.BaseStorage] | None = None) -> PreCheck:
    """Before the dense model is trained: the storage opens, and a study of this name, if there is one, was made
    with this space (what can be refused in one line is refused before minutes of work). The opened storage is
    appended to ``opened``, so the search goes on with it instead of opening (and scanning) it again."""

    def check(space: SearchSpace, model: torch.nn.Module, layers: list[str]) -> None:
        storage = make_storage(opts.storage, opts.runs_dir)
        if opened is not None:
            opened.append(storage)
        sizes = {f: weight_of(model, f).numel() for f in layers}
        def uniform(target: float) -> dict[str, float]:  # stands in for each anchor: only their names count here
            return dict.fromkeys(sizes, target)

        ctx = SampleContext(model=space.model.name, fingerprint="", sizes=sizes, bounds=space.bounds_for(layers),
                            anchors=dict.fromkeys(space.anchors, uniform) or None)  # (a searched anchor is a param)
        try:
            study = load_existing(opts.study_name or space.name, storage)
        except ConfigError:  # no such study yet
            return
        refuse_other_parts(study, study_parts(space, sizes, search_distributions(space, ctx)), space)

    return check


def _record_study(study: optuna.Study, info: StudyInfo, prep: Prepared) -> None:
    """A new study's user attrs: the space it searches, the dense model's scores and size, sampler and data."""
    study.set_user_attr("space_yaml", info.space_yaml)
    study.set_user_attr(DENSE_VAL, prep.ws.dense_val)
    study.set_user_attr(DENSE_TEST, prep.ws.dense_test)
    study.set_user_attr("sampler", info.sampler)
    study.set_user_attr("size_metric", info.size_metric)
    study.set_user_attr("data", prep.ws.space.data.name)
    study.set_user_attr(DENSE_PARAMS, sum(p.numel() for p in prep.ws.model.parameters()))


def _enqueue_start(study: optuna.Study, space: SearchSpace, prep: Prepared) -> None:
    """What a (re)started search runs first: recovered trials, baselines, ladder promotions, the recipe race."""
    with enqueue_lock(study):  # two processes started together on one study enqueue everything once
        recover(study)  # trials of a killed or interrupted run: failed with the reason, and enqueued again once
        enqueue_baselines(study, space, prep.ctx, prep.heuristics)
        enqueue_promotions(study, space)  # a resumed study continues its ladder first
        enqueue_race(study, space, prep.ctx)


class _SearchProgress:
    """This run's trials on a progress sink, with the best score per target size and how many stopped early."""

    def __init__(self, progress: ProgressSink | None, study: optuna.Study, n_trials: int, targets: list[float]
                 ) -> None:
        self.progress, self.n_trials, self.targets = progress, n_trials, targets
        self.stopped = 0  # trials of this run that stopped before the last rung (or early)
        self.best: dict[str, Any] = {}  # the best score at each target, recomputed at most every BEST_EVERY_S
        self.best_at = -math.inf  # when it was
        self.finished_before = len(study.get_trials(deepcopy=False, states=FINISHED))
        if progress is not None:
            progress.start(n_trials, f"search {study.study_name}")

    def update(self, st: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """After each trial."""
        if self.progress is None:
            return
        done = len(st.get_trials(deepcopy=False, states=FINISHED)) - self.finished_before
        if time.perf_counter() - self.best_at > BEST_EVERY_S or done >= self.n_trials:  # a scan of all trials
            self.best, self.best_at = _best_at_targets(st, self.targets), time.perf_counter()
        self.stopped += trial.state == optuna.trial.TrialState.PRUNED  # early stop, or a lower ladder rung
        self.progress.update(min(done, self.n_trials), {"best": self.best, "stopped": self.stopped})


def run_search(space: SearchSpace, opts: SearchOptions, listener: SearchListener | None = None,
               progress: ProgressSink | None = None) -> SearchResult:
    """Create or resume the study, enqueue baselines, optimize ``n_trials`` more trials, test the front."""
    t0 = time.perf_counter()
    opened: list[optuna.storages.BaseStorage] = []
    prep = prepare(space, opts.device, opts.runs_dir, threads=opts.threads, workers=opts.workers, progress=progress,
                   precheck=study_precheck(opts, opened))
    space = prep.ws.space  # budgets in steps resolved to epochs of the loaded train split
    study = open_search_study(space, opts, prep.ctx, storage=opened[-1] if opened else None)
    check_study_parts(study, study_parts(space, prep.ws.sizes, search_distributions(space, prep.ctx)), space)
    seed = space.seed if opts.seed is None else opts.seed
    info = study_info(prep, study, opts)
    if "space_yaml" not in study.user_attrs:
        _record_study(study, info, prep)
    if listener is not None:
        listener.on_start(info)
    n_trials = opts.n_trials if opts.n_trials is not None else space.trials
    _enqueue_start(study, space, prep)
    objective = Objective(prep.ws, prep.ctx, prep.heuristics, seed, stores=prep.stores)
    budget = EpochBudget(space, opts.max_epochs)
    if budget.exhausted(study):  # a resumed study that already spent its --max-epochs adds nothing
        n_trials = 0
    shares = worker_shares(n_trials, opts.workers)
    procs = spawn_workers(space, opts, shares[:-1]) if n_trials else []  # the main process runs the last share
    shown = _SearchProgress(progress, study, n_trials, list(space.targets.grid or []))

    def on_trial(st: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        deliver_interrupts()  # a Ctrl-C held while Optuna told the storage this trial's result lands here
        budget(st, trial)
        if space.ladder is not None:
            with enqueue_lock(st):  # new scores at a rung may lift a stopped candidate into its best part
                enqueue_promotions(st, space)
                if space.ladder.transfer and trial.state == optuna.trial.TrialState.COMPLETE:
                    enqueue_transfers(st, space)  # a new production score may be a size's new best
                if space.ladder.race:
                    enqueue_race(st, space, prep.ctx)  # the race's next round once the last one finished
        if listener is not None:
            listener.on_trial(to_record(trial))
            handed.append(trial.number)
            if len(handed) % FRONT_EVERY == 0:
                listener.on_front({t.number for t in front_trials(st)})
        shown.update(st, trial)

    handed: list[int] = []
    t_opt = time.perf_counter()
    try:
        study.optimize(objective, n_trials=shares[-1], timeout=opts.timeout, callbacks=[on_trial],
                       catch=CANDIDATE_ERRORS)
        deliver_interrupts()  # (a trial that ended the loop by raising skipped the callback)
        for p in procs:
            p.join()
    finally:
        deliver_interrupts(raise_held=False)
        if progress is not None:
            progress.stop()
        stop_workers(procs)
    optimize_s = time.perf_counter() - t_opt
    return finish(study, prep, listener, time.perf_counter() - t0, objective, optimize_s, progress)
