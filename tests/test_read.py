"""mm.datasets.read_scgenescope on files written here in the release's schema."""

from __future__ import annotations

import re
import tracemalloc
import warnings
from pathlib import Path

import anndata as ad
import h5py
import mudata
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import morphomu as mm
from morphomu import _constants as C
from morphomu._errors import ContractError, MorphomuWarning

#: A few of the release's treatment strings (slashes, brackets and spaces included) and the control.
TREATMENTS = ("Thapsigargin", "Vorinostat / SAHA", "(R)-MG132", "LY303511 (hydrochloride)")
RELEASE_COLS = ["Sample_ID", "Treatment", "Replicate", "Group", "batch", "Seen"]


def _release_obs(round_: int, n_per_unit: int, *, control: str, group_control: str, rng) -> pd.DataFrame:
    rows = []
    for replicate in C.SCGENESCOPE_REPLICATES[round_]:
        for treatment in (*TREATMENTS, control):
            is_control = treatment == control
            for _ in range(n_per_unit):
                rows.append(
                    {
                        "Sample_ID": f"R{round_}_Rep{replicate}_{treatment}",
                        "Treatment": treatment,
                        "Replicate": str(replicate),  # the release stores replicates as strings
                        "Group": group_control if is_control else "Treatment",
                        "batch": f"B{round_}{replicate}",
                        "Seen": bool(rng.random() < 0.8),
                    }
                )
    obs = pd.DataFrame(rows).sample(frac=1.0, random_state=int(rng.integers(1 << 30)))  # not sorted by unit
    obs.index = [f"cell{i}" for i in range(len(obs))]  # the same names in every round and modality
    for col in ("Sample_ID", "Treatment", "Replicate", "Group", "batch"):
        obs[col] = obs[col].astype("category")
    return obs


def write_release(
    root: Path,
    *,
    rounds=(1, 2),
    n_per_unit: int = 2,
    img_dim: int = C.IMAGE_DIM,
    rna_dim: int = C.SCGPT_DIM,
    n_genes: int = 9,
    control: str = "DMSO",
    group_control: str = "DMSO",
    imaging: str = "imagenet/vit-l",
    rnaseq: str = "scgpt",
    seed: int = 0,
) -> dict[tuple[str, int], ad.AnnData]:
    """Write round_{r}.h5ad of both modalities in the release schema; return what was written."""
    rng = np.random.default_rng(seed)
    written = {}
    genes = [f"GENE{i}" for i in range(n_genes)]
    for round_ in rounds:
        obs = _release_obs(round_, n_per_unit, control=control, group_control=group_control, rng=rng)
        img = ad.AnnData(
            X=rng.normal(size=(len(obs), img_dim)).astype(np.float32),
            obs=obs,
            var=pd.DataFrame(index=[f"f{j}" for j in range(img_dim)]),
        )
        path = root / "features" / "imaging" / imaging / f"round_{round_}.h5ad"
        path.parent.mkdir(parents=True, exist_ok=True)
        img.write_h5ad(path)
        written["img", round_] = img

        obs = _release_obs(round_, n_per_unit + 1, control=control, group_control=group_control, rng=rng)
        counts = sparse.random(
            len(obs), n_genes, density=0.4, format="csr", dtype=np.float32, random_state=rng
        )
        counts.data = np.ceil(counts.data * 10)
        rna = ad.AnnData(X=counts, obs=obs, var=pd.DataFrame(index=genes))
        rna.obsm["scGPT"] = rng.normal(size=(len(obs), rna_dim)).astype(np.float32)
        path = root / "features" / "rnaseq" / rnaseq / f"round_{round_}.h5ad"
        path.parent.mkdir(parents=True, exist_ok=True)
        rna.write_h5ad(path)
        written["rna", round_] = rna
    return written


