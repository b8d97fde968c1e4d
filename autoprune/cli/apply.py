"""The ``autoprune apply`` command body: run the apply workflow with a progress bar, print what it produced."""

from __future__ import annotations

from pathlib import Path

from autoprune.cli.console import RichProgress, out, table
from autoprune.deploy.apply import ApplyOptions, apply_policy

__all__ = ["run_apply"]


def run_apply(policy_path: Path, opts: ApplyOptions) -> None:
    """Apply a policy file (see :func:`~autoprune.deploy.apply.apply_policy`), print the before/after table, say
    which files were written and what MLflow got."""
    applied = apply_policy(policy_path, opts, RichProgress())
    out.print(table(applied.title, applied.rows))
    for line in applied.written:
        out.print(line, soft_wrap=True)  # one line each, however long (logs are grepped)
    if applied.logged:
        out.print(applied.logged, soft_wrap=True)
