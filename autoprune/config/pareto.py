"""Plain 2-D Pareto helpers for (primary metric ↑, size ↓) points (a minimized metric enters negated)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["SIZE_TOLERANCE", "best_at", "dominates", "hypervolume", "nondominated"]

SIZE_TOLERANCE = 1e-3  # sizes within 0.1 % of each other count as equal: a point one weight smaller is not smaller


def dominates(p: tuple[float, float], q: tuple[float, float], size_tol: float = 0.0) -> bool:
    """Whether (score, size) point ``p`` dominates ``q``; sizes within ``size_tol`` (relative) count as equal."""
    (a2, s2), (a, s) = p, q
    if abs(s2 - s) <= size_tol * max(abs(s), abs(s2)):
        return a2 > a
    return a2 >= a and s2 < s


def nondominated(points: Sequence[tuple[float, float]], size_tol: float = 0.0) -> list[int]:
    """Indices of points (score, size) not dominated by any other (higher-or-equal score, lower-or-equal size).

    With ``size_tol`` (relative), a size no more than that fraction from another counts as equal, so a less
    accurate point that is smaller by a hair (one weight) is dominated; of exact duplicates the first is kept.
    """
    out = []
    for i, q in enumerate(points):
        beaten = any(dominates(p, q, size_tol) or (p == q and j < i) for j, p in enumerate(points) if j != i)
        if not beaten:
            out.append(i)
    return out


def hypervolume(points: Sequence[tuple[float, float]], ref_size: float = 1.0, ref_acc: float = 0.0) -> float:
    """Area dominated by the front inside [0, ref_size] × [ref_acc, 1] (bigger is better)."""
    front = sorted((points[i] for i in nondominated(points)), key=lambda p: p[1])
    front = [(a, s) for a, s in front if s <= ref_size and a >= ref_acc]
    hv = 0.0
    for k, (a, s) in enumerate(front):
        nxt = front[k + 1][1] if k + 1 < len(front) else ref_size
        hv += (nxt - s) * (a - ref_acc)
    return hv


def best_at(points: Sequence[tuple[float, float]], sparsities: Sequence[float], level: float) -> float | None:
    """Best score among points whose sparsity is ≥ ``level`` (None if none reaches it)."""
    accs = [p[0] for p, sp in zip(points, sparsities, strict=True) if sp >= level - 1e-3]
    return max(accs) if accs else None
