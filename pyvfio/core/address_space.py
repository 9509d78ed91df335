"""Address spaces that map process memory for device DMA, and their mappings.

Two kernel objects translate the addresses a device uses (IOVAs) to
process memory: a type1 container (:class:`~pyvfio.Container`,
``VFIO_IOMMU_MAP_DMA``) and an iommufd I/O address space
(:class:`~pyvfio.IOAS`, ``IOMMU_IOAS_MAP``).  Both are an
:class:`AddressSpace`: code that only maps and unmaps memory (the DMA
toolkit, drivers) takes either::

    def load(space: pyvfio.AddressSpace, buf: pyvfio.DmaBuffer) -> int:
        mapping = space.map(buf, 0x100000)
        ...
        mapping.close()

Each map call returns an :class:`IovaMapping` (:class:`~pyvfio.DmaMapping`
or :class:`~pyvfio.IoasMapping`); the space keeps its live mappings in a
:class:`MappingTable`, which also closes the mappings an unmap of a range
removed.
"""

from __future__ import annotations

import threading
from types import MappingProxyType
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    ClassVar,
    Generic,
    Iterator,
    Mapping,
    Protocol,
    Sequence,
    TypeVar,
)

from .._sorted import SortedKeys
from ..errors import _deprecated
from .resource import Resource

if TYPE_CHECKING:
    from ..backend import Backend
    from .caps import IovaRange

__all__ = ["AddressSpace", "IovaMapping", "MappingTable"]


class AddressSpace(Protocol):
    """An IOVA space that maps process memory for DMA: a type1
    :class:`~pyvfio.Container` or an :class:`~pyvfio.IOAS`.

    Sizes, IOVAs and alignments are in bytes; ranges are inclusive
    ``[start, last]``.

    Thread safety: both implementations may be shared between threads:
    map, unmap and close hold the space's lock across the ioctl and the
    bookkeeping of :attr:`mappings`.
    """

    #: ``map(buffer)`` without an IOVA lets the kernel choose it (iommufd);
    #: when False (type1) pyvfio picks one itself, from the space's own
    #: allocator.
    kernel_picks_iova: ClassVar[bool]
    #: The name of the map ioctl, for messages.
    map_ioctl: ClassVar[str]
    #: Held across each map/unmap ioctl and the update of the mappings.
    _lock: threading.RLock

    @property
    def backend(self) -> Backend:
        """The backend the space's syscalls go to."""

    @property
    def closed(self) -> bool:
        """True once the space has been closed."""

    def describe(self) -> str:
        """Short description used in error messages."""

    @property
    def mappings(self) -> Sequence[IovaMapping]:
        """Live mappings made through this object, by IOVA."""

    @property
    def allowed_ranges(self) -> tuple[IovaRange, ...]:
        """The ranges the IOVAs the kernel picks are restricted to (empty:
        no restriction)."""

    @property
    def iova_alignment(self) -> int:
        """The granularity mapped IOVAs and lengths are aligned to."""

    def iova_ranges(self) -> list[IovaRange]:
        """The IOVA ranges that may be mapped now."""

    def map(self, buffer: Any, iova: int | None = None, *, readable: bool = True,
            writeable: bool = True) -> IovaMapping:
        """Map a whole buffer (anything :func:`~pyvfio.core.user_buffer.user_buffer`
        accepts) at ``iova``, or at an IOVA chosen for it; the returned
        mapping's ``iova`` is where the device sees the buffer."""

    def unmap(self, iova: int, length: int, /) -> int:
        """Unmap ``[iova, iova + length)``; mappings made through pyvfio that
        the kernel removed are closed.  Returns the bytes unmapped."""

    def unmap_all(self) -> int:
        """Unmap everything; returns the bytes unmapped."""

    def _unmap(self, iova: int, length: int, /, *, only: IovaMapping | None = None) -> int:
        """The unmap ioctl and the table's bookkeeping, without argument
        checks (what closing a mapping does).  With ``only``, nothing
        happens (0) unless that mapping is still in the table: checked
        under the space's lock, with the unmap."""


