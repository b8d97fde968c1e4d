"""Apply a policy to a real model for production: check, prune, fine-tune, make permanent, shrink, save.

Never imports optuna or mlflow (a test checks it): production code needs only torch and torch-pruning.
"""

from __future__ import annotations

import copy
import io
import json
import math
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autoprune.config.policy import Policy
from autoprune.errors import PolicyError
from autoprune.files import write_atomic
from autoprune.models.layers import architecture_fingerprint, is_transposed, layer_shapes
from autoprune.pruning.criteria import criterion_for, importance
from autoprune.pruning.evaluate import check_policy_layers, prune_and_finetune
from autoprune.pruning.masks import apply_masks, make_permanent, oriented_mask
from autoprune.pruning.metrics import latency_ms, relative_to, size_metrics
from autoprune.tasks import ClassificationTask, Task
from autoprune.tasks.data import Splits
from autoprune.tasks.training import recalibrate_bn

__all__ = [
    "FORMAT",
    "ApplyResult",
    "Standardize",
    "apply",
    "check_fingerprint",
    "compress_state",
    "decompress_state",
    "export_onnx",
    "export_torchscript",
    "load_pruned",
    "quantize_int8",
    "resize_to",
    "save_pruned",
    "with_input_scaling",
]

FORMAT = "autoprune-bitmask-v1"


@dataclass
class ApplyResult:
    """The pruned model and before/after measurements."""

    model: nn.Module
    before: dict[str, float] = field(default_factory=dict)
    after: dict[str, float] = field(default_factory=dict)
    channels_removed: int = 0


def check_fingerprint(model: nn.Module, policy: Policy) -> None:
    """Raise a :class:`PolicyError` listing missing / extra / mismatched layers when the model differs."""
    if not policy.fingerprint or architecture_fingerprint(model) == policy.fingerprint:
        check_policy_layers(model, policy)
        return
    have = layer_shapes(model)
    want = policy.shapes
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    mismatched = sorted(f"{k} {want[k]}≠{have[k]}" for k in set(want) & set(have) if list(want[k]) != list(have[k]))
    parts = [f"{label}: {', '.join(v[:5])}{' …' if len(v) > 5 else ''}"
             for label, v in (("missing", missing), ("extra", extra), ("mismatched", mismatched)) if v]
    detail = "; ".join(parts) or "layer shapes unknown (policy has no 'shapes')"
    raise PolicyError(f"policy is for a different model than '{policy.model}' given ({detail})")


def _measure(model: nn.Module, policy: Policy, data: Splits, latency: bool, task: Task) -> dict[str, float]:
    out = {f"test_{k}": v for k, v in task.metrics(model, data.test).items()}
    out.update(size_metrics(model, policy.granularity, data.input_shape, data.input_dtype))
    if latency:
        out["latency_ms"] = latency_ms(model, data.input_shape, batch=32, dtype=data.input_dtype)
    return out


def apply(model: nn.Module, policy: Policy, data: Splits | None = None, *, finetune_epochs: float | None = None,
          seed: int | None = None, remove_channels: bool = True, measure_latency: bool = True,
          progress: Any = None, task: Task | None = None) -> ApplyResult:
    """Prune a copy of ``model`` with ``policy``; fine-tune on ``data`` (full budget) when given.

    Unstructured and N:M: masks are made permanent (zeros in plain weights). Channel: zeroed coupled channels
    are removed physically with torch-pruning, so the model really shrinks and runs faster. The fine-tune
    follows the policy's recipe (LR, decay, seed, BN recalibration), so the searched score is reproduced.
    ``task`` scores the model before and after (classification when None).
    """
    check_fingerprint(model, policy)
    seed = policy.finetune.seed if seed is None else seed
    m = copy.deepcopy(model)
    if data is None:
        _mask_without_data(m, policy, finetune_epochs, seed)
        return ApplyResult(m.eval())
    task = task or ClassificationTask(data)
    before = _measure(model, policy, data, measure_latency, task)
    epochs = policy.finetune.epochs if finetune_epochs is None else finetune_epochs
    ft = policy.finetune.model_copy(update={"epochs": epochs})
    prune_and_finetune(m, policy.model_copy(update={"finetune": ft}), data, seed, progress=progress, task=task)
    make_permanent(m)
    recalibrate_bn(m, data.train, ft.bn_batches, ft.batch_size, seed)
    removed = 0
    if policy.granularity.kind == "channel" and remove_channels:
        from autoprune.pruning.channels import groups_for, remove_zero_channels

        shape = data.input_shape
        removed = remove_zero_channels(m, groups_for(model, list(policy.sparsity), shape), shape)
    m.eval()
    return ApplyResult(m, before, relative_to(_measure(m, policy, data, measure_latency, task), before), removed)


