"""A small decoder-only transformer language model (GPT-style), defined here so causal-LM pruning can be searched
and tested offline in seconds; every projection is an ``nn.Linear`` (q, k, v, o, up, down), the units a
language-model pruner works on. Shapes: tokens (B, T) int64 → logits (B, T, vocab)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TinyLM"]


class Attention(nn.Module):
    """Causal multi-head self-attention with separate q/k/v/o projections."""

    def __init__(self, d_model: int, heads: int) -> None:
        super().__init__()
        if d_model % heads:
            raise TypeError(f"d_model {d_model} is not divisible by heads {heads}")
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(d_model, d_model) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (p(x).view(b, t, self.heads, d // self.heads).transpose(1, 2) for p in (self.q, self.k, self.v))
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, heads, T, d/heads)
        return self.o(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, d_model: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = Attention(d_model, heads)
        self.up = nn.Linear(d_model, mlp_ratio * d_model)
        self.down = nn.Linear(mlp_ratio * d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.down(nn.functional.gelu(self.up(self.ln2(x))))


class TinyLM(nn.Module):
    """Token + position embeddings, ``layers`` blocks, final norm, LM head (``lm_head``, not tied)."""

    def __init__(self, vocab: int = 256, seq_len: int = 64, d_model: int = 64, layers: int = 2, heads: int = 4,
                 mlp_ratio: int = 4) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(seq_len, d_model)
        self.blocks = nn.Sequential(*(Block(d_model, heads, mlp_ratio) for _ in range(layers)))
        self.ln = nn.LayerNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.tok(tokens) + self.pos(positions)
        return self.lm_head(self.ln(self.blocks(x)))
