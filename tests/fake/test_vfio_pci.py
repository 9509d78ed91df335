"""The vfio-pci device file of the fake kernel, driven through the Backend
with raw ffi structs exactly as user code drives Linux: region and IRQ
information, config space virtualisation, BAR access widths, interrupts
through real eventfds, resets, features, the cdev path, and DMA by the
device models through the simulated IOMMU."""

from __future__ import annotations

import errno
import os
import select
from typing import Any, Callable, Iterator

import pytest

from pyvfio._uapi import ffi, lib
from pyvfio.backend.base import (
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    MAP_SHARED,
    PROT_READ,
    PROT_WRITE,
)
from pyvfio.fake import vfio_pci
from pyvfio.fake.core import FakeBackend, FakeFile, IoDomain, IommuFault
from pyvfio.fake.machine.system import System
from pyvfio.fake.models.edu import EduDevice
from pyvfio.fake.models.nvme import NvmeController
from pyvfio.fake.vfio_pci import BusError

EDU = "0000:00:02.0"
NVME = "0000:00:03.0"
E1000E = "0000:00:04.0"
E1000_A = "0000:01:01.0"
E1000_B = "0000:01:02.0"
CONFIG = 7 << 40
MIB = 1 << 20
IOVA = 0x100000
TYPE1v2 = 3


def errno_of(fn: Callable[[], object]) -> int:
    with pytest.raises(OSError) as info:
        fn()
    assert info.value.errno is not None
    return info.value.errno


