"""Everything a command needs before pruning: data splits, the dense model (trained once, cached), layers."""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from autoprune.data import Splits, load_data
from autoprune.models import architecture_fingerprint, build_model, prunable_layers, weight_of
from autoprune.space import SearchSpace
from autoprune.training import classification_metrics, fit, resolve_device

DEFAULT_RUNS = Path("runs")


@dataclass(frozen=True)
class Workspace:
    """A loaded search space: dense model on its device, data splits, and the selected prunable layers."""

    space: SearchSpace
    model: nn.Module
    splits: Splits
    layers: list[str]  # selected prunable FQNs, in module order
    sizes: dict[str, int]  # fqn -> weight count
    fingerprint: str  # architecture fingerprint
    dense_val: dict[str, float]
    dense_test: dict[str, float]
    cache_hit: bool
    device: torch.device
    runs_dir: Path

    @functools.cached_property
    def bounds(self) -> dict[str, tuple[float, float]]:
        """Per-layer [min, max] ratio from the space file."""
        return self.space.bounds_for(self.layers)


def _cache_key(space: SearchSpace, splits: Splits, arch: str, seed: int) -> str:
    blob = json.dumps({"model": space.model.model_dump(), "train": space.train.model_dump(),
                       "data": splits.fingerprint, "arch": arch, "seed": seed, "v": 1}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def dense_model(space: SearchSpace, splits: Splits, runs_dir: Path, device: torch.device,
                seed: int = 0) -> tuple[nn.Module, bool]:
    """The dense baseline: from the checkpoint if given, else trained once and cached under runs/models/."""
    torch.manual_seed(seed)  # deterministic initial weights
    model = build_model(space.model.name, splits.input_shape, splits.num_classes, space.model.kwargs,
                        space.model.checkpoint)
    if space.model.checkpoint:
        return model.to(device), True
    key = _cache_key(space, splits, architecture_fingerprint(model), seed)
    path = runs_dir / "models" / f"{space.model.name.replace(':', '_')}-{key}.pt"
    if path.exists():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.to(device), True
    model.to(device)
    t = space.train
    fit(model, splits.to(device).train, t.epochs, t.lr, t.batch_size, seed, t.weight_decay)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, tmp)
    tmp.replace(path)
    return model, False


def load_workspace(space: SearchSpace, device: str = "auto", runs_dir: Path = DEFAULT_RUNS) -> Workspace:
    """Load data and the dense model for ``space`` and resolve the prunable layers (errors name the field)."""
    dev = resolve_device(device)
    d = space.data
    splits = load_data(d.name, d.kwargs, d.val_fraction, d.test_fraction, d.split_seed)
    model, hit = dense_model(space, splits, runs_dir, dev, seed=space.seed)
    splits = splits.to(dev)
    model.eval()
    candidates = list(prunable_layers(model))
    layers = space.select_layers(candidates)
    if space.granularity.kind == "channel" and candidates[-1] in layers:
        layers.remove(candidates[-1])  # removing output channels of the classifier would delete classes
    space.bounds_for(layers)  # validates bounds patterns early
    sizes = {f: weight_of(model, f).numel() for f in layers}
    return Workspace(space=space, model=model, splits=splits, layers=layers, sizes=sizes,
                     fingerprint=architecture_fingerprint(model),
                     dense_val=classification_metrics(model, splits.val, splits.num_classes),
                     dense_test=classification_metrics(model, splits.test, splits.num_classes),
                     cache_hit=hit, device=dev, runs_dir=runs_dir)

