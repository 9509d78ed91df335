"""Benchmarks that run on the host: the fake kernel, the import, and the
MMIO accessors on anonymous RAM (``python3 bench/run.py --fake``)."""

from __future__ import annotations

import contextlib
import mmap
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import harness
from harness import REPO, Batch, Result, c_batch, calibrate, interleaved, per_op

import pyvfio
from pyvfio import ffi, lib
from pyvfio.backend.base import (
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    PROT_READ,
    PROT_WRITE,
    DirectIoctls,
    MemoryMap,
)
from pyvfio.backend.kernel import KernelBackend
from pyvfio.core.region import RegionMapping

PAGE = 4096
RW_IOAS = lib.IOMMU_IOAS_MAP_READABLE | lib.IOMMU_IOAS_MAP_WRITEABLE
EDU = "0000:00:02.0"  # in the fake's "minimal" topology
SCALES = (1_000, 10_000, 100_000)
#: Goals of the fake kernel (issue 13, goal 4).
FAKE_MAP_UNMAP_NS = 50e3  # a 4 KiB map+unmap, device attached or type1
FAKE_MACHINE_NS = 5e6  # System("default") + binding edu + open_attached
FAKE_IMPORT_NS = 50e6  # import pyvfio.fake in a fresh interpreter
FAKE_MMIO_NS = 3e3  # RegionMapping.read32 of a fake device's register


def _fresh_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


