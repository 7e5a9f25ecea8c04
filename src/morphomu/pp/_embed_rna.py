"""RNA cell embeddings from counts: scGPT (a local model directory), scVI (trained here) or PCA (scanpy).

scGPT follows ``scgpt.tasks.embed_data`` step by step (vocabulary match, per-cell value binning, the
``<cls>`` token's output, L2 normalisation) but streams cells in batches from sparse or on-disk counts
instead of densifying the whole matrix, runs without DataLoader worker processes, and reports how many
genes matched the model's vocabulary.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from scipy import sparse

from .. import _constants as C
from .._core import quiet_lightning
from .._errors import ContractError, MorphomuError, MorphomuWarning
from .._threads import keep_torch_threads
from .._uns import store
from .._validation import get_adata, where
from ._embed_images import resolve_device

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

__all__ = ["embed_rna"]

logger = logging.getLogger(__name__)

#: Method -> default ``key_added``.
METHODS: dict[str, str] = {"scgpt": C.RNA_REP, "scvi": C.SCVI_REP, "pca": C.PCA_REP}
#: Files of a scGPT model directory and the ``args.json`` keys the model is built from.
SCGPT_FILES = ("vocab.json", "args.json", "best_model.pt")
SCGPT_ARGS = ("embsize", "nheads", "d_hid", "nlayers", "n_layers_cls", "dropout", "pad_token", "pad_value")
SCGPT_SPECIALS = ("<pad>", "<cls>", "<eoc>")
_SCGPT_HINT = (
    "download a scGPT model directory (e.g. the whole-human model 'scGPT_human' linked from the scGPT "
    "repository's README) holding vocab.json, args.json and best_model.pt, and pass its path as model_dir="
)
#: Modules of the scGPT network that make the cell embedding; all must come from the checkpoint.
_SCGPT_ENCODER = ("encoder.", "value_encoder.", "transformer_encoder.", "bn.", "dsbn.")
_ROWS = 4096  # cells densified at a time when checking or streaming counts


# --- counts -----------------------------------------------------------------------------------------


def _counts(adata: AnnData, layer: str | None, mod: str | None) -> Any:
    if layer is None:
        if adata.X is None:
            msg = f"{where(mod)} is empty; embed_rna needs counts (cells x genes) in .X or layer=."
            raise ContractError(msg)
        return adata.X
    if layer not in adata.layers:
        msg = f"layer={layer!r} is not in {where(mod).removesuffix('.X')}.layers; it has {sorted(adata.layers)}."
        raise ContractError(msg)
    return adata.layers[layer]


def _row_block(matrix: Any, start: int, stop: int) -> sparse.csr_matrix:
    block = matrix[start:stop]
    return (
        sparse.csr_matrix(block, dtype=np.float32)
        if not sparse.issparse(block)
        else block.tocsr().astype(np.float32)
    )


def _check_counts(matrix: Any, name: str) -> tuple[bool, np.ndarray]:
    """Raise unless the counts are finite and non-negative; return (all integers, counts per cell)."""
    integer = True
    totals = np.zeros(matrix.shape[0], np.float64)
    for start in range(0, matrix.shape[0], _ROWS):
        block = _row_block(matrix, start, start + _ROWS)
        values = block.data
        if not np.isfinite(values).all():
            msg = f"{name} has non-finite values (NaN or inf); expected counts."
            raise ContractError(msg)
        if (values < 0).any():
            msg = f"{name} has negative values; expected raw counts (cells x genes), not scaled data."
            raise ContractError(msg)
        integer &= bool(np.all(values == np.round(values)))
        totals[start : start + block.shape[0]] = np.asarray(block.sum(1)).ravel()
    return integer, totals


# --- scGPT ------------------------------------------------------------------------------------------


def _scgpt_files(model_dir: str | os.PathLike | None) -> tuple[Path, dict[str, Any], dict[str, int]]:
    if model_dir is None:
        msg = f"method='scgpt' needs model_dir: {_SCGPT_HINT}."
        raise MorphomuError(msg)
    path = Path(model_dir).expanduser()
    if not path.is_dir():
        msg = f"model_dir={str(path)!r} is not a directory; {_SCGPT_HINT}."
        raise MorphomuError(msg)
    missing = [f for f in SCGPT_FILES if not (path / f).is_file()]
    if missing:
        msg = f"model_dir={str(path)!r} lacks {missing}; a scGPT model directory holds {list(SCGPT_FILES)}: {_SCGPT_HINT}."
        raise MorphomuError(msg)
    try:
        args = json.loads((path / "args.json").read_text())
        token2idx = json.loads((path / "vocab.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        msg = f"model_dir={str(path)!r}: args.json / vocab.json is not valid JSON ({e})."
        raise MorphomuError(msg) from None
    lacking = [k for k in SCGPT_ARGS if k not in args]
    if lacking:
        msg = f"model_dir={str(path)!r}: args.json lacks the keys {lacking} (a scGPT model needs {list(SCGPT_ARGS)})."
        raise MorphomuError(msg)
    if not isinstance(token2idx, dict) or not token2idx:
        msg = f"model_dir={str(path)!r}: vocab.json must map gene symbols to indices."
        raise MorphomuError(msg)
    return path, args, token2idx


def _load_scgpt(path: Path, args: dict[str, Any], device: Any) -> tuple[Any, Any]:
    """Build the scGPT vocabulary (with the special tokens) and TransformerModel as ``embed_data`` does."""
    import torch

    from ._scgpt_compat import import_scgpt

    import_scgpt()
    from scgpt.model import TransformerModel
    from scgpt.model.model import flash_attn_available
    from scgpt.tokenizer import GeneVocab
    from scgpt.utils import load_pretrained

    vocab = GeneVocab.from_file(path / "vocab.json")
    for token in SCGPT_SPECIALS:
        if token not in vocab:
            vocab.append_token(token)
    if args["pad_token"] not in vocab:
        msg = (
            f"model_dir={str(path)!r}: the pad_token {args['pad_token']!r} of args.json is not in vocab.json."
        )
        raise MorphomuError(msg)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="flash-attn is not installed")
        model = TransformerModel(
            ntoken=len(vocab),
            d_model=args["embsize"],
            nhead=args["nheads"],
            d_hid=args["d_hid"],
            nlayers=args["nlayers"],
            nlayers_cls=args["n_layers_cls"],
            n_cls=1,
            vocab=vocab,
            dropout=args["dropout"],
            pad_token=args["pad_token"],
            pad_value=args["pad_value"],
            do_mvc=True,
            do_dab=False,
            use_batch_labels=False,
            domain_spec_batchnorm=False,
            explicit_zero_prob=False,
            use_fast_transformer=flash_attn_available and device.type == "cuda",
            fast_transformer_backend="flash",
            pre_norm=False,
        )
    try:
        state = torch.load(path / "best_model.pt", map_location=device, weights_only=True)
    except Exception as e:
        msg = f"model_dir={str(path)!r}: best_model.pt cannot be read as a state dict ({type(e).__name__}: {e})."
        raise MorphomuError(msg) from None
    if not model.use_fast_transformer:  # flash-attention checkpoints name the fused projection Wqkv
        state = {k.replace("Wqkv.", "in_proj_"): v for k, v in state.items()}
    own = model.state_dict()
    needed = [k for k in own if k.startswith(_SCGPT_ENCODER)]
    bad = [k for k in needed if k not in state or tuple(state[k].shape) != tuple(own[k].shape)]
    if bad:
        msg = (
            f"model_dir={str(path)!r}: best_model.pt does not fit args.json / vocab.json ({len(vocab)} tokens); "
            f"missing or mis-shaped: {bad[:5]}{' ...' if len(bad) > 5 else ''}."
        )
        raise MorphomuError(msg)
    load_pretrained(model, state, verbose=False)  # scgpt's non-strict loading (decoders may differ)
    return vocab, model.to(device).eval()


@contextlib.contextmanager
def _seeded_global_rngs(seed: int) -> Iterator[None]:
    """Seed numpy's and torch's global RNGs for scgpt's own code, and restore both afterwards.

    scgpt's binning breaks ties with ``np.random`` and its collator subsamples long cells with torch.
    """
    import torch

    state = np.random.get_state()  # noqa: NPY002
    try:
        with torch.random.fork_rng(devices=[]):
            np.random.seed(seed)  # noqa: NPY002
            torch.manual_seed(seed)
            yield
    finally:
        np.random.set_state(state)  # noqa: NPY002


def _embed_scgpt(
    matrix: Any,
    genes: np.ndarray,
    *,
    vocab: Any,
    model: Any,
    args: dict[str, Any],
    keep: np.ndarray,
    batch_size: int,
    max_length: int,
    seed: int,
    device: Any,
    progress: bool,
) -> np.ndarray:
    import torch
    from scgpt.data_collator import DataCollator
    from tqdm.auto import tqdm

    gene_ids = np.asarray([vocab[g] for g in genes[keep]], dtype=np.int64)
    cls_id = vocab["<cls>"]
    pad_id = vocab[args["pad_token"]]
    collator = DataCollator(
        do_padding=True,
        pad_token_id=pad_id,
        pad_value=args["pad_value"],
        do_mlm=False,
        do_binning=True,
        max_length=max_length,
        sampling=True,
        keep_first_n_tokens=1,
    )
    columns = np.flatnonzero(keep)
    out = np.empty((matrix.shape[0], args["embsize"]), np.float32)
    autocast = (
        torch.autocast("cuda", dtype=torch.float16)
        if device.type == "cuda"
        else torch.autocast("cpu", enabled=False)
    )
    with _seeded_global_rngs(seed), torch.inference_mode(), autocast:
        for start in tqdm(
            range(0, matrix.shape[0], batch_size), desc="embed_rna[scgpt]", disable=not progress
        ):
            block = _row_block(matrix, start, start + batch_size)[:, columns]
            block.eliminate_zeros()
            block.sort_indices()
            examples = []
            for i in range(block.shape[0]):
                lo, hi = block.indptr[i], block.indptr[i + 1]
                examples.append(
                    {
                        "genes": torch.from_numpy(
                            np.insert(gene_ids[block.indices[lo:hi]], 0, cls_id)
                        ).long(),
                        "expressions": torch.from_numpy(
                            np.insert(block.data[lo:hi].astype(np.float32), 0, args["pad_value"])
                        ).float(),
                    }
                )
            batch = collator(examples)
            tokens = batch["gene"].to(device)
            hidden = model._encode(tokens, batch["expr"].to(device), src_key_padding_mask=tokens.eq(pad_id))
            out[start : start + block.shape[0]] = hidden[:, 0, :].float().cpu().numpy()  # the <cls> token
    return out / np.linalg.norm(out, axis=1, keepdims=True)


# --- scVI and PCA -----------------------------------------------------------------------------------


def _scvi_kwargs(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Split ``kwargs`` into setup_anndata / model / train arguments, raising on unknown names."""
    import lightning.pytorch as pl
    import scvi

    def names(fn: Any) -> set[str]:
        return {
            p
            for p, v in inspect.signature(fn).parameters.items()
            if v.kind not in (v.VAR_KEYWORD, v.VAR_POSITIONAL)
        }

    setup_names = names(scvi.model.SCVI.setup_anndata) - {"adata", "layer"}
    model_names = (names(scvi.model.SCVI.__init__) | names(scvi.module.VAE.__init__)) - {
        "self", "adata", "registry", "n_input", "n_batch", "n_labels", "n_continuous_cov", "n_cats_per_cov",
        "library_log_means", "library_log_vars",
    }  # fmt: skip
    train_names = (names(scvi.model.SCVI.train) | names(pl.Trainer.__init__)) - {
        "self",
        "accelerator",
        "devices",
        "batch_size",
    }
    unknown = sorted(set(kwargs) - setup_names - model_names - train_names)
    if unknown:
        msg = (
            f"method='scvi' got unknown arguments {unknown}; it takes scvi.model.SCVI.setup_anndata arguments "
            f"{sorted(setup_names)}, SCVI / VAE model arguments (n_latent, n_hidden, n_layers, gene_likelihood, ...) "
            "and SCVI.train / Lightning Trainer arguments (max_epochs, early_stopping, plan_kwargs, ...)."
        )
        raise ContractError(msg)
    split = ({}, {}, {})
    for k, v in kwargs.items():
        split[0 if k in setup_names else 1 if k in model_names else 2][k] = v
    return split


