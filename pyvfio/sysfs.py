"""PCI devices and IOMMU groups as sysfs describes them.

Everything here reads through a :class:`~pyvfio.backend.base.Backend`, so it
works on the real /sys and on a fake system alike.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from .backend import Backend, default_backend
from .errors import InvalidArgumentError, VfioError

__all__ = [
    "PCI_DEVICES",
    "IOMMU_GROUPS",
    "VIABLE_DRIVERS",
    "normalize_bdf",
    "device_group",
    "device_driver",
    "group_devices",
    "device_cdev_path",
    "group_dev_path",
    "Blocker",
    "viability_blockers",
]

PCI_DEVICES = "/sys/bus/pci/devices"
IOMMU_GROUPS = "/sys/kernel/iommu_groups"

#: Drivers that leave a group viable: vfio-pci owns the device for the user;
#: pci-stub and pcieport do no DMA (``driver_managed_dma``).
VIABLE_DRIVERS = frozenset({"vfio-pci", "pci-stub", "pcieport"})

_BDF = re.compile(r"^(?:([0-9a-fA-F]{4}):)?([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])$")


def normalize_bdf(bdf: str) -> str:
    """``"00:04.0"`` -> ``"0000:00:04.0"``; InvalidArgumentError if malformed."""
    m = _BDF.match(bdf.strip()) if isinstance(bdf, str) else None
    if not m:
        raise InvalidArgumentError(f"{bdf!r} is not a PCI address (DDDD:BB:DD.F)")
    domain, bus, dev, fn = m.groups()
    return f"{(domain or '0000').lower()}:{bus.lower()}:{dev.lower()}.{fn}"


def _backend(backend: Backend | None) -> Backend:
    return backend if backend is not None else default_backend()


def device_group(bdf: str, backend: Backend | None = None) -> int:
    """The IOMMU group number of a PCI device."""
    b = _backend(backend)
    bdf = normalize_bdf(bdf)
    try:
        link = b.sysfs_readlink(f"{PCI_DEVICES}/{bdf}/iommu_group")
    except FileNotFoundError:
        if not b.exists(f"{PCI_DEVICES}/{bdf}"):
            raise VfioError(2, f"no PCI device {bdf}", target=f"device {bdf}") from None
        raise VfioError(
            2, f"device {bdf} is in no IOMMU group (is the IOMMU enabled?)",
            target=f"device {bdf}",
        ) from None
    return int(os.path.basename(link))


def device_driver(bdf: str, backend: Backend | None = None) -> str | None:
    """Name of the driver bound to a PCI device, or ``None``."""
    return _backend(backend).sysfs_basename_of_link(f"{PCI_DEVICES}/{normalize_bdf(bdf)}/driver")


def group_devices(group: int, backend: Backend | None = None) -> list[str]:
    """BDFs of the devices in IOMMU group ``group``."""
    return _backend(backend).sysfs_listdir(f"{IOMMU_GROUPS}/{group}/devices")


def group_dev_path(group: int, backend: Backend | None = None) -> str:
    """The group's character device: ``/dev/vfio/N`` or ``/dev/vfio/noiommu-N``."""
    b = _backend(backend)
    path = f"/dev/vfio/{group}"
    noiommu = f"/dev/vfio/noiommu-{group}"
    if not b.exists(path) and b.exists(noiommu):
        return noiommu
    return path


def device_cdev_path(bdf: str, backend: Backend | None = None) -> str:
    """``/dev/vfio/devices/vfioN`` of a device bound to a vfio driver."""
    b = _backend(backend)
    bdf = normalize_bdf(bdf)
    try:
        names = [n for n in b.sysfs_listdir(f"{PCI_DEVICES}/{bdf}/vfio-dev") if n.startswith("vfio")]
    except FileNotFoundError:
        names = []
    if not names:
        driver = device_driver(bdf, b)
        raise VfioError(
            2,
            f"device {bdf} has no vfio character device (driver: {driver or 'none'}; "
            "bind it to vfio-pci on a kernel with CONFIG_VFIO_DEVICE_CDEV)",
            target=f"device {bdf}",
        )
    return f"/dev/vfio/devices/{names[0]}"


@dataclass(frozen=True)
class Blocker:
    """A device that keeps its IOMMU group from being viable."""

    bdf: str
    driver: str

    @property
    def reason(self) -> str:
        return (
            f"{self.bdf} is bound to the host driver {self.driver!r}; "
            "unbind it or bind it to vfio-pci"
        )


def viability_blockers(group: int, backend: Backend | None = None) -> list[Blocker]:
    """Devices of ``group`` bound to a driver other than vfio-pci, pci-stub
    or pcieport: the kernel refuses user ownership of the group while any
    exist (iommu_group_claim_dma_owner)."""
    b = _backend(backend)
    blockers = []
    for bdf in group_devices(group, b):
        driver = device_driver(bdf, b)
        if driver is not None and driver not in VIABLE_DRIVERS:
            blockers.append(Blocker(bdf, driver))
    return blockers
