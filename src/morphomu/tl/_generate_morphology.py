"""``mm.tl.generate_morphology``: synthetic Cell Painting images or imaging embeddings, written into the MuData."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Literal

from .. import _constants as C
from .._errors import MorphomuError
from .._uns import store
from .._validation import check_mudata, check_positive_int
from ._model_tools import (
    check_key_added,
    check_model_kwargs,
    plain_params,
    precision_record,
    uns_restored_on_error,
    write_modality,
)

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

    from ..models._morphology_embedder import MorphologyEmbedder
    from ..models._trident import Trident

__all__ = ["generate_morphology"]

_OUTPUTS = ("image", "embedding")
# the data keys each output's model is set up with
_IMAGE_KEYS = (
    "image_mod",
    "rna_mod",
    "images_key",
    "rna_rep",
    "treatment_key",
    "control",
    "smiles_key",
    "round_key",
    "split_key",
    "compound_split_key",
)
_EMBEDDING_KEYS = (
    "image_mod",
    "rna_mod",
    "image_rep",
    "rna_rep",
    "sample_key",
    "treatment_key",
    "control",
    "smiles_key",
    "round_key",
    "split_key",
    "compound_split_key",
)


def generate_morphology(
    mdata: MuData,
    *,
    model: Trident | MorphologyEmbedder | None = None,
    preset: Literal["paper", "fast", "tiny"] = "fast",
    output: Literal["image", "embedding"] = "image",
    n_images_per_treatment: int | None = None,
    n_cells_per_sample: int | None = None,
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
) -> Trident | MorphologyEmbedder | None:
    """Generate morphology for compounds and add it as a modality.

    ``output='image'`` generates Cell Painting tiles (all channels) with :class:`~morphomu.models.Trident`
    (RNA + compound -> morphology by latent diffusion): ``model``, or one set up and trained here at
    ``preset`` (on the ``train`` / ``val`` split of the ``id`` compounds when ``compound_split_key`` exists,
    see :func:`morphomu.pp.assign_compound_split`) and returned.

    ``output='embedding'`` generates imaging embeddings (``.obsm[image_rep]``, e.g. ViT features) with
    :class:`~morphomu.models.MorphologyEmbedder` (PhenoSeq's set-conditioned vector diffusion run the
    other way: a sample's RNA cells, ``rna_rep`` (default ``X_scgpt``), each with its compound's Morgan
    fingerprint from ``smiles_key``, condition the imaging embedding): ``model``, or one set up and
    trained here at ``preset`` and returned. Embeddings are generated per sample (a treated well) from its
    RNA cells, so compounds held out of training (``ood``) can be generated when their RNA was measured.

    Parameters
    ----------
    mdata
        The experiment.
    model
        A trained :class:`~morphomu.models.Trident` (``'image'``) or
        :class:`~morphomu.models.MorphologyEmbedder` (``'embedding'``); its own setup keys are used.
        ``None`` trains one.
    preset
        Size of the model trained when ``model`` is ``None``.
    output
        ``'image'`` (tiles in ``.obsm[images_key]``) or ``'embedding'`` (``.obsm[image_rep]``).
    n_images_per_treatment
        ``'image'``: tiles per compound (default 16).
    n_cells_per_sample
        ``'embedding'``: embeddings per sample (one treated well; a compound has one sample per
        replicate; default 16).
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
        Passed to :meth:`Trident.generate` (``rna``, ``n_steps``, ``sampler``, ``guidance_scale``,
        ``batch_size``) or :meth:`MorphologyEmbedder.generate` (``n_steps``, ``sampler``, ``eta``,
        ``context``, ``guidance_scale``, ``batch_size``); ``sampler='ddim', n_steps=50`` is the papers'
        protocol.

    Returns
    -------
    The model trained here (so it is not lost), else ``None``. Writes ``mdata.mod[key_added]`` (obs
    ``treatment``, ``smiles``, ``synthetic=True``, and for embeddings the sample's ``sample``, ``replicate``,
    ``round``, ``split``; obs_names prefixed with ``key_added``) and
    ``mdata.uns['morphomu'][key_added]`` with the parameters.

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
    n_per_unit, count_arg = _count(output, n_images_per_treatment, n_cells_per_sample)
    from ..models import MorphologyEmbedder, Trident

    # the model's own checks, so that e.g. a bad n_steps is refused before a model is trained here
    check_model_kwargs(
        Trident if output == "image" else MorphologyEmbedder,
        model=model,
        preset=preset,
        train_kwargs=train_kwargs,
        generate_kwargs=generate_kwargs,
    )
    given = {
        "image_mod": image_mod,
        "rna_mod": rna_mod,
        "images_key": images_key,
        "image_rep": image_rep,
        "rna_rep": rna_rep,
        "sample_key": sample_key,
        "treatment_key": treatment_key,
        "control": control,
        "smiles_key": smiles_key,
        "round_key": round_key,
        "split_key": split_key,
        "compound_split_key": compound_split_key,
    }
    generate = _generate_images if output == "image" else _generate_embeddings
    adata, keys, trained_here, extra = generate(
        mdata,
        model=model,
        preset=preset,
        n_per_unit=n_per_unit,
        compounds=compounds,
        key_added=key_added,
        seed=seed,
        train_kwargs=train_kwargs,
        given=given,
        generate_kwargs=generate_kwargs,
    )
    write_modality(mdata, adata, key_added)  # last
    params = {
        "output": output,
        "key_added": key_added,
        count_arg: n_per_unit,
        "seed": int(seed),
        **keys,
        **plain_params(generate_kwargs),
    }
    if compounds is not None:
        params["compounds"] = [str(compounds)] if isinstance(compounds, str) else [str(c) for c in compounds]
    store(
        mdata,
        key_added,
        {
            "params": params,
            "n_generated": int(adata.n_obs),
            "trained_here": trained_here is not None,
            **extra,
            **precision_record(model if trained_here is None else trained_here, generate_kwargs),
        },
        tool="generate_morphology",
    )
    return trained_here


