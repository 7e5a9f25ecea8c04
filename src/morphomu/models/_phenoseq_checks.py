"""PhenoSeq's input contract: checks of the data and of the arguments, run before any work."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .. import _constants as C
from .._errors import ContractError, MorphomuError
from .._validation import (
    check_fraction,
    check_mudata,
    check_n_steps,
    check_nonnegative,
    check_nonnegative_int,
    check_number,
    check_obs_keys,
    check_positive,
    check_positive_int,
    check_rep,
    check_sampler,
    check_unique_obs_names,
    get_mod,
    optional,
    sampler_steps_check,
)
from ..pp._split import SPLIT_REMEDY

__all__ = [
    "GENERATE_CHECKS",
    "SIZE_CHECKS",
    "TRAIN_CHECKS",
    "check_context_cells",
    "check_data",
    "check_n_cells",
    "check_training_split",
    "imaging_fit_rows",
    "select_samples",
]


def check_n_cells(value: Any, arg: str = "n_cells_per_sample") -> int | str:
    """Return ``'match'`` or a positive ``int``, raising otherwise (a generation's cells per sample)."""
    if isinstance(value, str) and value == "match":
        return value
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        msg = f"{arg} must be 'match' (as many as the sample's real RNA cells) or a positive integer, got {value!r}."
        raise MorphomuError(msg)
    return int(value)


#: Checks of the network sizes (preset values and overrides), run before anything is built.
SIZE_CHECKS: dict[str, Any] = {
    **dict.fromkeys(
        ("n_hidden", "n_layers", "n_heads", "n_encoder_heads", "n_time", "ff_mult", "n_context_cells"),
        check_positive_int,
    ),
    "n_encoder_layers": check_nonnegative_int,  # 0: the context encoder is its input projection alone
    "dropout": check_fraction,
}
#: Checks of :meth:`PhenoSeq.train`'s arguments (``None``: the preset's default), run before any work; the
#: tools that train a PhenoSeq run them on their ``train_kwargs`` first too.
TRAIN_CHECKS: dict[str, Any] = {
    "max_epochs": optional(check_positive_int),
    "batch_size": optional(check_positive_int),
    "lr": optional(check_positive),
    "weight_decay": check_nonnegative,
    "warmup_epochs": optional(check_nonnegative),
    "early_stopping_patience": check_nonnegative_int,
    "ema_decay": check_fraction,
    "num_workers": check_nonnegative_int,
}


#: Checks of :meth:`PhenoSeq.generate`'s arguments, run before any work (also by the tools); the last
#: checks ``n_steps`` and ``eta`` against ``sampler`` (see ``check_args``).
GENERATE_CHECKS: dict[Any, Any] = {
    "n_steps": check_n_steps,
    "sampler": check_sampler,
    "eta": check_nonnegative,
    "guidance_scale": check_number,
    "batch_size": check_positive_int,
    "n_cells_per_sample": check_n_cells,
    ("sampler", "n_steps", "eta"): sampler_steps_check("phenoseq"),
}


def check_context_cells(
    adata: Any,
    *,
    mod: str,
    rep: str | None,
    rep_arg: str,
    sample_key: str,
    treatment_key: str,
    n_features: int | None = None,
) -> None:
    """Checks of the modality whose cells condition the diffusion, one treatment per sample included.

    ``rep_arg`` names the representation's argument in errors; ``n_features`` is the trained width.
    """
    if adata.n_obs == 0:
        msg = f"mdata.mod[{mod!r}] has no cells."
        raise ContractError(msg)
    check_obs_keys(adata, {"sample_key": sample_key, "treatment_key": treatment_key}, mod=mod)
    check_rep(adata, rep, mod=mod, arg=rep_arg, n_features=n_features)
    n_treat = adata.obs.groupby(adata.obs[sample_key].astype(str), observed=True)[treatment_key].nunique()
    if (n_treat > 1).any():
        msg = (
            f"samples {list(n_treat.index[n_treat > 1][:5])} of mdata.mod[{mod!r}] have several treatments "
            f"(obs[{treatment_key!r}]); a sample must be one treated unit."
        )
        raise ContractError(msg)


def check_data(
    mdata: Any,
    *,
    image_mod: str,
    rna_mod: str | None,
    image_rep: str | None,
    rna_rep: str | None,
    sample_key: str,
    treatment_key: str,
    n_image: int | None = None,
    n_rna: int | None = None,
) -> None:
    """All input checks of PhenoSeq (nothing is written)."""
    check_mudata(mdata)
    img = get_mod(mdata, image_mod, arg="image_mod")
    check_context_cells(
        img,
        mod=image_mod,
        rep=image_rep,
        rep_arg="image_rep",
        sample_key=sample_key,
        treatment_key=treatment_key,
        n_features=n_image,
    )
    if rna_mod is None:
        return
    rna = get_mod(mdata, rna_mod, arg="rna_mod")
    if rna.n_obs == 0:
        msg = f"mdata.mod[{rna_mod!r}] has no cells."
        raise ContractError(msg)
    check_obs_keys(rna, {"sample_key": sample_key}, mod=rna_mod)
    check_rep(rna, rna_rep, mod=rna_mod, arg="rna_rep", n_features=n_rna)
    img_samples = set(img.obs[sample_key].astype(str))
    rna_samples = pd.unique(rna.obs[sample_key].astype(str))
    missing = [s for s in rna_samples if s not in img_samples]
    if len(missing) == len(rna_samples):
        msg = (
            f"mdata.mod[{image_mod!r}] and mdata.mod[{rna_mod!r}] share no sample (obs[{sample_key!r}]); "
            f"e.g. imaging {sorted(img_samples)[:3]} vs RNA {sorted(rna_samples)[:3]}. The modalities are paired "
            "by sample, so they must use the same sample names."
        )
        raise ContractError(msg)
    if missing:
        msg = (
            f"{len(missing)} samples of mdata.mod[{rna_mod!r}] have no imaging cells in mdata.mod[{image_mod!r}] "
            f"(obs[{sample_key!r}]), e.g. {sorted(missing)[:5]}; every RNA sample needs imaging cells to "
            "condition on. Subset the RNA modality to samples that were imaged."
        )
        raise ContractError(msg)
    check_unique_obs_names(mdata)


def check_training_split(rna: Any, split_key: str, *, mod: str) -> np.ndarray:
    """The RNA cells' split labels, refusing data without ``train`` and ``val`` cells (training needs both)."""
    check_obs_keys(rna, {"split_key": split_key}, mod=mod)
    split = rna.obs[split_key].astype(str).to_numpy()
    missing = [label for label in (C.TRAIN, C.VAL) if not (split == label).any()]
    if missing:
        msg = (
            f"mdata.mod[{mod!r}].obs[{split_key!r}] (split_key) has no {missing} cells; training needs "
            f"'train' and 'val' (found {sorted(set(split))}). {SPLIT_REMEDY}"
        )
        raise ContractError(msg)
    return split


def select_samples(
    mdata: Any,
    a: dict[str, Any],
    samples: Any,
    n_cells_per_sample: int | str,
) -> tuple[pd.Index, np.ndarray]:
    """The samples to generate for (default every imaged sample, sorted) and the cells of each.

    ``a`` holds the setup keys; ``'match'`` counts each sample's real RNA cells.
    """
    img = mdata.mod[a["image_mod"]]
    available = pd.unique(img.obs[a["sample_key"]].astype(str).to_numpy())
    if samples is None:
        names = pd.Index(sorted(available))
    else:
        names = pd.Index([samples] if isinstance(samples, str) else [str(s) for s in samples])
        unknown = names[~names.isin(available)]
        if len(unknown):
            msg = (
                f"samples {list(unknown[:5])} have no imaging cells in mdata.mod[{a['image_mod']!r}] "
                f"(obs[{a['sample_key']!r}])."
            )
            raise ContractError(msg)
        if names.has_duplicates:
            msg = "samples contains duplicates."
            raise MorphomuError(msg)
    if n_cells_per_sample == "match":
        rna_samples = mdata.mod[a["rna_mod"]].obs[a["sample_key"]].astype(str)
        counts = rna_samples.value_counts().reindex(names, fill_value=0).to_numpy()
        if samples is not None and (counts == 0).any():
            msg = (
                f"samples {list(names[counts == 0][:5])} have no RNA cells to match; pass "
                "n_cells_per_sample=<int>."
            )
            raise ContractError(msg)
    else:
        counts = np.full(len(names), int(n_cells_per_sample))
    return names, counts


def imaging_fit_rows(
    img: Any, *, split_key: str, train_samples: Any, sample_key: str, mod: str
) -> np.ndarray:
    """Rows of the imaging cells that the imaging standardisation is fit on, raising when there are none.

    The ``train`` split's cells when the imaging modality has ``split_key``, else the cells of the train
    samples (``train_samples``: names of the samples whose RNA cells are in the train split).
    """
    if split_key in img.obs.columns:
        rows = np.flatnonzero(img.obs[split_key].astype(str).to_numpy() == C.TRAIN)
    else:
        rows = np.flatnonzero(np.isin(img.obs[sample_key].astype(str).to_numpy(), np.asarray(train_samples)))
    if rows.size == 0:
        msg = f"mdata.mod[{mod!r}] has no train-split imaging cells to fit standardisation on."
        raise ContractError(msg)
    return rows
