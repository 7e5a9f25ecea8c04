"""Model directories are data, never code: format 3 (safetensors + typed JSON), format 1 only on request.

Every model class is saved and loaded in the new format (same generations, bit for bit); crafted
directories whose pickle would write a marker file are refused through every entry point that reads a
model directory; a genuine format-1 save, written in the test by the previous code path (scvi-tools'
pickled ``model.pt`` + a format-1 manifest), loads with ``legacy_format=True`` and converts; a format-2
save (a Trident's image VAE in a sub-directory of its own) loads and converts.
"""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import morphomu as mm
from morphomu import MorphomuError
from morphomu.models._base import MorphomuModel
from morphomu.models._format import FORMAT_VERSION, decode, encode, write_model_files

pytestmark = pytest.mark.xdist_group("model_format")

QUIET = {"enable_progress_bar": False, "enable_model_summary": False}
MODELS = ("PhenoSeq", "TreatmentClassifier", "ImageVAE", "Trident")
# torch pickles with protocol 2, which names the builtins module __builtin__
EXEC_REFUSED = r"refused to load the global (__builtin__|builtins)\.exec"


@pytest.fixture(scope="module")
def data():
    """Imaging features and 16 px tiles, RNA counts and features, the canonical split (do not modify)."""
    mdata = mm.datasets.simulate_scgenescope(
        seed=0, n_img_cells=400, n_rna_cells=300, image_dim=20, rna_dim=8, with_images=True, image_size=16
    )
    mm.pp.assign_split(mdata)
    return mdata


@pytest.fixture(scope="module")
def models(data):
    """One briefly trained tiny model of every class, each on its own copy of the data."""
    torch.manual_seed(0)
    out = {}
    mdata = data.copy()
    mm.models.PhenoSeq.setup_mudata(mdata)
    out["PhenoSeq"] = mm.models.PhenoSeq(mdata, preset="tiny")
    out["PhenoSeq"].train(max_epochs=1, **QUIET)
    mdata = data.copy()
    mm.models.TreatmentClassifier.setup_mudata(mdata, inputs=("rna", "X_scgpt"))
    out["TreatmentClassifier"] = mm.models.TreatmentClassifier(
        mdata, setting="single", preset={"preset": "tiny", "max_epochs": 2, "batch_size": 64}
    )
    out["TreatmentClassifier"].train(progress=False, accelerator="cpu")
    img = data["img"].copy()
    mm.models.ImageVAE.setup_anndata(img)
    out["ImageVAE"] = mm.models.ImageVAE(img, preset="tiny")
    out["ImageVAE"].train(max_epochs=1, **QUIET)
    mdata = data.copy()
    mm.models.Trident.setup_mudata(mdata)
    out["Trident"] = mm.models.Trident(mdata, preset="tiny", n_top_genes=50, image_vae=out["ImageVAE"])
    out["Trident"].train(max_epochs=1, **QUIET)
    return out


def outputs(name, model, data):
    """What each model computes from its weights (deterministic), to compare a loaded model with."""
    if name == "PhenoSeq":
        return [model.generate(seed=3, n_steps=5).X]
    if name == "TreatmentClassifier":
        return [model.predict(split="test_he")]
    if name == "ImageVAE":
        tiles = data["img"].obsm["images"][:4]
        latents = model.encode(tiles)
        return [latents, model.decode(latents)]
    out = model.generate(compounds=["Colchicine"], n_images=2, n_steps=3, seed=1)
    return [out.obsm["images"], model.predict_expression()]


def assert_same(a, b):
    for x, y in zip(a, b, strict=True):
        if isinstance(x, pd.DataFrame):
            pd.testing.assert_frame_equal(x, y)
        else:
            np.testing.assert_array_equal(x, y)


def data_for(name, model, data):
    """The data a loaded model attaches to (a fresh copy, so the load's own setup is what registers it)."""
    if name == "ImageVAE":
        return None
    return model.adata.copy()


def save_format_1(model, path: Path) -> None:
    """What morphomu 0.1 wrote: scvi-tools' pickled ``model.pt`` and a manifest of format 1.

    The ImageVAE's setup arguments then also held the ``AnnData`` class (a local of its setup method).
    """
    from anndata import AnnData
    from scvi.model.base import BaseModelClass

    added = isinstance(model, mm.models.ImageVAE)
    if added:
        model.registry_["setup_args"]["AnnData"] = AnnData
    vae = model.module.image_vae if isinstance(model, mm.models.Trident) else None
    if vae is not None:  # a Trident's module did not hold its image VAE
        model.module.image_vae = None
    try:
        BaseModelClass.save(model, str(path))
    finally:
        if added:
            del model.registry_["setup_args"]["AnnData"]
        if vae is not None:
            model.module.image_vae = vae
    manifest = {"model": type(model).__name__, "format_version": 1, "morphomu_version": "0.1.0.dev0"}
    (path / "morphomu.json").write_text(json.dumps(manifest))
    if isinstance(model, mm.models.Trident):
        save_format_1(model.image_vae, path / "image_vae")