# -- import time -----------------------------------------------------------------------
def compile_bytecode() -> None:
    """Write pyvfio's bytecode cache, as an installation does (imports alone
    do not when PYTHONDONTWRITEBYTECODE is set, as it is in the test VM,
    whose file system is read-only: there this is a no-op and the cache
    written on the host is used)."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(pyvfio.__file__).parent)],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


_IMPORTTIME = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)$")


def import_time(reps: int, where: str = "host", goal: bool = True) -> list[Result]:
    """``import pyvfio`` in fresh interpreters: the wall clock of
    ``python -c "import pyvfio"`` minus that of ``python -c pass`` (pairs
    run back to back), and ``-X importtime``'s cumulative figure.  The goal
    (bench/goals.py) applies to the host's result (``goal`` is kept for
    callers; the goals are keyed by result id)."""
    env = _fresh_env()
    py = sys.executable

    def wall(code: str) -> float:
        t0 = time.perf_counter_ns()
        subprocess.run([py, "-c", code], env=env, check=True)
        return time.perf_counter_ns() - t0

    def importtime() -> tuple[float, dict[str, tuple[int, int]]]:
        proc = subprocess.run([py, "-X", "importtime", "-c", "import pyvfio"], env=env,
                              check=True, capture_output=True, text=True)
        total = 0.0
        mods: dict[str, tuple[int, int]] = {}
        for line in proc.stderr.splitlines():
            m = _IMPORTTIME.match(line)
            if m:
                mods[m.group(4)] = (int(m.group(1)), int(m.group(2)))
                if m.group(4) == "pyvfio":
                    total = int(m.group(2)) * 1000.0
        return total, mods

    compile_bytecode()
    wall("import pyvfio")  # warm the page cache
    bare, full, diff, cumulative = [], [], [], []
    runs: list[tuple[float, dict[str, tuple[int, int]]]] = []
    for r in range(reps):
        pair = [("bare", "pass"), ("full", "import pyvfio")]
        if r % 2:
            pair.reverse()
        got = {name: wall(code) for name, code in pair}
        bare.append(got["bare"])
        full.append(got["full"])
        diff.append(got["full"] - got["bare"])
        runs.append(importtime())
        cumulative.append(runs[-1][0])
    # The modules behind the median -X importtime run, by self time.
    median_run = sorted(runs, key=lambda x: x[0])[len(runs) // 2][1]
    top = sorted(((self_us, name) for name, (self_us, _c) in median_run.items()),
                 reverse=True)[:12]
    return [Result(
        f"{where}.import", "import pyvfio (fresh interpreter)", "ns",
        {"wall - bare interpreter": diff, "-X importtime cumulative": cumulative,
         "wall, python -c 'import pyvfio'": full, "wall, python -c pass": bare},
        params={"reps": reps, "top_self_us": [[n, s] for s, n in top]},
        notes="slowest modules by self time (-X importtime, µs): "
              + ", ".join(f"{n} {s}" for s, n in top[:8]),
    )]


#: What the ``pyvfio`` console script runs (pyproject.toml's entry point).
CLI_CODE = "import sys; from pyvfio.setup.cli import main; sys.exit(main())"


def _importtime_top(args: list[str], env: dict[str, str], n: int = 8) -> str:
    """The ``n`` modules with the largest self time (-X importtime, µs) in
    one run of ``python args``."""
    proc = subprocess.run([sys.executable, "-X", "importtime", *args], env=env, check=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    got = [m for m in map(_IMPORTTIME.match, proc.stderr.splitlines()) if m]
    top = sorted(got, key=lambda m: -int(m.group(1)))[:n]
    return ", ".join(f"{m.group(4)} {m.group(1)}" for m in top)


def cli_startup(reps: int, where: str = "host") -> Result:
    """``pyvfio --help`` and ``pyvfio status --json`` as the console script
    runs them, each in a fresh interpreter (bytecode cache written first,
    output discarded): the wall clock from start to exit, and ``python -c
    pass`` for reference, interleaved (the order rotated each repetition).
    ``status --json`` reads this machine's sysfs; the host has no VFIO.
    The CPU time (user + system, from ``RUSAGE_CHILDREN``) is less at the
    mercy of a busy host than the wall clock the goal is about."""
    env = _fresh_env()
    commands = {
        "pyvfio --help": ["-c", CLI_CODE, "--help"],
        "pyvfio status --json": ["-c", CLI_CODE, "status", "--json"],
        "python -c pass": ["-c", "pass"],
    }

    import resource

    def children_cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    def wall(args: list[str]) -> tuple[float, float]:
        """(wall clock, CPU time of the child) in ns."""
        c0 = children_cpu()
        t0 = time.perf_counter_ns()
        subprocess.run([sys.executable, *args], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return float(time.perf_counter_ns() - t0), (children_cpu() - c0) * 1e9

    compile_bytecode()
    for args in commands.values():
        wall(args)  # warm the page cache
    names = list(commands)
    samples: dict[str, list[float]] = {n: [] for n in names}
    samples.update({f"{n}, CPU time": [] for n in names})
    for r in range(reps):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            elapsed, cpu = wall(commands[name])
            samples[name].append(elapsed)
            samples[f"{name}, CPU time"].append(cpu)
    groups = "/sys/kernel/iommu_groups"
    n_groups = len(os.listdir(groups)) if os.path.isdir(groups) else 0
    return Result(
        f"{where}.cli", "pyvfio command start-up (fresh interpreter, wall clock)", "ns",
        samples, params={"reps": reps, "iommu_groups": n_groups},
        notes=f"{n_groups} IOMMU groups here; slowest imports of status --json (self, µs): "
              + _importtime_top(commands["pyvfio status --json"], env))


# -- MMIO accessors on anonymous RAM ---------------------------------------------------
#: RegionMapping.read32/write32 against a bare cffi accessor call (issue 13, goal 2)
MMIO_GOAL = 1.25
#: registers per block in the block-accessor benchmarks
BLOCK = 64


def ram_region(mem: MemoryMap) -> RegionMapping:
    """A RegionMapping over anonymous memory mapped by the kernel backend,
    as a whole BAR is: its accessors take the compiled path they take on
    a real device."""
    from types import SimpleNamespace

    region = SimpleNamespace(size=mem.length, name="RAM", _mapping=None,
                             device=SimpleNamespace(backend=KernelBackend()),
                             describe=lambda: "anonymous RAM")
    mapping = RegionMapping(region, [(0, mem.length, mem)], writable=True)  # type: ignore[arg-type]
    assert mapping.direct_path
    return mapping


def ram_accessors(exe: Path, reps: int, target_s: float, where: str = "host") -> list[Result]:
    """pyvfio's RegionMapping.read32/write32 and MemoryMap.read/write on
    anonymous RAM against a bare cffi call of the accessor and a C loop of
    volatile accesses: the accessors' own cost, without a device."""
    backend = KernelBackend()
    mem = backend.mmap(PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
    mapping = ram_region(mem)
    addr = mem.address
    read, write = mem.read, mem.write
    read32, write32 = lib.pyvfio_read32, lib.pyvfio_write32
    out = []
    try:
        for op, variants in (
            ("read32", {"pyvfio RegionMapping.read32": per_op(lambda: mapping.read32(0)),
                        "cffi lib.pyvfio_read32": per_op(lambda: read32(addr)),
                        "C volatile loop": c_batch(exe, "ram", key="read32_ns"),
                        "pyvfio MemoryMap.read": per_op(lambda: read(0, 4))}),
            ("write32", {"pyvfio RegionMapping.write32":
                         per_op(lambda: mapping.write32(4, 0x5A)),
                         "cffi lib.pyvfio_write32": per_op(lambda: write32(addr + 4, 0x5A)),
                         "C volatile loop": c_batch(exe, "ram", key="write32_ns"),
                         "pyvfio MemoryMap.write": per_op(lambda: write(4, 4, 0x5A))}),
        ):
            iters = {name: calibrate(fn, target_s, hi=50_000_000)
                     for name, fn in variants.items()}
            samples = interleaved(variants, iters, reps)
            names = list(variants)
            out.append(Result(
                f"{where}.ram_{op}", f"MMIO accessor {op} on anonymous RAM (accessor cost only)",
                "ns/op", samples, ratios=[(names[0], names[1],
                                           MMIO_GOAL if where == "host" else None),
                                          (names[1], names[2], None), (names[3], names[2], None)],
                params={"iters": iters, "reps": reps},
            ))
        out.append(ram_blocks(exe, mapping, reps, target_s, where))
    finally:
        mapping.close()
    return out


def ram_blocks(exe: Path, mapping: RegionMapping, reps: int, target_s: float,
               where: str = "host") -> Result:
    """read32_block/write32_block of BLOCK registers in one call against
    the same C loop and against a Python loop of read32/write32."""
    values = list(range(BLOCK))
    read32, write32 = mapping.read32, mapping.write32

    def py_reads() -> None:
        for i in range(0, 4 * BLOCK, 4):
            read32(i)

    def py_writes() -> None:
        for i, v in enumerate(values):
            write32(4 * i, v)

    c_args = (-1, 0, PAGE, 0, 4, 0, 4, BLOCK)
    variants = {
        "pyvfio read32_block": per_op(lambda: mapping.read32_block(0, BLOCK)),
        "C read loop": c_batch(exe, "block", *c_args, key="read_block_ns"),
        "pyvfio write32_block": per_op(lambda: mapping.write32_block(0, values)),
        "C write loop": c_batch(exe, "block", *c_args, key="write_block_ns"),
        "Python loop of read32": per_op(py_reads),
        "Python loop of write32": per_op(py_writes),
    }
    iters = {name: calibrate(fn, target_s, hi=5_000_000) for name, fn in variants.items()}
    samples = interleaved(variants, iters, reps)
    return Result(
        f"{where}.ram_block", f"MMIO blocks of {BLOCK} registers on anonymous RAM (per block)",
        "ns/op", samples,
        ratios=[("pyvfio read32_block", "C read loop", None),
                ("pyvfio write32_block", "C write loop", None),
                ("Python loop of read32", "pyvfio read32_block", None),
                ("Python loop of write32", "pyvfio write32_block", None)],
        params={"iters": iters, "reps": reps, "registers": BLOCK},
    )


# -- the objects layer over a kernel that does nothing ----------------------------------
#: objects-layer map+unmap on the no-op kernel (issue 13, goal 1): at most
#: this many ns, and this many times the two raw ioctls through backend.ioctl
OBJECTS_GOAL_NS = 1500.0
OBJECTS_GOAL_RATIO = 20.0

#: the compiled map/unmap helpers' twins that fill the struct and skip the syscall
DRY_IOCTLS = DirectIoctls(lib.pyvfio_dry_ioas_map, lib.pyvfio_dry_ioas_unmap,
                          lib.pyvfio_dry_dma_map, lib.pyvfio_dry_dma_unmap)


class NullBackend(KernelBackend):
    """Real fds (of /dev/null) but every ioctl succeeds at once: what is
    left of a map+unmap is pyvfio's own cost.  Like the kernel backend it
    offers compiled map/unmap calls: their twins without the syscall."""

    name = "null"

    def open(self, path: str, flags: int = os.O_RDWR | os.O_CLOEXEC) -> int:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)

    def ioctl(self, fd: int, request: int, arg: Any = 0) -> int:
        return 0

    def direct_ioctls(self) -> DirectIoctls:
        return DRY_IOCTLS


