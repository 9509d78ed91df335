"""Memory for device DMA: buffers, IOVA allocation and descriptor pools.

* :class:`DmaBuffer` -- page-aligned process memory to map for DMA:
  anonymous, hugetlb (2 MiB or 1 GiB pages) or memfd-backed (for
  ``IOAS.map_file``).  It has ``address`` and ``length``, so
  ``ioas.map(buf)`` and ``container.map_dma(buf, iova)`` accept it.  It
  is an ``mmap.mmap``, so it has the buffer protocol (``memoryview(buf)``,
  ``sock.recv_into(buf)``, ... on every Python version); its bytes are
  also reachable as a cffi pointer (:meth:`DmaBuffer.pointer`) and, with
  numpy installed, a numpy array without a copy (``numpy.asarray(buf)`` or
  :meth:`DmaBuffer.numpy`).
* :class:`~pyvfio.core.iova_allocator.IovaAllocator` (in the objects
  layer, which uses it for ``Container.map``) -- for drivers that choose
  IOVAs themselves.
* :class:`DmaPool` -- many small descriptors (queue entries, PRP lists)
  carved out of one mapped buffer: each :class:`DmaChunk` has its ``iova``
  and a memoryview/pointer.
* :func:`map_buffer` -- map a buffer into an IOAS or a container (any
  :class:`~pyvfio.core.address_space.AddressSpace`).

Sizes, offsets and IOVAs are in bytes.
"""

from __future__ import annotations

import errno
import mmap
import os
import threading
import weakref
from typing import Any, SupportsIndex

from .._uapi import ffi, lib
from ..backend import Backend, resolve_backend
from ..core._free_list import Block, carve, give_back, is_pow2, round_up
from ..core.address_space import AddressSpace, IovaMapping
from ..core.iova_allocator import IovaAllocator
from ..core.resource import Resource
from ..errors import InvalidArgumentError, UnsupportedError, _deprecated

__all__ = [
    "HUGE_2M",
    "HUGE_1G",
    "DmaBuffer",
    "DmaPool",
    "DmaChunk",
    "map_buffer",
    "hugepages_available",
]

HUGE_2M = 2 << 20  #: 2 MiB huge pages (x86-64, arm64 with 4K pages)
HUGE_1G = 1 << 30  #: 1 GiB huge pages

MFD_HUGETLB = 0x0004
MFD_HUGE_SHIFT = 26

_HUGEPAGES = "/sys/kernel/mm/hugepages"

#: errnos of a hugetlb allocation the machine cannot serve: no free pages
#: (ENOMEM), a size it does not have (EINVAL from mmap, ENODEV from
#: memfd_create), no hugetlbfs mount for the size (ENOENT).
_HUGETLB_ERRNOS = (errno.ENOMEM, errno.EINVAL, errno.ENOENT, errno.ENODEV)

_FILL_BLOCK = 1 << 20  # bytes copied per memmove by DmaBuffer.fill


def hugepages_available(page_size: int = HUGE_2M) -> int:
    """Free huge pages of ``page_size`` bytes on this machine (0 when the
    size is not supported or none are reserved)."""
    path = f"{_HUGEPAGES}/hugepages-{page_size // 1024}kB/free_hugepages"
    try:
        with open(path, encoding="ascii") as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def _hugepage_sizes() -> list[int]:
    """The huge page sizes (bytes) this machine supports, ascending."""
    try:
        names = os.listdir(_HUGEPAGES)
    except OSError:
        return []
    sizes = []
    for n in names:
        if n.startswith("hugepages-") and n.endswith("kB") and n[10:-2].isdigit():
            sizes.append(int(n[10:-2]) * 1024)
    return sorted(sizes)


def _hugetlb_error(err: int, length: int, page_size: int) -> UnsupportedError:
    kb = page_size // 1024
    directory = f"{_HUGEPAGES}/hugepages-{kb}kB"
    if not os.path.isdir(directory):
        sizes = ", ".join(f"{s // 1024} kB" for s in _hugepage_sizes()) or "none"
        return UnsupportedError(
            err, f"this machine does not support {kb} kB huge pages "
            f"({os.strerror(err)}; no {directory}; huge page sizes it supports: {sizes})",
            target=DmaBuffer.kind)
    return UnsupportedError(
        err, f"cannot allocate {length:#x} bytes of {kb} kB huge pages "
        f"({os.strerror(err)}; {hugepages_available(page_size)} free): "
        f"reserve some with 'echo N > {directory}/nr_hugepages' "
        "(or boot with hugepagesz=/hugepages=)", target=DmaBuffer.kind)


