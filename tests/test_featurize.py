"""Compound featurisation: Morgan / FCFP bits equal RDKit's, descriptors are standardised, errors are named."""

from __future__ import annotations

import warnings

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
from rdkit import Chem
from rdkit.Chem import Descriptors, rdFingerprintGenerator

import morphomu as mm
from morphomu._constants import CONTROL
from morphomu.pp import featurize_smiles

NEW_SMILES = "CC(=O)Nc1ccc(O)cc1"  # paracetamol: not in the table


def _mdata() -> md.MuData:
    """Two modalities with different cells and partly different treatments, one unknown to the table."""
    img = ad.AnnData(
        np.zeros((8, 2), np.float32),
        obs=pd.DataFrame(
            {
                "treatment": [
                    "Caffeine",
                    "Caffeine",
                    "Colchicine",
                    "DMSO",
                    "taxol",
                    "taxol",
                    "DMSO",
                    "Colchicine",
                ]
            },
            index=[f"img{i}" for i in range(8)],
        ),
    )
    rna = ad.AnnData(
        np.zeros((4, 2), np.float32),
        obs=pd.DataFrame(
            {"treatment": ["Vorinostat / SAHA", "paracetamol", "DMSO", "Caffeine"]},
            index=[f"rna{i}" for i in range(4)],
        ),
    )
    img.var_names, rna.var_names = ["f0", "f1"], ["g0", "g1"]
    return md.MuData({"img": img, "rna": rna})


def _rdkit_bits(smiles: str, *, n_bits: int = 2048, radius: int = 2, features: bool = False) -> np.ndarray:
    kwargs = {"radius": radius, "fpSize": n_bits}
    if features:
        kwargs["atomInvariantsGenerator"] = rdFingerprintGenerator.GetMorganFeatureAtomInvGen()
    gen = rdFingerprintGenerator.GetMorganGenerator(**kwargs)
    return gen.GetFingerprintAsNumPy(Chem.MolFromSmiles(smiles)).astype(np.uint8)


def test_morgan_equals_rdkit_generator():
    table = mm.datasets.compounds()
    names = ["Thapsigargin", "Caffeine", "taxol", "cisplatin", "(R)-Roscovitine"]
    fp = featurize_smiles({n: table.loc[n, "smiles"] for n in names}, n_bits=1024, radius=2)
    assert fp.shape == (5, 1024)
    assert list(fp.index) == names
    assert fp.dtypes.unique().tolist() == [np.dtype(np.uint8)]
    for n in names:
        np.testing.assert_array_equal(fp.loc[n].to_numpy(), _rdkit_bits(table.loc[n, "smiles"], n_bits=1024))
    # radius 3 differs from radius 2
    fp3 = featurize_smiles({"taxol": table.loc["taxol", "smiles"]}, n_bits=1024, radius=3)
    assert fp3.loc["taxol"].sum() > fp.loc["taxol"].sum()


def test_fcfp_differs_from_ecfp_and_equals_rdkit():
    smi = {"taxol": mm.datasets.compounds().loc["taxol", "smiles"]}
    ecfp = featurize_smiles(smi, method="morgan")
    fcfp = featurize_smiles(smi, method="fcfp")
    assert not np.array_equal(ecfp.to_numpy(), fcfp.to_numpy())
    np.testing.assert_array_equal(fcfp.loc["taxol"].to_numpy(), _rdkit_bits(smi["taxol"], features=True))


def test_salts_are_stripped():
    fp = featurize_smiles({"a": "CCO", "b": "CCO.Cl", "c": "[Na+].CC(=O)[O-]", "d": "CC(=O)O"})
    np.testing.assert_array_equal(fp.loc["a"], fp.loc["b"])
    np.testing.assert_array_equal(fp.loc["c"], fp.loc["d"])  # largest fragment, then neutralised
    assert not np.array_equal(fp.loc["a"], fp.loc["d"])


