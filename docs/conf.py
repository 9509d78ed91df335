"""Sphinx configuration for the pyvfio documentation.

Build (warnings are errors)::

    sphinx-build -W --keep-going -b html docs docs/_build/html

Only Sphinx's own theme (alabaster) and built-in extensions are used, and
nothing is fetched from the network (no intersphinx).
"""

from __future__ import annotations

import os
import sys

DOCS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(DOCS)
# Document the checkout, not whatever pyvfio happens to be installed.
sys.path.insert(0, ROOT)

import pyvfio  # noqa: E402

project = "pyvfio"
author = "the pyvfio authors"
copyright = "the pyvfio authors, MIT licence"
release = pyvfio.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

root_doc = "index"
source_suffix = {".rst": "restructuredtext"}
# docs/dev holds Markdown notes kept next to the sources;
# they are shown through literalinclude, not parsed as pages.
exclude_patterns = ["_build", "dev", "snippets", "*.md"]
templates_path: list[str] = []

# -- autodoc ------------------------------------------------------------------
autodoc_default_options = {
    "undoc-members": True,
    "show-inheritance": True,
    "member-order": "bysource",
}
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_class_signature = "mixed"
autodoc_preserve_defaults = True
autodoc_inherit_docstrings = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True
python_use_unqualified_type_names = True
add_module_names = False

# -- HTML ---------------------------------------------------------------------
html_theme = "alabaster"
html_title = f"pyvfio {release}"
html_theme_options = {
    "description": "The Linux VFIO and iommufd interface, in Python",
    "fixed_sidebar": True,
    "show_relbars": True,
}
html_static_path: list[str] = []
html_show_sourcelink = False
html_last_updated_fmt = None


# -- modules without a page of their own ----------------------------------------
# api/more.rst lists every public module of pyvfio that no other page documents
# with automodule, so a new module is in the reference as soon as it exists.
def _documented_modules() -> set[str]:
    found: set[str] = set()
    api = os.path.join(DOCS, "api")
    for name in os.listdir(api):
        if name.endswith(".rst") and name != "more.rst":
            with open(os.path.join(api, name), encoding="utf-8") as f:
                for line in f:
                    if line.startswith(".. automodule:: "):
                        found.add(line.split("::", 1)[1].strip())
    return found


def public_modules() -> list[str]:
    """``pyvfio.<name>`` for every module or package directly under pyvfio,
    and every module of its layer packages (core, toolkit, setup, testing),
    whose name does not start with an underscore."""
    import importlib
    import pkgutil

    found = {f"pyvfio.{m.name}" for m in pkgutil.iter_modules(pyvfio.__path__)
             if not m.name.startswith("_")}
    for layer in LAYERS:
        package = importlib.import_module(f"pyvfio.{layer}")
        found |= {f"pyvfio.{layer}.{m.name}" for m in pkgutil.iter_modules(package.__path__)
                  if not m.name.startswith("_")}
    return sorted(found)


#: pyvfio's layer packages, bottom up (the fake kernel has a page of its own).
LAYERS = ("core", "toolkit", "setup", "testing")


def _fill_more(app: object, docname: str, source: list[str]) -> None:
    if docname != "api/more":
        return
    missing = [m for m in public_modules() if m not in _documented_modules()]
    if not missing:
        text = "Every public module is documented on one of the other pages.\n"
    else:
        text = "".join(
            f"``{m}``\n{'-' * (len(m) + 4)}\n\n.. automodule:: {m}\n   :members:\n\n"
            for m in missing)
    source[0] = source[0].replace(".. pyvfio-more-modules\n", text)


def setup(app: object) -> None:
    app.connect("source-read", _fill_more)  # type: ignore[attr-defined]
