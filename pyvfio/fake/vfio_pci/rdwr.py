"""Reading, writing and mapping the regions of the fake vfio-pci device
file (drivers/vfio/pci/vfio_pci_rdwr.c, with vfio_pci_rw and
vfio_pci_core_mmap of vfio_pci_core.c): BAR accesses in the widest
aligned pieces, the mappings of BARs, and ioeventfds.

A memory access that would raise SIGBUS on Linux (a mapped BAR while
memory decode is off, in D3hot or in low-power mode) raises
:class:`~pyvfio.fake.vfio_pci.BusError` instead.  A mapping of a BAR keeps
the device open after its fd is closed, as the kernel's VMA does.
Ioeventfds run when the fake next handles a call for the device (there
are no kernel threads): see :func:`vfio_pci_ioeventfd_poll`.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..._uapi import ffi, lib
from ...backend.base import MAP_SHARED, PROT_WRITE, IoctlArg, MemoryMap
from ..core import errno_error
from ..machine.pci import Bar
from ..uaccess import UserPtr
from .config import vfio_pci_config_rw, vfio_pci_memory_enabled
from .intrs import Eventfd
from .priv import (
    PAGE_SIZE,
    VFIO_PCI_CONFIG_REGION_INDEX,
    VFIO_PCI_NUM_REGIONS,
    VFIO_PCI_OFFSET_MASK,
    VFIO_PCI_OFFSET_SHIFT,
    VFIO_PCI_ROM_REGION_INDEX,
    VFIO_PCI_VGA_REGION_INDEX,
    BusError,
    offsetofend,
)

if TYPE_CHECKING:
    from .core import VfioPciCore
    from .vfio_main import VfioDeviceFile

__all__ = [
    "IoEventfd",
    "VFIO_PCI_IOEVENTFD_MAX",
    "device_read",
    "device_write",
    "vfio_pci_bar_rw",
    "vfio_pci_rw",
    "vfio_pci_core_mmap",
    "vfio_pci_ioctl_ioeventfd",
    "vfio_pci_ioeventfd_poll",
]

#: VFIO_PCI_IOEVENTFD_MAX: ioeventfds per device.
VFIO_PCI_IOEVENTFD_MAX = 1000


@dataclass
class IoEventfd:
    """An ioeventfd (``struct vfio_pci_ioeventfd``): a write of ``data`` to
    BAR ``bar`` at ``pos`` each time the eventfd is signalled.

    :param bar: the BAR index.
    :param pos: the offset in the BAR.
    :param data: the value written.
    :param count: the width of the write in bytes.
    :param eventfd: the user's eventfd.
    """

    bar: int
    pos: int
    data: int
    count: int
    eventfd: Eventfd


# -- one access of the device -----------------------------------------------------------------
def device_read(vdev: VfioPciCore, index: int, pos: int, width: int) -> int:
    """One read of the device's BAR ``index`` (all-ones for registers a
    variant driver's migration stopped)."""
    if vdev.migration is not None and vdev.migration.blocks_access(index, pos):
        return (1 << (8 * width)) - 1
    return vdev.model.bar_read(index, pos, width)


def device_write(vdev: VfioPciCore, index: int, pos: int, width: int, value: int) -> None:
    """One write of the device's BAR ``index`` (dropped for registers a
    variant driver's migration stopped)."""
    if vdev.migration is None or not vdev.migration.blocks_access(index, pos):
        vdev.model.bar_write(index, pos, width, value)


def vfio_pci_bar_rw(vdev: VfioPciCore, index: int, pos: int, data: bytes | None,
                    count: int) -> bytes | int:
    """vfio_pci_bar_rw + vfio_pci_core_do_io_rw."""
    bar = vdev.model.bars.get(index)
    if bar is None:
        # vfio_pci_bar_rw: EINVAL for a BAR the device lacks
        raise errno_error(errno.EINVAL, f"BAR{index} is not implemented")
    end = bar.size
    if pos >= end:
        raise errno_error(errno.EINVAL, f"offset {pos:#x} is beyond BAR{index}")
    count = min(count, end - pos)
    x_start = x_end = 0
    if index == vdev.msix_bar:
        x_start, x_end = vdev.msix_offset, vdev.msix_offset + vdev.msix_size
    test_mem = not bar.is_io
    out = bytearray()
    done = 0
    off = pos
    while done < count:
        remaining = count - done
        if off < x_start:
            fillable = min(remaining, x_start - off)
        elif off >= x_end:
            fillable = remaining
        else:
            fillable = 0
        if fillable >= 8 and off % 8 == 0:
            width = 8
        elif fillable >= 4 and off % 4 == 0:
            width = 4
        elif fillable >= 2 and off % 2 == 0:
            width = 2
        elif fillable:
            width = 1
        else:
            # vfio_pci_core_do_io_rw: the MSI-X table reads as all-ones,
            # writes to it are dropped
            filled = min(remaining, x_end - off)
            if data is None:
                out += b"\xff" * filled
            done += filled
            off += filled
            continue
        if test_mem and not vfio_pci_memory_enabled(vdev):
            # vfio_pci_iordwr*: EIO while memory decode is off
            raise errno_error(errno.EIO, "memory decode is disabled")
        if data is None:
            out += device_read(vdev, index, off, width).to_bytes(width, "little")
        else:
            device_write(vdev, index, off, width, int.from_bytes(data[done:done + width], "little"))
        done += width
        off += width
    return bytes(out) if data is None else done


