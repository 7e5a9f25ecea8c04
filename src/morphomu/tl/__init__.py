"""Tools: generation, evaluation and metrics. Results are written into the MuData, scanpy-style."""

from __future__ import annotations

from .._lazy import attach

__all__ = ["classify", "fidelity", "generate_rna"]

__getattr__, __dir__ = attach(
    __name__,
    {
        "classify": "._classify",
        "fidelity": "._fidelity",
        "generate_rna": "._generate_rna",
    },
)
