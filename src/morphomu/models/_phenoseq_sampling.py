"""PhenoSeq's generation: each generated cell's keyed draws, the denoising in batches, and its obs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from .. import _constants as C
from .._core import (
    Standardizer,
    Stream,
    cell_keys,
    group_means,
    keyed_normal,
    keyed_uniform,
    read_rows,
    rep_matrix,
    sample_hashes,
    step_stream,
)

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["cell_layout", "generated_rna", "sample_cells", "synthetic_obs"]


def cell_layout(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per generated cell: its sample's position and its index within the sample (``counts`` per sample)."""
    cell_sample = np.repeat(np.arange(len(counts)), counts)
    cell_index = (
        np.concatenate([np.arange(c) for c in counts]) if len(counts) else np.zeros(0, dtype=np.int64)
    )
    return cell_sample, cell_index


def sample_cells(
    module: Any,
    img: AnnData,
    *,
    image_rep: str | None,
    sample_key: str,
    names: pd.Index,
    counts: np.ndarray,
    image_scaler: Standardizer,
    n_context_cells: int,
    context: str,
    n_steps: int,
    sampler: str,
    eta: float,
    guidance_scale: float,
    seed: int,
    batch_size: int,
) -> np.ndarray:
    """Denoise ``counts[i]`` cells for each sample ``names[i]`` from its imaging cells (standardised units).

    Each cell's noise, context set and DDIM step noise are keyed by ``(seed, sample, cell index)``, and
    each batch is denoised by a fresh scheduler of ``sampler`` (the multistep solvers carry their past
    predictions between steps, row by row), so a cell does not depend on ``batch_size`` or on which other
    samples are generated.
    """
    n_rna = module.n_rna_features
    device = next(module.parameters()).device
    img_codes = names.get_indexer(img.obs[sample_key].astype(str).to_numpy())
    hashes = sample_hashes(names)
    cell_sample, cell_index = cell_layout(counts)
    draw_keys = {
        p: cell_keys(seed, p, hashes[cell_sample], cell_index)
        for p in (Stream.PHENOSEQ_NOISE, Stream.PHENOSEQ_CONTEXT)
    }

    if context == "mean":
        means = image_scaler.transform(group_means(rep_matrix(img, image_rep), img_codes, len(names)))
        with torch.inference_mode():
            tokens = module.encode_context(torch.from_numpy(means).to(device)[:, None, :])
            sample_cache = module.cross_cache(tokens)
    else:
        rows = np.flatnonzero(img_codes >= 0)
        rows = rows[np.argsort(img_codes[rows], kind="stable")]
        offsets = np.searchsorted(img_codes[rows], np.arange(len(names) + 1))
        img_x = torch.from_numpy(image_scaler.transform(read_rows(rep_matrix(img, image_rep), rows)))
        n_per = np.diff(offsets)

    out = np.empty((cell_sample.size, n_rna), dtype=np.float32)
    for start in range(0, cell_sample.size, int(batch_size)):
        sl = slice(start, start + int(batch_size))
        codes = cell_sample[sl]
        noise = torch.from_numpy(keyed_normal(draw_keys[Stream.PHENOSEQ_NOISE][sl], n_rna)).to(device)
        if context == "mean":
            cache = sample_cache.take(torch.from_numpy(codes).to(device))
        else:
            u = keyed_uniform(draw_keys[Stream.PHENOSEQ_CONTEXT][sl], n_context_cells)
            pick = offsets[codes][:, None] + np.minimum(
                (u * n_per[codes][:, None]).astype(np.int64), n_per[codes][:, None] - 1
            )
            with torch.inference_mode():
                cache = module.cross_cache(module.encode_context(img_x[torch.from_numpy(pick)].to(device)))
        step_keys = (hashes[codes], cell_index[sl])

        def variance_noise(step: int, keys: tuple = step_keys) -> torch.Tensor:
            k = cell_keys(seed, step_stream(Stream.PHENOSEQ_STEP_NOISE, step), *keys)
            return torch.from_numpy(keyed_normal(k, n_rna)).to(device)

        x = module.sample(
            noise,
            cache,
            n_steps=int(n_steps),
            sampler=sampler,
            eta=float(eta),
            guidance_scale=float(guidance_scale),
            variance_noise=variance_noise,
        )
        out[sl] = x.float().cpu().numpy()
    return out


def synthetic_obs(img: AnnData, names: pd.Index, a: dict[str, Any], cell_sample: np.ndarray) -> pd.DataFrame:
    """Per generated cell: the sample's metadata (from the imaging modality) and ``synthetic=True``."""
    keys = [a["sample_key"], a["treatment_key"], a["replicate_key"], a["round_key"], a["split_key"]]
    keys = list(dict.fromkeys(k for k in keys if k in img.obs.columns))
    meta = img.obs[keys].copy()
    meta[a["sample_key"]] = meta[a["sample_key"]].astype(str)
    first = meta.drop_duplicates(a["sample_key"]).set_index(a["sample_key"], drop=False).reindex(names)
    obs = first.iloc[cell_sample].reset_index(drop=True)
    obs[a["sample_key"]] = pd.Categorical(obs[a["sample_key"]], categories=list(names))
    obs[C.SYNTHETIC_KEY] = True
    return obs


def generated_rna(
    values: np.ndarray, mdata: Any, a: dict[str, Any], names: pd.Index, counts: np.ndarray
) -> AnnData:
    """Generated RNA cells as an AnnData: ``values`` in ``.X`` and ``.obsm[rna_rep]``, the samples' obs.

    ``a`` holds the setup keys; obs names are ``{sample}-synthetic-{index}``; the var names are the RNA
    modality's genes for ``rna_rep=None`` (when it is present), else ``{rna_rep}_{i}``.
    """
    from anndata import AnnData

    cell_sample, cell_index = cell_layout(counts)
    obs = synthetic_obs(mdata.mod[a["image_mod"]], names, a, cell_sample)
    obs.index = [
        f"{s}-synthetic-{i}" for s, i in zip(obs[a["sample_key"]].astype(str), cell_index, strict=True)
    ]
    rna_rep = a["rna_rep"]
    var_names = (
        mdata.mod[a["rna_mod"]].var_names.astype(str)
        if rna_rep is None and a["rna_mod"] in mdata.mod
        else pd.Index([f"{rna_rep or 'X'}_{i}" for i in range(values.shape[1])])
    )
    adata = AnnData(X=values, obs=obs, var=pd.DataFrame(index=var_names))
    if rna_rep is not None:
        adata.obsm[rna_rep] = values.copy()
    return adata
