"""What Trident reads from its data: training rows and the data summary it keeps.

Nothing here writes to the data or to a model. ``setup`` is the model's ``setup_args`` (the keys given to
:meth:`morphomu.models.Trident.setup_mudata`).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import sparse

from .. import _constants as C
from .._core import expression_rows
from .._errors import ContractError
from .._threads import keep_torch_threads
from .._validation import check_obs_keys
from ..pp._split import SPLIT_REMEDY
from ._trident_checks import CHUNK_ROWS, compound_smiles, labels

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = [
    "highly_variable",
    "image_rows",
    "image_vae_tiles",
    "is_counts",
    "rna_rows",
    "summarize_data",
    "training_compounds",
]


def is_counts(matrix: Any) -> bool:
    """Whether a (sparse or dense) matrix looks like raw counts: non-negative integers (checked on a chunk)."""
    block = matrix[: min(matrix.shape[0], 2048)]
    block = block.data if sparse.issparse(block) else np.asarray(block)
    return bool(block.size == 0 or ((block >= 0).all() and np.allclose(block, np.round(block))))


def training_compounds(img: AnnData, setup: Mapping[str, Any]) -> set[str]:
    """Compounds trained on: ``id`` in ``compound_split_key`` when the column exists, else all (+ control)."""
    treat = labels(img, setup["treatment_key"])
    key = setup["compound_split_key"]
    if key in img.obs.columns:
        in_dist = treat[img.obs[key].astype(str).to_numpy() == C.COMPOUND_SPLITS[0]]
        return set(in_dist) | {setup["control"]}
    return set(treat)


def rna_rows(rna: AnnData, compounds: set[str], setup: Mapping[str, Any]) -> np.ndarray:
    """RNA cells behind the conditions: training compounds (+ control), ``train`` / ``val`` split when labelled."""
    keep = np.isin(labels(rna, setup["treatment_key"]), list(compounds))
    if setup["split_key"] in rna.obs.columns:
        keep &= np.isin(rna.obs[setup["split_key"]].astype(str).to_numpy(), [C.TRAIN, C.VAL])
    return np.flatnonzero(keep)


def image_rows(img: AnnData, setup: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation image rows (training compounds, by ``split_key``)."""
    check_obs_keys(img, {"split_key": setup["split_key"]}, mod=setup["image_mod"])
    split = img.obs[setup["split_key"]].astype(str).to_numpy()
    keep = np.isin(labels(img, setup["treatment_key"]), list(training_compounds(img, setup)))
    train, val = np.flatnonzero(keep & (split == C.TRAIN)), np.flatnonzero(keep & (split == C.VAL))
    if train.size == 0:
        msg = (
            f"mdata.mod[{setup['image_mod']!r}].obs[{setup['split_key']!r}] (split_key) has no 'train' images of the "
            f"training compounds (found {sorted(set(split))}). {SPLIT_REMEDY}"
        )
        raise ContractError(msg)
    return train, val


def image_vae_tiles(img: AnnData, setup: Mapping[str, Any]) -> AnnData:
    """A copy of the training compounds' train/val tiles (``.obsm['images']``, the split in obs) for a new image VAE."""
    import anndata as ad

    rows = np.flatnonzero(np.isin(labels(img, setup["treatment_key"]), list(training_compounds(img, setup))))
    split = setup["split_key"]
    if split in img.obs.columns:
        rows = rows[np.isin(img.obs[split].astype(str).to_numpy()[rows], [C.TRAIN, C.VAL])]
        obs = pd.DataFrame({split: img.obs[split].astype(str).to_numpy()[rows]}, index=img.obs_names[rows])
    else:
        obs = pd.DataFrame(index=img.obs_names[rows])
    if rows.size == 0:
        msg = f"mdata.mod[{setup['image_mod']!r}] has no train/val tiles of the training compounds for the image VAE."
        raise ContractError(msg)
    return ad.AnnData(obs=obs, obsm={C.IMAGES_KEY: np.asarray(img.obsm[setup["images_key"]][np.sort(rows)])})


