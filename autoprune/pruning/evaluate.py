"""Score one candidate policy: prune a copy of the dense model, fine-tune briefly, measure everything."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize

from autoprune.config.policy import Policy
from autoprune.errors import DataError, FinetuneDiverged, PolicyError
from autoprune.models.layers import is_transposed, prunable_layers, weight_of
from autoprune.pruning.channels import group_keep, groups_for, member_masks, remove_zero_channels
from autoprune.pruning.criteria import CALIBRATION_WINDOWS, activation_problem, criterion_for, importance, row_wise
from autoprune.pruning.levels import LevelStore
from autoprune.pruning.masks import (
    FoldedMasks,
    apply_masks,
    folded_masks,
    layer_sparsity,
    make_permanent,
    oriented_mask,
)
from autoprune.pruning.metrics import latency_device, latency_ms, relative_to, size_metrics
from autoprune.pruning.schedules import ratios_per_step
from autoprune.pruning.sparsegpt import prune_model
from autoprune.tasks import ClassificationTask, Task
from autoprune.tasks.data import Splits
from autoprune.tasks.training import Distill, LossFn, predict, recalibrate_bn, seed_everything, train_epoch

__all__ = ["CandidateStopped", "DenseReference", "EpochCallback", "Evaluation", "check_diverged",
           "check_policy_layers", "evaluate", "prune_and_finetune", "prune_step", "shrunk_size"]

# on_epoch(epoch, val_score, size) -> True to stop this candidate now (called at final sparsity only)
EpochCallback = Callable[[int, float, float], bool]


@dataclass(frozen=True)
class Evaluation:
    """Everything measured for one candidate."""

    val: dict[str, float]  # the task's metrics on the validation split (classification: accuracy, f1, loss ...)
    size: dict[str, float]  # see metrics.size_metrics
    times: dict[str, float]  # seconds per phase: prune, finetune, measure, total
    epoch_losses: list[float] = field(default_factory=list)
    layer_sparsity: dict[str, float] = field(default_factory=dict)  # measured, per FQN
    test: dict[str, float] | None = None
    latency_ms: float | None = None
    latency_device: str | None = None  # where latency_ms was timed (cpu, cuda:0 (name))
    primary: str = "accuracy"  # the task's primary metric (a key of val)

    @property
    def accuracy(self) -> float:
        """Validation accuracy (classification)."""
        return self.val["accuracy"]

    @property
    def score(self) -> float:
        """The task's primary metric on the validation split (in its own direction; NaN on a token rung, which
        measures only the divergence)."""
        return self.val.get(self.primary, math.nan)

    def size_value(self, metric: str) -> float:
        """The size objective as a fraction of the dense model (``latency`` in ms)."""
        if metric == "latency":
            return float(self.latency_ms if self.latency_ms is not None else math.nan)
        return self.size[f"size_{metric}"]


class CandidateStopped(Exception):
    """Raised when ``on_epoch`` asks to stop: the candidate is hopeless; carries what was measured."""

    def __init__(self, epoch: int, score: float, elapsed_s: float, saved_s: float) -> None:
        super().__init__(f"stopped after epoch {epoch}: val score {score:.4g} (primary metric, higher is better)")
        self.epoch, self.score, self.elapsed_s, self.saved_s = epoch, score, elapsed_s, saved_s


def check_policy_layers(model: nn.Module, policy: Policy) -> list[str]:
    """The policy's layers, after checking that every one is a prunable layer of ``model``."""
    layers = prunable_layers(model)
    unknown = [f for f in policy.sparsity if f not in layers]
    if unknown:
        raise PolicyError(f"policy names layer(s) the model does not have: {', '.join(unknown)} "
                          f"(prunable: {', '.join(layers)})")
    return list(policy.sparsity)


