"""MorphologyEmbedder: RNA cells + compound -> imaging embeddings, PhenoSeq's diffusion run the other way."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from .. import _constants as C
from .._core import check_precision, featurize_smiles, read_rows, rep_matrix
from .._errors import ContractError, MorphomuError
from .._validation import (
    check_args,
    check_mudata,
    check_obs_keys,
    check_positive_int,
    check_rep,
    check_unique_obs_names,
    get_mod,
)
from ..module._diffusion import DEFAULT_N_STEPS, DEFAULT_SAMPLER
from ..pp._split import SPLIT_REMEDY
from ._base import feature_field, n_registered_columns
from ._phenoseq import PhenoSeq
from ._phenoseq_checks import GENERATE_CHECKS, check_context_cells

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

__all__ = ["EMBEDDING_DRUG_BITS", "MorphologyEmbedder", "generation_samples"]

#: Morgan (ECFP4) bits of the compound features appended to every RNA context cell.
EMBEDDING_DRUG_BITS = 512
# registry fields, on the user's data: the RNA cells (context) and the imaging cells (target)
_RNA_FIELD, _IMAGE_FIELD = "rna", "image"
# modality / key names of the role-swapped MuData the diffusion reads (built internally, never the user's)
_CONTEXT, _TARGET, _CONTEXT_REP, _TARGET_REP = "context", "target", "X_context", "X_target"


def _paired_keys(keys: dict[str, Any]) -> dict[str, Any]:
    """PhenoSeq's keys of the role-swapped MuData built from data set up with ``keys``."""
    return {
        "image_mod": _CONTEXT,
        "rna_mod": _TARGET,
        "image_rep": _CONTEXT_REP,
        "rna_rep": _TARGET_REP,
        "sample_key": keys["sample_key"],
        "treatment_key": keys["treatment_key"],
        "replicate_key": C.REPLICATE_KEY,
        "round_key": keys["round_key"] or C.ROUND_KEY,
        "split_key": keys["split_key"],
    }


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


def _check_rna(rna: AnnData, keys: dict[str, Any], *, n_rna: int | None) -> None:
    """Checks of the RNA modality (the context): cells, keys, representation, one treatment per sample."""
    check_context_cells(
        rna,
        mod=keys["rna_mod"],
        rep=keys["rna_rep"],
        rep_arg="rna_rep",
        sample_key=keys["sample_key"],
        treatment_key=keys["treatment_key"],
        n_features=n_rna,
    )


def _target_rows(img: AnnData, rna: AnnData, keys: dict[str, Any]) -> np.ndarray:
    """Rows of the imaging cells trained on: ``id`` compounds (when marked) in samples with RNA cells."""
    keep = np.isin(
        img.obs[keys["sample_key"]].astype(str).to_numpy(), rna.obs[keys["sample_key"]].astype(str)
    )
    if keys["compound_split_key"] in img.obs.columns:
        keep &= img.obs[keys["compound_split_key"]].astype(str).to_numpy() == C.COMPOUND_SPLITS[0]
    return np.flatnonzero(keep)


def _check_training_data(mdata: MuData, keys: dict[str, Any]) -> None:
    """What training needs besides setup: imaging cells of trained compounds, in ``train`` and ``val``."""
    img, rna = mdata.mod[keys["image_mod"]], mdata.mod[keys["rna_mod"]]
    rows = _target_rows(img, rna, keys)
    if rows.size == 0:
        msg = (
            f"mdata.mod[{keys['image_mod']!r}] has no imaging cells of in-distribution compounds in samples "
            f"with RNA cells (obs[{keys['sample_key']!r}]) to train on."
        )
        raise ContractError(msg)
    split_key = keys["split_key"]
    if split_key not in img.obs.columns:
        msg = (
            f"split_key={split_key!r} is not a column of mdata.mod[{keys['image_mod']!r}].obs; training "
            f"needs 'train' and 'val' imaging cells. {SPLIT_REMEDY}"
        )
        raise ContractError(msg)
    found = set(img.obs[split_key].iloc[rows].astype(str))
    if not {C.TRAIN, C.VAL} <= found:
        msg = (
            f"mdata.mod[{keys['image_mod']!r}].obs[{split_key!r}] has no {sorted({C.TRAIN, C.VAL} - found)} "
            "cells of in-distribution compounds; training needs 'train' and 'val'."
        )
        raise ContractError(msg)
    # the RNA context is standardised with its train cells when the RNA modality has a split
    if split_key in rna.obs.columns and not (rna.obs[split_key].astype(str) == C.TRAIN).any():
        msg = (
            f"mdata.mod[{keys['rna_mod']!r}].obs[{split_key!r}] has no 'train' cells to standardise the RNA "
            f"context with. {SPLIT_REMEDY}"
        )
        raise ContractError(msg)