class NullIoctlBackend(NullBackend):
    """The no-op kernel offering no compiled calls: every map and unmap
    goes through backend.ioctl (the path of the fake and of wrappers)."""

    def direct_ioctls(self) -> None:  # type: ignore[override]
        return None


def objects_overhead(reps: int, target_s: float, where: str = "host") -> list[Result]:
    """map+unmap through the objects on the no-op kernel, with the compiled
    calls (the kernel backend's path) and through backend.ioctl, against
    the two raw ioctls through backend.ioctl."""
    backend, slow = NullBackend(), NullIoctlBackend()
    buf = mmap.mmap(-1, PAGE)
    va = int(ffi.cast("uintptr_t", ffi.from_buffer(buf)))
    out = []
    with contextlib.ExitStack() as stack:
        iommufd = stack.enter_context(pyvfio.IommuFd(backend=backend))
        cont = stack.enter_context(pyvfio.Container(backend=backend))
        s_iommufd = stack.enter_context(pyvfio.IommuFd(backend=slow))
        s_cont = stack.enter_context(pyvfio.Container(backend=slow))
        ioas, s_ioas = iommufd.ioas(), s_iommufd.ioas()
        cont._min_page = s_cont._min_page = PAGE  # no GET_INFO on the null kernel
        cmd, ucmd = ioas_cmds(ioas.id, va, PAGE, 0x100000)
        dmap, dunmap = type1_cmds(va, PAGE, 0x100000)
        fd, cfd, ioctl = iommufd.fd, cont.fd, backend.ioctl
        ioas_obj = "objects: ioas.map(buf, iova).unmap()"
        type1_obj = "objects: container.map_dma(buf, iova).unmap()"
        for name, obj, variants in (
            ("ioas", ioas_obj,
             {ioas_obj: per_op(lambda: ioas.map(buf, 0x100000).close()),
              "raw backend.ioctl": raw_ioas(ioctl, fd, cmd, ucmd),
              "objects through backend.ioctl":
              per_op(lambda: s_ioas.map(buf, 0x100000).close())}),
            ("type1", type1_obj,
             {type1_obj: per_op(lambda: cont.map_dma(buf, 0x100000).close()),
              "raw backend.ioctl": raw_type1(ioctl, cfd, dmap, dunmap),
              "objects through backend.ioctl":
              per_op(lambda: s_cont.map_dma(buf, 0x100000).close())}),
        ):
            iters = {n: calibrate(fn, target_s) for n, fn in variants.items()}
            samples = interleaved(variants, iters, reps)
            out.append(Result(
                f"{where}.null_{name}", f"{name} map+unmap on a no-op kernel (pyvfio's own cost)",
                "ns/op", samples,
                # the goals are the host's (issue 13, goal 1); in the guest
                # (TCG) the same rows only show what emulation does to Python
                ratios=[(obj, "raw backend.ioctl",
                         OBJECTS_GOAL_RATIO if where == "host" else None),
                        ("objects through backend.ioctl", "raw backend.ioctl", None)],
                limits=[(obj, OBJECTS_GOAL_NS)] if where == "host" else [],
                params={"iters": iters, "reps": reps},
                notes="the objects call the no-op kernel's compiled twins (struct filled, "
                      "no syscall); 'through backend.ioctl' is the fake's and wrappers' path",
            ))
    buf.close()
    return out


