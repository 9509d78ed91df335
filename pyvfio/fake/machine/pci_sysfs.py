"""The sysfs folder of a PCI device (drivers/pci/pci-sysfs.c): its IDs,
``config``, ``resource``, ``modalias``, ``enable``, ``numa_node``,
``driver_override`` and links, with the folders other parts add to it
(reset attributes: :mod:`.resets`, SR-IOV: :mod:`.iov`, the vfio cdev,
the host's disks and interfaces: :mod:`.host_use`), and the PCI root
buses under /sys/devices.
"""

from __future__ import annotations

import errno
import functools
from typing import TYPE_CHECKING, Callable

from ..core import errno_error
from .chrdev import VFIO_CDEV_MAJOR
from .host_use import host_device_nodes
from .iov import sriov_lookup, sriov_nodes
from .kernfs import Attr, Dir, Link, Node, rel, show_text
from .kstrtox import parse_int, parse_uint
from .resets import reset_method_show, reset_method_store, reset_store, supported_reset_methods

if TYPE_CHECKING:
    from .pci_device import PciDevice
    from .sysfs import Sysfs

__all__ = ["pci_root_dir", "pci_root", "device_node", "device_dir", "device_lookup"]

#: PAGE_SIZE: what a sysfs write can hold.
PAGE_SIZE = 4096

# struct resource flags as resource_show prints them
_IORESOURCE_IO = 0x00000100
_IORESOURCE_MEM = 0x00000200
_IORESOURCE_PREFETCH = 0x00002000
_IORESOURCE_SIZEALIGN = 0x00040000
_IORESOURCE_MEM_64 = 0x00100000


def pci_root_dir(fs: Sysfs, root: str) -> Dir:
    """/sys/devices/<root>: the folder of root bus ``root`` (``pci0000:00``)."""
    return Dir(functools.partial(pci_root, fs, root), functools.partial(_pci_root_lookup, fs, root))


def _pci_root_lookup(fs: Sysfs, root: str, name: str) -> Node | None:
    pdev = fs.system.devices.get(name)
    if pdev is None or pdev.parent is not None or pdev.sysfs_path.split("/")[3] != root:
        return None
    return device_node(fs, pdev)


def pci_root(fs: Sysfs, root: str) -> dict[str, Node]:
    """The devices on root bus ``root`` (``pci0000:00``) under /sys/devices."""
    return {
        pdev.bdf: device_node(fs, pdev) for pdev in fs.system.root_buses.get(root, ())
    }


def device_node(fs: Sysfs, pdev: PciDevice) -> Dir:
    """The folder of ``pdev`` as a node: a listing builds every entry
    (:func:`device_dir`), a path walk through it only the one it names
    (:func:`device_lookup`)."""
    return Dir(functools.partial(device_dir, fs, pdev), functools.partial(device_lookup, fs, pdev))


def device_dir(fs: Sysfs, pdev: PciDevice) -> dict[str, Node]:
    """The folder of ``pdev``: its attributes, links and child devices."""
    out = _device_attrs(fs, pdev)
    out.update(sriov_nodes(fs, pdev))
    out.update(_bridge_nodes(pdev))
    for child in pdev.children:
        out[child.bdf] = device_node(fs, child)
    out.update(host_device_nodes(fs, pdev))
    return out


def device_lookup(fs: Sysfs, pdev: PciDevice, name: str) -> Node | None:
    """``device_dir(fs, pdev).get(name)`` without building the folder's
    other entries (the VF links of a PF, the folders of a bridge's
    children)."""
    child = fs.system.devices.get(name)
    if child is not None:
        return device_node(fs, child) if child.parent is pdev else None
    if name in ("block", "net") or name.startswith("virtio"):
        host = host_device_nodes(fs, pdev)
        if name in host:
            return host[name]
    if name in _BRIDGE_NODES:
        return _bridge_nodes(pdev).get(name)
    if name in _SRIOV_NODES or name.startswith("virtfn"):
        return sriov_lookup(fs, pdev, name)
    make = _STATIC_ATTRS.get(name)
    if make is not None:
        return make(fs, pdev)
    return _state_node(fs, pdev, name)


_SRIOV_NODES = ("physfn", "sriov_totalvfs", "sriov_numvfs")
_BRIDGE_NODES = ("secondary_bus_number", "subordinate_bus_number")


def _bridge_nodes(pdev: PciDevice) -> dict[str, Node]:
    """A bridge's bus numbers (none for an endpoint)."""
    if pdev.bridge is None:
        return {}
    sec = pdev.bridge["secondary_bus"]
    return {
        "secondary_bus_number": Attr(show=show_text(f"{sec}\n")),
        "subordinate_bus_number": Attr(
            show=lambda: f"{max([sec] + [c.bus for c in descendants(pdev)])}\n".encode()),
    }


