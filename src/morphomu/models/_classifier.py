"""TreatmentClassifier: the scGeneScope treatment-identification classifiers (MLP / DualMLP)."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import torch
from scvi.data import AnnDataManager, AnnDataManagerValidationCheck
from scvi.train import TrainRunner

from .. import _constants as C
from .._core import Standardizer, quiet_lightning, rep_matrix, split_stream
from .._errors import ContractError, MorphomuError, MorphomuWarning
from .._validation import (
    check_args,
    check_mudata,
    check_nonnegative,
    check_nonnegative_int,
    check_obs_keys,
    check_positive,
    check_positive_int,
    check_rep,
    get_mod,
    optional,
)
from ..module._classifier import DualMLPClassifier, MLPClassifier
from ..train._classifier import (
    ClassifierDataModule,
    ClassifierTrainingPlan,
    ExampleSet,
    SamplePools,
    batch_loader,
)
from ..train._disk_cache import RowCache, use_disk_cache
from ._base import MorphomuModel, feature_field
from ._training import TrainingMixin, train_docstring

if TYPE_CHECKING:
    from mudata import MuData

__all__ = [
    "HPARAMS",
    "ClassifierInput",
    "TreatmentClassifier",
    "classification_metrics",
    "parse_inputs",
    "resolve_hparams",
]

logger = logging.getLogger(__name__)

SETTINGS = ("single", "multi")
KINDS = ("image", "rna")
#: Seed of the fixed validation / test populations (as scGeneScope).
EVAL_SEED = 2024

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
_SINGLE_KEYS = ("n_hidden", "n_layers")
_DUAL_KEYS = tuple(_DUAL_PAPER)
for _name, _table in (("fast", _FAST), ("tiny", _TINY)):
    HPARAMS[_name] = {
        (s, kind): {
            k: v for k, v in _table.items() if k not in (_DUAL_KEYS if kind != "image+rna" else _SINGLE_KEYS)
        }
        for s in SETTINGS
        for kind in ("image", "rna", "image+rna")
    }
#: Every name a ``hparams`` dict may set.
HPARAM_NAMES = frozenset(_FAST)
#: Checks of the resolved hyper-parameters (a preset's values with a dict's overrides).
_HPARAM_CHECKS: dict[str, Any] = {
    **dict.fromkeys((*_SINGLE_KEYS, *_DUAL_KEYS, "batch_size", "max_epochs", "patience"), check_positive_int),
    "lr": check_positive,
    "weight_decay": check_nonnegative,
    "gradient_clip": check_positive,
    "epoch_size": optional(check_positive_int),
}
#: Checks of :meth:`TreatmentClassifier.train`'s arguments (``None``: from the model's ``hparams``), run
#: before any work.
TRAIN_CHECKS: dict[str, Any] = {
    "max_epochs": optional(check_positive_int),
    "batch_size": optional(check_positive_int),
    "lr": optional(check_positive),
    "weight_decay": optional(check_nonnegative),
    "early_stopping_patience": optional(check_nonnegative_int),
    "gradient_clip_val": optional(check_positive),
    "epoch_size": optional(check_positive_int),
    "num_workers": check_nonnegative_int,
}


def resolve_hparams(hparams: str | Mapping[str, Any], setting: str, kind: str) -> dict[str, Any]:
    """The hyper-parameters of one ``(setting, kind)``: a preset name, or a dict of overrides.

    A dict may name its base preset under ``'preset'`` (default ``'paper'``); its other keys (any of
    :data:`HPARAM_NAMES`) override the preset's values. Keys that do not apply to the architecture (e.g.
    ``n_hidden`` for a DualMLP) are ignored, so one dict can serve all ten settings.
    """
    if setting not in SETTINGS:
        msg = f"setting={setting!r}: choose 'single' (one cell per example) or 'multi' (k cells averaged)."
        raise MorphomuError(msg)
    overrides: dict[str, Any] = {}
    if isinstance(hparams, str):
        preset = hparams
    elif isinstance(hparams, Mapping):
        overrides = dict(hparams)
        preset = overrides.pop("preset", "paper")
        unknown = sorted(set(overrides) - HPARAM_NAMES)
        if unknown:
            msg = f"hparams has unknown keys {unknown}; known: {sorted(HPARAM_NAMES)} and 'preset'."
            raise MorphomuError(msg)
    else:
        msg = f"hparams must be a preset name or a dict, got {type(hparams).__name__}."
        raise MorphomuError(msg)
    if preset not in HPARAMS:
        msg = f"hparams preset {preset!r} is unknown; choose one of {sorted(HPARAMS)}."
        raise MorphomuError(msg)
    base = dict(HPARAMS[preset][(setting, kind)])
    base.update({k: v for k, v in overrides.items() if k in base or k not in (*_SINGLE_KEYS, *_DUAL_KEYS)})
    for key, check in _HPARAM_CHECKS.items():
        if key in base:
            base[key] = check(base[key], f"hparams[{key!r}]")
    return base


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


def parse_inputs(inputs: Any) -> tuple[ClassifierInput, ...]:
    """Normalise ``inputs`` to one or two :class:`ClassifierInput`, imaging first.

    Accepted: a pair ``('img', 'X_vit')``; a triple ``(mod, rep, kind)``; a list of those; a dict
    ``{mod: rep}``. ``rep=None`` means ``.X``. The kind (which row of Table 6 applies, and which DualMLP
    encoder) is the explicit third element when given, else read from the modality name: ``img...``
    (``img``, ``img_synthetic``) is ``'image'``, ``rna...`` (``rna``, ``rna_synthetic``) is ``'rna'``.
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
        kind = rest[0] if rest else _kind_of(mod)
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


