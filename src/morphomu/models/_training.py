"""One training template for every morphomu model, in the style of scvi-tools' ``UnsupervisedTrainingMixin``.

A model's public ``train`` keeps its own signature and docstring (its model-specific arguments) and hands
its arguments, ``self._run_training(locals())``, to :meth:`TrainingMixin._run_training`, which runs the same
steps for every model:

1. :meth:`~TrainingMixin._train_args`: fill unset arguments from the preset and check them, before any work;
2. :class:`~morphomu.train._checkpoint.Checkpointing` from the checkpoint arguments and
   :meth:`~TrainingMixin._run_config` (what identifies the run: a checkpoint of another run is refused);
3. :meth:`~TrainingMixin._make_datamodule` (built from ``_data_splitter_cls``) and
   :meth:`~TrainingMixin._make_plan` (built from ``_training_plan_cls``);
4. the trainer's arguments: :meth:`~TrainingMixin._trainer_defaults`, then the caller's ``**trainer_kwargs``,
   ``strategy`` and ``precision`` (``'auto'`` resolved by :func:`morphomu._core.resolve_precision` before any
   work, and kept in ``train_precision_``); ``compile`` reaches the plan's ``compile_forward``;
5. scvi-tools' ``_train_runner_cls`` inside :meth:`~TrainingMixin._training_context`;
6. :meth:`~TrainingMixin._teardown` (always) and :meth:`~TrainingMixin._after_training` (on success).

The module itself is built in ``__init__`` from ``_module_cls``, so a subclass swaps any piece by setting a
class attribute. The parameters every ``train`` shares are documented once, in :data:`TRAIN_CORE_DOC`, and
inserted where a docstring says ``{train_core}``.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from scvi.train import TrainRunner

from .._core import quiet_lightning, resolve_precision
from .._docs import doc_params
from .._errors import MorphomuError

__all__ = ["SHARED_TRAIN_ARGS", "TRAIN_CORE_DOC", "EMATrainingMixin", "TrainingMixin", "train_docstring"]

#: The parameters of every model's ``train`` (after its model-specific ones), in numpydoc.
TRAIN_CORE_DOC = """\
accelerator
    Lightning accelerator (``'auto'``, ``'cpu'``, ``'gpu'``).
devices
    Lightning devices.
strategy
    Lightning strategy, e.g. ``'ddp'``: each process draws its own share of every epoch.
precision
    ``'auto'`` (default): ``'bf16-mixed'`` where the device computes in bf16 fast (a CUDA GPU with native
    bf16, or a CPU with the ``avx512_bf16`` / ``amx_bf16`` flag), else ``'32-true'``; or either of them, or
    ``'16-mixed'``. Weights stay float32. The environment variable ``MORPHOMU_PRECISION`` sets what
    ``'auto'`` means. The precision used is kept in ``train_precision_`` (saved with the model).
compile
    Compile the module's forward of the training step with :func:`torch.compile` (compile time is spent
    at the first steps; where compilation fails, a warning says so and training runs uncompiled).
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
verbose
    Show Lightning's and scvi-tools' set-up messages (devices, tips, data-loader hints); the progress bar
    shows either way (``enable_progress_bar=False`` hides it).
