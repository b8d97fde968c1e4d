"""Export a policy from the front and apply it: round trip, channel removal on resnet20, bad policies."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autoprune.api import export, search
from autoprune.config.policy import FineTune, Granularity, Policy
from autoprune.config.space import SearchSpace
from autoprune.deploy.production import apply, export_onnx, load_pruned, save_pruned
from autoprune.errors import ConfigError, PolicyError
from autoprune.pruning.evaluate import evaluate
from autoprune.pruning.masks import make_permanent
from autoprune.workspace import load_workspace
from conftest import write_space

EXE = str(Path(sys.executable).parent / "autoprune")


@pytest.fixture(scope="module")
def searched(space_path: Path, runs_dir: Path) -> str:
    search(space_path, n_trials=12, study="roundtrip", runs_dir=runs_dir, device="cpu")
    return "roundtrip"


def test_round_trip_reproduces_test_accuracy_and_shrinks_file(searched: str, space_path: Path, runs_dir: Path,
                                                              tmp_path: Path) -> None:
    pol = export(searched, tmp_path / "p.json", max_size=0.25, runs_dir=runs_dir)
    loaded = Policy.load(tmp_path / "p.json")
    assert loaded == pol and loaded.provenance["study"] == searched and "test_accuracy" in loaded.expected
    raw = json.loads((tmp_path / "p.json").read_text())
    assert next(iter(raw)) == "schema_version" and raw["granularity"] == {"kind": "unstructured"}  # no N:M noise
    assert raw["task"] == "classification" and raw["provenance"]["data"] == "digits"
    assert 0.5 < raw["expected"]["dense_val_accuracy"] <= 1.0
    ws = load_workspace(SearchSpace.from_yaml(space_path), "cpu", runs_dir)
    res = apply(ws.model, loaded, ws.splits, seed=ws.space.seed, measure_latency=False)
    assert abs(res.after["test_accuracy"] - loaded.expected["test_accuracy"]) <= 0.01
    assert abs(res.after["sparsity"] - loaded.expected["sparsity"]) < 1e-3
    dense = save_pruned(ws.model, loaded, tmp_path / "dense.pt", compress=False)
    pruned = save_pruned(res.model, loaded, tmp_path / "pruned.pt")
    expected_ratio = res.after["bytes_sparse"] / res.after["bytes_dense"]
    assert pruned <= dense * expected_ratio * 1.1 + 4096
    fresh = load_workspace(SearchSpace.from_yaml(space_path), "cpu", runs_dir).model
    back = load_pruned(tmp_path / "pruned.pt", fresh)
    want = res.model.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in back.state_dict().items())


def test_export_selectors(searched: str, runs_dir: Path, tmp_path: Path) -> None:
    knee = export(searched, tmp_path / "k.json", knee=True, runs_dir=runs_dir, track=False)
    assert knee.sparsity
    with pytest.raises(ConfigError, match="exactly one of"):
        export(searched, tmp_path / "x.json", runs_dir=runs_dir, track=False)
    with pytest.raises(ConfigError, match=r"no front trial reaches val_accuracy 1\.5"):
        export(searched, tmp_path / "x.json", min_accuracy=1.5, runs_dir=runs_dir, track=False)
    assert not (tmp_path / "x.json").exists()


def masked_size(model: torch.nn.Module) -> float:
    """Nonzero fraction of a masked (not shrunk) model: what the size objective was before it shrank models."""
    params = list(model.state_dict().values())
    return sum(int(torch.count_nonzero(p)) for p in params if p.is_floating_point()) / sum(
        p.numel() for p in params if p.is_floating_point())


def test_resnet20_channel_policy_shrinks_for_real(tmp_path: Path) -> None:
    space = SearchSpace.from_yaml(write_space(tmp_path / "r.yaml", model={"name": "resnet20", "kwargs": {"width": 8}},
                                              granularity={"kind": "channel"}, layers={"exclude": ["conv1"]},
                                              train={"epochs": 1}))
    ws = load_workspace(space, "cpu", tmp_path / "runs")
    from autoprune.models.layers import layer_shapes

    pol = Policy(model="resnet20", fingerprint=ws.fingerprint, shapes=layer_shapes(ws.model),
                 granularity=Granularity(kind="channel"), sparsity=dict.fromkeys(ws.layers, 0.5),
                 finetune=FineTune(epochs=0))
    masked = apply(ws.model, pol, ws.splits, remove_channels=False, measure_latency=False).model
    res = apply(ws.model, pol, ws.splits, measure_latency=False)
    x = ws.splits.val.x[:32]
    with torch.no_grad():
        assert torch.allclose(res.model(x), masked(x), atol=1e-5)
    n_dense = sum(p.numel() for p in ws.model.parameters())
    n_pruned = sum(p.numel() for p in res.model.parameters())
    assert res.channels_removed > 0 and n_pruned < 0.5 * n_dense
    # the search's size objective is the size apply produces (the masked model's nonzeros were ~2x too big)
    searched = evaluate(ws.model, pol, ws.splits, measure_latency=False).size["size_nonzeros"]
    assert abs(res.after["size_nonzeros"] - searched) <= 0.01 * searched
    assert abs(res.after["size_nonzeros"] - n_pruned / n_dense) <= 0.01
    assert masked_size(masked) > 1.5 * searched
    save_pruned(res.model, pol, tmp_path / "r.pt")  # pickle-free: a fresh resnet20 is resized to the saved shapes
    from autoprune.models.zoo import build_model

    fresh = build_model("resnet20", ws.splits.input_shape, ws.splits.num_classes, {"width": 8}, None)
    back = load_pruned(tmp_path / "r.pt", fresh)
    with torch.no_grad():
        assert torch.equal(back(x), res.model(x))
    assert sum(p.numel() for p in back.parameters()) == n_pruned
    onnx_path = tmp_path / "r.onnx"
    export_onnx(res.model, ws.splits.input_shape, onnx_path)
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(onnx.load(str(onnx_path)))
    sess = ort.InferenceSession(str(onnx_path))
    got = sess.run(None, {sess.get_inputs()[0].name: x[:1].numpy()})[0]
    assert abs(got - res.model(x[:1]).detach().numpy()).max() < 1e-4
    make_permanent(masked)


def test_policy_from_another_model_names_the_layers(searched: str, runs_dir: Path, tmp_path: Path) -> None:
    pol = export(searched, tmp_path / "p.json", knee=True, runs_dir=runs_dir, track=False)
    from autoprune.models.zoo import build_model

    other = build_model("digits_cnn", (1, 8, 8), 10, {"width": 4})
    with pytest.raises(PolicyError, match=r"different model.*mismatched: .*features.0 \[8, 1, 3, 3\]≠\[4, 1, 3, 3\]"):
        apply(other, pol)


@pytest.mark.parametrize("mutate,needle", [
    (lambda d: d.update(schema_version=7), "unsupported schema_version 7"),
    (lambda d: d["sparsity"].update({next(iter(d["sparsity"])): 1.0}), "ratio 1.0 outside [0, 1)"),
    (None, "not valid JSON"),
])
def test_bad_policy_files_one_line_no_output(searched: str, runs_dir: Path, space_path: Path, tmp_path: Path,
                                            mutate, needle: str) -> None:  # type: ignore[no-untyped-def]
    export(searched, tmp_path / "p.json", knee=True, runs_dir=runs_dir, track=False)
    if mutate is None:
        (tmp_path / "p.json").write_text((tmp_path / "p.json").read_text()[:-40])
    else:
        d = json.loads((tmp_path / "p.json").read_text())
        mutate(d)
        (tmp_path / "p.json").write_text(json.dumps(d))
    out = tmp_path / "pruned.pt"
    res = subprocess.run([EXE, "apply", str(tmp_path / "p.json"), "--space", str(space_path), "--runs", str(runs_dir),
                          "-o", str(out)], capture_output=True, text=True)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "p.json" in lines[0]
    assert not out.exists() and not list(tmp_path.glob(".pruned*"))


def test_exports_take_raw_tabular_rows(tmp_path: Path, runs_dir: Path) -> None:
    """The search z-scores tabular features; pruned.pt, TorchScript and ONNX carry that scaling, so they give the
    searched accuracy on the user's raw rows."""
    import numpy as np
    import onnxruntime

    space_file = write_space(tmp_path / "mlp.yaml", name="raw_rows", model={"name": "mlp"},
                             data={"name": "breast_cancer"}, targets={"grid": [0.5]}, baselines=["lamp"])
    search(space_file, n_trials=1, study="raw_rows", runs_dir=runs_dir, device="cpu", track=False)
    export("raw_rows", tmp_path / "p.json", trial=0, runs_dir=runs_dir, track=False)
    files = [tmp_path / n for n in ("pruned.pt", "pruned.ts", "pruned.onnx")]
    res = subprocess.run([EXE, "apply", str(tmp_path / "p.json"), "--space", str(space_file), "--runs",
                          str(runs_dir), "-o", str(files[0]), "--torchscript", str(files[1]), "--onnx", str(files[2]),
                          "--device", "cpu", "--quantize", "int8"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    ws = load_workspace(SearchSpace.from_yaml(space_file), "cpu", runs_dir)
    scaling = ws.splits.scaling
    assert scaling is not None and len(scaling["mean"]) == 30
    raw = ws.splits.test.x * torch.tensor(scaling["std"]) + torch.tensor(scaling["mean"])  # the user's rows
    assert float(raw.abs().mean()) > 10 * float(ws.splits.test.x.abs().mean())  # really unscaled
    want = load_pruned(files[0], _fresh_mlp(ws))
    ts = torch.jit.load(str(files[1]))
    session = onnxruntime.InferenceSession(str(files[2]))
    scaled_pred = want[1](ws.splits.test.x).argmax(1)  # the pruned network itself, on scaled rows
    with torch.no_grad():
        for pred in (want(raw).argmax(1), ts(raw).argmax(1),
                     torch.from_numpy(np.asarray([session.run(None, {session.get_inputs()[0].name:
                                                                     r[None].numpy()})[0][0] for r in raw]))
                     .argmax(1)):
            assert torch.equal(pred, scaled_pred)
        int8 = torch.jit.load(str(tmp_path / "pruned.int8.ts"))  # dynamic int8, also on raw rows
        agree = float((int8(raw).argmax(1) == scaled_pred).float().mean())
        # the sparse int8 file: pickle-free, zeros compressed, and the same int8 model as the TorchScript one
        from autoprune.deploy.int8 import load_int8

        sparse = load_int8(tmp_path / "pruned.int8.pt", _fresh_mlp(ws))
        assert torch.equal(sparse(raw), int8(raw))
    assert agree > 0.9
    sparsity = json.loads((tmp_path / "p.json").read_text())["expected"]["sparsity"]
    ratio = (tmp_path / "pruned.int8.pt").stat().st_size / (tmp_path / "pruned.int8.ts").stat().st_size
    assert sparsity >= 0.45 and ratio < 0.85  # at 50 % sparsity the sparse int8 file is clearly smaller


def _fresh_mlp(ws: object) -> torch.nn.Module:
    from autoprune.models.zoo import build_model

    splits = ws.splits  # type: ignore[attr-defined]
    return build_model("mlp", splits.input_shape, splits.num_classes, {}, None)


def test_no_pickled_loading_anywhere_in_the_package() -> None:
    pkg = Path(__file__).resolve().parents[1] / "autoprune"
    offenders = [str(p) for p in pkg.rglob("*.py") if "weights_only=False" in p.read_text()]
    assert offenders == []


def test_outputs_get_the_users_umask(tmp_path: Path) -> None:
    import os

    from autoprune.files import write_atomic

    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "out.bin", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "out.bin").stat().st_mode & 0o777 == 0o644


def test_apply_refuses_another_dense_model_before_training(searched: str, runs_dir: Path, tmp_path: Path) -> None:
    pol = export(searched, tmp_path / "p.json", knee=True, runs_dir=runs_dir, track=False)
    assert pol.dense_key  # the policy names the dense model it was searched on
    models_before = sorted((runs_dir / "models").iterdir())
    res = subprocess.run([EXE, "apply", str(tmp_path / "p.json"), "--model", "digits_cnn", "--data", "digits",
                          "--runs", str(runs_dir), "-o", str(tmp_path / "x.pt"), "--device", "cpu"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert f"searched on dense model {pol.dense_key}" in res.stderr and "Traceback" not in res.stderr
    assert sorted((runs_dir / "models").iterdir()) == models_before  # refused before training a new one
    assert not (tmp_path / "x.pt").exists()


def test_apply_logs_the_model_to_the_studys_run_and_registers_it(searched: str, space_path: Path, runs_dir: Path,
                                                                   tmp_path: Path) -> None:
    import mlflow.pytorch
    from mlflow.tracking import MlflowClient

    from autoprune.tracking.logger import default_tracking_uri

    export(searched, tmp_path / "p.json", knee=True, runs_dir=runs_dir, track=False)
    res = subprocess.run([EXE, "apply", str(tmp_path / "p.json"), "--space", str(space_path), "--runs", str(runs_dir),
                          "-o", str(tmp_path / "p.pt"), "--torchscript", str(tmp_path / "p.ts"),
                          "--register", "digits-pruned"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"wrote {tmp_path / 'p.ts'}" in res.stdout and "dense tensors" in res.stdout  # says what it wrote
    line = next((x for x in res.stdout.splitlines() if x.startswith("MLflow: logged the pruned model")), res.stdout)
    assert "registered as digits-pruned version 1, alias @pruned" in line
    uri = default_tracking_uri(runs_dir)
    client = MlflowClient(uri)
    version = client.get_model_version_by_alias("digits-pruned", "pruned")
    mlflow.set_tracking_uri(uri)
    model = mlflow.pytorch.load_model("models:/digits-pruned@pruned")
    x = torch.zeros(2, 1, 8, 8)
    assert model(x).shape == (2, 10) and int(version.version) == 1  # any batch size
    parent = client.get_run(version.run_id)
    assert parent.data.tags["autoprune.role"] == "parent" and "applied_test_accuracy" in parent.data.metrics
