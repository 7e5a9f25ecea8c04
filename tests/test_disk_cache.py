"""Larger than memory: the sample-sorted disk cache, PhenoSeq training and classify on backed data."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

import morphomu as mm
from morphomu import _constants as C
from morphomu._core import read_rows as _rows
from morphomu._errors import MorphomuError
from morphomu.train._disk_cache import RowCache, RowReader, use_disk_cache

SIM = {"seed": 3, "n_img_cells": 600, "n_rna_cells": 500, "image_dim": 40, "rna_dim": 16, "n_genes": 60}
TRAIN = {"max_epochs": 2, "batch_size": 32, "enable_progress_bar": False, "early_stopping": False}


def _standardise(block: np.ndarray) -> np.ndarray:
    return (np.asarray(block, dtype=np.float32) - np.float32(0.25)) / np.float32(1.5)


@pytest.fixture
def matrix(tmp_path):
    """A float32 matrix, a chunked HDF5 copy of it and sample codes (with rows left out)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 23)).astype(np.float32)
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.create_dataset("X", data=x, chunks=(16, 23))
    f = h5py.File(tmp_path / "x.h5", "r")
    yield x, f["X"], rng.integers(-1, 9, x.shape[0])
    f.close()


@pytest.mark.parametrize("source", ["memory", "hdf5"])
def test_cache_returns_exactly_the_in_memory_rows(matrix, source, tmp_path):
    x, dset, codes = matrix
    cache = RowCache.build(
        x if source == "memory" else dset,
        codes,
        n_groups=9,
        transform=_standardise,
        directory=tmp_path / "cache",
        block_bytes=23 * 4 * 37,  # many small write blocks
    )
    # the in-memory path of PhenoSeq: rows sorted by code (stable), offsets, standardised
    sel = np.flatnonzero(codes >= 0)
    rows = sel[np.argsort(codes[sel], kind="stable")]
    expected = _standardise(_rows(x, rows))
    np.testing.assert_array_equal(cache.rows, rows)
    np.testing.assert_array_equal(cache.offsets, np.searchsorted(codes[rows], np.arange(10)))
    np.testing.assert_array_equal(np.load(cache.path), expected)  # a plain .npy file
    positions = torch.from_numpy(np.random.default_rng(1).integers(0, rows.size, (17, 6)))
    got = cache[positions]
    assert got.shape == (17, 6, 23) and got.dtype == torch.float32
    np.testing.assert_array_equal(got.numpy(), expected[positions.numpy()])  # repeats, any order
    np.testing.assert_array_equal(
        cache.bag_mean(positions).numpy(),
        torch.nn.functional.embedding_bag(positions, torch.from_numpy(expected), mode="mean").numpy(),
    )
    view = cache.by_source_row()
    some = rows[[5, 0, 99, 5]]
    np.testing.assert_array_equal(view[torch.from_numpy(some)].numpy(), _standardise(x[some]))
    with pytest.raises(IndexError):
        view[np.flatnonzero(codes < 0)[:1]]
    # a copy (as sent to a data-loader worker) reads the same rows and never removes the file
    clone = pickle.loads(pickle.dumps(cache))
    np.testing.assert_array_equal(clone[positions].numpy(), got.numpy())
    del clone
    assert Path(cache.path).exists()
    path = cache.path
    cache.close()
    assert not Path(path).exists() and list(Path(tmp_path / "cache").iterdir()) == []


def test_float16_cache_threads_and_temporary_directory(matrix):
    x, dset, codes = matrix
    cache = RowCache.build(dset, codes, dtype="float16", threads=3)
    assert cache.dtype == np.float16 and cache.nbytes == cache.shape[0] * 23 * 2
    directory = Path(cache.path).parent
    expected = x[cache.rows]
    every = np.arange(cache.shape[0])[::-1]  # many runs: the threaded reader
    np.testing.assert_array_equal(cache.read(every), expected[every].astype(np.float16).astype(np.float32))
    cache.close()
    assert not directory.exists()
    with pytest.raises(MorphomuError, match="float32"):
        RowCache.build(x, codes, dtype="int8")


