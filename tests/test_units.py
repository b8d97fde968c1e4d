"""Prunable units beyond Conv/Linear: the matrices of nn.LSTM / nn.GRU / nn.RNN, and Hugging Face GPT-2's Conv1D."""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from autoprune.config.policy import FineTune, Granularity, Policy
from autoprune.deploy.production import load_pruned
from autoprune.models.layers import architecture_fingerprint, is_transposed, prunable_layers, unit_site, weight_of
from autoprune.models.zoo import RecurrentClassifier, build_model
from autoprune.pruning.criteria import importance
from autoprune.pruning.evaluate import prune_and_finetune
from autoprune.pruning.masks import apply_masks, current_masks, make_permanent, oriented_mask
from autoprune.pruning.metrics import count_macs, size_metrics
from autoprune.tasks.data import Split, Splits

UNSTRUCTURED = Granularity()


def _rnn(cell: str, layers: int = 2, bidirectional: bool = False) -> RecurrentClassifier:
    torch.manual_seed(0)
    return RecurrentClassifier(8, 10, hidden=12, num_layers=layers, cell=cell, bidirectional=bidirectional)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_every_recurrent_matrix_is_a_unit_named_by_its_parameter(cell: str) -> None:
    model = _rnn(cell, bidirectional=True)
    names = list(prunable_layers(model))
    expected = [f"rnn.weight_{k}_l{i}{d}" for i in range(2) for d in ("", "_reverse") for k in ("ih", "hh")]
    assert names == [*expected, "head"]
    module, param = unit_site(model, "rnn.weight_hh_l1_reverse")
    assert module is model.rnn and param == "weight_hh_l1_reverse"
    assert weight_of(model, "rnn.weight_ih_l0").shape == ({"lstm": 4, "gru": 3, "rnn": 1}[cell] * 12, 8)
    with pytest.raises(AttributeError):
        unit_site(model, "rnn.bias_ih_l0")  # biases are not units


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_masked_recurrent_model_equals_one_with_those_weights_zeroed(cell: str) -> None:
    model = _rnn(cell)
    x = torch.randn(5, 1, 8, 8)
    gen = torch.Generator().manual_seed(1)
    units = [u for u in prunable_layers(model) if u.startswith("rnn.")]
    masks = {u: (torch.rand(weight_of(model, u).shape, generator=gen) > 0.6).float() for u in units}
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        for u, m in masks.items():
            getattr(zeroed.rnn, u.split(".")[1]).mul_(m)
    apply_masks(model, masks)
    assert set(current_masks(model)) == set(units)
    torch.testing.assert_close(model(x), zeroed(x), rtol=0, atol=0)
    make_permanent(model)
    assert current_masks(model) == {}
    assert not hasattr(model.rnn, "parametrizations") or not model.rnn.parametrizations
    torch.testing.assert_close(model(x), zeroed(x), rtol=0, atol=0)
    sparsity = size_metrics(model, UNSTRUCTURED, (1, 8, 8))["sparsity"]
    total = sum(weight_of(model, u).numel() for u in prunable_layers(model))
    zeros = sum(int((weight_of(model, u) == 0).sum()) for u in prunable_layers(model))
    assert sparsity == pytest.approx(zeros / total)


def test_recurrent_macs_count_every_matrix_once_per_time_step() -> None:
    model = _rnn("lstm")
    dense, sparse = count_macs(model, (1, 8, 8))
    per_step = sum(weight_of(model, u).numel() for u in prunable_layers(model) if u.startswith("rnn."))
    assert dense == 8 * per_step + model.head.weight.numel() == sparse
    apply_masks(model, {"rnn.weight_hh_l0": torch.zeros_like(model.rnn.weight_hh_l0)})
    assert count_macs(model, (1, 8, 8))[1] == dense - 8 * model.rnn.weight_hh_l0.numel()


def _digit_rows(n: int = 96) -> Splits:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 8, 8, generator=gen)
    y = (x[:, 0, :, 0].sum(1) > 0).long()
    half = n // 2
    return Splits("rows", Split(x[:half], y[:half]), Split(x[half:], y[half:]), Split(x[half:], y[half:]), 2, "t")


