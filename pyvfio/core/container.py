"""The legacy VFIO interface's container (``/dev/vfio/vfio``): it holds
IOMMU groups (``/dev/vfio/N``, :mod:`pyvfio.core.group`) and maps process
memory for their devices' DMA through the type1 IOMMU.  A container is an
:class:`~pyvfio.core.address_space.AddressSpace`.

Typical use::

    with Container() as container, Group(26) as group:
        group.set_container(container)
        container.set_iommu(IommuType.TYPE1v2)
        mapping = container.map_dma(buffer, iova=0x100000)
        with group.open_device("0000:00:04.0") as device:
            ...

The container may also be an iommufd (``/dev/iommu``): Linux serves the
container ioctls there too ("vfio compatibility"), see :meth:`Container.compat`.
"""

from __future__ import annotations

import enum
import errno
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, cast

from .._uapi import ffi, lib
from ..backend import Backend, resolve_backend
from ..backend.base import direct_ioctls
from ..errors import ClosedError, InvalidArgumentError, VfioError
from .address_space import IovaMapping, MappingTable
from .caps import (
    Capability,
    DmaAvailCap,
    IovaRange,
    IovaRangeCap,
    MigrationCap,
    parse_chain,
)
from .iova_allocator import IovaAllocator
from ._passed import check_fd, class_device_of, fd_stat, require_chrdev
from .resource import U64_MAX, FdResource, adopting, check_u64, open_node
from .user_buffer import UserBuffer, _user_buffer, user_buffer

if TYPE_CHECKING:
    from .group import Group

__all__ = [
    "IommuType",
    "Extension",
    "IommuInfo",
    "DmaMapping",
    "Container",
    "iommu_types_supported",
]


_MAP_SIZE = ffi.sizeof("struct vfio_iommu_type1_dma_map")
_UNMAP_SIZE = ffi.sizeof("struct vfio_iommu_type1_dma_unmap")
_READ = lib.VFIO_DMA_MAP_FLAG_READ
_WRITE = lib.VFIO_DMA_MAP_FLAG_WRITE
_RW = _READ | _WRITE
_NULL = ffi.NULL
_new_object = object.__new__


class IommuType(enum.IntEnum):
    """IOMMU models for :meth:`Container.set_iommu` (VFIO_SET_IOMMU).

    Thread safety: a constant; safe to share.
    """

    TYPE1 = lib.VFIO_TYPE1_IOMMU
    SPAPR_TCE = lib.VFIO_SPAPR_TCE_IOMMU
    TYPE1v2 = lib.VFIO_TYPE1v2_IOMMU
    SPAPR_TCE_v2 = lib.VFIO_SPAPR_TCE_v2_IOMMU
    NOIOMMU = lib.VFIO_NOIOMMU_IOMMU


class Extension(enum.IntEnum):
    """Everything VFIO_CHECK_EXTENSION can be asked about.

    Thread safety: a constant; safe to share.
    """

    TYPE1 = lib.VFIO_TYPE1_IOMMU
    SPAPR_TCE = lib.VFIO_SPAPR_TCE_IOMMU
    TYPE1v2 = lib.VFIO_TYPE1v2_IOMMU
    DMA_CC = lib.VFIO_DMA_CC_IOMMU
    EEH = lib.VFIO_EEH
    SPAPR_TCE_v2 = lib.VFIO_SPAPR_TCE_v2_IOMMU
    NOIOMMU = lib.VFIO_NOIOMMU_IOMMU
    UNMAP_ALL = lib.VFIO_UNMAP_ALL
    UPDATE_VADDR = lib.VFIO_UPDATE_VADDR


