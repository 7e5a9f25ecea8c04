"""Atomic output: write to a temporary sibling, then rename, so a failure never leaves a half-written file."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ._errors import MorphomuError

__all__ = ["atomic_path", "check_writable"]


def check_writable(
    path: str | os.PathLike, *, overwrite: bool, arg: str = "path", flag: str = "overwrite=True"
) -> Path:
    """Raise before any work starts if ``path`` exists and ``overwrite`` is false."""
    path = Path(path)
    if path.exists() and not overwrite:
        msg = f"{arg}={str(path)!r} exists; pass {flag} to replace it."
        raise MorphomuError(msg)
    return path


@contextlib.contextmanager
def atomic_path(
    path: str | os.PathLike, *, overwrite: bool = False, arg: str = "path", flag: str = "overwrite=True"
) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``, on error it is removed.

    Works for files and directories. The previous ``path`` (if any, and ``overwrite``) stays intact until
    the new one is complete.
    """
    path = check_writable(path, overwrite=overwrite, arg=arg, flag=flag)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp = tmp_dir / path.name
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.replace(path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
