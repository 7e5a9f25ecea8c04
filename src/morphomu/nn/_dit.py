"""Diffusion-transformer (DiT) pieces: patchify, 2-D sin-cos positions, DiT blocks and the final adaLN layer.

Peebles & Xie (2023), "Scalable diffusion models with transformers": a latent image ``(C, H, W)`` is cut
into ``p x p`` patches, each linearly embedded to a token, fixed 2-D sine-cosine positions are added, and
transformer blocks act on the tokens. Two ways of conditioning the blocks are provided:

- :class:`CrossAttentionDiTBlock` (TRIDENT, Peng et al.): pre-norm self-attention over the patches,
  cross-attention from the patches to a few condition tokens, and a feed-forward layer;
- :class:`AdaLNZeroDiTBlock` (DiT's best variant): a condition vector regresses the scale, shift and
  residual gates of every layer norm, the gates initialised at zero so each block starts as the identity.

Both end with :class:`FinalAdaLNLayer` (adaLN then a zero-initialised linear map back to patch pixels).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ._attention import Attention
from ._feedforward import GEGLUFeedForward

__all__ = [
    "AdaLNZeroDiTBlock",
    "CrossAttentionDiTBlock",
    "FinalAdaLNLayer",
    "PatchEmbed",
    "sincos_pos_embed_2d",
    "unpatchify",
]


def _sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """``dim / 2`` sines then ``dim / 2`` cosines of positions ``pos`` (``(n,)``), frequencies 1 / 10000^(2i/dim)."""
    omega = 1.0 / 10_000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    angles = pos.double()[:, None] * omega[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_pos_embed_2d(dim: int, height: int, width: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding of a ``height x width`` grid of patches (as in DiT / MAE).

    Half of the features encode the row, half the column.

    Parameters
    ----------
    dim
        Embedding width, a multiple of 4.
    height, width
        Patches per column and per row.

    Returns
    -------
    Tensor ``(height * width, dim)`` in float32, patches in row-major order (as :class:`PatchEmbed`).
    """
    if dim % 4:
        msg = f"the width {dim} must be a multiple of 4 for a 2-D sin-cos position embedding."
        raise ValueError(msg)
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    emb = torch.cat([_sincos_1d(dim // 2, rows.reshape(-1)), _sincos_1d(dim // 2, cols.reshape(-1))], dim=1)
    return emb.float()


class PatchEmbed(nn.Module):
    """``(b, C, H, W)`` -> ``(b, (H / p) (W / p), dim)`` tokens by a strided convolution (a linear map per patch).

    Parameters
    ----------
    in_channels
        Channels of the latent image.
    dim
        Token width.
    patch_size
        Patch side ``p`` (must divide the height and width).
    """

    def __init__(self, in_channels: int, dim: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        # as DiT: initialise like a linear layer (xavier on the flattened kernel)
        nn.init.xavier_uniform_(self.proj.weight.view(dim, -1))
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed the patches of ``x``."""
        return self.proj(x).flatten(2).transpose(1, 2)


def unpatchify(x: torch.Tensor, *, patch_size: int, channels: int, height: int, width: int) -> torch.Tensor:
    """Inverse of patchify: ``(b, h w, p p C)`` tokens -> ``(b, C, h p, w p)`` image (``h, w`` patches per side).

    Parameters
    ----------
    x
        Per-patch pixel values, patches in row-major order, each ``(p, p, C)`` flattened.
    patch_size
        Patch side ``p``.
    channels
        Output channels ``C``.
    height, width
        Patches per column (``h``) and per row (``w``).
    """
    b = x.shape[0]
    p = patch_size
    x = x.reshape(b, height, width, p, p, channels)
    return torch.einsum("bhwpqc->bchpwq", x).reshape(b, channels, height * p, width * p)


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x * (1 + scale) + shift`` with per-item ``(b, dim)`` modulations broadcast over tokens."""
    return x * (1.0 + scale[:, None]) + shift[:, None]


class AdaLNZeroDiTBlock(nn.Module):
    """DiT block with adaLN-Zero conditioning (self-attention and a feed-forward layer).

    Each sub-layer is ``x + gate * f(LN(x) * (1 + scale) + shift)`` with ``(shift, scale, gate)`` regressed
    from the condition.

    Parameters
    ----------
    dim
        Token width.
    n_heads
        Attention heads.
    n_cond
        Width of the condition vector (time + class / compound embedding).
    ff_mult
        Feed-forward expansion.
    dropout
        Dropout on attention output and feed-forward hidden units.
    """

    def __init__(
        self, dim: int, n_heads: int, n_cond: int, *, ff_mult: int = 4, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.dim = dim
        self.attn = Attention(dim, n_heads, dropout=dropout)
        self.ff = GEGLUFeedForward(dim, ff_mult, dropout=dropout)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(n_cond, 6 * dim))
        nn.init.zeros_(self.modulation[-1].weight)  # the "zero" of adaLN-Zero: every block starts as identity
        nn.init.zeros_(self.modulation[-1].bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Apply the block to tokens ``x`` ``(b, n, dim)`` under condition vectors ``cond`` ``(b, n_cond)``."""
        shift_a, scale_a, gate_a, shift_f, scale_f, gate_f = self.modulation(cond).chunk(6, dim=-1)
        h = _modulate(F.layer_norm(x, (self.dim,)), shift_a, scale_a)
        x = x + gate_a[:, None] * self.attn(h)
        h = _modulate(F.layer_norm(x, (self.dim,)), shift_f, scale_f)
        return x + gate_f[:, None] * self.ff(h)


class CrossAttentionDiTBlock(nn.Module):
    """Transformer block over patch tokens that cross-attends to condition tokens (TRIDENT's denoiser block).

    ``x + SelfAttn(LN(x))``, then ``x + CrossAttn(LN(x), LN(c))`` with the patches as queries and the
    condition tokens ``c`` as keys and values, then ``x + FF(LN(x))``. The output projections of both
    attentions and of the feed-forward layer start at zero, so each block starts as the identity (as
    adaLN-Zero does for DiT).

    Parameters
    ----------
    dim
        Token width.
    n_heads
        Attention heads.
    ff_mult
        Feed-forward expansion.
    dropout
        Dropout on attention outputs and feed-forward hidden units.
    """

    def __init__(self, dim: int, n_heads: int, *, ff_mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm_self = nn.LayerNorm(dim)
        self.self_attn = Attention(dim, n_heads, dropout=dropout)
        self.norm_cross = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(dim)
        self.cross_attn = Attention(dim, n_heads, dropout=dropout)
        self.norm_ff = nn.LayerNorm(dim)
        self.ff = GEGLUFeedForward(dim, ff_mult, dropout=dropout)
        for layer in (self.self_attn.to_out, self.cross_attn.to_out, self.ff.proj_out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def project_context(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention keys and values of condition tokens ``(b, n_tokens, dim)`` (reusable across calls)."""
        return self.cross_attn.project_kv(self.norm_context(context))

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Apply the block to patch tokens ``x`` ``(b, n, dim)`` given condition tokens ``(b, n_tokens, dim)``."""
        h = self.norm_self(x)
        x = x + self.self_attn.attend(h, *self.self_attn.project_kv(h))
        k, v = self.project_context(context) if kv is None else kv
        x = x + self.cross_attn.attend(self.norm_cross(x), k, v)
        return x + self.ff(self.norm_ff(x))


class FinalAdaLNLayer(nn.Module):
    """DiT's output layer: adaLN (shift, scale from the condition), then a zero-initialised linear map.

    Gives ``patch_size**2 * out_channels`` values per token.

    Parameters
    ----------
    dim
        Token width.
    n_cond
        Width of the condition vector.
    patch_size
        Patch side.
    out_channels
        Channels of the predicted latent.
    """

    def __init__(self, dim: int, n_cond: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.dim = dim
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(n_cond, 2 * dim))
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)
        for layer in (self.modulation[-1], self.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Per-token patch values from tokens ``(b, n, dim)`` and condition vectors ``(b, n_cond)``."""
        shift, scale = self.modulation(cond).chunk(2, dim=-1)
        return self.linear(_modulate(F.layer_norm(x, (self.dim,)), shift, scale))
