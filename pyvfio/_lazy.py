"""Packages whose modules load on first use as attributes (PEP 562)."""

from __future__ import annotations

import importlib
from typing import Any, Callable


def submodule_getattr(package: str) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that imports the package's
    module ``name`` the first time ``package.name`` is read (as ``import
    pyvfio`` did when it loaded every module up front); AttributeError for
    a name that is no module of the package."""

    def __getattr__(name: str) -> Any:
        if not name.startswith("__"):
            try:
                return importlib.import_module(f"{package}.{name}")
            except ModuleNotFoundError as e:
                if e.name != f"{package}.{name}":
                    raise
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
