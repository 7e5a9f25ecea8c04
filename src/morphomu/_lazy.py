"""PEP 562 lazy attributes, so that ``import morphomu`` does not import torch, scanpy or scvi-tools."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping


def attach(package: str, attrs: Mapping[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """Return ``__getattr__`` and ``__dir__`` for ``package`` that import on first use.

    Parameters
    ----------
    package
        The package's ``__name__``.
    attrs
        Public name to the private submodule (relative, e.g. ``"._simulate"``) that defines it. A name
        that equals its submodule (``{"models": ".models"}``) resolves to the submodule itself.
    """

    def __getattr__(name: str) -> object:
        try:
            submodule = attrs[name]
        except KeyError:
            msg = f"module {package!r} has no attribute {name!r}"
            raise AttributeError(msg) from None
        module = importlib.import_module(submodule, package)
        value = module if submodule == f".{name}" else getattr(module, name)
        vars(sys.modules[package])[name] = value  # cache: later lookups skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted({*attrs, *vars(sys.modules[package])})

    return __getattr__, __dir__
