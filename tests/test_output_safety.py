"""morphomu overwrites only what it wrote, and never clobbers what appeared while it worked.

- ``overwrite=True`` / ``--overwrite`` refuses a user's directory or file, ``$HOME``, ``.``, ``..``, ``/``
  and links: nothing is deleted (the trees are byte-identical); a marked morphomu output is replaced and
  its backup removed.
- Two runs to the same ``--out``: exactly one wins; the other's result is kept at ``X.conflict-*``.
- A run killed (SIGKILL) at any step of a commit leaves the old or the new complete output, and the next
  run cleans up after it (a backup whose target is missing is restored).
- ``read_scgenescope(index_path=)`` refuses the release root, its files and directories.
- A benchmark that fails in its last stage publishes ``results.json`` with the finished stages.
- Training never deletes a user's hidden ``.*.tmp`` files in ``checkpoint_dir``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest

import morphomu as mm
from morphomu import MorphomuError, _io
from morphomu._cli import main

TINY = ["--n-img-cells", "200", "--n-rna-cells", "200"]
SMALL = {"seed": 0, "n_img_cells": 200, "n_rna_cells": 200, "image_dim": 20, "rna_dim": 8}


def snapshot(path: Path) -> dict[str, tuple[str, bytes | str]]:
    """Everything under ``path`` (and ``path`` itself): kind and content of each entry, hidden ones too."""

    def one(p: Path) -> tuple[str, bytes | str]:
        if p.is_symlink():
            return ("link", str(p.readlink()))
        return ("dir", "") if p.is_dir() else ("file", p.read_bytes())

    out = {".": one(path)}
    if path.is_dir() and not path.is_symlink():
        out |= {str(p.relative_to(path)): one(p) for p in sorted(path.rglob("*"))}
    return out


def content(path: Path) -> dict[str, bytes]:
    """The files of an output directory, without morphomu's marker."""
    return {
        str(p.relative_to(path)): p.read_bytes()
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.name != _io.MARKER
    }


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def user_tree(root: Path) -> Path:
    """A user's directory with files, a hidden file, a sub-folder and a leftover of an old morphomu."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "thesis.tex").write_text("three years of work")
    (root / ".config").write_text("secret=1")
    (root / "data").mkdir()
    (root / "data" / "cells.csv").write_bytes(b"a,b\n1,2\n")
    return root


# ------------------------------------------------------------------ what --overwrite may replace
@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("user_dir", "is a directory morphomu did not write: it has no .morphomu-output.json marker"),
        ("user_file", "is a file; expected a directory"),
        ("link", "is a symbolic link"),
        ("home", "is your home directory"),
        ("cwd", "is the current directory"),
        ("parent", "is a parent of the current directory"),
        ("root", "is the file-system root"),
    ],
)
@pytest.mark.parametrize("overwrite", [True, False])
def test_overwrite_refuses_what_morphomu_did_not_write(
    tmp_path, monkeypatch, capsys, where, message, overwrite
):
    home = user_tree(tmp_path / "home")
    monkeypatch.setenv("HOME", str(home))
    work = user_tree(tmp_path / "work")
    monkeypatch.chdir(user_tree(tmp_path / "here") / "data")
    (tmp_path / "notes.txt").write_text("my notes")
    (tmp_path / "link").symlink_to(home)
    out = {
        "user_dir": work,
        "user_file": tmp_path / "notes.txt",
        "link": tmp_path / "link",
        "home": home,
        "cwd": Path(),
        "parent": Path(".."),
        "root": Path("/"),
    }[where]
    before = snapshot(tmp_path)
    argv = ["simulate", "--out", str(out), *TINY] + (["--overwrite"] if overwrite else [])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--out=" in err and message in err, err
    if where == "user_dir":
        assert "'.config', 'data', 'thesis.tex'" in err  # what is in it
        assert "Delete or move it yourself" in err or "delete or move it yourself" in err
    assert snapshot(tmp_path) == before  # nothing deleted, moved or added


def test_library_overwrite_refuses_a_users_files(tmp_path):
    import h5py

    mine = tmp_path / "mine.h5mu"
    mm.datasets.simulate_scgenescope(**SMALL).write(mine)  # the user's own file, in morphomu's format
    folder = user_tree(tmp_path / "model")
    before = snapshot(tmp_path)
    with pytest.raises(MorphomuError, match=r"out=.*mine.h5mu'.*a file morphomu did not write"):
        mm.datasets.simulate_scgenescope(**SMALL, out=mine, overwrite=True)
    with (  # as MorphomuModel.save
        pytest.raises(MorphomuError, match=r"dir_path=.*model'.*a directory morphomu did not write"),
        _io.atomic_path(folder, overwrite=True, arg="dir_path") as tmp,
    ):
        tmp.mkdir()
    with (  # as crop_cells
        pytest.raises(MorphomuError, match=r"store=.*mine.h5mu' is a file; expected a directory"),
        _io.atomic_path(mine, overwrite=True, arg="store", kind="dir") as tmp,
    ):
        tmp.mkdir()
    assert snapshot(tmp_path) == before
    # files added to a morphomu output since are the user's: refused too
    out = tmp_path / "report"
    with _io.atomic_path(out, kind="dir") as tmp:
        tmp.mkdir()
        (tmp / "report.md").write_text("morphomu's")
    (out / "my_notes.md").write_text("mine")
    before = snapshot(tmp_path)
    with (
        pytest.raises(MorphomuError, match=r"files were added since: 'my_notes.md'"),
        _io.atomic_path(out, overwrite=True, kind="dir") as tmp,
    ):
        tmp.mkdir()
    assert snapshot(tmp_path) == before
    # an empty directory holds nothing to lose: it is replaced
    (tmp_path / "empty").mkdir()
    with _io.atomic_path(tmp_path / "empty", overwrite=True, kind="dir") as tmp:
        tmp.mkdir()
        (tmp / "a").write_text("1")
    assert content(tmp_path / "empty") == {"a": b"1"}
    with h5py.File(mine, "r") as f:
        assert _io.H5_ATTR not in f.attrs


def test_overwrite_replaces_a_morphomu_output_through_a_unique_backup(tmp_path, capsys):
    out = tmp_path / "sim"
    assert main(["simulate", "--out", str(out), *TINY]) == 0
    assert (out / _io.MARKER).is_file()
    first = content(out)
    (tmp_path / ".sim.old").mkdir()  # a user's folder with the name the old backup had
    (tmp_path / ".sim.old" / "keep.txt").write_text("mine")
    capsys.readouterr()
    assert main(["simulate", "--out", str(out), *TINY, "--seed", "1", "--overwrite"]) == 0
    err = capsys.readouterr().err
    assert content(out) != first and set(content(out)) == set(first)
    backup = err.split("the previous output is kept at ")[1].split()[0]
    assert Path(backup).parent == tmp_path and Path(backup).name.startswith(".sim.")
    assert not Path(backup).exists()  # removed once the new output was in place
    assert (
        listing(tmp_path) == [".sim.old", "sim"]
        and (tmp_path / ".sim.old" / "keep.txt").read_text() == "mine"
    )


# ------------------------------------------------------------------ commit without clobbering
def test_what_appears_during_a_run_is_never_replaced(tmp_path, monkeypatch, capsys):
    target = tmp_path / "out"

    def appear(point: str) -> None:  # someone creates the target while morphomu works
        if point == "marked" and not target.exists():
            user_tree(target)

    monkeypatch.setattr(_io, "_hook", appear)
    with (
        pytest.raises(MorphomuError, match=r"out' appeared while this run was writing") as info,
        _io.atomic_path(target, kind="dir") as tmp,
    ):
        tmp.mkdir()
        (tmp / "result.txt").write_text("finished")
    kept = Path(str(info.value).split("kept at ")[1].split("'")[1])
    assert kept.name.startswith("out.conflict-") and (kept / "result.txt").read_text() == "finished"
    assert (target / "thesis.tex").read_text() == "three years of work"
    assert listing(tmp_path) == sorted(["out", kept.name])

    # an empty directory appearing is not replaced either (os.rename would replace it), with the fallback
    monkeypatch.setattr(_io, "_libc_rename", lambda: None)
    empty = tmp_path / "empty"
    monkeypatch.setattr(_io, "_hook", lambda p: empty.mkdir() if p == "marked" else None)
    with (
        pytest.raises(MorphomuError, match="appeared while this run was writing"),
        _io.atomic_path(empty, kind="dir") as tmp,
    ):
        tmp.mkdir()
        (tmp / "a").write_text("1")
    assert list(empty.iterdir()) == []

    # the benchmark: its report directory is created at --out during the run, without --overwrite
    import morphomu.benchmark as benchmark

    data = tmp_path / "sim.h5mu"
    mm.datasets.simulate_scgenescope(**SMALL).write(data)
    report = tmp_path / "report"
    monkeypatch.setattr(_io, "_hook", None)

    def run(mdata, *, out, config, log):
        user_tree(report)
        (Path(out) / "report.md").write_text("done")
        return {"plots": []}

    monkeypatch.setattr(benchmark, "run_rna_benchmark", run)
    assert main(["benchmark", "--data", str(data), "--out", str(report)]) == 2
    err = capsys.readouterr().err
    assert "report' appeared while this run was writing" in err and "report.conflict-" in err
    assert (report / "thesis.tex").read_text() == "three years of work"
    conflict = next(tmp_path.glob("report.conflict-*"))
    assert (conflict / "report.md").read_text() == "done"


RACE = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from morphomu import _io, _cli

    barrier = Path(sys.argv[1])

    def hook(point):  # both runs reach their commit together
        if point == "marked":
            (barrier / str(os.getpid())).touch()
            deadline = time.time() + 120
            while len(list(barrier.iterdir())) < 2 and time.time() < deadline:
                time.sleep(0.01)

    _io._hook = hook
    sys.exit(_cli.main(sys.argv[2:]))
    """
)


