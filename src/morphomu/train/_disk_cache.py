"""A sample-sorted on-disk copy of a large matrix, read back a batch of rows at a time.

PhenoSeq and the treatment classifiers draw a batch's cells at random *within samples*. In memory that
is a tensor gather; for a backed (on-disk) matrix it is not: loading it needs its whole size in RAM,
and random row reads from HDF5 cost a chunk read and a selection per row. :class:`RowCache` is
written once, in bounded memory, by a sequential pass over the source: the rows that are needed,
optionally standardised, as float32 (bit-identical to the in-memory path) or float16 (half the disk
and I/O), sorted by sample code, in a plain ``.npy`` file (temporary name, then renamed), with CSR-like
sample offsets kept in memory. A batch then reads its rows with positional reads: the row indices are
sorted and de-duplicated, runs of consecutive rows are coalesced, and each run is one ``os.preadv``
straight into a preallocated buffer (a few threads when a batch has many runs).

Why not ``np.memmap``: every page a process touches counts in its resident set (``RssFile``, and in
``VmHWM``), so a long training run over a memory map looks, to the OOM killer's accounting and to a
job scheduler, as if it had loaded the file. With positional reads the file's pages stay in the
kernel's page cache (shared, reclaimable, not charged to the process) and the process holds only the
current batch.

The file is removed by :meth:`RowCache.close`, when the cache is garbage-collected or at interpreter
exit, unless ``keep=True``. Copies sent to data-loader worker processes reopen the file and never remove
it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
from scipy import sparse

from .._errors import MorphomuError
from .._validation import available_memory

__all__ = [
    "CacheOptions",
    "RowCache",
    "RowReader",
    "SourceRows",
    "check_cache_options",
    "is_in_memory",
    "use_disk_cache",
]

#: Bytes of source rows read per step while the cache is written (bounds the writer's memory).
_BLOCK_BYTES = 64 << 20
#: Rows per group when a mean over ``k`` rows per example is computed (bounds the reader's memory).
_BAG_ROWS = 16_384
#: Below this many separate runs of rows a read stays in the calling thread.
_THREADED_RUNS = 256
#: Largest single ``preadv`` / ``pwritev`` (Linux transfers at most 0x7FFFF000 bytes per call).
_MAX_IO = 1 << 30


def is_in_memory(matrix: Any) -> bool:
    """Whether a matrix is held in memory (numpy, scipy sparse, pandas, torch) rather than backed on disk."""
    return isinstance(matrix, np.ndarray | pd.DataFrame | torch.Tensor) or sparse.issparse(matrix)


class CacheOptions(NamedTuple):
    """How a model reads a matrix too large for memory: a ``train`` call's caching arguments.

    Attributes
    ----------
    in_memory
        ``True``: load the matrix; ``False``: a :class:`RowCache`; ``None``: decide from the data
        (:func:`use_disk_cache`).
    cache_dir
        Directory of the cache files (``None``: a temporary directory).
    cache_dtype
        ``'float32'`` or ``'float16'``.
    """

    in_memory: bool | None = None
    cache_dir: str | os.PathLike | None = None
    cache_dtype: str = "float32"


def check_cache_options(
    in_memory: Any, cache_dir: str | os.PathLike | None, cache_dtype: Any
) -> CacheOptions:
    """Check a ``train`` call's caching arguments before any work; return them as :class:`CacheOptions`.

    Raises
    ------
    MorphomuError
        When ``in_memory`` is not ``True``, ``False`` or ``None``, or ``cache_dtype`` is not
        ``'float32'`` or ``'float16'``.
    """
    if in_memory not in (None, True, False) or cache_dtype not in ("float32", "float16"):
        msg = (
            f"in_memory must be True, False or None and cache_dtype 'float32' or 'float16', got "
            f"{in_memory!r} and {cache_dtype!r}."
        )
        raise MorphomuError(msg)
    return CacheOptions(in_memory, cache_dir, cache_dtype)


def use_disk_cache(matrix: Any, n_rows: int, *, in_memory: bool | None, memory_fraction: float = 0.5) -> bool:
    """Decide between the in-memory path and a :class:`RowCache` for ``n_rows`` rows of ``matrix``.

    ``in_memory=True`` / ``False`` force the choice. ``None`` chooses the cache for a backed matrix, and
    for an in-memory one whose dense float32 copy of the rows would take more than ``memory_fraction``
    of the memory available now.
    """
    if in_memory is not None:
        if not isinstance(in_memory, bool):
            msg = f"in_memory must be True, False or None (decide from the data), got {in_memory!r}."
            raise MorphomuError(msg)
        return not in_memory
    if not is_in_memory(matrix):
        return True
    return n_rows * int(matrix.shape[1]) * 4 > memory_fraction * available_memory()


# ---------------------------------------------------------------------------------------------------
# reading a source matrix (dense, sparse, DataFrame, h5py, zarr, anndata's backed sparse) by row ranges
# ---------------------------------------------------------------------------------------------------
def _h5_chunk_rows(matrix: Any) -> int | None:
    chunks = getattr(matrix, "chunks", None)
    if type(matrix).__module__.startswith("h5py") and chunks:
        return int(chunks[0])
    return None


def _read_range(matrix: Any, start: int, stop: int, dtype: Any = np.float32) -> np.ndarray:
    """Rows ``start:stop`` of ``matrix`` as a dense array of ``dtype``."""
    if isinstance(matrix, pd.DataFrame):
        return np.asarray(matrix.iloc[start:stop].to_numpy(), dtype=dtype)
    if isinstance(matrix, torch.Tensor):
        return matrix[start:stop].detach().cpu().numpy().astype(dtype, copy=False)
    chunk = _h5_chunk_rows(matrix)
    if chunk is not None:
        # h5py reads slices larger than its chunk cache slowly; chunk-aligned pieces run at I/O speed
        out = np.empty((stop - start, matrix.shape[1]), dtype=matrix.dtype)
        piece = max(chunk, 1)
        for a in _chunk_starts(start, stop, piece):
            b = min(stop, (a // piece + 1) * piece)
            matrix.read_direct(out, source_sel=np.s_[a:b], dest_sel=np.s_[a - start : b - start])
        return out.astype(dtype, copy=False)
    block = matrix[start:stop]
    block = block.toarray() if sparse.issparse(block) else np.asarray(block)
    return block.astype(dtype, copy=False)


def _chunk_starts(start: int, stop: int, piece: int) -> list[int]:
    """Starts of the chunk-aligned pieces covering ``start:stop``."""
    first = (start // piece + 1) * piece
    return [start, *range(first, stop, piece)] if first < stop else [start]


class RowReader:
    """Read rows of a backed matrix by index in chunk-aligned ranges (for statistics and in-memory loads).

    ``reader[rows]`` equals ``matrix[rows]`` as a dense array (float32, or float64 for float64 sources);
    a window of at most ``window`` consecutive source rows is read per step and the wanted rows are
    kept, which is much faster than HDF5 point selections (about 5x on 5120-wide float32 rows).

    Parameters
    ----------
    matrix
        Any 2-d matrix with row slicing.
    window
        Most source rows read at once.
    """

    def __init__(self, matrix: Any, *, window: int = 1024) -> None:
        self.matrix, self.window = matrix, int(window)
        self.shape = tuple(matrix.shape)
        self.dtype = np.result_type(getattr(matrix, "dtype", np.float32), np.float32)

    def __getitem__(self, rows: Any) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((rows.size, self.shape[1]), dtype=self.dtype)
        if rows.size == 0:
            return out
        order = np.argsort(rows, kind="stable")
        srt = rows[order]
        i = 0
        while i < srt.size:
            j = int(np.searchsorted(srt, srt[i] + self.window, side="left"))
            block = _read_range(self.matrix, int(srt[i]), int(srt[j - 1]) + 1, self.dtype)
            out[order[i:j]] = block[srt[i:j] - srt[i]]
            i = j
        return out


# ---------------------------------------------------------------------------------------------------
# positional I/O into / out of numpy buffers
# ---------------------------------------------------------------------------------------------------
def _pread_into(fd: int, buf: np.ndarray, offset: int) -> None:
    view = memoryview(buf.reshape(-1).view(np.uint8))
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done : done + _MAX_IO]], offset + done)
        if n <= 0:
            msg = "the disk cache file ended early (was it truncated or removed?)."
            raise MorphomuError(msg)
        done += n


def _pwrite_from(fd: int, buf: np.ndarray, offset: int) -> None:
    view = memoryview(np.ascontiguousarray(buf).reshape(-1).view(np.uint8))
    done = 0
    while done < len(view):
        done += os.pwritev(fd, [view[done : done + _MAX_IO]], offset + done)


def _runs(sorted_positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) indices of the runs of consecutive values in a sorted array."""
    breaks = np.flatnonzero(np.diff(sorted_positions) != 1) + 1
    return np.r_[0, breaks], np.r_[breaks, sorted_positions.size]


