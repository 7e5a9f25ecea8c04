"""Fuzzed inputs (hypothesis) for the public pp / tl functions and model setup.

Each strategy builds a small MuData directly (tens of cells, a few features) with a random obs layout
(categorical, string, integer or float columns), random feature storage (.X or .obsm; float16 to
float64, integer, dense or sparse) and, sometimes, injected faults (NaN / inf features, duplicated
obs names, missing or incomplete columns, an empty modality, modalities whose samples do not overlap).

The property every test checks: a call either works (and its result is checked against an oracle) or
raises a morphomu error (``MorphomuError`` / ``ContractError``, both ``ValueError``) whose message names
the offending argument or key; an injected fault the function depends on must be reported; and a
failing call never modifies its input (a deep snapshot of obs / obsm / X / uns is compared).
"""

from __future__ import annotations

import copy
import math
import os
import string
import warnings
from dataclasses import dataclass, field
from typing import Any

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from scipy import sparse

import morphomu as mm
from morphomu import _constants as C
from morphomu._errors import MorphomuError

pytestmark = pytest.mark.filterwarnings(
    "ignore:Observation names are not unique:UserWarning",
    "ignore:obs_names are not unique:UserWarning",
    "ignore:Duplicated obs_names:UserWarning",
    "ignore::morphomu.MorphomuWarning",
    "ignore::FutureWarning",
    "ignore:var_names are not unique:UserWarning",
    "ignore:.*does not have many workers.*",
    "ignore:.*smaller than the logging interval.*",
)


# ---------------------------------------------------------------------------------------------------
# deep snapshot of an AnnData / MuData and an exact comparison
# ---------------------------------------------------------------------------------------------------
def _copy(value: Any) -> Any:
    if value is None:
        return None
    if sparse.issparse(value):
        return value.copy()
    if isinstance(value, pd.DataFrame | pd.Series | pd.Index):
        return value.copy(deep=True)
    if isinstance(value, np.ndarray):
        return value.copy()
    return copy.deepcopy(value)


def _snap_adata(adata: ad.AnnData) -> dict[str, Any]:
    return {
        "shape": adata.shape,
        "obs_names": adata.obs_names.copy(),
        "var_names": adata.var_names.copy(),
        "obs": adata.obs.copy(deep=True),
        "var": adata.var.copy(deep=True),
        "X": _copy(adata.X),
        "obsm": {k: _copy(v) for k, v in adata.obsm.items()},
        "layers": {k: _copy(v) for k, v in adata.layers.items()},
        "uns": copy.deepcopy(dict(adata.uns)),
    }


def snapshot(data: md.MuData | ad.AnnData) -> dict[str, Any]:
    """Everything a call could modify, deep-copied."""
    if isinstance(data, ad.AnnData):
        return {"adata": _snap_adata(data)}
    return {
        "mods": {m: _snap_adata(a) for m, a in data.mod.items()},
        "obs": data.obs.copy(deep=True),
        "obsm": {k: _copy(v) for k, v in data.obsm.items()},
        "uns": copy.deepcopy(dict(data.uns)),
    }


def assert_same(before: Any, after: Any, path: str = "data") -> None:
    """Exact equality (NaN equal to NaN, dtypes and types included) of two snapshots."""
    assert type(before) is type(after), f"{path}: type {type(before).__name__} -> {type(after).__name__}"
    if isinstance(before, dict):
        assert list(before) == list(after), f"{path}: keys {list(before)} -> {list(after)}"
        for k in before:
            assert_same(before[k], after[k], f"{path}[{k!r}]")
    elif isinstance(before, list | tuple):
        assert len(before) == len(after), f"{path}: length changed"
        for i, (b, a) in enumerate(zip(before, after, strict=True)):
            assert_same(b, a, f"{path}[{i}]")
    elif isinstance(before, pd.DataFrame):
        pd.testing.assert_frame_equal(before, after, check_exact=True, obj=path)
    elif isinstance(before, pd.Series):
        pd.testing.assert_series_equal(before, after, check_exact=True, obj=path)
    elif isinstance(before, pd.Index):
        pd.testing.assert_index_equal(before, after, exact=True, obj=path)
    elif sparse.issparse(before):
        assert before.format == after.format and before.dtype == after.dtype, f"{path}: sparse format/dtype"
        assert before.shape == after.shape, f"{path}: shape"
        np.testing.assert_array_equal(before.toarray(), after.toarray(), err_msg=path)
    elif isinstance(before, np.ndarray):
        assert before.dtype == after.dtype and before.shape == after.shape, f"{path}: dtype/shape changed"
        np.testing.assert_array_equal(before, after, err_msg=path)
    elif isinstance(before, float) and math.isnan(before):
        assert math.isnan(after), path
    else:
        assert before == after, f"{path}: {before!r} -> {after!r}"


def test_snapshot_helper_sees_every_kind_of_change():
    """The helper itself must detect changes, or every test below would pass vacuously."""
    obs = pd.DataFrame({"s": ["a", "b", "c"]}, index=["c0", "c1", "c2"])
    a = ad.AnnData(X=sparse.csr_matrix(np.eye(3, dtype=np.float32)), obs=obs)
    a.obsm["r"] = np.array([[1.0], [np.nan], [2.0]])
    a.uns["k"] = {"v": np.arange(2)}
    m = md.MuData({"img": a})
    edits = [
        lambda m: m.mod["img"].obs.__setitem__("s", ["a", "b", "d"]),
        lambda m: m.mod["img"].obs.__setitem__("new", 1),
        lambda m: m.mod["img"].obsm["r"].__setitem__((0, 0), 5.0),
        lambda m: m.mod["img"].obsm.__setitem__("x", np.zeros((3, 1))),
        lambda m: m.mod["img"].X.__setitem__((0, 0), 2.0),
        lambda m: m.mod["img"].uns["k"]["v"].__setitem__(0, 9),
        lambda m: m.uns.__setitem__("morphomu", {}),
        lambda m: m.mod["img"].obs.__setitem__("s", pd.Categorical(["a", "b", "c"])),
    ]
    for edit in edits:
        mm_ = m.copy()
        before = snapshot(mm_)
        assert_same(before, snapshot(mm_))
        edit(mm_)
        with pytest.raises(AssertionError):
            assert_same(before, snapshot(mm_))