@dataclass(frozen=True)
class IommuInfo:
    """VFIO_IOMMU_GET_INFO for the type1 IOMMU.

    Thread safety: immutable; safe to share between threads.
    """

    flags: int  #: VFIO_IOMMU_INFO_* bits
    #: Bitmap of supported IOMMU page sizes (bytes); the lowest set bit is
    #: the granularity IOVAs and sizes must be aligned to.
    iova_pgsizes: int
    capabilities: tuple[Capability, ...]  #: the decoded capability chain

    @property
    def min_page_size(self) -> int:
        """Smallest supported IOMMU page size in bytes."""
        return self.iova_pgsizes & -self.iova_pgsizes if self.iova_pgsizes else 0

    @property
    def iova_ranges(self) -> tuple[IovaRange, ...]:
        """Usable IOVA ranges (empty when the kernel does not report them)."""
        for cap in self.capabilities:
            if isinstance(cap, IovaRangeCap):
                return cap.ranges
        return ()

    @property
    def migration(self) -> MigrationCap | None:
        """Dirty page logging support, when reported."""
        return next((c for c in self.capabilities if isinstance(c, MigrationCap)), None)

    @property
    def dma_avail(self) -> int | None:
        """How many more DMA mappings the container accepts, when reported."""
        cap = next((c for c in self.capabilities if isinstance(c, DmaAvailCap)), None)
        return cap.avail if cap else None


class DmaMapping(IovaMapping):
    """A type1 DMA mapping made by :meth:`Container.map_dma`.

    Closing it unmaps exactly this range.  The mapped buffer is kept alive
    while the mapping exists.  Its :attr:`length` is in bytes; its
    :attr:`flags` are VFIO_DMA_MAP_FLAG_* bits (READ, WRITE).

    Thread safety: as :class:`~pyvfio.core.address_space.IovaMapping`:
    closing takes the container's lock and does not unmap a range another
    thread's unmap already took; :meth:`Container.update_vaddr` changes
    :attr:`vaddr` under that lock.

    :ivar vaddr: process virtual address backing it
    """

    kind = "DMA mapping"
    __slots__ = ("vaddr",)
    _READ = lib.VFIO_DMA_MAP_FLAG_READ
    _WRITE = lib.VFIO_DMA_MAP_FLAG_WRITE

    def __init__(self, container: Container, iova: int, size: int, vaddr: int,
                 flags: int, owner: Any) -> None:
        IovaMapping.__init__(self, container, iova, size, flags, owner)
        self.vaddr = vaddr  #: process virtual address backing it

    def close(self) -> None:
        """Unmap exactly this range (VFIO_IOMMU_UNMAP_DMA); does nothing
        once closed.  When the unmap fails the mapping stays open, the
        error is raised and ``close()`` may be retried."""
        if self._closed:
            return
        container: Container = self.space  # type: ignore[assignment]
        call = container._unmap_call
        if call is None or container._closed:
            IovaMapping.close(self)
            return
        # IovaMapping.close, _release, Container._unmap(only=self) and
        # MappingTable.forget, inlined: this runs on every unmap
        lock = container._lock
        lock.acquire()  # unmap, forget and free the IOVA as one step
        try:
            table = container._mappings
            by_iova = table._by_iova
            iova = self.iova
            if by_iova.get(iova) is self:  # else another thread's unmap took it
                err = call(container._fd, 0, iova, self.length, _NULL)
                if err:
                    raise container._ioctl_failed(err, "VFIO_IOMMU_UNMAP_DMA")
                del by_iova[iova]
                unsorted = table._unsorted
                if iova in unsorted:
                    unsorted.remove(iova)
                else:
                    table._starts.remove(iova)
                allocator = container._allocator
                if allocator is not None:
                    allocator._free_if_allocated(iova)
            self._closed = True
        finally:
            lock.release()
        if self._buffer is not None:
            self._set_owner(None)
        self._owner = None
        parent = self._parent
        if parent is not None:
            parent._children.pop(id(self), None)
            self._parent = None

    @property
    def container(self) -> Container:
        """The container it is mapped into (its :attr:`space`)."""
        return cast("Container", self.space)

    def describe(self) -> str:
        return f"DMA mapping [{self.iova:#x}, +{self.length:#x}) of {self.space.describe()}"


