"""PCI devices, IOMMU groups and VFIO support as sysfs describes them.

Everything here reads through a :class:`~pyvfio.backend.base.Backend`, so it
works on the real /sys and on a fake system alike::

    from pyvfio import sysfs

    for dev in sysfs.pci_devices():
        print(dev.bdf, dev.id, dev.class_name, dev.driver, dev.iommu_group)
    print(sysfs.vfio_support())                 # IOMMU on? vfio-pci? cdev?
    print(sysfs.explain_group(11).message())    # why a group is (not) viable

Where the information comes from (Linux 7.3):

* ``/sys/bus/pci/devices/<bdf>/``: ``vendor``, ``device``, ``class``,
  ``subsystem_*``, ``revision``, ``numa_node``, ``driver`` (link),
  ``driver_override``, ``iommu_group`` (link), ``reset_method``,
  ``resource`` (BARs), ``physfn``/``virtfnN`` (SR-IOV links),
  ``sriov_totalvfs``/``sriov_numvfs``, ``vfio-dev/vfioN`` (the vfio cdev);
* ``/sys/kernel/iommu_groups/<n>/``: ``devices/``, ``reserved_regions``,
  ``type``, ``name`` (``vfio-noiommu`` for unsafe no-IOMMU groups);
* ``/sys/class/iommu`` (the IOMMUs), ``/sys/module/<name>`` (modules that are
  loaded, or built in with parameters), ``/sys/bus/pci/drivers/vfio-pci``,
  ``/sys/class/vfio`` (groups) and ``/sys/class/vfio-dev`` (vfio devices,
  Linux 6.1+; a device there has a ``dev`` number only when the kernel has
  ``CONFIG_VFIO_DEVICE_CDEV``, which also reserves the ``vfio-dev`` region
  in ``/proc/devices``; ``/dev/vfio/devices`` only appears once a device is
  bound to a vfio driver), ``/dev/vfio/vfio``, ``/dev/iommu``;
* the kernel build (:func:`kernel_build`): ``/proc/sys/kernel/osrelease``,
  the configuration in ``/proc/config.gz`` (``CONFIG_IKCONFIG_PROC``) or
  ``/boot/config-<release>``, and ``/lib/modules/<release>/modules.builtin``
  and ``modules.dep`` (what is built in, what can be loaded).
"""

from __future__ import annotations

import errno as _errno
import os
import re
from dataclasses import dataclass, field
from typing import Any

from .backend import Backend, default_backend
from .errors import InvalidArgumentError, NotViableError, VfioError

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
    "driver_keeps_group_viable",
    "class_name",
    "Bar",
    "PciDeviceInfo",
    "pci_device",
    "pci_devices",
    "find_devices",
    "ReservedRegion",
    "IommuGroupInfo",
    "iommu_group",
    "iommu_groups",
    "VfioSupport",
    "vfio_support",
    "KernelBuild",
    "kernel_build",
    "MODULE_OPTIONS",
    "module_present",
    "GroupMember",
    "GroupViability",
    "explain_group",
    "explain_device",
]

PCI_DEVICES = "/sys/bus/pci/devices"
IOMMU_GROUPS = "/sys/kernel/iommu_groups"

#: Drivers that leave a group viable: vfio-pci owns the device for the user;
#: pci-stub and pcieport do no DMA (``driver_managed_dma``).
VIABLE_DRIVERS = frozenset({"vfio-pci", "pci-stub", "pcieport"})

_BDF = re.compile(r"^(?:([0-9a-fA-F]{4}):)?([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])$")
_BDF_COMPONENT = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")

# struct resource flags (include/linux/ioport.h) as ``resource`` prints them
_IORESOURCE_IO = 0x00000100
_IORESOURCE_MEM = 0x00000200
_IORESOURCE_PREFETCH = 0x00002000
_IORESOURCE_MEM_64 = 0x00100000


