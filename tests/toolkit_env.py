"""Shared set-up of the userspace-driver toolkit tests (fake kernel on the
host, the real kernel in the test VM): binding devices, opening them on
either path, loading the example drivers."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from types import ModuleType
from typing import Any, Iterator

import pyvfio
from pyvfio import Container, Device, Group, IommuFd
from pyvfio.backend import Backend

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

EDU_ID = ("0x1234", "0x11e8")
NVME_ID = ("0x1b36", "0x0010")


def find(backend: Backend, ident: tuple[str, str]) -> str:
    """The one PCI function with this ``(vendor, device)`` (sysfs text)."""
    hits = []
    for bdf in backend.sysfs_listdir(pyvfio.core.sysfs.PCI_DEVICES):
        base = f"{pyvfio.core.sysfs.PCI_DEVICES}/{bdf}"
        if (backend.sysfs_read(f"{base}/vendor"), backend.sysfs_read(f"{base}/device")) == ident:
            hits.append(bdf)
    assert len(hits) == 1, f"{ident}: {hits}"
    return hits[0]


def bind_vfio(backend: Backend, bdf: str) -> str | None:
    """Move ``bdf`` to vfio-pci; returns its previous driver."""
    base = f"{pyvfio.core.sysfs.PCI_DEVICES}/{bdf}"
    old = pyvfio.core.sysfs.device_driver(bdf, backend)
    if old == "vfio-pci":
        return old
    backend.sysfs_write(f"{base}/driver_override", "vfio-pci")
    if old is not None:
        backend.sysfs_write(f"/sys/bus/pci/drivers/{old}/unbind", bdf)
    backend.sysfs_write("/sys/bus/pci/drivers_probe", bdf)
    assert pyvfio.core.sysfs.device_driver(bdf, backend) == "vfio-pci"
    return old


def unbind_vfio(backend: Backend, bdf: str) -> None:
    """Give ``bdf`` back to the driver the kernel picks."""
    base = f"{pyvfio.core.sysfs.PCI_DEVICES}/{bdf}"
    backend.sysfs_write(f"{base}/driver_override", "\n")
    if pyvfio.core.sysfs.device_driver(bdf, backend) == "vfio-pci":
        backend.sysfs_write("/sys/bus/pci/drivers/vfio-pci/unbind", bdf)
    backend.sysfs_write("/sys/bus/pci/drivers_probe", bdf)


@contextlib.contextmanager
def open_cdev(backend: Backend, bdf: str) -> Iterator[tuple[Device, pyvfio.IOAS]]:
    """iommufd path: the device bound to a new iommufd, attached to an IOAS."""
    with IommuFd(backend=backend) as iommufd, Device.open(bdf, backend=backend) as dev:
        dev.bind(iommufd)
        ioas = iommufd.ioas()
        dev.attach(ioas)
        yield dev, ioas


@contextlib.contextmanager
def open_group(backend: Backend, bdf: str) -> Iterator[tuple[Device, Container]]:
    """Legacy path: the device through its group in a type1 container."""
    with Container(backend=backend) as c, Group.for_device(bdf, backend=backend) as g:
        g.set_container(c)
        c.set_iommu()
        with g.open_device(bdf) as dev:
            yield dev, c


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` as a module."""
    path = os.path.join(REPO, "examples", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class WidthLog:
    """Records every register access a fake model's BAR hook sees:
    ``(offset, width, is_write)``."""

    def __init__(self, bar: Any) -> None:
        self.bar = bar
        self.log: list[tuple[int, int, bool]] = []
        read, write = bar.on_read, bar.on_write

        def on_read(offset: int, width: int) -> int:
            self.log.append((offset, width, False))
            return int(read(offset, width))

        def on_write(offset: int, width: int, value: int) -> None:
            self.log.append((offset, width, True))
            write(offset, width, value)

        bar.on_read, bar.on_write = on_read, on_write


class FakeMachine:
    """The fake kernel's "default" machine with edu and the NVMe
    controller on vfio-pci."""

    def __init__(self) -> None:
        from pyvfio.fake import System

        self.system = System("default")
        self.backend: Backend = self.system.backend
        self.edu = find(self.backend, EDU_ID)
        self.nvme = find(self.backend, NVME_ID)
        for bdf in (self.edu, self.nvme):
            bind_vfio(self.backend, bdf)

    def model(self, bdf: str) -> Any:
        """The device model behind ``bdf``."""
        return self.system.devices[bdf].model

    def check_no_leaks(self) -> None:
        """Every fake file the test opened is closed again."""
        leaked = self.system.backend.open_files
        assert not leaked, f"files left open: {leaked}"
