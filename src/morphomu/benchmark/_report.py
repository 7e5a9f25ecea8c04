"""What a benchmark run writes: ``results.json`` (JSON encoding) and the Markdown ``report.md`` of each task."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import _constants as C
from .. import _paper as paper

__all__ = [
    "PAPER_MORPHOLOGY",
    "json_default",
    "mean_std",
    "render_morphology_report",
    "render_rna_report",
    "write_results",
]

#: TRIDENT's reported image metrics (BBBC021, Inception features on RGB renderings): split -> variant -> metric.
PAPER_MORPHOLOGY = {
    "id": {
        "TRIDENT (RNA + drug)": {"fid": 49.8, "kid_mean": 0.013},
        "TRIDENT without RNA (drug only)": {"fid": 115.8},
    },
    "ood": {"TRIDENT (RNA + drug)": {"fid": 126.2, "kid_mean": 0.222}},
}


def json_default(value: Any) -> Any:
    """Encode what :mod:`json` cannot: numpy scalars and arrays as numbers and lists, anything else as text."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def write_results(out: Path, results: dict) -> None:
    """Write ``results`` to ``out / "results.json"``."""
    (out / "results.json").write_text(json.dumps(results, indent=2, default=json_default))


def mean_std(frame: pd.DataFrame, test_set: str, metric: str) -> tuple[float, float]:
    """Mean and sample standard deviation of ``metric`` over the rows of ``test_set`` (NaN when undefined)."""
    values = frame.loc[frame["test_set"] == test_set, metric].to_numpy(dtype=float)
    if values.size == 0:
        return float("nan"), float("nan")
    return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else float("nan")


def _fmt_mean_std(mean: float, std: float | None = None) -> str:
    if np.isnan(mean):
        return "–"
    return f"{mean:.3f}" if std is None or np.isnan(std) else f"{mean:.3f} ± {std:.3f}"


def gap_recovered(classification: pd.DataFrame, *, cv: bool) -> dict[str, float]:
    """Per held-out test set, the share of the imaging -> imaging + real RNA gap that synthetic RNA recovers.

    (synthetic fusion - imaging) / (real fusion - imaging), single-profile balanced accuracy, fold 1 unless
    ``cv`` (then every fold).
    """
    fold_one = classification if cv else classification[classification["fold"] == 1]
    single = fold_one[fold_one["setting"] == "single"]
    gaps = {}
    for test_set in C.HELD_OUT_SPLITS:

        def acc(method: str, test_set: str = test_set) -> float:
            return mean_std(single[single["method"] == method], test_set, "balanced_accuracy")[0]

        gap = acc("Image + RNA (real)") - acc("Image (real)")
        gaps[test_set] = (acc("Image + RNA (synthetic)") - acc("Image (real)")) / gap if gap else float("nan")
    return gaps