def _embed_scvi(
    adata: AnnData,
    matrix: Any,
    *,
    batch_size: int,
    device: Any,
    seed: int,
    progress: bool,
    kwargs: dict[str, Any],
) -> tuple[np.ndarray, dict[str, Any]]:
    import scvi
    from anndata import AnnData

    setup_kwargs, model_kwargs, train_kwargs = _scvi_kwargs(kwargs)
    obs_keys = [
        setup_kwargs[k] for k in ("batch_key", "labels_key", "size_factor_key") if setup_kwargs.get(k)
    ]
    for key in ("categorical_covariate_keys", "continuous_covariate_keys"):
        obs_keys += list(setup_kwargs.get(key) or [])
    missing = [k for k in obs_keys if k not in adata.obs.columns]
    if missing:
        msg = f"method='scvi': the obs columns {missing} named in the scVI arguments are not in the modality's obs."
        raise ContractError(msg)
    counts = (
        matrix
        if isinstance(matrix, np.ndarray) or sparse.issparse(matrix)
        else _row_block(matrix, 0, matrix.shape[0])
    )
    work = AnnData(
        X=counts, obs=adata.obs[obs_keys].copy()
    )  # scvi registers its fields here, not in the user's data
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    devices = [device.index] if device.type == "cuda" and device.index is not None else 1
    with quiet_lightning(level=logging.WARNING):
        scvi.settings.seed = seed
        scvi.model.SCVI.setup_anndata(work, **setup_kwargs)
        model = scvi.model.SCVI(work, **model_kwargs)
        model.train(
            accelerator=accelerator,
            devices=devices,
            batch_size=batch_size,
            enable_progress_bar=progress,
            **{"enable_model_summary": False, **train_kwargs},
        )
    latent = model.get_latent_representation(batch_size=batch_size).astype(np.float32)
    history = model.history.get("elbo_train")
    params = {
        **{
            k: v
            for k, v in {**setup_kwargs, **model_kwargs, **train_kwargs}.items()
            if isinstance(v, str | int | float | bool | list)
        },
        "n_latent": int(latent.shape[1]),
        "n_epochs": int(len(history)) if history is not None else 0,
        "elbo_train_last": float(history.iloc[-1, 0])
        if history is not None and len(history)
        else float("nan"),
    }
    return latent, params


