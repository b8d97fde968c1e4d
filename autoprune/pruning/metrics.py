"""Size and speed of a (masked) model: nonzeros, storage bytes in several formats, MACs, latency."""

from __future__ import annotations

import math
import statistics
import time

import torch
from torch import nn

from autoprune.config.policy import Granularity
from autoprune.models.layers import (
    RNN_TYPES,
    is_hf_conv1d,
    layer_weight,
    prunable_layers,
    rnn_weight_names,
    unit_param_key,
)
from autoprune.pruning.granularities import FLOAT_BYTES, granularity_for

__all__ = ["FLOAT_BYTES", "INDEX_BYTES", "count_macs", "effective_parameters", "kept_count", "latency_device",
           "latency_ms", "layer_bytes", "relative_to", "size_metrics"]

INDEX_BYTES = 4


def effective_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter as the forward pass sees it (masked weights instead of their originals)."""
    out: dict[str, torch.Tensor] = {}
    for mod_name, module in model.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            if "parametrizations" in mod_name.split("."):  # an original behind a mask: read through the module
                continue
            out[f"{mod_name}.{p_name}" if mod_name else p_name] = p.detach()
        if hasattr(module, "parametrizations"):
            for p_name in module.parametrizations:
                out[f"{mod_name}.{p_name}"] = getattr(module, p_name).detach()
    return out


def kept_count(p: torch.Tensor) -> int:
    """Entries that are kept: nonzero and finite (a NaN or inf weight is a broken weight, never a kept one)."""
    return int(torch.count_nonzero(torch.nan_to_num(p, nan=0.0, posinf=0.0, neginf=0.0)))


def layer_bytes(w: torch.Tensor, granularity: Granularity) -> dict[str, int]:
    """Bytes to store one weight tensor: dense, CSR (values + int32 column indices + row pointers),
    bitmask (1 bit per entry + values), and the formats the granularity's pattern allows (N:M: kept values +
    log2(M)-bit indices)."""
    numel, nnz = w.numel(), kept_count(w)
    rows = w.shape[0] if w.dim() > 1 else 1
    out = {
        "dense": numel * FLOAT_BYTES,
        "csr": nnz * (FLOAT_BYTES + INDEX_BYTES) + (rows + 1) * INDEX_BYTES,
        "bitmask": math.ceil(numel / 8) + nnz * FLOAT_BYTES,
    }
    out.update(granularity_for(granularity).formats(w, nnz))
    return out


def size_metrics(model: nn.Module, granularity: Granularity, input_shape: tuple[int, ...],
                 dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """Nonzeros, sparsity of the prunable layers, bytes (dense vs best compressed format) and MACs."""
    params = effective_parameters(model)
    total = sum(p.numel() for p in params.values())
    nonzero = sum(kept_count(p) for p in params.values())
    layers = prunable_layers(model)
    prunable_total = prunable_zero = 0
    compressed = dense_bytes = 0
    weight_keys = {unit_param_key(f, m) for f, m in layers.items()}
    for key, p in params.items():
        b = layer_bytes(p, granularity) if key in weight_keys else {"dense": p.numel() * FLOAT_BYTES}
        dense_bytes += b["dense"]
        compressed += min(b.values())
        if key in weight_keys:
            prunable_total += p.numel()
            prunable_zero += p.numel() - kept_count(p)
    macs_dense, macs_sparse = count_macs(model, input_shape, dtype)
    return {
        "params": float(total),
        "nonzeros": float(nonzero),
        "size_nonzeros": nonzero / total,
        "sparsity": prunable_zero / max(prunable_total, 1),
        "bytes_dense": float(dense_bytes),
        "bytes_sparse": float(compressed),
        "size_bytes": compressed / dense_bytes,
        "macs_dense": float(macs_dense),
        "macs": float(macs_sparse),
        "size_flops": macs_sparse / max(macs_dense, 1),
    }


def relative_to(size: dict[str, float], dense: dict[str, float]) -> dict[str, float]:
    """``size`` with its fractions taken of the *dense* model's totals (a shrunk model has fewer parameters)."""
    out = dict(size)
    out["size_nonzeros"] = size["nonzeros"] / dense["params"]
    out["size_bytes"] = size["bytes_sparse"] / dense["bytes_dense"]
    out["size_flops"] = size["macs"] / max(dense["macs_dense"], 1)
    return out


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: tuple[int, ...], dtype: torch.dtype = torch.float32
               ) -> tuple[int, int]:
    """(dense, effective) multiply-accumulates of Conv/Linear layers for one example.

    Effective MACs scale each layer's dense MACs by its weight density: exact for zeroed filters and
    for unstructured kernels that skip zeros, an upper bound on what dense hardware gets.
    """
    dense, sparse = 0, 0.0
    hooks = []

    def hook(mod: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal dense, sparse
        if isinstance(mod, RNN_TYPES):  # each matrix multiplies one vector per time step (batch of one)
            first = out[0] if isinstance(out, tuple) else out
            steps = first.numel() // first.shape[-1] if isinstance(first, torch.Tensor) else 1
            units = [layer_weight(mod, p) for p in rnn_weight_names(mod)]
            macs_units = [(steps * w.numel(), w) for w in units]
        else:
            w = layer_weight(mod)
            # (in/groups)·k… per output element for conv, in_features for linear (Conv1D: its weight is (in, out))
            per_out = w.shape[0] if is_hf_conv1d(mod) else w[0].numel()
            macs_units = [(out[0].numel() * per_out, w)]
        for macs, w in macs_units:
            dense += macs
            sparse += macs * kept_count(w) / w.numel()

    for m in dict.fromkeys(prunable_layers(model).values()):  # an RNN holds several units: hook it once
        hooks.append(m.register_forward_hook(hook))
    try:
        was = model.training
        model.eval()
        device = next(model.parameters()).device
        model(torch.zeros((1, *input_shape), device=device, dtype=dtype))
        model.train(was)
    finally:
        for h in hooks:
            h.remove()
    return dense, round(sparse)


@torch.no_grad()
def latency_ms(model: nn.Module, input_shape: tuple[int, ...], batch: int = 1, runs: int = 50,
               warmup: int = 5, dtype: torch.dtype = torch.float32, budget_s: float = 10.0) -> float:
    """Median wall time of one forward pass on the model's device, in milliseconds: ``runs`` timed passes after
    ``warmup`` untimed ones, or fewer (at least 3 timed, 1 warm-up) once ``budget_s`` seconds are spent, so a
    language model whose pass takes seconds is not timed for minutes.

    On CUDA each pass is synchronised before and after (kernels run asynchronously: without it this would time
    the kernel launches). The device is named by :func:`latency_device` wherever the number is reported.
    """
    model = model.eval()
    device = next(model.parameters()).device
    x = torch.randn((batch, *input_shape), device=device) if dtype.is_floating_point else \
        torch.zeros((batch, *input_shape), device=device, dtype=dtype)  # token ids

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    start = time.perf_counter()
    for i in range(warmup):
        if i > 0 and time.perf_counter() - start > budget_s / 4:
            break
        model(x)
    times: list[float] = []
    while len(times) < runs and (len(times) < 3 or time.perf_counter() - start < budget_s):
        sync()
        t0 = time.perf_counter()
        model(x)
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def latency_device(model: nn.Module) -> str:
    """Where :func:`latency_ms` timed ``model``: ``cpu``, ``cuda:0`` …, for labels such as ``latency_ms (cpu)``."""
    device = next(model.parameters()).device
    if device.type == "cuda":
        return f"cuda:{device.index or 0} ({torch.cuda.get_device_name(device)})"
    return device.type
