"""Legacy VFIO: the container (``/dev/vfio/vfio``), group files
(``/dev/vfio/N``) and the type1 IOMMU, after drivers/vfio/container.c,
group.c and vfio_iommu_type1.c of Linux 7.3.

Every check below carries a comment naming the kernel function whose rule
it mirrors; checks run in the kernel's order so that a call breaking two
rules fails with the same errno as on Linux.

Contract with the vfio-pci device file (:mod:`pyvfio.fake.vfio_pci`):

* ``VFIO_GROUP_GET_DEVICE_FD`` finds the device, checks that the group has a
  container or an iommufd (``EINVAL`` otherwise, vfio_df_group_open) and
  calls ``vfio_pci.open_device_file(kernel, pdev, cdev=False,
  group_file=group_file)``.
* On the device's *first* open (open count 0 -> 1) the device file calls
  ``group_file.use_container(pdev)`` when ``group_file.iommufd`` is None
  (vfio_device_group_use_iommu: ``EINVAL`` without an IOMMU driver set),
  or binds the device to ``group_file.iommufd`` otherwise; on the *last*
  close it calls ``group_file.unuse_container(pdev)`` (resp. unbinds).
  While a device uses the container the group file stays alive even if
  its fd is closed, and VFIO_GROUP_UNSET_CONTAINER fails with ``EBUSY``.
* A device file exposes its :class:`~pyvfio.fake.system.PciDevice` as the
  attribute ``pdev`` (the system counts open files through it).

Differences from the kernel: the type1 IOMMU keeps one I/O page table for
all groups of a container (the kernel shares one domain between groups
of the same IOMMU anyway); pinning checks the whole user range before
charging RLIMIT_MEMLOCK, so a mapping that is both partly unmapped and
over the limit fails with ``EFAULT`` where the kernel may say ``ENOMEM``.
"""

from __future__ import annotations

import errno
import importlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator

from ..._uapi import ffi, lib  # type: ignore[import-not-found,unused-ignore]
from ...backend.base import IoctlArg
from ..core import FakeBackend, FakeFile, IoDomain, IommuFault, errno_error
from ..intervals import IntervalMap

if TYPE_CHECKING:
    from ..machine.system import PciDevice, System, VfioGroup

__all__ = ["ContainerFile", "GroupFile", "Type1Iommu", "open_device_file"]

