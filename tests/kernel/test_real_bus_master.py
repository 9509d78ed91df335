"""Bus Master Enable gates MSI on QEMU's edu (Linux guest, vfio-pci): the
message is a memory write the function issues through its bus-master
address space, so with Command bit 2 clear the factorial-done interrupt
never arrives (and is not delivered later either); with it set it does.
The fake follows the same rule (tests/fake/test_bus_master.py)."""

from __future__ import annotations

import time

import pytest
from toolkit_env import open_cdev

import pyvfio
from pyvfio.backend.kernel import KernelBackend

pytestmark = pytest.mark.kernel

KB = KernelBackend()
EDU_FACTORIAL, EDU_STATUS, EDU_IRQ_STATUS, EDU_IRQ_ACK = 0x08, 0x20, 0x24, 0x64
EDU_STATUS_COMPUTING, EDU_STATUS_IRQFACT = 0x01, 0x80
FACT_IRQ = 0x1


def _silent(vector: pyvfio.IrqVector, timeout: float) -> bool:
    try:
        vector.wait(timeout)
    except TimeoutError:
        return True
    return False


def _factorial(bar0: pyvfio.RegisterIO, n: int) -> int:
    bar0.write32(EDU_STATUS, EDU_STATUS_IRQFACT)  # interrupt when done
    bar0.write32(EDU_FACTORIAL, n)
    deadline = time.monotonic() + 5
    while bar0.read32(EDU_STATUS) & EDU_STATUS_COMPUTING:
        assert time.monotonic() < deadline, "edu's factorial did not complete"
        time.sleep(0.001)
    return bar0.read32(EDU_FACTORIAL)


def test_edu_factorial_msi_needs_bus_master(edu: str) -> None:
    with open_cdev(KB, edu) as (dev, _ioas):
        dev.config.enable(memory=True, bus_master=False)
        assert not dev.config.bus_master_enabled
        bar0 = dev.regions["BAR0"].mmap()
        msi = dev.irqs["MSI"]
        (vector,) = msi.enable()
        try:
            assert _factorial(bar0, 5) == 120  # the device computes...
            assert _silent(vector, 0.5), "edu's MSI arrived with Bus Master Enable clear"
            assert bar0.read32(EDU_IRQ_STATUS) & FACT_IRQ  # ...and raised its interrupt
            bar0.write32(EDU_IRQ_ACK, FACT_IRQ)
            dev.config.enable(bus_master=True)
            assert _silent(vector, 0.2), "the lost MSI was delivered when Bus Master was set"
            assert _factorial(bar0, 6) == 720
            assert vector.wait(5) == 1
            bar0.write32(EDU_IRQ_ACK, FACT_IRQ)
        finally:
            msi.disable()
            dev.config.enable(bus_master=False)
