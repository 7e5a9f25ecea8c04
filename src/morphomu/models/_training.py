"""One training template for every morphomu model, in the style of scvi-tools' ``UnsupervisedTrainingMixin``.

A model's public ``train`` keeps its own signature and docstring (its model-specific arguments) and hands
everything to :meth:`TrainingMixin._run_training`, which runs the same steps for every model:

1. :meth:`~TrainingMixin._train_args`: fill unset arguments from the preset and check them, before any work;
2. :class:`~morphomu.train._checkpoint.Checkpointing` from the checkpoint arguments and
   :meth:`~TrainingMixin._run_config` (what identifies the run: a checkpoint of another run is refused);
3. :meth:`~TrainingMixin._make_datamodule` (built from ``_data_splitter_cls``) and
   :meth:`~TrainingMixin._make_plan` (built from ``_training_plan_cls``);
4. the trainer's arguments: :meth:`~TrainingMixin._trainer_defaults`, then the caller's ``**trainer_kwargs``,
   ``strategy`` and ``precision``;
5. scvi-tools' ``_train_runner_cls`` inside :meth:`~TrainingMixin._training_context`;
6. :meth:`~TrainingMixin._teardown` (always) and :meth:`~TrainingMixin._after_training` (on success).

The module itself is built in ``__init__`` from ``_module_cls``, so a subclass swaps any piece by setting a
class attribute. The parameters every ``train`` shares are documented once, in :data:`TRAIN_CORE_DOC`, and
inserted where a docstring says ``{train_core}``.
"""

from __future__ import annotations

import contextlib
import os
import textwrap
from collections.abc import Callable
from typing import Any, TypeVar

from scvi.train import TrainRunner

__all__ = ["TRAIN_CORE_DOC", "EMATrainingMixin", "TrainingMixin", "train_docstring"]

#: The parameters of every model's ``train`` (after its model-specific ones), in numpydoc.
TRAIN_CORE_DOC = """\
accelerator
    Lightning accelerator (``'auto'``, ``'cpu'``, ``'gpu'``).
devices
    Lightning devices.
strategy
    Lightning strategy, e.g. ``'ddp'``: each process draws its own share of every epoch.
precision
    Lightning precision, e.g. ``'bf16-mixed'``.
num_workers
    Data-loader workers (the draws do not depend on it).
checkpoint_dir
    Directory for resumable checkpoints (``last.ckpt``: weights, optimiser, scheduler, random
    generators, the position in the epoch and the model's extra training state); ``None`` writes none.
checkpoint_every_n_steps
    Optimiser steps between checkpoints.
ckpt_path
    ``'last'`` continues the run interrupted in ``checkpoint_dir`` (or starts it when there is no
    checkpoint yet), or a ``.ckpt`` path; the resumed run ends with the same weights as an
    uninterrupted one. Use a fresh model created as the interrupted one was.
**trainer_kwargs
    Passed to :class:`scvi.train.Trainer` / Lightning (e.g. ``enable_progress_bar=False``)."""

_F = TypeVar("_F", bound=Callable[..., Any])


def train_docstring(func: _F) -> _F:
    """Insert :data:`TRAIN_CORE_DOC` where ``func``'s docstring says ``{train_core}`` (at that indentation)."""
    doc = func.__doc__ or ""
    for line in doc.splitlines():
        if line.strip() == "{train_core}":
            indent = line[: len(line) - len(line.lstrip())]
            func.__doc__ = doc.replace(line, textwrap.indent(TRAIN_CORE_DOC, indent))
            return func
    msg = f"{func.__qualname__}'s docstring has no {{train_core}} line."
    raise ValueError(msg)


