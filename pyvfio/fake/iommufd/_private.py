"""The iommufd objects and the small helpers every handler shares.

After drivers/iommu/iommufd/iommufd_private.h of Linux 7.3: the object
types (struct iommufd_object and what embeds it: IOAS, paging HWPT, fault
queue, device), the per-context view of an IOMMU group and its
attachments, and the limits the ioctls check against.  The modules of the
package import from here and never from each other in a cycle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..._uapi import ffi
from ..core import IoDomain, IommuFault
from .io_pagetable import ULONG_MAX, IoPagetable, IoptDomain, page_runs

if TYPE_CHECKING:
    from ..machine.system import IommuGroup, PciDevice

__all__ = [
    "U64_MAX", "INT_MAX", "NO_PASID", "OBJ_DEVICE", "OBJ_HWPT_PAGING", "OBJ_HWPT_NESTED",
    "OBJ_IOAS", "OBJ_FAULT", "OBJ_VIOMMU", "offsetofend", "reserved_nonzero",
    "IommufdObject", "Ioas", "HwptDomain", "HwptPaging", "Fault", "IGroup", "Attach", "Idev",
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

    def destroy(self) -> None:
        """iommufd_hwpt_paging_destroy."""
        if self in self.ioas.hwpt_list:
            self.ioas.hwpt_list.remove(self)
            self.ioas.iopt.remove_domain(self.domain)
        if self.fault is not None:
            self.fault.users -= 1
        self.ioas.users -= 1
        self.destroyed = True


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
        self.hwpt: HwptPaging | None = None
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
