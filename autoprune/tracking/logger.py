"""MLflow tracking: the only module that imports mlflow.

One parent run per study (the space YAML, dense metrics, sensitivity plot, and at the end the Pareto
front as PNG/HTML/CSV/JSON, best-accuracy-at-size metrics and hypervolume) and one child run per trial,
logged in a single ``log_batch``. :class:`MlflowLogger` writes synchronously; the search uses it through
:class:`autoprune.tracking_worker.MlflowListener`, which runs it in a separate process so that MLflow's
Python work never competes with the search for the GIL. A failing MLflow never stops the search: the error
is shown once, logging is switched off, and ``autoprune sync`` backfills the missing runs later. One-shot records
outside a search (an export, an applied model, a benchmark) are in :mod:`autoprune.tracking.records`.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from filelock import FileLock
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from autoprune.config.events import StudyInfo, TrialRecord
from autoprune.config.pareto import best_at, hypervolume
from autoprune.tracking.plots import pareto_html, pareto_png

__all__ = [
    "BEST_AT",
    "MlflowLogger",
    "default_tracking_uri",
    "ensure_experiment",
    "find_parent",
    "front_markdown",
    "pareto_artifact",
    "safe_key",
    "write_front_table",
]

_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. :/]")
BEST_AT = (0.5, 0.8, 0.9, 0.95, 0.97, 0.98)


def safe_key(key: str) -> str:
    """MLflow-safe param/metric key (MLflow rejects e.g. ``[`` ``]``; FQNs like ``layer1.0.conv1`` pass)."""
    return _UNSAFE.sub("_", key)[:250]


def default_tracking_uri(runs_dir: Path) -> str:
    """``sqlite:///<abs runs>/mlflow.db`` – never the Optuna file."""
    return f"sqlite:///{(runs_dir / 'mlflow.db').resolve()}"


def ensure_experiment(client: MlflowClient, name: str, runs_dir: Path) -> str:
    """Get or create the experiment, with artifacts under ``runs/artifacts``; returns its id."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return str(exp.experiment_id)
    location = (runs_dir / "artifacts").resolve().as_uri()
    # MLflow 3's UI opens an experiment in its model-training pages (not the GenAI ones) with this tag
    return str(client.create_experiment(name, artifact_location=location,
                                        tags={"mlflow.experimentKind": "custom_model_development"}))


def find_parent(client: MlflowClient, experiment_id: str, study_name: str) -> str | None:
    """Run id of the study's parent run, if one exists."""
    query = f"tags.`autoprune.study` = '{study_name}' and tags.`autoprune.role` = 'parent'"
    found = client.search_runs([experiment_id], query)
    return str(found[0].info.run_id) if found else None


