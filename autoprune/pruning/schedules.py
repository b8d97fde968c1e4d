"""Pure schedule functions: which ratio each layer has at each pruning step."""

from __future__ import annotations

from autoprune.config.policy import Schedule

__all__ = ["cubic_fraction", "ratios_per_step"]


def cubic_fraction(step: int, steps: int) -> float:
    """Zhu & Gupta (2017) cubic ramp: fraction of the final sparsity reached after ``step`` of ``steps``."""
    if steps <= 0:
        return 1.0
    t = min(max(step / steps, 0.0), 1.0)
    return 1.0 - (1.0 - t) ** 3


def ratios_per_step(final: dict[str, float], schedule: Schedule) -> list[dict[str, float]]:
    """The per-layer ratios to prune to at each step; the last entry is always ``final``."""
    steps = 1 if schedule.kind == "oneshot" else schedule.steps
    return [{k: r * cubic_fraction(s, steps) for k, r in final.items()} for s in range(1, steps + 1)]
