"""HWPT ioctls: hardware page tables and their dirty tracking.

After drivers/iommu/iommufd/hw_pagetable.c of Linux 7.3: paging HWPTs on an
IOAS (iommufd_hwpt_paging_alloc, also used for the automatic HWPTs of
:mod:`.device`), nested HWPTs on a nesting parent (refused: intel-iommu's
stage-1 tables are not simulated, and the SMMUv3 makes nested domains only
on a vIOMMU) or on a vIOMMU (the SMMUv3's vSTE),
IOMMU_HWPT_SET_DIRTY_TRACKING, IOMMU_HWPT_GET_DIRTY_BITMAP and
IOMMU_HWPT_INVALIDATE (of a vIOMMU: the driver's command checks).

The kernel's hw_pagetable.c and device.c call each other (an HWPT
allocated for immediate attach is attached by device.c's
iommufd_hw_pagetable_attach); here :mod:`.device` imports this module and
hands :func:`iommufd_hwpt_paging_alloc` its attach and detach functions.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any, Callable, Optional, Tuple

from ..._uapi import lib
from ..core import errno_error
from ..uaccess import UserPtr
from .iova_bitmap import iova_bitmap_set
from ._arm_smmu_v3 import STAGE_S2, arm_smmu_vmid_alloc
from ._iommu import (
    dirty_tracking_capable,
    domain_alloc_nested_supported,
    domain_alloc_paging_flags,
    paging_domain_aperture,
)
from ._private import (
    NO_PASID,
    OBJ_DEVICE,
    OBJ_FAULT,
    OBJ_HWPT_PAGING,
    Fault,
    Hwpt,
    HwptNested,
    HwptPaging,
    Idev,
    Ioas,
    Viommu,
    reserved_nonzero,
)
from .io_pagetable import ULONG_MAX, IoptDomain

if TYPE_CHECKING:
    from .main import IommufdFile, Ucmd

__all__ = [
    "ImmediateAttach", "iommufd_hwpt_paging_alloc", "iommufd_hwpt_alloc",
    "iommufd_hwpt_nested_alloc", "iommufd_viommu_alloc_hwpt_nested",
    "iommufd_hwpt_set_dirty_tracking",
    "iommufd_hwpt_get_dirty_bitmap", "iommufd_hwpt_invalidate",
]

#: IOMMU_HWPT_INVALIDATE_ENTRY_NUM_MAX
_INVALIDATE_ENTRY_NUM_MAX = 1 << 19

#: ``immediate_attach`` of :func:`iommufd_hwpt_paging_alloc`: device.c's
#: iommufd_hw_pagetable_attach and iommufd_hw_pagetable_detach.
ImmediateAttach = Tuple[Callable[["IommufdFile", HwptPaging, Idev, int], None],
                        Callable[["IommufdFile", Idev, int], object]]


def iommufd_hwpt_paging_alloc(ictx: IommufdFile, ioas: Ioas, idev: Idev, pasid: int,
                              flags: int, user_data: bool,
                              immediate_attach: Optional[ImmediateAttach] = None) -> HwptPaging:
    """iommufd_hwpt_paging_alloc (the caller finalizes or aborts)."""
    valid = (lib.IOMMU_HWPT_ALLOC_NEST_PARENT | lib.IOMMU_HWPT_ALLOC_DIRTY_TRACKING
             | lib.IOMMU_HWPT_FAULT_ID_VALID | lib.IOMMU_HWPT_ALLOC_PASID)
    if flags & ~valid:
        # iommufd_hwpt_paging_alloc: EOPNOTSUPP for unknown flags
        raise errno_error(errno.EOPNOTSUPP, f"unsupported flags {flags:#x}")
    system = ictx.system
    if flags & lib.IOMMU_HWPT_ALLOC_DIRTY_TRACKING and not dirty_tracking_capable(system, idev):
        # iommufd_hwpt_paging_alloc: EOPNOTSUPP without IOMMU_CAP_DIRTY_TRACKING
        raise errno_error(errno.EOPNOTSUPP, "the IOMMU cannot track dirty pages")
    if flags & lib.IOMMU_HWPT_FAULT_ID_VALID and flags & lib.IOMMU_HWPT_ALLOC_NEST_PARENT:
        # iommufd_hwpt_paging_alloc: EOPNOTSUPP for a nesting parent with a fault queue
        raise errno_error(errno.EOPNOTSUPP, "a nesting parent cannot have a fault queue")
    iommu = system.iommu
    ps = ictx.system_page_size
    if idev.noiommu or iommu is None:
        domain = IoptDomain(ps | (ps << 9) | (ps << 18), (0, ULONG_MAX), noiommu=True)
    else:
        domain = IoptDomain(int(iommu.pgsize_bitmap), paging_domain_aperture(system, flags))
    hwpt = HwptPaging(ioas, domain)
    ictx.object_alloc(hwpt)
    hwpt.pasid_compat = bool(flags & lib.IOMMU_HWPT_ALLOC_PASID)
    ioas.users += 1
    hwpt.nest_parent = bool(flags & lib.IOMMU_HWPT_ALLOC_NEST_PARENT)
    try:
        fi = system.fault_inject
        if fi.armed:
            # iommu_paging_domain_alloc: the domain's allocation failing
            fi.maybe_fail("alloc")
        hwpt.stage = domain_alloc_paging_flags(system, idev,
                                               flags & ~lib.IOMMU_HWPT_FAULT_ID_VALID, user_data)
        if hwpt.stage == STAGE_S2:
            # arm_smmu_domain_finalise_s2: the stage-2 domain's VMID
            hwpt.vmid = arm_smmu_vmid_alloc(system)
        hwpt.dirty_ops = bool(flags & lib.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
        if idev.enforce_cache_coherency:
            hwpt.enforce_cache_coherency = True
        if immediate_attach is not None:
            immediate_attach[0](ictx, hwpt, idev, pasid)
        try:
            ioas.iopt.add_domain(domain)
        except BaseException:
            if immediate_attach is not None:
                immediate_attach[1](ictx, idev, pasid)
            raise
        ioas.hwpt_list.append(hwpt)
    except BaseException:
        ictx.object_abort_and_destroy(hwpt)
        raise
    return hwpt


def iommufd_hwpt_alloc(ictx: IommufdFile, u: Ucmd) -> int:
    """iommufd_hwpt_alloc."""
    cmd = u.cmd
    if reserved_nonzero(cmd):
        # iommufd_hwpt_alloc: EOPNOTSUPP for a nonzero __reserved
        raise errno_error(errno.EOPNOTSUPP, "__reserved must be 0")
    data_type, data_len = int(cmd.data_type), int(cmd.data_len)
    if (data_type == lib.IOMMU_HWPT_DATA_NONE and data_len) or \
            (data_type != lib.IOMMU_HWPT_DATA_NONE and not data_len):
        # iommufd_hwpt_alloc: EINVAL when data_type and data_len disagree
        raise errno_error(errno.EINVAL, "data_type and data_len disagree")
    idev: Idev = ictx.get_object(int(cmd.dev_id), OBJ_DEVICE)
    pt = ictx.objects.get(int(cmd.pt_id))
    if pt is None:
        # iommufd_hwpt_alloc: EINVAL for an unknown pt_id
        raise errno_error(errno.EINVAL, f"no object {cmd.pt_id}")
    flags = int(cmd.flags)
    hwpt: Hwpt
    if isinstance(pt, Ioas):
        hwpt = iommufd_hwpt_paging_alloc(ictx, pt, idev, NO_PASID, flags,
                                         user_data=bool(data_len))
    elif isinstance(pt, HwptPaging):
        iommufd_hwpt_nested_alloc(ictx, pt, idev, flags, data_len)
        raise AssertionError("unreachable")  # pragma: no cover
    elif isinstance(pt, Viommu):
        if idev.noiommu:
            # iommufd_hwpt_alloc: EINVAL, the device is not on the vIOMMU's IOMMU
            raise errno_error(errno.EINVAL, f"{idev.pdev.bdf} is not behind vIOMMU {pt.id}")
        hwpt = iommufd_viommu_alloc_hwpt_nested(ictx, pt, flags, data_type,
                                                UserPtr.from_value(cmd.data_uptr), data_len)
    else:
        # iommufd_hwpt_alloc: EINVAL for other object types
        raise errno_error(errno.EINVAL, f"object {cmd.pt_id} is not an IOAS, HWPT or vIOMMU")
    try:
        if flags & lib.IOMMU_HWPT_FAULT_ID_VALID:
            fault: Fault = ictx.get_object(int(cmd.fault_id), OBJ_FAULT)
            hwpt.fault = fault
            fault.users += 1
        cmd.out_hwpt_id = hwpt.id
        u.respond()
    except BaseException:
        ictx.object_abort_and_destroy(hwpt)
        raise
    ictx.object_finalize(hwpt)
    return 0


def iommufd_hwpt_nested_alloc(ictx: IommufdFile, parent: HwptPaging, idev: Idev, flags: int,
                              data_len: int) -> None:
    """iommufd_hwpt_nested_alloc: no IOMMU of the fake builds a nested
    domain on a parent HWPT."""
    if flags & ~(lib.IOMMU_HWPT_FAULT_ID_VALID | lib.IOMMU_HWPT_ALLOC_PASID) or not data_len \
            or idev.noiommu or not domain_alloc_nested_supported(ictx.system):
        # iommufd_hwpt_nested_alloc: EOPNOTSUPP for flags, no data or no nesting op
        raise errno_error(errno.EOPNOTSUPP, "unsupported nested HWPT request")
    if parent.auto_domain or not parent.nest_parent:
        # iommufd_hwpt_nested_alloc: EINVAL unless the parent is a nesting parent
        raise errno_error(errno.EINVAL, f"HWPT {parent.id} is not a nesting parent")
    # intel_iommu_domain_alloc_nested: the fake simulates no stage-1 tables
    raise errno_error(errno.EOPNOTSUPP, "nested translation is not simulated")


def iommufd_viommu_alloc_hwpt_nested(ictx: IommufdFile, viommu: Viommu, flags: int,
                                     data_type: int, data: UserPtr,
                                     data_len: int) -> HwptNested:
    """iommufd_viommu_alloc_hwpt_nested (the caller finalizes or aborts)."""
    if flags & ~(lib.IOMMU_HWPT_FAULT_ID_VALID | lib.IOMMU_HWPT_ALLOC_PASID):
        # iommufd_viommu_alloc_hwpt_nested: EOPNOTSUPP for other flags
        raise errno_error(errno.EOPNOTSUPP, f"unsupported flags {flags:#x}")
    if not data_len:
        # iommufd_viommu_alloc_hwpt_nested: EOPNOTSUPP without driver data
        raise errno_error(errno.EOPNOTSUPP, "a nested HWPT needs driver data")
    # (every vIOMMU of the fake has alloc_domain_nested)
    hwpt = HwptNested(viommu.hwpt, viommu)
    ictx.object_alloc(hwpt)
    hwpt.pasid_compat = bool(flags & lib.IOMMU_HWPT_ALLOC_PASID)
    viommu.users += 1
    try:
        # viommu->ops->alloc_domain_nested (arm_vsmmu_alloc_domain_nested)
        hwpt.domain = viommu.driver.alloc_domain_nested(
            flags & ~lib.IOMMU_HWPT_FAULT_ID_VALID, data_type, data, data_len)
    except BaseException:
        # iommufd_viommu_alloc_hwpt_nested: out_abort
        ictx.object_abort_and_destroy(hwpt)
        raise
    return hwpt


def iommufd_hwpt_set_dirty_tracking(ictx: IommufdFile, u: Ucmd) -> int:
    """iommufd_hwpt_set_dirty_tracking."""
    cmd = u.cmd
    if cmd.flags & ~lib.IOMMU_HWPT_DIRTY_TRACKING_ENABLE:
        # iommufd_hwpt_set_dirty_tracking: EOPNOTSUPP for unknown flags
        raise errno_error(errno.EOPNOTSUPP, f"unsupported flags {cmd.flags:#x}")
    hwpt: HwptPaging = ictx.get_object(int(cmd.hwpt_id), OBJ_HWPT_PAGING)
    if not hwpt.dirty_ops:
        # iopt_set_dirty_tracking: EOPNOTSUPP without dirty ops
        raise errno_error(errno.EOPNOTSUPP, "the HWPT was not allocated with DIRTY_TRACKING")
    enable = bool(cmd.flags & lib.IOMMU_HWPT_DIRTY_TRACKING_ENABLE)
    if enable:
        # iopt_set_dirty_tracking: clear the dirty bits for a clean snapshot
        hwpt.dirty.clear()
    hwpt.dirty_enabled = enable
    return 0


def iommufd_hwpt_get_dirty_bitmap(ictx: IommufdFile, u: Ucmd) -> int:
    """iommufd_hwpt_get_dirty_bitmap."""
    cmd = u.cmd
    flags = int(cmd.flags)
    if flags & ~lib.IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR or reserved_nonzero(cmd):
        # iommufd_hwpt_get_dirty_bitmap: EOPNOTSUPP for unknown flags or __reserved
        raise errno_error(errno.EOPNOTSUPP, "unsupported flags or __reserved")
    hwpt: HwptPaging = ictx.get_object(int(cmd.hwpt_id), OBJ_HWPT_PAGING)
    iopt = hwpt.ioas.iopt
    iova, length, page_size = int(cmd.iova), int(cmd.length), int(cmd.page_size)
    # iommufd_check_iova_range
    if not length:
        raise errno_error(errno.EINVAL, "zero length")
    last = iova + length - 1
    if last > ULONG_MAX:
        raise errno_error(errno.EOVERFLOW, "iova + length overflows")
    pg = iopt.iova_alignment
    if iova & (pg - 1) or (last + 1) & (pg - 1):
        raise errno_error(errno.EINVAL, "range not aligned to the IOMMU page size")
    if not page_size:
        raise errno_error(errno.EINVAL, "zero page_size")
    if iova & (page_size - 1) or (last + 1) & (page_size - 1):
        raise errno_error(errno.EINVAL, "range not aligned to page_size")
    if not hwpt.dirty_ops:
        # iommu_read_and_clear_dirty: EOPNOTSUPP without dirty ops
        raise errno_error(errno.EOPNOTSUPP, "the HWPT was not allocated with DIRTY_TRACKING")
    _read_and_clear_dirty(hwpt, iova, last, page_size, UserPtr.from_value(cmd.data),
                          not flags & lib.IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR)
    return 0


def _read_and_clear_dirty(hwpt: HwptPaging, iova: int, last: int, page_size: int,
                          bitmap: UserPtr, clear: bool) -> None:
    """iopt_read_and_clear_dirty_data over the contiguous mappings from
    ``iova`` (iopt_for_each_contig_area), into the user's bitmap of one
    bit per ``page_size`` bytes from ``iova``."""
    shift = (page_size & -page_size).bit_length() - 1
    areas = hwpt.ioas.iopt.areas
    ps = hwpt.dirty_page
    spans: list[tuple[int, int]] = []
    found = areas.find(iova)
    cur = iova
    while found is not None:
        area = found[2]
        end = min(last, area.last)
        spans.append((cur, end))
        if end == last:
            break
        cur = area.last + 1
        nxt = areas.get(cur)
        found = (cur, nxt[0], nxt[1]) if nxt is not None else None
    dirty_pages: list[int] = []
    for start, end in spans:
        lo, hi = start // ps, end // ps
        if hi - lo + 1 <= len(hwpt.dirty):
            dirty_pages += [p for p in range(lo, hi + 1) if p in hwpt.dirty]
        else:
            dirty_pages += [p for p in hwpt.dirty if lo <= p <= hi]
    if not dirty_pages:
        return
    bits: list[int] = []
    for p in dirty_pages:
        first = max(p * ps, iova)
        end = min(p * ps + ps - 1, last)
        bits.extend(range((first - iova) >> shift, ((end - iova) >> shift) + 1))
        if clear:
            hwpt.dirty.discard(p)
    iova_bitmap_set(bitmap, bits)


def iommufd_hwpt_invalidate(ictx: IommufdFile, u: Ucmd) -> int:
    """iommufd_hwpt_invalidate: entry_num (the entries handled) is written
    back even on error."""
    cmd = u.cmd
    done = [0]
    try:
        _hwpt_invalidate(ictx, cmd, done)
    finally:
        cmd.entry_num = done[0]
        u.respond()
    return 0


def _hwpt_invalidate(ictx: IommufdFile, cmd: Any, done: list[int]) -> None:
    if reserved_nonzero(cmd):
        # iommufd_hwpt_invalidate: EOPNOTSUPP for a nonzero __reserved
        raise errno_error(errno.EOPNOTSUPP, "__reserved must be 0")
    if cmd.entry_num and (not cmd.data_uptr or not cmd.entry_len
                          or cmd.entry_len > ictx.system_page_size
                          or cmd.entry_num > _INVALIDATE_ENTRY_NUM_MAX):
        # iommufd_hwpt_invalidate: EINVAL for a bad entry array
        raise errno_error(errno.EINVAL, "bad entry array")
    pt = ictx.objects.get(int(cmd.hwpt_id))
    if pt is None:
        # iommufd_get_object: ENOENT for an unknown ID
        raise errno_error(errno.ENOENT, f"no object {cmd.hwpt_id}")
    if isinstance(pt, HwptNested):
        # iommufd_hwpt_invalidate: EOPNOTSUPP, the SMMUv3's nested domain has
        # no cache_invalidate_user (its vIOMMU takes the commands)
        raise errno_error(errno.EOPNOTSUPP, f"nested HWPT {pt.id} takes no invalidation; "
                          "invalidate through its vIOMMU")
    if isinstance(pt, Viommu):
        # viommu->ops->cache_invalidate (arm_vsmmu_cache_invalidate)
        done[0], err = pt.driver.cache_invalidate(pt, int(cmd.data_type),
                                                  UserPtr.from_value(cmd.data_uptr),
                                                  int(cmd.entry_len), int(cmd.entry_num))
        if err is not None:
            raise err
        return
    # iommufd_hwpt_invalidate: EINVAL for anything but a nested HWPT or a vIOMMU
    raise errno_error(errno.EINVAL, f"object {cmd.hwpt_id} is not a nested HWPT or vIOMMU")