def normalize_bdf(bdf: str) -> str:
    """``"00:04.0"`` -> ``"0000:00:04.0"``; InvalidArgumentError if malformed."""
    m = _BDF.match(bdf.strip()) if isinstance(bdf, str) else None
    if not m:
        raise InvalidArgumentError(f"{bdf!r} is not a PCI address (DDDD:BB:DD.F)")
    domain, bus, dev, fn = m.groups()
    return f"{(domain or '0000').lower()}:{bus.lower()}:{dev.lower()}.{fn}"


def _backend(backend: Backend | None) -> Backend:
    return backend if backend is not None else default_backend()


def try_read(b: Backend, path: str) -> str | None:
    """The attribute at ``path``, or None when it cannot be read."""
    try:
        return b.sysfs_read(path)
    except OSError:
        return None


def try_listdir(b: Backend, path: str) -> list[str]:
    """The names in the directory ``path``, or [] when it cannot be listed."""
    try:
        return b.sysfs_listdir(path)
    except OSError:
        return []


_read = try_read
_listdir = try_listdir


def _int(text: str | None, base: int = 0) -> int | None:
    if text is None:
        return None
    try:
        return int(text.strip(), base)
    except ValueError:
        return None


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
        names = [n for n in b.sysfs_listdir(f"{PCI_DEVICES}/{bdf}/vfio-dev")
                 if n.startswith(("vfio", "noiommu-vfio"))]
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


def driver_keeps_group_viable(driver: str | None) -> bool:
    """Whether a device bound to ``driver`` leaves its IOMMU group viable.

    The kernel's rule (``iommu_device_use_default_domain``, called when a
    driver binds unless the driver sets ``driver_managed_dma``): a group can
    be owned by user space only while none of its devices is bound to a
    DMA-capable kernel driver.  Driver-less devices, vfio-pci and its
    variant drivers (``*_vfio_pci``, e.g. ``mlx5_vfio_pci``), pci-stub and
    pcieport keep the group viable.
    """
    if driver is None or driver in VIABLE_DRIVERS:
        return True
    return driver.replace("-", "_").endswith("vfio_pci")


# -- PCI class names --------------------------------------------------------------
_CLASSES: dict[int, str] = {
    0x00: "Unclassified device", 0x01: "Mass storage controller", 0x02: "Network controller",
    0x03: "Display controller", 0x04: "Multimedia controller", 0x05: "Memory controller",
    0x06: "Bridge", 0x07: "Communication controller", 0x08: "System peripheral",
    0x09: "Input device controller", 0x0A: "Docking station", 0x0B: "Processor",
    0x0C: "Serial bus controller", 0x0D: "Wireless controller",
    0x0E: "Intelligent controller", 0x0F: "Satellite communications controller",
    0x10: "Encryption controller", 0x11: "Signal processing controller",
    0x12: "Processing accelerators", 0x13: "Non-Essential Instrumentation",
    0xFF: "Unassigned class",
}
_SUBCLASSES: dict[int, str] = {
    0x0000: "Non-VGA unclassified device", 0x0001: "VGA compatible unclassified device",
    0x0100: "SCSI storage controller", 0x0101: "IDE interface", 0x0104: "RAID bus controller",
    0x0105: "ATA controller", 0x0106: "SATA controller", 0x0107: "Serial Attached SCSI controller",
    0x0108: "Non-Volatile memory controller",
    0x0200: "Ethernet controller", 0x0207: "Infiniband controller", 0x0280: "Network controller",
    0x0300: "VGA compatible controller", 0x0302: "3D controller", 0x0380: "Display controller",
    0x0401: "Multimedia audio controller", 0x0403: "Audio device",
    0x0500: "RAM memory", 0x0502: "CXL",
    0x0600: "Host bridge", 0x0601: "ISA bridge", 0x0604: "PCI bridge", 0x0680: "Bridge",
    0x0700: "Serial controller",
    0x0806: "IOMMU", 0x0880: "System peripheral",
    0x0C03: "USB controller", 0x0C04: "Fibre Channel", 0x0C05: "SMBus",
    0x1200: "Processing accelerators",
}


