"""Docstring sections shared by several public functions, written once (scanpy's ``_doc_params`` idea).

A docstring names a section on a line of its own, ``{show_save}``; :func:`doc_params` replaces that line by
the section's text at the line's indentation.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["SHOW_SAVE_DOC", "doc_params"]

#: The last parameters of every plotting function.
SHOW_SAVE_DOC = """\
show
    Call :func:`matplotlib.pyplot.show`.
save
    File to save the figure to."""

_F = TypeVar("_F", bound=Callable[..., Any])


def doc_params(**sections: str) -> Callable[[_F], _F]:
    """Insert each ``sections[name]`` where the decorated function's docstring has a line ``{name}``."""

    def decorate(func: _F) -> _F:
        lines = (func.__doc__ or "").splitlines()
        for name, text in sections.items():
            hits = [i for i, line in enumerate(lines) if line.strip() == f"{{{name}}}"]
            if not hits:
                msg = f"{func.__qualname__}'s docstring has no {{{name}}} line."
                raise ValueError(msg)
            for i in hits:
                indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
                lines[i] = textwrap.indent(text, indent)
        func.__doc__ = "\n".join(lines)
        return func

    return decorate
