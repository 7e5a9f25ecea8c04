"""Compound features from SMILES: Morgan/ECFP bits, FCFP bits or standardised RDKit 2D descriptors.

One featuriser for the whole package: :func:`featurize_compounds` writes a treatment-indexed table into
``uns['morphomu']['compounds']``, and :func:`featurize_smiles` is the pure function behind it, which the
generation models call to featurise compounds given only their SMILES (unlike CPA / chemCPA, whose drugs
are rows of a frozen table, any new structure can be featurised).
"""

from __future__ import annotations

import warnings
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from .. import _constants as C
from .._errors import ContractError, MorphomuWarning
from .._uns import h5_safe

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData
    from rdkit.Chem import Mol

__all__ = ["featurize_compounds", "featurize_smiles"]

#: Featurisation methods and the default ``key_added`` of each.
METHODS: dict[str, str] = {"morgan": "morgan", "fcfp": "fcfp", "rdkit2d": "rdkit2d"}
#: Entry of ``uns['morphomu']`` that holds every compound featurisation, keyed by ``key_added``.
UNS_COMPOUNDS = "compounds"
#: Descriptor columns whose spread across the compounds is below this are dropped as constant.
_MIN_STD = 1e-8


# --- structures -------------------------------------------------------------------------------------


def parent_mol(smiles: Any, *, name: str = "the compound") -> Mol:
    """Parse ``smiles`` and return its parent structure: the largest fragment, neutralised.

    Counter-ions and solvents are dropped by keeping the largest fragment (RDKit's
    ``LargestFragmentChooser``: most atoms, hydrogens included) and charges are neutralised where a
    neutral form exists (``Uncharger``: ``[NH+]`` -> ``N``, ``C(=O)[O-]`` -> ``C(=O)O``). Functional
    groups are not redrawn (RDKit's ``Normalize`` would turn ``CS(C)=O`` into ``C[S+](C)[O-]``), so
    write them as the table does. Write metal complexes with dative bonds
    (cisplatin: ``N->[Pt](<-N)(Cl)Cl``); ``N.N.Cl[Pt]Cl`` would be reduced to its largest fragment.

    Raises
    ------
    ContractError
        If ``smiles`` is not a non-empty string that RDKit can parse; the message names ``name``.
    """
    from rdkit import Chem
    from rdkit.Chem.MolStandardize import rdMolStandardize
    from rdkit.rdBase import BlockLogs

    if not isinstance(smiles, str) or not smiles.strip():
        msg = f"the SMILES of {name!r} must be a non-empty string, got {smiles!r}."
        raise ContractError(msg)
    block = BlockLogs()  # RDKit prints parse errors to stderr; ours names the compound instead
    try:
        mol = Chem.MolFromSmiles(smiles.strip())
        if mol is None or mol.GetNumAtoms() == 0:
            msg = f"the SMILES of {name!r} cannot be parsed by RDKit: {smiles!r}."
            raise ContractError(msg)
        mol = rdMolStandardize.LargestFragmentChooser().choose(mol)
        mol = rdMolStandardize.Uncharger().uncharge(mol)
        Chem.SanitizeMol(mol)
    except ContractError:
        raise
    except Exception as e:  # sanitisation / standardisation failure: still the user's SMILES
        msg = f"the SMILES of {name!r} is not a valid structure ({type(e).__name__}: {e}): {smiles!r}."
        raise ContractError(msg) from None
    finally:
        del block
    return mol


def parent_smiles(smiles: str, *, name: str = "the compound") -> str:
    """Canonical isomeric RDKit SMILES of the parent structure (see :func:`parent_mol`)."""
    from rdkit import Chem

    return Chem.MolToSmiles(parent_mol(smiles, name=name))


