"""morphomu's saved-model files: tensors in safetensors, everything else in typed JSON, nothing pickled.

A model directory (format 3) holds

- ``morphomu.json``: the manifest (model class, format version, morphomu version);
- ``model.safetensors``: the module's state dict (the EMA weights of a diffusion model), a sub-model's
  tensors included (a Trident's image VAE: ``image_vae.*``);
- ``attributes.json``: the model's saved attributes (scvi-tools' ``*_`` attributes: ``init_params_``,
  ``registry_``, ``history_``, split indices, ...; a sub-model's as one record, ``image_vae_``) and the var
  names, in the typed JSON of :func:`encode`.

Loading such a directory runs no code from it. Format 2 had the same files but kept a sub-model in a
sub-directory of its own (``image_vae/``); :func:`read_model_files` merges it as format 3 holds it. Format 1
(scvi-tools' pickled ``model.pt``) is read only on request, through :class:`RestrictedUnpickler`, which
admits the globals a genuine format-1 save holds and refuses any other.
"""

from __future__ import annotations

import base64
import collections
import io
import json
import math
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._errors import MorphomuError

__all__ = [
    "ATTRIBUTES_FILE",
    "FORMAT_VERSION",
    "LEGACY_MODEL_FILE",
    "MANIFEST",
    "TENSORS_FILE",
    "RestrictedUnpickler",
    "decode",
    "encode",
    "read_legacy_model_file",
    "read_manifest_file",
    "read_model_files",
    "write_model_files",
]

#: Version of morphomu's saved-model layout. Every change to what a save holds raises it, and
#: :func:`read_model_files` keeps reading the previous versions (see the developer docs).
FORMAT_VERSION = 3
#: The manifest file: model class, format version, morphomu version.
MANIFEST = "morphomu.json"
#: The module's tensors (formats 2 and 3).
TENSORS_FILE = "model.safetensors"
#: Everything else the model saves (formats 2 and 3).
ATTRIBUTES_FILE = "attributes.json"
#: scvi-tools' pickled file (format 1).
LEGACY_MODEL_FILE = "model.pt"

# ---------------------------------------------------------------------------------------------------
# typed JSON: every value that is not plain JSON is an object with exactly one "__tag__" key
_TAGS = (
    "__float__",
    "__tuple__",
    "__dict__",
    "__defaultdict__",
    "__ndarray__",
    "__npscalar__",
    "__dataframe__",
    "__index__",
    "__categorical__",
)
_NUMERIC_KINDS = "biuf"


def encode(value: Any, *, where: str = "value") -> Any:
    """``value`` as JSON-serialisable data that :func:`decode` turns back into an equal object.

    Handles ``None``, ``bool``, ``int``, ``float`` (also non-finite), ``str``, lists, tuples, dicts (any keys
    of these types), ``collections.defaultdict`` of ``dict`` / ``list``, numpy arrays (numeric ones as raw
    little-endian bytes, string / object arrays as item lists) and scalars, pandas DataFrames, Indexes and
    Categoricals. Anything else raises ``TypeError`` naming ``where``: code and arbitrary objects are not data.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (np.generic,)):
        return {"__npscalar__": {"dtype": value.dtype.str, "value": encode(value.item(), where=where)}}
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, list):
        return [encode(v, where=f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return {"__tuple__": [encode(v, where=f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, collections.defaultdict):
        factory = {dict: "dict", list: "list"}.get(value.default_factory)  # type: ignore[arg-type]
        if factory is None:
            msg = f"{where}: a defaultdict of {value.default_factory!r} cannot be saved (only dict or list)."
            raise TypeError(msg)
        return {"__defaultdict__": {"factory": factory, "items": encode(dict(value), where=where)}}
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: encode(v, where=f"{where}[{k!r}]") for k, v in value.items()}
        return {
            "__dict__": [
                [encode(k, where=f"{where} key"), encode(v, where=f"{where}[{k!r}]")]
                for k, v in value.items()
            ]
        }
    if isinstance(value, np.ndarray):
        return {"__ndarray__": _encode_array(value, where)}
    if isinstance(value, pd.DataFrame):
        return {
            "__dataframe__": {
                "index": encode(value.index, where=f"{where}.index"),
                "columns": [
                    [
                        encode(name, where=f"{where}.columns"),
                        _encode_column(value[name], f"{where}[{name!r}]"),
                    ]
                    for name in value.columns
                ],
            }
        }
    if isinstance(value, pd.Index) and not isinstance(value, pd.MultiIndex):
        return {
            "__index__": {
                "name": encode(value.name, where=f"{where}.name"),
                "values": _encode_column(value, where),
            }
        }
    if isinstance(value, pd.Categorical):
        return {"__categorical__": _encode_categorical(value, where)}
    msg = f"{where}: a {type(value).__module__}.{type(value).__qualname__} cannot be saved as data."
    raise TypeError(msg)


def _encode_array(array: np.ndarray, where: str) -> dict[str, Any]:
    if array.dtype.kind in _NUMERIC_KINDS:
        little = array.astype(array.dtype.newbyteorder("<"), copy=False)
        raw = np.ascontiguousarray(little).tobytes()
        return {
            "dtype": little.dtype.str,
            "shape": list(array.shape),
            "base64": base64.b64encode(raw).decode(),
        }
    if array.dtype.kind in "UO":
        items = [encode(v, where=f"{where} item") for v in array.ravel().tolist()]
        return {
            "dtype": "object" if array.dtype.kind == "O" else array.dtype.str,
            "shape": list(array.shape),
            "items": items,
        }
    msg = f"{where}: an array of dtype {array.dtype} cannot be saved (numeric, string or object arrays only)."
    raise TypeError(msg)


def _encode_categorical(values: pd.Categorical, where: str) -> dict[str, Any]:
    return {
        "categories": encode(values.categories, where=f"{where}.categories"),
        "codes": encode(np.asarray(values.codes), where=f"{where}.codes"),
        "ordered": bool(values.ordered),
    }


def _encode_column(values: pd.Series | pd.Index, where: str) -> dict[str, Any]:
    """A column or index: its dtype name and its values (categoricals by codes and categories)."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        return {"dtype": "category", "categorical": _encode_categorical(pd.Categorical(values), where)}
    array = values.to_numpy()
    dtype = str(values.dtype)
    if array.dtype.kind in _NUMERIC_KINDS:
        return {"dtype": dtype, "array": _encode_array(array, where)}
    if array.dtype.kind == "O":
        return {"dtype": dtype, "array": _encode_array(array.astype(object), where)}
    msg = f"{where}: a column of dtype {values.dtype} cannot be saved."
    raise TypeError(msg)


