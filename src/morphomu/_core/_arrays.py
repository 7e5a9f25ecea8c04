"""Readers of a representation's rows: dense, sparse, backed (on-disk) or DataFrame matrices alike."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import sparse

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["CHUNK_ROWS", "expression_rows", "group_means", "read_rows", "rep_matrix"]

#: Rows of a feature matrix read, reduced or checked at once: bounds the temporaries of a backed
#: (on-disk) matrix to ~ 16k rows x features (670 MB in float64 at 5120 features).
CHUNK_ROWS = 16_384


def rep_matrix(adata: AnnData, rep: str | None) -> Any:
    """The matrix of representation ``rep``: ``adata.obsm[rep]``, or ``adata.X`` when ``rep`` is None."""
    return adata.X if rep is None else adata.obsm[rep]


def _by_position(matrix: Any) -> Any:
    """What to index rows of ``matrix`` with: a DataFrame's ``.iloc`` (``df[rows]`` would select columns)."""
    return matrix.iloc if isinstance(matrix, pd.DataFrame) else matrix


def _dense(block: Any) -> np.ndarray:
    if isinstance(block, pd.DataFrame):
        return block.to_numpy()
    return block.toarray() if sparse.issparse(block) else np.asarray(block)


def read_rows(matrix: Any, rows: np.ndarray) -> np.ndarray:
    """Dense float32 rows of a dense, sparse, on-disk or DataFrame matrix (read in sorted chunks)."""
    rows = np.asarray(rows)
    out = np.empty((rows.size, matrix.shape[1]), dtype=np.float32)
    order = np.argsort(rows, kind="stable")  # sorted reads: h5py needs them, and they are faster on disk
    source = _by_position(matrix)
    for start in range(0, rows.size, CHUNK_ROWS):
        pos = order[start : start + CHUNK_ROWS]
        out[pos] = _dense(source[rows[pos]])
    return out


def group_means(matrix: Any, codes: np.ndarray, n_groups: int) -> np.ndarray:
    """Per-group means of a matrix's rows (``codes == -1`` rows are ignored), in float64 chunks."""
    sums = np.zeros((n_groups, matrix.shape[1]))
    counts = np.bincount(codes[codes >= 0], minlength=n_groups).astype(np.float64)
    rows = np.flatnonzero(codes >= 0)
    source = _by_position(matrix)
    for start in range(0, rows.size, CHUNK_ROWS):
        idx = rows[start : start + CHUNK_ROWS]
        np.add.at(sums, codes[idx], _dense(source[idx]).astype(np.float64))
    return sums / np.maximum(counts, 1.0)[:, None]


def expression_rows(matrix: Any, rows: np.ndarray, *, counts: bool, genes: np.ndarray | None) -> np.ndarray:
    """Dense float32 expression of ``rows``: log-normalised (``counts``) and restricted to ``genes`` (indices)."""
    block = matrix[np.sort(rows)] if len(rows) else matrix[:0]
    order = np.argsort(np.argsort(rows))
    if sparse.issparse(block):
        block = block.tocsr().astype(np.float64)
        if counts:
            total = np.asarray(block.sum(1)).ravel()
            block = sparse.diags(1e4 / np.maximum(total, 1.0)) @ block
            block.data = np.log1p(block.data)
        if genes is not None:
            block = block[:, genes]
        out = block.toarray()
    else:
        out = np.asarray(block, dtype=np.float64)
        if counts:
            out = np.log1p(out * (1e4 / np.maximum(out.sum(1, keepdims=True), 1.0)))
        if genes is not None:
            out = out[:, genes]
    return out[order].astype(np.float32)
