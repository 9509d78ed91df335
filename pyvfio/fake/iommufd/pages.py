"""The memory behind IOAS mappings: pinning and its accounting.

After drivers/iommu/iommufd/pages.c of Linux 7.3: a :class:`Pages` object
(struct iopt_pages) is the user memory or the file range of one
IOMMU_IOAS_MAP / IOMMU_IOAS_MAP_FILE (or a vfio-compat map), shared by the
areas that map it, and keeps which of its pages are pinned.

Pinning follows the kernel: the I/O page table fills an area (pins its
pages) when a domain needs them (see :mod:`.io_pagetable`), a page of a
:class:`Pages` object is pinned and charged once no matter how many areas
(of any IOAS, through IOMMU_IOAS_COPY) map it, and pages stay pinned until
their last filled area goes away.  Charges go to the one
:class:`~pyvfio.fake.core.UserMemory` counter of the system.
"""

from __future__ import annotations

import bisect
import errno
import os
from typing import TYPE_CHECKING

from ..core import errno_error
from ._spans import ULONG_MAX, merge_spans, spans_size, subtract_spans

if TYPE_CHECKING:
    from ...backend.base import MemoryMap
    from ..core import FakeBackend, UserMemory
    from .io_pagetable import Area

__all__ = ["SIZE_MAX", "ACCOUNT_NONE", "ACCOUNT_USER", "ACCOUNT_MM", "MapsSnapshot", "Pages"]

#: The largest ``size_t`` (64-bit).
SIZE_MAX = ULONG_MAX

#: enum iopt_pages_account_mode: pinned pages are not charged.
ACCOUNT_NONE = 0
#: Pinned pages are charged to the user's locked memory (RLIMIT_MEMLOCK).
ACCOUNT_USER = 1
#: Pinned pages are charged to the process's locked_vm (``mm`` mode).
ACCOUNT_MM = 2


