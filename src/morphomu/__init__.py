"""morphomu: cross-modal generation between Cell Painting morphology and single-cell transcriptomics."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from . import datasets, pl, pp, tl
from ._errors import ContractError, MorphomuError, MorphomuWarning
from ._lazy import attach

try:
    __version__ = version("morphomu")
except PackageNotFoundError:  # pragma: no cover - running from a source tree that is not installed
    __version__ = "0+unknown"

# models pull in torch, Lightning and scvi-tools: load them on first use
__getattr__, __dir__ = attach(__name__, {"models": ".models"})

__all__ = [
    "ContractError",
    "MorphomuError",
    "MorphomuWarning",
    "__version__",
    "datasets",
    "models",
    "pl",
    "pp",
    "tl",
]
