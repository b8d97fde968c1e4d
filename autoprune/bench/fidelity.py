"""Which cheap score predicts the production result? Spearman rank correlation of every rung's score and of
other proxies (loss, divergence to the dense model) with the last rung's validation score, per target.

The study behind it runs the space's ladder with ``keep: 1`` (every candidate climbs to the production
fine-tune), so each candidate has every rung's measurements.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from autoprune.config.space import SearchSpace
from autoprune.errors import ConfigError
from autoprune.study import SearchOptions, baseline_targets, run_search, study_user_attrs
from autoprune.study.ladder import rank_value, rung_key

__all__ = ["PROXIES", "correlation_rows", "fitness_correlation", "proxy_values", "rank_correlation"]

PROXIES = ("metric", "val_loss", "train_loss", "kl_to_dense")  # rung-record measurements that could rank


def proxy_values(attrs: list[dict[str, Any]], n_rungs: int) -> dict[str, list[float]]:
    """``rung<r>/<proxy>`` -> one value per trial, signed so that higher predicts better (NaN where the trial
    lacks it); plus ``final``, the last rung's validation metric."""
    last = n_rungs - 1
    out: dict[str, list[float]] = {}
    for r in range(last):
        for name in PROXIES:
            vals = [rank_value(a[rung_key(r)], name) for a in attrs]
            if not all(math.isnan(v) for v in vals):
                out[f"rung{r}/{name}"] = vals
    out["final"] = [float(a[rung_key(last)]["score"]) for a in attrs]
    return out


def correlation_rows(attrs: list[dict[str, Any]], n_rungs: int) -> list[dict[str, Any]]:
    """One row per proxy: Spearman ρ with the final validation score at each target (and n)."""
    from scipy.stats import spearmanr

    done = [a for a in attrs if rung_key(n_rungs - 1) in a]
    targets = sorted({round(float(a[rung_key(0)]["sparsity"]), 4) for a in done if rung_key(0) in a})
    rows: list[dict[str, Any]] = []
    by_target = {t: [a for a in done if rung_key(0) in a and abs(a[rung_key(0)]["sparsity"] - t) < 5e-3]
                 for t in targets}
    values = {t: proxy_values(group, n_rungs) for t, group in by_target.items()}
    names = [k for k in values[targets[0]] if k != "final"] if targets else []
    for name in names:
        row: dict[str, Any] = {"proxy": name}
        for t in targets:
            pairs = [(x, y) for x, y in zip(values[t][name], values[t]["final"], strict=True) if not math.isnan(x)]
            rho = spearmanr([p[0] for p in pairs], [p[1] for p in pairs]).statistic if len(pairs) > 2 else math.nan
            row[f"ρ at {t:.0%} (n)"] = f"{rho:+.2f} ({len(pairs)})"
        rows.append(row)
    return rows


def rank_correlation(space: SearchSpace, per_target: int, out_dir: Path, seed: int = 0) -> list[dict[str, Any]]:
    """Run ``per_target`` candidates at each target (one study per target, so every size gets as many) through
    every rung of the space's ladder, and correlate each proxy with the last rung's score."""
    if space.ladder is None:
        if space.finetune.epochs == [0.0]:  # no fine-tune at all (a language model): the search's own fitness
            return fitness_correlation(space, per_target, out_dir, seed)
        raise ConfigError(f"{space.source or space.name}: field 'ladder': the rank correlation needs a ladder")
    ladder = space.ladder.model_copy(update={"keep": 1.0})
    attrs: list[dict[str, Any]] = []
    for target in baseline_targets(space):
        grid = space.targets.model_copy(update={"grid": [target], "range": None})
        sp = space.model_copy(update={"ladder": ladder, "seed": seed, "targets": grid})
        name = f"fidelity-{space.name}-{target:g}-s{seed}"
        run_search(sp, SearchOptions(n_trials=per_target, study_name=name, seed=seed, runs_dir=out_dir,
                                     device="cpu"))
        attrs += study_user_attrs(name, None, out_dir)
    return correlation_rows(attrs, len(space.ladder.epochs))


def fitness_correlation(space: SearchSpace, per_target: int, out_dir: Path, seed: int = 0) -> list[dict[str, Any]]:
    """For a space without fine-tune: ``per_target`` random candidates of the searched space at each target, each
    scored the cheap ways (the validation metric the search ranks by; the KL divergence to the dense model on the
    calibration examples) and on the held-out test split; Spearman ρ of each cheap score with the test score."""
    import numpy as np
    from scipy.stats import spearmanr

    from autoprune.pruning.evaluate import DenseReference, evaluate
    from autoprune.study.sampler import random_candidate
    from autoprune.study.setup import prepare

    prep = prepare(space.model_copy(update={"seed": seed}), "cpu", out_dir)
    ws, task = prep.ws, prep.ws.task
    reference = DenseReference.of(ws.model, ws.splits, task=task)
    rng = np.random.default_rng(seed)
    rows: dict[str, dict[str, Any]] = {f"val {task.primary}": {"proxy": f"val {task.primary} (the search's fitness)"},
                                       "kl_to_dense": {"proxy": "KL to dense on calibration examples"}}
    for target in baseline_targets(space):
        cheap: dict[str, list[float]] = {"val": [], "kl": []}
        final: list[float] = []
        for _ in range(per_target):
            policy = random_candidate(space, prep.ctx, target, rng)
            ev = evaluate(ws.model, policy, ws.splits, with_test=True, reference=reference, task=task,
                          levels=prep.levels)
            cheap["val"].append(task.sign * ev.score)
            cheap["kl"].append(-ev.val["kl_to_dense"])
            final.append(task.sign * float((ev.test or {})[task.primary]))
        for key, name in (("val", f"val {task.primary}"), ("kl", "kl_to_dense")):
            rho = spearmanr(cheap[key], final).statistic
            rows[name][f"ρ at {target:.0%} (n)"] = f"{rho:+.2f} ({len(final)})"
    return list(rows.values())