class DmaBuffer(Resource, mmap.mmap):  # type: ignore[override]  # Resource.closed is read-only
    """Page-aligned memory of this process, for device DMA.

    :param size: bytes; rounded up to whole pages (of ``page_size``).
    :param page_size: ``None`` for normal pages, :data:`HUGE_2M` or
        :data:`HUGE_1G` for hugetlb pages (``MAP_HUGETLB | MAP_HUGE_2MB``,
        or ``MFD_HUGETLB`` with ``memfd``).  When the machine has no free
        huge pages of that size, or does not support the size at all,
        :class:`~pyvfio.errors.UnsupportedError` says so (and how to
        reserve some).
    :param memfd: back the memory with a memfd (``MAP_SHARED``) whose fd
        is :attr:`fd`, for ``IOAS.map_file(buf.fd, buf.length)``.
    :param populate: fault every page in now (``MAP_POPULATE``).

    The buffer is an :class:`mmap.mmap` of real memory (on every backend),
    so it has the buffer protocol on every Python version:
    ``memoryview(buf)``, ``bytes(buf)``, ``f.readinto(buf)``,
    ``os.readv(fd, [buf])``, ``sock.recv_into(buf)`` and
    ``numpy.asarray(buf)`` use its memory without a copy.  mmap's file-like
    methods (``read``, ``write``, ``seek``, ``find``, ``madvise``) work
    too; ``resize()`` is refused (the IOMMU maps the buffer by address).

    ``close()`` unmaps the memory (and closes the memfd).  While the
    buffer is mapped for DMA (:attr:`mappings`, in an IOAS or a type1
    container) ``close()`` refuses, with an
    :class:`~pyvfio.errors.InvalidArgumentError` (EBUSY) naming the
    mappings, and the buffer stays open: the device could still write to
    the memory, and the next buffer the process gets at that address would
    receive it.  Unmap first, or call ``close(unmap=True)``.  While memoryviews or arrays over the buffer exist
    (:attr:`view`, slices, ``memoryview(buf)``, :meth:`numpy`,
    ``numpy.asarray(buf)``), ``close()`` raises :class:`BufferError` and
    the buffer stays open: release them first (``del``,
    ``memoryview.release()``).  Pointers from :meth:`pointer` and
    ``__array_interface__`` do not hold the buffer: do not use them after
    ``close()``.  After ``close()`` the methods here raise
    :class:`~pyvfio.errors.ClosedError`; mmap's own methods and
    ``memoryview(buf)`` raise :class:`ValueError` (its base class).

    Thread safety: the memory may be read and written from any thread
    (ordering between threads and the device is the driver's business).
    Do not close it while another thread uses it or maps it.
    """

    kind = "DMA buffer"

    address: int  #: virtual address of the first byte
    length: int  #: bytes (a multiple of :attr:`page_size`)
    page_size: int  #: bytes per page backing the buffer
    hugetlb: bool  #: backed by hugetlb pages
    _dma_mappings: weakref.WeakSet[IovaMapping]  # IovaMapping adds and removes itself
    _fd = -1

    # The memory is mapped in __new__: an mmap.mmap is created there.
    def __new__(cls, size: int, *, backend: Backend | None = None,
                page_size: int | None = None, memfd: bool = False, populate: bool = True,
                name: str = "pyvfio-dma") -> DmaBuffer:
        b = resolve_backend(backend)
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise InvalidArgumentError(f"size must be a positive int, not {size!r}",
                                       target=cls.kind)
        base_page = b.page_size
        huge = page_size is not None and page_size != base_page
        if page_size is None:
            page_size = base_page
        if not isinstance(page_size, int) or isinstance(page_size, bool):
            raise InvalidArgumentError(f"page size must be an int, not {page_size!r}",
                                       target=cls.kind)
        if not is_pow2(page_size) or page_size < base_page:
            raise InvalidArgumentError(f"page size {page_size:#x} is not a power of two >= "
                                       f"{base_page:#x}", target=cls.kind)
        length = round_up(size, page_size)
        shift = page_size.bit_length() - 1
        fd = -1
        flags = mmap.MAP_POPULATE if populate else 0
        try:
            if memfd:
                fd = b.memfd_create(name, (MFD_HUGETLB | (shift << MFD_HUGE_SHIFT)) if huge else 0)
                b.ftruncate(fd, length)
                flags |= mmap.MAP_SHARED
            else:
                flags |= mmap.MAP_PRIVATE  # fileno -1: mmap adds MAP_ANONYMOUS
                if huge:
                    flags |= lib.PYVFIO_MAP_HUGETLB | (shift << lib.PYVFIO_MAP_HUGE_SHIFT)
            self = super().__new__(cls, fd, length, flags=flags,
                                   prot=mmap.PROT_READ | mmap.PROT_WRITE)
            with ffi.from_buffer(self) as data:
                address = int(ffi.cast("uintptr_t", data))
        except BaseException as exc:
            if fd >= 0:
                b.close(fd)
            if huge and isinstance(exc, OSError) and exc.errno in _HUGETLB_ERRNOS:
                raise _hugetlb_error(exc.errno, length, page_size) from None
            raise
        self._fd = fd
        self.address = address
        self.length = length
        self.page_size = page_size
        self.hugetlb = huge
        self._dma_mappings = weakref.WeakSet()
        Resource.__init__(self, b)
        return self

    def __init__(self, size: int, *, backend: Backend | None = None,
                 page_size: int | None = None, memfd: bool = False, populate: bool = True,
                 name: str = "pyvfio-dma") -> None:
        pass  # everything happened in __new__

    # -- identity ---------------------------------------------------------------------------
    def describe(self) -> str:
        """``"DMA buffer 0x7f.. (0x2000 bytes)"``."""
        return f"DMA buffer {self.address:#x} ({self.length:#x} bytes)"

    @property
    def size(self) -> int:  # type: ignore[override]  # mmap.size() is a method
        """Deprecated: use :attr:`length` (bytes), the one size attribute of
        buffers and mappings; warns :class:`DeprecationWarning`."""
        _deprecated("DmaBuffer.size", "DmaBuffer.length")
        return self.length

    @property
    def fd(self) -> int:
        """The memfd (``memfd=True``), else -1."""
        self._check_open()
        return self._fd

    def __len__(self) -> int:
        return self.length

    @property
    def mappings(self) -> tuple[IovaMapping, ...]:
        """The open DMA mappings of this buffer (in any IOAS or container)."""
        return tuple(sorted((m for m in self._dma_mappings if not m.closed),
                            key=lambda m: (m.space.describe(), m.iova)))

    # -- access ------------------------------------------------------------------------------
    @property
    def view(self) -> memoryview:
        """A new writable memoryview of the whole buffer (no copy); the
        buffer cannot be closed while it (or a slice of it) is alive."""
        self._check_open()
        return memoryview(self)

    def __bytes__(self) -> bytes:
        return bytes(self.view)

    def __getitem__(self, key: SupportsIndex | slice) -> Any:  # int; memoryview for a slice
        return self.view[key]

    def __setitem__(self, key: SupportsIndex | slice, value: Any) -> None:
        self.view[key] = value

    def pointer(self, ctype: str = "uint8_t *", offset: int = 0) -> Any:
        """A cffi pointer of type ``ctype`` to byte ``offset`` (it does not
        keep the buffer open)."""
        self._check_open()
        if not 0 <= offset < self.length:
            raise InvalidArgumentError(f"offset {offset:#x} is outside the buffer",
                                       target=self.describe())
        return ffi.cast(ctype, self.address + offset)

    @property
    def __array_interface__(self) -> dict[str, Any]:
        """numpy's array interface: a uint8 view of the buffer by address
        (``numpy.asarray(buf)`` prefers the buffer protocol, which keeps
        the buffer open while the array lives)."""
        self._check_open()
        return {"shape": (self.length,), "typestr": "|u1", "data": (self.address, False),
                "version": 3}

    def numpy(self, dtype: Any = "uint8", offset: int = 0, count: int = -1) -> Any:
        """A numpy array over the buffer (no copy); needs numpy.  ``offset``
        is in bytes, ``count`` in items (-1: to the end)."""
        import numpy as np

        return np.frombuffer(self.view, dtype=dtype, count=count, offset=offset)

    def fill(self, byte: int = 0) -> None:
        """Set every byte to ``byte`` (0..255)."""
        self._check_open()
        if not isinstance(byte, int) or not 0 <= byte <= 0xFF:
            raise InvalidArgumentError(f"fill byte {byte!r} is not in 0..255",
                                       target=self.describe())
        block = bytes([byte]) * min(self.length, _FILL_BLOCK)
        for offset in range(0, self.length, len(block)):
            n = min(len(block), self.length - offset)
            ffi.memmove(ffi.cast("char *", self.address + offset), block, n)

    def resize(self, newsize: int) -> None:
        """Refused: DMA mappings refer to the buffer's address and length."""
        raise UnsupportedError(errno.EOPNOTSUPP,
                               "a DMA buffer cannot be resized: allocate another one",
                               target=self.describe())

    # -- lifetime -----------------------------------------------------------------------------
    def close(self, *, unmap: bool = False) -> None:
        """Unmap the memory and close the memfd; does nothing if closed.
        Raises :class:`BufferError`, and stays open, while memoryviews or
        arrays over the buffer exist.

        While the buffer is mapped for DMA it stays open and
        :class:`~pyvfio.errors.InvalidArgumentError` (EBUSY) names the
        mappings; with ``unmap=True`` they are closed (unmapped) first."""
        if not self._closed:
            mapped = self.mappings
            if mapped and unmap:
                for m in mapped:
                    m.close()  # a failed unmap raises: the buffer stays open
            elif mapped:
                where = ", ".join(f"IOVA {m.iova:#x} in {m.space.describe()}" for m in mapped)
                raise InvalidArgumentError(
                    f"still mapped at {where}: unmap first "
                    "(or close(unmap=True))", target=self.describe(), err=errno.EBUSY)
            try:
                mmap.mmap.close(self)
            except BufferError:
                raise BufferError(
                    f"{self.describe()} is still used by memoryviews or arrays over it: "
                    "release them (del, memoryview.release()) before close()") from None
        super().close()

    def _release(self) -> None:
        fd, self._fd = self._fd, -1
        try:
            mmap.mmap.close(self)  # normally done by close() already
        finally:
            if fd >= 0:
                self._backend.close(fd)


