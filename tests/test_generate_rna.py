"""mm.tl.generate_rna: PhenoSeq (trained here or given) and the ridge baseline, written into the MuData."""

import h5py
import mudata as md
import numpy as np
import pytest
import torch
from sklearn.linear_model import RidgeCV

import morphomu as mm
from morphomu import ContractError, MorphomuError
from morphomu._core import Standardizer


@pytest.fixture
def mdata():
    m = mm.datasets.simulate_scgenescope(
        seed=1, n_img_cells=800, n_rna_cells=800, image_dim=20, rna_dim=10, effect_scale=3.0
    )
    mm.pp.assign_split(m)
    return m


def test_ridge_baseline(mdata, tmp_path):
    mm.tl.generate_rna(mdata, method="ridge", seed=2)
    syn, rna, img = mdata["rna_synthetic"], mdata["rna"], mdata["img"]
    counts = rna.obs["sample"].astype(str).value_counts()
    assert syn.n_obs == rna.n_obs  # 'match': as many cells per sample as it has real ones
    assert syn.obs["sample"].astype(str).value_counts().reindex(counts.index).tolist() == counts.tolist()
    assert syn.obs_names.str.startswith("rna_synthetic-").all() and syn.obs["synthetic"].all()
    np.testing.assert_array_equal(syn.X, syn.obsm["X_scgpt"])
    entry = mdata.uns["morphomu"]["rna_synthetic"]
    assert (
        entry["params"]["method"] == "ridge"
        and entry["params"]["seed"] == 2
        and entry["n_cells"] == syn.n_obs
    )
    # reference: sklearn's RidgeCV from train-standardised sample-mean imaging to sample-mean RNA
    train = (rna.obs["split"] == "train").to_numpy()
    names = sorted(rna.obs.loc[train, "sample"].astype(str).unique())
    img_train = (img.obs["split"] == "train").to_numpy()
    scaler = Standardizer.fit(img.obsm["X_vit"], img_train)
    x = np.stack([img.obsm["X_vit"][(img.obs["sample"] == s).to_numpy()].mean(0) for s in names])
    y = np.stack([rna.obsm["X_scgpt"][train & (rna.obs["sample"] == s).to_numpy()].mean(0) for s in names])
    ref = RidgeCV(alphas=np.logspace(-3, 5, 17)).fit(scaler.transform(x), y)
    assert entry["ridge_alpha"] == pytest.approx(ref.alpha_)
    # every generated cell is its sample's predicted mean plus one train residual (cell - its sample mean)
    residuals = rna.obsm["X_scgpt"][train] - np.stack(
        [y[names.index(s)] for s in rna.obs.loc[train, "sample"].astype(str)]
    )
    target = sorted(syn.obs["sample"].astype(str).unique())[5]
    cells = syn[syn.obs["sample"] == target].X
    x_t = img.obsm["X_vit"][(img.obs["sample"] == target).to_numpy()].mean(0, keepdims=True)
    pred = ref.predict(scaler.transform(x_t))[0]
    dist = np.abs((cells - pred)[:, None, :] - residuals[None]).max(-1)
    assert (dist.min(1) < 1e-3).all()
    # deterministic and keyed by (seed, sample, cell): a subset gives the same cells
    again = mdata.copy()
    mm.tl.generate_rna(again, method="ridge", seed=2, samples=[target], key_added="sub")
    np.testing.assert_allclose(again["sub"].X, cells, atol=1e-6)
    # the result survives .h5mu
    mdata.write(tmp_path / "x.h5mu")
    with h5py.File(tmp_path / "x.h5mu") as f:
        assert "rna_synthetic" in f["mod"]
    assert md.read_h5mu(tmp_path / "x.h5mu")["rna_synthetic"].n_obs == syn.n_obs


def test_phenoseq_trained_here_is_returned_and_reused(mdata):
    torch.manual_seed(0)
    model = mm.tl.generate_rna(
        mdata,
        preset="tiny",
        n_steps=5,
        train_kwargs={"max_epochs": 2, "batch_size": 64, "enable_progress_bar": False},
    )
    assert isinstance(model, mm.models.PhenoSeq) and model.is_trained_
    syn = mdata["rna_synthetic"]
    assert syn.n_obs == mdata["rna"].n_obs and np.isfinite(syn.X).all()
    entry = mdata.uns["morphomu"]["rna_synthetic"]
    assert entry["trained_here"] and entry["preset"] == "tiny" and entry["params"]["n_steps"] == 5
    # with a model: nothing is trained, nothing returned, the same cells for the same seed
    samples = sorted(mdata["rna"].obs["sample"].astype(str).unique())[:3]
    assert mm.tl.generate_rna(mdata, model=model, key_added="again", samples=samples, n_steps=5) is None
    ref = model.generate(samples=samples, n_steps=5)
    np.testing.assert_allclose(mdata["again"].X, ref.X, atol=1e-6)
    assert not mdata.uns["morphomu"]["again"]["trained_here"]


def test_bad_input_leaves_the_mudata_untouched(mdata):
    def state(m):
        return sorted(m.mod), sorted(m.uns), list(m["rna"].obs.columns)

    broken = mdata.copy()
    broken["rna"].obs["split"] = broken["rna"].obs["split"].astype(str).replace("train", "test_we")
    before = state(broken)
    with pytest.raises(ContractError, match="'train'"):
        mm.tl.generate_rna(broken, preset="tiny")
    with pytest.raises(ContractError, match="'train'"):
        mm.tl.generate_rna(broken, method="ridge")
    assert state(broken) == before
    with pytest.raises(MorphomuError, match="key_added"):
        mm.tl.generate_rna(mdata, method="ridge", key_added="rna")
    with pytest.raises(MorphomuError, match="method"):
        mm.tl.generate_rna(mdata, method="gan")
    with pytest.raises(ContractError, match="no imaging cells"):
        mm.tl.generate_rna(mdata, method="ridge", samples=["nope"])
    assert "rna_synthetic" not in mdata.mod