# ---------------------------------------------------------------------------------------------------
# strategies
# ---------------------------------------------------------------------------------------------------
TREATMENTS = ("DMSO", "T0", "T1", "T2")
CANONICAL = ((1, 3), (1, 4), (1, 5), (2, 1), (2, 2))  # (round, replicate) of scGeneScope
SPLIT_RULE = {(1, 3): C.TRAIN, (1, 4): C.TEST_WE, (1, 5): C.VAL}  # fold 1
OBS_KINDS = {
    C.SAMPLE_KEY: ("category", "str", "int"),
    C.TREATMENT_KEY: ("category", "str", "int"),
    C.REPLICATE_KEY: ("category", "str", "int", "float", "category_int"),
    C.ROUND_KEY: ("category", "str", "int", "float", "category_int"),
    C.SPLIT_KEY: ("category", "str"),
}
FEATURE_DTYPES = (np.float16, np.float32, np.float64, np.int32)
FAULTS = ("nan", "inf", "dup_within", "dup_across", "missing_col", "na_col", "empty", "unaligned")


def split_of(round_: int, replicate: int) -> str | None:
    if round_ == 2:
        return C.TEST_HE
    return SPLIT_RULE.get((round_, replicate))


@dataclass
class Experiment:
    """A fuzzed MuData and what was done to it."""

    mdata: md.MuData
    reps: dict[str, str | None]
    faults: list[tuple[str, str, str | None]] = field(default_factory=list)  # (kind, mod, key)
    #: every sample has cells in every modality (so a fault is the first thing a check can meet)
    complete: bool = True

    def has(self, kind: str, mod: str | None = None, keys: tuple[str | None, ...] | None = None) -> bool:
        return any(
            k == kind and (mod is None or m == mod) and (keys is None or key in keys)
            for k, m, key in self.faults
        )


def _encode(values: list[Any], kind: str, codes: dict[str, int]) -> Any:
    if kind == "category":
        return pd.Categorical([str(v) for v in values])
    if kind == "str":
        return np.asarray([str(v) for v in values], dtype=object)
    if kind == "int":
        return np.asarray(
            [codes.setdefault(str(v), len(codes)) if not isinstance(v, int) else v for v in values],
            dtype=np.int64,
        )
    if kind == "float":
        return np.asarray(values, dtype=np.float64)
    if kind == "category_int":
        return pd.Categorical(np.asarray(values, dtype=np.int64))
    raise AssertionError(kind)


