"""Checks of data against the MuData contract, shared by every public function.

Every check runs before any work starts and raises :class:`~morphomu.ContractError` naming the
argument, the modality, the key and what was expected. Nothing here modifies the data.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import sparse

from . import _constants as C
from ._errors import ContractError

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

#: Rows scanned at a time when checking a matrix that lives on disk.
_CHUNK_ROWS = 16_384


def where(mod: str | None, rep: str | None = None) -> str:
    """Human-readable location of a representation, e.g. ``mdata.mod['img'].obsm['X_vit']``."""
    base = "adata" if mod is None else f"mdata.mod[{mod!r}]"
    return f"{base}.X" if rep is None else f"{base}.obsm[{rep!r}]"


def check_mudata(mdata: Any, *, arg: str = "mdata") -> MuData:
    """Raise unless ``mdata`` is a :class:`~mudata.MuData`."""
    from mudata import MuData

    if not isinstance(mdata, MuData):
        msg = f"{arg} must be a MuData, got {type(mdata).__name__}."
        if type(mdata).__name__ == "AnnData":
            msg += " Wrap it with mudata.MuData({'img': adata_img, 'rna': adata_rna})."
        raise ContractError(msg)
    return mdata


def get_mod(mdata: MuData, mod: str, *, arg: str = "mod") -> AnnData:
    """Return ``mdata.mod[mod]`` or raise naming the argument and the modalities present."""
    check_mudata(mdata)
    if not isinstance(mod, str):
        msg = f"{arg} must be a modality name (str), got {mod!r}."
        raise ContractError(msg)
    if mod not in mdata.mod:
        msg = f"{arg}={mod!r} is not a modality of the MuData; it has {sorted(mdata.mod)}."
        raise ContractError(msg)
    return mdata.mod[mod]


def get_adata(data: MuData | AnnData, mod: str | None, *, arg: str = "mod") -> AnnData:
    """Return the AnnData to work on: ``data.mod[mod]`` for a MuData, ``data`` itself for an AnnData."""
    from anndata import AnnData

    if isinstance(data, AnnData):
        return data
    if mod is None:
        msg = (
            f"{arg} must name a modality when the data is a MuData; it has {sorted(check_mudata(data).mod)}."
        )
        raise ContractError(msg)
    return get_mod(data, mod, arg=arg)


def check_obs_keys(adata: AnnData, keys: Mapping[str, str | None], *, mod: str | None) -> None:
    """Raise unless every ``argument -> column`` in ``keys`` is an obs column with no missing value."""
    for arg, key in keys.items():
        if key is None:
            continue
        if key not in adata.obs.columns:
            cols = list(adata.obs.columns)
            msg = (
                f"{arg}={key!r} is not a column of {where(mod).removesuffix('.X')}.obs; "
                f"its columns are {cols[:20]}{' ...' if len(cols) > 20 else ''}."
            )
            raise ContractError(msg)
        n_missing = int(adata.obs[key].isna().sum())
        if n_missing:
            msg = f"{where(mod).removesuffix('.X')}.obs[{key!r}] ({arg}) has {n_missing} missing values."
            raise ContractError(msg)


def rep_shape(adata: AnnData, rep: str | None, *, mod: str | None, arg: str = "rep") -> tuple[int, int]:
    """Return the shape of a representation without loading it, raising if it is absent."""
    if rep is None:
        if adata.X is None:
            msg = f"{arg}=None means {where(mod)}, but .X is empty."
            raise ContractError(msg)
        return tuple(adata.X.shape)  # type: ignore[return-value]
    if not isinstance(rep, str):
        msg = f"{arg} must be an .obsm key (str) or None for .X, got {rep!r}."
        raise ContractError(msg)
    if rep not in adata.obsm:
        msg = (
            f"{arg}={rep!r} is not in {where(mod).removesuffix('.X')}.obsm; "
            f"its keys are {sorted(adata.obsm.keys())} (use {arg}=None for .X)."
        )
        raise ContractError(msg)
    shape = adata.obsm[rep].shape
    if len(shape) != 2:
        msg = f"{where(mod, rep)} must be 2-d (cells x features), found shape {tuple(shape)}."
        raise ContractError(msg)
    return tuple(shape)  # type: ignore[return-value]


def _row_chunks(matrix: Any, n_rows: int) -> Iterable[Any]:
    if isinstance(matrix, np.ndarray | pd.DataFrame) or sparse.issparse(matrix):
        yield matrix
        return
    for start in range(0, n_rows, _CHUNK_ROWS):  # backed / on-disk: bounded memory
        yield matrix[start : start + _CHUNK_ROWS]


def _n_nonfinite(block: Any) -> int:
    if isinstance(block, pd.DataFrame):
        block = block.to_numpy()
    if sparse.issparse(block):
        block = block.data
    block = np.asarray(block)
    if not np.issubdtype(block.dtype, np.number):
        msg = f"expected numeric values, found dtype {block.dtype}"
        raise TypeError(msg)
    if np.issubdtype(block.dtype, np.integer):
        return 0
    return int(block.size - np.count_nonzero(np.isfinite(block)))


def check_rep(
    adata: AnnData,
    rep: str | None,
    *,
    mod: str | None,
    arg: str = "rep",
    n_features: int | None = None,
    finite: bool = True,
) -> tuple[int, int]:
    """Check a representation: present, 2-d, of ``n_features`` columns, numeric and finite.

    On-disk (backed) matrices are scanned in row chunks, never loaded whole.
    """
    shape = rep_shape(adata, rep, mod=mod, arg=arg)
    if n_features is not None and shape[1] != n_features:
        msg = f"{where(mod, rep)} ({arg}) must have {n_features} features, found {shape[1]}."
        raise ContractError(msg)
    if finite:
        matrix = adata.X if rep is None else adata.obsm[rep]
        try:
            n_bad = sum(_n_nonfinite(block) for block in _row_chunks(matrix, shape[0]))
        except TypeError as e:
            msg = f"{where(mod, rep)} ({arg}): {e}."
            raise ContractError(msg) from None
        if n_bad:
            msg = f"{where(mod, rep)} ({arg}) has {n_bad} non-finite values (NaN or inf); expected finite features."
            raise ContractError(msg)
    return shape


def get_rep(
    adata: AnnData,
    rep: str | None,
    *,
    mod: str | None,
    arg: str = "rep",
    n_features: int | None = None,
    dtype: Any = np.float32,
) -> np.ndarray:
    """Return a checked representation as a dense array (loads it; use for in-memory data)."""
    check_rep(adata, rep, mod=mod, arg=arg, n_features=n_features)
    matrix = adata.X if rep is None else adata.obsm[rep]
    if isinstance(matrix, pd.DataFrame):
        matrix = matrix.to_numpy()
    if sparse.issparse(matrix):
        matrix = matrix.toarray()
    elif not isinstance(matrix, np.ndarray):
        matrix = matrix[:]  # backed dataset
        matrix = matrix.toarray() if sparse.issparse(matrix) else matrix
    return np.asarray(matrix, dtype=dtype)


def check_unique_obs_names(mdata: MuData) -> None:
    """Raise unless obs_names are unique within and across modalities."""
    seen: dict[str, str] = {}
    for mod, adata in mdata.mod.items():
        names = adata.obs_names
        if not names.is_unique:
            dup = names[names.duplicated()].unique()[:5].tolist()
            msg = f"mdata.mod[{mod!r}].obs_names are not unique (e.g. {dup}); call .obs_names_make_unique()."
            raise ContractError(msg)
        for name in names:
            other = seen.setdefault(name, mod)
            if other != mod:
                msg = (
                    f"obs_name {name!r} is in both mdata.mod[{other!r}] and mdata.mod[{mod!r}]; obs_names must be "
                    "unique across modalities (prefix them per modality) so MuData never merges unrelated cells."
                )
                raise ContractError(msg)


def check_uns_writable(uns: Mapping[str, Any], *, where_: str = "mdata.uns") -> None:
    """Raise unless ``uns`` can be written to ``.h5mu`` / ``.h5ad``, by writing it to an in-memory file."""
    import h5py

    try:
        from anndata.io import write_elem
    except ImportError:  # anndata < 0.11
        from anndata.experimental import write_elem

    with h5py.File(io.BytesIO(), "w") as f:
        for key, value in uns.items():
            try:
                write_elem(f, str(key), value)
            except Exception as e:
                msg = (
                    f"{where_}[{key!r}] cannot be written to .h5mu ({type(e).__name__}: {e}); "
                    "store strings, numbers, arrays, DataFrames or dicts of those."
                )
                raise ContractError(msg) from None


def check_categories(
    adata: AnnData, key: str, allowed: Sequence[Any] | None = None, *, mod: str | None, arg: str
) -> pd.Series:
    """Return ``obs[key]`` as strings, raising if a value is not in ``allowed``."""
    check_obs_keys(adata, {arg: key}, mod=mod)
    values = adata.obs[key].astype(str)
    if allowed is not None:
        bad = sorted(set(values.unique()) - {str(a) for a in allowed})
        if bad:
            msg = f"{where(mod).removesuffix('.X')}.obs[{key!r}] ({arg}) has values {bad[:10]}; expected only {list(allowed)}."
            raise ContractError(msg)
    return values


def validate(
    mdata: MuData,
    *,
    mods: Mapping[str, str | None] | None = None,
    obs_keys: Sequence[str] = (C.SAMPLE_KEY, C.TREATMENT_KEY),
    n_features: Mapping[str, int] | None = None,
    finite: bool = True,
    uns: bool = True,
) -> None:
    """Check a MuData against the morphomu contract.

    Parameters
    ----------
    mdata
        The experiment.
    mods
        Modality name to the representation that must be present (an ``.obsm`` key, or ``None`` for
        ``.X``). Defaults to ``{'img': 'X_vit', 'rna': 'X_scgpt'}`` restricted to the modalities
        present; an empty MuData is an error.
    obs_keys
        Columns every listed modality must have, without missing values.
    n_features
        Modality name to the expected number of features of its representation.
    finite
        Check that features are finite (on-disk matrices are scanned in chunks).
    uns
        Check that ``mdata.uns`` can be written to ``.h5mu``.

    Raises
    ------
    ContractError
        Naming the modality, the key and what was expected.

    Examples
    --------
    >>> import morphomu as mm
    >>> mdata = mm.datasets.simulate_scgenescope(n_img_cells=2000, n_rna_cells=2000)
    >>> mm.pp.validate(mdata)
    """
    check_mudata(mdata)
    if mods is None:
        mods = {m: r for m, r in {C.IMAGE_MOD: C.IMAGE_REP, C.RNA_MOD: C.RNA_REP}.items() if m in mdata.mod}
        if not mods:
            msg = f"the MuData has none of the modalities {[C.IMAGE_MOD, C.RNA_MOD]}; it has {sorted(mdata.mod)}."
            raise ContractError(msg)
    n_features = dict(n_features or {})
    for mod, rep in mods.items():
        adata = get_mod(mdata, mod, arg="mods")
        if adata.n_obs == 0:
            msg = f"mdata.mod[{mod!r}] has no cells."
            raise ContractError(msg)
        check_obs_keys(adata, {f"obs_keys[{k!r}]": k for k in obs_keys}, mod=mod)
        check_rep(adata, rep, mod=mod, arg=f"mods[{mod!r}]", n_features=n_features.get(mod), finite=finite)
    check_unique_obs_names(mdata)
    if uns:
        check_uns_writable(mdata.uns)
        for mod, adata in mdata.mod.items():
            check_uns_writable(adata.uns, where_=f"mdata.mod[{mod!r}].uns")
