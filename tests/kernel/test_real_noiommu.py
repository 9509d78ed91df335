"""The unsafe no-IOMMU mode on the real kernel (``CONFIG_VFIO_NOIOMMU``):
with no IOMMU active, ``vfio.enable_unsafe_noiommu_mode=1`` lets vfio-pci
take a device anyway, in a ``/dev/vfio/noiommu-N`` group of its own that
only a ``VFIO_NOIOMMU_IOMMU`` container accepts.

Runs in the VM boot with ``intel_iommu=off`` (``tests/run_all.py``'s
second boot), where no device has an IOMMU group.
"""

from __future__ import annotations

import os
import time
from typing import Iterator

import guestpci
import pytest

import pyvfio
from pyvfio import Container, Group, IommuType
from pyvfio.backend.kernel import KernelBackend
from pyvfio.core import sysfs
from pyvfio.setup import devices

pytestmark = [pytest.mark.kernel, pytest.mark.iommu_off]

KB = KernelBackend()
PARAM = "/sys/module/vfio/parameters/enable_unsafe_noiommu_mode"
EDU_IDENT = 0x010000ED


@pytest.fixture
def noiommu_edu() -> Iterator[str]:
    """edu on vfio-pci in no-IOMMU mode; the mode and the driver are
    given back afterwards."""
    bdf = guestpci.find_one(*guestpci.EDU)
    if os.path.exists(f"/sys/bus/pci/devices/{bdf}/iommu_group"):
        pytest.skip("edu has an IOMMU group: no-IOMMU mode needs a boot with intel_iommu=off")
    with open(PARAM) as f:
        before = f.read().strip()
    with open(PARAM, "w") as f:
        f.write("1")
    try:
        guestpci.bind_driver(bdf, "vfio-pci")  # (bind_vfio waits for /dev/vfio/N)
        group = sysfs.device_group(bdf, KB)
        deadline = time.monotonic() + 10
        while not os.path.exists(f"/dev/vfio/noiommu-{group}"):
            assert time.monotonic() < deadline, "the no-IOMMU group node did not appear"
            time.sleep(0.05)
        yield bdf
    finally:
        guestpci.unbind_vfio(bdf)
        with open(PARAM, "w") as f:
            f.write("1" if before in ("Y", "1") else "0")


def test_the_unsafe_group_and_its_container(noiommu_edu: str) -> None:
    bdf = noiommu_edu
    group_id = sysfs.device_group(bdf, KB)
    assert devices.iommu_group(group_id, KB).noiommu
    assert sysfs.group_dev_path(group_id, KB) == f"/dev/vfio/noiommu-{group_id}"
    with Container() as container, Group.for_device(bdf) as group:
        assert group.noiommu and group.viable
        assert IommuType.NOIOMMU in pyvfio.core.container.iommu_types_supported(container)
        group.set_container(container)
        container.set_iommu(IommuType.NOIOMMU)
        with group.open_device(bdf) as dev:
            assert dev.regions["BAR0"].read32(0) == EDU_IDENT
            mapping = dev.regions["BAR0"].mmap()
            assert mapping.read32(0) == EDU_IDENT
            mapping.close()


def test_a_type1_container_refuses_the_unsafe_group(noiommu_edu: str) -> None:
    with Container() as container, Group.for_device(noiommu_edu) as group:
        group.set_container(container)
        with pytest.raises(OSError):
            container.set_iommu(IommuType.TYPE1v2)
