"""The SparseGPT level database: every unit's SparseGPT-pruned and -updated weights at every level, on disk.

SparseGPT's update of a unit depends only on that unit's weights, its inputs' Hessian (from the dense model's
calibration pass: one pass for every unit, see :mod:`autoprune.pruning.sparsegpt`) and its ratio. So a candidate
allocation whose ratios are all stored levels is the copy of each unit's stored weights: no calibration pass, no
OBS update per candidate (EvoPress's database, Sieberling et al. 2025). Levels are multiples of ``LEVEL_STEP`` up
to ``LEVEL_TOP``; level 0 is the dense weight and is not stored. Each unit is one ``.npy`` file (levels × rows ×
columns, float32, memory-mapped on load: only the levels a candidate reads are paged in); a unit's file is written
under a temporary name and renamed when complete, so a build that is killed resumes at the first missing unit.

Stored in float32, the model's dtype, not float16 as EvoPress does: a candidate then equals direct SparseGPT
pruning at those levels bit for bit (tested), at twice the disk (SmolLM2-135M: 106 M weights × 18 levels ×
4 bytes = 7.6 GB under ``runs/levels``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from autoprune.config.policy import Criterion, Policy
from autoprune.models.layers import is_transposed, out_by_in, weight_of
from autoprune.pruning.criteria import CALIBRATION_WINDOWS, activation_problem
from autoprune.pruning.levels import LevelStore
from autoprune.pruning.masks import FoldedMasks
from autoprune.pruning.sparsegpt import (
    BLOCK,
    DAMP,
    calibration_groups,
    group_end,
    input_grams,
    prepare_unit,
    prune_prepared,
)
from autoprune.tasks.data import Split

__all__ = ["LEVEL_STEP", "LEVEL_TOP", "SequentialLevels", "SparseGPTLevels", "level_grid", "load_or_build_sparsegpt"]

LEVEL_STEP = 0.05  # the ratio between consecutive stored levels
LEVEL_TOP = 0.9  # the highest stored level
Progress = Callable[[int, int], None]  # (units done, units in all)


def level_grid(step: float = LEVEL_STEP, top: float = LEVEL_TOP) -> list[float]:
    """The stored ratios: step, 2·step, … up to ``top`` (level 0, the dense weight, is not stored)."""
    return [round(k * step, 10) for k in range(1, math.floor(top / step + 1e-9) + 1)]


def _file_name(fqn: str) -> str:
    """A unit's file (fully qualified names are safe file names: letters, digits, dots, underscores)."""
    return f"{fqn}.npy"


class SparseGPTLevels(LevelStore):
    """A built database: the folder of per-unit level files, memory-mapped when first read."""

    criterion: Criterion = "sparsegpt"

    def __init__(self, folder: Path, levels: list[float], shapes: dict[str, list[int]],
                 reference: float | None = None) -> None:
        self.folder, self.levels, self.shapes = folder, list(levels), shapes
        self.reference = reference  # None: dense calibration; else sequential at this uniform reference
        self.step = levels[0]
        self._maps: dict[str, np.ndarray] = {}

    def index(self, ratio: float) -> int | None:
        """The stored level of ``ratio`` (−1: ratio 0, the dense weight), None when it is not a stored level."""
        k = round(ratio / self.step)
        if abs(k * self.step - ratio) > 1e-9 or k > len(self.levels) or k < 0:
            return None
        return k - 1

    def covers(self, ratios: dict[str, float]) -> bool:
        """Whether every unit is in the database and every ratio a stored level."""
        return all(f in self.shapes and self.index(r) is not None for f, r in ratios.items())

    def weight(self, fqn: str, ratio: float) -> torch.Tensor:
        """The unit's stored weight at ``ratio`` (a view on the copy-on-write memory map: writing it never
        reaches the file; ratio 0 is not stored)."""
        k = self.index(ratio)
        if k is None or k < 0:
            raise KeyError(f"{fqn}: ratio {ratio} is not a stored level")
        if fqn not in self._maps:
            self._maps[fqn] = np.load(self.folder / _file_name(fqn), mmap_mode="c")  # copy-on-write: never written back
        return torch.from_numpy(np.asarray(self._maps[fqn][k]))

    def write(self, fqn: str, ratio: float, target: torch.Tensor, dense: torch.Tensor) -> None:
        """The unit's weight at ``ratio`` copied into ``target`` in place (``dense`` at ratio 0)."""
        target.copy_(dense if ratio == 0 else self.weight(fqn, ratio))

    def prune_into(self, model: nn.Module, folded: FoldedMasks, ratios: dict[str, float]) -> None:
        """Set a dense, folded model's weights to the stored levels; each mask keeps the nonzero weights (a weight
        SparseGPT zeroed because its input never fires on the calibration data stays at zero in a fine-tune)."""
        with torch.no_grad():
            for fqn, ratio in ratios.items():
                w = weight_of(model, fqn)
                self.write(fqn, ratio, w, w)  # the model is still dense: w is its own dense weight
                folded.masks[fqn].copy_((w != 0).to(folded.masks[fqn].dtype))
        folded.reapply()

    def select(self, policy: Policy, ratios: dict[str, float] | None = None) -> LevelStore | None:
        """This store for a policy of its calibration (dense, or sequential at its reference) and levels."""
        if self.reference is None:
            return super().select(policy, ratios)
        ratios = policy.sparsity if ratios is None else ratios
        fits = (policy.criterion == self.criterion and policy.calibration == "sequential"
                and policy.calibration_reference is not None and abs(policy.calibration_reference - self.reference)
                < 1e-9 and self.covers(ratios))
        return self if fits else None

    def missing(self) -> list[str]:
        """The units whose file is not complete yet."""
        return [f for f in self.shapes if not (self.folder / _file_name(f)).exists()]


