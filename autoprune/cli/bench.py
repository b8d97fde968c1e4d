"""The ``autoprune bench`` command body: benchmark each space (or its rank correlation), print and log the tables."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from autoprune.api import load_space
from autoprune.bench.run import (
    BenchResult,
    bench_space,
    compute_rows,
    default_out_dir,
    overhead_rows,
    parse_budget,
    parse_methods,
    time_rows,
    with_final_epochs,
    with_pruner,
    write_outputs,
)
from autoprune.cli.console import RichProgress, table
from autoprune.cli.console import out as console
from autoprune.config.space import SearchSpace
from autoprune.tracking.records import log_bench

__all__ = ["BenchOptions", "run_bench"]


@dataclass
class BenchOptions:
    """The ``autoprune bench`` flags (see its ``--help``)."""

    seeds: int = 3
    trials: int = 200
    sparsities: str = "0.8,0.9,0.95,0.97,0.98"
    quick: bool = False
    out_dir: Path | None = None
    methods: str | None = None
    final_epochs: float | None = None
    rank_correlation: int | None = None
    criterion: str | None = None
    max_epochs: str | None = None
    threads: int | None = None
    incumbents: bool = False  # re-score the search's incumbents on test (autoprune.bench.incumbents)


def run_bench(spaces: list[Path], opts: BenchOptions) -> None:
    """Benchmark every space in ``spaces`` (or, with ``rank_correlation``, correlate its rungs) into one folder."""
    levels = [float(x) for x in opts.sparsities.split(",") if x.strip()]
    seeds, trials = opts.seeds, opts.trials
    if opts.quick:
        seeds, trials, levels = 1, 12, levels[1:3] if len(levels) >= 3 else levels
    chosen = parse_methods(opts.methods)
    budget = parse_budget(opts.max_epochs)
    folder = opts.out_dir or default_out_dir()
    folder.mkdir(parents=True, exist_ok=True)
    for path in spaces:
        sp = with_pruner(with_final_epochs(load_space(path), opts.final_epochs), opts.criterion)
        if opts.rank_correlation is not None:
            _correlate(sp, opts.rank_correlation, folder, opts.threads)
            continue
        console.print(f"[bold]bench {sp.name}[/bold]: {seeds} seeds × {trials} trials, levels {levels}, "
                      f"recipe {sp.default_recipe().model_dump()}")
        res = bench_space(sp, seeds, trials, levels, folder, log=console.print, methods=chosen,
                          threads=opts.threads, max_epochs=budget, progress=RichProgress(),
                          incumbents=opts.incumbents)
        _report(sp, res, folder)
        metrics = {f"{m}_at_{round(lv * 100)}": v[0] for m, row in res.aggregated.items() for lv, v in row.items()}
        metrics.update({k: v for k, v in res.overhead.items()})
        metrics["bench_seconds"] = res.seconds
        log_bench(None, folder, sp.name, {"seeds": str(seeds), "trials": str(trials), "levels": opts.sparsities},
                  metrics, res.files)
        console.print(f"{sp.name}: {res.seconds:.0f}s; files: {', '.join(str(f) for f in res.files)}")


def _correlate(sp: SearchSpace, per_target: int, folder: Path, threads: int | None) -> None:
    """Print the Spearman ρ of each rung's (and proxy's) scores with the production or test score."""
    from autoprune.bench.fidelity import rank_correlation, without_finetune

    rows = rank_correlation(sp, per_target, folder, threads=threads)
    against = (f"the held-out test score ({per_target} random candidates per target, no fine-tune)"
               if without_finetune(sp) or sp.ladder is None else
               f"the production val score ({per_target} candidates per target, rung epochs {sp.ladder.epochs})")
    console.print(table(f"{sp.name}: Spearman ρ of each proxy with {against}", rows))


def _report(sp: SearchSpace, res: BenchResult, folder: Path) -> None:
    """The accuracy table, files, wall time, compute, per-trial and screening costs of one space's benchmark."""
    console.print(write_outputs(res, folder))
    console.print(table("wall time of each method (seconds, mean over seeds; searches include loading the model)",
                        time_rows(res)))
    if sp.ladder is not None:
        console.print(table("compute of each method (mean over seeds)", compute_rows(res, sp.ladder.epochs[1])))
    if "overhead_s_per_trial" in res.overhead:  # a search ran (heuristics alone have no per-trial cost)
        console.print(table("per-trial cost of the autoprune search (seed 0)", overhead_rows(res.overhead)))
    if res.incumbents:
        console.print(table("the search's incumbents (each new best on validation) and the uniform baseline, "
                            "re-scored on test", res.incumbents))
    if "screen_all_s" in res.overhead:
        from autoprune.bench.overhead import screening_rows

        console.print(table("cost of screening one candidate (seed 0, median of 5)", screening_rows(res.overhead)))
