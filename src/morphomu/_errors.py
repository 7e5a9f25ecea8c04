"""Named errors and warnings raised by morphomu."""

from __future__ import annotations

__all__ = ["ContractError", "MorphomuError", "MorphomuWarning"]


class MorphomuError(ValueError):
    """Base class of every error morphomu raises about a user's input.

    It subclasses :class:`ValueError`, so existing ``except ValueError`` code keeps working.
    """


class ContractError(MorphomuError):
    """The data does not follow the MuData contract.

    A missing modality, key or column, a wrong shape, non-finite values, duplicated names, ...
    The message names the modality, the key and what was expected.
    """


class MorphomuWarning(UserWarning):
    """Something worth knowing happened, but the result is still valid."""
