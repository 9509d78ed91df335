"""/sys/bus/pci: the bus's devices and drivers and the driver core's
files (drivers/base/bus.c: ``bind``, ``unbind``, ``drivers_probe``,
``drivers_autoprobe``; drivers/pci/pci-driver.c: ``new_id``,
``remove_id``), which run the binding rules of :mod:`.driver_core`.
"""

from __future__ import annotations

import errno
import functools
from typing import TYPE_CHECKING

from ..core import errno_error
from .driver_core import device_attach, device_driver_attach, device_release_driver, driver_attach
from .kernfs import Attr, Dir, Link, Node, rel
from .kstrtox import scan_hex, sysfs_streq
from .module_sysfs import module_names
from .pci_driver import PCI_ANY_ID, PciId, pci_match_device

if TYPE_CHECKING:
    from .pci_device import PciDevice
    from .pci_driver import Driver
    from .sysfs import Sysfs

__all__ = ["bus_pci"]


def bus_pci(fs: Sysfs) -> dict[str, Node]:
    """/sys/bus/pci: the devices, the drivers and the driver core files."""
    return {
        "devices": Dir(functools.partial(bus_devices, fs), functools.partial(_bus_device, fs)),
        "drivers": Dir(functools.partial(bus_drivers, fs)),
        "drivers_probe": Attr(store=functools.partial(drivers_probe_store, fs)),
        "drivers_autoprobe": Attr(show=lambda: f"{int(fs.drivers_autoprobe)}\n".encode(),
                                  store=functools.partial(drivers_autoprobe_store, fs)),
    }


def _bus_device(fs: Sysfs, name: str) -> Node | None:
    pdev = fs.system.devices.get(name)
    return None if pdev is None else Link(rel("/sys/bus/pci/devices", pdev.sysfs_path))


def bus_devices(fs: Sysfs) -> dict[str, Node]:
    """/sys/bus/pci/devices: a link to every device."""
    return {
        bdf: Link(rel("/sys/bus/pci/devices", pdev.sysfs_path))
        for bdf, pdev in fs.system.devices.items()
    }


def bus_drivers(fs: Sysfs) -> dict[str, Node]:
    """/sys/bus/pci/drivers: one folder per registered driver."""
    return {name: Dir(lambda d=drv: driver_dir(fs, d))  # type: ignore[misc]
            for name, drv in fs.system.drivers.items()}


def driver_dir(fs: Sysfs, drv: Driver) -> dict[str, Node]:
    """The folder of ``drv``: its files, module link and bound devices."""
    base = f"/sys/bus/pci/drivers/{drv.name}"
    out: dict[str, Node] = {
        "bind": Attr(store=lambda v: bind_store(fs, drv, v)),
        "unbind": Attr(store=lambda v: unbind_store(fs, drv, v)),
        "new_id": Attr(store=lambda v: new_id_store(fs, drv, v)),
        "remove_id": Attr(store=lambda v: remove_id_store(drv, v)),
    }
    if drv.module is not None and drv.module in module_names(fs):
        out["module"] = Link(rel(base, f"/sys/module/{drv.module}"))
    for pdev in drv.devices:
        out[pdev.bdf] = Link(rel(base, pdev.sysfs_path))
    return out


def find_device(fs: Sysfs, buf: str) -> PciDevice | None:
    """bus_find_device_by_name: sysfs_streq on the device name."""
    for bdf, pdev in fs.system.devices.items():
        if sysfs_streq(bdf, buf):
            return pdev
    return None


def bind_store(fs: Sysfs, drv: Driver, value: str) -> None:
    """bind_store: bind ``drv`` to the device named."""
    pdev = find_device(fs, value)
    # bind_store: ENODEV for an unknown device or one the driver does not match
    if pdev is None or not pci_match_device(drv, pdev):
        raise errno_error(errno.ENODEV, f"{value.strip()!r} does not match {drv.name}")
    device_driver_attach(drv, pdev)


def unbind_store(fs: Sysfs, drv: Driver, value: str) -> None:
    """unbind_store: take the device named from ``drv``."""
    pdev = find_device(fs, value)
    # unbind_store: ENODEV unless the device is bound to this driver
    if pdev is None or pdev.driver != drv.name:
        raise errno_error(errno.ENODEV, f"{value.strip()!r} is not bound to {drv.name}")
    device_release_driver(pdev)


def drivers_probe_store(fs: Sysfs, value: str) -> None:
    """drivers_probe_store: find a driver for the device named."""
    pdev = find_device(fs, value)
    if pdev is None:
        # drivers_probe_store: ENODEV for an unknown device
        raise errno_error(errno.ENODEV, f"no device {value.strip()!r}")
    # drivers_probe_store: EINVAL when the probe failed before the driver ran
    if device_attach(pdev) < 0:
        raise errno_error(errno.EINVAL, f"probing {pdev.bdf} failed")


def drivers_autoprobe_store(fs: Sysfs, value: str) -> None:
    """drivers_autoprobe_store."""
    fs.drivers_autoprobe = not value.startswith("0")


def new_id_store(fs: Sysfs, drv: Driver, value: str) -> None:
    """new_id_store: add a dynamic ID, then bind the devices it matches."""
    fields = scan_hex(value, 7)
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
    driver_attach(fs.system, drv)


def remove_id_store(drv: Driver, value: str) -> None:
    """remove_id_store: remove a dynamic ID."""
    fields = scan_hex(value, 6)
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
