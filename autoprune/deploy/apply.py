"""The apply workflow, the one ``autoprune apply`` and ``autoprune.apply_policy`` both run: load model + data,
prune with the policy, fine-tune, make permanent, shrink, save and export, report before/after, log to MLflow."""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from autoprune.config.events import ProgressSink
from autoprune.config.policy import Policy
from autoprune.config.space import DataSpec, ModelSpec, SearchSpace, TaskSpec
from autoprune.deploy.int8 import save_int8
from autoprune.deploy.production import (
    apply,
    export_onnx,
    export_torchscript,
    quantize_int8,
    save_pruned,
    with_input_scaling,
)
from autoprune.errors import AutopruneError, PolicyError
from autoprune.files import check_writable
from autoprune.models.hf import CausalLM, SequenceClassifier, hf_tokenizer, save_hf_folder
from autoprune.pruning.criteria import criterion_for
from autoprune.pruning.granularities import granularity_for
from autoprune.pruning.metrics import latency_device
from autoprune.pruning.schedules import ratios_per_step
from autoprune.tasks import Task
from autoprune.tasks.data import Splits
from autoprune.tasks.training import choose_threads
from autoprune.workspace import load_workspace

__all__ = ["ROWS", "Applied", "ApplyOptions", "apply_policy", "with_criterion", "written_files"]

# size_nonzeros: nonzero parameters as a fraction of the dense model's (the search's size objective)
ROWS = ("params", "nonzeros", "size_nonzeros", "bytes_dense", "bytes_sparse", "macs", "latency_ms", "file_bytes")
# (the task's test metrics come first: accuracy, precision, recall, f1, loss for classification)


def _space(space: Path | None, model: str | None, data: str | None, checkpoint: str | None,
           policy: Policy) -> SearchSpace:
    """The space to apply on: the file, or one made of --model/--data and the policy's own task."""
    if space is not None:
        sp = SearchSpace.from_yaml(space)
        if sp.task.kind != policy.task:
            raise AutopruneError(f"apply: the policy was searched with task '{policy.task}' but {space} has task "
                                 f"'{sp.task.kind}': use the search's space file")
        return sp
    if model is None or data is None:
        raise AutopruneError("apply: give --space SPACE.yaml, or both --model and --data")
    return SearchSpace(name="apply", model=ModelSpec(name=model, checkpoint=checkpoint), data=DataSpec(name=data),
                       task=TaskSpec(kind=policy.task, options=policy.task_options))


@dataclass(frozen=True)
class ApplyOptions:
    """How to apply a policy (the ``autoprune apply`` flags). The model and data come from ``space`` (the search's
    space file) or from ``model`` + ``data`` (+ ``checkpoint``); ``criterion`` prunes at the policy's ratios with
    another criterion (e.g. sparsegpt); ``register`` also registers the model in MLflow's registry."""

    space: Path | None = None
    model: str | None = None
    data: str | None = None
    checkpoint: str | None = None
    finetune_epochs: float | None = None  # None: the policy's own
    out: Path = Path("pruned.pt")
    onnx: Path | None = None
    torchscript: Path | None = None
    quantize: str | None = None  # "int8"
    hf_folder: Path | None = None
    criterion: str | None = None
    calibration: str | None = None  # SparseGPT's inputs: dense or sequential (None: the policy's own)
    device: str = "auto"
    runs: Path = Path("runs")
    threads: int | None = None
    track: bool = True
    register: str | None = None
    tracking_uri: str | None = None


@dataclass
class Applied:
    """What applying a policy produced: the pruned model, the before/after rows, and what was written or logged."""

    policy: Policy
    model: nn.Module
    rows: list[dict[str, Any]]  # {"metric", "dense", "pruned"}: test metrics first, then sizes and speed
    title: str
    written: list[str] = field(default_factory=list)  # one line per file written
    logged: str = ""  # what MLflow got (or why not)


def _check_outputs(opts: ApplyOptions) -> None:
    """Refuse what would fail after the fine-tune, before it: an unknown quantization, an unwritable path, a
    missing ONNX exporter."""
    if opts.quantize not in (None, "int8"):
        raise AutopruneError(f"--quantize '{opts.quantize}': only int8 is supported")
    for path, what in ((opts.out, "-o"), (opts.onnx, "--onnx"), (opts.torchscript, "--torchscript"),
                       (opts.hf_folder, "--hf-folder")):
        if path is not None:
            check_writable(path, what)
    if opts.onnx is not None:
        missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
        if missing:
            raise AutopruneError(f"--onnx needs {', '.join(missing)}: pip install 'autoprune[onnx]'")


