"""RIA, relative importance and activations (Zhang et al., ICLR 2024, "Plug-and-Play"): a weight matters when it is
large *relative to its row and to its column*, scaled by its input's activation norm:

    RIA_ij = (|W_ij| / Σ_k |W_ik| + |W_ij| / Σ_k |W_kj|) · ‖X_j‖₂^a,   a = 0.5,

compared within each output row, as Wanda is. The relative terms keep a whole input channel (a column) from being
pruned away, which Wanda's per-row comparison can do. One file: registering it here is all it takes
(``criteria: [ria]``).
"""

from __future__ import annotations

import torch

from autoprune.pruning.criteria import ActivationCriterion, register_criterion

__all__ = ["RIA", "RIA_POWER"]

RIA_POWER = 0.5  # the exponent a of the activation norm (the paper's default)


@register_criterion("ria")
class RIA(ActivationCriterion):
    """Relative importance × activation norm^a, compared within each output row."""

    def weigh(self, magnitudes: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        """(|W_ij| / Σ_k |W_ik| + |W_ij| / Σ_k |W_kj|) · ‖X_j‖₂^a."""
        w = magnitudes
        relative = w / w.sum(1, keepdim=True).clamp_min(1e-12) + w / w.sum(0, keepdim=True).clamp_min(1e-12)
        return relative * norms.pow(RIA_POWER)[None, :]
