"""PhenoSeq model: setup, training, generation, determinism, save/load, bad input and learning.

One tiny model is trained once per module on a small simulated experiment (imaging 320-d, RNA 64-d)
and shared by the tests; checks that need other training (guidance) train their own tiny ones.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.spatial.distance import cdist

import morphomu as mm
from morphomu import ContractError, MorphomuError
from morphomu._core import keyed_normal
from morphomu.models._phenoseq import PhenoSeq

SIM = {
    "seed": 0,
    "n_img_cells": 6000,
    "n_rna_cells": 6000,
    "image_dim": 320,
    "rna_dim": 64,
    "effect_scale": 3.0,
}
TRAIN = {"max_epochs": 20, "batch_size": 64, "lr": 3e-3, "warmup_epochs": 1, "enable_progress_bar": False}


def simulate(**kw):
    mdata = mm.datasets.simulate_scgenescope(**{**SIM, **kw})
    mm.pp.assign_split(mdata)
    return mdata


@pytest.fixture(scope="module")
def trained():
    mdata = simulate()
    PhenoSeq.setup_mudata(mdata)
    torch.manual_seed(0)
    model = PhenoSeq(mdata, preset="tiny")
    model.train(**TRAIN)
    return model


@pytest.fixture(scope="module")
def test_we_samples(trained):
    obs = trained.adata["rna"].obs
    return sorted(obs.loc[obs["split"] == "test_we", "sample"].astype(str).unique())


def snapshot(mdata):
    return (
        sorted(mdata.mod),
        {k: list(a.obs.columns) for k, a in mdata.mod.items()},
        {k: sorted(a.obsm) for k, a in mdata.mod.items()},
        sorted(mdata.uns),
    )


def small(**kw):
    return simulate(n_img_cells=600, n_rna_cells=600, image_dim=20, rna_dim=10, **kw)


# ------------------------------------------------------------------ structure
def test_presets_and_overrides():
    mdata = small()
    PhenoSeq.setup_mudata(mdata)
    assert PhenoSeq(mdata).preset == "fast"  # the default: CPU-sized (tests/test_presets.py checks it)
    paper = PhenoSeq(mdata, preset="paper")
    assert paper.sizes["n_hidden"] == 1024 and paper.sizes["n_layers"] == 6 and paper.sizes["n_heads"] == 8
    assert (
        paper.sizes["n_encoder_layers"] == 2 and paper.sizes["n_time"] == 256 and paper.n_context_cells == 16
    )
    assert paper.module.prediction_type == "epsilon"
    model = PhenoSeq(mdata, preset="tiny", n_layers=3, n_context_cells=5)
    assert len(model.module.blocks) == 3 and model.n_context_cells == 5
    assert model.module.n_image_features == 20 and model.module.n_rna_features == 10  # sizes from the data
    with pytest.raises(MorphomuError, match="preset"):
        PhenoSeq(mdata, preset="huge")
    with pytest.raises(MorphomuError, match="n_heads"):
        PhenoSeq(mdata, preset="tiny", n_heads=3)
    with pytest.raises(MorphomuError, match="setup_mudata"):
        PhenoSeq.setup_anndata(mdata["rna"])


def test_training_records_history_and_ema(trained):
    hist = trained.history
    assert (
        len(hist["train_loss"]) == TRAIN["max_epochs"] and len(hist["validation_loss"]) == TRAIN["max_epochs"]
    )
    first, last = float(hist["train_loss"].iloc[0, 0]), float(hist["train_loss"].iloc[-1, 0])
    assert last < 0.95 * first
    n_train = int((trained.adata["rna"].obs["split"] == "train").sum())
    steps = TRAIN["max_epochs"] * -(-n_train // TRAIN["batch_size"])
    assert trained._ema.n_updates == steps
    # the module holds the EMA weights; the raw ones are kept beside them
    params = [p for p in trained.module.parameters() if p.requires_grad]
    for p, s in zip(params, trained._ema.shadow, strict=True):
        assert torch.equal(p, s)
    raw = trained._raw_state["blocks.0.ff.proj_in.weight"]
    assert not torch.equal(raw, trained.module.state_dict()["blocks.0.ff.proj_in.weight"])
    # standardisation statistics come from the train split
    rna = trained.adata["rna"]
    train = (rna.obs["split"] == "train").to_numpy()
    np.testing.assert_allclose(
        trained.standardizers["rna"].mean, rna.obsm["X_scgpt"][train].mean(0), rtol=1e-4, atol=1e-4
    )


# ------------------------------------------------------------------ generation
def test_generate_shapes_obs_and_units(trained, test_we_samples):
    out = trained.generate(samples=test_we_samples[:4])
    rna = trained.adata["rna"]
    counts = rna.obs["sample"].astype(str).value_counts()
    assert out.n_obs == int(counts[test_we_samples[:4]].sum())  # 'match'
    assert (
        out.obs["sample"].value_counts().reindex(test_we_samples[:4]).tolist()
        == counts[test_we_samples[:4]].tolist()
    )
    np.testing.assert_array_equal(out.X, out.obsm["X_scgpt"])
    assert {"sample", "treatment", "replicate", "round", "split", "synthetic"} <= set(out.obs.columns)
    assert out.obs["synthetic"].all() and (out.obs["split"] == "test_we").all()
    for s in test_we_samples[:4]:
        assert (
            out.obs.loc[out.obs["sample"] == s, "treatment"].astype(str)
            == rna.obs.loc[rna.obs["sample"] == s, "treatment"].astype(str).iloc[0]
        ).all()
    # raw units: near the real embedding's scale and offset, not standard units
    real = rna.obsm["X_scgpt"]
    assert np.abs(out.X.mean(0) - real.mean(0)).mean() < 0.5 * np.abs(real.mean(0)).mean()
    fixed = trained.generate(samples=test_we_samples[:2], n_cells_per_sample=7)
    assert fixed.n_obs == 14 and np.isfinite(fixed.X).all()


def test_same_seed_same_output_whatever_batch_or_subset(trained, test_we_samples):
    chosen = test_we_samples[:3]
    ref = trained.generate(samples=chosen, seed=3)
    again = trained.generate(samples=chosen, seed=3, batch_size=17)
    np.testing.assert_allclose(again.X, ref.X, atol=1e-5)
    assert list(again.obs_names) == list(ref.obs_names)
    one = trained.generate(samples=[chosen[1]], seed=3, batch_size=5)
    np.testing.assert_allclose(one.X, ref[one.obs_names].X, atol=1e-5)
    other = trained.generate(samples=chosen, seed=4)
    assert np.abs(other.X - ref.X).mean() > 1e-2
    # stochastic DDIM is keyed the same way
    a = trained.generate(samples=chosen[:2], seed=3, sampler="ddim", eta=1.0, n_steps=10)
    b = trained.generate(samples=chosen[:2], seed=3, sampler="ddim", eta=1.0, n_steps=10, batch_size=9)
    np.testing.assert_allclose(a.X, b.X, atol=1e-5)


def test_set_context(trained, test_we_samples):
    chosen = test_we_samples[:2]
    mean = trained.generate(samples=chosen, seed=0)
    s1 = trained.generate(samples=chosen, seed=0, context="set")
    s2 = trained.generate(samples=chosen, seed=0, context="set", batch_size=11)
    np.testing.assert_allclose(s1.X, s2.X, atol=1e-5)
    assert s1.shape == mean.shape and np.isfinite(s1.X).all()
    assert np.abs(s1.X - mean.X).mean() > 1e-3
    # each cell's own context set: the set-conditioned cells are centred near the mean-conditioned ones
    centroid_gap = np.abs(s1.X.mean(0) - mean.X.mean(0)).mean()
    assert centroid_gap < np.abs(s1.X - mean.X).mean()
    with pytest.raises(MorphomuError, match="context"):
        trained.generate(samples=chosen, context="median")


def test_generate_bad_arguments(trained, test_we_samples):
    with pytest.raises(MorphomuError, match="p_uncond"):
        trained.generate(samples=test_we_samples[:1], guidance_scale=2.0)
    with pytest.raises(ContractError, match="no imaging cells"):
        trained.generate(samples=["not-a-sample"])
    with pytest.raises(MorphomuError, match="n_cells_per_sample"):
        trained.generate(samples=test_we_samples[:1], n_cells_per_sample=0)
    mdata = trained.adata
    before = snapshot(mdata)
    wrong = mdata.copy()
    wrong["img"].obsm["X_vit"] = wrong["img"].obsm["X_vit"][:, :10]
    with pytest.raises(ContractError, match="320 features"):
        trained.generate(wrong, samples=test_we_samples[:1])
    assert snapshot(mdata) == before


def test_classifier_free_guidance():
    mdata = small()
    PhenoSeq.setup_mudata(mdata)
    torch.manual_seed(0)
    model = PhenoSeq(mdata, preset="tiny", p_uncond=0.3)
    assert model.module.classifier_free
    model.train(max_epochs=3, batch_size=32, enable_progress_bar=False)
    samples = sorted(mdata["rna"].obs["sample"].astype(str).unique())[:2]
    plain = model.generate(samples=samples, n_steps=10)
    # scale 1 is the conditional model: the guided formula at scale 1 gives the same cells
    near_one = model.generate(samples=samples, n_steps=10, guidance_scale=1.0 + 1e-7)
    np.testing.assert_allclose(near_one.X, plain.X, atol=1e-4)
    strong = model.generate(samples=samples, n_steps=10, guidance_scale=4.0)
    assert np.abs(strong.X - plain.X).mean() > 1e-3
    # a null context (the learned token) was trained: it moved away from its zero initialisation
    assert model.module.null_context.abs().sum() > 0


def test_mixed_precision_with_gradient_clipping_trains():
    """bf16-mixed autocast + clipping 1.0: the optimiser is the fused AdamW (the plan clips bf16's gradients
    itself, where Lightning would refuse a fused one) and the weights move and stay finite."""
    mdata = small()
    PhenoSeq.setup_mudata(mdata)
    model = PhenoSeq(mdata, preset="tiny")
    before = [p.detach().clone() for p in model.module.parameters()]
    model.train(
        max_epochs=1, batch_size=32, precision="bf16-mixed", accelerator="cpu", enable_progress_bar=False
    )
    optimizer = model.trainer.optimizers[0]
    assert optimizer.defaults.get("fused")
    after = list(model.module.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))


# ------------------------------------------------------------------ save / load
def test_save_load_in_a_fresh_process(trained, test_we_samples, tmp_path):
    model_dir, data_path, out_path = tmp_path / "model", tmp_path / "data.h5mu", tmp_path / "out.npy"
    trained.save(str(model_dir))
    mdata = trained.adata.copy()
    mdata.write(str(data_path))
    chosen = test_we_samples[:2]
    ref = trained.generate(samples=chosen, seed=5)
    script = textwrap.dedent(f"""
        import json, numpy as np, mudata, torch
        torch.set_num_threads(1)
        from morphomu.models._phenoseq import PhenoSeq
        mdata = mudata.read_h5mu({str(data_path)!r})
        model = PhenoSeq.load({str(model_dir)!r}, mdata)
        out = model.generate(samples={json.dumps(chosen)}, seed=5)
        np.save({str(out_path)!r}, out.X)
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    np.testing.assert_allclose(np.load(out_path), ref.X, atol=1e-5)
    # the saved weights are the EMA ones
    from safetensors.torch import load_file

    saved = load_file(model_dir / "model.safetensors")
    assert torch.equal(
        saved["blocks.0.ff.proj_in.weight"], trained.module.state_dict()["blocks.0.ff.proj_in.weight"]
    )
    # loading onto data of another feature size fails clearly, before anything is written
    wrong = trained.adata.copy()
    wrong["rna"].obsm["X_scgpt"] = wrong["rna"].obsm["X_scgpt"][:, :32]
    before = snapshot(wrong)
    with pytest.raises(ContractError, match="64 features"):
        PhenoSeq.load(str(model_dir), wrong)
    assert snapshot(wrong) == before


