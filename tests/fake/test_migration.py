"""Live migration on the fake kernel, driven with raw ioctls: a model with
``model_migration`` gets the migration features a vfio variant driver
adds (drivers/vfio/vfio_main.c and a driver's mig_ops/log_ops): the
state machine and its arcs, the data fds, VFIO_MIG_GET_PRECOPY_INFO,
MIG_DATA_SIZE, DMA logging, the errnos of each, and what the device
does while it is stopped."""

from __future__ import annotations

import copy
import errno
import os
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
from pyvfio.fake.core import FakeBackend
from pyvfio.fake.machine.system import System
from pyvfio.fake.machine.topology import TopologyError, load
from pyvfio.fake.models import MigratableDevice, MigrationCapability
from pyvfio.fake.models.edu import EduDevice
from pyvfio.fake.vfio_pci import mig_next_state

EDU = "0000:00:02.0"
IOVA = 0x100000
PAGE = 4096
TYPE1v2 = 3

GET, SET, PROBE = lib.VFIO_DEVICE_FEATURE_GET, lib.VFIO_DEVICE_FEATURE_SET, lib.VFIO_DEVICE_FEATURE_PROBE
MIGRATION = lib.VFIO_DEVICE_FEATURE_MIGRATION
MIG_STATE = lib.VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE
DATA_SIZE = lib.VFIO_DEVICE_FEATURE_MIG_DATA_SIZE
PRECOPY_V2 = lib.VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2
LOG_START = lib.VFIO_DEVICE_FEATURE_DMA_LOGGING_START
LOG_STOP = lib.VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP
LOG_REPORT = lib.VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT

ERROR = lib.VFIO_DEVICE_STATE_ERROR
STOP = lib.VFIO_DEVICE_STATE_STOP
RUNNING = lib.VFIO_DEVICE_STATE_RUNNING
STOP_COPY = lib.VFIO_DEVICE_STATE_STOP_COPY
RESUMING = lib.VFIO_DEVICE_STATE_RESUMING
RUNNING_P2P = lib.VFIO_DEVICE_STATE_RUNNING_P2P
PRE_COPY = lib.VFIO_DEVICE_STATE_PRE_COPY
PRE_COPY_P2P = lib.VFIO_DEVICE_STATE_PRE_COPY_P2P
ALL_FLAGS = lib.VFIO_MIGRATION_STOP_COPY | lib.VFIO_MIGRATION_P2P | lib.VFIO_MIGRATION_PRE_COPY

# edu registers
LIVENESS, FACTORIAL, IRQ_STATUS, IRQ_RAISE = 0x04, 0x08, 0x24, 0x60
DMA_SRC, DMA_DST, DMA_COUNT, DMA_CMD = 0x80, 0x88, 0x90, 0x98
EDU_BUFFER = 0x40000


def errno_of(fn: Callable[[], object]) -> int:
    with pytest.raises(OSError) as info:
        fn()
    assert info.value.errno is not None
    return info.value.errno


def topology(migration: Any = True, **edu: Any) -> dict[str, Any]:
    """The default machine with ``model_migration`` on its edu device."""
    topo = copy.deepcopy(load("default"))
    for dev in topo["devices"]:
        if dev["bdf"] == EDU:
            if migration is not None:
                dev["model_migration"] = migration
            dev.update(edu)
    return topo


