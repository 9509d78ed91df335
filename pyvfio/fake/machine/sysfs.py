"""The simulated /sys of a fake :class:`~pyvfio.fake.system.System`.

:class:`Sysfs` serves ``read``/``write``/``listdir``/``readlink`` for the
parts of sysfs VFIO users look at, generated from the system's current
state, with the kernel's text formats (drivers/pci/pci-sysfs.c,
drivers/iommu/iommu.c, drivers/base/bus.c) and its errors:

* ``ENOENT`` for a missing path, ``ENOTDIR`` when a path component is a file;
* ``EISDIR`` when reading or writing a directory;
* ``EACCES`` when writing a read-only attribute or reading a write-only one
  (kernfs refuses the open);
* ``EINVAL`` for ``readlink`` of something that is not a symlink, and for
  values an attribute rejects; attribute-specific errnos (``ENODEV``,
  ``EBUSY``, ``EEXIST``...) as the kernel's ``store`` functions return them.

Reads return the text with trailing newlines stripped (like
:meth:`pyvfio.backend.kernel.KernelBackend.sysfs_read`); binary attributes
(``config``) are decoded as ASCII with replacement, as the kernel backend
does.  :meth:`Sysfs.read_bytes` gives the raw bytes.

Besides the PCI devices, drivers, IOMMU groups and modules, the tree has
the classes VFIO registers: ``/sys/class/vfio/<N>`` for each live vfio group
(``/sys/devices/virtual/vfio/<N>``, drivers/vfio/group.c), ``/sys/class/vfio-dev/vfioN``
for each vfio device (below its PCI device, drivers/vfio/vfio_main.c) and the
misc devices ``vfio`` (the container) and ``iommu`` (iommufd).  SR-IOV PFs
have ``sriov_totalvfs``, ``sriov_numvfs`` and ``virtfnN`` links, their VFs a
``physfn`` link (drivers/pci/iov.c).  ``reset_method`` lists the methods
that work for the device where it sits (drivers/pci/pci.c,
pci_init_reset_methods): ``flr`` with FLR in the Express capability,
``af_flr`` with an Advanced Features capability offering it, ``pm`` with a
PM capability without No_Soft_Reset, ``bus``/``cxl_bus`` only for a function
alone below a bridge (never on a root bus).  Devices without a model are
taken at their topology's word for the capabilities.

A few host files outside /sys that describe the kernel build are served
too, from the topology's ``kernel`` section (:attr:`Sysfs.kernel`):
``/proc/sys/kernel/osrelease``, ``/proc/devices`` (with the ``vfio`` and
``vfio-dev`` regions while vfio is loaded), ``/boot/config-<release>`` and
``/lib/modules/<release>/modules.builtin`` and ``modules.dep``.

Not simulated: writes to ``config`` (read-only here), changing the number
of VFs (``sriov_numvfs`` answers as for a PF driver without
``sriov_configure``), ``remove``/``rescan``, uevents.
"""

from __future__ import annotations

import errno
import functools
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Union

from . import topology as _topology
from ..core import errno_error
from .system import PCI_ANY_ID, PciId

if TYPE_CHECKING:
    from .system import Driver, IommuGroup, PciDevice, System

__all__ = ["Sysfs"]

PAGE_SIZE = 4096
#: Major number shown for vfio device cdevs (dynamically allocated on Linux).
VFIO_CDEV_MAJOR = 237
#: Major number shown for vfio group nodes (dynamically allocated on Linux).
VFIO_GROUP_MAJOR = 238
#: The misc character device major and the minors of /dev/vfio/vfio
#: (VFIO_MINOR) and /dev/iommu (dynamic on Linux).
MISC_MAJOR, VFIO_MINOR, IOMMUFD_MINOR = 10, 196, 122

#: Where the kernel installs the module of each option (modules.builtin and
#: modules.dep list these paths).
_MODULE_FILES = {
    "CONFIG_VFIO": "kernel/drivers/vfio/vfio.ko",
    "CONFIG_VFIO_IOMMU_TYPE1": "kernel/drivers/vfio/vfio_iommu_type1.ko",
    "CONFIG_VFIO_PCI_CORE": "kernel/drivers/vfio/pci/vfio-pci-core.ko",
    "CONFIG_VFIO_PCI": "kernel/drivers/vfio/pci/vfio-pci.ko",
    "CONFIG_IOMMUFD": "kernel/drivers/iommu/iommufd/iommufd.ko",
    "CONFIG_PCI_STUB": "kernel/drivers/pci/pci-stub.ko",
}
#: What each module needs loaded first (modules.dep).
_MODULE_DEPS = {
    "CONFIG_VFIO_IOMMU_TYPE1": ("CONFIG_VFIO",),
    "CONFIG_VFIO_PCI_CORE": ("CONFIG_VFIO", "CONFIG_IOMMUFD"),
    "CONFIG_VFIO_PCI": ("CONFIG_VFIO_PCI_CORE", "CONFIG_VFIO", "CONFIG_IOMMUFD"),
    "CONFIG_VFIO": ("CONFIG_IOMMUFD",),
}

# Config space registers the reset-method probes read (include/uapi/linux/pci_regs.h)
_PCI_STATUS, _PCI_STATUS_CAP_LIST, _PCI_CAPABILITY_LIST = 0x06, 0x10, 0x34
_PCI_CAP_ID_AF = 0x13
_PCI_AF_CAP, _PCI_AF_CAP_TP, _PCI_AF_CAP_FLR = 3, 0x01, 0x02
_PCI_PM_CTRL, _PCI_PM_CTRL_NO_SOFT_RESET = 4, 0x0008

_RESET_METHODS = ("device_specific", "acpi", "flr", "af_flr", "pm", "bus", "cxl_bus")

# struct resource flags as resource_show prints them
_IORESOURCE_IO = 0x00000100
_IORESOURCE_MEM = 0x00000200
_IORESOURCE_PREFETCH = 0x00002000
_IORESOURCE_SIZEALIGN = 0x00040000
_IORESOURCE_MEM_64 = 0x00100000


@dataclass
class _Attr:
    show: Callable[[], bytes] | None = None
    store: Callable[[str], None] | None = None


@dataclass
class _Link:
    target: str


class _Dir:
    def __init__(self, children: Callable[[], dict[str, _Node]]) -> None:
        self.children = children


_Node = Union[_Attr, _Link, _Dir]


def _text(s: str) -> Callable[[], bytes]:
    return lambda: s.encode()


def _streq(a: str, b: str) -> bool:
    """sysfs_streq: equal, ignoring one trailing newline on either side."""
    return a.removesuffix("\n") == b.removesuffix("\n")


