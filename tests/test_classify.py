"""mm.tl.classify / mm.models.TreatmentClassifier: Table 6 architectures, sampling, metrics, learning."""

from __future__ import annotations

import warnings

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import sklearn.metrics
import torch
from torch import nn

import morphomu as mm
from morphomu._constants import SCGENESCOPE_COMPOUNDS
from morphomu.models._classifier import parse_inputs, resolve_hparams
from morphomu.train._classifier import ExampleSet, SamplePools, balanced_accuracy_from_confusion, draw_offsets

TINY = {"preset": "tiny", "max_epochs": 25, "batch_size": 32, "lr": 1e-2}


def make_mdata(
    *,
    treatments=("T0", "T1", "T2", "T3"),
    cells=12,
    dims=None,
    signal=4.0,
    seed=0,
    synthetic=False,
) -> md.MuData:
    """Cells of every (treatment + DMSO) x replicate, rounds 1 (3, 4, 5) and 2 (1, 2), per modality."""
    dims = dims or {"img": ("X_vit", 10), "rna": ("X_scgpt", 6)}
    if synthetic:
        dims = {**dims, "rna_synthetic": dims["rna"]}
    rng = np.random.default_rng(seed)
    conditions = [*treatments, "DMSO"]
    mods = {}
    for mod, (rep, d) in dims.items():
        centres = rng.normal(size=(len(conditions), d)) * signal
        rows = [
            (f"{t}_r{rep_}", t, rep_, rnd, i)
            for rnd, reps in ((1, (3, 4, 5)), (2, (1, 2)))
            for rep_ in reps
            for i, t in enumerate(conditions)
            for _ in range(cells)
        ]
        obs = pd.DataFrame(rows, columns=["sample", "treatment", "replicate", "round", "code"])
        x = centres[obs.pop("code").to_numpy()] + rng.normal(size=(len(obs), d))
        obs.index = [f"{mod}_{i}" for i in range(len(obs))]
        a = ad.AnnData(obs=obs)
        a.obsm[rep] = x.astype(np.float32)
        mods[mod] = a
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        mdata = md.MuData(mods)
    mm.pp.assign_split(mdata)
    return mdata


def _linears(module: nn.Module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in module.modules() if isinstance(m, nn.Linear)]


# ---------------------------------------------------------------------------------------------------
# architectures (construct only)
# ---------------------------------------------------------------------------------------------------
TABLE6 = {
    ("single", "img"): ([(5120, 512)] + [(512, 512)] * 4 + [(512, 28)], 1e-3, 1e-4),
    ("single", "rna"): ([(512, 3934)] + [(3934, 3934)] * 2 + [(3934, 28)], 1.49e-4, 9.24e-5),
    ("single", "rna_synthetic"): ([(512, 3934)] + [(3934, 3934)] * 2 + [(3934, 28)], 1.49e-4, 9.24e-5),
    ("multi", "img"): ([(5120, 279), (279, 279), (279, 28)], 5.20e-5, 5.79e-3),
    ("multi", "rna"): ([(512, 1922)] + [(1922, 1922)] * 3 + [(1922, 28)], 1.63e-4, 1.90e-6),
    ("multi", "rna_synthetic"): ([(512, 1922)] + [(1922, 1922)] * 3 + [(1922, 28)], 1.63e-4, 1.90e-6),
}
DUAL = (
    [(5120, 266), (266, 266), (266, 266), (266, 913)]
    + [(512, 2748), (2748, 2748), (2748, 2748), (2748, 913)]
    + [(1826, 28)]
)


@pytest.fixture(scope="module")
def paper_sized():
    dims = {"img": ("X_vit", 5120), "rna": ("X_scgpt", 512)}
    return make_mdata(treatments=SCGENESCOPE_COMPOUNDS, cells=1, dims=dims, synthetic=True)


