"""What VFIO and iommufd support a machine has, with fixes for what is missing.

:func:`check_environment` runs every check (nothing here needs root or
changes the system) and returns :class:`Check` results, each with a status
(``ok``, ``warn``, ``fail``, ``info``), what was found, and how to fix it::

    for check in check_environment():
        print(check.status, check.name, check.detail, check.fix)

A ``fail`` means VFIO cannot be used on this machine as it is; a ``warn``
that one path or feature is missing or will need root.

Fixes follow the kernel build (:func:`pyvfio.setup.kernel_support.kernel_build`): a module
the kernel has as a file gets ``modprobe``; one it was built without
(``# CONFIG_VFIO is not set`` in ``/proc/config.gz`` or
``/boot/config-<release>``) gets "use a kernel that has it"; one configured
as a module but missing from ``/lib/modules/<release>`` gets "install the
kernel's modules"; a built-in one needs nothing.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from ..backend import Backend, default_backend
from ..core import sysfs
from . import devices, kernel_support

__all__ = ["Check", "check_environment", "module_fix", "OK", "WARN", "FAIL", "INFO"]

#: Check statuses.
OK, WARN, FAIL, INFO = "ok", "warn", "fail", "info"

_CAP_IPC_LOCK = 14


@dataclass(frozen=True)
class Check:
    """One environment check."""

    name: str  #: short name, e.g. ``"iommu"`` or ``"node /dev/iommu"``
    status: str  #: "ok", "warn", "fail" or "info"
    detail: str  #: what was found
    fix: str = ""  #: what to do about it (empty when nothing is needed)

    def as_dict(self) -> dict[str, str]:
        """JSON-friendly form."""
        return asdict(self)


_read = sysfs.try_read
_listdir = sysfs.try_listdir


def _cpu_vendor(b: Backend) -> str | None:
    for line in (_read(b, "/proc/cpuinfo") or "").splitlines():
        if line.startswith("vendor_id"):
            value = line.split(":", 1)[1].strip()
            return {"GenuineIntel": "intel", "AuthenticAMD": "amd",
                    "HygonGenuine": "amd"}.get(value, value)
    return None


def _iommu_check(b: Backend, support: kernel_support.VfioSupport) -> Check:
    cmdline = (_read(b, "/proc/cmdline") or "").split()
    if support.iommu_enabled:
        types = sorted({g.type for g in devices.iommu_groups(b) if g.type})
        mode = f", default domain {'/'.join(types)}" if types else ""
        passthrough = any(a in ("iommu=pt", "iommu.passthrough=1") for a in cmdline)
        note = " (iommu=pt: host devices bypass translation, VFIO still isolates)" \
            if passthrough else ""
        return Check("iommu", OK, f"IOMMU active ({', '.join(support.iommus)}), "
                                  f"{support.group_count} groups{mode}{note}")
    off = [a for a in cmdline if a in ("intel_iommu=off", "amd_iommu=off", "iommu=off")]
    vendor = _cpu_vendor(b)
    tables = _listdir(b, "/sys/firmware/acpi/tables")
    firmware = "DMAR" in tables or "IVRS" in tables
    if off:
        fix = f"remove {' '.join(off)} from the kernel command line and reboot"
    elif tables and not firmware:
        fix = ("the firmware describes no IOMMU (no ACPI DMAR/IVRS table): enable VT-d (Intel) "
               "or AMD-Vi/IOMMU in the BIOS/UEFI setup; in a virtual machine give the guest a "
               "virtual IOMMU (QEMU: -device intel-iommu), then reboot")
    elif vendor == "intel" and "intel_iommu=on" not in cmdline:
        fix = ("add intel_iommu=on to the kernel command line (GRUB_CMDLINE_LINUX in "
               "/etc/default/grub, then update-grub) and reboot")
    elif vendor == "amd":
        fix = "enable AMD-Vi (IOMMU) in the BIOS/UEFI setup and reboot (AMD kernels enable it by default)"
    else:
        fix = ("enable the IOMMU in the firmware (VT-d/AMD-Vi/SMMU) and on the kernel command "
               "line (intel_iommu=on for Intel), then reboot; in a virtual machine give the "
               "guest a virtual IOMMU (QEMU: -device intel-iommu)")
    found = "no IOMMU is active: no /sys/class/iommu entries, no IOMMU groups"
    if not tables:
        found += " (no ACPI tables visible)"
    elif firmware:
        found += " (the firmware has an IOMMU table: the kernel did not enable it)"
    return Check("iommu", FAIL, found, fix=fix)


_MODPROBE_NAMES = {"vfio_pci": "vfio-pci", "vfio_pci_core": "vfio-pci-core", "pci_stub": "pci-stub"}


def _modprobe_name(module: str) -> str:
    return _MODPROBE_NAMES.get(module, module)


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _modules_fix(build: kernel_support.KernelBuild, modules: list[str]) -> str:
    """How to get ``modules`` (not loaded): modprobe those the kernel has
    as files, a kernel with the options for those it was built without,
    the kernel's module files for those configured but not installed."""
    absent = [kernel_support.MODULE_OPTIONS[m] for m in modules if build.module(m) == kernel_support.ABSENT]
    missing = [m for m in modules if build.module(m) == kernel_support.NOT_INSTALLED]
    loadable = [m for m in modules if build.module(m) in (kernel_support.MODULE, None)]
    parts = []
    if absent:
        them = "them" if len(absent) > 1 else "it"
        parts.append(f"the kernel was built without {_join(absent)}: use a kernel that has "
                     f"{them} (=m or =y)")
    if missing:
        where = build.modules_dir or f"/lib/modules/{build.release or '$(uname -r)'}"
        parts.append(f"{_join([kernel_support.MODULE_OPTIONS[m] + '=m' for m in missing])}, but "
                     f"{where} has no {_join([_modprobe_name(m) for m in missing])} module: "
                     "install this kernel's modules (the distribution's modules package for "
                     f"{build.release or 'it'}), then modprobe "
                     + " ".join(_modprobe_name(m) for m in missing))
    if loadable:
        unknown = [m for m in loadable if build.module(m) is None]
        text = "modprobe " + " ".join(_modprobe_name(m) for m in loadable)
        if unknown:
            text += f" (on a kernel with {_join([kernel_support.MODULE_OPTIONS[m] for m in unknown])})"
        parts.append(text)
    return "; ".join(parts)


