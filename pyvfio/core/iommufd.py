"""The iommufd interface: ``/dev/iommu`` and the objects it holds.

An :class:`IommuFd` owns kernel objects named by IDs: I/O address spaces
(:class:`IOAS`, here), hardware page tables and fault queues
(:mod:`pyvfio.core.hw_pagetable`), vIOMMUs and their virtual devices and
event queues (:mod:`pyvfio.core.viommu`).  Devices are bound to an iommufd
through their vfio character device (see :meth:`pyvfio.Device.bind`) and
attached to an IOAS or HWPT.  An IOAS is an
:class:`~pyvfio.core.address_space.AddressSpace`.

::

    with IommuFd() as iommufd:
        ioas = iommufd.ioas()
        mapping = ioas.map(buffer)          # the kernel picks the IOVA
        print(hex(mapping.iova))

Longer than 800 lines because :class:`IOAS` lives here with the
:class:`IommuFd` that owns it (its public path, ``pyvfio.core.iommufd.IOAS``,
is what users and the API reference name) and its map and unmap are written
out inline, one Python frame per call, for speed (bench/README.md).
"""

from __future__ import annotations

import enum
import errno
import threading
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, NamedTuple, cast

from .._uapi import ffi, lib
from ..backend import Backend, resolve_backend
from ..backend.base import direct_ioctls
from ..errors import ClosedError, InvalidArgumentError, IoctlError, VfioError
from . import _hints
from .address_space import IovaMapping, MappingTable
from .caps import IovaRange
from .hw_pagetable import HWPT, FaultQueue, HwInfo, HwptDataType
from .iommufd_object import IommufdObject, PageTable, device_id, struct_size, user_data
from ._passed import check_fd, class_device_of, fd_stat, require_chrdev
from .resource import (
    U64_MAX,
    FdResource,
    Resource,
    adopting,
    check_u32,
    check_u64,
    describe,
    open_node,
)
from .user_buffer import UserBuffer, _user_buffer
from .viommu import Viommu

if TYPE_CHECKING:
    from .device import Device

_FIXED = lib.IOMMU_IOAS_MAP_FIXED_IOVA
_READABLE = lib.IOMMU_IOAS_MAP_READABLE
_WRITEABLE = lib.IOMMU_IOAS_MAP_WRITEABLE
_NULL = ffi.NULL
_RW = _READABLE | _WRITEABLE
_FIXED_RW = _FIXED | _RW
_new_object = object.__new__


class _MapFields(NamedTuple):
    """The fields of ``struct iommu_ioas_map`` a failed compiled map passes
    to its error's diagnosis (the ioctl path passes the struct itself)."""

    flags: int
    user_va: int
    length: int
    iova: int

__all__ = [
    "IommuFd",
    "IOAS",
    "IoasMapping",
    "RlimitMode",
]


class RlimitMode(enum.IntEnum):
    """How pinned pages are charged (IOMMU_OPTION_RLIMIT_MODE).

    Thread safety: a constant; safe to share.
    """

    USER = 0  #: per user, against RLIMIT_MEMLOCK (the default)
    MM = 1  #: per process (mm), like vfio type1


