"""Small MuData helpers shared by the tools."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mudata import MuData


@contextmanager
def no_pull_on_update() -> Iterator[None]:
    """Use mudata's forthcoming ``update()`` behaviour (no pulling of modality columns) within the block.

    Restores the user's setting afterwards. Unlike ``with mudata.set_options(...)``, this does not log
    through the root logger, which in mudata 0.3 installs a root handler (``logging.basicConfig``) and
    so duplicates every later log line of the user's session.
    """
    import mudata

    previous = mudata.set_options(pull_on_update=False).opts
    try:
        yield
    finally:
        mudata.set_options(**previous)


def update(mdata: MuData) -> None:
    """Refresh the MuData's global indices after a modality was added or replaced, without warnings."""
    with no_pull_on_update():
        mdata.update()
