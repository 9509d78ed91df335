"""The I/O page table behind an iommufd IOAS.

After drivers/iommu/iommufd/io_pagetable.c of Linux 7.3: an
:class:`IoPagetable` holds *areas* (IOVA ranges mapped to a slice of a
:class:`~.pages.Pages` object: user memory or a file), *reserved* ranges
(domain apertures, device reserved regions), *allowed* ranges
(IOMMU_IOAS_ALLOW_IOVAS) and the *domains* (paging HWPTs) that mirror the
areas.

Nothing is pinned while the table has no domain; the first domain pins
every area (iopt_table_add_domain -> iopt_fill_domain), later maps pin at
map time (iopt_area_fill_domains), and pages stay pinned until their last
filled area goes away or the last domain is removed (the pinning itself is
:mod:`.pages`).

Free IOVA space is indexed by :class:`FreeSpace` so that automatic IOVA
allocation and map/unmap cost O(log n) (plus a bounded block scan) in the
number of live areas.

:func:`iopt_map_user_pages`, :func:`iopt_map_file_pages` and
:func:`iopt_map_common` take the iommufd context, as the kernel's do.
"""

from __future__ import annotations

import bisect
import errno
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

from .. import fault_inject
from ..core import errno_error
from ..intervals import IntervalMap
from ._spans import ULONG_MAX, lowest_bit, merge_spans, roundup_pow_of_two, span_holes
from .pages import ACCOUNT_MM, ACCOUNT_NONE, ACCOUNT_USER, MapsSnapshot, Pages

if TYPE_CHECKING:
    from .main import IommufdFile

__all__ = [
    "ULONG_MAX",
    "IOMMU_READ",
    "IOMMU_WRITE",
    "HPAGE_SIZE",
    "FreeSpace",
    "Area",
    "IoptDomain",
    "ElmPages",
    "IoPagetable",
    "page_runs",
    "iopt_map_common",
    "iopt_map_user_pages",
    "iopt_map_file_pages",
    # where the tests and benchmarks have always found them
    "merge_spans",
    "span_holes",
    "MapsSnapshot",
]

#: iommu_prot bit (include/linux/iommu.h): the device may read.
IOMMU_READ = 1 << 0
#: iommu_prot bit: the device may write.
IOMMU_WRITE = 1 << 1

#: HPAGE_SIZE on x86-64 (PMD size), the IOVA alignment cap with THP
HPAGE_SIZE = 2 << 20


