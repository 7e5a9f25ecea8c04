"""Models expose only what works: scvi-tools methods no morphomu model implements are hidden from dir()."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from scvi.model.base import BaseModelClass

import morphomu as mm
from morphomu.models._base import UNSUPPORTED

MODELS = ["ImageVAE", "MorphologyEmbedder", "PhenoSeq", "RidgeBaseline", "TreatmentClassifier", "Trident"]


@pytest.fixture(scope="module")
def mdata():
    m = mm.datasets.simulate_scgenescope(seed=0, n_img_cells=300, n_rna_cells=300, image_dim=10, rna_dim=6)
    mm.pp.assign_split(m)
    return m


def test_the_unsupported_names_only_raise_in_scvi_tools():
    """The tuple lists exactly scvi-tools' BaseModelClass methods whose body is a bare NotImplementedError."""
    for name in UNSUPPORTED:
        with pytest.raises(NotImplementedError, match=f"{name} is not implemented"):
            getattr(BaseModelClass, name)(object.__new__(mm.models.RidgeBaseline))
    assert set(UNSUPPORTED) == {"differential_abundance", "get_normalized_expression"}


@pytest.mark.parametrize("name", MODELS)
def test_dir_of_every_model_class_leaves_them_out(name):
    cls = getattr(mm.models, name)
    listed = dir(cls)
    assert not set(UNSUPPORTED) & set(listed)
    assert {"train", "save", "load", "setup_anndata"} <= set(listed)  # the rest of the API is still there
    assert listed == sorted(listed)
    for attr in UNSUPPORTED:
        assert hasattr(cls, attr)  # hidden, not removed: calling it explains itself


def _instances(mdata):
    mm.models.RidgeBaseline.setup_mudata(mdata)
    yield mm.models.RidgeBaseline(mdata)
    mm.models.PhenoSeq.setup_mudata(mdata)
    yield mm.models.PhenoSeq(mdata, preset="tiny")
    tiles = ad.AnnData(np.zeros((4, 1), np.float32))
    tiles.obsm["images"] = np.zeros((4, 3, 16, 16), np.uint8)
    mm.models.ImageVAE.setup_anndata(tiles, split_key=None)
    yield mm.models.ImageVAE(tiles, preset="tiny")


def test_instances_leave_them_out_and_calling_one_says_why(mdata):
    data = mdata.copy()
    for model in _instances(data):
        name = type(model).__name__
        listed = dir(model)
        assert not set(UNSUPPORTED) & set(listed)
        assert {"train", "save", "adata", "history"} <= set(listed)
        for attr in UNSUPPORTED:
            with pytest.raises(NotImplementedError) as info:
                getattr(model, attr)(data)
            assert str(info.value) == (
                f"{name}.{attr} is an scvi-tools method that morphomu's models do not implement; "
                f"see help({name}) for what {name} offers."
            )


def test_saved_attributes_are_unchanged_by_the_hiding(mdata, tmp_path):
    data = mdata.copy()
    mm.models.RidgeBaseline.setup_mudata(data)
    model = mm.models.RidgeBaseline(data)
    model.train()
    names = {n for n, _ in model._get_user_attributes()}
    assert "get_normalized_function_name_" in names  # scvi-tools' record still saved as before
    model.save(tmp_path / "ridge")
    back = mm.models.RidgeBaseline.load(tmp_path / "ridge", data)
    np.testing.assert_allclose(back.generate(data).X, model.generate(data).X)
