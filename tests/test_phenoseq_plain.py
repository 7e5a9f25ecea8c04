"""The optimised PhenoSeq computes the same function as a plain implementation on the same weights.

The plain code is the reference of ``benchmarks/phenoseq.py`` (``nn.TransformerEncoderLayer``,
``nn.MultiheadAttention``) in morphomu's variant of the architecture.
"""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from morphomu.module._diffusion import make_scheduler
from morphomu.module._phenoseq import PHENOSEQ_PRESETS, PhenoSeqModule

PLAIN = Path(__file__).resolve().parents[1] / "benchmarks" / "_plain_phenoseq.py"


def load_plain():
    spec = importlib.util.spec_from_file_location("_plain_phenoseq", PLAIN)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def pair():
    plain = load_plain()
    torch.manual_seed(0)
    sizes = {
        k: v for k, v in PHENOSEQ_PRESETS["tiny"].items() if k not in ("n_context_cells", "prediction_type")
    }
    sizes.update(n_layers=3, n_encoder_layers=2, dropout=0.1)
    ours = PhenoSeqModule(40, 24, prediction_type="epsilon", **sizes).eval()
    with torch.no_grad():  # a non-trivial output head (it starts near zero)
        ours.head[-1].weight.normal_(0, 0.1)
    # morphomu's variant of the plain code (GEGLU encoder, no second LayerNorm), with morphomu's weights
    twin = plain.PlainPhenoSeq(40, 24, encoder_ff="geglu", ff_norm=False, **sizes)
    return plain, ours, twin.load_from(ours).eval()


@pytest.mark.parametrize("n_context", [1, 16])
def test_forward_agrees(pair, n_context):
    _, ours, plain = pair
    torch.manual_seed(1)
    x, t, img = torch.randn(6, 24), torch.randint(0, 1000, (6,)), torch.randn(6, n_context, 40)
    with torch.no_grad():
        ref = plain(x, t, img)
        fast = ours.denoise(x, t, ours.encode_context(img))
        cached = ours.denoise_cached(x, 500, ours.cross_cache(ours.encode_context(img)))
        ref_500 = plain(x, torch.full((6,), 500), img)
    assert ref.abs().mean() > 0.05
    np.testing.assert_allclose(fast, ref, atol=1e-5)
    np.testing.assert_allclose(cached, ref_500, atol=1e-5)


def test_generation_agrees(pair):
    plain_mod, ours, plain = pair
    torch.manual_seed(2)
    mean_img, noise = torch.randn(4, 40), torch.randn(4, 24)
    ref = plain_mod.plain_generate(plain, mean_img, noise, make_scheduler(), n_steps=10)
    cache = ours.cross_cache(ours.encode_context(mean_img[:, None, :]))
    np.testing.assert_allclose(ours.sample(noise, cache, n_steps=10), ref, atol=1e-4)


def test_gradients_agree(pair):
    _, ours, plain = pair
    ours.train(), plain.train()
    for m in (ours, plain):  # dropout off: compare exact gradients
        for mod in m.modules():
            if isinstance(mod, torch.nn.Dropout):
                mod.p = 0.0
            elif isinstance(mod, torch.nn.MultiheadAttention):
                mod.dropout = 0.0
    torch.manual_seed(3)
    x, t, img = torch.randn(5, 24), torch.randint(0, 1000, (5,)), torch.randn(5, 16, 40)
    ours.zero_grad(), plain.zero_grad()
    ours.denoise(x, t, ours.encode_context(img)).square().sum().backward()
    plain(x, t, img).square().sum().backward()
    np.testing.assert_allclose(ours.query[0].weight.grad, plain.query[0].weight.grad, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        ours.encoder.proj[0].weight.grad, plain.proj[0].weight.grad, rtol=1e-4, atol=1e-6
    )
    ours.eval(), plain.eval()