def _mask_without_data(model: nn.Module, policy: Policy, finetune_epochs: float | None, seed: int) -> None:
    """Data-free path: magnitude/random masks, made permanent at once (no fine-tune, no BN recalibration)."""
    needs_data = criterion_for(policy.criterion).needs_data or policy.granularity.kind == "channel"
    if needs_data or (finetune_epochs or 0) > 0:
        raise PolicyError(f"this policy needs data ({policy.criterion} criterion, channel groups or fine-tuning): "
                          "pass data=")
    scores = importance(model, list(policy.sparsity), policy.criterion, None, seed=seed)
    apply_masks(model, {f: oriented_mask(scores[f], r, policy.granularity, False, is_transposed(model, f))
                        for f, r in policy.sparsity.items()})
    make_permanent(model)


class Standardize(nn.Module):
    """``(x - mean) / std``: the input scaling the search applied to tabular data, as the model's first module;
    with ``invert``, ``x · std + mean``: a regression model's z-scored outputs mapped back to the raw units."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: list[float], std: list[float], invert: bool = False) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))
        self.invert = invert

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.invert:
            return x * self.std + self.mean
        return (x - self.mean) / self.std


def with_input_scaling(model: nn.Module, scaling: dict[str, list[float]] | None) -> nn.Module:
    """``model`` wrapped in the search's data scaling (inputs z-scored first; regression outputs mapped back to
    the raw units after), so it takes the user's raw inputs and gives the searched score in the raw units."""
    if not scaling:
        return model
    parts: list[nn.Module] = []
    if "mean" in scaling:
        parts.append(Standardize(scaling["mean"], scaling["std"]))
    parts.append(model)
    if "target_mean" in scaling:
        parts.append(Standardize(scaling["target_mean"], scaling["target_std"], invert=True))
    return nn.Sequential(*parts).eval() if len(parts) > 1 else model


def quantize_int8(model: nn.Module) -> nn.Module:
    """Dynamic int8 quantization of Linear layers (CPU inference), after pruning."""
    from torch.ao.quantization import quantize_dynamic

    return quantize_dynamic(copy.deepcopy(model).cpu(), {nn.Linear}, dtype=torch.qint8)


def compress_state(state: dict[str, torch.Tensor], min_sparsity: float = 0.3) -> dict[str, Any]:
    """Bitmask compression: a tensor with enough zeros is stored as packed bits + its nonzero values."""
    out: dict[str, Any] = {}
    for k, v in state.items():
        v = v.detach().cpu()
        packable = v.is_floating_point() or v.dtype == torch.int8  # int8: a quantized model's weights
        if packable and v.numel() >= 64 and float((v == 0).float().mean()) >= min_sparsity:
            nz = v != 0
            bits = torch.from_numpy(np.packbits(nz.flatten().numpy()))
            out[k] = {"bitmask": bits, "values": v[nz].clone(), "shape": torch.tensor(list(v.shape))}
        else:
            out[k] = v
    return out


