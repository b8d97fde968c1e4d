"""Benchmark output: rich table (mean ± std, wins bold), PNG curves with error bars, CSV, hypervolumes."""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path
from typing import Any

from rich.table import Table

from autoprune.bench.methods import MethodResult
from autoprune.config.pareto import hypervolume

__all__ = ["aggregate", "hypervolumes", "plot", "rich_table", "write_csv", "write_rows"]


def aggregate(results: list[MethodResult], levels: list[float]) -> dict[str, dict[float, tuple[float, float, int]]]:
    """method -> level -> (mean, std, n) of the test primary metric over seeds (NaN: level not reached, dropped)."""
    out: dict[str, dict[float, tuple[float, float, int]]] = {}
    for method in dict.fromkeys(r.method for r in results):
        out[method] = {}
        for level in levels:
            vals = [r.test[level] for r in results
                    if r.method == method and not math.isnan(r.test.get(level, math.nan))]
            mean = statistics.fmean(vals) if vals else math.nan
            std = statistics.stdev(vals) if len(vals) > 1 else 0.0
            out[method][level] = (mean, std, len(vals))
    return out


def hypervolumes(results: list[MethodResult]) -> dict[str, float]:
    """Mean over seeds of the hypervolume of each method's (test primary metric, size) points."""
    out: dict[str, list[float]] = {}
    for r in results:
        pts = [(a, r.size[lv]) for lv, a in r.test.items() if not math.isnan(a) and not math.isnan(r.size[lv])]
        out.setdefault(r.method, []).append(hypervolume(pts) if pts else 0.0)
    return {k: statistics.fmean(v) for k, v in out.items()}


def rich_table(title: str, agg: dict[str, dict[float, tuple[float, float, int]]], levels: list[float],
               hv: dict[str, float], direction: str = "maximize") -> Table:
    """Mean ± std per method and level; the best mean per level (highest, or lowest for a metric to minimize) in
    bold; the hypervolume column only when ``hv`` has values."""
    pick = max if direction == "maximize" else min
    best = {lv: pick((agg[m][lv][0] for m in agg if not math.isnan(agg[m][lv][0])), default=math.nan)
            for lv in levels}
    t = Table(title=title)
    t.add_column("method")
    for lv in levels:
        t.add_column(f"{lv:.0%}", justify="right")
    if hv:
        t.add_column("hypervolume", justify="right")
    for m, row in agg.items():
        cells = []
        for lv in levels:
            mean, std, n = row[lv]
            text = "n/a" if math.isnan(mean) else f"{mean:.3f} ± {std:.3f} ({n})"
            cells.append(f"[bold]{text}[/bold]" if not math.isnan(mean) and mean == best[lv] else text)
        t.add_row(m, *cells, *([f"{hv.get(m, 0.0):.4f}"] if hv else []))
    return t


def write_csv(results: list[MethodResult], path: Path, primary: str = "accuracy") -> None:
    """One row per method, seed and level."""
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["method", "seed", "sparsity", f"test_{primary}", "size", "seconds"])
        for r in results:
            for lv, a in r.test.items():
                w.writerow([r.method, r.seed, lv, f"{a:.6f}", f"{r.size.get(lv, math.nan):.6f}", f"{r.seconds:.2f}"])


def write_rows(rows: list[dict[str, Any]], path: Path) -> Path:
    """``rows`` (dicts with the same keys) as a CSV with a header; returns ``path``."""
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def plot(agg: dict[str, dict[float, tuple[float, float, int]]], levels: list[float], path: Path, title: str,
         metric: str = "test accuracy") -> None:
    """The test metric vs sparsity with error bars (std over seeds), one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for m, row in agg.items():
        xs = [lv for lv in levels if not math.isnan(row[lv][0])]
        style = {"lw": 2.5, "c": "black"} if m == "autoprune" else {"lw": 1.2}
        ax.errorbar(xs, [row[lv][0] for lv in xs], yerr=[row[lv][1] for lv in xs], marker="o", ms=4, capsize=3,
                    label=m, **style)
    ax.set_xlabel("global sparsity of prunable layers")
    ax.set_ylabel(f"{metric} (mean ± std over seeds)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
