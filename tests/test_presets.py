"""Presets: every generative model defaults to ``fast``; explicit sizes change the network, never the training regime."""

from __future__ import annotations

import inspect

import numpy as np
import pandas as pd
import pytest
import torch

import morphomu as mm
from morphomu.models import ImageVAE, MorphologyEmbedder, PhenoSeq, Trident
from morphomu.module._image_vae import IMAGE_VAE_PRESETS
from morphomu.module._phenoseq import PHENOSEQ_PRESETS
from morphomu.module._trident import TRIDENT_PRESETS

#: The training regimes the presets stand for, written out (not read from the tables they check).
PHENOSEQ_FAST = {"max_epochs": 300, "batch_size": 64, "lr": 1e-3, "warmup_epochs": 1}
PHENOSEQ_PAPER = {"max_epochs": 5000, "batch_size": 256, "lr": 1e-4, "warmup_epochs": 5}
TRIDENT_FAST = {"max_epochs": 200, "batch_size": 64, "lr": 3e-4, "warmup_epochs": 1}
IMAGE_VAE_FAST = {"max_epochs": 50, "batch_size": 32, "lr": 1e-3}


def train_defaults(model) -> dict:
    """What ``model.train()`` trains with when no argument is given (the signature's defaults, resolved)."""
    params = inspect.signature(model.train).parameters.values()
    given = {p.name: p.default for p in params if p.kind is not p.VAR_KEYWORD}
    given["trainer_kwargs"] = {}
    resolved = model._train_args(given)
    return {k: resolved[k] for k in ("max_epochs", "batch_size", "lr", "warmup_epochs") if k in resolved}


@pytest.fixture(scope="module")
def paired():
    mdata = mm.datasets.simulate_scgenescope(
        seed=0, n_img_cells=600, n_rna_cells=600, image_dim=20, rna_dim=10
    )
    mm.pp.assign_split(mdata)
    mm.pp.assign_compound_split(mdata)
    return mdata


@pytest.fixture(scope="module")
def tiles():
    mdata = mm.datasets.simulate_scgenescope(
        seed=0, n_img_cells=300, n_rna_cells=200, with_images=True, image_size=16
    )
    for adata in mdata.mod.values():
        adata.obs["split"] = pd.Categorical(np.where(adata.obs["replicate"].astype(int) == 2, "val", "train"))
    return mdata


@pytest.mark.parametrize("cls", [PhenoSeq, MorphologyEmbedder, Trident, ImageVAE])
def test_every_generative_model_defaults_to_fast(cls):
    assert inspect.signature(cls).parameters["preset"].default == "fast"


def test_phenoseq_default_is_the_fast_network_and_regime(paired):
    mdata = paired.copy()
    PhenoSeq.setup_mudata(mdata)
    model = PhenoSeq(mdata)
    assert model.preset == "fast"
    assert model.sizes == PHENOSEQ_PRESETS["fast"]
    assert model.sizes["n_hidden"] == 256 and len(model.module.blocks) == 4
    assert model.module.prediction_type == "v_prediction"
    assert train_defaults(model) == PHENOSEQ_FAST
    assert "(fast preset)" in model._model_summary_string
    # the paper network is ~20x larger: the default is not it
    paper = sum(p.numel() for p in PhenoSeq(mdata, preset="paper").module.parameters())
    assert sum(p.numel() for p in model.module.parameters()) * 10 < paper


@pytest.mark.parametrize("cls", [PhenoSeq, MorphologyEmbedder])
def test_explicit_sizes_keep_the_presets_training_regime(paired, cls):
    mdata = paired.copy()
    cls.setup_mudata(mdata)
    model = cls(mdata, n_hidden=64, n_layers=1, n_heads=2, n_encoder_heads=2)
    assert model.preset == "fast"
    assert model.sizes["n_hidden"] == 64 and len(model.module.blocks) == 1  # the network: as given
    assert model.sizes["n_time"] == PHENOSEQ_PRESETS["fast"]["n_time"]  # the rest: the preset's
    assert model.module.prediction_type == "v_prediction"  # the regime: the preset's
    assert train_defaults(model) == PHENOSEQ_FAST
    paper = cls(mdata, preset="paper", n_hidden=64, n_layers=1, n_heads=2, n_encoder_heads=2)
    assert paper.preset == "paper" and paper.sizes["n_hidden"] == 64
    assert paper.module.prediction_type == "epsilon"
    assert train_defaults(paper) == PHENOSEQ_PAPER
    # an explicit training argument still wins over the preset's
    model_args = {"max_epochs": 3, "lr": 5e-3}
    params = inspect.signature(model.train).parameters.values()
    given = {p.name: p.default for p in params if p.kind is not p.VAR_KEYWORD}
    resolved = model._train_args({**given, **model_args, "trainer_kwargs": {}})
    assert (resolved["max_epochs"], resolved["lr"], resolved["batch_size"]) == (3, 5e-3, 64)


def test_training_runs_with_the_presets_regime_and_the_preset_is_kept(paired, tmp_path, monkeypatch):
    mdata = paired.copy()
    PhenoSeq.setup_mudata(mdata)
    torch.manual_seed(0)
    model = PhenoSeq(mdata, n_hidden=32, n_layers=1, n_heads=2, n_encoder_heads=2, n_time=16)
    seen = {}
    make_plan = model._make_plan

    def recording_plan(args):
        seen.update(args)
        return make_plan(args)

    monkeypatch.setattr(model, "_make_plan", recording_plan)
    model.train(max_epochs=1, enable_progress_bar=False)
    assert (seen["lr"], seen["batch_size"], seen["warmup_epochs"]) == (1e-3, 64, 1)
    model.save(tmp_path / "m")
    loaded = PhenoSeq.load(tmp_path / "m", adata=mdata)
    assert loaded.preset == "fast" and loaded.sizes["n_hidden"] == 32
    assert train_defaults(loaded)["lr"] == 1e-3


def test_trident_and_its_image_vae_default_to_fast(tiles):
    mdata = tiles.copy()
    Trident.setup_mudata(mdata)
    model = Trident(mdata, n_top_genes=50, n_hidden=32, n_layers=1, n_heads=2, n_cond_hidden=16)
    assert model.preset == "fast" and model.image_vae.preset == "fast"
    assert model.sizes["n_hidden"] == 32 and len(model.module.dit.blocks) == 1
    assert model.sizes["n_latent"] == TRIDENT_PRESETS["fast"]["n_latent"]
    assert model.sizes["prediction_type"] == "v_prediction"
    assert train_defaults(model) == TRIDENT_FAST
    assert tuple(model.image_vae.autoencoder.config.block_out_channels) == tuple(
        IMAGE_VAE_PRESETS["fast"]["block_out_channels"]
    )
    assert train_defaults(model.image_vae) == IMAGE_VAE_FAST


def test_image_vae_sizes_keep_the_presets_training_defaults(tiles):
    img = tiles["img"].copy()
    ImageVAE.setup_anndata(img)
    vae = ImageVAE(img, block_out_channels=(8, 16), latent_channels=2)
    assert vae.preset == "fast" and vae.latent_channels == 2 and vae.downsample_factor == 2
    assert train_defaults(vae) == IMAGE_VAE_FAST
