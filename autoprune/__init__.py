"""autoprune: automatically find how much to prune each layer of a PyTorch model.

Importing the package is cheap: heavy parts (torch, optuna, mlflow) load on first use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Policy", "SearchSpace", "apply", "apply_policy", "export", "load_pruned", "load_workspace", "search"]


def __getattr__(name: str) -> Any:
    if name == "Policy":
        from autoprune.config.policy import Policy

        return Policy
    if name == "SearchSpace":
        from autoprune.config.space import SearchSpace

        return SearchSpace
    if name in ("search", "export", "load_workspace", "apply_policy"):
        from autoprune import api

        return getattr(api, name)
    if name == "apply":
        from autoprune.deploy.production import apply

        return apply
    if name == "load_pruned":
        from autoprune.deploy.production import load_pruned

        return load_pruned
    raise AttributeError(name)
