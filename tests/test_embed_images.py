"""embed_images: the per-stain timm protocol equals the model's own forward; Lightning = plain; errors are named."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import anndata as ad
import mudata as md
import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

import morphomu as mm
from morphomu import ContractError, MorphomuError
from morphomu._validation import check_uns_writable

#: A tiny ViT of the same family as ViT-L/16: 32 px input, 8 px patches, 2 blocks of width 192.
TINY = "vit_tiny_patch16_224"
TINY_KWARGS = {"img_size": 32, "patch_size": 8, "depth": 2}
WIDTH = 192
FLY = (
    Path(importlib.util.find_spec("cellprofiler").submodule_search_locations[0])
    / "data/examples/ExampleFly/images"
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    """A randomly initialised tiny ViT (with a classifier head, as hub files have) and its saved weights."""
    torch.manual_seed(0)
    net = timm.create_model(TINY, pretrained=False, num_classes=7, **TINY_KWARGS)
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_file(net.state_dict(), str(path))
    net.reset_classifier(0)
    return net.eval(), path


def crops_adata(n: int = 6, size: int = 32, channels: int = 3, seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    adata = ad.AnnData(obs={"cell": [f"c{i}" for i in range(n)]})
    adata.obs_names = adata.obs["cell"].to_numpy()
    adata.obsm["images"] = rng.integers(0, 256, size=(n, channels, size, size), dtype=np.uint8)
    return adata


def embed(adata, path, **kwargs):
    kwargs = {"model": TINY, "checkpoint": path, "model_kwargs": TINY_KWARGS, "progress": False, **kwargs}
    return mm.pp.embed_images(adata, **kwargs)


def test_each_stain_equals_the_models_own_forward(tiny):
    net, path = tiny
    adata = crops_adata()
    embed(adata, path, batch_size=4)
    features = adata.obsm["X_vit"]
    assert features.shape == (6, 3 * WIDTH)
    assert features.dtype == np.float32
    config = timm.data.resolve_model_data_config(net)
    mean = torch.tensor(config["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(config["std"]).view(1, 3, 1, 1)
    for stain in range(3):
        grey = torch.from_numpy(adata.obsm["images"][:, stain : stain + 1]).float() / 255
        with torch.no_grad():
            expected = net((grey.repeat(1, 3, 1, 1) - mean) / std).numpy()
        np.testing.assert_allclose(
            features[:, stain * WIDTH : (stain + 1) * WIDTH], expected, rtol=1e-5, atol=1e-5
        )
    entry = adata.uns["morphomu"]["X_vit"]
    assert entry["n_features_per_stain"] == WIDTH
    assert list(entry["input_size"]) == [3, 32, 32]
    check_uns_writable(adata.uns)


def test_resize_follows_timms_own_transform(tiny):
    """Crops larger than the input are resized; timm's PIL eval transform gives nearly the same features."""
    net, path = tiny
    adata = crops_adata(n=4, size=48, seed=1)
    adata.obsm["images"] = np.repeat(
        np.repeat(adata.obsm["images"][:, :, ::4, ::4], 4, axis=2), 4, axis=3
    )  # smooth-ish structure, so resampling methods can agree
    embed(adata, path, channels=[2])
    config = {**timm.data.resolve_model_data_config(net), "input_size": (3, 32, 32), "crop_pct": 1.0}
    transform = timm.data.create_transform(**config)
    pil = torch.stack([transform(Image.fromarray(img[2]).convert("RGB")) for img in adata.obsm["images"]])
    with torch.no_grad():
        expected = net(pil).numpy()
    got = adata.obsm["X_vit"]
    assert got.shape == (4, WIDTH)
    for g, e in zip(got, expected, strict=True):
        assert np.corrcoef(g, e)[0, 1] > 0.99
    # and exactly the antialiased bicubic resize of the grey stain
    grey = torch.from_numpy(adata.obsm["images"][:, 2:3]).float() / 255
    grey = F.interpolate(grey, size=(32, 32), mode="bicubic", antialias=True, align_corners=False)
    with torch.no_grad():
        exact = net((grey.repeat(1, 3, 1, 1) - 0.5) / 0.5).numpy()
    np.testing.assert_allclose(got, exact, rtol=1e-5, atol=1e-5)


def test_stains_are_embedded_separately(tiny):
    _, path = tiny
    adata = crops_adata()
    embed(adata, path)
    before = adata.obsm["X_vit"].copy()
    adata.obsm["images"][0, 1] = 255 - adata.obsm["images"][0, 1]
    embed(adata, path)
    after = adata.obsm["X_vit"]
    changed = ~np.isclose(before, after, rtol=1e-5, atol=1e-5)
    assert changed[0, WIDTH : 2 * WIDTH].mean() > 0.9  # stain 1 of cell 0 changed
    assert not changed[0, :WIDTH].any()
    assert not changed[0, 2 * WIDTH :].any()
    assert not changed[1:].any()


def test_lightning_predict_equals_plain_loop(tiny):
    _, path = tiny
    adata = crops_adata(n=7)
    embed(adata, path, batch_size=3)
    embed(adata, path, batch_size=3, devices=1, device="cpu", key_added="X_lightning")
    np.testing.assert_allclose(adata.obsm["X_lightning"], adata.obsm["X_vit"], rtol=1e-6, atol=1e-6)


