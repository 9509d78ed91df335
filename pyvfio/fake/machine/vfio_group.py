"""The vfio core's side of the machine: vfio groups (drivers/vfio/group.c)
and the registration of vfio devices (drivers/vfio/vfio_main.c), which
the vfio-pci driver's probe and remove do (vfio_pci_core_register_device,
vfio_unregister_group_dev).

A :class:`VfioGroup` exists while at least one device of an IOMMU group is
bound to vfio-pci and backs ``/dev/vfio/N``; registration gives the
device its index (``/dev/vfio/devices/vfioN``).  No-IOMMU mode makes a
fresh ``vfio-noiommu`` group for a device without an IOMMU group.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any

from ..core import FakeFile, errno_error
from .iommu import IommuGroup

if TYPE_CHECKING:
    from .pci_device import PciDevice
    from .system import System

__all__ = ["VfioGroup", "vfio_pci_probe", "vfio_pci_remove"]


class VfioGroup:
    """The vfio core's group object (struct vfio_group): exists while at
    least one device of the IOMMU group is bound to a vfio driver, and
    backs ``/dev/vfio/N`` (``/dev/vfio/noiommu-N``).

    The group file (``pyvfio.fake.vfio.group.GroupFile``) and the cdev
    path keep their state here, so that both see each other's claims.
    """

    def __init__(self, system: System, iommu_group: IommuGroup, noiommu: bool) -> None:
        self.system = system
        #: None once the last vfio device left: the group is dead.
        self.iommu_group: IommuGroup | None = iommu_group
        self.id = iommu_group.id
        self.noiommu = noiommu
        #: Devices registered with vfio (vfio_device_group_register), newest first.
        self.devices: list[PciDevice] = []
        #: Number of vfio drivers bound in the group (refcount group->drivers).
        self.drivers = 0
        #: The open /dev/vfio/N file, if any (group->opened_file).
        self.opened_file: FakeFile | None = None
        #: Legacy container (a vfio.ContainerFile) the group is attached to.
        self.container: Any = None
        #: Devices using the container (group->container_users).
        self.container_users = 0
        #: iommufd context set through VFIO_GROUP_SET_CONTAINER (compat).
        self.iommufd: Any = None
        #: Devices of the group opened through their cdev and bound to an
        #: iommufd (group->cdev_device_open_cnt).
        self.cdev_device_open_cnt = 0

    @property
    def name(self) -> str:
        """The node name under /dev/vfio: ``"N"`` or ``"noiommu-N"``."""
        return f"noiommu-{self.id}" if self.noiommu else str(self.id)

    @property
    def dev_path(self) -> str:
        """``/dev/vfio/N`` (``/dev/vfio/noiommu-N``)."""
        return f"/dev/vfio/{self.name}"

    @property
    def alive(self) -> bool:
        """The group still has a vfio device; False once it was removed."""
        return self.iommu_group is not None

    def has_iommu(self) -> bool:
        """vfio_group_has_iommu: a container or an iommufd is set."""
        return self.container is not None or self.iommufd is not None

    def block_group(self) -> None:
        """vfio_device_block_group: a device of this group is being bound to
        an iommufd through its cdev.  EBUSY while /dev/vfio/N is open."""
        if self.opened_file is not None:
            # vfio_device_block_group: EBUSY while the group file is open
            raise errno_error(errno.EBUSY, f"{self.dev_path} is open")
        self.cdev_device_open_cnt += 1

    def unblock_group(self) -> None:
        """vfio_device_unblock_group."""
        assert self.cdev_device_open_cnt > 0, "unblock_group without block_group"
        self.cdev_device_open_cnt -= 1

    def __repr__(self) -> str:
        state = "" if self.alive else " (removed)"
        return f"<VfioGroup {self.name}{state}>"


# -- the vfio-pci driver's probe and remove ----------------------------------------------
def vfio_pci_probe(pdev: PciDevice) -> int:
    """vfio_pci_probe: register ``pdev`` with vfio (its group, its index);
    0, or a positive errno."""
    system = pdev.system
    # vfio_pci_core_register_device: EINVAL for anything but a normal
    # (type 0) header, e.g. bridges
    if pdev.header_type != 0:
        return errno.EINVAL
    # vfio_init_device: the device index comes first
    index = 0
    while index in system.vfio_device_ida:
        index += 1
    # vfio_device_set_noiommu_and_name: no IOMMU behind the device and
    # no-IOMMU mode on -> a noiommu-vfioN cdev
    noiommu = system.noiommu and pdev.group is None
    group = pdev.group
    if group is None:
        if not noiommu:
            # vfio_group_find_or_alloc: EINVAL without an IOMMU group
            return errno.EINVAL
        # vfio_noiommu_group_alloc: a fresh group named vfio-noiommu
        gid = 0
        while gid in system.groups:
            gid += 1
        group = IommuGroup(system, gid, name="vfio-noiommu")
        group.devices.append(pdev)
        system.groups[gid] = group
        pdev.group = group
    vgroup = group.vfio_group
    if vgroup is None:
        vgroup = VfioGroup(system, group, noiommu=group.name == "vfio-noiommu")
        group.vfio_group = vgroup
    vgroup.drivers += 1
    # __vfio_register_dev: EINVAL if the IOMMU does not keep DMA coherent
    if not vgroup.noiommu and system.iommu is not None and not system.iommu.cache_coherency:
        vfio_device_remove_group(pdev)
        return errno.EINVAL
    system.vfio_device_ida.add(index)
    pdev.vfio_index = index
    pdev.vfio_noiommu = vgroup.noiommu
    vgroup.devices.insert(0, pdev)
    return 0


def vfio_pci_remove(pdev: PciDevice) -> None:
    """vfio_pci_remove: unregister ``pdev`` from vfio; EBUSY while a vfio
    file of the device is open (the kernel would wait)."""
    # vfio_unregister_group_dev: the kernel sends the request interrupt
    # and waits until the user closes the device; the fake signals and
    # refuses instead of blocking.
    if pdev.vfio_open:
        pdev.release_requests += 1
        if pdev.request_release is not None:
            pdev.request_release()
        raise errno_error(errno.EBUSY, f"{pdev.bdf} is open by a VFIO user")
    system = pdev.system
    assert pdev.group is not None and pdev.group.vfio_group is not None
    vgroup = pdev.group.vfio_group
    vgroup.devices.remove(pdev)
    assert pdev.vfio_index is not None
    system.vfio_device_ida.discard(pdev.vfio_index)
    pdev.vfio_index = None
    pdev.vfio_noiommu = False
    vfio_device_remove_group(pdev)


def vfio_device_remove_group(pdev: PciDevice) -> None:
    """vfio_device_remove_group: the device leaves its vfio group, which
    dies with its last device."""
    group = pdev.group
    assert group is not None and group.vfio_group is not None
    vgroup = group.vfio_group
    vgroup.drivers -= 1
    if vgroup.drivers:
        if vgroup.noiommu:
            _noiommu_remove_device(pdev)
        return
    # The last vfio device left: the group node goes away and a
    # container attachment is dropped.
    if vgroup.container is not None:
        vgroup.container.detach_group(vgroup)
    vgroup.iommu_group = None
    group.vfio_group = None
    if vgroup.noiommu:
        _noiommu_remove_device(pdev)


def _noiommu_remove_device(pdev: PciDevice) -> None:
    # iommu_group_remove_device for no-IOMMU groups
    system = pdev.system
    group = pdev.group
    assert group is not None
    group.devices.remove(pdev)
    pdev.group = None
    if not group.devices:
        del system.groups[group.id]

