"""Model and data registries, user factories, checkpoints, the cached dense baseline, bad input."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from autoprune.config.space import SearchSpace
from autoprune.errors import DataError, ModelError
from autoprune.models.layers import architecture_fingerprint, prunable_layers
from autoprune.models.zoo import BUILTIN, build_model
from autoprune.tasks.data import load_data
from autoprune.workspace import load_workspace
from conftest import write_space

sys.path.insert(0, str(Path(__file__).parent))


@pytest.mark.parametrize("name", sorted(set(BUILTIN) - {"tiny_lm"}))
def test_builtin_models_run_on_digits_shape(name: str) -> None:
    shape = (3, 16, 16) if name.startswith(("resnet", "vgg")) else (1, 8, 8)
    m = build_model(name, shape, 10)
    assert m(torch.zeros(2, *shape)).shape == (2, 10)
    assert len(prunable_layers(m)) >= 3


def test_tiny_lm_maps_tokens_to_next_token_logits_causally() -> None:
    m = build_model("tiny_lm", (16,), 256, {"d_model": 16, "layers": 2, "heads": 2}).eval()
    tokens = torch.randint(0, 256, (3, 16))
    out = m(tokens)
    assert out.shape == (3, 16, 256)
    names = list(prunable_layers(m))
    assert {"blocks.0.attn.q", "blocks.0.attn.o", "blocks.1.up", "blocks.1.down", "lm_head"} <= set(names)
    changed = tokens.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 256  # the future must not change the past's predictions
    with torch.no_grad():
        assert torch.allclose(m(changed)[:, :10], out[:, :10].detach(), atol=1e-5)


def test_resnet20_has_residual_structure() -> None:
    m = build_model("resnet20", (3, 16, 16), 10)
    names = list(prunable_layers(m))
    assert "layer1.0.conv1" in names and "layer2.0.shortcut.0" in names
    assert len([n for n in names if n.endswith(("conv1", "conv2"))]) == 19


@pytest.mark.parametrize("name,classes,shape", [("digits", 10, (1, 8, 8)), ("breast_cancer", 2, (30,)),
                                                ("wine", 3, (13,))])
def test_bundled_datasets_split_deterministically(name: str, classes: int, shape: tuple[int, ...]) -> None:
    a, b = load_data(name), load_data(name)
    assert a.num_classes == classes and a.input_shape == shape
    assert torch.equal(a.test.y, b.test.y) and a.fingerprint == b.fingerprint
    n = len(a.train) + len(a.val) + len(a.test)
    assert len(a.test) == round(n * 0.15) and len(a.val) == round(n * 0.15)


def test_npz_and_user_callable_datasets(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(100, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    s = load_data(str(tmp_path / "d.npz"))
    assert s.num_classes == 2 and s.input_shape == (5,)
    u = load_data("userpkg.factories:blobs", {"n": 200})
    assert len(u.train) + len(u.val) + len(u.test) == 200


def test_user_model_and_checkpoint(tmp_path: Path) -> None:
    m = build_model("userpkg.factories:tiny_net", (13,), 3, {"hidden": 8})
    torch.save(m.state_dict(), tmp_path / "ok.pt")
    m2 = build_model("userpkg.factories:tiny_net", (13,), 3, {"hidden": 8}, str(tmp_path / "ok.pt"))
    assert torch.equal(m2[0].weight, m[0].weight)
    torch.save(build_model("userpkg.factories:tiny_net", (13,), 3, {"hidden": 9}).state_dict(), tmp_path / "bad.pt")
    with pytest.raises(ModelError, match=r"does not match the model \(shape mismatch: 0.bias, 0.weight"):
        build_model("userpkg.factories:tiny_net", (13,), 3, {"hidden": 8}, str(tmp_path / "bad.pt"))


@pytest.mark.parametrize("ref,match", [
    ("nosuchmodel", "unknown model 'nosuchmodel'"),
    ("nosuch.module:fn", "cannot import module 'nosuch.module'"),
    ("userpkg.factories:nope", "has no callable 'nope'"),
    ("userpkg.factories:not_a_model", "not a torch nn.Module"),
])
def test_bad_models(ref: str, match: str) -> None:
    with pytest.raises(ModelError, match=match):
        build_model(ref, (13,), 3)


def test_bad_datasets(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown dataset 'mnistt'"):
        load_data("mnistt")
    with pytest.raises(DataError, match="not found"):
        load_data(str(tmp_path / "missing.npz"))


def test_torchvision_dataset_gives_clear_error_when_unavailable(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"torchvision:CIFAR10.*pip install 'autoprune\[vision\]'"):
        load_data("torchvision:CIFAR10", {"root": str(tmp_path)})


def test_dense_model_is_trained_once_and_cached(tmp_path: Path) -> None:
    space = SearchSpace.from_yaml(write_space(tmp_path / "s.yaml", train={"epochs": 1}))
    first = load_workspace(space, "cpu", tmp_path / "runs")
    second = load_workspace(space, "cpu", tmp_path / "runs")
    assert not first.cache_hit and second.cache_hit
    assert all(torch.equal(a, b) for a, b in zip(first.model.state_dict().values(),
                                                 second.model.state_dict().values(), strict=True))
    assert len(list((tmp_path / "runs" / "models").glob("*.pt"))) == 1
    assert first.fingerprint == architecture_fingerprint(second.model)
