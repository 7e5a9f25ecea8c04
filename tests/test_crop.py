"""crop_cells on real fields: cellprofiler's ExampleFly (3 stains) and stardist's annotated nuclei."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from skimage import filters, segmentation

import morphomu as mm
from morphomu import ContractError
from morphomu.pp._crop import CropReader, segment_nuclei


def package_dir(name: str) -> Path:
    """Installed (``--no-deps``) package's folder, found without importing it (its dependencies are absent)."""
    return Path(importlib.util.find_spec(name).submodule_search_locations[0])


FLY = package_dir("cellprofiler") / "data/examples/ExampleFly/images"
STARDIST = package_dir("stardist") / "data/images"
FIELDS = ("POS002", "POS076", "POS218")
STAINS = ("DNA", "FITC", "rhodamine")


def fly_fields() -> list[tuple[Path, Path, Path]]:
    """Each field: one TIFF per stain (D = DNA, F = FITC, R = rhodamine)."""
    return [tuple(FLY / f"01_{pos}_{c}.TIF" for c in "DFR") for pos in FIELDS]


FIELDS_TABLE = pd.DataFrame({"well": ["A01", "A01", "B02"], "site": [1, 2, 1]})
PLATE_MAP = pd.DataFrame(
    {
        "well": ["A01", "B02", "C03"],
        "sample": ["s1", "s2", "s3"],
        "treatment": ["DMSO", "Colchicine", "DMSO"],
        "replicate": [1, 1, 2],
    }
)


@pytest.fixture(scope="module")
def fly():
    return mm.pp.crop_cells(
        fly_fields(),
        fields=FIELDS_TABLE,
        plate_map=PLATE_MAP,
        crop_size=32,
        channel_names=STAINS,
        progress=False,
    )


def _matches(pred: np.ndarray, truth: np.ndarray, iou: float = 0.5) -> tuple[float, float, float]:
    """Precision, recall and F1 of predicted objects matched to true ones at IoU > ``iou``."""
    from skimage.metrics import contingency_table

    pred = segmentation.relabel_sequential(pred)[0]
    truth = segmentation.relabel_sequential(truth)[0]
    table = contingency_table(truth, pred).toarray()
    inter = table[1:, 1:]
    union = table.sum(1)[1:, None] + table.sum(0)[None, 1:] - inter
    tp = int((inter / np.maximum(union, 1) > iou).sum())  # IoU > 0.5 makes matches one-to-one
    precision, recall = tp / inter.shape[1], tp / inter.shape[0]
    return precision, recall, 2 * tp / (inter.shape[0] + inter.shape[1])


def test_segmentation_against_stardist_ground_truth():
    image = tifffile.imread(STARDIST / "img2d.tif")
    truth = tifffile.imread(STARDIST / "mask2d.tif")
    labels = segment_nuclei(image)
    precision, recall, f1 = _matches(labels, truth)
    print(f"stardist img2d: precision {precision:.3f} recall {recall:.3f} F1 {f1:.3f} at IoU 0.5")
    assert f1 >= 0.7
    assert precision >= 0.6
    assert recall >= 0.6
    # the label mask given instead of segmentation: one cell per annotated nucleus (pad keeps border ones)
    adata = mm.pp.crop_cells(
        STARDIST / "img2d.tif", labels=STARDIST / "mask2d.tif", crop_size=24, border="pad", progress=False
    )
    assert adata.n_obs == len(np.unique(truth)) - 1
    assert set(adata.obs["label"]) == set(np.unique(truth)[1:])


def test_fly_obs_and_plate_map(fly):
    obs = fly.obs
    assert {"field", "well", "label", "area", "site", "sample", "treatment", "replicate"} <= set(obs.columns)
    assert obs_names_unique(fly)
    counts = obs.groupby("field", observed=True).size()
    assert len(counts) == 3
    assert (counts > 100).all()  # each field holds hundreds of nuclei
    assert obs.loc[obs["well"] == "B02", "treatment"].eq("Colchicine").all()
    assert obs.loc[obs["well"] == "A01", "sample"].eq("s1").all()
    assert obs.groupby("field", observed=True)["site"].first().tolist() == [1, 2, 1]
    table = fly.uns["morphomu"]["images"]["fields"]
    assert table["n_cells"].tolist() == counts.loc[table["field"]].tolist()
    assert list(fly.uns["morphomu"]["images"]["channels"]) == list(STAINS)


def obs_names_unique(adata) -> bool:
    return adata.obs_names.is_unique


def test_fly_crops_are_the_raw_pixels_around_nuclei(fly):
    crops = fly.obsm["images"]
    assert crops.shape == (fly.n_obs, 3, 32, 32)
    assert crops.dtype == np.uint8  # the TIFFs' own dtype
    rng = np.random.default_rng(0)
    for i in rng.choice(fly.n_obs, size=25, replace=False):
        pos = FIELDS[[f"01_{p}_D" for p in FIELDS].index(fly.obs["field"].iloc[i])]
        field = np.stack([tifffile.imread(FLY / f"01_{pos}_{c}.TIF") for c in "DFR"])
        x, y = fly.obsm["spatial"][i]
        top, left = round(y) - 16, round(x) - 16
        np.testing.assert_array_equal(crops[i], field[:, top : top + 32, left : left + 32])
    # crops are centred on nuclei: the DNA stain is bright at the centre and dimmer at the corners
    dna = fly.obsm["images"][:, 0].astype(float)
    otsu = filters.threshold_otsu(tifffile.imread(FLY / "01_POS076_D.TIF"))
    centre = dna[:, 14:18, 14:18].mean((1, 2))
    corners = dna[:, [0, 0, -1, -1], [0, -1, 0, -1]].mean(1)
    assert np.mean(centre > otsu) > 0.9
    assert np.mean(centre > corners) > 0.9


