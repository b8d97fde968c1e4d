"""The SparseGPT level database and in-place candidate assembly, on a tiny random Llama."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch

from autoprune.config.budget import level_units, project_to_budget, snap_to_levels, weighted_sparsity
from autoprune.config.policy import FineTune, Policy
from autoprune.config.space import SearchSpace
from autoprune.models.layers import prunable_layers, weight_of
from autoprune.models.zoo import build_model
from autoprune.pruning.assemble import LevelAssembler
from autoprune.pruning.evaluate import DenseReference, evaluate, prune_and_finetune
from autoprune.pruning.levels import LevelDatabase
from autoprune.pruning.masks import make_permanent
from autoprune.pruning.weight_levels import level_grid, load_or_build_sparsegpt
from autoprune.study.evolution import mutate_levels
from autoprune.study.storage import make_storage
from autoprune.tasks.causal_lm import CausalLMTask
from autoprune.tasks.data import Split, Splits
from autoprune.workspace import load_workspace
from conftest import TINY_LLAMA_SPACE

pytest.importorskip("transformers")

AUTOPRUNE = str(Path(sys.executable).with_name("autoprune"))


def _tiny() -> tuple[torch.nn.Module, list[str], Splits, CausalLMTask]:
    torch.manual_seed(0)
    model = build_model("hf-llama", (16,), 64, {"hidden_size": 32, "intermediate_size": 48, "num_attention_heads": 4})
    layers = [f for f in prunable_layers(model) if f.startswith("hf.model.layers.")]
    x = torch.randint(0, 64, (40, 16))
    split = Split(x, torch.roll(x, -1, 1))
    splits = Splits("t", split, split, split, 64, "f")
    return model.eval(), layers, splits, CausalLMTask(splits)


def _policy(criterion: str, ratios: dict[str, float]) -> Policy:
    return Policy(model="hf-llama", criterion=criterion, sparsity=ratios,  # type: ignore[arg-type]
                  finetune=FineTune(epochs=0, batch_size=8))


def _direct(model: torch.nn.Module, policy: Policy, splits: Splits, task: CausalLMTask) -> torch.nn.Module:
    m = copy.deepcopy(model)
    prune_and_finetune(m, policy, splits, task=task)
    make_permanent(m)
    return m


def _same(a: torch.nn.Module, b: torch.nn.Module) -> list[str]:
    sb = b.state_dict()
    return [k for k, v in a.state_dict().items() if not torch.equal(v, sb[k])]


def test_database_equals_direct_sparsegpt_at_every_level_and_assembly_leaves_the_dense_model_intact(
        tmp_path: Path) -> None:
    model, layers, splits, task = _tiny()
    dense = copy.deepcopy(model.state_dict())
    db = load_or_build_sparsegpt(tmp_path, "k", model, layers, splits.train)
    assert db.levels == level_grid() and len(db.levels) == 18
    asm = LevelAssembler(model, {"sparsegpt": db, "wanda": LevelDatabase.build(model, layers, "wanda", splits.train)})
    for ratio in (0.05, 0.5, 0.9):  # every unit at one level
        policy = _policy("sparsegpt", dict.fromkeys(layers, ratio))
        assert asm.fits(policy, 0) and asm.assemble(policy) == len(layers)
        assert _same(asm.model, _direct(model, policy, splits, task)) == []
    rng = np.random.default_rng(0)
    for criterion in ("sparsegpt", "wanda", "sparsegpt"):  # mixed levels; Wanda through the same working model
        policy = _policy(criterion, {f: float(rng.choice([0.0, *db.levels])) for f in layers})
        asm.assemble(policy)
        assert _same(asm.model, _direct(model, policy, splits, task)) == [], criterion
    assert asm.assemble(policy) == 0  # nothing changed: nothing rewritten
    assert not asm.fits(_policy("sparsegpt", dict.fromkeys(layers, 0.52)), 0)  # not a stored level
    assert not asm.fits(policy, 1.0)  # a fine-tune rung is not assembled
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in dense.items())  # the dense model is untouched


def test_an_assembled_candidate_measures_what_evaluate_measures_on_a_pruned_copy(tmp_path: Path) -> None:
    model, layers, splits, task = _tiny()
    db = load_or_build_sparsegpt(tmp_path, "k", model, layers, splits.train)
    ratios = {f: [0.4, 0.7, 0.85][i % 3] for i, f in enumerate(layers)}
    policy = _policy("sparsegpt", ratios)
    reference = DenseReference.of(model, splits, task=task, tokens=256)
    fast = LevelAssembler(model, {"sparsegpt": db}).evaluate(policy, splits, task, reference, None)
    slow = evaluate(model, policy, splits, task=task, reference=reference)
    assert fast.val == slow.val and fast.size == slow.size and fast.layer_sparsity == slow.layer_sparsity
    screened = LevelAssembler(model, {"sparsegpt": db}).evaluate(policy, splits, task, reference, 64)
    assert set(screened.val) == {"kl_to_dense"} and screened.size == {}  # a token rung: the divergence only
    assert screened.val["kl_to_dense"] == evaluate(model, policy, splits, task=task, reference=reference,
                                                   tokens=64).val["kl_to_dense"]
    # the fine-tune path takes its one-shot weights from the database too
    ft = policy.model_copy(update={"finetune": FineTune(epochs=0.25, batch_size=8, lr=1e-4)})
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    prune_and_finetune(a, ft, splits, task=task)
    prune_and_finetune(b, ft, splits, task=task, levels=db)
    make_permanent(a)
    make_permanent(b)
    for f in layers:
        assert torch.allclose(weight_of(a, f), weight_of(b, f), atol=1e-6)


def test_an_interrupted_build_resumes_where_it_stopped(tmp_path: Path) -> None:
    model, layers, splits, _ = _tiny()
    seen: list[int] = []

    def stop_after_three(done: int, total: int) -> None:
        seen.append(done)
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        load_or_build_sparsegpt(tmp_path / "a", "k", model, layers, splits.train, progress=stop_after_three)
    (folder,) = (tmp_path / "a").iterdir()
    assert len(list(folder.glob("*.npy"))) == 3 and json.loads((folder / "meta.json").read_text())["levels"]
    (folder / f"{layers[5]}.tmp.npy").write_bytes(b"half a file")  # a build killed while writing a unit
    seen.clear()
    resumed = load_or_build_sparsegpt(tmp_path / "a", "k", model, layers, splits.train,
                                      progress=lambda done, total: seen.append(done))
    assert seen == list(range(4, len(layers) + 1))  # only the missing units were built
    fresh = load_or_build_sparsegpt(tmp_path / "b", "k", model, layers, splits.train)
    for f in layers:
        for r in (0.3, 0.9):
            assert torch.equal(resumed.weight(f, r), fresh.weight(f, r)), f
    again: list[int] = []
    load_or_build_sparsegpt(tmp_path / "a", "k", model, layers, splits.train, progress=lambda d, t: again.append(d))
    assert again == []  # complete: opened, nothing rebuilt


def test_level_steps_keep_the_total_exactly_on_target_for_units_of_unequal_size() -> None:
    g = 110_592  # SmolLM2-135M's units: q/o 3 g, k/v g, gate/up/down 8 g
    sizes = {f"b{b}.{p}": c * g for b in range(30) for p, c in
             (("q", 3), ("k", 1), ("v", 1), ("o", 3), ("gate", 8), ("up", 8), ("down", 8))}
    assert set(level_units(sizes).values()) == {1, 3, 8}
    bounds = dict.fromkeys(sizes, (0.0, 0.99))
    rng = np.random.default_rng(0)

    def exact(ratios: dict[str, float], target: float) -> bool:
        on_grid = all(abs(r / 0.05 - round(r / 0.05)) < 1e-9 and r <= 0.9 + 1e-12 for r in ratios.values())
        total = sum(Fraction(round(r / 0.05)) * sizes[f] for f, r in ratios.items()) * Fraction(1, 20)
        return on_grid and total == Fraction(round(target * 100), 100) * sum(sizes.values())

    for target in (0.5, 0.6, 0.7):
        for _ in range(50):
            raw = project_to_budget(target, {f: float(rng.normal(0, 0.3)) for f in sizes}, sizes, bounds)
            snapped = snap_to_levels(raw, sizes, weighted_sparsity(raw, sizes), 0.05, 0.9, bounds)
            assert exact(snapped, target)
            assert max(abs(snapped[f] - raw[f]) for f in sizes) < 0.05 + 1e-9  # moved to a neighbouring level
        ratios = snap_to_levels(dict.fromkeys(sizes, target), sizes, target, 0.05, 0.9, bounds)
        for _ in range(100):
            child = mutate_levels(ratios, sizes, bounds, (0.05, 0.9), rng, 3)
            assert child != ratios and exact(child, target)
            assert snap_to_levels(child, sizes, target, 0.05, 0.9, bounds) == child  # on the grid: unchanged
            ratios = child


SPACE = (TINY_LLAMA_SPACE.replace("name: tiny_llama", "name: tiny_sgpt")
         .replace("criteria: [wanda]", "criteria: [sparsegpt]")
         .replace("finetune: {epochs: [0]}", "ladder: {epochs: [0, 0, 0], tokens: [64, 256], keep: 0.5}")
         .replace("baselines: [uniform, owl, alpha]", "baselines: [uniform, owl]").replace("trials: 14", "trials: 16"))


@pytest.mark.slow
@pytest.mark.parametrize(("sampler", "calibration"), [("evolution", "dense"), ("tpe", "dense"),
                                                      ("evolution", "sequential")])
def test_a_sparsegpt_search_ranks_assembled_candidates_that_apply_reproduces(tmp_path: Path, sampler: str,
                                                                             calibration: str) -> None:
    (tmp_path / "s.yaml").write_text(SPACE.replace("sampler: evolution", f"sampler: {sampler}")
                                     + f"calibration: {calibration}\n")
    res = subprocess.run([AUTOPRUNE, "search", "s.yaml", "--no-track", "--threads", "1"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SparseGPT level database" in res.stdout + res.stderr

    study = optuna.load_study(study_name="tiny_sgpt", storage=make_storage(None, tmp_path / "runs"))
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) >= 4
    ws = load_workspace(SearchSpace.from_yaml(tmp_path / "s.yaml"), "cpu", tmp_path / "runs")
    for t in done:
        policy = Policy.model_validate_json(t.user_attrs["eval"]["policy"])
        assert policy.criterion == "sparsegpt" and policy.calibration == calibration
        if calibration == "sequential":  # screened on the database built at its target, which apply rebuilds
            assert policy.calibration_reference == t.params["target"]
        assert all(abs(r * 20 - round(r * 20)) < 1e-9 for r in policy.sparsity.values())
        assert math.isclose(weighted_sparsity(policy.sparsity, ws.sizes), t.params["target"], abs_tol=1e-12)
    best = min(done, key=lambda t: t.values[0])
    policy = Policy.model_validate_json(best.user_attrs["eval"]["policy"])
    again = evaluate(ws.model, policy, ws.splits, task=ws.task)  # pruned directly on a copy
    assert again.score == best.values[0]


def test_sequential_calibration_feeds_each_block_the_already_pruned_blocks_outputs() -> None:
    from autoprune.pruning.criteria import CALIBRATION_WINDOWS
    from autoprune.pruning.sparsegpt import calibration_groups, prune_model

    model, layers, splits, task = _tiny()
    blocks = calibration_groups(model, layers, sequential=True)
    assert len(blocks) >= 2 and [f for b in blocks for f in b] == sorted(layers, key=layers.index)
    dense = _policy("sparsegpt", dict.fromkeys(layers, 0.5))
    one_pass = _direct(model, dense, splits, task)
    sequential = _direct(model, dense.model_copy(update={"calibration": "sequential"}), splits, task)
    same = [f for f in layers if torch.equal(weight_of(one_pass, f), weight_of(sequential, f))]
    assert same == blocks[0]  # the first block sees the dense inputs either way; every later one differs
    ref = copy.deepcopy(model)  # by hand: block 0 pruned, then block 1 calibrated on that model
    x = splits.train.x[:CALIBRATION_WINDOWS]
    prune_model(ref, dict.fromkeys(blocks[0], 0.5), x)
    prune_model(ref, dict.fromkeys(blocks[1], 0.5), x)
    assert all(torch.equal(weight_of(ref, f), weight_of(sequential, f)) for f in blocks[0] + blocks[1])
    for f in layers:  # exact per-unit sparsity either way
        assert int((weight_of(sequential, f) == 0).sum()) == round(0.5 * weight_of(sequential, f).numel())


def test_a_sequential_pass_ends_at_its_block_with_the_same_statistics() -> None:
    from autoprune.pruning.sparsegpt import calibration_groups, group_end, input_grams

    model, layers, splits, _ = _tiny()
    blocks = calibration_groups(model, layers, sequential=True)
    assert group_end(model, blocks[0]) == "hf.model.layers.0" and group_end(model, layers) is None
    head_runs = []
    handle = model.get_submodule("hf.lm_head").register_forward_hook(lambda *a: head_runs.append(1))
    x = splits.train.x[:12]
    full = input_grams(model, blocks[0], x)
    assert len(head_runs) == 2  # two batches of 8, through the whole model
    early = input_grams(model, blocks[0], x, stop_after="hf.model.layers.0")
    handle.remove()
    assert len(head_runs) == 2  # the head (and every later block) never ran
    assert set(early) == set(blocks[0]) and all(torch.equal(full[f], early[f]) for f in blocks[0])


def test_a_sequential_database_equals_sequential_pruning_at_its_reference_for_any_allocation(tmp_path: Path) -> None:
    from autoprune.pruning.sparsegpt import calibration_groups
    from autoprune.pruning.weight_levels import SequentialLevels

    model, layers, splits, task = _tiny()
    dense = copy.deepcopy(model.state_dict())
    blocks = calibration_groups(model, layers, sequential=True)
    seq = SequentialLevels([load_or_build_sparsegpt(tmp_path, "k", model, layers, splits.train, reference=r)
                            for r in (0.5, 0.7)])
    one_pass = load_or_build_sparsegpt(tmp_path, "k", model, layers, splits.train)
    assert len(list(tmp_path.iterdir())) == 3  # one folder per reference, beside the dense database
    asm = LevelAssembler(model, {"sparsegpt": seq})
    at = _policy("sparsegpt", dict.fromkeys(layers, 0.5)).model_copy(
        update={"calibration": "sequential", "calibration_reference": 0.5})
    assert asm.fits(at, 0) and asm.assemble(at) == len(layers)
    # uniform at the reference is the paper's sequential SparseGPT (no reference needed to reproduce it)
    assert _same(asm.model, _direct(model, at.model_copy(update={"calibration_reference": None}), splits, task)) == []
    rng = np.random.default_rng(1)
    for ref in (0.7, 0.5, 0.7):  # any allocation, either reference: equal to direct pruning at that reference
        policy = at.model_copy(update={"calibration_reference": ref,
                                       "sparsity": {f: float(rng.choice([0.0, *level_grid()])) for f in layers}})
        asm.assemble(policy)
        assert _same(asm.model, _direct(model, policy, splits, task)) == [], ref
    assert asm.assemble(policy.model_copy(update={"calibration_reference": 0.5})) == sum(
        1 for r in policy.sparsity.values() if r > 0)  # another reference's weights: every pruned unit rewritten
    assert not asm.fits(policy.model_copy(update={"calibration_reference": 0.6}), 0)  # not built at 0.6
    assert not asm.fits(policy.model_copy(update={"calibration": "dense", "calibration_reference": None}), 0)
    assert LevelAssembler(model, {"sparsegpt": one_pass}).fits(policy.model_copy(
        update={"calibration": "dense", "calibration_reference": None}), 0)
    later = blocks[1][0]  # block 0 sees the dense inputs either way; a later block's levels differ
    assert torch.equal(seq.stores[0.5].weight(blocks[0][0], 0.5), one_pass.weight(blocks[0][0], 0.5))
    assert not torch.equal(seq.stores[0.5].weight(later, 0.5), one_pass.weight(later, 0.5))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in dense.items())  # the dense model is untouched


def test_an_interrupted_sequential_build_resumes_from_the_finished_blocks(tmp_path: Path) -> None:
    model, layers, splits, _ = _tiny()
    n = len(layers) // 2 + 1  # into the second block: its inputs depend on the first block's stored levels

    def stop(done: int, total: int) -> None:
        if done == n:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        load_or_build_sparsegpt(tmp_path / "a", "k", model, layers, splits.train, progress=stop, reference=0.6)
    seen: list[int] = []
    resumed = load_or_build_sparsegpt(tmp_path / "a", "k", model, layers, splits.train, reference=0.6,
                                      progress=lambda done, total: seen.append(done))
    assert seen == list(range(n + 1, len(layers) + 1))
    fresh = load_or_build_sparsegpt(tmp_path / "b", "k", model, layers, splits.train, reference=0.6)
    assert all(torch.equal(resumed.weight(f, r), fresh.weight(f, r)) for f in layers for r in (0.3, 0.6, 0.9))
    with pytest.raises(ValueError, match=r"reference 0\.62 must be a stored level"):
        load_or_build_sparsegpt(tmp_path / "c", "k", model, layers, splits.train, reference=0.62)


def test_a_reference_is_kept_in_the_policy_file_and_dropped_when_apply_names_a_calibration() -> None:
    from autoprune.deploy.apply import with_criterion

    plain = _policy("sparsegpt", {"a": 0.5})
    assert "calibration_reference" not in plain.to_json()  # older policies' files are unchanged
    ref = plain.model_copy(update={"calibration": "sequential", "calibration_reference": 0.7})
    assert Policy.model_validate_json(ref.to_json()) == ref
    assert with_criterion(ref, None, "sequential").calibration_reference is None  # the paper's own inputs
    assert with_criterion(ref, None, "dense").calibration == "dense"
    assert with_criterion(ref, "sparsegpt").calibration_reference == 0.7  # only --calibration drops it
