"""Trident's input contract: checks of the data (tiles, SMILES, controls, rounds) and of the arguments.

Also the arguments' preset defaults, which the checks complete.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._core import parent_mol
from .._errors import ContractError, MorphomuError
from .._validation import (
    check_args,
    check_fraction,
    check_mudata,
    check_n_steps,
    check_nonnegative,
    check_nonnegative_int,
    check_number,
    check_obs_keys,
    check_positive,
    check_positive_int,
    check_rep,
    check_sampler,
    check_unique_obs_names,
    get_mod,
    optional,
    sampler_steps_check,
)
from ..module._trident import TRIDENT_PRESETS

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = [
    "CHUNK_ROWS",
    "GENERATE_CHECKS",
    "SIZE_ARGS",
    "SIZE_CHECKS",
    "TRAIN_CHECKS",
    "TRAIN_DEFAULTS",
    "check_channels",
    "check_data",
    "check_tiles",
    "compound_smiles",
    "labels",
    "resolve_sizes",
]

#: Tiles (C x H x W each) or expression rows read at once: smaller than morphomu's ``CHUNK_ROWS`` because
#: a tile is ~100x wider than an embedding. Kept apart on purpose: the gene statistics are float64 sums per
#: chunk and tiles are encoded / decoded per chunk, so this value is part of a trained model's numbers.
CHUNK_ROWS = 4096
#: Training defaults per preset. ``paper``: the paper's AdamW at a constant 1e-4 (here after a short
#: warm-up, cosine-decayed), batch 32, 100,000 steps (~ epochs x images / 32).
TRAIN_DEFAULTS: dict[str, dict[str, float]] = {
    "paper": {"max_epochs": 1000, "batch_size": 32, "lr": 1e-4, "warmup_epochs": 1},
    "fast": {"max_epochs": 200, "batch_size": 64, "lr": 3e-4, "warmup_epochs": 1},
    "tiny": {"max_epochs": 50, "batch_size": 64, "lr": 1e-3, "warmup_epochs": 1},
}
#: Checks of the network sizes (preset values and overrides), run before anything is built.
SIZE_CHECKS: dict[str, Any] = {
    **dict.fromkeys(
        (
            "n_hidden",
            "n_layers",
            "n_heads",
            "patch_size",
            "ff_mult",
            "n_latent",
            "n_cond_hidden",
            "n_cond_tokens",
        ),
        check_positive_int,
    ),
    "dropout": check_fraction,
}
#: The size arguments of :class:`Trident` (``None``: the preset's value).
SIZE_ARGS = (*SIZE_CHECKS, "prediction_type")
#: Checks of :meth:`Trident.train`'s arguments (``None``: the preset's default), run before any work (the
#: image VAE's training included); :func:`morphomu.tl.generate_morphology` runs them on ``train_kwargs``.
TRAIN_CHECKS: dict[str, Any] = {
    "max_epochs": optional(check_positive_int),
    "batch_size": optional(check_positive_int),
    "lr": optional(check_positive),
    "vae_epochs": optional(check_nonnegative_int),
    "weight_decay": check_nonnegative,
    "warmup_epochs": optional(check_nonnegative),
    "early_stopping_patience": check_nonnegative_int,
    "ema_decay": check_fraction,
    "num_workers": check_nonnegative_int,
}
#: Checks of :meth:`Trident.generate`'s arguments, run before any work (also by the tools).
GENERATE_CHECKS: dict[Any, Any] = {
    "n_images": check_positive_int,
    "n_steps": check_n_steps,
    "sampler": check_sampler,
    "guidance_scale": check_number,
    "batch_size": check_positive_int,
    ("sampler", "n_steps"): sampler_steps_check("trident"),  # n_steps against sampler (see check_args)
}


def resolve_sizes(preset: str, given: dict[str, Any]) -> dict[str, Any]:
    """The network sizes: the preset's, overridden by the ``given`` ones (of :data:`SIZE_ARGS`) that are not ``None``, checked."""
    if preset not in TRIDENT_PRESETS:
        msg = f"preset={preset!r}: choose one of {sorted(TRIDENT_PRESETS)}."
        raise MorphomuError(msg)
    sizes = {**TRIDENT_PRESETS[preset], **{k: v for k, v in given.items() if v is not None}}
    sizes.update(check_args(sizes, SIZE_CHECKS))
    if sizes["prediction_type"] not in ("epsilon", "v_prediction"):
        msg = f"prediction_type={sizes['prediction_type']!r}: choose 'epsilon' (the paper) or 'v_prediction'."
        raise MorphomuError(msg)
    if sizes["n_hidden"] % sizes["n_heads"] or sizes["n_hidden"] % 4:
        msg = f"n_heads={sizes['n_heads']} and 4 must divide n_hidden={sizes['n_hidden']}."
        raise MorphomuError(msg)
    return sizes


