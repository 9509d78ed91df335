"""The objects: pyvfio's safe wrappers over the VFIO and iommufd ioctls.

Resources with ordered, idempotent close (:mod:`.resource`), capability
chains (:mod:`.caps`), address spaces that map memory for DMA and their
mappings (:mod:`.address_space`, with IOVA allocation in
:mod:`.iova_allocator`), the legacy container and groups (:mod:`.container`,
:mod:`.group`), iommufd and its IOAS (:mod:`.iommufd`), hardware page
tables and vIOMMUs (:mod:`.hw_pagetable`, :mod:`.viommu`, on
:mod:`.iommufd_object`), devices with their regions, interrupts, features
and PCI config space, and the sysfs lookups and group viability the
objects need to open a device and to explain a refusal (:mod:`.sysfs`,
:mod:`.viability`).  Nothing here imports the toolkit, set-up or testing
layers above it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if not TYPE_CHECKING:
    def __getattr__(name: str) -> Any:
        """Import a module of this package on first use as an attribute
        (``pyvfio.core.sysfs`` after a plain ``import pyvfio``), as ``import
        pyvfio`` did when it loaded every module up front."""
        import importlib

        if not name.startswith("__"):
            try:
                return importlib.import_module(f"{__name__}.{name}")
            except ModuleNotFoundError as e:
                if e.name != f"{__name__}.{name}":
                    raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
