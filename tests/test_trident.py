"""Trident (RNA + compound -> Cell Painting tiles): structure, input checks, training, generation, save/load.

One small simulated experiment (16 px five-channel field tiles) and one tiny image VAE are shared by the
module; a tiny Trident trained on it backs the generation tests. The learning test trains a second model
on the same tiles with the compounds shuffled across images and checks that the readout of generated
tiles then stops following the simulator's true density effect.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import morphomu as mm
from morphomu import ContractError, MorphomuError
from morphomu.datasets._simulate import CYTOTOXIC
from morphomu.models._trident import Trident
from morphomu.module._trident import TRIDENT_PRESETS, TridentDiT, TridentModule
from morphomu.nn._dit import PatchEmbed, sincos_pos_embed_2d, unpatchify
from morphomu.train._checkpoint import CHECKPOINT_NAME

SIM = {"seed": 0, "n_img_cells": 1000, "n_rna_cells": 600, "with_images": True, "image_size": 16}
QUIET = {"enable_progress_bar": False, "enable_model_summary": False}
# 120 epochs: the generated readout reproduces ~40% of the real per-treatment effect (40 epochs: ~15%)
TRAIN = {"max_epochs": 120, "batch_size": 32, "lr": 1e-3, **QUIET}
ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"
# one worker runs this file, so the module fixtures (image VAE, trained model) are built once
pytestmark = pytest.mark.xdist_group("trident")


def simulate(**kw):
    """Simulated experiment; replicate 2 (round 2) is the validation split, every other replicate trains."""
    mdata = mm.datasets.simulate_scgenescope(**{**SIM, **kw})
    for adata in mdata.mod.values():
        adata.obs["split"] = pd.Categorical(np.where(adata.obs["replicate"].astype(int) == 2, "val", "train"))
    return mdata


def dna_readout(tiles: np.ndarray) -> np.ndarray:
    """Mean DNA-channel intensity per tile: proportional to the number of nuclei in the field."""
    return tiles[:, 0].astype(np.float64).mean(axis=(1, 2))


def per_treatment(obs: pd.DataFrame, values: np.ndarray, index: pd.Index) -> np.ndarray:
    return obs.assign(r=values).groupby("treatment", observed=True)["r"].mean().reindex(index).to_numpy()


def shuffle_drugs(adata, *, seed: int) -> None:
    """Reassign compounds (and their SMILES) to cells so that every compound gets an even mix of all treatments.

    A plain permutation leaves each compound's cells a random sample whose mean readout differs by chance
    (and the model learns those differences); dealing each compound's copies evenly over the cells sorted
    by their true treatment removes the association with the true treatment itself.
    """
    rng = np.random.default_rng(seed)
    true = adata.obs["treatment"].astype(str).to_numpy()
    smiles = dict(zip(true, adata.obs["smiles"].astype(str).to_numpy(), strict=True))
    order = np.lexsort((rng.random(len(true)), true))  # cells grouped by their true treatment
    labels = np.sort(true)
    first = np.searchsorted(labels, labels)
    count = np.searchsorted(labels, labels, side="right") - first
    spread = (np.arange(len(labels)) - first + 0.5) / count  # each compound's copies evenly over (0, 1)
    dealt = np.empty_like(true)
    dealt[order] = labels[np.lexsort((labels, spread))]
    adata.obs["treatment"] = dealt
    adata.obs["smiles"] = [smiles[t] for t in dealt]


@pytest.fixture(scope="module")
def data():
    """The shared experiment (do not modify: copy first)."""
    return simulate()


@pytest.fixture(scope="module")
def image_vae(data):
    """A tiny MSE image VAE (mean-preserving, so intensity readouts survive the blur) on the train/val tiles."""
    img = data["img"].copy()
    mm.models.ImageVAE.setup_anndata(img)
    torch.manual_seed(0)
    vae = mm.models.ImageVAE(img, preset="tiny", reconstruction="mse")
    vae.train(max_epochs=3, **QUIET)
    return vae


def train_model(mdata, image_vae, **kw):
    Trident.setup_mudata(mdata)
    torch.manual_seed(0)
    model = Trident(mdata, preset="tiny", n_top_genes=200, image_vae=image_vae, **kw)
    model.train(**TRAIN)
    return model


@pytest.fixture(scope="module")
def trained(data, image_vae):
    return train_model(data.copy(), image_vae)


def snapshot(mdata):
    return (
        sorted(mdata.mod),
        {k: list(a.obs.columns) for k, a in mdata.mod.items()},
        {k: sorted(a.obsm) for k, a in mdata.mod.items()},
        {k: a.obs["treatment"].astype(str).tolist() for k, a in mdata.mod.items()},
    )


# ------------------------------------------------------------------ blocks
def test_dit_blocks():
    pos = sincos_pos_embed_2d(16, 3, 4)
    assert pos.shape == (12, 16)
    # row features (first half) equal along a row, column features equal along a column
    assert torch.allclose(pos[0, :8], pos[3, :8]) and torch.allclose(pos[0, 8:], pos[4, 8:])
    assert not torch.allclose(pos[0], pos[1])
    x = torch.randn(2, 3, 8, 12)
    embed = PatchEmbed(3, 4 * 3, patch_size=2)
    assert embed(x).shape == (2, 24, 12)
    # unpatchify inverts patchify
    p = x.reshape(2, 3, 4, 2, 6, 2).permute(0, 2, 4, 3, 5, 1).reshape(2, 24, 12)
    assert torch.equal(unpatchify(p, patch_size=2, channels=3, height=4, width=6), x)


@pytest.mark.parametrize("conditioning", ["cross_attention", "adaln_zero"])
def test_dit_uses_condition_and_time(conditioning):
    torch.manual_seed(0)
    dit = TridentDiT(
        4,
        8,
        8,
        6,
        n_hidden=32,
        n_layers=2,
        n_heads=4,
        patch_size=2,
        ff_mult=2,
        dropout=0.0,
        n_cond_tokens=3,
        conditioning=conditioning,
    )
    # zero-initialised outputs: the untrained network predicts zero
    x, t, c = torch.randn(2, 4, 8, 8), torch.tensor([10, 500]), torch.randn(2, 6)
    assert torch.equal(dit(x, t, c), torch.zeros_like(x))
    for p in dit.parameters():  # leave the zero init, so the outputs depend on everything
        torch.nn.init.normal_(p, std=0.2) if p.ndim > 1 else None
    out = dit(x, t, c)
    assert out.shape == x.shape
    assert not torch.allclose(out, dit(x, t, torch.randn(2, 6)))
    assert not torch.allclose(out, dit(x, torch.tensor([900, 20]), c))


def test_presets_and_module_parameters():
    paper = TRIDENT_PRESETS["paper"]
    assert (paper["n_layers"], paper["n_hidden"], paper["n_heads"], paper["patch_size"]) == (28, 1152, 16, 2)
    assert paper["prediction_type"] == "epsilon"
    with_rna = TridentModule(50, 64, 4, 8, 8, **TRIDENT_PRESETS["tiny"])
    without = TridentModule(0, 64, 4, 8, 8, use_rna=False, **TRIDENT_PRESETS["tiny"])
    names = [n for n, _ in with_rna.named_parameters()]
    assert any(n.startswith("condition_vae.rna_encoder") for n in names)
    assert any(n.startswith("condition_vae.decoder") for n in names)
    assert not any("condition_vae" in n or "rna" in n for n, _ in without.named_parameters())
    assert with_rna.null_condition is not None
    blocks = TridentModule(50, 64, 4, 8, 8, conditioning="adaln_zero", **TRIDENT_PRESETS["tiny"]).dit.blocks
    assert type(blocks[0]).__name__ == "AdaLNZeroDiTBlock"


# ------------------------------------------------------------------ input checks
def _bad(mdata, case):
    img, rna = mdata["img"], mdata["rna"]
    kw = {}
    if case == "not_4d":
        img.obsm["images"] = img.obsm["images"].reshape(img.n_obs, -1)
    elif case == "ragged":
        ragged = np.empty(img.n_obs, dtype=object)  # one tile per cell, not all of one shape
        ragged[:] = [np.zeros((5, 4, 4))] * (img.n_obs - 1) + [np.zeros((5, 3, 3))]
        img.obsm["images"] = ragged
    elif case == "missing_key":
        kw["images_key"] = "tiles"
    elif case == "no_smiles":
        img.obs["smiles"] = img.obs["smiles"].astype(object)
        img.obs.loc[img.obs["treatment"] == "Colchicine", "smiles"] = None
    elif case == "bad_smiles":
        img.obs["smiles"] = img.obs["smiles"].astype(object)
        img.obs.loc[img.obs["treatment"] == "Colchicine", "smiles"] = "C1CC(("
    elif case == "no_control_img":
        kw["control"] = "Vehicle"
    elif case == "no_control_rna":
        rna.obs["treatment"] = rna.obs["treatment"].astype(str).replace("DMSO", "water")
    elif case == "round_without_control":
        keep = ~((rna.obs["treatment"] == "DMSO") & (rna.obs["round"].astype(int) == 2)).to_numpy()
        mdata.mod["rna"] = rna[keep].copy()
    elif case == "missing_round_key":
        kw["round_key"] = "batch"
    elif case == "missing_smiles_key":
        kw["smiles_key"] = "structure"
    return kw


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("not_4d", r"obsm\['images'\].*4-d"),
        ("ragged", r"inconsistent shapes"),
        ("missing_key", r"images_key='tiles'.*obsm"),
        ("no_smiles", r"\['Colchicine'\] have no SMILES"),
        ("bad_smiles", r"Colchicine.*cannot be parsed"),
        ("no_control_img", r"control='Vehicle'.*mdata.mod\['img'\]"),
        ("no_control_rna", r"control='DMSO'.*mdata.mod\['rna'\]"),
        ("round_without_control", r"rounds \['2'\].*no control"),
        ("missing_round_key", r"round_key='batch'"),
        ("missing_smiles_key", r"smiles_key='structure'"),
    ],
)
def test_setup_rejects_bad_input(case, match):
    mdata = simulate(n_img_cells=200, n_rna_cells=200)
    kw = _bad(mdata, case)
    before = snapshot(mdata)
    with pytest.raises(ContractError, match=match):
        Trident.setup_mudata(mdata, **kw)
    assert snapshot(mdata) == before
    assert "_scvi_uuid" not in mdata.uns


def test_bad_model_arguments(data, image_vae, tmp_path):
    mdata = data.copy()
    Trident.setup_mudata(mdata)
    for kw, match in [
        ({"preset": "huge"}, "preset"),
        ({"p_uncond": 1.0}, "p_uncond"),
        ({"conditioning": "concat"}, "conditioning"),
        ({"n_heads": 5}, "n_heads"),
        ({"patch_size": 3}, "patch_size"),
        ({"image_vae": 3}, "image_vae"),
    ]:
        with pytest.raises(MorphomuError, match=match):
            Trident(mdata, **{"preset": "tiny", "image_vae": image_vae, **kw})
    # an image VAE for another channel count: an ImageVAE object, and a diffusers directory
    rgb = mdata["img"].copy()
    rgb.obsm["images"] = np.ascontiguousarray(rgb.obsm["images"][:, :3])
    mm.models.ImageVAE.setup_anndata(rgb)
    rgb_vae = mm.models.ImageVAE(rgb, preset="tiny")
    with pytest.raises(MorphomuError, match="3 channels.*5"):
        Trident(mdata, preset="tiny", image_vae=rgb_vae)
    rgb_vae.autoencoder.save_pretrained(tmp_path / "rgb")
    with pytest.raises(MorphomuError, match="n_channels=5"):
        Trident(mdata, preset="tiny", image_vae=tmp_path / "rgb")
    rna_less = data.copy()
    Trident.setup_mudata(rna_less, rna_mod=None)
    with pytest.raises(MorphomuError, match="use_rna=True needs an RNA modality"):
        Trident(rna_less, preset="tiny", image_vae=image_vae)


# ------------------------------------------------------------------ trained model
def test_model_keeps_torch_thread_count(data, image_vae):
    """scanpy's numba code (gene selection) shares OpenMP with torch; the user's thread count must survive it."""
    mdata = data.copy()
    Trident.setup_mudata(mdata)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        Trident(mdata, preset="tiny", n_top_genes=200, image_vae=image_vae)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_generate_tiles(trained, data):
    out = trained.generate(compounds=["Colchicine", "DMSO"], n_images=3, n_steps=5)
    tiles = out.obsm["images"]
    assert tiles.shape == (6, 5, 16, 16) and tiles.dtype == np.uint8
    assert tiles.max() > 0 and tiles.std() > 0
    assert out.obs_names.is_unique and out.obs["synthetic"].all()
    assert isinstance(out.obs["treatment"].dtype, pd.CategoricalDtype)
    assert isinstance(out.obs["smiles"].dtype, pd.CategoricalDtype)
    assert out.obs["treatment"].astype(str).tolist() == ["Colchicine"] * 3 + ["DMSO"] * 3
    smiles = data["img"].obs.loc[data["img"].obs["treatment"] == "Colchicine", "smiles"].iloc[0]
    assert out.obs["smiles"].iloc[0] == smiles
    # deterministic for a seed; a tile's noise depends on (seed, compound, tile index) only, so other compounds
    # in the call change it by float rounding at most (batched matmuls)
    again = trained.generate(compounds=["Colchicine", "DMSO"], n_images=3, n_steps=5)
    np.testing.assert_array_equal(again.obsm["images"], tiles)
    alone = trained.generate(compounds=["Colchicine"], n_images=3, n_steps=5)
    assert np.abs(alone.obsm["images"].astype(int) - tiles[:3].astype(int)).max() <= 1
    other = trained.generate(compounds=["Colchicine"], n_images=3, n_steps=5, seed=1)
    assert not np.array_equal(other.obsm["images"], tiles[:3])
    # default: every treated compound of the data
    every = trained.generate(n_images=1, n_steps=2)
    assert set(every.obs["treatment"]) == set(data["img"].obs["treatment"].astype(str)) - {"DMSO"}


def test_generate_with_a_multistep_sampler(trained):
    """``sampler`` reaches the denoising: recorded, independent of the batch size, not DDIM's result."""
    kw = {"compounds": ["Colchicine", "DMSO"], "n_images": 3, "n_steps": 5, "sampler": "unipc"}
    out = trained.generate(**kw)
    record = out.uns["morphomu"]["generate"]
    assert record["sampler"] == "unipc" and record["n_steps"] == 5
    small = trained.generate(**kw, batch_size=2)  # a fresh scheduler per batch: no history across batches
    assert np.abs(small.obsm["images"].astype(int) - out.obsm["images"].astype(int)).max() <= 1
    ddim = trained.generate(**{**kw, "sampler": "ddim"})
    assert not np.array_equal(ddim.obsm["images"], out.obsm["images"])
    with pytest.raises(MorphomuError, match="sampler='euler'"):
        trained.generate(sampler="euler")


