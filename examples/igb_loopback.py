#!/usr/bin/env python3
"""A userspace NIC driver in pyvfio: Intel 82576 (QEMU's ``igb``) in MAC loopback.

It maps BAR0, resets the MAC, reads its address, builds a TX and an RX
descriptor ring (16-byte advanced descriptors) with their buffers in one
DMA pool, routes RX queue 0 to MSI-X vector 0 and TX queue 0 to vector 1
(IVAR, EIMS, auto-cleared by EIAC) and turns on MAC loopback
(RCTL.LBM = 01).  It then sends N frames, waits for each one's RX
interrupt in asyncio (``IrqVector.wait_async``: the eventfd in the event
loop, no polling), checks the received bytes, length and the DD bits of
both descriptors, and reports frames per second, the interrupts taken and
the mean time from the tail write to the RX interrupt::

    python3 examples/igb_loopback.py --fake [--frames 1000]
    python3 examples/igb_loopback.py --bdf 0000:04:00.0 --bind [--legacy]

``--bind`` moves the function to vfio-pci for the run and gives it back
afterwards.  Register facts: Intel 82576 datasheet (sections 7.1, 7.2,
7.3, 8); QEMU's igb accepts only advanced RX descriptors and processes
the TX ring during the tail write.
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

try:
    import pyvfio
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import pyvfio
from pyvfio import (
    Container,
    Device,
    DmaChunk,
    DmaPool,
    Field,
    IovaAllocator,
    IrqVector,
    Register,
    RegisterBlock,
)
from pyvfio.backend import Backend
from pyvfio.setup import binding, devices

IGB_ID = (0x8086, 0x10C9)  # 82576

#: The registers the driver uses (82576 datasheet, section 8), queue 0.
IGB_REGS = RegisterBlock("igb", [
    Register("CTRL", 0x0000, 4, fields=(Field("SLU", 6), Field("RST", 26))),
    Register("STATUS", 0x0008, 4, access="ro", fields=(Field("FD", 0), Field("LU", 1))),
    Register("MDIC", 0x0020, 4, fields=(
        Field("DATA", 0, 16), Field("REG", 16, 5), Field("PHY", 21, 5), Field("OP", 26, 2),
        Field("READY", 28), Field("ERROR", 30))),
    Register("RCTL", 0x0100, 4, fields=(
        Field("EN", 1), Field("SBP", 2), Field("UPE", 3), Field("MPE", 4), Field("LBM", 6, 2),
        Field("BAM", 15), Field("BSIZE", 16, 2), Field("SECRC", 26))),
    Register("TCTL", 0x0400, 4, fields=(Field("EN", 1), Field("PSP", 3))),
    Register("ICR", 0x1500, 4, access="ro"),
    Register("IMC", 0x150C, 4, access="wo"),
    Register("GPIE", 0x1514, 4, fields=(Field("MSIX_MODE", 4), Field("EIAME", 30), Field("PBA", 31))),
    Register("EIMS", 0x1524, 4),
    Register("EIMC", 0x1528, 4, access="wo"),
    Register("EIAC", 0x152C, 4),
    Register("EICR", 0x1580, 4),
    Register("IVAR0", 0x1700, 4),
    Register("GPRC", 0x4074, 4, access="ro"),
    Register("GPTC", 0x4080, 4, access="ro"),
    Register("RAL0", 0x5400, 4),
    Register("RAH0", 0x5404, 4, fields=(Field("RAH", 0, 16), Field("AV", 31))),
    Register("RDBAL", 0xC000, 4), Register("RDBAH", 0xC004, 4), Register("RDLEN", 0xC008, 4),
    Register("SRRCTL", 0xC00C, 4, fields=(Field("BSIZEPKT", 0, 7), Field("DESCTYPE", 25, 3))),
    Register("RDH", 0xC010, 4), Register("RDT", 0xC018, 4),
    Register("RXDCTL", 0xC028, 4, fields=(Field("ENABLE", 25),)),
    Register("TDBAL", 0xE000, 4), Register("TDBAH", 0xE004, 4), Register("TDLEN", 0xE008, 4),
    Register("TDH", 0xE010, 4), Register("TDT", 0xE018, 4),
    Register("TXDCTL", 0xE028, 4, fields=(Field("ENABLE", 25),)),
], size=0x20000)

DESC = 16
BUF = 2048
# advanced TX data descriptor (82576 datasheet 7.2.2.3)
TXD_EOP = 1 << 24
TXD_IFCS = 1 << 25
TXD_RS = 1 << 27
TXD_DEXT = 1 << 29
TXD_DTYP_DATA = 0x3 << 20
TXD_PAYLEN_SHIFT = 14
STAT_DD = 1 << 0
RXD_EOP = 1 << 1
RX_VECTOR, TX_VECTOR = 0, 1
IVAR_VALID = 0x80
PHY_ADDRESS = 1  # the 82576's internal PHY
BMCR_AUTOEN_RESTART = 1 << 12 | 1 << 9
ETHERTYPE = 0x88B5  # IEEE 802 local experimental


class IgbError(RuntimeError):
    """The device did not do what the driver asked."""


@dataclass
class LoopbackResult:
    """What a run of the driver found and measured."""

    mac: str = ""
    sent: int = 0
    received: int = 0
    mismatches: list[int] = field(default_factory=list)
    interrupts: dict[str, int] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)
    frames_per_second: float = 0.0
    irq_latency_us: float = 0.0

    @property
    def ok(self) -> bool:
        """Every frame came back unchanged, with at least one RX interrupt
        and the device's counters agreeing."""
        return (self.sent > 0 and self.received == self.sent and not self.mismatches
                and self.interrupts.get("rx", 0) > 0
                and self.stats.get("GPTC") == self.sent and self.stats.get("GPRC") == self.sent)


