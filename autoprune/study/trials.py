"""Reading a study's trials: a FrozenTrial as the plain :class:`~autoprune.events.TrialRecord`, its policy, the
Pareto front in the task's direction, and the front as table rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna

from autoprune.config.events import TrialRecord
from autoprune.config.pareto import SIZE_TOLERANCE, nondominated
from autoprune.config.policy import Policy
from autoprune.errors import ConfigError
from autoprune.study.attrs import (
    BASELINE,
    DENSE_PARAMS,
    DENSE_TEST,
    DENSE_VAL,
    EVAL,
    POLICY_OLD,
    REASON,
    STOPPED,
    TARGET,
    rung_of,
    rungs_of,
    test_metrics_key,
)
from autoprune.study.storage import load_existing, make_storage

__all__ = [
    "FINISHED",
    "dense_row",
    "finished_count",
    "front_row",
    "front_table",
    "front_trials",
    "incumbent_trials",
    "metric_sign",
    "policy_json",
    "policy_sparsity",
    "primary_metric",
    "study_user_attrs",
    "to_record",
    "trial_policy",
]


def policy_json(t: optuna.trial.FrozenTrial) -> str | None:
    """The trial's policy JSON: inside its ``eval`` user attr (one journal write per trial, not two)."""
    return (t.user_attrs.get(EVAL) or {}).get("policy") or t.user_attrs.get(POLICY_OLD)


def trial_policy(t: optuna.trial.FrozenTrial) -> Policy:
    """The trial's :class:`Policy`; a clear error for a trial that never completed."""
    text = policy_json(t)
    if text is None:
        raise ConfigError(f"trial {t.number} has no policy: it did not complete")
    return Policy.model_validate_json(text)


def policy_sparsity(t: optuna.trial.FrozenTrial) -> float:
    """The sparsity the trial's policy asked for over the searched layers (what targets are stated in); the
    measured ``sparsity`` also counts prunable layers the space excluded (e.g. an LM head)."""
    rung = rung_of(t.user_attrs, 0)
    if rung is not None:
        return float(rung["sparsity"])
    measured = t.user_attrs.get(EVAL) or {}
    return float(measured.get("policy_sparsity", measured.get("sparsity", 0.0)))


def to_record(t: optuna.trial.FrozenTrial, pareto: bool = False, test: dict[str, float] | None = None
              ) -> TrialRecord:
    """Plain-data view of a finished trial."""
    values = (float(t.values[0]), float(t.values[1])) if t.values else None
    metrics = {k: v for k, v in (t.user_attrs.get(EVAL) or {}).items() if k != "policy"}
    rungs = rungs_of(t.user_attrs)
    for r, rec in rungs.items():  # every rung's measurements, e.g. rung1_val_loss (the ladder's record)
        metrics.update({f"rung{r}_{k}": v for k, v in rec.items() if k != "sparsity"})
    if rungs:
        metrics["rung"] = max(rungs)  # the highest rung this trial reached
        metrics["target_sparsity"] = next(iter(rungs.values()))["sparsity"]  # the policy's weighted sparsity
        metrics.setdefault("sparsity", next(iter(rungs.values()))["sparsity"])
    elif "policy_sparsity" in metrics:  # no ladder: the policy's weighted sparsity was stored with the evaluation
        metrics["target_sparsity"] = metrics["policy_sparsity"]
    if REASON in t.user_attrs:
        metrics["fail_reason"] = t.user_attrs[REASON]
    if not rungs and not metrics and STOPPED in t.user_attrs:
        stopped = t.user_attrs[STOPPED]
        metrics = {"sparsity": stopped.get("sparsity"), "stopped_epoch": stopped.get("epoch"),
                   "stopped_val_score": stopped.get("val_score", stopped.get("val_accuracy")),  # older studies
                   "early_stop_saved_s": stopped.get("saved_s")}
    start, end = t.datetime_start, t.datetime_complete
    return TrialRecord(number=t.number, state=t.state.name, params=dict(t.params), values=values, metrics=metrics,
                       policy_json=policy_json(t), baseline=t.user_attrs.get(BASELINE), pareto=pareto, test=test,
                       start_ms=int(start.timestamp() * 1000) if start else None,
                       end_ms=int(end.timestamp() * 1000) if end else None)


def metric_sign(study: optuna.Study) -> float:
    """+1 when the study maximizes its primary metric (accuracy), −1 when it minimizes it (MSE, perplexity)."""
    return 1.0 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else -1.0


def primary_metric(study: optuna.Study) -> str:
    """The task's primary metric (``accuracy``, ``mse`` …), from the study's first objective name."""
    names = study.metric_names or ["val_accuracy"]
    return names[0].removeprefix("val_")


