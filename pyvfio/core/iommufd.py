"""The iommufd interface: ``/dev/iommu`` and the objects it holds.

An :class:`IommuFd` owns kernel objects named by IDs: I/O address spaces
(:class:`IOAS`), hardware page tables (:class:`HWPT`), fault queues,
vIOMMUs and their virtual devices and event queues.  Devices are bound to
an iommufd through their vfio character device (see
:meth:`pyvfio.Device.bind`) and attached to an IOAS or HWPT.

::

    with IommuFd() as iommufd:
        ioas = iommufd.ioas()
        mapping = ioas.map(buffer)          # the kernel picks the IOVA
        print(hex(mapping.iova))
"""

from __future__ import annotations

import enum
import errno
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence, TypeVar

from .._sorted import SortedKeys
from .._uapi import ffi, lib
from ..backend import Backend, resolve_backend
from ..errors import InvalidArgumentError, IoctlError, VfioError, ioctl_error
from .caps import IovaRange
from .resource import (
    U64_MAX,
    FdResource,
    Resource,
    check_u32,
    check_u64,
    describe,
    open_node,
)
from .user_buffer import UserBuffer, user_buffer

if TYPE_CHECKING:
    from .device import Device

_T = TypeVar("_T")

__all__ = [
    "IommuFd",
    "IOAS",
    "IoasMapping",
    "HWPT",
    "FaultQueue",
    "Viommu",
    "Vdevice",
    "Veventq",
    "HwQueue",
    "HwInfo",
    "HwInfoType",
    "HwptDataType",
    "RlimitMode",
]

_MAP_FLAGS = (lib.IOMMU_IOAS_MAP_FIXED_IOVA | lib.IOMMU_IOAS_MAP_WRITEABLE
              | lib.IOMMU_IOAS_MAP_READABLE)


class HwInfoType(enum.IntEnum):
    """``out_data_type`` of IOMMU_GET_HW_INFO."""

    NONE = lib.IOMMU_HW_INFO_TYPE_NONE
    INTEL_VTD = lib.IOMMU_HW_INFO_TYPE_INTEL_VTD
    ARM_SMMUV3 = lib.IOMMU_HW_INFO_TYPE_ARM_SMMUV3
    TEGRA241_CMDQV = lib.IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV
    AMD = lib.IOMMU_HW_INFO_TYPE_AMD


class HwptDataType(enum.IntEnum):
    """``data_type`` of IOMMU_HWPT_ALLOC / IOMMU_HWPT_INVALIDATE."""

    NONE = lib.IOMMU_HWPT_DATA_NONE
    VTD_S1 = lib.IOMMU_HWPT_DATA_VTD_S1
    ARM_SMMUV3 = lib.IOMMU_HWPT_DATA_ARM_SMMUV3
    AMD_GUEST = lib.IOMMU_HWPT_DATA_AMD_GUEST


class RlimitMode(enum.IntEnum):
    """How pinned pages are charged (IOMMU_OPTION_RLIMIT_MODE)."""

    USER = 0  #: per user, against RLIMIT_MEMLOCK (the default)
    MM = 1  #: per process (mm), like vfio type1


@dataclass(frozen=True)
class HwInfo:
    """IOMMU_GET_HW_INFO: what the IOMMU behind a device can do."""

    type: int  #: an :class:`HwInfoType` value
    data: bytes  #: the type-specific structure, as the kernel filled it
    capabilities: int  #: IOMMU_HW_CAP_* bits
    max_pasid_log2: int  #: PASID width in bits (0: no PASID support)

    @property
    def dirty_tracking(self) -> bool:
        """The IOMMU can track pages written by DMA."""
        return bool(self.capabilities & lib.IOMMU_HW_CAP_DIRTY_TRACKING)

    def decoded(self) -> dict[str, int | list[int]]:
        """The type-specific structure as a dict of its fields."""
        ctypes: dict[int, str] = {
            HwInfoType.INTEL_VTD: "struct iommu_hw_info_vtd",
            HwInfoType.ARM_SMMUV3: "struct iommu_hw_info_arm_smmuv3",
            HwInfoType.TEGRA241_CMDQV: "struct iommu_hw_info_tegra241_cmdqv",
            HwInfoType.AMD: "struct iommu_hw_info_amd",
        }
        ctype = ctypes.get(self.type)
        if ctype is None:
            return {}
        raw = ffi.new("char[]", max(ffi.sizeof(ctype), len(self.data)))
        ffi.memmove(raw, self.data, len(self.data))
        struct = ffi.cast(ctype + " *", raw)
        out: dict[str, int | list[int]] = {}
        for name, fld in ffi.typeof(struct[0]).fields:
            value = getattr(struct, name)
            if fld.type.kind == "array":
                out[name] = [int(v) for v in value]
            else:
                out[name] = int(value)
        return out


