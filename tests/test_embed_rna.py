"""embed_rna on celltypist's real counts: PCA equals a scikit-learn reference, scVI learns structure,
scGPT equals ``scgpt.tasks.embed_data`` on a tiny model directory written in the real format."""

from __future__ import annotations

import importlib.util
import json
import os
import warnings
from pathlib import Path

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import torch
from scipy import sparse
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors

import morphomu as mm
from morphomu import ContractError, MorphomuError, MorphomuWarning
from morphomu._validation import check_uns_writable
from morphomu.pp._scgpt_compat import import_scgpt

CELLTYPIST = Path(importlib.util.find_spec("celltypist").submodule_search_locations[0])
SCGPT = Path(importlib.util.find_spec("scgpt").submodule_search_locations[0])
TINY_ARGS = {
    "embsize": 16,
    "nheads": 2,
    "d_hid": 32,
    "nlayers": 2,
    "n_layers_cls": 1,
    "dropout": 0.0,
    "pad_token": "<pad>",
    "pad_value": -2,
}


@pytest.fixture(scope="module")
def counts() -> ad.AnnData:
    """celltypist's 559 real cells (integer UMI counts), restricted to the 1,500 most-counted genes."""
    table = pd.read_csv(CELLTYPIST / "data/samples/sample_cell_by_gene.csv", index_col=0)
    values = table.to_numpy(np.float32)
    top = np.sort(np.argsort(-values.sum(0), kind="stable")[:1500])
    adata = ad.AnnData(
        sparse.csr_matrix(values[:, top]),
        obs=pd.DataFrame(index=table.index.astype(str)),
        var=pd.DataFrame(index=table.columns[top].astype(str)),
    )
    adata.obs_names_make_unique()
    return adata[np.asarray(adata.X.sum(1)).ravel() > 0].copy()


def knn(x: np.ndarray, k: int = 15) -> np.ndarray:
    return NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x, return_distance=False)[:, 1:]


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([len(set(x) & set(y)) / a.shape[1] for x, y in zip(a, b, strict=True)]))


def test_pca_equals_a_scikit_learn_reference(counts):
    adata = counts.copy()
    mm.pp.embed_rna(adata, method="pca", n_comps=20, n_top_genes=None, scale=False, progress=False)
    got = adata.obsm["X_pca"]
    assert got.shape == (adata.n_obs, 20)
    x = adata.X.toarray().astype(np.float64)
    x = np.log1p(x / x.sum(1, keepdims=True) * 1e4)
    expected = PCA(n_components=20, svd_solver="full").fit_transform(x)
    for j in range(20):  # components agree up to sign (the last ones are close to degenerate: looser)
        r = abs(np.corrcoef(got[:, j], expected[:, j])[0, 1])
        assert r > (0.999 if j < 10 else 0.95)
    entry = adata.uns["morphomu"]["X_pca"]
    assert entry["tool"] == "embed_rna"
    assert entry["method"] == "pca"
    assert np.all(np.diff(entry["variance_ratio"]) <= 1e-9)
    assert "X_pca" not in counts.obsm  # the fixture is untouched
    # default pipeline: HVGs + scaling, 50 components, on a MuData
    mdata = md.MuData({"rna": counts.copy()})
    mm.pp.embed_rna(mdata, method="pca", progress=False)
    assert mdata["rna"].obsm["X_pca"].shape == (counts.n_obs, 50)
    check_uns_writable(mdata.uns)


def _scanpy_reference(counts: ad.AnnData, *, n_comps: int, n_top_genes: int | None) -> ad.AnnData:
    """scanpy's own steps on the same counts: all genes kept and scaled, PCA on the highly variable ones."""
    ref = counts.copy()
    sc.pp.normalize_total(ref, target_sum=1e4)
    sc.pp.log1p(ref)
    mask = None
    if n_top_genes is not None:
        hvg = sc.pp.highly_variable_genes(ref, n_top_genes=n_top_genes, flavor="seurat", inplace=False)
        mask = hvg["highly_variable"].to_numpy()
    ref.X = ref.X.toarray()
    sc.pp.scale(ref, max_value=10)
    sc.pp.pca(ref, n_comps=n_comps, mask_var=mask, random_state=0)
    return ref


