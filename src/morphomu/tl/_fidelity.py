"""Embedding-space fidelity of synthetic cells against real ones (PhenoSeq appendix A.3, plus distributions)."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import sparse

from .. import _constants as C
from .._core import CHUNK_ROWS, renamed_arguments
from .._errors import ContractError
from .._uns import AUTO, CONTRACT_KEYS, known_keys, resolve, store
from .._validation import TEST_SPLITS, check_obs_keys, check_rep, get_mod, splits_of, where

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

__all__ = ["distribution_scores", "fidelity", "provenance"]

#: Columns of the per-condition table, in order.
COLUMNS = (
    "n_real",
    "n_synthetic",
    "cosine",
    "euclidean",
    "pearson",
    "rank",
    "specificity",
    "energy",
    "mmd",
)


def provenance(rep: str | None) -> tuple[str, bool]:
    """``(source, standardised)`` of a representation name.

    The rule metrics use to compare like with like: a name ending in ``'_std'`` (what
    :func:`morphomu.pp.standardize` writes) is the standardised form of the name without the suffix;
    any other name (``None`` meaning ``.X``) is raw. Two representations are comparable when both parts
    are equal, e.g. ``X_scgpt`` with ``X_scgpt`` or ``X_scgpt_std`` with ``X_scgpt_std``, never
    ``X_scgpt_std`` with ``X_scgpt``.
    """
    name = "X" if rep is None else str(rep)
    standardised = name.endswith(C.STANDARDIZED_SUFFIX)
    return (name.removesuffix(C.STANDARDIZED_SUFFIX) if standardised else name), standardised


def _rows(matrix: Any, rows: np.ndarray) -> np.ndarray:
    """Dense float64 rows of a dense, sparse or on-disk matrix."""
    if isinstance(matrix, pd.DataFrame):  # rows by position (``df[rows]`` would select columns)
        matrix = matrix.iloc
    block = matrix[rows] if len(rows) else matrix[:0]
    if isinstance(block, pd.DataFrame):
        block = block.to_numpy()
    block = block.toarray() if sparse.issparse(block) else np.asarray(block)
    return block.astype(np.float64, copy=False)


def _group_means(matrix: Any, rows: np.ndarray, codes: np.ndarray, n_groups: int) -> np.ndarray:
    """Mean of ``matrix[rows]`` per group code, accumulated in float64 chunks (bounded memory)."""
    import torch

    sums = torch.zeros(n_groups, matrix.shape[1], dtype=torch.float64)
    order = np.argsort(rows, kind="stable")  # sorted reads for on-disk matrices
    rows, codes = rows[order], codes[order]
    for start in range(0, rows.size, CHUNK_ROWS):
        sl = slice(start, start + CHUNK_ROWS)
        block = torch.from_numpy(_rows(matrix, rows[sl]))
        sums.index_add_(0, torch.from_numpy(codes[sl].astype(np.int64)), block)
    counts = np.bincount(codes, minlength=n_groups).astype(np.float64)
    return sums.numpy() / counts[:, None]


def _pairwise_sq(a: Any, b: Any, *, same: bool) -> Any:
    """Squared euclidean distances in float64 via the Gram matrix, clamped at 0 (exact 0 on a diagonal)."""
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    d2 = d2.clamp_min(0.0)
    if same:
        d2.fill_diagonal_(0.0)
    return d2


def distribution_scores(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Energy distance and RBF-kernel MMD² between two samples of points (rows), in float64.

    Parameters
    ----------
    x, y
        ``(n, d)`` and ``(m, d)`` arrays.

    Returns
    -------
    ``energy``: Székely's energy distance ``2 E|X-Y| - E|X-X'| - E|Y-Y'|`` with empirical (V-statistic)
    means, the square of :func:`scipy.stats.energy_distance` in one dimension; ``mmd``: the biased
    (V-statistic) squared maximum mean discrepancy with the Gaussian kernel
    ``exp(-|a-b|² / (2 σ²))``; ``bandwidth``: σ, the median heuristic = the median euclidean distance
    between distinct points of the pooled sample (1 when that median is 0). Both scores are 0 for
    identical samples and grow when ``y`` collapses or shifts away from ``x``.
    """
    import torch

    xt = torch.as_tensor(np.asarray(x, dtype=np.float64))
    yt = torch.as_tensor(np.asarray(y, dtype=np.float64))
    dxx = _pairwise_sq(xt, xt, same=True)
    dyy = _pairwise_sq(yt, yt, same=True)
    dxy = _pairwise_sq(xt, yt, same=False)
    energy = 2.0 * dxy.sqrt().mean() - dxx.sqrt().mean() - dyy.sqrt().mean()
    n, m = len(xt), len(yt)
    iu_x = torch.triu_indices(n, n, 1)
    iu_y = torch.triu_indices(m, m, 1)
    pooled = torch.cat([dxx[iu_x[0], iu_x[1]], dyy[iu_y[0], iu_y[1]], dxy.reshape(-1)])
    bandwidth = float(pooled.sqrt().median()) if pooled.numel() else 1.0
    if not bandwidth > 0.0:
        bandwidth = 1.0
    gamma = 1.0 / (2.0 * bandwidth**2)
    mmd = (-gamma * dxx).exp().mean() + (-gamma * dyy).exp().mean() - 2.0 * (-gamma * dxy).exp().mean()
    return {"energy": float(energy), "mmd": float(mmd.clamp_min(0.0)), "bandwidth": bandwidth}


