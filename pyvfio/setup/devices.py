"""PCI devices and IOMMU groups as sysfs describes them.

Records of every PCI device (IDs, class, driver, BARs, SR-IOV links, the
vfio cdev) and every IOMMU group (members, reserved regions, type), read
through a :class:`~pyvfio.backend.base.Backend`::

    from pyvfio.setup import devices

    for dev in devices.pci_devices():
        print(dev.bdf, dev.id, dev.class_name, dev.driver, dev.iommu_group)
"""

from __future__ import annotations

import errno as _errno
import os
from dataclasses import dataclass
from typing import Any

from ..backend import Backend
from ..core.sysfs import (
    _BDF_COMPONENT,
    IOMMU_GROUPS,
    PCI_DEVICES,
    _backend,
    _int,
    _listdir,
    _read,
    class_name,
    normalize_bdf,
)
from ..errors import InvalidArgumentError, VfioError

__all__ = [
    "Bar",
    "PciDeviceInfo",
    "pci_device",
    "pci_devices",
    "find_devices",
    "ReservedRegion",
    "IommuGroupInfo",
    "iommu_group",
    "iommu_groups",
]
# struct resource flags (include/linux/ioport.h) as ``resource`` prints them
_IORESOURCE_IO = 0x00000100
_IORESOURCE_MEM = 0x00000200
_IORESOURCE_PREFETCH = 0x00002000
_IORESOURCE_MEM_64 = 0x00100000


# -- devices ------------------------------------------------------------------------
@dataclass(frozen=True)
class Bar:
    """One implemented BAR of a PCI device (from sysfs ``resource``)."""

    index: int  #: BAR number 0-5
    start: int  #: host bus address
    size: int  #: bytes
    kind: str  #: ``"mem32"``, ``"mem64"`` or ``"io"``
    prefetchable: bool  #: a prefetchable memory BAR

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {"index": self.index, "start": self.start, "size": self.size,
                "type": self.kind, "prefetchable": self.prefetchable}


def _parse_resource(text: str | None) -> list[Bar]:
    bars: list[Bar] = []
    if not text:
        return bars
    lines = text.splitlines()
    index = 0
    while index < min(6, len(lines)):
        parts = lines[index].split()
        if len(parts) != 3:
            index += 1
            continue
        start, end, flags = (int(p, 16) for p in parts)
        if flags and end > start:
            kind = "io" if flags & _IORESOURCE_IO else (
                "mem64" if flags & _IORESOURCE_MEM_64 else "mem32")
            bars.append(Bar(index, start, end - start + 1, kind,
                            bool(flags & _IORESOURCE_PREFETCH) and kind != "io"))
            if kind == "mem64":
                index += 1  # the upper half of a 64-bit BAR is the next slot
        index += 1
    return bars


