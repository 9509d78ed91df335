"""iommufd devices: bind, attach, replace, detach, and IOMMU_GET_HW_INFO.

After drivers/iommu/iommufd/device.c of Linux 7.3.  These are the entry
points of the vfio device file (:mod:`pyvfio.fake.vfio_pci`), which
:class:`~.main.IommufdFile` offers as methods: bind (iommufd_device_bind,
claims DMA ownership for the context), attach or replace at a PASID
(iommufd_device_attach / _replace: an IOAS gets an automatic HWPT),
detach, unbind; the context's view of IOMMU groups (struct iommufd_group)
and the HWPT attach/detach primitives live here too, as in the kernel.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from ..._uapi import lib
from ..core import errno_error
from ..uaccess import UserPtr
from ._iommu import (
    dirty_tracking_capable,
    driver_attach_check,
    iommu_get_resv_regions,
    iommu_hw_info,
    max_pasids,
    pasid_attach_check,
)
from ._private import (
    NO_PASID,
    OBJ_DEVICE,
    Attach,
    Hwpt,
    HwptNested,
    HwptPaging,
    IGroup,
    Idev,
    Ioas,
    reserved_nonzero,
)
from .hw_pagetable import iommufd_hwpt_paging_alloc

if TYPE_CHECKING:
    from ..machine.system import IommuGroup, PciDevice
    from .main import IommufdFile, Ucmd

__all__ = [
    "iommufd_device_is_noiommu", "iommufd_device_bind", "iommufd_device_unbind",
    "iommufd_device_id_of", "iommufd_ctx_has_group", "iommufd_get_device",
    "iommufd_device_attach", "iommufd_device_detach", "iommufd_hw_pagetable_attach",
    "iommufd_hw_pagetable_detach", "iommufd_hw_pagetable_put", "iommufd_get_hw_info",
]


# -- bind ------------------------------------------------------------------------------------
def iommufd_device_is_noiommu(ictx: IommufdFile, pdev: PciDevice) -> bool:
    """iommufd_device_is_noiommu: no IOMMU driver manages the device."""
    group = pdev.group
    return ictx.system.iommu is None or group is None or group.name == "vfio-noiommu"


def iommufd_get_device(ictx: IommufdFile, dev_id: int) -> Idev:
    """The device object ``dev_id``; ENOENT for anything else."""
    obj = ictx.objects.get(dev_id)
    if not isinstance(obj, Idev):
        raise errno_error(errno.ENOENT, f"no device {dev_id}")
    return obj


def iommufd_device_bind(ictx: IommufdFile, pdev: PciDevice, device_file: object) -> int:
    """iommufd_device_bind: a new device object claiming DMA ownership."""
    noiommu = iommufd_device_is_noiommu(ictx, pdev)
    idev = Idev(pdev, device_file, noiommu)
    ictx.object_alloc(idev)
    try:
        if noiommu:
            # iommufd_bind_noiommu: a dummy group
            igroup = IGroup(None)
            igroup.refs = 1
            idev.igroup = igroup
        else:
            _bind_iommu(ictx, idev)
    except BaseException:
        ictx.object_abort(idev)
        raise
    ictx.ctx_get()
    # the calling driver is a user until iommufd_device_unbind
    idev.users += 1
    ictx.object_finalize(idev)
    return idev.id


def _bind_iommu(ictx: IommufdFile, idev: Idev) -> None:
    """iommufd_bind_iommu."""
    system = ictx.system
    iommu = system.iommu
    pdev = idev.pdev
    if iommu is None or not iommu.cache_coherency:
        # iommufd_bind_iommu: EINVAL without IOMMU_CAP_CACHE_COHERENCY
        raise errno_error(errno.EINVAL, "the IOMMU cannot keep DMA cache coherent")
    group = pdev.group
    if group is None:
        # iommufd_get_group: ENODEV without an IOMMU group
        raise errno_error(errno.ENODEV, f"{pdev.bdf} has no IOMMU group")
    if not iommu.interrupt_remapping and not system.iommufd_params["allow_unsafe_interrupts"]:
        # iommufd_bind_iommu: EPERM when MSIs cannot be isolated
        raise errno_error(errno.EPERM, "MSI interrupts cannot be isolated (no interrupt remapping)")
    # iommu_device_claim_dma_owner: EPERM/EBUSY when owned elsewhere
    group.device_claim_dma_owner(pdev, ictx)
    igroup = ictx.groups.get(group.id)
    if igroup is None:
        igroup = IGroup(group)
        ictx.groups[group.id] = igroup
    igroup.refs += 1
    idev.igroup = igroup
    idev.claimed = True
    idev.enforce_cache_coherency = bool(iommu.enforce_cache_coherency)


def iommufd_device_unbind(ictx: IommufdFile, dev_id: int) -> None:
    """iommufd_device_unbind (after vfio_iommufd_physical_unbind's
    detaches): the device object goes away and ownership is released."""
    idev = iommufd_get_device(ictx, dev_id)
    igroup = idev.igroup
    assert igroup is not None
    for pasid in sorted(p for p, a in igroup.pasid_attach.items() if idev.id in a.devices):
        iommufd_device_detach(ictx, dev_id, None if pasid == NO_PASID else pasid)
    vdev = idev.vdev
    if vdev is not None and ictx.objects.get(vdev.id) is vdev:
        # iommufd_device_remove_vdev: the vDEVICE is destroyed and its ID
        # left as a tombstone (iommufd_object_tombstone_user)
        ictx.object_tombstone(vdev)
    ictx.object_unlink(idev)
    # iommufd_device_destroy
    if idev.claimed:
        group = idev.pdev.group
        assert group is not None
        group.device_release_dma_owner(idev.pdev)
        idev.claimed = False
    igroup.refs -= 1
    if not igroup.refs and igroup.group is not None:
        ictx.groups.pop(igroup.group.id, None)
    ictx.ctx_put()


def iommufd_device_id_of(ictx: IommufdFile, pdev: PciDevice) -> int | None:
    """The device ID ``pdev`` is bound with in ``ictx``, or None."""
    for obj in ictx.objects.values():
        if isinstance(obj, Idev) and obj.pdev is pdev:
            return obj.id
    return None


def iommufd_ctx_has_group(ictx: IommufdFile, group: IommuGroup | None) -> bool:
    """iommufd_ctx_has_group."""
    if group is None:
        return False
    return any(isinstance(o, Idev) and o.igroup is not None and o.igroup.group is group
               for o in ictx.objects.values())


# -- attach ------------------------------------------------------------------------------------
def iommufd_device_attach(ictx: IommufdFile, dev_id: int, pt_id: int,
                          pasid: int | None = None) -> int:
    """iommufd_device_attach, or iommufd_device_replace when the device is
    already attached at ``pasid``; returns the ID attached."""
    idev = iommufd_get_device(ictx, dev_id)
    key = NO_PASID if pasid is None else pasid
    igroup = idev.igroup
    assert igroup is not None
    attach = igroup.pasid_attach.get(key)
    if attach is not None and idev.id in attach.devices:
        return _change_pt(ictx, idev, key, pt_id, replace=True)
    out = _change_pt(ictx, idev, key, pt_id, replace=False)
    idev.users += 1
    return out


def iommufd_device_detach(ictx: IommufdFile, dev_id: int, pasid: int | None = None) -> None:
    """iommufd_device_detach (a no-op when not attached)."""
    idev = iommufd_get_device(ictx, dev_id)
    hwpt = iommufd_hw_pagetable_detach(ictx, idev, NO_PASID if pasid is None else pasid)
    if hwpt is not None:
        idev.users -= 1


def _change_pt(ictx: IommufdFile, idev: Idev, pasid: int, pt_id: int, replace: bool) -> int:
    """iommufd_device_change_pt."""
    pt = ictx.objects.get(pt_id)
    if pt is None:
        # iommufd_get_object: ENOENT for an unknown pt_id
        raise errno_error(errno.ENOENT, f"no object {pt_id}")
    do = _do_replace if replace else _do_attach
    if isinstance(pt, (HwptPaging, HwptNested)):
        destroy = do(ictx, idev, pasid, pt)
    elif isinstance(pt, Ioas):
        destroy, pt_id = _auto_get_domain(ictx, idev, pasid, pt, replace)
    else:
        # iommufd_device_change_pt: EINVAL for other object types
        raise errno_error(errno.EINVAL, f"object {pt_id} is not an IOAS or HWPT")
    if destroy is not None:
        iommufd_hw_pagetable_put(ictx, destroy)
    return pt_id


def _auto_get_domain(ictx: IommufdFile, idev: Idev, pasid: int, ioas: Ioas,
                     replace: bool) -> tuple[Hwpt | None, int]:
    """iommufd_device_auto_get_domain: reuse an automatic HWPT of the IOAS
    that accepts the device, else allocate one."""
    do = _do_replace if replace else _do_attach
    for hwpt in list(ioas.hwpt_list):
        if not hwpt.auto_domain:
            continue
        try:
            destroy = do(ictx, idev, pasid, hwpt)
        except OSError as e:
            # iommufd_device_auto_get_domain: EINVAL means incompatible, try the next
            if e.errno == errno.EINVAL:
                continue
            raise
        return destroy, hwpt.id
    hwpt = iommufd_hwpt_paging_alloc(
        ictx, ioas, idev, pasid, 0, user_data=False,
        immediate_attach=None if replace else (iommufd_hw_pagetable_attach,
                                               iommufd_hw_pagetable_detach))
    destroy = None
    if replace:
        try:
            destroy = _do_replace(ictx, idev, pasid, hwpt)
        except BaseException:
            ictx.object_abort_and_destroy(hwpt)
            raise
    hwpt.auto_domain = True
    ictx.object_finalize(hwpt)
    return destroy, hwpt.id


def _do_attach(ictx: IommufdFile, idev: Idev, pasid: int, hwpt: Hwpt) -> Hwpt | None:
    """iommufd_device_do_attach."""
    iommufd_hw_pagetable_attach(ictx, hwpt, idev, pasid)
    return None


def _pasid_compat(hwpt: Hwpt, idev: Idev, pasid: int) -> None:
    """iommufd_hwpt_pasid_compat."""
    igroup = idev.igroup
    assert igroup is not None
    if pasid == NO_PASID:
        if not hwpt.pasid_compat and any(p != NO_PASID for p in igroup.pasid_attach):
            # iommufd_hwpt_pasid_compat: EINVAL, PASIDs are attached
            raise errno_error(errno.EINVAL, "the HWPT is not PASID compatible")
    else:
        if not hwpt.pasid_compat:
            # iommufd_hwpt_pasid_compat: EINVAL, not allocated with IOMMU_HWPT_ALLOC_PASID
            raise errno_error(errno.EINVAL, "the HWPT is not PASID compatible")
        main = igroup.pasid_attach.get(NO_PASID)
        if main is not None and main.hwpt is not None and not main.hwpt.pasid_compat:
            # iommufd_hwpt_pasid_compat: EINVAL, the RID attachment is not PASID compatible
            raise errno_error(errno.EINVAL, "the device's HWPT is not PASID compatible")


def _hwpt_attach_device(ictx: IommufdFile, hwpt: Hwpt, idev: Idev, pasid: int) -> None:
    """iommufd_hwpt_attach_device: the first device of the group attaches
    the group (or the PASID) to the HWPT's domain."""
    _pasid_compat(hwpt, idev, pasid)
    if idev.noiommu:
        return
    group = idev.pdev.group
    assert group is not None
    if pasid == NO_PASID:
        # __iommu_attach_group: EBUSY while another domain is attached
        group.attach_domain(ictx, hwpt.io_domain)
        try:
            driver_attach_check(hwpt, idev)
        except OSError:
            group.detach_domain(ictx)
            raise
        return
    devices = pasid_attach_check(ictx.system, hwpt, idev, pasid)
    if any(pasid in dev.pasid_domains for dev in devices):
        # iommu_attach_device_pasid: EBUSY when the PASID is in use
        raise errno_error(errno.EBUSY, f"PASID {pasid} is attached")
    for dev in devices:
        dev.pasid_domains[pasid] = hwpt.io_domain


