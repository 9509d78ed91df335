"""Virtual IOMMUs of an iommufd (IOMMU_VIOMMU_ALLOC): :class:`Viommu`
over a nesting-parent HWPT, the guest's view of a device
(:class:`Vdevice`), vIOMMU event queues (:class:`Veventq`) and
hardware-accelerated queues (:class:`HwQueue`).  Allocate a vIOMMU
through :meth:`pyvfio.IommuFd.viommu_alloc`.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Sequence

from .._uapi import lib
from ..errors import IoctlError
from .hw_pagetable import _invalidate_entries
from .iommufd_object import IommufdObject, device_id

if TYPE_CHECKING:
    from .device import Device
    from .hw_pagetable import HWPT
    from .iommufd import IommuFd

__all__ = ["Viommu", "Vdevice", "Veventq", "HwQueue"]


class Viommu(IommufdObject):
    """A virtual IOMMU instance (IOMMU_VIOMMU_ALLOC).

    Thread safety: its operations are single ioctls the kernel serialises;
    objects built on it are recorded by single dictionary operations (atomic
    under the GIL). Close it after the threads using it are done.
    """

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
                                viommu_id=self.id, dev_id=device_id(device), virt_id=virt_id)
        return self._adopt(Vdevice(self.iommufd, int(cmd.out_vdevice_id), self))

    def invalidate(self, data_type: int, entries: Sequence[bytes]) -> int:
        """IOMMU_HWPT_INVALIDATE on the vIOMMU: same-sized ``entries`` of
        ``data_type`` (for the SMMUv3, 16-byte command-queue entries of
        IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3); returns how many the
        kernel handled.  On failure the :class:`~pyvfio.errors.IoctlError`'s
        ``entry_num`` says how many were handled before the failing one."""
        return _invalidate_entries(self, data_type, entries)

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
    """A device as seen by a vIOMMU (IOMMU_VDEVICE_ALLOC).

    Thread safety: immutable after allocation apart from closing; close it
    after the threads using it are done.
    """

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
    """A vIOMMU event queue (IOMMU_VEVENTQ_ALLOC) and its fd.

    Thread safety: reads are syscalls on its fd the kernel serialises:
    several threads may read, each event record goes to one of them. Close
    it after the readers are done.
    """

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
    """A vIOMMU hardware queue (IOMMU_HW_QUEUE_ALLOC).

    Thread safety: immutable after allocation apart from closing; close it
    after the threads using it are done.
    """

    kind = "HW queue"
