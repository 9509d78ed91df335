"""IommuFd, IOAS, HWPT and Device (cdev path) on the fake kernel."""

from __future__ import annotations

import errno
import gc
import mmap
import os

import pytest

import pyvfio
from pyvfio import Device, IommuFd
from pyvfio.errors import ClosedError, InvalidArgumentError, IoctlError

U64_MAX = (1 << 64) - 1


@pytest.fixture
def backend(vfio_env):  # type: ignore[no-untyped-def]
    return vfio_env.backend


@pytest.fixture
def edu(vfio_env):  # type: ignore[no-untyped-def]
    return vfio_env.edu


@pytest.fixture
def iommufd(backend):  # type: ignore[no-untyped-def]
    with IommuFd(backend=backend) as fd:
        yield fd


def test_ioas_map_auto_and_fixed(iommufd) -> None:  # type: ignore[no-untyped-def]
    ioas = iommufd.ioas()
    assert ioas.id > 0 and repr(ioas).startswith("<IOAS IOAS ")
    buf = mmap.mmap(-1, 0x20000)
    auto = ioas.map(buf)
    assert auto.iova % 4096 == 0 and auto.length == 0x20000
    assert auto.readable and auto.writeable
    fixed = ioas.map(buf, 0x1000000, writeable=False)
    assert fixed.iova == 0x1000000 and not fixed.writeable
    assert ioas.mappings == tuple(sorted((auto, fixed), key=lambda m: m.iova))
    with pytest.raises(IoctlError) as exc:
        ioas.map(buf, 0x1010000)
    assert exc.value.errno == errno.EEXIST
    assert exc.value.ioctl == "IOMMU_IOAS_MAP"
    assert f"IOAS {ioas.id}" in str(exc.value)
    fixed.close()
    assert fixed.closed and ioas.mappings == (auto,)


def test_ioas_unmap_rules(iommufd) -> None:  # type: ignore[no-untyped-def]
    ioas = iommufd.ioas()
    buf = mmap.mmap(-1, 0x4000)
    a = ioas.map(buf, 0x100000)
    b = ioas.map(buf, 0x200000)
    with pytest.raises(IoctlError) as exc:
        ioas.unmap(0x100000, 0x1000)  # splits an area
    assert exc.value.errno == errno.ENOENT
    assert ioas.unmap(0, 0x300000) == 0x8000
    assert a.closed and b.closed
    with pytest.raises(InvalidArgumentError, match="zero"):
        ioas.unmap(0x100000, 0)
    with pytest.raises(InvalidArgumentError, match="wraps") as wrap:
        ioas.map(buf, U64_MAX - 0x1000)
    assert wrap.value.errno == errno.EOVERFLOW  # what the kernel gives (iopt_map_pages)
    c = ioas.map(buf)
    assert ioas.unmap_all() == 0x4000 and c.closed


def test_copy_between_ioas(iommufd) -> None:  # type: ignore[no-untyped-def]
    src = iommufd.ioas()
    dst = iommufd.ioas()
    buf = mmap.mmap(-1, 0x8000)
    m = src.map(buf, 0x400000)
    copied = dst.copy(m, 0x800000)
    assert (copied.iova, copied.length) == (0x800000, 0x8000)
    auto = dst.copy((src, 0x400000, 0x4000))
    assert auto.length == 0x4000
    with pytest.raises(IoctlError) as exc:
        dst.copy((src, 0x900000, 0x1000), 0x0)
    assert exc.value.errno == errno.ENOENT


def test_iova_ranges_and_allow(iommufd) -> None:  # type: ignore[no-untyped-def]
    ioas = iommufd.ioas()
    ranges = ioas.iova_ranges()
    assert ranges == [pyvfio.IovaRange(0, U64_MAX)]
    assert ioas.iova_alignment >= 1
    ioas.allow_iovas([(0x10000000, 0x1FFFFFFF), pyvfio.IovaRange(0x40000000, 0x4FFFFFFF)])
    m = ioas.map(mmap.mmap(-1, 0x1000))
    assert 0x10000000 <= m.iova <= 0x1FFFFFFF
    assert ioas.allowed_ranges == (pyvfio.IovaRange(0x10000000, 0x1FFFFFFF),
                                   pyvfio.IovaRange(0x40000000, 0x4FFFFFFF))
    ioas.allow_iovas([])
    assert ioas.allowed_ranges == ()
    with pytest.raises(InvalidArgumentError):
        ioas.allow_iovas([(-1, 5)])
    assert ioas.allowed_ranges == ()  # refused before the ioctl: nothing changed


def test_map_file(iommufd, backend) -> None:  # type: ignore[no-untyped-def]
    ioas = iommufd.ioas()
    fd = backend.memfd_create("dma")
    try:
        backend.ftruncate(fd, 0x4000)
        m = ioas.map_file(fd, 0x4000, iova=0x10000)
        assert (m.iova, m.length) == (0x10000, 0x4000)
    finally:
        os.close(fd)


def test_options(iommufd) -> None:  # type: ignore[no-untyped-def]
    ioas = iommufd.ioas()
    assert ioas.huge_pages is True
    ioas.huge_pages = False
    assert ioas.huge_pages is False
    assert iommufd.rlimit_mode in (pyvfio.RlimitMode.USER, pyvfio.RlimitMode.MM)


