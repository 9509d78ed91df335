"""Fixtures for the fake kernel's system, sysfs and legacy VFIO tests.

These tests drive the fake through the Backend interface exactly as user
code drives the real kernel.  They do not depend on the device models or
the vfio-pci device file: systems are built without models (config space
comes from the topology) and VFIO_GROUP_GET_DEVICE_FD is served by a small
stand-in device file that follows the contract documented in
:mod:`pyvfio.fake.vfio`.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Iterator

import pytest

from pyvfio._uapi import ffi, lib
from pyvfio.backend.base import MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE
from pyvfio.fake.core import FakeBackend, FakeFile
from pyvfio.fake.machine.system import System
from pyvfio.fake.vfio import group as vfio_group

MakeSystem = Callable[..., System]


@pytest.fixture
def make_system() -> Iterator[MakeSystem]:
    """``make_system(topology="default", **overrides)``: a System without
    device models; every fd still open is closed at the end."""
    systems: list[System] = []

    def make(topology: Any = "default", **overrides: Any) -> System:
        if overrides:
            from pyvfio.fake.machine.topology import load

            topo = copy.deepcopy(load(topology))
            for key, value in overrides.items():
                if isinstance(value, dict) and isinstance(topo.get(key), dict):
                    topo[key].update(value)
                else:
                    topo[key] = value
            if "groups" not in overrides:
                # derived again from the devices (none without an IOMMU)
                topo.pop("groups", None)
            topology = topo
        system = System(topology, models=None)
        systems.append(system)
        return system

    yield make
    for system in systems:
        backend = system.backend
        for fd in list(backend._files):
            backend.close(fd)


@pytest.fixture
def system(make_system: MakeSystem) -> System:
    return make_system("default")


@pytest.fixture
def b(system: System) -> FakeBackend:
    return system.backend


class Vfio:
    """Helpers that issue the raw syscalls user code would (one backend)."""

    def __init__(self, b: FakeBackend) -> None:
        self.b = b
        self.buffers: list[Buffer] = []

    @staticmethod
    def errno_of(fn: Callable[[], object]) -> int:
        """The errno ``fn`` fails with (the test fails if it succeeds)."""
        with pytest.raises(OSError) as info:
            fn()
        assert info.value.errno is not None
        return info.value.errno

    def bind_vfio(self, bdf: str) -> None:
        """Bind ``bdf`` to vfio-pci the way users do: driver_override,
        unbind, drivers_probe."""
        b = self.b
        dev = f"/sys/bus/pci/devices/{bdf}"
        b.sysfs_write(f"{dev}/driver_override", "vfio-pci")
        driver = b.sysfs_basename_of_link(f"{dev}/driver")
        if driver is not None:
            b.sysfs_write(f"/sys/bus/pci/drivers/{driver}/unbind", bdf)
        b.sysfs_write("/sys/bus/pci/drivers_probe", bdf)
        assert b.sysfs_basename_of_link(f"{dev}/driver") == "vfio-pci"

    def driver(self, bdf: str) -> str | None:
        return self.b.sysfs_basename_of_link(f"/sys/bus/pci/devices/{bdf}/driver")

    def group_status(self, gfd: int, argsz: int | None = None) -> int:
        st = ffi.new("struct vfio_group_status *")
        st.argsz = ffi.sizeof("struct vfio_group_status") if argsz is None else argsz
        assert self.b.ioctl(gfd, lib.VFIO_GROUP_GET_STATUS, st) == 0
        return int(st.flags)

    def set_container(self, gfd: int, cfd: int) -> int:
        return self.b.ioctl(gfd, lib.VFIO_GROUP_SET_CONTAINER, ffi.new("int *", cfd))

    def unset_container(self, gfd: int) -> int:
        return self.b.ioctl(gfd, lib.VFIO_GROUP_UNSET_CONTAINER)

    def map_dma(self, cfd: int, vaddr: int, iova: int, size: int,
                flags: int | None = None, argsz: int | None = None) -> int:
        m = ffi.new("struct vfio_iommu_type1_dma_map *")
        m.argsz = ffi.sizeof("struct vfio_iommu_type1_dma_map") if argsz is None else argsz
        m.flags = (lib.VFIO_DMA_MAP_FLAG_READ | lib.VFIO_DMA_MAP_FLAG_WRITE) if flags is None else flags
        m.vaddr = vaddr
        m.iova = iova
        m.size = size
        return self.b.ioctl(cfd, lib.VFIO_IOMMU_MAP_DMA, m)

    def unmap_dma(self, cfd: int, iova: int, size: int, flags: int = 0) -> int:
        """VFIO_IOMMU_UNMAP_DMA; returns the size reported unmapped."""
        u = ffi.new("struct vfio_iommu_type1_dma_unmap *")
        u.argsz = ffi.sizeof("struct vfio_iommu_type1_dma_unmap")
        u.flags = flags
        u.iova = iova
        u.size = size
        assert self.b.ioctl(cfd, lib.VFIO_IOMMU_UNMAP_DMA, u) == 0
        return int(u.size)

    def get_device_fd(self, gfd: int, name: str) -> int:
        return self.b.ioctl(gfd, lib.VFIO_GROUP_GET_DEVICE_FD, ffi.new("char[]", name.encode()))

    def ready(self, bdfs: list[str], group: int, iommu: int | None = None) -> tuple[int, int]:
        """Bind ``bdfs`` to vfio-pci, open the group and a container,
        attach and optionally set the IOMMU: (container fd, group fd)."""
        for bdf in bdfs:
            self.bind_vfio(bdf)
        cfd = self.b.open("/dev/vfio/vfio")
        gfd = self.b.open(f"/dev/vfio/{group}")
        assert self.set_container(gfd, cfd) == 0
        if iommu is not None:
            assert self.b.ioctl(cfd, lib.VFIO_SET_IOMMU, iommu) == 0
        return cfd, gfd

    def buffer(self, size: int, prot: int = PROT_READ | PROT_WRITE) -> Buffer:
        buf = Buffer(self.b, size, prot)
        self.buffers.append(buf)
        return buf

    def close(self) -> None:
        for buf in self.buffers:
            buf.close()
        self.buffers.clear()


class Buffer:
    """Anonymous user memory from the backend's mmap."""

    def __init__(self, b: FakeBackend, size: int, prot: int = PROT_READ | PROT_WRITE) -> None:
        self.map = b.mmap(size, prot, MAP_PRIVATE | MAP_ANONYMOUS)
        self.address = self.map.address
        self.size = size

    def close(self) -> None:
        self.map.close()


