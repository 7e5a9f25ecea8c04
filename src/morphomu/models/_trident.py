"""TRIDENT: RNA + compound -> Cell Painting morphology (scvi-tools model: setup, train, generate, save, load)."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import torch
from scipy import sparse
from scvi.data import AnnDataManager, AnnDataManagerValidationCheck, fields
from scvi.train import TrainRunner

from .. import _constants as C
from .._core import (
    Stream,
    cell_keys,
    expression_rows,
    featurize_smiles,
    keyed_normal,
    parent_mol,
    sample_hashes,
)
from .._errors import ContractError, MorphomuError
from .._threads import keep_torch_threads
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
    check_unique_obs_names,
    get_mod,
    optional,
)
from ..module._trident import TRIDENT_PRESETS, TridentModule
from ..train._ema import ExponentialMovingAverage
from ..train._trident_data import TridentDataModule, TridentTrainingPlan
from ._base import MorphomuModel, feature_field
from ._training import EMATrainingMixin, train_docstring

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

__all__ = ["Trident"]

logger = logging.getLogger(__name__)

_IMAGES_FIELD = "images"
_RNA_FIELD = "rna"
#: Sub-directory of a saved Trident that holds its image VAE (so that loading needs no download).
IMAGE_VAE_DIR = "image_vae"
#: Training defaults per preset. ``paper``: the paper's AdamW at a constant 1e-4 (here after a short
#: warm-up, cosine-decayed), batch 32, 100,000 steps (~ epochs x images / 32).
TRAIN_DEFAULTS: dict[str, dict[str, float]] = {
    "paper": {"max_epochs": 1000, "batch_size": 32, "lr": 1e-4, "warmup_epochs": 1},
    "fast": {"max_epochs": 200, "batch_size": 64, "lr": 3e-4, "warmup_epochs": 1},
    "tiny": {"max_epochs": 50, "batch_size": 64, "lr": 1e-3, "warmup_epochs": 1},
}
#: Tiles (C x H x W each) or expression rows read at once: smaller than morphomu's ``CHUNK_ROWS`` because
#: a tile is ~100x wider than an embedding. Kept apart on purpose: the gene statistics are float64 sums per
#: chunk and tiles are encoded / decoded per chunk, so this value is part of a trained model's numbers.
_CHUNK_ROWS = 4096
#: Checks of the network sizes (preset values and overrides), run before anything is built.
_SIZE_CHECKS: dict[str, Any] = {
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
#: Checks of :meth:`Trident.generate`'s numeric arguments, run before any work (also by the tools).
GENERATE_CHECKS: dict[str, Any] = {
    "n_images": check_positive_int,
    "n_steps": check_n_steps,
    "guidance_scale": check_number,
    "batch_size": check_positive_int,
}
def _image_vae_cls() -> type:
    from ._image_vae import ImageVAE

    return ImageVAE


# ---------------------------------------------------------------------------------------------------
# data helpers (no writes)
# ---------------------------------------------------------------------------------------------------
def _labels(adata: AnnData, key: str | None, default: str = "all") -> np.ndarray:
    """Values of an obs column as strings (``default`` everywhere when the key is None)."""
    if key is None:
        return np.full(adata.n_obs, default, dtype=object)
    return adata.obs[key].astype(str).to_numpy()


def _tiles(adata: AnnData, images_key: str, *, mod: str) -> Any:
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
        for start in range(0, shape[0], _CHUNK_ROWS):
            block = np.asarray(tiles[start : start + _CHUNK_ROWS])
            if not np.isfinite(block).all():
                msg = f"{loc}[{images_key!r}] (images_key) has non-finite values (NaN or inf)."
                raise ContractError(msg)
    return tiles


def _compound_smiles(
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


def _is_counts(matrix: Any) -> bool:
    """Whether a (sparse or dense) matrix looks like raw counts: non-negative integers (checked on a chunk)."""
    block = matrix[: min(matrix.shape[0], 2048)]
    block = block.data if sparse.issparse(block) else np.asarray(block)
    return bool(block.size == 0 or ((block >= 0).all() and np.allclose(block, np.round(block))))


# ---------------------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------------------
def _check_data(
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
    tiles = _tiles(img, images_key, mod=image_mod)
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
    smiles = _compound_smiles(img, treatment_key, smiles_key, control, mod=image_mod)
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
    rna_treat = _labels(rna, treatment_key)
    if not (rna_treat == control).any():
        msg = (
            f"control={control!r} is not a treatment of mdata.mod[{rna_mod!r}].obs[{treatment_key!r}]; G_pre (the "
            "pre-perturbation expression) is the control expression of each round, so control RNA cells are needed."
        )
        raise ContractError(msg)
    img_rounds = set(_labels(img, round_key))
    control_rounds = set(_labels(rna, round_key)[rna_treat == control])
    lacking = sorted(img_rounds - control_rounds)
    if lacking:
        msg = (
            f"rounds {lacking} (obs[{round_key!r}], round_key) have images in mdata.mod[{image_mod!r}] but no control "
            f"({control!r}) RNA cells in mdata.mod[{rna_mod!r}]; G_pre of a round is its control expression."
        )
        raise ContractError(msg)
    check_unique_obs_names(mdata)
    return smiles


class Trident(EMATrainingMixin, MorphomuModel):
    """Generate Cell Painting images from a compound and the cells' expression (TRIDENT).

    A conditional latent diffusion model (Peng et al., "TRIDENT: a trimodal cascade generative framework
    for drug and RNA-conditioned cellular morphology synthesis"): a condition VAE encodes the control
    expression ``G_pre`` of a round and the compound's features ``D`` (Morgan fingerprints of its SMILES)
    into ``z`` and decodes the post-perturbation expression ``G_post`` from it; a diffusion transformer
    over image-VAE latents, conditioned on ``z`` and the timestep, generates the images. Both are trained
    jointly (``L_VAE + L_LDM``) on cached latents of a frozen image VAE (:class:`morphomu.models.ImageVAE`).

    Conditions are per (compound, round): ``G_post`` is the mean expression of the compound's RNA cells of
    that round and ``G_pre`` the mean of the round's control cells, both over ``rna_rep`` (by default the
    log-normalised highly variable genes of ``.X``). Compounds are featurised from SMILES, so new
    structures can be generated for.

    Parameters
    ----------
    mdata
        MuData registered with :meth:`setup_mudata`.
    preset
        ``'paper'`` (DiT-XL/2: 28 layers, width 1152, 16 heads, patch 2, for 512 px tiles through Stable
        Diffusion's VAE layout), ``'fast'`` (CPU-sized) or ``'tiny'`` (tests). The sizes below override it.
    use_rna
        Condition on expression through the condition VAE (the paper). ``False`` is the paper's ablation:
        no condition VAE at all, the compound embedding alone conditions the generator.
    p_uncond
        Probability of replacing an item's condition by a learned null condition during training; > 0
        enables classifier-free guidance (``guidance_scale`` in :meth:`generate`).
    image_vae
        The image autoencoder: ``None`` (an :class:`~morphomu.models.ImageVAE` of the same preset is built
        on the training tiles and trained by :meth:`train` first), an :class:`~morphomu.models.ImageVAE`, or
        a directory (``ImageVAE.from_pretrained``: a diffusers ``AutoencoderKL`` or an ``ImageVAE.save``).
        It is frozen while Trident trains and saved with the model.
    conditioning
        ``'cross_attention'`` (the paper: patches cross-attend to condition tokens ``proj(z) + time``) or
        ``'adaln_zero'`` (DiT: the condition modulates every block).
    beta
        Weight of the KL term of the condition VAE.
    n_top_genes
        With ``rna_rep=None``: number of highly variable genes (Seurat flavour, on the training RNA cells)
        that ``G_pre`` / ``G_post`` cover.
    drug_features
        Compound featurisation (:func:`morphomu.pp.featurize_smiles`): ``'morgan'`` (ECFP), ``'fcfp'``.
    n_bits
        Fingerprint length.
    n_hidden, n_layers, n_heads, patch_size, ff_mult, dropout
        Diffusion transformer sizes.
    n_latent
        Size of the condition VAE's ``z``.
    n_cond_hidden
        Width of the condition VAE's encoders / decoder (and of the drug encoder without RNA).
    n_cond_tokens
        Condition tokens the patches cross-attend to.
    prediction_type
        ``'epsilon'`` (the paper; default of ``paper``) or ``'v_prediction'`` (default of ``fast`` and ``tiny``:
        far better conditioned at high noise for small networks and short training, see
        :data:`morphomu.module._trident.TRIDENT_PRESETS`).
    data_info
        What a trained model keeps of its data (``data_info_``: tile shape, SMILES, genes and their
        statistics); given by :meth:`load`, so that a loaded model is rebuilt as it was trained, whatever
        data it is attached to. Computed from ``mdata`` when ``None``.

    Examples
    --------
    >>> import morphomu as mm
    >>> mdata = mm.datasets.simulate_scgenescope(
    ...     n_img_cells=2000, n_rna_cells=2000, with_images=True, image_size=32
    ... )
    >>> mm.pp.assign_split(mdata)
    >>> mm.models.Trident.setup_mudata(mdata)
    >>> model = mm.models.Trident(mdata, preset="tiny")  # doctest: +SKIP
    >>> model.train(max_epochs=20, vae_epochs=5)  # doctest: +SKIP
    >>> images = model.generate(compounds=["Colchicine"], n_images=8)  # doctest: +SKIP
    >>> new = model.generate(compounds={"aspirin": "CC(=O)Oc1ccccc1C(=O)O"})  # doctest: +SKIP
    """

    _module_cls = TridentModule
    _training_plan_cls = TridentTrainingPlan
    _data_splitter_cls = TridentDataModule
    _train_runner_cls = TrainRunner

    def __init__(
        self,
        mdata: MuData,
        *,
        preset: Literal["paper", "fast", "tiny"] = "fast",
        use_rna: bool = True,
        p_uncond: float = 0.1,
        image_vae: Any = None,
        conditioning: Literal["cross_attention", "adaln_zero"] = "cross_attention",
        beta: float = 1.0,
        n_top_genes: int = 1000,
        drug_features: Literal["morgan", "fcfp"] = "morgan",
        n_bits: int = 2048,
        n_hidden: int | None = None,
        n_layers: int | None = None,
        n_heads: int | None = None,
        patch_size: int | None = None,
        ff_mult: int | None = None,
        dropout: float | None = None,
        n_latent: int | None = None,
        n_cond_hidden: int | None = None,
        n_cond_tokens: int | None = None,
        prediction_type: Literal["epsilon", "v_prediction"] | None = None,
        data_info: dict[str, Any] | None = None,
    ) -> None:
        if preset not in TRIDENT_PRESETS:
            msg = f"preset={preset!r}: choose one of {sorted(TRIDENT_PRESETS)}."
            raise MorphomuError(msg)
        given = {
            "n_hidden": n_hidden,
            "n_layers": n_layers,
            "n_heads": n_heads,
            "patch_size": patch_size,
            "ff_mult": ff_mult,
            "dropout": dropout,
            "n_latent": n_latent,
            "n_cond_hidden": n_cond_hidden,
            "n_cond_tokens": n_cond_tokens,
            "prediction_type": prediction_type,
        }
        sizes = {**TRIDENT_PRESETS[preset], **{k: v for k, v in given.items() if v is not None}}
        sizes.update(check_args(sizes, _SIZE_CHECKS))
        if sizes["prediction_type"] not in ("epsilon", "v_prediction"):
            msg = f"prediction_type={sizes['prediction_type']!r}: choose 'epsilon' (the paper) or 'v_prediction'."
            raise MorphomuError(msg)
        if sizes["n_hidden"] % sizes["n_heads"] or sizes["n_hidden"] % 4:
            msg = f"n_heads={sizes['n_heads']} and 4 must divide n_hidden={sizes['n_hidden']}."
            raise MorphomuError(msg)
        p_uncond = check_fraction(p_uncond, "p_uncond")
        beta = check_nonnegative(beta, "beta")
        n_top_genes = check_positive_int(n_top_genes, "n_top_genes")
        n_bits = check_positive_int(n_bits, "n_bits")
        if conditioning not in ("cross_attention", "adaln_zero"):
            msg = f"conditioning={conditioning!r}: choose 'cross_attention' (TRIDENT) or 'adaln_zero' (DiT)."
            raise MorphomuError(msg)
        if drug_features not in ("morgan", "fcfp"):
            msg = f"drug_features={drug_features!r}: choose 'morgan' (ECFP) or 'fcfp'."
            raise MorphomuError(msg)
        super().__init__(mdata)
        a = self.setup_args
        if use_rna and a["rna_mod"] is None:
            msg = "use_rna=True needs an RNA modality: register the data with rna_mod=<name> (or use use_rna=False)."
            raise MorphomuError(msg)
        self.preset, self.sizes, self.use_rna = preset, sizes, bool(use_rna)
        self.p_uncond, self.conditioning = float(p_uncond), conditioning
        self.drug_features, self.n_bits = drug_features, int(n_bits)
        loading = data_info is not None
        self.data_info_ = data_info if loading else self._summarize_data(n_top_genes=int(n_top_genes))
        vae = self._resolve_image_vae(image_vae)
        self._image_vae = vae
        info = self.data_info_
        c, h, w = info["tile_shape"]
        f = int(vae.downsample_factor)
        if h % f or w % f or (h // f) % sizes["patch_size"] or (w // f) % sizes["patch_size"]:
            msg = (
                f"tiles of {h} x {w} px through an image VAE with downsampling factor {f} give {h // f} x {w // f} "
                f"latents, which patch_size={sizes['patch_size']} must divide (and f must divide the tile size); "
                "crop the tiles or choose another patch_size."
            )
            raise MorphomuError(msg)
        self.module = self._module_cls(
            len(info["genes"]),
            self.n_bits,
            int(vae.latent_channels),
            h // f,
            w // f,
            use_rna=self.use_rna,
            classifier_free=p_uncond > 0,
            conditioning=conditioning,
            beta=float(beta),
            **sizes,
        )
        if not loading and self.use_rna:
            with torch.no_grad():
                self.module.gene_mean.copy_(torch.from_numpy(info["gene_mean"]))
                self.module.gene_std.copy_(torch.from_numpy(info["gene_std"]))
        self._ema: ExponentialMovingAverage | None = None
        self._raw_state: dict[str, torch.Tensor] | None = None
        n_params = sum(p.numel() for p in self.module.parameters())
        self._model_summary_string = (
            f"Trident ({preset} preset) with {n_params:,} parameters: {c}-channel {h} x {w} tiles -> "
            f"{int(vae.latent_channels)} x {h // f} x {w // f} latents, "
            + (f"{len(info['genes'])} expression features, " if self.use_rna else "no RNA (drug only), ")
            + ", ".join(f"{k}={v}" for k, v in sizes.items())
            + f", conditioning={conditioning}, p_uncond={p_uncond}."
        )
        init = self._get_init_params(locals())
        # both are saved beside the model (image_vae/, data_info_) and given back by load
        init["non_kwargs"]["image_vae"] = init["non_kwargs"]["data_info"] = None
        self.init_params_ = init

    # ------------------------------------------------------------------ setup
    @classmethod
    def setup_mudata(
        cls,
        mdata: MuData,
        *,
        image_mod: str = C.IMAGE_MOD,
        rna_mod: str | None = C.RNA_MOD,
        images_key: str = C.IMAGES_KEY,
        rna_rep: str | None = None,
        treatment_key: str = C.TREATMENT_KEY,
        control: str = C.CONTROL,
        smiles_key: str = C.SMILES_KEY,
        round_key: str | None = C.ROUND_KEY,
        split_key: str = C.SPLIT_KEY,
        compound_split_key: str = C.COMPOUND_SPLIT_KEY,
        **kwargs: Any,
    ) -> None:
        """Register a MuData of image tiles and RNA cells under compound treatments (paired by treatment and round).

        Checks everything before registering: the tiles are one numeric ``n x C x H x W`` array, every treated
        compound has one parseable SMILES, the control is present in both modalities, and every round with
        images has control RNA cells (``G_pre``).

        Parameters
        ----------
        mdata
            The experiment.
        image_mod
            Imaging modality, with tiles in ``.obsm[images_key]``.
        rna_mod
            RNA modality; ``None`` for image-only data (then only ``use_rna=False`` models).
        images_key
            ``.obsm`` key of the tiles (``n x C x H x W``, any number of channels, any numeric dtype).
        rna_rep
            Expression representation: ``None`` for the log-normalised highly variable genes of ``.X``
            (counts are normalised to 10,000 per cell and ``log1p``-ed on the fly; non-integer ``.X`` is taken
            as already log-normalised), or an ``.obsm`` key (an embedding).
        treatment_key
            obs column (both modalities) with the compound name.
        control
            The control treatment (vehicle).
        smiles_key
            obs column of the imaging modality with each compound's SMILES.
        round_key
            obs column (both modalities) with the experimental round; ``None`` for one round.
        split_key
            obs column with ``train`` / ``val`` labels (by replicate or well, see
            :func:`morphomu.pp.assign_split`): training images and RNA cells, validation images.
        compound_split_key
            obs column marking compounds ``id`` (trained on) or ``ood`` (held out entirely,
            :func:`morphomu.pp.assign_compound_split`); when absent every compound is trained on.
        **kwargs
            Passed to scvi-tools' registration (``source_registry`` when loading).
        """
        setup_method_args = cls._get_setup_method_args(**locals())
        _check_data(
            mdata,
            image_mod=image_mod,
            rna_mod=rna_mod,
            images_key=images_key,
            rna_rep=rna_rep,
            treatment_key=treatment_key,
            control=control,
            smiles_key=smiles_key,
            round_key=round_key,
        )
        source = kwargs.get("source_registry")
        if source is not None:
            regs = source["field_registries"]
            saved_c = len(regs[_IMAGES_FIELD]["state_registry"].get("column_names", []))
            n_c = mdata.mod[image_mod].obsm[images_key].shape[1]
            if saved_c and saved_c != n_c:
                msg = f"mdata.mod[{image_mod!r}].obsm[{images_key!r}] has {n_c} channels; the model was trained on {saved_c}."
                raise ContractError(msg)
        field_list = [fields.MuDataObsmField(_IMAGES_FIELD, images_key, mod_key=image_mod, mod_required=True)]
        if rna_mod is not None:
            field_list.append(feature_field(_RNA_FIELD, rna_rep, rna_mod))
        manager = AnnDataManager(
            fields=field_list,
            setup_method_args=setup_method_args,
            validation_checks=AnnDataManagerValidationCheck(check_fully_paired_mudata=False),
        )
        manager.register_fields(mdata, **kwargs)
        cls.register_manager(manager)

    @classmethod
    def setup_anndata(cls, *args: Any, **kwargs: Any) -> None:
        """Not available: Trident needs a MuData (images + RNA); use :meth:`setup_mudata`."""
        msg = "Trident pairs images with RNA by treatment and round: use Trident.setup_mudata(mdata, ...)."
        raise MorphomuError(msg)

    # ------------------------------------------------------------------ data summary (at creation)
    def _training_compounds(self, img: AnnData) -> set[str]:
        """Compounds trained on: ``id`` in ``compound_split_key`` when the column exists, else all (+ control)."""
        a = self.setup_args
        treat = _labels(img, a["treatment_key"])
        key = a["compound_split_key"]
        if key in img.obs.columns:
            in_dist = treat[img.obs[key].astype(str).to_numpy() == C.COMPOUND_SPLITS[0]]
            return set(in_dist) | {a["control"]}
        return set(treat)

    def _rna_rows(self, rna: AnnData, compounds: set[str]) -> np.ndarray:
        """RNA cells behind the conditions: training compounds (+ control), ``train`` / ``val`` split when labelled."""
        a = self.setup_args
        keep = np.isin(_labels(rna, a["treatment_key"]), list(compounds))
        if a["split_key"] in rna.obs.columns:
            keep &= np.isin(rna.obs[a["split_key"]].astype(str).to_numpy(), [C.TRAIN, C.VAL])
        return np.flatnonzero(keep)

    def _summarize_data(self, *, n_top_genes: int) -> dict[str, Any]:
        """What the model keeps of the data: tiles' shape/dtype/range, SMILES, genes and their statistics."""
        a = self.setup_args
        mdata = self.adata
        img = mdata.mod[a["image_mod"]]
        tiles = img.obsm[a["images_key"]]
        dtype = np.dtype(tiles.dtype)
        if np.issubdtype(dtype, np.integer):
            low, high = float(np.iinfo(dtype).min), float(np.iinfo(dtype).max)
        else:  # float tiles: the range seen in the data
            low, high = np.inf, -np.inf
            for start in range(0, tiles.shape[0], _CHUNK_ROWS):
                block = np.asarray(tiles[start : start + _CHUNK_ROWS])
                low, high = min(low, float(block.min())), max(high, float(block.max()))
        smiles = _compound_smiles(img, a["treatment_key"], a["smiles_key"], a["control"], mod=a["image_mod"])
        info: dict[str, Any] = {
            "tile_shape": tuple(int(s) for s in tiles.shape[1:]),
            "tile_dtype": str(dtype),
            "tile_range": (low, high),
            "smiles": smiles,
            "control": a["control"],
            "genes": [],
            "counts": False,
        }
        if not self.use_rna:
            info["gene_mean"] = info["gene_std"] = np.zeros(0, np.float32)
            return info
        rna = mdata.mod[a["rna_mod"]]
        rows = self._rna_rows(rna, self._training_compounds(img))
        if rows.size == 0:
            msg = (
                f"mdata.mod[{a['rna_mod']!r}] has no RNA cells of the training compounds in the train/val splits "
                f"(obs[{a['split_key']!r}]); conditions need them."
            )
            raise ContractError(msg)
        rep = a["rna_rep"]
        matrix = rna.X if rep is None else rna.obsm[rep]
        if rep is None:
            counts = _is_counts(matrix)
            genes = self._highly_variable(matrix, rows, counts=counts, names=rna.var_names, n_top=n_top_genes)
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
        for start in range(0, rows.size, _CHUNK_ROWS):
            x = expression_rows(matrix, rows[start : start + _CHUNK_ROWS], counts=counts, genes=genes).astype(
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

    @staticmethod
    def _highly_variable(
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
            block.tocsr().astype(np.float32)
            if sparse.issparse(block)
            else np.asarray(block, dtype=np.float32)
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

    # ------------------------------------------------------------------ image VAE
    def _resolve_image_vae(self, image_vae: Any) -> Any:
        a = self.setup_args
        cls = _image_vae_cls()
        n_channels = self.data_info_["tile_shape"][0]
        if image_vae is None:
            return self._new_image_vae(cls)
        if isinstance(image_vae, str | Path):
            return cls.from_pretrained(image_vae, n_channels=n_channels)
        if isinstance(image_vae, cls):
            if int(image_vae.n_channels) != n_channels:
                msg = (
                    f"image_vae has {image_vae.n_channels} channels but the tiles in mdata.mod[{a['image_mod']!r}]"
                    f".obsm[{a['images_key']!r}] have {n_channels}."
                )
                raise MorphomuError(msg)
            return image_vae
        msg = f"image_vae must be None, an ImageVAE or a directory path, got {type(image_vae).__name__}."
        raise MorphomuError(msg)

    def _new_image_vae(self, cls: type) -> Any:
        """An untrained ImageVAE of this preset on a copy of the training compounds' train/val tiles."""
        import anndata as ad

        a = self.setup_args
        img = self.adata.mod[a["image_mod"]]
        rows = np.flatnonzero(np.isin(_labels(img, a["treatment_key"]), list(self._training_compounds(img))))
        split = a["split_key"]
        if split in img.obs.columns:
            rows = rows[np.isin(img.obs[split].astype(str).to_numpy()[rows], [C.TRAIN, C.VAL])]
            obs = pd.DataFrame(
                {split: img.obs[split].astype(str).to_numpy()[rows]}, index=img.obs_names[rows]
            )
        else:
            obs = pd.DataFrame(index=img.obs_names[rows])
        if rows.size == 0:
            msg = f"mdata.mod[{a['image_mod']!r}] has no train/val tiles of the training compounds for the image VAE."
            raise ContractError(msg)
        tiles = ad.AnnData(obs=obs, obsm={C.IMAGES_KEY: np.asarray(img.obsm[a["images_key"]][np.sort(rows)])})
        cls.setup_anndata(tiles, images_key=C.IMAGES_KEY, split_key=split)
        return cls(tiles, preset=self.preset)

    @property
    def image_vae(self) -> Any:
        """The image autoencoder (:class:`~morphomu.models.ImageVAE`) whose latent space Trident generates in."""
        return self._image_vae

    @property
    def genes(self) -> pd.Index:
        """The expression features ``G_pre`` / ``G_post`` cover (gene names, or embedding columns)."""
        return pd.Index(self.data_info_["genes"])

    # ------------------------------------------------------------------ conditions
    def _drug_features(self, smiles: Mapping[str, str]) -> np.ndarray:
        """Fingerprints of compounds given by SMILES; the control (no compound) is all zeros."""
        control = self.data_info_["control"]
        names = list(smiles)
        given = {n: smiles[n] for n in names if n != control}
        out = np.zeros((len(names), self.n_bits), dtype=np.float32)
        if given:
            fp = featurize_smiles(given, method=self.drug_features, n_bits=self.n_bits)
            pos = {n: i for i, n in enumerate(names)}
            out[[pos[n] for n in fp.index]] = fp.to_numpy(np.float32)
        return out

    def _standardize_expression(self, values: np.ndarray) -> np.ndarray:
        m = self.module
        return (np.asarray(values, np.float32) - m.gene_mean.cpu().numpy()) / m.gene_std.cpu().numpy()

    def _conditions(
        self, img_rows: np.ndarray
    ) -> tuple[np.ndarray, dict[str, np.ndarray], list[tuple[str, str]], np.ndarray | None]:
        """Condition-table row per image, the tables (drug, standardised G_pre and G_post) and more.

        Also the (compound, round) pairs and the pooled training control profile (the default G_pre of
        generation; ``None`` without RNA). Nothing is written to the model.
        """
        a = self.setup_args
        info = self.data_info_
        control_profile = None
        img = self.adata.mod[a["image_mod"]]
        treat = _labels(img, a["treatment_key"])[img_rows]
        rounds = _labels(img, a["round_key"])[img_rows]
        keys = pd.MultiIndex.from_arrays([treat, rounds])
        uniq = keys.unique()
        code = uniq.get_indexer(keys)
        pairs = [(str(t), str(r)) for t, r in uniq]
        smiles = {t: info["smiles"].get(t, "") for t, _ in pairs}
        drug_by_name = dict(zip(smiles, self._drug_features(smiles), strict=True))
        tables = {"drug": np.stack([drug_by_name[t] for t, _ in pairs])}
        if self.use_rna:
            rna = self.adata.mod[a["rna_mod"]]
            rows = self._rna_rows(rna, self._training_compounds(img))
            rna_keys = pd.MultiIndex.from_arrays(
                [_labels(rna, a["treatment_key"])[rows], _labels(rna, a["round_key"])[rows]]
            )
            control = a["control"]
            wanted = pd.MultiIndex.from_tuples(pairs + [(control, r) for _, r in pairs]).unique()
            g_code = wanted.get_indexer(rna_keys)
            sums = np.zeros((len(wanted), len(info["genes"])))
            counts = np.bincount(g_code[g_code >= 0], minlength=len(wanted)).astype(np.float64)
            rep = a["rna_rep"]
            matrix = rna.X if rep is None else rna.obsm[rep]
            if isinstance(matrix, pd.DataFrame):
                matrix = matrix.to_numpy()
            used = rows[g_code >= 0]
            used_code = g_code[g_code >= 0]
            for start in range(0, used.size, _CHUNK_ROWS):
                x = expression_rows(
                    matrix,
                    used[start : start + _CHUNK_ROWS],
                    counts=info["counts"],
                    genes=info.get("gene_index"),
                )
                np.add.at(sums, used_code[start : start + _CHUNK_ROWS], x.astype(np.float64))
            missing = [wanted[i] for i in np.flatnonzero(counts == 0)]
            if missing:
                t, r = missing[0]
                msg = (
                    f"{len(missing)} (compound, round) pairs with training images have no RNA cells in "
                    f"mdata.mod[{a['rna_mod']!r}] (train/val split), e.g. treatment {t!r} in round {r!r}; G_post "
                    "(and G_pre, the round's control) need them. Mark such compounds 'ood' in "
                    f"obs[{a['compound_split_key']!r}] or train with use_rna=False."
                )
                raise ContractError(msg)
            means = self._standardize_expression(sums / counts[:, None])
            tables["g_post"] = means[wanted.get_indexer(pd.MultiIndex.from_tuples(pairs))]
            tables["g_pre"] = means[
                wanted.get_indexer(pd.MultiIndex.from_tuples([(control, r) for _, r in pairs]))
            ]
            # the default G_pre of generation: the pooled training control cells
            pooled = wanted.get_indexer(
                pd.MultiIndex.from_tuples([(control, r) for r in sorted(set(rounds))])
            )
            control_profile = (sums[pooled].sum(0) / counts[pooled].sum()).astype(np.float32)
        return code, tables, pairs, control_profile

    # ------------------------------------------------------------------ training
    def _image_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """Train and validation image rows (training compounds, by ``split_key``)."""
        a = self.setup_args
        img = self.adata.mod[a["image_mod"]]
        check_obs_keys(img, {"split_key": a["split_key"]}, mod=a["image_mod"])
        split = img.obs[a["split_key"]].astype(str).to_numpy()
        keep = np.isin(_labels(img, a["treatment_key"]), list(self._training_compounds(img)))
        train, val = np.flatnonzero(keep & (split == C.TRAIN)), np.flatnonzero(keep & (split == C.VAL))
        if train.size == 0:
            msg = (
                f"mdata.mod[{a['image_mod']!r}].obs[{a['split_key']!r}] (split_key) has no 'train' images of the training "
                f"compounds (found {sorted(set(split))}). Run mm.pp.assign_split first."
            )
            raise ContractError(msg)
        return train, val

    def _encode_tiles(self, rows: np.ndarray, *, batch_size: int) -> np.ndarray:
        """Image-VAE latents of tiles ``rows`` (chunked; float32)."""
        a = self.setup_args
        tiles = self.adata.mod[a["image_mod"]].obsm[a["images_key"]]
        out = None
        for start in range(0, rows.size, _CHUNK_ROWS):
            chunk = rows[start : start + _CHUNK_ROWS]
            order = np.argsort(chunk)
            block = np.asarray(tiles[chunk[order]])
            lat = np.asarray(self._image_vae.encode(block, batch_size=batch_size), dtype=np.float32)
            if out is None:
                out = np.empty((rows.size, *lat.shape[1:]), dtype=np.float32)
            out[start + order] = lat
        return out

    @train_docstring
    def train(
        self,
        max_epochs: int | None = None,
        *,
        batch_size: int | None = None,
        lr: float | None = None,
        vae_epochs: int | None = None,
        weight_decay: float = 0.0,
        warmup_epochs: float | None = None,
        early_stopping: bool = False,
        early_stopping_patience: int = 20,
        balance_compounds: bool = True,
        ema_decay: float = 0.9999,
        seed: int = 0,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        strategy: str | Any | None = None,
        precision: str | int | None = None,
        num_workers: int = 0,
        checkpoint_dir: str | os.PathLike | None = None,
        checkpoint_every_n_steps: int = 1000,
        ckpt_path: str | os.PathLike | None = None,
        **trainer_kwargs: Any,
    ) -> None:
        """Train the condition VAE and the diffusion transformer jointly on cached image latents.

        The image VAE is trained first when it is untrained (``vae_epochs``), then frozen: the train and
        validation tiles of the training compounds are encoded once, and each step draws latents with their
        (compound, round) conditions. AdamW with warm-up + cosine learning rate, gradient clipping 1.0 and an
        EMA of the weights (used by :meth:`generate` and :meth:`save`). The image VAE's training uses the same
        ``accelerator``, ``devices``, ``strategy``, ``precision`` and ``seed``, and checkpoints into
        ``checkpoint_dir/image_vae``.

        Parameters
        ----------
        max_epochs
            Passes over the training images; default 1000 (``paper``), 200 (``fast``), 50 (``tiny``).
        batch_size
            Images per step and device; default 32 (``paper``, as the paper), 64 otherwise.
        lr
            Peak learning rate; default 1e-4 (``paper``), 3e-4 (``fast``), 1e-3 (``tiny``).
        vae_epochs
            Epochs of image-VAE training when it is untrained (default: the ImageVAE preset's default).
        weight_decay
            AdamW weight decay (0 as DiT).
        warmup_epochs
            Epochs of linear warm-up.
        early_stopping
            Stop when the validation loss has not improved for ``early_stopping_patience`` epochs.
        early_stopping_patience
            Patience in epochs.
        balance_compounds
            Draw training images so that every (compound, round) condition is equally frequent, as the paper
            augments every compound to the same number of images (cytotoxic compounds leave few cells).
        ema_decay
            Final EMA decay.
        seed
            Seed of the draws (order, timesteps, noise, null-condition flags). Weight initialisation follows
            torch's global seed.
        {train_core}
        """
        self._run_training(
            {
                "max_epochs": max_epochs,
                "batch_size": batch_size,
                "lr": lr,
                "vae_epochs": vae_epochs,
                "weight_decay": weight_decay,
                "warmup_epochs": warmup_epochs,
                "early_stopping": early_stopping,
                "early_stopping_patience": early_stopping_patience,
                "balance_compounds": balance_compounds,
                "ema_decay": ema_decay,
                "seed": seed,
                "num_workers": num_workers,
            },
            accelerator=accelerator,
            devices=devices,
            strategy=strategy,
            precision=precision,
            checkpoint_dir=checkpoint_dir,
            checkpoint_every_n_steps=checkpoint_every_n_steps,
            ckpt_path=ckpt_path,
            trainer_kwargs=trainer_kwargs,
        )

    # training hooks (models/_training.py)
    def _train_args(self, args: dict[str, Any]) -> dict[str, Any]:
        check_args({k: args[k] for k in TRAIN_CHECKS if k in args}, TRAIN_CHECKS)
        defaults = TRAIN_DEFAULTS[self.preset]
        for key in ("max_epochs", "batch_size", "lr", "warmup_epochs"):
            if args[key] is None:
                args[key] = defaults[key]
        return args

    def _run_config(self, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "model": type(self).__name__,
            "preset": self.preset,
            **self.sizes,
            "use_rna": self.use_rna,
            "p_uncond": self.p_uncond,
            "max_epochs": int(args["max_epochs"]),
            "batch_size": int(args["batch_size"]),
            "lr": float(args["lr"]),
            "weight_decay": args["weight_decay"],
            "warmup_epochs": args["warmup_epochs"],
            "ema_decay": args["ema_decay"],
            "balance_compounds": bool(args["balance_compounds"]),
            "seed": int(args["seed"]),
        }

    def _make_datamodule(self, args: dict[str, Any]) -> TridentDataModule:
        """Train the image VAE if needed, encode the tiles once and serve (latent, condition) batches."""
        train_rows, val_rows = self._image_rows()
        rows = np.concatenate([train_rows, val_rows])
        code, tables, _, control_profile = self._conditions(rows)  # checks RNA coverage before any training
        if control_profile is not None:
            self.data_info_["control_profile"] = control_profile
        self._train_image_vae(args)
        batch_size = int(args["batch_size"])
        latents = self._encode_tiles(rows, batch_size=max(batch_size, 64))
        if not self.is_trained_:  # per-channel standardisation of the latents (train rows)
            fit = latents[: train_rows.size]
            with torch.no_grad():
                self.module.latent_mean.copy_(torch.from_numpy(fit.mean((0, 2, 3))))
                self.module.latent_std.copy_(torch.from_numpy(np.maximum(fit.std((0, 2, 3)), 1e-6)))
        m = self.module
        latents = (latents - m.latent_mean.cpu().numpy()[:, None, None]) / m.latent_std.cpu().numpy()[
            :, None, None
        ]
        return self._data_splitter_cls(
            latents=torch.from_numpy(latents),
            condition=torch.from_numpy(code.astype(np.int64)),
            tables={k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in tables.items()},
            train_rows=torch.arange(train_rows.size),
            val_rows=torch.arange(train_rows.size, rows.size),
            batch_size=batch_size,
            n_latent=int(self.sizes["n_latent"]),
            n_timesteps=len(self.module.alphas_cumprod),
            p_uncond=self.p_uncond,
            seed=args["seed"],
            balanced=bool(args["balance_compounds"]),
            num_workers=args["num_workers"],
        )

    def _train_image_vae(self, args: dict[str, Any]) -> None:
        """Train the image VAE first when it is untrained (``vae_epochs``), with this run's devices and seed."""
        vae = self._image_vae
        if vae.is_trained_:
            return
        if args["vae_epochs"] == 0:
            msg = "the image VAE is untrained and vae_epochs=0; give vae_epochs > 0 or a trained image_vae."
            raise MorphomuError(msg)
        checkpoint_dir, ckpt_path = args["checkpoint_dir"], args["ckpt_path"]
        vae.train(
            max_epochs=args["vae_epochs"],
            accelerator=args["accelerator"],
            devices=args["devices"],
            strategy=args["strategy"],
            precision=args["precision"],
            seed=args["seed"],
            checkpoint_dir=None if checkpoint_dir is None else Path(checkpoint_dir) / "image_vae",
            checkpoint_every_n_steps=args["checkpoint_every_n_steps"],
            ckpt_path=None if ckpt_path is None else "last",
            **{
                k: v
                for k, v in args["trainer_kwargs"].items()
                if k in ("enable_progress_bar", "logger", "enable_model_summary")
            },
        )

    def _trainer_defaults(self, args: dict[str, Any], datamodule: TridentDataModule) -> dict[str, Any]:
        has_val = datamodule.n_val > 0
        defaults: dict[str, Any] = {
            "gradient_clip_val": 1.0,
            "use_distributed_sampler": False,  # the data module shards by rank itself
            "early_stopping": bool(args["early_stopping"] and has_val),
            "early_stopping_monitor": "validation_loss",
            "early_stopping_patience": args["early_stopping_patience"],
        }
        if has_val:
            defaults["check_val_every_n_epoch"] = 1
        else:
            defaults["limit_val_batches"] = 0
        return defaults

    # ------------------------------------------------------------------ inference helpers
    def _check_trained(self) -> None:
        if not self.is_trained_:
            msg = "the model is not trained; call model.train() first (or Trident.load a trained one)."
            raise MorphomuError(msg)

    def _resolve_compounds(self, compounds: Any) -> dict[str, str]:
        """Name -> SMILES of the compounds to generate for (known names or a name -> SMILES mapping)."""
        known = self.data_info_["smiles"]
        control = self.data_info_["control"]
        if compounds is None:
            return dict(sorted(known.items()))
        if isinstance(compounds, Mapping):
            if not compounds:
                msg = "compounds is empty: give compound names or a mapping name -> SMILES."
                raise MorphomuError(msg)
            out = {}
            for name, smi in compounds.items():
                name = str(name)
                if name != control:
                    parent_mol(smi, name=name)
                out[name] = "" if name == control else str(smi)
            return out
        names = [compounds] if isinstance(compounds, str) else [str(c) for c in compounds]
        if not names:
            msg = "compounds is empty: give compound names or a mapping name -> SMILES."
            raise MorphomuError(msg)
        if len(set(names)) != len(names):
            msg = "compounds contains duplicates."
            raise MorphomuError(msg)
        unknown = [n for n in names if n not in known and n != control]
        if unknown:
            msg = (
                f"compounds {unknown[:5]} are not treatments of the training data (known: {sorted(known)[:10]} ...); "
                "for new compounds pass a mapping name -> SMILES, e.g. compounds={'aspirin': 'CC(=O)Oc1ccccc1C(=O)O'}."
            )
            raise ContractError(msg)
        return {n: ("" if n == control else known[n]) for n in names}

    def _g_pre(self, rna: Any) -> np.ndarray:
        """Standardised pre-perturbation profile (one row): given (raw units of ``rna_rep``) or the control mean."""
        genes = self.genes
        if rna is None:
            profile = self.data_info_.get("control_profile")
            if profile is None:
                msg = "no control profile was recorded (the model has not been trained); pass rna=."
                raise MorphomuError(msg)
            return self._standardize_expression(profile)[None]
        if isinstance(rna, pd.Series):
            missing = genes[~genes.isin(rna.index)]
            if len(missing):
                msg = (
                    f"rna (a Series) lacks {len(missing)} of the model's features, e.g. {list(missing[:5])}."
                )
                raise ContractError(msg)
            rna = rna.reindex(genes).to_numpy()
        values = np.asarray(rna, dtype=np.float64).ravel()
        if values.shape != (len(genes),) or not np.isfinite(values).all():
            msg = (
                f"rna must be one finite expression profile of {len(genes)} features (model.genes, in the raw units of "
                f"rna_rep: log-normalised expression for rna_rep=None), got shape {np.shape(rna)}."
            )
            raise ContractError(msg)
        return self._standardize_expression(values)[None]

    # ------------------------------------------------------------------ generation
    def generate(
        self,
        *,
        compounds: Sequence[str] | Mapping[str, str] | str | None = None,
        rna: np.ndarray | pd.Series | None = None,
        n_images: int = 16,
        n_steps: int = 50,
        guidance_scale: float = 1.0,
        seed: int = 0,
        batch_size: int = 64,
    ) -> AnnData:
        """Generate image tiles for compounds (DDIM in the image-VAE latent space, then decoding).

        Parameters
        ----------
        compounds
            Known treatment names (default: every treated compound of the data, held-out ones included), or
            a mapping name -> SMILES for any compound, new structures included (featurised on the fly).
            The control name generates with no compound.
        rna
            Pre-perturbation expression ``G_pre`` (one profile over :attr:`genes`, raw units of ``rna_rep``;
            a Series is aligned by name). Default: the mean of the training control cells.
        n_images
            Tiles per compound.
        n_steps
            DDIM steps.
        guidance_scale
            Classifier-free guidance scale (needs ``p_uncond > 0``); 1 is the plain conditional model.
        seed
            Each tile's noise and condition sample depend only on ``(seed, compound, tile index)``.
        batch_size
            Tiles denoised together.

        Returns
        -------
        AnnData with one row per tile: ``.obsm[images_key]`` (``n x C x H x W``, the training tiles' dtype, clipped
        to their valid range), obs ``treatment``, ``smiles`` (categoricals) and ``synthetic=True``.
        """
        from anndata import AnnData

        check_args(
            {
                "n_images": n_images,
                "n_steps": n_steps,
                "guidance_scale": guidance_scale,
                "batch_size": batch_size,
            },
            GENERATE_CHECKS,
        )
        self._check_trained()
        if guidance_scale != 1.0 and not self.module.classifier_free:
            msg = f"guidance_scale={guidance_scale} needs a model trained with p_uncond > 0; use guidance_scale=1."
            raise MorphomuError(msg)
        smiles = self._resolve_compounds(compounds)
        g_pre = self._g_pre(rna) if self.use_rna else None
        names = list(smiles)
        drug = self._drug_features(smiles)
        module = self.module.eval()
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
            x = module.sample(noise, cond, n_steps=int(n_steps), guidance_scale=float(guidance_scale))
            out[sl] = x.float().cpu().numpy()
        latents = (
            out * module.latent_std.cpu().numpy()[:, None, None]
            + module.latent_mean.cpu().numpy()[:, None, None]
        )
        images = self._decode(latents, batch_size=int(batch_size))
        a = self.setup_args
        obs = pd.DataFrame(
            {
                a["treatment_key"]: pd.Categorical(np.asarray(names, dtype=object)[comp], categories=names),
                a["smiles_key"]: pd.Categorical([smiles[names[c]] for c in comp]),
                C.SYNTHETIC_KEY: True,
            },
            index=[f"{names[c]}-synthetic-{i}" for c, i in zip(comp, idx, strict=True)],
        )
        adata = AnnData(obs=obs)
        adata.obsm[a["images_key"]] = images
        adata.uns[C.UNS_KEY] = {
            "generate": {
                "model": "Trident",
                "n_steps": int(n_steps),
                "guidance_scale": float(guidance_scale),
                "seed": int(seed),
                "rna": "given" if rna is not None else "control mean",
            }
        }
        return adata

    def _decode(self, latents: np.ndarray, *, batch_size: int) -> np.ndarray:
        """Decode latents with the image VAE and cast to the training tiles' dtype and valid range."""
        info = self.data_info_
        dtype = np.dtype(info["tile_dtype"])
        low, high = info["tile_range"]
        out = np.empty((len(latents), *info["tile_shape"]), dtype=dtype)
        for start in range(0, len(latents), _CHUNK_ROWS):
            block = np.asarray(
                self._image_vae.decode(latents[start : start + _CHUNK_ROWS], batch_size=batch_size)
            )
            block = np.clip(block, low, high)
            if np.issubdtype(dtype, np.integer):
                block = np.rint(block)
            out[start : start + len(block)] = block.astype(dtype)
        return out

    def predict_expression(
        self,
        compounds: Sequence[str] | Mapping[str, str] | str | None = None,
        *,
        rna: np.ndarray | pd.Series | None = None,
    ) -> pd.DataFrame:
        """Predicted post-perturbation expression ``G_post`` (the condition decoder's mean at the posterior mean of ``z``).

        Parameters
        ----------
        compounds
            Known treatment names (default: every treated compound of the data) or a mapping name -> SMILES.
        rna
            Pre-perturbation profile (see :meth:`generate`); default: the mean training control profile.

        Returns
        -------
        DataFrame compounds x :attr:`genes`, in the raw units of ``rna_rep`` (log-normalised expression for
        ``rna_rep=None``).
        """
        self._check_trained()
        if not self.use_rna:
            msg = "this model was built with use_rna=False: it has no expression decoder."
            raise MorphomuError(msg)
        smiles = self._resolve_compounds(compounds)
        g_pre = self._g_pre(rna)
        drug = self._drug_features(smiles)
        module = self.module.eval()
        device = next(module.parameters()).device
        with torch.inference_mode():
            mean = module.predict_expression(
                torch.from_numpy(drug).to(device),
                torch.from_numpy(np.repeat(g_pre, len(smiles), 0)).to(device),
            )
        values = mean.float().cpu().numpy() * module.gene_std.cpu().numpy() + module.gene_mean.cpu().numpy()
        return pd.DataFrame(
            values, index=pd.Index(list(smiles), name=self.setup_args["treatment_key"]), columns=self.genes
        )

    # ------------------------------------------------------------------ save / load
    def _save_parts(self, dir_path: Path, *, prefix: str | None) -> None:
        """The image VAE goes into the sub-directory ``image_vae`` of the saved model."""
        self._image_vae.save(str(dir_path / f"{prefix or ''}{IMAGE_VAE_DIR}"))

    @classmethod
    def _load_init_kwargs(
        cls, dir_path: Path, *, prefix: str | None, attributes: dict[str, Any], legacy_format: bool
    ) -> dict[str, Any]:
        """The image VAE saved in ``image_vae/`` and the saved data summary, for the model's construction."""
        vae_dir = dir_path / f"{prefix or ''}{IMAGE_VAE_DIR}"
        if not vae_dir.is_dir():
            msg = f"dir_path={str(dir_path)!r} has no {vae_dir.name}/ (the image VAE saved with a Trident)."
            raise MorphomuError(msg)
        info = attributes.get("data_info_")
        if not isinstance(info, dict) or "tile_shape" not in info:
            msg = f"dir_path={str(dir_path)!r}: the saved attributes have no data_info_ record with the tile shape."
            raise MorphomuError(msg)
        vae = _image_vae_cls().from_pretrained(
            vae_dir, n_channels=int(info["tile_shape"][0]), legacy_format=legacy_format
        )
        return {"image_vae": vae, "data_info": info}