def test_kept_cache_stays_and_row_reader(matrix, tmp_path):
    x, dset, codes = matrix
    with RowCache.build(dset, codes, directory=tmp_path, keep=True) as cache:
        path = cache.path
    assert Path(path).exists()
    np.testing.assert_array_equal(np.load(path), x[cache.rows])
    rows = np.array([400, 3, 3, 250, 0])
    np.testing.assert_array_equal(RowReader(dset, window=8)[rows], x[rows])


def test_automatic_choice():
    x = np.zeros((10, 4), dtype=np.float32)
    assert not use_disk_cache(x, 10, in_memory=None)
    assert use_disk_cache(x, 10, in_memory=False)
    assert use_disk_cache(object(), 10, in_memory=None)  # backed
    assert not use_disk_cache(object(), 10, in_memory=True)
    with pytest.raises(MorphomuError, match="in_memory"):
        use_disk_cache(x, 10, in_memory="yes")


# --------------------------------------------------------------------------------------------------
# PhenoSeq on a backed h5mu
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def backed_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("backed") / "sim.h5mu"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        mdata = mm.datasets.simulate_scgenescope(**SIM, out=path)
        mm.pp.assign_split(mdata)
        mdata.file.close()
    return path, mdata.obs  # split labels live in obs, in memory


def _read_backed(backed_path):
    import mudata

    path, _ = backed_path
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        mdata = mudata.read_h5mu(path, backed=True)
        mm.pp.assign_split(mdata)
    return mdata


def _train_phenoseq(mdata, **kwargs):
    from morphomu.models import PhenoSeq

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        PhenoSeq.setup_mudata(mdata, image_rep=None)
        torch.manual_seed(0)
        model = PhenoSeq(mdata, preset="tiny", n_context_cells=4)
        model.train(**TRAIN, **kwargs)
    return model


def _losses(model) -> np.ndarray:
    return np.concatenate(
        [model.history[k].to_numpy(dtype=np.float64).ravel() for k in ("train_loss", "validation_loss")]
    )


def test_phenoseq_through_the_cache_matches_in_memory(backed_path, tmp_path):
    mdata = _read_backed(backed_path)
    assert isinstance(mdata["img"].X, h5py.Dataset)
    in_memory = _train_phenoseq(mdata, in_memory=True)
    cached = _train_phenoseq(mdata, cache_dir=tmp_path / "c")  # automatic: backed -> cache
    assert list(Path(tmp_path / "c").iterdir()) == []  # removed when training ends
    np.testing.assert_array_equal(_losses(cached), _losses(in_memory))
    for (name, a), b in zip(
        in_memory.module.state_dict().items(), cached.module.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    half = _train_phenoseq(mdata, in_memory=False, cache_dtype="float16")
    np.testing.assert_allclose(_losses(half), _losses(in_memory), rtol=2e-2)
    assert not np.array_equal(_losses(half), _losses(in_memory))
    mdata.file.close()


def test_phenoseq_rejects_bad_cache_options(backed_path):
    mdata = _read_backed(backed_path)
    from morphomu.models import PhenoSeq

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        PhenoSeq.setup_mudata(mdata, image_rep=None)
        model = PhenoSeq(mdata, preset="tiny")
    for bad in ({"in_memory": "no"}, {"cache_dtype": "int8"}):
        with pytest.raises(MorphomuError, match="cache_dtype"):
            model.train(max_epochs=1, **bad)
    mdata.file.close()


# --------------------------------------------------------------------------------------------------
# classify on a backed h5mu
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("setting", "inputs"),
    [("single", ("img", None)), ("multi", [("img", None), ("rna", C.RNA_REP)])],
)
def test_classify_on_backed_equals_in_memory(backed_path, tmp_path, setting, inputs):
    mdata = _read_backed(backed_path)
    kwargs = {
        "inputs": inputs,
        "setting": setting,
        "k": 3,
        "seeds": [1, 2],
        "hparams": {"preset": "tiny", "max_epochs": 2, "batch_size": 64},
        "progress": False,
        "inplace": False,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        in_memory = mm.tl.classify(mdata, in_memory=True, **kwargs)
        cached = mm.tl.classify(mdata, cache_dir=tmp_path / "c", **kwargs)  # automatic: backed -> cache
    assert list(Path(tmp_path / "c").iterdir()) == []  # removed when the call ends
    assert len(in_memory) == 4 and in_memory["balanced_accuracy"].gt(0).all()
    pd.testing.assert_frame_equal(cached, in_memory)
    mdata.file.close()
