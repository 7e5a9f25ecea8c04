"""PhenoSeq: image -> RNA conditional diffusion (scvi-tools model: setup, train, generate, save, load)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import torch
from scvi.train import TrainRunner

from .. import _constants as C
from .._core import Standardizer, autocast, check_precision, read_rows, rep_matrix, resolve_precision
from .._errors import MorphomuError
from .._validation import check_args, check_fraction
from ..module._diffusion import DEFAULT_N_STEPS, DEFAULT_SAMPLER
from ..module._phenoseq import PHENOSEQ_PRESETS, PhenoSeqModule
from ..train._diffusion_plan import DiffusionTrainingPlan
from ..train._disk_cache import RowCache, RowReader, check_cache_options, is_in_memory, use_disk_cache
from ..train._ema import ExponentialMovingAverage
from ..train._set_data import PairedSetDataModule
from ._base import MorphomuModel
from ._paired import PairedSetupMixin
from ._phenoseq_checks import (
    GENERATE_CHECKS,
    SIZE_CHECKS,
    TRAIN_CHECKS,
    check_training_split,
    imaging_fit_rows,
    select_samples,
)
from ._phenoseq_sampling import generated_rna, sample_cells
from ._training import EMATrainingMixin, train_docstring

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

__all__ = ["TRAIN_DEFAULTS", "PhenoSeq"]

logger = logging.getLogger(__name__)

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


class PhenoSeq(PairedSetupMixin, EMATrainingMixin, MorphomuModel):
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
        ``'fast'`` (default: CPU-sized, minutes on a laptop), ``'paper'`` (the paper's Table 4: 168 M
        parameters at 5120/512 features, for a GPU) or ``'tiny'`` (tests). It chooses the network sizes
        and the training regime (:meth:`train`'s defaults, ``prediction_type``); the sizes below override
        the network's one by one and leave the training regime the preset's (kept in ``model.preset``).
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
    _train_defaults = TRAIN_DEFAULTS
    _train_checks = {**TRAIN_CHECKS, "precision": check_precision}
    _generate_checks = {**GENERATE_CHECKS, "precision": check_precision}
    _presets = PHENOSEQ_PRESETS

    def __init__(
        self,
        mdata: MuData,
        *,
        preset: Literal["paper", "fast", "tiny"] = "fast",
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
        sizes.update(check_args(sizes, SIZE_CHECKS))
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

    def _paired_data(self, mdata: MuData | None = None) -> tuple[MuData, dict[str, Any]]:
        """The paired MuData that training (``mdata=None``: the model's own) and generation read, and its keys.

        PhenoSeq reads the data as given, under its setup keys; a subclass that trains on data derived
        from the user's (:class:`~morphomu.models.MorphologyEmbedder`) returns the derived data instead.
        """
        return (self.adata if mdata is None else mdata), self.setup_args

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
        mdata, a = self._paired_data()
        img, rna = mdata.mod[a["image_mod"]], mdata.mod[a["rna_mod"]]
        split_key, sample_key = a["split_key"], a["sample_key"]
        rna_split = check_training_split(rna, split_key, mod=a["rna_mod"])
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
            img_fit = imaging_fit_rows(
                img,
                split_key=split_key,
                train_samples=rna_samples[train_rows],
                sample_key=sample_key,
                mod=a["image_mod"],
            )
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
        precision: str | int = "auto",
        compile: bool = False,
        num_workers: int = 0,
        checkpoint_dir: str | os.PathLike | None = None,
        checkpoint_every_n_steps: int = 1000,
        ckpt_path: str | os.PathLike | None = None,
        verbose: bool = False,
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
        self._run_training(locals())

    # training hooks (models/_training.py)
    def _train_args(self, args: dict[str, Any]) -> dict[str, Any]:
        args = super()._train_args(args)
        check_cache_options(args["in_memory"], args["cache_dir"], args["cache_dtype"])
        return args

    def _run_config(self, args: dict[str, Any]) -> dict[str, Any]:
        return {
            **super()._run_config(args),
            "early_stopping": args["early_stopping"],
            "early_stopping_patience": args["early_stopping_patience"],
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
        n_steps: int = DEFAULT_N_STEPS["phenoseq"],
        sampler: Literal["ddim", "dpmsolver++", "unipc"] = DEFAULT_SAMPLER["phenoseq"],
        eta: float = 0.0,
        context: Literal["mean", "set"] = "mean",
        guidance_scale: float = 1.0,
        seed: int = 0,
        batch_size: int = 1024,
        precision: str = "auto",
    ) -> AnnData:
        """Generate RNA embeddings per sample from its imaging cells (reverse diffusion with ``sampler``).

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
            Denoising steps (network evaluations; twice that with guidance). The paper used 50 DDIM steps.
        sampler
            ``'ddim'`` (the paper's), or a deterministic multistep ODE solver that needs fewer steps:
            ``'dpmsolver++'`` (DPM-Solver++ 2M) or ``'unipc'`` (UniPC-2), at most 980 steps. The default,
            UniPC in 20 steps, was chosen by ``benchmarks/samplers.py`` as the fewest steps whose fidelity
            and classification match DDIM-50 within seed noise (about 2x faster);
            ``sampler='ddim', n_steps=50`` is the paper's protocol.
        eta
            DDIM stochasticity; 0 is deterministic DDIM. Only for ``sampler='ddim'``.
        context
            ``'mean'``: one context token, the mean of all the sample's imaging cells (the paper);
            ``'set'``: each generated cell is conditioned on its own random set of ``n_context_cells``
            imaging cells of the sample (as in training).
        guidance_scale
            Classifier-free guidance scale; needs a model trained with ``p_uncond > 0``. 1 is the plain
            conditional model.
        seed
            Each cell's noise (and context set) is derived from ``(seed, sample, cell index)``, so the
            output does not depend on ``batch_size`` or on which other samples are generated (each batch
            gets a fresh scheduler: the multistep solvers keep only their own rows' history).
        batch_size
            Cells denoised together.
        precision
            ``'auto'`` (default): bf16 autocast where the device computes in bf16 fast (as in :meth:`train`),
            else float32; or ``'32-true'``, ``'bf16-mixed'``, ``'16-mixed'``. The output is float32.

        Returns
        -------
        AnnData with one row per generated cell: ``.obsm[rna_rep]`` and ``.X`` (the same matrix, raw units
        of ``rna_rep``), obs ``sample``, ``treatment``, ``replicate``, ``round``, ``split`` (those present in
        the imaging modality) and ``synthetic=True``.
        """
        check_args(
            {
                "n_steps": n_steps,
                "sampler": sampler,
                "eta": eta,
                "guidance_scale": guidance_scale,
                "batch_size": batch_size,
                "n_cells_per_sample": n_cells_per_sample,
            },
            GENERATE_CHECKS,
        )
        precision = resolve_precision(precision, self.device)
        if not self.is_trained_:
            msg = "the model is not trained; call model.train() first (or PhenoSeq.load a trained one)."
            raise MorphomuError(msg)
        mdata, a = self._paired_data(mdata)
        self._check_paired_data(mdata, a, with_rna=n_cells_per_sample == "match")
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
        names, counts = select_samples(mdata, a, samples, n_cells_per_sample)
        scalers = self.standardizers
        out = autocast(precision, self.device)(sample_cells)(  # the network in the resolved precision
            self.module.eval(),
            img,
            image_rep=a["image_rep"],
            sample_key=a["sample_key"],
            names=names,
            counts=counts,
            image_scaler=scalers["image"],
            n_context_cells=self.n_context_cells,
            context=context,
            n_steps=int(n_steps),
            sampler=sampler,
            eta=float(eta),
            guidance_scale=float(guidance_scale),
            seed=int(seed),
            batch_size=int(batch_size),
        )
        adata = generated_rna(scalers["rna"].inverse_transform(out), mdata, a, names, counts)
        adata.uns[C.UNS_KEY] = {
            "generate": {
                "model": "PhenoSeq",
                "n_steps": int(n_steps),
                "sampler": sampler,
                "eta": float(eta),
                "context": context,
                "guidance_scale": float(guidance_scale),
                "seed": int(seed),
                "precision": precision,
            }
        }
        return adata
