"""Plots of the evaluation suite: fidelity, embedding overlays, classification bars, training curves."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .. import _constants as C
from .._core import renamed_arguments
from .._docs import SHOW_SAVE_DOC, doc_params
from .._errors import ContractError, MorphomuError
from .._threads import keep_torch_threads
from .._uns import AUTO, known_keys, plain
from .._validation import (
    TEST_SPLITS,
    check_mudata,
    check_obs_keys,
    check_rep,
    get_mod,
    rep_shape,
    splits_of,
    where,
)

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


#: Colour key of the rank bars: (label, colour, upper bound of the rank, inclusive).
RANK_COLOURS = (("rank 1", "tab:green", 1), ("rank 2-4", "tab:olive", 4), ("rank > 4", "tab:red", np.inf))
#: Colour key of the specificity bars.
SPECIFICITY_COLOURS = (("specificity > 0", "tab:blue"), ("specificity <= 0", "tab:gray"))


def _rank_colours(rank: np.ndarray) -> list[str]:
    return [next(colour for _, colour, top in RANK_COLOURS if r <= top) for r in rank]


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

    Left, the retrieval rank of each condition's real centroid among all real centroids seen from its
    synthetic centroid, coloured green (rank 1), olive (2-4) or red (> 4); right, its specificity,
    blue when positive (closer to its own real centroid than to the others on average), grey otherwise.
    A colour key explains both.

    Parameters
    ----------
    mdata
        Data :func:`~morphomu.tl.fidelity` wrote into.
    key
        Its ``key_added``.
    sort_by
        A column of the fidelity table to order the conditions by (ties broken by specificity).
    ax
        Two Axes to draw into (rank, specificity); a new figure otherwise. The colour key is a figure
        legend below the panels in a new figure, a legend in each panel otherwise.
    {show_save}

    Returns
    -------
    The two Axes.

    Examples
    --------
    ``mdata`` holds real and synthetic RNA embeddings (e.g. from :func:`morphomu.tl.generate_rna`):

    >>> import morphomu as mm
    >>> mm.tl.fidelity(mdata)
    >>> axes = mm.pl.fidelity(mdata)
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    entry = _entry(mdata, key, "fidelity")
    table = entry["table"]
    if sort_by not in table.columns:
        msg = (
            f"sort_by={sort_by!r} is not a column of the fidelity table; choose one of {list(table.columns)}."
        )
        raise MorphomuError(msg)
    if ax is not None and len(list(ax)) != 2:
        msg = f"ax must be two Axes (rank, specificity), got {len(list(ax))}."
        raise MorphomuError(msg)
    table = table.sort_values([sort_by, "specificity"], ascending=[sort_by == "rank", False])
    own_figure = ax is None
    if own_figure:
        fig, axes = plt.subplots(
            1, 2, figsize=(9, 0.28 * len(table) + 2.0), sharey=True, layout="constrained"
        )
    else:
        axes = list(ax)
        fig = axes[0].figure
    y = np.arange(len(table))
    rank = table["rank"].to_numpy()
    axes[0].barh(y, rank, color=_rank_colours(rank))
    axes[0].set_yticks(y, table.index.astype(str))
    axes[0].invert_yaxis()
    axes[0].axvline(1, color="k", lw=0.8)
    axes[0].set_xlabel("retrieval rank (1 = nearest)")
    spec = table["specificity"].to_numpy()
    axes[1].barh(y, spec, color=[SPECIFICITY_COLOURS[0 if v > 0 else 1][1] for v in spec])
    axes[1].axvline(0, color="k", lw=0.8)
    axes[1].set_xlabel("specificity")
    summary = entry.get("summary", {})
    if "mrr" in summary:
        axes[0].set_title(
            f"Acc@1 = {float(summary['accuracy_at_1']):.2f}, MRR = {float(summary['mrr']):.2f}, "
            f"rank ≤ 4: {int(summary['n_rank_le_4'])}/{len(table)}"
        )
    rank_key = [Patch(color=colour, label=label) for label, colour, _ in RANK_COLOURS]
    spec_key = [Patch(color=colour, label=label) for label, colour in SPECIFICITY_COLOURS]
    if own_figure:
        fig.legend(
            handles=rank_key + spec_key,
            loc="outside lower center",
            ncol=len(rank_key) + len(spec_key),
            frameon=False,
            fontsize="small",
        )
    else:  # the caller owns the layout: keep the key inside each panel
        axes[0].legend(handles=rank_key, loc="best", fontsize="small")
        axes[1].legend(handles=spec_key, loc="best", fontsize="small")
    _finish(fig, show=show, save=save)
    return axes


def _overlay_keys(mdata: MuData, key: str, given: dict[str, Any]) -> dict[str, Any]:
    """Keys of :func:`embedding_overlay`: the caller's, else the fidelity record's, else the producers'."""
    entry = mdata.uns.get(C.UNS_KEY, {}).get(key)
    params: dict[str, Any] = {}
    if isinstance(entry, Mapping) and isinstance(entry.get("params"), Mapping):
        params = {str(k): plain(v) for k, v in entry["params"].items()}
        if "treatment_key" not in params and "groupby" in params:  # records written before the rename
            params["treatment_key"] = params["groupby"]
    synthetic = given["synthetic"] or params.get("synthetic") or C.RNA_SYNTHETIC_MOD
    produced = known_keys(mdata, synthetic)
    real = given["real"] or params.get("real") or produced.get("real") or C.RNA_MOD
    # the record describes these cells only if it compared these two modalities
    record = params if (params.get("real"), params.get("synthetic")) == (real, synthetic) else {}
    known = {**known_keys(mdata, real), **produced}
    rep = given["rep"]
    if rep == AUTO:
        rep = record["rep"] if "rep" in record else known.get("rep", C.RNA_REP)
    synthetic_rep = given["synthetic_rep"]
    if synthetic_rep == AUTO:
        synthetic_rep = record.get("synthetic_rep", rep)
    splits = given["splits"]
    if isinstance(splits, str) and splits == AUTO:
        splits = record.get("splits", TEST_SPLITS)
    return {
        "real": real,
        "synthetic": synthetic,
        "rep": rep,
        "synthetic_rep": synthetic_rep,
        "treatment_key": given["treatment_key"]
        or record.get("treatment_key")
        or known.get("treatment_key", C.TREATMENT_KEY),
        "split_key": given["split_key"] or record.get("split_key") or known.get("split_key", C.SPLIT_KEY),
        "splits": splits,
    }


