"""Safe output: morphomu replaces only what it wrote itself, and never clobbers what appeared meanwhile.

Every output goes through :class:`StagedOutput` (or its context-manager form :func:`atomic_path`):

1. Before any work (fail fast), the target is checked: ``/``, the home directory, the current
   directory and their parents, a symbolic link, a file where a directory is expected (or the
   reverse) are always refused; an existing target is refused without ``overwrite``, and even with
   it unless it is empty or carries morphomu's marker. Stale temporaries of killed runs to the same
   target are cleaned up (an interrupted replacement is rolled back).
2. The output is written into a hidden temporary container next to the target,
   ``.{name}.XXXXXXXX.tmp/{name}``, which carries a marker with the writer's PID and host.
3. The new output is marked as morphomu's (a :data:`MARKER` file inside a directory, the
   :data:`H5_ATTR` root attribute of an HDF5 file) and published with a rename that never replaces
   (``renameat2(RENAME_NOREPLACE)`` on Linux, ``renamex_np(RENAME_EXCL)`` on macOS; elsewhere a hard
   link for files and a lock for directories). If the target appeared meanwhile and may not be
   replaced, the finished output is kept at a visible ``{name}.conflict-{time}`` sibling, named in the
   error, and never cleaned up automatically. With ``overwrite``, the previous output is first moved
   into a unique hidden backup container ``.{name}.XXXXXXXX.old/{name}`` (named in the log), removed
   once the new one is in place, and moved back if publishing fails.

A process killed at any point leaves the target holding the old or the new complete output; its
temporary and backup containers are cleaned up (a backup whose target is missing is restored) by the
next run to the same target, and only once their writer's PID is dead on this host.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import os
import re
import shutil
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any, Literal

from ._errors import MorphomuError

__all__ = [
    "CONTAINER_MARKER",
    "H5_ATTR",
    "MARKER",
    "StagedOutput",
    "atomic_path",
    "check_writable",
    "clean_stale",
    "is_morphomu_output",
    "process_is_alive",
]

logger = logging.getLogger(__name__)

#: File inside every directory morphomu writes (JSON: version, time, the entries written).
MARKER = ".morphomu-output.json"
#: Root attribute of every HDF5 file morphomu writes (a JSON string).
H5_ATTR = "morphomu_output"
#: File inside morphomu's temporary and backup containers (JSON: kind, target, PID, host).
CONTAINER_MARKER = ".morphomu-temp.json"

Kind = Literal["dir", "file"]

#: Called with the name of each step of a commit; tests set it to kill the process at that step.
_hook: Callable[[str], None] | None = None


def _at(point: str) -> None:
    if _hook is not None:
        _hook(point)


# ---------------------------------------------------------------------------------------------------
# processes
# ---------------------------------------------------------------------------------------------------
def _proc_stat(pid: int) -> tuple[str, int] | None:
    """State letter and start time (clock ticks since boot) of ``pid`` from ``/proc``, if available."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return fields[0].decode(), int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def process_is_alive(pid: int, start: int | None = None) -> bool:
    """Whether process ``pid`` of this host runs (and, given ``start``, is the one that started then).

    Unknown answers count as alive: morphomu deletes a temporary only when its writer is surely dead.
    """
    if os.name == "nt":  # os.kill would terminate the process there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's live process
        return True
    proc = _proc_stat(pid)
    if proc is not None:
        state, started = proc
        if state in ("Z", "X"):  # killed, not yet reaped by its parent
            return False
        if start is not None and started != start:  # the PID was reused
            return False
    return True


def _me() -> dict[str, Any]:
    proc = _proc_stat(os.getpid())
    return {"pid": os.getpid(), "start": proc[1] if proc else None, "host": socket.gethostname()}


# ---------------------------------------------------------------------------------------------------
# no-replace rename
# ---------------------------------------------------------------------------------------------------
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1  # linux/fs.h
_RENAME_EXCL = 4  # macOS sys/stdio.h
_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, getattr(errno, "ENOTSUP", -1), getattr(errno, "EOPNOTSUPP", -1)}


