"""Rich rendering: progress bars and summary tables (plain data in, terminal out)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

__all__ = ["RichProgress", "table"]

console = Console(stderr=True)
out = Console() if Console().is_terminal else Console(width=160)  # pipes/CI: do not squeeze tables to 80


class RichProgress:
    """A :class:`~autoprune.study.ProgressSink` drawing one bar with status fields (best accuracy, ETA)."""

    def __init__(self) -> None:
        self._progress: Progress | None = None
        self._task: Any = None

    def start(self, total: int, description: str) -> None:
        """Begin a bar of ``total`` steps."""
        self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TextColumn("ETA"),
                                  TimeRemainingColumn(), console=console, transient=False)
        self._progress.start()
        self._task = self._progress.add_task(description, total=total, status="")

    def update(self, done: int, fields: dict[str, Any]) -> None:
        """Move the bar and show e.g. best accuracy per target size."""
        if self._progress is None:
            return
        status = " ".join(f"{k}={_fmt(v)}" for k, v in fields.items())
        self._progress.update(self._task, completed=done, status=status)

    def advance(self) -> None:
        """One more step done."""
        if self._progress is not None:
            self._progress.advance(self._task)

    def stop(self) -> None:
        """Close the bar."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def _fmt(v: Any) -> str:
    if isinstance(v, dict):
        return "{" + " ".join(f"{k}:{x}" for k, x in v.items()) + "}"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def _cell(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        return f"{int(v):,}" if v.is_integer() and abs(v) >= 1000 else f"{v:.4f}"
    return str(v)


def table(title: str, rows: Iterable[dict[str, Any]], columns: list[str] | None = None) -> Table:
    """A rich table from dict rows (floats to 4 decimals, NaN as –)."""
    rows = list(rows)
    cols = columns or (list(rows[0]) if rows else [])
    t = Table(title=title, show_lines=False)
    for c in cols:
        t.add_column(c, justify="right" if rows and isinstance(rows[0].get(c), (int, float)) else "left")
    for r in rows:
        t.add_row(*[_cell(r.get(c, "")) for c in cols])
    return t