def summarize_data(
    mdata: Any, setup: Mapping[str, Any], *, use_rna: bool, n_top_genes: int
) -> dict[str, Any]:
    """What a model keeps of the data: tiles' shape/dtype/range, SMILES, genes and their statistics."""
    img = mdata.mod[setup["image_mod"]]
    tiles = img.obsm[setup["images_key"]]
    dtype = np.dtype(tiles.dtype)
    if np.issubdtype(dtype, np.integer):
        low, high = float(np.iinfo(dtype).min), float(np.iinfo(dtype).max)
    else:  # float tiles: the range seen in the data
        low, high = np.inf, -np.inf
        for start in range(0, tiles.shape[0], CHUNK_ROWS):
            block = np.asarray(tiles[start : start + CHUNK_ROWS])
            low, high = min(low, float(block.min())), max(high, float(block.max()))
    smiles = compound_smiles(
        img, setup["treatment_key"], setup["smiles_key"], setup["control"], mod=setup["image_mod"]
    )
    info: dict[str, Any] = {
        "tile_shape": tuple(int(s) for s in tiles.shape[1:]),
        "tile_dtype": str(dtype),
        "tile_range": (low, high),
        "smiles": smiles,
        "control": setup["control"],
        "genes": [],
        "counts": False,
    }
    if not use_rna:
        info["gene_mean"] = info["gene_std"] = np.zeros(0, np.float32)
        return info
    rna = mdata.mod[setup["rna_mod"]]
    rows = rna_rows(rna, training_compounds(img, setup), setup)
    if rows.size == 0:
        msg = (
            f"mdata.mod[{setup['rna_mod']!r}] has no RNA cells of the training compounds in the train/val splits "
            f"(obs[{setup['split_key']!r}]); conditions need them."
        )
        raise ContractError(msg)
    rep = setup["rna_rep"]
    matrix = rna.X if rep is None else rna.obsm[rep]
    if rep is None:
        counts = is_counts(matrix)
        genes = highly_variable(matrix, rows, counts=counts, names=rna.var_names, n_top=n_top_genes)
        names = [str(g) for g in rna.var_names[genes]]
    else:
        counts, genes = False, None
        names = (
            [str(c) for c in matrix.columns]
            if isinstance(matrix, pd.DataFrame)
            else [f"{rep}_{i}" for i in range(matrix.shape[1])]
        )
    if isinstance(matrix, pd.DataFrame):
        matrix = matrix.to_numpy()
    # standardisation statistics: per feature over the training cells (cell-level spread)
    total = np.zeros(len(names))
    total_sq = np.zeros(len(names))
    for start in range(0, rows.size, CHUNK_ROWS):
        x = expression_rows(matrix, rows[start : start + CHUNK_ROWS], counts=counts, genes=genes).astype(
            np.float64
        )
        total += x.sum(0)
        total_sq += np.square(x).sum(0)
    mean = total / rows.size
    std = np.sqrt(np.maximum(total_sq / rows.size - mean**2, 0.0))
    std[std < 1e-6] = 1.0
    info.update(
        {
            "genes": names,
            "gene_index": None if genes is None else np.asarray(genes, dtype=np.int64),
            "counts": counts,
            "gene_mean": mean.astype(np.float32),
            "gene_std": std.astype(np.float32),
        }
    )
    return info


def highly_variable(
    matrix: Any, rows: np.ndarray, *, counts: bool, names: pd.Index, n_top: int
) -> np.ndarray:
    """Indices of the ``n_top`` highly variable genes (scanpy, Seurat flavour) of log-normalised ``rows``."""
    import anndata as ad
    import scanpy as sc

    n_top = min(int(n_top), matrix.shape[1])
    if n_top == matrix.shape[1]:
        return np.arange(n_top)
    block = matrix[np.sort(rows)]
    block = (
        block.tocsr().astype(np.float32) if sparse.issparse(block) else np.asarray(block, dtype=np.float32)
    )
    tmp = ad.AnnData(X=block)
    tmp.var_names = [str(n) for n in names]
    with keep_torch_threads(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if counts:
            sc.pp.normalize_total(tmp, target_sum=1e4)
            sc.pp.log1p(tmp)
        sc.pp.highly_variable_genes(tmp, n_top_genes=n_top, flavor="seurat")
    return np.sort(np.flatnonzero(tmp.var["highly_variable"].to_numpy()))[:n_top]
