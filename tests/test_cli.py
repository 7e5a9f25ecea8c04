import json
import re
import subprocess
import sys
import warnings

import mudata as md
import pytest

import morphomu as mm
from morphomu._cli import main


def test_simulate_writes_data_and_summary(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(
        ["simulate", "--out", str(out), "--n-img-cells", "1500", "--n-rna-cells", "1200", "--seed", "3"]
    )
    assert rc == 0
    mdata = md.read_h5mu(out / "simulated.h5mu")
    assert mdata["img"].n_obs == 1500
    assert mdata["rna"].n_obs == 1200
    assert set(mdata["rna"].obs["split"]) == {"train", "val", "test_we", "test_he"}
    summary = (out / "summary.md").read_text()
    assert "| img | 1,500 |" in summary
    assert "| rna | 1,200 |" in summary
    assert json.loads((out / "summary.json").read_text())["cells"] == {"img": 1500, "rna": 1200}
    assert "wrote" in capsys.readouterr().out


def test_simulate_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert main(["simulate", "--out", str(out), "--n-img-cells", "1000", "--n-rna-cells", "1000"]) == 2
    assert "exists; pass --overwrite to replace it" in capsys.readouterr().err
    assert (out / "mine.txt").read_text() == "keep"


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "simulate" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["simulate"], ["frobnicate"]])
def test_bad_command_line(argv):
    with pytest.raises(SystemExit):
        main(argv)


# ------------------------------------------------------------------ benchmark tasks as sub-commands
RNA_ONLY = {"--scgenescope", "--classifier-preset", "--seeds", "--cv", "--image-rep", "--rna-rep"}
RNA_ONLY |= {"--no-ablations", "--no-umap"}
SHARED = {
    "--data",
    "--seed",
    "--out",
    "--preset",
    "--max-epochs",
    "--n-steps",
    "--sampler",
    "--accelerator",
    "--precision",
    "--overwrite",
}


def _help_options(capsys, argv: list[str]) -> set[str]:
    with pytest.raises(SystemExit) as info:
        main([*argv, "--help"])
    assert info.value.code == 0
    return set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", capsys.readouterr().out)) - {"--help"}


def test_each_benchmark_task_lists_only_its_own_options(capsys):
    assert _help_options(capsys, ["benchmark", "rna"]) == SHARED | RNA_ONLY
    # the morphology task sizes the classifier behind its IS score: --classifier-hparams is its option too
    assert _help_options(capsys, ["benchmark", "morphology"]) == SHARED | {"--classifier-preset"}
    with pytest.raises(SystemExit):
        main(["benchmark", "--help"])
    text = capsys.readouterr().out
    assert "rna" in text and "morphology" in text


@pytest.fixture
def fake_runs(monkeypatch):
    """Both tasks' runs replaced by one that records its config and writes a report (seconds, not minutes)."""
    import morphomu.benchmark as benchmark

    configs = []

    def run(mdata, *, out, config, log):
        configs.append(config)
        (out / "report.md").write_text("report")
        (out / "results.json").write_text("{}")
        return {"plots": []}

    monkeypatch.setattr(benchmark, "run_rna_benchmark", run)
    monkeypatch.setattr(benchmark, "run_morphology_benchmark", run)
    return configs


@pytest.fixture
def small_h5mu(tmp_path):
    path = tmp_path / "sim.h5mu"
    mm.datasets.simulate_scgenescope(seed=0, n_img_cells=200, n_rna_cells=200).write(path)
    return path


@pytest.mark.parametrize("option", sorted(RNA_ONLY - {"--classifier-preset"}))
def test_morphology_refuses_rna_only_options_before_any_work(tmp_path, capsys, fake_runs, option):
    value = {"--cv": [], "--no-ablations": [], "--no-umap": [], "--seeds": ["1", "2"]}.get(option, ["x"])
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        main(["benchmark", "morphology", "--out", str(out), option, *value])
    assert info.value.code == 2
    assert f"unrecognized arguments: {option}" in capsys.readouterr().err
    assert fake_runs == [] and not out.exists()


def test_benchmark_without_task_is_the_rna_task(tmp_path, monkeypatch, fake_runs):
    from morphomu.benchmark import RnaBenchmarkConfig

    simulate = mm.datasets.simulate_scgenescope
    monkeypatch.setattr(  # the default simulator's data, smaller
        mm.datasets,
        "simulate_scgenescope",
        lambda seed: simulate(seed=seed, n_img_cells=200, n_rna_cells=200),
    )
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["benchmark", "--out", "morphomu-run", "--overwrite"]) == 0  # the README's command
        assert main(["benchmark", "--out", "morphomu-run", "--overwrite"]) == 0  # its own output: replaced
        assert main(["benchmark", "rna", "--out", "run-rna"]) == 0
    assert not [w for w in caught if "deprecated" in str(w.message)]  # the default form is not deprecated
    assert fake_runs == [RnaBenchmarkConfig()] * 3  # preset fast, the paper's seeds, the simulator
    assert (tmp_path / "morphomu-run" / "report.md").read_text() == "report"


@pytest.mark.parametrize("task", ["rna", "morphology"])
@pytest.mark.parametrize("spelling", [["--task", "{task}"], ["--task={task}"]], ids=["space", "equals"])
def test_deprecated_task_option_still_runs_the_task(tmp_path, small_h5mu, fake_runs, task, spelling):
    options = ["--data", str(small_h5mu), "--preset", "tiny", "--max-epochs", "2", "--n-steps", "4"]
    assert main(["benchmark", task, *options, "--out", str(tmp_path / "new")]) == 0
    old = [s.format(task=task) for s in spelling]
    with pytest.warns(FutureWarning, match=rf"--task {task}` is deprecated.*`morphomu benchmark {task} "):
        assert main(["benchmark", *options, *old, "--out", str(tmp_path / "old")]) == 0
    new, deprecated = fake_runs
    assert type(new).__name__ == ("RnaBenchmarkConfig" if task == "rna" else "MorphologyBenchmarkConfig")
    assert deprecated == new  # the same run
    assert (tmp_path / "old" / "report.md").is_file()


def test_deprecated_task_option_refuses_an_unknown_task(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["benchmark", "--task", "proteins", "--out", str(tmp_path / "run")])
    assert info.value.code == 2
    assert "invalid choice: 'proteins'" in capsys.readouterr().err


def test_deprecation_of_task_option_is_printed_by_the_command(tmp_path):
    """The console script shows the FutureWarning on stderr (not only to a test's warning recorder)."""
    notes = tmp_path / "cells.csv"
    notes.write_text("cell,treatment\n")
    script = "import sys; from morphomu._cli import main; sys.exit(main())"
    argv = ["benchmark", "--task", "morphology", "--data", str(notes), "--out", str(tmp_path / "run")]
    proc = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "FutureWarning" in proc.stderr and "`morphomu benchmark morphology ...`" in proc.stderr
    assert "is not an HDF5 file" in proc.stderr  # and the task ran: its checks refused the data


def test_benchmark_refuses_a_bad_precision_before_any_work(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["benchmark", "rna", "--out", str(out), "--precision", "fp8"]) != 0
    assert "--precision='fp8'" in capsys.readouterr().err
    assert not out.exists()
