import json

import numpy as np
import pandas as pd
import pytest

import morphomu as mm
from morphomu import _paper as paper
from morphomu._cli import main
from morphomu.benchmark import fidelity_scores, imaging_separability, render_rna_report
from morphomu.benchmark._report import gap_recovered, mean_std


def _fake_classification():
    rows = []
    for setting in ("single", "multi"):
        for i, method in enumerate(paper.METHODS):
            for seed, noise in zip((1, 2), (-0.01, 0.01), strict=True):
                for test_set, offset in (("test_we", 0.0), ("test_he", -0.05)):
                    acc = 0.2 + 0.05 * i + offset + noise
                    rows.append(
                        {
                            "setting": setting,
                            "method": method,
                            "seed": seed,
                            "fold": 1,
                            "test_set": test_set,
                            "balanced_accuracy": acc,
                            "macro_f1": acc - 0.02,
                            "weighted_f1": acc - 0.01,
                        }
                    )
    return pd.DataFrame(rows)


def test_report_tables_hold_our_numbers_beside_the_papers():
    classification = _fake_classification()
    table = pd.DataFrame(
        {
            "rank": [1, 3, 2],
            "specificity": [0.01, 0.0, 0.002],
            "euclidean": [0.1, 0.2, 0.3],
            "energy": [0.5, 0.6, 0.7],
            "imaging_separability": [np.nan, 0.9, 0.6],
        },
        index=["DMSO", "A", "B"],
    )
    results = {
        "config": {
            "simulated": True,
            "data": "sim",
            "preset": "tiny",
            "classifier_preset": "tiny",
            "seeds": [1, 2],
            "cv": False,
        },
        "fidelity": {"summary": [{"fold": 1, **fidelity_scores(table), "n_conditions": 3}]},
        "ablations": [
            {
                "variant": "ridge baseline",
                "accuracy_at_1": 0.5,
                "mrr": 0.6,
                "n_rank_le_4": 2,
                "mean_energy": 0.9,
                "we_balanced_accuracy": 0.1,
                "he_balanced_accuracy": float("nan"),
            }
        ],
        "timings_s": {"total": 1.0},
        "plots": ["fidelity.png"],
    }
    report = render_rna_report(results, classification=classification, fidelity_table=table)
    assert "**Simulated data.**" in report and "not comparable" in report
    assert "classifier preset `tiny`" in report
    # results.json written before the rename names the classifier's preset classifier_hparams
    config = {
        ("classifier_hparams" if k == "classifier_preset" else k): v for k, v in results["config"].items()
    }
    former = render_rna_report(
        {**results, "config": config}, classification=classification, fidelity_table=table
    )
    assert former == report
    # Image (real), single: WE accuracies 0.19 and 0.21 -> 0.200 ± 0.014; the paper's 0.270 beside it
    assert (
        "| Image (real) | 0.200 ± 0.014 | 0.270 | 0.180 ± 0.014 | 0.258 | 0.150 ± 0.014 | 0.206 |" in report
    )
    # gap: (synthetic fusion 0.40 - image 0.20) / (real fusion 0.35 - image 0.20) = 133 %
    assert "| WE | 133% | 29% |" in report
    assert "| Accuracy@1 | 0.333 | 0.517 |" in report
    assert "| ridge baseline | 0.500 | 0.600 | 2 | 0.900 | 0.100 | – |" in report
    assert report.index("| DMSO | 1 |") < report.index("| B | 2 |") < report.index("| A | 3 |")
    assert gap_recovered(classification, cv=False)["test_we"] == pytest.approx(4 / 3)


@pytest.mark.parametrize("config", [mm.benchmark.RnaBenchmarkConfig, mm.benchmark.MorphologyBenchmarkConfig])
def test_benchmark_configs_take_the_former_classifier_hparams_with_a_warning(config):
    with pytest.warns(
        FutureWarning, match=rf"{config.__name__}: classifier_hparams= was renamed to classifier_preset="
    ):
        former = config(classifier_hparams="paper", preset="tiny")
    assert former == config(classifier_preset="paper", preset="tiny")
    assert former.classifier_preset == "paper" and "classifier_hparams" not in vars(former)


