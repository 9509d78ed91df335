"""Device features, resets and recovery on the fake kernel.

Plain vfio-pci offers the low-power features; migration, DMA logging and
bus master control answer ENOTTY as on Linux (the fake's migratable edu is
tested in test_toolkit_migration.py).  The encoding of the migration
and DMA-logging calls is checked against a small kernel-side double of
those features (``FeatureDouble``) that reads the structs the way
vfio's variant drivers do."""

from __future__ import annotations

import errno
import os
from typing import Any, Iterator

import pytest
from toolkit_env import FakeMachine, bind_vfio, open_cdev

from pyvfio import Device, Group, IommuFd, MigrationState, ffi, lib
from pyvfio.core.features import Feature, MigrationFlags
from pyvfio.errors import InvalidArgumentError, IoctlError, UnsupportedError
from pyvfio.fake import vfio_pci

E1000_A, E1000_B = "0000:01:01.0", "0000:01:02.0"


@pytest.fixture
def machine() -> Iterator[FakeMachine]:
    m = FakeMachine()
    yield m
    m.check_no_leaks()


def test_probe_and_low_power(machine: FakeMachine) -> None:
    with open_cdev(machine.backend, machine.edu) as (dev, _ioas):
        f = dev.features
        assert f.probe(Feature.LOW_POWER_ENTRY, set=True)
        assert not f.probe(Feature.LOW_POWER_ENTRY, get=True)  # EINVAL: no GET
        assert not f.probe(Feature.MIGRATION)  # ENOTTY
        assert f.supported() == {Feature.LOW_POWER_ENTRY: "set",
                                 Feature.LOW_POWER_ENTRY_WITH_WAKEUP: "set",
                                 Feature.LOW_POWER_EXIT: "set"}
        core = vfio_pci.core_of(machine.system.devices[machine.edu])
        assert core is not None
        f.low_power_entry()
        assert core.pm_runtime_engaged
        f.low_power_exit()
        assert not core.pm_runtime_engaged
        wake = f.low_power_entry(wakeup=True)
        assert wake is not None and core.pm_runtime_engaged
        assert dev.regions["BAR0"].read32(0) == 0x010000ED  # the access wakes the device
        assert wake.wait(1) == 1 and not core.pm_runtime_engaged
        assert "DeviceFeatures of device" in repr(f)
    assert wake.closed


@pytest.mark.parametrize("name", ["edu", "nvme"])
def test_missing_features_answer_enotty(machine: FakeMachine, name: str) -> None:
    with open_cdev(machine.backend, getattr(machine, name)) as (dev, _ioas):
        f = dev.features
        calls = [
            f.migration_flags, f.migration_state, f.migration_data_size,
            lambda: f.set_migration_state(MigrationState.STOP),
            lambda: f.dma_logging_start([(0x100000, 0x10000)]), f.dma_logging_stop,
            lambda: f.dma_logging_report(0x100000, 0x10000),
            lambda: f.set_bus_master(True),
        ]
        for call in calls:
            with pytest.raises(UnsupportedError, match=r"\[ENOTTY\] the device does not "
                                                        r"support feature") as info:
                call()
            assert info.value.errno == errno.ENOTTY and info.value.ioctl == "VFIO_DEVICE_FEATURE"
        for feature in (Feature.MIGRATION, Feature.DMA_LOGGING_START, Feature.BUS_MASTER):
            assert not f.probe(feature, get=True) and not f.probe(feature, set=True)


def test_feature_call_checks(machine: FakeMachine) -> None:
    with open_cdev(machine.backend, machine.edu) as (dev, _ioas):
        with pytest.raises(InvalidArgumentError, match="out of range"):
            dev.features.call(0x10000, lib.VFIO_DEVICE_FEATURE_GET)
        with pytest.raises(IoctlError) as info:  # GET and SET together need PROBE
            dev.features.call(Feature.LOW_POWER_ENTRY,
                              lib.VFIO_DEVICE_FEATURE_GET | lib.VFIO_DEVICE_FEATURE_SET)
        assert info.value.errno == errno.EINVAL
        with pytest.raises(InvalidArgumentError, match="at least one"):
            dev.features.dma_logging_start([])


