"""The cdev path of the fake vfio-pci device file
(drivers/vfio/device_cdev.c): VFIO_DEVICE_BIND_IOMMUFD,
VFIO_DEVICE_ATTACH_IOMMUFD_PT and VFIO_DEVICE_DETACH_IOMMUFD_PT.

The device file calls the iommufd file's ``bind_device(pdev, file) ->
devid``, ``attach_device(devid, pt_id, pasid) -> id``,
``detach_device(devid, pasid)`` and ``unbind_device(devid)``, and the IOMMU
group's ``vfio_group.block_group()`` / ``unblock_group()``, which keep the
group path and the cdev path exclusive.
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING, Any

from ..._uapi import ffi, lib
from ...backend.base import IoctlArg
from ..core import errno_error
from ..uaccess import UserPtr
from .priv import offsetofend

if TYPE_CHECKING:
    from .vfio_main import VfioDeviceFile

__all__ = [
    "vfio_df_ioctl_bind_iommufd",
    "vfio_df_ioctl_attach_pt",
    "vfio_df_ioctl_detach_pt",
]


def vfio_df_check_token(df: VfioDeviceFile, bind: Any) -> None:
    """vfio_df_check_token + vfio_pci_core_match_token_uuid."""
    if bind.flags & lib.VFIO_DEVICE_BIND_FLAG_TOKEN:
        # vfio_df_check_token: copy the UUID (EFAULT for a bad pointer; a
        # short argsz leaves the pointer zero)
        UserPtr.from_value(bind.token_uuid_ptr).read(0, 16)
        # vfio_pci_core_match_token_uuid: no token for a device that is
        # neither a PF with VFs nor a VF
        raise errno_error(errno.EINVAL, "VF token given for a device that is not a PF/VF")


def _iommufd_ctx_from_fd(df: VfioDeviceFile, fd: int) -> Any:
    """iommufd_ctx_from_fd: EBADF for a closed fd, EBADFD for a file that
    is not an iommufd."""
    ictx: Any = df.kernel.file_or_none(fd)
    if ictx is None:
        try:
            os.fstat(fd)
        except OSError:
            raise errno_error(errno.EBADF, f"fd {fd}") from None
    if ictx is None or not callable(getattr(ictx, "bind_device", None)):
        raise errno_error(errno.EBADFD, f"fd {fd} is not an iommufd")
    return ictx


def vfio_df_ioctl_bind_iommufd(df: VfioDeviceFile, arg: IoctlArg) -> int:
    """vfio_df_ioctl_bind_iommufd: bind the cdev to an iommufd and open the
    device; ``out_devid`` is the device's id in that iommufd."""
    uptr = UserPtr(arg)
    ctype = "struct vfio_device_bind_iommufd"
    minsz = offsetofend(ctype, "out_devid")
    argsz = uptr.read_u32(0)  # get_user(user_size, &arg->argsz)
    if argsz < minsz:
        raise errno_error(errno.EINVAL, "argsz too small")
    # copy_struct_from_user: E2BIG for a non-zero tail
    bind = uptr.copy_struct_from_user(ctype, argsz)
    if bind.iommufd < 0 or bind.flags & ~lib.VFIO_DEVICE_BIND_FLAG_TOKEN:
        raise errno_error(errno.EINVAL, "bad iommufd or flags")
    if not df.cdev:
        # vfio_df_ioctl_bind_iommufd: only for cdev files
        raise errno_error(errno.EINVAL, "BIND_IOMMUFD on a group-path device file")
    vgroup = df.vgroup()
    if vgroup is not None:
        vgroup.block_group()  # vfio_device_block_group: EBUSY while /dev/vfio/N is open
    try:
        if df.access_granted:
            # vfio_df_ioctl_bind_iommufd: one device file cannot be bound twice
            raise errno_error(errno.EINVAL, "already bound")
        vfio_df_check_token(df, bind)
        ictx = _iommufd_ctx_from_fd(df, int(bind.iommufd))
        if df.core.open_count != 0:
            # vfio_df_open: a cdev may open a device only once
            raise errno_error(errno.EINVAL, "the device is already open")
        devid = int(ictx.bind_device(df.pdev, df))
        df.iommufd = ictx
        df.devid = devid
        try:
            df.df_open()
        except BaseException:
            ictx.unbind_device(devid)
            df.iommufd = df.devid = None
            df.core.iommufd = df.core.devid = None
            raise
        try:
            uptr.write_u32(ffi.offsetof(ctype, "out_devid"), devid)
        except OSError:
            # vfio_df_ioctl_bind_iommufd: EFAULT closes the device again
            df.df_close()
            df.iommufd = df.devid = None
            raise
    except BaseException:
        if vgroup is not None:
            vgroup.unblock_group()
        raise
    df.core.cdev_opened = True
    df.access_granted = True
    return 0


