"""Keys of an scvi-tools model registry, written here once instead of imported from scvi's private modules.

scvi-tools keeps them in ``scvi.data._constants``, a private module that may change without notice;
a test checks that these values still match the installed scvi-tools.
"""

from __future__ import annotations

__all__ = [
    "FIELD_REGISTRIES_KEY",
    "MODEL_NAME_KEY",
    "SCVI_VERSION_KEY",
    "SETUP_ARGS_KEY",
    "SETUP_METHOD_NAME_KEY",
]

#: The scvi-tools version that wrote the registry.
SCVI_VERSION_KEY = "scvi_version"
#: The model class name.
MODEL_NAME_KEY = "model_name"
#: The name of the class method that registered the data (``setup_anndata`` / ``setup_mudata``).
SETUP_METHOD_NAME_KEY = "setup_method_name"
#: The arguments of that method.
SETUP_ARGS_KEY = "setup_args"
#: The registered fields' own registries.
FIELD_REGISTRIES_KEY = "field_registries"
