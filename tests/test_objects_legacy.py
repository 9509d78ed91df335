"""Container, Group, DmaMapping and Device (legacy path) on the fake kernel."""

from __future__ import annotations

import errno
import gc
import mmap

import pytest

import pyvfio
from pyvfio import Container, Group, IommuType
from pyvfio.errors import ClosedError, InvalidArgumentError, IoctlError, NotViableError


@pytest.fixture
def backend(vfio_env):  # type: ignore[no-untyped-def]
    return vfio_env.backend


@pytest.fixture
def edu(vfio_env):  # type: ignore[no-untyped-def]
    return vfio_env.edu


@pytest.fixture
def setup(backend, edu):  # type: ignore[no-untyped-def]
    container = Container(backend=backend)
    group = Group.for_device(edu, backend=backend)
    group.set_container(container)
    container.set_iommu(IommuType.TYPE1v2)
    yield container, group
    group.close()
    container.close()


def test_container_queries(backend) -> None:  # type: ignore[no-untyped-def]
    with Container(backend=backend) as c:
        assert c.api_version == pyvfio.lib.VFIO_API_VERSION
        assert pyvfio.Extension.TYPE1v2 in c.extensions
        assert c.check_extension(pyvfio.Extension.SPAPR_TCE) == 0
        assert c.iommu_type is None
        assert "container" in repr(c)


def test_set_iommu_needs_a_group(backend) -> None:  # type: ignore[no-untyped-def]
    with Container(backend=backend) as c:
        with pytest.raises(InvalidArgumentError, match="attach a group"):
            c.set_iommu()


def test_group_status_and_devices(backend, edu) -> None:  # type: ignore[no-untyped-def]
    with Group.for_device(edu, backend=backend) as g:
        assert g.id == pyvfio.core.sysfs.device_group(edu, backend)
        assert g.path == f"/dev/vfio/{g.id}"
        st = g.status
        assert st.viable and not st.container_set
        assert g.viable
        assert g.devices == [edu]
        assert g.viability() == []
        assert not g.noiommu


def test_group_open_twice_is_busy(backend, edu) -> None:  # type: ignore[no-untyped-def]
    with Group.for_device(edu, backend=backend):
        with pytest.raises(IoctlError) as info:
            Group.for_device(edu, backend=backend)
        assert info.value.errno == errno.EBUSY and info.value.ioctl == "open"
        assert "can be open only once" in str(info.value)
        assert info.value.target is not None and info.value.target.startswith("/dev/vfio/")


def test_opening_a_missing_node_names_it(backend) -> None:  # type: ignore[no-untyped-def]
    for opener in (lambda: Group("/dev/vfio/4242", backend=backend),
                   lambda: pyvfio.Device.open("/dev/vfio/devices/vfio4242", backend=backend),
                   lambda: Container("/dev/vfio/nonexistent", backend=backend),
                   lambda: pyvfio.IommuFd("/dev/nonexistent-iommu", backend=backend)):
        with pytest.raises(IoctlError) as info:
            opener()
        assert info.value.errno == errno.ENOENT and info.value.ioctl == "open"
        assert "pyvfio doctor" in str(info.value)


def test_info_and_capabilities(setup, msi_iova) -> None:  # type: ignore[no-untyped-def]
    container, group = setup
    assert group.status.container_set
    assert container.iommu_type is IommuType.TYPE1v2
    info = container.info()
    assert info.min_page_size == 4096
    ranges = info.iova_ranges
    assert ranges, "type1 reports the IOVA ranges capability"
    # the IOMMU's MSI window is excluded
    assert not any(r.start <= msi_iova <= r.last for r in ranges)
    assert info.dma_avail is not None and info.dma_avail > 0


def test_map_unmap_and_errors(setup) -> None:  # type: ignore[no-untyped-def]
    container, _ = setup
    buf = mmap.mmap(-1, 0x10000)
    m = container.map_dma(buf, 0x100000)
    assert (m.iova, m.length, m.readable, m.writeable) == (0x100000, 0x10000, True, True)
    assert container.mappings == (m,)
    with pytest.raises(IoctlError) as info:
        container.map_dma(buf, 0x100000)
    assert info.value.errno == errno.EEXIST
    assert info.value.ioctl == "VFIO_IOMMU_MAP_DMA"
    assert "container" in str(info.value) and "EEXIST" in str(info.value)
    with pytest.raises(InvalidArgumentError, match="multiples of the IOMMU page size"):
        container.map_dma(buf, 0x100800)
    with pytest.raises(InvalidArgumentError, match="zero"):
        container.unmap_dma(0x100000, 0)
    with pytest.raises(InvalidArgumentError):
        container.map_dma_va(-1, 0, 4096)
    m.close()
    assert m.closed and container.mappings == ()
    m.close()  # idempotent
    assert container.unmap_dma(0x100000, 0x10000) == 0


def test_unmap_range_closes_inner_mappings(setup) -> None:  # type: ignore[no-untyped-def]
    container, _ = setup
    buf = mmap.mmap(-1, 0x4000)
    a = container.map_dma(buf, 0x10000)
    b = container.map_dma(buf, 0x20000)
    assert container.unmap_dma(0, 0x100000) == 0x8000
    assert a.closed and b.closed


def test_unmap_all(setup) -> None:  # type: ignore[no-untyped-def]
    container, _ = setup
    buf = mmap.mmap(-1, 0x2000)
    maps = [container.map_dma(buf, 0x10000 * i) for i in range(1, 4)]
    assert container.unmap_all() == 3 * 0x2000
    assert all(m.closed for m in maps)


def test_readonly_buffer_cannot_be_writeable(setup) -> None:  # type: ignore[no-untyped-def]
    container, _ = setup
    readonly = mmap.mmap(-1, 4096, prot=mmap.PROT_READ)
    with pytest.raises(InvalidArgumentError, match="read-only"):
        container.map_dma(readonly, 0x1000)


def test_unaligned_buffer_and_wrapping_ranges_are_refused_first(setup) -> None:  # type: ignore[no-untyped-def]
    container, _ = setup
    with pytest.raises(InvalidArgumentError, match="not aligned") as exc:
        container.map_dma(memoryview(bytearray(3 * 4096))[1:4097], 0x1000)
    assert exc.value.errno == errno.EINVAL
    with pytest.raises(InvalidArgumentError, match="wraps") as exc:
        container.map_dma_va(0x10000, (1 << 64) - 0x1000, 0x2000)
    assert exc.value.errno == errno.EOVERFLOW
    with pytest.raises(InvalidArgumentError, match="wraps") as exc:
        container.map_dma_va((1 << 64) - 0x1000, 0x1000, 0x2000)
    assert exc.value.errno == errno.EOVERFLOW


def test_device_through_group(setup, edu) -> None:  # type: ignore[no-untyped-def]
    _, group = setup
    dev = group.open_device(edu)
    assert dev.info.is_pci and dev.info.num_regions >= 9
    bar0 = dev.regions[pyvfio.PciRegion.BAR0]
    assert bar0.name == "BAR0" and bar0.size == 1 << 20 and bar0.mmappable
    config = dev.region_info(pyvfio.PciRegion.CONFIG)
    assert config.offset == pyvfio.core.device.region_offset(7)
    assert dev.pread(config, 0, 4) == bytes.fromhex("3412e811")  # 1234:11e8
    assert pyvfio.PciIrq.MSI in dev.irqs
    with pytest.raises(InvalidArgumentError, match="outside"):
        dev.pread(config, config.size - 2, 4)
    group.close()
    assert dev.closed, "closing a group closes its devices first"


def test_closing_last_group_drops_mappings(backend, edu) -> None:  # type: ignore[no-untyped-def]
    c = Container(backend=backend)
    g = Group.for_device(edu, backend=backend)
    g.set_container(c)
    c.set_iommu()
    m = c.map_dma(mmap.mmap(-1, 4096), 0x1000)
    g.close()
    assert m.closed and c.iommu_type is None
    c.close()


def test_closed_objects_raise(backend) -> None:  # type: ignore[no-untyped-def]
    c = Container(backend=backend)
    c.close()
    c.close()
    with pytest.raises(ClosedError, match="container .* is closed|container is closed"):
        c.api_version
    with pytest.raises(ClosedError):
        c.fd


def test_unclosed_container_warns(backend) -> None:  # type: ignore[no-untyped-def]
    c = Container(backend=backend)
    with pytest.warns(ResourceWarning, match="unclosed container"):
        del c
        gc.collect()


def test_non_viable_group_is_explained() -> None:
    from pyvfio.fake import System

    system = System("multi-group")
    b = system.backend
    # find the multi-device group: one of its devices is on a kernel driver
    groups = {}
    for bdf in b.sysfs_listdir("/sys/bus/pci/devices"):
        groups.setdefault(pyvfio.core.sysfs.device_group(bdf, b), []).append(bdf)
    gid, members = next((g, m) for g, m in groups.items() if len(m) > 1)
    blockers = pyvfio.core.viability.viability_blockers(gid, b)
    assert blockers, "the shipped 1:N group has a device on a kernel driver"
    for bdf in members:
        if pyvfio.core.sysfs.device_driver(bdf, b) is None:
            b.sysfs_write(f"/sys/bus/pci/devices/{bdf}/driver_override", "vfio-pci")
            b.sysfs_write("/sys/bus/pci/drivers_probe", bdf)
    with Container(backend=b) as c, Group(gid, backend=b) as g:
        assert not g.viable
        with pytest.raises(NotViableError) as info:
            g.set_container(c)
        assert info.value.errno == errno.EPERM
        assert {bdf for bdf, _ in info.value.blockers} == {x.bdf for x in blockers}
        assert blockers[0].driver in str(info.value)


def test_type1_v1_unmap_removes_whole_mappings(backend, edu) -> None:  # type: ignore[no-untyped-def]
    """VFIO_TYPE1_IOMMU (v1) unmaps every mapping that starts in the range,
    also past the range's end; the mapping objects follow."""
    with Container(backend=backend) as container, \
            Group.for_device(edu, backend=backend) as group:
        group.set_container(container)
        container.set_iommu(IommuType.TYPE1)
        buf = mmap.mmap(-1, 4 * 4096)
        m = container.map_dma(buf, 0x100000)
        assert container.unmap_dma(0x101000, 0x1000) == 0  # starts inside: nothing
        assert not m.closed
        assert container.unmap_dma(0x100000, 0x1000) == 4 * 4096
        assert m.closed and container.mappings == ()


def test_a_closed_device_says_so_everywhere(setup, edu) -> None:  # type: ignore[no-untyped-def]
    _, group = setup
    dev = group.open_device(edu)
    assert dev.info.num_regions > 0  # cached now
    dev.close()
    for call in (lambda: dev.info, dev.reset, lambda: dev.reset_methods,
                 lambda: dev.region_info(0), lambda: dev.irqs):
        with pytest.raises(ClosedError):
            call()


def test_container_map_picks_free_iovas_and_gives_them_back(setup) -> None:  # type: ignore[no-untyped-def]
    container, _ = setup
    ranges = container.info().iova_ranges
    fixed = container.map(mmap.mmap(-1, 0x2000), 0x1000)  # where the allocator would start
    a = container.map(mmap.mmap(-1, 0x3000))
    b = container.map(mmap.mmap(-1, 0x1000))
    spans = sorted((m.iova, m.iova + m.length) for m in (fixed, a, b))
    assert all(end <= nxt for (_, end), (nxt, _) in zip(spans, spans[1:])), "overlap"
    assert all(any(r.start <= m.iova and m.iova + m.length - 1 <= r.last for r in ranges)
               for m in (a, b))
    assert a.iova % 4096 == 0 and a.iova != 0
    iova_a = a.iova
    a.close()
    assert iova_a not in container.iova_allocator.allocated
    assert container.unmap_dma(b.iova, b.length) == 0x1000 and b.closed
    again = container.map(mmap.mmap(-1, 0x3000))
    assert again.iova == iova_a  # first fit: the freed range is used again
    fixed.close()
    again.close()
    assert container.iova_allocator.allocated == {}
