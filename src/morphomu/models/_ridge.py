"""RidgeBaseline: a deterministic image -> RNA baseline (scvi-tools model: setup, train, generate, save, load)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from .. import _constants as C
from .._core import (
    Standardizer,
    Stream,
    cell_keys,
    check_precision,
    group_means,
    keyed_uniform,
    read_rows,
    rep_matrix,
    sample_hashes,
)
from .._errors import ContractError, MorphomuError
from .._validation import check_args, check_obs_keys
from ..module._ridge import RidgeModule
from ..pp._split import SPLIT_REMEDY
from ._base import MorphomuModel
from ._paired import PairedSetupMixin
from ._phenoseq_checks import check_n_cells, imaging_fit_rows, select_samples
from ._phenoseq_sampling import cell_layout, generated_rna

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

__all__ = [
    "GENERATE_CHECKS",
    "RIDGE_ALPHAS",
    "TRAIN_CHECKS",
    "RidgeBaseline",
    "check_alphas",
]

#: Penalties :meth:`RidgeBaseline.train` chooses from by default (leave-one-out over the train samples).
RIDGE_ALPHAS = np.logspace(-3, 5, 17)


def check_alphas(value: Any, arg: str = "alphas") -> np.ndarray:
    """The penalties as a float array (``None``: :data:`RIDGE_ALPHAS`), raising unless all positive and finite."""
    if value is None:
        return RIDGE_ALPHAS
    try:
        alphas = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        alphas = None
    if (
        alphas is None
        or alphas.ndim != 1
        or alphas.size == 0
        or not (np.isfinite(alphas) & (alphas > 0)).all()
    ):
        msg = f"{arg} must be a non-empty 1-d sequence of positive finite penalties (or None), got {value!r}."
        raise MorphomuError(msg)
    return alphas


#: Checks of :meth:`RidgeBaseline.train`'s and :meth:`RidgeBaseline.generate`'s arguments, run before any
#: work (also by the tools, on what they pass on).
TRAIN_CHECKS: dict[str, Any] = {"alphas": check_alphas}
GENERATE_CHECKS: dict[str, Any] = {"n_cells_per_sample": check_n_cells}


class RidgeBaseline(PairedSetupMixin, MorphomuModel):
    """A deterministic baseline that shows what diffusion adds: ridge regression plus train residuals.

    A ridge regression (scikit-learn's ``RidgeCV``, leave-one-out choice of the penalty) from a sample's
    mean imaging embedding (standardised with train statistics) to its mean RNA embedding, fit on the
    train samples. Each generated cell is its sample's predicted mean plus the residual (cell minus its
    sample's mean) of a train RNA cell chosen from ``(seed, sample, cell index)``: the pooled
    within-sample spread of the train split, the same for every treatment. Set up and used like
    :class:`~morphomu.models.PhenoSeq` (same :meth:`setup_mudata`, :meth:`generate` and output), but
    trained in closed form.

    Parameters
    ----------
    mdata
        MuData registered with :meth:`setup_mudata`.

    Examples
    --------
    >>> import morphomu as mm
    >>> mdata = mm.datasets.simulate_scgenescope(n_img_cells=2000, n_rna_cells=2000)
    >>> mm.pp.assign_split(mdata)
    >>> mm.models.RidgeBaseline.setup_mudata(mdata)
    >>> model = mm.models.RidgeBaseline(mdata)
    >>> model.train()
    >>> synthetic = model.generate()
    """

    _module_cls = RidgeModule
    _train_checks = TRAIN_CHECKS
    _generate_checks = {**GENERATE_CHECKS, "precision": check_precision}

    def __init__(self, mdata: MuData) -> None:
        super().__init__(mdata)
        n_image, n_rna = self._n_features()
        self.module = self._module_cls(n_image, n_rna)
        self._model_summary_string = (
            f"RidgeBaseline: {n_image} imaging -> {n_rna} RNA features (not trained)."
        )
        self.init_params_ = self._get_init_params(locals())

    def to_device(self, device: Any) -> None:
        """Keep the state on the CPU, whatever ``device``: the baseline computes with numpy (float64 residuals)."""
        del device
        self.module.to("cpu")

    # ------------------------------------------------------------------ fitted state
    @property
    def alpha(self) -> float | None:
        """The ridge penalty chosen by leave-one-out at training (``None`` before training)."""
        return float(self.module.alpha) if self.module.is_fitted else None

    @property
    def n_train_samples(self) -> int | None:
        """Train samples the ridge was fit on (``None`` before training)."""
        return int(self.module.n_train_samples) if self.module.is_fitted else None

    @property
    def standardizer(self) -> Standardizer | None:
        """Train-split statistics of the imaging features (``None`` before training)."""
        if not self.module.is_fitted:
            return None
        m = self.module
        return Standardizer(m.image_mean.cpu().numpy(), m.image_std.cpu().numpy())

    # ------------------------------------------------------------------ training
    def train(self, *, alphas: Sequence[float] | np.ndarray | None = None) -> None:
        """Fit the baseline in closed form on the ``train`` split (no epochs, no Lightning).

        Standardises imaging with the mean and standard deviation of the train imaging cells (those whose
        ``split_key`` is ``train``, or of the train samples when the imaging modality has no split column),
        fits ``RidgeCV`` from the train samples' standardised mean imaging to their mean RNA, choosing
        the penalty by leave-one-out, and keeps every train RNA cell's residual from its sample's mean.
        ``history_['loo_mse']`` holds the leave-one-out mean squared error of each penalty.

        Parameters
        ----------
        alphas
            Penalties to choose from (positive); default ``np.logspace(-3, 5, 17)``.
        """
        from sklearn.linear_model import RidgeCV

        alphas = check_alphas(alphas)
        a = self.setup_args
        mdata = self.adata  # checked by setup_mudata, as for PhenoSeq's training
        n_image, n_rna = self._n_features()
        img, rna = mdata.mod[a["image_mod"]], mdata.mod[a["rna_mod"]]
        sk, split_key = a["sample_key"], a["split_key"]
        check_obs_keys(rna, {"split_key": split_key}, mod=a["rna_mod"])
        rna_split = rna.obs[split_key].astype(str).to_numpy()
        train = rna_split == C.TRAIN
        if not train.any():
            msg = (
                f"mdata.mod[{a['rna_mod']!r}].obs[{split_key!r}] (split_key) has no 'train' cells; the ridge is fit "
                f"on the train samples (found {sorted(set(rna_split))}). {SPLIT_REMEDY}"
            )
            raise ContractError(msg)
        img_samples = img.obs[sk].astype(str).to_numpy()
        rna_samples = rna.obs[sk].astype(str).to_numpy()
        train_names = pd.Index(sorted(set(rna_samples[train])))
        img_fit = imaging_fit_rows(
            img, split_key=split_key, train_samples=train_names, sample_key=sk, mod=a["image_mod"]
        )

        img_matrix, rna_matrix = rep_matrix(img, a["image_rep"]), rep_matrix(rna, a["rna_rep"])
        scaler = Standardizer.fit(img_matrix, img_fit)
        x_train = scaler.transform(
            group_means(img_matrix, train_names.get_indexer(img_samples), len(train_names))
        )
        train_rows = np.flatnonzero(train)
        train_codes = train_names.get_indexer(rna_samples[train_rows])
        rna_train = read_rows(rna_matrix, train_rows).astype(np.float64)
        y_means = np.zeros((len(train_names), rna_train.shape[1]))
        np.add.at(y_means, train_codes, rna_train)
        y_means /= np.bincount(train_codes, minlength=len(train_names))[:, None]
        residuals = rna_train - y_means[train_codes]
        ridge = RidgeCV(alphas=alphas, store_cv_results=True).fit(x_train, y_means)

        self.module.set_fit(
            image_mean=scaler.mean,
            image_std=scaler.std,
            # (n_image, n_rna) in the layout scikit-learn's predict multiplies by (coef_ is (n_rna, n_image))
            coef=np.asarray(ridge.coef_).reshape(n_rna, n_image).T,
            intercept=np.asarray(ridge.intercept_).reshape(n_rna),
            alpha=float(ridge.alpha_),
            n_train_samples=len(train_names),
            residuals=residuals,
        )
        self.module.eval()
        loo = np.asarray(ridge.cv_results_).reshape(len(train_names), -1, len(alphas)).mean((0, 1))
        self.history_ = {"loo_mse": pd.DataFrame({"loo_mse": loo}, index=pd.Index(alphas, name="alpha"))}
        self.is_trained_ = True
        self._model_summary_string = (
            f"RidgeBaseline: {n_image} imaging -> {n_rna} RNA features, alpha={float(ridge.alpha_):g} (leave-one-out), "
            f"{len(train_names)} train samples, {len(residuals)} train residuals."
        )

    # ------------------------------------------------------------------ generation
    def generate(
        self,
        mdata: MuData | None = None,
        *,
        samples: Sequence[str] | None = None,
        n_cells_per_sample: int | Literal["match"] = "match",
        seed: int = 0,
        precision: str = "auto",
    ) -> AnnData:
        """Generate RNA embeddings per sample: its predicted mean plus resampled train residuals.

        Parameters
        ----------
        mdata
            Data with the imaging (and, for ``'match'``, RNA) modality under the keys given to
            :meth:`setup_mudata`; default the model's own. Never modified.
        samples
            Samples to generate for; default every sample with imaging cells.
        n_cells_per_sample
            ``'match'``: as many cells as the sample has real RNA cells; or a fixed number.
        seed
            Each cell's residual is chosen from ``(seed, sample, cell index)``, so the output does not
            depend on which other samples are generated.
        precision
            Checked and otherwise ignored (the same argument as :meth:`PhenoSeq.generate
            <morphomu.models.PhenoSeq.generate>`): the closed-form ridge predicts with numpy, the same either way.

        Returns
        -------
        AnnData with one row per generated cell: ``.obsm[rna_rep]`` and ``.X`` (the same matrix, raw units
        of ``rna_rep``), obs ``sample``, ``treatment``, ``replicate``, ``round``, ``split`` (those present in
        the imaging modality) and ``synthetic=True``.
        """
        n_cells = check_args({"n_cells_per_sample": n_cells_per_sample}, GENERATE_CHECKS)[
            "n_cells_per_sample"
        ]
        check_precision(precision)
        if not self.is_trained_ or not self.module.is_fitted:
            msg = "the model is not trained; call model.train() first (or RidgeBaseline.load a trained one)."
            raise MorphomuError(msg)
        a = self.setup_args
        mdata = self.adata if mdata is None else mdata
        self._check_paired_data(mdata, a, with_rna=n_cells == "match")
        sk = a["sample_key"]
        img = mdata.mod[a["image_mod"]]
        img_samples = img.obs[sk].astype(str).to_numpy()
        names, counts = select_samples(mdata, a, samples, n_cells)

        x_new = self.standardizer.transform(
            group_means(rep_matrix(img, a["image_rep"]), names.get_indexer(img_samples), len(names))
        )
        mean_pred = self.module.predict_means(x_new)
        residuals = self.module.residuals.cpu().numpy()
        cell_sample, cell_index = cell_layout(counts)
        hashes = sample_hashes(names)
        u = keyed_uniform(cell_keys(seed, Stream.RIDGE_RESIDUAL, hashes[cell_sample], cell_index), 1)[:, 0]
        pick = np.minimum((u * len(residuals)).astype(np.int64), len(residuals) - 1)
        values = (mean_pred[cell_sample] + residuals[pick]).astype(np.float32)

        return generated_rna(values, mdata, a, names, counts)
