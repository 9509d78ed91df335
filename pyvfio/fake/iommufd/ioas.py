"""IOAS ioctls: an I/O address space and its mappings.

After drivers/iommu/iommufd/ioas.c of Linux 7.3: IOMMU_IOAS_ALLOC,
_IOVA_RANGES, _ALLOW_IOVAS, _MAP, _MAP_FILE, _COPY, _UNMAP,
_CHANGE_PROCESS, _NOIOMMU_GET_PA and the IOAS option of IOMMU_OPTION
(huge pages).  Each handler is ``handler(ictx, ucmd) -> int`` for the
ioctl table of :mod:`.main`; the page table work is :mod:`.io_pagetable`.
"""

from __future__ import annotations

import errno
import struct
from typing import TYPE_CHECKING, Any

from ..._uapi import ffi, lib
from ..core import errno_error
from ..intervals import IntervalMap
from ..uaccess import UserPtr
from .io_pagetable import (
    HPAGE_SIZE,
    IOMMU_READ,
    IOMMU_WRITE,
    ULONG_MAX,
    iopt_map_file_pages,
    iopt_map_user_pages,
)
from ._private import OBJ_IOAS, U64_MAX, Ioas, reserved_nonzero

if TYPE_CHECKING:
    from .main import IommufdFile, Ucmd

__all__ = [
    "MAP_FLAGS", "conv_iommu_prot", "iommufd_ioas_alloc", "iommufd_ioas_alloc_ioctl",
    "iommufd_ioas_iova_ranges", "iommufd_ioas_load_iovas", "iommufd_ioas_allow_iovas", "iommufd_ioas_map",
    "iommufd_ioas_map_file", "iommufd_ioas_copy", "iommufd_ioas_unmap",
    "iommufd_ioas_change_process", "iommufd_ioas_noiommu_get_pa", "iommufd_ioas_option",
]

#: The flags IOMMU_IOAS_MAP, _MAP_FILE and _COPY accept.
MAP_FLAGS = (lib.IOMMU_IOAS_MAP_FIXED_IOVA | lib.IOMMU_IOAS_MAP_WRITEABLE
             | lib.IOMMU_IOAS_MAP_READABLE)
_RANGE_SIZE = int(ffi.sizeof("struct iommu_iova_range"))
#: struct iommu_iova_range as bytes: ``start`` and ``last``, two native u64
_RANGE = struct.Struct("=QQ")
assert _RANGE.size == _RANGE_SIZE and ffi.offsetof("struct iommu_iova_range", "last") == 8
#: ranges per copy of IOMMU_IOAS_ALLOW_IOVAS's and _IOVA_RANGES's arrays (64 KiB)
_LOAD_CHUNK = 4096


def conv_iommu_prot(flags: int) -> int:
    """conv_iommu_prot (IOMMU_CACHE is implied)."""
    prot = 0
    if flags & lib.IOMMU_IOAS_MAP_WRITEABLE:
        prot |= IOMMU_WRITE
    if flags & lib.IOMMU_IOAS_MAP_READABLE:
        prot |= IOMMU_READ
    return prot


def iommufd_ioas_alloc(ictx: IommufdFile) -> Ioas:
    """iommufd_ioas_alloc: a new IOAS, its ID reserved until finalized.
    Automatic IOVAs are aligned up to HPAGE_SIZE with
    CONFIG_TRANSPARENT_HUGEPAGE, else PAGE_SIZE."""
    thp = getattr(ictx.system, "transparent_hugepage", True)
    ps = ictx.system_page_size
    ioas = Ioas(ps, HPAGE_SIZE if thp else ps)
    ictx.object_alloc(ioas)
    return ioas


def iommufd_ioas_alloc_ioctl(ictx: IommufdFile, u: Ucmd) -> int:
    """iommufd_ioas_alloc_ioctl."""
    cmd = u.cmd
    if cmd.flags:
        # iommufd_ioas_alloc_ioctl: EOPNOTSUPP for any flag
        raise errno_error(errno.EOPNOTSUPP, "flags must be 0")
    ioas = iommufd_ioas_alloc(ictx)
    cmd.out_ioas_id = ioas.id
    try:
        u.respond()
    except OSError:
        ictx.object_abort_and_destroy(ioas)
        raise
    ictx.object_finalize(ioas)
    return 0


