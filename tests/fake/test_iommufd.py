"""/dev/iommu on the fake kernel, driven through the Backend with the
kernel's structs and checked against Linux 7.3's results and errnos
(after tools/testing/selftests/iommu/iommufd.c and the rules of
drivers/iommu/iommufd/)."""

from __future__ import annotations

import errno
import os
import tempfile
from typing import Any, Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvfio._uapi import ffi, lib
from pyvfio.backend.base import (
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    PROT_READ,
    PROT_WRITE,
    MemoryMap,
)
from pyvfio.fake.core import FakeBackend, IommuFault
from pyvfio.fake.iommufd import IommufdFile
from pyvfio.fake.machine.system import System

PAGE = 4096
MIB = 1 << 20
U64_MAX = (1 << 64) - 1
EDU = "0000:00:02.0"
E1000E = "0000:00:04.0"
E1000_A = "0000:01:01.0"
MSI_START, MSI_LAST = 0xFEE00000, 0xFEEFFFFF
RW = lib.IOMMU_IOAS_MAP_READABLE | lib.IOMMU_IOAS_MAP_WRITEABLE
FIXED = lib.IOMMU_IOAS_MAP_FIXED_IOVA


def err(fn: Callable[[], object]) -> int:
    """The errno ``fn`` fails with (the test fails if it succeeds)."""
    with pytest.raises(OSError) as info:
        fn()
    assert info.value.errno is not None
    return info.value.errno


def addr(cdata: Any) -> int:
    return int(ffi.cast("uintptr_t", cdata))


class Iommufd:
    """Raw iommufd ioctls on one /dev/iommu fd, as user code issues them."""

    def __init__(self, system: System) -> None:
        self.system = system
        self.b: FakeBackend = system.backend
        self.fd = self.b.open("/dev/iommu")

    @property
    def file(self) -> IommufdFile:
        f = self.b.file(self.fd)
        assert isinstance(f, IommufdFile)
        return f

    def close(self) -> None:
        if self.fd >= 0:
            self.b.close(self.fd)
            self.fd = -1

    def ioctl(self, request: int, arg: Any) -> int:
        return self.b.ioctl(self.fd, request, arg)

    @staticmethod
    def cmd(ctype: str, **fields: int) -> Any:
        c = ffi.new(f"struct {ctype} *")
        c.size = ffi.sizeof(c[0])
        for k, v in fields.items():
            setattr(c, k, v)
        return c

    # -- IOAS -------------------------------------------------------------------
    def ioas(self) -> int:
        c = self.cmd("iommu_ioas_alloc")
        assert self.ioctl(lib.IOMMU_IOAS_ALLOC, c) == 0
        return int(c.out_ioas_id)

    def map(self, ioas: int, va: int, length: int, iova: int | None = None,
            flags: int = RW) -> int:
        c = self.cmd("iommu_ioas_map", ioas_id=ioas, user_va=va, length=length,
                     flags=flags | (FIXED if iova is not None else 0), iova=iova or 0)
        assert self.ioctl(lib.IOMMU_IOAS_MAP, c) == 0
        return int(c.iova)

    def map_file(self, ioas: int, fd: int, start: int, length: int, iova: int | None = None,
                 flags: int = RW) -> int:
        c = self.cmd("iommu_ioas_map_file", ioas_id=ioas, fd=fd, start=start, length=length,
                     flags=flags | (FIXED if iova is not None else 0), iova=iova or 0)
        assert self.ioctl(lib.IOMMU_IOAS_MAP_FILE, c) == 0
        return int(c.iova)

    def unmap(self, ioas: int, iova: int, length: int) -> int:
        c = self.cmd("iommu_ioas_unmap", ioas_id=ioas, iova=iova, length=length)
        assert self.ioctl(lib.IOMMU_IOAS_UNMAP, c) == 0
        return int(c.length)

    def copy(self, dst: int, src: int, src_iova: int, length: int, dst_iova: int | None = None,
             flags: int = RW) -> int:
        c = self.cmd("iommu_ioas_copy", dst_ioas_id=dst, src_ioas_id=src, src_iova=src_iova,
                     length=length, dst_iova=dst_iova or 0,
                     flags=flags | (FIXED if dst_iova is not None else 0))
        assert self.ioctl(lib.IOMMU_IOAS_COPY, c) == 0
        return int(c.dst_iova)

    def ranges(self, ioas: int) -> tuple[list[tuple[int, int]], int]:
        arr = ffi.new("struct iommu_iova_range[16]")
        c = self.cmd("iommu_ioas_iova_ranges", ioas_id=ioas, num_iovas=16,
                     allowed_iovas=addr(arr))
        assert self.ioctl(lib.IOMMU_IOAS_IOVA_RANGES, c) == 0
        return [(int(arr[i].start), int(arr[i].last)) for i in range(c.num_iovas)], \
            int(c.out_iova_alignment)

    def allow(self, ioas: int, ranges: list[tuple[int, int]]) -> None:
        arr = ffi.new("struct iommu_iova_range[]", max(len(ranges), 1))
        for i, (s, l) in enumerate(ranges):
            arr[i].start, arr[i].last = s, l
        c = self.cmd("iommu_ioas_allow_iovas", ioas_id=ioas, num_iovas=len(ranges),
                     allowed_iovas=addr(arr))
        assert self.ioctl(lib.IOMMU_IOAS_ALLOW_IOVAS, c) == 0

    def destroy(self, oid: int) -> None:
        assert self.ioctl(lib.IOMMU_DESTROY, self.cmd("iommu_destroy", id=oid)) == 0

    def option(self, option_id: int, op: int, val: int = 0, object_id: int = 0) -> int:
        c = self.cmd("iommu_option", option_id=option_id, op=op, val64=val, object_id=object_id)
        assert self.ioctl(lib.IOMMU_OPTION, c) == 0
        return int(c.val64)

    def hwpt_alloc(self, dev: int, pt: int, flags: int = 0, fault_id: int = 0,
                   data_type: int = 0, data: bytes = b"") -> int:
        buf = ffi.new("char[]", data) if data else ffi.NULL
        c = self.cmd("iommu_hwpt_alloc", dev_id=dev, pt_id=pt, flags=flags, fault_id=fault_id,
                     data_type=data_type, data_len=len(data),
                     data_uptr=addr(buf) if data else 0)
        assert self.ioctl(lib.IOMMU_HWPT_ALLOC, c) == 0
        return int(c.out_hwpt_id)

    def vfio_ioas(self, op: int, ioas: int = 0) -> int:
        c = self.cmd("iommu_vfio_ioas", op=op, ioas_id=ioas)
        assert self.ioctl(lib.IOMMU_VFIO_IOAS, c) == 0
        return int(c.ioas_id)

    def fault_queue(self) -> tuple[int, int]:
        c = self.cmd("iommu_fault_alloc")
        assert self.ioctl(lib.IOMMU_FAULT_QUEUE_ALLOC, c) == 0
        return int(c.out_fault_id), int(c.out_fault_fd)


class Machine:
    """A System plus helpers for buffers and vfio cdev devices."""

    def __init__(self, system: System) -> None:
        self.system = system
        self.b = system.backend
        self.maps: list[MemoryMap] = []
        self.fds: list[int] = []
        self.ctxs: list[Iommufd] = []

    def iommufd(self) -> Iommufd:
        ctx = Iommufd(self.system)
        self.ctxs.append(ctx)
        return ctx

    def buffer(self, size: int, prot: int = PROT_READ | PROT_WRITE) -> MemoryMap:
        m = self.b.mmap(size, prot, MAP_PRIVATE | MAP_ANONYMOUS)
        self.maps.append(m)
        return m

    def bind_vfio(self, bdf: str) -> None:
        b = self.b
        dev = f"/sys/bus/pci/devices/{bdf}"
        b.sysfs_write(f"{dev}/driver_override", "vfio-pci")
        driver = b.sysfs_basename_of_link(f"{dev}/driver")
        if driver is not None and driver != "vfio-pci":
            b.sysfs_write(f"/sys/bus/pci/drivers/{driver}/unbind", bdf)
        if driver != "vfio-pci":
            b.sysfs_write("/sys/bus/pci/drivers_probe", bdf)

    def cdev(self, bdf: str, ctx: Iommufd) -> tuple[int, int]:
        """Open ``bdf``'s vfio cdev and bind it to ``ctx``: (fd, dev_id)."""
        self.bind_vfio(bdf)
        name = self.b.sysfs_listdir(f"/sys/bus/pci/devices/{bdf}/vfio-dev")[0]
        dfd = self.b.open(f"/dev/vfio/devices/{name}")
        self.fds.append(dfd)
        bind = ffi.new("struct vfio_device_bind_iommufd *")
        bind.argsz = ffi.sizeof(bind[0])
        bind.iommufd = ctx.fd
        assert self.b.ioctl(dfd, lib.VFIO_DEVICE_BIND_IOMMUFD, bind) == 0
        return dfd, int(bind.out_devid)

    def attach(self, dfd: int, pt_id: int, pasid: int | None = None) -> int:
        at = ffi.new("struct vfio_device_attach_iommufd_pt *")
        at.argsz = ffi.sizeof(at[0])
        at.pt_id = pt_id
        if pasid is not None:
            at.flags = lib.VFIO_DEVICE_ATTACH_PASID
            at.pasid = pasid
        assert self.b.ioctl(dfd, lib.VFIO_DEVICE_ATTACH_IOMMUFD_PT, at) == 0
        return int(at.pt_id)

    def detach(self, dfd: int, pasid: int | None = None) -> None:
        de = ffi.new("struct vfio_device_detach_iommufd_pt *")
        de.argsz = ffi.sizeof(de[0])
        if pasid is not None:
            de.flags = lib.VFIO_DEVICE_DETACH_PASID
            de.pasid = pasid
        assert self.b.ioctl(dfd, lib.VFIO_DEVICE_DETACH_IOMMUFD_PT, de) == 0

    def close_fd(self, fd: int) -> None:
        self.fds.remove(fd)
        self.b.close(fd)

    def close(self) -> None:
        for fd in reversed(self.fds):
            self.b.close(fd)
        self.fds.clear()
        for ctx in self.ctxs:
            ctx.close()
        for m in self.maps:
            m.close()
        self.maps.clear()


@pytest.fixture
def machine_factory() -> Iterator[Callable[..., Machine]]:
    machines: list[Machine] = []

    def make(topology: Any = "default", **overrides: Any) -> Machine:
        from pyvfio.fake.machine.topology import load

        topo = load(topology)
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(topo.get(key), dict):
                topo[key].update(value)
            else:
                topo[key] = value
        m = Machine(System(topo))
        machines.append(m)
        return m

    yield make
    for m in machines:
        m.close()
        assert m.system.user_memory.pinned_pages == 0, "pins leaked"


@pytest.fixture
def m(machine_factory: Callable[..., Machine]) -> Machine:
    return machine_factory("default")


@pytest.fixture
def ctx(m: Machine) -> Iommufd:
    return m.iommufd()


# -- dispatch -----------------------------------------------------------------------------------
def test_cmd_fail(ctx: Iommufd) -> None:
    # object id is invalid
    assert err(lambda: ctx.destroy(0)) == errno.ENOENT
    # bad pointer
    assert err(lambda: ctx.ioctl(lib.IOMMU_DESTROY, 0)) == errno.EFAULT
    # unknown ioctl numbers: below the base (a vfio compat number), past the table
    c = ctx.cmd("iommu_destroy")
    io_base = ord(";") << 8  # _IO(IOMMUFD_TYPE, nr)
    assert err(lambda: ctx.ioctl(io_base | (0x80 - 1), c)) == errno.ENOTTY
    assert err(lambda: ctx.ioctl(io_base | 0x96, c)) == errno.ENOTTY
    # the right number with other direction/size bits
    assert err(lambda: ctx.ioctl(lib.IOMMU_DESTROY | (3 << 30) | (8 << 16), c)) == errno.ENOTTY


