"""Plots (matplotlib / seaborn). Every function returns its Axes or Figure and shows only when asked."""

from __future__ import annotations

from .._lazy import attach

__all__ = ["classification", "embedding_overlay", "fidelity", "training_history"]

__getattr__, __dir__ = attach(
    __name__,
    {
        "classification": "._evaluation",
        "embedding_overlay": "._evaluation",
        "fidelity": "._evaluation",
        "training_history": "._evaluation",
    },
)
