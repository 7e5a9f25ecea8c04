"""MorphologyEmbedder: RNA + compound -> imaging embeddings (setup, train, generate, save, load)."""

from __future__ import annotations

import json

import mudata as md
import numpy as np
import pandas as pd
import pytest
import torch

import morphomu as mm
from morphomu import ContractError, MorphomuError

TRAIN = {"max_epochs": 3, "enable_progress_bar": False}
GEN = {"n_cells_per_sample": 3, "n_steps": 4}
SCVI_KEYS = {"_scvi_uuid", "_scvi_manager_uuid"}  # what scvi-tools' registration writes into mdata.uns


@pytest.fixture(scope="module")
def data():
    m = mm.datasets.simulate_scgenescope(
        seed=1, n_img_cells=500, n_rna_cells=500, image_dim=10, rna_dim=8, effect_scale=3.0
    )
    mm.pp.assign_split(m)
    mm.pp.assign_compound_split(m, n_ood=8)
    return m


@pytest.fixture(scope="module")
def trained(data):
    """The model mm.tl.generate_morphology trains, and the MuData it wrote into."""
    torch.manual_seed(0)
    m = data.copy()
    model = mm.tl.generate_morphology(
        m, output="embedding", preset="tiny", n_cells_per_sample=3, n_steps=4, train_kwargs=TRAIN
    )
    return model, m


def _deep_snapshot(mdata) -> dict:
    """Every modality's obs, var, obsm arrays and uns keys, and the MuData's modalities and uns keys."""
    return {
        "mods": sorted(mdata.mod),
        "uns": sorted(mdata.uns),
        **{
            k: (
                a.obs.copy(),
                a.var_names.copy(),
                {r: np.array(v, copy=True) for r, v in a.obsm.items()},
                sorted(a.uns),
            )
            for k, a in mdata.mod.items()
        },
    }


def _assert_same_snapshot(after: dict, before: dict, *, added_uns: set[str]) -> None:
    assert after["mods"] == before["mods"]
    assert set(after["uns"]) - set(before["uns"]) == added_uns and set(before["uns"]) <= set(after["uns"])
    for k in before["mods"]:
        obs, var, obsm, uns = before[k]
        pd.testing.assert_frame_equal(after[k][0], obs)
        pd.testing.assert_index_equal(after[k][1], var)
        assert sorted(after[k][2]) == sorted(obsm)
        for r, v in obsm.items():
            np.testing.assert_array_equal(after[k][2][r], v)
        assert after[k][3] == uns


def test_tl_equals_model_and_leaves_data(trained, data):
    """The tool is a thin dispatcher: the same numbers as setting up, training and generating directly."""
    model, m = trained
    assert isinstance(model, mm.models.MorphologyEmbedder) and isinstance(model, mm.models.PhenoSeq)
    assert model.is_trained_ and not hasattr(model, "morphology_setup_")
    via_tl = m["img_synthetic"]

    direct_data = data.copy()
    before = _deep_snapshot(direct_data)
    torch.manual_seed(0)
    mm.models.MorphologyEmbedder.setup_mudata(direct_data)
    direct_model = mm.models.MorphologyEmbedder(direct_data, preset="tiny")
    direct_model.train(**TRAIN)
    direct = direct_model.generate(**GEN)
    # the user's MuData: only scvi-tools' registration keys are added, nothing else is touched
    _assert_same_snapshot(_deep_snapshot(direct_data), before, added_uns=SCVI_KEYS)

    np.testing.assert_array_equal(direct.obsm["X_vit"], via_tl.obsm["X_vit"])
    np.testing.assert_array_equal(direct.X, via_tl.X)
    assert direct.obsm["X_vit"].dtype == np.float32
    assert list(via_tl.obs_names) == [f"img_synthetic-{n}" for n in direct.obs_names]
    pd.testing.assert_frame_equal(
        via_tl.obs.reset_index(drop=True), direct.obs.reset_index(drop=True), check_categorical=True
    )
    assert list(direct.var_names) == [f"X_vit_{i}" for i in range(10)]
    assert list(direct.obs.columns) == [
        "sample", "treatment", "replicate", "round", "split", "synthetic", "smiles",
    ]  # fmt: skip
    first = data["rna"].obs.drop_duplicates("sample").set_index("sample")
    s = direct.obs["sample"].astype(str)
    np.testing.assert_array_equal(direct.obs["smiles"].astype(str), first.loc[s, "smiles"].astype(str))
    assert direct.n_obs == 3 * data["rna"].obs["sample"].nunique()
    entry = m.uns["morphomu"]["img_synthetic"]
    assert entry["trained_here"] and entry["model"] == "PhenoSeq (RNA + compound -> imaging)"
    assert entry["n_samples"] == data["rna"].obs["sample"].nunique() and entry["params"]["n_steps"] == 4
    assert direct_model.setup_args["smiles_key"] == "smiles"
    assert direct_model.setup_args["compound_split_key"] == "compound_split"