def class_name(class_code: int) -> str:
    """Human name of a 24-bit PCI class code, as lspci words it
    (``0x020000`` -> ``"Ethernet controller"``)."""
    sub = (class_code >> 8) & 0xFFFF
    if sub in _SUBCLASSES:
        return _SUBCLASSES[sub]
    return _CLASSES.get((class_code >> 16) & 0xFF, f"Class {sub:04x}")


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


# -- the kernel build -----------------------------------------------------------------
#: The kernel option that builds each module VFIO needs.
MODULE_OPTIONS = {
    "vfio": "CONFIG_VFIO",
    "vfio_pci": "CONFIG_VFIO_PCI",
    "vfio_pci_core": "CONFIG_VFIO_PCI_CORE",
    "vfio_iommu_type1": "CONFIG_VFIO_IOMMU_TYPE1",
    "iommufd": "CONFIG_IOMMUFD",
    "pci_stub": "CONFIG_PCI_STUB",
}

#: How :meth:`KernelBuild.module` answers.
BUILTIN, MODULE, NOT_INSTALLED, ABSENT = "builtin", "module", "not-installed", "absent"

_CONFIG_LINE = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET_LINE = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")
_CONFIG_GZ_LIMIT = 16 << 20


def _module_name(path: str) -> str:
    """``kernel/drivers/vfio/pci/vfio-pci.ko.zst`` -> ``vfio_pci``."""
    name = os.path.basename(path.strip())
    name = name.split(".ko", 1)[0]
    return name.replace("-", "_")


