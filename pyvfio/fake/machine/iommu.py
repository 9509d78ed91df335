"""The IOMMU core of the simulated machine (drivers/iommu/iommu.c): what
the machine's IOMMU can do (:class:`IommuInfo`), the IOVA ranges it will
not translate (:class:`ReservedRegion`, merged per group as
iommu_insert_resv_region does) and the IOMMU groups with the kernel's
DMA-ownership API (:class:`IommuGroup`).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

from . import topology as _topology
from ..core import IoDomain, errno_error

if TYPE_CHECKING:
    from .pci_device import PciDevice
    from .system import System
    from .vfio_group import VfioGroup

__all__ = ["ReservedRegion", "IommuInfo", "IommuGroup", "merge_reserved_regions"]


@dataclass(frozen=True)
class ReservedRegion:
    """An IOVA range the IOMMU will not translate for DMA (``[start, last]``)."""

    #: First IOVA of the range.
    start: int
    #: Last IOVA of the range (inclusive).
    last: int
    #: "direct", "direct-relaxable", "reserved" or "msi", as
    #: ``reserved_regions`` in sysfs names them.
    type: str

    @property
    def type_index(self) -> int:
        """The kernel's ``enum iommu_resv_type`` value of :attr:`type` (the
        order the types are sorted and listed in)."""
        return _topology.RESERVED_REGION_TYPES.index(self.type)


@dataclass
class IommuInfo:
    """What the (single) IOMMU of the machine can do."""

    #: Name of the IOMMU device under /sys/class/iommu ("dmar0", ...).
    name: str
    #: Inclusive ``(first, last)`` IOVA range a domain can translate.
    aperture: tuple[int, int]
    #: Supported page sizes in bytes, one bit each (bit 12 = 4 KiB).
    pgsize_bitmap: int
    #: IOVA ranges reserved for every device (the MSI window, ...).
    reserved_regions: list[ReservedRegion]
    #: Domains can track dirty IOVAs (IOMMU_HWPT_ALLOC_DIRTY_TRACKING).
    dirty_tracking: bool
    #: Width of a PASID in bits; 0 when PASIDs are not supported.
    pasid_bits: int
    #: What IOMMU_GET_HW_INFO reports: "none", "intel_vtd", "arm_smmuv3"
    #: or "amd".
    hw_info_type: str
    #: DMA snoops CPU caches (IOMMU_CAP_CACHE_COHERENCY).
    cache_coherency: bool
    #: Domains can force snooping (IOMMU_CAP_ENFORCE_CACHE_COHERENCY).
    enforce_cache_coherency: bool
    #: Interrupt remapping is in use (IOMMU_CAP_INTR_REMAP): MSIs of
    #: assigned devices are safe without allow_unsafe_interrupts.
    interrupt_remapping: bool
    #: Type of the groups' default domains, as sysfs ``type`` shows it
    #: ("DMA", "DMA-FQ", "identity", "blocked" or "unmanaged").
    default_domain: str
    #: Intel VT-d's capability register as the IOMMU reports it (sysfs
    #: ``intel-iommu/cap``); None: made up from the fields above.
    cap_reg: int | None = None
    #: Intel VT-d's extended capability register (sysfs ``intel-iommu/ecap``);
    #: None: made up from the fields above.
    ecap_reg: int | None = None
    #: Arm SMMUv3's SMMU_IDR0..SMMU_IDR5 as the IOMMU reports them; None:
    #: QEMU's SMMUv3 (both stages) adjusted to the fields above.
    smmu_idr: tuple[int, int, int, int, int, int] | None = None
    #: Arm SMMUv3's SMMU_IIDR; None: QEMU's (0).
    smmu_iidr: int | None = None
    #: Arm SMMUv3's SMMU_AIDR; None: QEMU's (0x1, SMMUv3.1).
    smmu_aidr: int | None = None

    @classmethod
    def from_topology(cls, t: dict[str, Any]) -> IommuInfo:
        """Build from a topology's (already validated) ``iommu`` section."""
        return cls(
            name=t["name"],
            aperture=(t["aperture"][0], t["aperture"][1]),
            pgsize_bitmap=t["pgsize_bitmap"],
            reserved_regions=[ReservedRegion(r["start"], r["last"], r["type"])
                              for r in t["reserved_regions"]],
            dirty_tracking=t["dirty_tracking"],
            pasid_bits=t["pasid_bits"],
            hw_info_type=t["hw_info_type"],
            cache_coherency=t["cache_coherency"],
            enforce_cache_coherency=t["enforce_cache_coherency"],
            interrupt_remapping=t["interrupt_remapping"],
            default_domain=t["default_domain"],
            cap_reg=t.get("cap_reg"),
            ecap_reg=t.get("ecap_reg"),
            smmu_idr=(tuple(t["smmu_idr"])
                      if t.get("smmu_idr") is not None else None),
            smmu_iidr=t.get("smmu_iidr"),
            smmu_aidr=t.get("smmu_aidr"),
        )

    def to_topology(self) -> dict[str, Any]:
        """The ``iommu`` section of a topology that describes this IOMMU
        (the inverse of :meth:`from_topology`)."""
        out: dict[str, Any] = {
            "name": self.name,
            "aperture": list(self.aperture),
            "pgsize_bitmap": self.pgsize_bitmap,
            "reserved_regions": [{"start": r.start, "last": r.last, "type": r.type}
                                 for r in self.reserved_regions],
            "dirty_tracking": self.dirty_tracking,
            "pasid_bits": self.pasid_bits,
            "hw_info_type": self.hw_info_type,
            "cache_coherency": self.cache_coherency,
            "enforce_cache_coherency": self.enforce_cache_coherency,
            "interrupt_remapping": self.interrupt_remapping,
            "default_domain": self.default_domain,
        }
        for key in ("cap_reg", "ecap_reg", "smmu_iidr", "smmu_aidr"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.smmu_idr is not None:
            out["smmu_idr"] = list(self.smmu_idr)
        return out


def merge_reserved_regions(regions: list[ReservedRegion]) -> list[ReservedRegion]:
    """Sort by start (then type) and merge overlapping or adjacent regions
    of the same type, as iommu_insert_resv_region does for a group."""
    out: list[ReservedRegion] = []
    for r in sorted(regions, key=lambda r: (r.start, r.type_index)):
        for i in range(len(out) - 1, -1, -1):
            top = out[i]
            if top.type != r.type:
                continue
            if r.start <= top.last + 1:
                out[i] = ReservedRegion(top.start, max(top.last, r.last), top.type)
                break
            out.append(r)
            break
        else:
            out.append(r)
    return sorted(out, key=lambda r: (r.start, r.type_index))


# -- IOMMU groups --------------------------------------------------------------------
_DEFAULT_DOMAIN = "default"
_BLOCKING_DOMAIN = "blocking"


class IommuGroup:
    """An IOMMU group and the kernel's DMA-ownership state for it.

    ``owner_cnt`` counts either the kernel drivers using the default domain
    (``owner`` is None) or the claims of one user-space owner (``owner`` is
    the claiming object: a vfio group for the container path, an iommufd
    context for the cdev path).  The two never mix.
    """

    def __init__(self, system: System, gid: int, name: str | None = None) -> None:
        self.system = system
        self.id = gid
        #: Group name (``/sys/kernel/iommu_groups/N/name``), None if unnamed.
        self.name = name
        self.devices: list[PciDevice] = []
        self.extra_reserved: list[ReservedRegion] = []
        self.owner: object | None = None
        self.owner_cnt = 0
        #: The domain the group is attached to: the default domain, the
        #: blocking domain, or a user domain (an IoDomain).
        self.domain: Union[str, IoDomain] = _DEFAULT_DOMAIN
        #: The vfio group while a device is bound to vfio-pci.
        self.vfio_group: VfioGroup | None = None
        #: Type of the default domain (sysfs ``type``).
        self.default_domain_type: str = (
            system.iommu.default_domain if system.iommu is not None else "unknown")

    def __repr__(self) -> str:
        return f"<IommuGroup {self.id} {[d.bdf for d in self.devices]}>"

    # -- description ------------------------------------------------------------
    @property
    def reserved_regions(self) -> list[ReservedRegion]:
        """The group's reserved regions, merged as the kernel reports them."""
        regions: list[ReservedRegion] = list(self.extra_reserved)
        if self.system.iommu is not None and self.name != "vfio-noiommu":
            for dev in self.devices:
                regions += self.system.iommu.reserved_regions
                regions += dev.extra_reserved
        return merge_reserved_regions(regions)

    @property
    def viable(self) -> bool:
        """No device of the group is bound to a DMA-capable kernel driver.

        This is what VFIO_GROUP_GET_STATUS reports as VIABLE for a group not
        yet attached to a container (iommu_group_dma_owner_claimed is false),
        and a user-space owner can only claim the group when it holds.
        """
        return self.owner is not None or self.owner_cnt == 0

    def _pasid_in_use(self) -> bool:
        return any(dev.pasid_domains for dev in self.devices)

    def _set_devices_domain(self, domain: IoDomain | None) -> None:
        for dev in self.devices:
            dev.domain = domain

    # -- the kernel's DMA ownership API -------------------------------------------
    def use_default_domain(self, dev: PciDevice) -> None:
        """iommu_device_use_default_domain: a DMA-capable kernel driver is
        being bound to ``dev`` (called from the bus's dma_configure)."""
        if self.owner_cnt:
            # iommu_device_use_default_domain: EBUSY if the group is not on
            # its default domain, has a user owner, or has PASID attachments
            if self.domain != _DEFAULT_DOMAIN or self.owner is not None or self._pasid_in_use():
                raise errno_error(errno.EBUSY, f"IOMMU group {self.id} is owned by user space")
        self.owner_cnt += 1

    def unuse_default_domain(self, dev: PciDevice) -> None:
        """iommu_device_unuse_default_domain: the kernel driver unbound."""
        assert self.owner_cnt > 0 and self.owner is None, "unbalanced unuse_default_domain"
        self.owner_cnt -= 1

    def _take_dma_ownership(self, owner: object) -> None:
        # __iommu_take_dma_ownership: EBUSY if a non-default domain is
        # attached or a PASID is attached
        if (self.domain != _DEFAULT_DOMAIN and self.domain != _BLOCKING_DOMAIN) \
                or self._pasid_in_use():
            raise errno_error(errno.EBUSY, f"IOMMU group {self.id} has a domain attached")
        self.domain = _BLOCKING_DOMAIN
        self._set_devices_domain(None)
        self.owner = owner
        self.owner_cnt += 1

    def claim_dma_owner(self, owner: object) -> None:
        """iommu_group_claim_dma_owner (the legacy group path)."""
        if owner is None:
            # iommu_group_claim_dma_owner: EINVAL without an owner cookie
            raise errno_error(errno.EINVAL, "no owner")
        if self.owner_cnt:
            # iommu_group_claim_dma_owner: EPERM if any driver or owner holds the group
            raise errno_error(errno.EPERM, f"IOMMU group {self.id} is in use ({self._users()})")
        self._take_dma_ownership(owner)

    def release_dma_owner(self) -> None:
        """iommu_group_release_dma_owner: back to the default domain."""
        assert self.owner_cnt and self.owner is not None and not self._pasid_in_use(), \
            "release_dma_owner without ownership"
        self._release_dma_ownership()

    def _release_dma_ownership(self) -> None:
        # __iommu_release_dma_ownership
        self.owner_cnt = 0
        self.owner = None
        self.domain = _DEFAULT_DOMAIN
        self._set_devices_domain(None)

    def device_claim_dma_owner(self, dev: PciDevice, owner: object) -> None:
        """iommu_device_claim_dma_owner (the cdev/iommufd path): devices of
        one group may be claimed together by the same owner."""
        if owner is None:
            # iommu_device_claim_dma_owner: EINVAL without an owner cookie
            raise errno_error(errno.EINVAL, "no owner")
        if self.owner_cnt:
            if self.owner is not owner:
                # iommu_device_claim_dma_owner: EPERM if claimed by someone else
                raise errno_error(errno.EPERM, f"IOMMU group {self.id} is in use ({self._users()})")
            self.owner_cnt += 1
            return
        self._take_dma_ownership(owner)

    def device_release_dma_owner(self, dev: PciDevice) -> None:
        """iommu_device_release_dma_owner."""
        assert self.owner is not None and self.owner_cnt > 0, "device_release_dma_owner unowned"
        if self.owner_cnt > 1:
            self.owner_cnt -= 1
        else:
            self._release_dma_ownership()

    def dma_owner_claimed(self) -> bool:
        """iommu_group_dma_owner_claimed: any kernel driver or owner."""
        return self.owner_cnt != 0

    # The kernel's names, for readers following drivers/iommu/iommu.c.
    iommu_group_claim_dma_owner = claim_dma_owner
    iommu_group_release_dma_owner = release_dma_owner
    iommu_device_claim_dma_owner = device_claim_dma_owner
    iommu_device_release_dma_owner = device_release_dma_owner
    iommu_device_use_default_domain = use_default_domain
    iommu_device_unuse_default_domain = unuse_default_domain
    iommu_group_dma_owner_claimed = dma_owner_claimed

    def _users(self) -> str:
        if self.owner is not None:
            return f"claimed by {self.owner!r}"
        users = [f"{d.bdf} on {d.driver}" for d in self.devices
                 if d.driver is not None and not self.system.drivers[d.driver].managed_dma]
        return ", ".join(users) or f"{self.owner_cnt} kernel users"

    # -- domains attached by an owner -------------------------------------------------
    def attach_domain(self, owner: object, domain: IoDomain) -> None:
        """The owner attaches a user domain (iommu_attach_group): the devices'
        DMA is translated through ``domain`` from now on."""
        if self.owner is not owner:
            raise errno_error(errno.EPERM, f"IOMMU group {self.id} is not owned by {owner!r}")
        if isinstance(self.domain, IoDomain) and self.domain is not domain:
            # __iommu_attach_group: EBUSY when another domain is attached
            raise errno_error(errno.EBUSY, f"IOMMU group {self.id} already has a domain")
        self.domain = domain
        self._set_devices_domain(domain)

    def detach_domain(self, owner: object) -> None:
        """Back to the blocking domain (iommu_detach_group while owned)."""
        if self.owner is not owner:
            return
        self.domain = _BLOCKING_DOMAIN
        self._set_devices_domain(None)
