"""The search's incumbents on the held-out test split: every candidate that became the best on validation at its
size, in trial order, beside the study's uniform baseline. It shows whether the gains the search keeps finding on
validation carry to the test split, or whether selection has started to chase the validation split's noise (the
winner's curse of a small validation split: README, "Held-out screening").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna

from autoprune.bench.methods import evaluate_on_test
from autoprune.pruning.assemble import LevelAssembler
from autoprune.pruning.evaluate import Evaluation
from autoprune.study.attrs import BASELINE, TARGET
from autoprune.study.setup import Prepared
from autoprune.study.storage import load_existing, make_storage
from autoprune.study.trials import trial_policy

__all__ = ["incumbent_rows", "incumbents"]

SAME_TARGET = 1e-6


def incumbents(trials: list[optuna.trial.FrozenTrial], level: float, sign: float
               ) -> list[tuple[str, optuna.trial.FrozenTrial]]:
    """(label, trial) of each trial at ``level`` that improved the best validation score there (``sign``: +1 when
    higher is better), in trial order, and of the uniform baseline (always); the label is the baseline's name or
    "search". The last one is the search's answer at that size."""
    out: list[tuple[str, optuna.trial.FrozenTrial]] = []
    best: float | None = None
    for t in trials:
        if t.state != optuna.trial.TrialState.COMPLETE or not t.values:
            continue
        target = t.params.get("target", t.user_attrs.get(TARGET))
        if target is None or abs(float(target) - level) > SAME_TARGET:
            continue
        baseline = t.user_attrs.get(BASELINE)
        improves = best is None or sign * t.values[0] > best
        if improves:
            best = sign * t.values[0]
        if improves or baseline == "uniform":
            out.append((str(baseline or "search"), t))
    return out


def incumbent_rows(prep: Prepared, study: str, runs_dir: Path, level: float) -> list[dict[str, Any]]:
    """Each incumbent of ``study`` at ``level`` (see :func:`incumbents`) re-scored on test (assembled from the level
    stores when it can be, else pruned as ``apply`` would), as ratios to the uniform baseline's validation and test
    scores."""
    trials = load_existing(study, make_storage(None, runs_dir)).get_trials(deepcopy=False)
    task, splits = prep.ws.task, prep.ws.splits
    assembler = LevelAssembler(prep.ws.model, prep.stores) if prep.stores else None
    rows: list[dict[str, Any]] = []
    for label, t in incumbents(trials, level, task.sign):
        policy = trial_policy(t)
        ev: Evaluation | None
        if assembler is not None and assembler.fits(policy, policy.finetune.epochs):
            ev = assembler.evaluate(policy, splits, task, None, None, with_test=True)
        else:
            ev = evaluate_on_test(prep, policy)
        test = float("nan") if ev is None else (ev.test or {})[task.primary]
        rows.append({"trial": t.number, "role": label, f"val_{task.primary}": float(t.values[0]),
                     f"test_{task.primary}": test})
    base = next((r for r in rows if r["role"] == "uniform"), None)
    for r in rows:
        for split in ("val", "test"):
            key = f"{split}_{task.primary}"
            r[f"{split} ÷ uniform"] = r[key] / base[key] if base else float("nan")
    return rows