def apply_policy(policy_path: Path, opts: ApplyOptions = ApplyOptions(), progress: ProgressSink | None = None
                 ) -> Applied:
    """Apply a policy file (pruned with ``opts.criterion`` instead of its own when given): prune, fine-tune, make
    permanent, shrink, save ``opts.out`` (and the exports asked for), measure before/after on the test split, and
    log the model to the study's MLflow parent run when ``opts.track`` (or ``opts.register``)."""
    _check_outputs(opts)
    policy = with_criterion(Policy.load(policy_path), opts.criterion, opts.calibration)
    try:
        criterion_for(policy.criterion)  # registered, or the user's module:Class imports
    except ValueError as err:
        raise PolicyError(f"{f'--criterion {opts.criterion}' if opts.criterion else policy_path}: {err}") from None
    try:
        ratios_per_step({}, policy.schedule)  # the schedule and granularity too: before the model loads, not after
        granularity_for(policy.granularity)
    except ValueError as err:
        raise PolicyError(f"{policy_path}: {err}") from None
    ws = load_workspace(_space(opts.space, opts.model, opts.data, opts.checkpoint, policy), opts.device, opts.runs,
                        expect_dense=policy.dense_key or None)
    if opts.hf_folder is not None and not isinstance(ws.model, (CausalLM, SequenceClassifier)):
        raise AutopruneError(f"--hf-folder: {policy.model} is not a Hugging Face model")
    choose_threads(ws.model, 1, opts.threads)
    epochs = policy.finetune.epochs if opts.finetune_epochs is None else opts.finetune_epochs
    steps = [0]

    def advance() -> None:
        steps[0] += 1
        if progress is not None:
            progress.update(steps[0], {})

    if progress is not None:
        progress.start(max(1, math.ceil(epochs)), f"prune ({policy.criterion}) and fine-tune ({epochs:g} epochs)")
    try:
        res = apply(ws.model, policy, ws.splits, finetune_epochs=opts.finetune_epochs, progress=advance, task=ws.task)
    finally:
        if progress is not None:
            progress.stop()
    rows, deployable = _save_and_measure(ws, policy, res, opts)
    written = [f"wrote {opts.hf_folder}/: Hugging Face folder (safetensors, pruned weights as zeros); load with "
               f"transformers.AutoModelForCausalLM.from_pretrained('{opts.hf_folder}')"] if opts.hf_folder else []
    written += written_files(opts.out, opts.onnx, opts.torchscript, opts.quantize == "int8")
    logged = ""
    if opts.track or opts.register:
        example = torch.zeros((1, *ws.splits.input_shape), dtype=ws.splits.input_dtype).numpy()
        logged = _log_to_mlflow(policy, res, deployable, example, opts.runs, opts.register, opts.tracking_uri)
    return Applied(policy, res.model, rows, f"{policy_path.name} applied ({res.channels_removed} channels removed)",
                   written, logged)


def _save_and_measure(ws: Any, policy: Policy, res: Any, opts: ApplyOptions) -> tuple[list[dict[str, Any]], nn.Module]:
    """Save the pruned model and every export asked for; the before/after rows and the model that takes raw
    inputs."""
    out_path = opts.out
    dense_file = out_path.with_name(f".{out_path.stem}.dense.tmp")
    res.before["file_bytes"] = float(save_pruned(ws.model, policy, dense_file, compress=False))
    dense_file.unlink()
    res.after["file_bytes"] = float(save_pruned(res.model, policy, out_path, scaling=ws.splits.scaling))
    deployable = with_input_scaling(res.model, ws.splits.scaling)  # exports take the user's raw inputs
    label = {"latency_ms": f"latency_ms ({latency_device(res.model)}, batch 32)"}
    keys = [k for k in res.before if k.startswith("test_")] + [k for k in ROWS if not k.startswith("test_")]
    rows = [{"metric": label.get(k, k), "dense": res.before.get(k, float("nan")),
             "pruned": res.after.get(k, float("nan"))} for k in keys]
    if opts.quantize == "int8":
        rows += _int8_rows(res.model, ws.task, ws.splits, out_path, policy)
    if opts.onnx is not None:
        export_onnx(deployable, ws.splits.input_shape, opts.onnx, ws.splits.input_dtype)
    if opts.torchscript is not None:
        export_torchscript(deployable, ws.splits.input_shape, opts.torchscript, ws.splits.input_dtype)
    if opts.hf_folder is not None:
        save_hf_folder(res.model, opts.hf_folder, _tokenizer_of(ws.space, opts.runs))
    return rows, deployable