# -- free IOVA space -------------------------------------------------------------------------
class FreeSpace:
    """The holes of (reserved ranges ∪ areas) in ``[0, ULONG_MAX]``.

    Holes are kept sorted by start in blocks of bounded size, each with an
    upper bound of the length of its longest hole (exact after a search
    scanned the block), so that first-fit searches skip whole blocks and
    updates touch one or two holes.
    """

    _BLOCK = 256

    def __init__(self) -> None:
        self._blocks: list[list[int]] = []
        self._firsts: list[int] = []
        self._maxlen: list[int] = []
        self._last: dict[int, int] = {}  # hole start -> last
        self._by_last: dict[int, int] = {}  # hole last -> start
        self.rebuild([])

    def __len__(self) -> int:
        return len(self._last)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for block in self._blocks:
            for start in block:
                yield start, self._last[start]

    def rebuild(self, used: Iterable[tuple[int, int]]) -> None:
        """Recompute from the used spans (sorted or not; disjoint or not)."""
        holes = span_holes(merge_spans(used), 0, ULONG_MAX)
        self._last = {s: l for s, l in holes}
        self._by_last = {l: s for s, l in holes}
        starts = [s for s, _ in holes]
        self._blocks = [starts[i:i + self._BLOCK] for i in range(0, len(starts), self._BLOCK)]
        self._firsts = [b[0] for b in self._blocks]
        self._maxlen = [max(self._last[s] - s + 1 for s in b) for b in self._blocks]

    # -- internal -------------------------------------------------------------------
    def _block_of(self, addr: int) -> int:
        return max(bisect.bisect_right(self._firsts, addr) - 1, 0)

    def _add(self, start: int, last: int) -> None:
        self._last[start] = last
        self._by_last[last] = start
        size = last - start + 1
        if not self._blocks:
            self._blocks.append([start])
            self._firsts.append(start)
            self._maxlen.append(size)
            return
        b = self._block_of(start)
        block = self._blocks[b]
        bisect.insort(block, start)
        self._firsts[b] = block[0]
        if size > self._maxlen[b]:
            self._maxlen[b] = size
        if len(block) > 2 * self._BLOCK:
            half = self._BLOCK
            left, right = block[:half], block[half:]
            self._blocks[b:b + 1] = [left, right]
            self._firsts[b:b + 1] = [left[0], right[0]]
            self._maxlen[b:b + 1] = [max(self._last[s] - s + 1 for s in left),
                                     max(self._last[s] - s + 1 for s in right)]

    def _remove(self, start: int) -> int:
        last = self._last.pop(start)
        del self._by_last[last]
        b = bisect.bisect_right(self._firsts, start) - 1
        block = self._blocks[b]
        del block[bisect.bisect_left(block, start)]
        if not block:
            del self._blocks[b]
            del self._firsts[b]
            del self._maxlen[b]
        else:
            # the block's max stays an upper bound; holes() tightens it
            self._firsts[b] = block[0]
        return last

    def _floor(self, addr: int) -> int | None:
        if not self._blocks:
            return None
        b = bisect.bisect_right(self._firsts, addr) - 1
        if b < 0:
            return None
        block = self._blocks[b]
        return block[bisect.bisect_right(block, addr) - 1]

    # -- updates ------------------------------------------------------------------------
    def use(self, start: int, last: int) -> None:
        """``[start, last]`` (inside one hole) becomes used."""
        hs = self._floor(start)
        assert hs is not None and self._last[hs] >= last, "range is not free"
        hl = self._remove(hs)
        if hs < start:
            self._add(hs, start - 1)
        if last < hl:
            self._add(last + 1, hl)

    def free(self, start: int, last: int) -> None:
        """``[start, last]`` (used by one area only) becomes free."""
        if start > 0 and (start - 1) in self._by_last:
            ps = self._by_last[start - 1]
            self._remove(ps)
            start = ps
        if last < ULONG_MAX and (last + 1) in self._last:
            last = self._remove(last + 1)
        self._add(start, last)

    # -- queries ------------------------------------------------------------------------
    def contains(self, start: int, last: int) -> bool:
        """Whether ``[start, last]`` lies inside one hole (O(log n))."""
        hs = self._floor(start)
        return hs is not None and self._last[hs] >= last

    def holes(self, lo: int, hi: int, min_length: int) -> Iterator[tuple[int, int]]:
        """Holes clipped to ``[lo, hi]``, ascending, skipping holes shorter
        than ``min_length`` (before clipping)."""
        if not self._blocks or lo > hi:
            return
        b = bisect.bisect_right(self._firsts, lo) - 1
        if b < 0:
            b = 0
            i = 0
        else:
            i = max(bisect.bisect_right(self._blocks[b], lo) - 1, 0)
        while b < len(self._blocks):
            if self._maxlen[b] >= min_length:
                block = self._blocks[b]
                longest = 0
                for start in block[i:] if i else block:
                    if start > hi:
                        return
                    last = self._last[start]
                    size = last - start + 1
                    if size > longest:
                        longest = size
                    if last < lo or size < min_length:
                        continue
                    yield max(start, lo), min(last, hi)
                if not i:
                    # scanned the whole block: its exact longest hole
                    self._maxlen[b] = longest
            elif self._blocks[b][0] > hi:
                return
            b += 1
            i = 0

