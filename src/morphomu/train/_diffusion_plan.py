"""Training plan for diffusion modules: AdamW, linear warm-up then cosine decay, EMA beside raw weights."""

from __future__ import annotations

import math
from typing import Any

import torch

from ._ema import ExponentialMovingAverage
from ._plan import LossTrainingPlan, adamw

__all__ = ["DiffusionTrainingPlan", "warmup_cosine"]


def warmup_cosine(step: int, *, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate factor: linear warm-up to 1 over ``warmup_steps``, then cosine decay to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class DiffusionTrainingPlan(LossTrainingPlan):
    """scvi-tools training plan for epsilon-prediction diffusion modules.

    The module's ``loss`` gives the MSE; this plan adds the optimiser (AdamW), the learning-rate
    schedule (``warmup_epochs`` of linear warm-up, then cosine decay over the remaining steps) and an
    exponential moving average of the weights with warm-up (:class:`ExponentialMovingAverage`).
    Validation and early stopping use the raw weights; the model copies the average into the module
    when training ends. Gradient clipping is the trainer's ``gradient_clip_val``.

    Parameters
    ----------
    module
        The module to train.
    lr
        Peak learning rate.
    weight_decay
        AdamW weight decay.
    warmup_epochs
        Epochs of linear learning-rate warm-up.
    ema_decay
        Final EMA decay.
    ema
        An average to continue (from a previous training run).
    """

    def __init__(
        self,
        module: torch.nn.Module,
        *,
        lr: float = 1e-4,
        weight_decay: float = 1e-5,
        warmup_epochs: float = 5,
        ema_decay: float = 0.9999,
        ema: ExponentialMovingAverage | None = None,
    ) -> None:
        super().__init__(module, optimizer="AdamW", lr=lr, weight_decay=weight_decay, eps=1e-8)
        self.warmup_epochs = warmup_epochs
        self.ema = ema if ema is not None else ExponentialMovingAverage(ema_decay)

    def trainable(self) -> list[torch.nn.Parameter]:
        """Parameters the optimiser and the EMA act on."""
        return [p for p in self.module.parameters() if p.requires_grad]

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW (:func:`~morphomu.train._plan.adamw`) with per-step warm-up + cosine schedule."""
        optimizer = adamw(self, self.trainable())
        total = max(1, int(self.trainer.estimated_stepping_batches))
        steps_per_epoch = total / max(1, self.trainer.max_epochs or 1)
        warmup = max(1, round(self.warmup_epochs * steps_per_epoch))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: warmup_cosine(s, warmup_steps=warmup, total_steps=total)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_start(self) -> None:
        """Start (or move) the average on the training device."""
        self.ema.start(self.trainable())

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """Step the optimiser, then update the average.

        Done here rather than in ``on_train_batch_end``, which Lightning runs after the callbacks': a
        checkpoint saved at the end of a step (:class:`morphomu.train._checkpoint.TrainingCheckpoint`)
        then holds the average of that step too.
        """
        super().optimizer_step(*args, **kwargs)
        self.ema.update(self.trainable())

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Checkpoints keep the raw weights (``state_dict``) and the average beside them."""
        checkpoint["ema"] = self.ema.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the average when resuming."""
        if "ema" in checkpoint:
            self.ema.load_state_dict(checkpoint["ema"])