class IommuFd(FdResource):
    """An open ``/dev/iommu``.

    Thread safety: safe to use from several threads: allocating and
    destroying objects are single ioctls the kernel serialises, and the
    registry of the objects made through it (closed with it) is changed
    by single dictionary operations, atomic under the GIL.  Do not close
    it while other threads still allocate from it (a new object may miss
    the close; close it after joining them).
    """

    kind = "iommufd"
    family = "iommufd"

    def __init__(self, path: str = "/dev/iommu", *, backend: Backend | None = None) -> None:
        b = resolve_backend(backend)
        super().__init__(open_node(b, path), b)
        self.path = path
        # The live objects by ID: the kernel reuses a destroyed object's ID
        # (an xarray), so an ID names at most one live object.
        self._objects: dict[int, IommufdObject] = {}

    @classmethod
    def from_fd(cls, fd: int, *, closefd: bool = True,
                backend: Backend | None = None) -> IommuFd:
        """An iommufd opened elsewhere: an fd of ``/dev/iommu`` received
        from a privileged process (:mod:`pyvfio.toolkit.fdpass`) or
        inherited.  Checked with fstat: a character device, and
        /dev/iommu's device number when sysfs shows it (InvalidArgumentError,
        ENOTTY, otherwise).

        ``closefd`` says who closes ``fd``: True (the default, as with
        Rust's ``OwnedFd::from_raw_fd`` and :func:`os.fdopen`) gives it to
        the object, which closes it on :meth:`close`; False borrows it:
        closing the object releases what pyvfio made through it and leaves
        ``fd`` open, the caller's to close.  When a check fails, nothing
        is closed and the fd is still the caller's."""
        b = resolve_backend(backend)
        check_fd(fd, "IommuFd.from_fd")
        st = fd_stat(b, fd, "IommuFd.from_fd")
        require_chrdev(st, fd, "/dev/iommu")
        class_device_of(b, st, fd, "/dev/iommu", ("misc",), ("iommu",))
        with adopting(fd):
            obj = cls(backend=b)
        obj._closefd = closefd
        return obj

    def describe(self) -> str:
        return "iommufd" + (f" (fd {self._fd})" if self._fd >= 0 else "")

    def _hint(self, err: int, name: str, arg: Any, target: Any) -> str | None:
        # Only once the map failed: the success path does no extra work.
        if (err == errno.EINVAL and name == "IOMMU_IOAS_MAP" and isinstance(target, IOAS)
                and arg is not None):
            return _hints.ioas_map_einval(target, arg)
        return None

    # -- generic helpers -------------------------------------------------------------
    def _cmd(self, name: str, request: int, ctype: str, target: str | Resource | None = None,
             **fields: int) -> Any:
        self._check_open()
        cmd = ffi.new(ctype + " *")
        cmd.size = struct_size(ctype)
        for key, value in fields.items():
            try:
                setattr(cmd, key, value)
            except (OverflowError, TypeError):
                # e.g. a PASID or vIOMMU ID beyond its __u32 field
                kind = dict(ffi.typeof(cmd[0]).fields)[key].type.cname
                raise InvalidArgumentError(
                    f"{key} {value!r} does not fit its {kind} field", ioctl=name,
                    target=describe(target) if target is not None else self.describe()) from None
        self._ioctl(name, request, cmd, target=target)
        return cmd

    def destroy(self, object_id: int) -> None:
        """IOMMU_DESTROY of a raw object ID (prefer closing the object).

        The ioctl is issued as asked (an object still in use gives EBUSY,
        as from the kernel).  When it succeeds and a pyvfio object owns the
        ID (an :class:`IOAS`, :class:`~pyvfio.core.hw_pagetable.HWPT`,
        :class:`~pyvfio.core.viommu.Viommu`, ...), that object is marked
        closed, its mappings with it, without a second IOMMU_DESTROY: its
        later ``close()`` does nothing, so it cannot destroy another object
        the kernel gives the same ID."""
        check_u32("id", object_id, ioctl="IOMMU_DESTROY", target=self.describe())
        self._cmd("IOMMU_DESTROY", lib.IOMMU_DESTROY, "struct iommu_destroy",
                  target=f"object {object_id} of {self.describe()}", id=object_id)
        owner = self._objects.get(object_id)
        if owner is not None:
            owner._mark_closed()

    def _register(self, obj: IommufdObject) -> None:
        # A live object already holding this ID was destroyed by the kernel
        # without pyvfio knowing (the kernel hands out only free IDs).
        stale = self._objects.get(obj.id)
        if stale is not None and stale is not obj:
            stale._mark_closed()
        self._objects[obj.id] = obj

    def _unregister(self, obj: IommufdObject) -> None:
        if self._objects.get(obj.id) is obj:
            del self._objects[obj.id]

    def _mark_closed(self) -> None:
        super()._mark_closed()
        self._objects.clear()

    def _release(self) -> None:
        super()._release()  # closing the fd destroys every object
        self._objects.clear()

    # -- IOAS ------------------------------------------------------------------------
    def ioas(self) -> IOAS:
        """IOMMU_IOAS_ALLOC: a new, empty I/O address space."""
        cmd = self._cmd("IOMMU_IOAS_ALLOC", lib.IOMMU_IOAS_ALLOC, "struct iommu_ioas_alloc")
        return self._adopt(IOAS(self, int(cmd.out_ioas_id)))

    # -- options ---------------------------------------------------------------------
    def _option(self, option: int, op: int, object_id: int = 0, value: int = 0,
                target: str | None = None) -> int:
        cmd = self._cmd("IOMMU_OPTION", lib.IOMMU_OPTION, "struct iommu_option", target=target,
                        option_id=option, op=op, object_id=object_id, val64=value)
        return int(cmd.val64)

    @property
    def rlimit_mode(self) -> RlimitMode:
        """IOMMU_OPTION_RLIMIT_MODE (global; setting it needs CAP_SYS_RESOURCE)."""
        return RlimitMode(self._option(lib.IOMMU_OPTION_RLIMIT_MODE, lib.IOMMU_OPTION_OP_GET))

    @rlimit_mode.setter
    def rlimit_mode(self, mode: RlimitMode) -> None:
        self._option(lib.IOMMU_OPTION_RLIMIT_MODE, lib.IOMMU_OPTION_OP_SET, value=int(mode))

    # -- hardware info ---------------------------------------------------------------
    def hw_info(self, device: Device | int, data_type: int | None = None) -> HwInfo:
        """IOMMU_GET_HW_INFO for a bound device (a :class:`~pyvfio.Device` or
        its dev_id).  ``data_type`` asks for a specific type
        (IOMMU_HW_INFO_FLAG_INPUT_TYPE)."""
        dev_id = device_id(device)
        size = 256
        for _ in range(4):
            data = ffi.new("char[]", size)
            cmd = ffi.new("struct iommu_hw_info *")
            cmd.size = ffi.sizeof(cmd[0])
            cmd.dev_id = dev_id
            cmd.data_len = size
            cmd.data_uptr = int(ffi.cast("uintptr_t", data))
            if data_type is not None:
                cmd.flags = lib.IOMMU_HW_INFO_FLAG_INPUT_TYPE
                cmd.in_data_type = data_type
            self._ioctl("IOMMU_GET_HW_INFO", lib.IOMMU_GET_HW_INFO, cmd,
                        target=f"dev_id {dev_id} of {self.describe()}")
            if cmd.data_len <= size:
                break
            size = int(cmd.data_len)
        return HwInfo(int(cmd.out_data_type), bytes(ffi.buffer(data, int(cmd.data_len))),
                      int(cmd.out_capabilities), int(cmd.out_max_pasid_log2))

    # -- vfio compatibility ----------------------------------------------------------
    def _vfio_ioas(self, op: int, ioas_id: int = 0) -> int:
        cmd = self._cmd("IOMMU_VFIO_IOAS", lib.IOMMU_VFIO_IOAS, "struct iommu_vfio_ioas",
                        op=op, ioas_id=ioas_id)
        return int(cmd.ioas_id)

    def vfio_ioas_get(self) -> int:
        """IOMMU_VFIO_IOAS_GET: ID of the IOAS the vfio-compat container uses.
        ENODEV until one exists: :meth:`vfio_ioas_set` makes one, and so does
        the first VFIO_GROUP_SET_CONTAINER of a group onto this iommufd."""
        return self._vfio_ioas(lib.IOMMU_VFIO_IOAS_GET)

    def vfio_ioas_set(self, ioas: IOAS) -> None:
        """IOMMU_VFIO_IOAS_SET: make ``ioas`` the vfio-compat IOAS."""
        self._vfio_ioas(lib.IOMMU_VFIO_IOAS_SET, ioas.id)

    def vfio_ioas_clear(self) -> None:
        """IOMMU_VFIO_IOAS_CLEAR: forget the vfio-compat IOAS."""
        self._vfio_ioas(lib.IOMMU_VFIO_IOAS_CLEAR)

    def change_process(self) -> None:
        """IOMMU_IOAS_CHANGE_PROCESS: move pinned-page accounting and file-less
        mappings to the calling process (after fork/exec handover)."""
        self._cmd("IOMMU_IOAS_CHANGE_PROCESS", lib.IOMMU_IOAS_CHANGE_PROCESS,
                  "struct iommu_ioas_change_process")

    # -- HWPT and friends --------------------------------------------------------------
    def hwpt_alloc(
        self,
        device: Device | int,
        parent: IOAS | HWPT | Viommu,
        *,
        nest_parent: bool = False,
        dirty_tracking: bool = False,
        pasid: bool = False,
        fault: FaultQueue | None = None,
        data_type: int = HwptDataType.NONE,
        data: bytes = b"",
    ) -> HWPT:
        """IOMMU_HWPT_ALLOC: a page table for ``device``'s IOMMU.

        ``parent`` is an IOAS (a paging HWPT), or a nesting parent HWPT or a
        vIOMMU (a nested HWPT described by ``data_type``/``data``)."""
        self._check_open()
        flags = ((lib.IOMMU_HWPT_ALLOC_NEST_PARENT if nest_parent else 0)
                 | (lib.IOMMU_HWPT_ALLOC_DIRTY_TRACKING if dirty_tracking else 0)
                 | (lib.IOMMU_HWPT_ALLOC_PASID if pasid else 0)
                 | (lib.IOMMU_HWPT_FAULT_ID_VALID if fault is not None else 0))
        buf = user_data(data)
        cmd = self._cmd(
            "IOMMU_HWPT_ALLOC", lib.IOMMU_HWPT_ALLOC, "struct iommu_hwpt_alloc",
            flags=flags, dev_id=device_id(device), pt_id=parent.id, data_type=int(data_type),
            data_len=len(data), data_uptr=int(ffi.cast("uintptr_t", buf)),
            fault_id=fault.id if fault is not None else 0,
        )
        hwpt = HWPT(self, int(cmd.out_hwpt_id), parent, flags)
        hwpt.fault = fault
        hwpt.data = bytes(ffi.buffer(buf, len(data))) if data else b""
        # The HWPT keeps its parent (IOAS, nesting parent or vIOMMU) and its
        # fault queue busy: closing either destroys the HWPT first.
        parent._dependents[id(hwpt)] = hwpt
        if fault is not None:
            fault._dependents[id(hwpt)] = hwpt
        return self._adopt(hwpt)

    def fault_queue(self) -> FaultQueue:
        """IOMMU_FAULT_QUEUE_ALLOC: a queue of I/O page faults (with its fd)."""
        cmd = self._cmd("IOMMU_FAULT_QUEUE_ALLOC", lib.IOMMU_FAULT_QUEUE_ALLOC,
                        "struct iommu_fault_alloc")
        return self._adopt(FaultQueue(self, int(cmd.out_fault_id), int(cmd.out_fault_fd)))

    def viommu_alloc(self, device: Device | int, hwpt: HWPT, viommu_type: int,
                     data: bytes = b"") -> Viommu:
        """IOMMU_VIOMMU_ALLOC over a nesting-parent ``hwpt``."""
        buf = user_data(data)
        cmd = self._cmd("IOMMU_VIOMMU_ALLOC", lib.IOMMU_VIOMMU_ALLOC, "struct iommu_viommu_alloc",
                        type=viommu_type, dev_id=device_id(device), hwpt_id=hwpt.id,
                        data_len=len(data), data_uptr=int(ffi.cast("uintptr_t", buf)))
        viommu = Viommu(self, int(cmd.out_viommu_id), hwpt)
        viommu.data = bytes(ffi.buffer(buf, len(data))) if data else b""
        return self._adopt(viommu)

    def _object_destroy(self, obj: IommufdObject) -> None:
        if self.closed:
            return  # closing the iommufd destroyed everything
        self._cmd("IOMMU_DESTROY", lib.IOMMU_DESTROY, "struct iommu_destroy",
                  target=obj.describe(), id=obj.id)
        self._unregister(obj)


