#!/usr/bin/env python3
"""A userspace driver for QEMU's ``edu`` device (1234:11e8), in pyvfio.

It maps BAR0, checks the identification and liveness registers, computes
factorials with the completion interrupt on MSI, and moves a buffer
RAM -> device -> RAM with the device's DMA engine through the IOMMU::

    python3 examples/edu_dma.py --fake                 # on pyvfio's fake kernel
    python3 examples/edu_dma.py --bdf 0000:01:00.0     # a real edu on vfio-pci
    python3 examples/edu_dma.py --bdf 0000:01:00.0 --bind --legacy --intx

``--bind`` moves the device to vfio-pci for the run and gives it back
afterwards; ``--legacy`` uses a type1 container instead of iommufd;
``--intx`` uses the INTx line instead of MSI.

edu (QEMU docs/specs/edu.rst): BAR0 registers are 32-bit below 0x80 and
32/64-bit from 0x80; the DMA engine copies between bus addresses and a
4 KiB buffer at device address 0x40000 and only drives the low 28 address
bits, so IOVAs are kept below 256 MiB.  It does no DMA (and sends no MSI)
until Bus Master Enable is set.
"""

from __future__ import annotations

import argparse
import math
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
    DmaBuffer,
    Field,
    IovaAllocator,
    Register,
    RegisterBlock,
    map_buffer,
)
from pyvfio.backend import Backend
from pyvfio.setup import binding, devices

EDU_ID = (0x1234, 0x11E8)

#: edu's BAR0 registers (docs/specs/edu.rst).
EDU_REGS = RegisterBlock("edu", [
    Register("IDENT", 0x00, 4, access="ro", fields=(
        Field("ID", 0, 8), Field("MINOR", 16, 8), Field("MAJOR", 24, 8))),
    Register("LIVENESS", 0x04, 4, doc="reads back the bitwise inverse of what was written"),
    Register("FACTORIAL", 0x08, 4),
    Register("STATUS", 0x20, 4, fields=(Field("COMPUTING", 0, access="ro"), Field("IRQ_FACT", 7))),
    Register("IRQ_STATUS", 0x24, 4, access="ro"),
    Register("IRQ_RAISE", 0x60, 4, access="wo"),
    Register("IRQ_ACK", 0x64, 4, access="wo"),
    Register("DMA_SRC", 0x80, 8),
    Register("DMA_DST", 0x88, 8),
    Register("DMA_COUNT", 0x90, 8),
    Register("DMA_CMD", 0x98, 8, fields=(Field("RUN", 0), Field("TO_RAM", 1), Field("IRQ", 2))),
])

FACT_IRQ = 0x001
DMA_IRQ = 0x100
DMA_BUFFER = 0x40000  # the device's 4 KiB buffer, in device addresses
DMA_LIMIT = 1 << 28  # edu's DMA mask: 28 address bits


