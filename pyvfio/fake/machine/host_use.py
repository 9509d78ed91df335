"""What the host uses the devices for (the topology's ``host`` section),
as sysfs shows it: a driver's disks with their partitions and the
device-mapper/md holders stacked on them (``block/``, /sys/block,
/sys/devices/virtual/block), its network interfaces (``net/``,
/sys/class/net) and virtio-fs tags.  They exist while the device is bound
to the driver the topology starts it with.  The host's mounts, swaps and
routes are served by :mod:`.procfs`.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from .kernfs import Attr, Dir, Link, Node, attrs, rel, show_text

if TYPE_CHECKING:
    from .pci_device import PciDevice
    from .sysfs import Sysfs

__all__ = ["host_section", "host_entries", "live_holders", "holder_dir", "host_device_nodes",
           "sys_block"]


def host_section(fs: Sysfs) -> dict[str, Any]:
    """The system's ``host`` section (empty for a system without one)."""
    host: dict[str, Any] = getattr(fs.system, "host", None) or {}
    return host


def host_entries(fs: Sysfs, key: str, pdev: PciDevice | None = None
                 ) -> list[tuple[PciDevice, dict[str, Any]]]:
    """``host[key]`` entries (of ``pdev``, or all) whose device is bound
    to the driver the topology starts it with: a driver's disks and
    interfaces go away when it lets go of the device."""
    out = []
    for e in host_section(fs).get(key, []):
        dev = fs.system.devices.get(e["device"])
        if dev is None or (pdev is not None and dev is not pdev):
            continue
        if dev.driver is not None and dev.driver == dev.spec.get("driver"):
            out.append((dev, e))
    return out


def live_holders(fs: Sysfs) -> list[dict[str, Any]]:
    """The holders (device-mapper, md) stacked on the disks that exist now."""
    return [h for _pdev, e in host_entries(fs, "block") for h in e["holders"]]


def holder_links(holders: list[dict[str, Any]], of: str) -> dict[str, Node]:
    """``holders/`` of ``of``: links to the holders stacked on it."""
    return {h["name"]: Link(f"/sys/devices/virtual/block/{h['name']}")
            for h in holders if h["of"] == of}


def disk_dir(pdev: PciDevice, e: dict[str, Any]) -> dict[str, Node]:
    """The folder of disk ``e`` below its device."""
    holders = e["holders"]
    out: dict[str, Node] = {
        "dev": Attr(show=show_text(f"{e['dev']}\n")),
        "holders": Dir(lambda: holder_links(holders, e["name"])),
    }
    for number, part in enumerate(e["partitions"], 1):
        out[part["name"]] = Dir(functools.partial(partition_dir, part, number,
                                                  holders))
    return out


def partition_dir(part: dict[str, Any], number: int,
                  holders: list[dict[str, Any]]) -> dict[str, Node]:
    """The folder of partition ``part`` (number ``number``) of a disk."""
    return {
        "dev": Attr(show=show_text(f"{part['dev']}\n")),
        "partition": Attr(show=show_text(f"{number}\n")),
        "holders": Dir(lambda: holder_links(holders, part["name"])),
    }


def holder_dir(fs: Sysfs, h: dict[str, Any]) -> dict[str, Node]:
    """/sys/devices/virtual/block/<name> of holder ``h``."""
    out: dict[str, Node] = {
        "dev": Attr(show=show_text(f"{h['dev']}\n")),
        "holders": Dir(lambda: holder_links(live_holders(fs), h["name"])),
    }
    if "dm_name" in h:
        out["dm"] = Dir(lambda: {"name": Attr(show=show_text(f"{h['dm_name']}\n"))})
    return out


def host_device_nodes(fs: Sysfs, pdev: PciDevice) -> dict[str, Node]:
    """A device's disks (``block/``), interfaces (``net/``) and 9p tag."""
    out: dict[str, Node] = {}
    disks = host_entries(fs, "block", pdev)
    if disks:
        out["block"] = Dir(lambda: {
            e["name"]: Dir(lambda e=e: disk_dir(pdev, e))  # type: ignore[misc]
            for _p, e in disks})
    nets = host_entries(fs, "net", pdev)
    if nets:
        # IFF_UP | IFF_BROADCAST | IFF_MULTICAST, or the same without IFF_UP
        out["net"] = Dir(lambda: {
            e["name"]: Dir(functools.partial(
                attrs, {"flags": "0x1003\n" if e["up"] else "0x1002\n"}))
            for _p, e in nets})
    for i, (_p, e) in enumerate(host_entries(fs, "virtio_fs", pdev)):
        out[f"virtio{i}"] = Dir(functools.partial(attrs,
                                                  {"mount_tag": f"{e['tag']}\0"}))
    return out


def sys_block(fs: Sysfs) -> dict[str, Node]:
    """/sys/block: links to the disks and holders that exist now."""
    out: dict[str, Node] = {}
    for pdev, e in host_entries(fs, "block"):
        out[e["name"]] = Link(rel("/sys/block",
                                  f"{pdev.sysfs_path}/block/{e['name']}"))
    for h in live_holders(fs):
        out[h["name"]] = Link(rel("/sys/block",
                                  f"/sys/devices/virtual/block/{h['name']}"))
    return out