def vfio_pci_rw(df: VfioDeviceFile, offset: int, data: bytes | None, size: int) -> bytes | int:
    """vfio_device_fops_read/write + vfio_pci_rw: the region the high bits
    of ``offset`` select."""
    if not df.access_granted:
        # vfio_device_fops_read/write: EINVAL until the cdev is bound
        raise errno_error(errno.EINVAL, "the device is not bound to an iommufd")
    if size == 0:
        return b"" if data is None else 0
    vdev = df.core
    index = offset >> VFIO_PCI_OFFSET_SHIFT
    pos = offset & VFIO_PCI_OFFSET_MASK
    if index >= VFIO_PCI_NUM_REGIONS:
        # vfio_pci_rw: EINVAL beyond the regions
        raise errno_error(errno.EINVAL, f"region index {index} out of range")
    vdev.poll()
    vdev.pm_get()
    try:
        if index == VFIO_PCI_CONFIG_REGION_INDEX:
            return vfio_pci_config_rw(vdev, pos, data, size)
        if index == VFIO_PCI_ROM_REGION_INDEX:
            raise errno_error(errno.EINVAL, "no option ROM")
        if index == VFIO_PCI_VGA_REGION_INDEX:
            raise errno_error(errno.EINVAL, "no VGA region")
        return vfio_pci_bar_rw(vdev, index, pos, data, size)
    finally:
        vdev.pm_put()


# -- ioeventfd --------------------------------------------------------------------------------
def vfio_pci_ioctl_ioeventfd(vdev: VfioPciCore, arg: IoctlArg) -> int:
    """vfio_pci_ioctl_ioeventfd + vfio_pci_ioeventfd."""
    ctype = "struct vfio_device_ioeventfd"
    minsz = offsetofend(ctype, "fd")
    ioe = UserPtr(arg).read_struct(ctype, 0, minsz)
    if int(ioe.argsz) < minsz:
        raise errno_error(errno.EINVAL, "argsz too small")
    flags = int(ioe.flags)
    if flags & ~lib.VFIO_DEVICE_IOEVENTFD_SIZE_MASK:
        raise errno_error(errno.EINVAL, "unknown flags")
    count = flags & lib.VFIO_DEVICE_IOEVENTFD_SIZE_MASK
    fd = int(ioe.fd)
    if bin(count).count("1") != 1 or fd < -1:
        # vfio_pci_ioctl_ioeventfd: exactly one size, fd >= -1
        raise errno_error(errno.EINVAL, "exactly one size, fd >= -1")
    offset = int(ioe.offset)
    data = int(ioe.data)
    index = offset >> VFIO_PCI_OFFSET_SHIFT
    pos = offset & VFIO_PCI_OFFSET_MASK
    bar = vdev.model.bars.get(index) if index <= 5 else None
    # vfio_pci_ioeventfd: only inside a BAR, never on the MSI-X table
    if bar is None or pos + count > bar.size:
        raise errno_error(errno.EINVAL, "not inside a BAR")
    if index == vdev.msix_bar and not (pos + count <= vdev.msix_offset
                                       or pos >= vdev.msix_offset + vdev.msix_size):
        raise errno_error(errno.EINVAL, "overlaps the MSI-X table")
    mask = (1 << (8 * count)) - 1
    for existing in vdev.ioeventfds:
        if (existing.bar, existing.pos, existing.data & mask, existing.count) == (index, pos, data & mask, count):
            if fd == -1:
                existing.eventfd.put()
                vdev.ioeventfds.remove(existing)
                return 0
            raise errno_error(errno.EEXIST, "the same ioeventfd exists")
    if fd == -1:
        raise errno_error(errno.ENODEV, "no such ioeventfd")
    if len(vdev.ioeventfds) >= VFIO_PCI_IOEVENTFD_MAX:
        raise errno_error(errno.ENOSPC, "too many ioeventfds")
    vdev.ioeventfds.append(IoEventfd(index, pos, data & mask, count, Eventfd(fd)))
    return 0


