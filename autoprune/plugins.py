"""Resolving a user's ``package.module:callable`` reference (models, data sets, tasks): one place, no torch."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from autoprune.errors import ModelError

__all__ = ["import_callable"]


def import_callable(ref: str, what: str) -> Callable[..., Any]:
    """Resolve ``package.module:callable``; a clear error names the reference when it fails."""
    mod_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(mod_name)
    except Exception as err:  # any import-time failure of user code is the user's input problem
        raise ModelError(f"{what} '{ref}': cannot import module '{mod_name}' ({err})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ModelError(f"{what} '{ref}': module '{mod_name}' has no callable '{attr}'")
    return fn
