"""``mm.pp.standardize`` / ``mm.pp.destandardize``: AnnData wrappers over :class:`morphomu._core.Standardizer`."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse

from .. import _constants as C
from .._core import Standardizer, rep_matrix
from .._errors import ContractError, MorphomuWarning
from .._uns import store
from .._validation import check_obs_keys, check_rep, get_adata, where
from ._split import SPLIT_REMEDY

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

__all__ = ["destandardize", "standardize"]


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
            f"found {found}. {SPLIT_REMEDY} Or pass fit_on=None to fit on every cell."
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
    ``uns['morphomu'][key_added]`` with ``mean``, ``std`` and the parameters.

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
    matrix = rep_matrix(adata, rep)
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
    store(data, key_added, entry, tool="standardize")
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
    uns = data.uns.get(C.UNS_KEY, {})
    try:
        entry = uns[key] if key in uns else uns["standardize"][key]  # the layout before one-entry-per-key
    except (KeyError, TypeError, AttributeError):  # absent, or uns / its entries are not dicts
        msg = (
            f"key={key!r} has no stored statistics in uns['morphomu'][{key!r}]; run mm.pp.standardize first."
        )
        raise ContractError(msg) from None
    try:
        scaler = Standardizer.from_dict(entry)
    except (KeyError, TypeError, ValueError):
        scaler = None
    if scaler is None or scaler.mean.ndim != 1 or scaler.mean.shape != scaler.std.shape:
        msg = (
            f"uns['morphomu'][{key!r}] (key) is not a standardisation entry (1-d 'mean' and "
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
