"""Trident speed: end-to-end training samples/s and generated images/s per preset, with peak memory.

Each preset runs in its own subprocess (so peak RSS belongs to it alone) on simulated scGeneScope data
with 5-channel field tiles: ``tiny`` on 16 px tiles, ``fast`` on 32 px tiles (CPU sizes), and, when CUDA
is available, ``paper`` (DiT-XL/2 over 64 x 64 x 4 latents of 512 px tiles through Stable Diffusion's
VAE layout). The image VAE is trained for one epoch first (not timed); the timed training call is
``Trident.train`` itself (tile encoding, condition tables, Lightning loop, EMA), the timed generation
is ``Trident.generate`` (DDIM + decoding).

    python benchmarks/trident.py                       # tiny and fast on CPU (+ paper on a GPU)
    python benchmarks/trident.py --presets fast --epochs 2 --gen-images 8 --gen-steps 50
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

TILE_SIZE = {"tiny": 16, "fast": 32, "paper": 512}
N_IMAGES = {"tiny": 600, "fast": 600, "paper": 600}


def run_preset(preset: str, epochs: int, gen_images: int, gen_steps: int, device: str) -> dict:
    import warnings

    import numpy as np
    import torch

    import morphomu as mm
    from morphomu.models._trident import Trident

    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    mdata = mm.datasets.simulate_scgenescope(
        seed=0, n_img_cells=N_IMAGES[preset], n_rna_cells=600, with_images=True, image_size=TILE_SIZE[preset]
    )
    for adata in mdata.mod.values():  # replicate 2 validates, the rest trains
        adata.obs["split"] = np.where(adata.obs["replicate"].astype(int) == 2, "val", "train")
    Trident.setup_mudata(mdata)
    accelerator = "gpu" if device == "cuda" else "cpu"
    quiet = {"enable_progress_bar": False, "enable_model_summary": False, "logger": False}
    model = Trident(mdata, preset=preset)
    model.image_vae.train(max_epochs=1, accelerator=accelerator, devices=1, **quiet)
    n_train = int((mdata["img"].obs["split"] == "train").sum())
    precision = "bf16-mixed" if device == "cuda" else None
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    model.train(max_epochs=epochs, accelerator=accelerator, devices=1, precision=precision, **quiet)
    if device == "cuda":
        torch.cuda.synchronize()
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    out = model.generate(compounds=["Colchicine"], n_images=gen_images, n_steps=gen_steps)
    if device == "cuda":
        torch.cuda.synchronize()
    gen_s = time.perf_counter() - start
    return {
        "preset": preset,
        "device": device,
        "tile": f"{out.obsm['images'].shape[1]}x{TILE_SIZE[preset]}x{TILE_SIZE[preset]}",
        "parameters": sum(p.numel() for p in model.module.parameters()),
        "train_samples_per_s": n_train * epochs / train_s,
        "gen_images_per_s": gen_images / gen_s,
        "gen_steps": gen_steps,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "cuda_max_allocated_mb": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--presets", nargs="*", default=None, help="default: tiny fast (+ paper with CUDA)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--gen-images", type=int, default=16)
    parser.add_argument("--gen-steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        preset, device = args._child.split(":")
        print(json.dumps(run_preset(preset, args.epochs, args.gen_images, args.gen_steps, device)))
        return
    import torch

    cuda = torch.cuda.is_available()
    presets = args.presets or (["tiny", "fast", "paper"] if cuda else ["tiny", "fast"])
    rows = []
    for preset in presets:
        device = "cuda" if cuda and preset == "paper" else "cpu"
        cmd = [sys.executable, __file__, "--_child", f"{preset}:{device}", "--epochs", str(args.epochs)]
        cmd += ["--gen-images", str(args.gen_images), "--gen-steps", str(args.gen_steps)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if res.returncode:
            print(res.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"preset {preset} failed")
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    header = f"{'preset':<7}{'device':<7}{'tile':<12}{'params':>12}{'train img/s':>13}{'gen img/s':>11}{'steps':>7}{'peak RSS MB':>13}{'CUDA MB':>9}"
    print(header)
    print("-" * len(header))
    for r in rows:
        cuda_mb = "-" if r["cuda_max_allocated_mb"] is None else f"{r['cuda_max_allocated_mb']:.0f}"
        print(
            f"{r['preset']:<7}{r['device']:<7}{r['tile']:<12}{r['parameters']:>12,}{r['train_samples_per_s']:>13.1f}"
            f"{r['gen_images_per_s']:>11.2f}{r['gen_steps']:>7}{r['peak_rss_mb']:>13.0f}{cuda_mb:>9}"
        )


if __name__ == "__main__":
    main()