class IoasMapping(IovaMapping):
    """One area mapped into an IOAS (by map, map_file or copy); its
    :attr:`flags` are IOMMU_IOAS_MAP_* bits.

    Thread safety: as :class:`~pyvfio.core.address_space.IovaMapping`:
    closing takes the IOAS's lock and does not unmap a range another
    thread's unmap already took.
    """

    kind = "IOAS mapping"
    __slots__ = ()
    _READ = lib.IOMMU_IOAS_MAP_READABLE
    _WRITE = lib.IOMMU_IOAS_MAP_WRITEABLE

    @property
    def ioas(self) -> IOAS:
        """The IOAS it is mapped into (its :attr:`space`)."""
        return cast("IOAS", self.space)

    def close(self) -> None:
        """Unmap exactly this range (IOMMU_IOAS_UNMAP); does nothing once
        closed.  When the unmap fails the mapping stays open, the error is
        raised and ``close()`` may be retried."""
        if self._closed:
            return
        ioas: IOAS = self.space  # type: ignore[assignment]
        call = ioas._unmap_call
        if call is None or ioas._closed:
            IovaMapping.close(self)
            return
        # IovaMapping.close, _release, IOAS._unmap(only=self) and
        # MappingTable.forget, inlined: this runs on every unmap
        lock = ioas._lock
        lock.acquire()  # unmap and forget as one step
        try:
            table = ioas._mappings
            by_iova = table._by_iova
            iova = self.iova
            if by_iova.get(iova) is self:  # else another thread's unmap took it
                iommufd = ioas.iommufd
                if iommufd._closed:
                    raise ClosedError(iommufd.describe())
                err = call(iommufd._fd, ioas.id, iova, self.length, _NULL)
                # ENOENT: nothing is mapped in exactly this range any more
                # (see _release): the mapping is closed all the same
                if err and err != errno.ENOENT:
                    raise iommufd._ioctl_failed(err, "IOMMU_IOAS_UNMAP", ioas)
                del by_iova[iova]
                unsorted = table._unsorted
                if iova in unsorted:
                    unsorted.remove(iova)
                else:
                    table._starts.remove(iova)
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

    def _release(self) -> None:
        ioas = self.ioas
        if not ioas._closed:
            try:
                # only while still in the table (see IovaMapping._release)
                ioas._unmap(self.iova, self.length, only=self)
            except IoctlError as exc:
                # ENOENT: nothing is mapped in exactly this range any more (an
                # earlier unmap did it but its answer could not be copied out,
                # or another handle on the IOAS unmapped it): it is closed.
                if exc.errno != errno.ENOENT:
                    raise
                ioas._mappings.discard(self)
        if self._owner is not None:
            self._set_owner(None)


