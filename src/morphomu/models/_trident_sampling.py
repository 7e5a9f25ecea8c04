"""Trident's generation: keyed draws of noise and conditions, denoising in the image VAE's latent space, the tiles' AnnData."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from .. import _constants as C
from .._core import Stream, cell_keys, keyed_normal, sample_hashes
from ..module._trident import TridentModule

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["sample_latents", "synthetic_tiles"]


def sample_latents(
    module: TridentModule,
    drug: np.ndarray,
    g_pre: np.ndarray | None,
    names: Sequence[str],
    *,
    n_images: int,
    n_steps: int,
    sampler: str,
    guidance_scale: float,
    seed: int,
    batch_size: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Latents of ``n_images`` tiles per compound, in the image VAE's units, with each tile's compound and index.

    ``drug`` holds the compounds' features (one row per name) and ``g_pre`` one standardised expression
    profile (``None`` without RNA). A tile's noise and condition sample depend only on ``(seed, compound
    name, tile index)``, and each batch gets a fresh scheduler of ``sampler``, so a tile does not depend on
    ``batch_size``. Returns ``(latents, compound row, tile index)`` per tile.
    """
    module = module.eval()
    device = next(module.parameters()).device
    with torch.inference_mode():
        drug_t = torch.from_numpy(drug).to(device)
        g_t = None if g_pre is None else torch.from_numpy(np.repeat(g_pre, len(names), 0)).to(device)
        mu, logvar = module.encode_condition(drug_t, g_t)
    n = int(n_images)
    comp = np.repeat(np.arange(len(names)), n)
    idx = np.tile(np.arange(n), len(names))
    hashes = sample_hashes(names)[comp]
    shape = (
        module.dit.channels,
        module.dit.grid[0] * module.dit.patch_size,
        module.dit.grid[1] * module.dit.patch_size,
    )
    n_lat = int(np.prod(shape))
    noise_keys = cell_keys(seed, Stream.TRIDENT_NOISE, hashes, idx)
    z_keys = cell_keys(seed, Stream.TRIDENT_CONDITION, hashes, idx)
    out = np.empty((comp.size, *shape), dtype=np.float32)
    for start in range(0, comp.size, int(batch_size)):
        sl = slice(start, start + int(batch_size))
        rows = torch.from_numpy(comp[sl]).to(device)
        cond = mu[rows]
        if logvar is not None:  # paper's inference: z ~ q(z | G_pre, D)
            eps = torch.from_numpy(keyed_normal(z_keys[sl], mu.shape[1])).to(device)
            cond = cond + torch.exp(0.5 * logvar[rows]) * eps
        noise = torch.from_numpy(keyed_normal(noise_keys[sl], n_lat)).view(-1, *shape).to(device)
        x = module.sample(
            noise, cond, n_steps=int(n_steps), sampler=sampler, guidance_scale=float(guidance_scale)
        )
        out[sl] = x.float().cpu().numpy()
    latents = (
        out * module.latent_std.cpu().numpy()[:, None, None] + module.latent_mean.cpu().numpy()[:, None, None]
    )
    return latents, comp, idx


def synthetic_tiles(
    images: np.ndarray,
    smiles: Mapping[str, str],
    comp: np.ndarray,
    idx: np.ndarray,
    *,
    setup: Mapping[str, Any],
    record: dict[str, Any],
) -> AnnData:
    """The generated tiles as an AnnData: ``.obsm[images_key]``, obs treatment / SMILES (categoricals), synthetic.

    ``comp`` and ``idx`` are each tile's compound (a position in ``smiles``) and index; ``record`` goes to
    ``.uns['morphomu']['generate']``.
    """
    from anndata import AnnData

    names = list(smiles)
    obs = pd.DataFrame(
        {
            setup["treatment_key"]: pd.Categorical(np.asarray(names, dtype=object)[comp], categories=names),
            setup["smiles_key"]: pd.Categorical([smiles[names[c]] for c in comp]),
            C.SYNTHETIC_KEY: True,
        },
        index=[f"{names[c]}-synthetic-{i}" for c, i in zip(comp, idx, strict=True)],
    )
    adata = AnnData(obs=obs)
    adata.obsm[setup["images_key"]] = images
    adata.uns[C.UNS_KEY] = {"generate": record}
    return adata