class Host:
    """One machine and the syscalls a VMM issues on it."""

    def __init__(self, topo: dict[str, Any]) -> None:
        self.system = System(topo)
        self.b: FakeBackend = self.system.backend
        self.maps: list[Any] = []
        self.dfd = -1
        self.cfd = -1

    def open(self, bdf: str = EDU) -> int:
        """Bind, container + type1v2, the device fd; memory decode and bus master on."""
        b = self.b
        dev = f"/sys/bus/pci/devices/{bdf}"
        b.sysfs_write(f"{dev}/driver_override", "vfio-pci")
        driver = b.sysfs_basename_of_link(f"{dev}/driver")
        if driver is not None:
            b.sysfs_write(f"/sys/bus/pci/drivers/{driver}/unbind", bdf)
        b.sysfs_write("/sys/bus/pci/drivers_probe", bdf)
        group = os.path.basename(b.sysfs_readlink(f"{dev}/iommu_group"))
        self.cfd = b.open("/dev/vfio/vfio")
        gfd = b.open(f"/dev/vfio/{group}")
        assert b.ioctl(gfd, lib.VFIO_GROUP_SET_CONTAINER, ffi.new("int *", self.cfd)) == 0
        assert b.ioctl(self.cfd, lib.VFIO_SET_IOMMU, TYPE1v2) == 0
        self.dfd = b.ioctl(gfd, lib.VFIO_GROUP_GET_DEVICE_FD, ffi.new("char[]", bdf.encode()))
        b.pwrite(self.dfd, (0x0006).to_bytes(2, "little"), (7 << 40) + 4)
        return self.dfd

    def close(self) -> None:
        for m in self.maps:
            m.close()
        self.maps = []
        for fd in list(self.b._files):
            self.b.close(fd)

    def reopen(self) -> None:
        """Close every fd and open the device again (migration back to RUNNING)."""
        self.close()
        self.open()

    @property
    def edu(self) -> EduDevice:
        model = self.system.devices[EDU].model
        assert isinstance(model, EduDevice)
        return model

    def memory(self, size: int) -> Any:
        """Anonymous memory mapped for DMA at IOVA."""
        m = self.b.mmap(size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
        self.maps.append(m)
        dma = ffi.new("struct vfio_iommu_type1_dma_map *")
        dma.argsz = ffi.sizeof(dma[0])
        dma.flags = lib.VFIO_DMA_MAP_FLAG_READ | lib.VFIO_DMA_MAP_FLAG_WRITE
        dma.vaddr, dma.iova, dma.size = m.address, IOVA, size
        assert self.b.ioctl(self.cfd, lib.VFIO_IOMMU_MAP_DMA, dma) == 0
        return m

    # -- BAR0 ------------------------------------------------------------------------
    def r32(self, off: int) -> int:
        return int.from_bytes(self.b.pread(self.dfd, 4, off), "little")

    def w32(self, off: int, value: int) -> None:
        self.b.pwrite(self.dfd, value.to_bytes(4, "little"), off)

    def w64(self, off: int, value: int) -> None:
        self.b.pwrite(self.dfd, value.to_bytes(8, "little"), off)

    def dma(self, src: int, dst: int, count: int, to_ram: bool) -> None:
        self.w64(DMA_SRC, src)
        self.w64(DMA_DST, dst)
        self.w64(DMA_COUNT, count)
        self.w64(DMA_CMD, 1 | (2 if to_ram else 0))

    # -- VFIO_DEVICE_FEATURE ------------------------------------------------------------
    def feature(self, flags: int, data: bytes = b"", argsz: int | None = None) -> bytes:
        """The ioctl; returns the payload as the kernel left it."""
        hsize = ffi.sizeof("struct vfio_device_feature")
        buf = ffi.new("char[]", hsize + max(len(data), 64))
        hdr = ffi.cast("struct vfio_device_feature *", buf)
        hdr.argsz = hsize + len(data) if argsz is None else argsz
        hdr.flags = flags
        ffi.memmove(buf + hsize, data, len(data))
        assert self.b.ioctl(self.dfd, lib.VFIO_DEVICE_FEATURE, hdr) == 0
        return bytes(ffi.buffer(buf + hsize, len(data)))

    def state(self) -> int:
        return int.from_bytes(self.feature(GET | MIG_STATE, bytes(8))[:4], "little")

    def set_state(self, state: int, fd_in: int = 0x7777) -> int:
        """SET MIG_DEVICE_STATE; returns data_fd (-1 without a session)."""
        out = self.feature(SET | MIG_STATE, state.to_bytes(4, "little") + fd_in.to_bytes(4, "little"))
        assert int.from_bytes(out[:4], "little") == state
        return int.from_bytes(out[4:], "little", signed=True)

    def state_errno(self, state: int) -> int:
        return errno_of(lambda: self.set_state(state))

    def precopy_info(self, fd: int, flags: int = 0, argsz: int | None = None) -> tuple[int, int, int]:
        info = ffi.new("struct vfio_precopy_info *")
        info.argsz = ffi.sizeof(info[0]) if argsz is None else argsz
        info.flags = flags
        assert self.b.ioctl(fd, lib.VFIO_MIG_GET_PRECOPY_INFO, info) == 0
        return int(info.initial_bytes), int(info.dirty_bytes), int(info.flags)

    def read_all(self, fd: int) -> bytes:
        out = b""
        while True:
            chunk = self.b.read(fd, 1000)
            if not chunk:
                return out
            out += chunk

    def save(self) -> bytes:
        """RUNNING -> STOP_COPY, the whole stream, back to RUNNING."""
        fd = self.set_state(STOP_COPY)
        data = self.read_all(fd)
        self.b.close(fd)
        self.set_state(RUNNING)
        return data

    def log_start(self, ranges: list[tuple[int, int]], page_size: int = PAGE,
                  count: int | None = None) -> int:
        array = ffi.new("struct vfio_device_feature_dma_logging_range[]", max(1, len(ranges)))
        for i, (iova, length) in enumerate(ranges):
            array[i].iova, array[i].length = iova, length
        ctl = ffi.new("struct vfio_device_feature_dma_logging_control *")
        ctl.page_size = page_size
        ctl.num_ranges = len(ranges) if count is None else count
        ctl.ranges = int(ffi.cast("uintptr_t", array)) if ranges else 0
        out = self.feature(SET | LOG_START, bytes(ffi.buffer(ctl)))
        return int.from_bytes(out[:8], "little")

    def log_report(self, iova: int, length: int, page_size: int = PAGE, bitmap: Any = None) -> list[int]:
        """The dirty page numbers of the range."""
        pages = (length + page_size - 1) // page_size
        if bitmap is None:
            bitmap = ffi.new("uint64_t[]", max(1, (pages + 63) // 64))
        rep = ffi.new("struct vfio_device_feature_dma_logging_report *")
        rep.iova, rep.length, rep.page_size = iova, length, page_size
        rep.bitmap = int(ffi.cast("uintptr_t", bitmap)) if bitmap is not ffi.NULL else 0
        self.feature(GET | LOG_REPORT, bytes(ffi.buffer(rep)))
        raw = bytes(ffi.buffer(bitmap))
        return [i for i in range(min(pages, 8 * len(raw))) if raw[i // 8] >> (i % 8) & 1]


@pytest.fixture
def make_host() -> Iterator[Callable[..., Host]]:
    hosts: list[Host] = []

    def make(migration: Any = True, **edu: Any) -> Host:
        h = Host(topology(migration, **edu))
        hosts.append(h)
        h.open()
        return h

    yield make
    for h in hosts:
        h.close()
        assert not h.b.open_files


@pytest.fixture
def host(make_host: Callable[..., Host]) -> Host:
    return make_host()


# -- plain vfio-pci and the declaration --------------------------------------------------------------
MIG_FEATURES = (MIGRATION, MIG_STATE, DATA_SIZE, PRECOPY_V2, LOG_START, LOG_STOP, LOG_REPORT)


def test_plain_vfio_pci_answers_enotty(make_host: Callable[..., Host]) -> None:
    h = make_host(None)
    assert h.edu.migration is None
    for feature in MIG_FEATURES:
        for op in (PROBE, PROBE | GET, PROBE | SET, GET, SET):
            assert errno_of(lambda: h.feature(op | feature, bytes(32))) == errno.ENOTTY
    assert vfio_pci.inject_migration_failure(h.system.devices[EDU]) is False


def test_model_migration_spelling() -> None:
    assert MigrationCapability.from_spec(True) == MigrationCapability(ALL_FLAGS, True)
    assert MigrationCapability.from_spec(False) is None and MigrationCapability.from_spec(None) is None
    assert MigrationCapability.from_spec({}) == MigrationCapability(lib.VFIO_MIGRATION_STOP_COPY, False)
    assert MigrationCapability.from_spec({"flags": ["STOP_COPY", "PRE_COPY"], "dma_logging": True}) == \
        MigrationCapability(lib.VFIO_MIGRATION_STOP_COPY | lib.VFIO_MIGRATION_PRE_COPY, True)
    bad: object
    for bad in ({"flags": ["P2P"]}, {"flags": ["STOP_COPY", "FAST"]}, {"flags": "STOP_COPY"},
                {"flag": []}, {"dma_logging": 1}, 7):
        with pytest.raises(ValueError):
            MigrationCapability.from_spec(bad)
    with pytest.raises(TopologyError, match="STOP_COPY is required"):
        System(topology({"flags": ["PRE_COPY"]}))
    topo = topology(None)
    topo["devices"][1]["model_migration"] = True  # the NVMe controller cannot save its state
    with pytest.raises(TopologyError, match="0000:00:03.0.*model_migration is not supported"):
        System(topo)
    assert isinstance(System(topology(True)).devices[EDU].model, MigratableDevice)


def test_migration_feature_and_checks(host: Host) -> None:
    h = host
    assert int.from_bytes(h.feature(GET | MIGRATION, bytes(8)), "little") == ALL_FLAGS
    assert h.feature(PROBE | GET | MIGRATION) == b""
    assert errno_of(lambda: h.feature(PROBE | SET | MIGRATION)) == errno.EINVAL  # GET only
    assert errno_of(lambda: h.feature(GET | MIGRATION, bytes(7))) == errno.EINVAL  # argsz
    assert errno_of(lambda: h.feature(MIGRATION, bytes(8))) == errno.EINVAL  # neither GET nor SET
    assert errno_of(lambda: h.feature(GET | SET | MIGRATION, bytes(8))) == errno.EINVAL
    assert errno_of(lambda: h.feature(1 << 20 | GET | MIGRATION, bytes(8))) == errno.EINVAL
    assert errno_of(lambda: h.feature(GET | MIGRATION, argsz=7)) == errno.EINVAL  # below the header
    # MIG_DEVICE_STATE: GET and SET, 8 bytes
    assert h.feature(PROBE | GET | SET | MIG_STATE) == b""
    out = h.feature(GET | MIG_STATE, bytes(4) + (55).to_bytes(4, "little"))
    assert out == RUNNING.to_bytes(4, "little") + (-1).to_bytes(4, "little", signed=True)
    assert errno_of(lambda: h.feature(SET | MIG_STATE, bytes(7))) == errno.EINVAL
    # MIG_DATA_SIZE: GET only
    assert errno_of(lambda: h.feature(PROBE | SET | DATA_SIZE)) == errno.EINVAL
    size = int.from_bytes(h.feature(GET | DATA_SIZE, bytes(8)), "little")
    assert size == len(h.save())
    # MIG_PRECOPY_INFOv2: SET only, for a device with PRE_COPY
    assert errno_of(lambda: h.feature(PROBE | GET | PRECOPY_V2)) == errno.EINVAL
    assert h.feature(SET | PRECOPY_V2) == b""
    # the logging features
    assert h.feature(PROBE | SET | LOG_START) == b"" and h.feature(PROBE | SET | LOG_STOP) == b""
    assert h.feature(PROBE | GET | LOG_REPORT) == b""
    assert errno_of(lambda: h.feature(PROBE | GET | LOG_START)) == errno.EINVAL
    assert errno_of(lambda: h.feature(SET | LOG_START, bytes(23))) == errno.EINVAL
    assert errno_of(lambda: h.feature(GET | LOG_REPORT, bytes(31))) == errno.EINVAL
    # features of plain vfio-pci are still there
    assert h.feature(PROBE | SET | lib.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY) == b""
    assert errno_of(lambda: h.feature(PROBE | lib.VFIO_DEVICE_FEATURE_BUS_MASTER)) == errno.ENOTTY


def test_optional_states_need_their_flags(make_host: Callable[..., Host]) -> None:
    h = make_host({"flags": ["STOP_COPY"]})
    assert int.from_bytes(h.feature(GET | MIGRATION, bytes(8)), "little") == lib.VFIO_MIGRATION_STOP_COPY
    for state in (RUNNING_P2P, PRE_COPY, PRE_COPY_P2P, ERROR, 8, 0xFFFFFFFF):
        assert h.state_errno(state) == errno.EINVAL
        assert h.state() == RUNNING
    assert errno_of(lambda: h.feature(SET | PRECOPY_V2)) == errno.EINVAL  # no PRE_COPY
    for feature in (LOG_START, LOG_STOP, LOG_REPORT):  # no dma_logging: no log_ops
        assert errno_of(lambda: h.feature(PROBE | feature)) == errno.ENOTTY
    assert h.set_state(RUNNING) == -1  # already there: nothing to do
    assert h.set_state(STOP) == -1 and h.state() == STOP
    assert h.set_state(RUNNING) == -1
    p2p = make_host({"flags": ["STOP_COPY", "P2P"]})
    assert p2p.state_errno(PRE_COPY) == errno.EINVAL
    assert p2p.set_state(RUNNING_P2P) == -1 and p2p.state() == RUNNING_P2P


def path(flags: int, cur: int, new: int) -> list[int]:
    """The arcs vfio_mig_get_next_state walks from ``cur`` to ``new``."""
    out = []
    while cur != new:
        cur = mig_next_state(flags, cur, new)
        out.append(cur)
    return out


def test_next_state_walks_the_kernel_paths() -> None:
    f = ALL_FLAGS
    assert path(f, PRE_COPY, STOP_COPY) == [PRE_COPY_P2P, STOP_COPY]
    assert path(f, PRE_COPY, RESUMING) == [RUNNING, RUNNING_P2P, STOP, RESUMING]
    assert path(f, PRE_COPY_P2P, RUNNING) == [RUNNING_P2P, RUNNING]
    assert path(f, RESUMING, PRE_COPY) == [STOP, RUNNING_P2P, RUNNING, PRE_COPY]
    assert path(f, RESUMING, PRE_COPY_P2P) == [STOP, RUNNING_P2P, PRE_COPY_P2P]
    assert path(f, RUNNING, STOP_COPY) == [RUNNING_P2P, STOP, STOP_COPY]
    assert path(f, STOP_COPY, RUNNING) == [STOP, RUNNING_P2P, RUNNING]
    assert path(f, STOP, PRE_COPY) == [RUNNING_P2P, RUNNING, PRE_COPY]
    sc = lib.VFIO_MIGRATION_STOP_COPY
    assert path(sc, RUNNING, RESUMING) == [STOP, RESUMING]
    assert path(sc, STOP_COPY, RUNNING) == [STOP, RUNNING]
    pre = sc | lib.VFIO_MIGRATION_PRE_COPY
    assert path(pre, PRE_COPY, STOP_COPY) == [STOP_COPY]
    assert path(pre, PRE_COPY, STOP) == [RUNNING, STOP]
    assert path(sc | lib.VFIO_MIGRATION_P2P, RUNNING, STOP) == [RUNNING_P2P, STOP]
    for flags in (f, pre):
        for target in (PRE_COPY, PRE_COPY_P2P):
            if flags == pre and target == PRE_COPY_P2P:
                continue
            assert errno_of(lambda: mig_next_state(flags, STOP_COPY, target)) == errno.EINVAL
    for cur, new in ((ERROR, RUNNING), (RUNNING, ERROR), (RUNNING, 8), (RUNNING, PRE_COPY)):
        assert errno_of(lambda: mig_next_state(sc, cur, new)) == errno.EINVAL


# -- data fds ---------------------------------------------------------------------------------------
def test_stop_copy_data_fd(host: Host) -> None:
    h = host
    h.w32(LIVENESS, 0x1234)
    fd = h.set_state(STOP_COPY)  # RUNNING -> RUNNING_P2P -> STOP -> STOP_COPY
    assert fd >= 0 and h.state() == STOP_COPY
    assert os.get_inheritable(fd) is False
    assert errno_of(lambda: os.write(fd, b"x")) == errno.EBADF  # read-only
    assert errno_of(lambda: h.b.write(fd, b"x")) == errno.EBADF
    assert errno_of(lambda: h.b.pread(fd, 4, 0)) == errno.ESPIPE
    first = os.read(fd, 100)  # a real fd
    rest = h.read_all(fd)  # through the backend, from where os.read stopped
    data = first + rest
    assert len(data) == int.from_bytes(h.feature(GET | DATA_SIZE, bytes(8)), "little")
    assert os.read(fd, 10) == b"" and h.b.read(fd, 10) == b""  # end of stream, no ENOMSG
    assert errno_of(lambda: h.precopy_info(fd)) == errno.EINVAL  # not in PRE_COPY
    assert errno_of(lambda: h.b.ioctl(fd, lib.VFIO_DEVICE_GET_INFO, 0)) == errno.ENOTTY
    assert h.set_state(STOP) == -1  # ends the session
    assert errno_of(lambda: h.b.read(fd, 10)) == errno.ENODEV
    assert os.read(fd, 10) == b""
    h.b.close(fd)
    assert h.set_state(RUNNING) == -1
    assert h.save() == data  # the same state gives the same stream


def test_resume_into_a_second_machine(make_host: Callable[..., Host]) -> None:
    src, dst = make_host(), make_host()
    mem = src.memory(PAGE)
    pattern = bytes((i * 7 + 1) & 0xFF for i in range(PAGE))
    mem.write_bytes(0, pattern)
    src.dma(IOVA, EDU_BUFFER, PAGE, to_ram=False)  # RAM -> the edu buffer
    src.w32(LIVENESS, 0x00FF00FF)
    src.w32(FACTORIAL, 6)
    src.w32(IRQ_RAISE, 0x40)
    data = src.save()
    fd = dst.set_state(RESUMING)  # RUNNING -> RUNNING_P2P -> STOP -> RESUMING
    assert fd >= 0 and dst.state() == RESUMING
    assert errno_of(lambda: os.read(fd, 1)) == errno.EBADF  # write-only
    assert errno_of(lambda: dst.b.read(fd, 1)) == errno.EBADF
    assert errno_of(lambda: dst.precopy_info(fd)) == errno.ENOTTY
    assert os.write(fd, data[:100]) == 100  # a real fd
    assert dst.b.write(fd, data[100:]) == len(data) - 100
    dst.b.close(fd)  # the driver keeps what was written
    assert dst.set_state(RUNNING) == -1  # RESUMING -> STOP loads the state
    assert dst.r32(LIVENESS) == 0xFF00FF00 and dst.r32(FACTORIAL) == 720
    assert dst.r32(IRQ_STATUS) == 0x40
    assert bytes(dst.edu.dma_buf) == pattern
    assert dst.edu.config_word(0x06) & 0x08  # INTx asserted again (status bit 3)
    out = dst.memory(PAGE)
    dst.dma(EDU_BUFFER, IOVA, PAGE, to_ram=True)
    assert out.read_bytes(0, PAGE) == pattern


def test_invalid_streams_are_refused(make_host: Callable[..., Host]) -> None:
    src, dst = make_host(), make_host()
    src.w32(LIVENESS, 1)
    data = src.save()
    before = dst.edu.save_device_state()
    damaged = bytearray(data)
    damaged[-1] ^= 0xFF
    foreign = data.replace(b"edu 1234:11e8", b"edu 1234:11e9")  # another device's stream
    assert foreign != data
    for bad in (b"", data[:-1], bytes(damaged), data + b"\0", foreign, b"junk" * 10):
        fd = dst.set_state(RESUMING)
        if bad:
            assert dst.b.write(fd, bad) == len(bad)
        assert dst.state_errno(STOP) == errno.EINVAL
        assert dst.state() == RESUMING  # as mlx5 and mtty: the state is unchanged
        assert dst.edu.save_device_state() == before
        dst.b.close(fd)
        assert dst.set_state(RESUMING) == -1  # still there
        assert dst.state_errno(RUNNING) == errno.EINVAL  # the path goes through the load
        dst.reopen()  # the way out without a reset method: close the device
        assert dst.state() == RUNNING
    fd = dst.set_state(RESUMING)
    dst.b.write(fd, data[:50])
    assert dst.state_errno(STOP) == errno.EINVAL
    dst.b.write(fd, data[50:])  # completing the stream lets the load succeed
    assert dst.set_state(STOP) == -1 and dst.edu.liveness == 0xFFFFFFFE
    assert errno_of(lambda: dst.b.write(fd, b"x")) == errno.ENODEV
    assert errno_of(lambda: os.write(fd, b"x")) == errno.EPERM  # the raw fd is sealed
    dst.b.close(fd)


def test_state_load_checks_consistency(make_host: Callable[..., Host]) -> None:
    h = make_host(model_fact_latency=3)
    edu = h.edu
    h.w32(FACTORIAL, 5)  # still computing for 3 more accesses
    state = edu.save_device_state()
    other = make_host().edu
    other.load_device_state(state)
    assert other.status & 1 and other.fact == 5
    other.complete_pending()
    assert other.fact == 120 and not other.status & 1
    broken = bytearray(state)
    broken[12] &= ~1  # the computing bit without its factorial
    for bad in (bytes(broken), state[:-1], b"xxxx" + state[4:], state[:20]):
        with pytest.raises(ValueError):
            other.load_device_state(bad)


def test_precopy(host: Host) -> None:
    h = host
    fd = h.set_state(PRE_COPY)
    assert fd >= 0 and h.state() == PRE_COPY
    initial, dirty, flags = h.precopy_info(fd, flags=0x55)
    assert initial > 4096 and dirty == 0
    assert flags == 0x55  # without the v2 opt-in the flags are the user's own
    assert errno_of(lambda: h.precopy_info(fd, argsz=23)) == errno.EINVAL
    assert errno_of(lambda: h.b.ioctl(fd, lib.VFIO_MIG_GET_PRECOPY_INFO, 0)) == errno.EFAULT
    chunk = h.b.read(fd, 1000)
    assert h.precopy_info(fd)[:2] == (initial - 1000, 0)
    stream = chunk + os.read(fd, initial)
    assert h.precopy_info(fd)[:2] == (0, 0)
    assert errno_of(lambda: h.b.read(fd, 10)) == errno.ENOMSG  # the temporary end
    assert os.read(fd, 10) == b""  # what a raw read sees there
    # the device runs in PRE_COPY and changes: new data after the ioctl
    h.w32(LIVENESS, 0xABCD)
    assert h.r32(LIVENESS) == 0xFFFF5432
    initial2, dirty2, _ = h.precopy_info(fd)
    assert initial2 == 0 and dirty2 > 4096
    more = h.b.read(fd, 1 << 20)
    assert len(more) == dirty2
    stream += more
    assert h.precopy_info(fd)[:2] == (0, 0)
    h.w32(LIVENESS, 0x1)
    assert h.b.read(fd, 0) == b""  # a read of nothing is not at the end
    assert h.feature(SET | PRECOPY_V2) == b""
    assert h.precopy_info(fd, flags=0x55)[2] == 0  # an output field now
    # PRE_COPY -> PRE_COPY_P2P -> STOP_COPY: the same fd carries on, no new one
    assert h.set_state(STOP_COPY) == -1
    assert errno_of(lambda: h.precopy_info(fd)) == errno.EINVAL
    stream += h.read_all(fd)
    assert h.b.read(fd, 1) == b""
    h.set_state(STOP)
    h.b.close(fd)
    # the destination ends with the latest state
    dst = Host(topology())
    try:
        dst.open()
        rfd = dst.set_state(RESUMING)
        dst.b.write(rfd, stream)
        assert dst.set_state(RUNNING) == -1
        assert dst.r32(LIVENESS) == 0xFFFFFFFE
    finally:
        dst.close()


def test_precopy_session_ends_when_running_again(host: Host) -> None:
    h = host
    fd = h.set_state(PRE_COPY_P2P)  # RUNNING -> RUNNING_P2P -> PRE_COPY_P2P
    assert fd >= 0
    assert h.set_state(PRE_COPY) == -1  # within the saving group: same session
    assert h.precopy_info(fd)[0] > 0
    assert h.set_state(RUNNING) == -1
    assert errno_of(lambda: h.b.read(fd, 10)) == errno.ENODEV
    assert errno_of(lambda: h.precopy_info(fd)) == errno.EINVAL
    h.b.close(fd)
    fd2 = h.set_state(PRE_COPY)
    assert fd2 >= 0 and h.b.read(fd2, 16)[:4] == b"PVFM"
    assert h.state_errno(PRE_COPY_P2P + 1) == errno.EINVAL and h.state() == PRE_COPY
    h.set_state(STOP_COPY)
    assert h.state_errno(PRE_COPY) == errno.EINVAL  # STOP_COPY -> PRE_COPY is blocked
    assert h.state() == STOP_COPY
    h.b.close(fd2)


# -- the device while stopped ------------------------------------------------------------------------
def test_stopped_device_keeps_its_state(host: Host) -> None:
    h = host
    edu = h.edu
    h.w32(LIVENESS, 0x0F)
    efd = h.b.eventfd(0, os.EFD_NONBLOCK)
    try:
        ioe = ffi.new("struct vfio_device_ioeventfd *")
        ioe.argsz = ffi.sizeof(ioe[0])
        ioe.flags = lib.VFIO_DEVICE_IOEVENTFD_32
        ioe.offset, ioe.data, ioe.fd = LIVENESS, 0x33, efd
        assert h.b.ioctl(h.dfd, lib.VFIO_DEVICE_IOEVENTFD, ioe) == 0
        assert h.set_state(RUNNING_P2P) == -1
        assert h.r32(LIVENESS) == 0xFFFFFFF0  # P2P: still running
        assert h.set_state(STOP) == -1
        log = len(edu.mmio_log)
        assert h.r32(0x00) == 0xFFFFFFFF  # registers do not answer
        h.w32(LIVENESS, 0x1)
        h.w32(FACTORIAL, 4)
        os.eventfd_write(efd, 1)
        h.feature(GET | MIG_STATE, bytes(8))  # runs the ioeventfd: dropped too
        bar = h.b.mmap(1 << 20, PROT_READ | PROT_WRITE, MAP_SHARED, h.dfd, 0)
        h.maps.append(bar)
        assert bar.read(LIVENESS, 4) == 0xFFFFFFFF
        bar.write(LIVENESS, 4, 0x2)
        assert len(edu.mmio_log) == log and edu.liveness == 0xFFFFFFF0 and edu.fact == 0
        # config space still works
        assert int.from_bytes(h.b.pread(h.dfd, 2, 7 << 40), "little") == 0x1234
        assert h.set_state(RUNNING) == -1
        assert h.r32(LIVENESS) == 0xFFFFFFF0 and bar.read(0x00, 4) == 0x010000ED
        os.eventfd_write(efd, 1)
        h.feature(GET | MIG_STATE, bytes(8))
        assert edu.liveness == ~0x33 & 0xFFFFFFFF  # ioeventfds work again
    finally:
        os.close(efd)


def test_error_state_and_reset(make_host: Callable[..., Host]) -> None:
    topo = topology()
    # edu alone behind the PCIe-to-PCI bridge: a bus reset works there
    topo["devices"] = [d for d in topo["devices"] if not d["bdf"].startswith("0000:01:")]
    next(d for d in topo["devices"] if d["bdf"] == EDU)["bdf"] = "0000:01:01.0"
    topo.pop("groups")  # derived again
    h = Host(topo)
    try:
        h.open("0000:01:01.0")
        pdev = h.system.devices["0000:01:01.0"]
        fd = h.set_state(PRE_COPY)
        assert vfio_pci.inject_migration_failure(pdev, errno.EIO)
        assert h.state_errno(STOP_COPY) == errno.EIO
        assert h.state() == ERROR
        assert errno_of(lambda: h.b.read(fd, 1)) == errno.ENODEV  # the session is over
        for state in (RUNNING, STOP, RESUMING):
            assert h.state_errno(state) == errno.EINVAL
        assert h.set_state(ERROR) == -1  # already there: nothing to do
        assert h.r32(0) == 0xFFFFFFFF  # a failed device does not answer
        assert h.b.ioctl(h.dfd, lib.VFIO_DEVICE_RESET) == 0
        assert h.state() == RUNNING and h.r32(0) == 0x010000ED
        # any reset ends the data sessions
        fd2 = h.set_state(STOP_COPY)
        assert h.b.ioctl(h.dfd, lib.VFIO_DEVICE_RESET) == 0
        assert h.state() == RUNNING and errno_of(lambda: h.b.read(fd2, 1)) == errno.ENODEV
    finally:
        h.close()
    assert not h.b.open_files


def test_close_ends_everything(host: Host) -> None:
    h = host
    fd = h.set_state(PRE_COPY)
    h.log_start([(IOVA, 0x10000)])
    for f in list(h.b._files):
        if f != fd:
            h.b.close(f)
    assert errno_of(lambda: h.b.read(fd, 1)) == errno.ENODEV
    assert h.edu.dirty_log is None and vfio_pci.core_of(h.system.devices[EDU]) is None
    h.b.close(fd)
    h.open()
    assert h.state() == RUNNING
    assert errno_of(lambda: h.log_report(IOVA, 0x10000)) == errno.EINVAL  # logging was stopped


def test_data_fds_release_their_memory(host: Host) -> None:
    h = host
    data = h.save()
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        fd = h.set_state(PRE_COPY)
        h.b.read(fd, 100)
        h.b.close(fd)  # closed first, session ended after
        h.set_state(RUNNING)
        fd = h.set_state(RESUMING)
        h.b.write(fd, data)
        h.b.close(fd)
        h.set_state(STOP)  # loads what the closed fd carried
        fd = h.set_state(STOP_COPY)
        h.set_state(STOP)  # session ended first, fd closed after
        h.b.close(fd)
        h.set_state(RUNNING)
    assert len(os.listdir("/proc/self/fd")) == before


# -- DMA logging -------------------------------------------------------------------------------------
def test_dma_logging(host: Host) -> None:
    h = host
    mem = h.memory(16 * PAGE)
    assert errno_of(lambda: h.log_report(IOVA, 16 * PAGE)) == errno.EINVAL  # not started
    h.feature(SET | LOG_STOP)  # stopping what is not started is fine
    assert h.log_start([(IOVA, 8 * PAGE), (IOVA + 12 * PAGE, 4 * PAGE)]) == PAGE
    assert errno_of(lambda: h.log_start([(IOVA, PAGE)])) == errno.EINVAL  # already started
    assert h.log_report(IOVA, 16 * PAGE) == []
    mem.write_bytes(0, b"\1" * 64)
    for page in (1, 6, 7, 10, 13):
        h.dma(EDU_BUFFER, IOVA + page * PAGE + 0x80, 64, to_ram=True)
    h.dma(IOVA, EDU_BUFFER, 64, to_ram=False)  # reads are not logged
    h.dma(EDU_BUFFER, IOVA + 3 * PAGE - 32, 64, to_ram=True)  # across pages 2 and 3
    assert h.log_report(IOVA, 16 * PAGE) == [1, 2, 3, 6, 7, 13]  # page 10 is not tracked
    assert h.log_report(IOVA, 16 * PAGE) == []  # reading cleared the log
    h.dma(EDU_BUFFER, IOVA + 5 * PAGE, 64, to_ram=True)
    h.dma(EDU_BUFFER, IOVA + 6 * PAGE, 64, to_ram=True)
    assert h.log_report(IOVA + 6 * PAGE, 2 * PAGE) == [0]  # only the range asked is cleared
    assert h.log_report(IOVA, 16 * PAGE, page_size=2 * PAGE) == [2]  # pages 4-5 at 8 KiB
    # the bitmap is only ORed into
    bitmap = ffi.new("uint64_t[]", 1)
    bitmap[0] = 1 << 40
    h.dma(EDU_BUFFER, IOVA, 64, to_ram=True)
    assert h.log_report(IOVA, 16 * PAGE, bitmap=bitmap) == [0]
    assert bitmap[0] == 1 << 40 | 1
    h.dma(EDU_BUFFER, IOVA + 0x800, 64, to_ram=True)  # bits count from the range's start
    assert h.log_report(IOVA + 0x800, PAGE) == [0]
    # argument checks of the report
    assert errno_of(lambda: h.log_report(IOVA, PAGE, page_size=2048)) == errno.EINVAL
    assert errno_of(lambda: h.log_report(IOVA, PAGE, page_size=3 * PAGE)) == errno.EINVAL
    small = ffi.new("uint64_t[]", 1)
    assert errno_of(lambda: h.log_report(1 << 63, 1 << 63 | 1, bitmap=small)) == errno.EOVERFLOW
    assert errno_of(lambda: h.log_report(IOVA, PAGE, bitmap=ffi.NULL)) == errno.EFAULT
    assert h.log_report(IOVA, 0) == []
    h.feature(SET | LOG_STOP)
    assert errno_of(lambda: h.log_report(IOVA, PAGE)) == errno.EINVAL
    assert h.edu.dirty_log is None


def test_dma_logging_start_checks(host: Host) -> None:
    h = host
    assert errno_of(lambda: h.log_start([])) == errno.EINVAL  # no ranges
    assert errno_of(lambda: h.log_start([(0, PAGE)] * 2, count=257)) == errno.E2BIG
    assert errno_of(lambda: h.log_start([(IOVA + 1, PAGE)])) == errno.EINVAL  # unaligned
    assert errno_of(lambda: h.log_start([(IOVA, PAGE + 1)])) == errno.EINVAL
    assert errno_of(lambda: h.log_start([(IOVA, 2 * PAGE), (IOVA + PAGE, PAGE)])) == errno.EINVAL
    assert errno_of(lambda: h.log_start([(1 << 63, 1 << 63)])) == errno.EOVERFLOW
    assert h.edu.dirty_log is None
    # the page size is a hint: the device picks a power of two in 4 KiB .. 1 GiB
    for hint, chosen in ((PAGE, PAGE), (1, PAGE), (3 * PAGE, 4 * PAGE), (1 << 21, 1 << 21), (1 << 40, 1 << 30)):
        ranges = [(0, 0)] if hint & (hint - 1) else [(1 << 40, 1 << 40)]
        assert h.log_start(ranges, page_size=hint) == chosen
        h.feature(SET | LOG_STOP)
    ranges = [(i * 2 * PAGE, PAGE) for i in range(256)]
    assert h.log_start(ranges) == PAGE  # LOG_MAX_RANGES fit
    h.feature(SET | LOG_STOP)


def test_dma_logging_needs_a_mapped_write(host: Host) -> None:
    h = host
    h.memory(PAGE)
    h.log_start([(0, 1 << 28)])
    h.dma(EDU_BUFFER, IOVA + 2 * PAGE, 64, to_ram=True)  # not mapped: the IOMMU blocks it
    assert h.edu.dma_errors == 1
    assert h.log_report(0, 1 << 28) == []
    h.dma(EDU_BUFFER, IOVA, 64, to_ram=True)
    assert h.log_report(0, 1 << 28) == [IOVA // PAGE]