@cache
def _libc_rename() -> Callable[[bytes, bytes], int] | None:
    """Libc's no-replace rename (returns 0 or -1 with errno set), or ``None`` where libc lacks one."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if sys.platform.startswith("linux"):
            fn = libc.renameat2
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            fn.restype = ctypes.c_int
            return lambda src, dst: fn(_AT_FDCWD, src, _AT_FDCWD, dst, _RENAME_NOREPLACE)
        if sys.platform == "darwin":
            fn = libc.renamex_np
            fn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint]
            fn.restype = ctypes.c_int
            return lambda src, dst: fn(src, dst, _RENAME_EXCL)
    except (OSError, AttributeError):  # no such symbol (e.g. glibc < 2.28)
        pass
    return None


@contextlib.contextmanager
def _directory_lock(directory: Path) -> Iterator[None]:
    """An exclusive lock on ``directory`` among morphomu processes of this host (no lock file left)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: os.rename never replaces there
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _rename_noreplace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``; raise :class:`FileExistsError` if ``dst`` exists, whatever it is.

    :func:`os.rename` would silently replace a file or an empty directory.
    """
    fn = _libc_rename()
    if fn is not None:
        if fn(os.fsencode(src), os.fsencode(dst)) == 0:
            return
        err = ctypes.get_errno()
        if err in (errno.EEXIST, errno.ENOTEMPTY):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
        if err not in _UNSUPPORTED:  # e.g. a file system without the flag: fall back below
            raise OSError(err, os.strerror(err), str(src), None, str(dst))
    if os.name == "nt":  # pragma: no cover - a rename does not replace on Windows
        src.rename(dst)
        return
    if not src.is_dir() or src.is_symlink():
        try:
            os.link(src, dst, follow_symlinks=False)  # FileExistsError when dst exists
        except FileExistsError:
            raise
        except OSError:  # no hard links on this file system: take the lock below
            pass
        else:
            src.unlink()
            return
    with _directory_lock(dst.parent):
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
        src.rename(dst)


# ---------------------------------------------------------------------------------------------------
# markers
# ---------------------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in the regular file ``path`` (symbolic links are not followed), else ``None``."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            value = json.loads(f.read(1 << 20))
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
    return value if isinstance(value, dict) else None


def _write_json(path: Path, value: dict[str, Any]) -> None:
    """Write ``value`` to ``path`` atomically (a reader sees the old file or the whole new one)."""
    part = path.with_name(f"{path.name}.part")
    part.write_text(json.dumps(value, indent=2))
    part.replace(path)


def _output_info() -> dict[str, Any]:
    from . import __version__

    return {
        "morphomu_output": 1,
        "morphomu_version": __version__,
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **_me(),
    }


def _is_hdf5(path: Path) -> bool:
    try:
        import h5py
    except ImportError:  # pragma: no cover - h5py is a dependency
        return False
    try:
        return bool(h5py.is_hdf5(path))
    except OSError:
        return False


def _mark(path: Path) -> None:
    """Mark the new output ``path`` as morphomu's (HDF5 files and directories; other files cannot be)."""
    if path.is_dir():
        entries = sorted(e.name for e in path.iterdir() if e.name != MARKER)
        _write_json(path / MARKER, {**_output_info(), "entries": entries})
    elif _is_hdf5(path):
        import h5py

        with h5py.File(path, "r+") as f:
            f.attrs[H5_ATTR] = json.dumps(_output_info())
    else:
        logger.debug("%s is neither a directory nor an HDF5 file: it carries no morphomu marker", path)