class Host:
    """The syscalls a user-space driver issues, on one backend."""

    def __init__(self, system: System) -> None:
        self.system = system
        self.b: FakeBackend = system.backend
        self.maps: list[Any] = []
        self.fds: list[int] = []

    def close(self) -> None:
        for m in self.maps:
            m.close()
        for fd in list(self.b._files):
            self.b.close(fd)
        for fd in self.fds:
            os.close(fd)

    def bind_vfio(self, bdf: str) -> None:
        b = self.b
        dev = f"/sys/bus/pci/devices/{bdf}"
        b.sysfs_write(f"{dev}/driver_override", "vfio-pci")
        driver = b.sysfs_basename_of_link(f"{dev}/driver")
        if driver is not None:
            b.sysfs_write(f"/sys/bus/pci/drivers/{driver}/unbind", bdf)
        b.sysfs_write("/sys/bus/pci/drivers_probe", bdf)
        assert b.sysfs_basename_of_link(f"{dev}/driver") == "vfio-pci"

    def group_of(self, bdf: str) -> int:
        return int(os.path.basename(self.b.sysfs_readlink(f"/sys/bus/pci/devices/{bdf}/iommu_group")))

    def open_group_path(self, bdfs: list[str]) -> tuple[int, int, list[int]]:
        """Bind, container + type1v2, device fds: (container, group, devices)."""
        for bdf in bdfs:
            self.bind_vfio(bdf)
        b = self.b
        cfd = b.open("/dev/vfio/vfio")
        gfd = b.open(f"/dev/vfio/{self.group_of(bdfs[0])}")
        assert b.ioctl(gfd, lib.VFIO_GROUP_SET_CONTAINER, ffi.new("int *", cfd)) == 0
        assert b.ioctl(cfd, lib.VFIO_SET_IOMMU, TYPE1v2) == 0
        dfds = [b.ioctl(gfd, lib.VFIO_GROUP_GET_DEVICE_FD, ffi.new("char[]", bdf.encode())) for bdf in bdfs]
        return cfd, gfd, dfds

    def memory(self, size: int) -> Any:
        m = self.b.mmap(size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
        self.maps.append(m)
        return m

    def map_dma(self, cfd: int, vaddr: int, iova: int, size: int) -> None:
        m = ffi.new("struct vfio_iommu_type1_dma_map *")
        m.argsz = ffi.sizeof(m[0])
        m.flags = lib.VFIO_DMA_MAP_FLAG_READ | lib.VFIO_DMA_MAP_FLAG_WRITE
        m.vaddr, m.iova, m.size = vaddr, iova, size
        assert self.b.ioctl(cfd, lib.VFIO_IOMMU_MAP_DMA, m) == 0

    # -- device ioctls ----------------------------------------------------------------
    def info(self, dfd: int, argsz: int | None = None) -> Any:
        info = ffi.new("struct vfio_device_info *")
        info.argsz = ffi.sizeof(info[0]) if argsz is None else argsz
        assert self.b.ioctl(dfd, lib.VFIO_DEVICE_GET_INFO, info) == 0
        return info

    def region(self, dfd: int, index: int, argsz: int | None = None) -> Any:
        r = ffi.new("struct vfio_region_info *")
        r.argsz = ffi.sizeof(r[0]) if argsz is None else argsz
        r.index = index
        assert self.b.ioctl(dfd, lib.VFIO_DEVICE_GET_REGION_INFO, r) == 0
        return r

    def irq_info(self, dfd: int, index: int) -> Any:
        r = ffi.new("struct vfio_irq_info *")
        r.argsz = ffi.sizeof(r[0])
        r.index = index
        assert self.b.ioctl(dfd, lib.VFIO_DEVICE_GET_IRQ_INFO, r) == 0
        return r

    def set_irqs(self, dfd: int, index: int, flags: int, start: int = 0, count: int = 0,
                 data: bytes = b"", argsz: int | None = None) -> int:
        size = ffi.sizeof("struct vfio_irq_set") + len(data)
        buf = ffi.new("char[]", max(size, 64))
        hdr = ffi.cast("struct vfio_irq_set *", buf)
        hdr.argsz = size if argsz is None else argsz
        hdr.flags, hdr.index, hdr.start, hdr.count = flags, index, start, count
        ffi.memmove(buf + ffi.sizeof("struct vfio_irq_set"), data, len(data))
        return self.b.ioctl(dfd, lib.VFIO_DEVICE_SET_IRQS, hdr)

    def eventfds(self, dfd: int, index: int, fds: list[int], start: int = 0) -> int:
        data = b"".join(fd.to_bytes(4, "little", signed=True) for fd in fds)
        return self.set_irqs(dfd, index, lib.VFIO_IRQ_SET_DATA_EVENTFD | lib.VFIO_IRQ_SET_ACTION_TRIGGER,
                             start, len(fds), data)

    def eventfd(self) -> int:
        fd = self.b.eventfd(0, os.EFD_NONBLOCK)
        self.fds.append(fd)
        return fd

    def cfg(self, dfd: int, off: int, n: int) -> int:
        return int.from_bytes(self.b.pread(dfd, n, CONFIG + off), "little")

    def wcfg(self, dfd: int, off: int, value: int, n: int) -> None:
        assert self.b.pwrite(dfd, value.to_bytes(n, "little"), CONFIG + off) == n

    def feature(self, dfd: int, flags: int, data: bytes = b"", argsz: int | None = None) -> int:
        size = ffi.sizeof("struct vfio_device_feature") + len(data)
        buf = ffi.new("char[]", max(size, 32))
        hdr = ffi.cast("struct vfio_device_feature *", buf)
        hdr.argsz = size if argsz is None else argsz
        hdr.flags = flags
        ffi.memmove(buf + ffi.sizeof("struct vfio_device_feature"), data, len(data))
        return self.b.ioctl(dfd, lib.VFIO_DEVICE_FEATURE, hdr)


def fired(fd: int) -> int:
    """How many times an eventfd was signalled since the last call."""
    ready, _, _ = select.select([fd], [], [], 0)
    if not ready:
        return 0
    return os.eventfd_read(fd)


@pytest.fixture
def host() -> Iterator[Host]:
    system = System("default")
    h = Host(system)
    yield h
    h.close()


@pytest.fixture
def edu(host: Host) -> tuple[Host, int, int, EduDevice]:
    """edu opened through the group path, memory decode and bus master on."""
    cfd, _gfd, (dfd,) = host.open_group_path([EDU])
    host.wcfg(dfd, 4, 0x0006, 2)
    model = host.system.devices[EDU].model
    assert isinstance(model, EduDevice)
    return host, cfd, dfd, model


@pytest.fixture
def nvme(host: Host) -> tuple[Host, int, int, NvmeController]:
    cfd, _gfd, (dfd,) = host.open_group_path([NVME])
    model = host.system.devices[NVME].model
    assert isinstance(model, NvmeController)
    return host, cfd, dfd, model


# -- device information -----------------------------------------------------------------------
def test_get_info_and_argsz(edu: Any) -> None:
    h, _, dfd, _ = edu
    info = h.info(dfd)
    assert info.flags == lib.VFIO_DEVICE_FLAGS_PCI  # edu on the root bus: no reset method
    assert (info.num_regions, info.num_irqs) == (lib.VFIO_PCI_NUM_REGIONS, lib.VFIO_PCI_NUM_IRQS)
    assert info.cap_offset == 0
    short = ffi.new("struct vfio_device_info *")
    short.argsz, short.cap_offset = 16, 0x55
    assert h.b.ioctl(dfd, lib.VFIO_DEVICE_GET_INFO, short) == 0
    assert short.num_irqs == 5 and short.cap_offset == 0x55  # not covered by argsz: untouched
    assert errno_of(lambda: h.info(dfd, argsz=15)) == errno.EINVAL
    assert errno_of(lambda: h.b.ioctl(dfd, 0x3B7F, 0)) == errno.ENOTTY


def test_get_info_reset_flag(nvme: Any) -> None:
    h, _, dfd, _ = nvme
    assert h.info(dfd).flags == lib.VFIO_DEVICE_FLAGS_PCI | lib.VFIO_DEVICE_FLAGS_RESET


def test_region_info(edu: Any) -> None:
    h, _, dfd, _ = edu
    bar0 = h.region(dfd, 0)
    rw = lib.VFIO_REGION_INFO_FLAG_READ | lib.VFIO_REGION_INFO_FLAG_WRITE
    assert (bar0.size, bar0.offset, bar0.flags) == (MIB, 0, rw | lib.VFIO_REGION_INFO_FLAG_MMAP)
    for index in range(1, 7):
        r = h.region(dfd, index)
        assert (r.size, r.flags, r.offset) == (0, 0, index << 40)
    cfg = h.region(dfd, lib.VFIO_PCI_CONFIG_REGION_INDEX)
    assert (cfg.size, cfg.flags, cfg.offset) == (256, rw, CONFIG)
    assert errno_of(lambda: h.region(dfd, lib.VFIO_PCI_VGA_REGION_INDEX)) == errno.EINVAL
    assert errno_of(lambda: h.region(dfd, 9)) == errno.EINVAL
    assert errno_of(lambda: h.region(dfd, 0, argsz=31)) == errno.EINVAL


def test_region_info_msix_mappable_capability(nvme: Any) -> None:
    h, _, dfd, _ = nvme
    assert h.region(dfd, lib.VFIO_PCI_CONFIG_REGION_INDEX).size == 4096
    small = h.region(dfd, 0)
    assert small.flags & lib.VFIO_REGION_INFO_FLAG_CAPS
    assert small.argsz == 40 and small.cap_offset == 0 and small.size == 0x4000
    buf = ffi.new("char[]", 64)
    r = ffi.cast("struct vfio_region_info *", buf)
    r.argsz, r.index = 64, 0
    assert h.b.ioctl(dfd, lib.VFIO_DEVICE_GET_REGION_INFO, r) == 0
    assert r.cap_offset == 32 and r.argsz == 64
    cap = ffi.cast("struct vfio_info_cap_header *", buf + 32)
    assert (cap.id, cap.version, cap.next) == (lib.VFIO_REGION_INFO_CAP_MSIX_MAPPABLE, 1, 0)


def test_irq_info(edu: Any, host: Host) -> None:
    h, _, dfd, _ = edu
    intx = h.irq_info(dfd, lib.VFIO_PCI_INTX_IRQ_INDEX)
    assert intx.count == 1 and intx.flags == (lib.VFIO_IRQ_INFO_EVENTFD | lib.VFIO_IRQ_INFO_MASKABLE
                                              | lib.VFIO_IRQ_INFO_AUTOMASKED)
    msi = h.irq_info(dfd, lib.VFIO_PCI_MSI_IRQ_INDEX)
    assert (msi.count, msi.flags) == (1, lib.VFIO_IRQ_INFO_EVENTFD | lib.VFIO_IRQ_INFO_NORESIZE)
    msix = h.irq_info(dfd, lib.VFIO_PCI_MSIX_IRQ_INDEX)
    # no MSI-X capability: nothing to allocate on demand (has_dyn_msix is false)
    assert (msix.count, msix.flags) == (0, lib.VFIO_IRQ_INFO_EVENTFD | lib.VFIO_IRQ_INFO_NORESIZE)
    assert h.irq_info(dfd, lib.VFIO_PCI_REQ_IRQ_INDEX).count == 1
    # Linux 7.3 (measured on QEMU's edu): ERR for conventional PCI devices too
    err = h.irq_info(dfd, lib.VFIO_PCI_ERR_IRQ_INDEX)
    assert (err.count, err.flags) == (1, lib.VFIO_IRQ_INFO_EVENTFD | lib.VFIO_IRQ_INFO_NORESIZE)
    assert errno_of(lambda: h.irq_info(dfd, 5)) == errno.EINVAL


def test_irq_info_nvme(nvme: Any) -> None:
    h, _, dfd, _ = nvme
    msix = h.irq_info(dfd, lib.VFIO_PCI_MSIX_IRQ_INDEX)
    assert (msix.count, msix.flags) == (65, lib.VFIO_IRQ_INFO_EVENTFD)  # grows on demand
    assert h.irq_info(dfd, lib.VFIO_PCI_MSI_IRQ_INDEX).count == 0
    assert h.irq_info(dfd, lib.VFIO_PCI_ERR_IRQ_INDEX).count == 1


# -- config space --------------------------------------------------------------------------------
def test_config_virtualisation(edu: Any) -> None:
    h, _, dfd, model = edu
    assert h.cfg(dfd, 0, 4) == 0x11E81234
    h.wcfg(dfd, 0, 0xFFFFFFFF, 4)  # IDs are read-only
    assert h.cfg(dfd, 0, 4) == 0x11E81234
    phys_bar = model.config_dword(0x10)
    assert phys_bar != 0  # the host's address
    h.wcfg(dfd, 0x10, 0xFFFFFFFF, 4)
    assert h.cfg(dfd, 0x10, 4) == 0xFFF00000  # sizing on the virtual BAR
    assert model.config_dword(0x10) == phys_bar  # the device never saw it
    h.wcfg(dfd, 0x10, 0x12345678, 4)
    assert h.cfg(dfd, 0x10, 4) == 0x12300000
    h.wcfg(dfd, 0x30, 0xFFFFFFFF, 4)
    assert h.cfg(dfd, 0x30, 4) == 0  # no option ROM
    assert h.cfg(dfd, 0x3D, 1) == 1  # INTA
    h.wcfg(dfd, 0x3C, 0x0B, 1)
    assert h.cfg(dfd, 0x3C, 1) == 0x0B and model.config[0x3C] == 0  # virtual interrupt line
    assert errno_of(lambda: h.b.pread(dfd, 4, CONFIG + 254)) == errno.EFAULT
    whole = h.b.pread(dfd, 256, CONFIG)
    assert len(whole) == 256 and whole[0:2] == b"\x34\x12"


def test_config_command_and_msi_are_virtualised(edu: Any) -> None:
    h, _, dfd, model = edu
    assert h.cfg(dfd, 4, 2) & 0x6 == 0x6 and model.command & 0x6 == 0x6  # memory/master pass through
    h.wcfg(dfd, 4, 0x0406, 2)  # INTx disable is virtual; the device's bit follows
    assert h.cfg(dfd, 4, 2) & 0x400 and model.command & 0x400
    h.wcfg(dfd, 4, 0x0006, 2)
    assert not h.cfg(dfd, 4, 2) & 0x400 and not model.command & 0x400
    assert model.msi is not None
    msi = model.msi.offset
    caps = h.cfg(dfd, 0x34, 1)
    assert caps == msi and h.cfg(dfd, msi, 1) == 0x05
    h.wcfg(dfd, msi + 2, 0x0001, 2)  # MSI enable only through SET_IRQS
    assert h.cfg(dfd, msi + 2, 2) & 1 == 0 and not model.msi_enabled
    h.wcfg(dfd, msi + 4, 0xFEE01000, 4)  # address is virtual
    assert h.cfg(dfd, msi + 4, 4) == 0xFEE01000 and model.config_dword(msi + 4) != 0xFEE01000


def test_config_pcie_capabilities_and_flr(nvme: Any) -> None:
    h, _, dfd, model = nvme
    chain = []
    pos = h.cfg(dfd, 0x34, 1)
    while pos:
        chain.append(h.cfg(dfd, pos, 1))
        pos = h.cfg(dfd, pos + 1, 1)
    assert chain == [0x11, 0x10, 0x01]  # MSI-X, Express, PM: QEMU's order
    assert model.pm_offset is not None and model.pcie_offset is not None
    assert h.cfg(dfd, model.pm_offset + 2, 2) & 0xF800 == 0  # no PME for the user
    msix = model.msix
    assert msix is not None
    h.wcfg(dfd, msix.offset + 2, 0x8000, 2)  # MSI-X control is read-only to the user
    assert not model.msix_enabled
    model.bar_write(0, 0x14, 4, 0x00460001)  # the controller runs ...
    resets = model.reset_count
    h.wcfg(dfd, model.pcie_offset + 8, 0x8000, 2)  # ... until the user's FLR
    assert model.reset_count == resets + 1 and model.cc == 0
    assert h.cfg(dfd, model.pcie_offset + 8, 2) & 0x8000 == 0


# -- BAR access ------------------------------------------------------------------------------------
def test_bar_pread_pwrite_widths(edu: Any) -> None:
    h, _, dfd, model = edu
    model.mmio_log.clear()
    assert h.b.pread(dfd, 4, 0) == (0x010000ED).to_bytes(4, "little")
    h.b.pwrite(dfd, (0x1122334455667788).to_bytes(8, "little"), 0x80)
    assert h.b.pread(dfd, 16, 0x80)[:8] == (0x1122334455667788).to_bytes(8, "little")
    h.b.pread(dfd, 3, 0)
    assert model.mmio_log == [(0, 4, False), (0x80, 8, True), (0x80, 8, False), (0x88, 8, False),
                              (0, 2, False), (2, 1, False)]
    assert len(h.b.pread(dfd, 64, MIB - 16)) == 16  # truncated at the end of the BAR
    assert errno_of(lambda: h.b.pread(dfd, 4, MIB)) == errno.EINVAL
    assert errno_of(lambda: h.b.pread(dfd, 4, 1 << 40)) == errno.EINVAL  # BAR1 not implemented
    assert errno_of(lambda: h.b.pread(dfd, 4, 9 << 40)) == errno.EINVAL


def test_bar_access_needs_memory_decode(edu: Any) -> None:
    h, _, dfd, _ = edu
    m = h.b.mmap(MIB, PROT_READ | PROT_WRITE, MAP_SHARED, dfd, 0)
    h.maps.append(m)
    h.wcfg(dfd, 4, 0x0004, 2)  # memory off
    assert errno_of(lambda: h.b.pread(dfd, 4, 0)) == errno.EIO
    with pytest.raises(BusError):
        m.read(0, 4)
    h.wcfg(dfd, 4, 0x0006, 2)
    assert m.read(0, 4) == 0x010000ED


def test_mmap_exact_widths(edu: Any) -> None:
    h, _, dfd, model = edu
    m = h.b.mmap(MIB, PROT_READ | PROT_WRITE, MAP_SHARED, dfd, 0)
    h.maps.append(m)
    model.mmio_log.clear()
    m.write(0x04, 4, 0)
    assert m.read(0x04, 4) == 0xFFFFFFFF
    m.write(0x80, 8, 0xABCDEF)
    assert m.read(0x80, 8) == 0xABCDEF
    assert m.read(0x00, 2) == 0xFFFF and m.read(0x01, 1) == 0xFF
    assert model.mmio_log == [(4, 4, True), (4, 4, False), (0x80, 8, True), (0x80, 8, False),
                              (0, 2, False), (1, 1, False)]
    with pytest.raises(ValueError):
        m.read(2, 4)  # unaligned


def test_mmap_rules(edu: Any, host: Host) -> None:
    h, _, dfd, _ = edu
    b = h.b
    assert errno_of(lambda: b.mmap(MIB, PROT_READ, MAP_PRIVATE, dfd, 0)) == errno.EINVAL
    assert errno_of(lambda: b.mmap(2 * MIB, PROT_READ, MAP_SHARED, dfd, 0)) == errno.EINVAL
    assert errno_of(lambda: b.mmap(4096, PROT_READ, MAP_SHARED, dfd, CONFIG)) == errno.EINVAL
    assert errno_of(lambda: b.mmap(4096, PROT_READ, MAP_SHARED, dfd, 1 << 40)) == errno.EINVAL
    part = b.mmap(4096, PROT_READ, MAP_SHARED, dfd, MIB - 4096)
    h.maps.append(part)
    assert part.read(0, 4) == 0xFFFFFFFF


def test_io_bar_is_not_mappable_but_readable(host: Host) -> None:
    _cfd, _gfd, (dfd,) = host.open_group_path([E1000E])
    io = host.region(dfd, 2)
    assert io.size == 0x20 and not io.flags & lib.VFIO_REGION_INFO_FLAG_MMAP
    host.b.pwrite(dfd, b"\x5a", (2 << 40) + 3)
    assert host.b.pread(dfd, 1, (2 << 40) + 3) == b"\x5a"
    assert errno_of(lambda: host.b.mmap(4096, PROT_READ, MAP_SHARED, dfd, 2 << 40)) == errno.EINVAL
    ram = host.b.mmap(0x20000, PROT_READ | PROT_WRITE, MAP_SHARED, dfd, 0)
    host.maps.append(ram)
    ram.write(0x100, 8, 0x1234)  # a RAM-backed stand-in BAR: real memory
    assert host.b.pread(dfd, 8, 0x100) == (0x1234).to_bytes(8, "little")
    assert bytes(ram.buffer()[0x100:0x102]) == b"\x34\x12"


def test_msix_table_through_the_region(nvme: Any) -> None:
    h, _, dfd, model = nvme
    assert h.b.pread(dfd, 16, 0x2000) == b"\xff" * 16  # vfio hides the table
    h.b.pwrite(dfd, b"\0" * 16, 0x2000)
    assert model.msix is not None and model.msix.vector_masked(0)  # and drops writes
    assert h.b.pread(dfd, 8, 0x3000) == b"\0" * 8  # the PBA is readable


# -- interrupts ----------------------------------------------------------------------------------------
def test_set_irqs_validation(edu: Any) -> None:
    h, _, dfd, _ = edu
    efd = h.eventfd()
    trig = lib.VFIO_IRQ_SET_ACTION_TRIGGER
    ev = lib.VFIO_IRQ_SET_DATA_EVENTFD
    none = lib.VFIO_IRQ_SET_DATA_NONE
    fd4 = efd.to_bytes(4, "little")
    assert errno_of(lambda: h.set_irqs(dfd, 0, ev | trig, 0, 1, fd4, argsz=19)) == errno.EINVAL
    assert errno_of(lambda: h.set_irqs(dfd, 0, ev | none | trig, 0, 1, fd4)) == errno.EINVAL
    assert errno_of(lambda: h.set_irqs(dfd, 0, ev | trig | 0x100, 0, 1, fd4)) == errno.EINVAL
    assert errno_of(lambda: h.set_irqs(dfd, 5, none | trig)) == errno.EINVAL
    assert errno_of(lambda: h.set_irqs(dfd, 0, ev | trig, 0, 2, fd4 * 2)) == errno.EINVAL
    assert errno_of(lambda: h.set_irqs(dfd, 0, ev | trig, 0, 1, fd4, argsz=21)) == errno.EINVAL
    assert errno_of(lambda: h.set_irqs(dfd, 0, ev)) == errno.ENOTTY  # no action
    assert errno_of(lambda: h.set_irqs(dfd, 0, none | lib.VFIO_IRQ_SET_ACTION_MASK
                                       | lib.VFIO_IRQ_SET_ACTION_UNMASK, 0, 1)) == errno.ENOTTY
    assert errno_of(lambda: h.set_irqs(dfd, 0, none | trig)) == errno.EINVAL  # disable: not enabled
    assert errno_of(lambda: h.set_irqs(dfd, 2, none | trig)) == errno.EINVAL  # no MSI-X
    assert errno_of(lambda: h.set_irqs(dfd, 1, none | lib.VFIO_IRQ_SET_ACTION_MASK, 0, 1)) == errno.ENOTTY
    assert errno_of(lambda: h.eventfds(dfd, 0, [0])) == errno.EINVAL  # not an eventfd
    assert errno_of(lambda: h.eventfds(dfd, 0, [9999])) == errno.EBADF
    assert h.eventfds(dfd, 0, [efd]) == 0
    assert errno_of(lambda: h.eventfds(dfd, 1, [efd])) == errno.EINVAL  # INTx is on
    assert errno_of(lambda: h.set_irqs(dfd, 0, ev | lib.VFIO_IRQ_SET_ACTION_MASK, 0, 1, fd4)) == errno.ENOTTY


def test_intx_automask_and_unmask(edu: Any) -> None:
    h, _, dfd, model = edu
    m = h.b.mmap(MIB, PROT_READ | PROT_WRITE, MAP_SHARED, dfd, 0)
    h.maps.append(m)
    efd = h.eventfd()
    assert h.eventfds(dfd, lib.VFIO_PCI_INTX_IRQ_INDEX, [efd]) == 0
    unmask = lib.VFIO_IRQ_SET_DATA_NONE | lib.VFIO_IRQ_SET_ACTION_UNMASK
    m.write(0x60, 4, 1)  # raise
    assert fired(efd) == 1
    m.write(0x60, 4, 2)
    assert fired(efd) == 0  # automasked
    assert h.set_irqs(dfd, 0, unmask, 0, 1) == 0
    assert fired(efd) == 1  # still asserted: unmask re-sends
    m.write(0x64, 4, 3)  # ack: the line drops
    assert h.set_irqs(dfd, 0, unmask, 0, 1) == 0
    assert fired(efd) == 0
    m.write(0x60, 4, 1)
    assert fired(efd) == 1
    assert h.set_irqs(dfd, 0, lib.VFIO_IRQ_SET_DATA_NONE | lib.VFIO_IRQ_SET_ACTION_TRIGGER, 0, 1) == 0
    assert fired(efd) == 1  # loopback
    bools = lib.VFIO_IRQ_SET_DATA_BOOL | lib.VFIO_IRQ_SET_ACTION_TRIGGER
    assert h.set_irqs(dfd, 0, bools, 0, 1, b"\0") == 0 and fired(efd) == 0
    assert h.set_irqs(dfd, 0, lib.VFIO_IRQ_SET_DATA_NONE | lib.VFIO_IRQ_SET_ACTION_TRIGGER) == 0  # disable
    assert errno_of(lambda: h.set_irqs(dfd, 0, unmask, 0, 1)) == errno.EINVAL
    m.write(0x60, 4, 1)
    assert fired(efd) == 0  # no handler any more


def test_intx_unmask_through_eventfd_and_virtual_disable(edu: Any) -> None:
    h, _, dfd, model = edu
    efd, ufd = h.eventfd(), h.eventfd()
    h.eventfds(dfd, 0, [efd])
    data = ufd.to_bytes(4, "little")
    assert h.set_irqs(dfd, 0, lib.VFIO_IRQ_SET_DATA_EVENTFD | lib.VFIO_IRQ_SET_ACTION_UNMASK, 0, 1, data) == 0
    model.bar_write(0, 0x60, 4, 1)
    assert fired(efd) == 1
    model.bar_write(0, 0x64, 4, 1)
    model.bar_write(0, 0x60, 4, 1)
    assert fired(efd) == 0  # masked
    os.eventfd_write(ufd, 1)  # the user's unmask
    h.info(dfd)  # the next call into the device runs it
    assert fired(efd) == 1
    model.bar_write(0, 0x64, 4, 1)
    os.eventfd_write(ufd, 1)
    h.info(dfd)
    h.wcfg(dfd, 4, 0x0406, 2)  # the user disables INTx in the command register
    model.bar_write(0, 0x60, 4, 1)
    assert fired(efd) == 0
    h.wcfg(dfd, 4, 0x0006, 2)
    assert fired(efd) == 1


def test_msi_through_edu(edu: Any) -> None:
    h, _, dfd, model = edu
    efd = h.eventfd()
    assert h.eventfds(dfd, lib.VFIO_PCI_MSI_IRQ_INDEX, [efd]) == 0
    assert model.msi_enabled and model.command & 0x400  # DisINTx while MSI is on
    model.bar_write(0, 0x60, 4, 1)
    model.bar_write(0, 0x60, 4, 1)
    assert fired(efd) == 2
    assert model.msi is not None
    assert h.cfg(dfd, model.msi.offset + 2, 2) & 0x0E == 0  # one vector capable (msi_qmax)
    assert h.eventfds(dfd, 1, [-1]) == 0  # tear the vector down
    model.bar_write(0, 0x60, 4, 1)
    assert fired(efd) == 0 and model.msi_enabled
    assert h.eventfds(dfd, 1, [efd]) == 0
    model.bar_write(0, 0x60, 4, 1)
    assert fired(efd) == 1
    intx = h.eventfd()
    assert errno_of(lambda: h.eventfds(dfd, 0, [intx])) == errno.EINVAL
    assert h.set_irqs(dfd, 1, lib.VFIO_IRQ_SET_DATA_NONE | lib.VFIO_IRQ_SET_ACTION_TRIGGER) == 0
    assert not model.msi_enabled and not model.command & 0x400
    assert h.eventfds(dfd, 0, [intx]) == 0


def test_msix_vectors_through_nvme(nvme: Any) -> None:
    h, cfd, dfd, model = nvme
    h.wcfg(dfd, 4, 0x0006, 2)  # an MSI-X message is a memory write: Bus Master on
    efds = [h.eventfd() for _ in range(3)]
    assert h.eventfds(dfd, lib.VFIO_PCI_MSIX_IRQ_INDEX, efds[:2]) == 0
    assert model.msix_enabled and model.msix is not None
    assert not model.msix.vector_masked(0) and model.msix.vector_masked(2)
    assert h.eventfds(dfd, 2, [efds[2]], start=2) == 0  # allocated on demand
    assert not model.msix.vector_masked(2)
    assert model.raise_irq(2, 2) and fired(efds[2]) == 1
    bools = lib.VFIO_IRQ_SET_DATA_BOOL | lib.VFIO_IRQ_SET_ACTION_TRIGGER
    assert h.set_irqs(dfd, 2, bools, 0, 2, b"\0\1") == 0
    assert (fired(efds[0]), fired(efds[1])) == (0, 1)
    assert errno_of(lambda: h.eventfds(dfd, 2, [efds[0]], start=65)) == errno.EINVAL


def test_err_and_req(nvme: Any, host: Host) -> None:
    h, _, dfd, _ = nvme
    err, req = h.eventfd(), h.eventfd()
    assert h.eventfds(dfd, lib.VFIO_PCI_ERR_IRQ_INDEX, [err]) == 0
    assert vfio_pci.inject_error(host.system.devices[NVME]) and fired(err) == 1
    assert h.set_irqs(dfd, 3, lib.VFIO_IRQ_SET_DATA_NONE | lib.VFIO_IRQ_SET_ACTION_TRIGGER, 0, 1) == 0
    assert fired(err) == 1  # loopback
    assert h.eventfds(dfd, lib.VFIO_PCI_REQ_IRQ_INDEX, [req]) == 0
    with pytest.raises(OSError):
        h.b.sysfs_write("/sys/bus/pci/drivers/vfio-pci/unbind", NVME)
    assert fired(req) == 1  # the device was asked back
    assert errno_of(lambda: h.set_irqs(dfd, 4, lib.VFIO_IRQ_SET_DATA_EVENTFD
                                       | lib.VFIO_IRQ_SET_ACTION_TRIGGER, 0, 0)) == errno.EINVAL
    assert h.set_irqs(dfd, 4, lib.VFIO_IRQ_SET_DATA_NONE | lib.VFIO_IRQ_SET_ACTION_TRIGGER) == 0  # unregister
    assert vfio_pci.core_of(host.system.devices[NVME]) is not None


# -- DMA through the IOMMU -----------------------------------------------------------------------------
def test_edu_dma_through_type1(edu: Any) -> None:
    h, cfd, dfd, model = edu
    mem = h.memory(0x10000)
    mem.write_bytes(0, b"through the IOMMU")
    h.map_dma(cfd, mem.address, IOVA, 0x10000)
    bar = h.b.mmap(MIB, PROT_READ | PROT_WRITE, MAP_SHARED, dfd, 0)
    h.maps.append(bar)
    efd = h.eventfd()
    h.eventfds(dfd, lib.VFIO_PCI_MSI_IRQ_INDEX, [efd])

    def transfer(src: int, dst: int, count: int, cmd: int) -> None:
        bar.write(0x80, 8, src)
        bar.write(0x88, 8, dst)
        bar.write(0x90, 8, count)
        bar.write(0x98, 8, cmd)

    transfer(IOVA, 0x40000, 17, 0x1)
    transfer(0x40000, IOVA + 0x8000, 17, 0x1 | 0x2 | 0x4)
    assert mem.read_bytes(0x8000, 17) == b"through the IOMMU"
    assert fired(efd) == 1 and bar.read(0x24, 4) == 0x100
    assert not h.system.faults
    before = mem.read_bytes(0, 0x10000)
    transfer(0x40000, 0x200000, 17, 0x3)  # not mapped
    assert mem.read_bytes(0, 0x10000) == before
    fault = h.system.faults[-1]
    assert (fault.bdf, fault.iova, fault.length, fault.write) == (EDU, 0x200000, 17, True)
    assert model.dma_errors == 1


def test_dma_blocked_without_bus_master(edu: Any) -> None:
    h, cfd, dfd, model = edu
    mem = h.memory(0x1000)
    h.map_dma(cfd, mem.address, IOVA, 0x1000)
    h.wcfg(dfd, 4, 0x0002, 2)
    mem.write_bytes(0, b"x")
    model.dma_buf[0:1] = b"y"
    h.b.pwrite(dfd, IOVA.to_bytes(8, "little"), 0x80)
    h.b.pwrite(dfd, (0x40000).to_bytes(8, "little"), 0x88)
    h.b.pwrite(dfd, (1).to_bytes(8, "little"), 0x90)
    h.b.pwrite(dfd, (1).to_bytes(8, "little"), 0x98)
    assert model.dma_buf[0:1] == b"y" and model.dma_errors == 1 and not h.system.faults


def test_nvme_through_vfio(nvme: Any) -> None:
    h, cfd, dfd, model = nvme
    h.wcfg(dfd, 4, 0x0006, 2)
    mem = h.memory(0x10000)
    h.map_dma(cfd, mem.address, IOVA, 0x10000)
    bar = h.b.mmap(0x4000, PROT_READ | PROT_WRITE, MAP_SHARED, dfd, 0)
    h.maps.append(bar)
    efd = h.eventfd()
    h.eventfds(dfd, lib.VFIO_PCI_MSIX_IRQ_INDEX, [efd])
    bar.write(0x24, 4, (3 << 16) | 3)
    bar.write(0x28, 8, IOVA)
    bar.write(0x30, 8, IOVA + 0x1000)
    bar.write(0x14, 4, 0x00460001)
    assert bar.read(0x1C, 4) & 1
    cmd = bytearray(64)
    cmd[0], cmd[2] = 0x06, 7  # Identify controller, CID 7
    cmd[24:32] = (IOVA + 0x2000).to_bytes(8, "little")
    cmd[40] = 1
    mem.write_bytes(0, bytes(cmd))
    bar.write(0x1000, 4, 1)
    cqe = mem.read_bytes(0x1000, 16)
    assert cqe[12] == 7 and cqe[14] & 1 == 1 and cqe[14] >> 1 == 0
    assert mem.read_bytes(0x2000 + 24, 14) == b"QEMU NVMe Ctrl"
    assert fired(efd) == 1


# -- resets --------------------------------------------------------------------------------------------
def test_reset(nvme: Any, edu: Any) -> None:
    h, _, dfd, model = nvme
    h.wcfg(dfd, 4, 0x0006, 2)
    model.bar_write(0, 0x14, 4, 0x00460001)
    before = model.reset_count
    assert h.b.ioctl(dfd, lib.VFIO_DEVICE_RESET) == 0
    assert model.reset_count == before + 1 and model.cc == 0
    assert model.command & 0x6 == 0x6  # config space restored around the reset
    _, _, edfd, _ = edu
    assert errno_of(lambda: h.b.ioctl(edfd, lib.VFIO_DEVICE_RESET)) == errno.EINVAL


def test_hot_reset(host: Host) -> None:
    _cfd, gfd, (da, db) = host.open_group_path([E1000_A, E1000_B])
    b = host.b
    buf = ffi.new("char[]", 64)
    hdr = ffi.cast("struct vfio_pci_hot_reset_info *", buf)
    hdr.argsz = 12
    assert errno_of(lambda: b.ioctl(da, lib.VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, hdr)) == errno.ENOSPC
    assert hdr.count == 2
    hdr.argsz = 64
    assert b.ioctl(da, lib.VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, hdr) == 0
    assert hdr.count == 2 and hdr.flags == 0
    devs = ffi.cast("struct vfio_pci_dependent_device *", buf + 12)
    group = host.group_of(E1000_A)
    assert [(devs[i].group_id, devs[i].segment, devs[i].bus, devs[i].devfn) for i in range(2)] == [
        (group, 0, 1, 0x08), (group, 0, 1, 0x10)]
    models_ = [host.system.devices[bdf].model for bdf in (E1000_A, E1000_B)]
    counts = [m.reset_count for m in models_]
    rbuf = ffi.new("char[]", 16)
    reset = ffi.cast("struct vfio_pci_hot_reset *", rbuf)
    reset.argsz, reset.count = 16, 1
    ffi.cast("int *", rbuf + 12)[0] = gfd
    assert b.ioctl(da, lib.VFIO_DEVICE_PCI_HOT_RESET, reset) == 0
    assert [m.reset_count for m in models_] == [c + 1 for c in counts]
    reset.count = 0
    assert errno_of(lambda: b.ioctl(da, lib.VFIO_DEVICE_PCI_HOT_RESET, reset)) == errno.EINVAL
    reset.count = 1
    ffi.cast("int *", rbuf + 12)[0] = da  # not a group
    assert errno_of(lambda: b.ioctl(da, lib.VFIO_DEVICE_PCI_HOT_RESET, reset)) == errno.EINVAL
    reset.count, reset.flags = 1, 1
    assert errno_of(lambda: b.ioctl(da, lib.VFIO_DEVICE_PCI_HOT_RESET, reset)) == errno.EINVAL


def test_hot_reset_on_root_bus_is_enodev(edu: Any) -> None:
    h, _, dfd, _ = edu
    hdr = ffi.new("struct vfio_pci_hot_reset_info *")
    hdr.argsz = ffi.sizeof(hdr[0])
    assert errno_of(lambda: h.b.ioctl(dfd, lib.VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, hdr)) == errno.ENODEV


# -- features --------------------------------------------------------------------------------------------
def test_features(edu: Any) -> None:
    h, _, dfd, _ = edu
    probe, get, set_ = lib.VFIO_DEVICE_FEATURE_PROBE, lib.VFIO_DEVICE_FEATURE_GET, lib.VFIO_DEVICE_FEATURE_SET
    entry = lib.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY
    assert h.feature(dfd, probe | set_ | entry) == 0
    assert errno_of(lambda: h.feature(dfd, probe | get | entry)) == errno.EINVAL
    assert errno_of(lambda: h.feature(dfd, get | set_ | entry)) == errno.EINVAL
    assert errno_of(lambda: h.feature(dfd, entry)) == errno.EINVAL  # neither GET nor SET
    assert errno_of(lambda: h.feature(dfd, 1 << 20 | entry)) == errno.EINVAL
    assert errno_of(lambda: h.feature(dfd, set_ | entry, argsz=7)) == errno.EINVAL
    for feature in (lib.VFIO_DEVICE_FEATURE_MIGRATION, lib.VFIO_DEVICE_FEATURE_PCI_VF_TOKEN,
                    lib.VFIO_DEVICE_FEATURE_DMA_LOGGING_START, lib.VFIO_DEVICE_FEATURE_BUS_MASTER, 0x7777):
        assert errno_of(lambda: h.feature(dfd, probe | feature)) == errno.ENOTTY


def test_low_power(edu: Any) -> None:
    h, _, dfd, model = edu
    bar = h.b.mmap(MIB, PROT_READ | PROT_WRITE, MAP_SHARED, dfd, 0)
    h.maps.append(bar)
    set_ = lib.VFIO_DEVICE_FEATURE_SET
    assert h.feature(dfd, set_ | lib.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY) == 0
    assert errno_of(lambda: h.feature(dfd, set_ | lib.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY)) == errno.EINVAL
    with pytest.raises(BusError):
        bar.read(0, 4)
    assert h.b.pread(dfd, 4, 0) == (0x010000ED).to_bytes(4, "little")  # rw resumes the device
    assert h.feature(dfd, set_ | lib.VFIO_DEVICE_FEATURE_LOW_POWER_EXIT) == 0
    assert bar.read(0, 4) == 0x010000ED
    wake = h.eventfd()
    data = wake.to_bytes(4, "little", signed=True) + bytes(4)
    assert errno_of(lambda: h.feature(dfd, set_ | lib.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP,
                                      (-1).to_bytes(4, "little", signed=True) + bytes(4))) == errno.EINVAL
    assert h.feature(dfd, set_ | lib.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP, data) == 0
    h.info(dfd)  # any access wakes the device and exits low power
    assert fired(wake) == 1
    assert bar.read(0, 4) == 0x010000ED


def test_ioeventfd(edu: Any) -> None:
    h, _, dfd, model = edu
    efd = h.eventfd()
    ioe = ffi.new("struct vfio_device_ioeventfd *")
    ioe.argsz = ffi.sizeof(ioe[0])
    ioe.flags = lib.VFIO_DEVICE_IOEVENTFD_32
    ioe.offset, ioe.data, ioe.fd = 0x04, 0x0F0F0F0F, efd
    assert h.b.ioctl(dfd, lib.VFIO_DEVICE_IOEVENTFD, ioe) == 0
    assert errno_of(lambda: h.b.ioctl(dfd, lib.VFIO_DEVICE_IOEVENTFD, ioe)) == errno.EEXIST
    os.eventfd_write(efd, 1)
    assert h.b.pread(dfd, 4, 0x04) == (0xF0F0F0F0).to_bytes(4, "little")  # liveness got the write
    ioe.fd = -1
    assert h.b.ioctl(dfd, lib.VFIO_DEVICE_IOEVENTFD, ioe) == 0
    assert errno_of(lambda: h.b.ioctl(dfd, lib.VFIO_DEVICE_IOEVENTFD, ioe)) == errno.ENODEV
    ioe.flags = lib.VFIO_DEVICE_IOEVENTFD_32 | lib.VFIO_DEVICE_IOEVENTFD_16
    assert errno_of(lambda: h.b.ioctl(dfd, lib.VFIO_DEVICE_IOEVENTFD, ioe)) == errno.EINVAL


# -- open / close -----------------------------------------------------------------------------------------
def test_close_disables_the_device(edu: Any) -> None:
    h, _, dfd, model = edu
    efd = h.eventfd()
    h.eventfds(dfd, 1, [efd])
    assert model.msi_enabled and model.irq_sink is not None
    h.b.close(dfd)
    assert not model.msi_enabled and model.irq_sink is None and not model.bus_master
    assert vfio_pci.core_of(h.system.devices[EDU]) is None


def test_mapping_keeps_the_device_open(edu: Any) -> None:
    h, _, dfd, model = edu
    bar = h.b.mmap(MIB, PROT_READ | PROT_WRITE, MAP_SHARED, dfd, 0)
    h.b.close(dfd)
    assert bar.read(0, 4) == 0x010000ED
    bar.close()
    assert model.irq_sink is None


def test_two_device_fds_share_one_device(host: Host) -> None:
    _cfd, gfd, (d1,) = host.open_group_path([EDU])
    d2 = host.b.ioctl(gfd, lib.VFIO_GROUP_GET_DEVICE_FD, ffi.new("char[]", EDU.encode()))
    host.wcfg(d1, 0x3C, 9, 1)
    assert host.cfg(d2, 0x3C, 1) == 9
    host.b.close(d1)
    assert host.cfg(d2, 0x3C, 1) == 9


# -- the cdev path -------------------------------------------------------------------------------------------
def cdev_path(host: Host, bdf: str) -> str:
    host.bind_vfio(bdf)
    names = host.b.sysfs_listdir(f"/sys/bus/pci/devices/{bdf}/vfio-dev")
    return f"/dev/vfio/devices/{names[0]}"


def bind(host: Host, dfd: int, iommufd: int, flags: int = 0, argsz: int | None = None) -> Any:
    bind = ffi.new("struct vfio_device_bind_iommufd *")
    bind.argsz = ffi.sizeof(bind[0]) if argsz is None else argsz
    bind.flags, bind.iommufd = flags, iommufd
    host.b.ioctl(dfd, lib.VFIO_DEVICE_BIND_IOMMUFD, bind)
    return bind


def test_cdev_before_bind(host: Host) -> None:
    path = cdev_path(host, EDU)
    b = host.b
    dfd = b.open(path)
    info = ffi.new("struct vfio_device_info *")
    info.argsz = ffi.sizeof(info[0])
    assert errno_of(lambda: b.ioctl(dfd, lib.VFIO_DEVICE_GET_INFO, info)) == errno.EINVAL
    assert errno_of(lambda: b.ioctl(dfd, 0x3B7F, 0)) == errno.EINVAL
    assert errno_of(lambda: b.pread(dfd, 4, CONFIG)) == errno.EINVAL
    assert errno_of(lambda: b.mmap(4096, PROT_READ, MAP_SHARED, dfd, 0)) == errno.EINVAL
    assert errno_of(lambda: bind(host, dfd, 3, argsz=11)) == errno.EINVAL
    assert errno_of(lambda: bind(host, dfd, -1)) == errno.EINVAL
    assert errno_of(lambda: bind(host, dfd, 3, flags=2)) == errno.EINVAL
    assert errno_of(lambda: bind(host, dfd, 9999)) == errno.EBADF
    cfd = b.open("/dev/vfio/vfio")
    assert errno_of(lambda: bind(host, dfd, cfd)) == errno.EBADFD
    efd = host.eventfd()
    assert errno_of(lambda: bind(host, dfd, efd)) == errno.EBADFD


def test_bind_with_a_bad_token_pointer_is_efault(host: Host) -> None:
    """vfio_df_check_token copies the UUID from the user: an unmapped
    ``token_uuid_ptr`` is EFAULT (it once crashed the interpreter), and the
    file can still be bound afterwards."""
    b = host.b
    dfd = b.open(cdev_path(host, EDU))
    ifd = b.open("/dev/iommu")
    bind_arg = ffi.new("struct vfio_device_bind_iommufd *")
    bind_arg.argsz = ffi.sizeof(bind_arg[0])
    bind_arg.flags, bind_arg.iommufd = lib.VFIO_DEVICE_BIND_FLAG_TOKEN, ifd
    bind_arg.token_uuid_ptr = 0x1000
    assert errno_of(lambda: b.ioctl(dfd, lib.VFIO_DEVICE_BIND_IOMMUFD, bind_arg)) == errno.EFAULT
    assert bind(host, dfd, ifd).out_devid > 0


def test_bind_on_a_group_device_file_is_einval(edu: Any) -> None:
    h, cfd, dfd, _ = edu
    assert errno_of(lambda: bind(h, dfd, cfd)) == errno.EINVAL


def test_cdev_bind_attach_and_dma(host: Host) -> None:
    path = cdev_path(host, EDU)
    b = host.b
    dfd = b.open(path)
    ifd = b.open("/dev/iommu")
    got = bind(host, dfd, ifd)
    assert got.out_devid > 0
    assert errno_of(lambda: bind(host, dfd, ifd)) == errno.EINVAL  # bound once
    alloc = ffi.new("struct iommu_ioas_alloc *")
    alloc.size = ffi.sizeof(alloc[0])
    b.ioctl(ifd, lib.IOMMU_IOAS_ALLOC, alloc)
    mem = host.memory(0x10000)
    mp = ffi.new("struct iommu_ioas_map *")
    mp.size = ffi.sizeof(mp[0])
    mp.flags = lib.IOMMU_IOAS_MAP_FIXED_IOVA | lib.IOMMU_IOAS_MAP_READABLE | lib.IOMMU_IOAS_MAP_WRITEABLE
    mp.ioas_id, mp.user_va, mp.length, mp.iova = alloc.out_ioas_id, mem.address, 0x10000, IOVA
    b.ioctl(ifd, lib.IOMMU_IOAS_MAP, mp)
    att = ffi.new("struct vfio_device_attach_iommufd_pt *")
    att.argsz = ffi.sizeof(att[0])
    att.pt_id = alloc.out_ioas_id
    assert b.ioctl(dfd, lib.VFIO_DEVICE_ATTACH_IOMMUFD_PT, att) == 0
    assert att.pt_id != 0
    host.wcfg(dfd, 4, 0x0006, 2)
    mem.write_bytes(0, b"cdev DMA")
    for reg, value in ((0x80, IOVA), (0x88, 0x40000), (0x90, 8), (0x98, 1),
                       (0x80, 0x40000), (0x88, IOVA + 0x100), (0x90, 8), (0x98, 3)):
        b.pwrite(dfd, value.to_bytes(8, "little"), reg)
    assert mem.read_bytes(0x100, 8) == b"cdev DMA"
    det = ffi.new("struct vfio_device_detach_iommufd_pt *")
    det.argsz = ffi.sizeof(det[0])
    assert b.ioctl(dfd, lib.VFIO_DEVICE_DETACH_IOMMUFD_PT, det) == 0
    b.pwrite(dfd, (3).to_bytes(8, "little"), 0x98)
    assert host.system.faults  # blocked once detached
    det.flags = 2
    assert errno_of(lambda: b.ioctl(dfd, lib.VFIO_DEVICE_DETACH_IOMMUFD_PT, det)) == errno.EINVAL
    assert errno_of(lambda: b.open(f"/dev/vfio/{host.group_of(EDU)}")) == errno.EBUSY
    b.close(dfd)
    gfd = b.open(f"/dev/vfio/{host.group_of(EDU)}")
    b.close(gfd)


class StubDomain(IoDomain):
    def __init__(self, iova: int, va: int, length: int) -> None:
        self.iova, self.va, self.length = iova, va, length

    def translate(self, iova: int, length: int, write: bool) -> list[tuple[int, int]]:
        if iova < self.iova or iova + length > self.iova + self.length:
            raise IommuFault(iova, length, write, "not mapped")
        return [(self.va + iova - self.iova, length)]


class StubIommufd(FakeFile):
    """Just enough of an iommufd for the device file's side of the contract."""

    def __init__(self, kernel: FakeBackend) -> None:
        super().__init__(kernel)
        self.devices: dict[int, Any] = {}
        self.domains: dict[int, IoDomain] = {}
        self.calls: list[tuple[Any, ...]] = []

    def bind_device(self, pdev: Any, dfile: Any) -> int:
        devid = 100 + len(self.devices)
        self.devices[devid] = pdev
        self.calls.append(("bind", pdev.bdf))
        return devid

    def attach_device(self, devid: int, pt_id: int, pasid: int | None) -> int:
        self.calls.append(("attach", devid, pt_id, pasid))
        if pt_id not in self.domains:
            raise OSError(errno.ENOENT, "no such object")
        self.devices[devid].domain = self.domains[pt_id]
        return pt_id + 1000

    def detach_device(self, devid: int, pasid: int | None) -> None:
        self.calls.append(("detach", devid, pasid))
        self.devices[devid].domain = None

    def unbind_device(self, devid: int) -> None:
        self.calls.append(("unbind", devid))
        del self.devices[devid]


def test_cdev_contract_with_a_stub_iommufd(host: Host) -> None:
    path = cdev_path(host, EDU)
    b = host.b
    stub = StubIommufd(b)
    ifd = b.install(stub)
    dfd = b.open(path)
    got = bind(host, dfd, ifd)
    assert got.out_devid == 100 and stub.calls == [("bind", EDU)]
    dfd2 = b.open(path)
    assert errno_of(lambda: bind(host, dfd2, ifd)) == errno.EINVAL  # a cdev opens a device once
    b.close(dfd2)
    assert errno_of(lambda: b.open(f"/dev/vfio/{host.group_of(EDU)}")) == errno.EBUSY
    mem = host.memory(0x10000)
    stub.domains[7] = StubDomain(IOVA, mem.address, 0x10000)
    att = ffi.new("struct vfio_device_attach_iommufd_pt *")
    att.argsz, att.pt_id = 12, 99
    assert errno_of(lambda: b.ioctl(dfd, lib.VFIO_DEVICE_ATTACH_IOMMUFD_PT, att)) == errno.ENOENT
    att.pt_id = 7
    assert b.ioctl(dfd, lib.VFIO_DEVICE_ATTACH_IOMMUFD_PT, att) == 0 and att.pt_id == 1007
    att.flags = lib.VFIO_DEVICE_ATTACH_PASID
    assert errno_of(lambda: b.ioctl(dfd, lib.VFIO_DEVICE_ATTACH_IOMMUFD_PT, att)) == errno.EINVAL  # argsz
    att.argsz, att.pasid, att.pt_id = 16, 5, 7
    assert b.ioctl(dfd, lib.VFIO_DEVICE_ATTACH_IOMMUFD_PT, att) == 0
    assert stub.calls[-1] == ("attach", 100, 7, 5)
    att.flags = 4
    assert errno_of(lambda: b.ioctl(dfd, lib.VFIO_DEVICE_ATTACH_IOMMUFD_PT, att)) == errno.EINVAL
    host.wcfg(dfd, 4, 0x0006, 2)
    mem.write_bytes(0, b"cdev DMA")
    for reg, value in ((0x80, IOVA), (0x88, 0x40000), (0x90, 8), (0x98, 1),
                       (0x80, 0x40000), (0x88, IOVA + 0x100), (0x90, 8), (0x98, 3)):
        b.pwrite(dfd, value.to_bytes(8, "little"), reg)
    assert mem.read_bytes(0x100, 8) == b"cdev DMA"
    info = ffi.new("struct vfio_pci_hot_reset_info *")
    info.argsz = ffi.sizeof(info[0])
    assert errno_of(lambda: b.ioctl(dfd, lib.VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, info)) == errno.ENODEV
    det = ffi.new("struct vfio_device_detach_iommufd_pt *")
    det.argsz = ffi.sizeof(det[0])
    assert b.ioctl(dfd, lib.VFIO_DEVICE_DETACH_IOMMUFD_PT, det) == 0
    assert stub.calls[-1] == ("detach", 100, None)
    b.close(dfd)
    assert stub.calls[-2:] == [("detach", 100, 5), ("unbind", 100)]
    gfd = b.open(f"/dev/vfio/{host.group_of(EDU)}")  # the group is usable again
    b.close(gfd)


def test_msix_table_not_mappable_mode(nvme: Any, host: Host) -> None:
    h, _, dfd, _ = nvme
    core = vfio_pci.core_of(host.system.devices[NVME])
    assert core is not None
    core.msix_mappable = False  # what kernels before 4.16 did
    buf = ffi.new("char[]", 128)
    r = ffi.cast("struct vfio_region_info *", buf)
    r.argsz, r.index = 128, 0
    assert h.b.ioctl(dfd, lib.VFIO_DEVICE_GET_REGION_INFO, r) == 0
    cap = ffi.cast("struct vfio_region_info_cap_sparse_mmap *", buf + r.cap_offset)
    assert cap.header.id == lib.VFIO_REGION_INFO_CAP_SPARSE_MMAP and cap.nr_areas == 2
    assert [(cap.areas[i].offset, cap.areas[i].size) for i in range(2)] == [(0, 0x2000), (0x3000, 0x1000)]
    assert errno_of(lambda: h.b.mmap(0x4000, PROT_READ, MAP_SHARED, dfd, 0)) == errno.EINVAL
    low = h.b.mmap(0x2000, PROT_READ, MAP_SHARED, dfd, 0)
    h.maps.append(low)
    assert low.read(0x08, 4) == 0x00010400


def test_d3hot_through_the_pm_capability(nvme: Any) -> None:
    h, _, dfd, model = nvme
    h.wcfg(dfd, 4, 0x0006, 2)
    bar = h.b.mmap(0x4000, PROT_READ | PROT_WRITE, MAP_SHARED, dfd, 0)
    h.maps.append(bar)
    assert model.pm_offset is not None
    ctrl = model.pm_offset + 4
    h.wcfg(dfd, ctrl, 3, 2)
    assert model.power_state == 3 and h.cfg(dfd, ctrl, 2) & 3 == 3
    assert errno_of(lambda: h.b.pread(dfd, 4, 0x08)) == errno.EIO
    with pytest.raises(BusError):
        bar.read(0x08, 4)
    h.wcfg(dfd, ctrl, 0, 2)
    assert model.power_state == 0 and bar.read(0x08, 4) == 0x00010400


def test_a_user_model_behind_vfio() -> None:
    from pyvfio.fake import models
    from pyvfio.fake.machine.pci import Bar, DeviceModel

    class Counter(DeviceModel):
        vendor_id, device_id, class_code = 0x1234, 0xC0DE, 0xFF0000
        default_bars = (Bar(0, 0x1000),)

        def __init__(self, spec: Any = None) -> None:
            super().__init__(spec)
            self.add_msi_capability(1)
            self.accesses: list[tuple[int, int]] = []
            self.count = 0

        def on_read(self, bar: int, offset: int, width: int) -> int:
            self.accesses.append((offset, width))
            return self.count

        def on_write(self, bar: int, offset: int, width: int, value: int) -> None:
            self.accesses.append((offset, width))
            self.count += value
            self.notify()

    def factory(spec: Any) -> DeviceModel:
        return Counter(spec) if spec.get("model") == "counter" else models.create(spec)

    system = System({"name": "mine", "devices": [
        {"bdf": "0000:00:07.0", "model": "counter", "vendor": 0x1234, "device": 0xC0DE, "driver": None}]},
        models=factory)
    h = Host(system)
    try:
        _cfd, _gfd, (dfd,) = h.open_group_path(["0000:00:07.0"])
        efd = h.eventfd()
        h.eventfds(dfd, lib.VFIO_PCI_MSI_IRQ_INDEX, [efd])
        bar = h.b.mmap(0x1000, PROT_READ | PROT_WRITE, MAP_SHARED, dfd, 0)
        h.maps.append(bar)
        h.wcfg(dfd, 4, 0x0006, 2)  # memory decode, and Bus Master for the MSI
        bar.write(0x10, 2, 5)
        assert bar.read(0x10, 8) == 5 and fired(efd) == 1
        model = system.devices["0000:00:07.0"].model
        assert isinstance(model, Counter) and model.accesses == [(0x10, 2), (0x10, 8)]
    finally:
        h.close()


def test_cdev_hot_reset_by_devid(host: Host) -> None:
    b = host.b
    stub = StubIommufd(b)
    ifd = b.install(stub)
    pa, pb = cdev_path(host, E1000_A), cdev_path(host, E1000_B)
    da = b.open(pa)
    assert bind(host, da, ifd).out_devid == 100
    buf = ffi.new("char[]", 64)
    hdr = ffi.cast("struct vfio_pci_hot_reset_info *", buf)
    hdr.argsz = 64
    assert b.ioctl(da, lib.VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, hdr) == 0
    both = lib.VFIO_PCI_HOT_RESET_FLAG_DEV_ID | lib.VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED
    devs = ffi.cast("struct vfio_pci_dependent_device *", buf + 12)
    # B is not bound, but owned through the IOMMU group A is bound in
    assert hdr.flags == both and [devs[0].devid, devs[1].devid] == [100, lib.VFIO_PCI_DEVID_OWNED]
    db = b.open(pb)
    assert bind(host, db, ifd).out_devid == 101
    assert b.ioctl(da, lib.VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, hdr) == 0
    assert [devs[0].devid, devs[1].devid] == [100, 101]
    rbuf = ffi.new("char[]", 16)
    reset = ffi.cast("struct vfio_pci_hot_reset *", rbuf)
    reset.argsz, reset.count = 12, 0
    model_b = host.system.devices[E1000_B].model
    before = model_b.reset_count
    assert b.ioctl(da, lib.VFIO_DEVICE_PCI_HOT_RESET, reset) == 0
    assert model_b.reset_count == before + 1
    reset.count = 1
    assert errno_of(lambda: b.ioctl(da, lib.VFIO_DEVICE_PCI_HOT_RESET, reset)) == errno.EINVAL
    b.close(db)  # B unbound again: still owned through the group
    assert b.ioctl(da, lib.VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, hdr) == 0
    assert hdr.flags == both and devs[1].devid == lib.VFIO_PCI_DEVID_OWNED
    host.b.sysfs_write("/sys/bus/pci/devices/%s/driver_override" % E1000_B, "")
    host.b.sysfs_write("/sys/bus/pci/drivers/vfio-pci/unbind", E1000_B)
    assert b.ioctl(da, lib.VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, hdr) == 0
    # B left vfio-pci: not in the dev_set, so not owned
    assert hdr.flags == lib.VFIO_PCI_HOT_RESET_FLAG_DEV_ID
    assert devs[1].devid == lib.VFIO_PCI_DEVID_NOT_OWNED & 0xFFFFFFFF
    reset.count = 0
    assert errno_of(lambda: b.ioctl(da, lib.VFIO_DEVICE_PCI_HOT_RESET, reset)) == errno.EINVAL


def test_atomic_completion_capability() -> None:
    system = System({"name": "atomics", "devices": [
        {"bdf": "0000:00:08.0", "model": "generic", "vendor": 0x15B3, "device": 0x1017, "driver": None,
         "model_atomic_comp": [32, 64]}]})
    h = Host(system)
    try:
        _cfd, _gfd, (dfd,) = h.open_group_path(["0000:00:08.0"])
        info = h.info(dfd)
        assert info.flags & lib.VFIO_DEVICE_FLAGS_CAPS and info.argsz == 24 + 16 and info.cap_offset == 0
        buf = ffi.new("char[]", 64)
        full = ffi.cast("struct vfio_device_info *", buf)
        full.argsz = 64
        assert h.b.ioctl(dfd, lib.VFIO_DEVICE_GET_INFO, full) == 0
        assert full.cap_offset == 24
        cap = ffi.cast("struct vfio_device_info_cap_pci_atomic_comp *", buf + 24)
        assert (cap.header.id, cap.header.version, cap.header.next) == (lib.VFIO_DEVICE_INFO_CAP_PCI_ATOMIC_COMP, 1, 0)
        assert cap.flags == lib.VFIO_PCI_ATOMIC_COMP32 | lib.VFIO_PCI_ATOMIC_COMP64
    finally:
        h.close()


def test_group_path_on_iommufd_compat(host: Host) -> None:
    host.bind_vfio(EDU)
    b = host.b
    ifd = b.open("/dev/iommu")
    gfd = b.open(f"/dev/vfio/{host.group_of(EDU)}")
    assert b.ioctl(gfd, lib.VFIO_GROUP_SET_CONTAINER, ffi.new("int *", ifd)) == 0
    assert b.ioctl(ifd, lib.VFIO_SET_IOMMU, TYPE1v2) == 0
    dfd = b.ioctl(gfd, lib.VFIO_GROUP_GET_DEVICE_FD, ffi.new("char[]", EDU.encode()))
    mem = host.memory(0x10000)
    host.map_dma(ifd, mem.address, IOVA, 0x10000)
    host.wcfg(dfd, 4, 0x0006, 2)
    mem.write_bytes(0, b"compat")
    for reg, value in ((0x80, IOVA), (0x88, 0x40000), (0x90, 6), (0x98, 1),
                       (0x80, 0x40000), (0x88, IOVA + 0x40), (0x90, 6), (0x98, 3)):
        b.pwrite(dfd, value.to_bytes(8, "little"), reg)
    assert mem.read_bytes(0x40, 6) == b"compat" and not host.system.faults
    b.close(dfd)
    model = host.system.devices[EDU].model
    assert isinstance(model, EduDevice) and model.irq_sink is None
