"""The ``Task`` base: the one place that knows how a model's outputs are trained and scored.

Written like Optuna's ``BaseSampler``: a small abstract base, a few built-ins (``classification``,
``regression``) and user tasks by ``package.module:callable``. A task receives the loaded data splits (it may
check them and learn what it needs, e.g. the number of classes) and then answers: the fine-tune loss, the
metrics of a split with one declared primary metric and its direction, the loss of a model that learned nothing
(the divergence guard's reference), and how far a pruned model's outputs are from the dense model's without any
fine-tune (cheap screening on the fidelity ladder's first rung).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from autoprune.tasks.data import Split, Splits

__all__ = ["Direction", "Task", "worst"]

Direction = Literal["maximize", "minimize"]


class Task(ABC):
    """How a model is fed and scored. Subclass it for your own; ``primary`` must be a key of :meth:`metrics`.

    Class attributes: ``kind`` (the name in ``task: {kind: ...}``), ``primary`` (e.g. ``accuracy``, ``mse``),
    ``direction`` of the primary metric, and ``targets``: what the data's ``y`` holds (``class`` labels 0..C-1,
    ``float`` values, or next ``tokens`` of text windows), which decides how the data are loaded and checked.
    """

    kind: ClassVar[str]
    primary: ClassVar[str]
    direction: ClassVar[Direction]
    targets: ClassVar[Literal["class", "float", "tokens"]] = "class"

    def __init__(self, splits: Splits, **options: Any) -> None:
        self.outputs = splits.num_classes  # the model's output width (classes, or regression targets)
        if options:
            raise TypeError(f"task '{self.kind}' takes no options (got {', '.join(options)})")

    @abstractmethod
    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """What fine-tuning minimises, for one batch (a scalar tensor)."""

    @abstractmethod
    def metrics(self, model: nn.Module, split: Split) -> dict[str, float]:
        """Every metric of ``model`` on ``split``; holds ``primary`` and ``loss``."""

    @abstractmethod
    def chance_loss(self, split: Split) -> float:
        """The loss of a model that learned nothing (a fine-tune whose loss grows far past it has diverged)."""

    @abstractmethod
    def divergence(self, dense: torch.Tensor, pruned: torch.Tensor) -> float:
        """How far the pruned model's outputs are from the dense model's on the same inputs (0 = identical);
        ``dense`` is what :meth:`reference` kept of the dense outputs, ``pruned`` the pruned model's outputs."""

    def reference(self, outputs: torch.Tensor) -> torch.Tensor:
        """What the divergence needs of the dense model's outputs, kept for every candidate (default: the
        outputs themselves; a language model keeps half-precision log-probabilities)."""
        return outputs

    @property
    def sign(self) -> float:
        """+1 when a higher primary metric is better, −1 when lower: ``sign · value`` is always higher-is-better."""
        return 1.0 if self.direction == "maximize" else -1.0

    def score(self, metrics: dict[str, float]) -> float:
        """The primary metric of a metrics dict."""
        return float(metrics[self.primary])

    def describe(self) -> str:
        """One line for tables and logs, e.g. ``classification: accuracy ↑``."""
        return f"{self.kind}: {self.primary} {'↑' if self.direction == 'maximize' else '↓'}"


def worst(direction: Direction) -> float:
    """The worst possible value of a metric with ``direction`` (for a candidate that could not be scored)."""
    return -math.inf if direction == "maximize" else math.inf
