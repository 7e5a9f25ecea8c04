"""Resumable training: an interrupted run resumed from its checkpoints ends exactly as an uninterrupted one.

Interruptions: a callback raising at step ``k`` (in process), and a training subprocess killed with
SIGKILL once it has written a checkpoint at step >= ``k``. Checkpoints land mid-epoch and at an
epoch's end (after its validation), the two ways :class:`~morphomu.train._checkpoint.TrainingCheckpoint`
saves. CPU, one thread, tiny sizes; weights are compared with ``torch.equal``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback

import morphomu as mm
from morphomu import MorphomuError
from morphomu.train._checkpoint import CHECKPOINT_NAME, atomic_torch_save, read_checkpoint_state

HERE = Path(__file__).resolve().parent
# one worker runs this file, so the reference runs (the `runs` fixture) are trained once
pytestmark = pytest.mark.xdist_group("resume")
# PhenoSeq: 114 train RNA cells, batch 32 -> 4 steps per epoch, 3 epochs = 12 steps
PS_TRAIN = {
    "max_epochs": 3,
    "batch_size": 32,
    "warmup_epochs": 1,
    "ema_decay": 0.99,
    "early_stopping_patience": 1,
    "accelerator": "cpu",
    "enable_progress_bar": False,
    "enable_model_summary": False,
}
# classifier: 4 steps per epoch, early stopping on validation balanced accuracy with patience 2
CL_HPARAMS = {"preset": "tiny", "max_epochs": 12, "batch_size": 32, "lr": 3e-2, "patience": 2}
CL_TRAIN = {"progress": False, "accelerator": "cpu", "seed": 3}


# ---------------------------------------------------------------------------------------------------
# models (also imported by the killed subprocess, so both sides build the same run)
# ---------------------------------------------------------------------------------------------------
def phenoseq_data():
    mdata = mm.datasets.simulate_scgenescope(
        seed=0, n_img_cells=600, n_rna_cells=600, image_dim=40, rna_dim=16
    )
    mm.pp.assign_split(mdata)
    mm.models.PhenoSeq.setup_mudata(mdata)
    return mdata


def classifier_data():
    """Four treatments + DMSO, 32 cells per (condition, replicate): 128 train examples (DMSO excluded)."""
    import anndata as ad
    import mudata as md
    import pandas as pd

    rng = np.random.default_rng(0)
    conditions = ["T0", "T1", "T2", "T3", "DMSO"]
    rows = [
        (f"{t}_r{rep}", t, rep, rnd, i)
        for rnd, reps in ((1, (3, 4, 5)), (2, (1, 2)))
        for rep in reps
        for i, t in enumerate(conditions)
        for _ in range(32)
    ]
    obs = pd.DataFrame(rows, columns=["sample", "treatment", "replicate", "round", "code"])
    x = rng.normal(size=(len(conditions), 6))[obs.pop("code").to_numpy()] + rng.normal(size=(len(obs), 6))
    obs.index = [f"rna_{i}" for i in range(len(obs))]
    rna = ad.AnnData(obs=obs)
    rna.obsm["X_scgpt"] = x.astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        mdata = md.MuData({"rna": rna})
    mm.pp.assign_split(mdata)
    mm.models.TreatmentClassifier.setup_mudata(mdata, inputs=("rna", "X_scgpt"))
    return mdata


def imagevae_data():
    """96 train / 32 val tiles of 8 x 8 (3 channels): batch 24 -> 4 steps per epoch."""
    import anndata as ad
    import pandas as pd

    rng = np.random.default_rng(0)
    split = np.repeat(["train", "val"], [96, 32])
    adata = ad.AnnData(obs=pd.DataFrame({"split": split}, index=[f"t{i}" for i in range(128)]))
    adata.obsm["images"] = rng.integers(0, 255, size=(128, 3, 8, 8), dtype=np.uint8)
    mm.models.ImageVAE.setup_anndata(adata)
    return adata


def trident_data():
    """Tiles of 16 x 16: batch 16 -> 4 steps per epoch; its image VAE is trained (and checkpointed) first."""
    mdata = mm.datasets.simulate_scgenescope(
        seed=0, n_img_cells=300, n_rna_cells=300, with_images=True, image_size=16
    )
    mm.pp.assign_split(mdata)
    mm.models.Trident.setup_mudata(mdata)
    return mdata


IV_TRAIN = {"max_epochs": 3, "batch_size": 24, "accelerator": "cpu", "enable_progress_bar": False}
TR_TRAIN = {**IV_TRAIN, "vae_epochs": 1, "batch_size": 16, "ema_decay": 0.99}
DATA = {
    "phenoseq": phenoseq_data,
    "classifier": classifier_data,
    "imagevae": imagevae_data,
    "trident": trident_data,
}
TRAIN_KWARGS = {"phenoseq": PS_TRAIN, "classifier": CL_TRAIN, "imagevae": IV_TRAIN, "trident": TR_TRAIN}


def new_model(kind: str, mdata):
    import scvi

    scvi.settings.seed = 0  # same initial weights in every run (resumed runs overwrite them anyway)
    if kind == "phenoseq":  # dropout > 0: the resumed run must also restore torch's generator
        return mm.models.PhenoSeq(mdata, preset="tiny", n_hidden=32, n_layers=1, dropout=0.1)
    if kind == "imagevae":  # posterior draws: torch's generator must be restored too
        return mm.models.ImageVAE(mdata, preset="tiny")
    if kind == "trident":
        return mm.models.Trident(mdata, preset="tiny", n_hidden=32, n_layers=1)
    return mm.models.TreatmentClassifier(mdata, setting="single", preset=CL_HPARAMS)


def train(kind: str, model, **kwargs) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(**TRAIN_KWARGS[kind], **kwargs)


def final_state(kind: str, model) -> dict[str, torch.Tensor]:
    """What training leaves: the EMA and raw weights (PhenoSeq) or the best and last weights (classifier)."""
    out = {f"module.{k}": v.detach().clone() for k, v in model.module.state_dict().items()}
    if kind in ("phenoseq", "trident"):
        out.update({f"raw.{k}": v.clone() for k, v in model._raw_state.items()})
        out["ema_updates"] = torch.tensor(model._ema.n_updates)
    elif kind == "imagevae":
        out["steps"] = torch.tensor(model.trainer.global_step)
    else:
        out["best_epoch"] = torch.tensor(model.best_epoch_)
        out["best_score"] = torch.tensor(model.best_validation_score_)
        out["last_epoch"] = torch.tensor(model.trainer.current_epoch)
        out["steps"] = torch.tensor(model.trainer.global_step)
    return out


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"differ after resuming: {different[:5]}"


class _Interrupt(Exception):
    pass


class RaiseAtStep(Callback):
    """Interrupts training once ``k`` optimiser steps are done."""

    def __init__(self, k: int) -> None:
        self.k = k

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.k:
            raise _Interrupt(self.k)


class Slow(Callback):
    """Gives the parent time to kill the run part way."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        time.sleep(0.3)


