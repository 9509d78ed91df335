"""Live migration through pyvfio's public API, on the fake kernel.

The edu device of two fake machines is declared migratable
(``model_migration``), so the fake's vfio-pci serves the migration
features for it the way a variant driver does on Linux.  A VMM-like
sequence moves the device's state from one machine to the other --
pre-copy while the device runs, stop-copy, resume -- and the destination
edu then shows the source's registers and DMA buffer; DMA logging reports
the pages the edu DMA engine wrote."""

from __future__ import annotations

import contextlib
import copy
import errno
from typing import Any, Iterator

import pytest
from toolkit_env import bind_vfio, load_example, open_cdev, open_group

import pyvfio
from pyvfio import DmaBuffer, IovaAllocator, MigrationState
from pyvfio.core.features import Feature, MigrationFlags
from pyvfio.errors import IoctlError, UnsupportedError
from pyvfio.fake import System
from pyvfio.fake.machine.topology import load

edu_dma = load_example("edu_dma")
migration_probe = load_example("migration_probe")

EDU = "0000:00:02.0"
PAGE = 4096


def machine(migration: Any = None) -> System:
    """The default fake machine, its edu migratable, on vfio-pci."""
    topo = copy.deepcopy(load("default"))
    for dev in topo["devices"]:
        if dev["bdf"] == EDU:
            dev["model_migration"] = migration if migration is not None else {
                "flags": ["STOP_COPY", "P2P", "PRE_COPY"], "dma_logging": True}
    system = System(topo)
    bind_vfio(system.backend, EDU)
    return system


@contextlib.contextmanager
def opened(system: System, legacy: bool) -> Iterator[tuple[pyvfio.Device, Any]]:
    opener = open_group if legacy else open_cdev
    with opener(system.backend, EDU) as (dev, space):
        yield dev, space
    assert not system.backend.open_files


@contextlib.contextmanager
def mapped(dev: pyvfio.Device, space: Any, size: int) -> Iterator[tuple[DmaBuffer, int]]:
    """A DMA buffer mapped for the device: (buffer, IOVA)."""
    iovas = IovaAllocator.for_space(space, limit=edu_dma.DMA_LIMIT)
    with DmaBuffer(size, backend=dev.backend) as buf:
        mapping = pyvfio.map_buffer(space, buf, allocator=iovas)
        try:
            yield buf, mapping.iova
        finally:
            mapping.close()


@pytest.mark.parametrize("dst_legacy", [False, True], ids=["to-cdev", "to-group"])
def test_migrate_edu_between_machines(dst_legacy: bool) -> None:
    src_system, dst_system = machine(), machine()
    pattern = bytes((i * 13 + 5) & 0xFF for i in range(PAGE))
    with opened(src_system, legacy=False) as (src, src_space):
        driver = edu_dma.EduDriver(src, src_space)
        assert driver.liveness(0x11223344)
        assert driver.factorial(7) == 5040
        with mapped(src, src_space, PAGE) as (buf, iova):
            buf[0:PAGE] = pattern
            driver.dma(iova, edu_dma.DMA_BUFFER, PAGE, to_ram=False)  # RAM -> the edu buffer
        f = src.features
        assert f.migration_flags() == MigrationFlags.STOP_COPY | MigrationFlags.P2P \
            | MigrationFlags.PRE_COPY
        assert f.migration_state() is MigrationState.RUNNING
        estimate = f.migration_data_size()
        # pre-copy while the device runs
        data = f.set_migration_state(MigrationState.PRE_COPY)
        assert data is not None and data.state is MigrationState.PRE_COPY
        info = data.precopy_info()
        assert info.initial_bytes > PAGE and info.dirty_bytes == 0 and not info.reinit
        stream = bytearray()
        while data.precopy_info().initial_bytes:
            stream += data.read(1024)
        with pytest.raises(IoctlError) as nothing:
            data.read()  # the temporary end of the pre-copy data
        assert nothing.value.errno == errno.ENOMSG
        driver.regs.LIVENESS.write(0xCAFE)  # the device is still running: its state changes
        info = data.precopy_info()
        assert info.initial_bytes == 0 and info.dirty_bytes > 0
        stream += data.read(info.dirty_bytes)
        # stop-copy: the same data file carries the rest
        assert f.set_migration_state(MigrationState.STOP_COPY) is None
        assert f.migration_state() is MigrationState.STOP_COPY
        assert driver.regs.LIVENESS.read() == 0xFFFFFFFF  # stopped: registers do not answer
        stream += data.read_all()
        assert len(stream) > estimate  # pre-copy data comes on top of the final state
        data.close()
        assert f.set_migration_state(MigrationState.STOP) is None
        driver.close()
    # the destination
    with opened(dst_system, legacy=dst_legacy) as (dst, dst_space):
        g = dst.features
        resume = g.set_migration_state(MigrationState.RESUMING)
        assert resume is not None and g.migration_state() is MigrationState.RESUMING
        for pos in range(0, len(stream), 3000):  # segmentation is free
            assert resume.write(stream[pos:pos + 3000]) == len(stream[pos:pos + 3000])
        resume.close()
        assert g.set_migration_state(MigrationState.STOP) is None  # loads the state
        assert g.set_migration_state(MigrationState.RUNNING) is None
        driver = edu_dma.EduDriver(dst, dst_space)
        assert driver.regs.LIVENESS.read() == ~0xCAFE & 0xFFFFFFFF
        assert driver.regs.FACTORIAL.read() == 5040
        with mapped(dst, dst_space, PAGE) as (buf, iova):
            driver.dma(edu_dma.DMA_BUFFER, iova, PAGE, to_ram=True)  # the edu buffer -> RAM
            assert bytes(buf[0:PAGE]) == pattern
        assert driver.liveness(0x5A5A5A5A) and driver.factorial(5) == 120  # and it works on
        driver.close()


