"""Pruning schedules: which ratio each unit has at each pruning step. One :class:`PruningSchedule` subclass per
schedule, found by name in a registry (``@register_schedule("name")``, or ``package.module:Class`` as a schedule's
``kind``), like criteria and allocation rules; the built-ins are registered the same way."""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from typing import ClassVar

from autoprune.config.policy import Schedule
from autoprune.plugins import Registry

__all__ = ["SCHEDULES", "Cubic", "Linear", "OneShot", "PruningSchedule", "cubic_fraction", "ratios_per_step",
           "register_schedule", "schedule_for"]


class PruningSchedule(ABC):
    """The fraction of the final sparsity reached after each of ``steps`` pruning steps (a fine-tune share
    follows each step). Subclass it and implement :meth:`fractions`."""

    name: ClassVar[str] = ""

    @abstractmethod
    def fractions(self, steps: int) -> list[float]:
        """``steps`` non-decreasing fractions in (0, 1], the last one 1.0."""


SCHEDULES: Registry[PruningSchedule] = Registry("schedule", PruningSchedule, ("autoprune.pruning.schedules",))
register_schedule = SCHEDULES.register


def cubic_fraction(step: int, steps: int) -> float:
    """Zhu & Gupta (2017) cubic ramp: fraction of the final sparsity reached after ``step`` of ``steps``."""
    if steps <= 0:
        return 1.0
    t = min(max(step / steps, 0.0), 1.0)
    return 1.0 - (1.0 - t) ** 3


@register_schedule("oneshot")
class OneShot(PruningSchedule):
    """Everything at once (its ``steps`` are ignored: one step)."""

    def fractions(self, steps: int) -> list[float]:
        """[1.0]."""
        return [1.0]


@register_schedule("iterative")
class Cubic(PruningSchedule):
    """Zhu & Gupta's cubic ramp: large steps first, small ones near the end (AGP)."""

    def fractions(self, steps: int) -> list[float]:
        """1 − (1 − s/steps)³ after step s."""
        return [cubic_fraction(s, steps) for s in range(1, steps + 1)]


@register_schedule("linear")
class Linear(PruningSchedule):
    """Equal increments (iterative magnitude pruning in equal steps)."""

    def fractions(self, steps: int) -> list[float]:
        """s/steps after step s."""
        return [s / steps for s in range(1, steps + 1)]


def schedule_for(kind: str) -> PruningSchedule:
    """The schedule registered as ``kind`` or the ``package.module:Class`` named; a ValueError says what is wrong."""
    return SCHEDULES.resolve(kind)()


def ratios_per_step(final: dict[str, float], schedule: Schedule) -> list[dict[str, float]]:
    """The per-layer ratios to prune to at each step; the last entry is always ``final`` (a schedule whose
    fractions are not non-decreasing in (0, 1] ending at 1 is a ValueError naming it)."""
    fractions = schedule_for(schedule.kind).fractions(schedule.steps)
    ok = bool(fractions) and all(0.0 < f <= 1.0 for f in fractions) and abs(fractions[-1] - 1.0) < 1e-12
    if not ok or any(b < a for a, b in itertools.pairwise(fractions)):
        raise ValueError(f"schedule {schedule.kind}: fractions {fractions} must be non-decreasing in (0, 1] and end "
                         "at 1")
    steps = [{k: r * f for k, r in final.items()} for f in fractions[:-1]]
    return [*steps, dict(final)]
