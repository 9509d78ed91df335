"""Timing, result records and the C baseline's build, shared by the suites.

Method (the same for every benchmark):

* Each variant of a benchmark (pyvfio's objects API, the raw
  ``backend.ioctl`` path, the C program) is timed in **batches**: one batch
  runs the operation ``iters`` times between two clock reads and yields the
  time per operation.
* Batches of all variants are **interleaved**: repetition ``r`` runs one
  batch of each variant, in an order rotated every repetition, so that
  drifts of the machine (other load, frequency) hit every variant alike.
* The reported figure is the **median** over repetitions; ratios are
  ratios of medians measured in the same run.  Timing never appears in the
  test suite.
"""

from __future__ import annotations

import hashlib
import os
import platform
import pwd
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
# The pyvfio measured is this checkout's, also in a git worktree whose venv
# has another checkout installed (an editable install's finder comes last).
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
C_SOURCE = BENCH / "c" / "vfio_bench.c"
CFLAGS = ("-O2", "-Wall", "-Wextra")


# -- results -------------------------------------------------------------------------
@dataclass
class Result:
    """One benchmark: per-variant samples (one per repetition) in ``unit``."""

    id: str
    title: str
    unit: str  # "ns/op", "ms", ...
    samples: dict[str, list[float]]
    #: (numerator variant, denominator variant, goal or None) ratios to report
    ratios: list[tuple[str, str, float | None]] = field(default_factory=list)
    #: absolute goals: (variant, maximum in ``unit``)
    limits: list[tuple[str, float]] = field(default_factory=list)
    notes: str = ""
    params: dict[str, Any] = field(default_factory=dict)

    def median(self, variant: str) -> float:
        return statistics.median(self.samples[variant])

    def spread(self, variant: str) -> tuple[float, float]:
        """(min, max) of the samples."""
        values = self.samples[variant]
        return min(values), max(values)

    def ratio(self, num: str, den: str) -> float:
        return self.median(num) / self.median(den)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["medians"] = {v: self.median(v) for v in self.samples}
        out["ratio_values"] = {f"{n}/{d}": self.ratio(n, d) for n, d, _ in self.ratios}
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Result:
        return cls(data["id"], data["title"], data["unit"],
                   {k: list(v) for k, v in data["samples"].items()},
                   [tuple(r) for r in data["ratios"]],
                   [tuple(x) for x in data["limits"]],
                   data.get("notes", ""), data.get("params", {}))


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = ""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                       "")
    except OSError:
        pass
    return {
        "where": "guest" if os.environ.get("PYVFIO_GUEST") == "1" else "host",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "loadavg": os.getloadavg(),
    }


# -- timing ----------------------------------------------------------------------------
#: A batch runner: called with ``iters``, returns nanoseconds per operation.
Batch = Callable[[int], float]


def calibrate(batch: Batch, target_s: float, lo: int = 10, hi: int = 1_000_000) -> int:
    """Iterations for one batch of about ``target_s`` seconds (probing with
    a growing batch; the probes double as warm-up)."""
    iters = lo
    while True:
        ns = batch(iters)
        if ns * iters >= target_s * 1e9 / 4 or iters >= hi:
            break
        iters *= 4
    return max(lo, min(hi, int(target_s * 1e9 / max(ns, 1.0))))


def interleaved(variants: Mapping[str, Batch], iters: int | Mapping[str, int],
                reps: int) -> dict[str, list[float]]:
    """``reps`` batches of every variant (``iters`` operations each: one
    count, or one per variant), the order rotated each repetition."""
    names = list(variants)
    counts = dict.fromkeys(names, iters) if isinstance(iters, int) else dict(iters)
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(reps):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            out[name].append(variants[name](counts[name]))
    return out


def per_op(fn: Callable[[], object]) -> Batch:
    """A batch runner calling ``fn`` once per operation."""
    def run(iters: int) -> float:
        t0 = time.perf_counter_ns()
        for _ in range(iters):
            fn()
        return (time.perf_counter_ns() - t0) / iters
    return run


