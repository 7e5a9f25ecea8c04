"""The README's quickstart runs, and is word for word the core of the quickstart notebook."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from unittest import mock

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


def notebook_settings() -> dict[str, object]:
    """The names the quickstart notebook's first code cell sets, at its full settings (``MORPHOMU_TUTORIAL_FAST`` unset)."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    first = next(c for c in nb.cells if c.cell_type == "code")
    namespace: dict = {}
    with mock.patch.dict(os.environ):
        os.environ.pop("MORPHOMU_TUTORIAL_FAST", None)
        exec(compile(first.source, "settings cell", "exec"), namespace)
    return {name: value for name, value in namespace.items() if name.isupper() and name != "FAST"}


def notebook_quickstart(settings: dict[str, object] | None = None) -> str:
    """The code cells of the quickstart notebook tagged 'quickstart', in order, with ``settings`` written out."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    cells = [
        c.source for c in nb.cells if c.cell_type == "code" and "quickstart" in c.metadata.get("tags", [])
    ]
    text = "\n".join(cells)
    for name, value in (settings or {}).items():
        text = re.sub(rf"\b{name}\b", json.dumps(value), text)
    return text


def code_lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.splitlines() if line.strip()]


def test_quickstart_is_the_notebooks_core_cells():
    """Word for word, once the notebook's settings (its first code cell) are written out at their full values."""
    readme = code_lines(readme_quickstart())
    assert 0 < len(readme) <= 10, f"the README quickstart has {len(readme)} lines of code (at most 10)"
    settings = notebook_settings()
    assert {"N_IMG_CELLS", "N_RNA_CELLS", "PRESET", "MAX_EPOCHS"} <= set(settings)
    core = notebook_quickstart()
    assert all(
        re.search(rf"\b{name}\b", core) for name in settings
    )  # every setting is used by the core cells
    assert readme == code_lines(notebook_quickstart(settings))


def test_setup_commands_are_unchanged():
    text = README.read_text()
    for command in SETUP_COMMANDS:
        assert command in text
    assert SETUP_COMMANDS[1] in (ROOT / ".ci" / "run").read_text()  # CI runs exactly the README's tests


@pytest.mark.slow
@pytest.mark.timeout(1800)  # about a minute on 2 idle cores; several on a loaded CI machine
def test_quickstart_runs(monkeypatch, tmp_path):
    """Execute the README block exactly as written (its sizes are the small ones it shows)."""
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(readme_quickstart(), str(README), "exec"), namespace)
    mdata = namespace["mdata"]
    assert namespace["model"].preset == "fast"
    assert namespace["model"].history_["train_loss"].shape[0] == notebook_settings()["MAX_EPOCHS"]
    synthetic = mdata["rna_synthetic"]
    assert synthetic.n_obs == mdata["rna"].n_obs  # 'match': as many generated cells per sample as real ones
    assert np.isfinite(synthetic.obsm["X_scgpt"]).all()
    entries = mdata.uns["morphomu"]
    assert entries["fidelity"]["summary"]["n_conditions"] == 29
    summary = entries["classify"]["summary"]
    assert set(summary.index) == {"test_we", "test_he"}
    assert ((summary["balanced_accuracy_mean"] >= 0) & (summary["balanced_accuracy_mean"] <= 1)).all()
    assert len(namespace["axes"]) >= 1