@dataclass(frozen=True)
class KernelBuild:
    """How the running kernel was built, as far as the machine says.

    ``config`` holds the set options (``CONFIG_X`` -> ``"y"``, ``"m"`` or the
    value, quotes removed); None when no configuration could be read.  The
    module lists are None when ``/lib/modules/<release>`` has no readable
    ``modules.builtin`` / ``modules.dep``.
    """

    release: str | None  #: ``uname -r``
    #: the kernel config as ``CONFIG_X: y|m|n``, or None if unreadable
    config: dict[str, str] | None
    config_source: str | None  #: ``/proc/config.gz`` or ``/boot/config-<release>``
    builtin: frozenset[str] | None  #: modules built in (modules.builtin), ``-`` as ``_``
    loadable: frozenset[str] | None  #: modules installed as files (modules.dep)
    modules_dir: str | None  #: ``/lib/modules/<release>`` when it exists

    def option(self, name: str) -> str | None:
        """``"y"``, ``"m"``, the value, ``"n"`` (not set), or None (no config)."""
        if self.config is None:
            return None
        return self.config.get(name, "n")

    def module(self, name: str) -> str | None:
        """Whether module ``name`` (``vfio_pci``) is in this kernel:
        :data:`BUILTIN`, :data:`MODULE` (a file that modprobe loads),
        :data:`NOT_INSTALLED` (configured as a module, but its file is not
        under /lib/modules), :data:`ABSENT` (the kernel was built without
        it) or None (nothing says)."""
        name = name.replace("-", "_")
        if self.builtin is not None and name in self.builtin:
            return BUILTIN
        if self.loadable is not None and name in self.loadable:
            return MODULE
        option = MODULE_OPTIONS.get(name)
        value = self.option(option) if option is not None else None
        if value == "y":
            return BUILTIN
        if value == "m":
            if self.loadable is not None or self.modules_dir is None:
                return NOT_INSTALLED
            return MODULE
        if value == "n":
            return ABSENT
        if self.builtin is not None and self.loadable is not None:
            return ABSENT  # both lists readable and neither has it
        return None

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form (the options VFIO cares about, not the whole config)."""
        options = {o: self.option(o) for o in (*MODULE_OPTIONS.values(),
                                              "CONFIG_VFIO_DEVICE_CDEV", "CONFIG_VFIO_CONTAINER",
                                              "CONFIG_IOMMUFD_VFIO_CONTAINER",
                                              "CONFIG_VFIO_NOIOMMU", "CONFIG_PCI_IOV")}
        return {"release": self.release, "config_source": self.config_source,
                "options": options if self.config is not None else None,
                "modules_dir": self.modules_dir,
                "modules": {m: self.module(m) for m in MODULE_OPTIONS}}


def _parse_config(text: str) -> dict[str, str]:
    config: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        m = _CONFIG_LINE.match(line)
        if m:
            value = m.group(2).strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            config[m.group(1)] = value
        elif _UNSET_LINE.match(line):
            continue  # "# CONFIG_X is not set": absent means the same
    return config


def _read_binary(b: Backend, path: str, limit: int) -> bytes | None:
    """The bytes of a host file through the backend's open/pread (for
    ``/proc/config.gz``); None when it cannot be read."""
    try:
        fd = b.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    chunks: list[bytes] = []
    size = 0
    try:
        while size < limit:
            chunk = b.pread(fd, 1 << 16, size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError:
        return None
    finally:
        try:
            b.close(fd)
        except OSError:
            pass
    return b"".join(chunks)


def kernel_build(backend: Backend | None = None) -> KernelBuild:
    """What the running kernel was built with: its configuration (from
    ``/proc/config.gz``, else ``/boot/config-<release>``) and its module
    lists (``/lib/modules/<release>/modules.builtin`` and ``modules.dep``).
    Everything is read through ``backend``; a fake system serves the
    files its topology's ``kernel`` section describes."""
    b = _backend(backend)
    release = (_read(b, "/proc/sys/kernel/osrelease") or "").strip() or None
    config: dict[str, str] | None = None
    source: str | None = None
    raw = _read_binary(b, "/proc/config.gz", _CONFIG_GZ_LIMIT)
    if raw:
        import gzip
        import zlib

        try:
            config = _parse_config(gzip.decompress(raw).decode("ascii", errors="replace"))
            source = "/proc/config.gz"
        except (OSError, EOFError, zlib.error):
            config = None
    if config is None and release:
        text = _read(b, f"/boot/config-{release}")
        if text is not None:
            config, source = _parse_config(text), f"/boot/config-{release}"
    builtin: frozenset[str] | None = None
    loadable: frozenset[str] | None = None
    modules_dir: str | None = None
    if release:
        base = f"/lib/modules/{release}"
        try:
            b.sysfs_listdir(base)
            modules_dir = base
        except OSError:
            modules_dir = None
        text = _read(b, f"{base}/modules.builtin")
        if text is not None:
            builtin = frozenset(_module_name(line) for line in text.splitlines() if line.strip())
        text = _read(b, f"{base}/modules.dep")
        if text is not None:
            loadable = frozenset(_module_name(line.split(":", 1)[0])
                                 for line in text.splitlines() if line.strip())
        if modules_dir is None and (builtin is not None or loadable is not None):
            modules_dir = base
    return KernelBuild(release=release, config=config, config_source=source, builtin=builtin,
                       loadable=loadable, modules_dir=modules_dir)


# -- VFIO support ------------------------------------------------------------------
_SELFTEST_IOMMU = "iommufd_selftest"