def decode(data: Any, *, where: str = "value") -> Any:
    """The object that :func:`encode` made ``data`` from; an unknown tag raises :class:`MorphomuError`."""
    if data is None or isinstance(data, (bool, int, float, str)):
        return data
    if isinstance(data, list):
        return [decode(v, where=where) for v in data]
    if not isinstance(data, dict):
        msg = f"{where}: {type(data).__name__} is not typed-JSON data."
        raise MorphomuError(msg)
    tags = [k for k in data if k.startswith("__")]
    if not tags:
        return {k: decode(v, where=f"{where}[{k!r}]") for k, v in data.items()}
    if len(data) != 1 or tags[0] not in _TAGS:
        msg = f"{where}: unknown typed-JSON entry {sorted(data)[:3]}."
        raise MorphomuError(msg)
    tag, body = tags[0], data[tags[0]]
    try:
        return _DECODERS[tag](body, where)
    except MorphomuError:
        raise
    except (KeyError, TypeError, ValueError) as e:
        msg = f"{where}: malformed {tag} entry ({type(e).__name__}: {e})."
        raise MorphomuError(msg) from None


def _decode_float(body: str, where: str) -> float:
    if body not in ("nan", "inf", "-inf"):
        msg = f"{where}: __float__ must be 'nan', 'inf' or '-inf', got {body!r}."
        raise MorphomuError(msg)
    return float(body)


def _decode_defaultdict(body: dict[str, Any], where: str) -> collections.defaultdict:
    factory = {"dict": dict, "list": list}[body["factory"]]
    return collections.defaultdict(factory, decode(body["items"], where=where))


def _decode_array(body: dict[str, Any], where: str) -> np.ndarray:
    shape = tuple(int(n) for n in body["shape"])
    if "base64" in body:
        dtype = np.dtype(body["dtype"])
        if dtype.kind not in _NUMERIC_KINDS:
            msg = f"{where}: raw array data must be numeric, got dtype {dtype}."
            raise MorphomuError(msg)
        return np.frombuffer(base64.b64decode(body["base64"]), dtype=dtype).reshape(shape).copy()
    items = [decode(v, where=where) for v in body["items"]]
    dtype = np.dtype(object) if body["dtype"] == "object" else np.dtype(body["dtype"])
    if dtype.kind not in "UO":
        msg = f"{where}: item-list arrays must be of string or object dtype, got {dtype}."
        raise MorphomuError(msg)
    out = np.empty(len(items), dtype=dtype)
    out[:] = items
    return out.reshape(shape)