@st.composite
def experiments(
    draw: st.DrawFn,
    mods: tuple[tuple[str, str], ...] = (("img", C.IMAGE_REP), ("rna", C.RNA_REP)),
    *,
    with_split: bool | None = None,
    same_dim: bool = False,
    same_rep: bool | None = None,
    faults: tuple[str, ...] = FAULTS,
    max_cells: int = 3,
) -> Experiment:
    """A MuData of ``mods`` (name, default .obsm key) sharing samples, with random layout and faults."""
    # most examples follow the contract (canonical layout, >= 2 treatments, every sample in every
    # modality, no fault) so that results get checked; the others are anything
    healthy = draw(st.integers(0, 3)) > 0
    n_treat = draw(st.integers(3 if healthy else 1, len(TREATMENTS)))  # >= 2 classes besides DMSO
    treatments = list(TREATMENTS[:n_treat])
    if healthy or draw(st.booleans()):
        layout = list(CANONICAL)
    else:
        layout = draw(
            st.lists(st.tuples(st.integers(1, 3), st.integers(0, 6)), min_size=1, max_size=5, unique=True)
        )
    samples = [(t, r, rep) for t in treatments for r, rep in layout]
    if with_split is None:
        with_split = draw(st.booleans())
    injected = (
        ()
        if healthy
        else draw(st.one_of(st.just(()), st.lists(st.sampled_from(faults), max_size=2, unique=True)))
    )
    # the pairing columns are encoded alike in every modality (else no sample would be shared)
    shared_kinds = {k: draw(st.sampled_from(OBS_KINDS[k])) for k in (C.SAMPLE_KEY, C.TREATMENT_KEY)}
    shared_rep = draw(st.booleans()) if same_rep is None else same_rep
    rep_choice = draw(st.booleans())
    fault_mods = {f: draw(st.sampled_from([m for m, _ in mods])) for f in injected}
    dim = draw(st.integers(1, 4))
    codes: dict[str, int] = {}
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    centres = {t: rng.normal(size=8) * 3 for t in treatments}
    adatas: dict[str, ad.AnnData] = {}
    reps: dict[str, str | None] = {}
    min_cells = 1 if healthy else draw(st.sampled_from((0, 1, 1)))
    for mod, default_rep in mods:
        counts = draw(
            st.lists(st.integers(min_cells, max_cells), min_size=len(samples), max_size=len(samples))
        )
        rows = [s for s, c in zip(samples, counts, strict=True) for _ in range(c)]
        if fault_mods.get("empty") == mod:
            rows = []
        names = [f"{t}_r{r}_{rep}" for t, r, rep in rows]
        if fault_mods.get("unaligned") == mod and mod != mods[0][0]:
            names = [f"other_{n}" for n in names]
        columns = {
            C.SAMPLE_KEY: names,
            C.TREATMENT_KEY: [t for t, _, _ in rows],
            C.REPLICATE_KEY: [rep for _, _, rep in rows],
            C.ROUND_KEY: [r for _, r, _ in rows],
        }
        if with_split:
            labels = [split_of(r, rep) for _, r, rep in rows]
            columns[C.SPLIT_KEY] = [lab if lab is not None else "unused" for lab in labels]
        obs = pd.DataFrame(
            {
                k: _encode(v, shared_kinds.get(k) or draw(st.sampled_from(OBS_KINDS[k])), codes)
                for k, v in columns.items()
            },
            index=pd.Index([f"{mod}_{i}" for i in range(len(rows))], dtype=object),
        )
        d = dim if same_dim else draw(st.integers(1, 4))
        x = np.stack([centres[t][:d] for t, _, _ in rows]) if rows else np.zeros((0, d))
        x = x + rng.normal(size=x.shape)
        dtype = draw(st.sampled_from(FEATURE_DTYPES))
        x = (np.round(x) if np.issubdtype(dtype, np.integer) else x).astype(dtype)
        storage = "dense" if dtype == np.float16 else draw(st.sampled_from(("dense", "csr", "csc")))
        rep = (
            (default_rep if rep_choice else None)
            if shared_rep
            else draw(st.sampled_from((default_rep, None)))
        )
        if fault_mods.get("nan") == mod and x.size and not np.issubdtype(dtype, np.integer):
            x[draw(st.integers(0, x.shape[0] - 1)), draw(st.integers(0, d - 1))] = np.nan
        elif fault_mods.get("nan") == mod:
            fault_mods.pop("nan")
        if fault_mods.get("inf") == mod and x.size and not np.issubdtype(dtype, np.integer):
            x[draw(st.integers(0, x.shape[0] - 1)), draw(st.integers(0, d - 1))] = -np.inf
        elif fault_mods.get("inf") == mod:
            fault_mods.pop("inf")
        matrix = (
            x if storage == "dense" else sparse.csr_matrix(x) if storage == "csr" else sparse.csc_matrix(x)
        )
        a = ad.AnnData(X=matrix if rep is None else None, obs=obs)
        if rep is None:
            a.var_names = [f"{mod}_g{i}" for i in range(d)]
        else:
            a.obsm[rep] = matrix
        adatas[mod] = a
        reps[mod] = rep
    exp_faults: list[tuple[str, str, str | None]] = []
    for f, mod in fault_mods.items():
        a = adatas[mod]
        if f in ("nan", "inf"):
            exp_faults.append((f, mod, reps[mod]))
        elif f == "empty":
            exp_faults.append((f, mod, None))
        elif f == "unaligned":
            if mod != mods[0][0] and a.n_obs:
                exp_faults.append((f, mod, C.SAMPLE_KEY))
        elif f == "dup_within" and a.n_obs >= 2:
            names = a.obs_names.tolist()
            names[-1] = names[0]
            a.obs_names = names
            exp_faults.append((f, mod, None))
        elif f == "dup_across" and a.n_obs and len(mods) > 1:
            other = adatas[next(m for m, _ in mods if m != mod)]
            if other.n_obs:
                names = a.obs_names.tolist()
                names[0] = other.obs_names[0]
                a.obs_names = names
                exp_faults.append((f, mod, None))
        elif f in ("missing_col", "na_col"):
            # a missing split label is valid (the cell is in no split; tests/test_own_designs.py)
            columns = [c for c in a.obs.columns if not (f == "na_col" and c == C.SPLIT_KEY)]
            if not columns:
                continue
            key = draw(st.sampled_from(sorted(columns)))
            if f == "missing_col":
                a.obs = a.obs.drop(columns=key)
                exp_faults.append((f, mod, key))
            elif a.n_obs:
                col = a.obs[key]
                i = draw(st.integers(0, a.n_obs - 1))
                if isinstance(col.dtype, pd.CategoricalDtype):
                    values = col.astype(object).to_numpy()
                    values[i] = np.nan
                    a.obs[key] = pd.Categorical(values)
                elif col.dtype == object:
                    values = col.to_numpy().copy()
                    values[i] = None
                    a.obs[key] = values
                else:
                    values = col.to_numpy(np.float64).copy()
                    values[i] = np.nan
                    a.obs[key] = values
                exp_faults.append((f, mod, key))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mdata = md.MuData(adatas)
    # an empty or unpaired modality may be reported before a second fault
    layout_fault = len(exp_faults) > 1 and any(k in ("empty", "unaligned") for k, _, _ in exp_faults)
    return Experiment(mdata, reps, exp_faults, complete=min_cells >= 1 and not layout_fault)


# ---------------------------------------------------------------------------------------------------
# the property
# ---------------------------------------------------------------------------------------------------
def _quoted(*names: Any) -> list[str]:
    return [repr(n) for n in names if n is not None] + [str(n) for n in names if isinstance(n, str) and n]


def attempt(
    func: Any, data: Any, *args: Any, names: tuple[Any, ...], **kwargs: Any
) -> tuple[Any, Exception | None]:
    """Call ``func(data, ...)``: it works, or raises a morphomu error naming one of ``names`` and leaves ``data`` as it was.

    Any other exception propagates, failing the test (an unchecked input).
    """
    before = snapshot(data) if isinstance(data, ad.AnnData | md.MuData) else None
    try:
        result = func(data, *args, **kwargs)
    except MorphomuError as e:
        msg = str(e)
        event(f"{getattr(func, '__name__', func)}: refused")
        if os.environ.get("FUZZ_DEBUG"):
            print(f"{getattr(func, '__name__', func)} refused: {msg}")
        assert any(tok in msg for tok in _quoted(*names)), f"error names none of {names}: {msg}"
        if before is not None:
            assert_same(before, snapshot(data))
        return None, e
    event(f"{getattr(func, '__name__', func)}: works")
    return result, None


def assert_reported(err: Exception | None, exp: Experiment, relevant: dict[str, tuple[str, ...]]) -> None:
    """An injected fault the function depends on was refused, with a message naming it.

    ``relevant`` maps a fault kind to the tokens one of which its message must contain (``{mod}`` and
    ``{key}`` are filled in).
    """
    hits = [(k, m, key) for k, m, key in exp.faults if k in relevant]
    if not hits:
        return
    assert err is not None, f"faults {hits} were not reported"
    if not exp.complete:  # an empty or unpaired part of the layout may be reported first
        return
    msg = str(err)
    ok = []
    for kind, mod, key in hits:
        tokens = [t.format(mod=repr(mod), key=repr(key)) for t in relevant[kind]]
        ok.append(all(t in msg for t in tokens))
    assert any(ok), f"the message names none of the faults {hits}: {msg}"


