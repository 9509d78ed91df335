"""The fake kernel end to end, as a user would drive it: bind an NVMe
controller to vfio-pci through sysfs, open it through the legacy path and
the cdev path, map a buffer, let the controller DMA an Identify page into
it, and see an IOMMU fault when its DMA hits an unmapped IOVA."""

from __future__ import annotations

import mmap
import struct

import pytest

import pyvfio
from pyvfio import Container, Device, Group, IommuFd
from pyvfio.fake import System

NVME = "0000:00:03.0"  # the NVMe controller of the "default" topology

# NVMe register offsets and the admin queue layout used below (IOVAs)
CC, CSTS, AQA, ASQ, ACQ, SQ0TDBL = 0x14, 0x1C, 0x24, 0x28, 0x30, 0x1000
SQ_IOVA, CQ_IOVA, DATA_IOVA = 0x100000, 0x101000, 0x102000


def _bind(system: System) -> None:
    b = system.backend
    b.sysfs_write(f"/sys/bus/pci/devices/{NVME}/driver_override", "vfio-pci")
    b.sysfs_write(f"/sys/bus/pci/drivers/nvme/unbind", NVME)
    b.sysfs_write("/sys/bus/pci/drivers_probe", NVME)
    assert pyvfio.core.sysfs.device_driver(NVME, b) == "vfio-pci"


def _identify(dev: Device, mem: mmap.mmap, data_iova: int) -> int:
    """Bring the controller up with a one-entry admin queue pair and issue
    Identify Controller into ``data_iova``; return the completion status."""
    bar0 = dev.region_info(pyvfio.PciRegion.BAR0)
    command = int.from_bytes(dev.pread(pyvfio.PciRegion.CONFIG, 4, 2), "little")
    dev.pwrite(pyvfio.PciRegion.CONFIG, 4, (command | 0x6).to_bytes(2, "little"))
    dev.pwrite(bar0, CC, struct.pack("<I", 0))
    dev.pwrite(bar0, AQA, struct.pack("<I", (1 << 16) | 1))  # 2 entries each
    dev.pwrite(bar0, ASQ, struct.pack("<Q", SQ_IOVA))
    dev.pwrite(bar0, ACQ, struct.pack("<Q", CQ_IOVA))
    dev.pwrite(bar0, CC, struct.pack("<I", (4 << 20) | (6 << 16) | 1))  # IOCQES, IOSQES, EN
    assert struct.unpack("<I", dev.pread(bar0, CSTS, 4))[0] & 1, "controller not ready"
    sqe = struct.pack("<BBHI", 0x06, 0, 7, 0) + bytes(16) + struct.pack("<QQ", data_iova, 0)
    sqe += struct.pack("<I", 1) + bytes(20)  # CDW10: CNS 1 (controller)
    mem[0:64] = sqe
    dev.pwrite(bar0, SQ0TDBL, struct.pack("<I", 1))
    cqe = mem[0x1000:0x1010]
    assert struct.unpack("<H", cqe[12:14])[0] == 7, "completion for our command id"
    return struct.unpack("<H", cqe[14:16])[0] >> 1  # status field without phase


@pytest.mark.parametrize("path", ["legacy", "cdev"])
def test_nvme_identify_through_the_iommu(path: str) -> None:
    system = System("default")
    _bind(system)
    b = system.backend
    mem = mmap.mmap(-1, 0x3000)
    if path == "legacy":
        container = Container(backend=b)
        group = Group.for_device(NVME, backend=b)
        group.set_container(container)
        container.set_iommu()
        container.map_dma(mem, SQ_IOVA)
        dev = group.open_device(NVME)
        closers = [group, container]
    else:
        iommufd = IommuFd(backend=b)
        dev = Device.open(NVME, backend=b)
        dev.bind(iommufd)
        ioas = iommufd.ioas()
        dev.attach(ioas)
        ioas.map(mem, SQ_IOVA)
        closers = [dev, iommufd]
    try:
        assert _identify(dev, mem, DATA_IOVA) == 0
        page = mem[0x2000:0x3000]
        vid = struct.unpack("<H", page[0:2])[0]
        assert vid == 0x1B36
        assert page[4:24].strip() and page[24:64].strip(), "serial and model filled in"
        # A transfer to an unmapped IOVA: blocked, memory untouched, fault logged.
        faults = len(system.faults)
        before = bytes(mem)
        status = _identify(dev, mem, 0x900000)
        assert status & 0xFF == 0x04, "Data Transfer Error"
        assert len(system.faults) > faults
        fault = system.faults[-1]
        assert fault.bdf == NVME and fault.write and fault.iova == 0x900000
        assert bytes(mem)[0x2000:] == before[0x2000:]
    finally:
        for obj in closers:
            obj.close()
    assert not b.open_files
