"""IOVA allocation for drivers that choose IOVAs themselves.

:class:`IovaAllocator` hands out aligned IOVA ranges inside the usable
ranges an IOAS or a type1 container reports (and below a device's
addressing limit).  A type1 container uses one to pick the IOVA of
``Container.map(buffer)`` (:attr:`pyvfio.Container.iova_allocator`): type1
has no kernel-chosen IOVAs.  Sizes, alignments and IOVAs are in bytes.
"""

from __future__ import annotations

import errno
import threading
from typing import TYPE_CHECKING, Iterable

from ..errors import InvalidArgumentError, UnsupportedError
from ._free_list import Block, carve, give_back, is_pow2, round_up
from .caps import IovaRange

if TYPE_CHECKING:
    from .address_space import AddressSpace
    from .container import Container
    from .iommufd import IOAS

__all__ = ["IovaAllocator"]


class IovaAllocator:
    """Allocates IOVA ranges for drivers that pick IOVAs themselves.

    :param ranges: usable inclusive ``[start, last]`` IOVA ranges (an
        IOAS's :meth:`~pyvfio.IOAS.iova_ranges`, a container's
        :meth:`~pyvfio.Container.iova_ranges`).
    :param alignment: minimum alignment and size granularity (bytes; the
        IOMMU page size or the IOAS's ``iova_alignment``).
    :param limit: first IOVA the device cannot address (e.g. ``1 << 28``
        for a 28-bit DMA engine); ``None`` for no limit.
    :param skip_zero: keep IOVA 0 (and its first page) unused, so that a
        zero address in a descriptor never points at a live buffer.

    Thread safety: safe to share between threads. :meth:`alloc`,
    :meth:`reserve`, :meth:`free` and the queries take the allocator's lock,
    so two threads never get the same range and a freed range goes back into
    the free list exactly once.
    """

    def __init__(self, ranges: Iterable[IovaRange | tuple[int, int]], *,
                 alignment: int = 4096, limit: int | None = None,
                 skip_zero: bool = True) -> None:
        if not is_pow2(alignment):
            raise InvalidArgumentError(f"alignment {alignment:#x} is not a power of two")
        self.alignment = alignment  #: minimum alignment/granularity in bytes
        self.limit = limit  #: first unusable IOVA, or None
        free: list[Block] = []
        for r in ranges:
            start, last = (r.start, r.last) if isinstance(r, IovaRange) else r
            if limit is not None:
                last = min(last, limit - 1)
            if skip_zero and start < alignment:
                start = alignment
            start = round_up(start, alignment)
            end = (last + 1) // alignment * alignment
            if end > start:
                free.append(Block(start, end - start))
        free.sort(key=lambda b: b.start)
        self._free = free
        self._used: dict[int, int] = {}
        self._lock = threading.Lock()  # guards _free and _used

    @classmethod
    def for_space(cls, space: AddressSpace, *, limit: int | None = None,
                  alignment: int | None = None, skip_mapped: bool = True) -> IovaAllocator:
        """An allocator over the IOVA ranges an IOAS or a type1 container
        (after ``set_iommu``) can map now -- query after the devices are
        attached: they narrow the ranges --, within the space's
        ``allowed_ranges`` when it has some, aligned to its
        ``iova_alignment`` and the page size.  With ``skip_mapped`` the
        mappings made through pyvfio are left out."""
        align = max(space.iova_alignment, space.backend.page_size, alignment or 1)
        ranges = space.iova_ranges()
        allowed = space.allowed_ranges
        if allowed:
            ranges = [IovaRange(max(r.start, a.start), min(r.last, a.last))
                      for r in ranges for a in allowed
                      if max(r.start, a.start) <= min(r.last, a.last)]
        allocator = cls(ranges, alignment=align, limit=limit)
        if skip_mapped:
            for m in space.mappings:  # what is already mapped through pyvfio
                allocator._exclude(m.iova, m.length)
        return allocator

    @classmethod
    def for_ioas(cls, ioas: IOAS, *, limit: int | None = None,
                 alignment: int | None = None) -> IovaAllocator:
        """An allocator over the IOAS's usable ranges (query after the
        devices are attached: they narrow the ranges), within its
        :attr:`~pyvfio.IOAS.allowed_ranges` when it has some
        (:meth:`for_space`)."""
        return cls.for_space(ioas, limit=limit, alignment=alignment)

    @classmethod
    def for_container(cls, container: Container, *, limit: int | None = None,
                      alignment: int | None = None, skip_mapped: bool = True) -> IovaAllocator:
        """An allocator over a type1 container's usable ranges (after
        ``set_iommu``); the whole 64-bit space when it reports none.  With
        ``skip_mapped`` the mappings made through pyvfio are left out
        (:meth:`for_space`)."""
        return cls.for_space(container, limit=limit, alignment=alignment,
                             skip_mapped=skip_mapped)

    def _exclude(self, iova: int, size: int) -> None:
        """Remove ``[iova, iova + size)`` from the free ranges, wherever it
        overlaps them (no record: it is not handed out, nor given back)."""
        with self._lock:
            self._free = self._without(iova, size)

    def _without(self, iova: int, size: int) -> list[Block]:
        end = iova + size
        kept: list[Block] = []
        for b in self._free:
            b_end = b.start + b.size
            if b_end <= iova or b.start >= end:
                kept.append(b)
                continue
            if b.start < iova:
                kept.append(Block(b.start, iova - b.start))
            if end < b_end:
                start = round_up(end, self.alignment)
                if start < b_end:
                    kept.append(Block(start, b_end - start))
        return kept

    def free_ranges(self) -> list[IovaRange]:
        """The IOVA ranges still free (inclusive)."""
        with self._lock:
            return [IovaRange(b.start, b.start + b.size - 1) for b in self._free]

    @property
    def allocated(self) -> dict[int, int]:
        """``iova -> size`` of the ranges handed out."""
        with self._lock:
            return dict(self._used)

    def alloc(self, size: int, *, alignment: int | None = None) -> int:
        """Allocate ``size`` bytes (rounded up to the granularity) at an
        IOVA aligned to ``alignment`` (default the allocator's); raises
        :class:`~pyvfio.errors.UnsupportedError` (ENOSPC) when nothing fits."""
        align = max(alignment or self.alignment, self.alignment)
        if not is_pow2(align):
            raise InvalidArgumentError(f"alignment {align:#x} is not a power of two")
        if size <= 0:
            raise InvalidArgumentError("size must be positive")
        size = round_up(size, self.alignment)
        with self._lock:
            for i, block in enumerate(self._free):
                start = round_up(block.start, align)
                end = block.start + block.size
                if start + size <= end:
                    carve(self._free, i, start, size)
                    self._used[start] = size
                    return start
        raise UnsupportedError(errno.ENOSPC,
                               f"no free IOVA range of {size:#x} bytes aligned to {align:#x}"
                               + (f" below {self.limit:#x}" if self.limit is not None else ""),
                               target="IOVA allocator")

    def reserve(self, iova: int, size: int) -> None:
        """Take ``[iova, iova + size)`` out of the free ranges (it must be free)."""
        if size <= 0:
            raise InvalidArgumentError("size must be positive", target="IOVA allocator")
        size = round_up(size, self.alignment)
        with self._lock:
            for i, block in enumerate(self._free):
                if block.start <= iova and iova + size <= block.start + block.size:
                    carve(self._free, i, iova, size)
                    self._used[iova] = size
                    return
        raise InvalidArgumentError(f"[{iova:#x}, +{size:#x}) is not free", target="IOVA allocator")

    def free(self, iova: int) -> None:
        """Give back the range allocated at ``iova``."""
        with self._lock:
            size = self._used.pop(iova, None)
            if size is not None:
                self._free = give_back(self._free, iova, size)
                return
        raise InvalidArgumentError(f"IOVA {iova:#x} was not allocated", target="IOVA allocator")

    def _free_if_allocated(self, iova: int) -> None:
        """Give back the range at ``iova`` when it was allocated (checked
        and freed under one hold of the lock)."""
        with self._lock:
            size = self._used.pop(iova, None)
            if size is not None:
                self._free = give_back(self._free, iova, size)

    def _is_allocated(self, iova: int) -> bool:
        return iova in self._used  # one dict lookup: atomic
