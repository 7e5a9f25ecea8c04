"""PhenoSeq speed: morphomu's implementation beside a plain one written like the public code.

Prints one table: parameters, FLOPs per training sample (``torch.utils.flop_counter``, gradients on),
the machine's matmul ceiling (fp32, bf16), end-to-end training samples/s (data sampling included) and
MFU, DDIM generation samples/s and peak memory. Every measurement runs in its own subprocess so peak
memory (``ru_maxrss``) belongs to it alone.

    python benchmarks/phenoseq.py                      # paper sizes, batch 256
    python benchmarks/phenoseq.py --preset fast --steps 2 --gen-cells 128 --gen-steps 20

Training loops are the same for both (data -> loss -> backward -> clip 1.0 -> AdamW -> LR schedule ->
EMA) without Lightning, so the difference is the implementation: keyed vectorised set sampling vs a
per-item ``Dataset``; fused AdamW vs one parameter at a time; a foreach EMA vs a Python loop; exact
single-key / single-token attention shortcuts vs full attention. Generation: morphomu encodes each
sample's context once, turns single-key cross-attention into per-sample constants and computes the
time embedding / AdaLN modulations once per step; the plain version runs the whole network per step.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

N_IMAGE, N_RNA, N_SAMPLES, IMG_PER_SAMPLE = 5120, 512, 29, 200


def sizes(preset: str) -> dict:
    from morphomu.module._phenoseq import PHENOSEQ_PRESETS

    return dict(PHENOSEQ_PRESETS[preset])


def build(preset: str, impl: str):
    from _plain_phenoseq import PlainPhenoSeq

    from morphomu.module._phenoseq import PhenoSeqModule

    s = sizes(preset)
    torch.manual_seed(0)
    ours = PhenoSeqModule(N_IMAGE, N_RNA, **{k: v for k, v in s.items() if k != "n_context_cells"})
    if impl == "ours":
        return ours, s
    return PlainPhenoSeq(N_IMAGE, N_RNA, **s).load_from(ours), s


def data(n_rna: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    img = rng.standard_normal((N_SAMPLES * IMG_PER_SAMPLE, N_IMAGE), dtype=np.float32)
    img_sample = np.repeat(np.arange(N_SAMPLES), IMG_PER_SAMPLE)
    rna = rng.standard_normal((n_rna, N_RNA), dtype=np.float32)
    rna_sample = rng.integers(0, N_SAMPLES, n_rna)
    return img, img_sample, rna, rna_sample


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def task_info(preset: str, _args) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    out = {}
    for impl in ("ours", "plain"):
        model, s = build(preset, impl)
        model.train()
        b, n = 4, s["n_context_cells"]
        x, t, img = torch.randn(b, N_RNA), torch.randint(0, 1000, (b,)), torch.randn(b, n, N_IMAGE)
        with FlopCounterMode(display=False) as counter:
            pred = model(x, t, img) if impl == "plain" else model.denoise(x, t, model.encode_context(img))
            pred.square().mean().backward()
        out[impl] = {
            "params": sum(p.numel() for p in model.parameters()),
            "train_flops_per_sample": counter.get_total_flops() / b,
        }
    return out


def task_ceiling(_preset: str, _args) -> dict:
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
        torch.mm(a, b)
        reps, start = 0, time.perf_counter()
        while time.perf_counter() - start < 3.0:
            torch.mm(a, b)
            reps += 1
        out[name] = 2 * 2048**3 * reps / (time.perf_counter() - start)
    return out


def task_train(preset: str, args) -> dict:
    from morphomu.module._diffusion import make_scheduler
    from morphomu.train._diffusion_plan import warmup_cosine
    from morphomu.train._ema import ExponentialMovingAverage
    from morphomu.train._set_data import PairedSetDataModule

    impl, bf16 = args.impl, args.bf16
    model, s = build(preset, impl)
    model.train()
    b, steps = args.batch_size, args.steps
    img, img_sample, rna, rna_sample = data(b * (steps + 1))
    alphas = make_scheduler("ddpm").alphas_cumprod.float()
    losses = []

    def sched(opt):
        return torch.optim.lr_scheduler.LambdaLR(
            opt, lambda k: warmup_cosine(k, warmup_steps=5, total_steps=1000)
        )

    if impl == "plain":
        from _plain_phenoseq import PlainItems, plain_train_step

        loader = torch.utils.data.DataLoader(
            PlainItems(rna, rna_sample, img, img_sample, s["n_context_cells"]), batch_size=b, shuffle=True
        )
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-5, foreach=False)
        lr = sched(opt)
        ema = [p.detach().clone() for p in model.parameters()]
        it = iter(loader)

        def step(k):
            return plain_train_step(model, ema, opt, lr, next(it), alphas, step=k)
    else:
        order = np.argsort(img_sample, kind="stable")
        offsets = np.searchsorted(img_sample[order], np.arange(N_SAMPLES + 1))
        dm = PairedSetDataModule(
            rna=torch.from_numpy(rna),
            rna_sample=torch.from_numpy(rna_sample),
            train_rows=torch.arange(len(rna)),
            val_rows=torch.arange(0),
            img=torch.from_numpy(img[order]),
            img_offsets=torch.from_numpy(offsets),
            n_context_cells=s["n_context_cells"],
            batch_size=b,
        )
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-5, fused=True)
        lr = sched(opt)
        ema = ExponentialMovingAverage(0.9999)
        ema.start(params)

        def step(k):
            batch = dm.train_set[(0, k)]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = model(batch)[2].loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            lr.step()
            ema.update(params)
            return loss.detach()

    losses.append(float(step(0)))  # warm-up step (allocations, first-call costs)
    start = time.perf_counter()
    for k in range(1, steps + 1):
        losses.append(float(step(k)))
    elapsed = time.perf_counter() - start
    return {
        "samples_per_s": b * steps / elapsed,
        "step_s": elapsed / steps,
        "losses": losses,
        "peak_mb": peak_mb(),
    }


def task_generate(preset: str, args) -> dict:
    from morphomu.module._diffusion import make_scheduler

    model, _ = build(preset, args.impl)
    model.eval()
    n, n_samples = args.gen_cells, 4
    torch.manual_seed(1)
    means = torch.randn(n_samples, N_IMAGE)
    which = torch.arange(n) % n_samples
    noise = torch.randn(n, N_RNA)
    start = time.perf_counter()
    with torch.inference_mode():
        if args.impl == "plain":
            from _plain_phenoseq import plain_generate

            scheduler = make_scheduler(prediction_type=sizes(preset)["prediction_type"])
            out = plain_generate(model, means[which], noise, scheduler, n_steps=args.gen_steps)
        else:
            cache = model.cross_cache(model.encode_context(means[:, None, :])).take(which)
            out = model.sample(noise, cache, n_steps=args.gen_steps)
    elapsed = time.perf_counter() - start
    return {
        "samples_per_s": n / elapsed,
        "seconds": elapsed,
        "checksum": float(out.abs().mean()),
        "peak_mb": peak_mb(),
    }


TASKS = {"info": task_info, "ceiling": task_ceiling, "train": task_train, "generate": task_generate}


def run(task: str, args, **extra) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        task,
        "--preset",
        args.preset,
        "--batch-size",
        str(args.batch_size),
        "--steps",
        str(args.steps),
        "--gen-cells",
        str(args.gen_cells),
        "--gen-steps",
        str(args.gen_steps),
    ]
    for k, v in extra.items():
        cmd += [f"--{k.replace('_', '-')}"] + ([] if v is True else [str(v)])
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"{task} {extra} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="paper", choices=["paper", "fast", "tiny"])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=3, help="timed training steps (after one warm-up step)")
    p.add_argument("--gen-cells", type=int, default=256)
    p.add_argument("--gen-steps", type=int, default=50)
    p.add_argument("--bf16", action="store_true", help="also time morphomu's training under bf16 autocast")
    p.add_argument("--worker", choices=sorted(TASKS), help=argparse.SUPPRESS)
    p.add_argument("--impl", choices=["ours", "plain"], default="ours", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(TASKS[args.worker](args.preset, args)))
        return

    load_before = os.getloadavg()
    info, ceiling = run("info", args), run("ceiling", args)
    train = {impl: run("train", args, impl=impl) for impl in ("ours", "plain")}
    if args.bf16:
        train["ours_bf16"] = run("train", args, impl="ours", bf16=True)
    gen = {impl: run("generate", args, impl=impl) for impl in ("ours", "plain")}
    load_after = os.getloadavg()

    print(
        f"PhenoSeq benchmark: preset={args.preset}, batch {args.batch_size}, {args.steps} timed steps, "
        f"generation {args.gen_cells} cells x DDIM-{args.gen_steps}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; load average {load_before[0]:.2f} -> {load_after[0]:.2f}"
    )
    print(
        f"matmul ceiling (2048^2): fp32 {ceiling['fp32'] / 1e9:.1f} GFLOP/s, bf16 {ceiling['bf16'] / 1e9:.1f} GFLOP/s"
    )
    rows = [("", "morphomu", "plain", "ratio")]

    def row(name, a, b, fmt="{:.3g}", ratio=True):
        rows.append((name, fmt.format(a), fmt.format(b), f"{a / b:.2f}x" if ratio and b else ""))

    row("parameters (M)", info["ours"]["params"] / 1e6, info["plain"]["params"] / 1e6, "{:.1f}", ratio=False)
    row(
        "train GFLOP / sample",
        info["ours"]["train_flops_per_sample"] / 1e9,
        info["plain"]["train_flops_per_sample"] / 1e9,
        "{:.2f}",
    )
    row("train samples/s", train["ours"]["samples_per_s"], train["plain"]["samples_per_s"], "{:.1f}")
    mfu = {
        k: train[k]["samples_per_s"] * info[k]["train_flops_per_sample"] / ceiling["fp32"]
        for k in ("ours", "plain")
    }
    row("train MFU (fp32 ceiling)", 100 * mfu["ours"], 100 * mfu["plain"], "{:.0f}%", ratio=False)
    row("train peak memory (MB)", train["ours"]["peak_mb"], train["plain"]["peak_mb"], "{:.0f}", ratio=False)
    row(
        f"DDIM-{args.gen_steps} samples/s",
        gen["ours"]["samples_per_s"],
        gen["plain"]["samples_per_s"],
        "{:.1f}",
    )
    row("generate peak memory (MB)", gen["ours"]["peak_mb"], gen["plain"]["peak_mb"], "{:.0f}", ratio=False)
    width = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, width, strict=True)))
    if args.bf16:
        t = train["ours_bf16"]
        print(
            f"morphomu bf16 autocast: {t['samples_per_s']:.1f} samples/s "
            f"({t['samples_per_s'] / train['ours']['samples_per_s']:.2f}x fp32); losses bf16 "
            f"{np.round(t['losses'], 4).tolist()} vs fp32 {np.round(train['ours']['losses'], 4).tolist()}"
        )
    print(
        f"training losses (same weights, different draws): morphomu {np.round(train['ours']['losses'], 4).tolist()}, "
        f"plain {np.round(train['plain']['losses'], 4).tolist()}"
    )
    print(
        f"generation checksum |x| mean: morphomu {gen['ours']['checksum']:.5f}, plain {gen['plain']['checksum']:.5f}"
    )


if __name__ == "__main__":
    main()
