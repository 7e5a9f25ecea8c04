"""Predicted-transcriptome checks (TRIDENT Figure 5a-b): LFC accuracy and gene-set over-representation."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from .. import _constants as C
from .._errors import ContractError

__all__ = ["expression_accuracy", "gene_set_enrichment", "read_gmt"]

_ZSCORE = ("gene", "compound", None)
_DIRECTIONS = ("up", "down", "both")


def _frame(x: Any, arg: str) -> pd.DataFrame:
    if not isinstance(x, pd.DataFrame):
        msg = f"{arg} must be a DataFrame (compounds x genes), got {type(x).__name__}."
        raise ContractError(msg)
    if x.empty:
        msg = f"{arg} is empty; expected compounds x genes."
        raise ContractError(msg)
    if not x.index.is_unique or not x.columns.is_unique:
        msg = f"{arg} has duplicated compounds (index) or genes (columns)."
        raise ContractError(msg)
    try:
        values = x.to_numpy(np.float64)
    except (TypeError, ValueError):
        msg = f"{arg} must hold numbers only."
        raise ContractError(msg) from None
    if not np.isfinite(values).all():
        msg = f"{arg} has {int((~np.isfinite(values)).sum())} non-finite values."
        raise ContractError(msg)
    return pd.DataFrame(values, index=x.index.astype(str), columns=x.columns.astype(str))


def _zscore(x: np.ndarray, axis: int) -> np.ndarray:
    std = x.std(axis=axis, keepdims=True)
    std[std == 0] = 1.0
    return (x - x.mean(axis=axis, keepdims=True)) / std


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ac, bc = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (ac * bc).sum(1) / np.sqrt((ac * ac).sum(1) * (bc * bc).sum(1))


def expression_accuracy(
    predicted: pd.DataFrame,
    real: pd.DataFrame,
    *,
    control: str = C.CONTROL,
    log1p: bool = False,
    zscore: Literal["gene", "compound"] | None = "gene",
) -> pd.DataFrame:
    """Accuracy of predicted transcriptomes: Pearson of z-scored log fold changes, predicted vs real.

    TRIDENT's Figure 5a: for every compound, the log fold change (LFC) against the control is formed for
    the prediction and for the measurement, z-scored, and the two gene patterns are correlated.

    - ``lfc_real[c] = real[c] - real[control]``;
    - ``lfc_pred[c] = predicted[c] - predicted[control]`` when ``predicted`` has a control row, else
      ``predicted[c] - real[control]`` (a model that predicts post-perturbation expression from the
      measured control, as TRIDENT's condition module);
    - z-scoring (separately for predicted and real): ``'gene'`` standardises each gene across compounds
      (the usual heatmap scaling), ``'compound'`` each compound across genes, ``None`` none.

    Parameters
    ----------
    predicted
        Predicted expression, compounds x genes (e.g. what ``Trident.predict_expression`` returns), in
        log units unless ``log1p``.
    real
        Measured per-compound mean expression, compounds x genes, with a ``control`` row.
    control
        Row label of the control (DMSO) in ``real`` (and optionally ``predicted``).
    log1p
        Apply ``log1p`` to both tables first (for per-compound means of normalised counts).
    zscore
        ``'gene'``, ``'compound'`` or ``None``.

    Returns
    -------
    DataFrame indexed by compound (the compounds of both tables, control excluded) with ``pearson`` (over
    the shared genes) and ``n_genes``. ``table.attrs['summary']`` holds ``mean_pearson``,
    ``median_pearson``, ``overall_pearson`` (of the two flattened z-scored LFC matrices, the heatmaps'
    agreement), ``n_compounds``, ``n_genes``; ``table.attrs['lfc_predicted']`` / ``['lfc_real']`` the
    z-scored LFC matrices (for a heatmap); ``table.attrs['only_predicted']`` / ``['only_real']`` the
    compounds left out.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> import morphomu as mm
    >>> rng = np.random.default_rng(0)
    >>> real = pd.DataFrame(rng.normal(size=(5, 50)), index=["DMSO", "a", "b", "c", "d"])
    >>> pred = real.drop(index="DMSO") + rng.normal(scale=0.1, size=(4, 50))
    >>> table = mm.tl.expression_accuracy(pred, real)
    >>> bool(table["pearson"].min() > 0.9)
    True
    """
    pred, meas = _frame(predicted, "predicted"), _frame(real, "real")
    if zscore not in _ZSCORE:
        msg = f"zscore must be one of {list(_ZSCORE)}, got {zscore!r}."
        raise ContractError(msg)
    control = str(control)
    if control not in meas.index:
        msg = f"control={control!r} is not a row of real; its rows are {list(meas.index[:10])}."
        raise ContractError(msg)
    genes = pred.columns.intersection(meas.columns)
    if len(genes) < 2:
        msg = f"predicted and real share {len(genes)} genes (columns); at least two are needed."
        raise ContractError(msg)
    compounds = pred.index.drop(control, errors="ignore").intersection(meas.index.drop(control))
    if len(compounds) == 0:
        msg = "predicted and real share no compound (rows) besides the control."
        raise ContractError(msg)
    if log1p:
        if (pred.to_numpy() < -1).any() or (meas.to_numpy() < -1).any():
            msg = "log1p=True needs values > -1 (non-negative expression)."
            raise ContractError(msg)
        pred, meas = np.log1p(pred), np.log1p(meas)
    base_pred = pred.loc[control, genes] if control in pred.index else meas.loc[control, genes]
    lfc_pred = pred.loc[compounds, genes].to_numpy() - base_pred.to_numpy()[None, :]
    lfc_real = meas.loc[compounds, genes].to_numpy() - meas.loc[control, genes].to_numpy()[None, :]
    if zscore == "gene":
        if len(compounds) < 2:
            msg = "zscore='gene' standardises each gene across compounds and needs at least two compounds."
            raise ContractError(msg)
        lfc_pred, lfc_real = _zscore(lfc_pred, 0), _zscore(lfc_real, 0)
    elif zscore == "compound":
        lfc_pred, lfc_real = _zscore(lfc_pred, 1), _zscore(lfc_real, 1)
    pearson = _pearson_rows(lfc_pred, lfc_real)
    overall = float(np.corrcoef(lfc_pred.ravel(), lfc_real.ravel())[0, 1])
    table = pd.DataFrame(
        {"pearson": pearson, "n_genes": len(genes)}, index=pd.Index(compounds, name="compound")
    )
    table.attrs["summary"] = {
        "mean_pearson": float(np.nanmean(pearson)),
        "median_pearson": float(np.nanmedian(pearson)),
        "overall_pearson": overall,
        "n_compounds": len(compounds),
        "n_genes": len(genes),
    }
    table.attrs["lfc_predicted"] = pd.DataFrame(lfc_pred, index=compounds, columns=genes)
    table.attrs["lfc_real"] = pd.DataFrame(lfc_real, index=compounds, columns=genes)
    table.attrs["only_predicted"] = sorted(set(pred.index) - set(compounds) - {control})
    table.attrs["only_real"] = sorted(set(meas.index) - set(compounds) - {control})
    return table


def read_gmt(path: str | os.PathLike) -> dict[str, list[str]]:
    """Gene sets from a GMT file: one set per line, ``name<TAB>description<TAB>gene<TAB>gene...``.

    Parameters
    ----------
    path
        A local ``.gmt`` file (e.g. from MSigDB or Enrichr, downloaded by the user).

    Returns
    -------
    Set name to its genes (order kept, duplicates dropped).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        msg = f"gene_sets={str(path)!r} is not a file; give a GMT file path or a dict {{name: genes}}."
        raise ContractError(msg)
    sets: dict[str, list[str]] = {}
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.rstrip("\r\n").split("\t")
        if len(fields) < 3:
            msg = f"{path}:{i} is not a GMT line (name, description, genes... separated by tabs)."
            raise ContractError(msg)
        name = fields[0].strip()
        if name in sets:
            msg = f"{path}:{i}: gene set {name!r} appears twice."
            raise ContractError(msg)
        sets[name] = list(dict.fromkeys(g.strip() for g in fields[2:] if g.strip()))
    if not sets:
        msg = f"{path} holds no gene set."
        raise ContractError(msg)
    return sets


def _adjust(pvalues: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (statsmodels when installed, else scipy)."""
    if pvalues.size == 0:
        return pvalues
    try:
        from statsmodels.stats.multitest import multipletests
    except ImportError:
        from scipy.stats import false_discovery_control

        return false_discovery_control(pvalues, method="bh")
    return multipletests(pvalues, method="fdr_bh")[1]


def _selected(lfc: pd.Series, direction: str, n_top: int) -> list[str]:
    if direction == "up":
        part = lfc[lfc > 0].sort_values(ascending=False, kind="stable")
    else:
        part = lfc[lfc < 0].sort_values(ascending=True, kind="stable")
    return list(part.index[:n_top])


def gene_set_enrichment(
    lfc: pd.Series | pd.DataFrame,
    gene_sets: Mapping[str, Iterable[str]] | str | os.PathLike,
    *,
    n_top: int = 100,
    direction: Literal["up", "down", "both"] = "both",
    background: Iterable[str] | None = None,
    min_set_size: int = 1,
) -> pd.DataFrame:
    """Over-representation of the most up / down-regulated genes in gene sets (hypergeometric test).

    TRIDENT's Figure 5b: the genes a model predicts to be most activated (largest positive log fold
    change) and most suppressed (most negative) are tested for enrichment in functional gene sets. For a
    selection of ``N`` genes out of a background of ``M`` genes and a set with ``n`` background genes, of
    which ``k`` are selected, the p-value is ``P(X >= k)`` for ``X ~ Hypergeom(M, n, N)``
    (:data:`scipy.stats.hypergeom`); p-values are Benjamini-Hochberg adjusted over the sets tested for one
    selection (statsmodels when installed, else :func:`scipy.stats.false_discovery_control`).

    Parameters
    ----------
    lfc
        Log fold changes: a Series indexed by gene, or a DataFrame compounds x genes (every row is tested).
    gene_sets
        A dict ``{name: genes}`` or the path of a GMT file (parsed by
        :func:`~morphomu.tl._expression.read_gmt`; nothing is downloaded).
    n_top
        Genes selected per direction: the ``n_top`` largest positive (``'up'``) / most negative
        (``'down'``) LFCs (fewer if fewer genes change in that direction).
    direction
        ``'up'``, ``'down'`` or ``'both'`` (each tested separately).
    background
        The gene universe; default the genes of ``lfc``. Sets are restricted to it.
    min_set_size
        Sets with fewer background genes are skipped.

    Returns
    -------
    DataFrame with ``compound`` (DataFrame input only), ``direction``, ``gene_set``, ``set_size`` (``n``),
    ``n_selected`` (``N``), ``overlap`` (``k``), ``expected`` (``N n / M``), ``fold_enrichment``, ``pvalue``,
    ``padj`` and ``genes`` (the overlap, ``;``-joined), sorted by p-value within each selection.

    Examples
    --------
    >>> import pandas as pd
    >>> import morphomu as mm
    >>> lfc = pd.Series([3.0, 2.5, 2.0, -2.0, 0.1, 0.0], index=["A", "B", "C", "D", "E", "F"])
    >>> sets = {"growth": ["A", "B", "C"], "other": ["D", "E"]}
    >>> res = mm.tl.gene_set_enrichment(lfc, sets, n_top=3, direction="up")
    >>> res.iloc[0]["gene_set"], int(res.iloc[0]["overlap"])
    ('growth', 3)
    """
    from scipy.stats import hypergeom

    if isinstance(lfc, pd.Series):
        frame = _frame(lfc.to_frame().T, "lfc")
        single = True
    elif isinstance(lfc, pd.DataFrame):
        frame = _frame(lfc, "lfc")
        single = False
    else:
        msg = f"lfc must be a Series (genes) or a DataFrame (compounds x genes), got {type(lfc).__name__}."
        raise ContractError(msg)
    if direction not in _DIRECTIONS:
        msg = f"direction must be one of {list(_DIRECTIONS)}, got {direction!r}."
        raise ContractError(msg)
    for name, value in (("n_top", n_top), ("min_set_size", min_set_size)):
        if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
            msg = f"{name} must be a positive integer, got {value!r}."
            raise ContractError(msg)
    if isinstance(gene_sets, str | os.PathLike):
        sets = read_gmt(gene_sets)
    elif isinstance(gene_sets, Mapping):
        sets = {}
        for name, genes in gene_sets.items():
            if isinstance(genes, str) or not isinstance(genes, Iterable):
                msg = f"gene_sets[{name!r}] must be a collection of gene names, got {genes!r}."
                raise ContractError(msg)
            sets[str(name)] = list(dict.fromkeys(str(g) for g in genes))
        if not sets:
            msg = "gene_sets is empty."
            raise ContractError(msg)
    else:
        msg = f"gene_sets must be a dict {{name: genes}} or a GMT file path, got {type(gene_sets).__name__}."
        raise ContractError(msg)
    universe = list(frame.columns) if background is None else list(dict.fromkeys(str(g) for g in background))
    missing = sorted(set(frame.columns) - set(universe))
    if missing:
        msg = f"background lacks {len(missing)} genes of lfc (e.g. {missing[:5]}); it must contain every tested gene."
        raise ContractError(msg)
    universe_set = set(universe)
    big_m = len(universe)
    restricted = {name: [g for g in genes if g in universe_set] for name, genes in sets.items()}
    restricted = {name: genes for name, genes in restricted.items() if len(genes) >= min_set_size}
    if not restricted:
        msg = f"no gene set has at least min_set_size={min_set_size} genes of the background ({big_m} genes)."
        raise ContractError(msg)

    directions = ("up", "down") if direction == "both" else (direction,)
    parts = []
    for compound, row in frame.iterrows():
        for d in directions:
            chosen = _selected(row, d, int(n_top))
            chosen_set = set(chosen)
            big_n = len(chosen)
            records = []
            for name, genes in restricted.items():
                hits = [g for g in genes if g in chosen_set]
                n, k = len(genes), len(hits)
                expected = big_n * n / big_m
                records.append(
                    {
                        "direction": d,
                        "gene_set": name,
                        "set_size": n,
                        "n_selected": big_n,
                        "overlap": k,
                        "expected": expected,
                        "fold_enrichment": k / expected if expected > 0 else np.nan,
                        "pvalue": float(hypergeom.sf(k - 1, big_m, n, big_n)) if big_n > 0 else 1.0,
                        "genes": ";".join(hits),
                    }
                )
            part = pd.DataFrame(records)
            part["padj"] = _adjust(part["pvalue"].to_numpy())
            part = part.sort_values("pvalue", kind="stable")
            if not single:
                part.insert(0, "compound", compound)
            parts.append(part)
    columns = [
        *([] if single else ["compound"]),
        "direction",
        "gene_set",
        "set_size",
        "n_selected",
        "overlap",
        "expected",
        "fold_enrichment",
        "pvalue",
        "padj",
        "genes",
    ]
    return pd.concat(parts, ignore_index=True)[columns]
