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

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from .._core import keyed_seed
from ._diffusion_plan import DiffusionTrainingPlan
from ._set_data import KeyedBatches, epoch_loader

__all__ = ["TridentDataModule", "TridentTrainingPlan"]

_TRAIN_STREAM, _VAL_STREAM, _ORDER_STREAM = 11, 12, 13


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


class TridentDataModule(LightningDataModule):
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
        self.train_idx = train_rows.numpy()
        self.val_idx = val_rows.numpy()
        self.test_idx = np.array([], dtype=np.int64)
        self.n_train, self.n_val = len(train_rows), len(val_rows)
        self.num_workers = num_workers

    def set_rank(self, rank: int, world_size: int) -> None:
        """Which share of every global batch this process draws."""
        for ds in (self.train_set, self.val_set):
            if ds is not None:
                ds.rank, ds.world_size = int(rank), int(world_size)

    def setup(self, stage: str | None = None) -> None:
        """Read this process's rank from the trainer (each DDP process runs this)."""
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            self.set_rank(trainer.global_rank, trainer.world_size)

    def train_dataloader(self) -> DataLoader:
        """One epoch of training batches for this rank."""
        return epoch_loader(self.train_set, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader | list:
        """Fixed validation batches for this rank (empty without a validation split)."""
        return [] if self.val_set is None else epoch_loader(self.val_set, num_workers=self.num_workers)


class TridentTrainingPlan(DiffusionTrainingPlan):
    """:class:`DiffusionTrainingPlan` that also logs the module's separate losses (``L_LDM``, ``L_VAE``, ...).

    Logged per epoch as ``train_{name}`` and ``validation_{name}`` beside ``train_loss`` / ``validation_loss``.
    """

    def _log_extra(self, out: Any, prefix: str) -> None:
        for name, value in (out.extra_metrics or {}).items():
            if isinstance(value, torch.Tensor) and value.ndim == 0:
                self.log(
                    f"{prefix}_{name}",
                    value,
                    on_step=False,
                    on_epoch=True,
                    batch_size=out.n_obs_minibatch,
                    sync_dist=self.use_sync_dist,
                )

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """One optimisation step (logs the total and the separate losses)."""
        _, _, out = self.forward(batch)
        self.log(
            "train_loss",
            out.loss,
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=out.n_obs_minibatch,
            sync_dist=self.use_sync_dist,
        )
        self._log_extra(out, "train")
        return out.loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Validation losses with the raw weights."""
        _, _, out = self.forward(batch)
        self.log(
            "validation_loss",
            out.loss,
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=out.n_obs_minibatch,
            sync_dist=self.use_sync_dist,
        )
        self._log_extra(out, "validation")
