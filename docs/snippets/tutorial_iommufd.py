"""Tutorial: DMA through iommufd and the device's character device.

    python3 docs/snippets/tutorial_iommufd.py          # on the fake kernel
    python3 docs/snippets/tutorial_iommufd.py --real   # on this machine (root)
"""

import mmap

from edu import EDU_BUFFER, EDU_IDS, bind_vfio_pci, choose_backend, edu_dma, enable_bus_master, find_device

from pyvfio import Device, IommuFd

backend = choose_backend()
edu = find_device(backend, *EDU_IDS)
bind_vfio_pci(backend, edu)

# -- [iommufd]
PATTERN = bytes(range(64))

with IommuFd(backend=backend) as iommufd, Device.open(edu, backend=backend) as dev:
    dev_id = dev.bind(iommufd)     # VFIO_DEVICE_BIND_IOMMUFD: the device is ours now
    ioas = iommufd.ioas()          # IOMMU_IOAS_ALLOC: an empty I/O address space
    dev.attach(ioas)               # VFIO_DEVICE_ATTACH_IOMMUFD_PT: DMA goes through it
    print(f"{edu} is device {dev_id} of the iommufd, attached to IOAS {ioas.id}")
    enable_bus_master(dev)

    buf = mmap.mmap(-1, 0x2000)                 # two pages of anonymous memory
    mapping = ioas.map(buf, iova=0x100000)      # IOMMU_IOAS_MAP at a fixed IOVA
    buf[0:64] = PATTERN
    edu_dma(dev, 0x100000, EDU_BUFFER, 64, to_ram=False)   # RAM -> edu
    edu_dma(dev, EDU_BUFFER, 0x101000, 64, to_ram=True)    # edu -> RAM
    assert buf[0x1000:0x1040] == PATTERN
    print("the device copied 64 bytes through the IOMMU")

    mapping.close()                             # IOMMU_IOAS_UNMAP
    buf[0x1000:0x1040] = bytes(64)
    edu_dma(dev, EDU_BUFFER, 0x101000, 64, to_ram=True)    # IOVA no longer mapped
    assert buf[0x1000:0x1040] == bytes(64)
    print("after the unmap the IOMMU blocked the device's write")
# -- [/iommufd]