def test_save_is_atomic_versioned_and_never_overwrites_unasked(trained, tmp_path, monkeypatch):
    from morphomu.models import _base
    from morphomu.models._base import FORMAT_VERSION, MANIFEST

    model_dir = tmp_path / "model"
    trained.save(model_dir)
    manifest = json.loads((model_dir / MANIFEST).read_text())
    assert manifest == {
        "model": "PhenoSeq",
        "format_version": FORMAT_VERSION,
        "morphomu_version": mm.__version__,
    }
    weights = (model_dir / "model.safetensors").read_bytes()
    with pytest.raises(MorphomuError, match="exists; pass overwrite=True"):
        trained.save(model_dir)

    def crash(dir_path, **kwargs):  # dies half-way through writing
        (Path(dir_path) / "model.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(_base, "write_model_files", crash)
    with pytest.raises(OSError, match="disk full"):
        trained.save(model_dir, overwrite=True)
    assert (model_dir / "model.safetensors").read_bytes() == weights  # the previous model is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary left behind


def test_load_refuses_other_models_newer_formats_and_foreign_directories(trained, tmp_path):
    from morphomu.models._base import FORMAT_VERSION, MANIFEST

    model_dir = tmp_path / "model"
    trained.save(model_dir)
    with pytest.raises(MorphomuError, match="holds a PhenoSeq, not a TreatmentClassifier"):
        mm.models.TreatmentClassifier.load(model_dir, trained.adata)
    manifest = json.loads((model_dir / MANIFEST).read_text())
    (model_dir / MANIFEST).write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(
        MorphomuError, match=f"model format 99; this morphomu .* reads formats up to {FORMAT_VERSION}"
    ):
        PhenoSeq.load(model_dir, trained.adata)
    (model_dir / MANIFEST).unlink()
    with pytest.raises(MorphomuError, match="has no morphomu.json"):
        PhenoSeq.load(model_dir, trained.adata)
    with pytest.raises(MorphomuError, match="is not a directory"):
        PhenoSeq.load(tmp_path / "missing", trained.adata)


# ------------------------------------------------------------------ bad input
def test_bad_input_fails_before_anything_is_written():
    base = small()

    def check(mutate, match, *, train=False):
        mdata = base.copy()
        mutate(mdata)
        before = snapshot(mdata)
        with pytest.raises(ContractError, match=match):
            PhenoSeq.setup_mudata(mdata)
            if train:
                PhenoSeq(mdata, preset="tiny").train(max_epochs=1, enable_progress_bar=False)
        if not train:
            assert snapshot(mdata) == before

    def no_shared(m):
        m["rna"].obs["sample"] = "rna-" + m["rna"].obs["sample"].astype(str)

    def no_imaging(m):
        keep = m["img"].obs["sample"].astype(str) != m["img"].obs["sample"].astype(str).iloc[0]
        m.mod["img"] = m["img"][keep.to_numpy()].copy()

    def nan(m):
        m["img"].obsm["X_vit"][3, 2] = np.nan

    def no_val(m):
        m["rna"].obs["split"] = m["rna"].obs["split"].astype(str).replace("val", "test_we")

    def no_split(m):
        del m["rna"].obs["split"]

    check(no_shared, "share no sample")
    check(no_imaging, "no imaging cells")
    check(nan, "non-finite")
    check(no_val, "'val'", train=True)
    check(no_split, "split", train=True)


# ------------------------------------------------------------------ learning
def centroid_ranks(real, real_lab, syn, syn_lab, origin):
    lab = sorted(set(real_lab))
    r = np.stack([real[real_lab == t].mean(0) for t in lab]) - origin
    s = np.stack([syn[syn_lab == t].mean(0) for t in lab]) - origin
    r /= np.linalg.norm(r, axis=1, keepdims=True)
    s /= np.linalg.norm(s, axis=1, keepdims=True)
    cos = s @ r.T
    return lab, (cos > np.diag(cos)[:, None]).sum(1) + 1, cos.argmax(1)


def energy_distance(a, b):
    return 2 * cdist(a, b).mean() - cdist(a, a).mean() - cdist(b, b).mean()


def test_learning_retrieval_spread_and_energy_beat_ridge(trained, test_we_samples):
    mdata = trained.adata
    rna = mdata["rna"]
    test = (rna.obs["split"] == "test_we").to_numpy()
    real, real_lab = rna.obsm["X_scgpt"][test], rna.obs["treatment"].astype(str).to_numpy()[test]
    origin = rna.obsm["X_scgpt"][(rna.obs["split"] == "train").to_numpy()].mean(0)
    syn = trained.generate(samples=test_we_samples)
    syn_lab = syn.obs["treatment"].astype(str).to_numpy()
    lab, ranks, _ = centroid_ranks(real, real_lab, syn.X, syn_lab, origin)
    silent = set(mdata.uns["morphomu"]["simulation"]["silent"])
    hit = [r == 1 for t, r in zip(lab, ranks, strict=True) if t not in silent]
    assert np.mean(hit) >= 0.5, dict(zip(lab, ranks, strict=True))
    assert np.mean(1.0 / ranks) >= 0.6
    # not collapsed: per-condition spread comparable to the real one
    spread_real = np.array([real[real_lab == t].std(0).mean() for t in lab])
    spread_syn = np.array([syn.X[syn_lab == t].std(0).mean() for t in lab])
    assert 0.5 < np.median(spread_syn / spread_real) < 2.0
    # closer in distribution than the ridge baseline (predicted mean + pooled train residuals)
    work = mdata.copy()
    mm.tl.generate_rna(work, method="ridge", samples=test_we_samples, key_added="ridge")
    ridge = work["ridge"]
    ridge_lab = ridge.obs["treatment"].astype(str).to_numpy()
    ed_syn = np.mean([energy_distance(syn.X[syn_lab == t], real[real_lab == t]) for t in lab])
    ed_ridge = np.mean([energy_distance(ridge.X[ridge_lab == t], real[real_lab == t]) for t in lab])
    assert ed_syn < ed_ridge, (ed_syn, ed_ridge)


def test_shuffled_imaging_context_falls_to_chance(trained, test_we_samples):
    mdata = trained.adata
    rna = mdata["rna"]
    test = (rna.obs["split"] == "test_we").to_numpy()
    real, real_lab = rna.obsm["X_scgpt"][test], rna.obs["treatment"].astype(str).to_numpy()[test]
    origin = rna.obsm["X_scgpt"][(rna.obs["split"] == "train").to_numpy()].mean(0)
    # give every test sample the imaging cells of another treatment's sample (a cyclic shift)
    shuffled = mdata.copy()
    img_obs = shuffled["img"].obs
    donor = dict(zip(test_we_samples, np.roll(test_we_samples, 1), strict=True))
    relabel = img_obs["sample"].astype(str).map(lambda s: donor.get(s, s))
    img_obs["sample"] = pd.Categorical(relabel)
    treat_of = img_obs.groupby("sample", observed=True)["treatment"].first()
    img_obs["treatment"] = pd.Categorical(
        shuffled["rna"]
        .obs.groupby("sample", observed=True)["treatment"]
        .first()
        .astype(str)
        .reindex(relabel)
        .to_numpy()
    )
    assert len(treat_of) > 0
    syn = trained.generate(shuffled, samples=test_we_samples)
    lab, ranks, nearest = centroid_ranks(
        real, real_lab, syn.X, syn.obs["treatment"].astype(str).to_numpy(), origin
    )
    assert np.mean(ranks == 1) <= 3 / len(lab)  # chance is 1/29


def test_keyed_noise_is_standard_normal_and_keyed():
    keys = np.arange(2000, dtype=np.uint64) * np.uint64(7919)
    z = keyed_normal(keys, 64)
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    np.testing.assert_array_equal(keyed_normal(keys[5:9], 64), z[5:9])
    assert abs(np.corrcoef(z[:, 0], z[:, 1])[0, 1]) < 0.06
    assert json.dumps(float(z[0, 0]))  # plain floats