def classification_metrics(y_true: Any, y_pred: Any) -> dict[str, float]:
    """Balanced accuracy, macro-F1 and weighted-F1 (scikit-learn), the benchmark's metrics."""
    from sklearn.metrics import balanced_accuracy_score, f1_score

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        return {
            "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
            "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
            "weighted_f1": float(f1_score(y_true, y_pred, average="weighted", zero_division=0)),
        }


def _as_tensor(matrix: Any) -> torch.Tensor:
    """The matrix as a CPU float32 tensor, sharing memory when it already is a C-contiguous float32 array."""
    from scipy import sparse

    if isinstance(matrix, pd.DataFrame):
        matrix = matrix.to_numpy()
    if sparse.issparse(matrix):
        matrix = matrix.toarray()
    elif not isinstance(matrix, np.ndarray):
        matrix = matrix[:]  # backed: load
        matrix = matrix.toarray() if sparse.issparse(matrix) else matrix
    return torch.from_numpy(np.ascontiguousarray(matrix, dtype=np.float32))


def _matrix_key(matrix: Any) -> tuple:
    """Identity of a matrix: its file and dataset when backed (a new object on every ``.X`` access), else the object."""
    target = getattr(matrix, "group", matrix)  # anndata's backed sparse datasets wrap an h5py group
    file, name = getattr(target, "file", None), getattr(target, "name", None)
    if file is not None and isinstance(name, str):
        return ("file", str(getattr(file, "filename", file)), name, tuple(matrix.shape))
    return ("object", id(matrix))


