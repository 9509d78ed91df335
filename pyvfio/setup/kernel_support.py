"""What VFIO and iommufd support the running kernel has.

The kernel build (release, configuration, built-in and loadable modules)
and what it offers user space: the IOMMU, vfio-pci, the legacy container,
the device cdev, iommufd, no-IOMMU mode::

    from pyvfio.setup import kernel_support

    print(kernel_support.vfio_support())   # IOMMU on? vfio-pci? cdev?
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from ..backend import Backend
from ..core.sysfs import IOMMU_GROUPS, PCI_DEVICES, _backend, _listdir, _read

__all__ = [
    "VfioSupport",
    "vfio_support",
    "KernelBuild",
    "kernel_build",
    "MODULE_OPTIONS",
    "module_present",
    "BUILTIN",
    "MODULE",
    "NOT_INSTALLED",
    "ABSENT",
]
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

