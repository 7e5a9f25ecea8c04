"""mm.tl.fidelity: hand-computed centroids, ranks and specificity; distribution scores against references."""

from __future__ import annotations

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scipy.stats

import morphomu as mm
from morphomu.tl._fidelity import distribution_scores, provenance


def _mod(x, conditions, *, prefix, splits=None, rep="X_scgpt"):
    x = np.asarray(x, dtype=np.float32)
    obs = pd.DataFrame(
        {"treatment": pd.Categorical(conditions)}, index=[f"{prefix}{i}" for i in range(len(x))]
    )
    obs["split"] = pd.Categorical(splits if splits is not None else ["test_we"] * len(x))
    a = ad.AnnData(obs=obs)
    a.obsm[rep] = x
    return a


def _fixture() -> md.MuData:
    # real centroids: A = (1, 0), B = (0, 2), C = (1, 1); synthetic: A = (1, 0), B = (1, 2), C = (0, 1)
    real = _mod(
        [[2, 0], [0, 0], [0, 1], [0, 3], [1, 1], [1, 1], [50, -50]],
        ["A", "A", "B", "B", "C", "C", "A"],
        splits=["test_we", "test_he", "test_we", "test_he", "test_we", "test_we", "train"],
        prefix="r",
    )
    syn = _mod(
        [[1, 0], [1, 0], [1, 2], [1, 2], [0, 0], [0, 2]],
        ["A", "A", "B", "B", "C", "C"],
        splits=["test_we", "test_we", "test_he", "test_he", "test_we", "test_we"],
        prefix="s",
    )
    return md.MuData({"rna": real, "rna_synthetic": syn})


def test_hand_computed_centroid_metrics():
    mdata = _fixture()
    table = mm.tl.fidelity(mdata, inplace=False)
    assert list(table.index) == ["A", "B", "C"]
    assert table.index.name == "treatment"
    s5, s2 = np.sqrt(5.0), np.sqrt(2.0)
    # cos(s_T, r_T') by hand; rows synthetic, columns real
    sim = np.array([[1.0, 0.0, 1 / s2], [1 / s5, 2 / s5, 3 / (s5 * s2)], [0.0, 1.0, 1 / s2]])
    np.testing.assert_allclose(table["cosine"], [1.0, 2 / s5, 1 / s2], rtol=1e-12)
    assert table["rank"].tolist() == [1, 2, 2]  # the train cell (50, -50) is ignored
    expected_spec = [sim[i, i] - (sim[i].sum() - sim[i, i]) / 2 for i in range(3)]
    np.testing.assert_allclose(table["specificity"], expected_spec, rtol=1e-12)
    np.testing.assert_allclose(
        table["specificity"], [1 - 0.5 / s2, 2 / s5 - (1 / s5 + 3 / (s5 * s2)) / 2, 1 / s2 - 0.5]
    )
    np.testing.assert_allclose(table["euclidean"], [0.0, 1.0, 1.0], atol=1e-12)
    assert table["n_real"].tolist() == [2, 2, 2]
    assert table["n_synthetic"].tolist() == [2, 2, 2]
    assert "fidelity" not in mdata.uns.get("morphomu", {})  # inplace=False writes nothing


def test_summary_and_h5mu_round_trip(tmp_path):
    mdata = _fixture()
    assert mm.tl.fidelity(mdata, key_added="fid") is None
    entry = mdata.uns["morphomu"]["fid"]
    assert entry["summary"]["accuracy_at_1"] == pytest.approx(1 / 3)
    assert entry["summary"]["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 2) / 3)
    assert entry["summary"]["n_rank_le_4"] == 3
    assert entry["similarity"].shape == (3, 3)
    assert entry["similarity"][1, 2] == pytest.approx(3 / np.sqrt(10))
    path = tmp_path / "fid.h5mu"
    mdata.write(path)
    back = md.read_h5mu(path)
    got = back.uns["morphomu"]["fid"]
    pd.testing.assert_frame_equal(got["table"], entry["table"], check_dtype=False, check_index_type=False)
    assert got["summary"]["mrr"] == pytest.approx(2 / 3)
    assert list(got["conditions"]) == ["A", "B", "C"]
    assert got["params"]["rep"] == "X_scgpt"


def test_pearson_and_rank_match_scipy_on_random_data():
    rng = np.random.default_rng(0)
    conds = np.repeat(["a", "b", "c", "d", "e"], 40)
    real = rng.normal(size=(200, 6)) + np.repeat(rng.normal(size=(5, 6)) * 3, 40, axis=0)
    syn = real + rng.normal(scale=0.5, size=real.shape)
    real, syn = real.astype(np.float32).astype(np.float64), syn.astype(np.float32).astype(np.float64)
    mdata = md.MuData({"rna": _mod(real, conds, prefix="r"), "rna_synthetic": _mod(syn, conds, prefix="s")})
    table = mm.tl.fidelity(mdata, inplace=False, distributions=False)
    r = pd.DataFrame(real).groupby(conds).mean().to_numpy()
    s = pd.DataFrame(syn).groupby(conds).mean().to_numpy()
    for i in range(5):
        assert table["pearson"].iloc[i] == pytest.approx(scipy.stats.pearsonr(s[i], r[i])[0], rel=1e-10)
        cos = [1 - scipy.spatial.distance.cosine(s[i], r[j]) for j in range(5)]
        assert table["rank"].iloc[i] == 1 + sum(c > cos[i] for c in cos)
    assert table["energy"].isna().all()


def test_energy_matches_scipy_in_one_dimension():
    rng = np.random.default_rng(1)
    u, v = rng.normal(size=37), rng.normal(1.0, 2.0, size=23)
    got = distribution_scores(u[:, None], v[:, None])["energy"]
    assert got == pytest.approx(scipy.stats.energy_distance(u, v) ** 2, rel=1e-10)


def test_energy_and_mmd_match_direct_formulas():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(15, 4)), rng.normal(0.5, 1.5, size=(11, 4))

    def dist(a, b):
        return np.array([[np.sqrt(((p - q) ** 2).sum()) for q in b] for p in a])

    dxx, dyy, dxy = dist(x, x), dist(y, y), dist(x, y)
    energy = 2 * dxy.mean() - dxx.mean() - dyy.mean()
    pooled = np.concatenate([dxx[np.triu_indices(15, 1)], dyy[np.triu_indices(11, 1)], dxy.ravel()])
    sigma = np.median(pooled)

    def k(d):
        return np.exp(-(d**2) / (2 * sigma**2))

    mmd = k(dxx).mean() + k(dyy).mean() - 2 * k(dxy).mean()
    got = distribution_scores(x, y)
    assert got["energy"] == pytest.approx(energy, rel=1e-10)
    assert got["bandwidth"] == pytest.approx(sigma, rel=1e-10)
    assert got["mmd"] == pytest.approx(mmd, rel=1e-10)
    same = distribution_scores(x, x)
    assert same["energy"] == pytest.approx(0.0, abs=1e-12)
    assert same["mmd"] == pytest.approx(0.0, abs=1e-12)


