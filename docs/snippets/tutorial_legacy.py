"""Tutorial: the same DMA through the legacy container and group.

    python3 docs/snippets/tutorial_legacy.py          # on the fake kernel
    python3 docs/snippets/tutorial_legacy.py --real   # on this machine (root)
"""

import mmap

from edu import EDU_BUFFER, EDU_IDS, bind_vfio_pci, choose_backend, edu_dma, enable_bus_master, find_device

from pyvfio import Container, Group, IommuType

backend = choose_backend()
edu = find_device(backend, *EDU_IDS)
bind_vfio_pci(backend, edu)

# -- [legacy]
PATTERN = bytes(range(64))

with Container(backend=backend) as container, \
        Group.for_device(edu, backend=backend) as group:
    print(f"{edu} is in IOMMU group {group.id}: {group.devices}")
    assert group.status.viable              # VFIO_GROUP_GET_STATUS
    group.set_container(container)          # VFIO_GROUP_SET_CONTAINER
    container.set_iommu(IommuType.TYPE1v2)  # VFIO_SET_IOMMU

    buf = mmap.mmap(-1, 0x2000)
    mapping = container.map_dma(buf, iova=0x200000)  # VFIO_IOMMU_MAP_DMA

    with group.open_device(edu) as dev:     # VFIO_GROUP_GET_DEVICE_FD
        enable_bus_master(dev)
        buf[0:64] = PATTERN
        edu_dma(dev, 0x200000, EDU_BUFFER, 64, to_ram=False)   # RAM -> edu
        edu_dma(dev, EDU_BUFFER, 0x201000, 64, to_ram=True)    # edu -> RAM
        assert buf[0x1000:0x1040] == PATTERN
        print("the device copied 64 bytes through the IOMMU")

        mapping.close()                     # VFIO_IOMMU_UNMAP_DMA
        buf[0x1000:0x1040] = bytes(64)
        edu_dma(dev, EDU_BUFFER, 0x201000, 64, to_ram=True)    # IOVA no longer mapped
        assert buf[0x1000:0x1040] == bytes(64)
        print("after the unmap the IOMMU blocked the device's write")
# -- [/legacy]
