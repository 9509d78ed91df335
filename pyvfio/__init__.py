"""pyvfio: the Linux VFIO and iommufd userspace driver interface, in Python.

Layers, bottom up: :mod:`pyvfio._uapi` (the kernel's structs and constants,
compiled with cffi), :mod:`pyvfio.backend` (the syscalls: the real kernel or
:mod:`pyvfio.fake`), the objects (:class:`Container`, :class:`Group`,
:class:`IommuFd`, :class:`IOAS`, :class:`HWPT`, :class:`Device`).
"""

from __future__ import annotations

from ._uapi import ffi, lib
from .backend import Backend, MemoryMap, default_backend
from .core.caps import IovaRange
from .core.container import (
    Container,
    DmaMapping,
    Extension,
    Group,
    GroupStatus,
    IommuInfo,
    IommuType,
)
from .core.device import (
    Device,
    DeviceInfo,
    HotResetDevice,
    IrqInfo,
    PciIrq,
    PciRegion,
    RegionInfo,
    open_attached,
)
from .toolkit.dma import DmaBuffer, DmaChunk, DmaPool, IovaAllocator, map_buffer
from .errors import (
    ClosedError,
    InvalidArgumentError,
    IoctlError,
    NotViableError,
    UnsupportedError,
    VfioError,
)
from .core.features import DeviceFeatures, MigrationState
from .core.iommufd import (
    HWPT,
    IOAS,
    FaultQueue,
    HwInfo,
    HwInfoType,
    HwptDataType,
    HwQueue,
    IoasMapping,
    IommuFd,
    RlimitMode,
    Vdevice,
    Veventq,
    Viommu,
)
from .core.irq import EventFd, Irq, IrqMap, IrqVector
from .core.pci_config import PciConfig
from .core.region import Region, RegionMap, RegionMapping
from .core.registers import Field, Register, RegisterBlock, RegisterIO

__version__ = "0.1.0"

__all__ = [
    "ffi", "lib", "Backend", "MemoryMap", "default_backend", "IovaRange",
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
