"""Typed views of vfio capability chains.

Several vfio info ioctls (VFIO_IOMMU_GET_INFO, VFIO_DEVICE_GET_INFO,
VFIO_DEVICE_GET_REGION_INFO) append a chain of capabilities after the fixed
structure: each starts with ``struct vfio_info_cap_header`` whose ``next``
is the offset of the following one from the start of the buffer (0 ends
the chain).  :func:`parse_chain` turns a chain into the dataclasses below;
a capability pyvfio does not know (such as the s390 zPCI capabilities,
declared in linux/vfio_zdev.h) becomes :class:`UnknownCap`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Union

from .._uapi import ffi, lib

__all__ = [
    "Capability",
    "IovaRange",
    "IovaRangeCap",
    "MigrationCap",
    "DmaAvailCap",
    "SparseMmapArea",
    "SparseMmapCap",
    "RegionTypeCap",
    "MsixMappableCap",
    "Nvlink2SsatgtCap",
    "Nvlink2LnkspdCap",
    "PciAtomicCompCap",
    "UnknownCap",
    "parse_chain",
]


@dataclass(frozen=True)
class IovaRange:
    """An inclusive IOVA range ``[start, last]`` (bytes).

    Thread safety: immutable; safe to share between threads.
    """

    start: int  #: first IOVA of the range
    last: int  #: last IOVA of the range (inclusive)

    @property
    def size(self) -> int:
        """Number of bytes in the range."""
        return self.last - self.start + 1

    def __contains__(self, iova: object) -> bool:
        return isinstance(iova, int) and self.start <= iova <= self.last


@dataclass(frozen=True)
class IovaRangeCap:
    """VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE: usable IOVA ranges.

    Thread safety: immutable; safe to share between threads.
    """

    ranges: tuple[IovaRange, ...]  #: the usable IOVA ranges


@dataclass(frozen=True)
class MigrationCap:
    """VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION: dirty page logging support.

    Thread safety: immutable; safe to share between threads.
    """

    flags: int  #: VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION flags (reserved, 0)
    pgsize_bitmap: int  #: page sizes dirty bitmaps can be reported in (bit n: 2**n bytes)
    max_dirty_bitmap_size: int  #: bytes


@dataclass(frozen=True)
class DmaAvailCap:
    """VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL: DMA mappings still allowed.

    Thread safety: immutable; safe to share between threads.
    """

    avail: int  #: how many more DMA mappings the container accepts (dma_entry_limit left)


@dataclass(frozen=True)
class SparseMmapArea:
    """An mmap-able part of a region: ``offset`` and ``size`` in bytes.

    Thread safety: immutable; safe to share between threads.
    """

    offset: int  #: bytes from the start of the region
    size: int  #: bytes


@dataclass(frozen=True)
class SparseMmapCap:
    """VFIO_REGION_INFO_CAP_SPARSE_MMAP: only these areas may be mmapped.

    Thread safety: immutable; safe to share between threads.
    """

    areas: tuple[SparseMmapArea, ...]  #: the parts of the region that may be mmapped


@dataclass(frozen=True)
class RegionTypeCap:
    """VFIO_REGION_INFO_CAP_TYPE: a device-specific region's type/subtype.

    Thread safety: immutable; safe to share between threads.
    """

    type: int  #: VFIO_REGION_TYPE_* (vendor ID for vendor types)
    subtype: int  #: VFIO_REGION_SUBTYPE_* within the type


@dataclass(frozen=True)
class MsixMappableCap:
    """VFIO_REGION_INFO_CAP_MSIX_MAPPABLE: the MSI-X table may be mmapped.

    Thread safety: immutable; safe to share between threads.
    """


@dataclass(frozen=True)
class Nvlink2SsatgtCap:
    """VFIO_REGION_INFO_CAP_NVLINK2_SSATGT.

    Thread safety: immutable; safe to share between threads.
    """

    tgt: int  #: the NVLink2 system-side address target


@dataclass(frozen=True)
class Nvlink2LnkspdCap:
    """VFIO_REGION_INFO_CAP_NVLINK2_LNKSPD.

    Thread safety: immutable; safe to share between threads.
    """

    link_speed: int  #: the NVLink2 link speed code


@dataclass(frozen=True)
class PciAtomicCompCap:
    """VFIO_DEVICE_INFO_CAP_PCI_ATOMIC_COMP: supported atomic completer sizes.

    Thread safety: immutable; safe to share between threads.
    """

    flags: int  #: VFIO_PCI_ATOMIC_COMP32/64/128: completer sizes the root port supports


@dataclass(frozen=True)
class UnknownCap:
    """A capability pyvfio does not decode; ``data`` excludes the header.

    Thread safety: immutable; safe to share between threads.
    """

    id: int  #: the capability ID
    version: int  #: its version
    data: bytes  #: its payload after the header


#: Any decoded capability: what :func:`parse_chain` returns a list of.
Capability = Union[
    IovaRangeCap, MigrationCap, DmaAvailCap, SparseMmapCap, RegionTypeCap,
    MsixMappableCap, Nvlink2SsatgtCap, Nvlink2LnkspdCap, PciAtomicCompCap, UnknownCap,
]

_Parser = Callable[[Any, int, int], Capability]


def _iova_ranges(buf: Any, off: int, end: int) -> Capability:
    cap = ffi.cast("struct vfio_iommu_type1_info_cap_iova_range *", buf + off)
    n = int(cap.nr_iovas)
    room = (end - off - ffi.sizeof("struct vfio_iommu_type1_info_cap_iova_range")) // ffi.sizeof(
        "struct vfio_iova_range"
    )
    return IovaRangeCap(
        tuple(IovaRange(int(r.start), int(r.end)) for r in cap.iova_ranges[0 : min(n, room)])
    )


def _migration(buf: Any, off: int, end: int) -> Capability:
    cap = ffi.cast("struct vfio_iommu_type1_info_cap_migration *", buf + off)
    return MigrationCap(int(cap.flags), int(cap.pgsize_bitmap), int(cap.max_dirty_bitmap_size))


def _dma_avail(buf: Any, off: int, end: int) -> Capability:
    cap = ffi.cast("struct vfio_iommu_type1_info_dma_avail *", buf + off)
    return DmaAvailCap(int(cap.avail))


def _sparse(buf: Any, off: int, end: int) -> Capability:
    cap = ffi.cast("struct vfio_region_info_cap_sparse_mmap *", buf + off)
    n = int(cap.nr_areas)
    room = (end - off - ffi.sizeof("struct vfio_region_info_cap_sparse_mmap")) // ffi.sizeof(
        "struct vfio_region_sparse_mmap_area"
    )
    return SparseMmapCap(
        tuple(SparseMmapArea(int(a.offset), int(a.size)) for a in cap.areas[0 : min(n, room)])
    )


def _region_type(buf: Any, off: int, end: int) -> Capability:
    cap = ffi.cast("struct vfio_region_info_cap_type *", buf + off)
    return RegionTypeCap(int(cap.type), int(cap.subtype))


def _msix_mappable(buf: Any, off: int, end: int) -> Capability:
    return MsixMappableCap()


def _ssatgt(buf: Any, off: int, end: int) -> Capability:
    cap = ffi.cast("struct vfio_region_info_cap_nvlink2_ssatgt *", buf + off)
    return Nvlink2SsatgtCap(int(cap.tgt))


def _lnkspd(buf: Any, off: int, end: int) -> Capability:
    cap = ffi.cast("struct vfio_region_info_cap_nvlink2_lnkspd *", buf + off)
    return Nvlink2LnkspdCap(int(cap.link_speed))


def _atomic(buf: Any, off: int, end: int) -> Capability:
    cap = ffi.cast("struct vfio_device_info_cap_pci_atomic_comp *", buf + off)
    return PciAtomicCompCap(int(cap.flags))


#: Parsers per chain kind: "iommu" (VFIO_IOMMU_GET_INFO), "region"
#: (VFIO_DEVICE_GET_REGION_INFO) and "device" (VFIO_DEVICE_GET_INFO).
_PARSERS: dict[str, dict[int, _Parser]] = {
    "iommu": {
        lib.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE: _iova_ranges,
        lib.VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION: _migration,
        lib.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL: _dma_avail,
    },
    "region": {
        lib.VFIO_REGION_INFO_CAP_SPARSE_MMAP: _sparse,
        lib.VFIO_REGION_INFO_CAP_TYPE: _region_type,
        lib.VFIO_REGION_INFO_CAP_MSIX_MAPPABLE: _msix_mappable,
        lib.VFIO_REGION_INFO_CAP_NVLINK2_SSATGT: _ssatgt,
        lib.VFIO_REGION_INFO_CAP_NVLINK2_LNKSPD: _lnkspd,
    },
    "device": {
        lib.VFIO_DEVICE_INFO_CAP_PCI_ATOMIC_COMP: _atomic,
    },
}


def parse_chain(kind: str, raw: Any, first: int, size: int) -> list[Capability]:
    """Decode the capability chain starting at offset ``first`` of ``raw``
    (a ``char[]`` of ``size`` bytes).  A malformed chain (an offset outside
    the buffer or a loop) ends the walk instead of reading past the end."""
    parsers = _PARSERS[kind]
    header_size = ffi.sizeof("struct vfio_info_cap_header")
    caps: list[Capability] = []
    seen: set[int] = set()
    base = ffi.cast("char *", raw)
    off = first
    while off and off not in seen and off + header_size <= size:
        seen.add(off)
        header = ffi.cast("struct vfio_info_cap_header *", base + off)
        cap_id, version, nxt = int(header.id), int(header.version), int(header.next)
        end = nxt if off < nxt <= size else size
        parser = parsers.get(cap_id)
        if parser is not None:
            caps.append(parser(base, off, end))
        else:
            data = bytes(ffi.buffer(base + off + header_size, max(end - off - header_size, 0)))
            caps.append(UnknownCap(cap_id, version, data))
        off = nxt
    return caps
