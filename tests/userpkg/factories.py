"""A user's own model and dataset factories, referenced as ``userpkg.factories:...`` in tests."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def tiny_net(hidden: int = 16) -> nn.Module:
    """A user model: 13 wine features → hidden → 3 classes."""
    return nn.Sequential(nn.Linear(13, hidden), nn.ReLU(), nn.Linear(hidden, 3))


def blobs(n: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    """A user dataset: three Gaussian blobs in 13 dimensions."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, n)
    x = rng.normal(size=(n, 13)) + y[:, None] * 2.0
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y)


def not_a_model() -> int:
    """Returns something that is not an nn.Module."""
    return 3


class EndlessBlobs(torch.utils.data.IterableDataset):  # type: ignore[type-arg]
    """A streamed user dataset: ``n`` generated examples (13 features, 3 classes), made one at a time."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def __iter__(self):  # type: ignore[no-untyped-def]
        rng = np.random.default_rng(0)
        for _ in range(self.n):
            y = int(rng.integers(0, 3))
            yield torch.tensor(rng.normal(size=13) + y * 2.0, dtype=torch.float32), y


def stream_of_blobs(n: int = 1_000_000) -> EndlessBlobs:
    """A data callable returning an IterableDataset (read lazily, only up to the space's stream budget)."""
    return EndlessBlobs(n)


def counting_tokens(n: int = 200, seq_len: int = 12, vocab: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """A tokenized user data set: windows of a repeating count modulo ``vocab`` (x) and the next ids (y)."""
    ids = np.arange(n * seq_len + 1) % vocab
    return ids[:-1].reshape(n, seq_len), ids[1:].reshape(n, seq_len)
