"""The budget projection hits the target exactly and respects per-layer bounds (property-based)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoprune.config.budget import BudgetError, project_to_budget, weighted_sparsity

layer = st.tuples(st.integers(1, 100_000), st.floats(-6, 6), st.floats(0.0, 0.5), st.floats(0.5, 0.99))


@settings(max_examples=300, deadline=None)
@given(layers=st.lists(layer, min_size=1, max_size=12), t=st.floats(0.0, 1.0))
def test_projection_hits_target_within_bounds(layers: list[tuple[int, float, float, float]], t: float) -> None:
    sizes = {f"l{i}": n for i, (n, _, _, _) in enumerate(layers)}
    prefs = {f"l{i}": z for i, (_, z, _, _) in enumerate(layers)}
    bounds = {f"l{i}": (lo, hi) for i, (_, _, lo, hi) in enumerate(layers)}
    total = sum(sizes.values())
    s_min = sum(sizes[k] * bounds[k][0] for k in sizes) / total
    s_max = sum(sizes[k] * bounds[k][1] for k in sizes) / total
    target = s_min + t * (s_max - s_min)
    ratios = project_to_budget(target, prefs, sizes, bounds)
    assert abs(weighted_sparsity(ratios, sizes) - target) < 1e-6
    for k, r in ratios.items():
        assert bounds[k][0] - 1e-9 <= r <= bounds[k][1] + 1e-9


def test_higher_preference_keeps_more_weights() -> None:
    ratios = project_to_budget(0.9, {"a": 1.0, "b": -1.0}, {"a": 1000, "b": 1000})
    assert ratios["a"] < ratios["b"]
    assert abs((ratios["a"] + ratios["b"]) / 2 - 0.9) < 1e-9


def test_a_layer_can_be_left_dense() -> None:
    sizes = {"a": 100, "b": 100}
    ratios = project_to_budget(0.45, {"a": 0.0, "b": 0.0}, sizes, {"a": (0.0, 0.0), "b": (0.0, 0.99)})
    assert ratios["a"] == 0.0
    assert abs(ratios["b"] - 0.9) < 1e-9
    assert abs(weighted_sparsity(ratios, sizes) - 0.45) < 1e-6


def test_unreachable_target_is_an_error() -> None:
    with pytest.raises(BudgetError, match="outside what the layer bounds allow"):
        project_to_budget(0.95, {"a": 0.0}, {"a": 10}, {"a": (0.0, 0.5)})


def test_layers_without_a_density_floor_are_solved_exactly() -> None:
    sizes = {"a": 300, "b": 100}
    bounds = {"a": (0.0, 1.0), "b": (0.0, 1.0)}  # density may go to 0: no lower breakpoint exists
    ratios = project_to_budget(0.99, {"a": 0.0, "b": 0.0}, sizes, bounds)
    assert abs(ratios["a"] - 0.99) < 1e-12 and abs(ratios["b"] - 0.99) < 1e-12
    skewed = project_to_budget(0.5, {"a": 0.0, "b": 2.0}, sizes, bounds)
    assert skewed["b"] < skewed["a"]
    assert abs(weighted_sparsity(skewed, sizes) - 0.5) < 1e-12
