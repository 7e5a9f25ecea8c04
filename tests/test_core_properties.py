"""Behaviour of the core formulas and draws, checked against references and definitions.

Written against the slips a mutation run (``bash benchmarks/mutation.sh``) showed no test caught: the
forward process and the ``v`` target against diffusers, the diffusion and VAE losses against their
definitions, metrics against scikit-learn on class-imbalanced labels, ties in the fidelity rank, the
share of null-context items, and the cells behind every multi-profile input. Tiny data, one torch thread.
"""

from __future__ import annotations

import math
import sys
import warnings

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import sklearn.metrics
import torch
from torch.distributions import Normal, kl_divergence
from torch.nn import functional as F

import morphomu as mm
from morphomu.models._classifier import classification_metrics
from morphomu.module._diffusion import make_scheduler
from morphomu.module._phenoseq import PHENOSEQ_PRESETS, PhenoSeqModule
from morphomu.module._trident import TRIDENT_PRESETS, TridentModule
from morphomu.train._classifier import (
    ExampleSet,
    SamplePools,
    _Batches,
    balanced_accuracy_from_confusion,
    draw_offsets,
)
from morphomu.train._set_data import KeyedBatches, PairedSetDataModule


def set_chunk_rows(monkeypatch, module, n):
    """Make ``module`` read its rows in chunks of ``n`` (whatever the constant's name there)."""
    names = [name for name in ("CHUNK_ROWS", "_CHUNK_ROWS") if hasattr(module, name)]
    assert names, module
    for name in names:
        monkeypatch.setattr(module, name, n)


TIMESTEPS = torch.tensor([0, 1, 2, 37, 250, 500, 980, 998, 999])


def phenoseq(prediction_type="v_prediction", **kw):
    torch.manual_seed(0)
    sizes = {k: v for k, v in PHENOSEQ_PRESETS["tiny"].items() if k != "n_context_cells"}
    sizes.update({"n_hidden": 32, "n_time": 16, "prediction_type": prediction_type, **kw})
    return PhenoSeqModule(6, 5, **sizes).eval()


def trident(prediction_type="v_prediction", *, randomize=False, **kw):
    torch.manual_seed(0)
    sizes = {**TRIDENT_PRESETS["tiny"], "n_hidden": 32, "n_latent": 8, "n_cond_hidden": 16}
    sizes.update({"prediction_type": prediction_type, **kw})
    m = TridentModule(7, 5, 2, 4, 8, **sizes).eval()
    if randomize:  # leave the zero initialisation, so the prediction depends on every input
        with torch.no_grad():
            for p in m.dit.parameters():
                p.normal_(std=0.3 if p.ndim > 1 else 0.1)
    return m


def ddpm_reference(prediction_type, x0, noise, t):
    """diffusers' forward process and training target for the pinned schedule."""
    sched = make_scheduler("ddpm", prediction_type=prediction_type)
    x_t = sched.add_noise(x0, noise, t)
    target = noise if prediction_type == "epsilon" else sched.get_velocity(x0, noise, t)
    return x_t, target


# ---------------------------------------------------------------------------------------------------
# diffusion: forward process, targets and losses
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_forward_process_and_target_equal_diffusers(prediction_type):
    g = torch.Generator().manual_seed(0)
    n = len(TIMESTEPS)
    x0, noise = torch.randn(n, 5, generator=g) * 3 + 1, torch.randn(n, 5, generator=g)
    x_t, target = ddpm_reference(prediction_type, x0, noise, TIMESTEPS)
    m = phenoseq(prediction_type)
    np.testing.assert_allclose(m.add_noise(x0, noise, TIMESTEPS), x_t, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m.target(x0, noise, TIMESTEPS), target, rtol=1e-5, atol=1e-6)
    # Trident: the same schedule over image latents (b, C, h, w)
    lat0, lat_noise = torch.randn(n, 2, 4, 8, generator=g), torch.randn(n, 2, 4, 8, generator=g)
    lat_t, lat_target = ddpm_reference(prediction_type, lat0, lat_noise, TIMESTEPS)
    tm = trident(prediction_type)
    np.testing.assert_allclose(tm.add_noise(lat0, lat_noise, TIMESTEPS), lat_t, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tm.target(lat0, lat_noise, TIMESTEPS), lat_target, rtol=1e-5, atol=1e-6)
    # the sampler's schedule is the training schedule
    ddim = make_scheduler("ddim", prediction_type=prediction_type)
    assert ddim.config.prediction_type == prediction_type
    np.testing.assert_array_equal(ddim.alphas_cumprod.float(), m.alphas_cumprod)
    np.testing.assert_array_equal(ddim.alphas_cumprod.float(), tm.alphas_cumprod)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_phenoseq_loss_is_the_mse_of_the_prediction_of_the_noised_input(prediction_type):
    m = phenoseq(prediction_type, classifier_free=True)
    with torch.no_grad():
        m.null_context.normal_()
    g = torch.Generator().manual_seed(1)
    b = len(TIMESTEPS)
    batch = {
        "rna": torch.randn(b, 5, generator=g),
        "img": torch.randn(b, 3, 6, generator=g),
        "t": TIMESTEPS,
        "noise": torch.randn(b, 5, generator=g),
        "uncond": torch.arange(b) % 3 == 0,
    }
    with torch.no_grad():
        inference, generative, out = m(batch)
        x_t, target = ddpm_reference(prediction_type, batch["rna"], batch["noise"], batch["t"])
        # the null context replaces the whole imaging set of the flagged items, and only theirs
        encoded = m.encoder(batch["img"])
        context = inference["context"]
        flagged = batch["uncond"]
        np.testing.assert_allclose(context[~flagged], encoded[~flagged], atol=1e-6)
        np.testing.assert_allclose(context[flagged], m.null_context.expand(int(flagged.sum()), 3, -1))
        pred = m.denoise(x_t, batch["t"], context)
    np.testing.assert_allclose(generative["noise_pred"], pred, rtol=1e-4, atol=1e-6)
    expected = F.mse_loss(pred.double(), target.double())
    assert float(out.loss) == pytest.approx(float(expected), rel=1e-5)
    assert int(out.n_obs_minibatch) == b
    # without the flags every item is conditional
    with torch.no_grad():
        plain = m.inference(batch["img"])["context"]
    np.testing.assert_allclose(plain, encoded, atol=1e-6)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_trident_loss_is_ldm_mse_plus_negative_elbo_per_gene(prediction_type):
    beta, vae_weight = 0.7, 0.3
    m = trident(prediction_type, beta=beta, vae_weight=vae_weight, randomize=True)
    with torch.no_grad():
        m.null_condition.normal_()
    g = torch.Generator().manual_seed(2)
    b = len(TIMESTEPS)
    batch = {
        "drug": torch.randn(b, 5, generator=g),
        "g_pre": torch.randn(b, 7, generator=g),
        "g_post": torch.randn(b, 7, generator=g),
        "eps_z": torch.randn(b, 8, generator=g),
        "latent": torch.randn(b, 2, 4, 8, generator=g),
        "noise": torch.randn(b, 2, 4, 8, generator=g),
        "t": TIMESTEPS,
        "uncond": torch.arange(b) % 4 == 1,
    }
    with torch.no_grad():
        inference, generative, out = m(batch)
        mu, logvar = m.condition_vae.encode(batch["g_pre"], batch["drug"])
        z = mu + logvar.mul(0.5).exp() * batch["eps_z"]  # reparameterisation
        np.testing.assert_allclose(inference["cond"], z, atol=1e-6)
        cond = torch.where(batch["uncond"][:, None], m.null_condition, z)
        x_t, target = ddpm_reference(prediction_type, batch["latent"], batch["noise"], batch["t"])
        pred = m.dit(x_t, batch["t"], cond)
        np.testing.assert_allclose(generative["noise_pred"], pred, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(pred, m.dit(x_t, batch["t"], z), atol=1e-3)  # the null rows differ
        ldm = F.mse_loss(pred.double(), target.double())
        mean, g_logvar = m.condition_vae.decode(z)  # the decoder sees z, never the null condition
        nll = -Normal(mean.double(), g_logvar.double().mul(0.5).exp()).log_prob(batch["g_post"].double())
        kl = kl_divergence(Normal(mu.double(), logvar.double().mul(0.5).exp()), Normal(0.0, 1.0)).sum(-1)
        vae = ((nll.sum(-1) + beta * kl) / 7).mean()
    assert float(out.loss) == pytest.approx(float(ldm + vae_weight * vae), rel=1e-5)
    extra = out.extra_metrics
    assert float(extra["loss_ldm"]) == pytest.approx(float(ldm), rel=1e-5)
    assert float(extra["loss_vae"]) == pytest.approx(float(vae), rel=1e-5)
    assert float(extra["reconstruction"]) == pytest.approx(float(nll.sum(-1).mean() / 7), rel=1e-5)
    assert float(extra["kl"]) == pytest.approx(float(kl.mean()), rel=1e-5)
    expression_mse = float((batch["g_post"] - mean).square().mean())
    assert float(extra["expression_mse"]) == pytest.approx(expression_mse, rel=1e-5)
    assert int(out.n_obs_minibatch) == b
    # predict_expression: the decoder mean at the posterior mean
    with torch.no_grad():
        np.testing.assert_allclose(
            m.predict_expression(batch["drug"], batch["g_pre"]), m.condition_vae.decode(mu)[0], atol=1e-6
        )


def test_trident_without_rna_conditions_on_the_drug_embedding_only():
    m = trident(use_rna=False, classifier_free=False, randomize=True)
    g = torch.Generator().manual_seed(3)
    b = 4
    batch = {
        "drug": torch.randn(b, 5, generator=g),
        "latent": torch.randn(b, 2, 4, 8, generator=g),
        "noise": torch.randn(b, 2, 4, 8, generator=g),
        "t": torch.tensor([0, 10, 500, 999]),
        "uncond": torch.tensor([True, False, True, False]),  # no null condition: ignored
    }
    with torch.no_grad():
        inference, generative, out = m(batch)
        cond = m.drug_encoder(batch["drug"])
        np.testing.assert_allclose(inference["cond"], cond, atol=1e-6)
        assert inference["mu"] is None and inference["logvar"] is None
        x_t, target = ddpm_reference("v_prediction", batch["latent"], batch["noise"], batch["t"])
        pred = m.dit(x_t, batch["t"], cond)
    np.testing.assert_allclose(generative["noise_pred"], pred, rtol=1e-4, atol=1e-5)
    assert float(out.loss) == pytest.approx(float(F.mse_loss(pred.double(), target.double())), rel=1e-5)
    assert set(out.extra_metrics) == {"loss_ldm"}
    with pytest.raises(ValueError, match="use_rna=False"):
        m.predict_expression(batch["drug"], None)


def test_condition_vae_bounds_its_log_variances_and_nothing_else():
    m = trident()
    vae = m.condition_vae
    with torch.no_grad():
        vae.decoder[-1].weight.zero_()  # outputs = the last layer's bias
        vae.perturb_encoder[-1].weight.zero_()
        for bias_value in (100.0, -100.0):
            vae.decoder[-1].bias.fill_(bias_value)
            vae.perturb_encoder[-1].bias.fill_(bias_value * 2)
            mean, logvar = vae.decode(torch.zeros(3, 8))
            assert torch.all(logvar == (7.0 if bias_value > 0 else -7.0))
            assert torch.all(mean == bias_value)  # the mean half is not clamped
            mu, zlogvar = vae.encode(torch.zeros(3, 7), torch.zeros(3, 5))
            assert torch.all(zlogvar == (20.0 if bias_value > 0 else -30.0))
            assert torch.all(mu == 2 * bias_value)
        # inside the bounds the values pass unchanged
        vae.decoder[-1].bias.fill_(0.5)
        vae.perturb_encoder[-1].bias.fill_(-3.0)
        assert torch.all(vae.decode(torch.zeros(2, 8))[1] == 0.5)
        assert torch.all(vae.encode(torch.zeros(2, 7), torch.zeros(2, 5))[1] == -3.0)


def test_dit_condition_vector_and_tokens_carry_the_condition_and_the_time():
    m = trident()
    dit = m.dit
    g = torch.Generator().manual_seed(4)
    cond, t_emb = torch.randn(3, 8, generator=g), torch.randn(3, 32, generator=g)
    with torch.no_grad():
        vec, tokens = dit.condition(cond, t_emb)
        np.testing.assert_allclose(vec, dit.cond_embed(cond) + t_emb, atol=1e-6)
        expected = dit.cond_tokens(cond).view(3, dit.n_cond_tokens, dit.n_hidden) + t_emb[:, None]
        np.testing.assert_allclose(tokens, expected, atol=1e-6)
        assert tokens.shape == (3, 4, 32)
    adaln = trident(conditioning="adaln_zero").dit
    with torch.no_grad():
        vec, tokens = adaln.condition(cond, t_emb)
        np.testing.assert_allclose(vec, adaln.cond_embed(cond) + t_emb, atol=1e-6)
    assert tokens is None


@pytest.mark.parametrize("conditioning", ["cross_attention", "adaln_zero"])
def test_dit_forward_sees_position_time_and_condition(conditioning):
    m = trident(conditioning=conditioning)
    dit = m.dit
    for p in dit.parameters():  # leave the zero initialisation, so the output depends on every input
        torch.nn.init.normal_(p, std=0.3) if p.ndim > 1 else torch.nn.init.normal_(p, std=0.1)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 2, 4, 8, generator=g)
    t, cond = torch.tensor([3, 700]), torch.randn(2, 8, generator=g)
    with torch.no_grad():
        out = dit(x, t, cond)
        assert out.shape == x.shape
        # a batch is a set of independent items: each row's output is its own
        np.testing.assert_allclose(dit(x[1:], t[1:], cond[1:]), out[1:], rtol=1e-4, atol=1e-5)
        # positions matter: the same patches in another arrangement do not give the permuted output
        shifted = torch.roll(x, shifts=2, dims=3)
        assert not torch.allclose(dit(shifted, t, cond), torch.roll(out, shifts=2, dims=3), atol=1e-4)
        # the time of each item matters, for each item separately
        other_t = dit(x, torch.tensor([3, 20]), cond)
        np.testing.assert_allclose(other_t[0], out[0], rtol=1e-4, atol=1e-5)
        assert not torch.allclose(other_t[1], out[1], atol=1e-4)
        other_c = dit(x, t, torch.cat([cond[:1], torch.randn(1, 8, generator=g)]))
        np.testing.assert_allclose(other_c[0], out[0], rtol=1e-4, atol=1e-5)
        assert not torch.allclose(other_c[1], out[1], atol=1e-4)