class IommuFd(FdResource):
    """An open ``/dev/iommu``."""

    kind = "iommufd"
    family = "iommufd"

    def __init__(self, path: str = "/dev/iommu", *, backend: Backend | None = None) -> None:
        b = resolve_backend(backend)
        super().__init__(open_node(b, path), b)
        self.path = path

    def describe(self) -> str:
        return "iommufd" + (f" (fd {self._fd})" if self._fd >= 0 else "")

    # -- generic helpers -------------------------------------------------------------
    def _cmd(self, name: str, request: int, ctype: str, target: str | Resource | None = None,
             **fields: int) -> Any:
        self._check_open()
        cmd = ffi.new(ctype + " *")
        cmd.size = _sizeof(ctype)
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
        """IOMMU_DESTROY of a raw object ID (prefer closing the object)."""
        check_u32("id", object_id, ioctl="IOMMU_DESTROY", target=self.describe())
        self._cmd("IOMMU_DESTROY", lib.IOMMU_DESTROY, "struct iommu_destroy",
                  target=f"object {object_id} of {self.describe()}", id=object_id)

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
        dev_id = _dev_id(device)
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
        buf = _user_data(data)
        cmd = self._cmd(
            "IOMMU_HWPT_ALLOC", lib.IOMMU_HWPT_ALLOC, "struct iommu_hwpt_alloc",
            flags=flags, dev_id=_dev_id(device), pt_id=parent.id, data_type=int(data_type),
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
        buf = _user_data(data)
        cmd = self._cmd("IOMMU_VIOMMU_ALLOC", lib.IOMMU_VIOMMU_ALLOC, "struct iommu_viommu_alloc",
                        type=viommu_type, dev_id=_dev_id(device), hwpt_id=hwpt.id,
                        data_len=len(data), data_uptr=int(ffi.cast("uintptr_t", buf)))
        viommu = Viommu(self, int(cmd.out_viommu_id), hwpt)
        viommu.data = bytes(ffi.buffer(buf, len(data))) if data else b""
        return self._adopt(viommu)

    def _object_destroy(self, obj: IommufdObject) -> None:
        if self.closed:
            return  # closing the iommufd destroyed everything
        self._cmd("IOMMU_DESTROY", lib.IOMMU_DESTROY, "struct iommu_destroy",
                  target=obj.describe(), id=obj.id)


@functools.lru_cache(maxsize=None)
def _sizeof(ctype: str) -> int:
    """``sizeof(ctype)``, once per struct type."""
    return int(ffi.sizeof(ctype))


def _user_data(data: bytes) -> Any:
    """A private, writable copy of driver-specific data for the kernel to
    read (and, for some types, to write back), or NULL when empty."""
    if not data:
        return ffi.NULL
    buf = ffi.new("char[]", len(data))
    ffi.memmove(buf, data, len(data))
    return buf


def _dev_id(device: Device | int) -> int:
    if isinstance(device, int):
        return device
    dev_id = device.dev_id
    if dev_id is None:
        raise InvalidArgumentError(f"{device.describe()} is not bound to an iommufd")
    return dev_id


class IommufdObject(Resource):
    """An object in an iommufd's table; closing destroys it (IOMMU_DESTROY)."""

    kind = "object"

    def __init__(self, iommufd: IommuFd, object_id: int) -> None:
        super().__init__(iommufd.backend)
        self.iommufd = iommufd
        self.id = object_id  #: the object ID
        # Objects allocated on top of this one (HWPTs of an IOAS, nested
        # HWPTs of a parent): they keep it busy, so they are destroyed first.
        self._dependents: dict[int, IommufdObject] = {}

    def _queue_io(self, call: str, io: Callable[[], _T]) -> _T:
        """Run a read/write on the object's fd; OSError becomes IoctlError."""
        try:
            return io()
        except OSError as exc:
            raise ioctl_error(exc.errno or errno.EIO, call, self.describe(),
                              "iommufd") from None

    def _destroy_dependents(self) -> None:
        for obj in reversed(list(self._dependents.values())):
            obj.close()
        self._dependents.clear()

    def describe(self) -> str:
        return f"{self.kind} {self.id}"

    def _release(self) -> None:
        self._destroy_dependents()
        self.iommufd._object_destroy(self)


class _PageTable(IommufdObject):
    """An object devices attach to (IOAS or HWPT): it tracks who is
    attached, with or without a PASID, so that closing it detaches them."""

    def __init__(self, iommufd: IommuFd, object_id: int) -> None:
        super().__init__(iommufd, object_id)
        # (id(device), pasid) -> device; one device may be attached here
        # several times, through different PASIDs.
        self._attached: dict[tuple[int, int | None], Device] = {}

    @property
    def attached_devices(self) -> tuple[Device, ...]:
        """Devices attached to this page table through pyvfio (each once,
        whether through a PASID or not)."""
        unique = {id(d): d for d in self._attached.values()}
        return tuple(unique.values())

    def _detach_all(self) -> None:
        # Attached devices keep the object busy (EBUSY on IOMMU_DESTROY).
        for (_, pasid), device in list(self._attached.items()):
            if not device.closed:
                device.detach(pasid=pasid)
        self._attached.clear()


class IoasMapping(Resource):
    """One area mapped into an IOAS (by map, map_file or copy)."""

    kind = "IOAS mapping"

    def __init__(self, ioas: IOAS, iova: int, length: int, flags: int, owner: Any) -> None:
        super().__init__(ioas.backend)
        self.ioas = ioas
        self.iova = iova  #: first IOVA (bytes)
        self.length = length  #: bytes
        self.flags = flags  #: IOMMU_IOAS_MAP_* flags
        self._owner = owner

    @property
    def last(self) -> int:
        """Last IOVA of the mapping (inclusive)."""
        return self.iova + self.length - 1

    @property
    def readable(self) -> bool:
        """The device may read the memory (IOMMU_IOAS_MAP_READABLE)."""
        return bool(self.flags & lib.IOMMU_IOAS_MAP_READABLE)

    @property
    def writeable(self) -> bool:
        """The device may write the memory (IOMMU_IOAS_MAP_WRITEABLE)."""
        return bool(self.flags & lib.IOMMU_IOAS_MAP_WRITEABLE)

    def describe(self) -> str:
        return f"mapping [{self.iova:#x}, +{self.length:#x}) of {self.ioas.describe()}"

    def unmap(self) -> None:
        """Unmap this area (same as :meth:`close`)."""
        self.close()

    def _release(self) -> None:
        if not self.ioas.closed:
            self.ioas._unmap(self.iova, self.length)
        self._owner = None


class IOAS(_PageTable):
    """An I/O address space: IOVA -> process memory mappings."""

    kind = "IOAS"

    def __init__(self, iommufd: IommuFd, ioas_id: int) -> None:
        super().__init__(iommufd, ioas_id)
        self._mappings: dict[int, IoasMapping] = {}
        self._starts = SortedKeys()  # the keys of _mappings
        #: the ranges of the last :meth:`allow_iovas` through this object
        #: (empty: every IOVA is allowed)
        self.allowed_ranges: tuple[IovaRange, ...] = ()

    @property
    def mappings(self) -> tuple[IoasMapping, ...]:
        """Live mappings made through this object, by IOVA."""
        return tuple(self._mappings[k] for k in self._starts)

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
        chooses the IOVA (see the returned mapping's ``iova``)."""
        self._check_open()
        ub = user_buffer(buffer, ioctl="IOMMU_IOAS_MAP", target=self)
        return self._map(ub, ub.length, iova, readable, writeable)

    def map_va(self, user_va: int, length: int, iova: int | None = None, *,
               readable: bool = True, writeable: bool = True) -> IoasMapping:
        """IOMMU_IOAS_MAP of ``length`` bytes at process address ``user_va``."""
        self._check_open()
        check_u64("user_va", user_va, ioctl="IOMMU_IOAS_MAP", target=self.describe())
        return self._map(UserBuffer(user_va, length, None, True), length, iova, readable,
                          writeable)

    def _map(self, ub: UserBuffer, length: int, iova: int | None, readable: bool,
             writeable: bool) -> IoasMapping:
        name = "IOMMU_IOAS_MAP"
        self._check_open()
        self._check_area(name, iova, length)
        if ub.address + length - 1 > U64_MAX:
            raise InvalidArgumentError(
                f"user_va {ub.address:#x} + length {length:#x} wraps past the end of the "
                "address space", ioctl=name, target=self.describe(), err=errno.EOVERFLOW)
        if writeable and not ub.writable:
            raise InvalidArgumentError("a read-only buffer cannot be mapped writeable",
                                       ioctl=name, target=self.describe())
        flags = self._flags(iova, readable, writeable)
        cmd = ffi.new("struct iommu_ioas_map *")
        cmd.size = _sizeof("struct iommu_ioas_map")
        cmd.flags = flags
        cmd.ioas_id = self.id
        cmd.user_va = ub.address
        cmd.length = length
        cmd.iova = iova or 0
        self.iommufd._ioctl(name, lib.IOMMU_IOAS_MAP, cmd, target=self)
        return self._track(int(cmd.iova), length, flags, ub.owner)

    def map_file(self, fd: int, length: int, start: int = 0, iova: int | None = None, *,
                 readable: bool = True, writeable: bool = True) -> IoasMapping:
        """IOMMU_IOAS_MAP_FILE: map ``length`` bytes of a memfd (or other
        mappable file) from byte ``start``."""
        name = "IOMMU_IOAS_MAP_FILE"
        self._check_open()
        self._check_area(name, iova, length)
        check_u64("start", start, ioctl=name, target=self.describe())
        flags = self._flags(iova, readable, writeable)
        cmd = self.iommufd._cmd(name, lib.IOMMU_IOAS_MAP_FILE, "struct iommu_ioas_map_file",
                                target=self.describe(), flags=flags, ioas_id=self.id, fd=fd,
                                start=start, length=length, iova=iova or 0)
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
        cmd = self.iommufd._cmd(name, lib.IOMMU_IOAS_COPY, "struct iommu_ioas_copy",
                                target=self.describe(), flags=flags, dst_ioas_id=self.id,
                                src_ioas_id=src_ioas.id, length=length, dst_iova=iova or 0,
                                src_iova=src_iova)
        return self._track(int(cmd.dst_iova), length, flags, source)

    def _track(self, iova: int, length: int, flags: int, owner: Any) -> IoasMapping:
        mapping = self._adopt(IoasMapping(self, iova, length, flags, owner))
        if iova not in self._mappings:
            self._starts.add(iova)
        self._mappings[iova] = mapping
        return mapping

    def _unmap(self, iova: int, length: int) -> int:
        cmd = ffi.new("struct iommu_ioas_unmap *")
        cmd.size = _sizeof("struct iommu_ioas_unmap")
        cmd.ioas_id = self.id
        cmd.iova = iova
        cmd.length = length
        self.iommufd._ioctl("IOMMU_IOAS_UNMAP", lib.IOMMU_IOAS_UNMAP, cmd, target=self)
        # iova 0 with length U64_MAX means "everything" (iopt_unmap_all),
        # including an area that ends at the last IOVA.
        last = U64_MAX if (iova, length) == (0, U64_MAX) else iova + length - 1
        exact = self._mappings.get(iova)
        if exact is not None and exact.length == length:
            # one mapping, exactly (tracked mappings never overlap)
            del self._mappings[iova]
            self._starts.remove(iova)
            exact._mark_closed()
            return int(cmd.length)
        if (iova, length) == (0, U64_MAX):
            for m in self._mappings.values():
                m._mark_closed()
            self._mappings.clear()
            self._starts.clear()
            return int(cmd.length)
        for start in list(self._starts.irange(iova, last)):
            m = self._mappings[start]
            if m.iova + m.length - 1 <= last:
                del self._mappings[start]
                self._starts.remove(start)
                m._mark_closed()
        return int(cmd.length)

    def close(self) -> None:
        """Destroy the IOAS: devices are detached, HWPTs built on it
        destroyed and every mapping removed in one IOMMU_IOAS_UNMAP, then
        the object itself (IOMMU_DESTROY).  Idempotent."""
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


class HWPT(_PageTable):
    """A hardware page table (IOMMU_HWPT_ALLOC)."""

    kind = "HWPT"

    def __init__(self, iommufd: IommuFd, hwpt_id: int, parent: Resource, flags: int) -> None:
        super().__init__(iommufd, hwpt_id)
        self.parent = parent  #: the IOAS, nesting-parent HWPT or vIOMMU it was made from
        self.flags = flags  #: IOMMU_HWPT_ALLOC_* flags it was allocated with
        self.fault: FaultQueue | None = None  #: the fault queue it reports to, if any
        #: the driver-specific data it was allocated with, as the kernel left it
        self.data = b""

    def set_dirty_tracking(self, enabled: bool) -> None:
        """IOMMU_HWPT_SET_DIRTY_TRACKING."""
        self._check_open()
        self.iommufd._cmd("IOMMU_HWPT_SET_DIRTY_TRACKING", lib.IOMMU_HWPT_SET_DIRTY_TRACKING,
                          "struct iommu_hwpt_set_dirty_tracking", target=self.describe(),
                          hwpt_id=self.id,
                          flags=lib.IOMMU_HWPT_DIRTY_TRACKING_ENABLE if enabled else 0)

    def dirty_bitmap(self, iova: int, length: int, page_size: int, *,
                     clear: bool = True) -> bytes:
        """IOMMU_HWPT_GET_DIRTY_BITMAP: one bit per ``page_size`` bytes of
        ``[iova, iova + length)``, least significant bit first.  With
        ``clear=False`` the dirty state is kept (NO_CLEAR)."""
        name = "IOMMU_HWPT_GET_DIRTY_BITMAP"
        self._check_open()
        check_u64("iova", iova, ioctl=name, target=self.describe())
        check_u64("length", length, ioctl=name, target=self.describe())
        if page_size <= 0 or page_size & (page_size - 1):
            raise InvalidArgumentError(f"page size {page_size} is not a power of two",
                                       ioctl=name, target=self.describe())
        pages = -(-length // page_size)
        data = ffi.new("__u64[]", max(-(-pages // 64), 1))
        self.iommufd._cmd(name, lib.IOMMU_HWPT_GET_DIRTY_BITMAP,
                          "struct iommu_hwpt_get_dirty_bitmap", target=self.describe(),
                          hwpt_id=self.id,
                          flags=0 if clear else lib.IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR,
                          iova=iova, length=length, page_size=page_size,
                          data=int(ffi.cast("uintptr_t", data)))
        return bytes(ffi.buffer(data))[: -(-pages // 8)]

    def invalidate(self, data_type: int, entries: Sequence[bytes]) -> int:
        """IOMMU_HWPT_INVALIDATE with same-sized ``entries`` of ``data_type``;
        returns how many the kernel handled."""
        name = "IOMMU_HWPT_INVALIDATE"
        self._check_open()
        entry_len = len(entries[0]) if entries else 0
        if any(len(e) != entry_len for e in entries):
            raise InvalidArgumentError("invalidation entries must all have the same size",
                                       ioctl=name, target=self.describe())
        buf = _user_data(b"".join(entries))
        cmd = self.iommufd._cmd(name, lib.IOMMU_HWPT_INVALIDATE, "struct iommu_hwpt_invalidate",
                                target=self.describe(), hwpt_id=self.id, data_type=data_type,
                                entry_len=entry_len, entry_num=len(entries),
                                data_uptr=int(ffi.cast("uintptr_t", buf)))
        return int(cmd.entry_num)

    def _release(self) -> None:
        self._detach_all()
        self._destroy_dependents()
        if isinstance(self.parent, IommufdObject):
            self.parent._dependents.pop(id(self), None)
        if self.fault is not None:
            self.fault._dependents.pop(id(self), None)
        super()._release()


class FaultQueue(IommufdObject):
    """An I/O page fault queue (IOMMU_FAULT_QUEUE_ALLOC) and its fd."""

    kind = "fault queue"

    def __init__(self, iommufd: IommuFd, fault_id: int, fd: int) -> None:
        super().__init__(iommufd, fault_id)
        self._fd = fd

    def fileno(self) -> int:
        """The queue's fd: readable when faults are pending."""
        self._check_open()
        return self._fd

    def read_faults(self, max_faults: int = 16) -> list[Any]:
        """Read pending ``struct iommu_hwpt_pgfault`` records."""
        self._check_open()
        size = ffi.sizeof("struct iommu_hwpt_pgfault")
        data = self._queue_io("read", lambda: self.backend.read(self._fd, size * max_faults))
        out = []
        for off in range(0, len(data) - size + 1, size):
            rec = ffi.new("struct iommu_hwpt_pgfault *")
            ffi.memmove(rec, data[off: off + size], size)
            out.append(rec)
        return out

    def respond(self, cookie: int, code: int) -> None:
        """Answer a fault group (``struct iommu_hwpt_page_response``)."""
        self._check_open()
        resp = ffi.new("struct iommu_hwpt_page_response *")
        resp.cookie = cookie
        resp.code = code
        self._queue_io("write", lambda: self.backend.write(self._fd, bytes(ffi.buffer(resp))))

    def _release(self) -> None:
        # HWPTs reporting to the queue and the open queue fd both hold a
        # reference to it: release them first or IOMMU_DESTROY fails (EBUSY).
        self._destroy_dependents()
        fd, self._fd = self._fd, -1
        if fd >= 0:
            self.backend.close(fd)
        super()._release()


class Viommu(IommufdObject):
    """A virtual IOMMU instance (IOMMU_VIOMMU_ALLOC)."""

    kind = "vIOMMU"

    def __init__(self, iommufd: IommuFd, viommu_id: int, hwpt: HWPT) -> None:
        super().__init__(iommufd, viommu_id)
        self.hwpt = hwpt  #: the nesting-parent HWPT it translates through
        #: the driver-specific data it was allocated with, as the kernel left it
        self.data = b""

    def vdevice(self, device: Device | int, virt_id: int) -> Vdevice:
        """IOMMU_VDEVICE_ALLOC: tell the vIOMMU the guest's ID for a device."""
        self._check_open()
        cmd = self.iommufd._cmd("IOMMU_VDEVICE_ALLOC", lib.IOMMU_VDEVICE_ALLOC,
                                "struct iommu_vdevice_alloc", target=self.describe(),
                                viommu_id=self.id, dev_id=_dev_id(device), virt_id=virt_id)
        return self._adopt(Vdevice(self.iommufd, int(cmd.out_vdevice_id), self))

    def veventq(self, veventq_type: int, depth: int) -> Veventq:
        """IOMMU_VEVENTQ_ALLOC: a queue of vIOMMU events (with its fd)."""
        self._check_open()
        cmd = self.iommufd._cmd("IOMMU_VEVENTQ_ALLOC", lib.IOMMU_VEVENTQ_ALLOC,
                                "struct iommu_veventq_alloc", target=self.describe(),
                                viommu_id=self.id, type=veventq_type, veventq_depth=depth)
        return self._adopt(Veventq(self.iommufd, int(cmd.out_veventq_id),
                                   int(cmd.out_veventq_fd)))

    def hw_queue(self, queue_type: int, index: int, nesting_parent_iova: int,
                 length: int) -> HwQueue:
        """IOMMU_HW_QUEUE_ALLOC: a hardware-accelerated queue of the vIOMMU."""
        self._check_open()
        cmd = self.iommufd._cmd("IOMMU_HW_QUEUE_ALLOC", lib.IOMMU_HW_QUEUE_ALLOC,
                                "struct iommu_hw_queue_alloc", target=self.describe(),
                                viommu_id=self.id, type=queue_type, index=index,
                                nesting_parent_iova=nesting_parent_iova, length=length)
        return self._adopt(HwQueue(self.iommufd, int(cmd.out_hw_queue_id)))


class Vdevice(IommufdObject):
    """A device as seen by a vIOMMU (IOMMU_VDEVICE_ALLOC)."""

    kind = "vdevice"

    def __init__(self, iommufd: IommuFd, vdevice_id: int, viommu: Viommu) -> None:
        super().__init__(iommufd, vdevice_id)
        self.viommu = viommu  #: the vIOMMU it belongs to

    def _release(self) -> None:
        # Unbinding the device destroys its vdevice in the kernel
        # (iommufd_device_destroy): then there is nothing left to destroy.
        try:
            super()._release()
        except IoctlError as exc:
            if exc.errno != errno.ENOENT:
                raise


class Veventq(IommufdObject):
    """A vIOMMU event queue (IOMMU_VEVENTQ_ALLOC) and its fd."""

    kind = "vEVENTQ"

    def __init__(self, iommufd: IommuFd, veventq_id: int, fd: int) -> None:
        super().__init__(iommufd, veventq_id)
        self._fd = fd

    def fileno(self) -> int:
        """The queue's fd: readable when events are pending."""
        self._check_open()
        return self._fd

    def read(self, size: int = 4096) -> bytes:
        """Read raw event records (``struct iommufd_vevent_header`` + data)."""
        self._check_open()
        return self._queue_io("read", lambda: self.backend.read(self._fd, size))

    def _release(self) -> None:
        # The open queue fd holds a reference to the object: close it first
        # or IOMMU_DESTROY fails with EBUSY.
        fd, self._fd = self._fd, -1
        if fd >= 0:
            self.backend.close(fd)
        super()._release()


class HwQueue(IommufdObject):
    """A vIOMMU hardware queue (IOMMU_HW_QUEUE_ALLOC)."""

    kind = "HW queue"

