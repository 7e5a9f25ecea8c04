"""Compound structures and features from SMILES (RDKit): parent structures, fingerprints, 2D descriptors.

The pure functions behind :func:`morphomu.pp.featurize_compounds`; the generation models call them to
featurise compounds given only their SMILES (unlike CPA / chemCPA, whose drugs are rows of a frozen
table, any new structure can be featurised). RDKit is imported inside the functions that need it.
"""

from __future__ import annotations

import warnings
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from .. import _constants as C
from .._errors import ContractError, MorphomuWarning

if TYPE_CHECKING:
    from rdkit.Chem import Mol

__all__ = [
    "COMPOUND_METHODS",
    "check_method",
    "featurize",
    "featurize_smiles",
    "fingerprints",
    "inchikey",
    "parent_mol",
    "parent_smiles",
]

#: Featurisation methods and the default ``key_added`` of each (in :func:`morphomu.pp.featurize_compounds`).
COMPOUND_METHODS: dict[str, str] = {"morgan": "morgan", "fcfp": "fcfp", "rdkit2d": "rdkit2d"}
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


def check_method(method: Any, n_bits: Any, radius: Any) -> None:
    """Raise unless ``method`` is one of :data:`COMPOUND_METHODS` and, for fingerprints, ``n_bits`` / ``radius`` fit."""
    if method not in COMPOUND_METHODS:
        msg = f"method={method!r} is not a compound featurisation; choose one of {list(COMPOUND_METHODS)}."
        raise ContractError(msg)
    if method in ("morgan", "fcfp"):
        if isinstance(n_bits, bool) or not isinstance(n_bits, int | np.integer) or n_bits < 1:
            msg = f"n_bits must be a positive integer, got {n_bits!r}."
            raise ContractError(msg)
        if isinstance(radius, bool) or not isinstance(radius, int | np.integer) or radius < 0:
            msg = f"radius must be a non-negative integer, got {radius!r}."
            raise ContractError(msg)


def fingerprints(mols: list[Mol], *, method: str, n_bits: int, radius: int) -> np.ndarray:
    """``uint8`` 0/1 Morgan (``'morgan'``) or feature-invariant Morgan (``'fcfp'``) bits, one row per molecule."""
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


def featurize(
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

    check_method(method, n_bits, radius)
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
        bits = fingerprints([mols[n] for n in compounds], method=method, n_bits=n_bits, radius=radius)
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

    The pure function behind :func:`morphomu.pp.featurize_compounds`; models call it to featurise compounds they
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
    features, _, _ = featurize(
        smiles, method=method, n_bits=n_bits, radius=radius, reference=reference, controls=controls
    )
    return features