@pytest.mark.parametrize("granularity", [Granularity(), Granularity(kind="nm", n=2, m=4)], ids=["unstructured", "2:4"])
@pytest.mark.parametrize("criterion", ["magnitude", "taylor"])
def test_recurrent_units_prune_to_their_ratio_and_stay_pruned_through_the_fine_tune(
        granularity: Granularity, criterion: str) -> None:
    model = RecurrentClassifier(8, 2, hidden=8)
    policy = Policy(sparsity={"rnn.weight_ih_l0": 0.5, "rnn.weight_hh_l0": 0.5}, criterion=criterion,
                    granularity=granularity, finetune=FineTune(epochs=1, lr=1e-2))
    prune_and_finetune(model, policy, _digit_rows(), seed=0)
    make_permanent(model)
    for unit in policy.sparsity:
        w = weight_of(model, unit)
        assert float((w == 0).float().mean()) == pytest.approx(0.5)
        if granularity.kind == "nm":
            assert torch.all((w.reshape(w.shape[0], -1, 4) != 0).sum(2) == 2)


def test_wanda_refuses_a_recurrent_unit_in_one_line() -> None:
    model = _rnn("lstm", layers=1)
    with pytest.raises(ValueError, match=r"rnn\.weight_hh_l0 is a recurrent matrix"):
        importance(model, ["rnn.weight_hh_l0"], "wanda", _digit_rows().train)


def test_recurrent_builtin_reads_images_as_rows_and_fingerprints_its_units() -> None:
    model = build_model("recurrent", (1, 8, 8), 10, {"hidden": 16, "cell": "gru"})
    assert model(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
    other = build_model("recurrent", (1, 8, 8), 10, {"hidden": 16, "cell": "gru", "num_layers": 2})
    assert architecture_fingerprint(model) != architecture_fingerprint(other)


def _tiny_gpt2() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4)
    return transformers.GPT2LMHeadModel(config).eval()


def _as_linear(conv1d: nn.Module) -> nn.Linear:
    lin = nn.Linear(conv1d.weight.shape[0], conv1d.weight.shape[1])
    with torch.no_grad():
        lin.weight.copy_(conv1d.weight.t())
        lin.bias.copy_(conv1d.bias)
    return lin


def test_gpt2_conv1d_projections_are_units_read_as_out_by_in() -> None:
    model = _tiny_gpt2()
    units = prunable_layers(model)
    conv = [u for u in units if is_transposed(model, u)]
    assert conv == [f"transformer.h.{i}.{p}" for i in range(2)
                    for p in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    dense, _ = count_macs(model, (8,), torch.long)
    per_token = sum(weight_of(model, u).numel() for u in units)
    assert dense == 8 * per_token  # every projection and the head, once per token
    w = weight_of(model, "transformer.h.0.mlp.c_fc")  # (in 32, out 128)
    mask = oriented_mask(w.abs(), 0.5, Granularity(kind="nm", n=2, m=4), False, True)
    assert torch.all((mask.t().reshape(128, -1, 4) != 0).sum(2) == 2)  # 2 of every 4 *inputs* of each output


def test_wanda_on_conv1d_prunes_exactly_as_on_the_equivalent_linear() -> None:
    model = _tiny_gpt2()
    fqn = "transformer.h.0.mlp.c_fc"
    conv = model.get_submodule(fqn)
    tokens = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(0))
    ref = copy.deepcopy(model)
    ref.get_submodule("transformer.h.0.mlp").c_fc = _as_linear(ref.get_submodule(fqn))
    torch.testing.assert_close(model(tokens).logits, ref(tokens).logits)
    score_conv = importance(model, [fqn], "wanda", Split(tokens, tokens))[fqn]
    score_lin = importance(ref, [fqn], "wanda", Split(tokens, tokens))[fqn]
    torch.testing.assert_close(score_conv.t(), score_lin)
    mask_conv = oriented_mask(score_conv, 0.5, UNSTRUCTURED, True, True)
    mask_lin = oriented_mask(score_lin, 0.5, UNSTRUCTURED, True, False)
    assert torch.equal(mask_conv.t(), mask_lin)
    assert conv.weight.shape == (32, 128)


