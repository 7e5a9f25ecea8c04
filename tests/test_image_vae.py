"""ImageVAE: training on real microscopy tiles, encode/decode contract, pretrained directories, save/load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import morphomu as mm
from morphomu import ContractError, MorphomuError

TILE = 32


def _fly_dir() -> Path:
    import cellprofiler

    return Path(cellprofiler.__file__).parent / "data" / "examples" / "ExampleFly" / "images"


def _fly_tiles(tile: int = TILE) -> tuple[np.ndarray, np.ndarray]:
    """Real Drosophila fields (3 channels, uint8): 128 tiles of each of two fields to train, 64 of the third."""
    from skimage import io

    tiles, split = [], []
    for i, pos in enumerate(("002", "076", "218")):
        field = np.stack([io.imread(_fly_dir() / f"01_POS{pos}_{c}.TIF") for c in "DFR"])
        c, h, w = field.shape
        grid = field[:, : h // tile * tile, : w // tile * tile].reshape(c, h // tile, tile, w // tile, tile)
        grid = grid.transpose(1, 3, 0, 2, 4).reshape(-1, c, tile, tile)
        pick = np.random.default_rng(i).choice(len(grid), 128 if i < 2 else 64, replace=False)
        tiles.append(grid[pick])
        split += ["train" if i < 2 else "val"] * len(pick)
    return np.concatenate(tiles), np.asarray(split)


def _adata(images: np.ndarray, split: np.ndarray | None = None):
    import anndata as ad
    import pandas as pd

    obs = pd.DataFrame(index=[f"tile{i}" for i in range(len(images))])
    if split is not None:
        obs["split"] = pd.Categorical(split)
    adata = ad.AnnData(obs=obs)
    adata.obsm["images"] = images
    return adata


@pytest.fixture(scope="module")
def fly():
    images, split = _fly_tiles()
    assert images.dtype == np.uint8
    assert images.shape == (320, 3, TILE, TILE)
    return _adata(images, split)


@pytest.fixture(scope="module")
def trained(fly):
    import scvi

    scvi.settings.seed = 0
    mm.models.ImageVAE.setup_anndata(fly)
    model = mm.models.ImageVAE(fly, preset="tiny")
    model.train(max_epochs=5, batch_size=16, enable_progress_bar=False)
    return model


def test_reconstruction_error_falls_on_real_tiles(trained):
    val = trained.history_["validation_reconstruction"].to_numpy(dtype=float).ravel()
    train = trained.history_["train_reconstruction"].to_numpy(dtype=float).ravel()
    assert len(val) == 5 and len(train) == 5
    assert np.isfinite(val).all()
    # L1 on [-1, 1] tiles: the first epoch's validation error is roughly halved by the last one
    assert val[-1] < 0.6 * val[0], val
    assert train[-1] < train[0]


def test_encode_decode_contract(trained, fly):
    images = fly.obsm["images"][:10]
    z = trained.encode(images, batch_size=4)
    f = trained.downsample_factor
    assert f == 2 and trained.latent_channels == 4 and trained.n_channels == 3
    assert z.shape == (10, 4, TILE // f, TILE // f) and z.dtype == np.float32
    # scaled latents have about unit variance (scaling factor fit on train tiles)
    z_all = trained.encode(fly.obsm["images"][fly.obs["split"] == "train"])
    assert 0.7 < z_all.std() < 1.3
    x = trained.decode(z, batch_size=3)
    assert x.shape == images.shape and x.dtype == np.float32
    assert x.min() >= 0 and x.max() <= 255  # uint8 units, clipped to the dtype's range
    # on held-out tiles, decode(encode(x)) beats the best constant image clearly, and matches the logged
    # validation error (L1 on [-1, 1], i.e. / 127.5 for uint8)
    val = fly.obsm["images"][fly.obs["split"] == "val"]
    err = np.abs(trained.decode(trained.encode(val)) - val).mean()
    assert err < 0.8 * np.abs(val - np.median(val)).mean(), err
    logged = float(trained.history_["validation_reconstruction"].to_numpy(dtype=float)[-1, 0])
    assert abs(err / 127.5 - logged) < 0.25 * logged, (err / 127.5, logged)
    # float tiles in the same units give the same latents; a tensor works too
    import torch

    np.testing.assert_allclose(trained.encode(images.astype(np.float32)), z, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(trained.encode(torch.from_numpy(images)), z, rtol=1e-5, atol=1e-5)
    assert isinstance(trained.autoencoder, __import__("diffusers").AutoencoderKL)


def test_encode_rejects_bad_tiles(trained):
    with pytest.raises(ContractError, match="4-d"):
        trained.encode(np.zeros((2, 3, 32), np.uint8))
    with pytest.raises(ContractError, match="3 channels|takes 3"):
        trained.encode(np.zeros((2, 5, 32, 32), np.uint8))
    with pytest.raises(ContractError, match="divisible"):
        trained.encode(np.zeros((2, 3, 33, 32), np.uint8))
    with pytest.raises(ContractError, match="latent_channels"):
        trained.decode(np.zeros((2, 3, 16, 16), np.float32))


def test_setup_errors():
    with pytest.raises(ContractError, match="images_key='tiles'"):
        mm.models.ImageVAE.setup_anndata(_adata(np.zeros((4, 3, 8, 8), np.uint8)), images_key="tiles")
    with pytest.raises(ContractError, match="4-d"):
        bad = _adata(np.zeros((4, 3, 8, 8), np.uint8))
        bad.obsm["images"] = np.zeros((4, 64), np.uint8)
        mm.models.ImageVAE.setup_anndata(bad)
    with pytest.raises(ContractError, match="dtype int8"):
        mm.models.ImageVAE.setup_anndata(_adata(np.zeros((4, 3, 8, 8), np.int8)))
    nan = np.zeros((4, 3, 8, 8), np.float32)
    nan[1, 0, 2, 2] = np.nan
    with pytest.raises(ContractError, match="non-finite"):
        mm.models.ImageVAE.setup_anndata(_adata(nan))
    odd = _adata(np.zeros((4, 3, 12, 12), np.uint8))
    mm.models.ImageVAE.setup_anndata(odd)
    with pytest.raises(ContractError, match="divisible by the autoencoder's downsampling factor 8"):
        mm.models.ImageVAE(odd, preset="paper")
    with pytest.raises(MorphomuError, match="preset"):
        mm.models.ImageVAE(odd, preset="huge")


def test_float_tiles_use_robust_train_range():
    rng = np.random.default_rng(0)
    images = rng.gamma(2.0, 100.0, size=(24, 2, 8, 8)).astype(np.float32)
    split = np.array(["train"] * 16 + ["val"] * 8)
    images[16:] *= 10  # validation tiles must not influence the range
    adata = _adata(images, split)
    mm.models.ImageVAE.setup_anndata(adata)
    model = mm.models.ImageVAE(adata, preset="tiny", block_out_channels=(8, 8), layers_per_block=1)
    model.train(max_epochs=1, batch_size=8, enable_progress_bar=False)
    low, high = model.intensity_range
    expected = np.percentile(np.moveaxis(images[:16], 1, 0).reshape(2, -1), (0.1, 99.9), axis=1)
    np.testing.assert_allclose(low, expected[0], rtol=1e-4)
    np.testing.assert_allclose(high, expected[1], rtol=1e-4)
    assert model.encode(images).shape == (24, 4, 4, 4)


def _diffusers_dir(path: Path, n_channels: int) -> Path:
    from diffusers import AutoencoderKL

    ae = AutoencoderKL(
        in_channels=n_channels,
        out_channels=n_channels,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        scaling_factor=0.5,
    )
    ae.save_pretrained(path)
    return path


def test_from_pretrained_wrong_channels(tmp_path):
    path = _diffusers_dir(tmp_path / "rgb_vae", 3)
    with pytest.raises(MorphomuError) as info:
        mm.models.ImageVAE.from_pretrained(path, n_channels=5)
    msg = str(info.value)
    assert str(path) in msg and "in_channels=3" in msg and "out_channels=3" in msg and "n_channels=5" in msg
    with pytest.raises(MorphomuError, match="config.json"):
        mm.models.ImageVAE.from_pretrained(tmp_path)


def test_from_pretrained_matching_loads_and_encodes(tmp_path):
    import torch
    from diffusers import AutoencoderKL

    path = _diffusers_dir(tmp_path / "sd" / "vae", 5)
    # a pipeline directory with a vae/ sub-folder works too
    model = mm.models.ImageVAE.from_pretrained(tmp_path / "sd", n_channels=5)
    assert model.adata is None and model.is_trained_
    assert model.scaling_factor == 0.5 and model.downsample_factor == 2 and model.n_channels == 5
    tiles = np.random.default_rng(0).integers(0, 256, size=(3, 5, 16, 16), dtype=np.uint8)
    z = model.encode(tiles)
    assert z.shape == (3, 4, 8, 8) and z.dtype == np.float32
    # same as diffusers itself: uint8 -> [-1, 1], posterior mean x scaling factor
    ae = AutoencoderKL.from_pretrained(path).eval()
    with torch.no_grad():
        ref = ae.encode(torch.from_numpy(tiles).float() / 127.5 - 1).latent_dist.mean * 0.5
    np.testing.assert_allclose(z, ref.numpy(), rtol=1e-4, atol=1e-5)
    x = model.decode(z)
    assert x.shape == tiles.shape and x.dtype == np.float32
    with pytest.raises(MorphomuError, match="no data"):
        model.train(max_epochs=1)
    # a model without data saves and loads
    model.save(tmp_path / "saved")
    again = mm.models.ImageVAE.from_pretrained(tmp_path / "saved")
    np.testing.assert_array_equal(again.encode(tiles), z)


def test_save_load_identical(trained, fly, tmp_path):
    images = fly.obsm["images"][:6]
    z = trained.encode(images)
    x = trained.decode(z)
    trained.save(tmp_path / "vae")
    manifest = json.loads((tmp_path / "vae" / "morphomu.json").read_text())
    assert manifest["model"] == "ImageVAE"
    with pytest.raises(MorphomuError, match="exists"):
        trained.save(tmp_path / "vae")
    loaded = mm.models.ImageVAE.load(tmp_path / "vae")
    assert loaded.adata is None and loaded.scaling_factor == trained.scaling_factor
    np.testing.assert_array_equal(loaded.encode(images), z)
    np.testing.assert_array_equal(loaded.decode(z), x)
    # attached to data of the same layout it can train further
    with_data = mm.models.ImageVAE.load(tmp_path / "vae", fly)
    assert with_data.adata is fly
    np.testing.assert_array_equal(with_data.encode(images), z)
    with pytest.raises(ContractError, match="channels"):
        mm.models.ImageVAE.load(tmp_path / "vae", _adata(np.zeros((4, 5, 32, 32), np.uint8)))