def _subsample(rows: np.ndarray, cap: int | None, *, seed: int, condition: str) -> np.ndarray:
    """At most ``cap`` of ``rows``, drawn without replacement by a generator keyed on (seed, condition)."""
    if cap is None or rows.size <= cap:
        return rows
    rng = np.random.default_rng([int(seed), zlib.crc32(condition.encode())])
    return np.sort(rng.choice(rows, size=cap, replace=False))


def _side(
    mdata: MuData,
    mod: str,
    rep: str | None,
    *,
    arg: str,
    treatment_key: str,
    split_key: str,
    splits: Sequence[str] | None,
) -> tuple[AnnData, np.ndarray, np.ndarray]:
    """The modality, the rows of the chosen splits and their condition labels (strings)."""
    adata = get_mod(mdata, mod, arg=arg)
    check_rep(adata, rep, mod=mod, arg="rep" if arg == "real" else "synthetic_rep")
    check_obs_keys(adata, {"treatment_key": treatment_key}, mod=mod)
    labels = adata.obs[treatment_key].astype(str).to_numpy()
    rows = np.arange(adata.n_obs)
    if splits is not None:
        check_obs_keys(adata, {"split_key": split_key}, mod=mod)
        split = adata.obs[split_key].astype(str).to_numpy()
        rows = np.flatnonzero(np.isin(split, list(splits)))
        if rows.size == 0:
            msg = (
                f"mdata.mod[{mod!r}].obs[{split_key!r}] has no cells in splits={list(splits)} (found "
                f"{sorted(set(split))}); choose other splits, or splits=None for every cell."
            )
            raise ContractError(msg)
    return adata, rows, labels[rows]


