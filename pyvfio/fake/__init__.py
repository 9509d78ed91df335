"""A fake Linux kernel for VFIO and iommufd, in pure Python.

``System(topology).backend`` is a :class:`~pyvfio.backend.base.Backend`
that serves the same ioctls on the same structs as Linux, with IOMMU
groups, DMA ownership, type1 and iommufd mapping rules and device models
that DMA through a simulated IOMMU::

    from pyvfio.fake import System
    import pyvfio

    system = System("default")
    with pyvfio.IommuFd(backend=system.backend) as iommufd:
        ...

See docs/dev/fake-kernel.md for the module map.
"""

from __future__ import annotations

from .core import FakeBackend, FakeFile, FaultRecord, IoDomain, IommuFault
from .machine.system import IommuGroup, PciDevice, System

__all__ = [
    "System",
    "PciDevice",
    "IommuGroup",
    "FakeBackend",
    "FakeFile",
    "FaultRecord",
    "IoDomain",
    "IommuFault",
]