def dense(adata: ad.AnnData, rep: str | None) -> np.ndarray:
    m = adata.X if rep is None else adata.obsm[rep]
    return np.asarray(m.toarray() if sparse.issparse(m) else m, dtype=np.float64)


COLUMN_FAULTS = {"missing_col": ("{key}",), "na_col": ("{key}",)}
FEATURE_FAULTS = {"nan": ("{mod}", "non-finite"), "inf": ("{mod}", "non-finite")}


# ---------------------------------------------------------------------------------------------------
# mm.pp.assign_split
# ---------------------------------------------------------------------------------------------------
@given(exp=experiments(with_split=False), fold=st.sampled_from([1, 2, 3, 0, "1"]))
def test_assign_split(exp, fold):
    mdata = exp.mdata
    _, err = attempt(
        mm.pp.assign_split, mdata, fold=fold, names=("fold", C.REPLICATE_KEY, C.ROUND_KEY, *mdata.mod)
    )
    if fold not in (1, 2, 3):
        assert err is not None
        return
    relevant = {
        "missing_col": ("{key}",),
        "na_col": ("{key}",),
    }
    hits = [f for f in exp.faults if f[0] in relevant and f[2] in (C.REPLICATE_KEY, C.ROUND_KEY)]
    if hits:
        # a missing column in one modality only leaves it out (mods=None labels those that have both)
        if any(k == "na_col" for k, _, _ in hits):
            assert err is not None
            assert any(repr(key) in str(err) for _, _, key in hits), str(err)
        return
    if err is not None:
        return
    scheme = mm.pp._split.SCHEMES["scgenescope"]
    table = scheme.labels(fold)
    for a in mdata.mod.values():
        rounds = pd.to_numeric(a.obs[C.ROUND_KEY].astype(str)).to_numpy()
        reps = pd.to_numeric(a.obs[C.REPLICATE_KEY].astype(str)).to_numpy()
        expected = [C.TEST_HE if r == 2 else table[(r, p)] for r, p in zip(rounds, reps, strict=True)]
        assert a.obs[C.SPLIT_KEY].astype(str).tolist() == expected
        assert list(a.obs[C.SPLIT_KEY].cat.categories) == list(C.SPLITS)


# ---------------------------------------------------------------------------------------------------
# mm.pp.standardize / destandardize
# ---------------------------------------------------------------------------------------------------
@given(
    exp=experiments(),
    fit_on=st.sampled_from([C.TRAIN, None, (C.TRAIN, C.VAL), "nonexistent"]),
    as_anndata=st.booleans(),
    copy_=st.booleans(),
)
def test_standardize_and_destandardize(exp, fit_on, as_anndata, copy_):
    mdata, mod = exp.mdata, "img"
    rep = exp.reps[mod]
    data = mdata.mod[mod] if as_anndata else mdata
    source = dense(mdata.mod[mod], rep) if not exp.has("nan", mod) and not exp.has("inf", mod) else None
    out, err = attempt(
        mm.pp.standardize,
        data,
        mod=None if as_anndata else mod,
        rep=rep,
        fit_on=fit_on,
        copy=copy_,
        names=(mod, rep, "rep", "fit_on", C.SPLIT_KEY, "X"),
    )
    relevant = {**FEATURE_FAULTS}
    if fit_on is not None:
        relevant.update({"missing_col": ("{key}",), "na_col": ("{key}",)})
    hits = [
        f
        for f in exp.faults
        if f[1] == mod and f[0] in relevant and (f[0] in FEATURE_FAULTS or f[2] == C.SPLIT_KEY)
    ]
    assert_reported(err, Experiment(mdata, exp.reps, hits, complete=exp.complete), relevant)
    if fit_on == "nonexistent" and not hits and mdata.mod[mod].n_obs and C.SPLIT_KEY in mdata.mod[mod].obs:
        assert err is not None and "fit_on" in str(err)
    if err is not None:
        return
    target = out if copy_ else data
    adata = target if as_anndata else target.mod[mod]
    key = f"{rep or 'X'}_std"
    values = adata.obsm[key]
    assert values.dtype == np.float32 and values.shape == source.shape
    np.testing.assert_array_equal(dense(adata, rep), source)  # the source is never overwritten
    if fit_on is None:
        rows = np.arange(adata.n_obs)
    else:
        labels = [fit_on] if isinstance(fit_on, str) else list(fit_on)
        rows = np.flatnonzero(adata.obs[C.SPLIT_KEY].astype(str).isin(labels).to_numpy())
    mean = source[rows].mean(0)
    std = source[rows].std(0)
    std[std < 1e-8] = 1.0
    expected = (source - mean) / std
    assert np.isfinite(values).all()
    np.testing.assert_allclose(values, expected, rtol=1e-4, atol=1e-4 * (1 + np.abs(expected).max()))
    # destandardize maps back to raw units
    back = mm.pp.destandardize(target if as_anndata else target, values, key=key)
    np.testing.assert_allclose(back, source, rtol=1e-4, atol=1e-3 * (1 + np.abs(source).max()))
    # and refuses values of another width, or an unknown key, without touching the data
    for bad, bad_key in ((values[:, :0], key), (values[0], key), (values, "unknown_std")):
        attempt(mm.pp.destandardize, target, bad, key=bad_key, names=("values", "key"))


