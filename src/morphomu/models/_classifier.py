"""TreatmentClassifier: the scGeneScope treatment-identification classifiers (MLP / DualMLP)."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import torch
from scvi.train import TrainRunner

from .. import _constants as C
from .._core import Standardizer, quiet_lightning, renamed_arguments, split_stream
from .._errors import ContractError, MorphomuError
from .._validation import (
    check_mudata,
    check_nonnegative,
    check_nonnegative_int,
    check_positive,
    check_positive_int,
    optional,
)
from ..module._classifier import DualMLPClassifier, MLPClassifier
from ..pp._split import SPLIT_REMEDY
from ..train._classifier import (
    ClassifierDataModule,
    ClassifierTrainingPlan,
    ExampleSet,
    batch_loader,
    classification_metrics,
)
from ..train._disk_cache import CacheOptions, check_cache_options
from ._base import MorphomuModel, feature_field, n_registered_columns
from ._classifier_data import RowCaches, input_matrices, obs_column, split_examples
from ._classifier_hparams import DUAL_KEYS, HPARAMS, check_setting, resolve_hparams
from ._classifier_inputs import ClassifierInput, check_input_data, input_kind, parse_inputs
from ._training import TrainingMixin, train_docstring

if TYPE_CHECKING:
    from mudata import MuData

__all__ = [
    "HPARAMS",
    "ClassifierInput",
    "TreatmentClassifier",
    "classification_metrics",
    "input_kind",
    "parse_inputs",
    "resolve_hparams",
]

logger = logging.getLogger(__name__)

#: Seed of the fixed validation / test populations (as scGeneScope).
EVAL_SEED = 2024

#: Checks of :meth:`TreatmentClassifier.train`'s arguments (``None``: from the model's ``preset``), run
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

#: Former names of arguments that a saved model stores: its ``init_params_`` (``hparams``) and the
#: setup arguments of its registry (``target_key``). A model saved under them loads for good, silently
#: (the user passed nothing), unlike a caller's former name, which warns for one release.
SAVED_INIT_NAMES = {"hparams": "preset"}
SAVED_SETUP_NAMES = {"target_key": "treatment_key"}


def _current_names(kwargs: dict[str, Any], renames: Mapping[str, str]) -> dict[str, Any]:
    """``kwargs`` with stored former names replaced by the current ones (a current name given wins)."""
    return {(renames[k] if k in renames and renames[k] not in kwargs else k): v for k, v in kwargs.items()}


def _loads_saved_setup_names(func: Any) -> Any:
    """Let :meth:`~TreatmentClassifier.load` set up data with a registry saved before the renames.

    ``load`` calls ``setup_mudata(mdata, source_registry=..., **saved_setup_args)``; the saved names are
    mapped before :func:`~morphomu._core._renamed.renamed_arguments` would warn about them.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if "source_registry" in kwargs:
            kwargs = _current_names(kwargs, SAVED_SETUP_NAMES)
        return func(*args, **kwargs)

    return wrapper


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
    treatments present in the train split of every input, minus ``exclude``.

    Parameters
    ----------
    mdata
        MuData registered with :meth:`setup_mudata`.
    setting
        ``'single'`` or ``'multi'``.
    k
        Cells averaged per example and input in the multi-profile setting.
    exclude
        Treatments that are not classes (their cells are ignored), the control by default.
    preset
        Sizes and optimiser settings: ``'paper'`` (Table 6, the benchmark's protocol), ``'fast'``,
        ``'tiny'``, or a dict of overrides such as ``{'preset': 'tiny', 'max_epochs': 5}`` (its
        ``'preset'`` key names the base, default ``'paper'``; see
        :func:`~morphomu.models._classifier.resolve_hparams`). Formerly ``hparams``.

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
    _train_checks = TRAIN_CHECKS

    @renamed_arguments(hparams="preset")
    def __init__(
        self,
        mdata: MuData,
        *,
        setting: Literal["single", "multi"] = "single",
        k: int = 32,
        exclude: Sequence[str] = (C.CONTROL,),
        preset: str | Mapping[str, Any] = "paper",
    ) -> None:
        check_setting(setting)
        k = check_positive_int(k, "k")
        super().__init__(mdata)
        self.specs = parse_inputs([tuple(x) for x in self.setup_args["inputs"]])
        self.setting, self.k = setting, int(k) if setting == "multi" else 1
        self.kind = input_kind(self.specs)
        # the resolved values (a preset's with the overrides); train's unset arguments come from them
        self.hparams = resolve_hparams(preset, setting, self.kind)
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
                *n_features, len(self.classes_), **{key: hp[key] for key in DUAL_KEYS}
            )
        self.best_epoch_: int | None = None
        self.best_validation_score_: float | None = None
        # how inputs are read: set by each train call, used by predict and evaluate too
        self._cache_options = CacheOptions()
        # disk caches of backed inputs, reused by later calls; tl.classify shares one dict between models
        self._row_caches: RowCaches = {}
        n_params = sum(p.numel() for p in self.module.parameters())
        self._model_summary_string = (
            f"TreatmentClassifier ({setting}-profile{f', k={self.k}' if setting == 'multi' else ''}, "
            f"{type(self.module).__name__}) on {' + '.join(s.label for s in self.specs)}: "
            f"{len(self.classes_)} classes, {n_params:,} parameters."
        )
        self.init_params_ = self._get_init_params(locals())

    @classmethod
    def _construct_saved(
        cls, adata: Any, registry: dict[str, Any], init: dict[str, Any], extra_init: dict[str, Any]
    ) -> Any:
        # a model saved before the renames stores init_params_ under the former names
        init = {**init, "non_kwargs": _current_names(dict(init.get("non_kwargs", {})), SAVED_INIT_NAMES)}
        return super()._construct_saved(adata, registry, init, extra_init)

    # ------------------------------------------------------------------ setup
    @classmethod
    @_loads_saved_setup_names
    @renamed_arguments(target_key="treatment_key")
    def setup_mudata(
        cls,
        mdata: MuData,
        *,
        inputs: Any,
        treatment_key: str = C.TREATMENT_KEY,
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
        treatment_key
            obs column with the class (the treatment). Formerly ``target_key``.
        sample_key
            obs column with the sample; a sample has a single treatment.
        split_key
            obs column with ``train`` / ``val`` / test labels.
        **kwargs
            Passed to scvi-tools' registration.
        """
        specs = parse_inputs(inputs, data=mdata)
        setup_method_args = cls._get_setup_method_args(
            cls=cls,
            mdata=mdata,
            inputs=[[s.mod, s.rep, s.kind] for s in specs],
            treatment_key=treatment_key,
            sample_key=sample_key,
            split_key=split_key,
        )
        check_mudata(mdata)
        keys = {"treatment_key": treatment_key, "sample_key": sample_key, "split_key": split_key}
        check_input_data(mdata, specs, keys, arg="inputs")

        cls._register_mudata(
            mdata,
            [feature_field(f"x{i}", s.rep, s.mod) for i, s in enumerate(specs)],
            setup_method_args,
            **kwargs,
        )

    @classmethod
    def setup_anndata(cls, *args: Any, **kwargs: Any) -> None:
        """Not available: use :meth:`setup_mudata` (inputs are modalities of a MuData)."""
        msg = "TreatmentClassifier reads modalities of a MuData: use TreatmentClassifier.setup_mudata(mdata, inputs=...)."
        raise MorphomuError(msg)

    def _n_features(self) -> list[int]:
        return [n_registered_columns(self.registry_, f"x{i}") for i in range(len(self.specs))]

    # ------------------------------------------------------------------ data
    def _obs(self, mdata: MuData, s: ClassifierInput, key: str) -> np.ndarray:
        return obs_column(mdata, s, self.setup_args[key])

    def _inputs(self, mdata: MuData) -> list[Any]:
        """Each input's matrix, read as the last :meth:`train` call chose (default: a cache when backed)."""
        return input_matrices(
            mdata,
            self.specs,
            sample_key=self.setup_args["sample_key"],
            options=self._cache_options,
            caches=self._row_caches,
        )

    def _train_classes(self, mdata: MuData) -> list[str]:
        treatment_key = self.setup_args["treatment_key"]
        per_input = []
        for s in self.specs:
            split = self._obs(mdata, s, "split_key")
            values = self._obs(mdata, s, "treatment_key")[split == C.TRAIN]
            if values.size == 0:
                msg = (
                    f"mdata.mod[{s.mod!r}].obs[{self.setup_args['split_key']!r}] has no {C.TRAIN!r} cells. "
                    f"{SPLIT_REMEDY}"
                )
                raise ContractError(msg)
            per_input.append(set(values) - set(self.exclude))
        classes = sorted(set.intersection(*per_input))
        if len(classes) < 2:
            msg = (
                f"the train split has {len(classes)} class(es) {classes} of obs[{treatment_key!r}] (after excluding "
                f"{self.exclude}) in every input; a classifier needs at least two."
            )
            raise ContractError(msg)
        return classes

    def _anchor(self, mdata: MuData) -> int:
        counts = []
        for s in self.specs:
            keep = (self._obs(mdata, s, "split_key") == C.TRAIN) & np.isin(
                self._obs(mdata, s, "treatment_key"), self.classes_
            )
            counts.append(int(keep.sum()))
        return int(np.argmax(counts))

    def _check_data(self, mdata: MuData) -> None:
        keys = {key: self.setup_args[key] for key in ("treatment_key", "sample_key", "split_key")}
        check_input_data(mdata, self.specs, keys, arg="mdata", n_features=self._n_features())

    def _examples(
        self, mdata: MuData, split: str, tensors: list[Any], *, warn: bool = True
    ) -> tuple[ExampleSet, pd.Index, np.ndarray]:
        """Examples of one split: pools per input, anchor rows, labels; also sample names and anchor obs names."""
        return split_examples(
            mdata,
            self.specs,
            split,
            tensors,
            keys=self.setup_args,
            classes=self.classes_,
            exclude=self.exclude,
            anchor=self.anchor_,
            k=self.k,
            warn=warn,
        )

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
        seed: int = 0,
        eval_seed: int = EVAL_SEED,
        progress: bool = True,
        in_memory: bool | None = None,
        cache_dir: str | os.PathLike | None = None,
        cache_dtype: Literal["float32", "float16"] = "float32",
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        strategy: str | Any | None = None,
        precision: str | int = "auto",
        compile: bool = False,
        num_workers: int = 0,
        checkpoint_dir: str | os.PathLike | None = None,
        checkpoint_every_n_steps: int = 1000,
        ckpt_path: str | os.PathLike | None = None,
        verbose: bool = False,
        **trainer_kwargs: Any,
    ) -> None:
        """Train with AdamW and cross-entropy; keep the weights of the best validation balanced accuracy.

        Unset arguments come from the model's ``preset``.

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
        self._run_training(locals())

    # training hooks (models/_training.py); unset arguments come from the model's preset
    def _train_args(self, args: dict[str, Any]) -> dict[str, Any]:
        args = super()._train_args(args)  # the checks; the defaults come from the preset
        hp = self.hparams
        args["max_epochs"] = int(hp["max_epochs"] if args["max_epochs"] is None else args["max_epochs"])
        args["batch_size"] = int(hp["batch_size"] if args["batch_size"] is None else args["batch_size"])
        if args["epoch_size"] is None:
            args["epoch_size"] = hp["epoch_size"]
        args["in_memory"], args["cache_dir"], args["cache_dtype"] = check_cache_options(
            args["in_memory"], args["cache_dir"], args["cache_dtype"]
        )
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
            "hparams": dict(self.hparams),  # the key checkpoints were written with: they still resume
            **{k: args[k] for k in keys},
        }

    def _make_datamodule(self, args: dict[str, Any]) -> ClassifierDataModule:
        mdata = self.adata
        self._check_data(mdata)
        self._cache_options = CacheOptions(args["in_memory"], args["cache_dir"], args["cache_dtype"])
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
