"""Shared core of morphomu: what several subpackages need, in one place, so none imports another's internals.

Only numpy, pandas and scipy are imported here; RDKit, Lightning and scvi-tools are imported inside the
functions that use them, so ``import morphomu`` stays fast.
"""

from __future__ import annotations

from ._arrays import CHUNK_ROWS, expression_rows, group_means, read_rows, rep_matrix
from ._channels import channel_names
from ._chemistry import (
    COMPOUND_METHODS,
    check_method,
    featurize,
    featurize_smiles,
    fingerprints,
    inchikey,
    parent_mol,
    parent_smiles,
)
from ._precision import (
    PRECISION_ENV,
    PRECISIONS,
    autocast,
    check_precision,
    cpu_has_fast_bf16,
    resolve_precision,
)
from ._quiet import quiet_lightning
from ._random import (
    SPLIT_STREAM_BASE,
    Stream,
    cell_keys,
    keyed_normal,
    keyed_seed,
    keyed_uniform,
    sample_hash,
    sample_hashes,
    split_stream,
    step_stream,
)
from ._registry import (
    FIELD_REGISTRIES_KEY,
    MODEL_NAME_KEY,
    SCVI_VERSION_KEY,
    SETUP_ARGS_KEY,
    SETUP_METHOD_NAME_KEY,
)
from ._renamed import renamed_arguments, translate_renamed
from ._standardize import Standardizer

__all__ = [
    "CHUNK_ROWS",
    "FIELD_REGISTRIES_KEY",
    "COMPOUND_METHODS",
    "MODEL_NAME_KEY",
    "SCVI_VERSION_KEY",
    "SETUP_ARGS_KEY",
    "SETUP_METHOD_NAME_KEY",
    "SPLIT_STREAM_BASE",
    "Standardizer",
    "Stream",
    "cell_keys",
    "channel_names",
    "check_method",
    "expression_rows",
    "featurize",
    "featurize_smiles",
    "fingerprints",
    "group_means",
    "inchikey",
    "keyed_normal",
    "keyed_seed",
    "keyed_uniform",
    "parent_mol",
    "parent_smiles",
    "quiet_lightning",
    "PRECISION_ENV",
    "PRECISIONS",
    "autocast",
    "check_precision",
    "cpu_has_fast_bf16",
    "resolve_precision",
    "renamed_arguments",
    "translate_renamed",
    "read_rows",
    "rep_matrix",
    "sample_hash",
    "sample_hashes",
    "split_stream",
    "step_stream",
]
