"""``classification``: cross-entropy fine-tune; accuracy (primary, ↑), macro precision / recall / F1, loss."""

from __future__ import annotations

import math

import torch
from torch import nn

from autoprune.tasks.base import Task
from autoprune.tasks.data import Split
from autoprune.tasks.training import classification_metrics

__all__ = ["ClassificationTask"]


class ClassificationTask(Task):
    """Class labels 0..C-1; the model outputs C logits."""

    kind = "classification"
    primary = "accuracy"
    direction = "maximize"
    targets = "class"

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy."""
        return nn.functional.cross_entropy(outputs, targets)

    def metrics(self, model: nn.Module, split: Split) -> dict[str, float]:
        """Accuracy, macro precision / recall / F1 (over the classes present) and mean cross-entropy."""
        return classification_metrics(model, split, self.outputs)

    def chance_loss(self, split: Split) -> float:
        """ln C: the cross-entropy of a uniform guess."""
        return math.log(self.outputs)

    def divergence(self, dense: torch.Tensor, pruned: torch.Tensor) -> float:
        """Mean KL(dense ‖ pruned) of the class distributions."""
        return float(nn.functional.kl_div(torch.log_softmax(pruned, dim=1), torch.log_softmax(dense, dim=1),
                                          log_target=True, reduction="batchmean"))