def module_fix(build: kernel_support.KernelBuild, module: str) -> str:
    """What ``pyvfio doctor`` says to do about kernel module ``module``
    (``vfio_pci``) that is not loaded, for the kernel ``build``: modprobe,
    install the kernel's modules, or use a kernel built with it."""
    return _modules_fix(build, [module])


def _module_check(b: Backend, support: kernel_support.VfioSupport, build: kernel_support.KernelBuild,
                  module: str, what: str) -> Check:
    present = support.modules.get(module, False)
    if module == "vfio_pci":
        present = present and support.vfio_pci_driver
    state = build.module(module)
    option = kernel_support.MODULE_OPTIONS[module]
    name = f"module {module}"
    if present:
        return Check(name, OK, f"{what} " + ("built into the kernel" if state == kernel_support.BUILTIN
                                             else "loaded"))
    if module == "vfio_iommu_type1" and state == kernel_support.ABSENT             and build.option("CONFIG_IOMMUFD_VFIO_CONTAINER") == "y":
        return Check(name, INFO, f"{what}: not in this kernel; iommufd provides the legacy "
                                 "container instead (CONFIG_IOMMUFD_VFIO_CONTAINER)")
    if state == kernel_support.BUILTIN:
        return Check(name, WARN, f"{what}: built into the kernel ({option}=y) but not active "
                                 "(for vfio-pci: no /sys/bus/pci/drivers/vfio-pci)",
                     fix="see the kernel log (dmesg) for why it did not register")
    source = f" in {build.config_source}" if build.config_source else ""
    detail = {
        kernel_support.ABSENT: f"{what}: not in this kernel ({option} is not set{source})",
        kernel_support.NOT_INSTALLED: f"{what} not loaded; {option}=m, but the module is not installed",
        kernel_support.MODULE: f"{what} not loaded (a module of this kernel)",
    }.get(state or "", f"{what} not loaded (or not built)")
    return Check(name, WARN, detail, fix=_modules_fix(build, [module]))