def map_buffer(space: AddressSpace, buffer: Any, iova: int | None = None, *,
               allocator: IovaAllocator | None = None, readable: bool = True,
               writeable: bool = True) -> IovaMapping:
    """Map ``buffer`` for DMA into an IOAS (``IOMMU_IOAS_MAP``) or a type1
    container (``VFIO_IOMMU_MAP_DMA``) and return the mapping (its ``iova``
    is where the device sees the buffer).

    The IOVA is ``iova``, else one from ``allocator`` (freed again when the
    map call fails, unless the kernel may still hold a mapping there: see
    :meth:`IOAS.map <pyvfio.IOAS.map>`), else -- for an IOAS only --
    chosen by the kernel."""
    allocated = False
    if iova is None and allocator is not None:
        length = getattr(buffer, "length", None)
        if not isinstance(length, int):
            length = len(memoryview(buffer).cast("B"))
        iova = allocator.alloc(length)
        allocated = True
    if iova is None and not space.kernel_picks_iova:
        raise InvalidArgumentError(
            "an address space whose kernel picks no IOVA (a type1 container) needs an IOVA "
            "(or an allocator)",
            ioctl=space.map_ioctl, target=space.describe())
    try:
        return space.map(buffer, iova, readable=readable, writeable=writeable)
    except BaseException as exc:
        # An IOVA the kernel may still have mapped (a map whose result
        # could not be copied out, and whose clean-up failed) stays taken.
        if (allocated and allocator is not None and iova is not None
                and not getattr(exc, "iova_still_mapped", False)):
            allocator.free(iova)
        raise