class TreatmentClassifier(TrainingMixin, MorphomuModel):
    """Identify a cell's (or a cell population's) treatment from imaging and/or RNA embeddings.

    The scGeneScope benchmark's classifiers as used by the PhenoSeq paper: an MLP for one input
    modality, a DualMLP (one encoder per modality, concatenated) for an imaging and an RNA input, with
    the widths, depths and optimiser settings of the paper's Table 6 for each ``(setting, kind)``.
    The unit is a cell: ``setting='single'`` classifies one cell embedding per example (with two inputs,
    one cell of each modality from the same sample, drawn independently); ``setting='multi'`` the mean
    of ``k`` cells of one sample per input, redrawn every training epoch and fixed (seed 2024) for
    validation and test. See :mod:`morphomu.train._classifier` for the sampling. Inputs are
    standardised inside the module with train-split statistics, so raw representations go in.

    Training examples come from the ``train`` split, early stopping from ``val``; the classes are the
    targets present in the train split of every input, minus ``exclude``.

    Parameters
    ----------
    mdata
        MuData registered with :meth:`setup_mudata`.
    setting
        ``'single'`` or ``'multi'``.
    k
        Cells averaged per example and input in the multi-profile setting.
    exclude
        Target values that are not classes (their cells are ignored), the control by default.
    hparams
        ``'paper'`` (Table 6), ``'fast'``, ``'tiny'``, or a dict of overrides (see
        :func:`~morphomu.models._classifier.resolve_hparams`).

    Examples
    --------
    >>> import morphomu as mm
    >>> mm.models.TreatmentClassifier.setup_mudata(
    ...     mdata, inputs=[("img", "X_vit"), ("rna", "X_scgpt")]
    ... )  # doctest: +SKIP
    >>> model = mm.models.TreatmentClassifier(mdata, setting="multi")  # doctest: +SKIP
    >>> model.train()  # doctest: +SKIP
    >>> model.evaluate()  # doctest: +SKIP
    """

    _module_cls = MLPClassifier
    _dual_module_cls = DualMLPClassifier
    _training_plan_cls = ClassifierTrainingPlan
    _data_splitter_cls = ClassifierDataModule
    _train_runner_cls = TrainRunner

    def __init__(
        self,
        mdata: MuData,
        *,
        setting: Literal["single", "multi"] = "single",
        k: int = 32,
        exclude: Sequence[str] = (C.CONTROL,),
        hparams: str | Mapping[str, Any] = "paper",
    ) -> None:
        if setting not in SETTINGS:
            msg = (
                f"setting={setting!r}: choose 'single' (one cell per example) or 'multi' (k cells averaged)."
            )
            raise MorphomuError(msg)
        k = check_positive_int(k, "k")
        super().__init__(mdata)
        self.specs = parse_inputs([tuple(x) for x in self.setup_args["inputs"]])
        self.setting, self.k = setting, int(k) if setting == "multi" else 1
        self.kind = input_kind(self.specs)
        self.hparams = resolve_hparams(hparams, setting, self.kind)
        self.exclude = [str(e) for e in ([exclude] if isinstance(exclude, str) else exclude)]
        self.classes_ = self._train_classes(mdata)
        n_features = self._n_features()
        self.anchor_ = self._anchor(mdata)
        hp = self.hparams
        if len(self.specs) == 1:
            self.module = self._module_cls(
                n_features[0], len(self.classes_), n_hidden=hp["n_hidden"], n_layers=hp["n_layers"]
            )
        else:
            self.module = self._dual_module_cls(
                *n_features, len(self.classes_), **{key: hp[key] for key in _DUAL_KEYS}
            )
        self.best_epoch_: int | None = None
        self.best_validation_score_: float | None = None
        n_params = sum(p.numel() for p in self.module.parameters())
        self._model_summary_string = (
            f"TreatmentClassifier ({setting}-profile{f', k={self.k}' if setting == 'multi' else ''}, "
            f"{type(self.module).__name__}) on {' + '.join(s.label for s in self.specs)}: "
            f"{len(self.classes_)} classes, {n_params:,} parameters."
        )
        self.init_params_ = self._get_init_params(locals())

    # ------------------------------------------------------------------ setup
    @classmethod
    def setup_mudata(
        cls,
        mdata: MuData,
        *,
        inputs: Any,
        target_key: str = C.TREATMENT_KEY,
        sample_key: str = C.SAMPLE_KEY,
        split_key: str = C.SPLIT_KEY,
        **kwargs: Any,
    ) -> None:
        """Register the input modalities (different cells, paired by sample) and the obs keys.

        Parameters
        ----------
        mdata
            The experiment.
        inputs
            One or two ``(mod, rep)`` pairs (see :func:`~morphomu.models._classifier.parse_inputs`).
        target_key
            obs column with the class (the treatment).
        sample_key
            obs column with the sample; a sample has a single target value.
        split_key
            obs column with ``train`` / ``val`` / test labels.
        **kwargs
            Passed to scvi-tools' registration.
        """
        specs = parse_inputs(inputs)
        setup_method_args = cls._get_setup_method_args(
            cls=cls,
            mdata=mdata,
            inputs=[[s.mod, s.rep, s.kind] for s in specs],
            target_key=target_key,
            sample_key=sample_key,
            split_key=split_key,
        )
        check_mudata(mdata)
        for s in specs:
            check_rep(get_mod(mdata, s.mod, arg="inputs"), s.rep, mod=s.mod, arg="inputs")
            check_obs_keys(
                mdata.mod[s.mod],
                {"target_key": target_key, "sample_key": sample_key, "split_key": split_key},
                mod=s.mod,
            )

        manager = AnnDataManager(
            fields=[feature_field(f"x{i}", s.rep, s.mod) for i, s in enumerate(specs)],
            setup_method_args=setup_method_args,
            validation_checks=AnnDataManagerValidationCheck(check_fully_paired_mudata=False),
        )
        manager.register_fields(mdata, **kwargs)
        cls.register_manager(manager)

    @classmethod
    def setup_anndata(cls, *args: Any, **kwargs: Any) -> None:
        """Not available: use :meth:`setup_mudata` (inputs are modalities of a MuData)."""
        msg = "TreatmentClassifier reads modalities of a MuData: use TreatmentClassifier.setup_mudata(mdata, inputs=...)."
        raise MorphomuError(msg)

    def _n_features(self) -> list[int]:
        regs = self.registry_["field_registries"]
        return [len(regs[f"x{i}"]["state_registry"]["column_names"]) for i in range(len(self.specs))]

    # ------------------------------------------------------------------ data
    def _obs(self, mdata: MuData, s: ClassifierInput, key: str) -> np.ndarray:
        return mdata.mod[s.mod].obs[self.setup_args[key]].astype(str).to_numpy()

    def _inputs(self, mdata: MuData) -> list[Any]:
        """Each input's matrix: a float32 tensor in memory, or a sample-sorted disk cache read by row.

        The choice and the cache's options are those of the last :meth:`train` call (default: a cache
        for a backed matrix). A cache is built once per matrix and reused by later calls (and, in
        :func:`morphomu.tl.classify`, by the models of every seed and fold).
        """
        opts = self.__dict__.get(
            "_cache_options", {"in_memory": None, "cache_dir": None, "cache_dtype": "float32"}
        )
        caches = self.__dict__.setdefault("_row_caches", {})
        out: list[Any] = []
        for s in self.specs:
            adata = mdata.mod[s.mod]
            matrix = rep_matrix(adata, s.rep)
            if not use_disk_cache(matrix, adata.n_obs, in_memory=opts["in_memory"]):
                out.append(_as_tensor(matrix))
                continue
            key = (*_matrix_key(matrix), opts["cache_dtype"])
            if key not in caches:
                samples = self._obs(mdata, s, "sample_key")  # sample-sorted: a population is one region
                codes = pd.Index(sorted(set(samples))).get_indexer(samples)
                cache = RowCache.build(matrix, codes, dtype=opts["cache_dtype"], directory=opts["cache_dir"])
                caches[key] = (matrix, cache)  # the matrix keeps an id() key valid
            out.append(caches[key][1].by_source_row())
        return out

    def _train_classes(self, mdata: MuData) -> list[str]:
        target_key = self.setup_args["target_key"]
        per_input = []
        for s in self.specs:
            split = self._obs(mdata, s, "split_key")
            values = self._obs(mdata, s, "target_key")[split == C.TRAIN]
            if values.size == 0:
                msg = (
                    f"mdata.mod[{s.mod!r}].obs[{self.setup_args['split_key']!r}] has no {C.TRAIN!r} cells; "
                    "run mm.pp.assign_split first."
                )
                raise ContractError(msg)
            per_input.append(set(values) - set(self.exclude))
        classes = sorted(set.intersection(*per_input))
        if len(classes) < 2:
            msg = (
                f"the train split has {len(classes)} class(es) {classes} of obs[{target_key!r}] (after excluding "
                f"{self.exclude}) in every input; a classifier needs at least two."
            )
            raise ContractError(msg)
        return classes

    def _anchor(self, mdata: MuData) -> int:
        counts = []
        for s in self.specs:
            keep = (self._obs(mdata, s, "split_key") == C.TRAIN) & np.isin(
                self._obs(mdata, s, "target_key"), self.classes_
            )
            counts.append(int(keep.sum()))
        return int(np.argmax(counts))

    def _check_data(self, mdata: MuData) -> None:
        a = self.setup_args
        for s, n in zip(self.specs, self._n_features(), strict=True):
            adata = get_mod(mdata, s.mod, arg="mdata")
            check_rep(adata, s.rep, mod=s.mod, arg="inputs", n_features=n)
            check_obs_keys(
                adata,
                {"target_key": a["target_key"], "sample_key": a["sample_key"], "split_key": a["split_key"]},
                mod=s.mod,
            )

    def _examples(
        self, mdata: MuData, split: str, tensors: list[torch.Tensor], *, warn: bool = True
    ) -> tuple[ExampleSet, pd.Index, np.ndarray]:
        """Examples of one split: pools per input, anchor rows, labels; also sample names and anchor obs names."""
        a = self.setup_args
        samples_per_input, targets_per_input, keep_per_input = [], [], []
        for s in self.specs:
            split_values = self._obs(mdata, s, "split_key")
            target = self._obs(mdata, s, "target_key")
            in_split = split_values == split
            keep = in_split & np.isin(target, self.classes_)
            if warn:
                unseen = sorted(set(target[in_split]) - set(self.classes_) - set(self.exclude))
                if unseen:
                    warnings.warn(
                        f"mdata.mod[{s.mod!r}] split {split!r}: cells of {unseen[:5]} (obs[{a['target_key']!r}]) are "
                        "not classes of this model (absent from the train split) and are left out.",
                        MorphomuWarning,
                        stacklevel=3,
                    )
            samples_per_input.append(self._obs(mdata, s, "sample_key"))
            targets_per_input.append(target)
            keep_per_input.append(keep)
        names = pd.Index(
            sorted(
                set().union(*(set(sm[kp]) for sm, kp in zip(samples_per_input, keep_per_input, strict=True)))
            )
        )
        if len(names) == 0:
            msg = f"no cells of the model's classes in split {split!r} of {[s.mod for s in self.specs]}."
            raise ContractError(msg)
        class_index = pd.Index(self.classes_)
        sample_labels = np.full(len(names), -1, dtype=np.int64)
        pools = []
        for s, sm, tg, kp, data in zip(
            self.specs, samples_per_input, targets_per_input, keep_per_input, tensors, strict=True
        ):
            rows = np.flatnonzero(kp)
            codes = names.get_indexer(sm[rows])
            labels = class_index.get_indexer(tg[rows])
            first = np.full(len(names), -1, dtype=np.int64)
            first[codes[::-1]] = labels[::-1]  # one label per sample; check they all agree
            mixed = (first[codes] != labels) | (
                (sample_labels[codes] >= 0) & (sample_labels[codes] != labels)
            )
            if mixed.any():
                bad = names[codes[np.flatnonzero(mixed)[0]]]
                msg = (
                    f"sample {bad!r} (obs[{a['sample_key']!r}]) has more than one value of obs[{a['target_key']!r}] "
                    f"across mdata.mod[{s.mod!r}] and the other inputs; a sample must have one treatment."
                )
                raise ContractError(msg)
            sample_labels = np.where(first >= 0, first, sample_labels)
            pools.append(SamplePools.build(data, rows, codes, len(names)))
        anchor = self.anchor_
        anchor_rows = np.flatnonzero(keep_per_input[anchor])
        anchor_codes = names.get_indexer(samples_per_input[anchor][anchor_rows])
        ok = np.ones(anchor_rows.size, dtype=bool)
        for i, pool in enumerate(pools):
            if i != anchor:
                ok &= pool.counts.numpy()[anchor_codes] > 0
        if not ok.all():
            lacking = sorted(set(names[anchor_codes[~ok]]))
            if not ok.any():
                msg = f"no sample of split {split!r} has cells in every input modality {[s.mod for s in self.specs]}."
                raise ContractError(msg)
            if warn:
                warnings.warn(
                    f"split {split!r}: samples {lacking[:5]} have no cells in some input modality; their "
                    f"{int((~ok).sum())} {self.specs[anchor].mod!r} cells are left out.",
                    MorphomuWarning,
                    stacklevel=3,
                )
            anchor_rows, anchor_codes = anchor_rows[ok], anchor_codes[ok]
        examples = ExampleSet(
            pools,
            anchor=anchor,
            anchor_rows=torch.from_numpy(anchor_rows.astype(np.int64)),
            example_samples=torch.from_numpy(anchor_codes.astype(np.int64)),
            sample_labels=torch.from_numpy(sample_labels),
            k=self.k,
        )
        return examples, names, mdata.mod[self.specs[anchor].mod].obs_names.to_numpy()[anchor_rows]

    # ------------------------------------------------------------------ training
    @train_docstring
    def train(
        self,
        max_epochs: int | None = None,
        *,
        batch_size: int | None = None,
        lr: float | None = None,
        weight_decay: float | None = None,
        early_stopping: bool = True,
        early_stopping_patience: int | None = None,
        gradient_clip_val: float | None = None,
        epoch_size: int | None = None,
        seed: int = 12345,
        eval_seed: int = EVAL_SEED,
        progress: bool = True,
        in_memory: bool | None = None,
        cache_dir: str | os.PathLike | None = None,
        cache_dtype: Literal["float32", "float16"] = "float32",
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        strategy: str | Any | None = None,
        precision: str | int | None = None,
        num_workers: int = 0,
        checkpoint_dir: str | os.PathLike | None = None,
        checkpoint_every_n_steps: int = 1000,
        ckpt_path: str | os.PathLike | None = None,
        **trainer_kwargs: Any,
    ) -> None:
        """Train with AdamW and cross-entropy; keep the weights of the best validation balanced accuracy.

        Unset arguments come from the model's ``hparams``.

        Parameters
        ----------
        max_epochs
            Epochs (100 in the paper).
        batch_size
            Examples per step (4096 in the paper).
        lr
            Learning rate.
        weight_decay
            AdamW weight decay.
        early_stopping
            Stop when the validation balanced accuracy has not improved for ``early_stopping_patience``
            epochs.
        early_stopping_patience
            Patience in epochs (25 in the paper).
        gradient_clip_val
            Gradient-norm clipping (0.5 in the paper).
        epoch_size
            Training examples per epoch; default one per training cell of the anchor input (the input
            with the most training cells). Examples are reshuffled and populations redrawn every epoch.
        seed
            Seed of the training draws (weight initialisation follows torch's global seed).
        eval_seed
            Seed of the fixed validation populations.
        progress
            Show Lightning's progress bar and start-up messages.
        in_memory
            ``True``: load each input matrix into memory. ``False``: write it, sorted by sample, to a
            disk cache and read each batch's cells from it (bounded memory, for larger-than-memory
            data). ``None`` (default): the cache for a backed matrix (``.X`` of a MuData read with
            ``backed=True``) or one whose copy would take more than half of the available memory. Both
            give the same examples; :meth:`predict` and :meth:`evaluate` use the same choice.
        cache_dir
            Directory of the disk caches (default a temporary directory); a cache is removed when the
            model is garbage-collected.
        cache_dtype
            ``'float32'`` (the same values) or ``'float16'`` (half the disk and I/O).
        {train_core}
        """
        self._run_training(
            {
                "max_epochs": max_epochs,
                "batch_size": batch_size,
                "lr": lr,
                "weight_decay": weight_decay,
                "early_stopping": early_stopping,
                "early_stopping_patience": early_stopping_patience,
                "gradient_clip_val": gradient_clip_val,
                "epoch_size": epoch_size,
                "seed": seed,
                "eval_seed": eval_seed,
                "progress": progress,
                "in_memory": in_memory,
                "cache_dir": cache_dir,
                "cache_dtype": cache_dtype,
                "num_workers": num_workers,
            },
            accelerator=accelerator,
            devices=devices,
            strategy=strategy,
            precision=precision,
            checkpoint_dir=checkpoint_dir,
            checkpoint_every_n_steps=checkpoint_every_n_steps,
            ckpt_path=ckpt_path,
            trainer_kwargs=trainer_kwargs,
        )

    # training hooks (models/_training.py); unset arguments come from the model's hparams
    def _train_args(self, args: dict[str, Any]) -> dict[str, Any]:
        check_args({k: args[k] for k in TRAIN_CHECKS if k in args}, TRAIN_CHECKS)
        hp = self.hparams
        args["max_epochs"] = int(hp["max_epochs"] if args["max_epochs"] is None else args["max_epochs"])
        args["batch_size"] = int(hp["batch_size"] if args["batch_size"] is None else args["batch_size"])
        if args["epoch_size"] is None:
            args["epoch_size"] = hp["epoch_size"]
        if args["in_memory"] not in (None, True, False) or args["cache_dtype"] not in ("float32", "float16"):
            msg = (
                f"in_memory must be True, False or None and cache_dtype 'float32' or 'float16', got "
                f"{args['in_memory']!r} and {args['cache_dtype']!r}."
            )
            raise MorphomuError(msg)
        return args

    def _run_config(self, args: dict[str, Any]) -> dict[str, Any]:
        keys = (
            "max_epochs",
            "batch_size",
            "epoch_size",
            "lr",
            "weight_decay",
            "early_stopping",
            "early_stopping_patience",
            "gradient_clip_val",
            "seed",
            "eval_seed",
        )
        return {
            "model": type(self).__name__,
            "setting": self.setting,
            "k": self.k,
            "classes": list(self.classes_),
            "hparams": dict(self.hparams),
            **{k: args[k] for k in keys},
        }

    def _make_datamodule(self, args: dict[str, Any]) -> ClassifierDataModule:
        mdata = self.adata
        self._check_data(mdata)
        self._cache_options = {
            "in_memory": args["in_memory"],
            "cache_dir": args["cache_dir"],
            "cache_dtype": args["cache_dtype"],
        }
        tensors = self._inputs(mdata)
        train, _, _ = self._examples(mdata, C.TRAIN, tensors)
        val, _, _ = self._examples(mdata, C.VAL, tensors)
        if not self.is_trained_:
            for i, pool in enumerate(train.pools):
                data = pool.data.numpy() if isinstance(pool.data, torch.Tensor) else pool.data
                scaler = Standardizer.fit(data, pool.order.numpy())
                self.module.set_standardization(i, scaler.mean, scaler.std)
        epoch_size = args["epoch_size"]
        return self._data_splitter_cls(
            train=train,
            val=val,
            batch_size=args["batch_size"],
            seed=args["seed"],
            eval_seed=args["eval_seed"],
            val_stream=split_stream(C.VAL),
            epoch_size=None if epoch_size is None else int(epoch_size),
            num_workers=args["num_workers"],
        )

    def _make_plan(self, args: dict[str, Any]) -> ClassifierTrainingPlan:
        hp = self.hparams
        return self._training_plan_cls(
            self.module,
            lr=hp["lr"] if args["lr"] is None else args["lr"],
            weight_decay=hp["weight_decay"] if args["weight_decay"] is None else args["weight_decay"],
        )

    def _trainer_defaults(self, args: dict[str, Any], datamodule: ClassifierDataModule) -> dict[str, Any]:
        hp = self.hparams
        clip, patience = args["gradient_clip_val"], args["early_stopping_patience"]
        return {
            "gradient_clip_val": hp["gradient_clip"] if clip is None else clip,
            "use_distributed_sampler": False,  # the data module shards every batch by rank itself
            "early_stopping": args["early_stopping"],
            "early_stopping_monitor": "validation_balanced_accuracy",
            "early_stopping_mode": "max",
            "early_stopping_patience": int(hp["patience"] if patience is None else patience),
            "check_val_every_n_epoch": 1,
            "num_sanity_val_steps": 0,
            "enable_progress_bar": args["progress"],
            "enable_model_summary": False,
        }

    def _training_context(self, args: dict[str, Any]) -> Any:
        return quiet_lightning(not args["progress"])

    def _after_training(self, plan: ClassifierTrainingPlan, args: dict[str, Any]) -> None:
        if plan.best_state is not None:
            self.module.load_state_dict(plan.best_state)
        self.best_epoch_, self.best_validation_score_ = plan.best_epoch, plan.best_score
        self.module.eval()

    # ------------------------------------------------------------------ prediction
    @torch.inference_mode()
    def predict(
        self,
        mdata: MuData | None = None,
        *,
        split: str = C.TEST_WE,
        seed: int = EVAL_SEED,
        batch_size: int | None = None,
    ) -> pd.DataFrame:
        """Predicted class of every example of one split (fixed populations drawn with ``seed``).

        Parameters
        ----------
        mdata
            Data with the registered keys; default the model's own. Never modified.
        split
            Split label whose examples are classified (one per anchor-input cell of the model's classes).
        seed
            Seed of the example draws (the paired cells or populations).
        batch_size
            Examples per forward pass.

        Returns
        -------
        DataFrame indexed by the anchor input's obs names with columns ``sample``, ``true`` and
        ``predicted`` (categoricals over the classes).
        """
        batch_size = optional(check_positive_int)(batch_size, "batch_size")
        if not self.is_trained_:
            msg = "the model is not trained; call model.train() first."
            raise MorphomuError(msg)
        mdata = self.adata if mdata is None else mdata
        self._check_data(mdata)
        tensors = self._inputs(mdata)
        examples, names, obs_names = self._examples(mdata, split, tensors)
        module = self.module.eval()
        device = next(module.parameters()).device
        loader = batch_loader(
            examples,
            batch_size=int(batch_size or self.hparams["batch_size"]),
            seed=seed,
            stream=split_stream(split),
        )
        preds = []
        for batch in loader:
            xs = [batch[f"x{i}"].to(device, non_blocking=True) for i in range(len(self.specs))]
            preds.append(module.logits(xs).argmax(1).cpu())
        pred = torch.cat(preds).numpy() if preds else np.zeros(0, dtype=np.int64)
        cats = pd.CategoricalDtype(self.classes_)
        return pd.DataFrame(
            {
                "sample": names[examples.example_samples.numpy()],
                "true": pd.Categorical.from_codes(examples.labels().numpy(), dtype=cats),
                "predicted": pd.Categorical.from_codes(pred, dtype=cats),
            },
            index=pd.Index(obs_names, name="cell"),
        )

    def evaluate(
        self,
        mdata: MuData | None = None,
        *,
        splits: Sequence[str] | str = C.HELD_OUT_SPLITS,
        seed: int = EVAL_SEED,
        batch_size: int | None = None,
    ) -> pd.DataFrame:
        """Balanced accuracy, macro-F1 and weighted-F1 on each split (scikit-learn on :meth:`predict`).

        Returns
        -------
        DataFrame indexed by split with columns ``balanced_accuracy``, ``macro_f1``, ``weighted_f1`` and
        ``n_examples``.
        """
        splits = [splits] if isinstance(splits, str) else list(splits)
        rows = {}
        for split in splits:
            pred = self.predict(mdata, split=split, seed=seed, batch_size=batch_size)
            rows[split] = {
                **classification_metrics(pred["true"].cat.codes, pred["predicted"].cat.codes),
                "n_examples": len(pred),
            }
        return pd.DataFrame.from_dict(rows, orient="index").rename_axis("split")
