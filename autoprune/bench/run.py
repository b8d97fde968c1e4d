"""``autoprune bench``: search vs heuristics at equal budgets, on the held-out test split, over seeds."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from autoprune.bench.incumbents import incumbent_rows
from autoprune.bench.methods import (
    DEFAULT_METHODS,
    HEURISTICS,
    RESEQUENCED,
    SEARCHES,
    SEQUENTIAL,
    TUNED,
    MethodResult,
    bench_study,
    grid_epochs,
    run_heuristic,
    run_resequenced,
    run_searcher,
)
from autoprune.bench.overhead import finetune_throughput, projection_seconds, screening_cost
from autoprune.bench.report import aggregate, hypervolumes, plot, rich_table, write_csv, write_rows
from autoprune.config.events import ProgressSink
from autoprune.config.space import LadderSpec, SearchSpace
from autoprune.errors import ConfigError
from autoprune.files import check_runs_folder
from autoprune.study.setup import prepare
from autoprune.tasks import task_class

__all__ = [
    "BenchResult",
    "bench_space",
    "compute_rows",
    "default_out_dir",
    "overhead_rows",
    "parse_budget",
    "parse_methods",
    "time_rows",
    "tuned_budget",
    "with_final_epochs",
    "with_pruner",
    "write_outputs",
]


@dataclass
class BenchResult:
    """Everything one space's benchmark produced."""

    space: str
    results: list[MethodResult]
    levels: list[float]
    overhead: dict[str, float] = field(default_factory=dict)
    incumbents: list[dict[str, Any]] = field(default_factory=list)  # the search's incumbents on test (--incumbents)
    files: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    primary: str = "accuracy"  # the task's primary metric, compared on the test split
    direction: str = "maximize"

    @property
    def aggregated(self) -> dict[str, dict[float, tuple[float, float, int]]]:
        """method -> level -> (mean, std, n)."""
        return aggregate(self.results, self.levels)


def bench_space(space: SearchSpace, seeds: int, trials: int, levels: list[float], out_dir: Path,
                log: Any = print, methods: tuple[str, ...] = DEFAULT_METHODS, threads: int | None = None,
                max_epochs: float | str | None = None, progress: ProgressSink | None = None,
                incumbents: bool = False) -> BenchResult:
    """Run every method for every seed on one search space (``threads``: torch threads; default per model size;
    ``max_epochs``: each search's fine-tune epoch budget, ``"grid"`` for a tuned heuristic's whole recipe grid;
    ``progress``: where the long phases report, the dense model, level databases and each search's trials;
    ``incumbents``: re-score each of the search's incumbents on test, see :mod:`autoprune.bench.incumbents`)."""
    check_runs_folder(out_dir)
    t0 = time.perf_counter()
    results: list[MethodResult] = []
    overhead: dict[str, float] = {}
    rows: list[dict[str, Any]] = []
    search_epochs = (grid_epochs(space, levels) if max_epochs == "grid" else
                     None if max_epochs is None else float(max_epochs))
    for seed in range(seeds):
        # the benchmark's levels as the grid: what is built per target (sequential SparseGPT databases) is built
        # for these levels only
        sp = space.model_copy(update={"seed": seed, "targets": space.targets.model_copy(
            update={"grid": list(levels), "range": None})})
        prep = prepare(sp, "cpu", out_dir, threads=threads, progress=progress)
        searched: dict[str, MethodResult] = {}
        wanted = set(methods) | ({"autoprune"} if "autoprune_seq" in methods else set())
        for method in (m for m in SEARCHES if m in wanted):  # first: the tuned heuristics get their compute
            res, summary = run_searcher(sp, method, levels, trials, seed, out_dir, track=(method == "autoprune"),
                                        threads=threads, max_epochs=search_epochs, progress=progress)
            results.append(res)
            searched[method] = res
            if method == "autoprune" and "autoprune_seq" in methods:
                results.append(run_resequenced(prep, res, bench_study(sp.name, "autoprune", seed), out_dir))
            if method == "autoprune" and incumbents:
                rows.extend({"seed": seed, "sparsity": lv, **r} for lv in levels
                            for r in incumbent_rows(prep, bench_study(sp.name, method, seed), out_dir, lv))
            if method == "autoprune" and seed == 0:
                overhead.update({k: float(v) for k, v in summary.items() if isinstance(v, (int, float))})
            log(f"  seed {seed}: {method} done ({time.perf_counter() - t0:.0f}s)")
        budget = tuned_budget(searched, len(levels))
        for name in HEURISTICS:
            if name in methods and (name in prep.heuristics or name in ("random", "agp_uniform", "lamp_cubic3")
                                    or (name in TUNED and name.removesuffix("_tuned") in prep.heuristics)
                                    or (name in SEQUENTIAL and name.removesuffix("_seq") in prep.heuristics)):
                results.append(run_heuristic(prep, name, levels, seed, budget))
                log(f"  seed {seed}: {name} done ({time.perf_counter() - t0:.0f}s)")
        log(f"  seed {seed}: heuristics done ({time.perf_counter() - t0:.0f}s)")
        if seed == 0 and prep.stores and sp.ladder is not None and sp.ladder.tokens:
            overhead.update(screening_cost(prep, sp.ladder.tokens[0], max(levels)))
        if seed == 0 and sp.task.kind == "classification":  # (the plain loop it is timed against is a classifier's)
            overhead.update(finetune_throughput(prep.ws))
            overhead["projection_s"] = projection_seconds(prep.ws)
    task = task_class(space.task.kind)
    return BenchResult(space.name, results, levels, overhead, rows, seconds=time.perf_counter() - t0,
                       primary=task.primary, direction=task.direction)


