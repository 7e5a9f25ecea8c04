"""PhenoSeq's network pieces, scheduler configuration, EMA, schedule and set sampling (no training)."""

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from morphomu.module._diffusion import SCHEDULER_CONFIG, make_scheduler
from morphomu.module._phenoseq import PHENOSEQ_PRESETS, PhenoSeqModule
from morphomu.nn._attention import Attention
from morphomu.train._diffusion_plan import warmup_cosine
from morphomu.train._ema import ExponentialMovingAverage
from morphomu.train._set_data import PairedSetDataModule


def tiny_module(n_img=20, n_rna=12, **kw):
    torch.manual_seed(0)
    sizes = {k: v for k, v in PHENOSEQ_PRESETS["tiny"].items() if k != "n_context_cells"}
    sizes.update(kw)
    return PhenoSeqModule(n_img, n_rna, **sizes).eval()


# ------------------------------------------------------------------ scheduler
def test_scheduler_configuration_is_pinned():
    assert SCHEDULER_CONFIG == {
        "num_train_timesteps": 1000,
        "beta_schedule": "squaredcos_cap_v2",
        "prediction_type": "epsilon",
        "clip_sample": False,
        "timestep_spacing": "leading",
        "steps_offset": 0,
        "set_alpha_to_one": True,
    }
    s = make_scheduler()
    for key, value in SCHEDULER_CONFIG.items():
        assert s.config[key] == value
    s.set_timesteps(50)
    assert s.timesteps[:2].tolist() == [980, 960] and s.timesteps[-1].item() == 0
    assert s.final_alpha_cumprod.item() == 1.0
    # cosine schedule of Nichol & Dhariwal; the 1e-5 lower clamp of the paper's code never binds
    betas = s.betas.double().numpy()
    assert betas.min() > 1e-5 and betas.max() == pytest.approx(0.999)

    def f(t):
        return math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2

    expected = np.array([min(1 - f(i + 1) / f(i), 0.999) for i in range(1000)])
    np.testing.assert_allclose(betas, expected, rtol=1e-5)
    ddpm = make_scheduler("ddpm")
    assert ddpm.config.clip_sample is False and ddpm.config.prediction_type == "epsilon"
    with pytest.raises(ValueError, match="kind"):
        make_scheduler("euler")


# ------------------------------------------------------------------ exact shortcuts
def test_single_key_attention_is_value_output_projection():
    torch.manual_seed(0)
    attn = Attention(16, 4).eval()
    x, c = torch.randn(3, 1, 16), torch.randn(3, 1, 16)
    full = attn.attend(x, *attn.project_kv(c))  # softmax over one key
    np.testing.assert_allclose(attn(x, c).detach(), full.detach(), atol=1e-6)
    # several keys: matches an explicit softmax computation
    c = torch.randn(3, 5, 16)
    q = attn.to_q(x).view(3, 1, 4, 4).transpose(1, 2)
    k = attn.to_k(c).view(3, 5, 4, 4).transpose(1, 2)
    v = attn.to_v(c).view(3, 5, 4, 4).transpose(1, 2)
    w = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1)
    ref = attn.to_out((w @ v).transpose(1, 2).reshape(3, 1, 16))
    np.testing.assert_allclose(attn(x, c).detach(), ref.detach(), atol=1e-5)


@pytest.mark.parametrize("n_context", [1, 6])
def test_cached_sampling_path_equals_training_forward(n_context):
    m = tiny_module(classifier_free=True)
    ctx = m.encode_context(torch.randn(5, n_context, 20))
    x, t = torch.randn(5, 12), 300
    with torch.no_grad():
        ref = m.denoise(x, torch.full((5,), t), ctx)
    np.testing.assert_allclose(m.denoise_cached(x, t, m.cross_cache(ctx)), ref, atol=1e-5)
    # null-context rows of a training batch equal the cached null context
    uncond = torch.tensor([True, False, True, False, False])
    with torch.no_grad():
        mixed = m.denoise(x, torch.full((5,), t), m.encode_context(torch.randn(5, n_context, 20), uncond))
    null = m.denoise_cached(x, t, m.null_cache().take(torch.zeros(5, dtype=torch.long)))
    np.testing.assert_allclose(mixed[uncond], null[uncond], atol=1e-5)


