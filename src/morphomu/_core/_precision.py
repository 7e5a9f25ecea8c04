"""The numeric precision of training and generation, resolved once for every model from the hardware.

``precision="auto"`` (every model's default) means bf16 mixed precision where the device multiplies in
bf16 fast, and full float32 elsewhere:

- CUDA: :func:`torch.cuda.is_bf16_supported` (native support only, not emulation);
- CPU: the ``avx512_bf16`` or ``amx_bf16`` flag of ``/proc/cpuinfo`` (Linux; other systems get float32).
  A flag, never a timed probe: the choice must not depend on the machine's load.

The environment variable ``MORPHOMU_PRECISION`` (e.g. ``32``) replaces what ``"auto"`` resolves to, for
every model in the process; an explicit ``precision=`` still wins. The test suite sets it to ``32``.

torch is imported inside the functions, so ``import morphomu`` stays fast.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .._errors import MorphomuError

__all__ = [
    "PRECISION_ENV",
    "PRECISIONS",
    "autocast",
    "check_precision",
    "cpu_has_fast_bf16",
    "resolve_precision",
]

#: Environment variable that sets what ``precision="auto"`` resolves to (a value of :data:`PRECISIONS`).
PRECISION_ENV = "MORPHOMU_PRECISION"
#: The precisions a model's ``train`` and ``generate`` take, as Lightning names them (and ``"auto"``).
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed")
#: Lightning's short names for them.
_ALIASES: dict[Any, str] = {
    32: "32-true",
    "32": "32-true",
    "bf16": "bf16-mixed",
    16: "16-mixed",
    "16": "16-mixed",
}
#: Lightning precisions that would leave the weights in another dtype after training (the EMA averages of
#: the diffusion models would lose their small updates, and Trident's frozen image VAE would be converted).
_REFUSED = ("bf16-true", "16-true", "64-true", "64", "transformer-engine", "transformer-engine-float16")
#: CPU flags (``/proc/cpuinfo``) of native bf16 matrix instructions.
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def check_precision(precision: Any, arg: str = "precision") -> str:
    """``precision`` as one of :data:`PRECISIONS` (Lightning's short names accepted), else a named error."""
    key = precision.strip().lower() if isinstance(precision, str) else precision
    if isinstance(key, bool) or not isinstance(key, str | int):  # True would read as 1, 32.0 as 32
        key = None
    with contextlib.suppress(TypeError):  # unhashable values fall through to the error
        key = _ALIASES.get(key, key)
    if isinstance(key, str) and key in PRECISIONS:
        return key
    if isinstance(key, str | int) and (key in _REFUSED or key == 64):
        msg = (
            f"{arg}={precision!r}: morphomu trains and generates with float32 weights; a 'true' half or double "
            "precision would leave them converted (EMA averages lose their updates, Trident's frozen image VAE "
            "changes). Use 'bf16-mixed' (bf16 compute, float32 weights), '32-true' or 'auto'."
        )
        raise MorphomuError(msg)
    msg = (
        f"{arg}={precision!r}: expected one of {list(PRECISIONS)} (or Lightning's short names 32, '32', 'bf16', "
        "16, '16')."
    )
    raise MorphomuError(msg)


def cpu_has_fast_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU has native bf16 matrix instructions (``avx512_bf16`` or ``amx_bf16``).

    Parameters
    ----------
    cpuinfo
        Text in the format of Linux's ``/proc/cpuinfo``; default: that file, read once (``False`` on other
        systems or when it cannot be read).
    """
    text = _proc_cpuinfo() if cpuinfo is None else cpuinfo
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() == "flags" and set(value.split()) & set(CPU_BF16_FLAGS):
            return True
    return False


@functools.cache
def _proc_cpuinfo() -> str:
    if not sys.platform.startswith("linux"):
        return ""
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _device_type(device: Any) -> str:
    """``'cuda'``, ``'cpu'``, ``'mps'`` or another name, for a Lightning accelerator or a torch device."""
    import torch

    if isinstance(device, torch.device):
        return device.type
    if isinstance(device, str):
        name = device.strip().lower().split(":")[0]
        if name == "auto":  # Lightning's choice: CUDA, then Apple's MPS, then the CPU
            if torch.cuda.is_available():
                return "cuda"
            mps = getattr(torch.backends, "mps", None)
            return "mps" if mps is not None and mps.is_available() else "cpu"
        return {"gpu": "cuda"}.get(name, name)
    name = type(device).__name__.lower()  # a Lightning Accelerator instance
    return next((kind for kind in ("cuda", "cpu", "mps") if kind in name), name)


def _cuda_has_fast_bf16() -> bool:
    import torch

    if not torch.cuda.is_available():
        return False
    try:  # torch >= 2.3 counts emulated bf16 (e.g. a V100) unless told not to
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:
        return bool(torch.cuda.is_bf16_supported())


def resolve_precision(precision: Any = "auto", device: Any = "auto", *, arg: str = "precision") -> str:
    """The Lightning precision a run uses: ``precision`` checked, with ``"auto"`` resolved for ``device``.

    Parameters
    ----------
    precision
        ``"auto"``, one of :data:`PRECISIONS` or a Lightning short name (``32``, ``'bf16'``, ...).
    device
        A Lightning accelerator name (``'auto'``, ``'cpu'``, ``'gpu'`` / ``'cuda'``, ``'mps'``), a
        Lightning accelerator or a :class:`torch.device`.
    arg
        The argument's name in error messages.

    Returns
    -------
    ``'bf16-mixed'`` where ``"auto"`` finds fast bf16 on the device (module description), else
    ``'32-true'``; an explicit value as Lightning's full name.
    """
    value = check_precision(precision, arg)
    if value != "auto":
        return value
    env = os.environ.get(PRECISION_ENV, "").strip()
    if env:
        value = check_precision(env, f"the environment variable {PRECISION_ENV}")
        if value != "auto":
            return value
    kind = _device_type(device)
    fast = _cuda_has_fast_bf16() if kind == "cuda" else kind == "cpu" and cpu_has_fast_bf16()
    return "bf16-mixed" if fast else "32-true"


@contextlib.contextmanager
def autocast(precision: str, device: Any) -> Iterator[None]:
    """``torch.autocast`` on ``device`` for a resolved mixed ``precision``; nothing for ``'32-true'``."""
    import torch

    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=_device_type(device), dtype=dtype):
        yield
