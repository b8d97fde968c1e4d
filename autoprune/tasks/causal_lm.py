"""``causal_lm``: next-token cross-entropy; perplexity (primary, ↓), token accuracy, loss; KL to the dense model's
next-token distributions for the ladder's screening rung."""

from __future__ import annotations

import math

import torch
from torch import nn

from autoprune.tasks.base import Task
from autoprune.tasks.data import Split
from autoprune.tasks.training import predict

__all__ = ["CausalLMTask"]


class CausalLMTask(Task):
    """Token windows ``x`` (N, T) with next tokens ``y`` (N, T); the model returns logits (N, T, vocab)."""

    kind = "causal_lm"
    primary = "perplexity"
    direction = "minimize"
    targets = "tokens"

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy over every position."""
        return nn.functional.cross_entropy(outputs.flatten(0, 1), targets.flatten())

    @torch.no_grad()
    def metrics(self, model: nn.Module, split: Split) -> dict[str, float]:
        """Perplexity = exp(mean token NLL), token accuracy, and the NLL itself as ``loss``."""
        nll = total = correct = 0.0
        chunk = max(1, min(256, 2**24 // max(1, split.x.shape[1] * self.outputs)))  # logits of ≤ 2**24 numbers
        for i in range(0, len(split), chunk):
            logits = predict(model, split.x[i:i + chunk])
            y = split.y[i:i + chunk]
            nll += float(nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum"))
            correct += float((logits.argmax(-1) == y).sum())
            total += y.numel()
        loss = nll / max(total, 1)
        return {"perplexity": math.exp(min(loss, 50.0)), "token_accuracy": correct / max(total, 1), "loss": loss}

    def chance_loss(self, split: Split) -> float:
        """ln V: the cross-entropy of a uniform guess over the vocabulary."""
        return math.log(self.outputs)

    def reference(self, outputs: torch.Tensor) -> torch.Tensor:
        """The dense next-token log-probabilities in float16: half the memory of the logits, so a ladder's
        thousands of calibration tokens fit (2048 tokens × 49152 words: 0.2 GB). Rounding moves a log-probability
        by < 0.01 and moves every candidate's KL alike, so it does not change their ranking."""
        return torch.log_softmax(outputs.float(), dim=-1).half()

    def divergence(self, dense: torch.Tensor, pruned: torch.Tensor) -> float:
        """Mean KL(dense ‖ pruned) of the next-token distributions, per token (``dense``: :meth:`reference`)."""
        logp = dense.flatten(0, 1).float()
        logq = torch.log_softmax(pruned.flatten(0, 1), dim=-1)
        return float(nn.functional.kl_div(logq, logp, log_target=True, reduction="batchmean"))
