"""Import scgpt 0.2.4 without torchtext: the one place that knows scgpt needs a stand-in.

scgpt's tokenizer does ``import torchtext.vocab as torch_vocab`` and ``from torchtext.vocab import Vocab``
(``GeneVocab`` subclasses ``Vocab``), but torchtext's compiled extension does not load with current torch.
scgpt uses exactly two names from it: the ``Vocab`` class (constructed from another vocabulary's backing
table, plus ``insert_token``, ``append_token``, ``set_default_index``, lookups by token and by list,
``get_stoi`` / ``get_itos``) and the factory ``vocab(ordered_dict, min_freq=1, specials=None,
special_first=True)``. This module implements them in Python with torchtext's semantics, registers the
stand-in modules only while ``scgpt`` is being imported, and restores ``sys.modules`` afterwards.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import types
import warnings
from collections.abc import Iterable, Iterator, Mapping

from .._errors import MorphomuError

__all__ = ["Vocab", "import_scgpt", "vocab"]


class _Table:
    """Backing store of a vocabulary (torchtext's ``VocabPybind``): tokens in index order, and a default."""

    def __init__(self, tokens: Iterable[str] = ()) -> None:
        self.itos: list[str] = []
        self.stoi: dict[str, int] = {}
        self.default_index: int | None = None
        for token in tokens:
            self.append(token)

    def append(self, token: str) -> None:
        if token in self.stoi:
            msg = f"Token {token} already exists in the Vocab with index: {self.stoi[token]}"
            raise RuntimeError(msg)
        self.stoi[token] = len(self.itos)
        self.itos.append(token)

    def insert(self, token: str, index: int) -> None:
        if token in self.stoi:
            msg = f"Token {token} already exists in the Vocab with index: {self.stoi[token]}"
            raise RuntimeError(msg)
        if not 0 <= index <= len(self.itos):
            msg = f"Specified index {index} is out of bounds for vocab of size {len(self.itos)}"
            raise RuntimeError(msg)
        self.itos.insert(index, token)
        for i in range(index, len(self.itos)):  # tokens after the insertion point move up by one
            self.stoi[self.itos[i]] = i

    def index(self, token: str) -> int:
        found = self.stoi.get(token)
        if found is not None:
            return found
        if self.default_index is None:
            msg = f"Token {token} not found and default index is not set"
            raise RuntimeError(msg)
        return self.default_index


class Vocab:
    """Stand-in for ``torchtext.vocab.Vocab`` (token <-> index map with an optional default index)."""

    def __init__(self, vocab: _Table) -> None:
        self.vocab = vocab

    def __len__(self) -> int:
        return len(self.vocab.itos)

    def __contains__(self, token: str) -> bool:
        return token in self.vocab.stoi

    def __getitem__(self, token: str) -> int:
        return self.vocab.index(token)

    def __call__(self, tokens: list[str]) -> list[int]:
        return self.lookup_indices(tokens)

    def forward(self, tokens: list[str]) -> list[int]:
        """Indices of ``tokens`` (torchtext's module forward)."""
        return self.lookup_indices(tokens)

    def set_default_index(self, index: int | None) -> None:
        """Index returned for unknown tokens (``None``: unknown tokens raise)."""
        self.vocab.default_index = index

    def get_default_index(self) -> int | None:
        """The default index, or ``None``."""
        return self.vocab.default_index

    def insert_token(self, token: str, index: int) -> None:
        """Insert ``token`` at ``index``, shifting the later tokens."""
        self.vocab.insert(token, index)

    def append_token(self, token: str) -> None:
        """Add ``token`` at the end."""
        self.vocab.append(token)

    def lookup_token(self, index: int) -> str:
        """Token at ``index``."""
        if not 0 <= index < len(self):
            msg = f"Specified index {index} is out of bounds for vocab of size {len(self)}"
            raise RuntimeError(msg)
        return self.vocab.itos[index]

    def lookup_tokens(self, indices: list[int]) -> list[str]:
        """Tokens at ``indices``."""
        return [self.lookup_token(i) for i in indices]

    def lookup_indices(self, tokens: list[str]) -> list[int]:
        """Indices of ``tokens``."""
        return [self.vocab.index(t) for t in tokens]

    def get_stoi(self) -> dict[str, int]:
        """Token -> index (a copy)."""
        return dict(self.vocab.stoi)

    def get_itos(self) -> list[str]:
        """Tokens in index order (a copy)."""
        return list(self.vocab.itos)


def vocab(
    ordered_dict: Mapping[str, int],
    min_freq: int = 1,
    specials: list[str] | None = None,
    special_first: bool = True,
) -> Vocab:
    """Stand-in for ``torchtext.vocab.vocab``: tokens of ``ordered_dict`` with count >= ``min_freq``, in order."""
    specials = list(specials or [])
    tokens = [t for t, freq in ordered_dict.items() if freq >= min_freq and t not in specials]
    tokens = specials + tokens if special_first else tokens + specials
    return Vocab(_Table(tokens))


def _stand_in_modules() -> dict[str, types.ModuleType]:
    package = types.ModuleType("torchtext", doc="morphomu stand-in for torchtext (scgpt's imports only).")
    package.__path__ = []  # a package, so that ``import torchtext.vocab`` resolves through sys.modules
    sub = types.ModuleType("torchtext.vocab", doc="morphomu stand-in for torchtext.vocab.")
    sub.Vocab = Vocab
    sub.vocab = vocab
    package.vocab = sub
    return {"torchtext": package, "torchtext.vocab": sub}


@contextlib.contextmanager
def _torchtext_stand_in() -> Iterator[None]:
    saved = {name: sys.modules.get(name) for name in ("torchtext", "torchtext.vocab")}
    sys.modules.update(_stand_in_modules())
    try:
        yield
    finally:  # other code in the process keeps seeing whatever torchtext it saw before
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def import_scgpt() -> types.ModuleType:
    """Import and return ``scgpt`` (0.2.x) with the torchtext stand-in in place.

    Raises
    ------
    MorphomuError
        If scgpt is not installed, saying how to install it.
    """
    if "scgpt" in sys.modules:
        return sys.modules["scgpt"]
    if importlib.util.find_spec("scgpt") is None:
        msg = (
            "method='scgpt' needs the scgpt package, installed without its pinned dependencies: "
            "pip install --no-deps scgpt==0.2.4 ipython datasets"
        )
        raise MorphomuError(msg)
    with _torchtext_stand_in(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="flash_attn is not installed")
        return importlib.import_module("scgpt")
