"""The optional torchvision adapter (``pip install 'autoprune[vision]'``): the only module importing torchvision.

torchvision is imported inside the functions, never at module level, so the core runs without it (and with
the CPU torch 2.13.0 build, beside which torchvision's compiled ops do not load).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from autoprune.errors import DataError, ModelError

__all__ = ["torchvision_dataset", "torchvision_model"]


def _import(what: str) -> Any:
    try:
        import torchvision
    except Exception as err:  # ImportError, or a RuntimeError from mismatched compiled ops
        msg = f"{what} needs the optional extra: pip install 'autoprune[vision]' ({type(err).__name__}: {err})"
        raise (DataError if what.startswith("dataset") else ModelError)(msg) from None
    return torchvision


def torchvision_model(arch: str, num_classes: int, kwargs: dict[str, Any]) -> nn.Module:
    """``torchvision.models.<arch>(weights=None, num_classes=...)``: never downloads weights."""
    tv = _import(f"model 'torchvision:{arch}'")
    fn = getattr(tv.models, arch, None)
    if fn is None:
        raise ModelError(f"model 'torchvision:{arch}': torchvision.models has no '{arch}'")
    model: nn.Module = fn(weights=None, num_classes=num_classes, **kwargs)
    return model


def image_folder(tv: Any, name: str, kwargs: dict[str, Any]) -> Any:
    """``torchvision:ImageFolder`` with ``root`` (one sub-folder per class) and ``image_size`` (square, default 32):
    a torch Dataset of (3, S, S) float tensors in [0, 1], read lazily up to the space's ``data.stream`` budget."""
    root = Path(str(kwargs.get("root", "data")))
    if not root.is_dir():
        raise DataError(f"dataset '{name}': root folder '{root}' not found (one sub-folder of images per class)")
    size = int(kwargs.get("image_size", 32))
    transform = tv.transforms.Compose([tv.transforms.Resize((size, size)), tv.transforms.ToTensor()])
    try:
        return tv.datasets.ImageFolder(str(root), transform=transform, loader=_rgb)
    except (FileNotFoundError, RuntimeError) as err:
        raise DataError(f"dataset '{name}': {err}") from None


def _rgb(path: str) -> Any:
    from PIL import Image

    with Image.open(path) as img:
        return img.convert("RGB")


def torchvision_dataset(name: str, kwargs: dict[str, Any]) -> Any:
    """A torchvision dataset as uint8→float arrays; files must already be under ``root`` (no download).

    ``FakeData`` (random images, no files) is supported for smoke tests: ``torchvision:FakeData``.
    """
    tv = _import(f"dataset '{name}'")
    cls_name = name.split(":", 1)[1]
    if cls_name == "ImageFolder":
        return image_folder(tv, name, kwargs)
    cls = getattr(tv.datasets, cls_name, None)
    if cls is None:
        raise DataError(f"dataset '{name}': torchvision.datasets has no '{cls_name}'")
    parts = {}
    for split, train in (("train", True), ("test", False)):
        try:
            if cls_name == "FakeData":
                ds = cls(size=int(kwargs.get("size", 200)), image_size=tuple(kwargs.get("image_size", (3, 16, 16))),
                         num_classes=int(kwargs.get("num_classes", 4)), random_offset=0 if train else 10_000)
                xs = np.stack([np.asarray(img, dtype=np.float32) for img, _ in ds]) / 255.0
                ys = np.asarray([int(t) for _, t in ds])
            else:
                ds = cls(root=kwargs.get("root", "data"), train=train, download=False)
                xs, ys = np.asarray(ds.data, dtype=np.float32) / 255.0, np.asarray(ds.targets)
        except DataError:
            raise
        except Exception as err:
            raise DataError(f"dataset '{name}': files not found under '{kwargs.get('root', 'data')}' "
                            f"(autoprune never downloads; place them there first) ({err})") from None
        xs = xs.transpose(0, 3, 1, 2) if xs.ndim == 4 else xs[:, None]
        parts[split] = (xs, ys)
    return parts
