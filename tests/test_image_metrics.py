"""FID / KID / IS: exact against scipy / torchmetrics references; image_metrics on tiles, embeddings, ViT."""

from __future__ import annotations

import warnings

import mudata as md
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import linalg

import morphomu as mm
from morphomu import ContractError, MorphomuError
from morphomu._validation import check_uns_writable
from morphomu.tl._image_metrics import inception_score, kernel_distance

CYTOTOXIC = ["Colchicine", "(R)-MG132", "Cycloheximide", "Thapsigargin"]


def _fid_scipy(x, y):
    """pytorch-fid's formula with scipy.linalg.sqrtm (the reference implementation)."""
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(s1)) * 1e-6
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    return float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real))


@pytest.fixture(scope="module")
def sim():
    mdata = mm.datasets.simulate_scgenescope(
        seed=2, n_img_cells=1600, n_rna_cells=200, image_dim=20, with_images=True, image_size=32
    )
    return mdata


def test_frechet_distance_matches_scipy_and_the_gaussian_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(8, 8))
    x = rng.normal(size=(400, 8)) @ a
    y = rng.normal(size=(300, 8)) @ a.T + 0.5
    assert mm.tl.frechet_distance(x, y) == pytest.approx(_fid_scipy(x, y), rel=1e-8)
    assert mm.tl.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    # fewer samples than features: singular covariances, still finite and equal to the reference
    xs, ys = rng.normal(size=(10, 30)), rng.normal(size=(12, 30)) * 2.0
    assert mm.tl.frechet_distance(xs, ys) == pytest.approx(_fid_scipy(xs, ys), rel=1e-6)
    # closed form for Gaussians with diagonal covariances: |mu1 - mu2|^2 + sum (sqrt(s1) - sqrt(s2))^2
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.0])
    v1, v2 = np.array([1.0, 4.0, 0.25]), np.array([2.0, 1.0, 0.25])
    big1 = mu1 + rng.normal(size=(200_000, 3)) * np.sqrt(v1)
    big2 = mu2 + rng.normal(size=(200_000, 3)) * np.sqrt(v2)
    closed = float(((mu1 - mu2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum())
    assert mm.tl.frechet_distance(big1, big2) == pytest.approx(closed, rel=0.02)
    with pytest.raises(ContractError, match="x has 3 features but y has 8"):
        mm.tl.frechet_distance(big1[:5], x)


def test_kid_and_is_match_torchmetrics():
    from torchmetrics.image.inception import InceptionScore
    from torchmetrics.image.kid import KernelInceptionDistance

    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 16))
    y = rng.normal(size=(60, 16)) * 1.3 + 0.2
    kid = KernelInceptionDistance(feature=torch.nn.Identity(), subsets=3, subset_size=60)
    kid.update(torch.as_tensor(x), real=True)
    kid.update(torch.as_tensor(y), real=False)
    ref_mean, ref_std = (float(v) for v in kid.compute())
    mean, std = kernel_distance(x, y, n_subsets=3, subset_size=60)
    assert mean == pytest.approx(ref_mean, rel=1e-10)
    assert std == pytest.approx(ref_std, abs=1e-12)
    # subsets: the mean over subsets of the same estimator, 0 in expectation for one distribution
    same = [
        kernel_distance(
            rng.normal(size=(400, 16)), rng.normal(size=(400, 16)), n_subsets=20, subset_size=100, seed=s
        )[0]
        for s in range(3)
    ]
    assert abs(np.mean(same)) < 0.01
    assert kernel_distance(x, y, n_subsets=20, subset_size=30, seed=5) == kernel_distance(
        x, y, n_subsets=20, subset_size=30, seed=5
    )
    # a subset size above the sample draws half of it, so the spread is not the 0 of identical subsets
    capped, capped_std = kernel_distance(x, y, n_subsets=50)
    assert (capped, capped_std) == kernel_distance(x, y, n_subsets=50, subset_size=30)
    assert capped_std > 0 and capped == pytest.approx(mean, abs=4 * capped_std)
    logits = rng.normal(size=(80, 5)) * 2.0
    score = InceptionScore(feature=torch.nn.Identity(), splits=1)
    score.update(torch.as_tensor(logits))
    probs = torch.softmax(torch.as_tensor(logits), 1).numpy()
    assert inception_score(probs, n_splits=1)[0] == pytest.approx(float(score.compute()[0]), rel=1e-10)
    assert inception_score(np.full((10, 4), 0.25))[0] == pytest.approx(1.0)
    with pytest.raises(ContractError, match="finite and non-negative"):
        inception_score(logits)
    with pytest.raises(ContractError, match="rows must sum to 1"):
        inception_score(np.abs(logits))


