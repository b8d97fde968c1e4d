"""Choose a point on a study's Pareto front and turn it into a self-describing policy."""

from __future__ import annotations

import math
import platform
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version

import optuna

from autoprune.config.policy import Policy
from autoprune.errors import ConfigError
from autoprune.study.attrs import BASELINE, DENSE_VAL, EVAL, test_metrics_key
from autoprune.study.trials import front_trials, metric_sign, policy_json, primary_metric, trial_policy

__all__ = ["choose_trial", "knee", "policy_from_trial"]


def knee(points: list[tuple[float, float]]) -> int:
    """Index of the front point farthest from the chord between its extremes (accuracy vs log size)."""
    if len(points) <= 2:
        return max(range(len(points)), key=lambda i: points[i][0])
    xs = [math.log(max(s, 1e-12)) for _, s in points]
    ys = [a for a, _ in points]
    x_span, y_span = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    nx = [(x - min(xs)) / x_span for x in xs]
    ny = [(y - min(ys)) / y_span for y in ys]
    i0, i1 = min(range(len(nx)), key=nx.__getitem__), max(range(len(nx)), key=nx.__getitem__)
    dx, dy = nx[i1] - nx[i0], ny[i1] - ny[i0]
    norm = math.hypot(dx, dy) or 1.0
    return max(range(len(nx)), key=lambda i: abs(dy * (nx[i] - nx[i0]) - dx * (ny[i] - ny[i0])) / norm)


def choose_trial(study: optuna.Study, trial: int | None = None, max_size: float | None = None,
                 min_accuracy: float | None = None, use_knee: bool = False, metric_bound: float | None = None
                 ) -> optuna.trial.FrozenTrial:
    """Exactly one selector: a trial number, the best under a size, the smallest that reaches a metric bound, the
    knee. ``metric_bound`` is a lower bound for a maximized metric and an upper bound for a minimized one
    (``min_accuracy`` is the classification spelling of it).

    Every choice reads the validation metric (of the production rung with a ladder); test is only reported.
    """
    bound = metric_bound if metric_bound is not None else min_accuracy
    if sum(x is not None for x in (trial, max_size, bound)) + int(use_knee) != 1 or (
            metric_bound is not None and min_accuracy is not None):
        raise ConfigError("export: give exactly one of --trial, --max-size, --min-accuracy/--min-metric/"
                          "--max-metric, --knee")
    if trial is not None:
        found = [t for t in study.trials if t.number == trial]
        if not found or found[0].state != optuna.trial.TrialState.COMPLETE or policy_json(found[0]) is None:
            raise ConfigError(f"export: trial {trial} is not a complete trial of study '{study.study_name}'")
        return found[0]
    front = sorted(front_trials(study), key=lambda t: t.values[1])
    if not front:
        raise ConfigError(f"export: study '{study.study_name}' has no complete trial yet")
    sign = metric_sign(study)
    name = (study.metric_names or ["val metric"])[0]
    if max_size is not None:
        fit = [t for t in front if t.values[1] <= max_size]
        if not fit:
            raise ConfigError(f"export: no front trial has size ≤ {max_size} (smallest: {front[0].values[1]:.4f})")
        return max(fit, key=lambda t: sign * t.values[0])
    if bound is not None:
        fit = [t for t in front if sign * t.values[0] >= sign * bound]
        if not fit:
            best = max(front, key=lambda t: sign * t.values[0]).values[0]
            word = "reaches" if sign > 0 else "gets down to"
            raise ConfigError(f"export: no front trial {word} {name} {bound} (best: {best:.4g})")
        return min(fit, key=lambda t: t.values[1])
    return front[knee([(sign * t.values[0], t.values[1]) for t in front])]


def _version(pkg: str) -> str:
    try:
        return version(pkg)
    except PackageNotFoundError:
        return "unknown"


def policy_from_trial(study: optuna.Study, t: optuna.trial.FrozenTrial) -> Policy:
    """The trial's policy with expected metrics and provenance filled in."""
    pol = trial_policy(t)
    ev = t.user_attrs.get(EVAL, {})
    primary = primary_metric(study)
    expected = {f"val_{primary}": float(t.values[0]), "size": float(t.values[1]),
                "sparsity": float(ev.get("sparsity", float("nan")))}
    test = study.user_attrs.get(test_metrics_key(t.number))
    if test and primary in test:
        expected[f"test_{primary}"] = float(test[primary])
    dense = study.user_attrs.get(DENSE_VAL) or {}
    if primary in dense:
        expected[f"dense_val_{primary}"] = float(dense[primary])  # what the pruned model is measured against
    provenance = {"study": study.study_name, "trial": str(t.number), "baseline": str(t.user_attrs.get(BASELINE, "")),
                  "data": str(study.user_attrs.get("data", "")),
                  "checkpoint_sha256": pol.dense_key.removeprefix("sha256:") if pol.dense_key.startswith("sha256:")
                  else "",
                  "autoprune": _version("autoprune"), "torch": _version("torch"), "python": platform.python_version(),
                  "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    return pol.model_copy(update={"expected": expected, "provenance": provenance})
