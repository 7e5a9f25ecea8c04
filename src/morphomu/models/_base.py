"""What every morphomu model shares on top of scvi-tools': atomic, versioned save and checked load."""

from __future__ import annotations

import inspect
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from scvi.model.base import BaseModelClass

from .._core import (
    FIELD_REGISTRIES_KEY,
    MODEL_NAME_KEY,
    SETUP_ARGS_KEY,
    SETUP_METHOD_NAME_KEY,
    quiet_lightning,
)
from .._docs import doc_params
from .._errors import MorphomuError, MorphomuWarning
from .._io import atomic_path
from ._format import FORMAT_VERSION, MANIFEST, read_manifest_file, read_model_files, write_model_files

__all__ = [
    "FORMAT_VERSION",
    "UNSUPPORTED",
    "MorphomuModel",
    "feature_field",
    "finish_ema_training",
    "n_registered_columns",
]


#: The parameters naming a saved model directory.
SAVED_DIR_DOC = """\
dir_path
    Directory written by :meth:`save`.
prefix
    File-name prefix used at save."""


def feature_field(key: str, rep: str | None, mod: str) -> Any:
    """scvi-tools registry field for one modality's features: ``.obsm[rep]``, or ``.X`` when ``rep`` is None."""
    from scvi.data import fields

    if rep is None:
        return fields.MuDataLayerField(key, None, mod_key=mod, is_count_data=False, mod_required=True)
    return fields.MuDataObsmField(key, rep, mod_key=mod, mod_required=True)


def n_registered_columns(registry: dict, key: str) -> int | None:
    """Feature columns of the field ``key`` in an scvi-tools registry (``None`` when it records none)."""
    state = registry[FIELD_REGISTRIES_KEY][key]["state_registry"]
    return len(state.get("column_names", [])) or None


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


#: Files :meth:`MorphomuModel.save` writes the data to with ``save_anndata=True`` (scvi-tools' names).
_DATA_FILES = {"setup_mudata": "mdata.h5mu", "setup_anndata": "adata.h5ad"}


def _manifest_path(dir_path: Path, prefix: str | None) -> Path:
    return dir_path / f"{prefix or ''}{MANIFEST}"


def _torch_device(accelerator: str, device: int | str) -> str:
    """The torch device for scvi-tools' ``accelerator`` / ``device`` arguments of :meth:`MorphomuModel.load`."""
    import torch

    acc = str(accelerator).lower()
    if acc == "auto":
        acc = "cuda" if torch.cuda.is_available() else "cpu"
    acc = {"gpu": "cuda"}.get(acc, acc)
    if acc == "cpu":
        return "cpu"
    if acc == "cuda":
        if not torch.cuda.is_available():
            msg = f"accelerator={accelerator!r}: no CUDA device is available; use accelerator='cpu'."
            raise MorphomuError(msg)
        if device == "auto":
            return "cuda:0"
        text = str(device).removeprefix("cuda:")
        if not text.isdigit() or int(text) >= torch.cuda.device_count():
            msg = f"device={device!r}: expected 'auto' or a CUDA device index below {torch.cuda.device_count()}."
            raise MorphomuError(msg)
        return f"cuda:{int(text)}"
    if acc == "mps":
        return "mps"
    msg = f"accelerator={accelerator!r}: choose 'auto', 'cpu', 'gpu' / 'cuda' or 'mps'."
    raise MorphomuError(msg)


def _warn_var_names(adata: Any, saved: Any) -> None:
    """Warn (as scvi-tools does) when the data's var names differ from those the model was saved with."""
    if saved is None:
        return
    if isinstance(saved, dict):
        pairs = [
            (f"mdata.mod[{m!r}]", adata.mod[m].var_names, v)
            for m, v in saved.items()
            if m in getattr(adata, "mod", {})
        ]
    else:
        pairs = [("adata", adata.var_names, saved)]
    for where, names, expected in pairs:
        if not np.array_equal(np.asarray(names, dtype=object), np.asarray(expected, dtype=object)):
            warnings.warn(
                f"{where}.var_names differ from those of the data the model was trained on; for valid results "
                "the variables must be the same, in the same order.",
                MorphomuWarning,
                stacklevel=3,
            )


