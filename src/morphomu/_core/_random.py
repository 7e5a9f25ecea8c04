"""Keyed (counter-based) random numbers: every draw is a function of integer keys, never of call order.

Two derivations, each with its own key space:

- :func:`cell_keys` + :func:`keyed_uniform` / :func:`keyed_normal` (splitmix64): the draws of a
  generated cell depend only on ``(seed, purpose, sample, cell index)``, so generating a subset of
  samples, in another batch size or on another device gives the same cells. The purposes are the
  members of :class:`Stream`, and :func:`step_stream` derives one purpose per sampler step.
- :func:`keyed_seed` (numpy's ``SeedSequence`` hashing): the seeds of the training and evaluation
  loaders' generators, from ``(seed, stream, epoch, step)``. The loaders' own stream ids live beside them
  in :mod:`morphomu.train`; an evaluation split's id is :func:`split_stream` of its name.

Changing a :class:`Stream` value changes every generated cell of that purpose, so the values are pinned
by a test; two purposes sharing a value would draw the same numbers.
"""

from __future__ import annotations

import enum
import hashlib
import zlib
from collections.abc import Iterable

import numpy as np

__all__ = [
    "SPLIT_STREAM_BASE",
    "Stream",
    "cell_keys",
    "keyed_normal",
    "keyed_seed",
    "keyed_uniform",
    "sample_hash",
    "sample_hashes",
    "split_stream",
    "step_stream",
]


@enum.unique
class Stream(enum.IntEnum):
    """The purpose of a keyed draw at generation (the ``purpose`` of :func:`cell_keys`).

    One member per purpose; the values are those the models have always used, so generated data stay
    bit-identical across versions.
    """

    #: PhenoSeq: a generated cell's initial noise.
    PHENOSEQ_NOISE = 1
    #: PhenoSeq: a generated cell's random imaging context set (``context='set'``).
    PHENOSEQ_CONTEXT = 2
    #: PhenoSeq: fresh noise of each stochastic sampler step (``eta > 0``), via :func:`step_stream`.
    PHENOSEQ_STEP_NOISE = 3
    #: Ridge baseline of :func:`morphomu.tl.generate_rna`: the train residual added to a generated cell.
    RIDGE_RESIDUAL = 4
    #: Trident: a generated image's initial latent noise.
    TRIDENT_NOISE = 11
    #: Trident: the draw of the condition latent ``z ~ q(z | expression, compound)``.
    TRIDENT_CONDITION = 12
    #: Trident: fresh noise of each stochastic sampler step (reserved: its sampler is deterministic today).
    TRIDENT_STEP_NOISE = 13


#: Sampler steps per :func:`step_stream` block: more than any schedule has (1000), so the purposes of two
#: step-noise streams never overlap, nor reach the :class:`Stream` values.
_STEPS_PER_STREAM = 100_003
#: Smallest :func:`split_stream` id; every :class:`Stream` value is below it.
SPLIT_STREAM_BASE = 1000

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def step_stream(stream: Stream, step: int) -> int:
    """The :func:`cell_keys` purpose of sampler step ``step`` of a step-noise ``stream``."""
    return int(stream) * _STEPS_PER_STREAM + int(step)


def split_stream(split: str) -> int:
    """Stream id of an evaluation split's fixed draws (:func:`keyed_seed`), from the split's name (CRC-32).

    The ids lie in ``[SPLIT_STREAM_BASE, SPLIT_STREAM_BASE + 1e6)``, above every hand-numbered stream.
    """
    return SPLIT_STREAM_BASE + zlib.crc32(str(split).encode()) % 1_000_000


def keyed_seed(*keys: int) -> int:
    """A 63-bit seed derived from integer keys (numpy's SeedSequence hashing)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, elementwise on uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def sample_hash(name: str) -> np.uint64:
    """64-bit key of a sample name (BLAKE2b), the same in every process and version."""
    return np.uint64(int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little"))


def sample_hashes(names: Iterable[str]) -> np.ndarray:
    """:func:`sample_hash` of each name, as a ``uint64`` array."""
    return np.array([sample_hash(s) for s in names], dtype=np.uint64)


def cell_keys(seed: int, purpose: int, hashes: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """One 64-bit key per generated cell from (seed, purpose, sample hash, cell index)."""
    with np.errstate(over="ignore"):
        base = _mix64(np.asarray([seed], dtype=np.uint64) * _GOLDEN + np.uint64(purpose))
        k = _mix64(base ^ np.asarray(hashes, dtype=np.uint64))
        return _mix64(k + np.asarray(cells, dtype=np.uint64) * _GOLDEN)


def keyed_uniform(keys: np.ndarray, n: int) -> np.ndarray:
    """``(len(keys), n)`` uniforms in (0, 1): element ``j`` is splitmix64 output ``j`` of its key."""
    with np.errstate(over="ignore"):
        counters = keys[:, None] + (np.arange(1, n + 1, dtype=np.uint64) * _GOLDEN)[None, :]
        return ((_mix64(counters) >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53


def keyed_normal(keys: np.ndarray, n: int) -> np.ndarray:
    """``(len(keys), n)`` standard normals (Box-Muller on keyed uniforms), float32."""
    half = (n + 1) // 2
    u = keyed_uniform(keys, 2 * half)
    r = np.sqrt(-2.0 * np.log(u[:, :half]))
    angle = 2.0 * np.pi * u[:, half:]
    z = np.empty((len(keys), 2 * half))
    z[:, 0::2], z[:, 1::2] = r * np.cos(angle), r * np.sin(angle)
    return z[:, :n].astype(np.float32)