def frame(mac: bytes, seq: int, size: int) -> bytes:
    """A test frame of ``size`` bytes (>= 60) to and from ``mac``: sequence
    number then a pattern that depends on it."""
    head = mac + mac + struct.pack(">HI", ETHERTYPE, seq)
    body = bytes((seq * 31 + i * 7) & 0xFF for i in range(size - len(head)))
    return head + body


class IgbDriver:
    """An 82576 function on an open, attached :class:`pyvfio.Device`: one TX
    and one RX ring of ``ring`` descriptors (a multiple of 8) in DMA memory.

    Thread safety: not thread-safe; one task drives it (its coroutines run
    in one asyncio loop).
    """

    def __init__(self, device: Device, space: pyvfio.IOAS | Container, *, ring: int = 64,
                 timeout: float = 5.0) -> None:
        if ring % 8 or not 8 <= ring <= 4096:
            raise ValueError("ring must be a multiple of 8 between 8 and 4096 descriptors")
        self.device = device
        self.ring = ring
        self.timeout = timeout
        self.bar0 = device.regions["BAR0"].io()
        self.regs = IGB_REGS.bind(self.bar0)
        device.config.enable(memory=True, bus_master=True)
        allocator = IovaAllocator.for_space(space) if isinstance(space, Container) else None
        size = 2 * ring * DESC + 2 * ring * BUF
        self.pool = DmaPool.create(space, (size + 0xFFFF) & ~0xFFFF, allocator=allocator, min_align=128)
        self.tx_ring: DmaChunk = self.pool.alloc(ring * DESC, align=128)
        self.rx_ring: DmaChunk = self.pool.alloc(ring * DESC, align=128)
        self.tx_bufs: DmaChunk = self.pool.alloc(ring * BUF, align=BUF)
        self.rx_bufs: DmaChunk = self.pool.alloc(ring * BUF, align=BUF)
        self.msix = device.irqs["MSIX"]
        self.vectors: list[IrqVector] = self.msix.enable(2)
        self.interrupts = {"rx": 0, "tx": 0}
        self.tx_tail = 0
        self.rx_next = 0
        self._rx_credit = 0
        self.mac = b""

    def close(self) -> None:
        """Stop the queues, mask the interrupts, free the rings."""
        try:
            self.regs.RCTL.write(0)
            self.regs.TCTL.write(0)
            self.regs.EIMC.write(0xFFFFFFFF)
            self.regs.IMC.write(0xFFFFFFFF)
        finally:
            try:
                self.msix.disable()
            finally:
                self.pool.close()

    # -- bring-up ----------------------------------------------------------------------
    def reset(self) -> None:
        """Software reset (CTRL.RST); every interrupt masked afterwards."""
        self.regs.CTRL.set("RST", 1)
        deadline = time.monotonic() + self.timeout
        time.sleep(0.001)  # the 82576 needs ~1 ms before the next access
        while self.regs.CTRL.get("RST"):
            if time.monotonic() > deadline:
                raise IgbError("CTRL.RST did not clear")
            time.sleep(0.001)
        self.regs.EIMC.write(0xFFFFFFFF)
        self.regs.IMC.write(0xFFFFFFFF)
        self.regs.EICR.read()
        self.regs.ICR.read()

    def read_mac(self) -> bytes:
        """The address in receive address 0 (loaded from the EEPROM)."""
        low = self.regs.RAL0.read()
        high = self.regs.RAH0.read()
        if not high & (1 << 31):
            raise IgbError("receive address 0 is not valid (RAH0.AV clear)")
        return low.to_bytes(4, "little") + (high & 0xFFFF).to_bytes(2, "little")

    def bring_up(self) -> None:
        """Reset, link up (auto-negotiation), MSI-X routing, both rings,
        MAC loopback."""
        self.reset()
        self.mac = self.read_mac()
        self.regs.CTRL.set("SLU", 1)
        # restart auto-negotiation (PHY register 0, BMCR): after a reset
        # the link stays down until then
        self.regs.MDIC.write(DATA=BMCR_AUTOEN_RESTART, REG=0, PHY=PHY_ADDRESS, OP=1)
        deadline = time.monotonic() + self.timeout
        while not self.regs.MDIC.get("READY"):
            if time.monotonic() > deadline:
                raise IgbError("MDIC write of the PHY's BMCR did not complete")
        if self.regs.MDIC.get("ERROR"):
            raise IgbError("MDIC write of the PHY's BMCR failed")
        while not self.regs.STATUS.get("LU"):
            if time.monotonic() > deadline:
                raise IgbError("no link (STATUS.LU clear) after auto-negotiation")
            time.sleep(0.01)
        # MSI-X mode: RX queue 0 -> vector 0, TX queue 0 -> vector 1
        self.regs.GPIE.write(MSIX_MODE=1, PBA=1)
        self.regs.IVAR0.write((RX_VECTOR | IVAR_VALID) | (TX_VECTOR | IVAR_VALID) << 8)
        both = 1 << RX_VECTOR | 1 << TX_VECTOR
        self.regs.EIAC.write(both)
        # RX ring: every descriptor owns a buffer; RDT one behind RDH (full ring)
        self.regs.RXDCTL.write(0)
        self.regs.RDBAL.write(self.rx_ring.iova & 0xFFFFFFFF)
        self.regs.RDBAH.write(self.rx_ring.iova >> 32)
        self.regs.RDLEN.write(self.ring * DESC)
        self.regs.SRRCTL.write(BSIZEPKT=BUF >> 10, DESCTYPE=1)  # advanced, one buffer
        self.regs.RDH.write(0)
        self.regs.RDT.write(0)
        for i in range(self.ring):
            self._arm_rx(i)
        self.regs.RXDCTL.write(ENABLE=1)
        self.regs.RDT.write(self.ring - 1)
        # TX ring
        self.regs.TXDCTL.write(0)
        self.regs.TDBAL.write(self.tx_ring.iova & 0xFFFFFFFF)
        self.regs.TDBAH.write(self.tx_ring.iova >> 32)
        self.regs.TDLEN.write(self.ring * DESC)
        self.regs.TDH.write(0)
        self.regs.TDT.write(0)
        self.regs.TXDCTL.write(ENABLE=1)
        self.regs.EIMS.write(both)
        self.regs.RCTL.write(EN=1, UPE=1, MPE=1, BAM=1, LBM=1, BSIZE=0, SECRC=1)
        self.regs.TCTL.write(EN=1, PSP=1)

    def _arm_rx(self, i: int) -> None:
        self.rx_ring.write(struct.pack("<QQ", self.rx_bufs.iova + i * BUF, 0), i * DESC)

    # -- traffic -----------------------------------------------------------------------
    def transmit(self, data: bytes) -> int:
        """Put one frame on the TX ring and write the tail; returns its slot."""
        if len(data) > BUF:
            raise ValueError(f"frame of {len(data)} bytes is longer than a buffer ({BUF})")
        slot = self.tx_tail
        self.tx_bufs.write(data, slot * BUF)
        cmd = len(data) | TXD_DTYP_DATA | TXD_DEXT | TXD_EOP | TXD_IFCS | TXD_RS
        self.tx_ring.write(struct.pack("<QII", self.tx_bufs.iova + slot * BUF, cmd,
                                       len(data) << TXD_PAYLEN_SHIFT), slot * DESC)
        self.tx_tail = (slot + 1) % self.ring
        self.regs.TDT.write(self.tx_tail)
        return slot

    async def _wait(self, vector: int, what: str) -> None:
        try:
            count = await self.vectors[vector].wait_async(self.timeout)
        except TimeoutError:
            raise IgbError(f"no {what} interrupt within {self.timeout} s") from None
        self.interrupts[what] += count
        if vector == RX_VECTOR:
            self._rx_credit += count

    async def receive(self) -> bytes:
        """The next received frame: waits for the RX interrupt (one message
        per frame, one frame in flight; an eventfd count above one is kept
        as credit for the next frames), then takes the descriptor and gives
        it back to the ring."""
        if self._rx_credit == 0:
            await self._wait(RX_VECTOR, "rx")
        self._rx_credit -= 1
        i = self.rx_next
        status, length = struct.unpack_from("<IH", self.rx_ring.read(i * DESC + 8, 6))
        if not status & STAT_DD:
            raise IgbError(f"RX descriptor {i}: DD clear after the interrupt")
        if not status & RXD_EOP:
            raise IgbError(f"RX descriptor {i}: frame spans descriptors (status {status:#x})")
        data = self.rx_bufs.read(i * BUF, length)
        self._arm_rx(i)
        self.regs.RDT.write(i)  # the slot is free again
        self.rx_next = (i + 1) % self.ring
        return data

    async def reap_tx(self, slot: int) -> None:
        """Check the TX write-back (DD) of ``slot``; takes a pending TX
        interrupt without waiting for one."""
        n = self.vectors[TX_VECTOR].poll()
        self.interrupts["tx"] += n
        status = int.from_bytes(self.tx_ring.read(slot * DESC + 12, 4), "little")
        if not status & STAT_DD:
            await self._wait(TX_VECTOR, "tx")
            status = int.from_bytes(self.tx_ring.read(slot * DESC + 12, 4), "little")
            if not status & STAT_DD:
                raise IgbError(f"TX descriptor {slot}: DD clear after the interrupt")

    async def loopback(self, count: int, result: LoopbackResult,
                       sizes: tuple[int, ...] = (60, 64, 128, 512, 1514)) -> None:
        """Send ``count`` frames one at a time and check each one back."""
        latency = 0.0
        start = time.perf_counter()
        for seq in range(count):
            data = frame(self.mac, seq, sizes[seq % len(sizes)])
            t0 = time.perf_counter()
            slot = self.transmit(data)
            result.sent += 1
            got = await self.receive()
            latency += time.perf_counter() - t0
            result.received += 1
            if got != data:
                result.mismatches.append(seq)
            await self.reap_tx(slot)
        elapsed = time.perf_counter() - start
        result.frames_per_second = count / elapsed if elapsed > 0 else 0.0
        result.irq_latency_us = latency / count * 1e6 if count else 0.0