def test_the_rna_benchmark_passes_the_papers_seeds_and_splits_explicitly(monkeypatch):
    """Its numbers do not depend on tl.classify's or TreatmentClassifier.train's defaults."""
    from morphomu.benchmark import _rna

    calls = []
    monkeypatch.setattr(mm.tl, "classify", lambda mdata, **kw: calls.append(kw) or _fake_frame())
    config = mm.benchmark.RnaBenchmarkConfig(classifier_preset="tiny")
    _rna._classify_rows(
        None, config, methods=["Image (real)"], settings=["single"], seeds=config.seeds, synthetic="x"
    )
    assert calls[0]["seeds"] == (12345, 42, 1234, 99, 7)
    assert tuple(calls[0]["splits"]) == ("test_we", "test_he") and calls[0]["preset"] == "tiny"


def _fake_frame():
    return pd.DataFrame({"seed": [1], "test_set": ["test_we"], "balanced_accuracy": [0.5]})


def test_mean_std_of_one_run_has_no_spread():
    frame = pd.DataFrame({"test_set": ["test_we"], "balanced_accuracy": [0.3]})
    mean, std = mean_std(frame, "test_we", "balanced_accuracy")
    assert mean == 0.3 and np.isnan(std)


def test_imaging_separability_finds_silent_treatments(small_mdata):
    scores = imaging_separability(small_mdata, image_rep="X_vit")
    silent = set(small_mdata.uns["morphomu"]["simulation"]["silent"])
    assert len(scores) == 28
    assert scores[list(silent)].mean() < 0.6  # silent: about chance (0.5)
    assert scores.drop(list(silent)).mean() > scores[list(silent)].mean() + 0.1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--max-epochs", "0"], "--max-epochs=0: expected a positive integer"),
        (["--n-steps", "-1"], "--n-steps=-1: expected a positive integer"),
        (
            ["--sampler", "unipc", "--n-steps", "990"],
            "--n-steps=990: expected a positive integer of at most 980",
        ),
        (["--data", "missing.h5mu"], "is not a file"),
        (["--data", "a.h5mu", "--scgenescope", "root"], "at most one of --data and --scgenescope"),
    ],
)
@pytest.mark.parametrize("task", [["rna"], []], ids=["rna", "no-task"])
def test_benchmark_cli_refuses_bad_arguments_before_any_work(tmp_path, capsys, extra, message, task):
    out = tmp_path / "report"
    assert main(["benchmark", *task, "--out", str(out), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_benchmark_cli_refuses_a_mudata_outside_the_contract(tmp_path, capsys, mdata):
    data = tmp_path / "bad.h5mu"
    broken = mdata
    del broken["img"].obsm["X_vit"]
    broken.write(data)
    out = tmp_path / "report"
    assert main(["benchmark", "rna", "--data", str(data), "--out", str(out)]) == 2
    assert "X_vit" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_benchmark_cli_end_to_end(tmp_path):
    data = tmp_path / "sim.h5mu"
    mm.datasets.simulate_scgenescope(seed=1, n_img_cells=1500, n_rna_cells=1500).write(data)
    out = tmp_path / "report"
    argv = [
        "benchmark",
        "rna",
        "--data",
        str(data),
        "--out",
        str(out),
        "--preset",
        "tiny",
        "--max-epochs",
        "2",
        "--seeds",
        "12345",
        "--classifier-preset",
        "tiny",
        "--n-steps",
        "4",
        "--no-umap",
    ]
    assert main(argv) == 0
    report = (out / "report.md").read_text()
    for section in (
        "## Table 1",
        "## Table 2",
        "## Gap recovered",
        "## Embedding-space fidelity",
        "## Ablations",
        "ridge baseline",
        "context='set'",
        "guidance 2",
        "## Run time",
    ):
        assert section in report
    assert "**Simulated data.**" in report  # recognised from the simulator's ground truth in uns
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["classifier_preset"] == "tiny"  # from --classifier-preset
    frame = pd.DataFrame(results["classification"])
    assert len(frame) == 10 * 2  # ten settings x one seed x two test sets
    assert frame["balanced_accuracy"].between(0, 1).all()
    assert results["gap_recovered"] == pytest.approx(gap_recovered(frame, cv=False), nan_ok=True)
    for name in results["plots"]:
        assert (out / name).stat().st_size > 1000
    assert main(argv) == 2  # exists: refused without --overwrite
