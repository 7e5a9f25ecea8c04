from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .. import _constants as C
from .._errors import ContractError, MorphomuWarning
from .._uns import store
from .._validation import check_mudata, check_obs_keys, get_mod

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

__all__ = ["SCHEMES", "SPLIT_REMEDY", "SplitScheme", "assign_split", "design_labels", "split_labels"]

#: The remedy every error about missing split labels ends with: it holds for the scGeneScope scheme,
#: for an own design, and for a split column made outside morphomu.
SPLIT_REMEDY = (
    "Run mm.pp.assign_split (scheme='scgenescope', or your own design: scheme={'train': [...], "
    "'val': [...], 'test': [...]}, by=<obs column>), or pass split_key= naming your own obs column with "
    "'train' and 'val' labels."
)


@dataclass(frozen=True)
class SplitScheme:
    """Replicate-level split of a two-round experiment.

    Attributes
    ----------
    within_round
        The round whose replicates are divided into train / val / WE test.
    held_out_round
        The round whose replicates are all the held-out-experiment (HE) test.
    folds
        Fold number to ``(train, val, test_we)`` replicates of ``within_round``.
    """

    within_round: int
    held_out_round: int
    folds: dict[int, tuple[int, int, int]]

    def labels(self, fold: int) -> dict[tuple[int, int], str]:
        """``(round, replicate) -> split label`` for one fold (held-out-round replicates: any)."""
        train, val, test_we = self.folds[fold]
        return {
            (self.within_round, train): C.TRAIN,
            (self.within_round, val): C.VAL,
            (self.within_round, test_we): C.TEST_WE,
        }


#: Known schemes. ``scgenescope``: fold 1 is the canonical split (train = replicate 3, val = 5,
#: WE test = 4, HE test = round 2), folds 2 and 3 the replicate cross-validation of the PhenoSeq paper.
SCHEMES: dict[str, SplitScheme] = {
    "scgenescope": SplitScheme(
        within_round=1, held_out_round=2, folds={1: (3, 5, 4), 2: (4, 3, 5), 3: (5, 4, 3)}
    ),
}


def _as_int(values: pd.Series, *, mod: str, key: str, arg: str) -> np.ndarray:
    numeric = pd.to_numeric(values.astype(str).str.strip(), errors="coerce")
    bad = values[numeric.isna() | (numeric % 1 != 0)]
    if len(bad):
        msg = (
            f"mdata.mod[{mod!r}].obs[{key!r}] ({arg}) must hold whole numbers (e.g. 3 or '3'); "
            f"found {sorted(map(str, bad.unique()))[:5]}."
        )
        raise ContractError(msg)
    return numeric.to_numpy(dtype=int)


def split_labels(
    adata: AnnData, scheme: SplitScheme, fold: int, *, mod: str, replicate_key: str, round_key: str
) -> pd.Categorical:
    """The split of every cell of ``adata`` under fold ``fold`` of ``scheme``, from its round and replicate."""
    check_obs_keys(adata, {"replicate_key": replicate_key, "round_key": round_key}, mod=mod)
    rounds = _as_int(adata.obs[round_key], mod=mod, key=round_key, arg="round_key")
    replicates = _as_int(adata.obs[replicate_key], mod=mod, key=replicate_key, arg="replicate_key")
    table = scheme.labels(fold)
    needed = sorted(table)
    present = set(zip(rounds.tolist(), replicates.tolist(), strict=True))
    missing = [rr for rr in needed if rr not in present]
    if missing:
        msg = (
            f"mdata.mod[{mod!r}] has no cells of (round, replicate) {missing}, which fold {fold} of the "
            f"scheme needs for {[table[m] for m in missing]}; it has {sorted(present)}."
        )
        raise ContractError(msg)
    labels = np.empty(adata.n_obs, dtype=object)
    for (round_, replicate), label in table.items():
        labels[(rounds == round_) & (replicates == replicate)] = label
    labels[rounds == scheme.held_out_round] = C.TEST_HE
    unassigned = labels == None  # noqa: E711 - elementwise on an object array
    if unassigned.any():
        stray = sorted(set(zip(rounds[unassigned].tolist(), replicates[unassigned].tolist(), strict=True)))
        msg = (
            f"mdata.mod[{mod!r}] has cells of (round, replicate) {stray[:5]} that the scheme does not place "
            f"(round {scheme.within_round}: replicates {sorted(r for _, r in table)}; round "
            f"{scheme.held_out_round}: any). Subset the data or choose another scheme."
        )
        raise ContractError(msg)
    return pd.Categorical(labels, categories=list(C.SPLITS))