def _raw_pair(ioctl: Callable[[int, int, Any], int], fd: int, first: int, arg1: Any,
              second: int, arg2: Any) -> Batch:
    """A batch runner issuing two ioctls (map, unmap) per operation."""
    def run(iters: int) -> float:
        t0 = time.perf_counter_ns()
        for _ in range(iters):
            ioctl(fd, first, arg1)
            ioctl(fd, second, arg2)
        return (time.perf_counter_ns() - t0) / iters
    return run


def raw_ioas(ioctl: Callable[[int, int, Any], int], fd: int, cmd: Any, ucmd: Any) -> Batch:
    """IOMMU_IOAS_MAP + IOMMU_IOAS_UNMAP through ``ioctl`` (``backend.ioctl``)."""
    return _raw_pair(ioctl, fd, lib.IOMMU_IOAS_MAP, cmd, lib.IOMMU_IOAS_UNMAP, ucmd)


def raw_type1(ioctl: Callable[[int, int, Any], int], fd: int, dmap: Any, dunmap: Any) -> Batch:
    """VFIO_IOMMU_MAP_DMA + VFIO_IOMMU_UNMAP_DMA through ``ioctl``."""
    return _raw_pair(ioctl, fd, lib.VFIO_IOMMU_MAP_DMA, dmap, lib.VFIO_IOMMU_UNMAP_DMA, dunmap)


def ioas_cmds(ioas_id: int, va: int, size: int, iova: int) -> tuple[Any, Any]:
    cmd = ffi.new("struct iommu_ioas_map *")
    cmd.size = ffi.sizeof(cmd[0])
    cmd.flags = lib.IOMMU_IOAS_MAP_FIXED_IOVA | RW_IOAS
    cmd.ioas_id, cmd.user_va, cmd.length, cmd.iova = ioas_id, va, size, iova
    ucmd = ffi.new("struct iommu_ioas_unmap *")
    ucmd.size = ffi.sizeof(ucmd[0])
    ucmd.ioas_id, ucmd.iova, ucmd.length = ioas_id, iova, size
    return cmd, ucmd


def type1_cmds(va: int, size: int, iova: int) -> tuple[Any, Any]:
    dmap = ffi.new("struct vfio_iommu_type1_dma_map *")
    dmap.argsz = ffi.sizeof(dmap[0])
    dmap.flags = lib.VFIO_DMA_MAP_FLAG_READ | lib.VFIO_DMA_MAP_FLAG_WRITE
    dmap.vaddr, dmap.iova, dmap.size = va, iova, size
    dunmap = ffi.new("struct vfio_iommu_type1_dma_unmap *")
    dunmap.argsz = ffi.sizeof(dunmap[0])
    dunmap.iova, dunmap.size = iova, size
    return dmap, dunmap


# -- fake kernel: scaling with the number of live mappings -------------------------------
def _fake_system() -> Any:
    from pyvfio.fake import System

    system = System("minimal")
    b = system.backend
    b.sysfs_write(f"/sys/bus/pci/devices/{EDU}/driver_override", "vfio-pci")
    b.sysfs_write("/sys/bus/pci/drivers_probe", EDU)
    system.memlock_limit = -1  # 100k pinned pages are well past the default 64 MiB
    system.type1_params["dma_entry_limit"] = 1 << 20  # Linux's default is 65535
    return system


