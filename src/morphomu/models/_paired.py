"""The setup PhenoSeq and RidgeBaseline share: a MuData whose imaging and RNA cells are paired by sample."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import _constants as C
from .._errors import MorphomuError
from ._base import feature_field, n_registered_columns
from ._phenoseq_checks import check_data

if TYPE_CHECKING:
    from mudata import MuData

__all__ = ["IMAGE_FIELD", "RNA_FIELD", "PairedSetupMixin"]

#: Registry keys of the imaging (context) and RNA (target) features; part of every saved registry.
IMAGE_FIELD = "image"
RNA_FIELD = "rna"


class PairedSetupMixin:
    """``setup_mudata`` for models that map a sample's imaging cells to its RNA cells (same fields, checks, args)."""

    @classmethod
    def setup_mudata(
        cls,
        mdata: MuData,
        *,
        image_mod: str = C.IMAGE_MOD,
        rna_mod: str = C.RNA_MOD,
        image_rep: str | None = C.IMAGE_REP,
        rna_rep: str | None = C.RNA_REP,
        sample_key: str = C.SAMPLE_KEY,
        treatment_key: str = C.TREATMENT_KEY,
        replicate_key: str = C.REPLICATE_KEY,
        round_key: str = C.ROUND_KEY,
        split_key: str = C.SPLIT_KEY,
        **kwargs: Any,
    ) -> None:
        """Register a MuData whose imaging and RNA modalities hold different cells, paired by sample.

        Checks everything before writing anything: the modalities and representations exist and are
        finite, the sample and treatment columns exist, every sample with RNA cells has imaging cells,
        and (when loading a saved model) the feature dimensions match the trained ones.

        Parameters
        ----------
        mdata
            The experiment.
        image_mod
            Imaging modality.
        rna_mod
            RNA modality.
        image_rep
            ``.obsm`` key of the imaging embeddings, or ``None`` for ``.X`` (large, possibly backed data).
        rna_rep
            ``.obsm`` key of the RNA embeddings, or ``None`` for ``.X``.
        sample_key
            obs column pairing the modalities (one treated well / replicate unit).
        treatment_key
            obs column with the treatment.
        replicate_key
            obs column with the replicate (copied to generated cells when present).
        round_key
            obs column with the experimental round (copied when present).
        split_key
            obs column with the split labels; PhenoSeq trains on the ``train`` RNA cells and validates on
            ``val``, the ridge baseline fits on ``train``.
        **kwargs
            Passed to scvi-tools' registration (``source_registry`` when loading).
        """
        setup_method_args = cls._get_setup_method_args(**locals())
        source = kwargs.get("source_registry")
        expected = None
        if source is not None:
            expected = {key: n_registered_columns(source, key) for key in (IMAGE_FIELD, RNA_FIELD)}
        check_data(
            mdata,
            image_mod=image_mod,
            rna_mod=rna_mod,
            image_rep=image_rep,
            rna_rep=rna_rep,
            sample_key=sample_key,
            treatment_key=treatment_key,
            n_image=None if expected is None else expected[IMAGE_FIELD],
            n_rna=None if expected is None else expected[RNA_FIELD],
        )

        cls._register_mudata(
            mdata,
            [
                feature_field(IMAGE_FIELD, image_rep, image_mod),
                feature_field(RNA_FIELD, rna_rep, rna_mod),
            ],
            setup_method_args,
            **kwargs,
        )

    @classmethod
    def setup_anndata(cls, *args: Any, **kwargs: Any) -> None:
        """Not available: the model needs a MuData with an imaging and an RNA modality (use :meth:`setup_mudata`)."""
        msg = f"{cls.__name__} pairs two modalities by sample: use {cls.__name__}.setup_mudata(mdata, ...)."
        raise MorphomuError(msg)

    def _n_features(self) -> tuple[int, int]:
        return n_registered_columns(self.registry_, IMAGE_FIELD), n_registered_columns(
            self.registry_, RNA_FIELD
        )

    def _check_paired_data(self, mdata: Any, keys: dict[str, Any], *, with_rna: bool = True) -> None:
        """The setup's checks of ``mdata`` under ``keys``, with this model's feature sizes (nothing written).

        ``with_rna=False`` skips the RNA modality (generation with a fixed number of cells needs none).
        """
        n_image, n_rna = self._n_features()
        check_data(
            mdata,
            image_mod=keys["image_mod"],
            rna_mod=keys["rna_mod"] if with_rna else None,
            image_rep=keys["image_rep"],
            rna_rep=keys["rna_rep"],
            sample_key=keys["sample_key"],
            treatment_key=keys["treatment_key"],
            n_image=n_image,
            n_rna=n_rna,
        )
