"""Resumable training for every morphomu model: periodic, atomic Lightning checkpoints and exact resume.

A checkpoint is a Lightning checkpoint (``trainer.save_checkpoint``): the training plan's raw weights,
the optimiser, the learning-rate scheduler, the loops' progress, the callbacks' state (early stopping,
and :class:`TrainingCheckpoint`'s own: the global random-number generators, the configuration of the
run and morphomu's version), the training plan's extra state (e.g. the EMA weights, the best
validation weights) and the data loaders' position in the epoch. Training is resumed exactly, step for
step, because morphomu's data modules draw their randomness keyed by ``(seed, epoch, batch)``
(:mod:`morphomu.train._set_data`): the resumed loader skips the batches already done and draws the
same batches the interrupted run would have drawn.

Writes are atomic (:class:`AtomicCheckpointIO`): a checkpoint is written to a temporary sibling, synced
and renamed over ``last.ckpt``, so a process killed mid-write leaves the previous checkpoint intact.

How a model's ``train`` uses it (the model's data module must serve its training batches through
:func:`morphomu.train._set_data.epoch_loader`, or another loader with ``state_dict`` /
``load_state_dict`` / ``set_batches_done``; per-step state of the training plan, such as an EMA, must
be updated in ``optimizer_step`` and saved in ``on_save_checkpoint``)::

    def train(self, ..., checkpoint_dir=None, checkpoint_every_n_steps=1000, ckpt_path=None, **trainer_kwargs):
        ...  # resolve defaults, check arguments
        checkpoints = Checkpointing.from_args(  # before any work: checks the arguments and the checkpoint
            checkpoint_dir, every_n_steps=checkpoint_every_n_steps, ckpt_path=ckpt_path,
            config={"model": type(self).__name__, "batch_size": batch_size, "seed": seed, ...},
        )
        ...  # data module, training plan, trainer kwargs
        runner = self._train_runner_cls(self, ..., **checkpoints.trainer_kwargs(kwargs))
"""

from __future__ import annotations

import logging
import os
import random
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback

from .._errors import MorphomuError, MorphomuWarning

__all__ = [
    "CHECKPOINT_NAME",
    "AtomicCheckpointIO",
    "Checkpointing",
    "TrainingCheckpoint",
    "atomic_torch_save",
    "capture_rng_state",
    "read_checkpoint_state",
    "resolve_ckpt_path",
    "restore_rng_state",
]

logger = logging.getLogger(__name__)

#: File name of the newest checkpoint in a checkpoint directory.
CHECKPOINT_NAME = "last.ckpt"
#: Version of the morphomu state stored in checkpoints (raise it when older morphomu cannot resume).
CHECKPOINT_FORMAT = 1
_TMP_SUFFIX = ".tmp"


# ---------------------------------------------------------------------------------------------------
# atomic writes
# ---------------------------------------------------------------------------------------------------
def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}{_TMP_SUFFIX}")


def _remove_stale_tmp(directory: Path, name: str = CHECKPOINT_NAME) -> None:
    """Remove the temporary files :func:`atomic_torch_save` of a killed writer left for ``name``.

    Only the exact names it writes (``.{name}.{pid}.tmp``), only regular files, and only when that PID is
    dead on this host: anything else in the directory is the user's, or a live writer's.
    """
    from .._io import process_is_alive

    pattern = re.compile(rf"^\.{re.escape(name)}\.(\d+){re.escape(_TMP_SUFFIX)}$")
    for entry in directory.iterdir():
        match = pattern.match(entry.name)
        if match and entry.is_file() and not entry.is_symlink() and not process_is_alive(int(match.group(1))):
            entry.unlink(missing_ok=True)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary sibling, ``fsync``, then ``os.replace`` onto ``path``.

    A process killed at any moment leaves either the previous file or the new one, never a partial one
    (a killed writer may leave a hidden ``.{name}.{pid}.tmp`` sibling, removed by the next run).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory file descriptors
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O whose saves are atomic (:func:`atomic_torch_save`)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any | None = None
    ) -> None:
        """Write ``checkpoint`` to ``path`` atomically."""
        if storage_options is not None:
            msg = f"{type(self).__name__} does not take storage_options, got {storage_options!r}."
            raise TypeError(msg)
        atomic_torch_save(checkpoint, path)


