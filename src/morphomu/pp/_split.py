from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .. import _constants as C
from .._errors import ContractError
from .._uns import store
from .._validation import check_mudata, check_obs_keys, get_mod

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

__all__ = ["SCHEMES", "SplitScheme", "assign_split", "split_labels"]


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


def assign_split(
    mdata: MuData,
    *,
    scheme: str = "scgenescope",
    fold: int = 1,
    mods: str | list[str] | None = None,
    replicate_key: str = C.REPLICATE_KEY,
    round_key: str = C.ROUND_KEY,
    key_added: str = C.SPLIT_KEY,
    copy: bool = False,
) -> MuData | None:
    """Assign every cell to ``train``, ``val``, ``test_we`` or ``test_he`` by its replicate and round.

    The ``scgenescope`` scheme is the benchmark's canonical split and its replicate cross-validation:

    ====  =====  ===  =======  =================
    fold  train  val  test_we  test_he
    ====  =====  ===  =======  =================
    1     3      5    4        round 2 (all)
    2     4      3    5        round 2 (all)
    3     5      4    3        round 2 (all)
    ====  =====  ===  =======  =================

    Fold 1 is the canonical split. Round-1 replicates are all required; round 2 is optional (without it
    there is no ``test_he``).

    Parameters
    ----------
    mdata
        The experiment.
    scheme
        A key of :data:`morphomu.pp._split.SCHEMES`.
    fold
        Which fold of the scheme.
    mods
        Modalities to label. ``None`` labels every modality that has both ``replicate_key`` and
        ``round_key`` columns (at least one must).
    replicate_key
        obs column with the replicate number.
    round_key
        obs column with the experimental round.
    key_added
        obs column (categorical) written in each labelled modality.
    copy
        Return a labelled copy instead of writing into ``mdata``.

    Returns
    -------
    ``None``, or the labelled copy when ``copy=True``. The parameters go to
    ``mdata.uns['morphomu']['assign_split']``.

    Examples
    --------
    >>> import morphomu as mm
    >>> mdata = mm.datasets.simulate_scgenescope(n_img_cells=2000, n_rna_cells=2000)
    >>> mm.pp.assign_split(mdata, fold=2)
    >>> mdata["rna"].obs["split"].value_counts().index.tolist()  # doctest: +SKIP
    """
    check_mudata(mdata)
    if scheme not in SCHEMES:
        msg = f"scheme={scheme!r} is unknown; choose one of {sorted(SCHEMES)}."
        raise ContractError(msg)
    spec = SCHEMES[scheme]
    if fold not in spec.folds:
        msg = f"fold={fold!r} is not a fold of scheme {scheme!r}; choose one of {sorted(spec.folds)}."
        raise ContractError(msg)
    if mods is None:
        mods = [m for m, a in mdata.mod.items() if {replicate_key, round_key} <= set(a.obs.columns)]
        if not mods:
            msg = (
                f"no modality has both obs columns replicate_key={replicate_key!r} and round_key={round_key!r}; "
                f"modalities: {sorted(mdata.mod)}."
            )
            raise ContractError(msg)
    elif isinstance(mods, str):
        mods = [mods]
    # compute everything first, so a failure leaves mdata untouched
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
    train, val, test_we = spec.folds[fold]
    store(
        mdata,
        "assign_split",
        {
            "params": {
                "scheme": scheme,
                "fold": fold,
                "mods": list(mods),
                "replicate_key": replicate_key,
                "round_key": round_key,
                "key_added": key_added,
            },
            "replicates": {
                "train": train,
                "val": val,
                "test_we": test_we,
                "test_he_round": spec.held_out_round,
            },
        },
    )
    return mdata if copy else None
