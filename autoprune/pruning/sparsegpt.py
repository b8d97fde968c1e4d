"""SparseGPT (Frantar & Alistarh, ICML 2023): prune a Linear layer and update its remaining weights so that its
outputs on calibration inputs change as little as possible (Optimal Brain Surgeon, one input column at a time,
with the inverse of the layer's least-squares Hessian H = 2XᵀX/n).

Written here (~100 lines, following the paper's Algorithm 1 and its reference code's block-wise mask selection)
because no maintained library applies it to any PyTorch Linear on a CPU: the reference code is research scripts
tied to its model loaders, and llm-compressor's modifier needs its own model pipeline. Two simplifications, both
stated where a user reads them: every layer's inputs are the *dense* model's (one calibration pass for all
layers; the paper feeds each block the already-pruned blocks' outputs: ``calibration: sequential`` in a policy does
that, one calibration pass per decoder block), and each block of 128 columns prunes an exact share of the layer's
target, so every layer's sparsity is exact (the paper thresholds each block).
"""

from __future__ import annotations

import torch
from torch import nn

from autoprune.config.policy import Granularity
from autoprune.config.sampling import unit_group
from autoprune.models.layers import is_transposed, out_by_in, weight_of
from autoprune.pruning.criteria import CALIBRATION_WINDOWS, Criterion, input_sums, register_criterion
from autoprune.tasks.data import Split
from autoprune.tasks.training import LossFn

__all__ = ["BLOCK", "DAMP", "SparseGPT", "calibration_groups", "group_end", "input_grams", "prepare_unit",
           "prune_model", "prune_prepared", "sparsegpt_prune"]

BLOCK = 128  # columns whose mask is chosen together (lazy batch updates)
DAMP = 0.01  # dampening added to H's diagonal, as a fraction of its mean (keeps the Cholesky factorisation stable)


@register_criterion("sparsegpt")
class SparseGPT(Criterion):
    """SparseGPT: a pruner, not only a score (``updates_weights``: ``prune_step`` runs :func:`sparsegpt_prune`).
    As a score (sensitivity scans) it is the OBS saliency w²/[H⁻¹]²_jj from the calibration inputs' Hessian."""

    activations = True
    updates_weights = True

    def scores(self, model: nn.Module, layers: list[str], data: Split | None, *, seed: int = 0,
               loss_fn: LossFn = nn.functional.cross_entropy) -> dict[str, torch.Tensor]:
        """w²/[H⁻¹]²_jj of every weight (read as out × in, returned in the weight's own layout)."""
        assert data is not None
        grams = input_grams(model, layers, data.x[:CALIBRATION_WINDOWS])
        out = {}
        for f in layers:
            transposed = is_transposed(model, f)
            w, hinv = prepare_unit(out_by_in(weight_of(model, f), transposed), grams.pop(f))
            inverse = hinv.t() @ hinv  # H⁻¹ from its upper Cholesky factor
            out[f] = out_by_in(w.pow(2) / torch.diag(inverse).pow(2)[None, :], transposed)
        return out


def input_grams(model: nn.Module, layers: list[str], inputs: torch.Tensor, batch_size: int = 8,
                stop_after: str | None = None) -> dict[str, torch.Tensor]:
    """H = 2·XᵀX / n of each Linear's inputs X (n tokens × in_features) over every token of ``inputs``
    (``stop_after``: the module that ends each forward pass, see :func:`input_sums`)."""
    sums, rows = input_sums(model, layers, inputs, lambda x: x.float().T @ x.float(), batch_size, stop_after)
    return {f: (2.0 * sums[f] / max(rows[f], 1)).float() for f in layers}


def calibration_groups(model: nn.Module, units: list[str], sequential: bool) -> list[list[str]]:
    """The units pruned together from one calibration pass, in the model's order: all of them (dense inputs), or
    one decoder block after another (sequential; a unit outside a numbered block is its own group)."""
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    ordered = sorted(units, key=lambda f: order.get(f, order.get(f.rpartition(".")[0], len(order))))
    if not sequential:
        return [ordered]
    groups: dict[str, list[str]] = {}
    for f in ordered:
        groups.setdefault(unit_group(f, "block"), []).append(f)
    return list(groups.values())


def group_end(model: nn.Module, group: list[str]) -> str | None:
    """The module whose forward ends a calibration pass for one sequential ``group``: the decoder block holding all
    its units (None when they share no block module, e.g. the dense pass over every unit)."""
    block = unit_group(group[0], "block")
    names = dict(model.named_modules())
    if block not in names or any(unit_group(f, "block") != block for f in group):
        return None
    return block