# -- the C baseline -------------------------------------------------------------------
def cache_dir() -> Path:
    """pyvfio's cache (``$PYVFIO_CACHE_DIR`` or the user's ``~/.cache/pyvfio``;
    the home directory comes from the password database because the test
    guest runs with HOME=/tmp)."""
    env = os.environ.get("PYVFIO_CACHE_DIR")
    if env:
        return Path(env)
    return Path(pwd.getpwuid(os.getuid()).pw_dir) / ".cache" / "pyvfio"


def uapi_cflags() -> list[str]:
    """Compiler flags selecting Linux >= 7.3 uAPI headers (the test suite's
    finder: the system's, else cached or fetched Debian linux-libc-dev)."""
    os.environ.setdefault("PYVFIO_CACHE_DIR", str(cache_dir()))
    sys.path.insert(0, str(REPO / "tests"))
    try:
        import uapi_headers  # needs the test extra (pycparser, pytest)
    finally:
        sys.path.pop(0)
    return list(uapi_headers.locate_headers().cflags)


def build_c(log: Callable[[str], None] = print) -> Path:
    """Compile bench/c/vfio_bench.c (cached by source and flags) and check
    its struct sizes and ioctl numbers against pyvfio's bindings."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or "cc"
    flags = [*CFLAGS, *uapi_cflags()]
    key = hashlib.sha256(C_SOURCE.read_bytes() + "\0".join([cc, *flags]).encode()).hexdigest()
    for root in (cache_dir() / "bench", Path(tempfile.gettempdir()) / "pyvfio-bench"):
        exe = root / key[:16] / "vfio_bench"
        if exe.exists():
            break
        try:
            exe.parent.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue  # read-only (the guest sees the host's cache read-only)
        tmp = exe.with_suffix(f".tmp{os.getpid()}")
        cmd = [cc, *flags, "-o", str(tmp), str(C_SOURCE)]
        log("bench: " + " ".join(cmd))
        subprocess.run(cmd, check=True)
        tmp.rename(exe)
        break
    else:  # pragma: no cover - no writable place at all
        raise RuntimeError("no writable directory for the C benchmark program")
    check_layout(exe)
    return exe


def check_layout(exe: Path) -> None:
    """The C program and pyvfio must issue the very same requests."""
    from pyvfio import ffi, lib

    out = run_c(exe, "layout")
    want = {
        "iommu_ioas_map": ffi.sizeof("struct iommu_ioas_map"),
        "iommu_ioas_unmap": ffi.sizeof("struct iommu_ioas_unmap"),
        "vfio_iommu_type1_dma_map": ffi.sizeof("struct vfio_iommu_type1_dma_map"),
        "vfio_iommu_type1_dma_unmap": ffi.sizeof("struct vfio_iommu_type1_dma_unmap"),
        "IOMMU_IOAS_MAP": lib.IOMMU_IOAS_MAP,
        "IOMMU_IOAS_UNMAP": lib.IOMMU_IOAS_UNMAP,
        "VFIO_IOMMU_MAP_DMA": lib.VFIO_IOMMU_MAP_DMA,
        "VFIO_IOMMU_UNMAP_DMA": lib.VFIO_IOMMU_UNMAP_DMA,
    }
    got = {k: int(v) for k, v in out.items()}
    if got != want:
        raise RuntimeError(f"C program and pyvfio disagree: C {got}, pyvfio {want}")


def run_c(exe: Path, *args: object, pass_fds: tuple[int, ...] = ()) -> dict[str, float]:
    """Run the C program; its ``key=value`` output line as a dict."""
    proc = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True,
                          pass_fds=pass_fds, timeout=120)
    if proc.returncode:
        raise RuntimeError(f"{exe.name} {' '.join(map(str, args))}: exit {proc.returncode}: "
                           f"{proc.stderr.strip()}")
    line = proc.stdout.strip().splitlines()[-1]
    return {k: float(v) for k, v in (item.split("=", 1) for item in line.split())}


def c_batch(exe: Path, mode: str, *args: object, key: str = "op_ns",
            pass_fds: tuple[int, ...] = ()) -> Batch:
    """A batch runner that runs the C program for ``iters`` iterations (the
    program's own clock; process start-up is not timed)."""
    def run(iters: int) -> float:
        return run_c(exe, mode, *args, iters, pass_fds=pass_fds)[key]
    return run
