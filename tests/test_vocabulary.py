"""One vocabulary over every public signature (docs/contract.md, "Vocabulary")."""

from __future__ import annotations

import inspect

import pytest

import morphomu as mm

#: Former names of one concept; each public argument uses the vocabulary's name instead.
RETIRED = {
    "groupby": "treatment_key",
    "target": "treatment_key",
    "target_key": "treatment_key",
    "label_key": "treatment_key",
    "test_sets": "splits",
    "hparams": "preset",
    "classifier_hparams": "preset",
    "use_rep": "rep",
}
MODEL_METHODS = ("__init__", "setup_mudata", "train", "generate", "load")


def _public_callables():
    for namespace in (mm.pp, mm.tl, mm.pl, mm.datasets):
        for name in namespace.__all__:
            obj = getattr(namespace, name)
            if inspect.isfunction(obj):
                yield f"{namespace.__name__}.{name}", obj
    for name in mm.models.__all__:
        cls = getattr(mm.models, name)
        for method in MODEL_METHODS:
            if method in dir(cls):
                yield f"models.{name}.{method}", getattr(cls, method)


CALLABLES = dict(_public_callables())


def test_the_walk_covers_the_api():
    assert len(CALLABLES) > 40
    assert "morphomu.tl.classify" in CALLABLES and "models.PhenoSeq.train" in CALLABLES


@pytest.mark.parametrize("name", sorted(CALLABLES))
def test_signature_speaks_the_vocabulary(name):
    params = inspect.signature(CALLABLES[name]).parameters
    retired = {p: RETIRED[p] for p in params if p in RETIRED}
    if "groupby" in retired and params["groupby"].default is None:
        del retired["groupby"]  # an optional breakdown by any column (scanpy's groupby), not the treatment
    assert not retired, f"{name}: rename {retired} (keep the old name through renamed_arguments)"
    if "seed" in params:
        assert params["seed"].default == 0, f"{name}: seed defaults to 0 everywhere"
    assert not {"copy", "inplace"} <= set(params), (
        f"{name}: copy (modifies data) or inplace (tables), not both"
    )
    if "preset" in params and params["preset"].default is not inspect.Parameter.empty:
        expected = "paper" if "Classifier" in name or name.endswith("classify") else "fast"
        assert params["preset"].default == expected, f"{name}: preset defaults to {expected!r}"


@pytest.mark.parametrize(
    "name", sorted(n for n, f in CALLABLES.items() if hasattr(f, "__renamed_arguments__"))
)
def test_renamed_arguments_point_at_the_signature(name):
    func = CALLABLES[name]
    params = inspect.signature(func).parameters
    for old, new in func.__renamed_arguments__.items():
        assert new in params and old not in params, f"{name}: {old} -> {new}"


def test_a_renamed_argument_warns_and_still_works(small_mdata):
    mdata = small_mdata.copy()
    mdata.mod["rna_synthetic"] = mdata["rna"].copy()
    with pytest.warns(FutureWarning, match=r"groupby= was renamed to treatment_key="):
        old = mm.tl.fidelity(mdata, groupby="treatment", distributions=False, inplace=False)
    new = mm.tl.fidelity(mdata, treatment_key="treatment", distributions=False, inplace=False)
    assert old.equals(new)
    with pytest.raises(mm.MorphomuError, match="got both"):
        mm.tl.fidelity(mdata, groupby="treatment", treatment_key="treatment")
