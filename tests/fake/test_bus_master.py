"""Bus Master Enable gates a function's memory writes: its DMA and its
MSI/MSI-X messages (QEMU: pci_msi_trigger writes the message through the
bus-master address space, which is disabled while the Command register's
bit 2 is clear).  A message sent then is lost, not held pending.  INTx is
a wire: it needs no Bus Master, only Interrupt Disable (bit 10) clear.

The first tests drive the fake as a driver does, through pyvfio and the
fake vfio-pci (the same check as tests/kernel/test_real_bus_master.py on
QEMU); the others drive every registered model directly.
"""

from __future__ import annotations

import time
from typing import Any, Iterator

import pytest
from test_models import Sink
from toolkit_env import FakeMachine, open_cdev

import pyvfio
from pyvfio import DmaBuffer, map_buffer
from pyvfio.fake import models
from pyvfio.fake.machine.pci import IRQ_INTX, IRQ_MSI, IRQ_MSIX, DeviceModel
from pyvfio.fake.machine.pci_regs import (
    PCI_COMMAND,
    PCI_COMMAND_INTX_DISABLE,
    PCI_COMMAND_MASTER,
    PCI_COMMAND_MEMORY,
    PCI_MSIX_ENTRY_VECTOR_CTRL,
)

COMMAND_INTX_DISABLE = 0x400
IOVA = 0x100000

# edu's registers
EDU_FACTORIAL, EDU_STATUS, EDU_IRQ_STATUS, EDU_IRQ_ACK = 0x08, 0x20, 0x24, 0x64
EDU_IRQ_RAISE = 0x60
EDU_STATUS_IRQFACT = 0x80
FACT_IRQ, DMA_IRQ = 0x1, 0x100


@pytest.fixture
def machine() -> Iterator[FakeMachine]:
    m = FakeMachine()
    yield m
    m.check_no_leaks()


def silent(vector: pyvfio.IrqVector, timeout: float) -> bool:
    """No interrupt reaches ``vector`` within ``timeout`` seconds."""
    try:
        vector.wait(timeout)
    except TimeoutError:
        return True
    return False


def factorial(bar0: pyvfio.RegisterIO, n: int) -> int:
    """Start edu's factorial with its completion interrupt requested and
    wait for the result."""
    bar0.write32(EDU_STATUS, EDU_STATUS_IRQFACT)
    bar0.write32(EDU_FACTORIAL, n)
    deadline = time.monotonic() + 5
    while bar0.read32(EDU_STATUS) & 0x1:
        assert time.monotonic() < deadline, "edu's factorial did not complete"
        time.sleep(0.001)
    return bar0.read32(EDU_FACTORIAL)


# -- through vfio-pci, as a driver sees it -------------------------------------------------------
def test_edu_factorial_msi_only_with_bus_master(machine: FakeMachine) -> None:
    with open_cdev(machine.backend, machine.edu) as (dev, _ioas):
        dev.config.enable(memory=True, bus_master=False)
        bar0 = dev.regions["BAR0"].mmap()
        (vector,) = dev.irqs["MSI"].enable()
        model = machine.model(machine.edu)
        assert factorial(bar0, 5) == 120  # the device computes...
        assert silent(vector, 0.5)  # ...but its message never leaves it
        assert bar0.read32(EDU_IRQ_STATUS) == FACT_IRQ and model.lost_messages == 1
        bar0.write32(EDU_IRQ_ACK, FACT_IRQ)
        dev.config.enable(bus_master=True)
        assert silent(vector, 0.1)  # lost, not pending: nothing arrives late
        assert factorial(bar0, 6) == 720
        assert vector.wait(5) == 1
        bar0.write32(EDU_IRQ_ACK, FACT_IRQ)
        dev.irqs["MSI"].disable()


