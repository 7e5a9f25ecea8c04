"""The image autoencoder of latent diffusion (a diffusers ``AutoencoderKL``) with its loss (no AnnData here).

Tiles keep all their channels (Cell Painting has 5; never squashed to RGB). Intensities are mapped to
``[-1, 1]`` per channel with a stored range (``intensity_low`` -> -1, ``intensity_high`` -> 1), and the
latents that diffusion sees are the posterior means times a stored ``scaling_factor`` (Stable Diffusion's
convention: latents of about unit variance). All three live in buffers, so they are saved with the weights.
"""

from __future__ import annotations

from typing import Any

import torch
from scvi.module.base import BaseModuleClass, LossOutput

__all__ = ["IMAGE_VAE_PRESETS", "ImageVAEModule", "autoencoder_config"]

#: Network sizes per preset. ``paper`` is the layout of Stable Diffusion's VAE (the image autoencoder
#: TRIDENT takes pre-trained): four resolution levels (128, 256, 512, 512), two ResNet blocks per level,
#: 4 latent channels, downsampling factor 8. ``fast`` (factor 4) and ``tiny`` (factor 2, for tests) are
#: the same code at CPU sizes.
IMAGE_VAE_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"block_out_channels": (128, 256, 512, 512), "layers_per_block": 2, "latent_channels": 4},
    "fast": {"block_out_channels": (32, 64, 128), "layers_per_block": 1, "latent_channels": 4},
    "tiny": {"block_out_channels": (16, 32), "layers_per_block": 1, "latent_channels": 4},
}


def _norm_groups(block_out_channels: tuple[int, ...]) -> int:
    """GroupNorm groups: 32 (Stable Diffusion's) where every width allows it, else the largest that divides."""
    for groups in (32, 16, 8, 4, 2, 1):
        if all(c % groups == 0 for c in block_out_channels):
            return groups
    return 1


def autoencoder_config(
    n_channels: int, *, block_out_channels: tuple[int, ...], layers_per_block: int, latent_channels: int
) -> dict[str, Any]:
    """A diffusers ``AutoencoderKL`` configuration for ``n_channels``-channel tiles."""
    n = len(block_out_channels)
    return {
        "in_channels": int(n_channels),
        "out_channels": int(n_channels),
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "up_block_types": ["UpDecoderBlock2D"] * n,
        "block_out_channels": [int(c) for c in block_out_channels],
        "layers_per_block": int(layers_per_block),
        "act_fn": "silu",
        "latent_channels": int(latent_channels),
        "norm_num_groups": _norm_groups(tuple(block_out_channels)),
        "sample_size": 64,
    }