def test_generate_unseen_smiles_and_bad_compounds(trained):
    out = trained.generate(compounds={"aspirin": ASPIRIN}, n_images=2, n_steps=5)
    assert out.obsm["images"].shape == (2, 5, 16, 16)
    assert list(out.obs["smiles"].astype(str)) == [ASPIRIN, ASPIRIN]
    with pytest.raises(ContractError, match="aspirin"):
        trained.generate(compounds=["aspirin"], n_images=1, n_steps=2)
    with pytest.raises(ContractError, match="'junk'.*cannot be parsed"):
        trained.generate(compounds={"junk": "C1CC(("}, n_images=1, n_steps=2)
    with pytest.raises(MorphomuError, match="positive"):
        trained.generate(compounds=["Colchicine"], n_images=0)
    with pytest.raises(ContractError, match="200 features"):
        trained.generate(compounds=["Colchicine"], rna=np.zeros(3), n_images=1, n_steps=2)


def test_guidance_changes_output(trained):
    plain = trained.generate(compounds=["Colchicine"], n_images=2, n_steps=5)
    guided = trained.generate(compounds=["Colchicine"], n_images=2, n_steps=5, guidance_scale=3.0)
    assert not np.array_equal(plain.obsm["images"], guided.obsm["images"])
    # an expression profile changes the condition too
    shifted = trained.generate(
        compounds=["Colchicine"], n_images=2, n_steps=5, rna=trained.data_info_["control_profile"] + 1.0
    )
    assert not np.array_equal(plain.obsm["images"], shifted.obsm["images"])


