"""mm.tl.generate_morphology: images (Trident) and imaging embeddings (role-swapped PhenoSeq), written in."""

from __future__ import annotations

import mudata as md
import numpy as np
import pytest
import torch

import morphomu as mm
from morphomu import ContractError, MorphomuError


def _centroids(x: np.ndarray, labels: np.ndarray) -> tuple[list[str], np.ndarray]:
    names = sorted(set(labels))
    return names, np.stack([x[labels == n].mean(0) for n in names])


def _nearest_centroid_accuracy(x, labels, ref_x, ref_labels) -> float:
    """Share of generated treatments whose centroid's nearest real centroid is their own treatment."""
    names, gen = _centroids(x, np.asarray(labels, dtype=str))
    ref_names, ref = _centroids(ref_x, np.asarray(ref_labels, dtype=str))
    nearest = ((gen[:, None] - ref[None]) ** 2).sum(-1).argmin(1)
    return float(np.mean([ref_names[j] == n for j, n in zip(nearest, names, strict=True)]))


@pytest.fixture(scope="module")
def emb_data():
    m = mm.datasets.simulate_scgenescope(
        seed=1, n_img_cells=1500, n_rna_cells=1500, image_dim=20, rna_dim=10, effect_scale=3.0
    )
    mm.pp.assign_split(m)
    mm.pp.assign_compound_split(m, n_ood=8)
    return m


@pytest.fixture(scope="module")
def emb_model(emb_data):
    torch.manual_seed(0)
    m = emb_data.copy()
    model = mm.tl.generate_morphology(
        m,
        output="embedding",
        preset="tiny",
        n_cells_per_sample=20,
        n_steps=10,
        train_kwargs={"max_epochs": 30, "enable_progress_bar": False},
    )
    return model, m


@pytest.mark.slow
def test_embedding_output_and_cycle(emb_model, emb_data):
    model, m = emb_model
    assert isinstance(model, mm.models.PhenoSeq) and model.is_trained_
    gen, img, rna = m["img_synthetic"], m["img"], m["rna"]
    n_samples = rna.obs["sample"].nunique()
    assert gen.n_obs == 20 * n_samples
    assert gen.obsm["X_vit"].shape == (gen.n_obs, img.obsm["X_vit"].shape[1])
    assert gen.obsm["X_vit"].dtype == np.float32 and np.isfinite(gen.obsm["X_vit"]).all()
    assert gen.obs["synthetic"].all() and gen.obs_names.str.startswith("img_synthetic-").all()
    assert gen.obs_names.is_unique
    # obs: the sample's metadata and the compound's SMILES
    first = rna.obs.drop_duplicates("sample").set_index("sample")
    s = gen.obs["sample"].astype(str)
    np.testing.assert_array_equal(gen.obs["treatment"].astype(str), first.loc[s, "treatment"].astype(str))
    np.testing.assert_array_equal(gen.obs["smiles"].astype(str), first.loc[s, "smiles"].astype(str))
    entry = m.uns["morphomu"]["img_synthetic"]
    assert (
        entry["params"]["output"] == "embedding"
        and entry["trained_here"]
        and entry["n_generated"] == gen.n_obs
    )
    assert entry["params"]["rna_rep"] == "X_scgpt"
    # the input modalities were not touched
    np.testing.assert_array_equal(m["img"].obsm["X_vit"], emb_data["img"].obsm["X_vit"])
    assert set(m["img"].obs.columns) == set(emb_data["img"].obs.columns)

    ood = set(m.uns["morphomu"]["compound_split"]["ood"])
    n_treat = rna.obs["treatment"].nunique()
    # direct: generated in-distribution embeddings sit nearest their own treatment's real imaging centroid
    in_dist = ~gen.obs["treatment"].astype(str).isin(ood).to_numpy()
    acc_direct = _nearest_centroid_accuracy(
        gen.obsm["X_vit"][in_dist], gen.obs["treatment"][in_dist], img.obsm["X_vit"], img.obs["treatment"]
    )
    assert acc_direct > 3 / n_treat, acc_direct
    # cycle: a PhenoSeq (image -> RNA) trained on the real data, applied to the generated embeddings,
    # retrieves the right treatment (nearest real RNA centroid) far more often than chance
    torch.manual_seed(0)
    real = md.MuData({"img": img.copy(), "rna": rna.copy()})
    mm.models.PhenoSeq.setup_mudata(real)
    forward = mm.models.PhenoSeq(real, preset="tiny")
    forward.train(max_epochs=15, enable_progress_bar=False)
    cycle = forward.generate(
        md.MuData({"img": gen.copy(), "rna": rna.copy()}), n_cells_per_sample=10, n_steps=10
    )
    acc_cycle = _nearest_centroid_accuracy(
        cycle.obsm["X_scgpt"], cycle.obs["treatment"], rna.obsm["X_scgpt"], rna.obs["treatment"]
    )
    assert acc_cycle > 2.5 / n_treat, (acc_cycle, 1 / n_treat)


