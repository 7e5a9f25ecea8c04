"""PhenoSeq speed: morphomu's ``PhenoSeqModule`` beside a reference written like the public training code.

Prints one markdown table, every figure measured in this run: parameters and training FLOPs per sample
(counted on the meta device, gradients on), training samples/s, GFLOP/s and MFU (against the matmul
ceiling of the same precision, measured here) in fp32 and bf16 autocast, morphomu with ``compile=True``
(compile time apart), and generation samples/s (DDIM-50, and morphomu's default sampler where it is
another one). Each figure is its own subprocess; ``--rounds`` alternating rounds, the best kept.

    python benchmarks/phenoseq.py                  # paper preset, batch 256 (about 10-15 min on 2 cores)
    python benchmarks/phenoseq.py --preset fast --steps 2 --gen-cells 64    # a quick run
    python benchmarks/phenoseq.py --profile        # where one bf16 training step of morphomu spends its time
    python benchmarks/phenoseq.py --device cuda    # on a GPU (benchmarks/gpu.sh)

What runs, end to end per step:

- reference (``_plain_phenoseq.py``): the public architecture (``nn.TransformerEncoderLayer`` GELU
  encoder, ``nn.MultiheadAttention``, full single-token self-attention, the feed-forward's extra
  LayerNorm), a batched tensor dataset, torch's default AdamW, clip 1.0, LR schedule, a ``foreach`` EMA;
  bf16 is plain ``torch.autocast`` around the forward;
- morphomu: its keyed set sampler (``PairedSetDataModule``), the training plan's forward
  (``DiffusionTrainingPlan.training_forward``; compiled in the ``compile=True`` row, from a cold cache),
  the optimiser the plan picks for the precision (``train._plan.adamw``: fused at fp32 and under
  ``'bf16-mixed'``; one row shows the ``foreach`` one in bf16), clip 1.0, LR schedule and the plan's EMA; bf16
  as Lightning's ``'bf16-mixed'`` runs it (``torch.autocast(cache_enabled=False)``).

Generation: the reference runs the whole network (context encoder included) at every step; morphomu's
``encode_context`` -> ``cross_cache`` -> ``sample`` encodes each sample once. One mean context token per
sample (4 samples), ``--gen-cells`` cells.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

N_IMAGE, N_RNA, N_SAMPLES, IMG_PER_SAMPLE, GEN_SAMPLES = 5120, 512, 29, 200, 4
#: Precisions of the table, as Lightning names them.
PRECISION = {"fp32": "32-true", "bf16": "bf16-mixed"}


# ---------------------------------------------------------------------------------------------- models
def sizes(preset: str) -> dict:
    """The network sizes of a morphomu preset, and its ``n_context_cells``."""
    from morphomu.module._phenoseq import PHENOSEQ_PRESETS

    s = dict(PHENOSEQ_PRESETS[preset])
    return s, s.pop("n_context_cells")


def build(impl: str, preset: str, device: str | torch.device = "cpu") -> torch.nn.Module:
    """``'morphomu'``: ``PhenoSeqModule``; ``'reference'``: the public architecture (own initialisation).

    ``_plain_phenoseq`` is imported from this script's folder (``sys.path[0]`` when run as a script).
    """
    from _plain_phenoseq import PlainPhenoSeq

    from morphomu.module._phenoseq import PhenoSeqModule

    s, _ = sizes(preset)
    torch.manual_seed(0)
    with torch.device(device):
        if impl == "reference":
            return PlainPhenoSeq(N_IMAGE, N_RNA, **s)
        return PhenoSeqModule(N_IMAGE, N_RNA, **s)


def reference_loss(model, batch: dict[str, torch.Tensor], alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The reference's training loss (``_plain_phenoseq.plain_train_step``'s forward) on a batch dict."""
    ab = alphas_cumprod[batch["t"]][:, None]
    x_t = ab.sqrt() * batch["rna"] + (1 - ab).sqrt() * batch["noise"]
    return torch.nn.functional.mse_loss(model(x_t, batch["t"], batch["img"]).float(), batch["noise"])


