"""The level database: what one-shot pruning of each unit at any sparsity level needs, computed once per dense model.

For a row-wise criterion (Wanda) the scores of a unit come from the dense model's calibration activations and do
not depend on how much the other units are pruned, so each unit's pruned weights at every level are fixed by one
ordering per output row. The database keeps that ordering (int16 per weight), so a candidate of any allocation is
assembled by masking the dense weights: no calibration pass per candidate (EvoPress keeps the pruned weights of
every level instead, 100–200 GB for an 8 B model; an ordering is 2 bytes per weight and gives every level).
It is built on the same scores, in the same stable order, as :func:`~autoprune.pruning.masks.compute_mask`, so a
model assembled from it equals a directly pruned one bit for bit (tested). It also keeps each unit's block's
outlier ratio (OWL's statistic), computed from the same scores while they are in memory.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from autoprune.config.policy import Criterion, Policy
from autoprune.config.sampling import unit_group
from autoprune.models.layers import is_transposed, out_by_in, weight_of
from autoprune.pruning.criteria import CALIBRATION_WINDOWS, importance, row_wise
from autoprune.pruning.masks import FoldedMasks, row_mask, row_order
from autoprune.tasks.data import Split

__all__ = ["OWL_M", "LevelDatabase", "LevelStore", "load_or_build"]

OWL_M = 5.0  # OWL's outlier threshold: a score above M × its block's mean score is an outlier (the paper's M)


class LevelStore(ABC):
    """What one-shot pruning of every unit at its levels needs, computed once per dense model: a candidate is
    assembled from it by writing each unit's pruned weight (see :mod:`autoprune.pruning.assemble`)."""

    criterion: Criterion

    @abstractmethod
    def covers(self, ratios: dict[str, float]) -> bool:
        """Whether every unit at its ratio can be assembled from the store."""

    def select(self, policy: Policy, ratios: dict[str, float] | None = None) -> LevelStore | None:
        """The store that assembles ``policy`` (at ``ratios``, default its own) exactly as direct pruning would,
        or None. This one stores the dense model's calibration: a policy calibrated otherwise is not its."""
        ratios = policy.sparsity if ratios is None else ratios
        fits = policy.criterion == self.criterion and policy.calibration == "dense" and self.covers(ratios)
        return self if fits else None

    @abstractmethod
    def write(self, fqn: str, ratio: float, target: torch.Tensor, dense: torch.Tensor) -> None:
        """The unit's pruned weight at ``ratio`` into ``target`` in place (``dense``: its dense weight)."""

    @abstractmethod
    def prune_into(self, model: nn.Module, folded: FoldedMasks, ratios: dict[str, float]) -> None:
        """Prune a dense model whose masks are folded (a fine-tune follows) to ``ratios``."""


@dataclass
class LevelDatabase(LevelStore):
    """Per unit: the row-wise pruning order of its weights (and shape); per unit: its block's outlier ratio."""

    criterion: Criterion
    orders: dict[str, torch.Tensor]  # fqn -> (rows, columns) indices, lowest score first
    shapes: dict[str, list[int]]
    outliers: dict[str, float]  # fqn -> fraction of its block's scores above OWL_M × the block's mean
    transposed: list[str] = field(default_factory=list)  # units stored (in, out) (Conv1D): orders are of .t()

    @classmethod
    def build(cls, model: nn.Module, layers: list[str], criterion: Criterion, data: Split) -> LevelDatabase:
        """Score every unit once on the dense model (one calibration pass) and keep the orders."""
        if not row_wise(criterion):
            raise ValueError(f"the level database needs a row-wise criterion (wanda), not {criterion}")
        scores = importance(model, layers, criterion, data)
        transposed = [f for f in layers if is_transposed(model, f)]  # rows are outputs: order a Conv1D's .t()
        orders = {f: row_order(out_by_in(s, f in transposed)) for f, s in scores.items()}
        blocks: dict[str, list[torch.Tensor]] = {}
        for f, s in scores.items():
            blocks.setdefault(unit_group(f, "block"), []).append(s.flatten().double())
        ratio = {}
        for b, parts in blocks.items():
            flat = torch.cat(parts)
            ratio[b] = float((flat > OWL_M * flat.mean()).double().mean())
        return cls(criterion, orders, {f: list(weight_of(model, f).shape) for f in layers},
                   {f: ratio[unit_group(f, "block")] for f in layers}, transposed)

    def masks(self, ratios: dict[str, float]) -> dict[str, torch.Tensor]:
        """The mask of each unit at its ratio, assembled from the stored orders."""
        return {f: self._mask(f, r) for f, r in ratios.items()}

    def _mask(self, fqn: str, ratio: float) -> torch.Tensor:
        mask = row_mask(self.orders[fqn], ratio)
        if fqn in self.transposed:
            return out_by_in(mask, True).contiguous()
        return mask.view(self.shapes[fqn])

    def covers(self, ratios: dict[str, float]) -> bool:
        """Every ratio of a stored unit (an order gives every level)."""
        return all(f in self.orders for f in ratios)

    def write(self, fqn: str, ratio: float, target: torch.Tensor, dense: torch.Tensor) -> None:
        """``dense`` × the unit's mask at ``ratio``, into ``target`` (what the masked forward pass computes)."""
        torch.mul(dense, self._mask(fqn, ratio).to(dense.dtype), out=target)

    def prune_into(self, model: nn.Module, folded: FoldedMasks, ratios: dict[str, float]) -> None:
        """Set the folded masks from the stored orders."""
        for fqn, mask in self.masks(ratios).items():
            folded.masks[fqn].copy_(mask)
        folded.reapply()

    def save(self, path: Path) -> None:
        """Write atomically (weights-only loadable tensors and plain JSON metadata)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        meta = json.dumps({"criterion": self.criterion, "shapes": self.shapes, "outliers": self.outliers,
                           "transposed": self.transposed})
        torch.save({"meta": meta, "orders": self.orders}, tmp)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> LevelDatabase:
        """Read a database written by :meth:`save`."""
        blob = torch.load(path, map_location="cpu", weights_only=True)
        meta = json.loads(blob["meta"])
        return cls(meta["criterion"], blob["orders"], meta["shapes"], meta["outliers"], meta.get("transposed", []))


def load_or_build(folder: Path, dense_key: str, model: nn.Module, layers: list[str], criterion: Criterion,
                  data: Split) -> LevelDatabase:
    """The database of this dense model, layers, criterion and calibration data: from ``folder`` or built once."""
    blob = json.dumps([dense_key, layers, criterion, CALIBRATION_WINDOWS, data.x[:CALIBRATION_WINDOWS].tolist()])
    path = folder / f"levels-{hashlib.sha256(blob.encode()).hexdigest()[:16]}.pt"
    if path.exists():
        return LevelDatabase.load(path)
    db = LevelDatabase.build(model, layers, criterion, data)
    db.save(path)
    return db
