"""Renamed arguments keep working for one release, with a :class:`FutureWarning` naming the new one."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from .._errors import MorphomuError

__all__ = ["renamed_arguments", "translate_renamed"]

F = TypeVar("F", bound=Callable[..., Any])


def translate_renamed(
    where: str, kwargs: dict[str, Any], renames: Mapping[str, str], *, stacklevel: int = 3
) -> dict[str, Any]:
    """Return ``kwargs`` with old names replaced by new ones, warning once per old name used.

    Passing both an old name and its new name is an error (which one was meant is unclear).
    """
    out = dict(kwargs)
    for old, new in renames.items():
        if old not in out:
            continue
        if new in out:
            msg = f"{where}: pass {new}= only ({old}= is its former name); got both."
            raise MorphomuError(msg)
        warnings.warn(
            f"{where}: {old}= was renamed to {new}=; the old name will stop working in the next release.",
            FutureWarning,
            stacklevel=stacklevel,
        )
        out[new] = out.pop(old)
    return out


def renamed_arguments(**renames: str) -> Callable[[F], F]:
    """Decorator: accept each ``old=`` keyword as ``new=`` (``renamed_arguments(groupby="treatment_key")``)."""

    def decorate(func: F) -> F:
        where = func.__qualname__.replace(".__init__", "")

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if renames.keys() & kwargs.keys():
                kwargs = translate_renamed(where, kwargs, renames, stacklevel=3)
            return func(*args, **kwargs)

        wrapper.__renamed_arguments__ = dict(renames)  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate
