"""Plots of the evaluation suite: fidelity, embedding overlays, classification bars, training curves."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .. import _constants as C
from .._docs import SHOW_SAVE_DOC, doc_params
from .._errors import ContractError, MorphomuError
from .._threads import keep_torch_threads
from .._validation import check_mudata, check_obs_keys, check_rep, get_mod

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from mudata import MuData

__all__ = ["classification", "embedding_overlay", "fidelity", "training_history"]


def _finish(fig: Figure, *, show: bool, save: str | Path | None) -> None:
    if save is not None:
        fig.savefig(save, dpi=150, bbox_inches="tight")
    if show:
        import matplotlib.pyplot as plt

        plt.show()


def _entry(mdata: MuData, key: str, tool: str) -> Mapping[str, Any]:
    check_mudata(mdata)
    try:
        return mdata.uns[C.UNS_KEY][key]
    except KeyError:
        msg = f"mdata.uns['morphomu'][{key!r}] is missing; run mm.tl.{tool}(mdata, key_added={key!r}) first."
        raise ContractError(msg) from None


@doc_params(show_save=SHOW_SAVE_DOC)
def fidelity(
    mdata: MuData,
    *,
    key: str = "fidelity",
    sort_by: str = "rank",
    ax: Sequence[Axes] | None = None,
    show: bool = False,
    save: str | Path | None = None,
) -> Sequence[Axes]:
    """Retrieval rank and specificity per condition, from :func:`morphomu.tl.fidelity` (the paper's Table 3).

    Parameters
    ----------
    mdata
        Data :func:`~morphomu.tl.fidelity` wrote into.
    key
        Its ``key_added``.
    sort_by
        A column of the fidelity table to order the conditions by (ties broken by specificity).
    ax
        Two Axes to draw into (rank, specificity); a new figure otherwise.
    {show_save}

    Returns
    -------
    The two Axes.

    Examples
    --------
    >>> import morphomu as mm
    >>> mm.tl.fidelity(mdata)  # doctest: +SKIP
    >>> mm.pl.fidelity(mdata, save="fidelity.png")  # doctest: +SKIP
    """
    import matplotlib.pyplot as plt

    table = _entry(mdata, key, "fidelity")["table"]
    if sort_by not in table.columns:
        msg = (
            f"sort_by={sort_by!r} is not a column of the fidelity table; choose one of {list(table.columns)}."
        )
        raise MorphomuError(msg)
    table = table.sort_values([sort_by, "specificity"], ascending=[sort_by == "rank", False])
    if ax is None:
        fig, axes = plt.subplots(1, 2, figsize=(9, 0.28 * len(table) + 1.5), sharey=True)
    else:
        axes = list(ax)
        if len(axes) != 2:
            msg = f"ax must be two Axes (rank, specificity), got {len(axes)}."
            raise MorphomuError(msg)
        fig = axes[0].figure
    y = np.arange(len(table))
    rank = table["rank"].to_numpy()
    colours = np.where(rank == 1, "tab:green", np.where(rank <= 4, "tab:olive", "tab:red"))
    axes[0].barh(y, rank, color=colours)
    axes[0].set_yticks(y, table.index.astype(str))
    axes[0].invert_yaxis()
    axes[0].axvline(1, color="k", lw=0.8)
    axes[0].set_xlabel("retrieval rank (1 = nearest)")
    spec = table["specificity"].to_numpy()
    axes[1].barh(y, spec, color=np.where(spec > 0, "tab:blue", "tab:gray"))
    axes[1].axvline(0, color="k", lw=0.8)
    axes[1].set_xlabel("specificity")
    summary = _entry(mdata, key, "fidelity").get("summary", {})
    if "mrr" in summary:
        axes[0].set_title(
            f"Acc@1 = {float(summary['accuracy_at_1']):.2f}, MRR = {float(summary['mrr']):.2f}, "
            f"rank ≤ 4: {int(summary['n_rank_le_4'])}/{len(table)}"
        )
    fig.tight_layout()
    _finish(fig, show=show, save=save)
    return axes


@doc_params(show_save=SHOW_SAVE_DOC)
def embedding_overlay(
    mdata: MuData,
    *,
    real: str = C.RNA_MOD,
    synthetic: str = C.RNA_SYNTHETIC_MOD,
    rep: str | None = C.RNA_REP,
    groupby: str = C.TREATMENT_KEY,
    conditions: Sequence[str] | None = None,
    n_top: int = 8,
    key: str = "fidelity",
    splits: Sequence[str] | None = C.HELD_OUT_SPLITS,
    split_key: str = C.SPLIT_KEY,
    max_cells: int = 300,
    n_neighbors: int = 15,
    seed: int = 0,
    ax: Axes | None = None,
    show: bool = False,
    save: str | Path | None = None,
) -> Axes:
    """UMAP of real (●) and synthetic (▲) cells of a few conditions, centroids marked (the paper's Figure 2).

    The UMAP (scanpy: neighbours on ``rep``, then UMAP) is computed on a private AnnData of the drawn
    cells; ``mdata`` is not modified. Centroids are the mean UMAP position of each condition's real and
    synthetic cells (large edged markers).

    Parameters
    ----------
    mdata
        The experiment.
    real, synthetic
        Modalities of the real and synthetic cells.
    rep
        Representation compared (``.obsm`` key, or ``None`` for ``.X``), the same in both.
    groupby
        obs column with the condition.
    conditions
        Conditions to show; default the ``n_top`` best ranked in ``uns['morphomu'][key]`` (by rank, then
        specificity), or the ``n_top`` most frequent real conditions when no fidelity result exists.
    n_top
        Number of conditions when ``conditions`` is not given.
    key
        The fidelity result to rank conditions by.
    splits
        Split labels of the cells drawn (``None``: all cells).
    split_key
        obs column with the split labels.
    max_cells
        Cells drawn per condition and side (deterministic, ``seed``).
    n_neighbors
        Neighbours of the UMAP graph.
    seed
        Seed of the cell draws and of UMAP.
    ax
        Axes to draw into.
    {show_save}

    Returns
    -------
    The Axes.
    """
    import anndata as ad
    import matplotlib.pyplot as plt
    import scanpy as sc
    import seaborn as sns
    from scipy.sparse import SparseEfficiencyWarning

    sides = {"real": real, "synthetic": synthetic}
    labels = {}
    for side, mod in sides.items():
        adata = get_mod(mdata, mod, arg=side)
        check_rep(adata, rep, mod=mod, arg="rep")
        check_obs_keys(
            adata, {"groupby": groupby, **({"split_key": split_key} if splits is not None else {})}, mod=mod
        )
        labels[side] = adata.obs[groupby].astype(str).to_numpy()
    if conditions is None:
        entry = mdata.uns.get(C.UNS_KEY, {}).get(key)
        if entry is not None and "table" in entry:
            table = entry["table"].sort_values(["rank", "specificity"], ascending=[True, False])
            conditions = [str(c) for c in table.index[:n_top]]
        else:
            conditions = pd.Series(labels["real"]).value_counts().index[:n_top].tolist()
    conditions = [str(c) for c in conditions]
    rng = np.random.default_rng(seed)
    blocks, obs = [], []
    for side, mod in sides.items():
        adata = mdata.mod[mod]
        mask = np.isin(labels[side], conditions)
        if splits is not None:
            mask &= adata.obs[split_key].astype(str).isin(list(splits)).to_numpy()
        missing = sorted(set(conditions) - set(labels[side][mask]))
        if missing:
            msg = f"mdata.mod[{mod!r}] has no cells of {missing[:5]} (obs[{groupby!r}]) in the chosen splits."
            raise ContractError(msg)
        for cond in conditions:
            rows = np.flatnonzero(mask & (labels[side] == cond))
            if rows.size > max_cells:
                rows = np.sort(rng.choice(rows, max_cells, replace=False))
            matrix = adata.X if rep is None else adata.obsm[rep]
            block = matrix[rows]
            blocks.append(
                np.asarray(block.toarray() if hasattr(block, "toarray") else block, dtype=np.float32)
            )
            obs.append(pd.DataFrame({"condition": cond, "source": side}, index=[f"{side}_{i}" for i in rows]))
    cells = ad.AnnData(obs=pd.concat(obs))
    cells.obsm["X_rep"] = np.concatenate(blocks)
    with (
        keep_torch_threads(),
        warnings.catch_warnings(),
    ):  # scanpy's own kNN-graph warnings: nothing to act on
        warnings.simplefilter("ignore", SparseEfficiencyWarning)
        sc.pp.neighbors(
            cells, use_rep="X_rep", n_neighbors=min(n_neighbors, cells.n_obs - 1), random_state=seed
        )
        sc.tl.umap(cells, random_state=seed)
    frame = pd.DataFrame(cells.obsm["X_umap"], columns=["UMAP1", "UMAP2"], index=cells.obs_names)
    frame["condition"] = pd.Categorical(cells.obs["condition"], categories=conditions)
    frame["source"] = cells.obs["source"].to_numpy()
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 6))
    palette = dict(
        zip(
            conditions,
            sns.color_palette("tab10" if len(conditions) <= 10 else "tab20", len(conditions)),
            strict=True,
        )
    )
    markers = {"real": "o", "synthetic": "^"}
    for side, marker in markers.items():
        part = frame[frame["source"] == side]
        ax.scatter(
            part["UMAP1"],
            part["UMAP2"],
            c=[palette[c] for c in part["condition"]],
            marker=marker,
            s=8,
            alpha=0.35,
            linewidths=0,
        )
    centroids = frame.groupby(["condition", "source"], observed=True)[["UMAP1", "UMAP2"]].mean()
    for (cond, side), (x, y) in centroids.iterrows():
        ax.scatter(
            [x],
            [y],
            color=palette[cond],
            marker=markers[side],
            s=160,
            edgecolors="black",
            linewidths=1.2,
            zorder=3,
        )
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], ls="", marker="s", color=palette[c], label=c) for c in conditions]
    handles += [Line2D([], [], ls="", marker=m, color="gray", label=s) for s, m in markers.items()]
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, fontsize="small")
    ax.set_xlabel("UMAP1")
    ax.set_ylabel("UMAP2")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{rep or 'X'}: real (●) vs synthetic (▲)")
    ax.figure.tight_layout()
    _finish(ax.figure, show=show, save=save)
    return ax


def _classification_frame(data: Any, keys: str | Sequence[str] | None) -> tuple[pd.DataFrame, float | None]:
    """Tidy results with a ``method`` column, and the chance level when known."""
    from mudata import MuData

    if isinstance(data, pd.DataFrame):
        frame = data.copy()
        if "method" not in frame.columns:
            frame["method"] = "results"
        return frame, None
    if isinstance(data, Mapping):  # {label: results}
        frames = [pd.DataFrame(v).assign(method=str(k)) for k, v in data.items()]
        if not frames:
            msg = "no results to plot."
            raise MorphomuError(msg)
        return pd.concat(frames, ignore_index=True), None
    if not isinstance(data, MuData):
        msg = f"data must be a MuData, a results DataFrame or a dict of them, got {type(data).__name__}."
        raise MorphomuError(msg)
    keys = ["classify"] if keys is None else [keys] if isinstance(keys, str) else list(keys)
    frames, chance = [], None
    for key in keys:
        entry = _entry(data, key, "classify")
        params = entry.get("params", {})
        label = key
        if len(keys) == 1 and "inputs" in params:
            label = f"{' + '.join(map(str, params['inputs']))} ({params.get('setting', '')})"
        frames.append(pd.DataFrame(entry["results"]).assign(method=label))
        chance = float(entry["chance"]) if "chance" in entry else chance
    return pd.concat(frames, ignore_index=True), chance


@doc_params(show_save=SHOW_SAVE_DOC)
def classification(
    data: Any,
    *,
    keys: str | Sequence[str] | None = None,
    metric: str = "balanced_accuracy",
    chance: float | None = None,
    ax: Axes | None = None,
    show: bool = False,
    save: str | Path | None = None,
) -> Axes:
    """Grouped bars of a classification metric per test set and method, mean ± std over runs, with chance.

    The picture of the PhenoSeq paper's Tables 1 and 2.

    Parameters
    ----------
    data
        A MuData that :func:`morphomu.tl.classify` wrote into (``keys`` name the results, one bar group
        per key), a results DataFrame (with an optional ``method`` column) or a dict ``{label: results}``.
    keys
        Entries of ``uns['morphomu']`` to show (default ``'classify'``).
    metric
        ``'balanced_accuracy'``, ``'macro_f1'`` or ``'weighted_f1'``.
    chance
        Chance level drawn as a dashed line; default the stored one (1 / number of classes).
    ax
        Axes to draw into.
    {show_save}

    Returns
    -------
    The Axes.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    frame, stored_chance = _classification_frame(data, keys)
    if metric not in frame.columns or "test_set" not in frame.columns:
        msg = (
            f"metric={metric!r} (and 'test_set') must be columns of the results; found {list(frame.columns)}."
        )
        raise MorphomuError(msg)
    chance = stored_chance if chance is None else chance
    n_methods = frame["method"].nunique()
    own_figure = ax is None
    if own_figure:
        # the bars set the width; the legend goes below the axes, so long method names never squeeze them
        n_bars = n_methods * frame["test_set"].nunique()
        _, ax = plt.subplots(
            figsize=(max(5.0, 1.5 + 0.5 * n_bars), 4.0 + 0.25 * n_methods), layout="constrained"
        )
    sns.barplot(data=frame, x="test_set", y=metric, hue="method", errorbar="sd", capsize=0.1, ax=ax)
    if chance is not None:
        ax.axhline(chance, color="k", ls="--", lw=1, label=f"chance ({chance:.3f})")
    ax.set_xlabel("")
    ax.set_ylabel(metric.replace("_", " "))
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), frameon=False, fontsize="small")
    _finish(ax.figure, show=show, save=save)
    return ax


@doc_params(show_save=SHOW_SAVE_DOC)
def training_history(
    model: Any,
    *,
    keys: Sequence[str] | None = None,
    ax: Axes | None = None,
    show: bool = False,
    save: str | Path | None = None,
) -> Axes:
    """Training curves of any morphomu model: losses on the left axis, other metrics on the right.

    Parameters
    ----------
    model
        A trained model (its ``history``: scvi-tools' dict of one-column DataFrames indexed by epoch) or
        such a dict itself.
    keys
        History entries to draw; default all.
    ax
        Axes to draw into.
    {show_save}

    Returns
    -------
    The Axes of the losses (metrics share its x axis on a twin).
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    history = model if isinstance(model, Mapping) else getattr(model, "history", None)
    if not isinstance(history, Mapping) or not history:
        msg = "model has no training history (train it first), or pass its history dict."
        raise MorphomuError(msg)
    keys = list(history) if keys is None else list(keys)
    unknown = [k for k in keys if k not in history]
    if unknown:
        msg = f"keys {unknown} are not in the history; it has {sorted(history)}."
        raise MorphomuError(msg)
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    twin = None
    lines = []
    for i, key in enumerate(keys):
        series = pd.DataFrame(history[key]).iloc[:, 0].dropna()
        target = ax
        if "loss" not in key:
            twin = twin or ax.twinx()
            target = twin
        (line,) = target.plot(
            series.index.to_numpy(dtype=float),
            series.to_numpy(dtype=float),
            color=f"C{i}",
            label=key,
            marker="." if len(series) < 30 else None,
        )
        lines.append(line)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    if twin is not None:
        twin.set_ylabel("metric")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
    ax.legend(handles=lines, frameon=False, fontsize="small")
    ax.figure.tight_layout()
    _finish(ax.figure, show=show, save=save)
    return ax
