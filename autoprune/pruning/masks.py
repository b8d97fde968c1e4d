"""Masks as ``torch.nn.utils.parametrize`` parametrizations keyed by fully qualified module name.

``apply_masks`` registers ``weight = original * mask``; ``make_permanent`` squashes it into a plain weight.
For fine-tuning, :func:`folded_masks` temporarily bakes the masks into the weights and re-applies them once
per optimizer step, so training pays one fused ``_foreach_mul_`` per step instead of one parametrization
call per layer per forward (that per-forward Python overhead is ~10 % of a step on the small nets here).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.utils import parametrize

from autoprune.config.policy import BUILTIN_GRANULARITIES, Granularity
from autoprune.models.layers import out_by_in, unit_name, unit_site, weight_of
from autoprune.pruning.granularities import check_mask, granularity_for, row_mask, row_order

__all__ = ["FoldedMasks", "Mask", "apply_masks", "compute_mask", "current_masks", "folded_masks", "layer_sparsity",
           "make_permanent", "oriented_mask", "row_mask", "row_order"]


class Mask(nn.Module):
    """Parametrization ``w ↦ w · mask`` with the mask held as a buffer (saved in the state_dict).

    Pruned entries are exactly zero even where the underlying weight is not finite (``NaN · 0`` is NaN).
    """

    mask: torch.Tensor

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return torch.where(self.mask != 0, w * self.mask, torch.zeros((), dtype=w.dtype, device=w.device))


def compute_mask(score: torch.Tensor, ratio: float, granularity: Granularity, per_row: bool = False) -> torch.Tensor:
    """A 0/1 float mask shaped like ``score`` removing the lowest-scoring ``ratio`` of the weights (of each output
    row with ``per_row``: Wanda's comparison group), in the pattern of the granularity (see
    :mod:`autoprune.pruning.granularities`; a user's mask is checked for shape and 0/1 entries)."""
    pattern = granularity_for(granularity)
    mask = pattern.mask(score, ratio, per_row)
    return mask if granularity.kind in BUILTIN_GRANULARITIES else check_mask(granularity.kind, mask, score)


def oriented_mask(score: torch.Tensor, ratio: float, granularity: Granularity, per_row: bool,
                  transposed: bool) -> torch.Tensor:
    """:func:`compute_mask` for a weight stored (out, in), or (in, out) when ``transposed`` (Hugging Face Conv1D):
    rows, N:M groups and channels are always read along the output / input dimensions of a Linear."""
    return out_by_in(compute_mask(out_by_in(score, transposed), ratio, granularity, per_row), transposed).contiguous()


def _mask_param(module: nn.Module, param: str = "weight") -> Mask | None:
    if not parametrize.is_parametrized(module, param):
        return None
    for p in module.parametrizations[param]:  # type: ignore[index]
        if isinstance(p, Mask):
            return p
    return None


def _masked_sites(model: nn.Module) -> Iterator[tuple[str, nn.Module, str, Mask]]:
    """(unit FQN, module, parameter, mask) of every masked tensor: a layer's ``weight`` is named like the layer,
    an RNN matrix ``<rnn>.<parameter>`` (see :mod:`autoprune.models.layers`)."""
    for name, module in model.named_modules():
        for param in list(getattr(module, "parametrizations", {})):
            mask = _mask_param(module, param)
            if mask is None:
                continue
            yield unit_name(name, module, param), module, param, mask


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Attach (or tighten) the mask of each named unit; an existing mask is replaced in place."""
    for fqn, mask in masks.items():
        module, param = unit_site(model, fqn)
        existing = _mask_param(module, param)
        if existing is None:
            parametrize.register_parametrization(module, param, Mask(mask.detach().clone()))
        else:
            existing.mask.copy_(mask)


def current_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """The masks attached to the model, by unit FQN."""
    return {fqn: mask.mask for fqn, _, _, mask in _masked_sites(model)}


def make_permanent(model: nn.Module) -> None:
    """Squash every mask into a plain weight (zeros stay zeros); the model has no mask parametrizations after."""
    for _, module, param, _ in list(_masked_sites(model)):
        parametrize.remove_parametrizations(module, param, leave_parametrized=True)


class FoldedMasks:
    """Masks baked into plain weights; ``reapply()`` after each optimizer step keeps pruned weights at zero.

    ``masks`` holds the live mask tensors: tighten them in place (``copy_``) for the next pruning step.
    """

    def __init__(self, model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
        self.model = model
        self.masks = masks
        self.extras: dict[str, torch.Tensor] = {}  # other params held at zero (coupled filters, norms, biases)
        self._weights = [weight_of(model, f) for f in masks]
        self._mask_list = list(masks.values())

    def hold(self, param_fqn: str, mask: torch.Tensor) -> None:
        """Also keep parameter ``module.param`` masked (set once, tightened in place afterwards)."""
        if param_fqn in self.extras:
            self.extras[param_fqn].copy_(mask)
            return
        self.extras[param_fqn] = mask.clone()
        self._weights.append(self.model.get_parameter(param_fqn))
        self._mask_list.append(self.extras[param_fqn])

    @torch.no_grad()
    def reapply(self) -> None:
        """Zero the pruned weights again (one fused multiply over all layers)."""
        torch._foreach_mul_(self._weights, self._mask_list)


@contextmanager
def folded_masks(model: nn.Module) -> Iterator[FoldedMasks]:
    """Fine-tune-friendly view: parametrizations removed, masks re-applied by ``reapply()`` after each step.

    On exit the parametrizations are restored with the (possibly tightened) masks. Pruned weights are
    exactly zero in every forward pass inside the block as long as ``reapply`` follows each update.
    """
    masks = current_masks(model)
    make_permanent(model)
    folded = FoldedMasks(model, masks)
    folded.reapply()
    try:
        yield folded
    finally:
        apply_masks(model, masks)


def layer_sparsity(model: nn.Module, fqn: str) -> float:
    """Fraction of exactly-zero entries in a layer's (effective) weight."""
    w = weight_of(model, fqn)
    return float((w == 0).sum()) / w.numel()
