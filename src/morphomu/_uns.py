"""Writing tool results and parameters into ``uns['morphomu']`` in a form ``.h5mu`` can store."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ._constants import UNS_KEY

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData


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


def store(data: MuData | AnnData, key_added: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``entry`` to ``data.uns['morphomu'][key_added]`` (replacing it) and return what was written."""
    safe = h5_safe(entry)
    data.uns.setdefault(UNS_KEY, {})[key_added] = safe
    return safe