@dataclass(frozen=True)
class VfioSupport:
    """What VFIO and iommufd support a machine has (from sysfs and /dev)."""

    iommus: tuple[str, ...]  #: /sys/class/iommu entries (hardware IOMMUs)
    group_count: int  #: IOMMU groups (including no-IOMMU ones)
    noiommu_mode: bool | None  #: vfio.enable_unsafe_noiommu_mode; None: unknown
    modules: dict[str, bool]  #: vfio, vfio_pci, vfio_iommu_type1, iommufd -> present
    vfio_pci_driver: bool  #: /sys/bus/pci/drivers/vfio-pci exists
    container_node: bool  #: /dev/vfio/vfio exists (the legacy container)
    iommufd_node: bool  #: /dev/iommu exists
    #: The kernel gives devices vfio cdevs (CONFIG_VFIO_DEVICE_CDEV): from a
    #: bound device's ``vfio-dev/vfioN/dev`` (or /dev/vfio/devices), else from
    #: the kernel configuration; None when nothing tells (no device bound to
    #: a vfio driver and no readable configuration).
    cdev_supported: bool | None
    cdev_dir: bool  #: /dev/vfio/devices exists (a device is bound to a vfio driver)
    #: The kernel build (configuration, module lists), when it was read.
    kernel: KernelBuild | None = field(default=None, compare=False)

    @property
    def iommu_enabled(self) -> bool:
        """A hardware IOMMU is active and has put devices into groups."""
        return bool(self.iommus) and self.group_count > 0

    @property
    def legacy_usable(self) -> bool:
        """The container/group path can be used (type1, or iommufd's compat
        container: ``/dev/vfio/vfio`` then belongs to iommufd)."""
        return self.container_node and (self.modules.get("vfio_iommu_type1", False)
                                        or self.modules.get("iommufd", False))

    @property
    def cdev_usable(self) -> bool:
        """The iommufd + vfio cdev path can be used (``cdev_supported`` None
        counts as usable: nothing says otherwise)."""
        return self.iommufd_node and self.cdev_supported is not False

    @property
    def usable(self) -> bool:
        """VFIO can assign a device on this machine (some path, some IOMMU)."""
        return (self.iommu_enabled or bool(self.noiommu_mode)) and self.vfio_pci_driver \
            and (self.legacy_usable or self.cdev_usable)

    @property
    def interfaces(self) -> str:
        """``"iommufd + cdev, legacy container"``, ``"none"``, ...; the cdev
        path is marked ``(unconfirmed)`` while :attr:`cdev_supported` is None."""
        cdev = "iommufd + cdev" + (" (unconfirmed)" if self.cdev_supported is None else "")
        names = [n for n, ok in ((cdev, self.cdev_usable),
                                 ("legacy container", self.legacy_usable)) if ok]
        return ", ".join(names) or "none"

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form, including the derived properties."""
        return {
            "iommus": list(self.iommus), "group_count": self.group_count,
            "iommu_enabled": self.iommu_enabled, "noiommu_mode": self.noiommu_mode,
            "modules": dict(self.modules), "vfio_pci_driver": self.vfio_pci_driver,
            "container_node": self.container_node, "iommufd_node": self.iommufd_node,
            "cdev_supported": self.cdev_supported, "cdev_dir": self.cdev_dir,
            "legacy_usable": self.legacy_usable, "cdev_usable": self.cdev_usable,
            "usable": self.usable, "interfaces": self.interfaces,
            "kernel": self.kernel.as_dict() if self.kernel is not None else None,
        }


def module_present(name: str, backend: Backend | None = None, *,
                   kernel: KernelBuild | None = None) -> bool:
    """Whether kernel module ``name`` is loaded or built in.

    Built-in modules only show in /sys/module when they have parameters, so
    the drivers and device nodes a module provides count too, and so does
    the kernel build (``kernel``, :func:`kernel_build`) saying it is built in.
    """
    b = _backend(backend)
    if b.exists(f"/sys/module/{name}"):
        return True
    if kernel is not None and kernel.module(name) == BUILTIN:
        return True
    evidence = {
        "vfio": ("/dev/vfio/vfio", "/sys/class/vfio"),
        "vfio_pci": ("/sys/bus/pci/drivers/vfio-pci",),
        "iommufd": ("/dev/iommu",),
        "pci_stub": ("/sys/bus/pci/drivers/pci-stub",),
    }.get(name, ())
    return any(b.exists(p) for p in evidence)


def vfio_support(backend: Backend | None = None) -> VfioSupport:
    """Detect what VFIO and iommufd support the machine has."""
    b = _backend(backend)
    iommus = tuple(n for n in _listdir(b, "/sys/class/iommu") if not n.startswith(_SELFTEST_IOMMU))
    groups = [n for n in _listdir(b, IOMMU_GROUPS) if n.isdigit()]
    noiommu_text = _read(b, "/sys/module/vfio/parameters/enable_unsafe_noiommu_mode")
    build = kernel_build(b)
    modules = {m: module_present(m, b, kernel=build)
               for m in ("vfio", "vfio_pci", "vfio_iommu_type1", "iommufd")}
    cdev_dir = b.exists("/dev/vfio/devices")
    return VfioSupport(
        iommus=iommus, group_count=len(groups),
        noiommu_mode=None if noiommu_text is None else noiommu_text.strip() in ("Y", "1"),
        modules=modules, vfio_pci_driver=b.exists("/sys/bus/pci/drivers/vfio-pci"),
        container_node=b.exists("/dev/vfio/vfio"), iommufd_node=b.exists("/dev/iommu"),
        cdev_supported=_cdev_supported(b, build, cdev_dir, modules["vfio"]), cdev_dir=cdev_dir,
        kernel=build,
    )


def _char_majors(b: Backend) -> dict[str, int] | None:
    """``/proc/devices``' character device regions: name -> major."""
    text = _read(b, "/proc/devices")
    if text is None:
        return None
    out: dict[str, int] = {}
    for line in text.split("Block devices:", 1)[0].splitlines()[1:]:
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit():
            out[parts[1]] = int(parts[0])
    return out


