"""``regression``: mean-squared-error fine-tune; MSE (primary, ↓), MAE, R², loss."""

from __future__ import annotations

import torch
from torch import nn

from autoprune.tasks.base import Task
from autoprune.tasks.data import Split
from autoprune.tasks.training import predict

__all__ = ["RegressionTask"]


class RegressionTask(Task):
    """Float targets, one column or several; the model outputs one value per target column."""

    kind = "regression"
    primary = "mse"
    direction = "minimize"
    targets = "float"

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean squared error (targets of shape (N,) are compared with outputs of shape (N, 1))."""
        return nn.functional.mse_loss(outputs, targets.view_as(outputs))

    @torch.no_grad()
    def metrics(self, model: nn.Module, split: Split) -> dict[str, float]:
        """MSE, MAE and R² (1 − MSE / variance of the targets) over all target columns; loss = MSE."""
        out = predict(model, split.x)
        y = split.y.view_as(out).to(out.dtype)
        mse = float(nn.functional.mse_loss(out, y))
        variance = float(((y - y.mean(0)) ** 2).mean())
        return {"mse": mse, "mae": float((out - y).abs().mean()), "r2": 1.0 - mse / max(variance, 1e-12),
                "loss": mse}

    def chance_loss(self, split: Split) -> float:
        """The variance of the targets: the MSE of always predicting their mean."""
        y = split.y.to(torch.float32)
        return float(((y - y.mean(0)) ** 2).mean())

    def divergence(self, dense: torch.Tensor, pruned: torch.Tensor) -> float:
        """MSE between the outputs, relative to the dense outputs' variance (scale-free)."""
        variance = float(((dense - dense.mean(0)) ** 2).mean())
        return float(nn.functional.mse_loss(pruned, dense)) / max(variance, 1e-12)
