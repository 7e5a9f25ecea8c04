"""Save / load time and size of a model directory: morphomu's format 2 beside format 1 (scvi-tools' pickle).

The paper-size PhenoSeq (177 M parameters, imaging 5120-d, RNA 512-d) is built untrained on a small
simulated experiment (the weights' values do not change the timings) and

- saved in format 2 (``model.safetensors`` + ``attributes.json``; ``model.save``) and in format 1 (what
  morphomu 0.1 wrote: scvi-tools' ``BaseModelClass.save``, a pickled ``model.pt``);
- loaded from each (format 1 through the restricted unpickler, ``legacy_format=True``), the loaded
  weights checked equal to the saved ones.

Each figure is the best of ``--repeats`` runs in this one process, so the ratios compare like with like.
Run ``python benchmarks/save_load.py`` (``--preset fast`` for a quick check).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import morphomu as mm


def size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def save_format_1(model, path: Path) -> None:
    from scvi.model.base import BaseModelClass

    BaseModelClass.save(model, str(path), overwrite=True)
    manifest = {"model": type(model).__name__, "format_version": 1, "morphomu_version": "0.1.0.dev0"}
    (path / "morphomu.json").write_text(json.dumps(manifest))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="paper", choices=("paper", "fast", "tiny"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    mdata = mm.datasets.simulate_scgenescope(seed=0, n_img_cells=600, n_rna_cells=600)
    mm.pp.assign_split(mdata)
    mm.models.PhenoSeq.setup_mudata(mdata)
    model = mm.models.PhenoSeq(mdata, preset=args.preset)
    n_params = sum(p.numel() for p in model.module.parameters())
    reference = {k: v.clone() for k, v in model.module.state_dict().items()}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        new, old = Path(tmp) / "format2", Path(tmp) / "format1"

        def save_new() -> None:
            model.save(new, overwrite=True)

        def save_old() -> None:
            save_format_1(model, old)

        loaded = {}

        def load_new() -> None:
            loaded["new"] = mm.models.PhenoSeq.load(new, mdata, accelerator="cpu")

        def load_old() -> None:
            loaded["old"] = mm.models.PhenoSeq.load(old, mdata, accelerator="cpu", legacy_format=True)

        t_save_new, t_save_old = best(save_new, args.repeats), best(save_old, args.repeats)
        t_load_new, t_load_old = best(load_new, args.repeats), best(load_old, args.repeats)
        for key in ("new", "old"):
            state = loaded[key].module.state_dict()
            assert all(torch.equal(state[k], v) for k, v in reference.items()), key
        rows.append(("format 2 (safetensors + JSON)", size_mb(new), t_save_new, t_load_new))
        rows.append(("format 1 (pickle, legacy_format=True)", size_mb(old), t_save_old, t_load_old))
    print(f"PhenoSeq preset={args.preset}: {n_params / 1e6:.1f} M parameters; best of {args.repeats}\n")
    print("| format | size MB | save s | load s |")
    print("| --- | --- | --- | --- |")
    for name, mb, ts, tl in rows:
        print(f"| {name} | {mb:,.1f} | {ts:.2f} | {tl:.2f} |")
    print(
        f"\nformat 2 / format 1: save {rows[0][2] / rows[1][2]:.2f}x the time, load {rows[0][3] / rows[1][3]:.2f}x"
    )


if __name__ == "__main__":
    main()
