"""Treatment classifiers of the scGeneScope benchmark: MLP and DualMLP (no AnnData here).

Architectures (PhenoSeq paper appendix A.2 and Table 6, mirroring scGeneScope's classifiers):

- **MLP**: ``[Linear -> LayerNorm -> ReLU] x n_layers`` of width ``n_hidden``, then a linear head to the
  classes.
- **DualMLP**: one encoder per modality, ``[Linear -> LayerNorm -> ReLU] x n_layers`` of its width then a
  linear projection to ``n_embed`` (image ``5120 -> 266 x 3 -> 913``, RNA ``512 -> 2748 x 3 -> 913`` in
  the paper); the two embeddings are concatenated and a linear head maps ``2 n_embed -> C``.

LayerNorms have no affine parameters and the encoder projections no activation, as in scGeneScope's
``MLP`` (``normalization='layer'``, ``activate_last=False``). Each module standardises its inputs with
stored train-split statistics (buffers ``mean_{i}`` / ``std_{i}``), so batches arrive in raw units.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from scvi.module.base import BaseModuleClass, LossOutput
from torch import nn
from torch.nn import functional as F

__all__ = ["MLP", "DualMLPClassifier", "MLPClassifier"]


class MLP(nn.Module):
    """``[Linear -> LayerNorm -> ReLU] x n_layers`` of width ``n_hidden``, optionally a final Linear.

    Parameters
    ----------
    n_input
        Input features.
    n_hidden
        Width of every hidden layer.
    n_layers
        Number of hidden ``Linear -> LayerNorm -> ReLU`` blocks (at least 1).
    n_output
        Size of a final linear layer (no normalisation or activation); ``None`` for none.
    """

    def __init__(self, n_input: int, n_hidden: int, n_layers: int, n_output: int | None = None) -> None:
        super().__init__()
        if min(int(n_input), int(n_hidden), int(n_layers)) < 1 or (
            n_output is not None and int(n_output) < 1
        ):
            msg = f"MLP sizes must be positive, got n_input={n_input}, n_hidden={n_hidden}, n_layers={n_layers}, n_output={n_output}."
            raise ValueError(msg)
        layers: list[nn.Module] = []
        width = int(n_input)
        for _ in range(int(n_layers)):
            layers += [
                nn.Linear(width, int(n_hidden)),
                nn.LayerNorm(int(n_hidden), elementwise_affine=False),
                nn.ReLU(),
            ]
            width = int(n_hidden)
        if n_output is not None:
            layers.append(nn.Linear(width, int(n_output)))
            width = int(n_output)
        self.layers = nn.Sequential(*layers)
        self.n_output = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the layers."""
        return self.layers(x)


class _ClassifierBase(BaseModuleClass):
    """Standardisation buffers, the cross-entropy loss and scvi-tools' inference/generative plumbing."""

    def __init__(self, n_features: Sequence[int], n_classes: int) -> None:
        super().__init__()
        if int(n_classes) < 2:
            msg = f"a classifier needs at least two classes, got {n_classes}."
            raise ValueError(msg)
        self.n_features = [int(n) for n in n_features]
        self.n_classes = int(n_classes)
        for i, n in enumerate(self.n_features):
            self.register_buffer(f"mean_{i}", torch.zeros(n))
            self.register_buffer(f"std_{i}", torch.ones(n))

    def set_standardization(self, i: int, mean: Any, std: Any) -> None:
        """Store the train-split mean and standard deviation of input ``i``."""
        with torch.no_grad():
            getattr(self, f"mean_{i}").copy_(torch.as_tensor(mean, dtype=torch.float32))
            getattr(self, f"std_{i}").copy_(torch.as_tensor(std, dtype=torch.float32))

    def standardize(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Input ``i`` in standard units."""
        return (x.float() - getattr(self, f"mean_{i}")) / getattr(self, f"std_{i}")

    def logits(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _get_inference_input(self, tensors: dict[str, torch.Tensor], **kwargs: Any) -> dict[str, Any]:
        return {"xs": [tensors[f"x{i}"] for i in range(len(self.n_features))]}

    def inference(self, xs: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Class logits of a batch."""
        return {"logits": self.logits(xs)}

    def _get_generative_input(self, tensors: dict, inference_outputs: dict, **kwargs: Any) -> dict:
        return {}

    def generative(self) -> dict:
        """Nothing to generate: a discriminative model."""
        return {}

    def loss(
        self, tensors: dict[str, torch.Tensor], inference_outputs: dict, generative_outputs: dict
    ) -> LossOutput:
        """Mean cross-entropy against ``tensors['y']``."""
        logits = inference_outputs["logits"]
        loss = F.cross_entropy(logits, tensors["y"])
        return LossOutput(loss=loss, n_obs_minibatch=logits.shape[0])


class MLPClassifier(_ClassifierBase):
    """One input: ``MLP(n_input, n_hidden, n_layers)`` then a linear head to ``n_classes``.

    Parameters
    ----------
    n_input
        Input features.
    n_classes
        Classes.
    n_hidden
        Hidden width.
    n_layers
        Hidden ``Linear -> LayerNorm -> ReLU`` blocks.
    """

    def __init__(self, n_input: int, n_classes: int, *, n_hidden: int, n_layers: int) -> None:
        super().__init__([n_input], n_classes)
        self.encoder = MLP(n_input, n_hidden, n_layers)
        self.head = nn.Linear(int(n_hidden), self.n_classes)

    def logits(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Class logits from raw-unit inputs ``[x]``."""
        return self.head(self.encoder(self.standardize(0, xs[0])))


class DualMLPClassifier(_ClassifierBase):
    """Two inputs (image, RNA): one MLP encoder each to ``n_embed``, concatenated, then a linear head.

    Parameters
    ----------
    n_image
        Imaging input features.
    n_rna
        RNA input features.
    n_classes
        Classes.
    image_hidden, image_layers
        Width and number of hidden blocks of the imaging encoder (266, 3 in the paper).
    rna_hidden, rna_layers
        Width and number of hidden blocks of the RNA encoder (2748, 3 in the paper).
    n_embed
        Output of each encoder (913 in the paper); the head maps ``2 n_embed -> n_classes``.
    """

    def __init__(
        self,
        n_image: int,
        n_rna: int,
        n_classes: int,
        *,
        image_hidden: int,
        image_layers: int,
        rna_hidden: int,
        rna_layers: int,
        n_embed: int,
    ) -> None:
        super().__init__([n_image, n_rna], n_classes)
        self.image_encoder = MLP(n_image, image_hidden, image_layers, n_embed)
        self.rna_encoder = MLP(n_rna, rna_hidden, rna_layers, n_embed)
        self.head = nn.Linear(2 * int(n_embed), self.n_classes)

    def logits(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Class logits from raw-unit inputs ``[x_image, x_rna]``."""
        z_image = self.image_encoder(self.standardize(0, xs[0]))
        z_rna = self.rna_encoder(self.standardize(1, xs[1]))
        return self.head(torch.cat([z_image, z_rna], dim=1))