def test_trident_null_condition_replaces_exactly_the_flagged_rows():
    m = trident()
    with torch.no_grad():
        m.null_condition.copy_(torch.arange(8.0))
    cond = torch.randn(5, 8)
    flags = torch.tensor([False, True, False, True, True])
    with torch.no_grad():
        out = m.apply_null(cond, flags)
    np.testing.assert_array_equal(out[flags], torch.arange(8.0).expand(3, 8))
    np.testing.assert_array_equal(out[~flags], cond[~flags])
    assert m.apply_null(cond, None) is cond
    with torch.no_grad():
        assert m.apply_null(cond.bfloat16(), flags).dtype == torch.bfloat16
    assert trident(classifier_free=False).apply_null(cond, flags) is cond


# ---------------------------------------------------------------------------------------------------
# metrics on class-imbalanced labels; ties in the fidelity rank
# ---------------------------------------------------------------------------------------------------
def imbalanced_labels(seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1, 2, 3], [120, 30, 9, 3])
    pred = np.where(rng.random(y.size) < 0.6, y, rng.integers(0, 4, y.size))
    pred[y == 0] = np.where(rng.random(120) < 0.9, 0, pred[y == 0])  # the big class is easy
    return y, pred


def test_classification_metrics_equal_sklearn_on_imbalanced_classes():
    y, pred = imbalanced_labels()
    got = classification_metrics(y, pred)
    assert got["balanced_accuracy"] == pytest.approx(sklearn.metrics.balanced_accuracy_score(y, pred))
    assert got["macro_f1"] == pytest.approx(sklearn.metrics.f1_score(y, pred, average="macro"))
    assert got["weighted_f1"] == pytest.approx(sklearn.metrics.f1_score(y, pred, average="weighted"))
    # the three differ from plain accuracy (and from each other) on these classes
    accuracy = sklearn.metrics.accuracy_score(y, pred)
    values = [got["balanced_accuracy"], got["macro_f1"], got["weighted_f1"], accuracy]
    assert len({round(v, 6) for v in values}) == 4
    # a predicted class absent from the truth: scikit-learn's warning is silenced, the value kept
    pred2 = pred.copy()
    pred2[:5] = 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got2 = classification_metrics(y, pred2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert got2["balanced_accuracy"] == pytest.approx(sklearn.metrics.balanced_accuracy_score(y, pred2))
    # the validation monitor computes the same balanced accuracy from a confusion matrix
    confusion = torch.bincount(torch.from_numpy(y * 4 + pred), minlength=16).reshape(4, 4)
    assert balanced_accuracy_from_confusion(confusion) == pytest.approx(got["balanced_accuracy"], abs=1e-12)
    assert math.isnan(balanced_accuracy_from_confusion(torch.zeros(4, 4, dtype=torch.int64)))


def test_validation_monitor_is_the_balanced_accuracy_of_the_validation_examples():
    from types import SimpleNamespace

    from morphomu.module._classifier import MLPClassifier
    from morphomu.train._classifier import ClassifierTrainingPlan

    class Fixed(MLPClassifier):
        """Predicts the class stored in the input's first column."""

        def logits(self, xs):
            return F.one_hot(xs[0][:, 0].long(), self.n_classes).float() + 0 * self.head.bias

    def epoch(plan, y, pred, *, sanity=False, number=0):
        plan._trainer = SimpleNamespace(
            world_size=1, sanity_checking=sanity, current_epoch=number, strategy=None
        )
        plan.on_validation_epoch_start()
        for start in range(0, len(y), 50):  # several batches accumulate one confusion matrix
            sl = slice(start, start + 50)
            x = torch.from_numpy(pred[sl])[:, None].float().repeat(1, 3)
            plan.validation_step({"x0": x, "y": torch.from_numpy(y[sl])}, 0)
        plan.on_validation_epoch_end()

    y, pred = imbalanced_labels(1)
    plan = ClassifierTrainingPlan(Fixed(3, 4, n_hidden=8, n_layers=1), lr=1e-3, weight_decay=0.0)
    logged = {}
    plan.log = lambda name, value, **kw: logged.__setitem__(name, value)
    expected = sklearn.metrics.balanced_accuracy_score(y, pred)
    epoch(plan, y, pred, sanity=True)
    np.testing.assert_array_equal(plan._confusion.numpy(), sklearn.metrics.confusion_matrix(y, pred))
    assert logged["validation_balanced_accuracy"] == pytest.approx(expected, abs=1e-12)
    assert plan.best_state is None and plan.best_epoch == -1  # the sanity check keeps nothing
    epoch(plan, y, pred, number=2)
    assert plan.best_score == pytest.approx(expected, abs=1e-12) and plan.best_epoch == 2
    assert set(plan.best_state) == set(plan.module.state_dict())
    worse = np.where(y == 1, 0, pred)  # misses every class-1 example: lower balanced accuracy
    epoch(plan, y, worse, number=3)
    assert logged["validation_balanced_accuracy"] < expected
    assert plan.best_epoch == 2 and plan.best_score == pytest.approx(expected, abs=1e-12)
    epoch(plan, y, y, number=4)  # perfect
    assert plan.best_epoch == 4 and plan.best_score == 1.0


def _fidelity_data(real, syn, conditions):
    def mod(x, prefix):
        obs = pd.DataFrame(
            {"treatment": pd.Categorical(conditions), "split": pd.Categorical(["test_we"] * len(x))},
            index=[f"{prefix}{i}" for i in range(len(x))],
        )
        a = ad.AnnData(obs=obs)
        a.obsm["X_scgpt"] = np.asarray(x, dtype=np.float32)
        return a

    return md.MuData({"rna": mod(real, "r"), "rna_synthetic": mod(syn, "s")})


def test_fidelity_rank_counts_ties_in_the_conditions_favour():
    # real centroids A and B coincide, C is orthogonal; synthetic A = B = their direction, C = C's
    real = [[1, 0], [1, 0], [0, 3]]
    syn = [[2, 0], [5, 0], [0, 1]]
    table = mm.tl.fidelity(_fidelity_data(real, syn, ["A", "B", "C"]), inplace=False, distributions=False)
    assert table["rank"].tolist() == [1, 1, 1]  # A and B tie with each other: both rank first
    # a tie with a third, different condition still ranks first; a strictly better one pushes down
    real = [[1, 0], [1, 1], [1, 0], [0, 1]]
    syn = [[1, 0], [0, 1], [1, 0], [1, 1]]
    table = mm.tl.fidelity(_fidelity_data(real, syn, list("ABCD")), inplace=False, distributions=False)
    # cos(s_A, r) = [1, .71, 1, 0]: tie with C -> 1; cos(s_B, r) = [0, .71, 0, 1]: D is nearer -> 2
    # cos(s_C, r) = cos(s_A, r) -> 1; cos(s_D, r) = [.71, 1, .71, .71]: B is nearer -> 2
    assert table["rank"].tolist() == [1, 2, 1, 2]
    h = 1 / math.sqrt(2)
    expected = [1 - (h + 1 + 0) / 3, h - (0 + 0 + 1) / 3, 1 - (1 + h + 0) / 3, h - (h + 1 + h) / 3]
    np.testing.assert_allclose(table["specificity"], expected, rtol=1e-6)


# ---------------------------------------------------------------------------------------------------
# PhenoSeq training draws
# ---------------------------------------------------------------------------------------------------
def set_datamodule(*, p_uncond=0.0, n_timesteps=1000, batch_size=16, n_train=60, counts=(5, 1, 9, 2)):
    rng = np.random.default_rng(0)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    img = torch.arange(offsets[-1], dtype=torch.float32)[:, None].repeat(1, 2)  # row id as feature
    n = n_train + 8
    return PairedSetDataModule(
        rna=torch.from_numpy(rng.normal(size=(n, 3)).astype(np.float32)),
        rna_sample=torch.from_numpy(rng.integers(0, len(counts), n)),
        train_rows=torch.arange(n_train),
        val_rows=torch.arange(n_train, n),
        img=img,
        img_offsets=torch.from_numpy(offsets),
        n_context_cells=6,
        batch_size=batch_size,
        n_timesteps=n_timesteps,
        p_uncond=p_uncond,
        seed=3,
    )


@pytest.mark.parametrize("p_uncond", [0.1, 0.5])
def test_null_context_share_equals_p_uncond(p_uncond):
    dm = set_datamodule(p_uncond=p_uncond, batch_size=64, n_train=640)
    flags = torch.cat([dm.train_set[(epoch, s)]["uncond"] for epoch in range(4) for s in range(10)])
    n = flags.numel()
    assert n == 2560
    share = flags.double().mean().item()
    assert abs(share - p_uncond) < 4 * math.sqrt(p_uncond * (1 - p_uncond) / n)
    # validation items draw flags too (their loss is the training objective)
    assert "uncond" in dm.val_set[(0, 0)]
    # without classifier-free training there are no flags at all
    assert "uncond" not in set_datamodule(p_uncond=0.0).train_set[(0, 0)]


def test_timesteps_and_context_cells_are_uniform_over_their_ranges():
    dm = set_datamodule(n_timesteps=5, batch_size=64, n_train=640)
    ds = dm.train_set
    batches = [ds[(epoch, s)] for epoch in range(3) for s in range(len(ds))]
    t = torch.cat([b["t"] for b in batches])
    assert int(t.min()) == 0 and int(t.max()) == 4
    freq = torch.bincount(t, minlength=5).double() / t.numel()
    np.testing.assert_allclose(freq, 0.2, atol=0.03)
    rows = torch.cat([b["img"][..., 0].long().flatten() for b in batches])
    samples = torch.cat([ds.rna_sample[b["index"]].repeat_interleave(6) for b in batches])
    offsets = ds.img_offsets
    for s in range(4):
        drawn = rows[samples == s]
        lo, hi = int(offsets[s]), int(offsets[s + 1])
        assert set(drawn.tolist()) == set(range(lo, hi))  # every cell of the sample, none of another
        freq = torch.bincount(drawn - lo, minlength=hi - lo).double() / drawn.numel()
        np.testing.assert_allclose(freq, 1 / (hi - lo), atol=0.05)
    # each item's RNA cell, noise of its width, draws that differ between items
    for b in batches[:3]:
        np.testing.assert_array_equal(b["rna"], ds.rna[b["index"]])
        assert b["noise"].shape == (64, 3) and b["img"].shape == (64, 6, 2)
    assert not torch.equal(batches[0]["noise"][0], batches[0]["noise"][1])


def test_set_datamodule_splits_and_refusals():
    dm = set_datamodule(batch_size=16, n_train=60)
    assert (dm.n_train, dm.n_val) == (60, 8)
    np.testing.assert_array_equal(dm.train_idx, np.arange(60))
    np.testing.assert_array_equal(dm.val_idx, np.arange(60, 68))
    assert len(dm.train_set) == 4 and len(dm.val_set) == 1
    assert dm.train_set.shuffle and not dm.val_set.shuffle
    val = dm.val_set[(0, 0)]
    assert sorted(set(val["index"].tolist())) == list(range(60, 68))  # validation: the val rows
    # one validation split, the same whatever the epoch; training differs between epochs
    np.testing.assert_array_equal(val["img"], dm.val_set[(7, 0)]["img"])
    assert not torch.equal(dm.train_set[(0, 0)]["img"], dm.train_set[(1, 0)]["img"])
    dm.set_rank(1, 2)
    assert (dm.train_set.rank, dm.train_set.world_size) == (1, 2)
    assert (dm.val_set.rank, dm.val_set.world_size) == (1, 2)
    common = {
        "rna": torch.zeros(3, 1),
        "rna_sample": torch.tensor([0, 1, 1]),
        "img": torch.zeros(2, 1),
        "img_offsets": torch.tensor([0, 1, 2]),
        "n_context_cells": 2,
        "batch_size": 2,
    }
    none_val = PairedSetDataModule(
        train_rows=torch.tensor([0, 1]), val_rows=torch.tensor([], dtype=torch.long), **common
    )
    assert none_val.val_set is None and none_val.val_dataloader() == []
    with pytest.raises(ValueError, match="no RNA cells"):
        PairedSetDataModule(
            train_rows=torch.tensor([], dtype=torch.long), val_rows=torch.tensor([0]), **common
        )
    lacking = {**common, "img_offsets": torch.tensor([0, 2, 2])}  # sample 1 has no imaging cells
    with pytest.raises(ValueError, match="no imaging"):
        PairedSetDataModule(train_rows=torch.tensor([0]), val_rows=torch.tensor([1]), **lacking)


def test_keyed_batches_weighted_order_and_unwrapped_last_batch():
    rows = torch.tensor([10, 11, 12, 13])
    weighted = KeyedBatches(
        rows, batch_size=100, seed=0, shuffle=True, stream=1, weights=torch.tensor([0.0, 1.0, 3.0, 0.0])
    )
    order = torch.cat([weighted.order(e) for e in range(200)])
    assert set(order.tolist()) == {11, 12}  # drawn in proportion to the weights, with replacement
    assert (order == 12).double().mean().item() == pytest.approx(0.75, abs=0.04)
    assert len(weighted.order(0)) == 4
    plain = KeyedBatches(torch.arange(10), batch_size=4, seed=0, shuffle=False, stream=1)
    assert len(plain) == 3
    assert plain.global_items(0, 2, wrap=False).tolist() == [8, 9]
    assert plain.global_items(0, 0, wrap=False).tolist() == [0, 1, 2, 3]
    assert plain.global_items(0, 2).tolist() == [8, 9, 0, 1]
    plain.world_size = 2
    assert len(plain) == 2 and plain.global_items(0, 1, wrap=False).tolist() == [8, 9]
    shuffled = KeyedBatches(torch.arange(10), batch_size=4, seed=0, shuffle=True, stream=1)
    assert sorted(shuffled.order(0).tolist()) == list(range(10))
    assert not torch.equal(shuffled.order(0), shuffled.order(1))
    np.testing.assert_array_equal(
        shuffled.order(0),
        KeyedBatches(torch.arange(10), batch_size=2, seed=0, shuffle=True, stream=1).order(0),
    )


# ---------------------------------------------------------------------------------------------------
# classifier examples: which cells every input holds
# ---------------------------------------------------------------------------------------------------
def one_hot_pools(counts_per_input, n_samples, seed=0):
    """Pools whose features are one-hot cell ids (a mean over k cells, times k, counts each cell)."""
    rng = np.random.default_rng(seed)
    pools, codes_per_input = [], []
    for counts in counts_per_input:
        codes = np.repeat(np.arange(n_samples), counts)
        codes = codes[rng.permutation(codes.size)]  # rows not grouped by sample
        data = torch.eye(codes.size, dtype=torch.float32)
        pools.append(SamplePools.build(data, np.arange(codes.size), codes, n_samples))
        codes_per_input.append(codes)
    return pools, codes_per_input


@pytest.mark.parametrize("anchor", [0, 1])
def test_multi_profile_inputs_are_means_of_k_distinct_cells_of_the_sample_for_every_modality(anchor):
    k = 4
    # per sample: many cells (>= 2k), few (k <= n < 2k), too few (< k: drawn with replacement)
    counts = [[20, 5, 3, 12], [9, 30, 2, 6], [4, 8, 11, 40]]
    pools, codes = one_hot_pools(counts, 4)
    anchor_rows = torch.arange(len(codes[anchor]))
    ex = ExampleSet(
        pools,
        anchor=anchor,
        anchor_rows=anchor_rows,
        example_samples=torch.from_numpy(codes[anchor]),
        sample_labels=torch.tensor([2, 0, 1, 2]),
        k=k,
    )
    g = torch.Generator().manual_seed(0)
    examples = torch.arange(len(ex))
    batch = ex.batch(examples, g)
    samples = torch.from_numpy(codes[anchor])
    np.testing.assert_array_equal(batch["y"], torch.tensor([2, 0, 1, 2])[samples])
    np.testing.assert_array_equal(ex.labels(examples[:5]), batch["y"][:5])
    for i, codes_i in enumerate(codes):
        drawn = batch[f"x{i}"] * k  # how often each cell of this modality was drawn
        np.testing.assert_allclose(drawn, drawn.round(), atol=1e-4)
        drawn = drawn.round().long()
        assert bool((drawn.sum(1) == k).all())
        owner = torch.from_numpy(codes_i)
        for e in range(len(ex)):
            cells = torch.nonzero(drawn[e]).squeeze(1)
            assert bool((owner[cells] == samples[e]).all())  # every cell of the example's sample
            if counts[i][int(samples[e])] >= k:
                assert bool((drawn[e] <= 1).all())  # k distinct cells
        if i == anchor:  # not the anchor cell alone: a population of its sample
            assert not bool((drawn.gather(1, anchor_rows[:, None]) == k).all())
    # populations are drawn per example: examples of one sample hold different cells
    pairs = [(a, b) for a in range(30) for b in range(a) if samples[a] == samples[b]]
    assert not all(torch.equal(batch["x2"][a], batch["x2"][b]) for a, b in pairs)


def test_single_profile_anchor_is_its_own_cell_and_other_inputs_one_cell_of_the_sample():
    pools, codes = one_hot_pools([[6, 6, 6], [4, 9, 2]], 3, seed=1)
    ex = ExampleSet(
        pools,
        anchor=0,
        anchor_rows=torch.arange(18),
        example_samples=torch.from_numpy(codes[0]),
        sample_labels=torch.arange(3),
        k=1,
    )
    g = torch.Generator().manual_seed(0)
    draws = [ex.batch(torch.arange(18), g) for _ in range(60)]
    np.testing.assert_array_equal(draws[0]["x0"], torch.eye(18))
    other = torch.stack([d["x1"].argmax(1) for d in draws])  # (draws, examples) cell ids
    owner = torch.from_numpy(codes[1])
    assert bool((owner[other] == torch.from_numpy(codes[0])).all())
    for s, n in enumerate([4, 9, 2]):
        seen = other[:, torch.from_numpy(codes[0]) == s].flatten()
        assert len(set(seen.tolist())) == n  # every cell of the sample can be drawn


def test_draw_offsets_are_uniform_distinct_subsets_on_every_path():
    g = torch.Generator().manual_seed(0)
    k = 3
    for count, n_rows in ((3, 50), (4, 3000), (5, 3000), (6, 3000), (40, 3000)):
        off = draw_offsets(torch.full((n_rows,), count), k, g)
        assert bool((off >= 0).all()) and bool((off < count).all())
        assert all(len(set(r)) == k for r in off.tolist())
        if count >= 4:  # every position with frequency k / count
            freq = torch.bincount(off.flatten(), minlength=count).double() / n_rows
            np.testing.assert_allclose(freq, k / count, atol=0.06)
    few = draw_offsets(torch.full((2000,), 2), k, g)  # fewer cells than k: with replacement
    assert set(few.flatten().tolist()) == {0, 1}
    assert (few[:, 0] == few[:, 1]).any() and (few[:, 0] != few[:, 1]).any()
    assert bool((draw_offsets(torch.tensor([7, 1, 3]), 1, g)[:, 0] < torch.tensor([7, 1, 3])).all())


def test_classifier_batches_visit_every_example_once_per_epoch():
    pools, codes = one_hot_pools([[5, 5, 5, 5]], 4)
    ex = ExampleSet(
        pools,
        anchor=0,
        anchor_rows=torch.arange(20),
        example_samples=torch.from_numpy(codes[0]),
        sample_labels=torch.arange(4),
        k=1,
    )
    train = _Batches(ex, batch_size=6, seed=0, shuffle=True, stream=11)
    assert len(train) == 4
    for epoch in (0, 1):
        seen = torch.cat([train[(epoch, s)]["x0"].argmax(1) for s in range(4)])
        assert sorted(seen.tolist()) == list(range(20))
    assert not torch.equal(train[(0, 0)]["x0"], train[(1, 0)]["x0"])
    longer = _Batches(ex, batch_size=10, seed=0, shuffle=True, stream=11, epoch_size=50)
    assert len(longer) == 5
    seen = torch.cat([longer[(0, s)]["x0"].argmax(1) for s in range(5)])
    assert torch.bincount(seen[:40], minlength=20).tolist() == [2] * 20  # whole reshuffles
    val = _Batches(ex, batch_size=8, seed=0, shuffle=False, stream=5)
    np.testing.assert_array_equal(val[(0, 1)]["x0"].argmax(1), torch.arange(8, 16))
    np.testing.assert_array_equal(val[(3, 1)]["x0"], val[(0, 1)]["x0"])
    val.rank, val.world_size = 1, 2
    assert len(val) == 2
    np.testing.assert_array_equal(val[(0, 0)]["x0"].argmax(1), torch.arange(1, 16, 2))


# ---------------------------------------------------------------------------------------------------
# PhenoSeq network: interface, caches, dtypes
# ---------------------------------------------------------------------------------------------------
def test_phenoseq_module_defaults_buffers_and_architecture():
    with torch.device("meta"):  # the defaults are the paper's network (Table 4); built without memory
        paper = PhenoSeqModule(6, 5)
    assert paper.prediction_type == "epsilon" and not paper.classifier_free
    assert paper.query[0].out_features == 1024 and len(paper.blocks) == 6
    assert paper.blocks[0].cross_attn.n_heads == 8 and paper.blocks[0].self_attn.n_heads == 8
    assert len(paper.encoder.layers) == 2 and paper.encoder.layers[0].attn.n_heads == 4
    assert paper.time_embed.mlp[0].in_features == 256
    assert paper.encoder.layers[0].ff.proj_in.out_features == 2 * 4 * 1024
    assert paper.encoder.proj[3].p == 0.1
    m = phenoseq("epsilon")
    assert (m.n_image_features, m.n_rna_features, m.prediction_type) == (6, 5, "epsilon")
    assert m.null_context is None and not m.classifier_free
    with pytest.raises(ValueError, match="p_uncond=0"):
        m.null_cache()
    state = m.state_dict()
    for name, n, value in (("image", 6, 0.0), ("rna", 5, 0.0)):
        np.testing.assert_array_equal(state[f"{name}_mean"], torch.full((n,), value))
        np.testing.assert_array_equal(state[f"{name}_std"], torch.ones(n))
    assert "alphas_cumprod" not in state  # the schedule is rebuilt, never saved
    kinds = [type(x).__name__ for x in m.query]
    assert kinds == ["Linear", "Mish", "LayerNorm"]
    assert [type(x).__name__ for x in m.head] == ["LayerNorm", "Linear", "Mish", "Linear"]
    # the last layer starts near zero: the first predictions are "no noise"
    x, t = torch.randn(8, 5), torch.randint(0, 1000, (8,))
    with torch.no_grad():
        out = m.denoise(x, t, m.encode_context(torch.randn(8, 3, 6)))
    assert float(out.abs().max()) < 0.05
    assert float(m.head[-1].bias.detach().abs().max()) == 0.0
    assert phenoseq(classifier_free=True).classifier_free


@pytest.mark.parametrize("n_context", [2, 5])
def test_cross_cache_of_context_sets_and_its_rows(n_context):
    m = phenoseq(classifier_free=True)
    g = torch.Generator().manual_seed(6)
    ctx = m.encode_context(torch.randn(4, n_context, 6, generator=g))
    x, t = torch.randn(4, 5, generator=g), 420
    with torch.no_grad():
        ref = m.denoise(x, torch.full((4,), t), ctx)
        np.testing.assert_allclose(m.denoise_cached(x, t, m.cross_cache(ctx)), ref, rtol=1e-4, atol=1e-5)
        rows = torch.tensor([2, 0, 2, 3])  # a subset, reordered and repeated
        taken = m.cross_cache(ctx).take(rows)
        np.testing.assert_allclose(
            m.denoise_cached(x, t, taken), m.denoise(x, torch.full((4,), t), ctx[rows]), rtol=1e-4, atol=1e-5
        )


def test_forward_process_keeps_the_input_dtype_and_float64_precision():
    g = torch.Generator().manual_seed(7)
    x0, noise = (
        torch.randn(len(TIMESTEPS), 5, generator=g).double(),
        torch.randn(len(TIMESTEPS), 5, generator=g).double(),
    )
    ab = make_scheduler("ddpm").alphas_cumprod.double()[TIMESTEPS][:, None]
    expected = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    expected_v = ab.sqrt() * noise - (1 - ab).sqrt() * x0
    m, tm = phenoseq(), trident()
    np.testing.assert_allclose(m.add_noise(x0, noise, TIMESTEPS), expected, rtol=1e-13)
    np.testing.assert_allclose(m.target(x0, noise, TIMESTEPS), expected_v, rtol=1e-12, atol=1e-14)
    lat0, lat_noise = x0[:, :4].reshape(-1, 1, 2, 2), noise[:, :4].reshape(-1, 1, 2, 2)
    np.testing.assert_allclose(
        tm.add_noise(lat0, lat_noise, TIMESTEPS).reshape(-1, 4), expected[:, :4], rtol=1e-13
    )
    np.testing.assert_allclose(
        tm.target(lat0, lat_noise, TIMESTEPS).reshape(-1, 4), expected_v[:, :4], rtol=1e-12, atol=1e-14
    )
    for dtype in (torch.bfloat16, torch.float16):
        assert m.add_noise(x0.to(dtype), noise.to(dtype), TIMESTEPS).dtype == dtype
        assert m.target(x0.to(dtype), noise.to(dtype), TIMESTEPS).dtype == dtype
        assert tm.add_noise(lat0.to(dtype), lat_noise.to(dtype), TIMESTEPS).dtype == dtype
        assert tm.target(lat0.to(dtype), lat_noise.to(dtype), TIMESTEPS).dtype == dtype


def test_null_context_keeps_the_autocast_dtype():
    m = phenoseq(classifier_free=True)
    img, flags = torch.randn(3, 2, 6), torch.tensor([True, False, True])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        plain = m.encode_context(img)
        mixed = m.encode_context(img, flags)
    assert plain.dtype == torch.bfloat16 and mixed.dtype == torch.bfloat16


# ---------------------------------------------------------------------------------------------------
# fidelity: inputs, splits, summary, distribution scores
# ---------------------------------------------------------------------------------------------------
def plain(d):
    """A stored parameter dict with arrays as lists (uns keeps lists as arrays)."""
    return {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in d.items()}


def _fidelity_mdata(real, syn, real_conditions, syn_conditions, *, real_splits=None, syn_splits=None):
    def mod(x, conditions, splits, prefix):
        obs = pd.DataFrame(
            {
                "treatment": pd.Categorical(conditions),
                "split": pd.Categorical(splits if splits is not None else ["test_we"] * len(x)),
            },
            index=[f"{prefix}{i}" for i in range(len(x))],
        )
        a = ad.AnnData(obs=obs)
        a.obsm["X_scgpt"] = np.asarray(x, dtype=np.float32)
        return a

    return md.MuData(
        {
            "rna": mod(real, real_conditions, real_splits, "r"),
            "rna_synthetic": mod(syn, syn_conditions, syn_splits, "s"),
        }
    )


def test_fidelity_reads_only_the_chosen_splits_on_both_sides():
    real = [[1, 0], [0, 1], [1, 1]]
    syn = [[1, 0], [0, 1], [1, 1], [-9, 9], [9, -9]]
    mdata = _fidelity_mdata(
        real,
        syn,
        ["A", "B", "C"],
        ["A", "B", "C", "A", "B"],
        syn_splits=["test_we", "test_we", "test_we", "train", "val"],
    )
    table = mm.tl.fidelity(mdata, splits="test_we", inplace=False, distributions=False)
    np.testing.assert_allclose(table["cosine"], 1.0, rtol=1e-6)  # the train / val cells are ignored
    assert table["n_synthetic"].tolist() == [1, 1, 1]
    pd.testing.assert_frame_equal(
        table, mm.tl.fidelity(mdata, splits=["test_we"], inplace=False, distributions=False)
    )
    every = mm.tl.fidelity(mdata, splits=None, inplace=False, distributions=False)
    assert every["n_synthetic"].tolist() == [2, 2, 1]
    assert every["rank"].dtype == np.int64 and table["rank"].dtype == np.int64


def test_fidelity_on_sparse_x_and_dataframe_obsm_with_two_conditions():
    from scipy import sparse

    real = np.array([[1.0, 0, 0], [0, 2, 0], [2, 0, 0], [0, 1, 0]])
    syn = np.array([[3.0, 0, 1], [0, 1, 0]])
    mods = {}
    for name, x, labels in (("rna", real, ["A", "B", "A", "B"]), ("rna_synthetic", syn, ["A", "B"])):
        obs = pd.DataFrame(
            {"treatment": pd.Categorical(labels), "split": pd.Categorical(["test_we"] * len(x))},
            index=[f"{name}{i}" for i in range(len(x))],
        )
        a = ad.AnnData(sparse.csr_matrix(x.astype(np.float32)), obs=obs)
        a.var_names = [f"{name}_f{j}" for j in range(x.shape[1])]
        a.obsm["X_scgpt"] = x.astype(np.float32)
        a.obsm["X_df"] = pd.DataFrame(x * 2, index=a.obs_names)
        mods[name] = a
    mdata = md.MuData(mods)
    by_x = mm.tl.fidelity(mdata, rep=None, inplace=False)
    by_df = mm.tl.fidelity(mdata, rep="X_df", inplace=False)
    by_obsm = mm.tl.fidelity(mdata, rep="X_scgpt", inplace=False)
    np.testing.assert_allclose(by_x["cosine"], [3 / math.sqrt(10), 1.0], rtol=1e-6)
    assert by_x["rank"].tolist() == [1, 1]
    for other in (by_df, by_obsm):
        np.testing.assert_allclose(other["cosine"], by_x["cosine"], rtol=1e-6)
        np.testing.assert_allclose(
            other["energy"] / by_x["energy"], 2.0 if other is by_df else 1.0, rtol=1e-6
        )


def test_fidelity_zero_centroid_is_nan_without_warnings():
    mdata = _fidelity_mdata(
        [[1, 0], [0, 1], [1, 1]], [[1, 0], [1, 1], [-1, -1]], ["A", "B", "B"], ["A", "B", "B"]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = mm.tl.fidelity(mdata, inplace=False, distributions=False)
    assert np.isnan(table.loc["B", "cosine"]) and np.isnan(table.loc["B", "pearson"])
    assert table.loc["A", "cosine"] == pytest.approx(1.0)


def test_fidelity_summary_params_and_default_key():
    rng = np.random.default_rng(4)
    conds = list("ABCDEF")
    centres = rng.normal(size=(6, 5)) * 3
    real = np.repeat(centres, 3, axis=0) + rng.normal(size=(18, 5)) * 0.1
    syn = np.repeat(centres[[0, 2, 1, 3, 5, 4]], 3, axis=0)  # some conditions swapped
    labels = np.repeat(conds, 3).tolist()
    mdata = _fidelity_mdata(real, syn, labels, labels)
    assert mm.tl.fidelity(mdata, max_cells=2) is None
    entry = mdata.uns["morphomu"]["fidelity"]
    table, summary = entry["table"], entry["summary"]
    rank = table["rank"].to_numpy()
    assert summary == {
        "accuracy_at_1": pytest.approx(np.mean(rank == 1)),
        "mrr": pytest.approx(np.mean(1 / rank)),
        "n_rank_le_4": int((rank <= 4).sum()),
        "n_conditions": 6,
        "mean_specificity": pytest.approx(table["specificity"].mean()),
        "median_rank": pytest.approx(float(np.median(rank))),
        "mean_energy": pytest.approx(table["energy"].mean()),
        "mean_mmd": pytest.approx(table["mmd"].mean()),
    }
    assert plain(entry["params"]) == {
        "real": "rna",
        "synthetic": "rna_synthetic",
        "rep": "X_scgpt",
        "synthetic_rep": "X_scgpt",
        "treatment_key": "treatment",
        "splits": ["test_we"],  # 'test': the test labels present (this data has no test_he cells)
        "split_key": "split",
        "distributions": True,
        "max_cells": 2,
        "seed": 0,
        "bandwidth_rule": "median pairwise euclidean distance of the pooled cells",
    }
    assert list(entry["conditions"]) == conds and entry["bandwidth"].shape == (6,)
    # ranks of exactly 4 and 5 count on either side of n_rank_le_4
    real = np.eye(6)
    syn = real.copy()
    syn[0] = [0.1, 0.8, 0.7, 0.6, 0.5, 0.0]  # ranks 5th: B, C, D, E are nearer
    syn[1] = [0.7, 0.1, 0.0, 0.6, 0.5, 0.0]  # ranks 4th: A, D, E are nearer
    mdata = _fidelity_mdata(real, syn, conds, conds)
    mm.tl.fidelity(mdata, distributions=False, splits=None)
    table = mdata.uns["morphomu"]["fidelity"]["table"]
    assert table["rank"].tolist()[:2] == [5, 4]
    assert mdata.uns["morphomu"]["fidelity"]["summary"]["n_rank_le_4"] == 5
    assert np.isnan(mdata.uns["morphomu"]["fidelity"]["summary"]["mean_energy"])
    assert np.isnan(mdata.uns["morphomu"]["fidelity"]["summary"]["mean_mmd"])


def test_fidelity_max_cells_caps_the_distribution_cells_by_seed():
    rng = np.random.default_rng(5)
    labels = ["A"] * 12 + ["B"] * 12
    mdata = _fidelity_mdata(rng.normal(size=(24, 3)), rng.normal(size=(24, 3)) + 0.5, labels, labels)
    capped = mm.tl.fidelity(mdata, inplace=False, max_cells=4)
    pd.testing.assert_frame_equal(capped, mm.tl.fidelity(mdata, inplace=False, max_cells=4, seed=0))
    assert not np.allclose(
        capped["energy"], mm.tl.fidelity(mdata, inplace=False, max_cells=4, seed=1)["energy"]
    )
    full = mm.tl.fidelity(mdata, inplace=False, max_cells=None)
    assert not np.allclose(capped["energy"], full["energy"])
    pd.testing.assert_frame_equal(full, mm.tl.fidelity(mdata, inplace=False, max_cells=12))  # no cap reached
    np.testing.assert_allclose(capped["cosine"], full["cosine"])  # centroids use every cell
    mm.tl.fidelity(mdata, inplace=False, max_cells=2)  # the smallest cap
    with pytest.raises(mm.ContractError, match="max_cells"):
        mm.tl.fidelity(mdata, inplace=False, max_cells=1)


def test_subsample_draws_distinct_rows_keyed_by_seed_and_condition():
    from morphomu.tl._fidelity import _subsample

    rows = np.arange(100, 140)
    most = _subsample(rows, 35, seed=0, condition="A")
    assert len(set(most)) == 35  # without replacement
    a = _subsample(rows, 10, seed=0, condition="A")
    assert len(a) == 10 and len(set(a)) == 10 and set(a) <= set(rows)
    assert np.all(np.diff(a) > 0)
    np.testing.assert_array_equal(a, _subsample(rows, 10, seed=0, condition="A"))
    assert not np.array_equal(a, _subsample(rows, 10, seed=0, condition="B"))
    assert not np.array_equal(a, _subsample(rows, 10, seed=1, condition="A"))
    np.testing.assert_array_equal(_subsample(rows, None, seed=0, condition="A"), rows)
    np.testing.assert_array_equal(_subsample(rows, 40, seed=0, condition="A"), rows)
    counts = np.bincount(
        np.concatenate([_subsample(rows, 10, seed=s, condition="A") for s in range(400)]) - 100
    )
    np.testing.assert_allclose(counts / 400, 10 / 40, atol=0.08)  # every row equally likely


def test_fidelity_errors_name_the_argument():
    mdata = _fidelity_mdata([[1, 0], [0, 1]], [[1, 0], [0, 1]], ["A", "B"], ["A", "B"])
    with pytest.raises(mm.ContractError, match=r"^rep='X_nope'"):
        mm.tl.fidelity(mdata, rep="X_nope", synthetic_rep="X_scgpt")
    with pytest.raises(mm.ContractError, match=r"^synthetic_rep='X_nope'"):
        mm.tl.fidelity(mdata, synthetic_rep="X_nope")
    with pytest.raises(mm.ContractError, match=r"^real='nope'"):
        mm.tl.fidelity(mdata, real="nope")
    with pytest.raises(mm.ContractError, match=r"^synthetic='nope'"):
        mm.tl.fidelity(mdata, synthetic="nope")
    with pytest.raises(mm.ContractError, match=r"in splits \['test_we'\]"):
        mm.tl.fidelity(
            _fidelity_mdata([[1, 0], [0, 1]], [[1, 0], [0, 1]], ["A", "A"], ["A", "A"]), splits="test_we"
        )
    with pytest.raises(mm.ContractError, match=r"found \['A'\]\.$"):
        mm.tl.fidelity(
            _fidelity_mdata([[1, 0], [0, 1]], [[1, 0], [0, 1]], ["A", "A"], ["A", "A"]), splits=None
        )


def test_distribution_scores_are_float64_exact_and_use_the_median_bandwidth():
    import scipy.spatial.distance as ssd

    from morphomu.tl._fidelity import distribution_scores

    rng = np.random.default_rng(6)
    x = (rng.normal(size=(30, 64)) + 1e3).astype(np.float32)  # a large offset: Gram round-off shows
    y = (rng.normal(size=(25, 64)) * 1.5 + 1e3).astype(np.float32)
    got = distribution_scores(x, y)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    energy = 2 * ssd.cdist(x64, y64).mean() - ssd.cdist(x64, x64).mean() - ssd.cdist(y64, y64).mean()
    assert got["energy"] == pytest.approx(energy, abs=1e-8)
    assert got == distribution_scores(x64, y64)  # float32 inputs are computed in float64
    assert got["bandwidth"] == pytest.approx(np.median(ssd.pdist(np.vstack([x64, y64]))), rel=1e-9)
    # a median distance below 1 is kept; a median of 0 (most points equal) falls back to 1
    small = distribution_scores(x64 / 1e4, y64 / 1e4)
    assert small["bandwidth"] == pytest.approx(got["bandwidth"] / 1e4, rel=1e-6)
    same = np.zeros((10, 2))
    same[0] = 1.0
    degenerate = distribution_scores(same, same)
    assert degenerate["bandwidth"] == 1.0 and degenerate["energy"] == 0.0 and degenerate["mmd"] == 0.0


# ---------------------------------------------------------------------------------------------------
# image metrics: edge cases of FID, KID and IS
# ---------------------------------------------------------------------------------------------------
def test_frechet_distance_on_two_samples_and_singular_covariances():
    import scipy.linalg

    from morphomu.tl._image_metrics import frechet_distance

    rng = np.random.default_rng(7)
    base = rng.normal(size=(200, 3))
    x = base @ rng.normal(size=(3, 8))  # rank-3 covariances in 8 dimensions: singular
    y = (base * 1.3 + 0.2) @ rng.normal(size=(3, 8))
    s_x, s_y = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    ref = (
        ((x.mean(0) - y.mean(0)) ** 2).sum()
        + np.trace(s_x + s_y)
        - 2 * np.trace(scipy.linalg.sqrtm(s_x @ s_y)).real
    )
    got = frechet_distance(x, y)
    assert np.isfinite(got) and got == pytest.approx(ref, rel=1e-6, abs=1e-9)
    two = frechet_distance(x[:2], y[:2])  # the fewest samples allowed
    assert np.isfinite(two)
    with pytest.raises(mm.ContractError, match="got 1 and 200"):
        frechet_distance(x[:1], y)
    with pytest.raises(mm.ContractError, match="got 200 and 1"):
        frechet_distance(x, y[:1])
    with pytest.raises(mm.ContractError, match=r"^y must be a 2-d"):
        frechet_distance(x, y[0])
    with_nan = x.copy()
    with_nan[3, 1] = np.nan
    with pytest.raises(mm.ContractError, match=r"^x has 1 non-finite"):
        frechet_distance(with_nan, y)


def _is_by_hand(p):
    marginal = p.mean(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.nansum(np.where(p > 0, p * np.log(p / marginal), 0.0), axis=1)
    return float(np.exp(kl.mean()))


def test_inception_score_splits_zeros_and_refusals():
    from morphomu.tl._image_metrics import inception_score

    rng = np.random.default_rng(8)
    logits = rng.normal(size=(30, 4)) * 2
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    p[:10] = np.eye(4)[rng.integers(0, 4, 10)]  # exact zeros
    for n_splits in (1, 2, 3):
        shuffled = p[np.random.default_rng(0).permutation(30)]
        scores = [_is_by_hand(part) for part in np.array_split(shuffled, n_splits)]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            mean, std = inception_score(p, n_splits=n_splits)
        assert mean == pytest.approx(np.mean(scores), rel=1e-10)
        assert std == pytest.approx(np.std(scores, ddof=1) if n_splits > 1 else 0.0, rel=1e-10, abs=1e-15)
    assert inception_score(p, n_splits=3) == inception_score(p, n_splits=3, seed=0)
    assert inception_score(p, n_splits=3) != inception_score(p, n_splits=3, seed=1)
    assert inception_score(p[:1]) == (1.0, 0.0)  # one image: p(y|x) = p(y)
    nearly = p.astype(np.float32)  # a float32 softmax sums to 1 within 1e-4
    nearly[:, 0] += 5e-5
    assert np.isfinite(inception_score(nearly)[0])
    bad = {
        "empty": np.zeros((0, 4)),
        "1-d": p[0],
        "negative": np.where(np.arange(4) == 0, -0.1, p),
        "sum": p * 1.5,
    }
    for probs in bad.values():
        with pytest.raises(mm.ContractError, match="probs"):
            inception_score(probs)
    for n_splits in (0, 2.5):
        with pytest.raises(mm.ContractError, match="n_splits"):
            inception_score(p, n_splits=n_splits)


def _unbiased_poly_mmd(x, y, *, gamma, coef, degree):
    k = lambda a, b: (gamma * a @ b.T + coef) ** degree  # noqa: E731
    m = len(x)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return within - 2 * kxy.mean()


def test_kernel_distance_kernel_subsets_and_refusals():
    from morphomu.tl._image_metrics import kernel_distance

    rng = np.random.default_rng(9)
    x, y = rng.normal(size=(12, 3)), rng.normal(size=(12, 3)) + 0.4
    # whole sets (subset_size = n): no draws, the unbiased MMD² of the kernel asked for
    for gamma, coef, degree in ((None, 1.0, 3), (0.5, 2.0, 2)):
        mean, std = kernel_distance(x, y, n_subsets=1, subset_size=12, gamma=gamma, coef=coef, degree=degree)
        expected = _unbiased_poly_mmd(x, y, gamma=1 / 3 if gamma is None else gamma, coef=coef, degree=degree)
        assert mean == pytest.approx(expected, rel=1e-10) and std == 0.0
    # subsets larger than the smaller set take half of it
    assert kernel_distance(x, y[:8], subset_size=50, n_subsets=5) == kernel_distance(
        x, y[:8], subset_size=4, n_subsets=5
    )
    assert kernel_distance(x[:5], y, subset_size=50, n_subsets=5) == kernel_distance(
        x[:5], y, subset_size=2, n_subsets=5
    )
    assert kernel_distance(x, y) == kernel_distance(x, y, n_subsets=100, subset_size=1000, seed=0)
    assert kernel_distance(x, y, n_subsets=1)[1] == 0.0
    with pytest.raises(mm.ContractError, match="got 1 and 12"):
        kernel_distance(x[:1], y)
    for name in ("n_subsets", "subset_size", "degree"):
        for value in (0, True, 2.0):
            with pytest.raises(mm.ContractError, match=f"^{name} must be a positive integer"):
                kernel_distance(x, y, **{name: value})
    with pytest.raises(mm.ContractError, match="subset_size must be at least 2"):
        kernel_distance(x, y, subset_size=1)
    assert np.isfinite(kernel_distance(x[:2], y[:2])[0])  # the fewest samples allowed
    with_nan = x.copy()
    with_nan[0, 0] = np.nan
    with pytest.raises(mm.ContractError, match="^x has 1 non-finite"):
        kernel_distance(with_nan, y)
    with pytest.raises(mm.ContractError, match="^y has 1 non-finite"):
        kernel_distance(x, with_nan)
    with pytest.raises(mm.ContractError, match="^y must be a 2-d"):
        kernel_distance(x, y[0])
    with pytest.raises(mm.ContractError, match="^x must be a 2-d"):
        kernel_distance(x[0], y)
    big_x, big_y = rng.normal(size=(1001, 2)), rng.normal(size=(1001, 2))  # default subsets: 1000 rows
    assert kernel_distance(big_x, big_y, n_subsets=2) == kernel_distance(
        big_x, big_y, n_subsets=2, subset_size=1000
    )


# ---------------------------------------------------------------------------------------------------
# classifier: draws on every path, keyed randomness, evaluation, validation monitor
# ---------------------------------------------------------------------------------------------------
def test_draw_offsets_fallback_k2_determinism_and_independent_rows():
    k = 3
    counts = torch.full((3000,), 6)  # 2k: the redraw path
    # max_rounds=0: every row still repeating goes to Floyd's algorithm, still uniform and distinct
    g = torch.Generator().manual_seed(1)
    off = draw_offsets(counts, k, g, max_rounds=0)
    assert torch.equal(off, draw_offsets(counts, k, torch.Generator().manual_seed(1), max_rounds=0))
    assert all(len(set(r)) == k for r in off.tolist()) and bool((off < 6).all())
    np.testing.assert_allclose(torch.bincount(off.flatten(), minlength=6) / 3000, 0.5, atol=0.05)
    srt = off.sort(1).values
    subsets = torch.bincount(srt[:, 0] * 36 + srt[:, 1] * 6 + srt[:, 2], minlength=216)
    subsets = subsets[subsets > 0].double() / 3000
    assert len(subsets) == 20  # every 3-subset of 6 positions, each about equally often
    np.testing.assert_allclose(subsets, 1 / 20, atol=0.02)
    for counts_k2 in (torch.full((2000,), 3), torch.full((2000,), 10)):
        two = draw_offsets(counts_k2, 2, torch.Generator().manual_seed(2))
        assert bool((two[:, 0] != two[:, 1]).all())
    a = draw_offsets(torch.tensor([50, 7, 4, 2] * 50), k, torch.Generator().manual_seed(3))
    b = draw_offsets(torch.tensor([50, 7, 4, 2] * 50), k, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)  # keyed by the generator alone
    rows = a[::4]  # the 50-cell rows: independent of each other
    assert len({tuple(r) for r in rows.tolist()}) > 40


def test_classifier_batches_are_keyed_by_seed_stream_epoch_and_step():
    pools, codes = one_hot_pools([[10, 10, 10], [10, 10, 10]], 3)
    ex = ExampleSet(
        pools,
        anchor=0,
        anchor_rows=torch.arange(30),
        example_samples=torch.from_numpy(codes[0]),
        sample_labels=torch.arange(3),
        k=3,
    )

    def draws(seed=0, stream=11, shuffle=True, epoch=0, step=0):
        return _Batches(ex, batch_size=30, seed=seed, shuffle=shuffle, stream=stream)[(epoch, step)]["x1"]

    ref = draws()
    assert torch.equal(ref, draws())  # reproducible
    for other in (draws(seed=1), draws(stream=12), draws(epoch=1)):
        assert not torch.equal(ref, other)
    one_pools, one_codes = one_hot_pools([[12], [12]], 1)  # one sample: a batch is its draws alone
    one = ExampleSet(
        one_pools,
        anchor=0,
        anchor_rows=torch.arange(12),
        example_samples=torch.zeros(12, dtype=torch.long),
        sample_labels=torch.zeros(1, dtype=torch.long),
        k=3,
    )
    steps = _Batches(one, batch_size=6, seed=0, shuffle=False, stream=5)
    assert not torch.equal(steps[(0, 0)]["x1"], steps[(0, 1)]["x1"])
    val = _Batches(ex, batch_size=30, seed=0, shuffle=False, stream=5)
    assert torch.equal(val[(0, 0)]["x1"], val[(4, 0)]["x1"])  # fixed validation draws
    with pytest.raises(ValueError, match="no cells"):
        empty = SamplePools.build(torch.eye(3), np.arange(3), np.array([0, 0, 2]), 3)
        empty.draw_rows(torch.tensor([1]), 2, torch.Generator())
    one = SamplePools.build(torch.eye(3), np.arange(3), np.array([0, 1, 1]), 2)
    assert one.draw_rows(torch.tensor([0, 0]), 2, torch.Generator()).tolist() == [[0, 0], [0, 0]]


@pytest.mark.parametrize("k", [2, 3])
def test_small_populations_are_means_over_k_cells(k):
    pools, codes = one_hot_pools([[2 * k, k + 1, 1]], 3)
    ex = ExampleSet(
        pools,
        anchor=0,
        anchor_rows=torch.arange(len(codes[0])),
        example_samples=torch.from_numpy(codes[0]),
        sample_labels=torch.arange(3),
        k=k,
    )
    drawn = (ex.batch(torch.arange(len(ex)), torch.Generator().manual_seed(0))["x0"] * k).round()
    assert bool((drawn.sum(1) == k).all())
    samples = torch.from_numpy(codes[0])
    assert bool((drawn[samples != 2] <= 1).all())  # distinct where the sample has k cells
    assert bool((drawn[samples == 2].max(1).values == k).all())  # a 1-cell sample: that cell k times


def test_balanced_accuracy_counts_classes_with_one_example():
    y = np.array([0, 0, 0, 0, 1, 1, 2])
    p = np.array([0, 0, 0, 1, 1, 0, 0])
    confusion = torch.bincount(torch.from_numpy(y * 3 + p), minlength=9).reshape(3, 3)
    expected = sklearn.metrics.balanced_accuracy_score(y, p)
    assert balanced_accuracy_from_confusion(confusion) == pytest.approx(expected)
    assert classification_metrics(y, p)["balanced_accuracy"] == pytest.approx(expected)


def classifier_mdata(seed=0):
    """Two modalities of four treatments with unequal cells per class, replicates of the canonical split."""
    rng = np.random.default_rng(seed)
    mods = {}
    for mod, d in (("img", 6), ("rna", 4)):
        centres = rng.normal(size=(4, d)) * 0.6
        rows = [
            (f"T{c}_r{r}", f"T{c}", r, rnd, c)
            for rnd, reps in ((1, (3, 4, 5)), (2, (1, 2)))
            for r in reps
            for c, n in enumerate((16, 8, 4, 3))
            for _ in range(n)
        ]
        obs = pd.DataFrame(rows, columns=["sample", "treatment", "replicate", "round", "code"])
        x = centres[obs.pop("code").to_numpy()] + rng.normal(size=(len(obs), d))
        obs.index = [f"{mod}{i}" for i in range(len(obs))]
        a = ad.AnnData(obs=obs)
        a.obsm["X"] = x.astype(np.float32)
        mods[mod] = a
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        mdata = md.MuData(mods)
    mm.pp.assign_split(mdata)
    return mdata


def test_evaluate_scores_each_split_of_the_given_data_with_the_given_seed():
    mdata = classifier_mdata()
    mm.models.TreatmentClassifier.setup_mudata(
        mdata, inputs=[("img", "X"), ("rna", "X")], target_key="treatment"
    )
    torch.manual_seed(0)
    model = mm.models.TreatmentClassifier(
        mdata, setting="multi", k=3, preset={"preset": "tiny", "max_epochs": 8, "batch_size": 32, "lr": 1e-2}
    )
    model.train(progress=False, accelerator="cpu", seed=0)
    other = classifier_mdata(seed=1)  # new data with the same layout
    scores = model.evaluate(other, splits=["test_he", "test_we"], seed=7, batch_size=5)
    assert scores.index.name == "split" and list(scores.index) == ["test_he", "test_we"]
    for split in ("test_he", "test_we"):
        pred = model.predict(other, split=split, seed=7)
        expected = classification_metrics(pred["true"].cat.codes, pred["predicted"].cat.codes)
        for key, value in expected.items():
            assert scores.loc[split, key] == pytest.approx(value)
        assert scores.loc[split, "n_examples"] == len(pred)
    assert not scores.equals(model.evaluate(splits=["test_he", "test_we"], seed=7))  # the model's own data
    assert not scores.equals(model.evaluate(other, splits=["test_he", "test_we"], seed=8))
    single = model.evaluate(other, splits="test_he", seed=7)
    pd.testing.assert_frame_equal(single, scores.loc[["test_he"]])


def test_validation_monitor_sums_confusions_over_devices_and_keeps_a_copy_of_the_best_weights():
    from types import SimpleNamespace

    from morphomu.module._classifier import MLPClassifier
    from morphomu.train._classifier import ClassifierTrainingPlan

    class Fixed(MLPClassifier):
        def logits(self, xs):
            return F.one_hot(xs[0][:, 0].long(), self.n_classes).float() + 0 * self.head.bias

    class TwoDevices:
        """The other device saw the same examples and classified them all correctly."""

        def reduce(self, tensor, reduce_op):
            assert reduce_op == "sum"
            return tensor + torch.diag(torch.bincount(torch.from_numpy(y), minlength=4))

    y, pred = imbalanced_labels(2)
    plan = ClassifierTrainingPlan(Fixed(3, 4, n_hidden=8, n_layers=1), lr=1e-3, weight_decay=0.0)
    logged = {}
    plan.log = lambda name, value, **kw: logged.__setitem__(name, value)

    def epoch(number, predictions, world_size=2):
        plan._trainer = SimpleNamespace(
            world_size=world_size, sanity_checking=False, current_epoch=number, strategy=TwoDevices()
        )
        plan.on_validation_epoch_start()
        x = torch.from_numpy(predictions)[:, None].float().repeat(1, 3)
        plan.validation_step({"x0": x, "y": torch.from_numpy(y)}, 0)
        plan.on_validation_epoch_end()

    # the balanced accuracy of both devices' examples together
    epoch(1, pred)
    expected = sklearn.metrics.balanced_accuracy_score(np.concatenate([y, y]), np.concatenate([pred, y]))
    assert logged["validation_balanced_accuracy"] == pytest.approx(expected, abs=1e-12)
    best = {k: v.clone() for k, v in plan.best_state.items()}
    with torch.no_grad():
        plan.module.head.bias.add_(1.0)  # training goes on: the kept weights must not move
    for k, v in plan.best_state.items():
        assert torch.equal(v, best[k])
        assert v.device.type == "cpu"
    epoch(2, pred)  # a tie does not replace the earlier best
    assert plan.best_epoch == 1
    # with one device nothing is reduced (no strategy needed)
    plan._trainer = SimpleNamespace(world_size=1, sanity_checking=False, current_epoch=3, strategy=None)
    plan.on_validation_epoch_start()
    plan.validation_step({"x0": torch.from_numpy(y)[:, None].float(), "y": torch.from_numpy(y)}, 0)
    plan.on_validation_epoch_end()
    assert plan.best_epoch == 3 and plan.best_score == 1.0


# ---------------------------------------------------------------------------------------------------
# PhenoSeq draws: keyed randomness and defaults
# ---------------------------------------------------------------------------------------------------
def test_set_batches_are_keyed_by_seed_stream_epoch_and_step():
    def dm(seed=3, **kw):
        rng = np.random.default_rng(0)
        n = 40
        return PairedSetDataModule(
            rna=torch.from_numpy(rng.normal(size=(n, 3)).astype(np.float32)),
            rna_sample=torch.from_numpy(rng.integers(0, 3, n)),
            train_rows=torch.arange(20),
            val_rows=torch.arange(20, 40),
            img=torch.arange(12.0)[:, None],
            img_offsets=torch.tensor([0, 4, 9, 12]),
            n_context_cells=3,
            batch_size=20,
            p_uncond=0.5,
            seed=seed,
            **kw,
        )

    a = dm()
    ref = a.train_set[(0, 0)]
    again = dm().train_set[(0, 0)]
    for key in ref:
        np.testing.assert_array_equal(ref[key], again[key])  # reproducible
    assert not torch.equal(ref["noise"], dm(seed=4).train_set[(0, 0)]["noise"])
    assert not torch.equal(ref["noise"], a.train_set[(1, 0)]["noise"])
    assert not torch.equal(ref["noise"], a.val_set[(0, 0)]["noise"])  # train and validation streams
    small = dm()
    small.train_set.batch_size = 10
    assert not torch.equal(small.train_set[(0, 0)]["noise"], small.train_set[(0, 1)]["noise"])
    # defaults: 1000 timesteps, no null context, seed 0, loading in this process
    rng = np.random.default_rng(0)
    plain = PairedSetDataModule(
        rna=torch.zeros(2000, 1),
        rna_sample=torch.zeros(2000, dtype=torch.long),
        train_rows=torch.arange(2000),
        val_rows=torch.tensor([], dtype=torch.long),
        img=torch.zeros(1, 1),
        img_offsets=torch.tensor([0, 1]),
        n_context_cells=1,
        batch_size=1000,
    )
    t = torch.cat([plain.train_set[(e, s)]["t"] for e in range(10) for s in range(2)])
    assert int(t.min()) == 0 and int(t.max()) == 999
    assert "uncond" not in plain.train_set[(0, 0)]
    assert plain.train_set.seed == 0 and plain.num_workers == 0
    assert plain.test_idx.dtype == np.int64 and plain.test_idx.size == 0
    one = PairedSetDataModule(
        rna=torch.zeros(2, 1),
        rna_sample=torch.zeros(2, dtype=torch.long),
        train_rows=torch.tensor([0]),
        val_rows=torch.tensor([1]),
        img=torch.zeros(1, 1),
        img_offsets=torch.tensor([0, 1]),
        n_context_cells=1,
        batch_size=4,
    )
    assert one.n_train == 1 and len(one.train_set[(0, 0)]["index"]) == 4  # wraps to a full batch
    del rng


def test_keyed_batches_weighted_order_is_reproducible():
    w = torch.tensor([1.0, 0.0, 2.0, 1.0])
    a = KeyedBatches(torch.arange(4), batch_size=2, seed=0, shuffle=True, stream=1, weights=w)
    b = KeyedBatches(torch.arange(4), batch_size=2, seed=0, shuffle=True, stream=1, weights=w)
    assert torch.equal(a.order(3), b.order(3))
    assert not torch.equal(
        torch.cat([a.order(e) for e in range(5)]),
        torch.cat(
            [
                KeyedBatches(torch.arange(4), batch_size=2, seed=1, shuffle=True, stream=1, weights=w).order(
                    e
                )
                for e in range(5)
            ]
        ),
    )
    assert not torch.equal(
        torch.cat([a.order(e) for e in range(5)]),
        torch.cat(
            [
                KeyedBatches(torch.arange(4), batch_size=2, seed=0, shuffle=True, stream=2, weights=w).order(
                    e
                )
                for e in range(5)
            ]
        ),
    )
    assert not torch.equal(
        torch.cat([a.order(e) for e in range(0, 10, 2)]), torch.cat([a.order(e) for e in range(1, 10, 2)])
    )


# ---------------------------------------------------------------------------------------------------
# split and standardisation: contracts around the core statistics
# ---------------------------------------------------------------------------------------------------
def split_mdata(rounds=(1, 1, 1, 2), replicates=(3, 4, 5, 1)):
    obs = pd.DataFrame(
        {
            "round": [r for r in rounds for _ in range(2)],
            "replicate": [p for p in replicates for _ in range(2)],
        },
        index=[f"c{i}" for i in range(2 * len(rounds))],
    )
    a = ad.AnnData(obs=obs)
    a.obsm["X"] = np.zeros((a.n_obs, 1), dtype=np.float32)
    return md.MuData({"img": a})


def test_assign_split_contract():
    mdata = split_mdata()
    assert mm.pp.assign_split(mdata) is None
    assert (
        mdata["img"].obs["split"].tolist() == ["train"] * 2 + ["test_we"] * 2 + ["val"] * 2 + ["test_he"] * 2
    )
    entry = dict(mdata.uns["morphomu"]["split"])
    assert entry.pop("tool") == "assign_split"
    entry["params"] = plain(entry["params"])
    assert {k: plain(v) if isinstance(v, dict) else v.tolist() for k, v in entry.items()} == {
        "params": {
            "scheme": "scgenescope",
            "fold": 1,
            "by": "None",
            "mods": ["img"],
            "replicate_key": "replicate",
            "round_key": "round",
            "key_added": "split",
        },
        "test_splits": ["test_we", "test_he"],
        "replicates": {"train": 3, "val": 5, "test_we": 4, "test_he_round": 2},
    }
    bad = split_mdata(replicates=(3, 4, 5.5, 1))
    with pytest.raises(
        mm.ContractError, match=r"^mdata.mod\['img'\].obs\['replicate'\] \(replicate_key\) must hold whole"
    ):
        mm.pp.assign_split(bad)
    bad = split_mdata(rounds=(1, 1, 1, 2.5))
    with pytest.raises(
        mm.ContractError, match=r"^mdata.mod\['img'\].obs\['round'\] \(round_key\) must hold whole"
    ):
        mm.pp.assign_split(bad)
    missing = split_mdata(rounds=(1, 1, 2), replicates=(3, 4, 1))
    with pytest.raises(mm.ContractError, match=r"it has \[\(1, 3\), \(1, 4\), \(2, 1\)\]\.$"):
        mm.pp.assign_split(missing)
    mdata["img"].obs["batch"] = mdata["img"].obs["round"]
    with pytest.raises(mm.ContractError, match="^round_key='rnd' is not a column"):
        mm.pp.assign_split(mdata, mods="img", round_key="rnd")
    with pytest.raises(mm.ContractError, match="^replicate_key='rep' is not a column"):
        mm.pp.assign_split(mdata, mods="img", replicate_key="rep")


def test_standardize_contract_dtypes_masks_and_chunks(monkeypatch):
    from morphomu.pp._standardize import Standardizer

    rng = np.random.default_rng(10)
    x = rng.normal(size=(11, 3)) * [1.0, 5.0, 0.0] + [2.0, -1.0, 4.0]
    rows = np.array([0, 2, 3, 5, 7, 8, 10])
    mask = np.isin(np.arange(11), rows)
    ref = Standardizer.fit(x, rows)
    np.testing.assert_allclose(ref.mean, x[rows].mean(0), rtol=1e-6)
    np.testing.assert_allclose(ref.std, np.where(x[rows].std(0) > 0, x[rows].std(0), 1.0), rtol=1e-5)
    assert ref.mean.dtype == np.float32 and ref.std.dtype == np.float32
    by_mask = Standardizer.fit(x, mask)
    np.testing.assert_array_equal(by_mask.mean, ref.mean)
    set_chunk_rows(monkeypatch, sys.modules[Standardizer.__module__], 2)  # several chunks accumulate
    chunked = Standardizer.fit(x, rows)
    np.testing.assert_allclose(chunked.mean, ref.mean, rtol=1e-6)
    np.testing.assert_allclose(chunked.std, ref.std, rtol=1e-6)
    single = Standardizer.fit(x, [4])  # one cell: centred, unit scale
    np.testing.assert_allclose(single.mean, x[4], rtol=1e-6)
    np.testing.assert_array_equal(single.std, 1.0)
    assert ref.transform(x).dtype == np.float32 and ref.inverse_transform(x).dtype == np.float32
    loaded = Standardizer.from_dict({"mean": [1.0, 2.0], "std": [2.0, 4.0]})
    assert loaded.mean.dtype == np.float32 and loaded.std.dtype == np.float32
    # standardize: float32 output, statistics of the fit_on splits, None returned, parameters kept
    obs = pd.DataFrame({"split": ["train", "val", "test_we"] * 4}, index=[f"c{i}" for i in range(12)])
    a = ad.AnnData(obs=obs)
    a.obsm["X_e"] = rng.normal(size=(12, 2)) * 3  # float64 input
    mdata = md.MuData({"img": a})
    assert mm.pp.standardize(mdata, mod="img", rep="X_e", fit_on=["train", "val"]) is None
    z = mdata["img"].obsm["X_e_std"]
    assert z.dtype == np.float32
    fit = np.isin(obs["split"], ["train", "val"])
    np.testing.assert_allclose(z[fit].mean(0), 0.0, atol=1e-5)
    entry = mdata.uns["morphomu"]["X_e_std"]
    assert plain(entry["params"]) == {
        "mod": "img",
        "rep": "X_e",
        "split_key": "split",
        "fit_on": ["train", "val"],
    }
    assert entry["n_fit"] == 8
    back = mm.pp.destandardize(mdata, z.astype(np.float64), key="X_e_std")
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, a.obsm["X_e"], rtol=1e-4, atol=1e-4)
    mm.pp.standardize(mdata, mod="img", rep="X_e", fit_on="train", key_added="X_t")
    assert mdata.uns["morphomu"]["X_t"]["params"]["fit_on"] == "train"
    with pytest.raises(
        mm.ContractError, match=r"^fit_on='nope': no cells of .*found \['test_we', 'train', 'val'\]"
    ):
        mm.pp.standardize(mdata, mod="img", rep="X_e", fit_on="nope")
    with pytest.raises(mm.ContractError, match=r"^split_key='nope' is not a column of mdata.mod\['img'\]"):
        mm.pp.standardize(mdata, mod="img", rep="X_e", split_key="nope")


def test_destandardize_refuses_what_it_cannot_map_back():
    obs = pd.DataFrame({"split": ["train"] * 4}, index=[f"c{i}" for i in range(4)])
    a = ad.AnnData(obs=obs)
    a.obsm["X_e"] = np.arange(12, dtype=np.float32).reshape(4, 3)
    mm.pp.standardize(a, mod=None, rep="X_e")
    ok = mm.pp.destandardize(a, np.zeros((2, 3), dtype=bool), key="X_e_std")  # booleans are numbers
    np.testing.assert_allclose(ok[0], a.obsm["X_e"].mean(0))
    for values, match in (
        (np.array([["1", "2", "3"]]), "numeric"),
        (np.zeros((2, 4)), r"shape \(n, 3\)"),
        (np.zeros(3), r"shape \(n, 3\)"),
    ):
        with pytest.raises(mm.ContractError, match=match):
            mm.pp.destandardize(a, values, key="X_e_std")
    entries = a.uns["morphomu"]
    entries["no_std"] = {"mean": np.zeros(3)}
    entries["two_d"] = {"mean": np.zeros((1, 3)), "std": np.ones((1, 3))}
    entries["lengths"] = {"mean": np.zeros(3), "std": np.ones(2)}
    for key in ("no_std", "two_d", "lengths"):
        with pytest.raises(mm.ContractError, match="is not a standardisation entry"):
            mm.pp.destandardize(a, np.zeros((1, 3)), key=key)


def test_dataframe_representations_are_read_by_row_position():
    """An .obsm DataFrame: rows are cells, selected by position (not its columns by label)."""
    from morphomu.pp._standardize import Standardizer

    values = np.arange(12.0).reshape(4, 3)
    df = pd.DataFrame(values, index=list("abcd"))  # integer column labels 0, 1, 2
    np.testing.assert_allclose(Standardizer.fit(df, np.array([0, 1])).mean, values[:2].mean(0))
    a = ad.AnnData(obs=pd.DataFrame({"split": ["train", "train", "val", "val"]}, index=list("abcd")))
    a.obsm["X_df"] = df
    mm.pp.standardize(a, mod=None, rep="X_df")
    np.testing.assert_allclose(a.uns["morphomu"]["X_df_std"]["mean"], values[:2].mean(0))
    np.testing.assert_allclose(a.obsm["X_df_std"][:2].mean(0), 0.0, atol=1e-6)


def test_fidelity_distribution_cells_per_side_chunked_centroids_and_defaults(monkeypatch):
    import morphomu.tl._fidelity as fidelity_module
    from morphomu.tl._fidelity import _subsample, distribution_scores

    rng = np.random.default_rng(11)
    real, syn = rng.normal(size=(30, 3)), rng.normal(size=(26, 3)) + 0.3
    real_labels, syn_labels = ["A"] * 18 + ["B"] * 12, ["A"] * 10 + ["B"] * 16
    mdata = _fidelity_mdata(real, syn, real_labels, syn_labels)
    table = mm.tl.fidelity(mdata, inplace=False, max_cells=5, seed=3)
    for cond, (r_rows, s_rows) in {
        "A": (np.arange(18), np.arange(10)),
        "B": (np.arange(18, 30), np.arange(10, 26)),
    }.items():
        xr = real[_subsample(r_rows, 5, seed=3, condition=cond)].astype(np.float32)
        xs = syn[_subsample(s_rows, 5, seed=3, condition=cond)].astype(np.float32)
        assert table.loc[cond, "energy"] == pytest.approx(distribution_scores(xr, xs)["energy"], rel=1e-9)
    # centroids accumulated in chunks equal the unchunked ones
    set_chunk_rows(monkeypatch, fidelity_module, 4)
    pd.testing.assert_frame_equal(mm.tl.fidelity(mdata, inplace=False, max_cells=5, seed=3), table)
    monkeypatch.undo()
    # no distributions: NaN summaries, without warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mm.tl.fidelity(mdata, distributions=False)
    summary = mdata.uns["morphomu"]["fidelity"]["summary"]
    assert np.isnan(summary["mean_energy"]) and np.isnan(summary["mean_mmd"])
    # the default cap is 1000 cells per side
    big = _fidelity_mdata(
        rng.normal(size=(1003, 2)),
        rng.normal(size=(1003, 2)),
        ["A"] * 1001 + ["B"] * 2,
        ["A"] * 1001 + ["B"] * 2,
    )
    default = mm.tl.fidelity(big, inplace=False)
    pd.testing.assert_frame_equal(default, mm.tl.fidelity(big, inplace=False, max_cells=1000))
    assert default.loc["A", "energy"] != mm.tl.fidelity(big, inplace=False, max_cells=None).loc["A", "energy"]
    with pytest.raises(mm.ContractError, match=r"obs\['treatment'\]; found \['A'\]"):
        mm.tl.fidelity(
            _fidelity_mdata([[1, 0], [0, 1]], [[1, 0], [0, 1]], ["A", "A"], ["A", "A"]), splits=None
        )


def test_sample_pools_average_through_an_out_of_memory_source():
    class Source:
        """A stand-in for a disk cache: it averages the rows it is given."""

        def __init__(self, data):
            self.data, self.calls = data, []

        def mean_of(self, rows):
            self.calls.append(rows.clone())
            return self.data[rows].mean(1)

    data = torch.arange(20.0)[:, None]
    source = Source(data)
    pools = SamplePools.build(source, np.arange(20), np.repeat([0, 1], 10), 2)
    rows = pools.draw_rows(torch.tensor([0, 1, 1]), 4, torch.Generator().manual_seed(0))
    np.testing.assert_allclose(pools.mean_of(rows), data[rows].mean(1))
    assert torch.equal(source.calls[0], rows)
