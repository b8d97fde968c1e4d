"""Per-layer allocations from well-known heuristics, as functions of the global target sparsity.

Each returns ``{fqn: ratio}`` whose weighted sparsity equals the target exactly: the heuristic's own
densities are used as preferences and projected onto the budget (a no-op when no bound binds).
uniform · global magnitude · LAMP (Lee et al. 2021) · ERK (Evci et al. 2020) · sensitivity-derived ·
OWL (Yin et al. 2024: blocks with more activation outliers keep more weights) · AlphaPruning (Lu et al. 2024:
blocks whose weight spectra are less heavy-tailed, i.e. less well trained, are pruned more).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from autoprune.config.budget import project_to_budget
from autoprune.config.sampling import unit_group
from autoprune.models.layers import weight_of

__all__ = ["ALPHA_EPSILON", "OWL_LAMBDA", "Allocation", "allocations", "alpha_hill", "alpha_ratios", "erk_preferences",
           "lamp_scores", "owl_ratios"]

OWL_LAMBDA = 0.08  # OWL's published λ: block sparsities spread over [target − λ, target + λ]
ALPHA_EPSILON = 0.2  # AlphaPruning's published ε: raw ratios spread over [1 − ε, 1] before scaling to the target

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


def _block_mean(values: dict[str, float]) -> dict[str, float]:
    """Each unit's value replaced by the mean over its block (OWL and AlphaPruning allocate per block)."""
    groups: dict[str, list[float]] = {}
    for f, v in values.items():
        groups.setdefault(unit_group(f, "block"), []).append(v)
    return {f: sum(groups[unit_group(f, "block")]) / len(groups[unit_group(f, "block")]) for f in values}


def _spread(stat: dict[str, float]) -> dict[str, float]:
    """``stat`` min-max normalised to [0, 1] (all 0.5 when every value is equal)."""
    lo, hi = min(stat.values()), max(stat.values())
    return {f: 0.5 if hi - lo < 1e-12 else (v - lo) / (hi - lo) for f, v in stat.items()}


def owl_ratios(outliers: dict[str, float], target: float, lam: float = OWL_LAMBDA) -> dict[str, float]:
    """OWL: density = (1 − target) + 2λ·norm(outlier ratio) − mean of that term (so the mean density is kept)."""
    norm = _spread(_block_mean(outliers))
    mean = sum(norm.values()) / len(norm)
    return {f: min(max(target - 2 * lam * (v - mean), 0.0), 0.99) for f, v in norm.items()}


def alpha_hill(weight: torch.Tensor) -> float:
    """Heavy-tail exponent α of the eigenvalues of WᵀW (Hill estimator, xmin at the median eigenvalue, as
    AlphaPruning's ``xmin_mid``): a smaller α means a heavier tail, a better-trained layer."""
    eigs = torch.linalg.svdvals(weight.detach().double().flatten(1)).pow(2).sort().values
    eigs = eigs[eigs > 1e-5]
    i = len(eigs) // 2
    n = len(eigs) - i
    logs = eigs.log()
    return float(1 + n / max(float(logs[i:].sum() - n * logs[i]), 1e-12))


def alpha_ratios(alphas: dict[str, float], sizes: dict[str, int], target: float,
                 eps: float = ALPHA_EPSILON) -> dict[str, float]:
    """AlphaPruning: raw ratio (1 − ε) + ε·norm(block α), scaled so the weighted sparsity is ``target``."""
    norm = _spread(_block_mean(alphas))
    raw = {f: (1 - eps) + eps * v for f, v in norm.items()}
    scale = target * sum(sizes.values()) / sum(sizes[f] * raw[f] for f in raw)
    return {f: min(raw[f] * scale, 0.99) for f in raw}


def allocations(model: nn.Module, layers: list[str], bounds: dict[str, tuple[float, float]] | None = None,
                sensitivity_prefs: dict[str, float] | None = None, outliers: dict[str, float] | None = None,
                alpha: bool = False) -> dict[str, Allocation]:
    """The heuristic allocations for this model, by name (``sensitivity`` only when curves are given, ``owl``
    when the blocks' outlier ratios are, ``alpha`` when asked: it takes an SVD of every layer)."""
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
    if outliers is not None:
        out["owl"] = lambda t: project_to_budget(
            t, _prefs_from_density({f: 1 - r for f, r in owl_ratios(outliers, t).items()}), sizes, bounds)
    if alpha:
        alphas = {f: alpha_hill(w) for f, w in weights.items()}
        out["alpha"] = lambda t: project_to_budget(
            t, _prefs_from_density({f: 1 - r for f, r in alpha_ratios(alphas, sizes, t).items()}), sizes, bounds)
    return out
