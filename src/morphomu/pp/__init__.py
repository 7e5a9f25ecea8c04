"""Preprocessing: splits, standardisation, validation, embeddings and compound features."""

from __future__ import annotations

from .._lazy import attach

__all__ = [
    "assign_compound_split",
    "assign_split",
    "crop_cells",
    "destandardize",
    "embed_images",
    "embed_rna",
    "featurize_compounds",
    "featurize_smiles",
    "standardize",
    "validate",
]

__getattr__, __dir__ = attach(
    __name__,
    {
        "assign_compound_split": "._compound_split",
        "assign_split": "._split",
        "crop_cells": "._crop",
        "destandardize": "._standardize",
        "embed_images": "._embed_images",
        "embed_rna": "._embed_rna",
        "featurize_compounds": "._featurize",
        "featurize_smiles": "._featurize",
        "standardize": "._standardize",
        "validate": "._validate",
    },
)
