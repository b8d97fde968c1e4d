"""The ``autoprune`` command line (typer). Nothing imports this package."""

from autoprune.cli.main import main

__all__ = ["main"]
