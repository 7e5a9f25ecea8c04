"""User-facing models (scvi-tools pattern): setup, train, generate, save and load."""

from __future__ import annotations

from .._lazy import attach

__all__ = ["PhenoSeq", "TreatmentClassifier"]

__getattr__, __dir__ = attach(__name__, {"PhenoSeq": "._phenoseq", "TreatmentClassifier": "._classifier"})