# -- areas ---------------------------------------------------------------------------------
@dataclass(eq=False)
class Area:
    """struct iopt_area: ``[iova, last]`` maps bytes ``start_byte ..`` of ``pages``."""

    #: First IOVA of the area.
    iova: int
    #: Last IOVA of the area (inclusive).
    last: int
    #: The memory the area maps.
    pages: Pages
    #: Byte offset in ``pages`` (from its first page) that ``iova`` maps.
    start_byte: int
    #: :data:`IOMMU_READ` | :data:`IOMMU_WRITE` bits.
    prot: int
    #: The area's pages are pinned and stored in the domains
    #: (iopt_area_fill_domains done).
    filled: bool = False

    @property
    def length(self) -> int:
        """Size of the area in bytes."""
        return self.last - self.iova + 1

    @property
    def page_offset(self) -> int:
        """Offset of ``iova`` within its page, in bytes."""
        return self.start_byte % self.pages.page_size

    def index_span(self) -> tuple[int, int]:
        """iopt_area_index .. iopt_area_last_index."""
        ps = self.pages.page_size
        return self.start_byte // ps, (self.start_byte + self.length - 1) // ps

    def start_byte_at(self, iova: int) -> int:
        """iopt_area_start_byte."""
        return self.start_byte + (iova - self.iova)

    def __repr__(self) -> str:
        return f"<Area [{self.iova:#x}, {self.last:#x}] prot={self.prot} {self.pages!r}>"


# -- domains ---------------------------------------------------------------------------------
@dataclass(eq=False)
class IoptDomain:
    """What an io_pagetable needs to know about an iommu_domain."""

    #: Page sizes the domain can map, in bytes, one bit each.
    pgsize_bitmap: int
    #: Inclusive ``(first, last)`` IOVA range the domain translates.
    aperture: tuple[int, int]
    #: The no-IOMMU stand-in domain (IOMMU_IOAS_GET_PA works on it).
    noiommu: bool = False


@dataclass(eq=False)
class _Reserved:
    start: int
    last: int
    owner: object


@dataclass
class ElmPages:
    """struct iopt_pages_list: a slice of pages to map."""

    #: The memory the slice is part of.
    pages: Pages
    #: Byte offset of the slice in ``pages``.
    start_byte: int
    #: Length of the slice in bytes.
    length: int