#: scvi-tools ``BaseModelClass`` methods that no morphomu model implements (scvi-tools' own versions
#: only raise): hidden from ``dir()`` of every model class and instance; calling one raises a clear
#: ``NotImplementedError``.
UNSUPPORTED = ("differential_abundance", "get_normalized_expression")


class _ModelMeta(type(BaseModelClass)):  # scvi-tools' BaseModelMetaClass, not exported
    """scvi-tools' model metaclass, with a ``dir()`` of the class that leaves out :data:`UNSUPPORTED`."""

    def __dir__(cls) -> list[str]:
        return sorted(set(super().__dir__()) - set(UNSUPPORTED))


def _unsupported(name: str) -> Any:
    """A method ``name`` that says the model does not offer it (scvi-tools' only raises, unhelpfully)."""

    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        cls = type(self).__name__
        msg = (
            f"{cls}.{name} is an scvi-tools method that morphomu's models do not implement; "
            f"see help({cls}) for what {cls} offers."
        )
        raise NotImplementedError(msg)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = "Not available in morphomu's models (an scvi-tools method that only raises here)."
    return method


class MorphomuModel(BaseModelClass, metaclass=_ModelMeta):
    """Base of morphomu's models: scvi-tools' model API with safe, atomic, versioned directories.

    :meth:`save` writes tensors as safetensors and every other saved attribute as typed JSON (no pickle)
    into a temporary sibling directory and renames it, so an interrupted save leaves the previous model
    intact. :meth:`load` reads such a directory without running any code from it, and refuses a directory
    saved by another model class or by a newer morphomu save format, naming both.
    """

    #: Whether :meth:`load` may build the model without data (only models whose methods need none).
    _loads_without_data = False
    #: The model's presets (name -> sizes), ``None`` for a model without any.
    _presets: dict[str, Any] | None = None
    #: Checks of ``generate``'s arguments by name (``morphomu._validation.check_args``); the tools that
    #: call a model run them, with ``_train_checks``, before they set up or train one.
    _generate_checks: dict[str, Any] = {}

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) - set(UNSUPPORTED))

    @classmethod
    def _register_mudata(cls, mdata: Any, fields: list[Any], setup_method_args: dict, **kwargs: Any) -> None:
        """Register ``fields`` of ``mdata`` with scvi-tools for this class (modalities may hold other cells).

        ``kwargs`` go to scvi-tools' ``register_fields`` (``source_registry`` when loading).
        """
        from scvi.data import AnnDataManager, AnnDataManagerValidationCheck

        manager = AnnDataManager(
            fields=fields,
            setup_method_args=setup_method_args,
            validation_checks=AnnDataManagerValidationCheck(check_fully_paired_mudata=False),
        )
        with quiet_lightning(level=logging.WARNING):  # scvi-tools' "Generating sequential column names"
            manager.register_fields(mdata, **kwargs)
        cls.register_manager(manager)

    @property
    def setup_args(self) -> dict[str, Any]:
        """Keys given to :meth:`setup_mudata`."""
        return dict(self.registry_[SETUP_ARGS_KEY])

    def save(
        self,
        dir_path: str | Path,
        *,
        overwrite: bool = False,
        save_anndata: bool = False,
        prefix: str | None = None,
    ) -> None:
        """Save the model to the directory ``dir_path`` (created; replaced only with ``overwrite=True``).

        The directory holds ``morphomu.json`` (manifest), ``model.safetensors`` (the module's weights) and
        ``attributes.json`` (everything else: setup, initialisation arguments, history, split indices), and
        nothing pickled. A model made of several (``Trident`` and its image VAE) is saved as one directory:
        the sub-model's tensors in the same ``model.safetensors``, its attributes in ``attributes.json``.

        Parameters
        ----------
        dir_path
            Directory to create.
        overwrite
            Replace an existing directory written by morphomu. The old one stays intact until the new one
            is complete.
        save_anndata
            Also write the data (large): ``mdata.h5mu`` (``adata.h5ad`` for an AnnData).
        prefix
            File-name prefix of the saved files.
        """
        from .. import __version__

        attributes = self._attributes_to_save()
        var_names = self.get_var_names() if self.adata is not None else None
        with atomic_path(dir_path, overwrite=overwrite, arg="dir_path") as tmp:
            tmp.mkdir()
            if save_anndata and self.adata is not None:
                method = self.registry_.get(SETUP_METHOD_NAME_KEY, "setup_anndata")
                self.adata.write(str(tmp / f"{prefix or ''}{_DATA_FILES[method]}"))
            try:
                write_model_files(
                    tmp,
                    prefix=prefix,
                    state_dict=self.module.state_dict(),
                    var_names=var_names,
                    attributes=attributes,
                )
            except TypeError as e:
                msg = f"{type(self).__name__} cannot be saved: {e}"
                raise MorphomuError(msg) from None
            manifest = {
                "model": type(self).__name__,
                "format_version": FORMAT_VERSION,
                "morphomu_version": __version__,
            }
            _manifest_path(tmp, prefix).write_text(json.dumps(manifest, indent=2))

    def _attributes_to_save(self) -> dict[str, Any]:
        """What :meth:`save` writes to ``attributes.json``: scvi-tools' ``*_`` attributes (a model adds records)."""
        return {name: value for name, value in self._get_user_attributes() if name.endswith("_")}

    @classmethod
    def _load_init_kwargs(
        cls, dir_path: Path, *, prefix: str | None, attributes: dict[str, Any], legacy_format: bool
    ) -> dict[str, Any]:
        """Constructor arguments :meth:`load` adds to the saved ``init_params_`` (e.g. a saved sub-model).

        A model removes from ``attributes`` the records it consumes here (the rest are set on the model).
        """
        return {}

    @classmethod
    def _construct_saved(
        cls, adata: Any, registry: dict[str, Any], init: dict[str, Any], extra_init: dict[str, Any]
    ) -> Any:
        """The model built as saved: the saved ``init_params_`` and registry, plus ``extra_init``."""
        non_kwargs = dict(init.get("non_kwargs", {}))
        extra = {k: v for group in init.get("kwargs", {}).values() for k, v in group.items()}
        if "registry" in inspect.signature(cls).parameters:
            non_kwargs["registry"] = registry
        non_kwargs.update(extra_init)
        return cls(adata, **non_kwargs, **extra)

    @classmethod
    def _from_saved_attributes(cls, attributes: dict[str, Any], *, where: str) -> Any:
        """A model without data, built from the attributes saved for it inside another model's files.

        Its weights are part of the other model's state dict, which the caller loads.
        """
        attributes = dict(attributes)
        for key in ("registry_", "init_params_"):
            if not isinstance(attributes.get(key), dict):
                msg = f"{where}: the saved attributes have no {key} record."
                raise MorphomuError(msg)
        registry, init = attributes.pop("registry_"), attributes.pop("init_params_")
        model = cls._construct_saved(None, registry, init, {})
        for name, value in attributes.items():
            setattr(model, name, value)
        return model

    @staticmethod
    @doc_params(saved_dir=SAVED_DIR_DOC)
    def read_manifest(
        dir_path: str | Path, *, prefix: str | None = None, legacy_format: bool = False
    ) -> dict[str, Any]:
        """The manifest of a saved model directory, checked against this morphomu's formats.

        Parameters
        ----------
        {saved_dir}
        legacy_format
            Admit format 1 (pickled, written by morphomu < 0.2): only for directories from a trusted source.
        """
        from .. import __version__

        path = _manifest_path(Path(dir_path), prefix)
        if not Path(dir_path).is_dir():
            msg = f"dir_path={str(dir_path)!r} is not a directory; expected one written by a morphomu model's save."
            raise MorphomuError(msg)
        if not path.is_file():
            msg = (
                f"dir_path={str(dir_path)!r} has no {path.name}: it was not written by a morphomu model's save "
                f"(or prefix={prefix!r} differs from the one used to save)."
            )
            raise MorphomuError(msg)
        manifest = read_manifest_file(path)
        saved_format = manifest["format_version"]
        if saved_format > FORMAT_VERSION:
            msg = (
                f"dir_path={str(dir_path)!r} was saved by morphomu {manifest.get('morphomu_version', '?')} in model "
                f"format {saved_format}; this morphomu ({__version__}) reads formats up to {FORMAT_VERSION}. "
                "Upgrade morphomu to load it."
            )
            raise MorphomuError(msg)
        if saved_format < 1:
            msg = f"{path}: format_version={saved_format} is not a morphomu model format."
            raise MorphomuError(msg)
        if saved_format == 1 and not legacy_format:
            msg = (
                f"dir_path={str(dir_path)!r} is in model format 1 (scvi-tools' pickle, written by morphomu "
                f"{manifest.get('morphomu_version', '?')}), and loading a pickle can run code. If you trust where "
                "it came from, load it with legacy_format=True, or convert it once with "
                f"`morphomu convert {dir_path}`."
            )
            raise MorphomuError(msg)
        return manifest

    @classmethod
    @doc_params(saved_dir=SAVED_DIR_DOC)
    def check_saved(
        cls, dir_path: str | Path, *, prefix: str | None = None, legacy_format: bool = False
    ) -> dict[str, Any]:
        """The manifest of a saved model directory, checked against this class and morphomu version.

        Parameters
        ----------
        {saved_dir}
        legacy_format
            Admit format 1 (see :meth:`read_manifest`).
        """
        manifest = cls.read_manifest(dir_path, prefix=prefix, legacy_format=legacy_format)
        if str(manifest["model"]) != cls.__name__:
            msg = (
                f"dir_path={str(dir_path)!r} holds a {manifest['model']}, not a {cls.__name__}; load it with "
                f"{manifest['model']}.load."
            )
            raise MorphomuError(msg)
        return manifest

    @classmethod
    def load(
        cls,
        dir_path: str | Path,
        adata: Any = None,
        *,
        accelerator: str = "auto",
        device: int | str = "auto",
        prefix: str | None = None,
        legacy_format: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Load a model saved by :meth:`save` (scvi-tools' calling convention), running no code from the files.

        Parameters
        ----------
        dir_path
            Directory written by :meth:`save`.
        adata
            Data with the same modality / key layout, checked like at setup (default: the data saved with
            ``save_anndata=True``).
        accelerator
            ``'auto'``, ``'cpu'``, ``'gpu'`` or ``'mps'``.
        device
            ``'auto'`` or the index of the device to load onto.
        prefix
            File-name prefix used at save.
        legacy_format
            Also read format 1 (scvi-tools' pickle, written by morphomu < 0.2) through an unpickler that
            admits only the arrays, tables and tensors such a save holds. Only for directories from a
            trusted source; ``morphomu convert DIR`` rewrites one in the current format.
        **kwargs
            ``mdata``: former name of ``adata`` (deprecated).

        Returns
        -------
        The model, in evaluation mode, on the chosen device.
        """
        if "mdata" in kwargs:
            warnings.warn(
                f"{cls.__name__}.load(mdata=...) is deprecated; pass the data as adata= (scvi-tools' name) or "
                "as the second argument.",
                FutureWarning,
                stacklevel=2,
            )
            adata = kwargs.pop("mdata") if adata is None else adata
        if kwargs:
            msg = f"{cls.__name__}.load got unexpected arguments {sorted(kwargs)}."
            raise MorphomuError(msg)
        dir_path = Path(dir_path)
        manifest = cls.check_saved(dir_path, prefix=prefix, legacy_format=legacy_format)
        torch_device = _torch_device(accelerator, device)
        state, var_names, attributes = read_model_files(
            dir_path, prefix=prefix, format_version=int(manifest["format_version"])
        )
        for key in ("registry_", "init_params_"):
            if not isinstance(attributes.get(key), dict):
                msg = f"dir_path={str(dir_path)!r}: the saved attributes have no {key} record."
                raise MorphomuError(msg)
        registry, init = attributes.pop("registry_"), attributes.pop("init_params_")
        if registry.get(MODEL_NAME_KEY, cls.__name__) != cls.__name__:
            msg = f"dir_path={str(dir_path)!r}: its registry is a {registry[MODEL_NAME_KEY]}'s, not a {cls.__name__}'s."
            raise MorphomuError(msg)
        method = registry.get(SETUP_METHOD_NAME_KEY, "setup_anndata")
        if adata is None:
            adata = cls._read_saved_data(dir_path / f"{prefix or ''}{_DATA_FILES.get(method, '')}")
        if adata is None and not cls._loads_without_data:
            msg = (
                f"{cls.__name__}.load needs data: pass adata= (the data the model was set up on, or new data with "
                f"the same layout); dir_path={str(dir_path)!r} holds none (save with save_anndata=True to keep it)."
            )
            raise MorphomuError(msg)
        if adata is not None:
            _warn_var_names(adata, var_names)
            getattr(cls, method)(adata, source_registry=registry, **registry[SETUP_ARGS_KEY])
        extra_init = cls._load_init_kwargs(
            dir_path, prefix=prefix, attributes=attributes, legacy_format=legacy_format
        )
        model = cls._construct_saved(adata, registry, init, extra_init)
        for name, value in attributes.items():
            setattr(model, name, value)
        try:
            model.module.load_state_dict(state)
        except RuntimeError as e:
            msg = f"dir_path={str(dir_path)!r}: the saved weights do not fit the model they describe ({e})."
            raise MorphomuError(msg) from None
        model.to_device(torch_device)
        model.module.eval()
        if adata is not None:
            model._validate_anndata(adata)
        return model

    @staticmethod
    def _read_saved_data(path: Path) -> Any:
        """The data saved beside a model (``save_anndata=True``), or ``None``."""
        if not path.is_file():
            return None
        if path.suffix == ".h5mu":
            import mudata

            from .._mudata import no_pull_on_update

            with no_pull_on_update():
                return mudata.read_h5mu(str(path))
        import anndata

        return anndata.read_h5ad(str(path))

    @staticmethod
    @doc_params(saved_dir=SAVED_DIR_DOC)
    def load_registry(
        dir_path: str | Path, prefix: str | None = None, *, legacy_format: bool = False
    ) -> dict:
        """The scvi-tools registry saved with a model (its setup arguments and fields), read without code.

        Parameters
        ----------
        {saved_dir}
        legacy_format
            Also read format 1 (see :meth:`load`).
        """
        manifest = MorphomuModel.read_manifest(dir_path, prefix=prefix, legacy_format=legacy_format)
        attributes = read_model_files(
            Path(dir_path), prefix=prefix, format_version=int(manifest["format_version"])
        )[2]
        if not isinstance(attributes.get("registry_"), dict):
            msg = f"dir_path={str(dir_path)!r}: the saved attributes have no registry_ record."
            raise MorphomuError(msg)
        return attributes["registry_"]

    @staticmethod
    def view_setup_args(
        dir_path: str | Path, prefix: str | None = None, *, legacy_format: bool = False
    ) -> None:
        """Print the arguments a saved model was set up with (the arguments are :meth:`load_registry`'s)."""
        import rich
        import rich.pretty

        registry = MorphomuModel.load_registry(dir_path, prefix, legacy_format=legacy_format)
        method = registry.get(SETUP_METHOD_NAME_KEY, "setup_anndata")
        rich.print(f"Setup via `{registry.get(MODEL_NAME_KEY, '?')}.{method}` with arguments:")
        rich.pretty.pprint(registry.get(SETUP_ARGS_KEY, {}))

    @classmethod
    def convert_legacy_save(
        cls,
        dir_path: str | Path,
        output_dir_path: str | Path,
        overwrite: bool = False,
        prefix: str | None = None,
    ) -> None:
        """Rewrite a trusted format-1 (pickled) model directory in the current format.

        The format-1 files are read through the restricted unpickler of ``load(..., legacy_format=True)``;
        the new directory holds no pickle. A sub-model (a Trident's ``image_vae/``) joins the model's own files,
        as the current format keeps it, and the data saved with the model is copied.

        Parameters
        ----------
        dir_path
            The format-1 directory.
        output_dir_path
            Directory to write (may be ``dir_path`` itself with ``overwrite=True``).
        overwrite
            Replace ``output_dir_path`` if it exists (a directory written by morphomu only).
        prefix
            File-name prefix used at save.
        """
        manifest = cls.check_saved(dir_path, prefix=prefix, legacy_format=True)
        del manifest
        convert_model_dir(Path(dir_path), Path(output_dir_path), overwrite=overwrite, prefix=prefix)


for _name in UNSUPPORTED:  # override scvi-tools' bare NotImplementedError with one that names the model
    setattr(MorphomuModel, _name, _unsupported(_name))
del _name


def convert_model_dir(
    dir_path: Path, output_dir_path: Path, *, overwrite: bool = False, prefix: str | None = None
) -> dict[str, Any]:
    """Rewrite the model directory ``dir_path`` (any format, any model) in the current format at ``output_dir_path``.

    Returns the new manifest. Nothing is unpickled except through the restricted unpickler.
    """
    import shutil

    from .. import __version__

    manifest = MorphomuModel.read_manifest(dir_path, prefix=prefix, legacy_format=True)

    def write(src: Path, dst: Path, src_prefix: str | None) -> None:
        found = MorphomuModel.read_manifest(src, prefix=src_prefix, legacy_format=True)
        state, var_names, attributes = read_model_files(
            src, prefix=src_prefix, format_version=int(found["format_version"])
        )
        dst.mkdir()
        write_model_files(
            dst, prefix=src_prefix, state_dict=state, var_names=var_names, attributes=attributes
        )
        own = {
            f"{src_prefix or ''}{name}"
            for name in ("model.pt", "model.safetensors", "attributes.json", MANIFEST)
        }
        for entry in sorted(src.iterdir()):
            if entry.name in own:
                continue
            if entry.is_dir() and (entry / MANIFEST).is_file():
                continue  # a sub-model of format 1 or 2: read_model_files merged it into the model's files
            if entry.is_file() and not entry.is_symlink():
                shutil.copy2(entry, dst / entry.name)
        new = {
            "model": str(found["model"]),
            "format_version": FORMAT_VERSION,
            "morphomu_version": __version__,
        }
        _manifest_path(dst, src_prefix).write_text(json.dumps(new, indent=2))

    in_place = Path(output_dir_path).resolve() == Path(dir_path).resolve()
    if in_place and not _only_model_files(dir_path, prefix):
        msg = (
            f"dir_path={str(dir_path)!r} holds files a morphomu model save does not write; it is not converted "
            "in place. Pass an output directory instead (--out on the command line)."
        )
        raise MorphomuError(msg)
    # converting in place replaces a model directory whose every file morphomu's save wrote (checked above)
    with atomic_path(output_dir_path, overwrite=overwrite, arg="output_dir_path", owned=in_place) as tmp:
        write(dir_path, tmp, prefix)
    return {"model": str(manifest["model"]), "format_version": FORMAT_VERSION}


def _only_model_files(dir_path: Path, prefix: str | None) -> bool:
    """Whether ``dir_path`` holds only what a morphomu model save writes (any format; sub-model directories of formats 1-2)."""
    from .._io import MARKER

    names = {
        f"{prefix or ''}{n}"
        for n in ("model.pt", "model.safetensors", "attributes.json", MANIFEST, *_DATA_FILES.values())
    }
    for entry in dir_path.iterdir():
        if entry.is_symlink():
            return False
        if entry.is_dir():
            if not (entry / MANIFEST).is_file() or not _only_model_files(entry, None):
                return False
        elif entry.name not in names | {MARKER}:
            return False
    return (dir_path / f"{prefix or ''}{MANIFEST}").is_file()