class Container(FdResource):
    """A VFIO container: ``/dev/vfio/vfio`` (or an iommufd in compat mode).

    An :class:`~pyvfio.core.address_space.AddressSpace` once its IOMMU is
    set (:meth:`set_iommu`).

    Thread safety: safe to use from several threads.  Map and unmap calls
    (:meth:`map`, :meth:`map_dma`, :meth:`unmap_dma`, closing a mapping),
    :meth:`set_iommu` and :meth:`close` take the container's lock, held
    across the ioctl so that the kernel's mappings, :attr:`mappings` and
    :attr:`iova_allocator` always agree (allocate IOVA + map + record;
    unmap + forget + free the IOVA).  A map racing with :meth:`close`
    either completes before it (and is unmapped by it) or raises
    :class:`~pyvfio.errors.ClosedError`.  Queries (:meth:`info`,
    :meth:`check_extension`) take no lock: the kernel serialises them.
    """

    kind = "container"
    kernel_picks_iova: ClassVar[bool] = False  #: type1 maps at the IOVAs it is given
    map_ioctl: ClassVar[str] = "VFIO_IOMMU_MAP_DMA"  #: the map ioctl, for messages
    #: kernel-picked IOVAs are not restricted (type1 picks none)
    allowed_ranges: tuple[IovaRange, ...] = ()
    # The backend's compiled map/unmap calls (None: through backend.ioctl)
    _map_call: Any = None
    _unmap_call: Any = None

    def __init__(self, path: str = "/dev/vfio/vfio", *, backend: Backend | None = None) -> None:
        b = resolve_backend(backend)
        super().__init__(open_node(b, path), b)
        self.path = path
        self._iommu_type: int | None = None
        self._groups: list[Group] = []
        # vfio_dma_do_unmap removes every mapping that starts inside the
        # range, whole: type1v2 refuses (EINVAL) a range that would cut one,
        # type1 (v1) removes one that runs past the range's end too.
        self._mappings: MappingTable[DmaMapping] = MappingTable(straddling=True)
        self._min_page: int | None = None
        self._allocator: IovaAllocator | None = None
        # Guards _mappings, _allocator and _iommu_type together with the
        # kernel state they mirror (re-entered: closing a mapping unmaps).
        self._lock = threading.RLock()
        direct = direct_ioctls(b)
        if direct is not None:
            self._map_call, self._unmap_call = direct.dma_map, direct.dma_unmap

    def describe(self) -> str:
        return f"container {self.path}" + (f" (fd {self._fd})" if self._fd >= 0 else "")

    @classmethod
    def from_fd(cls, fd: int, *, closefd: bool = True, iommu_type: int | None = None,
                backend: Backend | None = None) -> Container:
        """A container opened elsewhere: an fd of ``/dev/vfio/vfio`` (or of
        ``/dev/iommu``, iommufd's vfio compatibility) received from a
        privileged process (:mod:`pyvfio.toolkit.fdpass`) or inherited.
        Checked with fstat: a character device, and the device number of
        one of those nodes when sysfs shows it (InvalidArgumentError,
        ENOTTY, otherwise).  ``iommu_type`` is the IOMMU model the sender
        set (:attr:`iommu_type`; None: not set, or not known).  Groups the
        sender attached are recorded with ``Group.from_fd(...,
        container=)``.

        ``closefd`` says who closes ``fd``: True (the default, as with
        Rust's ``OwnedFd::from_raw_fd`` and :func:`os.fdopen`) gives it to
        the object, which closes it on :meth:`close`; False borrows it:
        closing the object releases what pyvfio made through it and leaves
        ``fd`` open, the caller's to close.  When a check fails, nothing
        is closed and the fd is still the caller's."""
        b = resolve_backend(backend)
        check_fd(fd, "Container.from_fd")
        try:
            kind = None if iommu_type is None else IommuType(iommu_type)
        except ValueError:
            raise InvalidArgumentError(f"{iommu_type!r} is not an IOMMU model (IommuType)",
                                       target=f"fd {fd}") from None
        st = fd_stat(b, fd, "Container.from_fd")
        what = "/dev/vfio/vfio (or /dev/iommu)"
        require_chrdev(st, fd, what)
        found = class_device_of(b, st, fd, what, ("misc",), ("vfio", "iommu"))
        path = "/dev/iommu" if found is not None and found[1] == "iommu" else "/dev/vfio/vfio"
        with adopting(fd):
            obj = cls(path, backend=b)
        obj._iommu_type = None if kind is None else int(kind)
        obj._closefd = closefd
        return obj

    @classmethod
    def compat(cls, *, backend: Backend | None = None) -> Container:
        """A container served by iommufd's vfio compatibility (``/dev/iommu``)."""
        return cls("/dev/iommu", backend=backend)

    # -- queries --------------------------------------------------------------
    @property
    def api_version(self) -> int:
        """VFIO_GET_API_VERSION (``VFIO_API_VERSION`` == 0 on every kernel)."""
        return self._ioctl("VFIO_GET_API_VERSION", lib.VFIO_GET_API_VERSION)

    def check_extension(self, extension: int) -> int:
        """VFIO_CHECK_EXTENSION: non-zero when ``extension`` is supported."""
        return self._ioctl("VFIO_CHECK_EXTENSION", lib.VFIO_CHECK_EXTENSION, int(extension))

    @property
    def extensions(self) -> frozenset[Extension]:
        """Every :class:`Extension` the kernel reports as supported."""
        return frozenset(e for e in Extension if self.check_extension(e))

    @property
    def iommu_type(self) -> IommuType | None:
        """The IOMMU model set with :meth:`set_iommu`, or ``None``."""
        return None if self._iommu_type is None else IommuType(self._iommu_type)

    @property
    def groups(self) -> tuple[Group, ...]:
        """Groups attached to this container through pyvfio."""
        return tuple(self._groups)

    @property
    def mappings(self) -> tuple[DmaMapping, ...]:
        """Live DMA mappings made through this object, by IOVA."""
        with self._lock:  # a consistent snapshot while others map
            return self._mappings.in_order()

    # -- setup ----------------------------------------------------------------
    def set_iommu(self, iommu_type: int = IommuType.TYPE1v2) -> None:
        """VFIO_SET_IOMMU: choose the IOMMU model.  Needs a group attached
        first (the kernel gives EINVAL otherwise)."""
        self._check_open()
        if not self._groups:
            # Checked here because the kernel's EINVAL does not say why.
            raise InvalidArgumentError(
                "attach a group (Group.set_container) before choosing the IOMMU",
                ioctl="VFIO_SET_IOMMU", target=self.describe(),
            )
        with self._lock:
            self._ioctl("VFIO_SET_IOMMU", lib.VFIO_SET_IOMMU, int(iommu_type))
            self._iommu_type = int(iommu_type)
            self._min_page = None

    def info(self) -> IommuInfo:
        """VFIO_IOMMU_GET_INFO with its capability chain."""
        info, raw = self._ioctl_argsz(
            "VFIO_IOMMU_GET_INFO", lib.VFIO_IOMMU_GET_INFO, "struct vfio_iommu_type1_info"
        )
        caps: list[Capability] = []
        if info.flags & lib.VFIO_IOMMU_INFO_CAPS and info.cap_offset:
            caps = parse_chain("iommu", raw, int(info.cap_offset), int(info.argsz))
        return IommuInfo(int(info.flags), int(info.iova_pgsizes), tuple(caps))

    def iova_ranges(self) -> list[IovaRange]:
        """The usable IOVA ranges :meth:`info` reports (set the IOMMU
        first); the whole 64-bit space when it reports none."""
        return list(self.info().iova_ranges) or [IovaRange(0, U64_MAX)]

    @property
    def iova_alignment(self) -> int:
        """The smallest IOMMU page size :meth:`info` reports (the page size
        when it reports none): IOVAs, sizes and buffers are aligned to it."""
        return self.info().min_page_size or self._backend.page_size

    def _page(self) -> int:
        if self._min_page is None:
            try:
                self._min_page = self.info().min_page_size or self._backend.page_size
            except OSError:
                self._min_page = self._backend.page_size
        return self._min_page

    # -- DMA ------------------------------------------------------------------
    def _check_range(self, ioctl: str, iova: int, size: int, vaddr: int | None = None) -> None:
        page = self._min_page
        if (page is not None and type(iova) is int and type(size) is int
                and 0 <= iova and 0 < size and iova + size <= 1 << 64
                and not (iova | size) % page
                and (vaddr is None or (vaddr + size <= 1 << 64 and not vaddr % page))):
            return  # the common case, without building any message
        check_u64("iova", iova, ioctl=ioctl, target=self.describe())
        check_u64("size", size, ioctl=ioctl, target=self.describe())
        if size == 0:
            raise InvalidArgumentError("size must not be zero", ioctl=ioctl, target=self.describe())
        if iova + size - 1 > (1 << 64) - 1:
            raise InvalidArgumentError(
                f"[{iova:#x}, +{size:#x}) wraps past the end of the IOVA space",
                ioctl=ioctl, target=self.describe(), err=errno.EOVERFLOW,
            )
        if vaddr is not None and vaddr + size - 1 > (1 << 64) - 1:
            raise InvalidArgumentError(
                f"vaddr {vaddr:#x} + size {size:#x} wraps past the end of the address space",
                ioctl=ioctl, target=self.describe(), err=errno.EOVERFLOW,
            )
        page = self._page()
        if iova % page or size % page:
            raise InvalidArgumentError(
                f"iova {iova:#x} and size {size:#x} must be multiples of the IOMMU page "
                f"size {page:#x}",
                ioctl=ioctl, target=self.describe(),
            )
        if vaddr is not None and vaddr % page:
            raise InvalidArgumentError(
                f"the buffer's address {vaddr:#x} is not aligned to the IOMMU page size "
                f"{page:#x} (allocate it with pyvfio.DmaBuffer or mmap)",
                ioctl=ioctl, target=self.describe(),
            )

    def map_dma(self, buffer: Any, iova: int, *, readable: bool = True,
                writeable: bool = True) -> DmaMapping:
        """VFIO_IOMMU_MAP_DMA of a whole buffer at ``iova``.

        ``buffer`` is a DMA buffer, a memory map or any buffer-protocol object
        whose memory is page aligned.
        """
        if self._closed:
            raise ClosedError(self.describe())
        vaddr, size, owner, writable = _user_buffer(buffer, "VFIO_IOMMU_MAP_DMA", self)
        call = self._map_call
        page = self._min_page
        if (call is None or page is None or (writeable and not writable)
                or type(iova) is not int):
            # through backend.ioctl, or an argument _map rejects with its message
            return self._map(UserBuffer(vaddr, size, owner, writable), iova, size, readable,
                             writeable)
        # _map's ioctl and record, inlined (the hot path of a driver mapping
        # per I/O); the compiled call checks what _check_range checks
        if readable and writeable:
            flags = _RW
        else:
            flags = (_READ if readable else 0) | (_WRITE if writeable else 0)
        lock = self._lock
        lock.acquire()  # the kernel's mapping and the table's agree
        try:
            if self._closed:
                raise ClosedError(self.describe())
            try:
                err = call(self._fd, flags, vaddr, iova, size, page - 1)
            except OverflowError:
                err = -1  # a value outside its __u64 field
            if err:
                if err < 0:  # refused before the syscall: _map says why
                    return self._map(UserBuffer(vaddr, size, owner, writable), iova, size,
                                     readable, writeable)
                raise self._ioctl_failed(err, "VFIO_IOMMU_MAP_DMA")
            # DmaMapping(...), Resource._adopt and MappingTable.add, inlined
            mapping = _new_object(DmaMapping)
            mapping._closed = False
            mapping.space = self
            mapping.iova = iova
            mapping.length = size
            mapping.flags = flags
            mapping.vaddr = vaddr
            mapping._buffer = None
            mapping._owner = owner
            if type(owner) is not tuple:  # a tuple: a plain buffer
                mapping._set_owner(owner)
            mapping._parent = self
            self._children[id(mapping)] = mapping
            table = self._mappings
            by_iova = table._by_iova
            stale = by_iova.get(iova)
            if stale is None:
                table._unsorted.add(iova)
            else:
                stale._mark_closed()
            by_iova[iova] = mapping
            allocator = self._allocator
            if allocator is not None and not allocator._is_allocated(iova):
                self._claim(allocator, iova, size)
            return mapping
        finally:
            lock.release()

    def map_dma_va(self, vaddr: int, iova: int, size: int, *, readable: bool = True,
                   writeable: bool = True) -> DmaMapping:
        """VFIO_IOMMU_MAP_DMA of ``size`` bytes at process address ``vaddr``."""
        self._check_open()
        check_u64("vaddr", vaddr, ioctl="VFIO_IOMMU_MAP_DMA", target=self.describe())
        return self._map(UserBuffer(vaddr, size, None, True), iova, size, readable, writeable)

    def _map(self, ub: UserBuffer, iova: int, size: int, readable: bool,
             writeable: bool) -> DmaMapping:
        name = "VFIO_IOMMU_MAP_DMA"
        self._check_open()
        self._check_range(name, iova, size, ub.address)
        if writeable and not ub.writable:
            raise InvalidArgumentError("a read-only buffer cannot be mapped writeable",
                                       ioctl=name, target=self.describe())
        flags = (lib.VFIO_DMA_MAP_FLAG_READ if readable else 0) | (
            lib.VFIO_DMA_MAP_FLAG_WRITE if writeable else 0)
        arg = ffi.new("struct vfio_iommu_type1_dma_map *")
        arg.argsz = _MAP_SIZE
        arg.flags = flags
        arg.vaddr = ub.address
        arg.iova = iova
        arg.size = size
        with self._lock:  # the kernel's mapping and the table's agree
            self._ioctl(name, lib.VFIO_IOMMU_MAP_DMA, arg)
            mapping = self._adopt(DmaMapping(self, iova, size, ub.address, flags, ub.owner))
            self._mappings.add(mapping)
            allocator = self._allocator
            if allocator is not None and not allocator._is_allocated(iova):
                self._claim(allocator, iova, size)
        return mapping

    @staticmethod
    def _claim(allocator: IovaAllocator, iova: int, size: int) -> None:
        # A fixed-IOVA mapping: keep the allocator from handing it out.
        try:
            allocator.reserve(iova, size)
        except InvalidArgumentError:
            pass  # outside the usable ranges the allocator knows

    @property
    def iova_allocator(self) -> IovaAllocator:
        """The allocator :meth:`map` picks IOVAs from: the usable ranges of
        :meth:`info` (set the IOMMU first), minus the mappings made so far."""
        with self._lock:
            self._check_open()
            if self._allocator is None:
                allocator = IovaAllocator.for_container(self, skip_mapped=False)
                for m in self._mappings:
                    self._claim(allocator, m.iova, m.length)
                self._allocator = allocator
            return self._allocator

    def map(self, buffer: Any, iova: int | None = None, *, readable: bool = True,
            writeable: bool = True) -> DmaMapping:
        """Map a whole buffer for DMA (VFIO_IOMMU_MAP_DMA) at ``iova`` or,
        with ``None``, at a free IOVA pyvfio picks from
        :attr:`iova_allocator` (type1 has no kernel-chosen IOVAs); the
        returned mapping's ``iova`` is where the device sees the buffer.
        The IOVA is given back when the mapping is closed."""
        if iova is not None:
            return self.map_dma(buffer, iova, readable=readable, writeable=writeable)
        self._check_open()
        ub = user_buffer(buffer, ioctl="VFIO_IOMMU_MAP_DMA", target=self.describe())
        with self._lock:  # allocate, map and record as one step
            allocator = self.iova_allocator
            chosen = allocator.alloc(ub.length, alignment=self._page())
            try:
                return self._map(ub, chosen, ub.length, readable, writeable)
            except BaseException:
                allocator.free(chosen)
                raise

    def _unmap(self, iova: int, size: int, flags: int = 0, bitmap: Any = None, *,
               only: IovaMapping | None = None) -> int:
        arg_size = _UNMAP_SIZE
        if bitmap is not None:
            arg_size += ffi.sizeof("struct vfio_bitmap")
        raw = ffi.new("char[]", arg_size)
        arg = ffi.cast("struct vfio_iommu_type1_dma_unmap *", raw)
        arg.argsz = arg_size
        arg.flags = flags
        arg.iova = iova
        arg.size = size
        if bitmap is not None:
            ffi.memmove(arg.data, bitmap, ffi.sizeof("struct vfio_bitmap"))
        with self._lock:  # unmap, forget and free the IOVAs as one step
            if only is not None and self._mappings.get(iova) is not only:
                return 0  # another thread's unmap took it
            self._ioctl("VFIO_IOMMU_UNMAP_DMA", lib.VFIO_IOMMU_UNMAP_DMA, raw)
            if not flags & lib.VFIO_DMA_UNMAP_FLAG_VADDR:
                self._mappings.forget(iova, size, bool(flags & lib.VFIO_DMA_UNMAP_FLAG_ALL),
                                      self._give_back if self._allocator is not None else None)
        return int(arg.size)

    def unmap_dma(self, iova: int, size: int) -> int:
        """VFIO_IOMMU_UNMAP_DMA of ``[iova, iova + size)``; returns the number
        of bytes unmapped.  Mappings made through pyvfio inside the range are
        closed."""
        name = "VFIO_IOMMU_UNMAP_DMA"
        self._check_open()
        self._check_range(name, iova, size)
        return self._unmap(iova, size, 0)

    def unmap(self, iova: int, length: int) -> int:
        """Same as :meth:`unmap_dma` (the
        :class:`~pyvfio.core.address_space.AddressSpace` name)."""
        return self.unmap_dma(iova, length)

    def unmap_all(self) -> int:
        """VFIO_IOMMU_UNMAP_DMA with VFIO_DMA_UNMAP_FLAG_ALL (needs the
        UNMAP_ALL extension); returns the bytes unmapped."""
        self._check_open()
        return self._unmap(0, 0, lib.VFIO_DMA_UNMAP_FLAG_ALL)

    def unmap_dma_with_dirty(self, iova: int, size: int, page_size: int) -> bytes:
        """Unmap and return the dirty bitmap of the range (one bit per
        ``page_size`` bytes, VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP)."""
        name = "VFIO_IOMMU_UNMAP_DMA"
        self._check_open()
        self._check_range(name, iova, size)
        data, bitmap = _bitmap(size, page_size)
        self._unmap(iova, size, lib.VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP, bitmap)
        return bytes(ffi.buffer(data))

    def invalidate_vaddr(self, iova: int, size: int) -> None:
        """Invalidate the process addresses of mappings in the range
        (VFIO_DMA_UNMAP_FLAG_VADDR); DMA continues, and the kernel blocks
        pinning until :meth:`update_vaddr` supplies the new address."""
        name = "VFIO_IOMMU_UNMAP_DMA"
        self._check_open()
        self._check_range(name, iova, size)
        self._unmap(iova, size, lib.VFIO_DMA_UNMAP_FLAG_VADDR)

    def update_vaddr(self, mapping: DmaMapping, buffer: Any) -> None:
        """Give an invalidated mapping its new process memory
        (VFIO_IOMMU_MAP_DMA with VFIO_DMA_MAP_FLAG_VADDR)."""
        name = "VFIO_IOMMU_MAP_DMA"
        mapping._check_open()
        ub = user_buffer(buffer, ioctl=name, target=self.describe())
        if ub.length < mapping.length:
            raise InvalidArgumentError(
                f"the new buffer ({ub.length:#x} bytes) is smaller than the mapping "
                f"({mapping.length:#x} bytes)", ioctl=name, target=self.describe())
        arg = ffi.new("struct vfio_iommu_type1_dma_map *")
        arg.argsz = ffi.sizeof(arg[0])
        arg.flags = lib.VFIO_DMA_MAP_FLAG_VADDR
        arg.vaddr = ub.address
        arg.iova = mapping.iova
        arg.size = mapping.length
        with self._lock:
            self._ioctl(name, lib.VFIO_IOMMU_MAP_DMA, arg)
            mapping.vaddr = ub.address
            mapping._set_owner(ub.owner)

    # -- dirty page tracking ----------------------------------------------------
    def _dirty(self, flags: int, extra: bytes = b"") -> None:
        size = ffi.sizeof("struct vfio_iommu_type1_dirty_bitmap") + len(extra)
        raw = ffi.new("char[]", size)
        arg = ffi.cast("struct vfio_iommu_type1_dirty_bitmap *", raw)
        arg.argsz = size
        arg.flags = flags
        if extra:
            ffi.memmove(arg.data, extra, len(extra))
        self._ioctl("VFIO_IOMMU_DIRTY_PAGES", lib.VFIO_IOMMU_DIRTY_PAGES, raw)

    def start_dirty_tracking(self) -> None:
        """VFIO_IOMMU_DIRTY_PAGES_FLAG_START."""
        self._dirty(lib.VFIO_IOMMU_DIRTY_PAGES_FLAG_START)

    def stop_dirty_tracking(self) -> None:
        """VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP."""
        self._dirty(lib.VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP)

    def dirty_bitmap(self, iova: int, size: int, page_size: int) -> bytes:
        """VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP: one bit per ``page_size``
        bytes of ``[iova, iova + size)``, least significant bit first."""
        name = "VFIO_IOMMU_DIRTY_PAGES"
        self._check_open()
        self._check_range(name, iova, size)
        data, bitmap = _bitmap(size, page_size)
        get = ffi.new("struct vfio_iommu_type1_dirty_bitmap_get *")
        get.iova = iova
        get.size = size
        get.bitmap = bitmap[0]
        self._dirty(lib.VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP, bytes(ffi.buffer(get)))
        return bytes(ffi.buffer(data))

    def _iommu_released(self) -> None:
        # The last group left: the kernel releases the IOMMU model and with
        # it every DMA mapping (__vfio_group_unset_container).
        with self._lock:
            self._mappings.mark_all_closed()
            self._iommu_type = None
            self._min_page = None
            self._allocator = None

    def _give_back(self, iova: int) -> None:
        # called by MappingTable.forget, under the lock
        if self._allocator is not None:
            self._allocator._free_if_allocated(iova)

    # -- lifetime -----------------------------------------------------------------
    def close(self) -> None:
        """Close the container: every mapping is removed first -- in one
        VFIO_IOMMU_UNMAP_DMA with UNMAP_ALL where the IOMMU has it -- then
        the fd.  Idempotent.  Waits for map and unmap calls of other
        threads in progress; later ones raise :class:`~pyvfio.errors.ClosedError`."""
        with self._lock:
            if not self._closed and self._mappings:
                try:
                    if self.check_extension(lib.VFIO_UNMAP_ALL):
                        self._unmap(0, 0, lib.VFIO_DMA_UNMAP_FLAG_ALL)  # marks them closed
                except VfioError:
                    pass  # closing the mappings one by one below reports it
            super().close()

    def _release(self) -> None:
        # Mappings were closed first (children); groups keep the kernel's
        # container alive until they are unset or closed.
        self._mappings.clear()
        for group in self._groups:
            group._container = None
        self._groups.clear()
        super()._release()


def _bitmap(size: int, page_size: int) -> tuple[Any, Any]:
    if page_size <= 0 or page_size & (page_size - 1):
        raise InvalidArgumentError(f"page size {page_size} is not a power of two")
    pages = -(-size // page_size)
    words = max(-(-pages // 64), 1)
    data = ffi.new("__u64[]", words)
    bitmap = ffi.new("struct vfio_bitmap *")
    bitmap.pgsize = page_size
    bitmap.size = words * 8
    bitmap.data = data
    return data, bitmap


def iommu_types_supported(container: Container) -> list[IommuType]:
    """The IOMMU models the container can be set to, best first."""
    order = [IommuType.TYPE1v2, IommuType.TYPE1, IommuType.SPAPR_TCE_v2,
             IommuType.SPAPR_TCE, IommuType.NOIOMMU]
    return [t for t in order if container.check_extension(t)]

