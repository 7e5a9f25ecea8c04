"""Plots (matplotlib / seaborn). Every function returns its Axes or Figure and shows only when asked."""

from __future__ import annotations

from .._lazy import attach

__all__: list[str] = []

__getattr__, __dir__ = attach(__name__, {})
