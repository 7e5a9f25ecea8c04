"""``mm.tl.generate_morphology``: synthetic Cell Painting images or imaging embeddings, written into the MuData."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from .. import _constants as C
from .._core import featurize_smiles, read_rows, rep_matrix
from .._errors import ContractError, MorphomuError
from .._mudata import update
from .._uns import store
from .._validation import check_args, check_mudata, check_obs_keys, check_positive_int, check_rep, get_mod

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

    from ..models._phenoseq import PhenoSeq
    from ..models._trident import Trident

__all__ = ["EMBEDDING_DRUG_BITS", "generate_morphology"]

_OUTPUTS = ("image", "embedding")
#: Morgan (ECFP4) bits of the compound features appended to every RNA context cell (``output='embedding'``).
EMBEDDING_DRUG_BITS = 512
# modality / key names of the role-swapped PhenoSeq's private MuData
_CONTEXT, _TARGET, _CONTEXT_REP, _TARGET_REP = "context", "target", "X_context", "X_target"


def generate_morphology(
    mdata: MuData,
    *,
    model: Trident | PhenoSeq | None = None,
    preset: Literal["paper", "fast", "tiny"] = "fast",
    output: Literal["image", "embedding"] = "image",
    n_images_per_treatment: int = 16,
    compounds: Any = None,
    key_added: str = C.IMAGE_SYNTHETIC_MOD,
    seed: int = 0,
    train_kwargs: dict[str, Any] | None = None,
    image_mod: str = C.IMAGE_MOD,
    rna_mod: str = C.RNA_MOD,
    images_key: str = C.IMAGES_KEY,
    image_rep: str | None = C.IMAGE_REP,
    rna_rep: str | None | Literal["auto"] = "auto",
    treatment_key: str = C.TREATMENT_KEY,
    control: str = C.CONTROL,
    smiles_key: str = C.SMILES_KEY,
    round_key: str | None = C.ROUND_KEY,
    split_key: str = C.SPLIT_KEY,
    compound_split_key: str = C.COMPOUND_SPLIT_KEY,
    sample_key: str = C.SAMPLE_KEY,
    **generate_kwargs: Any,
) -> Trident | PhenoSeq | None:
    """Generate morphology for compounds and add it as a modality.

    ``output='image'`` generates Cell Painting tiles (all channels) with :class:`~morphomu.models.Trident`
    (RNA + compound -> morphology by latent diffusion): ``model``, or one set up and trained here at
    ``preset`` (on the ``train`` / ``val`` split of the ``id`` compounds when ``compound_split_key`` exists,
    see :func:`morphomu.pp.assign_compound_split`) and returned.

    ``output='embedding'`` generates imaging embeddings (``.obsm[image_rep]``, e.g. ViT features) with
    PhenoSeq's set-conditioned vector diffusion run the other way: the target is a cell's imaging
    embedding, the context a set of RNA cells of its sample (``rna_rep``, default ``X_scgpt``), each
    carrying its compound's Morgan fingerprint (:data:`EMBEDDING_DRUG_BITS` bits from ``smiles_key``),
    which the context encoder's input layer projects to the model width together with the cell's
    expression (so every context token holds the compound's embedding). Embeddings are generated per
    sample (a treated well) from its RNA cells, so compounds held out of training (``ood``) can be
    generated when their RNA was measured.

    Parameters
    ----------
    mdata
        The experiment.
    model
        A trained :class:`~morphomu.models.Trident` (``'image'``) or a PhenoSeq returned by an earlier
        ``output='embedding'`` call; its own setup keys are used. ``None`` trains one.
    preset
        Size of the model trained when ``model`` is ``None``.
    output
        ``'image'`` (tiles in ``.obsm[images_key]``) or ``'embedding'`` (``.obsm[image_rep]``).
    n_images_per_treatment
        ``'image'``: tiles per compound. ``'embedding'``: embeddings per sample (one treated well; a
        compound has one sample per replicate).
    compounds
        Compounds to generate for. ``'image'``: names (default every treated compound, ``ood`` included) or
        a mapping name -> SMILES for new structures (see :meth:`Trident.generate`). ``'embedding'``: names of
        treatments with RNA cells (default all).
    key_added
        Name of the modality written (replaced if present).
    seed
        Seed of generation (each tile / embedding depends only on the seed, its compound or sample and its
        index).
    train_kwargs
        Passed to the model's ``train`` when a model is trained here (e.g. ``max_epochs``).
    image_mod, rna_mod, images_key, image_rep, treatment_key, control, smiles_key, round_key, split_key, compound_split_key, sample_key
        Keys of the data (ignored when ``model`` is given: the model's are used). ``images_key`` is used by
        ``'image'``; ``image_rep`` and ``sample_key`` by ``'embedding'``.
    rna_rep
        RNA representation: ``'auto'`` means ``None`` for ``'image'`` (Trident's log-normalised highly
        variable genes of ``.X``) and ``'X_scgpt'`` for ``'embedding'``.
    **generate_kwargs
        Passed to :meth:`Trident.generate` (``rna``, ``n_steps``, ``guidance_scale``, ``batch_size``) or
        :meth:`PhenoSeq.generate` (``n_steps``, ``eta``, ``context``, ``guidance_scale``, ``batch_size``).

    Returns
    -------
    The model trained here (so it is not lost), else ``None``. Writes ``mdata.mod[key_added]`` (obs
    ``treatment``, ``smiles``, ``synthetic=True``, and for embeddings the sample's ``sample``, ``replicate``,
    ``round``, ``split``; obs_names prefixed with ``key_added``) and
    ``mdata.uns['morphomu']['generate_morphology']`` with the parameters.

    Examples
    --------
    >>> import morphomu as mm
    >>> mdata = mm.datasets.simulate_scgenescope(
    ...     n_img_cells=2000, n_rna_cells=2000, with_images=True, image_size=32
    ... )
    >>> mm.pp.assign_split(mdata)
    >>> mm.pp.assign_compound_split(mdata)
    >>> model = mm.tl.generate_morphology(mdata, preset="tiny", n_images_per_treatment=4)  # doctest: +SKIP
    >>> mdata["img_synthetic"].obsm["images"].shape  # doctest: +SKIP
    >>> mm.tl.generate_morphology(
    ...     mdata, output="embedding", preset="tiny", key_added="vit_synthetic"
    ... )  # doctest: +SKIP
    """
    check_mudata(mdata)
    if output not in _OUTPUTS:
        msg = f"output={output!r}: choose one of {list(_OUTPUTS)}."
        raise MorphomuError(msg)
    n_images_per_treatment = check_positive_int(n_images_per_treatment, "n_images_per_treatment")
    _check_kwargs(
        output, model=model, preset=preset, train_kwargs=train_kwargs, generate_kwargs=generate_kwargs
    )
    if not isinstance(key_added, str) or not key_added:
        msg = f"key_added must be a modality name (str), got {key_added!r}."
        raise MorphomuError(msg)
    if output == "image":
        result = _generate_images(
            mdata,
            model=model,
            preset=preset,
            n_images=int(n_images_per_treatment),
            compounds=compounds,
            key_added=key_added,
            seed=seed,
            train_kwargs=train_kwargs,
            keys={
                "image_mod": image_mod,
                "rna_mod": rna_mod,
                "images_key": images_key,
                "rna_rep": None if rna_rep == "auto" else rna_rep,
                "treatment_key": treatment_key,
                "control": control,
                "smiles_key": smiles_key,
                "round_key": round_key,
                "split_key": split_key,
                "compound_split_key": compound_split_key,
            },
            generate_kwargs=generate_kwargs,
        )
    else:
        result = _generate_embeddings(
            mdata,
            model=model,
            preset=preset,
            n_per_sample=int(n_images_per_treatment),
            compounds=compounds,
            key_added=key_added,
            seed=seed,
            train_kwargs=train_kwargs,
            keys={
                "image_mod": image_mod,
                "rna_mod": rna_mod,
                "image_rep": image_rep,
                "rna_rep": C.RNA_REP if rna_rep == "auto" else rna_rep,
                "sample_key": sample_key,
                "treatment_key": treatment_key,
                "control": control,
                "smiles_key": smiles_key,
                "round_key": round_key,
                "split_key": split_key,
                "compound_split_key": compound_split_key,
            },
            generate_kwargs=generate_kwargs,
        )
    adata, keys, trained_here, extra = result
    adata.obs_names = [f"{key_added}-{name}" for name in adata.obs_names]
    # write last
    mdata.mod[key_added] = adata
    update(mdata)
    params = {
        "output": output,
        "key_added": key_added,
        "n_images_per_treatment": int(n_images_per_treatment),
        "seed": int(seed),
        **keys,
        **{k: v for k, v in generate_kwargs.items() if isinstance(v, str | int | float | bool) or v is None},
    }
    if compounds is not None:
        params["compounds"] = [str(compounds)] if isinstance(compounds, str) else [str(c) for c in compounds]
    store(
        mdata,
        "generate_morphology",
        {
            "params": params,
            "n_generated": int(adata.n_obs),
            "trained_here": trained_here is not None,
            **extra,
        },
    )
    return trained_here


def _check_kwargs(
    output: str,
    *,
    model: Any,
    preset: str,
    train_kwargs: dict[str, Any] | None,
    generate_kwargs: dict[str, Any],
) -> None:
    """Check the arguments passed on to the model before anything is registered or trained.

    The model's own tables of checks (``TRAIN_CHECKS`` / ``GENERATE_CHECKS``) are run on the keyword
    arguments, so that e.g. a bad ``n_steps`` is refused before a model is trained here, not after.
    """
    if output == "image":
        from ..models._trident import GENERATE_CHECKS, TRAIN_CHECKS
        from ..module._trident import TRIDENT_PRESETS as presets
    else:
        from ..models._phenoseq import GENERATE_CHECKS, TRAIN_CHECKS
        from ..module._phenoseq import PHENOSEQ_PRESETS as presets
    check_args(generate_kwargs, GENERATE_CHECKS)
    if model is None:
        if preset not in presets:
            msg = f"preset={preset!r}: choose one of {sorted(presets)}."
            raise MorphomuError(msg)
        if train_kwargs is not None and not isinstance(train_kwargs, dict):
            msg = f"train_kwargs must be a dict of the model's train arguments or None, got {train_kwargs!r}."
            raise MorphomuError(msg)
        check_args(train_kwargs or {}, TRAIN_CHECKS)


# ---------------------------------------------------------------------------------------------------
# images: Trident
# ---------------------------------------------------------------------------------------------------
def _generate_images(
    mdata: MuData,
    *,
    model: Any,
    preset: str,
    n_images: int,
    compounds: Any,
    key_added: str,
    seed: int,
    train_kwargs: dict[str, Any] | None,
    keys: dict[str, Any],
    generate_kwargs: dict[str, Any],
) -> tuple[AnnData, dict[str, Any], Any, dict[str, Any]]:
    from ..models._trident import Trident

    if model is not None:
        if not isinstance(model, Trident):
            msg = f"output='image' needs a Trident model, got {type(model).__name__}."
            raise MorphomuError(msg)
        keys = {k: model.setup_args[k] for k in keys}
    if key_added in (keys["image_mod"], keys["rna_mod"]):
        msg = f"key_added={key_added!r} would replace an input modality; choose another name."
        raise MorphomuError(msg)
    trained_here = None
    if model is None:
        Trident.setup_mudata(mdata, **keys)  # checks everything before training
        model = Trident(mdata, preset=preset)
        model.train(**(train_kwargs or {}))
        trained_here = model
    adata = model.generate(compounds=compounds, n_images=n_images, seed=seed, **generate_kwargs)
    return adata, keys, trained_here, {"model": "Trident", "preset": model.preset}


# ---------------------------------------------------------------------------------------------------
# embeddings: PhenoSeq with the roles swapped (RNA set + compound -> imaging embedding)
# ---------------------------------------------------------------------------------------------------
def _compound_features(rna: AnnData, keys: dict[str, Any], *, mod: str) -> pd.DataFrame:
    """Morgan bits of every treatment of the RNA modality (the control: zeros), from ``smiles_key``."""
    check_obs_keys(rna, {"treatment_key": keys["treatment_key"]}, mod=mod)
    treat = rna.obs[keys["treatment_key"]].astype(str).to_numpy()
    if keys["smiles_key"] not in rna.obs.columns:
        msg = (
            f"smiles_key={keys['smiles_key']!r} is not a column of mdata.mod[{mod!r}].obs; the compounds are "
            "featurised from their SMILES."
        )
        raise ContractError(msg)
    table = pd.DataFrame({"t": treat, "s": rna.obs[keys["smiles_key"]].astype(object).to_numpy()})
    table = table[table["t"] != keys["control"]].dropna().drop_duplicates("t")
    smiles = dict(zip(table["t"], table["s"].astype(str), strict=True))
    missing = sorted(set(treat) - set(smiles) - {keys["control"]})
    if missing:
        msg = f"compounds {missing[:5]} have no SMILES in mdata.mod[{mod!r}].obs[{keys['smiles_key']!r}]."
        raise ContractError(msg)
    names = sorted(set(treat))
    return featurize_smiles(
        {n: smiles.get(n, "") for n in names}, n_bits=EMBEDDING_DRUG_BITS, controls=[keys["control"]]
    ).astype(np.float32)


def _role_swapped_data(mdata: MuData, keys: dict[str, Any], *, train: bool) -> MuData:
    """A private MuData: RNA cells (expression + compound bits) as context, imaging embeddings as target.

    Only the training compounds' (``id``) imaging cells of samples with RNA cells are targets; the
    context holds every RNA cell. Arrays are referenced where possible, never written back.
    """
    import anndata as ad
    import mudata as md

    img = get_mod(mdata, keys["image_mod"], arg="image_mod")
    rna = get_mod(mdata, keys["rna_mod"], arg="rna_mod")
    check_obs_keys(rna, {"sample_key": keys["sample_key"]}, mod=keys["rna_mod"])
    check_rep(rna, keys["rna_rep"], mod=keys["rna_mod"], arg="rna_rep")
    features = _compound_features(rna, keys, mod=keys["rna_mod"])
    treat = rna.obs[keys["treatment_key"]].astype(str).to_numpy()
    expression = read_rows(rep_matrix(rna, keys["rna_rep"]), np.arange(rna.n_obs))
    context_x = np.concatenate([expression, features.loc[treat].to_numpy()], axis=1)
    meta = [
        keys[k]
        for k in ("sample_key", "treatment_key", "smiles_key", "split_key")
        if keys[k] in rna.obs.columns
    ]
    meta += [k for k in (C.REPLICATE_KEY, keys["round_key"]) if k is not None and k in rna.obs.columns]
    context = ad.AnnData(obs=rna.obs[list(dict.fromkeys(meta))].copy(), obsm={_CONTEXT_REP: context_x})
    mods = {_CONTEXT: context}
    if train:
        check_obs_keys(
            img,
            {"sample_key": keys["sample_key"], "treatment_key": keys["treatment_key"]},
            mod=keys["image_mod"],
        )
        check_rep(img, keys["image_rep"], mod=keys["image_mod"], arg="image_rep")
        keep = np.isin(
            img.obs[keys["sample_key"]].astype(str).to_numpy(), context.obs[keys["sample_key"]].astype(str)
        )
        if keys["compound_split_key"] in img.obs.columns:
            keep &= img.obs[keys["compound_split_key"]].astype(str).to_numpy() == C.COMPOUND_SPLITS[0]
        rows = np.flatnonzero(keep)
        if rows.size == 0:
            msg = (
                f"mdata.mod[{keys['image_mod']!r}] has no imaging cells of in-distribution compounds in samples with "
                f"RNA cells (obs[{keys['sample_key']!r}]) to train on."
            )
            raise ContractError(msg)
        cols = [
            k for k in (keys["sample_key"], keys["treatment_key"], keys["split_key"]) if k in img.obs.columns
        ]
        target = ad.AnnData(
            obs=img.obs.iloc[rows][list(dict.fromkeys(cols))].copy(),
            obsm={_TARGET_REP: read_rows(rep_matrix(img, keys["image_rep"]), rows)},
        )
        mods[_TARGET] = target
    return md.MuData(mods)


def _generate_embeddings(
    mdata: MuData,
    *,
    model: Any,
    preset: str,
    n_per_sample: int,
    compounds: Any,
    key_added: str,
    seed: int,
    train_kwargs: dict[str, Any] | None,
    keys: dict[str, Any],
    generate_kwargs: dict[str, Any],
) -> tuple[AnnData, dict[str, Any], Any, dict[str, Any]]:
    from anndata import AnnData

    from ..models._phenoseq import PhenoSeq

    if model is not None:
        if not isinstance(model, PhenoSeq) or not hasattr(model, "morphology_setup_"):
            msg = (
                "output='embedding' needs the PhenoSeq returned by an earlier generate_morphology(output='embedding') "
                f"call, got {type(model).__name__}."
            )
            raise MorphomuError(msg)
        keys = dict(model.morphology_setup_)
    if key_added in (keys["image_mod"], keys["rna_mod"]):
        msg = f"key_added={key_added!r} would replace an input modality; choose another name."
        raise MorphomuError(msg)
    data = _role_swapped_data(mdata, keys, train=model is None)
    context = data.mod[_CONTEXT]
    samples_all = context.obs[keys["sample_key"]].astype(str)
    if compounds is None:
        samples = sorted(samples_all.unique())
    else:
        names = [compounds] if isinstance(compounds, str) else [str(c) for c in compounds]
        treat = context.obs[keys["treatment_key"]].astype(str)
        unknown = sorted(set(names) - set(treat))
        if unknown:
            msg = (
                f"compounds {unknown[:5]} have no RNA cells in mdata.mod[{keys['rna_mod']!r}] "
                f"(obs[{keys['treatment_key']!r}]); output='embedding' generates from a sample's RNA cells."
            )
            raise ContractError(msg)
        samples = sorted(samples_all[treat.isin(names)].unique())
    trained_here = None
    if model is None:
        if keys["split_key"] not in data.mod[_TARGET].obs.columns:
            msg = (
                f"split_key={keys['split_key']!r} is not a column of mdata.mod[{keys['image_mod']!r}].obs; training "
                "needs 'train' and 'val' imaging cells. Run mm.pp.assign_split first."
            )
            raise ContractError(msg)
        found = set(data.mod[_TARGET].obs[keys["split_key"]].astype(str))
        if not {C.TRAIN, C.VAL} <= found:
            msg = (
                f"mdata.mod[{keys['image_mod']!r}].obs[{keys['split_key']!r}] has no {sorted({C.TRAIN, C.VAL} - found)} "
                "cells of in-distribution compounds; training needs 'train' and 'val'."
            )
            raise ContractError(msg)
        PhenoSeq.setup_mudata(
            data,
            image_mod=_CONTEXT,
            rna_mod=_TARGET,
            image_rep=_CONTEXT_REP,
            rna_rep=_TARGET_REP,
            sample_key=keys["sample_key"],
            treatment_key=keys["treatment_key"],
            round_key=keys["round_key"] or C.ROUND_KEY,
            split_key=keys["split_key"],
        )
        model = PhenoSeq(data, preset=preset)
        model.train(**(train_kwargs or {}))
        model.morphology_setup_ = dict(keys)  # saved with the model (scvi-tools keeps attributes ending in _)
        trained_here = model
    generated = model.generate(
        data, samples=samples, n_cells_per_sample=n_per_sample, seed=seed, **generate_kwargs
    )
    values = np.asarray(generated.obsm[_TARGET_REP], dtype=np.float32)
    rep = keys["image_rep"]
    img = mdata.mod[keys["image_mod"]]
    var_names = (
        img.var_names.astype(str) if rep is None else pd.Index([f"{rep}_{i}" for i in range(values.shape[1])])
    )
    obs = generated.obs.copy()
    smiles = context.obs.drop_duplicates(keys["sample_key"]).set_index(keys["sample_key"])
    if keys["smiles_key"] in smiles.columns:
        obs[keys["smiles_key"]] = pd.Categorical(
            smiles[keys["smiles_key"]].reindex(obs[keys["sample_key"]].astype(str)).astype(str).to_numpy()
        )
    adata = AnnData(X=values, obs=obs, var=pd.DataFrame(index=var_names))
    if rep is not None:
        adata.obsm[rep] = values.copy()
    extra = {
        "model": "PhenoSeq (RNA + compound -> imaging)",
        "preset": model.preset,
        "n_samples": len(samples),
    }
    return adata, keys, trained_here, extra