def check_channels(mdata: Any, n_saved: int, *, image_mod: str, images_key: str) -> None:
    """Raise unless the tiles have the ``n_saved`` channels a model was trained on (0: not recorded)."""
    n_c = mdata.mod[image_mod].obsm[images_key].shape[1]
    if n_saved and n_saved != n_c:
        msg = f"mdata.mod[{image_mod!r}].obsm[{images_key!r}] has {n_c} channels; the model was trained on {n_saved}."
        raise ContractError(msg)


def labels(adata: AnnData, key: str | None, default: str = "all") -> np.ndarray:
    """Values of an obs column as strings (``default`` everywhere when the key is None)."""
    if key is None:
        return np.full(adata.n_obs, default, dtype=object)
    return adata.obs[key].astype(str).to_numpy()


def check_tiles(adata: AnnData, images_key: str, *, mod: str) -> Any:
    """The tile array of a modality, checked to be one numeric ``(n, C, H, W)`` array."""
    loc = f"mdata.mod[{mod!r}].obsm"
    if images_key not in adata.obsm:
        msg = (
            f"images_key={images_key!r} is not in {loc}; its keys are {sorted(adata.obsm.keys())}. Trident needs "
            f"image tiles (n x C x H x W) in {loc}[{images_key!r}]."
        )
        raise ContractError(msg)
    tiles = adata.obsm[images_key]
    dtype = getattr(tiles, "dtype", None)
    shape = tuple(getattr(tiles, "shape", ()))
    if (
        dtype is None
        or np.dtype(dtype).kind == "O"
        or not np.issubdtype(dtype, np.number)
        or np.issubdtype(dtype, np.complexfloating)
    ):
        msg = (
            f"{loc}[{images_key!r}] (images_key) must be one numeric array of tiles (n x C x H x W), found "
            f"{type(tiles).__name__} of dtype {dtype}; tiles of inconsistent shapes cannot be stacked: crop or "
            "resize them to one size."
        )
        raise ContractError(msg)
    if len(shape) != 4 or min(shape[1:]) < 1:
        msg = (
            f"{loc}[{images_key!r}] (images_key) must be 4-d (n x C x H x W: channels first, all channels kept), "
            f"found shape {shape}."
        )
        raise ContractError(msg)
    if np.issubdtype(dtype, np.floating):
        for start in range(0, shape[0], CHUNK_ROWS):
            block = np.asarray(tiles[start : start + CHUNK_ROWS])
            if not np.isfinite(block).all():
                msg = f"{loc}[{images_key!r}] (images_key) has non-finite values (NaN or inf)."
                raise ContractError(msg)
    return tiles


def compound_smiles(
    img: AnnData, treatment_key: str, smiles_key: str, control: str, *, mod: str
) -> dict[str, str]:
    """Treated compound -> its one SMILES, from the imaging modality's obs (every compound needs one)."""
    check_obs_keys(img, {"treatment_key": treatment_key}, mod=mod)
    if smiles_key not in img.obs.columns:
        msg = (
            f"smiles_key={smiles_key!r} is not a column of mdata.mod[{mod!r}].obs; Trident featurises compounds from "
            f"their SMILES (columns: {list(img.obs.columns)[:20]})."
        )
        raise ContractError(msg)
    obs = pd.DataFrame(
        {"t": img.obs[treatment_key].astype(str).to_numpy(), "s": img.obs[smiles_key].to_numpy(dtype=object)}
    )
    obs = obs[obs["t"] != control]
    obs["s"] = obs["s"].map(lambda s: s.strip() if isinstance(s, str) and s.strip() else None)
    known = obs.dropna().drop_duplicates()
    several = known["t"][known["t"].duplicated()].unique()
    if len(several):
        t = several[0]
        msg = (
            f"treatment {t!r} has more than one SMILES in mdata.mod[{mod!r}].obs[{smiles_key!r}] "
            f"({sorted(known.loc[known['t'] == t, 's'])[:3]}); expected one structure per compound."
        )
        raise ContractError(msg)
    mapping = dict(zip(known["t"], known["s"], strict=True))
    missing = sorted(set(obs["t"]) - set(mapping))
    if missing:
        msg = (
            f"compounds {missing[:10]} have no SMILES in mdata.mod[{mod!r}].obs[{smiles_key!r}] (smiles_key); Trident "
            "featurises every treated compound from its structure. Fill the column (e.g. from "
            "mm.datasets.compounds()) or drop those cells."
        )
        raise ContractError(msg)
    return mapping


