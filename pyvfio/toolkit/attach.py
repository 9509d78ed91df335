"""Devices opened ready for DMA, on whichever IOMMU interface the kernel
offers the device: :func:`open_attached`.

::

    with pyvfio.open_attached("0000:00:04.0") as (device, space):
        mapping = space.map(buffer, 0x100000)
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

from ..backend import Backend, resolve_backend
from ..core import sysfs
from ..core.container import Container
from ..core.device import Device
from ..core.group import Group
from ..core.iommufd import IOAS, IommuFd
from ..errors import VfioError

__all__ = ["open_attached"]

_LOG = logging.getLogger(__name__)


@contextlib.contextmanager
def open_attached(bdf: str, *, backend: Backend | None = None, legacy: bool = False,
                  ) -> Iterator[tuple[Device, IOAS | Container]]:
    """Open the device at ``bdf`` (bound to vfio-pci) ready for DMA: bound
    to a new iommufd and attached to a fresh IOAS (the cdev path), or --
    with ``legacy``, or when the kernel gives the device no cdev -- opened
    through its group on a new type1 container.  Yields ``(device, space)``
    and closes everything, in order, at the end of the block."""
    b = resolve_backend(backend)
    if not legacy:
        try:
            sysfs.device_cdev_path(bdf, b)
        except VfioError as exc:
            _LOG.info("%s: no VFIO device cdev (%s): using its group and a type1 container",
                      bdf, exc)
            legacy = True
        else:
            _LOG.info("%s: opening its VFIO cdev on a new iommufd", bdf)
    else:
        _LOG.info("%s: legacy requested: using its group and a type1 container", bdf)
    with contextlib.ExitStack() as stack:
        if legacy:
            container = stack.enter_context(Container(backend=b))
            group = stack.enter_context(Group.for_device(bdf, backend=b))
            group.set_container(container)
            container.set_iommu()
            yield stack.enter_context(group.open_device(bdf)), container
        else:
            iommufd = stack.enter_context(IommuFd(backend=b))
            device = stack.enter_context(Device.open(bdf, backend=b))
            device.bind(iommufd)
            ioas = iommufd.ioas()
            device.attach(ioas)
            yield device, ioas
