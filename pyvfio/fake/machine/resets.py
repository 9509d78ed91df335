"""PCI function resets (drivers/pci/pci.c): which reset methods work for a
device where it sits (pci_init_reset_methods), the ones enabled through
sysfs ``reset_method``, and sysfs ``reset`` (pci_reset_function).

``flr`` needs FLR in the Express capability, ``af_flr`` an Advanced
Features capability offering it, ``pm`` a PM capability without
No_Soft_Reset, ``bus``/``cxl_bus`` a function alone below a bridge (never
on a root bus).  Devices without a model are taken at their topology's
word for the capabilities.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from ..core import errno_error
from .kstrtox import parse_uint, sysfs_streq

if TYPE_CHECKING:
    from .pci_device import PciDevice

__all__ = ["RESET_METHODS", "supported_reset_methods", "enabled_reset_methods",
           "reset_method_show", "reset_method_store", "reset_store"]

# Config space registers the reset-method probes read (include/uapi/linux/pci_regs.h)
_PCI_STATUS, _PCI_STATUS_CAP_LIST, _PCI_CAPABILITY_LIST = 0x06, 0x10, 0x34
_PCI_CAP_ID_AF = 0x13
_PCI_AF_CAP, _PCI_AF_CAP_TP, _PCI_AF_CAP_FLR = 3, 0x01, 0x02
_PCI_PM_CTRL, _PCI_PM_CTRL_NO_SOFT_RESET = 4, 0x0008

#: The reset methods, in the order the kernel tries them (pci_reset_fn_methods).
RESET_METHODS = ("device_specific", "acpi", "flr", "af_flr", "pm", "bus", "cxl_bus")


def supported_reset_methods(pdev: PciDevice) -> list[str]:
    """pci_init_reset_methods: the device's methods that can work for
    it, where it sits.  A model's capabilities decide ``flr``, ``af_flr``
    and ``pm``; the position decides ``bus`` and ``cxl_bus``."""
    model = pdev.model
    out = []
    for method in pdev.supported_reset_methods:
        if method == "flr" and model is not None and not getattr(model, "has_flr", False):
            continue  # pcie_reset_flr: FLR in the Express Device Capabilities
        if method == "af_flr" and model is not None and not af_flr(pdev):
            continue  # pci_af_flr: an AF capability with TP and FLR
        if method == "pm" and model is not None and not pm_reset(pdev):
            continue  # pci_pm_reset: a PM capability without No_Soft_Reset
        if method in ("bus", "cxl_bus") and not bus_reset_possible(pdev):
            continue  # pci_parent_bus_reset: never on a root bus
        out.append(method)
    return out


def bus_reset_possible(pdev: PciDevice) -> bool:
    """A secondary bus reset resets only this function: it sits below a
    bridge, has no other function on its bus and no bus of its own."""
    parent = pdev.parent
    if parent is None or pdev.children or pdev.bridge is not None:
        return False
    return all(d is pdev for d in parent.children)


def capabilities(cfg: bytes) -> dict[int, int]:
    """Standard capability ID -> offset (the first of each)."""
    caps: dict[int, int] = {}
    if len(cfg) < 0x40 or not cfg[_PCI_STATUS] & _PCI_STATUS_CAP_LIST:
        return caps
    pos, seen = cfg[_PCI_CAPABILITY_LIST] & 0xFC, 0
    while 0x40 <= pos <= len(cfg) - 2 and seen < 48:
        caps.setdefault(cfg[pos], pos)
        pos, seen = cfg[pos + 1] & 0xFC, seen + 1
    return caps


def af_flr(pdev: PciDevice) -> bool:
    """pci_af_flr can work: an AF capability with TP and FLR."""
    cfg = pdev.config_bytes()
    pos = capabilities(cfg).get(_PCI_CAP_ID_AF)
    if pos is None or pos + _PCI_AF_CAP >= len(cfg):
        return False
    want = _PCI_AF_CAP_TP | _PCI_AF_CAP_FLR
    return cfg[pos + _PCI_AF_CAP] & want == want


def pm_reset(pdev: PciDevice) -> bool:
    """pci_pm_reset can work: a PM capability without No_Soft_Reset."""
    model = pdev.model
    pm = getattr(model, "pm_offset", None)
    if pm is None:
        return False
    ctrl = int.from_bytes(pdev.config_bytes()[pm + _PCI_PM_CTRL:pm + _PCI_PM_CTRL + 2], "little")
    return not ctrl & _PCI_PM_CTRL_NO_SOFT_RESET


def enabled_reset_methods(pdev: PciDevice) -> list[str]:
    """The methods a reset of ``pdev`` tries, best first: those enabled
    in ``reset_method`` that can work where the device sits (empty: the
    device cannot be reset, ``pci_reset_function`` fails)."""
    supported = supported_reset_methods(pdev)
    return [m for m in pdev.reset_methods if m in supported]


def reset_method_show(pdev: PciDevice) -> bytes:
    """reset_method_show: the enabled methods that work, space-separated."""
    methods = enabled_reset_methods(pdev)
    if not methods:
        return b""
    return (" ".join(methods) + "\n").encode()


def reset_method_store(pdev: PciDevice, value: str) -> None:
    """reset_method_store: enable the methods named (``default``: all that
    work, empty: none); EINVAL for an unknown or unsupported one."""
    # reset_method_store
    supported = supported_reset_methods(pdev)
    if sysfs_streq(value, ""):
        pdev.reset_methods = []
        return
    if sysfs_streq(value, "default"):
        pdev.reset_methods = supported
        return
    methods: list[str] = []
    for name in value.split(" "):
        if sysfs_streq(name, ""):
            continue
        name = name.strip()
        if name not in RESET_METHODS:
            raise errno_error(errno.EINVAL, f"invalid reset method {name!r}")
        if name not in supported:
            raise errno_error(errno.EINVAL, f"unsupported reset method {name!r}")
        if len(methods) == len(RESET_METHODS) - 1:
            raise errno_error(errno.EINVAL, "too many reset methods")
        methods.append(name)
    pdev.reset_methods = methods


def reset_store(pdev: PciDevice, value: str) -> None:
    """reset_store: ``1`` resets the function; ENOTTY without a method."""
    # reset_store: kstrtoul, then pci_reset_function for a non-zero value
    val = parse_uint(value, 64)
    if val != 1:
        raise errno_error(errno.EINVAL, "write 1 to reset")
    if not enabled_reset_methods(pdev):
        raise errno_error(errno.ENOTTY, "no reset method enabled")
    reset = getattr(pdev.model, "reset", None)
    if callable(reset):
        reset()
