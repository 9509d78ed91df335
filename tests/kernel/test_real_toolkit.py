"""The userspace-driver toolkit on the real kernel (Linux 7.3 guest, QEMU
edu and NVMe behind an emulated Intel IOMMU): regions and exact-width
MMIO, config space, interrupts, DMA memory, features, resets, and the two
example drivers.

Exact widths on real hardware: edu decodes an 8-byte access at 0x80 (DMA
source) but nothing at 0x84, and answers any non-4-byte access below 0x80
with all-ones.  So a 64-bit value written with ``write64`` and read back
whole with ``read64`` proves one 8-byte store and one 8-byte load: split
into dwords, the high half would be lost (write) or read as all-ones.
"""

from __future__ import annotations

import asyncio
import errno
import glob
import os
import threading
import time
from typing import Iterator

import guestpci
import pytest
from toolkit_env import load_example, open_cdev, open_group

import pyvfio
from pyvfio import DmaBuffer, DmaPool, IovaAllocator, MigrationState, map_buffer
from pyvfio.backend.kernel import KernelBackend
from pyvfio.core.features import Feature
from pyvfio.errors import UnsupportedError
from pyvfio.toolkit.dma import HUGE_2M

pytestmark = pytest.mark.kernel

EDU_IDENT = 0x010000ED
MSI_WINDOW = guestpci.msi_window()[0]
KB = KernelBackend()


@pytest.fixture(scope="module")
def examples() -> tuple[object, object]:
    return load_example("edu_dma"), load_example("nvme_identify")


