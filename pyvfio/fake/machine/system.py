"""The simulated machine: PCI devices, IOMMU groups, drivers and device nodes.

A :class:`System` is built from a topology (:mod:`pyvfio.fake.topology`)
and owns one :class:`~pyvfio.fake.core.FakeBackend` (:attr:`System.backend`)
through which everything is driven, exactly as user code drives the real
kernel::

    system = System("default")
    b = system.backend
    b.sysfs_write("/sys/bus/pci/devices/0000:00:02.0/driver_override", "vfio-pci")
    b.sysfs_write("/sys/bus/pci/drivers_probe", "0000:00:02.0")
    fd = b.open("/dev/vfio/0")

What lives here, with the kernel code each part follows:

* the driver core (drivers/base/dd.c, bus.c, drivers/pci/pci-driver.c):
  matching with ``driver_override`` and dynamic IDs, probing, the
  ``dma_configure`` step that makes DMA-capable drivers take the group's
  default domain, unbinding;
* the IOMMU group DMA-ownership API (drivers/iommu/iommu.c) on
  :class:`IommuGroup`;
* vfio-pci device registration and the vfio group objects
  (drivers/vfio/vfio_main.c, group.c): device indexes, ``/dev/vfio/N``,
  ``/dev/vfio/devices/vfioN``, no-IOMMU groups;
* the device's view of DMA: :meth:`PciDevice.dma_read` /
  :meth:`PciDevice.dma_write` translate through the I/O page table the
  device is attached to and record blocked accesses in :attr:`System.faults`.

Differences from the kernel are documented where they occur; the main one:
unbinding vfio-pci from a device whose VFIO file is open blocks in the
kernel until the user closes it, here it fails with ``EBUSY`` after the
device's release request was signalled.
"""

from __future__ import annotations

import copy
import errno
import importlib
import os
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Union

from . import topology as _topology
from ..core import FakeBackend, FakeFile, FaultRecord, IoDomain, IommuFault, UserMemory, errno_error

if TYPE_CHECKING:
    from .sysfs import Sysfs

__all__ = [
    "System",
    "PciDevice",
    "IommuGroup",
    "VfioGroup",
    "Driver",
    "PciId",
    "IommuInfo",
    "ReservedRegion",
    "PCI_ANY_ID",
]

#: Wildcard of a :class:`PciId` field: matches any value.
PCI_ANY_ID = 0xFFFFFFFF
_U64 = (1 << 64) - 1

#: A device model factory: ``spec -> model`` (``pyvfio.fake.models.create``).
ModelFactory = Callable[[dict[str, Any]], Any]

_AUTO: Any = object()


