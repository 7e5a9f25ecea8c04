"""Adaptive layer norm: a LayerNorm without affine whose scale and shift come from the time embedding."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["AdaLayerNorm"]


class AdaLayerNorm(nn.Module):
    """``LayerNorm(x) * (1 + gamma) + beta`` with ``[gamma, beta] = Linear(Mish(t_emb))``.

    The modulation depends only on the time embedding, so a sampler that runs a whole batch at one
    timestep computes it once (:meth:`modulation`) and applies it with :meth:`modulate`.

    Parameters
    ----------
    dim
        Features of the normalised input.
    n_cond
        Features of the time embedding.
    eps
        LayerNorm epsilon.
    """

    def __init__(self, dim: int, n_cond: int, *, eps: float = 1e-5) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.to_scale_shift = nn.Linear(n_cond, 2 * dim)

    def modulation(self, t_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(1 + gamma, beta)``, each of shape ``(n, dim)``, from a time embedding ``(n, n_cond)``."""
        gamma, beta = self.to_scale_shift(F.mish(t_emb)).chunk(2, dim=-1)
        return 1.0 + gamma, beta

    def modulate(self, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` (``(n, dim)``) and apply a precomputed scale and shift (broadcastable)."""
        return torch.addcmul(shift, F.layer_norm(x, (self.dim,), eps=self.eps), scale)

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` and modulate it with the time embedding ``t_emb``."""
        return self.modulate(x, *self.modulation(t_emb))
