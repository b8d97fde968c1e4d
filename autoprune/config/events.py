"""Plain-data records passed from the search to listeners (tracking, progress) – no optuna, no mlflow."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["ProgressSink", "SearchListener", "StudyInfo", "TrialRecord"]


@dataclass(frozen=True)
class TrialRecord:
    """One finished trial as plain data."""

    number: int
    state: str  # COMPLETE | PRUNED | FAIL
    params: dict[str, Any]
    values: tuple[float, float] | None  # (val primary metric, size) when complete
    metrics: dict[str, Any] = field(default_factory=dict)  # the trial's "eval" user attr
    policy_json: str | None = None
    baseline: str | None = None
    pareto: bool = False
    test: dict[str, float] | None = None
    start_ms: int | None = None  # when the trial itself started and ended (epoch milliseconds)
    end_ms: int | None = None

    @property
    def sparsity(self) -> float:
        """Global sparsity of the prunable layers (NaN when not measured)."""
        return float(self.metrics.get("sparsity", float("nan")))


@dataclass(frozen=True)
class StudyInfo:
    """What a listener needs to know when a search starts."""

    study_name: str
    storage: str
    space_yaml: str
    space_name: str
    sampler: str
    size_metric: str
    dense_val: dict[str, float]
    dense_test: dict[str, float]
    sensitivity_files: list[str] = field(default_factory=list)
    primary: str = "accuracy"  # the task's primary metric (the first objective)
    direction: str = "maximize"  # and its direction
    config: dict[str, str] = field(default_factory=dict)  # the search's configuration, as MLflow params


class SearchListener(Protocol):
    """Receives search events; implementations must never raise into the search."""

    def on_start(self, info: StudyInfo) -> None:
        """The study is open (called once per process that searches)."""

    def on_trial(self, record: TrialRecord) -> None:
        """A trial finished (complete, pruned or failed)."""

    def on_front(self, front: set[int]) -> None:
        """The current Pareto front (trial numbers), sent every few trials so tags follow the front."""

    def on_finish(self, records: list[TrialRecord], summary: dict[str, Any]) -> None:
        """The search ended: every trial with final Pareto flags and test metrics."""

    def on_abort(self) -> None:
        """The search stopped early (Ctrl-C, SIGTERM, an error): finish what was handed over, then let go."""


class ProgressSink(Protocol):
    """Where progress goes, phase by phase (the CLI renders it: bars on a terminal, log lines otherwise)."""

    def start(self, total: int, description: str) -> None:
        """Begin a phase of ``total`` steps."""

    def update(self, done: int, fields: dict[str, Any]) -> None:
        """``done`` steps finished; ``fields`` holds short status values."""

    def stop(self) -> None:
        """End the phase."""
