"""``mm.tl.generate_rna``: synthetic RNA embeddings from imaging, written into the MuData (scanpy style)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from .. import _constants as C
from .._core import (
    Standardizer,
    Stream,
    cell_keys,
    group_means,
    keyed_uniform,
    read_rows,
    rep_matrix,
    sample_hashes,
)
from .._errors import ContractError, MorphomuError
from .._mudata import update
from .._uns import store
from .._validation import check_args, check_mudata, check_obs_keys, get_mod

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

    from ..models._phenoseq import PhenoSeq

__all__ = ["generate_rna"]

_METHODS = ("phenoseq", "ridge")
_RIDGE_ALPHAS = np.logspace(-3, 5, 17)


def generate_rna(
    mdata: MuData,
    *,
    model: PhenoSeq | None = None,
    preset: Literal["paper", "fast", "tiny"] = "fast",
    key_added: str = C.RNA_SYNTHETIC_MOD,
    method: Literal["phenoseq", "ridge"] = "phenoseq",
    train_kwargs: dict[str, Any] | None = None,
    image_mod: str = C.IMAGE_MOD,
    rna_mod: str = C.RNA_MOD,
    image_rep: str | None = C.IMAGE_REP,
    rna_rep: str | None = C.RNA_REP,
    sample_key: str = C.SAMPLE_KEY,
    treatment_key: str = C.TREATMENT_KEY,
    replicate_key: str = C.REPLICATE_KEY,
    round_key: str = C.ROUND_KEY,
    split_key: str = C.SPLIT_KEY,
    **generate_kwargs: Any,
) -> PhenoSeq | None:
    """Generate RNA embeddings for each sample from its imaging cells and add them as a modality.

    ``method='phenoseq'`` uses a trained :class:`~morphomu.models.PhenoSeq` (``model``), or sets up and
    trains one at ``preset`` on the ``train`` / ``val`` splits and returns it. ``method='ridge'`` is a
    deterministic baseline that shows what diffusion adds: a ridge regression (``RidgeCV``, leave-one-out
    choice of the penalty) from a sample's mean imaging embedding (standardised with train statistics)
    to its mean RNA embedding, fit on the train samples; each generated cell is the predicted mean plus
    the residual (cell minus its sample mean) of a train RNA cell chosen from ``(seed, sample, cell
    index)`` - the pooled within-sample spread of the train split, the same for every treatment.

    Parameters
    ----------
    mdata
        The experiment (imaging and RNA modalities paired by sample).
    model
        A trained PhenoSeq; its own setup keys are used. ``None`` trains one (``method='phenoseq'``).
    preset
        Size of the model trained when ``model`` is ``None``.
    key_added
        Name of the modality written (replaced if present).
    method
        ``'phenoseq'`` or ``'ridge'``.
    train_kwargs
        Passed to :meth:`PhenoSeq.train` when a model is trained here (e.g. ``max_epochs``).
    image_mod, rna_mod, image_rep, rna_rep, sample_key, treatment_key, replicate_key, round_key, split_key
        Keys of the data (ignored when ``model`` is given: the model's are used).
    **generate_kwargs
        Passed to :meth:`PhenoSeq.generate` (``samples``, ``n_cells_per_sample``, ``n_steps``, ``context``,
        ``guidance_scale``, ``seed``, ...); ``ridge`` takes ``samples``, ``n_cells_per_sample`` and ``seed``.

    Returns
    -------
    The model trained here (so it is not lost), else ``None``. Writes ``mdata.mod[key_added]`` (obs
    ``sample``, ``treatment``, ..., ``synthetic=True``; ``.obsm[rna_rep]`` and ``.X``) and
    ``mdata.uns['morphomu']['generate_rna']`` with the parameters.

    Examples
    --------
    >>> import morphomu as mm
    >>> mdata = mm.datasets.simulate_scgenescope(n_img_cells=2000, n_rna_cells=2000)
    >>> mm.pp.assign_split(mdata)
    >>> mm.tl.generate_rna(mdata, method="ridge")
    >>> mdata["rna_synthetic"].obs["synthetic"].all()
    True
    """
    check_mudata(mdata)
    if method not in _METHODS:
        msg = f"method={method!r}: choose one of {list(_METHODS)}."
        raise MorphomuError(msg)
    if model is not None and method != "phenoseq":
        msg = "model= is only used with method='phenoseq'."
        raise MorphomuError(msg)
    _check_kwargs(
        method, model=model, preset=preset, train_kwargs=train_kwargs, generate_kwargs=generate_kwargs
    )
    keys = {
        "image_mod": image_mod,
        "rna_mod": rna_mod,
        "image_rep": image_rep,
        "rna_rep": rna_rep,
        "sample_key": sample_key,
        "treatment_key": treatment_key,
        "replicate_key": replicate_key,
        "round_key": round_key,
        "split_key": split_key,
    }
    if model is not None:
        keys = {k: model.setup_args[k] for k in keys}
    if key_added in (keys["image_mod"], keys["rna_mod"]):
        msg = f"key_added={key_added!r} would replace an input modality; choose another name."
        raise MorphomuError(msg)
    trained_here = None
    if method == "ridge":
        adata, extra = _ridge_generate(mdata, keys, **generate_kwargs)
    else:
        from ..models._phenoseq import PhenoSeq

        if model is None:
            _check_splits(mdata, keys)  # before anything is registered or trained
            PhenoSeq.setup_mudata(mdata, **keys)
            model = PhenoSeq(mdata, preset=preset)
            model.train(**(train_kwargs or {}))
            trained_here = model
        adata = model.generate(mdata, **generate_kwargs)
        extra = {"preset": model.preset, "trained_here": trained_here is not None}
    adata.obs_names = [f"{key_added}-{name}" for name in adata.obs_names]
    # write last
    mdata.mod[key_added] = adata
    update(mdata)
    params = {
        "method": method,
        "key_added": key_added,
        **keys,
        **{k: v for k, v in generate_kwargs.items() if isinstance(v, str | int | float | bool) or v is None},
    }
    if "samples" in generate_kwargs and generate_kwargs["samples"] is not None:
        params["samples"] = [str(s) for s in generate_kwargs["samples"]]
    store(mdata, "generate_rna", {"params": params, "n_cells": int(adata.n_obs), **extra})
    return trained_here


def _check_kwargs(
    method: str,
    *,
    model: Any,
    preset: str,
    train_kwargs: dict[str, Any] | None,
    generate_kwargs: dict[str, Any],
) -> None:
    """Check the arguments passed on to PhenoSeq (or the ridge) before anything is registered or trained."""
    from ..models._phenoseq import GENERATE_CHECKS, TRAIN_CHECKS, check_n_cells
    from ..module._phenoseq import PHENOSEQ_PRESETS

    if method == "ridge":
        check_args(generate_kwargs, {"n_cells_per_sample": check_n_cells})
        return
    check_args(generate_kwargs, GENERATE_CHECKS)  # a bad n_steps must not wait for the training to end
    if model is None:
        if preset not in PHENOSEQ_PRESETS:
            msg = f"preset={preset!r}: choose one of {sorted(PHENOSEQ_PRESETS)}."
            raise MorphomuError(msg)
        if train_kwargs is not None and not isinstance(train_kwargs, dict):
            msg = f"train_kwargs must be a dict of PhenoSeq.train arguments or None, got {train_kwargs!r}."
            raise MorphomuError(msg)
        check_args(train_kwargs or {}, TRAIN_CHECKS)


def _check_splits(mdata: MuData, keys: dict[str, Any]) -> None:
    rna = get_mod(mdata, keys["rna_mod"], arg="rna_mod")
    check_obs_keys(rna, {"split_key": keys["split_key"]}, mod=keys["rna_mod"])
    found = set(rna.obs[keys["split_key"]].astype(str))
    missing = [s for s in (C.TRAIN, C.VAL) if s not in found]
    if missing:
        msg = (
            f"mdata.mod[{keys['rna_mod']!r}].obs[{keys['split_key']!r}] (split_key) has no {missing} cells; training "
            f"needs 'train' and 'val' (found {sorted(found)}). Run mm.pp.assign_split first."
        )
        raise ContractError(msg)


def _ridge_generate(
    mdata: MuData,
    keys: dict[str, Any],
    *,
    samples: list[str] | None = None,
    n_cells_per_sample: int | Literal["match"] = "match",
    seed: int = 0,
) -> tuple[AnnData, dict[str, Any]]:
    """Ridge from sample-mean imaging to sample-mean RNA plus resampled train residuals."""
    from anndata import AnnData
    from sklearn.linear_model import RidgeCV

    from ..models._phenoseq import check_data, check_n_cells, synthetic_obs

    check_data(
        mdata,
        image_mod=keys["image_mod"],
        rna_mod=keys["rna_mod"],
        image_rep=keys["image_rep"],
        rna_rep=keys["rna_rep"],
        sample_key=keys["sample_key"],
        treatment_key=keys["treatment_key"],
    )
    _check_splits(mdata, keys)
    img, rna = mdata.mod[keys["image_mod"]], mdata.mod[keys["rna_mod"]]
    sk = keys["sample_key"]
    img_samples = img.obs[sk].astype(str).to_numpy()
    rna_samples = rna.obs[sk].astype(str).to_numpy()
    train = rna.obs[keys["split_key"]].astype(str).to_numpy() == C.TRAIN
    all_names = pd.Index(sorted(set(img_samples)))
    if samples is None:
        names = all_names
    else:
        names = pd.Index([str(s) for s in samples])
        unknown = names[~names.isin(all_names)]
        if len(unknown):
            msg = f"samples {list(unknown[:5])} have no imaging cells in mdata.mod[{keys['image_mod']!r}]."
            raise ContractError(msg)
    if check_n_cells(n_cells_per_sample) == "match":
        counts = pd.Series(rna_samples).value_counts().reindex(names, fill_value=0).to_numpy()
    else:
        counts = np.full(len(names), int(n_cells_per_sample))

    train_names = pd.Index(sorted(set(rna_samples[train])))
    img_matrix, rna_matrix = rep_matrix(img, keys["image_rep"]), rep_matrix(rna, keys["rna_rep"])
    img_split = img.obs[keys["split_key"]].astype(str).to_numpy() if keys["split_key"] in img.obs else None
    img_fit = (
        np.flatnonzero(img_split == C.TRAIN)
        if img_split is not None
        else np.flatnonzero(np.isin(img_samples, train_names))
    )
    scaler = Standardizer.fit(img_matrix, img_fit)
    x_train = scaler.transform(
        group_means(img_matrix, train_names.get_indexer(img_samples), len(train_names))
    )
    train_rows = np.flatnonzero(train)
    train_codes = train_names.get_indexer(rna_samples[train_rows])
    rna_train = read_rows(rna_matrix, train_rows).astype(np.float64)
    y_means = np.zeros((len(train_names), rna_train.shape[1]))
    np.add.at(y_means, train_codes, rna_train)
    y_means /= np.bincount(train_codes, minlength=len(train_names))[:, None]
    residuals = rna_train - y_means[train_codes]
    ridge = RidgeCV(alphas=_RIDGE_ALPHAS).fit(x_train, y_means)
    x_new = scaler.transform(group_means(img_matrix, names.get_indexer(img_samples), len(names)))
    mean_pred = ridge.predict(x_new).reshape(len(names), -1)  # scikit-learn drops a single target column

    cell_sample = np.repeat(np.arange(len(names)), counts)
    cell_index = (
        np.concatenate([np.arange(c) for c in counts]) if len(counts) else np.zeros(0, dtype=np.int64)
    )
    hashes = sample_hashes(names)
    u = keyed_uniform(cell_keys(seed, Stream.RIDGE_RESIDUAL, hashes[cell_sample], cell_index), 1)[:, 0]
    pick = np.minimum((u * len(residuals)).astype(np.int64), len(residuals) - 1)
    values = (mean_pred[cell_sample] + residuals[pick]).astype(np.float32)

    obs = synthetic_obs(img, names, keys, cell_sample)
    obs.index = [f"{s}-synthetic-{i}" for s, i in zip(obs[sk].astype(str), cell_index, strict=True)]
    rep = keys["rna_rep"]
    var_names = (
        rna.var_names.astype(str) if rep is None else pd.Index([f"{rep}_{i}" for i in range(values.shape[1])])
    )
    adata = AnnData(X=values, obs=obs, var=pd.DataFrame(index=var_names))
    if rep is not None:
        adata.obsm[rep] = values.copy()
    return adata, {"ridge_alpha": float(ridge.alpha_), "n_train_samples": len(train_names)}
