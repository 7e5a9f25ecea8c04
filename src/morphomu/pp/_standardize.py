from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import sparse

from .. import _constants as C
from .._errors import ContractError, MorphomuWarning
from .._uns import h5_safe
from .._validation import check_obs_keys, check_rep, get_adata, where

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

__all__ = ["Standardizer", "destandardize", "standardize"]

#: Features whose standard deviation is below this are left centred but unscaled.
_MIN_STD = 1e-8
_CHUNK_ROWS = 16_384


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
        n_rows = x.shape[0]
        rows = np.arange(n_rows) if rows is None else np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        if rows.size == 0:
            msg = "cannot fit standardisation statistics on zero cells."
            raise ContractError(msg)
        total = np.zeros(x.shape[1])
        total_sq = np.zeros(x.shape[1])
        for start in range(0, rows.size, _CHUNK_ROWS):
            block = x[np.sort(rows[start : start + _CHUNK_ROWS])]
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


def _fit_rows(
    adata: AnnData, *, mod: str | None, split_key: str, fit_on: str | Sequence[str] | None
) -> np.ndarray:
    if fit_on is None:
        return np.arange(adata.n_obs)
    check_obs_keys(adata, {"split_key": split_key}, mod=mod)
    labels = [fit_on] if isinstance(fit_on, str) else list(fit_on)
    rows = np.flatnonzero(adata.obs[split_key].astype(str).isin(labels).to_numpy())
    if rows.size == 0:
        found = sorted(adata.obs[split_key].astype(str).unique())
        msg = (
            f"fit_on={fit_on!r}: no cells of {where(mod).removesuffix('.X')}.obs[{split_key!r}] have that label; "
            f"found {found}. Run mm.pp.assign_split first, or pass fit_on=None to fit on every cell."
        )
        raise ContractError(msg)
    return rows


def standardize(
    data: MuData | AnnData,
    *,
    mod: str | None,
    rep: str | None,
    split_key: str = C.SPLIT_KEY,
    fit_on: str | Sequence[str] | None = C.TRAIN,
    key_added: str | None = None,
    copy: bool = False,
) -> MuData | AnnData | None:
    """Standardise a representation to zero mean and unit variance with statistics of one split.

    The source is never overwritten: the result goes to a new ``.obsm`` key. The statistics are stored
    so results can be mapped back to raw units with :func:`morphomu.pp.destandardize`.

    Parameters
    ----------
    data
        A MuData (then ``mod`` names the modality) or an AnnData (``mod=None``).
    mod
        Modality to standardise.
    rep
        ``.obsm`` key to standardise, or ``None`` for ``.X``.
    split_key
        obs column with the split labels.
    fit_on
        Split label(s) whose cells give the mean and standard deviation; ``None`` fits on every cell.
    key_added
        ``.obsm`` key written; defaults to ``f"{rep}_std"`` (``"X_std"`` for ``.X``).
    copy
        Return a standardised copy instead of writing into ``data``.

    Returns
    -------
    ``None`` or the copy. Writes ``.obsm[key_added]`` (float32) and
    ``uns['morphomu']['standardize'][key_added]`` with ``mean``, ``std`` and the parameters.

    Examples
    --------
    >>> import morphomu as mm
    >>> mdata = mm.datasets.simulate_scgenescope(n_img_cells=2000, n_rna_cells=2000)
    >>> mm.pp.assign_split(mdata)
    >>> mm.pp.standardize(mdata, mod="img", rep="X_vit")
    >>> mdata["img"].obsm["X_vit_std"].shape[1]
    5120
    """
    adata = get_adata(data, mod)
    check_rep(adata, rep, mod=mod)
    key_added = key_added or f"{rep or 'X'}{C.STANDARDIZED_SUFFIX}"
    if key_added == rep:
        msg = f"key_added={key_added!r} would overwrite the source rep; choose another name."
        raise ContractError(msg)
    rows = _fit_rows(adata, mod=mod, split_key=split_key, fit_on=fit_on)
    matrix = adata.X if rep is None else adata.obsm[rep]
    scaler = Standardizer.fit(matrix, rows)
    n_constant = int((scaler.std == 1.0).sum())
    if n_constant:
        warnings.warn(
            f"{where(mod, rep)}: {n_constant} features are constant on the fitting cells; they are centred, not scaled.",
            MorphomuWarning,
            stacklevel=2,
        )
    dense = matrix.toarray() if sparse.issparse(matrix) else np.asarray(matrix[:])
    values = scaler.transform(dense)
    if copy:
        data = data.copy()
        adata = get_adata(data, mod)
    adata.obsm[key_added] = values
    entry = {
        **scaler.to_dict(),
        "params": {
            "mod": mod,
            "rep": rep,
            "split_key": split_key,
            "fit_on": fit_on if fit_on is None or isinstance(fit_on, str) else list(fit_on),
        },
        "n_fit": int(rows.size),
    }
    data.uns.setdefault(C.UNS_KEY, {}).setdefault("standardize", {})[key_added] = h5_safe(entry)
    return data if copy else None


def destandardize(data: MuData | AnnData, values: np.ndarray, *, key: str) -> np.ndarray:
    """Map values in the standard units of ``key`` back to raw units.

    Parameters
    ----------
    data
        The object :func:`~morphomu.pp.standardize` wrote into.
    values
        Array (cells x features) in standard units, e.g. a model's output.
    key
        The ``key_added`` of the standardisation.

    Returns
    -------
    The values in raw units (float32).
    """
    try:
        entry = data.uns[C.UNS_KEY]["standardize"][key]
    except (KeyError, TypeError, AttributeError):  # absent, or uns / its entries are not dicts
        msg = f"key={key!r} has no stored statistics in uns['morphomu']['standardize']; run mm.pp.standardize first."
        raise ContractError(msg) from None
    try:
        scaler = Standardizer.from_dict(entry)
    except (KeyError, TypeError, ValueError):
        scaler = None
    if scaler is None or scaler.mean.ndim != 1 or scaler.mean.shape != scaler.std.shape:
        msg = (
            f"uns['morphomu']['standardize'][{key!r}] (key) is not a standardisation entry (1-d 'mean' and "
            "'std' arrays of one length); run mm.pp.standardize again."
        )
        raise ContractError(msg)
    values = np.asarray(values)
    if not (np.issubdtype(values.dtype, np.number) or values.dtype == np.bool_):
        msg = f"values must be a numeric array, got dtype {values.dtype}."
        raise ContractError(msg)
    if values.ndim != 2 or values.shape[1] != scaler.mean.shape[0]:
        msg = f"values must have shape (n, {scaler.mean.shape[0]}) for key={key!r}, got {values.shape}."
        raise ContractError(msg)
    return scaler.inverse_transform(values)