def test_rdkit2d_standardised_columns():
    table = mm.datasets.compounds("bbbc021").drop(index=CONTROL)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        feats = featurize_smiles(table["smiles"].to_dict(), method="rdkit2d")
    # cisplatin has no partial charges: imputed with the mean and reported, not a NaN column
    assert any("cisplatin" in str(w.message) for w in caught)
    assert np.isfinite(feats.to_numpy()).all()
    np.testing.assert_allclose(feats.mean().to_numpy(), 0, atol=1e-5)
    np.testing.assert_allclose(feats.std(ddof=0).to_numpy(), 1, atol=1e-4)
    descriptors = {name for name, _ in Descriptors._descList}
    assert set(feats.columns) <= descriptors
    assert "MolWt" in feats.columns
    assert "NumRadicalElectrons" not in feats.columns  # constant (0) across the compounds: dropped
    # values: molecular weight standardised by hand
    mw = np.array([Descriptors.MolWt(Chem.MolFromSmiles(s)) for s in table["smiles"]])
    np.testing.assert_allclose(feats["MolWt"].to_numpy(), (mw - mw.mean()) / mw.std(), rtol=1e-4, atol=1e-4)


def test_rdkit2d_reference_for_a_new_compound():
    reference = mm.datasets.compounds("scgenescope").drop(index=CONTROL)["smiles"].to_dict()
    new = featurize_smiles({"paracetamol": NEW_SMILES}, method="rdkit2d", reference=reference)
    ref = featurize_smiles(reference, method="rdkit2d")
    assert list(new.columns) == list(ref.columns)
    mw = np.array([Descriptors.MolWt(Chem.MolFromSmiles(s)) for s in reference.values()])
    expected = (Descriptors.MolWt(Chem.MolFromSmiles(NEW_SMILES)) - mw.mean()) / mw.std()
    assert new.loc["paracetamol", "MolWt"] == pytest.approx(expected, rel=1e-4)
    with pytest.raises(mm.ContractError, match="at least two different"):
        featurize_smiles({"paracetamol": NEW_SMILES}, method="rdkit2d")


def test_errors_are_named():
    with pytest.raises(mm.ContractError, match="'broken'"):
        featurize_smiles({"ok": "CCO", "broken": "C1CC(("})
    with pytest.raises(mm.ContractError, match="method='maccs'"):
        featurize_smiles({"ok": "CCO"}, method="maccs")
    with pytest.raises(mm.ContractError, match="n_bits"):
        featurize_smiles({"ok": "CCO"}, n_bits=0)
    data = _mdata()
    with pytest.raises(mm.ContractError, match="paracetamol"):  # not in the table, no SMILES given
        mm.pp.featurize_compounds(data)
    with pytest.raises(mm.ContractError, match="paracetamol"):
        mm.pp.featurize_compounds(data, smiles={"paracetamol": "not a smiles"})
    with pytest.raises(mm.ContractError, match="method='maccs'"):
        mm.pp.featurize_compounds(data, smiles={"paracetamol": NEW_SMILES}, method="maccs")
    with pytest.raises(mm.ContractError, match="treatment_key='drug'"):
        mm.pp.featurize_compounds(data, treatment_key="drug")
    with pytest.raises(mm.ContractError, match="smiles='smi'"):  # a str is an obs column, never a SMILES
        mm.pp.featurize_compounds(data, smiles="smi")
    assert "morphomu" not in data.uns  # nothing written by a failing call


