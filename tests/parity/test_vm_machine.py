"""The shipped fake machine that names the test VM is that VM: inside the
VM, a fresh capture of the machine (``pyvfio topology dump``'s
:func:`~pyvfio.setup.capture.capture`) equals the shipped topology in
everything but what the tests themselves change (drivers, the memlock
limit, mounts)."""

from __future__ import annotations

from typing import Any

import pytest

from pyvfio.fake.machine.topology import load
from pyvfio.setup.capture import capture

from .test_parity import vm_machine

#: Per device: what the machine is, not what the tests do with it.
_DEVICE_KEYS = ("model", "vendor", "device", "class", "subsystem_vendor", "subsystem_device",
                "revision", "bars", "bridge", "reset_methods", "numa_node", "physfn",
                "sriov_totalvfs")


#: IOMMU facts sysfs does not show for an IOMMU without hw_info (the
#: virtio-iommu): its input range and page sizes.  The parity scenarios
#: compare them through the IOVA ranges the kernel reports.
_NOT_IN_SYSFS = ("aperture", "pgsize_bitmap")


def machine_facts(topology: dict[str, Any]) -> dict[str, Any]:
    """The parts of a (loaded) topology that describe the hardware, the IOMMU
    and the kernel."""
    iommu = topology["iommu"]
    if iommu is not None and iommu["hw_info_type"] == "none":
        iommu = {k: v for k, v in iommu.items() if k not in _NOT_IN_SYSFS}
    return {
        "iommu": iommu,
        "iommufd": topology["iommufd"],
        "groups": topology["groups"],
        "noiommu": topology["noiommu"],
        "numa_nodes": topology["numa_nodes"],
        "kernel_release": topology["kernel"]["release"],
        "devices": {d["bdf"]: {k: d.get(k) for k in _DEVICE_KEYS} for d in topology["devices"]},
    }


def differences(shipped: dict[str, Any], live: dict[str, Any]) -> list[str]:
    """One line per fact that differs between two :func:`machine_facts`."""
    out = []
    for key in shipped:
        if key == "devices":
            for bdf in sorted(set(shipped[key]) | set(live[key])):
                a, b = shipped[key].get(bdf), live[key].get(bdf)
                if a != b:
                    out.append(f"device {bdf}: shipped {a} live {b}")
        elif shipped[key] != live[key]:
            out.append(f"{key}: shipped {shipped[key]} live {live[key]}")
    return out


def test_machine_facts_see_a_changed_machine() -> None:
    shipped = machine_facts(load("qemu-vtd"))
    other = machine_facts(load("qemu-vtd-sm"))
    assert differences(shipped, shipped) == []
    assert any(line.startswith("iommu:") for line in differences(shipped, other))


@pytest.mark.kernel
def test_shipped_machine_is_this_vm() -> None:
    machine = vm_machine()
    found = differences(machine_facts(load(machine)), machine_facts(load(capture())))
    assert not found, f"the fake machine {machine!r} is not this VM:\n  " + "\n  ".join(found)