def is_morphomu_output(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an output morphomu wrote: a marked directory or HDF5 file (not a link)."""
    path = Path(path)
    if path.is_symlink():
        return False
    if path.is_dir():
        info = _read_json(path / MARKER)
        return info is not None and info.get("morphomu_output") == 1
    if path.is_file() and _is_hdf5(path):
        import h5py

        try:
            with h5py.File(path, "r") as f:
                value = f.attrs.get(H5_ATTR)
        except OSError:  # e.g. locked by a writer
            return False
        if isinstance(value, bytes):
            value = value.decode(errors="replace")
        try:
            return isinstance(value, str) and json.loads(value).get("morphomu_output") == 1
        except (ValueError, AttributeError):
            return False
    return False


def _few(names: list[str], n: int = 5) -> str:
    shown = ", ".join(repr(x) for x in names[:n])
    return shown + (f", ... ({len(names)} entries)" if len(names) > n else "")


def _not_replaceable(path: Path, *, owned: bool) -> str | None:
    """Why ``path`` may not be replaced (ends "it is ..."), or ``None`` if it is empty or morphomu's own."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        return f"a symbolic link (to {str(path.readlink())!r})"
    if stat.S_ISDIR(st.st_mode):
        try:
            entries = sorted(e.name for e in path.iterdir())
        except OSError as e:
            return f"a directory morphomu cannot list ({e.strerror})"
        if not entries or owned:
            return None
        info = _read_json(path / MARKER)
        if info is None or info.get("morphomu_output") != 1:
            return f"a directory morphomu did not write: it has no {MARKER} marker and holds {_few(entries)}"
        added = sorted(set(entries) - set(info.get("entries", ())) - {MARKER})
        if added:
            return f"an output of morphomu to which files were added since: {_few(added)}"
        return None
    if stat.S_ISREG(st.st_mode):
        if st.st_size == 0 or owned or is_morphomu_output(path):
            return None
        return f"a file morphomu did not write: it has no {H5_ATTR!r} attribute"
    return "neither a regular file nor a directory"


# ---------------------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------------------
def _absolute(path: str | os.PathLike, arg: str) -> Path:
    if not isinstance(path, str | os.PathLike) or not str(path):
        msg = f"{arg}={path!r}: expected a path (str or os.PathLike)."
        raise MorphomuError(msg)
    # normpath, not resolve(): a link at the target must stay visible to be refused
    return Path(os.path.normpath(Path(path).expanduser().absolute()))


def _refuse_special(path: Path, arg: str) -> None:
    """Refuse ``/``, the home directory, the current directory and their parents as a target."""
    real = Path(os.path.realpath(path))
    what = None
    if real.parent == real:
        what = "the file-system root"
    else:
        cwd = Path.cwd().resolve()
        try:
            home = Path(os.path.realpath(Path.home()))
        except (RuntimeError, KeyError):  # no home directory known
            home = None
        if home is not None and real == home:
            what = "your home directory"
        elif home is not None and real in home.parents:
            what = "a parent of your home directory"
        elif real == cwd:
            what = "the current directory"
        elif real in cwd.parents:
            what = "a parent of the current directory"
    if what is not None:
        msg = (
            f"{arg}={str(path)!r} is {what}; morphomu never writes its output there nor replaces it. "
            f"Give a path to a new directory or file, e.g. {str(path / 'morphomu-out')!r}."
        )
        raise MorphomuError(msg)


def _check_kind(path: Path, arg: str, kind: Kind | None) -> None:
    """Refuse a symbolic link, and an existing target of the wrong kind."""
    if path.is_symlink():
        msg = (
            f"{arg}={str(path)!r} is a symbolic link (to {str(path.readlink())!r}); morphomu neither writes "
            f"through nor replaces links. Give the real path, or remove the link."
        )
        raise MorphomuError(msg)
    if kind == "dir" and path.exists() and not path.is_dir():
        msg = f"{arg}={str(path)!r} is a file; expected a directory (created by morphomu). Give another path."
        raise MorphomuError(msg)
    if kind == "file" and path.is_dir():
        msg = f"{arg}={str(path)!r} is a directory; expected a file path (the file is created by morphomu)."
        raise MorphomuError(msg)


def _refusal(path: Path, arg: str, flag: str, reason: str) -> str:
    return (
        f"{flag} will not replace {arg}={str(path)!r}: it is {reason}. morphomu replaces only outputs it "
        f"wrote itself, which carry its marker ({MARKER} in a directory, the {H5_ATTR!r} attribute of a "
        f"file); outputs written by earlier versions of morphomu carry none. Delete or move it yourself, or choose "
        f"another {arg}."
    )


def check_writable(
    path: str | os.PathLike,
    *,
    overwrite: bool,
    arg: str = "path",
    flag: str = "overwrite=True",
    kind: Kind | None = None,
    owned: bool = False,
) -> Path:
    """Check, before any work, that morphomu may write its output at ``path``; return it as an absolute path.

    Also cleans up what killed runs to the same target left (see :func:`clean_stale`).

    Parameters
    ----------
    path
        The output to write.
    overwrite
        Whether an existing output may be replaced (only if it is empty or morphomu's own).
    arg
        The argument's name, for the messages (e.g. ``'--out'``).
    flag
        How the user asks to replace, for the messages (e.g. ``'--overwrite'``).
    kind
        ``'dir'`` or ``'file'``: refuse an existing target of the other kind; ``None``: either.
    owned
        The target's location is morphomu's own: replace what is there even without a marker.

    Raises
    ------
    MorphomuError
        ``path`` is ``/``, the home directory, the current directory or a parent of them, a symbolic
        link, of the wrong ``kind``; or it exists and ``overwrite`` is false or it is not replaceable.
    """
    path = _absolute(path, arg)
    _check_kind(path, arg, kind)  # a link first: it is refused whatever it points to
    _refuse_special(path, arg)
    clean_stale(path)
    if os.path.lexists(path):
        reason = _not_replaceable(path, owned=owned)
        if not overwrite:
            msg = f"{arg}={str(path)!r} exists; pass {flag} to replace it"
            if reason is not None:
                msg += (
                    f" (only possible for an output morphomu wrote; this one is {reason}: delete or move it "
                    f"yourself, or choose another {arg})"
                )
            raise MorphomuError(msg + ".")
        if reason is not None:
            raise MorphomuError(_refusal(path, arg, flag, reason))
    return path


# ---------------------------------------------------------------------------------------------------
# temporary and backup containers
# ---------------------------------------------------------------------------------------------------
def _container_re(name: str) -> re.Pattern[str]:
    return re.compile(rf"^\.{re.escape(name)}\.[^/]+\.(tmp|old)$")


def _make_container(path: Path, kind: Literal["tmp", "old"]) -> Path:
    """A new hidden directory next to ``path``, marked with this process (its payload goes in ``/{name}``)."""
    container = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=f".{kind}", dir=path.parent))
    state = "writing" if kind == "tmp" else "backup"
    _write_json(
        container / CONTAINER_MARKER,
        {
            "morphomu_temp": 1,
            "kind": kind,
            "state": state,
            "target": path.name,
            "created": time.time(),
            **_me(),
        },
    )
    return container


