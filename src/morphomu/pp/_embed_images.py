"""Per-stain image embeddings with any timm model (the scGeneScope protocol), batched, on CPU / GPU / many GPUs.

Each stain of a crop is fed alone to the network as a grey image repeated to three channels, resized
and normalised as the model's timm data config says; the pooled (CLS) features of the stains are
concatenated, stain-major: ``[stain 0 features, stain 1 features, ...]`` (5 x 1024 = 5120 for ViT-L/16
on Cell Painting). Weights always come from a local file: timm never reaches a model hub here.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .. import _constants as C
from .._core import channel_names, quiet_lightning
from .._errors import ContractError, MorphomuError
from .._uns import store
from .._validation import get_adata
from ._crop import CropReader

if TYPE_CHECKING:
    import torch
    from anndata import AnnData
    from mudata import MuData

__all__ = ["embed_images", "load_timm_model", "resolve_device"]

logger = logging.getLogger(__name__)

#: Where to get weights, for the message raised when a checkpoint is missing.
_WEIGHTS_HINT = (
    "download the model's weights once (e.g. the file 'model.safetensors' of the Hugging Face repository "
    "'timm/{model}', for the scGeneScope protocol 'timm/vit_large_patch16_224.augreg_in21k_ft_in1k') and pass "
    "its local path as checkpoint="
)
_INTERPOLATION = {"bicubic": "bicubic", "bilinear": "bilinear", "nearest": "nearest", "area": "area"}


def resolve_device(device: str | Any) -> torch.device:
    """``'auto'`` -> the first CUDA device when present, else the CPU; anything else -> ``torch.device``."""
    import torch

    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        msg = f"device={device!r} is not a torch device; use 'auto', 'cpu', 'cuda' or 'cuda:N'."
        raise ContractError(msg) from None


# --- model ------------------------------------------------------------------------------------------


def load_timm_model(
    model: str, checkpoint: str | os.PathLike | None, **model_kwargs: Any
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Build a timm model without its classifier and load local weights into it; never touches a hub.

    Parameters
    ----------
    model
        A timm model name, optionally with its pretrained tag (``'vit_large_patch16_224.augreg_in21k'``);
        the tag selects the normalisation of the data config.
    checkpoint
        Local weight file: ``.safetensors`` or a torch state dict (possibly wrapped in ``'state_dict'`` /
        ``'model'``), as timm or Hugging Face distribute them. The classifier's weights are ignored.
    **model_kwargs
        Passed to :func:`timm.create_model` (e.g. ``img_size``).

    Returns
    -------
    The network in eval mode (its forward gives pooled features) and its data config (``input_size``,
    ``interpolation``, ``mean``, ``std``).

    Raises
    ------
    MorphomuError
        If the checkpoint is not given or missing (naming what to download), or does not fit the model.
    """
    import timm

    if not isinstance(model, str) or not timm.is_model(model):
        close = timm.list_models(f"*{str(model).split('.')[0][:8]}*")[:8] if isinstance(model, str) else []
        msg = f"model={model!r} is not a timm model name (e.g. 'vit_large_patch16_224'); similar names: {close}."
        raise ContractError(msg)
    if checkpoint is None:
        msg = f"checkpoint is required (weights are never downloaded at run time): {_WEIGHTS_HINT.format(model=model)}."
        raise MorphomuError(msg)
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        msg = f"checkpoint={str(path)!r} does not exist; {_WEIGHTS_HINT.format(model=model)} (a file, not a directory)."
        raise MorphomuError(msg)
    net = timm.create_model(model, pretrained=False, num_classes=0, **model_kwargs)
    try:
        state = timm.models.load_state_dict(str(path), weights_only=True)
    except Exception as e:
        msg = f"checkpoint={str(path)!r} cannot be read as a state dict ({type(e).__name__}: {e})."
        raise MorphomuError(msg) from None
    filter_fn = getattr(sys.modules[type(net).__module__], "checkpoint_filter_fn", None)
    if (
        filter_fn is not None
    ):  # timm's own conversion (e.g. position-embedding resampling), as pretrained loading does
        state = filter_fn(state, net)
    classifier = net.pretrained_cfg.get("classifier", "head")
    own = net.state_dict()
    classifiers = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    state = {k: v for k, v in state.items() if k in own or not k.startswith(classifiers)}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        msg = (
            f"checkpoint={str(path)!r} does not fit model={model!r}{f' {model_kwargs}' if model_kwargs else ''}: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shape {wrong[:5]}."
        )
        raise MorphomuError(msg)
    net.load_state_dict(state)
    net.eval()
    config = dict(timm.data.resolve_model_data_config(net))
    img_size = getattr(getattr(net, "patch_embed", None), "img_size", None)
    if img_size is not None:  # the network's actual input (a custom img_size is not in the pretrained cfg)
        config["input_size"] = (3, *tuple(int(s) for s in img_size))
    return net, config


