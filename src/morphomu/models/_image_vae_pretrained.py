"""The diffusers side of an ImageVAE: its ``AutoencoderKL`` configuration and pretrained directories.

:meth:`ImageVAE.from_pretrained <morphomu.models.ImageVAE.from_pretrained>` reads a diffusers directory
(``config.json`` and the weights, e.g. Stable Diffusion's ``vae/``) with these checks; nothing is
downloaded.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .._core import (
    FIELD_REGISTRIES_KEY,
    MODEL_NAME_KEY,
    SCVI_VERSION_KEY,
    SETUP_ARGS_KEY,
    SETUP_METHOD_NAME_KEY,
)
from .._errors import MorphomuError
from .._validation import check_args
from ..module._image_vae import IMAGE_VAE_PRESETS, autoencoder_config
from ._image_vae_checks import SIZE_CHECKS

__all__ = [
    "adopt_autoencoder",
    "autoencoder_config_for",
    "bare_registry",
    "diffusers_autoencoder_dir",
    "network_config",
    "read_diffusers_autoencoder",
    "resolve_autoencoder_config",
    "set_intensity_range",
]


def autoencoder_config_for(n_channels: int, sizes: dict[str, Any]) -> dict[str, Any]:
    """The ``AutoencoderKL`` configuration of ``n_channels`` tiles at the given sizes."""
    return autoencoder_config(
        n_channels,
        block_out_channels=tuple(sizes["block_out_channels"]),
        layers_per_block=int(sizes["layers_per_block"]),
        latent_channels=int(sizes["latent_channels"]),
    )


def resolve_autoencoder_config(
    preset: str,
    n_channels: int | None,
    sizes: dict[str, Any],
    autoencoder_config: Mapping[str, Any] | None,
) -> tuple[dict[str, Any], int | None]:
    """The configuration of a new ImageVAE's autoencoder and its channel count.

    Parameters
    ----------
    preset
        The preset whose sizes apply.
    n_channels
        Channels per tile; needed unless ``autoencoder_config`` is given.
    sizes
        Sizes that override the preset's one by one (``None``: the preset's).
    autoencoder_config
        A complete configuration, overriding the preset and sizes; its ``in_channels`` is the channel count.
    """
    if autoencoder_config is not None:
        config = network_config(autoencoder_config)
        return config, int(config["in_channels"])
    if n_channels is None:
        msg = "n_channels is needed to build an ImageVAE without data."
        raise MorphomuError(msg)
    sizes = {**IMAGE_VAE_PRESETS[preset], **{k: v for k, v in sizes.items() if v is not None}}
    sizes.update(check_args(sizes, SIZE_CHECKS))
    return autoencoder_config_for(int(n_channels), sizes), n_channels


def network_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A diffusers configuration without its private entries.

    Those (``_name_or_path``, ...) describe the folder it was read from, not the network.
    """
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


def bare_registry(images_key: str, split_key: str | None) -> dict[str, Any]:
    """The registry of a model that has no AnnData (loaded from a pretrained directory)."""
    import scvi

    return {
        SCVI_VERSION_KEY: scvi.__version__,
        MODEL_NAME_KEY: "ImageVAE",
        SETUP_METHOD_NAME_KEY: "setup_anndata",
        SETUP_ARGS_KEY: {"images_key": images_key, "split_key": split_key},
        FIELD_REGISTRIES_KEY: {},
    }


def diffusers_autoencoder_dir(path: Path, n_channels: int | None) -> tuple[Path, int]:
    """The folder of a diffusers ``AutoencoderKL`` (``path`` or its ``vae/``) and its channel count.

    Parameters
    ----------
    path
        A diffusers ``AutoencoderKL`` directory, or a pipeline directory with a ``vae/`` sub-folder.
    n_channels
        Channels the tiles have (default the configuration's ``in_channels``).

    Raises
    ------
    MorphomuError
        When there is no ``config.json``, it is not JSON or not an ``AutoencoderKL``'s, or its
        ``in_channels`` / ``out_channels`` differ from ``n_channels``.
    """
    config_dir = path
    if not (path / "config.json").is_file() and (path / "vae" / "config.json").is_file():
        config_dir = path / "vae"
    config_file = config_dir / "config.json"
    if not config_file.is_file():
        msg = (
            f"path={str(path)!r} has no config.json (nor vae/config.json): expected a diffusers "
            "AutoencoderKL directory (config.json + diffusion_pytorch_model.safetensors), e.g. Stable "
            "Diffusion's vae/ folder, or a directory written by ImageVAE.save."
        )
        raise MorphomuError(msg)
    try:
        config = json.loads(config_file.read_text())
    except ValueError as e:
        msg = f"{config_file} is not valid JSON ({e})."
        raise MorphomuError(msg) from None
    class_name = config.get("_class_name", "AutoencoderKL")
    if class_name != "AutoencoderKL":
        msg = f"{config_file} describes a {class_name}, not an AutoencoderKL."
        raise MorphomuError(msg)
    c_in, c_out = config.get("in_channels", 3), config.get("out_channels", 3)
    expected = int(c_in) if n_channels is None else int(n_channels)
    if c_in != expected or c_out != expected:
        msg = (
            f"the autoencoder at path={str(config_dir)!r} takes in_channels={c_in} and gives "
            f"out_channels={c_out}, but n_channels={expected} is expected (tiles keep every channel; "
            "they are never squashed to RGB). Train an ImageVAE on your tiles instead, or pass a "
            f"model made for {expected} channels."
        )
        raise MorphomuError(msg)
    return config_dir, expected


def read_diffusers_autoencoder(path: Path, n_channels: int | None) -> tuple[Any, int]:
    """The ``AutoencoderKL`` of a diffusers directory (:func:`diffusers_autoencoder_dir`) and its channels."""
    config_dir, expected = diffusers_autoencoder_dir(path, n_channels)
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(config_dir, local_files_only=True), expected


def adopt_autoencoder(module: torch.nn.Module, autoencoder: Any) -> None:
    """Give an ``ImageVAEModule`` a pretrained autoencoder (in float32) and its scaling factor.

    Intensities map as Stable Diffusion's VAE was trained: ``0 .. 255`` to ``[-1, 1]``, outputs clipped.
    """
    module.autoencoder = autoencoder.float()
    with torch.no_grad():
        module.scaling_factor.fill_(float(autoencoder.config.scaling_factor))
        module.intensity_low.fill_(0.0)
        module.intensity_high.fill_(255.0)
        module.clip_output.fill_(True)


def set_intensity_range(module: torch.nn.Module, intensity_range: tuple[float, float]) -> None:
    """Map ``intensity_range = (low, high)`` to ``[-1, 1]`` on every channel of an ``ImageVAEModule``."""
    low, high = (float(v) for v in intensity_range)
    if not high > low:
        msg = f"intensity_range must be (low, high) with high > low, got {intensity_range}."
        raise MorphomuError(msg)
    with torch.no_grad():
        module.intensity_low.fill_(low)
        module.intensity_high.fill_(high)
