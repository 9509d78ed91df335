"""VFIO groups (``/dev/vfio/N``): the unit of isolation of the legacy
interface.  A group is attached to a type1 container
(:mod:`pyvfio.core.container`) and opens its devices.

Typical use::

    with Container() as container, Group(26) as group:
        group.set_container(container)
        container.set_iommu(IommuType.TYPE1v2)
        with group.open_device("0000:00:04.0") as device:
            ...
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._uapi import ffi, lib
from ..backend import Backend, resolve_backend
from ..errors import InvalidArgumentError
from . import sysfs, viability
from ._passed import check_fd, class_device_of, fd_stat, require_chrdev
from .device import Device
from .resource import FdResource, adopting, open_node

if TYPE_CHECKING:
    from .container import Container

__all__ = ["GroupStatus", "Group"]


@dataclass(frozen=True)
class GroupStatus:
    """VFIO_GROUP_GET_STATUS.

    Thread safety: immutable; safe to share between threads.
    """

    flags: int  #: VFIO_GROUP_FLAGS_* bits

    @property
    def viable(self) -> bool:
        """Every device in the group is usable by the user (no host driver)."""
        return bool(self.flags & lib.VFIO_GROUP_FLAGS_VIABLE)

    @property
    def container_set(self) -> bool:
        """The group is attached to a container."""
        return bool(self.flags & lib.VFIO_GROUP_FLAGS_CONTAINER_SET)


class Group(FdResource):
    """A VFIO group: ``/dev/vfio/N``, the unit of isolation.

    ``group`` is the IOMMU group number or the path of the group's device
    node.  Opening refuses a non-viable group only when it is used
    (the kernel checks at :meth:`set_container`); :meth:`viability` explains
    what blocks it.

    Thread safety: set it up (:meth:`set_container`,
    :meth:`unset_container`, opening devices) from one thread: its link to
    the container is plain Python state without a lock. Status queries are
    single ioctls, safe from any thread.
    """

    kind = "group"

    def __init__(self, group: int | str, *, backend: Backend | None = None) -> None:
        b = resolve_backend(backend)
        if isinstance(group, int):
            path = sysfs.group_dev_path(group, b)
            group_id = group
        else:
            path = group
            tail = os.path.basename(group).rsplit("-", 1)[-1]
            group_id = int(tail) if tail.isdigit() else -1
        super().__init__(open_node(b, path), b)
        self.id = group_id  #: the IOMMU group number
        self.path = path  #: the group's device node
        self._container: Container | None = None

    @classmethod
    def for_device(cls, bdf: str, *, backend: Backend | None = None) -> Group:
        """Open the group that PCI device ``bdf`` belongs to."""
        return cls(sysfs.device_group(bdf, backend), backend=backend)

    @classmethod
    def from_fd(cls, fd: int, *, closefd: bool = True, container: Container | None = None,
                backend: Backend | None = None) -> Group:
        """A group opened elsewhere: an fd of ``/dev/vfio/N`` received from
        a privileged process (:mod:`pyvfio.toolkit.fdpass`) or inherited.
        Checked with fstat: a character device, and a vfio group's device
        number when sysfs shows it (which also gives :attr:`id`; -1 when
        sysfs cannot be read); InvalidArgumentError (ENOTTY) otherwise.
        ``container`` records the container the sender already attached
        the group to (VFIO_GROUP_GET_STATUS must say so: EINVAL
        otherwise); it is not attached again.

        ``closefd`` says who closes ``fd``: True (the default, as with
        Rust's ``OwnedFd::from_raw_fd`` and :func:`os.fdopen`) gives it to
        the object, which closes it on :meth:`close`; False borrows it:
        closing the object releases what pyvfio made through it and leaves
        ``fd`` open, the caller's to close.  When a check fails, nothing
        is closed and the fd is still the caller's."""
        b = resolve_backend(backend)
        check_fd(fd, "Group.from_fd")
        st = fd_stat(b, fd, "Group.from_fd")
        require_chrdev(st, fd, "a VFIO group (/dev/vfio/N)")
        found = class_device_of(b, st, fd, "a VFIO group (/dev/vfio/N)", ("vfio",))
        path = f"/dev/vfio/{found[1]}" if found is not None else f"fd {fd}"
        with adopting(fd):
            obj = cls(path, backend=b)
        obj._closefd = False  # the caller's until every check passed
        if container is not None:
            try:
                if not obj.status.container_set:
                    raise InvalidArgumentError(
                        "the group is not attached to a container (VFIO_GROUP_GET_STATUS)",
                        target=obj.describe())
            except BaseException:
                obj.close()
                raise
            obj._container = container
            container._groups.append(obj)
        obj._closefd = closefd
        return obj

    def describe(self) -> str:
        return f"group {self.id}"

    def _hint(self, err: int, name: str, arg: Any, target: Any) -> str | None:
        if name != "VFIO_GROUP_GET_DEVICE_FD":
            return None
        device = ffi.string(arg).decode(errors="replace") if arg else ""
        if err == errno.ENODEV:
            members = sysfs.group_devices(self.id, self._backend) if self.id >= 0 else []
            if device not in members and not self._backend.exists(
                    f"{sysfs.PCI_DEVICES}/{device}"):
                return (f"there is no device {device} on this machine (`pyvfio status` lists "
                        f"the PCI devices; {self.describe()} has "
                        f"{', '.join(members) or 'none'})")
            if device not in members:
                return (f"{device} is not a device of {self.describe()} (its devices: "
                        f"{', '.join(members) or 'none'}); open it through its own group: "
                        "Group.for_device(bdf)")
            return None
        if err != errno.EINVAL:
            return None
        # vfio_df_group_open: EINVAL while the group has no container (or
        # iommufd); vfio_device_group_use_iommu: EINVAL while the container
        # has no IOMMU model.
        status = ffi.new("struct vfio_group_status *")
        status.argsz = ffi.sizeof(status[0])
        self._backend.ioctl(self._fd, lib.VFIO_GROUP_GET_STATUS, status)
        if not status.flags & lib.VFIO_GROUP_FLAGS_CONTAINER_SET:
            return ("the group is in no container: call group.set_container(container) and "
                    "container.set_iommu(IommuType.TYPE1v2) before opening its devices")
        container = self._container
        if container is not None and container.iommu_type is None:
            return (f"{container.describe()} has no IOMMU model set: call "
                    "container.set_iommu(IommuType.TYPE1v2) before opening the group's devices")
        if " " in device:
            return ("the device name's options are not valid: 'BDF vf_token=UUID', with a "
                    "token only for a VF or a PF with VFs")
        return None

    @property
    def noiommu(self) -> bool:
        """True for an unsafe no-IOMMU group (``/dev/vfio/noiommu-N``)."""
        return os.path.basename(self.path).startswith("noiommu-")

    # -- state --------------------------------------------------------------------
    @property
    def status(self) -> GroupStatus:
        """VFIO_GROUP_GET_STATUS."""
        arg = ffi.new("struct vfio_group_status *")
        arg.argsz = ffi.sizeof(arg[0])
        self._ioctl("VFIO_GROUP_GET_STATUS", lib.VFIO_GROUP_GET_STATUS, arg)
        return GroupStatus(int(arg.flags))

    @property
    def viable(self) -> bool:
        """Whether the kernel considers the group viable."""
        return self.status.viable

    @property
    def devices(self) -> list[str]:
        """BDFs of the devices in this group (from sysfs)."""
        return sysfs.group_devices(self.id, self._backend)

    def viability(self) -> list[viability.Blocker]:
        """Devices that keep the group from being viable (empty when viable)."""
        return viability.viability_blockers(self.id, self._backend)

    @property
    def container(self) -> Container | None:
        """The container this group was attached to through pyvfio."""
        return self._container

    # -- container ------------------------------------------------------------------
    def set_container(self, container: Container) -> None:
        """VFIO_GROUP_SET_CONTAINER.  Fails with :class:`NotViableError`
        (naming the blocking devices) when the group is not viable."""
        self._check_open()
        container._check_open()
        arg = ffi.new("__s32 *", container.fd)
        try:
            self._ioctl("VFIO_GROUP_SET_CONTAINER", lib.VFIO_GROUP_SET_CONTAINER, arg)
        except OSError as exc:
            if exc.errno == errno.EPERM and self.id >= 0:  # the DMA ownership claim failed
                verdict = viability.explain_group(self.id, backend=self._backend)
                if verdict.blockers:
                    raise verdict.error(ioctl="VFIO_GROUP_SET_CONTAINER",
                                          target=self.describe(), cause=exc) from None
            raise
        self._container = container
        container._groups.append(self)

    def unset_container(self) -> None:
        """VFIO_GROUP_UNSET_CONTAINER (close the group's devices first)."""
        self._ioctl("VFIO_GROUP_UNSET_CONTAINER", lib.VFIO_GROUP_UNSET_CONTAINER)
        self._detach_from_container()

    def _detach_from_container(self) -> None:
        container, self._container = self._container, None
        if container is not None and self in container._groups:
            container._groups.remove(self)
            if not container._groups:
                container._iommu_released()

    # -- devices --------------------------------------------------------------------
    def get_device_fd(self, name: str) -> int:
        """VFIO_GROUP_GET_DEVICE_FD: a raw fd for device ``name`` (a BDF for
        PCI).  Prefer :meth:`open_device`, which owns the fd."""
        self._check_open()
        arg = ffi.new("char[]", name.encode())
        return self._ioctl("VFIO_GROUP_GET_DEVICE_FD", lib.VFIO_GROUP_GET_DEVICE_FD, arg,
                           target=f"{self.describe()} (device {name})")

    def open_device(self, name: str) -> Device:
        """Open device ``name`` of this group; closed before the group is."""
        if _looks_like_bdf(name):
            name = sysfs.normalize_bdf(name)
        fd = self.get_device_fd(name)
        return self._adopt(Device(fd, name, backend=self._backend, group=self))

    def _release(self) -> None:
        # Closing the group fd detaches it from its container in the kernel.
        self._detach_from_container()
        super()._release()


def _looks_like_bdf(name: str) -> bool:
    try:
        sysfs.normalize_bdf(name)
        return True
    except InvalidArgumentError:
        return False
