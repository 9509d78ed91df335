"""Benchmarks on the real kernel, run as root inside the test VM
(``python3 bench/run.py --guest`` boots the VM and runs this file in it).

The QEMU edu device (1234:11e8) is bound to vfio-pci for the run and given
back at the end.  pyvfio and the C program (bench/c/vfio_bench.c) work on
the same kernel objects: Python opens the iommufd and IOAS, the container
or the device, and the C program inherits the fd.

* IOAS map+unmap of 4 KiB and 2 MiB: iommufd, edu's cdev bound and attached
  (so every map pins the pages and fills the IOMMU page table).
* type1 map+unmap of 4 KiB and 2 MiB: a legacy container holding edu's group.
* MMIO read32 of edu's identification register (BAR0 + 0x0) and write32 of
  its liveness register (BAR0 + 0x4) through a mapping of BAR0.
* The igb loopback driver (examples/igb_loopback.py): time per frame and
  from the tail write to the RX interrupt, on QEMU's igb through vfio-pci
  and on the fake kernel's igb model, side by side.
* Device open-to-ready: open /dev/iommu, allocate an IOAS, open the cdev,
  bind, attach (closing is not timed).
* Interrupt latency: from the MMIO write that makes edu raise its MSI (its
  raise register, or a factorial whose completion interrupts) to a wait on
  the vector's eventfd returning: ``vector.wait()``, ``await
  vector.wait_async()`` and a blocking C ``read()`` of the same eventfd.
* For scale, the host suite's pyvfio-only benchmarks again (accessors on
  anonymous RAM, the objects layer on a no-op kernel) and ``import pyvfio``:
  set against the host's figures they show what the emulated CPU does to
  Python code (absolute times here are emulation-inflated; the ratios are
  what counts).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import harness
import host_suite
from harness import REPO, Batch, Result, c_batch, calibrate, interleaved, per_op

import pyvfio
from pyvfio import ffi, lib
from pyvfio.backend.base import (
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    MAP_SHARED,
    PROT_READ,
    PROT_WRITE,
)
from pyvfio.backend.kernel import KernelBackend

sys.path.insert(0, str(REPO / "tests" / "vm"))
import guestpci  # noqa: E402

PAGE = 4096
HUGE = 2 << 20
IOVA = 1 << 30  # 2 MiB aligned, clear of the IOMMU's reserved ranges
SIZES = {"4k": PAGE, "2m": HUGE}
#: objects-layer map+unmap against the C ioctl loop, by size (issue 13, goal 1)
MAP_GOALS = {"4k": 3.0, "2m": 1.2}
#: registers per block in the MMIO block benchmark (edu's 0x00..0x1c)
EDU_BLOCK = 8
IDENT, LIVENESS = 0x0, 0x4  # edu BAR0 registers
MAP_FIXED = 0x10
KB = KernelBackend()
Log = Callable[[str], None]


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class DmaMemory:
    """``size`` bytes of a memfd, mapped shared at a 2 MiB aligned address
    and touched.  The C program maps the same memfd (``fd``, inherited) the
    same way, so both sides pin the very same pages and the kernel's work
    (pinning, IOMMU page tables, which depend on where the pages lie) is the
    same.  It has ``address`` and ``length``, so ``ioas.map`` and
    ``container.map_dma`` take it as they take a ``DmaBuffer``."""

    closed = False

    def __init__(self, size: int) -> None:
        self.fd = os.memfd_create("pyvfio-bench")
        os.ftruncate(self.fd, size)
        # Reserve size + 2 MiB, then put the memfd at the aligned address in it.
        self._area = KB.mmap(size + HUGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
        self.address = self._area.address + (-self._area.address % HUGE)
        self.length = size
        err = ffi.new("int *")
        got = lib.pyvfio_mmap(ffi.cast("void *", self.address), size, PROT_READ | PROT_WRITE,
                              MAP_SHARED | MAP_FIXED, self.fd, 0, err)
        if got == ffi.NULL:
            raise OSError(err[0], os.strerror(err[0]))
        ffi.memmove(ffi.cast("char *", self.address), b"\x5a" * size, size)

    def close(self) -> None:
        self._area.close()  # unmaps the memfd's pages too
        os.close(self.fd)
        self.closed = True


def measure(rid: str, title: str, variants: dict[str, Batch], reps: int, target_s: float,
            ratios: list[tuple[str, str, float | None]], hi: int = 1_000_000,
            **params: Any) -> Result:
    """Calibrate every variant to batches of about ``target_s``, then time
    ``reps`` interleaved batches of each."""
    iters = {name: calibrate(fn, target_s, hi=hi) for name, fn in variants.items()}
    samples = interleaved(variants, iters, reps)
    return Result(rid, title, "ns/op", samples, ratios=ratios,
                  params={"iters": iters, "reps": reps, **params})


# -- iommufd: IOAS map+unmap and MMIO through the cdev -----------------------------------------
def iommufd_suite(exe: Path, bdf: str, reps: int, target_s: float, log: Log) -> list[Result]:
    out = []
    with pyvfio.IommuFd(backend=KB) as iommufd, pyvfio.Device.open(bdf, backend=KB) as dev:
        dev.bind(iommufd)
        ioas = iommufd.ioas()
        dev.attach(ioas)
        for label, size in SIZES.items():
            log(f"bench: IOAS map+unmap {label}")
            mem = DmaMemory(size)
            cmd, ucmd = host_suite.ioas_cmds(ioas.id, mem.address, size, IOVA)
            objects = "objects: ioas.map(buf, iova).unmap()"
            variants = {
                objects: per_op(lambda: ioas.map(mem, IOVA).close()),
                "raw backend.ioctl": host_suite.raw_ioas(KB.ioctl, iommufd.fd, cmd, ucmd),
                "C ioctl loop": c_batch(exe, "ioas", iommufd.fd, ioas.id, mem.fd, size, IOVA,
                                        pass_fds=(iommufd.fd, mem.fd)),
            }
            out.append(measure(
                f"guest.ioas_{label}", f"IOAS map+unmap {label.upper()}iB (iommufd, device "
                "attached)", variants, reps, target_s,
                [(objects, "C ioctl loop", MAP_GOALS[label]),
                 ("raw backend.ioctl", "C ioctl loop", None)],
                size=size, memory="memfd shared with the C program"))
            mem.close()
        out += mmio(exe, dev, reps, target_s, log)
    return out


def mmio(exe: Path, dev: pyvfio.Device, reps: int, target_s: float, log: Log) -> list[Result]:
    """read32/write32 on edu's BAR0: pyvfio's mapping accessors, the bare
    cffi accessor and C volatile accesses, all on mappings of the same BAR."""
    bar0 = dev.regions["BAR0"]
    dev.config.enable(memory=True)
    mapping = bar0.mmap()
    addr = mapping.address(0)
    if mapping.read32(IDENT) & 0xFFFF != 0x00ED:
        raise RuntimeError(f"edu BAR0 ident reads {mapping.read32(IDENT):#x}")
    read32, write32 = lib.pyvfio_read32, lib.pyvfio_write32
    c_args = (dev.fd, bar0.offset, PAGE, IDENT, LIVENESS)
    out = []
    for op, api, bare in (
        ("read32", per_op(lambda: mapping.read32(IDENT)), per_op(lambda: read32(addr + IDENT))),
        ("write32", per_op(lambda: mapping.write32(LIVENESS, 0x5A)),
         per_op(lambda: write32(addr + LIVENESS, 0x5A))),
    ):
        log(f"bench: MMIO {op}")
        name = f"pyvfio RegionMapping.{op}"
        variants = {
            name: api,
            f"cffi lib.pyvfio_{op}": bare,
            "C volatile access": c_batch(exe, "mmio", *c_args, key=f"{op}_ns",
                                         pass_fds=(dev.fd,)),
        }
        reg = "ident 0x0" if op == "read32" else "liveness 0x4"
        out.append(measure(
            f"guest.mmio_{op}", f"MMIO {op} on edu BAR0 ({reg})", variants, reps, target_s,
            [(name, f"cffi lib.pyvfio_{op}", host_suite.MMIO_GOAL),
             (name, "C volatile access", None), (f"cffi lib.pyvfio_{op}", "C volatile access",
                                                None)], hi=5_000_000))
    log("bench: MMIO blocks")
    values = [0x5A + i for i in range(EDU_BLOCK)]
    variants = {
        "pyvfio read32_block": per_op(lambda: mapping.read32_block(IDENT, EDU_BLOCK)),
        "C read loop": c_batch(exe, "block", dev.fd, bar0.offset, PAGE, IDENT, 4, LIVENESS, 0,
                               EDU_BLOCK, key="read_block_ns", pass_fds=(dev.fd,)),
        "pyvfio write32_block": per_op(lambda: mapping.write32_block(LIVENESS, values, stride=0)),
        "C write loop": c_batch(exe, "block", dev.fd, bar0.offset, PAGE, IDENT, 4, LIVENESS, 0,
                                EDU_BLOCK, key="write_block_ns", pass_fds=(dev.fd,)),
    }
    out.append(measure(
        "guest.mmio_block", f"MMIO blocks of {EDU_BLOCK} registers on edu BAR0 (reads of "
        f"0x0..{4 * EDU_BLOCK - 4:#x}, writes to liveness 0x4; per block)", variants, reps,
        target_s, [("pyvfio read32_block", "C read loop", None),
                   ("pyvfio write32_block", "C write loop", None)], hi=1_000_000))
    mapping.close()
    return out


# -- legacy type1 container -------------------------------------------------------------------
def type1_suite(exe: Path, bdf: str, reps: int, target_s: float, log: Log) -> list[Result]:
    out = []
    with pyvfio.Container(backend=KB) as cont, pyvfio.Group.for_device(bdf, backend=KB) as grp:
        grp.set_container(cont)
        cont.set_iommu(pyvfio.IommuType.TYPE1v2)
        for label, size in SIZES.items():
            log(f"bench: type1 map+unmap {label}")
            mem = DmaMemory(size)
            dmap, dunmap = host_suite.type1_cmds(mem.address, size, IOVA)
            objects = "objects: container.map_dma(buf, iova).unmap()"
            variants = {
                objects: per_op(lambda: cont.map_dma(mem, IOVA).close()),
                "raw backend.ioctl": host_suite.raw_type1(KB.ioctl, cont.fd, dmap, dunmap),
                "C ioctl loop": c_batch(exe, "type1", cont.fd, mem.fd, size, IOVA,
                                        pass_fds=(cont.fd, mem.fd)),
            }
            out.append(measure(
                f"guest.type1_{label}", f"type1 map+unmap {label.upper()}iB (legacy "
                "container + group)", variants, reps, target_s,
                [(objects, "C ioctl loop", MAP_GOALS[label]),
                 ("raw backend.ioctl", "C ioctl loop", None)],
                size=size, memory="memfd shared with the C program"))
            mem.close()
    return out


# -- interrupts ---------------------------------------------------------------------------------
EDU_FACTORIAL, EDU_STATUS, EDU_IRQ_RAISE, EDU_IRQ_ACK = 0x08, 0x20, 0x60, 0x64
EDU_STATUS_IRQFACT, FACT_IRQ, RAISE_IRQ = 0x80, 0x1, 0x2
FACT_N = 10  # the factorial edu computes (its thread's work is the same for every waiter)


def interrupts(exe: Path, bdf: str, reps: int, target_s: float, log: Log) -> list[Result]:
    """edu's MSI to a waiter returning, per interrupt: t0 just before the
    MMIO write that makes edu interrupt, t1 when the wait returns, then the
    acknowledge (not timed).  The raise register interrupts during the write
    itself (the count is there when the wait starts); a factorial interrupts
    when edu's thread has computed it, while the waiter sleeps.  Python
    writes through the bare cffi accessor (what ``RegionMapping.write32``
    costs on top is the MMIO benchmark's business), C with a volatile
    store; both wait on the same vector's eventfd."""
    out = []
    with pyvfio.IommuFd(backend=KB) as iommufd, pyvfio.Device.open(bdf, backend=KB) as dev:
        dev.bind(iommufd)
        dev.attach(iommufd.ioas())
        dev.config.enable(memory=True, bus_master=True)  # an MSI is a DMA write
        bar0 = dev.regions["BAR0"]
        mapping = bar0.mmap()
        addr = mapping.address(0)
        write32 = lib.pyvfio_write32
        msi = dev.irqs["MSI"]
        (vector,) = msi.enable()
        wait, wait_async = vector.wait, vector.wait_async
        try:
            for label, reg, value, ack, n in (
                    ("raise", EDU_IRQ_RAISE, RAISE_IRQ, RAISE_IRQ, 0),
                    ("factorial", EDU_FACTORIAL, FACT_N, FACT_IRQ, FACT_N)):
                log(f"bench: interrupt latency ({label})")

                status = EDU_STATUS_IRQFACT if n else 0

                def blocking(iters: int, reg: int = reg, value: int = value,
                             ack: int = ack, status: int = status) -> float:
                    write32(addr + EDU_STATUS, status)  # each batch: whatever ran before
                    vector.poll()  # nothing stale
                    total = 0
                    for _ in range(iters):
                        t0 = time.perf_counter_ns()
                        write32(addr + reg, value)
                        wait()  # as C's read(): no timeout (checked below that it comes)
                        total += time.perf_counter_ns() - t0
                        write32(addr + EDU_IRQ_ACK, ack)
                    return total / iters

                def in_asyncio(iters: int, reg: int = reg, value: int = value,
                               ack: int = ack, status: int = status) -> float:
                    async def loop() -> float:
                        total = 0
                        for _ in range(iters):
                            t0 = time.perf_counter_ns()
                            write32(addr + reg, value)
                            await wait_async()
                            total += time.perf_counter_ns() - t0
                            write32(addr + EDU_IRQ_ACK, ack)
                        return total / iters

                    write32(addr + EDU_STATUS, status)
                    vector.poll()
                    return asyncio.run(loop())

                # One interrupt with a timeout first: a device that does not
                # interrupt fails here instead of hanging the blocking waits.
                write32(addr + EDU_STATUS, EDU_STATUS_IRQFACT if n else 0)
                vector.poll()
                write32(addr + reg, value)
                vector.wait(10.0)
                write32(addr + EDU_IRQ_ACK, ack)
                block, aio, c = ("pyvfio vector.wait()", "pyvfio await vector.wait_async()",
                                 "C blocking read()")
                variants = {
                    block: blocking, aio: in_asyncio,
                    c: c_batch(exe, "irq", dev.fd, bar0.offset, PAGE, vector.fd, n,
                               pass_fds=(dev.fd, vector.fd)),
                }
                what = ("raise register 0x60: MSI during the write" if not n else
                        f"factorial of {FACT_N} done: MSI while the waiter sleeps")
                out.append(measure(
                    f"guest.irq_{label}", f"edu MSI to a waiter returning ({what})",
                    variants, reps, target_s, [(block, c, None), (aio, c, None)],
                    hi=20_000, fact_n=n))
        finally:
            msi.disable()
            mapping.write32(EDU_STATUS, 0)
            mapping.close()
    return out


# -- device open-to-ready ---------------------------------------------------------------------
def ready(exe: Path, bdf: str, reps: int, iters: int, log: Log) -> Result:
    """Open-to-ready on the cdev path; per batch the median of ``iters``
    set-ups (as the C program reports it).  Nothing else holds the device
    or its group open meanwhile (the kernel allows one user at a time)."""
    log("bench: device open-to-ready")
    cdev = guestpci.vfio_cdev(bdf)
    if cdev is None:
        raise RuntimeError(f"{bdf} has no vfio cdev")

    def python(device: str) -> Batch:
        def run(n: int) -> float:
            times = []
            for _ in range(n):
                t0 = time.perf_counter_ns()
                with pyvfio.IommuFd(backend=KB) as iommufd, \
                        pyvfio.Device.open(device, backend=KB) as dev:
                    dev.bind(iommufd)
                    dev.attach(iommufd.ioas())
                    times.append(time.perf_counter_ns() - t0)
            return statistics.median(times)
        return run

    by_bdf = "objects: IommuFd, Device.open(bdf), bind, ioas, attach"
    by_path = "objects: the same with Device.open(cdev path)"
    variants = {by_bdf: python(bdf), by_path: python(str(cdev)),
                "C open/ioctl sequence": c_batch(exe, "ready", cdev, key="ready_ns")}
    samples = interleaved(variants, iters, reps)
    return Result("guest.ready", "device open-to-ready (iommufd + cdev, edu)", "ns", samples,
                  ratios=[(by_bdf, "C open/ioctl sequence", None),
                          (by_path, "C open/ioctl sequence", None)],
                  params={"iters": iters, "reps": reps, "cdev": str(cdev)},
                  notes="median of the set-ups in each batch; the kernel's part includes "
                        "vfio-pci enabling edu, with a secondary bus reset (its reset_method)")


# -- the userspace NIC driver: igb in MAC loopback -----------------------------------------------
def igb_loopback(reps: int, frames: int, log: Log) -> list[Result]:
    """examples/igb_loopback.py, side by side on the real kernel (QEMU's
    igb on vfio-pci) and on the fake kernel's igb model in the same guest:
    time per frame (transmit, RX interrupt, compare, give the descriptor
    back) and the mean time from the tail write to the RX interrupt."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("igb_loopback", REPO / "examples" / "igb_loopback.py")
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = example  # its dataclasses look their module up
    spec.loader.exec_module(example)
    bdf = guestpci.find_one(*guestpci.IGB)
    guestpci.bind_vfio(bdf)
    log(f"bench: igb {bdf} on vfio-pci, {frames} frames x {reps} in MAC loopback")
    real, fake = "real kernel, QEMU igb", "fake kernel, igb model"
    per_frame: dict[str, list[float]] = {real: [], fake: []}
    latency: dict[str, list[float]] = {real: [], fake: []}
    fake_backend, fake_bdf = example.fake_backend()
    try:
        for r in range(reps):
            for name, backend, where in ((real, KB, bdf), (fake, fake_backend, fake_bdf))[::1 if r % 2 else -1]:
                result = example.run(where, backend, frames=frames, out=lambda _s: None)
                if not result.ok:
                    raise RuntimeError(f"igb loopback failed on the {name}: {result}")
                per_frame[name].append(1e6 / result.frames_per_second)
                latency[name].append(result.irq_latency_us)
    finally:
        guestpci.unbind_vfio(bdf)
    ratios: list[tuple[str, str, float | None]] = [(real, fake, None)]
    return [
        Result("guest.igb_frame", "igb MAC loopback: one frame sent, received on its MSI-X "
               "interrupt (asyncio) and compared", "us/frame", per_frame, ratios=ratios,
               params={"frames": frames, "reps": reps},
               notes="frames/s = 1e6 / this; one frame in flight"),
        Result("guest.igb_irq_latency", "igb MAC loopback: tail write to RX interrupt seen in "
               "the event loop", "us", latency, ratios=ratios, params={"frames": frames, "reps": reps}),
    ]


def run(exe: Path, reps: int, quick: bool, log: Log = _log) -> list[Result]:
    target = 0.05 if quick else 0.15
    bdf = guestpci.find_one(*guestpci.EDU)
    group = guestpci.bind_vfio(bdf)
    log(f"bench: edu {bdf} on vfio-pci, IOMMU group {group}")
    results: list[Result] = []
    try:
        results += iommufd_suite(exe, bdf, reps, target, log)
        results += type1_suite(exe, bdf, reps, target, log)
        results.append(ready(exe, bdf, reps, 3 if quick else 5, log))
        try:
            results += interrupts(exe, bdf, reps, target, log)
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:  # the rest counts
            log(f"bench: interrupt latency failed: {exc!r}")
    finally:
        guestpci.unbind_vfio(bdf)
        log(f"bench: edu {bdf} given back (driver: {guestpci.device_info(bdf).driver})")
    results += igb_loopback(3 if quick else reps, 100 if quick else 300, log)
    # pyvfio's own cost under this CPU: what emulation does to Python (against the host suite)
    log("bench: accessors on anonymous RAM, objects layer on a no-op kernel")
    results += host_suite.ram_accessors(exe, reps, target, where="guest")
    results += host_suite.objects_overhead(reps, target, where="guest")
    log("bench: import time")
    results += host_suite.import_time(3 if quick else 5, where="guest", goal=False)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="pyvfio benchmarks on the real kernel "
                                 "(inside the test VM; use bench/run.py --guest)")
    ap.add_argument("--json", required=True, metavar="FILE", help="write the results here")
    ap.add_argument("--exe", type=Path, help="the C program built on the host "
                    "(default: build or find it)")
    ap.add_argument("--reps", type=int, default=9, help="repetitions (default 9)")
    ap.add_argument("--quick", action="store_true", help="shorter batches and fewer set-ups")
    ap.add_argument("--runs", type=int, default=1, help="full runs, one after the other "
                    "(default 1)")
    args = ap.parse_args(argv)
    if os.environ.get("PYVFIO_GUEST") != "1" or os.geteuid() != 0:
        ap.error("runs as root inside the test VM only (python3 bench/run.py --guest)")
    exe = args.exe or harness.build_c(_log)
    harness.check_layout(exe)
    runs = []
    for n in range(args.runs):
        if args.runs > 1:
            _log(f"bench: guest suite, run {n + 1} of {args.runs}")
        t0 = time.monotonic()
        machine = harness.machine()
        results = run(exe, args.reps, args.quick)
        runs.append({"machine": machine, "wall_s": time.monotonic() - t0,
                     "results": [r.to_json() for r in results]})
    Path(args.json).write_text(json.dumps({"runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
