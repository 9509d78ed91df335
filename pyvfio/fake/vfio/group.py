"""The vfio group file, ``/dev/vfio/N``, after drivers/vfio/group.c of
Linux 7.3: open once at a time, VFIO_GROUP_GET_STATUS,
VFIO_GROUP_SET_CONTAINER (a container or an iommufd),
VFIO_GROUP_UNSET_CONTAINER, and VFIO_GROUP_GET_DEVICE_FD, which finds a
device by name (vfio_pci_core_match) and opens its vfio-pci device file.

Every check carries a comment naming the kernel function whose rule it
mirrors; checks run in the kernel's order.

Contract with the vfio-pci device file (:mod:`pyvfio.fake.vfio_pci`):

* ``VFIO_GROUP_GET_DEVICE_FD`` finds the device, checks that the group has a
  container or an iommufd (``EINVAL`` otherwise, vfio_df_group_open) and
  calls :func:`open_device_file` ``(kernel, pdev, cdev=False,
  group_file=group_file)``.
* On the device's *first* open (open count 0 -> 1) the device file calls
  ``group_file.use_container(pdev)`` when ``group_file.iommufd`` is None
  (vfio_device_group_use_iommu: ``EINVAL`` without an IOMMU driver set),
  or binds the device to ``group_file.iommufd`` otherwise; on the *last*
  close it calls ``group_file.unuse_container(pdev)`` (resp. unbinds).
  While a device uses the container the group file stays alive even if
  its fd is closed, and VFIO_GROUP_UNSET_CONTAINER fails with ``EBUSY``.
* A device file exposes its :class:`~pyvfio.fake.machine.pci_device.PciDevice`
  as the attribute ``pdev`` (the system counts open files through it).

Contract with iommufd: an iommufd file set with VFIO_GROUP_SET_CONTAINER
offers ``compat_attach_group(vgroup)`` and ``compat_detach_group(vgroup)``.
"""

from __future__ import annotations

import errno
import importlib
import os
import re
from typing import TYPE_CHECKING, Any

from ..._uapi import ffi, lib  # type: ignore[import-not-found,unused-ignore]
from ...backend.base import IoctlArg
from ..core import FakeBackend, FakeFile, errno_error
from ..uaccess import UserPtr
from .container import ContainerFile, vfio_group_unuse_container, vfio_group_use_container

if TYPE_CHECKING:
    from ..machine.system import PciDevice, VfioGroup

__all__ = ["GroupFile", "open_device_file"]

_PAGE_SIZE = 4096


def open_device_file(kernel: FakeBackend, pdev: PciDevice, *, cdev: bool,
                     group_file: GroupFile | None = None) -> FakeFile:
    """The vfio-pci device file of ``pdev`` (``pyvfio.fake.vfio_pci``):
    vfio_device_open_file's anon inode file with vfio_device_fops.  Tests
    replace this hook to serve GET_DEVICE_FD without vfio-pci."""
    vfio_pci = importlib.import_module("..vfio_pci", __package__)
    file: FakeFile = vfio_pci.open_device_file(kernel, pdev, cdev=cdev, group_file=group_file)
    return file


def _strndup_user(user: UserPtr, limit: int) -> bytes:
    """strndup_user: the NUL-terminated string at ``user`` (EINVAL if longer
    than ``limit`` bytes with its NUL, EFAULT if unreadable), read a page
    (or the argument's known extent) at a time."""
    out = bytearray()
    pos = 0
    while pos < limit:
        if user.extent is not None:
            chunk_len = user.extent - pos
            if chunk_len <= 0:
                # strnlen_user: EFAULT past the end of the argument
                raise errno_error(errno.EFAULT, "unterminated string")
        else:
            chunk_len = _PAGE_SIZE - ((user.address + pos) % _PAGE_SIZE)
        chunk_len = min(chunk_len, limit - pos)
        chunk = user.read(pos, chunk_len)
        nul = chunk.find(b"\0")
        if nul >= 0:
            out += chunk[:nul]
            return bytes(out)
        out += chunk
        pos += chunk_len
    # strndup_user: EINVAL when there is no NUL within the limit
    raise errno_error(errno.EINVAL, f"string longer than {limit - 1} bytes")