def _remove_container(container: Path, *, name: str) -> None:
    """Remove a container: its payload first, its marker last (so a kill midway leaves it recognisable)."""
    info = _read_json(container / CONTAINER_MARKER)
    if info is not None and info.get("state") != "discarding":
        _write_json(container / CONTAINER_MARKER, {**info, "state": "discarding"})  # never restored now
    _at("discarding")
    payload = container / name
    if payload.is_dir() and not payload.is_symlink():
        shutil.rmtree(payload)
    elif os.path.lexists(payload):
        payload.unlink()
    for p in container.iterdir():  # e.g. a marker's '.part' file
        if p.name == CONTAINER_MARKER:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    with contextlib.suppress(FileNotFoundError):
        (container / CONTAINER_MARKER).unlink()
    container.rmdir()


def clean_stale(path: str | os.PathLike) -> list[Path]:
    """Clean up what killed morphomu runs left next to ``path``; return the containers removed.

    Only morphomu's containers for this target (``.{name}.*.tmp`` / ``.{name}.*.old`` directories carrying
    :data:`CONTAINER_MARKER`) whose writer's PID is dead on this host are touched. A backup whose target
    is missing (the run was killed between moving the old output aside and publishing the new one) is
    moved back to the target; other stale containers are deleted.
    """
    path = Path(path)
    pattern = _container_re(path.name)
    try:
        names = [e.name for e in path.parent.iterdir()]
    except OSError:
        return []
    host = socket.gethostname()
    stale = []
    for entry in names:
        container = path.parent / entry
        if not pattern.match(entry) or container.is_symlink() or not container.is_dir():
            continue
        info = _read_json(container / CONTAINER_MARKER)
        if info is None or info.get("morphomu_temp") != 1 or info.get("target") != path.name:
            continue
        if info.get("host") != host or not isinstance(info.get("pid"), int):
            continue
        if process_is_alive(info["pid"], info.get("start")):
            continue
        stale.append((float(info.get("created", 0)), container, info))
    removed = []
    for _, container, info in sorted(stale, key=lambda t: t[0], reverse=True):  # newest backup first
        payload = container / path.name
        if (
            info.get("kind") == "old"
            and info.get("state") == "backup"
            and os.path.lexists(payload)
            and not os.path.lexists(path)
        ):
            try:
                _rename_noreplace(payload, path)
                logger.warning("restored %s from the backup %s left by a killed run", path, container)
            except OSError:
                continue
        try:
            _remove_container(container, name=path.name)
            removed.append(container)
        except OSError as e:  # e.g. another process cleaning it at the same time
            logger.debug("could not remove %s: %s", container, e)
    return removed


