"""Small settings for the test suite: the same calls as the quickstart, at tiny sizes.

The README quickstart and the quickstart notebook share their code word for word. With
``MORPHOMU_TUTORIAL_FAST=1`` (set by ``tests/test_tutorials.py``; ``tests/test_readme.py`` applies the
same patches) the notebook calls :func:`apply`, which shrinks the data and the training behind those
calls so that they finish in seconds. You never need this module to run the tutorials.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from typing import Any

#: Whether the tutorials run at their small settings.
FAST = os.environ.get("MORPHOMU_TUTORIAL_FAST") == "1"

#: What changes at the small settings (everything else is the tutorial's own code).
SMALL = {
    "simulate_scgenescope": {"n_img_cells": 1200, "n_rna_cells": 900},
    "PhenoSeq": {"preset": "tiny"},
    "PhenoSeq.train": {"max_epochs": 2, "enable_progress_bar": False},
    "PhenoSeq.generate": {"n_steps": 5},
    "classify": {"hparams": "tiny", "seeds": (12345,), "progress": False},
}


def _override(func: Callable[..., Any], values: dict[str, Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def small(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **{**kwargs, **values})

    return small


def patches() -> Iterator[tuple[Any, str, Callable[..., Any]]]:
    """``(owner, attribute, replacement)`` for each call the small settings shrink."""
    import morphomu as mm

    phenoseq = mm.models.PhenoSeq
    yield (
        mm.datasets,
        "simulate_scgenescope",
        _override(mm.datasets.simulate_scgenescope, SMALL["simulate_scgenescope"]),
    )
    yield phenoseq, "__init__", _override(phenoseq.__init__, SMALL["PhenoSeq"])
    yield phenoseq, "train", _override(phenoseq.train, SMALL["PhenoSeq.train"])
    yield phenoseq, "generate", _override(phenoseq.generate, SMALL["PhenoSeq.generate"])
    yield mm.tl, "classify", _override(mm.tl.classify, SMALL["classify"])


def apply(setattr: Callable[[Any, str, Any], None] = setattr) -> None:
    """Install the small settings (pass ``monkeypatch.setattr`` to have pytest undo them)."""
    for owner, name, replacement in list(patches()):
        setattr(owner, name, replacement)
