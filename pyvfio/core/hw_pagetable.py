"""Hardware page tables of an iommufd (IOMMU_HWPT_ALLOC): :class:`HWPT`,
with dirty tracking and cache invalidation, the I/O page fault queues
they report to (:class:`FaultQueue`), and what the IOMMU behind a device
can do (IOMMU_GET_HW_INFO, :class:`HwInfo`).  Allocate them through
:meth:`pyvfio.IommuFd.hwpt_alloc`, :meth:`~pyvfio.IommuFd.fault_queue`
and :meth:`~pyvfio.IommuFd.hw_info`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from .._uapi import ffi, lib
from ..errors import InvalidArgumentError, IoctlError
from .iommufd_object import IommufdObject, PageTable, struct_size, user_data
from .resource import Resource, check_u64

if TYPE_CHECKING:
    from .iommufd import IommuFd

__all__ = ["HWPT", "FaultQueue", "HwInfo", "HwInfoType", "HwptDataType"]


class HwInfoType(enum.IntEnum):
    """``out_data_type`` of IOMMU_GET_HW_INFO.

    Thread safety: a constant; safe to share.
    """

    NONE = lib.IOMMU_HW_INFO_TYPE_NONE
    INTEL_VTD = lib.IOMMU_HW_INFO_TYPE_INTEL_VTD
    ARM_SMMUV3 = lib.IOMMU_HW_INFO_TYPE_ARM_SMMUV3
    TEGRA241_CMDQV = lib.IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV
    AMD = lib.IOMMU_HW_INFO_TYPE_AMD


class HwptDataType(enum.IntEnum):
    """``data_type`` of IOMMU_HWPT_ALLOC / IOMMU_HWPT_INVALIDATE.

    Thread safety: a constant; safe to share.
    """

    NONE = lib.IOMMU_HWPT_DATA_NONE
    VTD_S1 = lib.IOMMU_HWPT_DATA_VTD_S1
    ARM_SMMUV3 = lib.IOMMU_HWPT_DATA_ARM_SMMUV3
    AMD_GUEST = lib.IOMMU_HWPT_DATA_AMD_GUEST


@dataclass(frozen=True)
class HwInfo:
    """IOMMU_GET_HW_INFO: what the IOMMU behind a device can do.

    Thread safety: immutable; safe to share between threads.
    """

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


class HWPT(PageTable):
    """A hardware page table (IOMMU_HWPT_ALLOC).

    Thread safety: safe to use from several threads: invalidation, dirty
    tracking and the other operations are single ioctls the kernel
    serialises; the list of objects built on it changes by single dictionary
    operations (atomic under the GIL). Close it after the threads using it
    are done.
    """

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
        returns how many the kernel handled.  On failure the
        :class:`~pyvfio.errors.IoctlError`'s ``entry_num`` says how many
        entries were handled before the failing one."""
        return _invalidate_entries(self, data_type, entries)

    def _release(self) -> None:
        self._detach_all()
        self._destroy_dependents()
        super()._release()
        self._drop_references()

    def _mark_closed(self) -> None:
        self._drop_references()
        super()._mark_closed()

    def _drop_references(self) -> None:
        # Destroyed: it no longer keeps its parent and fault queue busy
        # (while IOMMU_DESTROY fails, it still does).
        if isinstance(self.parent, IommufdObject):
            self.parent._dependents.pop(id(self), None)
        if self.fault is not None:
            self.fault._dependents.pop(id(self), None)


def _invalidate_entries(obj: IommufdObject, data_type: int, entries: Sequence[bytes]) -> int:
    """IOMMU_HWPT_INVALIDATE on ``obj`` (a nested HWPT or a vIOMMU) with
    same-sized ``entries`` of ``data_type``: how many the kernel handled;
    on failure the IoctlError's ``entry_num`` is the kernel's count."""
    name = "IOMMU_HWPT_INVALIDATE"
    obj._check_open()
    entry_len = len(entries[0]) if entries else 0
    if any(len(e) != entry_len for e in entries):
        raise InvalidArgumentError("invalidation entries must all have the same size",
                                   ioctl=name, target=obj.describe())
    buf = user_data(b"".join(entries))
    ctype = "struct iommu_hwpt_invalidate"
    cmd = ffi.new(ctype + " *")
    cmd.size = struct_size(ctype)
    cmd.hwpt_id = obj.id
    cmd.data_type = data_type
    cmd.entry_len = entry_len
    cmd.entry_num = len(entries)
    cmd.data_uptr = int(ffi.cast("uintptr_t", buf))
    try:
        obj.iommufd._ioctl(name, lib.IOMMU_HWPT_INVALIDATE, cmd, target=obj.describe())
    except IoctlError as exc:
        exc.entry_num = int(cmd.entry_num)
        raise
    return int(cmd.entry_num)


class FaultQueue(IommufdObject):
    """An I/O page fault queue (IOMMU_FAULT_QUEUE_ALLOC) and its fd.

    Thread safety: reads and responses are syscalls on its fd the kernel
    serialises: several threads may read, each fault record goes to one of
    them. Close it after the readers are done.
    """

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