@renamed_arguments(groupby="treatment_key")
@doc_params(show_save=SHOW_SAVE_DOC)
def embedding_overlay(
    mdata: MuData,
    *,
    key: str = "fidelity",
    real: str | None = None,
    synthetic: str | None = None,
    rep: str | None = AUTO,
    synthetic_rep: str | None = AUTO,
    treatment_key: str | None = None,
    conditions: Sequence[str] | None = None,
    n_top: int = 8,
    splits: Sequence[str] | str | None = AUTO,
    split_key: str | None = None,
    max_cells: int = 300,
    n_neighbors: int = 15,
    seed: int = 0,
    ax: Axes | None = None,
    show: bool = False,
    save: str | Path | None = None,
) -> Axes:
    """UMAP of real (●) and synthetic (▲) cells of a few conditions, centroids marked (the paper's Figure 2).

    The UMAP (scanpy: neighbours on the representation, then UMAP) is computed on a private AnnData of
    the drawn cells; ``mdata`` is not modified. Centroids are the mean UMAP position of each condition's
    real and synthetic cells (large edged markers). By default it shows what :func:`morphomu.tl.fidelity`
    (its record ``uns['morphomu'][key]``) compared: the same modalities, representations, condition
    column and splits.

    Parameters
    ----------
    mdata
        The experiment.
    key
        The fidelity result (``key_added`` of :func:`~morphomu.tl.fidelity`) whose parameters and ranking
        are used.
    real
        Modality of the real cells; default: from the record ``key``, else the real modality recorded by
        the step that wrote ``synthetic``, else ``'rna'``.
    synthetic
        Modality of the synthetic cells; default: from the record ``key``, else ``'rna_synthetic'``.
    rep
        Representation of the real cells (``.obsm`` key, or ``None`` for ``.X``); default (``'auto'``):
        from the record ``key``, else from the record of the step that wrote ``synthetic``, else
        ``'X_scgpt'``.
    synthetic_rep
        Representation of the synthetic cells (the same number of features as ``rep``); default
        (``'auto'``): from the record ``key``, else ``rep``.
    treatment_key
        obs column with the condition (formerly ``groupby``); default: from the record ``key``, else from
        the record of the step that wrote ``synthetic``, else ``'treatment'``.
    conditions
        Conditions to show; default the ``n_top`` best ranked in ``uns['morphomu'][key]`` (by rank, then
        specificity), or the ``n_top`` most frequent real conditions when no fidelity result exists.
    n_top
        Number of conditions when ``conditions`` is not given.
    splits
        Split labels of the cells drawn: a sequence, ``'test'`` (every label of ``split_key`` other than
        ``'train'`` and ``'val'``) or ``None`` (every cell); default (``'auto'``): from the record ``key``,
        else ``'test'``.
    split_key
        obs column with the split labels; default: from the record ``key``, else from the record of the
        step that wrote ``synthetic``, else ``'split'``.
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

    Examples
    --------
    ``mdata`` holds real and synthetic RNA embeddings (e.g. from :func:`morphomu.tl.generate_rna`):

    >>> import morphomu as mm
    >>> mm.tl.fidelity(mdata)
    >>> ax = mm.pl.embedding_overlay(mdata, n_top=4, max_cells=50)
    """
    import anndata as ad
    import matplotlib.pyplot as plt
    import scanpy as sc
    import seaborn as sns
    from scipy.sparse import SparseEfficiencyWarning

    check_mudata(mdata)
    keys = _overlay_keys(
        mdata,
        key,
        {
            "real": real,
            "synthetic": synthetic,
            "rep": rep,
            "synthetic_rep": synthetic_rep,
            "treatment_key": treatment_key,
            "split_key": split_key,
            "splits": splits,
        },
    )
    treatment_key, split_key = keys["treatment_key"], keys["split_key"]
    sides = {"real": keys["real"], "synthetic": keys["synthetic"]}
    reps = {"real": keys["rep"], "synthetic": keys["synthetic_rep"]}
    labels, n_features = {}, {}
    for side, mod in sides.items():
        adata = get_mod(mdata, mod, arg=side)
        arg = "rep" if side == "real" else "synthetic_rep"
        check_rep(adata, reps[side], mod=mod, arg=arg)
        n_features[side] = rep_shape(adata, reps[side], mod=mod, arg=arg)[1]
        check_obs_keys(adata, {"treatment_key": treatment_key}, mod=mod)
        if keys["splits"] is not None:
            check_obs_keys(adata, {"split_key": split_key}, mod=mod)
        labels[side] = adata.obs[treatment_key].astype(str).to_numpy()
    if n_features["real"] != n_features["synthetic"]:
        msg = (
            f"{where(sides['real'], reps['real'])} has {n_features['real']} features but "
            f"{where(sides['synthetic'], reps['synthetic'])} has {n_features['synthetic']}; the overlay "
            "embeds both in one space (pass rep / synthetic_rep of the same kind)."
        )
        raise ContractError(msg)
    splits = splits_of(mdata.mod[sides["real"]], keys["splits"], split_key, mod=sides["real"])
    if conditions is None:
        entry = mdata.uns.get(C.UNS_KEY, {}).get(key)
        if isinstance(entry, Mapping) and "table" in entry:
            table = entry["table"].sort_values(["rank", "specificity"], ascending=[True, False])
            conditions = [str(c) for c in table.index[:n_top]]
        else:
            conditions = pd.Series(labels["real"]).value_counts().index[:n_top].tolist()
    conditions = [str(c) for c in conditions]
    rng = np.random.default_rng(seed)
    masks = {}
    for side, mod in sides.items():
        adata = mdata.mod[mod]
        mask = np.isin(labels[side], conditions)
        if splits is not None:
            mask &= adata.obs[split_key].astype(str).isin(splits).to_numpy()
        missing = sorted(set(conditions) - set(labels[side][mask]))
        if missing:
            msg = (
                f"mdata.mod[{mod!r}] has no cells of {missing[:5]} (obs[{treatment_key!r}]) in "
                f"splits={splits} (obs[{split_key!r}])."
            )
            raise ContractError(msg)
        masks[side] = mask
    blocks, obs = [], []
    for side, mod in sides.items():
        adata = mdata.mod[mod]
        matrix = adata.X if reps[side] is None else adata.obsm[reps[side]]
        for cond in conditions:
            rows = np.flatnonzero(masks[side] & (labels[side] == cond))
            if rows.size > max_cells:
                rows = np.sort(rng.choice(rows, max_cells, replace=False))
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
        _, ax = plt.subplots(figsize=(7, 6), layout="constrained")
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
    ax.legend(
        handles=handles,
        loc="center left",
        bbox_to_anchor=(1.01, 0.5),
        frameon=False,
        fontsize="small",
        title=treatment_key,
    )
    ax.set_xlabel("UMAP1")
    ax.set_ylabel("UMAP2")
    ax.set_xticks([])
    ax.set_yticks([])
    rep_names = {reps["real"] or "X", reps["synthetic"] or "X"}
    ax.set_title(f"{' / '.join(sorted(rep_names))}: real (●) vs synthetic (▲)")
    _finish(ax.figure, show=show, save=save)
    return ax