def test_edu_dma_completion_msi(machine: FakeMachine) -> None:
    # the buffer outlives the IOAS it is mapped into
    with DmaBuffer(0x2000, backend=machine.backend) as buf, \
            open_cdev(machine.backend, machine.edu) as (dev, ioas):
        map_buffer(ioas, buf, IOVA)
        dev.config.enable(memory=True, bus_master=True)
        bar0 = dev.regions["BAR0"].mmap()
        (vector,) = dev.irqs["MSI"].enable()
        model = machine.model(machine.edu)
        model.dma_buf[0:8] = b"edu->RAM"

        def to_ram(dst: int) -> None:
            bar0.write64(0x80, 0x40000)
            bar0.write64(0x88, dst)
            bar0.write64(0x90, 8)
            bar0.write64(0x98, 0x1 | 0x2 | 0x4)  # start, to RAM, interrupt when done

        to_ram(IOVA)
        assert bytes(buf[0:8]) == b"edu->RAM" and vector.wait(5) == 1
        assert bar0.read32(EDU_IRQ_STATUS) == DMA_IRQ
        bar0.write32(EDU_IRQ_ACK, DMA_IRQ)
        dev.config.enable(bus_master=False)
        to_ram(IOVA + 0x1000)
        # neither the data nor the completion message reaches memory
        assert bytes(buf[0x1000:0x1008]) == bytes(8) and silent(vector, 0.1)
        assert model.dma_errors == 1 and model.lost_messages == 1
        assert bar0.read32(EDU_IRQ_STATUS) == DMA_IRQ and not bar0.read64(0x98) & 0x1
        bar0.write32(EDU_IRQ_ACK, DMA_IRQ)
        dev.irqs["MSI"].disable()


def test_nvme_completion_msix(machine: FakeMachine) -> None:
    # the buffer outlives the IOAS it is mapped into
    with DmaBuffer(0x4000, backend=machine.backend) as buf, \
            open_cdev(machine.backend, machine.nvme) as (dev, ioas):
        map_buffer(ioas, buf, IOVA)
        dev.config.enable(memory=True, bus_master=True)
        bar0 = dev.regions["BAR0"].mmap()
        (vector,) = dev.irqs["MSIX"].enable(1)
        bar0.write32(0x24, (3 << 16) | 3)  # AQA: 4-entry admin queues
        bar0.write64(0x28, IOVA)  # ASQ
        bar0.write64(0x30, IOVA + 0x1000)  # ACQ
        bar0.write32(0x14, 0x00460001)  # CC.EN
        assert bar0.read32(0x1C) & 1  # CSTS.RDY

        def identify(slot: int, cid: int) -> bytes:
            cmd = bytearray(64)
            cmd[0], cmd[2] = 0x06, cid  # Identify controller
            cmd[24:32] = (IOVA + 0x2000).to_bytes(8, "little")
            cmd[40] = 1
            buf[slot * 64:slot * 64 + 64] = bytes(cmd)
            bar0.write32(0x1000, slot + 1)  # SQ 0 tail doorbell
            return bytes(buf[0x1000 + slot * 16:0x1000 + slot * 16 + 16])

        cqe = identify(0, 7)
        assert cqe[12] == 7 and cqe[14] & 1 and vector.wait(5) == 1
        bar0.write32(0x1004, 1)  # CQ 0 head doorbell
        dev.config.enable(bus_master=False)
        cqe = identify(1, 8)
        assert cqe == bytes(16) and silent(vector, 0.1)  # nothing fetched, posted or signalled
        dev.irqs["MSIX"].disable()


def test_intx_needs_no_bus_master_but_intx_disable_holds_it(machine: FakeMachine) -> None:
    with open_cdev(machine.backend, machine.edu) as (dev, _ioas):
        dev.config.enable(memory=True, bus_master=False)
        bar0 = dev.regions["BAR0"].mmap()
        intx = dev.irqs["INTX"]
        (line,) = intx.enable()
        bar0.write32(EDU_IRQ_RAISE, 0x1)
        assert line.wait(5) == 1  # a wire, not a memory write
        bar0.write32(EDU_IRQ_ACK, 0x1)
        intx.unmask()
        dev.config.update_command(set_bits=COMMAND_INTX_DISABLE)
        bar0.write32(EDU_IRQ_RAISE, 0x2)
        assert silent(line, 0.1)
        dev.config.update_command(clear_bits=COMMAND_INTX_DISABLE)
        assert line.wait(5) == 1  # the level was held back, not lost
        bar0.write32(EDU_IRQ_ACK, 0x2)
        intx.unmask()
        intx.disable()


# -- every model, driven directly -----------------------------------------------------------------


def _model(name: str, **spec: Any) -> tuple[DeviceModel, Sink]:
    m = models.create({"model": name, **spec})
    sink = Sink()
    m.irq_sink = sink
    command(m, PCI_COMMAND_MEMORY)
    return m, sink


def command(m: DeviceModel, value: int) -> None:
    m.config_write(PCI_COMMAND, value.to_bytes(2, "little"))


def _msi_models() -> list[str]:
    return [n for n in models.available() if models.create({"model": n}).msi is not None]


def _msix_models() -> list[str]:
    return [n for n in models.available() if models.create({"model": n}).msix is not None] + ["generic+msix"]


def _intx_models() -> list[str]:
    return [n for n in models.available() if models.create({"model": n}).interrupt_pin]


