"""The layer kernel: which weight tensors of a model are prunable units, by fully qualified name, and how to reach
them.

A unit is one weight matrix (or kernel):

* ``nn.Conv1d/2d/3d`` and ``nn.Linear``: the module's ``weight``; the unit is named like the module
  (``features.0``).
* Hugging Face ``Conv1D`` (GPT-2's attention and MLP projections): its ``weight`` is stored (in, out), the transpose
  of a Linear's; the unit is named like the module and :func:`is_transposed` says so, so that row-wise criteria and
  N:M groups read it as (out, in). Recognised by class name, so transformers is never imported here.
* ``nn.RNN / nn.LSTM / nn.GRU``: every ``weight_ih_l<k>[_reverse]``, ``weight_hh_l<k>[_reverse]`` (and an LSTM's
  projection ``weight_hr_l<k>``) is its own unit, named ``<module>.<parameter>`` (``rnn.weight_hh_l0``): the
  input-to-hidden and hidden-to-hidden matrices of each layer prune differently. Biases are not units.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["PRUNABLE_TYPES", "RNN_TYPES", "architecture_fingerprint", "is_hf_conv1d", "is_transposed",
           "layer_shapes", "layer_weight", "out_by_in", "prunable_layers", "rnn_weight_names", "unit_module",
           "unit_name", "unit_param_key", "unit_site", "weight_of"]

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
RNN_TYPES: tuple[type[nn.Module], ...] = (nn.RNN, nn.LSTM, nn.GRU)


def is_hf_conv1d(module: nn.Module) -> bool:
    """Whether ``module`` is transformers' ``Conv1D`` (a Linear whose weight is stored transposed)."""
    cls = parametrize.type_before_parametrizations(module)  # a masked Conv1D's class is ParametrizedConv1D
    return cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers") and hasattr(module, "nf")


def rnn_weight_names(module: nn.Module) -> list[str]:
    """The weight matrices of an nn.RNN/LSTM/GRU, in its own order (weight_ih_l0, weight_hh_l0, …)."""
    return [n for n in getattr(module, "_flat_weights_names", []) if n.startswith("weight_")]


def unit_name(module_name: str, module: nn.Module, param: str = "weight") -> str:
    """The FQN of the unit ``param`` of ``module`` (named ``module_name``): the module's own name for a layer's
    weight, ``<module>.<param>`` for an RNN matrix."""
    if param == "weight" and not isinstance(module, RNN_TYPES):
        return module_name
    return f"{module_name}.{param}" if module_name else param


def unit_param_key(fqn: str, module: nn.Module) -> str:
    """The state-dict / parameter key of unit ``fqn`` held by ``module`` (a layer's ``<fqn>.weight``; an RNN matrix
    is named by its key already)."""
    return fqn if isinstance(module, RNN_TYPES) else f"{fqn}.weight"


def out_by_in(tensor: torch.Tensor, transposed: bool) -> torch.Tensor:
    """A unit's weight-shaped tensor read as (out, in) — or back: a Conv1D's (``transposed``) is ``.t()``, any other
    unit's is itself. Its own inverse."""
    return tensor.t() if transposed else tensor


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every prunable unit keyed by fully qualified name, in module order, mapped to the module that holds it (an
    RNN's units map to the RNN module)."""
    out: dict[str, nn.Module] = {}
    for name, m in model.named_modules():
        if isinstance(m, PRUNABLE_TYPES) or is_hf_conv1d(m):
            out[name] = m
        elif isinstance(m, RNN_TYPES):
            for p in rnn_weight_names(m):
                out[unit_name(name, m, p)] = m
    return out


def unit_site(model: nn.Module, fqn: str) -> tuple[nn.Module, str]:
    """(module, parameter name) of the unit ``fqn``: ``(layer, "weight")`` for a layer, ``(rnn, "weight_hh_l0")``
    for an RNN matrix. Raises AttributeError for a name that is neither."""
    try:
        module = model.get_submodule(fqn)
    except AttributeError:
        module = None
    if module is not None and not isinstance(module, RNN_TYPES):
        return module, "weight"
    owner, _, param = fqn.rpartition(".")
    rnn = model.get_submodule(owner)
    if not isinstance(rnn, RNN_TYPES) or param not in rnn_weight_names(rnn):
        raise AttributeError(f"{fqn} is not a prunable unit")
    return rnn, param


def unit_module(model: nn.Module, fqn: str) -> nn.Module:
    """The module holding unit ``fqn`` (the layer itself, or the RNN)."""
    return unit_site(model, fqn)[0]


def is_transposed(model: nn.Module, fqn: str) -> bool:
    """Whether unit ``fqn`` stores its weight as (in, out) (Hugging Face Conv1D)."""
    return is_hf_conv1d(unit_module(model, fqn))


def layer_weight(module: nn.Module, param: str = "weight") -> torch.Tensor:
    """The (possibly parametrized) weight tensor ``param`` of a module."""
    w = getattr(module, param)
    assert isinstance(w, torch.Tensor)
    return w


def weight_of(model: nn.Module, fqn: str) -> torch.Tensor:
    """The effective weight of the unit named ``fqn``."""
    module, param = unit_site(model, fqn)
    return layer_weight(module, param)


def architecture_fingerprint(model: nn.Module) -> str:
    """Hash of prunable-unit FQNs and weight shapes: policies carry it so ``apply`` can check the model."""
    h = hashlib.sha256()
    for name in prunable_layers(model):
        h.update(f"{name}:{tuple(weight_of(model, name).shape)};".encode())
    return h.hexdigest()[:16]


def layer_shapes(model: nn.Module) -> dict[str, list[int]]:
    """Weight shape of every prunable unit, by FQN (stored in policies for precise mismatch errors)."""
    return {name: list(weight_of(model, name).shape) for name in prunable_layers(model)}