class MlflowLogger:
    """A synchronous :class:`~autoprune.events.SearchListener` writing to MLflow."""

    def __init__(self, tracking_uri: str | None, runs_dir: Path, experiment: str | None = None) -> None:
        self.runs_dir = runs_dir
        self.uri = tracking_uri or default_tracking_uri(runs_dir)
        self.experiment_name = experiment
        self.client: MlflowClient | None = None
        self.experiment_id = ""
        self.parent_id = ""
        self.children: dict[int, str] = {}  # trial number -> run id
        self.pareto_tags: dict[int, bool] = {}
        self.info: StudyInfo | None = None
        self.failed: str | None = None
        self.log_seconds: list[float] = []  # seconds per child run
        # two searches of one study on this machine: each creates the parent and each child run once
        self._lock = FileLock(str(runs_dir / ".mlflow.lock"))

    # -- resilience -------------------------------------------------------------------------------
    def _guard(self, what: str, fn: Any, *args: Any) -> Any:
        if self.failed is not None:
            return None
        try:
            return fn(*args)
        except Exception as err:  # MLflow down / locked: keep the search going, say so once
            self.failed = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            print(f"warning: MLflow logging disabled ({what}: {self.failed}); trials stay in the Optuna study, "
                  "run `autoprune sync` later to backfill", file=sys.stderr)
            return None

    # -- SearchListener ---------------------------------------------------------------------------
    def on_start(self, info: StudyInfo) -> None:
        """Open (or find again) the study's parent run."""
        self.info = info
        self._guard("start", self._start, info)

    def on_trial(self, record: TrialRecord) -> None:
        """Log one child run (skipped if this trial already has one)."""
        self._guard("trial", self._log_trial, record)

    def on_front(self, front: set[int]) -> None:
        """Re-tag child runs whose Pareto membership changed."""
        self._guard("front", self._retag, front)

    def _retag(self, front: set[int]) -> None:
        assert self.client is not None
        for number, run_id in self.children.items():
            if self.pareto_tags.get(number) != (number in front):
                self.client.set_tag(run_id, "pareto", "true" if number in front else "false")
                self.pareto_tags[number] = number in front

    def on_abort(self) -> None:
        """Nothing to finish: every event was written when it came (the parent run stays open for a resume)."""

    def on_finish(self, records: list[TrialRecord], summary: dict[str, Any]) -> None:
        """Backfill missing child runs, refresh Pareto tags and log the front artifacts."""
        self._guard("finish", self._finish, records, summary)

    # -- implementation ---------------------------------------------------------------------------
    def _start(self, info: StudyInfo) -> None:
        # fail fast on an unreachable server (MLflow's default retries for minutes); users may override
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        with self._lock:  # also serialises creating the MLflow database (two at once fail: "duplicate column")
            self.client = MlflowClient(self.uri)
            self._open_parent(info)
        self.client.update_run(self.parent_id, "RUNNING")
        self._load_children()

    def _open_parent(self, info: StudyInfo) -> None:
        assert self.client is not None
        self.experiment_id = ensure_experiment(self.client, self.experiment_name or info.study_name, self.runs_dir)
        found = find_parent(self.client, self.experiment_id, info.study_name)
        if found is not None:
            self.parent_id = found
        else:
            run = self.client.create_run(self.experiment_id, run_name=info.study_name,
                                         tags={"autoprune.study": info.study_name, "autoprune.role": "parent",
                                               "sampler": info.sampler, "size_metric": info.size_metric,
                                               "storage": info.storage})
            self.parent_id = run.info.run_id
            metrics = [Metric(f"dense_{k}", float(v), _ms(), 0) for k, v in info.dense_val.items()]
            metrics += [Metric(f"dense_test_{k}", float(v), _ms(), 0) for k, v in info.dense_test.items()]
            params = [Param(safe_key(k), v[:6000]) for k, v in info.config.items()]  # the search's configuration
            self.client.log_batch(self.parent_id, metrics=metrics, params=params)
            self.client.log_text(self.parent_id, info.space_yaml, "search_space.yaml")
            for f in info.sensitivity_files:
                if Path(f).exists():
                    self.client.log_artifact(self.parent_id, f, "sensitivity")

    def _load_children(self) -> None:
        assert self.client is not None
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id], f"tags.`mlflow.parentRunId` = '{self.parent_id}'",
                                           max_results=1000, page_token=token)
            for run in page:
                n = run.data.tags.get("autoprune.trial")
                if n is not None:
                    self.children[int(n)] = run.info.run_id
                    self.pareto_tags[int(n)] = run.data.tags.get("pareto") == "true"
            token = page.token
            if not token:
                break

    def _child_of(self, number: int) -> str | None:
        """Run id of trial ``number``'s child run if any process logged one already."""
        assert self.client is not None
        found = self.client.search_runs([self.experiment_id], f"tags.`mlflow.parentRunId` = '{self.parent_id}' and "
                                        f"tags.`autoprune.trial` = '{number}'", max_results=1)
        return str(found[0].info.run_id) if found else None

    def _log_trial(self, r: TrialRecord) -> None:
        if self.client is None or r.number in self.children:
            return
        with self._lock:  # check and create as one step: another process may be logging this study too
            found = self._child_of(r.number)
            if found is not None:
                self.children[r.number] = found
                return
            self._create_child(r)

    def _create_child(self, r: TrialRecord) -> None:
        assert self.client is not None
        t0 = time.perf_counter()
        tags = {"mlflow.parentRunId": self.parent_id, "autoprune.trial": str(r.number), "state": r.state,
                "pareto": "true" if r.pareto else "false", "sampler": self.info.sampler if self.info else ""}
        if r.baseline:
            tags["baseline"] = r.baseline
        if "rung" in r.metrics:
            tags["rung"] = str(r.metrics["rung"])  # the highest rung of the fidelity ladder it reached
        # the run's duration is the trial's own (not the moment it was logged)
        run = self.client.create_run(self.experiment_id, run_name=f"trial-{r.number}", tags=tags,
                                     start_time=r.start_ms)
        self.client.log_batch(run.info.run_id, metrics=_metrics(r, self.info.primary if self.info else "accuracy"),
                              params=_params(r))
        if r.policy_json:
            self.client.log_text(run.info.run_id, r.policy_json, "policy.json")
        self.client.set_terminated(run.info.run_id, "FINISHED" if r.state == "COMPLETE" else "KILLED",
                                   end_time=r.end_ms)
        self.children[r.number] = run.info.run_id
        self.pareto_tags[r.number] = r.pareto
        self.log_seconds.append(time.perf_counter() - t0)

    def _finish(self, records: list[TrialRecord], summary: dict[str, Any]) -> None:
        if self.client is None:
            return
        for r in records:
            if r.state in ("COMPLETE", "PRUNED", "FAIL"):
                self._log_trial(r)
        for r in records:  # keep pareto tags equal to the study's current front
            run_id = self.children.get(r.number)
            if run_id and self.pareto_tags.get(r.number) != r.pareto:
                self.client.set_tag(run_id, "pareto", "true" if r.pareto else "false")
                self.pareto_tags[r.number] = r.pareto
            if run_id and r.test:
                self.client.log_batch(run_id, metrics=[Metric(f"test_{k}", float(v), _ms(), 0)
                                                       for k, v in r.test.items()])
        self._log_front(records, summary)
        self.client.set_tag(self.parent_id, "mlflow.note.content",
                            front_markdown(records, self.info, pareto_artifact(self.parent_id)))
        self.client.set_terminated(self.parent_id, "FINISHED")

    def _log_front(self, records: list[TrialRecord], summary: dict[str, Any]) -> None:
        assert self.client is not None and self.info is not None
        done = [r for r in records if r.values is not None]
        primary, sign = self.info.primary, 1.0 if self.info.direction == "maximize" else -1.0
        pts = [(sign * r.values[0], r.values[1]) for r in done if r.values]  # higher is better in both tools
        # hypervolume against accuracy 0 is defined for a metric in [0, 1]; an error such as MSE has no such bound
        metrics = [Metric("hypervolume", hypervolume(pts), _ms(), 0)] if sign > 0 else []
        for level in BEST_AT:
            best = best_at(pts, [float(r.metrics.get("target_sparsity", r.sparsity)) for r in done], level)
            if best is not None:
                metrics.append(Metric(f"best_{primary}_at_{round(level * 100)}", sign * best, _ms(), 0))
        metrics += [Metric(k, float(v), _ms(), 0) for k, v in summary.items() if isinstance(v, (int, float))]
        if self.log_seconds:
            metrics.append(Metric("tracking_worker_s_per_trial", sum(self.log_seconds) / len(self.log_seconds),
                                  _ms(), 0))
        self.client.log_batch(self.parent_id, metrics=metrics)
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            title = f"{self.info.study_name}: {primary} vs size"
            dense = self.info.dense_val.get(primary)
            pareto_png(records, d / "pareto.png", self.info.size_metric, title, primary, dense)
            pareto_html(records, d / "pareto.html", self.info.size_metric, title, primary, dense)
            write_front_table(records, d / "pareto.csv", d / "pareto.json", primary)
            for name in ("pareto.png", "pareto.html", "pareto.csv", "pareto.json"):
                self.client.log_artifact(self.parent_id, str(d / name), "pareto")


