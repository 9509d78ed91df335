"""The userspace NIC driver (examples/igb_loopback.py) on the real kernel:
QEMU's igb (Intel 82576) behind a PCIe root port of the test VM, bound to
vfio-pci, frames sent and received through MAC loopback with DMA through
the emulated IOMMU and MSI-X through VFIO's eventfds."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Iterator

import guestpci
import pytest
from toolkit_env import load_example

import pyvfio
from pyvfio.backend.kernel import KernelBackend

pytestmark = pytest.mark.kernel

KB = KernelBackend()
igb_loopback = load_example("igb_loopback")


@pytest.fixture
def igb() -> Iterator[str]:
    """The igb function, on vfio-pci for the test and given back after."""
    bdf = guestpci.find_one(*guestpci.IGB)
    guestpci.bind_vfio(bdf)
    try:
        yield bdf
    finally:
        guestpci.unbind_vfio(bdf)


@pytest.mark.parametrize("legacy", [False, True], ids=["iommufd", "type1"])
def test_igb_loopback_example(igb: str, legacy: bool, capsys: pytest.CaptureFixture[str]) -> None:
    result = igb_loopback.run(igb, KB, frames=200, legacy=legacy)
    assert (result.sent, result.received, result.mismatches) == (200, 200, [])
    assert result.stats == {"GPTC": 200, "GPRC": 200}
    # every frame was awaited on its RX interrupt; counts above one per
    # wake-up are kept as credit, so the total cannot be below the frames
    assert result.interrupts["rx"] >= 200 and result.interrupts["tx"] >= 1
    assert result.ok
    with capsys.disabled():
        print("\n" + capsys.readouterr().out)


def test_igb_dma_blocked_after_unmap(igb: str) -> None:
    """With the rings unmapped, the device cannot fetch the TX descriptor:
    nothing comes back and no RX interrupt arrives."""
    with contextlib.ExitStack() as stack:
        device, space = stack.enter_context(pyvfio.open_attached(igb, backend=KB))
        driver = igb_loopback.IgbDriver(device, space, timeout=1.0)
        stack.callback(driver.close)
        driver.bring_up()
        result = igb_loopback.LoopbackResult()
        asyncio.run(driver.loopback(3, result))
        assert (result.received, result.mismatches) == (3, [])
        driver.regs.GPRC.read()   # the counters clear when read
        driver.regs.GPTC.read()
        assert driver.pool.mapping is not None
        driver.pool.mapping.close()
        driver.transmit(igb_loopback.frame(driver.mac, 99, 60))
        with pytest.raises(igb_loopback.IgbError, match="no rx interrupt"):
            asyncio.run(driver.receive())
        assert driver.regs.GPTC.read() == 0, "a frame was sent without its TX ring"
        assert driver.regs.GPRC.read() == 0, "a frame was received without its rings"