def fake_scaling(kind: str, reps: int, target_s: float, scales: tuple[int, ...] = SCALES,
                 log: Callable[[str], None] = print) -> Result:
    """Map+unmap of one 4 KiB page into an address space that already holds
    ``n`` live 4 KiB mappings, for each ``n`` in ``scales`` (a fresh fake
    system each): through raw ioctls and through the objects API (whose own
    bookkeeping is included).  The edu device is attached, so every map
    pins (validates) its user memory as on Linux; for the IOAS the same is
    also measured before the device is attached (bookkeeping only).

    Live mappings sit at every other page from IOVA 1 GiB, each backed by
    its own page of one large untouched anonymous mapping; each measured
    map goes to a random free page between them.
    """
    top = max(scales)
    region = mmap.mmap(-1, (top + 2) * PAGE)  # untouched: costs no memory
    base_va = int(ffi.cast("uintptr_t", ffi.from_buffer(region)))
    base_iova = 1 << 30
    rng = random.Random(1)
    samples: dict[str, list[float]] = {}
    iters_used: dict[str, int] = {}
    for n in scales:
        system = _fake_system()
        b = system.backend
        closers: list[Any] = []
        attach: Callable[[], None] | None
        unmap_all: Callable[[], object] | None = None
        try:
            if kind == "ioas":
                iommufd = pyvfio.IommuFd(backend=b)
                dev = pyvfio.Device.open(EDU, backend=b)
                closers += [dev, iommufd]
                dev.bind(iommufd)
                space = iommufd.ioas()
                unmap_all = space.unmap_all
                fd, m, u = iommufd.fd, lib.IOMMU_IOAS_MAP, lib.IOMMU_IOAS_UNMAP

                def obj_map(va: int, iova: int) -> Any:
                    return space.map_va(va, PAGE, iova)

                def cmds(va: int, iova: int) -> tuple[Any, Any]:
                    return ioas_cmds(space.id, va, PAGE, iova)

                def attach_device() -> None:
                    dev.attach(space)

                attach = attach_device
            else:
                cont = pyvfio.Container(backend=b)
                group = pyvfio.Group.for_device(EDU, backend=b)
                closers += [group, cont]
                group.set_container(cont)
                cont.set_iommu(pyvfio.IommuType.TYPE1v2)
                unmap_all = cont.unmap_all
                fd, m, u = cont.fd, lib.VFIO_IOMMU_MAP_DMA, lib.VFIO_IOMMU_UNMAP_DMA

                def obj_map(va: int, iova: int) -> Any:
                    return cont.map_dma_va(va, iova, PAGE)

                def cmds(va: int, iova: int) -> tuple[Any, Any]:
                    return type1_cmds(va, PAGE, iova)

                attach = None

            t0 = time.perf_counter()
            for i in range(n):  # through the objects API: it tracks them too
                obj_map(base_va + i * PAGE, base_iova + 2 * i * PAGE)
            log(f"bench: fake {kind}: {n} live mappings made in "
                f"{time.perf_counter() - t0:.1f} s")
            probe_va = base_va + top * PAGE
            slots = [base_iova + (2 * rng.randrange(n) + 1) * PAGE for _ in range(4096)]
            pairs = [cmds(probe_va, iova) for iova in slots]
            ioctl = b.ioctl

            def raw(iters: int) -> float:
                t0 = time.perf_counter_ns()
                for i in range(iters):
                    cmd, ucmd = pairs[i & 4095]
                    ioctl(fd, m, cmd)
                    ioctl(fd, u, ucmd)
                return (time.perf_counter_ns() - t0) / iters

            def objects(iters: int) -> float:
                t0 = time.perf_counter_ns()
                for i in range(iters):
                    obj_map(probe_va, slots[i & 4095]).unmap()
                return (time.perf_counter_ns() - t0) / iters

            k = f"{n // 1000}k"
            phases = [("", attach)] if attach is None else [(" no device", None), ("", attach)]
            for suffix, before in phases:
                if before is not None:
                    before()
                variants = {f"raw ioctl{suffix} @{k}": raw, f"objects{suffix} @{k}": objects}
                iters = {name: calibrate(fn, target_s, lo=4, hi=4096)
                         for name, fn in variants.items()}
                samples.update(interleaved(variants, iters, reps))
                iters_used.update(iters)
        finally:
            # One bulk unmap first: closing the address space would unmap the
            # mappings one by one, and each unmap scans every live mapping.
            if unmap_all is not None:
                t0 = time.perf_counter()
                unmap_all()
                log(f"bench: fake {kind}: unmapped all {n} in {time.perf_counter() - t0:.1f} s")
            for c in closers:
                c.close()
    region.close()
    lo, hi = min(scales) // 1000, top // 1000
    title = {"ioas": "fake iommufd IOAS", "type1": "fake type1 container"}[kind]
    ratios: list[tuple[str, str, float | None]] = [
        (f"raw ioctl @{hi}k", f"raw ioctl @{lo}k", 2.0),
        (f"objects @{hi}k", f"objects @{lo}k", 2.0)]
    if kind == "ioas":
        ratios += [(f"raw ioctl no device @{hi}k", f"raw ioctl no device @{lo}k", 2.0),
                   (f"objects no device @{hi}k", f"objects no device @{lo}k", 2.0)]
    # the fake's own cost of a map+unmap (with edu attached: every map pins)
    limits = [(f"raw ioctl @{lo}k", FAKE_MAP_UNMAP_NS), (f"objects @{lo}k", FAKE_MAP_UNMAP_NS)]
    return Result(
        f"fake.scaling_{kind}", f"{title}: 4 KiB map+unmap vs live mappings", "ns/op", samples,
        ratios=ratios, limits=limits,
        params={"iters": iters_used, "reps": reps, "scales": list(scales)},
        notes="O(log n) allows log(100k)/log(1k) = 1.67 (goal 2.0 with noise); O(n) gives ~100",
    )


