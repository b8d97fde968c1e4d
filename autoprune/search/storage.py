"""Optuna storages and samplers: journal file by default, any Optuna URL (PostgreSQL for scale-out)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

import optuna
from optuna.storages import JournalStorage, RDBStorage, RetryFailedTrialCallback
from optuna.storages.journal import JournalFileBackend

from autoprune.errors import ConfigError

DIRECTIONS: list[Literal["maximize", "minimize"]] = ["maximize", "minimize"]  # validation accuracy ↑, size ↓


def make_storage(url: str | None, runs_dir: Path) -> optuna.storages.BaseStorage:
    """``None`` → ``runs/optuna.journal``; a ``*.journal``/``*.log`` path → journal file; else an RDB URL.

    RDB storages get heartbeats so trials of a crashed worker are marked failed and retried once.
    """
    if url is None:
        runs_dir.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(runs_dir / "optuna.journal")))
    if url.endswith((".journal", ".log")) and "://" not in url:
        Path(url).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(url))
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 5 but are the documented way
            warnings.simplefilter("ignore")
            return RDBStorage(url, heartbeat_interval=30, grace_period=90,
                              heartbeat_stale_trial_callback=RetryFailedTrialCallback(max_retry=1),
                              engine_kwargs={"pool_pre_ping": True} if not url.startswith("sqlite") else None)
    except Exception as err:
        raise ConfigError(f"--storage '{url}': cannot open the Optuna storage ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''})") from None


def make_sampler(name: str, seed: int, parallel: bool = False) -> optuna.samplers.BaseSampler:
    """TPE (multivariate, default), NSGA-II, random or GP, seeded.

    TPE uses ``group=True`` because enqueued heuristics that lie outside the searched box carry only the
    target (no per-layer params); without groups, multivariate TPE would fall back to independent sampling.
    The constant liar (running trials count as bad) only matters with several workers.
    """
    if name == "tpe":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # `group` is flagged experimental
            return optuna.samplers.TPESampler(multivariate=True, group=True, seed=seed, n_startup_trials=10,
                                              constant_liar=parallel)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=20)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ConfigError(f"unknown sampler '{name}' (tpe, nsga2, random, gp)")


def open_study(name: str, storage: optuna.storages.BaseStorage, sampler: optuna.samplers.BaseSampler
               ) -> optuna.Study:
    """Create the two-objective study or resume it if it exists."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(study_name=name, storage=storage, directions=DIRECTIONS, sampler=sampler,
                               load_if_exists=True)


def load_existing(name: str, storage: optuna.storages.BaseStorage) -> optuna.Study:
    """Open an existing study; a clear error lists the studies that do exist."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    if name not in names:
        raise ConfigError(f"study '{name}' not found in the storage (studies: {', '.join(names) or 'none'})")
    return optuna.load_study(study_name=name, storage=storage)