def test_single_token_self_attention_query_key_are_frozen_and_unused():
    m = tiny_module(dropout=0.1).train()
    batch = {
        "rna": torch.randn(4, 12),
        "img": torch.randn(4, 8, 20),
        "t": torch.randint(0, 1000, (4,)),
        "noise": torch.randn(4, 12),
    }
    _, _, out = m(batch)
    out.loss.backward()
    for blk in m.blocks:
        assert not blk.self_attn.to_q.weight.requires_grad and blk.self_attn.to_q.weight.grad is None
        assert not blk.self_attn.to_k.weight.requires_grad and blk.self_attn.to_k.weight.grad is None
        assert blk.self_attn.to_v.weight.grad.abs().sum() > 0
        assert blk.cross_attn.to_q.weight.grad.abs().sum() > 0  # several keys: the query matters
    # changing the frozen projections changes nothing
    m.eval()
    with torch.no_grad():
        before = m(batch)[2].loss
        for blk in m.blocks:
            blk.self_attn.to_q.weight.normal_()
            blk.self_attn.to_k.weight.normal_()
        assert m(batch)[2].loss == before


def test_v_prediction_target():
    m = tiny_module(prediction_type="v_prediction")
    x0, noise, t = torch.randn(3, 12), torch.randn(3, 12), torch.tensor([0, 500, 999])
    ab = m.alphas_cumprod[t][:, None]
    np.testing.assert_allclose(m.target(x0, noise, t), ab.sqrt() * noise - (1 - ab).sqrt() * x0, atol=1e-6)
    assert torch.equal(tiny_module(prediction_type="epsilon").target(x0, noise, t), noise)
    with pytest.raises(ValueError, match="prediction_type"):
        tiny_module(prediction_type="sample")


def test_sample_is_deterministic_and_guidance_one_is_conditional():
    m = tiny_module(classifier_free=True)
    cache = m.cross_cache(m.encode_context(torch.randn(2, 1, 20)))
    noise = torch.randn(2, 12)
    a = m.sample(noise, cache, n_steps=5)
    np.testing.assert_array_equal(a, m.sample(noise, cache, n_steps=5))
    near_one = m.sample(noise, cache, n_steps=5, guidance_scale=1.0 + 1e-7)
    np.testing.assert_allclose(near_one, a, atol=1e-5)
    assert not torch.allclose(m.sample(noise, cache, n_steps=5, guidance_scale=3.0), a, atol=1e-3)


# ------------------------------------------------------------------ EMA and learning-rate schedule
def test_ema_warmup_and_foreach_update():
    p = [torch.zeros(3), torch.ones(2)]
    ema = ExponentialMovingAverage(0.9999)
    ema.start(p)
    expected = [x.clone() for x in p]
    decays = []
    for step in range(5):
        new = [torch.full((3,), float(step + 1)), torch.full((2,), -float(step))]
        d = ema.current_decay()
        decays.append(d)
        ema.update(new)
        expected = [d * e + (1 - d) * n for e, n in zip(expected, new, strict=True)]
    np.testing.assert_allclose(decays, [(1 + n) / (10 + n) for n in range(5)])
    for s, e in zip(ema.shadow, expected, strict=True):
        np.testing.assert_allclose(s, e, rtol=1e-6)
    ema.n_updates = 10**6
    assert ema.current_decay() == 0.9999  # the warm-up ends at the configured decay
    target = [torch.empty(3), torch.empty(2)]
    ema.copy_to(target)
    np.testing.assert_array_equal(target[0], ema.shadow[0])
    restored = ExponentialMovingAverage(0.5)
    restored.load_state_dict(ema.state_dict())
    assert restored.decay == 0.9999 and restored.n_updates == 10**6
    with pytest.raises(ValueError, match="ema_decay"):
        ExponentialMovingAverage(1.0)


def test_warmup_then_cosine():
    f = [warmup_cosine(s, warmup_steps=4, total_steps=12) for s in range(12)]
    np.testing.assert_allclose(f[:4], [0.25, 0.5, 0.75, 1.0])
    assert f[4] == pytest.approx(1.0) and f[8] == pytest.approx(0.5) and f[11] < 0.1
    assert all(a >= b for a, b in zip(f[3:], f[4:], strict=False))