_LENGTH_TABLE = [
    ("iommu_destroy", lib.IOMMU_DESTROY, "id"),
    ("iommu_hw_info", lib.IOMMU_GET_HW_INFO, "__reserved"),
    ("iommu_hwpt_alloc", lib.IOMMU_HWPT_ALLOC, "__reserved"),
    ("iommu_hwpt_invalidate", lib.IOMMU_HWPT_INVALIDATE, "__reserved"),
    ("iommu_ioas_alloc", lib.IOMMU_IOAS_ALLOC, "out_ioas_id"),
    ("iommu_ioas_iova_ranges", lib.IOMMU_IOAS_IOVA_RANGES, "out_iova_alignment"),
    ("iommu_ioas_allow_iovas", lib.IOMMU_IOAS_ALLOW_IOVAS, "allowed_iovas"),
    ("iommu_ioas_map", lib.IOMMU_IOAS_MAP, "iova"),
    ("iommu_ioas_copy", lib.IOMMU_IOAS_COPY, "src_iova"),
    ("iommu_ioas_unmap", lib.IOMMU_IOAS_UNMAP, "length"),
    ("iommu_option", lib.IOMMU_OPTION, "val64"),
    ("iommu_vfio_ioas", lib.IOMMU_VFIO_IOAS, "__reserved"),
    ("iommu_ioas_map_file", lib.IOMMU_IOAS_MAP_FILE, "iova"),
    ("iommu_viommu_alloc", lib.IOMMU_VIOMMU_ALLOC, "out_viommu_id"),
    ("iommu_vdevice_alloc", lib.IOMMU_VDEVICE_ALLOC, "virt_id"),
    ("iommu_ioas_change_process", lib.IOMMU_IOAS_CHANGE_PROCESS, "__reserved"),
    ("iommu_fault_alloc", lib.IOMMU_FAULT_QUEUE_ALLOC, "out_fault_fd"),
    ("iommu_veventq_alloc", lib.IOMMU_VEVENTQ_ALLOC, "out_veventq_fd"),
    ("iommu_hw_queue_alloc", lib.IOMMU_HW_QUEUE_ALLOC, "length"),
    ("iommu_hwpt_set_dirty_tracking", lib.IOMMU_HWPT_SET_DIRTY_TRACKING, "__reserved"),
    ("iommu_hwpt_get_dirty_bitmap", lib.IOMMU_HWPT_GET_DIRTY_BITMAP, "data"),
    ("iommu_ioas_noiommu_get_pa", lib.IOMMU_IOAS_NOIOMMU_GET_PA, "out_phys"),
]


def _offsetofend(ctype: str, field: str) -> int:
    for name, f in ffi.typeof(ctype).fields:
        if name == field:
            return int(f.offset + ffi.sizeof(f.type))
    raise KeyError(field)


@pytest.mark.parametrize("name,request_,last", _LENGTH_TABLE, ids=[t[0] for t in _LENGTH_TABLE])
def test_cmd_length(ctx: Iommufd, m: Machine, name: str, request_: int, last: str) -> None:
    """TEST_LENGTH of the selftest: too short, too long with a nonzero tail,
    too long with a zero tail (same result as the exact size)."""
    ctype = f"struct {name}"
    size = ffi.sizeof(ctype)
    min_size = _offsetofend(ctype, last)
    buf = ffi.new("char[]", size + 8)
    size_field = ffi.cast("uint32_t *", buf)
    buf[size] = b"\xff"
    size_field[0] = min_size - 1
    assert err(lambda: ctx.ioctl(request_, buf)) == errno.EINVAL
    size_field[0] = size + 1
    assert err(lambda: ctx.ioctl(request_, buf)) == errno.E2BIG

    def run() -> int:
        try:
            rc = ctx.ioctl(request_, buf)
        except OSError as e:
            return -int(e.errno or 0)
        if request_ == lib.IOMMU_FAULT_QUEUE_ALLOC:
            m.b.close(int(ffi.cast("struct iommu_fault_alloc *", buf).out_fault_fd))
        return rc

    # (fresh zeroed commands each time: outputs of the first call would
    # change the second's input)
    ffi.memmove(buf, bytes(size + 8), size + 8)
    size_field[0] = size
    first = run()
    ffi.memmove(buf, bytes(size + 8), size + 8)
    size_field[0] = size + 1
    assert run() == first


def test_cmd_ex_fail(ctx: Iommufd) -> None:
    buf = ffi.new("char[16]")
    c = ffi.cast("struct iommu_destroy *", buf)
    c.size = 16
    # object id is invalid and command is longer
    assert err(lambda: ctx.ioctl(lib.IOMMU_DESTROY, buf)) == errno.ENOENT
    # future area is non-zero
    buf[12] = b"\x01"
    assert err(lambda: ctx.ioctl(lib.IOMMU_DESTROY, buf)) == errno.E2BIG
    # original command "works"
    c.size = 8
    assert err(lambda: ctx.ioctl(lib.IOMMU_DESTROY, buf)) == errno.ENOENT
    # short command fails
    c.size = 7
    assert err(lambda: ctx.ioctl(lib.IOMMU_DESTROY, buf)) == errno.EINVAL


def test_size_beyond_the_argument_is_efault(ctx: Iommufd) -> None:
    c = ctx.cmd("iommu_destroy")
    c.size = 64  # claims more than the 8-byte struct the pointer addresses
    assert err(lambda: ctx.ioctl(lib.IOMMU_DESTROY, c)) == errno.EFAULT


def test_output_only_up_to_user_size(ctx: Iommufd) -> None:
    ioas = ctx.ioas()
    arr = ffi.new("struct iommu_iova_range[2]")
    buf = ffi.new("char[]", ffi.sizeof("struct iommu_ioas_iova_ranges") + 8)
    c = ffi.cast("struct iommu_ioas_iova_ranges *", buf)
    # a user struct that stops before out_iova_alignment is rejected...
    c.size = ffi.offsetof("struct iommu_ioas_iova_ranges", "out_iova_alignment")
    c.ioas_id, c.num_iovas, c.allowed_iovas = ioas, 2, addr(arr)
    assert err(lambda: ctx.ioctl(lib.IOMMU_IOAS_IOVA_RANGES, buf)) == errno.EINVAL
    # ...and the kernel writes exactly the user's size back
    size = ffi.sizeof("struct iommu_ioas_iova_ranges")
    c.size = size
    for i in range(size, size + 8):
        buf[i] = b"\xaa"
    assert ctx.ioctl(lib.IOMMU_IOAS_IOVA_RANGES, buf) == 0
    assert c.num_iovas == 1 and c.out_iova_alignment == 1
    # GET_HW_INFO's minimum size excludes out_capabilities: it is not written


def test_int_address_argument(ctx: Iommufd, m: Machine) -> None:
    buf = m.buffer(PAGE)
    c = ffi.cast("struct iommu_ioas_alloc *", buf.address)
    c.size = ffi.sizeof("struct iommu_ioas_alloc")
    assert ctx.ioctl(lib.IOMMU_IOAS_ALLOC, buf.address) == 0
    assert c.out_ioas_id == 1
    # an unmapped address faults
    assert err(lambda: ctx.ioctl(lib.IOMMU_IOAS_ALLOC, 0x10)) == errno.EFAULT


@pytest.mark.parametrize("name,request_,field", [
    ("iommu_ioas_iova_ranges", lib.IOMMU_IOAS_IOVA_RANGES, "__reserved"),
    ("iommu_ioas_allow_iovas", lib.IOMMU_IOAS_ALLOW_IOVAS, "__reserved"),
    ("iommu_ioas_map", lib.IOMMU_IOAS_MAP, "__reserved"),
    ("iommu_option", lib.IOMMU_OPTION, "__reserved"),
    ("iommu_vfio_ioas", lib.IOMMU_VFIO_IOAS, "__reserved"),
    ("iommu_hwpt_alloc", lib.IOMMU_HWPT_ALLOC, "__reserved"),
    ("iommu_hwpt_invalidate", lib.IOMMU_HWPT_INVALIDATE, "__reserved"),
    ("iommu_hwpt_get_dirty_bitmap", lib.IOMMU_HWPT_GET_DIRTY_BITMAP, "__reserved"),
    ("iommu_ioas_change_process", lib.IOMMU_IOAS_CHANGE_PROCESS, "__reserved"),
    ("iommu_veventq_alloc", lib.IOMMU_VEVENTQ_ALLOC, "__reserved"),
    ("iommu_ioas_noiommu_get_pa", lib.IOMMU_IOAS_NOIOMMU_GET_PA, "__reserved"),
])
def test_reserved_fields(ctx: Iommufd, name: str, request_: int, field: str) -> None:
    c = ctx.cmd(name)
    setattr(c, field, 1)
    assert err(lambda: ctx.ioctl(request_, c)) == errno.EOPNOTSUPP


def test_hw_info_reserved_bytes(ctx: Iommufd) -> None:
    c = ctx.cmd("iommu_hw_info")
    getattr(c, "__reserved")[2] = 1
    assert err(lambda: ctx.ioctl(lib.IOMMU_GET_HW_INFO, c)) == errno.EOPNOTSUPP


# -- the object table ---------------------------------------------------------------------------
def test_ids_lowest_free_and_reused(ctx: Iommufd) -> None:
    assert [ctx.ioas() for _ in range(3)] == [1, 2, 3]
    ctx.destroy(2)
    assert ctx.ioas() == 2
    ctx.destroy(1)
    ctx.destroy(3)
    assert ctx.ioas() == 1
    assert ctx.ioas() == 3
    assert ctx.ioas() == 4


def test_destroy_unknown_and_twice(ctx: Iommufd) -> None:
    ioas = ctx.ioas()
    assert err(lambda: ctx.destroy(ioas + 1)) == errno.ENOENT
    ctx.destroy(ioas)
    assert err(lambda: ctx.destroy(ioas)) == errno.ENOENT


def test_ioas_alloc_flags(ctx: Iommufd) -> None:
    c = ctx.cmd("iommu_ioas_alloc", flags=1)
    assert err(lambda: ctx.ioctl(lib.IOMMU_IOAS_ALLOC, c)) == errno.EOPNOTSUPP


def test_wrong_type_id_is_enoent(ctx: Iommufd, m: Machine) -> None:
    ioas = ctx.ioas()
    _dfd, dev = m.cdev(EDU, ctx)
    buf = m.buffer(PAGE)
    assert err(lambda: ctx.map(dev, buf.address, PAGE)) == errno.ENOENT
    assert err(lambda: ctx.option(lib.IOMMU_OPTION_HUGE_PAGES, lib.IOMMU_OPTION_OP_GET,
                                  object_id=dev)) == errno.ENOENT
    c = ctx.cmd("iommu_hw_info", dev_id=ioas)
    assert err(lambda: ctx.ioctl(lib.IOMMU_GET_HW_INFO, c)) == errno.ENOENT
    # a device is held by its driver: it cannot be destroyed
    assert err(lambda: ctx.destroy(dev)) == errno.EBUSY


def test_close_releases_everything(m: Machine) -> None:
    ctx = m.iommufd()
    buf = m.buffer(16 * PAGE)
    ioas = ctx.ioas()
    dfd, _dev = m.cdev(EDU, ctx)
    m.attach(dfd, ioas)
    ctx.map(ioas, buf.address, 16 * PAGE)
    assert m.system.user_memory.pinned_pages == 16
    file = ctx.file
    ctx.close()
    # the bound device keeps the context alive
    assert file.objects and m.system.user_memory.pinned_pages == 16
    assert m.system.device(EDU).domain is not None
    m.close_fd(dfd)
    assert not file.objects
    assert m.system.user_memory.pinned_pages == 0
    assert m.system.device(EDU).domain is None
    assert m.system.device(EDU).group.owner is None  # type: ignore[union-attr]


# -- IOAS_MAP / UNMAP ---------------------------------------------------------------------------
def test_map_argument_checks(ctx: Iommufd, m: Machine) -> None:
    ioas = ctx.ioas()
    buf = m.buffer(PAGE)
    va = buf.address

    def map_(**kw: int) -> Callable[[], int]:
        fields = dict(ioas_id=ioas, user_va=va, length=PAGE, flags=RW)
        fields.update(kw)
        c = ctx.cmd("iommu_ioas_map", **fields)
        return lambda: ctx.ioctl(lib.IOMMU_IOAS_MAP, c)

    assert err(map_(flags=RW | 8)) == errno.EOPNOTSUPP
    assert err(map_(iova=U64_MAX, flags=RW | FIXED)) == errno.EOVERFLOW
    assert err(map_(length=U64_MAX)) == errno.EOVERFLOW
    assert err(map_(flags=FIXED)) == errno.EINVAL
    assert err(map_(ioas_id=ioas + 1)) == errno.ENOENT
    # EOPNOTSUPP beats EOVERFLOW beats EINVAL beats ENOENT
    assert err(map_(flags=8, length=U64_MAX, ioas_id=99)) == errno.EOPNOTSUPP
    assert err(map_(flags=0, length=U64_MAX, ioas_id=99)) == errno.EOVERFLOW
    assert err(map_(flags=0, ioas_id=99)) == errno.EINVAL
    assert err(map_(length=0)) == errno.EINVAL
    assert err(map_(user_va=U64_MAX - PAGE + 1, length=2 * PAGE)) == errno.EOVERFLOW
    assert err(map_(iova=U64_MAX - PAGE + 1, length=2 * PAGE, flags=RW | FIXED)) == errno.EOVERFLOW


