"""Less common object-layer paths: dirty tracking, vaddr update, fault
queues, PASID, change_process — on both backends where the IOMMU allows."""

from __future__ import annotations

import errno
import mmap

import pytest

import pyvfio
from pyvfio import Container, Device, Group, IommuFd, IommuType
from pyvfio.errors import InvalidArgumentError, IoctlError


@pytest.fixture
def type1(vfio_env):  # type: ignore[no-untyped-def]
    c = Container(backend=vfio_env.backend)
    g = Group.for_device(vfio_env.edu, backend=vfio_env.backend)
    g.set_container(c)
    c.set_iommu(IommuType.TYPE1v2)
    yield c
    g.close()
    c.close()


def test_type1_dirty_tracking(type1) -> None:  # type: ignore[no-untyped-def]
    c = type1
    assert c.info().migration is not None
    buf = mmap.mmap(-1, 0x8000)
    c.map_dma(buf, 0x100000)
    c.start_dirty_tracking()
    bitmap = c.dirty_bitmap(0x100000, 0x8000, 4096)
    # With a device that cannot report its own writes, type1 reports every
    # pinned page dirty (vfio_iommu_type1: "pinned_page_dirty_scope").
    assert bitmap[0] == 0xFF
    c.stop_dirty_tracking()
    with pytest.raises(InvalidArgumentError, match="power of two"):
        c.dirty_bitmap(0x100000, 0x8000, 3000)


def test_type1_unmap_with_dirty_bitmap(type1) -> None:  # type: ignore[no-untyped-def]
    c = type1
    buf = mmap.mmap(-1, 0x4000)
    m = c.map_dma(buf, 0x200000)
    c.start_dirty_tracking()
    bitmap = c.unmap_dma_with_dirty(0x200000, 0x4000, 4096)
    assert bitmap[0] & 0xF == 0xF and m.closed
    c.stop_dirty_tracking()


def test_type1_vaddr_invalidate_and_update(type1) -> None:  # type: ignore[no-untyped-def]
    c = type1
    old = mmap.mmap(-1, 0x2000)
    m = c.map_dma(old, 0x300000)
    c.invalidate_vaddr(0x300000, 0x2000)
    assert not m.closed, "invalidating the address keeps the mapping"
    with pytest.raises(IoctlError) as exc:
        c.invalidate_vaddr(0x300000, 0x2000)
    assert exc.value.errno == errno.EINVAL  # already invalidated
    new = mmap.mmap(-1, 0x2000)
    c.update_vaddr(m, new)
    assert m.vaddr != 0
    with pytest.raises(InvalidArgumentError, match="smaller"):
        c.update_vaddr(m, mmap.mmap(-1, 0x1000))
    assert c.unmap_dma(0x300000, 0x2000) == 0x2000


def test_change_process_and_fault_queue(vfio_env) -> None:  # type: ignore[no-untyped-def]
    with IommuFd(backend=vfio_env.backend) as fd:
        fd.change_process()
        queue = fd.fault_queue()
        assert queue.id > 0 and queue.fileno() >= 0
        queue.close()
        with pytest.raises(pyvfio.ClosedError):
            queue.fileno()


def test_pasid_attach_without_pasid_support(vfio_env) -> None:  # type: ignore[no-untyped-def]
    with IommuFd(backend=vfio_env.backend) as fd, \
            Device.open(vfio_env.edu, backend=vfio_env.backend) as dev:
        dev.bind(fd)
        ioas = fd.ioas()
        info = fd.hw_info(dev)
        if info.max_pasid_log2:
            pytest.skip("this IOMMU/device supports PASID")
        with pytest.raises(IoctlError) as exc:
            dev.attach(ioas, pasid=1)
        assert exc.value.ioctl == "VFIO_DEVICE_ATTACH_IOMMUFD_PT"
        assert dev.attached is None


def test_hwpt_dirty_tracking_on_a_capable_iommu() -> None:
    """The fake with an IOMMU that tracks dirty pages in hardware."""
    from pyvfio.fake import System

    topo = System("minimal").to_topology()
    topo["iommu"]["dirty_tracking"] = True
    system = System(topo)
    b = system.backend
    bdf = "0000:00:02.0"
    b.sysfs_write(f"/sys/bus/pci/devices/{bdf}/driver_override", "vfio-pci")
    b.sysfs_write("/sys/bus/pci/drivers_probe", bdf)
    with IommuFd(backend=b) as fd, Device.open(bdf, backend=b) as dev:
        dev.bind(fd)
        assert fd.hw_info(dev).dirty_tracking
        ioas = fd.ioas()
        hwpt = fd.hwpt_alloc(dev, ioas, dirty_tracking=True)
        dev.attach(hwpt)
        buf = mmap.mmap(-1, 0x4000)
        ioas.map(buf, 0x100000)
        hwpt.set_dirty_tracking(True)
        system.devices[bdf].dma_write(0x101000, b"x" * 16)  # the device writes page 1
        assert hwpt.dirty_bitmap(0x100000, 0x4000, 4096, clear=False) == b"\x02"
        assert hwpt.dirty_bitmap(0x100000, 0x4000, 4096) == b"\x02"
        assert hwpt.dirty_bitmap(0x100000, 0x4000, 4096) == b"\x00"
        hwpt.set_dirty_tracking(False)
        dev.detach()


