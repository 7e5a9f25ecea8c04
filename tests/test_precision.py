"""Precision: ``'auto'`` resolved from the hardware, explicit values, records, and bf16 close to float32.

The suite pins ``MORPHOMU_PRECISION=32`` (conftest); these tests pass precisions explicitly or unset it.
"""

import inspect

import numpy as np
import pytest
import torch

import morphomu as mm
from morphomu import MorphomuError
from morphomu._core import _precision
from morphomu._core._precision import (
    PRECISION_ENV,
    check_precision,
    cpu_has_fast_bf16,
    resolve_precision,
)
from morphomu.models import (
    ImageVAE,
    MorphologyEmbedder,
    PhenoSeq,
    RidgeBaseline,
    TreatmentClassifier,
    Trident,
)

SIM = {
    "seed": 0,
    "n_img_cells": 1500,
    "n_rna_cells": 1500,
    "image_dim": 80,
    "rna_dim": 32,
    "effect_scale": 3.0,
}
TRAIN = {"max_epochs": 3, "batch_size": 64, "lr": 3e-3, "warmup_epochs": 1, "enable_progress_bar": False}

AMD_BF16 = "processor\t: 0\nflags\t\t: fpu sse sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
INTEL_AMX = "processor\t: 0\nflags\t\t: fpu sse avx512f amx_tile amx_bf16 amx_int8\n"
NO_BF16 = "processor\t: 0\nflags\t\t: fpu sse sse2 avx2 avx512f avx512_vnni\n"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("auto", "auto"),
        (32, "32-true"),
        ("32", "32-true"),
        ("32-true", "32-true"),
        ("bf16", "bf16-mixed"),
        (" BF16-Mixed ", "bf16-mixed"),
        (16, "16-mixed"),
        ("16-mixed", "16-mixed"),
    ],
)
def test_check_precision_accepts_lightning_names(given, expected):
    assert check_precision(given) == expected


@pytest.mark.parametrize("given", ["bf16-true", "16-true", 64, "64-true"])
def test_true_half_or_double_precision_is_refused_with_the_reason(given):
    with pytest.raises(MorphomuError, match=r"precision=.*float32 weights.*'bf16-mixed'"):
        check_precision(given)


@pytest.mark.parametrize("given", ["fp8", 8, True, None, 32.0, ["32"]])
def test_unknown_precision_names_the_argument_and_the_choices(given):
    with pytest.raises(MorphomuError, match=r"^precision=.*expected one of \['auto', '32-true'"):
        check_precision(given)


@pytest.mark.parametrize(
    ("cpuinfo", "fast"), [(AMD_BF16, True), (INTEL_AMX, True), (NO_BF16, False), ("", False)]
)
def test_cpu_bf16_comes_from_the_cpuinfo_flags(cpuinfo, fast):
    assert cpu_has_fast_bf16(cpuinfo) is fast


def test_auto_resolves_from_the_flags_and_the_environment(monkeypatch):
    monkeypatch.delenv(PRECISION_ENV, raising=False)
    monkeypatch.setattr(_precision, "_proc_cpuinfo", lambda: AMD_BF16)
    assert resolve_precision("auto", "cpu") == "bf16-mixed"
    assert resolve_precision("auto", torch.device("cpu")) == "bf16-mixed"
    assert resolve_precision("32", "cpu") == "32-true"  # explicit wins
    monkeypatch.setattr(_precision, "_proc_cpuinfo", lambda: NO_BF16)
    assert resolve_precision("auto", "cpu") == "32-true"
    assert resolve_precision("bf16", "cpu") == "bf16-mixed"
    monkeypatch.setattr(_precision, "_proc_cpuinfo", lambda: AMD_BF16)
    monkeypatch.setenv(PRECISION_ENV, "32")
    assert resolve_precision("auto", "cpu") == "32-true"
    assert resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"  # explicit still wins
    monkeypatch.setenv(PRECISION_ENV, "fp8")
    with pytest.raises(MorphomuError, match=PRECISION_ENV):
        resolve_precision("auto", "cpu")


def test_this_machine_resolves_as_its_flags_say(monkeypatch):
    monkeypatch.delenv(PRECISION_ENV, raising=False)
    expected = "bf16-mixed" if cpu_has_fast_bf16() else "32-true"
    assert resolve_precision("auto", "cpu") == expected


@pytest.mark.parametrize("model_cls", [PhenoSeq, MorphologyEmbedder, Trident, ImageVAE, TreatmentClassifier])
def test_every_model_trains_at_auto_precision_by_default(model_cls):
    assert inspect.signature(model_cls.train).parameters["precision"].default == "auto"


@pytest.mark.parametrize("model_cls", [PhenoSeq, MorphologyEmbedder, Trident, RidgeBaseline])
def test_every_generator_generates_at_auto_precision_by_default(model_cls):
    assert inspect.signature(model_cls.generate).parameters["precision"].default == "auto"


def test_the_tools_take_precision_too():
    assert inspect.signature(mm.tl.classify).parameters["precision"].default == "auto"


@pytest.fixture(scope="module")
def mdata():
    data = mm.datasets.simulate_scgenescope(**SIM)
    mm.pp.assign_split(data)
    return data


@pytest.fixture(scope="module")
def bf16_model(mdata):
    data = mdata.copy()
    PhenoSeq.setup_mudata(data)
    torch.manual_seed(0)
    model = PhenoSeq(data, preset="tiny")
    model.train(precision="bf16", accelerator="cpu", **TRAIN)
    return model