class FeatureDouble:
    """What a migration-capable variant driver does with VFIO_DEVICE_FEATURE
    (drivers/vfio/vfio_main.c + a driver's mig_ops/log_ops): reads and
    writes the same structs from/to user memory."""

    _GET, _SET = lib.VFIO_DEVICE_FEATURE_GET, lib.VFIO_DEVICE_FEATURE_SET
    #: the operations of each feature it has
    OPS = {Feature.MIGRATION: _GET, Feature.MIG_DEVICE_STATE: _GET | _SET,
           Feature.MIG_DATA_SIZE: _GET, Feature.DMA_LOGGING_START: _SET,
           Feature.DMA_LOGGING_STOP: _SET, Feature.DMA_LOGGING_REPORT: _GET}

    def __init__(self, real_ioctl: Any, device_fd: int) -> None:
        self.real_ioctl = real_ioctl
        self.device_fd = device_fd
        self.state = MigrationState.RUNNING
        self.blob = b"device state " * 100
        self.resumed = b""
        self.logging: list[tuple[int, int]] | None = None
        self.log_page = 0
        self.fds: list[int] = []

    def ioctl(self, fd: int, request: int, arg: Any = 0) -> int:
        if fd != self.device_fd or request != lib.VFIO_DEVICE_FEATURE:
            return int(self.real_ioctl(fd, request, arg))
        hdr = ffi.cast("struct vfio_device_feature *", arg)
        feature = hdr.flags & lib.VFIO_DEVICE_FEATURE_MASK
        get = hdr.flags & lib.VFIO_DEVICE_FEATURE_GET
        data = ffi.cast("char *", arg) + ffi.sizeof("struct vfio_device_feature")
        size = hdr.argsz - ffi.sizeof("struct vfio_device_feature")
        if hdr.flags & lib.VFIO_DEVICE_FEATURE_PROBE:
            # vfio_check_feature(): an unknown feature is ENOTTY, an
            # operation the feature does not have is EINVAL.
            ops = self.OPS.get(feature)
            if ops is None:
                raise OSError(errno.ENOTTY, "not supported")
            asked = hdr.flags & (lib.VFIO_DEVICE_FEATURE_GET | lib.VFIO_DEVICE_FEATURE_SET)
            if asked & ~ops:
                raise OSError(errno.EINVAL, "operation not supported")
            return 0
        if feature == Feature.MIGRATION and get:
            assert size >= 8
            ffi.cast("struct vfio_device_feature_migration *", data).flags = 0x7
        elif feature == Feature.MIG_DEVICE_STATE:
            mig = ffi.cast("struct vfio_device_feature_mig_state *", data)
            if get:
                mig.device_state = int(self.state)
                return 0
            new = MigrationState(mig.device_state)
            mig.data_fd = -1
            if new == MigrationState.STOP_COPY:
                r, w = os.pipe()
                os.write(w, self.blob)
                os.close(w)
                mig.data_fd = r
            elif new == MigrationState.RESUMING:
                r, w = os.pipe()
                self.fds.append(r)
                mig.data_fd = w
            elif self.state == MigrationState.RESUMING and self.fds:
                self.resumed = os.read(self.fds.pop(), 1 << 16)
            self.state = new
        elif feature == Feature.MIG_DATA_SIZE and get:
            ffi.cast("struct vfio_device_feature_mig_data_size *",
                     data).stop_copy_length = len(self.blob)
        elif feature == Feature.DMA_LOGGING_START:
            ctl = ffi.cast("struct vfio_device_feature_dma_logging_control *", data)
            ranges = ffi.cast("struct vfio_device_feature_dma_logging_range *", ctl.ranges)
            self.logging = [(int(ranges[i].iova), int(ranges[i].length))
                            for i in range(ctl.num_ranges)]
            self.log_page = int(ctl.page_size)
        elif feature == Feature.DMA_LOGGING_STOP:
            self.logging = None
        elif feature == Feature.DMA_LOGGING_REPORT and get:
            rep = ffi.cast("struct vfio_device_feature_dma_logging_report *", data)
            bitmap = ffi.cast("uint64_t *", rep.bitmap)
            bitmap[0] = 0b1010_0001  # pages 0, 5 and 7 dirty
        else:
            raise OSError(errno.ENOTTY, "not supported")
        return 0