def _pasid_machine():  # type: ignore[no-untyped-def]
    """A fake IOMMU with 20-bit PASIDs and an edu that has 16 of them."""
    from pyvfio.fake import System

    topo = System("minimal").to_topology()
    topo["iommu"]["pasid_bits"] = 20
    system = System(topo)
    bdf = "0000:00:02.0"
    system.backend.sysfs_write(f"/sys/bus/pci/devices/{bdf}/driver_override", "vfio-pci")
    system.backend.sysfs_write("/sys/bus/pci/drivers_probe", bdf)
    system.device(bdf).pasid_bits = 16
    return system, bdf


def test_closing_a_pasid_page_table_detaches_only_that_pasid() -> None:
    system, bdf = _pasid_machine()
    b = system.backend
    with IommuFd(backend=b) as fd, Device.open(bdf, backend=b) as dev:
        dev.bind(fd)
        ioas = fd.ioas()
        plain = fd.hwpt_alloc(dev, ioas, pasid=True)
        per_pasid = fd.hwpt_alloc(dev, ioas, pasid=True)
        dev.attach(plain)
        dev.attach(per_pasid, pasid=5)
        dev.attach(plain, pasid=7)
        assert plain.attached_devices == (dev,) and per_pasid.attached_devices == (dev,)
        per_pasid.close()  # detaches PASID 5, nothing else
        assert dev.attached is plain
        dev.detach(pasid=7)
        assert plain.attached_devices == (dev,), "still attached without a PASID"
        dev.attach(plain, pasid=9)
        plain.close()  # detaches both the plain and the PASID 9 attachment
        assert dev.attached is None and plain.attached_devices == ()
    assert b.open_files == []


def test_closing_a_fault_queue_destroys_the_hwpts_reporting_to_it() -> None:
    system, bdf = _pasid_machine()
    b = system.backend
    with IommuFd(backend=b) as fd, Device.open(bdf, backend=b) as dev:
        dev.bind(fd)
        ioas = fd.ioas()
        queue = fd.fault_queue()
        try:
            hwpt = fd.hwpt_alloc(dev, ioas, fault=queue)
        except IoctlError as exc:
            pytest.skip(f"the fake's IOMMU has no I/O page faults: {exc}")
        assert hwpt.fault is queue
        queue.close()  # the HWPT holds the queue: it goes first, without EBUSY
        assert hwpt.closed and queue.closed
        ioas.close()


def test_fields_too_wide_for_the_struct_are_refused_in_python(vfio_env) -> None:  # type: ignore[no-untyped-def]
    with IommuFd(backend=vfio_env.backend) as fd, \
            Device.open(vfio_env.edu, backend=vfio_env.backend) as dev:
        dev.bind(fd)
        ioas = fd.ioas()
        with pytest.raises(InvalidArgumentError, match=r"pasid 0x200000000 is outside 0\.\.2\*\*32-1"):
            dev.attach(ioas, pasid=1 << 33)
        with pytest.raises(InvalidArgumentError, match="pasid"):
            dev.detach(pasid=-1)
        with pytest.raises(InvalidArgumentError, match="ends before it starts"):
            ioas.allow_iovas([(0x2000, 0x1000)])
        with pytest.raises(InvalidArgumentError, match=r"id 0x10000000000 is outside"):
            fd.destroy(1 << 40)
        # any field set through the generic command path is range-checked
        with pytest.raises(InvalidArgumentError, match=r"does not fit its unsigned int field"):
            fd._cmd("IOMMU_DESTROY", pyvfio.lib.IOMMU_DESTROY, "struct iommu_destroy",
                    id=1 << 40)
        assert dev.attached is None


@pytest.mark.parametrize("legacy", [False, True])
def test_open_attached_on_either_path(vfio_env, legacy: bool) -> None:  # type: ignore[no-untyped-def]
    with pyvfio.open_attached(vfio_env.edu, backend=vfio_env.backend, legacy=legacy) as (dev, space):
        assert isinstance(space, Container if legacy else pyvfio.IOAS)
        assert (dev.group is not None) == legacy and (dev.dev_id is not None) == (not legacy)
        mapping = space.map(mmap.mmap(-1, 0x1000), 0x100000)
        assert mapping.iova == 0x100000
    assert dev.closed and space.closed and mapping.closed
