"""Trident's conditions: compound features, standardised expression and the (compound, round) tables.

A condition is per (compound, round): the compound's features ``D`` (fingerprints of its SMILES), ``G_pre``
(the mean expression of the round's control cells) and ``G_post`` (the mean of the compound's cells in that
round), both standardised with the model's gene statistics. Nothing here writes to the data or a model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from .._core import expression_rows, featurize_smiles, parent_mol
from .._errors import ContractError, MorphomuError
from ._trident_checks import CHUNK_ROWS, labels
from ._trident_data import rna_rows, training_compounds

__all__ = ["condition_tables", "drug_features", "g_pre", "resolve_compounds", "standardize_expression"]


def drug_features(smiles: Mapping[str, str], *, control: str, method: str, n_bits: int) -> np.ndarray:
    """Fingerprints of compounds given by SMILES (one row each, in order); the control (no compound) is all zeros."""
    names = list(smiles)
    given = {n: smiles[n] for n in names if n != control}
    out = np.zeros((len(names), n_bits), dtype=np.float32)
    if given:
        fp = featurize_smiles(given, method=method, n_bits=n_bits)
        pos = {n: i for i, n in enumerate(names)}
        out[[pos[n] for n in fp.index]] = fp.to_numpy(np.float32)
    return out


def standardize_expression(values: Any, gene_mean: np.ndarray, gene_std: np.ndarray) -> np.ndarray:
    """Expression in standardised units (float32 statistics, as the module stores them)."""
    return (np.asarray(values, np.float32) - gene_mean) / gene_std


def condition_tables(
    mdata: Any,
    setup: Mapping[str, Any],
    info: Mapping[str, Any],
    img_rows: np.ndarray,
    *,
    use_rna: bool,
    method: str,
    n_bits: int,
    gene_mean: np.ndarray,
    gene_std: np.ndarray,
) -> tuple[np.ndarray, dict[str, np.ndarray], list[tuple[str, str]], np.ndarray | None]:
    """Condition-table row per image, the tables (drug, standardised G_pre and G_post) and more.

    Also the (compound, round) pairs and the pooled training control profile (the default G_pre of
    generation; ``None`` without RNA). ``info`` is the model's ``data_info_``, ``setup`` its ``setup_args``.
    """
    control_profile = None
    img = mdata.mod[setup["image_mod"]]
    treat = labels(img, setup["treatment_key"])[img_rows]
    rounds = labels(img, setup["round_key"])[img_rows]
    keys = pd.MultiIndex.from_arrays([treat, rounds])
    uniq = keys.unique()
    code = uniq.get_indexer(keys)
    pairs = [(str(t), str(r)) for t, r in uniq]
    smiles = {t: info["smiles"].get(t, "") for t, _ in pairs}
    drug = drug_features(smiles, control=info["control"], method=method, n_bits=n_bits)
    drug_by_name = dict(zip(smiles, drug, strict=True))
    tables = {"drug": np.stack([drug_by_name[t] for t, _ in pairs])}
    if not use_rna:
        return code, tables, pairs, control_profile
    rna = mdata.mod[setup["rna_mod"]]
    rows = rna_rows(rna, training_compounds(img, setup), setup)
    rna_keys = pd.MultiIndex.from_arrays(
        [labels(rna, setup["treatment_key"])[rows], labels(rna, setup["round_key"])[rows]]
    )
    control = setup["control"]
    wanted = pd.MultiIndex.from_tuples(pairs + [(control, r) for _, r in pairs]).unique()
    g_code = wanted.get_indexer(rna_keys)
    sums = np.zeros((len(wanted), len(info["genes"])))
    counts = np.bincount(g_code[g_code >= 0], minlength=len(wanted)).astype(np.float64)
    rep = setup["rna_rep"]
    matrix = rna.X if rep is None else rna.obsm[rep]
    if isinstance(matrix, pd.DataFrame):
        matrix = matrix.to_numpy()
    used = rows[g_code >= 0]
    used_code = g_code[g_code >= 0]
    for start in range(0, used.size, CHUNK_ROWS):
        x = expression_rows(
            matrix, used[start : start + CHUNK_ROWS], counts=info["counts"], genes=info.get("gene_index")
        )
        np.add.at(sums, used_code[start : start + CHUNK_ROWS], x.astype(np.float64))
    missing = [wanted[i] for i in np.flatnonzero(counts == 0)]
    if missing:
        t, r = missing[0]
        msg = (
            f"{len(missing)} (compound, round) pairs with training images have no RNA cells in "
            f"mdata.mod[{setup['rna_mod']!r}] (train/val split), e.g. treatment {t!r} in round {r!r}; G_post "
            "(and G_pre, the round's control) need them. Mark such compounds 'ood' in "
            f"obs[{setup['compound_split_key']!r}] or train with use_rna=False."
        )
        raise ContractError(msg)
    means = standardize_expression(sums / counts[:, None], gene_mean, gene_std)
    tables["g_post"] = means[wanted.get_indexer(pd.MultiIndex.from_tuples(pairs))]
    tables["g_pre"] = means[wanted.get_indexer(pd.MultiIndex.from_tuples([(control, r) for _, r in pairs]))]
    # the default G_pre of generation: the pooled training control cells
    pooled = wanted.get_indexer(pd.MultiIndex.from_tuples([(control, r) for r in sorted(set(rounds))]))
    control_profile = (sums[pooled].sum(0) / counts[pooled].sum()).astype(np.float32)
    return code, tables, pairs, control_profile


def resolve_compounds(compounds: Any, *, known: Mapping[str, str], control: str) -> dict[str, str]:
    """Name -> SMILES of the compounds to generate for (known names or a name -> SMILES mapping).

    ``known`` maps the training data's treated compounds to their SMILES; the control maps to ``''``.
    """
    if compounds is None:
        return dict(sorted(known.items()))
    if isinstance(compounds, Mapping):
        if not compounds:
            msg = "compounds is empty: give compound names or a mapping name -> SMILES."
            raise MorphomuError(msg)
        out = {}
        for name, smi in compounds.items():
            name = str(name)
            if name != control:
                parent_mol(smi, name=name)
            out[name] = "" if name == control else str(smi)
        return out
    names = [compounds] if isinstance(compounds, str) else [str(c) for c in compounds]
    if not names:
        msg = "compounds is empty: give compound names or a mapping name -> SMILES."
        raise MorphomuError(msg)
    if len(set(names)) != len(names):
        msg = "compounds contains duplicates."
        raise MorphomuError(msg)
    unknown = [n for n in names if n not in known and n != control]
    if unknown:
        msg = (
            f"compounds {unknown[:5]} are not treatments of the training data (known: {sorted(known)[:10]} ...); "
            "for new compounds pass a mapping name -> SMILES, e.g. compounds={'aspirin': 'CC(=O)Oc1ccccc1C(=O)O'}."
        )
        raise ContractError(msg)
    return {n: ("" if n == control else known[n]) for n in names}


def g_pre(
    rna: Any,
    *,
    genes: pd.Index,
    control_profile: np.ndarray | None,
    gene_mean: np.ndarray,
    gene_std: np.ndarray,
) -> np.ndarray:
    """Standardised pre-perturbation profile (one row): given (raw units of ``rna_rep``) or the control mean."""
    if rna is None:
        if control_profile is None:
            msg = "no control profile was recorded (the model has not been trained); pass rna=."
            raise MorphomuError(msg)
        return standardize_expression(control_profile, gene_mean, gene_std)[None]
    if isinstance(rna, pd.Series):
        missing = genes[~genes.isin(rna.index)]
        if len(missing):
            msg = f"rna (a Series) lacks {len(missing)} of the model's features, e.g. {list(missing[:5])}."
            raise ContractError(msg)
        rna = rna.reindex(genes).to_numpy()
    values = np.asarray(rna, dtype=np.float64).ravel()
    if values.shape != (len(genes),) or not np.isfinite(values).all():
        msg = (
            f"rna must be one finite expression profile of {len(genes)} features (model.genes, in the raw units of "
            f"rna_rep: log-normalised expression for rna_rep=None), got shape {np.shape(rna)}."
        )
        raise ContractError(msg)
    return standardize_expression(values, gene_mean, gene_std)[None]