def _stain_encoder(
    net: torch.nn.Module,
    config: dict[str, Any],
    *,
    channels: Sequence[int],
    low: np.ndarray,
    high: np.ndarray,
    per_channel: bool,
    precision: str = "32",
) -> torch.nn.Module:
    import torch
    import torch.nn.functional as F

    autocast_dtype = {"32": None, "bf16": torch.bfloat16, "16": torch.float16}[precision]

    class _StainEncoder(torch.nn.Module):
        """(B, C, H, W) raw crops -> (B, len(channels) x features), stain-major."""

        def __init__(self) -> None:
            super().__init__()
            self.net = net
            self.size = tuple(config["input_size"][1:])
            self.mode = _INTERPOLATION.get(str(config["interpolation"]), "bilinear")
            self.register_buffer(
                "channels", torch.as_tensor(list(channels), dtype=torch.long), persistent=False
            )
            self.register_buffer(
                "low", torch.as_tensor(low, dtype=torch.float32).view(1, -1, 1, 1), persistent=False
            )
            self.register_buffer(
                "span", torch.as_tensor(high - low, dtype=torch.float32).view(1, -1, 1, 1), persistent=False
            )
            self.register_buffer(
                "mean",
                torch.as_tensor(config["mean"], dtype=torch.float32).view(1, 3, 1, 1),
                persistent=False,
            )
            self.register_buffer(
                "std", torch.as_tensor(config["std"], dtype=torch.float32).view(1, 3, 1, 1), persistent=False
            )
            self.per_channel = per_channel

        def preprocess(self, x: torch.Tensor) -> torch.Tensor:
            """Crops -> the network's input: (B x stains, 3, h, w) per stain, or (B, 3, h, w) as RGB."""
            x = x.index_select(1, self.channels).float()
            x = ((x - self.low) / self.span).clamp_(0.0, 1.0)
            if self.per_channel:
                x = x.reshape(-1, 1, *x.shape[2:])
            if tuple(x.shape[2:]) != self.size:
                aa = self.mode in ("bilinear", "bicubic")
                x = F.interpolate(
                    x, size=self.size, mode=self.mode, antialias=aa, align_corners=False if aa else None
                )
            if self.per_channel:
                x = x.expand(-1, 3, -1, -1)
            return (x - self.mean) / self.std

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            n = x.shape[0]
            x = self.preprocess(x)
            with torch.autocast(x.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                return self.net(x).float().reshape(n, -1)

    return _StainEncoder()


# --- data -------------------------------------------------------------------------------------------


def _batches(reader: CropReader, batch_size: int) -> Any:
    import torch

    class _CropBatches(torch.utils.data.Dataset):
        """Item i = (row indices, crops) of the i-th batch: on-disk crops are read one block per batch."""

        def __len__(self) -> int:
            return -(-len(reader) // batch_size)

        def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
            rows = np.arange(i * batch_size, min((i + 1) * batch_size, len(reader)))
            crops = reader[rows]
            if crops.dtype not in (np.uint8, np.int16, np.int32, np.float32):
                crops = crops.astype(np.float32)
            return torch.from_numpy(rows), torch.from_numpy(np.ascontiguousarray(crops))

    return _CropBatches()


def _embed_plain(
    encoder: torch.nn.Module,
    dataset: Any,
    *,
    n: int,
    dim: int,
    device: torch.device,
    num_workers: int,
    progress: bool,
) -> np.ndarray:
    import torch
    from tqdm.auto import tqdm

    loader = torch.utils.data.DataLoader(
        dataset, batch_size=None, shuffle=False, num_workers=num_workers, pin_memory=device.type == "cuda"
    )
    out = np.empty((n, dim), dtype=np.float32)
    encoder.to(device).eval()
    with torch.inference_mode():
        for rows, crops in tqdm(loader, desc="embed_images", unit="batch", disable=not progress):
            out[rows.numpy()] = encoder(crops.to(device, non_blocking=True)).float().cpu().numpy()
    return out


def _embed_lightning(
    encoder: torch.nn.Module,
    dataset: Any,
    *,
    n: int,
    dim: int,
    device: str | Any,
    devices: int | str | Sequence[int],
    strategy: str,
    num_workers: int,
    progress: bool,
) -> np.ndarray:
    """``Trainer.predict`` over the crop batches; each rank writes its rows, every process reads them all."""
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.callbacks import BasePredictionWriter

    class _Predictor(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder

        def predict_step(self, batch: Any, batch_idx: int) -> Any:
            rows, crops = batch
            return rows, self.encoder(crops).float()

    class _RowWriter(BasePredictionWriter):
        """Rank r writes ``part{r}.npz`` (rows, features); the barrier makes every part visible to all."""

        def __init__(self, directory: str) -> None:
            super().__init__(write_interval="epoch")
            self.directory = directory

        def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
            self.directory = trainer.strategy.broadcast(self.directory)  # one directory for all ranks

        def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
            rows = [r.cpu().numpy() for r, _ in predictions]
            feats = [f.cpu().numpy() for _, f in predictions]
            np.savez(
                Path(self.directory) / f"part{trainer.global_rank}.npz",
                rows=np.concatenate(rows) if rows else np.empty(0, np.int64),
                features=np.concatenate(feats) if feats else np.empty((0, dim), np.float32),
            )
            trainer.strategy.barrier()

    accelerator = "auto"
    if device != "auto":
        accelerator = "gpu" if resolve_device(device).type == "cuda" else resolve_device(device).type
    directory = tempfile.mkdtemp(prefix="morphomu_embed_")
    writer = _RowWriter(directory)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False, num_workers=num_workers)
    with quiet_lightning(level=logging.WARNING):
        trainer = pl.Trainer(
            accelerator=accelerator,
            devices=devices,
            strategy=strategy,
            callbacks=[writer],
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=progress,
            enable_model_summary=False,
        )
    try:
        with quiet_lightning(level=logging.WARNING):
            trainer.predict(_Predictor(), dataloaders=loader, return_predictions=False)
        out = np.full((n, dim), np.nan, dtype=np.float32)
        for part in sorted(Path(writer.directory).glob("part*.npz")):
            with np.load(part) as z:
                out[z["rows"]] = z["features"]
        if np.isnan(out).any():
            msg = "embed_images: the Lightning predict run left some cells without features."
            raise MorphomuError(msg)
    finally:
        dist = torch.distributed.is_available() and torch.distributed.is_initialized()
        if dist:  # script-launched DDP: every rank is here; wait until all have read before removing
            torch.distributed.barrier()
        if not dist or trainer.global_rank == 0:
            shutil.rmtree(writer.directory, ignore_errors=True)
        if writer.directory != directory:
            shutil.rmtree(directory, ignore_errors=True)
    return out


# --- public -----------------------------------------------------------------------------------------


def _intensity_bounds(intensity_range: Any, dtype: np.dtype, n: int) -> tuple[np.ndarray, np.ndarray]:
    if intensity_range is None:
        if np.issubdtype(dtype, np.integer):
            low, high = 0.0, float(np.iinfo(dtype).max)
        else:
            low, high = 0.0, 1.0
    else:
        try:
            low, high = intensity_range
        except (TypeError, ValueError):
            msg = f"intensity_range must be (low, high), each a number or one per embedded stain, got {intensity_range!r}."
            raise ContractError(msg) from None
    low = (
        np.broadcast_to(np.asarray(low, dtype=np.float64), (n,)).copy()
        if np.ndim(low) == 0
        else np.asarray(low, np.float64)
    )
    high = (
        np.broadcast_to(np.asarray(high, dtype=np.float64), (n,)).copy()
        if np.ndim(high) == 0
        else np.asarray(high, np.float64)
    )
    if low.shape != (n,) or high.shape != (n,) or not np.all(high > low):
        msg = f"intensity_range={intensity_range!r}: need low < high, as numbers or one per embedded stain ({n})."
        raise ContractError(msg)
    return low, high


def embed_images(
    data: MuData | AnnData,
    *,
    mod: str | None = C.IMAGE_MOD,
    images_key: str = C.IMAGES_KEY,
    model: str = "vit_large_patch16_224",
    checkpoint: str | os.PathLike | None = None,
    per_channel: bool = True,
    channels: Sequence[int | str] | None = None,
    intensity_range: tuple[Any, Any] | None = None,
    batch_size: int = 32,
    precision: Literal["32", "bf16", "16"] = "32",
    device: str = "auto",
    devices: int | str | Sequence[int] | None = None,
    strategy: str = "auto",
    num_workers: int = 0,
    model_kwargs: dict[str, Any] | None = None,
    key_added: str = C.IMAGE_REP,
    progress: bool = True,
    copy: bool = False,
) -> MuData | AnnData | None:
    """Embed per-cell crops with a timm model, each stain on its own (the scGeneScope protocol).

    For every crop and stain: intensities are scaled to [0, 1] (``intensity_range``), the grey image is
    resized to the model's input size with its interpolation (the whole crop, no centre crop: the cell
    stays whole), repeated to three channels, normalised with the model's mean / std, and its pooled
    features (the CLS token for ViTs) are kept; the stains' features are concatenated in channel order.

    Parameters
    ----------
    data
        A MuData (``mod`` names the modality) or an AnnData, e.g. from :func:`morphomu.pp.crop_cells`.
    mod
        Modality holding the crops (ignored for an AnnData).
    images_key
        ``.obsm`` key of in-memory crops (n x C x H x W) or ``.uns`` key of crops in a zarr store.
    model
        Any timm model name (with an optional pretrained tag, which picks the normalisation); its
        classifier is dropped (``num_classes=0``), so the feature width is the model's.
    checkpoint
        Local weight file of ``model`` (``.safetensors`` / ``.pth``). Required: nothing is downloaded.
    per_channel
        Embed each stain alone as grey-to-RGB (features x stains). ``False`` feeds three channels as
        one RGB image (needs exactly three channels).
    channels
        Stains to embed, by index or name (default all, in order).
    intensity_range
        ``(low, high)`` mapped to [0, 1] before normalisation, numbers or one per embedded stain; by
        default the full range of an integer dtype (``(0, 255)`` for uint8) and ``(0, 1)`` for floats.
        Give the real range of 12-bit images stored as uint16.
    batch_size
        Cells per forward pass (each contributes one image per stain).
    precision
        ``'32'`` (float32), or the network under autocast in ``'bf16'`` (bfloat16; fast on GPUs and on
        CPUs with AMX / AVX-512 BF16) or ``'16'`` (float16, GPUs). Preprocessing stays in float32 and
        features are returned as float32.
    device
        ``'auto'`` (CUDA when present), ``'cpu'``, ``'cuda'``, ``'cuda:1'``, ...; with ``devices``, picks
        the Lightning accelerator.
    devices
        Run through Lightning's ``Trainer.predict`` on this many devices (or a list of ids, or ``-1``
        for all), e.g. several GPUs of a node with ``strategy='ddp'``; ``None`` runs a plain loop on ``device``.
    strategy
        Lightning strategy when ``devices`` is given (``'ddp'``, ``'ddp_notebook'`` in Jupyter, ...).
    num_workers
        DataLoader workers reading crops (useful for zarr-backed crops).
    model_kwargs
        Extra arguments of :func:`timm.create_model` (e.g. ``img_size``).
    key_added
        ``.obsm`` key of the embedding (float32, n x (stains x features)).
    progress
        Show a progress bar.
    copy
        Return a copy instead of writing into ``data``.

    Returns
    -------
    ``None`` or the copy. Writes ``.obsm[key_added]`` and ``uns['morphomu'][key_added]``
    (model, checkpoint, stains, features per stain, preprocessing).

    Examples
    --------
    >>> import morphomu as mm
    >>> adata = mm.pp.crop_cells(fields, plate_map=plate_map, crop_size=96)  # doctest: +SKIP
    >>> mm.pp.embed_images(
    ...     adata, checkpoint="~/weights/vit_large_patch16_224.augreg_in21k_ft_in1k.safetensors"
    ... )  # doctest: +SKIP
    >>> adata.obsm["X_vit"].shape  # doctest: +SKIP
    (n_cells, 5120)  # for five stains
    """
    adata = get_adata(data, mod)
    mod_name = None if adata is data else mod
    reader = CropReader(adata, images_key, mod=mod_name)
    if len(reader.shape) != 4:
        msg = f"{reader.where} must be cells x channels x height x width (4-d), found shape {reader.shape}."
        raise ContractError(msg)
    n, n_channels, height, width = reader.shape
    if n == 0 or n_channels == 0 or height == 0 or width == 0:
        msg = f"{reader.where} is empty (shape {reader.shape}); expected at least one crop with pixels."
        raise ContractError(msg)
    names = channel_names(adata, images_key, n_channels)
    if channels is None:
        index = list(range(n_channels))
    else:
        index = []
        for c in channels:
            if isinstance(c, str) and c in names:
                index.append(names.index(c))
            elif (
                isinstance(c, int | np.integer) and not isinstance(c, bool) and -n_channels <= c < n_channels
            ):
                index.append(int(c) % n_channels)
            else:
                msg = f"channels: {c!r} is not a channel of {reader.where} (indices 0..{n_channels - 1}, names {names})."
                raise ContractError(msg)
    if not per_channel and len(index) != 3:
        msg = f"per_channel=False feeds one RGB image, which needs exactly 3 channels; {reader.where} gives {len(index)} ({[names[i] for i in index]})."
        raise ContractError(msg)
    if not isinstance(batch_size, int | np.integer) or batch_size < 1:
        msg = f"batch_size must be a positive integer, got {batch_size!r}."
        raise ContractError(msg)
    if precision not in ("32", "bf16", "16"):
        msg = f"precision must be '32', 'bf16' or '16', got {precision!r}."
        raise ContractError(msg)
    low, high = _intensity_bounds(intensity_range, reader.dtype, len(index))
    torch_device = resolve_device(device)
    net, config = load_timm_model(model, checkpoint, **(model_kwargs or {}))
    patch = getattr(getattr(net, "patch_embed", None), "patch_size", None)
    if patch is not None and (height < patch[0] or width < patch[1]):
        msg = (
            f"{reader.where}: crops of {height} x {width} pixels are smaller than the patch size "
            f"{tuple(patch)} of model={model!r}; crop larger cells (crop_cells(crop_size=...)) for a meaningful embedding."
        )
        raise ContractError(msg)
    encoder = _stain_encoder(
        net, config, channels=index, low=low, high=high, per_channel=per_channel, precision=precision
    )
    width_per_stain = int(getattr(net, "head_hidden_size", None) or net.num_features)
    dim = width_per_stain * (len(index) if per_channel else 1)
    dataset = _batches(reader, int(batch_size))
    if devices is None:
        features = _embed_plain(
            encoder, dataset, n=n, dim=dim, device=torch_device, num_workers=num_workers, progress=progress
        )
    else:
        features = _embed_lightning(
            encoder,
            dataset,
            n=n,
            dim=dim,
            device=device,
            devices=devices,
            strategy=strategy,
            num_workers=num_workers,
            progress=progress,
        )
    if not np.isfinite(features).all():
        msg = f"embed_images: model={model!r} produced non-finite features; check the checkpoint and intensity_range."
        raise MorphomuError(msg)
    if copy:
        data = data.copy()
        adata = get_adata(data, mod)
    adata.obsm[key_added] = features
    entry = {
        "model": model,
        "checkpoint": str(Path(checkpoint).expanduser().resolve()),
        "images_key": images_key,
        "stains": [names[i] for i in index],
        "per_channel": bool(per_channel),
        "precision": precision,
        "n_features_per_stain": width_per_stain,
        "input_size": list(config["input_size"]),
        "interpolation": str(config["interpolation"]),
        "mean": list(config["mean"]),
        "std": list(config["std"]),
        "intensity_low": low,
        "intensity_high": high,
    }
    store(data, key_added, entry, tool="embed_images")
    logger.info("embed_images: %d cells -> %s (%d features)", n, key_added, dim)
    return data if copy else None