def _block_device(bdf: str, timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        hits = glob.glob(f"/sys/bus/pci/devices/{bdf}/nvme/nvme*/nvme*n1")
        if hits and os.path.exists(f"/dev/{os.path.basename(hits[0])}"):
            return f"/dev/{os.path.basename(hits[0])}"
        if time.monotonic() > deadline:
            raise RuntimeError(f"no block device for {bdf}")
        time.sleep(0.05)


def _lba0(path: str, data: bytes | None = None) -> bytes:
    fd = os.open(path, os.O_RDWR | os.O_SYNC)
    try:
        if data is not None:
            os.pwrite(fd, data, 0)
            os.fsync(fd)
        return os.pread(fd, 512, 0)
    finally:
        os.close(fd)


@pytest.fixture
def nvme() -> Iterator[tuple[str, bytes]]:
    """The NVMe controller with a pattern in LBA 0 (written by the kernel's
    nvme driver), moved to vfio-pci for the test and given back after."""
    bdf = guestpci.find_one(*guestpci.NVME)
    if guestpci.device_info(bdf).driver != "nvme":
        guestpci.bind_driver(bdf, None)
    pattern = bytes((i * 31 + 7) & 0xFF for i in range(512))
    assert _lba0(_block_device(bdf), pattern) == pattern
    guestpci.bind_vfio(bdf)
    try:
        yield bdf, pattern
    finally:
        guestpci.unbind_vfio(bdf)
    # back on the kernel driver, the disk still holds what it held
    assert guestpci.device_info(bdf).driver == "nvme"
    assert _lba0(_block_device(bdf)) == pattern


# -- regions and MMIO ---------------------------------------------------------------------------
def test_regions_and_exact_width_mmio(edu: str) -> None:
    with open_cdev(KB, edu) as (dev, _ioas):
        regions = dev.regions
        bar0 = regions["BAR0"]
        assert regions[0] is bar0 and bar0.size == 1 << 20 and bar0.mmappable
        assert regions["CONFIG"].size == 256 and "VGA" not in regions
        dev.config.enable(memory=True)
        mapping = bar0.mmap()
        for io in (mapping, bar0):  # volatile loads/stores, then pread/pwrite
            assert io.read32(0) == EDU_IDENT
            assert io.read64(0) == (1 << 64) - 1  # edu: only 4-byte accesses below 0x80
            value = 0x0000_0ABC_1234_5000 + (0x100 if io is bar0 else 0)
            io.write64(0x80, value)
            assert io.read64(0x80) == value, "the 8-byte accesses were split"
            assert io.read32(0x80) == value & 0xFFFFFFFF
            assert io.read32(0x84) == 0xFFFFFFFF  # no register there
            io.write32(4, 0x0F0F0F0F)
            assert io.read32(4) == 0xF0F0F0F0
        with pytest.raises(pyvfio.InvalidArgumentError, match="not aligned"):
            mapping.read64(0x84)
    assert mapping.closed


def test_config_space(edu: str) -> None:
    with open_group(KB, edu) as (dev, _c):
        cfg = dev.config
        assert (cfg.vendor_id, cfg.device_id) == (0x1234, 0x11E8)
        assert cfg.class_code == 0x00FF00 and cfg.interrupt_pin == 1
        names = [c.name for c in cfg.capabilities()]
        assert "MSI" in names and cfg.msi is not None and cfg.msi.vectors == 1
        cfg.enable(memory=True, bus_master=True)
        assert cfg.memory_enabled and cfg.bus_master_enabled
        cfg.disable_bus_master()
        assert not cfg.bus_master_enabled
        saved = cfg.bar(0)
        cfg.write32(0x10, 0xFFFFFFFF)  # BAR sizing through vfio's virtual BAR
        assert cfg.bar(0) == 0xFFF00000
        cfg.write32(0x10, saved)
        assert cfg.bar(0) == saved


def test_nvme_config_and_irqs(nvme: tuple[str, bytes]) -> None:
    bdf, _pattern = nvme
    with open_cdev(KB, bdf) as (dev, _ioas):
        cfg = dev.config
        names = [c.name for c in cfg.capabilities()]
        assert {"MSIX", "EXP"} <= set(names) and cfg.size == 4096
        msix = cfg.msix
        assert msix is not None and msix.table_size == dev.irqs["MSIX"].count
        assert dev.regions[msix.table_bar].mmappable
        assert "ERR" in dev.irqs and "REQ" in dev.irqs  # PCI Express: ERR exists
        (err,) = dev.irqs["ERR"].enable()
        dev.irqs["ERR"].trigger()
        assert err.wait(5) == 1
        vectors = dev.irqs["MSIX"].enable(4)
        dev.irqs["MSIX"].trigger(0, values=[False, True, False, True])
        assert [v.poll() for v in vectors] == [0, 1, 0, 1]
        # Linux 7.3 on QEMU's VT-d allocates MSI-X vectors on demand
        # (VFIO_IRQ_INFO_NORESIZE clear): more can be added while enabled.
        msix = dev.irqs["MSIX"]
        assert not msix.noresize and msix.count == 65
        (late,) = msix.enable(1, start=10)
        msix.trigger(10)
        assert late.wait(5) == 1 and [v.vector for v in msix.vectors] == [0, 1, 2, 3, 10]


def test_every_vfio_pci_device_has_an_err_irq(edu: str) -> None:
    """Linux 7.3 reports the ERR index for every device, PCI Express or not
    (QEMU's edu is a conventional PCI function)."""
    with open_cdev(KB, edu) as (dev, _ioas):
        assert dev.config.pcie is None
        err = dev.irqs["ERR"]
        assert err.count == 1 and err.eventfd and err.noresize
        (vector,) = err.enable()
        err.trigger()
        assert vector.wait(5) == 1


# -- interrupts --------------------------------------------------------------------------------
def test_msi_intx_and_async(edu: str) -> None:
    with open_cdev(KB, edu) as (dev, _ioas):
        dev.config.enable(memory=True, bus_master=True)
        bar0 = dev.regions["BAR0"].mmap()
        irqs = dev.irqs
        # Linux 7.3 offers ERR on every device ("vfio: Remove the pcie check
        # for VFIO_PCI_ERR_IRQ_INDEX"); edu here is conventional PCI
        assert [irqs[i].name for i in irqs] == ["INTX", "MSI", "MSIX", "ERR", "REQ"]
        assert dev.config.pcie is None and irqs["ERR"].count == 1
        (err,) = irqs["ERR"].enable()
        irqs["ERR"].trigger()
        assert err.wait(5) == 1
        msi = irqs["MSI"]
        (vector,) = msi.enable()
        msi.trigger()  # loopback through the kernel
        assert vector.wait(5) == 1
        bar0.write32(0x60, 0x1)  # edu raises its MSI
        assert vector.wait(5) >= 1
        bar0.write32(0x64, 0x1)
        with pytest.raises(UnsupportedError) as info:
            msi.mask()
        assert info.value.errno == errno.ENOTTY

        async def raised() -> int:
            asyncio.get_running_loop().call_later(0.05, bar0.write32, 0x60, 0x2)
            return await vector.wait_async(timeout=5)

        assert asyncio.run(raised()) >= 1
        bar0.write32(0x64, 0x2)
        with pytest.raises(pyvfio.InvalidArgumentError, match="exclude each other"):
            irqs["INTX"].enable()
        msi.disable()
        assert vector.closed
        (line,) = irqs["INTX"].enable()
        bar0.write32(0x60, 0x4)
        assert line.wait(5) == 1
        bar0.write32(0x60, 0x8)  # automasked: no second interrupt
        time.sleep(0.1)
        assert line.poll() == 0
        bar0.write32(0x64, 0xC)
        irqs["INTX"].unmask()
        bar0.write32(0x60, 0x10)
        assert line.wait(5) == 1
        bar0.write32(0x64, 0x10)
        irqs["INTX"].unmask()


def test_req_when_the_host_wants_the_device_back(edu: str) -> None:
    dev_cm = open_cdev(KB, edu)
    dev, _ioas = dev_cm.__enter__()

    def write_unbind() -> None:
        fd = os.open("/sys/bus/pci/drivers/vfio-pci/unbind", os.O_WRONLY)
        try:
            os.write(fd, edu.encode())
        finally:
            os.close(fd)

    unbind = threading.Thread(target=write_unbind)
    try:
        (req,) = dev.irqs["REQ"].enable()
        unbind.start()  # blocks in the kernel until the device is released
        assert req.wait(10) >= 1
        assert unbind.is_alive()
    finally:
        dev_cm.__exit__(None, None, None)
        unbind.join(20)
    assert not unbind.is_alive() and guestpci.device_info(edu).driver is None
    guestpci.bind_vfio(edu)  # the fixture gives it back again


# -- DMA memory ----------------------------------------------------------------------------------
def _edu_copy(bar0: pyvfio.RegisterIO, src: int, dst: int, count: int, to_ram: bool) -> None:
    bar0.write64(0x80, src)
    bar0.write64(0x88, dst)
    bar0.write64(0x90, count)
    bar0.write64(0x98, 1 | (2 if to_ram else 0))
    deadline = time.monotonic() + 5
    while bar0.read64(0x98) & 1:
        assert time.monotonic() < deadline, "edu DMA did not complete"
        time.sleep(0.001)


def test_dma_pool_memfd_and_allocator(edu: str) -> None:
    with open_cdev(KB, edu) as (dev, ioas):
        dev.config.enable(memory=True, bus_master=True)
        bar0 = dev.regions["BAR0"].mmap()
        iovas = IovaAllocator.for_ioas(ioas, limit=1 << 28)
        assert not any(MSI_WINDOW in r for r in IovaAllocator.for_ioas(ioas).free_ranges())
        with DmaPool.create(ioas, 0x10000, allocator=iovas) as pool:
            src = pool.alloc(256)
            dst = pool.alloc(4096, align=4096)
            src.write(bytes(range(256)))
            _edu_copy(bar0, src.iova, 0x40000, 256, to_ram=False)
            _edu_copy(bar0, 0x40000, dst.iova + 16, 256, to_ram=True)
            assert dst.read(16, 256) == bytes(range(256))
        with DmaBuffer(0x2000, memfd=True) as buf:
            buf[0:11] = b"memfd bytes"
            iova = iovas.alloc(buf.length)
            mapping = ioas.map_file(buf.fd, buf.length, iova=iova)
            _edu_copy(bar0, iova, 0x40000, 11, to_ram=False)
            _edu_copy(bar0, 0x40000, iova + 0x1000, 11, to_ram=True)
            assert bytes(buf[0x1000:0x100B]) == b"memfd bytes"
            mapping.close()


def test_hugetlb_buffer_dma(edu: str) -> None:
    knob = "/proc/sys/vm/nr_hugepages"
    if not os.path.exists(knob):
        pytest.skip(f"the guest kernel has no hugetlbfs ({knob} is missing: CONFIG_HUGETLBFS "
                    "is off in the arm64 guest's kernel)")
    with open(knob) as f:
        before = int(f.read())
    with open(knob, "w") as f:
        f.write(str(before + 2))
    try:
        with open_group(KB, edu) as (dev, container), \
                DmaBuffer(HUGE_2M, page_size=HUGE_2M) as buf:
            assert buf.hugetlb and buf.address % HUGE_2M == 0
            dev.config.enable(memory=True, bus_master=True)
            mapping = map_buffer(container, buf, 0x400000)
            buf[0x1F0000:0x1F0008] = b"hugepage"
            bar0 = dev.regions["BAR0"]  # the pread/pwrite path
            _edu_copy(bar0, 0x5F0000, 0x40000, 8, to_ram=False)
            _edu_copy(bar0, 0x40000, 0x400010, 8, to_ram=True)
            assert bytes(buf[0x10:0x18]) == b"hugepage"
            mapping.close()
    finally:
        with open(knob, "w") as f:
            f.write(str(before))
    with open(knob, "w") as f:
        f.write("0")
    try:
        with pytest.raises(UnsupportedError, match="reserve some"):
            DmaBuffer(HUGE_2M, page_size=HUGE_2M)
    finally:
        with open(knob, "w") as f:
            f.write(str(before))


# -- features and resets ---------------------------------------------------------------------------
def test_features(edu: str) -> None:
    with open_cdev(KB, edu) as (dev, _ioas):
        f = dev.features
        assert f.probe(Feature.LOW_POWER_ENTRY, set=True)
        assert not f.probe(Feature.LOW_POWER_ENTRY, get=True)
        assert not f.probe(Feature.MIGRATION, get=True)
        for call in (f.migration_flags, lambda: f.set_migration_state(MigrationState.STOP),
                     lambda: f.dma_logging_start([(0x100000, 0x1000)]),
                     lambda: f.set_bus_master(True)):
            with pytest.raises(UnsupportedError) as info:
                call()
            assert info.value.errno == errno.ENOTTY
        f.low_power_entry()
        f.low_power_exit()
        assert dev.regions["BAR0"].read32(0) == EDU_IDENT


def test_resets(edu: str) -> None:
    with open_group(KB, edu) as (dev, _c):
        with open(f"/sys/bus/pci/devices/{edu}/reset_method") as f:
            methods = f.read().split()
        assert dev.reset_methods == methods and dev.bdf == edu
        if dev.info.can_reset:
            dev.config.enable(memory=True)
            dev.reset()
            assert dev.config.memory_enabled and dev.regions["BAR0"].read32(0) == EDU_IDENT
        info = dev.hot_reset_info()
        assert [d.bdf for d in info] == [edu]
        assert dev.group is not None and info[0].id == dev.group.id
        dev.hot_reset([dev.group])
        assert dev.regions["BAR0"].read32(0) == EDU_IDENT
    with open_cdev(KB, edu) as (dev, _ioas):
        info = dev.hot_reset_info()
        assert [(d.bdf, d.id) for d in info] == [(edu, dev.dev_id)]
        dev.hot_reset()  # cdev form: every affected device is bound to this iommufd
        assert dev.regions["BAR0"].read32(0) == EDU_IDENT


# -- the example drivers ------------------------------------------------------------------------------
def test_edu_example(edu: str, examples: tuple[object, object],
                     capsys: pytest.CaptureFixture[str]) -> None:
    edu_dma, _ = examples
    for legacy, intx in ((False, False), (True, True)):
        result = edu_dma.run(edu, KB, legacy=legacy, intx=intx)  # type: ignore[attr-defined]
        assert result.ok and result.interrupts == 7 and result.dma_iova < 1 << 28
    assert edu_dma.main(["--bdf", edu]) == 0  # type: ignore[attr-defined]
    with capsys.disabled():
        print("\n" + capsys.readouterr().out)


def test_nvme_example(nvme: tuple[str, bytes], examples: tuple[object, object],
                      capsys: pytest.CaptureFixture[str]) -> None:
    bdf, pattern = nvme
    _, nvme_identify = examples
    result = nvme_identify.run(bdf, KB)  # type: ignore[attr-defined]
    assert (result.model, result.serial) == ("QEMU NVMe Ctrl", "pyvfio0")
    assert result.block_size == 512 and result.namespace_blocks == (16 << 20) // 512
    assert result.lba0 == pattern, "LBA 0 is what the kernel's nvme driver wrote there"
    assert result.interrupts >= 5
    polled = nvme_identify.run(bdf, KB, legacy=True, poll=True)  # type: ignore[attr-defined]
    assert polled.lba0 == pattern and polled.interrupts == 0
    assert nvme_identify.main(["--bdf", bdf]) == 0  # type: ignore[attr-defined]
    with capsys.disabled():
        print("\n" + capsys.readouterr().out)


def test_dirty_tracking_example(edu: str, capsys: pytest.CaptureFixture[str]) -> None:
    """QEMU's VT-d reports no dirty tracking, so the example takes the
    type1 container, whose bitmap marks every pinned page dirty
    (vfio_iommu_type1 cannot see DMA writes of a vfio-pci device)."""
    dirty_tracking = load_example("dirty_tracking")
    with pyvfio.IommuFd() as iommufd, pyvfio.Device.open(edu) as dev:
        dev.bind(iommufd)
        assert not iommufd.hw_info(dev).dirty_tracking
    result = dirty_tracking.run(edu, KB)
    everything = list(range(dirty_tracking.PAGES))
    assert result.method == "type1 container"
    assert result.before == result.after == result.cleared == everything
    assert dirty_tracking.main(["--bdf", edu]) == 0
    with capsys.disabled():
        print("\n" + capsys.readouterr().out)


def test_migration_probe_example(edu: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Plain vfio-pci on a device without SR-IOV: the low-power features only."""
    migration_probe = load_example("migration_probe")
    result = migration_probe.run(edu, KB)
    assert result.migration is None
    assert {"LOW_POWER_ENTRY", "LOW_POWER_ENTRY_WITH_WAKEUP", "LOW_POWER_EXIT"} <= \
        set(result.supported)
    assert "MIGRATION" not in result.supported and "PCI_VF_TOKEN" not in result.supported
    with capsys.disabled():
        print("\n" + capsys.readouterr().out)
