"""Larger than memory: PhenoSeq training and ``mm.tl.classify`` on a backed MuData at round-1 scale.

Simulates an scGeneScope-like experiment straight to disk (``simulate_scgenescope(out=...)``: the
5120-d float32 imaging matrix is written in chunks, ~450k cells = 9.2 GB at full scale), opens it
with ``mudata.read_h5mu(..., backed=True)`` and runs, each in its own subprocess so that its peak memory
is its own:

- ``data``: PhenoSeq's data path alone (standardisation statistics, cache build, then batches of
  ``batch`` RNA cells x ``n_context_cells`` imaging cells drawn from it): cache build time and items/s;
- ``train``: a bounded number of PhenoSeq training steps (``fast`` preset) through the disk cache;
- ``classify``: ``mm.tl.classify`` (single- and multi-profile, one seed, one epoch of a bounded number
  of examples, scored on ``test_we``) on the backed imaging matrix;

and the same on a subset that fits in memory (``--subset`` cells), through the cache and in memory,
for the throughput comparison. Memory is sampled from ``/proc/self/status`` every 50 ms in a thread:
``VmHWM`` (peak resident set, file pages included), the peak of ``RssAnon`` (the process's own memory)
and of ``RssFile`` (file pages mapped into it). The cache is read with ``os.preadv``, so its pages stay
in the kernel's page cache and ``RssFile`` stays small.

    python benchmarks/larger_than_memory.py                 # full scale: ~450k x 5120 (9.2 GB)
    python benchmarks/larger_than_memory.py --scale 0.1     # 45k cells (0.9 GB)
    python benchmarks/larger_than_memory.py --dir /big/tmp --keep   # keep the simulated files

Check ``free -g`` and ``df -h`` first: the full run needs ~2 x 9.2 GB of disk (data + cache) and leaves
most of the file in the page cache (reclaimable).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

ROUND1_IMG_CELLS = 450_000
ROUND1_RNA_CELLS = 60_000


# ---------------------------------------------------------------------------------------------------
# measurement helpers (run inside the subprocess)
# ---------------------------------------------------------------------------------------------------
def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) * 1024
    return out


class MemorySampler:
    """Peak ``RssAnon`` / ``RssFile`` sampled in a thread; ``VmHWM`` read at the end."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval, self.peak = interval, {"RssAnon": 0, "RssFile": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            s = _status()
            for k in self.peak:
                self.peak[k] = max(self.peak[k], s[k])
            time.sleep(self.interval)

    def __enter__(self) -> MemorySampler:
        self.base = _status()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        s = _status()
        self.result = {
            "vm_hwm": s["VmHWM"],
            "rss_anon_peak": max(self.peak["RssAnon"], s["RssAnon"]),
            "rss_file_peak": max(self.peak["RssFile"], s["RssFile"]),
            "rss_anon_before": self.base["RssAnon"],
        }


