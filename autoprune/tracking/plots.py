"""Pareto plots: a static matplotlib PNG and an interactive plotly HTML of the primary metric versus size."""

from __future__ import annotations

from pathlib import Path

from autoprune.config.events import TrialRecord

__all__ = ["pareto_html", "pareto_png"]


def _points(records: list[TrialRecord]) -> list[TrialRecord]:
    return [r for r in records if r.values is not None]


def pareto_png(records: list[TrialRecord], path: Path, size_label: str, title: str, metric: str = "accuracy",
               dense: float | None = None) -> None:
    """Every trial grey, the front highlighted (val and test ``metric``), the dense model as a point, heuristic
    baselines in the legend (one marker each: at high sparsity their labels would pile up)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = _points(records)
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    ax.scatter([r.values[1] for r in pts if r.values], [r.values[0] for r in pts if r.values], c="lightgrey",
               s=14, label="trials")
    front = sorted((r for r in pts if r.pareto and r.values), key=lambda r: r.values[1] if r.values else 0.0)
    if front:
        ax.plot([r.values[1] for r in front if r.values], [r.values[0] for r in front if r.values], "o-",
                c="tab:blue", label="Pareto front (validation)")
        tested = [r for r in front if r.test and r.values and metric in r.test]
        ax.scatter([r.values[1] for r in tested if r.values], [r.test[metric] for r in tested if r.test],
                   marker="x", c="tab:red", label="front on test", zorder=3)
    markers = iter("sD^v<>pPh*")
    for name in sorted({r.baseline for r in pts if r.baseline}):
        mine = [r for r in pts if r.baseline == name and r.values]
        ax.scatter([r.values[1] for r in mine if r.values], [r.values[0] for r in mine if r.values],
                   marker=next(markers, "s"), facecolors="none", edgecolors="tab:orange", s=40, label=name)
    if dense is not None:
        ax.scatter([1.0], [dense], marker="*", c="black", s=120, label="dense model", zorder=4)
    ax.set_xscale("log")
    ax.set_xlabel(f"size ({size_label}, fraction of dense, log scale)")
    ax.set_ylabel(f"{metric} (validation; × = test)")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)  # beside the plot: never over points
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def pareto_html(records: list[TrialRecord], path: Path, size_label: str, title: str, metric: str = "accuracy",
                dense: float | None = None) -> None:
    """Interactive plotly version: trials, the front on validation and on test, heuristics, the dense model;
    hover shows trial, baseline, sparsity and both scores."""
    import plotly.graph_objects as go

    pts = _points(records)

    def hover(r: TrialRecord) -> str:
        test = f"{r.test[metric]:.4f}" if r.test and metric in r.test else "–"
        val = f"{r.values[0]:.4f}" if r.values else "–"
        return (f"trial {r.number}<br>{r.baseline or 'search'}<br>sparsity {r.sparsity:.4f}<br>"
                f"val {metric} {val}<br>test {metric} {test}")

    def trace(name: str, group: list[TrialRecord], y: list[float], **kw: object) -> None:
        fig.add_trace(go.Scatter(x=[r.values[1] for r in group if r.values], y=y, name=name,
                                 text=[hover(r) for r in group], hoverinfo="text", **kw))

    fig = go.Figure()
    rest = sorted((r for r in pts if not r.pareto), key=lambda r: r.values[1] if r.values else 0.0)
    front = sorted((r for r in pts if r.pareto), key=lambda r: r.values[1] if r.values else 0.0)
    trace("trials", rest, [r.values[0] for r in rest if r.values], mode="markers", marker={"color": "lightgrey"})
    trace("Pareto front (validation)", front, [r.values[0] for r in front if r.values], mode="markers+lines",
          marker={"color": "royalblue", "size": 9})
    tested = [r for r in front if r.test and metric in r.test]
    trace("front on test", tested, [r.test[metric] for r in tested if r.test], mode="markers",
          marker={"color": "crimson", "symbol": "x", "size": 9})
    base = [r for r in pts if r.baseline and r.values]
    trace("heuristics", base, [r.values[0] for r in base if r.values], mode="markers",
          marker={"symbol": "square-open", "color": "orange", "size": 9})
    if dense is not None:
        fig.add_trace(go.Scatter(x=[1.0], y=[dense], name="dense model", mode="markers",
                                 marker={"symbol": "star", "color": "black", "size": 14}))
    fig.update_layout(title=title, xaxis_title=f"size ({size_label}, fraction of dense)",
                      yaxis_title=f"{metric} (validation; test for 'front on test')", xaxis_type="log",
                      template="plotly_white")
    fig.write_html(str(path), include_plotlyjs=True)