def front_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The study's Pareto front (val metric in its direction, size ↓) among complete, feasible trials, sizes within
    :data:`~autoprune.pareto.SIZE_TOLERANCE` of each other treated as equal (Optuna's ``best_trials`` keeps a
    less accurate point that is one weight smaller)."""
    done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if all(c <= 0 for c in t.system_attrs.get("constraints", None) or [])]
    sign = metric_sign(study)
    keep = nondominated([(sign * t.values[0], t.values[1]) for t in done], SIZE_TOLERANCE)
    return [done[i] for i in keep]


FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)


def front_row(r: Any, primary: str = "accuracy") -> dict[str, Any]:
    """A row of the Pareto table (``primary``: the task's primary metric, e.g. accuracy or mse)."""
    pol = Policy.model_validate_json(r.policy_json) if r.policy_json else None
    return {
        "trial": r.number, "baseline": r.baseline or "", "sparsity": r.sparsity,
        "target": float(r.metrics.get("target_sparsity", r.sparsity)),  # the policy's; channel groups miss it a bit
        "nonzeros": int(r.metrics.get("nonzeros", 0)),
        "size": r.values[1] if r.values else float("nan"),
        f"val_{primary}": r.values[0] if r.values else float("nan"),
        f"test_{primary}": (r.test or {}).get(primary, float("nan")),
        "schedule": pol.schedule.label if pol else "", "criterion": pol.criterion if pol else "",
    }


def dense_row(dense_val: dict[str, float], dense_test: dict[str, float], params: int,
              primary: str = "accuracy") -> dict[str, Any]:
    """The dense model as the Pareto table's first row (size 1: what every front point is measured against)."""
    return {"trial": "dense", "baseline": "", "sparsity": 0.0, "target": 0.0, "nonzeros": params, "size": 1.0,
            f"val_{primary}": dense_val.get(primary, float("nan")),
            f"test_{primary}": dense_test.get(primary, float("nan")), "schedule": "", "criterion": ""}


def front_table(study_name: str, storage: str | None, runs_dir: Path) -> list[dict[str, Any]]:
    """Pareto rows of an existing study (test accuracy where the search stored it)."""

    study = load_existing(study_name, make_storage(storage, runs_dir))
    primary = primary_metric(study)
    rows = []
    if DENSE_VAL in study.user_attrs:
        rows.append(dense_row(study.user_attrs[DENSE_VAL], study.user_attrs.get(DENSE_TEST, {}),
                              int(study.user_attrs.get(DENSE_PARAMS, 0)), primary))
    for t in front_trials(study):
        rows.append(front_row(to_record(t, True, study.user_attrs.get(test_metrics_key(t.number))), primary))
    return sorted(rows, key=lambda r: r["sparsity"])  # (stable: the dense row, at sparsity 0, stays first)


def study_user_attrs(study_name: str, storage: str | None, runs_dir: Path) -> list[dict[str, Any]]:
    """The user attrs of every complete trial of an existing study, as plain dicts (rung records included)."""
    study = load_existing(study_name, make_storage(storage, runs_dir))
    return [dict(t.user_attrs) for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]


def finished_count(study_name: str, runs_dir: Path, storage: str | None = None) -> int:
    """How many trials of study ``study_name`` finished (complete, stopped early or failed); 0 when the storage has
    no such study. A benchmark tops its searches up to their trial budget with it, so rerunning an interrupted
    ``autoprune bench`` resumes instead of adding a whole budget again."""
    try:
        study = load_existing(study_name, make_storage(storage, runs_dir))
    except ConfigError:
        return 0
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def incumbent_trials(study: str, runs_dir: Path, level: float, sign: float
                     ) -> list[tuple[str, optuna.trial.FrozenTrial]]:
    """(label, trial) of each trial of ``study`` (in ``runs_dir``) at ``level`` that improved the best validation
    score there (``sign``: +1 when higher is better), in trial order, and of the uniform baseline (always); the
    label is the baseline's name or "search". The last one is the search's answer at that size."""
    trials = load_existing(study, make_storage(None, runs_dir)).get_trials(deepcopy=False)
    out: list[tuple[str, optuna.trial.FrozenTrial]] = []
    best: float | None = None
    for t in trials:
        if t.state != optuna.trial.TrialState.COMPLETE or not t.values:
            continue
        target = t.params.get("target", t.user_attrs.get(TARGET))
        if target is None or abs(float(target) - level) > 1e-6:
            continue
        baseline = t.user_attrs.get(BASELINE)
        improves = best is None or sign * t.values[0] > best
        if improves:
            best = sign * t.values[0]
        if improves or baseline == "uniform":
            out.append((str(baseline or "search"), t))
    return out
