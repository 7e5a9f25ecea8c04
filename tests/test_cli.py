import json

import mudata as md
import pytest

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