def front_markdown(records: list[TrialRecord], info: StudyInfo | None, plot: str | None = None) -> str:
    """The parent run's description (MLflow shows it on the run page): the Pareto plot (``plot``: its URL, relative
    to the MLflow server), then the front as a markdown table, the dense model first."""
    primary = info.primary if info else "accuracy"
    lines = [f"![Pareto front]({plot})", ""] if plot else []
    lines += [f"**Pareto front** ({primary} on validation and test, size as a fraction of the dense model; "
             "plot: Artifacts → `pareto/pareto.png`, interactive: `pareto/pareto.html`)", "",
             f"| trial | baseline | sparsity | size | val {primary} | test {primary} |", "|---|---|---|---|---|---|"]
    if info is not None:
        lines.append(f"| dense | | 0 | 1 | {info.dense_val.get(primary, float('nan')):.4f} | "
                     f"{info.dense_test.get(primary, float('nan')):.4f} |")
    for r in sorted((r for r in records if r.pareto and r.values), key=lambda r: r.sparsity):
        val, size = r.values or (math.nan, math.nan)
        test = (r.test or {}).get(primary)
        lines.append(f"| {r.number} | {r.baseline or ''} | {r.sparsity:.4f} | {size:.4f} | {val:.4f} | "
                     f"{'–' if test is None else f'{test:.4f}'} |")
    return "\n".join(lines)


