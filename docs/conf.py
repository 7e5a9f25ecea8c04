"""Sphinx configuration for the morphomu documentation."""

from __future__ import annotations

import os
from datetime import date
from importlib.metadata import version as _version

project = "morphomu"
author = "morphomu developers"
copyright = f"{date.today().year}, {author}"
release = _version("morphomu")
version = release

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx_autodoc_typehints",
    "sphinxcontrib.bibtex",
    "sphinx_copybutton",
    "sphinxarg.ext",
]

# .rst first: autosummary writes its generated pages (reStructuredText) with the first suffix
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
master_doc = "index"
templates_path = ["_templates"]
# docs/tutorials is a link to the repository's tutorials/ folder (the notebooks live there, with outputs)
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints", "tutorials/README.md"]

# notebooks are committed with their outputs (tests/test_tutorials.py executes them); never run here
nb_execution_mode = "off"
nb_merge_streams = True
myst_enable_extensions = ["colon_fence", "dollarmath", "deflist"]
myst_heading_anchors = 3

autosummary_generate = True
autodoc_member_order = "groupwise"
autodoc_typehints = "description"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = True
napoleon_use_param = True
typehints_defaults = "braces"
always_document_param_types = True

bibtex_bibfiles = ["references.bib"]
bibtex_reference_style = "author_year"

# intersphinx needs the network: switched off when MORPHOMU_DOCS_OFFLINE is set (CI has no network,
# and warnings stay errors there)
intersphinx_mapping = (
    {}
    if os.environ.get("MORPHOMU_DOCS_OFFLINE")
    else {
        "python": ("https://docs.python.org/3", None),
        "numpy": ("https://numpy.org/doc/stable/", None),
        "pandas": ("https://pandas.pydata.org/docs/", None),
        "anndata": ("https://anndata.readthedocs.io/en/stable/", None),
        "mudata": ("https://mudata.readthedocs.io/en/latest/", None),
        "scanpy": ("https://scanpy.readthedocs.io/en/stable/", None),
        "scvi": ("https://docs.scvi-tools.org/en/stable/", None),
        "torch": ("https://pytorch.org/docs/stable/", None),
    }
)
nitpicky = False

html_theme = "sphinx_book_theme"
html_title = "morphomu"
html_theme_options = {"repository_url": "https://github.com/morphomu/morphomu", "use_repository_button": True}
