"""bf16 mixed precision against float32: the same learning and the same benchmark numbers, per model.

``precision="auto"`` trains and generates in bf16 autocast on hardware with fast bf16. This script is the
evidence that it changes nothing beyond seed noise: each model at its ``tiny`` preset is trained over
three seeds in ``'32-true'`` and in ``'bf16-mixed'``, and the table prints, per metric, the mean ± sd
over seeds of each precision and ``|difference of means| / sd`` (the sd: the larger of the two).

- PhenoSeq: final train / validation loss; fidelity of 128 generated cells per test_we sample
  (Acc@1, MRR, mean energy distance, as ``morphomu benchmark rna``), generated in the same precision.
- Treatment classifier (``tl.classify``, imaging ``X_vit``, single-profile): balanced accuracy on
  test_we / test_he, the classifier's seeds being the three seeds.
- ImageVAE: final validation reconstruction.
- Trident: final train loss and the generated tiles' mean intensity against the real one.

    python benchmarks/precision.py            # about 10 minutes on 2 CPU cores
    python benchmarks/precision.py --quick    # one seed, fewer epochs (a smoke run)
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import morphomu as mm
from morphomu.models import ImageVAE, PhenoSeq, Trident

PRECISIONS = ("32-true", "bf16-mixed")
QUIET = {"enable_progress_bar": False}
COMPOUNDS = ["Thapsigargin", "Colchicine"]  # Trident's generated tiles: two compounds of strong effects


def phenoseq(seed: int, precision: str, epochs: int) -> dict[str, float]:
    mdata = mm.datasets.simulate_scgenescope(seed=0, n_img_cells=3000, n_rna_cells=3000)
    mm.pp.assign_split(mdata)
    PhenoSeq.setup_mudata(mdata)
    torch.manual_seed(seed)
    model = PhenoSeq(mdata, preset="tiny")
    model.train(max_epochs=epochs, seed=seed, precision=precision, **QUIET)
    mm.tl.generate_rna(mdata, model=model, n_cells_per_sample=128, seed=seed, precision=precision)
    fid = mm.tl.fidelity(mdata, splits="test_we", inplace=False)
    rank = fid["rank"].to_numpy(dtype=float)
    return {
        "train loss": float(model.history_["train_loss"].to_numpy(dtype=float)[-1, 0]),
        "validation loss": float(model.history_["validation_loss"].to_numpy(dtype=float)[-1, 0]),
        "Acc@1": float(np.mean(rank == 1)),
        "MRR": float(np.mean(1.0 / rank)),
        "energy distance": float(fid["energy"].mean()),
    }


def classifier(seed: int, precision: str, _epochs: int) -> dict[str, float]:
    mdata = mm.datasets.simulate_scgenescope(seed=0, n_img_cells=3000, n_rna_cells=3000)
    mm.pp.assign_split(mdata)
    table = mm.tl.classify(
        mdata,
        inputs=[("img", "X_vit")],
        preset="tiny",
        seeds=[seed],
        precision=precision,
        progress=False,
        inplace=False,
    )
    by_set = table.groupby("test_set")["balanced_accuracy"].mean()
    return {f"balanced accuracy {k}": float(v) for k, v in by_set.items()}


def _image_data():
    mdata = mm.datasets.simulate_scgenescope(
        seed=0, n_img_cells=1000, n_rna_cells=600, with_images=True, image_size=16
    )
    mm.pp.assign_split(mdata)
    return mdata


def image_vae(seed: int, precision: str, epochs: int) -> dict[str, float]:
    img = _image_data()["img"].copy()
    ImageVAE.setup_anndata(img)
    torch.manual_seed(seed)
    vae = ImageVAE(img, preset="tiny", reconstruction="mse")
    vae.train(max_epochs=epochs, seed=seed, precision=precision, **QUIET)
    return {
        "validation reconstruction": float(
            vae.history_["validation_reconstruction"].to_numpy(dtype=float)[-1, 0]
        )
    }


def trident(seed: int, precision: str, epochs: int) -> dict[str, float]:
    mdata = _image_data()
    Trident.setup_mudata(mdata)
    torch.manual_seed(seed)
    model = Trident(mdata, preset="tiny", n_top_genes=200)
    model.train(max_epochs=epochs, vae_epochs=3, seed=seed, precision=precision, **QUIET)
    tiles = model.generate(compounds=COMPOUNDS, n_images=16, seed=seed, precision=precision)
    img = mdata["img"]
    real = np.asarray(
        img.obsm["images"][img.obs["treatment"].isin(COMPOUNDS).to_numpy()], dtype=np.float64
    ).mean()
    fake = np.asarray(tiles.obsm["images"], dtype=np.float64).mean()
    return {
        "train loss": float(model.history_["train_loss"].to_numpy(dtype=float)[-1, 0]),
        "generated - real mean intensity": float(fake - real),
    }


MODELS = {
    "PhenoSeq": (phenoseq, 15),
    "classifier": (classifier, 0),
    "ImageVAE": (image_vae, 10),
    "Trident": (trident, 30),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--quick", action="store_true", help="one seed, a third of the epochs")
    parser.add_argument(
        "--csv", type=Path, default=None, help="append each run's metrics here; the table uses all"
    )
    parser.add_argument("--table-only", action="store_true", help="print the table of --csv without running")
    args = parser.parse_args()
    if args.table_only and args.csv is None:
        parser.error("--table-only needs --csv")
    seeds = args.seeds[:1] if args.quick else args.seeds
    warnings.filterwarnings("ignore")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows, start = [], time.perf_counter()
    for name in [] if args.table_only else args.models:
        fn, epochs = MODELS[name]
        epochs = max(1, epochs // 3) if args.quick else epochs
        for seed in seeds:
            for precision in PRECISIONS:  # alternating, so load drifts hit both alike
                t0 = time.perf_counter()
                new = [
                    {"model": name, "metric": metric, "precision": precision, "seed": seed, "value": value}
                    for metric, value in fn(seed, precision, epochs).items()
                ]
                rows += new
                if args.csv is not None:  # kept as it comes: a later failure loses nothing
                    pd.DataFrame(new).to_csv(args.csv, mode="a", header=not args.csv.exists(), index=False)
                print(f"{name} seed {seed} {precision}: {time.perf_counter() - t0:.0f} s", flush=True)
    df = pd.DataFrame(rows)
    if args.csv is not None:  # every run kept there (an earlier, interrupted call's too); the last of each
        df = pd.read_csv(args.csv).drop_duplicates(["model", "metric", "precision", "seed"], keep="last")
        seeds = sorted(df["seed"].unique().tolist())
    stats = (
        df.groupby(["model", "metric", "precision"], sort=False)["value"]
        .agg(["mean", "std"])
        .unstack("precision")
    )
    out = pd.DataFrame(index=stats.index)
    for p in PRECISIONS:
        out[p] = [
            f"{m:.4f} ± {s:.4f}" for m, s in zip(stats[("mean", p)], stats[("std", p)].fillna(0), strict=True)
        ]
    sd = stats["std"].max(axis=1)
    out["|diff| / sd"] = (stats[("mean", PRECISIONS[1])] - stats[("mean", PRECISIONS[0])]).abs() / sd
    print(
        f"\n{len(seeds)} seeds ({seeds}); mean ± sd over seeds; total {time.perf_counter() - start:.0f} s\n"
    )
    print(out.reset_index().to_markdown(index=False, floatfmt=".2f"))


if __name__ == "__main__":
    main()