def _decode_scalar(body: dict[str, Any], where: str) -> np.generic:
    dtype = np.dtype(body["dtype"])
    if dtype.kind not in _NUMERIC_KINDS + "U":
        msg = f"{where}: numpy scalars must be numeric or strings, got dtype {dtype}."
        raise MorphomuError(msg)
    return dtype.type(decode(body["value"], where=where))


def _decode_categorical(body: dict[str, Any], where: str) -> pd.Categorical:
    return pd.Categorical.from_codes(
        decode(body["codes"], where=where),
        categories=decode(body["categories"], where=where),
        ordered=bool(body["ordered"]),
    )


def _decode_column(body: dict[str, Any], where: str) -> Any:
    if body["dtype"] == "category":
        return _decode_categorical(body["categorical"], where)
    array = _decode_array(body["array"], where)
    return pd.array(array, dtype=body["dtype"]) if array.dtype.kind == "O" else array.astype(body["dtype"])


def _decode_dataframe(body: dict[str, Any], where: str) -> pd.DataFrame:
    index = decode(body["index"], where=f"{where}.index")
    columns = {decode(name, where=where): _decode_column(col, where) for name, col in body["columns"]}
    return pd.DataFrame(columns, index=index)


def _decode_index(body: dict[str, Any], where: str) -> pd.Index:
    return pd.Index(_decode_column(body["values"], where), name=decode(body["name"], where=where))


_DECODERS = {
    "__float__": _decode_float,
    "__tuple__": lambda body, where: tuple(decode(v, where=where) for v in body),
    "__dict__": lambda body, where: {decode(k, where=where): decode(v, where=where) for k, v in body},
    "__defaultdict__": _decode_defaultdict,
    "__ndarray__": _decode_array,
    "__npscalar__": _decode_scalar,
    "__dataframe__": _decode_dataframe,
    "__index__": _decode_index,
    "__categorical__": _decode_categorical,
}


# ---------------------------------------------------------------------------------------------------
# formats 2 and 3: write and read
def _name(prefix: str | None, file: str) -> str:
    return f"{prefix or ''}{file}"


def write_model_files(
    dir_path: Path,
    *,
    prefix: str | None,
    state_dict: dict[str, Any],
    var_names: Any,
    attributes: dict[str, Any],
) -> None:
    """Write the module's tensors and the model's attributes into the (new, empty) directory ``dir_path``."""
    import torch
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor):
            msg = f"the module's state entry {key!r} is a {type(tensor).__name__}, not a tensor."
            raise TypeError(msg)
        tensor = tensor.detach().cpu().contiguous()
        ptr = tensor.untyped_storage().data_ptr()
        if tensor.numel() and ptr in seen:  # safetensors refuses tensors that share memory
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        tensors[key] = tensor
    save_file(tensors, str(dir_path / _name(prefix, TENSORS_FILE)))
    body = {
        "var_names": encode(var_names, where="var_names"),
        "attributes": {k: encode(v, where=k) for k, v in attributes.items()},
    }
    (dir_path / _name(prefix, ATTRIBUTES_FILE)).write_text(json.dumps(body, allow_nan=False))


def read_model_files(
    dir_path: Path, *, prefix: str | None, format_version: int, map_location: str = "cpu"
) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """``(state_dict, var_names, attributes)`` of a saved model directory of the given format version, as format 3 holds them.

    Format 1 is read through :func:`read_legacy_model_file` (the caller has checked that it was asked for).
    A sub-model directory of format 1 or 2 is merged in (:func:`_merge_sub_models`).
    """
    if format_version == 1:
        state_dict, var_names, attributes = read_legacy_model_file(
            dir_path / _name(prefix, LEGACY_MODEL_FILE), map_location=map_location
        )
    else:
        state_dict, var_names, attributes = _read_safetensors_files(
            dir_path, prefix=prefix, map_location=map_location
        )
    if format_version < 3:
        _merge_sub_models(dir_path, prefix, format_version, state_dict, attributes, map_location=map_location)
    return state_dict, var_names, attributes