def save_format_2(model, path: Path) -> None:
    """What morphomu wrote in format 2: format 3's files, but a Trident's image VAE in ``image_vae/`` of its own."""
    path.mkdir()
    attributes = {n: v for n, v in model._get_user_attributes() if n.endswith("_")}
    state = {k: v for k, v in model.module.state_dict().items() if not k.startswith("image_vae.")}
    var_names = model.get_var_names() if model.adata is not None else None
    write_model_files(path, prefix=None, state_dict=state, var_names=var_names, attributes=attributes)
    manifest = {"model": type(model).__name__, "format_version": 2, "morphomu_version": "0.1.0.dev0"}
    (path / "morphomu.json").write_text(json.dumps(manifest))
    if isinstance(model, mm.models.Trident):
        save_format_2(model.image_vae, path / "image_vae")


# ------------------------------------------------------------------ the new format
@pytest.mark.parametrize("name", MODELS)
def test_round_trip_in_the_new_format_is_bit_identical(name, models, data, tmp_path):
    model = models[name]
    path = tmp_path / name
    model.save(path)
    names = sorted(p.name for p in path.iterdir())
    assert {"morphomu.json", "model.safetensors", "attributes.json"} <= set(names)
    assert not list(path.rglob("*.pt")) and not list(path.rglob("*.pkl"))
    assert json.loads((path / "morphomu.json").read_text())["format_version"] == FORMAT_VERSION == 3
    assert not [p for p in path.iterdir() if p.is_dir()]  # sub-models are in the model's own files
    loaded = type(model).load(path, data_for(name, model, data), accelerator="cpu")
    assert_same(outputs(name, model, data), outputs(name, loaded, data))
    for key in ("init_params_", "is_trained_", "train_indices_", "history_"):
        a, b = getattr(model, key), getattr(loaded, key)
        if isinstance(a, dict) and a and isinstance(next(iter(a.values())), pd.DataFrame):
            assert a.keys() == b.keys()
            for k in a:
                pd.testing.assert_frame_equal(a[k], b[k])
        elif isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b)
        else:
            assert a == b


def test_load_takes_scvi_tools_calling_convention_and_asks_for_data(models, data, tmp_path):
    model = models["PhenoSeq"]
    model.save(tmp_path / "m")
    loaded = mm.models.PhenoSeq.load(
        tmp_path / "m", adata=model.adata.copy(), accelerator="cpu", device="auto"
    )
    assert_same(outputs("PhenoSeq", model, data), outputs("PhenoSeq", loaded, data))
    with pytest.warns(FutureWarning, match=r"load\(mdata=...\) is deprecated"):
        mm.models.PhenoSeq.load(tmp_path / "m", mdata=model.adata.copy())
    with pytest.raises(MorphomuError, match=r"PhenoSeq.load needs data: pass adata=.*save_anndata=True"):
        mm.models.PhenoSeq.load(tmp_path / "m")
    with pytest.raises(MorphomuError, match="unexpected arguments"):
        mm.models.PhenoSeq.load(tmp_path / "m", model.adata, map_location="cpu")
    model.save(tmp_path / "with_data", save_anndata=True)
    assert (tmp_path / "with_data" / "mdata.h5mu").is_file()
    assert_same(
        outputs("PhenoSeq", model, data),
        outputs("PhenoSeq", mm.models.PhenoSeq.load(tmp_path / "with_data"), data),
    )
    registry = MorphomuModel.load_registry(tmp_path / "m")
    assert registry["setup_args"] == model.registry_["setup_args"]


