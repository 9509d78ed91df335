"""pyvfio: the Linux VFIO and iommufd userspace driver interface, in Python.

Layers, bottom up: :mod:`pyvfio._uapi` (the kernel's structs and constants,
compiled with cffi), :mod:`pyvfio.backend` (the syscalls: the real kernel or
:mod:`pyvfio.fake`), the objects (:class:`Container`, :class:`Group`,
:class:`IommuFd`, :class:`IOAS`, :class:`HWPT`, :class:`Device`) and the
driver toolkit on top of them (DMA buffers and pools, :func:`open_attached`).

The names in ``__all__`` are loaded on first use: ``import pyvfio`` itself
imports nothing else, and ``pyvfio.Device`` (or ``from pyvfio import
Device``) imports the module that defines it, once.  The subpackages
:mod:`pyvfio.core` and :mod:`pyvfio.toolkit` load their modules the same way
(``pyvfio.core.sysfs`` works after a bare ``import pyvfio``).
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (about 3 ms)
if TYPE_CHECKING:  # what type checkers and editors see; at run time see __getattr__
    from ._uapi import ffi, lib
    from .backend import Backend, MemoryMap, default_backend
    from .backend.trace import trace
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
    "trace",  # pyvfio.trace(): an ioctl trace (see pyvfio.backend.trace)
]

# The module (relative to this package) defining each name of __all__.  A new
# export is one entry here, one import in the TYPE_CHECKING block above and
# its name in __all__ (tests/test_lazy_import.py checks that the three agree).
_SOURCES = {
    "._uapi": ("ffi", "lib"),
    ".backend": ("Backend", "MemoryMap", "default_backend"),
    ".backend.trace": ("trace",),
    ".core.address_space": ("AddressSpace", "IovaMapping"),
    ".core.caps": ("IovaRange",),
    ".core.container": ("Container", "DmaMapping", "Extension", "IommuInfo", "IommuType"),
    ".core.device": ("Device", "DeviceInfo", "HotResetDevice", "IrqInfo", "PciIrq",
                     "PciRegion", "RegionInfo"),
    ".core.features": ("DeviceFeatures", "MigrationState"),
    ".core.group": ("Group", "GroupStatus"),
    ".core.hw_pagetable": ("HWPT", "FaultQueue", "HwInfo", "HwInfoType", "HwptDataType"),
    ".core.iommufd": ("IOAS", "IoasMapping", "IommuFd", "RlimitMode"),
    ".core.iova_allocator": ("IovaAllocator",),
    ".core.irq": ("EventFd", "Irq", "IrqMap", "IrqVector"),
    ".core.pci_config": ("PciConfig",),
    ".core.region": ("Region", "RegionMap", "RegionMapping"),
    ".core.registers": ("Field", "Register", "RegisterBlock", "RegisterIO"),
    ".core.viommu": ("HwQueue", "Vdevice", "Veventq", "Viommu"),
    ".errors": ("ClosedError", "InvalidArgumentError", "IoctlError", "NotViableError",
                "UnsupportedError", "VfioError"),
    ".toolkit.attach": ("open_attached",),
    ".toolkit.dma": ("DmaBuffer", "DmaChunk", "DmaPool", "map_buffer"),
}
#: The subpackages and modules that an eager ``import pyvfio`` loaded, which
#: code may reach as attributes (``pyvfio.core.sysfs``) without importing them.
_SUBPACKAGES = ("_uapi", "_sorted", "backend", "core", "errors", "toolkit")
_SOURCE_OF = {name: module for module, names in _SOURCES.items() for name in names}


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if not TYPE_CHECKING:  # a type checker sees the imports above (and no catch-all)
    def __getattr__(name: str) -> object:
        """Load a name of ``__all__`` from its module on first use (PEP 562);
        so are the modules a plain ``import pyvfio`` used to load."""
        import importlib

        module = _SOURCE_OF.get(name)
        if module is not None:
            value = getattr(importlib.import_module(module, __name__), name)
            globals()[name] = value  # later lookups do not come here
            return value
        if name in _SUBPACKAGES:
            return importlib.import_module(f"{__name__}.{name}")
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
