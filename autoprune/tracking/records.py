"""One-shot MLflow records outside a search: an exported policy and an applied model on the study's parent run, a
benchmark's run, and the URLs of a study's pages in ``mlflow ui``."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from autoprune.tracking.logger import default_tracking_uri, ensure_experiment, find_parent, pareto_artifact, safe_key

__all__ = ["log_applied_model", "log_bench", "log_export", "study_urls"]


def log_export(tracking_uri: str | None, runs_dir: Path, study_name: str, policy_path: Path, trial: int
               ) -> str | None:
    """Attach an exported policy to the study's parent run and mark it as the study's exported policy; returns
    the run's id (None when the study has no MLflow run)."""
    client = MlflowClient(tracking_uri or default_tracking_uri(runs_dir))
    exp = client.get_experiment_by_name(study_name)
    run_id = find_parent(client, str(exp.experiment_id), study_name) if exp is not None else None
    if run_id is None:
        return None
    client.log_artifact(run_id, str(policy_path), "exported")
    client.set_tag(run_id, "exported_policy", f"trial {trial}: {policy_path.name}")
    return run_id


@contextmanager
def tracking_at(uri: str) -> Iterator[None]:
    """MLflow's fluent API (``log_model`` has no client form) pointed at ``uri`` for the block only: the caller's
    own tracking URI (a notebook's, say), and its ``MLFLOW_TRACKING_URI`` variable, which MLflow sets along, are
    restored after it."""
    import mlflow

    before = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)  # type: ignore[arg-type]  # None: back to unset (MLflow clears the variable)


def log_applied_model(tracking_uri: str | None, runs_dir: Path, study_name: str, model: Any, policy_json: str,
                      before: dict[str, float], after: dict[str, float], example: Any, register: str | None = None,
                      alias: str = "pruned") -> dict[str, str]:
    """Log the applied (pruned, fine-tuned, raw-input) model as an MLflow logged model on the study's parent run,
    with the policy and the before/after metrics; with ``register``, register it and point ``alias`` at the new
    version (MLflow's stages are deprecated: aliases are the convention). ``example``: one raw input (a numpy
    array), on which the model is traced to TorchScript (MLflow stores a ScriptModule with ``torch.jit.save``).
    Returns what was logged."""
    import mlflow.pytorch
    import torch

    uri = tracking_uri or default_tracking_uri(runs_dir)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(study_name)
    parent = find_parent(client, str(exp.experiment_id), study_name) if exp is not None else None
    if parent is None:
        return {}
    with tracking_at(uri), mlflow.start_run(run_id=parent):
        # TorchScript (traced on the example): no pickled classes, and any batch size (torch.export's program
        # would fix the example's batch of 1)
        traced = torch.jit.trace(model.eval(), torch.from_numpy(example))
        info = mlflow.pytorch.log_model(traced, name="pruned-model", registered_model_name=register,
                                        input_example=example, serialization_format="pickle",
                                        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
        mlflow.log_text(policy_json, "applied/policy.json")
        mlflow.log_metrics({safe_key(f"applied_{k}"): float(v) for k, v in after.items()
                            if isinstance(v, (int, float)) and math.isfinite(v)})
        mlflow.log_metrics({safe_key(f"applied_dense_{k}"): float(v) for k, v in before.items()
                            if isinstance(v, (int, float)) and math.isfinite(v)})
    out = {"model_uri": info.model_uri, "run_id": parent}
    if register and info.registered_model_version is not None:
        client.set_registered_model_alias(register, alias, str(info.registered_model_version))
        out.update(registered=register, version=str(info.registered_model_version), alias=alias)
    return out


def study_urls(tracking_uri: str | None, runs_dir: Path, study_name: str | None, host: str, port: int
               ) -> dict[str, str]:
    """Where to look in ``mlflow ui``: ``landing`` (the study's parent run in the model-training pages, opened on
    its Pareto plot), ``run`` (the run's overview: the front table in its description, its params and metrics),
    ``runs`` (every trial in the runs table) and ``plot`` (the PNG itself). The server's root when the study has
    no run yet."""
    base = f"http://{host}:{port}/"
    if study_name is None:
        return {"landing": base}
    client = MlflowClient(tracking_uri or default_tracking_uri(runs_dir))
    exp = client.get_experiment_by_name(study_name)
    if exp is None:
        return {"landing": base}
    runs = f"{base}#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"  # not the GenAI pages
    parent = find_parent(client, str(exp.experiment_id), study_name)
    if parent is None:
        return {"landing": runs, "runs": runs}
    page = f"{base}#/experiments/{exp.experiment_id}/runs/{parent}"
    return {"landing": f"{page}/artifacts/pareto/pareto.png?workflowType=machine_learning",
            "run": f"{page}?workflowType=machine_learning", "runs": runs, "plot": f"{base}{pareto_artifact(parent)}"}


def log_bench(tracking_uri: str | None, runs_dir: Path, name: str, params: dict[str, str],
              metrics: dict[str, float], files: list[Path]) -> None:
    """One run in the ``bench`` experiment holding the benchmark's numbers and files."""
    client = MlflowClient(tracking_uri or default_tracking_uri(runs_dir))
    exp_id = ensure_experiment(client, "bench", runs_dir)
    run = client.create_run(exp_id, run_name=name)
    ts = int(time.time() * 1000)
    client.log_batch(run.info.run_id, metrics=[Metric(safe_key(k), v, ts, 0) for k, v in metrics.items()
                                               if v == v],  # NaN (level not reached) is left out
                     params=[Param(safe_key(k), v) for k, v in params.items()])
    for f in files:
        client.log_artifact(run.info.run_id, str(f))
    client.set_terminated(run.info.run_id, "FINISHED")