# -- fake kernel: device open to ready ---------------------------------------------------
def fake_ready(reps: int, target_s: float) -> Result:
    """IommuFd + Device.open + bind + IOAS + attach on the fake kernel
    (closing is not timed)."""
    system = _fake_system()
    b = system.backend

    def batch(iters: int) -> float:
        total = 0
        for _ in range(iters):
            t0 = time.perf_counter_ns()
            iommufd = pyvfio.IommuFd(backend=b)
            dev = pyvfio.Device.open(EDU, backend=b)
            dev.bind(iommufd)
            dev.attach(iommufd.ioas())
            total += time.perf_counter_ns() - t0
            dev.close()
            iommufd.close()
        return total / iters

    name = "objects: IommuFd, Device.open(bdf), bind, ioas, attach"
    iters = {name: calibrate(batch, target_s, lo=4, hi=10_000)}
    return Result("fake.ready", "device open-to-ready on the fake kernel", "ns",
                  interleaved({name: batch}, iters, reps), params={"iters": iters, "reps": reps})


# -- fake kernel: a fresh machine per test, as the pytest plugin makes one ------------------------
def _bind_edu(system: Any) -> None:
    """Bind edu to vfio-pci as the plugin's vfio_device fixture does."""
    from pyvfio.core import sysfs
    from pyvfio.setup import binding

    b = system.backend
    group = sysfs.device_group(EDU, b)
    binding.bind_group(group, force=True, backend=b, state=binding.BindingState(None))


def fake_machine(reps: int, target_s: float) -> Result:
    """What each test of a driver pays on the fake: a fresh
    ``System("default")``, edu bound to vfio-pci (the plugin's binding),
    and ``toolkit.attach.open_attached`` (iommufd, cdev, bind, IOAS,
    attach; closed again at the end of the block).  Measured after the
    first machine of the process (see fake_first_machine for that one)."""
    from pyvfio.fake import System
    from pyvfio.toolkit.attach import open_attached

    def machine() -> None:
        system = System("default")
        _bind_edu(system)
        with open_attached(EDU, backend=system.backend):
            pass

    prepared = System("default")
    _bind_edu(prepared)

    def attached() -> None:
        with open_attached(EDU, backend=prepared.backend):
            pass

    machine()  # the first machine of the process imports what it needs
    total = "System('default') + bind edu + open_attached"
    variants = {total: per_op(machine), "System('default')": per_op(lambda: System("default")),
                "open_attached(edu) on a machine made before": per_op(attached)}
    iters = {n: calibrate(fn, target_s, lo=2, hi=10_000) for n, fn in variants.items()}
    return Result("fake.machine", "fake: a fresh machine and an attached device (per test)",
                  "ns", interleaved(variants, iters, reps), limits=[(total, FAKE_MACHINE_NS)],
                  params={"iters": iters, "reps": reps})


_FIRST = """
import time
t0 = time.perf_counter_ns()
import pyvfio.fake
t1 = time.perf_counter_ns()
from pyvfio.fake import System
from pyvfio.setup import binding
from pyvfio.toolkit.attach import open_attached
import pyvfio.core.sysfs
t2 = time.perf_counter_ns()
s = System("default")
t3 = time.perf_counter_ns()
b = s.backend
binding.bind_group(pyvfio.core.sysfs.device_group("%s", b), force=True, backend=b,
                   state=binding.BindingState(None))
t4 = time.perf_counter_ns()
with open_attached("%s", backend=b):
    pass
t5 = time.perf_counter_ns()
print(t1 - t0, t3 - t2, t4 - t3, t5 - t4)
""" % (EDU, EDU)


def fake_first_machine(reps: int) -> Result:
    """The first machine of a fresh interpreter (what a test session pays
    once): ``import pyvfio.fake``, then the first ``System("default")``,
    binding and ``open_attached``, which import the models, sysfs and the
    drivers they need."""
    env = _fresh_env()
    names = ("import pyvfio.fake", "first System('default')", "first bind edu",
             "first open_attached")
    samples: dict[str, list[float]] = {n: [] for n in names}
    samples["first machine in all"] = []
    for _ in range(reps):
        out = subprocess.run([sys.executable, "-c", _FIRST], env=env, check=True,
                             capture_output=True, text=True).stdout.split()
        for n, v in zip(names, out):
            samples[n].append(float(v))
        samples["first machine in all"].append(sum(float(v) for v in out[1:]))
    return Result("fake.first_machine", "fake: the first machine of a fresh interpreter", "ns",
                  samples, params={"reps": reps},
                  notes="wall clock inside the interpreter; the bytecode cache is written first")


