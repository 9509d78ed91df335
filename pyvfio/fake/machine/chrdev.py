"""The table of character device openers: what serves an open(2) of each
kind of device node (fs/char_dev.c's cdev map, drivers/char/misc.c's misc
list).

The machine does not import its drivers; as in the kernel, the drivers
register the nodes they serve (misc_register, cdev_device_add), and
:meth:`System.open_path <pyvfio.fake.machine.system.System.open_path>`
looks the opener up here.  ``pyvfio.fake`` registers the drivers of the
fake kernel when it is imported:

========================  ===============  ======================================
node                      name             opener's target
========================  ===============  ======================================
``/dev/vfio/vfio``        ``"vfio"``       None (the vfio misc device)
``/dev/iommu``            ``"iommu"``      None (the iommufd misc device)
``/dev/vfio/N``           ``"vfio-group"`` the :class:`~.vfio_group.VfioGroup`
``/dev/vfio/devices/vN``  ``"vfio-dev"``   the :class:`~.pci_device.PciDevice`
========================  ===============  ======================================
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any, Callable

from ..core import errno_error

if TYPE_CHECKING:
    from ..core import FakeBackend, FakeFile

__all__ = ["CHRDEV_NAMES", "Opener", "register_chrdev", "chrdev_open", "VFIO_CDEV_MAJOR",
           "VFIO_GROUP_MAJOR", "MISC_MAJOR", "VFIO_MINOR", "IOMMUFD_MINOR"]

#: Major number shown for vfio device cdevs (dynamically allocated on Linux).
VFIO_CDEV_MAJOR = 237
#: Major number shown for vfio group nodes (dynamically allocated on Linux).
VFIO_GROUP_MAJOR = 238
#: The misc character device major.
MISC_MAJOR = 10
#: The minor of /dev/vfio/vfio (VFIO_MINOR).
VFIO_MINOR = 196
#: The minor shown for /dev/iommu (dynamic on Linux).
IOMMUFD_MINOR = 122

#: The kinds of nodes a driver can register an opener for.
CHRDEV_NAMES = ("vfio", "iommu", "vfio-group", "vfio-dev")

#: ``opener(backend, target) -> file``: the file an open(2) of the node
#: gives; ``target`` is the object behind the node (see the table above).
Opener = Callable[["FakeBackend", Any], "FakeFile"]

_openers: dict[str, Opener] = {}


def register_chrdev(name: str, opener: Opener) -> None:
    """Register (or replace) the opener of the nodes of kind ``name``."""
    if name not in CHRDEV_NAMES:
        raise ValueError(f"{name!r} is not one of {', '.join(CHRDEV_NAMES)}")
    _openers[name] = opener


def chrdev_open(name: str, backend: FakeBackend, target: Any = None) -> FakeFile:
    """chrdev_open: the file the driver registered for ``name`` opens;
    ENXIO when no driver registered one (the node has no driver)."""
    opener = _openers.get(name)
    if opener is None:
        # chrdev_open: ENXIO when no cdev serves the device number
        raise errno_error(errno.ENXIO, f"no driver serves {name} nodes")
    return opener(backend, target)