def child(kind: str, checkpoint_dir: str) -> None:
    """Entry of the subprocess that is killed part way."""
    torch.set_num_threads(1)
    mdata = DATA[kind]()
    model = new_model(kind, mdata)
    train(kind, model, checkpoint_dir=checkpoint_dir, checkpoint_every_n_steps=2, callbacks=[Slow()])


# ---------------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs():
    """Data and the uninterrupted reference run of each model."""
    out = {}
    for kind, make in DATA.items():
        mdata = make()
        model = new_model(kind, mdata)
        train(kind, model)
        out[kind] = (mdata, final_state(kind, model))
    return out


# ---------------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "second"), [("phenoseq", 7), ("classifier", 19), ("imagevae", 7), ("trident", 7)]
)
def test_interrupted_twice_then_resumed_ends_as_uninterrupted(runs, kind, second, tmp_path):
    mdata, expected = runs[kind]
    ckpt = {"checkpoint_dir": tmp_path, "checkpoint_every_n_steps": 2}
    # 4 steps per epoch, a checkpoint every 2: the first interruption (step 5) resumes from the checkpoint
    # saved at the end of epoch 0 (after its validation), the second from one saved mid-epoch (for the
    # classifier after its best epoch, so the best weights must come from the checkpoint)
    with pytest.raises(_Interrupt):
        train(kind, new_model(kind, mdata), **ckpt, callbacks=[RaiseAtStep(5)])
    assert read_checkpoint_state(tmp_path / CHECKPOINT_NAME)["config"]["model"] in (
        "PhenoSeq",
        "TreatmentClassifier",
        "ImageVAE",
        "Trident",
    )
    assert torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)["global_step"] == 4
    with pytest.raises(_Interrupt):
        train(kind, new_model(kind, mdata), **ckpt, ckpt_path="last", callbacks=[RaiseAtStep(second)])
    assert torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)["global_step"] == second - 1
    resumed = new_model(kind, mdata)
    train(kind, resumed, **ckpt, ckpt_path="last")
    assert_same(final_state(kind, resumed), expected)
    assert resumed.is_trained_
    if kind == "classifier":  # early stopping ended the run before max_epochs; the best epoch came earlier
        assert int(expected["best_epoch"]) * 4 < second - 1
        assert int(expected["last_epoch"]) < CL_HPARAMS["max_epochs"] - 1


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "kill_at"), [("phenoseq", 5), ("classifier", 16)])
def test_sigkilled_run_resumes_to_the_same_weights(runs, kind, kill_at, tmp_path):
    mdata, expected = runs[kind]
    code = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(HERE)!r})
        import test_resume
        test_resume.child({kind!r}, {str(tmp_path)!r})
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    last = tmp_path / CHECKPOINT_NAME
    killed_after = None
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if last.exists():
                step = int(torch.load(last, weights_only=True, mmap=True)["global_step"])
                if step >= kill_at:
                    os.kill(proc.pid, signal.SIGKILL)
                    killed_after = step
                    break
            time.sleep(0.05)
    finally:
        if proc.poll() is None and killed_after is None:
            proc.kill()
        _, err = proc.communicate(timeout=60)
    assert killed_after is not None, f"the run ended before it could be killed: {err.decode()[-2000:]}"
    assert proc.returncode == -signal.SIGKILL
    resumed = new_model(kind, mdata)
    train(kind, resumed, checkpoint_dir=tmp_path, checkpoint_every_n_steps=2, ckpt_path="last")
    assert_same(final_state(kind, resumed), expected)
    assert not [p.name for p in tmp_path.iterdir() if p.name != CHECKPOINT_NAME]  # no temporary files left


