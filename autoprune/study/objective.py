"""The Optuna objective: trial → policy → fidelity ladder (or one short fine-tune) → (val primary metric, size)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import optuna
import torch

from autoprune.config.budget import weighted_sparsity
from autoprune.config.policy import Policy
from autoprune.config.sampling import SampleContext, fixed_choices, sample
from autoprune.config.space import SearchSpace
from autoprune.errors import FinetuneDiverged
from autoprune.pruning.assemble import LevelAssembler
from autoprune.pruning.evaluate import CandidateStopped, DenseReference, EpochCallback, Evaluation, evaluate
from autoprune.pruning.heuristics import Allocation
from autoprune.pruning.levels import LevelStore
from autoprune.study.attrs import (
    BASELINE,
    EVAL,
    LADDER_STOP,
    RACE,
    REASON,
    START_RUNG,
    STOPPED,
    SUMMARY,
    WORKER,
    RungRecord,
    first_epoch_score,
    rung_key,
)
from autoprune.study.ladder import (
    climbed,
    climbs,
    finished_records,
    incumbent_rank,
    peers,
    rank_fields,
    rank_value,
    reached,
    scores_of,
)
from autoprune.study.liveness import this_worker
from autoprune.study.storage import hold_interrupts
from autoprune.study.trials import metric_sign
from autoprune.workspace import Workspace

__all__ = [
    "CANDIDATE_ERRORS",
    "PHASES",
    "Objective",
    "eval_attrs",
    "policy_summary",
    "rung_record",
]

# what a candidate can legitimately raise: its trial FAILs with the reason stored and the search goes on. Anything
# else (a shape error, a validation error: a bug or bad input) stops the search loudly instead of hiding as FAILs.
CANDIDATE_ERRORS: tuple[type[Exception], ...] = (FinetuneDiverged, torch.cuda.OutOfMemoryError)


@dataclass
class Objective:
    """Callable objective holding the loaded workspace; one instance per process."""

    ws: Workspace
    ctx: SampleContext
    heuristics: dict[str, Allocation]
    seed: int
    stopped: list[float] = field(default_factory=list)  # seconds saved by each early stop
    epoch1: dict[int, float] = field(default_factory=dict)  # trial number -> signed val score after epoch 1
    eval_seconds: list[float] = field(default_factory=list)  # evaluation time of each trial (or rung) run here
    trials_run: int = 0  # trials this process ran (with a ladder a trial has one evaluation per rung it climbed)
    reference: DenseReference | None = None  # dense outputs on calibration inputs (the rungs' divergence)
    worker: dict[str, Any] = field(default_factory=this_worker)  # this process (host, pid, start time)
    stores: dict[str, LevelStore] = field(default_factory=dict)  # criterion -> the dense model's level store
    assembler: LevelAssembler | None = None  # no-fine-tune rungs: candidates written into one working model

    def __post_init__(self) -> None:
        ladder = self.space.ladder
        if ladder is not None and self.reference is None:
            self.reference = DenseReference.of(self.ws.model, self.ws.splits, task=self.ws.task,
                                               tokens=max(ladder.tokens) if ladder.tokens else None,
                                               held_out=ladder.tokens_from == "held_out")
        if self.stores and self.assembler is None:
            self.assembler = LevelAssembler(self.ws.model, self.stores)

    def rung(self, policy: Policy, epochs: float, tokens: int | None, last: bool) -> Evaluation:
        """One evaluation: assembled in place from the level stores when it can be (no fine-tune), else pruned on
        a copy of the dense model (see :func:`~autoprune.pruning.evaluate.evaluate`)."""
        latency = last and self.space.size_metric == "latency"
        if self.assembler is not None and not latency and self.assembler.fits(policy, epochs):
            return self.assembler.evaluate(policy, self.ws.splits, self.ws.task, self.reference, tokens)
        return evaluate(self.ws.model, policy, self.ws.splits, epochs=epochs, measure_latency=latency,
                        reference=self.reference, task=self.ws.task, levels=self.stores.get(policy.criterion),
                        tokens=tokens)

    @property
    def space(self) -> SearchSpace:
        """The search space being explored."""
        return self.ws.space

    def policy_for(self, trial: optuna.Trial, attrs: dict[str, Any]) -> Policy:
        """Sample the trial's policy; enqueued baselines without preference params use their heuristic."""
        baseline = attrs.get(BASELINE)
        if baseline and not attrs.get("via_params", False):
            # such a baseline carries no params (see baselines.baseline_params): its target is a user attr
            fixed = optuna.trial.FixedTrial({**fixed_choices(self.space), "target": attrs["target"]})
            policy = sample(self.space, fixed, self.ctx, self.heuristics[baseline])
        else:
            policy = sample(self.space, trial, self.ctx)
        if policy.finetune.seed == self.seed:
            return policy
        return policy.model_copy(update={"finetune": policy.finetune.model_copy(update={"seed": self.seed})})

    def early_stop(self, trial: optuna.Trial, sparsity: float, baseline: bool) -> EpochCallback | None:
        """Stop after the first fine-tune epoch if its signed primary metric (higher is better) trails the best
        equally-sparse trial's by > margin.

        Valid for multi-objective studies (no ``should_prune``): we raise ``TrialPruned`` ourselves.
        """
        rule = self.space.early_stop
        if not rule.enabled:
            return None
        best: float | None = None
        done = [] if baseline else trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if len(done) >= rule.min_trials:  # baselines always run to the end
            # like with like: compare the first-epoch score with the peers' first-epoch scores
            peers = [first_epoch_score(t.user_attrs[EVAL]) for t in done
                     if t.user_attrs.get(EVAL, {}).get("sparsity", 0.0) >= sparsity - 1e-3]
            best = max(peers, default=None)

        def rule_fn(epoch: int, score: float, size: float) -> bool:
            self.epoch1[trial.number] = score
            return best is not None and score < best - rule.margin

        return rule_fn

    def __call__(self, trial: optuna.Trial) -> tuple[float, float]:
        try:
            return self.run(trial)
        finally:
            hold_interrupts()  # Optuna tells the storage next: a Ctrl-C waits for the trial callback (after the tell)

    def run(self, trial: optuna.Trial) -> tuple[float, float]:
        """Evaluate one trial (climb the ladder, or the single short rung) and record it; returns its objectives."""
        t0 = time.perf_counter()
        self.trials_run += 1
        trial.set_user_attr(WORKER, self.worker)  # who runs it: a later open re-runs it if this process dies
        attrs = trial.user_attrs  # one storage read (each access re-reads the journal)
        policy = self.policy_for(trial, attrs)
        sparsity = weighted_sparsity(policy.sparsity, self.ws.sizes)
        sample_s = time.perf_counter() - t0
        try:
            if self.space.ladder is not None:
                ev = self.climb(trial, attrs, policy, sparsity)
            else:
                ev = self.single_rung(trial, attrs, policy, sparsity)
        except KeyboardInterrupt:
            trial.set_user_attr(REASON, "interrupted")  # Optuna marks it FAIL; a resume runs it again
            raise
        except CANDIDATE_ERRORS as err:
            trial.set_user_attr(REASON, str(err))  # Optuna marks it FAIL (caught by optimize); the search goes on
            raise
        return self.record(trial, ev, policy, sample_s, sparsity)

    def climb(self, trial: optuna.Trial, attrs: dict[str, Any], policy: Policy, sparsity: float) -> Evaluation:
        """Climb the fidelity ladder from ``start_rung`` (a late promotion) or 0; stop where the candidate is not
        among the best fraction of its size at a rung (baselines always climb). Returns the last rung's result."""
        ladder = self.space.ladder
        assert ladder is not None
        last = len(ladder.epochs) - 1
        always = BASELINE in attrs or RACE in attrs
        for r in range(int(attrs.get(START_RUNG, 0)), last + 1):
            tokens = ladder.tokens[r] if ladder.tokens is not None and r < last else None
            ev = self.rung(policy, ladder.epochs[r], tokens, r == last)
            self.eval_seconds.append(ev.times["total"])
            record = rung_record(ev, sparsity, ladder.epochs[r], self.ws.task.sign)
            stratum = policy.schedule.label if ladder.stratify else ""
            if stratum:
                record["stratum"] = stratum
            if tokens is not None:
                record["tokens"] = tokens
            if r < last:
                by = ladder.rank_field(r)
                record["rank"] = mine = rank_value(dict(record), by)  # what the ladder (and TPE) rank this rung by
            trial.set_user_attr(rung_key(r), record)
            if r == last:
                return ev
            if always:
                continue
            stop = self.stop_reason(trial, r, mine, sparsity, stratum)
            if stop is not None:
                trial.set_user_attr(LADDER_STOP, r)
                raise optuna.TrialPruned(f"stopped at rung {r}: {by} {abs(mine):.4f} {stop}")
        raise AssertionError("unreachable: the last rung returns")

    def stop_reason(self, trial: optuna.Trial, rung: int, mine: float, sparsity: float, stratum: str) -> str | None:
        """Why a candidate scoring ``mine`` (higher is better) at ``rung`` does not climb, None when it climbs:
        the ladder's ``promote`` rule (best fraction of its size, or at least the incumbent's score there)."""
        ladder = self.space.ladder
        assert ladder is not None
        trials = trial.study.get_trials(deepcopy=False)
        if ladder.promote == "elitist":
            bar = incumbent_rank(finished_records(trials, metric_sign(trial.study)), rung, sparsity, stratum)
            return None if bar is None or mine >= bar else f"worse than the incumbent's {abs(bar):.4f}"
        done = [(t.number, t.user_attrs) for t in trials]
        others = peers(scores_of(done, rank_fields(ladder)), rung, sparsity, exclude=trial.number, stratum=stratum)
        up = climbed(reached(done, len(ladder.epochs)), rung, sparsity, exclude=trial.number, stratum=stratum)
        if climbs(mine, others, ladder.keep, ladder.min_peers, up):
            return None
        return f"not in the best {ladder.keep:.0%} at this size"

    def single_rung(self, trial: optuna.Trial, attrs: dict[str, Any], policy: Policy, sparsity: float
                    ) -> Evaluation:
        """No ladder: one short fine-tune per candidate, with the epoch-1 early-stop rule."""
        try:
            ev = evaluate(self.ws.model, policy, self.ws.splits,
                          on_epoch=self.early_stop(trial, sparsity, BASELINE in attrs),
                          measure_latency=self.space.size_metric == "latency", task=self.ws.task,
                          levels=self.stores.get(policy.criterion))
        except CandidateStopped as stop:
            self.stopped.append(stop.saved_s)
            self.eval_seconds.append(stop.elapsed_s)
            trial.set_user_attr(STOPPED, {"epoch": stop.epoch, "val_score": stop.score,
                                            "elapsed_s": stop.elapsed_s, "saved_s": stop.saved_s,
                                            "sparsity": sparsity})
            raise optuna.TrialPruned(str(stop)) from None
        self.eval_seconds.append(ev.times["total"])
        return ev

    def record(self, trial: optuna.Trial, ev: Evaluation, policy: Policy, sample_s: float,
               sparsity: float | None = None) -> tuple[float, float]:
        """Store what was measured (one user attr), set the constraints, return (val primary metric, size).
        ``sparsity``: the policy's own over the searched layers (what targets are stated in)."""
        size = ev.size_value(self.space.size_metric)
        measured = eval_attrs(ev, sample_s)
        if sparsity is not None:
            measured["policy_sparsity"] = sparsity
        if trial.number in self.epoch1:
            measured["epoch1_val_score"] = self.epoch1.pop(trial.number)
        trial.set_user_attr(EVAL, {**measured, "policy": policy.to_json()})  # one journal write for both
        trial.set_user_attr(SUMMARY, policy_summary(policy, ev))  # one line, for optuna-dashboard's trial table
        c = self.space.constraints
        if c.max_size is not None:
            trial.set_constraint("max_size", size - c.max_size)
        if c.min_accuracy is not None:
            trial.set_constraint("min_accuracy", c.min_accuracy - ev.accuracy)
        return ev.score, size


