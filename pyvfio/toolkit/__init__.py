"""The driver toolkit on top of the objects: DMA buffers and descriptor
pools mapped into any address space (:mod:`.dma`), and devices opened
ready for DMA (:mod:`.attach`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if not TYPE_CHECKING:
    from .._lazy import submodule_getattr

    # a module of this package loads on first use as an attribute
    # (``pyvfio.toolkit.dma`` after a plain ``import pyvfio``)
    __getattr__ = submodule_getattr(__name__)
