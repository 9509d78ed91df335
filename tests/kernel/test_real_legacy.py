"""The legacy container/group/type1 path on the real kernel."""

from __future__ import annotations

import errno
import mmap

import guestpci
import pytest

import pyvfio
from pyvfio import Container, Group, IommuType
from pyvfio.errors import IoctlError, NotViableError

pytestmark = pytest.mark.kernel


def test_container_basics() -> None:
    with Container() as c:
        assert c.api_version == pyvfio.lib.VFIO_API_VERSION
        ext = c.extensions
        assert {pyvfio.Extension.TYPE1, pyvfio.Extension.TYPE1v2} <= ext
        assert pyvfio.Extension.SPAPR_TCE not in ext


def test_type1_map_unmap(edu: str) -> None:
    with Container() as c, Group.for_device(edu) as g:
        assert g.status.viable and not g.status.container_set
        g.set_container(c)
        assert g.status.container_set
        c.set_iommu(IommuType.TYPE1v2)
        info = c.info()
        assert info.min_page_size == 4096
        msi = guestpci.msi_window()[0]
        assert info.iova_ranges and not any(r.start <= msi <= r.last for r in info.iova_ranges)
        buf = mmap.mmap(-1, 0x10000)
        m = c.map_dma(buf, 0x100000)
        with pytest.raises(IoctlError) as exc:
            c.map_dma(buf, 0x108000)
        assert exc.value.errno == errno.EEXIST
        # type1v2 refuses to split a mapping
        with pytest.raises(IoctlError) as exc:
            c.unmap_dma(0x100000, 0x1000)
        assert exc.value.errno == errno.EINVAL
        assert c.unmap_dma(0x100000, 0x10000) == 0x10000
        assert m.closed
        a = c.map_dma(buf, 0x200000)
        b = c.map_dma(buf, 0x300000)
        assert c.unmap_all() == 0x20000
        assert a.closed and b.closed


def test_device_through_group(edu: str) -> None:
    with Container() as c, Group.for_device(edu) as g:
        g.set_container(c)
        c.set_iommu()
        with g.open_device(edu) as dev:
            assert dev.info.is_pci
            bar0 = dev.regions[pyvfio.PciRegion.BAR0]
            assert bar0.size == 1 << 20 and bar0.mmappable
            assert dev.pread(pyvfio.PciRegion.CONFIG, 0, 4) == bytes.fromhex("3412e811")
            assert int.from_bytes(dev.pread(bar0, 0, 4), "little") == 0x010000ED
            irqs = dev.irqs
            assert irqs[pyvfio.PciIrq.MSI].count == 1
            assert irqs[pyvfio.PciIrq.INTX].count == 1


def test_second_open_of_group_is_busy(edu: str) -> None:
    with Group.for_device(edu):
        with pytest.raises(OSError) as exc:
            Group.for_device(edu)
        assert exc.value.errno == errno.EBUSY


@pytest.mark.skipif(not guestpci.bridge_group_of_three(), reason=guestpci.SPLIT_BRIDGE_GROUP)
def test_bridge_group_viability() -> None:
    import guestpci

    e1000s = guestpci.bridge_group_or_skip()
    assert len(e1000s) == 2
    group = guestpci.device_info(e1000s[0]).group
    assert group is not None
    members = guestpci.group_devices(group)
    assert set(e1000s) <= set(members) and len(members) == 3
    blockers = pyvfio.core.viability.viability_blockers(group)
    assert {b.bdf for b in blockers} == set(e1000s)
    assert all(b.driver == "e1000" for b in blockers)
    # Bind one function to vfio-pci: the other still blocks the group.
    guestpci.bind_vfio(e1000s[0])
    try:
        with Container() as c, Group(group) as g:
            assert not g.viable
            with pytest.raises(NotViableError) as exc:
                g.set_container(c)
            assert exc.value.errno == errno.EPERM
            assert [bdf for bdf, _ in exc.value.blockers] == [e1000s[1]]
        guestpci.bind_vfio(e1000s[1])
        with Container() as c, Group(group) as g:
            assert g.viable
            g.set_container(c)
            c.set_iommu()
            # DMA ownership: a kernel driver cannot bind into the user-owned group
            bdf = e1000s[1]
            _write(f"/sys/bus/pci/devices/{bdf}/driver_override", "\n")
            _write("/sys/bus/pci/drivers/vfio-pci/unbind", bdf)
            with pytest.raises(OSError) as exc:
                _write("/sys/bus/pci/drivers/e1000/bind", bdf)
            bind_errno = exc.value.errno
            with pytest.raises(OSError) as exc:
                _write("/sys/bus/pci/drivers_probe", bdf)
            assert exc.value.errno == errno.EINVAL
            assert guestpci.device_info(bdf).driver is None
            assert bind_errno == errno.EBUSY, errno.errorcode[bind_errno]
    finally:
        for bdf in e1000s:
            guestpci.bind_driver(bdf, None)


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