class SequentialLevels(LevelStore):
    """Sequentially calibrated databases, one per reference (the targets of a search): a policy is assembled from
    the one built at its ``calibration_reference``."""

    criterion: Criterion = "sparsegpt"

    def __init__(self, stores: list[SparseGPTLevels]) -> None:
        self.stores = {round(s.reference or 0.0, 9): s for s in stores}

    def _of(self, policy: Policy) -> SparseGPTLevels | None:
        ref = policy.calibration_reference
        return None if ref is None else self.stores.get(round(ref, 9))

    def covers(self, ratios: dict[str, float]) -> bool:
        """Whether some reference's database holds every unit at its ratio (they share one level grid)."""
        return any(s.covers(ratios) for s in self.stores.values())

    def select(self, policy: Policy, ratios: dict[str, float] | None = None) -> LevelStore | None:
        """The database of the policy's reference, when it assembles the policy."""
        store = self._of(policy)
        return None if store is None else store.select(policy, ratios)

    def write(self, fqn: str, ratio: float, target: torch.Tensor, dense: torch.Tensor) -> None:
        """Not one store's weights: :meth:`select` the policy's database first."""
        raise TypeError("a SequentialLevels store writes through the database select() returns")

    def prune_into(self, model: nn.Module, folded: FoldedMasks, ratios: dict[str, float]) -> None:
        """Not one store's weights: :meth:`select` the policy's database first."""
        raise TypeError("a SequentialLevels store prunes through the database select() returns")


def _write_unit(db: SparseGPTLevels, model: nn.Module, fqn: str, gram: torch.Tensor) -> None:
    """Compute one unit's levels from its inputs' Hessian and write its file atomically."""
    dense, transposed = weight_of(model, fqn), is_transposed(model, fqn)  # SparseGPT reads (out, in)
    w, hinv = prepare_unit(out_by_in(dense, transposed), gram)
    tmp = db.folder / f"{fqn}.tmp.npy"
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(db.levels), *dense.shape))
    for k, ratio in enumerate(db.levels):
        out[k] = out_by_in(prune_prepared(w, hinv, ratio)[0], transposed).numpy()
    out.flush()
    del out
    os.replace(tmp, db.folder / _file_name(fqn))  # complete, or absent: a killed build redoes this unit


@torch.no_grad()
def build_units(db: SparseGPTLevels, model: nn.Module, calibration: torch.Tensor,
                progress: Progress | None = None, reference: float | None = None) -> None:
    """Compute and write every missing unit of ``db``: from one calibration pass of the dense model, or with a
    ``reference`` block by block, each block's Hessians from the model whose earlier blocks are set to their
    stored level at ``reference`` (a working copy: ``model`` stays dense; a resumed build re-sets the finished
    blocks from their files)."""
    todo = db.missing()
    done = len(db.shapes) - len(todo)
    if not todo:
        return
    if reference is None:
        groups, work = [todo], model
    else:
        groups, work = calibration_groups(model, list(db.shapes), sequential=True), copy.deepcopy(model)
    for group in groups:
        missing = [f for f in group if f in todo]
        end = group_end(work, group) if reference is not None else None  # the blocks after it are not needed
        grams = input_grams(work, missing, calibration, stop_after=end) if missing else {}
        for fqn in missing:
            _write_unit(db, work, fqn, grams.pop(fqn))
            done += 1
            if progress is not None:
                progress(done, len(db.shapes))
        if reference is not None:
            for fqn in group:  # the next block's inputs: this block pruned at the reference
                w = weight_of(work, fqn)
                db.write(fqn, reference, w, w)


def load_or_build_sparsegpt(folder: Path, dense_key: str, model: nn.Module, layers: list[str], data: Split,
                            levels: list[float] | None = None, progress: Progress | None = None,
                            reference: float | None = None) -> SparseGPTLevels:
    """The database of this dense model, layers, calibration data and levels under ``folder``: opened, completed
    where a build was interrupted, or built (the first calibration windows of the train split, as Wanda's).
    ``reference``: built with sequential calibration at that reference (see :func:`build_units`; a stored level)."""
    levels = levels or level_grid()
    problem = activation_problem(model, layers, "sparsegpt")
    if problem:
        raise ValueError(problem)
    if reference is not None and not any(abs(r - reference) < 1e-9 for r in levels):
        raise ValueError(f"a sequential level database's reference {reference} must be a stored level "
                         f"(multiples of {levels[0]} up to {levels[-1]})")
    calibration = data.x[:CALIBRATION_WINDOWS]
    key: list[object] = [dense_key, layers, "sparsegpt", BLOCK, DAMP, levels, calibration.tolist()]
    if reference is not None:  # (dense databases keep their names)
        key.append(["sequential", reference])
    blob = json.dumps(key)
    prefix = "sparsegpt" if reference is None else f"sparsegpt-seq{round(reference * 100)}"
    path = folder / f"{prefix}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"
    path.mkdir(parents=True, exist_ok=True)
    shapes = {f: list(weight_of(model, f).shape) for f in layers}
    meta = path / "meta.json"
    if not meta.exists():
        tmp = path / "meta.json.tmp"
        tmp.write_text(json.dumps({"levels": levels, "shapes": shapes, "dense_key": dense_key,
                                   "reference": reference}))
        os.replace(tmp, meta)
    db = SparseGPTLevels(path, levels, shapes, reference)
    build_units(db, model, calibration, progress, reference)
    return db