# -- IOMMU description -----------------------------------------------------------
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
        )

    def to_topology(self) -> dict[str, Any]:
        """The ``iommu`` section of a topology that describes this IOMMU
        (the inverse of :meth:`from_topology`)."""
        return {
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


# -- drivers ------------------------------------------------------------------------
@dataclass
class PciId:
    """One entry of a PCI driver's ID table (struct pci_device_id)."""

    #: Vendor ID, or :data:`PCI_ANY_ID`.
    vendor: int = PCI_ANY_ID
    #: Device ID, or :data:`PCI_ANY_ID`.
    device: int = PCI_ANY_ID
    #: Subsystem vendor ID, or :data:`PCI_ANY_ID`.
    subvendor: int = PCI_ANY_ID
    #: Subsystem ID, or :data:`PCI_ANY_ID`.
    subdevice: int = PCI_ANY_ID
    #: Class code (24 bits) compared under :attr:`class_mask`.
    class_: int = 0
    #: Bits of the class code that must equal :attr:`class_`; 0 matches any class.
    class_mask: int = 0
    #: Driver-private value (``new_id``'s last field).
    driver_data: int = 0
    #: Only matches a device whose ``driver_override`` names the driver
    #: (PCI_DEVICE_DRIVER_OVERRIDE, what vfio-pci variant drivers use).
    override_only: bool = False

    def matches(self, pdev: PciDevice) -> bool:
        """pci_match_one_id: ``pdev``'s IDs and class match this entry."""
        return (
            (self.vendor == PCI_ANY_ID or self.vendor == pdev.vendor)
            and (self.device == PCI_ANY_ID or self.device == pdev.device)
            and (self.subvendor == PCI_ANY_ID or self.subvendor == pdev.subsystem_vendor)
            and (self.subdevice == PCI_ANY_ID or self.subdevice == pdev.subsystem_device)
            and not ((self.class_ ^ pdev.class_code) & self.class_mask)
        )

    def matches_id(self, other: PciId) -> bool:
        """pci_match_one_id of ``other`` taken as a device's IDs."""
        return (
            (self.vendor == PCI_ANY_ID or self.vendor == other.vendor)
            and (self.device == PCI_ANY_ID or self.device == other.device)
            and (self.subvendor == PCI_ANY_ID or self.subvendor == other.subvendor)
            and (self.subdevice == PCI_ANY_ID or self.subdevice == other.subdevice)
            and not ((self.class_ ^ other.class_) & self.class_mask)
        )


@dataclass
class Driver:
    """A PCI driver registered with the fake driver core."""

    #: Name under /sys/bus/pci/drivers ("vfio-pci", "e1000e", ...).
    name: str
    #: ``driver_managed_dma``: the driver does no kernel DMA, so binding it
    #: does not take the group's default domain (vfio-pci, pci-stub, pcieport).
    managed_dma: bool
    #: "vfio-pci", "pci-stub", "pcieport" or "kernel" (a DMA-capable driver).
    kind: str
    #: Name under /sys/module, or None for code that is not a module.
    module: str | None = None
    #: The static ID table (what the driver was built with).
    ids: list[PciId] = field(default_factory=list)
    #: IDs added through sysfs ``new_id`` (removed with ``remove_id``).
    dynids: list[PciId] = field(default_factory=list)

    @property
    def devices(self) -> list[PciDevice]:
        """The devices bound to the driver, in the order they were bound."""
        return self._devices

    def __post_init__(self) -> None:
        self._devices: list[PciDevice] = []

    def match_static(self, pdev: PciDevice, include_override_only: bool) -> PciId | None:
        """do_pci_match_id: the first entry of :attr:`ids` that matches
        ``pdev``; override-only entries count when ``include_override_only``."""
        for pid in self.ids:
            if (not pid.override_only or include_override_only) and pid.matches(pdev):
                return pid
        return None

    def __repr__(self) -> str:
        return f"<Driver {self.name}>"


# -- vfio groups ---------------------------------------------------------------------
class VfioGroup:
    """The vfio core's group object (struct vfio_group): exists while at
    least one device of the IOMMU group is bound to a vfio driver, and
    backs ``/dev/vfio/N`` (``/dev/vfio/noiommu-N``).

    The group file (:class:`pyvfio.fake.legacy.GroupFile`) and the cdev
    path keep their state here, so that both see each other's claims.
    """

    def __init__(self, system: System, iommu_group: IommuGroup, noiommu: bool) -> None:
        self.system = system
        #: None once the last vfio device left: the group is dead.
        self.iommu_group: IommuGroup | None = iommu_group
        self.id = iommu_group.id
        self.noiommu = noiommu
        #: Devices registered with vfio (vfio_device_group_register), newest first.
        self.devices: list[PciDevice] = []
        #: Number of vfio drivers bound in the group (refcount group->drivers).
        self.drivers = 0
        #: The open /dev/vfio/N file, if any (group->opened_file).
        self.opened_file: FakeFile | None = None
        #: Legacy container (a legacy.ContainerFile) the group is attached to.
        self.container: Any = None
        #: Devices using the container (group->container_users).
        self.container_users = 0
        #: iommufd context set through VFIO_GROUP_SET_CONTAINER (compat).
        self.iommufd: Any = None
        #: Devices of the group opened through their cdev and bound to an
        #: iommufd (group->cdev_device_open_cnt).
        self.cdev_device_open_cnt = 0

    @property
    def name(self) -> str:
        """The node name under /dev/vfio: ``"N"`` or ``"noiommu-N"``."""
        return f"noiommu-{self.id}" if self.noiommu else str(self.id)

    @property
    def dev_path(self) -> str:
        """``/dev/vfio/N`` (``/dev/vfio/noiommu-N``)."""
        return f"/dev/vfio/{self.name}"

    @property
    def alive(self) -> bool:
        """The group still has a vfio device; False once it was removed."""
        return self.iommu_group is not None

    def has_iommu(self) -> bool:
        """vfio_group_has_iommu: a container or an iommufd is set."""
        return self.container is not None or self.iommufd is not None

    def block_group(self) -> None:
        """vfio_device_block_group: a device of this group is being bound to
        an iommufd through its cdev.  EBUSY while /dev/vfio/N is open."""
        if self.opened_file is not None:
            # vfio_device_block_group: EBUSY while the group file is open
            raise errno_error(errno.EBUSY, f"{self.dev_path} is open")
        self.cdev_device_open_cnt += 1

    def unblock_group(self) -> None:
        """vfio_device_unblock_group."""
        assert self.cdev_device_open_cnt > 0, "unblock_group without block_group"
        self.cdev_device_open_cnt -= 1

    def __repr__(self) -> str:
        state = "" if self.alive else " (removed)"
        return f"<VfioGroup {self.name}{state}>"


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


# -- PCI devices ----------------------------------------------------------------------
class PciDevice:
    """A PCI function of the simulated machine."""

    def __init__(self, system: System, spec: dict[str, Any], model: Any) -> None:
        self.system = system
        self.spec = spec
        self.bdf: str = spec["bdf"]
        self.model = model
        cfg = _model_config(model)
        known = _topology.KNOWN_MODELS.get(spec.get("model", ""), {}) if cfg is None else {}

        def ident(key: str, offset: int, size: int, fallback: int) -> int:
            if key in spec:
                return int(spec[key])
            if cfg is not None and len(cfg) >= offset + size:
                return int.from_bytes(cfg[offset:offset + size], "little")
            return int(known.get(key, fallback))

        self.vendor: int = ident("vendor", 0x00, 2, 0xFFFF)
        self.device: int = ident("device", 0x02, 2, 0xFFFF)
        self.revision: int = ident("revision", 0x08, 1, 0)
        self.class_code: int = ident("class", 0x09, 3, 0xFF0000)
        self.subsystem_vendor: int = ident("subsystem_vendor", 0x2C, 2, 0)
        self.subsystem_device: int = ident("subsystem_device", 0x2E, 2, 0)
        if self.vendor == 0xFFFF:
            raise _topology.TopologyError(
                f"device {self.bdf}: no vendor ID (give 'vendor' and 'device' or a model)")
        self.bridge: dict[str, Any] | None = spec.get("bridge")
        self.header_type: int = (
            1 if self.bridge is not None or (self.class_code >> 8) == 0x0604 else
            (cfg[0x0E] & 0x7F if cfg else 0)
        )
        self.default_driver: str | None = spec.get("default_driver")
        self.numa_node: int = spec.get("numa_node", -1)
        #: Supported reset methods (what the hardware offers) and the ones
        #: enabled through sysfs ``reset_method``.
        methods = spec.get("reset_methods")
        if methods is None:
            methods = getattr(model, "reset_methods", None) or []
        self.supported_reset_methods: list[str] = list(methods)
        self.reset_methods: list[str] = list(self.supported_reset_methods)
        self.extra_reserved = [ReservedRegion(r["start"], r["last"], r["type"])
                               for r in spec.get("reserved_regions", [])]
        self.group: IommuGroup | None = None
        self.parent: PciDevice | None = None
        self.children: list[PciDevice] = []
        self.driver: str | None = None
        self.driver_override: str | None = None
        #: pci_enable_device count (sysfs ``enable``).
        self.enable_cnt = 0
        #: vfio device index while bound to vfio-pci (``vfioN``).
        self.vfio_index: int | None = None
        #: Registered as a no-IOMMU vfio device (``noiommu-vfioN``).
        self.vfio_noiommu = False
        #: What the device's DMA is translated through (None blocks DMA).
        self.domain: IoDomain | None = None
        #: PASID -> domain for PASID-tagged DMA.
        self.pasid_domains: dict[int, IoDomain] = {}
        #: Called by the fake when the kernel would send the device's
        #: request (REQ) interrupt: the vfio device file registers it.
        self.request_release: Callable[[], None] | None = None
        #: How many release requests were sent (vfio's ``ops->request`` count).
        self.release_requests = 0
        self.bar_addresses: dict[int, int] = {}

    def __repr__(self) -> str:
        return f"<PciDevice {self.bdf} {self.vendor:04x}:{self.device:04x} driver={self.driver}>"

    # -- identity -------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The device name, as the kernel's ``dev_name``: the BDF."""
        return self.bdf

    @property
    def domain_nr(self) -> int:
        """The PCI domain (segment) number of the BDF."""
        return int(self.bdf[:4], 16)

    @property
    def bus(self) -> int:
        """The bus number of the BDF."""
        return int(self.bdf[5:7], 16)

    @property
    def is_bridge(self) -> bool:
        """A PCI-to-PCI bridge (type 1 header)."""
        return self.header_type == 1

    @property
    def bars(self) -> list[dict[str, Any]]:
        """The BARs as topology entries (``index``, ``size``, ``type``, ``prefetchable``)."""
        model_bars = getattr(self.model, "bars", None)
        if isinstance(model_bars, dict):
            out = []
            for bar in model_bars.values():
                kind = getattr(bar, "kind", "mem32")
                out.append({"index": int(bar.index), "size": int(bar.size),
                            "type": str(getattr(kind, "value", kind)),
                            "prefetchable": bool(getattr(bar, "prefetchable", False))})
            return sorted(out, key=lambda b: b["index"])
        return list(self.spec.get("bars", []))

    @property
    def vfio_group(self) -> VfioGroup | None:
        """The vfio group while the device is bound to vfio-pci."""
        return self.group.vfio_group if self.group is not None else None

    @property
    def vfio_cdev_name(self) -> str | None:
        """``vfioN`` (``noiommu-vfioN``) while bound to vfio-pci."""
        if self.vfio_index is None:
            return None
        return f"{'noiommu-' if self.vfio_noiommu else ''}vfio{self.vfio_index}"

    @property
    def sysfs_path(self) -> str:
        """Canonical path under /sys/devices."""
        chain: list[str] = []
        dev: PciDevice | None = self
        while dev is not None:
            chain.append(dev.bdf)
            dev = dev.parent
        root = f"pci{self.bdf[:4]}:{chain[-1][5:7]}"
        return "/sys/devices/" + "/".join([root] + chain[::-1])

    def config_bytes(self) -> bytes:
        """The configuration space as sysfs ``config`` shows it."""
        cfg = _model_config(self.model)
        if cfg is not None:
            return cfg
        return self._synth_config()

    def _synth_config(self) -> bytes:
        cfg = bytearray(256)
        cfg[0:2] = self.vendor.to_bytes(2, "little")
        cfg[2:4] = self.device.to_bytes(2, "little")
        cfg[8] = self.revision
        cfg[9:12] = self.class_code.to_bytes(3, "little")
        cfg[0x0E] = self.header_type
        if self.header_type == 0:
            cfg[0x2C:0x2E] = self.subsystem_vendor.to_bytes(2, "little")
            cfg[0x2E:0x30] = self.subsystem_device.to_bytes(2, "little")
            for bar in self.bars:
                off = 0x10 + 4 * bar["index"]
                addr = self.bar_addresses.get(bar["index"], 0)
                if bar["type"] == "io":
                    cfg[off:off + 4] = (addr | 1).to_bytes(4, "little")
                else:
                    low = addr & 0xFFFFFFF0
                    if bar["type"] == "mem64":
                        low |= 0x4
                    if bar["prefetchable"]:
                        low |= 0x8
                    cfg[off:off + 4] = low.to_bytes(4, "little")
                    if bar["type"] == "mem64":
                        cfg[off + 4:off + 8] = (addr >> 32).to_bytes(4, "little")
        elif self.bridge is not None:
            cfg[0x18] = self.bus
            cfg[0x19] = self.bridge["secondary_bus"]
            cfg[0x1A] = self.bridge["secondary_bus"]
        return bytes(cfg)

    # -- DMA ownership of this device (the cdev/iommufd path) ---------------------------
    def claim_dma_owner(self, owner: object) -> None:
        """iommu_device_claim_dma_owner for this device."""
        if self.group is None:
            # iommu_device_claim_dma_owner: ENODEV for a device without an IOMMU group
            raise errno_error(errno.ENODEV, f"{self.bdf} has no IOMMU group")
        self.group.device_claim_dma_owner(self, owner)

    def release_dma_owner(self) -> None:
        """iommu_device_release_dma_owner for this device."""
        assert self.group is not None
        self.group.device_release_dma_owner(self)

    # -- vfio state ------------------------------------------------------------------
    def vfio_files(self) -> list[FakeFile]:
        """Open vfio device files of this device (files with ``pdev`` == self
        in the backend's fd table; each holds a vfio registration)."""
        return [f for f in self.system.backend.open_files if getattr(f, "pdev", None) is self]

    @property
    def vfio_open(self) -> bool:
        """A vfio device file of the device is open."""
        return bool(self.vfio_files())

    # -- DMA -------------------------------------------------------------------------
    def _domain_for(self, pasid: int | None) -> IoDomain | None:
        if pasid is None:
            return self.domain
        return self.pasid_domains.get(pasid)

    def _fault(self, iova: int, length: int, write: bool, reason: str) -> IommuFault:
        self.system.faults.append(FaultRecord(self.bdf, iova, length, write, reason))
        return IommuFault(iova, length, write, reason)

    def _translate(self, iova: int, length: int, write: bool,
                   pasid: int | None) -> list[tuple[int, int]]:
        if iova < 0 or length < 0 or iova + length - 1 > _U64:
            raise self._fault(iova, length, write, "address outside the 64-bit IOVA space")
        domain = self._domain_for(pasid)
        if domain is None:
            where = "" if pasid is None else f" for PASID {pasid}"
            raise self._fault(iova, length, write, f"no I/O page table attached{where} (DMA blocked)")
        try:
            runs = domain.translate(iova, length, write)
        except IommuFault as f:
            self.system.faults.append(FaultRecord(self.bdf, f.iova, f.length, f.write, f.reason))
            raise
        for va, n in runs:
            try:
                self.system.user_memory.check(va, n, write)
            except OSError:
                # The kernel keeps pinned pages even after the user unmaps
                # them; the fake cannot, so the access faults instead.
                raise self._fault(iova, length, write,
                                  f"user memory at {va:#x} backing the IOVA is no longer mapped") from None
        return runs

    def dma_read(self, iova: int, length: int, *, pasid: int | None = None) -> bytes:
        """The device reads ``length`` bytes at ``iova``.

        Raises :class:`~pyvfio.fake.core.IommuFault` (and records a
        :class:`~pyvfio.fake.core.FaultRecord` in :attr:`System.faults`) when
        any byte is not mapped readable.
        """
        if length == 0:
            return b""
        runs = self._translate(iova, length, False, pasid)
        return b"".join(self.system.user_memory.read(va, n) for va, n in runs)

    def dma_write(self, iova: int, data: bytes | bytearray | memoryview, *,
                  pasid: int | None = None) -> None:
        """The device writes ``data`` at ``iova`` (see :meth:`dma_read`)."""
        payload = bytes(data)
        if not payload:
            return
        runs = self._translate(iova, len(payload), True, pasid)
        pos = 0
        for va, n in runs:
            self.system.user_memory.write(va, payload[pos:pos + n])
            pos += n
        domain = self._domain_for(pasid)
        assert domain is not None
        domain.note_dirty(iova, len(payload))


def _model_config(model: Any) -> bytes | None:
    """The model's configuration space, whatever form the model keeps it in."""
    if model is None:
        return None
    getter = getattr(model, "config_bytes", None)
    if callable(getter):
        data = getter()
        return bytes(data)
    for attr in ("config", "config_space"):
        data = getattr(model, attr, None)
        if isinstance(data, (bytes, bytearray, memoryview)):
            return bytes(data)
        inner = getattr(data, "data", None)
        if isinstance(inner, (bytes, bytearray, memoryview)):
            return bytes(inner)
    reader = getattr(model, "read_config", None)
    if callable(reader):
        size = int(getattr(model, "config_size", 256))
        return bytes(reader(off, 1) & 0xFF for off in range(size))
    return None


def _default_model_factory() -> ModelFactory | None:
    try:
        models = importlib.import_module("..models", __package__)
    except ImportError:
        return None
    create = getattr(models, "create", None)
    return create if callable(create) else None


# -- the machine --------------------------------------------------------------------
class System:
    """A simulated Linux machine with PCI devices behind an IOMMU.

    ``topology`` is a dict, the path of a JSON file, or the name of a
    shipped topology (see :mod:`pyvfio.fake.topology`).  ``models`` is the
    device model factory; by default ``pyvfio.fake.models.create`` when
    that module is importable, else devices have no model (their config
    space is synthesised from the topology and DMA still works).
    """

    #: The CPU page size the fake reports (mmap granularity, pinning unit).
    page_size = 4096

    def __init__(self, topology: dict[str, Any] | str | os.PathLike[str] = "default", *,
                 models: ModelFactory | None = _AUTO) -> None:
        topo = _topology.load(topology)
        self.lock = threading.RLock()
        self.topology_name: str = topo["name"]
        self._description: str | None = topo.get("description")
        self.memlock_limit: int = topo["memlock_limit"]
        self.user_memory = UserMemory(lambda: self.memlock_limit)
        self.faults: list[FaultRecord] = []
        self.numa_nodes: int = topo["numa_nodes"]
        #: The kernel build the machine runs (the topology's ``kernel``
        #: section: ``release``, ``config``, ``modules_dir``), served in its
        #: /proc and /lib/modules files.
        self.kernel: dict[str, Any] = topo["kernel"]
        #: What the host uses the devices for (the topology's ``host``
        #: section): disks, interfaces and 9p tags of devices while their
        #: first driver has them, the mounts and swaps on them.
        self.host: dict[str, Any] = topo["host"]
        self.modules: dict[str, bool] = dict(topo["modules"])
        #: vfio.enable_unsafe_noiommu_mode
        self.noiommu: bool = topo["noiommu"]
        #: The process has CAP_SYS_RAWIO (needed for no-IOMMU groups).
        self.cap_sys_rawio = True
        #: vfio_iommu_type1 module parameters.
        self.type1_params: dict[str, Any] = {
            "dma_entry_limit": topo["type1"]["dma_entry_limit"],
            "allow_unsafe_interrupts": topo["type1"]["allow_unsafe_interrupts"],
            "disable_hugepages": False,
        }
        self.iommu: IommuInfo | None = (
            IommuInfo.from_topology(topo["iommu"]) if topo["iommu"] is not None else None
        )
        self.devices: dict[str, PciDevice] = {}
        self.groups: dict[int, IommuGroup] = {}
        self.drivers: dict[str, Driver] = {}
        self._vfio_indexes: set[int] = set()
        self._iommufd_loaded = self.modules["iommufd"]
        factory = _default_model_factory() if models is _AUTO else models
        self._build(topo, factory)
        self.backend = FakeBackend(self)
        from .sysfs import Sysfs

        self.sysfs: Sysfs = Sysfs(self)

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *,
                  models: ModelFactory | None = _AUTO) -> System:
        """A system described by the JSON topology at ``path``."""
        return cls(os.fspath(path), models=models)

    def _build(self, topo: dict[str, Any], factory: ModelFactory | None) -> None:
        for spec in topo["devices"]:
            model_spec = {k: v for k, v in spec.items() if k not in ("reserved_regions", "bridge")}
            model = None
            if factory is not None:
                try:
                    model = factory(model_spec)
                except (KeyError, ValueError) as e:
                    raise _topology.TopologyError(f"device {spec['bdf']}: {e}") from None
            pdev = PciDevice(self, spec, model)
            self.devices[pdev.bdf] = pdev
        bridges = {(d.bdf[:4], d.bridge["secondary_bus"]): d
                   for d in self.devices.values() if d.bridge is not None}
        for d in self.devices.values():
            parent = bridges.get((d.bdf[:4], d.bus))
            if parent is not None:
                d.parent = parent
                parent.children.append(d)
        self._assign_bars()
        for g in topo["groups"]:
            group = IommuGroup(self, g["id"])
            for bdf in g["devices"]:
                pdev = self.devices[bdf]
                pdev.group = group
                group.devices.append(pdev)
            self.groups[group.id] = group
        self._register_drivers(topo)
        for pdev in self.devices.values():
            # model hook: the device learns which PciDevice it DMAs through
            attach = getattr(pdev.model, "attach", None)
            if callable(attach):
                attach(pdev)
        for spec in topo["devices"]:
            if spec["driver"] is None:
                continue
            pdev = self.devices[spec["bdf"]]
            drv = self.drivers.get(spec["driver"])
            if drv is None:
                raise _topology.TopologyError(f"device {pdev.bdf}: driver {spec['driver']!r} is not loaded")
            try:
                self.device_driver_attach(drv, pdev)
            except OSError as e:
                raise _topology.TopologyError(
                    f"device {pdev.bdf}: binding {drv.name} fails: {e.strerror}"
                ) from None

    def _assign_bars(self) -> None:
        mem32 = 0xFE000000
        mem64 = 0x8_0000_0000
        io = 0xC000
        for pdev in self.devices.values():
            for bar in sorted(pdev.bars, key=lambda b: -int(b["size"])):
                size = int(bar["size"])
                if bar["type"] == "io":
                    io = (io + size - 1) & ~(size - 1)
                    pdev.bar_addresses[bar["index"]] = io
                    io += size
                elif bar["type"] == "mem64":
                    mem64 = (mem64 + size - 1) & ~(size - 1)
                    pdev.bar_addresses[bar["index"]] = mem64
                    mem64 += size
                else:
                    mem32 = (mem32 - size) & ~(size - 1)
                    pdev.bar_addresses[bar["index"]] = mem32
            setter = getattr(pdev.model, "set_bar_address", None)
            if callable(setter):
                for index, address in pdev.bar_addresses.items():
                    setter(index, address)

    def _register_drivers(self, topo: dict[str, Any]) -> None:
        # Registration order is the order drivers_probe tries them in:
        # the kernel drivers of the topology first, then the drivers that
        # only bind on request.
        self.drivers["pcieport"] = Driver(
            "pcieport", managed_dma=True, kind="pcieport", module=None,
            ids=[PciId(class_=0x060400, class_mask=0xFFFFFF)],
        )
        names: list[str] = []
        for spec in topo["devices"]:
            for key in ("default_driver", "driver"):
                name = spec.get(key)
                if name and name not in ("vfio-pci", "pci-stub", "pcieport") and name not in names:
                    names.append(name)
        for name in names:
            ids: list[PciId] = []
            for pdev in self.devices.values():
                if pdev.default_driver == name:
                    pid = PciId(pdev.vendor, pdev.device)
                    if not any(p.vendor == pid.vendor and p.device == pid.device for p in ids):
                        ids.append(pid)
            self.drivers[name] = Driver(name, managed_dma=False, kind="kernel",
                                        module=name.replace("-", "_"), ids=ids)
        if self.modules["pci_stub"]:
            self.drivers["pci-stub"] = Driver("pci-stub", managed_dma=True, kind="pci-stub",
                                              module="pci_stub")
        if self.modules["vfio_pci"]:
            self.drivers["vfio-pci"] = Driver(
                "vfio-pci", managed_dma=True, kind="vfio-pci", module="vfio_pci",
                ids=[PciId(override_only=True)],
            )

    # -- lookups ---------------------------------------------------------------------
    def device(self, bdf: str) -> PciDevice:
        """The device at ``bdf`` (``"00:02.0"`` or ``"0000:00:02.0"``)."""
        key = _topology.normalize_bdf(bdf)
        try:
            return self.devices[key]
        except KeyError:
            raise KeyError(f"no PCI device {key}") from None

    def group(self, gid: int) -> IommuGroup:
        """IOMMU group number ``gid``; KeyError when there is none."""
        return self.groups[gid]

    def vfio_groups(self) -> list[VfioGroup]:
        """Live vfio groups (``/dev/vfio/N`` nodes)."""
        return [g.vfio_group for g in self.groups.values() if g.vfio_group is not None]

    def vfio_group_by_name(self, name: str) -> VfioGroup | None:
        """The live vfio group whose node is ``/dev/vfio/<name>``, or None."""
        for vg in self.vfio_groups():
            if vg.name == name:
                return vg
        return None

    def vfio_device_by_cdev(self, name: str) -> PciDevice | None:
        """The device whose cdev is ``/dev/vfio/devices/<name>``, or None."""
        for pdev in self.devices.values():
            if pdev.vfio_cdev_name == name:
                return pdev
        return None

    def __repr__(self) -> str:
        return f"<System {self.topology_name!r}: {len(self.devices)} devices>"

    # -- the driver core ------------------------------------------------------------------
    def driver_matches(self, drv: Driver, pdev: PciDevice) -> bool:
        """pci_match_device: driver_override first, then dynamic IDs, then
        the static ID table."""
        override = pdev.driver_override
        if override is not None and override != drv.name:
            return False
        if any(pid.matches(pdev) for pid in drv.dynids):
            return True
        if drv.match_static(pdev, include_override_only=override is not None) is not None:
            return True
        # pci_match_device: a matching driver_override always matches
        return override is not None

    def _really_probe(self, drv: Driver, pdev: PciDevice) -> int:
        """really_probe: 0, a negative errno from before the driver's probe
        (dma_configure) or a positive errno from the probe itself."""
        managed = drv.managed_dma
        # pci_dma_configure: DMA-capable drivers take the default domain
        if not managed and pdev.group is not None:
            try:
                pdev.group.use_default_domain(pdev)
            except OSError as e:
                return -int(e.errno or errno.EBUSY)
        err = self._driver_probe(drv, pdev)
        if err:
            # really_probe: probe errors undo dma_configure (pci_dma_cleanup)
            if not managed and pdev.group is not None:
                pdev.group.unuse_default_domain(pdev)
            return err
        pdev.driver = drv.name
        drv.devices.append(pdev)
        return 0

    def _driver_probe(self, drv: Driver, pdev: PciDevice) -> int:
        """The driver's probe(); returns a positive errno on failure."""
        if drv.kind == "vfio-pci":
            return self._vfio_pci_probe(pdev)
        if drv.kind == "pcieport":
            # pcie_portdrv_probe: ENODEV unless the function is a PCIe port
            return 0 if pdev.default_driver == "pcieport" else errno.ENODEV
        return 0

    def device_driver_attach(self, drv: Driver, pdev: PciDevice) -> None:
        """device_driver_attach (sysfs ``bind``); raises OSError."""
        if pdev.driver is not None:
            # __driver_probe_device: EBUSY if the device already has a driver
            raise errno_error(errno.EBUSY, f"{pdev.bdf} is bound to {pdev.driver}")
        ret = self._really_probe(drv, pdev)
        if ret:
            # device_driver_attach: probe errors are returned as negative errnos
            raise errno_error(abs(ret), f"probe of {pdev.bdf} with {drv.name}")

    def device_attach(self, pdev: PciDevice) -> int:
        """__device_attach (``drivers_probe``): try every matching driver in
        registration order.  Returns 1 when bound, 0 when no driver took the
        device, or a negative errno that stopped the search."""
        if pdev.driver is not None:
            return 1
        for drv in self.drivers.values():
            if not self.driver_matches(drv, pdev):
                continue
            ret = self._really_probe(drv, pdev)
            if ret < 0:
                # __device_attach_driver: errors before the probe stop the search
                return ret
            if ret == 0:
                return 1
            # __device_attach_driver: a failed probe lets the next driver try
        return 0

    def driver_attach(self, drv: Driver) -> None:
        """driver_attach (after new_id): bind every unbound matching device,
        ignoring errors as __driver_attach does."""
        for pdev in self.devices.values():
            if pdev.driver is None and self.driver_matches(drv, pdev):
                self._really_probe(drv, pdev)

    def device_release_driver(self, pdev: PciDevice) -> None:
        """device_driver_detach (sysfs ``unbind``)."""
        if pdev.driver is None:
            return
        drv = self.drivers[pdev.driver]
        if drv.kind == "vfio-pci":
            self._vfio_pci_remove(pdev)
        drv.devices.remove(pdev)
        pdev.driver = None
        # pci_dma_cleanup: DMA-capable drivers give back the default domain
        if not drv.managed_dma and pdev.group is not None:
            pdev.group.unuse_default_domain(pdev)

    # -- vfio-pci ----------------------------------------------------------------------------
    def _vfio_pci_probe(self, pdev: PciDevice) -> int:
        # vfio_pci_core_register_device: EINVAL for anything but a normal
        # (type 0) header, e.g. bridges
        if pdev.header_type != 0:
            return errno.EINVAL
        # vfio_init_device: the device index comes first
        index = 0
        while index in self._vfio_indexes:
            index += 1
        # vfio_device_set_noiommu_and_name: no IOMMU behind the device and
        # no-IOMMU mode on -> a noiommu-vfioN cdev
        noiommu = self.noiommu and pdev.group is None
        group = pdev.group
        if group is None:
            if not noiommu:
                # vfio_group_find_or_alloc: EINVAL without an IOMMU group
                return errno.EINVAL
            # vfio_noiommu_group_alloc: a fresh group named vfio-noiommu
            gid = 0
            while gid in self.groups:
                gid += 1
            group = IommuGroup(self, gid, name="vfio-noiommu")
            group.devices.append(pdev)
            self.groups[gid] = group
            pdev.group = group
        vgroup = group.vfio_group
        if vgroup is None:
            vgroup = VfioGroup(self, group, noiommu=group.name == "vfio-noiommu")
            group.vfio_group = vgroup
        vgroup.drivers += 1
        # __vfio_register_dev: EINVAL if the IOMMU does not keep DMA coherent
        if not vgroup.noiommu and self.iommu is not None and not self.iommu.cache_coherency:
            self._vfio_remove_group(pdev)
            return errno.EINVAL
        self._vfio_indexes.add(index)
        pdev.vfio_index = index
        pdev.vfio_noiommu = vgroup.noiommu
        vgroup.devices.insert(0, pdev)
        return 0

    def _vfio_pci_remove(self, pdev: PciDevice) -> None:
        # vfio_unregister_group_dev: the kernel sends the request interrupt
        # and waits until the user closes the device; the fake signals and
        # refuses instead of blocking.
        if pdev.vfio_open:
            pdev.release_requests += 1
            if pdev.request_release is not None:
                pdev.request_release()
            raise errno_error(errno.EBUSY, f"{pdev.bdf} is open by a VFIO user")
        assert pdev.group is not None and pdev.group.vfio_group is not None
        vgroup = pdev.group.vfio_group
        vgroup.devices.remove(pdev)
        assert pdev.vfio_index is not None
        self._vfio_indexes.discard(pdev.vfio_index)
        pdev.vfio_index = None
        pdev.vfio_noiommu = False
        self._vfio_remove_group(pdev)

    def _vfio_remove_group(self, pdev: PciDevice) -> None:
        """vfio_device_remove_group."""
        group = pdev.group
        assert group is not None and group.vfio_group is not None
        vgroup = group.vfio_group
        vgroup.drivers -= 1
        if vgroup.drivers:
            if vgroup.noiommu:
                self._noiommu_remove_device(pdev)
            return
        # The last vfio device left: the group node goes away and a
        # container attachment is dropped.
        if vgroup.container is not None:
            vgroup.container.detach_group(vgroup)
        vgroup.iommu_group = None
        group.vfio_group = None
        if vgroup.noiommu:
            self._noiommu_remove_device(pdev)

    def _noiommu_remove_device(self, pdev: PciDevice) -> None:
        # iommu_group_remove_device for no-IOMMU groups
        group = pdev.group
        assert group is not None
        group.devices.remove(pdev)
        pdev.group = None
        if not group.devices:
            del self.groups[group.id]

    # -- device nodes -----------------------------------------------------------------------
    def device_nodes(self) -> list[str]:
        """Every device node that currently exists."""
        nodes: list[str] = []
        if self.modules["vfio"]:
            nodes.append("/dev/vfio/vfio")
            nodes += [vg.dev_path for vg in self.vfio_groups()]
            nodes += [f"/dev/vfio/devices/{p.vfio_cdev_name}" for p in self.devices.values()
                      if p.vfio_cdev_name is not None]
        if self._iommufd_loaded:
            nodes.append("/dev/iommu")
        return sorted(nodes)

    def _dev_dirs(self) -> set[str]:
        dirs = {"/dev"}
        if self.modules["vfio"]:
            dirs.add("/dev/vfio")
            if any(p.vfio_cdev_name for p in self.devices.values()):
                dirs.add("/dev/vfio/devices")
        return dirs

    def path_exists(self, path: str) -> bool:
        """Whether a device node or sysfs path exists."""
        path = os.path.normpath(path) if path else path
        with self.lock:
            if path.startswith("/sys"):
                return self.sysfs.exists(path)
            return path in self.device_nodes() or path in self._dev_dirs()

    def open_path(self, backend: FakeBackend, path: str, flags: int) -> FakeFile:
        """open(2) of a device node: the file that serves it."""
        with self.lock:
            return self._open_path(backend, os.path.normpath(path), flags)

    def _open_path(self, backend: FakeBackend, path: str, flags: int) -> FakeFile:
        if path in self._dev_dirs():
            raise errno_error(errno.EISDIR, path)
        if path not in self.device_nodes():
            if path.startswith("/sys") and self.sysfs.exists(path):
                raise errno_error(errno.EACCES, f"{path}: use the sysfs_* calls for sysfs")
            raise errno_error(errno.ENOENT, path)
        if path == "/dev/vfio/vfio":
            from ..vfio import ContainerFile

            return ContainerFile(backend)
        if path == "/dev/iommu":
            iommufd = importlib.import_module("..iommufd", __package__)
            file: FakeFile = iommufd.IommufdFile(backend)
            return file
        if path.startswith("/dev/vfio/devices/"):
            pdev = self.vfio_device_by_cdev(path.rsplit("/", 1)[1])
            assert pdev is not None
            vfio_pci = importlib.import_module("..vfio_pci", __package__)
            dfile: FakeFile = vfio_pci.open_device_file(backend, pdev, cdev=True)
            return dfile
        vgroup = self.vfio_group_by_name(path.rsplit("/", 1)[1])
        assert vgroup is not None
        from ..vfio import GroupFile

        return GroupFile.open(backend, vgroup)

    # -- state ----------------------------------------------------------------------------
    def to_topology(self) -> dict[str, Any]:
        """The topology of the system as it is now (current drivers
        included): ``System(s.to_topology())`` builds an equivalent machine."""
        devices = []
        for pdev in self.devices.values():
            spec = {k: v for k, v in pdev.spec.items()}
            spec["vendor"] = pdev.vendor
            spec["device"] = pdev.device
            spec["class"] = pdev.class_code
            spec["revision"] = pdev.revision
            spec["subsystem_vendor"] = pdev.subsystem_vendor
            spec["subsystem_device"] = pdev.subsystem_device
            spec["driver"] = pdev.driver
            spec["numa_node"] = pdev.numa_node
            devices.append(spec)
        groups = [{"id": g.id, "devices": [d.bdf for d in g.devices]}
                  for g in sorted(self.groups.values(), key=lambda g: g.id)
                  if g.name != "vfio-noiommu"]
        topo: dict[str, Any] = {
            "name": self.topology_name,
            "memlock_limit": self.memlock_limit,
            "numa_nodes": self.numa_nodes,
            "noiommu": self.noiommu,
            "modules": dict(self.modules),
            "type1": {
                "dma_entry_limit": self.type1_params["dma_entry_limit"],
                "allow_unsafe_interrupts": self.type1_params["allow_unsafe_interrupts"],
            },
            "iommu": self.iommu.to_topology() if self.iommu is not None else None,
            "kernel": dict(self.kernel),
            "devices": devices,
            "groups": groups,
            "host": copy.deepcopy(self.host),
        }
        if self._description is not None:
            topo["description"] = self._description
        return _topology.load(topo)

    def iter_devices(self) -> Iterator[PciDevice]:
        """Every PCI device, in topology order."""
        return iter(self.devices.values())