def test_generate_on_new_data(trained, data):
    model, _ = trained
    own = model.generate(compounds=["Colchicine", "DMSO"], seed=2, **GEN)
    assert set(own.obs["treatment"].astype(str)) == {"Colchicine", "DMSO"}
    # a new MuData with the same layout: scvi-tools transfers the registration to it
    new = data.copy()
    assert model.get_anndata_manager(new) is None
    model._validate_anndata(new)
    assert model.get_anndata_manager(new, required=True) is not model.adata_manager
    assert model.get_anndata_manager(model.adata, required=True) is model.adata_manager
    again = model.generate(new, compounds=["Colchicine", "DMSO"], seed=2, **GEN)
    np.testing.assert_array_equal(again.obsm["X_vit"], own.obsm["X_vit"])
    # generation reads only the RNA modality
    rna_only = md.MuData({"rna": data["rna"].copy()})
    alone = model.generate(rna_only, compounds=["Colchicine", "DMSO"], seed=2, **GEN)
    np.testing.assert_array_equal(alone.obsm["X_vit"], own.obsm["X_vit"])
    assert "_scvi_uuid" not in rna_only.uns  # generate writes nothing
    # samples: as given; each embedding depends on (seed, sample, index) only
    sample = str(own.obs["sample"].iloc[0])
    one = model.generate(samples=[sample], seed=2, **GEN)
    np.testing.assert_allclose(  # the same draws; a smaller batch may round the last bit differently
        one.obsm["X_vit"], own.obsm["X_vit"][own.obs["sample"].astype(str).to_numpy() == sample], atol=1e-5
    )


def test_save_load_round_trip(trained, data, tmp_path):
    model, _ = trained
    expected = model.generate(compounds=["Colchicine"], **GEN)
    model.save(tmp_path / "m")
    files = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert "model.safetensors" in files and "attributes.json" in files and "model.pt" not in files
    assert json.loads((tmp_path / "m" / "morphomu.json").read_text())["model"] == "MorphologyEmbedder"
    assert "morphology_setup_" not in (tmp_path / "m" / "attributes.json").read_text()

    loaded = mm.models.MorphologyEmbedder.load(tmp_path / "m", adata=data.copy(), accelerator="cpu")
    assert loaded.setup_args == model.setup_args and loaded.preset == "tiny" and loaded.is_trained_
    out = loaded.generate(compounds=["Colchicine"], **GEN)
    np.testing.assert_array_equal(out.obsm["X_vit"], expected.obsm["X_vit"])
    pd.testing.assert_frame_equal(out.obs, expected.obs)
    # through the tool too, with the loaded model's keys
    m = data.copy()
    assert (
        mm.tl.generate_morphology(
            m, model=loaded, output="embedding", compounds=["Colchicine"], n_cells_per_sample=3, n_steps=4
        )
        is None
    )
    np.testing.assert_array_equal(m["img_synthetic"].obsm["X_vit"], expected.obsm["X_vit"])
    assert not m.uns["morphomu"]["img_synthetic"]["trained_here"]

    # with the data saved beside it: loads without data
    model.save(tmp_path / "with_data", save_anndata=True)
    alone = mm.models.MorphologyEmbedder.load(tmp_path / "with_data", accelerator="cpu")
    np.testing.assert_array_equal(alone.generate(compounds=["Colchicine"], **GEN).X, expected.X)
    with pytest.raises(MorphomuError, match="not a PhenoSeq"):
        mm.models.PhenoSeq.load(tmp_path / "m", adata=data.copy())
    # data whose RNA features differ from the trained ones is refused, naming the key
    wrong = data.copy()
    wrong["rna"].obsm["X_scgpt"] = wrong["rna"].obsm["X_scgpt"][:, :5].copy()
    with pytest.raises(ContractError, match="rna_rep"):
        mm.models.MorphologyEmbedder.load(tmp_path / "m", adata=wrong, accelerator="cpu")
    with pytest.raises(ContractError, match="rna_rep"):
        model.generate(wrong, **GEN)


