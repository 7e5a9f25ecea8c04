"""Small MuData helpers shared by the tools."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mudata import MuData


def update(mdata: MuData) -> None:
    """Refresh the MuData's global indices after a modality was added or replaced.

    Uses mudata's forthcoming behaviour (modality obs columns are not pulled into ``mdata.obs``),
    locally, so it neither warns nor changes the user's global mudata options.
    """
    import mudata

    with mudata.set_options(pull_on_update=False):
        mdata.update()
