"""Per-cell crops from multi-channel field images: segment nuclei, cut fixed-size windows around centroids.

A plate is processed one field at a time: a field is read, segmented (unless label masks are given),
cropped and released before the next one is read. Crops go to ``.obsm['images']`` (cells x channels x
height x width, in the field's integer dtype), or, for a large plate, to an on-disk zarr array that
``.uns['images']`` references through a row-index obs column (:class:`CropReader` streams rows from
either place).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from .. import _constants as C
from .._errors import ContractError
from .._io import atomic_path
from .._uns import store as store_record

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["CropReader", "crop_cells", "segment_nuclei"]

#: obs column (suffix) holding each cell's row in an on-disk crop store.
ROW_SUFFIX = "_row"
#: Cells per zarr chunk: small enough that a batch of random rows reads little extra.
_CHUNK_CELLS = 64
_TIFF_SUFFIXES = (".tif", ".tiff")

FieldSpec = Any  # ndarray | str | PathLike | ImageContainer | tuple of 2-d channels


# --- segmentation -----------------------------------------------------------------------------------


def segment_nuclei(
    image: np.ndarray,
    *,
    diameter: float | None = None,
    sigma: float = 1.0,
) -> np.ndarray:
    """Label nuclei in a 2-d nuclear-stain image (classic threshold + distance watershed).

    Steps (scikit-image): Gaussian smoothing; a foreground mask that is above both a local threshold
    (block of four nucleus diameters, which keeps dim nuclei next to bright ones) and half the global
    Otsu threshold (which keeps background out); holes filled; touching nuclei split by a watershed of
    the distance transform seeded at its peaks (at least a quarter diameter apart); objects smaller than
    a fifth of a diameter across removed. On stardist's ``img2d.tif`` this scores F1 ~0.84 at IoU 0.5
    against its ground truth. For harder images pass your own segmenter to :func:`crop_cells`
    (``segmentation=``), e.g. cellpose or stardist.

    Parameters
    ----------
    image
        2-d array (height x width) of the nuclear stain.
    diameter
        Typical nucleus diameter in pixels; estimated from the Otsu mask's median object area when ``None``.
    sigma
        Gaussian smoothing in pixels before thresholding.

    Returns
    -------
    int32 label image: 0 is background, nuclei are numbered 1..n.
    """
    from scipy import ndimage as ndi
    from skimage import feature, filters, measure, morphology, segmentation

    image = np.asarray(image)
    if image.ndim != 2:
        msg = f"image must be a 2-d nuclear-stain image (height x width), found shape {image.shape}."
        raise ContractError(msg)
    if np.issubdtype(image.dtype, np.inexact) and not np.isfinite(image).all():
        msg = f"image has {int((~np.isfinite(image)).sum())} non-finite pixels (NaN or inf); segmentation needs finite values."
        raise ContractError(msg)
    x = filters.gaussian(image.astype(np.float32), sigma=sigma, preserve_range=True)
    if float(x.max()) <= float(x.min()):
        return np.zeros(x.shape, np.int32)
    otsu = filters.threshold_otsu(x)
    if diameter is None:
        coarse = measure.label(ndi.binary_fill_holes(x > otsu))
        areas = np.bincount(coarse.ravel())[1:]
        areas = areas[areas > 0]
        if areas.size == 0:
            return np.zeros(x.shape, np.int32)
        diameter = 2.0 * float(np.sqrt(np.median(areas) / np.pi))
    diameter = max(float(diameter), 2.0)
    block = int(4 * diameter) // 2 * 2 + 1
    mask = (x > filters.threshold_local(x, block)) & (x > 0.5 * otsu)
    mask = ndi.binary_fill_holes(mask)
    distance = filters.gaussian(ndi.distance_transform_edt(mask), sigma=1.0)
    peaks = feature.peak_local_max(
        distance, min_distance=max(2, int(diameter / 4)), labels=measure.label(mask), exclude_border=False
    )
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = segmentation.watershed(-distance, markers, mask=mask)
    labels = morphology.remove_small_objects(labels, max_size=int(np.pi * (diameter / 5) ** 2))
    return segmentation.relabel_sequential(labels)[0].astype(np.int32)


# --- fields -----------------------------------------------------------------------------------------


@dataclass
class _Field:
    """One field of view: where its pixels come from, its shape, well and name, and its labels."""

    image: FieldSpec
    shape: tuple[int, int, int]  # channels, height, width
    dtype: np.dtype
    name: str
    well: str | None = None
    labels: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


def _is_path(x: Any) -> bool:
    return isinstance(x, str | os.PathLike)


def _is_container(x: Any) -> bool:
    return type(x).__name__ == "ImageContainer"


def _is_field(x: Any) -> bool:
    return isinstance(x, np.ndarray | tuple) or _is_path(x) or _is_container(x)


def _path_meta(path: str | os.PathLike, arg: str) -> tuple[tuple[int, ...], np.dtype]:
    path = Path(path)
    if not path.is_file():
        msg = f"{arg}: image file {str(path)!r} does not exist."
        raise ContractError(msg)
    if path.suffix.lower() in _TIFF_SUFFIXES:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            return tuple(int(s) for s in series.shape), np.dtype(series.dtype)
    import imageio.v3 as iio

    props = iio.improps(path)
    return tuple(int(s) for s in props.shape), np.dtype(props.dtype)


def _read_path(path: str | os.PathLike) -> np.ndarray:
    if Path(path).suffix.lower() in _TIFF_SUFFIXES:
        import tifffile

        return tifffile.imread(path)
    import imageio.v3 as iio

    return iio.imread(path)


def _container_layer(ic: Any, layer: str | None, arg: str) -> Any:
    layers = list(ic)
    if not layers:
        msg = f"{arg}: the ImageContainer has no layers."
        raise ContractError(msg)
    layer = layers[0] if layer is None else layer
    if layer not in layers:
        msg = f"{arg}: layer {layer!r} is not in the ImageContainer; it has {layers}."
        raise ContractError(msg)
    arr = ic[layer]
    if arr.sizes.get("z", 1) != 1:
        msg = f"{arg}: ImageContainer layer {layer!r} has {arr.sizes['z']} z-planes; crop_cells takes 2-d fields."
        raise ContractError(msg)
    return arr


def _chw(shape: tuple[int, ...], channel_axis: int, arg: str) -> tuple[int, int, int]:
    if len(shape) == 2:
        return (1, *shape)
    if len(shape) != 3:
        msg = f"{arg}: a field must be 2-d (height x width) or 3-d with channels on axis {channel_axis}, found shape {shape}."
        raise ContractError(msg)
    rest = [s for i, s in enumerate(shape) if i != channel_axis % 3]
    return (shape[channel_axis], rest[0], rest[1])


def _field_meta(
    spec: FieldSpec, *, channel_axis: int, layer: str | None, arg: str
) -> tuple[tuple[int, int, int], np.dtype]:
    """Shape (C, H, W) and dtype of a field without reading its pixels (files: header only)."""
    if isinstance(spec, tuple):
        if not spec:
            msg = f"{arg}: an empty tuple is not a field; give one 2-d image or path per channel."
            raise ContractError(msg)
        metas = [_path_meta(c, arg) if _is_path(c) else (np.shape(c), np.asarray(c).dtype) for c in spec]
        shapes = {m[0] for m in metas}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2:
            msg = f"{arg}: a tuple field holds one 2-d image per channel, all of one size; found shapes {[m[0] for m in metas]}."
            raise ContractError(msg)
        h, w = next(iter(shapes))
        return (len(spec), h, w), np.result_type(*[m[1] for m in metas])
    if _is_path(spec):
        shape, dtype = _path_meta(spec, arg)
        return _chw(shape, channel_axis, arg), dtype
    if _is_container(spec):
        arr = _container_layer(spec, layer, arg)
        return (arr.sizes[arr.dims[-1]], arr.sizes["y"], arr.sizes["x"]), np.dtype(arr.dtype)
    if isinstance(spec, np.ndarray):
        return _chw(spec.shape, channel_axis, arg), spec.dtype
    msg = (
        f"{arg}: cannot read a field from {type(spec).__name__}; give an array, an image path, a squidpy "
        "ImageContainer, or a tuple of per-channel 2-d arrays / paths."
    )
    raise ContractError(msg)


def _load_field(spec: FieldSpec, *, channel_axis: int, layer: str | None) -> np.ndarray:
    """The field's pixels as a (C, H, W) array."""
    if isinstance(spec, tuple):
        return np.stack([np.asarray(_read_path(c) if _is_path(c) else c) for c in spec])
    if _is_container(spec):
        arr = _container_layer(spec, layer, "images")
        return np.moveaxis(np.asarray(arr.isel(z=0).values), -1, 0)
    arr = np.asarray(_read_path(spec) if _is_path(spec) else spec)
    return arr[None] if arr.ndim == 2 else np.moveaxis(arr, channel_axis, 0)


