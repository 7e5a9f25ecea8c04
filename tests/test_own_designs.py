"""Own split designs in mm.pp.assign_split, and error remedies that hold for them."""

from __future__ import annotations

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest

import morphomu as mm
from morphomu import ContractError, MorphomuWarning
from morphomu._uns import known_keys, plain
from morphomu.models._phenoseq_checks import check_training_split
from morphomu.pp._split import SPLIT_REMEDY

DESIGN = {"train": [1, 2], "val": [3], "test": [4]}  # replicate 5 is in no split
FULL = {**DESIGN, "test": [4, 5]}


def _adata(prefix: str, replicates: list, n_per: int = 3, *, plate: list | None = None) -> ad.AnnData:
    reps = [r for r in replicates for _ in range(n_per)]
    a = ad.AnnData(np.arange(len(reps) * 4, dtype=np.float32).reshape(len(reps), 4))
    a.obs_names = [f"{prefix}-{i}" for i in range(len(reps))]
    a.var_names = [f"{prefix}-g{j}" for j in range(a.n_vars)]
    a.obs["replicate"] = pd.Categorical(reps)
    if plate is not None:
        a.obs["plate"] = [p for p in plate for _ in range(n_per)]
    return a


@pytest.fixture
def mdata() -> md.MuData:
    # img holds integer replicates 1-5, rna the same as strings (as read from a CSV): 5 is in no split
    return md.MuData(
        {
            "img": _adata("img", [1, 2, 3, 4, 5]),
            "rna": _adata("rna", ["1", "2", "3", "4", "5"], n_per=2),
        }
    )


def _expected(values: pd.Series, design: dict) -> list:
    where = {str(v): label for label, vs in design.items() for v in vs}
    return [where.get(str(v)) for v in values]


def test_own_design_labels_every_modality(mdata):
    with pytest.warns(MorphomuWarning) as record:
        mm.pp.assign_split(mdata, scheme=DESIGN, by="replicate")
    messages = [str(w.message) for w in record]
    assert messages == [
        "3 cells of mdata.mod['img'] are in no split (obs['replicate'] values [5] are listed nowhere in "
        "scheme); their obs['split'] is missing.",
        "2 cells of mdata.mod['rna'] are in no split (obs['replicate'] values ['5'] are listed nowhere in "
        "scheme); their obs['split'] is missing.",
    ]
    for mod in ("img", "rna"):
        split = mdata[mod].obs["split"]
        assert list(split.cat.categories) == ["train", "val", "test"]
        got = [None if pd.isna(x) else x for x in split]
        assert got == _expected(mdata[mod].obs["replicate"], DESIGN)
        assert split.isna().sum() == (3 if mod == "img" else 2)  # replicate 5 is listed nowhere
    assert mdata["img"].obs["split"].tolist()[:7] == ["train"] * 6 + ["val"]


def test_labels_keep_the_order_given_and_values_may_be_text(mdata):
    design = {"val": ["3"], "ood": [5.0], "train": [1, 2], "test_we": [4]}
    mm.pp.assign_split(mdata, scheme=design, by="replicate", key_added="mine")
    img = mdata["img"].obs
    assert list(img["mine"].cat.categories) == ["train", "val", "ood", "test_we"]
    assert (img.loc[img["replicate"] == 5, "mine"] == "ood").all()
    assert (
        mdata["rna"].obs["mine"].astype(str)
        == mdata["rna"]
        .obs["replicate"]
        .map({"1": "train", "2": "train", "3": "val", "4": "test_we", "5": "ood"})
        .astype(str)
    ).all()
    assert mdata["img"].obs["mine"].notna().all()


def test_by_defaults_to_replicate_key_and_reads_any_column():
    data = md.MuData({"img": _adata("img", [1, 1, 2, 2], plate=["A", "B", "C", "D"])})
    mm.pp.assign_split(data, scheme={"train": ["A", "B"], "val": ["C"], "test_he": ["D"]}, by="plate")
    assert data["img"].obs["split"].tolist() == ["train"] * 6 + ["val"] * 3 + ["test_he"] * 3
    mm.pp.assign_split(data, scheme={"train": [1], "val": [2]}, key_added="by_rep")
    assert data["img"].obs["by_rep"].tolist() == ["train"] * 6 + ["val"] * 6
    assert plain(data.uns["morphomu"]["by_rep"]["params"]["by"]) == "replicate"


def test_record(mdata):
    with pytest.warns(MorphomuWarning, match="in no split"):
        mm.pp.assign_split(mdata, scheme=DESIGN, by="replicate", key_added="design")
    entry = mdata.uns["morphomu"]["design"]
    assert entry["tool"] == "assign_split"
    params = entry["params"]
    assert {k: list(v) for k, v in params["scheme"].items()} == DESIGN
    assert params["by"] == "replicate"
    assert list(params["mods"]) == ["img", "rna"]
    assert params["key_added"] == "design"
    assert "fold" not in params
    assert list(entry["test_splits"]) == ["test"]
    assert entry["n_unlabelled"] == {"img": 3, "rna": 2}
    assert "design" in mdata["rna"].obs
    assert (
        known_keys(mdata, "rna").get("replicate_key") is None
    )  # a design records `by`, not the scheme's keys