def test_fid_kid_are_near_zero_for_halves_and_large_for_a_shift(sim):
    img = sim["img"]
    treatment = img.obs["treatment"].astype(str).to_numpy()
    cyto = img[np.isin(treatment, CYTOTOXIC)].copy()
    half = np.random.default_rng(0).permutation(img.n_obs) < img.n_obs // 2
    first, second = img[half].copy(), img[~half].copy()
    same = mm.tl.image_metrics(first, second, treatment_key=None, n_subsets=20, subset_size=100)
    shifted = mm.tl.image_metrics(first, cyto, treatment_key=None, n_subsets=20, subset_size=100)
    assert same.attrs["features"] == "readouts"  # no checkpoint: the offline default
    s, t = same.loc["all"], shifted.loc["all"]
    print(
        f"readouts: FID halves {s.fid:.3f} vs shifted {t.fid:.3f}; KID {s.kid_mean:.4f} vs {t.kid_mean:.4f}"
    )
    assert t.fid > 5 * s.fid and t.fid > 1.0
    assert abs(s.kid_mean) < 0.2 * t.kid_mean
    assert np.isnan(s.is_mean)  # treatment_key=None and no classifier: no IS


def test_mudata_groups_embeddings_and_is_with_a_given_classifier(sim):
    from sklearn.linear_model import LogisticRegression

    img = sim["img"]
    rng = np.random.default_rng(3)
    fake = img[rng.permutation(img.n_obs)[:800]].copy()
    fake.obs_names = [f"gen-{i}" for i in range(fake.n_obs)]
    fake.obsm["X_vit"] = fake.obsm["X_vit"] + rng.normal(scale=0.5, size=fake.obsm["X_vit"].shape).astype(
        np.float32
    )
    mdata = md.MuData({"img": img.copy(), "img_synthetic": fake})
    uns_before = dict(mdata.uns)
    labels = img.obs["treatment"].astype(str).to_numpy()
    clf = LogisticRegression(max_iter=300).fit(img.obsm["X_vit"], labels)
    table = mm.tl.image_metrics(
        mdata,
        "img_synthetic",
        features="X_vit",
        groupby="treatment",
        classifier=clf.predict_proba,
        n_subsets=10,
        subset_size=100,
    )
    assert table.index[0] == "all" and set(table.index[1:]) == set(fake.obs["treatment"].astype(str))
    assert list(table.columns) == [
        "n_real",
        "n_generated",
        "fid",
        "kid_mean",
        "kid_std",
        "is_mean",
        "is_std",
        "is_real",
    ]
    assert table.loc["all", "n_real"] == img.n_obs and table.loc["all", "n_generated"] == 800
    ref = mm.tl.frechet_distance(img.obsm["X_vit"], fake.obsm["X_vit"])
    assert table.loc["all", "fid"] == pytest.approx(ref, rel=1e-9)
    group = "DMSO"
    rows_r = labels == group
    rows_g = fake.obs["treatment"].astype(str).to_numpy() == group
    assert table.loc[group, "fid"] == pytest.approx(
        mm.tl.frechet_distance(img.obsm["X_vit"][rows_r], fake.obsm["X_vit"][rows_g]), rel=1e-9
    )
    probs = clf.predict_proba(fake.obsm["X_vit"].astype(np.float32))
    assert table.loc["all", "is_mean"] == pytest.approx(inception_score(probs, seed=0)[0], rel=1e-9)
    # per treatment the classifier is consistent (low IS, TRIDENT's reading), overall it is diverse
    assert table.loc["all", "is_mean"] > table.iloc[1:]["is_mean"].median()
    assert table["is_mean"].min() >= 1.0 and table["is_mean"].max() <= 29.0
    entry = mdata.uns["morphomu"]["image_metrics"]
    pd.testing.assert_frame_equal(entry["table"], table, check_names=False)
    assert entry["params"]["features"] == "X_vit" and "lower is better" in entry["params"]["is_reading"]
    check_uns_writable(mdata.uns)
    assert set(uns_before) <= set(mdata.uns)