@pytest.fixture
def v(b: FakeBackend) -> Iterator[Vfio]:
    helper = Vfio(b)
    yield helper
    helper.close()


@pytest.fixture(scope="session")
def vfio_helper() -> type[Vfio]:
    """The helper class, for tests that build their own systems."""
    return Vfio


# -- a stand-in for the vfio-pci device file ------------------------------------------------
class StubDeviceFile(FakeFile):
    """Follows the device-file contract of pyvfio.fake.vfio: the first
    open of a device uses the group's container, the last close unuses it;
    ``pdev`` names the device."""

    def __init__(self, kernel: FakeBackend, pdev: Any, cdev: bool, group_file: Any) -> None:
        super().__init__(kernel)
        self.pdev = pdev
        self.cdev = cdev
        self.group_file = group_file
        self.requests = 0
        count = getattr(pdev, "_stub_open_count", 0)
        if count == 0 and group_file is not None and group_file.iommufd is None:
            group_file.use_container(pdev)
        pdev._stub_open_count = count + 1
        pdev.request_release = self._request

    def _request(self) -> None:
        self.requests += 1

    def release(self) -> None:
        self.pdev._stub_open_count -= 1
        if self.pdev._stub_open_count == 0:
            self.pdev.request_release = None
            if self.group_file is not None and self.group_file.iommufd is None:
                self.group_file.unuse_container(self.pdev)


@pytest.fixture
def stub_device_files(monkeypatch: pytest.MonkeyPatch) -> list[StubDeviceFile]:
    """Serve VFIO_GROUP_GET_DEVICE_FD with :class:`StubDeviceFile`."""
    opened: list[StubDeviceFile] = []

    def open_device_file(kernel: FakeBackend, pdev: Any, *, cdev: bool,
                         group_file: Any = None) -> FakeFile:
        f = StubDeviceFile(kernel, pdev, cdev, group_file)
        opened.append(f)
        return f

    monkeypatch.setattr(vfio_group, "open_device_file", open_device_file)
    return opened
