"""The Python API, mirroring the CLI: ``autoprune.search(...)``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from autoprune.config.space import SearchSpace
from autoprune.errors import ConfigError
from autoprune.files import check_runs_folder, check_writable, write_atomic

__all__ = ["apply_policy", "check_sampler", "export", "load_space", "load_workspace", "search", "sync"]


def load_space(space: SearchSpace | str | Path) -> SearchSpace:
    """Accept a loaded space or a path to its YAML."""
    return space if isinstance(space, SearchSpace) else SearchSpace.from_yaml(space)


def check_sampler(name: str | None) -> None:
    """Refuse an unknown ``--sampler`` before anything loads."""
    if name is None:
        return
    from autoprune.study.samplers import sampler_factory

    try:
        sampler_factory(name)
    except ValueError as err:
        raise ConfigError(f"--sampler: {err}") from None


def search(space: SearchSpace | str | Path, *, n_trials: int | None = None, timeout: float | None = None,
           max_epochs: float | None = None,
           storage: str | None = None, study: str | None = None, workers: int = 1, seed: int | None = None,
           sampler: str | None = None, device: str = "auto", runs_dir: str | Path = "runs",
           tracking_uri: str | None = None, track: bool = True, progress: Any = None,
           threads: int | None = None) -> Any:
    """Run (or resume) a search; returns a :class:`~autoprune.study.SearchResult`.

    ``max_epochs``: stop starting trials once the study has spent this many fine-tune epochs (all rungs, all
    trials, earlier runs of the study included); ``track=False`` skips MLflow; ``tracking_uri`` points at a real
    MLflow server instead of runs/mlflow.db;
    ``threads``: torch threads per process (default: 1 for a small model, else the cores shared by the workers).
    """
    from autoprune.study import SearchOptions, run_search

    check_sampler(sampler)
    check_runs_folder(Path(runs_dir))  # the journal, MLflow store and model cache live there
    sp = load_space(space)
    opts = SearchOptions(n_trials=n_trials, timeout=timeout, max_epochs=max_epochs, storage=storage,
                         study_name=study, workers=workers, seed=seed, sampler=sampler, device=device,
                         runs_dir=Path(runs_dir), threads=threads)
    listener = None
    if track:
        from autoprune.tracking.worker import MlflowListener

        listener = MlflowListener(tracking_uri, Path(runs_dir))
    try:
        result = run_search(sp, opts, listener, progress)
    except BaseException:  # Ctrl-C, SIGTERM, an error: what was handed to the logger is logged, then it ends
        if listener is not None:
            listener.on_abort()
        raise
    if listener is not None and listener.enqueue_seconds:
        result.summary["tracking_s_per_trial"] = sum(listener.enqueue_seconds) / len(listener.enqueue_seconds)
    if listener is not None and listener.log_seconds:
        result.summary["tracking_worker_s_per_trial"] = sum(listener.log_seconds) / len(listener.log_seconds)
    return result


def export(study: str, out: str | Path, *, trial: int | None = None, max_size: float | None = None,
           min_accuracy: float | None = None, knee: bool = False, storage: str | None = None,
           runs_dir: str | Path = "runs", tracking_uri: str | None = None, track: bool = True,
           min_metric: float | None = None, max_metric: float | None = None) -> Any:
    """Pick a front point and write its policy JSON atomically; returns the :class:`Policy`.

    ``min_metric`` / ``max_metric``: the smallest front point whose validation primary metric is at least / at
    most this, for a study that maximizes / minimizes it (``min_accuracy``: the same for classification)."""
    from autoprune.study import choose_trial, load_existing, make_storage, metric_sign, policy_from_trial

    check_writable(Path(out), "-o")
    st = load_existing(study, make_storage(storage, Path(runs_dir)))
    maximizes = metric_sign(st) > 0
    for flag, value, fits in (("--min-metric", min_metric, maximizes), ("--max-metric", max_metric, not maximizes)):
        if value is not None and not fits:
            other = "--min-metric" if flag == "--max-metric" else "--max-metric"
            raise ConfigError(f"export {flag}: study '{study}' {'maximizes' if maximizes else 'minimizes'} "
                              f"{(st.metric_names or ['its metric'])[0]}; use {other}")
    if min_accuracy is not None and not maximizes:
        raise ConfigError(f"export --min-accuracy: study '{study}' minimizes {(st.metric_names or ['?'])[0]}; "
                          "use --max-metric")
    bound = min_metric if min_metric is not None else max_metric
    t = choose_trial(st, trial, max_size, min_accuracy, knee, metric_bound=bound)
    policy = policy_from_trial(st, t)
    policy.save(out)
    recipes = Path(out).with_suffix(".ratios.json")  # the same ratios for torch-pruning and LLM compression tools
    write_atomic(recipes, (json.dumps(policy.ratio_recipes(), indent=1) + "\n").encode())
    print(f"wrote {out} and {recipes} (pruning_ratio_dict for torch-pruning, module-regex recipe)", file=sys.stderr)
    if track:
        from autoprune.tracking.records import log_export

        try:
            run_id = log_export(tracking_uri, Path(runs_dir), study, Path(out), t.number)
        except Exception as err:  # the policy file is written; MLflow is a convenience here
            print(f"warning: could not log the export to MLflow ({type(err).__name__})", file=sys.stderr)
        else:  # say what changed in MLflow (export touches a run the user may be looking at)
            print(f"MLflow: attached {Path(out).name} to run {run_id} of study '{study}' (artifacts exported/, tag "
                  "exported_policy)" if run_id else f"MLflow: nothing logged (no run of study '{study}')",
                  file=sys.stderr)
    return policy


def apply_policy(policy: str | Path, *, progress: Any = None, **options: Any) -> Any:
    """Apply an exported policy as ``autoprune apply`` does: prune, fine-tune, make permanent, shrink, save and
    export; returns :class:`~autoprune.deploy.apply.Applied` (the pruned model, the before/after rows, the files
    written). ``options`` are :class:`~autoprune.deploy.apply.ApplyOptions` fields (``space``, ``out``, ``onnx``,
    ``criterion``, ``finetune_epochs``, ``track`` ...; paths may be strings)."""
    import dataclasses

    from autoprune.deploy.apply import ApplyOptions
    from autoprune.deploy.apply import apply_policy as run

    paths = {f.name for f in dataclasses.fields(ApplyOptions) if "Path" in str(f.type)}
    unknown = sorted(set(options) - {f.name for f in dataclasses.fields(ApplyOptions)})
    if unknown:
        raise ConfigError(f"apply_policy: unknown option '{unknown[0]}' (see autoprune.deploy.apply.ApplyOptions)")
    fields: dict[str, Any] = {k: Path(v) if k in paths and isinstance(v, str) else v for k, v in options.items()}
    opts = ApplyOptions(**fields)
    return run(Path(policy), opts, progress)


def load_workspace(space: SearchSpace | str | Path, *, device: str = "auto", runs_dir: str | Path = "runs",
                   policy: Any = None) -> Any:
    """The space's data splits and dense model (trained once, then cached under ``runs/models``) and its layers.

    With ``policy``, the dense model must be the one the policy was searched on (refused otherwise).
    """
    from autoprune.workspace import load_workspace as load

    return load(load_space(space), device, Path(runs_dir), expect_dense=policy.dense_key or None if policy else None)


def sync(study: str, *, storage: str | None = None, runs_dir: str | Path = "runs",
         tracking_uri: str | None = None) -> int:
    """Backfill MLflow from the Optuna study (after MLflow was down); returns the number of child runs added."""
    from autoprune.study import load_existing, make_storage
    from autoprune.study.sync import records_and_info
    from autoprune.tracking.logger import MlflowLogger

    st = load_existing(study, make_storage(storage, Path(runs_dir)))
    records, info, summary = records_and_info(st, storage or str(Path(runs_dir) / "optuna.journal"))
    listener = MlflowLogger(tracking_uri, Path(runs_dir))
    listener.on_start(info)
    before = len(listener.children)
    listener.on_finish(records, summary)
    if listener.failed:
        raise RuntimeError(f"MLflow: {listener.failed}")
    return len(listener.children) - before
