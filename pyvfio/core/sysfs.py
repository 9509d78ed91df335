"""Where a PCI device and its IOMMU group are in sysfs and /dev.

The lookups the objects need to open a device or a group by PCI address:
the device's IOMMU group, its driver, its vfio character device, the
group's device node, and PCI class names for messages.  Everything reads
through a :class:`~pyvfio.backend.base.Backend`, so it works on the real
/sys and on a fake system alike.
"""

from __future__ import annotations

import errno as _errno
import os
import re

from ..backend import Backend, default_backend
from ..errors import InvalidArgumentError, VfioError

__all__ = [
    "PCI_DEVICES",
    "IOMMU_GROUPS",
    "normalize_bdf",
    "device_group",
    "device_driver",
    "group_devices",
    "device_cdev_path",
    "group_dev_path",
    "class_name",
    "try_read",
    "try_listdir",
]


PCI_DEVICES = "/sys/bus/pci/devices"
IOMMU_GROUPS = "/sys/kernel/iommu_groups"

_BDF = re.compile(r"^(?:([0-9a-fA-F]{4}):)?([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])$")
_BDF_COMPONENT = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")


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


def _no_device(bdf: str) -> str:
    return (f"no PCI device {bdf} on this machine: `pyvfio status` lists its PCI "
            "devices (addresses are DDDD:BB:DD.F, e.g. 0000:00:04.0)")


def device_group(bdf: str, backend: Backend | None = None) -> int:
    """The IOMMU group number of a PCI device."""
    b = _backend(backend)
    bdf = normalize_bdf(bdf)
    try:
        link = b.sysfs_readlink(f"{PCI_DEVICES}/{bdf}/iommu_group")
    except FileNotFoundError:
        if not b.exists(f"{PCI_DEVICES}/{bdf}"):
            raise VfioError(2, _no_device(bdf), target=f"device {bdf}") from None
        raise VfioError(
            2, f"device {bdf} is in no IOMMU group (is the IOMMU enabled?)",
            target=f"device {bdf}",
        ) from None
    except OSError as exc:  # e.g. ENOMEM: the kernel could not answer
        err = exc.errno or _errno.EIO
        raise VfioError(err, f"cannot read the IOMMU group of device {bdf}: "
                        f"{os.strerror(err)}", target=f"device {bdf}") from exc
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
        if not b.exists(f"{PCI_DEVICES}/{bdf}"):
            raise VfioError(2, _no_device(bdf), target=f"device {bdf}")
        driver = device_driver(bdf, b)
        raise VfioError(
            2,
            f"device {bdf} has no vfio character device (driver: {driver or 'none'}; "
            f"bind it to vfio-pci, e.g. `pyvfio bind {bdf}`, on a kernel with "
            "CONFIG_VFIO_DEVICE_CDEV)",
            target=f"device {bdf}",
        )
    return f"/dev/vfio/devices/{names[0]}"


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