def _container_fix(b: Backend, support: kernel_support.VfioSupport, build: kernel_support.KernelBuild) -> str:
    """Why /dev/vfio/vfio is missing and what to do."""
    if not support.modules.get("vfio", False):
        fix = _modules_fix(build, ["vfio"])
        if build.module("vfio") != kernel_support.ABSENT and build.config is None:
            fix += (" (the legacy container needs CONFIG_VFIO_CONTAINER, or iommufd's compat "
                    "container CONFIG_IOMMUFD_VFIO_CONTAINER)")
        return fix
    vfio_container = build.option("CONFIG_VFIO_CONTAINER")
    compat = build.option("CONFIG_IOMMUFD_VFIO_CONTAINER")
    if compat == "y" and not support.modules.get("iommufd", False):
        return (_modules_fix(build, ["iommufd"])
                + " (with CONFIG_IOMMUFD_VFIO_CONTAINER iommufd provides /dev/vfio/vfio)")
    if vfio_container == "n" and compat in ("n", None):
        return ("the kernel was built without CONFIG_VFIO_CONTAINER and "
                "CONFIG_IOMMUFD_VFIO_CONTAINER: it has no legacy container (use the iommufd + "
                "cdev path, or a kernel with one of them)")
    if vfio_container == "y" or compat == "y":
        return ("the kernel has the container (misc device 10:196): check that devtmpfs or udev "
                "created /dev/vfio/vfio")
    return ("the legacy container needs CONFIG_VFIO_CONTAINER, or iommufd's compat container "
            "CONFIG_IOMMUFD_VFIO_CONTAINER")


def _iommufd_fix(support: kernel_support.VfioSupport, build: kernel_support.KernelBuild) -> str:
    if not support.modules.get("iommufd", False):
        return _modules_fix(build, ["iommufd"])
    return "iommufd is loaded (misc device \"iommu\"): check that devtmpfs or udev created /dev/iommu"


def _cdev_check(support: kernel_support.VfioSupport, build: kernel_support.KernelBuild) -> Check:
    if support.cdev_supported:
        detail = ("vfio device cdevs supported: /dev/vfio/devices/vfioN appears for each device "
                  "bound to vfio-pci")
        if support.cdev_dir:
            detail += "; /dev/vfio/devices is present"
        elif build.option("CONFIG_VFIO_DEVICE_CDEV") == "y":
            detail += " (CONFIG_VFIO_DEVICE_CDEV=y)"
        return Check("cdev", OK, detail)
    vfio_fix = "" if support.modules.get("vfio", False) else _modules_fix(build, ["vfio"])
    if support.cdev_supported is None:
        return Check("cdev", WARN, "cannot tell whether the kernel gives devices vfio cdevs "
                                   "(CONFIG_VFIO_DEVICE_CDEV): no device is bound to a vfio "
                                   "driver and the kernel configuration is not readable",
                     fix=(vfio_fix + "; then " if vfio_fix else "")
                     + "bind a device to vfio-pci: /dev/vfio/devices/vfioN appears if it does")
    if build.module("vfio") == kernel_support.ABSENT:
        return Check("cdev", WARN, "no vfio device cdevs: the kernel has no VFIO", fix=vfio_fix)
    why = ("CONFIG_VFIO_DEVICE_CDEV is not set"
           if build.option("CONFIG_VFIO_DEVICE_CDEV") == "n"
           else "devices bound to vfio-pci get no device number")
    return Check("cdev", WARN, f"no vfio device cdevs ({why})",
                 fix="a kernel with CONFIG_VFIO_DEVICE_CDEV (Linux 6.6+) gives the iommufd path; "
                     "the legacy container path works without it")


def _node_check(b: Backend, node: str, what: str, missing_fix: str,
                missing_status: str = WARN) -> Check:
    if not b.exists(node):
        return Check(f"node {node}", missing_status, f"{what}: missing", fix=missing_fix)
    usable = b.access(node, os.R_OK | os.W_OK)
    return Check(
        f"node {node}", OK if usable else WARN,
        f"{what}: present" + ("" if usable else ", but not read/writable by this user"),
        fix="" if usable else (f"run as root, or grant access to {node} with a udev rule "
                               "(e.g. GROUP=\"vfio\", MODE=\"0660\") and join that group"),
    )


def _memlock_check(b: Backend) -> Check:
    limit = b.memlock_limit()
    caps = 0
    for line in (_read(b, "/proc/self/status") or "").splitlines():
        if line.startswith("CapEff:"):
            caps = int(line.split()[1], 16)
    exempt = bool(caps & (1 << _CAP_IPC_LOCK))
    if limit < 0:
        return Check("memlock", OK, "RLIMIT_MEMLOCK unlimited")
    text = f"RLIMIT_MEMLOCK {limit // 1024} KiB"
    if exempt:
        return Check("memlock", OK, text + " (CAP_IPC_LOCK: pinning is not limited for this process)")
    if limit >= 64 << 20:
        return Check("memlock", OK, text)
    return Check("memlock", WARN, text + ": DMA mappings pin memory and count against it",
                 fix="raise it to cover all DMA memory (ulimit -l, /etc/security/limits.conf, "
                     "systemd LimitMEMLOCK=), or run with CAP_IPC_LOCK")