def _hwpt_detach_device(ictx: IommufdFile, idev: Idev, pasid: int) -> None:
    """iommufd_hwpt_detach_device."""
    if idev.noiommu:
        return
    group = idev.pdev.group
    assert group is not None
    if pasid == NO_PASID:
        group.detach_domain(ictx)
    else:
        for dev in group.devices:
            dev.pasid_domains.pop(pasid, None)


def _hwpt_replace_device(ictx: IommufdFile, idev: Idev, pasid: int, hwpt: Hwpt) -> None:
    """iommufd_hwpt_replace_device."""
    _pasid_compat(hwpt, idev, pasid)
    if idev.noiommu:
        return
    group = idev.pdev.group
    assert group is not None
    if pasid == NO_PASID:
        driver_attach_check(hwpt, idev)
        group.detach_domain(ictx)
        group.attach_domain(ictx, hwpt.io_domain)
        return
    devices = pasid_attach_check(ictx.system, hwpt, idev, pasid)
    for dev in devices:
        dev.pasid_domains[pasid] = hwpt.io_domain


def iommufd_hw_pagetable_attach(ictx: IommufdFile, hwpt: Hwpt, idev: Idev,
                                pasid: int) -> None:
    """iommufd_hw_pagetable_attach."""
    igroup = idev.igroup
    assert igroup is not None
    attach = igroup.pasid_attach.get(pasid)
    first = attach is None
    if attach is None:
        attach = Attach()
    if idev.id in attach.devices:
        # iommufd_hw_pagetable_attach: EBUSY, the device is attached already
        raise errno_error(errno.EBUSY, "the device is already attached")
    if attach.hwpt is not None and attach.hwpt is not hwpt:
        # iommufd_hw_pagetable_attach: EINVAL, the group uses another HWPT
        raise errno_error(errno.EINVAL, "the IOMMU group is attached to another HWPT")
    resv = pasid == NO_PASID and not idev.noiommu
    if resv:
        # iopt_table_enforce_dev_resv_regions: EADDRINUSE over a mapping
        hwpt.ioas.iopt.enforce_dev_resv_regions(idev, iommu_get_resv_regions(ictx.system, idev))
    if first:
        try:
            _hwpt_attach_device(ictx, hwpt, idev, pasid)
        except BaseException:
            if resv:
                hwpt.ioas.iopt.remove_reserved_iova(idev)
            raise
        attach.hwpt = hwpt
        igroup.pasid_attach[pasid] = attach
    hwpt.users += 1
    attach.devices[idev.id] = idev


