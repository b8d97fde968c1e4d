"""Projection of (global target sparsity, per-layer preferences) onto per-layer ratios.

density_i = clip(c · exp(z_i), 1 - max_i, 1 - min_i), with the scalar c solved in closed form so that the
weight-count-weighted sparsity equals the target exactly. A higher preference ``z_i`` keeps more weights.
Sampling the target first and projecting is what makes high global sparsity reachable at all (a naive
independent sample is an average dominated by the biggest layers; see shared/DESIGN.md).
"""

from __future__ import annotations

import numpy as np

__all__ = ["BudgetError", "project_to_budget", "weighted_sparsity"]


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