# -- opening the device ---------------------------------------------------------------------
def bind_vfio(backend: Backend, bdf: str) -> str | None:
    """Move ``bdf`` to vfio-pci; returns the driver it had."""
    return binding.bind(bdf, backend=backend).previous_driver


def unbind_vfio(backend: Backend, bdf: str) -> None:
    """Give ``bdf`` back the driver it had before :func:`bind_vfio`."""
    binding.restore(bdf, backend=backend)


def run(bdf: str, backend: Backend, *, frames: int = 100, legacy: bool = False,
        timeout: float = 5.0, out: Callable[[str], None] = print) -> LoopbackResult:
    """Drive the igb function at ``bdf`` (bound to vfio-pci): ``frames``
    frames through MAC loopback."""
    result = LoopbackResult()
    with pyvfio.open_attached(bdf, backend=backend, legacy=legacy) as (device, space):
        path = "type1 container" if isinstance(space, Container) else f"iommufd {space.describe()}"
        out(f"igb {bdf} through {path}")
        driver = IgbDriver(device, space, timeout=timeout)
        try:
            driver.bring_up()
            result.mac = driver.mac.hex(":")
            out(f"  MAC {result.mac}, link up, MAC loopback, rings of {driver.ring} at IOVA "
                f"{driver.tx_ring.iova:#x} (TX) and {driver.rx_ring.iova:#x} (RX)")
            driver.regs.GPRC.read()  # the counters clear when read
            driver.regs.GPTC.read()
            asyncio.run(driver.loopback(frames, result))
            result.stats = {"GPTC": driver.regs.GPTC.read(), "GPRC": driver.regs.GPRC.read()}
        finally:
            result.interrupts = dict(driver.interrupts)
            driver.close()
    out(f"  {result.received}/{result.sent} frames back, {len(result.mismatches)} differing; "
        f"counters GPTC {result.stats.get('GPTC')} GPRC {result.stats.get('GPRC')}")
    out(f"  {result.frames_per_second:.0f} frames/s, interrupts rx {result.interrupts.get('rx', 0)} "
        f"tx {result.interrupts.get('tx', 0)}, tail write -> RX interrupt {result.irq_latency_us:.0f} us")
    out(f"igb: {'all checks passed' if result.ok else 'FAILED'}")
    return result


