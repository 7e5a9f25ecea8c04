"""pl.images / pl.morphology_embedding / pl.readouts render real figures with the expected content."""

from __future__ import annotations

import matplotlib as mpl

mpl.use("Agg")

import matplotlib.pyplot as plt
import mudata as md
import numpy as np
import pytest
from PIL import Image

import morphomu as mm
from morphomu import ContractError
from morphomu.pl._morphology import composite

CONDITIONS = ["Colchicine", "Thapsigargin", "Caffeine"]


@pytest.fixture(scope="module")
def mdata():
    sim = mm.datasets.simulate_scgenescope(
        seed=4, n_img_cells=1200, n_rna_cells=200, image_dim=20, with_images=True, image_size=32
    )
    img = sim["img"]
    rng = np.random.default_rng(0)
    gen = img[rng.permutation(img.n_obs)[:600]].copy()
    gen.obs_names = [f"gen-{i}" for i in range(gen.n_obs)]
    gen.obsm["X_vit"] = gen.obsm["X_vit"] + rng.normal(scale=0.3, size=gen.obsm["X_vit"].shape).astype(
        np.float32
    )
    gen.obs["moa"] = np.where(gen.obs["treatment"].astype(str).isin(["Colchicine"]), "microtubule", "other")
    return md.MuData({"img": img.copy(), "img_synthetic": gen})


def _non_blank(path) -> float:
    pixels = np.asarray(Image.open(path).convert("L"), dtype=float)
    return float(pixels.std())


def test_composite_keeps_every_channel():
    tiles = np.zeros((2, 5, 8, 8), np.float32)
    for c in range(5):
        tiles[0, c, c, :] = 1.0  # one bright row per channel
    rgb = composite(tiles, mm._constants.STAINS)
    assert rgb.shape == (2, 8, 8, 3) and rgb.min() >= 0 and rgb.max() <= 1
    assert all(rgb[0, c].sum() > 0 for c in range(5))  # every channel visible
    assert rgb[1].sum() == 0


def test_images_grid(mdata, tmp_path):
    before = mdata["img"].obsm["images"].copy()
    path = tmp_path / "tiles.png"
    fig = mm.pl.images(mdata, "img_synthetic", groups=["DMSO", "Colchicine"], n_per_group=3, save=path)
    assert len(fig.axes) == 4 * 3  # 2 groups x (real, generated) rows, 3 composite tiles each
    labels = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
    assert labels == ["DMSO\nreal", "DMSO\ngenerated", "Colchicine\nreal", "Colchicine\ngenerated"]
    assert "DNA, RNA, AGP, Mito, ER" in fig._suptitle.get_text()
    assert all(ax.images for ax in fig.axes)
    assert path.stat().st_size > 5000 and _non_blank(path) > 5
    plt.close(fig)
    fig = mm.pl.images(mdata["img"], None, groups=["DMSO"], n_per_group=2, mode="channels")
    assert len(fig.axes) == 2 * 5  # each channel of each tile separately
    assert [ax.get_title() for ax in fig.axes[:5]] == list(mm._constants.STAINS)
    plt.close(fig)
    np.testing.assert_array_equal(mdata["img"].obsm["images"], before)
    with pytest.raises(ContractError, match="has no tiles of groups"):
        mm.pl.images(mdata, "img_synthetic", groups=["nothing"])
    with pytest.raises(ContractError, match="mode must be"):
        mm.pl.images(mdata, "img_synthetic", mode="rgb")


def test_morphology_embedding_lda_and_umap(mdata, tmp_path):
    path = tmp_path / "embedding.png"
    obsm_before = set(mdata["img"].obsm)
    axes = mm.pl.morphology_embedding(
        mdata, "img_synthetic", rep="X_vit", conditions=CONDITIONS, max_cells=40, save=path
    )
    assert len(axes) == 2
    assert axes[0].get_xlabel() == "LD1" and axes[0].get_ylabel() == "LD2"
    assert sorted(t.get_text() for t in axes[0].get_legend().get_texts()) == sorted(CONDITIONS)
    assert [t.get_text() for t in axes[1].get_legend().get_texts()] == ["control", "real", "generated"]
    assert axes[1].get_xlabel() == "UMAP1"
    n_points = sum(len(c.get_offsets()) for c in axes[1].collections)
    assert n_points == sum(
        min(40, int((mdata[m].obs["treatment"] == t).sum()))
        for m, ts in (("img", ["DMSO", *CONDITIONS]), ("img_synthetic", CONDITIONS))
        for t in ts
    )
    assert _non_blank(path) > 5
    plt.close(axes[0].figure)
    assert set(mdata["img"].obsm) == obsm_before
    # a mechanism-of-action column with two values and readout features
    axes = mm.pl.morphology_embedding(
        mdata, "img_synthetic", rep="readouts", lda_key="moa", conditions=CONDITIONS, max_cells=30
    )
    assert sorted(t.get_text() for t in axes[0].get_legend().get_texts()) == ["microtubule", "other"]
    assert axes[0].get_ylabel() == "jitter"  # two classes: one discriminant
    plt.close(axes[0].figure)
    with pytest.raises(ContractError, match="control='PBS' has no real cells"):
        mm.pl.morphology_embedding(mdata, "img_synthetic", control="PBS")


def test_readout_distributions(mdata, tmp_path):
    path = tmp_path / "readouts.png"
    axes = mm.pl.readouts(mdata, "img_synthetic", conditions=["Colchicine", "Caffeine"], save=path)
    assert [ax.get_ylabel() for ax in axes] == ["area_cell", "area_cytoplasm", "area_nucleus"]
    assert [t.get_text() for t in axes[0].get_xticklabels()] == ["DMSO", "Colchicine", "Caffeine"]
    assert [t.get_text() for t in axes[0].get_legend().get_texts()] == ["control", "real", "generated"]
    assert axes[1].get_legend() is None
    assert len(axes[0].patches) >= 5  # boxes: control, then real + generated for each treatment
    assert _non_blank(path) > 5
    plt.close(axes[0].figure)
    axes = mm.pl.readouts(
        mdata, "img_synthetic", conditions=["Colchicine"], columns=["cell_count"], kind="violin"
    )
    assert len(axes) == 1 and axes[0].get_ylabel() == "cell_count"
    plt.close(axes[0].figure)
    with pytest.raises(ContractError, match=r"columns \['perimeter'\] are not readouts"):
        mm.pl.readouts(mdata, "img_synthetic", conditions=["Colchicine"], columns=["perimeter"])


def test_former_argument_names_warn(mdata):
    """``real=`` (now ``mdata``) and ``groupby=`` (now ``treatment_key``) keep working for one release."""
    with pytest.warns(FutureWarning, match=r"real= was renamed to mdata="):
        fig = mm.pl.images(real=mdata["img"], generated=None, groups=["DMSO"], n_per_group=1)
    assert [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()] == ["DMSO\nreal"]
    plt.close(fig)
    with pytest.warns(FutureWarning, match=r"groupby= was renamed to treatment_key="):
        axes = mm.pl.readouts(
            mdata, "img_synthetic", groupby="treatment", conditions=["Colchicine"], columns=["cell_count"]
        )
    assert [t.get_text() for t in axes[0].get_xticklabels()] == ["DMSO", "Colchicine"]
    plt.close(axes[0].figure)
