"""ImageVAE: the image autoencoder of latent diffusion for n-channel tiles (scvi-tools model).

A diffusers ``AutoencoderKL`` trained on the tiles of an AnnData (``.obsm['images']``), or loaded from a
diffusers directory (e.g. Stable Diffusion's ``vae/``); it gives TRIDENT's latent diffusion its latents.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from scvi.data import AnnDataManager
from scvi.train import TrainRunner

from .. import _constants as C
from .._errors import ContractError, MorphomuError
from .._validation import (
    check_nonnegative,
    check_nonnegative_int,
    check_positive,
    check_positive_int,
    optional,
)
from ..module._image_vae import IMAGE_VAE_PRESETS, ImageVAEModule
from ..train._image_vae_data import ImageVAETrainingPlan, TileDataModule, tiles_to_tensor
from ._base import MANIFEST, MorphomuModel
from ._image_vae_checks import (
    as_tile_array,
    check_finite,
    check_latents,
    check_tiles,
    fit_intensity_range,
    fit_rows,
    fit_scaling_factor,
)
from ._image_vae_pretrained import (
    adopt_autoencoder,
    bare_registry,
    network_config,
    read_diffusers_autoencoder,
    resolve_autoencoder_config,
    set_intensity_range,
)
from ._training import TrainingMixin, train_docstring

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["ImageVAE"]

#: Training defaults per preset (AdamW, constant learning rate).
TRAIN_DEFAULTS: dict[str, dict[str, float]] = {
    "paper": {"max_epochs": 100, "batch_size": 16, "lr": 1e-4},
    "fast": {"max_epochs": 50, "batch_size": 32, "lr": 1e-3},
    "tiny": {"max_epochs": 20, "batch_size": 32, "lr": 2e-3},
}

#: Checks of :meth:`ImageVAE.train`'s arguments (``None``: the preset's default), run before any work.
TRAIN_CHECKS: dict[str, Any] = {
    "max_epochs": optional(check_positive_int),
    "batch_size": optional(check_positive_int),
    "lr": optional(check_positive),
    "kl_weight": check_nonnegative,
    "weight_decay": check_nonnegative,
    "num_workers": check_nonnegative_int,
}


# ---------------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------------
class ImageVAE(TrainingMixin, MorphomuModel):
    """Variational autoencoder for n-channel image tiles: a diffusers ``AutoencoderKL``.

    The image autoencoder of latent diffusion (TRIDENT takes Stable Diffusion's, pre-trained). Tiles keep
    all their channels (Cell Painting has 5; never squashed to RGB). Intensities map to ``[-1, 1]`` per
    channel: an unsigned integer dtype's full range (``0 .. 255`` for uint8), or, for float tiles, robust
    per-channel percentiles (:data:`~morphomu.models._image_vae_checks.ROBUST_PERCENTILES`) of the train
    tiles, fit at the first training and stored. :meth:`encode` returns the posterior means times
    :attr:`scaling_factor`, fit when training ends so that latents have about unit variance (Stable
    Diffusion's convention); :meth:`decode` inverts it and returns tiles in the input's units.

    Training minimises the reconstruction error (L1 or MSE on ``[-1, 1]`` tiles) plus ``kl_weight`` x KL,
    Stable Diffusion's autoencoder objective without its perceptual (LPIPS) and adversarial terms: both
    need pretrained networks (VGG, a discriminator's features) that cannot be downloaded here, so
    reconstructions are somewhat blurrier than with the full objective. A pretrained Stable Diffusion VAE
    can be loaded instead with :meth:`from_pretrained` when its channel count fits.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`; ``None`` only with ``registry`` (how
        :meth:`from_pretrained` and :meth:`load` build a model without data).
    preset
        ``'fast'`` (default: widths (32, 64, 128), factor 4), ``'paper'`` (Stable Diffusion's VAE layout:
        widths (128, 256, 512, 512), 2 blocks per level, 4 latent channels, factor 8) or ``'tiny'``
        ((16, 32), factor 2; tests). It chooses the network sizes and :meth:`train`'s defaults; the sizes
        below override the network's one by one and leave the training defaults the preset's (kept in
        ``model.preset``).
    latent_channels
        Channels of the latent grid.
    block_out_channels
        Width of each resolution level; the downsampling factor is ``2 ** (len(block_out_channels) - 1)``.
    layers_per_block
        ResNet blocks per level.
    reconstruction
        ``'l1'`` (Stable Diffusion's) or ``'mse'``.
    n_channels
        Channels per tile; taken from the data when ``adata`` is given.
    autoencoder_config
        A complete diffusers ``AutoencoderKL`` configuration, overriding the preset and sizes (set by
        :meth:`from_pretrained`).
    registry
        scvi-tools registry of a model without data (internal).

    Examples
    --------
    >>> import morphomu as mm
    >>> mdata = mm.datasets.simulate_scgenescope(
    ...     n_img_cells=500, n_rna_cells=500, with_images=True
    ... )  # doctest: +SKIP
    >>> img = mdata["img"]  # doctest: +SKIP
    >>> mm.models.ImageVAE.setup_anndata(img)  # doctest: +SKIP
    >>> vae = mm.models.ImageVAE(img, preset="tiny")  # doctest: +SKIP
    >>> vae.train(max_epochs=5)  # doctest: +SKIP
    >>> latents = vae.encode(img.obsm["images"][:8])  # (8, 4, H / 2, W / 2)  # doctest: +SKIP
    >>> tiles = vae.decode(latents)  # doctest: +SKIP
    """

    _module_cls = ImageVAEModule
    _loads_without_data = True
    _training_plan_cls = ImageVAETrainingPlan
    _data_splitter_cls = TileDataModule
    _train_runner_cls = TrainRunner
    _train_defaults = TRAIN_DEFAULTS
    _train_checks = TRAIN_CHECKS

    def __init__(
        self,
        adata: AnnData | None = None,
        *,
        preset: Literal["paper", "fast", "tiny"] = "fast",
        latent_channels: int | None = None,
        block_out_channels: tuple[int, ...] | None = None,
        layers_per_block: int | None = None,
        reconstruction: Literal["l1", "mse"] = "l1",
        n_channels: int | None = None,
        autoencoder_config: dict[str, Any] | None = None,
        registry: dict[str, Any] | None = None,
    ) -> None:
        if preset not in IMAGE_VAE_PRESETS:
            msg = f"preset={preset!r}: choose one of {sorted(IMAGE_VAE_PRESETS)}."
            raise MorphomuError(msg)
        if reconstruction not in ("l1", "mse"):
            msg = f"reconstruction={reconstruction!r}: choose 'l1' or 'mse'."
            raise MorphomuError(msg)
        if adata is None and registry is None:
            msg = (
                "ImageVAE needs data: call ImageVAE.setup_anndata(adata) and ImageVAE(adata, ...), or load "
                "weights with ImageVAE.from_pretrained(path) / ImageVAE.load(path)."
            )
            raise MorphomuError(msg)
        if n_channels is not None:
            n_channels = check_positive_int(n_channels, "n_channels")
        super().__init__(adata, registry=registry)
        if adata is not None:
            images = adata.obsm[self.setup_args["images_key"]]
            if n_channels is not None and int(n_channels) != images.shape[1]:
                msg = f"n_channels={n_channels} but the registered tiles have {images.shape[1]} channels."
                raise MorphomuError(msg)
            n_channels = int(images.shape[1])
        sizes = {
            "latent_channels": latent_channels,
            "block_out_channels": block_out_channels,
            "layers_per_block": layers_per_block,
        }
        config, n_channels = resolve_autoencoder_config(preset, n_channels, sizes, autoencoder_config)
        self.preset = preset
        self.module = self._module_cls(config, reconstruction=reconstruction)
        if adata is not None:
            images = adata.obsm[self.setup_args["images_key"]]
            check_tiles(
                images, where=f"adata.obsm[{self.setup_args['images_key']!r}]", factor=self.downsample_factor
            )
        cfg = self.module.autoencoder.config
        self._model_summary_string = (
            f"ImageVAE ({preset if autoencoder_config is None else 'pretrained'}) with "
            f"{sum(p.numel() for p in self.module.parameters()):,} parameters: {self.n_channels} channels -> "
            f"{self.latent_channels} latent channels, downsampling x{self.downsample_factor}, "
            f"block_out_channels={tuple(cfg.block_out_channels)}, layers_per_block={cfg.layers_per_block}."
        )
        self.init_params_ = self._get_init_params(locals())

    # ------------------------------------------------------------------ properties
    @property
    def autoencoder(self) -> Any:
        """The diffusers ``AutoencoderKL``."""
        return self.module.autoencoder

    @property
    def n_channels(self) -> int:
        """Channels per tile."""
        return self.module.n_channels

    @property
    def latent_channels(self) -> int:
        """Channels of the latent grid."""
        return self.module.latent_channels

    @property
    def downsample_factor(self) -> int:
        """Tile side divided by latent side."""
        return self.module.downsample_factor

    @property
    def scaling_factor(self) -> float:
        """Factor applied to posterior means by :meth:`encode` (latents of about unit variance)."""
        return float(self.module.scaling_factor)

    @property
    def intensity_range(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel input values that map to -1 and 1."""
        return self.module.intensity_low.cpu().numpy(), self.module.intensity_high.cpu().numpy()

    def get_var_names(self, legacy_mudata_format: bool = False) -> np.ndarray:
        """Channel names (``'0'``, ``'1'``, ...): tiles have no features; the AnnData's ``var`` is not used."""
        return np.arange(self.n_channels).astype(str)

    # ------------------------------------------------------------------ setup
    @classmethod
    def setup_anndata(
        cls,
        adata: AnnData,
        *,
        images_key: str = C.IMAGES_KEY,
        split_key: str | None = C.SPLIT_KEY,
        **kwargs: Any,
    ) -> None:
        """Register an AnnData whose ``.obsm[images_key]`` holds tiles ``(n, C, H, W)``.

        Checks before registering: the key exists, the tiles are 4-d, unsigned integer or float, and
        finite. (Divisibility of H and W by the downsampling factor is checked when the model is built.)

        Parameters
        ----------
        adata
            One modality, e.g. ``mdata['img']``.
        images_key
            ``.obsm`` key of the tiles (uint8, uint16, float16 or float32).
        split_key
            obs column with split labels: training uses the ``train`` tiles and reports the validation loss
            on the ``val`` tiles. When the column is absent (or ``None``) every tile is used for training
            and there is no validation.
        **kwargs
            Passed to scvi-tools' registration (``source_registry`` when loading).
        """
        setup_method_args = cls._get_setup_method_args(**locals())
        from anndata import AnnData  # after the line above, which records every local as a setup argument

        if not isinstance(adata, AnnData):
            msg = f"adata must be an AnnData, got {type(adata).__name__}" + (
                " (pass one modality, e.g. mdata['img'])." if type(adata).__name__ == "MuData" else "."
            )
            raise ContractError(msg)
        if not isinstance(images_key, str) or images_key not in adata.obsm:
            msg = (
                f"images_key={images_key!r} is not in adata.obsm; its keys are {sorted(adata.obsm.keys())}. "
                "Tiles go in .obsm as an (n, C, H, W) array."
            )
            raise ContractError(msg)
        images = adata.obsm[images_key]
        where = f"adata.obsm[{images_key!r}]"
        check_tiles(images, where=where)
        if adata.n_obs == 0:
            msg = "adata has no tiles."
            raise ContractError(msg)
        check_finite(images, where=where)
        manager = AnnDataManager(fields=[], setup_method_args=setup_method_args)
        manager.register_fields(adata, **kwargs)
        cls.register_manager(manager)

    # ------------------------------------------------------------------ training
    def _rows(self) -> tuple[np.ndarray, np.ndarray]:
        adata, split_key = self.adata, self.setup_args["split_key"]
        if split_key is None or split_key not in adata.obs.columns:
            return np.arange(adata.n_obs), np.zeros(0, dtype=np.int64)
        split = adata.obs[split_key].astype(str).to_numpy()
        train, val = np.flatnonzero(split == C.TRAIN), np.flatnonzero(split == C.VAL)
        if train.size == 0:
            msg = (
                f"adata.obs[{split_key!r}] (split_key) has no {C.TRAIN!r} tiles (found {sorted(set(split))}); "
                "run mm.pp.assign_split, or set up with split_key=None to train on every tile."
            )
            raise ContractError(msg)
        return train, val

    @train_docstring
    def train(
        self,
        max_epochs: int | None = None,
        *,
        batch_size: int | None = None,
        lr: float | None = None,
        kl_weight: float = 1e-6,
        weight_decay: float = 0.0,
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
        """Train with AdamW on the ``train`` tiles; the reconstruction error is logged every epoch.

        ``history_`` holds per-epoch ``train_loss`` / ``train_reconstruction`` / ``train_kl`` and, when there
        are ``val`` tiles, ``validation_loss`` / ``validation_reconstruction`` / ``validation_kl``. When
        training ends the latent scaling factor is refit on (up to 1024) train tiles.

        Parameters
        ----------
        max_epochs
            Epochs; default 100 (``paper``), 50 (``fast``), 20 (``tiny``).
        batch_size
            Tiles per step and device; default 16 (``paper``), 32 otherwise.
        lr
            Learning rate; default 1e-4 (``paper``), 1e-3 (``fast``), 2e-3 (``tiny``).
        kl_weight
            Weight of the KL term (Stable Diffusion's autoencoder: 1e-6, with errors summed per tile; see
            :meth:`morphomu.module._image_vae.ImageVAEModule.loss`).
        weight_decay
            AdamW weight decay.
        seed
            Seed of the tile order. Weight initialisation and posterior draws follow torch's global seed
            (``scvi.settings.seed``).
        {train_core}
        """
        self._run_training(locals())

    # training hooks (models/_training.py)
    def _train_args(self, args: dict[str, Any]) -> dict[str, Any]:
        if self.adata is None:
            msg = (
                "this ImageVAE has no data (it was loaded from a pretrained directory or without AnnData); "
                "set up an AnnData with ImageVAE.setup_anndata and build a model on it to train."
            )
            raise MorphomuError(msg)
        args = super()._train_args(args)
        args["max_epochs"], args["batch_size"] = int(args["max_epochs"]), int(args["batch_size"])
        args["lr"] = float(args["lr"])
        return args

    def _run_config(self, args: dict[str, Any]) -> dict[str, Any]:
        keys = ("max_epochs", "batch_size", "lr")
        return {
            "model": type(self).__name__,
            "preset": self.preset,
            **{k: args[k] for k in keys},
            "kl_weight": float(args["kl_weight"]),
            "seed": int(args["seed"]),
        }

    def _training_tiles(self) -> tuple[Any, np.ndarray, np.ndarray]:
        """The checked tiles and their train / validation rows."""
        return (self._registered_tiles(self.adata), *self._rows())

    def _registered_tiles(self, adata: AnnData) -> Any:
        """``adata``'s tiles under the registered key, checked against this model's channels and factor."""
        key = self.setup_args["images_key"]
        images = adata.obsm[key]
        check_tiles(
            images, where=f"adata.obsm[{key!r}]", n_channels=self.n_channels, factor=self.downsample_factor
        )
        return images

    def _make_datamodule(self, args: dict[str, Any]) -> TileDataModule:
        images, train_rows, val_rows = self._training_tiles()
        if not self.is_trained_:  # the intensity mapping is fit once, on train tiles
            low, high, clip = fit_intensity_range(images, train_rows[fit_rows(train_rows.size)])
            with torch.no_grad():
                self.module.intensity_low.copy_(torch.from_numpy(low))
                self.module.intensity_high.copy_(torch.from_numpy(high))
                self.module.clip_output.fill_(clip)
        self.module.kl_weight = float(args["kl_weight"])
        return self._data_splitter_cls(
            images,
            train_rows=train_rows,
            val_rows=val_rows,
            batch_size=args["batch_size"],
            seed=args["seed"],
            num_workers=args["num_workers"],
        )

    def _make_plan(self, args: dict[str, Any]) -> ImageVAETrainingPlan:
        return self._training_plan_cls(
            self.module, optimizer="AdamW", lr=args["lr"], weight_decay=args["weight_decay"], eps=1e-8
        )

    def _trainer_defaults(self, args: dict[str, Any], datamodule: TileDataModule) -> dict[str, Any]:
        return {"check_val_every_n_epoch": 1, "early_stopping": False}

    def _after_training(self, plan: ImageVAETrainingPlan, args: dict[str, Any]) -> None:
        self.module.eval()
        images, train_rows, _ = self._training_tiles()
        self._fit_scaling_factor(images, train_rows[fit_rows(train_rows.size)])

    def _fit_scaling_factor(self, images: Any, rows: np.ndarray) -> None:
        """Set the scaling factor to 1 / std of the posterior means of the given tiles."""
        factor = fit_scaling_factor(self.module.eval(), images, rows, self.device)
        with torch.inference_mode():
            self.module.scaling_factor.fill_(factor)
        self.module.autoencoder.register_to_config(scaling_factor=factor)

    # ------------------------------------------------------------------ encode / decode
    def _check_ready(self) -> None:
        if not self.is_trained_:
            msg = "the ImageVAE is not trained; call .train() first (or load one with ImageVAE.from_pretrained)."
            raise MorphomuError(msg)

    def encode(self, images: Any, *, batch_size: int = 256) -> np.ndarray:
        """Scaled latent means of tiles.

        Parameters
        ----------
        images
            Tiles ``(n, C, H, W)`` in the units the model was trained on (a numpy array, or an on-disk
            array such as zarr / h5py, read ``batch_size`` tiles at a time).
        batch_size
            Tiles encoded together.

        Returns
        -------
        float32 array ``(n, latent_channels, H / downsample_factor, W / downsample_factor)``: the posterior
        means times :attr:`scaling_factor`.
        """
        batch_size = check_positive_int(batch_size, "batch_size")
        self._check_ready()
        images = as_tile_array(images)
        check_tiles(images, where="images", n_channels=self.n_channels, factor=self.downsample_factor)
        n, _, h, w = images.shape
        f = self.downsample_factor
        out = np.empty((n, self.latent_channels, h // f, w // f), dtype=np.float32)
        module = self.module.eval()
        device = self.device
        with torch.inference_mode():
            for start in range(0, n, int(batch_size)):
                x = module.normalize(
                    tiles_to_tensor(np.asarray(images[start : start + int(batch_size)])).to(device)
                )
                out[start : start + x.shape[0]] = module.encode_mean(x).float().cpu().numpy()
        return out

    def decode(self, latents: Any, *, batch_size: int = 256) -> np.ndarray:
        """Tiles from scaled latents (the inverse of :meth:`encode`).

        Parameters
        ----------
        latents
            ``(n, latent_channels, h, w)`` scaled latents (e.g. from :meth:`encode` or a latent diffusion
            model).
        batch_size
            Latents decoded together.

        Returns
        -------
        float32 array ``(n, C, h * downsample_factor, w * downsample_factor)`` in the input's units (clipped
        to the dtype's range for models trained on integer tiles).
        """
        batch_size = check_positive_int(batch_size, "batch_size")
        self._check_ready()
        latents = check_latents(latents, self.latent_channels)
        n, _, h, w = latents.shape
        f = self.downsample_factor
        out = np.empty((n, self.n_channels, h * f, w * f), dtype=np.float32)
        module = self.module.eval()
        device = self.device
        with torch.inference_mode():
            for start in range(0, n, int(batch_size)):
                z = torch.from_numpy(latents[start : start + int(batch_size)].astype(np.float32)).to(device)
                out[start : start + z.shape[0]] = module.denormalize(module.decode_scaled(z)).cpu().numpy()
        return out

    # ------------------------------------------------------------------ pretrained weights, save / load
    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        n_channels: int | None = None,
        intensity_range: tuple[float, float] | None = None,
        legacy_format: bool = False,
    ) -> ImageVAE:
        """Load a diffusers ``AutoencoderKL`` directory or a directory written by :meth:`save`.

        A diffusers directory holds ``config.json`` and the weights (``diffusion_pytorch_model.safetensors``
        or ``.bin``), e.g. Stable Diffusion's ``vae/`` folder (a pipeline directory with a ``vae/``
        sub-folder also works). Nothing is downloaded: download the folder first and pass its path. The
        model has no AnnData; :meth:`encode` and :meth:`decode` work without one.

        Parameters
        ----------
        path
            The directory.
        n_channels
            Channels the tiles have; checked against the configuration's ``in_channels`` /
            ``out_channels`` (default: the configuration's).
        intensity_range
            Input values that map to -1 and 1 (every channel). For a diffusers directory the default is
            ``(0, 255)``: Stable Diffusion's VAE was trained on 8-bit images mapped to ``[-1, 1]``. For a
            directory written by :meth:`save` the default is the stored range.
        legacy_format
            For a directory written by :meth:`save`: also read format 1 (see :meth:`load`).

        Returns
        -------
        A trained (``is_trained_``) ImageVAE whose :attr:`scaling_factor` is the configuration's.
        """
        path = Path(path)
        if not path.is_dir():
            msg = f"path={str(path)!r} is not a directory; expected a diffusers AutoencoderKL folder or an ImageVAE.save one."
            raise MorphomuError(msg)
        if (path / MANIFEST).is_file():
            model = cls.load(path, legacy_format=legacy_format)
            if n_channels is not None and int(n_channels) != model.n_channels:
                msg = (
                    f"path={str(path)!r} holds an ImageVAE for {model.n_channels}-channel tiles; expected "
                    f"n_channels={n_channels}."
                )
                raise MorphomuError(msg)
        else:
            autoencoder, expected = read_diffusers_autoencoder(path, n_channels)
            model = cls(
                None,
                n_channels=expected,
                autoencoder_config=network_config(autoencoder.config),
                registry=bare_registry(C.IMAGES_KEY, C.SPLIT_KEY),
            )
            adopt_autoencoder(model.module, autoencoder)
            model.is_trained_ = True
            model.module.eval()
        if intensity_range is not None:
            set_intensity_range(model.module, intensity_range)
        return model

    @classmethod
    def load(
        cls,
        dir_path: str | Path,
        adata: AnnData | None = None,
        *,
        accelerator: str = "auto",
        device: int | str = "auto",
        prefix: str | None = None,
        legacy_format: bool = False,
    ) -> ImageVAE:
        """Load a model saved by :meth:`save`, optionally attached to an AnnData of the same channel count.

        Nothing from the directory is run: weights come from safetensors, the rest from typed JSON.

        Parameters
        ----------
        dir_path
            Directory written by :meth:`save`.
        adata
            Tiles to attach (set up with the saved keys; needed only to train further).
        accelerator
            Lightning accelerator to load onto.
        device
            Device to load onto.
        prefix
            File-name prefix used at save.
        legacy_format
            Also read format 1 (see :meth:`morphomu.models.PhenoSeq.load`).
        """
        model = super().load(
            dir_path, None, accelerator=accelerator, device=device, prefix=prefix, legacy_format=legacy_format
        )
        if adata is not None:
            key = model.setup_args["images_key"]
            if key not in getattr(adata, "obsm", {}):
                msg = f"adata.obsm has no {key!r} (the images_key this model was set up with)."
                raise ContractError(msg)
            model._registered_tiles(adata)
            model.adata = adata
        model.module.eval()
        return model