def test_migration_and_logging_encoding(machine: FakeMachine,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    with open_cdev(machine.backend, machine.edu) as (dev, _ioas):
        double = FeatureDouble(machine.backend.ioctl, dev.fd)
        monkeypatch.setattr(machine.backend, "ioctl", double.ioctl)
        f = dev.features
        assert f.migration_flags() == MigrationFlags.STOP_COPY | MigrationFlags.P2P \
            | MigrationFlags.PRE_COPY
        assert f.migration_state() is MigrationState.RUNNING
        assert f.set_migration_state(MigrationState.STOP) is None
        assert f.migration_data_size() == len(double.blob)
        data = f.set_migration_state(MigrationState.STOP_COPY)
        assert data is not None and data.state is MigrationState.STOP_COPY
        saved = data.read_all(chunk=100)
        assert saved == double.blob and "STOP_COPY" in data.describe()
        data.close()
        resume = f.set_migration_state(int(MigrationState.RESUMING))
        assert resume is not None
        assert resume.write(saved[:1000]) == 1000
        resume.close()
        assert f.set_migration_state(MigrationState.STOP) is None
        assert double.resumed == saved[:1000]
        assert f.set_migration_state(MigrationState.RUNNING) is None
        assert MigrationState.PRE_COPY.transfers_data and not MigrationState.STOP.transfers_data
        f.dma_logging_start([(0x100000, 0x8000), (0x200000, 0x1000)], page_size=4096)
        assert double.logging == [(0x100000, 0x8000), (0x200000, 0x1000)]
        assert double.log_page == 4096
        assert f.dma_logging_report(0x100000, 0x8000) == bytes([0b1010_0001])
        f.dma_logging_stop()
        assert double.logging is None
        # data fds are resources of the device
        leftover = f.set_migration_state(MigrationState.STOP_COPY)
        monkeypatch.undo()
    assert leftover is not None and leftover.closed


def test_function_reset(machine: FakeMachine) -> None:
    model = machine.model(machine.nvme)
    with open_cdev(machine.backend, machine.nvme) as (dev, _ioas):
        # on the root bus: FLR (PCIe DevCap), never a bus reset (no parent bridge)
        assert dev.info.can_reset and dev.reset_methods == ["flr"]
        assert dev.bdf == machine.nvme and dev.sysfs_path.endswith(machine.nvme)
        dev.config.enable(memory=True)
        bar0 = dev.regions["BAR0"].mmap()
        bar0.write32(0x24, 0x000F000F)  # AQA
        before = model.reset_count
        dev.reset()
        assert model.reset_count == before + 1 and bar0.read32(0x24) == 0
        assert dev.config.memory_enabled  # vfio restores config space around the reset
    with open_cdev(machine.backend, machine.edu) as (dev, _ioas):
        assert not dev.info.can_reset  # edu alone on the root bus: no usable method
        with pytest.raises(UnsupportedError, match="no reset method") as info:
            dev.reset()
        assert info.value.errno == errno.EINVAL
        with pytest.raises(IoctlError) as err:
            dev.hot_reset_info()  # the root bus cannot be reset
        assert err.value.errno == errno.ENODEV


def test_device_opened_by_cdev_path_knows_its_address(machine: FakeMachine) -> None:
    from pyvfio.core import sysfs

    path = sysfs.device_cdev_path(machine.edu, machine.backend)
    with IommuFd(backend=machine.backend) as fd, Device.open(path, backend=machine.backend) as dev:
        dev.bind(fd)
        assert dev.name == path and dev.bdf == machine.edu
        assert dev.reset_methods == []  # the root bus: nothing, as VFIO_DEVICE_FLAGS_RESET says
        assert not dev.info.can_reset


def test_hot_reset_group_form(machine: FakeMachine) -> None:
    for bdf in (E1000_A, E1000_B):
        bind_vfio(machine.backend, bdf)
    from pyvfio import Container

    with Container(backend=machine.backend) as c, \
            Group.for_device(E1000_A, backend=machine.backend) as g:
        g.set_container(c)
        c.set_iommu()
        with g.open_device(E1000_A) as a, g.open_device(E1000_B):
            info = a.hot_reset_info()
            assert [d.bdf for d in info] == [E1000_A, E1000_B]
            assert {d.id for d in info} == {g.id}
            counts = [machine.model(b).reset_count for b in (E1000_A, E1000_B)]
            a.hot_reset([g])
            assert [machine.model(b).reset_count for b in (E1000_A, E1000_B)] == \
                [n + 1 for n in counts]
            with pytest.raises(IoctlError) as err:
                a.hot_reset()  # a group-opened device must name the groups
            assert err.value.errno == errno.EINVAL


def test_hot_reset_cdev_form(machine: FakeMachine) -> None:
    for bdf in (E1000_A, E1000_B):
        bind_vfio(machine.backend, bdf)
    with IommuFd(backend=machine.backend) as fd, \
            Device.open(E1000_A, backend=machine.backend) as a, \
            Device.open(E1000_B, backend=machine.backend) as b:
        a.bind(fd)
        b.bind(fd)
        info = a.hot_reset_info()
        assert [(d.bdf, d.id) for d in info] == [(E1000_A, a.dev_id), (E1000_B, b.dev_id)]
        before = machine.model(E1000_B).reset_count
        a.hot_reset()
        assert machine.model(E1000_B).reset_count == before + 1