@renamed_arguments(groupby="treatment_key")
def fidelity(
    mdata: MuData,
    *,
    real: str | None = None,
    synthetic: str = C.RNA_SYNTHETIC_MOD,
    rep: str | None = AUTO,
    synthetic_rep: str | None | bool = False,
    treatment_key: str | None = None,
    splits: Sequence[str] | str | None = TEST_SPLITS,
    split_key: str | None = None,
    distributions: bool = True,
    max_cells: int | None = 1000,
    seed: int = 0,
    key_added: str = "fidelity",
    inplace: bool = True,
) -> pd.DataFrame | None:
    """Embedding-space fidelity of synthetic cells: retrieval rank and specificity of condition centroids.

    For every condition ``T`` (every value of ``treatment_key``, the control included) the real and the
    synthetic centroids ``r_T`` and ``s_T`` are the means of the cells of the chosen splits. Following
    the PhenoSeq paper (appendix A.3):

    - ``cosine``, ``euclidean``, ``pearson``: between ``s_T`` and ``r_T``;
    - ``rank``: position of ``r_T`` when all real centroids are sorted by cosine similarity to ``s_T``
      (1 = nearest; ties count in the condition's favour: 1 + the number strictly more similar);
    - ``specificity`` (eq. 9): ``cos(s_T, r_T) - mean_{T' != T} cos(s_T, r_T')``, invariant to a global
      cosine offset (scGPT centroids sit near cosine 0.999 to each other).

    Centroids hide collapse (a generator that outputs the right mean with no spread scores perfectly),
    so per condition the cell distributions are also compared: ``energy`` (energy distance) and ``mmd``
    (squared RBF maximum mean discrepancy, median-heuristic bandwidth), see
    :func:`~morphomu.tl._fidelity.distribution_scores`, on at most ``max_cells`` cells per side, drawn
    without replacement by a generator keyed on ``(seed, condition)``.

    Parameters
    ----------
    mdata
        The experiment.
    real
        Modality of the real cells; default: from the record of the step that wrote ``synthetic``
        (:func:`~morphomu.tl.generate_rna` records its ``rna_mod``), else ``'rna'``.
    synthetic
        Modality of the synthetic cells.
    rep
        Representation (``.obsm`` key, ``None`` for ``.X``) of the real cells; default (``'auto'``):
        from the record of the step that wrote ``synthetic``, else ``'X_scgpt'``.
    synthetic_rep
        Representation of the synthetic cells; by default (``False``) the same key as ``rep``. The two
        must have the same number of features and the same provenance
        (:func:`~morphomu.tl._fidelity.provenance`: both raw or both standardised forms of the same
        source), otherwise a :class:`~morphomu.ContractError` is raised.
    treatment_key
        obs column with the condition (present in both modalities); default: from the record of the
        step that wrote ``synthetic``, else ``'treatment'``.
    splits
        Split labels whose cells are compared; ``'test'`` (default): every label of ``split_key`` other
        than ``'train'`` and ``'val'`` (``test_we`` and ``test_he`` for the scGeneScope scheme); ``None``
        uses every cell.
    split_key
        obs column with the split labels; default: from the record of the step that wrote ``synthetic``,
        else ``'split'``.
    distributions
        Compute the distribution-level scores (``energy``, ``mmd``); otherwise those columns are NaN.
    max_cells
        Cap on cells per condition and side for the distribution scores (``None``: no cap; their cost is
        quadratic in it). Centroids always use every cell.
    seed
        Seed of the subsampling.
    key_added
        Entry of ``mdata.uns['morphomu']`` written.
    inplace
        Write the results into ``mdata`` (and return ``None``); otherwise return the per-condition table
        without modifying ``mdata``.

    Returns
    -------
    With ``inplace=False``, a DataFrame indexed by condition with columns ``n_real``, ``n_synthetic``,
    ``cosine``, ``euclidean``, ``pearson``, ``rank``, ``specificity``, ``energy``, ``mmd``. With
    ``inplace=True``, ``None``; ``mdata.uns['morphomu'][key_added]`` holds ``table`` (that DataFrame),
    ``summary`` (``accuracy_at_1``, ``mrr``, ``n_rank_le_4``, ``n_conditions``, ``mean_specificity``,
    ``median_rank``, ``mean_energy``, ``mean_mmd``), ``similarity`` (the cosine matrix, rows =
    synthetic centroids, columns = real centroids, both in the table's order), ``conditions`` and
    ``params``.

    Examples
    --------
    >>> import morphomu as mm
    >>> mm.tl.fidelity(mdata)  # doctest: +SKIP
    >>> mdata.uns["morphomu"]["fidelity"]["summary"]["mrr"]  # doctest: +SKIP
    >>> mm.pl.fidelity(mdata)  # doctest: +SKIP
    """
    import torch

    produced = known_keys(mdata, synthetic)  # what the step that wrote `synthetic` recorded
    real = real if real is not None else produced.get("real", C.RNA_MOD)
    known = {**known_keys(mdata, real), **produced}
    if rep == AUTO:
        rep = known.get("rep", C.RNA_REP)
    treatment_key, split_key = resolve(
        {"treatment_key": treatment_key, "split_key": split_key}, known, CONTRACT_KEYS
    ).values()
    if synthetic_rep is False:
        synthetic_rep = rep
    if splits is not None:
        splits = splits_of(get_mod(mdata, real, arg="real"), splits, split_key, mod=real)
    if max_cells is not None and int(max_cells) < 2:
        msg = f"max_cells must be at least 2 (or None), got {max_cells}."
        raise ContractError(msg)
    if real == synthetic and rep == synthetic_rep:
        msg = (
            f"real and synthetic are the same data ({where(real, rep)}); compare two different sets of cells."
        )
        raise ContractError(msg)
    real_ad, real_rows, real_lab = _side(
        mdata, real, rep, arg="real", treatment_key=treatment_key, split_key=split_key, splits=splits
    )
    syn_ad, syn_rows, syn_lab = _side(
        mdata,
        synthetic,
        synthetic_rep,
        arg="synthetic",
        treatment_key=treatment_key,
        split_key=split_key,
        splits=splits,
    )
    n_real_feat = real_ad.obsm[rep].shape[1] if rep is not None else real_ad.X.shape[1]
    n_syn_feat = syn_ad.obsm[synthetic_rep].shape[1] if synthetic_rep is not None else syn_ad.X.shape[1]
    if n_real_feat != n_syn_feat:
        msg = (
            f"{where(real, rep)} has {n_real_feat} features but {where(synthetic, synthetic_rep)} has "
            f"{n_syn_feat}; fidelity compares cells in one embedding space."
        )
        raise ContractError(msg)
    if provenance(rep) != provenance(synthetic_rep):
        msg = (
            f"{where(real, rep)} and {where(synthetic, synthetic_rep)} have different provenance "
            f"({'standardised' if provenance(rep)[1] else 'raw'} {provenance(rep)[0]!r} vs "
            f"{'standardised' if provenance(synthetic_rep)[1] else 'raw'} {provenance(synthetic_rep)[0]!r}); "
            "compare like with like, e.g. both raw (mm.pp.destandardize the generated values) or both "
            "standardised with the same statistics."
        )
        raise ContractError(msg)
    real_set, syn_set = set(real_lab), set(syn_lab)
    where_splits = "" if splits is None else f" in splits {list(splits)}"
    if real_set != syn_set:
        only_real, only_syn = sorted(real_set - syn_set), sorted(syn_set - real_set)
        msg = (
            f"the conditions (obs[{treatment_key!r}]){where_splits} differ between mdata.mod[{real!r}] and "
            f"mdata.mod[{synthetic!r}]: only real {only_real[:10]}, only synthetic {only_syn[:10]}. "
            "Generate cells for every condition, or subset both modalities to the same conditions."
        )
        raise ContractError(msg)
    conditions = pd.Index(sorted(real_set))
    if len(conditions) < 2:
        msg = (
            f"fidelity ranks a condition among the others and needs at least two conditions in "
            f"obs[{treatment_key!r}]{where_splits}; found {list(conditions)}."
        )
        raise ContractError(msg)

    # --- centroids and their similarities (float64) -----------------------------------------------
    real_codes = conditions.get_indexer(real_lab)
    syn_codes = conditions.get_indexer(syn_lab)
    real_matrix = real_ad.X if rep is None else real_ad.obsm[rep]
    syn_matrix = syn_ad.X if synthetic_rep is None else syn_ad.obsm[synthetic_rep]
    r = _group_means(real_matrix, real_rows, real_codes, len(conditions))
    s = _group_means(syn_matrix, syn_rows, syn_codes, len(conditions))
    r_norm = np.linalg.norm(r, axis=1)
    s_norm = np.linalg.norm(s, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        sim = (s @ r.T) / np.outer(s_norm, r_norm)  # rows: synthetic T, columns: real T'
    own = np.diag(sim).copy()
    n = len(conditions)
    rank = 1 + (sim > own[:, None]).sum(1)
    specificity = own - (sim.sum(1) - own) / (n - 1)
    euclidean = np.linalg.norm(s - r, axis=1)
    rc, sc = r - r.mean(1, keepdims=True), s - s.mean(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        pearson = (rc * sc).sum(1) / (np.linalg.norm(rc, axis=1) * np.linalg.norm(sc, axis=1))

    # --- distributions per condition --------------------------------------------------------------
    energy = np.full(n, np.nan)
    mmd = np.full(n, np.nan)
    bandwidth = np.full(n, np.nan)
    if distributions:
        with torch.inference_mode():
            for i, cond in enumerate(conditions):
                xr = _subsample(real_rows[real_codes == i], max_cells, seed=seed, condition=cond)
                xs = _subsample(syn_rows[syn_codes == i], max_cells, seed=seed, condition=cond)
                scores = distribution_scores(_rows(real_matrix, xr), _rows(syn_matrix, xs))
                energy[i], mmd[i], bandwidth[i] = scores["energy"], scores["mmd"], scores["bandwidth"]

    table = pd.DataFrame(
        {
            "n_real": np.bincount(real_codes, minlength=n),
            "n_synthetic": np.bincount(syn_codes, minlength=n),
            "cosine": own,
            "euclidean": euclidean,
            "pearson": pearson,
            "rank": rank.astype(np.int64),
            "specificity": specificity,
            "energy": energy,
            "mmd": mmd,
        },
        index=pd.Index(conditions.astype(str), name=treatment_key),
    )
    if not inplace:
        return table
    summary = {
        "accuracy_at_1": float(np.mean(rank == 1)),
        "mrr": float(np.mean(1.0 / rank)),
        "n_rank_le_4": int((rank <= 4).sum()),
        "n_conditions": int(n),
        "mean_specificity": float(np.mean(specificity)),
        "median_rank": float(np.median(rank)),
        "mean_energy": float(np.nanmean(energy)) if distributions else float("nan"),
        "mean_mmd": float(np.nanmean(mmd)) if distributions else float("nan"),
    }
    store(
        mdata,
        key_added,
        {
            "table": table,
            "summary": summary,
            "similarity": sim,
            "conditions": [str(c) for c in conditions],
            "bandwidth": bandwidth,
            "params": {
                "real": real,
                "synthetic": synthetic,
                "rep": rep,
                "synthetic_rep": synthetic_rep,
                "treatment_key": treatment_key,
                "splits": None if splits is None else [str(x) for x in splits],
                "split_key": split_key,
                "distributions": bool(distributions),
                "max_cells": max_cells,
                "seed": int(seed),
                "bandwidth_rule": "median pairwise euclidean distance of the pooled cells",
            },
        },
        tool="fidelity",
    )
    return None
