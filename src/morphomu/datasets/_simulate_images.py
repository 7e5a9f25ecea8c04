"""Rendering of simulated 5-channel Cell Painting field tiles from the simulator's per-cell latents.

Each tile is a small field centred on the imaged cell, with neighbours whose number follows the
cell's ``density`` latent (cytotoxic treatments give sparse fields), and cells whose radius follows
``size``, whose elongation follows ``shape`` and whose per-stain brightness follows
``intensity_{stain}``. Channels are the five Cell Painting stains, never squashed to RGB:

=====  ===================================================================
DNA    the nucleus (a filled ellipse, ~45 % of the cell radius)
RNA    nucleoli (two bright spots in the nucleus) over a faint cytoplasm
AGP    the cell membrane / actin cortex (a ring at the cell edge)
Mito   textured cytoplasm
ER     perinuclear cytoplasm (brightest near the nucleus)
=====  ===================================================================

Fully vectorised over tiles and cells (numpy broadcasting over blocks of tiles), float32 throughout.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .. import _constants as C
from .._errors import MorphomuError
from .._validation import check_memory, check_positive_int

__all__ = ["render_tiles", "tile_memory"]

#: Most cells drawn in one tile (the centre cell included).
MAX_CELLS = 10
#: Mean number of cells in a tile at the control density.
BASE_CELLS = 4.0
#: Tiles rendered at once (bounds the temporary (tiles x cells x H x W) arrays).
_TILE_BLOCK = 256
#: Bytes of temporaries per pixel of a tile while its block renders (per-cell patches of ~16 float32
#: arrays for up to :data:`MAX_CELLS` cells, the padded canvas, the float tile and its noise); measured
#: ~140 at 64 and 128 px.
_RENDER_BYTES_PER_PIXEL = 160
_DTYPES = ("uint8", "float16")


def _ramp(x: np.ndarray, width: float) -> np.ndarray:
    """Soft step from 0 (x <= -width/2) to 1 (x >= width/2), in place on ``x``; cheaper than a sigmoid."""
    x *= np.float32(1.0 / width)
    x += np.float32(0.5)
    return np.clip(x, 0.0, 1.0, out=x)


def _texture(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Smooth random texture in [0.5, 1.5]: coarse noise upsampled by repetition, then a 2 x 2 box blur."""
    coarse = max(2, size // 8)
    noise = rng.random((n, coarse, coarse), dtype=np.float32)
    rep = -(-size // coarse)
    up = np.repeat(np.repeat(noise, rep, axis=1), rep, axis=2)[:, :size, :size]
    up = (up + np.roll(up, 1, axis=1) + np.roll(up, 1, axis=2) + np.roll(up, (1, 1), axis=(1, 2))) / 4.0
    return (0.5 + up).astype(np.float32)


def _render_block(rng: np.random.Generator, z: np.ndarray, col: dict[str, int], size: int) -> np.ndarray:
    n = len(z)
    f32 = np.float32
    # cells per tile from local density: the centre cell plus Poisson neighbours
    lam = (BASE_CELLS - 1.0) * np.exp(0.35 * z[:, col["density"]])
    n_cells = np.minimum(1 + rng.poisson(lam), MAX_CELLS)
    tile = np.repeat(np.arange(n), n_cells)
    first = np.r_[0, np.cumsum(n_cells)[:-1]]  # each tile's first cell is its centre cell
    slot = np.arange(len(tile)) - first[tile]  # a cell's rank within its tile
    m = len(tile)

    # geometry: centre cell in the middle, neighbours anywhere (also partly outside the tile)
    centre = rng.uniform(-0.1, 1.1, size=(m, 2)) * size
    centre[first] = (size - 1) / 2.0
    zc = z[tile]
    radius = 0.14 * size * np.exp(0.12 * zc[:, col["size"]] + rng.normal(0.0, 0.12, size=m))
    elong = np.exp(np.clip(0.15 * zc[:, col["shape"]], -1.0, 1.0) + rng.normal(0.0, 0.1, size=m))
    semi_a = np.minimum(radius * elong, 0.22 * size)
    semi_b = np.minimum(radius / elong, 0.22 * size)
    angle = rng.uniform(0.0, np.pi, size=m)

    # each cell is drawn on a patch around it, then max-composited onto a padded canvas
    half = int(np.ceil(1.1 * max(semi_a.max(), semi_b.max()))) + 1
    patch = 2 * half + 1
    pad = half + int(np.ceil(0.1 * size)) + 1
    origin = np.floor(centre).astype(np.int64) - half  # patch top-left, in tile pixels
    offset = np.arange(patch, dtype=f32)
    dy = (origin[:, 1, None, None] + offset[None, :, None] - centre[:, 1, None, None]).astype(
        f32
    )  # (m, P, 1)
    dx = (origin[:, 0, None, None] + offset[None, None, :] - centre[:, 0, None, None]).astype(
        f32
    )  # (m, 1, P)
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    u = dx * (cos / semi_a[:, None, None]).astype(f32) + dy * (sin / semi_a[:, None, None]).astype(f32)
    v = dy * (cos / semi_b[:, None, None]).astype(f32) - dx * (sin / semi_b[:, None, None]).astype(f32)
    rho = np.sqrt(u * u + v * v)  # elliptical radius: 1 at the cell edge

    body = _ramp(1.0 - rho, 0.16)
    nucleus = _ramp(0.45 - rho, 0.08)
    cytoplasm = body - nucleus
    ring = np.clip(1.0 - np.abs(rho - f32(0.93)) * f32(1 / 0.14), 0.0, 1.0)
    spots = np.minimum(
        (u - f32(0.15)) ** 2 + (v - f32(0.1)) ** 2, (u + f32(0.12)) ** 2 + (v + f32(0.15)) ** 2
    )
    nucleoli = np.clip(1.0 - spots * f32(1 / 0.012), 0.0, 1.0)
    perinuclear = cytoplasm * np.clip(1.6 - rho, 0.0, 1.0)
    patterns = (
        nucleus * f32(0.8),
        (nucleoli * nucleus + f32(0.25) * cytoplasm) * f32(0.8),
        (ring + f32(0.15) * cytoplasm) * f32(0.7),
        cytoplasm * f32(0.5),
        (perinuclear + f32(0.1) * cytoplasm) * f32(0.7),
    )

    canvas = np.zeros((n, size + 2 * pad, size + 2 * pad), dtype=f32)
    windows = np.lib.stride_tricks.sliding_window_view(canvas, (patch, patch), axis=(1, 2), writeable=True)
    oy, ox = origin[:, 1] + pad, origin[:, 0] + pad
    by_slot = [np.flatnonzero(slot == k) for k in range(int(n_cells.max()))]
    tiles = np.empty((n, C.N_STAINS, size, size), dtype=f32)
    for c, (stain, pattern) in enumerate(zip(C.STAINS, patterns, strict=True)):
        # per-cell stain brightness from the intensity latent, with cell-to-cell variation
        level = np.exp(0.2 * zc[:, col[f"intensity_{stain}"]] + rng.normal(0.0, 0.15, size=m)).astype(f32)
        pattern *= level[:, None, None]
        canvas[:] = 0.0
        for cells in by_slot:  # a tile has one cell per slot, so each write hits distinct pixels
            t = tile[cells]
            windows[t, oy[cells], ox[cells]] = np.maximum(windows[t, oy[cells], ox[cells]], pattern[cells])
        tiles[:, c] = canvas[:, pad : pad + size, pad : pad + size]
    tiles[:, 3] *= _texture(rng, n, size)  # mitochondria are textured
    noise = rng.random(tiles.shape, dtype=f32)  # uniform, sd 0.02: cheaper than Gaussian, looks the same
    noise *= f32(0.07)
    tiles += noise
    tiles += f32(0.04 - 0.035)  # background minus the noise's mean offset
    return np.clip(tiles, 0.0, 1.0, out=tiles)


def tile_memory(n_tiles: int, image_size: int, dtype: str = "uint8") -> int:
    """Estimated peak memory of :func:`render_tiles`, in bytes: the tiles plus one block's temporaries.

    Parameters
    ----------
    n_tiles
        Tiles rendered.
    image_size
        Tile height and width.
    dtype
        ``'uint8'`` or ``'float16'``.
    """
    pixels = int(image_size) ** 2
    out = int(n_tiles) * C.N_STAINS * pixels * np.dtype(dtype).itemsize
    return out + min(int(n_tiles), _TILE_BLOCK) * pixels * _RENDER_BYTES_PER_PIXEL


def render_tiles(
    rng: np.random.Generator,
    latent: np.ndarray,
    *,
    axes: Sequence[str],
    image_size: int,
    dtype: str = "uint8",
) -> np.ndarray:
    """Render one ``5 x image_size x image_size`` field tile per cell from its latent row.

    Parameters
    ----------
    rng
        Random generator (cell placement, per-cell variation, texture, noise).
    latent
        Per-cell latents (``n x len(axes)``); the columns ``density``, ``size``, ``shape`` and
        ``intensity_{stain}`` are used.
    axes
        Names of the latent columns.
    image_size
        Tile height and width.
    dtype
        ``'uint8'`` (0-255) or ``'float16'`` (0-1).

    Returns
    -------
    Tiles of shape ``(n, 5, image_size, image_size)``, channels in the order of the stains
    ``DNA, RNA, AGP, Mito, ER``.

    Raises
    ------
    MorphomuError
        A size that is not a positive integer, an unknown dtype, or tiles whose estimated memory
        (:func:`tile_memory`) exceeds the memory available, before anything is allocated.
    """
    image_size = check_positive_int(image_size, "image_size")
    if dtype not in _DTYPES:
        msg = f"dtype={dtype!r} is unknown; choose one of {list(_DTYPES)}."
        raise MorphomuError(msg)
    n = len(latent)
    check_memory(
        tile_memory(n, image_size, dtype),
        what=f"rendering {n:,} tiles of 5 x {image_size} x {image_size} {dtype}",
        hint="render fewer or smaller tiles",
    )
    col = {name: i for i, name in enumerate(axes)}
    latent = np.asarray(latent, dtype=np.float32)
    out = np.empty((n, C.N_STAINS, image_size, image_size), dtype=np.dtype(dtype))
    for start in range(0, n, _TILE_BLOCK):
        block = _render_block(rng, latent[start : start + _TILE_BLOCK], col, image_size)
        if out.dtype == np.uint8:
            out[start : start + len(block)] = np.rint(block * 255.0).astype(np.uint8)
        else:
            out[start : start + len(block)] = block.astype(out.dtype)
    return out