def _embed_pca(
    matrix: Any, *, seed: int, kwargs: dict[str, Any]
) -> tuple[np.ndarray, dict[str, Any], dict[str, Any], np.ndarray]:
    """PCA coordinates, morphomu's record, and scanpy's records (``uns['pca']``, ``varm['PCs']``) for all genes.

    scanpy's ``sc.pp.pca`` runs on the genes kept (the highly variable ones); its records are then laid out
    as ``sc.pp.pca(adata, mask_var=kept)`` on the whole preprocessed matrix writes them (loadings of the
    other genes are 0), without densifying the genes left out.
    """
    import scanpy as sc
    from anndata import AnnData

    allowed = {"n_comps", "n_top_genes", "target_sum", "scale", "max_value", "svd_solver"}
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        msg = f"method='pca' got unknown arguments {unknown}; it takes {sorted(allowed)}."
        raise ContractError(msg)
    n_top = kwargs.get("n_top_genes", 2000)
    target_sum = kwargs.get("target_sum", 1e4)
    scale = kwargs.get("scale", True)
    max_value = kwargs.get("max_value", 10.0)
    counts = (
        matrix
        if isinstance(matrix, np.ndarray) or sparse.issparse(matrix)
        else _row_block(matrix, 0, matrix.shape[0])
    )
    work = AnnData(X=sparse.csr_matrix(counts, dtype=np.float32, copy=True))
    work.var["column"] = np.arange(work.n_vars)  # the genes' positions survive the HVG subset
    with keep_torch_threads():
        sc.pp.normalize_total(work, target_sum=target_sum)
        sc.pp.log1p(work)
        if n_top is not None and work.n_vars > n_top:
            sc.pp.highly_variable_genes(work, n_top_genes=n_top, flavor="seurat", subset=True)
        if scale:  # scaling centres the genes, so the matrix becomes dense anyway
            work.X = work.X.toarray()
            sc.pp.scale(work, max_value=max_value)
    n_comps = int(kwargs.get("n_comps", min(50, work.n_obs - 1, work.n_vars - 1)))
    if not 1 <= n_comps < min(work.n_obs, work.n_vars):
        msg = f"method='pca': n_comps={n_comps} must be at least 1 and below min(cells, genes) = {min(work.n_obs, work.n_vars)}."
        raise ContractError(msg)
    with keep_torch_threads():
        sc.pp.pca(work, n_comps=n_comps, random_state=seed, svd_solver=kwargs.get("svd_solver"))
    params = {
        "n_comps": n_comps,
        "n_top_genes": n_top,
        "target_sum": target_sum,
        "scale": bool(scale),
        "n_genes_used": int(work.n_vars),
        "variance_ratio": np.asarray(work.uns["pca"]["variance_ratio"], dtype=np.float64),
    }
    if work.n_vars < counts.shape[1]:
        mask = np.zeros(counts.shape[1], dtype=bool)
        mask[work.var["column"].to_numpy()] = True
        loadings = np.zeros((counts.shape[1], n_comps))  # as scanpy lays out masked loadings
        loadings[mask] = work.varm["PCs"]
    else:
        mask, loadings = None, work.varm["PCs"]
    scanpy_uns = {
        "params": {**work.uns["pca"]["params"], "use_highly_variable": False, "mask_var": mask},
        "variance": work.uns["pca"]["variance"],
        "variance_ratio": work.uns["pca"]["variance_ratio"],
    }
    return np.asarray(work.obsm["X_pca"], dtype=np.float32), params, scanpy_uns, loadings