def prune_step(model: nn.Module, folded: FoldedMasks, ratios: dict[str, float], policy: Policy,
               splits: Splits, seed: int, loss_fn: LossFn = nn.functional.cross_entropy,
               levels: LevelStore | None = None) -> None:
    """Tighten the live masks to ``ratios`` using the policy's criterion and granularity. ``levels``: the dense
    model's level database, used when it holds this criterion's orders (the model must still be dense)."""
    store = levels.select(policy, ratios) if levels is not None and policy.granularity.kind == "unstructured" else None
    if store is not None:  # a store of this criterion and calibration holding these ratios: what direct pruning gives
        store.prune_into(model, folded, ratios)
        return
    if criterion_for(policy.criterion).updates_weights:  # SparseGPT
        _prune_sparsegpt(model, folded, ratios, policy, splits)
        return
    scores = importance(model, list(ratios), policy.criterion, splits.train, seed=seed, loss_fn=loss_fn)
    if policy.granularity.kind == "channel":
        _prune_channels(model, folded, ratios, scores, splits)
    else:
        per_row = row_wise(policy.criterion)
        for fqn, ratio in ratios.items():
            folded.masks[fqn].copy_(oriented_mask(scores[fqn], ratio, policy.granularity, per_row,
                                                  is_transposed(model, fqn)))
    folded.reapply()


def _prune_sparsegpt(model: nn.Module, folded: FoldedMasks, ratios: dict[str, float], policy: Policy,
                     splits: Splits) -> None:
    """SparseGPT: each Linear's mask and its remaining weights' update from its inputs' Hessian on the first
    calibration windows of the train split (as Wanda's): the dense model's, or block by block the pruned model's
    (``policy.calibration``)."""
    problem = activation_problem(model, list(ratios), "sparsegpt")
    if policy.granularity.kind not in ("unstructured", "nm"):
        problem = f"sparsegpt chooses its mask while it updates the weights: granularity unstructured or nm, not " \
                  f"{policy.granularity.kind}"
    if problem:
        raise PolicyError(problem)
    keep = prune_model(model, ratios, splits.train.x[:CALIBRATION_WINDOWS], policy.granularity,
                       sequential=policy.calibration == "sequential", reference=policy.calibration_reference)
    with torch.no_grad():
        for fqn, kept in keep.items():
            folded.masks[fqn].copy_(kept)
    folded.reapply()


def _prune_channels(model: nn.Module, folded: FoldedMasks, ratios: dict[str, float],
                    scores: dict[str, torch.Tensor], splits: Splits) -> None:
    """Zero whole coupled channel groups (see :mod:`autoprune.pruning.channels`)."""
    layers = list(ratios)
    sizes = {f: weight_of(model, f).numel() for f in layers}
    for group in groups_for(model, layers, splits.input_shape):
        keep = group_keep(group, ratios, scores, sizes)
        for param, mask in member_masks(model, group, keep).items():
            layer, _, p_name = param.rpartition(".")
            if p_name == "weight" and layer in folded.masks:
                folded.masks[layer].copy_(mask)
            else:
                folded.hold(param, mask)


def _epoch_plan(epochs: float, steps: int, batches_per_epoch: int) -> list[list[int | None]]:
    """For each pruning step, the optimizer-step cap of each epoch (None = full epoch)."""
    per = epochs / steps
    plan: list[list[int | None]] = []
    for _ in range(steps):
        full, frac = int(per), per - int(per)
        caps: list[int | None] = [None] * full
        if frac > 1e-9:
            caps.append(max(1, round(frac * batches_per_epoch)))
        plan.append(caps)
    return plan


def check_diverged(loss: float, start: float, epoch: int, lr: float, factor: float = 10.0) -> None:
    """Raise :class:`FinetuneDiverged` when an epoch's mean loss is not finite or exceeds ``factor`` × ``start``:
    the pruned model's loss before fine-tuning, or chance level (ln C) when that is higher, so that the noise of
    a nearly dense model's tiny loss is not taken for divergence."""
    if not math.isfinite(loss) or loss > factor * start:
        raise FinetuneDiverged(f"fine-tune diverged at epoch {epoch}: training loss {loss:.4g} (reference "
                               f"{start:.4g}: before the fine-tune, or chance level); lower the LR ({lr:g})")


