"""The noise schedule and samplers of morphomu's diffusion models, as configured diffusers schedulers.

One configuration, pinned by a test, used for training (``alphas_cumprod``) and sampling (DDIM / DDPM):

- ``beta_schedule='squaredcos_cap_v2'``: the cosine schedule of Nichol & Dhariwal (s = 0.008), T = 1000,
  betas capped at 0.999. The PhenoSeq code also clamps betas below at 1e-5; for this schedule the
  smallest beta is 4.1e-5 (t = 0), so that clamp never binds and diffusers' schedule is identical.
- ``prediction_type='epsilon'``: the networks predict the added noise.
- ``clip_sample=False``: diffusers' default clips the x0 estimate to [-1, 1], which would truncate
  standardised embeddings (values of several standard deviations are common).
- ``timestep_spacing='leading'`` with ``steps_offset=0``: 50 DDIM steps visit t = 980, 960, ..., 0. The
  cosine schedule ends at alpha_bar(999) = 2.4e-9; an epsilon-predicting network evaluated there turns
  its error into an x0 estimate divided by sqrt(alpha_bar) = 5e-5 (a 20,000-fold amplification), so
  ``'trailing'`` / ``'linspace'`` (which start at t = 999) are ill-conditioned for epsilon prediction.
  At t = 980 sqrt(alpha_bar) = 0.03 and the first step is well behaved.
- ``set_alpha_to_one=True``: the last step (t = 0) returns the x0 estimate itself (alpha_bar_prev = 1),
  i.e. a clean sample rather than one left at the noise level of t = 0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from diffusers import DDIMScheduler, DDPMScheduler

__all__ = ["SCHEDULER_CONFIG", "make_scheduler", "training_alphas_cumprod"]

#: The pinned configuration (keys shared by DDIM and DDPM, plus DDIM's own).
SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2",
    "prediction_type": "epsilon",
    "clip_sample": False,
    "timestep_spacing": "leading",
    "steps_offset": 0,
    "set_alpha_to_one": True,  # DDIM only
}
_DDIM_ONLY = ("set_alpha_to_one",)


def make_scheduler(kind: Literal["ddim", "ddpm"] = "ddim", **overrides: Any) -> DDIMScheduler | DDPMScheduler:
    """Return a fresh diffusers scheduler with the pinned configuration.

    Parameters
    ----------
    kind
        ``'ddim'`` (deterministic for ``eta=0``; used by generation) or ``'ddpm'`` (ancestral sampling).
    **overrides
        Configuration entries to change (e.g. ``num_train_timesteps``).

    Returns
    -------
    A new scheduler (schedulers carry state, so each sampling run gets its own).

    Examples
    --------
    >>> from morphomu.module._diffusion import make_scheduler
    >>> s = make_scheduler()
    >>> s.set_timesteps(50)
    >>> s.timesteps[:3].tolist()
    [980, 960, 940]
    """
    from diffusers import DDIMScheduler, DDPMScheduler

    config = {**SCHEDULER_CONFIG, **overrides}
    if kind == "ddim":
        return DDIMScheduler(**config)
    if kind == "ddpm":
        return DDPMScheduler(**{k: v for k, v in config.items() if k not in _DDIM_ONLY})
    msg = f"kind={kind!r}: choose 'ddim' or 'ddpm'."
    raise ValueError(msg)


def training_alphas_cumprod(prediction_type: str) -> Any:
    """The schedule's ``alpha_bar`` per timestep (float32 tensor) for a network predicting ``prediction_type``.

    Raises ``ValueError`` unless ``prediction_type`` is ``'epsilon'`` (the papers) or ``'v_prediction'``.
    """
    import torch

    if prediction_type not in ("epsilon", "v_prediction"):
        msg = f"prediction_type={prediction_type!r}: choose 'epsilon' (the paper) or 'v_prediction'."
        raise ValueError(msg)
    return make_scheduler("ddpm", prediction_type=prediction_type).alphas_cumprod.to(torch.float32)
