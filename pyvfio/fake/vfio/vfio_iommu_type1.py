"""The type1 IOMMU driver of the legacy container, after
drivers/vfio/vfio_iommu_type1.c of Linux 7.3: DMA mappings (map, unmap,
vaddr invalidation and update), pinning charged to RLIMIT_MEMLOCK, the
usable IOVA ranges cut by apertures and reserved regions, the GET_INFO
capability chain, and dirty page tracking with its user bitmaps.

Every check carries a comment naming the kernel function whose rule it
mirrors; checks run in the kernel's order so that a call breaking two
rules fails with the same errno as on Linux.

Differences from the kernel: one I/O page table serves all groups of a
container (the kernel shares one domain between groups of the same IOMMU
anyway); pinning checks the whole user range before charging
RLIMIT_MEMLOCK, so a mapping that is both partly unmapped and over the
limit fails with ``EFAULT`` where the kernel may say ``ENOMEM``.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..._uapi import ffi, lib  # type: ignore[import-not-found,unused-ignore]
from ...backend.base import IoctlArg
from ..core import IoDomain, IommuFault, errno_error
from ..iommufd._iommu import paging_domain_aperture
from ..intervals import IntervalMap
from ..uaccess import UserPtr, access_ok

if TYPE_CHECKING:
    from ..machine.system import System, VfioGroup

__all__ = [
    "Type1Iommu",
    "TYPE1_NESTING_IOMMU",
    "vfio_iommu_type1_check_extension",
    "vfio_iommu_type1_open",
]

_U64 = (1 << 64) - 1
#: __VFIO_RESERVED_TYPE1_NESTING_IOMMU: accepted by SET_IOMMU's open as v2,
#: never reported by CHECK_EXTENSION.
TYPE1_NESTING_IOMMU = 6
#: DIRTY_BITMAP_PAGES_MAX / DIRTY_BITMAP_SIZE_MAX
_DIRTY_BITMAP_PAGES_MAX = (1 << 31) - 1
_DIRTY_BITMAP_SIZE_MAX = ((_DIRTY_BITMAP_PAGES_MAX + 63) // 64) * 8
_IOMMU_READ = 1
_IOMMU_WRITE = 2
_PAGE_SIZE = 4096
_PAGE_MASK = _U64 & ~(_PAGE_SIZE - 1)


def _ffs(value: int) -> int:
    """__ffs: index of the lowest set bit (64 for zero, like tzcnt)."""
    return (value & -value).bit_length() - 1 if value else 64


@dataclass
class _Dma:
    """struct vfio_dma: one mapping."""

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


# -- the driver without an instance (ops->open, ops->ioctl(NULL, ...)) --------------------
def vfio_iommu_type1_open(system: System, arg: int) -> Type1Iommu:
    """vfio_iommu_type1_open: a new type1 IOMMU for SET_IOMMU's ``arg``."""
    # vfio_iommu_type1_open: v1 for TYPE1, v2 for TYPE1v2 (and the retired
    # nesting type), EINVAL otherwise
    if arg == lib.VFIO_TYPE1_IOMMU:
        return Type1Iommu(system, v2=False)
    if arg in (lib.VFIO_TYPE1v2_IOMMU, TYPE1_NESTING_IOMMU):
        return Type1Iommu(system, v2=True)
    raise errno_error(errno.EINVAL, f"IOMMU type {arg}")


def vfio_iommu_type1_check_extension(system: System, iommu: Type1Iommu | None, arg: int) -> int:
    """vfio_iommu_type1_check_extension: 1 for a supported extension, 0
    otherwise; ``iommu`` is None when asked before SET_IOMMU."""
    if arg in (lib.VFIO_TYPE1_IOMMU, lib.VFIO_TYPE1v2_IOMMU, lib.VFIO_UNMAP_ALL):
        return 1
    if arg == lib.VFIO_UPDATE_VADDR:
        # vfio_iommu_type1_check_extension: only once an IOMMU is set (and
        # no emulated devices, never here)
        return 1 if iommu is not None else 0
    if arg == lib.VFIO_DMA_CC_IOMMU:
        if iommu is None:
            return 0
        # vfio_domains_have_enforce_cache_coherency
        info = system.iommu
        return 1 if not iommu.groups or (info is not None and info.enforce_cache_coherency) else 0
    return 0