def _total_steps(plan: list[list[int | None]], batches_per_epoch: int) -> int:
    """Optimizer steps of a whole fine-tune plan (for the LR decay)."""
    return sum(batches_per_epoch if cap is None else min(cap, batches_per_epoch) for caps in plan for cap in caps)


def _after_step(folded: FoldedMasks, opt: torch.optim.Optimizer, decay: str, total: int) -> Callable[[], None]:
    """After each optimizer step: re-apply the masks and, for ``cosine``, decay the LR toward 0 over ``total``."""
    if decay == "constant":
        return folded.reapply
    base = [g["lr"] for g in opt.param_groups]
    done = [0]

    def step() -> None:
        folded.reapply()
        done[0] += 1
        scale = 0.5 * (1.0 + math.cos(math.pi * min(done[0] / max(total, 1), 1.0)))
        for g, lr in zip(opt.param_groups, base, strict=True):
            g["lr"] = lr * scale

    return step


def prune_and_finetune(model: nn.Module, policy: Policy, splits: Splits, seed: int = 0,
                       on_epoch: EpochCallback | None = None, size_hint: float = 1.0,
                       progress: Callable[[], None] | None = None, task: Task | None = None,
                       levels: LevelStore | None = None) -> tuple[list[float], dict[str, float]]:
    """In place: mask ``model`` per the policy's schedule, fine-tuning between steps on the task's loss
    (classification when no task is given); the first step may take its masks from ``levels``. Returns (losses,
    times)."""
    task = task or ClassificationTask(splits)
    layers = check_policy_layers(model, policy)
    ft = policy.finetune
    # the teacher: the model as it comes in (dense), frozen
    distill = Distill(copy.deepcopy(model), ft.distill, ft.temperature) if ft.distill > 0 and ft.epochs > 0 else None
    apply_masks(model, {f: torch.ones_like(weight_of(model, f)) for f in layers})
    gen = seed_everything(seed)
    steps = ratios_per_step(policy.sparsity, policy.schedule)
    per_epoch = math.ceil(len(splits.train) / ft.batch_size)
    plan = _epoch_plan(ft.epochs, len(steps), per_epoch)
    t_prune = t_ft = 0.0
    losses: list[float] = []
    start_loss: float | None = None
    t_start = time.perf_counter()
    with folded_masks(model) as folded:
        opt = torch.optim.Adam(model.parameters(), lr=ft.lr)
        after_step = _after_step(folded, opt, ft.decay, _total_steps(plan, per_epoch))
        for i, (ratios, caps) in enumerate(zip(steps, plan, strict=True)):
            t0 = time.perf_counter()
            prune_step(model, folded, ratios, policy, splits, seed + i, task.loss, levels if i == 0 else None)
            t1 = time.perf_counter()
            t_prune += t1 - t0
            for e, cap in enumerate(caps):
                if start_loss is None:  # the pruned model's loss before any fine-tune step
                    start_loss = float(task.loss(predict(model, splits.train.x[:ft.batch_size]),
                                                 splits.train.y[:ft.batch_size]))
                losses.append(train_epoch(model, splits.train, opt, ft.batch_size, gen, after_step, cap,
                                          loss_fn=task.loss, distill=distill))
                check_diverged(losses[-1], max(start_loss, task.chance_loss(splits.train)), len(losses), ft.lr)
                if progress is not None:
                    progress()
                if on_epoch is not None and i == len(steps) - 1 and e == 0:
                    score = task.sign * task.score(task.metrics(model, splits.val))  # higher is better
                    if on_epoch(len(losses), score, size_hint):
                        elapsed = time.perf_counter() - t_start
                        done = len(losses) / max(sum(len(c) for c in plan), 1)
                        raise CandidateStopped(len(losses), score, elapsed, elapsed * (1 / max(done, 1e-9) - 1))
            t_ft += time.perf_counter() - t1
    return losses, {"prune": t_prune, "finetune": t_ft}


