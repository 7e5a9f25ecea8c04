"""Examples for the treatment classifiers (single- and multi-profile) and their training plan.

The unit is a cell. An *example* belongs to one sample (a treated well of one replicate) and carries,
per input modality, either one cell embedding (single-profile) or the mean of ``k`` cells of that sample
(multi-profile; without replacement when the sample has at least ``k`` cells in the split, else with
replacement). Different modalities always draw different, independent cells: the modalities are
measured on different cells and are paired only by sample.

Examples are enumerated by the cells of the *anchor* modality (the input with the most training
cells): a split has one example per anchor cell, whose sample (and label) is that cell's. In the
single-profile setting the anchor input is that cell itself and another modality contributes one cell
of the same sample drawn uniformly at random; in the multi-profile setting every modality contributes
a fresh random population of its sample's cells.

Data never leaves the CPU-side matrix and is never copied or sorted: cells are addressed through a
sample-sorted row index with CSR-like offsets, so a batch's draws are a few vectorised tensor
operations (Floyd's algorithm, vectorised over the batch, for draws without replacement) and the
``k``-cell means are one :func:`torch.nn.functional.embedding_bag` call (no ``B x k x D`` tensor).

Randomness is keyed, not streamed: a batch's draws come from a generator seeded by
``(seed, stream, epoch, step)``. Training examples are reshuffled (and populations redrawn) every
epoch; validation and test examples are fixed by their seed (2024 by default, as scGeneScope), so
validation scores are comparable across epochs and test scores across models.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from .._core import keyed_seed
from ._plan import LossTrainingPlan
from ._set_data import epoch_loader

__all__ = [
    "ClassifierDataModule",
    "ClassifierTrainingPlan",
    "ExampleSet",
    "SamplePools",
    "balanced_accuracy_from_confusion",
    "classification_metrics",
    "draw_offsets",
]

_TRAIN_STREAM, _ORDER_STREAM = 11, 12


def _floyd(counts: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Uniform ``k``-subsets of ``[0, counts[b])`` (``counts >= k``) by Floyd's algorithm, vectorised."""
    u = torch.rand(counts.shape[0], k, generator=generator, dtype=torch.float64)
    out = torch.empty(counts.shape[0], k, dtype=torch.int64)
    for i in range(k):
        j = counts - k + i  # for j = n-k .. n-1: t ~ U{0..j}; take j instead if t is taken
        t = (u[:, i] * (j + 1)).long().clamp_max(j)
        if i:
            t = torch.where((out[:, :i] == t[:, None]).any(1), j, t)
        out[:, i] = t
    return out


def draw_offsets(
    counts: torch.Tensor, k: int, generator: torch.Generator, *, max_rounds: int = 64
) -> torch.Tensor:
    """``(B, k)`` positions in ``[0, counts[b])``: distinct when ``counts[b] >= k``, else with replacement.

    Distinct draws are uniform ``k``-subsets: ``k`` independent positions are drawn and only the
    positions that repeat an earlier one are redrawn, until none repeats (a procedure symmetric in the
    positions, hence uniform over subsets; few rounds when ``counts >> k``, as for real samples). Rows
    with ``k <= counts < 2k``, and any row still repeating after ``max_rounds``, use Floyd's algorithm.
    All of it is vectorised over the batch.
    """
    counts = counts.to(torch.int64)
    n = counts.shape[0]
    off = (torch.rand(n, k, generator=generator, dtype=torch.float64) * counts[:, None]).long()
    off = torch.minimum(off, (counts[:, None] - 1).clamp_min(0))  # with replacement (used below k)
    if k == 1:
        return off
    big = torch.nonzero(counts >= 2 * k).squeeze(1)
    if big.numel():
        sub, cnt = off[big], counts[big, None]
        for _ in range(max_rounds):
            srt, order = sub.sort(1)
            dup_sorted = torch.zeros_like(sub, dtype=torch.bool)
            dup_sorted[:, 1:] = srt[:, 1:] == srt[:, :-1]
            if not bool(dup_sorted.any()):
                break
            dup = torch.zeros_like(dup_sorted).scatter_(1, order, dup_sorted)
            redraw = (torch.rand(sub.shape, generator=generator, dtype=torch.float64) * cnt).long()
            sub = torch.where(dup, torch.minimum(redraw, cnt - 1), sub)
        else:
            srt = sub.sort(1).values
            left = torch.nonzero((srt[:, 1:] == srt[:, :-1]).any(1)).squeeze(1)
            sub[left] = _floyd(counts[big][left], k, generator)
        off[big] = sub
    small = torch.nonzero((counts >= k) & (counts < 2 * k)).squeeze(1)
    if small.numel():
        off[small] = _floyd(counts[small], k, generator)
    return off


