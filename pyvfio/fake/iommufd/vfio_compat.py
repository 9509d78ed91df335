"""The VFIO container interface served by /dev/iommu.

After drivers/iommu/iommufd/vfio_compat.c of Linux 7.3: IOMMU_VFIO_IOAS,
the compat IOAS a vfio group or device attaches to, and the type1
container ioctls on the iommufd (iommufd_vfio_ioctl: VFIO_GET_API_VERSION,
VFIO_SET_IOMMU, VFIO_CHECK_EXTENSION, VFIO_IOMMU_GET_INFO,
VFIO_IOMMU_MAP_DMA, VFIO_IOMMU_UNMAP_DMA).  The group entry points
(``compat_attach_group`` and friends) are methods of
:class:`~.main.IommufdFile` that call the functions here.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from ..._uapi import ffi, lib
from ...backend.base import IoctlArg
from ..core import errno_error
from ..uaccess import UserPtr
from ._private import OBJ_IOAS, Ioas, offsetofend, reserved_nonzero
from .device import iommufd_device_attach, iommufd_get_device
from .io_pagetable import IOMMU_READ, IOMMU_WRITE, ULONG_MAX, iopt_map_user_pages
from .ioas import iommufd_ioas_alloc

if TYPE_CHECKING:
    from ..machine.system import VfioGroup
    from .main import IommufdFile, Ucmd

__all__ = [
    "get_compat_ioas", "iommufd_vfio_ioas", "iommufd_vfio_compat_attach_group",
    "iommufd_vfio_compat_attach_device", "iommufd_vfio_ioctl",
]


def get_compat_ioas(ictx: IommufdFile) -> Ioas:
    """get_compat_ioas: ENODEV without a compat IOAS."""
    if ictx.vfio_ioas is None or ictx.vfio_ioas.id not in ictx.objects:
        raise errno_error(errno.ENODEV, "no compat IOAS")
    return ictx.vfio_ioas


def iommufd_vfio_ioas(ictx: IommufdFile, u: Ucmd) -> int:
    """iommufd_vfio_ioas."""
    cmd = u.cmd
    if reserved_nonzero(cmd):
        # iommufd_vfio_ioas: EOPNOTSUPP for a nonzero __reserved
        raise errno_error(errno.EOPNOTSUPP, "__reserved must be 0")
    if cmd.op == lib.IOMMU_VFIO_IOAS_GET:
        cmd.ioas_id = get_compat_ioas(ictx).id
        u.respond()
        return 0
    if cmd.op == lib.IOMMU_VFIO_IOAS_SET:
        ictx.vfio_ioas = ictx.get_object(int(cmd.ioas_id), OBJ_IOAS)
        return 0
    if cmd.op == lib.IOMMU_VFIO_IOAS_CLEAR:
        ictx.vfio_ioas = None
        return 0
    # iommufd_vfio_ioas: EOPNOTSUPP for an unknown op
    raise errno_error(errno.EOPNOTSUPP, f"unknown op {cmd.op}")


# -- the group path ----------------------------------------------------------------------------
def iommufd_vfio_compat_attach_group(ictx: IommufdFile, vgroup: VfioGroup) -> None:
    """VFIO_GROUP_SET_CONTAINER with an iommufd:
    iommufd_vfio_compat_set_no_iommu or iommufd_vfio_compat_ioas_create;
    the group then holds a context reference."""
    if vgroup.noiommu:
        if ictx.vfio_ioas is not None:
            # iommufd_vfio_compat_set_no_iommu: EINVAL with a compat IOAS
            raise errno_error(errno.EINVAL, "the iommufd has a compat IOAS")
        ictx.no_iommu_mode = True
    else:
        ioas = iommufd_ioas_alloc(ictx)
        if ictx.no_iommu_mode:
            ictx.object_abort_and_destroy(ioas)
            # iommufd_vfio_compat_ioas_create: EINVAL in no-IOMMU mode
            raise errno_error(errno.EINVAL, "the iommufd is in no-IOMMU mode")
        if ictx.vfio_ioas is not None and ictx.vfio_ioas.id in ictx.objects:
            ictx.object_abort_and_destroy(ioas)
        else:
            ictx.vfio_ioas = ioas
            ictx.object_finalize(ioas)
    ictx.ctx_get()


def iommufd_vfio_compat_attach_device(ictx: IommufdFile, dev_id: int) -> int:
    """vfio_iommufd_compat_attach_ioas: attach to the compat IOAS."""
    idev = iommufd_get_device(ictx, dev_id)
    if idev.noiommu:
        return 0
    return iommufd_device_attach(ictx, dev_id, get_compat_ioas(ictx).id)


# -- the container ioctls ----------------------------------------------------------------------
def iommufd_vfio_ioctl(ictx: IommufdFile, request: int, arg: IoctlArg) -> int:
    """iommufd_vfio_ioctl."""
    if request == lib.VFIO_GET_API_VERSION:
        return int(lib.VFIO_API_VERSION)
    if request == lib.VFIO_SET_IOMMU:
        return _vfio_set_iommu(ictx, UserPtr(arg).address)
    if request == lib.VFIO_CHECK_EXTENSION:
        return _vfio_check_extension(ictx, UserPtr(arg).address)
    if request == lib.VFIO_IOMMU_GET_INFO:
        return _vfio_iommu_get_info(ictx, UserPtr(arg))
    if request == lib.VFIO_IOMMU_MAP_DMA:
        return _vfio_map_dma(ictx, UserPtr(arg))
    if request == lib.VFIO_IOMMU_UNMAP_DMA:
        return _vfio_unmap_dma(ictx, UserPtr(arg))
    # iommufd_vfio_ioctl: ENOIOCTLCMD (ENOTTY) for anything else
    raise errno_error(errno.ENOTTY)


def _vfio_set_iommu(ictx: IommufdFile, type_: int) -> int:
    """iommufd_vfio_set_iommu."""
    if type_ == lib.VFIO_NOIOMMU_IOMMU and ictx.no_iommu_mode:
        if not getattr(ictx.system, "cap_sys_rawio", True):
            # iommufd_vfio_set_iommu: EPERM without CAP_SYS_RAWIO
            raise errno_error(errno.EPERM, "no-IOMMU needs CAP_SYS_RAWIO")
        return 0
    if type_ not in (lib.VFIO_TYPE1_IOMMU, lib.VFIO_TYPE1v2_IOMMU) or ictx.no_iommu_mode:
        # iommufd_vfio_set_iommu: EINVAL for other types or in no-IOMMU mode
        raise errno_error(errno.EINVAL, f"IOMMU type {type_} not supported")
    ioas = get_compat_ioas(ictx)
    if type_ == lib.VFIO_TYPE1_IOMMU:
        # type1 can unmap inside mappings: no huge IOPTEs
        ioas.iopt.disable_large_pages_()
    return 0


def _vfio_check_extension(ictx: IommufdFile, ext: int) -> int:
    """iommufd_vfio_check_extension."""
    if ext in (lib.VFIO_TYPE1_IOMMU, lib.VFIO_TYPE1v2_IOMMU, lib.VFIO_UNMAP_ALL):
        return 0 if ictx.no_iommu_mode else 1
    if ext == lib.VFIO_NOIOMMU_IOMMU:
        return 1  # CONFIG_VFIO_NOIOMMU
    if ext == lib.VFIO_DMA_CC_IOMMU:
        # iommufd_vfio_cc_iommu: ENODEV without a compat IOAS
        ioas = get_compat_ioas(ictx)
        return 0 if any(not h.enforce_cache_coherency for h in ioas.hwpt_list) else 1
    return 0


def _vfio_iommu_get_info(ictx: IommufdFile, user: UserPtr) -> int:
    """iommufd_vfio_iommu_get_info."""
    info_size = int(ffi.sizeof("struct vfio_iommu_type1_info"))
    minsz = offsetofend("struct vfio_iommu_type1_info", "iova_pgsizes")
    # copy_from_user: EFAULT
    head = user.read_struct("struct vfio_iommu_type1_info", 0, minsz)
    argsz = int(head.argsz)
    if argsz < minsz:
        # iommufd_vfio_iommu_get_info: EINVAL below the minimum size
        raise errno_error(errno.EINVAL, f"argsz {argsz} < {minsz}")
    copy = min(argsz, info_size)
    ioas = get_compat_ioas(ictx)
    info = ffi.new("struct vfio_iommu_type1_info *")
    info.flags = lib.VFIO_IOMMU_INFO_PGSIZES
    info.iova_pgsizes = _get_pagesizes(ictx, ioas)
    total = info_size
    last_cap: int | None = None
    for fill in (_fill_cap_dma_avail, _fill_cap_iova):
        avail = argsz - total if argsz > total else 0
        # iommufd_fill_cap_*: write what fits, report the full size
        size = fill(ioas, user, total, avail)
        size = (size + 7) & ~7
        if last_cap is not None and argsz >= total:
            # put_user of the previous header's next
            user.write_u32(last_cap + 4, total)
        last_cap = total
        total += size
    if argsz >= total:
        info.cap_offset = info_size
    info.argsz = total
    info.flags |= lib.VFIO_IOMMU_INFO_CAPS
    user.write_struct(info, 0, copy)
    return 0


def _get_pagesizes(ictx: IommufdFile, ioas: Ioas) -> int:
    """iommufd_get_pagesizes."""
    ps = ictx.system_page_size
    bitmap = ULONG_MAX
    for hwpt in ioas.hwpt_list:
        bitmap &= hwpt.domain.pgsize_bitmap
    if bitmap & (ps - 1):
        bitmap &= ~(ps - 1) & ULONG_MAX
        bitmap |= ps
    return max(bitmap, ioas.iopt.iova_alignment)


def _fill_cap_dma_avail(ioas: Ioas, user: UserPtr, offset: int, avail: int) -> int:
    """iommufd_fill_cap_dma_avail."""
    cap = ffi.new("struct vfio_iommu_type1_info_dma_avail *")
    cap.header.id = lib.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL
    cap.header.version = 1
    cap.avail = 0xFFFFFFFF
    size = int(ffi.sizeof(cap[0]))
    if avail >= size:
        user.write_struct(cap, offset)
    return size


def _fill_cap_iova(ioas: Ioas, user: UserPtr, offset: int, avail: int) -> int:
    """iommufd_fill_cap_iova: each range that fits, then the header if
    everything fits."""
    ranges = ioas.iopt.iova_ranges()
    head = int(ffi.sizeof("struct vfio_iommu_type1_info_cap_iova_range"))
    entry = int(ffi.sizeof("struct vfio_iova_range"))
    for i, (start, last) in enumerate(ranges):
        if avail >= head + (i + 1) * entry:
            elm = ffi.new("struct vfio_iova_range *", {"start": start, "end": last})
            user.write_struct(elm, offset + head + i * entry)
    size = head + len(ranges) * entry
    if avail >= size:
        cap = ffi.new("struct vfio_iommu_type1_info_cap_iova_range *")
        cap.header.id = lib.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE
        cap.header.version = 1
        cap.nr_iovas = len(ranges)
        user.write_struct(cap, offset, head)
    return size


def _vfio_map_dma(ictx: IommufdFile, user: UserPtr) -> int:
    """iommufd_vfio_map_dma."""
    minsz = offsetofend("struct vfio_iommu_type1_dma_map", "size")
    # copy_from_user: EFAULT
    m = user.read_struct("struct vfio_iommu_type1_dma_map", 0, minsz)
    supported = lib.VFIO_DMA_MAP_FLAG_READ | lib.VFIO_DMA_MAP_FLAG_WRITE
    if m.argsz < minsz or m.flags & ~supported:
        # iommufd_vfio_map_dma: EINVAL for a short argsz or unknown flags
        raise errno_error(errno.EINVAL, "bad argsz or flags")
    prot = 0
    if m.flags & lib.VFIO_DMA_MAP_FLAG_READ:
        prot |= IOMMU_READ
    if m.flags & lib.VFIO_DMA_MAP_FLAG_WRITE:
        prot |= IOMMU_WRITE
    ioas = get_compat_ioas(ictx)
    iopt_map_user_pages(ictx, ioas.iopt, int(m.vaddr), int(m.size), int(m.iova), prot,
                        alloc=False)
    return 0


def _vfio_unmap_dma(ictx: IommufdFile, user: UserPtr) -> int:
    """iommufd_vfio_unmap_dma: the unmapped size is written back even when
    the unmap fails part way."""
    minsz = offsetofend("struct vfio_iommu_type1_dma_unmap", "size")
    # copy_from_user: EFAULT
    um = user.read_struct("struct vfio_iommu_type1_dma_unmap", 0, minsz)
    if um.argsz < minsz or um.flags & ~lib.VFIO_DMA_UNMAP_FLAG_ALL:
        # iommufd_vfio_unmap_dma: EINVAL for a short argsz or unsupported flags
        raise errno_error(errno.EINVAL, "bad argsz or flags")
    ioas = get_compat_ioas(ictx)
    iova, size = int(um.iova), int(um.size)
    err = 0
    if um.flags & lib.VFIO_DMA_UNMAP_FLAG_ALL:
        if iova or size:
            # iommufd_vfio_unmap_dma: EINVAL, UNMAP_ALL takes no range
            raise errno_error(errno.EINVAL, "UNMAP_ALL with a range")
        unmapped = ioas.iopt.unmap_all()
    else:
        if ioas.iopt.disable_large_pages:
            # type1 semantics: cut the mappings at the range's ends
            cuts = [(iova + size - 1) & ULONG_MAX] + ([(iova - 1) & ULONG_MAX] if iova else [])
            ioas.iopt.cut_iova(cuts)
        try:
            err, unmapped = ioas.iopt.unmap_iova(iova, size)
        except OSError as e:
            # iommufd_vfio_unmap_dma: the size (0) is written back on errors too
            err, unmapped = int(e.errno or errno.EINVAL), 0
    um.size = unmapped
    user.write_struct(um, 0, minsz)
    if err:
        raise errno_error(err, "the range is empty, overflows or splits a mapping")
    return 0