def test_training_history_and_no_mutation(trained, data):
    history = trained.history_
    for key in ("train_loss", "train_loss_ldm", "train_loss_vae", "validation_loss", "validation_loss_ldm"):
        assert key in history
    ldm = history["train_loss_ldm"].to_numpy().ravel()
    assert ldm[-1] < ldm[0]
    assert trained.image_vae.is_trained_
    before = snapshot(data)
    trained.generate(compounds=["Colchicine"], n_images=1, n_steps=2)
    trained.predict_expression(["Colchicine"])
    assert snapshot(data) == before


def real_g_post(model, mdata):
    """Mean log-normalised expression of each compound's train/val RNA cells over the model's genes."""
    import scanpy as sc

    rna = mdata["rna"].copy()
    sc.pp.normalize_total(rna, target_sum=1e4)
    sc.pp.log1p(rna)
    x = pd.DataFrame(rna[:, model.genes].X.toarray(), columns=model.genes)
    return x.groupby(rna.obs["treatment"].astype(str).to_numpy()).mean()


def test_predict_expression_beats_control_baseline(trained, data):
    real = real_g_post(trained, data)
    treated = [t for t in real.index if t != "DMSO"]
    pred = trained.predict_expression(treated)
    assert list(pred.columns) == list(trained.genes) and list(pred.index) == treated
    control = real.loc["DMSO"].to_numpy()
    np.testing.assert_allclose(trained.data_info_["control_profile"], control, rtol=1e-4, atol=1e-4)
    model_err = np.mean((pred.to_numpy() - real.loc[treated].to_numpy()) ** 2)
    baseline_err = np.mean((control[None, :] - real.loc[treated].to_numpy()) ** 2)
    assert model_err < 0.8 * baseline_err, (model_err, baseline_err)
    # a new structure works too
    assert trained.predict_expression({"aspirin": ASPIRIN}).shape == (1, len(trained.genes))


