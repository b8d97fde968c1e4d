"""Real speed of channel pruning: ResNet-20 with coupled channels removed by torch-pruning, timed on CPU."""

from __future__ import annotations

import torch

from autoprune.config.policy import FineTune, Granularity, Policy
from autoprune.deploy.production import apply
from autoprune.models.layers import prunable_layers
from autoprune.models.zoo import ResNetCifar
from autoprune.pruning.metrics import count_macs, latency_ms
from autoprune.tasks.data import Split, Splits

__all__ = ["channel_speedup"]


def channel_speedup(ratio: float = 0.3, width: int = 16, input_shape: tuple[int, int, int] = (3, 32, 32),
                    batches: tuple[int, ...] = (1, 32), runs: int = 30) -> list[dict[str, float]]:
    """Uniform channel ratio on every conv but the stem: MACs, parameters and median latency, dense vs pruned.

    Weights are random (speed does not depend on their values); the channels removed are chosen by filter
    magnitude within each coupled group, exactly as ``autoprune apply`` does.
    """
    torch.manual_seed(0)
    model = ResNetCifar(20, input_shape[0], 10, width).eval()
    layers = [f for f in prunable_layers(model) if f not in ("conv1", "fc")]
    x = torch.randn(64, *input_shape)
    y = torch.randint(0, 10, (64,))
    splits = Splits("synthetic", Split(x, y), Split(x, y), Split(x, y), 10, "synthetic")
    policy = Policy(granularity=Granularity(kind="channel"), sparsity=dict.fromkeys(layers, ratio),
                    finetune=FineTune(epochs=0))
    pruned = apply(model, policy, splits, measure_latency=False).model  # the production path, channels removed
    dense_macs, _ = count_macs(model, input_shape)
    pruned_macs, _ = count_macs(pruned, input_shape)
    rows = []
    for b in batches:
        t_dense = latency_ms(model, input_shape, batch=b, runs=runs)
        t_pruned = latency_ms(pruned, input_shape, batch=b, runs=runs)
        rows.append({"batch": float(b), "macs_ratio": pruned_macs / dense_macs,
                     "params_ratio": sum(p.numel() for p in pruned.parameters())
                     / sum(p.numel() for p in model.parameters()),
                     "dense_ms": t_dense, "pruned_ms": t_pruned, "speedup": t_dense / t_pruned})
    return rows
