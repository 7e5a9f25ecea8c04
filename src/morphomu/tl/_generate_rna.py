"""``mm.tl.generate_rna``: synthetic RNA embeddings from imaging, written into the MuData (scanpy style)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from .. import _constants as C
from .._errors import MorphomuError
from .._uns import store
from .._validation import check_mudata
from ..models._phenoseq_checks import check_training_split, select_samples
from ._model_tools import (
    check_key_added,
    check_model_kwargs,
    plain_params,
    precision_record,
    uns_restored_on_error,
    write_modality,
)

if TYPE_CHECKING:
    from mudata import MuData

    from ..models import PhenoSeq, RidgeBaseline

__all__ = ["generate_rna"]

_METHODS = ("phenoseq", "ridge")


def generate_rna(
    mdata: MuData,
    *,
    model: PhenoSeq | RidgeBaseline | None = None,
    preset: Literal["paper", "fast", "tiny"] = "fast",
    key_added: str = C.RNA_SYNTHETIC_MOD,
    method: Literal["phenoseq", "ridge"] | None = None,
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
) -> PhenoSeq | RidgeBaseline | None:
    """Generate RNA embeddings for each sample from its imaging cells and add them as a modality.

    ``method='phenoseq'`` uses a trained :class:`~morphomu.models.PhenoSeq` (``model``), or sets up and
    trains one at ``preset`` on the ``train`` / ``val`` splits and returns it. ``method='ridge'`` is the
    deterministic baseline :class:`~morphomu.models.RidgeBaseline`, which shows what diffusion adds: a
    ridge regression (``RidgeCV``, leave-one-out choice of the penalty) from a sample's mean imaging
    embedding (standardised with train statistics) to its mean RNA embedding, fit on the train samples;
    each generated cell is the predicted mean plus the residual (cell minus its sample mean) of a train
    RNA cell chosen from ``(seed, sample, cell index)`` - the pooled within-sample spread of the train
    split, the same for every treatment. It too is fit here (in closed form) unless ``model`` is given.

    Parameters
    ----------
    mdata
        The experiment (imaging and RNA modalities paired by sample).
    model
        A trained :class:`~morphomu.models.PhenoSeq` or :class:`~morphomu.models.RidgeBaseline`; its own
        setup keys are used. ``None`` trains one (of ``method``).
    preset
        Size of the PhenoSeq trained when ``model`` is ``None``.
    key_added
        Name of the modality written (replaced if present).
    method
        ``'phenoseq'`` or ``'ridge'``; default the kind of ``model``, else ``'phenoseq'``.
    train_kwargs
        Passed to :meth:`PhenoSeq.train <morphomu.models.PhenoSeq.train>` (e.g. ``max_epochs``) or
        :meth:`RidgeBaseline.train <morphomu.models.RidgeBaseline.train>` (``alphas``) when a model is
        trained here.
    image_mod, rna_mod, image_rep, rna_rep, sample_key, treatment_key, replicate_key, round_key, split_key
        Keys of the data (ignored when ``model`` is given: the model's are used).
    **generate_kwargs
        Passed to :meth:`PhenoSeq.generate` (``samples``, ``n_cells_per_sample``, ``n_steps``, ``sampler``,
        ``context``, ``guidance_scale``, ``seed``, ...; its defaults apply, e.g. the measured default sampler
        and steps, while ``sampler='ddim', n_steps=50`` is the paper's protocol); ``ridge`` takes
        ``samples``, ``n_cells_per_sample`` and ``seed``.

    Returns
    -------
    The model trained here (a :class:`~morphomu.models.PhenoSeq` or
    :class:`~morphomu.models.RidgeBaseline`, so it is not lost), else ``None``. Writes
    ``mdata.mod[key_added]`` (obs ``sample``, ``treatment``, ..., ``synthetic=True``; ``.obsm[rna_rep]`` and
    ``.X``) and ``mdata.uns['morphomu'][key_added]`` with the parameters (``ridge``: also
    ``ridge_alpha`` and ``n_train_samples``).

    Examples
    --------
    >>> import morphomu as mm
    >>> mdata = mm.datasets.simulate_scgenescope(n_img_cells=2000, n_rna_cells=2000)
    >>> mm.pp.assign_split(mdata)
    >>> baseline = mm.tl.generate_rna(mdata, method="ridge")
    >>> mdata["rna_synthetic"].obs["synthetic"].all()
    True
    """
    from ..models import PhenoSeq, RidgeBaseline

    check_mudata(mdata)
    kinds = {"phenoseq": PhenoSeq, "ridge": RidgeBaseline}
    if model is not None and not isinstance(model, PhenoSeq | RidgeBaseline):
        msg = f"model must be a trained PhenoSeq or RidgeBaseline (or None), got {type(model).__name__}."
        raise MorphomuError(msg)
    if method is None:
        method = "ridge" if isinstance(model, RidgeBaseline) else "phenoseq"
    if method not in _METHODS:
        msg = f"method={method!r}: choose one of {list(_METHODS)}."
        raise MorphomuError(msg)
    if model is not None and not isinstance(model, kinds[method]):
        msg = (
            f"method={method!r} does not match model, a {type(model).__name__}: pass a "
            f"{kinds[method].__name__}, or leave method unset to use the model's."
        )
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
    check_key_added(key_added, keys, ("image_mod", "rna_mod"))
    trained_here = None
    if model is None:
        with uns_restored_on_error(mdata):
            kinds[method].setup_mudata(mdata, **keys)  # checks the data before registering it
            # what training and generation need, before any training
            check_training_split(mdata.mod[keys["rna_mod"]], keys["split_key"], mod=keys["rna_mod"])
            select_samples(
                mdata,
                keys,
                generate_kwargs.get("samples"),
                generate_kwargs.get("n_cells_per_sample", "match"),
            )
            model = RidgeBaseline(mdata) if method == "ridge" else PhenoSeq(mdata, preset=preset)
            model.train(**(train_kwargs or {}))
            adata = model.generate(mdata, **generate_kwargs)
        trained_here = model
    else:
        adata = model.generate(mdata, **generate_kwargs)
    if method == "ridge":
        extra = {
            "ridge_alpha": model.alpha,
            "n_train_samples": model.n_train_samples,
            "trained_here": trained_here is not None,
        }
    else:
        extra = {
            "preset": model.preset,
            "trained_here": trained_here is not None,
            **precision_record(model, generate_kwargs),
        }
    write_modality(mdata, adata, key_added)  # last
    params = {
        "method": method,
        "key_added": key_added,
        **keys,
        **plain_params(generate_kwargs),
    }
    samples = generate_kwargs.get("samples")
    if samples is not None:
        params["samples"] = [samples] if isinstance(samples, str) else [str(s) for s in samples]
    store(mdata, key_added, {"params": params, "n_cells": int(adata.n_obs), **extra}, tool="generate_rna")
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
    from ..models import PhenoSeq, RidgeBaseline

    if method == "ridge":
        # the baseline takes few arguments: a PhenoSeq one (n_steps, max_epochs, ...) is refused, not ignored
        _check_accepted(generate_kwargs, RidgeBaseline.generate, what="generation arguments")
        if model is None and isinstance(train_kwargs, dict):
            _check_accepted(train_kwargs, RidgeBaseline.train, what="train_kwargs")
    check_model_kwargs(
        RidgeBaseline if method == "ridge" else PhenoSeq,
        model=model,
        preset=preset,
        train_kwargs=train_kwargs,
        generate_kwargs=generate_kwargs,
    )


def _check_accepted(kwargs: dict[str, Any], method: Any, *, what: str) -> None:
    """Raise unless ``method`` takes every keyword of ``kwargs`` (a model method with keyword-only arguments)."""
    import inspect

    accepted = [p.name for p in inspect.signature(method).parameters.values() if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        msg = f"{method.__qualname__} takes {accepted} as {what}, got {unknown}."
        raise MorphomuError(msg)