def test_save_load_round_trip(trained, data, tmp_path):
    path = tmp_path / "trident"
    trained.save(path)
    # one directory, one state dict: the image VAE's tensors are in model.safetensors (format 3)
    assert not [p for p in path.iterdir() if p.is_dir()]
    tensors = load_file(path / "model.safetensors")
    assert any(k.startswith("image_vae.autoencoder.") for k in tensors)
    assert torch.equal(tensors["image_vae.scaling_factor"], trained.image_vae.module.scaling_factor)
    with pytest.raises(MorphomuError, match="exists"):
        trained.save(path)
    mdata = data.copy()
    loaded = Trident.load(path, mdata)
    assert loaded.image_vae.is_trained_ and loaded.image_vae.module is loaded.module.image_vae
    assert loaded.image_vae.history_.keys() == trained.image_vae.history_.keys()
    a = trained.generate(compounds=["Colchicine", "DBeQ"], n_images=2, n_steps=5, guidance_scale=2.0)
    b = loaded.generate(compounds=["Colchicine", "DBeQ"], n_images=2, n_steps=5, guidance_scale=2.0)
    np.testing.assert_array_equal(a.obsm["images"], b.obsm["images"])
    pd.testing.assert_frame_equal(trained.predict_expression(), loaded.predict_expression())


