"""The simulated /sys of a fake :class:`~pyvfio.fake.machine.system.System`.

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
pci_init_reset_methods, :mod:`.resets`).

The host files outside /sys (/proc, the kernel build's files) are served
through the same calls (:mod:`.procfs`, from the topology's ``kernel``
section: :attr:`Sysfs.kernel`, and its ``host`` section).

This module holds the tree's root, path resolution and the class folders
of vfio; the folders of the other parts are built by :mod:`.pci_sysfs`,
:mod:`.bus_sysfs`, :mod:`.iommu_sysfs`, :mod:`.iov`, :mod:`.resets`,
:mod:`.host_use` and :mod:`.module_sysfs` from the nodes of :mod:`.kernfs`.

Not simulated: writes to ``config`` (read-only here), changing the number
of VFs (``sriov_numvfs`` answers as for a PF driver without
``sriov_configure``), ``remove``/``rescan``, uevents.
"""

from __future__ import annotations

import errno
import functools
import os
from typing import TYPE_CHECKING, Any

from . import topology as _topology
from ..core import errno_error
from .bus_sysfs import bus_pci
from .chrdev import IOMMUFD_MINOR, MISC_MAJOR, VFIO_GROUP_MAJOR, VFIO_MINOR
from .host_use import holder_dir, host_entries, live_holders, sys_block
from .iommu_sysfs import class_iommu, iommu_device_dir, iommu_groups_dir
from .kernfs import Attr, Dir, Link, Node, rel, show_text
from .module_sysfs import module_root
from .pci_sysfs import device_lookup, device_node, pci_root_dir
from .procfs import host_path
from .resets import enabled_reset_methods

if TYPE_CHECKING:
    from .pci_device import PciDevice
    from .system import System

__all__ = ["Sysfs"]

#: Path components that are not an entry's name ("", ".", "..").
_NOT_NAMES = frozenset(("", ".", ".."))


