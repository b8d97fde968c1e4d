"""The Python API, mirroring the CLI: ``autoprune.search(...)``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autoprune.space import SearchSpace


def load_space(space: SearchSpace | str | Path) -> SearchSpace:
    """Accept a loaded space or a path to its YAML."""
    return space if isinstance(space, SearchSpace) else SearchSpace.from_yaml(space)


def search(space: SearchSpace | str | Path, *, n_trials: int | None = None, timeout: float | None = None,
           storage: str | None = None, study: str | None = None, workers: int = 1, seed: int | None = None,
           sampler: str | None = None, device: str = "auto", runs_dir: str | Path = "runs",
           tracking_uri: str | None = None, track: bool = True, progress: Any = None) -> Any:
    """Run (or resume) a search; returns a :class:`~autoprune.search.SearchResult`.

    ``track=False`` skips MLflow; ``tracking_uri`` points at a real MLflow server instead of runs/mlflow.db.
    """
    from autoprune.search import SearchOptions, run_search

    sp = load_space(space)
    opts = SearchOptions(n_trials=n_trials, timeout=timeout, storage=storage, study_name=study, workers=workers,
                         seed=seed, sampler=sampler, device=device, runs_dir=Path(runs_dir))
    listener = None
    if track:
        from autoprune.tracking import MlflowListener

        listener = MlflowListener(tracking_uri, Path(runs_dir))
    return run_search(sp, opts, listener, progress)