def _read_quietly(root, **kwargs):
    """Read, failing on any MorphomuWarning (a clean release must not warn)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", MorphomuWarning)
        return mm.datasets.read_scgenescope(root, **kwargs)


def _dense(x):
    if isinstance(x, h5py.Dataset):
        x = x[()]
    elif not isinstance(x, np.ndarray) and not sparse.issparse(x):  # anndata's backed sparse dataset
        x = x[:]
    return x.toarray() if sparse.issparse(x) else np.asarray(x)


def _rewrite(path: Path, edit) -> None:
    """Apply ``edit`` to a release file in place."""
    adata = ad.read_h5ad(path)
    edit(adata)
    adata.write_h5ad(path)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("scgenescope")
    return root, write_release(root)


@pytest.fixture(scope="module")
def loaded(release):
    root, _ = release
    return _read_quietly(root)


# --- in memory --------------------------------------------------------------------------------------------


def test_modalities_and_feature_placement(loaded, release):
    _, written = release
    assert list(loaded.mod) == [C.IMAGE_MOD, C.RNA_MOD]
    img, rna = loaded[C.IMAGE_MOD], loaded[C.RNA_MOD]
    assert img.n_obs == written["img", 1].n_obs + written["img", 2].n_obs
    assert rna.n_obs == written["rna", 1].n_obs + written["rna", 2].n_obs
    # imaging features exist once: in obsm, not also in .X
    assert img.X is None
    assert img.obsm[C.IMAGE_REP].shape == (img.n_obs, C.IMAGE_DIM)
    assert img.obsm[C.IMAGE_REP].dtype == np.float32
    assert list(img.var_names[:2]) == ["f0", "f1"]
    # scGPT renamed to the contract key, not duplicated; counts stay in .X
    assert list(rna.obsm.keys()) == [C.RNA_REP]
    assert rna.obsm[C.RNA_REP].shape == (rna.n_obs, C.SCGPT_DIM)
    assert sparse.issparse(rna.X)
    assert rna.shape[1] == 9


def test_values_land_on_their_cells_by_name(loaded, release):
    _, written = release
    for (mod, round_), source in written.items():
        names = [f"{mod}-r{round_}-{n}" for n in source.obs_names]
        got = loaded[mod][names]
        if mod == "img":
            np.testing.assert_array_equal(got.obsm[C.IMAGE_REP], source.X)
        else:
            np.testing.assert_array_equal(got.obsm[C.RNA_REP], source.obsm["scGPT"])
            np.testing.assert_array_equal(got.X.toarray(), source.X.toarray())
        # the release's own columns are kept, unchanged
        for col in RELEASE_COLS:
            assert got.obs[col].astype(str).tolist() == source.obs[col].astype(str).tolist(), col


def test_canonical_obs_columns(loaded, release):
    _, written = release
    table = mm.datasets.compounds()
    for mod in (C.IMAGE_MOD, C.RNA_MOD):
        obs = loaded[mod].obs
        for col in (C.SAMPLE_KEY, C.TREATMENT_KEY, C.REPLICATE_KEY, C.ROUND_KEY, C.SMILES_KEY):
            assert isinstance(obs[col].dtype, pd.CategoricalDtype), col
        assert list(obs[C.REPLICATE_KEY].cat.categories) == [1, 2, 3, 4, 5]
        assert list(obs[C.ROUND_KEY].cat.categories) == [1, 2]
        assert set(obs[C.TREATMENT_KEY]) == {*TREATMENTS, C.CONTROL}
        for round_ in (1, 2):
            source = written[mod, round_].obs
            got = obs.loc[[f"{mod}-r{round_}-{n}" for n in source.index]]
            assert (got[C.ROUND_KEY].astype(int) == round_).all()
            np.testing.assert_array_equal(got[C.REPLICATE_KEY].astype(int), source["Replicate"].astype(int))
            np.testing.assert_array_equal(got[C.SAMPLE_KEY].astype(str), source["Sample_ID"].astype(str))
            np.testing.assert_array_equal(got[C.TREATMENT_KEY].astype(str), source["Treatment"].astype(str))
        # SMILES from the compound table where it knows the treatment, missing otherwise
        for treatment, smiles in obs.groupby(C.TREATMENT_KEY, observed=True)[C.SMILES_KEY].first().items():
            known = treatment in table.index and isinstance(table.loc[treatment, "smiles"], str)
            if known and table.loc[treatment, "smiles"]:
                assert smiles == table.loc[treatment, "smiles"]
            else:
                assert pd.isna(smiles)


def test_obs_names_prefixed_and_unique(loaded):
    # every file names its cells cell0, cell1, ...: the prefix keeps rounds and modalities apart
    all_names = [*loaded[C.IMAGE_MOD].obs_names, *loaded[C.RNA_MOD].obs_names]
    assert len(set(all_names)) == len(all_names) == loaded.n_obs
    assert "img-r1-cell0" in loaded[C.IMAGE_MOD].obs_names
    assert "rna-r2-cell0" in loaded[C.RNA_MOD].obs_names
    mm.pp.validate(loaded)


def test_assign_split_per_replicate(loaded):
    mdata = loaded.copy()
    mm.pp.assign_split(mdata)
    expected = {(1, 3): C.TRAIN, (1, 5): C.VAL, (1, 4): C.TEST_WE, (2, 1): C.TEST_HE, (2, 2): C.TEST_HE}
    for mod in (C.IMAGE_MOD, C.RNA_MOD):
        obs = mdata[mod].obs
        pairs = obs.groupby([C.ROUND_KEY, C.REPLICATE_KEY], observed=True)[C.SPLIT_KEY].unique()
        assert {k: list(v) for k, v in pairs.items()} == {k: [v] for k, v in expected.items()}
    mm.pp.validate(mdata)


def test_h5mu_round_trip(loaded, tmp_path):
    path = tmp_path / "scgenescope.h5mu"
    loaded.write_h5mu(path)
    back = mudata.read_h5mu(path)
    for mod in (C.IMAGE_MOD, C.RNA_MOD):
        pd.testing.assert_frame_equal(back[mod].obs, loaded[mod].obs)
    np.testing.assert_array_equal(back[C.IMAGE_MOD].obsm[C.IMAGE_REP], loaded[C.IMAGE_MOD].obsm[C.IMAGE_REP])
    np.testing.assert_array_equal(back[C.RNA_MOD].obsm[C.RNA_REP], loaded[C.RNA_MOD].obsm[C.RNA_REP])
    assert back[C.IMAGE_MOD].X is None
    entry = back.uns[C.UNS_KEY]["read_scgenescope"]
    assert list(entry["params"]["rounds"]) == [1, 2]
    assert entry["features"]["img"]["key"] == C.IMAGE_REP
    assert int(entry["features"]["img"]["n_features"]) == C.IMAGE_DIM
    mm.pp.validate(back)


def test_one_round_one_modality(release):
    root, written = release
    mdata = _read_quietly(root, rnaseq=None, rounds=(2,))
    assert list(mdata.mod) == [C.IMAGE_MOD]
    assert mdata[C.IMAGE_MOD].n_obs == written["img", 2].n_obs
    assert set(mdata[C.IMAGE_MOD].obs[C.REPLICATE_KEY].astype(int)) == {1, 2}


@pytest.mark.parametrize(
    ("control", "group_control"),
    [
        ("DMSO", "DMSO"),
        ("dmso", "DMSO"),
        ("CONTROL", "Control"),
        (" DMSO ", "treatment-free"),
        ("Vehicle", "dmso"),
    ],
)
def test_control_spellings(tmp_path, control, group_control):
    write_release(
        tmp_path,
        rounds=(1,),
        n_per_unit=1,
        img_dim=4,
        rna_dim=3,
        control=control,
        group_control=group_control,
    )
    mdata = _read_quietly(tmp_path, rounds=(1,))
    for mod in (C.IMAGE_MOD, C.RNA_MOD):
        obs = mdata[mod].obs
        assert set(obs[C.TREATMENT_KEY]) == {*TREATMENTS, C.CONTROL}
        is_control = obs["Treatment"].astype(str) == control
        assert (obs.loc[is_control, C.TREATMENT_KEY] == C.CONTROL).all()
        assert obs.loc[is_control, "Treatment"].astype(str).eq(control).all()  # original unchanged


def test_group_marks_the_control(tmp_path):
    # the treatment string is not a known control spelling; Group says it is DMSO
    write_release(
        tmp_path, rounds=(1,), n_per_unit=1, img_dim=4, rna_dim=3, control="untreated", group_control="DMSO"
    )
    mdata = _read_quietly(tmp_path, rounds=(1,))
    obs = mdata[C.IMAGE_MOD].obs
    assert (obs.loc[obs["Treatment"] == "untreated", C.TREATMENT_KEY] == C.CONTROL).all()


def test_unknown_treatment_warns_and_has_no_smiles(tmp_path):
    write_release(tmp_path, rounds=(1,), n_per_unit=1, img_dim=4, rna_dim=3)
    path = tmp_path / "features/imaging/imagenet/vit-l/round_1.h5ad"
    adata = ad.read_h5ad(path)
    obs = adata.obs.copy()
    obs["Treatment"] = obs["Treatment"].astype(str)
    first = obs["Treatment"] == TREATMENTS[0]
    obs.loc[first, "Treatment"] = "Mystery-42"
    obs["Sample_ID"] = obs["Sample_ID"].astype(str).str.replace(TREATMENTS[0], "Mystery-42")
    adata.obs = obs
    adata.write_h5ad(path)
    with pytest.warns(MorphomuWarning, match="Mystery-42"):
        mdata = mm.datasets.read_scgenescope(tmp_path, rounds=(1,), rnaseq=None)
    img = mdata[C.IMAGE_MOD]
    mystery = img.obs[C.TREATMENT_KEY] == "Mystery-42"
    assert mystery.sum() == first.sum()
    assert img.obs.loc[mystery, C.SMILES_KEY].isna().all()
    # a missing SMILES is a missing categorical value, and it survives .h5mu
    mdata.write_h5mu(tmp_path / "m.h5mu")
    back = mudata.read_h5mu(tmp_path / "m.h5mu")
    assert back[C.IMAGE_MOD].obs.loc[mystery.to_numpy(), C.SMILES_KEY].isna().all()


def test_release_without_group_column(tmp_path):
    write_release(tmp_path, rounds=(1,), n_per_unit=1, img_dim=4, rna_dim=3)
    path = tmp_path / "features/rnaseq/scgpt/round_1.h5ad"
    _rewrite(path, lambda adata: adata.obs.drop(columns="Group", inplace=True))
    mdata = _read_quietly(tmp_path, rounds=(1,))
    assert "Group" not in mdata[C.RNA_MOD].obs
    assert set(mdata[C.RNA_MOD].obs[C.TREATMENT_KEY]) == {*TREATMENTS, C.CONTROL}


@pytest.mark.parametrize("backed", [False, "r"])
def test_sparse_imaging_features(tmp_path, backed):
    written = write_release(tmp_path, n_per_unit=1, img_dim=6, rna_dim=3)
    for round_ in (1, 2):
        path = tmp_path / f"features/imaging/imagenet/vit-l/round_{round_}.h5ad"
        _rewrite(path, lambda adata: setattr(adata, "X", sparse.csr_matrix(adata.X)))
    mdata = _read_quietly(tmp_path, backed=backed)
    img = mdata[C.IMAGE_MOD]
    for round_ in (1, 2):
        source = written["img", round_]
        got = img[[f"img-r{round_}-{n}" for n in source.obs_names]]
        values = got.obsm[C.IMAGE_REP] if backed is False else _dense(got.X)
        np.testing.assert_array_equal(values, source.X)


# --- backed ---------------------------------------------------------------------------------------------------


def _backed_peak(root, **kwargs) -> int:
    tracemalloc.start()
    try:
        mdata = mm.datasets.read_scgenescope(root, backed="r", **kwargs)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    mdata.file.close()
    return peak


def test_backed_does_not_load_the_matrix(tmp_path):
    # 2,250 cells x 4,096 float32 imaging features: 37 MB, of which round 1 holds 60 %
    written = write_release(tmp_path, n_per_unit=90, img_dim=4096, rna_dim=4, seed=1)
    matrix_bytes = sum(written["img", r].X.nbytes for r in (1, 2))
    del written
    mm.datasets.read_scgenescope(tmp_path, backed="r", rnaseq=None, rounds=(2,)).file.close()  # warm imports
    peak = _backed_peak(tmp_path, rnaseq=None)
    # only obs and var are read (about 0.7 kB per cell and 0.4 kB per feature name, in a few copies)
    assert peak < 0.1 * matrix_bytes, (peak, matrix_bytes)


def test_backed_matrices_and_annotations(tmp_path):
    written = write_release(tmp_path, n_per_unit=20, img_dim=256, rna_dim=64, seed=1)
    n_img = written["img", 1].n_obs + written["img", 2].n_obs
    del written
    mdata = _read_quietly(tmp_path, backed="r")
    img, rna = mdata[C.IMAGE_MOD], mdata[C.RNA_MOD]
    assert mdata.isbacked and img.isbacked and rna.isbacked
    assert isinstance(img.X, h5py.Dataset)  # on disk, read when sliced
    assert img.X.shape == (n_img, 256)
    assert C.IMAGE_REP not in img.obsm
    assert rna.obsm[C.RNA_REP].shape == (rna.n_obs, 64)
    assert Path(mdata.filename).parent == tmp_path / "morphomu"

    # the same cells get the same rows as in memory, by name
    memory = mm.datasets.read_scgenescope(tmp_path)
    rows = np.sort(np.random.default_rng(0).choice(n_img, size=50, replace=False))
    names = img.obs_names[rows]
    np.testing.assert_array_equal(img.X[rows], memory[C.IMAGE_MOD][names].obsm[C.IMAGE_REP])
    np.testing.assert_array_equal(rna.obsm[C.RNA_REP], memory[C.RNA_MOD].obsm[C.RNA_REP])
    np.testing.assert_array_equal(_dense(rna.X), memory[C.RNA_MOD].X.toarray())
    for mod in (C.IMAGE_MOD, C.RNA_MOD):
        pd.testing.assert_frame_equal(mdata[mod].obs, memory[mod].obs)

    mm.pp.validate(mdata, mods={C.IMAGE_MOD: None, C.RNA_MOD: C.RNA_REP})
    mm.pp.assign_split(mdata)
    assert set(mdata[C.IMAGE_MOD].obs[C.SPLIT_KEY]) == set(C.SPLITS)


def test_in_memory_holds_one_copy(tmp_path):
    written = write_release(tmp_path, n_per_unit=60, img_dim=2048, rna_dim=8, seed=2)
    matrix_bytes = (written["img", 1].n_obs + written["img", 2].n_obs) * 2048 * 4
    del written
    tracemalloc.start()
    try:
        mdata = mm.datasets.read_scgenescope(tmp_path, rnaseq=None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert mdata[C.IMAGE_MOD].obsm[C.IMAGE_REP].nbytes == matrix_bytes
    assert peak < 1.15 * matrix_bytes, (peak, matrix_bytes)  # read in place: no concatenation copy


def test_backed_index_path_and_moved_release(tmp_path):
    root = tmp_path / "release"
    write_release(root, rounds=(1,), n_per_unit=1, img_dim=6, rna_dim=3)
    index = tmp_path / "elsewhere" / "index.h5mu"
    mdata = mm.datasets.read_scgenescope(root, rounds=(1,), backed="r", index_path=index)
    assert Path(mdata.filename) == index.resolve()
    assert mdata.uns[C.UNS_KEY]["read_scgenescope"]["index_path"] == str(index.resolve())
    assert np.isfinite(mdata[C.IMAGE_MOD].X[:]).all()
    mdata.file.close()
    # the index refers to the release by path: a moved release reads as NaN, which validate reports
    root.rename(tmp_path / "moved")
    stale = mudata.read_h5mu(index, backed="r")
    with pytest.raises(ContractError, match="non-finite"):
        mm.pp.validate(stale, mods={C.IMAGE_MOD: None}, obs_keys=())


def test_backed_refuses_read_write(release):
    root, _ = release
    with pytest.raises(ContractError, match="r\\+"):
        mm.datasets.read_scgenescope(root, backed="r+")


# --- errors ------------------------------------------------------------------------------------------------------


@pytest.fixture
def small_release(tmp_path):
    write_release(tmp_path, n_per_unit=1, img_dim=6, rna_dim=4)
    return tmp_path


def test_missing_file_names_the_path(small_release):
    path = small_release / "features/rnaseq/scgpt/round_2.h5ad"
    path.unlink()
    with pytest.raises(ContractError, match=re.escape(str(path))):
        mm.datasets.read_scgenescope(small_release)


def test_absent_round(small_release):
    with pytest.raises(ContractError, match="round_3.h5ad"):
        mm.datasets.read_scgenescope(small_release, rounds=(1, 3))


def test_absent_embedding(small_release):
    with pytest.raises(ContractError, match="imaging/imagenet/vit-h/round_1.h5ad"):
        mm.datasets.read_scgenescope(small_release, imaging="imagenet/vit-h")


@pytest.mark.parametrize("column", ["Treatment", "Sample_ID", "Replicate"])
def test_missing_column_names_column_and_file(small_release, column):
    path = small_release / "features/imaging/imagenet/vit-l/round_1.h5ad"

    def drop(adata):
        del adata.obs[column]

    _rewrite(path, drop)
    with pytest.raises(ContractError, match=rf"round_1\.h5ad: obs has no column '{column}'"):
        mm.datasets.read_scgenescope(small_release)


def test_missing_values(small_release):
    path = small_release / "features/rnaseq/scgpt/round_2.h5ad"

    def blank(adata):
        treatment = adata.obs["Treatment"].astype(object)
        treatment.iloc[0] = np.nan
        adata.obs["Treatment"] = treatment

    _rewrite(path, blank)
    with pytest.raises(ContractError, match=r"round_2\.h5ad: obs\['Treatment'\] has 1 missing"):
        mm.datasets.read_scgenescope(small_release)


def test_bad_replicate(small_release):
    path = small_release / "features/imaging/imagenet/vit-l/round_1.h5ad"

    def garble(adata):
        adata.obs["Replicate"] = adata.obs["Replicate"].astype(str).replace("3", "three")

    _rewrite(path, garble)
    with pytest.raises(ContractError, match="three"):
        mm.datasets.read_scgenescope(small_release)


def test_feature_dimensions_must_agree(small_release):
    path = small_release / "features/imaging/imagenet/vit-l/round_2.h5ad"
    adata = ad.read_h5ad(path)
    ad.AnnData(X=np.zeros((adata.n_obs, 7), np.float32), obs=adata.obs).write_h5ad(path)
    with pytest.raises(ContractError, match="6 features in .*round_1.h5ad but 7 in .*round_2.h5ad"):
        mm.datasets.read_scgenescope(small_release)


def test_rna_embedding_dimensions_must_agree(small_release):
    path = small_release / "features/rnaseq/scgpt/round_1.h5ad"

    def widen(adata):
        adata.obsm["scGPT"] = np.zeros((adata.n_obs, 5), np.float32)

    _rewrite(path, widen)
    with pytest.raises(ContractError, match=r"obsm\['scGPT'\] has 5 features"):
        mm.datasets.read_scgenescope(small_release)


def test_missing_rna_embedding(small_release):
    path = small_release / "features/rnaseq/scgpt/round_1.h5ad"

    def drop(adata):
        del adata.obsm["scGPT"]

    _rewrite(path, drop)
    with pytest.raises(ContractError, match=r"round_1\.h5ad has no \.obsm\['scGPT'\]"):
        mm.datasets.read_scgenescope(small_release)


def test_var_names_must_agree(small_release):
    path = small_release / "features/rnaseq/scgpt/round_2.h5ad"

    def rename(adata):
        adata.var_names = [f"OTHER{i}" for i in range(adata.n_vars)]

    _rewrite(path, rename)
    with pytest.raises(ContractError, match="var_names differ"):
        mm.datasets.read_scgenescope(small_release)


def test_group_conflict(small_release):
    path = small_release / "features/imaging/imagenet/vit-l/round_1.h5ad"

    def mislabel(adata):
        group = adata.obs["Group"].astype(str)
        group[adata.obs["Treatment"] == TREATMENTS[1]] = "DMSO"
        adata.obs["Group"] = group

    _rewrite(path, mislabel)
    with pytest.raises(ContractError, match="Group.*marks .* control"):
        mm.datasets.read_scgenescope(small_release)


def test_sample_spanning_replicates(small_release):
    path = small_release / "features/rnaseq/scgpt/round_1.h5ad"

    def merge(adata):
        adata.obs["Sample_ID"] = adata.obs["Sample_ID"].astype(str).str.replace(r"_Rep\d", "", regex=True)

    _rewrite(path, merge)
    with pytest.raises(ContractError, match="several \\(treatment, round, replicate\\)"):
        mm.datasets.read_scgenescope(small_release)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"imaging": None, "rnaseq": None}, "both None"),
        ({"rounds": ()}, "non-empty"),
        ({"rounds": (1, 1)}, "repeats"),
        ({"rounds": ("1",)}, "positive round numbers"),
        ({"backed": "w"}, "backed="),
    ],
)
def test_bad_arguments(small_release, kwargs, match):
    with pytest.raises(ContractError, match=match):
        mm.datasets.read_scgenescope(small_release, **kwargs)


def test_root_must_exist(tmp_path):
    with pytest.raises(ContractError, match="not a directory"):
        mm.datasets.read_scgenescope(tmp_path / "nowhere")
