"""Setting a search up: the options, everything loaded once per process, and opening the study."""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch

from autoprune.config.events import ProgressSink
from autoprune.config.sampling import SampleContext
from autoprune.config.space import BUILTIN_HEURISTICS, SearchSpace
from autoprune.models.layers import layer_shapes
from autoprune.pruning.criteria import activation_problem, criterion_for
from autoprune.pruning.granularities import granularity_for
from autoprune.pruning.heuristics import Allocation, allocations
from autoprune.pruning.levels import LevelDatabase, LevelStore, load_or_build
from autoprune.pruning.rules import AllocationContext, allocation_rule
from autoprune.pruning.schedules import ratios_per_step
from autoprune.pruning.sensitivity import SensitivityCurves, load_or_scan
from autoprune.pruning.weight_levels import LEVEL_STEP, LEVEL_TOP, SequentialLevels, load_or_build_sparsegpt
from autoprune.study.sampler import search_distributions, tpe_startup
from autoprune.study.samplers import make_sampler, sampler_factory
from autoprune.study.storage import make_storage, metric_names, open_study
from autoprune.tasks import task_class
from autoprune.tasks.training import choose_threads, resolve_device
from autoprune.workspace import PreCheck, Workspace, load_workspace

__all__ = ["Prepared", "SearchOptions", "check_activation_criteria", "check_granularity", "check_sampler",
           "check_schedules", "open_search_study", "prepare", "study_name_for"]


@dataclass(frozen=True)
class SearchOptions:
    """How to run a search (the CLI flags); ``None`` means "take it from the space file"."""

    n_trials: int | None = None
    timeout: float | None = None
    max_epochs: float | None = None  # stop starting trials once the study spent this many fine-tune epochs
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
    levels: LevelDatabase | None = None  # one-shot Wanda masks of every unit at any level (see pruning.levels)
    stores: dict[str, LevelStore] = field(default_factory=dict)  # criterion -> level store the search assembles from


def prepare(space: SearchSpace, device: str, runs_dir: Path, advance: Any = None, threads: int | None = None,
            workers: int = 1, progress: ProgressSink | None = None, precheck: PreCheck | None = None) -> Prepared:
    """Load the workspace, the (cached) sensitivity curves if needed, and the heuristic allocations; set torch's
    thread count for this process (see :func:`~autoprune.training.choose_threads`). ``progress`` shows the dense
    model's training and the sensitivity scan when they run (not when they come from the cache); ``precheck`` runs
    on the untrained model first."""
    def checks(sp: SearchSpace, model: torch.nn.Module, layers: list[str]) -> None:  # before any training
        check_activation_criteria(sp, model, layers)
        check_sampler(sp)
        check_schedules(sp)
        check_granularity(sp)
        if precheck is not None:
            precheck(sp, model, layers)

    ws = load_workspace(space, device, runs_dir, progress=progress, precheck=checks)
    if advance is None and progress is not None:
        advance = phase_counter(progress, len(ws.layers) * len(space.sensitivity.ratios), "sensitivity scan")
    choose_threads(ws.model, workers, threads)
    curves = path = None
    if "sensitivity" in space.anchors or "sensitivity" in space.baselines:
        curves, path, _ = load_or_scan(runs_dir / "sensitivity", ws.model, ws.splits, ws.layers,
                                       space.sensitivity.ratios, space.criteria[0], space.granularity,
                                       space.sensitivity.bn_batches, advance, task=ws.task)
    if progress is not None:
        progress.stop()
    prefs = curves.preferences() if curves is not None else None
    wanted = {*space.baselines, *space.anchors}
    levels = level_database(ws, "owl" in wanted)
    stores: dict[str, LevelStore] = {"wanda": levels} if levels is not None and "wanda" in space.criteria else {}
    sparsegpt = sparsegpt_database(ws, progress)
    if sparsegpt is not None:
        stores["sparsegpt"] = sparsegpt
    found = allocations(ws.model, ws.layers, ws.bounds, prefs, levels.outliers if levels else None,
                        alpha="alpha" in wanted)
    for name in (n for n in wanted if n not in found and n not in BUILTIN_HEURISTICS):  # a user's AllocationRule
        try:
            found[name] = allocation_rule(name).allocation(AllocationContext(ws.model, ws.layers, ws.bounds))
        except ValueError as err:
            raise space.field_error("anchor" if name in space.anchors else "baselines", str(err)) from None
    heur: dict[str, Allocation] = {k: functools.lru_cache(maxsize=64)(v) for k, v in found.items()}
    missing = [a for a in space.anchors if a not in heur]
    if missing:
        raise space.field_error("anchor", f"heuristic {missing[0]} is not available for this model and space "
                                f"(available: {', '.join(heur)})")
    anchor = heur[space.anchors[0]] if space.anchors else None
    ctx = SampleContext(model=space.model.name, fingerprint=ws.fingerprint, dense_key=ws.dense_key, sizes=ws.sizes,
                        bounds=ws.bounds,
                        anchor=anchor, anchors={a: heur[a] for a in space.anchors}, shapes=layer_shapes(ws.model),
                        levels=(LEVEL_STEP, LEVEL_TOP) if sparsegpt is not None else None)
    return Prepared(ws, curves, path, heur, ctx, levels, stores)


