"""Rich rendering: progress bars and summary tables (plain data in, terminal out)."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

__all__ = ["SIZE_CAPTION", "RichProgress", "table"]

console = Console(stderr=True)
out = Console() if Console().is_terminal else Console(width=160)  # pipes/CI: do not squeeze tables to 80


class RichProgress:
    """A :class:`~autoprune.study.ProgressSink`: one bar per phase with status fields and ETA on a terminal; plain
    log lines when stderr is not one (CI, a pipe, a file): a line when a phase starts, at every tenth of it (at
    most one per ``every_s`` seconds), and when it ends — never one progress line cut at 80 columns."""

    def __init__(self, plain: bool | None = None, every_s: float = 30.0) -> None:
        self._progress: Progress | None = None
        self._task: Any = None
        self.plain = (not console.is_terminal) if plain is None else plain
        self.every_s = every_s
        self._phase: dict[str, Any] = {}

    def start(self, total: int, description: str) -> None:
        """Begin a phase of ``total`` steps."""
        self.stop()
        if self.plain:
            self._phase = {"name": description, "total": max(total, 1), "done": 0, "t0": time.monotonic(),
                           "said": time.monotonic(), "tenth": 0, "status": ""}
            self._say(f"{description}: started ({total} steps)")
            return
        self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TextColumn("ETA"),
                                  TimeRemainingColumn(), console=console, transient=False)
        self._progress.start()
        self._task = self._progress.add_task(description, total=total, status="")

    def update(self, done: int, fields: dict[str, Any]) -> None:
        """Move to ``done`` steps and show e.g. the best score per target size."""
        status = " ".join(f"{k}={_fmt(v)}" for k, v in fields.items())
        if self.plain:
            self._plain_step(done, status)
        elif self._progress is not None:
            self._progress.update(self._task, completed=done, status=status)

    def advance(self) -> None:
        """One more step done."""
        if self.plain:
            self._plain_step(int(self._phase.get("done", 0)) + 1, str(self._phase.get("status", "")))
        elif self._progress is not None:
            self._progress.advance(self._task)

    def stop(self) -> None:
        """End the current phase."""
        if self.plain and self._phase:
            p, self._phase = self._phase, {}
            self._say(f"{p['name']}: done {p['done']}/{p['total']} in {time.monotonic() - p['t0']:.1f}s "
                      f"{p['status']}".rstrip())
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def _plain_step(self, done: int, status: str) -> None:
        p = self._phase
        if not p:
            return
        p["done"], p["status"] = done, status
        tenth = min(10, done * 10 // p["total"])
        now = time.monotonic()
        if tenth > p["tenth"] and (now - p["said"] >= self.every_s or tenth == 10 or p["tenth"] == 0):
            p["tenth"], p["said"] = tenth, now
            elapsed = now - p["t0"]
            eta = elapsed / max(done, 1) * (p["total"] - done)
            self._say(f"{p['name']}: {done}/{p['total']} ({tenth * 10}%) {elapsed:.0f}s elapsed, ETA {eta:.0f}s "
                      f"{status}".rstrip())

    @staticmethod
    def _say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)


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


SIZE_CAPTION = ("size: the search's size metric as a fraction of the dense model (nonzeros: nonzero parameters "
                "over all parameters; bytes: best sparse format; flops: MACs); nonzeros: the count")


def table(title: str, rows: Iterable[dict[str, Any]], columns: list[str] | None = None,
          caption: str | None = None) -> Table:
    """A rich table from dict rows (floats to 4 decimals, NaN as –), with an optional caption under it."""
    rows = list(rows)
    cols = columns or (list(rows[0]) if rows else [])
    t = Table(title=title, show_lines=False, caption=caption, caption_justify="left")
    for c in cols:
        t.add_column(c, justify="right" if rows and isinstance(rows[0].get(c), (int, float)) else "left")
    for r in rows:
        t.add_row(*[_cell(r.get(c, "")) for c in cols])
    return t
