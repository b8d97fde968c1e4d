"""Channel (filter) pruning that respects coupling, via torch-pruning's dependency graph (DepGraph).

A residual network ties the output channels of several layers together (a block's ``conv2``, its BN, the
shortcut and every other block of the stage add into one stream). Zeroing one filter alone would leave the
channel alive through its neighbours (and a BN after a zeroed filter still emits its bias). So channels are
chosen per *coupled group*: every out-channel member of the group (convs, linears, norms, their biases) is
zeroed at the same indices. The masked model is then exactly the model that ``remove_zero_channels`` later
shrinks physically with torch-pruning.

Depthwise convolutions (groups == channels) join the group of the layer that feeds them (DepGraph couples their
input and output channels). A grouped convolution (1 < groups < channels, ResNeXt style) keeps ``groups`` equal
blocks of channels, in and out: its channel space is pruned at the *same* positions in every block (each block's
scores summed per position), the layout torch-pruning removes them in, so the shrunk conv stays valid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from autoprune.models.layers import PRUNABLE_TYPES, architecture_fingerprint, weight_of

__all__ = ["ChannelGroup", "build_groups", "group_keep", "groups_for", "member_masks", "remove_zero_channels"]

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


@dataclass(frozen=True)
class ChannelGroup:
    """Layers whose output channels must be pruned together."""

    roots: tuple[str, ...]  # the selected (searched) layers in this group
    members: tuple[str, ...]  # every module whose outputs live in this channel space (incl. roots)
    channels: int
    blocks: int = 1  # equal channel blocks a grouped conv in this space needs (prune the same positions in each)


def _out_members(model: nn.Module, group: tp.Group, names: dict[int, str], channels: int) -> list[str]:
    out = []
    for item in group.items:
        dep, idxs = item.dep, item.idxs
        module = dep.target.module
        if getattr(dep.handler, "__name__", "") != "prune_out_channels" or len(idxs) != channels:
            continue
        if isinstance(module, (*PRUNABLE_TYPES, *_NORMS)) and id(module) in names:
            out.append(names[id(module)])
    return sorted(set(out))


def _grouped(module: nn.Module) -> int:
    """``groups`` of a grouped (not depthwise) convolution, else 1."""
    if not isinstance(module, nn.modules.conv._ConvNd) or module.groups == 1:
        return 1
    return 1 if module.groups == module.in_channels == module.out_channels else int(module.groups)


def _blocks(group: tp.Group, channels: int) -> int:
    """The least number of equal blocks every grouped conv reading or writing this channel space needs."""
    blocks = 1
    for item in group.items:
        if len(item.idxs) == channels:
            blocks = math.lcm(blocks, _grouped(item.dep.target.module))
    return blocks


def _graph(model: nn.Module, input_shape: tuple[int, ...]) -> tp.DependencyGraph:
    device = next(model.parameters()).device
    return tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros((1, *input_shape), device=device))


def _out_channel_group(dg: tp.DependencyGraph, module: nn.Module, idxs: list[int]) -> tp.Group:
    handler = tp.prune_linear_out_channels if isinstance(module, nn.Linear) else tp.prune_conv_out_channels
    return dg.get_pruning_group(module, handler, idxs=idxs)


def build_groups(model: nn.Module, layers: list[str], input_shape: tuple[int, ...]) -> list[ChannelGroup]:
    """Coupled channel groups of the selected layers (a layer appears in exactly one group)."""
    dg = _graph(model, input_shape)
    names = {id(m): n for n, m in model.named_modules()}
    groups: dict[tuple[str, ...], list[str]] = {}
    sizes: dict[tuple[str, ...], tuple[int, int]] = {}
    for fqn in layers:
        channels = weight_of(model, fqn).shape[0]
        group = _out_channel_group(dg, model.get_submodule(fqn), list(range(channels)))
        key = tuple(_out_members(model, group, names, channels))
        groups.setdefault(key, []).append(fqn)
        sizes[key] = (channels, _blocks(group, channels))
    return [ChannelGroup(tuple(roots), key, *sizes[key]) for key, roots in groups.items()]


_CACHE: dict[tuple[str, tuple[str, ...], tuple[int, ...]], list[ChannelGroup]] = {}


def groups_for(model: nn.Module, layers: list[str], input_shape: tuple[int, ...]) -> list[ChannelGroup]:
    """``build_groups`` memoised by architecture (groups are plain names, valid for every copy of the model)."""
    key = (architecture_fingerprint(model), tuple(layers), tuple(input_shape))
    if key not in _CACHE:
        _CACHE[key] = build_groups(model, layers, input_shape)
    return _CACHE[key]


def group_keep(group: ChannelGroup, ratios: dict[str, float], scores: dict[str, torch.Tensor],
               sizes: dict[str, int]) -> torch.Tensor:
    """0/1 vector over the group's channels: the lowest-scoring ``ratio`` share removed.

    The group's ratio is the weight-count-weighted mean of its roots' ratios; a channel's score is the sum of
    the roots' per-weight scores over that output channel. At least one channel is always kept.
    """
    total = sum(sizes[r] for r in group.roots)
    ratio = sum(ratios.get(r, 0.0) * sizes[r] for r in group.roots) / total
    score = sum(scores[r].flatten(1).sum(1) for r in group.roots)
    assert isinstance(score, torch.Tensor)
    per_block = group.channels // group.blocks
    local = score.view(group.blocks, per_block).sum(0)  # one score per position within a block
    keep = torch.ones(per_block, device=score.device)
    k = min(round(ratio * per_block), per_block - 1)
    if k > 0:
        keep[torch.topk(local, k, largest=False, sorted=False).indices] = 0.0
    return keep.repeat(group.blocks)


def member_masks(model: nn.Module, group: ChannelGroup, keep: torch.Tensor) -> dict[str, torch.Tensor]:
    """Masks for every parameter of the group's members (weights and biases), keyed ``module.param``."""
    out = {}
    for name in group.members:
        module = model.get_submodule(name)
        for p_name in ("weight", "bias"):
            p = getattr(module, p_name, None)
            if isinstance(p, torch.Tensor):
                shape = (-1, *([1] * (p.dim() - 1)))
                out[f"{name}.{p_name}"] = keep.view(shape).expand_as(p).contiguous().to(p.dtype)
    return out


def remove_zero_channels(model: nn.Module, groups: list[ChannelGroup], input_shape: tuple[int, ...]) -> int:
    """Physically remove channels that are zero in a group's first root (torch-pruning); returns channels removed."""
    dg = _graph(model, input_shape)
    removed = 0
    for group in groups:
        w = weight_of(model, group.roots[0])
        idxs = [i for i in range(w.shape[0]) if not torch.any(w[i] != 0)]
        if not idxs or len(idxs) >= w.shape[0]:
            continue
        pg = _out_channel_group(dg, model.get_submodule(group.roots[0]), idxs)
        if dg.check_pruning_group(pg):
            pg.prune()
            removed += len(idxs)
    return removed