def tuned_budget(searched: dict[str, MethodResult], levels: int) -> float | None:
    """Fine-tune epochs per level a tuned heuristic may spend: the autoprune search's (else the first search's)
    epochs over the levels, None (the whole recipe grid) when no search ran or it fine-tuned nothing."""
    run = searched.get("autoprune") or next(iter(searched.values()), None)
    epochs = run.compute.get("finetune_epochs", 0.0) if run is not None else 0.0
    return epochs / levels if epochs > 0 else None


def time_rows(res: BenchResult) -> list[dict[str, Any]]:
    """Mean wall seconds of each method over seeds (a heuristic: its evaluations; a search: the whole run)."""
    rows = []
    for method in dict.fromkeys(r.method for r in res.results):
        secs = [r.seconds for r in res.results if r.method == method]
        rows.append({"method": method, "seconds": sum(secs) / len(secs)})
    return rows


def write_outputs(res: BenchResult, out_dir: Path) -> Any:
    """CSV, PNG and the rich table for one space."""
    agg = res.aggregated
    csv_path, png_path = out_dir / f"bench-{res.space}.csv", out_dir / f"bench-{res.space}.png"
    write_csv(res.results, csv_path, res.primary)
    seeds = len({r.seed for r in res.results})
    metric = f"test {res.primary}"
    plot(agg, res.levels, png_path, f"{res.space}: {metric} vs sparsity ({seeds} seeds)", metric)
    res.files = [csv_path, png_path]
    if res.incumbents:
        res.files.append(write_rows(res.incumbents, out_dir / f"incumbents-{res.space}.csv"))
    return rich_table(f"{res.space}: {metric}, mean ± std (n seeds) over {seeds} seeds", agg, res.levels,
                      hypervolumes(res.results) if res.direction == "maximize" else {}, res.direction)


def overhead_rows(o: dict[str, float]) -> list[dict[str, Any]]:
    """Per-trial cost breakdown of the autoprune search (seed 0); NaN shares where this run evaluated nothing (a
    resumed benchmark whose search had already spent its budget)."""
    n = max(o.get("trials_here", 1.0), 1.0)
    ran = o.get("trials_here", 1.0) > 0  # else this run's loop timed no trial: its per-trial figures mean nothing
    o = o if ran else {**o, **dict.fromkeys(("optimize_s", "overhead_s_per_trial", "tracking_s_per_trial"), math.nan)}
    per_trial = o.get("optimize_s", math.nan) / n
    rows = [("sampling + projection (in objective)", o.get("mean_time_sample", math.nan)),
            ("budget projection alone", o.get("projection_s", math.nan)),
            ("masking / pruning", o.get("mean_time_prune", math.nan)),
            ("fine-tune", o.get("mean_time_finetune", math.nan)),
            ("evaluation (val + size metrics)", o.get("mean_time_measure", math.nan)),
            ("search machinery: sampler + storage + MLflow", o.get("overhead_s_per_trial", math.nan)),
            ("  of which MLflow hand-over", o.get("tracking_s_per_trial", math.nan)),
            ("MLflow logging in its own process (not on the search)", o.get("tracking_worker_s_per_trial", math.nan)),
            ("whole trial (wall)", per_trial)]
    out = [{"part": k, "ms_per_trial": v * 1e3, "share": v / per_trial if per_trial else math.nan} for k, v in rows]
    machinery = o.get("overhead_s_per_trial", math.nan) - o.get("tracking_s_per_trial", 0.0)
    eval_per_trial = o.get("eval_s", math.nan) / n
    out.append({"part": "sampler + projection + storage, share of evaluation time (goal ≤ 5 %)",
                "ms_per_trial": machinery * 1e3,
                "share": machinery / eval_per_trial if eval_per_trial else math.nan})  # NaN: no trial ran here
    out.append({"part": "fine-tune loop throughput vs plain PyTorch loop", "ms_per_trial": math.nan,
                "share": o.get("throughput_ratio", math.nan)})
    return out


