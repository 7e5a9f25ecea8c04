"""Tutorials cannot rot: each notebook executes at its small settings, and the committed copies are real runs."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "tutorials").glob("*.ipynb"))
MAX_BYTES = 2_000_000
#: Seconds one cell may take at the small settings (a whole notebook takes well under a minute on 2 cores).
CELL_TIMEOUT = 600
#: An absolute path of the machine that executed a notebook (temporary files, the checkout, a home, the venv).
BUILD_MACHINE_PATH = re.compile(r"(/tmp/|/work/|/home/|/Users/|\.venv/)[^\s'\"]*")


def _ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


def _output_text(output: dict) -> str:
    """Every text an output shows: a stream, a traceback, or the text / HTML / markdown of a result."""
    parts = [output.get("text", ""), output.get("evalue", ""), *output.get("traceback", [])]
    data = output.get("data", {})
    parts += [
        value if isinstance(value, str) else "".join(value)
        for key, value in data.items()
        if key.startswith("text/")
    ]
    return "\n".join(parts)


def test_there_are_tutorials():
    assert {"quickstart", "scgenescope", "images_to_embeddings", "scaling"} <= {p.stem for p in TUTORIALS}


@pytest.mark.parametrize("path", TUTORIALS, ids=_ids(TUTORIALS))
def test_committed_notebook_is_a_real_run(path):
    """Committed with the outputs of one in-order execution, no errors, small, and with the small-settings switch."""
    assert path.stat().st_size < MAX_BYTES, f"{path.name} is {path.stat().st_size / 1e6:.1f} MB (limit 2 MB)"
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), (
        "not executed top to bottom once"
    )
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{path.name} was committed with errors: {[e.ename for e in errors]}"
    assert any("image/png" in o.get("data", {}) for c in code for o in c.outputs), "no figure in the outputs"
    leaks = [
        (c.execution_count, match.group(0))
        for c in code
        for o in c.outputs
        for match in [BUILD_MACHINE_PATH.search(_output_text(o))]
        if match
    ]
    assert not leaks, f"{path.name} shows paths of the machine that ran it (cell, path): {leaks}"
    text = "\n".join(c.source for c in nb.cells)
    assert "MORPHOMU_TUTORIAL_FAST" in text  # reads the small-settings switch
    assert "How this was run" in text  # and says at which settings its outputs were made


def test_the_venv_kernel_runs_the_notebooks():
    """nbclient's 'python3' kernel is this interpreter (scripts/setup.sh installs it into .venv)."""
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec("python3")
    executable = spec.argv[0]
    # jupyter_client launches a bare 'python' with sys.executable
    assert executable in ("python", "python3") or Path(executable).resolve() == Path(sys.executable).resolve()


@pytest.mark.slow
@pytest.mark.parametrize("path", TUTORIALS, ids=_ids(TUTORIALS))
def test_notebook_executes(path, monkeypatch, tmp_path):
    from nbclient import NotebookClient

    monkeypatch.setenv("MORPHOMU_TUTORIAL_FAST", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebooks write only to temporary directories
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(var, os.environ.get(var, "1"))
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=CELL_TIMEOUT, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()  # raises CellExecutionError, naming the cell, on the first failing cell
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code)
