"""A user's own task, referenced as ``userpkg.tasks:MaeTask`` in tests: regression scored by mean absolute error."""

from __future__ import annotations

import torch
from torch import nn

from autoprune.tasks import RegressionTask
from autoprune.tasks.data import Split


class MaeTask(RegressionTask):
    """Fine-tunes on L1 and declares MAE (↓) its primary metric."""

    kind = "userpkg.tasks:MaeTask"
    primary = "mae"

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean absolute error."""
        return nn.functional.l1_loss(outputs, targets.view_as(outputs))

    def metrics(self, model: nn.Module, split: Split) -> dict[str, float]:
        """The regression metrics, with loss = MAE (what it fine-tunes on)."""
        out = super().metrics(model, split)
        return {**out, "loss": out["mae"]}