def check_activation_criteria(space: SearchSpace, model: torch.nn.Module, layers: list[str]) -> None:
    """Every criterion of the space is registered (or imports); those that weigh a layer's weights by its input
    activations (Wanda, SparseGPT, RIA; and OWL, which reads Wanda's scores) need every selected unit to be a
    Linear (or a Hugging Face Conv1D): another is refused in one line naming it."""
    owl = "owl" in {*space.baselines, *space.anchors}
    try:
        wanted = [c for c in space.criteria if criterion_for(c).activations] or (["wanda"] if owl else [])
    except ValueError as err:
        raise space.field_error("criteria", str(err)) from None
    if not wanted:
        return
    problem = activation_problem(model, layers, wanted[0])
    if problem:
        raise space.field_error("criteria", problem)


def check_sampler(space: SearchSpace) -> None:
    """The space's sampler is registered (or imports) and takes its ``sampler_options``; else one line naming the
    field."""
    try:
        sampler_factory(space.sampler, space.sampler_options)
    except ValueError as err:
        field = "sampler_options" if str(err).startswith("sampler_options") else "sampler"
        raise space.field_error(field, str(err)) from None


def check_schedules(space: SearchSpace) -> None:
    """Every schedule of the space is registered (or imports) and gives valid step fractions; else one line
    naming the field."""
    for schedule in space.schedules:
        try:
            ratios_per_step({"unit": 0.5}, schedule)
        except ValueError as err:
            raise space.field_error("schedules", str(err)) from None


def check_granularity(space: SearchSpace) -> None:
    """The space's granularity is registered (or imports) and takes its options; else one line naming the field."""
    try:
        granularity_for(space.granularity)
    except ValueError as err:
        raise space.field_error("granularity", str(err)) from None


def level_database(ws: Workspace, owl: bool = False) -> LevelDatabase | None:
    """The dense model's Wanda level database when the space searches Wanda on unstructured sparsity or ``owl``
    needs its outlier counts (cached in ``runs/levels``), else None. Wanda scores Linear layers: another layer type
    is refused naming it."""
    space = ws.space
    if not (owl or ("wanda" in space.criteria and space.granularity.kind == "unstructured")):
        return None
    return load_or_build(ws.runs_dir / "levels", ws.dense_key, ws.model, ws.layers, "wanda", ws.splits.train)


def sparsegpt_database(ws: Workspace, progress: ProgressSink | None = None) -> LevelStore | None:
    """The dense model's SparseGPT level database when the space searches SparseGPT on unstructured sparsity
    (built once under ``runs/levels`` with progress, resumed where a build was cut off), else None. With
    ``calibration: sequential`` one database per target of the grid, each built at that target as its reference."""
    space = ws.space
    if "sparsegpt" not in space.criteria or space.granularity.kind != "unstructured":
        return None
    references: list[float | None] = [None]
    if space.calibration == "sequential":
        references = list(space.targets.grid or [])
    built = []
    for ref in references:
        name = "SparseGPT level database" + ("" if ref is None else f" (sequential at {ref:.0%})")
        step = phase_counter(progress, len(ws.layers), name) if progress is not None else None
        try:
            built.append(load_or_build_sparsegpt(ws.runs_dir / "levels", ws.dense_key, ws.model, ws.layers,
                                                 ws.splits.train, reference=ref,
                                                 progress=_steps(step)))
        except ValueError as err:
            raise space.field_error("calibration" if ref is not None else "criteria", str(err)) from None
        finally:
            if progress is not None:
                progress.stop()
    return built[0] if references == [None] else SequentialLevels(built)


def _steps(step: Any) -> Any:
    """A build's (done, total) progress as one step of a phase counter (None without one)."""
    return None if step is None else (lambda done, total: step())


def phase_counter(progress: ProgressSink, total: int, description: str) -> Any:
    """A step callback that starts the phase on its first step (a cached phase never shows up)."""
    done = [0]

    def step() -> None:
        if done[0] == 0:
            progress.start(total, description)
        done[0] += 1
        progress.update(done[0], {})

    return step


def study_name_for(space: SearchSpace, opts: SearchOptions) -> str:
    """``--study`` or the space's ``name``."""
    return opts.study_name or space.name


def open_search_study(space: SearchSpace, opts: SearchOptions, ctx: SampleContext, offset: int = 0,
                      storage: optuna.storages.BaseStorage | None = None) -> optuna.Study:
    """Create or resume the study with its sampler (seeded by the trials so far), metric names and the
    task's direction; in ``storage`` when it is open already (else the options' storage is opened)."""
    storage = storage if storage is not None else make_storage(opts.storage, opts.runs_dir)
    seed = space.seed if opts.seed is None else opts.seed
    name = study_name_for(space, opts)
    existing = 0
    with contextlib.suppress(KeyError):
        existing = len(optuna.load_study(study_name=name, storage=storage).trials)
    # seed + trials so far: a resumed study does not replay the first run's random draws
    startup = tpe_startup(opts.n_trials or space.trials, len(space.targets.grid or [1]))
    sampler = make_sampler(opts.sampler or space.sampler, seed + existing + 7919 * offset,
                           search_distributions(space, ctx), opts.workers > 1, space.targets.grid, ctx, space.offset,
                           space.layers.group, startup,
                           space.sampler_options if (opts.sampler or space.sampler) == space.sampler else None,
                           space.targets.budget)
    task = task_class(space.task.kind)
    names = metric_names(space.size_metric, str(resolve_device(opts.device)), task.primary)
    return open_study(name, storage, sampler, names, task.direction)