@pytest.mark.parametrize("setting", ["single", "multi"])
@pytest.mark.parametrize(
    "inputs",
    [
        ("img", "X_vit"),
        ("rna", "X_scgpt"),
        ("rna_synthetic", "X_scgpt"),
        [("img", "X_vit"), ("rna", "X_scgpt")],
        [("rna_synthetic", "X_scgpt"), ("img", "X_vit")],  # order does not matter: imaging first
    ],
)
def test_table6_architectures(paper_sized, setting, inputs):
    mm.models.TreatmentClassifier.setup_mudata(paper_sized, inputs=inputs)
    model = mm.models.TreatmentClassifier(paper_sized, setting=setting, preset="paper")
    assert len(model.classes_) == 28 and "DMSO" not in model.classes_
    shapes = _linears(model.module)
    if isinstance(inputs, list):
        assert type(model.module).__name__ == "DualMLPClassifier"
        assert shapes == DUAL
        lr, wd = (1.37e-5, 4.52e-5) if setting == "single" else (1.63e-4, 4.52e-5)
    else:
        expected, lr, wd = TABLE6[(setting, inputs[0])]
        assert type(model.module).__name__ == "MLPClassifier"
        assert shapes == expected
        # [Linear -> LayerNorm -> ReLU] x depth, then the head
        kinds = [type(m).__name__ for m in model.module.encoder.layers]
        assert kinds == ["Linear", "LayerNorm", "ReLU"] * (len(expected) - 1)
    assert model.hparams["lr"] == lr and model.hparams["weight_decay"] == wd
    assert model.hparams["batch_size"] == 4096 and model.hparams["max_epochs"] == 100
    assert model.hparams["patience"] == 25 and model.hparams["gradient_clip"] == 0.5


# ---------------------------------------------------------------------------------------------------
# sampling
# ---------------------------------------------------------------------------------------------------
def test_draw_offsets_distinct_or_with_replacement():
    g = torch.Generator().manual_seed(0)
    counts = torch.tensor([40, 32, 5, 1, 1000] * 200)
    off = draw_offsets(counts, 32, g)
    assert off.shape == (1000, 32)
    assert bool((off >= 0).all()) and bool((off < counts[:, None]).all())
    for b in range(len(counts)):
        n_unique = len(set(off[b].tolist()))
        if counts[b] >= 32:
            assert n_unique == 32  # without replacement
    # with replacement below k: values spread over the whole range
    assert set(off[2].tolist()) <= set(range(5))
    assert set(off[counts == 5].flatten().tolist()) == set(range(5))
    # uniform: every position of a 40-cell sample is drawn with frequency k / n
    freq = torch.bincount(off[counts == 40].flatten(), minlength=40).double() / (counts == 40).sum()
    np.testing.assert_allclose(freq.numpy(), 32 / 40, atol=0.12)


