"""vIOMMU ioctls: vIOMMU, vDEVICE and HW queue objects.

After drivers/iommu/iommufd/viommu.c of Linux 7.3.  The intel-iommu driver
offers no vIOMMU (no viommu_init), so IOMMU_VIOMMU_ALLOC fails after its
checks and IOMMU_VDEVICE_ALLOC / IOMMU_HW_QUEUE_ALLOC, which need a
vIOMMU, fail at the lookup; the checks before it run in the kernel's
order.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from ..._uapi import lib
from ..core import errno_error
from ._private import OBJ_DEVICE, OBJ_VIOMMU
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
    ictx.get_object(int(cmd.dev_id), OBJ_DEVICE)
    # iommufd_viommu_alloc_ioctl: EOPNOTSUPP, intel-iommu has no viommu_init
    # (and no-IOMMU devices have no IOMMU at all)
    raise errno_error(errno.EOPNOTSUPP, "the IOMMU driver does not support vIOMMUs")


def iommufd_vdevice_alloc_ioctl(ictx: IommufdFile, u: Ucmd) -> int:
    """iommufd_vdevice_alloc_ioctl."""
    cmd = u.cmd
    # (virt_id > ULONG_MAX cannot happen with a 64-bit ulong)
    ictx.get_object(int(cmd.viommu_id), OBJ_VIOMMU)
    raise AssertionError("unreachable: no vIOMMU can exist")  # pragma: no cover


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
    ictx.get_object(int(cmd.viommu_id), OBJ_VIOMMU)
    raise AssertionError("unreachable: no vIOMMU can exist")  # pragma: no cover