def _label_meta(spec: Any, arg: str) -> tuple[int, ...]:
    if _is_path(spec):
        return _path_meta(spec, arg)[0]
    if isinstance(spec, np.ndarray):
        return spec.shape
    msg = f"{arg}: label masks are 2-d integer arrays or paths to them, got {type(spec).__name__}."
    raise ContractError(msg)


def _load_labels(spec: Any, image: Any) -> np.ndarray:
    if isinstance(spec, str) and _is_container(image):
        return np.asarray(image[spec].isel(z=0).values)[..., 0]
    return np.asarray(_read_path(spec) if _is_path(spec) else spec)


def _flatten(images: Any, labels: Any) -> list[tuple[FieldSpec, str | None, Any]]:
    """(field, well, labels) triples from a field, a list of fields or a dict well -> field(s)."""
    if isinstance(images, Mapping):
        if labels is not None and not isinstance(labels, Mapping):
            msg = "labels must be a dict well -> label mask(s) when images is a dict well -> field(s)."
            raise ContractError(msg)
        out = []
        for well, value in images.items():
            items = [value] if _is_field(value) else list(value)
            labs = None if labels is None else labels.get(well)
            if labels is not None and labs is None:
                msg = f"labels has no entry for well {well!r} of images."
                raise ContractError(msg)
            labs = [None] * len(items) if labs is None else ([labs] if not isinstance(labs, list) else labs)
            if len(labs) != len(items):
                msg = f"labels[{well!r}] has {len(labs)} masks for {len(items)} fields of images[{well!r}]."
                raise ContractError(msg)
            out += [(item, str(well), lab) for item, lab in zip(items, labs, strict=True)]
        return out
    items = [images] if _is_field(images) else list(images)
    if labels is None or (isinstance(labels, str) and all(_is_container(i) for i in items)):
        labs = [labels] * len(items)
    else:
        labs = (
            [labels]
            if (isinstance(labels, np.ndarray) or _is_path(labels)) and len(items) == 1
            else list(labels)
        )
    if len(labs) != len(items):
        msg = (
            f"labels has {len(labs)} masks for {len(items)} fields in images; give one label mask per field."
        )
        raise ContractError(msg)
    return [(item, None, lab) for item, lab in zip(items, labs, strict=True)]