def fake_import_time(reps: int) -> Result:
    """``import pyvfio.fake`` in fresh interpreters: the wall clock over a
    bare interpreter, ``-X importtime``'s cumulative figure, and the fake's
    own part (``pyvfio.fake``'s cumulative figure when ``pyvfio`` was
    imported first)."""
    env = _fresh_env()
    py = sys.executable

    def wall(code: str) -> float:
        t0 = time.perf_counter_ns()
        subprocess.run([py, "-c", code], env=env, check=True)
        return float(time.perf_counter_ns() - t0)

    def importtime(code: str, module: str) -> float:
        proc = subprocess.run([py, "-X", "importtime", "-c", code], env=env, check=True,
                              capture_output=True, text=True)
        for line in proc.stderr.splitlines():
            m = _IMPORTTIME.match(line)
            if m and m.group(4) == module:
                return int(m.group(2)) * 1000.0
        raise RuntimeError(f"-X importtime did not report {module}")

    compile_bytecode()
    wall("import pyvfio.fake")  # warm the page cache
    names = ("wall - bare interpreter", "-X importtime cumulative",
             "-X importtime, pyvfio.fake after pyvfio", "-X importtime, pyvfio")
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(reps):
        pair = [("bare", "pass"), ("full", "import pyvfio.fake")]
        if r % 2:
            pair.reverse()
        got = {name: wall(code) for name, code in pair}
        samples[names[0]].append(got["full"] - got["bare"])
        samples[names[1]].append(importtime("import pyvfio.fake", "pyvfio.fake"))
        samples[names[2]].append(importtime("import pyvfio; import pyvfio.fake", "pyvfio.fake"))
        samples[names[3]].append(importtime("import pyvfio", "pyvfio"))
    return Result("fake.import", "import pyvfio.fake (fresh interpreter)", "ns", samples,
                  limits=[(names[0], FAKE_IMPORT_NS), (names[1], FAKE_IMPORT_NS)],
                  params={"reps": reps},
                  notes="pyvfio.fake's cumulative figure includes import pyvfio (the package "
                        "it lives in); the third row is the fake's own part")


def fake_mmio(reps: int, target_s: float) -> Result:
    """``RegionMapping.read32``/``write32`` on edu's BAR0 mapped from the
    fake kernel (what a driver's register access costs in a unit test): the
    objects layer's accessor and the fake's mapping under it."""
    from pyvfio.fake import System
    from pyvfio.toolkit.attach import open_attached

    system = System("minimal")
    _bind_edu(system)
    with open_attached(EDU, backend=system.backend) as (dev, _space):
        dev.config.enable(memory=True)
        mapping = dev.regions["BAR0"].mmap()
        try:
            if mapping.read32(0) & 0xFFFF != 0x00ED:
                raise RuntimeError(f"edu BAR0 ident reads {mapping.read32(0):#x}")
            model = system.device(EDU).model
            log = model.mmio_log
            read32, write32 = mapping.read32, mapping.write32

            def reads(iters: int) -> float:
                t0 = time.perf_counter_ns()
                for _ in range(iters):
                    read32(0)
                ns = (time.perf_counter_ns() - t0) / iters
                log.clear()  # edu logs every access: keep the list short
                return ns

            def writes(iters: int) -> float:
                t0 = time.perf_counter_ns()
                for _ in range(iters):
                    write32(4, 0x5A)
                ns = (time.perf_counter_ns() - t0) / iters
                log.clear()
                return ns

            variants = {"RegionMapping.read32 (ident 0x0)": reads,
                        "RegionMapping.write32 (liveness 0x4)": writes}
            iters = {n: calibrate(fn, target_s) for n, fn in variants.items()}
            samples = interleaved(variants, iters, reps)
        finally:
            mapping.close()
    return Result("fake.mmio", "fake MMIO: edu BAR0 register accesses through the mapping",
                  "ns/op", samples, limits=[("RegionMapping.read32 (ident 0x0)", FAKE_MMIO_NS)],
                  params={"iters": iters, "reps": reps})


# -- fake kernel and setup layer: scaling with their inputs -----------------------------------
ALLOW_RANGES = 100_000
STATUS_DEVICES = 10_000
STRUCT_TAIL = 256 << 20


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter_ns()
    fn()
    return float(time.perf_counter_ns() - t0)


def fake_allow_iovas(reps: int, counts: tuple[int, ...] = (1_000, ALLOW_RANGES)) -> Result:
    """IOMMU_IOAS_ALLOW_IOVAS of ``n`` disjoint 4 KiB ranges, given in
    reverse order in plain user memory (an address, checked against the
    process's mappings as any user pointer), on the fake kernel."""
    from pyvfio.fake import System

    system = System("minimal")
    b = system.backend
    fd = b.open("/dev/iommu")
    alloc = ffi.new("struct iommu_ioas_alloc *", {"size": ffi.sizeof("struct iommu_ioas_alloc")})
    b.ioctl(fd, lib.IOMMU_IOAS_ALLOC, alloc)
    samples: dict[str, list[float]] = {}
    try:
        for n in counts:
            buf = mmap.mmap(-1, max(n, 1) * 16)
            arr = ffi.cast("struct iommu_iova_range *", ffi.from_buffer(buf))
            for i in range(n):
                arr[i].start = (1 << 30) + 2 * (n - 1 - i) * PAGE
                arr[i].last = arr[i].start + PAGE - 1
            cmd = ffi.new("struct iommu_ioas_allow_iovas *", {
                "size": ffi.sizeof("struct iommu_ioas_allow_iovas"),
                "ioas_id": alloc.out_ioas_id, "num_iovas": n,
                "allowed_iovas": int(ffi.cast("uintptr_t", arr))})
            samples[f"{n // 1000}k ranges"] = [
                _timed(lambda: b.ioctl(fd, lib.IOMMU_IOAS_ALLOW_IOVAS, cmd)) for _ in range(reps)]
            del arr
            buf.close()
    finally:
        b.close(fd)
    top = f"{max(counts) // 1000}k ranges"
    return Result("fake.allow_iovas", "fake IOMMU_IOAS_ALLOW_IOVAS with many ranges", "ns",
                  samples, limits=[(top, 2e9)], params={"reps": reps, "counts": list(counts)},
                  notes="reverse-ordered 4 KiB ranges in mmap'd user memory")


