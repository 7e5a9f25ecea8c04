"""Data sets: the scGeneScope reader, the ground-truth simulator and the compound table."""

from __future__ import annotations

from .._lazy import attach

__all__ = ["compounds", "read_scgenescope", "simulate_scgenescope"]

__getattr__, __dir__ = attach(
    __name__,
    {
        "compounds": "._compounds",
        "read_scgenescope": "._read",
        "simulate_scgenescope": "._simulate",
    },
)