def test_round_trip_through_h5mu(mdata, tmp_path):
    design = {"train": [1, 2], "val": ["3"], "test_a": [4], "test_b": [5]}
    mm.pp.assign_split(mdata, scheme=design, by="replicate")
    path = tmp_path / "design.h5mu"
    mdata.write(path)
    back = md.read_h5mu(path)
    for mod in ("img", "rna"):
        pd.testing.assert_series_equal(back[mod].obs["split"], mdata[mod].obs["split"])
    entry = back.uns["morphomu"]["split"]
    assert entry["tool"] == "assign_split"
    stored = {k: [str(x) for x in np.asarray(v).tolist()] for k, v in entry["params"]["scheme"].items()}
    assert stored == {"train": ["1", "2"], "val": ["3"], "test_a": ["4"], "test_b": ["5"]}
    assert list(entry["test_splits"]) == ["test_a", "test_b"]


def test_standardize_fits_on_the_train_split_of_a_design(mdata):
    mm.pp.assign_split(mdata, scheme=FULL, by="replicate")
    mm.pp.standardize(mdata, mod="img", rep=None)  # fits on 'train' of the own design
    train = (mdata["img"].obs["split"] == "train").to_numpy()
    raw = mdata["img"].X
    expected = (raw - raw[train].mean(0)) / raw[train].std(0)
    np.testing.assert_allclose(mdata["img"].obsm["X_std"], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scheme": {"train": [1], "test": [4]}}, r"must name the splits 'train' and 'val'.*lacks \['val'\]"),
        (
            {"scheme": {"train": [1, 2], "val": [2, 3]}},
            r"more than one split \(\{'2': \['train', 'val'\]\}\)",
        ),
        (
            {"scheme": {"train": [1, 9], "val": [3], "test": [7]}},
            r"does not hold: \{'train': \[9\], 'test': \[7\]\}",
        ),
        ({"scheme": {"train": [], "val": [3]}}, r"scheme\['train'\] lists no values"),
        ({"scheme": {"train": [1], "val": [None]}}, r"scheme\['val'\] lists a missing value"),
        ({"scheme": {"train": [1], "val": [3], 4: [4]}}, "split labels must be non-empty strings"),
        ({"scheme": DESIGN, "by": "plate"}, "no modality has the obs column"),
        (
            {"scheme": DESIGN, "mods": "img", "by": "plate"},
            r"by='plate' is not a column of mdata.mod\['img'\]",
        ),
        ({"scheme": DESIGN, "fold": 2}, "fold=2 applies to scheme='scgenescope' only"),
        ({"by": "replicate"}, "by='replicate' applies to an own design"),
        ({"scheme": ["train", "val"]}, r"scheme=\['train', 'val'\] is unknown.*own design as a mapping"),
    ],
)
def test_bad_designs_are_named_and_leave_the_data_untouched(mdata, kwargs, match):
    before = {m: mdata[m].obs.copy() for m in mdata.mod}
    with pytest.raises(ContractError, match=match):
        mm.pp.assign_split(mdata, **{"by": "replicate", **kwargs} if "scheme" in kwargs else kwargs)
    for m in mdata.mod:
        pd.testing.assert_frame_equal(mdata[m].obs, before[m])
    assert "morphomu" not in mdata.uns


def test_a_value_missing_from_one_modality_is_an_error_and_nothing_is_written(mdata):
    mdata.mod["rna"] = _adata("rna", [1, 2, 3])  # no replicate 4 for the test split
    mdata.update()
    with pytest.raises(
        ContractError, match=r"mdata.mod\['rna'\].obs\['replicate'\] \(by\) does not hold: \{'test': \[4\]\}"
    ):
        mm.pp.assign_split(mdata, scheme=DESIGN, by="replicate")
    assert "split" not in mdata["img"].obs


def test_scgenescope_still_works_and_records_by():
    rows = [(1, 3), (1, 4), (1, 5), (2, 1)]
    a = ad.AnnData(np.zeros((8, 2), np.float32))
    a.obs_names = [f"c{i}" for i in range(8)]
    a.obs["round"] = [r for r, _ in rows for _ in range(2)]
    a.obs["replicate"] = [p for _, p in rows for _ in range(2)]
    data = md.MuData({"img": a})
    mm.pp.assign_split(data)
    assert (
        data["img"].obs["split"].tolist() == ["train"] * 2 + ["test_we"] * 2 + ["val"] * 2 + ["test_he"] * 2
    )
    entry = data.uns["morphomu"]["split"]
    assert entry["params"]["scheme"] == "scgenescope"
    assert entry["params"]["fold"] == 1
    assert plain(entry["params"]["by"]) is None
    assert list(entry["test_splits"]) == ["test_we", "test_he"]


# --- remedies -------------------------------------------------------------------------------------


def test_split_remedy_names_both_ways():
    assert "scheme='scgenescope'" in SPLIT_REMEDY
    assert "scheme={'train'" in SPLIT_REMEDY
    assert "split_key=" in SPLIT_REMEDY


def test_errors_about_missing_splits_give_the_remedy(mdata):
    mm.pp.assign_split(mdata, scheme=FULL, by="replicate")
    rna = mdata["rna"].copy()
    rna.obs["split"] = pd.Categorical(["train"] * rna.n_obs)
    with pytest.raises(ContractError, match="has no \\['val'\\] cells") as info:
        check_training_split(rna, "split", mod="rna")
    assert SPLIT_REMEDY in str(info.value)
    with pytest.raises(ContractError, match="fit_on='train'") as info:
        mm.pp.standardize(mdata, mod="img", rep=None, fit_on="train", split_key="replicate")
    assert SPLIT_REMEDY in str(info.value)
    assert "fit_on=None" in str(info.value)