def test_is_with_a_treatment_classifier_trained_on_real_features(sim):
    img = sim["img"]
    keep = img.obs["treatment"].astype(str).isin(["DMSO", *CYTOTOXIC]).to_numpy()
    real = img[keep].copy()
    gen = real.copy()
    gen.obs_names = [f"g{i}" for i in range(gen.n_obs)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = mm.tl.image_metrics(
            real,
            gen,
            features="X_vit",
            preset={"preset": "tiny", "max_epochs": 3},
            n_subsets=5,
            subset_size=50,
        )
    row = table.loc["all"]
    assert row.fid == pytest.approx(0.0, abs=1e-6)  # identical features
    assert row.is_mean == pytest.approx(row.is_real, rel=0.05)  # same tiles, same classifier
    assert 1.0 < row.is_mean <= 5.0  # five classes


def test_vit_features_embed_each_stain_from_a_local_checkpoint(sim, tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    kwargs = {"img_size": 32, "patch_size": 8, "depth": 2}
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **kwargs)
    path = tmp_path / "tiny.safetensors"
    save_file(net.state_dict(), str(path))
    img = sim["img"]
    real, gen = img[:120].copy(), img[120:240].copy()
    vit = {"model_kwargs": kwargs, "batch_size": 64}
    table = mm.tl.image_metrics(
        real,
        gen,
        checkpoint=path,
        model="vit_tiny_patch16_224",
        vit_kwargs=vit,
        treatment_key=None,
        n_subsets=5,
        subset_size=100,
    )
    assert table.attrs["features"] == "vit"
    for a in (real, gen):
        mm.pp.embed_images(
            a,
            checkpoint=path,
            model="vit_tiny_patch16_224",
            model_kwargs=kwargs,
            progress=False,
            key_added="emb",
        )
    assert real.obsm["emb"].shape[1] == 5 * 192  # five stains embedded separately, concatenated
    assert table.loc["all", "fid"] == pytest.approx(
        mm.tl.frechet_distance(real.obsm["emb"], gen.obsm["emb"]), rel=1e-5
    )


def test_plain_feature_arrays_and_errors_before_work(sim):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(50, 4)), rng.normal(size=(40, 4))
    table = mm.tl.image_metrics(x, y, n_subsets=4, subset_size=40)
    assert table.attrs["features"] == "given" and np.isnan(table.loc["all", "is_mean"])
    assert table.loc["all", "fid"] == pytest.approx(mm.tl.frechet_distance(x, y))
    mdata = md.MuData({"img": sim["img"].copy(), "img_synthetic": sim["img"][:100].copy()})
    mdata["img_synthetic"].obs_names = [f"s{i}" for i in range(100)]
    before = set(mdata.uns.get("morphomu", {}))
    cases = [
        ({"real": mdata, "generated": "nope"}, MorphomuError, r"generated='nope' is not a modality"),
        ({"real": mdata, "features": "X_missing"}, ContractError, r"features='X_missing' is not in"),
        ({"real": mdata, "features": "vit"}, MorphomuError, r"features='vit' needs checkpoint="),
        ({"real": mdata, "groupby": "dose"}, ContractError, r"groupby='dose' is not a column"),
        ({"real": mdata, "n_subsets": 0}, ContractError, r"n_subsets must be a positive integer"),
        (
            {"real": sim["img"][:0].copy(), "generated": sim["img"][:5].copy(), "features": "X_vit"},
            ContractError,
            r"real has no rows",
        ),
        ({"real": x, "generated": "img_synthetic"}, ContractError, r"needs real to be a MuData"),
        ({"real": x, "generated": rng.normal(size=(5, 3))}, ContractError, r"4 columns but generated ones 3"),
        ({"real": x[:, :, None], "generated": y}, ContractError, r"tiles \(n, C, H, W\) or features"),
        (
            {"real": mdata, "features": "X_vit", "classifier": "svm"},
            ContractError,
            r"classifier must be a trained",
        ),
    ]
    for kwargs, error, match in cases:
        with pytest.raises(error, match=match):
            mm.tl.image_metrics(**kwargs)
    assert set(mdata.uns.get("morphomu", {})) == before