# ---------------------------------------------------------------------------------------------------
# random-number generators
# ---------------------------------------------------------------------------------------------------
def capture_rng_state() -> dict[str, Any]:
    """State of the global generators of torch (CPU and CUDA), numpy and Python, as tensors and lists.

    Only plain types and tensors, so checkpoints load with ``torch.load(weights_only=True)``.
    """
    kind, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002 (the legacy global state)
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.array(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {"version": int(version), "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Set the global generators to a state from :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda = list(state["cuda"])
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


# ---------------------------------------------------------------------------------------------------
# the callback
# ---------------------------------------------------------------------------------------------------
def _loaders(dataloaders: Any) -> Iterable[Any]:
    """The data loaders in what Lightning's ``trainer.train_dataloader`` returns (one or a collection)."""
    if dataloaders is None:
        return []
    if isinstance(dataloaders, Mapping):
        return list(dataloaders.values())
    if isinstance(dataloaders, list | tuple):
        return list(dataloaders)
    return [dataloaders]


def _differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    keys = sorted(set(saved) | set(current), key=lambda k: (k != "model", k))
    return [
        f"{k}: checkpoint {saved.get(k, '<absent>')!r}, now {current.get(k, '<absent>')!r}"
        for k in keys
        if saved.get(k, "<absent>") != current.get(k, "<absent>")
    ]


class TrainingCheckpoint(Callback):
    """Save a resumable checkpoint every ``every_n_steps`` optimiser steps; restore RNG and data position.

    Saves ``{dirpath}/last.ckpt`` (atomically, when the trainer uses :class:`AtomicCheckpointIO`) after
    every ``every_n_steps``-th optimiser step. A step that ends an epoch is saved after that epoch's
    validation and end-of-epoch hooks (early stopping, best weights) instead, so that resuming neither
    repeats nor skips them. The checkpoint carries, besides Lightning's own state, the global random
    generators (restored when the resumed run starts training), the number of batches of the current
    epoch already done (given to data loaders that have ``set_batches_done``, see
    :class:`morphomu.train._set_data.EpochLoader`), ``config`` (checked on resume), morphomu's version and
    the checkpoint format.

    Parameters
    ----------
    dirpath
        Directory of ``last.ckpt``; ``None`` saves nothing (the callback then only restores a resumed run).
    every_n_steps
        Optimiser steps between checkpoints.
    config
        What defines the run (model class, sizes, training arguments); resuming with another raises.
    """

    def __init__(
        self,
        dirpath: str | os.PathLike | None,
        *,
        every_n_steps: int,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.dirpath = None if dirpath is None else Path(dirpath)
        self.every_n_steps = int(every_n_steps)
        self.config = dict(config or {})
        self._pending = False
        self._rng_to_restore: dict[str, Any] | None = None
        self._metrics: dict[str, torch.Tensor] = {}
        self._metrics_to_restore: dict[str, torch.Tensor] = {}
        self.last_path: Path | None = None
        self.saved_steps: list[int] = []

    @property
    def state_key(self) -> str:
        """Key of this callback's state in a checkpoint's ``callbacks``."""
        return "morphomu.TrainingCheckpoint"

    # ---------------------------------------------------------------- saving
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Create the directory and remove temporary files left by a killed writer."""
        if self.dirpath is not None and trainer.is_global_zero:
            self.dirpath.mkdir(parents=True, exist_ok=True)
            _remove_stale_tmp(self.dirpath)

    def _save(self, trainer: Any) -> None:
        if self.dirpath is None:
            return
        path = self.dirpath / CHECKPOINT_NAME
        self._metrics = {
            k: torch.as_tensor(v).detach().cpu().clone() for k, v in trainer.callback_metrics.items()
        }
        trainer.save_checkpoint(path)
        self.last_path = path
        self.saved_steps.append(int(trainer.global_step))
        self._pending = False

    def _is_last_batch(self, trainer: Any) -> bool:
        return bool(trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Tell the loaders how far the epoch is; save when a checkpoint is due."""
        for loader in _loaders(trainer.train_dataloader):
            if hasattr(loader, "set_batches_done"):
                loader.set_batches_done(batch_idx + 1)
        if trainer.global_step % self.every_n_steps == 0 and trainer.global_step > 0:
            self._pending = True
        if self._pending and not self._is_last_batch(trainer):
            self._save(trainer)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        """Save a checkpoint that fell on an epoch's last step, after that epoch's validation.

        Lightning resumes such a checkpoint without repeating the validation and then runs the epoch's
        end hooks (early stopping), which had not run yet when it was saved.
        """
        if self._pending and not trainer.sanity_checking and self._is_last_batch(trainer):
            self._save(trainer)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        """Save a checkpoint that fell on the last step of an epoch without validation."""
        if self._pending:
            self._save(trainer)

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Morphomu's part of a checkpoint."""
        from .. import __version__

        return {
            "format": CHECKPOINT_FORMAT,
            "morphomu_version": __version__,
            "config": self.config,
            "rng": capture_rng_state(),
            "metrics": self._metrics,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Check the run's configuration; keep the generators' state for the start of training."""
        check_checkpoint_state(state_dict, self.config)
        self._rng_to_restore = state_dict["rng"]
        self._metrics_to_restore = dict(state_dict.get("metrics", {}))

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        """Put a resumed run's loaders at the saved position, then restore the generators."""
        _load_pending_loader_states(trainer)
        if self._metrics_to_restore:  # e.g. the validation loss early stopping checks at the epoch's end
            for k, v in self._metrics_to_restore.items():
                trainer.callback_metrics.setdefault(k, v.to(pl_module.device))
            self._metrics_to_restore = {}
        if self._rng_to_restore is not None:
            restore_rng_state(self._rng_to_restore)
            self._rng_to_restore = None


def _load_pending_loader_states(trainer: Any) -> None:
    """Give the training loaders their saved position if Lightning has not, and restart their iterators.

    Lightning (2.6) loads the loaders' saved state when it first sets up the training data after
    restoring the loops. A training plan whose ``configure_optimizers`` reads
    ``trainer.estimated_stepping_batches`` (e.g. for a per-step schedule) makes Lightning set the data
    up earlier, before the loops are restored; the saved states are then never loaded and the first
    iterator (already prefetching) would restart the epoch at its first batch, or replay the previous
    epoch's draws after a checkpoint saved at an epoch's end. Done here instead, before the first
    resumed step.
    """
    fit_loop = trainer.fit_loop
    pending = getattr(fit_loop, "_combined_loader_states_to_load", None)
    combined = getattr(fit_loop, "_combined_loader", None)
    fetcher = getattr(fit_loop, "_data_fetcher", None)
    if not pending or combined is None:
        return
    stateful = [
        dl for dl in combined.flattened if hasattr(dl, "state_dict") and hasattr(dl, "load_state_dict")
    ]
    if fetcher is None or len(stateful) != len(pending):  # pragma: no cover - other Lightning internals
        warnings.warn(
            "the data loaders' saved position could not be restored: the resumed epoch restarts at its "
            "first batch, so the run is not resumed exactly.",
            MorphomuWarning,
            stacklevel=2,
        )
        return
    for loader, state in zip(stateful, pending, strict=True):
        loader.load_state_dict(state)
    fit_loop._combined_loader_states_to_load = []
    iter(fetcher)  # new iterators from the loaded positions (the earlier ones had prefetched a batch)


def check_checkpoint_state(state: Mapping[str, Any], config: Mapping[str, Any], *, path: Any = None) -> None:
    """Raise :class:`MorphomuError` if a checkpoint's morphomu state cannot resume the run ``config``."""
    where = "" if path is None else f" {str(path)!r}"
    if int(state.get("format", 0)) > CHECKPOINT_FORMAT:
        msg = (
            f"checkpoint{where} was written by morphomu {state.get('morphomu_version', '?')} in checkpoint format "
            f"{state.get('format')}; this morphomu reads formats up to {CHECKPOINT_FORMAT}. Upgrade morphomu."
        )
        raise MorphomuError(msg)
    diffs = _differences(dict(state.get("config", {})), dict(config))
    if diffs:
        msg = (
            f"ckpt_path: checkpoint{where} belongs to another training run; resuming needs the same model and "
            "training arguments (" + "; ".join(diffs[:6]) + "). Start a new run with another checkpoint_dir, "
            "or ckpt_path=None."
        )
        raise MorphomuError(msg)


# ---------------------------------------------------------------------------------------------------
# resolving ckpt_path and the per-train() helper
# ---------------------------------------------------------------------------------------------------
def read_checkpoint_state(path: str | os.PathLike) -> dict[str, Any]:
    """The morphomu state of a checkpoint file (memory-mapped: cheap even for large checkpoints)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        msg = f"ckpt_path={str(path)!r} is not a readable checkpoint ({type(e).__name__}: {e})."
        raise MorphomuError(msg) from None
    state = ckpt.get("callbacks", {}).get("morphomu.TrainingCheckpoint") if isinstance(ckpt, dict) else None
    if state is None:
        msg = f"ckpt_path={str(path)!r} is a checkpoint without morphomu's training state; it cannot be resumed exactly."
        raise MorphomuError(msg)
    return state


def _step_of(path: Path) -> int:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("global_step", -1))
    except Exception:
        return -1


def resolve_ckpt_path(
    ckpt_path: str | os.PathLike | None, checkpoint_dir: str | os.PathLike | None
) -> Path | None:
    """The checkpoint file to resume from.

    ``None``: none (a new run). ``'last'``: ``{checkpoint_dir}/last.ckpt``, else the ``*.ckpt`` in
    ``checkpoint_dir`` with the most optimiser steps, else ``None`` (nothing to resume yet: a new run, so
    the same call starts a job and restarts it). A path: that file, which must exist.
    """
    if ckpt_path is None:
        return None
    if isinstance(ckpt_path, str) and ckpt_path == "last":
        if checkpoint_dir is None:
            msg = "ckpt_path='last' resumes from checkpoint_dir: pass checkpoint_dir too (or a .ckpt path)."
            raise MorphomuError(msg)
        directory = Path(checkpoint_dir)
        if (directory / CHECKPOINT_NAME).is_file():
            return directory / CHECKPOINT_NAME
        candidates = sorted(directory.glob("*.ckpt")) if directory.is_dir() else []
        if not candidates:
            logger.info("no checkpoint in %s yet: training starts from the beginning", directory)
            return None
        return max(candidates, key=lambda p: (_step_of(p), p.stat().st_mtime))
    if not isinstance(ckpt_path, str | os.PathLike):
        msg = f"ckpt_path must be None, 'last' or a path to a .ckpt file, got {ckpt_path!r}."
        raise MorphomuError(msg)
    path = Path(ckpt_path)
    if not path.is_file():
        msg = f"ckpt_path={str(path)!r} is not a file; pass a .ckpt written by training with checkpoint_dir, or 'last'."
        raise MorphomuError(msg)
    return path


@dataclass
class Checkpointing:
    """Checkpointing and resuming of one ``train`` call (see the module docstring for the wiring).

    Build it with :meth:`from_args` before any work (it checks the arguments and the checkpoint to
    resume), then pass the trainer keyword arguments through :meth:`trainer_kwargs`.
    """

    checkpoint_dir: Path | None = None
    every_n_steps: int = 1000
    resume_from: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)
    callback: TrainingCheckpoint | None = None

    @classmethod
    def from_args(
        cls,
        checkpoint_dir: str | os.PathLike | None,
        *,
        every_n_steps: int,
        ckpt_path: str | os.PathLike | None,
        config: Mapping[str, Any],
    ) -> Checkpointing:
        """Check ``train``'s checkpoint arguments and the checkpoint to resume, before any work.

        Parameters
        ----------
        checkpoint_dir
            Directory for ``last.ckpt`` (created), or ``None`` for no checkpoints.
        every_n_steps
            Optimiser steps between checkpoints.
        ckpt_path
            ``None``, ``'last'`` or a ``.ckpt`` path (see :func:`resolve_ckpt_path`).
        config
            Plain values (numbers, strings, lists, dicts) that define the run; a checkpoint of another
            run is refused.
        """
        if (
            isinstance(every_n_steps, bool)
            or not isinstance(every_n_steps, int | np.integer)
            or every_n_steps < 1
        ):
            msg = f"checkpoint_every_n_steps must be a positive integer, got {every_n_steps!r}."
            raise MorphomuError(msg)
        if checkpoint_dir is not None:
            if not isinstance(checkpoint_dir, str | os.PathLike):
                msg = f"checkpoint_dir must be a directory path or None, got {checkpoint_dir!r}."
                raise MorphomuError(msg)
            directory = Path(checkpoint_dir)
            if directory.exists() and not directory.is_dir():
                msg = f"checkpoint_dir={str(directory)!r} exists and is not a directory."
                raise MorphomuError(msg)
        resume_from = resolve_ckpt_path(ckpt_path, checkpoint_dir)
        config = {k: _plain(v) for k, v in config.items()}
        if resume_from is not None:
            check_checkpoint_state(read_checkpoint_state(resume_from), config, path=resume_from)
        existing = None if checkpoint_dir is None else Path(checkpoint_dir) / CHECKPOINT_NAME
        if (
            existing is not None
            and existing.exists()
            and (resume_from is None or not existing.samefile(resume_from))
        ):
            msg = (  # this run's checkpoints would overwrite it
                f"checkpoint_dir={str(checkpoint_dir)!r} already holds {CHECKPOINT_NAME} of a run; pass "
                "ckpt_path='last' to resume it, or another checkpoint_dir for a new run."
            )
            raise MorphomuError(msg)
        return cls(
            checkpoint_dir=None if checkpoint_dir is None else Path(checkpoint_dir),
            every_n_steps=int(every_n_steps),
            resume_from=resume_from,
            config=config,
        )

    @property
    def active(self) -> bool:
        """Whether this run writes checkpoints or resumes one."""
        return self.checkpoint_dir is not None or self.resume_from is not None

    def trainer_kwargs(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """``kwargs`` plus the checkpoint callback, the atomic checkpoint I/O and ``ckpt_path``.

        scvi-tools' :class:`~scvi.train.TrainRunner` pops ``ckpt_path`` from the trainer keyword
        arguments and passes it to ``Trainer.fit``.
        """
        out = dict(kwargs)
        if not self.active:
            return out
        self.callback = TrainingCheckpoint(
            self.checkpoint_dir, every_n_steps=self.every_n_steps, config=self.config
        )
        callbacks = out.get("callbacks") or []
        out["callbacks"] = [
            *(callbacks if isinstance(callbacks, list | tuple) else [callbacks]),
            self.callback,
        ]
        plugins = out.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, list | tuple) else [plugins]
        if not any(isinstance(p, TorchCheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())
        out["plugins"] = plugins
        if self.resume_from is not None:
            out["ckpt_path"] = str(self.resume_from)
        return out


def _plain(value: Any) -> Any:
    """A config value as plain Python (what survives ``torch.load(weights_only=True)``)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)
