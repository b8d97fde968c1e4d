"""Pareto plots: a static matplotlib PNG and an interactive plotly HTML of accuracy versus size."""

from __future__ import annotations

from pathlib import Path

from autoprune.config.events import TrialRecord

__all__ = ["pareto_html", "pareto_png"]


def _points(records: list[TrialRecord]) -> list[TrialRecord]:
    return [r for r in records if r.values is not None]


def pareto_png(records: list[TrialRecord], path: Path, size_label: str, title: str, metric: str = "accuracy"
               ) -> None:
    """Every trial grey, the front highlighted (val and test ``metric``), heuristic baselines labelled."""
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
                c="tab:blue", label="Pareto front (val)")
        tested = [r for r in front if r.test and r.values]
        ax.scatter([r.values[1] for r in tested if r.values], [r.test[metric] for r in tested if r.test],
                   marker="x", c="tab:red", label="front on test", zorder=3)
    for r in pts:
        if r.baseline and r.values:
            ax.scatter([r.values[1]], [r.values[0]], marker="s", facecolors="none", edgecolors="tab:orange", s=40)
            ax.annotate(r.baseline, (r.values[1], r.values[0]), fontsize=7, xytext=(4, 2),
                        textcoords="offset points", color="tab:orange")
    ax.set_xscale("log")
    ax.set_xlabel(f"size ({size_label}, fraction of dense, log scale)")
    ax.set_ylabel(f"{metric} (validation; × = test)")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def pareto_html(records: list[TrialRecord], path: Path, size_label: str, title: str, metric: str = "accuracy"
                ) -> None:
    """Interactive plotly version (hover shows trial, baseline, sparsity, test accuracy)."""
    import plotly.graph_objects as go

    pts = _points(records)

    def hover(r: TrialRecord) -> str:
        test = f"{r.test[metric]:.4f}" if r.test and metric in r.test else "–"
        return f"trial {r.number}<br>{r.baseline or 'search'}<br>sparsity {r.sparsity:.4f}<br>test {test}"

    fig = go.Figure()
    for name, group, style in (("trials", [r for r in pts if not r.pareto], {"color": "lightgrey"}),
                               ("Pareto front", [r for r in pts if r.pareto], {"color": "royalblue", "size": 9})):
        group = sorted(group, key=lambda r: r.values[1] if r.values else 0.0)
        fig.add_trace(go.Scatter(x=[r.values[1] for r in group if r.values], y=[r.values[0] for r in group if r.values],
                                 mode="markers+lines" if name == "Pareto front" else "markers", name=name,
                                 marker=style, text=[hover(r) for r in group], hoverinfo="text"))
    base = [r for r in pts if r.baseline and r.values]
    fig.add_trace(go.Scatter(x=[r.values[1] for r in base if r.values], y=[r.values[0] for r in base if r.values],
                             mode="markers+text", name="heuristics", text=[r.baseline for r in base],
                             textposition="top center", marker={"symbol": "square-open", "color": "orange"}))
    fig.update_layout(title=title, xaxis_title=f"size ({size_label})", yaxis_title=f"validation {metric}",
                      xaxis_type="log", template="plotly_white")
    fig.write_html(str(path), include_plotlyjs=True)
