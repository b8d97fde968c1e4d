"""RIA, relative importance and activations (Zhang et al., ICLR 2024, "Plug-and-Play"): a weight matters when it is
large *relative to its row and to its column*, scaled by its input's activation norm:

    RIA_ij = (|W_ij| / Σ_k |W_ik| + |W_ij| / Σ_k |W_kj|) · ‖X_j‖₂^a,   a = 0.5,

compared within each output row, as Wanda is. The relative terms keep a whole input channel (a column) from being
pruned away, which Wanda's per-row comparison can do. One file: registering it here is all it takes
(``criteria: [ria]``).
"""

from __future__ import annotations

import torch
from torch import nn

from autoprune.models.layers import is_transposed, out_by_in, weight_of
from autoprune.pruning.criteria import WANDA_WINDOWS, Criterion, input_norms, register_criterion
from autoprune.tasks.data import Split
from autoprune.tasks.training import LossFn

__all__ = ["RIA", "RIA_POWER"]

RIA_POWER = 0.5  # the exponent a of the activation norm (the paper's default)


@register_criterion("ria")
class RIA(Criterion):
    """Relative importance × activation norm^a, compared within each output row."""

    row_wise = True
    activations = True

    def scores(self, model: nn.Module, layers: list[str], data: Split | None, *, seed: int = 0,
               loss_fn: LossFn = nn.functional.cross_entropy) -> dict[str, torch.Tensor]:
        """RIA of every weight (computed on the out × in view, returned in the weight's own layout)."""
        assert data is not None
        norms = input_norms(model, layers, data.x[:WANDA_WINDOWS])
        out = {}
        for f in layers:
            transposed = is_transposed(model, f)
            w = out_by_in(weight_of(model, f).detach(), transposed).abs()
            relative = w / w.sum(1, keepdim=True).clamp_min(1e-12) + w / w.sum(0, keepdim=True).clamp_min(1e-12)
            out[f] = out_by_in(relative * norms[f].to(w.dtype).pow(RIA_POWER)[None, :], transposed)
        return out