# -- the table ---------------------------------------------------------------------------------
class IoPagetable:
    """struct io_pagetable."""

    def __init__(self, page_size: int, max_alignment: int) -> None:
        self.page_size = page_size
        #: The IOVA alignment cap of automatic allocation: HPAGE_SIZE with
        #: CONFIG_TRANSPARENT_HUGEPAGE, PAGE_SIZE without.
        self.max_alignment = max_alignment
        self.areas: IntervalMap[Area] = IntervalMap()
        self.allowed: IntervalMap[None] = IntervalMap()
        self._reserved: list[_Reserved] = []
        self._reserved_merged: list[tuple[int, int]] = []
        self._reserved_map: IntervalMap[None] = IntervalMap()
        self.domains: list[IoptDomain] = []
        # iopt_init_table: software tables start with no alignment restriction
        self.iova_alignment = 1
        self.disable_large_pages = False
        self.free = FreeSpace()

    # -- reserved ranges ---------------------------------------------------------------
    def _reserved_changed(self) -> None:
        self._reserved_merged = merge_spans((r.start, r.last) for r in self._reserved)
        self._reserved_map = IntervalMap()
        for start, last in self._reserved_merged:
            self._reserved_map.insert(start, last, None)
        used = list(self._reserved_merged)
        used += [(s, l) for s, l, _ in self.areas]
        self.free.rebuild(used)

    def reserved_overlaps(self, start: int, last: int) -> bool:
        """Whether a reserved range overlaps IOVAs ``[start, last]``."""
        return self._reserved_map.overlaps(start, last)

    def reserve_iova(self, start: int, last: int, owner: object) -> None:
        """iopt_reserve_iova: EADDRINUSE over a mapping or an allowed range."""
        if self.areas.overlaps(start, last) or self.allowed.overlaps(start, last):
            raise errno_error(errno.EADDRINUSE, f"[{start:#x}, {last:#x}] is in use")
        self._reserved.append(_Reserved(start, last, owner))
        self._reserved_changed()

    def _reserve_many(self, ranges: list[tuple[int, int]], owner: object) -> None:
        """Reserve several ranges for one owner, all or nothing."""
        added = 0
        try:
            for start, last in ranges:
                if self.areas.overlaps(start, last) or self.allowed.overlaps(start, last):
                    raise errno_error(errno.EADDRINUSE, f"[{start:#x}, {last:#x}] is in use")
                self._reserved.append(_Reserved(start, last, owner))
                added += 1
        except OSError:
            if added:
                del self._reserved[-added:]
            raise
        finally:
            if added:
                self._reserved_changed()

    def remove_reserved_iova(self, owner: object) -> None:
        """iopt_remove_reserved_iova."""
        before = len(self._reserved)
        self._reserved = [r for r in self._reserved if r.owner is not owner]
        if len(self._reserved) != before:
            self._reserved_changed()

    def has_reserved(self, owner: object) -> bool:
        """Whether ``owner`` (a device, a HWPT) holds reserved ranges."""
        return any(r.owner is owner for r in self._reserved)

    def enforce_dev_resv_regions(self, dev: object, regions: list[tuple[int, int, str]]) -> None:
        """iopt_table_enforce_dev_resv_regions: reserve the device's regions
        (direct-relaxable ones excepted) with the device as owner;
        EADDRINUSE when one overlaps a mapping or an allowed range."""
        ranges = [(s, l) for s, l, kind in regions if kind != "direct-relaxable"]
        self._reserve_many(ranges, dev)

    def iova_ranges(self) -> list[tuple[int, int]]:
        """The holes of the reserved ranges (IOMMU_IOAS_IOVA_RANGES)."""
        return span_holes(self._reserved_merged, 0, ULONG_MAX)

    # -- allowed ranges ------------------------------------------------------------------
    def set_allow_iova(self, allowed: IntervalMap[None]) -> None:
        """iopt_set_allow_iova: make ``allowed`` the allowed ranges, unless
        one of them overlaps a reserved range (EADDRINUSE).  Mappings
        outside the allowed ranges are fine (the kernel does not look at
        the areas here)."""
        reserved = self._reserved_merged
        j, n = 0, len(reserved)
        for start, last, _ in allowed:  # both sorted: one sweep
            while j < n and reserved[j][1] < start:
                j += 1
            if j < n and reserved[j][0] <= last:
                # iopt_set_allow_iova: EADDRINUSE over a reserved range
                raise errno_error(errno.EADDRINUSE, f"[{start:#x}, {last:#x}] is reserved")
        self.allowed = allowed

    # -- IOVA allocation -----------------------------------------------------------------
    @staticmethod
    def _check_range(start: int, last: int, length: int, alignment: int,
                     page_offset: int) -> int | None:
        """__alloc_iova_check_range: the aligned start that fits, or None."""
        aligned = start + alignment - 1
        if aligned > ULONG_MAX:
            return None
        aligned &= ~(alignment - 1)
        aligned |= page_offset
        if aligned >= last or last - aligned < length - 1:
            return None
        return aligned

    def alloc_iova(self, addr: int, length: int) -> int:
        """iopt_alloc_iova: the lowest suitably aligned free IOVA inside the
        allowed ranges (never 0)."""
        ps = self.page_size
        page_offset = addr % ps
        if length == 0 or length >= ULONG_MAX // 2:
            # iopt_alloc_iova: EOVERFLOW protects roundup_pow_of_two
            raise errno_error(errno.EOVERFLOW, "length too large to allocate an IOVA")
        # iopt_alloc_iova: keep the alignment of the address and length
        if not addr:
            alignment = roundup_pow_of_two(length)
        else:
            alignment = min(roundup_pow_of_two(length), lowest_bit(addr))
        if alignment >= self.max_alignment:
            alignment = self.max_alignment
        if alignment < self.iova_alignment:
            # iopt_alloc_iova: EINVAL below the table's IOVA alignment
            raise errno_error(errno.EINVAL, "the address is not aligned enough for this IOAS")
        lo, hi = ps, ULONG_MAX - ps
        if not self.allowed:
            allowed_spans = [(lo, hi)]
        else:
            allowed_spans = [(max(s, lo), min(l, hi)) for s, l in
                             merge_spans((s, l) for s, l, _ in self.allowed.overlapping(lo, hi))]
        for span_start, span_last in allowed_spans:
            start = self._check_range(span_start, span_last, length, alignment, page_offset)
            if start is None:
                continue
            for hole_start, hole_last in self.free.holes(start, span_last, length):
                found = self._check_range(hole_start, hole_last, length, alignment, page_offset)
                if found is not None:
                    return found
        # iopt_alloc_iova: ENOSPC when nothing fits
        raise errno_error(errno.ENOSPC, "no free IOVA range fits")

    def check_iova(self, iova: int, length: int) -> None:
        """iopt_check_iova."""
        if iova & (self.iova_alignment - 1):
            # iopt_check_iova: EINVAL for a misaligned IOVA
            raise errno_error(errno.EINVAL, f"IOVA {iova:#x} is not aligned to {self.iova_alignment:#x}")
        last = iova + length - 1
        if last > ULONG_MAX:
            # iopt_check_iova: EOVERFLOW when iova + length wraps
            raise errno_error(errno.EOVERFLOW, "iova + length overflows")
        if self.free.contains(iova, last):
            return  # neither reserved nor mapped: the two checks below pass
        if self.reserved_overlaps(iova, last):
            # iopt_check_iova: EINVAL over a reserved range
            raise errno_error(errno.EINVAL, f"[{iova:#x}, {last:#x}] overlaps a reserved range")
        if self.areas.overlaps(iova, last):
            # iopt_check_iova: EEXIST over an existing mapping
            raise errno_error(errno.EEXIST, f"[{iova:#x}, {last:#x}] overlaps a mapping")

    # -- mapping ---------------------------------------------------------------------------
    def _insert_area(self, pages: Pages, iova: int, start_byte: int, length: int,
                     prot: int) -> Area:
        """iopt_insert_area."""
        if (prot & IOMMU_WRITE) and not pages.writable:
            # iopt_insert_area: EPERM for a writable mapping of read-only pages
            raise errno_error(errno.EPERM, "the source mapping is not writable")
        if (start_byte % self.page_size) & (self.iova_alignment - 1):
            # iopt_insert_area: EINVAL when the page offset breaks the alignment
            raise errno_error(errno.EINVAL, "the address is not aligned to the IOAS alignment")
        last = iova + length - 1
        if last > ULONG_MAX or start_byte + length - 1 > ULONG_MAX:
            # iopt_insert_area: EOVERFLOW
            raise errno_error(errno.EOVERFLOW, "the area overflows")
        area = Area(iova, last, pages, start_byte, prot)
        self.areas.insert(iova, last, area)
        self.free.use(iova, last)
        return area

    def _drop_area(self, area: Area) -> None:
        self.areas.remove(area.iova)
        self.free.free(area.iova, area.last)

    def map_pages(self, elms: list[ElmPages], length: int, iova: int, prot: int,
                  alloc: bool) -> int:
        """iopt_map_pages: insert areas for ``elms`` at ``iova`` (or an
        allocated IOVA), fill the domains, and return the IOVA.  On success
        the elms' page references move into the areas."""
        # iopt_alloc_area_pages: EINVAL for a zero or misaligned length
        if (length & (self.iova_alignment - 1)) or not length:
            raise errno_error(errno.EINVAL, f"length {length:#x} is zero or misaligned")
        if alloc:
            first = elms[0]
            if first.pages.kind == "user":
                addr = first.pages.uptr + first.start_byte
            else:
                addr = first.pages.file_start + first.start_byte
            iova = self.alloc_iova(addr, length)
        else:
            self.check_iova(iova, length)
        areas: list[Area] = []
        try:
            cur = iova
            for elm in elms:
                areas.append(self._insert_area(elm.pages, cur, elm.start_byte, elm.length, prot))
                cur += elm.length
            if self.domains:
                self._fill_areas(areas)
        except BaseException:
            for area in areas:
                self._drop_area(area)
            raise
        return iova

    def _fill_areas(self, areas: Iterable[Area], maps: MapsSnapshot | None = None) -> None:
        """Fill areas into the domains, all or nothing (iopt_fill_domains_pages)."""
        done: list[Area] = []
        try:
            for area in areas:
                area.pages.fill(area, maps)
                done.append(area)
                if fault_inject.ARMED:
                    # iopt_area_fill_domains: iommu_map of the area failing
                    fault_inject.inject("domain_map")
        except BaseException:
            for area in done:
                area.pages.unfill(area)
            raise

    def get_pages(self, iova: int, length: int) -> list[ElmPages]:
        """iopt_get_pages: slices of the areas covering ``[iova, iova +
        length)`` contiguously (ENOENT otherwise), each holding a reference."""
        if not length:
            # iopt_get_pages: EINVAL for a zero length
            raise errno_error(errno.EINVAL, "zero length")
        last = iova + length - 1
        if last > ULONG_MAX:
            # iopt_get_pages: EOVERFLOW
            raise errno_error(errno.EOVERFLOW, "iova + length overflows")
        out: list[ElmPages] = []
        found = self.areas.find(iova)
        cur = iova
        while True:
            if found is None:
                # iopt_get_pages: ENOENT unless the range is fully mapped
                raise errno_error(errno.ENOENT, f"[{iova:#x}, {last:#x}] is not fully mapped")
            area = found[2]
            end = min(last, area.last)
            out.append(ElmPages(area.pages, area.start_byte_at(cur), end - cur + 1))
            if end == last:
                break
            cur = area.last + 1
            nxt = self.areas.get(cur)
            found = (cur, nxt[0], nxt[1]) if nxt is not None else None
        for elm in out:
            elm.pages.get()
        return out

    def unmap_range(self, start: int, last: int) -> tuple[int, int]:
        """iopt_unmap_iova_range: ``(errno or 0, bytes unmapped)``; stops
        with ENOENT at the first mapping that sticks out of the range."""
        unmapped = 0
        while True:
            # the area holding ``start``, else the first one starting after it
            hit = self.areas.find(start)
            if hit is None:
                hit = next(self.areas.overlapping(start, last), None)
            if hit is None:
                return 0, unmapped
            area = hit[2]
            if area.iova < start or area.last > last:
                # iopt_unmap_iova_range: ENOENT, mappings cannot be split
                return errno.ENOENT, unmapped
            self._drop_area(area)
            area.pages.unfill(area)
            area.pages.put()
            unmapped += area.length
            if area.last >= last:
                return 0, unmapped
            start = area.last + 1

    def unmap_iova(self, iova: int, length: int) -> tuple[int, int]:
        """iopt_unmap_iova."""
        if not length:
            # iopt_unmap_iova: EINVAL for a zero length
            raise errno_error(errno.EINVAL, "zero length")
        if iova + length - 1 > ULONG_MAX:
            # iopt_unmap_iova: EOVERFLOW
            raise errno_error(errno.EOVERFLOW, "iova + length overflows")
        return self.unmap_range(iova, iova + length - 1)

    def unmap_all(self) -> int:
        """iopt_unmap_all: bytes unmapped."""
        _err, unmapped = self.unmap_range(0, ULONG_MAX)
        return unmapped

    # -- type1 (v1) compatibility: cutting areas -------------------------------------------------
    def _split(self, area: Area, iova: int) -> None:
        """iopt_area_split: ``iova`` becomes the last byte of the left part."""
        if iova == area.iova or iova == area.last:
            return
        new_start = iova + 1
        align = self.iova_alignment
        if new_start & (align - 1) or area.start_byte_at(new_start) & (align - 1):
            # iopt_area_split: EINVAL for a misaligned cut
            raise errno_error(errno.EINVAL, "misaligned cut")
        if area.filled and not self.disable_large_pages:
            # iopt_area_split: EINVAL when huge IOPTEs may exist
            raise errno_error(errno.EINVAL, "cannot split a mapping that may use huge pages")
        lhs = Area(area.iova, iova, area.pages, area.start_byte, area.prot)
        rhs = Area(new_start, area.last, area.pages, area.start_byte_at(new_start), area.prot)
        self.areas.remove(area.iova)
        self.areas.insert(lhs.iova, lhs.last, lhs)
        self.areas.insert(rhs.iova, rhs.last, rhs)
        area.pages.split_filled(area, lhs, rhs)
        area.pages.get()

    def cut_iova(self, iovas: list[int]) -> None:
        """iopt_cut_iova."""
        for iova in iovas:
            found = self.areas.find(iova & ULONG_MAX)
            if found is None:
                continue
            self._split(found[2], iova & ULONG_MAX)

    # -- domains -------------------------------------------------------------------------------------
    def _check_iova_alignment(self, new_alignment: int) -> None:
        """iopt_check_iova_alignment: EADDRINUSE if a mapping breaks it."""
        mask = new_alignment - 1
        for start, _last, area in self.areas:
            if (start & mask) or (area.length & mask) or (area.page_offset & mask):
                raise errno_error(errno.EADDRINUSE, f"mapping at {start:#x} is not aligned to {new_alignment:#x}")

    def _calculate_iova_alignment(self) -> None:
        """iopt_calculate_iova_alignment."""
        new = self.page_size if self.disable_large_pages else 1
        for domain in self.domains:
            new = max(new, lowest_bit(domain.pgsize_bitmap))
        if new > self.iova_alignment:
            self._check_iova_alignment(new)
        self.iova_alignment = new

    def add_domain(self, domain: IoptDomain) -> None:
        """iopt_table_add_domain: reserve outside the aperture and fill the
        domain; the first domain pins every area."""
        new_alignment = max(lowest_bit(domain.pgsize_bitmap), self.iova_alignment)
        if new_alignment > self.page_size:
            # iopt_table_add_domain: EINVAL for an IOMMU page size above PAGE_SIZE
            raise errno_error(errno.EINVAL, "the domain's page size exceeds PAGE_SIZE")
        if new_alignment != self.iova_alignment:
            self._check_iova_alignment(new_alignment)
        start, end = domain.aperture
        ranges = []
        if start != 0:
            ranges.append((0, start - 1))
        if end != ULONG_MAX:
            ranges.append((end + 1, ULONG_MAX))
        # iopt_table_add_domain: EADDRINUSE when a mapping is outside the aperture
        self._reserve_many(ranges, domain)
        try:
            if not self.domains:
                maps = MapsSnapshot() if len(self.areas) > 1 else None
                self._fill_areas((area for _s, _l, area in self.areas), maps)
            elif self.areas and fault_inject.ARMED:
                # iopt_fill_domain: iommu_map of the pinned areas into the
                # new domain failing
                fault_inject.inject("domain_map")
        except BaseException:
            # iopt_table_add_domain: out_unreserve
            self.remove_reserved_iova(domain)
            raise
        self.iova_alignment = new_alignment
        self.domains.append(domain)

    def remove_domain(self, domain: IoptDomain) -> None:
        """iopt_table_remove_domain: the last domain unpins everything."""
        if domain not in self.domains:
            return
        self.domains.remove(domain)
        if not self.domains:
            for _s, _l, area in self.areas:
                area.pages.unfill(area)
        self.remove_reserved_iova(domain)
        self._calculate_iova_alignment()

    def storage_domain(self) -> IoptDomain | None:
        """The domain the pinned pages are read back from (the first
        attached); None while no domain is attached."""
        return self.domains[0] if self.domains else None

    # -- huge pages option ------------------------------------------------------------------------------
    def enable_large_pages(self) -> None:
        """iopt_enable_large_pages."""
        self.disable_large_pages = False
        self._calculate_iova_alignment()

    def disable_large_pages_(self) -> None:
        """iopt_disable_large_pages."""
        if self.disable_large_pages:
            return
        if self.domains and self.areas:
            # iopt_disable_large_pages: EINVAL once domains hold mappings
            raise errno_error(errno.EINVAL, "domains already map pages")
        self.disable_large_pages = True
        try:
            self._calculate_iova_alignment()
        except OSError:
            self.disable_large_pages = False
            raise

    # -- teardown ---------------------------------------------------------------------------------
    def destroy(self) -> None:
        """iommufd_ioas_destroy: unmap everything."""
        self.unmap_all()
        self.allowed = IntervalMap()


