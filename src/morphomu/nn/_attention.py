"""Multi-head attention with exact shortcuts for one key or one query token, and a pre-norm encoder layer.

With a single key, softmax weights are exactly 1, so attention is its value and output projections
(``out(v(context))``): no query, key, scores or softmax. That covers cross-attention to one mean
context token and self-attention of a single token, in training as well as in sampling.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ._feedforward import GEGLUFeedForward

__all__ = ["Attention", "PreNormEncoderLayer", "attention"]

#: Largest key count for which training on the CPU uses the matrix-product form (scores are materialised).
CPU_MATMUL_MAX_KEYS = 256


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention ``softmax(q k^T / sqrt(head_dim)) v`` of ``(..., n, head_dim)`` tensors.

    :func:`torch.nn.functional.scaled_dot_product_attention`, except when training on the CPU over sets of
    several queries and at most :data:`CPU_MATMUL_MAX_KEYS` keys: there torch's fused CPU kernel is slow to
    differentiate (16-cell sets, heads of 256: 2.7x the time of two matrix products in bf16, 1.4x in
    float32), so the scores are formed explicitly, the softmax taken in float32 as the fused kernel does.
    """
    if q.device.type == "cpu" and q.requires_grad and q.shape[-2] > 1 and k.shape[-2] <= CPU_MATMUL_MAX_KEYS:
        scores = (q @ k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5
        return scores.softmax(-1).to(v.dtype) @ v
    return F.scaled_dot_product_attention(q, k, v)


class Attention(nn.Module):
    """Multi-head (cross-)attention with separate query, key, value and output projections.

    Dropout acts on the output projection (as in diffusers' attention), which keeps the single-key
    shortcut exact in training too.

    Parameters
    ----------
    dim
        Features of the queries and of the output.
    n_heads
        Number of heads; must divide ``dim``.
    context_dim
        Features of keys/values (default ``dim``).
    dropout
        Dropout on the output.
    """

    def __init__(
        self, dim: int, n_heads: int, *, context_dim: int | None = None, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if dim % n_heads:
            msg = f"n_heads={n_heads} must divide the width {dim}."
            raise ValueError(msg)
        context_dim = context_dim or dim
        self.n_heads = n_heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(context_dim, dim)
        self.to_v = nn.Linear(context_dim, dim)
        self.to_out = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def single_key(self, context: torch.Tensor) -> torch.Tensor:
        """Attention output when there is one key: ``out(v(context))`` (any leading shape)."""
        return self.dropout(self.to_out(self.to_v(context)))

    def project_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of a context ``(b, n_keys, context_dim)``, each ``(b, heads, n_keys, head_dim)``."""
        b, n, _ = context.shape
        k = self.to_k(context).view(b, n, self.n_heads, -1).transpose(1, 2)
        v = self.to_v(context).view(b, n, self.n_heads, -1).transpose(1, 2)
        return k, v

    def attend(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention of queries ``x`` (``(b, n_q, dim)``) over precomputed keys and values."""
        b, n_q, d = x.shape
        q = self.to_q(x).view(b, n_q, self.n_heads, -1).transpose(1, 2)
        out = attention(q, k, v)
        return self.dropout(self.to_out(out.transpose(1, 2).reshape(b, n_q, d)))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Attend from ``x`` (``(b, n_q, dim)``) over ``context`` (``(b, n_k, context_dim)``; default ``x``)."""
        context = x if context is None else context
        if context.shape[1] == 1:
            return self.single_key(context).expand(-1, x.shape[1], -1)
        return self.attend(x, *self.project_kv(context))


class PreNormEncoderLayer(nn.Module):
    """Pre-norm transformer encoder layer without positional encoding (its input is a set).

    ``x + attn(LN(x))`` then ``x + GEGLU(LN(x))``.

    Parameters
    ----------
    dim
        Token width.
    n_heads
        Attention heads.
    ff_mult
        Feed-forward expansion.
    dropout
        Dropout in attention output and feed-forward.
    """

    def __init__(self, dim: int, n_heads: int, *, ff_mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm_attn = nn.LayerNorm(dim)
        self.attn = Attention(dim, n_heads, dropout=dropout)
        self.norm_ff = nn.LayerNorm(dim)
        self.ff = GEGLUFeedForward(dim, ff_mult, dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode a batch of sets ``(b, n, dim)``."""
        x = x + self.attn(self.norm_attn(x))
        return x + self.ff(self.norm_ff(x))
