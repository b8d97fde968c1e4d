"""Scale-out on a real PostgreSQL server (started on loopback by scripts/test.sh): two workers, one study."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import optuna
import pytest

from autoprune.config.space import SearchSpace
from autoprune.study import SearchOptions, run_search

PG_URL = os.environ.get("AUTOPRUNE_TEST_PG_URL")

pytestmark = pytest.mark.postgres


def _require_pg() -> str:
    if PG_URL is None:
        if os.environ.get("CI"):
            pytest.fail("CI must provide PostgreSQL (scripts/pg.sh sets AUTOPRUNE_TEST_PG_URL)")
        pytest.skip("no PostgreSQL: run through scripts/test.sh")
    return PG_URL


def test_two_workers_share_one_postgres_study(space_path: Path, runs_dir: Path) -> None:
    url = _require_pg()
    name = f"pg-{uuid.uuid4().hex[:8]}"
    space = SearchSpace.from_yaml(space_path)
    opts = SearchOptions(n_trials=8, storage=url, study_name=name, workers=2, runs_dir=runs_dir, device="cpu")
    result = run_search(space, opts)
    study = optuna.load_study(study_name=name, storage=url)
    finished = [t for t in study.trials if t.state.is_finished()]
    assert result.n_trials == len(finished) == 8
    assert len({t.number for t in finished}) == 8
    keys = [(t.user_attrs["baseline"], t.user_attrs["target"]) for t in finished if "baseline" in t.user_attrs]
    assert len(keys) == len(set(keys))  # no enqueued baseline ran twice across workers
    # resume from the same storage adds exactly 2 more
    run_search(space, SearchOptions(n_trials=2, storage=url, study_name=name, runs_dir=runs_dir, device="cpu"))
    assert len([t for t in optuna.load_study(study_name=name, storage=url).trials if t.state.is_finished()]) == 10


def test_bad_storage_url_is_one_clear_line(space_path: Path, runs_dir: Path) -> None:
    from autoprune.errors import ConfigError
    from autoprune.study.storage import make_storage

    with pytest.raises(ConfigError, match=r"--storage 'postgresql\+psycopg://nobody@127.0.0.1:9/x'"):
        make_storage("postgresql+psycopg://nobody@127.0.0.1:9/x", runs_dir)
