"""Names of an image set's channels, as the tools that made it stored them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import _constants as C

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["channel_names"]


def channel_names(adata: AnnData, images_key: str, n_channels: int) -> list[str]:
    """The stored names of the ``n_channels`` channels of ``images_key``, or ``channel0``, ``channel1``, ...

    Looked up in ``adata.uns[images_key]['channels']`` (an on-disk image set's reference), then in the
    parameters :func:`morphomu.pp.crop_cells` stored; a list of another length is ignored.
    """
    ref = adata.uns.get(images_key)
    recorded = adata.uns.get(C.UNS_KEY, {})
    # the crop_cells record: under images_key, or under 'crop_cells' in files written before one-entry-per-key
    cropped = (recorded.get(images_key) or recorded.get("crop_cells")) if isinstance(recorded, dict) else None
    for source in (ref if isinstance(ref, dict) else {}, cropped or {}):
        names = source.get("channels") if isinstance(source, dict) else None
        if names is not None and len(names) == n_channels:
            return [str(c) for c in names]
    return [f"channel{i}" for i in range(n_channels)]
