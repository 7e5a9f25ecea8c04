"""One ``.uns`` layout: every tool writes ``uns['morphomu'][key_added] = {"tool": ..., "params": ..., ...}``.

Records are read back by later tools so that keys follow the data: a tool that consumes a modality
morphomu wrote takes its defaults (representation, treatment / sample / split columns, the real
counterpart) from the record of the step that produced it, unless the caller passes them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from . import _constants as C
from ._constants import UNS_KEY

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

__all__ = ["AUTO", "CONTRACT_KEYS", "h5_safe", "known_keys", "plain", "records", "resolve", "store"]

#: Default of a representation argument that follows the data (``None`` already means ``.X``).
AUTO = "auto"

#: The contract's default for each key a record may carry, used when neither caller nor record names it.
CONTRACT_KEYS = {
    "treatment_key": C.TREATMENT_KEY,
    "sample_key": C.SAMPLE_KEY,
    "split_key": C.SPLIT_KEY,
    "compound_split_key": C.COMPOUND_SPLIT_KEY,
    "replicate_key": C.REPLICATE_KEY,
    "round_key": C.ROUND_KEY,
    "images_key": C.IMAGES_KEY,
}

#: obs-column roles whose names a record carries and a later tool may take from it.
OBS_ROLES = ("treatment_key", "sample_key", "split_key", "compound_split_key", "replicate_key", "round_key")


def h5_safe(value: Any) -> Any:
    """Convert ``value`` to types that anndata writes to HDF5 (``None`` becomes the string ``'None'``)."""
    if value is None:
        return "None"
    if isinstance(value, Mapping):
        return {str(k): h5_safe(v) for k, v in value.items()}
    if isinstance(value, pd.DataFrame | np.ndarray | str | bool | int | float | np.generic):
        return value
    if isinstance(value, list | tuple):
        items = [h5_safe(v) for v in value]
        if all(isinstance(v, str) for v in items):
            return np.asarray(items, dtype=object)
        if all(isinstance(v, bool | int | float | np.generic) for v in items):
            return np.asarray(items)
        return {str(i): v for i, v in enumerate(items)}
    return str(value)


def plain(value: Any) -> Any:
    """Undo :func:`h5_safe` for a stored scalar or string array (``'None'`` becomes ``None``)."""
    if isinstance(value, str):
        return None if value == "None" else value
    if isinstance(value, np.ndarray):
        return [plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def store(data: MuData | AnnData, key_added: str, entry: Mapping[str, Any], *, tool: str) -> dict[str, Any]:
    """Write ``entry`` to ``data.uns['morphomu'][key_added]`` (replacing it) and return what was written.

    ``tool`` (the function's name) is recorded as ``entry['tool']`` so records can be found by producer.
    """
    safe = h5_safe({"tool": tool, **entry})
    data.uns.setdefault(UNS_KEY, {})[key_added] = safe
    return safe


def records(data: MuData | AnnData, *, tool: str | None = None) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """``(key_added, entry)`` for every record in ``uns['morphomu']`` (of ``tool`` when given), newest last."""
    uns = data.uns.get(UNS_KEY, {})
    if not isinstance(uns, Mapping):
        return
    for key, entry in uns.items():
        if not isinstance(entry, Mapping) or not isinstance(entry.get("params"), Mapping):
            continue
        if tool is None or plain(entry.get("tool")) == tool:
            yield str(key), entry


def known_keys(data: MuData | AnnData, mod: str) -> dict[str, Any]:
    """What morphomu's records say about modality ``mod``: ``rep``, obs-column names, ``real`` and ``kind``.

    The record of the step that wrote ``mod`` (a generator's ``key_added``) comes first; then records
    of steps that used ``mod`` in a role (``image_mod`` / ``rna_mod`` / ``real`` / ``mod``); later
    records win over earlier ones of the same rank. ``real`` is the real counterpart of a generated
    modality (the modality of the same kind the generator learned from); ``kind`` is ``'image'`` or
    ``'rna'``.
    """
    produced: dict[str, Any] = {}
    used: dict[str, Any] = {}
    for key, entry in records(data):
        params = {k: plain(v) for k, v in entry["params"].items()}
        found: dict[str, Any] = {}
        if key == mod and plain(entry.get("tool")) in _GENERATED:
            kind = _GENERATED[plain(entry["tool"])]
            if f"{kind}_rep" in params:
                found["rep"] = params[f"{kind}_rep"]
            found["real"] = params.get(f"{kind}_mod")
            found["kind"] = kind
            if kind == "image":
                found["images_key"] = params.get("images_key")
            target = produced
        else:
            for role in ("image", "rna"):
                if params.get(f"{role}_mod") == mod:
                    if f"{role}_rep" in params:
                        found["rep"] = params[f"{role}_rep"]
                    found["kind"] = role
                    if role == "image":
                        found["images_key"] = params.get("images_key")
            if (params.get("real") == mod or params.get("mod") == mod) and "rep" in params:
                found["rep"] = params["rep"]
            mods = params.get("mods")
            if not found and not (isinstance(mods, list) and mod in mods):
                continue
            target = used
        found.update({role: params[role] for role in OBS_ROLES if params.get(role) is not None})
        if plain(entry.get("tool")) in _OBS_WRITERS:  # the column the step wrote names its role
            found[_OBS_WRITERS[plain(entry["tool"])]] = params.get("key_added")
        # a recorded rep of None is .X, a value; any other None means "not recorded"
        target.update({k: v for k, v in found.items() if v is not None or k == "rep"})
    return {**used, **produced}


def resolve(
    given: Mapping[str, Any], known: Mapping[str, Any], defaults: Mapping[str, Any]
) -> dict[str, Any]:
    """Each argument: the caller's value if not ``None``, else the recorded one, else the contract default."""
    return {
        name: value if value is not None else known.get(name, defaults.get(name))
        for name, value in given.items()
    }


# tool writing an obs column -> the role of that column
_OBS_WRITERS = {"assign_split": "split_key", "assign_compound_split": "compound_split_key"}

# generator tool -> the kind of modality it writes (the prefix of its role arguments)
_GENERATED = {"generate_rna": "rna", "generate_morphology": "image"}