def _scan_hex(buf: str, limit: int) -> list[int]:
    """sscanf(buf, "%x %x ...") with up to ``limit`` conversions."""
    values: list[int] = []
    pos = 0
    pattern = re.compile(r"\s*(?:0[xX])?([0-9a-fA-F]+)")
    while len(values) < limit:
        m = pattern.match(buf, pos)
        if not m:
            break
        values.append(int(m.group(1), 16) & 0xFFFFFFFF)
        pos = m.end()
    return values


def _parse_bool(buf: str) -> bool:
    """param_set_bool / kstrtobool."""
    s = buf.strip()
    if s[:1] in ("y", "Y", "1"):
        return True
    if s[:1] in ("n", "N", "0"):
        return False
    if s.lower() == "on":
        return True
    if s.lower() == "off":
        return False
    raise errno_error(errno.EINVAL, f"{buf!r} is not a boolean")


def _parse_uint(buf: str, bits: int = 32) -> int:
    """kstrtouint with base 0 (one trailing newline allowed)."""
    s = buf.removesuffix("\n")
    m = re.fullmatch(r"\+?(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)", s)
    if not m:
        raise errno_error(errno.EINVAL, f"{buf!r} is not a number")
    value = int(m.group(1), 0)
    if value >= 1 << bits:
        raise errno_error(errno.ERANGE, f"{buf!r} is out of range")
    return value


def _parse_int(buf: str) -> int:
    """kstrtoint with base 0."""
    s = buf.removesuffix("\n")
    m = re.fullmatch(r"([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)", s)
    if not m:
        raise errno_error(errno.EINVAL, f"{buf!r} is not a number")
    value = int(m.group(2), 0) * (-1 if m.group(1) == "-" else 1)
    if not -(1 << 31) <= value < 1 << 31:
        raise errno_error(errno.ERANGE, f"{buf!r} is out of range")
    return value


