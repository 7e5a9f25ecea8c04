"""Set-structured training items: (one RNA cell, ``n_context_cells`` imaging cells of the same sample).

Modalities hold different cells, paired only by sample, so items are built from a sample-sorted
imaging matrix with CSR-like offsets: the context rows of a whole batch are drawn in one vectorised
call (``offset[s] + floor(u * count[s])``), never with per-item Python.

Randomness is keyed, not streamed: an epoch's order of RNA cells comes from a generator seeded by
``(seed, epoch)``, and each *global* batch (``batch_size * world_size`` items) draws its context cells,
timesteps, noise and null-context flags from a generator seeded by ``(seed, epoch, batch)``. Rank ``r``
of ``W`` takes items ``r, r + W, ...`` of every global batch. Hence

- ranks partition each epoch and never share a random stream; data-loader workers (which compute whole
  batches) draw exactly what a single process would draw;
- ``W`` ranks at batch ``b`` see exactly the items and draws of one process at batch ``W * b``, so
  data-parallel training reproduces single-process training at the larger batch.

An epoch is one pass over the train RNA cells; its last global batch is filled by wrapping around
the epoch's order, so every step has full batches on every rank.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, Sampler

from .._core import keyed_seed

__all__ = ["EpochLoader", "KeyedBatchDataModule", "KeyedBatches", "PairedSetDataModule", "epoch_loader"]

_TRAIN_STREAM, _VAL_STREAM, _ORDER_STREAM = 1, 2, 3


class KeyedBatches(Dataset):
    """Map-style dataset whose items are whole global batches of ``rows``, keyed by ``(epoch, global_batch)``.

    The epoch's visiting order is drawn from ``(seed, order_stream, stream, epoch)`` (a permutation, or
    ``len(rows)`` draws with replacement by ``weights``), so any batch of any epoch can be rebuilt on its
    own: what exact resuming and DDP (rank ``r`` of ``W`` keeps items ``r, r + W, ...``) rest on.
    Subclasses set ``_order_stream`` and build a batch from :meth:`global_items` in ``__getitem__``.
    """

    _order_stream: int = _ORDER_STREAM

    def __init__(
        self,
        rows: torch.Tensor,
        *,
        batch_size: int,
        seed: int,
        shuffle: bool,
        stream: int,
        weights: torch.Tensor | None = None,
    ) -> None:
        self.rows, self.batch_size, self.weights = rows, batch_size, weights
        self.seed, self.shuffle, self.stream = seed, shuffle, stream
        self.rank, self.world_size = 0, 1
        self._order: tuple[int, torch.Tensor] | None = None

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    def __len__(self) -> int:
        """Steps per epoch on each rank."""
        return math.ceil(len(self.rows) / self.global_batch_size)

    def order(self, epoch: int) -> torch.Tensor:
        """``rows`` of one epoch, in visiting order (as given when not shuffling)."""
        if not self.shuffle:
            return self.rows
        if self._order is None or self._order[0] != epoch:
            g = torch.Generator().manual_seed(keyed_seed(self.seed, self._order_stream, self.stream, epoch))
            if self.weights is None:
                pick = torch.randperm(len(self.rows), generator=g)
            else:
                pick = torch.multinomial(self.weights, len(self.rows), replacement=True, generator=g)
            self._order = (epoch, self.rows[pick])
        return self._order[1]

    def global_items(self, epoch: int, step: int, *, wrap: bool = True) -> torch.Tensor:
        """Rows of one global batch (all ranks); ``wrap``: always full, wrapping around the epoch's order."""
        order = self.order(epoch)
        g = self.global_batch_size
        if wrap:
            return order[torch.arange(step * g, (step + 1) * g) % len(order)]
        return order[step * g : (step + 1) * g]


class _SetBatches(KeyedBatches):
    """Batches of RNA cells, each with a context set of its sample's imaging cells."""

    def __init__(
        self,
        *,
        rna: torch.Tensor,
        rna_sample: torch.Tensor,
        rows: torch.Tensor,
        img: torch.Tensor,
        img_offsets: torch.Tensor,
        n_context_cells: int,
        batch_size: int,
        n_timesteps: int,
        p_uncond: float,
        seed: int,
        shuffle: bool,
        stream: int,
    ) -> None:
        super().__init__(rows, batch_size=batch_size, seed=seed, shuffle=shuffle, stream=stream)
        self.rna, self.rna_sample = rna, rna_sample
        self.img, self.img_offsets = img, img_offsets
        self.img_counts = img_offsets[1:] - img_offsets[:-1]
        self.n_context_cells = n_context_cells
        self.n_timesteps, self.p_uncond = n_timesteps, p_uncond

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, step = key
        if not self.shuffle:
            epoch = 0  # validation draws are the same every epoch, so validation losses are comparable
        items = self.global_items(epoch, step)
        g_size = len(items)
        gen = torch.Generator().manual_seed(keyed_seed(self.seed, self.stream, epoch, step))
        # every rank draws the whole global batch (cheap), then keeps its own rows
        u = torch.rand(g_size, self.n_context_cells, generator=gen, dtype=torch.float64)
        t = torch.randint(0, self.n_timesteps, (g_size,), generator=gen)
        noise = torch.randn(g_size, self.rna.shape[1], generator=gen)
        uncond = torch.rand(g_size, generator=gen) < self.p_uncond
        mine = torch.arange(self.rank, g_size, self.world_size)
        items, u, t, noise, uncond = items[mine], u[mine], t[mine], noise[mine], uncond[mine]
        sample = self.rna_sample[items]
        counts = self.img_counts[sample]
        context_rows = self.img_offsets[sample][:, None] + (u * counts[:, None]).long().clamp_max(
            counts[:, None] - 1
        )
        batch = {
            "index": items,
            "rna": self.rna[items],
            "img": self.img[context_rows],
            "t": t,
            "noise": noise,
        }
        if self.p_uncond > 0:
            batch["uncond"] = uncond
        return batch