class IOAS(PageTable):
    """An I/O address space: IOVA -> process memory mappings.  An
    :class:`~pyvfio.core.address_space.AddressSpace`.

    Thread safety: safe to use from several threads.  The map calls
    (:meth:`map`, :meth:`map_va`, :meth:`map_file`, :meth:`copy`), the
    unmaps (closing a mapping too) and :meth:`close` take the IOAS's lock
    across the ioctl and the update of :attr:`mappings`, so that a mapping
    whose IOVA the kernel picked is recorded before another thread's unmap
    can see the table.  For IOVAs the driver picks, share one
    :class:`~pyvfio.IovaAllocator` (itself thread safe).  A map racing
    with :meth:`close` completes before it or raises
    :class:`~pyvfio.errors.ClosedError`.
    """

    kind = "IOAS"
    kernel_picks_iova: ClassVar[bool] = True  #: ``map(buffer)`` lets the kernel choose the IOVA
    map_ioctl: ClassVar[str] = "IOMMU_IOAS_MAP"  #: the map ioctl, for messages
    # The backend's compiled map/unmap calls (None: through backend.ioctl)
    _map_call: Any = None
    _unmap_call: Any = None

    def __init__(self, iommufd: IommuFd, ioas_id: int) -> None:
        super().__init__(iommufd, ioas_id)
        # iopt_unmap_iova_range removes only areas wholly inside the range
        self._mappings: MappingTable[IoasMapping] = MappingTable()
        # Guards _mappings with the kernel's mappings it mirrors
        # (re-entered: closing a mapping unmaps).
        self._lock = threading.RLock()
        #: the ranges of the last :meth:`allow_iovas` through this object
        #: (empty: every IOVA is allowed)
        self.allowed_ranges: tuple[IovaRange, ...] = ()
        direct = direct_ioctls(self._backend)
        if direct is not None:
            self._map_call, self._unmap_call = direct.ioas_map, direct.ioas_unmap

    @property
    def mappings(self) -> tuple[IoasMapping, ...]:
        """Live mappings made through this object, by IOVA."""
        with self._lock:  # a consistent snapshot while others map
            return self._mappings.in_order()

    # -- mapping -----------------------------------------------------------------------
    def _flags(self, iova: int | None, readable: bool, writeable: bool) -> int:
        return ((lib.IOMMU_IOAS_MAP_FIXED_IOVA if iova is not None else 0)
                | (lib.IOMMU_IOAS_MAP_READABLE if readable else 0)
                | (lib.IOMMU_IOAS_MAP_WRITEABLE if writeable else 0))

    def _check_area(self, name: str, iova: int | None, length: int) -> None:
        if (type(length) is int and 0 < length <= U64_MAX
                and (iova is None or (type(iova) is int and 0 <= iova <= U64_MAX - length + 1))):
            return  # the common case, without building any message
        check_u64("length", length, ioctl=name, target=self.describe())
        if length == 0:
            raise InvalidArgumentError("length must not be zero", ioctl=name,
                                       target=self.describe())
        if iova is not None:
            check_u64("iova", iova, ioctl=name, target=self.describe())
            if iova + length - 1 > U64_MAX:
                raise InvalidArgumentError(
                    f"[{iova:#x}, +{length:#x}) wraps past the end of the IOVA space",
                    ioctl=name, target=self.describe(), err=errno.EOVERFLOW)

    def map(self, buffer: Any, iova: int | None = None, *, readable: bool = True,
            writeable: bool = True) -> IoasMapping:
        """IOMMU_IOAS_MAP of a whole buffer.  With ``iova=None`` the kernel
        chooses the IOVA (see the returned mapping's ``iova``).

        When the kernel mapped the buffer but could not copy the result
        out (EFAULT), the mapping stays in the kernel: at a given IOVA
        pyvfio unmaps that range again before raising, and if that fails
        too the error has ``iova_still_mapped = True``."""
        if self._closed:
            raise ClosedError(self.describe())
        address, length, owner, writable = _user_buffer(buffer, "IOMMU_IOAS_MAP", self)
        call = self._map_call
        if (call is None or (writeable and not writable)
                or (iova is not None and type(iova) is not int)):
            # through backend.ioctl, or an argument _map rejects with its message
            return self._map((address, length, owner, writable), length, iova, readable,
                             writeable)
        # _map's ioctl and record, inlined (the hot path of a driver mapping per I/O);
        # the compiled call checks what _map checks (see DirectIoctls)
        if readable and writeable:
            flags = _FIXED_RW if iova is not None else _RW
        else:
            flags = ((_FIXED if iova is not None else 0) | (_READABLE if readable else 0)
                     | (_WRITEABLE if writeable else 0))
        lock = self._lock
        lock.acquire()  # map and record as one step (cheaper than a with-block)
        try:
            if self._closed:
                raise ClosedError(self.describe())
            iommufd = self.iommufd
            if iommufd._closed:
                raise ClosedError(iommufd.describe())
            out = _NULL if iova is not None else ffi.new("uint64_t *")
            try:
                err = call(iommufd._fd, self.id, flags, address, length, iova or 0, out)
            except OverflowError:
                err = -1  # a value outside its __u64 field
            if err:
                if err < 0:  # refused before the syscall: _map says why
                    return self._map((address, length, owner, writable), length, iova,
                                     readable, writeable)
                # the map's fields, for the diagnosis of the failure (_hints)
                fields = _MapFields(flags, address, length, iova or 0)
                exc = iommufd._ioctl_failed(err, "IOMMU_IOAS_MAP", self, arg=fields)
                try:
                    self._undo_failed_map(exc, iova, length)
                    raise exc
                finally:
                    del exc  # no frame <-> traceback cycle keeping the buffer
            if iova is None:
                iova = int(out[0])
            # IoasMapping(...), Resource._adopt and MappingTable.add, inlined
            mapping = _new_object(IoasMapping)
            mapping._closed = False
            mapping.space = self
            mapping.iova = iova
            mapping.length = length
            mapping.flags = flags
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
            return mapping
        finally:
            lock.release()

    def map_va(self, user_va: int, length: int, iova: int | None = None, *,
               readable: bool = True, writeable: bool = True) -> IoasMapping:
        """IOMMU_IOAS_MAP of ``length`` bytes at process address ``user_va``."""
        self._check_open()
        check_u64("user_va", user_va, ioctl="IOMMU_IOAS_MAP", target=self.describe())
        return self._map(UserBuffer(user_va, length, None, True), length, iova, readable,
                          writeable)

    def _map(self, ub: tuple[int, int, Any, bool], length: int, iova: int | None,
             readable: bool, writeable: bool) -> IoasMapping:
        """Map ``length`` bytes of ``ub`` (a :class:`UserBuffer` or the same
        plain tuple) and record the mapping."""
        name = "IOMMU_IOAS_MAP"
        address, _n, owner, writable = ub
        if self._closed:
            raise ClosedError(self.describe())
        self._check_area(name, iova, length)
        if address + length - 1 > U64_MAX:
            raise InvalidArgumentError(
                f"user_va {address:#x} + length {length:#x} wraps past the end of the "
                "address space", ioctl=name, target=self.describe(), err=errno.EOVERFLOW)
        if writeable and not writable:
            raise InvalidArgumentError("a read-only buffer cannot be mapped writeable",
                                       ioctl=name, target=self.describe())
        flags = ((_FIXED if iova is not None else 0) | (_READABLE if readable else 0)
                 | (_WRITEABLE if writeable else 0))
        cmd = ffi.new("struct iommu_ioas_map *")
        cmd.size = struct_size("struct iommu_ioas_map")
        cmd.flags = flags
        cmd.ioas_id = self.id
        cmd.user_va = address
        cmd.length = length
        cmd.iova = iova or 0
        with self._lock:  # map and record as one step
            if self._closed:
                raise ClosedError(self.describe())
            try:
                self.iommufd._ioctl(name, lib.IOMMU_IOAS_MAP, cmd, target=self)
            except VfioError as exc:
                self._undo_failed_map(exc, iova, length)
                raise
            return self._track(int(cmd.iova), length, flags, owner)

    def _undo_failed_map(self, exc: VfioError, iova: int | None, length: int) -> None:
        """A map, map_file or copy failed with EFAULT: the kernel may have
        mapped the range and then failed to copy the result out
        (iommufd_ucmd_respond), keeping the mapping.  At a known IOVA,
        unmap the range best-effort (unless a mapping pyvfio tracks
        overlaps it: then the kernel mapped nothing); when that fails, the
        error is marked ``iova_still_mapped`` so that no allocator hands
        the IOVA out again.  A kernel-chosen IOVA is unknown: the mapping
        stays until the IOAS is destroyed."""
        if exc.errno != errno.EFAULT or iova is None or self.iommufd.closed:
            return
        if any(m.overlaps(iova, length) for m in self._mappings):
            return
        cmd = ffi.new("struct iommu_ioas_unmap *")
        cmd.size = struct_size("struct iommu_ioas_unmap")
        cmd.ioas_id = self.id
        cmd.iova = iova
        cmd.length = length
        try:
            self.iommufd._ioctl("IOMMU_IOAS_UNMAP", lib.IOMMU_IOAS_UNMAP, cmd, target=self)
        except VfioError as undo:
            if undo.errno != errno.ENOENT:  # ENOENT: nothing was mapped there
                setattr(exc, "iova_still_mapped", True)

    def map_file(self, fd: int, length: int, start: int = 0, iova: int | None = None, *,
                 readable: bool = True, writeable: bool = True) -> IoasMapping:
        """IOMMU_IOAS_MAP_FILE: map ``length`` bytes of a memfd (or other
        mappable file) from byte ``start``."""
        name = "IOMMU_IOAS_MAP_FILE"
        self._check_open()
        self._check_area(name, iova, length)
        check_u64("start", start, ioctl=name, target=self.describe())
        flags = self._flags(iova, readable, writeable)
        with self._lock:
            self._check_open()
            try:
                cmd = self.iommufd._cmd(name, lib.IOMMU_IOAS_MAP_FILE, "struct iommu_ioas_map_file",
                                        target=self.describe(), flags=flags, ioas_id=self.id,
                                        fd=fd, start=start, length=length, iova=iova or 0)
            except VfioError as exc:
                self._undo_failed_map(exc, iova, length)
                raise
            return self._track(int(cmd.iova), length, flags, fd)

    def copy(self, source: IoasMapping | tuple[IOAS, int, int], iova: int | None = None, *,
             readable: bool = True, writeable: bool = True) -> IoasMapping:
        """IOMMU_IOAS_COPY: map here the pages already mapped at a source
        range (a mapping, or ``(ioas, iova, length)``), without pinning them
        again."""
        name = "IOMMU_IOAS_COPY"
        self._check_open()
        if isinstance(source, IoasMapping):
            source._check_open()
            src_ioas, src_iova, length = source.ioas, source.iova, source.length
        else:
            src_ioas, src_iova, length = source
        src_ioas._check_open()
        self._check_area(name, iova, length)
        check_u64("src_iova", src_iova, ioctl=name, target=self.describe())
        flags = self._flags(iova, readable, writeable)
        with self._lock:
            self._check_open()
            try:
                cmd = self.iommufd._cmd(name, lib.IOMMU_IOAS_COPY, "struct iommu_ioas_copy",
                                        target=self.describe(), flags=flags, dst_ioas_id=self.id,
                                        src_ioas_id=src_ioas.id, length=length,
                                        dst_iova=iova or 0, src_iova=src_iova)
            except VfioError as exc:
                self._undo_failed_map(exc, iova, length)
                raise
            return self._track(int(cmd.dst_iova), length, flags, source)

    def _track(self, iova: int, length: int, flags: int, owner: Any) -> IoasMapping:
        mapping = self._adopt(IoasMapping(self, iova, length, flags, owner))
        self._mappings.add(mapping)
        return mapping

    def _unmap(self, iova: int, length: int, *, only: IovaMapping | None = None) -> int:
        cmd = ffi.new("struct iommu_ioas_unmap *")
        cmd.size = struct_size("struct iommu_ioas_unmap")
        cmd.ioas_id = self.id
        cmd.iova = iova
        cmd.length = length
        with self._lock:  # unmap and forget as one step
            if only is not None and self._mappings.get(iova) is not only:
                return 0  # another thread's unmap took it
            self.iommufd._ioctl("IOMMU_IOAS_UNMAP", lib.IOMMU_IOAS_UNMAP, cmd, target=self)
            # iova 0 with length U64_MAX means "everything" (iopt_unmap_all),
            # including an area that ends at the last IOVA.
            self._mappings.forget(iova, length, iova == 0 and length == U64_MAX)
        return int(cmd.length)

    def close(self) -> None:
        """Destroy the IOAS: devices are detached, HWPTs built on it
        destroyed and every mapping removed in one IOMMU_IOAS_UNMAP, then
        the object itself (IOMMU_DESTROY).  Idempotent.  Waits for map
        and unmap calls of other threads in progress; later ones raise
        :class:`~pyvfio.errors.ClosedError`."""
        with self._lock:
            self._close()

    def _close(self) -> None:
        if not self._closed and not self.iommufd.closed:
            try:
                self._detach_all()
                self._destroy_dependents()
                if self._mappings:
                    self._unmap(0, U64_MAX)  # marks every mapping closed
            except VfioError:
                pass  # closing the children one by one below reports it
        super().close()

    def unmap(self, iova: int, length: int) -> int:
        """IOMMU_IOAS_UNMAP of ``[iova, iova + length)``: every mapping in
        the range must lie wholly inside it.  Returns the bytes unmapped."""
        name = "IOMMU_IOAS_UNMAP"
        self._check_open()
        self._check_area(name, iova, length)
        return self._unmap(iova, length)

    def unmap_all(self) -> int:
        """Unmap everything (iova 0, length U64_MAX); returns the bytes unmapped."""
        self._check_open()
        return self._unmap(0, U64_MAX)

    # -- ranges ------------------------------------------------------------------------
    def _ranges(self) -> tuple[list[IovaRange], int]:
        count = 8
        while True:
            array = ffi.new("struct iommu_iova_range[]", count)
            cmd = ffi.new("struct iommu_ioas_iova_ranges *")
            cmd.size = ffi.sizeof(cmd[0])
            cmd.ioas_id = self.id
            cmd.num_iovas = count
            cmd.allowed_iovas = int(ffi.cast("uintptr_t", array))
            try:
                self.iommufd._ioctl("IOMMU_IOAS_IOVA_RANGES", lib.IOMMU_IOAS_IOVA_RANGES, cmd,
                                    target=self.describe())
            except IoctlError as exc:
                # EMSGSIZE: the array was too small; num_iovas says how many.
                if exc.errno == errno.EMSGSIZE and cmd.num_iovas > count:
                    count = int(cmd.num_iovas)
                    continue
                raise
            n = int(cmd.num_iovas)
            return ([IovaRange(int(r.start), int(r.last)) for r in array[0:n]],
                    int(cmd.out_iova_alignment))

    def iova_ranges(self) -> list[IovaRange]:
        """IOMMU_IOAS_IOVA_RANGES: the IOVA ranges that may be mapped now
        (narrowed by attached devices' reserved regions and apertures)."""
        self._check_open()
        return self._ranges()[0]

    @property
    def iova_alignment(self) -> int:
        """Minimum IOVA alignment in bytes (``out_iova_alignment``)."""
        self._check_open()
        return self._ranges()[1]

    def allow_iovas(self, ranges: Iterable[IovaRange | tuple[int, int]]) -> None:
        """IOMMU_IOAS_ALLOW_IOVAS: restrict kernel-chosen IOVAs to these
        inclusive ``(start, last)`` ranges (an empty list allows everything)."""
        name = "IOMMU_IOAS_ALLOW_IOVAS"
        self._check_open()
        items: list[tuple[int, int]] = []
        for r in ranges:
            start, last = (r.start, r.last) if isinstance(r, IovaRange) else r
            check_u64("start", start, ioctl=name, target=self.describe())
            check_u64("last", last, ioctl=name, target=self.describe())
            if start > last:
                raise InvalidArgumentError(f"range [{start:#x}, {last:#x}] ends before it starts",
                                           ioctl=name, target=self.describe())
            items.append((start, last))
        array = ffi.new("struct iommu_iova_range[]", max(len(items), 1))
        for i, (start, last) in enumerate(items):
            array[i].start = start
            array[i].last = last
        self.iommufd._cmd(name, lib.IOMMU_IOAS_ALLOW_IOVAS, "struct iommu_ioas_allow_iovas",
                          target=self.describe(), ioas_id=self.id, num_iovas=len(items),
                          allowed_iovas=int(ffi.cast("uintptr_t", array)))
        self.allowed_ranges = tuple(IovaRange(start, last) for start, last in items)

    # -- options -------------------------------------------------------------------------
    @property
    def huge_pages(self) -> bool:
        """IOMMU_OPTION_HUGE_PAGES for this IOAS (default on)."""
        self._check_open()
        return bool(self.iommufd._option(lib.IOMMU_OPTION_HUGE_PAGES, lib.IOMMU_OPTION_OP_GET,
                                         self.id, target=self.describe()))

    @huge_pages.setter
    def huge_pages(self, enabled: bool) -> None:
        self._check_open()
        self.iommufd._option(lib.IOMMU_OPTION_HUGE_PAGES, lib.IOMMU_OPTION_OP_SET, self.id,
                             int(bool(enabled)), target=self.describe())

    def noiommu_get_pa(self, iova: int, length: int) -> tuple[int, int]:
        """IOMMU_IOAS_NOIOMMU_GET_PA (no-IOMMU mode only): the physical
        address behind ``iova`` and how many bytes from it are contiguous."""
        name = "IOMMU_IOAS_NOIOMMU_GET_PA"
        self._check_open()
        self._check_area(name, iova, length)
        cmd = self.iommufd._cmd(name, lib.IOMMU_IOAS_NOIOMMU_GET_PA,
                                "struct iommu_ioas_noiommu_get_pa", target=self.describe(),
                                ioas_id=self.id, iova=iova, length=length)
        return int(cmd.out_phys), int(cmd.length)

    # -- lifetime ---------------------------------------------------------------------------
    def _release(self) -> None:
        # Devices still attached would keep the IOAS busy (EBUSY): detach
        # them first, then drop every mapping in one call, then destroy.
        self._detach_all()
        self._destroy_dependents()
        if not self.iommufd.closed:
            if self._mappings:
                self._unmap(0, U64_MAX)
            super()._release()

    def _mark_closed(self) -> None:
        # Destroyed by the kernel: its mappings went with it.
        self._mappings.mark_all_closed()
        super()._mark_closed()