EXE = str(Path(sys.executable).parent / "autoprune")


def test_lstm_search_export_apply_reproduces_the_exported_score_through_the_cli(tmp_path: Path) -> None:
    space = yaml.safe_load(Path("search_spaces/lstm_digits.yaml").read_text())
    space.update(name="lstm_small", trials=8, targets={"grid": [0.5, 0.6]}, train={"epochs": 6, "lr": 0.003},
                 ladder={"epochs": [0, 1, 3], "keep": 0.5}, model={"name": "recurrent", "kwargs": {"hidden": 24}})
    path = tmp_path / "lstm.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    runs = tmp_path / "runs"
    common = ["--runs", str(runs)]
    res = subprocess.run([EXE, "search", str(path), "--no-track", "--device", "cpu", *common],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    policy_file = tmp_path / "p.json"
    res = subprocess.run([EXE, "export", "--study", "lstm_small", "--max-size", "0.6", "-o", str(policy_file),
                          *common], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    policy = Policy.load(policy_file)
    assert 0.5 - 1e-9 <= policy.expected["sparsity"] <= 0.6 + 1e-9
    assert {u for u in policy.sparsity if u.startswith("rnn.weight_")} == {"rnn.weight_ih_l0", "rnn.weight_hh_l0"}
    res = subprocess.run([EXE, "apply", str(policy_file), "--space", str(path), "-o", str(tmp_path / "m.pt"),
                          "--no-track", *common], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    row = next(line for line in res.stdout.splitlines() if "test_accuracy" in line)
    applied = float(row.split("│")[-2])
    assert applied == pytest.approx(policy.expected["test_accuracy"], abs=1e-4)
    pruned = load_pruned(tmp_path / "m.pt", build_model("recurrent", (1, 8, 8), 10, {"hidden": 24}))
    for unit, ratio in policy.sparsity.items():  # the file holds the exported ratio of every recurrent matrix
        w = weight_of(pruned, unit)
        assert float((w == 0).sum()) == round(ratio * w.numel())


GPT2_SPACE = """\
name: tiny_gpt2
model:
  name: hf:{folder}
data:
  name: text:pydoc
  kwargs: {{seq_len: 32, max_chars: 30000}}
task: {{kind: causal_lm}}
layers:
  include: ["hf.transformer.h.*"]
criteria: [{criterion}]
finetune: {{epochs: [0]}}
targets: {{grid: [0.5]}}
baselines: [uniform, owl, alpha]
anchor: owl
early_stop: {{enabled: false}}
sampler: evolution
trials: 8
"""


@pytest.mark.parametrize("criterion", ["wanda", "sparsegpt"])
def test_gpt2_folder_searches_its_conv1d_units_through_hf(tmp_path: Path, criterion: str) -> None:
    folder = tmp_path / "gpt2"
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=256, n_positions=64, n_embd=32, n_layer=2, n_head=4)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    path = tmp_path / "gpt2.yaml"
    path.write_text(GPT2_SPACE.format(folder=folder, criterion=criterion))
    common = ["--runs", str(tmp_path / "runs")]
    res = subprocess.run([EXE, "search", str(path), "--no-track", "--device", "cpu", *common],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    policy_file = tmp_path / "p.json"
    res = subprocess.run([EXE, "export", "--study", "tiny_gpt2", "--max-size", "1", "-o", str(policy_file), *common],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    policy = Policy.load(policy_file)
    assert len(policy.sparsity) == 8 and all(".c_" in u for u in policy.sparsity)  # the 8 Conv1D projections
    sizes = {u: math.prod(policy.shapes[u]) for u in policy.sparsity}
    searched = sum(r * sizes[u] for u, r in policy.sparsity.items()) / sum(sizes.values())
    assert policy.criterion == criterion and searched == pytest.approx(0.5, abs=1e-3)
    assert policy.shapes["hf.transformer.h.0.mlp.c_fc"] == [32, 128]  # Conv1D: (in, out)
    res = subprocess.run([EXE, "apply", str(policy_file), "--space", str(path), "-o", str(tmp_path / "m.pt"),
                          "--no-track", *common], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    row = next(line for line in res.stdout.splitlines() if "test_perplexity" in line)
    assert float(row.split("│")[-2]) == pytest.approx(policy.expected["test_perplexity"], rel=1e-4)


class _MobileStyle(nn.Module):
    """conv → depthwise conv → pointwise conv → grouped conv (4 groups) → head."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.dw, self.b2 = nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16)
        self.pw, self.g, self.fc = nn.Conv2d(16, 32, 1), nn.Conv2d(32, 32, 3, padding=1, groups=4), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.dw(x)))
        return self.fc(torch.relu(self.g(self.pw(x))).mean((2, 3)))


def test_depthwise_and_grouped_convs_channel_prune_and_shrink_to_the_masked_model() -> None:
    from autoprune.pruning.channels import group_keep, groups_for, member_masks, remove_zero_channels

    torch.manual_seed(0)
    model = _MobileStyle().eval()
    layers = ["c1", "dw", "pw", "g"]
    groups = {g.roots: g for g in groups_for(model, layers, (1, 8, 8))}
    assert set(groups) == {("c1", "dw"), ("pw",), ("g",)}  # the depthwise conv shares its producer's channels
    assert groups[("c1", "dw")].blocks == 1 and groups[("pw",)].blocks == 4 and groups[("g",)].blocks == 4
    scores = {f: weight_of(model, f).abs() for f in layers}
    sizes = {f: weight_of(model, f).numel() for f in layers}
    with torch.no_grad():
        for group in groups.values():
            keep = group_keep(group, dict.fromkeys(layers, 0.4), scores, sizes)
            if group.blocks > 1:  # the same positions in every block of a grouped conv
                assert torch.equal(keep.view(group.blocks, -1), keep[: group.channels // 4].repeat(4, 1))
            for param, mask in member_masks(model, group, keep).items():
                model.get_parameter(param).mul_(mask)
    x = torch.randn(4, 1, 8, 8)
    masked = model(x)
    removed = remove_zero_channels(model, list(groups.values()), (1, 8, 8))
    assert removed == 6 + 12 + 12 and model.g.weight.shape == (20, 5, 3, 3) and model.g.groups == 4
    torch.testing.assert_close(model(x), masked)


BERT_SPACE = """\
name: tiny_bert
model:
  name: hf:{folder}
data:
  name: userpkg.tokens:presence
  tokens: true
layers:
  include: ["hf.bert.encoder.*"]
criteria: [magnitude]
targets: {{grid: [0.5]}}
finetune: {{lr_scale: [30.0]}}
ladder: {{epochs: [0, 1, 3], keep: 0.5}}
baselines: [uniform, lamp]
trials: 6
"""


def test_a_hugging_face_sequence_classifier_folder_searches_exports_and_applies(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=16, num_labels=2)
    folder = tmp_path / "bert"
    transformers.BertForSequenceClassification(config).save_pretrained(folder)
    path = tmp_path / "bert.yaml"
    path.write_text(BERT_SPACE.format(folder=folder))
    tests_dir = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": f"{tests_dir}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    common = ["--runs", str(tmp_path / "runs")]
    res = subprocess.run([EXE, "search", str(path), "--no-track", *common], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    res = subprocess.run([EXE, "export", "--study", "tiny_bert", "--max-size", "1", "-o", str(tmp_path / "p.json"),
                          *common], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    policy = Policy.load(tmp_path / "p.json")
    assert any(u.endswith("attention.self.query") for u in policy.sparsity) and len(policy.sparsity) == 12
    res = subprocess.run([EXE, "apply", str(tmp_path / "p.json"), "--space", str(path), "-o", str(tmp_path / "m.pt"),
                          "--no-track", *common], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    row = next(line for line in res.stdout.splitlines() if "test_accuracy" in line)
    assert float(row.split("│")[-2]) == pytest.approx(policy.expected["test_accuracy"], abs=1e-4)
