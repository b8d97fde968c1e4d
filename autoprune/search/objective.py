"""The Optuna objective: trial → policy → evaluation → (val accuracy, size), with early stop and constraints."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import optuna

from autoprune.budget import weighted_sparsity
from autoprune.evaluate import CandidateStopped, EpochCallback, Evaluation, evaluate
from autoprune.heuristics import Allocation
from autoprune.policy import Policy
from autoprune.space import SampleContext, SearchSpace, fixed_choices, sample
from autoprune.workspace import Workspace


@dataclass
class Objective:
    """Callable objective holding the loaded workspace; one instance per process."""

    ws: Workspace
    ctx: SampleContext
    heuristics: dict[str, Allocation]
    seed: int
    stopped: list[float] = field(default_factory=list)  # seconds saved by each early stop
    epoch1: dict[int, float] = field(default_factory=dict)  # trial number -> val accuracy after epoch 1
    eval_seconds: list[float] = field(default_factory=list)  # evaluation time of each trial run here

    @property
    def space(self) -> SearchSpace:
        """The search space being explored."""
        return self.ws.space

    def policy_for(self, trial: optuna.Trial, attrs: dict[str, Any]) -> Policy:
        """Sample the trial's policy; enqueued baselines without preference params use their heuristic."""
        baseline = attrs.get("baseline")
        if baseline and not attrs.get("via_params", False):
            # such a baseline carries no params (see baselines.baseline_params): its target is a user attr
            fixed = optuna.trial.FixedTrial({**fixed_choices(self.space), "target": attrs["target"]})
            return sample(self.space, fixed, self.ctx, self.heuristics[baseline])
        return sample(self.space, trial, self.ctx)

    def early_stop(self, trial: optuna.Trial, sparsity: float, baseline: bool) -> EpochCallback | None:
        """Stop after the first fine-tune epoch if accuracy trails the best equally-sparse trial by > margin.

        Valid for multi-objective studies (no ``should_prune``): we raise ``TrialPruned`` ourselves.
        """
        rule = self.space.early_stop
        if not rule.enabled:
            return None
        best: float | None = None
        done = [] if baseline else trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if len(done) >= rule.min_trials:  # baselines always run to the end
            # like with like: compare first-epoch accuracy with the peers' first-epoch accuracy
            peers = [t.user_attrs["eval"].get("epoch1_val_accuracy", 0.0) for t in done
                     if t.user_attrs.get("eval", {}).get("sparsity", 0.0) >= sparsity - 1e-3]
            best = max(peers, default=None)

        def rule_fn(epoch: int, acc: float, size: float) -> bool:
            self.epoch1[trial.number] = acc
            return best is not None and acc < best - rule.margin

        return rule_fn

    def __call__(self, trial: optuna.Trial) -> tuple[float, float]:
        t0 = time.perf_counter()
        attrs = trial.user_attrs  # one storage read (each access re-reads the journal)
        policy = self.policy_for(trial, attrs)
        sparsity = weighted_sparsity(policy.sparsity, self.ws.sizes)
        sample_s = time.perf_counter() - t0
        try:
            ev = evaluate(self.ws.model, policy, self.ws.splits, seed=self.seed,
                          on_epoch=self.early_stop(trial, sparsity, "baseline" in attrs),
                          measure_latency=self.space.size_metric == "latency",
                          bn_batches=self.space.sensitivity.bn_batches)
        except CandidateStopped as stop:
            self.stopped.append(stop.saved_s)
            self.eval_seconds.append(stop.elapsed_s)
            trial.set_user_attr("stopped", {"epoch": stop.epoch, "val_accuracy": stop.accuracy,
                                            "elapsed_s": stop.elapsed_s, "saved_s": stop.saved_s,
                                            "sparsity": sparsity})
            raise optuna.TrialPruned(str(stop)) from None
        self.eval_seconds.append(ev.times["total"])
        size = ev.size_value(self.space.size_metric)
        measured = eval_attrs(ev, sample_s)
        if trial.number in self.epoch1:
            measured["epoch1_val_accuracy"] = self.epoch1.pop(trial.number)
        trial.set_user_attr("eval", {**measured, "policy": policy.to_json()})  # one journal write for both
        c = self.space.constraints
        if c.max_size is not None:
            trial.set_constraint("max_size", size - c.max_size)
        if c.min_accuracy is not None:
            trial.set_constraint("min_accuracy", c.min_accuracy - ev.accuracy)
        return ev.accuracy, size


def eval_attrs(ev: Evaluation, sample_s: float) -> dict[str, object]:
    """One user attr with everything measured (one storage write instead of dozens)."""
    return {
        **{f"val_{k}": v for k, v in ev.val.items()},
        **ev.size,
        **{f"time_{k}": v for k, v in ev.times.items()},
        "time_sample": sample_s,
        "latency_ms": ev.latency_ms,
        "epoch_losses": ev.epoch_losses,
        "layer_sparsity": ev.layer_sparsity,
    }