def test_area(ctx: Iommufd, m: Machine) -> None:
    """The selftest's iommufd_ioas.area."""
    ioas = ctx.ioas()
    va = m.buffer(PAGE * 16).address
    base = 16 * PAGE
    for i in range(10):
        assert err(lambda: ctx.unmap(ioas, i * PAGE, PAGE)) == errno.ENOENT
    for i in range(10):
        ctx.map(ioas, va, PAGE, base + i * PAGE)
    for i in range(10):
        assert ctx.unmap(ioas, base + i * PAGE, PAGE) == PAGE
    # split fails
    ctx.map(ioas, va, 2 * PAGE, base + 16 * PAGE)
    assert err(lambda: ctx.unmap(ioas, base + 16 * PAGE, PAGE)) == errno.ENOENT
    assert err(lambda: ctx.unmap(ioas, base + 17 * PAGE, PAGE)) == errno.ENOENT
    # over map fails
    for n, at in [(2, 16), (1, 16), (1, 17), (2, 15), (3, 15)]:
        assert err(lambda: ctx.map(ioas, va, n * PAGE, base + at * PAGE)) == errno.EEXIST
    # unmap all works, also on an empty IOAS
    assert ctx.unmap(ioas, 0, U64_MAX) == 2 * PAGE
    assert ctx.unmap(ioas, 0, U64_MAX) == 0


def test_unmap_fully_contained_areas(ctx: Iommufd, m: Machine) -> None:
    ioas = ctx.ioas()
    va = m.buffer(PAGE * 8).address
    base = 20 * PAGE
    for i in range(4):
        ctx.map(ioas, va, 8 * PAGE, base + i * 16 * PAGE)
    assert err(lambda: ctx.unmap(ioas, base - 4 * PAGE, 8 * PAGE)) == errno.ENOENT
    assert err(lambda: ctx.unmap(ioas, base + 3 * 16 * PAGE + 4 * PAGE, 8 * PAGE)) == errno.ENOENT
    assert ctx.unmap(ioas, base - 4 * PAGE, 3 * 16 * PAGE + 12 * PAGE) == 32 * PAGE


def test_unmap_stops_at_a_straddling_area(ctx: Iommufd, m: Machine) -> None:
    """iopt_unmap_iova_range unmaps in IOVA order and fails at the first
    mapping that sticks out: the ones before it stay unmapped."""
    ioas = ctx.ioas()
    va = m.buffer(PAGE * 4).address
    ctx.map(ioas, va, PAGE, 0x10000)
    ctx.map(ioas, va, 4 * PAGE, 0x20000)
    assert err(lambda: ctx.unmap(ioas, 0x10000, 0x12000)) == errno.ENOENT
    assert err(lambda: ctx.unmap(ioas, 0x10000, PAGE)) == errno.ENOENT  # already gone
    assert ctx.unmap(ioas, 0x20000, 4 * PAGE) == 4 * PAGE


def test_unmap_argument_checks(ctx: Iommufd) -> None:
    ioas = ctx.ioas()
    c = ctx.cmd("iommu_ioas_unmap", ioas_id=ioas + 5, iova=U64_MAX, length=1)
    # the IOAS is looked up first
    assert err(lambda: ctx.ioctl(lib.IOMMU_IOAS_UNMAP, c)) == errno.ENOENT
    c.ioas_id = ioas
    assert err(lambda: ctx.ioctl(lib.IOMMU_IOAS_UNMAP, c)) == errno.EOVERFLOW
    c.iova, c.length = 0, 0
    assert err(lambda: ctx.ioctl(lib.IOMMU_IOAS_UNMAP, c)) == errno.EINVAL
    c.iova, c.length = 1 << 63, (1 << 63) + 1
    assert err(lambda: ctx.ioctl(lib.IOMMU_IOAS_UNMAP, c)) == errno.EOVERFLOW
    # a range ending at the top is fine
    c.length = 1 << 63
    assert err(lambda: ctx.ioctl(lib.IOMMU_IOAS_UNMAP, c)) == errno.ENOENT


def test_map_without_alignment_needs(ctx: Iommufd) -> None:
    """No domain: iova_alignment is 1, any length maps (ioas_iova_alloc)."""
    ioas = ctx.ioas()
    for length in list(range(1, 40)) + [PAGE - 1, PAGE + 1, 2 * PAGE - 1]:
        iova = ctx.map(ioas, 1 << 31, length)
        assert ctx.unmap(ioas, iova, length) == length
    # unaligned user addresses and IOVAs too
    ctx.map(ioas, (1 << 31) + 3, 5, 0x1003)
    assert ctx.unmap(ioas, 0x1003, 5) == 5


# -- automatic IOVA allocation ---------------------------------------------------------------------
def test_area_auto_iova(ctx: Iommufd, m: Machine) -> None:
    ioas = ctx.ioas()
    va = m.buffer(PAGE * 16).address
    iovas = [ctx.map(ioas, va, PAGE) for _ in range(10)]
    assert len(set(iovas)) == 10 and 0 not in iovas
    for iova in iovas:
        ctx.unmap(ioas, iova, PAGE)
    # the kernel aligns IOVAs to the length (1 << 31 is well aligned)
    iovas = []
    for i in range(10):
        length = PAGE * (i + 1)
        iova = ctx.map(ioas, 1 << 31, length)
        assert iova % (length & -length) == 0
        iovas.append(iova)
    for i, iova in enumerate(iovas):
        ctx.unmap(ioas, iova, PAGE * (i + 1))
    # allocate from an allowed region
    start, last = PAGE * 200, PAGE * 600 - 1
    ctx.allow(ioas, [(start, last)])
    for i in range(10):
        length = PAGE * (i + 1)
        iova = ctx.map(ioas, va, length)
        assert iova % (length & -length) == 0 or iova % (va & -va) == 0
        assert start <= iova and iova + length - 1 <= last


def test_auto_iova_first_fit_and_page_offset(ctx: Iommufd) -> None:
    ioas = ctx.ioas()
    # never IOVA 0: the first free aligned IOVA from PAGE_SIZE
    assert ctx.map(ioas, 1 << 40, PAGE) == PAGE
    assert ctx.map(ioas, 1 << 40, 2 * PAGE) == 2 * PAGE
    assert ctx.map(ioas, 1 << 40, PAGE) == 4 * PAGE
    # the page offset of the address is kept (alignment min(len, addr))
    iova = ctx.map(ioas, (1 << 40) + 0x800, 0x100)
    assert iova % PAGE == 0x800
    # a gap left by an unmap is reused first
    ctx.unmap(ioas, 2 * PAGE, 2 * PAGE)
    assert ctx.map(ioas, 1 << 40, PAGE) == 2 * PAGE


def test_auto_iova_alignment_cap(machine_factory: Callable[..., Machine]) -> None:
    # CONFIG_TRANSPARENT_HUGEPAGE: alignment is capped at HPAGE_SIZE
    m = machine_factory()
    ctx = m.iommufd()
    ioas = ctx.ioas()
    ctx.map(ioas, 1 << 40, PAGE)
    assert ctx.map(ioas, 1 << 40, 8 * MIB) == 2 * MIB
    # without THP the cap is PAGE_SIZE
    m2 = machine_factory()
    m2.system.transparent_hugepage = False  # type: ignore[attr-defined]
    ctx2 = m2.iommufd()
    ioas2 = ctx2.ioas()
    ctx2.map(ioas2, 1 << 40, PAGE)
    assert ctx2.map(ioas2, 1 << 40, 8 * MIB) == 2 * PAGE


def test_auto_iova_enospc_and_limits(ctx: Iommufd) -> None:
    ioas = ctx.ioas()
    ctx.allow(ioas, [(PAGE, 4 * PAGE - 1)])
    ctx.map(ioas, 1 << 40, PAGE)
    assert err(lambda: ctx.map(ioas, 1 << 40, 4 * PAGE)) == errno.ENOSPC
    # lengths from ULONG_MAX / 2 cannot be allocated
    assert err(lambda: ctx.map(ioas, 0, 1 << 63)) == errno.EOVERFLOW


def test_auto_iova_avoids_reserved(ctx: Iommufd, m: Machine) -> None:
    ioas = ctx.ioas()
    dfd, _dev = m.cdev(EDU, ctx)
    m.attach(dfd, ioas)
    buf = m.buffer(12 * MIB)
    va = (buf.address + 4 * MIB - 1) & ~(4 * MIB - 1)  # 4 MiB aligned
    ctx.allow(ioas, [(MSI_START - 4 * MIB, MSI_START - 1), (MSI_LAST + 1, MSI_LAST + 8 * MIB)])
    iova = ctx.map(ioas, va, 4 * MIB)
    assert iova == MSI_START - 4 * MIB
    iova = ctx.map(ioas, va, 4 * MIB)
    assert iova == MSI_LAST + 1 + MIB  # 2 MiB alignment past the window
    assert err(lambda: ctx.map(ioas, va, 8 * MIB)) == errno.ENOSPC


# -- allowed ranges ----------------------------------------------------------------------------------
def test_allow_iovas_checks(ctx: Iommufd, m: Machine) -> None:
    ioas = ctx.ioas()
    assert err(lambda: ctx.allow(ioas, [(PAGE, PAGE)])) == errno.EINVAL
    assert err(lambda: ctx.allow(ioas, [(2 * PAGE, PAGE)])) == errno.EINVAL
    assert err(lambda: ctx.allow(ioas, [(PAGE, 4 * PAGE), (4 * PAGE, 8 * PAGE)])) == errno.EINVAL
    assert err(lambda: ctx.allow(ioas + 1, [])) == errno.ENOENT
    c = ctx.cmd("iommu_ioas_allow_iovas", ioas_id=ioas, num_iovas=1, allowed_iovas=0)
    assert err(lambda: ctx.ioctl(lib.IOMMU_IOAS_ALLOW_IOVAS, c)) == errno.EFAULT
    # mappings outside the allowed ranges do not matter
    va = m.buffer(PAGE).address
    ctx.map(ioas, va, PAGE, 64 * PAGE)
    ctx.allow(ioas, [(PAGE, 8 * PAGE - 1)])
    ctx.allow(ioas, [])


def test_area_allowed(ctx: Iommufd, m: Machine) -> None:
    """Reserved ranges (a device's MSI window) and allowed ranges exclude
    each other: EADDRINUSE either way."""
    ioas = ctx.ioas()
    dfd, _dev = m.cdev(EDU, ctx)
    ctx.allow(ioas, [(MSI_START - PAGE, MSI_START + PAGE)])
    assert err(lambda: m.attach(dfd, ioas)) == errno.EADDRINUSE
    ctx.allow(ioas, [])
    m.attach(dfd, ioas)
    assert err(lambda: ctx.allow(ioas, [(MSI_START - PAGE, MSI_START + PAGE)])) == errno.EADDRINUSE
    # ... as does the aperture
    assert err(lambda: ctx.allow(ioas, [(1 << 48, (1 << 48) + PAGE)])) == errno.EADDRINUSE
    ctx.allow(ioas, [(PAGE, MSI_START - 1)])


# -- IOVA ranges and reserved regions -------------------------------------------------------------------
def test_iova_ranges(ctx: Iommufd, m: Machine) -> None:
    ioas = ctx.ioas()
    assert ctx.ranges(ioas) == ([(0, U64_MAX)], 1)
    # buffer too small: EMSGSIZE with the count, nothing written
    arr = ffi.new("struct iommu_iova_range[2]")
    c = ctx.cmd("iommu_ioas_iova_ranges", ioas_id=ioas, num_iovas=0, allowed_iovas=addr(arr))
    assert err(lambda: ctx.ioctl(lib.IOMMU_IOAS_IOVA_RANGES, c)) == errno.EMSGSIZE
    assert c.num_iovas == 1 and arr[0].start == arr[0].last == 0
    # an attached device narrows the ranges (MSI window, 48-bit aperture) ...
    dfd, _dev = m.cdev(EDU, ctx)
    m.attach(dfd, ioas)
    expect = [(0, MSI_START - 1), (MSI_LAST + 1, (1 << 48) - 1)]
    assert ctx.ranges(ioas) == (expect, PAGE)
    c.num_iovas = 1
    assert err(lambda: ctx.ioctl(lib.IOMMU_IOAS_IOVA_RANGES, c)) == errno.EMSGSIZE
    assert c.num_iovas == 2 and (arr[0].start, arr[0].last) == expect[0]
    assert arr[1].start == arr[1].last == 0
    # ... a bad array faults ...
    c.num_iovas, c.allowed_iovas = 2, 8
    assert err(lambda: ctx.ioctl(lib.IOMMU_IOAS_IOVA_RANGES, c)) == errno.EFAULT
    # ... and detaching widens them again
    m.detach(dfd)
    assert ctx.ranges(ioas) == ([(0, U64_MAX)], 1)


