"""A treatment classifier's data: its input matrices and the examples of a split.

An input matrix is a float32 tensor in memory, or a sample-sorted disk cache read by row (for backed or
larger-than-memory data); the examples are drawn from either the same way (:mod:`morphomu.train._classifier`).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from .._core import rep_matrix
from .._errors import ContractError, MorphomuWarning
from ..train._classifier import ExampleSet, SamplePools
from ..train._disk_cache import CacheOptions, RowCache, use_disk_cache

if TYPE_CHECKING:
    from mudata import MuData

    from ._classifier_inputs import ClassifierInput

__all__ = ["RowCaches", "as_tensor", "input_matrices", "matrix_key", "obs_column", "split_examples"]

#: Disk caches by :func:`matrix_key` and dtype, each with the matrix it was built from.
RowCaches = dict[tuple, tuple[Any, RowCache]]


def obs_column(mdata: MuData, spec: ClassifierInput, column: str) -> np.ndarray:
    """An obs column of an input's modality, as strings."""
    return mdata.mod[spec.mod].obs[column].astype(str).to_numpy()


def as_tensor(matrix: Any) -> torch.Tensor:
    """The matrix as a CPU float32 tensor, sharing memory when it already is a C-contiguous float32 array."""
    from scipy import sparse

    if isinstance(matrix, pd.DataFrame):
        matrix = matrix.to_numpy()
    if sparse.issparse(matrix):
        matrix = matrix.toarray()
    elif not isinstance(matrix, np.ndarray):
        matrix = matrix[:]  # backed: load
        matrix = matrix.toarray() if sparse.issparse(matrix) else matrix
    return torch.from_numpy(np.ascontiguousarray(matrix, dtype=np.float32))


def matrix_key(matrix: Any) -> tuple:
    """Identity of a matrix: its file and dataset when backed (a new object on every ``.X`` access), else the object."""
    target = getattr(matrix, "group", matrix)  # anndata's backed sparse datasets wrap an h5py group
    file, name = getattr(target, "file", None), getattr(target, "name", None)
    if file is not None and isinstance(name, str):
        return ("file", str(getattr(file, "filename", file)), name, tuple(matrix.shape))
    return ("object", id(matrix))


def input_matrices(
    mdata: MuData,
    specs: Sequence[ClassifierInput],
    *,
    sample_key: str,
    options: CacheOptions,
    caches: RowCaches,
) -> list[Any]:
    """Each input's matrix: a float32 tensor in memory, or a sample-sorted disk cache read by row.

    Parameters
    ----------
    mdata
        The data.
    specs
        The inputs.
    sample_key
        obs column with the sample (a cache is sorted by it, so that a population is one region).
    options
        The choice between memory and cache (default: a cache for a backed matrix) and the cache's
        directory and dtype.
    caches
        Caches built earlier; a new one is added. A cache is built once per matrix and reused by later
        calls (and, in :func:`morphomu.tl.classify`, by the models of every seed and fold).

    Returns
    -------
    One float32 tensor or :class:`~morphomu.train._disk_cache.SourceRows` view per input.
    """
    out: list[Any] = []
    for s in specs:
        adata = mdata.mod[s.mod]
        matrix = rep_matrix(adata, s.rep)
        if not use_disk_cache(matrix, adata.n_obs, in_memory=options.in_memory):
            out.append(as_tensor(matrix))
            continue
        key = (*matrix_key(matrix), options.cache_dtype)
        if key not in caches:
            samples = obs_column(mdata, s, sample_key)
            codes = pd.Index(sorted(set(samples))).get_indexer(samples)
            cache = RowCache.build(matrix, codes, dtype=options.cache_dtype, directory=options.cache_dir)
            caches[key] = (matrix, cache)  # the matrix keeps an id() key valid
        out.append(caches[key][1].by_source_row())
    return out


