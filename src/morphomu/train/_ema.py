"""Exponential moving average of weights with warm-up, kept beside the raw weights."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["ExponentialMovingAverage"]


class ExponentialMovingAverage:
    """EMA of a list of parameters, updated with one fused (``foreach``) kernel per step.

    The decay warms up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` previous updates (as diffusers'
    ``EMAModel``): a plain 0.9999 average would still be mostly the random initialisation after
    thousands of steps, so short runs would generate from untrained weights.

    Lightning's ``WeightAveraging`` callbacks are not used: they validate with the averaged weights and
    copy the average into the model when training ends, whereas validation and early stopping here use
    the raw weights, and they have no warm-up.

    Parameters
    ----------
    decay
        Final decay (0.9999 in the paper).
    """

    def __init__(self, decay: float = 0.9999) -> None:
        if not 0.0 <= decay < 1.0:
            msg = f"ema_decay must be in [0, 1), got {decay}."
            raise ValueError(msg)
        self.decay = float(decay)
        self.n_updates = 0
        self.shadow: list[torch.Tensor] | None = None

    def current_decay(self) -> float:
        """Decay the next update will use."""
        n = self.n_updates
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def start(self, params: Iterable[torch.Tensor]) -> None:
        """Initialise the average from ``params`` unless it already holds one (then move it to their device)."""
        params = list(params)
        if self.shadow is None:
            self.shadow = [p.detach().clone() for p in params]
        else:
            if len(self.shadow) != len(params):
                msg = "the EMA state does not match the parameters (different architecture)."
                raise ValueError(msg)
            self.shadow = [
                s.to(device=p.device, dtype=p.dtype) for s, p in zip(self.shadow, params, strict=True)
            ]

    @torch.no_grad()
    def update(self, params: Iterable[torch.Tensor]) -> None:
        """``shadow <- decay * shadow + (1 - decay) * params``."""
        params = [p.detach() for p in params]
        if self.shadow is None:
            self.start(params)
        torch._foreach_lerp_(self.shadow, params, 1.0 - self.current_decay())
        self.n_updates += 1

    @torch.no_grad()
    def copy_to(self, params: Iterable[torch.Tensor]) -> None:
        """Write the averaged values into ``params``."""
        if self.shadow is None:
            msg = "the EMA has not been started."
            raise RuntimeError(msg)
        torch._foreach_copy_(list(params), self.shadow)

    def state_dict(self) -> dict[str, Any]:
        """State for a checkpoint."""
        return {"decay": self.decay, "n_updates": self.n_updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.decay = float(state["decay"])
        self.n_updates = int(state["n_updates"])
        self.shadow = state["shadow"]