def _cdev_supported(b: Backend, build: KernelBuild, cdev_dir: bool,
                    vfio_loaded: bool) -> bool | None:
    """Whether vfio devices get character devices (CONFIG_VFIO_DEVICE_CDEV).

    Every vfio device is in the ``vfio-dev`` class (Linux 6.1+), below its
    PCI device as ``vfio-dev/vfioN``; only with the cdev option does it get
    a device number (a ``dev`` attribute) and a /dev/vfio/devices node, and
    the vfio module reserve the ``vfio-dev`` region of /proc/devices.
    """
    if cdev_dir:
        return True
    registered = False
    for bdf in _listdir(b, PCI_DEVICES):
        for name in _listdir(b, f"{PCI_DEVICES}/{bdf}/vfio-dev"):
            if name.startswith(("vfio", "noiommu-vfio")):
                registered = True
                if b.exists(f"{PCI_DEVICES}/{bdf}/vfio-dev/{name}/dev"):
                    return True
    if registered:
        return False  # vfio devices without device numbers: no cdevs
    majors = _char_majors(b)
    if majors is not None and "vfio-dev" in majors:
        return True  # vfio_cdev_init reserved the cdev numbers
    if majors is not None and vfio_loaded:
        return False  # vfio is loaded and reserved none
    option = build.option("CONFIG_VFIO_DEVICE_CDEV")
    if option is not None:
        return option == "y"
    if b.exists("/sys/class/vfio") and not b.exists("/sys/class/vfio-dev"):
        return False  # vfio older than 6.1: no vfio-dev class, no cdevs (6.6+)
    return None


