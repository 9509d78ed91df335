"""PCI drivers and how the PCI bus matches them to devices
(drivers/pci/pci-driver.c): ID tables (:class:`PciId`), the drivers the
fake registers (:class:`Driver`, each with its ``probe``/``remove``
handlers as struct pci_driver has them) and pci_match_device.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from .vfio_group import vfio_pci_probe, vfio_pci_remove

if TYPE_CHECKING:
    from .pci_device import PciDevice
    from .system import System

__all__ = ["PCI_ANY_ID", "PciId", "Driver", "pci_match_device", "register_drivers"]

#: Wildcard of a :class:`PciId` field: matches any value.
PCI_ANY_ID = 0xFFFFFFFF

#: A driver's probe(): 0, or a positive errno when it refuses the device.
ProbeFn = Callable[["PciDevice"], int]
#: A driver's remove(); raises OSError when the device cannot be let go.
RemoveFn = Callable[["PciDevice"], None]


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
    #: The driver's probe() (struct pci_driver's ``probe``); None accepts
    #: every device it is matched with.
    probe: ProbeFn | None = field(default=None, repr=False, compare=False)
    #: The driver's remove(); None lets go of the device at once.
    remove: RemoveFn | None = field(default=None, repr=False, compare=False)

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


def pci_match_device(drv: Driver, pdev: PciDevice) -> bool:
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


def pcie_portdrv_probe(pdev: PciDevice) -> int:
    """pcie_portdrv_probe: ENODEV unless the function is a PCIe port."""
    return 0 if pdev.default_driver == "pcieport" else errno.ENODEV


def register_drivers(system: System, topo: dict[str, Any]) -> None:
    """pci_register_driver for every driver of the machine ``topo``
    describes, into ``system.drivers``.

    Registration order is the order drivers_probe tries them in: the
    kernel drivers of the topology first, then the drivers that only
    bind on request."""
    drivers = system.drivers
    drivers["pcieport"] = Driver(
        "pcieport", managed_dma=True, kind="pcieport", module=None,
        ids=[PciId(class_=0x060400, class_mask=0xFFFFFF)], probe=pcie_portdrv_probe,
    )
    names: list[str] = []
    for spec in topo["devices"]:
        for key in ("default_driver", "driver"):
            name = spec.get(key)
            if name and name not in ("vfio-pci", "pci-stub", "pcieport") and name not in names:
                names.append(name)
    for name in names:
        ids: list[PciId] = []
        for pdev in system.devices.values():
            if pdev.default_driver == name:
                pid = PciId(pdev.vendor, pdev.device)
                if not any(p.vendor == pid.vendor and p.device == pid.device for p in ids):
                    ids.append(pid)
        drivers[name] = Driver(name, managed_dma=False, kind="kernel",
                               module=name.replace("-", "_"), ids=ids)
    if system.modules["pci_stub"]:
        drivers["pci-stub"] = Driver("pci-stub", managed_dma=True, kind="pci-stub",
                                     module="pci_stub")
    if system.modules["vfio_pci"]:
        drivers["vfio-pci"] = Driver(
            "vfio-pci", managed_dma=True, kind="vfio-pci", module="vfio_pci",
            ids=[PciId(override_only=True)], probe=vfio_pci_probe, remove=vfio_pci_remove,
        )
