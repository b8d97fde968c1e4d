"""Sensitivity scan: one curve per layer, cached on disk, CSV + PNG written."""

from __future__ import annotations

from pathlib import Path

from autoprune.pruning.sensitivity import load_or_scan


def test_scan_is_cached_and_written(workspace, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ws = workspace
    args = (tmp_path, ws.model, ws.splits, ws.layers, [0.3, 0.9, 0.99], "magnitude", ws.space.granularity, 0)
    curves, path, hit = load_or_scan(*args)
    assert not hit and set(curves.scores) == set(ws.layers)
    assert all(len(v) == 3 for v in curves.scores.values())
    # pruning 99 % of the big layer hurts more than pruning 30 % of it
    big = max(ws.sizes, key=ws.sizes.__getitem__)
    assert curves.scores[big][2] <= curves.scores[big][0]
    assert path.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(path.with_suffix(".csv").read_text().splitlines()) == 1 + 3 * len(ws.layers)
    again, _, hit2 = load_or_scan(*args)
    assert hit2 and again == curves


def test_channel_sensitivity_prunes_the_searched_coupled_group(tmp_path: Path) -> None:
    """A channel curve prunes what the search prunes: the whole coupled group (every conv, norm and bias of the
    channel space), with the same channels as the search's own mask-maker picks for that group."""
    import copy

    import torch

    from autoprune.config.policy import FineTune, Granularity, Policy
    from autoprune.config.space import SearchSpace
    from autoprune.deploy.production import apply
    from autoprune.models.layers import layer_shapes, weight_of
    from autoprune.pruning.channels import groups_for
    from autoprune.pruning.criteria import importance
    from autoprune.pruning.sensitivity import prune_channel_group
    from autoprune.workspace import load_workspace
    from conftest import write_space

    space = SearchSpace.from_yaml(write_space(tmp_path / "r.yaml", model={"name": "resnet20", "kwargs": {"width": 8}},
                                              granularity={"kind": "channel"}, layers={"exclude": ["conv1"]},
                                              train={"epochs": 1}))
    ws = load_workspace(space, "cpu", tmp_path / "runs")
    shape = ws.splits.input_shape
    group = next(g for g in groups_for(ws.model, ws.layers, shape) if len(g.roots) > 1)  # a residual stage
    scores = importance(ws.model, ws.layers, "magnitude")
    m = copy.deepcopy(ws.model)
    prune_channel_group(m, group.roots[0], 0.5, ws.layers, scores, shape)
    zero = {name: set(torch.nonzero(weight_of(m, name).flatten(1).abs().sum(1) == 0).flatten().tolist())
            for name in group.roots}
    assert len(set(map(frozenset, zero.values()))) == 1 and len(next(iter(zero.values()))) == group.channels // 2
    channels = next(iter(zero.values()))
    for name in group.members:  # norms too: a BN after a zeroed filter would still emit its bias
        module = m.get_submodule(name)
        if isinstance(module, torch.nn.BatchNorm2d):
            assert all(float(module.weight[c]) == 0 and float(module.bias[c]) == 0 for c in channels)
    # the search's path (a policy with the group's roots at 0.5, no fine-tune) removes the same channels
    pol = Policy(model="resnet20", fingerprint=ws.fingerprint, shapes=layer_shapes(ws.model),
                 granularity=Granularity(kind="channel"), sparsity=dict.fromkeys(group.roots, 0.5),
                 finetune=FineTune(epochs=0, bn_batches=0))
    searched = apply(ws.model, pol, ws.splits, remove_channels=False, measure_latency=False).model
    for name in group.roots:
        w = weight_of(searched, name).flatten(1).abs().sum(1)
        assert set(torch.nonzero(w == 0).flatten().tolist()) == channels
