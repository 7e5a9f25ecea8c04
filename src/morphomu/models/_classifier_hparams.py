"""The treatment classifiers' hyper-parameters: the PhenoSeq paper's Table 6 and smaller presets."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._errors import MorphomuError
from .._validation import check_nonnegative, check_positive, check_positive_int, optional

__all__ = [
    "DUAL_KEYS",
    "HPARAMS",
    "HPARAM_NAMES",
    "SETTINGS",
    "SINGLE_KEYS",
    "check_setting",
    "resolve_hparams",
]

SETTINGS = ("single", "multi")

_SHARED_PAPER = {
    "batch_size": 4096,
    "max_epochs": 100,
    "patience": 25,
    "gradient_clip": 0.5,
    "epoch_size": None,
}
_DUAL_PAPER = {"image_hidden": 266, "image_layers": 3, "rna_hidden": 2748, "rna_layers": 3, "n_embed": 913}

#: Hyper-parameters per preset and ``(setting, kind)``; ``kind`` is ``'image'``, ``'rna'`` or
#: ``'image+rna'``. ``paper`` is the PhenoSeq paper's Table 6 (AdamW, batch 4096, at most 100 epochs,
#: early stopping with patience 25 on validation balanced accuracy, gradient clipping 0.5). ``fast``
#: (CPU-sized) and ``tiny`` (tests) keep the architectures at smaller widths.
HPARAMS: dict[str, dict[tuple[str, str], dict[str, Any]]] = {
    "paper": {
        ("single", "image"): {
            "n_hidden": 512,
            "n_layers": 5,
            "lr": 1e-3,
            "weight_decay": 1e-4,
            **_SHARED_PAPER,
        },
        ("single", "rna"): {
            "n_hidden": 3934,
            "n_layers": 3,
            "lr": 1.49e-4,
            "weight_decay": 9.24e-5,
            **_SHARED_PAPER,
        },
        ("single", "image+rna"): {**_DUAL_PAPER, "lr": 1.37e-5, "weight_decay": 4.52e-5, **_SHARED_PAPER},
        ("multi", "image"): {
            "n_hidden": 279,
            "n_layers": 2,
            "lr": 5.20e-5,
            "weight_decay": 5.79e-3,
            **_SHARED_PAPER,
        },
        ("multi", "rna"): {
            "n_hidden": 1922,
            "n_layers": 4,
            "lr": 1.63e-4,
            "weight_decay": 1.90e-6,
            **_SHARED_PAPER,
        },
        ("multi", "image+rna"): {**_DUAL_PAPER, "lr": 1.63e-4, "weight_decay": 4.52e-5, **_SHARED_PAPER},
    },
}
_FAST = {
    "n_hidden": 256, "n_layers": 2, "image_hidden": 128, "image_layers": 2, "rna_hidden": 256, "rna_layers": 2,
    "n_embed": 128, "lr": 1e-3, "weight_decay": 1e-4, "batch_size": 1024, "max_epochs": 20, "patience": 5,
    "gradient_clip": 0.5, "epoch_size": None,
}  # fmt: skip
_TINY = {
    "n_hidden": 32, "n_layers": 1, "image_hidden": 16, "image_layers": 1, "rna_hidden": 16, "rna_layers": 1,
    "n_embed": 16, "lr": 3e-3, "weight_decay": 0.0, "batch_size": 256, "max_epochs": 10, "patience": 10,
    "gradient_clip": 0.5, "epoch_size": None,
}  # fmt: skip
#: Sizes of the MLP (one input) and of the DualMLP (an imaging and an RNA input).
SINGLE_KEYS = ("n_hidden", "n_layers")
DUAL_KEYS = tuple(_DUAL_PAPER)
for _name, _table in (("fast", _FAST), ("tiny", _TINY)):
    HPARAMS[_name] = {
        (s, kind): {
            k: v for k, v in _table.items() if k not in (DUAL_KEYS if kind != "image+rna" else SINGLE_KEYS)
        }
        for s in SETTINGS
        for kind in ("image", "rna", "image+rna")
    }
#: Every name a ``preset`` dict of overrides may set.
HPARAM_NAMES = frozenset(_FAST)
#: Checks of the resolved hyper-parameters (a preset's values with a dict's overrides).
_HPARAM_CHECKS: dict[str, Any] = {
    **dict.fromkeys((*SINGLE_KEYS, *DUAL_KEYS, "batch_size", "max_epochs", "patience"), check_positive_int),
    "lr": check_positive,
    "weight_decay": check_nonnegative,
    "gradient_clip": check_positive,
    "epoch_size": optional(check_positive_int),
}


def check_setting(setting: str) -> str:
    """``setting`` if it is ``'single'`` or ``'multi'``; raise otherwise."""
    if setting not in SETTINGS:
        msg = f"setting={setting!r}: choose 'single' (one cell per example) or 'multi' (k cells averaged)."
        raise MorphomuError(msg)
    return setting


def resolve_hparams(preset: str | Mapping[str, Any], setting: str, kind: str) -> dict[str, Any]:
    """The hyper-parameters of one ``(setting, kind)``: a preset name, or a dict of overrides.

    A dict may name its base preset under ``'preset'`` (default ``'paper'``); its other keys (any of
    :data:`HPARAM_NAMES`) override the preset's values. Keys that do not apply to the architecture (e.g.
    ``n_hidden`` for a DualMLP) are ignored, so one dict can serve all ten settings. Errors name the
    argument ``preset`` (the classifier's and :func:`~morphomu.tl.classify`'s name for it).
    """
    check_setting(setting)
    overrides: dict[str, Any] = {}
    if isinstance(preset, str):
        name = preset
    elif isinstance(preset, Mapping):
        overrides = dict(preset)
        name = overrides.pop("preset", "paper")
        unknown = sorted(set(overrides) - HPARAM_NAMES)
        if unknown:
            msg = f"preset has unknown keys {unknown}; known: {sorted(HPARAM_NAMES)} and 'preset' (the base)."
            raise MorphomuError(msg)
    else:
        msg = f"preset must be a preset name or a dict of overrides, got {type(preset).__name__}."
        raise MorphomuError(msg)
    if not isinstance(name, str) or name not in HPARAMS:
        msg = f"preset {name!r} is unknown; choose one of {sorted(HPARAMS)}."
        raise MorphomuError(msg)
    base = dict(HPARAMS[name][(setting, kind)])
    base.update({k: v for k, v in overrides.items() if k in base or k not in (*SINGLE_KEYS, *DUAL_KEYS)})
    for key, check in _HPARAM_CHECKS.items():
        if key in base:
            base[key] = check(base[key], f"preset[{key!r}]")
    return base
