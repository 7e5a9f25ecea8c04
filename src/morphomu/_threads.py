"""Keep torch's CPU thread count across calls into numba-compiled scanpy code."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def keep_torch_threads() -> Iterator[None]:
    """Restore ``torch.get_num_threads()`` when the block ends.

    numba's OpenMP threading layer (scanpy's ``normalize_total``, ``log1p``, ``neighbors``...) shares the
    OpenMP runtime with torch and sets its thread count to numba's own, silently undoing a user's (or a
    test worker's) ``torch.set_num_threads``; that changes float summation order and so makes training
    depend on which scanpy calls ran before it in the process.
    """
    torch = sys.modules.get("torch")  # not imported yet: nothing to keep (and no need to import it)
    n_threads = torch.get_num_threads() if torch is not None else None
    try:
        yield
    finally:
        if n_threads is not None and torch.get_num_threads() != n_threads:
            torch.set_num_threads(n_threads)