def test_attach_over_reserved_mapping_fails(ctx: Iommufd, m: Machine) -> None:
    ioas = ctx.ioas()
    ctx.map(ioas, 1 << 31, PAGE, MSI_START + PAGE)
    dfd, _dev = m.cdev(EDU, ctx)
    # iopt_table_enforce_dev_resv_regions: EADDRINUSE
    assert err(lambda: m.attach(dfd, ioas)) == errno.EADDRINUSE
    assert m.system.device(EDU).domain is None
    assert ctx.file.object_ids() == [ioas, _dev]
    # ... and so does a mapping outside the aperture
    ctx.unmap(ioas, 0, U64_MAX)
    ctx.map(ioas, 1 << 31, PAGE, 1 << 50)
    assert err(lambda: m.attach(dfd, ioas)) == errno.EADDRINUSE
    ctx.unmap(ioas, 0, U64_MAX)
    # fixed maps into a reserved range are EINVAL once attached
    m.attach(dfd, ioas)
    assert err(lambda: ctx.map(ioas, 1 << 31, PAGE, MSI_START)) == errno.EINVAL
    assert err(lambda: ctx.map(ioas, 1 << 31, PAGE, 1 << 48)) == errno.EINVAL


def test_extra_reserved_region(machine_factory: Callable[..., Machine]) -> None:
    from pyvfio.fake.machine.topology import load

    topo = load("default")
    for spec in topo["devices"]:
        if spec["bdf"] == EDU:
            spec["reserved_regions"] = [
                {"start": 0x100000, "last": 0x1FFFFF, "type": "direct"},
                {"start": 0x400000, "last": 0x4FFFFF, "type": "direct-relaxable"},
            ]
    m = machine_factory(topo)
    ctx = m.iommufd()
    ioas = ctx.ioas()
    dfd, _ = m.cdev(EDU, ctx)
    m.attach(dfd, ioas)
    ranges, _ = ctx.ranges(ioas)
    assert ranges[0] == (0, 0xFFFFF) and ranges[1][0] == 0x200000
    # relaxable regions are not enforced
    ctx.map(ioas, m.buffer(PAGE).address, PAGE, 0x400000)


# -- IOAS_COPY -----------------------------------------------------------------------------------------
def test_copy_area(ctx: Iommufd, m: Machine) -> None:
    ioas = ctx.ioas()
    va = m.buffer(PAGE).address
    base = 16 * PAGE
    ctx.map(ioas, va, PAGE, base)
    # inside one IOAS, and between IOASes
    assert ctx.copy(ioas, ioas, base, PAGE, base + PAGE) == base + PAGE
    dst = ctx.ioas()
    assert ctx.copy(dst, ioas, base, PAGE, 0) == 0
    # the destination IOVA may be allocated
    assert ctx.copy(dst, ioas, base, PAGE) == PAGE
    assert err(lambda: ctx.copy(dst, ioas, base, PAGE, 0)) == errno.EEXIST


def test_copy_sweep(ctx: Iommufd, m: Machine) -> None:
    ioas = ctx.ioas()
    dst = ctx.ioas()
    start = 0x100000
    last = start + 16 * PAGE - 2
    ctx.map(ioas, m.buffer(16 * PAGE).address, last - start + 1, start)
    for iova in range(start - PAGE, last + 1, 511):
        if iova < start or iova + PAGE - 1 > last:
            assert err(lambda: ctx.copy(dst, ioas, iova, PAGE, start)) == errno.ENOENT
        else:
            assert ctx.copy(dst, ioas, iova, PAGE, start) == start
            ctx.unmap(dst, start, PAGE)


def test_copy_argument_checks(ctx: Iommufd, m: Machine) -> None:
    src = ctx.ioas()
    dst = ctx.ioas()
    ro = m.buffer(2 * PAGE)
    ctx.map(src, ro.address, PAGE, 0x1000, flags=lib.IOMMU_IOAS_MAP_READABLE)
    ctx.map(src, ro.address, PAGE, 0x2000)

    def copy(**kw: int) -> Callable[[], int]:
        fields = dict(dst_ioas_id=dst, src_ioas_id=src, src_iova=0x1000, length=PAGE,
                      dst_iova=0x8000, flags=RW | FIXED)
        fields.update(kw)
        c = ctx.cmd("iommu_ioas_copy", **fields)
        return lambda: ctx.ioctl(lib.IOMMU_IOAS_COPY, c)

    assert err(copy(flags=8)) == errno.EOPNOTSUPP
    assert err(copy(length=U64_MAX)) == errno.EOVERFLOW
    assert err(copy(flags=FIXED)) == errno.EINVAL
    assert err(copy(src_ioas_id=77)) == errno.ENOENT
    assert err(copy(length=0)) == errno.EINVAL
    assert err(copy(dst_ioas_id=77)) == errno.ENOENT
    # a writable copy of read-only pages
    assert err(copy()) == errno.EPERM
    assert copy(flags=lib.IOMMU_IOAS_MAP_READABLE | FIXED)() == 0
    # spanning two contiguous mappings
    assert copy(length=2 * PAGE, dst_iova=0x10000, flags=lib.IOMMU_IOAS_MAP_READABLE | FIXED)() == 0
    assert ctx.unmap(dst, 0x10000, 2 * PAGE) == 2 * PAGE


def test_copy_shares_pins(machine_factory: Callable[..., Machine]) -> None:
    m = machine_factory()
    ctx = m.iommufd()
    a, b = ctx.ioas(), ctx.ioas()
    d1, _ = m.cdev(EDU, ctx)
    d2, _ = m.cdev(E1000E, ctx)
    m.attach(d1, a)
    m.attach(d2, b)
    buf = m.buffer(16 * PAGE)
    iova = ctx.map(a, buf.address, 16 * PAGE)
    mem = m.system.user_memory
    assert mem.pinned_pages == 16
    # the copy reuses the pinned pages: no new charge
    dst = ctx.copy(b, a, iova + 4 * PAGE, 8 * PAGE)
    assert mem.pinned_pages == 16
    ctx.unmap(a, iova, 16 * PAGE)
    assert mem.pinned_pages == 8  # the copy still holds its part
    buf.write_bytes(5 * PAGE, b"shared")
    assert m.system.device(E1000E).dma_read(dst + PAGE, 6) == b"shared"
    ctx.unmap(b, dst, 8 * PAGE)
    assert mem.pinned_pages == 0


# -- pinning ---------------------------------------------------------------------------------------------
def test_no_pinning_without_domain(ctx: Iommufd, m: Machine) -> None:
    ioas = ctx.ioas()
    mem = m.system.user_memory
    # an address nothing is mapped at is accepted while there is no domain
    ctx.map(ioas, 1 << 31, 4 * PAGE, 0x10000)
    assert mem.pinned_pages == 0
    dfd, _ = m.cdev(EDU, ctx)
    # the attach pins and fails with EFAULT
    assert err(lambda: m.attach(dfd, ioas)) == errno.EFAULT
    assert mem.pinned_pages == 0
    assert ctx.file.object_ids() == [ioas, _]  # the auto HWPT is gone
    ctx.unmap(ioas, 0x10000, 4 * PAGE)
    buf = m.buffer(4 * PAGE)
    ctx.map(ioas, buf.address, 4 * PAGE, 0x10000)
    assert mem.pinned_pages == 0
    m.attach(dfd, ioas)
    assert mem.pinned_pages == 4
    m.detach(dfd)
    assert mem.pinned_pages == 0


def test_map_with_domain_pins(ctx: Iommufd, m: Machine) -> None:
    ioas = ctx.ioas()
    dfd, _ = m.cdev(EDU, ctx)
    m.attach(dfd, ioas)
    mem = m.system.user_memory
    assert err(lambda: ctx.map(ioas, 1 << 31, PAGE)) == errno.EFAULT
    ro = m.buffer(2 * PAGE, PROT_READ)
    assert err(lambda: ctx.map(ioas, ro.address, 2 * PAGE)) == errno.EFAULT
    iova = ctx.map(ioas, ro.address, 2 * PAGE, flags=lib.IOMMU_IOAS_MAP_READABLE)
    assert mem.pinned_pages == 2
    # the same memory mapped twice is pinned (and charged) twice
    ctx.map(ioas, ro.address, 2 * PAGE, flags=lib.IOMMU_IOAS_MAP_READABLE)
    assert mem.pinned_pages == 4
    # with a domain, lengths and IOVAs must be page aligned
    buf = m.buffer(2 * PAGE)
    assert err(lambda: ctx.map(ioas, buf.address, PAGE + 1)) == errno.EINVAL
    assert err(lambda: ctx.map(ioas, buf.address, PAGE, 0x100800)) == errno.EINVAL
    assert err(lambda: ctx.map(ioas, buf.address + 0x800, PAGE, 0x100000)) == errno.EINVAL
    ctx.unmap(ioas, iova, 2 * PAGE)
    assert mem.pinned_pages == 2


def test_memlock_limit(machine_factory: Callable[..., Machine]) -> None:
    m = machine_factory(memlock_limit=8 * PAGE)
    ctx = m.iommufd()
    ioas = ctx.ioas()
    buf = m.buffer(16 * PAGE)
    # no domain: nothing is charged, so nothing fails yet
    ctx.map(ioas, buf.address, 6 * PAGE, 0x100000)
    ctx.map(ioas, buf.address, 6 * PAGE, 0x200000)
    dfd, _ = m.cdev(EDU, ctx)
    # the attach pins 12 pages: ENOMEM, and everything is undone
    assert err(lambda: m.attach(dfd, ioas)) == errno.ENOMEM
    assert m.system.user_memory.pinned_pages == 0
    ctx.unmap(ioas, 0x200000, 6 * PAGE)
    m.attach(dfd, ioas)
    assert m.system.user_memory.pinned_pages == 6
    # with a domain, map time is when ENOMEM shows up
    assert err(lambda: ctx.map(ioas, buf.address, 3 * PAGE)) == errno.ENOMEM
    ctx.map(ioas, buf.address, 2 * PAGE)
    assert m.system.user_memory.pinned_pages == 8


def test_cap_ipc_lock_skips_accounting(machine_factory: Callable[..., Machine]) -> None:
    m = machine_factory(memlock_limit=PAGE)
    m.system.cap_ipc_lock = True  # type: ignore[attr-defined]
    ctx = m.iommufd()
    ioas = ctx.ioas()
    dfd, _ = m.cdev(EDU, ctx)
    m.attach(dfd, ioas)
    ctx.map(ioas, m.buffer(8 * PAGE).address, 8 * PAGE)
    assert m.system.user_memory.pinned_pages == 0


# -- IOMMU_IOAS_MAP_FILE ----------------------------------------------------------------------------------
@pytest.fixture
def memfd(m: Machine) -> Iterator[int]:
    fd = m.b.memfd_create("iommufd-test")
    m.b.ftruncate(fd, 16 * PAGE)
    yield fd
    os.close(fd)


def test_map_file(ctx: Iommufd, m: Machine, memfd: int) -> None:
    ioas = ctx.ioas()
    dfd, _ = m.cdev(EDU, ctx)
    m.attach(dfd, ioas)
    iova = ctx.map_file(ioas, memfd, PAGE, 4 * PAGE)
    assert m.system.user_memory.pinned_pages == 4
    m.system.device(EDU).dma_write(iova + 8, b"to the file")
    assert os.pread(memfd, 11, PAGE + 8) == b"to the file"
    # the mapping keeps the file: closing the fd does not matter
    ctx.unmap(ioas, iova, 4 * PAGE)
    assert m.system.user_memory.pinned_pages == 0


def test_map_file_checks(ctx: Iommufd, m: Machine, memfd: int) -> None:
    ioas = ctx.ioas()

    def map_file(**kw: int) -> Callable[[], int]:
        fields = dict(ioas_id=ioas, fd=memfd, start=0, length=PAGE, flags=RW)
        fields.update(kw)
        c = ctx.cmd("iommu_ioas_map_file", **fields)
        return lambda: ctx.ioctl(lib.IOMMU_IOAS_MAP_FILE, c)

    assert err(map_file(flags=8)) == errno.EOPNOTSUPP
    assert err(map_file(length=U64_MAX)) == errno.EOVERFLOW
    assert err(map_file(flags=0)) == errno.EINVAL
    assert err(map_file(ioas_id=9)) == errno.ENOENT
    assert err(map_file(length=0)) == errno.EINVAL
    assert err(map_file(start=U64_MAX - 10, length=PAGE)) == errno.EOVERFLOW
    assert err(map_file(fd=-1)) == errno.EBADF
    # past the end of the file or a non-shmem file: accepted until pinned
    assert map_file(start=64 * PAGE)() == 0
    with tempfile.TemporaryFile(dir="/var/tmp") as f:
        f.truncate(PAGE)
        ioas2 = ctx.ioas()
        ctx.map_file(ioas2, f.fileno(), 0, PAGE)
        dfd, _ = m.cdev(EDU, ctx)
        # memfd_pin_folios: EINVAL
        assert err(lambda: m.attach(dfd, ioas)) == errno.EINVAL
        assert err(lambda: m.attach(dfd, ioas2)) == errno.EINVAL
        ctx.unmap(ioas2, 0, U64_MAX)
        m.attach(dfd, ioas2)
        assert err(lambda: ctx.map_file(ioas2, f.fileno(), 0, PAGE)) == errno.EINVAL