def check_data(
    mdata: Any,
    *,
    image_mod: str,
    rna_mod: str | None,
    images_key: str,
    rna_rep: str | None,
    treatment_key: str,
    control: str,
    smiles_key: str,
    round_key: str | None,
    tile_shape: tuple[int, ...] | None = None,
) -> dict[str, str]:
    """Every input check of Trident (nothing is written); returns treated compound -> SMILES."""
    check_mudata(mdata)
    if not isinstance(control, str) or not control:
        msg = f"control must be the name of the control treatment (str), got {control!r}."
        raise ContractError(msg)
    img = get_mod(mdata, image_mod, arg="image_mod")
    if img.n_obs == 0:
        msg = f"mdata.mod[{image_mod!r}] has no cells."
        raise ContractError(msg)
    tiles = check_tiles(img, images_key, mod=image_mod)
    if tile_shape is not None and tuple(tiles.shape[1:]) != tuple(tile_shape):
        msg = (
            f"mdata.mod[{image_mod!r}].obsm[{images_key!r}] has tiles of shape {tuple(tiles.shape[1:])}; this model "
            f"was trained on tiles of shape {tuple(tile_shape)} (C x H x W)."
        )
        raise ContractError(msg)
    check_obs_keys(img, {"treatment_key": treatment_key, "round_key": round_key}, mod=image_mod)
    img_treat = img.obs[treatment_key].astype(str)
    if control not in set(img_treat):
        msg = (
            f"control={control!r} is not a treatment of mdata.mod[{image_mod!r}].obs[{treatment_key!r}]; found "
            f"{sorted(set(img_treat))[:10]}. Trident needs control images (pass control=<name> if it is spelled "
            "differently)."
        )
        raise ContractError(msg)
    smiles = compound_smiles(img, treatment_key, smiles_key, control, mod=image_mod)
    for name, smi in smiles.items():
        parent_mol(smi, name=name)  # names the compound when RDKit cannot parse its SMILES
    if rna_mod is None:
        check_unique_obs_names(mdata)
        return smiles
    rna = get_mod(mdata, rna_mod, arg="rna_mod")
    if rna.n_obs == 0:
        msg = f"mdata.mod[{rna_mod!r}] has no cells."
        raise ContractError(msg)
    check_obs_keys(rna, {"treatment_key": treatment_key, "round_key": round_key}, mod=rna_mod)
    check_rep(rna, rna_rep, mod=rna_mod, arg="rna_rep")
    rna_treat = labels(rna, treatment_key)
    if not (rna_treat == control).any():
        msg = (
            f"control={control!r} is not a treatment of mdata.mod[{rna_mod!r}].obs[{treatment_key!r}]; G_pre (the "
            "pre-perturbation expression) is the control expression of each round, so control RNA cells are needed."
        )
        raise ContractError(msg)
    img_rounds = set(labels(img, round_key))
    control_rounds = set(labels(rna, round_key)[rna_treat == control])
    lacking = sorted(img_rounds - control_rounds)
    if lacking:
        msg = (
            f"rounds {lacking} (obs[{round_key!r}], round_key) have images in mdata.mod[{image_mod!r}] but no control "
            f"({control!r}) RNA cells in mdata.mod[{rna_mod!r}]; G_pre of a round is its control expression."
        )
        raise ContractError(msg)
    check_unique_obs_names(mdata)
    return smiles
