"""Real DMA by QEMU's edu device through the emulated Intel IOMMU.

edu (QEMU docs/specs/edu.rst) copies between RAM and a 4 KiB buffer at
BAR0 offset 0x40000 with registers at 0x80 (source), 0x88 (destination),
0x90 (count) and 0x98 (command: bit 0 start, bit 1 device-to-RAM); only
the low 28 address bits are used, so IOVAs stay under 256 MiB.
"""

from __future__ import annotations

import mmap
import time

import pytest

import pyvfio
from pyvfio import Container, Device, Group, IommuFd

pytestmark = pytest.mark.kernel

EDU_BUFFER = 0x40000
PATTERN = bytes(range(64))


def _u64(value: int) -> bytes:
    return value.to_bytes(8, "little")


def _enable_bus_master(dev: Device) -> None:
    command = int.from_bytes(dev.pread(pyvfio.PciRegion.CONFIG, 4, 2), "little")
    dev.pwrite(pyvfio.PciRegion.CONFIG, 4, (command | 0x6).to_bytes(2, "little"))


def _dma(dev: Device, src: int, dst: int, count: int, to_ram: bool) -> None:
    bar0 = dev.region_info(pyvfio.PciRegion.BAR0)
    dev.pwrite(bar0, 0x80, _u64(src))
    dev.pwrite(bar0, 0x88, _u64(dst))
    dev.pwrite(bar0, 0x90, _u64(count))
    dev.pwrite(bar0, 0x98, _u64(1 | (2 if to_ram else 0)))
    deadline = time.monotonic() + 5
    while int.from_bytes(dev.pread(bar0, 0x98, 8), "little") & 1:
        assert time.monotonic() < deadline, "edu DMA did not complete"
        time.sleep(0.001)


def _round_trip(dev: Device, buf: mmap.mmap, iova: int) -> None:
    buf[0:64] = PATTERN
    buf[0x1000:0x1040] = bytes(64)
    _dma(dev, iova, EDU_BUFFER, 64, to_ram=False)
    _dma(dev, EDU_BUFFER, iova + 0x1000, 64, to_ram=True)


def test_dma_through_iommufd(edu: str) -> None:
    with IommuFd() as fd, Device.open(edu) as dev:
        dev.bind(fd)
        ioas = fd.ioas()
        dev.attach(ioas)
        _enable_bus_master(dev)
        buf = mmap.mmap(-1, 0x2000)
        mapping = ioas.map(buf, 0x100000)
        _round_trip(dev, buf, mapping.iova)
        assert buf[0x1000:0x1040] == PATTERN
        mapping.close()
        # Unmapped: the IOMMU blocks the device's write; memory is untouched.
        buf[0x1000:0x1040] = bytes(64)
        _dma(dev, EDU_BUFFER, 0x101000, 64, to_ram=True)
        assert buf[0x1000:0x1040] == bytes(64)


def test_dma_through_type1(edu: str) -> None:
    with Container() as c, Group.for_device(edu) as g:
        g.set_container(c)
        c.set_iommu()
        with g.open_device(edu) as dev:
            _enable_bus_master(dev)
            buf = mmap.mmap(-1, 0x2000)
            c.map_dma(buf, 0x200000)
            _round_trip(dev, buf, 0x200000)
            assert buf[0x1000:0x1040] == PATTERN