def _read_safetensors_files(
    dir_path: Path, *, prefix: str | None, map_location: str
) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """``(state_dict, var_names, attributes)`` of ``model.safetensors`` and ``attributes.json``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    tensors_path = dir_path / _name(prefix, TENSORS_FILE)
    attributes_path = dir_path / _name(prefix, ATTRIBUTES_FILE)
    for path in (tensors_path, attributes_path):
        if not path.is_file():
            msg = f"dir_path={str(dir_path)!r} has no {path.name}: the saved model is incomplete."
            raise MorphomuError(msg)
    try:
        state_dict = load_file(str(tensors_path), device=map_location)
    except (SafetensorError, OSError, ValueError) as e:
        msg = f"{tensors_path} is not a readable safetensors file ({e})."
        raise MorphomuError(msg) from None
    try:
        body = json.loads(attributes_path.read_text())
        attributes = body["attributes"]
        var_names = body["var_names"]
    except (ValueError, KeyError, TypeError) as e:
        msg = f"{attributes_path} is not a valid attributes file ({type(e).__name__}: {e})."
        raise MorphomuError(msg) from None
    if not isinstance(attributes, dict):
        msg = f"{attributes_path}: 'attributes' must be an object."
        raise MorphomuError(msg)
    decoded = {k: decode(v, where=f"{attributes_path.name}: {k}") for k, v in attributes.items()}
    return state_dict, decode(var_names, where=f"{attributes_path.name}: var_names"), decoded


def read_manifest_file(path: Path) -> dict[str, Any]:
    """A manifest's contents, refused unless it names a model class and an integer format version."""
    try:
        manifest = json.loads(path.read_text())
        str(manifest["model"])
        manifest["format_version"] = int(manifest["format_version"])
    except (ValueError, KeyError, TypeError) as e:
        msg = f"{path} is not a valid morphomu model manifest ({e})."
        raise MorphomuError(msg) from None
    return manifest


def _merge_sub_models(
    dir_path: Path,
    prefix: str | None,
    format_version: int,
    state_dict: dict[str, Any],
    attributes: dict[str, Any],
    *,
    map_location: str,
) -> None:
    """Merge the sub-model directories of a format-1 or -2 save into its tensors and attributes, in place.

    Those formats kept a sub-model (a Trident's image VAE) in a model directory of its own, ``<name>/``
    (``<prefix><name>/`` with a prefix); format 3 keeps its tensors as ``<name>.*`` and its attributes as
    the record ``<name>_``. A sub-model must be of its parent's format: a pickled (format-1) one inside a
    format-2 directory would be unpickled without the caller having asked for format 1.
    """
    lead = prefix or ""
    for entry in sorted(dir_path.iterdir()):
        if not (entry.name.startswith(lead) and entry.is_dir() and (entry / MANIFEST).is_file()):
            continue
        name = entry.name[len(lead) :]
        if f"{name}_" in attributes:
            msg = f"dir_path={str(dir_path)!r}: its sub-model {entry.name}/ clashes with the saved attribute {name}_."
            raise MorphomuError(msg)
        found = int(read_manifest_file(entry / MANIFEST)["format_version"])
        if found != format_version:
            msg = (
                f"dir_path={str(dir_path)!r} is of model format {format_version} but its sub-model {entry.name}/ "
                f"is of format {found}; a save writes both in one format."
            )
            raise MorphomuError(msg)
        sub_state, _, sub_attributes = read_model_files(
            entry, prefix=None, format_version=found, map_location=map_location
        )
        state_dict.update({f"{name}.{key}": value for key, value in sub_state.items()})
        attributes[f"{name}_"] = sub_attributes