def write_front_table(records: list[TrialRecord], csv_path: Path, json_path: Path, primary: str = "accuracy"
                      ) -> None:
    """The front as CSV and JSON rows (``primary``: the task's primary metric)."""
    rows = [{"trial": r.number, "baseline": r.baseline or "", "sparsity": r.sparsity,
             f"val_{primary}": r.values[0] if r.values else None, "size": r.values[1] if r.values else None,
             f"test_{primary}": (r.test or {}).get(primary)} for r in records if r.pareto]
    rows.sort(key=lambda x: float(x["sparsity"] or 0.0))
    json_path.write_text(json.dumps(rows, indent=1))
    with csv_path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["trial"])
        w.writeheader()
        w.writerows(rows)


def _ms() -> int:
    return int(time.time() * 1000)


def _params(r: TrialRecord) -> list[Param]:
    params = {safe_key(k): str(v)[:6000] for k, v in r.params.items()}
    if r.policy_json:
        pol = json.loads(r.policy_json)
        params.update({safe_key(f"ratio/{k}"): f"{v:.6f}" for k, v in pol.get("sparsity", {}).items()})
    return [Param(k, v) for k, v in params.items()]


def _metrics(r: TrialRecord, primary: str = "accuracy") -> list[Metric]:
    ts = _ms()
    out = []
    if r.values:
        out += [Metric(f"val_{primary}_objective", r.values[0], ts, 0), Metric("size", r.values[1], ts, 0)]
    device = str(r.metrics.get("latency_device") or "").split(" ")[0].replace(":", "")
    for k, v in r.metrics.items():
        if k == "latency_ms" and isinstance(v, (int, float)) and device:  # the metric names its device
            out.append(Metric(f"latency_ms_{device}", float(v), ts, 0))
        elif isinstance(v, (int, float)) and v is not None:
            out.append(Metric(safe_key(k), float(v), ts, 0))
        elif k == "epoch_losses" and isinstance(v, list):
            out += [Metric("finetune_loss", float(x), ts, i) for i, x in enumerate(v)]
        elif k == "layer_sparsity" and isinstance(v, dict):
            out += [Metric(safe_key(f"sparsity/{f}"), float(x), ts, 0) for f, x in v.items()]
    return out








def pareto_artifact(run_id: str) -> str:
    """The Pareto PNG as the MLflow server serves it (a URL relative to the server's root)."""
    return f"get-artifact?path=pareto%2Fpareto.png&run_uuid={run_id}"