def _role_swapped_data(
    mdata: MuData, keys: dict[str, Any], *, targets: bool, n_rna: int | None = None
) -> MuData:
    """A new MuData for PhenoSeq's diffusion: RNA cells (expression + compound bits) as context.

    The context holds every RNA cell of ``mdata`` (``keys`` as given to
    :meth:`MorphologyEmbedder.setup_mudata`); with ``targets``, the target holds the imaging cells of
    training compounds (``id``) in samples with RNA cells. Its keys are :func:`_paired_keys`; ``mdata`` is
    checked (``n_rna``: the RNA features a trained model expects) and never modified.
    """
    import anndata as ad
    import mudata as md

    img = get_mod(mdata, keys["image_mod"], arg="image_mod") if targets else None
    rna = get_mod(mdata, keys["rna_mod"], arg="rna_mod")
    _check_rna(rna, keys, n_rna=n_rna)
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
    if img is not None:
        rows = _target_rows(img, rna, keys)
        cols = [
            k for k in (keys["sample_key"], keys["treatment_key"], keys["split_key"]) if k in img.obs.columns
        ]
        mods[_TARGET] = ad.AnnData(
            obs=img.obs.iloc[rows][list(dict.fromkeys(cols))].copy(),
            obsm={_TARGET_REP: read_rows(rep_matrix(img, keys["image_rep"]), rows)},
        )
    return md.MuData(mods)


def generation_samples(
    mdata: MuData, keys: dict[str, Any], *, samples: Any = None, compounds: Any = None
) -> list[str]:
    """The samples :meth:`MorphologyEmbedder.generate` generates for, checked against the RNA modality.

    ``samples`` as given, else the samples of ``compounds`` (sorted), else every sample with RNA cells
    (sorted); ``keys`` are the setup keys. Tools call it to refuse unknown names before training.
    """
    rna = get_mod(mdata, keys["rna_mod"], arg="rna_mod")
    check_obs_keys(
        rna, {"sample_key": keys["sample_key"], "treatment_key": keys["treatment_key"]}, mod=keys["rna_mod"]
    )
    sample_of = rna.obs[keys["sample_key"]].astype(str)
    if samples is not None and compounds is not None:
        msg = "pass samples or compounds, not both."
        raise MorphomuError(msg)
    if samples is not None:
        names = [samples] if isinstance(samples, str) else [str(s) for s in samples]
        unknown = [s for s in names if s not in set(sample_of)]
        if unknown:
            msg = (
                f"samples {unknown[:5]} have no RNA cells in mdata.mod[{keys['rna_mod']!r}] "
                f"(obs[{keys['sample_key']!r}]); embeddings are generated from a sample's RNA cells."
            )
            raise ContractError(msg)
        return names
    if compounds is None:
        return sorted(sample_of.unique())
    names = [compounds] if isinstance(compounds, str) else [str(c) for c in compounds]
    treat = rna.obs[keys["treatment_key"]].astype(str)
    unknown = sorted(set(names) - set(treat))
    if unknown:
        msg = (
            f"compounds {unknown[:5]} have no RNA cells in mdata.mod[{keys['rna_mod']!r}] "
            f"(obs[{keys['treatment_key']!r}]); embeddings are generated from a sample's RNA cells."
        )
        raise ContractError(msg)
    return sorted(sample_of[treat.isin(names)].unique())