@dataclass(frozen=True)
class PciDeviceInfo:
    """What sysfs says about one PCI function (a snapshot)."""

    bdf: str  #: the PCI address, ``0000:00:04.0``
    vendor: int  #: PCI vendor ID
    device: int  #: PCI device ID
    subsystem_vendor: int  #: subsystem vendor ID
    subsystem_device: int  #: subsystem device ID
    revision: int  #: revision ID
    class_code: int  #: the 24-bit class code
    driver: str | None  #: the bound driver's name, or None
    driver_override: str | None  #: the driver_override set on it, or None
    numa_node: int  #: -1 when unknown
    iommu_group: int | None  #: its IOMMU group number, or None without an IOMMU
    reset_methods: tuple[str, ...]  #: enabled methods, best first; empty: no reset
    bars: tuple[Bar, ...]  #: its BARs that have a size (from ``resource``)
    parent: str | None  #: BDF of the bridge above, or None on a root bus
    secondary_bus: int | None  #: the bus behind a bridge
    physfn: str | None  #: for an SR-IOV VF: its PF
    virtfns: tuple[str, ...]  #: for an SR-IOV PF: its enabled VFs
    sriov_totalvfs: int | None  #: for an SR-IOV PF: how many VFs it supports
    sriov_numvfs: int | None  #: for an SR-IOV PF: how many VFs are enabled
    vfio_dev: str | None  #: ``vfioN`` while bound to a vfio driver with cdev support

    @property
    def id(self) -> str:
        """``"vvvv:dddd"``."""
        return f"{self.vendor:04x}:{self.device:04x}"

    @property
    def class_name(self) -> str:
        """e.g. ``"Ethernet controller"``."""
        return class_name(self.class_code)

    @property
    def description(self) -> str:
        """e.g. ``"Ethernet controller 8086:10d3"``."""
        return f"{self.class_name} {self.id}"

    @property
    def is_bridge(self) -> bool:
        """A PCI-to-PCI bridge (class 0x0604): vfio-pci does not drive bridges."""
        return (self.class_code >> 8) == 0x0604

    @property
    def is_vf(self) -> bool:
        """An SR-IOV virtual function."""
        return self.physfn is not None

    @property
    def cdev_path(self) -> str | None:
        """``/dev/vfio/devices/vfioN`` while bound to vfio-pci with cdev support."""
        return f"/dev/vfio/devices/{self.vfio_dev}" if self.vfio_dev else None

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form (ids as ``0x`` strings like sysfs shows them)."""
        return {
            "bdf": self.bdf, "vendor": f"0x{self.vendor:04x}", "device": f"0x{self.device:04x}",
            "subsystem_vendor": f"0x{self.subsystem_vendor:04x}",
            "subsystem_device": f"0x{self.subsystem_device:04x}",
            "revision": f"0x{self.revision:02x}", "class": f"0x{self.class_code:06x}",
            "class_name": self.class_name, "driver": self.driver,
            "driver_override": self.driver_override, "numa_node": self.numa_node,
            "iommu_group": self.iommu_group, "reset_methods": list(self.reset_methods),
            "bars": [bar.as_dict() for bar in self.bars], "parent": self.parent,
            "secondary_bus": self.secondary_bus, "physfn": self.physfn,
            "virtfns": list(self.virtfns), "sriov_totalvfs": self.sriov_totalvfs,
            "sriov_numvfs": self.sriov_numvfs, "vfio_dev": self.vfio_dev,
        }


def _link_target_bdfs(b: Backend, path: str) -> list[str]:
    """The PCI addresses along the canonical path a sysfs link points to."""
    try:
        target = b.sysfs_readlink(path)
    except OSError:
        return []
    return [p for p in target.split("/") if _BDF_COMPONENT.match(p)]


def pci_device(bdf: str, backend: Backend | None = None) -> PciDeviceInfo:
    """A snapshot of one PCI device; VfioError (ENOENT) if there is none."""
    b = _backend(backend)
    bdf = normalize_bdf(bdf)
    base = f"{PCI_DEVICES}/{bdf}"
    vendor = _int(_read(b, f"{base}/vendor"), 16)
    if vendor is None:
        raise VfioError(_errno.ENOENT, f"no PCI device {bdf}", target=f"device {bdf}")

    def num(name: str, default: int = 0, base_: int = 16) -> int:
        value = _int(_read(b, f"{base}/{name}"), base_)
        return default if value is None else value

    try:
        group: int | None = int(os.path.basename(b.sysfs_readlink(f"{base}/iommu_group")))
    except (OSError, ValueError):
        group = None
    override = _read(b, f"{base}/driver_override")
    if override in ("(null)", ""):
        override = None
    chain = _link_target_bdfs(b, base)
    parent = chain[-2] if len(chain) >= 2 and chain[-1] == bdf else None
    physfn = b.sysfs_basename_of_link(f"{base}/physfn") if b.exists(f"{base}/physfn") else None
    names = _listdir(b, base)
    virtfns = []
    for name in sorted((n for n in names if n.startswith("virtfn") and n[6:].isdigit()),
                       key=lambda n: int(n[6:])):
        target = b.sysfs_basename_of_link(f"{base}/{name}")
        if target:
            virtfns.append(target)
    vfio_dev = next((n for n in _listdir(b, f"{base}/vfio-dev")
                     if n.startswith(("vfio", "noiommu-vfio"))), None) if "vfio-dev" in names else None
    class_code = num("class")
    return PciDeviceInfo(
        bdf=bdf, vendor=vendor, device=num("device"),
        subsystem_vendor=num("subsystem_vendor"), subsystem_device=num("subsystem_device"),
        revision=num("revision"), class_code=class_code,
        driver=b.sysfs_basename_of_link(f"{base}/driver"), driver_override=override,
        numa_node=num("numa_node", -1, 10), iommu_group=group,
        reset_methods=tuple((_read(b, f"{base}/reset_method") or "").split()),
        bars=tuple(_parse_resource(_read(b, f"{base}/resource"))), parent=parent,
        secondary_bus=_int(_read(b, f"{base}/secondary_bus_number"), 10)
        if (class_code >> 8) == 0x0604 else None,
        physfn=physfn, virtfns=tuple(virtfns),
        sriov_totalvfs=_int(_read(b, f"{base}/sriov_totalvfs"), 10)
        if "sriov_totalvfs" in names else None,
        sriov_numvfs=_int(_read(b, f"{base}/sriov_numvfs"), 10)
        if "sriov_numvfs" in names else None,
        vfio_dev=vfio_dev,
    )


def pci_devices(backend: Backend | None = None) -> list[PciDeviceInfo]:
    """Every PCI device of the machine, sorted by address (empty without PCI)."""
    b = _backend(backend)
    out = []
    for bdf in _listdir(b, PCI_DEVICES):
        try:
            out.append(pci_device(bdf, b))
        except (VfioError, InvalidArgumentError):
            continue  # removed while we looked, or not a PCI address
    return out


def find_devices(vendor: int | None = None, device: int | None = None, *,
                 class_code: int | None = None,
                 backend: Backend | None = None) -> list[str]:
    """PCI addresses of the devices with these IDs (and/or 24-bit class
    code), sorted; a criterion left None matches everything."""
    return [d.bdf for d in pci_devices(backend)
            if (vendor is None or d.vendor == vendor)
            and (device is None or d.device == device)
            and (class_code is None or d.class_code == class_code)]


# -- IOMMU groups -------------------------------------------------------------------
@dataclass(frozen=True)
class ReservedRegion:
    """An IOVA range the group's IOMMU will not map for DMA (``[start, last]``)."""

    start: int  #: first IOVA of the region
    last: int  #: last IOVA (inclusive)
    type: str  #: ``direct``, ``direct-relaxable``, ``reserved`` or ``msi``

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {"start": self.start, "last": self.last, "type": self.type}


