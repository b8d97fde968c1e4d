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
from autoprune.study.attrs import rung_key
from autoprune.study.ladder import rank_value

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


def rank_correlation(space: SearchSpace, per_target: int, out_dir: Path, seed: int = 0,
                     threads: int | None = None) -> list[dict[str, Any]]:
    """Run ``per_target`` candidates at each target (one study per target, so every size gets as many) through
    every rung of the space's ladder, and correlate each proxy with the last rung's score. A space without
    fine-tune (a language model; a token ladder) is measured against the held-out test score instead."""
    if without_finetune(space):
        return fitness_correlation(space, per_target, out_dir, seed, threads)
    if space.ladder is None:
        raise ConfigError(f"{space.source or space.name}: field 'ladder': the rank correlation needs a ladder")
    ladder = space.ladder.model_copy(update={"keep": 1.0})
    attrs: list[dict[str, Any]] = []
    for target in baseline_targets(space):
        grid = space.targets.model_copy(update={"grid": [target], "range": None})
        sp = space.model_copy(update={"ladder": ladder, "seed": seed, "targets": grid})
        name = f"fidelity-{space.name}-{target:g}-s{seed}"
        run_search(sp, SearchOptions(n_trials=per_target, study_name=name, seed=seed, runs_dir=out_dir,
                                     device="cpu", threads=threads))
        attrs += study_user_attrs(name, None, out_dir)
    return correlation_rows(attrs, len(space.ladder.epochs))


def without_finetune(space: SearchSpace) -> bool:
    """Whether no candidate of ``space`` is ever fine-tuned (every rung, or the one fine-tune, has 0 epochs)."""
    epochs = space.ladder.epochs if space.ladder is not None else space.finetune.epochs
    return all(e == 0 for e in epochs)


def fitness_correlation(space: SearchSpace, per_target: int, out_dir: Path, seed: int = 0,
                        threads: int | None = None) -> list[dict[str, Any]]:
    """For a space without fine-tune: ``per_target`` random candidates of the searched space at each target, each
    scored the cheap ways (the validation metric the search's last rung ranks by; the KL divergence to the dense
    model on each token-ladder rung's calibration tokens, or on every calibration example without one) and on the
    held-out test split; Spearman ρ of each cheap score with the test score."""
    import copy

    import numpy as np
    from scipy.stats import spearmanr
    from torch.nn.utils import parametrize

    from autoprune.pruning.evaluate import DenseReference, prune_and_finetune
    from autoprune.study.sampler import random_candidate
    from autoprune.study.setup import prepare

    prep = prepare(space.model_copy(update={"seed": seed}), "cpu", out_dir, threads=threads)
    ws, task = prep.ws, prep.ws.task
    rungs = list(space.ladder.tokens) if space.ladder is not None and space.ladder.tokens else []
    held_out = space.ladder is not None and space.ladder.tokens_from == "held_out"
    reference = DenseReference.of(ws.model, ws.splits, task=task, tokens=max(rungs) if rungs else None,
                                  held_out=held_out)
    proxies: dict[str, tuple[str, int | None]] = {f"val {task.primary} (the search's fitness)": ("val", None)}
    for r, tokens in enumerate(rungs):
        text = "held-out training" if held_out else "calibration"
        proxies[f"KL to dense on {tokens} {text} tokens (rung {r})"] = ("kl", tokens)
    if not rungs:
        proxies[f"KL to dense on {reference.tokens} calibration tokens"] = ("kl", None)
    rows = {name: {"proxy": name} for name in proxies}
    rng = np.random.default_rng(seed)
    for target in baseline_targets(space):
        cheap: dict[str, list[float]] = {name: [] for name in proxies}
        final: list[float] = []
        for _ in range(per_target):
            m = copy.deepcopy(ws.model)
            prune_and_finetune(m, random_candidate(space, prep.ctx, target, rng), ws.splits, task=task,
                               levels=prep.levels)
            with parametrize.cached():
                for name, (kind, count) in proxies.items():
                    cheap[name].append(task.sign * task.score(task.metrics(m, ws.splits.val)) if kind == "val"
                                       else -reference.divergence(m, count))
                final.append(task.sign * task.score(task.metrics(m, ws.splits.test)))
        for name in proxies:
            rows[name][f"ρ at {target:.0%} (n)"] = f"{spearmanr(cheap[name], final).statistic:+.2f} ({len(final)})"
    return list(rows.values())
