#!/usr/bin/env python3
"""A minimal userspace NVMe driver in pyvfio: Identify and Read of LBA 0.

It maps BAR0, resets and enables the controller with an admin queue pair
in DMA memory, runs Identify Controller (printing model, serial and
firmware) and Identify Namespace, creates one I/O queue pair and reads
LBA 0 of namespace 1.  Completions are taken from MSI-X interrupts (one
eventfd per vector), or by polling the phase bit with ``--poll``::

    python3 examples/nvme_identify.py --fake
    python3 examples/nvme_identify.py --bdf 0000:02:00.0 --bind [--legacy] [--poll]

``--bind`` moves the controller to vfio-pci for the run and gives it back
to its kernel driver afterwards (unmount anything on it first!).
"""

from __future__ import annotations

import argparse
import contextlib
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

NVME_CLASS = 0x010802  # mass storage, NVM, NVMe

#: The controller registers we use (NVMe base specification 3.1).
NVME_REGS = RegisterBlock("nvme", [
    Register("CAP", 0x00, 8, access="ro", fields=(
        Field("MQES", 0, 16), Field("CQR", 16), Field("TO", 24, 8), Field("DSTRD", 32, 4),
        Field("CSS", 37, 8), Field("MPSMIN", 48, 4), Field("MPSMAX", 52, 4))),
    Register("VS", 0x08, 4, access="ro", fields=(
        Field("TER", 0, 8), Field("MNR", 8, 8), Field("MJR", 16, 16))),
    Register("INTMS", 0x0C, 4, access="wo"),
    Register("INTMC", 0x10, 4, access="wo"),
    Register("CC", 0x14, 4, fields=(
        Field("EN", 0), Field("CSS", 4, 3), Field("MPS", 7, 4), Field("AMS", 11, 3),
        Field("SHN", 14, 2), Field("IOSQES", 16, 4), Field("IOCQES", 20, 4))),
    Register("CSTS", 0x1C, 4, access="ro", fields=(
        Field("RDY", 0), Field("CFS", 1), Field("SHST", 2, 2))),
    Register("AQA", 0x24, 4, fields=(Field("ASQS", 0, 12), Field("ACQS", 16, 12))),
    # 64-bit registers written as two dwords, low first (what Linux does)
    Register("ASQ_LO", 0x28, 4), Register("ASQ_HI", 0x2C, 4),
    Register("ACQ_LO", 0x30, 4), Register("ACQ_HI", 0x34, 4),
], size=0x1000)

ADMIN_DELETE_SQ = 0x00
ADMIN_CREATE_SQ = 0x01
ADMIN_DELETE_CQ = 0x04
ADMIN_CREATE_CQ = 0x05
ADMIN_IDENTIFY = 0x06
NVM_READ = 0x02
PAGE = 4096
QUEUE_DEPTH = 16


class NvmeError(Exception):
    """A command completed with an error status."""

    def __init__(self, what: str, status: int) -> None:
        super().__init__(f"{what} failed: status {status:#x} "
                         f"(type {(status >> 8) & 7:#x}, code {status & 0xFF:#x})")
        self.status = status


