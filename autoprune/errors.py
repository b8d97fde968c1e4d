"""User-facing errors: each one renders as a single line naming the file, field or layer at fault."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError

__all__ = [
    "AutopruneError", "ConfigError", "DataError", "FinetuneDiverged", "ModelError", "PolicyError", "first_problem",
]


def first_problem(err: ValidationError, root: str) -> tuple[str, str]:
    """The dotted location and the message of a pydantic error's first problem (``root`` when it has no location):
    the one problem a single-line error names."""
    first = err.errors()[0]
    return ".".join(str(p) for p in first["loc"]) or root, first["msg"]


class AutopruneError(Exception):
    """A problem with the user's input; the CLI prints ``str(err)`` on one line and exits non-zero."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


class ConfigError(AutopruneError):
    """A search-space / config file is invalid (message names the file, field and line)."""


class PolicyError(AutopruneError):
    """A policy file is invalid or does not fit the model."""


class ModelError(AutopruneError):
    """A model cannot be built, loaded or matched to a checkpoint."""


class DataError(AutopruneError):
    """A dataset cannot be found or loaded."""


class FinetuneDiverged(AutopruneError, RuntimeError):
    """A fine-tune's loss became non-finite or grew past 10× its first epoch's: in a search, that candidate fails
    with this reason (the search goes on); in ``apply``, the command stops with it."""