def _quiet() -> None:
    import logging

    warnings.simplefilter("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "scvi"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _timed_builds():
    """Record the time of every disk-cache build."""
    from morphomu.train import _disk_cache

    times: list[float] = []
    build = _disk_cache.RowCache.build.__func__

    def timed(cls, *a, **k):
        start = time.perf_counter()
        cache = build(cls, *a, **k)
        times.append(time.perf_counter() - start)
        return cache

    _disk_cache.RowCache.build = classmethod(timed)
    return times


def _open(path: str):
    import mudata

    import morphomu as mm

    mdata = mudata.read_h5mu(path, backed=True)
    mm.pp.assign_split(mdata)
    return mdata


def _load_in_memory(path: str):
    """The backed file as an in-memory MuData (imaging in ``.X`` too)."""
    import mudata

    import morphomu as mm

    mdata = mudata.read_h5mu(path)
    mm.pp.assign_split(mdata)
    return mdata


def task_simulate(args) -> dict:
    import morphomu as mm

    start = time.perf_counter()
    with MemorySampler() as mem:
        mdata = mm.datasets.simulate_scgenescope(
            seed=0, n_img_cells=args.n_img, n_rna_cells=args.n_rna, out=args.path, overwrite=True
        )
        shape = mdata["img"].X.shape
        mdata.file.close()
    return {"seconds": time.perf_counter() - start, "shape": shape, **mem.result}


def task_data(args) -> dict:
    """PhenoSeq's data path: statistics + cache (or in-memory rows), then ``--batches`` batches."""
    import morphomu as mm

    builds = _timed_builds()
    mdata = _open(args.path) if args.mode == "cache" else _load_in_memory(args.path)
    mm.models.PhenoSeq.setup_mudata(mdata, image_rep=None)
    model = mm.models.PhenoSeq(mdata, preset="tiny", n_context_cells=16)
    with MemorySampler() as mem:
        start = time.perf_counter()
        dm = model._prepare_training(
            batch_size=args.batch, seed=0, num_workers=0, in_memory=args.mode == "memory"
        )
        prepare = time.perf_counter() - start
        ds = dm.train_set
        ds[(0, 0)]
        start = time.perf_counter()
        for step in range(1, args.batches + 1):
            batch = ds[(0, step)]
        elapsed = time.perf_counter() - start
        img = ds.img
        if hasattr(img, "close"):
            img.close()
    return {
        "prepare_s": prepare,
        "cache_build_s": sum(builds),
        "items_per_s": args.batch * args.batches / elapsed,
        "rows_per_s": args.batch * args.batches * batch["img"].shape[1] / elapsed,
        **mem.result,
    }


def task_train(args) -> dict:
    import torch
    from lightning.pytorch.callbacks import Callback

    import morphomu as mm

    class Steps(Callback):
        times: list[float] = []

        def on_train_batch_end(self, *a, **k) -> None:
            self.times.append(time.perf_counter())

    builds = _timed_builds()
    mdata = _open(args.path) if args.mode == "cache" else _load_in_memory(args.path)
    mm.models.PhenoSeq.setup_mudata(mdata, image_rep=None)
    torch.manual_seed(0)
    model = mm.models.PhenoSeq(mdata, preset="fast")
    steps = Steps()
    with MemorySampler() as mem:
        start = time.perf_counter()
        model.train(
            max_epochs=1,
            batch_size=args.batch,
            in_memory=args.mode == "memory",
            limit_train_batches=args.steps,
            limit_val_batches=1,
            early_stopping=False,
            enable_progress_bar=False,
            callbacks=[steps],
        )
        total = time.perf_counter() - start
    t = steps.times
    return {
        "train_s": total,
        "cache_build_s": sum(builds),
        "items_per_s": args.batch * (len(t) - 1) / (t[-1] - t[0]),
        "final_loss": float(model.history["train_loss"].iloc[-1, 0]),
        **mem.result,
    }


def task_classify(args) -> dict:
    import morphomu as mm

    builds = _timed_builds()
    mdata = _open(args.path) if args.mode == "cache" else _load_in_memory(args.path)
    n_train = int((mdata["img"].obs["split"] == "train").sum())
    with MemorySampler() as mem:
        start = time.perf_counter()
        res = mm.tl.classify(
            mdata,
            inputs=("img", None),
            setting=args.setting,
            seeds=[12345],
            hparams={"preset": "fast", "max_epochs": 1, "epoch_size": min(args.examples, n_train)},
            test_sets=("test_we",),
            in_memory=args.mode == "memory",
            progress=False,
            inplace=False,
        )
        total = time.perf_counter() - start
    return {
        "classify_s": total,
        "cache_build_s": sum(builds),
        "balanced_accuracy": float(res["balanced_accuracy"].iloc[0]),
        "n_test": int(res["n_examples"].iloc[0]),
        **mem.result,
    }


TASKS = {"simulate": task_simulate, "data": task_data, "train": task_train, "classify": task_classify}


# ---------------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------------
def run(task: str, **kw) -> dict:
    cmd = [sys.executable, __file__, "--task", task]
    for k, v in kw.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        sys.stderr.write(proc.stderr[-4000:])
        msg = f"task {task} {kw} failed"
        raise RuntimeError(msg)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _gb(n: float) -> str:
    return f"{n / 2**30:.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=sorted(TASKS))
    p.add_argument("--path")
    p.add_argument("--mode", choices=["cache", "memory"], default="cache")
    p.add_argument("--setting", default="single")
    p.add_argument("--n-img", type=int)
    p.add_argument("--n-rna", type=int)
    p.add_argument("--scale", type=float, default=1.0, help="fraction of round 1 (450k imaging cells)")
    p.add_argument("--subset", type=int, default=40_000, help="imaging cells of the in-memory comparison")
    p.add_argument("--batch", type=int, default=256, help="RNA cells per PhenoSeq batch (the paper's 256)")
    p.add_argument("--batches", type=int, default=50, help="batches of the data-path measurement")
    p.add_argument("--steps", type=int, default=20, help="PhenoSeq training steps")
    p.add_argument("--examples", type=int, default=20_000, help="classifier training examples (one epoch)")
    p.add_argument("--settings", default="single,multi")
    p.add_argument("--dir", default=None, help="where the simulated files go (default a temporary directory)")
    p.add_argument("--keep", action="store_true", help="keep the simulated files (reused when present)")
    args = p.parse_args()
    if args.task:
        _quiet()
        print(json.dumps(TASKS[args.task](args), default=str))
        return

    work = Path(args.dir or tempfile.mkdtemp(prefix="morphomu-ltm-"))
    work.mkdir(parents=True, exist_ok=True)
    n_img = int(ROUND1_IMG_CELLS * args.scale)
    n_rna = max(2000, int(ROUND1_RNA_CELLS * args.scale))
    full, small = work / f"round1-{n_img}.h5mu", work / f"subset-{args.subset}.h5mu"
    n_small_rna = max(2000, int(n_rna * args.subset / n_img))
    print(f"# free: {shutil.disk_usage(work).free / 2**30:.0f} GiB disk in {work}", flush=True)
    rows = []
    try:
        for path, ni, nr in ((full, n_img, n_rna), (small, args.subset, n_small_rna)):
            if not path.exists():
                r = run("simulate", path=path, n_img=ni, n_rna=nr)
                print(f"# simulated {ni} x 5120 to {path.name} in {r['seconds']:.0f} s", flush=True)
        matrix = {full: n_img * 5120 * 4, small: args.subset * 5120 * 4}
        common = {"batch": args.batch}
        plan = [
            ("PhenoSeq data path", "data", full, "cache", {"batches": args.batches, **common}),
            ("PhenoSeq data path", "data", small, "cache", {"batches": args.batches, **common}),
            ("PhenoSeq data path", "data", small, "memory", {"batches": args.batches, **common}),
            ("PhenoSeq train (fast)", "train", full, "cache", {"steps": args.steps, **common}),
            ("PhenoSeq train (fast)", "train", small, "cache", {"steps": args.steps, **common}),
            ("PhenoSeq train (fast)", "train", small, "memory", {"steps": args.steps, **common}),
        ]
        for setting in args.settings.split(","):
            for path, mode in ((full, "cache"), (small, "cache"), (small, "memory")):
                plan.append(
                    (
                        f"classify {setting}",
                        "classify",
                        path,
                        mode,
                        {"setting": setting, "examples": args.examples},
                    )
                )
        for name, task, path, mode, kw in plan:
            r = run(task, path=path, mode=mode, **kw)
            n = n_img if path == full else args.subset
            rows.append((name, n, mode, matrix[path], r))
            print(f"# {name} {n} {mode}: {json.dumps(r)}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    header = (
        "| run | imaging cells | path | matrix GB | cache build s | time s | items/s | VmHWM GB | "
        "peak RssAnon GB | peak RssFile GB |"
    )
    print()
    print(header)
    print("|" + " --- |" * (header.count("|") - 1))
    for name, n, mode, nbytes, r in rows:
        seconds = r.get("train_s", r.get("classify_s", r.get("prepare_s")))
        items = r.get("items_per_s")
        print(
            f"| {name} | {n:,} | {mode} | {_gb(nbytes)} | {r['cache_build_s']:.1f} | {seconds:.1f} | "
            f"{'' if items is None else f'{items:,.0f}'} | {_gb(r['vm_hwm'])} | {_gb(r['rss_anon_peak'])} | "
            f"{_gb(r['rss_file_peak'])} |"
        )


if __name__ == "__main__":
    main()
