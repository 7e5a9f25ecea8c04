"""Compound features from SMILES: Morgan/ECFP bits, FCFP bits or standardised RDKit 2D descriptors.

One featuriser for the whole package: :func:`featurize_compounds` writes a treatment-indexed table into
``uns['morphomu'][key_added]``; :func:`featurize_smiles` is the pure function behind it (in
:mod:`morphomu._core`, where the generation models call it too).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd

from .. import _constants as C
from .._core import COMPOUND_METHODS, check_method, featurize, featurize_smiles
from .._errors import ContractError
from .._uns import store

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

__all__ = ["featurize_compounds", "featurize_smiles"]

# --- the MuData / AnnData tool ----------------------------------------------------------------------


def _treatment_tables(data: MuData | AnnData, treatment_key: str) -> dict[str | None, AnnData]:
    """The AnnData(s) to read treatments from: every modality that has ``treatment_key``."""
    from anndata import AnnData
    from mudata import MuData

    if isinstance(data, AnnData):
        tables: dict[str | None, AnnData] = {None: data}
    elif isinstance(data, MuData):
        tables = {mod: a for mod, a in data.mod.items() if treatment_key in a.obs.columns}
        if not tables:
            msg = (
                f"treatment_key={treatment_key!r} is not an obs column of any modality of the MuData "
                f"(modalities {sorted(data.mod)})."
            )
            raise ContractError(msg)
    else:
        msg = f"data must be a MuData or an AnnData, got {type(data).__name__}."
        raise ContractError(msg)
    from .._validation import check_obs_keys

    for mod, adata in tables.items():
        check_obs_keys(adata, {"treatment_key": treatment_key}, mod=mod)
    return tables


def _obs_smiles(tables: dict[str | None, AnnData], treatment_key: str, column: str) -> dict[str, str]:
    """Treatment -> SMILES from an obs column; one SMILES per treatment, missing values allowed."""
    from .._validation import where

    found: dict[str, str] = {}
    for mod, adata in tables.items():
        if column not in adata.obs.columns:
            loc = where(mod).removesuffix(".X")
            msg = (
                f"smiles={column!r} is not a column of {loc}.obs; a str names the obs column holding each "
                "cell's SMILES in every modality that has the treatment column (pass a dict for SMILES)."
            )
            raise ContractError(msg)
        pairs = adata.obs[[treatment_key, column]].dropna().astype(str).drop_duplicates()
        for treatment, smi in pairs.itertuples(index=False):
            if found.setdefault(treatment, smi) != smi:
                msg = (
                    f"treatment {treatment!r} has more than one SMILES in obs[{column!r}] "
                    f"({found[treatment]!r} and {smi!r}); expected one structure per treatment."
                )
                raise ContractError(msg)
    return found


def featurize_compounds(
    data: MuData | AnnData,
    *,
    smiles: Mapping[str, str] | str | None = None,
    treatment_key: str = C.TREATMENT_KEY,
    method: Literal["morgan", "fcfp", "rdkit2d"] = "morgan",
    n_bits: int = 2048,
    radius: int = 2,
    control: str | None = C.CONTROL,
    key_added: str | None = None,
    inplace: bool = True,
) -> pd.DataFrame | None:
    """Featurise every treatment of an experiment from its compound structure.

    Treatments are the distinct values of ``obs[treatment_key]``, gathered from every modality that
    has that column (a MuData) or from ``data.obs`` (an AnnData). Features come from
    :func:`featurize_smiles`, so a compound absent from :func:`morphomu.datasets.compounds` is
    featurised from its SMILES like any other.

    Parameters
    ----------
    data
        A MuData or an AnnData.
    smiles
        Where each treatment's SMILES comes from:

        - ``None`` (default): :func:`morphomu.datasets.compounds`, looked up by the exact treatment
          string (e.g. ``'Vorinostat / SAHA'``, BBBC021's ``'cyclohexamide'``).
        - a mapping treatment -> SMILES: used for the treatments it names (new compounds welcome);
          treatments it does not name fall back to the table; names not among the treatments are ignored.
        - a str: always the name of an obs column (never a SMILES). It must be a column of every
          modality that has ``treatment_key`` (of ``data.obs`` for an AnnData); each treatment must
          have one SMILES across all its cells and modalities; cells where it is missing are ignored,
          and a treatment with no SMILES in the column falls back to the table.

        Salts and solvents are stripped (largest fragment) and charges neutralised.
    treatment_key
        Obs column with the treatment of each cell.
    method
        ``'morgan'`` (ECFP bits), ``'fcfp'`` (feature-invariant Morgan bits) or ``'rdkit2d'`` (RDKit
        2D descriptors standardised across the non-control treatments featurised here); see
        :func:`featurize_smiles`.
    n_bits
        Fingerprint length (``'morgan'`` / ``'fcfp'``).
    radius
        Fingerprint radius (``'morgan'`` / ``'fcfp'``); 2 gives ECFP4 / FCFP4.
    control
        The vehicle-control treatment (default ``'DMSO'``), or ``None``. Its row is all zeros — no
        compound, as CPA / chemCPA encode control cells (zero dose) — since every treated well holds
        the same vehicle; it needs no SMILES and is left out of the ``'rdkit2d'`` statistics (so its
        zeros equal the mean compound there). It is listed under ``'control'`` in the stored
        parameters. Pass ``control=None`` to featurise DMSO's own structure like any compound.
    key_added
        Entry of ``uns['morphomu']`` to write; default: the method name (``'morgan'``,
        ``'fcfp'`` or ``'rdkit2d'``).
    inplace
        Write the result into ``data.uns`` and return ``None``; if ``False``, return the features and
        leave ``data`` untouched.

    Returns
    -------
    With ``inplace=False``, the features: one row per treatment (index named ``treatment``, sorted),
    as in :func:`featurize_smiles`. With ``inplace=True``, ``None``, and
    ``data.uns['morphomu'][key_added]`` holds a dict:

    - ``'features'``: that DataFrame;
    - ``'smiles'``: DataFrame (index ``treatment``) with column ``smiles``, the parent SMILES used
      (empty for the control);
    - ``'params'``: ``method``, ``n_bits``, ``radius``, ``treatment_key``, ``control``,
      ``rdkit_version``, the source of the SMILES, and for ``'rdkit2d'`` the descriptor ``mean`` and
      ``std`` used plus the dropped and imputed descriptors.

    Raises
    ------
    ContractError
        Before anything is written: a missing treatment column, an unknown method, a treatment with
        no SMILES anywhere or one RDKit cannot parse (each naming the treatment).

    Examples
    --------
    >>> import morphomu as mm
    >>> mdata = mm.datasets.simulate_scgenescope(n_img_cells=500, n_rna_cells=500)
    >>> mm.pp.featurize_compounds(mdata)  # ECFP4, 2048 bits, from mm.datasets.compounds()
    >>> mdata.uns["morphomu"]["morgan"]["features"].shape
    (29, 2048)
    >>> fp = mm.pp.featurize_compounds(
    ...     mdata, smiles={"DBeQ": "c1ccc(CNc2nc(NCc3ccccc3)c3ccccc3n2)cc1"}, method="fcfp", inplace=False
    ... )
    """
    import rdkit

    if not isinstance(treatment_key, str):
        msg = f"treatment_key must be an obs column name (str), got {treatment_key!r}."
        raise ContractError(msg)
    check_method(method, n_bits, radius)
    if key_added is None:
        key_added = COMPOUND_METHODS[method]
    if not isinstance(key_added, str) or not key_added:
        msg = f"key_added must be a non-empty str (an entry of uns['morphomu']), got {key_added!r}."
        raise ContractError(msg)
    if control is not None and not isinstance(control, str):
        msg = f"control must be a treatment name (str) or None, got {control!r}."
        raise ContractError(msg)
    tables = _treatment_tables(data, treatment_key)
    treatments = sorted({str(t) for a in tables.values() for t in a.obs[treatment_key].unique()})
    if not treatments:
        msg = f"treatment_key={treatment_key!r}: the obs column holds no treatment (the data has no cells)."
        raise ContractError(msg)

    if smiles is None:
        given: dict[str, str] = {}
        source = "mm.datasets.compounds()"
    elif isinstance(smiles, str):
        given = _obs_smiles(tables, treatment_key, smiles)
        source = f"obs[{smiles!r}], then mm.datasets.compounds()"
    elif isinstance(smiles, Mapping):
        given = {str(k): v for k, v in smiles.items()}
        source = "mapping, then mm.datasets.compounds()"
    else:
        msg = f"smiles must be None, a mapping treatment -> SMILES or an obs column name, got {type(smiles).__name__}."
        raise ContractError(msg)

    controls = [control] if control in treatments else []
    need = [t for t in treatments if t not in controls and t not in given]
    resolved = {t: given[t] for t in treatments if t in given and t not in controls}
    if need:
        from ..datasets._compounds import compounds

        table = compounds()["smiles"]
        missing = [t for t in need if t not in table.index]
        if missing:
            msg = (
                f"no SMILES for treatment(s) {missing}: they are not in mm.datasets.compounds() (looked up by "
                f"exact string){'' if smiles is None else ' nor in smiles'}; pass smiles={{treatment: SMILES}}."
            )
            raise ContractError(msg)
        resolved.update({t: table[t] for t in need})
    ordered = {t: resolved.get(t, "") for t in treatments}
    features, used, extra = featurize(
        ordered, method=method, n_bits=n_bits, radius=radius, reference=None, controls=controls
    )
    if not inplace:
        return features

    used_frame = pd.DataFrame({"smiles": [used.get(t, "") for t in treatments]}, index=pd.Index(treatments))
    used_frame.index.name = C.TREATMENT_KEY
    params: dict[str, Any] = {
        "method": method,
        "n_bits": int(n_bits) if method != "rdkit2d" else "None",
        "radius": int(radius) if method != "rdkit2d" else "None",
        "treatment_key": treatment_key,
        "control": controls[0] if controls else "None",
        "smiles_source": source,
        "rdkit_version": rdkit.__version__,
        **extra,
    }
    store(
        data,
        key_added,
        {"features": features, "smiles": used_frame, "params": params},
        tool="featurize_compounds",
    )
    return None