# ---------------------------------------------------------------------------------------------------
# format 1: a restricted unpickler
class _LegacyType:
    """A class object a format-1 save names without using it; dropped from what is loaded.

    scvi-tools recorded the ``AnnData`` class among a format-1 ImageVAE's setup arguments.
    """

    def __init__(self, qualified_name: str) -> None:
        self.qualified_name = qualified_name

    def __repr__(self) -> str:
        return f"<class {self.qualified_name} (not loaded)>"


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The globals a genuine format-1 save can reference, each mapped to what it loads as."""
    import torch

    allowed: dict[tuple[str, str], Any] = {}
    for module in ("builtins", "__builtin__"):
        for name in (
            "dict",
            "list",
            "tuple",
            "set",
            "frozenset",
            "slice",
            "bytes",
            "bytearray",
            "int",
            "float",
            "complex",
            "bool",
            "str",
        ):
            allowed[module, name] = __import__("builtins").__dict__[name]
    allowed["_codecs", "encode"] = __import__("_codecs").encode  # protocol-2 pickles spell bytes this way
    allowed["collections", "OrderedDict"] = collections.OrderedDict
    allowed["collections", "defaultdict"] = collections.defaultdict
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[module, "_reconstruct"] = np._core.multiarray._reconstruct
        allowed[module, "scalar"] = np._core.multiarray.scalar
    allowed["numpy", "ndarray"] = np.ndarray
    allowed["numpy", "dtype"] = np.dtype
    for name in dir(np.dtypes):
        if name.endswith("DType"):
            allowed["numpy.dtypes", name] = getattr(np.dtypes, name)
    from pandas._libs.internals import _unpickle_block
    from pandas.core.indexes.base import _new_Index
    from pandas.core.internals.managers import BlockManager, SingleBlockManager

    pandas_names = {
        ("pandas.core.frame", "DataFrame"): pd.DataFrame,
        ("pandas.core.series", "Series"): pd.Series,
        ("pandas.core.indexes.base", "Index"): pd.Index,
        ("pandas.core.indexes.base", "_new_Index"): _new_Index,
        ("pandas.core.indexes.range", "RangeIndex"): pd.RangeIndex,
        ("pandas.core.indexes.category", "CategoricalIndex"): pd.CategoricalIndex,
        ("pandas.core.arrays.categorical", "Categorical"): pd.Categorical,
        ("pandas.core.dtypes.dtypes", "CategoricalDtype"): pd.CategoricalDtype,
        ("pandas.core.internals.managers", "BlockManager"): BlockManager,
        ("pandas.core.internals.managers", "SingleBlockManager"): SingleBlockManager,
        ("pandas._libs.internals", "_unpickle_block"): _unpickle_block,
    }
    allowed.update(pandas_names)
    allowed["torch._utils", "_rebuild_tensor_v2"] = torch._utils._rebuild_tensor_v2
    allowed["torch._utils", "_rebuild_parameter"] = torch._utils._rebuild_parameter
    allowed["torch", "Size"] = torch.Size
    for name in dir(torch):
        if isinstance(getattr(torch, name, None), torch.dtype):
            allowed["torch", name] = getattr(torch, name)
    allowed["anndata._core.anndata", "AnnData"] = _LegacyType("anndata.AnnData")
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that admits only the globals of :func:`_allowed_globals` and refuses any other."""

    _allowed: dict[tuple[str, str], Any] | None = None

    def find_class(self, module: str, name: str) -> Any:
        """The allowed object named ``module.name``; any other raises :class:`MorphomuError`."""
        if RestrictedUnpickler._allowed is None:
            RestrictedUnpickler._allowed = _allowed_globals()
        try:
            return RestrictedUnpickler._allowed[module, name]
        except KeyError:
            msg = (
                f"refused to load the global {module}.{name}: a format-1 morphomu model holds only arrays, "
                "tables and tensors, so this file was not written by morphomu (or was altered)."
            )
            raise MorphomuError(msg) from None


class _RestrictedPickleModule:
    """What ``torch.load(pickle_module=...)`` needs: ``Unpickler`` and ``load``."""

    __name__ = "morphomu_restricted_pickle"
    Unpickler = RestrictedUnpickler

    @staticmethod
    def load(file: Any, **kwargs: Any) -> Any:
        return RestrictedUnpickler(file, **kwargs).load()


def _drop_legacy_types(value: Any) -> Any:
    if isinstance(value, collections.defaultdict):
        return collections.defaultdict(
            value.default_factory,
            {k: _drop_legacy_types(v) for k, v in value.items() if not isinstance(v, _LegacyType)},
        )
    if isinstance(value, dict):
        return {k: _drop_legacy_types(v) for k, v in value.items() if not isinstance(v, _LegacyType)}
    return value


def read_legacy_model_file(
    path: Path, *, map_location: str = "cpu"
) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """``(state_dict, var_names, attributes)`` of a format-1 ``model.pt``, unpickled with :class:`RestrictedUnpickler`."""
    import torch

    if not path.is_file():
        msg = f"{path.parent} has no {path.name}: the format-1 model is incomplete."
        raise MorphomuError(msg)
    if not zipfile.is_zipfile(path):
        msg = f"{path} is not a torch zip archive; a format-1 morphomu model is one."
        raise MorphomuError(msg)
    with path.open("rb") as f:
        data = io.BytesIO(f.read())
    try:
        saved = torch.load(
            data, map_location=map_location, weights_only=False, pickle_module=_RestrictedPickleModule
        )
    except MorphomuError as e:
        msg = f"{path}: {e}"
        raise MorphomuError(msg) from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, TypeError, ValueError, AttributeError) as e:
        msg = f"{path} is not a readable format-1 model file ({type(e).__name__}: {e})."
        raise MorphomuError(msg) from None
    if not isinstance(saved, dict) or not {"model_state_dict", "var_names", "attr_dict"} <= set(saved):
        msg = f"{path} does not hold a model state, var names and attributes."
        raise MorphomuError(msg)
    state = {k: v for k, v in saved["model_state_dict"].items() if k != "pyro_param_store"}
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        msg = f"{path}: the model state holds values that are not tensors."
        raise MorphomuError(msg)
    return state, saved["var_names"], _drop_legacy_types(dict(saved["attr_dict"]))
