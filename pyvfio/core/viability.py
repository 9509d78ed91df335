"""Whether an IOMMU group may be used by user space, and why not.

The IOMMU group is the unit of isolation: a group is viable only while none
of its devices is bound to a DMA-capable kernel driver.  This module names
the devices that block a group and the others a user's DMA can reach::

    from pyvfio.core import viability

    print(viability.explain_group(11).message())
"""

from __future__ import annotations

import errno as _errno
from dataclasses import dataclass, field
from typing import Any

from ..backend import Backend
from ..errors import NotViableError, VfioError
from .sysfs import (
    _BDF_COMPONENT,
    IOMMU_GROUPS,
    PCI_DEVICES,
    _backend,
    _int,
    _read,
    class_name,
    device_driver,
    device_group,
    group_devices,
    normalize_bdf,
)

__all__ = [
    "VIABLE_DRIVERS",
    "Blocker",
    "viability_blockers",
    "driver_keeps_group_viable",
    "GroupMember",
    "GroupViability",
    "explain_group",
    "explain_device",
]
#: Drivers that leave a group viable: vfio-pci owns the device for the user;
#: pci-stub and pcieport do no DMA (``driver_managed_dma``).
VIABLE_DRIVERS = frozenset({"vfio-pci", "pci-stub", "pcieport"})


def driver_keeps_group_viable(driver: str | None) -> bool:
    """Whether a device bound to ``driver`` leaves its IOMMU group viable.

    The kernel's rule (``iommu_device_use_default_domain``, called when a
    driver binds unless the driver sets ``driver_managed_dma``): a group can
    be owned by user space only while none of its devices is bound to a
    DMA-capable kernel driver.  Driver-less devices, vfio-pci and its
    variant drivers (``*_vfio_pci``, e.g. ``mlx5_vfio_pci``), pci-stub and
    pcieport keep the group viable.
    """
    if driver is None or driver in VIABLE_DRIVERS:
        return True
    return driver.replace("-", "_").endswith("vfio_pci")


# -- viability ---------------------------------------------------------------------
@dataclass(frozen=True)
class Blocker:
    """A device that keeps its IOMMU group from being viable.

    Thread safety: immutable; safe to share between threads.
    """

    bdf: str  #: the device that blocks the group
    driver: str  #: the host driver it is bound to
    #: What the device is (``"Ethernet controller 8086:100e"``), when known.
    description: str = field(default="", compare=False)

    @property
    def reason(self) -> str:
        """One sentence: what blocks and how to fix it."""
        what = f" ({self.description})" if self.description else ""
        return (
            f"{self.bdf}{what} is bound to the host driver {self.driver!r}; "
            "unbind it or bind it to vfio-pci"
        )


def viability_blockers(group: int, backend: Backend | None = None) -> list[Blocker]:
    """Devices of ``group`` bound to a driver other than vfio-pci, pci-stub
    or pcieport: the kernel refuses user ownership of the group while any
    exist (iommu_group_claim_dma_owner)."""
    b = _backend(backend)
    blockers = []
    for bdf in group_devices(group, b):
        driver = device_driver(bdf, b)
        if driver is not None and not driver_keeps_group_viable(driver):
            blockers.append(Blocker(bdf, driver, _describe(b, bdf)))
    return blockers


def _describe(b: Backend, bdf: str) -> str:
    base = f"{PCI_DEVICES}/{bdf}"
    cls = _int(_read(b, f"{base}/class"), 16)
    vendor = _int(_read(b, f"{base}/vendor"), 16)
    device = _int(_read(b, f"{base}/device"), 16)
    if cls is None or vendor is None or device is None:
        return ""
    return f"{class_name(cls)} {vendor:04x}:{device:04x}"


@dataclass(frozen=True)
class GroupMember:
    """One device of an IOMMU group, as :func:`explain_group` sees it.

    Thread safety: immutable; safe to share between threads.
    """

    bdf: str  #: the member's address
    driver: str | None  #: its driver, or None
    description: str  #: ``"Ethernet controller 8086:100e"`` ("" if not a PCI device)
    is_bridge: bool  #: a PCI bridge (keeps the group viable on pcieport or no driver)

    @property
    def blocks(self) -> bool:
        """Bound to a DMA-capable host driver: the group is not viable."""
        return not driver_keeps_group_viable(self.driver)

    @property
    def state(self) -> str:
        """Short words for tables: ``"blocks (e1000)"``, ``"vfio-pci"``, ..."""
        if self.blocks:
            return f"blocks (host driver {self.driver})"
        if self.driver is None:
            return "no driver"
        return self.driver

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {"bdf": self.bdf, "driver": self.driver, "description": self.description,
                "is_bridge": self.is_bridge, "blocks": self.blocks}