def test_stop_copy_only_device_and_errors() -> None:
    system = machine({"flags": ["STOP_COPY"]})
    with opened(system, legacy=False) as (dev, _space):
        f = dev.features
        assert f.migration_flags() == MigrationFlags.STOP_COPY
        assert f.supported() == {Feature.MIGRATION: "get", Feature.MIG_DEVICE_STATE: "get/set",
                                 Feature.MIG_DATA_SIZE: "get", Feature.LOW_POWER_ENTRY: "set",
                                 Feature.LOW_POWER_ENTRY_WITH_WAKEUP: "set",
                                 Feature.LOW_POWER_EXIT: "set"}
        for state in (MigrationState.PRE_COPY, MigrationState.RUNNING_P2P, MigrationState.ERROR):
            with pytest.raises(IoctlError) as info:
                f.set_migration_state(state)
            assert info.value.errno == errno.EINVAL
        with pytest.raises(UnsupportedError):
            f.dma_logging_start([(0x100000, PAGE)])  # no DMA logging on this device
        saved = f.set_migration_state(MigrationState.STOP_COPY)  # RUNNING -> STOP -> STOP_COPY
        assert saved is not None
        blob = saved.read_all()
        assert len(blob) == f.migration_data_size()
        resume = f.set_migration_state(MigrationState.RESUMING)  # STOP_COPY -> STOP -> RESUMING
        assert resume is not None
        with pytest.raises(IoctlError) as gone:
            saved.read()  # leaving STOP_COPY ended that session
        assert gone.value.errno == errno.ENODEV
        resume.write(blob[:-10])
        with pytest.raises(IoctlError) as bad:
            f.set_migration_state(MigrationState.RUNNING)  # an incomplete stream
        assert bad.value.errno == errno.EINVAL
        assert f.migration_state() is MigrationState.RESUMING
        resume.write(blob[-10:])
        assert f.set_migration_state(MigrationState.RUNNING) is None
    # data files are the device's resources: closed with it
    assert saved.closed and resume.closed


@pytest.mark.parametrize("legacy", [False, True], ids=["cdev", "group"])
def test_dma_logging_sees_the_edu_dma_engine(legacy: bool) -> None:
    system = machine()
    with opened(system, legacy=legacy) as (dev, space):
        driver = edu_dma.EduDriver(dev, space)
        f = dev.features
        with mapped(dev, space, 16 * PAGE) as (_buf, iova):
            f.dma_logging_start([(iova, 16 * PAGE)], page_size=PAGE)
            for page in (2, 3, 11):
                driver.dma(edu_dma.DMA_BUFFER, iova + page * PAGE + 0x100, 64, to_ram=True)
            driver.dma(iova + 5 * PAGE, edu_dma.DMA_BUFFER, 64, to_ram=False)  # a read: not logged
            bitmap = f.dma_logging_report(iova, 16 * PAGE)
            assert [i for i in range(16) if bitmap[i // 8] >> (i % 8) & 1] == [2, 3, 11]
            assert f.dma_logging_report(iova, 16 * PAGE) == bytes(2)  # the report cleared it
            driver.dma(edu_dma.DMA_BUFFER, iova, 64, to_ram=True)
            f.dma_logging_stop()
            with pytest.raises(IoctlError) as info:
                f.dma_logging_report(iova, 16 * PAGE)  # not logging any more
            assert info.value.errno == errno.EINVAL
        driver.close()


def test_migration_probe_example_on_a_migratable_fake() -> None:
    system = machine()
    lines: list[str] = []
    result = migration_probe.run(EDU, system.backend, out=lines.append)
    assert result.migration == MigrationFlags.STOP_COPY | MigrationFlags.P2P | MigrationFlags.PRE_COPY
    assert "MIG_DEVICE_STATE" in result.supported and "DMA_LOGGING_REPORT" in result.supported
    assert result.saved_bytes is not None and result.saved_bytes > PAGE
    assert result.final_state is MigrationState.RUNNING
    assert not system.backend.open_files