def _create(name: str) -> tuple[DeviceModel, Sink]:
    if name == "generic+msix":
        return _model("generic", model_msix_vectors=4)
    return _model(name)


@pytest.mark.parametrize("name", _msi_models())
def test_msi_of_every_model_needs_bus_master(name: str) -> None:
    m, sink = _create(name)
    assert m.msi is not None
    m.config_write(m.msi.control, (0x0001).to_bytes(2, "little"))  # MSI Enable
    assert not m.raise_irq(IRQ_MSI, 0) and not m.notify() and sink.messages == []
    assert m.lost_messages == 2
    command(m, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER)
    assert sink.messages == []  # lost, not pending
    assert m.raise_irq(IRQ_MSI, 0) and sink.messages == [(IRQ_MSI, 0)]


@pytest.mark.parametrize("name", _msix_models())
def test_msix_of_every_model_needs_bus_master(name: str) -> None:
    m, sink = _create(name)
    msix = m.msix
    assert msix is not None
    m.config_write(msix.offset + 2, (0x8000).to_bytes(2, "little"))  # MSI-X Enable
    ctrl = msix.table_offset + PCI_MSIX_ENTRY_VECTOR_CTRL
    m.bar_write(msix.table_bar, ctrl, 4, 0)  # unmask vector 0
    assert not m.raise_irq(IRQ_MSIX, 0) and not msix.pending(0) and sink.messages == []
    # a message held pending by the vector's mask is lost when the unmask
    # sends it without Bus Master (QEMU: msix_handle_mask_update)
    m.bar_write(msix.table_bar, ctrl, 4, 1)
    assert not m.raise_irq(IRQ_MSIX, 0) and msix.pending(0)
    m.bar_write(msix.table_bar, ctrl, 4, 0)
    assert not msix.pending(0) and sink.messages == [] and m.lost_messages == 2
    command(m, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER)
    assert sink.messages == []
    assert m.raise_irq(IRQ_MSIX, 0) and sink.messages == [(IRQ_MSIX, 0)]


def test_masked_msi_pending_is_lost_on_unmask_without_bus_master() -> None:
    m, sink = _model("generic")
    m.msi = None
    m.add_msi_capability(1, is64=True, per_vector_mask=True)
    msi = m.msi
    assert msi is not None
    m.config_write(msi.control, (0x0001).to_bytes(2, "little"))
    m.config_write(msi.mask_offset, (1).to_bytes(4, "little"))
    assert not m.raise_irq(IRQ_MSI, 0) and m.config_dword(msi.pending_offset) == 1
    m.config_write(msi.mask_offset, (0).to_bytes(4, "little"))  # msi_write_config sends it: lost
    assert m.config_dword(msi.pending_offset) == 0 and sink.messages == [] and m.lost_messages == 1


@pytest.mark.parametrize("name", _intx_models())
def test_intx_of_every_model_follows_intx_disable_only(name: str) -> None:
    m, sink = _create(name)
    assert m.raise_irq(IRQ_INTX) and sink.levels == [True]  # Bus Master clear
    m.lower_irq()
    command(m, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER | PCI_COMMAND_INTX_DISABLE)
    assert not m.raise_irq(IRQ_INTX) and sink.levels == [True, False]
    command(m, PCI_COMMAND_MEMORY)
    assert sink.levels == [True, False, True] and m.lost_messages == 0


def test_edu_interrupts_follow_the_command_register() -> None:
    m, sink = _model("edu")
    assert m.msi is not None
    m.bar_write(0, EDU_STATUS, 4, EDU_STATUS_IRQFACT)
    m.bar_write(0, EDU_FACTORIAL, 4, 4)
    assert sink.levels == [True]  # INTx without Bus Master
    m.bar_write(0, EDU_IRQ_ACK, 4, FACT_IRQ)
    command(m, PCI_COMMAND_MEMORY | PCI_COMMAND_INTX_DISABLE)
    m.bar_write(0, EDU_FACTORIAL, 4, 4)
    assert sink.levels == [True, False]  # held back by Interrupt Disable
    m.bar_write(0, EDU_IRQ_ACK, 4, FACT_IRQ)
    command(m, PCI_COMMAND_MEMORY)
    m.config_write(m.msi.control, (0x0001).to_bytes(2, "little"))
    m.bar_write(0, EDU_FACTORIAL, 4, 4)
    assert sink.messages == [] and m.lost_messages == 1
    command(m, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER)
    m.bar_write(0, EDU_FACTORIAL, 4, 4)
    assert sink.messages == [(IRQ_MSI, 0)]