class IovaMapping(Resource):
    """One range of IOVAs mapped to memory in an :class:`AddressSpace`.

    Closing it unmaps exactly this range.  What backs it (the buffer, a
    file, a source mapping) is kept alive while the mapping exists; a
    buffer that tracks its mappings (a :class:`~pyvfio.DmaBuffer`, through
    a ``_dma_mappings`` weak set) knows it is mapped here until the
    mapping is closed.  When the unmap fails (the kernel unmapped
    nothing), the mapping stays open and ``close()`` may be retried.

    Thread safety: closing takes the address space's lock; a mapping that
    an unmap of a range (or the space's close) in another thread removed
    first is not unmapped again -- its IOVA may already hold a newer
    mapping.  Its attributes do not change after creation.

    :ivar space: the address space it is mapped into
    :ivar iova: first IOVA (bytes)
    :ivar length: length in bytes
    :ivar flags: the map ioctl's flags
    """

    kind = "mapping"
    _open_after_failed_release = True

    # A mapping record is made and dropped on every map/unmap: its
    # attributes (Resource's too) live in slots, and it has no children
    # (nothing is adopted into a mapping: an empty, read-only table).
    __slots__ = ("space", "iova", "length", "flags", "_owner", "_buffer", "_parent", "_closed")
    _children: Mapping[int, Resource] = MappingProxyType({})  # type: ignore[assignment]

    #: The flag bits meaning the device may read (write) the memory.
    _READ: ClassVar[int] = 0
    _WRITE: ClassVar[int] = 0

    def __init__(self, space: AddressSpace, iova: int, length: int, flags: int,
                 owner: Any) -> None:
        # Resource.__init__, inlined: this runs on every map.
        self._closed = False
        self._parent = None
        self.space = space  #: the address space it is mapped into
        self.iova = iova  #: first IOVA (bytes)
        self.length = length  #: bytes
        self.flags = flags  #: the map ioctl's flags
        self._owner = owner
        self._buffer = None
        if type(owner) is not tuple and owner is not None:  # a tuple: a plain buffer
            self._set_owner(owner)

    def _set_owner(self, owner: Any) -> None:
        """Keep ``owner`` alive while mapped and, if it is (or, for a copy,
        its source mapping maps) a buffer tracking its mappings, tell that
        buffer -- and the previous one that it is free."""
        old = self._buffer
        if old is not None:
            old._dma_mappings.discard(self)
        self._owner = owner
        buffer = owner
        while isinstance(buffer, IovaMapping):  # IOMMU_IOAS_COPY of a mapping
            buffer = buffer._buffer
        if buffer is None or type(buffer) is tuple or not hasattr(buffer, "_dma_mappings"):
            buffer = None  # a tuple: a plain buffer (bytearray, mmap, ...)
        self._buffer = buffer
        if buffer is not None:
            buffer._dma_mappings.add(self)

    @property
    def _backend(self) -> Backend:  # type: ignore[override]
        """The space's backend (Resource keeps it in an attribute)."""
        return self.space.backend

    @property
    def buffer(self) -> Any:
        """The buffer mapped here when it tracks its mappings (a
        :class:`~pyvfio.DmaBuffer`, also for a copy of its mapping), else
        ``None``."""
        return self._buffer

    @property
    def size(self) -> int:
        """Deprecated: use :attr:`length` (bytes), the one size attribute of
        mappings and buffers; warns :class:`DeprecationWarning`."""
        _deprecated(f"{type(self).__name__}.size", f"{type(self).__name__}.length")
        return self.length

    @property
    def last(self) -> int:
        """Last IOVA of the mapping (inclusive)."""
        return self.iova + self.length - 1

    @property
    def readable(self) -> bool:
        """The device may read the memory (the map's READ/READABLE flag)."""
        return bool(self.flags & self._READ)

    @property
    def writeable(self) -> bool:
        """The device may write the memory (the map's WRITE/WRITEABLE flag)."""
        return bool(self.flags & self._WRITE)

    def describe(self) -> str:
        return f"mapping [{self.iova:#x}, +{self.length:#x}) of {self.space.describe()}"

    def close(self) -> None:
        """Unmap exactly this range; does nothing once closed.  When the
        unmap fails (the kernel unmapped nothing) the mapping stays open,
        the error is raised and ``close()`` may be retried."""
        # Resource.close for an object without children (a mapping has
        # none), inlined: this runs on every unmap.
        if self._closed:
            return
        self._closed = True  # also keeps _release from closing it again
        try:
            self._release()
        except BaseException:
            self._closed = False
            raise
        parent = self._parent
        if parent is not None:
            parent._children.pop(id(self), None)
            self._parent = None

    def unmap(self) -> None:
        """Deprecated: use :meth:`~pyvfio.core.resource.Resource.close`, the
        one verb that ends every pyvfio object (it unmaps this range); warns
        :class:`DeprecationWarning`."""
        _deprecated(f"{type(self).__name__}.unmap()", f"{type(self).__name__}.close()")
        self.close()

    def _release(self) -> None:
        space = self.space
        if not space.closed:
            # only while still in the table: no unmap (of another thread)
            # took it out and gave its IOVA to a newer mapping; marks it closed
            space._unmap(self.iova, self.length, only=self)
        if self._owner is not None:
            self._set_owner(None)

    def _mark_closed(self) -> None:
        """The kernel unmapped the range (an unmap of a wider range, the
        space closed or destroyed): the buffer is free again."""
        if self._buffer is not None:
            self._set_owner(None)
        self._owner = None
        self._closed = True
        parent = self._parent
        if parent is not None:
            parent._children.pop(id(self), None)
            self._parent = None

    def overlaps(self, iova: int, length: int) -> bool:
        """Whether ``[iova, iova + length)`` shares an IOVA with this mapping."""
        return iova <= self.last and self.iova <= iova + length - 1