def policy_summary(policy: Policy, ev: Evaluation) -> str:
    """One line: sparsity, schedule, criterion, granularity, the fine-tune recipe, and the score it got."""
    ft = policy.finetune
    sparsity = ev.size.get("sparsity", float("nan"))
    return (f"{sparsity:.1%} sparse, {policy.schedule.label}, {policy.criterion}, {policy.granularity.label}; "
            f"fine-tune {ft.epochs:g} ep, lr {ft.lr:.2g} {ft.decay}; val {ev.primary} {ev.score:.4f}")


PHASES = ("prune", "finetune", "measure")  # the parts of an evaluation timed on each rung


def rung_record(ev: Evaluation, sparsity: float, epochs: float, sign: float = 1.0) -> RungRecord:
    """What a rung stores: its score (the task's primary val metric; ``sign`` −1 when lower is better) and the
    proxies whose rank correlation we measure."""
    rec = RungRecord(sparsity=sparsity, epochs=epochs, score=ev.score, sign=sign, val_loss=ev.val.get("loss", math.nan),
                     train_loss=ev.epoch_losses[-1] if ev.epoch_losses else math.nan, time_s=ev.times["total"],
                     prune_s=ev.times.get("prune", 0.0), finetune_s=ev.times.get("finetune", 0.0),
                     measure_s=ev.times.get("measure", 0.0))
    if "kl_to_dense" in ev.val:
        rec["kl_to_dense"] = ev.val["kl_to_dense"]
    return rec


def eval_attrs(ev: Evaluation, sample_s: float) -> dict[str, object]:
    """One user attr with everything measured (one storage write instead of dozens)."""
    return {
        **{f"val_{k}": v for k, v in ev.val.items()},
        **ev.size,
        **{f"time_{k}": v for k, v in ev.times.items()},
        "time_sample": sample_s,
        "latency_ms": ev.latency_ms,
        "latency_device": ev.latency_device,
        "epoch_losses": ev.epoch_losses,
        "layer_sparsity": ev.layer_sparsity,
    }