def with_criterion(policy: Policy, criterion: str | None, calibration: str | None = None) -> Policy:
    """``policy`` pruned with ``criterion`` and/or SparseGPT's ``calibration`` instead (validated: one line naming
    the option), or unchanged."""
    for flag, key, value in (("--criterion", "criterion", criterion), ("--calibration", "calibration", calibration)):
        if value is not None:
            try:
                # a calibration named here is the plain one: a sequential reference of the search is dropped
                dropped = {"calibration_reference": None} if key == "calibration" else {}
                policy = Policy.model_validate({**policy.model_dump(), key: value, **dropped})
            except ValidationError as err:
                raise PolicyError(f"{flag} {value}: {err.errors()[0]['msg']}") from None
    return policy


def _tokenizer_of(space: SearchSpace, runs: Path) -> Any:
    """The tokenizer the data were cut with (saved beside a Hugging Face folder), or None for byte tokens."""
    name = space.data.kwargs.get("tokenizer")
    return hf_tokenizer(str(name), runs / "models") if name else None


def written_files(out_path: Path, onnx: Path | None, torchscript: Path | None, int8: bool) -> list[str]:
    """One line per file written, with its size and what it stores."""
    lines = [f"wrote {out_path} ({out_path.stat().st_size:,} bytes): the pruned weights, zeros compressed, "
             "pickle-free; load with autoprune.load_pruned(path, model)"]
    for path, kind in ((onnx, "ONNX"), (torchscript, "TorchScript")):
        if path is not None:
            lines.append(f"wrote {path} ({path.stat().st_size:,} bytes): {kind} with dense tensors (pruned weights "
                         "stored as zeros), taking raw inputs")
    if int8:
        sparse = out_path.with_name(out_path.stem + ".int8.pt")
        lines.append(f"wrote {sparse} ({sparse.stat().st_size:,} bytes): dynamic int8 Linear layers, zeros "
                     "compressed, pickle-free; load with autoprune.deploy.int8.load_int8(path, model)")
        int8_path = out_path.with_name(out_path.stem + ".int8.ts")
        lines.append(f"wrote {int8_path} ({int8_path.stat().st_size:,} bytes): TorchScript, dynamic int8 Linear "
                     "layers (dense int8 tensors, zeros included)")
    return lines


def _log_to_mlflow(policy: Policy, res: Any, deployable: nn.Module, example: Any, runs: Path, register: str | None,
                   tracking_uri: str | None) -> str:
    """Log the applied model to its study's MLflow parent run; one line saying what was logged (or why not)."""
    study = policy.provenance.get("study")
    if not study:
        return "MLflow: nothing logged (the policy names no study)"
    from autoprune.tracking.records import log_applied_model

    try:
        info = log_applied_model(tracking_uri, runs, study, deployable.cpu(), policy.to_json(), res.before, res.after,
                                 example, register)
    except Exception as err:  # the files are written; MLflow is a convenience here
        return f"MLflow: could not log the model ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
    if not info:
        return f"MLflow: nothing logged (no run of study '{study}' in {tracking_uri or runs})"
    line = f"MLflow: logged the pruned model {info['model_uri']} on run {info['run_id']} of study '{study}'"
    if "registered" in info:
        line += f"; registered as {info['registered']} version {info['version']}, alias @{info['alias']}"
    return line


def _int8_rows(model: nn.Module, task: Task, splits: Splits, out_path: Path,
               policy: Policy) -> list[dict[str, object]]:
    """Quantize (dynamic int8, CPU); save it sparse and pickle-free (``.int8.pt``, zeros compressed) and as
    TorchScript (``.int8.ts``, dense int8 tensors); report the primary test metric and both sizes."""
    q = quantize_int8(model)
    score = task.metrics(q, splits.to(torch.device("cpu")).test)[task.primary]
    int8_path = out_path.with_name(out_path.stem + ".int8.ts")  # TorchScript: quantized modules load pickle-free
    export_torchscript(with_input_scaling(q, splits.scaling), splits.input_shape, int8_path, splits.input_dtype)
    sparse = save_int8(q, policy, out_path.with_name(out_path.stem + ".int8.pt"), splits.scaling)
    nan = float("nan")
    return [{"metric": f"test_{task.primary} (int8)", "dense": nan, "pruned": score},
            {"metric": "file_bytes (int8, sparse .int8.pt)", "dense": nan, "pruned": float(sparse)},
            {"metric": "file_bytes (int8, TorchScript .int8.ts)", "dense": nan,
             "pruned": float(int8_path.stat().st_size)}]