# --- public -----------------------------------------------------------------------------------------


def embed_rna(
    mdata: MuData | AnnData,
    *,
    mod: str | None = C.RNA_MOD,
    method: Literal["scgpt", "scvi", "pca"] = "scgpt",
    model_dir: str | os.PathLike | None = None,
    gene_key: str | None = None,
    layer: str | None = None,
    key_added: str | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    seed: int = 0,
    progress: bool = True,
    copy: bool = False,
    **kwargs: Any,
) -> MuData | AnnData | None:
    """Embed RNA cells from their counts with scGPT, scVI or PCA.

    Parameters
    ----------
    mdata
        A MuData (``mod`` names the modality) or an AnnData of counts (cells x genes).
    mod
        Modality holding the counts (ignored for an AnnData).
    method
        ``'scgpt'``: the ``<cls>`` output of a pretrained scGPT model read from ``model_dir`` (as
        ``scgpt.tasks.embed_data`` computes it: genes matched to the vocabulary, each cell's non-zero
        values binned into 51 levels, at most ``max_length`` genes, L2-normalised);
        ``'scvi'``: the latent mean of an scvi-tools SCVI model trained here on the counts;
        ``'pca'``: scanpy's normalise-total, log1p, highly variable genes, scale, PCA.
    model_dir
        scGPT model directory with ``vocab.json``, ``args.json`` and ``best_model.pt`` (``'scgpt'`` only).
    gene_key
        ``.var`` column with gene symbols (default: ``var_names``), matched to scGPT's vocabulary.
    layer
        Layer holding the counts (default ``.X``).
    key_added
        ``.obsm`` key written; defaults to ``'X_scgpt'``, ``'X_scvi'`` or ``'X_pca'``.
    batch_size
        Cells per batch (scGPT inference, default 64; scVI training and inference, default 128).
    device
        ``'auto'`` (CUDA when present), ``'cpu'``, ``'cuda'``, ``'cuda:N'``.
    seed
        Seed of scVI's training, PCA's solver, and scGPT's randomness: its binning spreads values that
        tie with a bin edge at random (as ``scgpt`` does), and cells with more than ``max_length``
        expressed genes are subsampled. The global numpy / torch random states are left as they were.
    progress
        Show progress bars.
    copy
        Return a copy instead of writing into ``mdata``.
    **kwargs
        ``'scgpt'``: ``max_length`` (default 1200). ``'scvi'``: arguments of ``SCVI.setup_anndata``
        (``batch_key``, ...), of the model (``n_latent``, ``n_hidden``, ``n_layers``, ``gene_likelihood``,
        ...) and of ``SCVI.train`` / the Lightning Trainer (``max_epochs``, ``early_stopping``, ...).
        ``'pca'``: ``n_comps`` (50), ``n_top_genes`` (2000; ``None`` keeps all genes), ``target_sum``
        (1e4), ``scale`` (True), ``max_value`` (10), ``svd_solver``.

    Returns
    -------
    ``None`` or the copy. Writes ``.obsm[key_added]`` (float32) and
    ``uns['morphomu'][key_added]``: the method, its parameters, and for scGPT
    ``n_genes``, ``n_genes_matched`` (genes found in the vocabulary; the others are left out, with a
    warning) and ``vocab_size``. ``'pca'`` also leaves scanpy's records, as ``sc.pp.pca`` does on the
    preprocessed genes: ``.uns['pca']`` (``variance``, ``variance_ratio``, ``params``; ``params['mask_var']``
    marks the genes used, ``None`` when all were) and ``.varm['PCs']`` (genes x components, 0 for genes
    left out), under ``key_added`` for both when it is not ``'X_pca'`` (scanpy's ``key_added``).

    Examples
    --------
    >>> import morphomu as mm
    >>> mm.pp.embed_rna(mdata, method="pca")  # doctest: +SKIP
    >>> mm.pp.embed_rna(mdata, method="scvi", max_epochs=100, n_latent=30)  # doctest: +SKIP
    >>> mm.pp.embed_rna(mdata, method="scgpt", model_dir="~/models/scGPT_human")  # doctest: +SKIP
    >>> mdata["rna"].obsm["X_scgpt"].shape  # doctest: +SKIP
    (n_cells, 512)
    """
    adata = get_adata(mdata, mod)
    mod_name = None if adata is mdata else mod
    if method not in METHODS:
        msg = f"method={method!r} is not one of {sorted(METHODS)}."
        raise ContractError(msg)
    key_added = key_added or METHODS[method]
    if batch_size is None:
        batch_size = 64 if method == "scgpt" else 128
    if not isinstance(batch_size, int | np.integer) or isinstance(batch_size, bool) or batch_size < 1:
        msg = f"batch_size must be a positive integer, got {batch_size!r}."
        raise ContractError(msg)
    torch_device = resolve_device(device) if method != "pca" else None
    matrix = _counts(adata, layer, mod_name)
    name = f"{where(mod_name).removesuffix('.X')}.{'X' if layer is None else f'layers[{layer!r}]'}"
    if matrix.shape[0] == 0 or matrix.shape[1] == 0:
        msg = f"{name} is empty (shape {tuple(matrix.shape)}); expected cells x genes."
        raise ContractError(msg)
    if gene_key is None:
        genes = adata.var_names.to_numpy().astype(str)
    elif gene_key in adata.var.columns:
        genes = adata.var[gene_key].astype(str).to_numpy()
    else:
        msg = f"gene_key={gene_key!r} is not a column of {where(mod_name).removesuffix('.X')}.var; its columns are {list(adata.var.columns)}."
        raise ContractError(msg)
    integer, totals = _check_counts(matrix, name)
    if not integer and method == "scvi":
        warnings.warn(
            f"{name} holds non-integer values; scVI models raw counts.", MorphomuWarning, stacklevel=2
        )
    empty = int((totals == 0).sum())
    if empty and method != "pca":
        msg = f"{name}: {empty} cells have no counts; remove them first (e.g. sc.pp.filter_cells(adata, min_counts=1))."
        raise ContractError(msg)

    entry: dict[str, Any] = {
        "method": method,
        "layer": layer,
        "gene_key": gene_key,
        "seed": seed,
        "n_genes": int(len(genes)),
    }
    if method == "scgpt":
        max_length = int(kwargs.pop("max_length", 1200))
        if kwargs:
            msg = f"method='scgpt' got unknown arguments {sorted(kwargs)}; it takes max_length."
            raise ContractError(msg)
        path, args, token2idx = _scgpt_files(model_dir)
        keep = np.fromiter((g in token2idx for g in genes), bool, len(genes))
        n_matched = int(keep.sum())
        if n_matched == 0:
            msg = (
                f"none of the {len(genes)} genes of {name} (e.g. {list(genes[:3])}) is in the scGPT vocabulary of "
                f"{str(path)!r}; give gene symbols (gene_key= a .var column of symbols)."
            )
            raise ContractError(msg)
        columns = np.flatnonzero(keep)
        kept_totals = np.zeros(matrix.shape[0])
        for start in range(0, matrix.shape[0], _ROWS):
            kept_totals[start : start + _ROWS] = np.asarray(
                _row_block(matrix, start, start + _ROWS)[:, columns].sum(1)
            ).ravel()
        if (kept_totals == 0).any():
            msg = f"{name}: {int((kept_totals == 0).sum())} cells have no counts in genes of the scGPT vocabulary; remove them first."
            raise ContractError(msg)
        message = f"embed_rna: {n_matched} of {len(genes)} genes matched the scGPT vocabulary of {len(token2idx)} tokens"
        logger.info(message)
        if n_matched < len(genes):
            warnings.warn(
                f"{message}; the other {len(genes) - n_matched} are left out.", MorphomuWarning, stacklevel=2
            )
        vocab, model = _load_scgpt(path, args, torch_device)
        features = _embed_scgpt(
            matrix, genes, vocab=vocab, model=model, args=args, keep=keep, batch_size=int(batch_size),
            max_length=max_length, seed=seed, device=torch_device, progress=progress,
        )  # fmt: skip
        entry |= {
            "model_dir": str(path.resolve()),
            "n_genes_matched": n_matched,
            "vocab_size": len(vocab),
            "max_length": max_length,
            "embsize": int(args["embsize"]),
        }
    elif method == "scvi":
        features, params = _embed_scvi(
            adata,
            matrix,
            batch_size=int(batch_size),
            device=torch_device,
            seed=seed,
            progress=progress,
            kwargs=kwargs,
        )
        entry |= params
    else:
        features, params, pca_uns, loadings = _embed_pca(matrix, seed=seed, kwargs=kwargs)
        entry |= params
    if not np.isfinite(features).all():
        msg = f"embed_rna(method={method!r}) produced non-finite values."
        raise MorphomuError(msg)
    if copy:
        mdata = mdata.copy()
        adata = get_adata(mdata, mod)
    adata.obsm[key_added] = features
    if method == "pca":  # scanpy's records, under the names sc.pp.pca(key_added=...) uses
        varm_key, uns_key = ("PCs", "pca") if key_added == C.PCA_REP else (key_added, key_added)
        adata.varm[varm_key] = loadings
        adata.uns[uns_key] = pca_uns
    store(mdata, key_added, entry, tool="embed_rna")
    return mdata if copy else None
