"""The ``morphomu`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from . import _constants as C
from ._errors import MorphomuError

if TYPE_CHECKING:
    from ._io import StagedOutput


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

    with _staged_out(args) as staged:  # checked now; published below, never over what may not be replaced
        out, tmp = staged.path, staged.tmp
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
        tmp.mkdir()
        mdata.write(tmp / "simulated.h5mu")
        (tmp / "summary.md").write_text(summary)
        counts = {mod: int(a.n_obs) for mod, a in mdata.mod.items()}
        (tmp / "summary.json").write_text(
            json.dumps({"cells": counts, "seconds": round(seconds, 2), **kwargs}, indent=2)
        )
        staged.commit()
    print(summary)
    print(f"wrote {out / 'simulated.h5mu'} and {out / 'summary.md'}")
    return 0


def _staged_out(args: argparse.Namespace) -> StagedOutput:
    """The output directory ``--out``, checked before any work (see :class:`morphomu._io.StagedOutput`)."""
    from ._io import StagedOutput

    return StagedOutput(args.out, overwrite=args.overwrite, arg="--out", flag="--overwrite", kind="dir")


def _run_into(staged: StagedOutput, run: Callable[[Path], dict]) -> dict:
    """Run a benchmark writing into ``staged.tmp`` and publish it; on failure publish what it finished.

    A benchmark that fails once a stage has started writes ``results.json`` with its finished stages and
    ``"status": "failed at <stage>"``; that partial output is published like a complete one (at a
    ``.conflict-`` sibling if ``--out`` may not be replaced) and the exception is raised again. One that
    fails before (its checks of the data) publishes nothing.
    """
    staged.tmp.mkdir()
    try:
        results = run(staged.tmp)
    except BaseException:
        path = staged.tmp / "results.json"
        if not path.is_file():  # nothing computed: nothing to publish
            raise
        status = json.loads(path.read_text()).get("status", "failed")
        try:
            staged.commit()
        except MorphomuError as e:
            print(f"[morphomu benchmark] {e}", file=sys.stderr)
        if staged.published is not None:
            print(
                f"[morphomu benchmark] {status}; the finished stages are in {staged.published / 'results.json'}",
                file=sys.stderr,
            )
        raise
    staged.commit()
    return results


def _check_data_file(path: Path | None) -> None:
    """Refuse ``--data`` before any work unless it is an HDF5 file (an ``.h5mu`` is one)."""
    import h5py

    if path is None:
        return
    if not path.is_file():
        msg = f"--data={str(path)!r} is not a file; expected an .h5mu written by morphomu or mudata."
        raise MorphomuError(msg)
    try:
        is_hdf5 = h5py.is_hdf5(path)
    except OSError as e:  # unreadable: permissions, I/O error
        msg = f"--data={str(path)!r} cannot be read ({e}); expected an .h5mu written by morphomu or mudata."
        raise MorphomuError(msg) from None
    if not is_hdf5:
        msg = (
            f"--data={str(path)!r} is not an HDF5 file; expected an .h5mu written by morphomu or mudata "
            "(e.g. by `morphomu simulate` or mdata.write_h5mu)."
        )
        raise MorphomuError(msg)


def _read_data_file(path: Path):
    """Read ``--data``; a truncated or corrupt ``.h5mu`` is named rather than left to a bare h5py traceback."""
    import mudata

    try:
        return mudata.read_h5mu(path)
    except (OSError, KeyError) as e:  # h5py's errors for a file it cannot read or an object it cannot open
        msg = f"--data={str(path)!r} is not a readable .h5mu ({type(e).__name__}: {e}); it may be truncated or corrupt."
        raise MorphomuError(msg) from None


def _load_benchmark_data(args: argparse.Namespace):
    """The MuData the benchmark runs on, and a description of it."""
    from . import datasets

    if args.data is not None and args.scgenescope is not None:
        msg = "give at most one of --data and --scgenescope."
        raise MorphomuError(msg)
    if args.data is not None:
        mdata = _read_data_file(args.data)
        simulated = "simulation" in mdata.uns.get(C.UNS_KEY, {})  # the simulator stores its ground truth
        return mdata, str(args.data), simulated
    if args.scgenescope is not None:
        return (
            datasets.read_scgenescope(args.scgenescope),
            f"read_scgenescope({str(args.scgenescope)!r})",
            False,
        )
    return datasets.simulate_scgenescope(seed=args.seed), f"simulate_scgenescope(seed={args.seed})", True


def _check_benchmark_args(args: argparse.Namespace) -> None:
    """The checks both benchmark tasks make before any work (the data file, the sizes)."""
    os.environ.setdefault("MPLBACKEND", "Agg")  # plots go to files; no display needed
    from ._core import check_precision

    check_precision(args.precision, "--precision")
    if getattr(args, "scgenescope", None) is None:  # both given: the data loader names the conflict
        _check_data_file(args.data)
    if args.n_steps is not None:  # refused now, not after the models have trained
        from .module._diffusion import max_sampler_steps

        most = max_sampler_steps(args.sampler)
        if not 1 <= args.n_steps <= most:
            why = (
                "the noise schedule's timesteps"
                if args.sampler == "ddim"
                else f"--sampler {args.sampler} runs from t = {most} down"
            )
            msg = f"--n-steps={args.n_steps}: expected a positive integer of at most {most} ({why})."
            raise MorphomuError(msg)
    if args.preset not in ("tiny", "fast", "paper"):  # argparse choices already; kept for programmatic use
        msg = f"--preset={args.preset!r}: choose tiny, fast or paper."
        raise MorphomuError(msg)
    if args.max_epochs is not None and args.max_epochs < 1:
        msg = f"--max-epochs={args.max_epochs}: expected a positive integer."
        raise MorphomuError(msg)


def _report_done(staged: StagedOutput, results: dict, *, t0: float) -> None:
    print(
        f"[morphomu benchmark] done in {time.perf_counter() - t0:.0f} s; report: {staged.path / 'report.md'}"
    )
    print(f"[morphomu benchmark] plots: {', '.join(results['plots'])}")


def _benchmark_morphology(args: argparse.Namespace) -> int:
    """``morphomu benchmark morphology``."""
    from . import benchmark, datasets

    _check_benchmark_args(args)
    with _staged_out(args) as staged:  # checked before any work; published by _run_into
        t0 = time.perf_counter()
        print("[morphomu benchmark] loading data ...", flush=True)
        if args.data is not None:
            mdata = _read_data_file(args.data)
            description, simulated = str(args.data), "simulation" in mdata.uns.get(C.UNS_KEY, {})
        else:
            mdata = datasets.simulate_scgenescope(seed=args.seed, **benchmark.DEFAULT_MORPHOLOGY_DATA)
            kwargs = ", ".join(f"{k}={v!r}" for k, v in benchmark.DEFAULT_MORPHOLOGY_DATA.items())
            description, simulated = f"simulate_scgenescope(seed={args.seed}, {kwargs})", True
        config = benchmark.MorphologyBenchmarkConfig(
            preset=args.preset,
            accelerator=args.accelerator,
            precision=args.precision,
            max_epochs=args.max_epochs,
            n_steps=args.n_steps,
            sampler=args.sampler,
            classifier_preset=args.classifier_preset or ("tiny" if args.preset == "tiny" else "fast"),
            simulated=simulated,
            data=description,
        )
        log = lambda m: print(m, flush=True)  # noqa: E731
        results = _run_into(
            staged, lambda tmp: benchmark.run_morphology_benchmark(mdata, out=tmp, config=config, log=log)
        )
    _report_done(staged, results, t0=t0)
    return 0


def _benchmark_rna(args: argparse.Namespace) -> int:
    """``morphomu benchmark rna`` (and ``morphomu benchmark`` without a task)."""
    from . import benchmark
    from ._validation import validate

    _check_benchmark_args(args)
    with _staged_out(args) as staged:  # checked before any work; published by _run_into
        t0 = time.perf_counter()
        print("[morphomu benchmark] loading data ...", flush=True)
        mdata, description, simulated = _load_benchmark_data(args)
        image_rep = args.image_rep if args.image_rep != "X" else None
        rna_rep = args.rna_rep if args.rna_rep != "X" else None
        validate(mdata, mods={C.IMAGE_MOD: image_rep, C.RNA_MOD: rna_rep}, uns=False)
        config = benchmark.RnaBenchmarkConfig(
            preset=args.preset,
            accelerator=args.accelerator,
            precision=args.precision,
            seeds=tuple(args.seeds),
            cv=args.cv,
            max_epochs=args.max_epochs,
            classifier_preset=args.classifier_preset or args.preset,
            n_steps=args.n_steps,
            sampler=args.sampler,
            simulated=simulated,
            data=description,
            image_rep=image_rep,
            rna_rep=rna_rep,
            ablations=not args.no_ablations,
            umap=not args.no_umap,
        )
        log = lambda m: print(m, flush=True)  # noqa: E731
        results = _run_into(
            staged, lambda tmp: benchmark.run_rna_benchmark(mdata, out=tmp, config=config, log=log)
        )
    _report_done(staged, results, t0=t0)
    return 0


def _convert(args: argparse.Namespace) -> int:
    """Rewrite a trusted format-1 (pickled) model directory in the current, pickle-free format."""
    from .models._base import convert_model_dir

    out = args.out if args.out is not None else args.dir
    manifest = convert_model_dir(args.dir, out, overwrite=args.out is None or args.overwrite)
    print(
        f"converted the {manifest['model']} at {args.dir} to model format {manifest['format_version']}: {out}"
    )
    return 0


def _add_shared_benchmark_options(
    parser: argparse.ArgumentParser,
    *,
    data_help: str,
    preset: str,
    preset_help: str,
    max_epochs_help: str,
    family: str,
) -> argparse._ArgumentGroup:
    """Options both tasks take, each task with its own defaults and help; returns the data group.

    ``family`` (``'phenoseq'`` or ``'trident'``) picks the default sampler and steps.
    """
    from .module._diffusion import DEFAULT_N_STEPS, DEFAULT_SAMPLER, SAMPLERS

    source = parser.add_argument_group("data (default: the embedded simulator)")
    source.add_argument("--data", type=Path, default=None, help=data_help)
    source.add_argument("--seed", type=int, default=0, help="simulator seed")
    parser.add_argument("--out", required=True, type=Path, help="report directory (created)")
    parser.add_argument("--preset", choices=("tiny", "fast", "paper"), default=preset, help=preset_help)
    parser.add_argument("--max-epochs", type=int, default=None, help=max_epochs_help)
    parser.add_argument(
        "--sampler",
        choices=SAMPLERS,
        default=DEFAULT_SAMPLER[family],
        help=f"diffusion sampler (default: {DEFAULT_SAMPLER[family]}; the paper's protocol: ddim with --n-steps 50)",
    )
    parser.add_argument(
        "--n-steps",
        type=int,
        default=DEFAULT_N_STEPS[family],
        help=f"denoising steps of --sampler (default: {DEFAULT_N_STEPS[family]})",
    )
    parser.add_argument("--accelerator", default="auto", help="Lightning accelerator: auto, cpu, gpu")
    parser.add_argument(
        "--precision",
        default="auto",
        help="auto (bf16-mixed where the device has fast bf16, else 32-true), 32-true, bf16-mixed or 16-mixed",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    return source


def _add_rna_parser(tasks: argparse._SubParsersAction) -> None:
    rna = tasks.add_parser(
        "rna",
        help="image -> RNA: train PhenoSeq, generate RNA, and run the scGeneScope evaluation (the default)",
        description=(
            "The main job: split -> train PhenoSeq -> generate synthetic RNA -> fidelity -> the ten "
            "classification settings of the PhenoSeq paper's Tables 1-2 -> ablations -> report. Without "
            "--data or --scgenescope it runs on the embedded simulator."
        ),
    )
    source = _add_shared_benchmark_options(
        rna,
        data_help="an .h5mu in the morphomu contract",
        preset="fast",
        preset_help="PhenoSeq size (default: fast)",
        max_epochs_help="PhenoSeq epochs (default: 20 for tiny and fast, the preset's for paper)",
        family="phenoseq",
    )
    source.add_argument("--scgenescope", type=Path, default=None, help="root of the scGeneScope release")
    _add_classifier_preset(
        rna, help="classifier preset: paper = Table 6 widths (default: the same as --preset)"
    )
    rna.add_argument(
        "--seeds", type=int, nargs="+", default=[12345, 42, 1234, 99, 7], help="classifier seeds"
    )
    rna.add_argument(
        "--cv", action="store_true", help="3-fold replicate cross-validation (PhenoSeq per fold)"
    )
    rna.add_argument("--image-rep", default=C.IMAGE_REP, help="imaging .obsm key ('X' for .X)")
    rna.add_argument("--rna-rep", default=C.RNA_REP, help="RNA .obsm key ('X' for .X)")
    rna.add_argument("--no-ablations", action="store_true", help="skip the ridge / context / guidance rows")
    rna.add_argument("--no-umap", action="store_true", help="skip the UMAP overlay plot")
    rna.set_defaults(command_parser=rna, func=_benchmark_rna)


def _add_classifier_preset(parser: argparse.ArgumentParser, *, help: str) -> None:
    """``--classifier-preset``, and its former name ``--classifier-hparams`` (hidden, for one release)."""
    choices = ("paper", "fast", "tiny")
    parser.add_argument("--classifier-preset", choices=choices, default=None, help=help)
    parser.add_argument(
        "--classifier-hparams", dest="classifier_preset", choices=choices, help=argparse.SUPPRESS
    )


def _add_morphology_parser(tasks: argparse._SubParsersAction) -> None:
    morph = tasks.add_parser(
        "morphology",
        help="RNA + compound -> images: train TRIDENT and score its tiles (FID / KID / IS)",
        description=(
            "The TRIDENT evaluation: compound split -> train TRIDENT with and without RNA -> generate tiles "
            "for the in-distribution (ID) and out-of-distribution (OOD) compounds -> FID / KID / IS per "
            "split, beside a floor of real control tiles -> predicted-transcriptome accuracy -> report. "
            "It needs image tiles: without --data it runs on the embedded simulator with rendered tiles."
        ),
    )
    _add_shared_benchmark_options(
        morph,
        # the scGeneScope feature release holds no tiles, hence no --scgenescope here
        data_help="an .h5mu in the morphomu contract with image tiles in mdata['img'].obsm['images'] "
        "(the scGeneScope feature release has none)",
        preset="tiny",
        preset_help="TRIDENT size (default: tiny, sized for a CPU run of minutes)",
        max_epochs_help="TRIDENT epochs (default: 120 for tiny, 60 for fast, the preset's for paper)",
        family="trident",
    )
    _add_classifier_preset(
        morph,
        help="preset of the classifier behind the IS score (default: tiny for --preset tiny, else fast)",
    )
    morph.set_defaults(command_parser=morph, func=_benchmark_morphology)


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
    sim.set_defaults(command_parser=sim, func=_simulate)

    bench = sub.add_parser(
        "benchmark",
        help="run a benchmark task and write its report (report.md, results.json, plots): rna (the default) "
        "or morphology",
        description=(
            "Run one benchmark task; each has its own options (morphomu benchmark TASK --help). Without a "
            "task, morphomu benchmark [options] runs rna. --task rna|morphology is deprecated: write the "
            "task as a sub-command."
        ),
    )
    tasks = bench.add_subparsers(dest="task", metavar="TASK")
    _add_rna_parser(tasks)
    _add_morphology_parser(tasks)

    conv = sub.add_parser(
        "convert",
        help="rewrite a model directory saved by morphomu < 0.2 (pickled) in the current pickle-free format",
        description=(
            "Reads DIR's format-1 model.pt through an unpickler that admits only arrays, tables and tensors, "
            "and writes model.safetensors + attributes.json. Convert only directories from a trusted source. "
            "Without --out, DIR is replaced (atomically) by the converted model."
        ),
    )
    conv.add_argument("dir", type=Path, help="the model directory (with morphomu.json)")
    conv.add_argument(
        "--out", type=Path, default=None, help="write the converted model here instead (created)"
    )
    conv.add_argument("--overwrite", action="store_true", help="replace --out if it is a morphomu output")
    conv.set_defaults(command_parser=conv, func=_convert)
    return parser


def _quiet_third_party_warnings() -> None:
    """Silence known, harmless deprecation notices of dependencies that would drown the CLI's progress."""
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message=r"From 0.4 .update\(\) will not pull", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