@dataclass
class SamplePools:
    """Cells of one modality and one split, grouped by sample, addressed into a shared matrix.

    ``data[order[offsets[s]:offsets[s + 1]]]`` are the cells of sample ``s``.

    Attributes
    ----------
    data
        The modality's whole feature matrix (CPU, float32), shared, never copied; or, for
        larger-than-memory data, a :class:`~morphomu.train._disk_cache.SourceRows` view of a disk cache
        that is indexed the same way.
    order
        Rows of ``data`` sorted by sample code.
    offsets
        ``(n_samples + 1,)`` start of each sample in ``order``.
    """

    data: torch.Tensor
    order: torch.Tensor
    offsets: torch.Tensor

    @classmethod
    def build(cls, data: torch.Tensor, rows: np.ndarray, codes: np.ndarray, n_samples: int) -> SamplePools:
        """Group ``rows`` (of ``data``) by their sample ``codes`` (``0 .. n_samples - 1``)."""
        rows, codes = np.asarray(rows, dtype=np.int64), np.asarray(codes, dtype=np.int64)
        sort = np.argsort(codes, kind="stable")
        offsets = np.searchsorted(codes[sort], np.arange(n_samples + 1))
        return cls(
            data=data, order=torch.from_numpy(rows[sort]), offsets=torch.from_numpy(offsets.astype(np.int64))
        )

    @property
    def counts(self) -> torch.Tensor:
        """Cells per sample."""
        return self.offsets[1:] - self.offsets[:-1]

    def draw_rows(self, samples: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
        """``(B, k)`` rows of ``data``: ``k`` cells of each sample (see :func:`draw_offsets`)."""
        counts = self.counts[samples]
        if bool((counts == 0).any()):
            msg = "a sample has no cells in this modality and split."
            raise ValueError(msg)
        return self.order[self.offsets[samples][:, None] + draw_offsets(counts, k, generator)]

    def mean_of(self, rows: torch.Tensor) -> torch.Tensor:
        """Mean of ``data`` over each row of ``rows`` (``(B, k)`` -> ``(B, D)``), without a ``B x k x D`` copy."""
        if rows.shape[1] == 1:
            return self.data[rows[:, 0]]
        if not isinstance(self.data, torch.Tensor):  # a disk cache (morphomu.train._disk_cache.SourceRows)
            return self.data.mean_of(rows)
        return F.embedding_bag(rows, self.data, mode="mean")


class ExampleSet:
    """The examples of one split and how to draw batches of them.

    Parameters
    ----------
    pools
        One :class:`SamplePools` per input, in the module's input order, over the same sample codes.
    anchor
        Index of the anchor input (its cells enumerate the examples).
    anchor_rows
        Row (of the anchor's ``data``) of every example.
    example_samples
        Sample code of every example.
    sample_labels
        Class code of every sample.
    k
        Cells per example and input: 1 is the single-profile setting.
    """

    def __init__(
        self,
        pools: list[SamplePools],
        *,
        anchor: int,
        anchor_rows: torch.Tensor,
        example_samples: torch.Tensor,
        sample_labels: torch.Tensor,
        k: int,
    ) -> None:
        self.pools, self.anchor, self.k = pools, int(anchor), int(k)
        self.anchor_rows, self.example_samples, self.sample_labels = (
            anchor_rows,
            example_samples,
            sample_labels,
        )

    def __len__(self) -> int:
        return len(self.anchor_rows)

    def labels(self, examples: torch.Tensor | None = None) -> torch.Tensor:
        """Class code of the given examples (default all)."""
        samples = self.example_samples if examples is None else self.example_samples[examples]
        return self.sample_labels[samples]

    def batch(self, examples: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Inputs ``x0, x1, ...`` (raw units) and labels ``y`` of the given examples."""
        samples = self.example_samples[examples]
        out: dict[str, torch.Tensor] = {}
        for i, pool in enumerate(self.pools):
            if self.k == 1 and i == self.anchor:
                out[f"x{i}"] = pool.data[self.anchor_rows[examples]]
            else:
                out[f"x{i}"] = pool.mean_of(pool.draw_rows(samples, self.k, generator))
        out["y"] = self.sample_labels[samples]
        return out


class _Batches(Dataset):
    """Map-style dataset whose items are whole batches keyed by ``(epoch, step)``."""

    def __init__(
        self,
        examples: ExampleSet,
        *,
        batch_size: int,
        seed: int,
        shuffle: bool,
        stream: int,
        epoch_size: int | None = None,
    ) -> None:
        self.examples, self.batch_size, self.seed = examples, int(batch_size), int(seed)
        self.shuffle, self.stream = shuffle, int(stream)
        self.epoch_size = len(examples) if epoch_size is None else int(epoch_size)
        self.rank, self.world_size = 0, 1
        self._order: tuple[int, torch.Tensor] | None = None

    def __len__(self) -> int:
        return math.ceil(self.epoch_size / (self.batch_size * self.world_size))

    def order(self, epoch: int) -> torch.Tensor:
        """Examples of one epoch in visiting order: whole reshuffles, truncated to ``epoch_size``."""
        n = len(self.examples)
        if not self.shuffle:
            return torch.arange(n)
        if self._order is None or self._order[0] != epoch:
            g = torch.Generator().manual_seed(keyed_seed(self.seed, _ORDER_STREAM, self.stream, epoch))
            n_perm = math.ceil(self.epoch_size / n)
            self._order = (
                epoch,
                torch.cat([torch.randperm(n, generator=g) for _ in range(n_perm)])[: self.epoch_size],
            )
        return self._order[1]

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, step = key
        if not self.shuffle:
            epoch = 0
        order = self.order(epoch)
        g_size = self.batch_size * self.world_size
        items = order[step * g_size : (step + 1) * g_size]
        gen = torch.Generator().manual_seed(keyed_seed(self.seed, self.stream, epoch, step))
        batch = self.examples.batch(items, gen)  # whole global batch, then this rank's share
        if self.world_size > 1:
            mine = torch.arange(self.rank, len(items), self.world_size)
            batch = {key_: v[mine] for key_, v in batch.items()}
        return batch


def batch_loader(
    examples: ExampleSet,
    *,
    batch_size: int,
    seed: int,
    stream: int,
    shuffle: bool = False,
    epoch_size: int | None = None,
    num_workers: int = 0,
) -> DataLoader:
    """A loader of whole batches of ``examples`` (fixed draws unless ``shuffle``)."""
    ds = _Batches(
        examples, batch_size=batch_size, seed=seed, shuffle=shuffle, stream=stream, epoch_size=epoch_size
    )
    return epoch_loader(ds, num_workers=num_workers)


class ClassifierDataModule(LightningDataModule):
    """Training examples (reshuffled and redrawn every epoch) and fixed validation examples.

    Parameters
    ----------
    train, val
        The examples of the train and validation splits.
    batch_size
        Examples per step and device.
    seed
        Seed of the training draws.
    eval_seed
        Seed of the fixed validation draws.
    val_stream
        Stream id of the validation split (a split's fixed draws depend on ``(eval_seed, stream)``).
    epoch_size
        Training examples per epoch (default one per training anchor cell).
    num_workers
        Data-loader workers (the draws do not depend on it).
    """

    def __init__(
        self,
        *,
        train: ExampleSet,
        val: ExampleSet,
        batch_size: int,
        seed: int,
        eval_seed: int,
        val_stream: int,
        epoch_size: int | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.train_set = _Batches(
            train, batch_size=batch_size, seed=seed, shuffle=True, stream=_TRAIN_STREAM, epoch_size=epoch_size
        )
        self.val_set = _Batches(val, batch_size=batch_size, seed=eval_seed, shuffle=False, stream=val_stream)
        self.n_train, self.n_val = self.train_set.epoch_size, len(val)
        self.num_workers = int(num_workers)

    def setup(self, stage: str | None = None) -> None:
        """Read this process's rank from the trainer (each DDP process draws its share of every batch)."""
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            for ds in (self.train_set, self.val_set):
                ds.rank, ds.world_size = int(trainer.global_rank), int(trainer.world_size)

    def _loader(self, ds: _Batches) -> DataLoader:
        return epoch_loader(ds, num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        """One epoch of training batches."""
        return self._loader(self.train_set)

    def val_dataloader(self) -> DataLoader:
        """The fixed validation batches."""
        return self._loader(self.val_set)


def balanced_accuracy_from_confusion(confusion: torch.Tensor) -> float:
    """Mean recall over the classes present (rows: true class), as :func:`sklearn.metrics.balanced_accuracy_score`."""
    support = confusion.sum(1)
    present = support > 0
    if not bool(present.any()):
        return float("nan")
    recall = confusion.diagonal()[present].double() / support[present].double()
    return float(recall.mean())


def classification_metrics(y_true: Any, y_pred: Any) -> dict[str, float]:
    """Balanced accuracy, macro-F1 and weighted-F1 (scikit-learn), the benchmark's metrics."""
    from sklearn.metrics import balanced_accuracy_score, f1_score

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        return {
            "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
            "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
            "weighted_f1": float(f1_score(y_true, y_pred, average="weighted", zero_division=0)),
        }


class ClassifierTrainingPlan(LossTrainingPlan):
    """AdamW on the cross-entropy; validation balanced accuracy each epoch; the best weights are kept.

    Logs ``train_loss``, ``validation_loss`` and ``validation_balanced_accuracy`` (the early-stopping
    monitor, mode max). After every validation epoch that improves the balanced accuracy, a CPU copy of
    the weights is kept in :attr:`best_state` (with :attr:`best_epoch`), which the model restores
    when training ends: the best checkpoint, without writing files. Gradient clipping is the trainer's
    ``gradient_clip_val``.

    Parameters
    ----------
    module
        The classifier module.
    lr
        Learning rate.
    weight_decay
        AdamW weight decay.
    """

    def __init__(self, module: torch.nn.Module, *, lr: float, weight_decay: float) -> None:
        super().__init__(module, optimizer="AdamW", lr=lr, weight_decay=weight_decay, eps=1e-8)
        self.n_classes = int(module.n_classes)
        self.best_score = -math.inf
        self.best_epoch = -1
        self.best_state: dict[str, torch.Tensor] | None = None
        self._confusion: torch.Tensor | None = None

    def on_validation_epoch_start(self) -> None:
        """Reset the confusion matrix."""
        self._confusion = torch.zeros(self.n_classes, self.n_classes, dtype=torch.int64, device=self.device)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Validation loss and confusion counts."""
        inference, _, out = self.forward(batch)
        pred = inference["logits"].argmax(1)
        idx = batch["y"] * self.n_classes + pred
        self._confusion += torch.bincount(idx, minlength=self.n_classes**2).reshape(
            self.n_classes, self.n_classes
        )
        self.log_losses("validation", out, prog_bar=False)

    def on_validation_epoch_end(self) -> None:
        """Log the balanced accuracy and keep the weights when it improves."""
        confusion = self._confusion
        if self.trainer.world_size > 1:
            confusion = self.trainer.strategy.reduce(confusion, reduce_op="sum")
        score = balanced_accuracy_from_confusion(confusion.cpu())
        self.log("validation_balanced_accuracy", score, prog_bar=True, sync_dist=False)
        if not self.trainer.sanity_checking and score > self.best_score:
            self.best_score, self.best_epoch = score, int(self.current_epoch)
            self.best_state = {
                k: v.detach().to("cpu", copy=True) for k, v in self.module.state_dict().items()
            }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Checkpoints keep the best validation weights and score beside the current weights."""
        checkpoint["best"] = {"score": self.best_score, "epoch": self.best_epoch, "state": self.best_state}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the best weights and score when resuming."""
        if "best" in checkpoint:
            best = checkpoint["best"]
            self.best_score, self.best_epoch = float(best["score"]), int(best["epoch"])
            self.best_state = best["state"]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """AdamW (:func:`~morphomu.train._plan.adamw`: fused at full precision)."""
        from ._plan import adamw

        return adamw(self, [p for p in self.module.parameters() if p.requires_grad])
