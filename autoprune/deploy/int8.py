"""Dynamic int8 models saved sparse and pickle-free: each quantized Linear's int8 weights (a pruned weight stays 0,
so the bitmask compression of :func:`~autoprune.deploy.production.compress_state` keeps working) with their
scales, every other tensor as it is. ``load_int8`` rebuilds the quantized model from a fresh float one."""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch
from torch import nn
from torch.ao.nn.quantized import dynamic as qdyn

from autoprune.config.policy import Policy
from autoprune.deploy.production import compress_state, decompress_state, quantize_int8, resize_to, with_input_scaling
from autoprune.errors import PolicyError
from autoprune.files import write_atomic

__all__ = ["INT8_FORMAT", "load_int8", "save_int8"]

INT8_FORMAT = "autoprune-int8-v1"


def int8_state(qmodel: nn.Module) -> dict[str, torch.Tensor]:
    """Plain tensors of a dynamically quantized model: ``<linear>.weight`` as int8 values with
    ``<linear>.weight_scale`` / ``weight_zero_point`` (per tensor or per output channel), ``<linear>.bias``, and
    every float tensor of the other modules."""
    out: dict[str, torch.Tensor] = {}
    quantized = {name for name, m in qmodel.named_modules() if isinstance(m, qdyn.Linear)}
    for name in quantized:
        linear: qdyn.Linear = qmodel.get_submodule(name)  # type: ignore[assignment]
        w, b = linear.weight(), linear.bias()
        out[f"{name}.weight"] = w.int_repr()
        if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            out[f"{name}.weight_scale"] = w.q_per_channel_scales().float()
            out[f"{name}.weight_zero_point"] = w.q_per_channel_zero_points()
        else:
            out[f"{name}.weight_scale"] = torch.tensor([w.q_scale()])
            out[f"{name}.weight_zero_point"] = torch.tensor([w.q_zero_point()])
        if b is not None:
            out[f"{name}.bias"] = b.detach()
    for key, value in qmodel.state_dict().items():
        owner = key.rsplit(".", 1)[0].removesuffix("._packed_params")
        if isinstance(value, torch.Tensor) and owner not in quantized and key not in out:
            out[key] = value.detach().cpu()
    return out


def save_int8(qmodel: nn.Module, policy: Policy, path: Path, scaling: dict[str, list[float]] | None = None) -> int:
    """Save a :func:`~autoprune.deploy.production.quantize_int8` model pickle-free with its zeros compressed;
    returns the file size in bytes."""
    buf = io.BytesIO()
    torch.save({"format": INT8_FORMAT, "policy": policy.to_json(), "scaling": json.dumps(scaling),
                "state": compress_state(int8_state(qmodel))}, buf)
    write_atomic(path, buf.getvalue())
    return path.stat().st_size


def load_int8(path: Path, model: nn.Module) -> nn.Module:
    """The int8 model saved by :func:`save_int8`, rebuilt from a fresh float ``model`` of the same class
    (channel-pruned layers resized); with the search's input scaling in front when there was one."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != INT8_FORMAT:
        raise PolicyError(f"{path}: not an autoprune int8 file ({INT8_FORMAT}); re-run `autoprune apply --quantize "
                          "int8`")
    state = decompress_state(blob["state"])
    resize_to(model, state)
    floats = {k: v for k, v in state.items() if not k.endswith(("weight_scale", "weight_zero_point"))
              and v.dtype != torch.int8}
    model.load_state_dict(floats, strict=False)  # the int8 Linears' weights are set below
    q = quantize_int8(model)
    for name, m in q.named_modules():
        if isinstance(m, qdyn.Linear):
            values, scale = state[f"{name}.weight"], state[f"{name}.weight_scale"]
            zero = state[f"{name}.weight_zero_point"]
            if scale.numel() == 1:
                w = torch._make_per_tensor_quantized_tensor(values, float(scale), int(zero))
            else:
                w = torch._make_per_channel_quantized_tensor(values, scale.double(), zero.long(), 0)
            m.set_weight_bias(w, state.get(f"{name}.bias"))
    return with_input_scaling(q.eval(), json.loads(blob.get("scaling") or "null"))