def decompress_state(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`compress_state`."""
    out = {}
    for k, v in state.items():
        if isinstance(v, dict):
            shape = [int(s) for s in v["shape"].tolist()]
            n = math.prod(shape)
            nz = torch.from_numpy(np.unpackbits(v["bitmask"].numpy())[:n].astype(bool))
            dense = torch.zeros(n, dtype=v["values"].dtype)
            dense[nz] = v["values"]
            out[k] = dense.view(shape)
        else:
            out[k] = v
    return out


def save_pruned(model: nn.Module, policy: Policy, path: Path, compress: bool = True,
                scaling: dict[str, list[float]] | None = None) -> int:
    """Save atomically, pickle-free (loads with ``torch.load(weights_only=True)``); returns the file size in bytes.

    The state dict is bitmask-compressed (the file shrinks with sparsity); a channel-pruned model's tensors keep
    their shrunk shapes, and :func:`load_pruned` resizes a fresh model's layers to them. ``scaling`` (the
    search's input z-scoring) is stored too, and :func:`load_pruned` puts it in front of the model.
    """
    buf = io.BytesIO()
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"format": FORMAT, "policy": policy.to_json(), "scaling": json.dumps(scaling),
                "state": compress_state(state) if compress else state}, buf)
    write_atomic(path, buf.getvalue())
    return path.stat().st_size


def resize_to(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Give a fresh model's Conv/Linear/BatchNorm layers the (shrunk) shapes found in ``state``.

    Hand-written because torch-pruning's own ``tp.state_dict`` pickles whole module ``__dict__`` s, which a
    ``weights_only`` load refuses; a channel-pruned net only changes these layers' sizes, so their tensors' shapes
    say everything (groups are kept as they were).
    """
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        for pname, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            saved = state.get(prefix + pname)
            if saved is None or saved.shape == tensor.shape:
                continue
            fresh = torch.empty_like(saved, dtype=tensor.dtype)
            if isinstance(tensor, nn.Parameter):
                setattr(module, pname, nn.Parameter(fresh, requires_grad=tensor.requires_grad))
            else:
                module.register_buffer(pname, fresh)
        w = getattr(module, "weight", None)
        if isinstance(module, nn.modules.conv._ConvNd) and w is not None:
            module.out_channels, module.in_channels = w.shape[0], w.shape[1] * module.groups
        elif isinstance(module, nn.Linear):
            module.out_features, module.in_features = module.weight.shape
        elif isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
            module.num_features = module.running_mean.shape[0]


def load_pruned(path: Path, model: nn.Module) -> nn.Module:
    """Load what :func:`save_pruned` wrote into a fresh instance of the model class it was pruned from.

    Pickle-free (``weights_only=True``); channel-pruned layers are resized to their saved shapes; when the search
    scaled the inputs, the returned model is ``Sequential(Standardize, model)`` and takes raw inputs.
    """
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise PolicyError(f"{path}: not an autoprune pruned-model file ({FORMAT}); re-run `autoprune apply`")
    state = decompress_state(blob["state"])
    resize_to(model, state)
    model.load_state_dict(state)
    return with_input_scaling(model.eval(), json.loads(blob.get("scaling") or "null"))


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], path: Path,
                dtype: torch.dtype = torch.float32) -> None:
    """ONNX via the dynamo exporter (needs onnx + onnxscript: ``pip install 'autoprune[onnx]'``)."""
    x = torch.zeros((1, *input_shape), dtype=dtype)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / path.name
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model.cpu().eval(), (x,), str(out), dynamo=True, external_data=False, verbose=False)
        write_atomic(path, out.read_bytes())


def export_torchscript(model: nn.Module, input_shape: tuple[int, ...], path: Path,
                       dtype: torch.dtype = torch.float32) -> None:
    """TorchScript by tracing (``dtype``: the inputs', e.g. int64 token ids)."""
    traced = torch.jit.trace(model.cpu().eval(), torch.zeros((1, *input_shape), dtype=dtype))
    buf = io.BytesIO()
    torch.jit.save(traced, buf)
    write_atomic(path, buf.getvalue())
