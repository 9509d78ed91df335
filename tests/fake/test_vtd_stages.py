"""VT-d in scalable mode on the fake: paging domains are first-stage unless
the flags need the second stage, and the aperture follows
(intel_iommu_domain_alloc_paging_flags), as the test VM showed with
``x-scalable-mode=on,x-flts=on``."""

from __future__ import annotations

import pytest

from pyvfio import IommuFd
from pyvfio.fake import System
from pyvfio.fake.iommufd._iommu import paging_domain_aperture
from pyvfio.toolkit.attach import open_attached

EDU = "0000:01:00.0"            # behind a root port in the captured machines
FIRST_STAGE_LAST = (1 << 47) - 1
SECOND_STAGE_LAST = (1 << 48) - 1


def bound(machine: str) -> System:
    system = System(machine)
    b = system.backend
    b.sysfs_write(f"/sys/bus/pci/devices/{EDU}/driver_override", "vfio-pci")
    b.sysfs_write("/sys/bus/pci/drivers_probe", EDU)
    return system


@pytest.mark.parametrize("machine, last", [("qemu-vtd", SECOND_STAGE_LAST),
                                           ("qemu-vtd-sm", FIRST_STAGE_LAST),
                                           ("default", SECOND_STAGE_LAST)])
def test_ioas_and_type1_ranges_end_where_the_domain_does(machine: str, last: int) -> None:
    system = System(machine)
    bdf = EDU if machine != "default" else "0000:00:02.0"
    b = system.backend
    b.sysfs_write(f"/sys/bus/pci/devices/{bdf}/driver_override", "vfio-pci")
    b.sysfs_write("/sys/bus/pci/drivers_probe", bdf)
    for legacy in (False, True):
        with open_attached(bdf, backend=b, legacy=legacy) as (_dev, space):
            assert space.iova_ranges()[-1].last == last, (machine, legacy)


def test_nesting_parent_gets_the_second_stage() -> None:
    system = bound("qemu-vtd-sm")
    system.iommu.nesting = True  # type: ignore[union-attr]
    from pyvfio._uapi import lib
    assert paging_domain_aperture(system, 0)[1] == FIRST_STAGE_LAST
    assert paging_domain_aperture(system, lib.IOMMU_HWPT_ALLOC_NEST_PARENT)[1] == \
        SECOND_STAGE_LAST
    assert paging_domain_aperture(system, lib.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)[1] == \
        SECOND_STAGE_LAST
    with open_attached(EDU, backend=system.backend) as (dev, ioas):
        fd = dev.iommufd
        assert isinstance(fd, IommuFd)
        hwpt = fd.hwpt_alloc(dev, ioas, nest_parent=True)
        ioas2 = fd.ioas()
        hwpt2 = fd.hwpt_alloc(dev, ioas2, nest_parent=True)
        dev.replace(hwpt2)
        assert ioas2.iova_ranges()[-1].last == SECOND_STAGE_LAST
        dev.replace(ioas)
        hwpt.close()
        hwpt2.close()
        ioas2.close()


def test_hw_info_reports_the_captured_registers() -> None:
    system = bound("qemu-vtd-sm")
    iommu = system.iommu
    assert iommu is not None and iommu.cap_reg is not None and iommu.ecap_reg is not None
    with open_attached(EDU, backend=system.backend) as (dev, _ioas):
        fd = dev.iommufd
        assert isinstance(fd, IommuFd)
        info = fd.hw_info(dev)
        decoded = info.decoded()
        assert decoded["cap_reg"] == iommu.cap_reg and decoded["ecap_reg"] == iommu.ecap_reg
