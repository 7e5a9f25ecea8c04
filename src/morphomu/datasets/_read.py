"""Reading the scGeneScope release (its embedding files) into the morphomu MuData contract.

Layout read (the release's ``features`` tree)::

    {root}/features/imaging/{imaging}/round_{r}.h5ad   features in .X            (ViT-L: 5120-d)
    {root}/features/rnaseq/{rnaseq}/round_{r}.h5ad     features in .obsm['scGPT'] (scGPT: 512-d)

Two ways to hold the result:

- in memory: every round of a modality is read straight into one preallocated array (no second copy,
  no concatenation peak), the imaging features go to ``.obsm['X_vit']`` and the scGPT embedding to
  ``.obsm['X_scgpt']``;
- backed: a small ``.h5mu`` *index* is written that holds the annotations (obs, var) and, for every
  matrix, an HDF5 virtual dataset that maps the rows of all rounds onto the release files. mudata
  opens the index in backed mode, so ``.X`` is an on-disk dataset served from the release files and
  nothing reads the matrices until they are sliced.
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from .. import _constants as C
from .._errors import ContractError, MorphomuError, MorphomuWarning
from .._io import atomic_path, check_writable, is_morphomu_output
from .._mudata import no_pull_on_update
from .._uns import store

if TYPE_CHECKING:
    import h5py
    from anndata import AnnData
    from mudata import MuData

__all__ = ["read_scgenescope"]

#: obs columns of the release that the reader uses.
SAMPLE_ID_COL = "Sample_ID"
TREATMENT_COL = "Treatment"
REPLICATE_COL = "Replicate"
GROUP_COL = "Group"
REQUIRED_COLS = (SAMPLE_ID_COL, TREATMENT_COL, REPLICATE_COL)

#: Where the release keeps the scGPT embedding of each RNA cell.
RELEASE_RNA_KEY = "scGPT"

#: Spellings of the control the reader recognises in ``Treatment`` or ``Group`` (compared after
#: stripping whitespace and lower-casing); all are written as :data:`morphomu._constants.CONTROL`.
CONTROL_SPELLINGS = frozenset(
    {
        "dmso",
        "control",
        "ctrl",
        "vehicle",
        "dmso control",
        "control (dmso)",
        "negative control",
        "neg_control",
    }
)

#: Canonical obs columns the reader adds (the release's own columns are kept unchanged beside them).
CANONICAL_COLS = (C.SAMPLE_KEY, C.TREATMENT_KEY, C.REPLICATE_KEY, C.ROUND_KEY, C.SMILES_KEY)

#: File-name start of the backed indexes morphomu writes in ``{root}/morphomu/``.
INDEX_PREFIX = "index__"

#: Bytes densified at a time when a release file stores its features sparse (bounded extra memory).
_COPY_BYTES = 64 * 2**20

_REPLICATE_RE = re.compile(r"^[^\d]*?(\d+)$")


@dataclass(frozen=True)
class _Modality:
    """One modality of the release: which files, where their features are, where they go."""

    mod: str
    kind: str  # 'imaging' | 'rnaseq' (the folder under features/)
    embedding: str
    feature_key: str | None  # None: the file's .X; else an .obsm key of the file
    rep: str  # the contract's .obsm key for the features

    def path(self, root: Path, round_: int) -> Path:
        return root / "features" / self.kind / Path(*self.embedding.split("/")) / f"round_{round_}.h5ad"

    def feature_where(self) -> str:
        return ".X" if self.feature_key is None else f".obsm[{self.feature_key!r}]"


@dataclass(frozen=True)
class _Matrix:
    """What a matrix element of an .h5ad file is, without reading it."""

    name: str  # path inside the file: 'X' or 'obsm/scGPT'
    encoding: str  # 'dense' | 'csr_matrix' | 'csc_matrix'
    shape: tuple[int, int]
    dtype: np.dtype


@dataclass
class _RoundFile:
    """One release file, its obs and var read, its matrices described."""

    path: Path
    round: int
    obs: pd.DataFrame  # original columns, index = prefixed obs_names
    var: pd.DataFrame
    features: _Matrix
    x: _Matrix | None  # the file's .X when it is not the features (RNA counts), else None
    canonical: dict[str, np.ndarray] = field(default_factory=dict)


# --- arguments ----------------------------------------------------------------------------------


def _check_args(
    root: Any, imaging: Any, rnaseq: Any, rounds: Any, backed: Any
) -> tuple[Path, list[_Modality], list[int], bool]:
    if not isinstance(root, str | os.PathLike):
        msg = f"root must be a path to the scGeneScope release (str or Path), got {type(root).__name__}."
        raise ContractError(msg)
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        msg = f"root={str(root)!r} is not a directory; expected the scGeneScope release (holding features/)."
        raise ContractError(msg)
    for arg, value in (("imaging", imaging), ("rnaseq", rnaseq)):
        if value is not None and (not isinstance(value, str) or not value.strip("/")):
            msg = f"{arg} must be an embedding folder under features/ (e.g. 'imagenet/vit-l') or None, got {value!r}."
            raise ContractError(msg)
    if imaging is None and rnaseq is None:
        msg = "imaging and rnaseq are both None; name at least one modality to read."
        raise ContractError(msg)
    if isinstance(rounds, int | np.integer):
        rounds = (rounds,)
    if (
        not isinstance(rounds, Sequence)
        or isinstance(rounds, str)
        or not rounds
        or not all(isinstance(r, int | np.integer) and not isinstance(r, bool) and r > 0 for r in rounds)
    ):
        msg = f"rounds must be a non-empty sequence of positive round numbers, e.g. (1, 2); got {rounds!r}."
        raise ContractError(msg)
    if len(set(rounds)) != len(rounds):
        msg = f"rounds={tuple(rounds)!r} repeats a round."
        raise ContractError(msg)
    if backed in (None, False):
        is_backed = False
    elif backed in (True, "r"):
        is_backed = True
    else:
        msg = (
            f"backed={backed!r} is not supported; use False (load into memory) or 'r' (read-only, matrices on "
            "disk). 'r+' is refused because the on-disk matrices are the release files themselves."
        )
        raise ContractError(msg)
    mods = []
    if imaging is not None:
        mods.append(_Modality(C.IMAGE_MOD, "imaging", imaging.strip("/"), None, C.IMAGE_REP))
    if rnaseq is not None:
        mods.append(_Modality(C.RNA_MOD, "rnaseq", rnaseq.strip("/"), RELEASE_RNA_KEY, C.RNA_REP))
    return root, mods, sorted(int(r) for r in rounds), is_backed


# --- reading one file's metadata ------------------------------------------------------------------


def _describe(f: h5py.File, name: str, path: Path) -> _Matrix | None:
    """Describe the matrix ``name`` of an open .h5ad file, or return None if it is absent or empty."""
    import h5py

    if name not in f:
        return None
    elem = f[name]
    if isinstance(elem, h5py.Dataset):
        if elem.shape is None:  # h5py.Empty: anndata writes this for X=None
            return None
        encoding, shape, dtype = "dense", tuple(elem.shape), elem.dtype
    else:
        encoding = str(elem.attrs.get("encoding-type", ""))
        if encoding not in ("csr_matrix", "csc_matrix"):
            msg = f"{path}: /{name} is a group of encoding {encoding!r}; expected a dense or sparse (CSR/CSC) matrix."
            raise ContractError(msg)
        shape, dtype = tuple(int(s) for s in elem.attrs["shape"]), elem["data"].dtype
    if len(shape) != 2:
        msg = f"{path}: /{name} must be 2-d (cells x features), found shape {shape}."
        raise ContractError(msg)
    if dtype.kind not in "biuf":
        msg = f"{path}: /{name} must hold numbers, found dtype {dtype}."
        raise ContractError(msg)
    return _Matrix(name, encoding, shape, np.dtype(dtype))


@contextlib.contextmanager
def _release_file(path: Path) -> Iterator[h5py.File]:
    """Open a release file read-only; an HDF5 read error (a truncated or corrupt file) names the file.

    h5py raises ``OSError`` for a file it cannot open or read (not HDF5, truncated: the superblock's
    end-of-file lies past the file's end) and ``KeyError("Unable to ...")`` for an object whose header is
    damaged; both would otherwise surface as bare tracebacks that do not say which of the files is bad.
    """
    import h5py

    try:
        with h5py.File(path, "r") as f:
            yield f
    except (OSError, KeyError) as e:
        if isinstance(e, KeyError) and "Unable to" not in str(e):  # not an HDF5 read error
            raise
        detail = str(e.args[0] if isinstance(e, KeyError) and e.args else e)
        msg = (
            f"{path} is not a readable HDF5 file ({type(e).__name__}: {detail}); the release file is truncated "
            "or corrupt (an interrupted download?): download it again."
        )
        raise MorphomuError(msg) from e


def _read_round_file(modality: _Modality, path: Path, round_: int) -> _RoundFile:
    from anndata.io import read_elem

    with _release_file(path) as f:
        for key in ("obs", "var"):
            if key not in f:
                msg = f"{path} has no /{key}; expected an AnnData (.h5ad) file of the scGeneScope release."
                raise ContractError(msg)
        obs = read_elem(f["obs"])
        var = read_elem(f["var"])
        feature_name = "X" if modality.feature_key is None else f"obsm/{modality.feature_key}"
        features = _describe(f, feature_name, path)
        if features is None:
            have = sorted(f["obsm"].keys()) if "obsm" in f else []
            msg = (
                f"{path} has no {modality.feature_where()} (the {modality.embedding} features of {modality.kind})"
                + (f"; its .obsm keys are {have}." if modality.feature_key is not None else ".")
            )
            raise ContractError(msg)
        x = _describe(f, "X", path) if modality.feature_key is not None else None
    if features.shape[0] != len(obs):
        msg = f"{path}: {modality.feature_where()} has {features.shape[0]} rows but obs has {len(obs)} cells."
        raise ContractError(msg)
    if modality.feature_key is None and features.shape[1] != len(var):
        msg = f"{path}: .X has {features.shape[1]} columns but var has {len(var)} rows."
        raise ContractError(msg)
    missing = [c for c in REQUIRED_COLS if c not in obs.columns]
    if missing:
        msg = f"{path}: obs has no column {missing[0]!r}; expected {list(REQUIRED_COLS)}, found {list(obs.columns)}."
        raise ContractError(msg)
    clash = [c for c in CANONICAL_COLS if c in obs.columns]
    if clash:
        msg = (
            f"{path}: obs already has column {clash[0]!r}, which the reader adds (canonical columns "
            f"{list(CANONICAL_COLS)}); the release's own columns are kept unchanged, so they must not clash."
        )
        raise ContractError(msg)
    names = pd.Index(obs.index.astype(str))
    if not names.is_unique:
        from anndata.utils import make_index_unique

        dup = names[names.duplicated()].unique()[:3].tolist()
        warnings.warn(
            f"{path}: obs_names are not unique (e.g. {dup}); made unique by appending '-1', '-2', ...",
            MorphomuWarning,
            stacklevel=3,
        )
        names = make_index_unique(names)
    obs.index = pd.Index([f"{modality.mod}-r{round_}-{n}" for n in names], dtype=object)
    var.index = var.index.astype(str)
    rf = _RoundFile(path, round_, obs, var, features, x)
    rf.canonical = _canonical(rf)
    return rf


# --- canonical obs columns --------------------------------------------------------------------------


def _normalised(values: pd.Series) -> pd.Series:
    return values.astype(str).str.strip().str.lower()


def _canonical(rf: _RoundFile) -> dict[str, np.ndarray]:
    """The canonical columns of one file, as plain arrays (categoricals are made after concatenation)."""
    obs = rf.obs
    for col in REQUIRED_COLS:
        n_missing = int(obs[col].isna().sum())
        if n_missing:
            msg = f"{rf.path}: obs[{col!r}] has {n_missing} missing values."
            raise ContractError(msg)
    treatment = obs[TREATMENT_COL].astype(str).str.strip()
    is_control = _normalised(obs[TREATMENT_COL]).isin(CONTROL_SPELLINGS)
    if GROUP_COL in obs.columns:
        group_control = _normalised(obs[GROUP_COL]).isin(CONTROL_SPELLINGS) & obs[GROUP_COL].notna()
        conflict = group_control & treatment.isin(C.SCGENESCOPE_COMPOUNDS)
        if conflict.any():
            pairs = sorted(
                set(zip(obs.loc[conflict, GROUP_COL].astype(str), treatment[conflict], strict=True))
            )
            msg = (
                f"{rf.path}: obs[{GROUP_COL!r}] marks {int(conflict.sum())} cells as the control whose "
                f"obs[{TREATMENT_COL!r}] names a compound, e.g. (Group, Treatment) = {pairs[:3]}."
            )
            raise ContractError(msg)
        is_control |= group_control
    treatment = treatment.where(~is_control, C.CONTROL)

    replicate = _replicates(obs[REPLICATE_COL], rf.path)
    expected = C.SCGENESCOPE_REPLICATES.get(rf.round)
    if expected is not None:
        stray = sorted(set(replicate.tolist()) - set(expected))
        if stray:
            warnings.warn(
                f"{rf.path}: replicates {stray} are not in round {rf.round} of the scGeneScope layout "
                f"(replicates {list(expected)}); kept as they are, but the canonical split will not place them.",
                MorphomuWarning,
                stacklevel=4,
            )
    return {
        C.SAMPLE_KEY: obs[SAMPLE_ID_COL].astype(str).str.strip().to_numpy(dtype=object),
        C.TREATMENT_KEY: treatment.to_numpy(dtype=object),
        C.REPLICATE_KEY: replicate,
        C.ROUND_KEY: np.full(len(obs), rf.round, dtype=np.int64),
    }


def _replicates(values: pd.Series, path: Path) -> np.ndarray:
    """Whole replicate numbers from values such as 3, '3', 3.0 or 'Rep3'."""
    text = values.astype(str).str.strip()
    numeric = pd.to_numeric(text, errors="coerce")
    prefixed = pd.to_numeric(text.str.extract(_REPLICATE_RE, expand=False), errors="coerce")
    numeric = numeric.fillna(prefixed)
    bad = numeric.isna() | (numeric % 1 != 0)
    if bad.any():
        msg = (
            f"{path}: obs[{REPLICATE_COL!r}] must hold whole replicate numbers (e.g. 3, '3' or 'Rep3'); "
            f"found {sorted(text[bad].unique().tolist())[:5]}."
        )
        raise ContractError(msg)
    return numeric.to_numpy(dtype=np.int64)


def _categorical(values: np.ndarray, *, first: Sequence[Any] = ()) -> pd.Categorical:
    """Categorical with the categories in ``first`` (those present) leading, the rest sorted."""
    present = pd.unique(pd.Series(values).dropna())
    lead = [v for v in first if v in set(present)]
    rest = sorted(set(present) - set(lead))
    return pd.Categorical(values, categories=[*lead, *rest])


def _smiles(treatments: np.ndarray) -> pd.Categorical:
    """SMILES of each treatment from :func:`morphomu.datasets.compounds`; missing ones are NaN."""
    from ._compounds import compounds

    table = compounds()
    known = table[C.SMILES_KEY].dropna().astype(str)
    known = known[known.str.len() > 0]
    mapping = dict(zip(known.index.astype(str), known, strict=True))
    return _categorical(np.array([mapping.get(t) for t in treatments], dtype=object))


# --- checks across files -------------------------------------------------------------------------------


def _check_rounds_agree(modality: _Modality, files: list[_RoundFile]) -> None:
    first = files[0]
    for rf in files[1:]:
        if rf.features.shape[1] != first.features.shape[1]:
            msg = (
                f"{modality.mod}: {modality.feature_where()} has {first.features.shape[1]} features in {first.path} "
                f"but {rf.features.shape[1]} in {rf.path}; the rounds must agree."
            )
            raise ContractError(msg)
        if (first.x is None) != (rf.x is None) or (
            first.x is not None and rf.x is not None and first.x.encoding != rf.x.encoding
        ):
            what = [("absent" if f.x is None else f.x.encoding) for f in (first, rf)]
            msg = f"{modality.mod}: .X is {what[0]} in {first.path} but {what[1]} in {rf.path}; the rounds must agree."
            raise ContractError(msg)
        if not first.var.index.equals(rf.var.index):
            n_diff = len(first.var.index.symmetric_difference(rf.var.index))
            msg = (
                f"{modality.mod}: var_names differ between {first.path} and {rf.path} ({n_diff} names in only "
                "one of them, or a different order); the rounds must have the same features."
            )
            raise ContractError(msg)


def _check_samples(files: dict[str, list[_RoundFile]]) -> None:
    """Each sample is one treatment in one (round, replicate); warn about samples seen in one modality only."""
    frames = []
    for mod, mod_files in files.items():
        for rf in mod_files:
            frame = pd.DataFrame(
                {k: rf.canonical[k] for k in (C.SAMPLE_KEY, C.TREATMENT_KEY, C.ROUND_KEY, C.REPLICATE_KEY)}
            )
            frame["mod"] = mod
            frame["path"] = str(rf.path)
            frames.append(frame.drop_duplicates())
    units = pd.concat(frames, ignore_index=True)
    per_sample = units.drop_duplicates([C.SAMPLE_KEY, C.TREATMENT_KEY, C.ROUND_KEY, C.REPLICATE_KEY])
    ambiguous = per_sample[per_sample[C.SAMPLE_KEY].duplicated(keep=False)]
    if len(ambiguous):
        sample = ambiguous[C.SAMPLE_KEY].iloc[0]
        rows = units[units[C.SAMPLE_KEY] == sample]
        seen = sorted({(r.treatment, int(r.round), int(r.replicate), r.path) for r in rows.itertuples()})
        msg = (
            f"obs[{SAMPLE_ID_COL!r}] value {sample!r} (and {ambiguous[C.SAMPLE_KEY].nunique() - 1} others) names cells "
            f"of several (treatment, round, replicate): {seen[:4]}. The contract pairs modalities by sample, so a "
            "sample must be one treatment in one replicate."
        )
        raise ContractError(msg)
    if len(files) == 2:
        by_mod = {mod: set(units.loc[units["mod"] == mod, C.SAMPLE_KEY]) for mod in files}
        only = {
            mod: sorted(by_mod[mod] - set().union(*(v for m, v in by_mod.items() if m != mod)))
            for mod in by_mod
        }
        if any(only.values()):
            detail = "; ".join(f"{len(v)} only in {m!r} (e.g. {v[:3]})" for m, v in only.items() if v)
            warnings.warn(
                f"samples ({SAMPLE_ID_COL}) are not paired across modalities: {detail}. Tools that pair the "
                "modalities by sample will use the shared samples only.",
                MorphomuWarning,
                stacklevel=3,
            )


def _check_treatments(treatments: np.ndarray, mod: str) -> None:
    unknown = sorted(set(treatments.tolist()) - set(C.SCGENESCOPE_CONDITIONS))
    if unknown:
        warnings.warn(
            f"mdata.mod[{mod!r}]: treatments {unknown[:5]}{' ...' if len(unknown) > 5 else ''} are not among the "
            "28 scGeneScope compounds or the control; kept as they are.",
            MorphomuWarning,
            stacklevel=3,
        )


# --- assembling a modality ------------------------------------------------------------------------------


def _annotations(modality: _Modality, files: list[_RoundFile]) -> AnnData:
    """One AnnData (no matrices) with the rounds' obs concatenated and the canonical columns added."""
    import anndata as ad

    parts = [ad.AnnData(obs=rf.obs, var=rf.var) for rf in files]
    adata = ad.concat(parts, axis=0, join="outer", merge="same") if len(parts) > 1 else parts[0]
    adata.obs.index.name = None
    canonical = {k: np.concatenate([rf.canonical[k] for rf in files]) for k in files[0].canonical}
    _check_treatments(canonical[C.TREATMENT_KEY], modality.mod)
    obs = adata.obs
    obs[C.SAMPLE_KEY] = _categorical(canonical[C.SAMPLE_KEY])
    obs[C.TREATMENT_KEY] = _categorical(canonical[C.TREATMENT_KEY], first=C.SCGENESCOPE_CONDITIONS)
    obs[C.REPLICATE_KEY] = _categorical(canonical[C.REPLICATE_KEY])
    obs[C.ROUND_KEY] = _categorical(canonical[C.ROUND_KEY])
    obs[C.SMILES_KEY] = _smiles(canonical[C.TREATMENT_KEY])
    return adata


def _copy_rows(f: h5py.File, matrix: _Matrix, out: np.ndarray, offset: int) -> None:
    """Copy a file's matrix into ``out[offset:]`` without a second copy of it.

    HDF5 reads dense rows straight into ``out``; sparse matrices are densified in row blocks of about
    :data:`_COPY_BYTES` (the only extra memory).
    """
    from anndata.io import sparse_dataset

    elem = f[matrix.name]
    n = matrix.shape[0]
    if matrix.encoding == "dense":
        if n:
            elem.read_direct(out, source_sel=np.s_[0:n], dest_sel=np.s_[offset : offset + n])
        return
    source = sparse_dataset(elem)
    step = max(1, _COPY_BYTES // max(1, matrix.shape[1] * out.itemsize))
    for start in range(0, n, step):
        stop = min(start + step, n)
        out[offset + start : offset + stop] = source[start:stop].toarray()


def _read_features(files: list[_RoundFile]) -> np.ndarray:
    """The rounds' features, read straight into one preallocated array (no concatenation copy)."""
    n_obs = sum(rf.features.shape[0] for rf in files)
    dtype = np.result_type(*(rf.features.dtype for rf in files))
    features = np.empty((n_obs, files[0].features.shape[1]), dtype=dtype)
    offset = 0
    for rf in files:
        with _release_file(rf.path) as f:
            _copy_rows(f, rf.features, features, offset)
        offset += rf.features.shape[0]
    return features


def _load_modality(modality: _Modality, files: list[_RoundFile]) -> AnnData:
    """In memory: features to ``.obsm[rep]``, the file's other ``.X`` (RNA counts) to ``.X``."""
    from anndata.io import read_elem
    from scipy import sparse

    adata = _annotations(modality, files)
    adata.obsm[modality.rep] = _read_features(files)
    xs = []
    for rf in files:
        if rf.x is not None:
            with _release_file(rf.path) as f:
                xs.append(read_elem(f["X"]))
    if xs:
        if sparse.issparse(xs[0]):
            adata.X = sparse.vstack(xs, format=xs[0].format)
        else:
            adata.X = np.concatenate(xs, axis=0)
    return adata


def _virtual(
    group: h5py.Group, name: str, sources: list[tuple[Path, str, tuple[int, ...]]], dtype: np.dtype
) -> None:
    """A virtual dataset ``group[name]`` that stacks the datasets ``(file, path, shape)`` along axis 0."""
    import h5py

    shape = (sum(s[0] for _, _, s in sources), *sources[0][2][1:])
    layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
    offset = 0
    for path, elem, src_shape in sources:
        layout[offset : offset + src_shape[0]] = h5py.VirtualSource(str(path), elem, shape=src_shape)
        offset += src_shape[0]
    # a release file that moves later reads as NaN (floats), which check_rep's finite check reports
    fill = np.nan if np.dtype(dtype).kind == "f" else 0
    group.create_virtual_dataset(name, layout, fillvalue=fill)


def _link_matrix(group: h5py.Group, name: str, files: list[_RoundFile], which: str) -> None:
    """Write ``group[name]`` as a view of the rounds' matrices (``which``: 'features' or 'x') in anndata's encoding."""
    matrices = [getattr(rf, which) for rf in files]
    first = matrices[0]
    dtypes = {m.dtype for m in matrices}
    if len(dtypes) > 1:
        msg = (
            f"{first.name} has dtypes {sorted(map(str, dtypes))} across {[str(rf.path) for rf in files]}; backed "
            "reading stacks the files as they are, so they must agree (use backed=False to convert)."
        )
        raise ContractError(msg)
    n_rows = sum(m.shape[0] for m in matrices)
    if name in group:
        del group[name]
    if first.encoding == "dense":
        _virtual(
            group,
            name,
            [(rf.path, m.name, m.shape) for rf, m in zip(files, matrices, strict=True)],
            first.dtype,
        )
        group[name].attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
        return
    if first.encoding != "csr_matrix":
        msg = (
            f"{files[0].path}: /{first.name} is stored as {first.encoding}; backed reading stacks rows and needs "
            "dense or CSR matrices (use backed=False)."
        )
        raise ContractError(msg)
    out = group.create_group(name)
    out.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0"})
    out.attrs["shape"] = np.array([n_rows, first.shape[1]], dtype=np.int64)
    indptrs, parts = [], {"data": [], "indices": []}
    nnz = 0
    for rf, m in zip(files, matrices, strict=True):
        with _release_file(rf.path) as f:
            src = f[m.name]
            indptr = src["indptr"][:].astype(np.int64)  # n_rows + 1 integers: small, stored in the index
            for key in parts:
                parts[key].append((rf.path, f"{m.name}/{key}", src[key].shape, src[key].dtype))
        indptrs.append(indptr[1:] + nnz if indptrs else indptr + nnz)
        nnz += int(indptr[-1])
    out.create_dataset("indptr", data=np.concatenate(indptrs))
    for key, sources in parts.items():
        kinds = {s[3] for s in sources}
        if len(kinds) > 1:
            msg = f"/{first.name}/{key} has dtypes {sorted(map(str, kinds))} across the rounds; they must agree."
            raise ContractError(msg)
        _virtual(out, key, [(p, e, s) for p, e, s, _ in sources], sources[0][3])


def _index_path(root: Path, mods: list[_Modality], rounds: list[int]) -> Path:
    slug = "__".join(f"{m.mod}-{m.embedding.replace('/', '-')}" for m in mods)
    return root / "morphomu" / f"{INDEX_PREFIX}{slug}__rounds-{'-'.join(map(str, rounds))}.h5mu"


def _check_index_path(index_path: Any, root: Path, default: Path) -> tuple[Path, bool]:
    """The backed index's absolute path, checked before any work; and whether its place is morphomu's own.

    The index is rewritten on every call, so it may replace only an earlier index: never the release
    root or one of its files, a directory, a symbolic link or a file morphomu did not write. The default
    folder ``{root}/morphomu/`` is morphomu's own: an index there is replaced even without a marker.
    """
    index = (
        Path(os.path.normpath(Path(index_path).expanduser().absolute()))
        if index_path is not None
        else default
    )
    real = Path(os.path.realpath(index))
    own = root / "morphomu"
    in_release = real.is_relative_to(root) and not real.is_relative_to(own)
    if real == root or (in_release and real.exists() and not is_morphomu_output(real)):
        what = "the release root" if real == root else "a file of the scGeneScope release"
        msg = (
            f"index_path={str(index_path)!r} is {what} ({str(root)!r}); the index is rewritten on every call "
            f"and may replace only an earlier index. Pass a new file path, or leave index_path=None "
            f"(default: {str(default)!r})."
        )
        raise MorphomuError(msg)
    owned = index.parent == own and index.name.startswith(INDEX_PREFIX) and index.suffix == ".h5mu"
    check_writable(index, overwrite=True, arg="index_path", flag="read_scgenescope", kind="file", owned=owned)
    return index, owned


# --- the public function ------------------------------------------------------------------------------------


def read_scgenescope(
    root: str | os.PathLike,
    *,
    imaging: str | None = "imagenet/vit-l",
    rnaseq: str | None = "scgpt",
    rounds: Sequence[int] = (1, 2),
    backed: Literal["r"] | bool = False,
    index_path: str | os.PathLike | None = None,
) -> MuData:
    """Read the scGeneScope release (its embedding files) into a MuData that follows the morphomu contract.

    Reads ``{root}/features/imaging/{imaging}/round_{r}.h5ad`` (features in ``.X``) and
    ``{root}/features/rnaseq/{rnaseq}/round_{r}.h5ad`` (features in ``.obsm['scGPT']``) for every round,
    concatenates the rounds of each modality, and adds the canonical obs columns:

    ==============  ===========================================================================
    ``sample``       ``Sample_ID`` (the pairing key of the two modalities)
    ``treatment``    ``Treatment``, the control written ``'DMSO'`` (recognised in ``Treatment`` or
                     ``Group`` as e.g. ``'DMSO'``, ``'dmso'``, ``'CONTROL'``, ``'vehicle'``)
    ``replicate``    ``Replicate`` as a whole number (``'3'``, ``3`` and ``'Rep3'`` all give 3)
    ``round``        the round of the file name
    ``smiles``       from :func:`morphomu.datasets.compounds`; NaN (a missing categorical value,
                     written to ``.h5mu`` as such) for treatments the table does not know
    ==============  ===========================================================================

    All are categoricals (``replicate`` and ``round`` with integer categories). The release's own obs
    columns (``Sample_ID``, ``Treatment``, ``Replicate``, ``Group``, ``batch``, ``Seen``, ...) are kept
    unchanged. ``obs_names`` become ``'{mod}-r{round}-{original name}'`` (e.g. ``'img-r1-cell7'``), unique
    across rounds and modalities, so MuData never merges unrelated cells.

    Parameters
    ----------
    root
        The release folder (the one that holds ``features/``).
    imaging
        Imaging embedding folder under ``features/imaging/``; ``None`` skips the imaging modality.
    rnaseq
        RNA embedding folder under ``features/rnaseq/``; ``None`` skips the RNA modality.
    rounds
        Rounds to read, stacked in increasing order (round 1 holds replicates 3, 4, 5; round 2
        replicates 1, 2).
    backed
        ``False``: load into memory. The imaging features go to ``.obsm['X_vit']`` and ``.X`` stays empty
        (``None``; ``var`` still names the features), so the matrix exists once; the RNA embedding goes to
        ``.obsm['X_scgpt']`` (the release's ``.obsm['scGPT']`` is renamed, not copied) and the file's
        ``.X`` (if any) stays ``.X``. Each modality's rounds are read straight into one preallocated array.

        ``'r'``: backed, read-only. The imaging features stay in ``.X`` (use ``image_rep=None`` with the
        tools) and are never loaded: a small ``.h5mu`` index (see ``index_path``) holds obs and var and
        maps ``.X`` onto the release files with HDF5 virtual datasets; mudata opens it backed, so ``.X`` is
        an on-disk dataset read only when sliced. The RNA embedding is read into ``.obsm['X_scgpt']``
        (``.obsm`` is in memory even for backed data; 512 floats per cell) and RNA ``.X`` stays on disk.
        ``'r+'`` is refused: the on-disk matrices are the release files.
    index_path
        Where to write the index in backed mode. It holds obs, var and ``uns``, 8 bytes per RNA cell for a
        sparse ``.X``, and the mappings onto the release files; it is rewritten on every call, so open it
        through this function (reopened with :func:`mudata.read_h5mu` it lacks ``.obsm['X_scgpt']``).
        Default: ``{root}/morphomu/index__{modalities}__rounds-{rounds}.h5mu``. An existing file is replaced
        only if it is an index morphomu wrote (or lies in ``{root}/morphomu/``): the release root, its
        files, a directory, a symbolic link or another file are refused before anything is read. It
        refers to the release files by absolute path; if they move, their rows read as NaN (which :func:`morphomu.pp.validate`
        reports): read again. Ignored in memory.

    Returns
    -------
    A MuData with modalities ``'img'`` and/or ``'rna'``. The parameters and the files read are in
    ``mdata.uns['morphomu']['read_scgenescope']``.

    Raises
    ------
    ContractError
        Before anything is loaded: a missing file (the full path is named), a missing obs column or
        missing values in one (the column and the file are named), feature dimensions or ``var_names``
        that differ between the rounds, a sample that spans several treatments or replicates, or
        ``Group`` marking the control where ``Treatment`` names a compound.
    MorphomuError
        Backed, before anything is read: ``index_path`` is the release root or one of its files, a
        directory, a symbolic link, or a file that is not an index morphomu wrote. A release file that
        is not a readable HDF5 file (truncated or corrupt), naming the file.

    Warns
    -----
    MorphomuWarning
        Treatments outside the 28 compounds + control, replicates outside the release layout of their
        round, samples present in one modality only, duplicated cell names within a file.

    Examples
    --------
    >>> import morphomu as mm
    >>> mdata = mm.datasets.read_scgenescope("/data/scGeneScope")  # doctest: +SKIP
    >>> mm.pp.assign_split(mdata)  # doctest: +SKIP
    >>> big = mm.datasets.read_scgenescope("/data/scGeneScope", backed="r")  # doctest: +SKIP
    >>> big["img"].X  # an on-disk dataset; slice it to read rows  # doctest: +SKIP
    """
    import mudata

    root, mods, rounds, is_backed = _check_args(root, imaging, rnaseq, rounds, backed)
    index, owned = None, False
    if is_backed:  # before any work: the index may replace only an earlier index
        index, owned = _check_index_path(index_path, root, _index_path(root, mods, rounds))
    paths = {m.mod: [m.path(root, r) for r in rounds] for m in mods}
    missing = [str(p) for ps in paths.values() for p in ps if not p.is_file()]
    if missing:
        msg = f"missing release file(s): {missing}; expected features/{{imaging,rnaseq}}/<embedding>/round_<r>.h5ad under root."
        raise ContractError(msg)

    # read and check every file's annotations before any matrix is loaded
    files = {
        m.mod: [_read_round_file(m, p, r) for p, r in zip(paths[m.mod], rounds, strict=True)] for m in mods
    }
    for m in mods:
        _check_rounds_agree(m, files[m.mod])
    _check_samples(files)

    entry = {
        "params": {
            "root": str(root),
            "imaging": imaging,
            "rnaseq": rnaseq,
            "rounds": rounds,
            "backed": "r" if is_backed else False,
        },
        "files": {mod: [str(p) for p in ps] for mod, ps in paths.items()},
        "features": {
            m.mod: {
                "source": m.feature_where(),
                "key": "X" if is_backed and m.feature_key is None else m.rep,
                "n_features": files[m.mod][0].features.shape[1],
            }
            for m in mods
        },
    }
    if is_backed:
        entry["index_path"] = str(index)

    if not is_backed:
        with no_pull_on_update():
            mdata = mudata.MuData({m.mod: _load_modality(m, files[m.mod]) for m in mods})
        store(mdata, "read_scgenescope", entry, tool="read_scgenescope")
        return mdata

    import h5py

    with no_pull_on_update():
        skeleton = mudata.MuData({m.mod: _annotations(m, files[m.mod]) for m in mods})
    store(skeleton, "read_scgenescope", entry, tool="read_scgenescope")
    try:
        with atomic_path(
            index, overwrite=True, arg="index_path", flag="read_scgenescope", kind="file", owned=owned
        ) as tmp:
            skeleton.write_h5mu(tmp)
            with h5py.File(tmp, "a") as f:
                for m in mods:
                    group = f["mod"][m.mod]
                    if m.feature_key is None:  # imaging: the features are .X
                        _link_matrix(group, "X", files[m.mod], "features")
                    elif files[m.mod][0].x is not None:  # RNA: the file's .X (counts) stays .X
                        _link_matrix(group, "X", files[m.mod], "x")
    except OSError as e:
        msg = f"cannot write the backed index to index_path={str(index)!r} ({e}); pass a writable index_path."
        raise ContractError(msg) from None
    with no_pull_on_update():
        mdata = mudata.read_h5mu(index, backed="r")
    # .obsm is in memory even when backed. It is read here rather than mapped in the index: mudata reads
    # .obsm through a Python file object, and HDF5 cannot open a virtual dataset's source files that way.
    for m in mods:
        if m.feature_key is not None:
            mdata.mod[m.mod].obsm[m.rep] = _read_features(files[m.mod])
    return mdata