def iommufd_hw_pagetable_detach(ictx: IommufdFile, idev: Idev, pasid: int) -> Hwpt | None:
    """iommufd_hw_pagetable_detach: the HWPT detached from, or None."""
    igroup = idev.igroup
    assert igroup is not None
    attach = igroup.pasid_attach.get(pasid)
    if attach is None or idev.id not in attach.devices:
        return None
    hwpt = attach.hwpt
    assert hwpt is not None
    del attach.devices[idev.id]
    if not attach.devices:
        _hwpt_detach_device(ictx, idev, pasid)
        del igroup.pasid_attach[pasid]
    if pasid == NO_PASID:
        hwpt.ioas.iopt.remove_reserved_iova(idev)
    iommufd_hw_pagetable_put(ictx, hwpt)
    return hwpt


def iommufd_hw_pagetable_put(ictx: IommufdFile, hwpt: Hwpt) -> None:
    """iommufd_hw_pagetable_put: an automatic HWPT goes away with its last
    user (iommufd_object_put_and_try_destroy)."""
    hwpt.users -= 1
    if hwpt.auto_domain and hwpt.users == 1 and ictx.objects.get(hwpt.id) is hwpt:
        ictx.object_remove(hwpt)


def _do_replace(ictx: IommufdFile, idev: Idev, pasid: int, hwpt: Hwpt) -> Hwpt | None:
    """iommufd_device_do_replace."""
    igroup = idev.igroup
    assert igroup is not None
    attach = igroup.pasid_attach.get(pasid)
    if attach is None or idev.id not in attach.devices:
        # iommufd_device_do_replace: EINVAL unless attached
        raise errno_error(errno.EINVAL, "the device is not attached")
    old = attach.hwpt
    assert old is not None
    if hwpt is old:
        return None
    resv = pasid == NO_PASID and not idev.noiommu
    if resv and hwpt.ioas is not old.ioas:
        # iommufd_group_do_replace_reserved_iova
        try:
            for dev in attach.devices.values():
                hwpt.ioas.iopt.enforce_dev_resv_regions(
                    dev, iommu_get_resv_regions(ictx.system, dev))
        except BaseException:
            for dev in attach.devices.values():
                hwpt.ioas.iopt.remove_reserved_iova(dev)
            raise
    try:
        _hwpt_replace_device(ictx, idev, pasid, hwpt)
    except BaseException:
        if resv:
            # iommufd_device_do_replace: err_unresv drops the group's
            # reservations on the new IOAS
            for dev in attach.devices.values():
                hwpt.ioas.iopt.remove_reserved_iova(dev)
        raise
    if pasid == NO_PASID and hwpt.ioas is not old.ioas:
        for dev in attach.devices.values():
            old.ioas.iopt.remove_reserved_iova(dev)
    attach.hwpt = hwpt
    n = len(attach.devices)
    hwpt.users += n
    if n > 1:
        old.users -= n - 1
    return old


