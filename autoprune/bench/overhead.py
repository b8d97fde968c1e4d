"""Micro-measurements: the masked fine-tune loop against a plain PyTorch loop, and the budget projection."""

from __future__ import annotations

import copy
import statistics
import time

import numpy as np
import torch
from torch import nn

from autoprune.bench.methods import base_policy
from autoprune.config.budget import project_to_budget
from autoprune.config.policy import Granularity, Policy
from autoprune.config.sampling import calibration_of, on_levels
from autoprune.models.layers import weight_of
from autoprune.pruning.assemble import LevelAssembler
from autoprune.pruning.evaluate import DenseReference
from autoprune.pruning.masks import apply_masks, compute_mask, folded_masks
from autoprune.study.evolution import mutate, mutate_levels
from autoprune.study.setup import Prepared
from autoprune.tasks.training import predict, train_epoch
from autoprune.workspace import Workspace

__all__ = ["finetune_throughput", "projection_seconds", "screening_cost", "screening_rows"]


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


def screening_cost(prep: Prepared, tokens: int, target: float, repeats: int = 5) -> dict[str, float]:
    """Median seconds of screening one candidate on ``tokens`` calibration tokens (assembled in place from the level
    store of the space's first criterion, then the divergence to the dense outputs) against a plain forward pass
    of those tokens through the dense model, interleaved. Twice: alternating two random allocations at ``target``
    (every unit rewritten: the worst case), and alternating an allocation with its evolutionary child (3 level
    moves: what consecutive candidates of an evolution search differ by)."""
    ws, criterion = prep.ws, ws_criterion(prep)
    reference = DenseReference.of(ws.model, ws.splits, task=ws.task, tokens=tokens)
    n = reference.examples_for(tokens)
    assembler = LevelAssembler(ws.model, prep.stores)
    rng = np.random.default_rng(0)
    policies = []
    for _ in range(2):
        ratios = project_to_budget(target, {f: float(rng.normal(0, 0.3)) for f in ws.layers}, ws.sizes, ws.bounds)
        if prep.ctx.levels is not None:
            ratios = on_levels(ratios, prep.ctx)
        policies.append(heuristic_like(prep, criterion, ratios))
    parent = policies[0].sparsity
    if prep.ctx.levels is not None:
        child = mutate_levels(parent, ws.sizes, ws.bounds, prep.ctx.levels, rng, 3)
    else:
        child = mutate(parent, ws.sizes, ws.bounds, rng, 3)
    pairs = {"all": policies, "moves": [policies[0], heuristic_like(prep, criterion, child)]}
    plain: list[float] = []
    screen: dict[str, list[float]] = {k: [] for k in pairs}
    for r in range(repeats):
        for kind, pair in pairs.items():
            t0 = time.perf_counter()
            with torch.no_grad():
                predict(ws.model, reference.inputs[:n])
            t1 = time.perf_counter()
            assembler.evaluate(pair[r % 2], ws.splits, ws.task, reference, tokens)
            plain.append(t1 - t0)
            screen[kind].append(time.perf_counter() - t1)
    p = statistics.median(plain)
    out = {"screen_tokens": float(tokens), "plain_forward_s": p}
    for kind, times in screen.items():
        out[f"screen_{kind}_s"] = statistics.median(times)
        out[f"screen_{kind}_ratio"] = out[f"screen_{kind}_s"] / p
    return out


def ws_criterion(prep: Prepared) -> str:
    """The criterion a candidate of the space is pruned with first (the store screening is timed on)."""
    return next(c for c in prep.ws.space.criteria if c in prep.stores)


def heuristic_like(prep: Prepared, criterion: str, ratios: dict[str, float]) -> Policy:
    """A one-shot, no-fine-tune policy of ``ratios`` pruned with ``criterion``, calibrated as the space's candidates
    are (a sequential space's policy names the level database it is screened on)."""
    base = base_policy(prep, criterion)
    return base.model_copy(update={"sparsity": ratios, **calibration_of(prep.ws.space, criterion, ratios, prep.ctx),
                                   "finetune": base.finetune.model_copy(update={"epochs": 0.0})})


def screening_rows(o: dict[str, float]) -> list[dict[str, object]]:
    """The screening cost table: a candidate on the first token rung against a plain forward of those tokens."""
    tokens = int(o["screen_tokens"])
    return [{"part": f"plain forward pass of {tokens} tokens (dense model)", "seconds": o["plain_forward_s"],
             "× plain forward": 1.0},
            {"part": f"a candidate screened at {tokens} tokens, 3 level moves from the last (an evolution child)",
             "seconds": o["screen_moves_s"], "× plain forward": o["screen_moves_ratio"]},
            {"part": f"a candidate screened at {tokens} tokens, every unit rewritten (worst case)",
             "seconds": o["screen_all_s"], "× plain forward": o["screen_all_ratio"]}]
