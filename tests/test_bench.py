"""`autoprune bench --quick`: the CI smoke run of the benchmark (tiny budgets, complete table and files)."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest

from autoprune.bench.methods import DEFAULT_METHODS

EXE = str(Path(sys.executable).parent / "autoprune")


@pytest.mark.slow
def test_bench_quick_produces_a_complete_table(space_path: Path, tmp_path: Path) -> None:
    res = subprocess.run([EXE, "bench", "--quick", "--space", str(space_path), "--out", str(tmp_path)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    for method in DEFAULT_METHODS:
        assert method in res.stdout
    assert "fine-tune loop throughput vs plain PyTorch loop" in res.stdout
    rows = list(csv.DictReader((tmp_path / "bench-digits_small.csv").open()))
    methods = {r["method"] for r in rows}
    assert methods == set(DEFAULT_METHODS)
    levels = {float(r["sparsity"]) for r in rows}
    assert levels == {0.9, 0.95} and len(rows) == 2 * len(methods)  # --quick: 1 seed, 2 levels
    assert all(r["test_accuracy"] != "nan" for r in rows)
    assert (tmp_path / "bench-digits_small.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "mlflow.db").exists()


def test_bench_latency_measures_a_real_shrink() -> None:
    from autoprune.bench.latency import channel_speedup

    rows = channel_speedup(0.3, width=8, input_shape=(3, 16, 16), batches=(8,), runs=5)
    assert rows[0]["macs_ratio"] < 0.6 and rows[0]["params_ratio"] < 0.6
    assert rows[0]["pruned_ms"] > 0


def test_correlation_rows_rank_proxies_against_the_production_score() -> None:
    from autoprune.bench.fidelity import correlation_rows
    from autoprune.study.attrs import rung_key

    attrs = []
    for i in range(6):  # rung-0 KL falls as the final score rises (a perfect proxy); rung-0 accuracy is reversed
        rec0 = {"sparsity": 0.9, "score": 1.0 - 0.1 * i, "val_loss": 1.0, "kl_to_dense": 1.0 - 0.1 * i,
                "train_loss": float("nan")}
        attrs.append({rung_key(0): rec0, rung_key(1): {"sparsity": 0.9, "score": 0.5 + 0.05 * i}})
    rows = {r["proxy"]: r["ρ at 90% (n)"] for r in correlation_rows(attrs, 2)}
    assert rows["rung0/kl_to_dense"] == "+1.00 (6)" and rows["rung0/metric"] == "-1.00 (6)"
    assert "rung0/train_loss" not in rows  # never measured without a fine-tune


def test_final_epochs_sets_the_production_rung(space_path: Path) -> None:
    from autoprune.bench.run import with_final_epochs
    from autoprune.config.space import SearchSpace
    from autoprune.errors import ConfigError

    space = SearchSpace.from_yaml(space_path)  # no ladder: one becomes [0, short, final]
    assert with_final_epochs(space, 5).ladder.epochs == [0.0, 1.0, 5.0]
    assert with_final_epochs(space, 5).default_recipe().epochs == 5.0
    with pytest.raises(ConfigError, match="must exceed"):
        with_final_epochs(space, 1)


@pytest.mark.slow
def test_rank_correlation_runs_every_candidate_through_every_rung(space_path: Path, tmp_path: Path) -> None:
    from autoprune.bench.fidelity import rank_correlation
    from autoprune.bench.run import with_final_epochs
    from autoprune.config.space import SearchSpace

    space = with_final_epochs(SearchSpace.from_yaml(space_path), 2)
    rows = rank_correlation(space, 12, tmp_path)
    assert {r["proxy"] for r in rows} >= {"rung0/kl_to_dense", "rung1/train_loss", "rung1/metric"}
    for r in rows:  # 12 candidates per target, every one scored at the production rung
        assert r["ρ at 80% (n)"].endswith("(12)") and r["ρ at 90% (n)"].endswith("(12)")


def test_tuned_heuristics_get_the_searchs_compute_and_every_method_has_a_compute_row(tmp_path: Path) -> None:
    from autoprune.bench.methods import affordable
    from autoprune.bench.run import bench_space, compute_rows
    from autoprune.config.space import SearchSpace
    from conftest import write_space

    path = write_space(tmp_path / "s.yaml", name="digits_eq", finetune={"lr_scale": [0.3, 1.0, 3.0],
                                                                       "decay": ["constant", "cosine"]},
                       ladder={"epochs": [0, 1, 2], "keep": 0.5}, trials=8, anchor=["lamp", "erk"],
                       baselines=["lamp", "erk"])
    space = SearchSpace.from_yaml(path)
    methods = ("autoprune", "random_search", "lamp_tuned", "erk_tuned", "global_tuned", "lamp")
    said: list[str] = []
    res = bench_space(space, 1, 8, [0.9], tmp_path / "out", log=said.append, methods=methods)
    by = {r.method: r for r in res.results}
    assert set(by) == set(methods)
    for method in methods:  # every method, heuristics too, says when it is done
        assert sum(f"seed 0: {method} done" in line for line in said) == 1, said
    budget = by["autoprune"].compute["finetune_epochs"]  # one level: all of it
    assert budget > 0
    for name in ("lamp_tuned", "erk_tuned", "global_tuned"):
        spent = by[name].compute["finetune_epochs"]
        assert spent <= max(budget, 2.0) + 1e-9  # never more than the search (at least the declared recipe)
        assert by[name].compute["recipes"] == min(6, max(1, int(budget // 2)))
        assert by[name].test[0.9] == by[name].test[0.9]  # a number, not NaN
    rows = {r["method"]: r for r in compute_rows(res, 1.0)}
    assert set(rows) == set(methods)
    assert rows["lamp"]["fine-tune epochs"] == 2.0  # one production fine-tune
    grid = list(range(6))
    policies = [type("P", (), {"finetune": type("F", (), {"epochs": 2.0})()})() for _ in grid]
    assert len(affordable(policies, 7.0, 0)) == 3 and affordable(policies, None, 0) == policies  # type: ignore[arg-type]
    assert affordable(policies, 0.5, 0) == policies[:1]  # type: ignore[arg-type]


def test_a_rerun_benchmark_tops_its_search_up_instead_of_adding_a_whole_budget(tmp_path: Path) -> None:
    from autoprune.bench.run import bench_space, overhead_rows
    from autoprune.config.space import SearchSpace
    from autoprune.study import finished_count
    from conftest import write_space

    space = SearchSpace.from_yaml(write_space(tmp_path / "s.yaml", name="digits_resume", trials=5))
    out = tmp_path / "out"
    assert finished_count("bench-digits_resume-autoprune-s0", out) == 0  # no study yet
    phases: list[tuple[str, int]] = []
    done: list[int] = []

    class Sink:  # the bench's long phases report as `autoprune search` does: the search's trials among them
        def start(self, total: int, description: str) -> None:
            phases.append((description, total))

        def update(self, n: int, fields: dict[str, object]) -> None:
            done.append(n)

        def stop(self) -> None:
            pass

    first = bench_space(space, 1, 5, [0.9], out, log=lambda *a: None, methods=("autoprune",), progress=Sink())
    assert finished_count("bench-digits_resume-autoprune-s0", out) == 5
    assert ("search bench-digits_resume-autoprune-s0", 5) in phases and 5 in done, (phases, done)
    again = bench_space(space, 1, 5, [0.9], out, log=lambda *a: None, methods=("autoprune",))
    assert finished_count("bench-digits_resume-autoprune-s0", out) == 5  # nothing added: the budget was spent
    assert again.results[0].test == first.results[0].test and again.results[0].trial == first.results[0].trial
    rows = overhead_rows(again.overhead)  # the resumed search evaluated nothing: no share to divide by
    assert again.overhead["trials_here"] == 0 and math.isnan(rows[-2]["share"])
    assert all(math.isnan(r["share"]) for r in rows[:-1])  # no whole-trial time in this run to divide by
    more = bench_space(space, 1, 7, [0.9], out, log=lambda *a: None, methods=("autoprune",))
    assert finished_count("bench-digits_resume-autoprune-s0", out) == 7  # a larger budget: topped up by 2
    assert more.results[0].test[0.9] == more.results[0].test[0.9]
