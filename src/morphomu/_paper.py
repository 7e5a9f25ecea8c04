"""Published numbers the benchmark report is set beside (PhenoSeq paper, canonical split, 5 seeds).

Only for display: nothing in morphomu computes with them.
"""

from __future__ import annotations

from typing import Final

#: The five input rows of the paper's Tables 1 and 2, in order: label -> classify inputs kind.
METHODS: Final = (
    "Image (real)",
    "RNA (real)",
    "RNA (synthetic)",
    "Image + RNA (real)",
    "Image + RNA (synthetic)",
)

#: (setting, method) -> (WE balanced accuracy, WE macro-F1, HE balanced accuracy, HE macro-F1), mean values.
CLASSIFICATION: Final = {
    ("single", "Image (real)"): (0.270, 0.258, 0.206, 0.179),
    ("single", "RNA (real)"): (0.383, 0.375, 0.379, 0.340),
    ("single", "RNA (synthetic)"): (0.293, 0.243, 0.205, 0.152),
    ("single", "Image + RNA (real)"): (0.425, 0.403, 0.402, 0.375),
    ("single", "Image + RNA (synthetic)"): (0.315, 0.269, 0.226, 0.194),
    ("multi", "Image (real)"): (0.157, 0.126, 0.086, 0.055),
    ("multi", "RNA (real)"): (0.429, 0.395, 0.307, 0.237),
    ("multi", "RNA (synthetic)"): (0.300, 0.253, 0.286, 0.225),
    ("multi", "Image + RNA (real)"): (0.436, 0.369, 0.336, 0.270),
    ("multi", "Image + RNA (synthetic)"): (0.271, 0.232, 0.211, 0.179),
}

#: Embedding-space fidelity over the 29 conditions.
FIDELITY: Final = {"accuracy_at_1": 15 / 29, "n_rank_le_4": 21, "mrr": 0.60}


def gap_recovered(test_set: str) -> float:
    """The paper's share of the imaging -> real-RNA-fusion gap recovered by synthetic fusion (single-profile).

    ``test_set`` is ``'WE'`` (the paper's ≈ 29 %) or ``'HE'``.
    """
    column = {"WE": 0, "HE": 2}[test_set]  # balanced accuracy columns of CLASSIFICATION

    def acc(method: str) -> float:
        return CLASSIFICATION[("single", method)][column]

    return (acc("Image + RNA (synthetic)") - acc("Image (real)")) / (
        acc("Image + RNA (real)") - acc("Image (real)")
    )