@dataclass(frozen=True)
class GroupViability:
    """Why an IOMMU group can or cannot be given to user space, and what a
    user who gets it can reach.

    The kernel's rule: user space may own a group only while every device in
    it is driver-less or bound to vfio-pci (or a vfio variant driver),
    pci-stub or pcieport.  All devices of a group share one I/O address
    space: whoever owns it programs DMA for all of them, so the other
    members (:attr:`at_risk`) are reachable by the user's DMA and must be
    trusted with it, or left without a driver.

    Thread safety: immutable; safe to share between threads.
    """

    group: int  #: the group number
    #: The device the question is about (None: the group as a whole).
    device: str | None
    members: tuple[GroupMember, ...]  #: every device of the group
    blockers: tuple[Blocker, ...]  #: members bound to DMA-capable host drivers
    #: Other members that share the group's I/O address space with ``device``
    #: (every member when asking about the group and it has several).
    at_risk: tuple[GroupMember, ...]
    noiommu: bool = False  #: an unsafe no-IOMMU group

    @property
    def viable(self) -> bool:
        """No member is bound to a DMA-capable host driver."""
        return not self.blockers

    def summary(self) -> str:
        """One line: ``"group 11 is not viable: 0000:05:02.0 ... is bound ..."``."""
        if self.viable:
            state = f"group {self.group} is viable"
            if self.at_risk:
                state += (f"; {len(self.at_risk)} other device(s) share its I/O address space: "
                          + ", ".join(m.bdf for m in self.at_risk))
            return state
        return f"group {self.group} is not viable: " + "; ".join(b.reason for b in self.blockers)

    def message(self) -> str:
        """A multi-line explanation for people (what blocks, how to fix,
        what else the user's DMA reaches)."""
        who = f"device {self.device} is in " if self.device else ""
        lines = [f"{who}IOMMU group {self.group} ({len(self.members)} device(s)): "
                 + ("viable" if self.viable else "NOT viable")]
        if self.noiommu:
            lines.append("  this is an unsafe no-IOMMU group: the device can DMA anywhere in memory")
        if self.blockers:
            lines.append("  blocked by (the kernel refuses user ownership while a device of the "
                         "group is on a DMA-capable host driver):")
            lines += [f"    - {b.reason}" for b in self.blockers]
            bdfs = " ".join(b.bdf for b in self.blockers)
            lines.append(f"  fix: `pyvfio bind --group {self.group}` (binds every device of the "
                         f"group to vfio-pci) or `pyvfio unbind {bdfs}`")
        if self.at_risk:
            lines.append("  reachable by the user's DMA (same I/O address space):")
            for m in self.at_risk:
                what = f" ({m.description})" if m.description else ""
                note = ", a bridge: no DMA of its own" if m.is_bridge else ""
                lines.append(f"    - {m.bdf}{what}, driver: {m.driver or 'none'}{note}")
        return "\n".join(lines)

    def error(self, *, ioctl: str | None = None, target: str | None = None,
              cause: OSError | None = None) -> NotViableError:
        """The :class:`~pyvfio.errors.NotViableError` to raise when the kernel
        refused ownership (EPERM) of this group, explained.  ``cause`` is the
        kernel's error; without blockers the message says the group is
        owned by another user."""
        head = f"{ioctl} on {target}: " if ioctl and target else (f"{ioctl or target}: " if ioctl or target else "")
        if self.blockers:
            text = head + self.message()
        else:
            text = (head + f"the kernel refused ownership of IOMMU group {self.group} although "
                    "no device of it is on a host driver: another process or iommufd owns "
                    "the group (an open /dev/vfio/N or another bound device)\n" + self.message())
        if cause is not None and cause.strerror:
            text += f"\n  kernel error: {cause.strerror}"
        return NotViableError(text, blockers=[(b.bdf, b.reason) for b in self.blockers],
                              target=target, ioctl=ioctl)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "group": self.group, "device": self.device, "viable": self.viable,
            "noiommu": self.noiommu,
            "members": [m.as_dict() for m in self.members],
            "blockers": [{"bdf": b.bdf, "driver": b.driver, "description": b.description,
                          "reason": b.reason} for b in self.blockers],
            "at_risk": [m.as_dict() for m in self.at_risk],
        }


def explain_group(group: int, device: str | None = None,
                  backend: Backend | None = None) -> GroupViability:
    """Explain IOMMU group ``group``: which devices block it and why, and
    which other devices a user of ``device`` (or of the whole group) can
    reach by DMA."""
    b = _backend(backend)
    if device is not None:
        device = normalize_bdf(device)
    try:
        bdfs = b.sysfs_listdir(f"{IOMMU_GROUPS}/{group}/devices")
    except OSError:
        raise VfioError(_errno.ENOENT, f"no IOMMU group {group}", target=f"group {group}") from None
    members = []
    for bdf in bdfs:
        is_pci = _BDF_COMPONENT.match(bdf) is not None
        driver = b.sysfs_basename_of_link(f"{IOMMU_GROUPS}/{group}/devices/{bdf}/driver")
        cls = _int(_read(b, f"{PCI_DEVICES}/{bdf}/class"), 16) if is_pci else None
        members.append(GroupMember(
            bdf=bdf, driver=driver, description=_describe(b, bdf) if is_pci else "",
            is_bridge=cls is not None and (cls >> 8) == 0x0604,
        ))
    blockers = tuple(Blocker(m.bdf, m.driver or "", m.description) for m in members if m.blocks)
    if device is not None:
        at_risk = tuple(m for m in members if m.bdf != device)
    else:
        at_risk = tuple(members) if len(members) > 1 else ()
    return GroupViability(group=group, device=device, members=tuple(members), blockers=blockers,
                          at_risk=at_risk,
                          noiommu=_read(b, f"{IOMMU_GROUPS}/{group}/name") == "vfio-noiommu")


def explain_device(bdf: str, backend: Backend | None = None) -> GroupViability:
    """:func:`explain_group` for the group of PCI device ``bdf``, from that
    device's point of view.  This is what to raise (``.error(...)``) when
    ``VFIO_DEVICE_BIND_IOMMUFD`` fails with EPERM on the cdev path."""
    b = _backend(backend)
    bdf = normalize_bdf(bdf)
    return explain_group(device_group(bdf, b), bdf, b)