class ImageVAEModule(BaseModuleClass):
    """A diffusers ``AutoencoderKL`` with intensity mapping, latent scaling and the VAE loss.

    Parameters
    ----------
    config
        ``AutoencoderKL`` configuration (e.g. from :func:`autoencoder_config` or a pretrained directory's
        ``config.json``).
    kl_weight
        Weight of the KL term in :meth:`loss` (see there for the scale).
    reconstruction
        ``'l1'`` (Stable Diffusion's autoencoder) or ``'mse'``, on ``[-1, 1]``-scaled tiles.
    """

    def __init__(
        self, config: dict[str, Any], *, kl_weight: float = 1e-6, reconstruction: str = "l1"
    ) -> None:
        from diffusers import AutoencoderKL

        super().__init__()
        if reconstruction not in ("l1", "mse"):
            msg = f"reconstruction={reconstruction!r}: choose 'l1' or 'mse'."
            raise ValueError(msg)
        self.autoencoder = AutoencoderKL.from_config(config)
        self.kl_weight = float(kl_weight)
        self.reconstruction = reconstruction
        n = int(self.autoencoder.config.in_channels)
        self.register_buffer("intensity_low", torch.zeros(n))
        self.register_buffer("intensity_high", torch.ones(n))
        self.register_buffer("clip_output", torch.tensor(True))
        self.register_buffer("scaling_factor", torch.tensor(float(self.autoencoder.config.scaling_factor)))

    @property
    def n_channels(self) -> int:
        """Channels per tile."""
        return int(self.autoencoder.config.in_channels)

    @property
    def latent_channels(self) -> int:
        """Channels of the latent grid."""
        return int(self.autoencoder.config.latent_channels)

    @property
    def downsample_factor(self) -> int:
        """Tile side / latent side."""
        return 2 ** (len(self.autoencoder.config.block_out_channels) - 1)

    # ------------------------------------------------------------------ intensities
    def normalize(self, tiles: torch.Tensor) -> torch.Tensor:
        """Map raw tiles ``(b, C, H, W)`` (any numeric dtype) to ``[-1, 1]`` float32 with the stored range."""
        low = self.intensity_low[None, :, None, None]
        high = self.intensity_high[None, :, None, None]
        return (tiles.float() - low) / (high - low) * 2.0 - 1.0

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalize` (clipped to the range when it is an integer dtype's)."""
        if bool(self.clip_output):
            x = x.clamp(-1.0, 1.0)
        low = self.intensity_low[None, :, None, None]
        high = self.intensity_high[None, :, None, None]
        return (x.float() + 1.0) / 2.0 * (high - low) + low

    # ------------------------------------------------------------------ latents
    def encode_mean(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled posterior means of ``[-1, 1]`` tiles: the latents diffusion works on."""
        return self.autoencoder.encode(x).latent_dist.mean * self.scaling_factor

    def decode_scaled(self, z: torch.Tensor) -> torch.Tensor:
        """``[-1, 1]`` tiles from scaled latents."""
        return self.autoencoder.decode(z / self.scaling_factor).sample

    # ------------------------------------------------------------------ scvi-tools interface
    def _get_inference_input(self, tensors: dict[str, torch.Tensor], **kwargs: Any) -> dict[str, Any]:
        return {"x": self.normalize(tensors["images"])}

    def inference(self, x: torch.Tensor) -> dict[str, Any]:
        """The posterior over latents of ``[-1, 1]`` tiles."""
        return {"x": x, "posterior": self.autoencoder.encode(x).latent_dist}

    def _get_generative_input(
        self, tensors: dict[str, torch.Tensor], inference_outputs: dict[str, Any], **kwargs: Any
    ) -> dict[str, Any]:
        return {"z": inference_outputs["posterior"].sample()}

    def generative(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Decode (unscaled) latent samples to ``[-1, 1]`` tiles."""
        return {"x_hat": self.autoencoder.decode(z).sample}

    def loss(
        self,
        tensors: dict[str, torch.Tensor],
        inference_outputs: dict[str, Any],
        generative_outputs: dict[str, torch.Tensor],
    ) -> LossOutput:
        """Reconstruction error per pixel value + ``kl_weight`` x KL per pixel value.

        The reconstruction term is the mean absolute (``'l1'``) or squared (``'mse'``) error over a tile's
        pixel values; the KL term is the tile's summed KL divided by its number of pixel values. This is
        Stable Diffusion's autoencoder objective (sums over the tile) divided by the number of pixel
        values, so ``kl_weight=1e-6`` means what it means there.
        """
        x, x_hat = inference_outputs["x"], generative_outputs["x_hat"].float()
        err = (x_hat - x).abs() if self.reconstruction == "l1" else (x_hat - x).square()
        rec = err.flatten(1).mean(1)
        n_values = x[0].numel()
        kl = inference_outputs["posterior"].kl().float() / n_values
        per_item = rec + self.kl_weight * kl
        return LossOutput(
            loss=per_item.mean(),
            n_obs_minibatch=x.shape[0],
            extra_metrics={
                "reconstruction": rec.mean().detach(),
                "l1": (x_hat - x).abs().mean().detach(),
                "kl": kl.mean().detach(),
            },
        )
