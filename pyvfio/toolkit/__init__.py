"""The driver toolkit on top of the objects: DMA buffers and descriptor
pools mapped into any address space (:mod:`.dma`), and devices opened
ready for DMA (:mod:`.attach`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if not TYPE_CHECKING:
    def __getattr__(name: str) -> Any:
        """Import a module of this package on first use as an attribute
        (``pyvfio.toolkit.dma`` after a plain ``import pyvfio``), as ``import
        pyvfio`` did when it loaded every module up front."""
        import importlib

        if not name.startswith("__"):
            try:
                return importlib.import_module(f"{__name__}.{name}")
            except ModuleNotFoundError as e:
                if e.name != f"{__name__}.{name}":
                    raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