def _same_up_to_sign(a: np.ndarray, b: np.ndarray) -> None:
    signs = np.sign((a * b).sum(0))
    assert np.all(signs != 0)
    np.testing.assert_allclose(a * signs, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("n_top_genes", [300, None])
def test_pca_leaves_scanpys_records(counts, n_top_genes):
    """uns['pca'] and varm['PCs'] are what sc.pp.pca leaves on the same preprocessed genes."""
    adata = counts.copy()
    mm.pp.embed_rna(adata, method="pca", n_comps=15, n_top_genes=n_top_genes, progress=False)
    ref = _scanpy_reference(counts, n_comps=15, n_top_genes=n_top_genes)
    got, expected = adata.uns["pca"], ref.uns["pca"]
    np.testing.assert_allclose(got["variance"], expected["variance"], rtol=1e-4)
    np.testing.assert_allclose(got["variance_ratio"], expected["variance_ratio"], rtol=1e-4)
    np.testing.assert_allclose(got["variance_ratio"], adata.uns["morphomu"]["X_pca"]["variance_ratio"])
    assert adata.varm["PCs"].shape == (adata.n_vars, 15)
    _same_up_to_sign(adata.varm["PCs"], ref.varm["PCs"])
    _same_up_to_sign(adata.obsm["X_pca"], ref.obsm["X_pca"])
    params = got["params"]
    assert params["zero_center"] is True
    assert params["use_highly_variable"] is False
    if n_top_genes is None:
        assert params["mask_var"] is None
    else:  # the genes used; the loadings of the others are 0, as scanpy writes them
        np.testing.assert_array_equal(params["mask_var"], expected["params"]["mask_var"])
        assert params["mask_var"].sum() == n_top_genes
        assert not adata.varm["PCs"][~params["mask_var"]].any()
    assert "highly_variable" not in adata.var  # the gene selection stays in the record only


def test_pca_records_follow_key_added_and_the_modality(counts, tmp_path):
    mdata = md.MuData({"rna": counts.copy()})
    mm.pp.embed_rna(mdata, method="pca", n_comps=5, key_added="X_pca5", progress=False)
    rna = mdata["rna"]
    assert "X_pca5" in rna.varm
    assert set(rna.uns["X_pca5"]) == {"params", "variance", "variance_ratio"}
    assert "pca" not in rna.uns
    assert "PCs" not in rna.varm
    assert mdata.uns["morphomu"]["X_pca5"]["tool"] == "embed_rna"
    path = tmp_path / "pca.h5mu"
    mdata.write(path)
    back = md.read_h5mu(path)
    np.testing.assert_allclose(back["rna"].varm["X_pca5"], rna.varm["X_pca5"])
    np.testing.assert_array_equal(
        back["rna"].uns["X_pca5"]["params"]["mask_var"], rna.uns["X_pca5"]["params"]["mask_var"]
    )


def test_scvi_latent_has_structure(counts):
    adata = counts.copy()
    obs_before, uns_before = adata.obs.copy(), dict(adata.uns)
    mm.pp.embed_rna(adata, method="scvi", max_epochs=10, n_latent=8, progress=False)
    latent = adata.obsm["X_scvi"]
    assert latent.shape == (adata.n_obs, 8)
    assert np.isfinite(latent).all()
    pd.testing.assert_frame_equal(adata.obs, obs_before)  # scvi registered its fields elsewhere
    assert set(adata.uns) == {*uns_before, "morphomu"}
    entry = adata.uns["morphomu"]["X_scvi"]
    assert entry["n_epochs"] == 10
    assert entry["n_latent"] == 8
    # neighbours in scVI's latent agree with neighbours in log-normalised expression far beyond chance
    x = adata.X.toarray()
    reference = PCA(n_components=20, random_state=0).fit_transform(
        np.log1p(x / x.sum(1, keepdims=True) * 1e4)
    )
    chance = 15 / (adata.n_obs - 1)
    agreement = overlap(knn(latent), knn(reference))
    print(f"scVI kNN agreement with expression {agreement:.3f} (chance {chance:.3f})")
    assert agreement > 4 * chance


def write_tiny_scgpt(directory: Path, genes: list[str], seed: int = 0) -> Path:
    """A scGPT model directory in the real format: vocab.json, args.json, best_model.pt (tiny sizes)."""
    scgpt = import_scgpt()
    from scgpt.model import TransformerModel

    default = json.loads((SCGPT / "tokenizer/default_gene_vocab.json").read_text())
    known = [g for g in genes if g in default]
    token2idx = {g: i for i, g in enumerate(known)}
    for token in ("<pad>", "<cls>", "<eoc>"):
        token2idx[token] = len(token2idx)
    vocab = scgpt.tokenizer.GeneVocab.from_dict(token2idx)
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = TransformerModel(
            ntoken=len(vocab),
            d_model=TINY_ARGS["embsize"],
            nhead=TINY_ARGS["nheads"],
            d_hid=TINY_ARGS["d_hid"],
            nlayers=TINY_ARGS["nlayers"],
            nlayers_cls=TINY_ARGS["n_layers_cls"],
            vocab=vocab,
            dropout=TINY_ARGS["dropout"],
            pad_token="<pad>",
            pad_value=TINY_ARGS["pad_value"],
            do_mvc=True,
        )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(token2idx))
    (directory / "args.json").write_text(json.dumps(TINY_ARGS))
    torch.save(model.state_dict(), directory / "best_model.pt")
    return directory


