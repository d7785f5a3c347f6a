"""Sphinx configuration: ``nox -s docs`` (or ``sphinx-build -W -b html docs docs/_build/html``)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))

import cropyield  # noqa: E402

project = "cropyield"
author = "cropyield developers"
copyright = "cropyield developers"  # noqa: A001
release = cropyield.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

# the notebooks live in ../notebooks (executed by the test suite); copy them in for the build
_NB_SRC, _NB_DST = ROOT / "notebooks", HERE / "notebooks"
if _NB_SRC.is_dir():
    _NB_DST.mkdir(exist_ok=True)
    for nb in _NB_SRC.glob("*.ipynb"):
        shutil.copy2(nb, _NB_DST / nb.name)

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "**.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]
root_doc = "index"

# notebooks are executed in the test suite (nbmake), never by the docs build
nb_execution_mode = "off"
myst_enable_extensions = ["colon_fence", "dollarmath", "deflist", "substitution"]
myst_heading_anchors = 3
suppress_warnings = ["myst.header"]  # notebooks start with a level-1 title, some pages skip levels

autosummary_generate = True
autosummary_imported_members = False
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": False}
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_preprocess_types = False


html_theme = "furo"
html_title = f"cropyield {release}"
html_static_path: list[str] = []
nitpicky = False