def test_bfloat16_autocast_stays_close(tiny):
    _, path = tiny
    adata = crops_adata(n=5)
    embed(adata, path)
    embed(adata, path, precision="bf16", key_added="X_bf16")
    embed(adata, path, precision="bf16", devices=1, device="cpu", key_added="X_bf16_lightning")
    bf16, fp32 = adata.obsm["X_bf16"], adata.obsm["X_vit"]
    assert bf16.dtype == np.float32
    assert not np.array_equal(bf16, fp32)  # autocast really ran in bfloat16
    for a, b in zip(bf16, fp32, strict=True):
        assert np.corrcoef(a, b)[0, 1] > 0.99
    np.testing.assert_allclose(adata.obsm["X_bf16_lightning"], bf16, rtol=1e-6, atol=1e-6)
    assert adata.uns["morphomu"]["X_bf16"]["precision"] == "bf16"


def test_lightning_two_processes_gather_every_row(tiny):
    """Two CPU ranks (forked DDP, gloo): each embeds part of the rows, every row comes back once."""
    _, path = tiny
    adata = crops_adata(n=7)
    embed(adata, path, batch_size=2)
    embed(adata, path, batch_size=2, devices=2, device="cpu", strategy="ddp_fork", key_added="X_ddp")
    np.testing.assert_allclose(adata.obsm["X_ddp"], adata.obsm["X_vit"], rtol=1e-6, atol=1e-6)


def test_real_fly_crops_in_memory_and_zarr_backed(tiny, tmp_path):
    _, path = tiny
    fields = [tuple(FLY / f"01_{pos}_{c}.TIF" for c in "DFR") for pos in ("POS002", "POS218")]
    kwargs = {"crop_size": 40, "channel_names": ["DNA", "FITC", "rhodamine"], "progress": False}
    cells = mm.pp.crop_cells(fields, **kwargs)
    backed = mm.pp.crop_cells(fields, store=tmp_path / "crops.zarr", **kwargs)
    cells, backed = cells[:40].copy(), backed[:40].copy()  # a handful of real cells
    mdata = md.MuData({"img": cells})
    embed(mdata, path, mod="img", batch_size=16)
    embed(backed, path, batch_size=16, num_workers=0)
    features = mdata["img"].obsm["X_vit"]
    assert features.shape == (40, 3 * WIDTH)
    assert np.isfinite(features).all()
    np.testing.assert_allclose(backed.obsm["X_vit"], features, rtol=1e-5, atol=1e-5)
    assert list(mdata.uns["morphomu"]["X_vit"]["stains"]) == ["DNA", "FITC", "rhodamine"]
    # real cells differ from one another, and the DNA block separates them more than noise would
    assert np.linalg.matrix_rank(features[:, :WIDTH]) > 10
    # a stain picked by name: the same block
    embed(mdata, path, mod="img", channels=["FITC"], key_added="X_fitc")
    np.testing.assert_allclose(
        mdata["img"].obsm["X_fitc"], features[:, WIDTH : 2 * WIDTH], rtol=1e-5, atol=1e-5
    )


def test_bad_input_is_named_before_work(tiny, tmp_path):
    net, path = tiny
    adata = crops_adata()
    wrong_arch = tmp_path / "resnet.pth"
    torch.save(timm.create_model("resnet18", pretrained=False, num_classes=0).state_dict(), wrong_arch)
    empty = ad.AnnData(obs={"cell": []})
    empty.obsm["images"] = np.zeros((0, 3, 32, 32), np.uint8)
    small = crops_adata(size=4)
    two_d = ad.AnnData(obs={"cell": list("ab")})
    two_d.obsm["images"] = np.zeros((2, 32), np.uint8)
    two_channels = crops_adata(channels=2)
    cases = [
        (
            adata,
            {"checkpoint": tmp_path / "nowhere.safetensors"},
            MorphomuError,
            r"nowhere\.safetensors.*download",
        ),
        (adata, {"checkpoint": None}, MorphomuError, "checkpoint is required"),
        (adata, {"checkpoint": wrong_arch}, MorphomuError, "does not fit"),
        (adata, {"model": "not_a_model_xyz"}, ContractError, "not a timm model"),
        (small, {}, ContractError, "smaller than the patch size"),
        (empty, {}, ContractError, "empty"),
        (two_d, {}, ContractError, "4-d"),
        (two_channels, {"per_channel": False}, ContractError, "exactly 3 channels"),
        (adata, {"channels": ["ER"]}, ContractError, "'ER' is not a channel"),
        (adata, {"images_key": "crops"}, ContractError, "images_key='crops'"),
        (adata, {"intensity_range": (10, 5)}, ContractError, "low < high"),
        (adata, {"batch_size": 0}, ContractError, "batch_size"),
        (adata, {"device": "gpu:x"}, ContractError, "device="),
        (adata, {"precision": "64"}, ContractError, "precision"),
    ]
    for data, kwargs, error, match in cases:
        with pytest.raises(error, match=match):
            embed(data, path, **kwargs)
        assert "X_vit" not in data.obsm
        assert "morphomu" not in data.uns
    with pytest.raises(ContractError, match="mdata.mod\\['img'\\].obsm\\['images'\\]"):
        embed(md.MuData({"img": small}), path, mod="img")