def test_populations_come_from_the_right_sample_and_modalities_draw_independently():
    # feature value = sample code * 1000 + cell position: a mean reveals which cells were drawn
    n_samples, per = 6, 50
    codes = np.repeat(np.arange(n_samples), per)
    shuffle = np.random.default_rng(0).permutation(codes.size)  # rows not grouped by sample
    codes = codes[shuffle]
    pos = np.zeros(codes.size)
    for s in range(n_samples):
        pos[codes == s] = np.arange(per)
    data = torch.from_numpy(np.stack([codes * 1000.0 + pos, pos**2], 1).astype(np.float32))
    rows = np.arange(codes.size)
    pools = [
        SamplePools.build(data, rows, codes, n_samples),
        SamplePools.build(data.clone(), rows, codes, n_samples),
    ]
    ex = ExampleSet(
        pools,
        anchor=0,
        anchor_rows=torch.from_numpy(rows),
        example_samples=torch.from_numpy(codes),
        sample_labels=torch.arange(n_samples) % 3,
        k=8,
    )
    g = torch.Generator().manual_seed(1)
    batch = ex.batch(torch.arange(codes.size), g)
    sample_of = torch.from_numpy(codes)
    for key in ("x0", "x1"):
        mean_pos = batch[key][:, 0] - sample_of * 1000.0
        assert bool((mean_pos >= 0).all()) and bool((mean_pos <= per - 1).all())  # cells of the right sample
    assert torch.equal(batch["y"], sample_of % 3)
    # the two modalities draw different cells: their population means almost never coincide
    same = torch.isclose(batch["x0"], batch["x1"]).all(1).float().mean()
    assert float(same) < 0.02
    # the drawn rows themselves: right sample, distinct
    drawn = pools[0].draw_rows(sample_of[:10], 8, g)
    for b in range(10):
        assert set(codes[drawn[b].numpy()]) == {codes[b]}
        assert len(set(drawn[b].tolist())) == 8
    # single-profile: the anchor input is the example's own cell, the other a cell of the same sample
    single = ExampleSet(
        pools,
        anchor=0,
        anchor_rows=torch.from_numpy(rows),
        example_samples=torch.from_numpy(codes),
        sample_labels=torch.arange(n_samples),
        k=1,
    )
    b1 = single.batch(torch.arange(codes.size), g)
    assert torch.equal(b1["x0"], data)
    assert torch.equal(b1["x1"][:, 0] // 1000, sample_of.float())


def test_balanced_accuracy_from_confusion_matches_sklearn():
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 5, 300), rng.integers(0, 6, 300)
    y[y == 4] = 3  # a class absent from the truth
    confusion = torch.bincount(torch.from_numpy(y * 6 + p), minlength=36).reshape(6, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = sklearn.metrics.balanced_accuracy_score(y, p)
    assert balanced_accuracy_from_confusion(confusion) == pytest.approx(expected, abs=1e-12)


# ---------------------------------------------------------------------------------------------------
# learning
# ---------------------------------------------------------------------------------------------------
def test_single_profile_separable_data_reaches_one_and_metrics_match_sklearn(tmp_path):
    mdata = make_mdata(signal=6.0)
    mm.models.TreatmentClassifier.setup_mudata(mdata, inputs=("rna", "X_scgpt"))
    torch.manual_seed(0)
    model = mm.models.TreatmentClassifier(mdata, setting="single", preset=TINY)
    model.train(progress=False, accelerator="cpu", seed=1)
    scores = model.evaluate()
    assert list(scores.index) == ["test_we", "test_he"]
    np.testing.assert_allclose(scores["balanced_accuracy"], 1.0)
    pred = model.predict(split="test_he")
    assert len(pred) == 4 * 2 * 12  # 4 classes x 2 replicates x 12 cells; DMSO left out
    assert set(pred["sample"]) == {f"T{i}_r{r}" for i in range(4) for r in (1, 2)}
    assert "validation_balanced_accuracy" in model.history
    # save / load keeps the weights, the standardisation and the classes
    model.save(tmp_path / "model")
    loaded = mm.models.TreatmentClassifier.load(tmp_path / "model", adata=mdata)
    assert loaded.classes_ == model.classes_
    pd.testing.assert_frame_equal(loaded.predict(split="test_he"), pred)
    # a weaker model, so the metrics differ from each other and from 1
    mdata2 = make_mdata(signal=0.7, seed=3)
    mm.models.TreatmentClassifier.setup_mudata(mdata2, inputs=("rna", "X_scgpt"))
    weak = mm.models.TreatmentClassifier(mdata2, setting="single", preset={**TINY, "max_epochs": 3})
    weak.train(progress=False, accelerator="cpu")
    pred = weak.predict(split="test_we")
    got = weak.evaluate(splits="test_we").iloc[0]
    assert got["balanced_accuracy"] == pytest.approx(
        sklearn.metrics.balanced_accuracy_score(pred["true"], pred["predicted"])
    )
    assert got["macro_f1"] == pytest.approx(
        sklearn.metrics.f1_score(pred["true"], pred["predicted"], average="macro")
    )
    assert got["weighted_f1"] == pytest.approx(
        sklearn.metrics.f1_score(pred["true"], pred["predicted"], average="weighted")
    )
    assert 0.25 < got["balanced_accuracy"] < 1.0


def test_noise_is_near_chance():
    mdata = make_mdata(signal=0.0, cells=30, seed=5)
    results = mm.tl.classify(
        mdata,
        inputs=("img", "X_vit"),
        seeds=(0,),
        preset={**TINY, "max_epochs": 4},
        progress=False,
        accelerator="cpu",
        inplace=False,
    )
    assert (results["balanced_accuracy"] < 0.45).all()  # chance = 0.25


def test_classify_dual_multi_profile_results_summary_and_h5mu(tmp_path):
    mdata = make_mdata(signal=3.0, synthetic=True)
    before_obs = {m: mdata[m].obs.copy() for m in mdata.mod}
    mm.tl.classify(
        mdata,
        inputs=[("img", "X_vit"), ("rna_synthetic", "X_scgpt")],
        setting="multi",
        k=4,
        seeds=(1, 2),
        preset=TINY,
        progress=False,
        accelerator="cpu",
        key_added="clf",
    )
    entry = mdata.uns["morphomu"]["clf"]
    res = entry["results"]
    assert list(res.columns[:6]) == [
        "seed",
        "fold",
        "test_set",
        "balanced_accuracy",
        "macro_f1",
        "weighted_f1",
    ]
    assert res[["seed", "test_set"]].values.tolist() == [
        [1, "test_we"],
        [1, "test_he"],
        [2, "test_we"],
        [2, "test_he"],
    ]
    assert (res["fold"] == 1).all()  # the canonical split recorded by assign_split
    assert (res["balanced_accuracy"] > 0.6).all()
    summary = entry["summary"]
    we = res[res["test_set"] == "test_we"]["balanced_accuracy"]
    assert summary.loc["test_we", "balanced_accuracy_mean"] == pytest.approx(we.mean())
    assert summary.loc["test_we", "balanced_accuracy_std"] == pytest.approx(we.std(ddof=1))
    assert entry["chance"] == pytest.approx(0.25)
    assert entry["params"]["kinds"].tolist() == ["image", "rna"]
    for m in mdata.mod:  # user data untouched apart from uns
        pd.testing.assert_frame_equal(mdata[m].obs, before_obs[m])
        assert "_scvi_uuid" not in mdata[m].uns
    path = tmp_path / "clf.h5mu"
    mdata.write(path)
    back = md.read_h5mu(path).uns["morphomu"]["clf"]
    pd.testing.assert_frame_equal(back["results"], res, check_dtype=False)
    assert back["summary"].loc["test_he", "n_runs"] == 2


def test_classify_cross_validation_keeps_the_split_column():
    mdata = make_mdata(signal=5.0)
    split_before = mdata["rna"].obs["split"].copy()
    res = mm.tl.classify(
        mdata,
        inputs=("rna", "X_scgpt"),
        cv=True,
        preset={**TINY, "max_epochs": 3},
        progress=False,
        accelerator="cpu",
        inplace=False,
    )
    assert res["fold"].tolist() == [1, 1, 2, 2, 3, 3]
    assert (res["seed"] == 12345).all()
    # fold 2 tests on replicate 5: as many examples as that replicate has cells of the 4 classes
    assert res.loc[(res["fold"] == 2) & (res["test_set"] == "test_we"), "n_examples"].item() == 4 * 12
    pd.testing.assert_series_equal(mdata["rna"].obs["split"], split_before)
    assert "classify" not in mdata.uns.get("morphomu", {})


# ---------------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------------
def test_bad_input_is_refused_before_training():
    mdata = make_mdata()
    kw = {"progress": False, "preset": TINY}
    with pytest.raises(mm.ContractError, match="not a modality"):
        mm.tl.classify(mdata, inputs=("rna_synthetic", "X_scgpt"), **kw)
    with pytest.raises(mm.ContractError, match="obsm"):
        mm.tl.classify(mdata, inputs=("rna", "X_pca"), **kw)
    with pytest.raises(mm.MorphomuError, match="imaging or RNA"):
        mm.tl.classify(mdata, inputs=("protein", "X"), **kw)
    with pytest.raises(mm.MorphomuError, match="one imaging and one RNA"):
        parse_inputs([("img", "X_vit"), ("img_synthetic", "X_vit")])
    with pytest.raises(mm.MorphomuError, match="setting"):
        mm.tl.classify(mdata, inputs=("rna", "X_scgpt"), setting="pairs", **kw)
    with pytest.raises(mm.MorphomuError, match="preset 'huge'"):
        mm.tl.classify(mdata, inputs=("rna", "X_scgpt"), progress=False, preset="huge")
    with pytest.raises(mm.MorphomuError, match="unknown keys"):
        resolve_hparams({"learning_rate": 1.0}, "single", "rna")
    with pytest.raises(mm.ContractError, match="treatment_key=.compound."):
        mm.tl.classify(mdata, inputs=("rna", "X_scgpt"), treatment_key="compound", **kw)
    with pytest.raises(mm.MorphomuError, match="folds"):
        mm.tl.classify(mdata, inputs=("rna", "X_scgpt"), cv=True, folds=(4,), **kw)
    # a single class in train
    one = make_mdata(treatments=("T0",))
    with pytest.raises(mm.ContractError, match="at least two"):
        mm.tl.classify(one, inputs=("rna", "X_scgpt"), **kw)
    # no validation split
    mdata["rna"].obs["split"] = mdata["rna"].obs["split"].astype(str).replace("val", "train")
    with pytest.raises(mm.ContractError, match="'val'"):
        mm.tl.classify(mdata, inputs=("rna", "X_scgpt"), **kw)
    assert "classify" not in mdata.uns.get("morphomu", {})


def test_cache_options_are_checked_and_kept_for_prediction(tmp_path):
    """train's caching arguments are checked before any work and also decide how predict reads the inputs."""
    from morphomu.train._disk_cache import CacheOptions, check_cache_options

    with pytest.raises(mm.MorphomuError, match="cache_dtype"):
        check_cache_options(None, None, "int8")
    assert check_cache_options(True, None, "float16") == CacheOptions(True, None, "float16")
    mdata = make_mdata()
    mm.models.TreatmentClassifier.setup_mudata(mdata, inputs=("rna", "X_scgpt"))
    preds = {}
    for in_memory in (True, False):
        torch.manual_seed(0)
        model = mm.models.TreatmentClassifier(mdata, preset=TINY)
        assert model._cache_options == CacheOptions()
        for bad in ({"in_memory": "no"}, {"cache_dtype": "int8"}):
            with pytest.raises(mm.MorphomuError, match="cache_dtype"):
                model.train(max_epochs=1, progress=False, **bad)
        model.train(max_epochs=2, progress=False, in_memory=in_memory, cache_dir=tmp_path)
        assert model._cache_options == CacheOptions(in_memory, tmp_path, "float32")
        assert len(model._row_caches) == (0 if in_memory else 1)  # built once, reused by predict
        preds[in_memory] = model.predict(split="val")
        assert len(model._row_caches) == (0 if in_memory else 1)
    pd.testing.assert_frame_equal(preds[True], preds[False])


# ---------------------------------------------------------------------------------------------------
# renamed arguments, models saved before the renames, keys that follow the data
# ---------------------------------------------------------------------------------------------------
QUICK = {"preset": "tiny", "max_epochs": 2, "batch_size": 32, "lr": 1e-2}


def _trained(mdata, *, old: str | None = None, **train):
    """A tiny classifier on rna, set up and built with the current names or with the former one ``old``."""
    setup = {"target_key": "treatment"} if old == "target_key" else {"treatment_key": "treatment"}
    mm.models.TreatmentClassifier.setup_mudata(mdata, inputs=("rna", "X_scgpt"), **setup)
    torch.manual_seed(0)
    init = {"hparams": QUICK} if old == "hparams" else {"preset": QUICK}
    model = mm.models.TreatmentClassifier(mdata, setting="single", **init)
    model.train(progress=False, accelerator="cpu", **train)
    return model


@pytest.fixture(scope="module")
def reference():
    mdata = make_mdata(signal=1.0, seed=7)
    model = _trained(mdata, seed=3)
    return mdata, model.predict(split="test_we")


@pytest.mark.parametrize(("old", "new"), [("target_key", "treatment_key"), ("hparams", "preset")])
def test_classifier_former_argument_names_warn_and_give_the_same_model(reference, old, new):
    mdata, expected = reference
    mdata = mdata.copy()
    with pytest.warns(FutureWarning, match=rf"{old}= was renamed to {new}="):
        model = _trained(mdata, old=old, seed=3)
    assert model.setup_args["treatment_key"] == "treatment" and "target_key" not in model.setup_args
    assert "preset" in model.init_params_["non_kwargs"] and "hparams" not in model.init_params_["non_kwargs"]
    pd.testing.assert_frame_equal(model.predict(split="test_we"), expected)
    with pytest.raises(mm.MorphomuError, match=rf"pass {new}= only"):
        if old == "hparams":
            mm.models.TreatmentClassifier(mdata, hparams="tiny", preset="tiny")
        else:
            mm.models.TreatmentClassifier.setup_mudata(
                mdata, inputs=("rna", "X_scgpt"), target_key="treatment", treatment_key="treatment"
            )


def test_train_seed_defaults_to_zero(reference):
    import inspect

    assert inspect.signature(mm.models.TreatmentClassifier.train).parameters["seed"].default == 0
    mdata, _ = reference
    mdata = mdata.copy()
    default = _trained(mdata).predict(split="test_we")
    pd.testing.assert_frame_equal(_trained(mdata, seed=0).predict(split="test_we"), default)


def _rename_saved(path, init: dict[str, str], setup: dict[str, str]) -> None:
    """Rewrite a save's attributes.json under the former names, in the places and order they had."""
    import json

    file = path / "attributes.json"
    body = json.loads(file.read_text())
    attributes = body["attributes"]

    def renamed(d: dict, names: dict[str, str]) -> dict:
        return {names.get(k, k): v for k, v in d.items()}

    attributes["init_params_"]["non_kwargs"] = renamed(attributes["init_params_"]["non_kwargs"], init)
    registry = attributes["registry_"]
    registry["setup_args"] = renamed(registry["setup_args"], setup)
    file.write_text(json.dumps(body))


def test_a_model_saved_before_the_renames_loads_silently(reference, tmp_path):
    mdata, expected = reference
    mdata = mdata.copy()
    model = _trained(mdata, seed=3)
    model.save(tmp_path / "model")
    _rename_saved(tmp_path / "model", {"preset": "hparams"}, {"treatment_key": "target_key"})
    registry = mm.models.TreatmentClassifier.load_registry(tmp_path / "model")
    assert registry["setup_args"]["target_key"] == "treatment"  # the save really is in the former names
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # the user passed nothing: no warning
        loaded = mm.models.TreatmentClassifier.load(tmp_path / "model", adata=mdata, accelerator="cpu")
    assert loaded.setup_args["treatment_key"] == "treatment"
    assert loaded.init_params_["non_kwargs"]["preset"] == QUICK
    assert loaded.hparams == model.hparams
    pd.testing.assert_frame_equal(loaded.predict(split="test_we"), expected)
    # and it saves again under the current names
    loaded.save(tmp_path / "again")
    again = mm.models.TreatmentClassifier.load_registry(tmp_path / "again")
    assert again["setup_args"]["treatment_key"] == "treatment" and "target_key" not in again["setup_args"]


CLASSIFY = {"inputs": ("rna", "X_scgpt"), "seeds": (3,), "progress": False, "accelerator": "cpu"}


@pytest.fixture(scope="module")
def classified():
    mdata = make_mdata(signal=1.0, seed=8)
    return mdata, mm.tl.classify(mdata, preset=QUICK, inplace=False, **CLASSIFY)


@pytest.mark.parametrize(
    ("old", "new", "value"),
    [
        ("target", "treatment_key", "treatment"),
        ("test_sets", "splits", ("test_we", "test_he")),
        ("hparams", "preset", QUICK),
    ],
)
def test_classify_former_argument_names_warn_and_give_the_same_results(classified, old, new, value):
    mdata, expected = classified
    kwargs = {"preset": QUICK, **CLASSIFY, old: value}
    if old == "hparams":
        del kwargs["preset"]
    with pytest.warns(FutureWarning, match=rf"classify: {old}= was renamed to {new}="):
        got = mm.tl.classify(mdata, inplace=False, **kwargs)
    pd.testing.assert_frame_equal(got, expected)


def test_classify_splits_test_means_every_label_but_train_and_val_in_category_order(classified):
    mdata, expected = classified
    assert expected["test_set"].tolist() == ["test_we", "test_he"]  # the default, splits="test"
    one = mm.tl.classify(mdata, preset=QUICK, splits="test_he", inplace=False, **CLASSIFY)
    pd.testing.assert_frame_equal(one, expected[expected["test_set"] == "test_he"].reset_index(drop=True))
    # an own design: other test labels, in the column's category order (not alphabetical)
    own = mdata.copy()
    split = own["rna"].obs["split"].astype(str).replace({"test_we": "later", "test_he": "earlier"})
    own["rna"].obs["split"] = pd.Categorical(split, categories=["train", "val", "later", "earlier"])
    got = mm.tl.classify(own, preset=QUICK, inplace=False, **CLASSIFY)
    assert got["test_set"].tolist() == ["later", "earlier"]
    np.testing.assert_allclose(got["balanced_accuracy"], expected["balanced_accuracy"])
    with pytest.raises(mm.ContractError, match="splits='test'.*no label besides"):
        none = mdata.copy()
        none["rna"].obs["split"] = (
            none["rna"].obs["split"].astype(str).replace({"test_we": "train", "test_he": "val"})
        )
        mm.tl.classify(none, preset=QUICK, **CLASSIFY)
    with pytest.raises(mm.MorphomuError, match="splits must be"):
        mm.tl.classify(mdata, preset=QUICK, splits=[1, 2], **CLASSIFY)


def test_classify_keys_follow_the_data_and_are_recorded_under_their_names(classified):
    """An input generated by a step that recorded its keys: classify takes them, the caller's win."""
    from morphomu._uns import store

    mdata, expected = classified
    mdata = mdata.copy()
    names = {"treatment": "compound", "sample": "well", "split": "part"}
    for mod in ("img", "rna"):
        mdata[mod].obs = mdata[mod].obs.rename(columns=names)
    mdata.mod["rna_synthetic"] = mdata["rna"].copy()
    mdata["rna_synthetic"].obs_names = [f"syn_{n}" for n in mdata["rna"].obs_names]
    mdata.update()
    keys = {"treatment_key": "compound", "sample_key": "well", "split_key": "part"}
    params = {"rna_mod": "rna", "rna_rep": "X_scgpt", "image_mod": "img", "image_rep": "X_vit", **keys}
    store(mdata, "rna_synthetic", {"params": params}, tool="generate_rna")
    # the real imaging input's own record says otherwise: the generated modality's record wins
    store(mdata, "embedding", {"params": {"mod": "img", "rep": "X_vit", "treatment_key": "nope"}}, tool="x")
    kw = {**CLASSIFY, "inputs": ("rna_synthetic", "X_scgpt")}
    got = mm.tl.classify(mdata, preset=QUICK, inplace=False, **kw)
    # same cells, same labels under other names (the fold is unknown: assign_split recorded 'split' only)
    pd.testing.assert_frame_equal(got.drop(columns="fold"), expected.drop(columns="fold"))
    assert (got["fold"] == 0).all()
    both = [("img", "X_vit"), ("rna_synthetic", "X_scgpt")]
    mm.tl.classify(mdata, preset=QUICK, **{**kw, "inputs": both, "key_added": "clf"})
    params = mdata.uns["morphomu"]["clf"]["params"]
    assert mdata.uns["morphomu"]["clf"]["tool"] == "classify"
    assert {k: params[k] for k in keys} == keys
    assert list(params["inputs"]) == ["img/X_vit", "rna_synthetic/X_scgpt"]
    assert list(params["splits"]) == ["test_we", "test_he"]
    assert params["preset"]["preset"] == "tiny" and params["hparams"]["max_epochs"] == 2
    for old in ("target", "test_sets"):
        assert old not in params
    # the caller's key wins over the record
    with pytest.raises(mm.ContractError, match="treatment_key='treatment'"):
        mm.tl.classify(mdata, preset=QUICK, treatment_key="treatment", **kw)