# ------------------------------------------------------------------ set sampling
def make_datamodule(batch_size=4, n_train=24, p_uncond=0.0, seed=0):
    rng = np.random.default_rng(0)
    n_samples = 3
    img_counts = np.array([5, 1, 9])
    offsets = np.concatenate([[0], np.cumsum(img_counts)])
    img = torch.arange(offsets[-1], dtype=torch.float32)[:, None].repeat(1, 2)  # row id as feature
    rna_sample = torch.from_numpy(rng.integers(0, n_samples, n_train + 6))
    return PairedSetDataModule(
        rna=torch.from_numpy(rng.normal(size=(n_train + 6, 3)).astype(np.float32)),
        rna_sample=rna_sample,
        train_rows=torch.arange(n_train),
        val_rows=torch.arange(n_train, n_train + 6),
        img=img,
        img_offsets=torch.from_numpy(offsets),
        n_context_cells=7,
        batch_size=batch_size,
        p_uncond=p_uncond,
        seed=seed,
    )


def test_context_cells_come_from_the_items_sample():
    dm = make_datamodule(p_uncond=0.5)
    ds = dm.train_set
    batch = ds[(0, 0)]
    assert (
        batch["img"].shape == (4, 7, 2)
        and batch["rna"].shape == (4, 3)
        and batch["uncond"].dtype == torch.bool
    )
    rows = batch["img"][..., 0].long()
    lo = ds.img_offsets[ds.rna_sample[batch["index"]]][:, None]
    hi = ds.img_offsets[ds.rna_sample[batch["index"]] + 1][:, None]
    assert bool(((rows >= lo) & (rows < hi)).all())
    assert batch["t"].min() >= 0 and batch["t"].max() < 1000


def test_epochs_are_partitioned_across_ranks_and_match_one_process_at_twice_the_batch():
    single = make_datamodule(batch_size=8)
    ranks = [make_datamodule(batch_size=4) for _ in range(2)]
    for r, dm in enumerate(ranks):
        dm.set_rank(r, 2)
    assert len(single.train_set) == len(ranks[0].train_set) == 3
    for epoch in (0, 1):
        seen = []
        for step in range(3):
            one = single.train_set[(epoch, step)]
            parts = [dm.train_set[(epoch, step)] for dm in ranks]
            assert not set(parts[0]["index"].tolist()) & set(parts[1]["index"].tolist())
            for key in one:  # rank r holds rows r, r + 2, ... of the global batch, draws included
                np.testing.assert_array_equal(torch.stack([p[key] for p in parts], 1).flatten(0, 1), one[key])
            seen += one["index"].tolist()
        assert sorted(seen) == list(range(24))  # one pass over the train cells
    # epochs differ, validation does not
    assert not torch.equal(single.train_set[(0, 0)]["index"], single.train_set[(1, 0)]["index"])
    np.testing.assert_array_equal(single.val_set[(0, 0)]["noise"], single.val_set[(5, 0)]["noise"])


def test_last_batch_wraps_to_full_size_and_workers_do_not_change_draws():
    dm = make_datamodule(batch_size=5, n_train=12)
    batches = [dm.train_set[(0, s)] for s in range(len(dm.train_set))]
    assert [len(b["index"]) for b in batches] == [5, 5, 5]
    assert set(torch.cat([b["index"] for b in batches]).tolist()) == set(range(12))
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(3)
    direct = [dm.train_set[(3, s)]["noise"] for s in range(3)]
    for got, ref in zip(loader, direct, strict=True):
        np.testing.assert_array_equal(got["noise"], ref)
    with pytest.raises(ValueError, match="no imaging"):
        PairedSetDataModule(
            rna=torch.zeros(2, 1),
            rna_sample=torch.tensor([0, 1]),
            train_rows=torch.tensor([0, 1]),
            val_rows=torch.tensor([], dtype=torch.long),
            img=torch.zeros(1, 1),
            img_offsets=torch.tensor([0, 1, 1]),
            n_context_cells=2,
            batch_size=2,
        )


def test_geglu_matches_definition():
    from morphomu.nn._feedforward import GEGLUFeedForward

    torch.manual_seed(0)
    ff = GEGLUFeedForward(8, 2)
    x = torch.randn(3, 8)
    h = ff.proj_in(x)
    ref = ff.proj_out(h[:, :16] * F.gelu(h[:, 16:]))
    np.testing.assert_allclose(ff(x).detach(), ref.detach(), atol=1e-6)