def _default_name(spec: FieldSpec) -> str | None:
    first = spec[0] if isinstance(spec, tuple) and spec else spec
    return Path(first).stem if _is_path(first) else None


def _collect_fields(
    images: Any,
    labels: Any,
    fields: pd.DataFrame | None,
    *,
    well_key: str,
    field_key: str,
    channel_axis: int,
    layer: str | None,
) -> list[_Field]:
    triples = _flatten(images, labels)
    if not triples:
        msg = "images holds no fields."
        raise ContractError(msg)
    if fields is not None:
        if isinstance(images, Mapping):
            msg = "fields is for a list of images; with a dict well -> field(s) the wells come from its keys."
            raise ContractError(msg)
        if not isinstance(fields, pd.DataFrame) or len(fields) != len(triples):
            got = f"{len(fields)} rows" if isinstance(fields, pd.DataFrame) else type(fields).__name__
            msg = f"fields must be a DataFrame with one row per field of images ({len(triples)}), got {got}."
            raise ContractError(msg)
    out: list[_Field] = []
    for i, (spec, well, lab) in enumerate(triples):
        arg = f"images[{i}]" if well is None else f"images[{well!r}]"
        shape, dtype = _field_meta(spec, channel_axis=channel_axis, layer=layer, arg=arg)
        if min(shape) == 0:
            msg = f"{arg} is empty (shape channels x height x width = {shape})."
            raise ContractError(msg)
        if lab is not None and not (isinstance(lab, str) and _is_container(spec)):
            lshape = _label_meta(lab, f"labels for {arg}")
            if tuple(lshape) != shape[1:]:
                msg = f"labels for {arg} have shape {tuple(lshape)}; expected the field's height x width {shape[1:]}."
                raise ContractError(msg)
        extra: dict[str, Any] = {}
        name = _default_name(spec)
        if fields is not None:
            row = fields.iloc[i]
            extra = {k: v for k, v in row.items() if k not in (well_key, field_key)}
            if well_key in fields.columns:
                well = str(row[well_key])
            if field_key in fields.columns:
                name = str(row[field_key])
        out.append(_Field(spec, shape, dtype, name or "", well, lab, extra))
    names = [f.name for f in out]
    if "" in names or len(set(names)) != len(names):
        width = len(str(len(out) - 1))
        for i, f in enumerate(out):
            f.name = f"{f.well}_field{i:0{width}d}" if f.well is not None else f"field{i:0{width}d}"
    return out


