"""What VFIO and iommufd support a machine has, with fixes for what is missing."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from .backend import Backend, default_backend

__all__ = ["Check", "check_environment"]

OK, WARN, FAIL, INFO = "ok", "warn", "fail", "info"


@dataclass(frozen=True)
class Check:
    """One environment check."""

    name: str
    status: str  #: "ok", "warn", "fail" or "info"
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def _read(b: Backend, path: str) -> str | None:
    try:
        return b.sysfs_read(path)
    except OSError:
        return None


def _listdir(b: Backend, path: str) -> list[str]:
    try:
        return b.sysfs_listdir(path)
    except OSError:
        return []


def check_environment(backend: Backend | None = None) -> list[Check]:
    """Run every check; nothing here needs root or changes the system."""
    b = backend if backend is not None else default_backend()
    checks: list[Check] = []

    iommus = _listdir(b, "/sys/class/iommu")
    groups = _listdir(b, "/sys/kernel/iommu_groups")
    cmdline = _read(b, "/proc/cmdline") or ""
    if iommus and groups:
        checks.append(Check("iommu", OK, f"IOMMU active ({', '.join(iommus)}), {len(groups)} groups"))
    else:
        hint = ""
        if "intel_iommu=on" not in cmdline and "amd_iommu" not in cmdline:
            hint = " Add intel_iommu=on (Intel) to the kernel command line;"
        checks.append(Check(
            "iommu", FAIL, "no IOMMU is active: no /sys/class/iommu entries, no IOMMU groups",
            fix=(hint + " enable VT-d/AMD-Vi in the firmware, and reboot.").strip(),
        ))

    for module, what in (("vfio", "VFIO core"), ("vfio_pci", "vfio-pci driver"),
                         ("vfio_iommu_type1", "legacy type1 IOMMU backend"),
                         ("iommufd", "iommufd")):
        present = b.exists(f"/sys/module/{module}")
        checks.append(Check(
            f"module {module}", OK if present else WARN,
            f"{what} {'loaded' if present else 'not loaded (or not built)'}",
            fix="" if present else f"modprobe {module}",
        ))

    for node, what in (("/dev/vfio/vfio", "legacy container"), ("/dev/iommu", "iommufd"),
                       ("/dev/vfio/devices", "vfio device cdevs")):
        if b.exists(node):
            usable = b.access(node, os.R_OK | os.W_OK)
            checks.append(Check(
                f"node {node}", OK if usable else WARN,
                f"{what}: present" + ("" if usable else ", but not read/writable by this user"),
                fix="" if usable else f"run as root or grant access to {node} (udev rule)",
            ))
        else:
            checks.append(Check(f"node {node}", WARN, f"{what}: missing",
                                fix="load the module above (iommufd gives /dev/iommu; "
                                    "CONFIG_VFIO_DEVICE_CDEV gives /dev/vfio/devices)"))

    cdev = b.exists("/dev/iommu") and b.exists("/dev/vfio/devices")
    legacy = b.exists("/dev/vfio/vfio")
    mode = ("iommufd + cdev and legacy container" if cdev and legacy
            else "iommufd + cdev only" if cdev else "legacy container only" if legacy
            else "neither")
    checks.append(Check("interfaces", OK if (cdev or legacy) else FAIL, f"usable: {mode}",
                        fix="" if (cdev or legacy) else "load vfio-pci (and iommufd)"))

    limit = b.memlock_limit()
    if limit < 0:
        checks.append(Check("memlock", OK, "RLIMIT_MEMLOCK unlimited"))
    else:
        status = OK if limit >= 64 << 20 else WARN
        checks.append(Check("memlock", status, f"RLIMIT_MEMLOCK {limit} bytes",
                            fix="" if status == OK else
                            "raise it (ulimit -l, limits.conf) to cover all DMA memory"))

    for size in ("2048kB", "1048576kB"):
        n = _read(b, f"/sys/kernel/mm/hugepages/hugepages-{size}/nr_hugepages")
        if n is None:
            checks.append(Check(f"hugepages {size}", INFO, "not supported"))
        else:
            checks.append(Check(f"hugepages {size}", OK if int(n) else INFO,
                                f"{n} reserved",
                                fix="" if int(n) else
                                f"echo N > /sys/kernel/mm/hugepages/hugepages-{size}/nr_hugepages"))
    return checks