@pytest.mark.slow
def test_embedding_model_reused(emb_model, emb_data):
    model, _ = emb_model
    m = emb_data.copy()
    out = mm.tl.generate_morphology(
        m,
        model=model,
        output="embedding",
        compounds=["Colchicine", "DMSO"],
        n_images_per_treatment=3,
        n_steps=5,
        key_added="vit_synthetic",
        seed=4,
    )
    assert out is None
    gen = m["vit_synthetic"]
    assert set(gen.obs["treatment"].astype(str)) == {"Colchicine", "DMSO"}
    assert (
        gen.n_obs
        == 3 * m["rna"].obs.loc[m["rna"].obs["treatment"].isin(["Colchicine", "DMSO"]), "sample"].nunique()
    )
    assert not m.uns["morphomu"]["vit_synthetic"]["trained_here"]
    # keyed by seed: the same call gives the same embeddings
    again = emb_data.copy()
    mm.tl.generate_morphology(
        again,
        model=model,
        output="embedding",
        compounds=["Colchicine", "DMSO"],
        n_images_per_treatment=3,
        n_steps=5,
        key_added="vit_synthetic",
        seed=4,
    )
    np.testing.assert_allclose(again["vit_synthetic"].obsm["X_vit"], gen.obsm["X_vit"], atol=1e-5)
    with pytest.raises(ContractError, match="no RNA cells"):
        mm.tl.generate_morphology(m, model=model, output="embedding", compounds=["aspirin"])


def test_validation_before_training(emb_data):
    m = emb_data.copy()
    before = set(m.mod)
    with pytest.raises(MorphomuError, match="output="):
        mm.tl.generate_morphology(m, output="pixels")
    with pytest.raises(MorphomuError, match="n_cells_per_sample"):
        mm.tl.generate_morphology(m, output="embedding", n_cells_per_sample=0)
    with pytest.raises(MorphomuError, match="replace an input modality"):
        mm.tl.generate_morphology(m, output="embedding", key_added="img")
    with pytest.raises(ContractError, match="image_rep='X_nope'"):
        mm.tl.generate_morphology(m, output="embedding", image_rep="X_nope")
    with pytest.raises(ContractError, match="smiles_key='inchi'"):
        mm.tl.generate_morphology(m, output="embedding", smiles_key="inchi")
    no_val = m.copy()
    no_val["img"].obs["split"] = "train"
    with pytest.raises(ContractError, match="'val'"):
        mm.tl.generate_morphology(no_val, output="embedding", preset="tiny")
    with pytest.raises(MorphomuError, match="Trident"):
        mm.tl.generate_morphology(m, model=object(), output="image")
    with pytest.raises(MorphomuError, match="PhenoSeq returned"):
        mm.tl.generate_morphology(m, model=object(), output="embedding")
    # images: Trident's own checks run before anything is trained
    with pytest.raises(ContractError, match="images"):
        mm.tl.generate_morphology(m, output="image", preset="tiny")
    assert set(m.mod) == before and "generate_morphology" not in m.uns.get("morphomu", {})


@pytest.fixture(scope="module")
def image_data():
    m = mm.datasets.simulate_scgenescope(
        seed=0, n_img_cells=400, n_rna_cells=600, with_images=True, image_size=16, rna_dim=10, image_dim=10
    )
    mm.pp.assign_split(m)
    mm.pp.assign_compound_split(m, n_ood=10)
    return m


@pytest.mark.slow
def test_image_output_trident(image_data):
    torch.manual_seed(0)
    m = image_data.copy()
    model = mm.tl.generate_morphology(
        m,
        preset="tiny",
        n_images_per_treatment=2,
        compounds=["Colchicine", "DMSO"],
        rna_rep="X_scgpt",
        n_steps=3,
        train_kwargs={"max_epochs": 1, "vae_epochs": 1, "enable_progress_bar": False},
    )
    assert isinstance(model, mm.models.Trident) and model.is_trained_
    gen = m["img_synthetic"]
    tiles = m["img"].obsm["images"]
    assert gen.n_obs == 4 and gen.obsm["images"].shape == (4, *tiles.shape[1:])
    assert gen.obsm["images"].dtype == tiles.dtype
    assert gen.obs["synthetic"].all() and gen.obs_names.str.startswith("img_synthetic-").all()
    assert gen.obs["treatment"].astype(str).value_counts().to_dict() == {"Colchicine": 2, "DMSO": 2}
    assert "smiles" in gen.obs
    entry = m.uns["morphomu"]["img_synthetic"]
    assert entry["params"]["output"] == "image" and entry["trained_here"] and entry["model"] == "Trident"
    assert list(entry["params"]["compounds"]) == ["Colchicine", "DMSO"]
    # a trained model is reused, keyed by seed
    again = image_data.copy()
    assert (
        mm.tl.generate_morphology(
            again, model=model, n_images_per_treatment=2, compounds=["Colchicine", "DMSO"], n_steps=3
        )
        is None
    )
    np.testing.assert_array_equal(again["img_synthetic"].obsm["images"], gen.obsm["images"])