# ---------------------------------------------------------------------------------------------------
# images: Trident
# ---------------------------------------------------------------------------------------------------
def _generate_images(
    mdata: MuData,
    *,
    model: Any,
    preset: str,
    n_per_unit: int,
    compounds: Any,
    key_added: str,
    seed: int,
    train_kwargs: dict[str, Any] | None,
    given: dict[str, Any],
    generate_kwargs: dict[str, Any],
) -> tuple[AnnData, dict[str, Any], Any, dict[str, Any]]:
    from ..models._trident import Trident

    keys = {k: given[k] for k in _IMAGE_KEYS}
    keys["rna_rep"] = None if keys["rna_rep"] == "auto" else keys["rna_rep"]
    if model is not None:
        if not isinstance(model, Trident):
            msg = f"output='image' needs a Trident model, got {type(model).__name__}."
            raise MorphomuError(msg)
        keys = {k: model.setup_args[k] for k in keys}
    check_key_added(key_added, keys, ("image_mod", "rna_mod"))
    trained_here = None
    if model is None:
        with uns_restored_on_error(mdata):
            Trident.setup_mudata(mdata, **keys)  # checks everything before training
            model = Trident(mdata, preset=preset)
            model.train(**(train_kwargs or {}))
        trained_here = model
    adata = model.generate(compounds=compounds, n_images=n_per_unit, seed=seed, **generate_kwargs)
    return adata, keys, trained_here, {"model": "Trident", "preset": model.preset}


def _count(
    output: str, n_images_per_treatment: int | None, n_cells_per_sample: int | None
) -> tuple[int, str]:
    """How many to generate per unit, and the argument that says it (the one fitting ``output``)."""
    if output == "image":
        if n_cells_per_sample is not None:
            msg = "n_cells_per_sample is for output='embedding'; output='image' takes n_images_per_treatment."
            raise MorphomuError(msg)
        return check_positive_int(
            16 if n_images_per_treatment is None else n_images_per_treatment, "n_images_per_treatment"
        ), "n_images_per_treatment"
    if n_images_per_treatment is not None:
        if n_cells_per_sample is not None:
            msg = "output='embedding' takes n_cells_per_sample only (n_images_per_treatment is its former name)."
            raise MorphomuError(msg)
        warnings.warn(
            "generate_morphology(output='embedding'): n_images_per_treatment= counts embeddings per sample; "
            "pass n_cells_per_sample= (the old name will stop working in the next release).",
            FutureWarning,
            stacklevel=3,
        )
        n_cells_per_sample = n_images_per_treatment
    n = 16 if n_cells_per_sample is None else n_cells_per_sample
    return check_positive_int(n, "n_cells_per_sample"), "n_cells_per_sample"


# ---------------------------------------------------------------------------------------------------
# embeddings: MorphologyEmbedder (PhenoSeq's diffusion with the roles swapped)
# ---------------------------------------------------------------------------------------------------
def _generate_embeddings(
    mdata: MuData,
    *,
    model: Any,
    preset: str,
    n_per_unit: int,
    compounds: Any,
    key_added: str,
    seed: int,
    train_kwargs: dict[str, Any] | None,
    given: dict[str, Any],
    generate_kwargs: dict[str, Any],
) -> tuple[AnnData, dict[str, Any], Any, dict[str, Any]]:
    from ..models import MorphologyEmbedder, PhenoSeq
    from ..models._morphology_embedder import generation_samples

    keys = {k: given[k] for k in _EMBEDDING_KEYS}
    keys["rna_rep"] = C.RNA_REP if keys["rna_rep"] == "auto" else keys["rna_rep"]
    if model is not None:
        if isinstance(model, PhenoSeq) and hasattr(model, "morphology_setup_"):
            msg = (
                "model is a PhenoSeq trained by generate_morphology(output='embedding') of an earlier "
                "morphomu; embeddings are now generated by a MorphologyEmbedder. Retrain: pass model=None "
                "(the new model is returned) or use mm.models.MorphologyEmbedder."
            )
            raise MorphomuError(msg)
        if not isinstance(model, MorphologyEmbedder):
            msg = (
                "output='embedding' needs a MorphologyEmbedder (the role-swapped PhenoSeq returned by an "
                f"earlier generate_morphology(output='embedding') call), got {type(model).__name__}."
            )
            raise MorphomuError(msg)
        keys = {k: model.setup_args[k] for k in keys}
    check_key_added(key_added, keys, ("image_mod", "rna_mod"))
    trained_here = None
    if model is None:
        with uns_restored_on_error(mdata):
            MorphologyEmbedder.setup_mudata(mdata, **keys)  # checks everything before training
            generation_samples(mdata, keys, compounds=compounds)  # unknown compounds: refused before training
            model = MorphologyEmbedder(mdata, preset=preset)
            model.train(**(train_kwargs or {}))
        trained_here = model
    adata = model.generate(
        mdata, compounds=compounds, n_cells_per_sample=n_per_unit, seed=seed, **generate_kwargs
    )
    extra = {
        "model": "PhenoSeq (RNA + compound -> imaging)",
        "preset": model.preset,
        "n_samples": int(adata.obs[keys["sample_key"]].nunique()),
    }
    return adata, keys, trained_here, extra
