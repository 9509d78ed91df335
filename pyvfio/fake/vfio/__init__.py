"""The fake VFIO core: ``/dev/vfio/vfio`` containers, groups and type1,
laid out like drivers/vfio/ (container.c, group.c, vfio_iommu_type1.c).
"""

from __future__ import annotations

from .container import ContainerFile, GroupFile, Type1Iommu, open_device_file

__all__ = ["ContainerFile", "GroupFile", "Type1Iommu", "open_device_file"]
