"""Checks of arguments and of data against the MuData contract, shared by every public function.

Every check runs before any work starts. Data checks raise :class:`~morphomu.ContractError` naming the
argument, the modality, the key and what was expected; argument checks (sizes, rates, fractions, memory)
raise :class:`~morphomu.MorphomuError` naming the argument, the value and what was expected. Nothing
here modifies the data.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import sparse

from . import _constants as C
from ._core import CHUNK_ROWS, rep_matrix
from ._errors import ContractError, MorphomuError

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData


# ---------------------------------------------------------------------------------------------------
# scalar arguments: sizes, rates, fractions, diffusion steps, memory
# ---------------------------------------------------------------------------------------------------
def _type_name(value: Any) -> str:
    return type(value).__name__


def check_int(
    value: Any,
    arg: str,
    *,
    minimum: int | None = 1,
    maximum: int | None = None,
    why: str = "",
    error: type[MorphomuError] = MorphomuError,
) -> int:
    """Return ``value`` as an ``int``, raising unless it is an integer in ``[minimum, maximum]``.

    A Python ``int`` or a numpy integer; ``bool``, ``str`` and ``float`` (even ``64.0``) are refused, so
    a size read from a config file as text or computed as a float is caught here rather than deep in
    torch.

    Parameters
    ----------
    value
        The argument's value.
    arg
        The argument's name, as the user wrote it.
    minimum, maximum
        Inclusive bounds; ``None`` for none.
    why
        Appended to the expectation, e.g. ``' (one cell per sample)'``.
    error
        The error class raised (:class:`~morphomu.ContractError` where a function documents it).

    Returns
    -------
    The value as a Python ``int``.
    """
    if minimum is not None and maximum is not None:
        expected = f"an integer between {minimum} and {maximum}"
    elif minimum == 1:
        expected = "a positive integer"
    elif minimum == 0:
        expected = "a non-negative integer"
    elif minimum is not None:
        expected = f"an integer >= {minimum}"
    elif maximum is not None:
        expected = f"an integer <= {maximum}"
    else:
        expected = "an integer"
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        msg = f"{arg} must be {expected}{why}, got {value!r} of type {_type_name(value)} (pass an int)."
        raise error(msg)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        msg = f"{arg} must be {expected}{why}, got {value}."
        raise error(msg)
    return int(value)


def check_positive_int(value: Any, arg: str, *, error: type[MorphomuError] = MorphomuError) -> int:
    """Return ``value`` as an ``int``, raising unless it is an integer >= 1 (see :func:`check_int`)."""
    return check_int(value, arg, minimum=1, error=error)


def check_nonnegative_int(value: Any, arg: str, *, error: type[MorphomuError] = MorphomuError) -> int:
    """Return ``value`` as an ``int``, raising unless it is an integer >= 0 (see :func:`check_int`)."""
    return check_int(value, arg, minimum=0, error=error)


def check_number(
    value: Any,
    arg: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    error: type[MorphomuError] = MorphomuError,
) -> float:
    """Return ``value`` as a ``float``, raising unless it is a finite real number within the bounds.

    Parameters
    ----------
    value
        The argument's value (a Python or numpy number; not ``bool`` or ``str``).
    arg
        The argument's name.
    low, high
        Bounds; ``None`` for none.
    low_open, high_open
        Exclude the bound itself (``lr > 0`` is ``low=0, low_open=True``).
    error
        The error class raised.

    Returns
    -------
    The value as a Python ``float``.
    """
    if low is not None and high is not None:
        expected = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        expected = f"a finite number {'>' if low_open else '>='} {low:g}"
    elif high is not None:
        expected = f"a finite number {'<' if high_open else '<='} {high:g}"
    else:
        expected = "a finite number"
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        msg = f"{arg} must be {expected}, got {value!r} of type {_type_name(value)}."
        raise error(msg)
    x = float(value)
    if (
        not math.isfinite(x)
        or (low is not None and (x <= low if low_open else x < low))
        or (high is not None and (x >= high if high_open else x > high))
    ):
        msg = f"{arg} must be {expected}, got {value!r}."
        raise error(msg)
    return x


def check_positive(value: Any, arg: str, *, error: type[MorphomuError] = MorphomuError) -> float:
    """Return ``value`` as a ``float``, raising unless it is a finite number > 0 (a learning rate, a scale)."""
    return check_number(value, arg, low=0.0, low_open=True, error=error)


def check_nonnegative(value: Any, arg: str, *, error: type[MorphomuError] = MorphomuError) -> float:
    """Return ``value`` as a ``float``, raising unless it is a finite number >= 0 (a weight decay, a KL weight)."""
    return check_number(value, arg, low=0.0, error=error)


def check_fraction(value: Any, arg: str, *, error: type[MorphomuError] = MorphomuError) -> float:
    """Return ``value`` as a ``float``, raising unless ``0 <= value < 1`` (a dropout or drop probability)."""
    return check_number(value, arg, low=0.0, high=1.0, high_open=True, error=error)


def optional(check: Callable[[Any, str], Any]) -> Callable[[Any, str], Any]:
    """``check`` that also accepts ``None`` (an argument whose ``None`` means a default)."""

    def checked(value: Any, arg: str) -> Any:
        return None if value is None else check(value, arg)

    return checked


def check_args(values: Mapping[str, Any], checks: Mapping[Any, Callable[..., Any]]) -> dict[str, Any]:
    """Run ``checks[name](value, name)`` for every ``name -> value`` of ``values`` that has a check.

    A model keeps one table of checks per method and runs it first thing; the tools that forward keyword
    arguments to that method (``train_kwargs``, ``**generate_kwargs``) run the same table on them before
    they start any work. Names without a check are left to the method. A key that is a tuple of names
    checks those arguments together (e.g. ``n_steps`` against ``sampler``): after the single checks, its
    check gets the checked values of the names given (a dict; a missing one is the method's default).

    Returns
    -------
    The checked values (``int`` / ``float``), by name.
    """
    out = {name: checks[name](value, name) for name, value in values.items() if name in checks}
    for names, check in checks.items():
        if isinstance(names, tuple) and any(n in values for n in names):
            check({n: out.get(n, values[n]) for n in names if n in values})
    return out


def max_diffusion_steps() -> int:
    """The number of training timesteps of morphomu's noise schedule: the most sampling steps there can be."""
    from .module._diffusion import SCHEDULER_CONFIG  # no torch / diffusers import

    return int(SCHEDULER_CONFIG["num_train_timesteps"])


def check_n_steps(value: Any, arg: str = "n_steps") -> int:
    """Return the number of diffusion sampling steps, raising unless ``1 <= value <= T``.

    ``T`` is the scheduler's number of training timesteps (:func:`max_diffusion_steps`, 1000): DDIM
    samples a subset of them, so more steps than that do not exist.
    """
    t = max_diffusion_steps()
    return check_int(value, arg, minimum=1, maximum=t, why=f" (the noise schedule has {t} timesteps)")


def check_sampler(value: Any, arg: str = "sampler") -> str:
    """Return the name of a diffusion sampler, raising unless it is one of ``'ddim'``, ``'dpmsolver++'``, ``'unipc'``."""
    from .module._diffusion import SAMPLERS  # no torch / diffusers import

    if not isinstance(value, str) or value not in SAMPLERS:
        msg = (
            f"{arg}={value!r}: expected one of {list(SAMPLERS)} ('ddim': the papers' sampler; the others are "
            "deterministic multistep solvers for fewer steps)."
        )
        raise MorphomuError(msg)
    return value


def sampler_steps_check(family: str) -> Callable[[Mapping[str, Any]], None]:
    """The check of ``n_steps`` against ``sampler`` (and ``eta``) for a model of ``family``, for :func:`check_args`.

    Its key in a table of checks is ``('sampler', 'n_steps', 'eta')``; a value not given is the
    family's default (:data:`morphomu.module._diffusion.DEFAULT_SAMPLER` / ``DEFAULT_N_STEPS``). The
    multistep solvers take at most :func:`~morphomu.module._diffusion.max_sampler_steps` steps (their
    timesteps run from t = 980 down) and no ``eta`` (they are deterministic).
    """
    from .module._diffusion import DEFAULT_N_STEPS, DEFAULT_SAMPLER, max_sampler_steps

    def check(values: Mapping[str, Any]) -> None:
        sampler = values.get("sampler", DEFAULT_SAMPLER[family])
        n_steps = values.get("n_steps", DEFAULT_N_STEPS[family])
        most = max_sampler_steps(sampler)
        if n_steps > most:
            msg = (
                f"n_steps={n_steps}: sampler={sampler!r} takes at most {most} steps (its timesteps run from "
                f"t = {most} down to 0); use fewer steps or sampler='ddim'."
            )
            raise MorphomuError(msg)
        eta = values.get("eta", 0.0)
        if sampler != "ddim" and eta != 0:
            msg = f"eta={eta}: sampler={sampler!r} is deterministic and takes no eta; use eta=0 or sampler='ddim'."
            raise MorphomuError(msg)

    return check


def available_memory() -> int:
    """Memory available to a new allocation now, in bytes.

    ``MemAvailable`` of ``/proc/meminfo`` (what the kernel can hand out without swapping), else the
    total physical memory where that cannot be read.
    """
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (OSError, ValueError, AttributeError):  # no sysconf (Windows): no limit known
        return 1 << 62


def format_bytes(n_bytes: float) -> str:
    """``n_bytes`` in binary units, e.g. ``'1.5 GiB'``."""
    value = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024 or unit == "PiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} PiB"  # pragma: no cover


def check_memory(
    n_bytes: float, *, what: str, hint: str = "", error: type[MorphomuError] = MorphomuError
) -> None:
    """Raise before any allocation if an estimated ``n_bytes`` exceeds the memory available now.

    Parameters
    ----------
    n_bytes
        The estimated peak memory of the work.
    what
        What needs it, e.g. ``'simulate_scgenescope(n_img_cells=10**9, ...)'``.
    hint
        How to do with less, appended to the message.
    error
        The error class raised.
    """
    available = available_memory()
    if n_bytes > available:
        msg = (
            f"{what} needs about {format_bytes(n_bytes)} of memory, but only {format_bytes(available)} is "
            f"available{'; ' + hint if hint else ''}."
        )
        raise error(msg)


def where(mod: str | None, rep: str | None = None) -> str:
    """Human-readable location of a representation, e.g. ``mdata.mod['img'].obsm['X_vit']``."""
    base = "adata" if mod is None else f"mdata.mod[{mod!r}]"
    return f"{base}.X" if rep is None else f"{base}.obsm[{rep!r}]"


def check_mudata(mdata: Any, *, arg: str = "mdata") -> MuData:
    """Raise unless ``mdata`` is a :class:`~mudata.MuData`."""
    from mudata import MuData

    if not isinstance(mdata, MuData):
        msg = f"{arg} must be a MuData, got {type(mdata).__name__}."
        if type(mdata).__name__ == "AnnData":
            msg += " Wrap it with mudata.MuData({'img': adata_img, 'rna': adata_rna})."
        raise ContractError(msg)
    return mdata


def get_mod(mdata: MuData, mod: str, *, arg: str = "mod") -> AnnData:
    """Return ``mdata.mod[mod]`` or raise naming the argument and the modalities present."""
    check_mudata(mdata)
    if not isinstance(mod, str):
        msg = f"{arg} must be a modality name (str), got {mod!r}."
        raise ContractError(msg)
    if mod not in mdata.mod:
        msg = f"{arg}={mod!r} is not a modality of the MuData; it has {sorted(mdata.mod)}."
        raise ContractError(msg)
    return mdata.mod[mod]


def get_adata(data: MuData | AnnData, mod: str | None, *, arg: str = "mod") -> AnnData:
    """Return the AnnData to work on: ``data.mod[mod]`` for a MuData, ``data`` itself for an AnnData."""
    from anndata import AnnData

    if isinstance(data, AnnData):
        return data
    if mod is None:
        msg = (
            f"{arg} must name a modality when the data is a MuData; it has {sorted(check_mudata(data).mod)}."
        )
        raise ContractError(msg)
    return get_mod(data, mod, arg=arg)


def check_obs_keys(adata: AnnData, keys: Mapping[str, str | None], *, mod: str | None) -> None:
    """Raise unless every ``argument -> column`` in ``keys`` is an obs column with no missing value."""
    for arg, key in keys.items():
        if key is None:
            continue
        if key not in adata.obs.columns:
            cols = list(adata.obs.columns)
            msg = (
                f"{arg}={key!r} is not a column of {where(mod).removesuffix('.X')}.obs; "
                f"its columns are {cols[:20]}{' ...' if len(cols) > 20 else ''}."
            )
            if mod is not None:  # tools read each modality's own obs, as scanpy functions do
                msg += " (A column of the MuData's global .obs reaches the modalities with mdata.push_obs().)"
            raise ContractError(msg)
        n_missing = int(adata.obs[key].isna().sum())
        if n_missing and arg != "split_key":  # a cell without a split label is in no split (own designs)
            msg = f"{where(mod).removesuffix('.X')}.obs[{key!r}] ({arg}) has {n_missing} missing values."
            raise ContractError(msg)


#: ``splits="test"``: every label of the split column other than the training and validation ones.
TEST_SPLITS = "test"


def test_split_labels(adata: AnnData, split_key: str, *, mod: str | None) -> list[str]:
    """The test split labels of ``obs[split_key]``: every label but ``'train'`` / ``'val'``, in category order.

    What ``splits="test"`` means, for the scGeneScope scheme (``test_we``, ``test_he``) and own designs alike.
    """
    check_obs_keys(adata, {"split_key": split_key}, mod=None)
    column = adata.obs[split_key]
    labels = (
        [str(c) for c in column.cat.categories if (column == c).any()]
        if isinstance(column.dtype, pd.CategoricalDtype)
        else sorted({str(v) for v in column.dropna()})
    )
    tests = [label for label in labels if label not in (C.TRAIN, C.VAL)]
    if not tests:
        msg = (
            f"splits='test': {where(mod).removesuffix('.X')}.obs[{split_key!r}] (split_key) has no label besides "
            f"{C.TRAIN!r} / {C.VAL!r} (found {labels}); pass splits=[...] naming the labels to use."
        )
        raise ContractError(msg)
    return tests


def splits_of(
    adata: AnnData, splits: Sequence[str] | str | None, split_key: str, *, mod: str | None
) -> list[str] | None:
    """``splits`` as a list of labels: ``'test'`` resolved from the data, one label listed, ``None`` kept."""
    if splits is None:
        return None
    if isinstance(splits, str):
        return test_split_labels(adata, split_key, mod=mod) if splits == TEST_SPLITS else [splits]
    return [str(s) for s in splits]


def rep_shape(adata: AnnData, rep: str | None, *, mod: str | None, arg: str = "rep") -> tuple[int, int]:
    """Return the shape of a representation without loading it, raising if it is absent."""
    if rep is None:
        if adata.X is None:
            msg = f"{arg}=None means {where(mod)}, but .X is empty."
            raise ContractError(msg)
        return tuple(adata.X.shape)  # type: ignore[return-value]
    if not isinstance(rep, str):
        msg = f"{arg} must be an .obsm key (str) or None for .X, got {rep!r}."
        raise ContractError(msg)
    if rep not in adata.obsm:
        msg = (
            f"{arg}={rep!r} is not in {where(mod).removesuffix('.X')}.obsm; "
            f"its keys are {sorted(adata.obsm.keys())} (use {arg}=None for .X)."
        )
        raise ContractError(msg)
    shape = adata.obsm[rep].shape
    if len(shape) != 2:
        msg = f"{where(mod, rep)} must be 2-d (cells x features), found shape {tuple(shape)}."
        raise ContractError(msg)
    return tuple(shape)  # type: ignore[return-value]


def _row_chunks(matrix: Any, n_rows: int) -> Iterable[Any]:
    if isinstance(matrix, np.ndarray | pd.DataFrame) or sparse.issparse(matrix):
        yield matrix
        return
    for start in range(0, n_rows, CHUNK_ROWS):  # backed / on-disk: bounded memory
        yield matrix[start : start + CHUNK_ROWS]


def _n_nonfinite(block: Any) -> int:
    if isinstance(block, pd.DataFrame):
        block = block.to_numpy()
    if sparse.issparse(block):
        block = block.data
    block = np.asarray(block)
    if not np.issubdtype(block.dtype, np.number):
        msg = f"expected numeric values, found dtype {block.dtype}"
        raise TypeError(msg)
    if np.issubdtype(block.dtype, np.integer):
        return 0
    return int(block.size - np.count_nonzero(np.isfinite(block)))


def check_rep(
    adata: AnnData,
    rep: str | None,
    *,
    mod: str | None,
    arg: str = "rep",
    n_features: int | None = None,
    finite: bool = True,
) -> tuple[int, int]:
    """Check a representation: present, 2-d, of ``n_features`` columns, numeric and finite.

    On-disk (backed) matrices are scanned in row chunks, never loaded whole.
    """
    shape = rep_shape(adata, rep, mod=mod, arg=arg)
    if n_features is not None and shape[1] != n_features:
        msg = f"{where(mod, rep)} ({arg}) must have {n_features} features, found {shape[1]}."
        raise ContractError(msg)
    if finite:
        matrix = rep_matrix(adata, rep)
        try:
            n_bad = sum(_n_nonfinite(block) for block in _row_chunks(matrix, shape[0]))
        except TypeError as e:
            msg = f"{where(mod, rep)} ({arg}): {e}."
            raise ContractError(msg) from None
        if n_bad:
            msg = f"{where(mod, rep)} ({arg}) has {n_bad} non-finite values (NaN or inf); expected finite features."
            raise ContractError(msg)
    return shape


def get_rep(
    adata: AnnData,
    rep: str | None,
    *,
    mod: str | None,
    arg: str = "rep",
    n_features: int | None = None,
    dtype: Any = np.float32,
) -> np.ndarray:
    """Return a checked representation as a dense array (loads it; use for in-memory data)."""
    check_rep(adata, rep, mod=mod, arg=arg, n_features=n_features)
    matrix = rep_matrix(adata, rep)
    if isinstance(matrix, pd.DataFrame):
        matrix = matrix.to_numpy()
    if sparse.issparse(matrix):
        matrix = matrix.toarray()
    elif not isinstance(matrix, np.ndarray):
        matrix = matrix[:]  # backed dataset
        matrix = matrix.toarray() if sparse.issparse(matrix) else matrix
    return np.asarray(matrix, dtype=dtype)


def check_unique_obs_names(mdata: MuData, *, mods: Sequence[str] | None = None) -> None:
    """Raise unless obs_names are unique within and across modalities (``mods``; default all of them)."""
    seen: dict[str, str] = {}
    for mod in mdata.mod if mods is None else mods:
        names = mdata.mod[mod].obs_names
        if not names.is_unique:
            dup = names[names.duplicated()].unique()[:5].tolist()
            msg = f"mdata.mod[{mod!r}].obs_names are not unique (e.g. {dup}); call .obs_names_make_unique()."
            raise ContractError(msg)
        for name in names:
            other = seen.setdefault(name, mod)
            if other != mod:
                msg = (
                    f"obs_name {name!r} is in both mdata.mod[{other!r}] and mdata.mod[{mod!r}]; obs_names must be "
                    "unique across modalities (prefix them per modality) so MuData never merges unrelated cells."
                )
                raise ContractError(msg)


def check_uns_writable(uns: Mapping[str, Any], *, where_: str = "mdata.uns") -> None:
    """Raise unless ``uns`` can be written to ``.h5mu`` / ``.h5ad``, by writing it to an in-memory file."""
    import h5py

    try:
        from anndata.io import write_elem
    except ImportError:  # anndata < 0.11
        from anndata.experimental import write_elem

    with h5py.File(io.BytesIO(), "w") as f:
        for key, value in uns.items():
            try:
                write_elem(f, str(key), value)
            except Exception as e:
                msg = (
                    f"{where_}[{key!r}] cannot be written to .h5mu ({type(e).__name__}: {e}); "
                    "store strings, numbers, arrays, DataFrames or dicts of those."
                )
                raise ContractError(msg) from None


def check_categories(
    adata: AnnData, key: str, allowed: Sequence[Any] | None = None, *, mod: str | None, arg: str
) -> pd.Series:
    """Return ``obs[key]`` as strings, raising if a value is not in ``allowed``."""
    check_obs_keys(adata, {arg: key}, mod=mod)
    values = adata.obs[key].astype(str)
    if allowed is not None:
        bad = sorted(set(values.unique()) - {str(a) for a in allowed})
        if bad:
            msg = f"{where(mod).removesuffix('.X')}.obs[{key!r}] ({arg}) has values {bad[:10]}; expected only {list(allowed)}."
            raise ContractError(msg)
    return values


def validate(
    mdata: MuData,
    *,
    mods: Mapping[str, str | None] | None = None,
    sample_key: str | None = C.SAMPLE_KEY,
    treatment_key: str | None = C.TREATMENT_KEY,
    obs_keys: Sequence[str] | None = None,
    n_features: Mapping[str, int] | None = None,
    finite: bool = True,
    uns: bool = True,
) -> None:
    """Check a MuData against the morphomu contract.

    Parameters
    ----------
    mdata
        The experiment.
    mods
        Modality name to the representation that must be present (an ``.obsm`` key, or ``None`` for
        ``.X``). Defaults to ``{'img': 'X_vit', 'rna': 'X_scgpt'}`` restricted to the modalities
        present; an empty MuData is an error.
    sample_key
        obs column with the sample (well) of each cell; ``None`` skips it.
    treatment_key
        obs column with the treatment of each cell; ``None`` skips it.
    obs_keys
        Every obs column each listed modality must have, without missing values; default:
        ``sample_key`` and ``treatment_key``.
    n_features
        Modality name to the expected number of features of its representation.
    finite
        Check that features are finite (on-disk matrices are scanned in chunks).
    uns
        Check that ``mdata.uns`` can be written to ``.h5mu``.

    Raises
    ------
    ContractError
        Naming the modality, the key and what was expected.

    Examples
    --------
    >>> import morphomu as mm
    >>> mdata = mm.datasets.simulate_scgenescope(n_img_cells=2000, n_rna_cells=2000)
    >>> mm.pp.validate(mdata)
    """
    check_mudata(mdata)
    if mods is None:
        mods = {m: r for m, r in {C.IMAGE_MOD: C.IMAGE_REP, C.RNA_MOD: C.RNA_REP}.items() if m in mdata.mod}
        if not mods:
            msg = f"the MuData has none of the modalities {[C.IMAGE_MOD, C.RNA_MOD]}; it has {sorted(mdata.mod)}."
            raise ContractError(msg)
    n_features = dict(n_features or {})
    if obs_keys is None:
        required = {"sample_key": sample_key, "treatment_key": treatment_key}
    else:
        required = {f"obs_keys[{k!r}]": k for k in obs_keys}
    for mod, rep in mods.items():
        adata = get_mod(mdata, mod, arg="mods")
        if adata.n_obs == 0:
            msg = f"mdata.mod[{mod!r}] has no cells."
            raise ContractError(msg)
        check_obs_keys(adata, required, mod=mod)
        check_rep(adata, rep, mod=mod, arg=f"mods[{mod!r}]", n_features=n_features.get(mod), finite=finite)
    check_unique_obs_names(mdata)
    if uns:
        check_uns_writable(mdata.uns)
        for mod, adata in mdata.mod.items():
            check_uns_writable(adata.uns, where_=f"mdata.mod[{mod!r}].uns")