_U64 = (1 << 64) - 1
_ULONG = _U64
#: TASK_SIZE_MAX on x86-64: user addresses end below 1 << 47.
_TASK_SIZE_MAX = (1 << 47) - 4096
#: __VFIO_RESERVED_TYPE1_NESTING_IOMMU: accepted by SET_IOMMU's open as v2,
#: never reported by CHECK_EXTENSION.
_TYPE1_NESTING = 6
#: DIRTY_BITMAP_PAGES_MAX / DIRTY_BITMAP_SIZE_MAX
_DIRTY_BITMAP_PAGES_MAX = (1 << 31) - 1
_DIRTY_BITMAP_SIZE_MAX = ((_DIRTY_BITMAP_PAGES_MAX + 63) // 64) * 8
_IOMMU_READ = 1
_IOMMU_WRITE = 2
_PAGE_SIZE = 4096
_PAGE_MASK = _ULONG & ~(_PAGE_SIZE - 1)


def open_device_file(kernel: FakeBackend, pdev: PciDevice, *, cdev: bool,
                     group_file: GroupFile | None = None) -> FakeFile:
    """Open a vfio-pci device file (``pyvfio.fake.vfio_pci``)."""
    vfio_pci = importlib.import_module("..vfio_pci", __package__)
    file: FakeFile = vfio_pci.open_device_file(kernel, pdev, cdev=cdev, group_file=group_file)
    return file


# -- user memory access ------------------------------------------------------------
def _arg_int(arg: IoctlArg) -> int:
    """The ioctl argument as the kernel's ``unsigned long``."""
    if isinstance(arg, int):
        return arg & _ULONG
    return int(ffi.cast("uintptr_t", arg))


def _ffs(value: int) -> int:
    """__ffs: index of the lowest set bit (64 for zero, like tzcnt)."""
    return (value & -value).bit_length() - 1 if value else 64


def _to_int(value: Any) -> int:
    if isinstance(value, int):
        return value
    return int(ffi.cast("uintptr_t", value))


class _UserPtr:
    """A user pointer from an ioctl argument, with copy_from_user /
    copy_to_user semantics (EFAULT for memory the caller does not own).

    For cffi arrays and struct pointers the extent of the object is known
    and bounds the access; raw integer addresses are checked against the
    process's mappings.
    """

    def __init__(self, system: System, arg: IoctlArg | int) -> None:
        self.system = system
        self.extent: int | None = None
        if isinstance(arg, int):
            self.address = arg & _ULONG
        else:
            self.address = int(ffi.cast("uintptr_t", arg))
            # A cffi array knows its size; a struct pointer does not (the
            # caller may have cast a larger buffer, as the kernel only trusts
            # argsz): those are checked against the process's mappings.
            if ffi.typeof(arg).kind == "array":
                self.extent = ffi.sizeof(arg)

    def check(self, offset: int, length: int, write: bool) -> None:
        if length <= 0:
            return
        if self.address == 0:
            raise errno_error(errno.EFAULT, "NULL user pointer")
        if self.extent is not None:
            if offset < 0 or offset + length > self.extent:
                raise errno_error(errno.EFAULT, f"access of {length} bytes at offset {offset} "
                                  f"is outside the {self.extent}-byte argument")
            return
        self.system.user_memory.check(self.address + offset, length, write)

    def struct(self, ctype: str, offset: int = 0, length: int | None = None,
               write: bool = False) -> Any:
        """A ``ctype *`` at ``offset``, after checking ``length`` bytes
        (default: the struct's size)."""
        size = ffi.sizeof(ctype) if length is None else length
        self.check(offset, size, write)
        return ffi.cast(ctype + " *", self.address + offset)

    def read(self, offset: int, length: int) -> bytes:
        self.check(offset, length, False)
        return bytes(ffi.buffer(ffi.cast("char *", self.address + offset), length))

    def write(self, offset: int, data: bytes) -> None:
        self.check(offset, len(data), True)
        ffi.memmove(ffi.cast("char *", self.address + offset), data, len(data))

    def strndup(self, limit: int) -> bytes:
        """strndup_user: the NUL-terminated string (EINVAL if longer than
        ``limit`` bytes, EFAULT if unreadable)."""
        out = bytearray()
        pos = 0
        while pos < limit:
            if self.extent is not None:
                chunk_len = self.extent - pos
                if chunk_len <= 0:
                    raise errno_error(errno.EFAULT, "unterminated string")
            else:
                chunk_len = _PAGE_SIZE - ((self.address + pos) % _PAGE_SIZE)
            chunk_len = min(chunk_len, limit - pos)
            chunk = self.read(pos, chunk_len)
            nul = chunk.find(b"\0")
            if nul >= 0:
                out += chunk[:nul]
                return bytes(out)
            out += chunk
            pos += chunk_len
        # strndup_user: EINVAL when there is no NUL within the limit
        raise errno_error(errno.EINVAL, f"string longer than {limit - 1} bytes")


def _access_ok(address: int, size: int) -> bool:
    return address + size <= _TASK_SIZE_MAX and address <= _TASK_SIZE_MAX


# -- the type1 IOMMU ------------------------------------------------------------------
@dataclass
class _Dma:
    iova: int
    size: int
    vaddr: int
    prot: int
    pinned: int = 0  # pages charged to RLIMIT_MEMLOCK
    vaddr_invalid: bool = False
    iommu_mapped: bool = False
    bitmap: int | None = None  # one bit per minimum IOMMU page, while dirty tracking

    @property
    def last(self) -> int:
        return self.iova + self.size - 1


class Type1Iommu(IoDomain):
    """The vfio_iommu_type1 driver's state for one container (struct
    vfio_iommu) and, once a group is attached, the I/O page table the
    container's devices DMA through."""

    def __init__(self, system: System, v2: bool) -> None:
        self.system = system
        self.v2 = v2
        self.dma: IntervalMap[_Dma] = IntervalMap()
        # vfio_iommu_type1_open: dma_avail starts at the dma_entry_limit parameter
        self.dma_avail: int = int(system.type1_params["dma_entry_limit"])
        self.vaddr_invalid_count = 0
        self.pgsize_bitmap = _PAGE_MASK
        self.iova_list: list[list[int]] = []
        self.groups: list[VfioGroup] = []
        self.dirty_page_tracking = False
        self.num_non_pinned_groups = 0

    # -- IoDomain ------------------------------------------------------------------
    def translate(self, iova: int, length: int, write: bool) -> list[tuple[int, int]]:
        """Walk the container's DMA mappings: IommuFault for a byte no
        mapping covers or one mapped without the needed IOMMU_READ /
        IOMMU_WRITE permission."""
        runs: list[tuple[int, int]] = []
        pos = iova
        end = iova + length
        while pos < end:
            hit = self.dma.find(pos)
            if hit is None:
                raise IommuFault(pos, end - pos, write, "IOVA not mapped in the type1 IOMMU")
            start, last, dma = hit
            need = _IOMMU_WRITE if write else _IOMMU_READ
            if not dma.prot & need:
                what = "writable" if write else "readable"
                raise IommuFault(pos, end - pos, write, f"IOVA mapped but not {what} by the device")
            n = min(end, last + 1) - pos
            runs.append((dma.vaddr + (pos - start), n))
            pos += n
        return runs

    def note_dirty(self, iova: int, length: int) -> None:
        """While dirty page tracking is on (VFIO_IOMMU_DIRTY_PAGES_FLAG_START),
        set the bits of the minimum-size IOMMU pages the device wrote in
        each mapping's bitmap."""
        if not self.dirty_page_tracking or length <= 0:
            return
        shift = _ffs(self.pgsize_bitmap)
        for start, last, dma in self.dma.overlapping(iova, iova + length - 1):
            if dma.bitmap is None:
                continue
            lo = (max(iova, start) - start) >> shift
            hi = (min(iova + length - 1, last) - start) >> shift
            dma.bitmap |= ((1 << (hi - lo + 1)) - 1) << lo

    # -- helpers ---------------------------------------------------------------------
    @property
    def min_pgsize(self) -> int:
        """The smallest IOMMU page size in bytes (the lowest bit of
        ``pgsize_bitmap``): the alignment of every map and unmap."""
        return 1 << _ffs(self.pgsize_bitmap)

    def _find_dma(self, start: int, size: int) -> _Dma | None:
        """vfio_find_dma: a mapping overlapping ``[start, start + size)``."""
        hit = next(self.dma.overlapping(start, min(start + size - 1, _U64)), None)
        return hit[2] if hit else None

    def _iova_dma_valid(self, start: int, end: int) -> bool:
        """vfio_iommu_iova_dma_valid."""
        if not self.iova_list:
            return True
        return any(start >= lo and end <= hi for lo, hi in self.iova_list)

    def _update_pgsize_bitmap(self) -> None:
        """vfio_update_pgsize_bitmap."""
        bitmap = _ULONG
        if self.groups and self.system.iommu is not None:
            bitmap &= self.system.iommu.pgsize_bitmap
        if bitmap & ~_PAGE_MASK & _ULONG:
            bitmap &= _PAGE_MASK
            bitmap |= _PAGE_SIZE
        self.pgsize_bitmap = bitmap

    def _remove_dma(self, dma: _Dma) -> None:
        """vfio_remove_dma: unmap, unpin, free the entry."""
        self.dma.remove(dma.iova)
        if dma.pinned:
            self.system.user_memory.unpin(dma.pinned)
            dma.pinned = 0
        if dma.vaddr_invalid:
            self.vaddr_invalid_count -= 1
        self.dma_avail += 1

    def unmap_unpin_all(self) -> None:
        """vfio_iommu_unmap_unpin_all."""
        for _start, _last, dma in list(self.dma):
            self._remove_dma(dma)

    # -- groups --------------------------------------------------------------------------
    def attach_group(self, vgroup: VfioGroup) -> None:
        """vfio_iommu_type1_attach_group."""
        iommu = self.system.iommu
        group = vgroup.iommu_group
        assert iommu is not None and group is not None
        if self.vaddr_invalid_count:
            # vfio_iommu_type1_attach_group: EBUSY while vaddrs are invalidated
            raise errno_error(errno.EBUSY, "DMA mappings with invalidated vaddr exist")
        if vgroup in self.groups:
            # vfio_iommu_type1_attach_group: EINVAL for a group already attached
            raise errno_error(errno.EINVAL, "group already attached")
        start, end = iommu.aperture
        if self._aper_conflict(start, end):
            # vfio_iommu_aper_conflict: EINVAL if existing mappings fall outside the aperture
            raise errno_error(errno.EINVAL, "existing DMA mappings are outside the aperture")
        resv = group.reserved_regions
        if self._resv_conflict(resv):
            # vfio_iommu_resv_conflict: EINVAL if a mapping overlaps a reserved region
            raise errno_error(errno.EINVAL, "existing DMA mappings overlap a reserved region")
        iova_copy = [list(r) for r in self.iova_list]
        iova_copy = _aper_resize(iova_copy, start, end)
        iova_copy = _resv_exclude(iova_copy, resv)
        if not iova_copy:
            # vfio_iommu_resv_exclude: EINVAL when nothing usable is left
            raise errno_error(errno.EINVAL, "no usable IOVA range left")
        if not self.system.type1_params["allow_unsafe_interrupts"] and not iommu.interrupt_remapping:
            # vfio_iommu_type1_attach_group: EPERM without interrupt remapping
            raise errno_error(errno.EPERM, "no interrupt remapping support")
        group.attach_domain(vgroup, self)
        self.groups.append(vgroup)
        self._update_pgsize_bitmap()
        self.iova_list = iova_copy
        self.num_non_pinned_groups += 1

    def detach_group(self, vgroup: VfioGroup) -> None:
        """vfio_iommu_type1_detach_group."""
        if vgroup not in self.groups:
            return
        iova_copy = [list(r) for r in self.iova_list]
        self.groups.remove(vgroup)
        if vgroup.iommu_group is not None:
            vgroup.iommu_group.detach_domain(vgroup)
        if not self.groups:
            # the last group of the last domain: everything is unmapped
            self.unmap_unpin_all()
            if iova_copy:  # vfio_iommu_aper_expand
                iova_copy[0][0] = 0
                iova_copy[-1][1] = _U64
            self._update_pgsize_bitmap()
        refreshed = self._resv_refresh(iova_copy)
        if refreshed is not None:
            self.iova_list = refreshed
        self.num_non_pinned_groups -= 1
        if self.dirty_page_tracking:
            self._populate_bitmap_full()

    def release(self) -> None:
        """vfio_iommu_type1_release."""
        self.unmap_unpin_all()
        for vgroup in list(self.groups):
            if vgroup.iommu_group is not None:
                vgroup.iommu_group.detach_domain(vgroup)
        self.groups.clear()
        self.iova_list = []

    def _aper_conflict(self, start: int, end: int) -> bool:
        """vfio_iommu_aper_conflict."""
        if not self.iova_list:
            return False
        first, last = self.iova_list[0], self.iova_list[-1]
        if start > last[1] or end < first[0]:
            return True
        if start > first[0] and self._find_dma(first[0], start - first[0]):
            return True
        if end < last[1] and self._find_dma(end + 1, last[1] - end):
            return True
        return False

    def _resv_conflict(self, resv: list[Any]) -> bool:
        """vfio_iommu_resv_conflict."""
        return any(r.type != "direct-relaxable" and self._find_dma(r.start, r.last - r.start + 1)
                   for r in resv)

    def _resv_refresh(self, iova_copy: list[list[int]]) -> list[list[int]] | None:
        """vfio_iommu_resv_refresh: None when it fails (the list is kept)."""
        if not iova_copy:
            return None
        resv = []
        for vg in self.groups:
            if vg.iommu_group is not None:
                resv += vg.iommu_group.reserved_regions
        start, end = iova_copy[0][0], iova_copy[-1][1]
        out = _resv_exclude(_aper_resize([], start, end), resv)
        return out or None

    def _populate_bitmap_full(self) -> None:
        shift = _ffs(self.pgsize_bitmap)
        for _s, _l, dma in self.dma:
            if dma.bitmap is not None:
                dma.bitmap = (1 << (dma.size >> shift)) - 1

    # -- ioctls ---------------------------------------------------------------------------
    def check_extension(self, arg: int) -> int:
        """VFIO_CHECK_EXTENSION on a container with this IOMMU set
        (vfio_iommu_type1_check_extension): 1 for the type1 extensions
        it supports, 0 otherwise."""
        return _type1_check_extension(self.system, self, arg)

    def ioctl(self, request: int, arg: IoctlArg) -> int:
        """vfio_iommu_type1_ioctl."""
        if request == lib.VFIO_CHECK_EXTENSION:
            return self.check_extension(_arg_int(arg))
        if request == lib.VFIO_IOMMU_GET_INFO:
            return self._get_info(arg)
        if request == lib.VFIO_IOMMU_MAP_DMA:
            return self._map_dma(arg)
        if request == lib.VFIO_IOMMU_UNMAP_DMA:
            return self._unmap_dma(arg)
        if request == lib.VFIO_IOMMU_DIRTY_PAGES:
            return self._dirty_pages(arg)
        raise errno_error(errno.ENOTTY)

    def _caps(self) -> bytes:
        """The capability chain of GET_INFO (offsets relative to the chain)."""
        chain: list[bytes] = []

        def add(body: bytes) -> None:
            chain.append(body + b"\0" * (-len(body) % 8))

        mig = ffi.new("struct vfio_iommu_type1_info_cap_migration *")
        mig.header.id = lib.VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION
        mig.header.version = 1
        mig.flags = 0
        mig.pgsize_bitmap = self.min_pgsize
        mig.max_dirty_bitmap_size = _DIRTY_BITMAP_SIZE_MAX
        add(bytes(ffi.buffer(mig)))
        avail = ffi.new("struct vfio_iommu_type1_info_dma_avail *")
        avail.header.id = lib.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL
        avail.header.version = 1
        avail.avail = self.dma_avail
        add(bytes(ffi.buffer(avail)))
        if self.iova_list:
            cap = ffi.new("struct vfio_iommu_type1_info_cap_iova_range *")
            cap.header.id = lib.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE
            cap.header.version = 1
            cap.nr_iovas = len(self.iova_list)
            ranges = ffi.new("struct vfio_iova_range[]", len(self.iova_list))
            for i, (lo, hi) in enumerate(self.iova_list):
                ranges[i].start = lo
                ranges[i].end = hi
            add(bytes(ffi.buffer(cap, ffi.sizeof("struct vfio_iommu_type1_info_cap_iova_range")))
                + bytes(ffi.buffer(ranges)))
        # link the chain: each header's next is the offset of the following cap
        out = bytearray()
        offsets = []
        for body in chain:
            offsets.append(len(out))
            out += body
        hdr_next = ffi.offsetof("struct vfio_info_cap_header", "next")
        for i, off in enumerate(offsets[:-1]):
            out[off + hdr_next:off + hdr_next + 4] = offsets[i + 1].to_bytes(4, "little")
        return bytes(out)

    def _get_info(self, arg: IoctlArg) -> int:
        """vfio_iommu_type1_get_info."""
        user = _UserPtr(self.system, arg)
        info_size = ffi.sizeof("struct vfio_iommu_type1_info")
        minsz = ffi.offsetof("struct vfio_iommu_type1_info", "iova_pgsizes") + 8
        head = user.struct("struct vfio_iommu_type1_info", length=minsz)
        argsz = int(head.argsz)
        if argsz < minsz:
            # vfio_iommu_type1_get_info: EINVAL when argsz is below the minimum
            raise errno_error(errno.EINVAL, f"argsz {argsz} < {minsz}")
        copy = min(argsz, info_size)
        info = ffi.new("struct vfio_iommu_type1_info *")
        info.argsz = argsz
        info.flags = lib.VFIO_IOMMU_INFO_PGSIZES
        info.iova_pgsizes = self.pgsize_bitmap
        caps = self._caps()
        if caps:
            info.flags |= lib.VFIO_IOMMU_INFO_CAPS
            if argsz < info_size + len(caps):
                # vfio_iommu_type1_get_info: report the size needed, no caps
                info.argsz = info_size + len(caps)
            else:
                hdr_next = ffi.offsetof("struct vfio_info_cap_header", "next")
                shifted = bytearray(caps)
                pos = 0
                while True:  # vfio_info_cap_shift
                    nxt = int.from_bytes(shifted[pos + hdr_next:pos + hdr_next + 4], "little")
                    if not nxt:
                        break
                    shifted[pos + hdr_next:pos + hdr_next + 4] = (nxt + info_size).to_bytes(4, "little")
                    pos = nxt
                user.write(info_size, bytes(shifted))
                info.cap_offset = info_size
        user.write(0, bytes(ffi.buffer(info))[:copy])
        return 0

    def _map_dma(self, arg: IoctlArg) -> int:
        """vfio_iommu_type1_map_dma + vfio_dma_do_map."""
        user = _UserPtr(self.system, arg)
        minsz = ffi.offsetof("struct vfio_iommu_type1_dma_map", "size") + 8
        m = user.struct("struct vfio_iommu_type1_dma_map", length=minsz)
        mask = lib.VFIO_DMA_MAP_FLAG_READ | lib.VFIO_DMA_MAP_FLAG_WRITE | lib.VFIO_DMA_MAP_FLAG_VADDR
        flags = int(m.flags)
        if int(m.argsz) < minsz or flags & ~mask:
            # vfio_iommu_type1_map_dma: EINVAL for a short argsz or unknown flags
            raise errno_error(errno.EINVAL, "bad argsz or flags")
        iova, vaddr, size = int(m.iova), int(m.vaddr), int(m.size)
        set_vaddr = bool(flags & lib.VFIO_DMA_MAP_FLAG_VADDR)
        if not size:
            # vfio_dma_do_map: EINVAL for a zero size
            raise errno_error(errno.EINVAL, "size is 0")
        if iova + size - 1 > _U64 or vaddr + size - 1 > _U64:
            # vfio_dma_do_map: EOVERFLOW when iova or vaddr + size wraps
            raise errno_error(errno.EOVERFLOW, "iova or vaddr + size overflows")
        iova_end = iova + size - 1
        prot = 0
        if flags & lib.VFIO_DMA_MAP_FLAG_WRITE:
            prot |= _IOMMU_WRITE
        if flags & lib.VFIO_DMA_MAP_FLAG_READ:
            prot |= _IOMMU_READ
        if (prot and set_vaddr) or (not prot and not set_vaddr):
            # vfio_dma_do_map: EINVAL unless exactly one of READ/WRITE and VADDR
            raise errno_error(errno.EINVAL, "READ/WRITE and VADDR are exclusive, one is needed")
        pgsize = self.min_pgsize
        if (size | iova | vaddr) & (pgsize - 1):
            # vfio_dma_do_map: EINVAL when size, iova or vaddr is not aligned
            # to the minimum IOMMU page size
            raise errno_error(errno.EINVAL, f"not aligned to the IOMMU page size {pgsize:#x}")
        dma = self._find_dma(iova, size)
        if set_vaddr:
            if dma is None:
                # vfio_dma_do_map: ENOENT for VADDR without a mapping
                raise errno_error(errno.ENOENT, "no mapping at iova")
            if not dma.vaddr_invalid or dma.iova != iova or dma.size != size:
                # vfio_dma_do_map: EINVAL for VADDR unless it matches an
                # invalidated mapping exactly
                raise errno_error(errno.EINVAL, "VADDR must match an invalidated mapping")
            dma.vaddr = vaddr
            dma.vaddr_invalid = False
            self.vaddr_invalid_count -= 1
            return 0
        if dma is not None:
            # vfio_dma_do_map: EEXIST when the range overlaps a mapping
            raise errno_error(errno.EEXIST, f"overlaps [{dma.iova:#x}, {dma.last:#x}]")
        if not self.dma_avail:
            # vfio_dma_do_map: ENOSPC past dma_entry_limit mappings
            raise errno_error(errno.ENOSPC, "dma_entry_limit reached")
        if not self._iova_dma_valid(iova, iova_end):
            # vfio_dma_do_map: EINVAL outside the usable IOVA ranges
            raise errno_error(errno.EINVAL, "outside the valid IOVA ranges")
        new = _Dma(iova, size, vaddr, prot)
        self.dma_avail -= 1
        self.dma.insert(iova, iova_end, new)
        if self.groups:
            try:
                self._pin(new)
            except OSError:
                # vfio_pin_map_dma: a failed pin removes the mapping
                self._remove_dma(new)
                raise
        if self.dirty_page_tracking:
            new.bitmap = 0
        return 0

    def _pin(self, dma: _Dma) -> None:
        """vfio_pin_pages_remote for the whole mapping."""
        # vaddr_get_pfns: EFAULT for memory that is not mapped (writable for
        # a device-writable mapping)
        self.system.user_memory.check(dma.vaddr, dma.size, bool(dma.prot & _IOMMU_WRITE))
        pages = dma.size // self.system.page_size
        # vfio_pin_pages_remote: ENOMEM past RLIMIT_MEMLOCK
        self.system.user_memory.pin(pages)
        dma.pinned = pages
        dma.iommu_mapped = True

    def _unmap_dma(self, arg: IoctlArg) -> int:
        """vfio_iommu_type1_unmap_dma."""
        user = _UserPtr(self.system, arg)
        minsz = ffi.offsetof("struct vfio_iommu_type1_dma_unmap", "size") + 8
        u = user.struct("struct vfio_iommu_type1_dma_unmap", length=minsz)
        flags = int(u.flags)
        argsz = int(u.argsz)
        mask = (lib.VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP | lib.VFIO_DMA_UNMAP_FLAG_VADDR
                | lib.VFIO_DMA_UNMAP_FLAG_ALL)
        if argsz < minsz or flags & ~mask:
            # vfio_iommu_type1_unmap_dma: EINVAL for a short argsz or unknown flags
            raise errno_error(errno.EINVAL, "bad argsz or flags")
        get_bitmap = bool(flags & lib.VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP)
        if get_bitmap and flags & (lib.VFIO_DMA_UNMAP_FLAG_ALL | lib.VFIO_DMA_UNMAP_FLAG_VADDR):
            # vfio_iommu_type1_unmap_dma: EINVAL for GET_DIRTY_BITMAP with ALL or VADDR
            raise errno_error(errno.EINVAL, "GET_DIRTY_BITMAP excludes ALL and VADDR")
        bitmap: tuple[int, int, int] | None = None
        if get_bitmap:
            bsize = ffi.sizeof("struct vfio_bitmap")
            if argsz < minsz + bsize:
                # vfio_iommu_type1_unmap_dma: EINVAL without room for struct vfio_bitmap
                raise errno_error(errno.EINVAL, "argsz leaves no room for the bitmap")
            b = user.struct("struct vfio_bitmap", offset=minsz)
            bitmap = (int(b.pgsize), int(b.size), _to_int(b.data))
            if not _access_ok(bitmap[2], bitmap[1]):
                # vfio_iommu_type1_unmap_dma: EINVAL for a bitmap outside user space
                raise errno_error(errno.EINVAL, "bitmap is not in user space")
            _verify_bitmap_size(int(u.size) >> _ffs(bitmap[0]), bitmap[1])
        unmapped = self._do_unmap(int(u.iova), int(u.size), flags, bitmap)
        u = user.struct("struct vfio_iommu_type1_dma_unmap", length=minsz, write=True)
        u.size = unmapped
        return 0

    def _do_unmap(self, iova: int, size: int, flags: int,
                  bitmap: tuple[int, int, int] | None) -> int:
        """vfio_dma_do_unmap: returns the size unmapped."""
        unmap_all = bool(flags & lib.VFIO_DMA_UNMAP_FLAG_ALL)
        invalidate_vaddr = bool(flags & lib.VFIO_DMA_UNMAP_FLAG_VADDR)
        pgsize = self.min_pgsize
        if iova & (pgsize - 1):
            # vfio_dma_do_unmap: EINVAL for an iova not aligned to the minimum page size
            raise errno_error(errno.EINVAL, f"iova not aligned to {pgsize:#x}")
        if unmap_all:
            if iova or size:
                # vfio_dma_do_unmap: EINVAL for ALL with a non-zero iova or size
                raise errno_error(errno.EINVAL, "UNMAP_ALL needs iova and size 0")
            iova_end = _U64
        else:
            if not size or size & (pgsize - 1):
                # vfio_dma_do_unmap: EINVAL for a zero or unaligned size
                raise errno_error(errno.EINVAL, "size is 0 or not aligned")
            if iova + size - 1 > _U64:
                # vfio_dma_do_unmap: EOVERFLOW when iova + size wraps
                raise errno_error(errno.EOVERFLOW, "iova + size overflows")
            iova_end = iova + size - 1
        if bitmap is not None and (not self.dirty_page_tracking or bitmap[0] != pgsize):
            # vfio_dma_do_unmap: EINVAL for a dirty bitmap without tracking or
            # with a page size other than the minimum
            raise errno_error(errno.EINVAL, "dirty tracking off or wrong bitmap page size")
        if self.v2 and not unmap_all:
            dma = self._find_dma(iova, 1)
            if dma is not None and dma.iova != iova:
                # vfio_dma_do_unmap (v2): EINVAL when the range starts inside a mapping
                raise errno_error(errno.EINVAL, "unmap would split a mapping at its start")
            dma = self._find_dma(iova_end, 1)
            if dma is not None and dma.last != iova_end:
                # vfio_dma_do_unmap (v2): EINVAL when the range ends inside a mapping
                raise errno_error(errno.EINVAL, "unmap would split a mapping at its end")
        unmapped = 0
        victims = [d for _s, _l, d in self.dma.overlapping(iova, iova_end)]
        done: list[_Dma] = []
        for dma in victims:
            if not self.v2 and iova > dma.iova:
                # v1: a range starting inside a mapping unmaps nothing more
                break
            if invalidate_vaddr:
                if dma.vaddr_invalid:
                    # vfio_dma_do_unmap: EINVAL when a mapping's vaddr is
                    # already invalid; the ones just invalidated are restored
                    for prev in done:
                        prev.vaddr_invalid = False
                        self.vaddr_invalid_count -= 1
                    raise errno_error(errno.EINVAL, "vaddr already invalidated")
                dma.vaddr_invalid = True
                self.vaddr_invalid_count += 1
                done.append(dma)
                unmapped += dma.size
                continue
            if bitmap is not None:
                self._update_user_bitmap(bitmap[2], dma, iova, pgsize)
            unmapped += dma.size
            self._remove_dma(dma)
        return unmapped

    def _update_user_bitmap(self, user_bitmap: int, dma: _Dma, base_iova: int,
                            pgsize: int) -> None:
        """update_user_bitmap: OR the mapping's dirty bits into the user's
        bitmap at the mapping's offset from ``base_iova``."""
        pgshift = _ffs(pgsize)
        nbits = dma.size >> pgshift
        bit_offset = (dma.iova - base_iova) >> pgshift
        copy_offset = bit_offset // 64
        shift = bit_offset % 64
        bits = dma.bitmap or 0
        # mark everything dirty when a device that cannot report dirty pages
        # (any physical device) is attached and the pages are mapped
        if self.num_non_pinned_groups and dma.iommu_mapped:
            bits = (1 << nbits) - 1
        user = _UserPtr(self.system, user_bitmap)
        if shift:
            leftover = int.from_bytes(user.read(copy_offset * 8, 8), "little")
            bits = (bits << shift) | (leftover & ((1 << shift) - 1))
        nbytes = ((nbits + shift + 63) // 64) * 8
        user.write(copy_offset * 8, bits.to_bytes(nbytes, "little"))
        if dma.bitmap is not None:
            dma.bitmap = 0

    def _dirty_pages(self, arg: IoctlArg) -> int:
        """vfio_iommu_type1_dirty_pages."""
        if not self.v2:
            # vfio_iommu_type1_dirty_pages: EACCES for a v1 container
            raise errno_error(errno.EACCES, "dirty tracking needs TYPE1v2")
        user = _UserPtr(self.system, arg)
        minsz = ffi.offsetof("struct vfio_iommu_type1_dirty_bitmap", "flags") + 4
        d = user.struct("struct vfio_iommu_type1_dirty_bitmap", length=minsz)
        argsz, flags = int(d.argsz), int(d.flags)
        mask = (lib.VFIO_IOMMU_DIRTY_PAGES_FLAG_START | lib.VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP
                | lib.VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP)
        if argsz < minsz or flags & ~mask:
            # vfio_iommu_type1_dirty_pages: EINVAL for a short argsz or unknown flags
            raise errno_error(errno.EINVAL, "bad argsz or flags")
        if flags & (flags - 1):
            # vfio_iommu_type1_dirty_pages: EINVAL unless exactly one flag is set
            raise errno_error(errno.EINVAL, "one flag at a time")
        if flags & lib.VFIO_IOMMU_DIRTY_PAGES_FLAG_START:
            if not self.dirty_page_tracking:
                for _s, _l, dma in self.dma:
                    dma.bitmap = 0
                self.dirty_page_tracking = True
            return 0
        if flags & lib.VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP:
            if self.dirty_page_tracking:
                self.dirty_page_tracking = False
                for _s, _l, dma in self.dma:
                    dma.bitmap = None
            return 0
        if flags & lib.VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP:
            range_size = ffi.sizeof("struct vfio_iommu_type1_dirty_bitmap_get")
            data_size = argsz - minsz
            if not data_size or data_size < range_size:
                # vfio_iommu_type1_dirty_pages: EINVAL without room for the range
                raise errno_error(errno.EINVAL, "argsz leaves no room for the range")
            r = user.struct("struct vfio_iommu_type1_dirty_bitmap_get", offset=minsz)
            iova, size = int(r.iova), int(r.size)
            bpgsize, bsize, bdata = int(r.bitmap.pgsize), int(r.bitmap.size), _to_int(r.bitmap.data)
            if not size:
                # vfio_iommu_type1_dirty_pages: EINVAL for a zero size
                raise errno_error(errno.EINVAL, "size is 0")
            if iova + size - 1 > _U64:
                # vfio_iommu_type1_dirty_pages: EOVERFLOW when iova + size wraps
                raise errno_error(errno.EOVERFLOW, "iova + size overflows")
            iova_end = iova + size - 1
            if not _access_ok(bdata, bsize):
                # vfio_iommu_type1_dirty_pages: EINVAL for a bitmap outside user space
                raise errno_error(errno.EINVAL, "bitmap is not in user space")
            _verify_bitmap_size(size >> _ffs(bpgsize), bsize)
            pgsize = self.min_pgsize
            if bpgsize != pgsize:
                # vfio_iommu_type1_dirty_pages: EINVAL unless the bitmap uses the minimum page size
                raise errno_error(errno.EINVAL, f"bitmap page size must be {pgsize:#x}")
            if iova & (pgsize - 1) or size & (pgsize - 1):
                # vfio_iommu_type1_dirty_pages: EINVAL for an unaligned iova or size
                raise errno_error(errno.EINVAL, "iova or size not aligned")
            if not self.dirty_page_tracking:
                # vfio_iommu_type1_dirty_pages: EINVAL while tracking is off
                raise errno_error(errno.EINVAL, "dirty tracking is not started")
            self._iova_dirty_bitmap(bdata, iova, iova_end, pgsize)
            return 0
        # vfio_iommu_type1_dirty_pages: EINVAL without a flag
        raise errno_error(errno.EINVAL, "no flag")

    def _iova_dirty_bitmap(self, user_bitmap: int, iova: int, iova_end: int, pgsize: int) -> None:
        """vfio_iova_dirty_bitmap."""
        dma = self._find_dma(iova, 1)
        if dma is not None and dma.iova != iova:
            # vfio_iova_dirty_bitmap: EINVAL when the range starts inside a mapping
            raise errno_error(errno.EINVAL, "range starts inside a mapping")
        dma = self._find_dma(iova_end, 1)
        if dma is not None and dma.last != iova_end:
            # vfio_iova_dirty_bitmap: EINVAL when the range ends inside a mapping
            raise errno_error(errno.EINVAL, "range ends inside a mapping")
        for _s, _l, d in list(self.dma.overlapping(iova, iova_end)):
            if d.iova < iova:
                continue
            self._update_user_bitmap(user_bitmap, d, iova, pgsize)


def _verify_bitmap_size(npages: int, bitmap_size: int) -> None:
    """verify_bitmap_size."""
    if (not npages or not bitmap_size or bitmap_size > _DIRTY_BITMAP_SIZE_MAX
            or bitmap_size < ((npages + 63) // 64) * 8):
        # verify_bitmap_size: EINVAL for an empty, oversized or too small bitmap
        raise errno_error(errno.EINVAL, "bad bitmap size")


def _aper_resize(iova: list[list[int]], start: int, end: int) -> list[list[int]]:
    """vfio_iommu_aper_resize: clip the usable ranges to ``[start, end]``."""
    if not iova:
        return [[start, end]]
    out = []
    for lo, hi in iova:
        lo2, hi2 = max(lo, start), min(hi, end)
        if lo2 <= hi2:
            out.append([lo2, hi2])
    return out


def _resv_exclude(iova: list[list[int]], resv: list[Any]) -> list[list[int]]:
    """vfio_iommu_resv_exclude: cut the reserved regions out (relaxable
    direct-mapped regions stay usable)."""
    out = [list(r) for r in iova]
    for r in resv:
        if r.type == "direct-relaxable":
            continue
        nxt = []
        for lo, hi in out:
            if r.start > hi or r.last < lo:
                nxt.append([lo, hi])
                continue
            if r.start > lo:
                nxt.append([lo, r.start - 1])
            if r.last < hi:
                nxt.append([r.last + 1, hi])
        out = nxt
    return out


def _type1_check_extension(system: System, iommu: Type1Iommu | None, arg: int) -> int:
    """vfio_iommu_type1_check_extension."""
    if arg in (lib.VFIO_TYPE1_IOMMU, lib.VFIO_TYPE1v2_IOMMU, lib.VFIO_UNMAP_ALL):
        return 1
    if arg == lib.VFIO_UPDATE_VADDR:
        # only once an IOMMU is set (and no emulated devices, never here)
        return 1 if iommu is not None else 0
    if arg == lib.VFIO_DMA_CC_IOMMU:
        if iommu is None:
            return 0
        info = system.iommu
        return 1 if not iommu.groups or (info is not None and info.enforce_cache_coherency) else 0
    return 0


class _NoIommu:
    """The vfio-noiommu "IOMMU driver" (container.c)."""

    def __init__(self, system: System) -> None:
        self.system = system

    def check_extension(self, arg: int) -> int:
        """vfio_noiommu_ioctl: 1 for VFIO_NOIOMMU_IOMMU when no-IOMMU mode is
        enabled (the module option), 0 for everything else."""
        return 1 if self.system.noiommu and arg == lib.VFIO_NOIOMMU_IOMMU else 0

    def ioctl(self, request: int, arg: IoctlArg) -> int:
        if request == lib.VFIO_CHECK_EXTENSION:
            return self.check_extension(_arg_int(arg))
        # vfio_noiommu_ioctl: ENOTTY for everything else
        raise errno_error(errno.ENOTTY)

    def attach_group(self, vgroup: VfioGroup) -> None:
        pass

    def detach_group(self, vgroup: VfioGroup) -> None:
        pass

    def release(self) -> None:
        pass


@dataclass
class _IommuDriver:
    """A registered vfio IOMMU driver (struct vfio_iommu_driver_ops)."""

    name: str
    noiommu: bool
    check: Callable[[int], int]  # ops->ioctl(NULL, VFIO_CHECK_EXTENSION, arg)
    open: Callable[[int], Any]  # ops->open(arg)


# -- the container --------------------------------------------------------------------
class ContainerFile(FakeFile):
    """``/dev/vfio/vfio``: a container (struct vfio_container).

    The container outlives its fd while groups are attached to it; the
    IOMMU driver is released when the last group leaves.
    """

    path = "/dev/vfio/vfio"

    def __init__(self, kernel: FakeBackend) -> None:
        super().__init__(kernel)
        self.groups: list[VfioGroup] = []
        self.iommu: Type1Iommu | _NoIommu | None = None
        self.noiommu = False
        self.fd_closed = False

    def __repr__(self) -> str:
        return f"<ContainerFile groups={[g.name for g in self.groups]} iommu={self.iommu!r}>"

    def _drivers(self) -> list[_IommuDriver]:
        """Registered IOMMU drivers, most recently registered first."""
        system = self.system
        drivers = []
        if system.modules["vfio_iommu_type1"]:
            drivers.append(_IommuDriver(
                "vfio-iommu-type1", False,
                lambda arg: _type1_check_extension(system, None, arg),
                self._type1_open,
            ))
        drivers.append(_IommuDriver(
            "vfio-noiommu", True,
            lambda arg: 1 if system.noiommu and arg == lib.VFIO_NOIOMMU_IOMMU else 0,
            self._noiommu_open,
        ))
        return drivers

    def _type1_open(self, arg: int) -> Type1Iommu:
        # vfio_iommu_type1_open: v1 for TYPE1, v2 for TYPE1v2 (and the
        # retired nesting type), EINVAL otherwise
        if arg == lib.VFIO_TYPE1_IOMMU:
            return Type1Iommu(self.system, v2=False)
        if arg in (lib.VFIO_TYPE1v2_IOMMU, _TYPE1_NESTING):
            return Type1Iommu(self.system, v2=True)
        raise errno_error(errno.EINVAL, f"IOMMU type {arg}")

    def _noiommu_open(self, arg: int) -> _NoIommu:
        if arg != lib.VFIO_NOIOMMU_IOMMU:
            # vfio_noiommu_open: EINVAL for any other type
            raise errno_error(errno.EINVAL, f"IOMMU type {arg}")
        if not self.system.cap_sys_rawio:
            # vfio_noiommu_open: EPERM without CAP_SYS_RAWIO
            raise errno_error(errno.EPERM, "no-IOMMU needs CAP_SYS_RAWIO")
        return _NoIommu(self.system)

    def _allowed(self, drv: _IommuDriver) -> bool:
        """vfio_iommu_driver_allowed."""
        return self.noiommu == drv.noiommu

    # -- ioctls -------------------------------------------------------------------------
    def ioctl(self, request: int, arg: IoctlArg) -> int:
        """vfio_fops_unl_ioctl."""
        if request == lib.VFIO_GET_API_VERSION:
            return int(lib.VFIO_API_VERSION)
        if request == lib.VFIO_CHECK_EXTENSION:
            return self.check_extension(_arg_int(arg))
        if request == lib.VFIO_SET_IOMMU:
            return self.set_iommu(_arg_int(arg))
        if self.iommu is not None:
            return self.iommu.ioctl(request, arg)
        # vfio_fops_unl_ioctl: EINVAL for other ioctls before SET_IOMMU
        raise errno_error(errno.EINVAL, "no IOMMU set")

    def check_extension(self, arg: int) -> int:
        """vfio_container_ioctl_check_extension."""
        if self.iommu is not None:
            return self.iommu.check_extension(arg)
        ret = 0
        for drv in self._drivers():
            if self.groups and not self._allowed(drv):
                continue
            ret = drv.check(arg)
            if ret > 0:
                break
        return ret

    def set_iommu(self, arg: int) -> int:
        """vfio_ioctl_set_iommu."""
        if not self.groups or self.iommu is not None:
            # vfio_ioctl_set_iommu: EINVAL without a group or with an IOMMU already set
            raise errno_error(errno.EINVAL, "no group attached" if not self.groups else "IOMMU already set")
        err: OSError = errno_error(errno.ENODEV, f"no IOMMU driver for type {arg}")
        for drv in self._drivers():
            if not self._allowed(drv):
                continue
            if drv.check(arg) <= 0:
                continue
            try:
                data = drv.open(arg)
            except OSError as e:
                err = e
                continue
            attached: list[VfioGroup] = []
            try:
                # __vfio_container_attach_groups
                for vgroup in self.groups:
                    data.attach_group(vgroup)
                    attached.append(vgroup)
            except OSError as e:
                for vgroup in reversed(attached):
                    data.detach_group(vgroup)
                data.release()
                err = e
                continue
            self.iommu = data
            return 0
        # vfio_ioctl_set_iommu: ENODEV when no driver supports the type
        raise err

    # -- groups ------------------------------------------------------------------------
    def attach_group(self, vgroup: VfioGroup) -> None:
        """vfio_container_attach_group."""
        system = self.system
        if vgroup.noiommu and not system.cap_sys_rawio:
            # vfio_container_attach_group: EPERM for no-IOMMU without CAP_SYS_RAWIO
            raise errno_error(errno.EPERM, "no-IOMMU needs CAP_SYS_RAWIO")
        if self.groups and self.noiommu != vgroup.noiommu:
            # vfio_container_attach_group: EPERM when mixing no-IOMMU and IOMMU groups
            raise errno_error(errno.EPERM, "cannot mix no-IOMMU and IOMMU groups")
        group = vgroup.iommu_group
        assert group is not None
        if not vgroup.noiommu:
            # iommu_group_claim_dma_owner: EPERM while a kernel driver uses the group
            group.claim_dma_owner(vgroup)
        if self.iommu is not None:
            try:
                self.iommu.attach_group(vgroup)
            except OSError:
                if not vgroup.noiommu:
                    group.release_dma_owner()
                raise
        vgroup.container = self
        vgroup.container_users = 1
        self.noiommu = vgroup.noiommu
        self.groups.insert(0, vgroup)

    def detach_group(self, vgroup: VfioGroup) -> None:
        """vfio_group_detach_container."""
        if self.iommu is not None:
            self.iommu.detach_group(vgroup)
        if not vgroup.noiommu and vgroup.iommu_group is not None:
            vgroup.iommu_group.release_dma_owner()
        vgroup.container = None
        vgroup.container_users = 0
        self.groups.remove(vgroup)
        # the last group deprivileges the container: the IOMMU goes away
        if self.iommu is not None and not self.groups:
            self.iommu.release()
            self.iommu = None

    def release(self) -> None:
        """vfio_fops_release: the container lives on while groups use it."""
        with self.system.lock:
            self.fd_closed = True


# -- group files ------------------------------------------------------------------------
class GroupFile(FakeFile):
    """``/dev/vfio/N``: an open vfio group (struct vfio_group's file)."""

    def __init__(self, kernel: FakeBackend, vgroup: VfioGroup) -> None:
        super().__init__(kernel)
        self.vgroup = vgroup
        self.path = vgroup.dev_path
        self.fd_closed = False
        #: References held by devices using the container (get_file in
        #: vfio_group_use_container).
        self.holders = 0

    @classmethod
    def open(cls, kernel: FakeBackend, vgroup: VfioGroup) -> GroupFile:
        """vfio_group_fops_open."""
        if vgroup.drivers == 0:
            # vfio_group_fops_open: ENODEV while the group is being removed
            raise errno_error(errno.ENODEV, vgroup.dev_path)
        if vgroup.noiommu and not kernel.system.cap_sys_rawio:
            # vfio_group_fops_open: EPERM for no-IOMMU groups without CAP_SYS_RAWIO
            raise errno_error(errno.EPERM, "no-IOMMU needs CAP_SYS_RAWIO")
        if vgroup.cdev_device_open_cnt:
            # vfio_group_fops_open: EBUSY while a device of the group is used through its cdev
            raise errno_error(errno.EBUSY, f"a device of {vgroup.dev_path} is open through its cdev")
        if vgroup.opened_file is not None:
            # vfio_group_fops_open: EBUSY, the group can be open only once
            raise errno_error(errno.EBUSY, f"{vgroup.dev_path} is already open")
        f = cls(kernel, vgroup)
        vgroup.opened_file = f
        return f

    def __repr__(self) -> str:
        return f"<GroupFile {self.path}>"

    @property
    def iommufd(self) -> Any:
        """The iommufd set with VFIO_GROUP_SET_CONTAINER (compat), or None."""
        return self.vgroup.iommufd

    @property
    def container(self) -> ContainerFile | None:
        """The container the group is attached to (VFIO_GROUP_SET_CONTAINER),
        or None."""
        c: ContainerFile | None = self.vgroup.container
        return c

    # -- used by the device file ------------------------------------------------------
    def use_container(self, pdev: PciDevice) -> None:
        """vfio_device_group_use_iommu / vfio_group_use_container: a device of
        the group is opened for the first time through the container."""
        vgroup = self.vgroup
        if vgroup.container is None or vgroup.container.iommu is None:
            # vfio_group_use_container: EINVAL without a container IOMMU
            raise errno_error(errno.EINVAL, "the container has no IOMMU set")
        if vgroup.noiommu and not self.system.cap_sys_rawio:
            # vfio_group_use_container: EPERM for no-IOMMU without CAP_SYS_RAWIO
            raise errno_error(errno.EPERM, "no-IOMMU needs CAP_SYS_RAWIO")
        vgroup.container_users += 1
        self.holders += 1

    def unuse_container(self, pdev: PciDevice) -> None:
        """vfio_group_unuse_container: the device's last file closed."""
        assert self.holders > 0, "unuse_container without use_container"
        self.vgroup.container_users -= 1
        self.holders -= 1
        if self.fd_closed and not self.holders:
            self._final_release()

    # -- ioctls -------------------------------------------------------------------------
    def ioctl(self, request: int, arg: IoctlArg) -> int:
        """vfio_group_fops_unl_ioctl."""
        if request == lib.VFIO_GROUP_GET_DEVICE_FD:
            return self._get_device_fd(arg)
        if request == lib.VFIO_GROUP_GET_STATUS:
            return self._get_status(arg)
        if request == lib.VFIO_GROUP_SET_CONTAINER:
            return self._set_container(arg)
        if request == lib.VFIO_GROUP_UNSET_CONTAINER:
            return self._unset_container()
        # vfio_group_fops_unl_ioctl: ENOTTY for anything else
        raise errno_error(errno.ENOTTY)

    def _get_status(self, arg: IoctlArg) -> int:
        """vfio_group_ioctl_get_status."""
        user = _UserPtr(self.system, arg)
        minsz = ffi.offsetof("struct vfio_group_status", "flags") + 4
        status = user.struct("struct vfio_group_status", length=minsz)
        if int(status.argsz) < minsz:
            # vfio_group_ioctl_get_status: EINVAL when argsz is below the minimum
            raise errno_error(errno.EINVAL, "argsz too small")
        vgroup = self.vgroup
        if vgroup.iommu_group is None:
            # vfio_group_ioctl_get_status: ENODEV once the group was removed
            raise errno_error(errno.ENODEV, "the group is gone")
        flags = 0
        if vgroup.has_iommu():
            flags |= lib.VFIO_GROUP_FLAGS_CONTAINER_SET | lib.VFIO_GROUP_FLAGS_VIABLE
        elif not vgroup.iommu_group.dma_owner_claimed():
            flags |= lib.VFIO_GROUP_FLAGS_VIABLE
        status = user.struct("struct vfio_group_status", length=minsz, write=True)
        status.flags = flags
        return 0

    def _set_container(self, arg: IoctlArg) -> int:
        """vfio_group_ioctl_set_container."""
        user = _UserPtr(self.system, arg)
        # get_user: EFAULT for a bad pointer
        fd = int(user.struct("int")[0])
        target = self.kernel.file_or_none(fd)
        if target is None:
            try:
                os.fstat(fd)
            except OSError:
                # vfio_group_ioctl_set_container: EBADF for a closed fd
                raise errno_error(errno.EBADF, f"fd {fd}") from None
        vgroup = self.vgroup
        if vgroup.has_iommu():
            # vfio_group_ioctl_set_container: EINVAL when a container is already set
            raise errno_error(errno.EINVAL, "the group already has a container")
        if vgroup.iommu_group is None:
            # vfio_group_ioctl_set_container: ENODEV once the group was removed
            raise errno_error(errno.ENODEV, "the group is gone")
        if isinstance(target, ContainerFile):
            target.attach_group(vgroup)
            return 0
        attach = getattr(target, "compat_attach_group", None)
        if target is not None and callable(attach):
            # iommufd_vfio_compat_ioas_create / _set_no_iommu
            attach(vgroup)
            vgroup.iommufd = target
            return 0
        # vfio_group_ioctl_set_container: EBADFD for an fd that is neither
        raise errno_error(errno.EBADFD, f"fd {fd} is not a container or an iommufd")

    def _drop_iommufd(self) -> None:
        vgroup = self.vgroup
        detach = getattr(vgroup.iommufd, "compat_detach_group", None)
        if callable(detach):
            detach(vgroup)
        vgroup.iommufd = None

    def _unset_container(self) -> int:
        """vfio_group_ioctl_unset_container."""
        vgroup = self.vgroup
        if not vgroup.has_iommu():
            # vfio_group_ioctl_unset_container: EINVAL without a container
            raise errno_error(errno.EINVAL, "no container set")
        if vgroup.container is not None:
            if vgroup.container_users != 1:
                # vfio_group_ioctl_unset_container: EBUSY while devices use the container
                raise errno_error(errno.EBUSY, "devices of the group are open")
            vgroup.container.detach_group(vgroup)
        if vgroup.iommufd is not None:
            self._drop_iommufd()
        return 0

    def _get_device_fd(self, arg: IoctlArg) -> int:
        """vfio_group_ioctl_get_device_fd."""
        user = _UserPtr(self.system, arg)
        buf = user.strndup(_PAGE_SIZE).decode("latin-1")
        pdev = self._device_from_name(buf)
        vgroup = self.vgroup
        if not vgroup.has_iommu():
            # vfio_df_group_open: EINVAL without a container or iommufd
            raise errno_error(errno.EINVAL, "the group has no container")
        file = open_device_file(self.kernel, pdev, cdev=False, group_file=self)
        return self.kernel.install(file)

    def _device_from_name(self, buf: str) -> PciDevice:
        """vfio_device_get_from_name with vfio_pci_core_match."""
        for pdev in self.vgroup.devices:
            ret = _vfio_pci_match(pdev, buf)
            if ret < 0:
                raise errno_error(-ret, f"bad device name {buf!r}")
            if ret:
                return pdev
        # vfio_device_get_from_name: ENODEV when no device matches
        raise errno_error(errno.ENODEV, f"no device {buf!r} in {self.vgroup.dev_path}")

    def release(self) -> None:
        """The fd closed; the file goes away once no device holds it."""
        with self.system.lock:
            self.fd_closed = True
            if not self.holders:
                self._final_release()

    def _final_release(self) -> None:
        """vfio_group_fops_release."""
        vgroup = self.vgroup
        if vgroup.container is not None:
            vgroup.container.detach_group(vgroup)
        if vgroup.iommufd is not None:
            self._drop_iommufd()
        if vgroup.opened_file is self:
            vgroup.opened_file = None


_UUID = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"


def _vfio_pci_match(pdev: PciDevice, buf: str) -> int:
    """vfio_pci_core_match: 1 match, 0 no match, -errno error."""
    import re

    name = pdev.bdf
    if not buf.startswith(name):
        return 0
    rest = buf[len(name):]
    vf_token = False
    if rest:
        if rest[0] != " ":
            return 0
        pos = 0
        while pos < len(rest):
            if rest[pos] == " ":
                pos += 1
                continue
            if not vf_token and rest.startswith("vf_token=", pos):
                pos += len("vf_token=")
                if len(rest) - pos < 36:
                    return -errno.EINVAL
                if not re.fullmatch(_UUID, rest[pos:pos + 36]):
                    return -errno.EINVAL
                vf_token = True
                pos += 36
            else:
                # vfio_pci_core_match: EINVAL for an unknown or repeated option
                return -errno.EINVAL
    if vf_token:
        # vfio_pci_core_match_token_uuid: EINVAL for a token on a device
        # that is neither a PF with VFs nor a VF
        return -errno.EINVAL
    return 1


def iter_containers(kernel: FakeBackend) -> Iterator[ContainerFile]:
    """Open containers of a backend (for tests and debugging)."""
    for f in kernel.open_files:
        if isinstance(f, ContainerFile):
            yield f
