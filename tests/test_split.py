import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest

import morphomu as mm
from morphomu import ContractError
from morphomu.pp._split import SCHEMES

LAYOUT = [(1, 3), (1, 4), (1, 5), (2, 1), (2, 2)]


def _adata(prefix, n_per, rng, *, layout=LAYOUT, as_str=False):
    rows = [(r, p) for r, p in layout for _ in range(n_per)]
    a = ad.AnnData(rng.normal(size=(len(rows), 6)).astype(np.float32))
    a.obs_names = [f"{prefix}-{i}" for i in range(len(rows))]
    rounds, reps = zip(*rows, strict=True)
    a.obs["round"] = pd.Categorical([str(r) if as_str else r for r in rounds])
    a.obs["replicate"] = pd.Categorical([str(p) if as_str else p for p in reps])
    a.obsm["X_vit"] = rng.normal(size=(len(rows), 10)).astype(np.float32)
    return a


@pytest.fixture
def tiny():
    rng = np.random.default_rng(0)
    return md.MuData({"img": _adata("img", 4, rng), "rna": _adata("rna", 3, rng, as_str=True)})


@pytest.mark.parametrize(("fold", "expected"), [(1, (3, 5, 4)), (2, (4, 3, 5)), (3, (5, 4, 3))])
def test_folds_label_every_modality(tiny, fold, expected):
    mm.pp.assign_split(tiny, fold=fold)
    train, val, test_we = expected
    for mod in ("img", "rna"):
        obs = tiny[mod].obs
        reps = obs["replicate"].astype(int)
        rounds = obs["round"].astype(int)
        assert (obs.loc[(rounds == 1) & (reps == train), "split"] == "train").all()
        assert (obs.loc[(rounds == 1) & (reps == val), "split"] == "val").all()
        assert (obs.loc[(rounds == 1) & (reps == test_we), "split"] == "test_we").all()
        assert (obs.loc[rounds == 2, "split"] == "test_he").all()
        assert list(obs["split"].cat.categories) == ["train", "val", "test_we", "test_he"]
    params = tiny.uns["morphomu"]["split"]
    assert params["params"]["fold"] == fold
    assert params["replicates"]["train"] == train


def test_canonical_is_fold_1():
    assert SCHEMES["scgenescope"].folds[1] == (3, 5, 4)


def test_copy_and_key_added(tiny):
    out = mm.pp.assign_split(tiny, key_added="fold2", fold=2, copy=True)
    assert "fold2" not in tiny["img"].obs
    assert "fold2" in out["img"].obs


def test_round_two_optional(tiny):
    rng = np.random.default_rng(1)
    only_r1 = md.MuData({"img": _adata("img", 2, rng, layout=LAYOUT[:3])})
    mm.pp.assign_split(only_r1)
    assert set(only_r1["img"].obs["split"]) == {"train", "val", "test_we"}


def test_mods_none_skips_modalities_without_columns(tiny):
    syn = ad.AnnData(np.zeros((2, 3), dtype=np.float32))
    syn.obs_names = ["syn-0", "syn-1"]
    tiny.mod["img_synthetic"] = syn
    tiny.update()
    mm.pp.assign_split(tiny)
    assert "split" not in tiny["img_synthetic"].obs
    with pytest.raises(
        ContractError, match=r"replicate_key='replicate' is not a column of mdata.mod\['img_synthetic'\]"
    ):
        mm.pp.assign_split(tiny, mods=["img_synthetic"])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scheme": "random"}, "scheme='random' is unknown"),
        ({"fold": 4}, "fold=4 is not a fold"),
        ({"replicate_key": "rep"}, "replicate_key='rep'"),
        ({"mods": "atac"}, "mods='atac' is not a modality"),
    ],
)
def test_bad_arguments_leave_data_unchanged(tiny, kwargs, match):
    before = {m: tiny[m].obs.copy() for m in tiny.mod}
    with pytest.raises(ContractError, match=match):
        mm.pp.assign_split(tiny, **kwargs)
    for m in tiny.mod:
        pd.testing.assert_frame_equal(tiny[m].obs, before[m])
    assert "morphomu" not in tiny.uns


def test_missing_replicate_is_an_error_and_nothing_is_written(tiny):
    rng = np.random.default_rng(2)
    tiny.mod["rna"] = _adata("rna", 3, rng, layout=[(1, 3), (1, 4), (2, 1)])  # no replicate 5 = no val
    tiny.update()
    with pytest.raises(
        ContractError, match=r"mdata.mod\['rna'\] has no cells of \(round, replicate\) \[\(1, 5\)\]"
    ):
        mm.pp.assign_split(tiny)
    assert "split" not in tiny["img"].obs  # img was valid but must not be half-written


def test_stray_replicate_is_an_error(tiny):
    rng = np.random.default_rng(3)
    tiny.mod["rna"] = _adata("rna", 2, rng, layout=[*LAYOUT, (1, 6)])
    tiny.update()
    with pytest.raises(ContractError, match=r"\(1, 6\)"):
        mm.pp.assign_split(tiny)


def test_non_integer_replicates_are_an_error(tiny):
    tiny["img"].obs["replicate"] = pd.Categorical(["rep3"] * tiny["img"].n_obs)
    with pytest.raises(ContractError, match="whole numbers"):
        mm.pp.assign_split(tiny)
