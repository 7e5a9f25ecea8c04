"""Named errors before any work starts: model and tool arguments, simulator sizes, unreadable files.

Every bad value here used to give a bare traceback (``TypeError`` from ``'64' % n_heads``, torch's or
the optimiser's ``ValueError``, ``MemoryError``, h5py's ``OSError``), fail only after training, or pass
silently. Now each is a :class:`~morphomu.MorphomuError` that names the argument, the value and what was
expected, raised before any training, allocation or writing.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import morphomu as mm
from morphomu import MorphomuError
from morphomu.models import ImageVAE, PhenoSeq, TreatmentClassifier, Trident

sys.path.insert(0, str(Path(__file__).parent))
from test_read import write_release

QUIET = {"enable_progress_bar": False, "enable_model_summary": False}
#: With a bad value, train must fail before it starts; these keep a (wrongly) started run short.
SHORT = {"max_epochs": 1, **QUIET}


@pytest.fixture(scope="module")
def data():
    """A small experiment with 16 px tiles (do not modify: copy first)."""
    mdata = mm.datasets.simulate_scgenescope(
        seed=0, n_img_cells=300, n_rna_cells=300, image_dim=20, rna_dim=10, with_images=True, image_size=16
    )
    mm.pp.assign_split(mdata)
    return mdata


def snapshot(mdata):
    return (
        sorted(mdata.mod),
        sorted(mdata.uns),
        {k: (a.shape, list(a.obs.columns), sorted(a.obsm), sorted(a.uns)) for k, a in mdata.mod.items()},
    )


def check_named(info: pytest.ExceptionInfo, arg: str, value: str, expected: str) -> None:
    """The message names the argument, the value and the expectation."""
    text = str(info.value)
    assert arg in text, text
    assert value in text, text
    assert re.search(expected, text), text


# --------------------------------------------------------------------------------------------------------
# models: construction, train, generate
# --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def phenoseq_data(data):
    mdata = data.copy()
    PhenoSeq.setup_mudata(mdata)
    return mdata


@pytest.fixture(scope="module")
def phenoseq(phenoseq_data):
    return PhenoSeq(phenoseq_data, preset="tiny")


@pytest.fixture(scope="module")
def trident_data(data):
    mdata = data.copy()
    Trident.setup_mudata(mdata)
    return mdata


@pytest.fixture(scope="module")
def trident(trident_data):
    return Trident(trident_data, preset="tiny", n_top_genes=50)


@pytest.fixture(scope="module")
def tiles(data):
    img = data["img"].copy()
    ImageVAE.setup_anndata(img)
    return img


@pytest.fixture(scope="module")
def image_vae(tiles):
    return ImageVAE(tiles, preset="tiny")


@pytest.fixture(scope="module")
def classifier_data(data):
    mdata = data.copy()
    TreatmentClassifier.setup_mudata(mdata, inputs=("img", "X_vit"))
    return mdata


@pytest.fixture(scope="module")
def classifier(classifier_data):
    return TreatmentClassifier(classifier_data, preset="tiny")


POSITIVE_INT = "must be a positive integer"
FRACTION = r"must be a number in \[0, 1\)"
LR = "must be a finite number > 0"
NON_NEGATIVE = "must be a finite number >= 0"
STEPS = "must be an integer between 1 and 1000 .the noise schedule has 1000 timesteps"

INIT_CASES = [
    # model, keyword, bad value, its repr in the message, expectation
    ("phenoseq", "n_hidden", "64", "'64'", POSITIVE_INT),
    ("phenoseq", "n_layers", 2.5, "2.5", POSITIVE_INT),
    ("phenoseq", "n_heads", True, "True", POSITIVE_INT),
    ("phenoseq", "n_encoder_layers", -1, "-1", "must be a non-negative integer"),
    ("phenoseq", "dropout", 2.0, "2.0", FRACTION),
    ("phenoseq", "p_uncond", "0.1", "'0.1'", FRACTION),
    ("trident", "n_hidden", "64", "'64'", POSITIVE_INT),
    ("trident", "n_layers", 2.5, "2.5", POSITIVE_INT),
    ("trident", "dropout", "0.1", "'0.1'", FRACTION),
    ("trident", "n_bits", 2.5, "2.5", POSITIVE_INT),
    ("image_vae", "latent_channels", "4", "'4'", POSITIVE_INT),
    ("image_vae", "layers_per_block", 1.5, "1.5", POSITIVE_INT),
    ("image_vae", "block_out_channels", (16, "32"), "'32'", r"block_out_channels\[1\] " + POSITIVE_INT),
    ("classifier", "k", True, "True", POSITIVE_INT),
    (
        "classifier",
        "preset",
        {"preset": "tiny", "n_hidden": True},
        "True",
        r"preset\['n_hidden'\] " + POSITIVE_INT,
    ),
    ("classifier", "preset", {"preset": "tiny", "weight_decay": float("nan")}, "nan", NON_NEGATIVE),
]


@pytest.mark.parametrize(("model", "arg", "value", "shown", "expected"), INIT_CASES)
def test_model_sizes(request, model, arg, value, shown, expected):
    mdata = request.getfixturevalue(
        {
            "phenoseq": "phenoseq_data",
            "trident": "trident_data",
            "image_vae": "tiles",
            "classifier": "classifier_data",
        }[model]
    )
    cls = {
        "phenoseq": PhenoSeq,
        "trident": Trident,
        "image_vae": ImageVAE,
        "classifier": TreatmentClassifier,
    }[model]
    kwargs = {"preset": "tiny"} if model != "classifier" else {"preset": "tiny"}
    before = snapshot(mdata) if model != "image_vae" else None
    with pytest.raises(MorphomuError) as info:
        cls(mdata, **{**kwargs, arg: value})
    check_named(info, arg, shown, expected)
    if before is not None:
        assert snapshot(mdata) == before


TRAIN_CASES = [
    ("phenoseq", {"lr": -1}, "lr", "-1", LR),
    ("phenoseq", {"lr": float("nan")}, "lr", "nan", LR),
    ("phenoseq", {"weight_decay": -0.5}, "weight_decay", "-0.5", NON_NEGATIVE),
    ("phenoseq", {"warmup_epochs": -1}, "warmup_epochs", "-1", NON_NEGATIVE),
    ("phenoseq", {"max_epochs": True}, "max_epochs", "True", POSITIVE_INT),
    ("trident", {"lr": -1, "vae_epochs": 1}, "lr", "-1", LR),
    ("trident", {"weight_decay": -1.0, "vae_epochs": 1}, "weight_decay", "-1.0", NON_NEGATIVE),
    ("image_vae", {"kl_weight": float("nan")}, "kl_weight", "nan", NON_NEGATIVE),
    ("image_vae", {"weight_decay": -1.0}, "weight_decay", "-1.0", NON_NEGATIVE),
    ("image_vae", {"batch_size": "8"}, "batch_size", "'8'", POSITIVE_INT),
    ("classifier", {"lr": -1}, "lr", "-1", LR),
    ("classifier", {"weight_decay": -1.0}, "weight_decay", "-1.0", NON_NEGATIVE),
    ("classifier", {"epoch_size": 2.5}, "epoch_size", "2.5", POSITIVE_INT),
]


@pytest.mark.parametrize(("model", "kwargs", "arg", "shown", "expected"), TRAIN_CASES)
def test_train_arguments_before_training(request, model, kwargs, arg, shown, expected):
    m = request.getfixturevalue(model)
    t0 = time.perf_counter()
    with pytest.raises(MorphomuError) as info:
        m.train(**{**SHORT, **kwargs})
    check_named(info, arg, shown, expected)
    assert not m.is_trained_
    assert time.perf_counter() - t0 < 5  # refused up front, not after data preparation or training


GENERATE_CASES = [
    ("phenoseq", "generate", {"n_steps": 10**9}, "n_steps", "1000000000", STEPS),
    ("phenoseq", "generate", {"n_steps": 0}, "n_steps", "0", STEPS),
    ("phenoseq", "generate", {"n_steps": 50.0}, "n_steps", "50.0", STEPS),
    ("phenoseq", "generate", {"eta": -1.0}, "eta", "-1.0", NON_NEGATIVE),
    ("phenoseq", "generate", {"n_cells_per_sample": True}, "n_cells_per_sample", "True", "'match'"),
    ("trident", "generate", {"n_steps": 10**9}, "n_steps", "1000000000", STEPS),
    ("trident", "generate", {"n_images": 2.0}, "n_images", "2.0", POSITIVE_INT),
    ("trident", "generate", {"batch_size": "8"}, "batch_size", "'8'", POSITIVE_INT),
    (
        "image_vae",
        "encode",
        {"images": np.zeros((1, 5, 16, 16), np.uint8), "batch_size": 0},
        "batch_size",
        "0",
        POSITIVE_INT,
    ),
    ("classifier", "predict", {"batch_size": 0}, "batch_size", "0", POSITIVE_INT),
]


@pytest.mark.parametrize(("model", "method", "kwargs", "arg", "shown", "expected"), GENERATE_CASES)
def test_generation_arguments(request, model, method, kwargs, arg, shown, expected):
    # the models are untrained: the argument is refused before the model is even looked at
    m = request.getfixturevalue(model)
    with pytest.raises(MorphomuError) as info:
        getattr(m, method)(**kwargs)
    check_named(info, arg, shown, expected)


# --------------------------------------------------------------------------------------------------------
# tools that forward to the models: refused before a model is registered or trained
# --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "arg", "shown", "expected"),
    [
        ({"n_steps": 10**9}, "n_steps", "1000000000", STEPS),
        ({"train_kwargs": {"lr": -1, **SHORT}}, "lr", "-1", LR),
        ({"train_kwargs": {"max_epochs": "1"}}, "max_epochs", "'1'", POSITIVE_INT),
    ],
)
def test_generate_rna_checks_before_training(data, kwargs, arg, shown, expected):
    mdata = data.copy()
    before = snapshot(mdata)
    with pytest.raises(MorphomuError) as info:
        mm.tl.generate_rna(mdata, preset="tiny", **{"train_kwargs": SHORT, **kwargs})
    check_named(info, arg, shown, expected)
    assert snapshot(mdata) == before


@pytest.mark.parametrize(
    ("kwargs", "arg", "shown", "expected"),
    [
        ({"n_steps": 10**9}, "n_steps", "1000000000", STEPS),
        ({"output": "embedding", "n_steps": 0}, "n_steps", "0", STEPS),
        ({"train_kwargs": {"lr": -1, "vae_epochs": 1, **SHORT}}, "lr", "-1", LR),
        ({"preset": "huge"}, "preset", "'huge'", "choose one of"),
    ],
)
def test_generate_morphology_checks_before_training(data, kwargs, arg, shown, expected):
    mdata = data.copy()
    before = snapshot(mdata)
    with pytest.raises(MorphomuError) as info:
        mm.tl.generate_morphology(
            mdata,
            **{
                "preset": "tiny",
                "n_images_per_treatment": 1,
                "train_kwargs": {"vae_epochs": 1, **SHORT},
                **kwargs,
            },
        )
    check_named(info, arg, shown, expected)
    assert snapshot(mdata) == before


def test_classify_checks_before_training(data):
    mdata = data.copy()
    before = snapshot(mdata)
    with pytest.raises(MorphomuError) as info:
        mm.tl.classify(
            mdata,
            inputs=("img", "X_vit"),
            setting="multi",
            k=True,
            seeds=1,
            preset={"preset": "tiny", "max_epochs": 1},
            progress=False,
        )
    check_named(info, "k", "True", POSITIVE_INT)
    assert snapshot(mdata) == before


# --------------------------------------------------------------------------------------------------------
# simulator sizes
# --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "shown"),
    [
        ({"n_img_cells": 10**12}, "n_img_cells=1_000_000_000_000"),
        ({"n_rna_cells": 10**11}, "n_rna_cells=100_000_000_000"),
        ({"with_images": True, "image_size": 10**5}, "image_size=100_000"),
    ],
)
def test_absurd_simulator_sizes_refused_quickly(kwargs, shown, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    t0 = time.perf_counter()
    with pytest.raises(MorphomuError) as info:
        mm.datasets.simulate_scgenescope(**kwargs)
    assert time.perf_counter() - t0 < 5  # refused up front: nothing allocated
    text = str(info.value)
    assert shown in text and re.search(
        r"needs about [\d.]+ [KMGTP]iB of memory, but only [\d.]+ [KMGTP]?i?B", text
    )
    assert not any(tmp_path.iterdir())


def _needed_bytes(message: str) -> float:
    value, unit = re.search(r"needs about ([\d.]+) ([KMGTP]?i?B)", message).groups()
    return float(value) * 1024 ** ["B", "KiB", "MiB", "GiB", "TiB", "PiB"].index(unit)


def test_streamed_simulation_estimates_its_working_set(tmp_path, monkeypatch):
    """With ``out`` the imaging matrix is streamed to disk: only what stays in memory counts."""
    from morphomu import _validation

    out = tmp_path / "big.h5mu"
    # 200,000 imaged cells x 5120 float32: 3.8 GiB in memory, ~0.1 GiB of obs and latents while streamed
    monkeypatch.setattr(_validation, "available_memory", lambda: 2 << 30)
    with pytest.raises(MorphomuError) as info:
        mm.datasets.simulate_scgenescope(n_img_cells=200_000)
    text = str(info.value)
    assert "n_img_cells=200_000" in text and "but only 2.0 GiB is available" in text
    assert "out='data.h5mu'" in text  # streaming would fit: the message says so
    in_memory = _needed_bytes(text)
    monkeypatch.setattr(_validation, "available_memory", lambda: 1 << 20)
    with pytest.raises(
        MorphomuError, match=r"out=\.\.\.\) needs about .* but only 1\.0 MiB is available"
    ) as info:
        mm.datasets.simulate_scgenescope(n_img_cells=200_000, out=out)
    streamed = _needed_bytes(str(info.value))
    assert in_memory > 3.8 * 2**30 and streamed < 0.5 * 2**30
    assert not out.exists()


def test_simulator_refuses_non_integer_sizes():
    with pytest.raises(
        mm.ContractError, match=r"n_genes must be an integer between 50 and \d+, got 100\.0 of type float"
    ):
        mm.datasets.simulate_scgenescope(n_genes=100.0)


def test_image_renderer_sizes():
    from morphomu.datasets._simulate import LATENT_AXES
    from morphomu.datasets._simulate_images import render_tiles

    latent = np.zeros((3, len(LATENT_AXES)), np.float32)
    rng = np.random.default_rng(0)
    with pytest.raises(MorphomuError, match=r"image_size must be a positive integer, got '64' of type str"):
        render_tiles(rng, latent, axes=LATENT_AXES, image_size="64")
    with pytest.raises(MorphomuError, match=r"rendering 3 tiles of 5 x 1000000 x 1000000 uint8 needs about"):
        render_tiles(rng, latent, axes=LATENT_AXES, image_size=10**6)


# --------------------------------------------------------------------------------------------------------
# unreadable files
# --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backed", [False, "r"])
@pytest.mark.parametrize("damage", ["truncate", "text"])
def test_truncated_release_file_is_named(tmp_path, backed, damage):
    write_release(tmp_path, n_per_unit=1, img_dim=6, rna_dim=4)
    path = tmp_path / "features/rnaseq/scgpt/round_2.h5ad"
    if damage == "truncate":  # an interrupted download
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_text("not an HDF5 file\n")
    with pytest.raises(MorphomuError) as info:
        mm.datasets.read_scgenescope(tmp_path, backed=backed)
    text = str(info.value)
    assert str(path) in text and "is not a readable HDF5 file" in text and "truncated or corrupt" in text
    assert not (tmp_path / "morphomu").exists()  # nothing written


def test_cli_data_must_be_hdf5(tmp_path, capsys):
    from morphomu._cli import main

    text = tmp_path / "cells.csv"
    text.write_text("cell,treatment\nc1,DMSO\n")
    out = tmp_path / "run"
    for task in ("rna", "morphology"):
        assert main(["benchmark", task, "--data", str(text), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"--data={str(text)!r} is not an HDF5 file" in err and ".h5mu" in err
        assert not out.exists()


def test_cli_n_steps_refused_before_any_work(tmp_path, capsys):
    from morphomu._cli import main

    out = tmp_path / "run"
    argv = ["benchmark", "--n-steps", "5000", "--scgenescope", str(tmp_path / "absent"), "--out", str(out)]
    assert main([*argv, "--sampler", "ddim"]) == 2
    err = capsys.readouterr().err
    assert "--n-steps=5000: expected a positive integer of at most 1000" in err
    from morphomu.module._diffusion import DEFAULT_SAMPLER, max_sampler_steps

    assert main(argv) == 2  # the default sampler's bound (a multistep solver starts at t = 980)
    most = max_sampler_steps(DEFAULT_SAMPLER["phenoseq"])
    assert f"--n-steps=5000: expected a positive integer of at most {most}" in capsys.readouterr().err
    assert not out.exists()
