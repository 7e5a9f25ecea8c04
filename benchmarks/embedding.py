"""Speed and memory of raw images -> per-cell crops -> per-stain ViT features.

A plate is simulated from cellprofiler's real ExampleFly fields (3 stains, repeated to 5 so that it has
Cell Painting's stain count), written as one multi-channel TIFF per field. Then:

1. ``mm.pp.crop_cells`` streams the plate field by field into a zarr store: cells/s, and the peak of
   Python-tracked memory (numpy included) against the size of the plate if it were loaded whole;
2. ``mm.pp.embed_images`` embeds cells from that store with ViT-L/16 per stain (5 x 1024 features):
   cells/s and images/s on the CPU in float32, and on the GPU (float32 and bfloat16 autocast, with the
   features' correlation to float32) when one is present. Weights are random unless
   ``--checkpoint`` is given (speed does not depend on them).

Run ``python benchmarks/embedding.py --short`` for a quick check, without it for a plate-sized run.
"""

from __future__ import annotations

import argparse
import importlib.util
import resource
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import tifffile

FLY = (
    Path(importlib.util.find_spec("cellprofiler").submodule_search_locations[0])
    / "data/examples/ExampleFly/images"
)
FLY_FIELDS = ("POS002", "POS076", "POS218")


def write_plate(directory: Path, n_fields: int) -> list[Path]:
    """``n_fields`` 5-channel uint8 TIFFs made from the real fly fields (flipped / rotated for variety)."""
    paths = []
    for i in range(n_fields):
        pos = FLY_FIELDS[i % len(FLY_FIELDS)]
        d, f, r = (tifffile.imread(FLY / f"01_{pos}_{c}.TIF") for c in "DFR")
        field = np.stack([d, f, r, f, r])
        field = np.rot90(field, k=(i // 3) % 4, axes=(1, 2)) if (i // 3) % 2 == 0 else field[:, ::-1]
        path = directory / f"field{i:04d}.tif"
        tifffile.imwrite(path, np.ascontiguousarray(field))
        paths.append(path)
    return paths


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="4 fields, 10 cells embedded")
    parser.add_argument("--fields", type=int, default=48, help="fields in the simulated plate")
    parser.add_argument("--cells", type=int, default=64, help="cells embedded per device")
    parser.add_argument("--crop-size", type=int, default=96)
    parser.add_argument("--model", default="vit_large_patch16_224")
    parser.add_argument("--checkpoint", default=None, help="local weights (default: random weights)")
    parser.add_argument("--batch-size", type=int, default=16, help="cells per forward pass")
    parser.add_argument(
        "--cpu-bf16",
        action="store_true",
        help="also time bfloat16 autocast on the CPU (measured 6x slower than fp32 on a 2-core AVX-512 VM)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.short:
        args.fields, args.cells = 4, 10

    import timm
    import torch

    import morphomu as mm

    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = write_plate(tmp, args.fields)
        plate_mib = sum(5 * np.prod(tifffile.TiffFile(p).series[0].shape[1:]) for p in paths) / 2**20

        # 1. crop, streamed field by field into zarr (after a one-field warm-up: imports are not the plate)
        mm.pp.crop_cells(paths[:1], crop_size=args.crop_size, progress=False)
        tracemalloc.start()
        start = time.perf_counter()
        cells = mm.pp.crop_cells(
            paths,
            crop_size=args.crop_size,
            store=tmp / "crops.zarr",
            channel_names=mm._constants.STAINS,
            progress=False,
        )
        seconds = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rows.append(
            (
                "crop_cells (segment + crop -> zarr)",
                "cpu",
                cells.n_obs,
                seconds,
                f"traced peak {peak / 2**20:.0f} MiB",
            )
        )

        # 2. ViT per stain, from the zarr store
        checkpoint = args.checkpoint
        if checkpoint is None:
            checkpoint = tmp / "weights.pth"
            torch.save(
                timm.create_model(args.model, pretrained=False, num_classes=0).state_dict(), checkpoint
            )
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        subset = cells[: args.cells].copy()
        for device in devices:
            precisions = ("32", "bf16") if device == "cuda" or args.cpu_bf16 else ("32",)
            for precision in precisions:
                kwargs = {
                    "model": args.model,
                    "checkpoint": checkpoint,
                    "device": device,
                    "precision": precision,
                }
                if device == "cuda":  # warm-up: CUDA context and kernel selection are not throughput
                    mm.pp.embed_images(subset[:2].copy(), progress=False, **kwargs)
                start = time.perf_counter()
                mm.pp.embed_images(
                    subset, batch_size=args.batch_size, key_added=f"X_{precision}", progress=False, **kwargs
                )
                if device == "cuda":
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - start
                dim = subset.obsm[f"X_{precision}"].shape[1]
                note = f"{5 * subset.n_obs / seconds:.2f} images/s"
                if precision != "32":
                    a, b = subset.obsm["X_32"], subset.obsm[f"X_{precision}"]
                    r = np.mean([np.corrcoef(x, y)[0, 1] for x, y in zip(a, b, strict=True)])
                    note += f"; per-cell corr. with fp32 {r:.4f}"
                stage = f"embed_images {args.model} per stain ({dim} feat.) {precision}"
                rows.append((stage, device, subset.n_obs, seconds, note))

    print(f"\nplate: {args.fields} fields x 5 stains x 1006 x 1000 uint8 = {plate_mib:.0f} MiB if loaded whole; "
          f"crops {args.crop_size} px; torch threads {torch.get_num_threads()}")  # fmt: skip
    print(f"{'stage':<58} {'device':<6} {'cells':>7} {'seconds':>9} {'cells/s':>9}  note")
    for stage, device, n, seconds, note in rows:
        print(f"{stage:<58} {device:<6} {n:>7} {seconds:>9.2f} {n / seconds:>9.2f}  {note}")
    print(f"process peak RSS {rss_mib():.0f} MiB (includes the ViT and its activations)")


if __name__ == "__main__":
    main()