@dataclass(frozen=True)
class IommuGroupInfo:
    """What sysfs says about one IOMMU group (a snapshot)."""

    id: int  #: the group number
    devices: tuple[str, ...]  #: member BDFs (PCI and others), sorted
    #: IOVA ranges the group's devices may not use for DMA
    reserved_regions: tuple[ReservedRegion, ...]
    type: str | None  #: default domain type: ``DMA``, ``DMA-FQ``, ``identity``, ...
    name: str | None  #: ``vfio-noiommu`` for an unsafe no-IOMMU group

    @property
    def noiommu(self) -> bool:
        """A fake group vfio creates in unsafe no-IOMMU mode: no isolation."""
        return self.name == "vfio-noiommu"

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {"id": self.id, "devices": list(self.devices),
                "reserved_regions": [r.as_dict() for r in self.reserved_regions],
                "type": self.type, "name": self.name}


def _parse_reserved(text: str | None) -> list[ReservedRegion]:
    out = []
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 3:
            try:
                out.append(ReservedRegion(int(parts[0], 16), int(parts[1], 16), parts[2]))
            except ValueError:
                continue
    return out


def iommu_group(group: int, backend: Backend | None = None) -> IommuGroupInfo:
    """A snapshot of IOMMU group ``group``; VfioError (ENOENT) if there is none."""
    b = _backend(backend)
    base = f"{IOMMU_GROUPS}/{group}"
    try:
        devices = b.sysfs_listdir(f"{base}/devices")
    except OSError:
        raise VfioError(_errno.ENOENT, f"no IOMMU group {group}", target=f"group {group}") from None
    return IommuGroupInfo(
        id=group, devices=tuple(devices),
        reserved_regions=tuple(_parse_reserved(_read(b, f"{base}/reserved_regions"))),
        type=_read(b, f"{base}/type"), name=_read(b, f"{base}/name"),
    )


def iommu_groups(backend: Backend | None = None) -> list[IommuGroupInfo]:
    """Every IOMMU group, by number (empty when no IOMMU is active)."""
    b = _backend(backend)
    ids = sorted(int(n) for n in _listdir(b, IOMMU_GROUPS) if n.isdigit())
    out = []
    for gid in ids:
        try:
            out.append(iommu_group(gid, b))
        except VfioError:
            continue
    return out