def test_change_process(ctx: Iommufd, m: Machine, memfd: int) -> None:
    ioas = ctx.ioas()
    c = ctx.cmd("iommu_ioas_change_process")
    va = m.buffer(PAGE).address
    iova = ctx.map(ioas, va, PAGE)
    assert err(lambda: ctx.ioctl(lib.IOMMU_IOAS_CHANGE_PROCESS, c)) == errno.EINVAL
    ctx.unmap(ioas, iova, PAGE)
    ctx.map_file(ioas, memfd, 0, PAGE)
    assert ctx.ioctl(lib.IOMMU_IOAS_CHANGE_PROCESS, c) == 0


# -- IOMMU_OPTION --------------------------------------------------------------------------------------------
def test_global_options(ctx: Iommufd) -> None:
    RL, HP = lib.IOMMU_OPTION_RLIMIT_MODE, lib.IOMMU_OPTION_HUGE_PAGES
    GET, SET = lib.IOMMU_OPTION_OP_GET, lib.IOMMU_OPTION_OP_SET
    assert ctx.option(RL, GET, 1) == 0
    ctx.option(RL, SET, 1)
    assert err(lambda: ctx.option(RL, SET, 2)) == errno.EINVAL
    assert ctx.option(RL, GET) == 1
    ctx.option(RL, SET, 0)
    assert err(lambda: ctx.option(HP, GET)) == errno.ENOENT
    assert err(lambda: ctx.option(HP, SET)) == errno.ENOENT
    assert err(lambda: ctx.option(RL, GET, object_id=1)) == errno.EOPNOTSUPP
    assert err(lambda: ctx.option(RL, 7)) == errno.EOPNOTSUPP
    assert err(lambda: ctx.option(9, GET)) == errno.EOPNOTSUPP
    ctx.ioas()
    # the mode can only change while the context is empty
    assert err(lambda: ctx.option(RL, SET, 1)) == errno.EBUSY
    ctx.file.system.cap_sys_resource = False  # type: ignore[attr-defined]
    assert err(lambda: ctx.option(RL, SET, 1)) == errno.EPERM


def test_ioas_option_huge_pages(ctx: Iommufd) -> None:
    HP, GET, SET = lib.IOMMU_OPTION_HUGE_PAGES, lib.IOMMU_OPTION_OP_GET, lib.IOMMU_OPTION_OP_SET
    ioas = ctx.ioas()
    assert ctx.option(HP, GET, 3, ioas) == 1
    ctx.option(HP, SET, 0, ioas)
    assert ctx.option(HP, GET, 3, ioas) == 0
    assert err(lambda: ctx.option(HP, SET, 2, ioas)) == errno.EINVAL
    assert err(lambda: ctx.option(HP, 5, 0, ioas)) == errno.EOPNOTSUPP
    ctx.option(HP, SET, 1, ioas)


def test_ioas_align_change(ctx: Iommufd) -> None:
    HP, SET = lib.IOMMU_OPTION_HUGE_PAGES, lib.IOMMU_OPTION_OP_SET
    ioas = ctx.ioas()
    base = 0x100000
    ctx.map(ioas, 1 << 31, PAGE, base)
    ctx.option(HP, SET, 0, ioas)
    # misalignment is rejected at map time
    assert err(lambda: ctx.map(ioas, (1 << 31) + 0x800, PAGE, base + PAGE)) == errno.EINVAL
    ctx.option(HP, SET, 0, ioas)
    ctx.option(HP, SET, 1, ioas)
    ctx.map(ioas, (1 << 31) + 0x800, PAGE, base + PAGE)
    # ... and during an alignment upgrade
    assert err(lambda: ctx.option(HP, SET, 0, ioas)) == errno.EADDRINUSE
    ctx.unmap(ioas, base + PAGE, PAGE)
    ctx.unmap(ioas, base, PAGE)


def test_huge_pages_off_needs_empty_domains(ctx: Iommufd, m: Machine) -> None:
    ioas = ctx.ioas()
    dfd, _ = m.cdev(EDU, ctx)
    m.attach(dfd, ioas)
    ctx.option(lib.IOMMU_OPTION_HUGE_PAGES, lib.IOMMU_OPTION_OP_SET, 0, ioas)
    ctx.option(lib.IOMMU_OPTION_HUGE_PAGES, lib.IOMMU_OPTION_OP_SET, 1, ioas)
    ctx.map(ioas, m.buffer(PAGE).address, PAGE)
    assert err(lambda: ctx.option(lib.IOMMU_OPTION_HUGE_PAGES, lib.IOMMU_OPTION_OP_SET, 0,
                                  ioas)) == errno.EINVAL


# -- IOMMU_VFIO_IOAS -----------------------------------------------------------------------------------
def test_vfio_ioas(ctx: Iommufd) -> None:
    GET, SET, CLEAR = lib.IOMMU_VFIO_IOAS_GET, lib.IOMMU_VFIO_IOAS_SET, lib.IOMMU_VFIO_IOAS_CLEAR
    assert err(lambda: ctx.vfio_ioas(GET)) == errno.ENODEV
    assert err(lambda: ctx.vfio_ioas(SET, 5)) == errno.ENOENT
    ioas = ctx.ioas()
    ctx.vfio_ioas(SET, ioas)
    assert ctx.vfio_ioas(GET) == ioas
    ctx.vfio_ioas(CLEAR)
    assert err(lambda: ctx.vfio_ioas(GET)) == errno.ENODEV
    ctx.vfio_ioas(SET, ioas)
    ctx.destroy(ioas)  # the compat pointer holds no reference
    assert err(lambda: ctx.vfio_ioas(GET)) == errno.ENODEV
    assert err(lambda: ctx.vfio_ioas(3)) == errno.EOPNOTSUPP


# -- devices ---------------------------------------------------------------------------------------------
def test_bind_claims_dma_ownership(machine_factory: Callable[..., Machine]) -> None:
    m = machine_factory("multi-group")
    a, b = m.iommufd(), m.iommufd()
    d0, _ = m.cdev("0000:00:02.0", a)
    # a group with a function on a kernel driver is not viable
    with pytest.raises(PermissionError):
        m.cdev("0000:00:06.0", a)
    m.b.sysfs_write("/sys/bus/pci/drivers/e1000e/unbind", "0000:00:06.2")
    d1, dev1 = m.cdev("0000:00:06.0", a)
    group = m.system.device("0000:00:06.0").group
    assert group is not None and group.owner is a.file
    # the other function of the group: not for another context ...
    name = m.b.sysfs_listdir("/sys/bus/pci/devices/0000:00:06.1/vfio-dev")[0]
    d2 = m.b.open(f"/dev/vfio/devices/{name}")
    m.fds.append(d2)
    bind = ffi.new("struct vfio_device_bind_iommufd *")
    bind.argsz = ffi.sizeof(bind[0])
    bind.iommufd = b.fd
    assert err(lambda: m.b.ioctl(d2, lib.VFIO_DEVICE_BIND_IOMMUFD, bind)) == errno.EPERM
    assert b.file.object_ids() == []
    # ... but fine for the same one
    bind.iommufd = a.fd
    assert m.b.ioctl(d2, lib.VFIO_DEVICE_BIND_IOMMUFD, bind) == 0
    assert bind.out_devid == dev1 + 1
    # a group attaches as a whole: both devices must use the same HWPT
    ioas1, ioas2 = a.ioas(), a.ioas()
    hwpt = m.attach(d1, ioas1)
    assert err(lambda: m.attach(d2, ioas2)) == errno.EINVAL
    assert m.attach(d2, ioas1) == hwpt
    m.close_fd(d1)
    m.close_fd(d2)
    assert group.owner is None


def test_auto_domain_shared_and_freed(machine_factory: Callable[..., Machine]) -> None:
    m = machine_factory()
    ctx = m.iommufd()
    ioas = ctx.ioas()
    d1, dev1 = m.cdev(EDU, ctx)
    d2, dev2 = m.cdev(E1000E, ctx)
    hwpt = m.attach(d1, ioas)
    assert hwpt == dev2 + 1
    assert m.attach(d2, ioas) == hwpt  # the automatic domain is reused
    assert err(lambda: ctx.destroy(ioas)) == errno.EBUSY
    assert err(lambda: ctx.destroy(hwpt)) == errno.EBUSY
    m.detach(d1)
    assert hwpt in ctx.file.object_ids()
    m.detach(d2)
    # the last detach destroys the automatic HWPT and frees its ID
    assert ctx.file.object_ids() == [ioas, dev1, dev2]
    assert ctx.ioas() == hwpt
    ctx.destroy(ioas)


def test_attach_to_hwpt_and_replace(machine_factory: Callable[..., Machine]) -> None:
    m = machine_factory()
    ctx = m.iommufd()
    a, b = ctx.ioas(), ctx.ioas()
    dfd, dev = m.cdev(EDU, ctx)
    pdev = m.system.device(EDU)
    buf_a, buf_b = m.buffer(PAGE), m.buffer(PAGE)
    buf_a.write_bytes(0, b"in a")
    buf_b.write_bytes(0, b"in b")
    ctx.map(a, buf_a.address, PAGE, 0x10000)
    ctx.map(b, buf_b.address, PAGE, 0x10000)
    manual = ctx.hwpt_alloc(dev, b)
    assert m.system.user_memory.pinned_pages == 1  # HWPT_ALLOC fills the domain at once
    auto = m.attach(dfd, a)
    assert pdev.dma_read(0x10000, 4) == b"in a"
    # attaching again replaces: the automatic HWPT goes away
    assert m.attach(dfd, manual) == manual
    assert pdev.dma_read(0x10000, 4) == b"in b"
    assert auto not in ctx.file.object_ids()
    assert err(lambda: ctx.destroy(manual)) == errno.EBUSY
    # replacing by an IOAS picks (allocates) an automatic HWPT for it
    auto2 = m.attach(dfd, a)
    assert pdev.dma_read(0x10000, 4) == b"in a"
    assert m.attach(dfd, a) == auto2  # same IOAS, same HWPT: no change
    m.detach(dfd)
    assert pdev.domain is None
    ctx.destroy(manual)
    assert m.system.user_memory.pinned_pages == 0


def test_replace_moves_reserved_regions(ctx: Iommufd, m: Machine) -> None:
    a, b = ctx.ioas(), ctx.ioas()
    dfd, _ = m.cdev(EDU, ctx)
    m.attach(dfd, a)
    assert len(ctx.ranges(a)[0]) == 2
    m.attach(dfd, b)
    assert ctx.ranges(a) == ([(0, U64_MAX)], 1)
    assert len(ctx.ranges(b)[0]) == 2
    # a replace onto an IOAS with a mapping in the MSI window fails, unchanged
    c = ctx.ioas()
    ctx.map(c, 1 << 31, PAGE, MSI_START)
    # the new domain is filled (pinned) before the reserved regions are checked
    assert err(lambda: m.attach(dfd, c)) == errno.EFAULT
    ctx.unmap(c, MSI_START, PAGE)
    ctx.map(c, m.buffer(PAGE).address, PAGE, MSI_START)
    assert err(lambda: m.attach(dfd, c)) == errno.EADDRINUSE
    assert m.system.user_memory.pinned_pages == 0
    assert len(ctx.ranges(b)[0]) == 2
    assert ctx.ranges(c) == ([(0, U64_MAX)], 1)


def test_attach_errors(ctx: Iommufd, m: Machine) -> None:
    dfd, dev = m.cdev(EDU, ctx)
    assert err(lambda: m.attach(dfd, 99)) == errno.ENOENT
    assert err(lambda: m.attach(dfd, dev)) == errno.EINVAL
    fault_id, fault_fd = ctx.fault_queue()
    m.fds.append(fault_fd)
    assert err(lambda: m.attach(dfd, fault_id)) == errno.EINVAL