def iommufd_ioas_iova_ranges(ictx: IommufdFile, u: Ucmd) -> int:
    """iommufd_ioas_iova_ranges."""
    cmd = u.cmd
    if reserved_nonzero(cmd):
        # iommufd_ioas_iova_ranges: EOPNOTSUPP for a nonzero __reserved
        raise errno_error(errno.EOPNOTSUPP, "__reserved must be 0")
    ioas: Ioas = ictx.get_object(int(cmd.ioas_id), OBJ_IOAS)
    max_iovas = int(cmd.num_iovas)
    ranges = UserPtr.from_value(cmd.allowed_iovas)
    cmd.num_iovas = 0
    cmd.out_iova_alignment = ioas.iopt.iova_alignment
    spans = ioas.iopt.iova_ranges()
    count = len(spans)
    # copy_to_user of each range that fits: EFAULT for a bad array (written
    # here in chunks, range by range only where a chunk faults, so that the
    # ranges before the fault are written as the kernel writes them)
    for first in range(0, min(count, max_iovas), _LOAD_CHUNK):
        chunk = spans[first:min(first + _LOAD_CHUNK, max_iovas)]
        data = b"".join(_RANGE.pack(start, last) for start, last in chunk)
        try:
            ranges.write(first * _RANGE_SIZE, data)
        except OSError as e:
            if e.errno != errno.EFAULT:
                raise
            for i in range(len(chunk)):
                off = i * _RANGE_SIZE
                ranges.write((first + i) * _RANGE_SIZE, data[off:off + _RANGE_SIZE])
    cmd.num_iovas = count
    u.respond()
    if count > max_iovas:
        # iommufd_ioas_iova_ranges: EMSGSIZE (after reporting the count)
        raise errno_error(errno.EMSGSIZE, f"{count} ranges, room for {max_iovas}")
    return 0


def iommufd_ioas_load_iovas(user: UserPtr, num: int) -> IntervalMap[None]:
    """iommufd_ioas_load_iovas: the ``num`` ranges of the user array as a
    new tree of allowed ranges.

    The kernel copies one range at a time and looks each up in the tree
    built so far; here the array is copied in chunks (one access check per
    chunk, element by element only where a chunk faults) and checked by
    sorting, which gives the same verdict: EINVAL when any range read
    before a fault is inverted or overlaps another, else EFAULT for the
    fault."""
    ranges: list[tuple[int, int]] = []
    fault: OSError | None = None
    for first in range(0, num, _LOAD_CHUNK):
        count = min(_LOAD_CHUNK, num - first)
        try:
            data = user.read(first * _RANGE_SIZE, count * _RANGE_SIZE)
        except OSError as e:
            if e.errno != errno.EFAULT:
                raise
            # iommufd_ioas_load_iovas: EFAULT at the first unreadable range
            for i in range(first, first + count):
                try:
                    ranges.extend(_RANGE.iter_unpack(user.read(i * _RANGE_SIZE, _RANGE_SIZE)))
                except OSError as fe:
                    fault = fe
                    break
            break
        ranges.extend(_RANGE.iter_unpack(data))
    for start, last in ranges:
        if start >= last:
            # iommufd_ioas_load_iovas: EINVAL for an empty or inverted range
            raise errno_error(errno.EINVAL, f"range [{start:#x}, {last:#x}] is invalid")
    ranges.sort()
    for (_s, prev_last), (start, last) in zip(ranges, ranges[1:]):
        if start <= prev_last:
            # iommufd_ioas_load_iovas: EINVAL for overlapping ranges
            raise errno_error(errno.EINVAL, f"range [{start:#x}, {last:#x}] overlaps another")
    if fault is not None:
        raise fault
    return IntervalMap.from_sorted((start, last, None) for start, last in ranges)


def iommufd_ioas_allow_iovas(ictx: IommufdFile, u: Ucmd) -> int:
    """iommufd_ioas_allow_iovas."""
    cmd = u.cmd
    if reserved_nonzero(cmd):
        # iommufd_ioas_allow_iovas: EOPNOTSUPP for a nonzero __reserved
        raise errno_error(errno.EOPNOTSUPP, "__reserved must be 0")
    ioas: Ioas = ictx.get_object(int(cmd.ioas_id), OBJ_IOAS)
    allowed = iommufd_ioas_load_iovas(UserPtr.from_value(cmd.allowed_iovas), int(cmd.num_iovas))
    ioas.iopt.set_allow_iova(allowed)
    return 0


