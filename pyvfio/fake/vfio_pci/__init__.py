"""The fake vfio-pci driver, laid out like drivers/vfio/pci/ (core,
config, interrupts, read/write, and a variant driver's migration).
"""

from __future__ import annotations

from .core import (
    VFIO_PCI_OFFSET_SHIFT,
    BusError,
    VfioDeviceFile,
    VfioPciCore,
    core_of,
    index_to_offset,
    inject_error,
    inject_migration_failure,
    mig_next_state,
    open_device_file,
)

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
