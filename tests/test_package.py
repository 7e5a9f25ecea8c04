import subprocess
import sys

import pytest

import morphomu as mm
from morphomu import _io


def test_namespaces_and_version():
    for ns in ("pp", "tl", "pl", "datasets", "models"):
        assert hasattr(mm, ns)
    assert mm.__version__.startswith("0.")
    assert issubclass(mm.ContractError, ValueError)


@pytest.mark.parametrize("ns", ["pp", "tl", "pl", "datasets", "models"])
def test_every_public_name_resolves_and_is_documented(ns):
    module = getattr(mm, ns)
    for name in module.__all__:
        obj = getattr(module, name)
        assert obj.__doc__, f"mm.{ns}.{name} has no docstring"
        assert name in dir(module)


def test_import_is_fast_and_light():
    code = (
        "import sys, time; t = time.perf_counter(); import morphomu as mm; dt = time.perf_counter() - t; "
        "heavy = [m for m in ('torch', 'scanpy', 'scvi', 'lightning', 'timm', 'rdkit', 'squidpy', 'diffusers') "
        "if m in sys.modules]; print(dt); print(','.join(heavy))"
    )
    best = float("inf")
    for _ in range(2):  # best of two: the first run may pay for cold file caches
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.split("\n")
        best = min(best, float(out[0]))
        assert out[1] == "", f"import morphomu imported heavy modules: {out[1]}"
    assert best < 3.0, f"import morphomu took {best:.2f} s"


def test_unknown_attribute():
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        mm.pp.nope  # noqa: B018


def test_atomic_path_keeps_previous_file_on_failure(tmp_path):
    import h5py  # morphomu's file outputs are HDF5, which carry its marker (only those are replaced)

    target = tmp_path / "out.h5"
    with _io.atomic_path(target) as tmp, h5py.File(tmp, "w") as f:
        f["v"] = "old"
    with pytest.raises(mm.MorphomuError, match="exists; pass overwrite=True"), _io.atomic_path(target):
        pass
    old = target.read_bytes()
    with pytest.raises(RuntimeError, match="disk full"), _io.atomic_path(target, overwrite=True) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5"]  # no temporary left behind
    with _io.atomic_path(target, overwrite=True) as tmp, h5py.File(tmp, "w") as f:
        f["v"] = "new"
    with h5py.File(target) as f:
        assert f["v"][()] == b"new"


def test_atomic_path_directories(tmp_path):
    target = tmp_path / "report"
    with _io.atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "a.md").write_text("1")
    with pytest.raises(RuntimeError), _io.atomic_path(target, overwrite=True) as tmp:
        tmp.mkdir()
        raise RuntimeError
    assert (target / "a.md").read_text() == "1"
    with _io.atomic_path(target, overwrite=True) as tmp:
        tmp.mkdir()
        (tmp / "b.md").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == [_io.MARKER, "b.md"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


@pytest.mark.parametrize("ns", ["pp", "tl", "pl", "datasets", "models"])
def test_every_public_name_is_in_the_api_reference(ns):
    from pathlib import Path

    api = (Path(__file__).parents[1] / "docs" / "api.md").read_text()
    for name in getattr(mm, ns).__all__:
        assert f"{ns}.{name}\n" in api, f"mm.{ns}.{name} is missing from docs/api.md"
