from __future__ import annotations

from .._validation import validate

__all__ = ["validate"]
