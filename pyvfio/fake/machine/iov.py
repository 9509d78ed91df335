"""SR-IOV in sysfs (drivers/pci/iov.c): a PF's ``sriov_totalvfs``,
``sriov_numvfs`` and ``virtfnN`` links, a VF's ``physfn`` link.

Changing the number of VFs is not simulated: ``sriov_numvfs`` answers as
for a PF driver without ``sriov_configure``.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from ..core import errno_error
from .kernfs import Attr, Link, Node, rel, show_text
from .kstrtox import parse_uint

if TYPE_CHECKING:
    from .pci_device import PciDevice
    from .sysfs import Sysfs

__all__ = ["virtfns", "sriov_nodes", "sriov_lookup"]


def virtfns(fs: Sysfs, pf: PciDevice) -> list[PciDevice]:
    """The enabled VFs of ``pf``, in routing-ID order (virtfn0 first)."""
    return list(fs.system.vfs.get(pf.bdf, ()))


def sriov_nodes(fs: Sysfs, pdev: PciDevice) -> dict[str, Node]:
    """The SR-IOV nodes of ``pdev``'s folder (none for a function without SR-IOV)."""
    out = _sriov_attrs(fs, pdev)
    if "sriov_totalvfs" in out:
        base = pdev.sysfs_path
        for i, vf in enumerate(virtfns(fs, pdev)):
            out[f"virtfn{i}"] = Link(rel(base, vf.sysfs_path))
    return out


def sriov_lookup(fs: Sysfs, pdev: PciDevice, name: str) -> Node | None:
    """``sriov_nodes(fs, pdev).get(name)`` without building every
    ``virtfnN`` link."""
    if name.startswith("virtfn"):
        index = name[len("virtfn"):]
        if pdev.spec.get("sriov_totalvfs") is None or not index.isdigit() \
                or str(int(index)) != index:
            return None
        vfs = fs.system.vfs.get(pdev.bdf, ())
        if int(index) >= len(vfs):
            return None
        return Link(rel(pdev.sysfs_path, vfs[int(index)].sysfs_path))
    return _sriov_attrs(fs, pdev).get(name)


def _sriov_attrs(fs: Sysfs, pdev: PciDevice) -> dict[str, Node]:
    """``physfn``, ``sriov_totalvfs`` and ``sriov_numvfs`` (what applies)."""
    out: dict[str, Node] = {}
    physfn = pdev.spec.get("physfn")
    if physfn is not None and physfn in fs.system.devices:
        out["physfn"] = Link(rel(pdev.sysfs_path, fs.system.devices[physfn].sysfs_path))
    total = pdev.spec.get("sriov_totalvfs")
    if total is None:
        return out
    out["sriov_totalvfs"] = Attr(show=show_text(f"{total}\n"))
    out["sriov_numvfs"] = Attr(show=lambda: f"{len(virtfns(fs, pdev))}\n".encode(),
                               store=lambda v: sriov_numvfs_store(fs, pdev, v))
    return out


def sriov_numvfs_store(fs: Sysfs, pdev: PciDevice, value: str) -> None:
    """sriov_numvfs_store."""
    # sriov_numvfs_store
    try:
        num = parse_uint(value, 16)
    except OSError:
        raise errno_error(errno.EINVAL, f"{value!r} is not a number") from None
    if num > int(pdev.spec.get("sriov_totalvfs", 0)):
        raise errno_error(errno.ERANGE, f"{pdev.bdf} supports {pdev.spec['sriov_totalvfs']} VFs")
    if num == len(virtfns(fs, pdev)):
        return
    if pdev.driver is None:
        raise errno_error(errno.ENOENT, f"no driver bound to {pdev.bdf}: cannot configure SR-IOV")
    # the fake's drivers have no sriov_configure callback
    raise errno_error(errno.ENOENT, f"{pdev.driver} does not support SR-IOV configuration "
                                    "through sysfs")
