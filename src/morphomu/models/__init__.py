"""User-facing models (scvi-tools pattern): setup, train, generate, save and load."""

from __future__ import annotations

from .._lazy import attach

__all__ = [
    "ImageVAE",
    "MorphologyEmbedder",
    "PhenoSeq",
    "RidgeBaseline",
    "TreatmentClassifier",
    "Trident",
]

__getattr__, __dir__ = attach(
    __name__,
    {
        "ImageVAE": "._image_vae",
        "MorphologyEmbedder": "._morphology_embedder",
        "PhenoSeq": "._phenoseq",
        "RidgeBaseline": "._ridge",
        "TreatmentClassifier": "._classifier",
        "Trident": "._trident",
    },
)