@pytest.fixture(scope="module")
def scgpt_cells(counts, tmp_path_factory) -> tuple[ad.AnnData, Path]:
    """40 real cells over 300 genes, 5 of them renamed out of the vocabulary, and a tiny model for them."""
    adata = counts[:40, :300].copy()
    adata = adata[np.asarray(adata.X.sum(1)).ravel() > 0].copy()
    names = adata.var_names.to_numpy().copy()
    names[:5] = [f"NOT_A_GENE_{i}" for i in range(5)]
    adata.var_names = names
    model_dir = write_tiny_scgpt(tmp_path_factory.mktemp("scgpt") / "tiny_model", list(names))
    return adata, model_dir


def test_scgpt_equals_scgpts_own_embed_data(scgpt_cells, monkeypatch):
    adata, model_dir = scgpt_cells
    adata = adata.copy()
    n_vocab_genes = len(json.loads((model_dir / "vocab.json").read_text())) - 3
    with pytest.warns(MorphomuWarning, match=f"{n_vocab_genes} of 300 genes matched"):
        mm.pp.embed_rna(adata, method="scgpt", model_dir=model_dir, batch_size=16, progress=False)
    got = adata.obsm["X_scgpt"]
    assert got.shape == (adata.n_obs, TINY_ARGS["embsize"])
    from scgpt.tasks import embed_data

    # scgpt's binning breaks ties with numpy's global RNG, inside DataLoader workers (one per core). With
    # no workers (no cores reported) and the same seed, its random stream is morphomu's, cell by cell.
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set())
    np.random.seed(0)  # noqa: NPY002 - scgpt draws from the global RNG
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = embed_data(
            adata.copy(), model_dir, gene_col="index", batch_size=16, device="cpu", use_fast_transformer=False,
            return_new_adata=True,
        ).X  # fmt: skip
    np.testing.assert_allclose(got, reference, rtol=1e-4, atol=1e-5)
    # and the ties really are random: another seed gives (slightly) different embeddings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MorphomuWarning)
        mm.pp.embed_rna(adata, method="scgpt", model_dir=model_dir, seed=1, key_added="seed1", progress=False)
    assert not np.allclose(adata.obsm["seed1"], got, atol=1e-5)
    assert np.corrcoef(adata.obsm["seed1"].ravel(), got.ravel())[0, 1] > 0.95
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    assert np.linalg.matrix_rank(got) > 5  # cells differ
    entry = adata.uns["morphomu"]["X_scgpt"]
    assert entry["n_genes_matched"] == n_vocab_genes
    assert entry["n_genes"] == 300
    check_uns_writable(adata.uns)


def test_scgpt_subsamples_long_cells_reproducibly(scgpt_cells):
    adata, model_dir = scgpt_cells
    adata = adata.copy()
    before = np.random.get_state()[1].copy()  # noqa: NPY002
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MorphomuWarning)
        for seed, key in ((0, "a"), (0, "b"), (1, "c")):
            mm.pp.embed_rna(
                adata,
                method="scgpt",
                model_dir=model_dir,
                max_length=20,
                seed=seed,
                key_added=key,
                progress=False,
            )
    np.testing.assert_array_equal(adata.obsm["a"], adata.obsm["b"])
    np.testing.assert_array_equal(np.random.get_state()[1], before)  # noqa: NPY002 - the global RNG is left alone
    assert not np.allclose(adata.obsm["a"], adata.obsm["c"])  # the 19 genes drawn per cell depend on the seed


