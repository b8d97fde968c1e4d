"""Language-model pruning on a tiny random Llama (seconds; never the 135 M model): Wanda, the level database, OWL and
AlphaPruning allocations, the evolutionary sampler, and search → export → apply → a Hugging Face folder."""

from __future__ import annotations

import ast
import copy
import csv
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch

from autoprune.config.budget import weighted_sparsity
from autoprune.config.policy import FineTune, Policy
from autoprune.config.sampling import SampleContext, sample, unit_group
from autoprune.config.space import SearchSpace
from autoprune.models.layers import prunable_layers, weight_of
from autoprune.models.zoo import build_model
from autoprune.pruning.criteria import CALIBRATION_WINDOWS, importance
from autoprune.pruning.evaluate import prune_and_finetune
from autoprune.pruning.heuristics import alpha_ratios, owl_ratios
from autoprune.pruning.levels import LevelDatabase
from autoprune.pruning.masks import make_permanent
from autoprune.study.evolution import EvolutionSampler, mutate
from autoprune.study.sampler import search_distributions
from autoprune.tasks.causal_lm import CausalLMTask
from autoprune.tasks.data import Split, Splits
from conftest import TINY_LLAMA_SPACE

pytest.importorskip("transformers")  # the llm extra is part of the dev extra: CI always has it

ROOT = Path(__file__).resolve().parents[1]
AUTOPRUNE = str(Path(sys.executable).with_name("autoprune"))


def _tiny() -> tuple[torch.nn.Module, list[str], Split]:
    torch.manual_seed(0)
    model = build_model("hf-llama", (16,), 64, {"hidden_size": 32, "intermediate_size": 48, "num_attention_heads": 4})
    layers = [f for f in prunable_layers(model) if f.startswith("hf.model.layers.")]
    x = torch.randint(0, 64, (40, 16))
    return model.eval(), layers, Split(x, torch.roll(x, -1, 1))


def _peaked_tiny() -> tuple[torch.nn.Module, list[str], Split, Splits, CausalLMTask]:
    """The tiny Llama with peaked next-token distributions (as a trained model's are), its data and task."""
    model, layers, split = _tiny()
    with torch.no_grad():
        model.hf.lm_head.weight.mul_(30.0)
    splits = Splits("t", split, split, split, 64, "f")
    return model, layers, split, splits, CausalLMTask(splits)


def test_wanda_scores_equal_a_direct_computation() -> None:
    model, layers, data = _tiny()
    scores = importance(model, layers, "wanda", data)
    seen: dict[str, torch.Tensor] = {}
    handles = [model.get_submodule(f).register_forward_hook(
        lambda m, a, o, f=f: seen.__setitem__(f, a[0].detach().reshape(-1, a[0].shape[-1]))) for f in layers]
    with torch.no_grad():
        model(data.x[:CALIBRATION_WINDOWS])  # all calibration windows at once: one activation matrix per layer
    for h in handles:
        h.remove()
    assert len(layers) == 14
    for f in layers:
        direct = weight_of(model, f).detach().abs() * seen[f].double().norm(dim=0).float()[None, :]
        torch.testing.assert_close(scores[f], direct, rtol=1e-5, atol=1e-7)


def _policy(ratios: dict[str, float]) -> Policy:
    return Policy(model="hf-llama", criterion="wanda", sparsity=ratios, finetune=FineTune(epochs=0, batch_size=8))


def test_level_database_reproduces_direct_pruning_bit_for_bit_and_every_row_is_exact() -> None:
    model, layers, data = _tiny()
    splits = Splits("t", data, data, data, 64, "f")
    task = CausalLMTask(splits)
    rng = np.random.default_rng(0)
    ratios = {f: float(rng.choice([0.1, 0.25, 0.5, 0.7, 0.9])) for f in layers}
    direct, assembled = copy.deepcopy(model), copy.deepcopy(model)
    prune_and_finetune(direct, _policy(ratios), splits, task=task)
    db = LevelDatabase.build(model, layers, "wanda", data)
    prune_and_finetune(assembled, _policy(ratios), splits, task=task, levels=db)
    make_permanent(direct)
    make_permanent(assembled)
    for name, tensor in direct.state_dict().items():
        assert torch.equal(tensor, assembled.state_dict()[name]), name
    for f, r in ratios.items():  # Wanda compares within each output row: every row loses exactly its share
        w = weight_of(direct, f)
        zeros = (w == 0).sum(1)
        assert torch.all(zeros == round(r * w.shape[1])), f