# -- viability ---------------------------------------------------------------------
@dataclass(frozen=True)
class Blocker:
    """A device that keeps its IOMMU group from being viable."""

    bdf: str  #: the device that blocks the group
    driver: str  #: the host driver it is bound to
    #: What the device is (``"Ethernet controller 8086:100e"``), when known.
    description: str = field(default="", compare=False)

    @property
    def reason(self) -> str:
        """One sentence: what blocks and how to fix it."""
        what = f" ({self.description})" if self.description else ""
        return (
            f"{self.bdf}{what} is bound to the host driver {self.driver!r}; "
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
        if driver is not None and not driver_keeps_group_viable(driver):
            blockers.append(Blocker(bdf, driver, _describe(b, bdf)))
    return blockers


def _describe(b: Backend, bdf: str) -> str:
    base = f"{PCI_DEVICES}/{bdf}"
    cls = _int(_read(b, f"{base}/class"), 16)
    vendor = _int(_read(b, f"{base}/vendor"), 16)
    device = _int(_read(b, f"{base}/device"), 16)
    if cls is None or vendor is None or device is None:
        return ""
    return f"{class_name(cls)} {vendor:04x}:{device:04x}"


@dataclass(frozen=True)
class GroupMember:
    """One device of an IOMMU group, as :func:`explain_group` sees it."""

    bdf: str  #: the member's address
    driver: str | None  #: its driver, or None
    description: str  #: ``"Ethernet controller 8086:100e"`` ("" if not a PCI device)
    is_bridge: bool  #: a PCI bridge (keeps the group viable on pcieport or no driver)

    @property
    def blocks(self) -> bool:
        """Bound to a DMA-capable host driver: the group is not viable."""
        return not driver_keeps_group_viable(self.driver)

    @property
    def state(self) -> str:
        """Short words for tables: ``"blocks (e1000)"``, ``"vfio-pci"``, ..."""
        if self.blocks:
            return f"blocks (host driver {self.driver})"
        if self.driver is None:
            return "no driver"
        return self.driver

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {"bdf": self.bdf, "driver": self.driver, "description": self.description,
                "is_bridge": self.is_bridge, "blocks": self.blocks}


@dataclass(frozen=True)
class GroupViability:
    """Why an IOMMU group can or cannot be given to user space, and what a
    user who gets it can reach.

    The kernel's rule: user space may own a group only while every device in
    it is driver-less or bound to vfio-pci (or a vfio variant driver),
    pci-stub or pcieport.  All devices of a group share one I/O address
    space: whoever owns it programs DMA for all of them, so the other
    members (:attr:`at_risk`) are reachable by the user's DMA and must be
    trusted with it, or left without a driver.
    """

    group: int  #: the group number
    #: The device the question is about (None: the group as a whole).
    device: str | None
    members: tuple[GroupMember, ...]  #: every device of the group
    blockers: tuple[Blocker, ...]  #: members bound to DMA-capable host drivers
    #: Other members that share the group's I/O address space with ``device``
    #: (every member when asking about the group and it has several).
    at_risk: tuple[GroupMember, ...]
    noiommu: bool = False  #: an unsafe no-IOMMU group

    @property
    def viable(self) -> bool:
        """No member is bound to a DMA-capable host driver."""
        return not self.blockers

    def summary(self) -> str:
        """One line: ``"group 11 is not viable: 0000:05:02.0 ... is bound ..."``."""
        if self.viable:
            state = f"group {self.group} is viable"
            if self.at_risk:
                state += (f"; {len(self.at_risk)} other device(s) share its I/O address space: "
                          + ", ".join(m.bdf for m in self.at_risk))
            return state
        return f"group {self.group} is not viable: " + "; ".join(b.reason for b in self.blockers)

    def message(self) -> str:
        """A multi-line explanation for people (what blocks, how to fix,
        what else the user's DMA reaches)."""
        who = f"device {self.device} is in " if self.device else ""
        lines = [f"{who}IOMMU group {self.group} ({len(self.members)} device(s)): "
                 + ("viable" if self.viable else "NOT viable")]
        if self.noiommu:
            lines.append("  this is an unsafe no-IOMMU group: the device can DMA anywhere in memory")
        if self.blockers:
            lines.append("  blocked by (the kernel refuses user ownership while a device of the "
                         "group is on a DMA-capable host driver):")
            lines += [f"    - {b.reason}" for b in self.blockers]
            bdfs = " ".join(b.bdf for b in self.blockers)
            lines.append(f"  fix: `pyvfio bind --group {self.group}` (binds every device of the "
                         f"group to vfio-pci) or `pyvfio unbind {bdfs}`")
        if self.at_risk:
            lines.append("  reachable by the user's DMA (same I/O address space):")
            for m in self.at_risk:
                what = f" ({m.description})" if m.description else ""
                note = ", a bridge: no DMA of its own" if m.is_bridge else ""
                lines.append(f"    - {m.bdf}{what}, driver: {m.driver or 'none'}{note}")
        return "\n".join(lines)

    def error(self, *, ioctl: str | None = None, target: str | None = None,
              cause: OSError | None = None) -> NotViableError:
        """The :class:`~pyvfio.errors.NotViableError` to raise when the kernel
        refused ownership (EPERM) of this group, explained.  ``cause`` is the
        kernel's error; without blockers the message says the group is
        owned by another user."""
        head = f"{ioctl} on {target}: " if ioctl and target else (f"{ioctl or target}: " if ioctl or target else "")
        if self.blockers:
            text = head + self.message()
        else:
            text = (head + f"the kernel refused ownership of IOMMU group {self.group} although "
                    "no device of it is on a host driver: another process or iommufd owns "
                    "the group (an open /dev/vfio/N or another bound device)\n" + self.message())
        if cause is not None and cause.strerror:
            text += f"\n  kernel error: {cause.strerror}"
        return NotViableError(text, blockers=[(b.bdf, b.reason) for b in self.blockers],
                              target=target, ioctl=ioctl)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "group": self.group, "device": self.device, "viable": self.viable,
            "noiommu": self.noiommu,
            "members": [m.as_dict() for m in self.members],
            "blockers": [{"bdf": b.bdf, "driver": b.driver, "description": b.description,
                          "reason": b.reason} for b in self.blockers],
            "at_risk": [m.as_dict() for m in self.at_risk],
        }


