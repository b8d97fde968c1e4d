"""The Pareto plots show what a person looks for: the dense model, the front on validation and on test, every
heuristic in the legend, the metric and split on the y axis."""

from __future__ import annotations

import json
import re
from pathlib import Path

from autoprune.config.events import TrialRecord
from autoprune.tracking.plots import pareto_html, pareto_png


def _records() -> list[TrialRecord]:
    rows = [(0, 0.97, 0.10, None, True), (1, 0.95, 0.05, "lamp", True), (2, 0.90, 0.05, "uniform", False),
            (3, 0.80, 0.02, None, True), (4, 0.70, 0.02, "erk", False)]
    return [TrialRecord(n, "COMPLETE", {}, (acc, size), {"sparsity": 1 - size}, None, base, front,
                        {"accuracy": acc - 0.01} if front else None) for n, acc, size, base, front in rows]


def test_html_has_dense_test_points_and_heuristics(tmp_path: Path) -> None:
    pareto_html(_records(), tmp_path / "p.html", "nonzeros", "t", "accuracy", dense=0.985)
    html = (tmp_path / "p.html").read_text()
    names = set(re.findall(r'"name":"([^"]+)"', html))
    assert {"trials", "Pareto front (validation)", "front on test", "heuristics", "dense model"} <= names
    test_trace = html[html.index('"name":"front on test"'):]
    test_trace = test_trace[:test_trace.index('"type":"scatter"')]
    y = json.loads(re.search(r'"y":(\[[^\]]*\])', test_trace).group(1))  # type: ignore[union-attr]
    assert [round(v, 4) for v in y] == [0.79, 0.94, 0.96]  # the test scores of the three front points, by size
    assert "accuracy (validation; test for" in html


def test_png_is_written_with_the_dense_point(tmp_path: Path) -> None:
    pareto_png(_records(), tmp_path / "p.png", "nonzeros", "t", "accuracy", dense=0.985)
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
