"""Screening a one-shot candidate at the cost of a forward pass: its pruned weights are written into ONE working
copy of the dense model, in place, from the level stores (no deep copy, no parametrization, no calibration pass).

The working model remembers each unit's current level, so a candidate only rewrites the units whose level
changed since the last one. The dense model is never written (tested). Token rungs measure only the divergence to
the dense outputs; the last rung adds the validation metrics and the size (counted on the assembled weights, as
on a directly pruned model).
"""

from __future__ import annotations

import copy
import time

import torch
from torch import nn

from autoprune.config.policy import Policy
from autoprune.models.layers import weight_of
from autoprune.pruning.evaluate import DenseReference, Evaluation
from autoprune.pruning.levels import LevelStore
from autoprune.pruning.masks import layer_sparsity
from autoprune.pruning.metrics import size_metrics
from autoprune.tasks import Task
from autoprune.tasks.data import Splits

__all__ = ["LevelAssembler"]


class LevelAssembler:
    """One working copy of ``dense`` whose units are set to a candidate's levels in place."""

    def __init__(self, dense: nn.Module, stores: dict[str, LevelStore]) -> None:
        self.dense, self.stores = dense, stores
        self.model = copy.deepcopy(dense).eval()
        self.current: dict[str, tuple[str, int, float]] = {}  # fqn -> (criterion, store id, ratio) now written
        self._has_norm_stats = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in dense.modules())

    def fits(self, policy: Policy, epochs: float) -> bool:
        """Whether ``policy`` at ``epochs`` can be assembled: no fine-tune, one-shot, unstructured, no BatchNorm
        to recalibrate, and a store of its criterion holding its calibration and every ratio."""
        store = self.stores.get(policy.criterion)
        return (store is not None and epochs == 0 and not self._has_norm_stats
                and policy.granularity.kind == "unstructured" and policy.schedule.kind == "oneshot"
                and store.select(policy) is not None)

    @torch.no_grad()
    def assemble(self, policy: Policy) -> int:
        """Write the policy's units into the working model; every other unit back to dense. Returns how many
        units were rewritten (a unit at the same level of another store, e.g. another reference, is rewritten)."""
        store = self.stores[policy.criterion].select(policy)
        assert store is not None, "assemble() a policy that fits()"
        wanted: dict[str, tuple[str, int, float]] = {f: (policy.criterion, id(store), r) if r > 0 else
                                                     ("dense", 0, 0.0) for f, r in policy.sparsity.items()}
        for f in self.current:
            wanted.setdefault(f, ("dense", 0, 0.0))
        written = 0
        for fqn, (criterion, key, ratio) in wanted.items():
            if self.current.get(fqn, ("dense", 0, 0.0)) == (criterion, key, ratio):
                continue
            target, dense = weight_of(self.model, fqn), weight_of(self.dense, fqn).detach()
            if criterion == "dense" or ratio == 0:
                target.copy_(dense)
            else:
                store.write(fqn, ratio, target, dense)
            self.current[fqn] = (criterion, key, ratio)
            written += 1
        return written

    @torch.no_grad()
    def evaluate(self, policy: Policy, splits: Splits, task: Task, reference: DenseReference | None,
                 tokens: int | None, with_test: bool = False) -> Evaluation:
        """Assemble and measure: the divergence on ``tokens`` calibration tokens (a token rung), or, with
        ``tokens`` None, the validation metrics, the divergence, the size and the layers' sparsity."""
        t0 = time.perf_counter()
        self.assemble(policy)
        t1 = time.perf_counter()
        m = self.model
        val: dict[str, float] = {} if tokens is not None else task.metrics(m, splits.val)
        if reference is not None:
            val["kl_to_dense"] = reference.divergence(m, tokens)
        size: dict[str, float] = {}
        sparsity: dict[str, float] = {}
        test = None
        if tokens is None:
            size = size_metrics(m, policy.granularity, splits.input_shape, splits.input_dtype)
            sparsity = {f: layer_sparsity(m, f) for f in policy.sparsity}
            test = task.metrics(m, splits.test) if with_test else None
        t2 = time.perf_counter()
        times = {"prune": t1 - t0, "finetune": 0.0, "measure": t2 - t1, "total": t2 - t0}
        return Evaluation(val=val, size=size, times=times, layer_sparsity=sparsity, test=test, primary=task.primary)
