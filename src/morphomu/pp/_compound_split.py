"""``mm.pp.assign_compound_split``: in-distribution / out-of-distribution compounds for morphology generation."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .. import _constants as C
from .._errors import ContractError, MorphomuError
from .._uns import store
from .._validation import check_mudata, check_obs_keys, get_mod

if TYPE_CHECKING:
    from mudata import MuData

__all__ = ["OOD_FRACTION", "assign_compound_split"]

#: Default share of compounds held out: the TRIDENT paper holds out 54 of its 98 compounds.
OOD_FRACTION = 54 / 98
_ID, _OOD = C.COMPOUND_SPLITS


def assign_compound_split(
    mdata: MuData,
    *,
    n_ood: int | None = None,
    ood_fraction: float = OOD_FRACTION,
    seed: int = 0,
    treatment_key: str = C.TREATMENT_KEY,
    control: str = C.CONTROL,
    key_added: str = C.COMPOUND_SPLIT_KEY,
    mods: str | list[str] | None = None,
    copy: bool = False,
) -> MuData | None:
    """Label every compound in-distribution (``'id'``) or out-of-distribution (``'ood'``, held out entirely).

    The protocol of morphology generation (TRIDENT): a generator is trained on the ``id`` compounds and
    evaluated on held-out images of those compounds (ID test) and on every image of the ``ood`` compounds,
    which it never saw (OOD test). The OOD compounds are drawn at random (``seed``) among the treatments,
    the same ones in every modality; the ``control`` is always ``id`` (a generator needs it and it is no
    compound to generalise to).

    The label goes in its own obs column ``key_added`` and never touches ``split``. The in-distribution
    train / test division of images goes by replicate or well, never by random images of one well (tiles
    of one well share its plate, density and staining, so a random division would leak them into the
    test): use the ``split`` column of :func:`morphomu.pp.assign_split` together with this one, e.g. train
    on ``split == 'train'`` and ``compound_split == 'id'``; ID test = held-out splits of ``id`` compounds;
    OOD test = ``compound_split == 'ood'``.

    Parameters
    ----------
    mdata
        The experiment.
    n_ood
        Number of compounds (the control excluded) to hold out; overrides ``ood_fraction``.
    ood_fraction
        Share of the compounds (control excluded) to hold out when ``n_ood`` is ``None``, rounded; default
        the paper's 54 / 98. At least one compound stays on each side.
    seed
        Seed of the draw; the same seed and compounds give the same split.
    treatment_key
        obs column with the treatment (compound name).
    control
        The control treatment (always ``id``).
    key_added
        obs column (categorical with categories ``'id'``, ``'ood'``) written in each labelled modality.
    mods
        Modalities to label. ``None`` labels every modality that has the ``treatment_key`` column (at least
        one must). The compounds are those of all labelled modalities together.
    copy
        Return a labelled copy instead of writing into ``mdata``.

    Returns
    -------
    ``None``, or the labelled copy when ``copy=True``. The parameters and the two compound lists go to
    ``mdata.uns['morphomu'][key_added]``.

    Examples
    --------
    >>> import morphomu as mm
    >>> mdata = mm.datasets.simulate_scgenescope(n_img_cells=2000, n_rna_cells=2000)
    >>> mm.pp.assign_split(mdata)
    >>> mm.pp.assign_compound_split(mdata, n_ood=10)
    >>> mdata["img"].obs.groupby("compound_split", observed=True)["treatment"].nunique().to_dict()
    {'id': 19, 'ood': 10}
    """
    check_mudata(mdata)
    if not isinstance(key_added, str) or key_added in (C.SPLIT_KEY, treatment_key):
        msg = (
            f"key_added={key_added!r} would overwrite the {key_added!r} column; the compound split goes in its "
            f"own column (default {C.COMPOUND_SPLIT_KEY!r})."
        )
        raise MorphomuError(msg)
    if mods is None:
        mods = [m for m, a in mdata.mod.items() if treatment_key in a.obs.columns]
        if not mods:
            msg = f"no modality has the obs column treatment_key={treatment_key!r}; modalities: {sorted(mdata.mod)}."
            raise ContractError(msg)
    elif isinstance(mods, str):
        mods = [mods]
    mods = list(mods)
    treatments = {}
    for mod in mods:
        adata = get_mod(mdata, mod, arg="mods")
        check_obs_keys(adata, {"treatment_key": treatment_key}, mod=mod)
        treatments[mod] = adata.obs[treatment_key].astype(str).to_numpy()
    compounds = sorted(set().union(*(set(t) for t in treatments.values())) - {str(control)})
    n = len(compounds)
    if n_ood is None:
        if not 0.0 < float(ood_fraction) < 1.0:
            msg = f"ood_fraction must be in (0, 1), got {ood_fraction}."
            raise MorphomuError(msg)
        n_ood = min(max(round(float(ood_fraction) * n), 1), n - 1)
    elif isinstance(n_ood, bool) or not isinstance(n_ood, int | np.integer):
        msg = f"n_ood must be an integer, got {n_ood!r}."
        raise MorphomuError(msg)
    if n < 2 or not 1 <= int(n_ood) <= n - 1:
        msg = (
            f"n_ood={n_ood} compounds cannot be held out of the {n} compounds (control {control!r} excluded) "
            f"of obs[{treatment_key!r}] in {mods}; choose 1 .. {n - 1} so that both sides keep a compound."
        )
        raise MorphomuError(msg)
    rng = np.random.default_rng(seed)
    ood = sorted(np.asarray(compounds, dtype=object)[rng.choice(n, size=int(n_ood), replace=False)].tolist())
    ood_set = set(ood)
    # compute everything first, so a failure leaves mdata untouched
    labels = {
        mod: pd.Categorical(
            np.where(np.isin(values, list(ood_set)), _OOD, _ID), categories=list(C.COMPOUND_SPLITS)
        )
        for mod, values in treatments.items()
    }
    if copy:
        mdata = mdata.copy()
    for mod, values in labels.items():
        mdata.mod[mod].obs[key_added] = values
    store(
        mdata,
        key_added,
        {
            "params": {
                "n_ood": int(n_ood),
                "ood_fraction": float(ood_fraction),
                "seed": int(seed),
                "treatment_key": treatment_key,
                "control": control,
                "key_added": key_added,
                "mods": mods,
            },
            "id": [c for c in compounds if c not in ood_set]
            + [str(control)] * any((t == str(control)).any() for t in treatments.values()),
            "ood": ood,
        },
        tool="assign_compound_split",
    )
    return mdata if copy else None
