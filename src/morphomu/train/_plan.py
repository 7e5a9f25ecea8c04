"""What morphomu's training plans share on top of scvi-tools' :class:`~scvi.train.TrainingPlan`."""

from __future__ import annotations

import torch
from scvi.train import TrainingPlan

__all__ = ["LossTrainingPlan", "adamw"]


def adamw(plan: TrainingPlan, params: list[torch.nn.Parameter]) -> torch.optim.AdamW:
    """AdamW with the plan's ``lr`` / ``weight_decay`` / ``eps``: the fused kernel at full precision.

    Lightning's mixed-precision plugins unscale gradients before clipping, which a fused optimiser does
    internally, so under ``'16-mixed'`` / ``'bf16-mixed'`` (or where the fused kernel is unavailable) the
    multi-tensor (``foreach``) implementation is used.
    """
    kwargs = {"lr": plan.lr, "weight_decay": plan.weight_decay, "eps": plan.eps}
    trainer = getattr(plan, "_trainer", None)
    full_precision = trainer is None or str(trainer.precision) in ("32-true", "32", "64-true", "64")
    if full_precision:
        try:
            return torch.optim.AdamW(params, fused=True, **kwargs)
        except (RuntimeError, TypeError):  # fused kernel unavailable for this device / dtype
            pass
    return torch.optim.AdamW(params, foreach=True, **kwargs)


class LossTrainingPlan(TrainingPlan):
    """A training plan whose step is the module's single loss, logged once per epoch as ``train_loss``.

    scvi-tools' own step also logs ELBO terms (reconstruction, KL) that morphomu's modules do not have.
    """

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """One optimisation step's loss."""
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
        return out.loss
