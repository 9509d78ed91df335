import mmap

import pyvfio
from pyvfio.fake import System

# A simulated machine whose 0000:00:02.0 is already bound to vfio-pci.
# Leave out every backend= argument to use this machine's kernel instead.
backend = System("multi-group").backend

with pyvfio.IommuFd(backend=backend) as iommufd, \
        pyvfio.Device.open("0000:00:02.0", backend=backend) as dev:
    dev.bind(iommufd)                   # the device is ours
    ioas = iommufd.ioas()
    dev.attach(ioas)                    # its DMA goes through this address space
    buf = mmap.mmap(-1, 0x10000)
    mapping = ioas.map(buf)             # the kernel picks the IOVA
    print(hex(mapping.iova), dev.region_info(pyvfio.PciRegion.BAR0))
