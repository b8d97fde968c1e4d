"""The fidelity ladder: asynchronous successive halving per target, valid for two objectives.

Every candidate is scored on rung 0 (cheapest: no fine-tune), and climbs to the next rung only while its score
is among the best ``keep`` fraction of the scores recorded at that rung *for candidates of the same size* (so
only equally sparse candidates are compared, which keeps the rule valid for the size objective). The last rung
is the production fine-tune; only trials that reach it complete, so the Pareto front is made of production
scores only. Heuristic baselines always climb. Like ASHA (Li et al. 2020), a candidate stopped early is
promoted later when enough worse scores arrive at its rung: :func:`late_promotions` finds those, and the
search enqueues them to resume at the next rung, without re-running the rungs they already finished. A quota
caps each size's climbers from a rung at the same fraction of its scores (see :func:`climbs`), so the compute
stays bounded when an improving sampler keeps putting new candidates in the best fraction of the history.

Each rung's measurements are stored on the trial as the user attr ``rung/<r>``; the rung where a trial stopped
as ``ladder_stop``. The rules read plain dicts, so they are testable without a study; only
:func:`enqueue_promotions` touches one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import optuna

from autoprune.config.space import LadderSpec, SearchSpace
from autoprune.study.attrs import (
    BASELINE,
    LADDER_STOP,
    PROMOTED_FROM,
    RACE,
    START_RUNG,
    TARGET,
    VIA_PARAMS,
    rung_key,
)

__all__ = [
    "SAME_SIZE",
    "SIGNS",
    "Reached",
    "RungScore",
    "climbed",
    "climbs",
    "compute_spent",
    "enqueue_promotions",
    "finished_records",
    "incumbent_rank",
    "late_promotions",
    "peers",
    "rank_fields",
    "rank_value",
    "reached",
    "scores_of",
]

SAME_SIZE = 5e-3  # candidates whose global sparsities differ by less than this are compared with each other


@dataclass(frozen=True)
class RungScore:
    """One trial's score at one rung."""

    trial: int
    rung: int
    sparsity: float
    score: float  # the rung's ranking value, higher is better (see ``rank_value``)
    stratum: str = ""  # candidates are compared only within one stratum (ladder.stratify: their schedule)


# sign that makes a rung record's field "higher is better" (losses and divergences are lower-better)
SIGNS = {"metric": 1.0, "score": 1.0, "val_loss": -1.0, "train_loss": -1.0, "kl_to_dense": -1.0}


def rank_value(rec: dict[str, Any], by: str) -> float:
    """A rung record's ranking value under ``by`` (higher is better; NaN when it was not measured)."""
    value = rec.get("score" if by == "metric" else by)
    sign = SIGNS[by] * (float(rec.get("sign", 1.0)) if by in ("metric", "score") else 1.0)  # the task's direction
    return math.nan if value is None else sign * float(value)


def scores_of(trials: Iterable[tuple[int, dict[str, Any]]], rank_by: list[str]) -> list[RungScore]:
    """Every rung's ranking value recorded in ``(trial number, user attrs)`` pairs; ``rank_by[r]`` names the
    measurement that ranks rung ``r`` (the last rung, never ranked, is left out)."""
    out = []
    for number, attrs in trials:
        for r, by in enumerate(rank_by):
            rec = attrs.get(rung_key(r))
            if rec is not None and not math.isnan(value := rank_value(rec, by)):
                out.append(RungScore(number, r, float(rec["sparsity"]), value, str(rec.get("stratum", ""))))
    return out


def peers(scores: list[RungScore], rung: int, sparsity: float, exclude: int | None = None, stratum: str = ""
          ) -> list[float]:
    """Scores at ``rung`` of the other candidates of the same size (and stratum)."""
    return [s.score for s in scores if s.rung == rung and abs(s.sparsity - sparsity) < SAME_SIZE
            and s.trial != exclude and s.stratum == stratum]


