"""Plots (matplotlib / seaborn). Every function returns its Axes or Figure and shows only when asked."""

from __future__ import annotations

from .._lazy import attach

__all__ = [
    "classification",
    "embedding_overlay",
    "fidelity",
    "images",
    "morphology_embedding",
    "readouts",
    "training_history",
]

__getattr__, __dir__ = attach(
    __name__,
    {
        "classification": "._evaluation",
        "embedding_overlay": "._evaluation",
        "fidelity": "._evaluation",
        "images": "._morphology",
        "morphology_embedding": "._morphology",
        "readouts": "._morphology",
        "training_history": "._evaluation",
    },
)