class _StderrHandler(logging.Handler):
    """Log records on the current ``sys.stderr`` (looked up at each record, not bound once)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr)


def _show_output_log() -> None:
    """Show what morphomu's output handling logs (the backup of a replaced output, a restored backup)."""
    log = logging.getLogger("morphomu._io")
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("[morphomu] %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


_BENCHMARK_TASKS = ("rna", "morphology")


def _benchmark_task_argv(argv: list[str]) -> list[str]:
    """``argv`` with the benchmark task written as a sub-command.

    ``morphomu benchmark [options]`` (no task, as in the README's ``morphomu benchmark --out DIR``) runs
    ``rna``, and the deprecated ``--task X`` becomes the sub-command ``X`` with a :class:`FutureWarning`.
    Other commands, and a benchmark whose task is already a sub-command, are returned unchanged.
    """
    # the top-level parser has no option taking a value, so the first word is the command
    i = next((k for k, arg in enumerate(argv) if not arg.startswith("-")), None)
    if i is None or argv[i] != "benchmark":
        return argv
    head, rest = argv[: i + 1], argv[i + 1 :]
    if rest and rest[0] in (*_BENCHMARK_TASKS, "-h", "--help"):
        return argv
    for k, arg in enumerate(rest):
        if arg == "--task" and k + 1 < len(rest):
            task, rest = rest[k + 1], rest[:k] + rest[k + 2 :]
            break
        if arg.startswith("--task="):
            task, rest = arg.partition("=")[2], rest[:k] + rest[k + 1 :]
            break
    else:
        return [*head, "rna", *rest]
    if task in _BENCHMARK_TASKS:  # anything else: argparse refuses it as a task, naming the choices
        msg = (
            f"`morphomu benchmark --task {task}` is deprecated and will be removed in the next release; "
            f"write the task as a sub-command: `morphomu benchmark {task} ...` (its options: "
            f"`morphomu benchmark {task} --help`)."
        )
        warnings.warn(msg, FutureWarning, stacklevel=3)
    return [*head, task, *rest]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``morphomu`` console script."""
    _quiet_third_party_warnings()
    _show_output_log()
    parser = build_parser()
    args, unknown = parser.parse_known_args(
        _benchmark_task_argv(list(sys.argv[1:] if argv is None else argv))
    )
    if unknown:  # refused by the (sub-)command given, so that its usage shows what it takes
        getattr(args, "command_parser", parser).error(f"unrecognized arguments: {' '.join(unknown)}")
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