def test_distribution_scores_expose_collapse_that_centroids_hide():
    rng = np.random.default_rng(3)
    conds = np.repeat(["a", "b", "c"], 300)
    centres = np.repeat(np.eye(3) * 4, 300, axis=0)
    real = centres + rng.normal(size=(900, 3))
    faithful = centres + rng.normal(size=(900, 3))
    # collapsed: every synthetic cell is its condition's real centroid (perfect centroid metrics)
    collapsed = pd.DataFrame(real).groupby(conds).transform("mean").to_numpy()
    mdata = md.MuData(
        {
            "rna": _mod(real, conds, prefix="r"),
            "good": _mod(faithful, conds, prefix="g"),
            "bad": _mod(collapsed, conds, prefix="b"),
        }
    )
    good = mm.tl.fidelity(mdata, synthetic="good", inplace=False, max_cells=200)
    bad = mm.tl.fidelity(mdata, synthetic="bad", inplace=False, max_cells=200)
    assert (bad["rank"] == 1).all() and (good["rank"] == 1).all()
    np.testing.assert_allclose(bad["euclidean"], 0.0, atol=1e-6)
    assert (bad["energy"] > 5 * good["energy"]).all()
    assert (bad["mmd"] > 5 * good["mmd"]).all()
    # subsampling is deterministic
    again = mm.tl.fidelity(mdata, synthetic="good", inplace=False, max_cells=200)
    pd.testing.assert_frame_equal(good, again)


def test_provenance_rule():
    assert provenance("X_scgpt") == ("X_scgpt", False)
    assert provenance("X_scgpt_std") == ("X_scgpt", True)
    assert provenance(None) == ("X", False)


def test_bad_input_is_refused_before_any_write():
    mdata = _fixture()
    mdata["rna_synthetic"].obsm["X_scgpt_std"] = mdata["rna_synthetic"].obsm["X_scgpt"]
    mdata["rna_synthetic"].obsm["wide"] = np.zeros((6, 3), dtype=np.float32)
    with pytest.raises(mm.ContractError, match="different provenance"):
        mm.tl.fidelity(mdata, synthetic_rep="X_scgpt_std")
    with pytest.raises(mm.ContractError, match="features"):
        mm.tl.fidelity(mdata, synthetic_rep="wide")
    with pytest.raises(mm.ContractError, match="not a modality"):
        mm.tl.fidelity(mdata, synthetic="img_synthetic")
    with pytest.raises(mm.ContractError, match="obsm"):
        mm.tl.fidelity(mdata, rep="X_vit")
    # a condition missing from the synthetic side
    cut = md.MuData({"rna": mdata["rna"].copy(), "rna_synthetic": mdata["rna_synthetic"][:4].copy()})
    with pytest.raises(mm.ContractError, match=r"only real \['C'\]"):
        mm.tl.fidelity(cut)
    # fewer than two conditions
    one = md.MuData({"rna": mdata["rna"][:2].copy(), "rna_synthetic": mdata["rna_synthetic"][:2].copy()})
    with pytest.raises(mm.ContractError, match="at least two conditions"):
        mm.tl.fidelity(one)
    with pytest.raises(mm.ContractError, match="no cells in splits"):
        mm.tl.fidelity(mdata, splits=("val",))
    with pytest.raises(mm.ContractError, match="same data"):
        mm.tl.fidelity(mdata, synthetic="rna")
    assert "morphomu" not in mdata.uns


def test_splits_none_uses_every_cell():
    mdata = _fixture()
    table = mm.tl.fidelity(mdata, splits=None, inplace=False)
    assert table.loc["A", "n_real"] == 3  # the train cell counts now
    assert table.loc["A", "cosine"] < 1.0