def test_typed_json_round_trips_values_and_refuses_code():
    values = {
        "ints": np.arange(5, dtype=np.int64),
        "floats": np.array([[0.1, np.nan], [np.inf, -0.0]], dtype=np.float32),
        "names": np.array(["a", "b", None], dtype=object),
        "fixed": np.array(["x", "yz"]),
        "scalar": np.float64(2.5),
        "tuple": (1, "a", None, float("nan")),
        "keys": {1: "one", "__x": 2},
        "registry": collections.defaultdict(dict, {"f": {"n": 1}}),
        "table": pd.DataFrame(
            {"loss": pd.array([0.5, 0.25], dtype=object), "c": pd.Categorical(["u", "v"])},
            index=pd.Index([0, 1], name="epoch"),
        ),
    }
    text = json.dumps(encode(values), allow_nan=False)
    back = decode(json.loads(text))
    for key in ("ints", "floats", "names", "fixed"):
        np.testing.assert_array_equal(back[key], values[key])
        assert back[key].dtype == values[key].dtype
    assert back["scalar"] == values["scalar"] and back["scalar"].dtype == np.float64
    assert back["tuple"][:3] == (1, "a", None) and np.isnan(back["tuple"][3])
    assert back["keys"] == {1: "one", "__x": 2}
    assert isinstance(back["registry"], collections.defaultdict) and back["registry"] == values["registry"]
    pd.testing.assert_frame_equal(back["table"], values["table"])
    for bad in (print, type, object(), {"f": lambda: 0}):
        with pytest.raises(TypeError, match="cannot be saved"):
            encode(bad, where="attr")
    for crafted in (
        {"__import__": "os"},
        {"__ndarray__": {"dtype": "object", "shape": [1], "base64": "AA=="}},
    ):
        with pytest.raises(MorphomuError):
            decode(crafted)


