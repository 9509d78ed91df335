"""The PCI core functions the fake vfio-pci driver calls
(drivers/pci/pci.c): saving and restoring a function's state, raw power
state changes, the INTx disable bit, resets, and the devices a bus reset
hits.  They act on the :class:`~pyvfio.fake.machine.pci.DeviceModel`
directly, as the PCI core acts on the hardware."""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

from ..core import errno_error
from ..machine.pci import (
    PCI_COMMAND,
    PCI_COMMAND_INTX_DISABLE,
    PCI_EXP_DEVCTL,
    PCI_EXP_DEVCTL_BCR_FLR,
    PCI_PM_CTRL,
    PCI_PM_CTRL_PME_STATUS,
    PCI_PM_CTRL_STATE_MASK,
    PCI_STATUS,
    PCI_STATUS_INTERRUPT,
    DeviceModel,
)

if TYPE_CHECKING:
    from ..machine.system import PciDevice

__all__ = [
    "SavedState",
    "pci_save_state",
    "pci_restore_state",
    "pci_read_command",
    "pci_write_command",
    "pci_intx",
    "pci_check_and_set_intx_mask",
    "pci_raw_set_power_state",
    "pci_reset_methods",
    "pci_walk_bus",
]


@dataclass
class SavedState:
    """pci_save_state: what pci_restore_state writes back.

    :param config: the config space.
    :param msix_table: the MSI-X table, when the device has one.
    :param pm_state: the power state.
    """

    config: bytes
    msix_table: bytes | None
    pm_state: int = 0


def pci_save_state(model: DeviceModel) -> SavedState:
    """pci_save_state."""
    table = bytes(model.msix.table) if model.msix is not None else None
    return SavedState(bytes(model.config), table, model.power_state)


def pci_restore_state(model: DeviceModel, saved: SavedState) -> None:
    """pci_restore_state: the saved header, capabilities and MSI/MSI-X
    state go back (the status register is left alone)."""
    status = model.config[PCI_STATUS:PCI_STATUS + 2]
    old_cmd = model.command
    model.config[:] = saved.config
    model.config[PCI_STATUS:PCI_STATUS + 2] = status
    if model.pcie_offset is not None:
        pos = model.pcie_offset + PCI_EXP_DEVCTL
        value = model.config_word(pos) & ~PCI_EXP_DEVCTL_BCR_FLR
        model.config[pos:pos + 2] = value.to_bytes(2, "little")
    if model.msix is not None and saved.msix_table is not None:
        model.msix.table[:] = saved.msix_table
    model.refresh_intx()
    if old_cmd != model.command:
        model.command_changed(old_cmd, model.command)


def pci_read_command(model: DeviceModel) -> int:
    """pci_read_config_word(PCI_COMMAND)."""
    return model.config_word(PCI_COMMAND)


def pci_write_command(model: DeviceModel, value: int) -> None:
    """pci_write_config_word(PCI_COMMAND)."""
    model.config_write(PCI_COMMAND, (value & 0xFFFF).to_bytes(2, "little"))


def pci_intx(model: DeviceModel, enable: bool) -> None:
    """pci_intx: clear (enable) or set the INTx disable bit."""
    cmd = pci_read_command(model)
    new = (cmd & ~PCI_COMMAND_INTX_DISABLE) if enable else (cmd | PCI_COMMAND_INTX_DISABLE)
    if new != cmd:
        pci_write_command(model, new)


def pci_check_and_set_intx_mask(model: DeviceModel, mask: bool) -> bool:
    """pci_check_and_set_intx_mask / pci_check_and_clear_intx_mask: change
    DisINTx only when the pending state matches (masking: our interrupt;
    unmasking: nothing pending)."""
    pending = bool(model.config_word(PCI_STATUS) & PCI_STATUS_INTERRUPT)
    if mask != pending:
        return False
    cmd = pci_read_command(model)
    new = (cmd | PCI_COMMAND_INTX_DISABLE) if mask else (cmd & ~PCI_COMMAND_INTX_DISABLE)
    if new != cmd:
        pci_write_command(model, new)
    return True


def pci_raw_set_power_state(model: DeviceModel, state: int) -> None:
    """pci_raw_set_power_state: write the PM control state bits."""
    if model.pm_offset is None:
        return
    pos = model.pm_offset + PCI_PM_CTRL
    ctrl = (model.config_word(pos) & ~PCI_PM_CTRL_STATE_MASK & ~PCI_PM_CTRL_PME_STATUS) | state
    model.config_write(pos, ctrl.to_bytes(2, "little"))


def pci_reset_methods(pdev: PciDevice) -> list[str]:
    """The reset methods that work for ``pdev``: those enabled in its sysfs
    ``reset_method`` that fit its capabilities and position
    (pci_init_reset_methods; an emptied list means no reset)."""
    methods: list[str] = pdev.system.sysfs.enabled_reset_methods(pdev)
    return methods


def pci_walk_bus(pdev: PciDevice) -> list[Any]:
    """pci_probe_reset_bus + pci_walk_bus: the devices a secondary bus
    reset of ``pdev``'s bus hits (ENODEV when that bus cannot be reset)."""
    parent = getattr(pdev, "parent", None)
    if parent is None:
        # pci_probe_reset_bus: no bus reset on a root bus
        raise errno_error(errno.ENODEV, "the device is on a root bus: no bus reset")

    def walk(devs: list[Any]) -> Iterator[Any]:
        for d in sorted(devs, key=lambda d: d.bdf):
            yield d
            yield from walk(list(getattr(d, "children", [])))

    return list(walk(list(parent.children)))
