"""GEGLU feed-forward layer: ``Linear(d, 2 m d) -> a * GELU(g) -> dropout -> Linear(m d, d)``."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["GEGLUFeedForward"]


class GEGLUFeedForward(nn.Module):
    """Gated-GELU feed-forward network (Shazeer, 2020), hidden width ``mult * dim``.

    Parameters
    ----------
    dim
        Input and output features.
    mult
        Hidden expansion factor (the paper's ``ff_mult``).
    dropout
        Dropout on the gated hidden activations.
    """

    def __init__(self, dim: int, mult: int = 4, *, dropout: float = 0.0) -> None:
        super().__init__()
        self.proj_in = nn.Linear(dim, 2 * mult * dim)
        self.dropout = nn.Dropout(dropout)
        self.proj_out = nn.Linear(mult * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the feed-forward network to the last axis of ``x``."""
        value, gate = self.proj_in(x).chunk(2, dim=-1)
        return self.proj_out(self.dropout(value * F.gelu(gate)))
