"""Shared test configuration: one torch thread per xdist worker, offline hub, small hypothesis profile."""

from __future__ import annotations

import os

# before torch / numpy import anything: one thread per worker (pytest -n auto), never reach a hub
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(var, "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# full precision in every test (precision="auto" would pick bf16 on a CPU with avx512_bf16): results must not
# depend on the machine; tests of the other precisions pass precision= explicitly
os.environ.setdefault("MORPHOMU_PRECISION", "32")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "ci", max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True, scope="session")
def _torch_one_thread():
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def small_mdata():
    """A small simulated experiment with the canonical split (do not modify: copy first)."""
    import morphomu as mm

    mdata = mm.datasets.simulate_scgenescope(seed=0, n_img_cells=3000, n_rna_cells=3000)
    mm.pp.assign_split(mdata)
    return mdata


@pytest.fixture
def mdata(small_mdata):
    """A private copy of the small experiment that a test may modify."""
    return small_mdata.copy()
