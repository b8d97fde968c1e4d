"""Datasets as in-memory tensors with a fixed, seeded train / validation / test split.

Built-in: scikit-learn's bundled ``digits``, ``breast_cancer`` and ``wine`` (classes) and ``diabetes`` (a float
target), real data, no download.
User data: a ``.pt``/``.npz`` file with ``x``/``y`` arrays, a ``package.module:callable`` returning
``(x, y)`` or ``{"train": (x, y), "val": ..., "test": ...}``, or ``torchvision:NAME`` (lazy import, never downloads).
The test split is only ever used to report final numbers, never by the search.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from autoprune.errors import DataError
from autoprune.tasks.sources import SKLEARN_DATASETS, source_for
from autoprune.tasks.streams import is_stream, read_stream

__all__ = ["SKLEARN_DATASETS", "Split", "Splits", "Targets", "check_features", "check_float_targets", "check_rows",
           "load_data"]

Targets = Literal["class", "float", "tokens"]  # what y holds: class labels 0..C-1, float values, or next tokens


@dataclass(frozen=True)
class Split:
    """Features ``x`` (N, *input_shape) float32 and targets ``y``: integer labels (N,), or floats (N,) / (N, k)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device: torch.device) -> Split:
        """Move both tensors to ``device``."""
        return Split(self.x.to(device), self.y.to(device))


@dataclass(frozen=True)
class Splits:
    """Train / validation / test splits plus what a model needs to know about the data."""

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int  # the model's output width: classes, or float target columns
    fingerprint: str  # content hash of all three splits (keys the dense-model and sensitivity caches)
    scaling: dict[str, list[float]] | None = None  # z-scoring from the train split: tabular inputs {mean, std},
    # float targets {target_mean, target_std}

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example, without the batch dimension."""
        return tuple(self.train.x.shape[1:])

    @property
    def input_dtype(self) -> torch.dtype:
        """The inputs' dtype: float32 features, or int64 tokens for a language model."""
        return self.train.x.dtype

    def to(self, device: torch.device) -> Splits:
        """All splits on ``device``."""
        return Splits(self.name, self.train.to(device), self.val.to(device), self.test.to(device),
                      self.num_classes, self.fingerprint, self.scaling)


def _arrays(obj: Any, source: str, targets: Targets = "class") -> tuple[np.ndarray, np.ndarray]:
    if isinstance(obj, dict) and "x" in obj and "y" in obj:
        x, y = obj["x"], obj["y"]
    elif isinstance(obj, (tuple, list)) and len(obj) == 2:
        x, y = obj
    else:
        raise DataError(f"dataset {source}: expected (x, y) or a mapping with 'x' and 'y'")
    xa = np.asarray(x.numpy() if isinstance(x, torch.Tensor) else x, dtype=np.float32)
    ya = np.asarray(y.numpy() if isinstance(y, torch.Tensor) else y)
    if xa.shape[0] != ya.shape[0]:
        raise DataError(f"dataset {source}: x has {xa.shape[0]} rows but y has {ya.shape[0]}")
    if targets == "float":
        check_features(xa, source)
        check_float_targets(ya, source)
        return xa, ya.astype(np.float32)
    if not np.issubdtype(ya.dtype, np.integer):
        raise DataError(f"dataset {source}: y must hold integer class labels, got {ya.dtype} "
                        "(float targets: task: {kind: regression})")
    check_rows(xa, ya, source)
    return xa, ya.astype(np.int64)


def check_features(x: np.ndarray, source: str) -> None:
    """Refuse too few rows and NaN/inf features (named by the first bad row)."""
    if x.shape[0] < 10:
        raise DataError(f"dataset {source}: {x.shape[0]} rows; a train/validation/test split needs at least 10")
    bad = np.flatnonzero(~np.isfinite(x.reshape(x.shape[0], -1)).all(axis=1))
    if bad.size:
        raise DataError(f"dataset {source}: row {int(bad[0])} has a NaN or infinite feature "
                        f"({bad.size} such rows)")


def check_float_targets(y: np.ndarray, source: str) -> None:
    """Regression targets: numbers, finite, one value or one row of values per example."""
    if not np.issubdtype(y.dtype, np.number) or y.ndim not in (1, 2):
        raise DataError(f"dataset {source}: y must hold numbers, one value (or row of values) per example; "
                        f"got {y.dtype} of shape {tuple(y.shape)}")
    bad = np.flatnonzero(~np.isfinite(y.reshape(y.shape[0], -1)).all(axis=1))
    if bad.size:
        raise DataError(f"dataset {source}: row {int(bad[0])} has a NaN or infinite target")


