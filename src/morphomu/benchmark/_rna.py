"""The RNA task (``morphomu benchmark rna``): PhenoSeq on the scGeneScope benchmark.

Split → train PhenoSeq → generate → fidelity → the ten classification settings of the PhenoSeq paper's
Tables 1–2 → ablations → ``report.md``, ``results.json`` and plots.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .. import _constants as C
from .. import _paper as paper
from .._core import Standardizer, renamed_arguments, resolve_precision
from .._mudata import update
from .._validation import check_args
from ..models._phenoseq_checks import GENERATE_CHECKS
from ..module._diffusion import DEFAULT_N_STEPS, DEFAULT_SAMPLER
from ._report import gap_recovered, mean_std, render_rna_report, write_results
from ._stages import Stage, run_stages

if TYPE_CHECKING:
    from mudata import MuData

__all__ = ["RnaBenchmarkConfig", "fidelity_scores", "imaging_separability", "run_rna_benchmark"]

#: The paper's five training seeds (Tables 1–2).
PAPER_SEEDS = (12345, 42, 1234, 99, 7)
#: Seed of the single-run rows (cross-validation, ablations), as the paper's CV.
SINGLE_SEED = (12345,)
#: Guidance scales of the ablation (1.0 is the plain conditional model).
GUIDANCE_SCALES = (2.0,)
#: The benchmark's PhenoSeq learns an unconditional branch too, so guidance can be ablated.
P_UNCOND = 0.1
#: Temporary modality holding one ablation variant's generated cells.
ABLATION_MOD = "rna_ablation"
#: PhenoSeq epochs when ``max_epochs`` is not given: the small presets get a fixed budget that keeps the
#: default run under 10 minutes on 2 CPU cores (the ``fast`` model reaches fidelity MRR ~0.6 in it);
#: ``paper`` trains to early stopping (:data:`morphomu.models._phenoseq.TRAIN_DEFAULTS`).
MAX_EPOCHS = {"tiny": 20, "fast": 20, "paper": None}


@dataclass
class RnaBenchmarkConfig:
    """Everything the RNA task depends on (written to ``results.json``).

    ``preset`` sizes PhenoSeq and ``classifier_preset`` the classifiers (formerly ``classifier_hparams``).
    ``sampler`` and ``n_steps`` are generation's (default: :meth:`PhenoSeq.generate
    <morphomu.models.PhenoSeq.generate>`'s); the paper's protocol is ``sampler='ddim', n_steps=50``.
    """

    preset: str = "fast"
    accelerator: str = "auto"
    precision: str = "auto"
    seeds: tuple[int, ...] = PAPER_SEEDS
    cv: bool = False
    max_epochs: int | None = None
    classifier_preset: str = "fast"
    n_steps: int = DEFAULT_N_STEPS["phenoseq"]
    sampler: str = DEFAULT_SAMPLER["phenoseq"]
    simulated: bool = True
    data: str = "simulate_scgenescope(seed=0)"
    image_rep: str | None = C.IMAGE_REP
    rna_rep: str | None = C.RNA_REP
    ablations: bool = True
    umap: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # "auto" resolved now, so that results.json says which precision ran
        self.precision = resolve_precision(self.precision, self.accelerator)
        check_args({"sampler": self.sampler, "n_steps": self.n_steps}, GENERATE_CHECKS)  # before any work


RnaBenchmarkConfig.__init__ = renamed_arguments(classifier_hparams="classifier_preset")(  # type: ignore[method-assign]
    RnaBenchmarkConfig.__init__
)


def _inputs(method: str, *, image_rep: str | None, rna_rep: str | None, synthetic: str) -> list[tuple]:
    img = (C.IMAGE_MOD, image_rep, "image")
    rna = (C.RNA_MOD, rna_rep, "rna")
    syn = (synthetic, rna_rep, "rna")
    return {
        "Image (real)": [img],
        "RNA (real)": [rna],
        "RNA (synthetic)": [syn],
        "Image + RNA (real)": [img, rna],
        "Image + RNA (synthetic)": [img, syn],
    }[method]


def imaging_separability(
    mdata: MuData, *, image_rep: str | None, split_key: str = C.SPLIT_KEY, control: str = C.CONTROL
) -> pd.Series:
    """Per treatment, how well imaging alone separates it from the control on held-out cells.

    Balanced accuracy of a nearest-centroid rule (treatment vs control centroids of the standardised
    train cells) on the held-out cells of the two conditions: 0.5 = indistinguishable, 1 = separable.

    Parameters
    ----------
    mdata
        The experiment, with splits assigned.
    image_rep
        Imaging ``.obsm`` key; ``.X`` when ``None``.
    split_key
        Obs column holding the split.
    control
        The control treatment.

    Returns
    -------
    Separability per treatment (control excluded), named ``imaging_separability``.
    """
    img = mdata[C.IMAGE_MOD]
    x = img.obsm[image_rep] if image_rep is not None else img.X
    split = img.obs[split_key].astype(str).to_numpy()
    treatment = img.obs[C.TREATMENT_KEY].astype(str).to_numpy()
    train = np.flatnonzero(split == C.TRAIN)
    held = np.flatnonzero(np.isin(split, C.HELD_OUT_SPLITS))
    scaler = Standardizer.fit(x, train)

    def load(rows: np.ndarray) -> np.ndarray:
        return scaler.transform(np.asarray(x[np.sort(rows)]))

    control_train = load(train[treatment[train] == control]).mean(0)
    control_held = load(held[treatment[held] == control])
    scores = {}
    for name in sorted(set(treatment) - {control}):
        mine_train = load(train[treatment[train] == name]).mean(0)
        mine_held = load(held[treatment[held] == name])
        if mine_held.size == 0 or control_held.size == 0:
            continue

        def predicted_mine(cells: np.ndarray, centre: np.ndarray = mine_train) -> np.ndarray:
            return ((cells - centre) ** 2).sum(1) < ((cells - control_train) ** 2).sum(1)

        scores[name] = 0.5 * (predicted_mine(mine_held).mean() + (~predicted_mine(control_held)).mean())
    return pd.Series(scores, name="imaging_separability")


def _train_phenoseq(mdata: MuData, config: RnaBenchmarkConfig, *, seed: int):
    import torch

    from ..models import PhenoSeq

    PhenoSeq.setup_mudata(mdata, image_rep=config.image_rep, rna_rep=config.rna_rep)
    torch.manual_seed(seed)  # the weights start from torch's global generator: seeded, a run repeats
    model = PhenoSeq(mdata, preset=config.preset, p_uncond=P_UNCOND)
    max_epochs = MAX_EPOCHS[config.preset] if config.max_epochs is None else config.max_epochs
    model.train(max_epochs=max_epochs, accelerator=config.accelerator, precision=config.precision, seed=seed)
    return model


def _classify_rows(
    mdata: MuData,
    config: RnaBenchmarkConfig,
    *,
    methods: Sequence[str],
    settings: Sequence[str],
    seeds: Sequence[int],
    synthetic: str,
    label: str | None = None,
) -> pd.DataFrame:
    from ..tl import classify

    frames = []
    for setting in settings:
        for method in methods:
            frame = classify(
                mdata,
                inputs=_inputs(
                    method, image_rep=config.image_rep, rna_rep=config.rna_rep, synthetic=synthetic
                ),
                setting=setting,
                seeds=tuple(seeds),  # explicit: the paper's seeds, whatever the defaults
                splits=C.HELD_OUT_SPLITS,  # the report's two columns, whatever else the split column holds
                preset=config.classifier_preset,
                accelerator=config.accelerator,
                precision=config.precision,
                progress=False,
                inplace=False,
            )
            frames.append(frame.assign(setting=setting, method=label or method))
    return pd.concat(frames, ignore_index=True)


def run_rna_benchmark(
    mdata: MuData, *, out: Path, config: RnaBenchmarkConfig, log: Callable[[str], None] = print
) -> dict:
    """Run the RNA task and write its report.

    Parameters
    ----------
    mdata
        The experiment in the MuData contract; modified (splits and synthetic modalities are added).
    out
        Existing directory that receives ``report.md``, ``results.json`` and the plots.
    config
        What the run depends on.
    log
        Where progress lines go.

    Returns
    -------
    The results written to ``results.json`` (``"status": "complete"``). A run that fails writes
    ``results.json`` all the same, with the stages it finished (``stages_done``, their tables and timings),
    ``"status": "failed at <stage>"`` and the error, and raises the error again.
    """
    seeds = SINGLE_SEED if config.cv else config.seeds
    # filled stage by stage, so a run that fails still reports what it finished
    results: dict[str, Any] = {
        "status": "running",
        "config": {**config.__dict__, "seeds": list(seeds)},
        "data": {mod: {"n_cells": int(a.n_obs)} for mod, a in mdata.mod.items()},
        "classification": [],
        "fidelity": {"summary": []},
        "ablations": [],
        "timings_s": {},
        "plots": [],
    }
    return run_stages(
        out,
        results,
        stages=lambda stage: _run_stages(mdata, out=out, config=config, stage=stage, results=results),
        log=log,
    )


def _run_stages(mdata: MuData, *, out: Path, config: RnaBenchmarkConfig, stage: Stage, results: dict) -> dict:
    from .. import pl, pp, tl

    t_start = time.perf_counter()
    timings = stage.timings
    folds = (1, 2, 3) if config.cv else (1,)
    seeds = SINGLE_SEED if config.cv else config.seeds
    classification, histories = [], {}
    fidelity_rows, ablation_rows = results["fidelity"]["summary"], results["ablations"]
    fidelity_table = None
    for fold in folds:
        tag = f" (fold {fold})" if config.cv else ""
        pp.assign_split(mdata, fold=fold)
        with stage(f"train PhenoSeq{tag}"):
            model = _train_phenoseq(mdata, config, seed=fold - 1)
        histories[fold] = model.history
        with stage(f"generate synthetic RNA{tag}"):
            tl.generate_rna(
                mdata,
                model=model,
                n_steps=config.n_steps,
                sampler=config.sampler,
                seed=0,
                precision=config.precision,
            )
        with stage(f"fidelity{tag}"):
            tl.fidelity(mdata, rep=config.rna_rep)
            entry = mdata.uns[C.UNS_KEY]["fidelity"]
            fidelity_rows.append({"fold": fold, "variant": "PhenoSeq", **dict(entry["summary"])})
            if fold == 1:
                fidelity_table = entry["table"].copy()
        with stage(f"classification, 10 settings x {len(seeds)} seeds{tag}"):
            frame = _classify_rows(
                mdata,
                config,
                methods=paper.METHODS,
                settings=("single", "multi"),
                seeds=seeds,
                synthetic=C.RNA_SYNTHETIC_MOD,
            )
            classification.append(frame.assign(fold=fold))
            results["classification"] = pd.concat(classification, ignore_index=True).to_dict(orient="records")
        if config.ablations and fold == 1:
            variants = {
                "ridge baseline": {"method": "ridge"},
                "context='set'": {"model": model, "context": "set"},
            }
            variants |= {f"guidance {g:g}": {"model": model, "guidance_scale": g} for g in GUIDANCE_SCALES}
            with stage("ablations"):
                for name, kwargs in variants.items():
                    if kwargs.get("method") != "ridge":
                        kwargs = {
                            **kwargs,
                            "n_steps": config.n_steps,
                            "sampler": config.sampler,
                            "precision": config.precision,
                        }
                    with warnings.catch_warnings():  # its features are those of rna_synthetic, by design
                        warnings.filterwarnings("ignore", message="var_names are not unique")
                        tl.generate_rna(mdata, key_added=ABLATION_MOD, seed=0, **kwargs)
                    table = tl.fidelity(mdata, synthetic=ABLATION_MOD, rep=config.rna_rep, inplace=False)
                    rows = _classify_rows(
                        mdata,
                        config,
                        methods=("RNA (synthetic)",),
                        settings=("single",),
                        seeds=SINGLE_SEED,
                        synthetic=ABLATION_MOD,
                        label=name,
                    )
                    ablation_rows.append(
                        {
                            "variant": name,
                            **fidelity_scores(table),
                            "we_balanced_accuracy": mean_std(rows, C.TEST_WE, "balanced_accuracy")[0],
                            "he_balanced_accuracy": mean_std(rows, C.TEST_HE, "balanced_accuracy")[0],
                        }
                    )
                    del mdata.mod[ABLATION_MOD]
                    update(mdata)
                main = next(r for r in fidelity_rows if r["fold"] == 1)
                main_rows = classification[0]
                main_rows = main_rows[
                    (main_rows["setting"] == "single")
                    & (main_rows["method"] == "RNA (synthetic)")
                    & (main_rows["seed"] == SINGLE_SEED[0])
                ]
                ablation_rows.insert(
                    0,
                    {
                        "variant": "PhenoSeq (context='mean', guidance 1)",
                        **{k: main[k] for k in ("accuracy_at_1", "mrr", "n_rank_le_4", "mean_energy")},
                        "we_balanced_accuracy": mean_std(main_rows, C.TEST_WE, "balanced_accuracy")[0],
                        "he_balanced_accuracy": mean_std(main_rows, C.TEST_HE, "balanced_accuracy")[0],
                    },
                )
    if config.cv:
        pp.assign_split(mdata, fold=1)  # leave the canonical split in place
    classification = pd.concat(classification, ignore_index=True)
    with stage("imaging separability"):
        separability = imaging_separability(mdata, image_rep=config.image_rep)
    fidelity_table = fidelity_table.join(separability)
    results["fidelity"]["per_condition"] = fidelity_table.reset_index().to_dict(orient="records")
    results["data"] = {mod: {"n_cells": int(a.n_obs)} for mod, a in mdata.mod.items()}
    with stage("plots"):
        plots = _plots(
            mdata,
            out,
            classification=classification,
            histories=histories,
            fidelity_table=fidelity_table,
            umap=config.umap,
            pl=pl,
        )
    timings["total"] = round(time.perf_counter() - t_start, 1)
    results["plots"] = plots
    results["gap_recovered"] = gap_recovered(classification, cv=config.cv)
    results["status"] = "complete"
    write_results(out, results)
    (out / "report.md").write_text(
        render_rna_report(results, classification=classification, fidelity_table=fidelity_table)
    )
    return results


def fidelity_scores(table: pd.DataFrame) -> dict[str, float]:
    """Fidelity summary scores from a per-condition table.

    Parameters
    ----------
    table
        Per-condition fidelity, as ``mm.tl.fidelity(..., inplace=False)`` returns it (``rank`` and
        ``energy`` columns).

    Returns
    -------
    ``accuracy_at_1``, ``mrr``, ``n_rank_le_4`` and ``mean_energy``.
    """
    ranks = table["rank"].to_numpy(dtype=float)
    return {
        "accuracy_at_1": float((ranks == 1).mean()),
        "mrr": float((1.0 / ranks).mean()),
        "n_rank_le_4": int((ranks <= 4).sum()),
        "mean_energy": float(table["energy"].mean()),
    }


def _plots(
    mdata: MuData,
    out: Path,
    *,
    classification: pd.DataFrame,
    histories: dict,
    fidelity_table: pd.DataFrame,
    umap: bool,
    pl: Any,
) -> list[str]:
    import matplotlib.pyplot as plt

    written = []

    def save(fig: Any, name: str) -> None:
        fig.savefig(out / name, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(name)

    axes = pl.fidelity(mdata, key="fidelity")
    save(np.atleast_1d(axes)[0].figure, "fidelity.png")
    for setting in ("single", "multi"):
        frame = classification[(classification["setting"] == setting) & (classification["fold"] == 1)]
        ax = pl.classification({m: frame[frame["method"] == m] for m in paper.METHODS}, chance=1 / 28)
        ax.set_title(f"Treatment classification, {setting}-profile")
        save(ax.figure, f"classification_{setting}.png")
    ax = pl.training_history(histories[1])
    save(ax.figure, "training_history.png")
    fig, ax = plt.subplots(figsize=(5, 4))
    table = fidelity_table.dropna(subset=["imaging_separability"])
    ax.scatter(table["imaging_separability"], table["rank"], s=18)
    for name, row in table.iterrows():
        ax.annotate(str(name)[:14], (row["imaging_separability"], row["rank"]), fontsize=6)
    ax.set_xlabel("imaging separability from DMSO (balanced accuracy)")
    ax.set_ylabel("fidelity retrieval rank (1 = best)")
    ax.invert_yaxis()
    save(fig, "fidelity_vs_separability.png")
    if umap:
        ax = pl.embedding_overlay(mdata)
        save(ax.figure, "embedding_overlay.png")
    return written
