"""Granularities: which entries of one weight are removed together. One :class:`PruningGranularity` subclass each,
found by name in a registry (``@register_granularity("name")``, or ``package.module:Class`` as ``granularity.kind``),
like criteria, allocation rules and schedules; the built-ins (unstructured, nm, channel) are registered the same way.

A granularity turns a unit's importance scores and a ratio into a 0/1 mask, and may name extra storage formats its
pattern allows (N:M's kept values + small indices). A user's granularity reads its own ``granularity.options``
through the pydantic model it declares (a wrong option is one line naming it). Only ``channel`` is structured: whole
output channels, removed with their coupled groups (torch-pruning) and shrunk by ``apply`` — a structured user
granularity is refused, since that machinery knows output channels only.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from pydantic import BaseModel

from autoprune.config.policy import Granularity
from autoprune.plugins import NoOptions, Registry, validated_options

__all__ = ["FLOAT_BYTES", "GRANULARITIES", "Channel", "NoOptions", "NofM", "PruningGranularity", "Unstructured",
           "check_mask", "granularity_for", "register_granularity", "row_mask", "row_order"]

FLOAT_BYTES = 4  # bytes of one float32 value in the storage formats


class PruningGranularity(ABC):
    """How a unit's scores become a mask. Subclass it and implement :meth:`mask`; ``options`` is the pydantic model
    of ``granularity.options`` (validated when the space is checked, available as ``self.options``)."""

    name: ClassVar[str] = ""
    options_model: ClassVar[type[BaseModel]] = NoOptions
    structured: ClassVar[bool] = False  # whole output channels (built-in channel only; see the module docstring)

    def __init__(self, spec: Granularity, options: BaseModel) -> None:
        self.spec, self.options = spec, options

    @abstractmethod
    def mask(self, score: torch.Tensor, ratio: float, per_row: bool) -> torch.Tensor:
        """A 0/1 float mask shaped like ``score`` (read as (out, in, ...)) removing about ``ratio`` of the entries,
        the lowest-scoring first; ``per_row``: the criterion compares weights within each output row (Wanda)."""

    def formats(self, weight: torch.Tensor, kept: int) -> dict[str, int]:
        """Bytes of storage formats this pattern allows beyond dense/CSR/bitmask (none by default)."""
        return {}


GRANULARITIES: Registry[PruningGranularity] = Registry("granularity", PruningGranularity,
                                                       ("autoprune.pruning.granularities",))
register_granularity = GRANULARITIES.register


def granularity_for(spec: Granularity) -> PruningGranularity:
    """The granularity ``spec.kind`` names, with its validated options; a ValueError says what is wrong (unknown
    name, a module that does not import, a bad option, a structured user class)."""
    cls = GRANULARITIES.resolve(spec.kind)
    if cls.structured and cls is not Channel:
        raise ValueError(f"granularity '{spec.kind}': structured granularities other than channel are not supported "
                         "(its coupled groups and shrinking know output channels only)")
    options = validated_options(cls.options_model, spec.options, "granularity.options", f"granularity {spec.kind}")
    return cls(spec, options)


def row_order(score: torch.Tensor) -> torch.Tensor:
    """Each output row's weights from the lowest score to the highest (a stable sort: ties keep their order).
    Stored as int16 when a row is short enough (the level database keeps these for every unit)."""
    order = torch.sort(score.flatten(1), dim=1, stable=True).indices
    return order.to(torch.int16) if order.shape[1] <= torch.iinfo(torch.int16).max else order.to(torch.int32)


def row_mask(order: torch.Tensor, ratio: float) -> torch.Tensor:
    """The 0/1 mask (rows, columns) pruning the first ``round(ratio · columns)`` entries of each row's order."""
    k = round(ratio * order.shape[1])
    mask = torch.ones(order.shape, dtype=torch.float32, device=order.device)
    if k > 0:
        mask.scatter_(1, order[:, :k].long(), 0.0)
    return mask


@register_granularity("unstructured")
class Unstructured(PruningGranularity):
    """Single weights: the lowest ``ratio`` of the unit (of each output row with ``per_row``)."""

    def mask(self, score: torch.Tensor, ratio: float, per_row: bool) -> torch.Tensor:
        """The ``round(ratio · numel)`` lowest scores removed (per row: ``round(ratio · columns)`` of each row)."""
        if per_row:
            return row_mask(row_order(score), ratio).view_as(score)
        k = round(ratio * score.numel())
        mask = torch.ones(score.numel(), dtype=score.dtype, device=score.device)
        if k > 0:
            idx = torch.topk(score.flatten(), k, largest=False, sorted=False).indices
            mask[idx] = 0.0
        return mask.view_as(score)


@register_granularity("nm")
class NofM(PruningGranularity):
    """N of every M consecutive input weights kept (``granularity.n``/``m``; 2:4 runs on sparse tensor cores). The
    ratio is the pattern's: any ratio above 0 gives 1 − N/M, 0 leaves the unit dense."""

    def mask(self, score: torch.Tensor, ratio: float, per_row: bool) -> torch.Tensor:
        """The pattern's mask, or all ones at ratio 0; a trailing partial group stays dense."""
        if ratio <= 0:
            return torch.ones_like(score)
        n, m = self.spec.n, self.spec.m
        rows = score.flatten(1)
        usable = rows.shape[1] - rows.shape[1] % m
        mask = torch.ones_like(rows)
        if usable:
            groups = rows[:, :usable].reshape(rows.shape[0], -1, m)
            drop = torch.topk(groups, m - n, dim=2, largest=False).indices
            gmask = torch.ones_like(groups).scatter_(2, drop, 0.0)
            mask[:, :usable] = gmask.reshape(rows.shape[0], usable)
        return mask.view_as(score)

    def formats(self, weight: torch.Tensor, kept: int) -> dict[str, int]:
        """N:M: the kept values and a log2(M)-bit index each."""
        n, m = self.spec.n, self.spec.m
        values = weight.numel() * n // m
        return {"nm": values * FLOAT_BYTES + math.ceil(values * math.log2(m) / 8)}


@register_granularity("channel")
class Channel(PruningGranularity):
    """Whole output channels (filters), scored by their summed scores; at least one channel is kept."""

    structured = True

    def mask(self, score: torch.Tensor, ratio: float, per_row: bool) -> torch.Tensor:
        """The ``round(ratio · channels)`` lowest-scoring output channels removed (never all of them)."""
        per_channel = score.flatten(1).sum(1)
        k = min(round(ratio * per_channel.numel()), per_channel.numel() - 1)
        keep = torch.ones_like(per_channel)
        if k > 0:
            keep[torch.topk(per_channel, k, largest=False, sorted=False).indices] = 0.0
        return keep.view(-1, *([1] * (score.dim() - 1))).expand_as(score).contiguous()


def check_mask(kind: str, mask: Any, score: torch.Tensor) -> torch.Tensor:
    """``mask`` if it is a 0/1 tensor shaped like ``score``, else a ValueError naming the granularity."""
    if not isinstance(mask, torch.Tensor) or mask.shape != score.shape:
        raise ValueError(f"granularity {kind}: mask() must return a tensor shaped {tuple(score.shape)}")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"granularity {kind}: mask() must return 0/1 entries")
    return mask.to(score.dtype)