class DmaChunk:
    """A piece of a :class:`DmaPool`: ``length`` bytes at :attr:`iova`.

    Thread safety: its memory may be used from any thread; :meth:`free`
    gives it back once even when called from several threads (the pool's
    lock decides).
    """

    def __init__(self, pool: DmaPool, offset: int, length: int) -> None:
        self.pool = pool  #: the pool it came from
        self.offset = offset  #: byte offset in the pool's buffer
        self.length = length  #: bytes
        self.iova = pool.iova + offset  #: where the device sees it
        self.address = pool.buffer.address + offset  #: process virtual address
        self._freed = False

    def __repr__(self) -> str:
        return f"<DmaChunk iova={self.iova:#x} {self.length:#x} bytes>"

    @property
    def view(self) -> memoryview:
        """A writable memoryview of the chunk (no copy)."""
        self._live()
        return self.pool.buffer.view[self.offset:self.offset + self.length]

    def pointer(self, ctype: str = "uint8_t *", offset: int = 0) -> Any:
        """A cffi pointer of type ``ctype`` to byte ``offset`` of the chunk."""
        self._live()
        if not 0 <= offset < self.length:
            raise InvalidArgumentError(f"offset {offset:#x} is outside the chunk")
        return ffi.cast(ctype, self.address + offset)

    def read(self, offset: int = 0, size: int | None = None) -> bytes:
        """A copy of ``size`` bytes at ``offset`` (default: to the end)."""
        self._live()
        end = self.length if size is None else offset + size
        return bytes(self.view[offset:end])

    def write(self, data: bytes | bytearray | memoryview, offset: int = 0) -> None:
        """Copy ``data`` in at ``offset``."""
        self._live()
        payload = memoryview(data).cast("B")
        if offset < 0 or offset + len(payload) > self.length:
            raise InvalidArgumentError("the data does not fit the chunk")
        self.view[offset:offset + len(payload)] = payload

    def zero(self) -> None:
        """Set every byte to 0."""
        self.view[:] = bytes(self.length)

    def _live(self) -> None:
        if self._freed:
            raise InvalidArgumentError(f"chunk at IOVA {self.iova:#x} was freed")
        self.pool._check_open()
        self.pool.buffer._check_open()  # a pool that does not own it may outlive it

    def free(self) -> None:
        """Give the chunk back to the pool; idempotent."""
        pool = self.pool
        with pool._lock:  # one thread frees it; its offset may be reused after
            if self._freed:
                return
            self._freed = True
        if not pool.closed:
            pool._give_back(self.offset, self.length)

    def __enter__(self) -> DmaChunk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.free()