def test_checkpoint_arguments_are_checked_before_any_work(runs, tmp_path):
    mdata, _ = runs["phenoseq"]
    model = new_model("phenoseq", mdata)
    with pytest.raises(MorphomuError, match="ckpt_path='last' resumes from checkpoint_dir"):
        model.train(max_epochs=1, ckpt_path="last")
    with pytest.raises(MorphomuError, match="ckpt_path=.*missing.ckpt' is not a file"):
        model.train(max_epochs=1, ckpt_path=tmp_path / "missing.ckpt")
    with pytest.raises(MorphomuError, match="checkpoint_every_n_steps must be a positive integer"):
        model.train(max_epochs=1, checkpoint_dir=tmp_path, checkpoint_every_n_steps=0)
    (tmp_path / "file").write_text("x")
    with pytest.raises(MorphomuError, match="checkpoint_dir=.* is not a directory"):
        model.train(max_epochs=1, checkpoint_dir=tmp_path / "file")
    assert not model.is_trained_
    # a run with checkpoints; then: a new run there is refused, another configuration cannot resume it
    train("phenoseq", model, checkpoint_dir=tmp_path / "run", checkpoint_every_n_steps=5)
    with pytest.raises(MorphomuError, match="already holds last.ckpt.*ckpt_path='last'"):
        new_model("phenoseq", mdata).train(max_epochs=1, checkpoint_dir=tmp_path / "run")
    with pytest.raises(
        MorphomuError, match="belongs to another training run.*batch_size: checkpoint 32, now 16"
    ):
        new_model("phenoseq", mdata).train(
            **{**PS_TRAIN, "batch_size": 16}, checkpoint_dir=tmp_path / "run", ckpt_path="last"
        )
    with pytest.raises(MorphomuError, match="belongs to another training run.*model: checkpoint 'PhenoSeq'"):
        mdata_c, _ = runs["classifier"]
        new_model("classifier", mdata_c).train(ckpt_path=tmp_path / "run" / CHECKPOINT_NAME)
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(MorphomuError, match="is not a readable checkpoint"):
        new_model("phenoseq", mdata).train(ckpt_path=tmp_path / "bad.ckpt")
    # 'last' with an empty directory starts the run (one call both starts and restarts a job)
    fresh = new_model("phenoseq", mdata)
    train("phenoseq", fresh, checkpoint_dir=tmp_path / "empty", checkpoint_every_n_steps=5, ckpt_path="last")
    assert fresh.is_trained_ and (tmp_path / "empty" / CHECKPOINT_NAME).is_file()
    # resuming one run into the directory of another would overwrite the other's checkpoint
    with pytest.raises(MorphomuError, match="already holds last.ckpt of a run"):
        train("phenoseq", new_model("phenoseq", mdata), checkpoint_dir=tmp_path / "run",
              ckpt_path=tmp_path / "empty" / CHECKPOINT_NAME)  # fmt: skip


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / CHECKPOINT_NAME
    atomic_torch_save({"global_step": 1}, path)
    before = path.read_bytes()
    real_save = torch.save

    def dies_half_way(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(OSError, match="disk full"):
        atomic_torch_save({"global_step": 2}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_NAME]
    atomic_torch_save({"global_step": 2}, path)
    assert torch.load(path, weights_only=True) == {"global_step": 2}


def test_classify_checkpoints_each_run_and_resumes_them(runs, tmp_path):
    mdata, _ = runs["classifier"]
    kw = {"inputs": ("rna", "X_scgpt"), "hparams": CL_HPARAMS, "seeds": [3, 4], "progress": False}
    kw["accelerator"] = "cpu"
    kw["inplace"] = False
    kw["checkpoint_every_n_steps"] = 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = mm.tl.classify(mdata, **kw, checkpoint_dir=tmp_path)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["fold0-seed3", "fold0-seed4"]
        with pytest.raises(MorphomuError, match="already holds checkpoints of runs; pass ckpt_path='last'"):
            mm.tl.classify(mdata, **kw, checkpoint_dir=tmp_path)
        with pytest.raises(MorphomuError, match="pass checkpoint_dir too"):
            mm.tl.classify(mdata, **kw, ckpt_path="last")
        # every run continues from its newest checkpoint (here: near its end) to the same result
        again = mm.tl.classify(mdata, **kw, checkpoint_dir=tmp_path, ckpt_path="last")
    assert first.equals(again)