def test_bad_precision_is_refused_before_any_training(mdata):
    data = mdata.copy()
    PhenoSeq.setup_mudata(data)
    model = PhenoSeq(data, preset="tiny")
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    with pytest.raises(MorphomuError, match=r"precision='bf16-true'"):
        model.train(precision="bf16-true", **TRAIN)
    assert not model.is_trained_
    assert all(torch.equal(before[k], v) for k, v in model.module.state_dict().items())


def test_bf16_training_learns_keeps_float32_weights_and_is_recorded(bf16_model, tmp_path):
    loss = bf16_model.history_["train_loss"]["train_loss"].to_numpy(dtype=float)
    assert np.isfinite(loss).all() and loss[-1] < loss[0]
    assert bf16_model.train_precision_ == "bf16-mixed"
    assert {p.dtype for p in bf16_model.module.parameters()} == {torch.float32}
    bf16_model.save(tmp_path / "m")
    loaded = PhenoSeq.load(tmp_path / "m", bf16_model.adata)
    assert loaded.train_precision_ == "bf16-mixed"


def test_bf16_generation_is_close_to_float32_and_recorded(bf16_model):
    data = bf16_model.adata
    obs = data["rna"].obs
    samples = sorted(obs.loc[obs["split"] == "test_we", "sample"].astype(str).unique())[:2]
    kw = {"samples": samples, "n_cells_per_sample": 16, "n_steps": 10, "seed": 3}
    fp32 = bf16_model.generate(data, precision="32", **kw)
    bf16 = bf16_model.generate(data, precision="bf16-mixed", **kw)
    assert fp32.uns["morphomu"]["generate"]["precision"] == "32-true"
    assert bf16.uns["morphomu"]["generate"]["precision"] == "bf16-mixed"
    a, b = fp32.obsm["X_scgpt"], bf16.obsm["X_scgpt"]
    assert b.dtype == np.float32
    assert not np.array_equal(a, b)  # autocast really ran in bf16
    # the same cells up to bf16 rounding: per-cell correlation near 1, error small next to the spread
    r = [np.corrcoef(x, y)[0, 1] for x, y in zip(a, b, strict=True)]
    assert min(r) > 0.98
    assert np.abs(a - b).mean() < 0.1 * a.std()


def test_the_tool_records_both_precisions(bf16_model):
    data = bf16_model.adata.copy()
    mm.tl.generate_rna(
        data, model=bf16_model, key_added="rna_bf16", n_cells_per_sample=4, n_steps=5, precision="32-true"
    )
    record = data.uns["morphomu"]["rna_bf16"]
    assert record["train_precision"] == "bf16-mixed"
    assert record["precision"] == "32-true"


def test_bad_generate_precision_is_refused_before_work(bf16_model):
    data = bf16_model.adata.copy()
    mods = sorted(data.mod)
    with pytest.raises(MorphomuError, match=r"precision=8"):
        mm.tl.generate_rna(data, model=bf16_model, key_added="rna_x", n_steps=5, precision=8)
    assert sorted(data.mod) == mods


def test_compile_falls_back_to_eager_with_a_warning(mdata, monkeypatch):
    data = mdata.copy()
    PhenoSeq.setup_mudata(data)

    def broken_compile(fn, **_):
        def run(*args, **kwargs):
            raise RuntimeError("no C++ compiler here")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    torch.manual_seed(0)
    model = PhenoSeq(data, preset="tiny")
    with pytest.warns(mm.MorphomuWarning, match="torch.compile failed.*RuntimeError: no C\\+\\+ compiler"):
        model.train(compile=True, **{**TRAIN, "max_epochs": 1})
    assert model.is_trained_


def test_compile_must_be_a_bool(mdata):
    data = mdata.copy()
    PhenoSeq.setup_mudata(data)
    with pytest.raises(MorphomuError, match=r"compile='yes': expected True or False"):
        PhenoSeq(data, preset="tiny").train(compile="yes", **TRAIN)


@pytest.mark.parametrize(
    ("precision", "fused"), [("32-true", True), ("bf16-mixed", True), ("16-mixed", False)]
)
def test_bf16_gets_the_fused_optimiser_and_clips_its_true_gradients(bf16_model, precision, fused):
    """Fused AdamW except under fp16's loss scaler; under bf16-mixed the plan clips (Lightning would refuse)."""
    from types import SimpleNamespace

    from lightning.pytorch.plugins.precision import MixedPrecision

    from morphomu.train._diffusion_plan import DiffusionTrainingPlan
    from morphomu.train._plan import adamw

    plan = DiffusionTrainingPlan(bf16_model.module)
    plan._trainer = SimpleNamespace(precision=precision)
    optimizer = adamw(plan, plan.trainable())
    assert optimizer.defaults["fused"] is (True if fused else None)
    assert optimizer.defaults["foreach"] is (None if fused else True)
    if precision != "bf16-mixed":
        return
    params = plan.trainable()
    for p in params:
        p.grad = torch.full_like(p, 0.5)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
    assert norm > 1.0
    plan._trainer = SimpleNamespace(precision_plugin=MixedPrecision("bf16-mixed", "cpu"))
    plan.configure_gradient_clipping(optimizer, gradient_clip_val=1.0, gradient_clip_algorithm="norm")
    clipped = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
    assert clipped == pytest.approx(1.0, rel=1e-3)
    grads = torch.cat([p.grad.flatten() for p in params])
    assert torch.allclose(grads, grads[0])  # scaled, not clamped per value
    for p in params:
        p.grad = None
