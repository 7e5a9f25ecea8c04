"""Trident's image VAE: chosen or built for the tiles, trained first (then frozen), tiles to latents and back."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only

from .. import _constants as C
from .._errors import MorphomuError
from ._image_vae import ImageVAE
from ._trident_checks import CHUNK_ROWS
from ._trident_data import image_vae_tiles

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = [
    "decode_tiles",
    "encode_tiles",
    "frozen_while_training",
    "latent_grid",
    "resolve_image_vae",
    "train_image_vae",
]

#: Trainer arguments of a Trident's ``train`` that its image VAE's training takes too.
_SHARED_TRAINER_KWARGS = ("enable_progress_bar", "logger", "enable_model_summary")
#: Label of the image VAE's progress bar (its epochs would otherwise read like Trident's own).
IMAGE_VAE_BAR = "Image VAE"


class _LabelBar(Callback):
    """Prefixes the progress bar's description with ``label``: ``'Image VAE: epoch 3/50'``.

    Set at each epoch's first batch, after every callback's epoch start (scvi-tools' bar writes
    ``'Epoch 3/50'`` then); a disabled progress bar, or one of a kind without a training bar, is left alone.
    """

    def __init__(self, label: str) -> None:
        self.label = label

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx:
            return
        progress = trainer.progress_bar_callback
        bar = getattr(progress, "main_progress_bar", None) or getattr(progress, "train_progress_bar", None)
        if progress is None or not progress.is_enabled or not hasattr(bar, "set_description"):
            return
        bar.set_description(f"{self.label}: epoch {trainer.current_epoch + 1}/{trainer.max_epochs}")


@rank_zero_only
def _notice(text: str) -> None:
    """One line on stdout, where scvi-tools' progress bars are drawn (``tqdm.write`` keeps open bars intact)."""
    from tqdm.auto import tqdm

    tqdm.write(text, file=sys.stdout)


def resolve_image_vae(
    image_vae: Any, img: AnnData, setup: Mapping[str, Any], *, n_channels: int, preset: str
) -> ImageVAE:
    """The image VAE a Trident was given (an ImageVAE, a directory) or, for ``None``, a new one of ``preset``.

    A new one is untrained, on a copy of the training compounds' train/val tiles of ``img``.
    """
    if image_vae is None:
        tiles = image_vae_tiles(img, setup)
        ImageVAE.setup_anndata(tiles, images_key=C.IMAGES_KEY, split_key=setup["split_key"])
        return ImageVAE(tiles, preset=preset)
    if isinstance(image_vae, str | Path):
        return ImageVAE.from_pretrained(image_vae, n_channels=n_channels)
    if isinstance(image_vae, ImageVAE):
        if int(image_vae.n_channels) != n_channels:
            msg = (
                f"image_vae has {image_vae.n_channels} channels but the tiles in mdata.mod[{setup['image_mod']!r}]"
                f".obsm[{setup['images_key']!r}] have {n_channels}."
            )
            raise MorphomuError(msg)
        return image_vae
    msg = f"image_vae must be None, an ImageVAE or a directory path, got {type(image_vae).__name__}."
    raise MorphomuError(msg)


