"""pyvfio: the Linux VFIO and iommufd userspace driver interface, in Python.

Layers, bottom up: :mod:`pyvfio._uapi` (the kernel's structs and constants,
compiled with cffi), :mod:`pyvfio.backend` (the syscalls: the real kernel or
:mod:`pyvfio.fake`), the objects (:class:`Container`, :class:`Group`,
:class:`IommuFd`, :class:`IOAS`, :class:`HWPT`, :class:`Device`) and the
driver toolkit on top of them (DMA buffers and pools, :func:`open_attached`).
"""

from __future__ import annotations

from ._uapi import ffi, lib
from .backend import Backend, MemoryMap, default_backend
from .core.address_space import AddressSpace, IovaMapping
from .core.caps import IovaRange
from .core.container import Container, DmaMapping, Extension, IommuInfo, IommuType
from .core.device import (
    Device,
    DeviceInfo,
    HotResetDevice,
    IrqInfo,
    PciIrq,
    PciRegion,
    RegionInfo,
)
from .core.features import DeviceFeatures, MigrationState
from .core.group import Group, GroupStatus
from .core.hw_pagetable import HWPT, FaultQueue, HwInfo, HwInfoType, HwptDataType
from .core.iommufd import IOAS, IoasMapping, IommuFd, RlimitMode
from .core.iova_allocator import IovaAllocator
from .core.irq import EventFd, Irq, IrqMap, IrqVector
from .core.pci_config import PciConfig
from .core.region import Region, RegionMap, RegionMapping
from .core.registers import Field, Register, RegisterBlock, RegisterIO
from .core.viommu import HwQueue, Vdevice, Veventq, Viommu
from .errors import (
    ClosedError,
    InvalidArgumentError,
    IoctlError,
    NotViableError,
    UnsupportedError,
    VfioError,
)
from .toolkit.attach import open_attached
from .toolkit.dma import DmaBuffer, DmaChunk, DmaPool, map_buffer

__version__ = "0.1.0"

__all__ = [
    "ffi", "lib", "Backend", "MemoryMap", "default_backend", "IovaRange",
    "AddressSpace", "IovaMapping",
    "Container", "DmaMapping", "Extension", "Group", "GroupStatus", "IommuInfo", "IommuType",
    "Device", "DeviceInfo", "HotResetDevice", "IrqInfo", "PciIrq", "PciRegion", "RegionInfo",
    "ClosedError", "InvalidArgumentError", "IoctlError", "NotViableError", "UnsupportedError",
    "VfioError",
    "HWPT", "IOAS", "FaultQueue", "HwInfo", "HwInfoType", "HwptDataType", "HwQueue",
    "IoasMapping", "IommuFd", "RlimitMode", "Vdevice", "Veventq", "Viommu",
    "Region", "RegionMap", "RegionMapping", "Field", "Register", "RegisterBlock", "RegisterIO",
    "PciConfig", "EventFd", "Irq", "IrqMap", "IrqVector", "DmaBuffer", "DmaChunk", "DmaPool",
    "IovaAllocator", "map_buffer", "DeviceFeatures", "MigrationState", "open_attached",
]

# pyvfio.trace(): an ioctl trace (see pyvfio.backend.trace).
from .backend.trace import trace  # noqa: E402

__all__ += ["trace"]