def vfio_df_ioctl_attach_pt(df: VfioDeviceFile, arg: IoctlArg) -> int:
    """vfio_df_ioctl_attach_pt: attach (or replace) the device or one of its
    PASIDs to an IOAS or HWPT; ``pt_id`` comes back as the HWPT used."""
    uptr = UserPtr(arg)
    ctype = "struct vfio_device_attach_iommufd_pt"
    minsz = offsetofend(ctype, "pt_id")
    attach = uptr.read_struct(ctype, 0, minsz)
    argsz, flags, pt_id = int(attach.argsz), int(attach.flags), int(attach.pt_id)
    if argsz < minsz:
        raise errno_error(errno.EINVAL, "argsz too small")
    if flags & ~lib.VFIO_DEVICE_ATTACH_PASID:
        raise errno_error(errno.EINVAL, f"unknown flags {flags:#x}")
    pasid: int | None = None
    if flags & lib.VFIO_DEVICE_ATTACH_PASID:
        if argsz < offsetofend(ctype, "pasid"):
            raise errno_error(errno.EINVAL, "argsz does not cover pasid")
        pasid = uptr.read_u32(minsz)
    core = df.core
    ictx = core.iommufd
    # vfio_iommufd_physical_(pasid_)attach_ioas: attach or replace
    out = int(ictx.attach_device(core.devid, pt_id, pasid))
    if pasid is None:
        core.iommufd_attached = True
    else:
        core.pasids.add(pasid)
    try:
        uptr.write_u32(ffi.offsetof(ctype, "pt_id"), out)
    except OSError:
        # vfio_df_ioctl_attach_pt: EFAULT detaches again
        ictx.detach_device(core.devid, pasid)
        if pasid is None:
            core.iommufd_attached = False
        else:
            core.pasids.discard(pasid)
        raise
    return 0


def vfio_df_ioctl_detach_pt(df: VfioDeviceFile, arg: IoctlArg) -> int:
    """vfio_df_ioctl_detach_pt: detach the device or one of its PASIDs."""
    uptr = UserPtr(arg)
    ctype = "struct vfio_device_detach_iommufd_pt"
    minsz = offsetofend(ctype, "flags")
    detach = uptr.read_struct(ctype, 0, minsz)
    argsz, flags = int(detach.argsz), int(detach.flags)
    if argsz < minsz:
        raise errno_error(errno.EINVAL, "argsz too small")
    if flags & ~lib.VFIO_DEVICE_DETACH_PASID:
        raise errno_error(errno.EINVAL, f"unknown flags {flags:#x}")
    core = df.core
    if flags & lib.VFIO_DEVICE_DETACH_PASID:
        if argsz < offsetofend(ctype, "pasid"):
            raise errno_error(errno.EINVAL, "argsz does not cover pasid")
        pasid = uptr.read_u32(minsz)
        if pasid in core.pasids:
            core.iommufd.detach_device(core.devid, pasid)
            core.pasids.discard(pasid)
        return 0
    if core.iommufd_attached:
        core.iommufd.detach_device(core.devid, None)
        core.iommufd_attached = False
    return 0
