"""Shared fixtures: a small digits space and a session-wide runs/ folder so the dense model trains once."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import torch
import yaml

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)

SMALL_SPACE = {
    "name": "digits_small",
    "model": {"name": "digits_cnn", "kwargs": {"width": 8}},
    "data": {"name": "digits"},
    "train": {"epochs": 4, "lr": 0.003},
    "targets": {"grid": [0.8, 0.9]},
    "criteria": ["magnitude"],
    "finetune": {"epochs": [1], "lr_scale": [0.3]},
    "sensitivity": {"ratios": [0.5, 0.9], "bn_batches": 0},
    "trials": 6,
    "seed": 0,
}


def mlflow_runs(runs: Path, study: str) -> tuple[MlflowClient, Any, list[Any]]:
    """The study's MLflow client, its one parent run (asserted) and that parent's child runs, from runs/mlflow.db."""
    from mlflow.tracking import MlflowClient  # lazily: most tests never read MLflow

    from autoprune.tracking.logger import default_tracking_uri

    client = MlflowClient(default_tracking_uri(runs))
    exp = client.get_experiment_by_name(study)
    assert exp is not None
    all_runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in all_runs if r.data.tags.get("autoprune.role") == "parent"]
    assert len(parents) == 1
    children = [r for r in all_runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    return client, parents[0], children


def write_space(path: Path, **overrides: object) -> Path:
    """Write SMALL_SPACE with top-level overrides to ``path``."""
    data = {**SMALL_SPACE, **overrides}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="session")
def space_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_space(tmp_path_factory.mktemp("space") / "digits_small.yaml")


@pytest.fixture(scope="session")
def workspace(space_path: Path, runs_dir: Path):  # type: ignore[no-untyped-def]
    from autoprune.config.space import SearchSpace
    from autoprune.workspace import load_workspace

    return load_workspace(SearchSpace.from_yaml(space_path), "cpu", runs_dir)


@pytest.fixture(autouse=True)
def _tracking_uri_not_inherited() -> object:
    """``mlflow.set_tracking_uri`` also sets MLFLOW_TRACKING_URI in ``os.environ``: a test that calls it would send
    every later test's ``autoprune`` subprocess (whose ``--tracking-uri`` reads that variable) to its own store
    (seen on CI: two searches logged to another test's database). Restore the variable after each test."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


# a search space on a tiny random Llama (2 blocks) and a little bundled text: the language-model tests'
TINY_LLAMA_SPACE = """\
name: tiny_llama
model:
  name: hf-llama
  kwargs: {hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2}
data:
  name: text:pydoc
  kwargs: {seq_len: 32, max_chars: 30000}
task: {kind: causal_lm}
layers:
  include: ["hf.model.layers.*"]
train: {epochs: 2, lr: 0.003, batch_size: 32}
criteria: [wanda]
finetune: {epochs: [0]}
targets: {grid: [0.5, 0.7]}
baselines: [uniform, owl, alpha]
anchor: owl
early_stop: {enabled: false}
sampler: evolution
trials: 14
"""
