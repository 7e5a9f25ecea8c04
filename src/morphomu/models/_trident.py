"""TRIDENT: RNA + compound -> Cell Painting morphology (scvi-tools model: setup, train, generate, save, load).

The model's input checks are in ``_trident_checks``, what it reads from its data in ``_trident_data``
and its conditions in ``_trident_conditions``: plain functions of explicit arguments.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import torch
from scvi.data import fields
from scvi.train import TrainRunner

from .. import _constants as C
from .._core import autocast, check_precision, resolve_precision
from .._errors import MorphomuError
from .._validation import check_args, check_fraction, check_nonnegative, check_positive_int
from ..module._diffusion import DEFAULT_N_STEPS, DEFAULT_SAMPLER
from ..module._trident import IMAGE_VAE, TRIDENT_PRESETS, TridentModule
from ..train._ema import ExponentialMovingAverage
from ..train._trident_data import TridentDataModule, TridentTrainingPlan
from ._base import MorphomuModel, feature_field, n_registered_columns
from ._image_vae import ImageVAE
from ._training import EMATrainingMixin, train_docstring
from ._trident_checks import (
    GENERATE_CHECKS,
    SIZE_ARGS,
    TRAIN_CHECKS,
    TRAIN_DEFAULTS,
    check_channels,
    check_data,
    resolve_sizes,
)
from ._trident_conditions import condition_tables, drug_features, g_pre, resolve_compounds
from ._trident_data import image_rows, summarize_data
from ._trident_image_vae import (
    decode_tiles,
    encode_tiles,
    frozen_while_training,
    latent_grid,
    resolve_image_vae,
    train_image_vae,
)
from ._trident_sampling import sample_latents, synthetic_tiles

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

# GENERATE_CHECKS and TRAIN_CHECKS are the class attributes _generate_checks and _train_checks
__all__ = ["GENERATE_CHECKS", "TRAIN_CHECKS", "TRAIN_DEFAULTS", "Trident"]

_IMAGES_FIELD = "images"
_RNA_FIELD = "rna"
#: Attribute record of the image VAE in a saved Trident (its tensors are ``image_vae.*`` in the weights).
_IMAGE_VAE_RECORD = f"{IMAGE_VAE}_"


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
        ``'fast'`` (default: CPU-sized), ``'paper'`` (DiT-XL/2: 28 layers, width 1152, 16 heads, patch 2,
        for 512 px tiles through Stable Diffusion's VAE layout; for a GPU) or ``'tiny'`` (tests). It
        chooses the network sizes, the training regime (:meth:`train`'s defaults, ``prediction_type``) and
        the preset of the image VAE built when ``image_vae`` is ``None``; the sizes below override the
        network's one by one and leave the training regime the preset's (kept in ``model.preset``).
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
        Its network is part of the model's module (``module.image_vae``, the same tensors as
        :attr:`image_vae`), so it is saved and loaded with the model; it is frozen while Trident trains.
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
    _train_defaults = TRAIN_DEFAULTS
    _train_checks = {**TRAIN_CHECKS, "precision": check_precision}
    _generate_checks = {**GENERATE_CHECKS, "precision": check_precision}
    _presets = TRIDENT_PRESETS

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
        sizes = resolve_sizes(preset, {k: v for k, v in locals().items() if k in SIZE_ARGS})
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
        self.data_info_ = (
            data_info
            if loading
            else summarize_data(self.adata, a, use_rna=self.use_rna, n_top_genes=int(n_top_genes))
        )
        info = self.data_info_
        c, h, w = info["tile_shape"]
        vae = resolve_image_vae(
            image_vae, self.adata.mod[a["image_mod"]], a, n_channels=c, preset=self.preset
        )
        self._image_vae = vae
        grid = latent_grid(info["tile_shape"], vae.downsample_factor, sizes["patch_size"])
        self.module = self._module_cls(
            len(info["genes"]),
            self.n_bits,
            int(vae.latent_channels),
            *grid,
            use_rna=self.use_rna,
            classifier_free=p_uncond > 0,
            conditioning=conditioning,
            beta=float(beta),
            image_vae=vae.module,
            **sizes,
        )
        if not loading and self.use_rna:
            with torch.no_grad():
                self.module.gene_mean.copy_(torch.from_numpy(info["gene_mean"]))
                self.module.gene_std.copy_(torch.from_numpy(info["gene_std"]))
        self._ema: ExponentialMovingAverage | None = None
        self._raw_state: dict[str, torch.Tensor] | None = None
        n_params = sum(p.numel() for p in self.module.trainable_parameters())
        self._model_summary_string = (
            f"Trident ({preset} preset) with {n_params:,} parameters: {c}-channel {h} x {w} tiles -> "
            f"{int(vae.latent_channels)} x {grid[0]} x {grid[1]} latents, "
            + (f"{len(info['genes'])} expression features, " if self.use_rna else "no RNA (drug only), ")
            + ", ".join(f"{k}={v}" for k, v in sizes.items())
            + f", conditioning={conditioning}, p_uncond={p_uncond}."
        )
        init = self._get_init_params(locals())
        # both are saved with the model (the image VAE's tensors and record, data_info_) and given back by load
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
        check_data(
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
            n_saved = n_registered_columns(source, _IMAGES_FIELD) or 0
            check_channels(mdata, n_saved, image_mod=image_mod, images_key=images_key)
        field_list = [fields.MuDataObsmField(_IMAGES_FIELD, images_key, mod_key=image_mod, mod_required=True)]
        if rna_mod is not None:
            field_list.append(feature_field(_RNA_FIELD, rna_rep, rna_mod))
        cls._register_mudata(mdata, field_list, setup_method_args, **kwargs)

    @classmethod
    def setup_anndata(cls, *args: Any, **kwargs: Any) -> None:
        """Not available: Trident needs a MuData (images + RNA); use :meth:`setup_mudata`."""
        msg = "Trident pairs images with RNA by treatment and round: use Trident.setup_mudata(mdata, ...)."
        raise MorphomuError(msg)

    # ------------------------------------------------------------------ properties
    @property
    def image_vae(self) -> ImageVAE:
        """The image autoencoder (:class:`~morphomu.models.ImageVAE`) whose latent space Trident generates in."""
        return self._image_vae

    @property
    def genes(self) -> pd.Index:
        """The expression features ``G_pre`` / ``G_post`` cover (gene names, or embedding columns)."""
        return pd.Index(self.data_info_["genes"])

    # ------------------------------------------------------------------ conditions
    def _gene_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """The expression standardisation statistics the module stores (float32)."""
        return self.module.gene_mean.cpu().numpy(), self.module.gene_std.cpu().numpy()

    def _drug_features(self, smiles: Mapping[str, str]) -> np.ndarray:
        return drug_features(
            smiles, control=self.data_info_["control"], method=self.drug_features, n_bits=self.n_bits
        )

    def _g_pre(self, rna: Any) -> np.ndarray:
        mean, std = self._gene_stats()
        profile = self.data_info_.get("control_profile")
        return g_pre(rna, genes=self.genes, control_profile=profile, gene_mean=mean, gene_std=std)

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
        precision: str | int = "auto",
        compile: bool = False,
        num_workers: int = 0,
        checkpoint_dir: str | os.PathLike | None = None,
        checkpoint_every_n_steps: int = 1000,
        ckpt_path: str | os.PathLike | None = None,
        verbose: bool = False,
        **trainer_kwargs: Any,
    ) -> None:
        """Train the image VAE first for ``vae_epochs`` when the model has no trained one, then Trident.

        A Trident built with ``image_vae=None`` has an untrained image VAE: this call trains it first
        (``vae_epochs`` epochs, by default the image VAE preset's: 50 for ``fast``), which a line on stdout
        announces and whose progress bar reads ``'Image VAE: epoch i/N'``; give a trained ``image_vae`` to
        skip it. The image VAE is then frozen: the train and validation tiles of the training compounds are
        encoded once, and the condition VAE and the diffusion transformer train jointly (``max_epochs``),
        each step drawing latents with their (compound, round) conditions. AdamW with warm-up + cosine
        learning rate, gradient clipping 1.0 and an EMA of the weights (used by :meth:`generate` and
        :meth:`save`). The image VAE's training uses the same ``accelerator``, ``devices``, ``strategy``,
        ``precision`` and ``seed``, and checkpoints into ``checkpoint_dir/image_vae``.

        Parameters
        ----------
        max_epochs
            Passes over the training images; default 1000 (``paper``), 200 (``fast``), 50 (``tiny``).
        batch_size
            Images per step and device; default 32 (``paper``, as the paper), 64 otherwise.
        lr
            Peak learning rate; default 1e-4 (``paper``), 3e-4 (``fast``), 1e-3 (``tiny``).
        vae_epochs
            Epochs of image-VAE training, run first when the image VAE is untrained (default: the image
            VAE preset's, 100 ``paper``, 50 ``fast``, 20 ``tiny``); ignored when it is trained.
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
        self._run_training(locals())

    # training hooks (models/_training.py)
    def _run_config(self, args: dict[str, Any]) -> dict[str, Any]:
        return {
            **super()._run_config(args),
            "use_rna": self.use_rna,
            "balance_compounds": bool(args["balance_compounds"]),
        }

    def _make_datamodule(self, args: dict[str, Any]) -> TridentDataModule:
        """Train the image VAE if needed, encode the tiles once and serve (latent, condition) batches."""
        a = self.setup_args
        img = self.adata.mod[a["image_mod"]]
        train_rows, val_rows = image_rows(img, a)
        rows = np.concatenate([train_rows, val_rows])
        mean, std = self._gene_stats()
        code, tables, _, control_profile = condition_tables(  # checks RNA coverage before any training
            self.adata,
            a,
            self.data_info_,
            rows,
            use_rna=self.use_rna,
            method=self.drug_features,
            n_bits=self.n_bits,
            gene_mean=mean,
            gene_std=std,
        )
        if control_profile is not None:
            self.data_info_["control_profile"] = control_profile
        train_image_vae(self._image_vae, args)
        batch_size = int(args["batch_size"])
        latents = encode_tiles(
            self._image_vae, img.obsm[a["images_key"]], rows, batch_size=max(batch_size, 64)
        )
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

    def _make_plan(self, args: dict[str, Any]) -> TridentTrainingPlan:
        if self._raw_state is not None:  # the raw weights leave the frozen image VAE out: it keeps its own
            self._raw_state = {**self._raw_state, **self.module.image_vae.state_dict(prefix=f"{IMAGE_VAE}.")}
        return super()._make_plan(args)

    def _training_context(self, args: dict[str, Any]) -> Any:
        return frozen_while_training(self.module.image_vae, training=self.module.training)

    def _after_training(self, plan: TridentTrainingPlan, args: dict[str, Any]) -> None:
        super()._after_training(plan, args)
        # raw weights of what Trident trains only: a copy of the image VAE would bring back its old weights
        # if it were trained again before Trident continues
        self._raw_state = {k: v for k, v in self._raw_state.items() if not k.startswith(f"{IMAGE_VAE}.")}

    # ------------------------------------------------------------------ inference helpers
    def _check_trained(self) -> None:
        if not self.is_trained_:
            msg = "the model is not trained; call model.train() first (or Trident.load a trained one)."
            raise MorphomuError(msg)

    # ------------------------------------------------------------------ generation
    def generate(
        self,
        *,
        compounds: Sequence[str] | Mapping[str, str] | str | None = None,
        rna: np.ndarray | pd.Series | None = None,
        n_images: int = 16,
        n_steps: int = DEFAULT_N_STEPS["trident"],
        sampler: Literal["ddim", "dpmsolver++", "unipc"] = DEFAULT_SAMPLER["trident"],
        guidance_scale: float = 1.0,
        seed: int = 0,
        batch_size: int = 64,
        precision: str = "auto",
    ) -> AnnData:
        """Generate image tiles for compounds (reverse diffusion in the image-VAE latent space, then decoding).

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
            Denoising steps (network evaluations; twice that with guidance). The paper used 50 DDIM steps.
        sampler
            ``'ddim'`` (the paper's), or a deterministic multistep ODE solver: ``'dpmsolver++'``
            (DPM-Solver++ 2M) or ``'unipc'`` (UniPC-2), at most 980 steps. The default is the paper's
            protocol, ``sampler='ddim', n_steps=50``: ``benchmarks/samplers.py --model trident`` did not
            establish that the solvers match it at fewer steps (see ``morphomu.module._diffusion``).
        guidance_scale
            Classifier-free guidance scale (needs ``p_uncond > 0``); 1 is the plain conditional model.
        seed
            Each tile's noise and condition sample depend only on ``(seed, compound, tile index)``.
        batch_size
            Tiles denoised together.
        precision
            ``'auto'`` (default): the denoising in bf16 autocast where the device computes in bf16 fast (as
            in :meth:`train`), else float32; or ``'32-true'``, ``'bf16-mixed'``, ``'16-mixed'``. Latents and
            the image VAE's decoding stay float32.

        Returns
        -------
        AnnData with one row per tile: ``.obsm[images_key]`` (``n x C x H x W``, the training tiles' dtype, clipped
        to their valid range), obs ``treatment``, ``smiles`` (categoricals) and ``synthetic=True``.
        """
        check_args(
            {
                "n_images": n_images,
                "n_steps": n_steps,
                "sampler": sampler,
                "guidance_scale": guidance_scale,
                "batch_size": batch_size,
            },
            GENERATE_CHECKS,
        )
        precision = resolve_precision(precision, self.device)
        self._check_trained()
        if guidance_scale != 1.0 and not self.module.classifier_free:
            msg = f"guidance_scale={guidance_scale} needs a model trained with p_uncond > 0; use guidance_scale=1."
            raise MorphomuError(msg)
        smiles = resolve_compounds(
            compounds, known=self.data_info_["smiles"], control=self.data_info_["control"]
        )
        g_pre = self._g_pre(rna) if self.use_rna else None
        names = list(smiles)
        latents, comp, idx = autocast(precision, self.device)(sample_latents)(  # the DiT in that precision
            self.module,
            self._drug_features(smiles),
            g_pre,
            names,
            n_images=n_images,
            n_steps=n_steps,
            sampler=sampler,
            guidance_scale=guidance_scale,
            seed=seed,
            batch_size=batch_size,
        )
        images = decode_tiles(self._image_vae, latents, self.data_info_, batch_size=int(batch_size))
        record = {
            "model": "Trident",
            "n_steps": int(n_steps),
            "sampler": sampler,
            "guidance_scale": float(guidance_scale),
            "seed": int(seed),
            "rna": "given" if rna is not None else "control mean",
            "precision": precision,
        }
        return synthetic_tiles(images, smiles, comp, idx, setup=self.setup_args, record=record)

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
        smiles = resolve_compounds(
            compounds, known=self.data_info_["smiles"], control=self.data_info_["control"]
        )
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
    def _attributes_to_save(self) -> dict[str, Any]:
        """The model's attributes and the image VAE's (its tensors are in the module's state dict)."""
        return {**super()._attributes_to_save(), _IMAGE_VAE_RECORD: self._image_vae._attributes_to_save()}

    @classmethod
    def _load_init_kwargs(
        cls, dir_path: Path, *, prefix: str | None, attributes: dict[str, Any], legacy_format: bool
    ) -> dict[str, Any]:
        """The image VAE, rebuilt from its record (``load`` then fills its tensors), and the saved data summary."""
        record = attributes.pop(_IMAGE_VAE_RECORD, None)
        if not isinstance(record, dict):
            msg = (
                f"dir_path={str(dir_path)!r}: the saved attributes have no {_IMAGE_VAE_RECORD} record (the image "
                "VAE saved with a Trident)."
            )
            raise MorphomuError(msg)
        info = attributes.get("data_info_")
        if not isinstance(info, dict) or "tile_shape" not in info:
            msg = f"dir_path={str(dir_path)!r}: the saved attributes have no data_info_ record with the tile shape."
            raise MorphomuError(msg)
        vae = ImageVAE._from_saved_attributes(
            record, where=f"dir_path={str(dir_path)!r}: {_IMAGE_VAE_RECORD}"
        )
        return {"image_vae": vae, "data_info": info}
