"""The fake ``/dev/iommu``: iommufd laid out like drivers/iommu/iommufd/.

See docs/dev/fake-kernel.md for the kernel file each module mirrors.
"""

from __future__ import annotations

from .main import NO_PASID, FaultFile, IommufdFile

__all__ = ["IommufdFile", "FaultFile", "NO_PASID"]