@torch.no_grad()
def prune_model(model: nn.Module, ratios: dict[str, float], inputs: torch.Tensor,
                granularity: Granularity | None = None, sequential: bool = False,
                reference: float | None = None) -> dict[str, torch.Tensor]:
    """SparseGPT on every unit of ``ratios``, in place: each unit's weights pruned and updated; returns each unit's
    keep mask (in its weight's layout). ``sequential``: block by block, each block's Hessians from the calibration
    ``inputs`` run through the model whose earlier blocks are already pruned (the paper's procedure); else every
    unit's from the dense model (one pass). ``reference`` (sequential only): the earlier blocks the inputs run
    through are pruned uniformly at this ratio, whatever ``ratios`` says (what a sequential level database built
    at that reference stores, so a candidate assembled from it equals this)."""
    keep: dict[str, torch.Tensor] = {}
    final: dict[str, torch.Tensor] = {}  # with a reference: each unit's own-ratio weight, written at the end
    for group in calibration_groups(model, list(ratios), sequential):
        grams = input_grams(model, group, inputs, stop_after=group_end(model, group) if sequential else None)
        for fqn in group:
            weight, transposed = weight_of(model, fqn), is_transposed(model, fqn)  # SparseGPT reads (out, in)
            w, hinv = prepare_unit(out_by_in(weight, transposed), grams.pop(fqn))
            updated, kept = prune_prepared(w, hinv, ratios[fqn], granularity, weight.dtype)
            keep[fqn] = out_by_in(kept, transposed)
            if sequential and reference is not None:
                final[fqn] = out_by_in(updated, transposed)
                updated = prune_prepared(w, hinv, reference, granularity, weight.dtype)[0]
            weight.copy_(out_by_in(updated, transposed))
    for fqn, updated in final.items():
        weight_of(model, fqn).copy_(updated)
    return keep


def _inverse_factor(gram: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The upper Cholesky factor of H⁻¹ (dampened; inputs that never fire are made harmless and their weights
    zeroed in ``weight``, as in the reference code)."""
    h = gram.double().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    weight[:, dead] = 0.0
    h += DAMP * torch.mean(torch.diag(h)) * torch.eye(h.shape[0], dtype=h.dtype)
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True).float()


def _block_mask(w: torch.Tensor, hinv_diag: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` weights of a column block with the smallest OBS error w²/[H⁻¹]²_jj (True = pruned)."""
    err = (w.pow(2) / hinv_diag.pow(2)[None, :]).flatten()
    mask = torch.zeros(err.numel(), dtype=torch.bool)
    if k > 0:
        mask[torch.topk(err, k, largest=False).indices] = True
    return mask.reshape(w.shape)


@torch.no_grad()
def sparsegpt_prune(weight: torch.Tensor, gram: torch.Tensor, ratio: float,
                    granularity: Granularity | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(updated weight, keep mask)`` of one Linear pruned to ``ratio`` (unstructured: exactly
    round(ratio · size) zeros; ``nm`` granularity: N of every M consecutive inputs of each row kept, i.e. M−N
    pruned) with the OBS update of the remaining weights. ``gram``: :func:`input_grams` of its inputs."""
    w, hinv = prepare_unit(weight, gram)
    return prune_prepared(w, hinv, ratio, granularity, weight.dtype)


@torch.no_grad()
def prepare_unit(weight: torch.Tensor, gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What every level of one unit shares: its weight in float32 (dead inputs' columns zeroed) and the upper
    Cholesky factor of H⁻¹ (a level database computes them once per unit, not once per level)."""
    w = weight.detach().float().clone()
    return w, _inverse_factor(gram, w)


@torch.no_grad()
def prune_prepared(w: torch.Tensor, hinv: torch.Tensor, ratio: float, granularity: Granularity | None = None,
                   dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`sparsegpt_prune` from :func:`prepare_unit`'s output (``w`` is not modified)."""
    w = w.clone()
    cols = w.shape[1]
    nm = granularity is not None and granularity.kind == "nm"
    total = round(ratio * w.numel())
    pruned = torch.zeros_like(w, dtype=torch.bool)
    for b0 in range(0, cols, BLOCK):
        b1 = min(b0 + BLOCK, cols)
        w1, h1 = w[:, b0:b1].clone(), hinv[b0:b1, b0:b1]
        err1 = torch.zeros_like(w1)
        # this block's share of the target, cumulative so that the layer's total is exact
        k = round(total * b1 / cols) - round(total * b0 / cols)
        mask1 = torch.zeros_like(w1, dtype=torch.bool) if nm else _block_mask(w1, torch.diag(h1), k)
        for i in range(b1 - b0):
            if nm and granularity is not None and i % granularity.m == 0:
                group = slice(i, i + granularity.m)
                score = w1[:, group].pow(2) / torch.diag(h1)[group].pow(2)[None, :]
                drop = torch.topk(score, granularity.m - granularity.n, dim=1, largest=False).indices
                mask1[:, group] = mask1[:, group].scatter(1, drop, True)
            col, d = w1[:, i], h1[i, i]
            q = torch.where(mask1[:, i], torch.zeros_like(col), col)
            e = (col - q) / d
            w1[:, i:] -= e[:, None] * h1[i, i:][None, :]  # spread the pruned weights' error over the later columns
            w1[:, i] = q
            err1[:, i] = e
        w[:, b0:b1] = w1
        w[:, b1:] -= err1 @ hinv[b0:b1, b1:]
        pruned[:, b0:b1] = mask1
    w[pruned] = 0.0
    return w.to(dtype), (~pruned).to(dtype)
