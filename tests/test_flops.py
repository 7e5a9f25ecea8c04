"""Parameters and training FLOPs per sample of PhenoSeq at the paper's sizes, morphomu's and the public code's.

Counted by ``benchmarks/phenoseq.py`` (``FlopCounterMode`` on the meta device, gradients on: no real
compute) and checked against the closed form of each architecture, which also documents where the
FLOPs go. The benchmark's MFU figures rest on these counts.
"""

import importlib.util
import sys
from pathlib import Path

import pytest

from morphomu.module._phenoseq import PHENOSEQ_PRESETS

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
N_IMAGE, N_RNA = 5120, 512


@pytest.fixture(scope="module")
def bench():
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(BENCH))  # phenoseq.py imports its reference, _plain_phenoseq, from there
        spec = importlib.util.spec_from_file_location("phenoseq_benchmark", BENCH / "phenoseq.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        yield mod
    sys.modules.pop("_plain_phenoseq", None)


def linear(rows: int, n_in: int, n_out: int, *, input_grad: bool = True) -> int:
    """Forward and backward FLOPs of a linear layer on ``rows`` tokens: ``xW``, ``dW`` and (unless the input
    is data) ``dx``, each ``2 rows n_in n_out``."""
    return 2 * rows * n_in * n_out * (3 if input_grad else 2)


def attention(n_q: int, n_k: int, dim: int) -> int:
    """Scores and weighted sum over all heads (``2 n_q n_k dim`` each), forward and both gradients."""
    return 3 * 2 * (2 * n_q * n_k * dim)


def linear_params(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def closed_form(impl: str) -> tuple[int, int]:
    """``(parameters, training FLOPs per sample)`` of the paper-size network, counted from its layers.

    ``'morphomu'``: GEGLU encoder feed-forward (d -> 8d, 4d -> d), single-token self-attention as its value and
    output projections (softmax over one key is 1). ``'reference'``: the public code: GELU encoder
    feed-forward (d -> 4d -> d), full single-token self-attention, a LayerNorm opening each block's
    feed-forward.
    """
    s = PHENOSEQ_PRESETS["paper"]
    d, m, nt, n = s["n_hidden"], s["ff_mult"], s["n_time"], s["n_context_cells"]
    ln = 2 * d  # a LayerNorm's weight and bias
    # imaging projection (its input is data) -> encoder layers over the n cells
    flops = linear(n, N_IMAGE, d, input_grad=False)
    params = linear_params(N_IMAGE, d) + ln
    enc_ff = [(d, 2 * m * d), (m * d, d)] if impl == "morphomu" else [(d, m * d), (m * d, d)]
    for _ in range(s["n_encoder_layers"]):
        flops += 4 * linear(n, d, d) + attention(n, n, d) + sum(linear(n, i, o) for i, o in enc_ff)
        params += 2 * ln + 4 * linear_params(d, d) + sum(linear_params(i, o) for i, o in enc_ff)
    # time MLP (its input is the sinusoid) and the RNA query (its input is the noised data)
    flops += linear(1, nt, d, input_grad=False) + linear(1, d, nt) + linear(1, N_RNA, d, input_grad=False)
    params += linear_params(nt, d) + linear_params(d, nt) + linear_params(N_RNA, d) + ln
    for _ in range(s["n_layers"]):
        block = 3 * linear(1, nt, 2 * d)  # AdaLN scale and shift of the three sub-layers
        block += (
            2 * linear(1, d, d) + 2 * linear(n, d, d) + attention(1, n, d)
        )  # cross-attention: q, out; k, v
        if impl == "morphomu":
            block += 2 * linear(1, d, d)  # self-attention over one token: value and output projections
        else:
            block += 4 * linear(1, d, d) + attention(1, 1, d)
        block += linear(1, d, 2 * m * d) + linear(1, m * d, d)  # GEGLU feed-forward
        flops += block
        params += 3 * linear_params(nt, 2 * d) + ln + 8 * linear_params(d, d)
        params += linear_params(d, 2 * m * d) + linear_params(m * d, d) + (ln if impl == "reference" else 0)
    # output head
    flops += linear(1, d, d) + linear(1, d, N_RNA)
    params += ln + linear_params(d, d) + linear_params(d, N_RNA)
    return params, flops


@pytest.mark.parametrize(
    ("impl", "params_m", "gflop"),
    [("morphomu", 176.9, 5.44), ("reference", 168.5, 4.72)],  # the figures of issue 15
)
def test_paper_size_parameters_and_training_flops(bench, impl, params_m, gflop):
    counted = bench.count_training(impl, "paper")
    params, flops = closed_form(impl)
    assert counted["params"] == params
    assert counted["train_flops_per_sample"] == flops
    assert round(params / 1e6, 1) == params_m
    assert flops / 1e9 == pytest.approx(gflop, abs=0.01)


def test_morphomu_costs_more_only_in_its_encoder(bench):
    # GEGLU (d -> 8d, 4d -> d) over d -> 4d -> d costs 4 d^2 more multiply-adds per context cell and layer;
    # the single-token self-attention saves its query and key projections (and its 1 x 1 scores)
    s = PHENOSEQ_PRESETS["paper"]
    d, n = s["n_hidden"], s["n_context_cells"]
    geglu_extra = s["n_encoder_layers"] * linear(n, d, 4 * d)
    self_attn_saved = s["n_layers"] * (2 * linear(1, d, d) + attention(1, 1, d))
    diff = closed_form("morphomu")[1] - closed_form("reference")[1]
    assert diff == geglu_extra - self_attn_saved