@given(
    values=st.one_of(
        st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=6),
        st.just("abc"),
        st.just(None),
        st.lists(st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=2), max_size=4),
    ),
    entry=st.sampled_from(["ok", "missing", "not_a_dict", "no_mean"]),
)
def test_destandardize_refuses_bad_values_and_entries(values, entry):
    a = ad.AnnData(obs=pd.DataFrame(index=[f"c{i}" for i in range(4)]))
    a.obsm["X_vit"] = np.arange(8, dtype=np.float32).reshape(4, 2)
    mm.pp.standardize(a, mod=None, rep="X_vit", fit_on=None)
    if entry == "missing":
        del a.uns["morphomu"]["X_vit_std"]
    elif entry == "not_a_dict":
        a.uns["morphomu"]["X_vit_std"] = "garbage"
    elif entry == "no_mean":
        del a.uns["morphomu"]["X_vit_std"]["mean"]
    out, err = attempt(mm.pp.destandardize, a, values, key="X_vit_std", names=("values", "key", "X_vit_std"))
    if entry != "ok":
        assert err is not None
    if err is None:
        arr = np.asarray(values, dtype=np.float64)
        assert arr.ndim == 2 and arr.shape[1] == 2
        assert out.shape == arr.shape


# ---------------------------------------------------------------------------------------------------
# mm.pp.validate
# ---------------------------------------------------------------------------------------------------
@given(exp=experiments(), finite=st.booleans())
def test_validate(exp, finite):
    mdata = exp.mdata
    mods = dict(exp.reps)
    _, err = attempt(
        mm.pp.validate,
        mdata,
        mods=mods,
        finite=finite,
        names=(*mods, *(r for r in mods.values()), C.SAMPLE_KEY, C.TREATMENT_KEY, "obs_name"),
    )
    relevant = {
        "missing_col": ("{key}",),
        "na_col": ("{key}",),
        "empty": ("{mod}",),
        "dup_within": ("obs_names",),
        "dup_across": ("obs_name",),
    }
    if finite:
        relevant.update(FEATURE_FAULTS)
    hits = [
        f
        for f in exp.faults
        if f[0] in relevant and (f[0] not in COLUMN_FAULTS or f[2] in (C.SAMPLE_KEY, C.TREATMENT_KEY))
    ]
    assert_reported(err, Experiment(mdata, exp.reps, hits, complete=exp.complete), relevant)
    if not hits and all(a.n_obs for a in mdata.mod.values()):
        assert err is None, str(err)  # validate passes exactly the data that follows the contract
    elif not hits:
        assert err is not None and "no cells" in str(err)


# ---------------------------------------------------------------------------------------------------
# mm.pp.featurize_smiles / featurize_compounds
# ---------------------------------------------------------------------------------------------------
VALID_SMILES = ("CCO", "CCO.Cl", "c1ccccc1", "CC(=O)Nc1ccc(O)cc1", "C[N+](C)(C)C.[Cl-]", "O=C(O)c1ccccc1")
SMILES_ALPHABET = "CNOSPFClBrc1234()=#[]+-@/\\.%H "


def mostly(valid: st.SearchStrategy, invalid: st.SearchStrategy) -> st.SearchStrategy:
    """``valid`` four times in five, else ``invalid``."""
    return st.integers(0, 4).flatmap(lambda i: invalid if i == 4 else valid)


smiles_text = mostly(
    st.sampled_from(VALID_SMILES),
    st.one_of(
        st.text(SMILES_ALPHABET, max_size=12),
        st.sampled_from(["", "   ", "C1CC", "c1cccc1", "[Xx]", "C(", "CC)(", "[NH4+]"]),
        st.none(),
        st.integers(),
        st.floats(allow_nan=True),
    ),
)
compound_names = mostly(st.text(string.ascii_letters + " /()-", min_size=1, max_size=8), st.integers(0, 3))


@given(
    smiles=st.dictionaries(compound_names, smiles_text, max_size=4),
    method=mostly(st.sampled_from(["morgan", "fcfp", "rdkit2d"]), st.sampled_from(["ecfp", None, 3])),
    n_bits=mostly(st.integers(1, 64), st.sampled_from([-1, 0, True, 8.0])),
    radius=mostly(st.integers(0, 3), st.sampled_from([-1, 1.5])),
    controls=st.lists(compound_names, max_size=2),
)
def test_featurize_smiles(smiles, method, n_bits, radius, controls):
    out, err = attempt(
        mm.pp.featurize_smiles,
        smiles,
        method=method,
        n_bits=n_bits,
        radius=radius,
        controls=controls,
        names=("method", "n_bits", "radius", "smiles", "reference", *map(str, smiles)),
    )
    names = [str(k) for k in smiles]
    if len(set(names)) != len(names):  # 1 and '1' are one name once written as an index
        assert err is not None and "smiles" in str(err)
        return
    if err is not None:
        return
    assert out.index.tolist() == names and out.index.is_unique
    ctrl = {str(c) for c in controls}
    if method in ("morgan", "fcfp"):
        assert out.shape == (len(names), n_bits) and out.dtypes.eq(np.uint8).all()
        assert out.isin([0, 1]).all().all()
        for name in names:
            if name in ctrl:
                assert (out.loc[name] == 0).all()
    else:
        assert out.dtypes.eq(np.float32).all() and np.isfinite(out.to_numpy()).all()


@given(
    exp=experiments(
        mods=(("img", C.IMAGE_REP), ("rna", C.RNA_REP)), faults=("missing_col", "na_col", "empty")
    ),
    table=st.fixed_dictionaries({t: st.sampled_from(VALID_SMILES) for t in TREATMENTS[1:]}).flatmap(
        lambda base: st.dictionaries(st.sampled_from(TREATMENTS + ("T3",)), smiles_text, max_size=3).map(
            lambda extra: {**base, **extra}
        )
    ),
    source=mostly(st.sampled_from(["mapping", "column", "default"]), st.just("bad")),
    control=mostly(st.sampled_from([C.CONTROL, None, "T0"]), st.just(3)),
    inplace=st.booleans(),
)
def test_featurize_compounds(exp, table, source, control, inplace):
    mdata = exp.mdata
    if source == "column":
        for a in mdata.mod.values():
            if C.TREATMENT_KEY in a.obs:
                a.obs[C.SMILES_KEY] = a.obs[C.TREATMENT_KEY].astype(str).map(table).to_numpy(dtype=object)
    smiles = {"mapping": table, "column": C.SMILES_KEY, "default": None, "bad": 1.5}[source]
    out, err = attempt(
        mm.pp.featurize_compounds,
        mdata,
        smiles=smiles,
        method="morgan",
        n_bits=16,
        control=control,
        inplace=inplace,
        names=("smiles", C.TREATMENT_KEY, "control", *TREATMENTS, *mdata.mod),
    )
    if source == "bad" or control == 3:
        assert err is not None
    hits = [f for f in exp.faults if f[0] == "na_col" and f[2] == C.TREATMENT_KEY]
    assert_reported(err, Experiment(mdata, exp.reps, hits, complete=exp.complete), COLUMN_FAULTS)
    if err is not None:
        return
    treatments = sorted(
        {str(t) for a in mdata.mod.values() if C.TREATMENT_KEY in a.obs for t in a.obs[C.TREATMENT_KEY]}
    )
    features = out if not inplace else mdata.uns["morphomu"]["morgan"]["features"]
    assert features.index.tolist() == treatments and features.shape[1] == 16


