"""A user's own criterion and allocation rule, referenced from a space as ``userpkg.extensions:...`` in tests."""

from __future__ import annotations

import torch
from torch import nn

from autoprune.models.layers import weight_of
from autoprune.pruning.criteria import Criterion
from autoprune.pruning.rules import AllocationRule
from autoprune.tasks.data import Split
from autoprune.tasks.training import LossFn


class SquaredMagnitude(Criterion):
    """w² (ranks like magnitude; a stand-in for any score a user has)."""

    needs_data = False

    def scores(self, model: nn.Module, layers: list[str], data: Split | None, *, seed: int = 0,
               loss_fn: LossFn = nn.functional.cross_entropy) -> dict[str, torch.Tensor]:
        """w² of every weight."""
        return {f: weight_of(model, f).detach().pow(2) for f in layers}


class FirstLayerDense(AllocationRule):
    """Keep the first unit dense, prune the others uniformly (autoprune projects it onto the target)."""

    def ratios(self, model: nn.Module, layers: list[str], target: float) -> dict[str, float]:
        """0 for the first unit, ``target`` elsewhere."""
        return {f: 0.0 if i == 0 else target for i, f in enumerate(layers)}
