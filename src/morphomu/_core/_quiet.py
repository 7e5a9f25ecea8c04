"""Silence Lightning's and scvi-tools' chatter inside morphomu's own calls, and only there."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

__all__ = ["quiet_lightning"]

#: Loggers whose start-up chatter (device summary, tips) is hidden.
_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning", "scvi")
#: Lightning hints that do not apply to morphomu's data loaders and runs (regular expressions): its loaders
#: already batch, worker counts are the caller's choice, and short epochs log less often on purpose.
_HINTS = (
    ".*does not have many workers.*",
    ".*exists and is not empty.*",
    ".*smaller than the logging interval.*",
    ".*infer the batch indices.*",
    # Lightning's own use of torch's pytree API (a deprecation inside Lightning, nothing a caller can change)
    ".*isinstance\\(treespec, LeafSpec\\).*",
)


@contextlib.contextmanager
def quiet_lightning(enabled: bool = True, *, level: int = logging.ERROR) -> Iterator[None]:
    """Hide Lightning's and scvi-tools' set-up logging below ``level`` and Lightning's data-loader hints.

    The loggers' levels and the warning filters are restored on exit, so settings outside the block are
    never changed.

    Parameters
    ----------
    enabled
        ``False``: do nothing (e.g. when the caller shows progress output).
    level
        Lowest logging level still shown: ``logging.ERROR`` hides everything but errors,
        ``logging.WARNING`` keeps warnings.
    """
    if not enabled:
        yield
        return
    loggers = [logging.getLogger(name) for name in _LOGGERS]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(level)
        with warnings.catch_warnings():
            for hint in _HINTS:
                warnings.filterwarnings("ignore", message=hint)
            yield
    finally:
        for lg, old in zip(loggers, levels, strict=True):
            lg.setLevel(old)
