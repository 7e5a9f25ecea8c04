"""Per-feature standardisation statistics, shared by the models (inputs and targets) and ``mm.pp.standardize``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import sparse

from .._errors import ContractError
from ._arrays import CHUNK_ROWS

__all__ = ["Standardizer"]

#: Features whose standard deviation is below this are left centred but unscaled.
_MIN_STD = 1e-8


@dataclass
class Standardizer:
    """Per-feature mean and standard deviation, fit once and applied both ways.

    Models keep one of these for their inputs and targets (fit on the train split) so that their
    outputs come back in raw units.
    """

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: Any, rows: np.ndarray | None = None) -> Standardizer:
        """Fit on the rows ``rows`` (default all) of a dense, sparse or on-disk matrix, in float64 chunks."""
        if hasattr(x, "iloc"):  # an .obsm DataFrame: rows by position (``df[rows]`` would select columns)
            x = x.to_numpy()
        n_rows = x.shape[0]
        rows = np.arange(n_rows) if rows is None else np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        if rows.size == 0:
            msg = "cannot fit standardisation statistics on zero cells."
            raise ContractError(msg)
        # float64 sums per chunk of CHUNK_ROWS rows: the chunk size is part of the statistics' last bits
        total = np.zeros(x.shape[1])
        total_sq = np.zeros(x.shape[1])
        for start in range(0, rows.size, CHUNK_ROWS):
            block = x[np.sort(rows[start : start + CHUNK_ROWS])]
            block = block.toarray() if sparse.issparse(block) else np.asarray(block)
            block = block.astype(np.float64, copy=False)
            total += block.sum(0)
            total_sq += np.square(block).sum(0)
        mean = total / rows.size
        var = np.maximum(total_sq / rows.size - np.square(mean), 0.0)
        std = np.sqrt(var)
        std[std < _MIN_STD] = 1.0
        return cls(mean=mean.astype(np.float32), std=std.astype(np.float32))

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Raw units to standard units."""
        return (np.asarray(x, dtype=np.float32) - self.mean) / self.std

    def inverse_transform(self, x: np.ndarray) -> np.ndarray:
        """Standard units back to raw units."""
        return np.asarray(x, dtype=np.float32) * self.std + self.mean

    def to_dict(self) -> dict[str, np.ndarray]:
        """Arrays for ``uns`` or a checkpoint."""
        return {"mean": self.mean, "std": self.std}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Standardizer:
        """Inverse of :meth:`to_dict`."""
        return cls(mean=np.asarray(d["mean"], dtype=np.float32), std=np.asarray(d["std"], dtype=np.float32))