# -- IOVA list helpers ------------------------------------------------------------------
def vfio_iommu_aper_resize(iova: list[list[int]], start: int, end: int) -> list[list[int]]:
    """vfio_iommu_aper_resize: clip the usable ranges to ``[start, end]``."""
    if not iova:
        return [[start, end]]
    out = []
    for lo, hi in iova:
        lo2, hi2 = max(lo, start), min(hi, end)
        if lo2 <= hi2:
            out.append([lo2, hi2])
    return out


def vfio_iommu_resv_exclude(iova: list[list[int]], resv: list[Any]) -> list[list[int]]:
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


def verify_bitmap_size(npages: int, bitmap_size: int) -> None:
    """verify_bitmap_size: EINVAL for an empty, oversized or too small
    dirty bitmap."""
    if (not npages or not bitmap_size or bitmap_size > _DIRTY_BITMAP_SIZE_MAX
            or bitmap_size < ((npages + 63) // 64) * 8):
        # verify_bitmap_size: EINVAL for an empty, oversized or too small bitmap
        raise errno_error(errno.EINVAL, "bad bitmap size")


def _info_caps(*bodies: bytes) -> bytes:
    """vfio_info_cap_add: a capability chain of ``bodies`` (each starts with
    a struct vfio_info_cap_header), each padded to 8 bytes and linked by
    offsets relative to the chain's start."""
    out = bytearray()
    offsets = []
    for body in bodies:
        offsets.append(len(out))
        out += body + b"\0" * (-len(body) % 8)
    hdr_next = ffi.offsetof("struct vfio_info_cap_header", "next")
    for i, off in enumerate(offsets[:-1]):
        out[off + hdr_next:off + hdr_next + 4] = offsets[i + 1].to_bytes(4, "little")
    return bytes(out)


def _info_cap_shift(caps: bytes, offset: int) -> bytes:
    """vfio_info_cap_shift: the chain's ``next`` offsets moved by ``offset``
    (where the chain lands in the user's buffer)."""
    hdr_next = ffi.offsetof("struct vfio_info_cap_header", "next")
    shifted = bytearray(caps)
    pos = 0
    while True:
        nxt = int.from_bytes(shifted[pos + hdr_next:pos + hdr_next + 4], "little")
        if not nxt:
            return bytes(shifted)
        shifted[pos + hdr_next:pos + hdr_next + 4] = (nxt + offset).to_bytes(4, "little")
        pos = nxt


# -- the driver instance ------------------------------------------------------------------
class Type1Iommu(IoDomain):
    """The vfio_iommu_type1 driver's state for one container (struct
    vfio_iommu) and, once a group is attached, the I/O page table the
    container's devices DMA through.

    :ivar system: the machine.
    :ivar v2: opened as VFIO_TYPE1v2_IOMMU (stricter unmap, dirty tracking).
    :ivar dma: the mappings (struct vfio_dma) by IOVA.
    :ivar dma_avail: mappings left under the dma_entry_limit parameter.
    :ivar vaddr_invalid_count: mappings whose vaddr is invalidated.
    :ivar pgsize_bitmap: the IOMMU page sizes (VFIO_IOMMU_GET_INFO).
    :ivar iova_list: the usable IOVA ranges, ``[start, end]`` inclusive.
    :ivar groups: the vfio groups attached.
    :ivar dirty_page_tracking: VFIO_IOMMU_DIRTY_PAGES_FLAG_START is in effect.
    :ivar num_non_pinned_groups: groups whose devices cannot report dirty pages.
    """

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

    # -- mappings ------------------------------------------------------------------
    @property
    def min_pgsize(self) -> int:
        """The smallest IOMMU page size in bytes (the lowest bit of
        ``pgsize_bitmap``): the alignment of every map and unmap."""
        return 1 << _ffs(self.pgsize_bitmap)

    def vfio_find_dma(self, start: int, size: int) -> _Dma | None:
        """vfio_find_dma: a mapping overlapping ``[start, start + size)``
        (the lowest one)."""
        last = min(start + size - 1, _U64)
        hit = self.dma.find(start)
        if hit is None:
            if not self.dma.overlaps(start, last):
                return None
            hit = next(self.dma.overlapping(start, last), None)
        return hit[2] if hit else None

    def vfio_iommu_iova_dma_valid(self, start: int, end: int) -> bool:
        """vfio_iommu_iova_dma_valid: ``[start, end]`` lies in one usable
        range (anything goes while the list is empty)."""
        if not self.iova_list:
            return True
        return any(start >= lo and end <= hi for lo, hi in self.iova_list)

    def vfio_update_pgsize_bitmap(self) -> None:
        """vfio_update_pgsize_bitmap: the page sizes of the attached IOMMU,
        with sub-page sizes folded into PAGE_SIZE."""
        bitmap = _U64
        if self.groups and self.system.iommu is not None:
            bitmap &= self.system.iommu.pgsize_bitmap
        if bitmap & ~_PAGE_MASK & _U64:
            bitmap &= _PAGE_MASK
            bitmap |= _PAGE_SIZE
        self.pgsize_bitmap = bitmap

    def vfio_remove_dma(self, dma: _Dma) -> None:
        """vfio_remove_dma: unmap, unpin, free the entry."""
        self.dma.remove(dma.iova)
        if dma.pinned:
            self.system.user_memory.unpin(dma.pinned)
            dma.pinned = 0
        if dma.vaddr_invalid:
            self.vaddr_invalid_count -= 1
        self.dma_avail += 1

    def vfio_iommu_unmap_unpin_all(self) -> None:
        """vfio_iommu_unmap_unpin_all: every mapping goes."""
        for _start, _last, dma in list(self.dma):
            self.vfio_remove_dma(dma)

    def vfio_pin_map_dma(self, dma: _Dma) -> None:
        """vfio_pin_map_dma: pin the whole mapping (vfio_pin_pages_remote)
        and map it; a failure removes the mapping."""
        try:
            # vaddr_get_pfns: EFAULT for memory that is not mapped (writable
            # for a device-writable mapping)
            self.system.user_memory.check(dma.vaddr, dma.size, bool(dma.prot & _IOMMU_WRITE))
            pages = dma.size // self.system.page_size
            # vfio_pin_pages_remote: ENOMEM past RLIMIT_MEMLOCK
            self.system.user_memory.pin(pages)
            dma.pinned = pages
            fi = self.system.fault_inject
            if fi.armed and self.groups:
                # vfio_iommu_map: iommu_map into the domains failing
                fi.maybe_fail("domain_map")
        except OSError:
            # vfio_pin_map_dma: a failed pin or map unpins what was pinned and
            # removes the mapping (vfio_remove_dma)
            self.vfio_remove_dma(dma)
            raise
        dma.iommu_mapped = True

    # -- ops: groups -----------------------------------------------------------------
    def attach_group(self, vgroup: VfioGroup) -> None:
        """ops->attach_group: vfio_iommu_type1_attach_group."""
        iommu = self.system.iommu
        group = vgroup.iommu_group
        assert iommu is not None and group is not None
        if self.vaddr_invalid_count:
            # vfio_iommu_type1_attach_group: EBUSY while vaddrs are invalidated
            raise errno_error(errno.EBUSY, "DMA mappings with invalidated vaddr exist")
        if vgroup in self.groups:
            # vfio_iommu_type1_attach_group: EINVAL for a group already attached
            raise errno_error(errno.EINVAL, "group already attached")
        # vfio_iommu_type1_attach_group: iommu_paging_domain_alloc, no flags
        start, end = paging_domain_aperture(self.system, 0)
        if self.vfio_iommu_aper_conflict(start, end):
            # vfio_iommu_aper_conflict: EINVAL if existing mappings fall outside the aperture
            raise errno_error(errno.EINVAL, "existing DMA mappings are outside the aperture")
        resv = group.reserved_regions
        if self.vfio_iommu_resv_conflict(resv):
            # vfio_iommu_resv_conflict: EINVAL if a mapping overlaps a reserved region
            raise errno_error(errno.EINVAL, "existing DMA mappings overlap a reserved region")
        iova_copy = [list(r) for r in self.iova_list]
        iova_copy = vfio_iommu_aper_resize(iova_copy, start, end)
        iova_copy = vfio_iommu_resv_exclude(iova_copy, resv)
        if not iova_copy:
            # vfio_iommu_resv_exclude: EINVAL when nothing usable is left
            raise errno_error(errno.EINVAL, "no usable IOVA range left")
        if not self.system.type1_params["allow_unsafe_interrupts"] and not iommu.interrupt_remapping:
            # vfio_iommu_type1_attach_group: EPERM without interrupt remapping
            raise errno_error(errno.EPERM, "no interrupt remapping support")
        fi = self.system.fault_inject
        if fi.armed:
            # vfio_iommu_type1_attach_group: the kzalloc of the vfio_domain
            # and iommu_paging_domain_alloc failing
            fi.maybe_fail("alloc")
            if self.dma:
                # vfio_iommu_replay: mapping the existing DMA into the new
                # domain failing
                fi.maybe_fail("domain_map")
        group.attach_domain(vgroup, self)
        self.groups.append(vgroup)
        self.vfio_update_pgsize_bitmap()
        self.iova_list = iova_copy
        self.num_non_pinned_groups += 1

    def detach_group(self, vgroup: VfioGroup) -> None:
        """ops->detach_group: vfio_iommu_type1_detach_group."""
        if vgroup not in self.groups:
            return
        iova_copy = [list(r) for r in self.iova_list]
        self.groups.remove(vgroup)
        if vgroup.iommu_group is not None:
            vgroup.iommu_group.detach_domain(vgroup)
        if not self.groups:
            # vfio_iommu_type1_detach_group: the last group of the last
            # domain unmaps everything
            self.vfio_iommu_unmap_unpin_all()
            if iova_copy:  # vfio_iommu_aper_expand
                iova_copy[0][0] = 0
                iova_copy[-1][1] = _U64
            self.vfio_update_pgsize_bitmap()
        refreshed = self.vfio_iommu_resv_refresh(iova_copy)
        if refreshed is not None:
            self.iova_list = refreshed
        self.num_non_pinned_groups -= 1
        if self.dirty_page_tracking:
            self.vfio_iommu_populate_bitmap_full()

    def release(self) -> None:
        """ops->release: vfio_iommu_type1_release."""
        self.vfio_iommu_unmap_unpin_all()
        for vgroup in list(self.groups):
            if vgroup.iommu_group is not None:
                vgroup.iommu_group.detach_domain(vgroup)
        self.groups.clear()
        self.iova_list = []

    def vfio_iommu_aper_conflict(self, start: int, end: int) -> bool:
        """vfio_iommu_aper_conflict: a mapping lies outside the new
        aperture ``[start, end]``."""
        if not self.iova_list:
            return False
        first, last = self.iova_list[0], self.iova_list[-1]
        if start > last[1] or end < first[0]:
            return True
        if start > first[0] and self.vfio_find_dma(first[0], start - first[0]):
            return True
        if end < last[1] and self.vfio_find_dma(end + 1, last[1] - end):
            return True
        return False

    def vfio_iommu_resv_conflict(self, resv: list[Any]) -> bool:
        """vfio_iommu_resv_conflict: a mapping overlaps a reserved region
        that is not relaxable."""
        return any(r.type != "direct-relaxable" and self.vfio_find_dma(r.start, r.last - r.start + 1)
                   for r in resv)

    def vfio_iommu_resv_refresh(self, iova_copy: list[list[int]]) -> list[list[int]] | None:
        """vfio_iommu_resv_refresh: the usable ranges recomputed from the
        remaining groups' reserved regions; None when it fails (the list
        is kept)."""
        if not iova_copy:
            return None
        resv = []
        for vg in self.groups:
            if vg.iommu_group is not None:
                resv += vg.iommu_group.reserved_regions
        start, end = iova_copy[0][0], iova_copy[-1][1]
        out = vfio_iommu_resv_exclude(vfio_iommu_aper_resize([], start, end), resv)
        return out or None

    def vfio_iommu_populate_bitmap_full(self) -> None:
        """vfio_iommu_populate_bitmap_full: every page of every tracked
        mapping is dirty."""
        shift = _ffs(self.pgsize_bitmap)
        for _s, _l, dma in self.dma:
            if dma.bitmap is not None:
                dma.bitmap = (1 << (dma.size >> shift)) - 1

    # -- ops: ioctls -----------------------------------------------------------------
    def check_extension(self, arg: int) -> int:
        """VFIO_CHECK_EXTENSION on a container with this IOMMU set
        (vfio_iommu_type1_check_extension): 1 for the type1 extensions
        it supports, 0 otherwise."""
        return vfio_iommu_type1_check_extension(self.system, self, arg)

    def ioctl(self, request: int, arg: IoctlArg) -> int:
        """ops->ioctl: vfio_iommu_type1_ioctl."""
        if request == lib.VFIO_CHECK_EXTENSION:
            return self.check_extension(UserPtr(arg).address)  # the unsigned long itself
        if request == lib.VFIO_IOMMU_GET_INFO:
            return self.vfio_iommu_type1_get_info(arg)
        if request == lib.VFIO_IOMMU_MAP_DMA:
            return self.vfio_iommu_type1_map_dma(arg)
        if request == lib.VFIO_IOMMU_UNMAP_DMA:
            return self.vfio_iommu_type1_unmap_dma(arg)
        if request == lib.VFIO_IOMMU_DIRTY_PAGES:
            return self.vfio_iommu_type1_dirty_pages(arg)
        # vfio_iommu_type1_ioctl: ENOTTY for anything else
        raise errno_error(errno.ENOTTY)

    def build_caps(self) -> bytes:
        """The capability chain of GET_INFO, offsets relative to the chain:
        vfio_iommu_migration_build_caps, vfio_iommu_dma_avail_build_caps,
        vfio_iommu_iova_build_caps (no IOVA cap while the list is empty)."""
        mig = ffi.new("struct vfio_iommu_type1_info_cap_migration *")
        mig.header.id = lib.VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION
        mig.header.version = 1
        mig.flags = 0
        mig.pgsize_bitmap = self.min_pgsize
        mig.max_dirty_bitmap_size = _DIRTY_BITMAP_SIZE_MAX
        avail = ffi.new("struct vfio_iommu_type1_info_dma_avail *")
        avail.header.id = lib.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL
        avail.header.version = 1
        avail.avail = self.dma_avail
        bodies = [bytes(ffi.buffer(mig)), bytes(ffi.buffer(avail))]
        if self.iova_list:
            cap = ffi.new("struct vfio_iommu_type1_info_cap_iova_range *")
            cap.header.id = lib.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE
            cap.header.version = 1
            cap.nr_iovas = len(self.iova_list)
            ranges = ffi.new("struct vfio_iova_range[]", len(self.iova_list))
            for i, (lo, hi) in enumerate(self.iova_list):
                ranges[i].start = lo
                ranges[i].end = hi
            bodies.append(bytes(ffi.buffer(cap, ffi.sizeof("struct vfio_iommu_type1_info_cap_iova_range")))
                          + bytes(ffi.buffer(ranges)))
        return _info_caps(*bodies)

    def vfio_iommu_type1_get_info(self, arg: IoctlArg) -> int:
        """VFIO_IOMMU_GET_INFO: vfio_iommu_type1_get_info."""
        user = UserPtr(arg)
        info_size = ffi.sizeof("struct vfio_iommu_type1_info")
        minsz = ffi.offsetof("struct vfio_iommu_type1_info", "iova_pgsizes") + 8
        # copy_from_user: EFAULT for a bad pointer
        head = user.read_struct("struct vfio_iommu_type1_info", length=minsz)
        argsz = int(head.argsz)
        if argsz < minsz:
            # vfio_iommu_type1_get_info: EINVAL when argsz is below the minimum
            raise errno_error(errno.EINVAL, f"argsz {argsz} < {minsz}")
        copy = min(argsz, info_size)
        info = ffi.new("struct vfio_iommu_type1_info *")
        info.argsz = argsz
        info.flags = lib.VFIO_IOMMU_INFO_PGSIZES
        info.iova_pgsizes = self.pgsize_bitmap
        caps = self.build_caps()
        if caps:
            info.flags |= lib.VFIO_IOMMU_INFO_CAPS
            if argsz < info_size + len(caps):
                # vfio_iommu_type1_get_info: report the size needed, no caps
                info.argsz = info_size + len(caps)
            else:
                # copy_to_user of the chain: EFAULT for a bad pointer
                user.write(info_size, _info_cap_shift(caps, info_size))
                info.cap_offset = info_size
        user.write_struct(info, length=copy)
        return 0

    def vfio_iommu_type1_map_dma(self, arg: IoctlArg) -> int:
        """VFIO_IOMMU_MAP_DMA: vfio_iommu_type1_map_dma."""
        user = UserPtr(arg)
        minsz = ffi.offsetof("struct vfio_iommu_type1_dma_map", "size") + 8
        # copy_from_user: EFAULT for a bad pointer
        m = user.read_struct("struct vfio_iommu_type1_dma_map", length=minsz)
        mask = lib.VFIO_DMA_MAP_FLAG_READ | lib.VFIO_DMA_MAP_FLAG_WRITE | lib.VFIO_DMA_MAP_FLAG_VADDR
        if int(m.argsz) < minsz or int(m.flags) & ~mask:
            # vfio_iommu_type1_map_dma: EINVAL for a short argsz or unknown flags
            raise errno_error(errno.EINVAL, "bad argsz or flags")
        self.vfio_dma_do_map(int(m.flags), int(m.iova), int(m.vaddr), int(m.size))
        return 0

    def vfio_dma_do_map(self, flags: int, iova: int, vaddr: int, size: int) -> None:
        """vfio_dma_do_map: a new mapping, or a new vaddr for an
        invalidated one (VFIO_DMA_MAP_FLAG_VADDR)."""
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
        dma = self.vfio_find_dma(iova, size)
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
            return
        if dma is not None:
            # vfio_dma_do_map: EEXIST when the range overlaps a mapping
            raise errno_error(errno.EEXIST, f"overlaps [{dma.iova:#x}, {dma.last:#x}]")
        if not self.dma_avail:
            # vfio_dma_do_map: ENOSPC past dma_entry_limit mappings
            raise errno_error(errno.ENOSPC, "dma_entry_limit reached")
        if not self.vfio_iommu_iova_dma_valid(iova, iova_end):
            # vfio_dma_do_map: EINVAL outside the usable IOVA ranges
            raise errno_error(errno.EINVAL, "outside the valid IOVA ranges")
        new = _Dma(iova, size, vaddr, prot)
        self.dma_avail -= 1
        self.dma.insert(iova, iova_end, new)
        if self.groups:
            # vfio_dma_do_map: pinned and mapped only with an IOMMU domain
            self.vfio_pin_map_dma(new)
        if self.dirty_page_tracking:
            new.bitmap = 0  # vfio_dma_bitmap_alloc

    def vfio_iommu_type1_unmap_dma(self, arg: IoctlArg) -> int:
        """VFIO_IOMMU_UNMAP_DMA: vfio_iommu_type1_unmap_dma; writes back the
        size unmapped."""
        user = UserPtr(arg)
        minsz = ffi.offsetof("struct vfio_iommu_type1_dma_unmap", "size") + 8
        # copy_from_user: EFAULT for a bad pointer
        unmap = user.read_struct("struct vfio_iommu_type1_dma_unmap", length=minsz)
        flags = int(unmap.flags)
        argsz = int(unmap.argsz)
        mask = (lib.VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP | lib.VFIO_DMA_UNMAP_FLAG_VADDR
                | lib.VFIO_DMA_UNMAP_FLAG_ALL)
        if argsz < minsz or flags & ~mask:
            # vfio_iommu_type1_unmap_dma: EINVAL for a short argsz or unknown flags
            raise errno_error(errno.EINVAL, "bad argsz or flags")
        get_bitmap = bool(flags & lib.VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP)
        if get_bitmap and flags & (lib.VFIO_DMA_UNMAP_FLAG_ALL | lib.VFIO_DMA_UNMAP_FLAG_VADDR):
            # vfio_iommu_type1_unmap_dma: EINVAL for GET_DIRTY_BITMAP with ALL or VADDR
            raise errno_error(errno.EINVAL, "GET_DIRTY_BITMAP excludes ALL and VADDR")
        bitmap = None
        if get_bitmap:
            if argsz < minsz + ffi.sizeof("struct vfio_bitmap"):
                # vfio_iommu_type1_unmap_dma: EINVAL without room for struct vfio_bitmap
                raise errno_error(errno.EINVAL, "argsz leaves no room for the bitmap")
            # copy_from_user: EFAULT for a bad pointer
            bitmap = user.read_struct("struct vfio_bitmap", offset=minsz)
            if not access_ok(UserPtr.from_value(bitmap.data).address, int(bitmap.size)):
                # vfio_iommu_type1_unmap_dma: EINVAL for a bitmap outside user space
                raise errno_error(errno.EINVAL, "bitmap is not in user space")
            verify_bitmap_size(int(unmap.size) >> _ffs(int(bitmap.pgsize)), int(bitmap.size))
        unmap.size = self.vfio_dma_do_unmap(unmap, bitmap)
        # copy_to_user: EFAULT for a bad pointer
        user.write_struct(unmap, length=minsz)
        return 0

    def vfio_dma_do_unmap(self, unmap: Any, bitmap: Any) -> int:
        """vfio_dma_do_unmap: unmap (or invalidate the vaddr of) the mappings
        of ``unmap`` (a kernel copy of struct vfio_iommu_type1_dma_unmap),
        reporting dirty pages into ``bitmap`` (struct vfio_bitmap, or None);
        returns the size unmapped."""
        iova, size, flags = int(unmap.iova), int(unmap.size), int(unmap.flags)
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
        if bitmap is not None and (not self.dirty_page_tracking or int(bitmap.pgsize) != pgsize):
            # vfio_dma_do_unmap: EINVAL for a dirty bitmap without tracking or
            # with a page size other than the minimum
            raise errno_error(errno.EINVAL, "dirty tracking off or wrong bitmap page size")
        if self.v2 and not unmap_all:
            dma = self.vfio_find_dma(iova, 1)
            if dma is not None and dma.iova != iova:
                # vfio_dma_do_unmap (v2): EINVAL when the range starts inside a mapping
                raise errno_error(errno.EINVAL, "unmap would split a mapping at its start")
            dma = self.vfio_find_dma(iova_end, 1)
            if dma is not None and dma.last != iova_end:
                # vfio_dma_do_unmap (v2): EINVAL when the range ends inside a mapping
                raise errno_error(errno.EINVAL, "unmap would split a mapping at its end")
        user_bitmap = None if bitmap is None else UserPtr.from_value(bitmap.data)
        unmapped = 0
        victims = [d for _s, _l, d in self.dma.overlapping(iova, iova_end)]
        done: list[_Dma] = []
        for dma in victims:
            if not self.v2 and iova > dma.iova:
                # vfio_dma_do_unmap (v1): a range starting inside a mapping
                # unmaps nothing more
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
            if user_bitmap is not None:
                self.update_user_bitmap(user_bitmap, dma, iova, pgsize)
            unmapped += dma.size
            self.vfio_remove_dma(dma)
        return unmapped

    # -- dirty page tracking ---------------------------------------------------------
    def update_user_bitmap(self, user_bitmap: UserPtr, dma: _Dma, base_iova: int,
                           pgsize: int) -> None:
        """update_user_bitmap: OR the mapping's dirty bits into the user's
        bitmap at the mapping's offset from ``base_iova``; the mapping's
        own bitmap starts over (vfio_dma_populate_bitmap)."""
        pgshift = _ffs(pgsize)
        nbits = dma.size >> pgshift
        bit_offset = (dma.iova - base_iova) >> pgshift
        copy_offset = bit_offset // 64
        shift = bit_offset % 64
        bits = dma.bitmap or 0
        # update_user_bitmap: everything is dirty when a device that cannot
        # report dirty pages (any physical device) is attached and the pages
        # are mapped
        if self.num_non_pinned_groups and dma.iommu_mapped:
            bits = (1 << nbits) - 1
        if shift:
            # copy_from_user of the leftover word: EFAULT for a bad pointer
            leftover = user_bitmap.read_u64(copy_offset * 8)
            bits = (bits << shift) | (leftover & ((1 << shift) - 1))
        nbytes = ((nbits + shift + 63) // 64) * 8
        # copy_to_user: EFAULT for a bad pointer
        user_bitmap.write(copy_offset * 8, bits.to_bytes(nbytes, "little"))
        if dma.bitmap is not None:
            dma.bitmap = 0

    def vfio_iommu_type1_dirty_pages(self, arg: IoctlArg) -> int:
        """VFIO_IOMMU_DIRTY_PAGES: vfio_iommu_type1_dirty_pages (START, STOP
        or GET_BITMAP)."""
        if not self.v2:
            # vfio_iommu_type1_dirty_pages: EACCES for a v1 container
            raise errno_error(errno.EACCES, "dirty tracking needs TYPE1v2")
        user = UserPtr(arg)
        minsz = ffi.offsetof("struct vfio_iommu_type1_dirty_bitmap", "flags") + 4
        # copy_from_user: EFAULT for a bad pointer
        dirty = user.read_struct("struct vfio_iommu_type1_dirty_bitmap", length=minsz)
        argsz, flags = int(dirty.argsz), int(dirty.flags)
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
                for _s, _l, dma in self.dma:  # vfio_dma_bitmap_alloc_all
                    dma.bitmap = 0
                self.dirty_page_tracking = True
            return 0
        if flags & lib.VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP:
            if self.dirty_page_tracking:
                self.dirty_page_tracking = False
                for _s, _l, dma in self.dma:  # vfio_dma_bitmap_free_all
                    dma.bitmap = None
            return 0
        if flags & lib.VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP:
            return self._get_bitmap(user, argsz - minsz, minsz)
        # vfio_iommu_type1_dirty_pages: EINVAL without a flag
        raise errno_error(errno.EINVAL, "no flag")

    def _get_bitmap(self, user: UserPtr, data_size: int, minsz: int) -> int:
        """The GET_BITMAP branch of vfio_iommu_type1_dirty_pages."""
        if not data_size or data_size < ffi.sizeof("struct vfio_iommu_type1_dirty_bitmap_get"):
            # vfio_iommu_type1_dirty_pages: EINVAL without room for the range
            raise errno_error(errno.EINVAL, "argsz leaves no room for the range")
        # copy_from_user: EFAULT for a bad pointer
        rng = user.read_struct("struct vfio_iommu_type1_dirty_bitmap_get", offset=minsz)
        iova, size = int(rng.iova), int(rng.size)
        bpgsize, bsize = int(rng.bitmap.pgsize), int(rng.bitmap.size)
        bdata = UserPtr.from_value(rng.bitmap.data)
        if not size:
            # vfio_iommu_type1_dirty_pages: EINVAL for a zero size
            raise errno_error(errno.EINVAL, "size is 0")
        if iova + size - 1 > _U64:
            # vfio_iommu_type1_dirty_pages: EOVERFLOW when iova + size wraps
            raise errno_error(errno.EOVERFLOW, "iova + size overflows")
        iova_end = iova + size - 1
        if not access_ok(bdata.address, bsize):
            # vfio_iommu_type1_dirty_pages: EINVAL for a bitmap outside user space
            raise errno_error(errno.EINVAL, "bitmap is not in user space")
        verify_bitmap_size(size >> _ffs(bpgsize), bsize)
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
        self.vfio_iova_dirty_bitmap(bdata, iova, iova_end, pgsize)
        return 0

    def vfio_iova_dirty_bitmap(self, user_bitmap: UserPtr, iova: int, iova_end: int,
                               pgsize: int) -> None:
        """vfio_iova_dirty_bitmap: report the dirty pages of the mappings in
        ``[iova, iova_end]``, which must not cut a mapping."""
        dma = self.vfio_find_dma(iova, 1)
        if dma is not None and dma.iova != iova:
            # vfio_iova_dirty_bitmap: EINVAL when the range starts inside a mapping
            raise errno_error(errno.EINVAL, "range starts inside a mapping")
        dma = self.vfio_find_dma(iova_end, 1)
        if dma is not None and dma.last != iova_end:
            # vfio_iova_dirty_bitmap: EINVAL when the range ends inside a mapping
            raise errno_error(errno.EINVAL, "range ends inside a mapping")
        for _s, _l, d in list(self.dma.overlapping(iova, iova_end)):
            if d.iova < iova:
                continue
            self.update_user_bitmap(user_bitmap, d, iova, pgsize)
