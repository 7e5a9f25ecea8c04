"""The few-step samplers (DPM-Solver++ 2M, UniPC) beside DDIM: configuration, accuracy, the public argument.

Accuracy is checked on Gaussian data, where the optimal noise prediction is known in closed form: the
probability-flow ODE from noise at t = 980 then maps each noise vector to a known point, so a solver's
error is measured sample by sample, without Monte Carlo noise.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import morphomu as mm
from morphomu import MorphomuError
from morphomu._validation import check_args
from morphomu.models._phenoseq_checks import GENERATE_CHECKS
from morphomu.models._trident_checks import GENERATE_CHECKS as TRIDENT_GENERATE_CHECKS
from morphomu.models._trident_sampling import sample_latents
from morphomu.module._diffusion import (
    DEFAULT_N_STEPS,
    DEFAULT_SAMPLER,
    MULTISTEP_CONFIG,
    MULTISTEP_FIRST_TIMESTEP,
    PAPER_N_STEPS,
    PAPER_SAMPLER,
    SAMPLERS,
    make_scheduler,
    max_sampler_steps,
    sampler_scheduler,
    scheduler_step,
    training_alphas_cumprod,
)
from morphomu.module._trident import TRIDENT_PRESETS, TridentModule

SOLVERS = ("dpmsolver++", "unipc")


# ---------------------------------------------------------------------------------------------------
# the pinned configuration
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", SOLVERS)
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_pinned_configuration(kind, prediction_type):
    s = make_scheduler(kind, prediction_type=prediction_type)
    assert (
        type(s).__name__
        == {"dpmsolver++": "DPMSolverMultistepScheduler", "unipc": "UniPCMultistepScheduler"}[kind]
    )
    for key, value in MULTISTEP_CONFIG[kind].items():
        assert s.config[key] == value, key
    assert s.config.prediction_type == prediction_type
    assert s.config.num_train_timesteps == MULTISTEP_FIRST_TIMESTEP + 1 == 981
    assert s.config.use_exponential_sigmas and s.config.final_sigmas_type == "zero"
    assert not s.config.use_karras_sigmas and not s.config.thresholding
    if kind == "dpmsolver++":
        assert s.config.algorithm_type == "dpmsolver++" and s.config.solver_order == 2
        assert s.config.lambda_min_clipped == float("-inf")
    else:
        assert s.config.predict_x0 and s.config.solver_type == "bh2" and s.config.disable_corrector == []
    # the training schedule itself, truncated at t = 980
    np.testing.assert_allclose(
        s.alphas_cumprod.numpy(), training_alphas_cumprod(prediction_type)[:981].numpy(), rtol=1e-6
    )


def test_sampler_table_and_defaults():
    assert SAMPLERS == ("ddim", "dpmsolver++", "unipc")
    assert (PAPER_SAMPLER, PAPER_N_STEPS) == ("ddim", 50)
    assert max_sampler_steps("ddim") == 1000 and max_sampler_steps("unipc") == 980
    for family in ("phenoseq", "trident"):
        assert DEFAULT_SAMPLER[family] in SAMPLERS
        assert 1 <= DEFAULT_N_STEPS[family] <= max_sampler_steps(DEFAULT_SAMPLER[family])
    # the one place the defaults live: the signatures, tools and benchmark configurations read it
    import inspect

    for fn, family in (
        (mm.models.PhenoSeq.generate, "phenoseq"),
        (mm.models.MorphologyEmbedder.generate, "phenoseq"),
        (mm.models.Trident.generate, "trident"),
    ):
        params = inspect.signature(fn).parameters
        assert params["sampler"].default == DEFAULT_SAMPLER[family], fn
        assert params["n_steps"].default == DEFAULT_N_STEPS[family], fn
    from morphomu import benchmark

    rna, morph = benchmark.RnaBenchmarkConfig(), benchmark.MorphologyBenchmarkConfig()
    assert (rna.sampler, rna.n_steps) == (DEFAULT_SAMPLER["phenoseq"], DEFAULT_N_STEPS["phenoseq"])
    assert (morph.sampler, morph.n_steps) == (DEFAULT_SAMPLER["trident"], DEFAULT_N_STEPS["trident"])


@pytest.mark.parametrize("kind", SOLVERS)
@pytest.mark.parametrize("n_steps", [1, 5, 10, 20, 50])
def test_timesteps_start_at_980_and_end_on_zero_noise(kind, n_steps):
    s = make_scheduler(kind)
    s.set_timesteps(n_steps)
    t = s.timesteps.tolist()
    assert len(t) == n_steps and t[0] == 980
    assert t[-1] == (0 if n_steps > 1 else 980)  # one step: from t = 980 straight to the x0 estimate
    assert all(a >= b for a, b in zip(t, t[1:], strict=False))  # non-increasing
    sigmas = s.sigmas.numpy()
    assert sigmas[-1] == 0 and (np.diff(sigmas) < 0).all()  # distinct, decreasing noise levels
    # the first level is t = 980's, as DDIM-50's first step
    ab = training_alphas_cumprod("epsilon")[980].item()
    assert sigmas[0] == pytest.approx(((1 - ab) / ab) ** 0.5, rel=1e-5)


@pytest.mark.parametrize("kind", ["ddim", *SOLVERS])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_final_step_returns_the_x0_estimate(kind, prediction_type):
    """Whatever came before, the last step lands on the clean estimate of the network's last prediction."""
    torch.manual_seed(0)
    s = make_scheduler(kind, prediction_type=prediction_type)
    s.set_timesteps(8)
    x = torch.randn(16, 3)
    steps = s.timesteps.tolist()
    for t in steps[:-1]:
        x = scheduler_step(s, 0.5 * x + 0.1, t, x)  # any smooth prediction
    pred = torch.randn(16, 3)
    out = scheduler_step(s, pred, steps[-1], x)
    ab = training_alphas_cumprod(prediction_type)[steps[-1]]
    if prediction_type == "epsilon":
        x0 = (x - (1 - ab).sqrt() * pred) / ab.sqrt()
    else:
        x0 = ab.sqrt() * x - (1 - ab).sqrt() * pred
    torch.testing.assert_close(out, x0, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------------
# accuracy on Gaussian data with the exact noise predictor
# ---------------------------------------------------------------------------------------------------
MU = torch.tensor([2.0, -1.0, 0.5, 0.0, 1.0], dtype=torch.float64)
SD = torch.tensor([0.1, 0.3, 1.0, 1.5, 0.5], dtype=torch.float64)


def gaussian_predictor(prediction_type):
    """The optimal prediction for data x0 ~ N(MU, SD^2) (per dimension), as a network would output it."""
    ab_all = training_alphas_cumprod(prediction_type).double()

    def predict(x, t):
        ab, x = ab_all[t], x.double()
        var = ab * SD**2 + 1 - ab  # of x_t
        eps = (1 - ab).sqrt() * (x - ab.sqrt() * MU) / var
        if prediction_type == "epsilon":
            return eps.float()
        x0 = MU + ab.sqrt() * SD**2 * (x - ab.sqrt() * MU) / var
        return (ab.sqrt() * eps - (1 - ab).sqrt() * x0).float()

    return predict


def ode_solution(noise):
    """Where the probability-flow ODE takes noise at t = 980 (affine for Gaussian data)."""
    ab = training_alphas_cumprod("epsilon").double()[980]
    var = ab * SD**2 + 1 - ab
    return (MU + SD / var.sqrt() * (noise.double() - ab.sqrt() * MU)).float()


def solve(kind, n_steps, prediction_type, noise):
    predict = gaussian_predictor(prediction_type)
    s = sampler_scheduler(kind, prediction_type=prediction_type)
    s.set_timesteps(n_steps)
    x = noise
    for t in s.timesteps.tolist():
        x = scheduler_step(s, predict(x, t), t, x)
    return x


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_solvers_reach_the_gaussian_as_well_as_ddim50(prediction_type):
    torch.manual_seed(0)
    noise = torch.randn(4000, 5)
    exact = ode_solution(noise)
    # the data's own mean and spread, up to the share of signal left out by starting at t = 980
    np.testing.assert_allclose(exact.mean(0), MU, atol=0.06 * SD.max())
    np.testing.assert_allclose(exact.std(0), SD, rtol=0.05)

    def errors(x):
        mean_err = ((x.mean(0) - exact.mean(0)).abs() / SD).max().item()  # in data standard deviations
        std_err = (x.std(0) / exact.std(0) - 1).abs().max().item()  # relative
        return mean_err, std_err

    ddim = solve("ddim", 50, prediction_type, noise)
    ddim_mean, ddim_std = errors(ddim)
    assert ddim_mean < 0.02 and ddim_std < 0.13  # DDIM-50 itself: 12 % too narrow at SD = 0.1
    ddim_sample_err = ((ddim - exact).abs() / SD).mean()  # 0.04 SD per value
    for kind in SOLVERS:
        for n_steps in (10, 15, 20):
            x = solve(kind, n_steps, prediction_type, noise)
            mean_err, std_err = errors(x)
            assert mean_err < 0.02, (kind, n_steps, mean_err)
            assert std_err < 0.05, (kind, n_steps, std_err)  # measured <= 4.5 %
            assert std_err < ddim_std  # at least as good as DDIM-50 on every dimension's spread
            # and sample by sample: closer to where the exact ODE takes each noise vector
            assert ((x - exact).abs() / SD).mean() < ddim_sample_err, (kind, n_steps)
        # 20 steps: every value within 8 % of an SD of the exact solution (measured <= 6 %; DDIM-50: 46 %)
        x = solve(kind, 20, prediction_type, noise)
        assert ((x - exact).abs() / SD).max() < 0.08
    # fewer DDIM steps do not do this: DDIM-10 loses >10 % of the spread
    assert errors(solve("ddim", 10, prediction_type, noise))[1] > 0.1


def test_state_stays_float32_under_bf16_autocast():
    """The network may answer in bf16; the solver's state (and UniPC's einsum) stays in float32."""
    predict = gaussian_predictor("v_prediction")
    noise = torch.randn(64, 5)
    ref = solve("unipc", 10, "v_prediction", noise)
    for kind in SOLVERS:
        s = sampler_scheduler(kind, prediction_type="v_prediction")
        s.set_timesteps(10)
        x = noise
        with torch.autocast("cpu", dtype=torch.bfloat16):
            for t in s.timesteps.tolist():
                x = scheduler_step(s, predict(x, t).bfloat16(), t, x)
                assert x.dtype == torch.float32
        if kind == "unipc":  # only the bf16 rounding of the predictions: well under 1 % of an SD
            assert ((x - ref).abs() / SD.float()).max() < 0.05


def test_eta_refused_for_multistep_solvers():
    with pytest.raises(ValueError, match=r"eta=0\.5.*sampler='unipc'"):
        sampler_scheduler("unipc", prediction_type="epsilon", eta=0.5)
    with pytest.raises(ValueError, match="sampler='ddpm'"):
        sampler_scheduler("ddpm", prediction_type="epsilon")
    assert type(sampler_scheduler("ddim", prediction_type="epsilon", eta=1.0)).__name__ == "DDIMScheduler"


def test_generate_checks_refuse_before_any_work():
    with pytest.raises(MorphomuError, match=r"sampler='euler'.*'ddim', 'dpmsolver\+\+', 'unipc'"):
        check_args({"sampler": "euler"}, GENERATE_CHECKS)
    with pytest.raises(MorphomuError, match=r"n_steps=990: sampler='dpmsolver\+\+' takes at most 980"):
        check_args({"sampler": "dpmsolver++", "n_steps": 990}, GENERATE_CHECKS)
    with pytest.raises(MorphomuError, match=r"eta=0\.3: sampler='dpmsolver\+\+'"):
        check_args({"sampler": "dpmsolver++", "eta": 0.3}, GENERATE_CHECKS)
    with pytest.raises(MorphomuError, match="n_steps=990: sampler='unipc'"):
        check_args({"sampler": "unipc", "n_steps": 990}, TRIDENT_GENERATE_CHECKS)
    # DDIM keeps its 1000 steps and its eta; a value not given is the family's default
    check_args({"sampler": "ddim", "n_steps": 1000, "eta": 1.0}, GENERATE_CHECKS)
    if DEFAULT_SAMPLER["phenoseq"] != "ddim":
        with pytest.raises(MorphomuError, match="eta"):
            check_args({"eta": 0.3}, GENERATE_CHECKS)


# ---------------------------------------------------------------------------------------------------
# the public argument: PhenoSeq and the tools, Trident's sampling in batches
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained():
    mdata = mm.datasets.simulate_scgenescope(
        seed=1, n_img_cells=800, n_rna_cells=800, image_dim=20, rna_dim=10, effect_scale=3.0
    )
    mm.pp.assign_split(mdata)
    mm.models.PhenoSeq.setup_mudata(mdata)
    torch.manual_seed(0)
    model = mm.models.PhenoSeq(mdata, preset="tiny")
    model.train(max_epochs=3, batch_size=64, enable_progress_bar=False)
    return model, mdata


@pytest.mark.parametrize("sampler", SOLVERS)
def test_generate_with_a_solver_does_not_depend_on_batch_size(trained, sampler):
    model, mdata = trained
    samples = sorted(mdata["rna"].obs["sample"].astype(str).unique())[:4]
    kw = {"samples": samples, "sampler": sampler, "n_steps": 8, "seed": 3}
    ref = model.generate(**kw)
    for batch_size in (7, 1):
        np.testing.assert_allclose(model.generate(**kw, batch_size=batch_size).X, ref.X, atol=1e-5)
    one = model.generate(**{**kw, "samples": samples[2:3]}, batch_size=5)
    np.testing.assert_allclose(one.X, ref[one.obs_names].X, atol=1e-5)
    assert ref.uns["morphomu"]["generate"]["sampler"] == sampler
    assert ref.uns["morphomu"]["generate"]["n_steps"] == 8
    # the sampler reaches the loop: DDIM at the same steps lands elsewhere, DDIM-50 close by
    ddim = model.generate(**{**kw, "sampler": "ddim"})
    paper = model.generate(**{**kw, "sampler": "ddim", "n_steps": 50})
    assert np.abs(ddim.X - ref.X).mean() > 1e-4
    assert np.abs(ref.X - paper.X).mean() < np.abs(ddim.X - paper.X).mean()


def test_generate_refuses_bad_sampler_arguments(trained):
    model, mdata = trained
    with pytest.raises(MorphomuError, match="sampler='ddpm'"):
        model.generate(sampler="ddpm")
    with pytest.raises(MorphomuError, match=r"eta=0\.5: sampler='unipc'"):
        model.generate(sampler="unipc", eta=0.5)
    with pytest.raises(MorphomuError, match="n_steps=1000: sampler='unipc' takes at most 980"):
        model.generate(sampler="unipc", n_steps=1000)
    # the tools refuse before setting up or training a model
    fresh = mdata.copy()
    with pytest.raises(MorphomuError, match="sampler='heun'"):
        mm.tl.generate_rna(fresh, sampler="heun")
    with pytest.raises(MorphomuError, match="sampler='heun'"):
        mm.tl.generate_morphology(fresh, sampler="heun")
    with pytest.raises(MorphomuError, match="sampler='heun'"):
        mm.tl.generate_morphology(fresh, output="embedding", sampler="heun")
    assert "rna_synthetic" not in fresh.mod and "img_synthetic" not in fresh.mod
    assert sorted(fresh.uns) == sorted(mdata.uns)


def test_generate_rna_passes_the_sampler(trained):
    model, mdata = trained
    m = mdata.copy()
    mm.tl.generate_rna(m, model=model, sampler="unipc", n_steps=6, seed=2)
    direct = model.generate(m, sampler="unipc", n_steps=6, seed=2)
    np.testing.assert_array_equal(m["rna_synthetic"].X, direct.X)
    assert m.uns["morphomu"]["rna_synthetic"]["params"]["sampler"] == "unipc"
    assert m["rna_synthetic"].uns["morphomu"]["generate"]["sampler"] == "unipc"


def test_trident_sampling_in_batches_does_not_depend_on_batch_size():
    """Trident.generate's denoising (a fresh scheduler per batch) with a multistep solver."""
    torch.manual_seed(0)
    sizes = {**TRIDENT_PRESETS["tiny"], "n_hidden": 32, "n_latent": 8, "n_cond_hidden": 16}
    module = TridentModule(7, 5, 2, 4, 8, **sizes).eval()
    with torch.no_grad():  # leave the zero initialisation, so the prediction depends on every input
        for p in module.dit.parameters():
            p.normal_(std=0.3 if p.ndim > 1 else 0.1)
    drug = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
    g_pre = np.random.default_rng(1).normal(size=(1, 7)).astype(np.float32)
    kw = {"n_images": 5, "n_steps": 6, "guidance_scale": 1.0, "seed": 0}
    for sampler in SOLVERS:
        ref, _, _ = sample_latents(module, drug, g_pre, ["a", "b", "c"], sampler=sampler, batch_size=64, **kw)
        small, _, _ = sample_latents(
            module, drug, g_pre, ["a", "b", "c"], sampler=sampler, batch_size=4, **kw
        )
        np.testing.assert_allclose(small, ref, atol=1e-5)
        ddim, _, _ = sample_latents(module, drug, g_pre, ["a", "b", "c"], sampler="ddim", batch_size=64, **kw)
        assert np.abs(ddim - ref).mean() > 1e-4
