"""Plain, fast training and evaluation loops over in-memory tensors.

Batches are sliced from tensors already on the device with a seeded permutation (no DataLoader: for the
small data sets used here its per-batch worker/collate overhead would dominate the step time).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from autoprune.errors import ConfigError
from autoprune.tasks.data import Split

__all__ = [
    "SMALL_MODEL",
    "Distill",
    "LossFn",
    "StepHook",
    "choose_threads",
    "classification_metrics",
    "distillation_loss",
    "fit",
    "has_batchnorm",
    "predict",
    "recalibrate_bn",
    "resolve_device",
    "seed_everything",
    "train_epoch",
]

StepHook = Callable[[], None]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (outputs, targets) -> scalar (a Task's loss)


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch's global RNG and return a dedicated generator for batch order."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(softmax(teacher / T) ‖ softmax(student / T)), averaged over every distribution (the last dimension
    holds the classes or the vocabulary: (B, C) or (B, T, V) logits)."""
    s = nn.functional.log_softmax(student.flatten(0, -2) / temperature, dim=-1)
    t = nn.functional.log_softmax(teacher.flatten(0, -2) / temperature, dim=-1)
    return nn.functional.kl_div(s, t, log_target=True, reduction="batchmean") * temperature ** 2


class Distill:
    """The dense model as teacher: ``weight`` of the loss is the distillation term at ``temperature``."""

    def __init__(self, teacher: nn.Module, weight: float, temperature: float) -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        self.weight, self.temperature = weight, temperature

    def loss(self, task_loss: torch.Tensor, student: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(1 − weight)·task loss + weight·distillation loss against the teacher's outputs on ``x``."""
        with torch.no_grad():
            teacher = self.teacher(x)
        return (1.0 - self.weight) * task_loss + self.weight * distillation_loss(student, teacher, self.temperature)


def train_epoch(model: nn.Module, data: Split, opt: torch.optim.Optimizer, batch_size: int,
                gen: torch.Generator, after_step: StepHook | None = None, max_steps: int | None = None,
                loss_fn: LossFn = nn.functional.cross_entropy, distill: Distill | None = None) -> float:
    """One pass of SGD-style training on ``loss_fn`` (the task's loss; cross-entropy by default), blended with
    ``distill``'s term when given; ``after_step`` runs after every optimizer step (mask reapply)."""
    model.train()
    perm = torch.randperm(len(data), generator=gen).to(data.x.device)
    total, steps = 0.0, 0
    for start in range(0, len(data), batch_size):
        if max_steps is not None and steps >= max_steps:
            break
        idx = perm[start:start + batch_size]
        opt.zero_grad(set_to_none=True)
        out = model(data.x[idx])
        loss = loss_fn(out, data.y[idx])
        if distill is not None:
            loss = distill.loss(loss, out, data.x[idx])
        loss.backward()
        opt.step()
        if after_step is not None:
            after_step()
        total += float(loss.detach())
        steps += 1
    return total / max(steps, 1)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Logits for ``x`` in eval mode."""
    model.eval()
    return torch.cat([model(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])


@torch.no_grad()
def classification_metrics(model: nn.Module, data: Split, num_classes: int) -> dict[str, float]:
    """Accuracy, macro precision / recall / F1 and mean cross-entropy loss."""
    logits = predict(model, data.x)
    loss = float(nn.functional.cross_entropy(logits, data.y))
    pred = logits.argmax(1)
    conf = torch.bincount(data.y * num_classes + pred, minlength=num_classes * num_classes)
    conf = conf.reshape(num_classes, num_classes).double()
    tp = conf.diag()
    precision = tp / conf.sum(0).clamp(min=1)
    recall = tp / conf.sum(1).clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    present = conf.sum(1) > 0  # macro averages over classes present in this split
    return {
        "accuracy": float(tp.sum() / conf.sum()),
        "precision": float(precision[present].mean()),
        "recall": float(recall[present].mean()),
        "f1": float(f1[present].mean()),
        "loss": loss,
    }


def has_batchnorm(model: nn.Module) -> bool:
    """Whether the model holds any BatchNorm layer."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def recalibrate_bn(model: nn.Module, data: Split, batches: int, batch_size: int, seed: int = 0) -> None:
    """Re-estimate BatchNorm running statistics on a few training batches (after pruning shifts them)."""
    if batches <= 0 or not has_batchnorm(model):
        return
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
    model.train()
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(data), generator=gen).to(data.x.device)
    for b in range(batches):
        idx = perm[b * batch_size:(b + 1) * batch_size]
        if idx.numel() == 0:
            break
        model(data.x[idx])
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = 0.1
    model.eval()


def fit(model: nn.Module, data: Split, epochs: int, lr: float, batch_size: int, seed: int,
        weight_decay: float = 0.0, on_epoch: Callable[[int, float], None] | None = None,
        loss_fn: LossFn = nn.functional.cross_entropy) -> list[float]:
    """Train from the current weights with Adam on ``loss_fn``; returns the per-epoch mean training loss."""
    gen = seed_everything(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    losses = []
    for epoch in range(epochs):
        losses.append(train_epoch(model, data, opt, batch_size, gen, loss_fn=loss_fn))
        if on_epoch is not None:
            on_epoch(epoch, losses[-1])
    return losses


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → CUDA when present, else CPU; otherwise the named device (a clear error when it is unknown or
    absent, e.g. ``cuda`` on a CPU-only build)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device '{name}': not a device torch knows (auto, cpu, cuda, cuda:1, mps …)") from None
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise ConfigError(f"--device '{name}': no such CUDA device here (this torch sees "
                          f"{torch.cuda.device_count()}); use --device auto or cpu")
    return dev


SMALL_MODEL = 5_000_000  # parameters: below this a torch op is too short to gain from intra-op threads


def choose_threads(model: nn.Module, workers: int = 1, requested: int | None = None) -> int:
    """Set and return torch's intra-op thread count: ``requested`` if given; else 1 for a small model (its ops
    are too short to split, and on a busy machine extra threads only wait: measured 12× slower with 2 threads
    than with 1 on the digits CNN beside two busy processes), else the cores shared among ``workers``."""
    import os

    if requested is None:
        n_params = sum(p.numel() for p in model.parameters())
        requested = 1 if n_params < SMALL_MODEL else max(1, (os.cpu_count() or 1) // max(workers, 1))
    torch.set_num_threads(requested)
    return requested
