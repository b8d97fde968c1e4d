"""Conversion of Optuna's FrozenTrial into the plain :class:`~autoprune.records.TrialRecord`."""

from __future__ import annotations

import optuna

from autoprune.errors import ConfigError
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
    if not metrics and "stopped" in t.user_attrs:
        stopped = t.user_attrs["stopped"]
        metrics = {"sparsity": stopped.get("sparsity"), "stopped_epoch": stopped.get("epoch"),
                   "val_accuracy": stopped.get("val_accuracy"), "early_stop_saved_s": stopped.get("saved_s")}
    return TrialRecord(number=t.number, state=t.state.name, params=dict(t.params), values=values, metrics=metrics,
                       policy_json=policy_json(t), baseline=t.user_attrs.get("baseline"),
                       pareto=pareto, test=test)
