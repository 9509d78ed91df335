"""The fake igb (Intel 82576) model and the userspace loopback driver in
examples/igb_loopback.py, on the fake kernel."""

from __future__ import annotations

import asyncio
import struct
from typing import Any, Iterator

import pytest
from toolkit_env import WidthLog, load_example

import pyvfio
from pyvfio.fake import System
from pyvfio.fake.models import create
from pyvfio.fake.models import igb as igbm
from pyvfio.setup import devices

igb_loopback = load_example("igb_loopback")


class IgbMachine:
    """A fake machine with one igb function on vfio-pci."""

    def __init__(self, **spec: Any) -> None:
        topo = dict(igb_loopback.FAKE_TOPOLOGY)
        topo["devices"] = [{**topo["devices"][0], **spec}]
        self.system = System(topo)
        self.backend = self.system.backend
        (self.bdf,) = devices.find_devices(*igb_loopback.IGB_ID, backend=self.backend)
        igb_loopback.bind_vfio(self.backend, self.bdf)
        self.model: igbm.IgbDevice = self.system.devices[self.bdf].model

    def check_no_leaks(self) -> None:
        assert not self.backend.open_files, f"files left open: {self.backend.open_files}"


@pytest.fixture
def machine() -> Iterator[IgbMachine]:
    m = IgbMachine()
    yield m
    m.check_no_leaks()


# -- the model on its own ---------------------------------------------------------------
def test_model_is_registered_with_qemus_identity_and_layout() -> None:
    model = create({"model": "igb"})
    assert isinstance(model, igbm.IgbDevice)
    assert (model.vendor_id, model.device_id, model.class_code) == (0x8086, 0x10C9, 0x020000)
    assert {i: b.size for i, b in model.bars.items()} == {0: 0x20000, 1: 0x20000, 2: 0x20, 3: 0x4000}
    assert model.msix is not None and model.msix.vectors == 10 and model.msix.table_bar == 3
    assert model.has_flr and model.reset_methods == ["flr", "pm", "bus"]  # as in the test VM


def test_mac_from_ral_rah_and_eerd_and_reset() -> None:
    model = create({"model": "igb", "model_mac": "02:00:00:aa:bb:cc"})
    assert model.bar_read(0, igbm.RA, 4) == 0xAA000002
    assert model.bar_read(0, igbm.RA + 4, 4) == 0xCCBB | igbm.RAH_AV
    words = []
    for address in range(3):
        model.bar_write(0, igbm.EERD, 4, address << 2 | igbm.EERD_START)
        value = model.bar_read(0, igbm.EERD, 4)
        assert value & igbm.EERD_DONE
        words.append(value >> 16)
    assert words == [0x0002, 0xAA00, 0xCCBB]
    model.bar_write(0, igbm.RA, 4, 0x12345678)
    model.bar_write(0, igbm.RCTL, 4, igbm.RCTL_EN)
    model.bar_write(0, igbm.CTRL, 4, igbm.CTRL_RST)
    assert model.bar_read(0, igbm.CTRL, 4) & igbm.CTRL_RST == 0  # self-clearing
    assert model.bar_read(0, igbm.RCTL, 4) == 0
    assert model.bar_read(0, igbm.RA, 4) == 0xAA000002
    # the link is down after a software reset until auto-negotiation restarts
    assert not model.bar_read(0, igbm.STATUS, 4) & igbm.STATUS_LU
    model.bar_write(0, igbm.MDIC, 4, 2 << 21 | igbm.MDIC_OP_WRITE | igbm.BMCR_AUTOEN | igbm.BMCR_ANRESTART)
    assert model.bar_read(0, igbm.MDIC, 4) & igbm.MDIC_ERROR  # no PHY at address 2
    model.bar_write(0, igbm.MDIC, 4, 1 << 21 | igbm.MDIC_OP_WRITE | igbm.BMCR_AUTOEN | igbm.BMCR_ANRESTART)
    assert model.bar_read(0, igbm.MDIC, 4) & (igbm.MDIC_READY | igbm.MDIC_ERROR) == igbm.MDIC_READY
    assert model.bar_read(0, igbm.STATUS, 4) & igbm.STATUS_LU
    model.bar_write(0, igbm.MDIC, 4, 1 << 21 | igbm.MDIC_OP_READ | igbm.MII_BMSR << 16)
    assert model.bar_read(0, igbm.MDIC, 4) & igbm.BMSR_ANEGCOMPLETE


