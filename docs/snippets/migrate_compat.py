"""How-to (migration): legacy container code on /dev/iommu, then the same
job with iommufd objects.

    python3 docs/snippets/migrate_compat.py          # on the fake kernel
    python3 docs/snippets/migrate_compat.py --real   # on this machine (root)
"""

import mmap

from edu import EDU_IDS, bind_vfio_pci, choose_backend, find_device

from pyvfio import Container, Device, Group, IommuFd, IommuType

backend = choose_backend()
edu = find_device(backend, *EDU_IDS)
bind_vfio_pci(backend, edu)
buf = mmap.mmap(-1, 0x4000)

# -- [compat]
# Step 1: unchanged legacy code, with the container served by iommufd.
with Container.compat(backend=backend) as container, \
        Group.for_device(edu, backend=backend) as group:
    group.set_container(container)               # the group joins an iommufd
    container.set_iommu(IommuType.TYPE1v2)
    container.map_dma(buf, iova=0x100000)
    with group.open_device(edu) as dev:
        print(dev.info.num_regions)
# -- [/compat]

# -- [native]
# Step 2: the same with iommufd objects and the device's cdev.
with IommuFd(backend=backend) as iommufd, Device.open(edu, backend=backend) as dev:
    dev.bind(iommufd)
    ioas = iommufd.ioas()
    dev.attach(ioas)
    ioas.map(buf, iova=0x100000)
    print(dev.info.num_regions)
# -- [/native]

# -- [replace]
# What only iommufd can do: move a running device to another address space
# in one step (VFIO_DEVICE_ATTACH_IOMMUFD_PT on an attached device).
with IommuFd(backend=backend) as iommufd, Device.open(edu, backend=backend) as dev:
    dev.bind(iommufd)
    old, new = iommufd.ioas(), iommufd.ioas()
    dev.attach(old)
    new.map(buf, iova=0x100000)
    dev.attach(new)                              # replace, no window without DMA translation
    assert dev.attached is new
    dev.detach()                                 # VFIO_DEVICE_DETACH_IOMMUFD_PT: DMA blocked
# -- [/replace]