def vfio_pci_ioeventfd_poll(vdev: VfioPciCore) -> None:
    """Run the writes of signalled ioeventfds."""
    for ioe in list(vdev.ioeventfds):
        while ioe.eventfd.consume():
            # vfio_pci_ioeventfd_handler: the write, without the memory check
            device_write(vdev, ioe.bar, ioe.pos, ioe.count, ioe.data)


# -- mmap ---------------------------------------------------------------------------------------
def vfio_pci_core_mmap(df: VfioDeviceFile, length: int, prot: int, flags: int, offset: int) -> MemoryMap:
    """vfio_pci_core_mmap: a mapping of a BAR."""
    if not df.access_granted:
        raise errno_error(errno.EINVAL, "the device is not bound to an iommufd")
    if length <= 0 or offset % PAGE_SIZE:
        raise errno_error(errno.EINVAL, "bad length or unaligned offset")
    vdev = df.core
    index = offset >> VFIO_PCI_OFFSET_SHIFT
    if index >= VFIO_PCI_NUM_REGIONS:
        raise errno_error(errno.EINVAL, f"region index {index} out of range")
    if not flags & MAP_SHARED:
        raise errno_error(errno.EINVAL, "BARs must be mapped MAP_SHARED")
    if index >= VFIO_PCI_ROM_REGION_INDEX:
        raise errno_error(errno.EINVAL, "only BARs can be mapped")
    if not vdev.bar_mmap_supported.get(index):
        raise errno_error(errno.EINVAL, f"BAR{index} cannot be mapped")
    bar = vdev.model.bars[index]
    start = offset & VFIO_PCI_OFFSET_MASK
    phys_len = (bar.size + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
    length = (length + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
    if start + length > phys_len:
        raise errno_error(errno.EINVAL, "the mapping extends beyond the BAR")
    if index == vdev.msix_bar and not vdev.msix_mappable:
        t0 = vdev.msix_offset & ~(PAGE_SIZE - 1)
        t1 = (vdev.msix_offset + vdev.msix_size + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
        if start < t1 and t0 < start + length:
            raise errno_error(errno.EINVAL, "the MSI-X table cannot be mapped")
    if bar.ram:
        m: MemoryMap = _RamMap(df, index, bar, start, length, bool(prot & PROT_WRITE))
    else:
        m = _RegisterMap(df, index, bar, start, length, bool(prot & PROT_WRITE))
    df.get()
    vdev.maps.append(m)
    return m


_WIDTHS = frozenset((1, 2, 4, 8))
_READERS = {1: "pyvfio_read8", 2: "pyvfio_read16", 4: "pyvfio_read32", 8: "pyvfio_read64"}
_WRITERS = {1: "pyvfio_write8", 2: "pyvfio_write16", 4: "pyvfio_write32", 8: "pyvfio_write64"}


class _BarMap(MemoryMap):
    """A mapping of a BAR; accesses check what the kernel's fault handler
    checks (memory decode on, D0, no low-power)."""

    def __init__(self, file: VfioDeviceFile, index: int, bar: Bar, start: int, length: int, writable: bool) -> None:
        self.file = file
        self.index = index
        self.bar = bar
        self.start = start
        self.length = length
        self.writable = writable
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def _check(self, offset: int, width: int) -> None:
        self._check_args(offset, width)
        self._check_fault()

    def _check_args(self, offset: int, width: int) -> None:
        if self._closed:
            raise ValueError("the mapping is closed")
        if width not in (1, 2, 4, 8):
            raise ValueError(f"access width must be 1, 2, 4 or 8 bytes, not {width}")
        if offset < 0 or offset + width > self.length:
            raise ValueError(f"access of {width} bytes at offset {offset:#x} is outside the mapping")
        if offset % width:
            raise ValueError(f"offset {offset:#x} is not aligned to the access width {width}")

    def _check_fault(self) -> VfioPciCore:
        """What the fault handler checks; returns the device's core."""
        core = self.file.core
        if core.intx_ctx.unmask_fd is not None or core.ioeventfds:
            core.poll()
        if core.pm_runtime_engaged or core.suspended or not vfio_pci_memory_enabled(core):
            # vfio_pci_mmap_fault: VM_FAULT_SIGBUS
            raise BusError(f"BAR{self.index} access while memory decode is off or the device is in low power")
        return core

    def _range(self, offset: int, size: int) -> None:
        if self._closed:
            raise ValueError("the mapping is closed")
        if offset < 0 or size < 0 or offset + size > self.length:
            raise ValueError(f"range [{offset:#x}, {offset + size:#x}) is outside the mapping")

    def read_bytes(self, offset: int, size: int) -> bytes:
        self._range(offset, size)
        out = bytearray()
        pos = offset
        end = offset + size
        while pos < end:
            width = 8
            while width > 1 and (pos % width or pos + width > end):
                width //= 2
            out += self.read(pos, width).to_bytes(width, "little")
            pos += width
        return bytes(out)

    def write_bytes(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        payload = bytes(memoryview(data).cast("B"))
        self._range(offset, len(payload))
        pos = 0
        while pos < len(payload):
            width = 8
            at = offset + pos
            while width > 1 and (at % width or pos + width > len(payload)):
                width //= 2
            self.write(at, width, int.from_bytes(payload[pos:pos + width], "little"))
            pos += width

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._unmapped()
        with self.file.system.lock:
            self.file.unmap(self)

    def _unmapped(self) -> None:
        """Release the address range."""


class _RegisterMap(_BarMap):
    """A BAR served by register hooks: every access reaches the model with
    exactly the width used.  The address range is reserved (PROT_NONE)
    so that it is unique in this process; touching it directly faults."""

    def __init__(self, file: VfioDeviceFile, index: int, bar: Bar, start: int, length: int, writable: bool) -> None:
        super().__init__(file, index, bar, start, length, writable)
        err = ffi.new("int *")
        pointer = lib.pyvfio_mmap(ffi.NULL, length, 0, lib.PYVFIO_MAP_PRIVATE | lib.PYVFIO_MAP_ANONYMOUS, -1, 0, err)
        if pointer == ffi.NULL:
            raise OSError(err[0], os.strerror(err[0]))
        self._pointer = pointer
        self.address = int(ffi.cast("uintptr_t", pointer))
        self._lock = file.system.lock
        self._bar_size = bar.size

    def read(self, offset: int, width: int) -> int:
        with self._lock:
            if (self._closed or width not in _WIDTHS or offset < 0
                    or offset + width > self.length or offset % width):
                self._check_args(offset, width)
            core = self._check_fault()
            pos = self.start + offset
            if pos + width > self._bar_size:
                return (1 << (8 * width)) - 1  # beyond a sub-page BAR
            return device_read(core, self.index, pos, width)

    def write(self, offset: int, width: int, value: int) -> None:
        if not 0 <= value < 1 << (8 * width):
            raise ValueError(f"value {value:#x} does not fit in {width} bytes")
        with self._lock:
            if (self._closed or width not in _WIDTHS or offset < 0
                    or offset + width > self.length or offset % width):
                self._check_args(offset, width)
            core = self._check_fault()
            if not self.writable:
                raise BusError("write to a read-only mapping")
            pos = self.start + offset
            if pos + width > self._bar_size:
                return
            device_write(core, self.index, pos, width, value)

    def buffer(self) -> memoryview:
        raise BusError(f"BAR{self.index} is device registers: use read()/write() with a width")

    def _unmapped(self) -> None:
        lib.pyvfio_munmap(self._pointer, self.length)


class _RamMap(_BarMap):
    """A RAM-backed BAR: the mapping is the BAR's memory itself (the
    device's memory, not the user's: no user pointer is involved)."""

    def __init__(self, file: VfioDeviceFile, index: int, bar: Bar, start: int, length: int, writable: bool) -> None:
        super().__init__(file, index, bar, start, length, writable)
        self.address = bar.memory_address + start

    def read(self, offset: int, width: int) -> int:
        with self.file.system.lock:
            self._check(offset, width)
            return int(getattr(lib, _READERS[width])(self.address + offset))

    def write(self, offset: int, width: int, value: int) -> None:
        if not 0 <= value < 1 << (8 * width):
            raise ValueError(f"value {value:#x} does not fit in {width} bytes")
        with self.file.system.lock:
            self._check(offset, width)
            getattr(lib, _WRITERS[width])(self.address + offset, value)

    def read_bytes(self, offset: int, size: int) -> bytes:
        self._range(offset, size)
        return bytes(ffi.buffer(ffi.cast("char *", self.address + offset), size))

    def write_bytes(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        payload = bytes(memoryview(data).cast("B"))
        self._range(offset, len(payload))
        ffi.memmove(ffi.cast("char *", self.address + offset), payload, len(payload))

    def buffer(self) -> memoryview:
        if self._closed:
            raise ValueError("the mapping is closed")
        return memoryview(ffi.buffer(ffi.cast("char *", self.address), self.length))
