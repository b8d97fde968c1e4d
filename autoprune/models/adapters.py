"""The model extension point: a :class:`ModelAdapter` builds a network from a space's ``model:`` name. The built-ins
claim names by their form (``hf:PATH`` / a known language model, ``torchvision:NAME``, ``package.module:callable``,
a zoo name); a user's adapter is named in ``model: {adapter: ...}`` (a registered name or ``package.module:Class``)
and then builds every name it is given, e.g. ``timm:resnet18`` from an adapter for timm."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from autoprune.errors import ModelError
from autoprune.plugins import Registry, import_callable

__all__ = ["MODEL_ADAPTERS", "ModelAdapter", "adapter_for", "register_model_adapter"]


class ModelAdapter(ABC):
    """Builds an ``nn.Module`` from a model name. Subclass it and implement :meth:`build`; :meth:`matches` lets a
    built-in claim names of its form without being named."""

    name: ClassVar[str] = ""

    def matches(self, name: str) -> bool:
        """Whether this adapter builds ``name`` when the space names no adapter (a user's: only when named)."""
        return False

    @abstractmethod
    def build(self, name: str, input_shape: tuple[int, ...], num_classes: int, kwargs: dict[str, Any],
              cache_dir: Path | None = None) -> nn.Module:
        """The untrained (or pretrained) network for data of ``input_shape`` with ``num_classes`` outputs."""


MODEL_ADAPTERS: Registry[ModelAdapter] = Registry("model adapter", ModelAdapter, ("autoprune.models.adapters",))
register_model_adapter = MODEL_ADAPTERS.register


@register_model_adapter("huggingface")
class HuggingFace(ModelAdapter):
    """A Hugging Face folder (``hf:PATH``) or a known pretrained language model (smollm2-135m, hf-llama)."""

    def matches(self, name: str) -> bool:
        """``hf:…`` and the known language models."""
        from autoprune.models.hf import is_hf_model

        return is_hf_model(name)

    def build(self, name: str, input_shape: tuple[int, ...], num_classes: int, kwargs: dict[str, Any],
              cache_dir: Path | None = None) -> nn.Module:
        """Through the one transformers adapter (models.hf)."""
        from autoprune.models.hf import hf_model

        return hf_model(name, num_classes, kwargs, cache_dir)


@register_model_adapter("torchvision")
class TorchVision(ModelAdapter):
    """``torchvision:NAME`` (the vision extra)."""

    def matches(self, name: str) -> bool:
        """``torchvision:…``."""
        return name.startswith("torchvision:")

    def build(self, name: str, input_shape: tuple[int, ...], num_classes: int, kwargs: dict[str, Any],
              cache_dir: Path | None = None) -> nn.Module:
        """Through the one torchvision adapter (models.vision), imported only here."""
        from autoprune.models.vision import torchvision_model

        return torchvision_model(name.split(":", 1)[1], num_classes, kwargs)


@register_model_adapter("callable")
class UserCallable(ModelAdapter):
    """``package.module:callable`` returning an ``nn.Module`` (called with the space's ``kwargs``)."""

    def matches(self, name: str) -> bool:
        """Any ``module:attr`` reference."""
        return ":" in name

    def build(self, name: str, input_shape: tuple[int, ...], num_classes: int, kwargs: dict[str, Any],
              cache_dir: Path | None = None) -> nn.Module:
        """The callable's model."""
        fn = import_callable(name, "model")
        try:
            return fn(**kwargs)
        except TypeError as err:
            raise ModelError(f"model '{name}': bad kwargs {kwargs} ({err})") from None


@register_model_adapter("zoo")
class Zoo(ModelAdapter):
    """The built-in networks (mlp, digits_cnn, lenet5, resnet20, ...; see models.zoo)."""

    def matches(self, name: str) -> bool:
        """A zoo name."""
        from autoprune.models.zoo import BUILTIN

        return name in BUILTIN

    def build(self, name: str, input_shape: tuple[int, ...], num_classes: int, kwargs: dict[str, Any],
              cache_dir: Path | None = None) -> nn.Module:
        """The zoo's builder, shaped to the data."""
        from autoprune.models.zoo import BUILTIN

        try:
            return BUILTIN[name](tuple(input_shape), num_classes, kwargs)
        except TypeError as err:
            raise ModelError(f"model '{name}': bad kwargs {kwargs} ({err})") from None


def adapter_for(name: str, adapter: str | None = None) -> ModelAdapter:
    """The adapter that builds ``name``: the one named (registered or ``package.module:Class``), else the first
    built-in that claims it; a ModelError names what is unknown."""
    try:
        found = MODEL_ADAPTERS.claim(name, adapter, (HuggingFace, TorchVision, UserCallable, Zoo))
    except ValueError as err:
        raise ModelError(str(err)) from None
    if found is not None:
        return found
    from autoprune.models.zoo import BUILTIN

    raise ModelError(f"unknown model '{name}' (built-in: {', '.join(BUILTIN)}, smollm2-135m, hf-llama; or hf:PATH, "
                     "package.module:callable, or a model adapter named in model.adapter)")
