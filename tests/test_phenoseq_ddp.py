"""Data-parallel PhenoSeq training really shards and synchronises (2 CPU processes, gloo).

A script (Lightning's ``ddp`` relaunches the running script for rank 1, so it cannot be pytest itself)
trains a tiny model with ``strategy='ddp', devices=2`` at batch ``b`` and records the items each rank
drew; the same script then trains in one process at batch ``2 b``. The ranks' items partition every
epoch, and the two runs end with the same weights (same items, draws and averaged gradients).
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

SCRIPT = textwrap.dedent(
    """
    import json, os, sys, warnings
    warnings.filterwarnings("ignore")
    import torch
    torch.set_num_threads(1)
    from lightning.pytorch.callbacks import Callback
    import morphomu as mm
    from morphomu.models._phenoseq import PhenoSeq

    out, devices, batch_size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])


    class Record(Callback):
        def __init__(self):
            self.items = {}

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.items.setdefault(trainer.current_epoch, []).extend(batch["index"].tolist())

        def on_train_end(self, trainer, pl_module):
            with open(os.path.join(out, f"items-{devices}-rank{trainer.global_rank}.json"), "w") as f:
                json.dump(self.items, f)


    mdata = mm.datasets.simulate_scgenescope(seed=0, n_img_cells=600, n_rna_cells=600, image_dim=20, rna_dim=10)
    mm.pp.assign_split(mdata)
    PhenoSeq.setup_mudata(mdata)
    torch.manual_seed(0)
    model = PhenoSeq(mdata, preset="tiny", dropout=0.0)
    kwargs = {"strategy": "ddp", "devices": 2} if devices == 2 else {"devices": 1}
    model.train(
        max_epochs=2, batch_size=batch_size, lr=1e-3, warmup_epochs=1, early_stopping=False, accelerator="cpu",
        enable_progress_bar=False, callbacks=[Record()], **kwargs,
    )
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        torch.save(model._raw_state, os.path.join(out, f"weights-{devices}.pt"))
        with open(os.path.join(out, f"n_train-{devices}.json"), "w") as f:
            json.dump(int((mdata["rna"].obs["split"] == "train").sum()), f)
    """
)


@pytest.mark.slow
def test_ddp_partitions_epochs_and_matches_one_process_at_twice_the_batch(tmp_path):
    script = tmp_path / "train_ddp.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    for devices, batch in ((2, 16), (1, 32)):
        proc = subprocess.run(
            [sys.executable, str(script), str(tmp_path), str(devices), str(batch)],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
    n_train = json.loads((tmp_path / "n_train-1.json").read_text())
    ranks = [json.loads((tmp_path / f"items-2-rank{r}.json").read_text()) for r in (0, 1)]
    single = json.loads((tmp_path / "items-1-rank0.json").read_text())
    assert sorted(ranks[0]) == sorted(single) == ["0", "1"]
    for epoch in ("0", "1"):
        a, b = ranks[0][epoch], ranks[1][epoch]
        assert len(a) == len(b)  # each rank draws its own, equal share
        # one pass over the train RNA cells; only the wrap-around that fills the last batch repeats cells
        assert set(a) | set(b) == set(range(n_train))
        assert len(set(a) & set(b)) <= len(a) + len(b) - n_train
        assert sorted(a + b) == sorted(single[epoch])  # the same items as one process at twice the batch
    assert ranks[0]["0"] != ranks[0]["1"]  # epochs are reshuffled
    ddp = torch.load(tmp_path / "weights-2.pt")
    one = torch.load(tmp_path / "weights-1.pt")
    max_gap = 0.0
    for key, value in one.items():
        np.testing.assert_allclose(ddp[key], value, atol=2e-5, rtol=1e-4, err_msg=key)
        max_gap = max(max_gap, float((value - ddp[key]).abs().max()))
    assert max_gap < 2e-5
