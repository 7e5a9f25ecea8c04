"""mm.pp.assign_compound_split: ID / OOD compounds, consistent across modalities, never touching split."""

from __future__ import annotations

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest

import morphomu as mm
from morphomu import ContractError, MorphomuError

COMPOUNDS = [f"drug{i:02d}" for i in range(20)]


def _adata(prefix: str, treatments: list[str], n_per: int) -> ad.AnnData:
    values = [t for t in treatments for _ in range(n_per)]
    a = ad.AnnData(np.zeros((len(values), 3), np.float32))
    a.obs_names = [f"{prefix}-{i}" for i in range(len(values))]
    a.var_names = [f"{prefix}-f{j}" for j in range(3)]
    a.obs["treatment"] = pd.Categorical(values)
    a.obs["split"] = pd.Categorical(["train", "val"] * (len(values) // 2) + ["train"] * (len(values) % 2))
    return a


@pytest.fixture
def mdata():
    # the RNA modality lacks two compounds: the compounds are those of all modalities together
    return md.MuData(
        {
            "img": _adata("img", [*COMPOUNDS, "DMSO"], 3),
            "rna": _adata("rna", [*COMPOUNDS[2:], "DMSO"], 2),
            "other": ad.AnnData(
                np.zeros((4, 2), np.float32),
                obs=pd.DataFrame(index=[f"o{i}" for i in range(4)]),
                var=pd.DataFrame(index=["o-f0", "o-f1"]),
            ),
        }
    )


def _ood(mdata, mod="img"):
    obs = mdata[mod].obs
    return sorted(obs.loc[obs["compound_split"] == "ood", "treatment"].astype(str).unique())


def test_consistent_across_modalities_control_id(mdata):
    split_before = {m: mdata[m].obs["split"].copy() for m in ("img", "rna")}
    mm.pp.assign_compound_split(mdata, n_ood=8, seed=3)
    img, rna = mdata["img"].obs, mdata["rna"].obs
    assert list(img["compound_split"].cat.categories) == ["id", "ood"]
    ood = _ood(mdata)
    assert len(ood) == 8 and set(ood) <= set(COMPOUNDS)
    # every row of a compound has the same label, in every modality
    for obs in (img, rna):
        per_compound = obs.groupby("treatment", observed=True)["compound_split"].nunique()
        assert (per_compound == 1).all()
        assert set(obs.loc[obs["compound_split"] == "ood", "treatment"].astype(str)) <= set(ood)
        assert (obs.loc[obs["treatment"] == "DMSO", "compound_split"] == "id").all()
    assert set(_ood(mdata, "rna")) == set(ood) - set(COMPOUNDS[:2])
    assert "compound_split" not in mdata["other"].obs
    for m, before in split_before.items():  # split is never touched
        pd.testing.assert_series_equal(mdata[m].obs["split"], before)
    entry = mdata.uns["morphomu"]["compound_split"]
    assert sorted(entry["ood"]) == ood and "DMSO" in list(entry["id"])
    assert len(entry["id"]) + len(entry["ood"]) == len(COMPOUNDS) + 1
    assert entry["params"]["seed"] == 3 and entry["params"]["n_ood"] == 8


def test_deterministic_per_seed(mdata):
    a = mm.pp.assign_compound_split(mdata, seed=1, copy=True)
    b = mm.pp.assign_compound_split(mdata, seed=1, copy=True)
    c = mm.pp.assign_compound_split(mdata, seed=2, copy=True)
    assert "compound_split" not in mdata["img"].obs  # copy=True leaves the input alone
    assert _ood(a) == _ood(b) and _ood(a) != _ood(c)
    # default: the paper's share (54 of 98) of the 20 compounds, rounded
    assert len(_ood(a)) == round(20 * 54 / 98)
    # the modality order does not matter
    d = md.MuData({"rna": mdata["rna"].copy(), "img": mdata["img"].copy()})
    mm.pp.assign_compound_split(d, seed=1)
    assert _ood(d) == _ood(a)


def test_mods_and_custom_keys(mdata):
    mdata["img"].obs["drug"] = mdata["img"].obs["treatment"]
    mm.pp.assign_compound_split(mdata, mods="img", treatment_key="drug", key_added="held_out", n_ood=5)
    assert "held_out" in mdata["img"].obs and "held_out" not in mdata["rna"].obs
    assert (mdata["img"].obs["held_out"] == "ood").groupby(
        mdata["img"].obs["drug"], observed=True
    ).all().sum() == 5


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n_ood": 20}, MorphomuError, "n_ood=20"),
        ({"n_ood": 0}, MorphomuError, "n_ood=0"),
        ({"n_ood": 2.5}, MorphomuError, "integer"),
        ({"ood_fraction": 1.0}, MorphomuError, "ood_fraction"),
        ({"treatment_key": "drug"}, ContractError, "treatment_key='drug'"),
        ({"mods": ["img", "other"]}, ContractError, "treatment_key='treatment'"),
        ({"mods": "protein"}, ContractError, "protein"),
        ({"key_added": "split"}, MorphomuError, "overwrite"),
    ],
)
def test_errors_leave_input_unchanged(mdata, kwargs, error, match):
    before = {m: mdata[m].obs.copy() for m in mdata.mod}
    uns_before = dict(mdata.uns)
    with pytest.raises(error, match=match):
        mm.pp.assign_compound_split(mdata, **kwargs)
    for m, obs in before.items():
        pd.testing.assert_frame_equal(mdata[m].obs, obs)
    assert dict(mdata.uns) == uns_before


def test_simulated_round_trip(tmp_path):
    mdata = mm.datasets.simulate_scgenescope(seed=0, n_img_cells=600, n_rna_cells=600)
    mm.pp.assign_split(mdata)
    mm.pp.assign_compound_split(mdata, n_ood=10)
    counts = mdata["img"].obs.groupby("compound_split", observed=True)["treatment"].nunique().to_dict()
    assert counts == {"id": 19, "ood": 10}
    mdata.write_h5mu(tmp_path / "m.h5mu")
    back = md.read_h5mu(tmp_path / "m.h5mu")
    assert list(back.uns["morphomu"]["compound_split"]["ood"]) == _ood(mdata)
