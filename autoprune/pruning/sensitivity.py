"""Per-layer sensitivity: the task's primary validation metric when only one layer is pruned, at a grid of ratios.

No fine-tuning (that is what makes it fast); BatchNorm statistics are recalibrated on a few training
batches after each prune. Results are cached on disk keyed by weights + data + criterion + grid, and
written as CSV and a PNG with one curve per layer.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from autoprune.config.policy import Criterion, Granularity
from autoprune.models.layers import is_transposed, weight_of
from autoprune.pruning.channels import group_keep, groups_for, member_masks
from autoprune.pruning.criteria import importance
from autoprune.pruning.masks import apply_masks, make_permanent, oriented_mask
from autoprune.tasks import ClassificationTask, Task
from autoprune.tasks.data import Splits
from autoprune.tasks.training import recalibrate_bn

__all__ = ["SensitivityCurves", "cache_key", "load_or_scan", "plot", "prune_channel_group", "scan", "write_csv"]


@dataclass(frozen=True)
class SensitivityCurves:
    """The task's primary validation metric (``metric``, signed so that higher is better) with one layer pruned:
    ``scores[fqn][i]`` at ``ratios[i]``; ``dense_score`` with none."""

    ratios: list[float]
    scores: dict[str, list[float]]
    dense_score: float
    criterion: str
    granularity: str
    metric: str = "accuracy"

    @classmethod
    def from_json(cls, text: str) -> SensitivityCurves:
        """Read a cached scan (one written before the fields were named for any metric, too)."""
        data = json.loads(text)
        renamed = {"accuracy": "scores", "dense_accuracy": "dense_score"}
        return cls(**{renamed.get(k, k): v for k, v in data.items()})

    def tolerated_ratio(self, fqn: str, max_drop: float = 0.02) -> float:
        """Largest grid ratio whose score stays within ``max_drop`` of dense (0 if none)."""
        ok = [r for r, a in zip(self.ratios, self.scores[fqn], strict=True) if a >= self.dense_score - max_drop]
        return max(ok, default=0.0)

    def preferences(self, max_drop: float = 0.02) -> dict[str, float]:
        """Log-density preferences for the budget projection: robust layers get pruned more."""
        return {f: math.log(max(1.0 - self.tolerated_ratio(f, max_drop), 0.01)) for f in self.scores}

    def to_json(self) -> str:
        """Serialise for the cache."""
        return json.dumps(asdict(self), indent=1)


def cache_key(model: nn.Module, splits: Splits, layers: list[str], criterion: str, granularity: Granularity,
              ratios: list[float], bn_batches: int) -> str:
    """Hash of the weights, data, layers and scan settings."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    h.update(json.dumps([splits.fingerprint, layers, criterion, granularity.model_dump(), ratios, bn_batches]).encode())
    if granularity.kind == "channel":
        h.update(b"coupled-groups")  # channel curves are made by the search's own group masks (earlier: per layer)
    return h.hexdigest()[:16]


@torch.no_grad()
def prune_channel_group(model: nn.Module, fqn: str, ratio: float, layers: list[str],
                        scores: dict[str, torch.Tensor], input_shape: tuple[int, ...]) -> None:
    """In place: remove ``ratio`` of the channels of the coupled group holding ``fqn``, exactly as the search and
    ``apply`` do (the same group, channel choice and member masks: convs, norms, biases), so a sensitivity curve
    describes the pruning that is searched. Every root of the group gets ``ratio``: in a residual stage one
    layer's channels cannot go alone."""
    group = next(g for g in groups_for(model, layers, input_shape) if fqn in g.roots)
    sizes = {f: weight_of(model, f).numel() for f in group.roots}
    keep = group_keep(group, dict.fromkeys(group.roots, ratio), scores, sizes)
    for param, mask in member_masks(model, group, keep).items():
        model.get_parameter(param).mul_(mask)


def scan(model: nn.Module, splits: Splits, layers: list[str], ratios: list[float], criterion: Criterion,
         granularity: Granularity, bn_batches: int = 4, seed: int = 0,
         advance: Callable[[], None] | None = None, task: Task | None = None) -> SensitivityCurves:
    """Prune each layer alone at each ratio (no fine-tune) and record the task's primary validation metric,
    signed so that higher is better (accuracy as is; −MSE for regression)."""
    task = task or ClassificationTask(splits)

    def measure(m: nn.Module) -> float:
        return task.sign * task.score(task.metrics(m, splits.val))

    dense = measure(model)
    importances = importance(model, layers, criterion, splits.train, seed=seed, loss_fn=task.loss)
    got: dict[str, list[float]] = {}
    for fqn in layers:
        got[fqn] = []
        for r in ratios:
            m = copy.deepcopy(model)
            if granularity.kind == "channel":
                prune_channel_group(m, fqn, r, layers, importances, splits.input_shape)
            else:
                apply_masks(m, {fqn: oriented_mask(importances[fqn], r, granularity, False, is_transposed(m, fqn))})
                make_permanent(m)
            recalibrate_bn(m, splits.train, bn_batches, 64, seed)
            got[fqn].append(measure(m))
            if advance is not None:
                advance()
    return SensitivityCurves(list(ratios), got, dense, criterion, granularity.label, task.primary)


def load_or_scan(cache_dir: Path, model: nn.Module, splits: Splits, layers: list[str], ratios: list[float],
                 criterion: Criterion, granularity: Granularity, bn_batches: int = 4,
                 advance: Callable[[], None] | None = None, task: Task | None = None
                 ) -> tuple[SensitivityCurves, Path, bool]:
    """Cached scan: returns (curves, json path, whether it came from the cache)."""
    key = cache_key(model, splits, layers, criterion, granularity, ratios, bn_batches)
    if task is not None and task.kind != "classification":  # (classification keeps its earlier cache keys)
        key = hashlib.sha256(f"{key}:{task.kind}:{task.primary}".encode()).hexdigest()[:16]
    path = cache_dir / f"sensitivity-{key}.json"
    if path.exists():
        return SensitivityCurves.from_json(path.read_text()), path, True
    curves = scan(model, splits, layers, ratios, criterion, granularity, bn_batches, advance=advance, task=task)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(curves.to_json())
    write_csv(curves, path.with_suffix(".csv"))
    plot(curves, path.with_suffix(".png"))
    return curves, path, False


def write_csv(curves: SensitivityCurves, path: Path) -> None:
    """One row per (layer, ratio)."""
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["layer", "ratio", f"val_{curves.metric}", f"dense_{curves.metric}"])
        for fqn, values in curves.scores.items():
            for r, a in zip(curves.ratios, values, strict=True):
                w.writerow([fqn, r, f"{a:.6f}", f"{curves.dense_score:.6f}"])


def plot(curves: SensitivityCurves, path: Path) -> None:
    """Matplotlib PNG: one score-vs-ratio curve per layer, the dense model's dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for fqn, values in curves.scores.items():
        ax.plot(curves.ratios, values, marker="o", ms=3, label=fqn)
    ax.axhline(curves.dense_score, ls="--", c="grey", lw=1, label="dense")
    ax.set_xlabel("ratio of this layer pruned (others dense)")
    ax.set_ylabel(f"validation {curves.metric} (no fine-tune; higher is better)")
    ax.set_title(f"Layer sensitivity · {curves.criterion} · {curves.granularity}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(curves.scores) > 8 else 1, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