def evaluate(model: nn.Module, policy: Policy, splits: Splits, *, seed: int | None = None,
             on_epoch: EpochCallback | None = None, size_hint: float = 1.0, bn_batches: int | None = None,
             measure_latency: bool = False, with_test: bool = False, epochs: float | None = None,
             reference: DenseReference | None = None, task: Task | None = None,
             levels: LevelStore | None = None, tokens: int | None = None) -> Evaluation:
    """Prune a deep copy of the dense ``model`` under ``policy``, fine-tune, recalibrate BN, and measure.

    ``seed`` and ``bn_batches`` default to the policy's recipe (so ``apply`` reproduces the result);
    ``epochs`` shortens the fine-tune (a lower rung of the fidelity ladder; 0 = no fine-tune); ``reference``
    adds the divergence of the pruned model's outputs from the dense model's on calibration inputs (the task's:
    KL for classification), stored as ``kl_to_dense``. ``task`` scores the model (classification when None).
    ``levels``: the dense model's level database (one-shot masks without a calibration pass per candidate).
    ``tokens``: a token-ladder rung: measure only ``kl_to_dense`` on that many calibration tokens of ``reference``
    (no validation metrics: the rung ranks by the divergence alone).
    """
    if tokens is not None and reference is None:
        raise ValueError("a token rung measures the divergence to the dense model: give its reference")
    task = task or ClassificationTask(splits)
    ft = policy.finetune
    seed = ft.seed if seed is None else seed
    bn_batches = ft.bn_batches if bn_batches is None else bn_batches
    if epochs is not None:
        policy = policy.model_copy(update={"finetune": ft.model_copy(update={"epochs": epochs})})
    t0 = time.perf_counter()
    m = copy.deepcopy(model)
    losses, times = prune_and_finetune(m, policy, splits, seed, on_epoch, size_hint, task=task, levels=levels)
    broken = [n for n, p in m.named_parameters() if not bool(torch.isfinite(p).all())]
    if broken:
        raise FinetuneDiverged(f"fine-tune left non-finite weights in {', '.join(broken[:3])}; lower the LR")
    t1 = time.perf_counter()
    recalibrate_bn(m, splits.train, bn_batches, policy.finetune.batch_size, seed)
    with parametrize.cached():  # each masked weight computed once for all the measuring passes, not per forward
        val = task.metrics(m, splits.val) if tokens is None else {}
        if reference is not None:
            val["kl_to_dense"] = reference.divergence(m, tokens)
        test = task.metrics(m, splits.test) if with_test else None
        sparsity = {f: layer_sparsity(m, f) for f in policy.sparsity}
        size = size_metrics(m, policy.granularity, splits.input_shape, splits.input_dtype)
    if policy.granularity.kind == "channel":
        size = shrunk_size(m, model, policy, splits.input_shape, size)
    latency = latency_ms(m, splits.input_shape, dtype=splits.input_dtype) if measure_latency else None
    device = latency_device(m) if measure_latency else None
    t2 = time.perf_counter()
    times.update(measure=t2 - t1, total=t2 - t0)
    return Evaluation(val=val, size=size, times=times, epoch_losses=losses, layer_sparsity=sparsity,
                      test=test, latency_ms=latency, latency_device=device, primary=task.primary)


def shrunk_size(m: nn.Module, dense: nn.Module, policy: Policy, input_shape: tuple[int, ...],
                masked: dict[str, float]) -> dict[str, float]:
    """Size of channel-pruned ``m`` once its zeroed channels are removed (in place, as ``apply`` does), as
    fractions of the dense model: the consumers' input slices of a removed channel go too, so this is the size
    the user gets, not the masked model's nonzero count."""
    make_permanent(m)
    remove_zero_channels(m, groups_for(dense, list(policy.sparsity), input_shape), input_shape)
    size = relative_to(size_metrics(m, policy.granularity, input_shape),
                       size_metrics(dense, policy.granularity, input_shape))
    size["sparsity"] = masked["sparsity"]
    return size


