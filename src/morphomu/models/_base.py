"""What every morphomu model shares on top of scvi-tools': atomic, versioned save and checked load."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scvi.model.base import BaseModelClass

from .._errors import MorphomuError
from .._io import atomic_path

__all__ = ["FORMAT_VERSION", "MorphomuModel", "feature_field", "finish_ema_training"]

#: Version of morphomu's saved-model layout (scvi-tools' ``model.pt`` plus :data:`MANIFEST`). Raise it
#: when a change makes older morphomu versions unable to read what this one writes.
FORMAT_VERSION = 1
#: File beside ``model.pt`` naming the model class, the format version and the morphomu version.
MANIFEST = "morphomu.json"


def feature_field(key: str, rep: str | None, mod: str) -> Any:
    """scvi-tools registry field for one modality's features: ``.obsm[rep]``, or ``.X`` when ``rep`` is None."""
    from scvi.data import fields

    if rep is None:
        return fields.MuDataLayerField(key, None, mod_key=mod, is_count_data=False, mod_required=True)
    return fields.MuDataObsmField(key, rep, mod_key=mod, mod_required=True)


def finish_ema_training(model: Any, plan: Any) -> None:
    """After a diffusion model's training: keep the raw weights (to continue) and load the EMA weights.

    ``plan`` is a :class:`~morphomu.train._diffusion_plan.DiffusionTrainingPlan`; the model gets
    ``_raw_state`` and ``_ema``, and its module holds the averaged weights in eval mode.
    """
    import warnings

    from .._errors import MorphomuWarning

    model._raw_state = {k: v.detach().clone() for k, v in model.module.state_dict().items()}
    model._ema = plan.ema
    if plan.ema.shadow is None or plan.ema.n_updates == 0:
        warnings.warn(
            "no EMA weights were recorded in this process (e.g. a spawn-based strategy trained elsewhere); "
            "the model keeps the raw weights.",
            MorphomuWarning,
            stacklevel=3,
        )
    else:
        plan.ema.copy_to(plan.trainable())
    model.module.eval()


def _manifest_path(dir_path: Path, prefix: str | None) -> Path:
    return dir_path / f"{prefix or ''}{MANIFEST}"


class MorphomuModel(BaseModelClass):
    """Base of morphomu's models: scvi-tools' model API with atomic, versioned directories.

    :meth:`save` writes to a temporary sibling directory and renames it, so an interrupted save leaves the
    previous model intact; :meth:`load` refuses a directory saved by another model class or by a newer
    morphomu save format, naming both.
    """

    @property
    def setup_args(self) -> dict[str, Any]:
        """Keys given to :meth:`setup_mudata`."""
        return dict(self.registry_["setup_args"])

    def save(
        self,
        dir_path: str | Path,
        *,
        overwrite: bool = False,
        save_anndata: bool = False,
        prefix: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Save the model to the directory ``dir_path`` (created; replaced only with ``overwrite=True``).

        A model made of several (``Trident`` and its image VAE, in ``image_vae/``) is saved as one directory.

        Parameters
        ----------
        dir_path
            Directory to create.
        overwrite
            Replace an existing directory. The old one stays intact until the new one is complete.
        save_anndata
            Also write the data (large).
        prefix
            File-name prefix of the saved files.
        **kwargs
            Passed to :meth:`scvi.model.base.BaseModelClass.save`.
        """
        from .. import __version__

        with atomic_path(dir_path, overwrite=overwrite, arg="dir_path") as tmp:
            super().save(str(tmp), overwrite=False, save_anndata=save_anndata, prefix=prefix, **kwargs)
            self._save_parts(tmp, prefix=prefix)
            manifest = {
                "model": type(self).__name__,
                "format_version": FORMAT_VERSION,
                "morphomu_version": __version__,
            }
            _manifest_path(tmp, prefix).write_text(json.dumps(manifest, indent=2))

    def _save_parts(self, dir_path: Path, *, prefix: str | None) -> None:
        """Write what the model holds besides scvi-tools' files (e.g. a sub-model) into the directory being saved."""

    @classmethod
    def check_saved(cls, dir_path: str | Path, *, prefix: str | None = None) -> dict[str, Any]:
        """The manifest of a saved model directory, checked against this class and morphomu version."""
        from .. import __version__

        path = _manifest_path(Path(dir_path), prefix)
        if not Path(dir_path).is_dir():
            msg = (
                f"dir_path={str(dir_path)!r} is not a directory; expected one written by {cls.__name__}.save."
            )
            raise MorphomuError(msg)
        if not path.is_file():
            msg = (
                f"dir_path={str(dir_path)!r} has no {path.name}: it was not written by morphomu's "
                f"{cls.__name__}.save (or prefix={prefix!r} differs from the one used to save)."
            )
            raise MorphomuError(msg)
        try:
            manifest = json.loads(path.read_text())
            saved_class, saved_format = str(manifest["model"]), int(manifest["format_version"])
        except (ValueError, KeyError, TypeError) as e:
            msg = f"{path} is not a valid morphomu model manifest ({e})."
            raise MorphomuError(msg) from None
        if saved_class != cls.__name__:
            msg = f"dir_path={str(dir_path)!r} holds a {saved_class}, not a {cls.__name__}; load it with {saved_class}.load."
            raise MorphomuError(msg)
        if saved_format > FORMAT_VERSION:
            msg = (
                f"dir_path={str(dir_path)!r} was saved by morphomu {manifest.get('morphomu_version', '?')} in model "
                f"format {saved_format}; this morphomu ({__version__}) reads formats up to {FORMAT_VERSION}. "
                "Upgrade morphomu to load it."
            )
            raise MorphomuError(msg)
        return manifest

    @classmethod
    def load(
        cls, dir_path: str | Path, adata: Any = None, *, prefix: str | None = None, **kwargs: Any
    ) -> Any:
        """Load a model saved by :meth:`save`, after checking its manifest.

        Parameters
        ----------
        dir_path
            Directory written by :meth:`save`.
        adata
            Data to attach (default: the data saved with the model).
        prefix
            File-name prefix used at save.
        **kwargs
            Passed to :meth:`scvi.model.base.BaseModelClass.load`.
        """
        cls.check_saved(dir_path, prefix=prefix)
        return super().load(str(dir_path), adata=adata, prefix=prefix, **kwargs)