def _remove(path: str, directory: str | None) -> None:
    Path(path).unlink(missing_ok=True)
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)


class RowCache:
    """Rows of a matrix, sorted by sample code, in a ``.npy`` file; read back by position.

    Build one with :meth:`build`. Position ``p`` holds source row ``rows[p]``; the rows of sample ``s`` are
    positions ``offsets[s]:offsets[s + 1]``. ``cache[positions]`` (numpy or torch indices of any shape)
    returns a float32 tensor of shape ``positions.shape + (n_features,)``, as indexing the in-memory
    matrix would.

    Attributes
    ----------
    path
        The ``.npy`` file (readable with ``np.load(path, mmap_mode='r')``).
    rows
        Source row of every cache row.
    offsets
        ``(n_groups + 1,)`` CSR-like start of each sample.
    dtype
        Storage dtype (float32 or float16).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        rows: np.ndarray,
        offsets: np.ndarray,
        n_source_rows: int,
        threads: int = 4,
    ) -> None:
        self.path = str(path)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.n_source_rows = int(n_source_rows)
        with open(self.path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(f)
            self._data_offset = f.tell()
        if fortran or len(shape) != 2 or shape[0] != self.rows.size:
            msg = f"{self.path} is not a row cache of {self.rows.size} rows (shape {shape})."
            raise MorphomuError(msg)
        self.shape: tuple[int, int] = (int(shape[0]), int(shape[1]))
        self.dtype = np.dtype(dtype)
        self._row_bytes = self.shape[1] * self.dtype.itemsize
        self.threads = max(1, int(threads))
        self._fd: int | None = None
        self._fd_pid: int | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._positions: np.ndarray | None = None
        self._finalizer: weakref.finalize | None = None

    # ------------------------------------------------------------------ building
    @classmethod
    def build(
        cls,
        matrix: Any,
        codes: np.ndarray,
        *,
        n_groups: int | None = None,
        transform: Callable[[np.ndarray], np.ndarray] | None = None,
        dtype: str | np.dtype = "float32",
        directory: str | os.PathLike | None = None,
        keep: bool = False,
        block_bytes: int = _BLOCK_BYTES,
        threads: int = 4,
    ) -> RowCache:
        """Write the rows with ``codes >= 0`` of ``matrix``, sorted by code (stable), to a new cache file.

        Parameters
        ----------
        matrix
            Dense, sparse, DataFrame or backed (h5py, zarr, anndata's backed sparse) matrix.
        codes
            Sample code of every row of ``matrix``; ``-1`` rows are left out.
        n_groups
            Number of samples (default ``codes.max() + 1``).
        transform
            Applied to each float32 block of rows before storage, e.g. ``Standardizer.transform``
            (row-wise, so the cache equals the transform of the whole matrix).
        dtype
            ``'float32'`` (the values exactly) or ``'float16'``.
        directory
            Where the file is written (created if needed); default a new temporary directory, removed
            with the file.
        keep
            Leave the file in place when the cache is closed.
        block_bytes
            Source bytes (as float32) read per step: the writer's memory.
        threads
            Threads of a batch read with many separate runs of rows.

        Returns
        -------
        The open cache.
        """
        dtype = np.dtype(dtype)
        if dtype not in (np.dtype(np.float32), np.dtype(np.float16)):
            msg = f"cache dtype must be 'float32' or 'float16', got {dtype}."
            raise MorphomuError(msg)
        codes = np.asarray(codes, dtype=np.int64)
        n_source, n_features = int(matrix.shape[0]), int(matrix.shape[1])
        if codes.shape != (n_source,):
            msg = f"codes must have one entry per row ({n_source}), got shape {codes.shape}."
            raise MorphomuError(msg)
        n_groups = int(codes.max(initial=-1)) + 1 if n_groups is None else int(n_groups)
        selected = np.flatnonzero(codes >= 0)
        rows = selected[np.argsort(codes[selected], kind="stable")]
        offsets = np.searchsorted(codes[rows], np.arange(n_groups + 1))
        dest = np.full(n_source, -1, dtype=np.int64)
        dest[rows] = np.arange(rows.size)

        tmpdir = None
        if directory is None:
            tmpdir = tempfile.mkdtemp(prefix="morphomu-cache-")
            directory = tmpdir
        directory = Path(directory)
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            msg = f"cache_dir={str(directory)!r} cannot be created: {e}."
            raise MorphomuError(msg) from None
        n_bytes = rows.size * n_features * dtype.itemsize
        free = shutil.disk_usage(directory).free
        if n_bytes > free:
            if tmpdir is not None:
                shutil.rmtree(tmpdir, ignore_errors=True)
            msg = (
                f"the disk cache needs {n_bytes / 2**30:.1f} GiB but {str(directory)!r} has "
                f"{free / 2**30:.1f} GiB free; pass cache_dir=<a directory with room> or cache_dtype='float16'."
            )
            raise MorphomuError(msg)
        path = directory / f"morphomu-rows-{uuid.uuid4().hex}.npy"
        tmp = path.with_name(f".{path.name}.tmp")
        header = {
            "descr": np.lib.format.dtype_to_descr(dtype),
            "fortran_order": False,
            "shape": (int(rows.size), n_features),
        }
        try:
            with open(tmp, "wb") as f:
                np.lib.format.write_array_header_1_0(f, header)
                data_offset = f.tell()
                f.truncate(data_offset + n_bytes)
            fd = os.open(tmp, os.O_WRONLY)
            try:
                _write_rows(fd, matrix, dest, transform, dtype, data_offset, block_bytes)
            finally:
                os.close(fd)
            tmp.replace(path)
        except BaseException:
            _remove(str(tmp), tmpdir)
            raise
        try:
            cache = cls(path, rows=rows, offsets=offsets, n_source_rows=n_source, threads=threads)
        except BaseException:
            _remove(str(path), tmpdir)
            raise
        if not keep:
            cache._finalizer = weakref.finalize(cache, _remove, str(path), tmpdir)
        return cache

    # ------------------------------------------------------------------ reading
    def _file(self) -> int:
        if self._fd is None or self._fd_pid != os.getpid():  # a forked worker opens its own descriptor
            self._fd, self._fd_pid, self._pool = os.open(self.path, os.O_RDONLY), os.getpid(), None
        return self._fd

    def _read_sorted(self, positions: np.ndarray, buf: np.ndarray) -> None:
        """Rows at sorted, distinct ``positions`` into ``buf`` (storage dtype), one ``preadv`` per run."""
        fd = self._file()
        starts, ends = _runs(positions)

        def read(lo: int, hi: int) -> None:
            for a, b in zip(starts[lo:hi], ends[lo:hi], strict=True):
                _pread_into(fd, buf[a:b], self._data_offset + int(positions[a]) * self._row_bytes)

        if self.threads == 1 or starts.size < _THREADED_RUNS:
            read(0, starts.size)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="morphomu-cache")
        bounds = np.linspace(0, starts.size, self.threads + 1).astype(int)
        for fut in [self._pool.submit(read, lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]:
            fut.result()

    def read(self, positions: Any) -> np.ndarray:
        """Float32 rows at ``positions`` (any order, repeats allowed), shape ``(len(positions), n_features)``."""
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        if positions.size and (positions.min() < 0 or positions.max() >= self.shape[0]):
            msg = f"cache positions must be in [0, {self.shape[0]})."
            raise IndexError(msg)
        unique, inverse = np.unique(positions, return_inverse=True)
        buf = np.empty((unique.size, self.shape[1]), dtype=self.dtype)
        self._read_sorted(unique, buf)
        if unique.size == positions.size:  # distinct: the sorted buffer only needs reordering
            out = np.empty((positions.size, self.shape[1]), dtype=np.float32)
            out[...] = buf[inverse]
            return out
        return buf[inverse].astype(np.float32, copy=False)

    def __getitem__(self, positions: Any) -> torch.Tensor:
        """``(*positions.shape, n_features)`` float32 tensor, like indexing the in-memory matrix."""
        if isinstance(positions, torch.Tensor):
            positions = positions.cpu().numpy()
        positions = np.asarray(positions, dtype=np.int64)
        return torch.from_numpy(self.read(positions)).reshape(*positions.shape, self.shape[1])

    def bag_mean(self, positions: Any) -> torch.Tensor:
        """Mean over each row of ``positions`` (``(B, k)`` -> ``(B, n_features)``), ``_BAG_ROWS`` rows at a time.

        The same arithmetic as :func:`torch.nn.functional.embedding_bag` on the in-memory matrix.
        """
        from torch.nn import functional as F

        if isinstance(positions, torch.Tensor):
            positions = positions.cpu().numpy()
        positions = np.asarray(positions, dtype=np.int64)
        n, k = positions.shape
        out = torch.empty(n, self.shape[1], dtype=torch.float32)
        step = max(1, _BAG_ROWS // max(k, 1))
        for a in range(0, n, step):
            block = positions[a : a + step]
            unique, inverse = np.unique(block, return_inverse=True)
            buf = np.empty((unique.size, self.shape[1]), dtype=self.dtype)
            self._read_sorted(unique, buf)
            weight = torch.from_numpy(buf.astype(np.float32, copy=False))
            out[a : a + step] = F.embedding_bag(
                torch.from_numpy(inverse.reshape(block.shape)), weight, mode="mean"
            )
        return out

    def positions_of(self, source_rows: Any) -> np.ndarray:
        """Cache position of each source row (``-1`` for rows not cached)."""
        if self._positions is None:
            pos = np.full(self.n_source_rows, -1, dtype=np.int64)
            pos[self.rows] = np.arange(self.rows.size)
            self._positions = pos
        return self._positions[np.asarray(source_rows, dtype=np.int64)]

    def by_source_row(self) -> SourceRows:
        """A view indexed by source row, as the matrix the cache was built from."""
        return SourceRows(self)

    # ------------------------------------------------------------------ lifetime
    @property
    def nbytes(self) -> int:
        """Bytes of the cached rows on disk."""
        return self.shape[0] * self._row_bytes

    def close(self) -> None:
        """Close the file and remove it (unless built with ``keep=True``)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._fd is not None and self._fd_pid == os.getpid():
            os.close(self._fd)
        self._fd = None
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> RowCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        # a copy (e.g. in a data-loader worker) reopens the file and never removes it
        state = self.__dict__.copy()
        state.update(_fd=None, _fd_pid=None, _pool=None, _finalizer=None, _positions=None)
        return state

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return (
            f"RowCache({self.shape[0]} x {self.shape[1]} {self.dtype}, {len(self.offsets) - 1} groups, "
            f"{self.nbytes / 2**20:.1f} MiB at {self.path!r})"
        )


def _write_rows(
    fd: int,
    matrix: Any,
    dest: np.ndarray,
    transform: Callable[[np.ndarray], np.ndarray] | None,
    dtype: np.dtype,
    data_offset: int,
    block_bytes: int,
) -> None:
    """One sequential pass over ``matrix``: each needed row, transformed, to its sorted position."""
    n_source, n_features = dest.size, int(matrix.shape[1])
    row_bytes = n_features * dtype.itemsize
    block_rows = max(1, int(block_bytes) // max(1, n_features * 4))
    chunk = _h5_chunk_rows(matrix)
    if chunk:
        block_rows = max(chunk, block_rows // chunk * chunk)
    for start in range(0, n_source, block_rows):
        need = np.flatnonzero(dest[start : start + block_rows] >= 0)
        if need.size == 0:
            continue
        lo, hi = start + int(need[0]), start + int(need[-1]) + 1
        block = _read_range(matrix, lo, hi)[need + start - lo]
        if transform is not None:
            block = transform(block)
        block = np.asarray(block).astype(dtype, copy=False)
        pos = dest[start + need]
        order = np.argsort(pos, kind="stable")
        pos, block = pos[order], block[order]
        for a, b in zip(*_runs(pos), strict=True):
            _pwrite_from(fd, block[a:b], data_offset + int(pos[a]) * row_bytes)


class SourceRows:
    """A :class:`RowCache` addressed by source row: ``view[rows]`` is ``matrix[rows]`` of the source.

    Drop-in for the in-memory matrix of the classifier's sample pools (indexing and :meth:`mean_of`).
    """

    def __init__(self, cache: RowCache) -> None:
        self.cache = cache
        self.shape = (cache.n_source_rows, cache.shape[1])

    def _positions(self, rows: Any) -> np.ndarray:
        if isinstance(rows, torch.Tensor):
            rows = rows.cpu().numpy()
        pos = self.cache.positions_of(rows)
        if pos.size and pos.min() < 0:
            msg = "a requested row is not in the disk cache."
            raise IndexError(msg)
        return pos

    def __getitem__(self, rows: Any) -> torch.Tensor:
        return self.cache[self._positions(rows)]

    def mean_of(self, rows: Any) -> torch.Tensor:
        """Mean over each row of ``rows`` (``(B, k)`` source rows -> ``(B, n_features)``)."""
        return self.cache.bag_mean(self._positions(rows))

    def __len__(self) -> int:
        return self.shape[0]
