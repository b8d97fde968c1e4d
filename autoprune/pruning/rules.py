"""Allocation rules a user adds: one :class:`AllocationRule` subclass each, found by name in a registry.

A rule says how much to prune each unit at a global target (``ratios``); autoprune projects what it returns onto
the budget (the weighted sparsity is then exactly the target, per-unit bounds respected), so a rule may be rough.
Name one in a space's ``baselines:`` (enqueued at every target, scored like the built-in heuristics) or
``anchor:`` (searched offsets around it) as ``package.module:Class``, or register it with
``@register_allocation("name")`` and use the name — like a user's ``Task`` or ``Criterion``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar

from torch import nn

from autoprune.config.budget import project_to_budget
from autoprune.models.layers import weight_of
from autoprune.plugins import Registry
from autoprune.pruning.heuristics import Allocation

__all__ = ["ALLOCATION_RULES", "AllocationRule", "allocation_rule", "register_allocation", "rule_allocation"]


class AllocationRule(ABC):
    """Per-unit ratios at a target sparsity. Subclass it and implement :meth:`ratios`."""

    name: ClassVar[str] = ""

    @abstractmethod
    def ratios(self, model: nn.Module, layers: list[str], target: float) -> dict[str, float]:
        """A ratio in [0, 1) for each of ``layers`` (FQNs) of the dense ``model`` at global ``target``."""


ALLOCATION_RULES: Registry[AllocationRule] = Registry("heuristic", AllocationRule)
register_allocation = ALLOCATION_RULES.register


def allocation_rule(name: str) -> AllocationRule:
    """The rule registered as ``name`` or the ``package.module:Class`` named; a ValueError says what is wrong."""
    return ALLOCATION_RULES.resolve(name)()


def rule_allocation(rule: AllocationRule, model: nn.Module, layers: list[str],
                    bounds: dict[str, tuple[float, float]] | None = None) -> Allocation:
    """The rule as an allocation (target → ratios meeting it exactly): its ratios become log-density preferences,
    projected onto the budget. A ratio outside [0, 1) or a unit it leaves out is a ValueError naming it."""
    sizes = {f: weight_of(model, f).numel() for f in layers}

    def allocate(target: float) -> dict[str, float]:
        got = rule.ratios(model, layers, target)
        missing = [f for f in layers if f not in got]
        bad = [f for f in layers if f in got and not 0.0 <= float(got[f]) < 1.0]
        if missing or bad:
            raise ValueError(f"allocation rule {rule.name or type(rule).__name__}: "
                             + (f"no ratio for {missing[0]}" if missing else f"ratio {got[bad[0]]} for {bad[0]}"))
        prefs = {f: math.log(max(1.0 - float(got[f]), 1e-6)) for f in layers}
        return project_to_budget(target, prefs, sizes, bounds)

    return allocate
