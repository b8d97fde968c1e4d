"""Sensitivity scan: one curve per layer, cached on disk, CSV + PNG written."""

from __future__ import annotations

from pathlib import Path

from autoprune.sensitivity import load_or_scan


def test_scan_is_cached_and_written(workspace, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ws = workspace
    args = (tmp_path, ws.model, ws.splits, ws.layers, [0.3, 0.9, 0.99], "magnitude", ws.space.granularity, 0)
    curves, path, hit = load_or_scan(*args)
    assert not hit and set(curves.accuracy) == set(ws.layers)
    assert all(len(v) == 3 for v in curves.accuracy.values())
    # pruning 99 % of the big layer hurts more than pruning 30 % of it
    big = max(ws.sizes, key=ws.sizes.__getitem__)
    assert curves.accuracy[big][2] <= curves.accuracy[big][0]
    assert path.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(path.with_suffix(".csv").read_text().splitlines()) == 1 + 3 * len(ws.layers)
    again, _, hit2 = load_or_scan(*args)
    assert hit2 and again == curves
