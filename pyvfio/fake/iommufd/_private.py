"""The iommufd objects and the small helpers every handler shares.

After drivers/iommu/iommufd/iommufd_private.h of Linux 7.3: the object
types (struct iommufd_object and what embeds it: IOAS, paging HWPT, fault
queue, device), the per-context view of an IOMMU group and its
attachments, and the limits the ioctls check against.  The modules of the
package import from here and never from each other in a cycle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Union

from ..._uapi import ffi
from ..core import IoDomain, IommuFault
from .io_pagetable import ULONG_MAX, IoPagetable, IoptDomain, page_runs

if TYPE_CHECKING:
    from ..machine.system import IommuGroup, PciDevice

__all__ = [
    "U64_MAX", "INT_MAX", "NO_PASID", "OBJ_DEVICE", "OBJ_HWPT_PAGING", "OBJ_HWPT_NESTED",
    "OBJ_IOAS", "OBJ_FAULT", "OBJ_VIOMMU", "OBJ_VDEVICE", "offsetofend", "reserved_nonzero",
    "IommufdObject", "Ioas", "HwptDomain", "HwptPaging", "HwptNested", "Hwpt", "Viommu",
    "Vdevice", "Fault", "IGroup", "Attach", "Idev",
]

#: The largest ``__u64``.
U64_MAX = ULONG_MAX
#: INT_MAX: object IDs are below it (xa_limit_31b).
INT_MAX = (1 << 31) - 1
#: IOMMU_NO_PASID
NO_PASID = 0

# Object types (enum iommufd_object_type)
#: IOMMUFD_OBJ_DEVICE
OBJ_DEVICE = "device"
#: IOMMUFD_OBJ_HWPT_PAGING
OBJ_HWPT_PAGING = "hwpt_paging"
#: IOMMUFD_OBJ_HWPT_NESTED
OBJ_HWPT_NESTED = "hwpt_nested"
#: IOMMUFD_OBJ_IOAS
OBJ_IOAS = "ioas"
#: IOMMUFD_OBJ_FAULT
OBJ_FAULT = "fault"
#: IOMMUFD_OBJ_VIOMMU
OBJ_VIOMMU = "viommu"
#: IOMMUFD_OBJ_VDEVICE
OBJ_VDEVICE = "vdevice"


def offsetofend(ctype: str, field: str) -> int:
    """offsetofend: the size of ``ctype`` up to and including ``field``."""
    for name, f in ffi.typeof(ctype).fields:
        if name == field:
            return int(f.offset) + int(ffi.sizeof(f.type))
    raise KeyError(field)


def reserved_nonzero(cmd: Any, name: str = "__reserved") -> bool:
    """Whether a ``__reserved`` member is nonzero (getattr avoids Python's
    name mangling of double-underscore attributes)."""
    value = getattr(cmd, name)
    if isinstance(value, int):
        return value != 0
    return any(int(x) for x in value)


# -- objects -------------------------------------------------------------------------------------
class IommufdObject:
    """struct iommufd_object."""

    #: The object type (an ``OBJ_*`` constant).
    kind = "any"

    def __init__(self) -> None:
        self.id = 0
        #: refcount users: 1 for the object table, +1 per holder
        self.users = 1

    def destroy(self) -> None:
        """The type's destroy op."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} users={self.users}>"


class Ioas(IommufdObject):
    """struct iommufd_ioas."""

    kind = OBJ_IOAS

    def __init__(self, page_size: int, max_alignment: int) -> None:
        super().__init__()
        self.iopt = IoPagetable(page_size, max_alignment)
        #: paging HWPTs built on this IOAS, in creation order (hwpt_list)
        self.hwpt_list: list[HwptPaging] = []

    def destroy(self) -> None:
        """iommufd_ioas_destroy."""
        self.iopt.destroy()


