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

from typing import Any

from .core import FakeBackend, FakeFile, FaultRecord, IoDomain, IommuFault
from .fail_nth import FaultWalk, fault_walk
from .fault_inject import FaultInjector
from .machine.chrdev import register_chrdev
from .machine.iommu import IommuGroup
from .machine.pci_device import PciDevice
from .machine.system import System, set_default_model_factory

__all__ = [
    "System",
    "PciDevice",
    "IommuGroup",
    "FakeBackend",
    "FakeFile",
    "FaultRecord",
    "IoDomain",
    "IommuFault",
    "FaultInjector",
    "FaultWalk",
    "fault_walk",
]


# The drivers register the device nodes they serve (misc_register,
# cdev_device_add); the machine opens a node through this table.  A
# driver's modules are imported at the first open of one of its nodes, as
# the kernel loads a module on the first open of its device number
# (request_module from chrdev_open), so that importing the fake and
# building machines does not pay for drivers a test never opens.
def _open_container(backend: FakeBackend, _target: Any) -> FakeFile:
    from . import vfio

    file: FakeFile = vfio.ContainerFile(backend)
    return file


def _open_iommufd(backend: FakeBackend, _target: Any) -> FakeFile:
    from . import iommufd

    file: FakeFile = iommufd.IommufdFile(backend)
    return file


def _open_group(backend: FakeBackend, vgroup: Any) -> FakeFile:
    from . import vfio

    file: FakeFile = vfio.GroupFile.open(backend, vgroup)
    return file


def _open_vfio_cdev(backend: FakeBackend, pdev: Any) -> FakeFile:
    from . import vfio_pci

    file: FakeFile = vfio_pci.open_device_file(backend, pdev, cdev=True)
    return file


def _create_model(spec: dict[str, Any]) -> Any:
    """The default model factory: :func:`pyvfio.fake.models.create`, its
    package imported when the first machine is built."""
    from . import models

    return models.create(spec)


register_chrdev("vfio", _open_container)
register_chrdev("iommu", _open_iommufd)
register_chrdev("vfio-group", _open_group)
register_chrdev("vfio-dev", _open_vfio_cdev)
set_default_model_factory(_create_model)
