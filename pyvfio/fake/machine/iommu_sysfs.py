"""The IOMMU's sysfs (drivers/iommu/iommu.c, iommu-sysfs.c):
/sys/kernel/iommu_groups/N with ``devices``, ``reserved_regions``,
``type`` and ``name``, and the IOMMU device under /sys/class/iommu.
"""

from __future__ import annotations

import errno
import functools
from typing import TYPE_CHECKING

from ..core import errno_error
from .kernfs import Attr, Dir, Link, Node, rel
from .kstrtox import sysfs_streq

if TYPE_CHECKING:
    from .iommu import IommuGroup
    from .sysfs import Sysfs

__all__ = ["iommu_groups_dir", "iommu_groups", "iommu_device_dir", "class_iommu"]


def iommu_groups_dir(fs: Sysfs) -> Dir:
    """/sys/kernel/iommu_groups."""
    return Dir(functools.partial(iommu_groups, fs), functools.partial(_iommu_group, fs))


def _iommu_group(fs: Sysfs, name: str) -> Node | None:
    # the folders are named str(gid): no sign, no leading zeros
    if not name.isdigit() or str(int(name)) != name:
        return None
    group = fs.system.groups.get(int(name))
    return None if group is None else Dir(lambda: group_dir(fs, group))


def iommu_groups(fs: Sysfs) -> dict[str, Node]:
    """/sys/kernel/iommu_groups: one folder per IOMMU group."""
    return {str(gid): Dir(lambda g=group: group_dir(fs, g))  # type: ignore[misc]
            for gid, group in fs.system.groups.items()}


def group_dir(fs: Sysfs, group: IommuGroup) -> dict[str, Node]:
    """The folder of ``group``."""
    base = f"/sys/kernel/iommu_groups/{group.id}"

    def devices() -> dict[str, Node]:
        return {p.bdf: Link(rel(base + "/devices", p.sysfs_path)) for p in group.devices}

    out: dict[str, Node] = {
        "devices": Dir(devices),
        "reserved_regions": Attr(show=lambda: reserved_regions_show(group)),
        "type": Attr(show=lambda: group_type_show(fs, group),
                     store=lambda v: group_type_store(fs, group, v)),
    }
    if group.name is not None:
        out["name"] = Attr(show=lambda: f"{group.name}\n".encode())
    return out


def reserved_regions_show(group: IommuGroup) -> bytes:
    """iommu_group_show_resv_regions."""
    # iommu_group_show_resv_regions
    return "".join(f"0x{r.start:016x} 0x{r.last:016x} {r.type}\n"
                   for r in group.reserved_regions).encode()


def group_type_show(fs: Sysfs, group: IommuGroup) -> bytes:
    """iommu_group_show_type."""
    # iommu_group_show_type: "unknown" without a default domain
    if group.name == "vfio-noiommu" or fs.system.iommu is None:
        return b"unknown\n"
    return f"{group.default_domain_type}\n".encode()


def group_type_store(fs: Sysfs, group: IommuGroup, value: str) -> None:
    """iommu_group_store_type: change the default domain type."""
    # iommu_group_store_type
    if group.name == "vfio-noiommu" or fs.system.iommu is None:
        raise errno_error(errno.EINVAL, "the group has no default domain")
    wanted = {"identity": "identity", "DMA": "DMA", "DMA-FQ": "DMA-FQ",
              "auto": fs.system.iommu.default_domain}
    for name, dtype in wanted.items():
        if sysfs_streq(value, name):
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


def iommu_device_dir(fs: Sysfs) -> dict[str, Node]:
    """/sys/devices/virtual/iommu/<name>: the devices behind the IOMMU."""
    iommu = fs.system.iommu
    assert iommu is not None
    base = f"/sys/devices/virtual/iommu/{iommu.name}"

    def devices() -> dict[str, Node]:
        return {p.bdf: Link(rel(base + "/devices", p.sysfs_path))
                for p in fs.system.devices.values()
                if p.group is not None and p.group.name != "vfio-noiommu"}

    return {"devices": Dir(devices)}


def class_iommu(fs: Sysfs) -> dict[str, Node]:
    """/sys/class/iommu: a link to the IOMMU device (empty without one)."""
    iommu = fs.system.iommu
    if iommu is None:
        return {}
    return {iommu.name: Link(rel("/sys/class/iommu",
                                 f"/sys/devices/virtual/iommu/{iommu.name}"))}
