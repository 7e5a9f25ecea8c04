"""The inputs of a treatment classifier: which modalities and representations, and of which kind."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import _constants as C
from .._errors import MorphomuError
from .._uns import known_keys
from .._validation import check_obs_keys, check_rep, get_mod

if TYPE_CHECKING:
    from mudata import MuData

__all__ = ["KINDS", "ClassifierInput", "check_input_data", "input_kind", "parse_inputs"]

#: Kinds of input, in the DualMLP's order of encoders.
KINDS = ("image", "rna")


@dataclass(frozen=True)
class ClassifierInput:
    """One input of a classifier: a modality, its representation and its kind (``'image'`` / ``'rna'``)."""

    mod: str
    rep: str | None
    kind: str

    @property
    def label(self) -> str:
        """E.g. ``'img:X_vit'``."""
        return f"{self.mod}:{self.rep or 'X'}"


def _kind_of(mod: str) -> str | None:
    if mod.startswith(C.IMAGE_MOD):
        return "image"
    if mod.startswith(C.RNA_MOD):
        return "rna"
    return None


def parse_inputs(inputs: Any, *, data: Any = None) -> tuple[ClassifierInput, ...]:
    """Normalise ``inputs`` to one or two :class:`ClassifierInput`, imaging first.

    Accepted: a pair ``('img', 'X_vit')``; a triple ``(mod, rep, kind)``; a list of those; a dict
    ``{mod: rep}``. ``rep=None`` means ``.X``. The kind (which row of Table 6 applies, and which DualMLP
    encoder) is the explicit third element when given, else what morphomu's records in ``data`` say of
    the modality (e.g. the ``image_mod`` / ``rna_mod`` a model was set up with, the kind a generator
    wrote), else read from the modality name: ``img...`` (``img``, ``img_synthetic``) is ``'image'``,
    ``rna...`` (``rna``, ``rna_synthetic``) is ``'rna'``.
    Two inputs must be one of each kind.
    """
    if isinstance(inputs, Mapping):
        items = list(inputs.items())
    elif (
        isinstance(inputs, tuple)
        and len(inputs) in (2, 3)
        and isinstance(inputs[0], str)
        and (inputs[1] is None or isinstance(inputs[1], str))
        and (len(inputs) == 2 or isinstance(inputs[2], str))
    ):
        items = [inputs]
    elif isinstance(inputs, Sequence) and not isinstance(inputs, str):
        items = list(inputs)
    else:
        msg = f"inputs must be (mod, rep), (mod, rep, kind), a list of those or a dict {{mod: rep}}; got {inputs!r}."
        raise MorphomuError(msg)
    if not 1 <= len(items) <= 2:
        msg = f"inputs must name one modality (MLP) or two (DualMLP: imaging + RNA), got {len(items)}."
        raise MorphomuError(msg)
    parsed = []
    for item in items:
        if not isinstance(item, Sequence) or isinstance(item, str) or len(item) not in (2, 3):
            msg = f"each input must be (mod, rep) or (mod, rep, kind), got {item!r}."
            raise MorphomuError(msg)
        mod, rep, *rest = item
        if not isinstance(mod, str) or not (rep is None or isinstance(rep, str)):
            msg = f"input {item!r}: mod must be a modality name and rep an .obsm key or None."
            raise MorphomuError(msg)
        kind = (
            rest[0]
            if rest
            else (known_keys(data, mod).get("kind") if data is not None else None) or _kind_of(mod)
        )
        if kind not in KINDS:
            msg = (
                f"input {item!r}: cannot tell whether {mod!r} is imaging or RNA; name the kind, e.g. "
                f"({mod!r}, {rep!r}, 'image') or ({mod!r}, {rep!r}, 'rna')."
                if not rest
                else f"input {item!r}: kind must be 'image' or 'rna', got {kind!r}."
            )
            raise MorphomuError(msg)
        parsed.append(ClassifierInput(mod, rep, kind))
    if len(parsed) == 2:
        if {p.kind for p in parsed} != {"image", "rna"}:
            msg = f"two inputs must be one imaging and one RNA input (the DualMLP's two encoders), got {parsed}."
            raise MorphomuError(msg)
        parsed.sort(key=lambda p: KINDS.index(p.kind))
    if len({(p.mod, p.rep) for p in parsed}) != len(parsed):
        msg = "inputs names the same representation twice."
        raise MorphomuError(msg)
    return tuple(parsed)


def input_kind(specs: Sequence[ClassifierInput]) -> str:
    """``'image'``, ``'rna'`` or ``'image+rna'``: the Table-6 row family of these inputs."""
    return "+".join(s.kind for s in specs)


def check_input_data(
    mdata: MuData,
    specs: Sequence[ClassifierInput],
    keys: Mapping[str, str],
    *,
    arg: str,
    n_features: Sequence[int] | None = None,
) -> None:
    """Raise unless every input's modality has its representation and the obs columns ``keys``.

    Parameters
    ----------
    mdata
        The data.
    specs
        The inputs.
    keys
        obs columns by argument name (``treatment_key``, ``sample_key``, ``split_key``).
    arg
        The argument an absent modality is blamed on.
    n_features
        Features each representation must have (default any).
    """
    for i, s in enumerate(specs):
        adata = get_mod(mdata, s.mod, arg=arg)
        check_rep(
            adata, s.rep, mod=s.mod, arg="inputs", n_features=None if n_features is None else n_features[i]
        )
        check_obs_keys(adata, dict(keys), mod=s.mod)