class QueuePair:
    """A submission queue and its completion queue in DMA memory."""

    def __init__(self, ctrl: NvmeController, qid: int, depth: int,
                 vector: IrqVector | None) -> None:
        self.ctrl = ctrl
        self.qid = qid
        self.depth = depth
        self.vector = vector
        self.sq: DmaChunk = ctrl.pool.alloc(depth * 64, align=PAGE)
        self.cq: DmaChunk = ctrl.pool.alloc(depth * 16, align=PAGE)
        self.sq_tail = 0
        self.cq_head = 0
        self.phase = 1
        self.cid = 0
        stride = 4 << ctrl.dstrd
        self.sq_doorbell = 0x1000 + (2 * qid) * stride
        self.cq_doorbell = 0x1000 + (2 * qid + 1) * stride

    def submit(self, opcode: int, *, nsid: int = 0, prp1: int = 0, prp2: int = 0,
               cdw10: int = 0, cdw11: int = 0, cdw12: int = 0) -> int:
        """Write a 64-byte command at the tail and ring the doorbell."""
        self.cid = (self.cid + 1) & 0xFFFF
        cmd = struct.pack("<BBHI8x8xQQIIIIII", opcode, 0, self.cid, nsid, prp1, prp2,
                          cdw10, cdw11, cdw12, 0, 0, 0)
        self.sq.write(cmd, self.sq_tail * 64)
        self.sq_tail = (self.sq_tail + 1) % self.depth
        self.ctrl.bar0.write32(self.sq_doorbell, self.sq_tail)
        return self.cid

    def complete(self, cid: int, what: str, timeout: float = 5.0) -> int:
        """Wait for the completion of command ``cid``; returns its DW0."""
        deadline = time.monotonic() + timeout
        interrupts = 0
        while True:
            entry = self.cq.read(self.cq_head * 16, 16)
            dw0, _dw1, _sqhd, _sqid, got_cid, status = struct.unpack("<IIHHHH", entry)
            if status & 1 == self.phase:
                if self.vector is not None and not interrupts:
                    # The entry can be seen before its interrupt arrives
                    # (the message is a separate write): take it too, so
                    # that it is not mistaken for the next command's.
                    interrupts = self.vector.poll()
                    if not interrupts:
                        with contextlib.suppress(TimeoutError):
                            interrupts = self.vector.wait(0.5)
                self.ctrl.interrupts += interrupts
                self.cq_head = (self.cq_head + 1) % self.depth
                if self.cq_head == 0:
                    self.phase ^= 1
                self.ctrl.bar0.write32(self.cq_doorbell, self.cq_head)
                if got_cid != cid:
                    raise RuntimeError(f"{what}: completion for command {got_cid}, not {cid}")
                if status >> 1:
                    raise NvmeError(what, status >> 1)
                return int(dw0)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{what}: no completion within {timeout} s")
            if self.vector is not None:
                with contextlib.suppress(TimeoutError):
                    interrupts += self.vector.wait(remaining)
            else:
                time.sleep(0.0001)

    def command(self, what: str, opcode: int, **fields: int) -> int:
        """Submit and wait; returns DW0 of the completion."""
        return self.complete(self.submit(opcode, **fields), what)


@dataclass
class NvmeResult:
    """What a run of the driver found and measured."""

    version: str = ""
    model: str = ""
    serial: str = ""
    firmware: str = ""
    namespace_blocks: int = 0
    block_size: int = 0
    lba0: bytes = b""
    interrupts: int = 0
    timings_us: dict[str, float] = field(default_factory=dict)


