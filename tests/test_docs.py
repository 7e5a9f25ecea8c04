"""The documentation lists every public name, every tutorial and every user-guide page it links to."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

import morphomu as mm

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
NAMESPACES = ("datasets", "pp", "tl", "pl", "models", "benchmark")


def api_entries() -> set[str]:
    """Names listed in the autosummary tables of docs/api.md, as written there (``pp.validate``, ``MorphomuError``)."""
    entries: set[str] = set()
    for block in re.findall(
        r"\.\. autosummary::\n(.*?)(?:\n```|\n\.\. )", (DOCS / "api.md").read_text(), re.S
    ):
        entries |= {m.group(1) for m in re.finditer(r"^ {3}([A-Za-z_][\w.]*)\s*$", block, re.M)}
    return entries


def test_api_page_is_parsed():
    entries = api_entries()
    assert {"pp.validate", "models.PhenoSeq", "MorphomuError"} <= entries  # the parser sees real entries


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_every_public_name_is_in_the_api_reference(namespace):
    module = importlib.import_module(f"morphomu.{namespace}")
    public = {f"{namespace}.{name}" for name in module.__all__}
    listed = {e for e in api_entries() if e.split(".")[0] == namespace}
    assert public - listed == set(), f"public names missing from docs/api.md: {sorted(public - listed)}"
    assert listed - public == set(), (
        f"docs/api.md lists names that mm.{namespace} does not export: {sorted(listed - public)}"
    )


def test_top_level_names_are_in_the_api_reference():
    top = {n for n in mm.__all__ if n not in NAMESPACES and not n.startswith("_")}
    assert top <= api_entries()


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_every_listed_name_resolves(namespace):
    """autosummary imports each entry: a public name whose module is missing breaks the docs build."""
    module = importlib.import_module(f"morphomu.{namespace}")
    missing = []
    for name in module.__all__:
        try:
            getattr(module, name)
        except (ImportError, AttributeError) as e:
            missing.append(f"{name} ({type(e).__name__}: {e})")
    assert not missing, f"mm.{namespace}: {missing}"


def test_every_tutorial_is_in_the_docs():
    notebooks = {p.stem for p in (ROOT / "tutorials").glob("*.ipynb")}
    toctree = re.search(r"```\{toctree\}(.*?)```", (DOCS / "tutorials.md").read_text(), re.S).group(1)
    listed = set(re.findall(r"^tutorials/(\w+)\s*$", toctree, re.M))
    assert notebooks, "no notebooks in tutorials/"
    assert listed == notebooks
    # the docs show the committed files: docs/tutorials is a link to tutorials/
    assert (DOCS / "tutorials").resolve() == (ROOT / "tutorials").resolve()


def test_every_page_is_in_a_toctree():
    index = (DOCS / "index.md").read_text()
    in_toctree = set()
    for body in re.findall(r"```\{toctree\}(.*?)```", index, re.S):
        in_toctree |= {
            line.strip() for line in body.splitlines() if line.strip() and not line.startswith(":")
        }
    pages = {p.stem for p in DOCS.glob("*.md")} - {"index"}
    assert pages == in_toctree


def test_cli_page_documents_the_real_parser():
    from morphomu._cli import build_parser

    text = (DOCS / "cli.md").read_text()
    assert ":module: morphomu._cli" in text and ":func: build_parser" in text
    assert "benchmark" in build_parser().format_help()