@dataclass(frozen=True)
class DenseReference:
    """The dense model's outputs on fixed calibration inputs, to score a pruned copy without fine-tuning."""

    inputs: torch.Tensor
    outputs: torch.Tensor  # what the task's ``reference`` keeps of the dense outputs (LM: float16 log-probs)
    task: Task

    @classmethod
    def of(cls, model: nn.Module, splits: Splits, n: int = 256, task: Task | None = None,
           tokens: int | None = None, held_out: bool = False) -> DenseReference:
        """Cache the dense outputs on the first ``n`` training examples (the search's calibration set), fewer when
        they would exceed 2**26 numbers (a language model's logits: windows × tokens × vocabulary). ``tokens``: a
        token ladder's largest rung; the windows that hold that many tokens instead (up to 2**30 numbers).
        ``held_out``: start after the pruner's calibration windows (text its level weights were not fitted on)."""
        task = task or ClassificationTask(splits)
        skip = CALIBRATION_WINDOWS if held_out else 0
        x = splits.train.x[skip:]
        per_example = splits.num_classes * _tokens_per_example(x)
        if tokens is not None:
            n, cap = math.ceil(tokens / _tokens_per_example(x)), 2**30
            if n > len(x):
                where = f"after its {skip} calibration windows " if skip else ""
                raise DataError(f"ladder.tokens: the largest rung asks {tokens} tokens ({n} windows) but the train "
                                f"split holds {len(x)} windows {where}(give fewer tokens or more text)")
        else:
            cap = 2**26
        x = x[:max(1, min(n, cap // max(per_example, 1)))]
        chunk = _chunk(per_example)
        with torch.no_grad():
            outputs = torch.cat([task.reference(predict(model, x[i:i + chunk])) for i in range(0, len(x), chunk)])
        return cls(x, outputs, task)

    @property
    def tokens(self) -> int:
        """The calibration tokens held (examples × tokens per example; examples for other inputs)."""
        return len(self.inputs) * _tokens_per_example(self.inputs)

    def examples_for(self, tokens: int | None) -> int:
        """How many of the first calibration examples hold ``tokens`` tokens (all of them for None)."""
        return len(self.inputs) if tokens is None else max(1, math.ceil(tokens / _tokens_per_example(self.inputs)))

    @torch.no_grad()
    def divergence(self, model: nn.Module, tokens: int | None = None) -> float:
        """The task's divergence of the pruned outputs from the dense ones (classification: mean KL(dense ‖
        pruned) of the class distributions; 0 = same outputs), on every calibration example or on the first ones
        that hold ``tokens`` tokens (a rung of the token ladder), averaged over chunks of equal-sized examples."""
        n = self.examples_for(tokens)
        if n > len(self.inputs):
            raise ValueError(f"{tokens} calibration tokens asked; the dense reference holds {self.tokens}")
        chunk = _chunk(self.outputs[0].numel())
        total = 0.0
        for i in range(0, n, chunk):
            j = min(i + chunk, n)
            total += (j - i) * self.task.divergence(self.outputs[i:j], predict(model, self.inputs[i:j]))
        return total / n


def _tokens_per_example(x: torch.Tensor) -> int:
    """Tokens in one example: a window's length for token ids (integers, N × T), else 1."""
    return int(x.shape[1]) if x.dim() == 2 and not x.is_floating_point() else 1


def _chunk(per_example: int) -> int:
    """Examples per forward pass so that one chunk's outputs stay under 2**24 numbers (64 MB of float32)."""
    return max(1, 2**24 // max(per_example, 1))
