"""Benchmark of the evaluation suite at scGeneScope scale: memory, sampler and classifier throughput.

Simulates an experiment of scGeneScope's size in memory (default ~450k imaging cells x 5120 and
~400k real + ~400k synthetic RNA cells x 512, float32: ~11 GB; 28 compounds + DMSO, replicates 3, 4, 5
in round 1 and 1, 2 in round 2, one sample per treatment and replicate with uneven cell counts;
random features with a weak per-sample signal), then measures

- peak resident memory against the bytes of the matrices (the classifier shares the matrices, it
  does not copy or sort them);
- the multi-profile sampler alone (k = 32 cells per example and modality, batch 4096): examples/s;
- each of the ten settings of the PhenoSeq paper's Tables 1-2 (five input rows x single / multi):
  one training epoch (plus validation) of the paper-sized classifier, as training examples/s, and the
  extrapolated time of the full protocol (5 seeds x up to 100 epochs);
- :func:`morphomu.tl.fidelity` on the held-out splits.

Run ``python benchmarks/evaluation.py --scale 0.1`` for a tenth of the size (a laptop), ``--scale 1`` for
the real size (needs ~16 GB free memory). Results are printed and written as JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
import warnings

import numpy as np


def _rss_gb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def simulate(n_img: int, n_rna: int, img_dim: int, rna_dim: int, seed: int = 0):
    """An scGeneScope-shaped MuData with random features (built in chunks: no float64 temporaries)."""
    import anndata as ad
    import mudata as md
    import pandas as pd

    import morphomu as mm
    from morphomu._constants import SCGENESCOPE_CONDITIONS

    rng = np.random.default_rng(seed)
    reps = [(1, 3), (1, 4), (1, 5), (2, 1), (2, 2)]
    samples = [(t, rnd, rep) for rnd, rep in reps for t in SCGENESCOPE_CONDITIONS]
    weights = rng.uniform(0.5, 1.5, len(samples))
    weights /= weights.sum()

    def modality(prefix: str, n: int, dim: int, rep_key: str, signal: np.ndarray):
        which = rng.choice(len(samples), size=n, p=weights)
        which.sort()
        obs = pd.DataFrame(
            {
                "sample": [f"{samples[i][0]}|r{samples[i][2]}" for i in which],
                "treatment": [samples[i][0] for i in which],
                "round": [samples[i][1] for i in which],
                "replicate": [samples[i][2] for i in which],
            },
            index=[f"{prefix}{i}" for i in range(n)],
        )
        for col in obs:
            obs[col] = obs[col].astype("category")
        x = np.empty((n, dim), dtype=np.float32)
        treat_code = np.array([SCGENESCOPE_CONDITIONS.index(samples[i][0]) for i in range(len(samples))])
        for start in range(0, n, 50_000):
            sl = slice(start, start + 50_000)
            x[sl] = rng.standard_normal((x[sl].shape[0], dim), dtype=np.float32)
            x[sl] += signal[treat_code[which[sl]]]
        a = ad.AnnData(obs=obs)
        a.obsm[rep_key] = x
        return a

    img_signal = (rng.standard_normal((len(SCGENESCOPE_CONDITIONS), img_dim)) * 0.05).astype(np.float32)
    rna_signal = (rng.standard_normal((len(SCGENESCOPE_CONDITIONS), rna_dim)) * 0.1).astype(np.float32)
    mods = {
        "img": modality("img", n_img, img_dim, "X_vit", img_signal),
        "rna": modality("rna", n_rna, rna_dim, "X_scgpt", rna_signal),
        "rna_synthetic": modality("syn", n_rna, rna_dim, "X_scgpt", rna_signal),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        mdata = md.MuData(mods)
    mm.pp.assign_split(mdata)
    return mdata


def sampler_throughput(mdata, *, k: int, batch_size: int, n_batches: int) -> dict[str, float]:
    """Examples/s of the dual-modality multi-profile sampler alone (train split, fresh draws per batch)."""
    import torch

    from morphomu.models._classifier import TreatmentClassifier

    TreatmentClassifier.setup_mudata(mdata, inputs=[("img", "X_vit"), ("rna", "X_scgpt")])
    model = TreatmentClassifier(mdata, setting="multi", k=k, hparams="tiny")
    from morphomu.models._classifier_data import as_tensor

    tensors = [as_tensor(mdata.mod[s.mod].obsm[s.rep]) for s in model.specs]
    out = {}
    for setting_k in (1, k):
        examples, _, _ = model._examples(mdata, "train", tensors, warn=False)
        examples.k = setting_k
        g = torch.Generator().manual_seed(0)
        examples.batch(torch.randint(0, len(examples), (batch_size,)), g)
        t = time.perf_counter()
        for _ in range(n_batches):
            examples.batch(torch.randint(0, len(examples), (batch_size,)), g)
        dt = time.perf_counter() - t
        out[f"sampler_examples_per_s_k{setting_k}"] = n_batches * batch_size / dt
        out[f"sampler_cells_per_s_k{setting_k}"] = n_batches * batch_size * setting_k * 2 / dt
    return out


SETTINGS = {
    "Image (real)": ("img", "X_vit"),
    "RNA (real)": ("rna", "X_scgpt"),
    "RNA (synthetic)": ("rna_synthetic", "X_scgpt"),
    "Image + RNA (real)": [("img", "X_vit"), ("rna", "X_scgpt")],
    "Image + RNA (synthetic)": [("img", "X_vit"), ("rna_synthetic", "X_scgpt")],
}


def classifier_epoch(
    mdata, inputs, setting: str, *, accelerator: str, epoch_size: int | None
) -> dict[str, float]:
    """Time one epoch (train + validation) of the paper-sized classifier of one setting."""
    import torch

    from morphomu.models._classifier import TreatmentClassifier

    TreatmentClassifier.setup_mudata(mdata, inputs=inputs)
    torch.manual_seed(0)
    model = TreatmentClassifier(mdata, setting=setting, hparams="paper")
    t = time.perf_counter()
    model.train(
        max_epochs=1, epoch_size=epoch_size, progress=False, accelerator=accelerator, early_stopping=False
    )
    train_s = time.perf_counter() - t
    n_train = epoch_size or int(
        (
            (mdata.mod[model.specs[model.anchor_].mod].obs["split"] == "train")
            & (mdata.mod[model.specs[model.anchor_].mod].obs["treatment"] != "DMSO")
        ).sum()
    )
    t = time.perf_counter()
    scores = model.evaluate()
    eval_s = time.perf_counter() - t
    return {
        "epoch_s": train_s,
        "train_examples": n_train,
        "examples_per_s": n_train / train_s,
        "evaluate_s": eval_s,
        "we_balanced_accuracy": float(scores.loc["test_we", "balanced_accuracy"]),
        "n_parameters": int(sum(p.numel() for p in model.module.parameters())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of scGeneScope's cell counts")
    parser.add_argument("--img-dim", type=int, default=5120)
    parser.add_argument("--rna-dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--sampler-batches", type=int, default=10)
    parser.add_argument(
        "--epoch-size", type=int, default=None, help="cap training examples of the timed epoch"
    )
    parser.add_argument(
        "--settings", default="all", help="'all', 'none' or comma-separated 'single:Image (real)'"
    )
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="benchmark_evaluation.json")
    args = parser.parse_args()

    import torch

    import morphomu as mm

    if args.threads:
        torch.set_num_threads(args.threads)
    report: dict = {"args": vars(args), "threads": torch.get_num_threads(), "cpus": os.cpu_count()}
    n_img, n_rna = round(450_000 * args.scale), round(400_000 * args.scale)
    t = time.perf_counter()
    mdata = simulate(n_img, n_rna, args.img_dim, args.rna_dim)
    matrix_gb = (
        sum(
            a.obsm[r].nbytes
            for a, r in (
                (mdata["img"], "X_vit"),
                (mdata["rna"], "X_scgpt"),
                (mdata["rna_synthetic"], "X_scgpt"),
            )
        )
        / 2**30
    )
    report.update(
        n_img=n_img,
        n_rna=n_rna,
        simulate_s=time.perf_counter() - t,
        matrices_gb=matrix_gb,
        rss_after_data_gb=_rss_gb(),
    )
    print(
        f"data: {n_img:,} imaging + 2 x {n_rna:,} RNA cells, matrices {matrix_gb:.2f} GB, RSS {_rss_gb():.2f} GB"
    )

    report.update(
        sampler_throughput(mdata, k=args.k, batch_size=args.batch_size, n_batches=args.sampler_batches)
    )
    print({k: round(v) for k, v in report.items() if k.startswith("sampler")})
    report["peak_after_sampler_gb"] = _peak_gb()

    t = time.perf_counter()
    mm.tl.fidelity(mdata, inplace=False)
    report["fidelity_s"] = time.perf_counter() - t
    print(f"fidelity: {report['fidelity_s']:.1f} s")

    runs = {}
    wanted = (
        None
        if args.settings == "all"
        else set()
        if args.settings == "none"
        else set(args.settings.split(","))
    )
    for setting in ("single", "multi"):
        for label, inputs in SETTINGS.items():
            name = f"{setting}:{label}"
            if wanted is not None and name not in wanted:
                continue
            runs[name] = classifier_epoch(
                mdata, inputs, setting, accelerator=args.accelerator, epoch_size=args.epoch_size
            )
            # upper bound of the paper's protocol: 5 seeds x 100 epochs (early stopping shortens it)
            runs[name]["full_protocol_h_upper_bound"] = (
                runs[name]["epoch_s"] * 100 * 5 / 3600 if args.epoch_size is None else float("nan")
            )
            print(name, {k: round(v, 3) if isinstance(v, float) else v for k, v in runs[name].items()})
            report["peak_rss_gb"] = _peak_gb()
    report["runs"] = runs
    report["peak_rss_gb"] = _peak_gb()
    report["peak_over_matrices"] = report["peak_rss_gb"] / matrix_gb
    print(f"peak RSS {report['peak_rss_gb']:.2f} GB = {report['peak_over_matrices']:.2f} x the matrices")
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
