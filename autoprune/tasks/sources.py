"""The data extension point: a :class:`DataSource` reads a space's ``data:`` name into raw examples — ``(x, y)``
arrays, a mapping with ``x`` and ``y``, or a torch ``Dataset``/``IterableDataset`` (read up to a budget) — which
autoprune then splits, checks and scales. The built-ins claim names by their form (scikit-learn's bundled sets,
``torchvision:NAME``, a ``.pt``/``.npz`` file, ``package.module:callable``); a user's source is named in
``data: {source: ...}`` (a registered name or ``package.module:Class``) and reads every name it is given."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from autoprune.errors import DataError, ModelError
from autoprune.plugins import Registry, import_callable

__all__ = ["DATA_SOURCES", "SKLEARN_DATASETS", "DataSource", "register_data_source", "source_for"]

SKLEARN_DATASETS = ("digits", "breast_cancer", "wine", "diabetes")


class DataSource(ABC):
    """Reads raw examples for a data set name. Subclass it and implement :meth:`load`; :meth:`matches` lets a
    built-in claim names of its form without being named."""

    name: ClassVar[str] = ""

    def matches(self, name: str) -> bool:
        """Whether this source reads ``name`` when the space names no source (a user's: only when named)."""
        return False

    @abstractmethod
    def load(self, name: str, kwargs: dict[str, Any]) -> Any:
        """``(x, y)``, ``{"x": ..., "y": ...}`` or a torch Dataset of ``(x, y)`` pairs."""


DATA_SOURCES: Registry[DataSource] = Registry("data source", DataSource, ("autoprune.tasks.sources",))
register_data_source = DATA_SOURCES.register


@register_data_source("sklearn")
class ScikitLearn(DataSource):
    """scikit-learn's bundled data sets (no download): digits (as 1×8×8 images), breast_cancer, wine, diabetes."""

    def matches(self, name: str) -> bool:
        """One of :data:`SKLEARN_DATASETS`."""
        return name in SKLEARN_DATASETS

    def load(self, name: str, kwargs: dict[str, Any]) -> Any:
        """Features as float32 (digits scaled to [0, 1]) and targets."""
        from sklearn import datasets

        if name == "digits":
            d = datasets.load_digits()
            return (d.data.reshape(-1, 1, 8, 8) / 16.0).astype(np.float32), d.target
        loader = {"breast_cancer": datasets.load_breast_cancer, "wine": datasets.load_wine,
                  "diabetes": datasets.load_diabetes}[name]
        d = loader()
        return d.data.astype(np.float32), d.target


@register_data_source("torchvision")
class TorchVisionData(DataSource):
    """``torchvision:NAME?root=...`` (the vision extra, imported only when asked for)."""

    def matches(self, name: str) -> bool:
        """``torchvision:…``."""
        return name.startswith("torchvision:")

    def load(self, name: str, kwargs: dict[str, Any]) -> Any:
        """The torchvision data set, as a torch Dataset."""
        from autoprune.models.vision import torchvision_dataset

        return torchvision_dataset(name, kwargs)


@register_data_source("file")
class DataFile(DataSource):
    """A ``.npz`` (arrays ``x``, ``y``) or ``.pt``/``.pth`` file (weights-only ``torch.load``)."""

    def matches(self, name: str) -> bool:
        """A name ending in .pt, .pth or .npz."""
        return name.endswith((".pt", ".pth", ".npz"))

    def load(self, name: str, kwargs: dict[str, Any]) -> Any:
        """The file's contents; a missing or unreadable file is a DataError naming it."""
        path = Path(name)
        if not path.exists():
            raise DataError(f"dataset file {path}: not found")
        try:
            if path.suffix == ".npz":
                with np.load(path) as f:
                    return {k: f[k] for k in f.files}
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise DataError(f"dataset file {path}: cannot be read ({err})") from None


@register_data_source("callable")
class DataCallable(DataSource):
    """``package.module:callable``, called with the space's ``kwargs``."""

    def matches(self, name: str) -> bool:
        """Any ``module:attr`` reference."""
        return ":" in name

    def load(self, name: str, kwargs: dict[str, Any]) -> Any:
        """What the callable returns."""
        try:
            return import_callable(name, "dataset")(**kwargs)
        except ModelError as err:
            raise DataError(str(err)) from None


def source_for(name: str, source: str | None = None) -> DataSource:
    """The source that reads ``name``: the one named (registered or ``package.module:Class``), else the first
    built-in that claims it; a DataError names what is unknown."""
    try:
        found = DATA_SOURCES.claim(name, source, (ScikitLearn, TorchVisionData, DataFile, DataCallable))
    except ValueError as err:
        raise DataError(str(err)) from None
    if found is not None:
        return found
    raise DataError(f"unknown dataset '{name}' (built-in: {', '.join(SKLEARN_DATASETS)}; or a .pt/.npz file, "
                    "package.module:callable, torchvision:NAME, or a data source named in data.source)")
