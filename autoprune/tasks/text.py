"""Text for language-model tasks: a bundled corpus or a user's file, cut into byte-token windows.

Tokens are UTF-8 bytes (a vocabulary of 256): no tokenizer to download or train, and any text file works. The
bundled corpus is CPython's own documentation topics (``pydoc_data.topics``, ~465k characters of English,
shipped with Python), joined in a fixed topic order. A window of ``seq_len`` tokens is one example; its target
is the same window shifted by one token (next-token prediction). Windows do not overlap.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from autoprune.errors import DataError

__all__ = ["BYTE_VOCAB", "load_text", "token_windows"]

BYTE_VOCAB = 256


def load_text(name: str) -> str:
    """``text:pydoc`` (bundled), or ``text:PATH`` / ``PATH.txt`` (a UTF-8 file)."""
    ref = name.removeprefix("text:")
    if ref == "pydoc":
        from pydoc_data.topics import topics

        return "\n\n".join(topics[k] for k in sorted(topics))
    path = Path(ref)
    if not path.exists():
        raise DataError(f"dataset {name}: text file {path} not found (or use text:pydoc, the bundled corpus)")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"dataset {name}: cannot read {path} as UTF-8 text ({err})") from None


def token_windows(text: str, seq_len: int = 64, max_chars: int | None = None, source: str = "text",
                  encode: Callable[[str], list[int]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping windows of tokens: ``x`` (N, seq_len) and ``y`` = ``x`` shifted by one token. Tokens are
    UTF-8 bytes, or the ids ``encode`` (a model's tokenizer) gives the first ``max_chars`` characters."""
    if seq_len < 2:
        raise DataError(f"dataset {source}: seq_len {seq_len}; need at least 2 tokens per window")
    if encode is not None:
        data = np.asarray(encode(text[: max_chars or None]), dtype=np.int64)
    else:
        data = np.frombuffer(text.encode("utf-8")[: max_chars or None], dtype=np.uint8).astype(np.int64)
    n = (len(data) - 1) // seq_len
    if n < 10:
        raise DataError(f"dataset {source}: {len(data)} bytes make {n} windows of {seq_len}; a train/validation/"
                        "test split needs at least 10")
    x = data[: n * seq_len].reshape(n, seq_len)
    y = data[1: n * seq_len + 1].reshape(n, seq_len)
    return x, y