# -- IOMMU_GET_HW_INFO -----------------------------------------------------------------------------
def iommufd_get_hw_info(ictx: IommufdFile, u: Ucmd) -> int:
    """iommufd_get_hw_info."""
    cmd = u.cmd
    flags = int(cmd.flags)
    if flags & ~lib.IOMMU_HW_INFO_FLAG_INPUT_TYPE:
        # iommufd_get_hw_info: EOPNOTSUPP for unknown flags
        raise errno_error(errno.EOPNOTSUPP, f"unsupported flags {flags:#x}")
    if reserved_nonzero(cmd):
        # iommufd_get_hw_info: EOPNOTSUPP for a nonzero __reserved
        raise errno_error(errno.EOPNOTSUPP, "__reserved must be 0")
    if not flags & lib.IOMMU_HW_INFO_FLAG_INPUT_TYPE:
        cmd.in_data_type = lib.IOMMU_HW_INFO_TYPE_DEFAULT
    idev: Idev = ictx.get_object(int(cmd.dev_id), OBJ_DEVICE)
    if idev.noiommu:
        # iommufd_get_hw_info: EOPNOTSUPP for a no-IOMMU device
        raise errno_error(errno.EOPNOTSUPP, "no IOMMU behind the device")
    system = ictx.system
    # ops->hw_info (intel_iommu_hw_info, arm_smmu_hw_info)
    hw_type, data = iommu_hw_info(system, int(cmd.in_data_type))
    cmd.out_data_type = hw_type
    user_len = int(cmd.data_len)
    copy_len = min(user_len, len(data))
    out = UserPtr.from_value(cmd.data_uptr)
    # copy_to_user, then clear_user of the rest: EFAULT for a bad buffer
    out.write(0, data[:copy_len])
    if copy_len < user_len:
        out.write(copy_len, bytes(user_len - copy_len))
    cmd.data_len = len(data)
    caps = 0
    if dirty_tracking_capable(system, idev):
        caps |= lib.IOMMU_HW_CAP_DIRTY_TRACKING
    if not getattr(idev.pdev, "ats_supported", False):
        caps |= lib.IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED
    cmd.out_max_pasid_log2 = 0
    pasids = max_pasids(system, idev.pdev)
    if pasids:
        cmd.out_max_pasid_log2 = pasids.bit_length() - 1
    cmd.out_capabilities = caps
    u.respond()
    return 0