def check_rows(x: np.ndarray, y: np.ndarray, source: str) -> None:
    """Refuse data a search would silently get wrong: too few rows, NaN/inf features, negative labels, one class."""
    check_features(x, source)
    if y.ndim != 1:
        raise DataError(f"dataset {source}: y must be one class label per row, got shape {tuple(y.shape)}")
    if (y < 0).any():
        raise DataError(f"dataset {source}: row {int(np.flatnonzero(y < 0)[0])} has label {int(y[y < 0][0])}; "
                        f"labels must be 0..C-1")
    classes = np.unique(y)
    if classes.size < 2:
        raise DataError(f"dataset {source}: only one class ({int(classes[0])}); classification needs at least 2")
    if int(classes[-1]) >= 2 * classes.size + 10:
        raise DataError(f"dataset {source}: labels run up to {int(classes[-1])} but only {classes.size} classes "
                        f"occur; labels must be 0..C-1")


def _split_indices(n: int, val_fraction: float, test_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    perm = np.random.default_rng(seed).permutation(n)
    n_test, n_val = round(n * test_fraction), round(n * val_fraction)
    return perm[n_test + n_val:], perm[n_test:n_test + n_val], perm[:n_test]


def _standardize(parts: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, list[float]]:
    """Tabular features: z-score with the *train* split's statistics (no leakage from val/test); returns them, so
    exported models can apply the same scaling to raw inputs."""
    xtr = parts["train"][0]
    mu, sd = xtr.mean(axis=0), xtr.std(axis=0) + 1e-6
    for k, (x, y) in parts.items():
        parts[k] = ((x - mu) / sd).astype(np.float32), y
    return {"mean": [float(v) for v in mu], "std": [float(v) for v in sd]}


def load_data(name: str, kwargs: dict[str, Any] | None = None, val_fraction: float = 0.15,
              test_fraction: float = 0.15, split_seed: int = 0, targets: Targets = "class",
              stream: dict[str, int] | None = None, model_cache: Path | None = None, tokens: bool = False,
              source: str | None = None) -> Splits:
    """Load a dataset by name/path/reference and split it deterministically; ``targets`` is the task's
    (class labels or floats), which decides how ``y`` is checked. A callable that returns a torch ``Dataset`` or
    ``IterableDataset`` is read only up to ``stream`` examples per split (see :mod:`autoprune.tasks.streams`).
    ``model_cache``: where pretrained language models are cached (their tokenizers load fastest from there).
    ``tokens``: ``x`` holds token ids (a sequence classifier's input): kept as int64 and never scaled.
    ``source``: a user's :class:`~autoprune.tasks.sources.DataSource` that reads ``name`` (else the built-in that
    claims it)."""
    kw = dict(kwargs or {})
    if targets == "tokens":
        return _token_splits(name, kw, val_fraction, test_fraction, split_seed, model_cache, source)
    raw = source_for(name, source).load(name, kw)
    if is_stream(raw):  # a torch Dataset / IterableDataset: read only up to the budget
        budget = stream or {"train": 20000, "val": 2000, "test": 2000}
        raw = read_stream(raw, budget, val_fraction, test_fraction, split_seed, name)
    parts = _to_parts(raw, name, val_fraction, test_fraction, split_seed, targets)
    if tokens:
        parts = {k: (_token_ids(x, f"{name}[{k}]"), y) for k, (x, y) in parts.items()}
    scaling = _standardize(parts) if parts["train"][0].ndim == 2 and not tokens else None
    if targets == "float":  # train and score on z-scored targets; exports map outputs back to the raw units
        scaling = {**(scaling or {}), **_standardize_targets(parts)}
    return dataclasses.replace(_finish(name, parts, targets), scaling=scaling)


def _token_splits(name: str, kw: dict[str, Any], val_fraction: float, test_fraction: float, seed: int,
                  model_cache: Path | None = None, source: str | None = None) -> Splits:
    """Language-model data: byte-token windows of a text (see :mod:`autoprune.tasks.text`), split by window."""
    from autoprune.tasks.text import BYTE_VOCAB, load_text, token_windows

    vocab = BYTE_VOCAB
    if source is not None:  # a user's source of token ids: (x, y) arrays (N, T)
        x, y = _token_arrays(source_for(name, source).load(name, kw), name)
    elif name.startswith("text:") or name.endswith(".txt"):
        unknown = set(kw) - {"seq_len", "max_chars", "tokenizer"}
        if unknown:
            raise DataError(f"dataset {name}: unknown option(s) {', '.join(sorted(unknown))} (seq_len, max_chars, "
                            "tokenizer)")
        encode = None
        if kw.get("tokenizer"):  # the model's own tokenizer (a pretrained language model), else UTF-8 bytes
            from autoprune.models.hf import hf_tokenizer

            tok = hf_tokenizer(str(kw["tokenizer"]), model_cache)
            vocab = len(tok)
            encode = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        x, y = token_windows(load_text(name), int(kw.get("seq_len", 64)), kw.get("max_chars"), name, encode)
    elif ":" in name:  # an already tokenized data set: a callable returning (x, y) token-id arrays (N, T)
        x, y = _token_arrays(source_for(name).load(name, kw), name)
    else:
        raise DataError(f"dataset {name}: a causal_lm task reads text (text:pydoc, bundled; text:PATH or PATH.txt) "
                        "or token ids from package.module:callable")
    tr, va, te = _split_indices(len(x), val_fraction, test_fraction, seed)
    parts = {"train": (x[tr], y[tr]), "val": (x[va], y[va]), "test": (x[te], y[te])}
    splits = _finish(name, parts, "tokens")  # vocabulary: the largest id + 1 …
    is_text = name.startswith("text:") or name.endswith(".txt")
    return dataclasses.replace(splits, num_classes=vocab) if is_text else splits  # … or the whole vocabulary


def _token_ids(x: np.ndarray, name: str) -> np.ndarray:
    """Float-read features that must be token ids: whole, non-negative numbers, as int64."""
    if (x < 0).any() or (x != np.round(x)).any():
        raise DataError(f"dataset {name}: data.tokens is set but x holds values that are not token ids "
                        "(non-negative integers)")
    return x.astype(np.int64)


def _token_arrays(raw: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` token ids of a tokenized data set, checked: integers, the same (N, T) shape, ids ≥ 0."""
    if not (isinstance(raw, (tuple, list)) and len(raw) == 2):
        raise DataError(f"dataset {name}: a tokenized data set must be (x, y) token-id arrays of shape (N, T)")
    x, y = (np.asarray(a.numpy() if isinstance(a, torch.Tensor) else a) for a in raw)
    if not (np.issubdtype(x.dtype, np.integer) and np.issubdtype(y.dtype, np.integer)) or x.ndim != 2 \
            or x.shape != y.shape or x.shape[0] < 10 or min(x.min(), y.min()) < 0:
        raise DataError(f"dataset {name}: x and y must be non-negative integer token ids of one shape (N ≥ 10, T); "
                        f"got {x.dtype} {tuple(x.shape)} and {y.dtype} {tuple(y.shape)}")
    return x.astype(np.int64), y.astype(np.int64)


def _standardize_targets(parts: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, list[float]]:
    """Float targets: z-score with the train split's statistics (MSE 1.0 = predicting the mean, whatever the
    units); returns them as ``target_mean``/``target_std`` so exported models predict in the raw units."""
    ytr = parts["train"][1]
    mu, sd = ytr.mean(axis=0), ytr.std(axis=0) + 1e-6
    for k, (x, y) in parts.items():
        parts[k] = x, ((y - mu) / sd).astype(np.float32)
    return {"target_mean": [float(v) for v in np.atleast_1d(mu)], "target_std": [float(v) for v in np.atleast_1d(sd)]}


def _to_parts(raw: Any, name: str, val_fraction: float, test_fraction: float, seed: int,
              targets: Targets = "class") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    if isinstance(raw, dict) and "train" in raw:
        parts = {k: _arrays(v, f"{name}[{k}]", targets) for k, v in raw.items() if k in ("train", "val", "test")}
        if "test" not in parts:
            raise DataError(f"dataset {name}: a split mapping needs 'train' and 'test'")
        if "val" not in parts:  # carve validation out of train, never out of test
            x, y = parts["train"]
            tr, va, _ = _split_indices(len(y), val_fraction, 0.0, seed)
            parts["train"], parts["val"] = (x[tr], y[tr]), (x[va], y[va])
        return parts
    x, y = _arrays(raw, name, targets)
    tr, va, te = _split_indices(len(y), val_fraction, test_fraction, seed)
    return {"train": (x[tr], y[tr]), "val": (x[va], y[va]), "test": (x[te], y[te])}


def _finish(name: str, parts: dict[str, tuple[np.ndarray, np.ndarray]], targets: Targets = "class") -> Splits:
    h = hashlib.sha256(name.encode())
    for k in ("train", "val", "test"):
        x, y = parts[k]
        h.update(np.ascontiguousarray(x).tobytes())
        h.update(np.ascontiguousarray(y).tobytes())
    y = parts["train"][1]
    if targets == "tokens":
        num_classes = int(max(int(parts[k][1].max()) for k in parts) + 1)
    elif targets == "float":
        num_classes = 1 if y.ndim == 1 else int(y.shape[1])
    else:
        num_classes = int(max(int(parts[k][1].max()) for k in parts) + 1)
    splits = {k: Split(torch.from_numpy(np.ascontiguousarray(v[0])), torch.from_numpy(v[1])) for k, v in parts.items()}
    return Splits(name, splits["train"], splits["val"], splits["test"], num_classes, h.hexdigest()[:16])