class MorphologyEmbedder(PhenoSeq):
    """Generate imaging embeddings (e.g. ViT features) from a sample's RNA cells and its compound.

    :class:`~morphomu.models.PhenoSeq`'s set-conditioned vector diffusion (the same module, data module
    and training plan) run the other way: the target is one imaging cell's embedding (``image_rep``), the
    context a set of RNA cells of its sample (``rna_rep``, e.g. scGPT), each carrying its compound's
    Morgan fingerprint (:data:`EMBEDDING_DRUG_BITS` bits from ``smiles_key``), which the context
    encoder's input layer projects to the model width together with the cell's expression. Embeddings
    are generated per sample (a treated well) from its RNA cells, so compounds held out of training
    (``ood`` in ``compound_split_key``) can be generated when their RNA was measured.

    The model reads the data under the keys given to :meth:`setup_mudata` and builds the role-swapped
    inputs itself; nothing is written into the MuData beyond scvi-tools' registration.

    Parameters
    ----------
    mdata
        MuData registered with :meth:`setup_mudata`.
    preset
        ``'fast'`` (default: CPU-sized), ``'paper'`` (PhenoSeq's paper sizes, for a GPU) or ``'tiny'``
        (tests). It chooses the network sizes and the training regime (:meth:`train`'s defaults,
        ``prediction_type``); the sizes below override the network's one by one and leave the training
        regime the preset's (kept in ``model.preset``).
    n_hidden
        Model width ``d``.
    n_layers
        Denoiser blocks.
    n_heads
        Cross-attention heads.
    n_encoder_layers
        Self-attention layers of the RNA context encoder.
    n_encoder_heads
        Heads of the context encoder.
    n_time
        Size of the time embedding.
    ff_mult
        Feed-forward expansion.
    dropout
        Dropout in attention outputs and feed-forward layers.
    n_context_cells
        RNA cells per training item.
    p_uncond
        Probability of replacing an item's context with a learned null context during training; > 0
        enables classifier-free guidance (``guidance_scale`` in :meth:`generate`).
    prediction_type
        ``'epsilon'`` or ``'v_prediction'`` (default: the preset's).

    Examples
    --------
    >>> import morphomu as mm
    >>> mdata = mm.datasets.simulate_scgenescope(n_img_cells=2000, n_rna_cells=2000)
    >>> mm.pp.assign_split(mdata)
    >>> mm.pp.assign_compound_split(mdata)
    >>> mm.models.MorphologyEmbedder.setup_mudata(mdata)
    >>> model = mm.models.MorphologyEmbedder(mdata, preset="tiny")
    >>> model.train(max_epochs=5)  # doctest: +SKIP
    >>> synthetic = model.generate(compounds=["Colchicine"])  # doctest: +SKIP
    """

    def __init__(
        self,
        mdata: MuData,
        *,
        preset: Literal["paper", "fast", "tiny"] = "fast",
        n_hidden: int | None = None,
        n_layers: int | None = None,
        n_heads: int | None = None,
        n_encoder_layers: int | None = None,
        n_encoder_heads: int | None = None,
        n_time: int | None = None,
        ff_mult: int | None = None,
        dropout: float | None = None,
        n_context_cells: int | None = None,
        p_uncond: float = 0.0,
        prediction_type: Literal["epsilon", "v_prediction"] | None = None,
    ) -> None:
        super().__init__(
            mdata,
            preset=preset,
            n_hidden=n_hidden,
            n_layers=n_layers,
            n_heads=n_heads,
            n_encoder_layers=n_encoder_layers,
            n_encoder_heads=n_encoder_heads,
            n_time=n_time,
            ff_mult=ff_mult,
            dropout=dropout,
            n_context_cells=n_context_cells,
            p_uncond=p_uncond,
            prediction_type=prediction_type,
        )
        n_rna, n_image = self._registered_features()
        self._model_summary_string = (
            f"MorphologyEmbedder ({preset} preset) with {sum(p.numel() for p in self.module.parameters()):,} "
            f"parameters: {n_rna} RNA + {EMBEDDING_DRUG_BITS} compound -> {n_image} imaging features, "
            + ", ".join(f"{k}={v}" for k, v in self.sizes.items())
            + f", p_uncond={self.p_uncond}."
        )

    # ------------------------------------------------------------------ setup
    @classmethod
    def setup_mudata(
        cls,
        mdata: MuData,
        *,
        image_mod: str = C.IMAGE_MOD,
        rna_mod: str = C.RNA_MOD,
        image_rep: str | None = C.IMAGE_REP,
        rna_rep: str | None = C.RNA_REP,
        sample_key: str = C.SAMPLE_KEY,
        treatment_key: str = C.TREATMENT_KEY,
        control: str = C.CONTROL,
        smiles_key: str = C.SMILES_KEY,
        round_key: str | None = C.ROUND_KEY,
        split_key: str = C.SPLIT_KEY,
        compound_split_key: str = C.COMPOUND_SPLIT_KEY,
        **kwargs: Any,
    ) -> None:
        """Register a MuData of imaging and RNA cells of compound-treated samples (paired by sample).

        Checks everything before writing anything: both modalities and representations exist and are
        finite, the sample and treatment columns exist, each RNA sample is one treatment, every treated
        compound has a parseable SMILES, obs names are unique and (when loading a saved model) the
        feature dimensions match the trained ones. What training needs besides (``train`` / ``val``
        imaging cells of trained compounds) is checked by :meth:`train`.

        Parameters
        ----------
        mdata
            The experiment.
        image_mod
            Imaging modality (the target).
        rna_mod
            RNA modality (the context).
        image_rep
            ``.obsm`` key of the imaging embeddings to generate, or ``None`` for ``.X``.
        rna_rep
            ``.obsm`` key of the RNA embeddings, or ``None`` for ``.X``.
        sample_key
            obs column (both modalities) pairing the modalities (one treated well / replicate unit).
        treatment_key
            obs column (both modalities) with the compound name.
        control
            The control treatment (vehicle): its compound features are zeros.
        smiles_key
            obs column of the RNA modality with each compound's SMILES.
        round_key
            obs column with the experimental round (copied to generated cells when present); ``None`` for
            none.
        split_key
            obs column with the split labels; training needs ``train`` and ``val`` imaging cells.
        compound_split_key
            obs column of the imaging modality marking compounds ``id`` (trained on) or ``ood`` (held out,
            :func:`morphomu.pp.assign_compound_split`); when absent every compound is trained on.
        **kwargs
            Passed to scvi-tools' registration (``source_registry`` when loading).
        """
        setup_method_args = cls._get_setup_method_args(**locals())
        keys = setup_method_args["setup_args"]
        source = kwargs.get("source_registry")
        n_rna = n_image = None
        if source is not None:
            n_rna = n_registered_columns(source, _RNA_FIELD)
            n_image = n_registered_columns(source, _IMAGE_FIELD)
        check_mudata(mdata)
        img = get_mod(mdata, image_mod, arg="image_mod")
        rna = get_mod(mdata, rna_mod, arg="rna_mod")
        _check_rna(rna, keys, n_rna=n_rna)
        _compound_features(rna, keys, mod=rna_mod)  # every compound has a parseable SMILES
        if img.n_obs == 0:
            msg = f"mdata.mod[{image_mod!r}] has no cells."
            raise ContractError(msg)
        check_obs_keys(img, {"sample_key": sample_key, "treatment_key": treatment_key}, mod=image_mod)
        check_rep(img, image_rep, mod=image_mod, arg="image_rep", n_features=n_image)
        check_unique_obs_names(mdata, mods=(image_mod, rna_mod))

        cls._register_mudata(
            mdata,
            [
                feature_field(_RNA_FIELD, rna_rep, rna_mod),
                feature_field(_IMAGE_FIELD, image_rep, image_mod),
            ],
            setup_method_args,
            **kwargs,
        )

    @classmethod
    def setup_anndata(cls, *args: Any, **kwargs: Any) -> None:
        """Not available: MorphologyEmbedder needs a MuData with an imaging and an RNA modality."""
        msg = (
            "MorphologyEmbedder pairs RNA and imaging cells by sample: use "
            "MorphologyEmbedder.setup_mudata(mdata, ...)."
        )
        raise MorphomuError(msg)

    def _registered_features(self) -> tuple[int, int]:
        """RNA and imaging features of the data the model was set up on."""
        registry = self.registry_
        return n_registered_columns(registry, _RNA_FIELD), n_registered_columns(registry, _IMAGE_FIELD)

    def _n_features(self) -> tuple[int, int]:
        n_rna, n_image = self._registered_features()
        return n_rna + EMBEDDING_DRUG_BITS, n_image  # PhenoSeq's (context, target)

    def _paired_data(self, mdata: MuData | None = None) -> tuple[MuData, dict[str, Any]]:
        """Training (``mdata=None``): the role-swapped data of the model's MuData; generation: ``mdata``.

        :meth:`generate` passes the role-swapped data it built from the user's MuData.
        """
        if mdata is None:
            mdata = _role_swapped_data(self.adata, self.setup_args, targets=True)
        return mdata, _paired_keys(self.setup_args)

    # ------------------------------------------------------------------ training
    def _train_args(self, args: dict[str, Any]) -> dict[str, Any]:
        args = super()._train_args(args)
        _check_training_data(self.adata, self.setup_args)
        return args

    # ------------------------------------------------------------------ generation
    def generate(
        self,
        mdata: MuData | None = None,
        *,
        samples: Sequence[str] | None = None,
        compounds: Sequence[str] | None = None,
        n_cells_per_sample: int = 16,
        n_steps: int = DEFAULT_N_STEPS["phenoseq"],
        sampler: Literal["ddim", "dpmsolver++", "unipc"] = DEFAULT_SAMPLER["phenoseq"],
        eta: float = 0.0,
        context: Literal["mean", "set"] = "mean",
        guidance_scale: float = 1.0,
        seed: int = 0,
        batch_size: int = 1024,
        precision: str = "auto",
    ) -> AnnData:
        """Generate imaging embeddings per sample from its RNA cells and its compound (reverse diffusion).

        Parameters
        ----------
        mdata
            Data with the RNA modality under the keys given to :meth:`setup_mudata` (its compounds may be
            new, with their SMILES); default the model's own. Never modified.
        samples
            Samples (with RNA cells) to generate for, in this order.
        compounds
            Treatments with RNA cells to generate for (each of their samples, sorted); not with
            ``samples``. Default (neither): every sample with RNA cells, sorted.
        n_cells_per_sample
            Embeddings per sample.
        n_steps
            Denoising steps (network evaluations; twice that with guidance).
        sampler
            ``'ddim'``, ``'dpmsolver++'`` or ``'unipc'``, with PhenoSeq's defaults (see
            :meth:`PhenoSeq.generate <morphomu.models.PhenoSeq.generate>`); ``sampler='ddim', n_steps=50``
            is the papers' protocol.
        eta
            DDIM stochasticity; 0 is deterministic DDIM. Only for ``sampler='ddim'``.
        context
            ``'mean'``: one context token, the mean of all the sample's RNA cells; ``'set'``: each
            generated cell is conditioned on its own random set of ``n_context_cells`` RNA cells of the
            sample (as in training).
        guidance_scale
            Classifier-free guidance scale; needs a model trained with ``p_uncond > 0``.
        seed
            Each embedding's noise (and context set) is derived from ``(seed, sample, cell index)``.
        batch_size
            Cells denoised together.
        precision
            ``'auto'`` (default): bf16 autocast where the device computes in bf16 fast (as in :meth:`train`),
            else float32; or ``'32-true'``, ``'bf16-mixed'``, ``'16-mixed'``. The output is float32.

        Returns
        -------
        AnnData with one row per generated cell (obs names ``{sample}-synthetic-{i}``): ``.obsm[image_rep]``
        and ``.X`` (the same matrix, raw units of ``image_rep``; only ``.X`` when ``image_rep`` is
        ``None``), obs ``sample``, ``treatment``, ``replicate``, ``round``, ``split`` (those present in the
        RNA modality), ``synthetic=True`` and the compound's SMILES (``smiles_key``).
        """
        from anndata import AnnData

        n_cells_per_sample = check_positive_int(n_cells_per_sample, "n_cells_per_sample")
        check_args(
            {
                "n_steps": n_steps,
                "sampler": sampler,
                "eta": eta,
                "guidance_scale": guidance_scale,
                "batch_size": batch_size,
            },
            GENERATE_CHECKS,
        )
        check_precision(precision)
        if not self.is_trained_:
            msg = "the model is not trained; call model.train() first (or load a trained MorphologyEmbedder)."
            raise MorphomuError(msg)
        keys = self.setup_args
        mdata = self.adata if mdata is None else mdata
        n_rna, n_image = self._registered_features()
        names = generation_samples(mdata, keys, samples=samples, compounds=compounds)
        data = _role_swapped_data(mdata, keys, targets=False, n_rna=n_rna)
        generated = super().generate(
            data,
            samples=names,
            n_cells_per_sample=n_cells_per_sample,
            n_steps=n_steps,
            sampler=sampler,
            eta=eta,
            context=context,
            guidance_scale=guidance_scale,
            seed=seed,
            batch_size=batch_size,
            precision=precision,
        )
        values = np.asarray(generated.obsm[_TARGET_REP], dtype=np.float32)
        rep = keys["image_rep"]
        var_names = (
            pd.Index(
                np.asarray(self.registry_["field_registries"][_IMAGE_FIELD]["state_registry"]["column_names"])
            )
            if rep is None
            else pd.Index([f"{rep}_{i}" for i in range(n_image)])
        ).astype(str)
        obs = generated.obs.copy()
        sample_key, smiles_key = keys["sample_key"], keys["smiles_key"]
        smiles = data.mod[_CONTEXT].obs.drop_duplicates(sample_key).set_index(sample_key)[smiles_key]
        obs[smiles_key] = pd.Categorical(smiles.reindex(obs[sample_key].astype(str)).astype(str).to_numpy())
        adata = AnnData(X=values, obs=obs, var=pd.DataFrame(index=var_names))
        if rep is not None:
            adata.obsm[rep] = values.copy()
        record = generated.uns[C.UNS_KEY]["generate"]  # n_steps, sampler, seed, ... as PhenoSeq's
        adata.uns[C.UNS_KEY] = {"generate": {**record, "model": "MorphologyEmbedder"}}
        return adata
