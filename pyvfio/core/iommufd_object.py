"""What every iommufd object shares: an ID in an iommufd's table, closing
by IOMMU_DESTROY (:class:`IommufdObject`), and for the objects devices
attach to, the bookkeeping of who is attached (:class:`PageTable`).  Also
the small helpers the iommufd modules build their commands with.
"""

from __future__ import annotations

import errno
import functools
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from .._uapi import ffi
from ..errors import InvalidArgumentError, ioctl_error
from .resource import Resource

if TYPE_CHECKING:
    from .device import Device
    from .iommufd import IommuFd

_T = TypeVar("_T")

__all__ = ["IommufdObject", "PageTable"]


@functools.lru_cache(maxsize=None)
def struct_size(ctype: str) -> int:
    """``sizeof(ctype)``, once per struct type."""
    return int(ffi.sizeof(ctype))


def user_data(data: bytes) -> Any:
    """A private, writable copy of driver-specific data for the kernel to
    read (and, for some types, to write back), or NULL when empty."""
    if not data:
        return ffi.NULL
    buf = ffi.new("char[]", len(data))
    ffi.memmove(buf, data, len(data))
    return buf


def device_id(device: Device | int) -> int:
    """The iommufd device ID of a bound device (or the ID itself)."""
    if isinstance(device, int):
        return device
    dev_id = device.dev_id
    if dev_id is None:
        raise InvalidArgumentError(f"{device.describe()} is not bound to an iommufd")
    return dev_id


class IommufdObject(Resource):
    """An object in an iommufd's table; closing destroys it (IOMMU_DESTROY).

    The iommufd keeps its live objects by ID (the kernel reuses the ID of
    a destroyed object for the next one): a raw
    :meth:`IommuFd.destroy <pyvfio.IommuFd.destroy>` of the ID marks the
    object closed, and so does a new object given the same ID (the kernel
    destroyed this one behind pyvfio's back), so that closing it later
    never destroys the object that took its ID.  A failed IOMMU_DESTROY
    leaves the object open (``close()`` may be retried).

    Thread safety: its operations are ioctls the kernel serialises; the list
    of objects built on it changes by single dictionary operations (atomic
    under the GIL). Close it after the threads using it are done.
    """

    kind = "object"
    _open_after_failed_release = True

    def __init__(self, iommufd: IommuFd, object_id: int) -> None:
        super().__init__(iommufd.backend)
        self.iommufd = iommufd
        self.id = object_id  #: the object ID
        # Objects allocated on top of this one (HWPTs of an IOAS, nested
        # HWPTs of a parent): they keep it busy, so they are destroyed first.
        self._dependents: dict[int, IommufdObject] = {}
        iommufd._register(self)

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

    def _mark_closed(self) -> None:
        """The kernel destroyed the object (a raw IOMMU_DESTROY of its ID,
        the iommufd closed, the ID reused): forget it without a syscall."""
        self.iommufd._unregister(self)
        super()._mark_closed()


class PageTable(IommufdObject):
    """An object devices attach to (IOAS or HWPT): it tracks who is
    attached, with or without a PASID, so that closing it detaches them.

    Thread safety: the record of attached devices changes with attach and
    detach: do those from one thread (or under the driver's lock).
    """

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