def test_destroy_unknown_id(iommufd) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(IoctlError) as exc:
        iommufd.destroy(9999)
    assert exc.value.errno == errno.ENOENT
    assert "no object has this ID" in str(exc.value)


def test_vfio_compat_ioas(iommufd) -> None:  # type: ignore[no-untyped-def]
    ioas = iommufd.ioas()
    iommufd.vfio_ioas_set(ioas)
    assert iommufd.vfio_ioas_get() == ioas.id
    iommufd.vfio_ioas_clear()


def test_closed_ioas_and_mapping_raise(iommufd) -> None:  # type: ignore[no-untyped-def]
    ioas = iommufd.ioas()
    m = ioas.map(mmap.mmap(-1, 0x1000))
    ioas.close()
    assert m.closed and ioas.closed
    ioas.close()
    with pytest.raises(ClosedError, match=f"IOAS {ioas.id} is closed"):
        ioas.map(mmap.mmap(-1, 0x1000))
    with pytest.raises(ClosedError):
        m.close() if False else ioas.iova_ranges()


def test_closing_iommufd_closes_children(backend) -> None:  # type: ignore[no-untyped-def]
    fd = IommuFd(backend=backend)
    a, b = fd.ioas(), fd.ioas()
    m = a.map(mmap.mmap(-1, 0x1000))
    fd.close()
    assert a.closed and b.closed and m.closed and fd.closed


def test_cdev_bind_attach_replace_detach(  # type: ignore[no-untyped-def]
        iommufd, backend, edu, msi_iova, hw_info_type) -> None:
    with Device.open(edu, backend=backend) as dev:
        assert dev.path and dev.path.startswith("/dev/vfio/devices/vfio")
        with pytest.raises(InvalidArgumentError, match="bind the device"):
            dev.attach(iommufd.ioas())
        dev_id = dev.bind(iommufd)
        assert dev_id > 0 and dev.dev_id == dev_id and dev.iommufd is iommufd
        ioas = iommufd.ioas()
        before = ioas.iova_ranges()
        pt = dev.attach(ioas)
        assert pt > 0 and dev.attached is ioas
        after = ioas.iova_ranges()
        assert after != before
        assert not any(r.start <= msi_iova <= r.last for r in after)
        other = iommufd.ioas()
        dev.replace(other)
        assert dev.attached is other and ioas.attached_devices == ()
        assert other.attached_devices == (dev,)
        assert ioas.iova_ranges() == before, "ranges widen again on detach"
        dev.detach()
        assert dev.attached is None
        info = iommufd.hw_info(dev)
        assert info.type == hw_info_type
        if info.type != pyvfio.HwInfoType.NONE:
            # VT-d's capability registers, or the SMMUv3's ID registers
            assert {"cap_reg", "idr"} & set(info.decoded())


def test_closing_ioas_detaches_devices(iommufd, backend, edu) -> None:  # type: ignore[no-untyped-def]
    with Device.open(edu, backend=backend) as dev:
        dev.bind(iommufd)
        ioas = iommufd.ioas()
        ioas.map(mmap.mmap(-1, 0x1000))
        dev.attach(ioas)
        ioas.close()  # would be EBUSY in the kernel with the device attached
        assert ioas.closed and dev.attached is None


def test_hwpt_alloc_and_dirty_tracking(iommufd, backend, edu) -> None:  # type: ignore[no-untyped-def]
    with Device.open(edu, backend=backend) as dev:
        dev.bind(iommufd)
        ioas = iommufd.ioas()
        hwpt = iommufd.hwpt_alloc(dev, ioas)
        assert hwpt.id > 0 and hwpt.parent is ioas
        dev.attach(hwpt)
        assert dev.attached is hwpt
        hwpt.close()  # detaches the device first
        assert dev.attached is None
        if not iommufd.hw_info(dev).dirty_tracking:
            with pytest.raises(IoctlError) as exc:
                iommufd.hwpt_alloc(dev, ioas, dirty_tracking=True)
            assert exc.value.errno == errno.EOPNOTSUPP


def test_unclosed_iommufd_warns(backend) -> None:  # type: ignore[no-untyped-def]
    fd = IommuFd(backend=backend)
    fd.ioas()
    with pytest.warns(ResourceWarning, match="unclosed iommufd"):
        del fd
        gc.collect()


def test_closing_ioas_destroys_its_hwpts_first(iommufd, backend, edu) -> None:  # type: ignore[no-untyped-def]
    with Device.open(edu, backend=backend) as dev:
        dev.bind(iommufd)
        ioas = iommufd.ioas()
        hwpt = iommufd.hwpt_alloc(dev, ioas)
        with pytest.raises(IoctlError) as exc:
            iommufd.destroy(ioas.id)  # the HWPT keeps the IOAS busy
        assert exc.value.errno == errno.EBUSY
        ioas.close()
        assert hwpt.closed and ioas.closed


def test_unmap_all_forgets_a_mapping_at_the_top_of_the_iova_space(iommufd) -> None:  # type: ignore[no-untyped-def]
    ioas = iommufd.ioas()
    top = ioas.map(mmap.mmap(-1, 0x1000), U64_MAX - 0xFFF)
    assert top.last == U64_MAX
    assert ioas.unmap_all() == 0x1000
    assert top.closed and ioas.mappings == ()