def test_generate_errors(trained):
    model, _ = trained
    with pytest.raises(ContractError, match=r"compounds \['aspirin'\] have no RNA cells"):
        model.generate(compounds=["aspirin"], **GEN)
    with pytest.raises(ContractError, match=r"samples \['nope'\] have no RNA cells"):
        model.generate(samples=["nope"], **GEN)
    with pytest.raises(MorphomuError, match="not both"):
        model.generate(samples=["a"], compounds=["b"])
    with pytest.raises(MorphomuError, match="n_cells_per_sample"):
        model.generate(n_cells_per_sample=0)
    with pytest.raises(MorphomuError, match="n_steps"):
        model.generate(n_steps=0)


def test_setup_and_train_errors(data):
    m = data.copy()
    before = _deep_snapshot(m)
    with pytest.raises(ContractError, match="smiles_key='inchi'"):
        mm.models.MorphologyEmbedder.setup_mudata(m, smiles_key="inchi")
    with pytest.raises(ContractError, match="image_rep='X_nope'"):
        mm.models.MorphologyEmbedder.setup_mudata(m, image_rep="X_nope")
    with pytest.raises(ContractError, match="rna_mod='RNA'"):
        mm.models.MorphologyEmbedder.setup_mudata(m, rna_mod="RNA")
    no_smiles = m.copy()
    no_smiles["rna"].obs["smiles"] = no_smiles["rna"].obs["smiles"].astype(object)
    no_smiles["rna"].obs.loc[no_smiles["rna"].obs["treatment"] == "Colchicine", "smiles"] = None
    with pytest.raises(ContractError, match=r"compounds \['Colchicine'\] have no SMILES"):
        mm.models.MorphologyEmbedder.setup_mudata(no_smiles)
    with pytest.raises(MorphomuError, match="setup_mudata"):
        mm.models.MorphologyEmbedder.setup_anndata(m["img"])
    _assert_same_snapshot(_deep_snapshot(m), before, added_uns=set())  # checked before writing anything

    mm.models.MorphologyEmbedder.setup_mudata(m)
    model = mm.models.MorphologyEmbedder(m, preset="tiny")
    with pytest.raises(MorphomuError, match="not trained"):
        model.generate()
    no_val = m.copy()
    no_val["img"].obs["split"] = "train"
    mm.models.MorphologyEmbedder.setup_mudata(no_val)
    untrained = mm.models.MorphologyEmbedder(no_val, preset="tiny")
    with pytest.raises(ContractError, match=r"\['val'\]"):
        untrained.train(**TRAIN)
    assert not untrained.is_trained_ and untrained.history_ is None
    no_split = m.copy()
    del no_split["img"].obs["split"]
    mm.models.MorphologyEmbedder.setup_mudata(no_split)
    with pytest.raises(ContractError, match="split_key='split'"):
        mm.models.MorphologyEmbedder(no_split, preset="tiny").train(**TRAIN)
    all_ood = m.copy()
    all_ood["img"].obs["compound_split"] = "ood"
    mm.models.MorphologyEmbedder.setup_mudata(all_ood)
    with pytest.raises(ContractError, match="in-distribution"):
        mm.models.MorphologyEmbedder(all_ood, preset="tiny").train(**TRAIN)


def test_tl_refuses_legacy_phenoseq(data):
    """A PhenoSeq tagged by the earlier generate_morphology (morphology_setup_) must be retrained."""
    m = data.copy()
    mm.models.PhenoSeq.setup_mudata(m)
    legacy = mm.models.PhenoSeq(m, preset="tiny")
    legacy.morphology_setup_ = {"image_mod": "img"}
    with pytest.raises(MorphomuError, match="Retrain"):
        mm.tl.generate_morphology(m, model=legacy, output="embedding")
    with pytest.raises(MorphomuError, match="needs a MorphologyEmbedder"):
        mm.tl.generate_morphology(m, model=mm.models.PhenoSeq(m, preset="tiny"), output="embedding")
