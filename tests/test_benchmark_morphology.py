"""``morphomu benchmark morphology``: the TRIDENT evaluation end to end at the tiny preset."""

from __future__ import annotations

import json

import numpy as np
import pytest

import morphomu as mm
from morphomu import _constants as C
from morphomu._cli import main


@pytest.fixture(scope="module")
def images_h5mu(tmp_path_factory):
    mdata = mm.datasets.simulate_scgenescope(
        n_img_cells=1200, n_rna_cells=1200, with_images=True, image_size=16, seed=3
    )
    path = tmp_path_factory.mktemp("morph") / "sim.h5mu"
    mdata.write_h5mu(path)
    return path


@pytest.mark.slow
def test_morphology_benchmark_writes_report(images_h5mu, tmp_path, capsys):
    out = tmp_path / "run"
    options = ["--data", str(images_h5mu), "--out", str(out)]
    options += ["--preset", "tiny", "--max-epochs", "2", "--n-steps", "4", "--classifier-preset", "tiny"]
    assert main(["benchmark", "morphology", *options]) == 0
    results = json.loads((out / "results.json").read_text())
    rows = results["image_metrics"]
    assert {(r["split"], r["variant"]) for r in rows} == {
        (split, variant)
        for split in C.COMPOUND_SPLITS
        for variant in (
            "TRIDENT (RNA + drug)",
            "TRIDENT without RNA (drug only)",
            "real control tiles (no model)",
        )
    }
    for row in rows:
        assert np.isfinite(row["fid"]) and row["fid"] >= 0
        assert row["n_real"] == row["n_generated"] > 0
    assert set(results["compounds"]["id"]).isdisjoint(results["compounds"]["ood"])
    for split in C.COMPOUND_SPLITS:
        entry = results["expression"][split]
        assert np.isfinite(entry["rmse_model"]) and np.isfinite(entry["rmse_control_mean"])
    report = (out / "report.md").read_text()
    assert "| ID | TRIDENT (RNA + drug) |" in report and "Simulated data" in report
    for plot in results["plots"]:
        assert (out / plot).stat().st_size > 1000
    # an existing report is kept unless --overwrite; the deprecated --task form reaches the same checks
    with pytest.warns(FutureWarning, match="morphomu benchmark morphology"):
        assert main(["benchmark", "--task", "morphology", *options]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_morphology_benchmark_needs_tiles(tmp_path, capsys):
    mdata = mm.datasets.simulate_scgenescope(n_img_cells=300, n_rna_cells=300, seed=1)
    path = tmp_path / "no_tiles.h5mu"
    mdata.write_h5mu(path)
    code = main(["benchmark", "morphology", "--data", str(path), "--out", str(tmp_path / "r")])
    assert code == 2
    err = capsys.readouterr().err
    assert "obsm has no 'images'" in err
    assert not (tmp_path / "r").exists()


def test_morphology_benchmark_refuses_feature_release(tmp_path, capsys):
    # the feature release holds no tiles: --scgenescope is an option of the rna task only
    with pytest.raises(SystemExit) as info:
        main(["benchmark", "morphology", "--scgenescope", str(tmp_path), "--out", str(tmp_path / "r")])
    assert info.value.code == 2
    assert "unrecognized arguments: --scgenescope" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    with pytest.raises(SystemExit):
        main(["benchmark", "morphology", "--help"])
    assert "image tiles" in " ".join(capsys.readouterr().out.split())  # whatever the help's line breaks
