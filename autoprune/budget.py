"""Projection of (global target sparsity, per-layer preferences) onto per-layer ratios.

density_i = clip(c · exp(z_i), 1 - max_i, 1 - min_i), with the scalar c found by bisection so that the
weight-count-weighted sparsity equals the target exactly. A higher preference ``z_i`` keeps more weights.
Sampling the target first and projecting is what makes high global sparsity reachable at all (a naive
independent sample is an average dominated by the biggest layers; see shared/DESIGN.md).
"""

from __future__ import annotations

import numpy as np


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
    z = z - z.max()  # shift so that c spans a bounded log-range
    lo_c, hi_c = -60.0, 60.0
    for _ in range(64):  # log-c interval 120 / 2**64: below float precision
        mid = 0.5 * (lo_c + hi_c)
        dens = np.clip(np.exp(mid + z), lo_d, hi_d)
        if n @ dens < want:
            lo_c = mid
        else:
            hi_c = mid
    dens = np.clip(np.exp(0.5 * (lo_c + hi_c) + z), lo_d, hi_d)
    dens = _close_gap(dens, n, want, lo_d, hi_d)
    return {k: float(min(max(1.0 - d, 0.0), 0.999999)) for k, d in zip(names, dens, strict=True)}


def _close_gap(dens: np.ndarray, n: np.ndarray, want: float, lo_d: np.ndarray, hi_d: np.ndarray) -> np.ndarray:
    """Spread the bisection's residual over the layers that are not at a bound (exactness to fp precision)."""
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