def _canon(value: Any) -> str | None:
    """Comparable form of an obs value or a listed one: ``3``, ``3.0`` and ``'3'`` are equal; missing is ``None``."""
    if value is None or (not isinstance(value, str) and bool(pd.isna(value))):
        return None
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    return str(value).strip()


def _check_design(scheme: Mapping[Any, Any], *, by: str) -> dict[str, list[Any]]:
    """The design ``label -> values`` as lists, refusing unnamed labels, no train / val, empty or shared values."""
    labels = list(scheme)
    bad = [label for label in labels if not isinstance(label, str) or not label]
    if bad:
        msg = f"scheme: split labels must be non-empty strings; got {bad}."
        raise ContractError(msg)
    lacking = [label for label in (C.TRAIN, C.VAL) if label not in scheme]
    if lacking:
        msg = (
            f"scheme must name the splits 'train' and 'val' (every other label is a test split); it lacks "
            f"{lacking} (labels given: {labels})."
        )
        raise ContractError(msg)
    design: dict[str, list[Any]] = {}
    owner: dict[str, str] = {}
    shared: dict[str, list[str]] = {}
    for label, values in scheme.items():
        # one value may be given bare; strings are values, not sequences of characters
        values = [values] if isinstance(values, str | bytes) or np.ndim(values) == 0 else list(values)
        if not values:
            msg = f"scheme[{label!r}] lists no values of obs[{by!r}] (by); give at least one."
            raise ContractError(msg)
        for value in values:
            key = _canon(value)
            if key is None:
                msg = f"scheme[{label!r}] lists a missing value ({value!r}); list values of obs[{by!r}] (by)."
                raise ContractError(msg)
            first = owner.setdefault(key, label)
            if first != label and label not in shared.setdefault(key, [first]):
                shared[key].append(label)
        design[label] = values
    if shared:
        msg = (
            f"scheme lists values in more than one split ({shared}); a value of "
            f"obs[{by!r}] (by) goes to one split only."
        )
        raise ContractError(msg)
    return design


def design_labels(
    adata: AnnData, design: Mapping[str, Sequence[Any]], *, mod: str, by: str
) -> pd.Categorical:
    """The split of every cell of ``adata`` under an own ``design`` (``label -> values of obs[by]``).

    Categories: ``train``, ``val``, then the test labels in the design's order. Cells whose value is
    listed nowhere (or missing) get a missing label. Every listed value must occur in ``obs[by]``.
    """
    if by not in adata.obs.columns:
        cols = list(adata.obs.columns)
        msg = (
            f"by={by!r} is not a column of mdata.mod[{mod!r}].obs; its columns are "
            f"{cols[:20]}{' ...' if len(cols) > 20 else ''}."
        )
        raise ContractError(msg)
    # label each distinct value once, then spread to the cells
    codes, uniques = pd.factorize(adata.obs[by].astype(object), use_na_sentinel=True)
    canon = [_canon(u) for u in uniques]
    present = {c for c in canon if c is not None}
    absent = {
        label: [v for v in values if _canon(v) not in present]
        for label, values in design.items()
        if any(_canon(v) not in present for v in values)
    }
    if absent:
        shown = sorted(present)
        msg = (
            f"scheme lists values that mdata.mod[{mod!r}].obs[{by!r}] (by) does not hold: {absent}; it holds "
            f"{shown[:20]}{' ...' if len(shown) > 20 else ''}."
        )
        raise ContractError(msg)
    lookup = {_canon(v): label for label, values in design.items() for v in values}
    per_value = np.asarray([lookup.get(c) for c in canon] + [None], dtype=object)  # code -1 (missing) -> None
    categories = [C.TRAIN, C.VAL, *(label for label in design if label not in (C.TRAIN, C.VAL))]
    return pd.Categorical(per_value[codes], categories=categories)


