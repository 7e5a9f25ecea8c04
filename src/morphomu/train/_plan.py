"""What morphomu's training plans share on top of scvi-tools' :class:`~scvi.train.TrainingPlan`."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.utilities import GradClipAlgorithmType
from scvi.train import TrainingPlan

__all__ = ["LossTrainingPlan", "adamw"]


def adamw(plan: TrainingPlan, params: list[torch.nn.Parameter]) -> torch.optim.AdamW:
    """AdamW with the plan's ``lr`` / ``weight_decay`` / ``eps``: the fused kernel where it is correct.

    Under ``'16-mixed'`` the loss scaler must unscale gradients before they are clipped, which a fused
    optimiser would do only inside its step, so there (and where the fused kernel is unavailable) the
    multi-tensor (``foreach``) implementation is used. ``'bf16-mixed'`` has no loss scaler: its gradients
    are clipped as they are (:meth:`LossTrainingPlan.configure_gradient_clipping`).
    """
    kwargs = {"lr": plan.lr, "weight_decay": plan.weight_decay, "eps": plan.eps}
    trainer = getattr(plan, "_trainer", None)
    loss_scaled = trainer is not None and str(trainer.precision) in ("16-mixed", "16")
    if not loss_scaled:
        try:
            return torch.optim.AdamW(params, fused=True, **kwargs)
        except (RuntimeError, TypeError):  # fused kernel unavailable for this device / dtype
            pass
    return torch.optim.AdamW(params, foreach=True, **kwargs)


class LossTrainingPlan(TrainingPlan):
    """A training plan whose step is the module's single loss, logged once per epoch.

    Logs ``train_loss`` / ``validation_loss`` and each scalar of the module's ``extra_metrics`` (separate
    loss terms) as ``train_{name}`` / ``validation_{name}``. scvi-tools' own steps also log ELBO terms
    (reconstruction, KL) that morphomu's modules do not all have.
    """

    #: The extra metrics logged (``None``: every scalar one).
    logged_metrics: tuple[str, ...] | None = None
    #: Run the training step's forward through :func:`torch.compile` (``train(compile=True)``).
    compile_forward: bool = False
    #: The compiled forward, made at the first training step (a function, not a submodule: the state dict
    #: keeps its keys).
    _compiled_forward: Any = None

    def log_losses(self, stage: str, out: Any, *, prog_bar: bool = True) -> None:
        """Log ``out``'s loss and scalar extra metrics for ``stage`` (``'train'`` / ``'validation'``) per epoch."""
        wanted = self.logged_metrics
        extra = {
            k: v
            for k, v in (out.extra_metrics or {}).items()
            if isinstance(v, torch.Tensor) and v.ndim == 0 and (wanted is None or k in wanted)
        }
        for name, value in {"loss": out.loss, **extra}.items():
            self.log(
                f"{stage}_{name}",
                value,
                on_step=False,
                on_epoch=True,
                prog_bar=prog_bar and name == "loss",
                batch_size=out.n_obs_minibatch,
                sync_dist=self.use_sync_dist,
            )

    def training_forward(self, batch: dict[str, torch.Tensor]) -> Any:
        """The forward of a training step: compiled with ``compile_forward``, falling back to eager once.

        Compilation happens at the first call; when it fails (no C++ compiler, an unsupported operation,
        ...), a :class:`~morphomu.MorphomuWarning` says why and this and every later step run uncompiled.
        """
        if not self.compile_forward:
            return self.forward(batch)
        if self._compiled_forward is None:
            self._compiled_forward = torch.compile(self.forward)
        try:
            return self._compiled_forward(batch)
        except Exception as e:  # any compiler failure: the eager step below reports real errors
            import warnings

            from .._errors import MorphomuWarning

            warnings.warn(
                f"torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                "training continues uncompiled.",
                MorphomuWarning,
                stacklevel=2,
            )
            self.compile_forward, self._compiled_forward = False, None
            return self.forward(batch)

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip as Lightning does, and also a fused optimiser's gradients under ``'bf16-mixed'``.

        Lightning's mixed-precision plugin refuses to clip for any fused optimiser because of fp16's loss
        scaler; bf16-mixed has none, so its gradients are already true gradients and are clipped directly.
        """
        plugin = self.trainer.precision_plugin
        if gradient_clip_val and isinstance(plugin, MixedPrecision) and plugin.scaler is None:
            algorithm = GradClipAlgorithmType(gradient_clip_algorithm or GradClipAlgorithmType.NORM)
            Precision.clip_gradients(plugin, optimizer, gradient_clip_val, algorithm)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """One optimisation step's loss."""
        _, _, out = self.training_forward(batch)
        self.log_losses("train", out)
        return out.loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """The validation losses."""
        _, _, out = self.forward(batch)
        self.log_losses("validation", out)
