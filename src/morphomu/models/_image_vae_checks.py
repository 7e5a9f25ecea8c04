"""Checks of an ImageVAE's sizes, tiles and latents, and the statistics fit on its train tiles."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .._errors import ContractError, MorphomuError
from .._validation import check_positive_int
from ..train._image_vae_data import tiles_to_tensor

__all__ = [
    "CHUNK_TILES",
    "N_FIT_TILES",
    "ROBUST_PERCENTILES",
    "SIZE_CHECKS",
    "as_tile_array",
    "check_dtype",
    "check_finite",
    "check_latents",
    "check_tiles",
    "check_widths",
    "fit_intensity_range",
    "fit_rows",
    "fit_scaling_factor",
]

#: Percentiles of train pixel values (per channel) that map to -1 and 1 for float tiles.
ROBUST_PERCENTILES = (0.1, 99.9)
#: Tiles read to fit the intensity range of float tiles and the latent scaling factor.
N_FIT_TILES = 1024
#: Tiles read (checked, encoded) at a time.
CHUNK_TILES = 256


def check_widths(value: Any, arg: str) -> tuple[int, ...]:
    """A non-empty sequence of positive integers (``block_out_channels``)."""
    if isinstance(value, str) or not isinstance(value, list | tuple | np.ndarray) or len(value) == 0:
        msg = f"{arg} must be a non-empty sequence of positive integers (one width per level), got {value!r}."
        raise MorphomuError(msg)
    return tuple(check_positive_int(v, f"{arg}[{i}]") for i, v in enumerate(value))


#: Checks of the network sizes (preset values and overrides), run before anything is built.
SIZE_CHECKS: dict[str, Any] = {
    "latent_channels": check_positive_int,
    "layers_per_block": check_positive_int,
    "block_out_channels": check_widths,
}


def check_dtype(dtype: np.dtype, *, where: str) -> None:
    """Raise unless tiles of ``dtype`` are unsigned integers or floats (``where`` names them)."""
    if not (np.issubdtype(dtype, np.unsignedinteger) or np.issubdtype(dtype, np.floating)):
        msg = (
            f"{where} has dtype {dtype}; expected unsigned integer (uint8, uint16) or float (float16, float32) "
            "tiles."
        )
        raise ContractError(msg)


def as_tile_array(images: Any) -> Any:
    """Tiles as an array with ``shape`` and ``dtype``: a tensor as numpy, an on-disk array as it is."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    if not hasattr(images, "shape") or not hasattr(images, "dtype"):
        images = np.asarray(images)
    return images


def check_tiles(
    images: Any,
    *,
    where: str,
    n_channels: int | None = None,
    factor: int | None = None,
) -> None:
    """Raise unless ``images`` is ``(n, C, H, W)`` of the expected channels, H and W divisible by ``factor``.

    Parameters
    ----------
    images
        Any array with ``shape`` and ``dtype`` (nothing is read).
    where
        How the error names the array.
    n_channels
        Channels expected (default any).
    factor
        The autoencoder's downsampling factor (default any tile size).
    """
    shape, dtype = tuple(images.shape), images.dtype
    if len(shape) != 4:
        msg = f"{where} must be 4-d (tiles x channels x height x width), found shape {shape}."
        raise ContractError(msg)
    check_dtype(np.dtype(dtype), where=where)
    if n_channels is not None and shape[1] != n_channels:
        msg = f"{where} has {shape[1]} channels (shape {shape}); this ImageVAE takes {n_channels}."
        raise ContractError(msg)
    if factor is not None and (shape[2] % factor or shape[3] % factor):
        msg = (
            f"{where} has tiles of {shape[2]} x {shape[3]} pixels; height and width must be divisible by the "
            f"autoencoder's downsampling factor {factor}. Crop or pad the tiles (or choose a preset with a "
            "smaller factor)."
        )
        raise ContractError(msg)


def check_finite(images: Any, *, where: str) -> None:
    """Raise if float tiles hold NaN or inf; read :data:`CHUNK_TILES` tiles at a time."""
    if not np.issubdtype(images.dtype, np.floating):
        return
    for start in range(0, images.shape[0], CHUNK_TILES):
        if not np.isfinite(np.asarray(images[start : start + CHUNK_TILES])).all():
            msg = f"{where} has non-finite values (NaN or inf); expected finite tiles."
            raise ContractError(msg)


def check_latents(latents: Any, latent_channels: int) -> np.ndarray:
    """``latents`` as a numpy array; raise unless it is ``(n, latent_channels, h, w)`` and finite floats."""
    latents = latents.detach().cpu().numpy() if isinstance(latents, torch.Tensor) else np.asarray(latents)
    if latents.ndim != 4 or latents.shape[1] != latent_channels:
        msg = (
            f"latents must be (n, {latent_channels}, h, w) (latent_channels={latent_channels}), "
            f"found shape {latents.shape}."
        )
        raise ContractError(msg)
    if not np.issubdtype(latents.dtype, np.floating) or not np.isfinite(latents).all():
        msg = f"latents must be finite floats, found dtype {latents.dtype} or non-finite values."
        raise ContractError(msg)
    return latents


def fit_rows(n: int, limit: int = N_FIT_TILES) -> np.ndarray:
    """At most ``limit`` evenly spaced row positions out of ``n`` (deterministic)."""
    return (
        np.unique(np.linspace(0, n - 1, num=min(n, limit)).round().astype(np.int64))
        if n
        else np.zeros(0, int)
    )


def fit_intensity_range(images: Any, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """Per-channel ``(low, high, clip)``: an unsigned dtype's range, or robust percentiles of float tiles."""
    n_channels = images.shape[1]
    if np.issubdtype(images.dtype, np.unsignedinteger):
        high = float(np.iinfo(images.dtype).max)
        return np.zeros(n_channels, np.float32), np.full(n_channels, high, np.float32), True
    sample = np.asarray(images[np.sort(rows)], dtype=np.float32)  # (n, C, H, W)
    values = np.moveaxis(sample, 1, 0).reshape(n_channels, -1)
    low, high = np.percentile(values, ROBUST_PERCENTILES, axis=1).astype(np.float32)
    flat = high <= low
    high[flat] = low[flat] + 1.0  # a constant channel: any non-empty range
    return low, high, False


@torch.inference_mode()
def fit_scaling_factor(module: torch.nn.Module, images: Any, rows: np.ndarray, device: Any) -> float:
    """1 / std of the posterior means of the given tiles (an ``ImageVAEModule`` in eval mode)."""
    total, total_sq, count = 0.0, 0.0, 0
    for start in range(0, rows.size, CHUNK_TILES):
        x = module.normalize(
            tiles_to_tensor(np.asarray(images[np.sort(rows[start : start + CHUNK_TILES])])).to(device)
        )
        mean = module.autoencoder.encode(x).latent_dist.mean.double()
        total += float(mean.sum())
        total_sq += float(mean.square().sum())
        count += mean.numel()
    var = total_sq / count - (total / count) ** 2
    return 1.0 / max(np.sqrt(max(var, 0.0)), 1e-8)