def page_runs(areas: IntervalMap[Area], iova: int, length: int, write: bool,
              fault: Callable[[int, str], Exception]) -> list[tuple[int, int]]:
    """Translate ``[iova, iova + length)`` through ``areas`` into process
    address runs; ``fault(iova, reason)`` builds the exception for a hole or
    a permission problem."""
    runs: list[tuple[int, int]] = []
    pos = iova
    end = iova + length
    while pos < end:
        found = areas.find(pos)
        if found is None:
            raise fault(pos, "IOVA not mapped")
        area = found[2]
        if write and not (area.prot & IOMMU_WRITE):
            raise fault(pos, "IOVA mapped read-only")
        if not write and not (area.prot & IOMMU_READ):
            raise fault(pos, "IOVA mapped write-only")
        n = min(end, area.last + 1) - pos
        va = area.pages.va(area.start_byte_at(pos))
        if runs and runs[-1][0] + runs[-1][1] == va:
            runs[-1] = (runs[-1][0], runs[-1][1] + n)
        else:
            runs.append((va, n))
        pos += n
    return runs



# -- mapping for the ioctls: these take the context, as the kernel's do ---------------------
def _pages_account_mode(ictx: IommufdFile) -> int:
    """iopt_alloc_pages: CAP_IPC_LOCK skips accounting."""
    return ACCOUNT_NONE if getattr(ictx.system, "cap_ipc_lock", False) else ACCOUNT_USER


