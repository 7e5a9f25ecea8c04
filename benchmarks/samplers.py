"""Few-step samplers against the papers' DDIM-50: fidelity, synthetic-RNA classification and speed.

``--model phenoseq`` (default): for each seed, simulate an scGeneScope-like experiment
(``mm.datasets.simulate_scgenescope(seed=...)`` at reduced cell counts), train a PhenoSeq (preset
``fast``, the RNA benchmark's 20 epochs and ``p_uncond``, float32) and generate the synthetic RNA of every
sample with DDIM-50 (the reference), DDIM at fewer steps and the multistep solvers (``dpmsolver++``,
``unipc``) at 5-25 steps. Each setting is scored like the RNA benchmark: ``mm.tl.fidelity`` on the test
splits (Acc@1, MRR, mean energy distance) and the ``RNA (synthetic)`` classification (``mm.tl.classify``,
preset ``fast``, one classifier seed) on ``test_we`` / ``test_he`` (balanced accuracy). Speed: samples/s
of ``PhenoSeq.generate`` on 512 cells (batch 512), best of 2, settings alternated.

``--model trident``: a smaller check of TRIDENT (preset ``tiny``, 16 px tiles): FID / KID of the test
compounds' generated tiles on the morphology readouts (``mm.tl.image_metrics``), and the readout slope
(generated against real per-compound readout shifts from control, through the origin), per setting.

Two more rows calibrate the comparison: DDIM-50 with another generation seed (``redraw``: how much the
metrics move when only the noise is drawn again) and DDIM-200 (the probability-flow ODE nearly solved:
how far DDIM-50 itself is from the solution that the solvers converge to).

A setting matches DDIM-50 when, for every metric, (A) its mean over seeds is within ``2 x`` the standard
deviation of DDIM-50's across seeds (the seed noise of the whole pipeline: data, training, classifier),
with a floor of one condition (``1 / n_conditions``) for Acc@1, a count of conditions whose standard
deviation over three seeds is often 0; and (B) its mean paired difference to DDIM-50 is no larger than
the larger of the redraw's root-mean-square difference and DDIM-200's mean difference: a sampler may move
a metric as much as drawing new noise does, or as far as DDIM-50 is from the ODE's solution. The
recommended default is the smallest step count of a solver from which every larger count measured
matches too; among the solvers, the one with the smaller such count (ties: the one closer to DDIM-50).

    nice python benchmarks/samplers.py                      # PhenoSeq, seeds 0-4 (~20 min on 2 cores)
    nice python benchmarks/samplers.py --model trident --seeds 0 1 --jobs 2 --steps 10 20 --ddim-steps 10
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd

REFERENCE = ("ddim", 50, 0)
REDRAW = ("ddim", 50, 1)  # the reference with other noise: the metrics' generation noise
CONVERGED = ("ddim", 200, 0)  # the ODE nearly solved: DDIM-50's own discretisation error
CONVERGED_DEFAULT = {"phenoseq": True, "trident": False}  # TRIDENT's 200 steps cost too much on a CPU
STEPS = (5, 8, 10, 15, 20, 25)
DDIM_STEPS = (10, 20)
SOLVERS = ("dpmsolver++", "unipc")
PRECISION = "32-true"


def settings(
    steps: tuple[int, ...], ddim_steps: tuple[int, ...], *, converged: bool = True
) -> list[tuple[str, int, int]]:
    """``(sampler, n_steps, generation seed)``: the references, DDIM at fewer steps, each solver at ``steps``."""
    return [
        REFERENCE,
        REDRAW,
        *([CONVERGED] if converged else []),
        *(("ddim", n, 0) for n in ddim_steps),
        *((s, n, 0) for s in SOLVERS for n in steps),
    ]


def label(sampler: str, n_steps: int, gen_seed: int) -> str:
    return f"{sampler}-{n_steps}" + (" (redraw)" if gen_seed else "")


def generation_speed(model, mdata, grid: list[tuple[str, int, int]]) -> dict[tuple[str, int], float]:
    """Samples/s of ``model.generate`` on 512 cells (32 samples x 16) per setting, best of 2, alternated."""
    names = sorted(mdata["img"].obs["sample"].astype(str).unique())[:32]
    best = dict.fromkeys(sorted({(s, n) for s, n, _ in grid}), 0.0)
    for _ in range(2):
        for sampler, n in best:
            t0 = time.perf_counter()
            out = model.generate(
                mdata,
                samples=names,
                n_cells_per_sample=16,
                sampler=sampler,
                n_steps=n,
                batch_size=512,
                precision=PRECISION,
            )
            best[sampler, n] = max(best[sampler, n], out.n_obs / (time.perf_counter() - t0))
    return best


def phenoseq_seed(seed: int, grid: list[tuple[str, int, int]], args: argparse.Namespace) -> pd.DataFrame:
    import torch

    import morphomu as mm
    from morphomu import _constants as C
    from morphomu.benchmark._rna import MAX_EPOCHS, P_UNCOND, fidelity_scores

    mdata = mm.datasets.simulate_scgenescope(
        seed=seed, n_img_cells=args.n_img_cells, n_rna_cells=args.n_rna_cells
    )
    mm.pp.assign_split(mdata)
    mm.models.PhenoSeq.setup_mudata(mdata)
    torch.manual_seed(seed)
    model = mm.models.PhenoSeq(mdata, preset="fast", p_uncond=P_UNCOND)
    t0 = time.perf_counter()
    epochs = args.max_epochs or MAX_EPOCHS["fast"]
    model.train(max_epochs=epochs, accelerator="cpu", seed=seed, precision=PRECISION)
    print(f"[seed {seed}] trained in {time.perf_counter() - t0:.0f} s", flush=True)
    rows = []
    for sampler, n, gen_seed in grid:
        t0 = time.perf_counter()
        mm.tl.generate_rna(mdata, model=model, sampler=sampler, n_steps=n, seed=gen_seed, precision=PRECISION)
        seconds = time.perf_counter() - t0
        table = mm.tl.fidelity(mdata, rep=C.RNA_REP, inplace=False)
        scores = fidelity_scores(table)
        frame = mm.tl.classify(
            mdata,
            inputs=[(C.RNA_SYNTHETIC_MOD, C.RNA_REP, "rna")],
            setting="single",
            seeds=(12345,),
            splits=C.HELD_OUT_SPLITS,
            preset="fast",
            accelerator="cpu",
            precision=PRECISION,
            progress=False,
            inplace=False,
        )
        ba = frame.set_index("test_set")["balanced_accuracy"]
        rows.append(
            {
                "seed": seed,
                "sampler": sampler,
                "n_steps": n,
                "gen_seed": gen_seed,
                "n_conditions": len(table),
                "acc_at_1": scores["accuracy_at_1"],
                "mrr": scores["mrr"],
                "energy": scores["mean_energy"],
                "ba_test_we": float(ba[C.TEST_WE]),
                "ba_test_he": float(ba[C.TEST_HE]),
                "gen_s": seconds,
            }
        )
        print(f"[seed {seed}] {label(sampler, n, gen_seed)}: {rows[-1]}", flush=True)
    if seed == args.seeds[0]:
        speed = generation_speed(model, mdata, grid)
        for row in rows:
            row["samples_per_s"] = speed[row["sampler"], row["n_steps"]]
    return pd.DataFrame(rows)


def trident_seed(seed: int, grid: list[tuple[str, int, int]], args: argparse.Namespace) -> pd.DataFrame:
    """TRIDENT as ``tests/test_trident.py`` trains it (tiny, 16 px tiles, 120 epochs), scored per setting."""
    import torch

    import morphomu as mm

    quiet = {"enable_progress_bar": False, "enable_model_summary": False}
    mdata = mm.datasets.simulate_scgenescope(
        seed=seed, n_img_cells=1000, n_rna_cells=600, with_images=True, image_size=16
    )
    for adata in mdata.mod.values():  # replicate 2 validates, the rest trains
        adata.obs["split"] = pd.Categorical(np.where(adata.obs["replicate"].astype(int) == 2, "val", "train"))
    t0 = time.perf_counter()
    img = mdata["img"].copy()
    mm.models.ImageVAE.setup_anndata(img)
    torch.manual_seed(seed)
    vae = mm.models.ImageVAE(img, preset="tiny", reconstruction="mse")
    vae.train(max_epochs=3, precision=PRECISION, **quiet)
    mm.models.Trident.setup_mudata(mdata)
    torch.manual_seed(seed)
    model = mm.models.Trident(mdata, preset="tiny", n_top_genes=200, image_vae=vae)
    epochs = args.max_epochs or 120
    model.train(max_epochs=epochs, batch_size=32, lr=1e-3, precision=PRECISION, **quiet)
    print(f"[seed {seed}] trained in {time.perf_counter() - t0:.0f} s", flush=True)

    real = mdata["img"]
    names = sorted(real.obs["treatment"].astype(str).unique())
    n_images = args.n_images
    # as many real tiles per compound as generated, at most n_images (FID and KID are biased by set size)
    labels = real.obs["treatment"].astype(str).to_numpy()
    rng = np.random.default_rng(seed)
    picks = {c: np.flatnonzero(labels == c) for c in names}
    picks = {c: rng.choice(r, min(r.size, n_images), replace=False) for c, r in picks.items()}
    real_set = real[np.sort(np.concatenate(list(picks.values())))].copy()

    def dna(tiles: np.ndarray) -> np.ndarray:  # mean DNA intensity per tile (nuclei per field)
        return tiles[:, 0].astype(np.float64).mean(axis=(1, 2))

    real_readout = pd.Series(dna(real.obsm["images"])).groupby(labels).mean().reindex(names).to_numpy()
    rows = []
    for sampler, n, gen_seed in grid:
        t1 = time.perf_counter()
        gen = model.generate(
            seed=gen_seed, compounds=names, n_images=n_images, sampler=sampler, n_steps=n, precision=PRECISION
        )
        seconds = time.perf_counter() - t1
        gen_labels = gen.obs["treatment"].astype(str).to_numpy()
        index = gen.obs_names.str.rsplit("-", n=1).str[-1].astype(int).to_numpy()  # tile index per compound
        cut = gen[
            index < np.array([picks[c].size for c in gen_labels])
        ]  # the first tiles: keyed, as if alone
        table = mm.tl.image_metrics(real_set, cut, features="readouts", treatment_key=None, seed=0)
        gen_readout = pd.Series(dna(gen.obsm["images"])).groupby(gen_labels).mean().reindex(names).to_numpy()
        rows.append(
            {
                "seed": seed,
                "sampler": sampler,
                "n_steps": n,
                "gen_seed": gen_seed,
                "fid": float(table.loc["all", "fid"]),
                "kid": float(table.loc["all", "kid_mean"]),
                # generated per-compound readout on the real one: the share of the real effects reproduced
                "slope": float(np.polyfit(real_readout, gen_readout, 1)[0]),
                "samples_per_s": gen.n_obs / seconds,
            }
        )
        print(f"[seed {seed}] {label(sampler, n, gen_seed)}: {rows[-1]}", flush=True)
    return pd.DataFrame(rows)


def _rows(results: pd.DataFrame, setting: tuple[str, int, int]) -> pd.DataFrame:
    sampler, n, gen_seed = setting
    pick = (results["sampler"] == sampler) & (results["n_steps"] == n) & (results["gen_seed"] == gen_seed)
    return results[pick].set_index("seed").sort_index()


def summarise(results: pd.DataFrame, metrics: tuple[str, ...]) -> tuple[pd.DataFrame, str | None, int | None]:
    """The per-setting table (mean ± sd over seeds, paired difference to DDIM-50) and the recommendation."""
    cols = list(metrics)
    ref = _rows(results, REFERENCE)[cols]
    ref_mean, ref_sd = ref.mean(), ref.std(ddof=1)
    if "acc_at_1" in cols:  # a share of conditions: never resolve less than one condition
        floor = 1.0 / results["n_conditions"].max()
        ref_sd["acc_at_1"] = max(ref_sd["acc_at_1"], floor / 2)
    redraw = _rows(results, REDRAW)[cols] - ref
    tolerance = np.sqrt((redraw**2).mean())
    if len(_rows(results, CONVERGED)):
        tolerance = np.maximum(tolerance, (_rows(results, CONVERGED)[cols] - ref).mean().abs())
    if "acc_at_1" in cols:
        tolerance["acc_at_1"] = max(tolerance["acc_at_1"], floor)
    settings_seen = list(dict.fromkeys(map(tuple, results[["sampler", "n_steps", "gen_seed"]].to_numpy())))
    lines, ok = [], {}
    for setting in settings_seen:
        group = _rows(results, setting)
        mean, sd = group[cols].mean(), group[cols].std(ddof=1)
        diff = (group[cols] - ref.loc[group.index]).mean()
        seed_noise = bool(((mean - ref_mean).abs() <= 2 * ref_sd).all())
        paired = bool((diff.abs() <= tolerance + 1e-12).all())
        ok[setting] = seed_noise and paired
        row = {"setting": label(*setting)}
        for m in cols:
            row[m] = f"{mean[m]:.3f} ± {sd[m]:.3f}" if len(group) > 1 else f"{mean[m]:.3f}"
            row[f"Δ{m}"] = f"{diff[m]:+.3f}"
        if "samples_per_s" in group.columns and group["samples_per_s"].notna().any():
            row["samples/s"] = f"{group['samples_per_s'].dropna().iloc[0]:.0f}"
        row["A: 2 sd"] = "yes" if seed_noise else "no"
        row["B: paired"] = "yes" if paired else "no"
        lines.append(row)
    tol_row = {"setting": "tolerance B", **{f"Δ{m}": f"±{tolerance[m]:.3f}" for m in cols}}
    lines.append(tol_row)
    best: tuple[int, float, str] | None = None
    for sampler in SOLVERS:
        counts = sorted(n for s, n, g in ok if s == sampler and g == 0)
        passing = [n for i, n in enumerate(counts) if all(ok[sampler, m, 0] for m in counts[i:])]
        if not passing:
            continue
        n = passing[0]
        group = _rows(results, (sampler, n, 0))
        gap = float(((group[cols].mean() - ref_mean).abs() / ref_sd).sum())
        if best is None or (n, gap) < best[:2]:
            best = (n, gap, sampler)
    table = pd.DataFrame(lines).fillna("")
    return table, (best[2] if best else None), (best[0] if best else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("phenoseq", "trident"), default="phenoseq")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, nargs="+", default=list(STEPS), help="solver step counts")
    parser.add_argument("--ddim-steps", type=int, nargs="+", default=list(DDIM_STEPS), help="DDIM below 50")
    parser.add_argument("--n-img-cells", type=int, default=2500, help="PhenoSeq: simulated imaged cells")
    parser.add_argument("--n-rna-cells", type=int, default=1500, help="PhenoSeq: simulated sequenced cells")
    parser.add_argument(
        "--converged",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="include DDIM-200 (default: for PhenoSeq only)",
    )
    parser.add_argument("--n-images", type=int, default=8, help="TRIDENT: tiles per compound")
    parser.add_argument(
        "--max-epochs", type=int, default=None, help="training epochs (default: the benchmark's)"
    )
    parser.add_argument(
        "--jobs", type=int, default=3, help="seeds run in parallel processes (1 torch thread each when > 1)"
    )
    parser.add_argument("--out", default=None, help="write the per-seed results to this CSV")
    parser.add_argument("--from-csv", nargs="+", default=None, help="only summarise these result CSVs")
    args = parser.parse_args()

    t0 = time.perf_counter()
    if args.from_csv:
        results = pd.concat([pd.read_csv(f) for f in args.from_csv], ignore_index=True)
    elif args.jobs > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.jobs) as pool:
            parts = list(pool.map(_run_seed, [(seed, args) for seed in args.seeds]))
        results = pd.concat(parts, ignore_index=True)
    else:
        results = pd.concat([_run_seed((seed, args)) for seed in args.seeds], ignore_index=True)
    if args.out:
        results.to_csv(args.out, index=False)
    metrics = (
        ("acc_at_1", "mrr", "energy", "ba_test_we", "ba_test_he")
        if args.model == "phenoseq"
        else ("fid", "kid", "slope")
    )
    seeds = sorted(results["seed"].unique().tolist())
    table, sampler, n_steps = summarise(results, metrics)
    print()
    print(f"{args.model}: {len(seeds)} seeds {seeds}; mean ± sd over seeds; Δ = mean paired difference")
    print(
        "to DDIM-50 (same seed). A: |mean - DDIM-50's| <= 2 x DDIM-50's sd over seeds (Acc@1: >= 1 condition);"
    )
    print("B: |Δ| <= max(RMS Δ of a DDIM-50 redraw, |Δ| of DDIM-200) ('tolerance B'); every metric.")
    print(table.to_markdown(index=False) if _has_tabulate() else table.to_string(index=False))
    if sampler is None:
        print("\nno solver matches DDIM-50 within seed noise at the step counts measured: keep DDIM-50.")
    else:
        print(
            f"\nrecommended: sampler={sampler!r}, n_steps={n_steps} (smallest matching step count of the best solver)"
        )
    print(f"total {time.perf_counter() - t0:.0f} s")


def _run_seed(job: tuple[int, argparse.Namespace]) -> pd.DataFrame:
    """One seed's rows (in a worker process when ``--jobs > 1``)."""
    import torch

    seed, args = job
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1 if args.jobs > 1 else min(2, torch.get_num_threads()))
    converged = CONVERGED_DEFAULT[args.model] if args.converged is None else args.converged
    grid = settings(tuple(args.steps), tuple(args.ddim_steps), converged=converged)
    run = phenoseq_seed if args.model == "phenoseq" else trident_seed
    return run(seed, grid, args)


def _has_tabulate() -> bool:
    import importlib.util

    return importlib.util.find_spec("tabulate") is not None


if __name__ == "__main__":
    main()