class NvmeController:
    """An NVMe controller on an open, attached :class:`pyvfio.Device`."""

    def __init__(self, device: Device, space: pyvfio.IOAS | Container, *,
                 poll: bool = False, timeout: float = 5.0) -> None:
        self.device = device
        self.timeout = timeout
        self.bar0 = device.regions["BAR0"].io()
        self.regs = NVME_REGS.bind(self.bar0)
        device.config.enable(memory=True, bus_master=True)
        cap = self.regs.CAP.fields()
        self.dstrd = cap["DSTRD"]
        self.ready_timeout = max(timeout, cap["TO"] * 0.5)
        allocator = IovaAllocator.for_space(space) if isinstance(space, Container) else None
        self.pool = DmaPool.create(space, 16 * PAGE, allocator=allocator, min_align=64)
        self.interrupts = 0
        self.vectors: list[IrqVector] = []
        if not poll:
            self.vectors = device.irqs["MSIX"].enable(2)   # 0: admin CQ, 1: I/O CQ
        self.admin = QueuePair(self, 0, QUEUE_DEPTH, self.vectors[0] if self.vectors else None)
        self.io: QueuePair | None = None

    def _wait_ready(self, ready: int) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while self.regs.CSTS.get("RDY") != ready:
            if self.regs.CSTS.get("CFS"):
                raise RuntimeError("controller fatal status")
            if time.monotonic() > deadline:
                raise TimeoutError(f"CSTS.RDY did not become {ready}")
            time.sleep(0.001)

    def enable(self) -> None:
        """Reset the controller and start it with the admin queues."""
        if self.regs.CC.get("EN"):
            self.regs.CC.set("EN", 0)
        self._wait_ready(0)
        self.regs.AQA.write(ASQS=QUEUE_DEPTH - 1, ACQS=QUEUE_DEPTH - 1)
        self.regs.ASQ_LO.write(self.admin.sq.iova & 0xFFFFFFFF)
        self.regs.ASQ_HI.write(self.admin.sq.iova >> 32)
        self.regs.ACQ_LO.write(self.admin.cq.iova & 0xFFFFFFFF)
        self.regs.ACQ_HI.write(self.admin.cq.iova >> 32)
        self.regs.CC.write(EN=1, CSS=0, MPS=0, AMS=0, IOSQES=6, IOCQES=4)
        self._wait_ready(1)

    def identify(self, cns: int, nsid: int = 0) -> bytes:
        """Identify data structure ``cns`` (4 KiB)."""
        with self.pool.alloc(PAGE, align=PAGE) as data:
            self.admin.command(f"Identify CNS {cns}", ADMIN_IDENTIFY, nsid=nsid,
                               prp1=data.iova, cdw10=cns)
            return data.read()

    def create_io_queues(self) -> None:
        """Create I/O completion queue 1 (vector 1) and submission queue 1."""
        vector = self.vectors[1] if self.vectors else None
        io = QueuePair(self, 1, QUEUE_DEPTH, vector)
        ien = 1 if vector is not None else 0
        self.admin.command("Create I/O CQ", ADMIN_CREATE_CQ, prp1=io.cq.iova,
                           cdw10=(QUEUE_DEPTH - 1) << 16 | 1,
                           cdw11=(1 if vector is not None else 0) << 16 | ien << 1 | 1)
        self.admin.command("Create I/O SQ", ADMIN_CREATE_SQ, prp1=io.sq.iova,
                           cdw10=(QUEUE_DEPTH - 1) << 16 | 1, cdw11=1 << 16 | 1)
        self.io = io

    def read(self, lba: int, block_size: int, nsid: int = 1) -> bytes:
        """Read one block at ``lba``."""
        if self.io is None:
            self.create_io_queues()
        assert self.io is not None
        with self.pool.alloc(PAGE, align=PAGE) as data:
            self.io.command(f"Read LBA {lba}", NVM_READ, nsid=nsid, prp1=data.iova,
                            cdw10=lba & 0xFFFFFFFF, cdw11=lba >> 32, cdw12=0)
            return data.read(0, block_size)

    def shutdown(self) -> None:
        """Delete the I/O queues, shut the controller down and disable it."""
        try:
            if self.io is not None:
                self.admin.command("Delete I/O SQ", ADMIN_DELETE_SQ, cdw10=1)
                self.admin.command("Delete I/O CQ", ADMIN_DELETE_CQ, cdw10=1)
                self.io = None
            self.regs.CC.set("SHN", 1)
            deadline = time.monotonic() + self.ready_timeout
            while self.regs.CSTS.get("SHST") != 2 and time.monotonic() < deadline:
                time.sleep(0.001)
            self.regs.CC.write(0)
            self._wait_ready(0)
        finally:
            if self.vectors:
                self.device.irqs["MSIX"].disable()
            self.pool.close()


def _text(data: bytes) -> str:
    return data.decode("ascii", "replace").strip(" \0")


# -- opening the device ---------------------------------------------------------------------
def find_by_class(backend: Backend, class_code: int) -> list[str]:
    """PCI addresses of the functions with this class code."""
    return devices.find_devices(class_code=class_code, backend=backend)


def bind_vfio(backend: Backend, bdf: str) -> str | None:
    """Move ``bdf`` to vfio-pci (refused while the host uses it, e.g. a
    mounted namespace); returns the driver it had."""
    return binding.bind(bdf, backend=backend).previous_driver


