#!/usr/bin/env bash
# PhenoSeq on a GPU, in one table (about 5 min on one H200, 10 min at most): training samples/s and MFU
# (fp32 and bf16 autocast, batch 256, paper preset, against the GPU's matmul peak of each precision measured
# by an 8192^2 matmul; goal >= 50% in bf16) for the reference and morphomu (eager, compile=True), generation
# samples/s (DDIM-50 and morphomu's default sampler, 1024 cells) and a DDP training step over every local
# GPU ('skipped: one device' with one). Fails at once where there is no CUDA device.
#
#     bash benchmarks/gpu.sh                 # extra arguments go to benchmarks/phenoseq.py
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "benchmarks/gpu.sh: no CUDA device (torch.cuda.is_available() is False); run it where a GPU is lent." >&2
  exit 1
fi
"$PY" -c 'import torch; print("GPUs:", [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])'
# one round: a GPU loan is short, and its figures are steadier than a shared CPU's
exec timeout 600 "$PY" benchmarks/phenoseq.py --device cuda --rounds 1 --steps 20 --gen-cells 1024 --ddp \
  --json "${GPU_JSON:-/tmp/phenoseq_gpu.json}" "$@"
