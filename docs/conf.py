"""Sphinx configuration for the pyvfio documentation.

Build (warnings are errors, every cross-reference must resolve)::

    sphinx-build -n -W --keep-going -b html docs docs/_build/html

Only Sphinx's own theme (alabaster) and built-in extensions are used, and
nothing is fetched from the network: references to the standard library
resolve through the ``objects.inv`` of the Python documentation installed on
the machine (Debian: ``apt-get install python3.11-doc``; elsewhere point
``PYVFIO_PYTHON_INVENTORY`` at a copy).  Without one the build still works,
but ``-n`` then reports every standard-library reference as unresolved, and
tests/test_docs.py fails saying which package to install.
"""

from __future__ import annotations

import glob
import os
import sys
from typing import Any

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


def python_inventory() -> str | None:
    """The local ``objects.inv`` of the Python documentation, or None.

    ``$PYVFIO_PYTHON_INVENTORY`` first, then Debian's ``python3.X-doc`` for
    the running Python, then any other version's."""
    here = f"/usr/share/doc/python{sys.version_info[0]}.{sys.version_info[1]}/html/objects.inv"
    candidates = [os.environ.get("PYVFIO_PYTHON_INVENTORY", ""), here,
                  *sorted(glob.glob("/usr/share/doc/python3*/html/objects.inv"), reverse=True)]
    return next((c for c in candidates if c and os.path.isfile(c)), None)


PYTHON_INVENTORY = python_inventory()
if PYTHON_INVENTORY is not None:
    extensions.append("sphinx.ext.intersphinx")
    # The URL only builds the links; the inventory is read from the file.
    intersphinx_mapping = {"python": ("https://docs.python.org/3", PYTHON_INVENTORY)}
    intersphinx_disabled_reftypes = ["std:doc"]

# -- cross-references -------------------------------------------------------------
# ``-n`` (nitpicky): every reference must resolve.  These targets cannot: each
# names a type of a library that publishes no objects.inv on this machine.
# Add an entry only for such a name (cffi's CData would be one), with why.
nitpick_ignore = [
    # pytest's fixture request type, in the pytest plugin's fixture
    # signatures: pytest's wheel ships no objects.inv.
    ("py:class", "pytest.FixtureRequest"),
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


# -- attribute docstrings ---------------------------------------------------------
# napoleon reads an attribute's docstring "INTx pin: 0 none, 1 INTA ..." as
# "<type>: <description>" and renders "INTx pin" as the attribute's type, a
# reference nothing can resolve.  pyvfio's attribute, property and data
# docstrings never give a type in prose (the annotation gives it), so the
# words before the colon are put back in front of the description.
_ATTRIBUTE_KINDS = {"attribute", "data", "property"}


def _undo_prose_type(app: object, what: str, name: str, obj: object, options: object,
                     lines: list[str]) -> None:
    if what not in _ATTRIBUTE_KINDS or len(lines) < 2 or not lines[-1].startswith(":type: "):
        return
    words = lines[-1][len(":type: "):]
    del lines[-1]
    if lines[-1] == "":
        del lines[-1]
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None:
        lines.append(words)
    else:
        lines[first] = f"{words}: {lines[first]}"


# -- objects documented under another name ------------------------------------------
# ``pyvfio.Irq`` is documented under the name users import.  Sphinx also knows
# the class as ``pyvfio.core.irq.Irq`` (its canonical name) but not its
# members, nor functions and data by the module they were defined in, so
# ``:meth:`Irq.enable``` in pyvfio.core.irq's own docstring, or
# ``:func:`default_backend``` in pyvfio.backend's, would not resolve.  A
# reference that names a documented object by another of its import paths
# resolves to that object's entry.
def _import_path(dotted: str) -> Any:
    """The object ``dotted`` names (a module, then attributes), or _NOTHING."""
    import importlib

    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return _NOTHING
        return obj
    return _NOTHING


_NOTHING = object()


def _unbound(obj: Any) -> Any:
    """A classmethod's function (each lookup makes a new bound method)."""
    return getattr(obj, "__func__", obj)


def _same_object(domain: Any, name: str) -> str | None:
    """The documented name of the object ``name`` imports, or None."""
    if name in domain.objects:
        return name
    if not name.startswith("pyvfio."):
        return None
    wanted = _import_path(name)
    if wanted is _NOTHING or isinstance(wanted, (int, str, tuple)):
        return None
    tail = "." + name.rsplit(".", 1)[-1]
    for documented, entry in domain.objects.items():
        if (not entry.aliased and documented.endswith(tail)
                and _unbound(_import_path(documented)) is _unbound(wanted)):
            return str(documented)
    return None


def _documented_elsewhere(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    if node.get("refdomain") != "py":
        return None
    if PYTHON_INVENTORY is not None and node.get("reftype") == "class" \
            and "." not in node["reftarget"]:
        # ``array[int]`` in an annotation names array.array as "array": a
        # class of the standard library named like its module.
        from sphinx.ext import intersphinx

        alias = node.deepcopy()
        alias["reftarget"] = f"{node['reftarget']}.{node['reftarget']}"
        found = intersphinx.missing_reference(app, env, alias, contnode)
        if found is not None:
            return found
    domain = env.get_domain("py")
    target, mod, cls = node["reftarget"].lstrip("~."), node.get("py:module"), node.get("py:class")
    names = [target]
    if mod:
        names.insert(0, f"{mod}.{target}")
        if cls:
            names.insert(0, f"{mod}.{cls}.{target}")
    # In a docstring: also relative to where it was written (autodoc names
    # the source "<file>:docstring of <module>.<object>").
    source, up = "", node
    while up is not None and not source:
        source, up = up.source or "", up.parent
    if ":docstring of " in source:
        written = source.rsplit(":docstring of ", 1)[1].split(".")
        names += [".".join([*written[:cut], target]) for cut in range(len(written), 1, -1)]
    for name in names:
        documented = _same_object(domain, name)
        if documented is not None:
            return domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"],
                                       documented, node, contnode)
    return None


def setup(app: object) -> None:
    app.connect("source-read", _fill_more)  # type: ignore[attr-defined]
    # After napoleon's handler (priority 500).
    app.connect("autodoc-process-docstring", _undo_prose_type,  # type: ignore[attr-defined]
                priority=600)
    app.connect("missing-reference", _documented_elsewhere)  # type: ignore[attr-defined]
