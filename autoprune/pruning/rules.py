"""Allocation rules: one :class:`AllocationRule` subclass each, found by name in a registry (the built-ins, in
:mod:`autoprune.pruning.heuristics`, are registered the same way a user's is).

A rule says how much to prune each unit at a global target (``ratios``); autoprune projects what it returns onto
the budget (the weighted sparsity is then exactly the target, per-unit bounds respected), so a rule may be rough.
Name one in a space's ``baselines:`` (enqueued at every target, scored like the built-in heuristics) or
``anchor:`` (searched offsets around it) as ``package.module:Class``, or register it with
``@register_allocation("name")`` and use the name — like a user's ``Task`` or ``Criterion``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from autoprune.config.budget import project_to_budget
from autoprune.models.layers import weight_of
from autoprune.plugins import Registry

__all__ = ["ALLOCATION_RULES", "Allocation", "AllocationContext", "AllocationRule", "allocation_rule",
           "register_allocation", "rule_allocation"]

Allocation = Callable[[float], dict[str, float]]  # global target → per-unit ratios meeting it exactly


@dataclass(frozen=True)
class AllocationContext:
    """What a rule may read besides the dense model: the units, their bounds, and what only some spaces compute
    (per-unit sensitivity preferences from the scan; OWL's per-unit activation outlier ratios)."""

    model: nn.Module
    layers: list[str]
    bounds: dict[str, tuple[float, float]] | None = None
    sensitivity: dict[str, float] | None = None
    outliers: dict[str, float] | None = None

    def sizes(self) -> dict[str, int]:
        """Each unit's weight count."""
        return {f: weight_of(self.model, f).numel() for f in self.layers}


class AllocationRule(ABC):
    """Per-unit ratios at a target sparsity. Subclass it and implement :meth:`ratios`; a rule that precomputes
    (scores, spectra) overrides :meth:`allocation` instead, as the built-ins do."""

    name: ClassVar[str] = ""

    @abstractmethod
    def ratios(self, model: nn.Module, layers: list[str], target: float) -> dict[str, float]:
        """A ratio in [0, 1) for each of ``layers`` (FQNs) of the dense ``model`` at global ``target``."""

    def available(self, ctx: AllocationContext) -> bool:
        """Whether the rule can allocate in this context (e.g. sensitivity needs the scan's curves)."""
        return True

    def allocation(self, ctx: AllocationContext) -> Allocation:
        """Target → ratios meeting it exactly: :meth:`ratios` projected onto the budget (see
        :func:`rule_allocation`)."""
        return rule_allocation(self, ctx.model, ctx.layers, ctx.bounds)


ALLOCATION_RULES: Registry[AllocationRule] = Registry("heuristic", AllocationRule, ("autoprune.pruning.heuristics",))
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
