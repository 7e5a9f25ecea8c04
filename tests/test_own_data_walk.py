"""Keys follow the data: a user's own names, one call per tool, zero retries.

The walk of a scanpy / muon user with their own modality and column names: after the split and the
model's setup name the keys once, every later tool takes them from morphomu's records.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import morphomu as mm

RENAMED_OBS = {"sample": "well_id", "treatment": "compound", "replicate": "rep_no", "round": "batch"}


@pytest.fixture(scope="module")
def own(small_mdata):
    """The small experiment with the user's own modality, column and representation names, no split."""
    import mudata as md

    mods = {}
    for old, new in (("img", "imaging"), ("rna", "scrna")):
        adata = small_mdata[old].copy()
        adata.obs = adata.obs.drop(columns=["split"]).rename(columns=RENAMED_OBS)
        mods[new] = adata
    mods["imaging"].obsm["vit"] = mods["imaging"].obsm.pop("X_vit")
    mods["scrna"].obsm["gpt"] = mods["scrna"].obsm.pop("X_scgpt")
    return md.MuData(mods)


def test_own_names_one_call_per_tool(own, tmp_path):
    mdata = own.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # the walk uses today's names only
        warnings.filterwarnings("ignore", message=r".*pull_on_update.*", category=FutureWarning)  # mudata's
        mm.pp.assign_split(
            mdata, scheme={"train": [3], "val": [5], "test": [4]}, by="rep_no", key_added="fold"
        )
        mm.models.PhenoSeq.setup_mudata(
            mdata,
            image_mod="imaging",
            rna_mod="scrna",
            image_rep="vit",
            rna_rep="gpt",
            sample_key="well_id",
            treatment_key="compound",
            replicate_key="rep_no",
            round_key="batch",
            split_key="fold",
        )
        model = mm.models.PhenoSeq(mdata, preset="tiny")
        model.train(max_epochs=2, batch_size=64, enable_progress_bar=False)
        mm.tl.generate_rna(mdata, model=model, n_steps=4)
        mm.tl.fidelity(mdata)
        results = mm.tl.classify(
            mdata, inputs=[("rna_synthetic", "gpt")], preset="fast", seeds=0, inplace=False
        )
        mm.tl.classify(mdata, inputs=[("imaging", "vit")], preset="fast", seeds=0, progress=False)
        ax = mm.pl.embedding_overlay(mdata, max_cells=50)
        axes = mm.pl.fidelity(mdata)
        mm.pl.classification(mdata, save=tmp_path / "classification.png")

    # the records carried the user's names to every tool
    synthetic = mdata["rna_synthetic"]
    assert {"well_id", "compound"} <= set(synthetic.obs.columns) and "gpt" in synthetic.obsm
    params = mdata.uns["morphomu"]["fidelity"]["params"]
    assert params["real"] == "scrna" and params["rep"] == "gpt" and params["treatment_key"] == "compound"
    assert params["split_key"] == "fold" and list(params["splits"]) == ["test"]
    table = mdata.uns["morphomu"]["fidelity"]["table"]
    test_compounds = mdata["scrna"].obs.loc[mdata["scrna"].obs["fold"] == "test", "compound"]
    assert set(table.index) == set(test_compounds.astype(str))
    # classification: the test split of the own scheme, the compound column as the target
    assert set(results["test_set"]) == {"test"}
    classes = set(mdata.uns["morphomu"]["classify"]["classes"])
    assert classes == set(mdata["imaging"].obs["compound"].astype(str)) - {"DMSO"}
    entry = mdata.uns["morphomu"]["classify"]["params"]
    assert entry["treatment_key"] == "compound" and entry["sample_key"] == "well_id"
    assert entry["split_key"] == "fold"
    # the plots drew what the records describe
    assert ax.get_title() and len(axes) >= 1
    assert (tmp_path / "classification.png").stat().st_size > 0
    assert isinstance(mdata.uns["morphomu"]["classify"]["summary"], pd.DataFrame)
    assert np.isfinite(mdata.uns["morphomu"]["classify"]["summary"]["balanced_accuracy_mean"]).all()
