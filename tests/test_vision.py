"""The optional torchvision extra: run in its own venv (torch 2.14.1 + torchvision 0.29.1) by scripts/test.sh."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.vision


def test_torchvision_model_and_fakedata_search_space(tmp_path: Path) -> None:
    import torchvision  # noqa: F401  (the extra must be installed in this venv)

    from autoprune.config.policy import FineTune, Granularity, Policy
    from autoprune.config.space import SearchSpace
    from autoprune.pruning.evaluate import evaluate
    from autoprune.workspace import load_workspace
    from conftest import write_space

    space = SearchSpace.from_yaml(write_space(
        tmp_path / "v.yaml", model={"name": "torchvision:resnet18"},
        data={"name": "torchvision:FakeData", "kwargs": {"size": 120, "image_size": [3, 16, 16], "num_classes": 4}},
        train={"epochs": 1, "batch_size": 32}, layers={"exclude": ["conv1"]}))
    ws = load_workspace(space, "cpu", tmp_path / "runs")
    assert ws.splits.input_shape == (3, 16, 16) and ws.splits.num_classes == 4
    assert "layer1.0.conv1" in ws.layers
    pol = Policy(sparsity=dict.fromkeys(ws.layers, 0.5), finetune=FineTune(epochs=0.5, lr=1e-4, batch_size=32))
    ev = evaluate(ws.model, pol, ws.splits)
    assert abs(ev.size["sparsity"] - 0.5) < 1e-3
    ch = evaluate(ws.model, pol.model_copy(update={"granularity": Granularity(kind="channel")}), ws.splits)
    assert 0.3 < ch.size["sparsity"] < 0.7


def test_unknown_torchvision_names() -> None:
    from autoprune.errors import DataError, ModelError
    from autoprune.models.zoo import build_model
    from autoprune.tasks.data import load_data

    with pytest.raises(ModelError, match=r"torchvision\.models has no 'resnet7'"):
        build_model("torchvision:resnet7", (3, 16, 16), 4)
    with pytest.raises(DataError, match="files not found under"):
        load_data("torchvision:CIFAR10", {"root": "/nonexistent"})


def test_an_image_folder_is_read_lazily_up_to_the_stream_budget(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from autoprune.config.space import SearchSpace
    from autoprune.workspace import load_workspace
    from conftest import write_space

    rng = np.random.default_rng(0)
    for c, name in enumerate(("cat", "dog", "owl")):  # one sub-folder per class, images of any size
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i in range(40):
            pixels = np.clip(rng.normal(60 + 70 * c, 20, size=(20 + i % 5, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / "imgs" / name / f"{i}.png")
    space = SearchSpace.from_yaml(write_space(
        tmp_path / "f.yaml", model={"name": "digits_cnn", "kwargs": {"width": 8}},
        data={"name": "torchvision:ImageFolder", "kwargs": {"root": str(tmp_path / "imgs"), "image_size": 16},
              "stream": {"train": 60, "val": 10, "test": 10}},
        train={"epochs": 3}))
    ws = load_workspace(space, "cpu", tmp_path / "runs")
    assert ws.splits.input_shape == (3, 16, 16) and ws.splits.num_classes == 3
    assert (len(ws.splits.train), len(ws.splits.val), len(ws.splits.test)) == (60, 10, 10)  # the budget, not 120
    assert ws.dense_val["accuracy"] > 0.5  # the classes differ in brightness: learnable