Reached = tuple[Any, ...]  # (trial, rung, sparsity[, stratum])


def reached(trials: Iterable[tuple[int, dict[str, Any]]], n_rungs: int) -> list[Reached]:
    """``(trial, rung, sparsity, stratum)`` for every rung a searched trial has finished, the last rung included
    (baselines and the recipe race always climb, outside the quota: they must not take the searched candidates'
    places)."""
    return [(number, r, float(attrs[rung_key(r)]["sparsity"]), str(attrs[rung_key(r)].get("stratum", "")))
            for number, attrs in trials if BASELINE not in attrs and RACE not in attrs
            for r in range(n_rungs) if rung_key(r) in attrs]


def climbed(done: list[Reached], rung: int, sparsity: float, exclude: int | None = None, stratum: str = "") -> int:
    """How many other candidates of the same size (and stratum) already climbed from ``rung`` (finished
    ``rung + 1``)."""
    return sum(1 for e in done if e[1] == rung + 1 and abs(e[2] - sparsity) < SAME_SIZE and e[0] != exclude
               and (e[3] if len(e) > 3 else "") == stratum)


def climbs(score: float, others: list[float], keep: float, min_peers: int, promoted: int = 0) -> bool:
    """Whether a score climbs: it is among the best ``keep`` fraction of itself plus ``others``, and fewer than
    that many candidates of its size have climbed already (everyone climbs while fewer than ``min_peers``
    scores exist). The second rule caps the compute: a sampler that keeps improving would otherwise put most new
    candidates in the best fraction of the history (ASHA's known drift), measured at 47 % and 66 % climbing
    instead of 34 % on the digits CNN. A NaN score never climbs."""
    if math.isnan(score):
        return False
    n = len(others) + 1
    if n < min_peers:
        return True
    allowed = math.ceil(keep * n)
    return sum(o > score for o in others) < allowed and promoted < allowed


def finished_records(trials: list[optuna.trial.FrozenTrial], sign: float) -> list[tuple[float, dict[str, Any]]]:
    """(final score, higher is better; rung records) of every complete trial, for :func:`incumbent_rank`; a late
    promotion's lower rungs are read from the trial it resumed."""
    by_number = {t.number: t for t in trials}
    out = []
    for t in trials:
        if t.state != optuna.trial.TrialState.COMPLETE or not t.values:
            continue
        records = dict(t.user_attrs)
        origin = by_number.get(int(records.get(PROMOTED_FROM, -1)))
        if origin is not None:
            records = {**origin.user_attrs, **records}
        out.append((sign * float(t.values[0]), records))
    return out


def incumbent_rank(finished: Iterable[tuple[float, dict[str, Any]]], rung: int, sparsity: float, stratum: str = ""
                   ) -> float | None:
    """The ranking value at ``rung`` of the incumbent: of the candidates of this size (and stratum) that finished
    the last rung with a record of ``rung``, the one with the best final score. ``finished`` holds (final score,
    higher is better; rung records) pairs. None when there is no such candidate (the elitist rule lets anyone
    climb then)."""
    best: tuple[float, float] | None = None
    for final, records in finished:
        rec = records.get(rung_key(rung))
        if (rec is None or rec.get("rank") is None or abs(float(rec["sparsity"]) - sparsity) >= SAME_SIZE
                or str(rec.get("stratum", "")) != stratum):
            continue
        if best is None or final > best[0]:
            best = (final, float(rec["rank"]))
    return None if best is None else best[1]


