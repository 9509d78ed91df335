"""Tutorial: IOMMU groups, viability and DMA ownership, on a fake machine
whose group 1 holds three functions of one multi-function device."""

import errno

import pyvfio
from pyvfio import Container, Device, Group, IommuFd
from pyvfio.core import sysfs
from pyvfio.core import viability
from pyvfio.fake import System

backend = System("multi-group").backend

# -- [groups]
for number in sorted(int(g) for g in backend.sysfs_listdir(sysfs.IOMMU_GROUPS)):
    drivers = {bdf: sysfs.device_driver(bdf, backend)
               for bdf in sysfs.group_devices(number, backend)}
    state = "NOT viable" if viability.viability_blockers(number, backend) else "viable"
    print(f"group {number}: {state}: {drivers}")
# group 0: viable: {'0000:00:02.0': 'vfio-pci'}
# group 1: NOT viable: {'0000:00:06.0': 'vfio-pci', '0000:00:06.1': 'vfio-pci', '0000:00:06.2': 'e1000e'}
# group 2: NOT viable: {'0000:00:07.0': 'nvme'}
# -- [/groups]

# -- [not-viable]
with Container(backend=backend) as container, Group(1, backend=backend) as group:
    assert not group.viable
    try:
        group.set_container(container)       # the kernel says EPERM
    except pyvfio.NotViableError as exc:
        assert exc.errno == errno.EPERM
        print(exc.blockers)
        # [('0000:00:06.2', "0000:00:06.2 (Ethernet controller 8086:10d3) is bound ...")]
    else:
        raise AssertionError("a group with a kernel driver in it was accepted")
# -- [/not-viable]

# -- [make-viable]
nic = "0000:00:06.2"
backend.sysfs_write(f"{sysfs.PCI_DEVICES}/{nic}/driver_override", "vfio-pci")
backend.sysfs_write("/sys/bus/pci/drivers/e1000e/unbind", nic)
backend.sysfs_write("/sys/bus/pci/drivers_probe", nic)
assert sysfs.device_driver(nic, backend) == "vfio-pci"
# -- [/make-viable]

# -- [ownership]
with Container(backend=backend) as container, Group(1, backend=backend) as group:
    group.set_container(container)           # group 1 is owned by user space now
    container.set_iommu()
    # Take the NIC away from vfio-pci and try to give it back to e1000e:
    backend.sysfs_write(f"{sysfs.PCI_DEVICES}/{nic}/driver_override", "\n")
    backend.sysfs_write("/sys/bus/pci/drivers/vfio-pci/unbind", nic)
    try:
        backend.sysfs_write("/sys/bus/pci/drivers/e1000e/bind", nic)
    except OSError as exc:
        assert exc.errno == errno.EBUSY      # a kernel driver cannot join the group
    else:
        raise AssertionError("a kernel driver joined a user-owned group")
    assert sysfs.device_driver(nic, backend) is None and group.viable
# The group was released when the container and group were closed:
backend.sysfs_write("/sys/bus/pci/drivers/e1000e/bind", nic)
assert sysfs.device_driver(nic, backend) == "e1000e"
# -- [/ownership]

# -- [one-path]
edu = "0000:00:02.0"                          # alone in group 0, on vfio-pci
with Group(0, backend=backend):               # the group file is open...
    with IommuFd(backend=backend) as iommufd, Device.open(edu, backend=backend) as dev:
        try:
            dev.bind(iommufd)                 # ...so its devices cannot use the cdev path
        except pyvfio.IoctlError as exc:
            assert exc.errno == errno.EBUSY
        else:
            raise AssertionError("cdev bound while the group file is open")
with IommuFd(backend=backend) as iommufd, Device.open(edu, backend=backend) as dev:
    dev.bind(iommufd)                         # and while a cdev is bound...
    try:
        Group(0, backend=backend)             # ...the group file cannot be opened
    except OSError as exc:
        assert exc.errno == errno.EBUSY
    else:
        raise AssertionError("group file opened while a cdev is bound")
# -- [/one-path]