# ---------------------------------------------------------------------------------------------------
# renamed arguments; keys that follow the data
# ---------------------------------------------------------------------------------------------------
TINY_IS = {"preset": "tiny", "max_epochs": 2}


def _is_sets(sim):
    img = sim["img"]
    keep = img.obs["treatment"].astype(str).isin(["DMSO", *CYTOTOXIC]).to_numpy()
    rows = np.flatnonzero(keep)
    real, gen = img[rows[::2]].copy(), img[rows[1::2]].copy()
    return real, gen


@pytest.fixture(scope="module")
def is_reference(sim):
    real, gen = _is_sets(sim)
    kw = {"features": "X_vit", "n_subsets": 5, "subset_size": 50}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mm.MorphomuWarning)
        return mm.tl.image_metrics(real, gen, treatment_key="treatment", preset=TINY_IS, **kw)


@pytest.mark.parametrize(
    ("old", "new", "value"),
    [("label_key", "treatment_key", "treatment"), ("classifier_hparams", "preset", TINY_IS)],
)
def test_former_argument_names_warn_and_give_the_same_table(sim, is_reference, old, new, value):
    real, gen = _is_sets(sim)
    kwargs = {
        "treatment_key": "treatment",
        "preset": TINY_IS,
        "features": "X_vit",
        "n_subsets": 5,
        "subset_size": 50,
    }
    del kwargs[new]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mm.MorphomuWarning)
        with pytest.warns(FutureWarning, match=rf"image_metrics: {old}= was renamed to {new}="):
            table = mm.tl.image_metrics(real, gen, **{old: value}, **kwargs)
    assert np.isfinite(is_reference.loc["all", "is_mean"])
    pd.testing.assert_frame_equal(table, is_reference)


def test_mod_images_key_and_treatment_key_follow_the_record_of_generate_morphology(sim):
    """Real tiles in modality 'cells' under 'tiles', classes in 'compound': read from the generator's record."""
    from morphomu._uns import store

    img = sim["img"]
    keep = np.flatnonzero(img.obs["treatment"].astype(str).isin(["DMSO", *CYTOTOXIC]).to_numpy())
    cells, gen = img[keep[::2]].copy(), img[keep[1::2]].copy()
    for a in (cells, gen):
        a.obsm["tiles"] = a.obsm.pop("images")
        a.obs = a.obs.rename(columns={"treatment": "compound"})
    gen.obs_names = [f"gen{i}" for i in range(gen.n_obs)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        mdata = md.MuData({"cells": cells, "img_synthetic": gen})
    params = {"image_mod": "cells", "images_key": "tiles", "treatment_key": "compound", "rna_mod": "rna"}
    store(mdata, "img_synthetic", {"params": params}, tool="generate_morphology")
    kw = {"features": "readouts", "preset": TINY_IS, "n_subsets": 5, "subset_size": 50}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mm.MorphomuWarning)
        table = mm.tl.image_metrics(mdata, "img_synthetic", key_added="followed", **kw)
        given = mm.tl.image_metrics(
            mdata, "img_synthetic", mod="cells", images_key="tiles", treatment_key="compound", **kw
        )
    pd.testing.assert_frame_equal(table, given)
    assert table.loc["all", "n_real"] == cells.n_obs and np.isfinite(table.loc["all", "is_mean"])
    entry = mdata.uns["morphomu"]["followed"]
    assert entry["tool"] == "image_metrics"
    recorded = {k: entry["params"][k] for k in ("mod", "images_key", "treatment_key")}
    assert recorded == {"mod": "cells", "images_key": "tiles", "treatment_key": "compound"}
    assert entry["params"]["preset"]["preset"] == "tiny"
    # the caller's names win over the record; None still skips IS
    with pytest.raises(ContractError, match="treatment_key='treatment' is not a column"):
        mm.tl.image_metrics(mdata, "img_synthetic", treatment_key="treatment", **kw)
    skipped = mm.tl.image_metrics(mdata, "img_synthetic", treatment_key=None, **kw)
    assert np.isnan(skipped.loc["all", "is_mean"])
    assert skipped.loc["all", "fid"] == pytest.approx(table.loc["all", "fid"])
