"""morphology_readouts: exact on drawn shapes, tracks the simulator's latents, counts real stardist nuclei."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

import morphomu as mm
from morphomu import ContractError
from morphomu._validation import check_uns_writable
from morphomu.tl._readouts import compare_readouts, readout_columns

STARDIST = Path(importlib.util.find_spec("stardist").submodule_search_locations[0]) / "data/images"


@pytest.fixture(scope="module")
def sim():
    return mm.datasets.simulate_scgenescope(
        seed=1, n_img_cells=1500, n_rna_cells=200, image_dim=10, with_images=True, image_size=64
    )


def _disc(shape, centre, a, b=None, angle=0.0):
    b = a if b is None else b
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(float)
    dy, dx = yy - centre[0], xx - centre[1]
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def test_drawn_nuclei_and_cells_are_measured_exactly():
    tiles = np.zeros((3, 2, 64, 64), dtype=np.uint8)
    centres = [(14, 14), (14, 46), (46, 30)]
    for c in centres:  # tile 0: three round nuclei inside cells with a membrane ring
        tiles[0, 0][_disc((64, 64), c, 5)] = 200
        ring = _disc((64, 64), c, 11) & ~_disc((64, 64), c, 9)
        tiles[0, 1][ring] = 220
    tiles[1, 0][_disc((64, 64), (32, 32), 12, 4, angle=0.5)] = 200  # one elongated nucleus, no cell signal
    # tile 2 stays empty
    table = mm.tl.morphology_readouts(tiles, channel_names=["DNA", "AGP"], threshold=0.3, cell_threshold=0.3)
    assert list(table.columns) == readout_columns(["DNA", "AGP"])
    assert table["cell_count"].tolist() == [3, 1, 0]
    nucleus_px = sum(_disc((64, 64), c, 5).sum() for c in centres)
    assert table.loc[0, "area_nucleus"] == pytest.approx(nucleus_px / 64**2, rel=0.1)
    cell_px = sum(_disc((64, 64), c, 11).sum() for c in centres)
    assert table.loc[0, "area_cell"] == pytest.approx(cell_px / 64**2, rel=0.1)
    assert table.loc[0, "area_cytoplasm"] == pytest.approx((cell_px - nucleus_px) / 64**2, rel=0.15)
    assert table.loc[0, "nucleus_eccentricity"] < 0.3  # circles
    assert table.loc[1, "nucleus_eccentricity"] > 0.85  # 12 x 4 ellipse: sqrt(1 - 1/9) = 0.94
    assert table.loc[1, "area_cell"] == pytest.approx(
        table.loc[1, "area_nucleus"]
    )  # the cell is at least its nucleus
    assert np.isnan(table.loc[2, "nucleus_area"]) and table.loc[2, "area_cell"] == 0.0
    assert table.loc[0, "intensity_DNA"] == pytest.approx(tiles[0, 0].mean() / 255)
    # touching nuclei are declumped by intensity: two overlapping bright blobs count two
    blob = np.zeros((1, 1, 64, 64), np.float32)
    yy, xx = np.mgrid[:64, :64]
    for cy, cx in ((32, 24), (32, 40)):
        blob[0, 0] += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 5.0**2))
    both = mm.tl.morphology_readouts(blob, channel_names=["DNA"], cell_channel="DNA", threshold=0.3)
    assert int(both["cell_count"].iloc[0]) == 2


def test_readouts_track_the_simulators_latents(sim):
    t0 = time.perf_counter()
    table = mm.tl.morphology_readouts(sim["img"].obsm["images"])
    seconds = time.perf_counter() - t0
    print(f"morphology_readouts: {len(table)} tiles of 64 x 64 in {seconds:.2f} s")
    assert list(table.columns[:4]) == ["cell_count", "area_nucleus", "area_cell", "area_cytoplasm"]
    assert [c for c in table.columns if c.startswith("intensity_")] == [
        f"intensity_{s}" for s in mm._constants.STAINS
    ]
    table["sample"] = sim["img"].obs["sample"].to_numpy()
    per_sample = table.groupby("sample", observed=True).mean(numeric_only=True)
    truth = sim.uns["morphomu"]["simulation"]["samples"].loc[per_sample.index]
    r_count = np.corrcoef(per_sample["cell_count"], truth["latent_density"])[0, 1]
    r_size = np.corrcoef(per_sample["nucleus_area"], truth["latent_size"])[0, 1]
    r_area = np.corrcoef(per_sample["area_cell"], truth["latent_density"])[0, 1]
    print(
        f"r(count, density) {r_count:.2f}  r(nucleus area, size) {r_size:.2f}  r(area_cell, density) {r_area:.2f}"
    )
    assert r_count > 0.7
    assert r_size > 0.6
    assert r_area > 0.4
    # cytotoxic compounds leave sparse fields: fewer cells and less area occupied than the control
    table["treatment"] = sim["img"].obs["treatment"].astype(str).to_numpy()
    cyto = table["treatment"].isin(sim.uns["morphomu"]["simulation"]["cytotoxic"])
    dmso = table["treatment"] == "DMSO"
    for col in ("cell_count", "area_nucleus", "area_cell", "area_cytoplasm"):
        assert table.loc[cyto, col].mean() < 0.7 * table.loc[dmso, col].mean()


def test_stardist_nuclei_count_is_close_to_ground_truth():
    image = tifffile.imread(STARDIST / "img2d.tif")
    truth = tifffile.imread(STARDIST / "mask2d.tif")
    n_true = len(np.unique(truth)) - 1  # 125 annotated nuclei (label ids run up to 183)
    table = mm.tl.morphology_readouts(image[None, None], channel_names=["DNA"], cell_channel="DNA")
    count = int(table["cell_count"].iloc[0])
    print(f"stardist img2d: {count} nuclei counted, {n_true} annotated")
    assert abs(count - n_true) <= 0.1 * n_true
    assert table["area_nucleus"].iloc[0] == pytest.approx((truth > 0).mean(), rel=0.15)


def test_anndata_and_mudata_are_written_scanpy_style(sim):
    mdata = sim.copy()
    before = mdata["img"].obsm["images"].copy()
    out = mm.tl.morphology_readouts(mdata, copy=True)
    assert "readouts" not in mdata["img"].obsm  # copy=True leaves the input alone
    table = out["img"].obsm["readouts"]
    assert isinstance(table, pd.DataFrame) and table.index.equals(mdata["img"].obs_names)
    assert mm.tl.morphology_readouts(mdata, key_added="cp") is None
    pd.testing.assert_frame_equal(mdata["img"].obsm["cp"], table)
    np.testing.assert_array_equal(mdata["img"].obsm["images"], before)
    params = mdata.uns["morphomu"]["cp"]["params"]
    assert params["nucleus_channel"] == "DNA" and list(params["cell_channels"]) == ["AGP"]
    assert 0 < params["nucleus_threshold"] < 1
    check_uns_writable(mdata.uns)
    # a fixed threshold reproduces the stored Otsu rule on a subset segmented alone
    sub = mm.tl.morphology_readouts(
        before[:50],
        threshold=params["nucleus_threshold"],
        cell_threshold=params["cell_threshold"],
        min_nucleus_area=params["min_nucleus_area"],
        peak_radius=int(params["peak_radius"]),
    )
    np.testing.assert_allclose(sub.to_numpy(float), table.iloc[:50].to_numpy(float), equal_nan=True)
    adata = mdata["img"].copy()
    mm.tl.morphology_readouts(adata, cell_channel=["AGP", "Mito"])
    assert list(adata.uns["morphomu"]["readouts"]["params"]["cell_channels"]) == ["AGP", "Mito"]
    assert np.isfinite(adata.obsm["readouts"]["area_cell"]).all()


def test_compare_readouts_shares_one_rule_across_dtypes(sim):
    tiles = sim["img"].obsm["images"][:300]
    as_float = (tiles.astype(np.float32) / 255.0).astype(np.float32)
    labels = sim["img"].obs["treatment"].astype(str).to_numpy()[:300]
    table = compare_readouts(
        {"real": tiles, "generated": as_float}, labels={"real": labels, "generated": labels}
    )
    assert list(table["source"].cat.categories) == ["real", "generated"]
    real = table[table["source"] == "real"].drop(columns=["source", "treatment"]).to_numpy(float)
    gen = table[table["source"] == "generated"].drop(columns=["source", "treatment"]).to_numpy(float)
    np.testing.assert_allclose(real, gen, atol=1e-6, equal_nan=True)
    assert (table["treatment"].to_numpy()[:300] == labels).all()
    from_anndata = compare_readouts({"a": sim["img"][:100], "b": sim["img"][100:200]})
    assert set(from_anndata["treatment"]) <= set(labels) | set(sim["img"].obs["treatment"].astype(str))


def test_bad_input_is_named_before_work(sim):
    tiles = sim["img"].obsm["images"][:10]
    before = tiles.copy()
    cases = [
        ({"data": tiles[:, 0]}, r"data must be tiles x channels x height x width"),
        ({"data": tiles, "nucleus_channel": "Hoechst"}, r"nucleus_channel='Hoechst' is not a channel"),
        ({"data": tiles, "cell_channel": 9}, r"cell_channel=9 is not a channel"),
        ({"data": tiles, "threshold": 2.0}, r"threshold must be 'otsu' or a number in \[0, 1\]"),
        ({"data": tiles, "channel_names": ["a", "b"]}, r"channel_names must be 5 distinct names"),
        ({"data": tiles, "intensity_range": (1, 0)}, r"need low < high"),
        ({"data": tiles, "sigma": -1}, r"sigma must be a non-negative"),
        ({"data": tiles.astype(str)}, r"must hold numbers"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ContractError, match=match):
            mm.tl.morphology_readouts(**kwargs)
    np.testing.assert_array_equal(tiles, before)
    mdata = sim.copy()
    with pytest.raises(ContractError, match="images_key='tiles' is neither"):
        mm.tl.morphology_readouts(mdata, images_key="tiles")
    with pytest.raises(ContractError, match="mod='nope' is not a modality"):
        mm.tl.morphology_readouts(mdata, mod="nope")
    assert "readouts" not in mdata.uns["morphomu"]
