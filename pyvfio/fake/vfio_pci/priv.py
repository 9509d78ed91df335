"""What the modules of the fake vfio-pci driver share, as
drivers/vfio/pci/vfio_pci_priv.h and include/linux/vfio_pci_core.h share
it in the kernel: the region layout of the device file, the driver data
that finds a device's state from its ``pci_dev``, and the helpers for
the ``argsz``/capability-chain convention of the VFIO info ioctls."""

from __future__ import annotations

import mmap as _mmap
import weakref
from typing import TYPE_CHECKING, Any

from ..._uapi import ffi

if TYPE_CHECKING:
    from ..machine.system import PciDevice
    from .core import VfioPciCore

__all__ = [
    "VFIO_PCI_OFFSET_SHIFT",
    "VFIO_PCI_OFFSET_MASK",
    "VFIO_PCI_NUM_REGIONS",
    "VFIO_PCI_NUM_IRQS",
    "VFIO_PCI_ROM_REGION_INDEX",
    "VFIO_PCI_CONFIG_REGION_INDEX",
    "VFIO_PCI_VGA_REGION_INDEX",
    "IRQ_NONE",
    "PAGE_SIZE",
    "U32",
    "U64",
    "index_to_offset",
    "BusError",
    "core_of",
    "set_drvdata",
    "clear_drvdata",
    "offsetofend",
    "struct_bytes",
    "CapChain",
]

#: A region's offset in the device file is its index shifted left by this
#: many bits (VFIO_PCI_OFFSET_SHIFT of vfio_pci_core.h): BAR ``n`` starts
#: at byte ``n << 40``, config space at ``7 << 40``.
VFIO_PCI_OFFSET_SHIFT = 40
#: The byte offset inside a region (VFIO_PCI_OFFSET_MASK).
VFIO_PCI_OFFSET_MASK = (1 << VFIO_PCI_OFFSET_SHIFT) - 1
#: BAR0-5, ROM, config, VGA (VFIO_PCI_NUM_REGIONS).
VFIO_PCI_NUM_REGIONS = 9
#: INTx, MSI, MSI-X, ERR, REQ (VFIO_PCI_NUM_IRQS).
VFIO_PCI_NUM_IRQS = 5
#: VFIO_PCI_ROM_REGION_INDEX
VFIO_PCI_ROM_REGION_INDEX = 6
#: VFIO_PCI_CONFIG_REGION_INDEX
VFIO_PCI_CONFIG_REGION_INDEX = 7
#: VFIO_PCI_VGA_REGION_INDEX
VFIO_PCI_VGA_REGION_INDEX = 8
#: The kernel's "no interrupt mode" irq_type (VFIO_PCI_NUM_IRQS).
IRQ_NONE = VFIO_PCI_NUM_IRQS
#: The host's page size.
PAGE_SIZE = _mmap.PAGESIZE
#: All ones in a ``__u32``.
U32 = 0xFFFFFFFF
#: All ones in a ``__u64``.
U64 = (1 << 64) - 1


def index_to_offset(index: int) -> int:
    """VFIO_PCI_INDEX_TO_OFFSET: where region ``index`` starts in the file."""
    return index << VFIO_PCI_OFFSET_SHIFT


class BusError(Exception):
    """An access through a mapping that would raise SIGBUS on Linux."""


# -- driver data: dev_get_drvdata(&pdev->dev) while the device is open -------------------
_CORES: "weakref.WeakKeyDictionary[Any, VfioPciCore]" = weakref.WeakKeyDictionary()


def core_of(pdev: PciDevice) -> VfioPciCore | None:
    """The vfio-pci state of ``pdev`` while any of its files is open."""
    return _CORES.get(pdev)


def set_drvdata(pdev: PciDevice, core: VfioPciCore) -> None:
    """dev_set_drvdata: ``core`` is the state of ``pdev`` from now on."""
    _CORES[pdev] = core


def clear_drvdata(pdev: PciDevice, core: VfioPciCore | None = None) -> None:
    """Forget the state of ``pdev`` (only if it is ``core``, when given)."""
    if core is None or _CORES.get(pdev) is core:
        _CORES.pop(pdev, None)


# -- the argsz convention ------------------------------------------------------------------
def offsetofend(ctype: str, member: str) -> int:
    """offsetofend: the first byte after ``member`` of ``ctype``."""
    for name, f in ffi.typeof(ctype).fields:
        if name == member:
            return int(f.offset) + int(ffi.sizeof(f.type))
    raise KeyError(member)


def struct_bytes(ctype: str, **values: Any) -> bytes:
    """The bytes of a ``ctype`` with the given fields set, the rest zero."""
    obj = ffi.new(ctype + " *")
    for name, value in values.items():
        setattr(obj, name, value)
    return bytes(ffi.buffer(obj))


class CapChain:
    """A capability chain being built (``struct vfio_info_cap``):
    vfio_info_add_capability / vfio_info_cap_shift of vfio_main.c."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self._last: int | None = None

    def add(self, data: bytes) -> None:
        """vfio_info_cap_add: append a capability (8-byte aligned) and link
        the previous one's ``next`` to it."""
        offset = (len(self.buf) + 7) & ~7
        self.buf.extend(b"\0" * (offset - len(self.buf)))
        if self._last is not None:
            self.buf[self._last + 4:self._last + 8] = offset.to_bytes(4, "little")
        self.buf.extend(data)
        self._last = offset

    @property
    def size(self) -> int:
        """The bytes of the chain."""
        return len(self.buf)

    def shifted(self, shift: int) -> bytes:
        """vfio_info_cap_shift: the chain with every ``next`` moved by
        ``shift`` (where it lands in the user's buffer)."""
        out = bytearray(self.buf)
        pos = 0
        while True:
            nxt = int.from_bytes(out[pos + 4:pos + 8], "little")
            if not nxt:
                break
            out[pos + 4:pos + 8] = (nxt + shift).to_bytes(4, "little")
            pos = nxt
        return bytes(out)