def test_two_runs_to_the_same_out_one_wins_the_other_keeps_its_result(tmp_path):
    out = tmp_path / "X"
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                RACE,
                str(barrier),
                "simulate",
                "--out",
                str(out),
                *TINY,
                "--seed",
                str(s),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for s in (0, 1)
    ]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    loser_err = next(err for rc, err in results if rc == 2)
    conflicts = sorted(tmp_path.glob("X.conflict-*"))
    assert len(conflicts) == 1 and str(conflicts[0]) in loser_err
    assert listing(tmp_path) == sorted(["X", conflicts[0].name, "barrier"])  # no temporaries left
    seeds = {json.loads((d / "summary.json").read_text())["seed"] for d in (out, conflicts[0])}
    assert seeds == {0, 1}  # both results are complete and kept
    import mudata

    for d in (out, conflicts[0]):
        assert mudata.read_h5mu(d / "simulated.h5mu")["img"].n_obs == 200


# ------------------------------------------------------------------ killed runs
KILL = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from morphomu import _io

    target, kind, point, value = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]

    def hook(p):
        if p == point:
            os.kill(os.getpid(), signal.SIGKILL)

    _io._hook = hook
    with _io.atomic_path(target, overwrite=True, kind=kind) as tmp:
        if kind == "dir":
            tmp.mkdir()
            (tmp / "a.txt").write_text(value)
            _io._at("writing")
            (tmp / "b.txt").write_text(value)
        else:
            import h5py

            with h5py.File(tmp, "w") as f:
                f["a"] = value
                f.flush()
                _io._at("writing")
                f["b"] = value
    """
)
POINTS = ["created", "writing", "marked", "exists", "aside", "published", "discarding"]


def write_output(target: Path, kind: str, value: str) -> None:
    with _io.atomic_path(target, overwrite=True, kind=kind) as tmp:
        if kind == "dir":
            tmp.mkdir()
            (tmp / "a.txt").write_text(value)
            (tmp / "b.txt").write_text(value)
        else:
            import h5py

            with h5py.File(tmp, "w") as f:
                f["a"], f["b"] = value, value


def state(target: Path, kind: str) -> str | None:
    """The value of a complete output at ``target``; ``None`` if absent; fails if incomplete."""
    if not os.path.lexists(target):
        return None
    if kind == "dir":
        values = {(target / n).read_text() for n in ("a.txt", "b.txt")}
    else:
        import h5py

        with h5py.File(target, "r") as f:
            values = {f[n][()].decode() for n in ("a", "b")}
    assert len(values) == 1 and _io.is_morphomu_output(target)
    return values.pop()


@pytest.mark.parametrize("kind", ["dir", "file"])
@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize("previous", [True, False])
def test_a_run_killed_at_any_point_leaves_the_old_or_the_new_output(tmp_path, kind, point, previous):
    target = tmp_path / ("out" if kind == "dir" else "out.h5")
    if previous:
        write_output(target, kind, "old")
    proc = subprocess.run(
        [sys.executable, "-c", KILL, str(target), kind, point, "new"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    fires = previous or point in ("created", "writing", "marked", "discarding")
    assert proc.returncode == (-signal.SIGKILL if fires else 0), proc.stderr[-2000:]
    left = state(target, kind)
    if point == "aside" and previous:
        assert left is None  # killed between moving the old output aside and publishing the new one
    else:
        assert left in ({"old", "new"} if previous else {None, "new"})
    # the next run to the same target cleans up (restoring an interrupted replacement) ...
    _io.check_writable(target, overwrite=True, kind=kind)
    assert state(target, kind) in ({"old", "new"} if previous else {None, "new"})
    if point == "aside" and previous:
        assert state(target, kind) == "old"
    # ... and leaves nothing but its output
    write_output(target, kind, "next")
    assert state(target, kind) == "next" and listing(tmp_path) == [target.name]


KILL_SIMULATE = textwrap.dedent(
    """
    import os, signal, sys
    from morphomu import _io, _cli

    point = sys.argv[1]
    _io._hook = lambda p: os.kill(os.getpid(), signal.SIGKILL) if p == point else None
    sys.exit(_cli.main(sys.argv[2:]))
    """
)


@pytest.mark.parametrize("point", ["marked", "aside", "published"])
def test_simulate_killed_while_replacing_its_output(tmp_path, point):
    out = tmp_path / "sim"
    assert main(["simulate", "--out", str(out), *TINY]) == 0
    old = content(out)
    argv = ["simulate", "--out", str(out), *TINY, "--seed", "1", "--overwrite"]
    proc = subprocess.run(
        [sys.executable, "-c", KILL_SIMULATE, point, *argv], capture_output=True, timeout=300
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    _io.check_writable(out, overwrite=True, kind="dir")  # what the next run does first
    now = content(out)
    seed = json.loads(now["summary.json"])["seed"]  # the old output (seed 0) or the new one (seed 1)
    assert (now == old) if seed == 0 else (seed == 1 and set(now) == set(old))
    assert main(argv) == 0
    assert listing(tmp_path) == ["sim"]


def test_stale_temporaries_are_cleaned_only_when_marked_and_dead(tmp_path):
    target = tmp_path / "out"
    lookalike = tmp_path / ".out.mine.tmp"  # a user's, with the same shape: never touched
    lookalike.mkdir()
    (lookalike / "x").write_text("mine")
    alive = _io._make_container(target, "tmp")  # this process's own: alive
    (alive / "out").mkdir()
    other_host = _io._make_container(target, "old")
    info = json.loads((other_host / _io.CONTAINER_MARKER).read_text())
    (other_host / _io.CONTAINER_MARKER).write_text(
        json.dumps({**info, "host": "elsewhere", "pid": 2**22 + 1})
    )
    dead = _io._make_container(target, "tmp")
    info = json.loads((dead / _io.CONTAINER_MARKER).read_text())
    (dead / _io.CONTAINER_MARKER).write_text(json.dumps({**info, "pid": 2**22 + 1}))  # beyond pid_max
    (dead / "out").mkdir()
    assert _io.clean_stale(target) == [dead]
    assert sorted(listing(tmp_path)) == sorted([lookalike.name, alive.name, other_host.name])
    assert (lookalike / "x").read_text() == "mine"


# ------------------------------------------------------------------ read_scgenescope(index_path=)
@pytest.mark.parametrize("where", ["directory", "release_file", "root", "users_h5mu"])
def test_index_path_never_replaces_the_release_or_a_users_files(tmp_path, monkeypatch, where):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    from test_read import write_release

    root = tmp_path / "release"
    write_release(root, rounds=(1,), img_dim=10, rna_dim=8)
    user_tree(tmp_path / "mine")
    mdata = mm.datasets.simulate_scgenescope(**SMALL)
    mdata.write(tmp_path / "mine.h5mu")
    index = {
        "directory": tmp_path / "mine",
        "release_file": next(root.rglob("*.h5ad")),
        "root": root,
        "users_h5mu": tmp_path / "mine.h5mu",
    }[where]
    before = snapshot(tmp_path)
    with pytest.raises(MorphomuError, match=r"index_path=") as info:
        mm.datasets.read_scgenescope(root, rounds=(1,), backed="r", index_path=index)
    message = {
        "directory": "is a directory",
        "release_file": "is a file of the scGeneScope release",
        "root": "is the release root",
        "users_h5mu": "a file morphomu did not write",
    }[where]
    assert message in str(info.value)
    assert snapshot(tmp_path) == before


def test_index_is_replaced_when_morphomu_wrote_it(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    from test_read import write_release

    write_release(tmp_path, rounds=(1,), img_dim=10, rna_dim=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # the default folder {root}/morphomu/ is morphomu's own: an index there without a marker (an
        # earlier morphomu's) is replaced
        default = tmp_path / "morphomu" / "index__img-imagenet-vit-l__rna-scgpt__rounds-1.h5mu"
        default.parent.mkdir()
        default.write_bytes(b"an index of an earlier morphomu")
        mm.datasets.read_scgenescope(tmp_path, rounds=(1,), backed="r").file.close()
        assert _io.is_morphomu_output(default)
        index = tmp_path / "elsewhere" / "index.h5mu"
        for _ in range(2):
            mm.datasets.read_scgenescope(tmp_path, rounds=(1,), backed="r", index_path=index).file.close()
    assert _io.is_morphomu_output(index) and listing(index.parent) == ["index.h5mu"]


# ------------------------------------------------------------------ benchmark: a late failure keeps the tables
def test_benchmark_failing_in_its_plots_publishes_the_finished_stages(tmp_path, monkeypatch, capsys):
    from morphomu.benchmark import _rna as rna_task

    real_generate = mm.tl.generate_rna

    def ridge(
        mdata, *, model=None, n_steps=None, sampler=None, **kwargs
    ):  # no diffusion: seconds, not minutes
        return real_generate(mdata, method="ridge", **kwargs)

    def plots(*args, **kwargs):
        raise RuntimeError("matplotlib exploded")

    monkeypatch.setattr(rna_task, "_train_phenoseq", lambda *a, **k: SimpleNamespace(history={}))
    monkeypatch.setattr(mm.tl, "generate_rna", ridge)
    monkeypatch.setattr(rna_task, "_plots", plots)
    data = tmp_path / "sim.h5mu"
    mm.datasets.simulate_scgenescope(**{**SMALL, "n_img_cells": 400, "n_rna_cells": 400}).write(data)
    out = tmp_path / "report"
    argv = ["benchmark", "--data", str(data), "--out", str(out), "--preset", "tiny", "--seeds", "1"]
    argv += ["--classifier-hparams", "tiny", "--no-umap", "--no-ablations", "--accelerator", "cpu"]
    with pytest.raises(RuntimeError, match="matplotlib exploded"):
        main(argv)
    assert "failed at plots; the finished stages are in" in capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "failed at plots"
    assert results["error"] == "RuntimeError: matplotlib exploded"
    assert results["stages_done"][-1] == "imaging separability"
    assert len(results["classification"]) == 10 * 2  # ten settings x one seed x two test sets
    assert results["fidelity"]["summary"] and results["fidelity"]["per_condition"]
    assert listing(tmp_path) == ["report", "sim.h5mu"] and _io.is_morphomu_output(out)


# ------------------------------------------------------------------ checkpoint_dir
def test_checkpoint_dir_cleanup_touches_only_morphomu_temporaries(tmp_path):
    from morphomu.train._checkpoint import CHECKPOINT_NAME, TrainingCheckpoint

    (tmp_path / ".foo.tmp").write_text("a user's file")
    (tmp_path / ".x.tmp").mkdir()
    (tmp_path / ".x.tmp" / "inside").write_text("a user's directory")
    (tmp_path / f".{CHECKPOINT_NAME}.{2**22 + 1}.tmp").mkdir()  # a directory of morphomu's shape
    (tmp_path / f".{CHECKPOINT_NAME}.{os.getpid()}.tmp").write_text("a live writer's")
    dead = tmp_path / f".{CHECKPOINT_NAME}.{2**22 + 2}.tmp"
    dead.write_text("left by a killed writer")
    before = snapshot(tmp_path)
    callback = TrainingCheckpoint(tmp_path, every_n_steps=1)
    callback.setup(SimpleNamespace(is_global_zero=True), None, "fit")
    del before[dead.name]
    assert snapshot(tmp_path) == before and not dead.exists()
