"""The simulated scGeneScope experiment: contract layout, ground truth and its measurable properties."""

from __future__ import annotations

import tracemalloc
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage, sparse

import morphomu as mm
from morphomu import _constants as C
from morphomu._errors import ContractError, MorphomuError
from morphomu.datasets._simulate import LATENT_AXES, _gene_symbols, _scgpt_like_embedding

SMALL = {"n_img_cells": 600, "n_rna_cells": 400}


@pytest.fixture(scope="session")
def sim():
    """The default-size experiment (the statistical properties are measured on it)."""
    return mm.datasets.simulate_scgenescope(seed=0)


@pytest.fixture(scope="session")
def small():
    return mm.datasets.simulate_scgenescope(seed=7, **SMALL)


# --- helpers ---------------------------------------------------------------------------------------------


def _features(mdata, mod):
    adata = mdata[mod]
    rep = C.IMAGE_REP if mod == C.IMAGE_MOD else C.RNA_REP
    obs = adata.obs
    return (
        np.asarray(adata.obsm[rep], dtype=np.float32),
        obs[C.TREATMENT_KEY].astype(str).to_numpy(),
        obs[C.REPLICATE_KEY].astype(int).to_numpy(),
    )


def _pcs(x, train, n_components):
    """Standardise and project on principal components fitted on the training cells only."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x[train])
    pca = PCA(n_components, svd_solver="randomized", random_state=0).fit(scaler.transform(x[train]))
    z = pca.transform(scaler.transform(x))
    return z / z[train].std(axis=0)


@pytest.fixture(scope="session")
def pcs(sim):
    """Per modality: 50 principal components (fitted on replicate 3), treatments and replicates of the cells."""
    out = {}
    for mod in (C.IMAGE_MOD, C.RNA_MOD):
        x, treatment, replicate = _features(sim, mod)
        out[mod] = (_pcs(x, replicate == 3, 50), treatment, replicate)
    return out


def _cell_accuracy(z, treatment, replicate):
    """28-class cell-level balanced accuracy, trained on replicate 3, on WE (replicate 4) and HE (round 2)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score

    compound = treatment != C.CONTROL
    train = compound & (replicate == 3)
    clf = LogisticRegression(C=0.1, max_iter=1000).fit(z[train], treatment[train])
    out = {}
    for name, test in (("we", compound & (replicate == 4)), ("he", compound & np.isin(replicate, (1, 2)))):
        out[name] = balanced_accuracy_score(treatment[test], clf.predict(z[test]))
    return out


