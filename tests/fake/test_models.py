"""Device models of the fake kernel, driven directly (no vfio in between):
the PCI config space and capabilities of :class:`DeviceModel`, interrupts
as the hardware signals them, QEMU's edu device and the NVMe controller.

DMA goes through :class:`Bus`, a stand-in for the System's PciDevice with a
flat "IOMMU": IOVAs ``[base, base + size)`` map a bytearray, anything else
faults (recorded, like the real PciDevice does)."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from pyvfio.fake import models
from pyvfio.fake.core import FaultRecord, IommuFault
from pyvfio.fake.machine.dma import BusMasterDisabled, NotAttached
from pyvfio.fake.machine.pci import IRQ_MSI, IRQ_MSIX, Bar, DeviceModel
from pyvfio.fake.machine.pci_regs import (
    PCI_COMMAND,
    PCI_COMMAND_INTX_DISABLE,
    PCI_COMMAND_MASTER,
    PCI_COMMAND_MEMORY,
    PCI_STATUS,
    PCI_STATUS_INTERRUPT,
)
from pyvfio.fake.models.edu import EduDevice
from pyvfio.fake.models.nvme import NvmeController

IOVA = 0x100000


class Bus:
    """Stand-in PciDevice: DMA into ``ram`` at IOVA ``base``."""

    def __init__(self, size: int = 1 << 20, base: int = IOVA) -> None:
        self.bdf = "0000:00:02.0"
        self.ram = bytearray(size)
        self.base = base
        self.faults: list[FaultRecord] = []
        self.bar_addresses: dict[int, int] = {}

    def _off(self, iova: int, n: int, write: bool) -> int:
        if iova < self.base or iova + n > self.base + len(self.ram):
            self.faults.append(FaultRecord(self.bdf, iova, n, write, "not mapped"))
            raise IommuFault(iova, n, write, "not mapped")
        return iova - self.base

    def dma_read(self, iova: int, n: int, *, pasid: int | None = None) -> bytes:
        off = self._off(iova, n, False)
        return bytes(self.ram[off:off + n])

    def dma_write(self, iova: int, data: bytes, *, pasid: int | None = None) -> None:
        off = self._off(iova, len(data), True)
        self.ram[off:off + len(data)] = data

    def at(self, iova: int, n: int) -> bytes:
        return bytes(self.ram[iova - self.base:iova - self.base + n])

    def put(self, iova: int, data: bytes) -> None:
        self.ram[iova - self.base:iova - self.base + len(data)] = data


class Sink:
    """Records what reaches the interrupt controller."""

    def __init__(self) -> None:
        self.messages: list[tuple[int, int]] = []
        self.levels: list[bool] = []

    def deliver(self, index: int, vector: int) -> None:
        self.messages.append((index, vector))

    def intx(self, level: bool) -> None:
        self.levels.append(level)


def cfg16(m: DeviceModel, off: int) -> int:
    return int.from_bytes(m.config_read(off, 2), "little")


def cfg32(m: DeviceModel, off: int) -> int:
    return int.from_bytes(m.config_read(off, 4), "little")


def wcfg(m: DeviceModel, off: int, value: int, width: int) -> None:
    m.config_write(off, value.to_bytes(width, "little"))


def attach(m: DeviceModel, bus: Bus | None = None) -> tuple[Bus, Sink]:
    bus = bus or Bus()
    sink = Sink()
    m.attach(bus)  # type: ignore[arg-type]
    m.irq_sink = sink
    wcfg(m, PCI_COMMAND, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER, 2)
    return bus, sink


# -- the registry -------------------------------------------------------------------------
def test_registry_defaults() -> None:
    edu = models.create({"model": "edu"})
    assert isinstance(edu, EduDevice)
    assert (edu.vendor_id, edu.device_id, edu.class_code, edu.revision) == (0x1234, 0x11E8, 0x00FF00, 0x10)
    assert edu.bars_spec == [{"index": 0, "size": 1 << 20, "type": "mem32", "prefetchable": False}]
    assert edu.config_size == 256
    nvme = models.create({"model": "nvme"})
    assert isinstance(nvme, NvmeController)
    assert (nvme.vendor_id, nvme.device_id, nvme.class_code) == (0x1B36, 0x0010, 0x010802)
    assert nvme.config_size == 4096
    assert nvme.bars_spec[0]["type"] == "mem64"
    e1000e = models.create({"model": "e1000e"})
    assert (e1000e.vendor_id, e1000e.device_id, e1000e.class_code) == (0x8086, 0x10D3, 0x020000)
    assert [b["type"] for b in e1000e.bars_spec] == ["mem32", "mem32", "io", "mem32"]
    assert models.create({"model": "e1000"}).config_size == 256
    bridge = models.create({"model": "pcie-pci-bridge"})
    assert bridge.config[0x0E] == 1 and bridge.bars == {}
    assert set(models.available()) >= {"generic", "edu", "nvme", "e1000e", "e1000", "pcie-pci-bridge"}
    with pytest.raises(KeyError):
        models.create({"model": "no-such-device"})


def test_spec_overrides_identity_and_bars() -> None:
    m = models.create({"model": "generic", "vendor": "0x8086", "device": 0x1234, "class": 0x020000,
                       "subsystem_vendor": 0x1111, "subsystem_device": 0x2222, "revision": 7,
                       "bars": [{"index": 2, "size": 0x4000, "type": "mem64", "prefetchable": True}],
                       "reset_methods": ["bus"]})
    assert cfg16(m, 0) == 0x8086 and cfg16(m, 2) == 0x1234
    assert m.config[8] == 7 and int.from_bytes(m.config[9:12], "little") == 0x020000
    assert cfg16(m, 0x2C) == 0x1111 and cfg16(m, 0x2E) == 0x2222
    assert cfg32(m, 0x18) == 0x0C  # 64-bit prefetchable memory
    assert m.reset_methods == ["bus"] and not m.has_flr
    with pytest.raises(ValueError):
        models.create({"model": "generic", "bars": [{"index": 0, "size": 1000, "type": "mem32"}]})


# -- config space -------------------------------------------------------------------------
def test_bar_sizing() -> None:
    m = models.create({"model": "generic", "bars": [
        {"index": 0, "size": 0x1000, "type": "mem32"},
        {"index": 1, "size": 1 << 33, "type": "mem64", "prefetchable": True},
        {"index": 3, "size": 0x20, "type": "io"},
    ]})
    for off in (0x10, 0x14, 0x18, 0x1C):
        wcfg(m, off, 0xFFFFFFFF, 4)
    assert cfg32(m, 0x10) == 0xFFFFF000
    assert cfg32(m, 0x14) == 0x0000000C  # 8 GiB: no low address bits writable
    assert cfg32(m, 0x18) == 0xFFFFFFFE
    assert cfg32(m, 0x1C) == 0xFFFFFFE1
    assert cfg32(m, 0x20) == 0  # unimplemented
    wcfg(m, 0x10, 0xFEBF1234, 4)
    assert cfg32(m, 0x10) == 0xFEBF1000


def test_read_only_and_w1c_registers() -> None:
    m = models.create({"model": "generic", "vendor": 0x1234, "device": 0x5678})
    wcfg(m, 0, 0xFFFFFFFF, 4)
    assert cfg32(m, 0) == 0x56781234
    m.config[PCI_STATUS + 1] |= 0x20  # received master abort
    wcfg(m, PCI_STATUS, 0x2000 | 0x0010, 2)  # W1C the abort; CAP_LIST is RO
    assert cfg16(m, PCI_STATUS) & 0x2000 == 0
    assert cfg16(m, PCI_STATUS) & 0x0010
    assert m.config_read(0x1000 - 2, 4) == m.config_read(0xFFE, 2) + b"\xff\xff"


def test_capability_chain() -> None:
    m = models.create({"model": "generic"})
    ids = [cap for cap, _ in m.capabilities()]
    assert ids == [0x01, 0x05, 0x10]  # PM, MSI, Express
    assert cfg16(m, PCI_STATUS) & 0x10 and m.config[0x34] == m.capabilities()[0][1]
    assert m.find_capability(0x10) == m.pcie_offset
    assert m.find_capability(0x11) is None
    aer = m.add_aer_capability()
    assert m.extended_capabilities() == [(0x0001, 2, aer)]


def test_flr_through_devctl_resets_the_function() -> None:
    m = models.create({"model": "generic"})
    assert m.has_flr and m.reset_methods[0] == "flr"
    wcfg(m, PCI_COMMAND, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER, 2)
    m.set_bar_address(0, 0xFE000000)
    assert m.pcie_offset is not None
    wcfg(m, m.pcie_offset + 8, 0x8000, 2)
    assert m.reset_count == 1
    assert cfg16(m, PCI_COMMAND) == 0  # back to power-on
    assert cfg32(m, 0x10) == 0xFE000000  # the assigned address is part of the image
    assert cfg16(m, m.pcie_offset + 8) & 0x8000 == 0


def test_pm_d3hot_to_d0_without_no_soft_reset_resets() -> None:
    m = models.create({"model": "generic", "reset_methods": ["pm", "bus"]})
    assert m.pm_offset is not None
    assert "pm" in m.reset_methods
    wcfg(m, m.pm_offset + 4, 3, 2)
    assert m.power_state == 3 and m.reset_count == 0
    wcfg(m, m.pm_offset + 4, 0, 2)
    assert m.power_state == 0 and m.reset_count == 1


def test_ram_bar_and_register_hooks_see_exact_widths() -> None:
    calls: list[tuple[str, int, int]] = []

    class Regs(DeviceModel):
        vendor_id, device_id = 0x1234, 0xBEEF
        default_bars = (Bar(0, 0x1000), Bar(2, 0x1000, ram=True))

        def on_read(self, bar: int, offset: int, width: int) -> int:
            calls.append(("r", offset, width))
            return 0x1122334455667788

        def on_write(self, bar: int, offset: int, width: int, value: int) -> None:
            calls.append(("w", offset, width))

    m = Regs()
    for width in (1, 2, 4, 8):
        assert m.bar_read(0, 8, width) == 0x1122334455667788 & ((1 << (8 * width)) - 1)
        m.bar_write(0, 16, width, 1)
    assert calls == [("r", 8, 1), ("w", 16, 1), ("r", 8, 2), ("w", 16, 2),
                     ("r", 8, 4), ("w", 16, 4), ("r", 8, 8), ("w", 16, 8)]
    m.bar_write(2, 0x10, 8, 0x0102030405060708)
    assert m.bar_read(2, 0x10, 4) == 0x05060708 and m.bar_read(2, 0x17, 1) == 0x01
    with pytest.raises(ValueError):
        m.bar_read(0, 0x1000, 4)
    with pytest.raises(ValueError):
        m.bar_read(1, 0, 4)


def test_dma_needs_bus_master_and_a_bus() -> None:
    m = models.create({"model": "generic"})
    with pytest.raises(BusMasterDisabled):
        m.dma_read(IOVA, 4)
    wcfg(m, PCI_COMMAND, PCI_COMMAND_MASTER, 2)
    with pytest.raises(NotAttached):
        m.dma_read(IOVA, 4)
    bus, _ = attach(m)
    bus.put(IOVA, b"abcd")
    assert m.dma_read(IOVA, 4) == b"abcd"
    with pytest.raises(IommuFault):
        m.dma_write(0x1000, b"x")
    assert bus.faults[-1].iova == 0x1000 and bus.faults[-1].write


# -- interrupts -----------------------------------------------------------------------------
def test_intx_level_status_and_disable() -> None:
    m = models.create({"model": "generic"})
    _, sink = attach(m)
    m.set_intx(True)
    assert sink.levels == [True] and cfg16(m, PCI_STATUS) & PCI_STATUS_INTERRUPT
    wcfg(m, PCI_COMMAND, PCI_COMMAND_MEMORY | PCI_COMMAND_INTX_DISABLE, 2)
    assert sink.levels == [True, False]
    assert cfg16(m, PCI_STATUS) & PCI_STATUS_INTERRUPT  # still pending inside
    wcfg(m, PCI_COMMAND, PCI_COMMAND_MEMORY, 2)
    assert sink.levels == [True, False, True]
    m.set_intx(False)
    assert sink.levels[-1] is False and not cfg16(m, PCI_STATUS) & PCI_STATUS_INTERRUPT


def test_msi_enable_vectors_and_masking() -> None:
    m = models.create({"model": "generic", "model_msi_vectors": 4})
    _, sink = attach(m)
    assert m.msi is not None
    m.msi.maskable = False
    assert not m.raise_irq(IRQ_MSI, 0)  # MSI disabled: nothing sent
    wcfg(m, m.msi.control, 0x0001 | (1 << 4), 2)  # enable, 2 vectors
    assert m.msi_enabled_vectors == 2
    assert m.raise_irq(IRQ_MSI, 1) and not m.raise_irq(IRQ_MSI, 2)
    assert sink.messages == [(IRQ_MSI, 1)]

    pm = models.create({"model": "generic"})
    pm.msi = None
    off = pm.add_msi_capability(2, is64=True, per_vector_mask=True)
    _, psink = attach(pm)
    assert pm.msi is not None and pm.msi.offset == off
    wcfg(pm, pm.msi.control, 0x0001 | (1 << 4), 2)
    wcfg(pm, pm.msi.mask_offset, 0b10, 4)
    assert not pm.raise_irq(IRQ_MSI, 1)
    assert cfg32(pm, pm.msi.pending_offset) == 0b10
    wcfg(pm, pm.msi.mask_offset, 0, 4)  # unmask: the pending message goes out
    assert psink.messages == [(IRQ_MSI, 1)] and cfg32(pm, pm.msi.pending_offset) == 0


def test_msix_table_masks_and_pba() -> None:
    m = models.create({"model": "generic", "model_msix_vectors": 8})
    _, sink = attach(m)
    msix = m.msix
    assert msix is not None
    ctrl = msix.offset + 2
    assert cfg16(m, ctrl) & 0x7FF == 7
    wcfg(m, ctrl, 0x8000, 2)  # enable
    assert not m.raise_irq(IRQ_MSIX, 3)  # vectors are masked at reset
    pba = msix.pba_offset
    assert m.bar_read(msix.pba_bar, pba, 8) == 1 << 3
    vc = msix.table_offset + 3 * 16 + 12
    assert m.bar_read(msix.table_bar, vc, 4) == 1
    m.bar_write(msix.table_bar, vc, 4, 0)  # unmask: pending message delivered
    assert sink.messages == [(IRQ_MSIX, 3)] and m.bar_read(msix.pba_bar, pba, 8) == 0
    wcfg(m, ctrl, 0xC000, 2)  # function mask
    assert not m.raise_irq(IRQ_MSIX, 3)
    wcfg(m, ctrl, 0x8000, 2)
    assert sink.messages == [(IRQ_MSIX, 3), (IRQ_MSIX, 3)]
    assert m.notify(3) and sink.messages[-1] == (IRQ_MSIX, 3)


# -- QEMU's edu -------------------------------------------------------------------------------
def edu(**spec: Any) -> tuple[EduDevice, Bus, Sink]:
    m = models.create({"model": "edu", **spec})
    assert isinstance(m, EduDevice)
    bus, sink = attach(m)
    return m, bus, sink


def test_edu_identity_registers_and_widths() -> None:
    m, _, _ = edu()
    assert m.bar_read(0, 0x00, 4) == 0x010000ED
    m.bar_write(0, 0x04, 4, 0x12345678)
    assert m.bar_read(0, 0x04, 4) == 0xEDCBA987
    assert m.bar_read(0, 0x00, 2) == 0xFFFF  # only 4-byte accesses below 0x80
    assert m.bar_read(0, 0x00, 8) == 0xFFFFFFFFFFFFFFFF
    m.bar_write(0, 0x04, 2, 0)
    assert m.bar_read(0, 0x04, 4) == 0xEDCBA987
    m.bar_write(0, 0x80, 8, 0x1122334455667788)
    assert m.bar_read(0, 0x80, 8) == 0x1122334455667788
    assert m.bar_read(0, 0x80, 4) == 0x55667788
    assert m.bar_read(0, 0x84, 4) == 0xFFFFFFFF  # not a register
    m.bar_write(0, 0x80, 4, 0x1000)  # a 4-byte write replaces the whole value
    assert m.bar_read(0, 0x80, 8) == 0x1000
    assert m.bar_read(0, 0x40000, 4) == 0xFFFFFFFF  # the DMA buffer is not MMIO
    assert m.mmio_log[:3] == [(0, 4, False), (4, 4, True), (4, 4, False)]


def test_edu_factorial_and_irq_intx() -> None:
    m, _, sink = edu()
    m.bar_write(0, 0x20, 4, 0x80)  # IRQ after factorial
    m.bar_write(0, 0x08, 4, 5)
    assert m.bar_read(0, 0x08, 4) == 120
    assert m.bar_read(0, 0x20, 4) == 0x80
    assert m.bar_read(0, 0x24, 4) == 0x1 and sink.levels == [True]
    m.bar_write(0, 0x08, 4, 13)
    assert m.bar_read(0, 0x08, 4) == 6227020800 & 0xFFFFFFFF  # 32-bit wrap
    m.bar_write(0, 0x64, 4, 0x1)
    assert m.bar_read(0, 0x24, 4) == 0 and sink.levels == [True, False]
    m.bar_write(0, 0x60, 4, 0x40)
    assert m.bar_read(0, 0x24, 4) == 0x40 and sink.levels[-1] is True


def test_edu_busy_bit_with_latency() -> None:
    m, _, sink = edu(model_fact_latency=3)
    m.bar_write(0, 0x20, 4, 0x80)
    m.bar_write(0, 0x08, 4, 4)
    assert m.bar_read(0, 0x20, 4) & 0x01  # still computing
    m.bar_write(0, 0x08, 4, 9)  # ignored while computing
    assert m.bar_read(0, 0x20, 4) & 0x01 == 0
    assert m.bar_read(0, 0x08, 4) == 24 and sink.levels == [True]


def test_edu_msi() -> None:
    m, _, sink = edu()
    assert m.msi is not None and m.msi.vectors == 1 and m.msi.is64 and not m.msi.maskable
    wcfg(m, m.msi.control, 0x0001, 2)
    m.bar_write(0, 0x60, 4, 1)
    m.bar_write(0, 0x60, 4, 2)
    assert sink.messages == [(IRQ_MSI, 0), (IRQ_MSI, 0)] and sink.levels == []
    m.bar_write(0, 0x64, 4, 3)
    assert sink.levels == []  # INTx is never touched with MSI on


def dma(m: EduDevice, src: int, dst: int, count: int, cmd: int) -> None:
    m.bar_write(0, 0x80, 8, src)
    m.bar_write(0, 0x88, 8, dst)
    m.bar_write(0, 0x90, 8, count)
    m.bar_write(0, 0x98, 8, cmd)


def test_edu_dma_round_trip_and_irq() -> None:
    m, bus, sink = edu()
    bus.put(IOVA, b"0123456789abcdef")
    dma(m, IOVA, 0x40000 + 8, 16, 0x1)  # RAM -> edu
    assert bytes(m.dma_buf[8:24]) == b"0123456789abcdef"
    dma(m, 0x40000 + 8, IOVA + 0x800, 16, 0x1 | 0x2 | 0x4)  # edu -> RAM, IRQ
    assert bus.at(IOVA + 0x800, 16) == b"0123456789abcdef"
    assert m.bar_read(0, 0x98, 4) == 0x6  # run bit cleared
    assert m.bar_read(0, 0x24, 4) == 0x100 and sink.levels == [True]


def test_edu_dma_address_mask_is_28_bits() -> None:
    m, bus, _ = edu()
    bus.put(IOVA, b"masked")
    dma(m, (1 << 32) | IOVA, 0x40000, 6, 0x1)
    assert bytes(m.dma_buf[:6]) == b"masked" and not bus.faults


def test_edu_blocked_dma_changes_nothing() -> None:
    m, bus, sink = edu()
    m.dma_buf[:4] = b"keep"
    dma(m, 0x5000, 0x40000, 4, 0x1 | 0x4)  # not mapped
    assert bytes(m.dma_buf[:4]) == b"keep" and m.dma_errors == 1
    assert bus.faults[-1].iova == 0x5000 and not bus.faults[-1].write
    assert m.bar_read(0, 0x98, 4) == 0x4 and m.bar_read(0, 0x24, 4) == 0x100  # still completes
    before = bytes(bus.ram)
    dma(m, 0x40000, 0x5000, 4, 0x3)
    assert bytes(bus.ram) == before and m.dma_errors == 2 and bus.faults[-1].write
    dma(m, IOVA, 0x40000 + 4090, 16, 0x1)  # beyond the 4 KiB buffer
    assert m.range_errors == 1


def test_edu_dma_registers_frozen_while_running() -> None:
    m, bus, _ = edu(model_dma_latency=3)
    bus.put(IOVA, b"late")
    dma(m, IOVA, 0x40000, 4, 0x1)
    assert m.bar_read(0, 0x98, 4) & 1  # still running
    m.bar_write(0, 0x80, 8, 0)  # ignored while running
    assert m.bar_read(0, 0x80, 8) == IOVA
    assert bytes(m.dma_buf[:4]) == b"late"
    m.bar_write(0, 0x98, 4, 0x2)  # no start bit: ignored
    assert m.bar_read(0, 0x98, 4) == 0x0


def test_edu_reset_keeps_registers_like_qemu() -> None:
    m, _, _ = edu()
    m.bar_write(0, 0x04, 4, 0)
    m.bar_write(0, 0x60, 4, 1)
    m.reset()
    assert m.bar_read(0, 0x04, 4) == 0xFFFFFFFF and m.bar_read(0, 0x24, 4) == 1
    assert cfg16(m, PCI_COMMAND) == 0 and not m.intx_asserted


# -- NVMe ---------------------------------------------------------------------------------------
ASQ, ACQ = IOVA, IOVA + 0x1000
DATA = IOVA + 0x10000


class Nvme:
    """A minimal driver for the model."""

    def __init__(self, msix: bool = False) -> None:
        m = models.create({"model": "nvme"})
        assert isinstance(m, NvmeController)
        self.m = m
        self.bus, self.sink = attach(m)
        if msix:
            assert m.msix is not None
            wcfg(m, m.msix.offset + 2, 0x8000, 2)
            for v in range(4):
                m.bar_write(0, 0x2000 + v * 16 + 12, 4, 0)
        self.tails = {0: 0}
        self.heads = {0: 0}
        self.phase = {0: 1}
        self.sizes = {0: 16}
        self.sq_base = {0: ASQ}
        self.cq_base = {0: ACQ}
        self.cid = 0
        m.bar_write(0, 0x24, 4, (15 << 16) | 15)
        m.bar_write(0, 0x28, 8, ASQ)
        m.bar_write(0, 0x30, 8, ACQ)
        m.bar_write(0, 0x14, 4, 1 | (6 << 16) | (4 << 20))

    def submit(self, qid: int, opcode: int, *, nsid: int = 0, prp1: int = 0, prp2: int = 0,
               cdw: tuple[int, ...] = ()) -> tuple[int, int]:
        self.cid += 1
        cmd = bytearray(64)
        cmd[0] = opcode
        cmd[2:4] = self.cid.to_bytes(2, "little")
        cmd[4:8] = nsid.to_bytes(4, "little")
        cmd[24:32] = prp1.to_bytes(8, "little")
        cmd[32:40] = prp2.to_bytes(8, "little")
        for i, value in enumerate(cdw):
            cmd[40 + 4 * i:44 + 4 * i] = value.to_bytes(4, "little")
        tail = self.tails[qid]
        self.bus.put(self.sq_base[qid] + tail * 64, bytes(cmd))
        self.tails[qid] = (tail + 1) % self.sizes[qid]
        self.m.bar_write(0, 0x1000 + 2 * qid * 4, 4, self.tails[qid])
        return self.reap(qid)

    def reap(self, qid: int) -> tuple[int, int]:
        head = self.heads[qid]
        entry = self.bus.at(self.cq_base[qid] + head * 16, 16)
        dw0, _, sqhd, sqid, cid, status = struct.unpack("<IIHHHH", entry)
        assert status & 1 == self.phase[qid], "no completion posted"
        assert cid == self.cid and sqid == qid
        head += 1
        if head == self.sizes[qid]:
            head = 0
            self.phase[qid] ^= 1
        self.heads[qid] = head
        self.m.bar_write(0, 0x1000 + (2 * qid + 1) * 4, 4, head)
        return status >> 1, dw0

    def create_io_queues(self, qid: int = 1, size: int = 8, vector: int = 0) -> None:
        cq, sq = IOVA + 0x2000 * (qid + 1), IOVA + 0x2000 * (qid + 1) + 0x1000
        assert self.submit(0, 0x05, prp1=cq, cdw=((size - 1) << 16 | qid, vector << 16 | 0b11)) == (0, 0)
        assert self.submit(0, 0x01, prp1=sq, cdw=((size - 1) << 16 | qid, qid << 16 | 1)) == (0, 0)
        self.tails[qid], self.heads[qid], self.phase[qid], self.sizes[qid] = 0, 0, 1, size
        self.sq_base[qid], self.cq_base[qid] = sq, cq


def test_nvme_enable_and_registers() -> None:
    d = Nvme()
    m = d.m
    cap = m.bar_read(0, 0, 8)
    assert cap & 0xFFFF == 0x7FF and (cap >> 37) & 1 and (cap >> 32) & 0xF == 0
    assert m.bar_read(0, 0x08, 4) == 0x00010400
    assert m.bar_read(0, 0x1C, 4) & 1  # RDY
    assert m.bar_read(0, 0x28, 8) == ASQ and m.bar_read(0, 0x2C, 4) == 0
    m.bar_write(0, 0x14, 4, 0)
    assert m.bar_read(0, 0x1C, 4) & 1 == 0


def test_nvme_enable_with_bad_admin_queue_fails() -> None:
    m = models.create({"model": "nvme"})
    attach(m)
    m.bar_write(0, 0x24, 4, 0)  # no admin queue sizes
    m.bar_write(0, 0x14, 4, 1)
    assert m.bar_read(0, 0x1C, 4) == 0x2  # CFS


def test_nvme_identify() -> None:
    d = Nvme()
    assert d.submit(0, 0x06, prp1=DATA, cdw=(1,)) == (0, 0)
    ctrl = d.bus.at(DATA, 4096)
    assert ctrl[0:2] == b"\x36\x1b" and ctrl[24:38] == b"QEMU NVMe Ctrl"
    assert ctrl[4:12] == b"deadbeef" and ctrl[512] == 0x66 and ctrl[513] == 0x44
    assert int.from_bytes(ctrl[516:520], "little") == 1
    assert d.submit(0, 0x06, nsid=1, prp1=DATA, cdw=(0,)) == (0, 0)
    ns = d.bus.at(DATA, 4096)
    assert int.from_bytes(ns[0:8], "little") == (4 << 20) // 512
    assert (int.from_bytes(ns[128:132], "little") >> 16) & 0xFF == 9
    assert d.submit(0, 0x06, prp1=DATA, cdw=(2,)) == (0, 0)
    assert d.bus.at(DATA, 8) == b"\x01\0\0\0\0\0\0\0"
    assert d.submit(0, 0x06, nsid=2, prp1=DATA, cdw=(0,))[0] == 0x400B  # invalid NSID, DNR
    assert d.submit(0, 0xEE)[0] == 0x4001  # invalid opcode


def test_nvme_features_and_queue_errors() -> None:
    d = Nvme()
    assert d.submit(0, 0x09, cdw=(0x07, 0x00030003)) == (0, 0x003F003F)
    assert d.submit(0, 0x0A, cdw=(0x07,)) == (0, 0x003F003F)
    assert d.submit(0, 0x09, cdw=(0x06, 1)) == (0, 0)
    assert d.submit(0, 0x0A, cdw=(0x06,)) == (0, 1)
    assert d.submit(0, 0x01, prp1=IOVA + 0x8000, cdw=(7 << 16 | 1, 5 << 16 | 1))[0] == 0x4100  # no CQ 5
    assert d.submit(0, 0x05, prp1=IOVA + 0x8010, cdw=(7 << 16 | 1, 3))[0] == 0x4013  # PRP offset
    assert d.submit(0, 0x05, prp1=IOVA + 0x8000, cdw=(7 << 16 | 1, 1 << 16 | 3))[0] == 0x4108  # vector w/o MSI-X
    d.create_io_queues()
    assert d.submit(0, 0x04, cdw=(1,))[0] == 0x010C  # CQ still has an SQ
    assert d.submit(0, 0x00, cdw=(1,)) == (0, 0)
    assert d.submit(0, 0x04, cdw=(1,)) == (0, 0)


def test_nvme_io_with_prp_list_and_phase_wrap() -> None:
    d = Nvme()
    d.create_io_queues(size=4)
    pattern = bytes(range(256)) * 64  # 16 KiB: PRP1 + a PRP list of 3
    d.bus.put(DATA, pattern)
    prp_list = IOVA + 0x20000
    d.bus.put(prp_list, b"".join((DATA + 0x1000 * i).to_bytes(8, "little") for i in (1, 2, 3)))
    for round_ in range(3):  # 3 x 2 commands on a queue of 4: the phase wraps
        assert d.submit(1, 0x01, nsid=1, prp1=DATA, prp2=prp_list, cdw=(8 * round_, 0, 31)) == (0, 0)
        d.bus.put(IOVA + 0x40000 - 0x200, bytes(0x4000))
        for i in range(4):
            d.bus.put(IOVA + 0x50000 + 8 * i, (IOVA + 0x40000 + 0x1000 * i).to_bytes(8, "little"))
        assert d.submit(1, 0x02, nsid=1, prp1=IOVA + 0x40000 - 0x200, prp2=IOVA + 0x50000,
                        cdw=(8 * round_, 0, 31)) == (0, 0)
        got = d.bus.at(IOVA + 0x40000 - 0x200, 0x4000)
        assert got == pattern
    assert d.phase[1] == 0
    assert d.m.namespace[:0x4000] == pattern
    assert d.submit(1, 0x02, nsid=1, prp1=DATA, cdw=(8191, 0, 1))[0] == 0x4080  # LBA range
    assert d.submit(1, 0x00, nsid=1) == (0, 0)


def test_nvme_blocked_dma_is_a_data_transfer_error() -> None:
    d = Nvme()
    d.create_io_queues()
    d.m.namespace[:512] = b"\xaa" * 512
    assert d.submit(1, 0x02, nsid=1, prp1=0x7000, cdw=(0, 0, 0)) == (0x0004, 0)
    assert d.bus.faults[-1].iova == 0x7000 and d.bus.faults[-1].write
    assert d.submit(1, 0x01, nsid=1, prp1=0x7000, cdw=(0, 0, 0)) == (0x0004, 0)
    assert d.m.namespace[:512] == b"\xaa" * 512  # nothing written


def test_nvme_unreachable_completion_queue_is_fatal() -> None:
    d = Nvme()
    assert d.submit(0, 0x05, prp1=0x9000, cdw=(3 << 16 | 1, 1)) == (0, 0)  # CQ outside the IOMMU
    assert d.submit(0, 0x01, prp1=IOVA + 0x9000, cdw=(3 << 16 | 1, 1 << 16 | 1)) == (0, 0)
    d.bus.put(IOVA + 0x9000, bytes([0x00, 0, 1, 0, 1, 0, 0, 0]) + bytes(56))
    d.m.bar_write(0, 0x1008, 4, 1)
    assert d.m.bar_read(0, 0x1C, 4) & 0x2  # CFS


def test_nvme_interrupts_intx_and_msix() -> None:
    d = Nvme()
    d.submit(0, 0x0A, cdw=(0x07,))
    assert d.sink.levels == [True, False]  # asserted on posting, off once the head moved
    d.m.bar_write(0, 0x0C, 4, 1)  # INTMS: mask vector 0
    n = len(d.sink.levels)
    d.submit(0, 0x0A, cdw=(0x07,))
    assert len(d.sink.levels) == n
    d2 = Nvme(msix=True)
    d2.submit(0, 0x0A, cdw=(0x07,))
    d2.create_io_queues(vector=2)
    d2.submit(1, 0x00, nsid=1)
    assert (IRQ_MSIX, 0) in d2.sink.messages and d2.sink.messages[-1] == (IRQ_MSIX, 2)
    assert d2.sink.levels == []


def test_nvme_flr_resets_controller() -> None:
    d = Nvme()
    m = d.m
    assert m.pcie_offset is not None and m.has_flr
    wcfg(m, m.pcie_offset + 8, 0x8000, 2)
    assert m.bar_read(0, 0x14, 4) == 0 and m.bar_read(0, 0x1C, 4) == 0


def test_user_subclass_end_to_end() -> None:
    class Doorbell(DeviceModel):
        vendor_id, device_id = 0x1234, 0x0001
        default_bars = (Bar(0, 0x1000),)

        def __init__(self) -> None:
            super().__init__()
            self.add_msi_capability(1)
            self.rung = 0

        def on_write(self, bar: int, offset: int, width: int, value: int) -> None:
            self.rung = value
            self.dma_write(IOVA, value.to_bytes(width, "little"))
            self.notify()

        def device_reset(self) -> None:
            self.rung = 0

    m = Doorbell()
    bus, sink = attach(m)
    m.bar_write(0, 0, 4, 0xCAFE)
    assert bus.at(IOVA, 4) == b"\xfe\xca\0\0" and sink.levels == [True]
    m.reset()
    assert m.rung == 0 and m.reset_count == 1