def iommufd_ioas_map(ictx: IommufdFile, u: Ucmd) -> int:
    """iommufd_ioas_map."""
    cmd = u.cmd
    flags = int(cmd.flags)
    if flags & ~MAP_FLAGS or reserved_nonzero(cmd):
        # iommufd_ioas_map: EOPNOTSUPP for unknown flags or a nonzero __reserved
        raise errno_error(errno.EOPNOTSUPP, f"unsupported flags {flags:#x} or __reserved")
    iova, length = int(cmd.iova), int(cmd.length)
    if iova >= ULONG_MAX or length >= ULONG_MAX:
        # iommufd_ioas_map: EOVERFLOW
        raise errno_error(errno.EOVERFLOW, "iova or length too large")
    if not flags & (lib.IOMMU_IOAS_MAP_WRITEABLE | lib.IOMMU_IOAS_MAP_READABLE):
        # iommufd_ioas_map: EINVAL without READABLE or WRITEABLE
        raise errno_error(errno.EINVAL, "neither READABLE nor WRITEABLE")
    ioas: Ioas = ictx.get_object(int(cmd.ioas_id), OBJ_IOAS)
    alloc = not flags & lib.IOMMU_IOAS_MAP_FIXED_IOVA
    cmd.iova = iopt_map_user_pages(ictx, ioas.iopt, int(cmd.user_va), length, iova,
                                   conv_iommu_prot(flags), alloc)
    u.respond()
    return 0


def iommufd_ioas_map_file(ictx: IommufdFile, u: Ucmd) -> int:
    """iommufd_ioas_map_file."""
    cmd = u.cmd
    flags = int(cmd.flags)
    if flags & ~MAP_FLAGS:
        # iommufd_ioas_map_file: EOPNOTSUPP for unknown flags
        raise errno_error(errno.EOPNOTSUPP, f"unsupported flags {flags:#x}")
    iova, length, start = int(cmd.iova), int(cmd.length), int(cmd.start)
    if iova >= ULONG_MAX or length >= ULONG_MAX:
        # iommufd_ioas_map_file: EOVERFLOW
        raise errno_error(errno.EOVERFLOW, "iova or length too large")
    if not flags & (lib.IOMMU_IOAS_MAP_WRITEABLE | lib.IOMMU_IOAS_MAP_READABLE):
        # iommufd_ioas_map_file: EINVAL without READABLE or WRITEABLE
        raise errno_error(errno.EINVAL, "neither READABLE nor WRITEABLE")
    ioas: Ioas = ictx.get_object(int(cmd.ioas_id), OBJ_IOAS)
    alloc = not flags & lib.IOMMU_IOAS_MAP_FIXED_IOVA
    cmd.iova = iopt_map_file_pages(ictx, ioas.iopt, int(cmd.fd), start, length, iova,
                                   conv_iommu_prot(flags), alloc)
    u.respond()
    return 0


def iommufd_ioas_copy(ictx: IommufdFile, u: Ucmd) -> int:
    """iommufd_ioas_copy."""
    cmd = u.cmd
    flags = int(cmd.flags)
    if flags & ~MAP_FLAGS:
        # iommufd_ioas_copy: EOPNOTSUPP for unknown flags
        raise errno_error(errno.EOPNOTSUPP, f"unsupported flags {flags:#x}")
    length, src_iova, dst_iova = int(cmd.length), int(cmd.src_iova), int(cmd.dst_iova)
    if length >= ULONG_MAX or src_iova >= ULONG_MAX or dst_iova >= ULONG_MAX:
        # iommufd_ioas_copy: EOVERFLOW
        raise errno_error(errno.EOVERFLOW, "length or IOVA too large")
    if not flags & (lib.IOMMU_IOAS_MAP_WRITEABLE | lib.IOMMU_IOAS_MAP_READABLE):
        # iommufd_ioas_copy: EINVAL without READABLE or WRITEABLE
        raise errno_error(errno.EINVAL, "neither READABLE nor WRITEABLE")
    src: Ioas = ictx.get_object(int(cmd.src_ioas_id), OBJ_IOAS)
    elms = src.iopt.get_pages(src_iova, length)
    try:
        dst: Ioas = ictx.get_object(int(cmd.dst_ioas_id), OBJ_IOAS)
        alloc = not flags & lib.IOMMU_IOAS_MAP_FIXED_IOVA
        cmd.dst_iova = dst.iopt.map_pages(elms, length, dst_iova, conv_iommu_prot(flags), alloc)
    except BaseException:
        for elm in elms:
            elm.pages.put()
        raise
    u.respond()
    return 0


