"""User-facing models (scvi-tools pattern): setup, train, generate, save and load."""

from __future__ import annotations

from .._lazy import attach

__all__ = [
    "ImageVAE",
    "PhenoSeq",
    "TreatmentClassifier",
    "Trident",
]

__getattr__, __dir__ = attach(
    __name__,
    {
        "ImageVAE": "._image_vae",
        "PhenoSeq": "._phenoseq",
        "TreatmentClassifier": "._classifier",
        "Trident": "._trident",
    },
)
