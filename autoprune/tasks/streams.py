"""Data sets too large for memory: a torch ``Dataset`` or ``IterableDataset`` read through a ``DataLoader`` only up
to the search's budget.

A search scores every candidate on the same fixed data, so what it needs from a stream of any length is a
bounded, seeded sample of it: the first ``train`` / ``val`` / ``test`` examples (``data.stream`` in the space)
that a seeded draw assigns to each split. Reading stops as soon as all three are full, so memory and work do not
grow with the stream's length (a million or a billion examples cost the same), and the test examples are never
seen by the search. The samples come back as arrays and go through the same checks as in-memory data.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from autoprune.errors import DataError

__all__ = ["is_stream", "read_stream"]

READ_BATCH = 512  # examples per DataLoader batch while reading


def is_stream(obj: Any) -> bool:
    """Whether a data callable returned a torch data set (read lazily) rather than arrays."""
    return isinstance(obj, (Dataset, IterableDataset))


def read_stream(ds: Any, budget: dict[str, int], val_fraction: float, test_fraction: float, seed: int,
                source: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read ``(x, y)`` examples from ``ds`` until each split holds its ``budget`` (train / val / test examples).

    Each example is assigned once, by a seeded draw: test with probability ``test_fraction``, validation with
    ``val_fraction``, train otherwise. A stream that ends early leaves smaller splits (an error if one is empty).
    """
    rng = np.random.default_rng(seed)
    parts: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {k: ([], []) for k in ("train", "val", "test")}
    held = dict.fromkeys(parts, 0)
    for batch in DataLoader(ds, batch_size=READ_BATCH, shuffle=False):
        if not isinstance(batch, (list, tuple)) or len(batch) != 2:
            raise DataError(f"dataset {source}: each example must be an (x, y) pair")
        x, y = (b.numpy() if isinstance(b, torch.Tensor) else np.asarray(b) for b in batch)
        u = rng.random(len(x))
        which = np.where(u < test_fraction, 2, np.where(u < test_fraction + val_fraction, 1, 0))
        for code, split in enumerate(("train", "val", "test")):
            room = budget[split] - held[split]
            idx = np.flatnonzero(which == code)[:max(room, 0)]
            if idx.size:
                parts[split][0].append(x[idx])
                parts[split][1].append(y[idx])
                held[split] += idx.size
        if all(held[k] >= budget[k] for k in held):
            break  # the rest of the stream is never read
    empty = [k for k, n in held.items() if n == 0]
    if empty:
        raise DataError(f"dataset {source}: the stream ended before any {', '.join(empty)} example was read")
    return {k: (np.concatenate(xs), np.concatenate(ys)) for k, (xs, ys) in parts.items()}
