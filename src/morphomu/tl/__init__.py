"""Tools: generation, evaluation and metrics. Results are written into the MuData, scanpy-style."""

from __future__ import annotations

from .._lazy import attach

__all__ = ["generate_rna"]

__getattr__, __dir__ = attach(__name__, {"generate_rna": "._generate_rna"})