class HwptDomain(IoDomain):
    """The I/O page table a device attached to a paging HWPT DMAs through."""

    def __init__(self, hwpt: HwptPaging) -> None:
        self.hwpt = hwpt

    def translate(self, iova: int, length: int, write: bool) -> list[tuple[int, int]]:
        """The IOMMU walks the IOAS's areas."""
        hwpt = self.hwpt
        if hwpt.destroyed:
            raise IommuFault(iova, length, write, "the page table was destroyed")

        def fault(pos: int, reason: str) -> Exception:
            return IommuFault(pos, length, write, reason)

        return page_runs(hwpt.ioas.iopt.areas, iova, length, write, fault)

    def note_dirty(self, iova: int, length: int) -> None:
        """The IOMMU sets the dirty bits of what the device wrote."""
        hwpt = self.hwpt
        # The IOMMU sets dirty bits only while tracking is enabled (SSADS)
        if not hwpt.dirty_enabled or length <= 0:
            return
        ps = hwpt.dirty_page
        hwpt.dirty.update(range(iova // ps, (iova + length - 1) // ps + 1))

    def __repr__(self) -> str:
        return f"<HWPT {self.hwpt.id} domain>"


class HwptPaging(IommufdObject):
    """struct iommufd_hwpt_paging."""

    kind = OBJ_HWPT_PAGING

    def __init__(self, ioas: Ioas, domain: IoptDomain) -> None:
        super().__init__()
        self.ioas = ioas
        self.domain = domain
        self.io_domain = HwptDomain(self)
        self.auto_domain = False
        self.nest_parent = False
        self.pasid_compat = False
        self.enforce_cache_coherency = False
        #: allocated with IOMMU_HWPT_ALLOC_DIRTY_TRACKING (domain->dirty_ops)
        self.dirty_ops = False
        self.dirty_enabled = False
        self.dirty: set[int] = set()
        self.dirty_page = 4096
        self.fault: Fault | None = None
        self.destroyed = False
        #: the driver's stage of the domain (the SMMUv3's 1 or 2; 0: unknown)
        self.stage = 0
        #: the SMMUv3's VMID of a stage-2 domain (0: none)
        self.vmid = 0

    def destroy(self) -> None:
        """iommufd_hwpt_paging_destroy."""
        if self in self.ioas.hwpt_list:
            self.ioas.hwpt_list.remove(self)
            self.ioas.iopt.remove_domain(self.domain)
        if self.fault is not None:
            self.fault.users -= 1
        self.ioas.users -= 1
        self.destroyed = True


class HwptNested(IommufdObject):
    """struct iommufd_hwpt_nested: a stage-1 table the user owns over a
    nesting parent, built by the IOMMU driver from ``data`` (for the
    SMMUv3, a virtual STE); ``domain`` is the driver's nested domain (an
    :class:`~pyvfio.fake.core.IoDomain` the devices DMA through)."""

    kind = OBJ_HWPT_NESTED

    def __init__(self, parent: HwptPaging, viommu: Viommu | None) -> None:
        super().__init__()
        #: the nesting parent (the vIOMMU's parent when made on a vIOMMU)
        self.parent = parent
        #: the vIOMMU it was allocated on (None: on the parent HWPT)
        self.viommu = viommu
        #: the driver's nested domain (None until the driver made it)
        self.domain: IoDomain | None = None
        self.auto_domain = False
        self.pasid_compat = False
        self.fault: Fault | None = None
        self.destroyed = False

    @property
    def io_domain(self) -> IoDomain:
        """The I/O page table a device attached to this HWPT DMAs through."""
        assert self.domain is not None
        return self.domain

    @property
    def ioas(self) -> Ioas:
        """The parent's IOAS (find_hwpt_paging: reserved regions of an
        attached device are enforced there)."""
        return self.parent.ioas

    def destroy(self) -> None:
        """iommufd_hwpt_nested_destroy: the vIOMMU's (or the parent's)
        reference goes."""
        if self.fault is not None:
            self.fault.users -= 1
        if self.viommu is not None:
            self.viommu.users -= 1
        else:
            self.parent.users -= 1
        self.destroyed = True


#: struct iommufd_hw_pagetable: what a device attaches to.
Hwpt = Union[HwptPaging, HwptNested]


class Viommu(IommufdObject):
    """struct iommufd_viommu (IOMMU_VIOMMU_ALLOC) over a nesting parent;
    ``driver`` is the IOMMU driver's part (for the SMMUv3 an
    ``ArmVsmmu``)."""

    kind = OBJ_VIOMMU

    def __init__(self, hwpt: HwptPaging, viommu_type: int) -> None:
        super().__init__()
        self.hwpt = hwpt
        self.type = viommu_type
        #: virt_id -> vDEVICE (the vdevs xarray)
        self.vdevs: dict[int, Vdevice] = {}
        self.driver: Any = None

    def destroy(self) -> None:
        """iommufd_viommu_destroy."""
        self.hwpt.users -= 1


class Vdevice(IommufdObject):
    """struct iommufd_vdevice (IOMMU_VDEVICE_ALLOC): a device's ID in the
    guest's view of the vIOMMU (for the SMMUv3, its virtual stream ID)."""

    kind = OBJ_VDEVICE

    def __init__(self, viommu: Viommu, idev: Idev, virt_id: int) -> None:
        super().__init__()
        self.viommu = viommu
        self.idev = idev
        self.virt_id = virt_id

    def destroy(self) -> None:
        """iommufd_vdevice_destroy (iommufd_vdevice_abort)."""
        if self.viommu.vdevs.get(self.virt_id) is self:
            del self.viommu.vdevs[self.virt_id]
        self.viommu.users -= 1
        if self.idev.vdev is self:
            self.idev.vdev = None


class Fault(IommufdObject):
    """struct iommufd_fault (IOMMU_FAULT_QUEUE_ALLOC)."""

    kind = OBJ_FAULT

    def __init__(self) -> None:
        super().__init__()
        #: fault groups waiting to be read, each a list of struct
        #: iommu_hwpt_pgfault records without the cookie
        self.deliver: list[list[bytes]] = []
        #: cookie -> fault group read but not answered yet
        self.response: dict[int, list[bytes]] = {}
        self.next_cookie = 1


class IGroup:
    """struct iommufd_group: this context's view of an IOMMU group."""

    def __init__(self, group: IommuGroup | None) -> None:
        self.group = group
        self.refs = 0
        #: pasid -> attachment (pasid_attach)
        self.pasid_attach: dict[int, Attach] = {}


class Attach:
    """struct iommufd_attach."""

    def __init__(self) -> None:
        self.hwpt: Hwpt | None = None
        self.devices: dict[int, Idev] = {}


class Idev(IommufdObject):
    """struct iommufd_device."""

    kind = OBJ_DEVICE

    def __init__(self, pdev: PciDevice, device_file: object, noiommu: bool) -> None:
        super().__init__()
        self.pdev = pdev
        self.device_file = device_file
        self.noiommu = noiommu
        self.igroup: IGroup | None = None
        self.enforce_cache_coherency = False
        self.claimed = False
        #: the device's vDEVICE, if any (idev->vdev)
        self.vdev: Vdevice | None = None
