"""The built-in allocation rules (well-known heuristics), registered as :class:`AllocationRule` classes the way a
user's rule is; each gives, for a global target sparsity, ``{fqn: ratio}``.

Each returns ``{fqn: ratio}`` whose weighted sparsity equals the target exactly: the heuristic's own
densities are used as preferences and projected onto the budget (a no-op when no bound binds).
uniform · global magnitude · LAMP (Lee et al. 2021) · ERK (Evci et al. 2020) · sensitivity-derived ·
OWL (Yin et al. 2024: blocks with more activation outliers keep more weights) · AlphaPruning (Lu et al. 2024:
blocks whose weight spectra are less heavy-tailed, i.e. less well trained, are pruned more).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from autoprune.config.budget import project_to_budget
from autoprune.config.sampling import unit_group
from autoprune.models.layers import weight_of
from autoprune.pruning.rules import Allocation, AllocationContext, AllocationRule, register_allocation

__all__ = [
    "ALPHA_EPSILON",
    "ERK",
    "LAMP",
    "OWL",
    "OWL_LAMBDA",
    "Allocation",
    "AlphaPruning",
    "GlobalMagnitude",
    "Sensitivity",
    "Uniform",
    "allocations",
    "alpha_hill",
    "alpha_ratios",
    "erk_preferences",
    "lamp_scores",
    "owl_ratios",
]

OWL_LAMBDA = 0.08  # OWL's published λ: block sparsities spread over [target − λ, target + λ]
ALPHA_EPSILON = 0.2  # AlphaPruning's published ε: raw ratios spread over [1 − ε, 1] before scaling to the target



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


def _project(ctx: AllocationContext, prefs: dict[str, float]) -> Allocation:
    """Fixed preferences as an allocation: projected onto each target's budget."""
    sizes = ctx.sizes()
    return lambda t: project_to_budget(t, prefs, sizes, ctx.bounds)


def _from_scores(ctx: AllocationContext, scores: dict[str, torch.Tensor]) -> Allocation:
    """A global threshold on per-weight scores at each target, its densities projected onto the budget."""
    sizes = ctx.sizes()
    return lambda t: project_to_budget(t, _prefs_from_density(_threshold_allocation(scores, t)), sizes, ctx.bounds)


class _BuiltinRule(AllocationRule):
    """A built-in: it allocates from its context (:meth:`allocation`); ``ratios`` is that allocation at one target."""

    def ratios(self, model: nn.Module, layers: list[str], target: float) -> dict[str, float]:
        """The rule's ratios for ``model`` at ``target`` (without bounds)."""
        return self.allocation(AllocationContext(model, layers))(target)


@register_allocation("uniform")
class Uniform(_BuiltinRule):
    """Every unit at the target (bounds permitting)."""

    def allocation(self, ctx: AllocationContext) -> Allocation:
        """Equal preferences."""
        return _project(ctx, dict.fromkeys(ctx.layers, 0.0))


@register_allocation("global")
class GlobalMagnitude(_BuiltinRule):
    """One magnitude threshold over all units."""

    def allocation(self, ctx: AllocationContext) -> Allocation:
        """|w| of every weight, thresholded globally."""
        return _from_scores(ctx, {f: weight_of(ctx.model, f).detach().abs() for f in ctx.layers})


@register_allocation("lamp")
class LAMP(_BuiltinRule):
    """LAMP (Lee et al. 2021): one threshold over the layer-adaptive magnitude scores."""

    def allocation(self, ctx: AllocationContext) -> Allocation:
        """LAMP scores, thresholded globally."""
        return _from_scores(ctx, lamp_scores({f: weight_of(ctx.model, f).detach() for f in ctx.layers}))


@register_allocation("erk")
class ERK(_BuiltinRule):
    """Erdős–Rényi-Kernel (Evci et al. 2020): density ∝ (Σ dims) / (Π dims)."""

    def allocation(self, ctx: AllocationContext) -> Allocation:
        """ERK preferences."""
        return _project(ctx, erk_preferences(ctx.model, ctx.layers))


@register_allocation("sensitivity")
class Sensitivity(_BuiltinRule):
    """Units that tolerate more pruning in the one-layer sensitivity scan are pruned more."""

    def available(self, ctx: AllocationContext) -> bool:
        """Only where the space scans sensitivity."""
        return ctx.sensitivity is not None

    def allocation(self, ctx: AllocationContext) -> Allocation:
        """The scan's preferences."""
        assert ctx.sensitivity is not None
        return _project(ctx, ctx.sensitivity)


@register_allocation("owl")
class OWL(_BuiltinRule):
    """OWL (Yin et al. 2024): blocks with more activation outliers keep more weights."""

    def available(self, ctx: AllocationContext) -> bool:
        """Only where the blocks' outlier ratios were measured (Wanda's activations)."""
        return ctx.outliers is not None

    def allocation(self, ctx: AllocationContext) -> Allocation:
        """OWL's ratios at each target, projected onto the budget."""
        outliers, sizes = ctx.outliers, ctx.sizes()
        assert outliers is not None
        return lambda t: project_to_budget(
            t, _prefs_from_density({f: 1 - r for f, r in owl_ratios(outliers, t).items()}), sizes, ctx.bounds)


@register_allocation("alpha")
class AlphaPruning(_BuiltinRule):
    """AlphaPruning (Lu et al. 2024): blocks with less heavy-tailed spectra are pruned more (an SVD per unit)."""

    def allocation(self, ctx: AllocationContext) -> Allocation:
        """AlphaPruning's ratios at each target, projected onto the budget."""
        sizes = ctx.sizes()
        alphas = {f: alpha_hill(weight_of(ctx.model, f).detach()) for f in ctx.layers}
        return lambda t: project_to_budget(
            t, _prefs_from_density({f: 1 - r for f, r in alpha_ratios(alphas, sizes, t).items()}), sizes, ctx.bounds)


def allocations(model: nn.Module, layers: list[str], bounds: dict[str, tuple[float, float]] | None = None,
                sensitivity_prefs: dict[str, float] | None = None, outliers: dict[str, float] | None = None,
                alpha: bool = False) -> dict[str, Allocation]:
    """The built-in heuristic allocations for this model, by name (``sensitivity`` only when curves are given,
    ``owl`` when the blocks' outlier ratios are, ``alpha`` when asked: it takes an SVD of every layer)."""
    ctx = AllocationContext(model, layers, bounds, sensitivity_prefs, outliers)
    rules: list[AllocationRule] = [Uniform(), GlobalMagnitude(), LAMP(), ERK(), Sensitivity(), OWL()]
    out = {rule.name: rule.allocation(ctx) for rule in rules if rule.available(ctx)}
    if alpha:
        out["alpha"] = AlphaPruning().allocation(ctx)
    return out