def test_image_vae_is_a_frozen_submodule(data, image_vae, tmp_path):
    """The image VAE's network is the module's ``image_vae``: saved with it, never trained, averaged or checkpointed."""
    mdata = data.copy()
    Trident.setup_mudata(mdata)
    torch.manual_seed(0)
    model = Trident(mdata, preset="tiny", n_top_genes=200, image_vae=image_vae)
    assert model.image_vae is image_vae and model.module.image_vae is image_vae.module
    vae_params = {id(p) for p in image_vae.module.parameters()}
    own = model.module.trainable_parameters()
    assert own and not vae_params & {id(p) for p in own}
    assert len(own) + len(vae_params) == len(list(model.module.parameters()))
    before = {k: v.clone() for k, v in image_vae.module.state_dict().items()}
    model.train(max_epochs=1, batch_size=32, checkpoint_dir=tmp_path, checkpoint_every_n_steps=1, **QUIET)
    after = image_vae.module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.requires_grad for p in image_vae.module.parameters())  # unfrozen again for its own training
    assert len(model._ema.shadow) == len(own)
    assert not any(k.startswith("image_vae.") for k in model._raw_state)
    checkpoint = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert not any(k.startswith("module.image_vae.") for k in checkpoint["state_dict"])
    assert any(k.startswith("module.dit.") for k in checkpoint["state_dict"])


