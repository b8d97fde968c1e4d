"""What autoprune stores on a study and its trials, in one place: every user-attr key, and the typed record of one
ladder rung.

The records stay JSON dicts in the storage (the journal and PostgreSQL hold user attrs as JSON; the ladder rules
read plain dicts so they are testable without a study), so a rung record is a ``TypedDict``: mypy checks every
key written or read, and nothing is converted on the way in or out. Readers use ``.get`` for the keys that older
studies or other rungs may lack (``tokens``, ``kl_to_dense``, ``rank``, ``stratum``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict

__all__ = [
    "BASELINE",
    "CARRIED",
    "DENSE_PARAMS",
    "DENSE_TEST",
    "DENSE_VAL",
    "EVAL",
    "LADDER_STOP",
    "POLICY_OLD",
    "PROMOTED_FROM",
    "RACE",
    "REASON",
    "RETRY_OF",
    "START_RUNG",
    "STOPPED",
    "SUMMARY",
    "TARGET",
    "TRANSFER_OF",
    "VIA_PARAMS",
    "WORKER",
    "RungRecord",
    "first_epoch_score",
    "rung_key",
    "rung_of",
    "rungs_of",
    "test_metrics_key",
]

# trial user attrs
BASELINE = "baseline"  # an enqueued heuristic's name (it always climbs the ladder)
TARGET = "target"  # an enqueued trial's target size (a sampled one has it as a param)
VIA_PARAMS = "via_params"  # a baseline expressed as the space's own params (its anchor at zero offsets)
PROMOTED_FROM = "promoted_from"  # a late promotion: the trial it continues
START_RUNG = "start_rung"  # ... and the rung it resumes at
RACE = "race"  # a recipe-race trial's round (1: every recipe at the largest target; 2: the best ones at the others)
TRANSFER_OF = "transfer_of"  # a warm start: the trial (at another size) whose candidate it re-runs
WORKER = "worker"  # the process running the trial (host, pid, start time)
REASON = "fail_reason"  # why a trial failed ("interrupted", "worker died", an error)
RETRY_OF = "retry_of"  # a re-enqueued trial: the number of the trial it re-runs
LADDER_STOP = "ladder_stop"  # the rung where a trial stopped
STOPPED = "stopped"  # no ladder: the epoch-1 early stop's record
EVAL = "eval"  # everything the last evaluation measured, with the policy JSON
SUMMARY = "summary"  # one line for optuna-dashboard's trial table
POLICY_OLD = "policy"  # the policy JSON in studies from before it moved into EVAL
CARRIED = (BASELINE, TARGET, VIA_PARAMS, PROMOTED_FROM, START_RUNG, RACE)  # attrs a re-run keeps

# study user attrs
DENSE_VAL = "dense_val"
DENSE_TEST = "dense_test"
DENSE_PARAMS = "dense_params"


def first_epoch_score(measured: Mapping[str, Any]) -> float:
    """The signed primary metric (higher is better) an evaluation record kept after its first fine-tune epoch, for
    the early stop (``epoch1_val_accuracy`` in studies from before the rename; 0.0 when it was not kept)."""
    return float(measured.get("epoch1_val_score", measured.get("epoch1_val_accuracy", 0.0)))


def test_metrics_key(number: int) -> str:
    """The study user attr holding trial ``number``'s held-out test metrics (front points only)."""
    return f"test/{number}"


def rung_key(rung: int) -> str:
    """The trial user attr of a rung's measurements."""
    return f"rung/{rung}"


class _RungRequired(TypedDict):
    sparsity: float  # the policy's weighted sparsity over the searched units
    epochs: float  # fine-tune epochs of the rung
    score: float  # the task's primary validation metric (NaN on a token rung)
    sign: float  # +1 when the task maximizes it, −1 when it minimizes it
    val_loss: float
    train_loss: float  # the fine-tune's last epoch (NaN without one)
    time_s: float
    prune_s: float
    finetune_s: float
    measure_s: float


class RungRecord(_RungRequired, total=False):
    """One trial's measurements at one ladder rung (the user attr ``rung/<r>``)."""

    kl_to_dense: float  # KL of the pruned model's outputs to the dense model's (where measured)
    tokens: int  # a token rung: calibration tokens the KL was measured on
    rank: float  # the value the ladder ranked this rung by, higher is better (below the last rung)
    stratum: str  # ladder.stratify: candidates are compared within it (the schedule)


def rung_of(attrs: Mapping[str, Any], rung: int) -> RungRecord | None:
    """Rung ``rung``'s record in a trial's user attrs, None when the trial did not reach it."""
    rec = attrs.get(rung_key(rung))
    return None if rec is None else RungRecord(**rec)  # type: ignore[typeddict-item]


def rungs_of(attrs: Mapping[str, Any]) -> dict[int, RungRecord]:
    """Every rung record of a trial's user attrs, by rung."""
    return {int(k.removeprefix("rung/")): RungRecord(**v)  # type: ignore[typeddict-item]
            for k, v in attrs.items() if k.startswith("rung/")}
