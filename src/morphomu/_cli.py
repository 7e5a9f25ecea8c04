"""The ``morphomu`` command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from . import _constants as C
from ._errors import MorphomuError


def _summary(mdata, *, seconds: float) -> str:
    """A short Markdown summary of a simulated experiment."""
    lines = ["# morphomu simulated scGeneScope experiment", ""]
    lines.append(f"Built in {seconds:.1f} s. Simulated data: not comparable to the real scGeneScope release.")
    lines.append("")
    lines.append("| modality | cells | features | samples | treatments |")
    lines.append("| --- | --- | --- | --- | --- |")
    for mod, adata in mdata.mod.items():
        rep = C.IMAGE_REP if C.IMAGE_REP in adata.obsm else C.RNA_REP if C.RNA_REP in adata.obsm else None
        n_features = adata.obsm[rep].shape[1] if rep else adata.n_vars
        lines.append(
            f"| {mod} | {adata.n_obs:,} | {n_features:,} ({rep or '.X'}) | "
            f"{adata.obs[C.SAMPLE_KEY].nunique()} | {adata.obs[C.TREATMENT_KEY].nunique()} |"
        )
    lines.append("")
    if C.SPLIT_KEY in mdata[C.RNA_MOD].obs:
        lines.append("| split | " + " | ".join(mdata.mod) + " |")
        lines.append("| --- |" + " --- |" * len(mdata.mod))
        for split in C.SPLITS:
            counts = [int((a.obs[C.SPLIT_KEY] == split).sum()) for a in mdata.mod.values()]
            lines.append(f"| {split} | " + " | ".join(f"{c:,}" for c in counts) + " |")
        lines.append("")
    truth = mdata.uns.get(C.UNS_KEY, {}).get("simulation", {})
    silent = truth.get("silent")
    if silent is not None:
        lines.append(f"Morphologically silent treatments (ground truth): {', '.join(map(str, silent))}.")
    return "\n".join(lines) + "\n"


def _simulate(args: argparse.Namespace) -> int:
    from . import datasets, pp
    from ._io import atomic_path, check_writable

    out = check_writable(args.out, overwrite=args.overwrite, arg="--out", flag="--overwrite")
    t0 = time.perf_counter()
    kwargs = {"seed": args.seed, "with_images": args.with_images}
    if args.n_img_cells is not None:
        kwargs["n_img_cells"] = args.n_img_cells
    if args.n_rna_cells is not None:
        kwargs["n_rna_cells"] = args.n_rna_cells
    print(f"simulating scGeneScope-like data ({kwargs}) ...", flush=True)
    mdata = datasets.simulate_scgenescope(**kwargs)
    pp.assign_split(mdata)
    seconds = time.perf_counter() - t0
    summary = _summary(mdata, seconds=seconds)
    with atomic_path(out, overwrite=args.overwrite, arg="--out", flag="--overwrite") as tmp:
        tmp.mkdir()
        mdata.write(tmp / "simulated.h5mu")
        (tmp / "summary.md").write_text(summary)
        counts = {mod: int(a.n_obs) for mod, a in mdata.mod.items()}
        (tmp / "summary.json").write_text(
            json.dumps({"cells": counts, "seconds": round(seconds, 2), **kwargs}, indent=2)
        )
    print(summary)
    print(f"wrote {out / 'simulated.h5mu'} and {out / 'summary.md'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (public for the docs' CLI reference)."""
    parser = argparse.ArgumentParser(
        prog="morphomu",
        description="Cross-modal generation between Cell Painting morphology and single-cell transcriptomics.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    sim = sub.add_parser(
        "simulate", help="write the default simulated scGeneScope-like experiment (.h5mu + summary)"
    )
    sim.add_argument("--out", required=True, type=Path, help="output directory (created)")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--n-img-cells", type=int, default=None, help="imaged cells (default: the simulator's)")
    sim.add_argument(
        "--n-rna-cells", type=int, default=None, help="sequenced cells (default: the simulator's)"
    )
    sim.add_argument("--with-images", action="store_true", help="also render 5-channel image tiles")
    sim.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    sim.set_defaults(func=_simulate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``morphomu`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from . import __version__

        print(__version__)
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except MorphomuError as e:
        print(f"morphomu {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
