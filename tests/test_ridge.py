"""RidgeBaseline: the ridge baseline of mm.tl.generate_rna as a model (setup, closed-form train, generate, save, load)."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import RidgeCV

import morphomu as mm
from morphomu import ContractError, MorphomuError

RidgeBaseline = mm.models.RidgeBaseline


@pytest.fixture(scope="module")
def base():
    m = mm.datasets.simulate_scgenescope(
        seed=1, n_img_cells=800, n_rna_cells=800, image_dim=20, rna_dim=10, effect_scale=3.0
    )
    mm.pp.assign_split(m)
    return m


@pytest.fixture
def mdata(base):
    return base.copy()


@pytest.fixture
def trained(mdata):
    RidgeBaseline.setup_mudata(mdata)
    model = RidgeBaseline(mdata)
    model.train()
    return model


def _reference(mdata):
    """Everything the baseline should fit, computed here with numpy and scikit-learn only."""
    img, rna = mdata["img"], mdata["rna"]
    x_img, x_rna = np.asarray(img.obsm["X_vit"], np.float64), np.asarray(rna.obsm["X_scgpt"], np.float64)
    img_samples, rna_samples = (
        img.obs["sample"].astype(str).to_numpy(),
        rna.obs["sample"].astype(str).to_numpy(),
    )
    train = (rna.obs["split"] == "train").to_numpy()
    img_train = (img.obs["split"] == "train").to_numpy()
    mean = x_img[img_train].mean(0).astype(np.float32)
    std = x_img[img_train].std(0).astype(np.float32)

    def standardise(samples):
        means = np.stack([x_img[img_samples == s].mean(0) for s in samples])
        return (means.astype(np.float32) - mean) / std

    names = sorted(set(rna_samples[train]))
    y = np.stack([x_rna[train & (rna_samples == s)].mean(0) for s in names])
    ridge = RidgeCV(alphas=np.logspace(-3, 5, 17)).fit(standardise(names), y)
    residuals = x_rna[train] - y[[names.index(s) for s in rna_samples[train]]]
    return ridge, standardise, residuals, len(names)


def test_matches_scikit_learn_and_the_tool(mdata, trained):
    ridge, standardise, residuals, n_train = _reference(mdata)
    assert trained.is_trained_ and trained.alpha == pytest.approx(ridge.alpha_)
    assert trained.n_train_samples == n_train
    np.testing.assert_allclose(trained.module.residuals.numpy(), residuals, atol=1e-10)
    # the leave-one-out error of each penalty is kept, and the chosen one is its minimum
    loo = trained.history_["loo_mse"]["loo_mse"]
    assert len(loo) == 17 and loo.idxmin() == trained.alpha

    syn = trained.generate(n_cells_per_sample=3, seed=4)
    samples = sorted(set(mdata["img"].obs["sample"].astype(str)))
    assert (
        syn.obs["sample"].astype(str).value_counts().reindex(samples).eq(3).all()
        and syn.obs["synthetic"].all()
    )
    assert syn.X.dtype == np.float32
    np.testing.assert_array_equal(syn.X, syn.obsm["X_scgpt"])
    # each generated cell is its sample's predicted mean (scikit-learn's) plus one train residual
    pred = ridge.predict(standardise(samples))
    offsets = syn.X - pred[[samples.index(s) for s in syn.obs["sample"].astype(str)]]
    nearest = np.abs(offsets[:, None, :] - residuals[None]).max(-1).min(1)
    assert (nearest < 1e-4).all()
    # a sample's cells carry different residuals: the spread is the train split's, not one cell's
    by_sample = syn.obs["sample"].astype(str).to_numpy()
    assert all(len(np.unique(syn.X[by_sample == s], axis=0)) > 1 for s in samples)

    # the tool sets up, trains and returns the same model, and writes the same cells
    other = mdata.copy()
    model = mm.tl.generate_rna(other, method="ridge", n_cells_per_sample=3, seed=4)
    assert isinstance(model, RidgeBaseline) and model.alpha == trained.alpha
    written = other["rna_synthetic"]
    np.testing.assert_array_equal(written.X, syn.X)
    assert list(written.obs_names) == [f"rna_synthetic-{n}" for n in syn.obs_names]
    assert written.obs.reset_index(drop=True).equals(syn.obs.reset_index(drop=True))
    assert list(written.var_names) == list(syn.var_names)
    entry = other.uns["morphomu"]["rna_synthetic"]
    assert entry["ridge_alpha"] == trained.alpha and entry["n_train_samples"] == n_train
    assert entry["trained_here"] and entry["params"]["method"] == "ridge"


def test_given_model_is_used_and_method_follows_it(mdata, trained):
    samples = sorted(set(mdata["rna"].obs["sample"].astype(str)))[:4]
    assert mm.tl.generate_rna(mdata, model=trained, key_added="again", samples=samples, seed=1) is None
    ref = trained.generate(samples=samples, seed=1)
    np.testing.assert_array_equal(mdata["again"].X, ref.X)
    entry = mdata.uns["morphomu"]["again"]
    assert entry["params"]["method"] == "ridge" and not entry["trained_here"]
    with pytest.raises(MorphomuError, match="does not match"):
        mm.tl.generate_rna(mdata, model=trained, method="phenoseq")
    with pytest.raises(MorphomuError, match="model must be"):
        mm.tl.generate_rna(mdata, model="ridge")


def test_custom_alphas(mdata):
    RidgeBaseline.setup_mudata(mdata)
    model = RidgeBaseline(mdata)
    model.train(alphas=[0.5, 50.0])
    assert model.alpha in (0.5, 50.0)
    assert list(model.history_["loo_mse"].index) == [0.5, 50.0]


def test_save_load_round_trip(mdata, trained, tmp_path):
    from morphomu._io import MARKER

    expected = trained.generate(seed=3)
    trained.save(tmp_path / "ridge")
    files = {p.name for p in (tmp_path / "ridge").iterdir()} - {MARKER}
    assert files == {"model.safetensors", "attributes.json", "morphomu.json"}
    loaded = RidgeBaseline.load(tmp_path / "ridge", mdata.copy(), accelerator="cpu")
    assert loaded.is_trained_ and loaded.alpha == trained.alpha
    assert loaded.n_train_samples == trained.n_train_samples
    assert loaded.module.coef.dtype == trained.module.coef.dtype
    assert loaded.module.residuals.dtype == torch.float64  # exact residuals: the cells are bit-identical
    assert loaded.history_["loo_mse"].equals(trained.history_["loo_mse"])
    got = loaded.generate(seed=3)
    assert np.array_equal(got.X, expected.X)
    assert got.obs.equals(expected.obs) and list(got.obs_names) == list(expected.obs_names)
    with pytest.raises(MorphomuError, match="RidgeBaseline"):
        mm.models.PhenoSeq.load(tmp_path / "ridge", mdata)


def test_untrained_save_load_stays_untrained(mdata, tmp_path):
    RidgeBaseline.setup_mudata(mdata)
    model = RidgeBaseline(mdata)
    assert model.alpha is None and model.n_train_samples is None
    model.save(tmp_path / "untrained")
    loaded = RidgeBaseline.load(tmp_path / "untrained", mdata)
    with pytest.raises(MorphomuError, match="not trained"):
        loaded.generate()


def test_named_errors(mdata, trained):
    with pytest.raises(MorphomuError, match="setup_mudata"):
        RidgeBaseline.setup_anndata(mdata["rna"])
    fresh = RidgeBaseline(mdata)
    with pytest.raises(MorphomuError, match="not trained"):
        fresh.generate()
    for bad in (0, -2, "all", 1.5, True):
        with pytest.raises(MorphomuError, match="n_cells_per_sample"):
            trained.generate(n_cells_per_sample=bad)
    with pytest.raises(ContractError, match="no imaging cells"):
        trained.generate(samples=["nope"])
    sample = str(mdata["img"].obs["sample"].iloc[0])
    with pytest.raises(MorphomuError, match="duplicates"):
        trained.generate(samples=[sample, sample])
    for bad in ([], [-1.0], [np.inf], "many", [[1.0]]):
        with pytest.raises(MorphomuError, match="alphas"):
            fresh.train(alphas=bad)
    assert not fresh.is_trained_


def test_missing_train_split(mdata):
    broken = mdata.copy()
    broken["rna"].obs["split"] = broken["rna"].obs["split"].astype(str).replace("train", "test_we")
    RidgeBaseline.setup_mudata(broken)
    model = RidgeBaseline(broken)
    with pytest.raises(ContractError, match="no 'train' cells"):
        model.train()
    assert not model.is_trained_


def test_tool_refuses_what_the_baseline_does_not_take(mdata):
    def state(m):
        return sorted(m.mod), sorted(m.uns)

    before = state(mdata)
    with pytest.raises(MorphomuError, match="n_steps"):
        mm.tl.generate_rna(mdata, method="ridge", n_steps=5)
    with pytest.raises(MorphomuError, match="max_epochs"):
        mm.tl.generate_rna(mdata, method="ridge", train_kwargs={"max_epochs": 2})
    with pytest.raises(MorphomuError, match="alphas"):
        mm.tl.generate_rna(mdata, method="ridge", train_kwargs={"alphas": [0.0]})
    with pytest.raises(MorphomuError, match="n_cells_per_sample"):
        mm.tl.generate_rna(mdata, method="ridge", n_cells_per_sample=0)
    with pytest.raises(ContractError, match="no imaging cells"):
        mm.tl.generate_rna(mdata, method="ridge", samples=["nope"])
    assert state(mdata) == before  # refused before anything was written (scvi-tools' registration undone)