def test_dma_through_the_ioas(ctx: Iommufd, m: Machine) -> None:
    ioas = ctx.ioas()
    dfd, _ = m.cdev(EDU, ctx)
    pdev = m.system.device(EDU)
    buf = m.buffer(4 * PAGE)
    ctx.map(ioas, buf.address, 2 * PAGE, 0x20000)
    ctx.map(ioas, buf.address + 2 * PAGE, PAGE, 0x22000, flags=lib.IOMMU_IOAS_MAP_READABLE)
    with pytest.raises(IommuFault):
        pdev.dma_read(0x20000, 4)  # not attached: DMA is blocked
    m.attach(dfd, ioas)
    pdev.dma_write(0x20000 + PAGE - 2, b"span")
    assert buf.read_bytes(PAGE - 2, 4) == b"span"
    assert pdev.dma_read(0x20000 + 2 * PAGE - 1, 2) == buf.read_bytes(2 * PAGE - 1, 2)
    with pytest.raises(IommuFault):
        pdev.dma_write(0x22000, b"ro")
    with pytest.raises(IommuFault):
        pdev.dma_read(0x23000, 1)
    ctx.unmap(ioas, 0x20000, 2 * PAGE)
    with pytest.raises(IommuFault):
        pdev.dma_read(0x20000, 1)
    assert m.system.faults and m.system.faults[-1].bdf == EDU


def test_bind_needs_interrupt_remapping(machine_factory: Callable[..., Machine]) -> None:
    m = machine_factory(iommu={"interrupt_remapping": False})
    ctx = m.iommufd()
    m.bind_vfio(EDU)
    name = m.b.sysfs_listdir(f"/sys/bus/pci/devices/{EDU}/vfio-dev")[0]
    dfd = m.b.open(f"/dev/vfio/devices/{name}")
    m.fds.append(dfd)
    bind = ffi.new("struct vfio_device_bind_iommufd *")
    bind.argsz = ffi.sizeof(bind[0])
    bind.iommufd = ctx.fd
    assert err(lambda: m.b.ioctl(dfd, lib.VFIO_DEVICE_BIND_IOMMUFD, bind)) == errno.EPERM
    m.b.sysfs_write("/sys/module/iommufd/parameters/allow_unsafe_interrupts", "1")
    assert m.b.ioctl(dfd, lib.VFIO_DEVICE_BIND_IOMMUFD, bind) == 0


# -- HWPT -------------------------------------------------------------------------------------------------
def test_hwpt_alloc_errors(ctx: Iommufd, m: Machine) -> None:
    ioas = ctx.ioas()
    _dfd, dev = m.cdev(EDU, ctx)

    def alloc(**kw: int) -> Callable[[], int]:
        fields = dict(dev_id=dev, pt_id=ioas)
        fields.update(kw)
        c = ctx.cmd("iommu_hwpt_alloc", **fields)
        return lambda: ctx.ioctl(lib.IOMMU_HWPT_ALLOC, c)

    assert err(alloc(data_len=8)) == errno.EINVAL
    assert err(alloc(data_type=lib.IOMMU_HWPT_DATA_VTD_S1)) == errno.EINVAL
    assert err(alloc(dev_id=ioas)) == errno.ENOENT
    assert err(alloc(pt_id=99)) == errno.EINVAL
    assert err(alloc(pt_id=dev)) == errno.EINVAL
    assert err(alloc(flags=1 << 7)) == errno.EOPNOTSUPP
    assert err(alloc(flags=lib.IOMMU_HWPT_ALLOC_NEST_PARENT)) == errno.EOPNOTSUPP
    assert err(alloc(flags=lib.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)) == errno.EOPNOTSUPP
    assert err(alloc(flags=lib.IOMMU_HWPT_ALLOC_NEST_PARENT
                     | lib.IOMMU_HWPT_FAULT_ID_VALID)) == errno.EOPNOTSUPP
    data = ffi.new("struct iommu_hwpt_vtd_s1 *")
    assert err(alloc(data_type=lib.IOMMU_HWPT_DATA_VTD_S1, data_len=ffi.sizeof(data[0]),
                     data_uptr=addr(data))) == errno.EOPNOTSUPP
    assert err(alloc(flags=lib.IOMMU_HWPT_FAULT_ID_VALID, fault_id=77)) == errno.ENOENT
    # none of the failures leaked an ID
    hwpt = ctx.hwpt_alloc(dev, ioas)
    assert hwpt == dev + 1
    # nested on a paging HWPT that is not a nesting parent
    assert err(alloc(pt_id=hwpt, data_type=lib.IOMMU_HWPT_DATA_VTD_S1,
                     data_len=ffi.sizeof(data[0]), data_uptr=addr(data))) == errno.EINVAL
    assert err(alloc(pt_id=hwpt)) == errno.EOPNOTSUPP
    ctx.destroy(hwpt)
    ctx.hwpt_alloc(dev, ioas, flags=lib.IOMMU_HWPT_ALLOC_PASID)


def test_hwpt_with_fault_queue(ctx: Iommufd, m: Machine) -> None:
    ioas = ctx.ioas()
    dfd, dev = m.cdev(EDU, ctx)
    fault_id, fault_fd = ctx.fault_queue()
    hwpt = ctx.hwpt_alloc(dev, ioas, flags=lib.IOMMU_HWPT_FAULT_ID_VALID, fault_id=fault_id)
    # the edu device has no PRI: intel_iommu_enable_iopf fails
    assert err(lambda: m.attach(dfd, hwpt)) == errno.ENODEV
    assert err(lambda: ctx.destroy(fault_id)) == errno.EBUSY
    ctx.destroy(hwpt)
    assert err(lambda: ctx.destroy(fault_id)) == errno.EBUSY  # the fd holds it
    # the fault fd: whole records only, no faults pending
    rec = ffi.sizeof("struct iommu_hwpt_pgfault")
    assert err(lambda: m.b.read(fault_fd, rec - 1)) == errno.ESPIPE
    assert m.b.read(fault_fd, rec) == b""
    resp = ffi.new("struct iommu_hwpt_page_response *")
    resp.cookie = 5
    assert err(lambda: m.b.write(fault_fd, bytes(ffi.buffer(resp)))) == errno.EINVAL
    resp.code = 7
    assert err(lambda: m.b.write(fault_fd, bytes(ffi.buffer(resp)))) == errno.EINVAL
    assert err(lambda: m.b.write(fault_fd, b"x")) == errno.ESPIPE
    c = ctx.cmd("iommu_fault_alloc", flags=1)
    assert err(lambda: ctx.ioctl(lib.IOMMU_FAULT_QUEUE_ALLOC, c)) == errno.EOPNOTSUPP
    m.b.close(fault_fd)
    ctx.destroy(fault_id)


def test_fault_fd_keeps_context(m: Machine) -> None:
    ctx = m.iommufd()
    fault_id, fault_fd = ctx.fault_queue()
    file = ctx.file
    ctx.close()
    assert file.object_ids() == [fault_id]
    m.b.close(fault_fd)
    assert file.object_ids() == []


def test_hwpt_invalidate(ctx: Iommufd, m: Machine) -> None:
    ioas = ctx.ioas()
    _dfd, dev = m.cdev(EDU, ctx)
    hwpt = ctx.hwpt_alloc(dev, ioas)
    entries = ffi.new("struct iommu_hwpt_vtd_s1_invalidate[2]")

    def inval(**kw: int) -> Any:
        fields = dict(hwpt_id=hwpt, data_uptr=addr(entries), entry_len=ffi.sizeof(entries[0]),
                      entry_num=1, data_type=lib.IOMMU_HWPT_INVALIDATE_DATA_VTD_S1)
        fields.update(kw)
        return ctx.cmd("iommu_hwpt_invalidate", **fields)

    for kw, e in [({}, errno.EINVAL), ({"hwpt_id": 99}, errno.ENOENT),
                  ({"entry_len": PAGE + 1}, errno.EINVAL), ({"data_uptr": 0}, errno.EINVAL),
                  ({"entry_len": 0}, errno.EINVAL), ({"entry_num": (1 << 19) + 1}, errno.EINVAL)]:
        c = inval(**kw)
        assert err(lambda: ctx.ioctl(lib.IOMMU_HWPT_INVALIDATE, c)) == e
        assert c.entry_num == 0  # written back on failure too
    c = inval(entry_num=0, hwpt_id=ioas)
    assert err(lambda: ctx.ioctl(lib.IOMMU_HWPT_INVALIDATE, c)) == errno.EINVAL


def test_viommu_family_not_supported(ctx: Iommufd, m: Machine) -> None:
    _dfd, dev = m.cdev(EDU, ctx)
    ioas = ctx.ioas()
    hwpt = ctx.hwpt_alloc(dev, ioas)
    c = ctx.cmd("iommu_viommu_alloc", dev_id=dev, hwpt_id=hwpt)
    assert err(lambda: ctx.ioctl(lib.IOMMU_VIOMMU_ALLOC, c)) == errno.EOPNOTSUPP  # DEFAULT type
    c.type = lib.IOMMU_VIOMMU_TYPE_ARM_SMMUV3
    c.dev_id = 99
    assert err(lambda: ctx.ioctl(lib.IOMMU_VIOMMU_ALLOC, c)) == errno.ENOENT
    c.dev_id = dev
    assert err(lambda: ctx.ioctl(lib.IOMMU_VIOMMU_ALLOC, c)) == errno.EOPNOTSUPP  # intel-iommu
    c.flags = 1
    assert err(lambda: ctx.ioctl(lib.IOMMU_VIOMMU_ALLOC, c)) == errno.EOPNOTSUPP
    c2 = ctx.cmd("iommu_vdevice_alloc", viommu_id=hwpt, dev_id=dev)
    assert err(lambda: ctx.ioctl(lib.IOMMU_VDEVICE_ALLOC, c2)) == errno.ENOENT
    c3 = ctx.cmd("iommu_veventq_alloc", viommu_id=hwpt, veventq_depth=8)
    assert err(lambda: ctx.ioctl(lib.IOMMU_VEVENTQ_ALLOC, c3)) == errno.EOPNOTSUPP
    c3.type = lib.IOMMU_VEVENTQ_TYPE_ARM_SMMUV3
    assert err(lambda: ctx.ioctl(lib.IOMMU_VEVENTQ_ALLOC, c3)) == errno.ENOENT
    c3.veventq_depth = 0
    assert err(lambda: ctx.ioctl(lib.IOMMU_VEVENTQ_ALLOC, c3)) == errno.EINVAL
    c4 = ctx.cmd("iommu_hw_queue_alloc", viommu_id=hwpt, length=PAGE)
    assert err(lambda: ctx.ioctl(lib.IOMMU_HW_QUEUE_ALLOC, c4)) == errno.EOPNOTSUPP
    c4.type = lib.IOMMU_HW_QUEUE_TYPE_TEGRA241_CMDQV
    c4.length = 0
    assert err(lambda: ctx.ioctl(lib.IOMMU_HW_QUEUE_ALLOC, c4)) == errno.EINVAL
    c4.length, c4.nesting_parent_iova = 2 * PAGE, U64_MAX - PAGE
    assert err(lambda: ctx.ioctl(lib.IOMMU_HW_QUEUE_ALLOC, c4)) == errno.EOVERFLOW
    c4.nesting_parent_iova = 0
    assert err(lambda: ctx.ioctl(lib.IOMMU_HW_QUEUE_ALLOC, c4)) == errno.ENOENT


