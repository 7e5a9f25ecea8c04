"""Training items of TRIDENT: one cached image latent + the condition of its (compound, round).

The image VAE is frozen, so every training tile is encoded once and the diffusion transformer trains on
the cached latents. Conditions live in small tables (one row per (compound, round)): drug features,
``G_pre`` (the round's control expression) and ``G_post`` (the compound's expression in that round);
an item is a latent row plus its condition row index, gathered per batch.

Randomness is keyed as in :mod:`morphomu.train._set_data`: an epoch's order comes from ``(seed, epoch)``
and each global batch draws its timesteps, noise, reparameterisation noise and null-condition flags from
``(seed, epoch, batch)``; rank ``r`` of ``W`` keeps items ``r, r + W, ...`` of every global batch.
"""

from __future__ import annotations

from typing import Any

import torch

from .._core import keyed_seed
from ..module._trident import IMAGE_VAE
from ._diffusion_plan import DiffusionTrainingPlan
from ._set_data import KeyedBatchDataModule, KeyedBatches

__all__ = ["TridentDataModule", "TridentTrainingPlan"]

_TRAIN_STREAM, _VAL_STREAM, _ORDER_STREAM = 11, 12, 13
#: Prefix of the image VAE's tensors in the plan's state dict (and so in a Lightning checkpoint).
_CHECKPOINT_IMAGE_VAE = f"module.{IMAGE_VAE}."


class _LatentBatches(KeyedBatches):
    """Batches of cached image latents with their condition rows, keyed by ``(epoch, global_batch)``."""

    _order_stream = _ORDER_STREAM

    def __init__(
        self,
        *,
        tables: dict[str, torch.Tensor],
        latents: torch.Tensor,
        condition: torch.Tensor,
        rows: torch.Tensor,
        batch_size: int,
        n_timesteps: int,
        p_uncond: float,
        n_latent: int,
        seed: int,
        shuffle: bool,
        stream: int,
        balanced: bool = False,
    ) -> None:
        weights = None
        if balanced:  # every condition equally likely: each row weighs 1 / (rows of its condition)
            counts = torch.bincount(condition[rows], minlength=int(condition.max()) + 1).double()
            weights = 1.0 / counts[condition[rows]]
        super().__init__(
            rows, batch_size=batch_size, seed=seed, shuffle=shuffle, stream=stream, weights=weights
        )
        self.tables, self.latents, self.condition = tables, latents, condition
        self.n_timesteps, self.p_uncond, self.n_latent = n_timesteps, p_uncond, n_latent

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, step = key
        if not self.shuffle:
            epoch = 0  # the same validation draws every epoch: comparable validation losses
        items = self.global_items(epoch, step, wrap=self.shuffle)  # validation: each item once
        n = len(items)
        gen = torch.Generator().manual_seed(keyed_seed(self.seed, self.stream, epoch, step))
        shape = self.latents.shape[1:]
        t = torch.randint(0, self.n_timesteps, (n,), generator=gen)
        noise = torch.randn(n, *shape, generator=gen)
        eps_z = torch.randn(n, self.n_latent, generator=gen)
        uncond = torch.rand(n, generator=gen) < self.p_uncond
        mine = torch.arange(self.rank, n, self.world_size)
        items = items[mine]
        cond = self.condition[items]
        batch = {
            "index": items,
            "latent": self.latents[items].float(),
            "t": t[mine],
            "noise": noise[mine],
            "eps_z": eps_z[mine],
            **{name: table[cond] for name, table in self.tables.items()},
        }
        if self.p_uncond > 0:
            batch["uncond"] = uncond[mine]
        return batch


class TridentDataModule(KeyedBatchDataModule):
    """Training and validation batches of cached image latents with their (compound, round) conditions.

    Parameters
    ----------
    latents
        Standardised image latents ``(n, C, h, w)`` (float16 or float32; batches are float32).
    condition
        Condition-table row of every latent ``(n,)``.
    tables
        Condition tables, one row per condition: ``'drug'`` (compound features) and, for models with RNA,
        ``'g_pre'`` and ``'g_post'`` (standardised expression).
    train_rows, val_rows
        Latent rows of the train and validation splits.
    batch_size
        Items per step and rank.
    n_latent
        Width of the reparameterisation noise drawn per item (the condition VAE's ``z``).
    n_timesteps
        Diffusion timesteps drawn uniformly from ``0 .. n_timesteps - 1``.
    p_uncond
        Probability that an item's condition is replaced by the learned null condition.
    seed
        Seed of every random draw.
    balanced
        Draw training rows so that every condition is equally frequent (the paper augments each compound to
        the same number of images); an epoch still has as many items as there are training rows.
    num_workers
        Data-loader worker processes (the draws do not depend on it).
    """

    def __init__(
        self,
        *,
        latents: torch.Tensor,
        condition: torch.Tensor,
        tables: dict[str, torch.Tensor],
        train_rows: torch.Tensor,
        val_rows: torch.Tensor,
        batch_size: int,
        n_latent: int,
        n_timesteps: int = 1000,
        p_uncond: float = 0.0,
        seed: int = 0,
        balanced: bool = True,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if len(train_rows) == 0:
            msg = "there are no images to train on."
            raise ValueError(msg)
        common: dict[str, Any] = {
            "tables": tables,
            "latents": latents,
            "condition": condition,
            "batch_size": batch_size,
            "n_timesteps": n_timesteps,
            "p_uncond": p_uncond,
            "n_latent": n_latent,
            "seed": seed,
        }
        self.train_set = _LatentBatches(
            rows=train_rows, shuffle=True, stream=_TRAIN_STREAM, balanced=balanced, **common
        )
        self.val_set = (
            _LatentBatches(rows=val_rows, shuffle=False, stream=_VAL_STREAM, **common)
            if len(val_rows)
            else None
        )
        self._set_rows(train_rows, val_rows, num_workers)


class TridentTrainingPlan(DiffusionTrainingPlan):
    """:class:`DiffusionTrainingPlan` for :class:`~morphomu.module._trident.TridentModule`.

    The module's image VAE (trained before, on its own) is frozen: neither optimised nor averaged
    (:meth:`trainable`), and left out of the checkpoints, which hold what this plan trains (the image VAE
    has checkpoints of its own). The module's separate losses (``L_LDM``, ``L_VAE``, ...) are logged per
    epoch as ``train_{name}`` and ``validation_{name}`` beside ``train_loss`` / ``validation_loss``.
    """

    def trainable(self) -> list[torch.nn.Parameter]:
        """Parameters the optimiser and the EMA act on: the module's own, never the image VAE's."""
        return [p for p in self.module.trainable_parameters() if p.requires_grad]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The average beside the raw weights; the frozen image VAE's tensors are left out."""
        super().on_save_checkpoint(checkpoint)
        prefix = _CHECKPOINT_IMAGE_VAE
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(prefix)]:
            del state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the average; the image VAE keeps its current (frozen) tensors."""
        super().on_load_checkpoint(checkpoint)
        prefix = _CHECKPOINT_IMAGE_VAE
        state = checkpoint["state_dict"]
        for key, value in self.state_dict().items():
            if key.startswith(prefix):  # Lightning loads the whole state dict strictly after this hook
                state[key] = value
