"""Extension points: a user's Criterion and AllocationRule named ``package.module:Class`` in a space, through the
CLI; registered ones by name; RIA, the built-in added as one file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autoprune.config.policy import Policy
from autoprune.models.layers import weight_of
from autoprune.models.zoo import MLP
from autoprune.pruning.criteria import CRITERIA, criterion_for, importance
from autoprune.pruning.rules import ALLOCATION_RULES, AllocationRule, register_allocation
from autoprune.tasks.data import Split
from conftest import write_space

EXE = str(Path(sys.executable).parent / "autoprune")
TESTS = Path(__file__).resolve().parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([EXE, *args], capture_output=True, text=True, env=env)


def _search_export_apply(tmp_path: Path, space: Path, study: str) -> Policy:
    """Search ``space``, export its knee point, apply it: every step exits 0 and apply reproduces the exported
    test accuracy; returns the exported policy."""
    runs = ["--runs", str(tmp_path / "runs")]
    res = _run("search", str(space), "--no-track", *runs)
    assert res.returncode == 0, res.stderr[-2000:]
    res = _run("export", "--study", study, "--knee", "-o", str(tmp_path / "p.json"), *runs)
    assert res.returncode == 0, res.stderr[-2000:]
    policy = Policy.load(tmp_path / "p.json")
    res = _run("apply", str(tmp_path / "p.json"), "--space", str(space), "-o", str(tmp_path / "m.pt"), "--no-track",
               *runs)
    assert res.returncode == 0, res.stderr[-2000:]
    row = next(line for line in res.stdout.splitlines() if "test_accuracy" in line)
    assert float(row.split("│")[-2]) == pytest.approx(policy.expected["test_accuracy"], abs=1e-4)
    return policy


def test_a_users_criterion_and_allocation_search_export_and_apply_through_the_cli(tmp_path: Path) -> None:
    rule = "userpkg.extensions:FirstLayerDense"
    path = write_space(tmp_path / "s.yaml", name="ext", criteria=["userpkg.extensions:SquaredMagnitude"],
                       baselines=[rule, "lamp"], anchor=["lamp", rule], trials=8)
    policy = _search_export_apply(tmp_path, path, "ext")
    assert policy.criterion == "userpkg.extensions:SquaredMagnitude"
    import optuna

    study = optuna.load_study(study_name="ext", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "runs" / "optuna.journal"))))
    rule_trials = [t for t in study.trials if t.user_attrs.get("baseline") == rule]
    assert len(rule_trials) == 2  # at both targets, as its own anchor with zero offsets
    for t in rule_trials:
        ratios = Policy.model_validate_json(t.user_attrs["eval"]["policy"]).sparsity
        others = [r for f, r in ratios.items() if f != "features.0"]
        assert t.params["anchor"] == rule and ratios["features.0"] < 0.1 < t.params["target"] <= min(others)


def test_a_criterion_or_rule_that_does_not_import_is_one_line_naming_the_field(tmp_path: Path) -> None:
    path = write_space(tmp_path / "s.yaml", criteria=["userpkg.nothere:Score"])
    res = _run("search", str(path), "--no-track", "--runs", str(tmp_path / "runs"))
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1 and "field 'criteria'" in lines[0] and "nothere" in lines[0]
    path = write_space(tmp_path / "t.yaml", baselines=["userpkg.extensions:SquaredMagnitude"])
    res = _run("search", str(path), "--no-track", "--runs", str(tmp_path / "runs"))
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and "field 'baselines'" in lines[-1] and "not a subclass of AllocationRule" in lines[-1]


def test_registered_rules_and_criteria_are_found_by_name() -> None:
    @register_allocation("test_half")
    class Half(AllocationRule):
        def ratios(self, model: torch.nn.Module, layers: list[str], target: float) -> dict[str, float]:
            return dict.fromkeys(layers, 0.5)

    try:
        assert ALLOCATION_RULES["test_half"] is Half and Half.name == "test_half"
    finally:
        del ALLOCATION_RULES["test_half"]
    assert criterion_for("ria").row_wise and criterion_for("ria").activations  # (loads the built-in modules)
    assert {"magnitude", "taylor", "random", "wanda", "sparsegpt", "ria"} <= set(CRITERIA)
    with pytest.raises(ValueError, match="unknown criterion 'nope'"):
        criterion_for("nope")


def test_ria_is_relative_importance_times_activation_norm() -> None:
    torch.manual_seed(0)
    model = MLP(6, 3, (4,))
    x = torch.randn(40, 6)
    w = weight_of(model, "net.1").detach().abs()
    norms = x[:32].pow(2).sum(0).sqrt()  # the first 32 calibration examples, as Wanda
    expected = (w / w.sum(1, keepdim=True) + w / w.sum(0, keepdim=True)) * norms.sqrt()[None, :]
    got = importance(model, ["net.1"], "ria", Split(x, torch.zeros(40, dtype=torch.long)))["net.1"]
    torch.testing.assert_close(got, expected)


def test_a_users_sampler_with_its_options_runs_a_search_through_the_cli(tmp_path: Path) -> None:
    path = write_space(tmp_path / "s.yaml", name="smp", sampler="userpkg.extensions:LowCorner",
                       sampler_options={"pick": 1}, finetune={"lr_scale": [1.0, 3.0]}, trials=4, baselines=[])
    runs = ["--runs", str(tmp_path / "runs")]
    res = _run("search", str(path), "--no-track", *runs)
    assert res.returncode == 0, res.stderr[-2000:]
    import optuna

    study = optuna.load_study(study_name="smp", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "runs" / "optuna.journal"))))
    assert len(study.trials) == 4
    for t in study.trials:  # every draw is the user's: floats at their lower bound, categorical choice 1
        prefs = [v for k, v in t.params.items() if k.startswith("pref/")]
        assert prefs and all(v == -2.0 for v in prefs) and t.params["ft_lr_scale"] == 3.0
    bad = write_space(tmp_path / "b.yaml", name="smp2", sampler="userpkg.extensions:LowCorner",
                      sampler_options={"pik": 1})
    res = _run("search", str(bad), "--no-track", *runs)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1 and "field 'sampler_options'" in lines[0] and "pik" in lines[0]
    res = _run("search", str(path), "--no-track", "--sampler", "userpkg.extensions:Nope", *runs)
    assert res.returncode == 2 and "Nope" in res.stderr


def test_builtin_samplers_are_registered_and_evolution_takes_its_options() -> None:
    from autoprune.study.evolution import EvolutionSampler
    from autoprune.study.samplers import SAMPLERS, sampler_factory

    factory, opts = sampler_factory("evolution", {"population": 1, "max_moves": 5})
    assert {"tpe", "nsga2", "random", "gp", "rl", "evolution"} <= set(SAMPLERS)
    assert (opts.population, opts.max_moves, opts.redraw) == (1, 5, 0.1)
    with pytest.raises(ValueError, match=r"sampler_options.population"):
        sampler_factory("evolution", {"population": 0})
    with pytest.raises(ValueError, match=r"sampler_options.size"):
        sampler_factory("tpe", {"size": 3})
    from optuna.distributions import FloatDistribution

    from autoprune.config.sampling import SampleContext
    from autoprune.study.samplers import make_sampler

    ctx = SampleContext(model="m", fingerprint="f", sizes={"a": 10}, bounds={"a": (0.0, 0.9)})
    built = make_sampler("evolution", 0, {"pref/a": FloatDistribution(-1, 1)}, targets=[0.5], ctx=ctx,
                         options={"population": 1, "max_moves": 5})
    assert factory.name == "evolution" and isinstance(built, EvolutionSampler)
    assert (built._population, built._max_moves) == (1, 5)


def test_a_users_schedule_prunes_in_its_own_steps_through_search_export_and_apply(tmp_path: Path) -> None:
    from autoprune.config.policy import Schedule
    from autoprune.pruning.schedules import SCHEDULES, ratios_per_step

    kind = "userpkg.extensions:HalfThenAll"
    steps = ratios_per_step({"a": 0.8}, Schedule(kind=kind, steps=3))
    assert steps == [{"a": 0.4}, {"a": 0.4}, {"a": 0.8}]
    assert ratios_per_step({"a": 0.8}, Schedule(kind="linear", steps=4)) == [
        {"a": pytest.approx(0.2)}, {"a": pytest.approx(0.4)}, {"a": pytest.approx(0.6)}, {"a": 0.8}]
    assert {"oneshot", "iterative", "linear"} <= set(SCHEDULES)
    assert Schedule(kind=kind, steps=3).label == "HalfThenAll×3"
    path = write_space(tmp_path / "s.yaml", name="sch", schedules=[{"kind": kind, "steps": 2}], trials=3,
                       finetune={"epochs": [2], "lr_scale": [0.3]}, baselines=["lamp"])
    policy = _search_export_apply(tmp_path, path, "sch")
    assert policy.schedule.kind == kind and policy.schedule.steps == 2
    bad = write_space(tmp_path / "b.yaml", name="sch2", schedules=[{"kind": "userpkg.extensions:Backwards",
                                                                    "steps": 3}])
    res = _run("search", str(bad), "--no-track", "--runs", str(tmp_path / "runs"))
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1 and "field 'schedules'" in lines[0] and "non-decreasing" in lines[0]


def test_a_users_granularity_prunes_in_its_pattern_through_search_export_and_apply(tmp_path: Path) -> None:
    from autoprune.config.policy import Granularity
    from autoprune.pruning.granularities import GRANULARITIES
    from autoprune.pruning.masks import compute_mask
    from autoprune.pruning.metrics import layer_bytes

    assert {"unstructured", "nm", "channel"} <= set(GRANULARITIES)

    class Rows(GRANULARITIES["unstructured"]):  # type: ignore[misc,valid-type]
        structured = True  # claims whole channels: only the built-in channel may

    GRANULARITIES.register("rows_test")(Rows)
    try:
        with pytest.raises(ValueError, match="structured granularities other than channel"):
            compute_mask(torch.ones(4, 4), 0.5, Granularity(kind="rows_test"))
    finally:
        del GRANULARITIES["rows_test"]
    kind = "userpkg.extensions:Blocks"
    spec = Granularity(kind=kind, options={"size": 2})
    score = torch.rand(6, 10, generator=torch.Generator().manual_seed(0))
    mask = compute_mask(score, 0.5, spec)
    blocks = mask.reshape(3, 2, 5, 2).sum((1, 3))
    assert set(blocks.flatten().tolist()) == {0.0, 4.0} and int((blocks == 0).sum()) == 8  # round(0.5 · 15)
    assert spec.label == "Blocks" and set(layer_bytes(score, spec)) == {"dense", "csr", "bitmask"}
    assert set(layer_bytes(score, Granularity(kind="nm"))) == {"dense", "csr", "bitmask", "nm"}
    path = write_space(tmp_path / "s.yaml", name="blk", granularity={"kind": kind, "options": {"size": 2}},
                       trials=3, finetune={"epochs": [2], "lr_scale": [0.3]}, baselines=["lamp"])
    policy = _search_export_apply(tmp_path, path, "blk")
    assert policy.granularity == spec
    from autoprune.deploy.production import decompress_state

    state = decompress_state(torch.load(tmp_path / "m.pt", weights_only=True)["state"])
    for fqn, ratio in policy.sparsity.items():  # the shipped weights are zero in whole 2 × 2 blocks
        rows = (state[f"{fqn}.weight"] == 0).float().flatten(1)
        r, c = rows.shape[0] // 2 * 2, rows.shape[1] // 2 * 2
        zeros = rows[:r, :c].reshape(r // 2, 2, c // 2, 2).sum((1, 3))
        assert set(zeros.flatten().tolist()) <= {0.0, 4.0} and (ratio < 0.2 or (zeros == 4).any())
    bad = write_space(tmp_path / "b.yaml", name="blk2", granularity={"kind": kind, "options": {"sise": 2}})
    res = _run("search", str(bad), "--no-track", "--runs", str(tmp_path / "runs"))
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1 and "field 'granularity'" in lines[0] and "sise" in lines[0]


def test_a_users_model_adapter_and_data_source_feed_a_search_through_the_cli(tmp_path: Path) -> None:
    from autoprune.models.adapters import MODEL_ADAPTERS, adapter_for
    from autoprune.tasks.sources import DATA_SOURCES, source_for

    assert {"huggingface", "torchvision", "callable", "zoo"} <= set(MODEL_ADAPTERS) and adapter_for("mlp").name == "zoo"
    assert {"sklearn", "torchvision", "file", "callable"} <= set(DATA_SOURCES) and source_for("wine").name == "sklearn"
    path = write_space(tmp_path / "s.yaml", name="ad", trials=2, baselines=["lamp"],
                       model={"name": "tiny:12", "adapter": "userpkg.extensions:TinyNets"},
                       data={"name": "mirrored digits", "source": "userpkg.extensions:MirroredDigits"})
    runs = ["--runs", str(tmp_path / "runs")]
    res = _run("search", str(path), "--no-track", *runs)
    assert res.returncode == 0, res.stderr[-2000:]
    import optuna

    study = optuna.load_study(study_name="ad", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "runs" / "optuna.journal"))))
    policy = Policy.model_validate_json(study.best_trials[0].user_attrs["eval"]["policy"])
    assert policy.shapes == {"net.1": [12, 64], "net.3": [10, 12]}  # the adapter's net on the source's 8×8 images
    bad = write_space(tmp_path / "b.yaml", name="ad2", model={"name": "tiny:12", "adapter": "userpkg.extensions:Nope"})
    res = _run("search", str(bad), "--no-track", *runs)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1 and "Nope" in lines[0]


def test_the_builtin_heuristics_are_registered_rules_that_allocate_what_allocations_gives() -> None:
    from autoprune.config.budget import weighted_sparsity
    from autoprune.pruning.heuristics import allocations
    from autoprune.pruning.rules import AllocationContext, allocation_rule

    torch.manual_seed(0)
    model = MLP(20, 3, (16, 8))
    layers = ["net.1", "net.3", "net.5"]
    found = allocations(model, layers, alpha=True)
    assert set(found) == {"uniform", "global", "lamp", "erk", "alpha"}  # no curves, no outliers
    ctx = AllocationContext(model, layers)
    sizes = ctx.sizes()
    for name, alloc in found.items():
        rule = allocation_rule(name)
        assert rule.name == name and rule.allocation(ctx)(0.7) == alloc(0.7) == rule.ratios(model, layers, 0.7)
        assert abs(weighted_sparsity(alloc(0.7), sizes) - 0.7) < 1e-9
    assert not allocation_rule("owl").available(ctx) and not allocation_rule("sensitivity").available(ctx)
    scanned = AllocationContext(model, layers, sensitivity=dict.fromkeys(layers, 0.0))
    assert allocation_rule("sensitivity").available(scanned)
