"""What the tools that set up, train and use a model share: argument checks, key handling, writing the result."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from .._errors import MorphomuError
from .._mudata import update
from .._validation import check_args

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

__all__ = [
    "check_key_added",
    "check_model_kwargs",
    "plain_params",
    "precision_record",
    "uns_restored_on_error",
    "write_modality",
]


def check_model_kwargs(
    model_cls: type,
    *,
    model: Any,
    preset: str,
    train_kwargs: Any,
    generate_kwargs: dict[str, Any],
) -> None:
    """Check what a tool passes on to a model of ``model_cls``, before anything is registered or trained.

    The model's own tables of checks (``_train_checks`` / ``_generate_checks``) run on the keyword
    arguments, so that e.g. a bad ``n_steps`` is refused before a model is trained, not after.
    """
    check_args(generate_kwargs, model_cls._generate_checks)
    if model is not None:
        return
    presets = model_cls._presets
    if presets is not None and preset not in presets:
        msg = f"preset={preset!r}: choose one of {sorted(presets)}."
        raise MorphomuError(msg)
    if train_kwargs is not None and not isinstance(train_kwargs, dict):
        msg = f"train_kwargs must be a dict of {model_cls.__name__}.train arguments or None, got {train_kwargs!r}."
        raise MorphomuError(msg)
    check_args(train_kwargs or {}, model_cls._train_checks)


def check_key_added(key_added: Any, keys: Mapping[str, Any], inputs: tuple[str, ...]) -> None:
    """Refuse a ``key_added`` that is not a modality name or would replace one of the input modalities."""
    if not isinstance(key_added, str) or not key_added:
        msg = f"key_added must be a modality name (str), got {key_added!r}."
        raise MorphomuError(msg)
    if key_added in {keys[k] for k in inputs}:
        msg = f"key_added={key_added!r} would replace an input modality; choose another name."
        raise MorphomuError(msg)


@contextlib.contextmanager
def uns_restored_on_error(mdata: MuData) -> Iterator[None]:
    """Put ``mdata.uns`` back as it was if the block fails: a refused call leaves the data untouched.

    scvi-tools' registration (``setup_mudata``) writes its ids into ``mdata.uns`` before training and
    generation can still refuse the input.
    """
    before = dict(mdata.uns)
    try:
        yield
    except BaseException:
        for key in [k for k in mdata.uns if k not in before]:
            del mdata.uns[key]
        mdata.uns.update(before)
        raise


def write_modality(mdata: MuData, adata: AnnData, key_added: str) -> None:
    """Add generated cells as modality ``key_added`` (obs names prefixed with it), the tool's last step."""
    adata.obs_names = [f"{key_added}-{name}" for name in adata.obs_names]
    mdata.mod[key_added] = adata
    update(mdata)


def plain_params(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments worth recording in ``uns``: plain values (strings, numbers, booleans, ``None``)."""
    return {k: v for k, v in kwargs.items() if isinstance(v, str | int | float | bool) or v is None}


def precision_record(model: Any, generate_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The precisions of a generation's record: the model's training one and the generation's, resolved."""
    from .._core import resolve_precision

    return {
        "train_precision": getattr(model, "train_precision_", None),  # None: trained before it was recorded
        "precision": resolve_precision(generate_kwargs.get("precision", "auto"), model.device),
    }