class TrainingMixin:
    """The training template (see the module's description); models override the hooks they need."""

    _train_runner_cls = TrainRunner

    def _run_training(
        self,
        args: dict[str, Any],
        *,
        accelerator: str,
        devices: int | list[int] | str,
        strategy: str | Any | None,
        precision: str | int | None,
        checkpoint_dir: str | os.PathLike | None,
        checkpoint_every_n_steps: int,
        ckpt_path: str | os.PathLike | None,
        trainer_kwargs: dict[str, Any],
    ) -> None:
        """Train with the model's arguments ``args`` (its ``train``'s own) and the shared ones."""
        from ..train._checkpoint import Checkpointing

        args = self._train_args(dict(args))
        shared = {
            "accelerator": accelerator,
            "devices": devices,
            "strategy": strategy,
            "precision": precision,
            "checkpoint_dir": checkpoint_dir,
            "checkpoint_every_n_steps": checkpoint_every_n_steps,
            "ckpt_path": ckpt_path,
            "trainer_kwargs": trainer_kwargs,
        }
        checkpoints = Checkpointing.from_args(
            checkpoint_dir,
            every_n_steps=checkpoint_every_n_steps,
            ckpt_path=ckpt_path,
            config=self._run_config(args),
        )
        args = {**args, **shared}
        datamodule = self._make_datamodule(args)
        try:
            plan = self._make_plan(args)
            kwargs = {**self._trainer_defaults(args, datamodule), **trainer_kwargs}
            if strategy is not None:
                kwargs["strategy"] = strategy
            if precision is not None:
                kwargs["precision"] = precision
            with self._training_context(args):
                runner = self._train_runner_cls(
                    self,
                    training_plan=plan,
                    data_splitter=datamodule,
                    max_epochs=int(args["max_epochs"]),
                    accelerator=accelerator,
                    devices=devices,
                    **checkpoints.trainer_kwargs(kwargs),
                )
                runner()
        finally:
            self._teardown(datamodule)
        self._after_training(plan, args)

    # ------------------------------------------------------------------ hooks
    def _train_args(self, args: dict[str, Any]) -> dict[str, Any]:
        """The model's ``train`` arguments with unset ones filled from the preset, checked before any work."""
        return args

    def _run_config(self, args: dict[str, Any]) -> dict[str, Any]:
        """Plain values that identify the run (a checkpoint of another run is refused)."""
        return {"model": type(self).__name__, **args}

    def _make_datamodule(self, args: dict[str, Any]) -> Any:
        """The Lightning data module of this run, an instance of ``_data_splitter_cls``."""
        raise NotImplementedError

    def _make_plan(self, args: dict[str, Any]) -> Any:
        """The training plan of this run, an instance of ``_training_plan_cls``."""
        raise NotImplementedError

    def _trainer_defaults(self, args: dict[str, Any], datamodule: Any) -> dict[str, Any]:
        """The trainer's arguments this model sets (the caller's ``**trainer_kwargs`` override them)."""
        return {}

    def _training_context(self, args: dict[str, Any]) -> Any:
        """A context manager around the trainer's construction and run."""
        return contextlib.nullcontext()

    def _teardown(self, datamodule: Any) -> None:
        """Release what the data module holds (e.g. a disk cache), whether training succeeded or not."""

    def _after_training(self, plan: Any, args: dict[str, Any]) -> None:
        """Bring the model to its trained state (e.g. load the EMA weights)."""
        self.module.eval()  # type: ignore[attr-defined]


class EMATrainingMixin(TrainingMixin):
    """The template for diffusion models with EMA weights (PhenoSeq, Trident).

    Training continues from the raw weights of an earlier ``train`` call, with its running average; when
    it ends the module holds the EMA weights (:func:`~morphomu.models._base.finish_ema_training`).
    """

    def _make_plan(self, args: dict[str, Any]) -> Any:
        model: Any = self
        if model._raw_state is not None:  # continue from the raw weights, with the running average
            model.module.load_state_dict(model._raw_state)
        return model._training_plan_cls(
            model.module,
            lr=args["lr"],
            weight_decay=args["weight_decay"],
            warmup_epochs=args["warmup_epochs"],
            ema_decay=args["ema_decay"],
            ema=model._ema,
        )

    def _after_training(self, plan: Any, args: dict[str, Any]) -> None:
        from ._base import finish_ema_training

        finish_ema_training(self, plan)