def iommufd_ioas_unmap(ictx: IommufdFile, u: Ucmd) -> int:
    """iommufd_ioas_unmap."""
    cmd = u.cmd
    ioas: Ioas = ictx.get_object(int(cmd.ioas_id), OBJ_IOAS)
    iova, length = int(cmd.iova), int(cmd.length)
    if iova == 0 and length == U64_MAX:
        unmapped = ioas.iopt.unmap_all()
    else:
        if iova >= ULONG_MAX or length >= ULONG_MAX:
            # iommufd_ioas_unmap: EOVERFLOW
            raise errno_error(errno.EOVERFLOW, "iova or length too large")
        err, unmapped = ioas.iopt.unmap_iova(iova, length)
        if err:
            raise errno_error(err, f"[{iova:#x}, +{length:#x}) splits a mapping")
        if not unmapped:
            # iommufd_ioas_unmap: ENOENT when nothing was mapped there
            raise errno_error(errno.ENOENT, f"nothing mapped in [{iova:#x}, +{length:#x})")
    cmd.length = unmapped
    u.respond()
    return 0


def iommufd_ioas_change_process(ictx: IommufdFile, u: Ucmd) -> int:
    """iommufd_ioas_change_process: one process, so only the checks."""
    if reserved_nonzero(u.cmd):
        # iommufd_ioas_change_process: EOPNOTSUPP for a nonzero __reserved
        raise errno_error(errno.EOPNOTSUPP, "__reserved must be 0")
    for oid in sorted(ictx.objects):
        obj = ictx.objects[oid]
        if not isinstance(obj, Ioas):
            continue
        for _s, _l, area in obj.iopt.areas:
            if area.pages.kind != "file":
                # iommufd_ioas_change_process: EINVAL with user-address mappings
                raise errno_error(errno.EINVAL, "only file mappings can change process")
    return 0


def iommufd_ioas_noiommu_get_pa(ictx: IommufdFile, u: Ucmd) -> int:
    """iommufd_ioas_noiommu_get_pa."""
    cmd = u.cmd
    if not getattr(ictx.system, "cap_sys_rawio", True):
        # iommufd_ioas_noiommu_get_pa: EPERM without CAP_SYS_RAWIO
        raise errno_error(errno.EPERM, "needs CAP_SYS_RAWIO")
    if cmd.flags or reserved_nonzero(cmd):
        # iommufd_ioas_noiommu_get_pa: EOPNOTSUPP for flags or __reserved
        raise errno_error(errno.EOPNOTSUPP, "flags and __reserved must be 0")
    if not cmd.length:
        # iommufd_ioas_noiommu_get_pa: EINVAL for a zero length
        raise errno_error(errno.EINVAL, "zero length")
    iova = int(cmd.iova)
    if iova >= ULONG_MAX:
        # iommufd_ioas_noiommu_get_pa: EOVERFLOW
        raise errno_error(errno.EOVERFLOW, "iova too large")
    ioas: Ioas = ictx.get_object(int(cmd.ioas_id), OBJ_IOAS)
    found = ioas.iopt.areas.find(iova)
    if found is None:
        # iopt_get_phys: ENOENT for an unmapped IOVA
        raise errno_error(errno.ENOENT, f"IOVA {iova:#x} is not mapped")
    area = found[2]
    storage = ioas.iopt.storage_domain()
    if not area.filled or storage is None or not storage.noiommu:
        # iopt_get_phys: EOPNOTSUPP unless a no-IOMMU domain stores the pages
        raise errno_error(errno.EOPNOTSUPP, "the IOVA is not held by a no-IOMMU domain")
    cmd.out_phys = area.pages.va(area.start_byte_at(iova))
    cmd.length = min(int(cmd.length), area.last - iova + 1)
    u.respond()
    return 0


def iommufd_ioas_option(ictx: IommufdFile, cmd: Any) -> None:
    """iommufd_ioas_option: IOMMU_OPTION_HUGE_PAGES of one IOAS."""
    ioas: Ioas = ictx.get_object(int(cmd.object_id), OBJ_IOAS)
    iopt = ioas.iopt
    if cmd.op == lib.IOMMU_OPTION_OP_GET:
        cmd.val64 = 0 if iopt.disable_large_pages else 1
        return
    if cmd.op == lib.IOMMU_OPTION_OP_SET:
        if cmd.val64 == 0:
            iopt.disable_large_pages_()
        elif cmd.val64 == 1:
            iopt.enable_large_pages()
        else:
            # iommufd_ioas_option_huge_pages: EINVAL for other values
            raise errno_error(errno.EINVAL, f"bad value {cmd.val64}")
        return
    # iommufd_ioas_option_huge_pages: EOPNOTSUPP for an unknown op
    raise errno_error(errno.EOPNOTSUPP, f"unknown op {cmd.op}")