def render_rna_report(results: dict, *, classification: pd.DataFrame, fidelity_table: pd.DataFrame) -> str:
    """The RNA task's Markdown report: the PhenoSeq paper's tables filled with our numbers beside the paper's."""
    config = results["config"]
    lines = ["# morphomu benchmark report", ""]
    if config["simulated"]:
        lines += [
            "> **Simulated data.** These numbers come from morphomu's simulator, not the scGeneScope release; "
            "they test the pipeline and are **not comparable** to the paper's numbers shown beside them.",
            "",
        ]
    lines += [
        f"Data: `{config['data']}`; PhenoSeq preset `{config['preset']}`; classifier preset "
        # results written before the rename name it classifier_hparams
        f"`{config.get('classifier_preset', config.get('classifier_hparams'))}`; seeds {config['seeds']}; "
        f"{'3-fold replicate cross-validation (PhenoSeq retrained per fold)' if config['cv'] else 'canonical split'}.",
        "",
    ]
    fold_one = classification[classification["fold"] == 1] if not config["cv"] else classification
    table_names = {"single": "Table 1 — single-profile", "multi": "Table 2 — multi-profile (avgpool, k = 32)"}
    for setting, title in table_names.items():
        lines += [
            f"## {title}",
            "",
            "Balanced accuracy and macro-F1, mean ± std over "
            f"{'folds' if config['cv'] else 'seeds'}; *paper* = PhenoSeq paper.",
            "",
        ]
        lines += [
            "| method | WE bal. acc. | paper | WE macro-F1 | paper | HE bal. acc. | paper | HE macro-F1 | paper |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for method in paper.METHODS:
            rows = fold_one[(fold_one["setting"] == setting) & (fold_one["method"] == method)]
            ref = paper.CLASSIFICATION[(setting, method)]
            cells = []
            for (test_set, metric), ref_value in zip(
                [
                    (C.TEST_WE, "balanced_accuracy"),
                    (C.TEST_WE, "macro_f1"),
                    (C.TEST_HE, "balanced_accuracy"),
                    (C.TEST_HE, "macro_f1"),
                ],
                ref,
                strict=True,
            ):
                cells += [_fmt_mean_std(*mean_std(rows, test_set, metric)), f"{ref_value:.3f}"]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "## Gap recovered by synthetic fusion",
        "",
        "Share of the gap between imaging alone and the imaging + real RNA fusion that imaging + synthetic "
        "RNA recovers (single-profile): (synthetic fusion − imaging) / (real fusion − imaging).",
        "",
        "| test set | ours | paper |",
        "| --- | --- | --- |",
    ]
    gaps = gap_recovered(classification, cv=config["cv"])
    lines.append(f"| WE | {gaps[C.TEST_WE]:.0%} | {paper.gap_recovered('WE'):.0%} |")
    lines.append(f"| HE | {gaps[C.TEST_HE]:.0%} | {paper.gap_recovered('HE'):.0%} |")
    lines.append("")
    summary = next(r for r in results["fidelity"]["summary"] if r["fold"] == 1)
    n_conditions = int(summary.get("n_conditions", len(fidelity_table)))
    lines += [
        "## Embedding-space fidelity",
        "",
        f"Synthetic vs real treatment centroids on the held-out splits, {n_conditions} conditions (DMSO included).",
        "",
        "| score | ours | paper |",
        "| --- | --- | --- |",
        f"| Accuracy@1 | {summary['accuracy_at_1']:.3f} | {paper.FIDELITY['accuracy_at_1']:.3f} |",
        f"| MRR | {summary['mrr']:.3f} | {paper.FIDELITY['mrr']:.3f} |",
        f"| conditions at rank ≤ 4 | {int(summary['n_rank_le_4'])} | {paper.FIDELITY['n_rank_le_4']} (of 29) |",
        "",
    ]
    table = fidelity_table.sort_values("rank")
    corr = table[["rank", "imaging_separability"]].dropna().corr(method="spearman").iloc[0, 1]
    lines += [
        f"Fidelity against imaging separability (how well imaging alone tells a treatment from DMSO on "
        f"held-out cells): Spearman correlation of rank with separability = {corr:.2f} "
        "(negative = treatments imaging separates are placed better, the paper's reading).",
        "",
        "| condition | rank | specificity | euclidean | energy distance | imaging separability |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in table.iterrows():
        sep = row.get("imaging_separability", np.nan)
        lines.append(
            f"| {name} | {int(row['rank'])} | {row['specificity']:.4f} | {row['euclidean']:.3f} | "
            f"{row['energy']:.3f} | {'–' if np.isnan(sep) else f'{sep:.2f}'} |"
        )
    lines.append("")
    if results["ablations"]:
        lines += [
            "## Ablations",
            "",
            "Fidelity and single-profile synthetic-RNA classification (seed 12345) per generator variant.",
            "",
            "| variant | Accuracy@1 | MRR | rank ≤ 4 | mean energy distance | WE bal. acc. | HE bal. acc. |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for row in results["ablations"]:
            lines.append(
                f"| {row['variant']} | {row['accuracy_at_1']:.3f} | {row['mrr']:.3f} | {int(row['n_rank_le_4'])} | "
                f"{row['mean_energy']:.3f} | {_fmt_mean_std(row['we_balanced_accuracy'])} | "
                f"{_fmt_mean_std(row['he_balanced_accuracy'])} |"
            )
        lines.append("")
    lines += ["## Run time", "", "| stage | seconds |", "| --- | --- |"]
    lines += [f"| {name} | {seconds:.1f} |" for name, seconds in results["timings_s"].items()]
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in results["plots"]]
    return "\n".join(lines) + "\n"


def _fmt_value(value: float, digits: int = 3) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def render_morphology_report(results: dict, *, metrics: pd.DataFrame) -> str:
    """The morphology task's Markdown report: image metrics per split beside TRIDENT's, and the transcriptome."""
    config = results["config"]
    lines = ["# morphomu benchmark — morphology (TRIDENT)", ""]
    if config["simulated"]:
        lines += [
            "**Simulated data** (`morphomu`'s ground-truth simulator with rendered 5-channel field tiles): the "
            "numbers show that the pipeline works and how the variants rank; they are not comparable to the "
            "paper's, which are Inception features of RGB renderings of BBBC021 images.",
            "",
        ]
    lines += [
        f"Data: `{config['data']}`; TRIDENT preset `{config['preset']}`; {config['n_steps']} {config.get('sampler', 'ddim')} steps; "
        f"guidance {config['guidance_scale']:g}; features: morphology readouts (cell count, compartment areas, "
        "per-channel intensities, z-scored with the real set's statistics), every channel kept.",
        "",
        f"Test sets — ID: held-out replicates of {len(results['compounds']['id'])} training compounds "
        f"({results['data']['id']:,} real tiles); OOD: every tile of {len(results['compounds']['ood'])} compounds "
        f"never seen in training ({results['data']['ood']:,} tiles). Real sets are cut to the generated set's "
        "size per compound.",
        "",
        "FID and KID: lower is better. IS: TRIDENT reads it lower-is-better (a consistent, condition-specific "
        "phenotype); `IS (real)` is the same score of the real tiles.",
        "",
        "| split | method | FID | KID | IS | IS (real) | paper FID | paper KID |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in metrics.itertuples(index=False):
        ref = PAPER_MORPHOLOGY.get(row.split, {}).get(row.variant, {})
        lines.append(
            f"| {row.split.upper()} | {row.variant} | {_fmt_value(row.fid, 2)} | "
            f"{_fmt_value(row.kid_mean, 3)} ± {_fmt_value(row.kid_std, 3)} | "
            f"{_fmt_value(row.is_mean, 2)} ± {_fmt_value(row.is_std, 2)} | {_fmt_value(row.is_real, 2)} | "
            f"{ref.get('fid', '–')} | {ref.get('kid_mean', '–')} |"
        )
    lines += ["", "## Predicted transcriptome (condition VAE decoder, TRIDENT Figure 5a)", ""]
    lines += [
        "| split | mean Pearson of z-scored LFC | overall Pearson | RMSE model | RMSE control mean |",
        "| --- | --- | --- | --- | --- |",
    ]
    for split, entry in results["expression"].items():
        lines.append(
            f"| {split.upper()} | {_fmt_value(entry.get('mean_pearson'))} | "
            f"{_fmt_value(entry.get('overall_pearson'))} | "
            f"{_fmt_value(entry['rmse_model'])} | {_fmt_value(entry['rmse_control_mean'])} |"
        )
    lines += ["", "## Timings (s)", "", "| stage | seconds |", "| --- | --- |"]
    lines += [f"| {k} | {v:.1f} |" for k, v in results["timings_s"].items()]
    lines += ["", "## Plots", ""] + [f"- `{p}`" for p in results["plots"]]
    return "\n".join(lines) + "\n"
