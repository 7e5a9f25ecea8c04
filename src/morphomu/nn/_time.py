"""Sinusoidal time embedding followed by a two-layer Mish MLP (PhenoSeq's time module)."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["TimeEmbedding", "sinusoidal_embedding"]


def sinusoidal_embedding(t: torch.Tensor, dim: int, *, max_period: float = 10_000.0) -> torch.Tensor:
    """Transformer-style sinusoidal features of (possibly fractional) timesteps.

    Parameters
    ----------
    t
        Timesteps, shape ``(n,)``.
    dim
        Number of features (even): ``dim / 2`` sines followed by ``dim / 2`` cosines.
    max_period
        Longest period of the geometric frequency ladder.

    Returns
    -------
    Tensor of shape ``(n, dim)`` in float32.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class TimeEmbedding(nn.Module):
    """``t -> sinusoid(n_time) -> Linear(n_time, n_hidden) -> Mish -> Linear(n_hidden, n_time)``.

    Parameters
    ----------
    n_time
        Size of the sinusoidal features and of the output vector consumed by every AdaLN.
    n_hidden
        Width of the MLP's hidden layer.
    """

    def __init__(self, n_time: int, n_hidden: int) -> None:
        super().__init__()
        if n_time % 2:
            msg = f"n_time must be even, got {n_time}."
            raise ValueError(msg)
        self.n_time = n_time
        self.mlp = nn.Sequential(nn.Linear(n_time, n_hidden), nn.Mish(), nn.Linear(n_hidden, n_time))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Embed timesteps ``t`` (shape ``(n,)``) to ``(n, n_time)``."""
        return self.mlp(sinusoidal_embedding(t, self.n_time))