def unbind_vfio(backend: Backend, bdf: str) -> None:
    """Give ``bdf`` back the driver it had before :func:`bind_vfio`."""
    binding.restore(bdf, backend=backend)


def run(bdf: str, backend: Backend, *, legacy: bool = False, poll: bool = False,
        out: Callable[[str], None] = print) -> NvmeResult:
    """Identify the controller at ``bdf`` (bound to vfio-pci) and read LBA 0."""
    result = NvmeResult()
    with pyvfio.open_attached(bdf, backend=backend, legacy=legacy) as (device, space):
        ctrl = NvmeController(device, space, poll=poll)
        try:
            vs = ctrl.regs.VS.fields()
            result.version = f"{vs['MJR']}.{vs['MNR']}.{vs['TER']}"
            start = time.perf_counter()
            ctrl.enable()
            result.timings_us["enable"] = (time.perf_counter() - start) * 1e6
            start = time.perf_counter()
            ident = ctrl.identify(1)
            result.timings_us["identify"] = (time.perf_counter() - start) * 1e6
            result.serial = _text(ident[4:24])
            result.model = _text(ident[24:64])
            result.firmware = _text(ident[64:72])
            out(f"nvme {bdf}: NVMe {result.version}, "
                f"{'polling' if poll else 'MSI-X interrupts'}")
            out(f"  model    {result.model}")
            out(f"  serial   {result.serial}")
            out(f"  firmware {result.firmware}")
            ns = ctrl.identify(0, nsid=1)
            result.namespace_blocks = int.from_bytes(ns[0:8], "little")
            lbaf = int.from_bytes(ns[128 + 4 * (ns[26] & 0xF):][:4], "little")
            result.block_size = 1 << ((lbaf >> 16) & 0xFF)
            out(f"  namespace 1: {result.namespace_blocks} blocks of {result.block_size} bytes")
            start = time.perf_counter()
            result.lba0 = ctrl.read(0, result.block_size)
            result.timings_us["read lba0"] = (time.perf_counter() - start) * 1e6
            out(f"  LBA 0: {result.lba0[:32].hex(' ')} ...")
        finally:
            result.interrupts = ctrl.interrupts
            ctrl.shutdown()
    out("  " + ", ".join(f"{k} {v:.0f} us" for k, v in result.timings_us.items())
        + f"; {result.interrupts} interrupts")
    return result


def fake_backend() -> tuple[Backend, str]:
    """A fake machine (pyvfio.fake) whose NVMe controller is on vfio-pci."""
    from pyvfio.fake import System

    backend = System("default").backend
    (bdf,) = find_by_class(backend, NVME_CLASS)
    bind_vfio(backend, bdf)
    return backend, bdf


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--fake", action="store_true", help="use pyvfio's fake kernel")
    where.add_argument("--bdf", help="PCI address of a real NVMe controller")
    ap.add_argument("--bind", action="store_true",
                    help="bind the device to vfio-pci for the run, give it back after")
    ap.add_argument("--legacy", action="store_true", help="type1 container instead of iommufd")
    ap.add_argument("--poll", action="store_true", help="poll completions instead of MSI-X")
    args = ap.parse_args(argv)
    bound = False
    if args.fake:
        backend, bdf = fake_backend()
    else:
        backend = pyvfio.default_backend()
        bdf = pyvfio.core.sysfs.normalize_bdf(args.bdf)
        if args.bind:
            bound = bind_vfio(backend, bdf) != "vfio-pci"
        elif pyvfio.core.sysfs.device_driver(bdf, backend) != "vfio-pci":
            print(f"{bdf} is not bound to vfio-pci (use --bind)", file=sys.stderr)
            return 2
    try:
        run(bdf, backend, legacy=args.legacy, poll=args.poll)
    except (pyvfio.VfioError, NvmeError, TimeoutError, RuntimeError) as exc:
        print(f"nvme: {exc}", file=sys.stderr)
        return 1
    finally:
        if bound:
            unbind_vfio(backend, bdf)
    return 0


if __name__ == "__main__":
    sys.exit(main())
