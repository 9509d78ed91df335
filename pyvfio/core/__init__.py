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

from typing import TYPE_CHECKING

if not TYPE_CHECKING:
    from .._lazy import submodule_getattr

    # a module of this package loads on first use as an attribute
    # (``pyvfio.core.sysfs`` after a plain ``import pyvfio``)
    __getattr__ = submodule_getattr(__name__)
