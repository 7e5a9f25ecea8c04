"""The README's quickstart runs, and is word for word the core of the quickstart notebook."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import nbformat
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
NOTEBOOK = ROOT / "tutorials" / "quickstart.ipynb"
SETUP_COMMANDS = (
    "bash scripts/setup.sh && .venv/bin/morphomu benchmark --out morphomu-run --overwrite",
    "bash scripts/setup.sh && .venv/bin/python -m pytest -n auto",
)


def readme_quickstart() -> str:
    """The ```python block of the README's Quickstart section."""
    section = README.read_text().split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the Quickstart section must hold exactly one ```python block"
    return blocks[0]


def notebook_quickstart() -> str:
    """The code cells of the quickstart notebook tagged 'quickstart', in order."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    cells = [
        c.source for c in nb.cells if c.cell_type == "code" and "quickstart" in c.metadata.get("tags", [])
    ]
    return "\n".join(cells)


def code_lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.splitlines() if line.strip()]


def small_settings():
    """tutorials/_small_settings.py, the one place the tutorials' small settings live."""
    spec = importlib.util.spec_from_file_location(
        "_small_settings", ROOT / "tutorials" / "_small_settings.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quickstart_is_the_notebooks_core_cells():
    readme = code_lines(readme_quickstart())
    assert 0 < len(readme) <= 10, f"the README quickstart has {len(readme)} lines of code (at most 10)"
    assert readme == code_lines(notebook_quickstart())


def test_setup_commands_are_unchanged():
    text = README.read_text()
    for command in SETUP_COMMANDS:
        assert command in text
    assert SETUP_COMMANDS[1] in (ROOT / ".ci" / "run").read_text()  # CI runs exactly the README's tests


@pytest.mark.slow
def test_quickstart_runs(monkeypatch, tmp_path):
    """Execute the README block as written, with the tutorials' small settings patched in."""
    monkeypatch.chdir(tmp_path)
    small_settings().apply(monkeypatch.setattr)
    namespace: dict = {}
    exec(compile(readme_quickstart(), str(README), "exec"), namespace)
    mdata = namespace["mdata"]
    assert namespace["model"].preset == "tiny"  # the small settings were in effect
    synthetic = mdata["rna_synthetic"]
    assert synthetic.n_obs == mdata["rna"].n_obs  # 'match': as many generated cells per sample as real ones
    assert np.isfinite(synthetic.obsm["X_scgpt"]).all()
    entries = mdata.uns["morphomu"]
    assert entries["fidelity"]["summary"]["n_conditions"] == 29
    summary = entries["classify"]["summary"]
    assert set(summary.index) == {"test_we", "test_he"}
    assert ((summary["balanced_accuracy_mean"] >= 0) & (summary["balanced_accuracy_mean"] <= 1)).all()
    assert len(namespace["axes"]) >= 1
