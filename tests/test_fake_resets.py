"""The fake's sysfs ``reset_method`` agrees with vfio-pci's
VFIO_DEVICE_FLAGS_RESET: both list what can reset the function where it
sits (the device models decide FLR and PM, the position decides a bus
reset)."""

from __future__ import annotations

from typing import Any

import pytest

from pyvfio import Device, IommuFd
from pyvfio.core import sysfs
from pyvfio.fake import System
from pyvfio.setup import binding, devices

ROOT_PORT = {"bdf": "00:1c.0", "model": "pcie-root-port", "bridge": {"secondary_bus": 1}}


def reset_methods(b: Any, bdf: str) -> list[str]:
    return devices.pci_device(bdf, b).reset_methods  # type: ignore[no-any-return]


def vfio_can_reset(system: System, bdf: str) -> bool:
    b = system.backend
    binding.bind_group(sysfs.device_group(bdf, b), force=True, backend=b,
                       state=binding.BindingState(None))
    with IommuFd(backend=b) as iommufd, Device.open(bdf, backend=b) as dev:
        dev.bind(iommufd)
        return bool(dev.info.can_reset)


def test_edu_on_the_root_bus_has_no_reset() -> None:
    system = System("default")
    b = system.backend
    edu = "0000:00:02.0"
    assert reset_methods(b, edu) == ()
    assert not b.exists(f"{sysfs.PCI_DEVICES}/{edu}/reset_method")
    assert vfio_can_reset(system, edu) is False


def test_the_default_topology_agrees_with_vfio() -> None:
    system = System("default")
    b = system.backend
    seen = {}
    for dev in devices.pci_devices(b):
        if dev.is_bridge:
            continue
        seen[dev.bdf] = reset_methods(b, dev.bdf)
        assert vfio_can_reset(system, dev.bdf) is bool(seen[dev.bdf]), dev.bdf
    assert seen == {"0000:00:02.0": (), "0000:00:03.0": ("flr",), "0000:00:04.0": ("flr", "pm"),
                    "0000:01:01.0": (), "0000:01:02.0": ()}


@pytest.mark.parametrize("spec, expected", [
    ({"model": "edu"}, ("bus",)),  # alone below a root port
    ({"model": "nvme"}, ("flr", "bus")),
    ({"model": "generic", "vendor": 0x1234, "device": 0x1, "reset_methods": ["pm"]}, ("pm",)),
    ({"model": "generic", "vendor": 0x1234, "device": 0x1, "pcie": False,
      "reset_methods": ["flr", "bus"]}, ("bus",)),  # conventional PCI: no FLR capability
])
def test_a_device_below_a_root_port(spec: dict[str, Any], expected: tuple[str, ...]) -> None:
    system = System({"devices": [ROOT_PORT, {"bdf": "01:00.0", **spec}]})
    b = system.backend
    assert reset_methods(b, "0000:01:00.0") == expected
    assert vfio_can_reset(system, "0000:01:00.0") is True


def test_two_functions_below_a_bridge_cannot_use_a_bus_reset() -> None:
    system = System({"devices": [ROOT_PORT, {"bdf": "01:00.0", "model": "edu"},
                                 {"bdf": "01:00.1", "model": "edu"}]})
    b = system.backend
    for bdf in ("0000:01:00.0", "0000:01:00.1"):
        assert reset_methods(b, bdf) == ()
        assert vfio_can_reset(system, bdf) is False


def test_an_emptied_reset_method_list_means_no_reset() -> None:
    """``echo > reset_method`` turns every method off: vfio-pci then finds
    no working reset when the device is opened (reset_works is false)."""
    system = System("default")
    b = system.backend
    nvme = "0000:00:03.0"
    assert reset_methods(b, nvme) == ("flr",)
    b.sysfs_write(f"{sysfs.PCI_DEVICES}/{nvme}/reset_method", "\n")
    assert reset_methods(b, nvme) == ()
    assert vfio_can_reset(system, nvme) is False
    b.sysfs_write(f"{sysfs.PCI_DEVICES}/{nvme}/reset_method", "default")
    assert vfio_can_reset(system, nvme) is True


def test_the_bridge_of_the_captured_guest_keeps_its_pm_reset() -> None:
    """QEMU's pcie-pci-bridge has a PM capability without No_Soft_Reset:
    the replay of the guest lists the "pm" reset the guest listed."""
    from pathlib import Path

    fixture = Path(__file__).resolve().parent / "fixtures" / "qemu-guest-topology.json"
    system = System.from_file(fixture)
    assert "pm" in reset_methods(system.backend, "0000:04:00.0")