def explain_group(group: int, device: str | None = None,
                  backend: Backend | None = None) -> GroupViability:
    """Explain IOMMU group ``group``: which devices block it and why, and
    which other devices a user of ``device`` (or of the whole group) can
    reach by DMA."""
    b = _backend(backend)
    if device is not None:
        device = normalize_bdf(device)
    try:
        bdfs = b.sysfs_listdir(f"{IOMMU_GROUPS}/{group}/devices")
    except OSError:
        raise VfioError(_errno.ENOENT, f"no IOMMU group {group}", target=f"group {group}") from None
    members = []
    for bdf in bdfs:
        is_pci = _BDF_COMPONENT.match(bdf) is not None
        driver = b.sysfs_basename_of_link(f"{IOMMU_GROUPS}/{group}/devices/{bdf}/driver")
        cls = _int(_read(b, f"{PCI_DEVICES}/{bdf}/class"), 16) if is_pci else None
        members.append(GroupMember(
            bdf=bdf, driver=driver, description=_describe(b, bdf) if is_pci else "",
            is_bridge=cls is not None and (cls >> 8) == 0x0604,
        ))
    blockers = tuple(Blocker(m.bdf, m.driver or "", m.description) for m in members if m.blocks)
    if device is not None:
        at_risk = tuple(m for m in members if m.bdf != device)
    else:
        at_risk = tuple(members) if len(members) > 1 else ()
    return GroupViability(group=group, device=device, members=tuple(members), blockers=blockers,
                          at_risk=at_risk,
                          noiommu=_read(b, f"{IOMMU_GROUPS}/{group}/name") == "vfio-noiommu")


def explain_device(bdf: str, backend: Backend | None = None) -> GroupViability:
    """:func:`explain_group` for the group of PCI device ``bdf``, from that
    device's point of view.  This is what to raise (``.error(...)``) when
    ``VFIO_DEVICE_BIND_IOMMUFD`` fails with EPERM on the cdev path."""
    b = _backend(backend)
    bdf = normalize_bdf(bdf)
    return explain_group(device_group(bdf, b), bdf, b)