#: The kind of mapping a :class:`MappingTable` holds (an :class:`IovaMapping` subclass).
M = TypeVar("M", bound=IovaMapping)


class MappingTable(Generic[M]):
    """The live mappings of one address space, by first IOVA.

    Tracked mappings never overlap (the kernel refuses an overlapping map).
    :meth:`forget` applies an unmap the kernel did: it takes the mappings
    the unmap removed out of the table and marks them closed.

    :param straddling: an unmap of a range removes, whole, a mapping that
        starts inside the range and runs past its end (type1 v1,
        ``vfio_dma_do_unmap``); without it only mappings lying wholly
        inside the range are removed (iommufd, type1v2 refuses to cut one).

    Thread safety: none of its own; its address space changes it only
    while holding the space's lock (readers get a snapshot with
    :meth:`in_order`).
    """

    __slots__ = ("_by_iova", "_starts", "_unsorted", "straddling")

    def __init__(self, *, straddling: bool = False) -> None:
        self._by_iova: dict[int, M] = {}
        # The sorted index of the keys of _by_iova is brought up to date
        # only when order is needed (iteration, an unmap of a range): a
        # map and the unmap of that mapping touch the dict and _unsorted,
        # the keys not yet in _starts.
        self._starts = SortedKeys()
        self._unsorted: set[int] = set()
        self.straddling = straddling

    def __len__(self) -> int:
        return len(self._by_iova)

    def __bool__(self) -> bool:
        return bool(self._by_iova)

    def _sorted(self) -> SortedKeys:
        """The sorted index, with the keys added since the last call."""
        unsorted = self._unsorted
        if unsorted:
            starts = self._starts
            for key in sorted(unsorted):
                starts.add(key)
            unsorted.clear()
        return self._starts

    def _remove_key(self, iova: int) -> None:
        unsorted = self._unsorted
        if iova in unsorted:
            unsorted.remove(iova)
        else:
            self._starts.remove(iova)

    def __iter__(self) -> Iterator[M]:
        """The mappings, by IOVA."""
        by_iova = self._by_iova
        return (by_iova[k] for k in self._sorted())

    def in_order(self) -> tuple[M, ...]:
        """The mappings, by IOVA."""
        by_iova = self._by_iova
        return tuple(by_iova[k] for k in self._sorted())

    def get(self, iova: int) -> M | None:
        """The mapping that starts at ``iova``, if any."""
        return self._by_iova.get(iova)

    def add(self, mapping: M) -> None:
        """Record a new mapping.  One still recorded at its IOVA is gone
        from the kernel (which just mapped the range again): it is marked
        closed."""
        iova = mapping.iova
        stale = self._by_iova.get(iova)
        if stale is None:
            self._unsorted.add(iova)
        elif stale is not mapping:
            stale._mark_closed()
        self._by_iova[iova] = mapping

    def discard(self, mapping: M) -> None:
        """Take ``mapping`` out of the table (if it is there) and mark it
        closed: the kernel has nothing mapped in its range any more."""
        if self._by_iova.get(mapping.iova) is mapping:
            del self._by_iova[mapping.iova]
            self._remove_key(mapping.iova)
        mapping._mark_closed()

    def forget(self, iova: int, length: int, everything: bool = False,
               on_forget: Callable[[int], None] | None = None) -> None:
        """The kernel unmapped ``[iova, iova + length)`` (``everything``:
        the whole space): remove and mark closed the mappings it took,
        calling ``on_forget`` with the IOVA of each."""
        by_iova = self._by_iova
        if everything:
            for start, m in by_iova.items():
                if on_forget is not None:
                    on_forget(start)
                m._mark_closed()
            self.clear()
            return
        exact = by_iova.get(iova)
        if exact is not None and exact.length == length:
            # one mapping, exactly (the common case)
            del by_iova[iova]
            self._remove_key(iova)
            if on_forget is not None:
                on_forget(iova)
            exact._mark_closed()
            return
        last = iova + length - 1
        starts = self._sorted()
        for start in list(starts.irange(iova, last)):
            m = by_iova[start]
            if self.straddling or start + m.length - 1 <= last:
                del by_iova[start]
                starts.remove(start)
                if on_forget is not None:
                    on_forget(start)
                m._mark_closed()

    def mark_all_closed(self) -> None:
        """The kernel dropped every mapping on its own (the container lost
        its IOMMU): mark them closed and empty the table."""
        for m in self._by_iova.values():
            m._mark_closed()
        self.clear()

    def clear(self) -> None:
        """Empty the table (the mappings were closed already)."""
        self._by_iova.clear()
        self._starts.clear()
        self._unsorted.clear()
