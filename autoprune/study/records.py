"""Conversion of Optuna's FrozenTrial into the plain :class:`~autoprune.records.TrialRecord`."""

from __future__ import annotations

import optuna

from autoprune.errors import ConfigError
from autoprune.pareto import SIZE_TOLERANCE, nondominated
from autoprune.policy import Policy
from autoprune.records import TrialRecord


def policy_json(t: optuna.trial.FrozenTrial) -> str | None:
    """The trial's policy JSON: inside its ``eval`` user attr (one journal write per trial, not two)."""
    return (t.user_attrs.get("eval") or {}).get("policy") or t.user_attrs.get("policy")  # "policy": older studies


def trial_policy(t: optuna.trial.FrozenTrial) -> Policy:
    """The trial's :class:`Policy`; a clear error for a trial that never completed."""
    text = policy_json(t)
    if text is None:
        raise ConfigError(f"trial {t.number} has no policy: it did not complete")
    return Policy.model_validate_json(text)


def to_record(t: optuna.trial.FrozenTrial, pareto: bool = False, test: dict[str, float] | None = None
              ) -> TrialRecord:
    """Plain-data view of a finished trial."""
    values = (float(t.values[0]), float(t.values[1])) if t.values else None
    metrics = {k: v for k, v in (t.user_attrs.get("eval") or {}).items() if k != "policy"}
    rungs = {k: v for k, v in t.user_attrs.items() if k.startswith("rung/")}
    for key, rec in rungs.items():  # every rung's measurements, e.g. rung1_val_loss (the ladder's record)
        metrics.update({f"rung{key[5:]}_{k}": v for k, v in rec.items() if k != "sparsity"})
    if rungs:
        metrics["rung"] = max(int(k[5:]) for k in rungs)  # the highest rung this trial reached
        metrics["target_sparsity"] = next(iter(rungs.values()))["sparsity"]  # the policy's weighted sparsity
        metrics.setdefault("sparsity", next(iter(rungs.values()))["sparsity"])
    if "fail_reason" in t.user_attrs:
        metrics["fail_reason"] = t.user_attrs["fail_reason"]
    if not rungs and not metrics and "stopped" in t.user_attrs:
        stopped = t.user_attrs["stopped"]
        metrics = {"sparsity": stopped.get("sparsity"), "stopped_epoch": stopped.get("epoch"),
                   "val_accuracy": stopped.get("val_accuracy"), "early_stop_saved_s": stopped.get("saved_s")}
    return TrialRecord(number=t.number, state=t.state.name, params=dict(t.params), values=values, metrics=metrics,
                       policy_json=policy_json(t), baseline=t.user_attrs.get("baseline"),
                       pareto=pareto, test=test)


def metric_sign(study: optuna.Study) -> float:
    """+1 when the study maximizes its primary metric (accuracy), −1 when it minimizes it (MSE, perplexity)."""
    return 1.0 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else -1.0


def front_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The study's Pareto front (val metric in its direction, size ↓) among complete, feasible trials, sizes within
    :data:`~autoprune.pareto.SIZE_TOLERANCE` of each other treated as equal (Optuna's ``best_trials`` keeps a
    less accurate point that is one weight smaller)."""
    done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if all(c <= 0 for c in t.system_attrs.get("constraints", None) or [])]
    sign = metric_sign(study)
    keep = nondominated([(sign * t.values[0], t.values[1]) for t in done], SIZE_TOLERANCE)
    return [done[i] for i in keep]
