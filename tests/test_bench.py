"""`autoprune bench --quick`: the CI smoke run of the benchmark (tiny budgets, complete table and files)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from autoprune.bench.methods import HEURISTICS, SEARCHES

EXE = str(Path(sys.executable).parent / "autoprune")


@pytest.mark.slow
def test_bench_quick_produces_a_complete_table(space_path: Path, tmp_path: Path) -> None:
    res = subprocess.run([EXE, "bench", "--quick", "--space", str(space_path), "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    for method in (*HEURISTICS, *SEARCHES):
        assert method in res.stdout
    assert "fine-tune loop throughput vs plain PyTorch loop" in res.stdout
    rows = list(csv.DictReader((tmp_path / "bench-digits_small.csv").open()))
    methods = {r["method"] for r in rows}
    assert methods == set(HEURISTICS) | set(SEARCHES)
    levels = {float(r["sparsity"]) for r in rows}
    assert levels == {0.9, 0.95} and len(rows) == 2 * len(methods)  # --quick: 1 seed, 2 levels
    assert all(r["test_accuracy"] != "nan" for r in rows if r["method"] != "tpe_naive")
    assert (tmp_path / "bench-digits_small.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "mlflow.db").exists()


def test_bench_latency_measures_a_real_shrink() -> None:
    from autoprune.bench.latency import channel_speedup

    rows = channel_speedup(0.3, width=8, input_shape=(3, 16, 16), batches=(8,), runs=5)
    assert rows[0]["macs_ratio"] < 0.6 and rows[0]["params_ratio"] < 0.6
    assert rows[0]["pruned_ms"] > 0
