"""A tokenized classification data set for tests: does token 7 occur in the sequence?"""

from __future__ import annotations

import numpy as np


def presence(n: int = 400, length: int = 12, vocab: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """``n`` sequences of ``length`` token ids below ``vocab``; label 1 when token 7 occurs (about half of them)."""
    rng = np.random.default_rng(0)
    x = rng.integers(8, vocab, size=(n, length))
    y = rng.integers(0, 2, size=n)
    x[y == 1, rng.integers(0, length, size=int(y.sum()))] = 7
    return x.astype(np.int64), y.astype(np.int64)