def _hugepage_checks(b: Backend) -> list[Check]:
    sizes = [n for n in _listdir(b, "/sys/kernel/mm/hugepages") if n.startswith("hugepages-")]
    if not sizes:
        return [Check("hugepages", INFO, "not supported (no /sys/kernel/mm/hugepages)")]
    out = []
    for name in sorted(sizes, key=lambda n: int("".join(c for c in n if c.isdigit()) or 0)):
        size = name.split("-", 1)[1]
        n = sysfs._int(_read(b, f"/sys/kernel/mm/hugepages/{name}/nr_hugepages"), 10) or 0
        out.append(Check(
            f"hugepages {size}", OK if n else INFO, f"{n} reserved",
            fix="" if n else (f"optional, for large DMA buffers: echo N > "
                              f"/sys/kernel/mm/hugepages/{name}/nr_hugepages"),
        ))
    return out


def check_environment(backend: Backend | None = None) -> list[Check]:
    """Run every check; nothing here needs root or changes the system."""
    b = backend if backend is not None else default_backend()
    support = kernel_support.vfio_support(b)
    checks: list[Check] = []

    release = _read(b, "/proc/sys/kernel/osrelease")
    if release:
        checks.append(Check("kernel", INFO, f"Linux {release.strip()}"))

    checks.append(_iommu_check(b, support))
    if support.noiommu_mode:
        checks.append(Check("noiommu", WARN, "vfio.enable_unsafe_noiommu_mode is on: devices "
                                             "without an IOMMU get unsafe no-IOMMU groups",
                            fix="only for devices you trust with all of memory"))

    build = support.kernel if support.kernel is not None else kernel_support.kernel_build(b)
    for module, what in (("vfio", "VFIO core"), ("vfio_pci", "vfio-pci driver"),
                         ("vfio_iommu_type1", "legacy type1 IOMMU backend"),
                         ("iommufd", "iommufd")):
        checks.append(_module_check(b, support, build, module, what))

    checks.append(_node_check(b, "/dev/vfio/vfio", "legacy container",
                              _container_fix(b, support, build)))
    checks.append(_node_check(b, "/dev/iommu", "iommufd", _iommufd_fix(support, build)))
    checks.append(_cdev_check(support, build))

    usable = support.legacy_usable or support.cdev_usable
    if usable:
        checks.append(Check("interfaces", OK, f"usable: {support.interfaces}"))
    else:
        wanted = [m for m in ("vfio", "vfio_pci", "iommufd")
                  if not support.modules.get(m, False)
                  or (m == "vfio_pci" and not support.vfio_pci_driver)]
        fix = _modules_fix(build, wanted) if wanted else "see the node checks above"
        checks.append(Check("interfaces", FAIL, f"usable: {support.interfaces}", fix=fix))

    # devices already bound: can this user open them?
    bound = [d for d in devices.pci_devices(b) if d.driver == "vfio-pci"]
    unreadable = []
    for dev in bound:
        nodes = []
        if dev.iommu_group is not None:
            nodes.append(sysfs.group_dev_path(dev.iommu_group, b))
        if dev.cdev_path:
            nodes.append(dev.cdev_path)
        unreadable += [n for n in nodes if b.exists(n) and not b.access(n, os.R_OK | os.W_OK)]
    if bound:
        checks.append(Check(
            "devices", OK if not unreadable else WARN,
            f"{len(bound)} device(s) on vfio-pci: {', '.join(d.bdf for d in bound)}"
            + (f"; not accessible to this user: {', '.join(sorted(set(unreadable)))}"
               if unreadable else ""),
            fix="" if not unreadable else "run as root or give this user access to those nodes"))
    else:
        checks.append(Check("devices", INFO, "no device is bound to vfio-pci",
                            fix="pyvfio bind BDF (as root); pyvfio status lists the devices"))
    if not b.access("/sys/bus/pci/drivers_probe", os.W_OK):
        checks.append(Check("binding", INFO, "binding devices needs root (sysfs is not writable "
                                             "by this user)"))

    checks.append(_memlock_check(b))
    checks += _hugepage_checks(b)
    return checks
