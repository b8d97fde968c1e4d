"""Projection of (global target sparsity, per-layer preferences) onto per-layer ratios.

density_i = clip(c · exp(z_i), 1 - max_i, 1 - min_i), with the scalar c solved in closed form so that the
weight-count-weighted sparsity equals the target exactly. A higher preference ``z_i`` keeps more weights.
Sampling the target first and projecting is what makes high global sparsity reachable at all (a naive
independent sample is an average dominated by the biggest layers; see shared/DESIGN.md).
"""

from __future__ import annotations

import math
from functools import reduce

import numpy as np

__all__ = ["BudgetError", "level_units", "project_to_budget", "snap_to_levels", "weighted_sparsity"]


class BudgetError(ValueError):
    """The target sparsity cannot be met within the per-layer bounds."""


def project_to_budget(
    target: float,
    prefs: dict[str, float],
    sizes: dict[str, int],
    bounds: dict[str, tuple[float, float]] | None = None,
) -> dict[str, float]:
    """Per-layer ratios whose weighted mean is ``target`` (to ~1e-12) and which respect ``bounds``."""
    names = list(sizes)
    n = np.array([sizes[k] for k in names], dtype=np.float64)
    z = np.array([prefs.get(k, 0.0) for k in names], dtype=np.float64)
    b = bounds or {}
    lo_d = np.array([1.0 - b.get(k, (0.0, 0.99))[1] for k in names])  # least density allowed
    hi_d = np.array([1.0 - b.get(k, (0.0, 0.99))[0] for k in names])  # most density allowed
    want = (1.0 - target) * n.sum()
    lo_w, hi_w = float(n @ lo_d), float(n @ hi_d)
    tol = 1e-9 * n.sum()
    if want < lo_w - tol or want > hi_w + tol:
        s_max, s_min = 1.0 - lo_w / n.sum(), 1.0 - hi_w / n.sum()
        raise BudgetError(f"target sparsity {target:.4f} is outside what the layer bounds allow "
                          f"[{s_min:.4f}, {s_max:.4f}]")
    dens = np.clip(np.exp(_solve_log_c(z, n, want, lo_d, hi_d) + z), lo_d, hi_d)
    dens = _close_gap(dens, n, want, lo_d, hi_d)
    return {k: float(min(max(1.0 - d, 0.0), 0.999999)) for k, d in zip(names, dens, strict=True)}


def _solve_log_c(z: np.ndarray, n: np.ndarray, want: float, lo_d: np.ndarray, hi_d: np.ndarray) -> float:
    """log c with Σ n_i clip(c·e^{z_i}, lo_i, hi_i) = want, exactly (no bisection).

    The sum is piecewise: between consecutive breakpoints (where a layer hits a bound) it is
    const + c·Σ_free n_i e^{z_i}, so locate the piece that brackets ``want`` and solve it for c.
    """
    with np.errstate(divide="ignore", over="ignore"):
        enter, leave = np.log(lo_d) - z, np.log(hi_d) - z  # log c where layer i leaves its lower/upper bound
        points = np.unique(np.concatenate([enter, leave]))
        points = points[np.isfinite(points)]
        if points.size == 0:
            return 0.0
        totals = np.clip(np.exp(points[:, None] + z[None, :]), lo_d, hi_d) @ n  # the sum at every breakpoint
    k = int(np.searchsorted(totals, want))  # first breakpoint whose sum reaches `want`
    left = points[k - 1] if k > 0 else points[0] - 1.0  # the piece (left, right) holds the solution
    right = points[k] if k < points.size else points[-1] + 1.0
    mid = 0.5 * (left + right)
    free = (enter < mid) & (leave > mid)
    fixed = np.clip(np.exp(mid + z), lo_d, hi_d)
    const = float(n[~free] @ fixed[~free])
    slope = float(n[free] @ np.exp(z[free]))
    if slope <= 0.0 or want <= const:  # a flat piece: its breakpoint already gives `want`
        return float(points[min(k, points.size - 1)])
    return float(np.log((want - const) / slope))


def _close_gap(dens: np.ndarray, n: np.ndarray, want: float, lo_d: np.ndarray, hi_d: np.ndarray) -> np.ndarray:
    """Spread the floating-point residual over the layers that are not at a bound (exactness to fp precision)."""
    gap = want - float(n @ dens)
    free = (dens > lo_d + 1e-12) & (dens < hi_d - 1e-12)
    if free.any() and abs(gap) > 0:
        dens = dens.copy()
        dens[free] += gap / float(n[free].sum())
        dens = np.clip(dens, lo_d, hi_d)
    return dens


def weighted_sparsity(ratios: dict[str, float], sizes: dict[str, int]) -> float:
    """Global sparsity over the layers in ``sizes``: Σ n_i r_i / Σ n_i."""
    total = sum(sizes.values())
    return sum(ratios.get(k, 0.0) * v for k, v in sizes.items()) / total


def level_units(sizes: dict[str, int]) -> dict[str, int]:
    """Each unit's size in multiples of the sizes' greatest common divisor: how many "weight units" one level step
    of it moves (SmolLM2's k/v: 1, q/o: 3, MLP: 8)."""
    g = reduce(math.gcd, sizes.values())
    return {f: n // g for f, n in sizes.items()}


def snap_to_levels(ratios: dict[str, float], sizes: dict[str, int], target: float, step: float, top: float,
                   bounds: dict[str, tuple[float, float]] | None = None) -> dict[str, float]:
    """Every ratio moved to a multiple of ``step`` (≤ ``top``, inside ``bounds``) so that the weighted total is
    exactly ``target`` whenever the sizes allow it (else the nearest total they allow): each ratio is rounded down,
    then the units with the largest remainders are raised one level while the deficit holds their size (largest
    remainder rounding in units of the sizes' common divisor, EvoPress's equal-weight level steps)."""
    units = level_units(sizes)
    names = list(ratios)
    b = bounds or {}
    lo = {f: math.ceil(b.get(f, (0.0, 1.0))[0] / step - 1e-9) for f in names}
    hi = {f: min(math.floor(b.get(f, (0.0, 1.0))[1] / step + 1e-9), math.floor(top / step + 1e-9)) for f in names}
    x = {f: ratios[f] / step for f in names}
    k = {f: min(max(math.floor(x[f] + 1e-6), lo[f]), hi[f]) for f in names}
    want = round(target * sum(units[f] for f in names) / step)
    gap = want - sum(k[f] * units[f] for f in names)
    sign = 1 if gap > 0 else -1
    order = sorted(names, key=lambda f: -sign * (x[f] - k[f]))  # raise the largest remainders, lower the smallest
    while gap != 0:
        moved = False
        for f in order:
            if abs(gap) >= units[f] and lo[f] <= k[f] + sign <= hi[f]:
                k[f] += sign
                gap -= sign * units[f]
                moved = True
                if gap == 0:
                    break
        if not moved:
            break  # the sizes cannot meet the target exactly: the nearest total on this side of it
    return {f: round(k[f] * step, 10) for f in names}
