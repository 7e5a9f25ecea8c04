"""The scGeneScope treatment-identification benchmark: train and test classifiers over seeds (and folds)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from .. import _constants as C
from .._core import quiet_lightning, renamed_arguments, resolve_precision
from .._errors import ContractError, MorphomuError
from .._uns import CONTRACT_KEYS, known_keys, plain, records, resolve, store
from .._validation import (
    TEST_SPLITS,
    check_mudata,
    check_obs_keys,
    check_positive_int,
    check_rep,
    get_mod,
    test_split_labels,
)
from ..train._disk_cache import check_cache_options

if TYPE_CHECKING:
    from mudata import MuData

__all__ = ["PAPER_SEEDS", "classify"]

#: The five training seeds of the paper's Tables 1 and 2.
PAPER_SEEDS = (12345, 42, 1234, 99, 7)
#: The single seed of the paper's replicate cross-validation.
CV_SEED = 12345
METRICS = ("balanced_accuracy", "macro_f1", "weighted_f1")


def _light_mudata(
    mdata: MuData,
    specs: Sequence[Any],
    obs_keys: Sequence[str],
    split_key: str,
    splits: Mapping[str, Any] | None,
    *,
    load_backed: bool = True,
) -> MuData:
    """A MuData holding only the inputs' matrices (shared, not copied) and the needed obs columns.

    The classifier registers and reads this object, so the user's MuData is never touched; ``splits``
    (modality -> labels) replaces the split column, e.g. for a cross-validation fold. A backed ``.X``
    is read into memory with ``load_backed``, else kept on disk (the classifier then streams it through
    a disk cache).
    """
    import anndata as ad
    import mudata as md

    mods = {}
    for mod in dict.fromkeys(s.mod for s in specs):
        adata = mdata.mod[mod]
        obs = adata.obs[[k for k in dict.fromkeys(obs_keys) if k in adata.obs.columns]].copy()
        if splits is not None:
            obs[split_key] = splits[mod]
        reps = [s.rep for s in specs if s.mod == mod]
        x = adata.X if None in reps else None
        if x is not None and load_backed and not isinstance(x, np.ndarray):
            from scipy import sparse

            x = x if sparse.issparse(x) else x[:]  # backed .X: read once
        mods[mod] = ad.AnnData(X=x, obs=obs, obsm={r: adata.obsm[r] for r in reps if r is not None})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return md.MuData(mods)


def _known_input_keys(mdata: MuData, mods: Sequence[str]) -> dict[str, Any]:
    """What morphomu's records say about the input modalities, merged; a generated modality's record wins.

    A generator records the keys of the data it learned from, so its output's keys are the surest.
    """
    known = [known_keys(mdata, mod) for mod in mods]
    merged: dict[str, Any] = {}
    # real inputs first, generated ones ("real" is set only by the record of the step that wrote a modality) last
    for keys in sorted(known, key=lambda keys: keys.get("real") is not None):
        merged.update(keys)
    return merged


def _test_splits(light: Mapping[int, MuData], specs: Sequence[Any], split_key: str) -> list[str]:
    """``splits='test'``: the test labels of the split column present in every input (and fold), in order."""
    labels: list[str] | None = None
    for ld in light.values():
        for s in specs:
            mine = test_split_labels(ld.mod[s.mod], split_key, mod=s.mod)
            labels = mine if labels is None else [label for label in labels if label in mine]
    if not labels:
        msg = (
            f"splits='test': the inputs {[s.mod for s in specs]} share no test label of obs[{split_key!r}] "
            "(split_key); pass splits=[...] naming the labels to score."
        )
        raise ContractError(msg)
    return labels


@renamed_arguments(target="treatment_key", test_sets="splits", hparams="preset")
def classify(
    mdata: MuData,
    *,
    inputs: Any,
    setting: Literal["single", "multi"] = "single",
    k: int = 32,
    treatment_key: str | None = None,
    exclude: Sequence[str] | str = (C.CONTROL,),
    sample_key: str | None = None,
    split_key: str | None = None,
    seeds: Sequence[int] | int | None = None,
    cv: bool = False,
    folds: Sequence[int] = (1, 2, 3),
    scheme: str = "scgenescope",
    replicate_key: str = C.REPLICATE_KEY,
    round_key: str = C.ROUND_KEY,
    splits: Sequence[str] | str = TEST_SPLITS,
    preset: str | Mapping[str, Any] = "paper",
    eval_seed: int = 2024,
    accelerator: str = "auto",
    devices: int | list[int] | str = "auto",
    precision: str | int = "auto",
    progress: bool = True,
    in_memory: bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    cache_dtype: Literal["float32", "float16"] = "float32",
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every_n_steps: int = 1000,
    ckpt_path: Literal["last"] | None = None,
    key_added: str = "classify",
    inplace: bool = True,
) -> pd.DataFrame | None:
    """Treatment identification from imaging and/or RNA embeddings: the scGeneScope benchmark.

    Trains a :class:`~morphomu.models.TreatmentClassifier` per seed (and per fold with ``cv=True``) on the
    ``train`` split with early stopping on ``val``, and scores its best checkpoint on the test splits
    with balanced accuracy, macro-F1 and weighted-F1. One call is one row of the PhenoSeq paper's
    Table 1 (``setting='single'``) or Table 2 (``setting='multi'``):

    =========================  ===========================================================
    row                        ``inputs``
    =========================  ===========================================================
    Image (real)               ``('img', 'X_vit')``
    RNA (real)                 ``('rna', 'X_scgpt')``
    RNA (synthetic)            ``('rna_synthetic', 'X_scgpt')``
    Image + RNA (real)         ``[('img', 'X_vit'), ('rna', 'X_scgpt')]``
    Image + RNA (synthetic)    ``[('img', 'X_vit'), ('rna_synthetic', 'X_scgpt')]``
    =========================  ===========================================================

    The unit is a cell; see :class:`~morphomu.models.TreatmentClassifier` for the single- and
    multi-profile examples, how two modalities are paired (by sample, independent cells) and the
    hyper-parameters (the paper's Table 6 per setting and input kind).

    Parameters
    ----------
    mdata
        The experiment; never modified except for ``uns['morphomu'][key_added]``.
    inputs
        One ``(mod, rep)`` (MLP) or two, one imaging and one RNA (DualMLP); ``rep=None`` is ``.X``. The
        kind of an input is read from the modality name (``img...`` imaging, ``rna...`` RNA) or given
        as a third element, ``(mod, rep, 'image' | 'rna')``.
    setting
        ``'single'`` (one cell per example) or ``'multi'`` (``k`` cells of one sample averaged).
    k
        Cells per multi-profile example and input.
    treatment_key
        obs column with the class, present in every input modality (default: from the record of the step
        that wrote an input, e.g. :func:`~morphomu.tl.generate_rna` for ``rna_synthetic``, else
        ``'treatment'``). Formerly ``target``.
    exclude
        Treatments that are not classes (the control by default: 28 classes, chance 1/28).
    sample_key
        obs column with the sample, which pairs the modalities and has one treatment (default: from the
        record of the step that wrote an input, else ``'sample'``).
    split_key
        obs column with the split labels (default: from the record of the step that wrote an input, else
        ``'split'``). With ``cv=True`` each fold's labels replace it on a private copy.
    seeds
        Training seeds; default the paper's five (12345, 42, 1234, 99, 7), or 12345 alone with ``cv=True``.
    cv
        Run the replicate cross-validation: each fold of ``scheme`` relabels the cells by
        :func:`morphomu.pp.assign_split`'s rule on a private copy of the labels (the ``split`` column
        is never overwritten); ``test_he`` is scored in every fold.
    folds
        Folds to run with ``cv=True``.
    scheme
        Split scheme of the cross-validation.
    replicate_key, round_key
        obs columns the cross-validation splits by.
    splits
        Split labels scored: a sequence, one label, or ``'test'`` (default): every label of the split
        column other than ``'train'`` and ``'val'`` that every input has, in category order (``test_we``,
        ``test_he`` for the scGeneScope split). Formerly ``test_sets``.
    preset
        Classifier sizes and optimiser settings: ``'paper'`` (Table 6, the benchmark's protocol),
        ``'fast'``, ``'tiny'`` or a dict of overrides such as ``{'preset': 'paper', 'max_epochs': 20}``
        (see :func:`morphomu.models._classifier.resolve_hparams`). Formerly ``hparams``.
    eval_seed
        Seed of the fixed validation and test examples (2024 as scGeneScope).
    accelerator, devices
        Lightning accelerator and devices.
    precision
        ``'auto'`` (default): bf16 mixed precision where the device computes in bf16 fast, else float32
        (see :meth:`~morphomu.models.TreatmentClassifier.train`); or ``'32-true'``, ``'bf16-mixed'``,
        ``'16-mixed'``. Recorded, resolved, in the results' ``params``.
    progress
        Show a progress bar over the runs and Lightning's per-epoch bar.
    in_memory
        ``None`` (default): an input held on disk (``.X`` of a MuData read with ``backed=True``) is
        written once, sorted by sample, to a disk cache that every seed and fold reads its batches from
        (bounded memory, for larger-than-memory data); ``True`` loads it into memory; ``False`` caches
        in-memory inputs too. The results are the same.
    cache_dir
        Directory of the disk caches (default a temporary directory); removed when the call ends.
    cache_dtype
        ``'float32'`` (the same values) or ``'float16'`` (half the disk and I/O).
    checkpoint_dir
        Directory for resumable training checkpoints, one sub-directory ``fold{f}-seed{s}`` per run (see
        :meth:`~morphomu.models.TreatmentClassifier.train`); ``None`` writes none.
    checkpoint_every_n_steps
        Optimiser steps between checkpoints.
    ckpt_path
        ``'last'``: continue the runs of an interrupted call from their checkpoints in ``checkpoint_dir``
        (runs without one start anew); the results are those of an uninterrupted call.
    key_added
        Entry of ``mdata.uns['morphomu']`` written.
    inplace
        Write the results (and return ``None``); otherwise return the results table only.

    Returns
    -------
    With ``inplace=False`` the tidy results: one row per ``(seed, fold, test_set)`` (``test_set`` is one of
    ``splits``) with columns ``seed``,
    ``fold``, ``test_set``, ``balanced_accuracy``, ``macro_f1``, ``weighted_f1``, ``n_examples``,
    ``best_epoch`` and ``best_val_balanced_accuracy`` (``fold`` is the CV fold, or without ``cv`` the fold
    :func:`~morphomu.pp.assign_split` recorded for ``split_key``, 0 when unknown). With ``inplace=True``, ``None``, and
    ``mdata.uns['morphomu'][key_added]`` holds ``results`` (that table), ``summary`` (per test set: mean
    and standard deviation, ddof=1, of each metric over the runs, and ``n_runs``), ``classes``, ``chance``
    (1 / number of classes) and ``params`` (the arguments, under their current names; ``inputs`` as
    ``'mod/rep'`` labels, ``'mod/X'`` for ``.X``).

    Examples
    --------
    >>> import morphomu as mm
    >>> mm.tl.classify(mdata, inputs=("img", "X_vit"), setting="single")  # doctest: +SKIP
    >>> mdata.uns["morphomu"]["classify"]["summary"]  # doctest: +SKIP
    >>> mm.pl.classification(mdata)  # doctest: +SKIP
    """
    import torch
    from tqdm.auto import tqdm

    from ..models._classifier import TreatmentClassifier, input_kind, parse_inputs, resolve_hparams
    from ..pp._split import SCHEMES, SPLIT_REMEDY, split_labels

    # --- every check before any work ---------------------------------------------------------------
    check_mudata(mdata)
    if ckpt_path not in (None, "last"):
        msg = f"ckpt_path must be None or 'last' (each run resumes its own checkpoint), got {ckpt_path!r}."
        raise MorphomuError(msg)
    if ckpt_path == "last" and checkpoint_dir is None:
        msg = "ckpt_path='last' resumes the runs checkpointed in checkpoint_dir: pass checkpoint_dir too."
        raise MorphomuError(msg)
    if ckpt_path is None and checkpoint_dir is not None and any(Path(checkpoint_dir).glob("*/last.ckpt")):
        msg = (
            f"checkpoint_dir={str(checkpoint_dir)!r} already holds checkpoints of runs; pass ckpt_path='last' to "
            "resume them, or another checkpoint_dir."
        )
        raise MorphomuError(msg)
    specs = parse_inputs(inputs, data=mdata)
    hparams = resolve_hparams(preset, setting, input_kind(specs))
    k = check_positive_int(k, "k")
    precision = resolve_precision(precision, accelerator)
    checkpoint_every_n_steps = check_positive_int(checkpoint_every_n_steps, "checkpoint_every_n_steps")
    if seeds is None:
        seeds = (CV_SEED,) if cv else PAPER_SEEDS
    seeds = [seeds] if isinstance(seeds, int | np.integer) else list(seeds)
    if not seeds or not all(isinstance(s, int | np.integer) for s in seeds):
        msg = f"seeds must be a non-empty sequence of integers, got {seeds!r}."
        raise MorphomuError(msg)
    check_cache_options(in_memory, cache_dir, cache_dtype)
    if not isinstance(splits, str) and (
        not isinstance(splits, Sequence) or not splits or not all(isinstance(x, str) for x in splits)
    ):
        msg = f"splits must be 'test', a split label or a non-empty sequence of labels, got {splits!r}."
        raise MorphomuError(msg)
    exclude = [exclude] if isinstance(exclude, str) else [str(e) for e in exclude]
    for s in specs:
        get_mod(mdata, s.mod, arg="inputs")
    # keys follow the data: the caller's, else what the records of the inputs say, else the contract's
    treatment_key, sample_key, split_key = resolve(
        {"treatment_key": treatment_key, "sample_key": sample_key, "split_key": split_key},
        _known_input_keys(mdata, [s.mod for s in specs]),
        CONTRACT_KEYS,
    ).values()
    for s in specs:
        adata = mdata.mod[s.mod]
        check_rep(adata, s.rep, mod=s.mod, arg="inputs")
        check_obs_keys(adata, {"treatment_key": treatment_key, "sample_key": sample_key}, mod=s.mod)
    fold_splits: dict[int, dict[str, Any] | None] = {}
    if cv:
        if scheme not in SCHEMES:
            msg = f"scheme={scheme!r} is unknown; choose one of {sorted(SCHEMES)}."
            raise ContractError(msg)
        folds = [int(f) for f in folds]
        bad = [f for f in folds if f not in SCHEMES[scheme].folds]
        if bad or not folds:
            msg = f"folds={folds}: scheme {scheme!r} has folds {sorted(SCHEMES[scheme].folds)}."
            raise MorphomuError(msg)
        for f in folds:
            fold_splits[f] = {
                s.mod: split_labels(
                    mdata.mod[s.mod],
                    SCHEMES[scheme],
                    f,
                    mod=s.mod,
                    replicate_key=replicate_key,
                    round_key=round_key,
                )
                for s in specs
            }
    else:
        for s in specs:
            check_obs_keys(mdata.mod[s.mod], {"split_key": split_key}, mod=s.mod)
        fold_splits[0] = None
    obs_keys = [treatment_key, sample_key, split_key]
    light = {
        f: _light_mudata(mdata, specs, obs_keys, split_key, sp, load_backed=in_memory is True)
        for f, sp in fold_splits.items()
    }
    for f, ld in light.items():  # labels and classes are checked for every fold before training starts
        for s in specs:
            split = ld.mod[s.mod].obs[split_key].astype(str)
            for label in (C.TRAIN, C.VAL):
                if not (split == label).any():
                    msg = (
                        f"mdata.mod[{s.mod!r}].obs[{split_key!r}] has no {label!r} cells{f' in fold {f}' if cv else ''}. "
                        f"{SPLIT_REMEDY}"
                    )
                    raise ContractError(msg)
    if isinstance(splits, str):
        splits = _test_splits(light, specs, split_key) if splits == TEST_SPLITS else [splits]
    splits = [str(x) for x in splits]

    # --- training and testing ----------------------------------------------------------------------
    given_fold = 0  # the user's own split; its fold when mm.pp.assign_split recorded one
    for key, entry in records(mdata, tool="assign_split"):
        if key == split_key:
            given_fold = int(plain(entry["params"].get("fold", 0)) or 0)
    rows = []
    classes: list[str] = []
    runs = [(f, seed) for f in fold_splits for seed in seeds]
    bar = tqdm(runs, desc=f"classify {setting} {'+'.join(s.label for s in specs)}", disable=not progress)
    caches: dict = {}
    try:
        for fold, seed in bar:
            ld = light[fold]
            with quiet_lightning(not progress):
                TreatmentClassifier.setup_mudata(
                    ld,
                    inputs=[(s.mod, s.rep, s.kind) for s in specs],
                    treatment_key=treatment_key,
                    sample_key=sample_key,
                    split_key=split_key,
                )
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(seed))
                model = TreatmentClassifier(ld, setting=setting, k=int(k), exclude=exclude, preset=preset)
            classes = model.classes_
            model._row_caches = caches  # one disk cache per backed input, shared by every seed and fold
            run_dir = None if checkpoint_dir is None else Path(checkpoint_dir) / f"fold{fold}-seed{seed}"
            model.train(
                seed=int(seed),
                eval_seed=eval_seed,
                accelerator=accelerator,
                devices=devices,
                precision=precision,
                progress=progress,
                in_memory=in_memory,
                cache_dir=cache_dir,
                cache_dtype=cache_dtype,
                checkpoint_dir=run_dir,
                checkpoint_every_n_steps=checkpoint_every_n_steps,
                ckpt_path=ckpt_path,
            )
            scores = model.evaluate(splits=splits, seed=eval_seed)
            for test_set, r in scores.iterrows():
                rows.append(
                    {
                        "seed": int(seed),
                        "fold": int(fold) if cv else given_fold,
                        "test_set": str(test_set),
                        **{m: float(r[m]) for m in METRICS},
                        "n_examples": int(r["n_examples"]),
                        "best_epoch": int(model.best_epoch_),
                        "best_val_balanced_accuracy": float(model.best_validation_score_),
                    }
                )
    finally:
        for _, cache in caches.values():
            cache.close()
    results = pd.DataFrame(rows)
    if not inplace:
        return results
    grouped = results.groupby("test_set", sort=False)[list(METRICS)]
    summary = pd.concat([grouped.mean().add_suffix("_mean"), grouped.std(ddof=1).add_suffix("_std")], axis=1)
    summary = summary[[f"{m}_{s}" for m in METRICS for s in ("mean", "std")]]
    summary["n_runs"] = results.groupby("test_set", sort=False).size()
    summary.index.name = "test_set"
    store(
        mdata,
        key_added,
        {
            "results": results,
            "summary": summary,
            "classes": list(classes),
            "chance": 1.0 / len(classes),
            "params": {
                "inputs": [f"{s.mod}/{s.rep or 'X'}" for s in specs],
                "kinds": [s.kind for s in specs],
                "setting": setting,
                "k": int(k) if setting == "multi" else 1,
                "treatment_key": treatment_key,
                "exclude": exclude,
                "sample_key": sample_key,
                "split_key": split_key,
                "seeds": [int(s) for s in seeds],
                "cv": bool(cv),
                "folds": [int(f) for f in fold_splits] if cv else [given_fold],
                "splits": splits,
                # the name (or the overrides) given, and the values it resolved to
                "preset": preset if isinstance(preset, str) else dict(preset),
                "hparams": hparams,
                "eval_seed": int(eval_seed),
                "precision": precision,
            },
        },
        tool="classify",
    )
    return None
