"""PhenoSeq: image -> RNA conditional diffusion (scvi-tools model: setup, train, generate, save, load)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import torch
from scvi.data import AnnDataManager, AnnDataManagerValidationCheck
from scvi.train import TrainRunner

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
    check_unique_obs_names,
    get_mod,
    optional,
)
from ..module._phenoseq import PHENOSEQ_PRESETS, PhenoSeqModule
from ..train._diffusion_plan import DiffusionTrainingPlan
from ..train._disk_cache import RowCache, RowReader, is_in_memory, use_disk_cache
from ..train._ema import ExponentialMovingAverage
from ..train._set_data import PairedSetDataModule
from ._base import MorphomuModel, feature_field
from ._training import EMATrainingMixin, train_docstring

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

__all__ = ["PhenoSeq"]

logger = logging.getLogger(__name__)

_IMAGE_KEY = "image"
_RNA_KEY = "rna"
#: Training defaults per preset. ``paper`` is the paper's schedule (AdamW lr 1e-4, batch 256, 5 warm-up
#: epochs, up to 5,000 epochs with early stopping). The small presets take a 10x larger learning rate
#: and smaller batches: on the default simulated data (2 CPU cores, same compute) ``fast`` reaches
#: fidelity Accuracy@1 0.48 / MRR 0.62 in 25 epochs this way, against 0.24 / 0.38 with the paper's
#: lr 1e-4 and batch 256.
TRAIN_DEFAULTS: dict[str, dict[str, float]] = {
    "paper": {"max_epochs": 5000, "batch_size": 256, "lr": 1e-4, "warmup_epochs": 5},
    "fast": {"max_epochs": 300, "batch_size": 64, "lr": 1e-3, "warmup_epochs": 1},
    "tiny": {"max_epochs": 100, "batch_size": 64, "lr": 1e-3, "warmup_epochs": 1},
}
#: Checks of the network sizes (preset values and overrides), run before anything is built.
_SIZE_CHECKS: dict[str, Any] = {
    **dict.fromkeys(
        ("n_hidden", "n_layers", "n_heads", "n_encoder_heads", "n_time", "ff_mult", "n_context_cells"),
        check_positive_int,
    ),
    "n_encoder_layers": check_nonnegative_int,  # 0: the context encoder is its input projection alone
    "dropout": check_fraction,
}
#: Checks of :meth:`PhenoSeq.train`'s arguments (``None``: the preset's default), run before any work; the
#: tools that train a PhenoSeq run them on their ``train_kwargs`` first too.
TRAIN_CHECKS: dict[str, Any] = {
    "max_epochs": optional(check_positive_int),
    "batch_size": optional(check_positive_int),
    "lr": optional(check_positive),
    "weight_decay": check_nonnegative,
    "warmup_epochs": optional(check_nonnegative),
    "early_stopping_patience": check_nonnegative_int,
    "ema_decay": check_fraction,
    "num_workers": check_nonnegative_int,
}


def check_n_cells(value: Any, arg: str = "n_cells_per_sample") -> int | str:
    """Return ``'match'`` or a positive ``int``, raising otherwise (a generation's cells per sample)."""
    if isinstance(value, str) and value == "match":
        return value
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        msg = f"{arg} must be 'match' (as many as the sample's real RNA cells) or a positive integer, got {value!r}."
        raise MorphomuError(msg)
    return int(value)


#: Checks of :meth:`PhenoSeq.generate`'s numeric arguments, run before any work (also by the tools).
GENERATE_CHECKS: dict[str, Any] = {
    "n_steps": check_n_steps,
    "eta": check_nonnegative,
    "guidance_scale": check_number,
    "batch_size": check_positive_int,
    "n_cells_per_sample": check_n_cells,
}


class PhenoSeq(EMATrainingMixin, MorphomuModel):
    """Generate single-cell RNA embeddings from Cell Painting imaging embeddings (PhenoSeq).

    A conditional diffusion model over standardised RNA embeddings (e.g. scGPT, 512-d), conditioned on
    a set of imaging embeddings (e.g. ViT-L per stain, 5120-d) of the same sample. Modalities hold
    different cells; they are paired by sample only. A training item is one RNA cell and
    ``n_context_cells`` imaging cells of its sample; at generation the context is the mean of all of a
    sample's imaging cells (``context='mean'``, the paper's choice) or a fresh random set per cell.

    Parameters
    ----------
    mdata
        MuData registered with :meth:`setup_mudata`.
    preset
        ``'paper'`` (the paper's Table 4: 168 M parameters at 5120/512 features), ``'fast'`` (CPU-sized)
        or ``'tiny'`` (tests). The sizes below override it one by one.
    n_hidden
        Model width ``d``.
    n_layers
        Denoiser blocks.
    n_heads
        Cross-attention heads.
    n_encoder_layers
        Self-attention layers of the imaging context encoder.
    n_encoder_heads
        Heads of the context encoder.
    n_time
        Size of the time embedding.
    ff_mult
        Feed-forward expansion.
    dropout
        Dropout in attention outputs and feed-forward layers.
    n_context_cells
        Imaging cells per training item.
    p_uncond
        Probability of replacing an item's context with a learned null context during training; > 0
        enables classifier-free guidance (``guidance_scale`` in :meth:`generate`).
    prediction_type
        ``'epsilon'`` (the paper; default of ``paper``) or ``'v_prediction'`` (default of ``fast`` and
        ``tiny``: far better conditioned at high noise for small networks and short training; see
        :data:`morphomu.module._phenoseq.PHENOSEQ_PRESETS`).

    Examples
    --------
    >>> import morphomu as mm
    >>> mdata = mm.datasets.simulate_scgenescope(n_img_cells=2000, n_rna_cells=2000)
    >>> mm.pp.assign_split(mdata)
    >>> mm.models.PhenoSeq.setup_mudata(mdata)
    >>> model = mm.models.PhenoSeq(mdata, preset="tiny")
    >>> model.train(max_epochs=5)  # doctest: +SKIP
    >>> synthetic = model.generate(samples=["..."])  # doctest: +SKIP
    """

    _module_cls = PhenoSeqModule
    _training_plan_cls = DiffusionTrainingPlan
    _data_splitter_cls = PairedSetDataModule
    _train_runner_cls = TrainRunner

    def __init__(
        self,
        mdata: MuData,
        *,
        preset: Literal["paper", "fast", "tiny"] = "paper",
        n_hidden: int | None = None,
        n_layers: int | None = None,
        n_heads: int | None = None,
        n_encoder_layers: int | None = None,
        n_encoder_heads: int | None = None,
        n_time: int | None = None,
        ff_mult: int | None = None,
        dropout: float | None = None,
        n_context_cells: int | None = None,
        p_uncond: float = 0.0,
        prediction_type: Literal["epsilon", "v_prediction"] | None = None,
    ) -> None:
        if preset not in PHENOSEQ_PRESETS:
            msg = f"preset={preset!r}: choose one of {sorted(PHENOSEQ_PRESETS)}."
            raise MorphomuError(msg)
        given = {
            "n_hidden": n_hidden,
            "n_layers": n_layers,
            "n_heads": n_heads,
            "n_encoder_layers": n_encoder_layers,
            "n_encoder_heads": n_encoder_heads,
            "n_time": n_time,
            "ff_mult": ff_mult,
            "dropout": dropout,
            "n_context_cells": n_context_cells,
            "prediction_type": prediction_type,
        }
        sizes = {**PHENOSEQ_PRESETS[preset], **{k: v for k, v in given.items() if v is not None}}
        sizes.update(check_args(sizes, _SIZE_CHECKS))
        p_uncond = check_fraction(p_uncond, "p_uncond")
        for key, heads in (("n_heads", "n_heads"), ("n_encoder_heads", "n_encoder_heads")):
            if sizes["n_hidden"] % sizes[heads]:
                msg = f"{key}={sizes[heads]} must divide n_hidden={sizes['n_hidden']}."
                raise MorphomuError(msg)
        super().__init__(mdata)
        self.preset = preset
        self.sizes = sizes
        self.n_context_cells = int(sizes["n_context_cells"])
        self.p_uncond = float(p_uncond)
        n_image, n_rna = self._n_features()
        self.module = self._module_cls(
            n_image,
            n_rna,
            **{k: v for k, v in sizes.items() if k != "n_context_cells"},
            classifier_free=p_uncond > 0,
        )
        self._ema: ExponentialMovingAverage | None = None
        self._raw_state: dict[str, torch.Tensor] | None = None
        self._model_summary_string = (
            f"PhenoSeq ({preset} preset) with {sum(p.numel() for p in self.module.parameters()):,} parameters: "
            f"{n_image} imaging -> {n_rna} RNA features, "
            + ", ".join(f"{k}={v}" for k, v in sizes.items())
            + f", p_uncond={p_uncond}."
        )
        self.init_params_ = self._get_init_params(locals())

    # ------------------------------------------------------------------ setup
    @classmethod
    def setup_mudata(
        cls,
        mdata: MuData,
        *,
        image_mod: str = C.IMAGE_MOD,
        rna_mod: str = C.RNA_MOD,
        image_rep: str | None = C.IMAGE_REP,
        rna_rep: str | None = C.RNA_REP,
        sample_key: str = C.SAMPLE_KEY,
        treatment_key: str = C.TREATMENT_KEY,
        replicate_key: str = C.REPLICATE_KEY,
        round_key: str = C.ROUND_KEY,
        split_key: str = C.SPLIT_KEY,
        **kwargs: Any,
    ) -> None:
        """Register a MuData whose imaging and RNA modalities hold different cells, paired by sample.

        Checks everything before writing anything: the modalities and representations exist and are
        finite, the sample and treatment columns exist, every sample with RNA cells has imaging cells,
        and (when loading a saved model) the feature dimensions match the trained ones.

        Parameters
        ----------
        mdata
            The experiment.
        image_mod
            Imaging modality.
        rna_mod
            RNA modality.
        image_rep
            ``.obsm`` key of the imaging embeddings, or ``None`` for ``.X`` (large, possibly backed data).
        rna_rep
            ``.obsm`` key of the RNA embeddings, or ``None`` for ``.X``.
        sample_key
            obs column pairing the modalities (one treated well / replicate unit).
        treatment_key
            obs column with the treatment.
        replicate_key
            obs column with the replicate (copied to generated cells when present).
        round_key
            obs column with the experimental round (copied when present).
        split_key
            obs column with the split labels; training needs ``train`` and ``val`` RNA cells.
        **kwargs
            Passed to scvi-tools' registration (``source_registry`` when loading).
        """
        setup_method_args = cls._get_setup_method_args(**locals())
        source = kwargs.get("source_registry")
        expected = None
        if source is not None:
            regs = source["field_registries"]
            expected = {
                key: len(regs[key]["state_registry"].get("column_names", [])) or None
                for key in (_IMAGE_KEY, _RNA_KEY)
            }
        check_data(
            mdata,
            image_mod=image_mod,
            rna_mod=rna_mod,
            image_rep=image_rep,
            rna_rep=rna_rep,
            sample_key=sample_key,
            treatment_key=treatment_key,
            n_image=None if expected is None else expected[_IMAGE_KEY],
            n_rna=None if expected is None else expected[_RNA_KEY],
        )

        manager = AnnDataManager(
            fields=[
                feature_field(_IMAGE_KEY, image_rep, image_mod),
                feature_field(_RNA_KEY, rna_rep, rna_mod),
            ],
            setup_method_args=setup_method_args,
            validation_checks=AnnDataManagerValidationCheck(check_fully_paired_mudata=False),
        )
        manager.register_fields(mdata, **kwargs)
        cls.register_manager(manager)

    @classmethod
    def setup_anndata(cls, *args: Any, **kwargs: Any) -> None:
        """Not available: PhenoSeq needs a MuData with an imaging and an RNA modality (use :meth:`setup_mudata`)."""
        msg = "PhenoSeq pairs two modalities by sample: use PhenoSeq.setup_mudata(mdata, ...)."
        raise MorphomuError(msg)

    def _n_features(self) -> tuple[int, int]:
        regs = self.registry_["field_registries"]
        return tuple(len(regs[k]["state_registry"]["column_names"]) for k in (_IMAGE_KEY, _RNA_KEY))  # type: ignore[return-value]

    @property
    def standardizers(self) -> dict[str, Standardizer]:
        """Train-split statistics the model standardises with (``'image'`` and ``'rna'``)."""
        m = self.module
        return {
            name: Standardizer(
                getattr(m, f"{name}_mean").cpu().numpy(), getattr(m, f"{name}_std").cpu().numpy()
            )
            for name in ("image", "rna")
        }

    # ------------------------------------------------------------------ training
    def _prepare_training(
        self,
        *,
        batch_size: int,
        seed: int,
        num_workers: int,
        in_memory: bool | None = True,
        cache_dir: str | os.PathLike | None = None,
        cache_dtype: str = "float32",
    ) -> PairedSetDataModule:
        a = self.setup_args
        mdata = self.adata
        img, rna = mdata.mod[a["image_mod"]], mdata.mod[a["rna_mod"]]
        split_key, sample_key = a["split_key"], a["sample_key"]
        check_obs_keys(rna, {"split_key": split_key}, mod=a["rna_mod"])
        rna_split = rna.obs[split_key].astype(str).to_numpy()
        for label in (C.TRAIN, C.VAL):
            if not (rna_split == label).any():
                msg = (
                    f"mdata.mod[{a['rna_mod']!r}].obs[{split_key!r}] (split_key) has no {label!r} cells; training "
                    f"needs both 'train' and 'val' (found {sorted(set(rna_split))}). Run mm.pp.assign_split first."
                )
                raise ContractError(msg)
        train_rows = np.flatnonzero(rna_split == C.TRAIN)
        val_rows = np.flatnonzero(rna_split == C.VAL)
        used = np.concatenate([train_rows, val_rows])
        rna_samples = rna.obs[sample_key].astype(str).to_numpy()
        img_samples = img.obs[sample_key].astype(str).to_numpy()
        needed = pd.Index(sorted(set(rna_samples[used])))
        img_codes = needed.get_indexer(img_samples)
        img_matrix = rep_matrix(img, a["image_rep"])
        # a backed matrix is read in chunk-aligned ranges (HDF5 point selections are slow)
        img_reader = img_matrix if is_in_memory(img_matrix) else RowReader(img_matrix)
        # standardisation statistics: imaging cells of the train split (or of the train samples)
        if not self.is_trained_:
            if split_key in img.obs.columns:
                img_fit = np.flatnonzero(img.obs[split_key].astype(str).to_numpy() == C.TRAIN)
            else:
                img_fit = np.flatnonzero(np.isin(img_samples, rna_samples[train_rows]))
            if img_fit.size == 0:
                msg = f"mdata.mod[{a['image_mod']!r}] has no train-split imaging cells to fit standardisation on."
                raise ContractError(msg)
            img_scaler = Standardizer.fit(img_reader, img_fit)
            rna_scaler = Standardizer.fit(rep_matrix(rna, a["rna_rep"]), train_rows)
            self._set_standardizers(img_scaler, rna_scaler)
        scalers = self.standardizers
        img_rows = np.flatnonzero(img_codes >= 0)
        img_rows = img_rows[np.argsort(img_codes[img_rows], kind="stable")]
        offsets = np.searchsorted(img_codes[img_rows], np.arange(len(needed) + 1))
        if use_disk_cache(img_matrix, img_rows.size, in_memory=in_memory):
            # larger than memory: the same standardised, sample-sorted rows, on disk
            img_x = RowCache.build(
                img_matrix,
                img_codes,
                n_groups=len(needed),
                transform=scalers["image"].transform,
                dtype=cache_dtype,
                directory=cache_dir,
            )
        else:
            img_x = torch.from_numpy(scalers["image"].transform(read_rows(img_reader, img_rows)))
        rna_x = scalers["rna"].transform(read_rows(rep_matrix(rna, a["rna_rep"]), used))
        rna_codes = needed.get_indexer(rna_samples[used])
        n_train = train_rows.size
        return self._data_splitter_cls(
            rna=torch.from_numpy(rna_x),
            rna_sample=torch.from_numpy(rna_codes.astype(np.int64)),
            train_rows=torch.arange(n_train),
            val_rows=torch.arange(n_train, used.size),
            img=img_x,
            img_offsets=torch.from_numpy(offsets.astype(np.int64)),
            n_context_cells=self.n_context_cells,
            batch_size=batch_size,
            n_timesteps=len(self.module.alphas_cumprod),
            p_uncond=self.p_uncond,
            seed=seed,
            num_workers=num_workers,
        )

    def _set_standardizers(self, image: Standardizer, rna: Standardizer) -> None:
        with torch.no_grad():
            for name, s in (("image", image), ("rna", rna)):
                getattr(self.module, f"{name}_mean").copy_(torch.from_numpy(s.mean))
                getattr(self.module, f"{name}_std").copy_(torch.from_numpy(s.std))

    @train_docstring
    def train(
        self,
        max_epochs: int | None = None,
        *,
        batch_size: int | None = None,
        lr: float | None = None,
        weight_decay: float = 1e-5,
        warmup_epochs: float | None = None,
        early_stopping: bool = True,
        early_stopping_patience: int = 50,
        ema_decay: float = 0.9999,
        seed: int = 0,
        in_memory: bool | None = None,
        cache_dir: str | os.PathLike | None = None,
        cache_dtype: Literal["float32", "float16"] = "float32",
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
        """Train with AdamW, warm-up + cosine learning rate, gradient clipping 1.0 and EMA weights.

        Items are drawn from the ``train`` split (an epoch is one pass over its RNA cells) and the loss
        on ``val`` drives early stopping, both with the raw weights. When training ends the module holds
        the EMA weights (used by :meth:`generate` and :meth:`save`); the raw weights are kept to continue
        training with another call.

        Parameters
        ----------
        max_epochs
            Epochs; default 5000 for ``paper`` (with early stopping, as the paper), 300 for ``fast``, 100
            for ``tiny``.
        batch_size
            Items per step and device; default 256 for ``paper``, 64 for ``fast`` and ``tiny``.
        lr
            Peak learning rate; default 1e-4 for ``paper``, 1e-3 for ``fast`` and ``tiny``.
        weight_decay
            AdamW weight decay.
        warmup_epochs
            Epochs of linear warm-up before cosine decay; default 5 for ``paper``, 1 for the others.
        early_stopping
            Stop when the validation loss has not improved for ``early_stopping_patience`` epochs
            (scvi-tools turns it off under DDP).
        early_stopping_patience
            Patience in epochs.
        ema_decay
            Final EMA decay (warm-up ``min(decay, (1 + n) / (10 + n))``).
        seed
            Seed of the item draws (context cells, timesteps, noise). Weight initialisation follows
            torch's global seed (``scvi.settings.seed``).
        in_memory
            ``True``: load the standardised imaging rows into memory. ``False``: write them, sorted by
            sample, to a disk cache and read each batch's context cells from it (bounded memory, for
            larger-than-memory data). ``None`` (default): the cache when the imaging matrix is backed
            (``image_rep=None`` on a MuData read with ``backed=True``) or its copy would take more than
            half of the available memory. Both give the same batches.
        cache_dir
            Directory of the disk cache (default a temporary directory); the file is removed when
            training ends.
        cache_dtype
            ``'float32'`` (the same values as in memory) or ``'float16'`` (half the disk and I/O; values
            rounded to float16).
        {train_core}
        """
        self._run_training(
            {
                "max_epochs": max_epochs,
                "batch_size": batch_size,
                "lr": lr,
                "weight_decay": weight_decay,
                "warmup_epochs": warmup_epochs,
                "early_stopping": early_stopping,
                "early_stopping_patience": early_stopping_patience,
                "ema_decay": ema_decay,
                "seed": seed,
                "num_workers": num_workers,
                "in_memory": in_memory,
                "cache_dir": cache_dir,
                "cache_dtype": cache_dtype,
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
        if args["in_memory"] not in (None, True, False) or args["cache_dtype"] not in ("float32", "float16"):
            msg = (
                f"in_memory must be True, False or None and cache_dtype 'float32' or 'float16', got "
                f"{args['in_memory']!r} and {args['cache_dtype']!r}."
            )
            raise MorphomuError(msg)
        return args

    def _run_config(self, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "model": type(self).__name__,
            "preset": self.preset,
            **self.sizes,
            "p_uncond": self.p_uncond,
            "max_epochs": int(args["max_epochs"]),
            "batch_size": int(args["batch_size"]),
            "lr": float(args["lr"]),
            "weight_decay": args["weight_decay"],
            "warmup_epochs": args["warmup_epochs"],
            "ema_decay": args["ema_decay"],
            "early_stopping": args["early_stopping"],
            "early_stopping_patience": args["early_stopping_patience"],
            "seed": int(args["seed"]),
        }

    def _make_datamodule(self, args: dict[str, Any]) -> PairedSetDataModule:
        return self._prepare_training(
            batch_size=int(args["batch_size"]),
            seed=args["seed"],
            num_workers=args["num_workers"],
            in_memory=args["in_memory"],
            cache_dir=args["cache_dir"],
            cache_dtype=args["cache_dtype"],
        )

    def _trainer_defaults(self, args: dict[str, Any], datamodule: Any) -> dict[str, Any]:
        return {
            "gradient_clip_val": 1.0,
            "use_distributed_sampler": False,  # the data module shards by rank itself
            "early_stopping": args["early_stopping"],
            "early_stopping_monitor": "validation_loss",
            "early_stopping_patience": args["early_stopping_patience"],
            "check_val_every_n_epoch": 1,
        }

    def _teardown(self, datamodule: PairedSetDataModule) -> None:
        if isinstance(datamodule.train_set.img, RowCache):
            datamodule.train_set.img.close()  # removes the disk cache

    # ------------------------------------------------------------------ generation
    def generate(
        self,
        mdata: MuData | None = None,
        *,
        samples: Sequence[str] | None = None,
        n_cells_per_sample: int | Literal["match"] = "match",
        n_steps: int = 50,
        eta: float = 0.0,
        context: Literal["mean", "set"] = "mean",
        guidance_scale: float = 1.0,
        seed: int = 0,
        batch_size: int = 1024,
    ) -> AnnData:
        """Generate RNA embeddings per sample from its imaging cells (DDIM).

        Parameters
        ----------
        mdata
            Data with the imaging (and, for ``'match'``, RNA) modality under the keys given to
            :meth:`setup_mudata`; default the model's own. Never modified.
        samples
            Samples to generate for; default every sample with imaging cells.
        n_cells_per_sample
            ``'match'``: as many cells as the sample has real RNA cells; or a fixed number.
        n_steps
            DDIM steps (50 in the paper).
        eta
            DDIM stochasticity; 0 is deterministic DDIM.
        context
            ``'mean'``: one context token, the mean of all the sample's imaging cells (the paper);
            ``'set'``: each generated cell is conditioned on its own random set of ``n_context_cells``
            imaging cells of the sample (as in training).
        guidance_scale
            Classifier-free guidance scale; needs a model trained with ``p_uncond > 0``. 1 is the plain
            conditional model.
        seed
            Each cell's noise (and context set) is derived from ``(seed, sample, cell index)``, so the
            output does not depend on ``batch_size`` or on which other samples are generated.
        batch_size
            Cells denoised together.

        Returns
        -------
        AnnData with one row per generated cell: ``.obsm[rna_rep]`` and ``.X`` (the same matrix, raw units
        of ``rna_rep``), obs ``sample``, ``treatment``, ``replicate``, ``round``, ``split`` (those present in
        the imaging modality) and ``synthetic=True``.
        """
        from anndata import AnnData

        check_args(
            {
                "n_steps": n_steps,
                "eta": eta,
                "guidance_scale": guidance_scale,
                "batch_size": batch_size,
                "n_cells_per_sample": n_cells_per_sample,
            },
            GENERATE_CHECKS,
        )
        if not self.is_trained_:
            msg = "the model is not trained; call model.train() first (or PhenoSeq.load a trained one)."
            raise MorphomuError(msg)
        a = self.setup_args
        mdata = self.adata if mdata is None else mdata
        n_image, n_rna = self._n_features()
        check_data(
            mdata,
            image_mod=a["image_mod"],
            rna_mod=a["rna_mod"] if n_cells_per_sample == "match" else None,
            image_rep=a["image_rep"],
            rna_rep=a["rna_rep"],
            sample_key=a["sample_key"],
            treatment_key=a["treatment_key"],
            n_image=n_image,
            n_rna=n_rna,
        )
        if context not in ("mean", "set"):
            msg = f"context={context!r}: choose 'mean' (one mean token per sample) or 'set' (a random set per cell)."
            raise MorphomuError(msg)
        if guidance_scale != 1.0 and not self.module.classifier_free:
            msg = (
                f"guidance_scale={guidance_scale} needs classifier-free training: create the model with "
                "p_uncond > 0 (e.g. 0.1) and train it; this model has no null context. Use guidance_scale=1."
            )
            raise MorphomuError(msg)
        img = mdata.mod[a["image_mod"]]
        img_samples = img.obs[a["sample_key"]].astype(str).to_numpy()
        available = pd.unique(img_samples)
        if samples is None:
            names = pd.Index(sorted(available))
        else:
            names = pd.Index([samples] if isinstance(samples, str) else [str(s) for s in samples])
            unknown = names[~names.isin(available)]
            if len(unknown):
                msg = (
                    f"samples {list(unknown[:5])} have no imaging cells in mdata.mod[{a['image_mod']!r}] "
                    f"(obs[{a['sample_key']!r}])."
                )
                raise ContractError(msg)
            if names.has_duplicates:
                msg = "samples contains duplicates."
                raise MorphomuError(msg)
        if n_cells_per_sample == "match":
            rna_samples = mdata.mod[a["rna_mod"]].obs[a["sample_key"]].astype(str)
            counts = rna_samples.value_counts().reindex(names, fill_value=0).to_numpy()
            if samples is not None and (counts == 0).any():
                msg = (
                    f"samples {list(names[counts == 0][:5])} have no RNA cells to match; pass "
                    "n_cells_per_sample=<int>."
                )
                raise ContractError(msg)
        else:
            counts = np.full(len(names), int(n_cells_per_sample))

        module = self.module.eval()
        device = next(module.parameters()).device
        scalers = self.standardizers
        img_codes = names.get_indexer(img_samples)
        hashes = sample_hashes(names)
        cell_sample = np.repeat(np.arange(len(names)), counts)
        cell_index = (
            np.concatenate([np.arange(c) for c in counts]) if len(counts) else np.zeros(0, dtype=np.int64)
        )
        draw_keys = {
            p: cell_keys(seed, p, hashes[cell_sample], cell_index)
            for p in (Stream.PHENOSEQ_NOISE, Stream.PHENOSEQ_CONTEXT)
        }

        if context == "mean":
            means = scalers["image"].transform(
                group_means(rep_matrix(img, a["image_rep"]), img_codes, len(names))
            )
            with torch.inference_mode():
                tokens = module.encode_context(torch.from_numpy(means).to(device)[:, None, :])
                sample_cache = module.cross_cache(tokens)
        else:
            rows = np.flatnonzero(img_codes >= 0)
            rows = rows[np.argsort(img_codes[rows], kind="stable")]
            offsets = np.searchsorted(img_codes[rows], np.arange(len(names) + 1))
            img_x = torch.from_numpy(
                scalers["image"].transform(read_rows(rep_matrix(img, a["image_rep"]), rows))
            )
            n_per = np.diff(offsets)

        out = np.empty((cell_sample.size, n_rna), dtype=np.float32)
        for start in range(0, cell_sample.size, int(batch_size)):
            sl = slice(start, start + int(batch_size))
            codes = cell_sample[sl]
            noise = torch.from_numpy(keyed_normal(draw_keys[Stream.PHENOSEQ_NOISE][sl], n_rna)).to(device)
            if context == "mean":
                cache = sample_cache.take(torch.from_numpy(codes).to(device))
            else:
                u = keyed_uniform(draw_keys[Stream.PHENOSEQ_CONTEXT][sl], self.n_context_cells)
                pick = offsets[codes][:, None] + np.minimum(
                    (u * n_per[codes][:, None]).astype(np.int64), n_per[codes][:, None] - 1
                )
                with torch.inference_mode():
                    cache = module.cross_cache(
                        module.encode_context(img_x[torch.from_numpy(pick)].to(device))
                    )
            step_keys = (hashes[codes], cell_index[sl])

            def variance_noise(step: int, keys: tuple = step_keys) -> torch.Tensor:
                k = cell_keys(seed, step_stream(Stream.PHENOSEQ_STEP_NOISE, step), *keys)
                return torch.from_numpy(keyed_normal(k, n_rna)).to(device)

            x = module.sample(
                noise,
                cache,
                n_steps=int(n_steps),
                eta=float(eta),
                guidance_scale=float(guidance_scale),
                variance_noise=variance_noise,
            )
            out[sl] = x.float().cpu().numpy()
        values = scalers["rna"].inverse_transform(out)
        obs = synthetic_obs(img, names, a, cell_sample)
        obs.index = [
            f"{s}-synthetic-{i}" for s, i in zip(obs[a["sample_key"]].astype(str), cell_index, strict=True)
        ]
        rna_rep = a["rna_rep"]
        var_names = (
            mdata.mod[a["rna_mod"]].var_names.astype(str)
            if rna_rep is None and a["rna_mod"] in mdata.mod
            else pd.Index([f"{rna_rep or 'X'}_{i}" for i in range(n_rna)])
        )
        adata = AnnData(X=values, obs=obs, var=pd.DataFrame(index=var_names))
        if rna_rep is not None:
            adata.obsm[rna_rep] = values.copy()
        adata.uns[C.UNS_KEY] = {
            "generate": {
                "model": "PhenoSeq",
                "n_steps": int(n_steps),
                "eta": float(eta),
                "context": context,
                "guidance_scale": float(guidance_scale),
                "seed": int(seed),
            }
        }
        return adata


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


def check_data(
    mdata: Any,
    *,
    image_mod: str,
    rna_mod: str | None,
    image_rep: str | None,
    rna_rep: str | None,
    sample_key: str,
    treatment_key: str,
    n_image: int | None = None,
    n_rna: int | None = None,
) -> None:
    """All input checks of PhenoSeq (nothing is written)."""
    check_mudata(mdata)
    img = get_mod(mdata, image_mod, arg="image_mod")
    if img.n_obs == 0:
        msg = f"mdata.mod[{image_mod!r}] has no cells."
        raise ContractError(msg)
    check_obs_keys(img, {"sample_key": sample_key, "treatment_key": treatment_key}, mod=image_mod)
    check_rep(img, image_rep, mod=image_mod, arg="image_rep", n_features=n_image)
    n_treat = img.obs.groupby(img.obs[sample_key].astype(str), observed=True)[treatment_key].nunique()
    if (n_treat > 1).any():
        msg = (
            f"samples {list(n_treat.index[n_treat > 1][:5])} of mdata.mod[{image_mod!r}] have several treatments "
            f"(obs[{treatment_key!r}]); a sample must be one treated unit."
        )
        raise ContractError(msg)
    if rna_mod is None:
        return
    rna = get_mod(mdata, rna_mod, arg="rna_mod")
    if rna.n_obs == 0:
        msg = f"mdata.mod[{rna_mod!r}] has no cells."
        raise ContractError(msg)
    check_obs_keys(rna, {"sample_key": sample_key}, mod=rna_mod)
    check_rep(rna, rna_rep, mod=rna_mod, arg="rna_rep", n_features=n_rna)
    img_samples = set(img.obs[sample_key].astype(str))
    rna_samples = pd.unique(rna.obs[sample_key].astype(str))
    missing = [s for s in rna_samples if s not in img_samples]
    if len(missing) == len(rna_samples):
        msg = (
            f"mdata.mod[{image_mod!r}] and mdata.mod[{rna_mod!r}] share no sample (obs[{sample_key!r}]); "
            f"e.g. imaging {sorted(img_samples)[:3]} vs RNA {sorted(rna_samples)[:3]}. The modalities are paired "
            "by sample, so they must use the same sample names."
        )
        raise ContractError(msg)
    if missing:
        msg = (
            f"{len(missing)} samples of mdata.mod[{rna_mod!r}] have no imaging cells in mdata.mod[{image_mod!r}] "
            f"(obs[{sample_key!r}]), e.g. {sorted(missing)[:5]}; every RNA sample needs imaging cells to "
            "condition on. Subset the RNA modality to samples that were imaged."
        )
        raise ContractError(msg)
    check_unique_obs_names(mdata)
