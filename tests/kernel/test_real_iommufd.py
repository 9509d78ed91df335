"""iommufd and the vfio cdev path on the real kernel."""

from __future__ import annotations

import errno
import mmap

import guestpci
import pytest

import pyvfio
from pyvfio import Device, IommuFd
from pyvfio.errors import IoctlError

pytestmark = pytest.mark.kernel


def test_ioas_map_unmap_copy_ranges() -> None:
    with IommuFd() as fd:
        ioas = fd.ioas()
        buf = mmap.mmap(-1, 0x20000)
        auto = ioas.map(buf)
        assert auto.iova % 4096 == 0 and auto.length == 0x20000
        fixed = ioas.map(buf, 0x1000000)
        assert fixed.iova == 0x1000000
        with pytest.raises(IoctlError) as exc:
            ioas.map(buf, 0x1010000)
        assert exc.value.errno == errno.EEXIST
        other = fd.ioas()
        copied = other.copy(fixed, 0x4000000)
        assert copied.iova == 0x4000000
        # unmap must cover whole areas: a partial range is ENOENT
        with pytest.raises(IoctlError) as exc:
            ioas.unmap(0x1000000, 0x1000)
        assert exc.value.errno == errno.ENOENT
        assert ioas.unmap(0x1000000, 0x20000) == 0x20000
        ranges = ioas.iova_ranges()
        assert ranges[0].start == 0 and ranges[-1].last == (1 << 64) - 1
        ioas.allow_iovas([(0x10000000, 0x1FFFFFFF)])
        inside = ioas.map(buf)
        assert 0x10000000 <= inside.iova <= 0x1FFFFFFF
        assert ioas.unmap_all() == 0x40000
        assert auto.closed and inside.closed
        assert ioas.huge_pages is True
        ioas.huge_pages = False
        assert ioas.huge_pages is False


def test_destroy_busy_and_unknown() -> None:
    with IommuFd() as fd:
        with pytest.raises(IoctlError) as exc:
            fd.destroy(12345)
        assert exc.value.errno == errno.ENOENT


def test_cdev_bind_attach_detach(edu: str) -> None:
    with IommuFd() as fd, Device.open(edu) as dev:
        with pytest.raises(IoctlError):
            dev.region_info(0)  # nothing works before binding
        dev_id = dev.bind(fd)
        assert dev_id > 0
        ioas = fd.ioas()
        ranges_before = ioas.iova_ranges()
        hwpt_id = dev.attach(ioas)
        assert hwpt_id != ioas.id
        ranges = ioas.iova_ranges()
        assert ranges != ranges_before
        msi = guestpci.msi_window()[0]
        assert not any(r.start <= msi <= r.last for r in ranges)
        info = fd.hw_info(dev)
        assert info.type == pyvfio.HwInfoType[guestpci.hw_info_type()]
        other = fd.ioas()
        dev.replace(other)
        assert dev.attached is other
        dev.detach()
        assert dev.attached is None
        assert dev.info.is_pci