def test_level_database_survives_a_save_and_load(tmp_path: Path) -> None:
    model, layers, data = _tiny()
    db = LevelDatabase.build(model, layers, "wanda", data)
    db.save(tmp_path / "db.pt")
    again = LevelDatabase.load(tmp_path / "db.pt")
    ratios = dict.fromkeys(layers, 0.6)
    assert all(torch.equal(a, b) for a, b in zip(db.masks(ratios).values(), again.masks(ratios).values(), strict=True))
    assert again.outliers == db.outliers and set(again.outliers) == set(layers)


def test_owl_keeps_more_weights_in_blocks_with_more_outliers_and_alpha_hits_the_target() -> None:
    units = {f"m.layers.{b}.{p}": 100 for b in range(3) for p in ("q", "up")}
    outliers = {f: [0.01, 0.05, 0.03][int(f.split(".")[2])] for f in units}
    ratios = owl_ratios(outliers, 0.6)
    assert ratios["m.layers.1.q"] < ratios["m.layers.2.q"] < ratios["m.layers.0.q"]  # more outliers, less pruned
    assert math.isclose(ratios["m.layers.0.q"] - ratios["m.layers.1.q"], 2 * 0.08)  # spread over ±λ
    assert math.isclose(weighted_sparsity(ratios, units), 0.6)
    alphas = {f: [2.0, 4.0, 3.0][int(f.split(".")[2])] for f in units}
    ar = alpha_ratios(alphas, units, 0.5)
    assert math.isclose(weighted_sparsity(ar, units), 0.5) and ar["m.layers.1.up"] > ar["m.layers.0.up"]
    assert unit_group("hf.model.layers.12.mlp.up_proj", "block") == "hf.model.layers.12"
    assert unit_group("hf.model.layers.12.mlp.up_proj", "type") == "mlp.up_proj"


def test_mutations_keep_the_total_sparsity_exactly_on_target() -> None:
    rng = np.random.default_rng(1)
    sizes = {f"l{i}": int(s) for i, s in enumerate(rng.integers(100, 5000, 12))}
    bounds = dict.fromkeys(sizes, (0.0, 0.99))
    ratios = dict.fromkeys(sizes, 0.7)
    for _ in range(200):
        child = mutate(ratios, sizes, bounds, rng, 3)
        assert child != ratios
        assert math.isclose(weighted_sparsity(child, sizes), 0.7, abs_tol=1e-12)
        assert all(0.0 <= r <= 0.99 for r in child.values())
        ratios = child


def _synthetic_study(seed: int, n: int, storage: optuna.storages.BaseStorage | None = None,
                     name: str = "evo") -> tuple[optuna.Study, SampleContext, SearchSpace]:
    """An evolutionary search on a made-up objective: layer 'a' should keep its weights."""
    space = SearchSpace.model_validate({"name": "e", "model": {"name": "mlp"}, "data": {"name": "digits"},
                                        "targets": {"grid": [0.5, 0.8]}, "offset": 1.0, "sampler": "evolution",
                                        "finetune": {"lr_scale": [0.1, 0.3]}})
    sizes = {"a": 400, "b": 1000, "c": 2500}
    ctx = SampleContext(model="m", fingerprint="f", sizes=sizes, bounds=dict.fromkeys(sizes, (0.0, 0.99)))
    sampler = EvolutionSampler(search_distributions(space, ctx), ctx, [0.5, 0.8], space.offset, seed=seed)
    study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, directions=["maximize", "minimize"],
                                load_if_exists=True)

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        p = sample(space, trial, ctx)
        assert math.isclose(weighted_sparsity(p.sparsity, sizes), float(trial.params["target"]), abs_tol=1e-9)
        return -p.sparsity["a"], weighted_sparsity(p.sparsity, sizes)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_trials=n)
    return study, ctx, space


def test_evolution_improves_is_deterministic_and_rebuilds_its_state_on_resume(tmp_path: Path) -> None:
    one, _, _ = _synthetic_study(3, 40)
    two, _, _ = _synthetic_study(3, 40)
    assert [t.params for t in one.trials] == [t.params for t in two.trials]  # same seed, same candidates
    per_target = {g: [t.values[0] for t in one.trials if t.params["target"] == g] for g in (0.5, 0.8)}
    assert all(len(v) == 20 for v in per_target.values())  # each size gets an equal share
    for values in per_target.values():  # selection works: the late candidates beat the early ones
        assert np.mean(values[-5:]) > np.mean(values[:5])
    # resume: a new process (a new sampler) continuing the stored study draws what one run would have drawn
    storage = optuna.storages.InMemoryStorage()
    _synthetic_study(3, 25, storage, "r")
    resumed, _, _ = _synthetic_study(3, 15, storage, "r")
    assert [t.params for t in resumed.trials] == [t.params for t in one.trials]


