"""Capability chains decoded from buffers laid out as the kernel writes them."""

from __future__ import annotations

from pyvfio._uapi import ffi, lib
from pyvfio.core.caps import (
    DmaAvailCap,
    IovaRange,
    IovaRangeCap,
    MigrationCap,
    MsixMappableCap,
    RegionTypeCap,
    SparseMmapArea,
    SparseMmapCap,
    UnknownCap,
    parse_chain,
)


def _header(raw: object, off: int, cap_id: int, version: int, nxt: int) -> None:
    h = ffi.cast("struct vfio_info_cap_header *", ffi.cast("char *", raw) + off)
    h.id, h.version, h.next = cap_id, version, nxt


def test_iommu_chain() -> None:
    raw = ffi.new("char[]", 256)
    base = ffi.cast("char *", raw)
    # iova range cap at 24 with two ranges, then migration at 80, dma_avail at 120
    cap = ffi.cast("struct vfio_iommu_type1_info_cap_iova_range *", base + 24)
    _header(raw, 24, lib.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE, 1, 80)
    cap.nr_iovas = 2
    cap.iova_ranges[0].start, cap.iova_ranges[0].end = 0, 0xFEDFFFFF
    cap.iova_ranges[1].start, cap.iova_ranges[1].end = 0xFEF00000, (1 << 48) - 1
    mig = ffi.cast("struct vfio_iommu_type1_info_cap_migration *", base + 80)
    _header(raw, 80, lib.VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION, 1, 120)
    mig.pgsize_bitmap, mig.max_dirty_bitmap_size = 4096, 1 << 28
    avail = ffi.cast("struct vfio_iommu_type1_info_dma_avail *", base + 120)
    _header(raw, 120, lib.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL, 1, 0)
    avail.avail = 65535
    caps = parse_chain("iommu", raw, 24, 256)
    assert caps == [
        IovaRangeCap((IovaRange(0, 0xFEDFFFFF), IovaRange(0xFEF00000, (1 << 48) - 1))),
        MigrationCap(0, 4096, 1 << 28),
        DmaAvailCap(65535),
    ]
    assert IovaRange(0, 0xFFF).size == 0x1000 and 5 in IovaRange(0, 0xFFF)


def test_region_chain_and_unknown() -> None:
    raw = ffi.new("char[]", 128)
    base = ffi.cast("char *", raw)
    sparse = ffi.cast("struct vfio_region_info_cap_sparse_mmap *", base + 32)
    _header(raw, 32, lib.VFIO_REGION_INFO_CAP_SPARSE_MMAP, 1, 80)
    sparse.nr_areas = 2
    sparse.areas[0].offset, sparse.areas[0].size = 0, 0x2000
    sparse.areas[1].offset, sparse.areas[1].size = 0x3000, 0x1000
    _header(raw, 80, lib.VFIO_REGION_INFO_CAP_MSIX_MAPPABLE, 1, 88)
    t = ffi.cast("struct vfio_region_info_cap_type *", base + 88)
    _header(raw, 88, lib.VFIO_REGION_INFO_CAP_TYPE, 1, 104)
    t.type, t.subtype = 3, 1
    _header(raw, 104, 77, 2, 0)
    caps = parse_chain("region", raw, 32, 128)
    assert caps[:3] == [
        SparseMmapCap((SparseMmapArea(0, 0x2000), SparseMmapArea(0x3000, 0x1000))),
        MsixMappableCap(),
        RegionTypeCap(3, 1),
    ]
    assert isinstance(caps[3], UnknownCap) and (caps[3].id, caps[3].version) == (77, 2)
    assert len(caps[3].data) == 128 - 104 - 8


def test_malformed_chains_stop_safely() -> None:
    raw = ffi.new("char[]", 64)
    _header(raw, 16, 99, 1, 16)  # points at itself
    assert [c.id for c in parse_chain("device", raw, 16, 64)] == [99]  # type: ignore[union-attr]
    _header(raw, 16, 99, 1, 4096)  # next beyond the buffer
    assert len(parse_chain("device", raw, 16, 64)) == 1
    assert parse_chain("device", raw, 62, 64) == []  # header would not fit
    # a count larger than the buffer holds is clipped, not read past the end
    cap = ffi.cast("struct vfio_region_info_cap_sparse_mmap *", ffi.cast("char *", raw) + 16)
    _header(raw, 16, lib.VFIO_REGION_INFO_CAP_SPARSE_MMAP, 1, 0)
    cap.nr_areas = 1000
    (sparse,) = parse_chain("region", raw, 16, 64)
    assert isinstance(sparse, SparseMmapCap) and len(sparse.areas) == (64 - 16 - 16) // 16