def test_border_drop_and_pad():
    field = fly_fields()[0]
    dropped = mm.pp.crop_cells(field, crop_size=64, progress=False)
    padded = mm.pp.crop_cells(field, crop_size=64, border="pad", progress=False)
    n_dropped = int(dropped.uns["morphomu"]["images"]["fields"]["n_dropped_at_border"].iloc[0])
    assert n_dropped > 0
    assert padded.n_obs == dropped.n_obs + n_dropped
    xy = dropped.obsm["spatial"]
    assert (np.round(xy) >= 32).all()
    assert (np.round(xy[:, 0]) + 32 <= 1000).all()
    assert (np.round(xy[:, 1]) + 32 <= 1006).all()
    # a padded crop at the edge holds zeros outside the field and the field's pixels inside
    edge = np.flatnonzero(np.round(padded.obsm["spatial"][:, 0]) < 32)[0]
    x, y = np.round(padded.obsm["spatial"][edge]).astype(int)
    outside = 32 - x
    assert (padded.obsm["images"][edge][:, :, :outside] == 0).all()
    dna = tifffile.imread(field[0])
    top = max(y - 32, 0)
    np.testing.assert_array_equal(
        padded.obsm["images"][edge][0, top - (y - 32) : top - (y - 32) + 10, outside:],
        dna[top : top + 10, : 64 - outside],
    )


def test_zarr_store_streams_the_same_crops(fly, tmp_path):
    store = tmp_path / "crops.zarr"
    on_disk = mm.pp.crop_cells(
        fly_fields(), fields=FIELDS_TABLE, plate_map=PLATE_MAP, crop_size=32, store=store, progress=False
    )
    assert "images" not in on_disk.obsm
    ref = on_disk.uns["images"]
    assert Path(ref["store"]) == store.resolve()
    assert ref["row_key"] in on_disk.obs
    reader = CropReader(on_disk)
    assert reader.shape == fly.obsm["images"].shape
    np.testing.assert_array_equal(reader[np.arange(len(reader))], fly.obsm["images"])
    # a subset keeps pointing at the right rows, in any order
    sub = on_disk[on_disk.obs["well"] == "B02"]
    rows = np.array([5, 0, 3, 3])
    np.testing.assert_array_equal(CropReader(sub)[rows], fly[fly.obs["well"] == "B02"].obsm["images"][rows])
    with pytest.raises(mm.MorphomuError, match="exists"):
        mm.pp.crop_cells(fly_fields()[:1], crop_size=32, store=store, progress=False)


def test_dict_of_wells_and_given_labels():
    image = tifffile.imread(STARDIST / "img2d.tif")
    truth = tifffile.imread(STARDIST / "mask2d.tif")
    two = np.stack([image, image[::-1]])  # two channels
    adata = mm.pp.crop_cells(
        {"A01": [two, two], "B02": two},
        labels={"A01": [truth, truth], "B02": truth},
        plate_map=PLATE_MAP.set_index("well"),
        crop_size=16,
        progress=False,
    )
    assert adata.obs["well"].value_counts().to_dict() == {
        "A01": 2 * adata.obs["well"].eq("B02").sum(),
        "B02": adata.obs["well"].eq("B02").sum(),
    }
    assert adata.obs["field"].nunique() == 3
    assert adata.obsm["images"].dtype == np.uint16


def test_image_container(fly):
    import squidpy as sq

    field = np.stack([tifffile.imread(p) for p in fly_fields()[1]])
    labels = segment_nuclei(field[0])
    ic = sq.im.ImageContainer(np.moveaxis(field, 0, -1), layer="image")
    ic.add_img(labels[..., None], layer="segmentation")
    from_container = mm.pp.crop_cells(ic, labels="segmentation", crop_size=32, progress=False)
    from_array = mm.pp.crop_cells(field, crop_size=32, progress=False)
    np.testing.assert_array_equal(from_container.obsm["images"], from_array.obsm["images"])
    np.testing.assert_array_equal(
        from_container.obsm["images"], fly[fly.obs["field"] == "01_POS076_D"].obsm["images"]
    )


def test_bad_input_is_named_before_work(tmp_path):
    fields = fly_fields()
    store = tmp_path / "never.zarr"
    cases = [
        ({"images": [fields[0], fields[1][:2]]}, "same number of channels"),
        ({"images": np.zeros((3, 0, 10), np.uint8)}, "empty"),
        ({"images": [(FLY / "missing_D.TIF", fields[0][1])]}, "does not exist"),
        ({"images": fields[0], "nuclei_channel": 3}, "nuclei_channel=3"),
        ({"images": fields, "fields": FIELDS_TABLE, "plate_map": PLATE_MAP.iloc[:1]}, "lacks the wells"),
        ({"images": fields, "plate_map": PLATE_MAP}, "needs each field's well"),
        ({"images": fields[0], "labels": np.zeros((10, 10), np.int32)}, "height x width"),
        ({"images": fields[0], "crop_size": 2000}, "crop_size=2000"),
        ({"images": fields[0], "crop_size": 1}, "crop_size"),
        ({"images": fields[0], "border": "mirror"}, "border"),
        ({"images": fields[0], "channel_names": ["DNA"]}, "channel_names"),
        ({"images": fields, "fields": FIELDS_TABLE.iloc[:2]}, "one row per field"),
        ({"images": [np.zeros((2, 3, 4, 5))]}, "2-d"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ContractError, match=match):
            mm.pp.crop_cells(**{"crop_size": 32, "store": store, "progress": False, **kwargs})
        assert not store.exists()
