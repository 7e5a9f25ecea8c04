"""What morphomu's training plans share on top of scvi-tools' :class:`~scvi.train.TrainingPlan`."""

from __future__ import annotations

import torch
from scvi.train import TrainingPlan

__all__ = ["LossTrainingPlan"]


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
