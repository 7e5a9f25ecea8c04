"""Quiet by default: morphomu's own calls show progress, not the libraries' set-up chatter."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

import morphomu as mm

#: What scvi-tools and Lightning print around a training run when nobody silences them.
CHATTER = (
    "Generating sequential column names",  # scvi-tools, at registration
    "GPU available",  # Lightning's device summary
    "TPU available",
    "Tip:",  # Lightning's advertisement
    "Loading `train_dataloader`",
    "smaller than the logging interval",
    "LeafSpec",  # a deprecation inside Lightning
)


class _Recorder(logging.Handler):
    """Keeps every record that reaches the libraries' loggers (whatever pytest's capture does with them)."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _recorded(*names: str) -> Iterator[_Recorder]:
    recorder = _Recorder()
    loggers = [logging.getLogger(name) for name in names]
    for lg in loggers:
        lg.addHandler(recorder)
    try:
        yield recorder
    finally:
        for lg in loggers:
            lg.removeHandler(recorder)


def _run(mdata, tmp_path, **train_kwargs):
    mm.models.PhenoSeq.setup_mudata(mdata)
    model = mm.models.PhenoSeq(mdata, preset="tiny")
    model.train(max_epochs=1, enable_progress_bar=False, **train_kwargs)
    mm.tl.generate_rna(mdata, model=model, n_cells_per_sample=2)
    model.save(tmp_path / "model")
    mm.models.PhenoSeq.load(tmp_path / "model", adata=mdata)


def test_setup_train_generate_save_load_are_quiet(mdata, tmp_path, capfd):
    import lightning.pytorch  # noqa: F401  (the libraries set their loggers' levels at import)
    import scvi  # noqa: F401

    names = ("lightning.pytorch", "lightning.fabric", "lightning", "scvi")
    levels = {name: logging.getLogger(name).level for name in names}
    with warnings.catch_warnings(record=True) as caught, _recorded("lightning.pytorch", "scvi") as logs:
        warnings.simplefilter("always")
        _run(mdata, tmp_path)
    out, err = capfd.readouterr()
    shown = out + err + "\n".join(logs.messages) + "\n".join(str(w.message) for w in caught)
    assert [c for c in CHATTER if c in shown] == []
    assert not [w for w in caught if issubclass(w.category, FutureWarning)]
    # silenced inside the calls only: the loggers' levels are the caller's again
    assert {name: logging.getLogger(name).level for name in names} == levels


def test_verbose_shows_lightnings_messages(mdata):
    mm.models.PhenoSeq.setup_mudata(mdata)
    model = mm.models.PhenoSeq(mdata, preset="tiny")
    with _recorded("lightning.pytorch") as logs:
        model.train(max_epochs=1, enable_progress_bar=False, verbose=True)
    assert any("GPU available" in m for m in logs.messages)
