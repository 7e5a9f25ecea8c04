"""expression_accuracy (Pearson of z-scored LFCs) and gene_set_enrichment (hypergeometric ORA, GMT)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import morphomu as mm
from morphomu import ContractError


def _tables(seed: int = 0, noise: float = 0.3, n_genes: int = 60):
    rng = np.random.default_rng(seed)
    compounds = ["DMSO", *(f"cmp{i}" for i in range(8))]
    genes = [f"G{i}" for i in range(n_genes)]
    real = pd.DataFrame(rng.normal(size=(len(compounds), n_genes)), index=compounds, columns=genes)
    pred = real.drop(index="DMSO") + rng.normal(scale=noise, size=(len(compounds) - 1, n_genes))
    return pred, real


@pytest.mark.parametrize("zscore", ["gene", "compound", None])
def test_pearson_matches_scipy_on_zscored_lfc(zscore):
    pred, real = _tables()
    before = (pred.copy(), real.copy())
    table = mm.tl.expression_accuracy(pred, real, zscore=zscore)
    pd.testing.assert_frame_equal(pred, before[0])
    pd.testing.assert_frame_equal(real, before[1])
    lfc_pred = pred - real.loc["DMSO"]
    lfc_real = real.drop(index="DMSO") - real.loc["DMSO"]
    if zscore == "gene":
        lfc_pred = (lfc_pred - lfc_pred.mean(0)) / lfc_pred.std(0, ddof=0)
        lfc_real = (lfc_real - lfc_real.mean(0)) / lfc_real.std(0, ddof=0)
    elif zscore == "compound":
        lfc_pred = lfc_pred.sub(lfc_pred.mean(1), axis=0).div(lfc_pred.std(1, ddof=0), axis=0)
        lfc_real = lfc_real.sub(lfc_real.mean(1), axis=0).div(lfc_real.std(1, ddof=0), axis=0)
    for c in table.index:
        assert table.loc[c, "pearson"] == pytest.approx(
            stats.pearsonr(lfc_pred.loc[c], lfc_real.loc[c])[0], abs=1e-10
        )
    summary = table.attrs["summary"]
    overall = stats.pearsonr(lfc_pred.to_numpy().ravel(), lfc_real.to_numpy().ravel())[0]
    assert summary["overall_pearson"] == pytest.approx(overall, abs=1e-10)
    assert summary["n_compounds"] == 8 and summary["n_genes"] == 60
    assert 0.8 < summary["mean_pearson"] < 1.0


def test_accuracy_falls_with_noise_and_uses_predicted_control_row():
    good = mm.tl.expression_accuracy(*_tables(noise=0.1)).attrs["summary"]["mean_pearson"]
    bad = mm.tl.expression_accuracy(*_tables(noise=3.0)).attrs["summary"]["mean_pearson"]
    assert good > 0.95 > 0.5 > bad
    pred, real = _tables()
    shifted = pd.concat([pred + 5.0, (real.loc[["DMSO"]] + 5.0)])  # own control row: a global shift cancels
    a = mm.tl.expression_accuracy(pred, real, zscore=None)
    b = mm.tl.expression_accuracy(shifted, real, zscore=None)
    np.testing.assert_allclose(a["pearson"], b["pearson"].loc[a.index], atol=1e-12)
    # subsets: only shared compounds and genes count, the rest is reported
    c = mm.tl.expression_accuracy(pred.iloc[:5, :40], real.iloc[:, 10:])
    assert len(c) == 5 and int(c["n_genes"].iloc[0]) == 30
    assert c.attrs["only_real"] == ["cmp5", "cmp6", "cmp7"]


def test_expression_errors_name_the_argument():
    pred, real = _tables()
    with pytest.raises(ContractError, match="control='ctrl'"):
        mm.tl.expression_accuracy(pred, real, control="ctrl")
    with pytest.raises(ContractError, match="predicted must be a DataFrame"):
        mm.tl.expression_accuracy(pred.to_numpy(), real)
    with pytest.raises(ContractError, match="share 0 genes"):
        mm.tl.expression_accuracy(pred.set_axis([f"X{i}" for i in range(60)], axis=1), real)
    bad = real.copy()
    bad.iloc[1, 1] = np.nan
    with pytest.raises(ContractError, match="real has 1 non-finite"):
        mm.tl.expression_accuracy(pred, bad)
    with pytest.raises(ContractError, match="zscore"):
        mm.tl.expression_accuracy(pred, real, zscore="rows")


def test_hypergeometric_pvalue_by_hand():
    genes = [f"G{i}" for i in range(20)]
    lfc = pd.Series(np.linspace(2.0, -2.0, 20), index=genes)  # G0..G9 up, G10..G19 down (G9/G10 ~ +-0.1)
    sets = {"up_set": ["G0", "G1", "G2", "G15", "NOT_MEASURED"], "down_set": ["G19", "G18", "G0"]}
    before = lfc.copy()
    res = mm.tl.gene_set_enrichment(lfc, sets, n_top=4, direction="both")
    pd.testing.assert_series_equal(lfc, before)
    up = res[(res["direction"] == "up") & (res["gene_set"] == "up_set")].iloc[0]
    # M = 20 background genes, n = 4 set genes measured, N = 4 selected (G0..G3), k = 3 (G0, G1, G2)
    from math import comb

    by_hand = sum(comb(4, k) * comb(16, 4 - k) for k in (3, 4)) / comb(20, 4)
    assert up["set_size"] == 4 and up["n_selected"] == 4 and up["overlap"] == 3
    assert up["pvalue"] == pytest.approx(by_hand, rel=1e-12)
    assert up["expected"] == pytest.approx(4 * 4 / 20)
    assert up["genes"] == "G0;G1;G2"
    down = res[(res["direction"] == "down") & (res["gene_set"] == "down_set")].iloc[0]
    assert down["overlap"] == 2  # G19, G18 among the 4 most negative
    # BH within one selection (two sets): padj = min(1, p * m / rank), monotone
    part = res[res["direction"] == "up"].sort_values("pvalue")
    p = part["pvalue"].to_numpy()
    expected = np.minimum.accumulate((p * 2 / np.arange(1, 3))[::-1])[::-1]
    np.testing.assert_allclose(part["padj"], np.minimum(expected, 1.0))
    # an explicit background enlarges M
    wide = mm.tl.gene_set_enrichment(lfc, sets, n_top=4, direction="up", background=[*genes, *"ABCDEFGHIJ"])
    row = wide[wide["gene_set"] == "up_set"].iloc[0]
    assert row["pvalue"] == pytest.approx(stats.hypergeom.sf(2, 30, 4, 4))


def test_gmt_file_and_dataframe_input(tmp_path):
    gmt = tmp_path / "sets.gmt"
    gmt.write_text(
        "CELL_GROWTH\thttp://example\tG0\tG1\tG2\tG3\n\nAPOPTOSIS\tna\tG16\tG17\tG18\tG19\nEMPTY\tna\tZZZ\n"
    )
    assert mm.tl._expression.read_gmt(gmt) == {
        "CELL_GROWTH": ["G0", "G1", "G2", "G3"],
        "APOPTOSIS": ["G16", "G17", "G18", "G19"],
        "EMPTY": ["ZZZ"],
    }
    genes = [f"G{i}" for i in range(20)]
    frame = pd.DataFrame(
        [np.linspace(2, -2, 20), np.linspace(-2, 2, 20)], index=["docetaxel", "other"], columns=genes
    )
    res = mm.tl.gene_set_enrichment(frame, gmt, n_top=4)
    assert set(res["compound"]) == {"docetaxel", "other"}
    assert "EMPTY" not in set(res["gene_set"])  # no background gene
    top = res.groupby(["compound", "direction"]).first()["gene_set"]
    assert top[("docetaxel", "up")] == "CELL_GROWTH" and top[("docetaxel", "down")] == "APOPTOSIS"
    assert top[("other", "up")] == "APOPTOSIS" and top[("other", "down")] == "CELL_GROWTH"
    best = res[(res["compound"] == "docetaxel") & (res["direction"] == "up")].iloc[0]
    assert best["pvalue"] == pytest.approx(stats.hypergeom.sf(3, 20, 4, 4))
    bad = tmp_path / "bad.gmt"
    bad.write_text("ONLY_NAME\n")
    with pytest.raises(ContractError, match="bad.gmt:1 is not a GMT line"):
        mm.tl.gene_set_enrichment(frame, bad)
    with pytest.raises(ContractError, match="is not a file"):
        mm.tl.gene_set_enrichment(frame, tmp_path / "missing.gmt")
    with pytest.raises(ContractError, match="direction"):
        mm.tl.gene_set_enrichment(frame, gmt, direction="sideways")
    with pytest.raises(ContractError, match="background lacks"):
        mm.tl.gene_set_enrichment(frame, gmt, background=genes[:5])