def test_queue_registers_answer_at_the_82575_aliases() -> None:
    model = create({"model": "igb"})
    model.bar_write(0, 0x2800, 4, 0x12345)   # RDBAL(0) alias: 16-byte aligned
    assert model.bar_read(0, igbm.RX_BASE, 4) == 0x12340
    model.bar_write(0, igbm.TX_BASE + igbm.Q_DLEN, 4, 0x1234)
    assert model.bar_read(0, 0x3808, 4) == 0x1200  # TDLEN: multiples of 128
    model.bar_write(0, 0x2900, 4, 0x4000)    # queue 1 alias
    assert model.bar_read(0, igbm.RX_BASE + igbm.QUEUE_STRIDE, 4) == 0x4000


def test_statistics_clear_when_read(machine: IgbMachine) -> None:
    result = igb_loopback.run(machine.bdf, machine.backend, frames=3, out=lambda _s: None)
    assert result.stats == {"GPTC": 3, "GPRC": 3}
    assert machine.model.bar_read(0, igbm.GPTC, 4) == 0


# -- the driver ---------------------------------------------------------------------------
@pytest.mark.parametrize("legacy", [False, True])
def test_loopback_driver(machine: IgbMachine, legacy: bool) -> None:
    log = WidthLog(machine.model.bars[0])
    lines: list[str] = []
    result = igb_loopback.run(machine.bdf, machine.backend, frames=25, legacy=legacy,
                              out=lines.append)
    assert result.ok, lines
    assert (result.sent, result.received, result.mismatches) == (25, 25, [])
    # one MSI-X message per frame on each vector (EIAC clears the cause)
    assert result.interrupts == {"rx": 25, "tx": 25}
    assert result.mac == "52:54:00:12:34:56" and result.frames_per_second > 0
    assert lines[-1] == "igb: all checks passed"
    assert machine.model.dma_errors == 0 and machine.model.rx_dropped == 0
    assert log.log and {width for _off, width, _w in log.log} == {4}


def test_loopback_driver_main(capsys: pytest.CaptureFixture[str]) -> None:
    assert igb_loopback.main(["--fake", "--frames", "5"]) == 0
    assert "5/5 frames back, 0 differing" in capsys.readouterr().out


def test_a_corrupted_frame_is_reported(machine: IgbMachine, monkeypatch: pytest.MonkeyPatch) -> None:
    receive = machine.model.receive
    seen = []

    def corrupt(frame: bytes) -> bool:
        seen.append(frame)
        if len(seen) == 3:  # flip one payload bit of the third frame
            frame = frame[:40] + bytes([frame[40] ^ 0x10]) + frame[41:]
        return receive(frame)

    monkeypatch.setattr(machine.model, "receive", corrupt)
    result = igb_loopback.run(machine.bdf, machine.backend, frames=5, out=lambda _s: None)
    assert result.mismatches == [2]
    assert not result.ok


def _bring_up(machine: IgbMachine, stack: Any, timeout: float = 5.0) -> Any:
    device, space = stack.enter_context(pyvfio.open_attached(machine.bdf, backend=machine.backend))
    driver = igb_loopback.IgbDriver(device, space, timeout=timeout)
    stack.callback(driver.close)
    driver.bring_up()
    return driver