#: The attributes every device folder has: name -> its node.
_STATIC_ATTRS: dict[str, Callable[[Sysfs, PciDevice], Node]] = {
    "vendor": lambda fs, pdev: Attr(show=lambda: f"0x{pdev.vendor:04x}\n".encode()),
    "device": lambda fs, pdev: Attr(show=lambda: f"0x{pdev.device:04x}\n".encode()),
    "subsystem_vendor": lambda fs, pdev: Attr(
        show=lambda: f"0x{pdev.subsystem_vendor:04x}\n".encode()),
    "subsystem_device": lambda fs, pdev: Attr(
        show=lambda: f"0x{pdev.subsystem_device:04x}\n".encode()),
    "revision": lambda fs, pdev: Attr(show=lambda: f"0x{pdev.revision:02x}\n".encode()),
    "class": lambda fs, pdev: Attr(show=lambda: f"0x{pdev.class_code:06x}\n".encode()),
    "config": lambda fs, pdev: Attr(show=pdev.config_bytes),
    "resource": lambda fs, pdev: Attr(show=lambda: resource_show(pdev)),
    "modalias": lambda fs, pdev: Attr(show=lambda: modalias_show(pdev)),
    "enable": lambda fs, pdev: Attr(show=lambda: f"{pdev.enable_cnt}\n".encode(),
                                    store=lambda v: enable_store(pdev, v)),
    "numa_node": lambda fs, pdev: Attr(show=lambda: f"{pdev.numa_node}\n".encode(),
                                       store=lambda v: numa_node_store(fs, pdev, v)),
    "driver_override": lambda fs, pdev: Attr(
        show=lambda: f"{pdev.driver_override if pdev.driver_override is not None else '(null)'}\n".encode(),
        store=lambda v: driver_override_store(pdev, v)),
    "subsystem": lambda fs, pdev: Link(rel(pdev.sysfs_path, "/sys/bus/pci")),
}


def _device_attrs(fs: Sysfs, pdev: PciDevice) -> dict[str, Node]:
    """The folder's own attributes and links (no SR-IOV, bridge, child or
    host-use entries)."""
    out = {name: make(fs, pdev) for name, make in _STATIC_ATTRS.items()}
    out.update(_state_nodes(fs, pdev))
    return out


def _state_nodes(fs: Sysfs, pdev: PciDevice) -> dict[str, Node]:
    """The attributes and links that come and go with the device's state
    (reset methods, driver, IOMMU group, vfio cdev)."""
    out: dict[str, Node] = {}
    for name in _STATE_NODES:
        node = _state_node(fs, pdev, name)
        if node is not None:
            out[name] = node
    return out


_STATE_NODES = ("reset_method", "reset", "driver", "iommu_group", "iommu", "vfio-dev")


def _state_node(fs: Sysfs, pdev: PciDevice, name: str) -> Node | None:
    """One of :data:`_STATE_NODES` as the device's state has it (None: absent)."""
    if name in ("reset_method", "reset"):
        if not supported_reset_methods(pdev):
            # pci_dev_reset_attr_is_visible / reset_method: only with a reset method
            return None
        if name == "reset":
            return Attr(store=lambda v: reset_store(pdev, v))
        return Attr(show=lambda: reset_method_show(pdev),
                    store=lambda v: reset_method_store(pdev, v))
    base = pdev.sysfs_path
    if name == "driver":
        return None if pdev.driver is None else Link(
            rel(base, f"/sys/bus/pci/drivers/{pdev.driver}"))
    if name in ("iommu_group", "iommu"):
        if pdev.group is None:
            return None
        if name == "iommu_group":
            return Link(rel(base, f"/sys/kernel/iommu_groups/{pdev.group.id}"))
        if fs.system.iommu is None or pdev.group.name == "vfio-noiommu":
            return None
        return Link(rel(base, f"/sys/devices/virtual/iommu/{fs.system.iommu.name}"))
    if name == "vfio-dev":
        cdev = pdev.vfio_cdev_name
        if cdev is None:
            return None
        index = pdev.vfio_index
        return Dir(lambda: {cdev: Dir(lambda: {
            "dev": Attr(show=show_text(f"{VFIO_CDEV_MAJOR}:{index}\n")),
            "subsystem": Link(rel(f"{base}/vfio-dev/{cdev}", "/sys/class/vfio-dev")),
        })})
    return None


def descendants(pdev: PciDevice) -> list[PciDevice]:
    """Every device below bridge ``pdev``."""
    out = []
    stack = list(pdev.children)
    while stack:
        d = stack.pop()
        out.append(d)
        stack.extend(d.children)
    return out


def resource_show(pdev: PciDevice) -> bytes:
    """resource_show: start, end and flags of each resource."""
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


def modalias_show(pdev: PciDevice) -> bytes:
    """modalias: the IDs as module aliases match them."""
    c = pdev.class_code
    return (f"pci:v{pdev.vendor:08X}d{pdev.device:08X}sv{pdev.subsystem_vendor:08X}"
            f"sd{pdev.subsystem_device:08X}bc{(c >> 16) & 0xFF:02X}sc{(c >> 8) & 0xFF:02X}"
            f"i{c & 0xFF:02X}\n").encode()


def enable_store(pdev: PciDevice, value: str) -> None:
    """enable_store: pci_enable_device/pci_disable_device counts."""
    # enable_store
    try:
        val = parse_uint(value, 64)
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


def numa_node_store(fs: Sysfs, pdev: PciDevice, value: str) -> None:
    """numa_node_store."""
    # numa_node_store
    try:
        node = parse_int(value)
    except OSError:
        raise errno_error(errno.EINVAL, f"{value!r} is not a number") from None
    if (node < 0 and node != -1) or node >= 1024:
        raise errno_error(errno.EINVAL, f"node {node} is out of range")
    if node != -1 and node >= fs.system.numa_nodes:
        raise errno_error(errno.EINVAL, f"node {node} is not online")
    pdev.numa_node = node


def driver_override_store(pdev: PciDevice, value: str) -> None:
    """driver_override_store (__device_set_driver_override)."""
    # __device_set_driver_override
    if len(value) >= PAGE_SIZE - 1:
        raise errno_error(errno.EINVAL, "driver_override is too long")
    value = value.split("\0", 1)[0]
    value = value.split("\n", 1)[0]
    pdev.driver_override = value or None