def test_scgpt_reads_symbols_from_a_var_column(scgpt_cells):
    adata, model_dir = scgpt_cells
    adata = adata.copy()
    renamed = adata.copy()
    renamed.var["symbol"] = renamed.var_names
    renamed.var_names = [f"ENSG{i:011d}" for i in range(renamed.n_vars)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MorphomuWarning)
        mm.pp.embed_rna(renamed, method="scgpt", model_dir=model_dir, gene_key="symbol", progress=False)
        mm.pp.embed_rna(adata, method="scgpt", model_dir=model_dir, key_added="ref", progress=False)
    np.testing.assert_allclose(renamed.obsm["X_scgpt"], adata.obsm["ref"], rtol=1e-6)


def test_bad_input_is_named_before_work(scgpt_cells, tmp_path):
    adata, model_dir = scgpt_cells
    adata = adata.copy()
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "vocab.json").write_text((model_dir / "vocab.json").read_text())
    no_args = tmp_path / "no_args"
    no_args.mkdir()
    for f in ("vocab.json", "best_model.pt"):
        (no_args / f).write_bytes((model_dir / f).read_bytes())
    (no_args / "args.json").write_text(json.dumps({"embsize": 16}))
    bigger = tmp_path / "bigger_vocab"
    bigger.mkdir()
    for f in ("args.json", "best_model.pt"):
        (bigger / f).write_bytes((model_dir / f).read_bytes())
    vocab = json.loads((model_dir / "vocab.json").read_text())
    (bigger / "vocab.json").write_text(json.dumps({**vocab, "EXTRA1": len(vocab), "EXTRA2": len(vocab) + 1}))
    ensembl = adata.copy()
    ensembl.var_names = [f"ENSG{i:011d}" for i in range(ensembl.n_vars)]
    negative = adata.copy()
    negative.X = negative.X.copy()
    negative.X.data[0] = -1
    empty_cell = adata.copy()
    empty_cell.X = sparse.csr_matrix(np.vstack([np.zeros((1, 300), np.float32), adata.X[1:].toarray()]))
    cases = [
        (adata, {"method": "scgpt"}, MorphomuError, "needs model_dir"),
        (
            adata,
            {"method": "scgpt", "model_dir": tmp_path / "nowhere"},
            MorphomuError,
            "nowhere.*not a directory.*download",
        ),
        (
            adata,
            {"method": "scgpt", "model_dir": partial},
            MorphomuError,
            r"lacks \['args.json', 'best_model.pt'\]",
        ),
        (adata, {"method": "scgpt", "model_dir": no_args}, MorphomuError, "args.json lacks the keys"),
        (adata, {"method": "scgpt", "model_dir": bigger}, MorphomuError, "does not fit"),
        (ensembl, {"method": "scgpt", "model_dir": model_dir}, ContractError, "none of the 300 genes"),
        (
            adata,
            {"method": "scgpt", "model_dir": model_dir, "gene_key": "symbol"},
            ContractError,
            "gene_key='symbol'",
        ),
        (
            adata,
            {"method": "scgpt", "model_dir": model_dir, "n_latent": 3},
            ContractError,
            "unknown arguments",
        ),
        (adata, {"method": "umap"}, ContractError, "method='umap'"),
        (adata, {"method": "pca", "layer": "counts"}, ContractError, "layer='counts'"),
        (adata, {"method": "pca", "n_comps": 500}, ContractError, "n_comps=500"),
        (adata, {"method": "scvi", "max_epoch": 3}, ContractError, r"unknown arguments \['max_epoch'\]"),
        (adata, {"method": "scvi", "batch_key": "plate"}, ContractError, "plate"),
        (negative, {"method": "pca"}, ContractError, "negative values"),
        (empty_cell, {"method": "scvi"}, ContractError, "1 cells have no counts"),
        (adata, {"method": "pca", "batch_size": 0}, ContractError, "batch_size"),
    ]
    for data, kwargs, error, match in cases:
        with pytest.raises(error, match=match), warnings.catch_warnings():
            warnings.simplefilter("ignore", MorphomuWarning)
            mm.pp.embed_rna(data, progress=False, **kwargs)
        assert not data.obsm
        assert "morphomu" not in data.uns
    with pytest.raises(ContractError, match="mod='protein'"):
        mm.pp.embed_rna(md.MuData({"rna": adata}), mod="protein", method="pca")