def latent_grid(tile_shape: tuple[int, ...], factor: int, patch_size: int) -> tuple[int, int]:
    """Height and width of the latents of ``(C, H, W)`` tiles, checked to be divisible into patches."""
    _, h, w = tile_shape
    f = int(factor)
    if h % f or w % f or (h // f) % patch_size or (w // f) % patch_size:
        msg = (
            f"tiles of {h} x {w} px through an image VAE with downsampling factor {f} give {h // f} x {w // f} "
            f"latents, which patch_size={patch_size} must divide (and f must divide the tile size); "
            "crop the tiles or choose another patch_size."
        )
        raise MorphomuError(msg)
    return h // f, w // f


def train_image_vae(image_vae: ImageVAE, args: Mapping[str, Any]) -> None:
    """Train the image VAE when it is untrained (``vae_epochs``), with a Trident run's devices and seed.

    ``args`` are the Trident's ``train`` arguments; its checkpoints go to ``checkpoint_dir/image_vae``.
    A line on stdout says that the image VAE trains first and for how many epochs, and its progress bar
    reads ``'Image VAE: epoch i/N'``, so that its epochs are not taken for Trident's.
    """
    if image_vae.is_trained_:
        return
    if args["vae_epochs"] == 0:
        msg = "the image VAE is untrained and vae_epochs=0; give vae_epochs > 0 or a trained image_vae."
        raise MorphomuError(msg)
    epochs = args["vae_epochs"]
    if epochs is None:  # the image VAE's preset's default, named in the notice
        epochs = image_vae._train_defaults[image_vae.preset]["max_epochs"]
    _notice(
        f"Training the image VAE first (vae_epochs={int(epochs)}): this Trident has no trained image VAE. "
        f"Trident's own training (max_epochs={int(args['max_epochs'])}) follows."
    )
    trainer_kwargs = {k: v for k, v in args["trainer_kwargs"].items() if k in _SHARED_TRAINER_KWARGS}
    checkpoint_dir, ckpt_path = args["checkpoint_dir"], args["ckpt_path"]
    image_vae.train(
        max_epochs=int(epochs),
        accelerator=args["accelerator"],
        devices=args["devices"],
        strategy=args["strategy"],
        precision=args["precision"],
        seed=args["seed"],
        checkpoint_dir=None if checkpoint_dir is None else Path(checkpoint_dir) / "image_vae",
        checkpoint_every_n_steps=args["checkpoint_every_n_steps"],
        ckpt_path=None if ckpt_path is None else "last",
        verbose=args["verbose"],
        callbacks=[_LabelBar(IMAGE_VAE_BAR)],
        **trainer_kwargs,
    )


def encode_tiles(image_vae: Any, tiles: Any, rows: np.ndarray, *, batch_size: int) -> np.ndarray:
    """Image-VAE latents of the tiles ``rows`` (read in chunks, in row order within a chunk; float32)."""
    out = None
    for start in range(0, rows.size, CHUNK_ROWS):
        chunk = rows[start : start + CHUNK_ROWS]
        order = np.argsort(chunk)
        block = np.asarray(tiles[chunk[order]])
        lat = np.asarray(image_vae.encode(block, batch_size=batch_size), dtype=np.float32)
        if out is None:
            out = np.empty((rows.size, *lat.shape[1:]), dtype=np.float32)
        out[start + order] = lat
    return out


def decode_tiles(
    image_vae: Any, latents: np.ndarray, info: Mapping[str, Any], *, batch_size: int
) -> np.ndarray:
    """Decode latents with the image VAE, cast to the training tiles' dtype and valid range (``info``: ``data_info_``)."""
    dtype = np.dtype(info["tile_dtype"])
    low, high = info["tile_range"]
    out = np.empty((len(latents), *info["tile_shape"]), dtype=dtype)
    for start in range(0, len(latents), CHUNK_ROWS):
        block = np.asarray(image_vae.decode(latents[start : start + CHUNK_ROWS], batch_size=batch_size))
        block = np.clip(block, low, high)
        if np.issubdtype(dtype, np.integer):
            block = np.rint(block)
        out[start : start + len(block)] = block.astype(dtype)
    return out


@contextlib.contextmanager
def frozen_while_training(vae: torch.nn.Module, *, training: bool) -> Iterator[None]:
    """The image VAE's module frozen while Trident trains (else DDP would wait for its gradients).

    It is not run (the latents are cached), so it takes Trident's mode ``training``, which keeps Lightning
    from warning about modules left in eval mode; its own modes and flags are restored afterwards.
    """
    params = list(vae.parameters())
    flags = [p.requires_grad for p in params]
    modes = [(m, m.training) for m in vae.modules()]
    vae.requires_grad_(False)
    vae.train(training)
    try:
        yield
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode
