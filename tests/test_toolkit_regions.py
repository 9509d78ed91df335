"""Regions and MMIO on the fake kernel: lookup, exact-width accesses through
pread/pwrite and through mmap (the models see every access with its width),
sparse mmap areas, bounds and alignment, mapping lifetimes."""

from __future__ import annotations

from typing import Iterator

import pytest
from toolkit_env import FakeMachine, open_cdev, open_group

import pyvfio
from pyvfio import PciRegion, Region, RegionMap
from pyvfio.core.caps import RegionTypeCap
from pyvfio.core.device import RegionInfo
from pyvfio.errors import ClosedError, InvalidArgumentError, UnsupportedError
from pyvfio.fake import vfio_pci

EDU_IDENT = 0x010000ED


@pytest.fixture
def machine() -> Iterator[FakeMachine]:
    m = FakeMachine()
    yield m
    m.check_no_leaks()


def test_region_map_lookup(machine: FakeMachine) -> None:
    with open_cdev(machine.backend, machine.edu) as (dev, _ioas):
        regions = dev.regions
        assert regions is dev.regions  # queried once
        bar0 = regions["BAR0"]
        assert regions[0] is bar0 and regions["bar0"] is bar0 and regions[PciRegion.BAR0] is bar0
        assert isinstance(bar0, Region) and bar0.name == "BAR0" and bar0.index == 0
        assert (bar0.size, bar0.readable, bar0.writable, bar0.mmappable) == (1 << 20, True,
                                                                            True, True)
        assert bar0.offset == pyvfio.core.device.region_offset(0)
        config = regions["CONFIG"]
        assert config.size == 256 and not config.mmappable and config.mmap_areas == ()
        assert "VGA" not in regions and 8 not in regions  # no VGA: EINVAL, left out
        assert "BAR0" in regions and 0 in regions
        assert regions.names[:2] == ["BAR0", "BAR1"] and "CONFIG" in regions.names
        assert regions.bars == [bar0]
        with pytest.raises(KeyError, match="no region named 'BAR9'"):
            regions["BAR9"]
        assert "BAR0" in repr(regions) and "0x100000 bytes r/w/mmap" in repr(bar0)
        # the old Device.pread/pwrite API takes Region objects too
        assert dev.pread(config, 0, 4) == bytes.fromhex("3412e811")
        assert dev.pread(7, 0, 2) == bytes.fromhex("3412")


def test_by_type_finds_device_specific_regions(machine: FakeMachine) -> None:
    with open_cdev(machine.backend, machine.edu) as (dev, _ioas):
        flags = pyvfio.lib.VFIO_REGION_INFO_FLAG_READ
        extra = [Region(dev, RegionInfo(9 + i, flags, 0x1000, (9 + i) << 40,
                                        (RegionTypeCap(t, s),)))
                 for i, (t, s) in enumerate([(0x8086_0000 | 3, 1), (1, 2), (1, 3)])]
        regions = RegionMap(list(dev.regions.values()) + extra)
        assert regions.by_type(1) is extra[1] and regions.by_type(1, 3) is extra[2]
        assert regions.all_by_type(1) == extra[1:]
        assert regions["region10"] is extra[1] and regions[10].type == (1, 2)
        with pytest.raises(KeyError, match="no region of type 0x2"):
            regions.by_type(2)


def test_pread_path_is_one_access_of_the_width(machine: FakeMachine) -> None:
    model = machine.model(machine.edu)
    with open_cdev(machine.backend, machine.edu) as (dev, _ioas):
        bar0 = dev.regions["BAR0"]
        model.mmio_log.clear()
        assert bar0.read32(0) == EDU_IDENT
        assert bar0.read8(0) == 0xFF  # edu decodes only 4-byte accesses below 0x80
        assert bar0.read16(2) == 0xFFFF
        assert bar0.read64(0) == (1 << 64) - 1
        bar0.write64(0x80, 0x1_2345_6788)
        assert bar0.read64(0x80) == 0x1_2345_6788  # an 8-byte register: one 8-byte access
        assert bar0.read32(0x80) == 0x2345_6788
        assert model.mmio_log == [(0, 4, False), (0, 1, False), (2, 2, False), (0, 8, False),
                                  (0x80, 8, True), (0x80, 8, False), (0x80, 4, False)]
        model.mmio_log.clear()
        bar0.pread(0x80, 16)  # a bulk copy: vfio splits it into the widest accesses
        assert model.mmio_log == [(0x80, 8, False), (0x88, 8, False)]


@pytest.mark.parametrize("path", ["cdev", "group"])
def test_mmap_path_is_one_access_of_the_width(machine: FakeMachine, path: str) -> None:
    model = machine.model(machine.edu)
    opener = open_cdev if path == "cdev" else open_group
    with opener(machine.backend, machine.edu) as (dev, _space):
        bar0 = dev.regions["BAR0"]
        mapping = bar0.mmap()
        assert bar0.mapping is mapping and bar0.io() is mapping
        assert mapping.areas == (pyvfio.core.caps.SparseMmapArea(0, 1 << 20),)
        assert mapping.size == 1 << 20 and mapping.address(0x10) == mapping.address() + 0x10
        model.mmio_log.clear()
        assert mapping.read32(0) == EDU_IDENT
        mapping.write32(4, 0x0F0F0F0F)
        assert mapping.read32(4) == 0xF0F0F0F0
        mapping.write64(0x88, 0xFFFF_0000_1000)
        assert mapping.read64(0x88) == 0xFFFF_0000_1000
        assert mapping.read8(3) == 0xFF and mapping.read16(0x20) == 0xFFFF
        assert model.mmio_log == [(0, 4, False), (4, 4, True), (4, 4, False), (0x88, 8, True),
                                  (0x88, 8, False), (3, 1, False), (0x20, 2, False)]


def test_bounds_and_alignment(machine: FakeMachine) -> None:
    model = machine.model(machine.edu)
    with open_cdev(machine.backend, machine.edu) as (dev, _ioas):
        bar0 = dev.regions["BAR0"]
        mapping = bar0.mmap()
        model.mmio_log.clear()
        for io in (bar0, mapping):
            with pytest.raises(InvalidArgumentError, match="outside the 0x100000-byte window"):
                io.read32(1 << 20)
            with pytest.raises(InvalidArgumentError, match="not aligned"):
                io.read32(2)
            with pytest.raises(InvalidArgumentError, match="not aligned"):
                io.write64(0x84, 0)
            with pytest.raises(InvalidArgumentError, match="1, 2, 4 or 8"):
                io.read(0, 3)
            with pytest.raises(InvalidArgumentError, match="does not fit in 4 bytes"):
                io.write32(0, 1 << 32)
        assert model.mmio_log == []  # nothing reached the device
        with pytest.raises(InvalidArgumentError, match=r"device 0000:00:02.0 BAR0"):
            bar0.read32(1 << 20)
        with pytest.raises(InvalidArgumentError, match="outside BAR0"):
            bar0.pread(0xFFFFC, 8)
        rom = dev.regions["ROM"]
        with pytest.raises(UnsupportedError, match="cannot be mmapped"):
            rom.mmap()
        with pytest.raises(UnsupportedError, match="cannot be mmapped"):
            dev.regions["CONFIG"].mmap()
        assert dev.regions["CONFIG"].io() is dev.regions["CONFIG"]


def test_read_only_mapping(machine: FakeMachine) -> None:
    with open_cdev(machine.backend, machine.edu) as (dev, _ioas):
        ro = dev.regions["BAR0"].mmap(writable=False)
        assert ro.read32(0) == EDU_IDENT
        with pytest.raises(InvalidArgumentError, match="read-only"):
            ro.write32(4, 1)


def test_mappings_are_resources_of_the_device(machine: FakeMachine) -> None:
    with open_cdev(machine.backend, machine.edu) as (dev, _ioas):
        bar0 = dev.regions["BAR0"]
        first = bar0.mmap()
        first.close()
        assert first.closed and bar0.mapping is None
        first.close()  # idempotent
        with pytest.raises(ClosedError):
            first.read32(0)
        second = bar0.mmap()
        third = bar0.mmap()  # several mappings may coexist
        assert third.read32(0) == second.read32(0) == EDU_IDENT
    assert second.closed and third.closed, "closing the device unmaps its mappings first"
    with pytest.raises(ClosedError):
        bar0.read32(0)


def test_sparse_areas_map_only_what_vfio_allows(machine: FakeMachine) -> None:
    """Without VFIO_REGION_INFO_CAP_MSIX_MAPPABLE (kernels before 4.16),
    vfio-pci reports the MSI-X BAR as sparse: the table's page is left out."""
    with open_cdev(machine.backend, machine.nvme) as (dev, _ioas):
        core = vfio_pci.core_of(machine.system.devices[machine.nvme])
        assert core is not None
        core.msix_mappable = False  # what an older kernel reports
        bar0 = dev.regions["BAR0"]
        assert not bar0.msix_mappable
        assert bar0.sparse_areas == ((0, 0x2000), (0x3000, 0x1000))
        mapping = bar0.mmap()
        assert [(a.offset, a.size) for a in mapping.areas] == [(0, 0x2000), (0x3000, 0x1000)]
        assert mapping.read32(0x08) == 0x00010400  # VS through the first area
        assert mapping.read64(0x3000) == 0  # the PBA through the second
        with pytest.raises(InvalidArgumentError, match=r"not inside a mapped area of BAR0 "
                                                       r"\(mapped: \[0x0, 0x2000\), "
                                                       r"\[0x3000, 0x4000\)\)"):
            mapping.read32(0x2000)
        with pytest.raises(InvalidArgumentError, match="not inside a mapped area"):
            mapping.read_bytes(0x1FF0, 0x20)
        # the file path still reaches it: vfio fills the MSI-X table with ones
        assert bar0.read32(0x2000) == 0xFFFFFFFF
        # no view of the hole between the areas
        with pytest.raises(InvalidArgumentError, match="not inside a mapped area"):
            mapping.buffer(0x2800)
        mapping.close()


def test_msix_mappable_bar_maps_whole(machine: FakeMachine) -> None:
    with open_cdev(machine.backend, machine.nvme) as (dev, _ioas):
        bar0 = dev.regions["BAR0"]
        assert bar0.msix_mappable and bar0.sparse_areas is None
        mapping = bar0.mmap()
        assert [(a.offset, a.size) for a in mapping.areas] == [(0, 0x4000)]
        assert mapping.read32(0x200C) == 1  # vector 0's control word: masked


def test_bulk_copies_of_device_memory(machine: FakeMachine) -> None:
    """A RAM-backed BAR (the generic e1000e stand-in): read_bytes,
    write_bytes and a memoryview of the mapping."""
    e1000e = "0000:00:04.0"
    from toolkit_env import bind_vfio

    bind_vfio(machine.backend, e1000e)
    with open_cdev(machine.backend, e1000e) as (dev, _ioas):
        bar0 = dev.regions["BAR0"]
        mapping = bar0.mmap()
        mapping.write_bytes(0x100, b"hello, device")
        assert mapping.read_bytes(0x100, 13) == b"hello, device"
        view = mapping.buffer(0x100, 5)
        assert bytes(view) == b"hello"
        view.release()
        assert bar0.pread(0x100, 13) == b"hello, device"
        assert mapping.read32(0x100) == int.from_bytes(b"hell", "little")


def test_typed_accessors_of_plain_memory_take_the_direct_path() -> None:
    """A region mapped whole on the real kernel: read32/write32 check the
    access inline and call the volatile helpers directly; a bad access still
    gets the full message, a closed mapping ClosedError."""
    from types import SimpleNamespace

    from pyvfio.backend.base import MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE
    from pyvfio.backend.kernel import KernelBackend
    from pyvfio.core.region import RegionMapping
    from pyvfio.errors import ClosedError

    kb = KernelBackend()
    mm = kb.mmap(4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
    region = SimpleNamespace(size=4096, name="BAR0", device=SimpleNamespace(backend=kb), _mapping=None,
                             describe=lambda: "test BAR0")
    mapping = RegionMapping(region, [(0, 4096, mm)], writable=True)  # type: ignore[arg-type]
    assert mapping.direct_path
    mapping.write32(0x10, 0xDEADBEEF)
    mapping.write16(0x14, 0x1234)
    mapping.write8(0x16, 0x56)
    mapping.write64(0x18, 0x0102030405060708)
    assert mapping.read32(0x10) == 0xDEADBEEF and mapping.read8(0x10) == 0xEF
    assert mapping.read16(0x14) == 0x1234 and mapping.read8(0x16) == 0x56
    assert mapping.read64(0x18) == 0x0102030405060708
    assert mapping.read32(0xFFC) == 0  # the last word
    for bad in (lambda: mapping.read32(0x1002), lambda: mapping.read32(0x1000),
                lambda: mapping.read32(-4), lambda: mapping.write8(0, 0x100),
                lambda: mapping.read64(0x24)):
        with pytest.raises(InvalidArgumentError):
            bad()
    for bad in (lambda: mapping.write32(0, -1), lambda: mapping.write16(0x2, 1 << 16),
                lambda: mapping.write64(0x1000 - 4, 0), lambda: mapping.write32(0x4, 1.0)):  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError):
            bad()
    assert mapping.read32(0x0) == 0 and mapping.read64(0xFF8) == 0
    mapping.close()
    assert mm.closed
    with pytest.raises(ClosedError):
        mapping.read32(0)
    with pytest.raises(ClosedError):
        mapping.write32(0, 0)
    # mapped read-only: loads direct, stores refused with the message
    mm = kb.mmap(4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
    ro = RegionMapping(region, [(0, 4096, mm)], writable=False)  # type: ignore[arg-type]
    assert ro.direct_path and ro.read64(0xFF8) == 0
    with pytest.raises(InvalidArgumentError, match="read-only"):
        ro.write32(0, 1)
    ro.close()