class MapsSnapshot:
    """One read of /proc/self/maps, to validate many user ranges at once
    (pin_user_pages over many areas)."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._regions: list[tuple[int, int, str]] = []
        with open("/proc/self/maps", encoding="ascii") as f:
            for line in f:
                addr, perms = line.split()[:2]
                lo, hi = addr.split("-")
                self._regions.append((int(lo, 16), int(hi, 16), perms))
        self._regions.sort()
        self._starts = [r[0] for r in self._regions]

    def check(self, va: int, length: int, write: bool) -> None:
        """EFAULT unless ``[va, va + length)`` is mapped readable (and writable)."""
        if length <= 0:
            return
        end = va + length
        pos = va
        i = bisect.bisect_right(self._starts, pos) - 1
        while pos < end:
            if i < 0 or i >= len(self._regions):
                raise errno_error(errno.EFAULT, f"user address {pos:#x} is not mapped")
            lo, hi, perms = self._regions[i]
            if not lo <= pos < hi:
                raise errno_error(errno.EFAULT, f"user address {pos:#x} is not mapped")
            if "r" not in perms or (write and "w" not in perms):
                raise errno_error(errno.EFAULT, f"user address {pos:#x} is not accessible")
            pos = hi
            i += 1



# -- pages ---------------------------------------------------------------------------------------
class Pages:
    """struct iopt_pages: the memory behind one IOMMU_IOAS_MAP / _MAP_FILE
    (or IOMMU_VFIO compat map), shared by the areas that map it."""

    def __init__(self, kernel: FakeBackend, page_size: int, kind: str, start_byte: int,
                 length: int, writable: bool, account_mode: int) -> None:
        # iopt_alloc_pages: EINVAL for an empty or size_t-overflowing length
        if length > SIZE_MAX - page_size or length == 0:
            raise errno_error(errno.EINVAL, f"bad length {length:#x}")
        self.kernel = kernel
        self.page_size = page_size
        self.kind = kind  # "user" | "file"
        self.npages = (length + start_byte + page_size - 1) // page_size
        self.writable = writable
        self.account_mode = account_mode
        #: user: the page-aligned user address; file: the page-aligned offset
        self.uptr = 0
        self.file_start = 0
        self.fd = -1
        self.refs = 1
        self.npinned = 0
        self._filled: dict[Area, tuple[int, int]] = {}
        self._union: list[tuple[int, int]] = []
        self._map: MemoryMap | None = None

    @property
    def user_memory(self) -> UserMemory:
        """The pinned-page accounting the pages are charged to."""
        return self.kernel.system.user_memory

    @classmethod
    def user(cls, kernel: FakeBackend, page_size: int, uptr: int, length: int, writable: bool,
             account_mode: int) -> Pages:
        """iopt_alloc_user_pages."""
        if uptr + length > ULONG_MAX:
            # iopt_alloc_user_pages: EOVERFLOW when uptr + length wraps
            raise errno_error(errno.EOVERFLOW, "user_va + length overflows")
        down = uptr - uptr % page_size
        pages = cls(kernel, page_size, "user", uptr - down, length, writable, account_mode)
        pages.uptr = down
        return pages

    @classmethod
    def file(cls, kernel: FakeBackend, page_size: int, fd: int, start: int, length: int,
             writable: bool, account_mode: int) -> Pages:
        """iopt_alloc_file_pages (the caller checked the fd)."""
        start_byte = start % page_size
        pages = cls(kernel, page_size, "file", start_byte, length, writable, account_mode)
        pages.file_start = start - start_byte
        pages.fd = os.dup(fd)  # get_file: the file stays open while mapped
        return pages

    def __repr__(self) -> str:
        where = f"va {self.uptr:#x}" if self.kind == "user" else f"file offset {self.file_start:#x}"
        return f"<Pages {self.kind} {where} npages={self.npages} pinned={self.npinned}>"

    # -- references -----------------------------------------------------------------
    def get(self) -> None:
        """Take a reference (another area or an IOAS copy uses the pages)."""
        self.refs += 1

    def put(self) -> None:
        """iopt_put_pages: the last reference releases the file."""
        assert self.refs > 0
        self.refs -= 1
        if self.refs:
            return
        assert not self._filled and self.npinned == 0, "releasing pinned pages"
        if self._map is not None:
            self._map.close()
            self._map = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    # -- address translation for DMA -----------------------------------------------------
    def va(self, offset: int) -> int:
        """The process address of byte ``offset`` of the pages."""
        if self.kind == "user":
            return self.uptr + offset
        if self._map is None:
            from ...backend.base import MAP_SHARED, PROT_READ, PROT_WRITE

            length = self.npages * self.page_size
            try:
                self._map = self.kernel.mmap(length, PROT_READ | PROT_WRITE, MAP_SHARED,
                                             self.fd, self.file_start)
            except OSError:
                self._map = self.kernel.mmap(length, PROT_READ, MAP_SHARED, self.fd,
                                             self.file_start)
        return self._map.address + offset

    # -- pinning -------------------------------------------------------------------------------
    def _validate(self, spans: list[tuple[int, int]], maps: MapsSnapshot | None) -> None:
        ps = self.page_size
        if self.kind == "user":
            for first, last in spans:
                va, n = self.uptr + first * ps, (last - first + 1) * ps
                # pin_user_pages_fast: EFAULT for unmapped (or, with
                # FOLL_WRITE, read-only) user memory
                if maps is not None:
                    maps.check(va, n, self.writable)
                else:
                    self.user_memory.check(va, n, self.writable)
            return
        if not _is_shmem(self.fd):
            # memfd_pin_folios: EINVAL for a file that is not shmem/hugetlbfs
            raise errno_error(errno.EINVAL, "only memfd/shmem files can be pinned")
        size = os.fstat(self.fd).st_size
        for _first, last in spans:
            if self.file_start + (last + 1) * ps - 1 >= size:
                # memfd_pin_folios: EINVAL for pages past the end of the file
                raise errno_error(errno.EINVAL, "the range ends past the end of the file")

    def fill(self, area: Area, maps: MapsSnapshot | None = None) -> None:
        """Pin what ``area`` needs that is not pinned yet (pfn_reader +
        pfn_reader_update_pinned); EFAULT/EINVAL, then ENOMEM."""
        span = area.index_span()
        new = subtract_spans(span, self._union)
        if new:
            self._validate(new, maps)
            count = spans_size(new)
            if self.account_mode != ACCOUNT_NONE:
                # incr_user_locked_vm / __account_locked_vm: ENOMEM past RLIMIT_MEMLOCK
                self.user_memory.pin(count)
            self.npinned += count
        self._filled[area] = span
        self._union = merge_spans(self._filled.values())
        area.filled = True

    def unfill(self, area: Area) -> None:
        """Drop ``area``'s claim on its pages; unpin what nothing else holds
        (__iopt_area_unfill_domain + update_unpinned)."""
        if self._filled.pop(area, None) is None:
            return
        area.filled = False
        self._union = merge_spans(self._filled.values())
        now = spans_size(self._union)
        delta = self.npinned - now
        if delta:
            if self.account_mode != ACCOUNT_NONE:
                self.user_memory.unpin(delta)
            self.npinned = now

    def split_filled(self, old: Area, lhs: Area, rhs: Area) -> None:
        """iopt_area_split: the two halves inherit the filled state."""
        if self._filled.pop(old, None) is None:
            return
        self._filled[lhs] = lhs.index_span()
        self._filled[rhs] = rhs.index_span()
        lhs.filled = rhs.filled = True
        self._union = merge_spans(self._filled.values())


_SHMEM_FS = ("tmpfs", "hugetlbfs", "shmem")


def _is_shmem(fd: int) -> bool:
    """shmem_file() || is_file_hugepages(): memfds and files on tmpfs/hugetlbfs."""
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return False
    if target.startswith("/memfd:"):
        return True
    if not target.startswith("/"):
        return False
    if target.endswith(" (deleted)"):
        target = target[: -len(" (deleted)")]
    best, fstype = "", ""
    try:
        with open("/proc/self/mounts", encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mnt = parts[1].replace("\\040", " ")
                if (target == mnt or target.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                    best, fstype = mnt, parts[2]
    except OSError:
        return False
    return fstype in _SHMEM_FS