def _check_plate_map(
    plate_map: pd.DataFrame | None, wells: list[str | None], well_key: str
) -> pd.DataFrame | None:
    if plate_map is None:
        return None
    if not isinstance(plate_map, pd.DataFrame):
        msg = f"plate_map must be a DataFrame with a {well_key!r} column, got {type(plate_map).__name__}."
        raise ContractError(msg)
    pm = plate_map.reset_index() if plate_map.index.name == well_key else plate_map
    if well_key not in pm.columns:
        msg = f"plate_map has no {well_key!r} column (or index); its columns are {list(pm.columns)}."
        raise ContractError(msg)
    if None in wells:
        msg = (
            "plate_map needs each field's well: give images as a dict well -> field(s), or a fields "
            f"DataFrame with a {well_key!r} column."
        )
        raise ContractError(msg)
    pm = pm.assign(**{well_key: pm[well_key].astype(str)})
    if pm[well_key].duplicated().any():
        dup = pm.loc[pm[well_key].duplicated(), well_key].unique()[:5].tolist()
        msg = f"plate_map has several rows for the wells {dup}; expected one row per well."
        raise ContractError(msg)
    missing = sorted(set(wells) - set(pm[well_key]))
    if missing:
        msg = f"plate_map[{well_key!r}] lacks the wells {missing[:10]} of the images."
        raise ContractError(msg)
    return pm.set_index(well_key)


# --- cropping ---------------------------------------------------------------------------------------


def _crop_field(
    pixels: np.ndarray, labels: np.ndarray, crop_size: int, border: str
) -> tuple[np.ndarray, pd.DataFrame, int]:
    """Crops (n, C, s, s) around each labelled object's centroid, their table, and how many were dropped."""
    from skimage.measure import regionprops_table

    props = pd.DataFrame(regionprops_table(labels, properties=("label", "centroid", "area")))
    n_all = len(props)
    h, w = pixels.shape[1:]
    half = crop_size // 2
    top = np.round(props["centroid-0"].to_numpy()).astype(int) - half
    left = np.round(props["centroid-1"].to_numpy()).astype(int) - half
    if border == "drop":
        keep = (top >= 0) & (left >= 0) & (top + crop_size <= h) & (left + crop_size <= w)
        props, top, left = props[keep], top[keep], left[keep]
        source, offset = pixels, 0
    else:  # pad: zeros outside the field
        source = np.pad(pixels, ((0, 0), (crop_size, crop_size), (crop_size, crop_size)))
        offset = crop_size
    crops = np.empty((len(props), pixels.shape[0], crop_size, crop_size), dtype=pixels.dtype)
    for i, (t, lft) in enumerate(zip(top + offset, left + offset, strict=True)):
        crops[i] = source[:, t : t + crop_size, lft : lft + crop_size]
    return crops, props.reset_index(drop=True), n_all - len(props)