# ---------------------------------------------------------------------------------------------------
# mm.tl.fidelity
# ---------------------------------------------------------------------------------------------------
def _centroids(adata: ad.AnnData, rep: str | None, conditions: list[str], splits: Any) -> np.ndarray:
    x = dense(adata, rep)
    keep = (
        np.ones(adata.n_obs, bool)
        if splits is None
        else adata.obs[C.SPLIT_KEY].astype(str).isin(splits).to_numpy()
    )
    labels = adata.obs[C.TREATMENT_KEY].astype(str).to_numpy()
    return np.stack([x[keep & (labels == c)].mean(0) for c in conditions])


@given(
    exp=experiments(mods=(("rna", C.RNA_REP), ("rna_synthetic", C.RNA_REP)), with_split=True, same_dim=True),
    splits=st.sampled_from([C.HELD_OUT_SPLITS, C.HELD_OUT_SPLITS, None, C.TRAIN, ("nowhere",)]),
    distributions=st.booleans(),
    max_cells=st.sampled_from([None, 1000, 1000, 2, 1]),
    inplace=st.booleans(),
)
def test_fidelity(exp, splits, distributions, max_cells, inplace):
    mdata = exp.mdata
    rep, syn_rep = exp.reps["rna"], exp.reps["rna_synthetic"]
    out, err = attempt(
        mm.tl.fidelity,
        mdata,
        rep=rep,
        synthetic_rep=syn_rep,
        splits=splits,
        distributions=distributions,
        max_cells=max_cells,
        inplace=inplace,
        names=(
            "rna",
            "rna_synthetic",
            "rep",
            "synthetic_rep",
            "max_cells",
            "splits",
            C.TREATMENT_KEY,
            C.SPLIT_KEY,
        ),
    )
    if max_cells == 1:  # bad arguments are refused first
        assert err is not None and "max_cells" in str(err)
        return
    if rep != syn_rep:
        assert err is not None
        return
    relevant = {**FEATURE_FAULTS, "missing_col": ("{key}",), "na_col": ("{key}",)}
    keys = (C.TREATMENT_KEY,) if splits is None else (C.TREATMENT_KEY, C.SPLIT_KEY)
    hits = [f for f in exp.faults if f[0] in FEATURE_FAULTS or (f[0] in COLUMN_FAULTS and f[2] in keys)]
    assert_reported(err, Experiment(mdata, exp.reps, hits, complete=exp.complete), relevant)
    if err is not None:
        return
    table = out if not inplace else mdata.uns["morphomu"]["fidelity"]["table"]
    sel = None if splits is None else ([splits] if isinstance(splits, str) else list(splits))
    conditions = table.index.tolist()
    r = _centroids(mdata["rna"], rep, conditions, sel)
    s = _centroids(mdata["rna_synthetic"], syn_rep, conditions, sel)
    cos = (s * r).sum(1) / (np.linalg.norm(s, axis=1) * np.linalg.norm(r, axis=1))
    np.testing.assert_allclose(table["cosine"], cos, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(table["euclidean"], np.linalg.norm(s - r, axis=1), rtol=1e-5, atol=1e-6)
    assert table["rank"].between(1, len(conditions)).all()
    assert np.isfinite(table[["cosine", "euclidean", "rank", "specificity"]].to_numpy(np.float64)).all()
    if distributions:
        assert np.isfinite(table[["energy", "mmd"]].to_numpy(np.float64)).all()


# ---------------------------------------------------------------------------------------------------
# mm.tl.generate_rna(method='ridge')
# ---------------------------------------------------------------------------------------------------
@given(
    exp=experiments(with_split=True),
    n_cells=st.sampled_from(["match", "match", 2, 2, 0, "all", 1.5]),
    samples=st.sampled_from([None, None, "some", "unknown"]),
)
def test_generate_rna_ridge(exp, n_cells, samples):
    mdata = exp.mdata
    img_samples = (
        sorted(set(mdata["img"].obs[C.SAMPLE_KEY].astype(str)))
        if C.SAMPLE_KEY in mdata["img"].obs and not mdata["img"].obs[C.SAMPLE_KEY].isna().any()
        else []
    )
    chosen = {None: None, "some": img_samples[:2], "unknown": ["no_such_sample"]}[samples]
    out, err = attempt(
        mm.tl.generate_rna,
        mdata,
        method="ridge",
        image_rep=exp.reps["img"],
        rna_rep=exp.reps["rna"],
        n_cells_per_sample=n_cells,
        samples=chosen,
        names=(
            "img", "rna", "image_rep", "rna_rep", "n_cells_per_sample", "samples", "obs_name",
            C.SAMPLE_KEY, C.TREATMENT_KEY, C.SPLIT_KEY,
        ),
    )  # fmt: skip
    relevant = {
        **FEATURE_FAULTS,
        "missing_col": ("{key}",),
        "na_col": ("{key}",),
        "empty": ("{mod}",),
        "unaligned": ("{key}",),
        "dup_within": ("obs_names",),
        "dup_across": ("obs_name",),
    }
    needed = {"img": (C.SAMPLE_KEY, C.TREATMENT_KEY), "rna": (C.SAMPLE_KEY, C.SPLIT_KEY)}
    if n_cells in (0, "all", 1.5):
        assert err is not None
        return
    hits = [f for f in exp.faults if f[0] not in COLUMN_FAULTS or f[2] in needed[f[1]]]
    assert_reported(err, Experiment(mdata, exp.reps, hits, complete=exp.complete), relevant)
    if samples == "unknown":
        assert err is not None
    if err is not None:
        return
    assert isinstance(out, mm.models.RidgeBaseline)
    syn = mdata["rna_synthetic"]
    names = chosen if chosen is not None else img_samples
    got = syn.obs[C.SAMPLE_KEY].astype(str)
    if n_cells == 2:
        assert got.value_counts().reindex(names).eq(2).all() and syn.n_obs == 2 * len(names)
    else:
        real = mdata["rna"].obs[C.SAMPLE_KEY].astype(str).value_counts()
        assert syn.n_obs == int(real.reindex(names, fill_value=0).sum())
    assert syn.obs[C.SYNTHETIC_KEY].all()
    values = np.asarray(syn.X)
    assert values.dtype == np.float32 and values.shape[1] == dense(mdata["rna"], exp.reps["rna"]).shape[1]
    assert np.isfinite(values).all()
    assert syn.obs_names.is_unique and not set(syn.obs_names) & set(mdata["img"].obs_names)


# ---------------------------------------------------------------------------------------------------
# model setup: PhenoSeq.setup_mudata (+ a tiny model), TreatmentClassifier.setup_mudata (+ the model)
# ---------------------------------------------------------------------------------------------------
SETUP_FAULTS = {
    **FEATURE_FAULTS,
    "missing_col": ("{key}",),
    "na_col": ("{key}",),
    "empty": ("{mod}",),
    "unaligned": ("{key}",),
    "dup_within": ("obs_names",),
    "dup_across": ("obs_name",),
}


@given(exp=experiments(with_split=True))
def test_phenoseq_setup_mudata_and_tiny_model(exp):
    from morphomu.models import PhenoSeq

    mdata = exp.mdata
    image_rep, rna_rep = exp.reps["img"], exp.reps["rna"]
    _, err = attempt(
        PhenoSeq.setup_mudata,
        mdata,
        image_rep=image_rep,
        rna_rep=rna_rep,
        names=(
            "img",
            "rna",
            "image_rep",
            "rna_rep",
            "image_mod",
            "rna_mod",
            C.SAMPLE_KEY,
            C.TREATMENT_KEY,
            "obs_name",
        ),
    )
    needed = {"img": (C.SAMPLE_KEY, C.TREATMENT_KEY), "rna": (C.SAMPLE_KEY,)}
    hits = [f for f in exp.faults if f[0] not in COLUMN_FAULTS or f[2] in needed[f[1]]]
    assert_reported(err, Experiment(mdata, exp.reps, hits, complete=exp.complete), SETUP_FAULTS)
    if err is not None:
        return
    model = PhenoSeq(mdata, preset="tiny")
    n_image = dense(mdata["img"], image_rep).shape[1]
    n_rna = dense(mdata["rna"], rna_rep).shape[1]
    assert model._n_features() == (n_image, n_rna)
    assert model.setup_args["image_rep"] == image_rep and model.setup_args["rna_rep"] == rna_rep


@given(
    exp=experiments(with_split=True),
    which=st.sampled_from(["img", "rna", "both"]),
    setting=mostly(st.sampled_from(["single", "multi"]), st.just("pooled")),
    k=mostly(st.integers(1, 4), st.sampled_from([0, 2.5])),
)
def test_treatment_classifier_setup_mudata_and_model(exp, which, setting, k):
    from morphomu.models import TreatmentClassifier

    mdata = exp.mdata
    inputs = [(m, exp.reps[m]) for m in (("img", "rna") if which == "both" else (which,))]
    used = {m for m, _ in inputs}
    names = ("inputs", *used, *(r for _, r in inputs), C.TREATMENT_KEY, C.SAMPLE_KEY, C.SPLIT_KEY)
    _, err = attempt(TreatmentClassifier.setup_mudata, mdata, inputs=inputs, names=names)
    hits = [
        f
        for f in exp.faults
        if f[1] in used
        and (
            f[0] in FEATURE_FAULTS
            or (f[0] in COLUMN_FAULTS and f[2] != C.REPLICATE_KEY and f[2] != C.ROUND_KEY)
        )
    ]
    assert_reported(err, Experiment(mdata, exp.reps, hits, complete=exp.complete), SETUP_FAULTS)
    if err is not None:
        return
    model, err = attempt(
        TreatmentClassifier, mdata, setting=setting, k=k, preset="tiny", names=("setting", "k", *names)
    )
    if setting == "pooled" or k in (0, 2.5):
        assert err is not None
    if err is not None:
        return
    train_classes = [
        set(mdata[m].obs.loc[mdata[m].obs[C.SPLIT_KEY].astype(str) == C.TRAIN, C.TREATMENT_KEY].astype(str))
        - {C.CONTROL}
        for m in used
    ]
    assert model.classes_ == sorted(set.intersection(*train_classes))
    assert model._n_features() == [
        dense(mdata[m], r).shape[1] for m, r in sorted(inputs, key=lambda i: i[0] != "img")
    ]


# ---------------------------------------------------------------------------------------------------
# mm.tl.classify (tiny network, one epoch, one seed)
# ---------------------------------------------------------------------------------------------------
@settings(max_examples=min(settings().max_examples, 8))
@given(
    exp=experiments(with_split=True, faults=("nan", "missing_col", "na_col", "empty", "unaligned")),
    which=st.sampled_from(["img", "both"]),
    setting=st.sampled_from(["single", "multi"]),
    inplace=st.booleans(),
)
def test_classify(exp, which, setting, inplace):
    mdata = exp.mdata
    inputs = [(m, exp.reps[m]) for m in (("img", "rna") if which == "both" else (which,))]
    used = {m for m, _ in inputs}
    out, err = attempt(
        mm.tl.classify,
        mdata,
        inputs=inputs,
        setting=setting,
        k=2,
        seeds=[0],
        preset={"preset": "tiny", "max_epochs": 1, "batch_size": 16},
        accelerator="cpu",
        progress=False,
        inplace=inplace,
        names=(
            "inputs",
            *used,
            *(r for _, r in inputs),
            C.TREATMENT_KEY,
            C.SAMPLE_KEY,
            C.SPLIT_KEY,
            "target",
            "split",
        ),
    )
    hits = [
        f
        for f in exp.faults
        if f[1] in used
        and (
            f[0] in FEATURE_FAULTS
            or (f[0] in COLUMN_FAULTS and f[2] in (C.TREATMENT_KEY, C.SAMPLE_KEY, C.SPLIT_KEY))
        )
    ]
    assert_reported(err, Experiment(mdata, exp.reps, hits, complete=exp.complete), SETUP_FAULTS)
    if err is not None:
        return
    results = out if not inplace else mdata.uns["morphomu"]["classify"]["results"]
    metrics = results[["balanced_accuracy", "macro_f1", "weighted_f1"]].to_numpy(np.float64)
    assert len(results) and np.isfinite(metrics).all() and ((metrics >= 0) & (metrics <= 1)).all()
    assert set(results["test_set"]) <= set(C.HELD_OUT_SPLITS)


# ---------------------------------------------------------------------------------------------------
# mm.pp.crop_cells (tiny fields with given label masks, or the default segmentation)
# ---------------------------------------------------------------------------------------------------
@st.composite
def fields_and_labels(draw: st.DrawFn) -> tuple[Any, Any, int]:
    n_fields = draw(st.integers(1, 2))
    n_channels = draw(st.integers(1, 3))
    dtype = draw(
        mostly(
            st.sampled_from([np.uint8, np.uint16, np.float32]),
            st.sampled_from([np.float16, np.bool_, np.float64, np.int8]),
        )
    )
    with_labels = draw(st.integers(0, 3)) > 0
    images, labels = [], []
    for _ in range(n_fields):
        h, w = (
            draw(mostly(st.integers(6, 14), st.integers(1, 5))),
            draw(mostly(st.integers(6, 14), st.integers(1, 5))),
        )
        rng = np.random.default_rng(draw(st.integers(0, 100)))
        img = (rng.random((n_channels, h, w)) * 200).astype(dtype)
        if dtype == np.float64 and draw(st.booleans()):
            img[0, 0, 0] = np.nan
        images.append(img if n_channels > 1 or draw(st.booleans()) else img[0])
        lab = np.zeros((h, w), np.int32)
        for i in range(draw(st.integers(0, 3))):
            top, left = draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))
            lab[top : top + draw(st.integers(1, 4)), left : left + draw(st.integers(1, 4))] = i + 1
        if draw(st.integers(0, 5)) == 0:
            lab = lab.astype(draw(st.sampled_from([np.float32, np.uint8, np.int64])))
        if draw(st.integers(0, 7)) == 0:
            lab = lab[:, :-1]  # wrong shape
        labels.append(lab)
    return images, labels if with_labels else None, n_channels