def count_training(impl: str, preset: str, *, batch_size: int = 4) -> dict:
    """Parameters and training FLOPs per sample (forward + backward), counted on the meta device.

    Gradients stay on: ``FlopCounterMode`` undercounts under ``no_grad`` (fused attention kernels).
    """
    from torch.utils.flop_counter import FlopCounterMode

    model = build(impl, preset, "meta").train()
    _, n_context = sizes(preset)
    with torch.device("meta"):
        batch = {
            "rna": torch.randn(batch_size, N_RNA),
            "img": torch.randn(batch_size, n_context, N_IMAGE),
            "t": torch.randint(0, 1000, (batch_size,)),
            "noise": torch.randn(batch_size, N_RNA),
        }
        alphas = torch.rand(1000)
    with FlopCounterMode(display=False) as counter:
        loss = reference_loss(model, batch, alphas) if impl == "reference" else model(batch)[2].loss
        loss.backward()
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "train_flops_per_sample": counter.get_total_flops() / batch_size,
    }


# ---------------------------------------------------------------------------------------------- helpers
def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def peak_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic_data(n_rna: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Standard-normal embeddings: ``N_SAMPLES`` samples of ``IMG_PER_SAMPLE`` imaging cells, sorted by sample."""
    g = torch.Generator().manual_seed(seed)
    return {
        "img": torch.randn(N_SAMPLES * IMG_PER_SAMPLE, N_IMAGE, generator=g),
        "img_sample": torch.arange(N_SAMPLES).repeat_interleave(IMG_PER_SAMPLE),
        "rna": torch.randn(n_rna, N_RNA, generator=g),
        "rna_sample": torch.randint(0, N_SAMPLES, (n_rna,), generator=g),
    }


def autocast(precision: str, device: str, *, cache: bool = True):
    return torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16", cache_enabled=cache)


# ---------------------------------------------------------------------------------------------- tasks
def task_info(cfg: dict) -> dict:
    return {impl: count_training(impl, cfg["preset"]) for impl in ("reference", "morphomu")}


def task_ceiling(cfg: dict) -> dict:
    """Best matmul rate (FLOP/s) per precision over short windows: the ceiling MFU is measured against."""
    device, n = cfg["device"], 2048 if cfg["device"] == "cpu" else 8192
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = (torch.randn(n, n, dtype=dtype, device=device) for _ in range(2))
        torch.mm(a, b)
        best, stop = 0.0, time.perf_counter() + cfg["ceiling_s"]
        while time.perf_counter() < stop:
            synchronize(device)
            start, reps = time.perf_counter(), 0
            while reps == 0 or time.perf_counter() - start < 0.3:
                torch.mm(a, b)
                reps += 1
                if device == "cuda" and reps % 10:
                    continue
                synchronize(device)
            synchronize(device)
            best = max(best, 2 * n**3 * reps / (time.perf_counter() - start))
        out[name] = best
    return out


def make_trainer(cfg: dict):
    """``(step(k) -> loss, batch(k))`` for one configuration: the whole training step of ``cfg['impl']``."""
    from morphomu.module._diffusion import make_scheduler
    from morphomu.train._diffusion_plan import DiffusionTrainingPlan, warmup_cosine

    device, precision, b = cfg["device"], cfg["precision"], cfg["batch_size"]
    impl = "reference" if cfg["impl"] == "reference" else "morphomu"
    model = build(impl, cfg["preset"], device).train()
    _, n_context = sizes(cfg["preset"])
    data = synthetic_data(b * (cfg["steps"] + 2))
    where = device if device == "cuda" else "cpu"  # on a GPU the embeddings live there (gathers on device)

    def schedule(opt):
        return torch.optim.lr_scheduler.LambdaLR(
            opt, lambda k: warmup_cosine(k, warmup_steps=5, total_steps=1000)
        )

    if impl == "reference":
        from _plain_phenoseq import TensorSets, plain_train_step

        sets = TensorSets(
            data["rna"].to(where), data["rna_sample"], data["img"].to(where), data["img_sample"],
            n_context=n_context, batch_size=b,
        )  # fmt: skip
        alphas = make_scheduler("ddpm").alphas_cumprod.float().to(device)
        # torch's default AdamW (on the CPU: one parameter at a time)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-5)
        lr = schedule(opt)
        ema = [p.detach().clone() for p in model.parameters()]
        batches = iter(sets)

        def step(k):
            x0, img = next(batches)
            batch = (x0.to(device, non_blocking=True), img.to(device, non_blocking=True))
            return plain_train_step(
                model, ema, opt, lr, batch, alphas, step=k, autocast=autocast(precision, device)
            )

        return step

    from torch.profiler import record_function

    from morphomu.train._plan import adamw
    from morphomu.train._set_data import PairedSetDataModule

    offsets = torch.searchsorted(data["img_sample"], torch.arange(N_SAMPLES + 1))
    dm = PairedSetDataModule(
        rna=data["rna"].to(where), rna_sample=data["rna_sample"], train_rows=torch.arange(len(data["rna"])),
        val_rows=torch.arange(0), img=data["img"].to(where), img_offsets=offsets,
        n_context_cells=n_context, batch_size=b,
    )  # fmt: skip
    plan = DiffusionTrainingPlan(model)
    plan.compile_forward = cfg["impl"] == "morphomu-compile"
    params = plan.trainable()
    # the optimiser the plan configures under this precision (fused AdamW), or the multi-tensor one it
    # uses under fp16's loss scaler ('morphomu-foreach': what fusing the optimiser gains)
    precision_name = "16-mixed" if cfg["impl"] == "morphomu-foreach" else PRECISION[precision]
    opt = adamw(
        SimpleNamespace(
            lr=plan.lr, weight_decay=plan.weight_decay, eps=plan.eps,
            _trainer=SimpleNamespace(precision=precision_name),
        ),
        params,
    )  # fmt: skip
    lr = schedule(opt)
    plan.ema.start(params)

    def step(k):  # phases labelled for --profile
        with record_function("data: keyed set sampler"):
            batch = {key: v.to(device, non_blocking=True) for key, v in dm.train_set[(0, k)].items()}
        with record_function("forward"), autocast(precision, device, cache=False):  # as 'bf16-mixed'
            _, _, out = plan.training_forward(batch)
        with record_function("backward"):
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
        with record_function("clip"):
            torch.nn.utils.clip_grad_norm_(params, 1.0)
        with record_function("optimizer"):
            opt.step()
            lr.step()
        with record_function("ema"):
            plan.ema.update(params)
        return out.loss.detach()

    return step


def task_train(cfg: dict) -> dict:
    device = cfg["device"]
    step = make_trainer(cfg)
    losses, times = [], []
    for k in range(cfg["steps"] + 1):  # step 0: warm-up (allocations, compilation)
        synchronize(device)
        start = time.perf_counter()
        losses.append(float(step(k)))
        synchronize(device)
        times.append(time.perf_counter() - start)
    steady = statistics.median(times[1:])  # a shared machine's neighbours slow single steps
    return {
        "samples_per_s": cfg["batch_size"] / steady,
        "step_s": steady,
        "first_step_s": times[0],
        "losses": losses,
        "peak_mb": peak_mb(device),
    }


def task_generate(cfg: dict) -> dict:
    from morphomu._core import autocast as model_autocast
    from morphomu.module._diffusion import make_scheduler

    device, n = cfg["device"], cfg["gen_cells"]
    model = build("reference" if cfg["impl"] == "reference" else "morphomu", cfg["preset"], device).eval()
    g = torch.Generator().manual_seed(1)
    means = torch.randn(GEN_SAMPLES, N_IMAGE, generator=g).to(device)
    which = (torch.arange(n) % GEN_SAMPLES).to(device)
    noise = torch.randn(n, N_RNA, generator=g).to(device)

    def generate(rows: torch.Tensor, n_steps: int) -> torch.Tensor:
        with torch.inference_mode(), model_autocast(PRECISION[cfg["precision"]], device):
            if cfg["impl"] == "reference":
                from _plain_phenoseq import plain_generate

                scheduler = make_scheduler(prediction_type=sizes(cfg["preset"])[0]["prediction_type"])
                return plain_generate(model, means[which[rows]], noise[rows], scheduler, n_steps=n_steps)
            cache = model.cross_cache(model.encode_context(means[:, None, :])).take(which[rows])
            return model.sample(noise[rows], cache, n_steps=n_steps, sampler=cfg["sampler"])

    generate(torch.arange(2), 2)  # warm-up: imports (diffusers), first-call costs
    synchronize(device)
    start = time.perf_counter()
    out = generate(torch.arange(n), cfg["gen_steps"])
    synchronize(device)
    elapsed = time.perf_counter() - start
    return {"samples_per_s": n / elapsed, "seconds": elapsed, "checksum": float(out.float().abs().mean())}


def task_ddp(cfg: dict) -> dict:
    """DDP training steps over every local GPU (NCCL): samples/s over all ranks, bf16 autocast.

    On the CPU (a dry run of this code) two gloo ranks.
    """
    import torch.multiprocessing as mp

    world = torch.cuda.device_count() if cfg["device"] == "cuda" else 2
    if world < 2:
        return {"skipped": "one device"}
    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_ddp_rank, args=(world, cfg, queue), nprocs=world, join=True)
    return queue.get()


def _ddp_rank(rank: int, world: int, cfg: dict, queue) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from morphomu.train._set_data import PairedSetDataModule

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    cuda = cfg["device"] == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    if cuda:
        torch.cuda.set_device(rank)
    device = f"cuda:{rank}" if cuda else "cpu"
    kind = "cuda" if cuda else "cpu"
    b = cfg["batch_size"]
    model = build("morphomu", cfg["preset"], device).train()
    ddp = DistributedDataParallel(model, device_ids=[rank] if cuda else None, find_unused_parameters=True)
    _, n_context = sizes(cfg["preset"])
    data = synthetic_data(b * world * (cfg["steps"] + 2))
    dm = PairedSetDataModule(
        rna=data["rna"].to(device), rna_sample=data["rna_sample"], train_rows=torch.arange(len(data["rna"])),
        val_rows=torch.arange(0), img=data["img"].to(device),
        img_offsets=torch.searchsorted(data["img_sample"], torch.arange(N_SAMPLES + 1)),
        n_context_cells=n_context, batch_size=b,
    )  # fmt: skip
    dm.set_rank(rank, world)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-5, fused=True)
    times = []
    for k in range(cfg["steps"] + 1):
        synchronize(kind)
        start = time.perf_counter()
        batch = {key: v.to(device, non_blocking=True) for key, v in dm.train_set[(0, k)].items()}
        with autocast("bf16", kind, cache=False):
            loss = ddp(batch)[2].loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        synchronize(kind)
        times.append(time.perf_counter() - start)
    steady = statistics.median(times[1:])  # a shared machine's neighbours slow single steps
    if rank == 0:
        queue.put(
            {"world_size": world, "samples_per_s": b * world / steady, "step_s": steady, "loss": float(loss)}
        )
    dist.destroy_process_group()


def task_profile(cfg: dict) -> str:
    """torch.profiler table of one morphomu training step (after a warm-up step), phases labelled."""
    from torch.profiler import ProfilerActivity, profile, record_function

    cfg = {**cfg, "impl": "morphomu", "steps": 2}
    step = make_trainer(cfg)
    step(0)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cfg["device"] == "cuda" else [])
    with profile(activities=activities) as prof, record_function("training step"):
        float(step(1))
    sort = "self_cuda_time_total" if cfg["device"] == "cuda" else "self_cpu_time_total"
    events = prof.key_averages()
    total = {e.key: e.cpu_time_total for e in events}
    phases = ["data: keyed set sampler", "forward", "backward", "clip", "optimizer", "ema"]
    lines = [f"one training step: {total['training step'] / 1e6:.2f} s (CPU time per phase)"]
    lines += [
        f"  {name:<24} {total[name] / 1e6:6.2f} s  {100 * total[name] / total['training step']:4.0f}%"
        for name in phases
        if name in total
    ]
    return "\n".join(lines) + "\n" + events.table(sort_by=sort, row_limit=cfg["profile_rows"])


TASKS = {
    "info": task_info,
    "ceiling": task_ceiling,
    "train": task_train,
    "generate": task_generate,
    "ddp": task_ddp,
}


# ---------------------------------------------------------------------------------------------- driver
def run(task: str, cfg: dict) -> dict:
    """Run one task in its own Python process; its last stdout line is the JSON result."""
    cmd = [sys.executable, __file__, "--worker", task, "--config", json.dumps(cfg)]
    with tempfile.TemporaryDirectory(prefix="phenoseq-compile-") as cache:
        # compilation starts cold every time (no inductor / triton cache from an earlier run), so the
        # compile time reported is what a first training run pays
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "TRITON_CACHE_DIR": cache}
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode:
        msg = f"{task} {cfg} failed:\n{proc.stderr[-4000:]}"
        raise RuntimeError(msg)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def default_sampler() -> tuple[str, int]:
    """morphomu's default sampler and steps for PhenoSeq where they differ from DDIM-50, else DPM-Solver++ 20."""
    from morphomu.module import _diffusion

    sampler = getattr(_diffusion, "DEFAULT_SAMPLER", {}).get("phenoseq", "ddim")
    n_steps = getattr(_diffusion, "DEFAULT_N_STEPS", {}).get("phenoseq", 50)
    if (sampler, n_steps) == ("ddim", 50):
        return "dpmsolver++", 20
    return sampler, n_steps


def best(results: list[dict]) -> dict:
    return max(results, key=lambda r: r["samples_per_s"])


def fmt_train(r: dict | None, flops: float, ceiling: float) -> str:
    if r is None:
        return "—"
    rate = r["samples_per_s"] * flops
    return f"{r['samples_per_s']:.1f} samples/s ({rate / 1e9:.0f} GFLOP/s, {100 * rate / ceiling:.0f}% MFU)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="paper", choices=["paper", "fast", "tiny"])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument(
        "--steps",
        type=int,
        default=4,
        help="timed training steps after one warm-up step (their median counts)",
    )
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best of them is reported")
    p.add_argument("--gen-cells", type=int, default=128)
    p.add_argument("--gen-steps", type=int, default=50)
    p.add_argument("--ceiling-s", type=float, default=3.0, help="seconds of matmul per precision")
    p.add_argument("--no-compile", action="store_true", help="leave out morphomu with compile=True")
    p.add_argument(
        "--compile-rounds", type=int, default=1, help="rounds with compile=True (each compiles from scratch)"
    )
    p.add_argument("--no-foreach", action="store_true", help="leave out morphomu bf16 with foreach AdamW")
    p.add_argument("--no-generate", action="store_true", help="measure training only")
    p.add_argument("--ddp", action="store_true", help="also a DDP step over every local GPU")
    p.add_argument("--profile", action="store_true", help="print a torch.profiler table of one bf16 step")
    p.add_argument("--profile-rows", type=int, default=25)
    p.add_argument("--threads", type=int, help="torch threads of every measurement (default: torch's)")
    p.add_argument("--json", help="also write the measurements to this file")
    p.add_argument("--worker", choices=sorted(TASKS), help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        cfg = json.loads(args.config)
        if cfg["threads"]:
            torch.set_num_threads(cfg["threads"])
        print(json.dumps(TASKS[args.worker](cfg)))
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available.")
    base = {
        "preset": args.preset,
        "device": args.device,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "gen_cells": args.gen_cells,
        "gen_steps": args.gen_steps,
        "ceiling_s": args.ceiling_s,
        "profile_rows": args.profile_rows,
        "threads": args.threads,
    }
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.profile:
        print(f"one morphomu training step, preset={args.preset}, batch {args.batch_size}, bf16 autocast:")
        print(task_profile({**base, "precision": "bf16"}))
        return

    sampler, sampler_steps = default_sampler()
    train_cfgs = [("reference", "fp32"), ("morphomu", "fp32"), ("reference", "bf16"), ("morphomu", "bf16")]
    if not args.no_foreach:
        train_cfgs.append(("morphomu-foreach", "bf16"))
    if not args.no_compile:
        train_cfgs.append(("morphomu-compile", "bf16"))
    gen_cfgs = [
        (impl, prec, s, n)
        for prec in ("fp32", "bf16")
        for impl, s, n in (
            ("reference", "ddim", 50),
            ("morphomu", "ddim", 50),
            ("morphomu", sampler, sampler_steps),
        )
    ]
    gen_cfgs = [(i, pr, s, args.gen_steps if s == "ddim" else n) for i, pr, s, n in gen_cfgs]
    if args.no_generate:
        gen_cfgs = []
    load_before = os.getloadavg()
    wall = time.perf_counter()
    info, ceilings = run("info", base), []
    train: dict = {c: [] for c in train_cfgs}
    gen: dict = {c: [] for c in gen_cfgs}
    for i in range(args.rounds):
        ceilings.append(run("ceiling", base))  # every round: the load of a shared machine changes
        for impl, prec in train_cfgs:
            if impl == "morphomu-compile" and i >= args.compile_rounds:
                continue
            train[impl, prec].append(run("train", {**base, "impl": impl, "precision": prec}))
        for impl, prec, s, n in gen_cfgs:
            gen[impl, prec, s, n].append(
                run("generate", {**base, "impl": impl, "precision": prec, "sampler": s, "gen_steps": n})
            )
    ddp = run("ddp", {**base, "steps": max(args.steps, 3)}) if args.ddp else None
    wall = time.perf_counter() - wall
    load_after = os.getloadavg()
    ceiling = {prec: max(c[prec] for c in ceilings) for prec in ("fp32", "bf16")}
    train = {k: best(v) for k, v in train.items()}
    gen = {k: best(v) for k, v in gen.items()}

    flops = {k: v["train_flops_per_sample"] for k, v in info.items()}
    flops["morphomu-compile"] = flops["morphomu-foreach"] = flops["morphomu"]
    name = {"cpu": "2048^2, torch", "cuda": "8192^2, torch"}[args.device]
    print(
        f"PhenoSeq speed, preset={args.preset}, batch {args.batch_size}, {N_IMAGE}/{N_RNA} features, "
        f"{sizes(args.preset)[1]} context cells; {args.device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; best of {args.rounds} alternating rounds, median of {args.steps} timed steps "
        f"after a warm-up; load average {load_before[0]:.2f} -> {load_after[0]:.2f}; {wall / 60:.1f} min"
    )
    rows = [
        ("", "reference (public architecture)", "morphomu", "ratio"),
        (
            "parameters / training GFLOP per sample",
            f"{info['reference']['params'] / 1e6:.1f} M / {flops['reference'] / 1e9:.2f}",
            f"{info['morphomu']['params'] / 1e6:.1f} M / {flops['morphomu'] / 1e9:.2f}",
            "",
        ),
    ]
    for prec, label in (("fp32", "training, fp32"), ("bf16", "training, bf16 autocast (both)")):
        ref, ours = train["reference", prec], train["morphomu", prec]
        rate = {k: train[k, prec]["samples_per_s"] * flops[k] for k in ("reference", "morphomu")}
        rows.append(
            (
                label,
                fmt_train(ref, flops["reference"], ceiling[prec]),
                fmt_train(ours, flops["morphomu"], ceiling[prec]),
                f"{ours['samples_per_s'] / ref['samples_per_s']:.2f}x "
                f"(FLOP/s {rate['morphomu'] / rate['reference']:.2f}x)",
            )
        )
    if ("morphomu-foreach", "bf16") in train:
        r = train["morphomu-foreach", "bf16"]
        rows.append(
            (
                "training, bf16, foreach AdamW instead of the plan's fused one",
                "",
                fmt_train(r, flops["morphomu"], ceiling["bf16"]),
                f"{r['samples_per_s'] / train['morphomu', 'bf16']['samples_per_s']:.2f}x fused",
            )
        )
    if ("morphomu-compile", "bf16") in train:
        r = train["morphomu-compile", "bf16"]
        compile_s = r["first_step_s"] - r["step_s"]
        rows.append(
            (
                f"training, bf16, compile=True (compile {compile_s:.0f} s apart; {args.compile_rounds} round)",
                "",
                fmt_train(r, flops["morphomu"], ceiling["bf16"]),
                f"{r['samples_per_s'] / train['morphomu', 'bf16']['samples_per_s']:.2f}x eager",
            )
        )
    auto = train["morphomu", "bf16"]["samples_per_s"] / train["reference", "fp32"]["samples_per_s"]
    rows.append(("morphomu auto precision (bf16-mixed) vs reference fp32", "", "", f"{auto:.2f}x"))
    for prec in ("fp32", "bf16") if gen else ():
        ref, ours = (
            gen["reference", prec, "ddim", args.gen_steps],
            gen["morphomu", prec, "ddim", args.gen_steps],
        )
        rows.append(
            (
                f"generation DDIM-{args.gen_steps}, {prec}",
                f"{ref['samples_per_s']:.1f} samples/s",
                f"{ours['samples_per_s']:.1f} samples/s",
                f"{ours['samples_per_s'] / ref['samples_per_s']:.2f}x",
            )
        )
    for prec in ("fp32", "bf16") if gen else ():
        key = ("morphomu", prec, sampler, sampler_steps)
        if key[2:] == ("ddim", args.gen_steps):
            continue
        ref = gen["reference", prec, "ddim", args.gen_steps]
        rows.append(
            (
                f"generation {sampler}-{sampler_steps} (morphomu), {prec}",
                "",
                f"{gen[key]['samples_per_s']:.1f} samples/s",
                f"{gen[key]['samples_per_s'] / ref['samples_per_s']:.2f}x reference DDIM-{args.gen_steps}",
            )
        )
    rows.append(
        (
            f"matmul ceiling ({name})",
            f"fp32 {ceiling['fp32'] / 1e9:.0f} GFLOP/s",
            f"bf16 {ceiling['bf16'] / 1e9:.0f} GFLOP/s",
            f"{ceiling['bf16'] / ceiling['fp32']:.1f}x",
        )
    )
    if ddp is not None:
        rows.append(
            (
                f"DDP training step, bf16, batch {args.batch_size} per {'GPU' if args.device == 'cuda' else 'gloo rank (dry run)'}",
                "",
                "skipped: one device"
                if "skipped" in ddp
                else f"{ddp['samples_per_s']:.0f} samples/s over {ddp['world_size']} ranks",
                "",
            )
        )
    print("| " + " | ".join(rows[0]) + " |")
    print("| --- " * 4 + "|")
    for r in rows[1:]:
        print("| " + " | ".join(r) + " |")
    print(
        "training losses (fp32 / bf16, warm-up step first): "
        + "; ".join(
            f"{impl} {prec} {[round(x, 4) for x in train[impl, prec]['losses']]}" for impl, prec in train_cfgs
        )
    )
    print(
        "peak memory (MB): "
        + ", ".join(f"{impl} {prec} {train[impl, prec]['peak_mb']:.0f}" for impl, prec in train_cfgs)
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "info": info,
                    "ceiling": ceiling,
                    "train": {f"{i}/{p}": v for (i, p), v in train.items()},
                    "generate": {"/".join(map(str, k)): v for k, v in gen.items()},
                    "ddp": ddp,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