**trainer_kwargs
    Passed to :class:`scvi.train.Trainer` / Lightning (e.g. ``enable_progress_bar=False``)."""

#: The arguments of every model's ``train`` that the template itself consumes (with ``**trainer_kwargs``);
#: every other argument of a ``train`` call is the model's own and reaches its hooks in ``args``.
SHARED_TRAIN_ARGS = (
    "accelerator",
    "devices",
    "strategy",
    "precision",
    "compile",
    "checkpoint_dir",
    "checkpoint_every_n_steps",
    "ckpt_path",
    "verbose",
)


def check_compile(value: Any) -> bool:
    """``train``'s ``compile``: a bool (``None``, from an older subclass's signature, is ``False``)."""
    if value is None:
        return False
    if not isinstance(value, bool):
        msg = f"compile={value!r}: expected True or False."
        raise MorphomuError(msg)
    return value


#: Inserts :data:`TRAIN_CORE_DOC` where a ``train`` docstring says ``{train_core}``.
train_docstring = doc_params(train_core=TRAIN_CORE_DOC)


class TrainingMixin:
    """The training template (see the module's description); models override the hooks they need."""

    _train_runner_cls = TrainRunner
    #: Per preset, the values of ``train`` arguments left ``None`` (each model sets its table).
    _train_defaults: dict[str, dict[str, Any]] = {}
    #: Checks of ``train`` arguments by name (see ``morphomu._validation.check_args``), run before any work.
    _train_checks: dict[str, Any] = {}

    def _run_training(self, train_args: dict[str, Any]) -> None:
        """Train with a ``train`` call's arguments: ``locals()`` at its start (model-specific and shared)."""
        from ..train._checkpoint import Checkpointing

        given = dict(train_args)
        trainer_kwargs = dict(given.pop("trainer_kwargs", None) or {})
        shared = {name: given.pop(name, None) for name in SHARED_TRAIN_ARGS}
        # before any work: None (a train signature of an older subclass) means "auto"
        shared["precision"] = resolve_precision(
            "auto" if shared["precision"] is None else shared["precision"], shared["accelerator"]
        )
        shared["compile"] = check_compile(shared["compile"])
        args = self._train_args({k: v for k, v in given.items() if k not in ("self", "__class__")})
        checkpoints = Checkpointing.from_args(
            shared["checkpoint_dir"],
            every_n_steps=shared["checkpoint_every_n_steps"],
            ckpt_path=shared["ckpt_path"],
            config=self._run_config(args),
        )
        args = {**args, **shared, "trainer_kwargs": trainer_kwargs}
        datamodule = self._make_datamodule(args)
        try:
            plan = self._make_plan(args)
            plan.compile_forward = shared["compile"]
            kwargs = {**self._trainer_defaults(args, datamodule), **trainer_kwargs}
            for name in ("strategy", "precision"):  # given ones override the model's defaults
                if shared[name] is not None:
                    kwargs[name] = shared[name]
            # Lightning's start-up chatter is hidden inside this call only, unless asked for
            with quiet_lightning(not shared["verbose"], level=logging.WARNING), self._training_context(args):
                runner = self._train_runner_cls(
                    self,
                    training_plan=plan,
                    data_splitter=datamodule,
                    max_epochs=int(args["max_epochs"]),
                    accelerator=shared["accelerator"],
                    devices=shared["devices"],
                    **checkpoints.trainer_kwargs(kwargs),
                )
                runner()
        finally:
            self._teardown(datamodule)
        self._after_training(plan, args)
        self.train_precision_ = shared["precision"]

    # ------------------------------------------------------------------ hooks
    def _train_args(self, args: dict[str, Any]) -> dict[str, Any]:
        """The model's ``train`` arguments checked (``_train_checks``) and, where unset, the preset's values."""
        from .._validation import check_args

        check_args({k: args[k] for k in self._train_checks if k in args}, self._train_checks)
        for key, value in self._train_defaults.get(getattr(self, "preset", ""), {}).items():
            if args.get(key) is None:
                args[key] = value
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

    def _run_config(self, args: dict[str, Any]) -> dict[str, Any]:
        model: Any = self
        return {
            "model": type(self).__name__,
            "preset": model.preset,
            **model.sizes,
            "p_uncond": model.p_uncond,
            "max_epochs": int(args["max_epochs"]),
            "batch_size": int(args["batch_size"]),
            "lr": float(args["lr"]),
            "weight_decay": args["weight_decay"],
            "warmup_epochs": args["warmup_epochs"],
            "ema_decay": args["ema_decay"],
            "seed": int(args["seed"]),
        }

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