def inchikey(mol: Mol) -> str:
    """Standard InChIKey of ``mol``; dative (metal) bonds are disconnected first, as standard InChI does."""
    from rdkit import Chem
    from rdkit.rdBase import BlockLogs

    dative = [b.GetIdx() for b in mol.GetBonds() if b.GetBondType() == Chem.BondType.DATIVE]
    if dative:
        rw = Chem.RWMol(mol)
        for idx in sorted(dative, reverse=True):
            bond = rw.GetBondWithIdx(idx)
            rw.RemoveBond(bond.GetBeginAtomIdx(), bond.GetEndAtomIdx())
        mol = rw.GetMol()
        Chem.SanitizeMol(mol)
    block = BlockLogs()
    try:
        return Chem.MolToInchiKey(mol)
    finally:
        del block


# --- features ---------------------------------------------------------------------------------------


def _check_method(method: Any, n_bits: Any, radius: Any) -> None:
    if method not in METHODS:
        msg = f"method={method!r} is not a compound featurisation; choose one of {list(METHODS)}."
        raise ContractError(msg)
    if method in ("morgan", "fcfp"):
        if isinstance(n_bits, bool) or not isinstance(n_bits, int | np.integer) or n_bits < 1:
            msg = f"n_bits must be a positive integer, got {n_bits!r}."
            raise ContractError(msg)
        if isinstance(radius, bool) or not isinstance(radius, int | np.integer) or radius < 0:
            msg = f"radius must be a non-negative integer, got {radius!r}."
            raise ContractError(msg)


def _fingerprints(mols: list[Mol], *, method: str, n_bits: int, radius: int) -> np.ndarray:
    from rdkit.Chem import rdFingerprintGenerator

    kwargs: dict[str, Any] = {"radius": int(radius), "fpSize": int(n_bits)}
    if method == "fcfp":  # pharmacophoric atom invariants (donor, acceptor, aromatic, ...) = FCFP
        kwargs["atomInvariantsGenerator"] = rdFingerprintGenerator.GetMorganFeatureAtomInvGen()
    generator = rdFingerprintGenerator.GetMorganGenerator(**kwargs)
    out = np.zeros((len(mols), int(n_bits)), dtype=np.uint8)
    for i, mol in enumerate(mols):
        out[i] = generator.GetFingerprintAsNumPy(mol)
    return out


def _descriptors(mols: list[Mol]) -> pd.DataFrame:
    from rdkit.Chem import Descriptors

    rows = [Descriptors.CalcMolDescriptors(mol, missingVal=np.nan) for mol in mols]
    frame = pd.DataFrame(rows, dtype=np.float64)
    return frame.replace([np.inf, -np.inf], np.nan)


