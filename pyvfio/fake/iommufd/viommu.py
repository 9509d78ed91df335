"""vIOMMU ioctls: vIOMMU, vDEVICE and HW queue objects.

After drivers/iommu/iommufd/viommu.c of Linux 7.3.  The intel-iommu driver
offers no vIOMMU (no viommu_init), so IOMMU_VIOMMU_ALLOC fails there after
its checks.  The arm-smmu-v3 driver makes one over a nesting parent when
the SMMU has both stages and the device cannot bypass the cache (IORT
CANWBS or S2FWB; arm_smmu_get_viommu_size); its vDEVICEs give devices
their virtual stream IDs.  HW queues are not simulated (the SMMUv3's
vIOMMU has no HW queue ops: EOPNOTSUPP, as the kernel answers).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from ..._uapi import lib
from ..core import errno_error
from ._iommu import viommu_init, viommu_supported
from ._private import OBJ_DEVICE, OBJ_HWPT_PAGING, OBJ_VIOMMU, HwptPaging, Idev, Vdevice, Viommu
from .io_pagetable import ULONG_MAX

if TYPE_CHECKING:
    from .main import IommufdFile, Ucmd

__all__ = ["iommufd_viommu_alloc_ioctl", "iommufd_vdevice_alloc_ioctl",
           "iommufd_hw_queue_alloc_ioctl"]


def iommufd_viommu_alloc_ioctl(ictx: IommufdFile, u: Ucmd) -> int:
    """iommufd_viommu_alloc_ioctl."""
    cmd = u.cmd
    if cmd.flags or cmd.type == lib.IOMMU_VIOMMU_TYPE_DEFAULT:
        # iommufd_viommu_alloc_ioctl: EOPNOTSUPP for flags or the default type
        raise errno_error(errno.EOPNOTSUPP, "flags or type not supported")
    idev: Idev = ictx.get_object(int(cmd.dev_id), OBJ_DEVICE)
    system = ictx.system
    if idev.noiommu or not viommu_supported(system, int(cmd.type)):
        # iommufd_viommu_alloc_ioctl: EOPNOTSUPP without an IOMMU, without
        # viommu_init (intel-iommu) or when get_viommu_size gives 0
        # (arm_smmu_get_viommu_size: no nesting, neither CANWBS nor S2FWB,
        # or another type)
        raise errno_error(errno.EOPNOTSUPP, "the IOMMU driver offers no vIOMMU of type "
                          f"{cmd.type} for {idev.pdev.bdf}")
    hwpt: HwptPaging = ictx.get_object(int(cmd.hwpt_id), OBJ_HWPT_PAGING)
    if not hwpt.nest_parent:
        # iommufd_viommu_alloc_ioctl: EINVAL unless the HWPT is a nesting parent
        raise errno_error(errno.EINVAL, f"HWPT {hwpt.id} is not a nesting parent")
    viommu = Viommu(hwpt, int(cmd.type))
    ictx.object_alloc(viommu)
    hwpt.users += 1
    try:
        # ops->viommu_init (arm_vsmmu_init; user data is not read by it)
        viommu.driver = viommu_init(system, hwpt)
        cmd.out_viommu_id = viommu.id
        u.respond()
    except BaseException:
        ictx.object_abort_and_destroy(viommu)
        raise
    ictx.object_finalize(viommu)
    return 0


def iommufd_vdevice_alloc_ioctl(ictx: IommufdFile, u: Ucmd) -> int:
    """iommufd_vdevice_alloc_ioctl."""
    cmd = u.cmd
    # (virt_id > ULONG_MAX cannot happen with a 64-bit ulong)
    viommu: Viommu = ictx.get_object(int(cmd.viommu_id), OBJ_VIOMMU)
    idev: Idev = ictx.get_object(int(cmd.dev_id), OBJ_DEVICE)
    if idev.noiommu:
        # iommufd_vdevice_alloc_ioctl: EINVAL, the device is not on the
        # vIOMMU's IOMMU (the machine has one IOMMU)
        raise errno_error(errno.EINVAL, f"{idev.pdev.bdf} is not behind vIOMMU {viommu.id}")
    if idev.vdev is not None:
        # iommufd_vdevice_alloc_ioctl: EEXIST, the device has a vDEVICE
        raise errno_error(errno.EEXIST, f"{idev.pdev.bdf} already has vDEVICE {idev.vdev.id}")
    virt_id = int(cmd.virt_id)
    vdev = Vdevice(viommu, idev, virt_id)
    ictx.object_alloc(vdev)
    viommu.users += 1
    idev.vdev = vdev
    try:
        if virt_id in viommu.vdevs:
            # iommufd_vdevice_alloc_ioctl: EEXIST for a virtual ID in use (xa_insert)
            raise errno_error(errno.EEXIST, f"virtual ID {virt_id:#x} is in use on vIOMMU {viommu.id}")
        # viommu->ops->vdevice_init (arm_vsmmu_vdevice_init)
        viommu.driver.vdevice_init(vdev)
        viommu.vdevs[virt_id] = vdev
        cmd.out_vdevice_id = vdev.id
        u.respond()
    except BaseException:
        # iommufd_vdevice_alloc_ioctl: out_abort (iommufd_vdevice_abort)
        ictx.object_abort_and_destroy(vdev)
        raise
    ictx.object_finalize(vdev)
    return 0


def iommufd_hw_queue_alloc_ioctl(ictx: IommufdFile, u: Ucmd) -> int:
    """iommufd_hw_queue_alloc_ioctl."""
    cmd = u.cmd
    if cmd.flags or cmd.type == lib.IOMMU_HW_QUEUE_TYPE_DEFAULT:
        # iommufd_hw_queue_alloc_ioctl: EOPNOTSUPP for flags or the default type
        raise errno_error(errno.EOPNOTSUPP, "flags or type not supported")
    if not cmd.length:
        # iommufd_hw_queue_alloc_ioctl: EINVAL for a zero length
        raise errno_error(errno.EINVAL, "zero length")
    if int(cmd.nesting_parent_iova) + int(cmd.length) - 1 > ULONG_MAX:
        # iommufd_hw_queue_alloc_ioctl: EOVERFLOW
        raise errno_error(errno.EOVERFLOW, "iova + length overflows")
    viommu: Viommu = ictx.get_object(int(cmd.viommu_id), OBJ_VIOMMU)
    # iommufd_hw_queue_alloc_ioctl: EOPNOTSUPP, the vIOMMU has no
    # get_hw_queue_size / hw_queue_init_phys (the SMMUv3's arm_vsmmu_ops)
    raise errno_error(errno.EOPNOTSUPP, f"vIOMMU {viommu.id} has no HW queues")
