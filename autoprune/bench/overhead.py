"""Micro-measurements: the masked fine-tune loop against a plain PyTorch loop, and the budget projection."""

from __future__ import annotations

import copy
import statistics
import time

import numpy as np
import torch
from torch import nn

from autoprune.config.budget import project_to_budget
from autoprune.config.policy import Granularity
from autoprune.models.workspace import Workspace
from autoprune.models.zoo import weight_of
from autoprune.pruning.masks import apply_masks, compute_mask, folded_masks
from autoprune.tasks.training import train_epoch

__all__ = ["finetune_throughput", "projection_seconds"]


def _plain_epoch(model: nn.Module, ws: Workspace, opt: torch.optim.Optimizer, gen: torch.Generator) -> None:
    """The loop a user would write by hand: shuffle, forward, loss, backward, step."""
    data = ws.splits.train
    model.train()
    perm = torch.randperm(len(data), generator=gen)
    for start in range(0, len(data), 64):
        idx = perm[start:start + 64]
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(data.x[idx]), data.y[idx]).backward()
        opt.step()


def finetune_throughput(ws: Workspace, epochs: int = 3, repeats: int = 7) -> dict[str, float]:
    """Median seconds per epoch of the masked fine-tune loop vs the plain loop, same data and batches."""
    plain_model = copy.deepcopy(ws.model)
    masked_model = copy.deepcopy(ws.model)
    apply_masks(masked_model, {f: compute_mask(weight_of(masked_model, f).detach().abs(), 0.9,
                                               Granularity()) for f in ws.layers})
    plain_t, masked_t = [], []
    with folded_masks(masked_model) as folded:
        opt_p = torch.optim.Adam(plain_model.parameters(), lr=1e-4)
        opt_m = torch.optim.Adam(masked_model.parameters(), lr=1e-4)
        for r in range(repeats):  # interleaved, so machine noise hits both alike
            gen = torch.Generator().manual_seed(r)
            t0 = time.perf_counter()
            for _ in range(epochs):
                _plain_epoch(plain_model, ws, opt_p, gen)
            t1 = time.perf_counter()
            gen = torch.Generator().manual_seed(r)
            for _ in range(epochs):
                train_epoch(masked_model, ws.splits.train, opt_m, 64, gen, folded.reapply)
            t2 = time.perf_counter()
            plain_t.append((t1 - t0) / epochs)
            masked_t.append((t2 - t1) / epochs)
    p, m = statistics.median(plain_t), statistics.median(masked_t)
    return {"plain_epoch_s": p, "masked_epoch_s": m, "throughput_ratio": p / m}


def projection_seconds(ws: Workspace, n: int = 200) -> float:
    """Mean seconds of one budget projection over the workspace's layers (random preferences)."""
    rng = np.random.default_rng(0)
    prefs = [{f: float(rng.normal()) for f in ws.layers} for _ in range(n)]
    t0 = time.perf_counter()
    for p in prefs:
        project_to_budget(0.95, p, ws.sizes, ws.bounds)
    return (time.perf_counter() - t0) / n