def test_drug_only_ablation_and_own_image_vae(capfd):
    mdata = simulate(n_img_cells=300, n_rna_cells=200)
    Trident.setup_mudata(mdata, rna_mod=None)
    torch.manual_seed(0)
    model = Trident(mdata, preset="tiny", use_rna=False)  # builds its own ImageVAE (tiny preset)
    assert not model.image_vae.is_trained_
    assert not any("condition_vae" in n for n, _ in model.module.named_parameters())
    assert model.module.drug_encoder is not None
    capfd.readouterr()
    # the progress bars on: the image VAE's reads "Image VAE: epoch i/N", Trident's its own epochs
    model.train(max_epochs=2, vae_epochs=1, enable_model_summary=False)
    out = capfd.readouterr().out
    assert "Training the image VAE first (vae_epochs=1)" in out  # said before the image VAE trains
    assert "Trident's own training (max_epochs=2) follows" in out
    assert (
        out.index("Training the image VAE first") < out.index("Image VAE: epoch 1/1") < out.index("Epoch 2/2")
    )
    assert model.image_vae.is_trained_
    capfd.readouterr()
    model.train(max_epochs=1, vae_epochs=1, **QUIET)  # a trained image VAE is not trained again
    assert "image VAE" not in capfd.readouterr().out
    assert "train_loss_vae" not in model.history_
    out = model.generate(compounds={"aspirin": ASPIRIN, "ethanol": "CCO"}, n_images=2, n_steps=3)
    assert out.obsm["images"].shape == (4, 5, 16, 16)
    with pytest.raises(MorphomuError, match="use_rna=False"):
        model.predict_expression(["Colchicine"])


@pytest.mark.slow
def test_generated_readout_follows_true_effect_and_not_shuffled_drugs(trained, data, image_vae):
    """Across the 29 conditions, the DNA readout of generated tiles follows that of the real tiles (which
    follows the simulated density effect); trained on tiles whose compounds were shuffled, it does not.

    The statistic is the slope of the generated per-treatment readout on the real one (the fraction of
    the real effect reproduced): unlike a correlation it does not turn the shuffled model's small,
    random per-compound differences into a +-0.2 chance correlation.
    """
    effect = data.uns["morphomu"]["simulation"]["effects"]["density"]
    names = list(effect.index)
    real = per_treatment(data["img"].obs, dna_readout(data["img"].obsm["images"]), effect.index)
    assert np.corrcoef(real, effect)[0, 1] > 0.5  # the readout sees the effect in real tiles
    cytotoxic = np.isin(names, CYTOTOXIC)
    assert real[cytotoxic].mean() < real[~cytotoxic].mean() - 2.0  # sparse fields: far less DNA

    def readout(model):
        out = model.generate(compounds=names, n_images=16, n_steps=20, guidance_scale=3.0)
        gen = per_treatment(out.obs, dna_readout(out.obsm["images"]), effect.index)
        slope = np.polyfit(real, gen, 1)[0]
        return slope, np.corrcoef(gen, real)[0, 1], gen[cytotoxic].mean() - gen[~cytotoxic].mean()

    shuffled_data = data.copy()
    for adata in shuffled_data.mod.values():
        shuffle_drugs(adata, seed=1)
    shuffled_real = per_treatment(
        shuffled_data["img"].obs, dna_readout(data["img"].obsm["images"]), effect.index
    )
    assert abs(np.polyfit(real, shuffled_real, 1)[0]) < 0.1  # the shuffled labels carry (almost) no effect
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        shuffled = train_model(shuffled_data, image_vae)
    (slope, r, contrast), (slope_shuffled, r_shuffled, contrast_shuffled) = (
        readout(trained),
        readout(shuffled),
    )
    print(
        f"generated vs real per-treatment readout: slope {slope:.2f}, r {r:.2f}, cytotoxic contrast {contrast:.2f} "
        f"(shuffled drugs: {slope_shuffled:.2f}, {r_shuffled:.2f}, {contrast_shuffled:.2f})"
    )
    # measured here: slope 0.44, r 0.71, contrast -1.25; shuffled (three shuffles): |slope| <= 0.11, |contrast| <= 0.36
    assert slope > 0.25 and r > 0.5, (slope, r)
    assert contrast < -0.8, contrast
    assert abs(slope_shuffled) < 0.2 and abs(contrast_shuffled) < 0.6, (slope_shuffled, contrast_shuffled)