_UUID = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"


def _vfio_pci_match(pdev: PciDevice, buf: str) -> int:
    """vfio_pci_core_match: 1 match, 0 no match, -errno error."""
    name = pdev.bdf
    if not buf.startswith(name):
        return 0
    rest = buf[len(name):]
    vf_token = False
    if rest:
        if rest[0] != " ":
            return 0
        pos = 0
        while pos < len(rest):
            if rest[pos] == " ":
                pos += 1
                continue
            if not vf_token and rest.startswith("vf_token=", pos):
                pos += len("vf_token=")
                if len(rest) - pos < 36:
                    # vfio_pci_core_match: EINVAL for a token that is no UUID
                    return -errno.EINVAL
                if not re.fullmatch(_UUID, rest[pos:pos + 36]):
                    # vfio_pci_core_match: EINVAL for a token that is no UUID
                    return -errno.EINVAL
                vf_token = True
                pos += 36
            else:
                # vfio_pci_core_match: EINVAL for an unknown or repeated option
                return -errno.EINVAL
    if vf_token:
        # vfio_pci_core_match_token_uuid: EINVAL for a token on a device
        # that is neither a PF with VFs nor a VF
        return -errno.EINVAL
    return 1


class GroupFile(FakeFile):
    """``/dev/vfio/N``: an open vfio group (struct vfio_group's file).

    :ivar vgroup: the vfio group.
    :ivar fd_closed: the group's fd was closed.
    :ivar holders: references held by devices using the container
        (get_file in vfio_group_use_container).
    """

    def __init__(self, kernel: FakeBackend, vgroup: VfioGroup) -> None:
        super().__init__(kernel)
        self.vgroup = vgroup
        self.path = vgroup.dev_path
        self.fd_closed = False
        self.holders = 0

    @classmethod
    def open(cls, kernel: FakeBackend, vgroup: VfioGroup) -> GroupFile:
        """vfio_group_fops_open."""
        if vgroup.drivers == 0:
            # vfio_group_fops_open: ENODEV while the group is being removed
            raise errno_error(errno.ENODEV, vgroup.dev_path)
        if vgroup.noiommu and not kernel.system.cap_sys_rawio:
            # vfio_group_fops_open: EPERM for no-IOMMU groups without CAP_SYS_RAWIO
            raise errno_error(errno.EPERM, "no-IOMMU needs CAP_SYS_RAWIO")
        if vgroup.cdev_device_open_cnt:
            # vfio_group_fops_open: EBUSY while a device of the group is used through its cdev
            raise errno_error(errno.EBUSY, f"a device of {vgroup.dev_path} is open through its cdev")
        if vgroup.opened_file is not None:
            # vfio_group_fops_open: EBUSY, the group can be open only once
            raise errno_error(errno.EBUSY, f"{vgroup.dev_path} is already open")
        f = cls(kernel, vgroup)
        vgroup.opened_file = f
        return f

    def __repr__(self) -> str:
        return f"<GroupFile {self.path}>"

    @property
    def iommufd(self) -> Any:
        """The iommufd set with VFIO_GROUP_SET_CONTAINER (compat), or None."""
        return self.vgroup.iommufd

    @property
    def container(self) -> ContainerFile | None:
        """The container the group is attached to (VFIO_GROUP_SET_CONTAINER),
        or None."""
        c: ContainerFile | None = self.vgroup.container
        return c

    # -- used by the device file ------------------------------------------------------
    def use_container(self, pdev: PciDevice) -> None:
        """vfio_device_group_use_iommu: a device of the group is opened for
        the first time through the container (vfio_group_use_container);
        the device holds the group file."""
        vfio_group_use_container(self.vgroup)
        self.holders += 1  # vfio_group_use_container: get_file(group->opened_file)

    def unuse_container(self, pdev: PciDevice) -> None:
        """vfio_device_group_unuse_iommu: the device's last file closed
        (vfio_group_unuse_container), its hold on the group file ends."""
        assert self.holders > 0, "unuse_container without use_container"
        vfio_group_unuse_container(self.vgroup)
        self.holders -= 1  # vfio_group_unuse_container: fput(group->opened_file)
        if self.fd_closed and not self.holders:
            self.vfio_group_fops_release()

    # -- ioctls -------------------------------------------------------------------------
    def ioctl(self, request: int, arg: IoctlArg) -> int:
        """vfio_group_fops_unl_ioctl."""
        if request == lib.VFIO_GROUP_GET_DEVICE_FD:
            return self.vfio_group_ioctl_get_device_fd(arg)
        if request == lib.VFIO_GROUP_GET_STATUS:
            return self.vfio_group_ioctl_get_status(arg)
        if request == lib.VFIO_GROUP_SET_CONTAINER:
            return self.vfio_group_ioctl_set_container(arg)
        if request == lib.VFIO_GROUP_UNSET_CONTAINER:
            return self.vfio_group_ioctl_unset_container()
        # vfio_group_fops_unl_ioctl: ENOTTY for anything else
        raise errno_error(errno.ENOTTY)

    def vfio_group_ioctl_get_status(self, arg: IoctlArg) -> int:
        """VFIO_GROUP_GET_STATUS: vfio_group_ioctl_get_status."""
        user = UserPtr(arg)
        minsz = ffi.offsetof("struct vfio_group_status", "flags") + 4
        # copy_from_user: EFAULT for a bad pointer
        status = user.read_struct("struct vfio_group_status", length=minsz)
        if int(status.argsz) < minsz:
            # vfio_group_ioctl_get_status: EINVAL when argsz is below the minimum
            raise errno_error(errno.EINVAL, "argsz too small")
        vgroup = self.vgroup
        if vgroup.iommu_group is None:
            # vfio_group_ioctl_get_status: ENODEV once the group was removed
            raise errno_error(errno.ENODEV, "the group is gone")
        flags = 0
        if vgroup.has_iommu():
            flags |= lib.VFIO_GROUP_FLAGS_CONTAINER_SET | lib.VFIO_GROUP_FLAGS_VIABLE
        elif not vgroup.iommu_group.dma_owner_claimed():
            flags |= lib.VFIO_GROUP_FLAGS_VIABLE
        status.flags = flags
        # copy_to_user: EFAULT for a bad pointer
        user.write_struct(status, length=minsz)
        return 0

    def vfio_group_ioctl_set_container(self, arg: IoctlArg) -> int:
        """VFIO_GROUP_SET_CONTAINER: vfio_group_ioctl_set_container, with a
        container fd or an iommufd (compat)."""
        # get_user: EFAULT for a bad pointer
        fd = int(UserPtr(arg).read_struct("int")[0])
        target = self.kernel.file_or_none(fd)
        if target is None:
            try:
                os.fstat(fd)
            except OSError:
                # vfio_group_ioctl_set_container: EBADF for a closed fd
                raise errno_error(errno.EBADF, f"fd {fd}") from None
        vgroup = self.vgroup
        if vgroup.has_iommu():
            # vfio_group_ioctl_set_container: EINVAL when a container is already set
            raise errno_error(errno.EINVAL, "the group already has a container")
        if vgroup.iommu_group is None:
            # vfio_group_ioctl_set_container: ENODEV once the group was removed
            raise errno_error(errno.ENODEV, "the group is gone")
        if isinstance(target, ContainerFile):  # vfio_container_from_file
            target.attach_group(vgroup)
            return 0
        attach = getattr(target, "compat_attach_group", None)
        if target is not None and callable(attach):  # iommufd_ctx_from_file
            # iommufd_vfio_compat_ioas_create / _set_no_iommu
            attach(vgroup)
            vgroup.iommufd = target
            return 0
        # vfio_group_ioctl_set_container: EBADFD for an fd that is neither
        raise errno_error(errno.EBADFD, f"fd {fd} is not a container or an iommufd")

    def _iommufd_ctx_put(self) -> None:
        """iommufd_ctx_put of the compat iommufd: the group leaves it."""
        vgroup = self.vgroup
        detach = getattr(vgroup.iommufd, "compat_detach_group", None)
        if callable(detach):
            detach(vgroup)
        vgroup.iommufd = None

    def vfio_group_ioctl_unset_container(self) -> int:
        """VFIO_GROUP_UNSET_CONTAINER: vfio_group_ioctl_unset_container."""
        vgroup = self.vgroup
        if not vgroup.has_iommu():
            # vfio_group_ioctl_unset_container: EINVAL without a container
            raise errno_error(errno.EINVAL, "no container set")
        if vgroup.container is not None:
            if vgroup.container_users != 1:
                # vfio_group_ioctl_unset_container: EBUSY while devices use the container
                raise errno_error(errno.EBUSY, "devices of the group are open")
            vgroup.container.detach_group(vgroup)
        if vgroup.iommufd is not None:
            self._iommufd_ctx_put()
        return 0

    def vfio_group_ioctl_get_device_fd(self, arg: IoctlArg) -> int:
        """VFIO_GROUP_GET_DEVICE_FD: vfio_group_ioctl_get_device_fd; the new
        fd of the device file."""
        # strndup_user: EFAULT for a bad pointer, EINVAL past PAGE_SIZE
        buf = _strndup_user(UserPtr(arg), _PAGE_SIZE).decode("latin-1")
        pdev = self.vfio_device_get_from_name(buf)
        # vfio_group_ioctl_get_device_fd: the fd is reserved before the file
        # is opened, and given back (put_unused_fd) when the open fails
        fd = self.kernel.get_unused_fd()
        try:
            file = self.vfio_device_open_file(pdev)
        except BaseException:
            self.kernel.put_unused_fd(fd)
            raise
        self.kernel.fd_install(fd, file)
        return fd

    def vfio_device_get_from_name(self, buf: str) -> PciDevice:
        """vfio_device_get_from_name: the group's device that matches
        ``buf`` (vfio_pci_core_match), newest registration first."""
        for pdev in self.vgroup.devices:
            ret = _vfio_pci_match(pdev, buf)
            if ret < 0:
                # vfio_device_get_from_name: the match's error ends the search
                raise errno_error(-ret, f"bad device name {buf!r}")
            if ret:
                return pdev
        # vfio_device_get_from_name: ENODEV when no device matches
        raise errno_error(errno.ENODEV, f"no device {buf!r} in {self.vgroup.dev_path}")

    def vfio_device_open_file(self, pdev: PciDevice) -> FakeFile:
        """vfio_device_open_file: the device file, opened through the group
        (vfio_df_group_open)."""
        if not self.vgroup.has_iommu():
            # vfio_df_group_open: EINVAL without a container or iommufd
            raise errno_error(errno.EINVAL, "the group has no container")
        return open_device_file(self.kernel, pdev, cdev=False, group_file=self)

    def release(self) -> None:
        """The fd closed; the file goes away once no device holds it."""
        with self.system.lock:
            self.fd_closed = True
            if not self.holders:
                self.vfio_group_fops_release()

    def vfio_group_fops_release(self) -> None:
        """vfio_group_fops_release: the last reference to the file went."""
        vgroup = self.vgroup
        if vgroup.container is not None:
            vgroup.container.detach_group(vgroup)
        if vgroup.iommufd is not None:
            self._iommufd_ctx_put()
        if vgroup.opened_file is self:
            vgroup.opened_file = None
