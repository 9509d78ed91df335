"""The legacy VFIO container, ``/dev/vfio/vfio``, after
drivers/vfio/container.c of Linux 7.3: VFIO_GET_API_VERSION,
VFIO_CHECK_EXTENSION and VFIO_SET_IOMMU over the registered IOMMU drivers
(type1, :mod:`~pyvfio.fake.vfio.vfio_iommu_type1`, and vfio-noiommu,
here), the container side of a group joining and leaving, and a group's
devices using the container.

Every check carries a comment naming the kernel function whose rule it
mirrors; checks run in the kernel's order.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Union

from ..._uapi import lib  # type: ignore[import-not-found,unused-ignore]
from ...backend.base import IoctlArg
from ..core import FakeBackend, FakeFile, errno_error
from ..uaccess import UserPtr
from .vfio_iommu_type1 import Type1Iommu, vfio_iommu_type1_check_extension, vfio_iommu_type1_open

if TYPE_CHECKING:
    from ..machine.system import System, VfioGroup

__all__ = ["ContainerFile", "iter_containers", "vfio_group_unuse_container", "vfio_group_use_container"]


# -- vfio-noiommu (vfio_noiommu_ops) ----------------------------------------------------
class _NoIommu:
    """The vfio-noiommu "IOMMU driver": nothing to attach, nothing to map."""

    def __init__(self, system: System) -> None:
        self.system = system

    def check_extension(self, arg: int) -> int:
        """vfio_noiommu_ioctl for VFIO_CHECK_EXTENSION."""
        return vfio_noiommu_check_extension(self.system, arg)

    def ioctl(self, request: int, arg: IoctlArg) -> int:
        """ops->ioctl: vfio_noiommu_ioctl."""
        if request == lib.VFIO_CHECK_EXTENSION:
            return self.check_extension(UserPtr(arg).address)  # the unsigned long itself
        # vfio_noiommu_ioctl: ENOTTY for everything else
        raise errno_error(errno.ENOTTY)

    def attach_group(self, vgroup: VfioGroup) -> None:
        """ops->attach_group: vfio_noiommu_attach_group (nothing to do)."""

    def detach_group(self, vgroup: VfioGroup) -> None:
        """ops->detach_group: vfio_noiommu_detach_group (nothing to do)."""

    def release(self) -> None:
        """ops->release: vfio_noiommu_release (nothing to do)."""


def vfio_noiommu_check_extension(system: System, arg: int) -> int:
    """vfio_noiommu_ioctl(VFIO_CHECK_EXTENSION): 1 for VFIO_NOIOMMU_IOMMU
    when no-IOMMU mode is enabled (the module option), 0 otherwise."""
    return 1 if system.noiommu and arg == lib.VFIO_NOIOMMU_IOMMU else 0


def vfio_noiommu_open(system: System, arg: int) -> _NoIommu:
    """vfio_noiommu_open."""
    if arg != lib.VFIO_NOIOMMU_IOMMU:
        # vfio_noiommu_open: EINVAL for any other type
        raise errno_error(errno.EINVAL, f"IOMMU type {arg}")
    if not system.cap_sys_rawio:
        # vfio_noiommu_open: EPERM without CAP_SYS_RAWIO
        raise errno_error(errno.EPERM, "no-IOMMU needs CAP_SYS_RAWIO")
    return _NoIommu(system)


# -- the registered IOMMU drivers (vfio.iommu_drivers_list) --------------------------------
_IommuData = Union[Type1Iommu, _NoIommu]


@dataclass(frozen=True)
class _IommuDriver:
    """A registered vfio IOMMU driver (struct vfio_iommu_driver_ops), as far
    as the container uses it without an instance."""

    name: str
    #: The kernel module that registers it; None for the vfio core itself.
    module: str | None
    #: The vfio-noiommu driver (vfio_iommu_driver_allowed tells them apart).
    noiommu: bool
    #: ops->ioctl(NULL, VFIO_CHECK_EXTENSION, arg)
    check_extension: Callable[[System, int], int]
    #: ops->open(arg)
    open: Callable[[System, int], _IommuData]


#: vfio_register_iommu_driver adds at the head: vfio-iommu-type1 (loaded
#: after the vfio core) comes before vfio-noiommu (registered by
#: vfio_container_init).
_IOMMU_DRIVERS = (
    _IommuDriver("vfio-iommu-type1", "vfio_iommu_type1", False,
                 lambda system, arg: vfio_iommu_type1_check_extension(system, None, arg),
                 vfio_iommu_type1_open),
    _IommuDriver("vfio-noiommu", None, True, vfio_noiommu_check_extension, vfio_noiommu_open),
)


def _iommu_drivers(system: System) -> list[_IommuDriver]:
    """The registered IOMMU drivers, most recently registered first."""
    return [drv for drv in _IOMMU_DRIVERS if drv.module is None or system.modules[drv.module]]


# -- the container ------------------------------------------------------------------------
class ContainerFile(FakeFile):
    """``/dev/vfio/vfio``: a container (struct vfio_container).

    The container outlives its fd while groups are attached to it; the
    IOMMU driver is released when the last group leaves.

    :ivar groups: the attached vfio groups, newest first.
    :ivar iommu: the IOMMU driver's instance once VFIO_SET_IOMMU succeeded.
    :ivar noiommu: the attached groups are no-IOMMU groups.
    :ivar fd_closed: the container's fd was closed.
    """

    path = "/dev/vfio/vfio"

    def __init__(self, kernel: FakeBackend) -> None:
        """vfio_fops_open."""
        super().__init__(kernel)
        self.groups: list[VfioGroup] = []
        self.iommu: _IommuData | None = None
        self.noiommu = False
        self.fd_closed = False

    def __repr__(self) -> str:
        return f"<ContainerFile groups={[g.name for g in self.groups]} iommu={self.iommu!r}>"

    def vfio_iommu_driver_allowed(self, drv: _IommuDriver) -> bool:
        """vfio_iommu_driver_allowed: no-IOMMU groups only with
        vfio-noiommu, IOMMU groups only with the others."""
        return self.noiommu == drv.noiommu

    # -- ioctls -------------------------------------------------------------------------
    def ioctl(self, request: int, arg: IoctlArg) -> int:
        """vfio_fops_unl_ioctl."""
        if request == lib.VFIO_GET_API_VERSION:
            return int(lib.VFIO_API_VERSION)
        if request == lib.VFIO_CHECK_EXTENSION:
            return self.vfio_container_ioctl_check_extension(UserPtr(arg).address)
        if request == lib.VFIO_SET_IOMMU:
            return self.vfio_ioctl_set_iommu(UserPtr(arg).address)
        if self.iommu is not None:
            # vfio_fops_unl_ioctl: everything else goes to the IOMMU driver
            return self.iommu.ioctl(request, arg)
        # vfio_fops_unl_ioctl: EINVAL for other ioctls before SET_IOMMU
        raise errno_error(errno.EINVAL, "no IOMMU set")

    def vfio_container_ioctl_check_extension(self, arg: int) -> int:
        """VFIO_CHECK_EXTENSION: vfio_container_ioctl_check_extension.  The
        IOMMU set answers; before SET_IOMMU the first driver (allowed for
        the attached groups) with a positive answer."""
        if self.iommu is not None:
            return self.iommu.check_extension(arg)
        ret = 0
        for drv in _iommu_drivers(self.system):
            if self.groups and not self.vfio_iommu_driver_allowed(drv):
                continue
            ret = drv.check_extension(self.system, arg)
            if ret > 0:
                break
        return ret

    def vfio_ioctl_set_iommu(self, arg: int) -> int:
        """VFIO_SET_IOMMU: vfio_ioctl_set_iommu.  Each allowed driver that
        reports the extension ``arg`` is opened and given every group; the
        first that takes them all is the container's IOMMU."""
        if not self.groups or self.iommu is not None:
            # vfio_ioctl_set_iommu: EINVAL without a group or with an IOMMU already set
            raise errno_error(errno.EINVAL, "no group attached" if not self.groups else "IOMMU already set")
        # vfio_ioctl_set_iommu: ENODEV when no driver supports the type
        err: OSError = errno_error(errno.ENODEV, f"no IOMMU driver for type {arg}")
        for drv in _iommu_drivers(self.system):
            if not self.vfio_iommu_driver_allowed(drv):
                continue
            if drv.check_extension(self.system, arg) <= 0:
                continue
            try:
                data = drv.open(self.system, arg)
            except OSError as e:
                err = e
                continue
            try:
                self._attach_groups(data)
            except OSError as e:
                data.release()
                err = e
                continue
            self.iommu = data
            return 0
        raise err

    def _attach_groups(self, data: _IommuData) -> None:
        """__vfio_container_attach_groups: every group to the new IOMMU, or
        none (the ones attached are detached again, newest first)."""
        attached: list[VfioGroup] = []
        try:
            for vgroup in self.groups:
                data.attach_group(vgroup)
                attached.append(vgroup)
        except OSError:
            for vgroup in reversed(attached):
                data.detach_group(vgroup)
            raise

    # -- groups ------------------------------------------------------------------------
    def attach_group(self, vgroup: VfioGroup) -> None:
        """vfio_container_attach_group: VFIO_GROUP_SET_CONTAINER with this
        container."""
        system = self.system
        if vgroup.noiommu and not system.cap_sys_rawio:
            # vfio_container_attach_group: EPERM for no-IOMMU without CAP_SYS_RAWIO
            raise errno_error(errno.EPERM, "no-IOMMU needs CAP_SYS_RAWIO")
        if self.groups and self.noiommu != vgroup.noiommu:
            # vfio_container_attach_group: EPERM when mixing no-IOMMU and IOMMU groups
            raise errno_error(errno.EPERM, "cannot mix no-IOMMU and IOMMU groups")
        group = vgroup.iommu_group
        assert group is not None
        if not vgroup.noiommu:
            # iommu_group_claim_dma_owner: EPERM while a kernel driver uses the group
            group.claim_dma_owner(vgroup)
        if self.iommu is not None:
            try:
                self.iommu.attach_group(vgroup)
            except OSError:
                # vfio_container_attach_group: a failed attach gives the ownership back
                if not vgroup.noiommu:
                    group.release_dma_owner()
                raise
        vgroup.container = self
        vgroup.container_users = 1
        self.noiommu = vgroup.noiommu
        self.groups.insert(0, vgroup)

    def detach_group(self, vgroup: VfioGroup) -> None:
        """vfio_group_detach_container: the group leaves; the last group
        deprivileges the container (the IOMMU driver is released)."""
        if self.iommu is not None:
            self.iommu.detach_group(vgroup)
        if not vgroup.noiommu and vgroup.iommu_group is not None:
            vgroup.iommu_group.release_dma_owner()
        vgroup.container = None
        vgroup.container_users = 0
        self.groups.remove(vgroup)
        # vfio_group_detach_container: the last group takes the IOMMU away
        if self.iommu is not None and not self.groups:
            self.iommu.release()
            self.iommu = None

    def release(self) -> None:
        """vfio_fops_release: the container lives on while groups use it."""
        with self.system.lock:
            self.fd_closed = True


def vfio_group_use_container(vgroup: VfioGroup) -> None:
    """vfio_group_use_container: a device of ``vgroup`` is opened for the
    first time through its container (the group file takes the reference
    on itself)."""
    if vgroup.container is None or vgroup.container.iommu is None:
        # vfio_group_use_container: EINVAL without a container IOMMU
        raise errno_error(errno.EINVAL, "the container has no IOMMU set")
    if vgroup.noiommu and not vgroup.system.cap_sys_rawio:
        # vfio_group_use_container: EPERM for no-IOMMU without CAP_SYS_RAWIO
        raise errno_error(errno.EPERM, "no-IOMMU needs CAP_SYS_RAWIO")
    vgroup.container_users += 1


def vfio_group_unuse_container(vgroup: VfioGroup) -> None:
    """vfio_group_unuse_container: the device's last file closed."""
    vgroup.container_users -= 1


def iter_containers(kernel: FakeBackend) -> Iterator[ContainerFile]:
    """Open containers of a backend (for tests and debugging)."""
    for f in kernel.open_files:
        if isinstance(f, ContainerFile):
            yield f
