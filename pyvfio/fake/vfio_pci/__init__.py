"""The fake vfio-pci driver, laid out like drivers/vfio/pci/ and the parts
of drivers/vfio/ it relies on: the device file (:mod:`.vfio_main`), the
cdev path (:mod:`.device_cdev`), vfio_pci_core (:mod:`.core`), config
space virtualisation (:mod:`.config`), interrupts (:mod:`.intrs`), region
access and mappings (:mod:`.rdwr`), device features (:mod:`.features`), a
variant driver's migration (:mod:`.migration`), the PCI core calls it
makes (:mod:`.pci`) and what they share (:mod:`.priv`).
"""

from __future__ import annotations

from .core import VfioPciCore, inject_error
from .migration import inject_migration_failure, mig_next_state
from .priv import VFIO_PCI_OFFSET_SHIFT, BusError, core_of, index_to_offset
from .vfio_main import VfioDeviceFile, open_device_file

__all__ = [
    "open_device_file",
    "VfioDeviceFile",
    "VfioPciCore",
    "BusError",
    "core_of",
    "inject_error",
    "inject_migration_failure",
    "mig_next_state",
    "VFIO_PCI_OFFSET_SHIFT",
    "index_to_offset",
]