def test_evolution_with_a_population_of_one_always_mutates_the_best_trial() -> None:
    space = SearchSpace.model_validate({"name": "e", "model": {"name": "mlp"}, "data": {"name": "digits"},
                                        "targets": {"grid": [0.5]}, "offset": 1.0, "sampler": "evolution"})
    sizes = {"a": 400, "b": 1000, "c": 2500}
    ctx = SampleContext(model="m", fingerprint="f", sizes=sizes, bounds=dict.fromkeys(sizes, (0.0, 0.99)))
    dists = search_distributions(space, ctx)
    children = {}
    for population in (1, 8):
        sampler = EvolutionSampler(dists, ctx, [0.5], space.offset, seed=0, population=population, max_moves=1)
        study = optuna.create_study(sampler=sampler, directions=["maximize", "minimize"])
        best = {"target": 0.5, "pref/a": 0.9, "pref/b": -0.9, "pref/c": 0.0}  # far from the anchor (all 0)
        study.enqueue_trial(best)
        for score in (1.0, 0.0):  # the best, then a child
            study.optimize(lambda t, v=score: (v, float(sample(space, t, ctx).sparsity["a"])), n_trials=1)
        children[population] = study.trials[1].params
    # one move away from the best trial with a population of one; from the anchor while a population of 8 fills
    assert children[1]["pref/a"] - children[1]["pref/b"] > 1.0
    assert abs(children[8]["pref/a"] - children[8]["pref/b"]) < 1.0


def test_only_the_hf_adapter_imports_transformers() -> None:
    pkg = ROOT / "autoprune"
    importers = []
    for p in pkg.rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] == "transformers" for n in names):
                importers.append(str(p.relative_to(pkg)))
    assert sorted(set(importers)) == ["models/hf.py"]


SPACE = TINY_LLAMA_SPACE


