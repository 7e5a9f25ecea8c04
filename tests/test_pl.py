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
    from matplotlib.colors import to_rgba

    axes = mm.pl.fidelity(fid_mdata, save=tmp_path / "fid.png")
    assert _png(tmp_path / "fid.png")
    table = fid_mdata.uns["morphomu"]["fidelity"]["table"].sort_values(
        ["rank", "specificity"], ascending=[True, False]
    )
    assert [t.get_text() for t in axes[0].get_yticklabels()] == table.index.tolist()
    # the colour key: every colour a bar has is explained by a legend entry
    (key,) = axes[0].figure.legends
    explained = {
        t.get_text(): to_rgba(p.get_facecolor())
        for t, p in zip(key.get_texts(), key.get_patches(), strict=True)
    }
    assert list(explained) == ["rank 1", "rank 2-4", "rank > 4", "specificity > 0", "specificity <= 0"]
    for bar, rank in zip(axes[0].patches, table["rank"], strict=True):
        label = "rank 1" if rank == 1 else "rank 2-4" if rank <= 4 else "rank > 4"
        assert to_rgba(bar.get_facecolor()) == explained[label]
    for bar, spec in zip(axes[1].patches, table["specificity"], strict=True):
        label = "specificity > 0" if spec > 0 else "specificity <= 0"
        assert to_rgba(bar.get_facecolor()) == explained[label]
    plt.close("all")
    # axes of the caller's figure: the key goes inside each panel
    _, own = plt.subplots(1, 2)
    axes = mm.pl.fidelity(fid_mdata, ax=own)
    assert [t.get_text() for t in axes[0].get_legend().get_texts()] == ["rank 1", "rank 2-4", "rank > 4"]
    assert [t.get_text() for t in axes[1].get_legend().get_texts()] == ["specificity > 0", "specificity <= 0"]
    plt.close("all")
    with pytest.raises(mm.ContractError, match="run mm.tl.fidelity"):
        mm.pl.fidelity(fid_mdata, key="other")
    with pytest.raises(mm.MorphomuError, match="two Axes"):
        mm.pl.fidelity(fid_mdata, ax=own[:1])


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


LONG_INPUTS = [["img/X_vit", "rna_synthetic/X_scgpt_std"], ["img/X_vit"], ["rna/X_scgpt"]]


def _classify_mdata(n_keys, test_sets, *, inputs=LONG_INPUTS):
    """A MuData holding ``n_keys`` classify records (as mm.tl.classify writes them)."""
    from morphomu._uns import store

    a = ad.AnnData(obs=pd.DataFrame(index=["c0"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        mdata = md.MuData({"img": a})
    for i in range(n_keys):
        results = pd.DataFrame(
            {
                "seed": [1, 2] * len(test_sets),
                "test_set": np.repeat(test_sets, 2),
                "balanced_accuracy": 0.2 + 0.01 * i,
            }
        )
        multi = inputs is not None and i >= len(inputs)  # a second round of the inputs, multi-profile
        params = {"setting": "multi" if multi else "single", "k": 32 if multi else 1}
        if inputs is not None:
            params["inputs"] = inputs[i % len(inputs)]
        store(
            mdata, f"classify_{i}", {"results": results, "chance": 1 / 28, "params": params}, tool="classify"
        )
    return mdata


@pytest.mark.parametrize("n_keys", [1, 3, 10])
@pytest.mark.parametrize("test_sets", [["test_we"], ["test_we", "test_he"]])
@pytest.mark.parametrize("source", ["keys", "dict"])
def test_classification_plot_keeps_its_axes_readable(n_keys, test_sets, source):
    """Long method names and 1-10 keys: the data axes keep at least 40 % of the figure's width."""
    import matplotlib.pyplot as plt

    if source == "keys":
        mdata = _classify_mdata(n_keys, test_sets)
        ax = mm.pl.classification(mdata, keys=[f"classify_{i}" for i in range(n_keys)])
    else:
        results = {
            f"Image + RNA (synthetic, avgpool k=32) {i}": pd.DataFrame(
                {"seed": 1, "test_set": test_sets, "balanced_accuracy": 0.2 + 0.01 * i}
            )
            for i in range(n_keys)
        }
        ax = mm.pl.classification(results, chance=1 / 28)
    ax.figure.canvas.draw()
    assert ax.get_position().width >= 0.4
    assert ax.get_position().height >= 0.3
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(texts) == n_keys + 1 and texts[-1] == "chance (0.036)"
    plt.close("all")


def test_classification_legend_names_inputs():
    import matplotlib.pyplot as plt

    mdata = _classify_mdata(5, ["test_we"])
    ax = mm.pl.classification(mdata, keys=[f"classify_{i}" for i in range(5)])
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts == [
        "img/X_vit + rna_synthetic/X_scgpt_std",
        "img/X_vit",
        "rna/X_scgpt",
        "img/X_vit + rna_synthetic/X_scgpt_std (multi-profile, k=32)",
        "img/X_vit (multi-profile, k=32)",
        "chance (0.036)",
    ]
    # bar heights follow their own key (0.2 + 0.01 i)
    heights = [round(p.get_height(), 4) for p in ax.patches if p.get_height() > 0]
    assert heights == [0.2, 0.21, 0.22, 0.23, 0.24]
    plt.close("all")
    # no inputs recorded: the key; the same inputs twice: told apart by their keys; 'mod:rep' of old records
    mdata = _classify_mdata(2, ["test_we"], inputs=None)
    ax = mm.pl.classification(mdata, keys=["classify_0", "classify_1"])
    assert [t.get_text() for t in ax.get_legend().get_texts()][:2] == ["classify_0", "classify_1"]
    plt.close("all")
    mdata = _classify_mdata(2, ["test_we"], inputs=[["img:X_vit"], ["img:X_vit"]])
    ax = mm.pl.classification(mdata, keys=["classify_0", "classify_1"])
    assert [t.get_text() for t in ax.get_legend().get_texts()][:2] == [
        "img/X_vit [classify_0]",
        "img/X_vit [classify_1]",
    ]
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