def _iter_crops(
    fields: list[_Field],
    *,
    nuclei_channel: int,
    crop_size: int,
    border: str,
    segmentation: Callable[[np.ndarray], np.ndarray],
    channel_axis: int,
    layer: str | None,
    dtype: np.dtype,
    progress: bool,
) -> Iterator[tuple[_Field, np.ndarray, pd.DataFrame, int]]:
    from tqdm.auto import tqdm

    for f in tqdm(fields, desc="crop_cells", unit="field", disable=not progress):
        pixels = _load_field(f.image, channel_axis=channel_axis, layer=layer)
        if f.labels is None:
            nuclei = pixels[nuclei_channel]
            if np.issubdtype(nuclei.dtype, np.inexact) and not np.isfinite(nuclei).all():
                msg = (
                    f"images: field {f.name!r} has {int((~np.isfinite(nuclei)).sum())} non-finite pixels (NaN or inf) "
                    f"in its nuclei_channel {nuclei_channel}; segmentation needs finite values (or pass labels=)."
                )
                raise ContractError(msg)
            labels = np.asarray(segmentation(nuclei))
            if labels.shape != pixels.shape[1:]:
                msg = (
                    f"segmentation returned labels of shape {labels.shape} for a field of {pixels.shape[1:]}."
                )
                raise ContractError(msg)
        else:
            labels = _load_labels(f.labels, f.image)
        if not np.issubdtype(labels.dtype, np.integer):
            msg = f"labels of field {f.name!r} must be integers, found dtype {labels.dtype}."
            raise ContractError(msg)
        crops, props, n_dropped = _crop_field(pixels.astype(dtype, copy=False), labels, crop_size, border)
        yield f, crops, props, n_dropped


def _storage_dtype(dtypes: Sequence[np.dtype]) -> np.dtype:
    dtype = np.result_type(*dtypes)
    if dtype == np.bool_:
        return np.dtype(np.uint8)
    if not np.issubdtype(dtype, np.integer):
        return np.dtype(np.float32)
    return np.dtype(dtype)


