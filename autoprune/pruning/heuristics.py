"""Per-layer allocations from well-known heuristics, as functions of the global target sparsity.

Each returns ``{fqn: ratio}`` whose weighted sparsity equals the target exactly: the heuristic's own
densities are used as preferences and projected onto the budget (a no-op when no bound binds).
uniform · global magnitude · LAMP (Lee et al. 2021) · ERK (Evci et al. 2020) · sensitivity-derived.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from autoprune.config.budget import project_to_budget
from autoprune.models.zoo import weight_of

__all__ = ["Allocation", "allocations", "erk_preferences", "lamp_scores"]

Allocation = Callable[[float], dict[str, float]]


def _prefs_from_density(dens: dict[str, float]) -> dict[str, float]:
    return {k: math.log(max(d, 1e-6)) for k, d in dens.items()}


def _threshold_allocation(scores: dict[str, torch.Tensor], target: float) -> dict[str, float]:
    """Prune the globally lowest ``target`` fraction of ``scores``; return the resulting per-layer density."""
    flat = torch.cat([s.flatten() for s in scores.values()])
    k = round(target * flat.numel())
    if k <= 0:
        return dict.fromkeys(scores, 1.0)
    thr = torch.kthvalue(flat.double().cpu(), k).values
    return {f: 1.0 - float((s.double().cpu() <= thr).sum()) / s.numel() for f, s in scores.items()}


def lamp_scores(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LAMP score of each weight: w_u² / Σ_{v ≥ u} w_v² over the layer's weights sorted by magnitude."""
    out = {}
    for f, w in weights.items():
        sq = w.detach().flatten().double().pow(2)
        sorted_sq, order = torch.sort(sq)
        tail = torch.flip(torch.cumsum(torch.flip(sorted_sq, [0]), 0), [0])  # Σ_{v≥u}
        score = torch.empty_like(sq)
        score[order] = sorted_sq / tail.clamp(min=1e-30)
        out[f] = score.view_as(w)
    return out


def erk_preferences(model: nn.Module, layers: list[str]) -> dict[str, float]:
    """Erdős–Rényi-Kernel: density ∝ (Σ dims) / (Π dims) of each weight tensor."""
    prefs = {}
    for f in layers:
        shape = weight_of(model, f).shape
        prefs[f] = math.log(sum(shape) / math.prod(shape))
    return prefs


def allocations(model: nn.Module, layers: list[str], bounds: dict[str, tuple[float, float]] | None = None,
                sensitivity_prefs: dict[str, float] | None = None) -> dict[str, Allocation]:
    """The heuristic allocations for this model, by name (``sensitivity`` only when curves are given)."""
    weights = {f: weight_of(model, f).detach() for f in layers}
    sizes = {f: w.numel() for f, w in weights.items()}
    magnitude = {f: w.abs() for f, w in weights.items()}
    lamp = lamp_scores(weights)
    erk = erk_preferences(model, layers)

    def project(prefs: dict[str, float]) -> Allocation:
        return lambda t: project_to_budget(t, prefs, sizes, bounds)

    def from_scores(scores: dict[str, torch.Tensor]) -> Allocation:
        return lambda t: project_to_budget(t, _prefs_from_density(_threshold_allocation(scores, t)), sizes, bounds)

    out: dict[str, Allocation] = {
        "uniform": project(dict.fromkeys(layers, 0.0)),
        "global": from_scores(magnitude),
        "lamp": from_scores(lamp),
        "erk": project(erk),
    }
    if sensitivity_prefs is not None:
        out["sensitivity"] = project(sensitivity_prefs)
    return out
