"""The fake VFIO core, laid out like drivers/vfio/: the container
``/dev/vfio/vfio`` with vfio-noiommu (:mod:`.container`), the group files
``/dev/vfio/N`` (:mod:`.group`) and the type1 IOMMU driver
(:mod:`.vfio_iommu_type1`).
"""

from __future__ import annotations

from .container import ContainerFile
from .group import GroupFile, open_device_file
from .vfio_iommu_type1 import Type1Iommu

__all__ = ["ContainerFile", "GroupFile", "Type1Iommu", "open_device_file"]
