"""Image-set fidelity of generated morphology: FID, KID and Inception Score on multi-channel features.

The field reports FID / KID / IS (TRIDENT's Tables 1-2) on ImageNet-Inception features of RGB
projections of Cell Painting images; here every channel is kept: features are per-stain ViT embeddings
(each stain embedded alone and concatenated, as ``X_vit``), any precomputed embedding, or interpretable
morphology readouts. The statistics follow the reference implementations (pytorch-fid / torch-fidelity /
torchmetrics) exactly, in float64.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .. import _constants as C
from .._core import renamed_arguments
from .._errors import ContractError, MorphomuError
from .._uns import AUTO, CONTRACT_KEYS, known_keys, store
from .._validation import check_obs_keys, check_rep, get_mod, get_rep
from ._feature_distances import (
    as_feature_matrix,
    frechet_distance,
    inception_score,
    kernel_distance,
)

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

# the distances are re-exported: mm.tl.frechet_distance is public
__all__ = ["frechet_distance", "image_metrics", "inception_score", "kernel_distance"]

#: Row label of the all-tiles comparison in the per-group table.
ALL = "all"
#: Columns of :func:`image_metrics`' table, in order.
COLUMNS = ("n_real", "n_generated", "fid", "kid_mean", "kid_std", "is_mean", "is_std", "is_real")


class _Side:
    """One side (real or generated): its AnnData (when any), tiles or features, and group labels."""

    def __init__(self, data: Any, *, arg: str, images_key: str) -> None:
        from anndata import AnnData

        self.arg = arg
        self.adata: AnnData | None = None
        self.array: np.ndarray | None = None
        if isinstance(data, AnnData):
            self.adata = data
            self.where = arg
        elif isinstance(data, np.ndarray) or (hasattr(data, "__array__") and not hasattr(data, "mod")):
            self.array = np.asarray(data)
            self.where = arg
            if self.array.ndim not in (2, 4) or 0 in self.array.shape:
                msg = (
                    f"{arg} as an array must be tiles (n, C, H, W) or features (n, d), non-empty; got shape "
                    f"{self.array.shape}."
                )
                raise ContractError(msg)
        else:
            msg = f"{arg} must be an AnnData, a modality name, or an array of tiles / features; got {type(data).__name__}."
            raise ContractError(msg)
        self.images_key = images_key

    @property
    def n(self) -> int:
        return self.adata.n_obs if self.adata is not None else len(self.array)

    def has_tiles(self) -> bool:
        if self.array is not None:
            return self.array.ndim == 4
        return self.images_key in self.adata.obsm or isinstance(self.adata.uns.get(self.images_key), Mapping)

    def tiles_source(self) -> Any:
        return self.array if self.array is not None else self.adata

    def labels(self, key: str | None, role: str) -> np.ndarray | None:
        """``obs[key]`` as strings (``role``: the argument that named ``key``), ``None`` without obs."""
        if key is None or self.adata is None:
            return None
        check_obs_keys(self.adata, {role: key}, mod=None)
        return self.adata.obs[key].astype(str).to_numpy()


def _follow_the_data(
    real: Any, generated: Any, *, mod: str | None, images_key: str | None, treatment_key: str | None
) -> tuple[str, str, str | None]:
    """``mod``, ``images_key`` and ``treatment_key``: the caller's, else what the records say, else the contract's.

    The records are those of ``real`` (a MuData) about ``generated`` (the step that wrote it, e.g.
    :func:`~morphomu.tl.generate_morphology`, first) and about the real modality.
    """
    from mudata import MuData

    known: dict[str, Any] = {}
    if isinstance(real, MuData) and isinstance(generated, str):
        produced = known_keys(real, generated)
        real_mod = mod if mod is not None else produced.get("real", C.IMAGE_MOD)
        known = {**known_keys(real, real_mod), **produced}
    mod = mod if mod is not None else known.get("real", C.IMAGE_MOD)
    images_key = (
        images_key if images_key is not None else known.get("images_key", CONTRACT_KEYS["images_key"])
    )
    if treatment_key == AUTO:
        treatment_key = known.get("treatment_key", CONTRACT_KEYS["treatment_key"])
    return mod, images_key, treatment_key


def _resolve(real: Any, generated: Any, mod: str, images_key: str) -> tuple[_Side, _Side, MuData | None]:
    from mudata import MuData

    mdata = None
    if isinstance(real, MuData):
        mdata = real
        real_data = get_mod(real, mod, arg="mod")
        real_arg = f"mdata.mod[{mod!r}]"
    else:
        real_data, real_arg = real, "real"
    if isinstance(generated, str):
        if mdata is None:
            msg = f"generated={generated!r} names a modality, which needs real to be a MuData; pass the data instead."
            raise ContractError(msg)
        gen_data = get_mod(mdata, generated, arg="generated")
        gen_arg = f"mdata.mod[{generated!r}]"
    elif isinstance(generated, MuData):
        msg = "generated must be a modality name of real, an AnnData or an array; pick a modality (mdata['img_synthetic'])."
        raise ContractError(msg)
    else:
        gen_data, gen_arg = generated, "generated"
    if real_data is gen_data:
        msg = f"real and generated are the same data ({real_arg}); compare two different sets."
        raise ContractError(msg)
    return (
        _Side(real_data, arg=real_arg, images_key=images_key),
        _Side(gen_data, arg=gen_arg, images_key=images_key),
        mdata,
    )


def _readout_features(real: _Side, gen: _Side, images_key: str, readout_kwargs: Mapping[str, Any]) -> tuple:
    from ._readouts import ALWAYS_FINITE, compare_readouts

    table = compare_readouts(
        {"real": real.tiles_source(), "generated": gen.tiles_source()},
        mod=None,
        images_key=images_key,
        groupby=None,
        **dict(readout_kwargs),
    )
    cols = [*ALWAYS_FINITE, *(c for c in table.columns if c.startswith("intensity_"))]
    values = table[cols].to_numpy(np.float64)
    is_real = (table["source"] == "real").to_numpy()
    f_real, f_gen = values[is_real], values[~is_real]
    # readouts have different units: z-score both sets with the real set's statistics (an affine map
    # applied to both, so FID / KID still compare the same distributions, in comparable units)
    mean, std = f_real.mean(0), f_real.std(0)
    std[std == 0] = 1.0
    return (f_real - mean) / std, (f_gen - mean) / std, cols


def _vit_features(side: _Side, *, images_key: str, vit_kwargs: Mapping[str, Any]) -> np.ndarray:
    import anndata as ad

    from ..pp._embed_images import embed_images

    if side.array is not None:
        tmp = ad.AnnData(obs=pd.DataFrame(index=[f"t{i}" for i in range(side.n)]))
        tmp.obsm[images_key] = side.array
    else:
        if images_key not in side.adata.obsm:
            msg = (
                f"features='vit' needs in-memory tiles in {side.where}.obsm[{images_key!r}]; for tiles in a "
                f"zarr store run mm.pp.embed_images first and pass features='X_vit'."
            )
            raise ContractError(msg)
        tmp = ad.AnnData(obs=pd.DataFrame(index=side.adata.obs_names.copy()))
        tmp.obsm[images_key] = side.adata.obsm[images_key]
        if images_key in side.adata.uns:
            tmp.uns[images_key] = side.adata.uns[images_key]
    embed_images(tmp, mod=None, images_key=images_key, key_added="features", progress=False, **vit_kwargs)
    return tmp.obsm["features"].astype(np.float64)


def _obsm_features(side: _Side, key: str) -> np.ndarray:
    if side.adata is None:
        msg = f"features={key!r} names an .obsm key, but {side.arg} is an array; pass AnnData or the features themselves."
        raise ContractError(msg)
    check_rep(side.adata, key, mod=None, arg="features")
    return get_rep(side.adata, key, mod=None, arg="features", dtype=np.float64)


# --- classifier for IS ------------------------------------------------------------------------------


def _train_classifier(
    features: np.ndarray, labels: np.ndarray, *, preset: Any, seed: int, max_epochs: int | None
) -> Any:
    """A TreatmentClassifier (single-profile MLP) on the real features, 80 / 20 train / val by class."""
    import anndata as ad
    import mudata as md
    import torch

    from ..models._classifier import TreatmentClassifier

    rng = np.random.default_rng(seed)
    split = np.full(len(labels), C.TRAIN, dtype=object)
    for value in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == value))
        n_val = len(rows) // 5 if len(rows) >= 5 else 0
        split[rows[:n_val]] = C.VAL
    if not (split == C.VAL).any():  # tiny classes: validate on a random fifth overall
        split[rng.permutation(len(labels))[: max(1, len(labels) // 5)]] = C.VAL
    obs = pd.DataFrame(
        {"label": labels, "sample": labels, "split": split}, index=[f"real{i}" for i in range(len(labels))]
    )
    from .._mudata import no_pull_on_update

    adata = ad.AnnData(X=features.astype(np.float32), obs=obs)
    with no_pull_on_update():
        mdata = md.MuData({C.IMAGE_MOD: adata})
    TreatmentClassifier.setup_mudata(
        mdata, inputs=(C.IMAGE_MOD, None), treatment_key="label", sample_key="sample", split_key="split"
    )
    torch.manual_seed(seed)
    model = TreatmentClassifier(mdata, setting="single", exclude=(), preset=preset)
    model.train(max_epochs=max_epochs, progress=False, seed=seed, accelerator="cpu", devices=1)
    return model


def _probabilities(classifier: Any, features: np.ndarray) -> np.ndarray:
    import torch

    from ..models._classifier import TreatmentClassifier

    if isinstance(classifier, TreatmentClassifier):
        module = classifier.module.eval()
        device = next(module.parameters()).device
        out = []
        with torch.inference_mode():
            for start in range(0, len(features), 4096):
                x = torch.as_tensor(features[start : start + 4096], dtype=torch.float32, device=device)
                out.append(torch.softmax(module.logits([x]).double(), dim=1).cpu().numpy())
        return np.concatenate(out)
    probs = np.asarray(classifier(features.astype(np.float32)), dtype=np.float64)
    if probs.ndim != 2 or len(probs) != len(features):
        msg = f"classifier returned shape {probs.shape}; expected (n_tiles, n_classes) probabilities."
        raise ContractError(msg)
    return probs


def _check_classifier(classifier: Any, dim: int) -> None:
    from ..models._classifier import TreatmentClassifier

    if isinstance(classifier, TreatmentClassifier):
        if not classifier.is_trained_:
            msg = "classifier is not trained; call classifier.train() first."
            raise MorphomuError(msg)
        widths = classifier._n_features()
        if len(widths) != 1 or widths[0] != dim:
            msg = (
                f"classifier takes inputs of widths {widths}, but the image features have {dim} columns; "
                "give a single-input classifier trained on the same features."
            )
            raise ContractError(msg)
    elif not callable(classifier):
        msg = (
            f"classifier must be a trained TreatmentClassifier or a callable returning class probabilities, "
            f"got {type(classifier).__name__}."
        )
        raise ContractError(msg)


# --- public tool ------------------------------------------------------------------------------------


@renamed_arguments(label_key="treatment_key", classifier_hparams="preset")
def image_metrics(
    real: MuData | AnnData | np.ndarray,
    generated: str | AnnData | np.ndarray = C.IMAGE_SYNTHETIC_MOD,
    *,
    mod: str | None = None,
    features: str | None = None,
    images_key: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    model: str = "vit_large_patch16_224",
    vit_kwargs: Mapping[str, Any] | None = None,
    readout_kwargs: Mapping[str, Any] | None = None,
    groupby: str | None = None,
    treatment_key: str | None = AUTO,
    classifier: Any = None,
    preset: str | Mapping[str, Any] = "fast",
    classifier_epochs: int | None = None,
    n_subsets: int = 100,
    subset_size: int = 1000,
    is_splits: int = 10,
    seed: int = 0,
    key_added: str = "image_metrics",
) -> pd.DataFrame:
    """FID, KID and Inception Score of generated images against real ones, overall and per group.

    TRIDENT's image metrics (Tables 1-2), computed on features that keep every channel:

    - ``features='vit'``: per-stain ViT embeddings from a local timm ``checkpoint``
      (:func:`morphomu.pp.embed_images`: each stain embedded alone as a grey image, concatenated; never an
      RGB projection of the stains);
    - ``features=<.obsm key>``: an embedding already computed for both sets (e.g. ``'X_vit'``);
    - ``features='readouts'``: the interpretable :func:`morphomu.tl.morphology_readouts` (cell count, area
      occupied by nucleus / cell / cytoplasm, mean intensity per channel) of both sets, segmented by one
      shared rule and z-scored with the real set's statistics. Needs no weights.

    By default (``features=None``) arrays of features are used as given, otherwise ``'vit'`` when a
    ``checkpoint`` is given and ``'readouts'`` when not (nothing is downloaded). The table records which.

    FID is :func:`frechet_distance`, KID :func:`kernel_distance` (unbiased polynomial-kernel MMD², mean ±
    std over ``n_subsets`` subsets of ``subset_size`` rows; torch-fidelity's and torchmetrics' estimator).
    IS is :func:`inception_score` of a classifier's class probabilities on the generated features: the
    ``classifier`` given, or a :class:`~morphomu.models.TreatmentClassifier` (single-profile MLP of size
    ``preset``) trained here on the real features to predict ``obs[treatment_key]`` (80 / 20
    train / validation split per class). IS is usually read higher-is-better, but **the TRIDENT paper reads
    it lower-is-better**: "For IS, in this context, a lower score is preferable as it indicates that the
    model has learned to consistently generate the specific, constrained phenotype for a given condition,
    rather than an overly broad range of morphologies." ``is_real`` (the same score of the real tiles)
    gives the reference to compare with. All three are biased at small sample sizes (FID strongly so):
    compare sets of equal size, and read per-group rows of a few dozen tiles with care.

    Parameters
    ----------
    real
        The real images: a MuData (modality ``mod``), an AnnData, or an array of tiles ``(n, C, H, W)`` or
        of features ``(n, d)``.
    generated
        The generated images: a modality name of ``real`` (a MuData), an AnnData or an array, of the same
        kind as ``real``.
    mod
        Modality of the real images when ``real`` is a MuData (default: from the record of the step that
        wrote ``generated``, e.g. :func:`~morphomu.tl.generate_morphology`'s ``image_mod``, else ``'img'``).
    features
        ``'vit'``, ``'readouts'``, an ``.obsm`` key present in both sets, or ``None`` (see above).
    images_key
        ``.obsm`` key of the tiles (default: from the record of the step that wrote ``generated``, else
        ``'images'``).
    checkpoint
        Local weights of ``model`` for ``features='vit'``.
    model
        timm model name for ``features='vit'`` (ViT-L/16 as scGeneScope by default).
    vit_kwargs
        More arguments of :func:`morphomu.pp.embed_images` (``model_kwargs``, ``intensity_range``,
        ``batch_size``, ``device``, ``precision``, ...).
    readout_kwargs
        More arguments of :func:`morphomu.tl.morphology_readouts` for ``features='readouts'``.
    groupby
        obs column present in both sets that breaks the table down (e.g. ``'treatment'``, or
        ``'compound_split'`` for in- vs out-of-distribution compounds): one row per group present in the
        generated set, besides the overall row ``'all'``. ``None`` (default): the overall row only.
    treatment_key
        obs column of the real set with the classes of the IS classifier (default ``'auto'``: from the
        record of the step that wrote ``generated``, else ``'treatment'``); ``None`` skips IS (NaN) unless
        a ``classifier`` is given. Ignored for arrays (no labels: IS is NaN without a ``classifier``).
        Formerly ``label_key``.
    classifier
        A trained single-input :class:`~morphomu.models.TreatmentClassifier` on these features, or a
        callable mapping a float32 ``(n, d)`` feature array to ``(n, k)`` class probabilities.
    preset
        Size of the IS classifier trained here: a preset name (``'fast'`` by default) or a dict of overrides
        (see :func:`~morphomu.models._classifier.resolve_hparams`). Formerly ``classifier_hparams``.
    classifier_epochs
        Its maximum number of epochs (default the preset's).
    n_subsets, subset_size
        KID subsets (100 of 1000 in torch-fidelity / torchmetrics); where a comparison's smaller set has
        fewer rows than ``subset_size``, its subsets take half of them (see :func:`kernel_distance`).
    is_splits
        Parts of the IS (10 as usual).
    seed
        Seed of the KID subsets, the IS shuffle and the classifier.
    key_added
        Entry of ``real.uns['morphomu']`` written when ``real`` is a MuData (``table`` and ``params``).

    Returns
    -------
    DataFrame indexed by group (``'all'`` first) with columns ``n_real``, ``n_generated``, ``fid``,
    ``kid_mean``, ``kid_std``, ``is_mean``, ``is_std``, ``is_real``; ``table.attrs['features']`` says
    which features were used. Groups with fewer than two tiles on a side get NaN.

    Examples
    --------
    >>> import morphomu as mm
    >>> table = mm.tl.image_metrics(mdata, "img_synthetic", groupby="treatment")  # doctest: +SKIP
    >>> table.loc["all", ["fid", "kid_mean", "kid_std"]]  # doctest: +SKIP
    >>> mm.tl.image_metrics(
    ...     mdata, "img_synthetic", features="vit", checkpoint="~/weights/vit_large.safetensors"
    ... )  # doctest: +SKIP
    """
    mod, images_key, treatment_key = _follow_the_data(
        real, generated, mod=mod, images_key=images_key, treatment_key=treatment_key
    )
    real_side, gen_side, mdata = _resolve(real, generated, mod, images_key)
    for side in (real_side, gen_side):
        if side.n == 0:
            msg = f"{side.where} has no rows; image metrics compare two non-empty sets."
            raise ContractError(msg)
    for name, value in (("n_subsets", n_subsets), ("subset_size", subset_size), ("is_splits", is_splits)):
        if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
            msg = f"{name} must be a positive integer, got {value!r}."
            raise ContractError(msg)
    if subset_size < 2:
        msg = f"subset_size must be at least 2, got {subset_size}."
        raise ContractError(msg)
    if mdata is not None and (not isinstance(key_added, str) or not key_added):
        msg = f"key_added must be a non-empty string, got {key_added!r}."
        raise ContractError(msg)
    both_features = (
        real_side.array is not None
        and gen_side.array is not None
        and real_side.array.ndim == 2
        and gen_side.array.ndim == 2
    )
    if features is None:
        features = "given" if both_features else ("vit" if checkpoint is not None else "readouts")
    elif not isinstance(features, str):
        msg = f"features must be 'vit', 'readouts', an .obsm key or None, got {features!r}."
        raise ContractError(msg)
    if features in ("vit", "readouts"):
        for side in (real_side, gen_side):
            if not side.has_tiles():
                msg = f"features={features!r} needs image tiles, but {side.where} has none (images_key={images_key!r})."
                raise ContractError(msg)
    if features == "vit" and checkpoint is None:
        msg = "features='vit' needs checkpoint= (local weights of the ViT); or use features='readouts'."
        raise MorphomuError(msg)
    if features not in ("vit", "readouts", "given") and (real_side.adata is None or gen_side.adata is None):
        msg = f"features={features!r} names an .obsm key, which needs AnnData / MuData inputs on both sides."
        raise ContractError(msg)
    if features == "given" and not both_features:
        msg = "features='given' needs both real and generated as (n, d) feature arrays."
        raise ContractError(msg)
    real_groups = real_side.labels(groupby, "groupby")
    gen_groups = gen_side.labels(groupby, "groupby")
    if groupby is not None and (real_groups is None or gen_groups is None):
        msg = f"groupby={groupby!r} needs obs on both sides; arrays have none."
        raise ContractError(msg)
    if groupby is not None:
        missing = sorted(set(gen_groups) - set(real_groups))
        if missing:
            msg = f"generated groups {missing[:10]} (obs[{groupby!r}]) have no real tiles to compare with."
            raise ContractError(msg)
    class_labels = real_side.labels(treatment_key, "treatment_key") if classifier is None else None
    if classifier is None and class_labels is not None and len(np.unique(class_labels)) < 2:
        msg = (
            f"treatment_key={treatment_key!r}: the real set has one class only; IS needs at least two "
            "(or treatment_key=None)."
        )
        raise ContractError(msg)
    if classifier is None and class_labels is not None:
        from ..models._classifier import resolve_hparams

        resolve_hparams(preset, "single", "image")  # a bad preset fails before any features are computed

    # --- features -------------------------------------------------------------------------------------
    if features == "vit":
        vit = {"model": model, "checkpoint": checkpoint, **dict(vit_kwargs or {})}
        f_real = _vit_features(real_side, images_key=images_key, vit_kwargs=vit)
        f_gen = _vit_features(gen_side, images_key=images_key, vit_kwargs=vit)
        columns = None
    elif features == "readouts":
        f_real, f_gen, columns = _readout_features(real_side, gen_side, images_key, readout_kwargs or {})
    elif features == "given":
        f_real = as_feature_matrix(real_side.array, "real")
        f_gen = as_feature_matrix(gen_side.array, "generated")
        columns = None
    else:
        f_real, f_gen, columns = _obsm_features(real_side, features), _obsm_features(gen_side, features), None
    if f_real.shape[1] != f_gen.shape[1]:
        msg = f"real features have {f_real.shape[1]} columns but generated ones {f_gen.shape[1]}."
        raise ContractError(msg)
    if classifier is not None:
        _check_classifier(classifier, f_real.shape[1])

    # --- IS classifier --------------------------------------------------------------------------------
    model_ = classifier
    if model_ is None and class_labels is not None:
        model_ = _train_classifier(
            f_real, class_labels, preset=preset, seed=seed, max_epochs=classifier_epochs
        )
    p_gen = _probabilities(model_, f_gen) if model_ is not None else None
    p_real = _probabilities(model_, f_real) if model_ is not None else None

    # --- the table ------------------------------------------------------------------------------------
    groups: list[tuple[str, np.ndarray, np.ndarray]] = [(ALL, np.arange(len(f_real)), np.arange(len(f_gen)))]
    if groupby is not None:
        for g in pd.unique(gen_groups):
            groups.append((str(g), np.flatnonzero(real_groups == g), np.flatnonzero(gen_groups == g)))
    rows = {}
    for name, r_rows, g_rows in groups:
        row = dict.fromkeys(COLUMNS, np.nan)
        row["n_real"], row["n_generated"] = len(r_rows), len(g_rows)
        if len(r_rows) >= 2 and len(g_rows) >= 2:
            row["fid"] = frechet_distance(f_real[r_rows], f_gen[g_rows])
            row["kid_mean"], row["kid_std"] = kernel_distance(
                f_real[r_rows], f_gen[g_rows], n_subsets=n_subsets, subset_size=subset_size, seed=seed
            )
        if p_gen is not None:
            row["is_mean"], row["is_std"] = inception_score(p_gen[g_rows], n_splits=is_splits, seed=seed)
            row["is_real"] = inception_score(p_real[r_rows], n_splits=is_splits, seed=seed)[0]
        rows[name] = row
    table = pd.DataFrame.from_dict(rows, orient="index")[list(COLUMNS)]
    table.index.name = groupby or "group"
    table[["n_real", "n_generated"]] = table[["n_real", "n_generated"]].astype(np.int64)
    table.attrs["features"] = features
    if mdata is not None:
        params = {
            "mod": mod,
            "generated": generated if isinstance(generated, str) else "<data>",
            "features": features,
            "n_features": int(f_real.shape[1]),
            "readout_columns": columns or [],
            "model": model if features == "vit" else "None",
            "checkpoint": str(checkpoint) if features == "vit" else "None",
            "images_key": images_key,
            "groupby": groupby,
            "treatment_key": treatment_key,
            # the IS classifier's size, when it was trained here
            "preset": (preset if isinstance(preset, str) else dict(preset))
            if classifier is None and model_ is not None
            else None,
            "classifier": "given"
            if classifier is not None
            else ("trained" if model_ is not None else "None"),
            "n_subsets": int(n_subsets),
            "subset_size": int(subset_size),
            "kid_kernel": "(x.y / d + 1)^3",
            "is_splits": int(is_splits),
            "is_reading": "lower is better in TRIDENT (consistent phenotype per condition)",
            "seed": int(seed),
        }
        store(mdata, key_added, {"table": table, "params": params}, tool="image_metrics")
    return table