class _EpochSampler(Sampler):
    """Yields ``(epoch, step)`` keys; Lightning calls :meth:`set_epoch` before each epoch.

    A resumed run starts its first epoch at the batch where the interrupted one stopped
    (:meth:`EpochLoader.load_state_dict`); the keyed draws make those batches the ones it would have seen.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.epoch = 0
        self.batches_done = 0  # of the current epoch, as reported by the training loop
        self.resume_at = 0  # first step of the next iteration (once), set when resuming

    def set_epoch(self, epoch: int) -> None:
        if int(epoch) != self.epoch:
            self.batches_done = 0
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self):
        start, self.resume_at = self.resume_at, 0
        return iter([(self.epoch, step) for step in range(start, len(self.dataset))])


class EpochLoader(DataLoader):
    """Loader of whole batches keyed by ``(epoch, step)`` whose position Lightning saves and restores.

    Lightning stores :meth:`state_dict` of stateful training loaders in checkpoints and calls
    :meth:`load_state_dict` before the resumed run's first iteration. The position (batches of the
    current epoch done) is reported by :class:`morphomu.train._checkpoint.TrainingCheckpoint` through
    :meth:`set_batches_done`: the loader itself cannot know it, as Lightning and the workers prefetch.
    """

    def state_dict(self) -> dict[str, int]:
        """Epoch and batches of it done."""
        return {"epoch": int(self.sampler.epoch), "batches_done": int(self.sampler.batches_done)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue at the saved position (the next epoch when the saved one was complete)."""
        epoch, done = int(state["epoch"]), int(state["batches_done"])
        if done >= len(self.sampler):
            epoch, done = epoch + 1, 0
        self.sampler.epoch, self.sampler.batches_done, self.sampler.resume_at = epoch, done, done

    def set_batches_done(self, n: int) -> None:
        """Record that the training loop has finished ``n`` batches of the current epoch."""
        self.sampler.batches_done = int(n)


def epoch_loader(dataset: Dataset, *, num_workers: int = 0) -> EpochLoader:
    """A loader of a dataset of whole batches keyed by ``(epoch, step)``, optionally in worker processes."""
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs = {"num_workers": num_workers, "persistent_workers": True}
    return EpochLoader(dataset, batch_size=None, sampler=_EpochSampler(dataset), **kwargs)


class KeyedBatchDataModule(LightningDataModule):
    """A data module of :class:`KeyedBatches` train / validation sets, each process drawing its rank's share.

    A subclass builds ``train_set`` / ``val_set`` (``None`` without validation rows) and calls
    :meth:`_set_rows`; the loaders, DDP ranks and scvi-tools' split indices are handled here.
    """

    train_set: KeyedBatches
    val_set: KeyedBatches | None

    def _set_rows(self, train_rows: torch.Tensor, val_rows: torch.Tensor, num_workers: int) -> None:
        """Record the split (scvi-tools reads ``train_idx`` / ``val_idx``) and the loaders' workers."""
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


class PairedSetDataModule(KeyedBatchDataModule):
    """Training and validation items for set-conditioned models, drawn by sample.

    Parameters
    ----------
    rna
        Standardised RNA embeddings ``(n_rna, n_rna_features)`` (float32).
    rna_sample
        Sample code of every RNA row ``(n_rna,)``.
    train_rows, val_rows
        RNA rows of the train and validation splits.
    img
        Standardised imaging embeddings sorted by sample code ``(n_img, n_image_features)``.
    img_offsets
        ``img[img_offsets[s]:img_offsets[s + 1]]`` are the imaging cells of sample ``s``.
    n_context_cells
        Imaging cells per item (drawn with replacement).
    batch_size
        Items per step and rank.
    n_timesteps
        Diffusion timesteps drawn uniformly from ``0 .. n_timesteps - 1``.
    p_uncond
        Probability that an item's context is replaced by the learned null context.
    seed
        Seed of every random draw.
    num_workers
        Data-loader worker processes (the draws do not depend on it).
    """

    def __init__(
        self,
        *,
        rna: torch.Tensor,
        rna_sample: torch.Tensor,
        train_rows: torch.Tensor,
        val_rows: torch.Tensor,
        img: torch.Tensor,
        img_offsets: torch.Tensor,
        n_context_cells: int,
        batch_size: int,
        n_timesteps: int = 1000,
        p_uncond: float = 0.0,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if len(train_rows) == 0:
            msg = "there are no RNA cells to train on."
            raise ValueError(msg)
        if bool(
            (img_offsets[1:] - img_offsets[:-1])[rna_sample[torch.cat([train_rows, val_rows])]].eq(0).any()
        ):
            msg = "an RNA cell's sample has no imaging cells."
            raise ValueError(msg)
        common = {
            "rna": rna,
            "rna_sample": rna_sample,
            "img": img,
            "img_offsets": img_offsets,
            "n_context_cells": n_context_cells,
            "batch_size": batch_size,
            "n_timesteps": n_timesteps,
            "p_uncond": p_uncond,
            "seed": seed,
        }
        self.train_set = _SetBatches(rows=train_rows, shuffle=True, stream=_TRAIN_STREAM, **common)
        self.val_set = (
            _SetBatches(rows=val_rows, shuffle=False, stream=_VAL_STREAM, **common) if len(val_rows) else None
        )
        self._set_rows(train_rows, val_rows, num_workers)