def _inputs_label(params: Mapping[str, Any], key: str) -> str:
    """What a classify record classified from, e.g. ``'img/X_vit + rna_synthetic/X_scgpt'`` (else ``key``)."""
    inputs = plain(params.get("inputs"))
    if isinstance(inputs, str):
        inputs = [inputs]
    if not inputs:
        return key
    # inputs are recorded as 'mod:rep'; a slash reads as a path into the MuData
    label = " + ".join(str(i).replace(":", "/", 1) for i in inputs)
    if plain(params.get("setting")) == "multi":
        label += f" (multi-profile, k={plain(params.get('k'))})"
    return label


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
    entries = {key: _entry(data, key, "classify") for key in keys}
    labels = {key: _inputs_label(entry.get("params", {}), key) for key, entry in entries.items()}
    counts = pd.Series(list(labels.values())).value_counts()
    frames, chance = [], None
    for key, entry in entries.items():
        # two results of the same inputs (e.g. other seeds or hparams) keep apart by their key
        label = labels[key] if counts[labels[key]] == 1 or labels[key] == key else f"{labels[key]} [{key}]"
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

    The picture of the PhenoSeq paper's Tables 1 and 2. In a new figure the bars set the width and the
    legend sits below them, so long names or many methods never squeeze the bars.

    Parameters
    ----------
    data
        A MuData that :func:`morphomu.tl.classify` wrote into (``keys`` name the results, one bar per key
        and test set, labelled by the inputs it classified from, e.g. ``'img/X_vit + rna_synthetic/X_scgpt'``,
        or by its key when the record names no inputs), a results DataFrame (with an optional ``method``
        column) or a dict ``{label: results}``.
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

    Examples
    --------
    ``mdata`` holds the results of two :func:`morphomu.tl.classify` calls, with ``key_added``
    ``'classify_image'`` (``inputs=('img', 'X_vit')``) and ``'classify_both'``
    (``inputs=[('img', 'X_vit'), ('rna_synthetic', 'X_scgpt')]``):

    >>> import morphomu as mm
    >>> ax = mm.pl.classification(mdata, keys=["classify_image", "classify_both"])
    >>> ax = mm.pl.classification(mdata, keys="classify_both", metric="macro_f1")
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
    The Axes of the losses (metrics share its x axis on a twin); the epoch axis has whole-number ticks.

    Examples
    --------
    ``model`` is a trained model, e.g. the one :func:`morphomu.tl.generate_rna` returns:

    >>> import morphomu as mm
    >>> ax = mm.pl.training_history(model)
    >>> ax = mm.pl.training_history(model.history, keys=["train_loss"])
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