def assign_split(
    mdata: MuData,
    *,
    scheme: str | Mapping[str, Sequence[Any]] = "scgenescope",
    fold: int | None = None,
    by: str | None = None,
    mods: str | list[str] | None = None,
    replicate_key: str = C.REPLICATE_KEY,
    round_key: str = C.ROUND_KEY,
    key_added: str = C.SPLIT_KEY,
    copy: bool = False,
) -> MuData | None:
    """Assign every cell to a split: the scGeneScope benchmark's, or your own design.

    **Your own design.** ``scheme`` maps each split label to the values of the obs column ``by`` whose
    cells go there, e.g. ``scheme={"train": [1, 2], "val": [3], "test": [4]}, by="replicate"``. The
    labels must include ``'train'`` and ``'val'``; every other label is a test split (a tool's
    ``splits="test"`` takes them all, in the order given). The lists must be disjoint, and every listed
    value must occur in ``obs[by]`` of each labelled modality. ``3``, ``3.0`` and ``'3'`` are the same
    value. Cells whose value is listed nowhere get a missing label and take part in no split.

    **The scGeneScope scheme** (``scheme="scgenescope"``): the benchmark's canonical split and its
    replicate cross-validation, by the ``replicate_key`` and ``round_key`` columns:

    ====  =====  ===  =======  =================
    fold  train  val  test_we  test_he
    ====  =====  ===  =======  =================
    1     3      5    4        round 2 (all)
    2     4      3    5        round 2 (all)
    3     5      4    3        round 2 (all)
    ====  =====  ===  =======  =================

    Fold 1 is the canonical split. Round-1 replicates are all required; round 2 is optional (without it
    there is no ``test_he`` cell). Cells of other replicates are an error.

    Parameters
    ----------
    mdata
        The experiment.
    scheme
        ``'scgenescope'``, or your own design: a mapping ``split label -> values of obs[by]``.
    fold
        Fold of the ``'scgenescope'`` scheme (default 1, the canonical split); not for an own design.
    by
        obs column whose values an own design lists (default: ``replicate_key``); not for
        ``'scgenescope'``, which reads ``replicate_key`` and ``round_key``.
    mods
        Modalities to label. ``None`` labels every modality that has the columns the scheme reads
        (``by``, or ``replicate_key`` and ``round_key``); at least one must.
    replicate_key
        obs column with the replicate number.
    round_key
        obs column with the experimental round (``'scgenescope'`` only).
    key_added
        obs column (categorical) written in each labelled modality; later tools take it as ``split_key``.
    copy
        Return a labelled copy instead of writing into ``mdata``.

    Returns
    -------
    ``None``, or the labelled copy when ``copy=True``. Writes ``obs[key_added]`` in each labelled
    modality and the record ``mdata.uns['morphomu'][key_added]``: ``tool`` (``'assign_split'``),
    ``params`` (``scheme`` as given, ``fold``, ``by``, ``mods``, the keys), ``test_splits`` (the labels
    other than ``train`` and ``val``) and, for ``'scgenescope'``, the fold's ``replicates``; for an own
    design, ``n_unlabelled`` (cells per modality that got no label).

    Examples
    --------
    >>> import morphomu as mm
    >>> mdata = mm.datasets.simulate_scgenescope(n_img_cells=2000, n_rna_cells=2000)
    >>> mm.pp.assign_split(mdata, fold=2)
    >>> mm.pp.assign_split(
    ...     mdata, scheme={"train": [3, 4], "val": [5], "test": [1, 2]}, by="replicate", key_added="my_split"
    ... )
    >>> list(mdata["rna"].obs["my_split"].cat.categories)
    ['train', 'val', 'test']
    """
    check_mudata(mdata)
    if isinstance(scheme, Mapping):
        if fold is not None:
            msg = (
                f"fold={fold!r} applies to scheme='scgenescope' only; an own design (a mapping) has no folds."
            )
            raise ContractError(msg)
        by = replicate_key if by is None else by
        design = _check_design(scheme, by=by)
        needed = {by}
    elif isinstance(scheme, str) and scheme in SCHEMES:
        if by is not None:
            msg = (
                f"by={by!r} applies to an own design (scheme={{'train': [...], 'val': [...], ...}}); "
                f"scheme={scheme!r} places cells by replicate_key and round_key."
            )
            raise ContractError(msg)
        fold = 1 if fold is None else fold
        spec = SCHEMES[scheme]
        if fold not in spec.folds:
            msg = f"fold={fold!r} is not a fold of scheme {scheme!r}; choose one of {sorted(spec.folds)}."
            raise ContractError(msg)
        needed = {replicate_key, round_key}
    else:
        msg = (
            f"scheme={scheme!r} is unknown; choose one of {sorted(SCHEMES)}, or give your own design as a "
            "mapping, e.g. scheme={'train': [1, 2], 'val': [3], 'test': [4]}, by='replicate'."
        )
        raise ContractError(msg)
    if mods is None:
        mods = [m for m, a in mdata.mod.items() if needed <= set(a.obs.columns)]
        if not mods:
            what = (
                f"by={by!r}"
                if isinstance(scheme, Mapping)
                else f"replicate_key={replicate_key!r} and round_key={round_key!r}"
            )
            msg = f"no modality has the obs column(s) {what}; modalities: {sorted(mdata.mod)}."
            raise ContractError(msg)
    elif isinstance(mods, str):
        mods = [mods]
    # compute everything first, so a failure leaves mdata untouched
    if isinstance(scheme, Mapping):
        labels = {mod: design_labels(get_mod(mdata, mod, arg="mods"), design, mod=mod, by=by) for mod in mods}
        for mod, values in labels.items():
            unlisted = np.asarray(values.isna())
            if unlisted.any():  # often a value forgotten in the design: say which
                found = pd.unique(mdata.mod[mod].obs[by].to_numpy()[unlisted]).tolist()
                warnings.warn(
                    f"{int(unlisted.sum())} cells of mdata.mod[{mod!r}] are in no split (obs[{by!r}] values "
                    f"{found[:10]}{' ...' if len(found) > 10 else ''} are listed nowhere in scheme); their "
                    f"obs[{key_added!r}] is missing.",
                    MorphomuWarning,
                    stacklevel=2,
                )
    else:
        labels = {
            mod: split_labels(
                get_mod(mdata, mod, arg="mods"),
                spec,
                fold,
                mod=mod,
                replicate_key=replicate_key,
                round_key=round_key,
            )
            for mod in mods
        }
    if copy:
        mdata = mdata.copy()
    for mod, values in labels.items():
        mdata.mod[mod].obs[key_added] = values
    categories = list(next(iter(labels.values())).categories)
    test_splits = [label for label in categories if label not in (C.TRAIN, C.VAL)]
    if isinstance(scheme, Mapping):
        entry = {
            "params": {"scheme": design, "by": by, "mods": list(mods), "key_added": key_added},
            "test_splits": test_splits,
            "n_unlabelled": {mod: int(np.asarray(values.isna()).sum()) for mod, values in labels.items()},
        }
    else:
        train, val, test_we = spec.folds[fold]
        entry = {
            "params": {
                "scheme": scheme,
                "fold": fold,
                "by": None,
                "mods": list(mods),
                "replicate_key": replicate_key,
                "round_key": round_key,
                "key_added": key_added,
            },
            "test_splits": test_splits,
            "replicates": {
                "train": train,
                "val": val,
                "test_we": test_we,
                "test_he_round": spec.held_out_round,
            },
        }
    store(mdata, key_added, entry, tool="assign_split")
    return mdata if copy else None