@pytest.fixture(scope="session")
def accuracy(pcs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn convergence chatter
        return {mod: _cell_accuracy(*pcs[mod]) for mod in (C.IMAGE_MOD, C.RNA_MOD)}


def _versus_control(z, treatment, replicate, treatment_name):
    """Balanced accuracy of telling a treatment's cells from DMSO's (train replicate 3, test the others)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score

    z = z[:, :20]
    pair = np.isin(treatment, (treatment_name, C.CONTROL))
    train, test = pair & (replicate == 3), pair & (replicate != 3)
    clf = LogisticRegression(max_iter=1000).fit(z[train], treatment[train] == treatment_name)
    return balanced_accuracy_score(treatment[test] == treatment_name, clf.predict(z[test]))


def _sample_means(mdata, mod):
    x, _, _ = _features(mdata, mod)
    samples = mdata[mod].obs[C.SAMPLE_KEY].astype(str).to_numpy()
    return pd.DataFrame(x).groupby(samples).mean()


# --- layout -----------------------------------------------------------------------------------------------


def test_layout_follows_the_contract(sim):
    img, rna = sim[C.IMAGE_MOD], sim[C.RNA_MOD]
    assert set(sim.mod) == {C.IMAGE_MOD, C.RNA_MOD}
    assert img.n_obs == 8000 and rna.n_obs == 6000
    x_vit = img.obsm[C.IMAGE_REP]
    assert x_vit.shape == (8000, C.IMAGE_DIM) and x_vit.dtype == np.float32
    assert img.var["stain"].astype(str).tolist() == [s for s in C.STAINS for _ in range(C.VIT_L_DIM)]
    assert rna.obsm[C.RNA_REP].shape == (6000, C.SCGPT_DIM) and rna.obsm[C.RNA_REP].dtype == np.float32
    assert sparse.isspmatrix_csr(rna.X) or isinstance(rna.X, sparse.csr_array)
    assert np.issubdtype(rna.X.dtype, np.integer) and rna.X.data.min() > 0
    assert rna.n_vars == 2000 and rna.var_names.is_unique
    assert list(rna.var_names) == list(_gene_symbols()[:2000])
    assert {"ACTB", "GAPDH", "HMOX1"} <= set(rna.var_names)
    assert not any(g.startswith("<") for g in _gene_symbols())
    for adata, prefix in ((img, "img-"), (rna, "rna-")):
        obs = adata.obs
        assert list(obs.columns) == [
            C.SAMPLE_KEY,
            C.TREATMENT_KEY,
            C.REPLICATE_KEY,
            C.ROUND_KEY,
            C.SMILES_KEY,
        ]
        assert all(isinstance(obs[c].dtype, pd.CategoricalDtype) for c in obs.columns)
        assert C.SPLIT_KEY not in obs
        assert list(obs[C.TREATMENT_KEY].cat.categories) == list(C.SCGENESCOPE_CONDITIONS)
        assert list(obs[C.REPLICATE_KEY].cat.categories) == [1, 2, 3, 4, 5]
        assert list(obs[C.ROUND_KEY].cat.categories) == [1, 2]
        assert adata.obs_names.str.startswith(prefix).all() and adata.obs_names.is_unique
        # one sample = one treatment in one replicate of its round; 29 x 5 samples
        per_sample = obs.groupby(C.SAMPLE_KEY, observed=True)[
            [C.TREATMENT_KEY, C.REPLICATE_KEY, C.ROUND_KEY]
        ].nunique()
        assert len(per_sample) == 145 and (per_sample == 1).all().all()
        layout = obs[[C.ROUND_KEY, C.REPLICATE_KEY]].drop_duplicates().astype(int)
        assert {(r, p) for r, p in layout.itertuples(index=False)} == {
            (r, p) for r, reps in C.SCGENESCOPE_REPLICATES.items() for p in reps
        }
        counts = obs[C.SAMPLE_KEY].value_counts()
        assert counts.min() >= 1 and counts.std() > 5  # cell counts vary by sample
        table = mm.datasets.compounds()
        expected = table.loc[obs[C.TREATMENT_KEY].astype(str), C.SMILES_KEY].to_numpy()
        assert (obs[C.SMILES_KEY].astype(str).to_numpy() == expected).all()
    assert img.obs[C.SAMPLE_KEY].cat.categories.equals(rna.obs[C.SAMPLE_KEY].cat.categories)
    mm.pp.validate(sim, n_features={C.IMAGE_MOD: C.IMAGE_DIM, C.RNA_MOD: C.SCGPT_DIM})


def test_truth_in_uns(sim):
    truth = sim.uns[C.UNS_KEY]["simulation"]
    effects = truth["effects"]
    assert effects.shape == (29, len(LATENT_AXES)) and list(effects.index) == list(C.SCGENESCOPE_CONDITIONS)
    assert (effects.loc[C.CONTROL] == 0).all()
    silent = list(truth["silent"])
    assert silent == ["Caffeine", "Phenacetin", "Pantoprazole", "Quinidine"]
    seen_by = truth["latent_axes"]["seen_by"]
    morphological = seen_by.index[seen_by != C.RNA_MOD]
    assert (effects.loc[silent, morphological] == 0).all().all()
    assert (effects.loc[silent, seen_by.index[seen_by == C.RNA_MOD]].abs().sum(axis=1) > 0).all()
    treatments = truth["treatments"]
    assert treatments.loc[silent, "silent"].all() and treatments["silent"].sum() == 4
    # cytotoxic compounds thin out the cell layer: fewer imaged cells per sample
    samples = truth["samples"]
    n_img = samples.groupby("treatment")["n_img_cells"].mean()
    assert n_img[list(truth["cytotoxic"])].max() < n_img[C.CONTROL]
    assert samples["n_img_cells"].sum() == sim[C.IMAGE_MOD].n_obs
    assert set(truth["round_shift"]) == set(LATENT_AXES)
    assert truth["params"]["seed"] == 0
    other = mm.datasets.simulate_scgenescope(seed=0, n_silent=6, **SMALL).uns[C.UNS_KEY]["simulation"]
    assert len(other["silent"]) == 6 and list(other["silent"])[:4] == silent
    assert (
        len(mm.datasets.simulate_scgenescope(n_silent=0, **SMALL).uns[C.UNS_KEY]["simulation"]["silent"]) == 0
    )


def test_scgpt_embedding_is_a_function_of_each_cells_counts(sim):
    rna = sim[C.RNA_MOD]
    emb = rna.obsm[C.RNA_REP]
    genes = np.arange(rna.n_vars)
    rows = np.array([5, 17, 4000, 5999])
    again = _scgpt_like_embedding(rna.X[rows], genes, C.SCGPT_DIM)  # other cells do not matter
    np.testing.assert_allclose(again, emb[rows], rtol=1e-5, atol=1e-5)
    # raw treatment centroids are nearly parallel, as in real scGPT space
    treatment = rna.obs[C.TREATMENT_KEY].astype(str).to_numpy()
    centroids = np.stack([emb[treatment == t].mean(axis=0) for t in C.SCGENESCOPE_CONDITIONS])
    unit = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)
    assert (unit @ unit.T).min() >= 0.95


def test_deterministic_per_seed(small):
    same = mm.datasets.simulate_scgenescope(seed=7, **SMALL)
    other = mm.datasets.simulate_scgenescope(seed=8, **SMALL)
    for mod in (C.IMAGE_MOD, C.RNA_MOD):
        assert small[mod].obs.equals(same[mod].obs)
    np.testing.assert_array_equal(small[C.IMAGE_MOD].obsm[C.IMAGE_REP], same[C.IMAGE_MOD].obsm[C.IMAGE_REP])
    np.testing.assert_array_equal(small[C.RNA_MOD].X.toarray(), same[C.RNA_MOD].X.toarray())
    np.testing.assert_array_equal(small[C.RNA_MOD].obsm[C.RNA_REP], same[C.RNA_MOD].obsm[C.RNA_REP])
    pd.testing.assert_frame_equal(
        small.uns[C.UNS_KEY]["simulation"]["effects"], same.uns[C.UNS_KEY]["simulation"]["effects"]
    )
    assert not np.allclose(
        small[C.IMAGE_MOD].obsm[C.IMAGE_REP][:100], other[C.IMAGE_MOD].obsm[C.IMAGE_REP][:100]
    )
    assert (small[C.RNA_MOD].X != other[C.RNA_MOD].X).nnz > 0
    assert not small.uns[C.UNS_KEY]["simulation"]["effects"].equals(
        other.uns[C.UNS_KEY]["simulation"]["effects"]
    )


# --- measurable properties -----------------------------------------------------------------------------------


def test_silent_treatments_are_invisible_to_imaging_but_not_to_rna(sim, pcs):
    truth = sim.uns[C.UNS_KEY]["simulation"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img = {t: _versus_control(*pcs[C.IMAGE_MOD], t) for t in truth["silent"]}
        rna = {t: _versus_control(*pcs[C.RNA_MOD], t) for t in truth["silent"]}
        cytotoxic_img = np.mean([_versus_control(*pcs[C.IMAGE_MOD], t) for t in truth["cytotoxic"]])
    assert max(img.values()) < 0.6, img  # chance is 0.5
    assert np.mean(list(img.values())) < 0.56, img
    assert min(rna.values()) > 0.6 and np.mean(list(rna.values())) > 0.68, rna
    assert cytotoxic_img > 0.7  # the same readout does see a visible treatment


def test_rna_carries_information_imaging_lacks(accuracy):
    assert accuracy[C.RNA_MOD]["we"] > accuracy[C.IMAGE_MOD]["we"] + 0.04, accuracy
    assert accuracy[C.RNA_MOD]["he"] > accuracy[C.IMAGE_MOD]["he"] + 0.04, accuracy


def test_held_out_round_is_harder_than_within_round(accuracy):
    # imaging suffers most from the round shift; RNA only a little (the paper: 0.383 WE vs 0.379 HE)
    assert accuracy[C.IMAGE_MOD]["he"] < accuracy[C.IMAGE_MOD]["we"] - 0.03, accuracy
    assert accuracy[C.RNA_MOD]["he"] < accuracy[C.RNA_MOD]["we"] + 0.02, accuracy
    assert (
        np.mean([a["he"] for a in accuracy.values()]) < np.mean([a["we"] for a in accuracy.values()]) - 0.02
    )


def test_learnable_but_not_trivial(accuracy):
    chance = 1 / 28
    for mod in (C.IMAGE_MOD, C.RNA_MOD):
        for split in ("we", "he"):
            assert 4 * chance < accuracy[mod][split] < 0.8, (mod, split, accuracy)


def test_scgpt_is_not_an_affine_function_of_imaging(sim):
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import r2_score
    from sklearn.model_selection import KFold, cross_val_predict
    from sklearn.preprocessing import StandardScaler

    img = _sample_means(sim, C.IMAGE_MOD)
    rna = _sample_means(sim, C.RNA_MOD).loc[img.index]
    x = _pcs(img.to_numpy(), np.ones(len(img), bool), 30)
    cv = KFold(5, shuffle=True, random_state=0)

    def cv_r2(y):
        y = StandardScaler().fit_transform(y)
        pred = cross_val_predict(RidgeCV(alphas=np.logspace(-2, 4, 25)), x, y, cv=cv)
        return r2_score(y, pred, multioutput="variance_weighted")

    # what an affine simulator would give: RNA means = an affine map of the imaging signal + sampling noise
    rng = np.random.default_rng(0)
    affine = x @ rng.standard_normal((x.shape[1], 64)) + 3.0
    affine += rng.normal(0.0, 0.2 * affine.std(), size=affine.shape)
    assert cv_r2(affine) > 0.8
    assert cv_r2(rna.to_numpy()) < 0.6


# --- storage ------------------------------------------------------------------------------------------------


def test_h5mu_round_trip(small, tmp_path):
    import mudata

    path = tmp_path / "sim.h5mu"
    small.write_h5mu(path)
    back = mudata.read_h5mu(path)
    np.testing.assert_array_equal(back[C.IMAGE_MOD].obsm[C.IMAGE_REP], small[C.IMAGE_MOD].obsm[C.IMAGE_REP])
    np.testing.assert_array_equal(back[C.RNA_MOD].X.toarray(), small[C.RNA_MOD].X.toarray())
    np.testing.assert_array_equal(back[C.RNA_MOD].obsm[C.RNA_REP], small[C.RNA_MOD].obsm[C.RNA_REP])
    for mod in (C.IMAGE_MOD, C.RNA_MOD):
        pd.testing.assert_frame_equal(back[mod].obs, small[mod].obs)
    a, b = small.uns[C.UNS_KEY]["simulation"], back.uns[C.UNS_KEY]["simulation"]
    assert set(a) == set(b)
    pd.testing.assert_frame_equal(b["effects"], a["effects"])
    pd.testing.assert_frame_equal(b["treatments"], a["treatments"])
    assert list(b["silent"]) == list(a["silent"])
    assert b["params"]["seed"] == a["params"]["seed"]


def test_out_writes_a_backed_file_with_the_same_values(small, tmp_path):
    path = tmp_path / "sim.h5mu"
    backed = mm.datasets.simulate_scgenescope(seed=7, out=path, **SMALL)
    img = backed[C.IMAGE_MOD]
    assert backed.isbacked and img.isbacked
    assert not img.obsm  # the features live in .X on disk (image_rep=None)
    assert img.X.shape == (600, C.IMAGE_DIM) and img.X.chunks is not None
    np.testing.assert_array_equal(img.X[:], small[C.IMAGE_MOD].obsm[C.IMAGE_REP])
    np.testing.assert_array_equal(backed[C.RNA_MOD].obsm[C.RNA_REP], small[C.RNA_MOD].obsm[C.RNA_REP])
    assert list(backed.uns[C.UNS_KEY]["simulation"]["silent"]) == list(
        small.uns[C.UNS_KEY]["simulation"]["silent"]
    )
    mm.pp.validate(backed, mods={C.IMAGE_MOD: None, C.RNA_MOD: C.RNA_REP})
    with pytest.raises(MorphomuError, match="overwrite"):
        mm.datasets.simulate_scgenescope(seed=7, out=path, **SMALL)
    mm.datasets.simulate_scgenescope(seed=8, out=path, overwrite=True, **SMALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sim.h5mu"]  # no temporary left behind


@pytest.mark.slow
def test_out_streams_a_large_matrix_in_bounded_memory(tmp_path):
    n_cells = 20_000
    matrix_bytes = n_cells * C.IMAGE_DIM * 4  # 410 MB of float32
    tracemalloc.start()
    try:
        backed = mm.datasets.simulate_scgenescope(
            n_img_cells=n_cells, n_rna_cells=400, out=tmp_path / "big.h5mu"
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < matrix_bytes / 5, peak
    assert backed[C.IMAGE_MOD].isbacked and backed[C.IMAGE_MOD].X.shape == (n_cells, C.IMAGE_DIM)
    last = backed[C.IMAGE_MOD].X[n_cells - 3 :]
    assert np.isfinite(last).all() and last.std() > 0  # the last chunk was written


# --- images ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def with_images():
    return mm.datasets.simulate_scgenescope(
        seed=1, n_img_cells=1500, n_rna_cells=300, image_dim=40, with_images=True
    )


def test_images_shape_and_dtype(with_images):
    tiles = with_images[C.IMAGE_MOD].obsm[C.IMAGES_KEY]
    assert tiles.shape == (1500, C.N_STAINS, 64, 64) and tiles.dtype == np.uint8
    assert tiles.max() > 200 and np.median(tiles) < 30  # bright cells on a dark background
    half = mm.datasets.simulate_scgenescope(
        seed=1, image_dim=40, with_images=True, image_size=32, image_dtype="float16", **SMALL
    )
    tiles = half[C.IMAGE_MOD].obsm[C.IMAGES_KEY]
    assert tiles.shape == (600, C.N_STAINS, 32, 32) and tiles.dtype == np.float16
    assert float(tiles.min()) >= 0.0 and float(tiles.max()) <= 1.0
    # the features do not depend on whether tiles were rendered
    plain = mm.datasets.simulate_scgenescope(seed=1, image_dim=40, **SMALL)
    np.testing.assert_array_equal(plain[C.IMAGE_MOD].obsm[C.IMAGE_REP], half[C.IMAGE_MOD].obsm[C.IMAGE_REP])


def test_image_nucleus_count_follows_the_true_density_effect(with_images):
    tiles = with_images[C.IMAGE_MOD].obsm[C.IMAGES_KEY]
    nuclei = np.array([ndimage.label(dna > 100)[1] for dna in tiles[:, 0]])
    treatment = with_images[C.IMAGE_MOD].obs[C.TREATMENT_KEY].astype(str).to_numpy()
    per_treatment = pd.Series(nuclei).groupby(treatment).mean()
    truth = with_images.uns[C.UNS_KEY]["simulation"]["treatments"]["density"]
    r = np.corrcoef(per_treatment.loc[truth.index], truth)[0, 1]
    assert r > 0.7, r
    cytotoxic = with_images.uns[C.UNS_KEY]["simulation"]["cytotoxic"]
    assert per_treatment[list(cytotoxic)].max() < per_treatment[C.CONTROL]


# --- bad input ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "arg"),
    [
        ({"n_img_cells": -5}, "n_img_cells"),
        ({"n_rna_cells": 10}, "n_rna_cells"),
        ({"n_img_cells": 1000.0}, "n_img_cells"),
        ({"image_dim": 5121}, "image_dim"),
        ({"rna_dim": 0}, "rna_dim"),
        ({"n_genes": 10**6}, "n_genes"),
        ({"n_silent": 40}, "n_silent"),
        ({"seed": -1}, "seed"),
        ({"effect_scale": 0}, "effect_scale"),
        ({"image_size": 4}, "image_size"),
        ({"image_dtype": "int7"}, "image_dtype"),
        ({"with_images": "yes"}, "with_images"),
        ({"out": "data.h5ad"}, "out"),
        ({"out": "data.h5mu", "with_images": True}, "with_images"),
    ],
)
def test_bad_input_names_the_argument(kwargs, arg, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ContractError, match=arg):
        mm.datasets.simulate_scgenescope(**kwargs)
    assert not any(tmp_path.iterdir())  # nothing written
