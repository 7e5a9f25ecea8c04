"""Tools: generation, evaluation and metrics. Results are written into the MuData, scanpy-style."""

from __future__ import annotations

from .._lazy import attach

__all__ = [
    "classify",
    "expression_accuracy",
    "fidelity",
    "frechet_distance",
    "gene_set_enrichment",
    "generate_morphology",
    "generate_rna",
    "image_metrics",
    "morphology_readouts",
]

__getattr__, __dir__ = attach(
    __name__,
    {
        "classify": "._classify",
        "expression_accuracy": "._expression",
        "fidelity": "._fidelity",
        "frechet_distance": "._image_metrics",
        "gene_set_enrichment": "._expression",
        "generate_morphology": "._generate_morphology",
        "generate_rna": "._generate_rna",
        "image_metrics": "._image_metrics",
        "morphology_readouts": "._readouts",
    },
)