class Sysfs:
    """The /sys tree of one :class:`~pyvfio.fake.machine.system.System`."""

    def __init__(self, system: System) -> None:
        self.system = system
        #: drivers_autoprobe of the PCI bus.
        self.drivers_autoprobe = True
        self.vfio_pci_params = {"nointxmask": False, "disable_idle_d3": False,
                                "enable_sriov": False, "disable_denylist": False}
        self._root_cache: dict[str, Node] | None = None
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
        host = host_path(self, path)
        if host is not None:
            if isinstance(host, dict):
                raise errno_error(errno.EISDIR, path)
            return host
        node = self._resolve(path, follow=True)
        if isinstance(node, Dir):
            raise errno_error(errno.EISDIR, path)
        assert isinstance(node, Attr)
        if node.show is None:
            # kernfs_fop_open: EACCES when opening a write-only attribute to read
            raise errno_error(errno.EACCES, f"{path} is write-only")
        return node.show()

    def write(self, path: str, value: str) -> None:
        """One write(2) of ``value`` to an attribute."""
        node = self._resolve(path, follow=True)
        if isinstance(node, Dir):
            raise errno_error(errno.EISDIR, path)
        assert isinstance(node, Attr)
        if node.store is None:
            # kernfs_fop_open: EACCES when opening a read-only attribute to write
            raise errno_error(errno.EACCES, f"{path} is read-only")
        if not value:
            return  # a zero-length write never reaches the store function
        node.store(value)

    def listdir(self, path: str) -> list[str]:
        """Names in a directory, sorted (ENOENT/ENOTDIR as the kernel gives them)."""
        host = host_path(self, path)
        if host is not None:
            if not isinstance(host, dict):
                raise errno_error(errno.ENOTDIR, path)
            return sorted(host)
        node = self._resolve(path, follow=True)
        if not isinstance(node, Dir):
            raise errno_error(errno.ENOTDIR, path)
        return sorted(node.children())

    def readlink(self, path: str) -> str:
        """Target of a symbolic link (EINVAL when ``path`` is not a link)."""
        node = self._resolve(path, follow=False)
        if not isinstance(node, Link):
            raise errno_error(errno.EINVAL, f"{path} is not a symbolic link")
        return node.target

    def exists(self, path: str) -> bool:
        """Whether ``path`` exists (links followed)."""
        try:
            if host_path(self, path) is not None:
                return True
            self._resolve(path, follow=True)
        except OSError:
            return False
        return True

    def is_dir(self, path: str) -> bool:
        """Whether ``path`` is a directory (links followed)."""
        try:
            return isinstance(self._resolve(path, follow=True), Dir)
        except OSError:
            return False

    def enabled_reset_methods(self, pdev: PciDevice) -> list[str]:
        """The methods a reset of ``pdev`` tries, best first: those enabled
        in ``reset_method`` that can work where the device sits (empty: the
        device cannot be reset, ``pci_reset_function`` fails)."""
        return enabled_reset_methods(pdev)

    # -- path resolution -------------------------------------------------------------
    def _resolve(self, path: str, follow: bool) -> Node:
        if not path.startswith("/"):
            raise errno_error(errno.ENOENT, f"{path}: sysfs paths are absolute")
        parts = path.split("/")
        if len(parts) == 7 and parts[1] == "sys" and parts[2] == "bus" and parts[3] == "pci" \
                and parts[4] == "devices" and parts[6] not in _NOT_NAMES:
            # /sys/bus/pci/devices/<bdf>/<name>, the most looked-at kind of
            # path: the entry of the device's folder, as the walk below finds
            # it (a link it ends on, when followed, takes the walk)
            pdev = self.system.devices.get(parts[5])
            if pdev is not None:
                entry = device_lookup(self, pdev, parts[6])
                if entry is None:
                    raise errno_error(errno.ENOENT, path)
                if not (follow and isinstance(entry, Link)):
                    return entry
        elif len(parts) == 6 and parts[1] == "sys" and parts[2] == "kernel" \
                and parts[3] == "iommu_groups" and parts[4] not in _NOT_NAMES \
                and parts[5] not in _NOT_NAMES:
            # /sys/kernel/iommu_groups/<N>/<name>: the same for a group's entry
            group = iommu_groups_dir(self).lookup(parts[4])
            if group is None:
                raise errno_error(errno.ENOENT, path)
            if isinstance(group, Dir):
                entry = group.lookup(parts[5])
                if entry is None:
                    raise errno_error(errno.ENOENT, path)
                if not (follow and isinstance(entry, Link)):
                    return entry
        parts = [p for p in parts if p and p != "."]
        hops = 0
        devices = self.system.devices
        while True:
            node: Node = Dir(self._root_nodes)
            if not parts or parts[0] != "sys":
                raise errno_error(errno.ENOENT, path)
            if len(parts) > 4 and parts[1] == "bus" and parts[2] == "pci" \
                    and parts[3] == "devices" and (len(parts) > 5 or follow) \
                    and parts[4] in devices:
                # the link /sys/bus/pci/devices/<bdf>, followed as the walk
                # below follows it (the hierarchy is fixed: no hotplug)
                hops += 1
                parts = devices[parts[4]].sysfs_path.split("/")[1:] + parts[5:]
            done: list[str] = ["sys"]
            rest = parts[1:]
            found = self._device_prefix(parts)
            if found is not None:
                # a device's folder by its canonical path: the walk from the
                # root would find it, one folder at a time
                depth, node = found
                done, rest = parts[:depth], parts[depth:]
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
                if not isinstance(node, Dir):
                    raise errno_error(errno.ENOTDIR, path)
                child = node.lookup(name)
                if child is None:
                    raise errno_error(errno.ENOENT, path)
                if isinstance(child, Link) and (rest or follow):
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

    def _device_prefix(self, parts: list[str]) -> tuple[int, Node] | None:
        """The longest prefix of ``parts`` that is the canonical path of a
        PCI device's folder (``sys/devices/pci0000:00/<bdf>/<bdf>...``):
        its length and the folder, or None."""
        if len(parts) < 4 or parts[1] != "devices":
            return None
        devices = self.system.devices
        parent: PciDevice | None = None
        depth = 3
        while depth < len(parts):
            pdev = devices.get(parts[depth])
            if pdev is None or pdev.parent is not parent:
                break
            if parent is None and pdev.sysfs_path.split("/")[3] != parts[2]:
                break
            parent = pdev
            depth += 1
        if parent is None:
            return None
        return depth, device_node(self, parent)

    # -- the tree ------------------------------------------------------------------------
    def _root_nodes(self) -> dict[str, Node]:
        """The entries of /sys, made once: each is a folder whose own
        entries come from the machine's state when looked at."""
        root = self._root_cache
        if root is None:
            root = self._root_cache = self._root()
        return dict(root)

    def _root(self) -> dict[str, Node]:
        return {
            "bus": Dir(lambda: {"pci": Dir(functools.partial(bus_pci, self))}),
            "devices": Dir(self._devices_root, self._devices_lookup),
            "kernel": Dir(lambda: {"iommu_groups": iommu_groups_dir(self)}),
            "class": Dir(self._classes),
            "module": Dir(functools.partial(module_root, self)),
            "block": Dir(functools.partial(sys_block, self)),
        }

    def _devices_root(self) -> dict[str, Node]:
        out: dict[str, Node] = {root: pci_root_dir(self, root) for root in self.system.root_buses}
        out["virtual"] = Dir(self._virtual)
        return out

    def _devices_lookup(self, name: str) -> Node | None:
        if name == "virtual":
            return Dir(self._virtual)
        return pci_root_dir(self, name) if name in self.system.root_buses else None

    def _virtual(self) -> dict[str, Node]:
        out: dict[str, Node] = {}
        iommu = self.system.iommu
        if iommu is not None:
            out["iommu"] = Dir(lambda: {iommu.name: Dir(functools.partial(iommu_device_dir, self))})
        if self._vfio_group_devs():  # the class's folder appears with its first device
            out["vfio"] = Dir(self._virtual_vfio)
        if live_holders(self):
            out["block"] = Dir(lambda: {
                h["name"]: Dir(lambda h=h: holder_dir(self, h))  # type: ignore[misc]
                for h in live_holders(self)})
        misc = self._misc_devices()
        if misc:
            out["misc"] = Dir(lambda: {
                name: self._class_device("/sys/devices/virtual/misc", name, "misc", dev)
                for name, dev in self._misc_devices().items()})
        return out

    def _class_device(self, parent: str, name: str, cls: str, dev: str) -> Dir:
        """A class device's folder: its device number and subsystem link."""
        nodes: dict[str, Node] = {
            "dev": Attr(show=show_text(f"{dev}\n")),
            "subsystem": Link(rel(f"{parent}/{name}", f"/sys/class/{cls}")),
        }
        return Dir(lambda: nodes)

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

    def _virtual_vfio(self) -> dict[str, Node]:
        # vfio_group_alloc: class "vfio", no parent, named N or noiommu-N
        return {name: self._class_device("/sys/devices/virtual/vfio", name, "vfio", dev)
                for name, dev in self._vfio_group_devs().items()}

    def _classes(self) -> dict[str, Node]:
        out: dict[str, Node] = {"iommu": Dir(functools.partial(class_iommu, self))}
        if self.system.modules["vfio"]:
            # vfio_group_init / vfio_init register both classes with the module
            out["vfio"] = Dir(lambda: {
                name: Link(rel("/sys/class/vfio", f"/sys/devices/virtual/vfio/{name}"))
                for name in self._vfio_group_devs()})
            out["vfio-dev"] = Dir(self._class_vfio_dev)
        if self._misc_devices():
            out["misc"] = Dir(lambda: {
                name: Link(rel("/sys/class/misc", f"/sys/devices/virtual/misc/{name}"))
                for name in self._misc_devices()})
        if host_entries(self, "net"):
            out["net"] = Dir(lambda: {
                e["name"]: Link(rel("/sys/class/net",
                                    f"{pdev.sysfs_path}/net/{e['name']}"))
                for pdev, e in host_entries(self, "net")})
        return out

    def _class_vfio_dev(self) -> dict[str, Node]:
        # the vfio_device's parent is the PCI device: .../<bdf>/vfio-dev/vfioN
        out: dict[str, Node] = {}
        for pdev in self.system.devices.values():
            name = pdev.vfio_cdev_name
            if name is not None:
                out[name] = Link(rel("/sys/class/vfio-dev",
                                     f"{pdev.sysfs_path}/vfio-dev/{name}"))
        return out