# -- GET_HW_INFO ------------------------------------------------------------------------------------------
def test_get_hw_info(ctx: Iommufd, m: Machine) -> None:
    _dfd, dev = m.cdev(EDU, ctx)
    vtd = ffi.new("struct iommu_hw_info_vtd *")
    c = ctx.cmd("iommu_hw_info", dev_id=dev, data_len=ffi.sizeof(vtd[0]), data_uptr=addr(vtd))
    assert ctx.ioctl(lib.IOMMU_GET_HW_INFO, c) == 0
    assert c.out_data_type == lib.IOMMU_HW_INFO_TYPE_INTEL_VTD
    assert c.data_len == ffi.sizeof("struct iommu_hw_info_vtd")
    assert vtd.flags == lib.IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17
    assert (vtd.cap_reg >> 16) & 0x3F == 47  # MGAW: 48-bit aperture
    assert c.out_capabilities == lib.IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED
    assert c.out_max_pasid_log2 == 0
    # zero-length buffer: only the length is reported
    c2 = ctx.cmd("iommu_hw_info", dev_id=dev)
    assert ctx.ioctl(lib.IOMMU_GET_HW_INFO, c2) == 0
    assert c2.data_len == ffi.sizeof("struct iommu_hw_info_vtd")
    # a larger buffer gets its tail zeroed, a smaller one is filled as far as it goes
    big = ffi.new("char[64]", b"\xee" * 64)
    c2.data_uptr, c2.data_len = addr(big), 64
    assert ctx.ioctl(lib.IOMMU_GET_HW_INFO, c2) == 0
    assert bytes(ffi.buffer(big))[24:] == bytes(40)
    small = ffi.new("char[6]", b"\xee" * 6)
    c2.data_uptr, c2.data_len = addr(small), 4
    assert ctx.ioctl(lib.IOMMU_GET_HW_INFO, c2) == 0
    assert bytes(ffi.buffer(small)) == bytes(ffi.buffer(vtd))[:4] + b"\xee\xee"
    # requested types
    c2.flags = lib.IOMMU_HW_INFO_FLAG_INPUT_TYPE
    c2.in_data_type = lib.IOMMU_HW_INFO_TYPE_ARM_SMMUV3
    assert err(lambda: ctx.ioctl(lib.IOMMU_GET_HW_INFO, c2)) == errno.EOPNOTSUPP
    c2.in_data_type = lib.IOMMU_HW_INFO_TYPE_INTEL_VTD
    c2.data_len = 4  # (data_len is in/out: the last call set it to 24)
    assert ctx.ioctl(lib.IOMMU_GET_HW_INFO, c2) == 0
    c2.flags = 2
    assert err(lambda: ctx.ioctl(lib.IOMMU_GET_HW_INFO, c2)) == errno.EOPNOTSUPP
    c2.flags, c2.data_uptr, c2.data_len = 0, 8, 8
    assert err(lambda: ctx.ioctl(lib.IOMMU_GET_HW_INFO, c2)) == errno.EFAULT
    # a user struct ending before out_capabilities does not get it
    buf = ffi.new("char[]", ffi.sizeof("struct iommu_hw_info"))
    h = ffi.cast("struct iommu_hw_info *", buf)
    h.size = ffi.offsetof("struct iommu_hw_info", "out_capabilities")
    h.dev_id = dev
    h.out_capabilities = 0x5A5A
    assert ctx.ioctl(lib.IOMMU_GET_HW_INFO, buf) == 0
    assert h.out_capabilities == 0x5A5A and h.out_data_type == lib.IOMMU_HW_INFO_TYPE_INTEL_VTD


def test_hw_info_dirty_and_pasid(machine_factory: Callable[..., Machine]) -> None:
    m = machine_factory(iommu={"dirty_tracking": True, "pasid_bits": 20})
    # (the topology has no per-device PASID capability: set it on the device)
    m.system.device(EDU).pasid_bits = 16  # type: ignore[attr-defined]
    ctx = m.iommufd()
    _dfd, dev = m.cdev(EDU, ctx)
    vtd = ffi.new("struct iommu_hw_info_vtd *")
    c = ctx.cmd("iommu_hw_info", dev_id=dev, data_len=ffi.sizeof(vtd[0]), data_uptr=addr(vtd))
    assert ctx.ioctl(lib.IOMMU_GET_HW_INFO, c) == 0
    assert c.out_capabilities & lib.IOMMU_HW_CAP_DIRTY_TRACKING
    assert c.out_max_pasid_log2 == 16
    # ECAP: scalable mode, second-stage A/D bits, PASID of 20 bits
    assert vtd.ecap_reg & (1 << 55) and vtd.ecap_reg & (1 << 40)
    assert (vtd.ecap_reg >> 35) & 0x1F == 19


# -- dirty tracking -----------------------------------------------------------------------------------
@pytest.fixture
def dirty_machine(machine_factory: Callable[..., Machine]) -> Machine:
    return machine_factory(iommu={"dirty_tracking": True})


