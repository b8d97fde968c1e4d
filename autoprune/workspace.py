"""Everything a command needs before pruning: data splits, the dense model (trained once, cached), layers."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from autoprune.config.events import ProgressSink
from autoprune.config.space import SearchSpace, TaskSpec
from autoprune.errors import PolicyError
from autoprune.models.layers import (
    RNN_TYPES,
    architecture_fingerprint,
    is_transposed,
    prunable_layers,
    unit_module,
    weight_of,
)
from autoprune.models.zoo import build_model
from autoprune.tasks import Task, make_task, task_class
from autoprune.tasks.data import Splits, load_data
from autoprune.tasks.training import fit, resolve_device

__all__ = ["DEFAULT_RUNS", "PreCheck", "Workspace", "dense_model", "load_workspace", "selected_layers"]

DEFAULT_RUNS = Path("runs")

# called with the space (budgets resolved), the untrained model and its selected layers before any training: checks
# that need the model's shape but not its weights (e.g. a study's fingerprint) fail in one line before minutes of work
PreCheck = Callable[[SearchSpace, nn.Module, list[str]], None]


def selected_layers(space: SearchSpace, model: nn.Module) -> list[str]:
    """The prunable layers ``space`` selects in ``model`` (patterns and bounds checked; errors name the field)."""
    candidates = list(prunable_layers(model))
    layers = space.select_layers(candidates)
    if space.granularity.kind == "channel" and candidates[-1] in layers:
        layers.remove(candidates[-1])  # removing output channels of the classifier would delete classes
    if space.granularity.kind == "channel":
        odd = [f for f in layers if isinstance(unit_module(model, f), RNN_TYPES) or is_transposed(model, f)]
        if odd:
            raise space.field_error("granularity", f"channel pruning removes Conv/Linear filters; {odd[0]} is "
                                    f"{type(unit_module(model, odd[0])).__name__} (exclude it in layers.exclude, "
                                    "or prune it unstructured / N:M)")
    space.bounds_for(layers)  # validates bounds patterns
    return layers


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
    task: Task  # how the model is fed and scored (autoprune.tasks)
    dense_key: str = ""  # which dense model exactly (see dense_model); recorded in every policy

    @functools.cached_property
    def bounds(self) -> dict[str, tuple[float, float]]:
        """Per-layer [min, max] ratio from the space file."""
        return self.space.bounds_for(self.layers)


def _cache_key(space: SearchSpace, splits: Splits, arch: str, seed: int) -> str:
    model = space.model.model_dump(exclude={"adapter"} if space.model.adapter is None else set())  # (earlier keys kept)
    parts = {"model": model, "train": space.train.model_dump(), "data": splits.fingerprint,
             "arch": arch, "seed": seed, "v": 1}
    if space.task != TaskSpec():  # (classification keeps the keys of models cached before tasks existed)
        parts["task"] = space.task.model_dump()
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def dense_model(space: SearchSpace, splits: Splits, runs_dir: Path, device: torch.device,
                seed: int = 0, expect_key: str | None = None, task: Task | None = None,
                progress: ProgressSink | None = None, precheck: PreCheck | None = None
                ) -> tuple[nn.Module, bool, str, list[str]]:
    """The dense baseline: from the checkpoint if given, else trained once and cached under runs/models/.

    Returns (model, cache hit, key, the space's selected layers): the key names this exact dense model (the
    checkpoint file's SHA-256, or the cache key of the training that made it). With ``expect_key`` (a policy's),
    another dense model is refused before any training; ``precheck`` runs on the untrained model first.
    """
    torch.manual_seed(seed)  # deterministic initial weights
    model = build_model(space.model.name, splits.input_shape, splits.num_classes, space.model.kwargs,
                        space.model.checkpoint, cache_dir=runs_dir / "models", adapter=space.model.adapter)
    pretrained = getattr(model, "source", "random") != "random"  # a pretrained language model: no training
    if space.model.checkpoint:
        key = "sha256:" + hashlib.sha256(Path(space.model.checkpoint).read_bytes()).hexdigest()[:16]
    elif pretrained:
        key = f"hf:{model.source}"
    else:
        key = _cache_key(space, splits, architecture_fingerprint(model), seed)
    layers = selected_layers(space, model)  # a bad layer or bounds pattern is reported before any training
    if expect_key and key != expect_key:
        raise PolicyError(f"the policy was searched on dense model {expect_key}, but {space.source or 'this model'}"
                          f" gives {key} (another checkpoint, training recipe, data or seed): apply with the "
                          f"search's space file (--space)")
    if precheck is not None:
        precheck(space, model, layers)
    if space.model.checkpoint or pretrained:
        return model.to(device), True, key, layers
    path = runs_dir / "models" / f"{space.model.name.replace(':', '_')}-{key}.pt"
    if path.exists():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.to(device), True, key, layers
    model.to(device)
    t = space.train
    loss_fn = task.loss if task is not None else nn.functional.cross_entropy
    if progress is not None:
        progress.start(t.epochs, f"dense model {space.model.name} (epochs, trained once, then cached)")
    fit(model, splits.to(device).train, t.epochs, t.lr, t.batch_size, seed, t.weight_decay, loss_fn=loss_fn,
        on_epoch=None if progress is None else lambda e, loss: progress.update(e + 1, {"loss": round(loss, 4)}))
    if progress is not None:
        progress.stop()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, tmp)
    tmp.replace(path)
    return model, False, key, layers


def load_workspace(space: SearchSpace, device: str = "auto", runs_dir: Path = DEFAULT_RUNS,
                   expect_dense: str | None = None, progress: ProgressSink | None = None,
                   precheck: PreCheck | None = None) -> Workspace:
    """Load data and the dense model for ``space`` and resolve the prunable layers (errors name the field).

    ``expect_dense``: a policy's dense-model key; another dense model is refused before any training.
    ``precheck``: see :data:`PreCheck`.
    """
    dev = resolve_device(device)
    d = space.data
    splits = load_data(d.name, d.kwargs, d.val_fraction, d.test_fraction, d.split_seed,
                       targets=task_class(space.task.kind).targets, stream=d.stream.model_dump(),
                       model_cache=runs_dir / "models", tokens=d.tokens, source=d.source)
    task = make_task(space.task.kind, splits, space.task.options)
    space = space.with_step_budgets(len(splits.train))  # steps → epochs of this train split
    model, hit, key, layers = dense_model(space, splits, runs_dir, dev, seed=space.seed, expect_key=expect_dense,
                                          task=task, progress=progress, precheck=precheck)
    splits = splits.to(dev)
    model.eval()
    sizes = {f: weight_of(model, f).numel() for f in layers}
    return Workspace(space=space, model=model, splits=splits, layers=layers, sizes=sizes,
                     fingerprint=architecture_fingerprint(model),
                     dense_val=task.metrics(model, splits.val), dense_test=task.metrics(model, splits.test),
                     cache_hit=hit, device=dev, runs_dir=runs_dir, dense_key=key, task=task)

