"""Masks: exact per-layer sparsity, channel and N:M patterns, permanence, and zeros kept during training."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from autoprune.config.policy import Granularity
from autoprune.models.zoo import DigitsCNN
from autoprune.pruning.masks import apply_masks, compute_mask, folded_masks, layer_sparsity, make_permanent


def test_unstructured_mask_has_exact_sparsity() -> None:
    torch.manual_seed(0)
    w = torch.randn(64, 32, 3, 3)
    for ratio in (0.0, 0.3, 0.9, 0.99):
        m = compute_mask(w.abs(), ratio, Granularity())
        assert int((m == 0).sum()) == round(ratio * w.numel())
        if ratio > 0:  # the removed weights are the smallest
            assert w.abs()[m == 0].max() <= w.abs()[m == 1].min()


def test_channel_mask_zeroes_whole_filters() -> None:
    torch.manual_seed(0)
    w = torch.randn(16, 8, 3, 3)
    m = compute_mask(w.abs(), 0.5, Granularity(kind="channel"))
    per_filter = m.flatten(1).sum(1)
    assert int((per_filter == 0).sum()) == 8
    assert set(per_filter.tolist()) <= {0.0, float(8 * 9)}
    norms = w.abs().flatten(1).sum(1)
    assert norms[per_filter == 0].max() <= norms[per_filter > 0].min()


def test_nm_mask_keeps_n_of_every_m() -> None:
    torch.manual_seed(0)
    w = torch.randn(6, 16)
    m = compute_mask(w.abs(), 0.5, Granularity(kind="nm", n=2, m=4))
    groups = m.reshape(6, 4, 4)
    assert torch.all(groups.sum(2) == 2)


def test_apply_and_make_permanent() -> None:
    model = DigitsCNN(width=8)
    w = model.features[0].weight.detach().clone()
    mask = compute_mask(w.abs(), 0.75, Granularity())
    apply_masks(model, {"features.0": mask})
    assert parametrize.is_parametrized(model.features[0], "weight")
    assert abs(layer_sparsity(model, "features.0") - 0.75) < 1e-2
    make_permanent(model)
    assert not parametrize.is_parametrized(model.features[0], "weight")
    assert isinstance(model.features[0].weight, nn.Parameter)
    assert abs(layer_sparsity(model, "features.0") - 0.75) < 1e-2


def test_pruned_weights_stay_zero_while_training() -> None:
    torch.manual_seed(0)
    model = DigitsCNN(width=8)
    layer = model.classifier[1]
    mask = compute_mask(layer.weight.detach().abs(), 0.9, Granularity())
    apply_masks(model, {"classifier.1": mask})
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    with folded_masks(model) as folded:
        for _ in range(5):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            folded.reapply()
            assert torch.all(model.classifier[1].weight[mask == 0] == 0)
    assert parametrize.is_parametrized(model.classifier[1], "weight")
    assert torch.all(model.classifier[1].weight[mask == 0] == 0)
    assert torch.any(model.classifier[1].weight[mask == 1] != 0)


def test_non_finite_weights_never_count_as_kept() -> None:
    """A pruned entry stays exactly zero over a NaN/inf weight; a broken (non-finite) weight is not 'kept'."""
    from autoprune.pruning.metrics import kept_count, size_metrics

    model = DigitsCNN(width=8)
    layer = model.classifier[1]
    with torch.no_grad():
        layer.weight[:, :4] = float("nan")
        layer.weight[:, 4:6] = float("inf")
    mask = torch.ones_like(layer.weight)
    mask[:, :6] = 0.0  # exactly the non-finite entries pruned
    apply_masks(model, {"classifier.1": mask})
    assert bool(torch.isfinite(layer.weight).all()) and int((layer.weight == 0).sum()) == 6 * layer.weight.shape[0]
    before = size_metrics(model, Granularity(), (1, 8, 8))["nonzeros"]
    make_permanent(model)
    assert size_metrics(model, Granularity(), (1, 8, 8))["nonzeros"] == before
    broken = torch.tensor([1.0, float("nan"), float("inf"), 0.0])
    assert kept_count(broken) == 1
