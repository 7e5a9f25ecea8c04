"""The model protocol: every model trains through one template whose pieces a subclass can swap.

A subclass that sets ``_module_cls``, ``_data_splitter_cls`` or ``_training_plan_cls`` gets its own class
used in construction and training; every ``train`` documents the shared parameters once, from one text.
"""

from __future__ import annotations

import inspect

import pytest
import torch

import morphomu as mm
from morphomu.models._training import TRAIN_CORE_DOC, TrainingMixin

pytestmark = pytest.mark.xdist_group("training_protocol")

QUIET = {"enable_progress_bar": False, "enable_model_summary": False}
CORE = ("accelerator", "devices", "strategy", "precision", "num_workers", "checkpoint_dir", "ckpt_path")


def counting(base: type) -> type:
    """A subclass of ``base`` that records its instances."""
    return type(f"Counting{base.__name__}", (base,), {"made": []})


def record(cls: type) -> type:
    original = cls.__init__

    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        type(self).made.append(self)

    cls.__init__ = __init__
    return cls


@pytest.fixture(scope="module")
def data():
    mdata = mm.datasets.simulate_scgenescope(
        seed=0, n_img_cells=300, n_rna_cells=300, image_dim=20, rna_dim=8, with_images=True, image_size=16
    )
    mm.pp.assign_split(mdata)
    return mdata


def build(name: str, cls: type, data):
    """A tiny model of ``cls`` (a subclass of the model ``name``) on a copy of the data."""
    if name == "ImageVAE":
        img = data["img"].copy()
        cls.setup_anndata(img)
        return cls(img, preset="tiny"), {"max_epochs": 1, **QUIET}
    mdata = data.copy()
    if name == "TreatmentClassifier":
        cls.setup_mudata(mdata, inputs=("rna", "X_scgpt"))
        model = cls(mdata, setting="single", preset={"preset": "tiny", "max_epochs": 1, "batch_size": 64})
        return model, {"progress": False, "accelerator": "cpu"}
    cls.setup_mudata(mdata)
    if name == "Trident":
        return cls(mdata, preset="tiny", n_top_genes=50), {"max_epochs": 1, "vae_epochs": 1, **QUIET}
    return cls(mdata, preset="tiny"), {"max_epochs": 1, **QUIET}


@pytest.mark.parametrize("name", ["PhenoSeq", "TreatmentClassifier", "ImageVAE", "Trident"])
def test_a_subclass_swaps_module_data_module_and_plan(name, data):
    base = getattr(mm.models, name)
    module_cls = record(counting(base._module_cls))
    data_cls = record(counting(base._data_splitter_cls))
    plan_cls = record(counting(base._training_plan_cls))
    swapped = type(
        f"My{name}",
        (base,),
        {"_module_cls": module_cls, "_data_splitter_cls": data_cls, "_training_plan_cls": plan_cls},
    )
    torch.manual_seed(0)
    model, train_kwargs = build(name, swapped, data)
    assert type(model.module) is module_cls and module_cls.made == [model.module]
    model.train(**train_kwargs)
    assert len(data_cls.made) == 1 and len(plan_cls.made) == 1
    assert plan_cls.made[0].module is model.module
    assert model.is_trained_ and not model.module.training
    assert isinstance(model, TrainingMixin)


@pytest.mark.parametrize("name", ["PhenoSeq", "TreatmentClassifier", "ImageVAE", "Trident"])
def test_every_train_documents_the_shared_parameters_once(name):
    train = getattr(mm.models, name).train
    doc = inspect.getdoc(train)
    assert "{train_core}" not in doc
    assert doc.count(TRAIN_CORE_DOC.splitlines()[1].strip()) == 1
    params = inspect.signature(train).parameters
    for key in CORE:
        assert key in params and f"\n{key}\n" in doc, key
    for key, param in params.items():
        if key == "self":
            continue
        label = f"**{key}" if param.kind is param.VAR_KEYWORD else key
        assert f"\n{label}\n" in doc, f"{name}.train does not document {label}"