def test_featurize_compounds_mudata_and_control():
    data = _mdata()
    table = mm.datasets.compounds()
    mm.pp.featurize_compounds(data, smiles={"paracetamol": NEW_SMILES + ".Cl"}, n_bits=512)
    entry = data.uns["morphomu"]["morgan"]
    feats = entry["features"]
    treatments = ["Caffeine", "Colchicine", "DMSO", "Vorinostat / SAHA", "paracetamol", "taxol"]
    assert list(feats.index) == treatments  # from both modalities, sorted
    assert feats.index.name == "treatment"
    assert feats.shape == (6, 512)
    assert feats.loc[CONTROL].sum() == 0  # the vehicle control is the zero vector
    assert entry["params"]["control"] == CONTROL
    for t in ["Caffeine", "taxol", "Vorinostat / SAHA"]:
        np.testing.assert_array_equal(
            feats.loc[t].to_numpy(), _rdkit_bits(table.loc[t, "smiles"], n_bits=512)
        )
    np.testing.assert_array_equal(feats.loc["paracetamol"].to_numpy(), _rdkit_bits(NEW_SMILES, n_bits=512))
    assert entry["smiles"].loc["paracetamol", "smiles"] == Chem.MolToSmiles(Chem.MolFromSmiles(NEW_SMILES))
    assert entry["params"]["n_bits"] == 512
    # control=None featurises DMSO's own structure
    own = mm.pp.featurize_compounds(
        data, smiles={"paracetamol": NEW_SMILES}, n_bits=512, control=None, inplace=False
    )
    np.testing.assert_array_equal(own.loc[CONTROL].to_numpy(), _rdkit_bits("CS(C)=O", n_bits=512))


def test_smiles_from_an_obs_column_and_anndata():
    adata = ad.AnnData(
        np.zeros((4, 1), np.float32),
        obs=pd.DataFrame(
            {
                "treatment": ["new", "new", "DMSO", "Caffeine"],
                "smiles": [NEW_SMILES, NEW_SMILES, None, None],  # missing: falls back to the table
            },
            index=list("abcd"),
        ),
    )
    feats = mm.pp.featurize_compounds(adata, smiles="smiles", method="fcfp", n_bits=256, inplace=False)
    assert list(feats.index) == ["Caffeine", "DMSO", "new"]
    np.testing.assert_array_equal(
        feats.loc["new"].to_numpy(), _rdkit_bits(NEW_SMILES, n_bits=256, features=True)
    )
    adata.obs.loc["b", "smiles"] = "CCO"
    with pytest.raises(mm.ContractError, match="more than one SMILES"):
        mm.pp.featurize_compounds(adata, smiles="smiles")


def test_inplace_false_leaves_data_untouched():
    data = _mdata()
    data.uns["keep"] = "me"
    before_obs = {m: a.obs.copy() for m, a in data.mod.items()}
    feats = mm.pp.featurize_compounds(
        data, smiles={"paracetamol": NEW_SMILES}, method="rdkit2d", inplace=False
    )
    assert isinstance(feats, pd.DataFrame)
    assert feats.loc[CONTROL].abs().sum() == 0
    assert dict(data.uns) == {"keep": "me"}
    for m, a in data.mod.items():
        pd.testing.assert_frame_equal(a.obs, before_obs[m])
        assert "morphomu" not in a.uns


def test_uns_entry_survives_h5mu_round_trip(tmp_path):
    data = _mdata()
    smiles = {"paracetamol": NEW_SMILES}
    mm.pp.featurize_compounds(data, smiles=smiles, n_bits=256)
    mm.pp.featurize_compounds(data, smiles=smiles, method="rdkit2d", key_added="desc")
    path = tmp_path / "compounds.h5mu"
    data.write(path)
    back = md.read_h5mu(path)
    for key in ("morgan", "desc"):
        saved, loaded = data.uns["morphomu"][key], back.uns["morphomu"][key]
        pd.testing.assert_frame_equal(loaded["features"], saved["features"], check_names=False)
        pd.testing.assert_frame_equal(loaded["smiles"], saved["smiles"], check_names=False)
        assert loaded["params"]["method"] == saved["params"]["method"]
    desc = back.uns["morphomu"]["desc"]["params"]
    assert len(desc["mean"]) == back.uns["morphomu"]["desc"]["features"].shape[1]
