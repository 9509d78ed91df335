"""The vfio-pci device file of the fake kernel (the device file of
drivers/vfio/vfio_main.c: ``vfio_device_fops``).

Every open file of a device is a :class:`VfioDeviceFile` (``struct
vfio_device_file``); the group path may open a device several times, the
cdev path once.  The first open enables the device and the last close
disables it (:class:`~pyvfio.fake.vfio_pci.core.VfioPciCore`).  The ioctls
are dispatched as vfio_device_fops_unl_ioctl does: BIND_IOMMUFD, then the
cdev-only :data:`CDEV_IOCTLS`, then :data:`DEVICE_IOCTLS` (the cases the
VFIO core serves), then the driver's vfio_pci_core_ioctl.

Contracts with the other modules:

* the System calls :func:`open_device_file` for ``/dev/vfio/devices/vfioN``
  and the group file for VFIO_GROUP_GET_DEVICE_FD; on the device's first
  open the group path calls ``group_file.use_container(pdev)`` (or binds to
  the group's iommufd and ``compat_attach_device(devid)``), on its last
  close ``group_file.unuse_container(pdev)`` (or unbinds);
* the cdev path is :mod:`pyvfio.fake.vfio_pci.device_cdev`;
* while the device is open, ``pdev.request_release`` is the device's REQ
  hook (the System calls it when vfio-pci is asked to let go of the
  device).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any, Callable

from ..._uapi import lib
from ...backend.base import IoctlArg, MemoryMap
from ..core import FakeBackend, FakeFile, errno_error
from .core import VfioPciCore, vfio_pci_core_ioctl, vfio_pci_ioctl_get_region_info
from .device_cdev import vfio_df_ioctl_attach_pt, vfio_df_ioctl_bind_iommufd, vfio_df_ioctl_detach_pt
from .features import vfio_ioctl_device_feature
from .priv import clear_drvdata, core_of, set_drvdata
from .rdwr import vfio_pci_core_mmap, vfio_pci_rw

if TYPE_CHECKING:
    from ..machine.system import PciDevice

__all__ = [
    "VfioDeviceFile",
    "open_device_file",
    "FileIoctl",
    "DeviceIoctl",
    "CDEV_IOCTLS",
    "DEVICE_IOCTLS",
]

#: A handler of the device file itself: ``(df, arg) -> 0``.
FileIoctl = Callable[["VfioDeviceFile", IoctlArg], int]
#: A handler of the device: ``(vdev, arg) -> 0``.
DeviceIoctl = Callable[[VfioPciCore, IoctlArg], int]

#: vfio_device_fops_unl_ioctl's cdev-only cases.
CDEV_IOCTLS: dict[int, FileIoctl] = {
    lib.VFIO_DEVICE_ATTACH_IOMMUFD_PT: vfio_df_ioctl_attach_pt,
    lib.VFIO_DEVICE_DETACH_IOMMUFD_PT: vfio_df_ioctl_detach_pt,
}
#: vfio_device_fops_unl_ioctl's cases for every device file; anything
#: else goes to the driver (vfio_pci_core_ioctl).
DEVICE_IOCTLS: dict[int, DeviceIoctl] = {
    lib.VFIO_DEVICE_FEATURE: vfio_ioctl_device_feature,
    lib.VFIO_DEVICE_GET_REGION_INFO: vfio_pci_ioctl_get_region_info,
}


class VfioDeviceFile(FakeFile):
    """An open vfio-pci device file (``struct vfio_device_file``).

    :ivar core: the device's :class:`VfioPciCore`.
    :ivar cdev: opened as ``/dev/vfio/devices/vfioN`` (else from a group).
    :ivar access_granted: the device is open for this file (a cdev once
        bound to an iommufd).
    """

    def __init__(self, kernel: FakeBackend, core: VfioPciCore, *, cdev: bool, group_file: Any = None) -> None:
        super().__init__(kernel)
        self.core = core
        self.pdev = core.pdev
        self.cdev = cdev
        self.group_file = group_file
        self.access_granted = False
        self.iommufd: Any = None
        self.devid: int | None = None
        self.path = (f"/dev/vfio/devices/{core.pdev.vfio_cdev_name}" if cdev
                     else f"{getattr(group_file, 'path', 'vfio-group')}:{core.pdev.bdf}")
        self._refs = 1  # the fd
        self._released = False
        self._opened = False

    def __repr__(self) -> str:
        return f"<VfioDeviceFile {self.pdev.bdf} {'cdev' if self.cdev else 'group'}>"

    # -- open / close (vfio_df_open / vfio_df_close) ------------------------------------
    def df_open(self) -> None:
        """vfio_df_open: the first open enables the device."""
        core = self.core
        if core.open_count != 0 and self.cdev:
            # vfio_df_open: a cdev may open a device only once
            raise errno_error(errno.EINVAL, "the device is already open")
        core.open_count += 1
        if core.open_count == 1:
            try:
                self._first_open()
            except BaseException:
                core.open_count -= 1
                raise
        self._opened = True

    def _first_open(self) -> None:
        """vfio_df_device_first_open."""
        core = self.core
        if self.cdev:
            core.iommufd = self.iommufd
            core.devid = self.devid
        elif self.group_file is not None:
            iommufd = getattr(self.group_file, "iommufd", None)
            if iommufd is None:
                self.group_file.use_container(self.pdev)
            else:
                # vfio_df_iommufd_bind + the compat IOAS attach
                core.iommufd = iommufd
                try:
                    core.devid = int(iommufd.bind_device(self.pdev, self))
                except BaseException:
                    core.iommufd = None
                    raise
                compat = getattr(iommufd, "compat_attach_device", None)
                if callable(compat):
                    try:
                        compat(core.devid)
                    except BaseException:
                        # vfio_df_group_open: a failed
                        # vfio_iommufd_compat_attach_ioas closes the device
                        # again (out_close_device: vfio_df_close ->
                        # vfio_df_iommufd_unbind)
                        self._iommufd_unbind()
                        raise
                    core.iommufd_attached = True
        try:
            core.first_open()
        except BaseException:
            self._undo_iommu()
            raise

    def _undo_iommu(self) -> None:
        if self.cdev:
            return  # the bind ioctl unbinds
        if self.group_file is not None:
            if self.core.iommufd is not None:
                self._iommufd_unbind()
            else:
                self.group_file.unuse_container(self.pdev)

    def _iommufd_unbind(self) -> None:
        """vfio_iommufd_physical_unbind."""
        core = self.core
        ictx = core.iommufd
        if ictx is None or core.devid is None:
            return
        for pasid in sorted(core.pasids):
            ictx.detach_device(core.devid, pasid)
        core.pasids.clear()
        if core.iommufd_attached:
            ictx.detach_device(core.devid, None)
            core.iommufd_attached = False
        ictx.unbind_device(core.devid)
        core.iommufd = None
        core.devid = None

    def df_close(self) -> None:
        """vfio_df_close: the last close disables the device."""
        if not self._opened:
            return
        self._opened = False
        core = self.core
        core.open_count -= 1
        if core.open_count == 0:
            core.last_close()
            if self.cdev:
                self._iommufd_unbind()
            else:
                self._undo_iommu()
            core.cdev_opened = False

    def release(self) -> None:
        """The fd closed (vfio_device_fops_release); the device closes when
        no mapping holds the file any more."""
        if self._released:
            return
        self._released = True
        self.put()

    def get(self) -> None:
        """get_file: a mapping holds the file."""
        self._refs += 1

    def put(self) -> None:
        """fput: the last reference closes the device."""
        self._refs -= 1
        if self._refs > 0:
            return
        core = self.core
        with self.system.lock:
            if self.cdev:
                if self.access_granted:
                    self.df_close()
                    vgroup = self.vgroup()
                    if vgroup is not None:
                        vgroup.unblock_group()
            else:
                self.df_close()
            if self in core.files:
                core.files.remove(self)
            if not core.files:
                if getattr(self.pdev, "request_release", None) == core.request_hook:
                    self.pdev.request_release = None
                clear_drvdata(self.pdev, core)

    def unmap(self, m: MemoryMap) -> None:
        """A mapping of this file was closed."""
        if m in self.core.maps:
            self.core.maps.remove(m)
        self.put()

    def vgroup(self) -> Any:
        """The vfio group of the device's IOMMU group, if any."""
        group = getattr(self.pdev, "group", None)
        return getattr(group, "vfio_group", None) if group is not None else None

    # -- the ioctl switch (vfio_device_fops_unl_ioctl) ---------------------------------
    def ioctl(self, request: int, arg: IoctlArg) -> int:
        """vfio_device_fops_unl_ioctl: the VFIO_DEVICE_* ioctls (binding and
        attaching for a cdev, info, regions, IRQs, resets, features).  On a
        cdev every ioctl but VFIO_DEVICE_BIND_IOMMUFD is EINVAL until the
        device is bound to an iommufd."""
        core = self.core
        if request == lib.VFIO_DEVICE_BIND_IOMMUFD:
            return vfio_df_ioctl_bind_iommufd(self, arg)
        if not self.access_granted:
            # vfio_device_fops_unl_ioctl: EINVAL until the cdev is bound
            raise errno_error(errno.EINVAL, "the device is not bound to an iommufd")
        core.poll()
        core.pm_get()
        try:
            # vfio_device_fops_unl_ioctl: the cdev-only ioctls first
            if self.cdev and request in CDEV_IOCTLS:
                return CDEV_IOCTLS[request](self, arg)
            handler = DEVICE_IOCTLS.get(request)
            if handler is not None:
                return handler(core, arg)
            return vfio_pci_core_ioctl(core, request, arg)
        finally:
            core.pm_put()

    # -- read / write / mmap (vfio_device_fops_read/write/mmap) -----------------------------------------------
    def pread(self, size: int, offset: int) -> bytes:
        """vfio_pci_rw: read up to ``size`` bytes of the region the high
        bits of ``offset`` select (:data:`VFIO_PCI_OFFSET_SHIFT`), from the
        byte offset in the low bits: the virtualised config space, or a BAR
        in the widest aligned accesses that fit (the MSI-X table reads as
        all-ones).  EINVAL outside a region and for the ROM and VGA regions
        (absent here); EIO on a memory BAR while memory decode is off."""
        result = vfio_pci_rw(self, offset, None, size)
        assert isinstance(result, bytes)
        return result

    def pwrite(self, data: bytes, offset: int) -> int:
        """vfio_pci_rw: write ``data`` to the region the high bits of
        ``offset`` select, the way :meth:`pread` reads (writes to the MSI-X
        table are dropped); returns the number of bytes written."""
        result = vfio_pci_rw(self, offset, data, len(data))
        assert isinstance(result, int)
        return result

    def mmap(self, length: int, prot: int, flags: int, offset: int) -> MemoryMap:
        """vfio_pci_core_mmap: a mapping of a BAR."""
        return vfio_pci_core_mmap(self, length, prot, flags, offset)


def open_device_file(kernel: FakeBackend, pdev: PciDevice, *, cdev: bool, group_file: Any = None) -> FakeFile:
    """Open the vfio-pci device file of ``pdev``.

    ``cdev=True``: ``/dev/vfio/devices/vfioN``; nothing but
    VFIO_DEVICE_BIND_IOMMUFD works until the file is bound.  Otherwise the
    file comes from VFIO_GROUP_GET_DEVICE_FD of ``group_file`` and the
    device is opened now (vfio_df_group_open)."""
    with kernel.system.lock:
        core = core_of(pdev)
        if core is None:
            core = VfioPciCore(kernel, pdev)
            set_drvdata(pdev, core)
        f = VfioDeviceFile(kernel, core, cdev=cdev, group_file=group_file)
        if not cdev:
            try:
                f.df_open()
            except BaseException:
                if not core.files:
                    clear_drvdata(pdev)
                raise
            f.access_granted = True
        core.files.append(f)
        pdev.request_release = core.request_hook
        return f