def crop_cells(
    images: Any,
    *,
    nuclei_channel: int = 0,
    labels: Any = None,
    crop_size: int = 96,
    plate_map: pd.DataFrame | None = None,
    fields: pd.DataFrame | None = None,
    well_key: str = "well",
    field_key: str = "field",
    channel_names: Sequence[str] | None = None,
    channel_axis: int = 0,
    layer: str | None = None,
    border: Literal["drop", "pad"] = "drop",
    segmentation: Callable[[np.ndarray], np.ndarray] | None = None,
    diameter: float | None = None,
    store: str | os.PathLike | None = None,
    overwrite: bool = False,
    images_key: str = C.IMAGES_KEY,
    progress: bool = True,
) -> AnnData:
    """Cut a fixed-size crop around every nucleus of multi-channel field images.

    Each field is read, segmented on its nuclear channel (unless ``labels`` are given), cropped and
    released before the next, so a plate never sits in memory whole. Crops keep every channel and the
    images' integer dtype (floats become float32).

    Parameters
    ----------
    images
        The fields. A *field* is a (C, H, W) array (channels on ``channel_axis``; a 2-d array is one
        channel), a path to an image file (TIFF or anything imageio reads), a squidpy ``ImageContainer``
        (layer ``layer``), or a **tuple** of per-channel 2-d arrays / paths (one file per stain). Give one
        field, a **list** of fields (their wells in ``fields``), or a dict ``well -> field or list of fields``.
    nuclei_channel
        Channel segmented to find the cells.
    labels
        Label masks instead of segmentation, in the same structure as ``images`` (one 2-d integer mask
        or path per field; for ImageContainers, the name of a labels layer). 0 is background.
    crop_size
        Side of the square crops in pixels, centred on each nucleus' centroid.
    plate_map
        One row per well (a ``well_key`` column or index) whose other columns (``sample``, ``treatment``,
        ``replicate``, ...) are copied to every cell of the well.
    fields
        For a list of fields: one row per field, with the ``well_key`` column, optionally ``field_key``
        (the field's name) and any other columns, copied to the field's cells.
    well_key
        Name of the well column (in ``plate_map``, ``fields`` and the result's obs).
    field_key
        Name of the field column of the result's obs (and of ``fields``).
    channel_names
        One name per channel (stain), stored with the crops; defaults to ``channel0``, ``channel1``, ...
    channel_axis
        Axis of the channels in 3-d arrays and multi-channel image files.
    layer
        ImageContainer layer holding the image (default: its first layer).
    border
        ``'drop'`` leaves out cells whose crop would cross the field's edge (counted in
        ``uns['morphomu'][images_key]``); ``'pad'`` keeps them, with zeros outside the field.
    segmentation
        Function from a 2-d nuclear image to an integer label image (0 = background); defaults to
        :func:`segment_nuclei` with ``diameter``.
    diameter
        Typical nucleus diameter in pixels for the default segmentation (estimated per field if ``None``).
    store
        Path of a zarr array to write the crops to instead of ``.obsm[images_key]``: for plates too
        large for memory. It is written atomically, field by field.
    overwrite
        Replace an existing ``store`` if it is one morphomu wrote (it carries morphomu's marker); any
        other directory is never replaced.
    images_key
        ``.obsm`` key of in-memory crops, or ``.uns`` key of the on-disk reference
        (``{'store': path, 'row_key': f'{images_key}_row', ...}``, with that obs column giving each
        cell's row in the store).
    progress
        Show a progress bar over fields.

    Returns
    -------
    AnnData with one row per cell (no features in ``.X``): obs ``field_key``, ``well_key`` (when known),
    ``label`` (the nucleus' label in its field), ``area`` (pixels) and the plate-map / fields columns;
    ``.obsm['spatial']`` the centroid (x, y) = (column, row) in field pixels; the crops
    (n x C x crop_size x crop_size) in ``.obsm[images_key]`` or in ``store``;
    ``uns['morphomu'][images_key]`` the parameters and per-field counts.

    Examples
    --------
    >>> import pandas as pd, morphomu as mm
    >>> fields = pd.DataFrame({"well": ["A01", "A01", "B02"]})
    >>> plate_map = pd.DataFrame({"well": ["A01", "B02"], "treatment": ["DMSO", "Colchicine"]})
    >>> adata = mm.pp.crop_cells(
    ...     [("f1_dna.tif", "f1_er.tif"), ("f2_dna.tif", "f2_er.tif"), ("f3_dna.tif", "f3_er.tif")],
    ...     fields=fields,
    ...     plate_map=plate_map,
    ...     crop_size=64,
    ... )  # doctest: +SKIP
    >>> mm.pp.embed_images(adata, checkpoint="vit_large_patch16_224.pth")  # doctest: +SKIP
    """
    from anndata import AnnData

    # --- checks, before any pixel is read ---
    if border not in ("drop", "pad"):
        msg = f"border must be 'drop' or 'pad', got {border!r}."
        raise ContractError(msg)
    if not isinstance(crop_size, int | np.integer) or isinstance(crop_size, bool) or crop_size < 2:
        msg = f"crop_size must be an integer of at least 2 pixels, got {crop_size!r}."
        raise ContractError(msg)
    if segmentation is not None and not callable(segmentation):
        msg = f"segmentation must be a function image -> labels, got {type(segmentation).__name__}."
        raise ContractError(msg)
    flds = _collect_fields(
        images, labels, fields, well_key=well_key, field_key=field_key, channel_axis=channel_axis, layer=layer
    )
    n_channels = {f.shape[0] for f in flds}
    if len(n_channels) != 1:
        counts = {f.name: f.shape[0] for f in flds}
        msg = f"images: every field must have the same number of channels; found {counts}."
        raise ContractError(msg)
    (n_channels,) = n_channels
    if not -n_channels <= nuclei_channel < n_channels:
        msg = f"nuclei_channel={nuclei_channel} is out of range for fields with {n_channels} channels."
        raise ContractError(msg)
    if channel_names is None:
        channel_names = [f"channel{i}" for i in range(n_channels)]
    channel_names = [str(c) for c in channel_names]
    if len(channel_names) != n_channels:
        msg = f"channel_names has {len(channel_names)} names for fields with {n_channels} channels."
        raise ContractError(msg)
    too_small = [f.name for f in flds if min(f.shape[1:]) < crop_size]
    if too_small and border == "drop":
        msg = f"crop_size={crop_size} is larger than the fields {too_small[:5]}; no crop would fit (use border='pad' or a smaller crop_size)."
        raise ContractError(msg)
    pm = _check_plate_map(plate_map, [f.well for f in flds], well_key)
    reserved = {field_key, well_key, "label", "area"}
    clash = sorted(reserved & ({*pm.columns} if pm is not None else set()))
    if clash:
        msg = f"plate_map columns {clash} clash with the columns crop_cells writes ({sorted(reserved)})."
        raise ContractError(msg)
    dtype = _storage_dtype([f.dtype for f in flds])
    seg = segmentation or (lambda img: segment_nuclei(img, diameter=diameter))
    crop_iter = _iter_crops(
        flds,
        nuclei_channel=nuclei_channel,
        crop_size=int(crop_size),
        border=border,
        segmentation=seg,
        channel_axis=channel_axis,
        layer=layer,
        dtype=dtype,
        progress=progress,
    )

    # --- work, field by field ---
    tables: list[pd.DataFrame] = []
    counts: list[dict[str, Any]] = []
    row_key = f"{images_key}{ROW_SUFFIX}"

    def consume(write: Callable[[np.ndarray], None]) -> None:
        for f, crops, props, n_dropped in crop_iter:
            write(crops)
            table = pd.DataFrame(
                {
                    field_key: f.name,
                    "label": props["label"].to_numpy(np.int64),
                    "area": props["area"].to_numpy(np.int64),
                    "x": props["centroid-1"].to_numpy(np.float64),
                    "y": props["centroid-0"].to_numpy(np.float64),
                }
            )
            if f.well is not None:
                table[well_key] = f.well
            for k, v in f.extra.items():
                table[k] = v
            tables.append(table)
            counts.append({"field": f.name, "n_cells": len(table), "n_dropped_at_border": n_dropped})

    shape_tail = (n_channels, int(crop_size), int(crop_size))
    if store is None:
        chunks: list[np.ndarray] = []
        consume(chunks.append)
        crops_all = np.concatenate(chunks) if chunks else np.empty((0, *shape_tail), dtype)
        store_path = None
    else:
        import zarr

        with atomic_path(store, overwrite=overwrite, arg="store", kind="dir") as tmp:
            arr = zarr.create_array(
                store=str(tmp), shape=(0, *shape_tail), chunks=(_CHUNK_CELLS, *shape_tail), dtype=dtype
            )
            arr.attrs.update({"channels": channel_names, "crop_size": int(crop_size)})

            def append(crops: np.ndarray) -> None:
                n = arr.shape[0]
                arr.resize((n + len(crops), *shape_tail))
                arr[n:] = crops

            consume(append)
        store_path = str(Path(store).resolve())

    obs = (
        pd.concat(tables, ignore_index=True)
        if tables
        else pd.DataFrame(columns=[field_key, "label", "area", "x", "y"])
    )
    spatial = obs[["x", "y"]].to_numpy(np.float64)
    obs = obs.drop(columns=["x", "y"])
    if pm is not None:
        obs = obs.join(pm, on=well_key)
    obs.index = (obs[field_key].astype(str) + "_" + obs["label"].astype(str)).to_numpy()
    if store_path is not None:
        obs[row_key] = np.arange(len(obs), dtype=np.int64)
    for col in obs.columns:
        if obs[col].dtype == object:
            obs[col] = obs[col].astype("category")
    adata = AnnData(obs=obs)
    adata.obsm[C.SPATIAL_KEY] = spatial
    if store_path is None:
        adata.obsm[images_key] = crops_all
    else:
        adata.uns[images_key] = {
            "store": store_path,
            "row_key": row_key,
            "channels": np.asarray(channel_names, dtype=object),
            "shape": np.asarray((len(obs), *shape_tail)),
            "dtype": dtype.name,
        }
    store_record(
        adata,
        images_key,
        {
            "channels": channel_names,
            "nuclei_channel": int(nuclei_channel),
            "crop_size": int(crop_size),
            "border": border,
            "segmentation": "labels" if labels is not None else getattr(seg, "__name__", "segment_nuclei"),
            "diameter": diameter,
            "store": store_path,
            "fields": pd.DataFrame(counts),
        },
        tool="crop_cells",
    )
    return adata