def _expected_crops(image: np.ndarray, labels: np.ndarray, crop_size: int, border: str) -> list[np.ndarray]:
    """Reference crops: a window centred on each object's centroid, zeros outside the field."""
    image = image[None] if image.ndim == 2 else image
    half = crop_size // 2
    padded = np.pad(image, ((0, 0), (crop_size, crop_size), (crop_size, crop_size)))
    out = []
    for lab in np.unique(labels[labels > 0]):
        rows, cols = np.nonzero(labels == lab)
        top, left = int(np.round(rows.mean())) - half, int(np.round(cols.mean())) - half
        inside = (
            top >= 0
            and left >= 0
            and top + crop_size <= labels.shape[0]
            and left + crop_size <= labels.shape[1]
        )
        if border == "drop" and not inside:
            continue
        out.append(padded[:, top + crop_size : top + 2 * crop_size, left + crop_size : left + 2 * crop_size])
    return out


@given(
    data=fields_and_labels(),
    crop_size=mostly(st.integers(2, 8), st.sampled_from([0, 1, True, 2.5, -3])),
    border=mostly(st.sampled_from(["drop", "pad"]), st.just("wrap")),
    nuclei_channel=mostly(st.just(0), st.sampled_from([-1, 3, 1])),
)
def test_crop_cells(data, crop_size, border, nuclei_channel):
    images, labels, n_channels = data
    before = [i.copy() for i in images], None if labels is None else [lab.copy() for lab in labels]
    out, err = attempt(
        lambda imgs, **kw: mm.pp.crop_cells(imgs, **kw),
        images,
        labels=labels,
        crop_size=crop_size,
        border=border,
        nuclei_channel=nuclei_channel,
        progress=False,
        names=("images", "labels", "crop_size", "border", "nuclei_channel"),
    )
    for b, a in zip(before[0], images, strict=True):
        np.testing.assert_array_equal(b, a)  # never modified, whatever happened
    if labels is not None:
        for b, a in zip(before[1], labels, strict=True):
            np.testing.assert_array_equal(b, a)
    if isinstance(crop_size, bool) or not isinstance(crop_size, int) or crop_size < 2 or border == "wrap":
        assert err is not None
        return
    if err is not None or labels is None:
        return
    crops = out.obsm[C.IMAGES_KEY]
    expected = [
        c
        for img, lab in zip(images, labels, strict=True)
        for c in _expected_crops(img, lab, crop_size, border)
    ]
    assert crops.shape == (len(expected), n_channels, crop_size, crop_size)
    for got, want in zip(crops, expected, strict=True):
        np.testing.assert_array_equal(got, want.astype(crops.dtype))
    assert out.obs_names.is_unique
