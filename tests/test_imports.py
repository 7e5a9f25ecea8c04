"""Layering: no module imports another subpackage's internals, nor scvi-tools' private modules.

What several subpackages need lives in :mod:`morphomu._core` (or is a public name of its module). The
scan reads the source with :mod:`ast`, so imports inside functions and ``TYPE_CHECKING`` blocks count.
Rules, for ``morphomu``'s own modules:

- inside one subpackage (``models``, ``tl``, ...), anything goes;
- from another subpackage, public names only (also from its private ``_x.py`` modules): never a
  ``_``-prefixed name, nor a private module object (``from ..models import _trident``);
- the root-level private modules (``_constants``, ``_validation``, ``_errors``, ``_io``, ...) are shared
  infrastructure: any module may import them and their public names;
- a root-level private package (``_core``) is imported through its ``__init__`` only: its public names,
  never its private modules (``from .._core._random import ...``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

import morphomu
from morphomu._core import (
    SPLIT_STREAM_BASE,
    Stream,
    cell_keys,
    keyed_normal,
    keyed_seed,
    keyed_uniform,
    sample_hashes,
    split_stream,
    step_stream,
)

SRC = Path(morphomu.__file__).parent


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _home(parts: list[str]) -> str:
    """The part of the package a module belongs to: a subpackage, a root-level private package, or '' (root)."""
    return parts[0] if parts and (SRC / parts[0]).is_dir() else ""


def _module_parts(rel: Path) -> tuple[list[str], list[str]]:
    """(module path, package path) of a source file, relative to ``morphomu``."""
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        return parts[:-1], parts[:-1]
    return parts, parts[:-1]


def _check_target(target: list[str], names: list[str], here: list[str]) -> list[str]:
    """Problems of importing ``names`` from ``morphomu.<target>`` (``names == []``: the module itself)."""
    home, target_home = _home(here), _home(target)
    if target_home == home:
        return []
    problems = []
    # a private module below the subpackage: fine to take public names from (``from ..models._trident import
    # Trident``), but not as a whole (``import morphomu.models._trident``), and never below a private package
    if any(_private(p) for p in target[1:]) and (not names or _private(target_home)):
        problems.append(f"private module morphomu.{'.'.join(target)} (import from morphomu.{target_home})")
    for name in names:
        root_module = not target and ((SRC / name).is_dir() or (SRC / f"{name}.py").is_file())
        if _private(name) and not root_module:
            problems.append(f"private name {name!r} of morphomu.{'.'.join(target) or '__init__'}")
    return problems


def _scvi_problems(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and (node.module or "").split(".")[0] == "scvi"
        ):
            parts = node.module.split(".")
            if any(_private(p) for p in parts) or any(_private(a.name) for a in node.names):
                found.append((node.lineno, f"scvi private module: from {node.module} import ..."))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "scvi" and any(_private(p) for p in parts):
                    found.append((node.lineno, f"scvi private module: import {alias.name}"))
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            base = node.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id == "scvi":
                found.append((node.lineno, f"scvi private attribute .{node.attr}"))
    return found


def scan(source: str, rel: Path) -> list[str]:
    """Every forbidden import of one source file (``rel``: its path relative to the package)."""
    tree = ast.parse(source)
    here, package = _module_parts(rel)
    problems = [(line, msg) for line, msg in _scvi_problems(tree)]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = base + (module.split(".") if module else [])
            elif module.split(".")[0] == "morphomu":
                target = module.split(".")[1:]
            else:
                continue
            names = [a.name for a in node.names if a.name != "*"]
            problems += [(node.lineno, msg) for msg in _check_target(target, names, here)]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "morphomu":
                    problems += [(node.lineno, msg) for msg in _check_target(parts[1:], [], here)]
    return [f"{rel}:{line}: {msg}" for line, msg in sorted(problems)]


def _scan_package() -> list[str]:
    return [
        problem
        for path in sorted(SRC.rglob("*.py"))
        for problem in scan(path.read_text(encoding="utf-8"), path.relative_to(SRC))
    ]


def test_no_module_imports_another_subpackages_internals_or_scvi_privates():
    problems = _scan_package()
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("rel", "line", "bad"),
    [
        ("tl/_x.py", "from ..models._phenoseq import _rows", True),
        ("tl/_x.py", "from ..models import _trident", True),
        ("tl/_x.py", "from morphomu.models._trident import _CHUNK_ROWS", True),
        ("tl/_x.py", "import morphomu.models._trident", True),
        ("pl/_x.py", "from ..tl._readouts import _ALWAYS_FINITE", True),
        ("models/_x.py", "from .._core._random import cell_keys", True),
        ("models/_x.py", "from .._validation import _row_chunks", True),
        ("models/_x.py", "from scvi.data import _constants", True),
        ("models/_x.py", "from scvi.model.base._save_load import x", True),
        ("models/_x.py", "import scvi.data._constants", True),
        ("models/_x.py", "import scvi\nkey = scvi.data._constants._SETUP_ARGS_KEY", True),
        ("_x.py", "from .models._trident import _expression_rows", True),
        ("models/_x.py", "from ._phenoseq import _cell_keys, check_n_cells", False),
        ("models/_x.py", "from .. import _constants as C", False),
        ("models/_x.py", "from .._core import cell_keys", False),
        ("models/_x.py", "from .._validation import check_rep", False),
        ("models/_x.py", "from .. import __version__", False),
        ("tl/_x.py", "from ..models._phenoseq import PhenoSeq", False),
        ("_core/_x.py", "from ._random import cell_keys\nfrom .. import _constants as C", False),
        ("_x.py", "from ._core import CHUNK_ROWS\nfrom . import _paper", False),
        ("models/_x.py", "from scvi.data import AnnDataManager", False),
    ],
)
def test_scan_flags_what_it_should(rel, line, bad):
    assert bool(scan(line, Path(rel))) is bad, scan(line, Path(rel))


def test_stream_ids_are_distinct_and_keep_their_values():
    values = [m.value for m in Stream.__members__.values()]  # aliases would hide from iteration
    assert len(values) == len(set(values))
    # the values every generated cell has been drawn with: changing one changes generated data
    assert {m.name: m.value for m in Stream} == {
        "PHENOSEQ_NOISE": 1,
        "PHENOSEQ_CONTEXT": 2,
        "PHENOSEQ_STEP_NOISE": 3,
        "RIDGE_RESIDUAL": 4,
        "TRIDENT_NOISE": 11,
        "TRIDENT_CONDITION": 12,
        "TRIDENT_STEP_NOISE": 13,
    }
    assert max(values) < SPLIT_STREAM_BASE <= min(split_stream(s) for s in ("val", "test_we", "test_he"))
    steps = {
        step_stream(s, k)
        for s in (Stream.PHENOSEQ_STEP_NOISE, Stream.TRIDENT_STEP_NOISE)
        for k in range(1001)
    }
    assert len(steps) == 2 * 1001 and not steps & set(values)


def test_keyed_draws_are_pinned():
    """The draws of generation and of the loaders, exactly as before ``_core`` existed."""
    hashes = sample_hashes(["sample-1", "sample-2"])
    assert hashes.tolist() == [14238568661341201512, 9128411864829745699]
    keys = cell_keys(0, Stream.PHENOSEQ_NOISE, hashes[[0, 0, 1]], np.array([0, 1, 0]))
    expected = [
        [-0.19252163171768188, 1.6651145219802856, -1.3342909812927246],
        [-0.6932885646820068, -0.283931165933609, 0.16062797605991364],
        [1.084365963935852, 1.1094049215316772, -1.1066783666610718],
    ]
    np.testing.assert_array_equal(keyed_normal(keys, 3), np.asarray(expected, dtype=np.float32))
    keys = cell_keys(7, Stream.RIDGE_RESIDUAL, hashes[[1]], np.array([5]))
    np.testing.assert_array_equal(keyed_uniform(keys, 2), [[0.588093979697871, 0.635677401096187]])
    keys = cell_keys(3, step_stream(Stream.PHENOSEQ_STEP_NOISE, 10), hashes[[0]], np.array([2]))
    np.testing.assert_array_equal(
        keyed_normal(keys, 2), np.asarray([[-0.6666852235794067, -0.28470489382743835]], dtype=np.float32)
    )
    assert split_stream("val") == 22861
    assert keyed_seed(0, 11, 2, 5) == 5352719996542106346


def test_registry_keys_match_scvi():
    """The registry keys written once in ``_core`` are still the ones scvi-tools uses."""
    from scvi.data import _constants as sc

    from morphomu import _core

    assert _core.SCVI_VERSION_KEY == sc._SCVI_VERSION_KEY
    assert _core.MODEL_NAME_KEY == sc._MODEL_NAME_KEY
    assert _core.SETUP_METHOD_NAME_KEY == sc._SETUP_METHOD_NAME
    assert _core.SETUP_ARGS_KEY == sc._SETUP_ARGS_KEY
    assert _core.FIELD_REGISTRIES_KEY == sc._FIELD_REGISTRIES_KEY