# --- reading crops back -----------------------------------------------------------------------------


class CropReader:
    """Rows of per-cell crops, from ``.obsm[images_key]`` or from the zarr store ``.uns[images_key]`` names.

    On-disk crops are read a block of rows at a time (``reader[rows]``), never loaded whole.

    Parameters
    ----------
    adata
        The cells (e.g. from :func:`crop_cells`, possibly subset: rows follow its obs).
    images_key
        The ``.obsm`` key of in-memory crops, or the ``.uns`` key of an on-disk reference.
    mod
        Modality name, for messages.
    """

    def __init__(self, adata: AnnData, images_key: str = C.IMAGES_KEY, *, mod: str | None = None) -> None:
        base = "adata" if mod is None else f"mdata.mod[{mod!r}]"
        self.where = base
        self._array: Any
        if images_key in adata.obsm:
            self._array = adata.obsm[images_key]
            self._rows = None
            self.where = f"{base}.obsm[{images_key!r}]"
        elif isinstance(adata.uns.get(images_key), Mapping) and "store" in adata.uns[images_key]:
            import zarr

            ref = adata.uns[images_key]
            row_key = str(ref.get("row_key", f"{images_key}{ROW_SUFFIX}"))
            self.where = f"{base}.uns[{images_key!r}] (zarr store {ref['store']!r})"
            if not Path(str(ref["store"])).exists():
                msg = f"{self.where} does not exist; the crops were moved or deleted."
                raise ContractError(msg)
            if row_key not in adata.obs.columns:
                msg = f"{self.where}: {base}.obs has no row-index column {row_key!r}."
                raise ContractError(msg)
            self._array = zarr.open_array(str(ref["store"]), mode="r")
            self._rows = adata.obs[row_key].to_numpy(np.int64)
            if self._rows.size and (self._rows.min() < 0 or self._rows.max() >= self._array.shape[0]):
                msg = (
                    f"{self.where}: obs[{row_key!r}] points outside the store's {self._array.shape[0]} rows."
                )
                raise ContractError(msg)
        else:
            msg = (
                f"images_key={images_key!r} is neither in {base}.obsm (in-memory crops) nor an on-disk crop "
                f"store in {base}.uns; run mm.pp.crop_cells first, or pass images_key= naming your crops."
            )
            raise ContractError(msg)
        self.shape = (adata.n_obs, *tuple(self._array.shape[1:]))
        self.dtype = np.dtype(self._array.dtype)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice | np.ndarray) -> np.ndarray:
        """The crops of ``rows`` (positions in the AnnData) as an in-memory array."""
        if isinstance(rows, slice):
            rows = np.arange(self.shape[0])[rows]
        rows = np.asarray(rows, dtype=np.int64)
        if self._rows is None:
            return np.asarray(self._array[rows])
        src = self._rows[rows]
        if src.size and np.all(np.diff(src) == 1):  # contiguous: one slice read
            return np.asarray(self._array[int(src[0]) : int(src[-1]) + 1])
        order = np.argsort(src, kind="stable")
        uniq, inverse = np.unique(src[order], return_inverse=True)
        block = np.asarray(self._array.oindex[uniq])
        out = np.empty((len(src), *self.shape[1:]), self.dtype)
        out[order] = block[inverse]
        return out