# ------------------------------------------------------------------ crafted directories
class Payload:
    """Unpickling this writes ``marker``: what a malicious model directory would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


class SystemPayload(Payload):
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def craft(path: Path, model: str, *, format_version: int, marker: Path, payload=Payload) -> Path:
    path.mkdir(parents=True)
    torch.save(
        {"model_state_dict": {}, "var_names": None, "attr_dict": {"registry_": payload(marker)}},
        path / "model.pt",
    )
    manifest = {"model": model, "format_version": format_version, "morphomu_version": "0.1.0"}
    (path / "morphomu.json").write_text(json.dumps(manifest))
    if model == "Trident":
        craft(path / "image_vae", "ImageVAE", format_version=format_version, marker=marker, payload=payload)
    return path


def entry_points(name, data):
    """Every way a model directory is read: (label, call on the directory)."""
    cls = getattr(mm.models, name)
    adata = None if name == "ImageVAE" else data.copy()
    calls = [
        ("load", lambda p: cls.load(p, adata)),
        ("load legacy", lambda p: cls.load(p, adata, legacy_format=True)),
        ("load_registry", lambda p: cls.load_registry(p, legacy_format=True)),
        ("view_setup_args", lambda p: cls.view_setup_args(p, legacy_format=True)),
        ("convert_legacy_save", lambda p: cls.convert_legacy_save(p, p.parent / f"{p.name}-converted")),
    ]
    if name == "ImageVAE":
        calls += [
            ("from_pretrained", lambda p: cls.from_pretrained(p)),
            ("from_pretrained legacy", lambda p: cls.from_pretrained(p, legacy_format=True)),
            (
                "Trident(image_vae=path)",
                lambda p: mm.models.Trident(_trident_data(data), preset="tiny", image_vae=p),
            ),
        ]
    return calls


def _trident_data(data):
    mdata = data.copy()
    mm.models.Trident.setup_mudata(mdata)
    return mdata


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("format_version", [1, 2, 3])
def test_crafted_directories_run_no_code_through_any_entry_point(name, format_version, data, tmp_path):
    marker = tmp_path / "marker"
    for i, (label, call) in enumerate(entry_points(name, data)):
        for j, payload in enumerate((Payload, SystemPayload)):
            path = craft(
                tmp_path / f"{i}-{j}", name, format_version=format_version, marker=marker, payload=payload
            )
            with pytest.raises(MorphomuError) as info:
                call(path)
            assert not marker.exists(), f"{label}: the payload ran"
            message = str(info.value)
            if format_version >= 2:
                assert "has no model.safetensors" in message, (label, message)
            elif "legacy" in label or label in ("load_registry", "view_setup_args", "convert_legacy_save"):
                assert re.search(
                    r"refused to load the global (__builtin__\.exec|builtins\.exec|posix\.system)", message
                ), (label, message)
            else:
                assert "legacy_format=True" in message and "morphomu convert" in message, (label, message)


def test_cli_convert_refuses_a_crafted_directory(tmp_path):
    marker = tmp_path / "marker"
    path = craft(tmp_path / "m", "PhenoSeq", format_version=1, marker=marker)
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    proc = subprocess.run(
        [sys.executable, "-m", "morphomu._cli", "convert", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0 and re.search(EXEC_REFUSED, proc.stderr), proc.stderr[-2000:]
    assert not marker.exists()
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before


# ------------------------------------------------------------------ format 1
@pytest.mark.parametrize("name", MODELS)
def test_genuine_format_1_loads_with_legacy_format_and_converts(name, models, data, tmp_path):
    model = models[name]
    old = tmp_path / "old"
    save_format_1(model, old)
    adata = data_for(name, model, data)
    with pytest.raises(MorphomuError, match=r"format 1 .* legacy_format=True"):
        type(model).load(old, adata)
    loaded = type(model).load(old, adata, legacy_format=True)
    expected = outputs(name, model, data)
    assert_same(expected, outputs(name, loaded, data))
    assert MorphomuModel.load_registry(old, legacy_format=True)["setup_args"] == model.registry_["setup_args"]
    # converted once, it loads without the flag and holds no pickle
    new = tmp_path / "new"
    type(model).convert_legacy_save(old, new)
    assert not list(new.rglob("*.pt"))
    assert_same(expected, outputs(name, type(model).load(new, data_for(name, model, data)), data))


def test_format_1_with_one_payload_entry_is_refused(models, data, tmp_path):
    model = models["PhenoSeq"]
    path = tmp_path / "old"
    save_format_1(model, path)
    saved = torch.load(path / "model.pt", weights_only=False)
    marker = tmp_path / "marker"
    saved["attr_dict"]["extra_"] = Payload(marker)
    torch.save(saved, path / "model.pt")
    with pytest.raises(MorphomuError, match=EXEC_REFUSED):
        mm.models.PhenoSeq.load(path, model.adata.copy(), legacy_format=True)
    with pytest.raises(MorphomuError, match=EXEC_REFUSED):
        mm.models.PhenoSeq.convert_legacy_save(path, tmp_path / "new")
    assert not marker.exists() and not (tmp_path / "new").exists()


def test_cli_convert_rewrites_in_place(models, data, tmp_path):
    model = models["Trident"]
    path = tmp_path / "trident"
    save_format_1(model, path)
    proc = subprocess.run(
        [sys.executable, "-m", "morphomu._cli", "convert", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "converted the Trident" in proc.stdout
    assert not list(path.rglob("*.pt")) and not (path / "image_vae").exists()
    assert json.loads((path / "morphomu.json").read_text())["format_version"] == FORMAT_VERSION
    assert_same(
        outputs("Trident", model, data),
        outputs("Trident", mm.models.Trident.load(path, model.adata.copy()), data),
    )


# ------------------------------------------------------------------ format 2
@pytest.mark.parametrize("name", MODELS)
def test_format_2_loads_and_converts(name, models, data, tmp_path):
    model = models[name]
    old = tmp_path / "old"
    save_format_2(model, old)
    expected = outputs(name, model, data)
    loaded = type(model).load(old, data_for(name, model, data))
    assert_same(expected, outputs(name, loaded, data))
    assert MorphomuModel.load_registry(old)["setup_args"] == model.registry_["setup_args"]
    new = tmp_path / "new"
    type(model).convert_legacy_save(old, new)
    assert json.loads((new / "morphomu.json").read_text())["format_version"] == FORMAT_VERSION
    assert not [p for p in new.iterdir() if p.is_dir()]
    converted = type(model).load(new, data_for(name, model, data))
    assert_same(expected, outputs(name, converted, data))
    if name == "Trident":
        assert converted.image_vae.module is converted.module.image_vae
        assert converted.image_vae.registry_["setup_args"] == model.image_vae.registry_["setup_args"]


def test_format_2_trident_with_a_pickled_image_vae_is_refused(models, data, tmp_path):
    """A format-1 sub-directory in a format-2 Trident would be unpickled unasked: refused, nothing run."""
    model = models["Trident"]
    path = tmp_path / "trident"
    save_format_2(model, path)
    shutil.rmtree(path / "image_vae")
    marker = tmp_path / "marker"
    craft(path / "image_vae", "ImageVAE", format_version=1, marker=marker)
    with pytest.raises(MorphomuError, match="format 2 but its sub-model image_vae/ is of format 1"):
        mm.models.Trident.load(path, model.adata.copy())
    with pytest.raises(MorphomuError, match="format 2 but its sub-model image_vae/ is of format 1"):
        mm.models.Trident.convert_legacy_save(path, tmp_path / "new")
    assert not marker.exists()