def late_promotions(scores: list[RungScore], stopped: dict[int, int], promoted: set[int], keep: float,
                    min_peers: int, done: list[Reached] | None = None) -> list[tuple[int, int]]:
    """``(trial, rung to resume at)`` for every stopped trial that now belongs to its rung's best fraction, while
    its size's quota of climbers allows. ``stopped`` maps a trial to the rung where it stopped; ``promoted``
    holds trials already re-enqueued; ``done`` is :func:`reached` (who climbed already)."""
    out = []
    done = list(done or [])
    by_trial = {(s.trial, s.rung): s for s in scores}
    for number, rung in sorted(stopped.items()):
        mine = by_trial.get((number, rung))
        if number in promoted or mine is None:
            continue
        others = peers(scores, rung, mine.sparsity, exclude=number, stratum=mine.stratum)
        if climbs(mine.score, others, keep, min_peers,
                  climbed(done, rung, mine.sparsity, exclude=number, stratum=mine.stratum)):
            out.append((number, rung + 1))
            done.append((number, rung + 1, mine.sparsity, mine.stratum))  # it takes one of the size's places
    return out


def rank_fields(ladder: LadderSpec) -> list[str]:
    """The ranking measurement of every rung below the last."""
    return [ladder.rank_field(r) for r in range(len(ladder.epochs) - 1)]


def enqueue_promotions(study: optuna.Study, space: SearchSpace) -> int:
    """Enqueue every late promotion (same params and attrs, resuming at the next rung); returns how many."""
    if space.ladder is None or space.ladder.promote == "elitist":  # elitist: a stopped candidate lost to the
        # incumbent of its time and is never promoted later
        return 0
    trials = study.get_trials(deepcopy=False)
    scores = scores_of(((t.number, t.user_attrs) for t in trials), rank_fields(space.ladder))
    stopped = {t.number: int(t.user_attrs[LADDER_STOP]) for t in trials
               if t.state == optuna.trial.TrialState.PRUNED and LADDER_STOP in t.user_attrs}
    promoted = {int(t.user_attrs[PROMOTED_FROM]) for t in trials if PROMOTED_FROM in t.user_attrs}
    by_number = {t.number: t for t in trials}
    done = reached(((t.number, t.user_attrs) for t in trials), len(space.ladder.epochs))
    todo = late_promotions(scores, stopped, promoted, space.ladder.keep, space.ladder.min_peers, done)
    for number, rung in todo:
        t = by_number[number]
        keep_attrs = {k: v for k, v in t.user_attrs.items() if k in (BASELINE, TARGET, VIA_PARAMS)}
        study.enqueue_trial(dict(t.params), user_attrs={**keep_attrs, PROMOTED_FROM: number, START_RUNG: rung})
    return len(todo)


def compute_spent(trials: Iterable[dict[str, Any]], n_rungs: int) -> dict[str, float]:
    """Fine-tune epochs and evaluation seconds spent on every rung of the given trials' user attrs, the mean
    seconds of one evaluation at each rung (``rung<r>_s``), to express the search's compute in short trials, and
    the mean seconds per trial of each evaluation phase over all its rungs (``mean_time_<phase>``)."""
    epochs = seconds = 0.0
    per_rung: dict[int, list[float]] = {}
    phases = {"prune": 0.0, "finetune": 0.0, "measure": 0.0}
    climbed = 0  # trials with at least one rung evaluated
    for attrs in trials:
        climbed += any(rung_key(r) in attrs for r in range(n_rungs))
        for r in range(n_rungs):
            rec = attrs.get(rung_key(r))
            if rec is not None:
                epochs += float(rec["epochs"])
                seconds += float(rec["time_s"])
                per_rung.setdefault(r, []).append(float(rec["time_s"]))
                for phase in phases:
                    phases[phase] += float(rec.get(f"{phase}_s", 0.0))
    out = {"finetune_epochs": epochs, "eval_seconds": seconds}
    # per trial, every rung it ran summed (a trial's own "eval" attr holds its last rung only)
    out.update({f"mean_time_{phase}": total / max(climbed, 1) for phase, total in phases.items()})
    out.update({f"rung{r}_s": sum(v) / len(v) for r, v in per_rung.items()})
    out.update({f"rung{r}_n": float(len(v)) for r, v in per_rung.items()})
    return out