def setup_status(reps: int, devices: int = STATUS_DEVICES) -> Result:
    """``pyvfio --fake FILE status --json`` (``pyvfio.setup.cli.main``, output
    discarded) on the shipped default machine with ``devices`` more: PCIe
    root ports, each with a PF and 199 of its VFs (tests/fixtures/big_topology.py)."""
    import io
    import json
    import tempfile

    sys.path.insert(0, str(REPO / "tests"))
    from fixtures.big_topology import big_topology
    from pyvfio.setup.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.json"
        path.write_text(json.dumps(big_topology(devices)))

        def status() -> None:
            with contextlib.redirect_stdout(io.StringIO()):
                main(["--fake", str(path), "status", "--json"])

        name = f"status --json, default + {devices} devices"
        cpu = f"{name}, CPU time"
        samples: dict[str, list[float]] = {name: [], cpu: []}
        for _ in range(reps):
            c0 = time.process_time_ns()
            samples[name].append(_timed(status))
            samples[cpu].append(float(time.process_time_ns() - c0))
    return Result("setup.status_scale", "pyvfio status on a machine with many devices (fake)",
                  "ns", samples, limits=[(name, 5e9)], params={"reps": reps, "devices": devices},
                  notes="includes building the fake system from the topology file; the CPU "
                        "time is the process's (the wall clock counts a busy host's other jobs)")


def fake_struct_tail(reps: int, size: int = STRUCT_TAIL) -> Result:
    """IOMMU_IOAS_ALLOC with ``size`` (the struct's size field) ``size``
    bytes: copy_struct_from_user checks the zero tail past the kernel's
    struct (check_zeroed_user).  The memory is untouched private anonymous
    memory (reads see the zero page)."""
    import tracemalloc

    from pyvfio.fake import System

    system = System("minimal")
    b = system.backend
    fd = b.open("/dev/iommu")
    buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    where = ffi.from_buffer(buf)
    head = ffi.cast("struct iommu_ioas_alloc *", where)
    head.size = size
    address = int(ffi.cast("uintptr_t", where))
    times, peaks = [], []
    try:
        for _ in range(reps):
            tracemalloc.start()
            times.append(_timed(lambda: b.ioctl(fd, lib.IOMMU_IOAS_ALLOC, address)))
            peaks.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
        untraced = [_timed(lambda: b.ioctl(fd, lib.IOMMU_IOAS_ALLOC, address))
                    for _ in range(reps)]
    finally:
        b.close(fd)
        del head, where
        buf.close()
    name = f"{size >> 20} MiB struct"
    return Result("fake.struct_tail", "fake copy_struct_from_user of a 256 MiB struct size",
                  "ns", {name: untraced, f"{name}, under tracemalloc": times},
                  limits=[(name, 1e9)],
                  params={"reps": reps, "size": size, "peak_bytes": max(peaks)},
                  notes=f"peak Python allocation during the ioctl: {max(peaks) / 1024:.0f} KiB")


def run(reps: int, quick: bool, log: Callable[[str], None] = print) -> list[Result]:
    target = 0.05 if quick else 0.15
    exe = harness.build_c(log)
    results: list[Result] = []
    log("bench: import time")
    results += import_time(max(reps, 7))
    log("bench: pyvfio command start-up")
    results.append(cli_startup(max(reps, 7)))
    log("bench: MMIO accessors on anonymous RAM")
    results += ram_accessors(exe, reps, target)
    log("bench: objects layer on a no-op kernel")
    results += objects_overhead(reps, target)
    log("bench: fake device open-to-ready")
    results.append(fake_ready(reps, target))
    log("bench: import pyvfio.fake")
    results.append(fake_import_time(max(reps, 7)))
    log("bench: fake machine per test")
    results.append(fake_machine(reps, target))
    results.append(fake_first_machine(max(reps, 7)))
    log("bench: fake MMIO")
    results.append(fake_mmio(reps, target))
    scales = SCALES[:2] if quick else SCALES
    for kind in ("ioas", "type1"):
        results.append(fake_scaling(kind, reps, target, scales, log))
    log(f"bench: fake IOMMU_IOAS_ALLOW_IOVAS with {ALLOW_RANGES} ranges")
    results.append(fake_allow_iovas(reps))
    log(f"bench: fake copy_struct_from_user, {STRUCT_TAIL >> 20} MiB struct size")
    results.append(fake_struct_tail(reps))
    log(f"bench: pyvfio status with {STATUS_DEVICES} more devices")
    results.append(setup_status(1 if quick else 3))
    return results

