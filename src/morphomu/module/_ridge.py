"""The ridge baseline's fitted state (no AnnData here): standardisation, ridge weights and train residuals.

A closed-form model: nothing is trained by gradient, the buffers hold what
:meth:`morphomu.models.RidgeBaseline.train` fitted, so that ``model.safetensors`` carries it like any other
model's weights. Their sizes are known only after fitting (the residuals have one row per train RNA cell),
so every buffer starts empty and takes the shape it is loaded with.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["RidgeModule"]

#: Buffers and the dtype they start with (a loaded state keeps its own shape and dtype).
_BUFFERS: dict[str, torch.dtype] = {
    "image_mean": torch.float32,
    "image_std": torch.float32,
    "coef": torch.float32,
    "intercept": torch.float32,
    "residuals": torch.float64,
}


class RidgeModule(nn.Module):
    """Fitted state of the ridge baseline, as buffers.

    Parameters
    ----------
    n_image_features
        Imaging features (inputs of the ridge).
    n_rna_features
        RNA features (targets).

    Notes
    -----
    Buffers: ``image_mean`` / ``image_std`` (float32, the standardisation fitted on train imaging cells),
    ``coef`` ``(n_image_features, n_rna_features)`` and ``intercept`` ``(n_rna_features,)`` (scikit-learn's
    ``RidgeCV`` ``coef_`` transposed and ``intercept_``, in the dtype it fitted: float32, as the
    standardised means are), ``alpha`` (float64 scalar, the penalty chosen), ``n_train_samples`` (int64
    scalar) and ``residuals`` ``(n_train_cells, n_rna_features)`` (float64: each train RNA cell minus its
    sample's mean).
    """

    def __init__(self, n_image_features: int, n_rna_features: int) -> None:
        super().__init__()
        self.n_image_features = int(n_image_features)
        self.n_rna_features = int(n_rna_features)
        for name, dtype in _BUFFERS.items():
            self.register_buffer(name, torch.zeros(0, dtype=dtype))
        self.register_buffer("alpha", torch.tensor(float("nan"), dtype=torch.float64))
        self.register_buffer("n_train_samples", torch.tensor(0, dtype=torch.int64))

    @property
    def device(self) -> torch.device:
        """Where the buffers are (the module has no parameters)."""
        return self.image_mean.device

    @property
    def is_fitted(self) -> bool:
        """Whether the buffers hold a fit (set by :meth:`set_fit` or loaded)."""
        return self.coef.numel() > 0

    def set_fit(
        self,
        *,
        image_mean: np.ndarray,
        image_std: np.ndarray,
        coef: np.ndarray,
        intercept: np.ndarray,
        alpha: float,
        n_train_samples: int,
        residuals: np.ndarray,
    ) -> None:
        """Hold a fit: arrays are copied as they are (dtype included), ``coef`` as ``(n_image, n_rna)``."""
        if coef.shape != (self.n_image_features, self.n_rna_features):
            msg = f"coef has shape {coef.shape}, expected {(self.n_image_features, self.n_rna_features)}."
            raise ValueError(msg)
        device = self.device
        arrays = {
            "image_mean": image_mean,
            "image_std": image_std,
            "coef": coef,
            "intercept": intercept,
            "residuals": residuals,
        }
        for name, value in arrays.items():
            setattr(self, name, torch.from_numpy(np.array(value, copy=True, order="C")).to(device))
        self.alpha = torch.tensor(float(alpha), dtype=torch.float64, device=device)
        self.n_train_samples = torch.tensor(int(n_train_samples), dtype=torch.int64, device=device)

    def predict_means(self, x: np.ndarray) -> np.ndarray:
        """Predicted sample-mean RNA ``(n, n_rna)`` from standardised sample-mean imaging ``x``.

        The same product as scikit-learn's ``Ridge.predict`` (``x @ coef_.T + intercept_``, with ``coef``
        already transposed in that layout), so the values are the same to the last bit.
        """
        coef = self.coef.cpu().numpy()
        intercept = self.intercept.cpu().numpy()
        if coef.shape[1] == 1:  # scikit-learn keeps a single target 1-d: a matrix-vector product
            return (x @ coef[:, 0] + intercept).reshape(len(x), 1)
        return x @ coef + intercept

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # the fitted sizes are not known at construction: take the loaded shapes (and dtypes) first
        for name, buffer in self._buffers.items():
            loaded = state_dict.get(prefix + name)
            if buffer is not None and isinstance(loaded, torch.Tensor):
                self._buffers[name] = torch.empty(loaded.shape, dtype=loaded.dtype, device=buffer.device)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
