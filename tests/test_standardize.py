import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import morphomu as mm
from morphomu import ContractError, MorphomuWarning
from morphomu._core import Standardizer


@pytest.fixture
def tiny():
    rng = np.random.default_rng(0)
    n = 60
    a = ad.AnnData(sparse.random(n, 5, density=0.5, random_state=0, format="csr", dtype=np.float32))
    a.obs_names = [f"img-{i}" for i in range(n)]
    a.obs["split"] = pd.Categorical(np.repeat(["train", "val", "test_we"], n // 3))
    # train cells centred at 10, the rest at -10: statistics from all cells would be wrong
    shift = np.where(a.obs["split"] == "train", 10.0, -10.0)[:, None]
    a.obsm["X_vit"] = (rng.normal(size=(n, 8)) * 3 + shift).astype(np.float32)
    return md.MuData({"img": a})


def test_fit_on_train_only(tiny):
    mm.pp.standardize(tiny, mod="img", rep="X_vit")
    z = tiny["img"].obsm["X_vit_std"]
    train = (tiny["img"].obs["split"] == "train").to_numpy()
    np.testing.assert_allclose(z[train].mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(z[train].std(0), 1, atol=1e-4)
    assert z[~train].mean() < -3  # other splits are mapped with train statistics, not their own
    raw = tiny["img"].obsm["X_vit"]
    stats = tiny.uns["morphomu"]["X_vit_std"]
    np.testing.assert_allclose(stats["mean"], raw[train].mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats["std"], raw[train].std(0), rtol=1e-4)
    assert stats["n_fit"] == train.sum()


def test_source_never_overwritten_and_roundtrip(tiny, tmp_path):
    raw = tiny["img"].obsm["X_vit"].copy()
    mm.pp.standardize(tiny, mod="img", rep="X_vit", key_added="z")
    np.testing.assert_array_equal(tiny["img"].obsm["X_vit"], raw)
    back = mm.pp.destandardize(tiny, tiny["img"].obsm["z"], key="z")
    np.testing.assert_allclose(back, raw, rtol=1e-5, atol=1e-4)
    with pytest.raises(ContractError, match="would overwrite the source"):
        mm.pp.standardize(tiny, mod="img", rep="X_vit", key_added="X_vit")
    tiny.write(tmp_path / "s.h5mu")
    again = md.read_h5mu(tmp_path / "s.h5mu")
    np.testing.assert_allclose(
        mm.pp.destandardize(again, again["img"].obsm["z"], key="z"), raw, rtol=1e-5, atol=1e-4
    )


def test_sparse_x_and_anndata_input(tiny):
    adata = tiny["img"].copy()
    mm.pp.standardize(adata, mod=None, rep=None, fit_on=None)
    dense = adata.X.toarray()
    np.testing.assert_allclose(
        adata.obsm["X_std"], (dense - dense.mean(0)) / dense.std(0), rtol=1e-4, atol=1e-5
    )


def test_constant_feature_warns_and_is_centred(tiny):
    tiny["img"].obsm["X_vit"][:, 0] = 7.0
    with pytest.warns(MorphomuWarning, match="1 features are constant"):
        mm.pp.standardize(tiny, mod="img", rep="X_vit")
    np.testing.assert_allclose(tiny["img"].obsm["X_vit_std"][:, 0], 0.0)


def test_copy(tiny):
    out = mm.pp.standardize(tiny, mod="img", rep="X_vit", copy=True)
    assert "X_vit_std" not in tiny["img"].obsm
    assert "X_vit_std" in out["img"].obsm


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mod": "img", "rep": "X_pca"}, r"rep='X_pca' is not in mdata.mod\['img'\].obsm"),
        ({"mod": "rna", "rep": "X_vit"}, "mod='rna' is not a modality"),
        ({"mod": None, "rep": "X_vit"}, "mod must name a modality"),
        ({"mod": "img", "rep": "X_vit", "fit_on": "training"}, "fit_on='training': no cells"),
        ({"mod": "img", "rep": "X_vit", "split_key": "fold"}, "split_key='fold' is not a column"),
    ],
)
def test_bad_input(tiny, kwargs, match):
    with pytest.raises(ContractError, match=match):
        mm.pp.standardize(tiny, **kwargs)
    assert set(tiny["img"].obsm) == {"X_vit"}
    assert "morphomu" not in tiny.uns


def test_nan_features_are_refused(tiny):
    tiny["img"].obsm["X_vit"][3, 2] = np.nan
    with pytest.raises(ContractError, match=r"mdata.mod\['img'\].obsm\['X_vit'\] \(rep\) has 1 non-finite"):
        mm.pp.standardize(tiny, mod="img", rep="X_vit")


def test_standardizer_matches_sklearn():
    from sklearn.preprocessing import StandardScaler

    x = np.random.default_rng(1).normal(size=(100, 7)) * 5 + 2
    scaler = Standardizer.fit(x)
    np.testing.assert_allclose(scaler.transform(x), StandardScaler().fit_transform(x), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(scaler.inverse_transform(scaler.transform(x)), x, rtol=1e-5, atol=1e-4)
