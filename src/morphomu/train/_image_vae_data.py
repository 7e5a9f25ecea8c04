"""The image VAE's training data and plan: keyed, resumable tile batches and per-epoch loss logging."""

from __future__ import annotations

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from .._core import keyed_seed
from ._plan import LossTrainingPlan
from ._set_data import epoch_loader

__all__ = ["ImageVAETrainingPlan", "TileDataModule", "tiles_to_tensor"]


def tiles_to_tensor(tiles: np.ndarray) -> torch.Tensor:
    """Raw tiles as a tensor torch can index and move (uint8 and float16/32 kept; uint16/32 widened)."""
    tiles = np.ascontiguousarray(tiles)
    if tiles.dtype in (np.uint8, np.float16, np.float32):
        return torch.from_numpy(tiles)
    if np.issubdtype(tiles.dtype, np.unsignedinteger):
        return torch.from_numpy(tiles.astype(np.int64 if tiles.dtype.itemsize >= 4 else np.int32))
    return torch.from_numpy(tiles.astype(np.float32))


class _Tiles(Dataset):
    """Tiles of given rows of an in-memory ``(n, C, H, W)`` array, as ``{'images': raw tensor}`` items."""

    def __init__(self, images: np.ndarray, rows: np.ndarray) -> None:
        self.images, self.rows = images, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"images": tiles_to_tensor(self.images[self.rows[i]])}


class _TileBatches(Dataset):
    """Whole training batches keyed by ``(epoch, step)``: the epoch's order is drawn from ``(seed, epoch)``.

    Keyed draws make a resumed run (:mod:`morphomu.train._checkpoint`) see exactly the batches the
    interrupted one would have seen.
    """

    def __init__(self, images: np.ndarray, rows: np.ndarray, *, batch_size: int, seed: int) -> None:
        self.images, self.rows, self.batch_size, self.seed = images, rows, batch_size, seed
        self._order: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return -(-len(self.rows) // self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """Rows of one epoch in visiting order (drawn once per epoch, not once per batch)."""
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng(keyed_seed(self.seed, epoch)).permutation(self.rows))
        return self._order[1]

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, step = key
        rows = np.sort(self.order(epoch)[step * self.batch_size : (step + 1) * self.batch_size])
        return {"images": tiles_to_tensor(np.asarray(self.images[rows]))}


class TileDataModule(LightningDataModule):
    """Train (keyed-shuffled, resumable) and validation loaders over the tiles of an AnnData's ``.obsm``.

    Under DDP Lightning shards the loaders with its distributed sampler.
    """

    def __init__(
        self,
        images: np.ndarray,
        *,
        train_rows: np.ndarray,
        val_rows: np.ndarray,
        batch_size: int,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.images, self.train_rows, self.val_rows = images, train_rows, val_rows
        self.batch_size, self.seed, self.num_workers = batch_size, seed, num_workers
        self.n_train, self.n_val = len(train_rows), len(val_rows)

    def _loader(self, rows: np.ndarray, *, shuffle: bool) -> DataLoader:
        return DataLoader(
            _Tiles(self.images, rows),
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=torch.Generator().manual_seed(int(self.seed)) if shuffle else None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled train tiles, one batch per ``(epoch, step)`` key."""
        batches = _TileBatches(self.images, self.train_rows, batch_size=self.batch_size, seed=self.seed)
        return epoch_loader(batches, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader | list:
        """Validation tiles in order (none when there are no validation rows)."""
        return self._loader(self.val_rows, shuffle=False) if self.n_val else []


class ImageVAETrainingPlan(LossTrainingPlan):
    """Logs per epoch, for training and validation tiles, the loss, the reconstruction error and the KL term.

    (``train_loss``, ``train_reconstruction``, ``train_kl`` and their ``validation_`` twins.)
    """

    logged_metrics = ("reconstruction", "kl")
