import anndata as ad
import h5py
import mudata as md
import numpy as np
import pandas as pd
import pytest

import morphomu as mm
from morphomu import ContractError
from morphomu._uns import h5_safe, store


def _mod(prefix, n, dim, rng):
    a = ad.AnnData(np.zeros((n, 0), dtype=np.float32))
    a.obs_names = [f"{prefix}-{i}" for i in range(n)]
    a.obs["sample"] = pd.Categorical(rng.choice(["s1", "s2"], n))
    a.obs["treatment"] = pd.Categorical(rng.choice(["DMSO", "Caffeine"], n))
    return a, rng.normal(size=(n, dim)).astype(np.float32)


@pytest.fixture
def tiny():
    rng = np.random.default_rng(0)
    img, x_img = _mod("img", 20, 10, rng)
    img.obsm["X_vit"] = x_img
    rna, x_rna = _mod("rna", 15, 4, rng)
    rna.obsm["X_scgpt"] = x_rna
    return md.MuData({"img": img, "rna": rna})


def test_valid_passes(tiny):
    mm.pp.validate(tiny)
    mm.pp.validate(tiny, n_features={"img": 10, "rna": 4})


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (
            lambda m: m["img"].obsm.__setitem__("X_vit", np.full((20, 10), np.nan, np.float32)),
            r"mdata.mod\['img'\].obsm\['X_vit'\] \(mods\['img'\]\) has 200 non-finite values",
        ),
        (
            lambda m: m["rna"].obsm.__setitem__("X_scgpt", np.full((15, 4), np.inf, np.float32)),
            r"mdata.mod\['rna'\].obsm\['X_scgpt'\].*non-finite",
        ),
        (lambda m: m["img"].obsm.pop("X_vit"), r"mods\['img'\]='X_vit' is not in mdata.mod\['img'\].obsm"),
        (
            lambda m: m["img"].obs.pop("sample"),
            r"sample_key='sample' is not a column of mdata.mod\['img'\].obs",
        ),
        (
            lambda m: m["img"].obs.__setitem__("sample", pd.Categorical([None] * 20, categories=["s1"])),
            r"mdata.mod\['img'\].obs\['sample'\].*20 missing values",
        ),
        (lambda m: m.uns.__setitem__("bad", object()), r"mdata.uns\['bad'\] cannot be written to .h5mu"),
        (
            lambda m: m["img"].obsm.__setitem__("X_vit", np.array([["a"] * 10] * 20)),
            "expected numeric values",
        ),
    ],
)
def test_contract_errors(tiny, mutate, match):
    mutate(tiny)
    with pytest.raises(ContractError, match=match):
        mm.pp.validate(tiny)


def test_wrong_dimension(tiny):
    with pytest.raises(
        ContractError, match=r"mdata.mod\['img'\].obsm\['X_vit'\] .* must have 5120 features, found 10"
    ):
        mm.pp.validate(tiny, n_features={"img": 5120})


def test_duplicated_obs_names_within_and_across(tiny):
    names = tiny["rna"].obs_names.tolist()
    names[1] = names[0]
    tiny["rna"].obs_names = names
    with pytest.raises(ContractError, match=r"mdata.mod\['rna'\].obs_names are not unique"):
        mm.pp.validate(tiny)
    rng = np.random.default_rng(1)
    other, x = _mod("img", 3, 4, rng)  # same prefix as the img modality
    other.obsm["X_scgpt"] = x
    clash = md.MuData({"img": tiny["img"], "rna": other})
    with pytest.raises(ContractError, match="is in both mdata.mod"):
        mm.pp.validate(clash)


def test_not_a_mudata_and_empty():
    with pytest.raises(ContractError, match="mdata must be a MuData, got AnnData. Wrap it"):
        mm.pp.validate(ad.AnnData(np.zeros((2, 2))))
    with pytest.raises(ContractError, match="has none of the modalities"):
        mm.pp.validate(md.MuData({"atac": ad.AnnData(np.zeros((2, 2)))}))


def test_backed_matrix_is_scanned_in_chunks(tmp_path, monkeypatch):
    import morphomu._validation as v

    monkeypatch.setattr(v, "CHUNK_ROWS", 7)
    rng = np.random.default_rng(0)
    img, x = _mod("img", 30, 6, rng)
    x[29, 5] = np.nan  # in the last chunk
    img = ad.AnnData(x, obs=img.obs)
    md.MuData({"img": img}).write(tmp_path / "b.h5mu")
    backed = md.read_h5mu(tmp_path / "b.h5mu", backed="r")
    assert backed["img"].isbacked
    with pytest.raises(ContractError, match=r"mdata.mod\['img'\].X .* has 1 non-finite"):
        mm.pp.validate(backed, mods={"img": None})


def test_h5_safe_store_roundtrip(tiny, tmp_path):
    entry = {
        "params": {"a": None, "b": (1, 2), "c": ["x", "y"], "d": 1.5, "e": True, "f": [{"g": 1}]},
        "table": pd.DataFrame({"x": [1.0, 2.0]}, index=["u", "v"]),
        "arr": np.arange(3),
    }
    written = store(tiny, "tool", entry, tool="test")
    assert written["params"]["a"] == "None"
    mm.pp.validate(tiny)  # uns is writable
    tiny.write(tmp_path / "u.h5mu")
    back = md.read_h5mu(tmp_path / "u.h5mu").uns["morphomu"]["tool"]
    np.testing.assert_array_equal(back["params"]["b"], [1, 2])
    assert list(back["params"]["c"]) == ["x", "y"]
    pd.testing.assert_frame_equal(back["table"], entry["table"])
    assert h5_safe(object).startswith("<class")


def test_validation_reads_no_more_than_needed(tmp_path):
    # A backed matrix must not be converted to memory by the checks: h5py datasets stay datasets.
    rng = np.random.default_rng(0)
    img, x = _mod("img", 10, 3, rng)
    img = ad.AnnData(x, obs=img.obs)
    md.MuData({"img": img}).write(tmp_path / "c.h5mu")
    backed = md.read_h5mu(tmp_path / "c.h5mu", backed="r")
    mm.pp.validate(backed, mods={"img": None})
    assert isinstance(backed["img"].X, h5py.Dataset)  # still on disk, not an ndarray
    assert backed["img"].isbacked