def test_dma_is_blocked_once_the_rings_are_unmapped(machine: IgbMachine) -> None:
    import contextlib

    with contextlib.ExitStack() as stack:
        driver = _bring_up(machine, stack, timeout=0.2)
        result = igb_loopback.LoopbackResult()
        asyncio.run(driver.loopback(2, result))
        assert result.received == 2 and machine.model.dma_errors == 0
        driver.pool.mapping.close()          # the device's view of the rings is gone
        driver.transmit(igb_loopback.frame(driver.mac, 9, 60))
        assert machine.model.dma_errors == 1  # the TX descriptor fetch was blocked
        assert machine.model.regs[igbm.TX_BASE + igbm.Q_DH] == 2  # the ring stopped there
        with pytest.raises(igb_loopback.IgbError, match="no rx interrupt"):
            asyncio.run(driver.receive())
        assert machine.system.faults, "the IOMMU recorded no fault"


def test_without_loopback_frames_go_to_the_wire_and_inject_receives(machine: IgbMachine) -> None:
    import contextlib

    with contextlib.ExitStack() as stack:
        driver = _bring_up(machine, stack, timeout=0.2)
        driver.regs.RCTL.modify(LBM=0, UPE=0, MPE=0)   # no loopback, no promiscuous mode
        data = igb_loopback.frame(driver.mac, 1, 100)
        slot = driver.transmit(data)
        asyncio.run(driver.reap_tx(slot))
        assert list(machine.model.wire) == [data]
        assert driver.vectors[igb_loopback.RX_VECTOR].poll() == 0  # nothing received
        stranger = b"\x02\x11\x22\x33\x44\x55" + data[6:]
        assert machine.model.inject(stranger) is False  # not for this MAC
        other = b"\xff" * 6 + data[6:]        # broadcast: BAM
        assert machine.model.inject(other)
        assert asyncio.run(driver.receive()) == other


def test_rx_overrun_drops_the_frame(machine: IgbMachine) -> None:
    import contextlib

    with contextlib.ExitStack() as stack:
        driver = _bring_up(machine, stack, timeout=0.2)
        driver.regs.RDT.write(0)   # no descriptor left for the device (RDH == RDT)
        driver.transmit(igb_loopback.frame(driver.mac, 1, 60))
        assert machine.model.rx_dropped == 1
        assert machine.model.regs[igbm.ICR] & igbm.ICR_RXO


def test_legacy_interrupts_without_msix_mode(machine: IgbMachine) -> None:
    import contextlib

    with contextlib.ExitStack() as stack:
        driver = _bring_up(machine, stack, timeout=0.2)
        driver.regs.GPIE.write(0)                     # ICR/IMS causes -> MSI-X vector 0
        driver.regs.EICR.write(0xFFFFFFFF)
        driver.vectors[0].poll()
        machine.model.bar_write(0, igbm.IMS, 4, igbm.ICR_RXDW)
        slot = driver.transmit(igb_loopback.frame(driver.mac, 1, 60))
        assert driver.vectors[0].poll() == 1
        icr = driver.regs.ICR.read()
        assert icr & igbm.ICR_RXDW and icr & igbm.ICR_ASSERTED
        assert driver.regs.ICR.read() == 0            # cleared by the read
        status = struct.unpack_from("<I", driver.tx_ring.read(slot * 16 + 12, 4))[0]
        assert status & igb_loopback.STAT_DD


@pytest.mark.parametrize("machine_name", ["qemu-vtd", "qemu-vtd-sm"])
def test_loopback_on_the_captured_test_vm(machine_name: str) -> None:
    """The shipped machines captured in the test VM carry its igb (behind
    root port rp4, alone in its group) as the igb model: the driver runs
    there as it does in the VM (tests/kernel/test_real_igb.py)."""
    system = System(machine_name)
    (bdf,) = devices.find_devices(*igb_loopback.IGB_ID, backend=system.backend)
    assert bdf == "0000:06:00.0" and isinstance(system.devices[bdf].model, igbm.IgbDevice)
    igb_loopback.bind_vfio(system.backend, bdf)
    result = igb_loopback.run(bdf, system.backend, frames=10, out=lambda _s: None)
    assert result.ok and result.interrupts == {"rx": 10, "tx": 10}
    assert result.mac == "52:54:00:12:34:56"
