"""The driver core's binding rules (drivers/base/dd.c): probing a driver
for a device, the ``dma_configure`` step that makes DMA-capable drivers
take the group's default domain (drivers/pci/pci-driver.c,
pci_dma_configure), and letting go of a device.

These are what sysfs ``bind``, ``unbind``, ``drivers_probe`` and
``new_id`` run (:mod:`.bus_sysfs`) and what a topology's start-up
drivers are bound with.

Differences from the kernel: unbinding vfio-pci from a device whose VFIO
file is open blocks in the kernel until the user closes it; here the
driver's remove fails with ``EBUSY`` after the device's release request
was signalled (:func:`.vfio_group.vfio_pci_remove`).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from ..core import errno_error
from .pci_driver import pci_match_device

if TYPE_CHECKING:
    from .pci_device import PciDevice
    from .pci_driver import Driver
    from .system import System

__all__ = ["really_probe", "device_driver_attach", "device_attach", "driver_attach",
           "device_release_driver"]


def really_probe(drv: Driver, pdev: PciDevice) -> int:
    """really_probe: 0, a negative errno from before the driver's probe
    (dma_configure) or a positive errno from the probe itself."""
    managed = drv.managed_dma
    # pci_dma_configure: DMA-capable drivers take the default domain
    if not managed and pdev.group is not None:
        try:
            pdev.group.use_default_domain(pdev)
        except OSError as e:
            return -int(e.errno or errno.EBUSY)
    err = drv.probe(pdev) if drv.probe is not None else 0
    if err:
        # really_probe: probe errors undo dma_configure (pci_dma_cleanup)
        if not managed and pdev.group is not None:
            pdev.group.unuse_default_domain(pdev)
        return err
    pdev.driver = drv.name
    drv.devices.append(pdev)
    return 0


def device_driver_attach(drv: Driver, pdev: PciDevice) -> None:
    """device_driver_attach (sysfs ``bind``); raises OSError."""
    if pdev.driver is not None:
        # __driver_probe_device: EBUSY if the device already has a driver
        raise errno_error(errno.EBUSY, f"{pdev.bdf} is bound to {pdev.driver}")
    ret = really_probe(drv, pdev)
    if ret:
        # device_driver_attach: probe errors are returned as negative errnos
        raise errno_error(abs(ret), f"probe of {pdev.bdf} with {drv.name}")


def device_attach(pdev: PciDevice) -> int:
    """__device_attach (``drivers_probe``): try every matching driver in
    registration order.  Returns 1 when bound, 0 when no driver took the
    device, or a negative errno that stopped the search."""
    if pdev.driver is not None:
        return 1
    for drv in pdev.system.drivers.values():
        if not pci_match_device(drv, pdev):
            continue
        ret = really_probe(drv, pdev)
        if ret < 0:
            # __device_attach_driver: errors before the probe stop the search
            return ret
        if ret == 0:
            return 1
        # __device_attach_driver: a failed probe lets the next driver try
    return 0


def driver_attach(system: System, drv: Driver) -> None:
    """driver_attach (after new_id): bind every unbound matching device,
    ignoring errors as __driver_attach does."""
    for pdev in system.devices.values():
        if pdev.driver is None and pci_match_device(drv, pdev):
            really_probe(drv, pdev)


def device_release_driver(pdev: PciDevice) -> None:
    """device_driver_detach (sysfs ``unbind``): the driver's remove, then
    the device leaves the driver."""
    if pdev.driver is None:
        return
    drv = pdev.system.drivers[pdev.driver]
    if drv.remove is not None:
        drv.remove(pdev)
    drv.devices.remove(pdev)
    pdev.driver = None
    # pci_dma_cleanup: DMA-capable drivers give back the default domain
    if not drv.managed_dma and pdev.group is not None:
        pdev.group.unuse_default_domain(pdev)