def _standardize_descriptors(
    raw: pd.DataFrame, reference: pd.DataFrame, names: list[str]
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Impute, drop constant columns and standardise ``raw`` with statistics of ``reference``."""
    finite = reference.notna()
    empty = finite.columns[~finite.any()].tolist()
    mean = reference.mean(skipna=True)
    std = reference.fillna(mean).std(ddof=0)
    constant = [c for c in reference.columns if c not in empty and not std[c] >= _MIN_STD]
    kept = [c for c in reference.columns if c not in empty and c not in constant]
    if not kept:
        msg = (
            f"method='rdkit2d' standardises each descriptor across the compounds, but all of them are "
            f"constant across the {len(reference)} reference compound(s); featurise at least two different "
            "compounds, or pass reference= with the compounds whose statistics to use."
        )
        raise ContractError(msg)
    values = raw[kept]
    missing = values.isna()
    imputed = {names[i]: int(n) for i, n in enumerate(missing.sum(axis=1).to_numpy()) if n}
    if imputed:
        warnings.warn(
            f"method='rdkit2d': RDKit could not compute some descriptors of {sorted(imputed)} (e.g. partial "
            "charges of metal complexes); they were set to the reference mean (0 after standardisation).",
            MorphomuWarning,
            stacklevel=3,
        )
    values = values.fillna(mean[kept])
    scaled = (values - mean[kept]) / std[kept]
    scaled.index = pd.Index(names)
    info = {
        "n_reference": len(reference),
        "mean": mean[kept].to_numpy(np.float64),
        "std": std[kept].to_numpy(np.float64),
        "dropped_constant": np.asarray(constant, dtype=str),
        "dropped_non_finite": np.asarray(empty, dtype=str),
        # two arrays, not a dict: treatment names such as 'Vorinostat / SAHA' cannot be HDF5 keys
        "imputed_compounds": np.asarray(list(imputed), dtype=str),
        "imputed_counts": np.asarray(list(imputed.values()), dtype=np.int64),
    }
    return scaled.astype(np.float32), info


def _featurize(
    smiles: Mapping[str, Any],
    *,
    method: str,
    n_bits: int,
    radius: int,
    reference: Mapping[str, str] | None,
    controls: Collection[str],
) -> tuple[pd.DataFrame, dict[str, str], dict[str, Any]]:
    """Features, the parent SMILES used and extra parameters (rdkit2d statistics)."""
    from rdkit import Chem

    _check_method(method, n_bits, radius)
    if not isinstance(smiles, Mapping):
        msg = f"smiles must be a mapping of compound name to SMILES, got {type(smiles).__name__}."
        raise ContractError(msg)
    names = [str(k) for k in smiles]
    if not names:
        msg = "smiles is empty: give at least one compound name -> SMILES."
        raise ContractError(msg)
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        msg = f"smiles names the compounds {dup[:5]} more than once (keys that are equal as strings, e.g. 1 and '1')."
        raise ContractError(msg)
    smiles = {str(k): v for k, v in smiles.items()}  # names are strings from here on
    controls = {str(c) for c in controls}
    compounds = [n for n in names if n not in controls]
    # parse everything first, so that a bad SMILES fails before any work
    mols = {n: parent_mol(smiles[n], name=n) for n in compounds}
    used = {n: Chem.MolToSmiles(m) for n, m in mols.items()}
    extra: dict[str, Any] = {}
    if method == "rdkit2d":
        if reference is None:
            ref_mols = list(mols.values())
        else:
            if not isinstance(reference, Mapping) or not reference:
                msg = "reference must be a non-empty mapping of compound name to SMILES (or None)."
                raise ContractError(msg)
            ref_mols = [parent_mol(s, name=str(n)) for n, s in reference.items()]
        if not ref_mols:
            msg = "method='rdkit2d' needs at least one non-control compound to standardise against."
            raise ContractError(msg)
        raw = _descriptors(list(mols.values())) if mols else _descriptors(ref_mols).iloc[:0]
        ref_raw = _descriptors(ref_mols)
        scaled, extra = _standardize_descriptors(raw, ref_raw, compounds)
        columns = list(scaled.columns)
        features = pd.DataFrame(0.0, index=pd.Index(names), columns=columns, dtype=np.float32)
        features.loc[compounds] = scaled.to_numpy()
    else:
        bits = _fingerprints([mols[n] for n in compounds], method=method, n_bits=n_bits, radius=radius)
        columns = [f"{method}_{i}" for i in range(int(n_bits))]
        features = pd.DataFrame(0, index=pd.Index(names), columns=columns, dtype=np.uint8)
        features.loc[compounds] = bits
    features.index.name = C.TREATMENT_KEY
    features.columns = features.columns.astype(str)
    return features, used, extra


def featurize_smiles(
    smiles: Mapping[str, str],
    *,
    method: Literal["morgan", "fcfp", "rdkit2d"] = "morgan",
    n_bits: int = 2048,
    radius: int = 2,
    reference: Mapping[str, str] | None = None,
    controls: Collection[str] = (),
) -> pd.DataFrame:
    """Featurise compounds from their SMILES alone.

    The pure function behind :func:`featurize_compounds`; models call it to featurise compounds they
    have never seen. Each SMILES is reduced to its parent structure first (largest fragment, neutralised), so ``"CCO.Cl"`` and ``"CCO"`` give the same features.

    Parameters
    ----------
    smiles
        Compound name to SMILES.
    method
        ``'morgan'``: Morgan / ECFP bits (``radius=2`` is ECFP4), from RDKit's
        ``rdFingerprintGenerator``. ``'fcfp'``: the same with pharmacophoric feature invariants (FCFP).
        ``'rdkit2d'``: every RDKit 2D descriptor (``rdkit.Chem.Descriptors``, 217 in RDKit 2025),
        standardised per descriptor to mean 0 and standard deviation 1 (population, ``ddof=0``) across
        the ``reference`` compounds. A descriptor RDKit cannot compute for any reference compound, or
        that is constant across them, is dropped; a value it cannot compute for a single compound (e.g.
        partial charges of a platinum complex) is set to the reference mean, with a warning.
    n_bits
        Fingerprint length (``'morgan'`` / ``'fcfp'``).
    radius
        Fingerprint radius (``'morgan'`` / ``'fcfp'``).
    reference
        ``'rdkit2d'`` only: compounds (name to SMILES) whose statistics standardise the descriptors,
        e.g. the training compounds when featurising a new one. Default: the compounds in ``smiles``
        other than the controls.
    controls
        Names in ``smiles`` that are vehicle controls: their row is all zeros (no compound; for
        ``'rdkit2d'`` the reference mean), they need no SMILES and are left out of the statistics.

    Returns
    -------
    One row per compound (index: the names, in the order given). Fingerprints are ``uint8`` 0/1 columns
    ``{method}_{i}``; descriptors are ``float32`` columns named after the RDKit descriptor.

    Raises
    ------
    ContractError
        An unknown ``method``, bad ``n_bits`` / ``radius``, or a SMILES RDKit cannot parse (naming the
        compound).

    Examples
    --------
    >>> import morphomu as mm
    >>> fp = mm.pp.featurize_smiles({"ethanol": "CCO", "ethanol HCl": "CCO.Cl"}, n_bits=1024)
    >>> bool((fp.loc["ethanol"] == fp.loc["ethanol HCl"]).all())
    True
    """
    features, _, _ = _featurize(
        smiles, method=method, n_bits=n_bits, radius=radius, reference=reference, controls=controls
    )
    return features


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
        Entry of ``uns['morphomu']['compounds']`` to write; default: the method name (``'morgan'``,
        ``'fcfp'`` or ``'rdkit2d'``).
    inplace
        Write the result into ``data.uns`` and return ``None``; if ``False``, return the features and
        leave ``data`` untouched.

    Returns
    -------
    With ``inplace=False``, the features: one row per treatment (index named ``treatment``, sorted),
    as in :func:`featurize_smiles`. With ``inplace=True``, ``None``, and
    ``data.uns['morphomu']['compounds'][key_added]`` holds a dict:

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
    >>> mdata.uns["morphomu"]["compounds"]["morgan"]["features"].shape
    (29, 2048)
    >>> fp = mm.pp.featurize_compounds(
    ...     mdata, smiles={"DBeQ": "c1ccc(CNc2nc(NCc3ccccc3)c3ccccc3n2)cc1"}, method="fcfp", inplace=False
    ... )
    """
    import rdkit

    if not isinstance(treatment_key, str):
        msg = f"treatment_key must be an obs column name (str), got {treatment_key!r}."
        raise ContractError(msg)
    _check_method(method, n_bits, radius)
    if key_added is None:
        key_added = METHODS[method]
    if not isinstance(key_added, str) or not key_added:
        msg = f"key_added must be a non-empty str (an entry of uns['morphomu']['compounds']), got {key_added!r}."
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
    features, used, extra = _featurize(
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
    entry = h5_safe({"features": features, "smiles": used_frame, "params": params})
    data.uns.setdefault(C.UNS_KEY, {}).setdefault(UNS_COMPOUNDS, {})[key_added] = entry
    return None