@pytest.mark.slow
def test_search_export_apply_writes_a_folder_transformers_loads(tmp_path: Path) -> None:
    import transformers

    (tmp_path / "s.yaml").write_text(SPACE)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        res = subprocess.run([AUTOPRUNE, *args], cwd=tmp_path, capture_output=True, text=True)
        assert res.returncode == 0, res.stdout + res.stderr
        return res

    run("search", "s.yaml", "--no-track", "--threads", "1")
    run("export", "--study", "tiny_llama", "--max-size", "0.65", "-o", "p.json")
    policy = Policy.load(tmp_path / "p.json")
    assert policy.criterion == "wanda" and len(policy.sparsity) == 14
    recipes = json.loads((tmp_path / "p.ratios.json").read_text())
    assert recipes["pruning_ratio_dict"] == policy.sparsity
    assert recipes["recipe"][r"^model\.layers\.0\.self_attn\.q_proj$"] == policy.sparsity[
        "hf.model.layers.0.self_attn.q_proj"]
    run("apply", "p.json", "--space", "s.yaml", "--hf-folder", "hf", "--no-track", "-o", "pruned.pt")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    from autoprune.workspace import load_workspace

    ws = load_workspace(SearchSpace.from_yaml(tmp_path / "s.yaml"), "cpu", tmp_path / "runs")
    wrapped = build_model("hf-llama", ws.splits.input_shape, ws.splits.num_classes, ws.space.model.kwargs)
    wrapped.hf = hf
    for f, r in policy.sparsity.items():  # the folder holds the policy's sparsity, unit by unit
        w = weight_of(wrapped, f)
        assert abs(float((w == 0).float().mean()) - r) < 1.0 / w.shape[1] + 1e-9
    ppl = ws.task.metrics(wrapped, ws.splits.test)["perplexity"]
    assert math.isclose(ppl, policy.expected["test_perplexity"], rel_tol=1e-5)  # the trial's test score, reloaded
    # the same ratios pruned with SparseGPT: exact per unit, and the kept weights are updated
    run("apply", "p.json", "--space", "s.yaml", "--criterion", "sparsegpt", "--hf-folder", "hf-sgpt", "--no-track",
        "-o", "sgpt.pt")
    sgpt = build_model("hf-llama", ws.splits.input_shape, ws.splits.num_classes, ws.space.model.kwargs)
    sgpt.hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf-sgpt").eval()
    for f, r in policy.sparsity.items():
        w, dense_w = weight_of(sgpt, f), weight_of(ws.model, f)
        assert int((w == 0).sum()) == round(r * w.numel())
        if r > 0.05:
            assert not torch.equal(w[w != 0], dense_w[w != 0])
    res = subprocess.run([AUTOPRUNE, "apply", "p.json", "--space", "s.yaml", "--criterion", "obs", "--no-track"],
                         cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 2 and "--criterion obs" in res.stdout + res.stderr
    # sequential calibration: the first block as with dense inputs, every later block calibrated on pruned inputs
    run("apply", "p.json", "--space", "s.yaml", "--criterion", "sparsegpt", "--calibration", "sequential",
        "--hf-folder", "hf-seq", "--no-track", "-o", "seq.pt")
    seq = build_model("hf-llama", ws.splits.input_shape, ws.splits.num_classes, ws.space.model.kwargs)
    seq.hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf-seq").eval()
    differ = {f.split(".")[3] for f, r in policy.sparsity.items() if r > 0.05
              and not torch.equal(weight_of(seq, f), weight_of(sgpt, f))}
    assert "0" not in differ and differ  # block 0 equal; later blocks differ
    res = subprocess.run([AUTOPRUNE, "apply", "p.json", "--space", "s.yaml", "--calibration", "sideways",
                          "--no-track"], cwd=tmp_path, capture_output=True, text=True)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1 and "--calibration sideways" in lines[0]


def test_one_preference_per_block_ties_the_units_of_a_block_and_evolution_moves_blocks() -> None:
    space = SearchSpace.model_validate({"name": "g", "model": {"name": "mlp"}, "data": {"name": "digits"},
                                        "layers": {"group": "block"}, "targets": {"grid": [0.5]},
                                        "sampler": "evolution", "offset": 1.0})
    sizes = {f"m.layers.{b}.{p}": s for b in range(3) for p, s in (("q", 100), ("up", 300))}
    ctx = SampleContext(model="m", fingerprint="f", sizes=sizes, bounds=dict.fromkeys(sizes, (0.0, 0.99)))
    dists = search_distributions(space, ctx)
    assert sorted(k for k in dists if k.startswith("pref/")) == [f"pref/m.layers.{b}" for b in range(3)]
    sampler = EvolutionSampler(dists, ctx, [0.5], space.offset, seed=0, group="block")
    study = optuna.create_study(sampler=sampler, directions=["maximize", "minimize"])

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        p = sample(space, trial, ctx)
        for b in range(3):  # no anchor: a block's units are pruned alike
            assert math.isclose(p.sparsity[f"m.layers.{b}.q"], p.sparsity[f"m.layers.{b}.up"])
        assert math.isclose(weighted_sparsity(p.sparsity, sizes), 0.5, abs_tol=1e-9)
        return -p.sparsity["m.layers.0.q"], 0.5

    study.optimize(objective, n_trials=25)
    assert len({round(t.params["pref/m.layers.0"], 6) for t in study.trials}) > 3  # the blocks really move
    assert all(abs(v) <= 1.0 for t in study.trials for k, v in t.params.items() if k.startswith("pref/"))
    assert np.mean([t.values[0] for t in study.trials[-5:]]) > np.mean([t.values[0] for t in study.trials[:5]])


@pytest.mark.slow
def test_bench_compares_language_model_methods_by_test_perplexity(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(SPACE.replace("trials: 14", "trials: 8").replace(
        "finetune: {epochs: [0]}", "ladder: {epochs: [0, 0, 0], tokens: [64, 256], min_peers: 2}"))
    res = subprocess.run([AUTOPRUNE, "bench", "--space", "s.yaml", "--seeds", "1", "--trials", "8", "--sparsities",
                          "0.5,0.7", "--methods", "uniform,owl,alpha,autoprune,autoprune_tpe", "--out", "b",
                          "--threads", "1", "--incumbents"], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "test perplexity, mean ± std" in res.stdout and "wall time of each method" in res.stdout
    assert "compute of each method" in res.stdout and "evaluations per rung" in " ".join(res.stdout.split())
    rows = (tmp_path / "b" / "bench-tiny_llama.csv").read_text().splitlines()
    assert rows[0].split(",")[:4] == ["method", "seed", "sparsity", "test_perplexity"]
    got = {(r.split(",")[0], r.split(",")[2]): float(r.split(",")[3]) for r in rows[1:]}
    assert {m for m, _ in got} == {"uniform", "owl", "alpha", "autoprune", "autoprune_tpe"}
    assert all(1.0 < v < 300.0 for v in got.values())  # every method has a real perplexity at both levels
    # the searches enqueue the heuristics first, so neither can end worse than the best of them (same evaluation)
    for level in ("0.5", "0.7"):
        best_heuristic = min(got[(m, level)] for m in ("uniform", "owl", "alpha"))
        assert got[("autoprune", level)] <= best_heuristic * 1.02
    # --incumbents: every new best on validation, re-scored on test; the uniform baseline as the search evaluated
    # it equals the bench's own uniform row, and the last incumbent is the search's answer
    assert "re-scored on test" in res.stdout
    with (tmp_path / "b" / "incumbents-tiny_llama.csv").open() as fh:
        inc = list(csv.DictReader(fh))
    for level in ("0.5", "0.7"):
        rows_at = [r for r in inc if r["sparsity"] == level]
        uniform = next(r for r in rows_at if r["role"] == "uniform")
        assert math.isclose(float(uniform["test_perplexity"]), got[("uniform", level)], rel_tol=1e-4)
        assert float(uniform["val ÷ uniform"]) == float(uniform["test ÷ uniform"]) == 1.0
        best: list[dict[str, str]] = []  # the chain of new bests on validation
        for r in rows_at:
            if not best or float(r["val_perplexity"]) < float(best[-1]["val_perplexity"]):
                best.append(r)
        assert len(best) >= len(rows_at) - 1 and len(best) >= 2  # only the uniform row may be no new best
        assert math.isclose(float(best[-1]["test_perplexity"]), got[("autoprune", level)], rel_tol=1e-4)
        assert all(math.isclose(float(r["test ÷ uniform"]) * float(uniform["test_perplexity"]),
                                float(r["test_perplexity"]), rel_tol=1e-6) for r in rows_at)


@pytest.mark.slow
@pytest.mark.parametrize(("ladder", "proxies"), [
    ("finetune: {epochs: [0]}", ["KL to dense on 8192 calibration tokens"]),  # 256 windows of 32 (the default)
    ("ladder: {epochs: [0, 0, 0], tokens: [64, 256]}",
     ["KL to dense on 64 calibration tokens (rung 0)", "KL to dense on 256 calibration tokens (rung 1)"]),
])
def test_fitness_rank_correlation_without_a_fine_tune(tmp_path: Path, ladder: str, proxies: list[str]) -> None:
    (tmp_path / "s.yaml").write_text(SPACE.replace("finetune: {epochs: [0]}", ladder))
    res = subprocess.run([AUTOPRUNE, "bench", "--space", "s.yaml", "--rank-correlation", "4", "--out", "rc",
                          "--threads", "1"], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    out = " ".join(res.stdout.split())  # the table's cells may wrap
    assert "held-out test score" in out and "val perplexity" in out
    assert all(p in out for p in proxies), out
    rhos = [float(x) for x in re.findall(r"([+-]\d\.\d\d) \(4\)", res.stdout)]
    assert len(rhos) == 2 * (1 + len(proxies))  # every proxy × two targets, four candidates each
    assert all(-1.0 <= r <= 1.0 for r in rhos)


def test_dense_reference_divergence_on_a_few_tokens_equals_a_direct_kl() -> None:
    from autoprune.pruning.evaluate import DenseReference

    model, layers, split, splits, task = _peaked_tiny()
    ref = DenseReference.of(model, splits, task=task, tokens=20 * 16)  # 20 windows of 16 tokens
    assert ref.tokens == 320 and ref.outputs.dtype == torch.float16
    pruned = copy.deepcopy(model)
    prune_and_finetune(pruned, _policy(dict.fromkeys(layers, 0.9)), splits, task=task)
    with torch.no_grad():
        for tokens in (40, 100, 320):  # 3, 7 and 20 windows (a partial window counts whole)
            n = math.ceil(tokens / 16)
            logp = torch.log_softmax(model(split.x[:n]), -1).flatten(0, 1)
            logq = torch.log_softmax(pruned(split.x[:n]), -1).flatten(0, 1)
            direct = float((logp.exp() * (logp - logq)).sum(-1).mean())
            assert direct > 1e-2  # float16 log-probs round the dense side by < 1e-3 relative (< 5e-5 absolute)
            assert math.isclose(ref.divergence(pruned, tokens), direct, rel_tol=1e-2, abs_tol=5e-5)
    assert ref.divergence(model, 320) < 1e-3  # the dense model against itself (float16 rounding only)
    with pytest.raises(ValueError, match="320"):
        ref.divergence(pruned, 321)


def test_held_out_dense_reference_reads_the_windows_after_the_calibration_windows() -> None:
    from autoprune.errors import DataError
    from autoprune.pruning.evaluate import DenseReference

    model, layers, split, splits, task = _peaked_tiny()  # 40 windows of 16 tokens: 8 after the 32 calibration ones
    held = DenseReference.of(model, splits, task=task, tokens=8 * 16, held_out=True)
    calib = DenseReference.of(model, splits, task=task, tokens=8 * 16)
    assert torch.equal(held.inputs, split.x[CALIBRATION_WINDOWS:CALIBRATION_WINDOWS + 8])
    assert torch.equal(calib.inputs, split.x[:8])
    pruned = copy.deepcopy(model)
    prune_and_finetune(pruned, _policy(dict.fromkeys(layers, 0.9)), splits, task=task)  # calibrated on x[:32]
    with torch.no_grad():
        logp = torch.log_softmax(model(held.inputs), -1).flatten(0, 1)
        logq = torch.log_softmax(pruned(held.inputs), -1).flatten(0, 1)
    direct = float((logp.exp() * (logp - logq)).sum(-1).mean())
    assert math.isclose(held.divergence(pruned), direct, rel_tol=1e-2, abs_tol=5e-5)
    assert abs(held.divergence(pruned) - calib.divergence(pruned)) > 1e-3  # other text, another divergence
    with pytest.raises(DataError, match=r"ladder\.tokens: .* 144 tokens \(9 windows\).* 8 windows after its 32 "
                                        r"calibration windows"):
        DenseReference.of(model, splits, task=task, tokens=9 * 16, held_out=True)


def test_a_held_out_token_ladder_screens_on_windows_the_pruner_never_saw(tmp_path: Path) -> None:
    from autoprune.study.objective import Objective
    from autoprune.study.setup import prepare

    ladder = "ladder: {epochs: [0, 0, 0], tokens: [64, 256], tokens_from: held_out}"
    (tmp_path / "s.yaml").write_text(SPACE.replace("finetune: {epochs: [0]}", ladder))
    prep = prepare(SearchSpace.from_yaml(tmp_path / "s.yaml"), "cpu", tmp_path / "runs", threads=1)
    objective = Objective(prep.ws, prep.ctx, prep.heuristics, seed=0, stores=prep.stores)
    assert objective.reference is not None
    train = prep.ws.splits.train.x
    assert torch.equal(objective.reference.inputs, train[CALIBRATION_WINDOWS:CALIBRATION_WINDOWS + 256 // 32])
    too_many = (len(train) - CALIBRATION_WINDOWS + 1) * 32  # one window more than the text past the calibration
    (tmp_path / "s.yaml").write_text(SPACE.replace("finetune: {epochs: [0]}", ladder.replace("256", str(too_many))))
    res = subprocess.run([AUTOPRUNE, "search", "s.yaml", "--no-track", "--threads", "1"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert res.returncode == 2, res.stdout + res.stderr
    lines = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip() and "━" not in ln]
    assert any("ladder.tokens" in ln and f"{too_many} tokens" in ln and "after its 32 calibration" in ln
               for ln in lines), lines


def test_token_ladder_screens_every_candidate_on_few_tokens_and_measures_survivors_on_validation(
        tmp_path: Path) -> None:
    from autoprune.study import SearchOptions, run_search
    from autoprune.study.storage import make_storage

    space_yaml = SPACE.replace("finetune: {epochs: [0]}",
                               "ladder: {epochs: [0, 0, 0], tokens: [64, 256], keep: 0.5, min_peers: 3}")
    (tmp_path / "s.yaml").write_text(space_yaml)
    space = SearchSpace.from_yaml(tmp_path / "s.yaml")
    run_search(space, SearchOptions(n_trials=16, runs_dir=tmp_path, device="cpu", threads=1))
    study = optuna.load_study(study_name="tiny_llama", storage=make_storage(None, tmp_path))
    trials = study.get_trials(deepcopy=False)
    assert len(trials) >= 16
    late = [t for t in trials if "promoted_from" in t.user_attrs]  # stopped, then promoted by better-ranked peers
    assert all("rung/0" not in t.user_attrs and t.user_attrs["start_rung"] >= 1 for t in late)
    for t in (t for t in trials if t not in late):  # every candidate is screened on 64 calibration tokens, only
        r0 = t.user_attrs["rung/0"]
        assert r0["tokens"] == 64 and r0["kl_to_dense"] > 0 and math.isnan(r0["score"])
        assert r0["rank"] == -r0["kl_to_dense"]
    stopped = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert stopped and done  # the ladder stops some candidates on few tokens
    assert {int(t.user_attrs["ladder_stop"]) for t in stopped} <= {0, 1}
    for t in done:  # survivors: re-scored on 256 tokens, then measured on validation (the front's perplexity)
        assert t.user_attrs["rung/1"]["tokens"] == 256 or t.user_attrs.get("start_rung") == 2
        assert "tokens" not in t.user_attrs["rung/2"]
        assert t.values[0] == t.user_attrs["rung/2"]["score"] == t.user_attrs["eval"]["val_perplexity"]
    searched = [t for t in trials if "baseline" not in t.user_attrs]
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in searched) < len(searched)


@pytest.mark.parametrize(("ladder", "message"), [
    ("{epochs: [0, 0, 0]}", "strictly increasing"),
    ("{epochs: [0, 0, 0], tokens: [64]}", "one positive, strictly increasing token count per rung below the last"),
    ("{epochs: [0, 0, 0], tokens: [256, 64]}", "strictly increasing token count"),
    ("{epochs: [0, 1, 2], tokens: [64, 256]}", "their epochs must be 0"),
    ("{epochs: [0, 0, 0], tokens: [64, 256], rank_by: metric}", "rank_by kl_to_dense"),
])
def test_bad_token_ladders_get_one_line_naming_the_field(tmp_path: Path, ladder: str, message: str) -> None:
    (tmp_path / "s.yaml").write_text(SPACE.replace("finetune: {epochs: [0]}", f"ladder: {ladder}"))
    res = subprocess.run([AUTOPRUNE, "search", "s.yaml", "--no-track"], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 2, res.stdout + res.stderr
    lines = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
    assert len(lines) == 1 and "s.yaml" in lines[0] and "ladder" in lines[0] and message in lines[0], lines


def test_token_ladder_needs_a_language_model(tmp_path: Path) -> None:
    from autoprune.errors import ConfigError

    (tmp_path / "s.yaml").write_text("name: d\nmodel: {name: mlp}\ndata: {name: digits}\n"
                                     "ladder: {epochs: [0, 0, 2], tokens: [64, 256]}\n")
    with pytest.raises(ConfigError, match=r"ladder\.tokens counts a language model's calibration tokens"):
        SearchSpace.from_yaml(tmp_path / "s.yaml")


def test_a_cached_model_s_tokenizer_is_read_from_the_cache_not_the_gguf(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from autoprune.models.hf import _fingerprint, hf_tokenizer

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"not a gguf file")  # reading it would fail: the cached copy must be used
    raw = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    cached = tmp_path / "models" / f"hf-{_fingerprint(tmp_path, 'm.gguf')}"
    PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]").save_pretrained(cached)
    tok = hf_tokenizer(f"hf:{gguf}", tmp_path / "models")
    assert tok("hello world", add_special_tokens=False)["input_ids"] == [1, 2]
    with pytest.raises(Exception):  # noqa: B017  (without the cache, the broken GGUF itself is read)
        hf_tokenizer(f"hf:{gguf}")


def test_sparsegpt_prunes_exactly_and_reconstructs_a_layer_better_than_dropping_weights() -> None:
    from autoprune.config.policy import Granularity
    from autoprune.pruning.sparsegpt import input_grams, sparsegpt_prune

    torch.manual_seed(0)
    layer = torch.nn.Sequential(torch.nn.Linear(64, 32, bias=False))
    x = torch.randn(1, 512, 64) @ torch.randn(64, 64) * 0.3  # correlated inputs, as activations are
    gram = input_grams(layer, ["0"], x)["0"]
    flat = x[0]
    assert torch.allclose(gram, 2 * flat.T @ flat / 512, rtol=1e-4, atol=1e-5)
    w = layer[0].weight.detach()
    y = flat @ w.T
    for ratio in (0.3, 0.5, 0.7):
        updated, keep = sparsegpt_prune(w, gram, ratio)
        assert int((updated == 0).sum()) == int((keep == 0).sum()) == round(ratio * w.numel())  # exact
        err = float(((flat @ updated.T - y) ** 2).mean())
        assert err < 0.85 * float(((flat @ (w * keep).T - y) ** 2).mean())  # the update lowers the error
    _, keep = sparsegpt_prune(w, gram, 0.5, Granularity(kind="nm", n=2, m=4))
    assert bool((keep.reshape(32, 16, 4).sum(-1) == 2).all())  # 2 of every 4 inputs kept in each row


def test_sparsegpt_policy_prunes_every_unit_exactly_and_stays_closer_to_the_dense_model_than_wanda() -> None:
    model, layers, split, splits, task = _peaked_tiny()
    with torch.no_grad():
        dense = torch.log_softmax(model(split.x), -1)
    kl = {}
    for criterion in ("wanda", "sparsegpt"):
        m = copy.deepcopy(model)
        policy = Policy(model="hf-llama", criterion=criterion, sparsity=dict.fromkeys(layers, 0.6),
                        finetune=FineTune(epochs=0, batch_size=8))
        prune_and_finetune(m, policy, splits, task=task)
        make_permanent(m)
        for f in layers:  # SparseGPT: exact per layer; Wanda: exact per row (a row's share rounds)
            w = weight_of(m, f)
            zeros = int((w == 0).sum())
            exact = zeros == round(0.6 * w.numel())
            assert exact if criterion == "sparsegpt" else abs(zeros / w.numel() - 0.6) < 1 / w.shape[1]
        with torch.no_grad():
            logq = torch.log_softmax(m(split.x), -1)
        kl[criterion] = float((dense.exp() * (dense - logq)).sum(-1).mean())
    assert kl["sparsegpt"] < kl["wanda"]


@pytest.mark.slow
def test_bench_prunes_the_heuristics_with_sparsegpt_when_asked(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(SPACE.replace("finetune: {epochs: [0]}",
                                                   "ladder: {epochs: [0, 0, 0], tokens: [64, 256]}"))
    got = {}
    for criterion in ("wanda", "sparsegpt"):
        res = subprocess.run([AUTOPRUNE, "bench", "--space", "s.yaml", "--seeds", "1", "--sparsities", "0.7",
                              "--methods", "uniform,owl,uniform_seq", "--criterion", criterion, "--out", criterion,
                              "--threads", "1"], cwd=tmp_path, capture_output=True, text=True)
        assert res.returncode == 0, res.stdout + res.stderr
        assert f"'criterion': '{criterion}'" in " ".join(res.stdout.split()) or criterion in res.stdout
        flat = " ".join(res.stdout.split())
        assert "cost of screening one candidate" in flat and "plain forward pass of 64 tokens" in flat
        ratios = [float(x) for x in re.findall(r"every unit rewritten \(worst case\) │ [\d.]+ │ ([\d.]+)", flat)]
        assert len(ratios) == 1 and ratios[0] > 0  # printed beside the plain forward it is measured against
        rows = (tmp_path / criterion / "bench-tiny_llama.csv").read_text().splitlines()[1:]
        got[criterion] = {r.split(",")[0]: float(r.split(",")[3]) for r in rows}
    assert set(got["wanda"]) == set(got["sparsegpt"]) == {"uniform", "owl", "uniform_seq"}
    assert got["wanda"]["uniform_seq"] == got["wanda"]["uniform"]  # sequential calibration is SparseGPT's alone
    assert got["sparsegpt"]["uniform_seq"] != got["sparsegpt"]["uniform"]
    assert all(1.0 < v < 300.0 for c in got.values() for v in c.values())
    assert got["wanda"] != got["sparsegpt"]  # the heuristics really were pruned another way
    res = subprocess.run([AUTOPRUNE, "bench", "--space", "s.yaml", "--methods", "uniform", "--criterion", "obs"],
                         cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 2 and "obs" in res.stdout + res.stderr


@pytest.mark.slow
def test_bench_re_prunes_the_searchs_answer_sequentially_as_apply_ships_it(tmp_path: Path) -> None:
    import transformers

    from autoprune.study import load_existing, make_storage
    from autoprune.workspace import load_workspace

    (tmp_path / "s.yaml").write_text(SPACE.replace("finetune: {epochs: [0]}",
                                                   "ladder: {epochs: [0, 0, 0], tokens: [64, 256]}"))
    res = subprocess.run([AUTOPRUNE, "bench", "--space", "s.yaml", "--seeds", "1", "--trials", "8", "--sparsities",
                          "0.7", "--methods", "uniform,autoprune_seq", "--criterion", "sparsegpt", "--out", "b",
                          "--threads", "1"], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    rows = (tmp_path / "b" / "bench-tiny_llama.csv").read_text().splitlines()[1:]
    got = {r.split(",")[0]: float(r.split(",")[3]) for r in rows}
    assert set(got) == {"uniform", "autoprune", "autoprune_seq"}  # the search it re-prunes ran too
    assert got["autoprune_seq"] != got["autoprune"] and 1.0 < got["autoprune_seq"] < 300.0
    # the row is what a user ships: that trial exported, applied with SparseGPT and sequential calibration
    study = load_existing("bench-tiny_llama-autoprune-s0", make_storage(str(tmp_path / "b" / "optuna.journal"),
                                                                         tmp_path))
    done = [t for t in study.trials if t.values is not None]
    chosen = min(done, key=lambda t: (t.values[0], t.values[1]))  # one level: the best validation point answers
    for args in (["export", "--study", study.study_name, "--storage", "b/optuna.journal", "--trial",
                  str(chosen.number), "-o", "p.json"],
                 ["apply", "p.json", "--space", "s.yaml", "--criterion", "sparsegpt", "--calibration", "sequential",
                  "--hf-folder", "hf", "--no-track", "-o", "seq.pt", "--threads", "1"]):
        out = subprocess.run([AUTOPRUNE, *args], cwd=tmp_path, capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr
    ws = load_workspace(SearchSpace.from_yaml(tmp_path / "s.yaml"), "cpu", tmp_path / "runs")
    model = build_model("hf-llama", ws.splits.input_shape, ws.splits.num_classes, ws.space.model.kwargs)
    model.hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert math.isclose(ws.task.metrics(model, ws.splits.test)["perplexity"], got["autoprune_seq"], rel_tol=1e-5)
