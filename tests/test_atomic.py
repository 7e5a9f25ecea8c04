"""No lost or half-written outputs: every written file or directory appears whole or not at all.

Each writer is made to fail part way through writing (after it has written some of the new output);
the previous output must be intact, byte for byte, and no temporary file may be left beside it.
Existing outputs are never replaced without ``overwrite=True`` (``--overwrite`` on the command line),
and the refusal names the argument. (Model directories: ``tests/test_phenoseq.py``; training
checkpoints: ``tests/test_resume.py``; what ``overwrite`` may replace, races and killed runs:
``tests/test_output_safety.py``.)
"""

from __future__ import annotations

import warnings
from pathlib import Path

import mudata as md
import pytest

import morphomu as mm
from morphomu import ContractError, MorphomuError
from morphomu._io import MARKER, atomic_path, is_morphomu_output

SMALL = {"seed": 0, "n_img_cells": 200, "n_rna_cells": 200, "image_dim": 20, "rna_dim": 8}


def tree(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (or ``path`` itself) with its bytes, but morphomu's marker."""
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {
        str(p.relative_to(path)): p.read_bytes()
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.name != MARKER
    }


def write_h5(path: Path, value: int) -> None:
    """A small HDF5 file (morphomu's file outputs are HDF5, which carry its marker)."""
    import h5py

    with h5py.File(path, "w") as f:
        f["value"] = value


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_atomic_path_keeps_the_previous_file_and_directory_on_failure(tmp_path):
    target = tmp_path / "out.h5"
    with atomic_path(target) as tmp:
        write_h5(tmp, 1)
    assert is_morphomu_output(target)
    before = target.read_bytes()
    with (
        pytest.raises(MorphomuError, match=r"path=.*out.h5' exists; pass overwrite=True"),
        atomic_path(target),
    ):
        pass
    with pytest.raises(RuntimeError, match="mid-way"), atomic_path(target, overwrite=True) as tmp:
        write_h5(tmp, 2)
        raise RuntimeError("mid-way")
    assert target.read_bytes() == before and listing(tmp_path) == ["out.h5"]

    folder = tmp_path / "report"
    with atomic_path(folder, arg="out") as tmp:
        tmp.mkdir()
        (tmp / "a.md").write_text("old report")
    with pytest.raises(RuntimeError, match="mid-way"), atomic_path(folder, overwrite=True, arg="out") as tmp:
        tmp.mkdir()
        (tmp / "a.md").write_text("new")
        raise RuntimeError("mid-way")
    assert tree(folder) == {"a.md": b"old report"} and listing(tmp_path) == ["out.h5", "report"]
    with atomic_path(folder, overwrite=True, arg="out") as tmp:
        tmp.mkdir()
        (tmp / "b.md").write_text("new")
    assert tree(folder) == {"b.md": b"new"} and listing(tmp_path) == ["out.h5", "report"]
    assert is_morphomu_output(folder)


def test_simulate_out_is_atomic_and_not_overwritten_unasked(tmp_path, monkeypatch):
    from morphomu.datasets import _simulate

    out = tmp_path / "sim.h5mu"
    mm.datasets.simulate_scgenescope(**SMALL, out=out).file.close()
    before = out.read_bytes()
    with pytest.raises(MorphomuError, match=r"out=.*sim.h5mu' exists; pass overwrite=True"):
        mm.datasets.simulate_scgenescope(**SMALL, out=out)

    real = _simulate._image_features
    calls = []

    def fails(*args, **kwargs):  # called once the annotations are written, to stream the image features
        calls.append(1)
        raise OSError("disk full")

    monkeypatch.setattr(_simulate, "_image_features", fails)
    with pytest.raises(OSError, match="disk full"):
        mm.datasets.simulate_scgenescope(**{**SMALL, "seed": 1}, out=out, overwrite=True)
    assert calls
    assert out.read_bytes() == before and listing(tmp_path) == ["sim.h5mu"]
    monkeypatch.setattr(_simulate, "_image_features", real)
    replaced = mm.datasets.simulate_scgenescope(**{**SMALL, "seed": 1}, out=out, overwrite=True)
    replaced.file.close()
    assert out.read_bytes() != before and listing(tmp_path) == ["sim.h5mu"]


def test_read_scgenescope_backed_index_is_replaced_atomically(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    from test_read import write_release

    from morphomu.datasets import _read

    write_release(tmp_path, rounds=(1,), img_dim=10, rna_dim=8)
    index = tmp_path / "index.h5mu"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mm.datasets.read_scgenescope(tmp_path, rounds=(1,), backed="r", index_path=index).file.close()
    before = index.read_bytes()

    def fails(group, name, files, which):  # the skeleton is written, the matrix links are not
        raise OSError("disk full")

    monkeypatch.setattr(_read, "_link_matrix", fails)
    with pytest.raises(ContractError, match=r"cannot write the backed index to index_path=.*disk full"):
        mm.datasets.read_scgenescope(tmp_path, rounds=(1,), backed="r", index_path=index)
    assert index.read_bytes() == before
    assert listing(tmp_path) == ["features", "index.h5mu"]


def _write_failing(monkeypatch):
    """Make mudata's writer write part of its file, then fail."""

    def partial(self, filename, *args, **kwargs):
        Path(filename).write_bytes(b"\x89HDF partial")
        raise OSError("disk full")

    monkeypatch.setattr(md.MuData, "write", partial)
    monkeypatch.setattr(md.MuData, "write_h5mu", partial)


def test_cli_outputs_are_atomic_and_never_overwritten_unasked(tmp_path, monkeypatch, capsys):
    from morphomu import _cli

    out = tmp_path / "sim"
    argv = ["simulate", "--out", str(out), "--n-img-cells", "200", "--n-rna-cells", "200"]
    assert _cli.main(argv) == 0
    before = tree(out)
    assert "simulated.h5mu" in before and "summary.md" in before
    capsys.readouterr()
    assert _cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "--out=" in err and "exists; pass --overwrite" in err
    with monkeypatch.context() as m:
        _write_failing(m)
        with pytest.raises(OSError, match="disk full"):
            _cli.main([*argv, "--overwrite", "--seed", "1"])
    assert tree(out) == before and listing(tmp_path) == ["sim"]

    # the benchmark's report directory: a run that fails after writing part of its report
    report = tmp_path / "report"
    with atomic_path(report, kind="dir") as tmp:  # an earlier report of morphomu's
        tmp.mkdir()
        (tmp / "report.md").write_text("previous report")
    bench = ["benchmark", "--data", str(out / "simulated.h5mu"), "--out", str(report)]
    capsys.readouterr()
    assert _cli.main(bench) == 2
    err = capsys.readouterr().err
    assert "--out=" in err and "exists; pass --overwrite" in err

    import morphomu.benchmark as benchmark

    def partial_run(mdata, *, out, config, log):
        (Path(out) / "report.md").write_text("half a report")
        raise RuntimeError("killed mid-way")

    monkeypatch.setattr(benchmark, "run_rna_benchmark", partial_run)
    with pytest.raises(RuntimeError, match="killed mid-way"):
        _cli.main([*bench, "--overwrite"])
    # nothing finished, nothing published (a run that finished stages publishes them with its status:
    # tests/test_output_safety.py)
    assert tree(report) == {"report.md": b"previous report"}
    assert listing(tmp_path) == ["report", "sim"]