class Sysfs:
    """The /sys tree of one :class:`~pyvfio.fake.system.System`."""

    def __init__(self, system: System) -> None:
        self.system = system
        #: drivers_autoprobe of the PCI bus.
        self.drivers_autoprobe = True
        self.vfio_pci_params = {"nointxmask": False, "disable_idle_d3": False,
                                "enable_sriov": False, "disable_denylist": False}
        self.iommufd_params = {"allow_unsafe_interrupts": False}
        if not isinstance(getattr(system, "kernel", None), dict):
            system.kernel = _topology.normalize_kernel(None)

    @property
    def kernel(self) -> dict[str, Any]:
        """The kernel build served (the system's normalised ``kernel``
        section: ``release``, ``config`` or None, ``modules_dir``); assign a
        topology's section to describe another build."""
        kernel: dict[str, Any] = self.system.kernel
        return kernel

    @kernel.setter
    def kernel(self, value: dict[str, Any]) -> None:
        self.system.kernel = value

    # -- public API ---------------------------------------------------------------
    def read(self, path: str) -> str:
        """Contents of an attribute, trailing newlines stripped."""
        return self.read_bytes(path).decode("ascii", errors="replace").rstrip("\n")

    def read_bytes(self, path: str) -> bytes:
        """Contents of an attribute as bytes (binary ones such as ``config`` too)."""
        host = self._host_path(path)
        if host is not None:
            if isinstance(host, dict):
                raise errno_error(errno.EISDIR, path)
            return host
        node = self._resolve(path, follow=True)
        if isinstance(node, _Dir):
            raise errno_error(errno.EISDIR, path)
        assert isinstance(node, _Attr)
        if node.show is None:
            # kernfs_fop_open: EACCES when opening a write-only attribute to read
            raise errno_error(errno.EACCES, f"{path} is write-only")
        return node.show()

    def write(self, path: str, value: str) -> None:
        """One write(2) of ``value`` to an attribute."""
        node = self._resolve(path, follow=True)
        if isinstance(node, _Dir):
            raise errno_error(errno.EISDIR, path)
        assert isinstance(node, _Attr)
        if node.store is None:
            # kernfs_fop_open: EACCES when opening a read-only attribute to write
            raise errno_error(errno.EACCES, f"{path} is read-only")
        if not value:
            return  # a zero-length write never reaches the store function
        node.store(value)

    def listdir(self, path: str) -> list[str]:
        """Names in a directory, sorted (ENOENT/ENOTDIR as the kernel gives them)."""
        host = self._host_path(path)
        if host is not None:
            if not isinstance(host, dict):
                raise errno_error(errno.ENOTDIR, path)
            return sorted(host)
        node = self._resolve(path, follow=True)
        if not isinstance(node, _Dir):
            raise errno_error(errno.ENOTDIR, path)
        return sorted(node.children())

    def readlink(self, path: str) -> str:
        """Target of a symbolic link (EINVAL when ``path`` is not a link)."""
        node = self._resolve(path, follow=False)
        if not isinstance(node, _Link):
            raise errno_error(errno.EINVAL, f"{path} is not a symbolic link")
        return node.target

    def exists(self, path: str) -> bool:
        """Whether ``path`` exists (links followed)."""
        try:
            if self._host_path(path) is not None:
                return True
            self._resolve(path, follow=True)
        except OSError:
            return False
        return True

    def is_dir(self, path: str) -> bool:
        """Whether ``path`` is a directory (links followed)."""
        try:
            return isinstance(self._resolve(path, follow=True), _Dir)
        except OSError:
            return False

    # -- host files outside /sys -----------------------------------------------------
    def _host_path(self, path: str) -> bytes | dict[str, object] | None:
        """The contents of a host file (bytes) or folder (a dict of its
        names) outside /sys; None for paths under /sys.  ENOENT for other
        paths outside /sys."""
        if not path.startswith("/") or path.split("/")[1:2] == ["sys"]:
            return None
        parts = [p for p in path.split("/") if p and p != "."]
        node: bytes | dict[str, object] = self._host_tree()
        for name in parts:
            if not isinstance(node, dict):
                raise errno_error(errno.ENOTDIR, path)
            child = node.get(name)
            if child is None:
                raise errno_error(errno.ENOENT, path)
            assert isinstance(child, (bytes, dict))
            node = child
        return node

    def _host_tree(self) -> dict[str, object]:
        kernel = self.kernel
        release = str(kernel["release"])
        config: dict[str, str] | None = kernel.get("config")
        tree: dict[str, object] = {
            "proc": {"sys": {"kernel": {"osrelease": f"{release}\n".encode()}},
                     "devices": self._proc_devices(), **self._host_proc()},
        }
        if config is not None:
            tree["boot"] = {f"config-{release}": self._config_text(release, config)}
            if kernel.get("modules_dir", True):
                builtin = [_MODULE_FILES[o] for o, v in config.items()
                           if o in _MODULE_FILES and v == "y"]
                loadable = [o for o, v in config.items() if o in _MODULE_FILES and v == "m"]
                dep = []
                for option in loadable:
                    deps = [_MODULE_FILES[d] for d in _MODULE_DEPS.get(option, ())
                            if config.get(d) == "m"]
                    dep.append(f"{_MODULE_FILES[option]}: {' '.join(deps)}".rstrip() + "\n")
                tree["lib"] = {"modules": {release: {
                    "modules.builtin": "".join(f"{m}\n" for m in builtin).encode(),
                    "modules.dep": "".join(dep).encode(),
                }}}
        return tree

    def _proc_devices(self) -> bytes:
        """/proc/devices: the character and block device regions."""
        chars = [(1, "mem"), (4, "tty"), (5, "/dev/tty"), (10, "misc")]
        if self.system.modules["vfio"]:
            # vfio_cdev_init, vfio_group_init: dynamic regions
            chars += [(VFIO_CDEV_MAJOR, "vfio-dev"), (VFIO_GROUP_MAJOR, "vfio")]
        lines = ["Character devices:"] + [f"{major:3d} {name}" for major, name in chars]
        lines += ["", "Block devices:", "259 blkext"]
        return ("\n".join(lines) + "\n").encode()

    @staticmethod
    def _config_text(release: str, config: dict[str, str]) -> bytes:
        lines = ["#", "# Automatically generated file; DO NOT EDIT.",
                 f"# Linux/x86 {release} Kernel Configuration", "#"]
        for name, value in config.items():
            if value == "n":
                lines.append(f"# {name} is not set")
            elif value in ("y", "m") or re.fullmatch(r"-?[0-9]+|0x[0-9a-fA-F]+", value):
                lines.append(f"{name}={value}")
            else:
                lines.append(f'{name}="{value}"')
        return ("\n".join(lines) + "\n").encode()

    # -- path resolution -------------------------------------------------------------
    def _resolve(self, path: str, follow: bool) -> _Node:
        if not path.startswith("/"):
            raise errno_error(errno.ENOENT, f"{path}: sysfs paths are absolute")
        parts = [p for p in path.split("/") if p and p != "."]
        hops = 0
        while True:
            node: _Node = _Dir(self._root)
            if not parts or parts[0] != "sys":
                raise errno_error(errno.ENOENT, path)
            done: list[str] = ["sys"]
            rest = parts[1:]
            restart = False
            while rest:
                name = rest.pop(0)
                if name == "..":
                    # the parent of a real directory: drop one component
                    if len(done) > 1:
                        done.pop()
                    parts = done + rest
                    restart = True
                    break
                if not isinstance(node, _Dir):
                    raise errno_error(errno.ENOTDIR, path)
                children = node.children()
                if name not in children:
                    raise errno_error(errno.ENOENT, path)
                child = children[name]
                if isinstance(child, _Link) and (rest or follow):
                    hops += 1
                    if hops > 40:
                        raise errno_error(errno.ELOOP, path)
                    base = "/" + "/".join(done)
                    target = os.path.normpath(os.path.join(base, child.target))
                    parts = [p for p in target.split("/") if p] + rest
                    restart = True
                    break
                node = child
                done.append(name)
            if not restart:
                return node

    # -- the tree ------------------------------------------------------------------------
    def _root(self) -> dict[str, _Node]:
        return {
            "bus": _Dir(lambda: {"pci": _Dir(self._bus_pci)}),
            "devices": _Dir(self._devices_root),
            "kernel": _Dir(lambda: {"iommu_groups": _Dir(self._iommu_groups)}),
            "class": _Dir(self._classes),
            "module": _Dir(self._modules),
            "block": _Dir(self._sys_block),
        }

    # /sys/bus/pci
    def _bus_pci(self) -> dict[str, _Node]:
        return {
            "devices": _Dir(self._bus_devices),
            "drivers": _Dir(self._bus_drivers),
            "drivers_probe": _Attr(store=self._drivers_probe_store),
            "drivers_autoprobe": _Attr(show=lambda: f"{int(self.drivers_autoprobe)}\n".encode(),
                                       store=self._drivers_autoprobe_store),
        }

    def _rel(self, from_dir: str, target: str) -> str:
        """Relative link from directory ``from_dir`` to ``target`` (both under /sys)."""
        return os.path.relpath(target, from_dir)

    def _bus_devices(self) -> dict[str, _Node]:
        return {
            bdf: _Link(self._rel("/sys/bus/pci/devices", pdev.sysfs_path))
            for bdf, pdev in self.system.devices.items()
        }

    def _bus_drivers(self) -> dict[str, _Node]:
        return {name: _Dir(lambda d=drv: self._driver_dir(d))  # type: ignore[misc]
                for name, drv in self.system.drivers.items()}

    def _driver_dir(self, drv: Driver) -> dict[str, _Node]:
        base = f"/sys/bus/pci/drivers/{drv.name}"
        out: dict[str, _Node] = {
            "bind": _Attr(store=lambda v: self._bind_store(drv, v)),
            "unbind": _Attr(store=lambda v: self._unbind_store(drv, v)),
            "new_id": _Attr(store=lambda v: self._new_id_store(drv, v)),
            "remove_id": _Attr(store=lambda v: self._remove_id_store(drv, v)),
        }
        if drv.module is not None and drv.module in self._module_names():
            out["module"] = _Link(self._rel(base, f"/sys/module/{drv.module}"))
        for pdev in drv.devices:
            out[pdev.bdf] = _Link(self._rel(base, pdev.sysfs_path))
        return out

    # /sys/devices
    def _devices_root(self) -> dict[str, _Node]:
        out: dict[str, _Node] = {}
        for pdev in self.system.devices.values():
            if pdev.parent is None:
                root = pdev.sysfs_path.split("/")[3]
                out.setdefault(root, _Dir(lambda r=root: self._pci_root(r)))  # type: ignore[misc]
        out["virtual"] = _Dir(self._virtual)
        return out

    def _pci_root(self, root: str) -> dict[str, _Node]:
        return {
            pdev.bdf: _Dir(lambda p=pdev: self._device_dir(p))  # type: ignore[misc]
            for pdev in self.system.devices.values()
            if pdev.parent is None and pdev.sysfs_path.split("/")[3] == root
        }

    def _virtual(self) -> dict[str, _Node]:
        out: dict[str, _Node] = {}
        iommu = self.system.iommu
        if iommu is not None:
            out["iommu"] = _Dir(lambda: {iommu.name: _Dir(self._iommu_dev_dir)})
        if self._vfio_group_devs():  # the class's folder appears with its first device
            out["vfio"] = _Dir(self._virtual_vfio)
        if self._live_holders():
            out["block"] = _Dir(lambda: {
                h["name"]: _Dir(lambda h=h: self._holder_dir(h))  # type: ignore[misc]
                for h in self._live_holders()})
        misc = self._misc_devices()
        if misc:
            out["misc"] = _Dir(lambda: {
                name: self._class_device("/sys/devices/virtual/misc", name, "misc", dev)
                for name, dev in self._misc_devices().items()})
        return out

    def _class_device(self, parent: str, name: str, cls: str, dev: str) -> _Dir:
        """A class device's folder: its device number and subsystem link."""
        nodes: dict[str, _Node] = {
            "dev": _Attr(show=_text(f"{dev}\n")),
            "subsystem": _Link(self._rel(f"{parent}/{name}", f"/sys/class/{cls}")),
        }
        return _Dir(lambda: nodes)

    def _misc_devices(self) -> dict[str, str]:
        """Misc character devices: name -> "major:minor"."""
        out = {}
        if self.system.modules["vfio"]:
            out["vfio"] = f"{MISC_MAJOR}:{VFIO_MINOR}"
        if self.system.path_exists("/dev/iommu"):
            out["iommu"] = f"{MISC_MAJOR}:{IOMMUFD_MINOR}"
        return out

    def _vfio_group_devs(self) -> dict[str, str]:
        """Live vfio groups: node name -> "major:minor"."""
        groups = sorted(self.system.vfio_groups(), key=lambda g: g.id)
        return {g.name: f"{VFIO_GROUP_MAJOR}:{i}" for i, g in enumerate(groups)}

    def _virtual_vfio(self) -> dict[str, _Node]:
        # vfio_group_alloc: class "vfio", no parent, named N or noiommu-N
        return {name: self._class_device("/sys/devices/virtual/vfio", name, "vfio", dev)
                for name, dev in self._vfio_group_devs().items()}

    def _iommu_dev_dir(self) -> dict[str, _Node]:
        iommu = self.system.iommu
        assert iommu is not None
        base = f"/sys/devices/virtual/iommu/{iommu.name}"

        def devices() -> dict[str, _Node]:
            return {p.bdf: _Link(self._rel(base + "/devices", p.sysfs_path))
                    for p in self.system.devices.values()
                    if p.group is not None and p.group.name != "vfio-noiommu"}

        return {"devices": _Dir(devices)}

    def _device_dir(self, pdev: PciDevice) -> dict[str, _Node]:
        base = pdev.sysfs_path
        out: dict[str, _Node] = {
            "vendor": _Attr(show=lambda: f"0x{pdev.vendor:04x}\n".encode()),
            "device": _Attr(show=lambda: f"0x{pdev.device:04x}\n".encode()),
            "subsystem_vendor": _Attr(show=lambda: f"0x{pdev.subsystem_vendor:04x}\n".encode()),
            "subsystem_device": _Attr(show=lambda: f"0x{pdev.subsystem_device:04x}\n".encode()),
            "revision": _Attr(show=lambda: f"0x{pdev.revision:02x}\n".encode()),
            "class": _Attr(show=lambda: f"0x{pdev.class_code:06x}\n".encode()),
            "config": _Attr(show=pdev.config_bytes),
            "resource": _Attr(show=lambda: self._resource_show(pdev)),
            "modalias": _Attr(show=lambda: self._modalias(pdev)),
            "enable": _Attr(show=lambda: f"{pdev.enable_cnt}\n".encode(),
                            store=lambda v: self._enable_store(pdev, v)),
            "numa_node": _Attr(show=lambda: f"{pdev.numa_node}\n".encode(),
                               store=lambda v: self._numa_node_store(pdev, v)),
            "driver_override": _Attr(
                show=lambda: f"{pdev.driver_override if pdev.driver_override is not None else '(null)'}\n".encode(),
                store=lambda v: self._driver_override_store(pdev, v)),
            "subsystem": _Link(self._rel(base, "/sys/bus/pci")),
        }
        if self._supported_reset_methods(pdev):
            # pci_dev_reset_attr_is_visible / reset_method: only with a reset method
            out["reset_method"] = _Attr(show=lambda: self._reset_method_show(pdev),
                                        store=lambda v: self._reset_method_store(pdev, v))
            out["reset"] = _Attr(store=lambda v: self._reset_store(pdev, v))
        if pdev.driver is not None:
            out["driver"] = _Link(self._rel(base, f"/sys/bus/pci/drivers/{pdev.driver}"))
        if pdev.group is not None:
            out["iommu_group"] = _Link(self._rel(base, f"/sys/kernel/iommu_groups/{pdev.group.id}"))
            if self.system.iommu is not None and pdev.group.name != "vfio-noiommu":
                out["iommu"] = _Link(self._rel(
                    base, f"/sys/devices/virtual/iommu/{self.system.iommu.name}"))
        cdev = pdev.vfio_cdev_name
        if cdev is not None:
            index = pdev.vfio_index
            out["vfio-dev"] = _Dir(lambda: {cdev: _Dir(lambda: {
                "dev": _Attr(show=_text(f"{VFIO_CDEV_MAJOR}:{index}\n")),
                "subsystem": _Link(self._rel(f"{base}/vfio-dev/{cdev}", "/sys/class/vfio-dev")),
            })})
        out.update(self._sriov_nodes(pdev))
        if pdev.bridge is not None:
            sec = pdev.bridge["secondary_bus"]
            sub = max([sec] + [c.bus for c in self._descendants(pdev)])
            out["secondary_bus_number"] = _Attr(show=_text(f"{sec}\n"))
            out["subordinate_bus_number"] = _Attr(show=_text(f"{sub}\n"))
        for child in pdev.children:
            out[child.bdf] = _Dir(lambda c=child: self._device_dir(c))  # type: ignore[misc]
        out.update(self._host_device_nodes(pdev))
        return out

    @staticmethod
    def _descendants(pdev: PciDevice) -> list[PciDevice]:
        out = []
        stack = list(pdev.children)
        while stack:
            d = stack.pop()
            out.append(d)
            stack.extend(d.children)
        return out

    # /sys/kernel/iommu_groups
    def _iommu_groups(self) -> dict[str, _Node]:
        return {str(gid): _Dir(lambda g=group: self._group_dir(g))  # type: ignore[misc]
                for gid, group in self.system.groups.items()}

    def _group_dir(self, group: IommuGroup) -> dict[str, _Node]:
        base = f"/sys/kernel/iommu_groups/{group.id}"

        def devices() -> dict[str, _Node]:
            return {p.bdf: _Link(self._rel(base + "/devices", p.sysfs_path)) for p in group.devices}

        out: dict[str, _Node] = {
            "devices": _Dir(devices),
            "reserved_regions": _Attr(show=lambda: self._reserved_regions_show(group)),
            "type": _Attr(show=lambda: self._group_type_show(group),
                          store=lambda v: self._group_type_store(group, v)),
        }
        if group.name is not None:
            out["name"] = _Attr(show=lambda: f"{group.name}\n".encode())
        return out

    # /sys/class
    def _classes(self) -> dict[str, _Node]:
        out: dict[str, _Node] = {"iommu": _Dir(self._class_iommu)}
        if self.system.modules["vfio"]:
            # vfio_group_init / vfio_init register both classes with the module
            out["vfio"] = _Dir(lambda: {
                name: _Link(self._rel("/sys/class/vfio", f"/sys/devices/virtual/vfio/{name}"))
                for name in self._vfio_group_devs()})
            out["vfio-dev"] = _Dir(self._class_vfio_dev)
        if self._misc_devices():
            out["misc"] = _Dir(lambda: {
                name: _Link(self._rel("/sys/class/misc", f"/sys/devices/virtual/misc/{name}"))
                for name in self._misc_devices()})
        if self._host_entries("net"):
            out["net"] = _Dir(lambda: {
                e["name"]: _Link(self._rel("/sys/class/net",
                                           f"{pdev.sysfs_path}/net/{e['name']}"))
                for pdev, e in self._host_entries("net")})
        return out

    # -- what the host uses (the topology's host section) --------------------------------
    def _host(self) -> dict[str, Any]:
        """The system's ``host`` section (empty for a system without one)."""
        host: dict[str, Any] = getattr(self.system, "host", None) or {}
        return host

    def _host_entries(self, key: str, pdev: PciDevice | None = None
                      ) -> list[tuple[PciDevice, dict[str, Any]]]:
        """``host[key]`` entries (of ``pdev``, or all) whose device is bound
        to the driver the topology starts it with: a driver's disks and
        interfaces go away when it lets go of the device."""
        out = []
        for e in self._host().get(key, []):
            dev = self.system.devices.get(e["device"])
            if dev is None or (pdev is not None and dev is not pdev):
                continue
            if dev.driver is not None and dev.driver == dev.spec.get("driver"):
                out.append((dev, e))
        return out

    def _live_holders(self) -> list[dict[str, Any]]:
        return [h for _pdev, e in self._host_entries("block") for h in e["holders"]]

    def _holder_links(self, holders: list[dict[str, Any]], of: str) -> dict[str, _Node]:
        return {h["name"]: _Link(f"/sys/devices/virtual/block/{h['name']}")
                for h in holders if h["of"] == of}

    def _disk_dir(self, pdev: PciDevice, e: dict[str, Any]) -> dict[str, _Node]:
        holders = e["holders"]
        out: dict[str, _Node] = {
            "dev": _Attr(show=_text(f"{e['dev']}\n")),
            "holders": _Dir(lambda: self._holder_links(holders, e["name"])),
        }
        for number, part in enumerate(e["partitions"], 1):
            out[part["name"]] = _Dir(functools.partial(self._partition_dir, part, number,
                                                       holders))
        return out

    def _partition_dir(self, part: dict[str, Any], number: int,
                       holders: list[dict[str, Any]]) -> dict[str, _Node]:
        return {
            "dev": _Attr(show=_text(f"{part['dev']}\n")),
            "partition": _Attr(show=_text(f"{number}\n")),
            "holders": _Dir(lambda: self._holder_links(holders, part["name"])),
        }

    def _holder_dir(self, h: dict[str, Any]) -> dict[str, _Node]:
        out: dict[str, _Node] = {
            "dev": _Attr(show=_text(f"{h['dev']}\n")),
            "holders": _Dir(lambda: self._holder_links(self._live_holders(), h["name"])),
        }
        if "dm_name" in h:
            out["dm"] = _Dir(lambda: {"name": _Attr(show=_text(f"{h['dm_name']}\n"))})
        return out

    def _host_device_nodes(self, pdev: PciDevice) -> dict[str, _Node]:
        """A device's disks (``block/``), interfaces (``net/``) and 9p tag."""
        out: dict[str, _Node] = {}
        disks = self._host_entries("block", pdev)
        if disks:
            out["block"] = _Dir(lambda: {
                e["name"]: _Dir(lambda e=e: self._disk_dir(pdev, e))  # type: ignore[misc]
                for _p, e in disks})
        nets = self._host_entries("net", pdev)
        if nets:
            # IFF_UP | IFF_BROADCAST | IFF_MULTICAST, or the same without IFF_UP
            out["net"] = _Dir(lambda: {
                e["name"]: _Dir(functools.partial(
                    self._attrs, {"flags": "0x1003\n" if e["up"] else "0x1002\n"}))
                for _p, e in nets})
        for i, (_p, e) in enumerate(self._host_entries("virtio_fs", pdev)):
            out[f"virtio{i}"] = _Dir(functools.partial(self._attrs,
                                                       {"mount_tag": f"{e['tag']}\0"}))
        return out

    @staticmethod
    def _attrs(values: dict[str, str]) -> dict[str, _Node]:
        """A folder of read-only attributes with fixed contents."""
        return {name: _Attr(show=_text(text)) for name, text in values.items()}

    def _sys_block(self) -> dict[str, _Node]:
        out: dict[str, _Node] = {}
        for pdev, e in self._host_entries("block"):
            out[e["name"]] = _Link(self._rel("/sys/block",
                                             f"{pdev.sysfs_path}/block/{e['name']}"))
        for h in self._live_holders():
            out[h["name"]] = _Link(self._rel("/sys/block",
                                             f"/sys/devices/virtual/block/{h['name']}"))
        return out

    def _host_proc(self) -> dict[str, object]:
        """/proc/self/mountinfo, /proc/swaps and /proc/net/route{,6}, when
        the topology says what the host uses."""
        host = self._host()
        if not any(host.values()):
            return {}

        def esc(path: str) -> str:  # as show_mountinfo escapes (mangle)
            return "".join(f"\\{ord(c):03o}" if c in " \t\n\\" else c for c in path)

        mountinfo = "".join(
            f"{20 + i} 1 {m['dev']} / {esc(m['target'])} rw - {m['fstype']} "
            f"{esc(m['source'])} rw\n" for i, m in enumerate(host["mounts"]))
        swaps = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n" + "".join(
            f"{path}\tpartition\t1048572\t\t0\t\t-2\n" for path in host["swaps"])
        route = ("Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\t"
                 "MTU\tWindow\tIRTT\n")
        for _pdev, e in self._host_entries("net"):
            for n in range(e["routes"]):
                route += (f"{e['name']}\t{n:08X}\t00000000\t0001\t0\t0\t0\t00FFFFFF\t"
                          "0\t0\t0\n")
        return {"self": {"mountinfo": mountinfo.encode()}, "swaps": swaps.encode(),
                "net": {"route": route.encode(), "ipv6_route": b""}}

    def _class_vfio_dev(self) -> dict[str, _Node]:
        # the vfio_device's parent is the PCI device: .../<bdf>/vfio-dev/vfioN
        out: dict[str, _Node] = {}
        for pdev in self.system.devices.values():
            name = pdev.vfio_cdev_name
            if name is not None:
                out[name] = _Link(self._rel("/sys/class/vfio-dev",
                                            f"{pdev.sysfs_path}/vfio-dev/{name}"))
        return out

    # SR-IOV (drivers/pci/iov.c)
    def _vfs(self, pf: PciDevice) -> list[PciDevice]:
        """The enabled VFs of ``pf``, in routing-ID order (virtfn0 first)."""
        return sorted((d for d in self.system.devices.values() if d.spec.get("physfn") == pf.bdf),
                      key=lambda d: d.bdf)

    def _sriov_nodes(self, pdev: PciDevice) -> dict[str, _Node]:
        out: dict[str, _Node] = {}
        base = pdev.sysfs_path
        physfn = pdev.spec.get("physfn")
        if physfn is not None and physfn in self.system.devices:
            out["physfn"] = _Link(self._rel(base, self.system.devices[physfn].sysfs_path))
        total = pdev.spec.get("sriov_totalvfs")
        if total is None:
            return out
        vfs = self._vfs(pdev)
        out["sriov_totalvfs"] = _Attr(show=_text(f"{total}\n"))
        out["sriov_numvfs"] = _Attr(show=lambda: f"{len(self._vfs(pdev))}\n".encode(),
                                    store=lambda v: self._sriov_numvfs_store(pdev, v))
        for i, vf in enumerate(vfs):
            out[f"virtfn{i}"] = _Link(self._rel(base, vf.sysfs_path))
        return out

    def _sriov_numvfs_store(self, pdev: PciDevice, value: str) -> None:
        # sriov_numvfs_store
        try:
            num = _parse_uint(value, 16)
        except OSError:
            raise errno_error(errno.EINVAL, f"{value!r} is not a number") from None
        if num > int(pdev.spec.get("sriov_totalvfs", 0)):
            raise errno_error(errno.ERANGE, f"{pdev.bdf} supports {pdev.spec['sriov_totalvfs']} VFs")
        if num == len(self._vfs(pdev)):
            return
        if pdev.driver is None:
            raise errno_error(errno.ENOENT, f"no driver bound to {pdev.bdf}: cannot configure SR-IOV")
        # the fake's drivers have no sriov_configure callback
        raise errno_error(errno.ENOENT, f"{pdev.driver} does not support SR-IOV configuration "
                                        "through sysfs")

    # /sys/class/iommu
    def _class_iommu(self) -> dict[str, _Node]:
        iommu = self.system.iommu
        if iommu is None:
            return {}
        return {iommu.name: _Link(self._rel("/sys/class/iommu",
                                            f"/sys/devices/virtual/iommu/{iommu.name}"))}

    # /sys/module
    def _module_names(self) -> list[str]:
        mods = self.system.modules
        names = []
        if mods["vfio"]:
            names.append("vfio")
        if mods["vfio_pci"]:
            names += ["vfio_pci", "vfio_pci_core"]
        if mods["vfio_iommu_type1"]:
            names.append("vfio_iommu_type1")
        if mods["iommufd"]:
            names.append("iommufd")
        if mods["pci_stub"]:
            names.append("pci_stub")
        return names

    def _modules(self) -> dict[str, _Node]:
        return {name: _Dir(lambda n=name: self._module_dir(n))  # type: ignore[misc]
                for name in self._module_names()}

    def _module_dir(self, name: str) -> dict[str, _Node]:
        params: dict[str, _Node] = {}
        system = self.system
        if name == "vfio":
            params["enable_unsafe_noiommu_mode"] = self._bool_param(
                lambda: system.noiommu, lambda v: setattr(system, "noiommu", v))
        elif name == "vfio_iommu_type1":
            t1 = system.type1_params
            for key in ("allow_unsafe_interrupts", "disable_hugepages"):
                params[key] = self._bool_param(lambda k=key: bool(t1[k]),  # type: ignore[misc]
                                               lambda v, k=key: t1.__setitem__(k, v))  # type: ignore[misc]
            params["dma_entry_limit"] = _Attr(
                show=lambda: f"{t1['dma_entry_limit']}\n".encode(),
                store=lambda v: t1.__setitem__("dma_entry_limit", _parse_uint(v)))
        elif name == "vfio_pci":
            vp = self.vfio_pci_params
            for key in ("nointxmask", "disable_idle_d3", "enable_sriov"):
                params[key] = self._bool_param(lambda k=key: vp[k],  # type: ignore[misc]
                                               lambda v, k=key: vp.__setitem__(k, v))  # type: ignore[misc]
            params["disable_denylist"] = _Attr(
                show=lambda: b"Y\n" if vp["disable_denylist"] else b"N\n")
        elif name == "iommufd":
            ip = self.iommufd_params
            params["allow_unsafe_interrupts"] = self._bool_param(
                lambda: ip["allow_unsafe_interrupts"],
                lambda v: ip.__setitem__("allow_unsafe_interrupts", v))
        out: dict[str, _Node] = {}
        if params:
            out["parameters"] = _Dir(lambda: params)
        return out

    @staticmethod
    def _bool_param(get: Callable[[], bool], put: Callable[[bool], None]) -> _Attr:
        return _Attr(show=lambda: b"Y\n" if get() else b"N\n",
                     store=lambda v: put(_parse_bool(v)))

    # -- attribute formats ---------------------------------------------------------------
    def _resource_show(self, pdev: PciDevice) -> bytes:
        # resource_show: 13 lines (BARs, ROM, IOV BARs) for endpoints, 17
        # with the bridge windows
        count = 17 if pdev.is_bridge else 13
        rows = [(0, 0, 0)] * count
        for bar in pdev.bars:
            index = int(bar["index"])
            start = pdev.bar_addresses.get(index, 0)
            size = int(bar["size"])
            if bar["type"] == "io":
                flags = _IORESOURCE_IO | _IORESOURCE_SIZEALIGN | 0x1
            else:
                flags = _IORESOURCE_MEM | _IORESOURCE_SIZEALIGN
                if bar["type"] == "mem64":
                    flags |= _IORESOURCE_MEM_64 | 0x4
                if bar["prefetchable"]:
                    flags |= _IORESOURCE_PREFETCH | 0x8
            rows[index] = (start, start + size - 1, flags)
        return "".join(f"0x{s:016x} 0x{e:016x} 0x{f:016x}\n" for s, e, f in rows).encode()

    @staticmethod
    def _modalias(pdev: PciDevice) -> bytes:
        c = pdev.class_code
        return (f"pci:v{pdev.vendor:08X}d{pdev.device:08X}sv{pdev.subsystem_vendor:08X}"
                f"sd{pdev.subsystem_device:08X}bc{(c >> 16) & 0xFF:02X}sc{(c >> 8) & 0xFF:02X}"
                f"i{c & 0xFF:02X}\n").encode()

    @staticmethod
    def _reserved_regions_show(group: IommuGroup) -> bytes:
        # iommu_group_show_resv_regions
        return "".join(f"0x{r.start:016x} 0x{r.last:016x} {r.type}\n"
                       for r in group.reserved_regions).encode()

    def _group_type_show(self, group: IommuGroup) -> bytes:
        # iommu_group_show_type: "unknown" without a default domain
        if group.name == "vfio-noiommu" or self.system.iommu is None:
            return b"unknown\n"
        return f"{group.default_domain_type}\n".encode()

    def _group_type_store(self, group: IommuGroup, value: str) -> None:
        # iommu_group_store_type
        if group.name == "vfio-noiommu" or self.system.iommu is None:
            raise errno_error(errno.EINVAL, "the group has no default domain")
        wanted = {"identity": "identity", "DMA": "DMA", "DMA-FQ": "DMA-FQ",
                  "auto": self.system.iommu.default_domain}
        for name, dtype in wanted.items():
            if _streq(value, name):
                break
        else:
            raise errno_error(errno.EINVAL, f"{value!r} is not a domain type")
        if dtype == "DMA-FQ" and group.default_domain_type == "DMA":
            group.default_domain_type = dtype
            return
        if not group.devices or group.owner_cnt:
            # iommu_group_store_type: EPERM while a driver uses the group
            raise errno_error(errno.EPERM, f"IOMMU group {group.id} is in use")
        group.default_domain_type = dtype

    # -- reset methods (drivers/pci/pci.c) ------------------------------------------------
    def _supported_reset_methods(self, pdev: PciDevice) -> list[str]:
        """pci_init_reset_methods: the device's methods that can work for
        it, where it sits.  A model's capabilities decide ``flr``, ``af_flr``
        and ``pm``; the position decides ``bus`` and ``cxl_bus``."""
        model = pdev.model
        out = []
        for method in pdev.supported_reset_methods:
            if method == "flr" and model is not None and not getattr(model, "has_flr", False):
                continue  # pcie_reset_flr: FLR in the Express Device Capabilities
            if method == "af_flr" and model is not None and not self._af_flr(pdev):
                continue  # pci_af_flr: an AF capability with TP and FLR
            if method == "pm" and model is not None and not self._pm_reset(pdev):
                continue  # pci_pm_reset: a PM capability without No_Soft_Reset
            if method in ("bus", "cxl_bus") and not self._bus_reset_possible(pdev):
                continue  # pci_parent_bus_reset: never on a root bus
            out.append(method)
        return out

    @staticmethod
    def _bus_reset_possible(pdev: PciDevice) -> bool:
        """A secondary bus reset resets only this function: it sits below a
        bridge, has no other function on its bus and no bus of its own."""
        parent = pdev.parent
        if parent is None or pdev.children or pdev.bridge is not None:
            return False
        return all(d is pdev for d in parent.children)

    @staticmethod
    def _capabilities(cfg: bytes) -> dict[int, int]:
        """Standard capability ID -> offset (the first of each)."""
        caps: dict[int, int] = {}
        if len(cfg) < 0x40 or not cfg[_PCI_STATUS] & _PCI_STATUS_CAP_LIST:
            return caps
        pos, seen = cfg[_PCI_CAPABILITY_LIST] & 0xFC, 0
        while 0x40 <= pos <= len(cfg) - 2 and seen < 48:
            caps.setdefault(cfg[pos], pos)
            pos, seen = cfg[pos + 1] & 0xFC, seen + 1
        return caps

    def _af_flr(self, pdev: PciDevice) -> bool:
        cfg = pdev.config_bytes()
        pos = self._capabilities(cfg).get(_PCI_CAP_ID_AF)
        if pos is None or pos + _PCI_AF_CAP >= len(cfg):
            return False
        want = _PCI_AF_CAP_TP | _PCI_AF_CAP_FLR
        return cfg[pos + _PCI_AF_CAP] & want == want

    @staticmethod
    def _pm_reset(pdev: PciDevice) -> bool:
        model = pdev.model
        pm = getattr(model, "pm_offset", None)
        if pm is None:
            return False
        ctrl = int.from_bytes(pdev.config_bytes()[pm + _PCI_PM_CTRL:pm + _PCI_PM_CTRL + 2], "little")
        return not ctrl & _PCI_PM_CTRL_NO_SOFT_RESET

    def enabled_reset_methods(self, pdev: PciDevice) -> list[str]:
        """The methods a reset of ``pdev`` tries, best first: those enabled
        in ``reset_method`` that can work where the device sits (empty: the
        device cannot be reset, ``pci_reset_function`` fails)."""
        supported = self._supported_reset_methods(pdev)
        return [m for m in pdev.reset_methods if m in supported]

    def _reset_method_show(self, pdev: PciDevice) -> bytes:
        methods = self.enabled_reset_methods(pdev)
        if not methods:
            return b""
        return (" ".join(methods) + "\n").encode()

    def _reset_method_store(self, pdev: PciDevice, value: str) -> None:
        # reset_method_store
        supported = self._supported_reset_methods(pdev)
        if _streq(value, ""):
            pdev.reset_methods = []
            return
        if _streq(value, "default"):
            pdev.reset_methods = supported
            return
        methods: list[str] = []
        for name in value.split(" "):
            if _streq(name, ""):
                continue
            name = name.strip()
            if name not in _RESET_METHODS:
                raise errno_error(errno.EINVAL, f"invalid reset method {name!r}")
            if name not in supported:
                raise errno_error(errno.EINVAL, f"unsupported reset method {name!r}")
            if len(methods) == len(_RESET_METHODS) - 1:
                raise errno_error(errno.EINVAL, "too many reset methods")
            methods.append(name)
        pdev.reset_methods = methods

    def _reset_store(self, pdev: PciDevice, value: str) -> None:
        # reset_store: kstrtoul, then pci_reset_function for a non-zero value
        val = _parse_uint(value, 64)
        if val != 1:
            raise errno_error(errno.EINVAL, "write 1 to reset")
        if not self.enabled_reset_methods(pdev):
            raise errno_error(errno.ENOTTY, "no reset method enabled")
        reset = getattr(pdev.model, "reset", None)
        if callable(reset):
            reset()

    def _enable_store(self, pdev: PciDevice, value: str) -> None:
        # enable_store
        try:
            val = _parse_uint(value, 64)
        except OSError:
            raise errno_error(errno.EINVAL, f"{value!r} is not a number") from None
        if pdev.driver is not None:
            # enable_store: EBUSY while a driver is bound
            raise errno_error(errno.EBUSY, f"{pdev.bdf} is bound to {pdev.driver}")
        if val:
            pdev.enable_cnt += 1
        elif pdev.enable_cnt:
            pdev.enable_cnt -= 1
        else:
            raise errno_error(errno.EIO, f"{pdev.bdf} is not enabled")

    def _numa_node_store(self, pdev: PciDevice, value: str) -> None:
        # numa_node_store
        try:
            node = _parse_int(value)
        except OSError:
            raise errno_error(errno.EINVAL, f"{value!r} is not a number") from None
        if (node < 0 and node != -1) or node >= 1024:
            raise errno_error(errno.EINVAL, f"node {node} is out of range")
        if node != -1 and node >= self.system.numa_nodes:
            raise errno_error(errno.EINVAL, f"node {node} is not online")
        pdev.numa_node = node

    @staticmethod
    def _driver_override_store(pdev: PciDevice, value: str) -> None:
        # __device_set_driver_override
        if len(value) >= PAGE_SIZE - 1:
            raise errno_error(errno.EINVAL, "driver_override is too long")
        value = value.split("\0", 1)[0]
        value = value.split("\n", 1)[0]
        pdev.driver_override = value or None

    # -- the driver core's sysfs files ----------------------------------------------------
    def _find_device(self, buf: str) -> PciDevice | None:
        """bus_find_device_by_name: sysfs_streq on the device name."""
        for bdf, pdev in self.system.devices.items():
            if _streq(bdf, buf):
                return pdev
        return None

    def _bind_store(self, drv: Driver, value: str) -> None:
        pdev = self._find_device(value)
        # bind_store: ENODEV for an unknown device or one the driver does not match
        if pdev is None or not self.system.driver_matches(drv, pdev):
            raise errno_error(errno.ENODEV, f"{value.strip()!r} does not match {drv.name}")
        self.system.device_driver_attach(drv, pdev)

    def _unbind_store(self, drv: Driver, value: str) -> None:
        pdev = self._find_device(value)
        # unbind_store: ENODEV unless the device is bound to this driver
        if pdev is None or pdev.driver != drv.name:
            raise errno_error(errno.ENODEV, f"{value.strip()!r} is not bound to {drv.name}")
        self.system.device_release_driver(pdev)

    def _drivers_probe_store(self, value: str) -> None:
        pdev = self._find_device(value)
        if pdev is None:
            # drivers_probe_store: ENODEV for an unknown device
            raise errno_error(errno.ENODEV, f"no device {value.strip()!r}")
        # drivers_probe_store: EINVAL when the probe failed before the driver ran
        if self.system.device_attach(pdev) < 0:
            raise errno_error(errno.EINVAL, f"probing {pdev.bdf} failed")

    def _drivers_autoprobe_store(self, value: str) -> None:
        self.drivers_autoprobe = not value.startswith("0")

    def _new_id_store(self, drv: Driver, value: str) -> None:
        fields = _scan_hex(value, 7)
        # new_id_store: EINVAL with fewer than vendor and device
        if len(fields) < 2:
            raise errno_error(errno.EINVAL, f"new_id needs 'vendor device', got {value!r}")
        names = ("vendor", "device", "subvendor", "subdevice", "class_", "class_mask", "driver_data")
        kwargs = {"subvendor": PCI_ANY_ID, "subdevice": PCI_ANY_ID}
        kwargs.update(dict(zip(names, fields)))
        pid = PciId(**kwargs)  # type: ignore[arg-type]
        if len(fields) != 7:
            for sid in drv.ids:
                if not sid.override_only and sid.matches_id(pid):
                    # new_id_store: EEXIST when the static table already matches
                    raise errno_error(errno.EEXIST, f"{drv.name} already handles {value.strip()}")
        if drv.ids and not any(sid.driver_data == pid.driver_data for sid in drv.ids):
            # new_id_store: EINVAL for driver_data no static entry uses
            raise errno_error(errno.EINVAL, f"driver_data {pid.driver_data:#x} is not used by {drv.name}")
        if len(fields) != 7:
            for did in drv.dynids:
                if did.matches_id(pid):
                    # do_pci_add_dynid: EEXIST for a duplicate dynamic ID
                    raise errno_error(errno.EEXIST, f"{drv.name} already has {value.strip()}")
        drv.dynids.append(pid)
        self.system.driver_attach(drv)

    def _remove_id_store(self, drv: Driver, value: str) -> None:
        fields = _scan_hex(value, 6)
        # remove_id_store: EINVAL with fewer than vendor and device
        if len(fields) < 2:
            raise errno_error(errno.EINVAL, f"remove_id needs 'vendor device', got {value!r}")
        vendor, device = fields[0], fields[1]
        subvendor = fields[2] if len(fields) > 2 else PCI_ANY_ID
        subdevice = fields[3] if len(fields) > 3 else PCI_ANY_ID
        class_ = fields[4] if len(fields) > 4 else 0
        class_mask = fields[5] if len(fields) > 5 else 0
        for did in drv.dynids:
            if (did.vendor == vendor and did.device == device
                    and (subvendor == PCI_ANY_ID or did.subvendor == subvendor)
                    and (subdevice == PCI_ANY_ID or did.subdevice == subdevice)
                    and not ((did.class_ ^ class_) & class_mask)):
                drv.dynids.remove(did)
                return
        # remove_id_store: ENODEV when no dynamic ID matches
        raise errno_error(errno.ENODEV, f"{drv.name} has no dynamic ID {value.strip()}")