@dataclass
class EduResult:
    """What a run of the driver found and measured."""

    ident: int = 0
    liveness_ok: bool = False
    factorials: dict[int, int] = field(default_factory=dict)
    raise_irq_ok: bool = False
    dma_ok: bool = False
    dma_iova: int = 0
    interrupts: int = 0
    timings_us: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Every check passed."""
        fact_ok = bool(self.factorials) and all(
            v == math.factorial(n) & 0xFFFFFFFF for n, v in self.factorials.items())
        return (self.ident & 0xFF) == 0xED and self.liveness_ok and fact_ok \
            and self.raise_irq_ok and self.dma_ok


class EduDriver:
    """edu on an open, attached :class:`pyvfio.Device`."""

    def __init__(self, device: Device, space: pyvfio.IOAS | Container, *,
                 intx: bool = False, timeout: float = 5.0) -> None:
        self.device = device
        self.space = space
        self.timeout = timeout
        self.bar0 = device.regions["BAR0"].io()      # the mmapped BAR (pread if not mappable)
        self.regs = EDU_REGS.bind(self.bar0)
        device.config.enable(memory=True, bus_master=True)
        self.irq = device.irqs["INTX" if intx else "MSI"]
        (self.vector,) = self.irq.enable(1)
        self.interrupts = 0

    def close(self) -> None:
        """Disable the interrupt (the device closes the rest)."""
        self.irq.disable()

    def _wait_irq(self, cause: int) -> None:
        """Wait for the interrupt, acknowledge ``cause`` in the device."""
        self.interrupts += self.vector.wait(self.timeout)
        status = self.regs.IRQ_STATUS.read()
        if not status & cause:
            raise RuntimeError(f"interrupt without cause {cause:#x} (status {status:#x})")
        self.regs.IRQ_ACK.write(status)
        if self.irq.automasked:          # INTx: re-arm after clearing the cause
            self.irq.unmask()

    def liveness(self, value: int = 0x12345678) -> bool:
        """Write ``value``; the device answers with its inverse."""
        self.regs.LIVENESS.write(value)
        return self.regs.LIVENESS.read() == (~value & 0xFFFFFFFF)

    def factorial(self, n: int) -> int:
        """``n!`` (32 bits) computed by the device; waits for the interrupt."""
        self.regs.STATUS.modify(IRQ_FACT=1)
        self.regs.FACTORIAL.write(n)
        self._wait_irq(FACT_IRQ)
        deadline = time.monotonic() + self.timeout
        while self.regs.STATUS.get("COMPUTING"):
            if time.monotonic() > deadline:
                raise TimeoutError("the factorial did not complete")
        return self.regs.FACTORIAL.read()

    def raise_irq(self, value: int = 0x4000) -> bool:
        """Raise an interrupt through the IRQ_RAISE register."""
        self.regs.IRQ_RAISE.write(value)
        self._wait_irq(value)
        return self.regs.IRQ_STATUS.read() & value == 0

    def dma(self, src: int, dst: int, count: int, to_ram: bool) -> None:
        """One transfer of ``count`` bytes; waits for its interrupt."""
        self.regs.DMA_SRC.write(src)
        self.regs.DMA_DST.write(dst)
        self.regs.DMA_COUNT.write(count)
        self.regs.DMA_CMD.write(RUN=1, TO_RAM=int(to_ram), IRQ=1)
        self._wait_irq(DMA_IRQ)
        deadline = time.monotonic() + self.timeout
        while self.regs.DMA_CMD.get("RUN"):
            if time.monotonic() > deadline:
                raise TimeoutError("the DMA did not complete")

    def dma_round_trip(self, size: int = 4096) -> tuple[bool, int]:
        """RAM -> edu -> RAM through the IOMMU; returns (equal, IOVA)."""
        iovas = IovaAllocator.for_space(self.space, limit=DMA_LIMIT)
        with DmaBuffer(2 * 4096 if size <= 4096 else 2 * size,
                       backend=self.device.backend) as buf:
            mapping = map_buffer(self.space, buf, allocator=iovas)
            try:
                half = buf.length // 2
                pattern = bytes((i * 7 + 3) & 0xFF for i in range(size))
                buf[0:size] = pattern
                buf[half:half + size] = bytes(size)
                self.dma(mapping.iova, DMA_BUFFER, size, to_ram=False)
                self.dma(DMA_BUFFER, mapping.iova + half, size, to_ram=True)
                return bytes(buf[half:half + size]) == pattern, mapping.iova
            finally:
                mapping.close()


# -- opening the device ---------------------------------------------------------------------
def find_devices(backend: Backend, vendor: int, device: int) -> list[str]:
    """PCI addresses of the functions with this vendor:device ID."""
    return devices.find_devices(vendor, device, backend=backend)


def bind_vfio(backend: Backend, bdf: str) -> str | None:
    """Move ``bdf`` to vfio-pci (refused while the host uses it); returns
    the driver it had."""
    return binding.bind(bdf, backend=backend).previous_driver


def unbind_vfio(backend: Backend, bdf: str) -> None:
    """Give ``bdf`` back the driver it had before :func:`bind_vfio`."""
    binding.restore(bdf, backend=backend)


def _mean_us(fn: Callable[[], object], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def run(bdf: str, backend: Backend, *, legacy: bool = False, intx: bool = False,
        out: Callable[[str], None] = print) -> EduResult:
    """Drive the edu device at ``bdf`` (bound to vfio-pci) once."""
    result = EduResult()
    with pyvfio.open_attached(bdf, backend=backend, legacy=legacy) as (device, space):
        path = "type1 container" if isinstance(space, Container) else f"iommufd {space.describe()}"
        out(f"edu {bdf} through {path}; BAR0 {device.regions['BAR0'].size:#x} bytes")
        driver = EduDriver(device, space, intx=intx)
        try:
            regs = driver.regs
            result.ident = regs.IDENT.read()
            ident = regs.IDENT.fields()
            out(f"  ident {result.ident:#010x} (edu v{ident['MAJOR']}.{ident['MINOR']})")
            result.liveness_ok = driver.liveness()
            out(f"  liveness {'ok' if result.liveness_ok else 'FAILED'}")
            start = time.perf_counter()
            for n in (0, 5, 10, 12):
                result.factorials[n] = driver.factorial(n)
            result.timings_us["factorial+irq"] = (time.perf_counter() - start) / 4 * 1e6
            out("  factorials " + ", ".join(f"{n}!={v}" for n, v in result.factorials.items())
                + f" ({driver.irq.name} interrupts)")
            result.raise_irq_ok = driver.raise_irq()
            out(f"  raised interrupt {'ok' if result.raise_irq_ok else 'FAILED'}")
            start = time.perf_counter()
            result.dma_ok, result.dma_iova = driver.dma_round_trip()
            result.timings_us["dma round trip 4 KiB"] = (time.perf_counter() - start) * 1e6
            out(f"  DMA RAM -> edu -> RAM at IOVA {result.dma_iova:#x}: "
                f"{'ok' if result.dma_ok else 'MISMATCH'}")
            result.timings_us["mmio read32"] = _mean_us(lambda: regs.IDENT.read(), 2000)
            pread_regs = EDU_REGS.bind(device.regions["BAR0"])
            result.timings_us["pread read32"] = _mean_us(lambda: pread_regs.IDENT.read(), 500)
            result.interrupts = driver.interrupts
        finally:
            driver.close()
    out("  " + ", ".join(f"{k} {v:.1f} us" for k, v in result.timings_us.items()))
    out(f"edu: {'all checks passed' if result.ok else 'FAILED'} "
        f"({result.interrupts} interrupts)")
    return result


def fake_backend() -> tuple[Backend, str]:
    """A fake machine (pyvfio.fake) with one edu device on vfio-pci."""
    from pyvfio.fake import System

    backend = System("minimal").backend
    (bdf,) = find_devices(backend, *EDU_ID)
    bind_vfio(backend, bdf)
    return backend, bdf


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--fake", action="store_true", help="use pyvfio's fake kernel")
    where.add_argument("--bdf", help="PCI address of a real edu device")
    ap.add_argument("--bind", action="store_true",
                    help="bind the device to vfio-pci for the run, give it back after")
    ap.add_argument("--legacy", action="store_true", help="type1 container instead of iommufd")
    ap.add_argument("--intx", action="store_true", help="INTx instead of MSI")
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
        result = run(bdf, backend, legacy=args.legacy, intx=args.intx)
    except (pyvfio.VfioError, TimeoutError, RuntimeError) as exc:
        print(f"edu: {exc}", file=sys.stderr)
        return 1
    finally:
        if bound:
            unbind_vfio(backend, bdf)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
