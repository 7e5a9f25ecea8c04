"""Plots of generated morphology (TRIDENT Figures 4a-c and 5c): tile grids, LDA / UMAP, readout distributions."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from .. import _constants as C
from .._core import channel_names, renamed_arguments
from .._docs import SHOW_SAVE_DOC, doc_params
from .._errors import ContractError
from .._threads import keep_torch_threads
from .._uns import AUTO, known_keys, plain, records
from .._validation import check_obs_keys, check_rep, get_mod, get_rep
from ._evaluation import _finish

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from mudata import MuData

__all__ = ["STAIN_COLOURS", "composite", "images", "morphology_embedding", "readouts"]

#: False colours of the Cell Painting stains in composites (RGB), as in common Cell Painting figures.
STAIN_COLOURS = {
    "DNA": (0.15, 0.35, 1.0),
    "RNA": (0.0, 0.9, 0.9),
    "AGP": (1.0, 0.2, 0.2),
    "Mito": (1.0, 0.2, 1.0),
    "ER": (0.2, 1.0, 0.2),
}
#: Source colours of TRIDENT's Figure 4b: control blue, real orange, generated green.
SOURCE_COLOURS = {"control": "tab:blue", "real": "tab:orange", "generated": "tab:green"}


def _sides(data: Any, generated: Any, mod: str) -> tuple[AnnData, AnnData | None]:
    from anndata import AnnData
    from mudata import MuData

    if isinstance(data, MuData):
        real_ad = get_mod(data, mod, arg="mod")
        if isinstance(generated, str):
            if generated not in data.mod:
                msg = (
                    f"generated={generated!r} is not a modality of the MuData (it has {sorted(data.mod)}); "
                    "run mm.tl.generate_morphology first, name the generated modality, or pass "
                    "generated=None for real tiles only."
                )
                raise ContractError(msg)
            generated = data.mod[generated]
    elif isinstance(data, AnnData):
        real_ad = data
        if isinstance(generated, str):
            msg = f"generated={generated!r} names a modality, which needs mdata to be a MuData."
            raise ContractError(msg)
    else:
        msg = f"mdata must be a MuData or an AnnData, got {type(data).__name__}."
        raise ContractError(msg)
    if generated is not None and not isinstance(generated, AnnData):
        msg = f"generated must be a modality name, an AnnData or None, got {type(generated).__name__}."
        raise ContractError(msg)
    return real_ad, generated


def _data_keys(data: Any, generated: Any, given: dict[str, Any]) -> dict[str, Any]:
    """``mod``, ``treatment_key``, ``images_key``, ``control`` and the recorded reps: keys follow the data.

    Each is the caller's value, else what the record of :func:`~morphomu.tl.generate_morphology` that wrote
    ``generated`` says (its real modality, obs column, tile key and control), else what records of steps
    that used the real modality say, else the contract default. A plain AnnData carries no records of
    another modality, so it gets the contract defaults.
    """
    from mudata import MuData

    produced: dict[str, Any] = {}
    control = None
    mod = given.get("mod")
    known_real: dict[str, Any] = {}
    if isinstance(data, MuData):
        if isinstance(generated, str):
            produced = known_keys(data, generated)
            for key, entry in records(data, tool="generate_morphology"):
                if key == generated:
                    control = plain(entry["params"].get("control"))
        mod = mod or produced.get("real") or C.IMAGE_MOD
        known_real = known_keys(data, mod)
    known = {**known_real, **produced}
    return {
        "mod": mod or C.IMAGE_MOD,
        "treatment_key": given.get("treatment_key") or known.get("treatment_key", C.TREATMENT_KEY),
        "images_key": given.get("images_key") or known.get("images_key", C.IMAGES_KEY),
        "control": given.get("control") or control or C.CONTROL,
        "generated_rep": produced.get("rep"),
        "real_rep": known_real.get("rep"),
    }


def _has_tiles(adata: AnnData, images_key: str) -> bool:
    return images_key in adata.obsm and np.ndim(adata.obsm[images_key]) == 4


def _palette(names: Sequence[str]) -> np.ndarray:
    import matplotlib as mpl

    cmap = mpl.colormaps["hsv"]
    out = []
    for i, name in enumerate(names):
        out.append(STAIN_COLOURS.get(name, cmap(i / max(len(names), 1))[:3]))
    return np.asarray(out, dtype=np.float32)


def composite(tiles: np.ndarray, channel_names: Sequence[str], *, percentile: float = 99.5) -> np.ndarray:
    """False-colour RGB composites of multi-channel tiles, every channel included.

    Each channel is scaled to [0, 1] by its ``percentile`` over all the given tiles (one scale per
    channel for the whole figure, so real and generated tiles are comparable), coloured
    (:data:`STAIN_COLOURS` for the Cell Painting stains, evenly spaced hues otherwise) and the coloured
    channels are added and clipped to [0, 1].

    Parameters
    ----------
    tiles
        ``(n, C, H, W)``.
    channel_names
        The C channel names.
    percentile
        Percentile mapped to full brightness.

    Returns
    -------
    ``(n, H, W, 3)`` float32 RGB images.
    """
    x = np.asarray(tiles, dtype=np.float32)
    top = np.percentile(x, percentile, axis=(0, 2, 3)).astype(np.float32)
    low = x.min(axis=(0, 2, 3))
    span = np.where(top > low, top - low, 1.0)
    scaled = np.clip((x - low[None, :, None, None]) / span[None, :, None, None], 0.0, 1.0)
    rgb = np.einsum("nchw,ck->nhwk", scaled, _palette(channel_names))
    return np.clip(rgb, 0.0, 1.0)


def _channel_names(adata: AnnData, images_key: str, n: int, given: Sequence[str] | None) -> list[str]:
    if given is not None:
        if len(given) != n:
            msg = f"channel_names has {len(given)} names for {n} channels."
            raise ContractError(msg)
        return [str(c) for c in given]
    names = channel_names(adata, images_key, n)
    if names == [f"channel{i}" for i in range(n)] and n == C.N_STAINS:
        return list(C.STAINS)
    return names


def _pick(labels: np.ndarray, group: str, n: int, rng: np.random.Generator) -> np.ndarray:
    rows = np.flatnonzero(labels == group)
    return np.sort(rng.choice(rows, min(n, rows.size), replace=False)) if rows.size else rows


@renamed_arguments(groupby="treatment_key", real="mdata")
@doc_params(show_save=SHOW_SAVE_DOC)
def images(
    mdata: MuData | AnnData,
    generated: str | AnnData | None = C.IMAGE_SYNTHETIC_MOD,
    *,
    mod: str | None = None,
    treatment_key: str | None = None,
    groups: Sequence[str] | None = None,
    n_per_group: int = 4,
    images_key: str | None = None,
    channel_names: Sequence[str] | None = None,
    mode: Literal["composite", "channels"] = "composite",
    seed: int = 0,
    show: bool = False,
    save: str | Path | None = None,
) -> Figure:
    """Grid of real vs generated tiles per group (e.g. treatment), TRIDENT's Figure 5c.

    One row per group and source (real, then generated); ``n_per_group`` tiles drawn at random
    (``seed``). With ``mode='composite'`` a tile is one false-colour image of **all** its channels
    (:func:`composite`: each channel scaled by its 99.5th percentile over the shown tiles, coloured DNA
    blue, RNA cyan, AGP red, Mito magenta, ER green, and added), and a colour key below the grid says
    which stain is which colour; with ``mode='channels'`` every channel is shown separately in grey (one
    column per tile and channel, titled by channel). Channels are never dropped.

    Parameters
    ----------
    mdata
        MuData with the real tiles (modality ``mod``) and usually the generated ones, or an AnnData with
        real tiles in ``.obsm[images_key]`` (formerly ``real``).
    generated
        Generated tiles: a modality of ``mdata`` written by :func:`morphomu.tl.generate_morphology`, an
        AnnData, or ``None`` for real tiles only.
    mod
        Modality of the real tiles in a MuData; default: from the record of the step that wrote
        ``generated``, else ``'img'``.
    treatment_key
        obs column with the groups (formerly ``groupby``); default: from the record of the step that wrote
        ``generated``, else ``'treatment'``.
    groups
        Groups to show (rows); default every group of the generated set (or of the real set), at most 8.
    n_per_group
        Tiles per group and source.
    images_key
        ``.obsm`` key of the tiles (n x C x H x W); default: from the record of the step that wrote
        ``generated``, else ``'images'``.
    channel_names
        Channel names (default the stored names, or the Cell Painting stains for five channels).
    mode
        ``'composite'`` or ``'channels'``.
    seed
        Seed of the tile draws.
    {show_save}

    Returns
    -------
    The Figure.

    Examples
    --------
    ``mdata`` holds real tiles and tiles :func:`morphomu.tl.generate_morphology` wrote for a few
    compounds. The control is generated only when listed in its ``compounds``, so compare treated
    compounds, and show the control among real tiles alone:

    >>> import morphomu as mm
    >>> fig = mm.pl.images(mdata, groups=["Colchicine", "Cycloheximide"])
    >>> fig = mm.pl.images(mdata, None, groups=["DMSO", "Colchicine"], mode="channels")
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    keys = _data_keys(
        mdata, generated, {"mod": mod, "treatment_key": treatment_key, "images_key": images_key}
    )
    treatment_key, images_key = keys["treatment_key"], keys["images_key"]
    real_ad, gen_ad = _sides(mdata, generated, keys["mod"])
    sides = [("real", real_ad)] + ([("generated", gen_ad)] if gen_ad is not None else [])
    if mode not in ("composite", "channels"):
        msg = f"mode must be 'composite' or 'channels', got {mode!r}."
        raise ContractError(msg)
    if not isinstance(n_per_group, int | np.integer) or n_per_group < 1:
        msg = f"n_per_group must be a positive integer, got {n_per_group!r}."
        raise ContractError(msg)
    shapes = []
    for side, adata in sides:
        if not _has_tiles(adata, images_key):
            msg = f"{side} data has no tiles (n x C x H x W) in .obsm[{images_key!r}] (images_key)."
            raise ContractError(msg)
        check_obs_keys(adata, {"treatment_key": treatment_key}, mod=None)
        shapes.append(tuple(adata.obsm[images_key].shape[1:]))
    if len(set(shapes)) != 1:
        msg = f"real and generated tiles differ in shape: {shapes}."
        raise ContractError(msg)
    n_channels = shapes[0][0]
    names = _channel_names(real_ad, images_key, n_channels, channel_names)
    labels = {side: adata.obs[treatment_key].astype(str).to_numpy() for side, adata in sides}
    if groups is None:
        groups = list(pd.unique(labels[sides[-1][0]]))[:8]
    groups = [str(g) for g in groups]
    for side, _ in sides:
        missing = sorted(set(groups) - set(labels[side]))
        if missing:
            msg = f"{side} data has no tiles of groups {missing[:5]} (obs[{treatment_key!r}])."
            if side == "generated" and keys["control"] in missing:
                msg += (
                    f" The control ({keys['control']!r}) is generated only when listed in "
                    "mm.tl.generate_morphology(compounds=[...]); pass generated=None to show real tiles "
                    "alone."
                )
            raise ContractError(msg)
    rng = np.random.default_rng(seed)
    picked = [
        (group, side, np.asarray(adata.obsm[images_key][_pick(labels[side], group, n_per_group, rng)]))
        for group in groups
        for side, adata in sides
    ]
    pooled = np.concatenate([t for _, _, t in picked])
    if mode == "composite":
        rgb = composite(pooled, names)
    else:
        lo = pooled.min(axis=(0, 2, 3), keepdims=True).astype(np.float32)
        hi = np.percentile(pooled, 99.5, axis=(0, 2, 3), keepdims=True).astype(np.float32)
        grey = np.clip((pooled - lo) / np.where(hi > lo, hi - lo, 1.0), 0, 1)
    per_tile = 1 if mode == "composite" else n_channels
    n_cols = n_per_group * per_tile
    fig, axes = plt.subplots(
        len(picked),
        n_cols,
        figsize=(1.1 * n_cols + 1.4, 1.1 * len(picked) + (0.9 if mode == "composite" else 0.5)),
        squeeze=False,
        layout="constrained",
    )
    start = 0
    for r, (group, side, tiles) in enumerate(picked):
        for j in range(n_per_group):
            for c in range(per_tile):
                ax = axes[r, j * per_tile + c]
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_visible(False)
                if j >= len(tiles):
                    continue
                if mode == "composite":
                    ax.imshow(rgb[start + j], interpolation="nearest")
                else:
                    ax.imshow(grey[start + j, c], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                    if r == 0:
                        ax.set_title(names[c], fontsize=7)
        axes[r, 0].set_ylabel(f"{group}\n{side}", fontsize=8, rotation=0, ha="right", va="center")
        start += len(tiles)
    if mode == "composite":
        fig.suptitle(f"false-colour composite of all channels ({', '.join(names)})", fontsize=9)
        # the colour key: which stain is which colour in the composites
        fig.legend(
            handles=[
                Patch(facecolor=tuple(colour), edgecolor="none", label=name)
                for name, colour in zip(names, _palette(names), strict=True)
            ],
            loc="outside lower center",
            ncol=min(len(names), 6),
            frameon=False,
            fontsize=8,
            title="stain colours",
            title_fontsize=8,
        )
    _finish(fig, show=show, save=save)
    return fig


def _features(adata: AnnData, rep: str | None) -> np.ndarray:
    check_rep(adata, rep, mod=None, arg="rep")
    return get_rep(adata, rep, mod=None, arg="rep", dtype=np.float64)


def _readout_kwargs(
    readout_kwargs: dict[str, Any] | None, images_key: str | None
) -> tuple[dict[str, Any], str | None]:
    """``readout_kwargs`` without ``images_key``, an argument of the plot (taking that value if not given)."""
    kwargs = dict(readout_kwargs or {})
    in_kwargs = kwargs.pop("images_key", None)
    return kwargs, images_key if images_key is not None else in_kwargs


@renamed_arguments(groupby="treatment_key", real="mdata")
@doc_params(show_save=SHOW_SAVE_DOC)
def morphology_embedding(
    mdata: MuData | AnnData,
    generated: str | AnnData = C.IMAGE_SYNTHETIC_MOD,
    *,
    mod: str | None = None,
    rep: str | None = AUTO,
    treatment_key: str | None = None,
    lda_key: str | None = None,
    control: str | None = None,
    conditions: Sequence[str] | None = None,
    images_key: str | None = None,
    max_cells: int = 300,
    n_neighbors: int = 15,
    readout_kwargs: dict[str, Any] | None = None,
    seed: int = 0,
    ax: Sequence[Axes] | None = None,
    show: bool = False,
    save: str | Path | None = None,
) -> Sequence[Axes]:
    """LDA of generated morphology by label and UMAP of real vs generated vs control (TRIDENT Figure 4a-b).

    Left: linear discriminant analysis (scikit-learn) of the generated cells' features, fitted to separate
    the values of ``lda_key`` (e.g. a mechanism-of-action column; default ``treatment_key``), first two
    discriminants, coloured by that label (legend). Right: UMAP (scanpy: neighbours, then UMAP, on a
    private AnnData; the inputs are never modified) of the control cells (real cells of ``control``), the
    real treated cells and the generated treated cells of ``conditions``, coloured by source as in the
    paper (control blue, real orange, generated green; legend).

    Parameters
    ----------
    mdata
        MuData with the real cells / tiles (modality ``mod``) and the generated ones, or an AnnData of the
        real cells (formerly ``real``).
    generated
        The generated cells: a modality of ``mdata`` written by :func:`morphomu.tl.generate_morphology`,
        or an AnnData.
    mod
        Modality of the real cells in a MuData; default: from the record of the step that wrote
        ``generated``, else ``'img'``.
    rep
        Features compared: an ``.obsm`` key in both (``None``: ``.X``), or ``'readouts'`` to compute
        :func:`morphomu.tl.morphology_readouts` of the tiles of both sets with one rule (z-scored).
        Default (``'auto'``): the representation recorded for ``generated`` or for ``mod`` when the
        generated cells have it, else ``'readouts'`` when they are tiles (``.obsm[images_key]``), else
        ``'X_vit'``.
    treatment_key
        obs column with the treatment (formerly ``groupby``); default: from the record of the step that
        wrote ``generated``, else ``'treatment'``.
    lda_key
        obs column of the generated cells that the LDA separates (default ``treatment_key``).
    control
        Control value of ``treatment_key``; default: from the record of the step that wrote
        ``generated``, else ``'DMSO'``.
    conditions
        Treatments shown (default every non-control treatment of the generated set, at most 8).
    images_key
        ``.obsm`` key of the tiles for ``rep='readouts'``; default: from the record of the step that wrote
        ``generated``, else ``'images'``.
    max_cells
        Cells drawn per treatment and source (``seed``).
    n_neighbors
        Neighbours of the UMAP graph.
    readout_kwargs
        Passed to the readouts when ``rep='readouts'``.
    seed
        Seed of the draws and of UMAP.
    ax
        Two Axes (LDA, UMAP); a new figure otherwise.
    {show_save}

    Returns
    -------
    The two Axes.

    Examples
    --------
    ``mdata`` holds real tiles and tiles :func:`morphomu.tl.generate_morphology` wrote for a few
    compounds; tiles are compared by their readouts:

    >>> import morphomu as mm
    >>> axes = mm.pl.morphology_embedding(mdata, max_cells=40)
    >>> axes = mm.pl.morphology_embedding(mdata, conditions=["Colchicine", "Cycloheximide"], max_cells=40)
    """
    import anndata as ad
    import matplotlib.pyplot as plt
    import scanpy as sc
    import seaborn as sns
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    readout_kwargs, images_key = _readout_kwargs(readout_kwargs, images_key)
    keys = _data_keys(
        mdata,
        generated,
        {"mod": mod, "treatment_key": treatment_key, "images_key": images_key, "control": control},
    )
    treatment_key, images_key, control = keys["treatment_key"], keys["images_key"], keys["control"]
    real_ad, gen_ad = _sides(mdata, generated, keys["mod"])
    if gen_ad is None:
        msg = "generated is required (a modality name of mdata or an AnnData)."
        raise ContractError(msg)
    if rep == AUTO:
        rep = keys["generated_rep"] or keys["real_rep"]
        if rep is None or rep not in gen_ad.obsm:
            # generated tiles without features: compare what can be measured on both
            rep = "readouts" if _has_tiles(gen_ad, images_key) else (rep or C.IMAGE_REP)
    lda_key = treatment_key if lda_key is None else lda_key
    check_obs_keys(real_ad, {"treatment_key": treatment_key}, mod=None)
    check_obs_keys(gen_ad, {"treatment_key": treatment_key, "lda_key": lda_key}, mod=None)
    if rep != "readouts":
        for adata in (real_ad, gen_ad):
            check_rep(adata, rep, mod=None, arg="rep")
    real_t = real_ad.obs[treatment_key].astype(str).to_numpy()
    gen_t = gen_ad.obs[treatment_key].astype(str).to_numpy()
    if control not in set(real_t):
        msg = f"control={control!r} has no real cells (obs[{treatment_key!r}])."
        raise ContractError(msg)
    if conditions is None:
        conditions = [c for c in pd.unique(gen_t) if c != control][:8]
    conditions = [str(c) for c in conditions]
    for name, labels in (("real", real_t), ("generated", gen_t)):
        missing = sorted(set(conditions) - set(labels))
        if missing:
            msg = f"{name} data has no cells of {missing[:5]} (obs[{treatment_key!r}])."
            raise ContractError(msg)
    if len(set(gen_ad.obs[lda_key].astype(str)[np.isin(gen_t, conditions)])) < 2:
        msg = f"the LDA needs at least two values of obs[{lda_key!r}] among the generated cells shown."
        raise ContractError(msg)
    if ax is not None and len(list(ax)) != 2:
        msg = f"ax must be two Axes (LDA, UMAP), got {len(list(ax))}."
        raise ContractError(msg)

    rng = np.random.default_rng(seed)
    rows = {
        "control": _pick(real_t, control, max_cells, rng),
        "real": np.concatenate([_pick(real_t, c, max_cells, rng) for c in conditions]),
        "generated": np.concatenate([_pick(gen_t, c, max_cells, rng) for c in conditions]),
    }
    if rep == "readouts":
        from ..tl._readouts import ALWAYS_FINITE, compare_readouts

        sets = {
            "control": real_ad[rows["control"]],
            "real": real_ad[rows["real"]],
            "generated": gen_ad[rows["generated"]],
        }
        # labels name each set's rows, so no obs column of the tool's default name is looked up
        table = compare_readouts(
            sets,
            mod=None,
            images_key=images_key,
            labels={name: np.full(part.n_obs, name) for name, part in sets.items()},
            **readout_kwargs,
        )
        cols = [*ALWAYS_FINITE, *(c for c in table.columns if c.startswith("intensity_"))]
        values = table[cols].to_numpy(np.float64)
        ref = values[(table["source"] != "generated").to_numpy()]
        std = ref.std(0)
        values = (values - ref.mean(0)) / np.where(std > 0, std, 1.0)
        sizes = [len(rows[k]) for k in ("control", "real", "generated")]
        feats = dict(
            zip(("control", "real", "generated"), np.split(values, np.cumsum(sizes)[:-1]), strict=True)
        )
    else:
        f_real, f_gen = _features(real_ad, rep), _features(gen_ad, rep)
        feats = {
            "control": f_real[rows["control"]],
            "real": f_real[rows["real"]],
            "generated": f_gen[rows["generated"]],
        }

    if ax is None:
        fig, axes = plt.subplots(1, 2, figsize=(12, 5.2))
    else:
        axes = list(ax)
        fig = axes[0].figure
    # --- LDA of generated cells by label
    lda_labels = gen_ad.obs[lda_key].astype(str).to_numpy()[rows["generated"]]
    classes = sorted(set(lda_labels))
    n_comp = min(2, len(classes) - 1, feats["generated"].shape[1])
    lda = LinearDiscriminantAnalysis(n_components=n_comp).fit(feats["generated"], lda_labels)
    z = lda.transform(feats["generated"])
    if z.shape[1] == 1:
        z = np.column_stack([z[:, 0], rng.normal(scale=0.05 * (z.std() or 1.0), size=len(z))])
    palette = dict(
        zip(classes, sns.color_palette("tab10" if len(classes) <= 10 else "tab20", len(classes)), strict=True)
    )
    for cls in classes:
        sel = lda_labels == cls
        axes[0].scatter(z[sel, 0], z[sel, 1], s=8, alpha=0.6, color=palette[cls], label=cls, linewidths=0)
    axes[0].set_xlabel("LD1")
    axes[0].set_ylabel("LD2" if n_comp > 1 else "jitter")
    axes[0].set_title(f"generated cells: LDA by {lda_key}")
    axes[0].legend(fontsize=7, markerscale=2, frameon=False, loc="best")
    # --- UMAP of control / real / generated
    obs = pd.DataFrame(
        {"source": np.repeat(list(feats), [len(v) for v in feats.values()])},
        index=[f"{k}_{i}" for k, v in feats.items() for i in range(len(v))],
    )
    cells = ad.AnnData(obs=obs)
    cells.obsm["X_rep"] = np.concatenate(list(feats.values())).astype(np.float32)
    with keep_torch_threads():
        sc.pp.neighbors(
            cells, use_rep="X_rep", n_neighbors=min(n_neighbors, cells.n_obs - 1), random_state=seed
        )
        sc.tl.umap(cells, random_state=seed)
    for source, colour in SOURCE_COLOURS.items():
        sel = (cells.obs["source"] == source).to_numpy()
        axes[1].scatter(
            *cells.obsm["X_umap"][sel].T, s=6, alpha=0.5, color=colour, label=source, linewidths=0
        )
    axes[1].set_xlabel("UMAP1")
    axes[1].set_ylabel("UMAP2")
    axes[1].set_title("real vs generated vs control")
    axes[1].legend(fontsize=8, markerscale=2, frameon=False)
    fig.tight_layout()
    _finish(fig, show=show, save=save)
    return axes


@renamed_arguments(groupby="treatment_key", real="mdata")
@doc_params(show_save=SHOW_SAVE_DOC)
def readouts(
    mdata: MuData | AnnData,
    generated: str | AnnData = C.IMAGE_SYNTHETIC_MOD,
    *,
    mod: str | None = None,
    treatment_key: str | None = None,
    control: str | None = None,
    conditions: Sequence[str] | None = None,
    columns: Sequence[str] = ("area_cell", "area_cytoplasm", "area_nucleus"),
    table: pd.DataFrame | None = None,
    images_key: str | None = None,
    kind: Literal["box", "violin"] = "box",
    readout_kwargs: dict[str, Any] | None = None,
    ax: Sequence[Axes] | None = None,
    show: bool = False,
    save: str | Path | None = None,
) -> Sequence[Axes]:
    """Readout distributions of control, real and generated tiles per treatment (TRIDENT Figure 4c).

    The tiles of the control (real tiles of ``control``), of the real and of the generated treated tiles
    are measured by :func:`~morphomu.tl._readouts.compare_readouts` (one segmentation rule for all three),
    and every readout in ``columns`` gets one panel: treatments on the x axis, one box (or violin) per
    source, coloured as the paper (control blue, real orange, generated green; legend in the first panel).

    Parameters
    ----------
    mdata
        MuData with the real tiles (modality ``mod``) and the generated ones, or an AnnData with the real
        tiles (formerly ``real``).
    generated
        The generated tiles: a modality of ``mdata`` written by :func:`morphomu.tl.generate_morphology`,
        or an AnnData.
    mod
        Modality of the real tiles in a MuData; default: from the record of the step that wrote
        ``generated``, else ``'img'``.
    treatment_key
        obs column with the treatment (formerly ``groupby``); default: from the record of the step that
        wrote ``generated``, else ``'treatment'``.
    control
        Control value of ``treatment_key``; default: from the record of the step that wrote
        ``generated``, else ``'DMSO'``.
    conditions
        Treatments shown (default every non-control treatment of the generated set, at most 8).
    columns
        Readouts to plot (columns of :func:`morphomu.tl.morphology_readouts`, default *AreaOccupied* of
        cell, cytoplasm and nucleus).
    table
        A precomputed long table (columns ``source``, ``treatment_key`` and the readouts, e.g. from
        ``compare_readouts``); the tiles are then not measured again.
    images_key
        ``.obsm`` key of the tiles; default: from the record of the step that wrote ``generated``, else
        ``'images'``.
    kind
        ``'box'`` or ``'violin'``.
    readout_kwargs
        Passed to the readouts.
    ax
        One Axes per column; a new figure otherwise.
    {show_save}

    Returns
    -------
    The Axes, one per readout.

    Examples
    --------
    ``mdata`` holds real tiles and tiles :func:`morphomu.tl.generate_morphology` wrote for a few
    compounds:

    >>> import morphomu as mm
    >>> axes = mm.pl.readouts(mdata, conditions=["Colchicine", "Cycloheximide"])
    >>> axes = mm.pl.readouts(mdata, columns=["cell_count"], kind="violin")
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    from ..tl._readouts import compare_readouts

    if kind not in ("box", "violin"):
        msg = f"kind must be 'box' or 'violin', got {kind!r}."
        raise ContractError(msg)
    columns = [str(c) for c in columns]
    if ax is not None and len(list(ax)) != len(columns):
        msg = f"ax must be {len(columns)} Axes (one per readout), got {len(list(ax))}."
        raise ContractError(msg)
    readout_kwargs, images_key = _readout_kwargs(readout_kwargs, images_key)
    keys = _data_keys(
        mdata,
        generated,
        {"mod": mod, "treatment_key": treatment_key, "images_key": images_key, "control": control},
    )
    treatment_key, images_key, control = keys["treatment_key"], keys["images_key"], keys["control"]
    if table is None:
        real_ad, gen_ad = _sides(mdata, generated, keys["mod"])
        if gen_ad is None:
            msg = "generated is required (a modality name of mdata or an AnnData)."
            raise ContractError(msg)
        check_obs_keys(real_ad, {"treatment_key": treatment_key}, mod=None)
        check_obs_keys(gen_ad, {"treatment_key": treatment_key}, mod=None)
        real_t = real_ad.obs[treatment_key].astype(str).to_numpy()
        gen_t = gen_ad.obs[treatment_key].astype(str).to_numpy()
        if control not in set(real_t):
            msg = f"control={control!r} has no real tiles (obs[{treatment_key!r}])."
            raise ContractError(msg)
        if conditions is None:
            conditions = [c for c in pd.unique(gen_t) if c != control][:8]
        conditions = [str(c) for c in conditions]
        for name, labels in (("real", real_t), ("generated", gen_t)):
            missing = sorted(set(conditions) - set(labels))
            if missing:
                msg = f"{name} data has no tiles of {missing[:5]} (obs[{treatment_key!r}])."
                raise ContractError(msg)
        sets = {
            "control": real_ad[real_t == control],
            "real": real_ad[np.isin(real_t, conditions)],
            "generated": gen_ad[np.isin(gen_t, conditions)],
        }
        treatments = {name: part.obs[treatment_key].astype(str).to_numpy() for name, part in sets.items()}
        table = compare_readouts(sets, mod=None, images_key=images_key, labels=treatments, **readout_kwargs)
        # the treatment under this plot's own column name, whatever the tool calls its label column
        table[treatment_key] = np.concatenate(list(treatments.values()))
    else:
        needed = {"source", treatment_key, *columns}
        if not isinstance(table, pd.DataFrame) or not needed <= set(table.columns):
            msg = f"table must be a DataFrame with columns {sorted(needed)} (e.g. from compare_readouts)."
            raise ContractError(msg)
        if conditions is None:
            conditions = [c for c in pd.unique(table[treatment_key].astype(str)) if c != control][:8]
        conditions = [str(c) for c in conditions]
    unknown = [c for c in columns if c not in table.columns]
    if unknown:
        choices = [c for c in table.columns if c not in ("source", treatment_key)]
        msg = f"columns {unknown} are not readouts; choose from {choices}."
        raise ContractError(msg)
    # the control is shown once, as its own group on the left
    frame = table.copy()
    frame["group"] = np.where(
        frame["source"].astype(str) == "control", control, frame[treatment_key].astype(str)
    )
    order = [control, *conditions]
    frame = frame[frame["group"].isin(order)]
    hue_order = [s for s in SOURCE_COLOURS if s in set(frame["source"].astype(str))]
    frame["source"] = frame["source"].astype(str)
    if ax is None:
        fig, axes = plt.subplots(
            len(columns), 1, figsize=(max(6, 1.2 * len(order) + 2), 2.8 * len(columns)), squeeze=False
        )
        axes = list(axes[:, 0])
    else:
        axes = list(ax)
        fig = axes[0].figure
    plot = sns.boxplot if kind == "box" else sns.violinplot
    for axis, column in zip(axes, columns, strict=True):
        extra = {"fliersize": 1.5} if kind == "box" else {"cut": 0, "density_norm": "width"}
        plot(
            data=frame,
            x="group",
            y=column,
            hue="source",
            order=order,
            hue_order=hue_order,
            palette=SOURCE_COLOURS,
            ax=axis,
            **extra,
        )
        axis.set_xlabel("")
        axis.set_ylabel(column)
        axis.tick_params(axis="x", labelrotation=30)
        if axis is not axes[0] and axis.get_legend() is not None:
            axis.get_legend().remove()
    fig.tight_layout()
    _finish(fig, show=show, save=save)
    return axes
