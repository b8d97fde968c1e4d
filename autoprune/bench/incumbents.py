"""The search's incumbents on the held-out test split: every candidate that became the best on validation at its
size, in trial order, beside the study's uniform baseline. It shows whether the gains the search keeps finding on
validation carry to the test split, or whether selection has started to chase the validation split's noise (the
winner's curse of a small validation split: README, "Held-out screening").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autoprune.bench.methods import evaluate_on_test
from autoprune.pruning.assemble import LevelAssembler
from autoprune.pruning.evaluate import Evaluation
from autoprune.study.setup import Prepared
from autoprune.study.trials import incumbent_trials, trial_policy

__all__ = ["incumbent_rows"]


def incumbent_rows(prep: Prepared, study: str, runs_dir: Path, level: float) -> list[dict[str, Any]]:
    """Each incumbent of ``study`` at ``level`` (see :func:`~autoprune.study.trials.incumbent_trials`) re-scored
    on test (assembled from the level stores when it can be, else pruned as ``apply`` would), as ratios to the
    uniform baseline's validation and test scores."""
    task, splits = prep.ws.task, prep.ws.splits
    assembler = LevelAssembler(prep.ws.model, prep.stores) if prep.stores else None
    rows: list[dict[str, Any]] = []
    for label, t in incumbent_trials(study, runs_dir, level, task.sign):
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