def test_dirty_tracking(dirty_machine: Machine) -> None:
    m = dirty_machine
    ctx = m.iommufd()
    ioas = ctx.ioas()
    dfd, dev = m.cdev(EDU, ctx)
    pdev = m.system.device(EDU)
    plain = ctx.hwpt_alloc(dev, ioas)
    hwpt = ctx.hwpt_alloc(dev, ioas, flags=lib.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
    m.attach(dfd, hwpt)
    buf = m.buffer(16 * PAGE)
    base = 0x100000
    ctx.map(ioas, buf.address, 16 * PAGE, base)
    bitmap = ffi.new("uint64_t[4]")

    def get(iova: int = base, length: int = 16 * PAGE, page_size: int = PAGE, flags: int = 0,
            hwpt_id: int = hwpt) -> int:
        c = ctx.cmd("iommu_hwpt_get_dirty_bitmap", hwpt_id=hwpt_id, iova=iova, length=length,
                    page_size=page_size, flags=flags, data=addr(bitmap))
        return ctx.ioctl(lib.IOMMU_HWPT_GET_DIRTY_BITMAP, c)

    def set_tracking(enable: bool, hwpt_id: int = hwpt) -> int:
        c = ctx.cmd("iommu_hwpt_set_dirty_tracking", hwpt_id=hwpt_id,
                    flags=lib.IOMMU_HWPT_DIRTY_TRACKING_ENABLE if enable else 0)
        return ctx.ioctl(lib.IOMMU_HWPT_SET_DIRTY_TRACKING, c)

    # writes before tracking is enabled leave no trace
    pdev.dma_write(base, b"x")
    set_tracking(True)
    get()
    assert bitmap[0] == 0
    pdev.dma_write(base + 3 * PAGE + 5, b"y" * PAGE)  # pages 3 and 4
    pdev.dma_write(base + 9 * PAGE, b"z")
    get(flags=lib.IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR)
    assert bitmap[0] == (1 << 3) | (1 << 4) | (1 << 9)
    bitmap[0] = 0
    get()
    assert bitmap[0] == (1 << 3) | (1 << 4) | (1 << 9)
    bitmap[0] = 0
    get()
    assert bitmap[0] == 0  # cleared
    # a coarser bitmap, a sub-range
    pdev.dma_write(base + 9 * PAGE, b"z")
    get(page_size=4 * PAGE, flags=lib.IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR)
    assert bitmap[0] == 1 << 2
    bitmap[0] = 0
    get(iova=base + 8 * PAGE, length=4 * PAGE)
    assert bitmap[0] == 1 << 1
    # range checks come before the dirty-ops check
    assert err(lambda: get(length=0)) == errno.EINVAL
    assert err(lambda: get(iova=U64_MAX - PAGE + 1, length=2 * PAGE)) == errno.EOVERFLOW
    assert err(lambda: get(iova=base + 1)) == errno.EINVAL
    assert err(lambda: get(page_size=0)) == errno.EINVAL
    assert err(lambda: get(page_size=32 * PAGE)) == errno.EINVAL
    assert err(lambda: get(hwpt_id=plain)) == errno.EOPNOTSUPP
    assert err(lambda: get(hwpt_id=ioas)) == errno.ENOENT
    assert err(lambda: get(flags=2)) == errno.EOPNOTSUPP
    assert err(lambda: set_tracking(True, plain)) == errno.EOPNOTSUPP
    c = ctx.cmd("iommu_hwpt_set_dirty_tracking", hwpt_id=hwpt, flags=2)
    assert err(lambda: ctx.ioctl(lib.IOMMU_HWPT_SET_DIRTY_TRACKING, c)) == errno.EOPNOTSUPP
    # disabling stops the recording
    set_tracking(False)
    pdev.dma_write(base, b"x")
    bitmap[0] = 0
    get()
    assert bitmap[0] == 0
    m.detach(dfd)


# -- PASID --------------------------------------------------------------------------------------------
def test_pasid_attach(machine_factory: Callable[..., Machine]) -> None:
    m = machine_factory()
    ctx = m.iommufd()
    ioas = ctx.ioas()
    dfd, dev = m.cdev(EDU, ctx)
    compat = ctx.hwpt_alloc(dev, ioas, flags=lib.IOMMU_HWPT_ALLOC_PASID)
    file = ctx.file
    # automatic domains are not PASID compatible
    assert err(lambda: file.attach_device(dev, ioas, 5)) == errno.EINVAL
    # this VT-d has no PASID support
    assert err(lambda: file.attach_device(dev, compat, 5)) == errno.EOPNOTSUPP
    m2 = machine_factory(iommu={"pasid_bits": 20})
    ctx2 = m2.iommufd()
    ioas2 = ctx2.ioas()
    _dfd2, dev2 = m2.cdev(EDU, ctx2)
    hw = ctx2.hwpt_alloc(dev2, ioas2, flags=lib.IOMMU_HWPT_ALLOC_PASID)
    f2 = ctx2.file
    assert f2.attach_device(dev2, hw, 5) == hw
    pdev = m2.system.device(EDU)
    assert 5 in pdev.pasid_domains
    # a RID attachment must then be PASID compatible too
    assert err(lambda: f2.attach_device(dev2, ioas2)) == errno.EINVAL
    assert f2.attach_device(dev2, hw) == hw
    f2.detach_device(dev2, 5)
    assert 5 not in pdev.pasid_domains
    f2.detach_device(dev2)


# -- vfio compatibility ------------------------------------------------------------------------------------
def test_vfio_compat_without_group(ctx: Iommufd) -> None:
    assert ctx.ioctl(lib.VFIO_GET_API_VERSION, 0) == 0
    ext = {n: ctx.ioctl(lib.VFIO_CHECK_EXTENSION, n) for n in (1, 3, 8, 9, 10, 6, 2)}
    assert ext == {1: 1, 3: 1, 8: 1, 9: 1, 10: 0, 6: 0, 2: 0}
    assert err(lambda: ctx.ioctl(lib.VFIO_CHECK_EXTENSION, lib.VFIO_DMA_CC_IOMMU)) == errno.ENODEV
    assert err(lambda: ctx.ioctl(lib.VFIO_SET_IOMMU, lib.VFIO_TYPE1v2_IOMMU)) == errno.ENODEV
    assert err(lambda: ctx.ioctl(lib.VFIO_SET_IOMMU, 7)) == errno.EINVAL
    dm = ffi.new("struct vfio_iommu_type1_dma_map *")
    dm.argsz = ffi.sizeof(dm[0])
    assert err(lambda: ctx.ioctl(lib.VFIO_IOMMU_MAP_DMA, dm)) == errno.ENODEV
    dm.flags = 4
    assert err(lambda: ctx.ioctl(lib.VFIO_IOMMU_MAP_DMA, dm)) == errno.EINVAL
    assert err(lambda: ctx.ioctl(lib.VFIO_IOMMU_DIRTY_PAGES, dm)) == errno.ENOTTY


def test_vfio_compat_on_an_ioas(ctx: Iommufd, m: Machine) -> None:
    """The type1 container ioctls served on the compat IOAS."""
    ioas = ctx.ioas()
    ctx.vfio_ioas(lib.IOMMU_VFIO_IOAS_SET, ioas)
    assert ctx.ioctl(lib.VFIO_SET_IOMMU, lib.VFIO_TYPE1v2_IOMMU) == 0
    assert ctx.ioctl(lib.VFIO_CHECK_EXTENSION, lib.VFIO_DMA_CC_IOMMU) == 1
    buf = m.buffer(8 * PAGE)
    dm = ffi.new("struct vfio_iommu_type1_dma_map *")
    dm.argsz = ffi.sizeof(dm[0])
    dm.flags = lib.VFIO_DMA_MAP_FLAG_READ | lib.VFIO_DMA_MAP_FLAG_WRITE
    dm.vaddr, dm.iova, dm.size = buf.address, 0x100000, 8 * PAGE
    assert ctx.ioctl(lib.VFIO_IOMMU_MAP_DMA, dm) == 0
    assert err(lambda: ctx.ioctl(lib.VFIO_IOMMU_MAP_DMA, dm)) == errno.EEXIST
    # GET_INFO with room for the capability chain
    raw = ffi.new("char[256]")
    info = ffi.cast("struct vfio_iommu_type1_info *", raw)
    info.argsz = ffi.sizeof("struct vfio_iommu_type1_info")
    assert ctx.ioctl(lib.VFIO_IOMMU_GET_INFO, raw) == 0
    need = int(info.argsz)
    assert info.flags == lib.VFIO_IOMMU_INFO_PGSIZES | lib.VFIO_IOMMU_INFO_CAPS
    assert info.cap_offset == 0 and need > 24
    info.argsz = need
    assert ctx.ioctl(lib.VFIO_IOMMU_GET_INFO, raw) == 0
    # no domain: every size from PAGE_SIZE up
    assert info.cap_offset == 24 and info.iova_pgsizes == U64_MAX & ~(PAGE - 1)
    hdr = ffi.cast("struct vfio_info_cap_header *", raw + 24)
    assert hdr.id == lib.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL and hdr.next == 40
    cap = ffi.cast("struct vfio_iommu_type1_info_cap_iova_range *", raw + 40)
    assert cap.header.id == lib.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE and cap.nr_iovas == 1
    assert cap.iova_ranges[0].start == 0 and cap.iova_ranges[0].end == U64_MAX
    # room for the first capability only: it is written, cap_offset stays 0
    ffi.memmove(raw, bytes(256), 256)
    info.argsz = 24 + 12
    assert ctx.ioctl(lib.VFIO_IOMMU_GET_INFO, raw) == 0
    assert info.argsz == need and info.cap_offset == 0
    assert hdr.id == lib.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL and hdr.next == 0
    assert cap.header.id == 0
    # type1v2 unmaps whole mappings only; the size unmapped comes back
    um = ffi.new("struct vfio_iommu_type1_dma_unmap *")
    um.argsz = ffi.sizeof(um[0])
    um.iova, um.size = 0x100000 + PAGE, PAGE
    assert err(lambda: ctx.ioctl(lib.VFIO_IOMMU_UNMAP_DMA, um)) == errno.ENOENT
    assert um.size == 0
    um.iova, um.size = 0, 0x200000
    assert ctx.ioctl(lib.VFIO_IOMMU_UNMAP_DMA, um) == 0 and um.size == 8 * PAGE
    um.iova, um.size = 0, 0x200000
    assert ctx.ioctl(lib.VFIO_IOMMU_UNMAP_DMA, um) == 0 and um.size == 0
    um.size = 0  # an empty range: EINVAL, with the size written back
    assert err(lambda: ctx.ioctl(lib.VFIO_IOMMU_UNMAP_DMA, um)) == errno.EINVAL
    um.flags, um.size = lib.VFIO_DMA_UNMAP_FLAG_ALL, PAGE
    assert err(lambda: ctx.ioctl(lib.VFIO_IOMMU_UNMAP_DMA, um)) == errno.EINVAL
    um.iova = um.size = 0
    assert ctx.ioctl(lib.VFIO_IOMMU_UNMAP_DMA, um) == 0
    um.flags = lib.VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP
    assert err(lambda: ctx.ioctl(lib.VFIO_IOMMU_UNMAP_DMA, um)) == errno.EINVAL


def test_vfio_compat_type1_cuts(ctx: Iommufd, m: Machine) -> None:
    """VFIO_TYPE1_IOMMU disables huge pages so unmaps may split mappings."""
    ioas = ctx.ioas()
    ctx.vfio_ioas(lib.IOMMU_VFIO_IOAS_SET, ioas)
    assert ctx.ioctl(lib.VFIO_SET_IOMMU, lib.VFIO_TYPE1_IOMMU) == 0
    assert ctx.option(lib.IOMMU_OPTION_HUGE_PAGES, lib.IOMMU_OPTION_OP_GET, 0, ioas) == 0
    buf = m.buffer(8 * PAGE)
    ctx.map(ioas, buf.address, 8 * PAGE, 0x100000)
    um = ffi.new("struct vfio_iommu_type1_dma_unmap *")
    um.argsz = ffi.sizeof(um[0])
    um.iova, um.size = 0x100000 + 2 * PAGE, 2 * PAGE
    assert ctx.ioctl(lib.VFIO_IOMMU_UNMAP_DMA, um) == 0 and um.size == 2 * PAGE
    assert ctx.unmap(ioas, 0x100000, 2 * PAGE) == 2 * PAGE
    assert ctx.unmap(ioas, 0x100000 + 4 * PAGE, 4 * PAGE) == 4 * PAGE


def test_group_set_container_with_iommufd(machine_factory: Callable[..., Machine]) -> None:
    """VFIO_GROUP_SET_CONTAINER with an iommufd: the compat IOAS is created,
    the device opened through the group is bound and attached to it."""
    m = machine_factory()
    ctx = m.iommufd()
    m.bind_vfio(EDU)
    gid = m.system.device(EDU).group.id  # type: ignore[union-attr]
    gfd = m.b.open(f"/dev/vfio/{gid}")
    m.fds.append(gfd)
    assert m.b.ioctl(gfd, lib.VFIO_GROUP_SET_CONTAINER, ffi.new("int *", ctx.fd)) == 0
    ioas = ctx.vfio_ioas(lib.IOMMU_VFIO_IOAS_GET)
    assert ioas == 1
    assert ctx.ioctl(lib.VFIO_SET_IOMMU, lib.VFIO_TYPE1v2_IOMMU) == 0
    buf = m.buffer(PAGE)
    buf.write_bytes(0, b"compat")
    dm = ffi.new("struct vfio_iommu_type1_dma_map *")
    dm.argsz = ffi.sizeof(dm[0])
    dm.flags = lib.VFIO_DMA_MAP_FLAG_READ | lib.VFIO_DMA_MAP_FLAG_WRITE
    dm.vaddr, dm.iova, dm.size = buf.address, 0x100000, PAGE
    assert ctx.ioctl(lib.VFIO_IOMMU_MAP_DMA, dm) == 0
    dfd = m.b.ioctl(gfd, lib.VFIO_GROUP_GET_DEVICE_FD, ffi.new("char[]", EDU.encode()))
    m.fds.append(dfd)
    assert m.system.device(EDU).dma_read(0x100000, 6) == b"compat"
    assert m.system.user_memory.pinned_pages == 1
    # QEMU's VT-d has no snoop control: the HWPT cannot enforce coherency
    assert not m.system.iommu.enforce_cache_coherency  # type: ignore[union-attr]
    assert ctx.ioctl(lib.VFIO_CHECK_EXTENSION, lib.VFIO_DMA_CC_IOMMU) == 0
    file = ctx.file
    ctx.close()
    m.close_fd(dfd)
    assert m.system.user_memory.pinned_pages == 0
    assert file.object_ids() == [ioas]  # the group still holds the context
    m.close_fd(gfd)
    assert file.object_ids() == []


# -- no-IOMMU ---------------------------------------------------------------------------------------------
def test_noiommu_get_pa(ctx: Iommufd, m: Machine) -> None:
    ioas = ctx.ioas()
    buf = m.buffer(2 * PAGE)
    ctx.map(ioas, buf.address, 2 * PAGE, 0x10000)

    def get_pa(**kw: int) -> Any:
        fields = dict(ioas_id=ioas, iova=0x10000, length=PAGE)
        fields.update(kw)
        return ctx.cmd("iommu_ioas_noiommu_get_pa", **fields)

    for kw, e in [({"flags": 1}, errno.EOPNOTSUPP), ({"length": 0}, errno.EINVAL),
                  ({"iova": U64_MAX}, errno.EOVERFLOW), ({"ioas_id": 9}, errno.ENOENT),
                  ({"iova": 0x30000}, errno.ENOENT), ({}, errno.EOPNOTSUPP)]:
        c = get_pa(**kw)
        assert err(lambda: ctx.ioctl(lib.IOMMU_IOAS_NOIOMMU_GET_PA, c)) == e


def test_noiommu_cdev(machine_factory: Callable[..., Machine]) -> None:
    """A no-IOMMU device bound through its cdev (CONFIG_IOMMUFD_NOIOMMU):
    no DMA ownership, a software domain, and physical addresses by IOVA."""
    from pyvfio.fake.machine.topology import load

    topo = load("default")
    topo["iommu"], topo["noiommu"] = None, True
    topo.pop("groups", None)
    m = machine_factory(topo)
    ctx = m.iommufd()
    dfd, dev = m.cdev(EDU, ctx)
    ioas = ctx.ioas()
    buf = m.buffer(4 * PAGE)
    ctx.map(ioas, buf.address, 4 * PAGE, 0x10000)
    get_pa = ctx.cmd("iommu_ioas_noiommu_get_pa", ioas_id=ioas, iova=0x11000, length=1 << 20)
    assert err(lambda: ctx.ioctl(lib.IOMMU_IOAS_NOIOMMU_GET_PA, get_pa)) == errno.EOPNOTSUPP
    m.attach(dfd, ioas)
    assert m.system.user_memory.pinned_pages == 4
    assert ctx.ioctl(lib.IOMMU_IOAS_NOIOMMU_GET_PA, get_pa) == 0
    assert get_pa.out_phys == buf.address + PAGE and get_pa.length == 3 * PAGE
    get_pa.length = 8
    assert ctx.ioctl(lib.IOMMU_IOAS_NOIOMMU_GET_PA, get_pa) == 0 and get_pa.length == 8
    # no IOMMU: no hardware information, no dirty tracking, no flags
    hw = ctx.cmd("iommu_hw_info", dev_id=dev)
    assert err(lambda: ctx.ioctl(lib.IOMMU_GET_HW_INFO, hw)) == errno.EOPNOTSUPP
    assert err(lambda: ctx.hwpt_alloc(dev, ioas, flags=lib.IOMMU_HWPT_ALLOC_PASID)) == errno.EOPNOTSUPP
    assert ctx.ranges(ioas) == ([(0, U64_MAX)], PAGE)
    m.system.cap_sys_rawio = False
    assert err(lambda: ctx.ioctl(lib.IOMMU_IOAS_NOIOMMU_GET_PA, get_pa)) == errno.EPERM


def test_compat_noiommu_group(machine_factory: Callable[..., Machine]) -> None:
    """A no-IOMMU group set on an iommufd puts it in no-IOMMU mode
    (iommufd_vfio_compat_set_no_iommu)."""
    from pyvfio.fake.machine.topology import load

    topo = load("default")
    topo["iommu"], topo["noiommu"] = None, True
    topo.pop("groups", None)
    m = machine_factory(topo)
    ctx = m.iommufd()
    m.bind_vfio(EDU)
    vgroup = m.system.vfio_groups()[0]
    gfd = m.b.open(vgroup.dev_path)
    m.fds.append(gfd)
    assert m.b.ioctl(gfd, lib.VFIO_GROUP_SET_CONTAINER, ffi.new("int *", ctx.fd)) == 0
    assert ctx.ioctl(lib.VFIO_CHECK_EXTENSION, lib.VFIO_TYPE1v2_IOMMU) == 0
    assert ctx.ioctl(lib.VFIO_CHECK_EXTENSION, lib.VFIO_NOIOMMU_IOMMU) == 1
    assert err(lambda: ctx.ioctl(lib.VFIO_SET_IOMMU, lib.VFIO_TYPE1v2_IOMMU)) == errno.EINVAL
    assert ctx.ioctl(lib.VFIO_SET_IOMMU, lib.VFIO_NOIOMMU_IOMMU) == 0
    assert err(lambda: ctx.vfio_ioas(lib.IOMMU_VFIO_IOAS_GET)) == errno.ENODEV
    assert ctx.file.object_ids() == []
    m.close_fd(gfd)


def test_pointer_argument_kinds(ctx: Iommufd) -> None:
    c = ctx.cmd("iommu_ioas_alloc")
    # a char * to the struct: the extent is unknown, the address is checked
    assert ctx.ioctl(lib.IOMMU_IOAS_ALLOC, ffi.cast("char *", c)) == 0
    assert c.out_ioas_id == 1
    assert ctx.ioctl(lib.IOMMU_IOAS_ALLOC, ffi.cast("void *", c)) == 0
    assert c.out_ioas_id == 2


# -- the free-space index ------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 200), st.integers(1, 12)), max_size=120),
       st.integers(0, 220), st.integers(1, 20))
def test_free_space_index(ops: list[tuple[bool, int, int]], lo: int, need: int) -> None:
    """FreeSpace (with tiny blocks) against a plain list of used ranges."""
    from pyvfio.fake.iommufd import io_pagetable

    free = io_pagetable.FreeSpace()
    free._BLOCK = 2
    used: list[tuple[int, int]] = []
    for add, start, length in ops:
        rng = (start, start + length - 1)
        if add:
            if any(s <= rng[1] and rng[0] <= l for s, l in used):
                continue
            free.use(*rng)
            used.append(rng)
        elif used:
            victim = used.pop(start % len(used))
            free.free(*victim)
        want = io_pagetable.span_holes(io_pagetable.merge_spans(used), 0, U64_MAX)
        assert list(free) == want
        got = list(free.holes(lo, lo + 100, need))
        naive = [(max(s, lo), min(l, lo + 100)) for s, l in want
                 if l - s + 1 >= need and l >= lo and s <= lo + 100]
        assert got == naive


# -- leak check -----------------------------------------------------------------------------------------
def test_every_ioctl_leaves_no_fd_behind(m: Machine) -> None:
    ctx = m.iommufd()
    fd = ctx.fd
    before = set(m.b._files)
    _fid, ffd = ctx.fault_queue()
    assert set(m.b._files) - before == {ffd}
    m.b.close(ffd)
    ctx.close()
    assert set(m.b._files) == before - {fd}
