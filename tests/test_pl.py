"""mm.pl evaluation plots render to PNG files and read the stored results."""

from __future__ import annotations

import warnings

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest

import morphomu as mm


def _png(path) -> bool:
    return path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 2000


@pytest.fixture
def fid_mdata():
    rng = np.random.default_rng(0)
    conds = np.repeat([f"C{i}" for i in range(5)], 60)
    centres = np.repeat(rng.normal(size=(5, 8)) * 3, 60, axis=0)
    mods = {}
    for name, noise in (("rna", 1.0), ("rna_synthetic", 1.3)):
        a = ad.AnnData(
            obs=pd.DataFrame(
                {"treatment": conds, "split": "test_we"}, index=[f"{name}{i}" for i in range(300)]
            )
        )
        a.obsm["X_scgpt"] = (centres + rng.normal(scale=noise, size=centres.shape)).astype(np.float32)
        mods[name] = a
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        mdata = md.MuData(mods)
    mm.tl.fidelity(mdata)
    return mdata


def test_fidelity_plot(fid_mdata, tmp_path):
    import matplotlib.pyplot as plt

    axes = mm.pl.fidelity(fid_mdata, save=tmp_path / "fid.png")
    assert _png(tmp_path / "fid.png")
    assert [t.get_text() for t in axes[0].get_yticklabels()] == fid_mdata.uns["morphomu"]["fidelity"][
        "table"
    ].sort_values(["rank", "specificity"], ascending=[True, False]).index.tolist()
    plt.close("all")
    with pytest.raises(mm.ContractError, match="run mm.tl.fidelity"):
        mm.pl.fidelity(fid_mdata, key="other")


@pytest.mark.slow  # scanpy's UMAP compiles numba kernels on first use (~1 min cold)
def test_embedding_overlay(fid_mdata, tmp_path):
    import matplotlib.pyplot as plt

    ax = mm.pl.embedding_overlay(fid_mdata, n_top=3, max_cells=40, save=tmp_path / "umap.png")
    assert _png(tmp_path / "umap.png")
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(legend) == 3 + 2 and legend[-2:] == ["real", "synthetic"]
    # 2 scatter layers of cells + one centroid per condition and side
    assert len(ax.collections) == 2 + 3 * 2
    assert "X_umap" not in fid_mdata["rna"].obsm
    plt.close("all")


def test_classification_plot(tmp_path):
    import matplotlib.pyplot as plt

    results = {
        "image": pd.DataFrame(
            {
                "seed": [1, 2, 1, 2],
                "test_set": ["test_we", "test_we", "test_he", "test_he"],
                "balanced_accuracy": [0.2, 0.3, 0.1, 0.15],
            }
        ),
        "rna": pd.DataFrame(
            {
                "seed": [1, 2, 1, 2],
                "test_set": ["test_we", "test_we", "test_he", "test_he"],
                "balanced_accuracy": [0.4, 0.45, 0.35, 0.3],
            }
        ),
    }
    ax = mm.pl.classification(results, chance=1 / 28, save=tmp_path / "bars.png")
    assert _png(tmp_path / "bars.png")
    heights = sorted(round(p.get_height(), 4) for p in ax.patches if p.get_height() > 0)
    assert heights == [0.125, 0.25, 0.325, 0.425]
    assert any(np.allclose(line.get_ydata(), 1 / 28) for line in ax.get_lines())
    plt.close("all")
    with pytest.raises(mm.MorphomuError, match="metric"):
        mm.pl.classification(results, metric="auroc")


@pytest.mark.parametrize("n_keys", [1, 2, 10])
@pytest.mark.parametrize("test_sets", [["test_we"], ["test_we", "test_he"]])
def test_classification_plot_keeps_its_axes_readable(n_keys, test_sets):
    """Long method names and 1-10 keys: the data axes keep at least 40 % of the figure's width."""
    import matplotlib.pyplot as plt

    results = {
        f"Image + RNA (synthetic, avgpool k=32) {i}": pd.DataFrame(
            {"seed": 1, "test_set": test_sets, "balanced_accuracy": 0.2 + 0.01 * i}
        )
        for i in range(n_keys)
    }
    ax = mm.pl.classification(results, chance=1 / 28)
    ax.figure.canvas.draw()
    assert ax.get_position().width >= 0.4
    assert ax.get_position().height >= 0.4
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts[:n_keys] == list(results)
    plt.close("all")


def test_training_history(tmp_path):
    import matplotlib.pyplot as plt

    history = {
        "train_loss": pd.DataFrame({"train_loss": [2.0, 1.5, 1.0]}, index=pd.Index([0, 1, 2], name="epoch")),
        "validation_balanced_accuracy": pd.DataFrame({"validation_balanced_accuracy": [0.2, 0.4, 0.5]}),
    }
    ax = mm.pl.training_history(history, save=tmp_path / "hist.png")
    assert _png(tmp_path / "hist.png")
    assert [line.get_label() for line in ax.get_legend().get_lines()] == [
        "train_loss",
        "validation_balanced_accuracy",
    ]
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), [2.0, 1.5, 1.0])
    ax.figure.canvas.draw()
    ticks = ax.get_xticks()
    assert np.array_equal(ticks, np.round(ticks))  # whole epochs only
    plt.close("all")
    with pytest.raises(mm.MorphomuError, match="no training history"):
        mm.pl.training_history(object())