def default_out_dir() -> Path:
    """runs/bench/<timestamp>/."""
    return Path("runs") / "bench" / datetime.now().strftime("%Y%m%d-%H%M%S")


def compute_rows(res: BenchResult, short_epochs: float, reference_trials: int = 200) -> list[dict[str, Any]]:
    """Every method's compute (mean over seeds) against ``reference_trials`` short-fine-tune trials measured in the
    same run: fine-tune epochs (NaN for a ladder without fine-tune, e.g. a token ladder), evaluation seconds
    against as many rung-1 evaluations of the searches, and how many evaluations each rung ran (searches) or
    recipes per level were tried (tuned heuristics)."""
    short = [r.compute["rung1_s"] for r in res.results if "rung1_s" in r.compute]
    short_s = sum(short) / len(short) if short else math.nan
    rows = []
    for method in dict.fromkeys(r.method for r in res.results if r.compute):
        runs = [r.compute for r in res.results if r.method == method and r.compute]
        epochs = sum(c.get("finetune_epochs", math.nan) for c in runs) / len(runs)
        seconds = sum(c.get("eval_seconds", math.nan) for c in runs) / len(runs)
        per_rung = " / ".join(f"{sum(c.get(f'rung{r}_n', 0.0) for c in runs) / len(runs):.0f}"
                              for r in range(8) if any(f"rung{r}_n" in c for c in runs))
        if "recipes" in runs[0]:
            per_rung = f"{sum(c['recipes'] for c in runs) / len(runs):.1f} recipes per level"
        rows.append({"method": method, "fine-tune epochs": epochs,
                     f"× {reference_trials} short trials (epochs)":
                         epochs / (reference_trials * short_epochs) if short_epochs > 0 else math.nan,
                     "evaluation s": seconds,
                     f"× {reference_trials} short trials (s)": seconds / (reference_trials * short_s),
                     "evaluations per rung": per_rung})
    return rows


def parse_budget(text: str | None) -> float | str | None:
    """``--max-epochs``: a number of fine-tune epochs, ``grid``, or nothing; anything else is a ConfigError."""
    if text is None or text == "grid":
        return text
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ConfigError(f"--max-epochs: {text!r} is neither a number of epochs (>= 0) nor 'grid'")
    return value


def parse_methods(text: str | None) -> tuple[str, ...]:
    """``--methods a,b`` → a tuple of known method names (a clear error names an unknown one)."""
    if text is None:
        return DEFAULT_METHODS
    names = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in names if m not in HEURISTICS + SEARCHES + RESEQUENCED]
    if unknown or not names:
        raise ConfigError(f"--methods: unknown method(s) {', '.join(unknown) or '(none given)'} "
                          f"(known: {', '.join(HEURISTICS + SEARCHES + RESEQUENCED)})")
    return names


def with_final_epochs(space: SearchSpace, epochs: float | None) -> SearchSpace:
    """The space with its production fine-tune set to ``epochs`` (a ladder [0, short, epochs] if it had none)."""
    if epochs is None:
        return space
    rungs = list(space.ladder.epochs[:-1]) if space.ladder is not None else [0.0, space.finetune.epochs[0]]
    if epochs <= rungs[-1]:
        raise ConfigError(f"--final-epochs {epochs:g}: must exceed the rung below it ({rungs[-1]:g} epochs)")
    ladder = (space.ladder or LadderSpec()).model_copy(update={"epochs": [*rungs, epochs]})
    return space.model_copy(update={"ladder": ladder})


def with_pruner(space: SearchSpace, criterion: str | None) -> SearchSpace:
    """The space with ``criterion`` first in its criteria (the recipe every heuristic is pruned with; the
    others stay, e.g. Wanda for OWL's outlier counts and the search's level database); unchanged for None."""
    if criterion is None:
        return space
    criteria = [criterion, *(c for c in space.criteria if c != criterion)]
    try:
        # what the file set, re-validated with the new criteria (a dump of every default would set both
        # finetune.epochs and ladder.epochs, which the space refuses)
        data = {**space.model_dump(exclude_unset=True), "criteria": criteria, "source": space.source}
        return SearchSpace.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"--criterion {criterion}: {err.errors()[0]['msg']}") from None