class DmaPool(Resource):
    """Aligned chunks carved out of one DMA-mapped buffer.

    Build one over a buffer already mapped at ``iova``
    (``DmaPool(buffer, mapping.iova)``), or let :meth:`create` allocate,
    map and own both::

        pool = DmaPool.create(ioas, 1 << 20, allocator=iovas)
        sq = pool.alloc(4096, align=4096)      # a queue: sq.iova, sq.view
        prp = pool.alloc(64)                   # a small descriptor

    Closing a pool made by :meth:`create` unmaps and frees its buffer; like
    :meth:`DmaBuffer.close` that raises :class:`BufferError` while views of
    its chunks are alive (the pool is closed, :attr:`buffer` stays open).
    A pool over a caller's buffer raises :class:`~pyvfio.errors.ClosedError`
    once that buffer is closed.

    Thread safety: safe to share between threads: :meth:`alloc` and
    freeing a chunk take the pool's lock around its free list (the chunk
    is zeroed after the lock is released).  Close it after the threads
    using it are done.
    """

    kind = "DMA pool"

    def __init__(self, buffer: DmaBuffer, iova: int, *, min_align: int = 64,
                 mapping: Resource | None = None, owns_buffer: bool = False,
                 allocator: IovaAllocator | None = None) -> None:
        _check_min_align(min_align)
        buffer._check_open()
        super().__init__(buffer.backend)
        self.buffer = buffer  #: the memory
        self.iova = iova  #: IOVA of the buffer's first byte
        self.length = buffer.length  #: bytes
        self.min_align = min_align  #: default and minimum chunk alignment (bytes)
        self.mapping = mapping  #: the DMA mapping (owned when made by :meth:`create`)
        self._owns_buffer = owns_buffer
        self._allocator = allocator
        self._free: list[Block] = [Block(0, buffer.length)]
        self._used: dict[int, int] = {}
        self._lock = threading.Lock()  # guards _free and _used

    @classmethod
    def create(cls, space: AddressSpace, size: int, *, iova: int | None = None,
               allocator: IovaAllocator | None = None, min_align: int = 64,
               page_size: int | None = None) -> DmaPool:
        """Allocate a :class:`DmaBuffer` of ``size`` bytes, map it into
        ``space`` (see :func:`map_buffer`) and build a pool that unmaps and
        frees both when closed (on failure, nothing is left behind)."""
        _check_min_align(min_align)
        owner = allocator if iova is None else None  # map_buffer allocates only then
        buffer = DmaBuffer(size, backend=space.backend, page_size=page_size)
        mapping: IovaMapping | None = None
        try:
            mapping = map_buffer(space, buffer, iova, allocator=allocator)
            return cls(buffer, mapping.iova, min_align=min_align, mapping=mapping,
                       owns_buffer=True, allocator=owner)
        except BaseException:
            _undo(buffer, mapping, owner)
            raise

    def describe(self) -> str:
        """``"DMA pool at IOVA 0x.. (0x.. bytes)"``."""
        return f"DMA pool at IOVA {self.iova:#x} ({self.length:#x} bytes)"

    @property
    def used(self) -> int:
        """Bytes handed out."""
        with self._lock:
            return sum(self._used.values())

    @property
    def available(self) -> int:
        """Bytes free (possibly fragmented)."""
        with self._lock:
            return sum(b.size for b in self._free)

    def alloc(self, size: int, *, align: int | None = None, zero: bool = True) -> DmaChunk:
        """A chunk of ``size`` bytes whose IOVA is aligned to ``align``
        (default :attr:`min_align`); zeroed unless ``zero=False``.
        :class:`~pyvfio.errors.UnsupportedError` (ENOMEM) when full."""
        self._check_open()
        self.buffer._check_open()
        align = max(align or self.min_align, self.min_align)
        if not is_pow2(align):
            raise InvalidArgumentError(f"alignment {align} is not a power of two",
                                       target=self.describe())
        if size <= 0:
            raise InvalidArgumentError("size must be positive", target=self.describe())
        size = round_up(size, self.min_align)
        chunk: DmaChunk | None = None
        with self._lock:
            for i, block in enumerate(self._free):
                start_iova = round_up(self.iova + block.start, align)
                start = start_iova - self.iova
                end = block.start + block.size
                if start + size <= end:
                    carve(self._free, i, start, size)
                    self._used[start] = size
                    chunk = DmaChunk(self, start, size)
                    break
        if chunk is not None:
            if zero:
                chunk.zero()
            return chunk
        raise UnsupportedError(errno.ENOMEM,
                               f"no free chunk of {size:#x} bytes aligned to {align:#x} "
                               f"({self.available:#x} bytes free)", target=self.describe())

    def _give_back(self, offset: int, size: int) -> None:
        with self._lock:
            if self._used.pop(offset, None) is None:
                return
            self._free = give_back(self._free, offset, size)

    def _release(self) -> None:
        if not self._owns_buffer:
            return
        if self.mapping is not None:
            # A failed unmap raises here: the mapping and the buffer stay
            # open (the buffer would refuse to close while mapped).
            self.mapping.close()
            if self._allocator is not None:
                try:
                    self._allocator.free(self.iova)
                except InvalidArgumentError:
                    pass
        self.buffer.close()  # BufferError while chunk views are alive


def _check_min_align(min_align: int) -> None:
    if not isinstance(min_align, int) or not is_pow2(min_align):
        raise InvalidArgumentError(f"min_align {min_align!r} is not a power of two",
                                   target=DmaPool.kind)


def _undo(buffer: DmaBuffer, mapping: IovaMapping | None, allocator: IovaAllocator | None) -> None:
    """Best-effort teardown of a half-built pool (the caller re-raises)."""
    try:
        if mapping is not None:
            mapping.close()
            if allocator is not None:
                allocator.free(mapping.iova)
    except Exception:  # keep the original error
        pass
    finally:
        try:
            buffer.close()
        except Exception:
            pass
