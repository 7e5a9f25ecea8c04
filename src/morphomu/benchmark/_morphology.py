"""The morphology task (``morphomu benchmark morphology``): the TRIDENT evaluation.

Compound split → train TRIDENT with and without RNA (one image VAE shared by both) → generate tiles for
the in-distribution (held-out replicates of training compounds) and out-of-distribution (compounds never
seen) test sets → FID / KID / IS per split against real tiles, beside a no-model floor (real control tiles
offered as the "generated" set) → predicted-transcriptome accuracy → ``report.md``, ``results.json`` and
plots.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .. import _constants as C
from .._core import renamed_arguments, resolve_precision
from .._errors import ContractError
from .._validation import check_args
from ..models._trident_checks import GENERATE_CHECKS
from ..module._diffusion import DEFAULT_N_STEPS, DEFAULT_SAMPLER
from ._report import render_morphology_report, write_results
from ._stages import Stage, run_stages

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

__all__ = ["DEFAULT_MORPHOLOGY_DATA", "MorphologyBenchmarkConfig", "run_morphology_benchmark"]

#: The default simulated experiment of the morphology task: small field tiles, so it runs on a laptop.
DEFAULT_MORPHOLOGY_DATA = {"n_img_cells": 2000, "n_rna_cells": 2000, "with_images": True, "image_size": 32}
#: Epochs when not given: TRIDENT's diffusion transformer and its image VAE. ``paper`` trains the presets'.
MAX_EPOCHS = {"tiny": 120, "fast": 60, "paper": None}
VAE_EPOCHS = {"tiny": 40, "fast": 20, "paper": None}
#: Generated tiles per compound: as many as the compound has real test tiles, at most this.
MAX_IMAGES_PER_COMPOUND = 32
VARIANTS = ("TRIDENT (RNA + drug)", "TRIDENT without RNA (drug only)")
CONTROL_FLOOR = "real control tiles (no model)"
GENERATED_MOD = "img_generated"


@dataclass
class MorphologyBenchmarkConfig:
    """Everything the morphology task depends on (written to ``results.json``).

    ``preset`` sizes TRIDENT and ``classifier_preset`` the classifier behind the IS score (formerly
    ``classifier_hparams``). ``sampler`` and ``n_steps`` are generation's (default: :meth:`Trident.generate
    <morphomu.models.Trident.generate>`'s); the paper's protocol is ``sampler='ddim', n_steps=50``.
    """

    preset: str = "tiny"
    accelerator: str = "auto"
    precision: str = "auto"
    max_epochs: int | None = None
    vae_epochs: int | None = None
    n_steps: int = DEFAULT_N_STEPS["trident"]
    sampler: str = DEFAULT_SAMPLER["trident"]
    guidance_scale: float = 1.0
    seed: int = 0
    n_ood: int | None = None
    classifier_preset: str = "fast"
    simulated: bool = True
    data: str = "simulate_scgenescope(with_images=True)"
    images_key: str = C.IMAGES_KEY
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # "auto" resolved now, so that results.json says which precision ran
        self.precision = resolve_precision(self.precision, self.accelerator)
        check_args({"sampler": self.sampler, "n_steps": self.n_steps}, GENERATE_CHECKS)  # before any work


MorphologyBenchmarkConfig.__init__ = renamed_arguments(classifier_hparams="classifier_preset")(  # type: ignore[method-assign]
    MorphologyBenchmarkConfig.__init__
)


def _check(mdata: MuData, config: MorphologyBenchmarkConfig) -> None:
    from .._validation import get_mod

    img = get_mod(mdata, C.IMAGE_MOD, arg="mod")
    if config.images_key not in img.obsm:
        msg = (
            f"mdata.mod[{C.IMAGE_MOD!r}].obsm has no {config.images_key!r}: the morphology benchmark needs image "
            "tiles (n x C x H x W). Simulate them with `morphomu simulate --with-images` or add them to the data."
        )
        raise ContractError(msg)
    get_mod(mdata, C.RNA_MOD, arg="mod")


def _test_rows(img: AnnData, compounds: list[str], *, split: str) -> np.ndarray:
    """Real test tiles of a split: held-out replicates of ID compounds, every tile of OOD compounds."""
    treatment = img.obs[C.TREATMENT_KEY].astype(str).to_numpy()
    rows = np.isin(treatment, compounds)
    if split == "id":
        rows &= img.obs[C.SPLIT_KEY].astype(str).isin(C.HELD_OUT_SPLITS).to_numpy()
    return np.flatnonzero(rows)


def _real(img: AnnData, rows: np.ndarray, images_key: str) -> AnnData:
    import anndata as ad

    adata = ad.AnnData(obs=img.obs.iloc[rows][[C.TREATMENT_KEY]].copy())
    adata.obsm[images_key] = np.asarray(img.obsm[images_key][rows])
    return adata


def _control_floor(img: AnnData, real: AnnData, images_key: str, *, seed: int) -> AnnData:
    """Real control tiles standing in for every compound of ``real`` (as many as it has real tiles)."""
    import anndata as ad

    treatment = img.obs[C.TREATMENT_KEY].astype(str).to_numpy()
    held = img.obs[C.SPLIT_KEY].astype(str).isin(C.HELD_OUT_SPLITS).to_numpy()
    pool = np.flatnonzero((treatment == C.CONTROL) & held)
    if pool.size == 0:
        pool = np.flatnonzero(treatment == C.CONTROL)
    rows = np.random.default_rng(seed).choice(pool, real.n_obs, replace=pool.size < real.n_obs)
    obs = pd.DataFrame(
        {C.TREATMENT_KEY: real.obs[C.TREATMENT_KEY].to_numpy()},
        index=[f"control{i}" for i in range(real.n_obs)],
    )
    adata = ad.AnnData(obs=obs)
    adata.obsm[images_key] = np.asarray(img.obsm[images_key][np.sort(rows)])
    return adata


def _capped(real: AnnData) -> AnnData:
    """The first tiles of each compound, at most :data:`MAX_IMAGES_PER_COMPOUND` (the sizes generated)."""
    labels = real.obs[C.TREATMENT_KEY].astype(str)
    keep = labels.groupby(labels, observed=True).cumcount().to_numpy() < MAX_IMAGES_PER_COMPOUND
    return real[keep].copy()


def _generate(model: Any, real: AnnData, config: MorphologyBenchmarkConfig) -> AnnData:
    import anndata as ad

    counts = _capped(real).obs[C.TREATMENT_KEY].astype(str).value_counts()
    parts = []
    for compound, n_images in counts.items():
        parts.append(
            model.generate(
                compounds=[compound],
                n_images=int(n_images),
                n_steps=config.n_steps,
                sampler=config.sampler,
                guidance_scale=config.guidance_scale,
                seed=config.seed,
                precision=config.precision,
            )
        )
    out = ad.concat(parts, index_unique=None)
    out.obs_names_make_unique()
    return out


def _subsample_real(real: AnnData, generated: AnnData, *, seed: int) -> AnnData:
    """The real set cut to the generated set's size per compound (FID and KID are biased by set size)."""
    rng = np.random.default_rng(seed)
    want = generated.obs[C.TREATMENT_KEY].astype(str).value_counts()
    labels = real.obs[C.TREATMENT_KEY].astype(str).to_numpy()
    keep = [np.sort(rng.choice(np.flatnonzero(labels == c), int(n), replace=False)) for c, n in want.items()]
    return real[np.sort(np.concatenate(keep))].copy()


def _metrics(real: AnnData, generated: AnnData, config: MorphologyBenchmarkConfig) -> pd.DataFrame:
    from .. import tl

    return tl.image_metrics(
        real,
        generated,
        features="readouts",
        images_key=config.images_key,
        treatment_key=C.TREATMENT_KEY,
        preset=config.classifier_preset,
        groupby=C.TREATMENT_KEY,
        seed=config.seed,
    )


def run_morphology_benchmark(
    mdata: MuData, *, out: Path, config: MorphologyBenchmarkConfig, log: Callable[[str], None] = print
) -> dict:
    """Run the morphology task and write its report.

    Parameters
    ----------
    mdata
        The experiment in the MuData contract, with image tiles in ``mdata["img"].obsm[config.images_key]``;
        it gets the splits (when missing) and is otherwise left as it was.
    out
        Existing directory that receives ``report.md``, ``results.json`` and the plots.
    config
        What the run depends on.
    log
        Where progress lines go.

    Returns
    -------
    What is written to ``results.json`` (``"status": "complete"``). A run that fails writes
    ``results.json`` all the same, with the stages it finished, ``"status": "failed at <stage>"`` and the
    error, and raises the error again.
    """
    _check(mdata, config)
    # filled stage by stage, so a run that fails still reports what it finished
    results: dict[str, Any] = {"status": "running", "config": dict(config.__dict__), "timings_s": {}}
    return run_stages(
        out,
        results,
        stages=lambda stage: _run_stages(mdata, out=out, config=config, stage=stage, results=results),
        log=log,
    )


def _run_stages(
    mdata: MuData, *, out: Path, config: MorphologyBenchmarkConfig, stage: Stage, results: dict
) -> dict:
    from .. import models, pl, pp, tl

    timings = stage.timings
    t_start = time.perf_counter()
    img = mdata[C.IMAGE_MOD]
    if C.SPLIT_KEY not in img.obs:
        pp.assign_split(mdata)
    if C.COMPOUND_SPLIT_KEY not in img.obs:
        pp.assign_compound_split(mdata, n_ood=config.n_ood, seed=config.seed)
    img = mdata[C.IMAGE_MOD]
    compound_split = (
        img.obs[[C.TREATMENT_KEY, C.COMPOUND_SPLIT_KEY]]
        .astype(str)
        .drop_duplicates()
        .set_index(C.TREATMENT_KEY)
    )[C.COMPOUND_SPLIT_KEY]
    compounds = {
        split: sorted(c for c, s in compound_split.items() if s == split and c != C.CONTROL)
        for split in C.COMPOUND_SPLITS
    }
    real_sets = {
        split: _real(img, _test_rows(img, compounds[split], split=split), config.images_key)
        for split in C.COMPOUND_SPLITS
    }
    for split, real in real_sets.items():
        if real.n_obs == 0:
            msg = f"the {split!r} test set has no tiles (compounds: {compounds[split]}); check the splits."
            raise ContractError(msg)
    results["compounds"] = compounds
    results["data"] = {split: int(real.n_obs) for split, real in real_sets.items()}

    import torch

    max_epochs = config.max_epochs if config.max_epochs is not None else MAX_EPOCHS[config.preset]
    vae_epochs = config.vae_epochs if config.vae_epochs is not None else VAE_EPOCHS[config.preset]
    models.Trident.setup_mudata(mdata, images_key=config.images_key)
    trained: dict[str, Any] = {}
    histories: dict[str, pd.DataFrame] = {}
    image_vae = None
    for name, use_rna in zip(VARIANTS, (True, False), strict=True):
        with stage(f"train {name}"):
            # the weights start from torch's global generator: seeded, a run repeats
            torch.manual_seed(config.seed)
            model = models.Trident(mdata, preset=config.preset, use_rna=use_rna, image_vae=image_vae)
            model.train(
                max_epochs=max_epochs,
                vae_epochs=vae_epochs,
                accelerator=config.accelerator,
                precision=config.precision,
                seed=config.seed,
            )
        image_vae = model.image_vae  # one latent space for both variants: the comparison is of the generators
        trained[name] = model
        histories[name] = model.history.get("train_loss_epoch")
        results["training"] = {
            n: {"epochs": int(len(h)) if h is not None else 0} for n, h in histories.items()
        }

    rows, per_treatment, generated_sets = [], [], {}
    for split in C.COMPOUND_SPLITS:
        real_all = real_sets[split]
        for name in (*VARIANTS, CONTROL_FLOOR):
            with stage(f"{split}: {name}"):
                if name == CONTROL_FLOOR:
                    generated = _control_floor(img, _capped(real_all), config.images_key, seed=config.seed)
                else:
                    generated = _generate(trained[name], real_all, config)
                    generated_sets[(split, name)] = generated
                # the same real subset for every variant (FID and KID are biased by set size)
                real = _subsample_real(real_all, generated, seed=config.seed)
                table = _metrics(real, generated, config)
            overall = table.loc["all"]
            rows.append({"split": split, "variant": name, **{k: float(v) for k, v in overall.items()}})
            per_treatment.append(table.drop(index="all").assign(split=split, variant=name))
            results["image_metrics"] = rows
    metrics = pd.DataFrame(rows)
    per_treatment = pd.concat(per_treatment).rename_axis(C.TREATMENT_KEY).reset_index()
    results["image_metrics"] = metrics.to_dict(orient="records")
    results["image_metrics_per_treatment"] = per_treatment.to_dict(orient="records")

    with stage("predicted transcriptome accuracy"):
        model = trained[VARIANTS[0]]
        observed = _observed_expression(model, mdata)
        expression = {}
        for split in C.COMPOUND_SPLITS:
            table = tl.expression_accuracy(model.predict_expression(compounds[split]), observed)
            expression[split] = {k: float(v) for k, v in table.attrs["summary"].items()}
        baseline = pd.DataFrame(
            np.repeat(observed.loc[[C.CONTROL]].to_numpy(), len(observed) - 1, 0),
            index=observed.index.drop(C.CONTROL),
            columns=observed.columns,
        )
        for split in C.COMPOUND_SPLITS:
            mine = observed.loc[compounds[split]].to_numpy()
            expression[split]["rmse_model"] = float(
                np.sqrt(np.mean((model.predict_expression(compounds[split]).to_numpy() - mine) ** 2))
            )
            expression[split]["rmse_control_mean"] = float(
                np.sqrt(np.mean((baseline.loc[compounds[split]].to_numpy() - mine) ** 2))
            )
    results["expression"] = expression

    with stage("plots"):
        plots = _plots(
            mdata,
            out,
            generated_sets=generated_sets,
            real_sets=real_sets,
            compounds=compounds,
            config=config,
            pl=pl,
        )
    timings["total"] = round(time.perf_counter() - t_start, 1)
    results["plots"] = plots
    results["status"] = "complete"
    write_results(out, results)
    (out / "report.md").write_text(render_morphology_report(results, metrics=metrics))
    return results


def _observed_expression(model: Any, mdata: MuData) -> pd.DataFrame:
    """Measured mean expression per treatment (all RNA cells) over the model's genes, in its units."""
    from .._core import CHUNK_ROWS as _CHUNK_ROWS
    from .._core import expression_rows as _expression_rows

    a, info = model.setup_args, model.data_info_
    rna = mdata[a["rna_mod"]]
    matrix = rna.X if a["rna_rep"] is None else rna.obsm[a["rna_rep"]]
    matrix = matrix.to_numpy() if isinstance(matrix, pd.DataFrame) else matrix
    treatment = rna.obs[a["treatment_key"]].astype(str).to_numpy()
    names = np.unique(treatment)
    codes = np.searchsorted(names, treatment)
    sums = np.zeros((names.size, len(info["genes"])))
    for start in range(0, rna.n_obs, _CHUNK_ROWS):
        rows = np.arange(start, min(start + _CHUNK_ROWS, rna.n_obs))
        block = _expression_rows(matrix, rows, counts=info["counts"], genes=info.get("gene_index"))
        np.add.at(sums, codes[rows], block.astype(np.float64))
    means = sums / np.bincount(codes, minlength=names.size)[:, None]
    return pd.DataFrame(means, index=pd.Index(names, name=a["treatment_key"]), columns=model.genes)


def _save(path: Path) -> str:
    import matplotlib.pyplot as plt

    plt.gcf().savefig(path, dpi=110, bbox_inches="tight")
    plt.close("all")
    return path.name


def _plots(
    mdata: MuData,
    out: Path,
    *,
    generated_sets: dict,
    real_sets: dict,
    compounds: dict,
    config: MorphologyBenchmarkConfig,
    pl: Any,
) -> list[str]:
    import anndata as ad

    img = mdata[C.IMAGE_MOD]
    plots = []
    for split in C.COMPOUND_SPLITS:
        generated = generated_sets[(split, VARIANTS[0])]
        real = _capped(real_sets[split])
        groups = compounds[split][:4]
        # real tiles of the shown compounds beside real control tiles (the plots' reference)
        control = _control_floor(img, real[: min(real.n_obs, 128)], config.images_key, seed=config.seed)
        control.obs[C.TREATMENT_KEY] = C.CONTROL
        with_control = ad.concat([real, control], index_unique="-")
        key = config.images_key
        pl.images(with_control, generated, groups=groups, n_per_group=4, images_key=key)
        plots.append(_save(out / f"images_{split}.png"))
        pl.readouts(with_control, generated, conditions=groups, readout_kwargs={"images_key": key})
        plots.append(_save(out / f"readouts_{split}.png"))
        pl.morphology_embedding(with_control, generated, rep="readouts", readout_kwargs={"images_key": key})
        plots.append(_save(out / f"morphology_embedding_{split}.png"))
    return plots