def _visible_sibling(path: Path, src: Path, tag: str) -> Path:
    """Move ``src`` to a new visible sibling ``{name}.{tag}-{time}`` of ``path`` and return it."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for i in range(1, 1000):
        dst = path.with_name(f"{path.name}.{tag}-{stamp}" + (f"-{i}" if i > 1 else ""))
        try:
            _rename_noreplace(src, dst)
        except FileExistsError:
            continue
        return dst
    msg = f"no free name for {path.name}.{tag}-{stamp}"  # pragma: no cover
    raise MorphomuError(msg)


# ---------------------------------------------------------------------------------------------------
# staged output
# ---------------------------------------------------------------------------------------------------
class StagedOutput:
    """An output being written: checked now, written to :attr:`tmp`, published by :meth:`commit`.

    Use it where the work itself writes into the output (a report directory with plots) and a failure
    should still publish something; otherwise use :func:`atomic_path`. The object is a context manager
    that discards the temporary (if not committed) on exit; it never commits by itself.

    Parameters
    ----------
    path
        The output to write.
    overwrite
        Replace an existing output, if it is empty or morphomu's own (checked now and at commit).
    arg
        The argument's name, for the messages (e.g. ``'--out'``).
    flag
        How the user asks to replace, for the messages (e.g. ``'--overwrite'``).
    kind
        ``'dir'`` or ``'file'``: what the output is; ``None``: either.
    owned
        The target's location is morphomu's own: replace what is there even without a marker.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        overwrite: bool = False,
        arg: str = "path",
        flag: str = "overwrite=True",
        kind: Kind | None = None,
        owned: bool = False,
    ) -> None:
        self.path = check_writable(path, overwrite=overwrite, arg=arg, flag=flag, kind=kind, owned=owned)
        self.overwrite, self.arg, self.flag, self.kind = overwrite, arg, flag, kind
        self.owned = owned
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._container: Path | None = _make_container(self.path, "tmp")
        except OSError as e:
            msg = f"cannot write {arg}={str(self.path)!r}: {e.strerror or e} ({e.filename or self.path.parent})."
            raise MorphomuError(msg) from None
        #: Where to write the output (a file or a directory, created by the caller).
        self.tmp = self._container / self.path.name
        #: Where the output was published (:attr:`path`, or a ``.conflict-`` sibling on an error).
        self.published: Path | None = None
        _at("created")

    def __enter__(self) -> StagedOutput:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()

    def discard(self) -> None:
        """Remove the temporary output (nothing, once committed)."""
        if self._container is not None and self._container.exists():
            _remove_container(self._container, name=self.path.name)
        self._container = None

    def commit(self) -> Path:
        """Publish the output at :attr:`path` without ever replacing what may not be replaced.

        Returns
        -------
        The published path.

        Raises
        ------
        MorphomuError
            The target appeared while the output was written and may not be replaced (no ``overwrite``,
            or not morphomu's own); the finished output is then kept at a ``{name}.conflict-{time}``
            sibling, named in the message.
        """
        if self._container is None:
            msg = f"the output for {self.arg}={str(self.path)!r} was already committed or discarded."
            raise MorphomuError(msg)
        tmp, path = self.tmp, self.path
        if not os.path.lexists(tmp) or tmp.is_symlink():
            msg = f"nothing was written for {self.arg}={str(path)!r}."
            raise MorphomuError(msg)
        if self.kind is not None and tmp.is_dir() != (self.kind == "dir"):
            msg = f"{self.arg}={str(path)!r}: a {self.kind} was expected, another kind was written."
            raise MorphomuError(msg)
        _mark(tmp)
        _at("marked")
        for _ in range(10):  # a few rounds against other runs replacing the same target at once
            try:
                _rename_noreplace(tmp, path)
            except FileExistsError:
                pass
            else:
                break
            _at("exists")
            if not self.overwrite:
                self._conflict(None)
            reason = _not_replaceable(path, owned=self.owned)
            if reason is None and self.kind == "dir" and not path.is_dir():
                reason = "a file, where a directory is expected"
            if reason is not None:
                self._conflict(reason)
            backup = self._move_aside()
            if backup is None:  # the target vanished meanwhile: try again
                continue
            try:
                _at("aside")
                _rename_noreplace(tmp, path)
            except FileExistsError:  # another run published meanwhile; its output is newer than ours old one
                _remove_container(backup, name=path.name)
                continue
            except BaseException:
                self._restore(backup)
                raise
            _at("published")
            _remove_container(backup, name=path.name)
            break
        else:  # pragma: no cover
            msg = f"{self.arg}={str(path)!r} keeps being replaced by other runs; this run's output was not published."
            raise MorphomuError(msg)
        self.published = path
        self.discard()
        return path

    def _conflict(self, reason: str | None) -> None:
        """Keep the finished output at a visible sibling and raise, naming it."""
        kept = _visible_sibling(self.path, self.tmp, "conflict")
        self.published = kept
        self.discard()
        why = (
            f"{self.flag} was not given"
            if reason is None
            else f"it is {reason}, which {self.flag} does not replace"
        )
        msg = (
            f"{self.arg}={str(self.path)!r} appeared while this run was writing (another run to the same "
            f"place?) and is left as it is: {why}. This run's finished output is kept at {str(kept)!r}; "
            f"morphomu never removes it."
        )
        raise MorphomuError(msg)

    def _move_aside(self) -> Path | None:
        """Move the current target into a new backup container; ``None`` if it vanished meanwhile."""
        path = self.path
        backup = _make_container(path, "old")
        moved = backup / path.name
        try:
            path.rename(moved)  # moved does not exist: nothing can be replaced here
        except FileNotFoundError:
            _remove_container(backup, name=path.name)
            return None
        reason = _not_replaceable(moved, owned=self.owned)  # it may have changed since it was checked
        if reason is not None:
            try:
                _rename_noreplace(moved, path)
                _remove_container(backup, name=path.name)
            except FileExistsError:  # never delete it: give it a visible name
                kept = _visible_sibling(path, moved, "moved")
                _remove_container(backup, name=path.name)
                msg = f"{self.arg}={str(path)!r} changed during the commit; what was there is now at {str(kept)!r}."
                raise MorphomuError(msg) from None
            self._conflict(reason)
        logger.info(
            "replacing %s; the previous output is kept at %s until the new one is in place", path, backup
        )
        return backup

    def _restore(self, backup: Path) -> None:
        """Move the previous output back after a failed publish."""
        try:
            _rename_noreplace(backup / self.path.name, self.path)
        except OSError:  # someone else published meanwhile: the old output is superseded
            logger.warning("could not restore %s from %s", self.path, backup)
        _remove_container(backup, name=self.path.name)


@contextlib.contextmanager
def atomic_path(
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    arg: str = "path",
    flag: str = "overwrite=True",
    kind: Kind | None = None,
    owned: bool = False,
) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is published at ``path``, on error removed.

    Works for files and directories (the caller creates the yielded path). The previous output, if any
    (with ``overwrite``, and only if it is empty or morphomu's own), stays intact until the new one is in
    place. A file that is not HDF5 cannot carry morphomu's marker, so it is never replaced later. See
    :class:`StagedOutput` for the parameters and the errors.
    """
    with StagedOutput(path, overwrite=overwrite, arg=arg, flag=flag, kind=kind, owned=owned) as staged:
        yield staged.tmp
        staged.commit()
