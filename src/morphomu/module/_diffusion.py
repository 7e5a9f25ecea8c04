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

The few-step multistep solvers (``'dpmsolver++'``: DPM-Solver++ 2M, ``'unipc'``: UniPC-2 with its
corrector, both deterministic) integrate the same probability-flow ODE from the same first timestep as
DDIM-50 (:data:`MULTISTEP_FIRST_TIMESTEP`, t = 980; the training schedule's betas up to there, so their
``alpha_bar`` are the training ones) down to a clean sample (``final_sigmas_type='zero'``: the last step
returns the x0 estimate of the network's prediction at t = 0). Their ``n_steps`` noise levels are evenly
spaced in log sigma, i.e. in log-SNR (``use_exponential_sigmas``, DPM-Solver's recommended spacing), from
sigma(980) to sigma(0); the network is evaluated at each level's timestep (rounded down). Why:

- Evenly spaced timesteps (``'linspace'``) leave few steps at low noise, where a narrow distribution is
  resolved: on Gaussian data with exact noise predictions and a standard deviation of 0.1 (standardised
  units), 10 steps give 50 % too little spread (DDIM-50: 12 %); log-SNR spacing gives 2 %. Karras sigmas
  over-disperse wide distributions (+10 % at 10 steps).
- diffusers' ``'leading'`` spacing would start lower (t = 900 for 10 steps, 830 for 5), dropping a share
  sqrt(alpha_bar) of the data's signal from the start (15 % of the mean at 10 steps).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from diffusers import (
        DDIMScheduler,
        DDPMScheduler,
        DPMSolverMultistepScheduler,
        UniPCMultistepScheduler,
    )

__all__ = [
    "DEFAULT_N_STEPS",
    "DEFAULT_SAMPLER",
    "MULTISTEP_CONFIG",
    "MULTISTEP_FIRST_TIMESTEP",
    "PAPER_N_STEPS",
    "PAPER_SAMPLER",
    "SAMPLERS",
    "SCHEDULER_CONFIG",
    "make_scheduler",
    "max_sampler_steps",
    "sampler_scheduler",
    "scheduler_step",
    "training_alphas_cumprod",
]

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

#: The samplers of generation: DDIM (the papers') and the deterministic multistep solvers.
SAMPLERS: tuple[str, ...] = ("ddim", "dpmsolver++", "unipc")

#: The papers' generation protocol (PhenoSeq and TRIDENT): 50 deterministic DDIM steps.
PAPER_SAMPLER = "ddim"
PAPER_N_STEPS = 50
#: The default sampler and step count of ``generate`` per model family (``'phenoseq'``: PhenoSeq and
#: MorphologyEmbedder; ``'trident'``), chosen by measurement against the papers' DDIM-50 with
#: ``benchmarks/samplers.py``. The signatures, the tools and the benchmark configurations read them here.
#: PhenoSeq: UniPC-20 is the fewest steps (of 5-25) from which every metric of the RNA benchmark (fidelity
#: Acc@1, MRR, energy distance; synthetic-RNA classification) stays within seed noise of DDIM-50, over five
#: seeds, at 2.2x its speed (DPM-Solver++ 2M matches from 20 steps too; at 8-15 steps the energy distance
#: moves 1.2-3x as far from DDIM-50's as that of DDIM-200, the nearly converged ODE solution, does).
#: TRIDENT keeps DDIM-50: its smaller check (``--model trident``, tiny preset, two seeds) did not establish
#: a match (the solvers' FID moved by 5x a redraw's change, though downwards, and two seeds give no usable
#: seed noise), although the readout slope was kept (0.17 at UniPC-20 vs 0.16).
DEFAULT_SAMPLER: dict[str, str] = {"phenoseq": "unipc", "trident": PAPER_SAMPLER}
DEFAULT_N_STEPS: dict[str, int] = {"phenoseq": 20, "trident": PAPER_N_STEPS}

#: First timestep of the multistep solvers: DDIM-50's (sqrt(alpha_bar) = 0.03, see the module notes).
MULTISTEP_FIRST_TIMESTEP = 980

#: The multistep solvers' own pinned configuration (beside the training schedule's betas up to
#: :data:`MULTISTEP_FIRST_TIMESTEP` and ``prediction_type``); the values that differ from diffusers'
#: defaults are ``use_exponential_sigmas`` (log-SNR spacing), ``final_sigmas_type='zero'`` and, for
#: DPM-Solver++, ``lambda_min_clipped`` (see the module notes).
MULTISTEP_CONFIG: dict[str, dict[str, Any]] = {
    "dpmsolver++": {
        "algorithm_type": "dpmsolver++",  # data prediction, no step noise (not 'sde-dpmsolver++')
        "solver_order": 2,  # 2M: the recommended order for conditional / guided sampling
        "solver_type": "midpoint",
        "lower_order_final": True,  # first-order last steps: stable below 15 steps
        "euler_at_final": False,
        "final_sigmas_type": "zero",  # the last step lands on the x0 estimate, as DDIM's set_alpha_to_one
        "lambda_min_clipped": float("-inf"),  # no clipping: t = 980 is well inside the schedule
        "use_karras_sigmas": False,
        "use_exponential_sigmas": True,  # noise levels evenly spaced in log-SNR (see the module notes)
        "thresholding": False,  # as clip_sample=False: standardised values are not bounded
        "timestep_spacing": "linspace",  # unused with use_exponential_sigmas
        "steps_offset": 0,
    },
    "unipc": {
        "solver_order": 2,
        "predict_x0": True,
        "solver_type": "bh2",
        "lower_order_final": True,
        "disable_corrector": [],  # the corrector reuses the step's prediction: no extra evaluation
        "final_sigmas_type": "zero",
        "use_karras_sigmas": False,
        "use_exponential_sigmas": True,
        "thresholding": False,
        "timestep_spacing": "linspace",
        "steps_offset": 0,
    },
}


def make_scheduler(
    kind: Literal["ddim", "ddpm", "dpmsolver++", "unipc"] = "ddim", **overrides: Any
) -> DDIMScheduler | DDPMScheduler | DPMSolverMultistepScheduler | UniPCMultistepScheduler:
    """Return a fresh diffusers scheduler with the pinned configuration.

    Parameters
    ----------
    kind
        ``'ddim'`` (deterministic for ``eta=0``; the papers' generation), ``'ddpm'`` (ancestral sampling),
        ``'dpmsolver++'`` (DPM-Solver++ 2M) or ``'unipc'`` (UniPC-2); the last two are deterministic
        multistep solvers with the configuration of :data:`MULTISTEP_CONFIG`.
    **overrides
        Configuration entries to change (e.g. ``num_train_timesteps``; for the multistep solvers, entries
        of the training schedule or of :data:`MULTISTEP_CONFIG`).

    Returns
    -------
    A new scheduler (schedulers carry state, the multistep ones the last predictions, so each sampling
    run gets its own).

    Examples
    --------
    >>> from morphomu.module._diffusion import make_scheduler
    >>> s = make_scheduler()
    >>> s.set_timesteps(50)
    >>> s.timesteps[:3].tolist()
    [980, 960, 940]
    >>> s = make_scheduler("dpmsolver++")
    >>> s.set_timesteps(10)
    >>> s.timesteps.tolist()
    [980, 949, 873, 693, 403, 171, 62, 19, 4, 0]
    """
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler

    if kind in MULTISTEP_CONFIG:
        schedule = {k: v for k, v in overrides.items() if k in SCHEDULER_CONFIG}
        own = {k: v for k, v in overrides.items() if k not in SCHEDULER_CONFIG}
        train = make_scheduler("ddpm", **schedule)
        first = min(MULTISTEP_FIRST_TIMESTEP, train.config.num_train_timesteps - 1)
        cls = DPMSolverMultistepScheduler if kind == "dpmsolver++" else UniPCMultistepScheduler
        return cls(
            num_train_timesteps=first + 1,
            trained_betas=train.betas[: first + 1].tolist(),
            prediction_type=train.config.prediction_type,
            **{**MULTISTEP_CONFIG[kind], **own},
        )
    config = {**SCHEDULER_CONFIG, **overrides}
    if kind == "ddim":
        return DDIMScheduler(**config)
    if kind == "ddpm":
        return DDPMScheduler(**{k: v for k, v in config.items() if k not in _DDIM_ONLY})
    msg = f"kind={kind!r}: choose 'ddim', 'ddpm', 'dpmsolver++' or 'unipc'."
    raise ValueError(msg)


def sampler_scheduler(sampler: str, *, prediction_type: str, eta: float = 0.0) -> Any:
    """A fresh scheduler for generation with ``sampler`` (one of :data:`SAMPLERS`).

    Raises ``ValueError`` for an unknown ``sampler`` or ``eta != 0`` with a multistep solver (they are
    deterministic ODE solvers: DDIM's ``eta`` has no meaning there).
    """
    if sampler not in SAMPLERS:
        msg = f"sampler={sampler!r}: choose one of {list(SAMPLERS)}."
        raise ValueError(msg)
    if sampler != "ddim" and eta != 0:
        msg = f"eta={eta}: sampler={sampler!r} is deterministic; use eta=0 or sampler='ddim'."
        raise ValueError(msg)
    return make_scheduler(sampler, prediction_type=prediction_type)


def scheduler_step(
    scheduler: Any, pred: Any, t: int, x: Any, *, eta: float = 0.0, variance_noise: Any = None
) -> Any:
    """One denoising step of ``scheduler`` from ``x`` at timestep ``t`` given the network's prediction ``pred``.

    DDIM takes ``eta`` and its step noise; the multistep solvers take neither. The step runs in ``x``'s
    precision (the noise's, float32) whatever the network's: the prediction is cast to it (DPM-Solver++
    casts its new state to the prediction's dtype, so a bf16 network would leave the state in bf16) and
    autocast is off (it would run UniPC's ``einsum`` of past predictions in bf16).
    """
    import torch
    from diffusers import DDIMScheduler

    pred = pred.to(x.dtype)
    with torch.autocast(device_type=x.device.type, enabled=False):
        if isinstance(scheduler, DDIMScheduler):
            return scheduler.step(pred, t, x, eta=eta, variance_noise=variance_noise).prev_sample
        return scheduler.step(pred, t, x).prev_sample


def max_sampler_steps(sampler: str) -> int:
    """The most sampling steps of ``sampler``: every training timestep (DDIM) or every one up to t = 980."""
    t = int(SCHEDULER_CONFIG["num_train_timesteps"])
    return t if sampler == "ddim" else min(MULTISTEP_FIRST_TIMESTEP, t - 1)


def training_alphas_cumprod(prediction_type: str) -> Any:
    """The schedule's ``alpha_bar`` per timestep (float32 tensor) for a network predicting ``prediction_type``.

    Raises ``ValueError`` unless ``prediction_type`` is ``'epsilon'`` (the papers) or ``'v_prediction'``.
    """
    import torch

    if prediction_type not in ("epsilon", "v_prediction"):
        msg = f"prediction_type={prediction_type!r}: choose 'epsilon' (the paper) or 'v_prediction'."
        raise ValueError(msg)
    return make_scheduler("ddpm", prediction_type=prediction_type).alphas_cumprod.to(torch.float32)