def split_examples(
    mdata: MuData,
    specs: Sequence[ClassifierInput],
    split: str,
    tensors: list[Any],
    *,
    keys: Mapping[str, str],
    classes: Sequence[str],
    exclude: Sequence[str],
    anchor: int,
    k: int,
    warn: bool = True,
) -> tuple[ExampleSet, pd.Index, np.ndarray]:
    """The examples of one split, with the sample names and the anchor input's obs names of the examples.

    Warnings name the caller of the model method that called :meth:`TreatmentClassifier._examples`.

    Parameters
    ----------
    mdata
        The data.
    specs
        The inputs.
    split
        Split label.
    tensors
        Each input's matrix (:func:`input_matrices`).
    keys
        The registered obs columns: ``treatment_key``, ``sample_key`` and ``split_key``.
    classes
        The model's classes; cells of other treatments are left out.
    exclude
        Treatments that are not classes (left out without a warning).
    anchor
        Index of the anchor input (its cells enumerate the examples).
    k
        Cells per example and input.
    warn
        Warn about cells left out (unknown treatments, samples missing from an input).
    """
    samples_per_input, treatments_per_input, keep_per_input = [], [], []
    for s in specs:
        split_values = obs_column(mdata, s, keys["split_key"])
        treatment = obs_column(mdata, s, keys["treatment_key"])
        in_split = split_values == split
        keep = in_split & np.isin(treatment, classes)
        if warn:
            unseen = sorted(set(treatment[in_split]) - set(classes) - set(exclude))
            if unseen:
                warnings.warn(
                    f"mdata.mod[{s.mod!r}] split {split!r}: cells of {unseen[:5]} (obs[{keys['treatment_key']!r}]) are "
                    "not classes of this model (absent from the train split) and are left out.",
                    MorphomuWarning,
                    stacklevel=4,
                )
        samples_per_input.append(obs_column(mdata, s, keys["sample_key"]))
        treatments_per_input.append(treatment)
        keep_per_input.append(keep)
    names = pd.Index(
        sorted(set().union(*(set(sm[kp]) for sm, kp in zip(samples_per_input, keep_per_input, strict=True))))
    )
    if len(names) == 0:
        msg = f"no cells of the model's classes in split {split!r} of {[s.mod for s in specs]}."
        raise ContractError(msg)
    class_index = pd.Index(classes)
    sample_labels = np.full(len(names), -1, dtype=np.int64)
    pools = []
    for s, sm, tg, kp, data in zip(
        specs, samples_per_input, treatments_per_input, keep_per_input, tensors, strict=True
    ):
        rows = np.flatnonzero(kp)
        codes = names.get_indexer(sm[rows])
        labels = class_index.get_indexer(tg[rows])
        first = np.full(len(names), -1, dtype=np.int64)
        first[codes[::-1]] = labels[::-1]  # one label per sample; check they all agree
        mixed = (first[codes] != labels) | ((sample_labels[codes] >= 0) & (sample_labels[codes] != labels))
        if mixed.any():
            bad = names[codes[np.flatnonzero(mixed)[0]]]
            msg = (
                f"sample {bad!r} (obs[{keys['sample_key']!r}]) has more than one value of obs[{keys['treatment_key']!r}] "
                f"across mdata.mod[{s.mod!r}] and the other inputs; a sample must have one treatment."
            )
            raise ContractError(msg)
        sample_labels = np.where(first >= 0, first, sample_labels)
        pools.append(SamplePools.build(data, rows, codes, len(names)))
    anchor_rows = np.flatnonzero(keep_per_input[anchor])
    anchor_codes = names.get_indexer(samples_per_input[anchor][anchor_rows])
    ok = np.ones(anchor_rows.size, dtype=bool)
    for i, pool in enumerate(pools):
        if i != anchor:
            ok &= pool.counts.numpy()[anchor_codes] > 0
    if not ok.all():
        lacking = sorted(set(names[anchor_codes[~ok]]))
        if not ok.any():
            msg = f"no sample of split {split!r} has cells in every input modality {[s.mod for s in specs]}."
            raise ContractError(msg)
        if warn:
            warnings.warn(
                f"split {split!r}: samples {lacking[:5]} have no cells in some input modality; their "
                f"{int((~ok).sum())} {specs[anchor].mod!r} cells are left out.",
                MorphomuWarning,
                stacklevel=4,
            )
        anchor_rows, anchor_codes = anchor_rows[ok], anchor_codes[ok]
    examples = ExampleSet(
        pools,
        anchor=anchor,
        anchor_rows=torch.from_numpy(anchor_rows.astype(np.int64)),
        example_samples=torch.from_numpy(anchor_codes.astype(np.int64)),
        sample_labels=torch.from_numpy(sample_labels),
        k=k,
    )
    return examples, names, mdata.mod[specs[anchor].mod].obs_names.to_numpy()[anchor_rows]