#: A fake machine with one igb function behind the IOMMU.
FAKE_TOPOLOGY = {
    "name": "igb-loopback",
    "description": "One QEMU igb (Intel 82576) function, unbound, alone in its IOMMU group.",
    "devices": [{"bdf": "0000:00:03.0", "model": "igb", "driver": None}],
}


def fake_backend() -> tuple[Backend, str]:
    """A fake machine (pyvfio.fake) whose igb function is on vfio-pci."""
    from pyvfio.fake import System

    backend = System(dict(FAKE_TOPOLOGY)).backend
    (bdf,) = devices.find_devices(*IGB_ID, backend=backend)
    bind_vfio(backend, bdf)
    return backend, bdf


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--fake", action="store_true", help="use pyvfio's fake kernel")
    where.add_argument("--bdf", help="PCI address of a real igb function")
    ap.add_argument("--bind", action="store_true",
                    help="bind the device to vfio-pci for the run, give it back after")
    ap.add_argument("--legacy", action="store_true", help="type1 container instead of iommufd")
    ap.add_argument("--frames", type=int, default=100, help="frames to send (default 100)")
    args = ap.parse_args(argv)
    if args.fake:
        backend, bdf = fake_backend()
        bound = False
    else:
        backend = pyvfio.default_backend()
        bdf = pyvfio.core.sysfs.normalize_bdf(args.bdf)
        bound = False
        if args.bind:
            bound = bind_vfio(backend, bdf) != "vfio-pci"
        elif pyvfio.core.sysfs.device_driver(bdf, backend) != "vfio-pci":
            print(f"{bdf} is not bound to vfio-pci (use --bind)", file=sys.stderr)
            return 2
    try:
        result = run(bdf, backend, frames=args.frames, legacy=args.legacy)
    except (pyvfio.VfioError, IgbError, TimeoutError) as exc:
        print(f"igb: {exc}", file=sys.stderr)
        return 1
    finally:
        if bound:
            unbind_vfio(backend, bdf)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