def iopt_map_common(ictx: IommufdFile, iopt: IoPagetable, pages: Pages, start_byte: int,
                    length: int, iova: int, prot: int, alloc: bool) -> int:
    """iopt_map_common: map one slice of ``pages``, charged the way the
    context's RLIMIT_MODE says; the reference on ``pages`` is dropped when
    the map fails."""
    if ictx.account_mode == ACCOUNT_MM and pages.account_mode == ACCOUNT_USER:
        pages.account_mode = ACCOUNT_MM
    try:
        return iopt.map_pages([ElmPages(pages, start_byte, length)], length, iova, prot, alloc)
    except BaseException:
        pages.put()
        raise


def iopt_map_user_pages(ictx: IommufdFile, iopt: IoPagetable, uptr: int, length: int,
                        iova: int, prot: int, alloc: bool) -> int:
    """iopt_map_user_pages: map ``length`` bytes of user memory at ``uptr``;
    returns the IOVA."""
    pages = Pages.user(ictx.kernel, ictx.system_page_size, uptr, length,
                       bool(prot & IOMMU_WRITE), _pages_account_mode(ictx))
    return iopt_map_common(ictx, iopt, pages, uptr - pages.uptr, length, iova, prot, alloc)


def iopt_map_file_pages(ictx: IommufdFile, iopt: IoPagetable, fd: int, start: int,
                        length: int, iova: int, prot: int, alloc: bool) -> int:
    """iopt_map_file_pages: map ``length`` bytes of the file ``fd`` from
    offset ``start``; returns the IOVA."""
    if not length:
        # iopt_map_file_pages: EINVAL for a zero length
        raise errno_error(errno.EINVAL, "zero length")
    if start + length - 1 > ULONG_MAX:
        # iopt_map_file_pages: EOVERFLOW when start + length wraps
        raise errno_error(errno.EOVERFLOW, "start + length overflows")
    try:
        if fd < 0:
            raise OSError(errno.EBADF, "negative fd")
        os.fstat(fd)
    except OSError:
        # iopt_map_file_pages: EBADF when fget fails
        raise errno_error(errno.EBADF, f"fd {fd} is not open") from None
    ps = ictx.system_page_size
    pages = Pages.file(ictx.kernel, ps, fd, start, length, bool(prot & IOMMU_WRITE),
                       _pages_account_mode(ictx))
    return iopt_map_common(ictx, iopt, pages, start % ps, length, iova, prot, alloc)
