"""Kernel allocation failures walked over pyvfio's real-kernel sequences.

In the spirit of the kernel's own iommufd fail-nth self-test: run a
sequence that succeeds, then run it again and again with the N-th
fault-injectable kernel allocation of this thread made to fail
(``/proc/self/task/<tid>/fail-nth``, CONFIG_FAULT_INJECTION, with slab and
page allocations made eligible through debugfs), for N = 1, 2, ... until a
run completes without reaching the N-th allocation.  Every run checks
that

* the failure reached the caller as :class:`pyvfio.VfioError` (or as an
  OSError with an errno that came out of a pyvfio call, see
  :func:`_classify`; anything else is recorded and fails the test at the
  end of the walk);
* nothing leaked that the kernel can show: this process's open files
  (``/proc/self/fd``), its pinned and locked pages (``VmPin:`` and
  ``VmLck:`` in ``/proc/self/status``: iommufd charges ``pinned_vm``, the
  type1 container ``locked_vm``), and no kernel warning or oops in the
  kernel log;
* the device is usable again: a run that fails *without* an injected
  failure (the next run opening the device, for instance) fails the test,
  and a clean run after the walk must succeed.

The walks run in the test VM (tests/vm, a kernel with CONFIG_FAILSLAB,
CONFIG_FAIL_PAGE_ALLOC and CONFIG_FAULT_INJECTION_DEBUG_FS); each prints
how many injection points it walked.  ``PYVFIO_FAIL_NTH_CAP`` overrides
the limit on N (:data:`CAP`).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import gc
import json
import os
import threading
import time
import traceback
from collections import Counter
from typing import Callable, ContextManager, Iterator, NoReturn, Protocol

import pytest

import pyvfio
from pyvfio import Container, Device, DmaBuffer, Group, IommuFd, IommuType, VfioError
from pyvfio.backend import Backend
from pyvfio.backend.kernel import KernelBackend
from pyvfio.core import sysfs

pytestmark = pytest.mark.kernel

KB = KernelBackend()

#: The largest N tried.  The kernel's own iommufd walk stops at 400; these
#: sequences also open sysfs files, the vfio-pci device and a type1
#: container, so the limit is higher.  Reaching it fails the test: raise it
#: when the kernel has grown more injection points on these paths.
CAP = int(os.environ.get("PYVFIO_FAIL_NTH_CAP", "1000"))

BUFFER_SIZE = 0x10000  # 64 KiB of DMA memory
IOVA = 0x100000        # a fixed IOVA, below edu's 28-bit DMA limit
MSI_TIMEOUT = 5.0

DEBUGFS = "/sys/kernel/debug"
#: debugfs knobs that make every GFP_KERNEL allocation eligible for the
#: injected failure: by default the fault attributes skip allocations that
#: may sleep (ignore-gfp-wait), highmem/user pages (ignore-gfp-highmem) and
#: order-0 pages (min-order 1).
KNOBS = (
    ("failslab/ignore-gfp-wait", "N"),
    ("fail_page_alloc/ignore-gfp-wait", "N"),
    ("fail_page_alloc/ignore-gfp-highmem", "N"),
    ("fail_page_alloc/min-order", "0"),
)
#: Set too when present: no stack dump in the kernel log for every
#: injected failure (hundreds of them over a slow serial console).
QUIET = (("failslab/verbose", "0"), ("fail_page_alloc/verbose", "0"))

#: Kernel log lines that mean the kernel itself went wrong (a WARN_ON, a
#: BUG, an oops, a sanitizer report).  Allocation-failure reports
#: ("page allocation failure", "vmalloc error") are expected and not here.
SPLATS = ("------------[ cut here ]", "WARNING: CPU:", "BUG:", "kernel BUG at", "Oops",
          "general protection fault", "UBSAN:", "refcount_t:", "list_add corruption",
          "list_del corruption")

PYVFIO_DIR = os.path.dirname(os.path.abspath(pyvfio.__file__))

Arm = Callable[[], ContextManager[None]]
#: A sequence under test: calls ``arm()`` once, where injection starts, as
#: ``with arm():`` around the steps walked; the window closes at the end of
#: that block.  Enabling and disabling the PCI device (opening it on the
#: group path, binding it on the cdev path, closing it) stay outside the
#: window: an allocation failed in pci_enable_device or pci_disable_device
#: reaches the ACPI interrupt routing code, not VFIO or iommufd.  Seen on
#: Linux 7.3: an allocation failed while binding left ACPI's routing table
#: broken (AE_NO_MEMORY), and the device's close then oopsed in
#: acpi_ut_update_object_reference under acpi_pci_irq_disable.  The
#: kernel's own iommufd fail-nth test keeps to the same paths (it walks the
#: self-test mock device).
Sequence = Callable[[Arm], None]


# -- set-up: debugfs and the thread's fail-nth file ---------------------------------------------
def _debugfs_mounted() -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[1:3] == [DEBUGFS, "debugfs"] for line in f)


def _mount_debugfs() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"debugfs", DEBUGFS.encode(), b"debugfs", ctypes.c_ulong(0), None) != 0:
        err = ctypes.get_errno()
        if err == errno.ENODEV:
            pytest.skip("debugfs cannot be mounted: this kernel has no CONFIG_DEBUG_FS, "
                        "needed for the fault-injection knobs")
        raise OSError(err, f"mount -t debugfs debugfs {DEBUGFS}: {os.strerror(err)}")


def _umount_debugfs() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(DEBUGFS.encode(), 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount {DEBUGFS}: {os.strerror(err)}")


def _read_knob(name: str) -> str:
    with open(f"{DEBUGFS}/{name}") as f:
        return f.read().strip()


def _write_knob(name: str, value: str) -> None:
    fd = os.open(f"{DEBUGFS}/{name}", os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


@pytest.fixture(scope="module")
def fail_nth() -> Iterator[int]:
    """This thread's fail-nth file (/proc/thread-self/fail-nth, by the
    thread's own path, which names what is missing when it is not there),
    open read-write for the whole module, with slab and page
    allocations of any GFP_KERNEL kind eligible for the injected failure.
    The knobs get their old values back (and debugfs is unmounted if it was
    mounted here) at teardown."""
    path = f"/proc/self/task/{threading.get_native_id()}/fail-nth"
    if not os.path.exists(path):
        pytest.skip(f"{path} does not exist: this kernel has no CONFIG_FAULT_INJECTION")
    mounted_here = False
    if not _debugfs_mounted():
        _mount_debugfs()
        mounted_here = True
    try:
        missing = [f"{DEBUGFS}/{name}" for name, _ in KNOBS
                   if not os.path.exists(f"{DEBUGFS}/{name}")]
        if missing:
            pytest.skip(f"no {', '.join(missing)}: this kernel lacks CONFIG_FAILSLAB, "
                        "CONFIG_FAIL_PAGE_ALLOC or CONFIG_FAULT_INJECTION_DEBUG_FS")
        knobs = list(KNOBS) + [(n, v) for n, v in QUIET if os.path.exists(f"{DEBUGFS}/{n}")]
        saved: list[tuple[str, str]] = []
        try:
            for name, value in knobs:
                saved.append((name, _read_knob(name)))
                _write_knob(name, value)
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            try:
                yield fd
            finally:
                os.pwrite(fd, b"0", 0)
                os.close(fd)
        finally:
            for name, value in reversed(saved):
                _write_knob(name, value)
    finally:
        if mounted_here:
            _umount_debugfs()


class Injection(Protocol):
    """One run's injection, as the walk uses it."""

    def arm(self) -> ContextManager[None]:
        """Start it: the N-th allocation from now on fails; the context
        returned ends the window on exit."""

    def finish(self) -> bool | None:
        """Stop it; whether the failure was injected (None: never armed)."""


class _Window:
    """Ends an injection window: fail-nth is read back and disarmed."""

    def __init__(self, shot: "Shot") -> None:
        self.shot = shot

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        self.shot.finish()


class Shot:
    """One run's injection: ``arm()`` writes N to fail-nth (the sequence
    calls it), ``finish()`` reads it back and disarms."""

    def __init__(self, fd: int, n: int) -> None:
        self.fd = fd
        self.armed = False
        self._payload = str(n).encode()  # built before arming: no allocation in between
        self._result: bool | None = None
        self._stopped = False

    def arm(self) -> ContextManager[None]:
        """Start the window; the returned context ends it on exit."""
        if self.armed:
            raise RuntimeError("the sequence armed the injection twice")
        os.pwrite(self.fd, self._payload, 0)
        self.armed = True
        return _Window(self)

    def finish(self) -> bool | None:
        """Whether the failure was injected (fail-nth reads back "0": the
        N-th allocation came and failed); None when never armed."""
        if not self.armed:
            return None
        if not self._stopped:
            self._result = self._read_back()
            self._stopped = True
        return self._result

    def _read_back(self) -> bool:
        try:
            injected = os.pread(self.fd, 16, 0).strip() == b"0"
        except OSError as exc:
            if exc.errno != errno.EFAULT:
                raise
            # The read-back itself met the N-th allocation (the page fault
            # on its buffer failed): the sequence ran without it.
            injected = False
        try:
            os.pwrite(self.fd, b"0", 0)
        except OSError as exc:  # the same, on the disarming write
            if exc.errno != errno.EFAULT:
                raise
            os.pwrite(self.fd, b"0", 0)
        return injected


# -- what the kernel can show ------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Footprint:
    """What this process holds in the kernel, as the kernel shows it."""

    fds: frozenset[int]
    pinned_kb: int  # VmPin: pages pinned (iommufd)
    locked_kb: int  # VmLck: pages charged as locked (type1 container)

    @staticmethod
    def now() -> Footprint:
        fds = frozenset(int(n) for n in os.listdir("/proc/self/fd"))
        values: dict[str, int] = {}
        with open("/proc/self/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmPin", "VmLck"):
                    values[key] = int(rest.split()[0])
        # The listdir's own fd is gone again: keep only fds still open.
        return Footprint(frozenset(fd for fd in fds if _is_open(fd)),
                         values["VmPin"], values["VmLck"])

    def leaks(self, base: Footprint) -> list[str]:
        out = [f"fd {fd} -> {_fd_target(fd)}" for fd in sorted(self.fds - base.fds)]
        out += [f"fd {fd} closed" for fd in sorted(base.fds - self.fds)]
        if self.pinned_kb != base.pinned_kb:
            out.append(f"VmPin {base.pinned_kb} kB -> {self.pinned_kb} kB")
        if self.locked_kb != base.locked_kb:
            out.append(f"VmLck {base.locked_kb} kB -> {self.locked_kb} kB")
        return out


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _fd_target(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"


class KernelLog:
    """New records of the kernel log (/dev/kmsg, read from the end)."""

    def __init__(self) -> None:
        try:
            self.fd: int | None = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            self.fd = None
            return
        os.lseek(self.fd, 0, os.SEEK_END)

    def splats(self) -> list[str]:
        """Lines since the last call that report a kernel bug."""
        found: list[str] = []
        while self.fd is not None:
            try:
                record = os.read(self.fd, 8192)
            except BlockingIOError:
                break
            except BrokenPipeError:  # records were overwritten; reading goes on after them
                continue
            text = record.decode(errors="replace").partition(";")[2].partition("\n")[0]
            if any(marker in text for marker in SPLATS):
                found.append(text)
        return found

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


# -- the walk ----------------------------------------------------------------------------------
@dataclasses.dataclass
class Walk:
    """The result of one sequence's walk (printed, and as JSON)."""

    sequence: str
    walked: int = 0           # Ns whose failure was injected
    clean_at: int = 0         # the N that completed without reaching its failure
    absorbed: int = 0         # injected, yet the sequence succeeded
    vfio_errors: Counter[str] = dataclasses.field(default_factory=Counter)
    os_errors: Counter[str] = dataclasses.field(default_factory=Counter)
    unexpected: list[str] = dataclasses.field(default_factory=list)
    splats: list[str] = dataclasses.field(default_factory=list)
    kernel_log: bool = True   # /dev/kmsg could be read for warnings
    seconds: float = 0.0

    def line(self) -> str:
        return (f"fail-nth {self.sequence}: {self.walked} injection points walked "
                f"(clean at N={self.clean_at}): {sum(self.vfio_errors.values())} VfioError, "
                f"{sum(self.os_errors.values())} other OSError from pyvfio, "
                f"{self.absorbed} absorbed, {len(self.unexpected)} unexpected; "
                f"{self.seconds:.1f} s"
                + ("" if self.kernel_log else "; /dev/kmsg not readable: kernel log not checked"))

    def as_dict(self) -> dict[str, object]:
        return {
            "sequence": self.sequence, "walked": self.walked, "clean_at": self.clean_at,
            "absorbed": self.absorbed, "vfio_errors": dict(self.vfio_errors.most_common()),
            "os_errors": dict(self.os_errors.most_common()), "unexpected": self.unexpected,
            "splats": self.splats, "kernel_log": self.kernel_log,
            "seconds": round(self.seconds, 1),
        }


def _pyvfio_frame(exc: BaseException) -> str | None:
    """Where the exception left pyvfio's code (its innermost frame there),
    or None if it never passed through pyvfio."""
    where = None
    for entry in traceback.extract_tb(exc.__traceback__):
        if os.path.abspath(entry.filename).startswith(PYVFIO_DIR + os.sep):
            rel = os.path.relpath(entry.filename, os.path.dirname(PYVFIO_DIR))
            where = f"{rel}:{entry.lineno} in {entry.name}"
    return where


def _errno_name(err: int | None) -> str:
    return errno.errorcode.get(err, str(err)) if err is not None else "no errno"


def _classify(exc: Exception) -> tuple[str, str]:
    """``(kind, key)`` of a run's exception; kind is "vfio", "os" or
    "unexpected".

    What the walk accepts when the failure was injected:

    * any :class:`pyvfio.VfioError`: the failure reached the caller the
      way pyvfio promises;
    * an :class:`OSError` carrying an errno that came out of a pyvfio call
      (its traceback passes through pyvfio's code): a syscall pyvfio made
      failed and pyvfio passed the OSError on -- e.g. the mmap(2) of
      DmaBuffer, eventfd(2), a sysfs read before the device is opened.
      The walk cannot avoid these: Python's own kernel allocations (a new
      arena mapped for objects, a grown heap, a page fault) between the
      fail-nth write and the ioctl aimed at may be the N-th.  They are
      counted apart and listed with where they left pyvfio.

    Everything else is unexpected and fails the test: an exception of
    another type (MemoryError when Python's own memory could not be
    mapped, an AssertionError of the sequence, TimeoutError without an
    errno), or an OSError raised outside pyvfio's code.
    """
    if isinstance(exc, VfioError):
        return "vfio", f"{type(exc).__name__} {exc.ioctl or '-'} {_errno_name(exc.errno)}"
    where = _pyvfio_frame(exc)
    if isinstance(exc, OSError) and exc.errno is not None and where is not None:
        return "os", f"{type(exc).__name__} {_errno_name(exc.errno)} at {where}"
    return "unexpected", (f"{type(exc).__name__}: {exc} "
                          f"(at {where or 'test code, not pyvfio'})")


def _clean_run(sequence: Sequence) -> None:
    sequence(contextlib.nullcontext)


def walk(name: str, sequence: Sequence, shots: Callable[[int], Injection]) -> Walk:
    """Walk ``sequence`` through N = 1, 2, ... (see the module docstring);
    ``shots(n)`` gives the injection of run N (:class:`Shot` on the
    thread's fail-nth file; tests/test_fail_nth_walk.py passes a stand-in
    that fails the N-th call into the fake kernel)."""
    result = Walk(name)
    log = KernelLog()
    result.kernel_log = log.fd is not None
    started = time.monotonic()
    try:
        _clean_run(sequence)  # the sequence works at all; warms Python's memory up
        gc.collect()
        base = Footprint.now()
        log.splats()  # what came before the walk is not its business

        def fail(message: str) -> NoReturn:
            splats = result.splats + [f"N={n}: {line}" for line in log.splats()]
            pytest.fail(f"{name}: N={n}: {message}"
                        + (f"; the kernel reported: {splats}" if splats else ""))

        for n in range(1, CAP + 1):
            shot = shots(n)
            error: Exception | None = None
            gc.disable()  # no collection (and no finalizer) in the middle of the sequence
            try:
                try:
                    sequence(shot.arm)
                except Exception as exc:
                    error = exc
            finally:
                injected = shot.finish()
                gc.enable()
            kind, text = _classify(error) if error is not None else ("", "")
            error = None  # drop the traceback: its frames hold the sequence's objects
            leaks = _leaks(base)
            if leaks:
                fail(f"{'injected' if injected else 'not injected'}, "
                     f"{text or 'no error'}; left behind: {'; '.join(leaks)}")
            if injected is None:
                fail(f"the sequence failed before arming the injection: {text}")
            if not injected and kind:
                fail(f"failed with no failure injected (the device not usable again?): {text}")
            # Read after every run: the ring buffer may wrap over a long walk.
            result.splats += [f"N={n}: {line}" for line in log.splats()]
            if not injected:
                result.clean_at = n
                break
            result.walked += 1
            if kind == "vfio":
                result.vfio_errors[text] += 1
            elif kind == "os":
                result.os_errors[text] += 1
            elif kind == "unexpected":
                result.unexpected.append(f"N={n}: {text}")
            else:
                result.absorbed += 1
        else:
            fail(f"the cap of {CAP} was reached with the failure still injected; raise "
                 "PYVFIO_FAIL_NTH_CAP if the kernel has that many allocations on this path")
        _clean_run(sequence)  # usable again after the walk
        leaks = _leaks(base)
        assert not leaks, f"{name}: the clean run after the walk left behind: {leaks}"
        result.splats += [f"after the walk: {line}" for line in log.splats()]
    finally:
        log.close()
        result.seconds = time.monotonic() - started
    return result


def _leaks(base: Footprint) -> list[str]:
    """What differs from ``base``.  A file still open is closed here, after
    the garbage collector had its chance, so that the fixture can give the
    device back (unbinding waits for every vfio file to be closed)."""
    leaks = Footprint.now().leaks(base)
    if not leaks:
        return []
    gc.collect()
    now = Footprint.now()
    for fd in now.fds - base.fds:
        os.close(fd)
    return leaks + ([] if now.leaks(base) else ["(released by the garbage collector only)"])


Record = Callable[[str, object], None]


def _report(result: Walk, bdf: str, capsys: pytest.CaptureFixture[str],
            record: Record) -> None:
    """Print the walk's result (a line, the errors by kind, and the result
    as JSON on a line starting ``fail-nth result:``), keep the JSON in the
    JUnit XML too (a test-suite property ``fail_nth.<sequence>``: the
    console of ``guest.py -q`` is not shown), then check it."""
    record(f"fail_nth.{result.sequence}", json.dumps(result.as_dict(), sort_keys=True))
    with capsys.disabled():
        print(f"\n{result.line()}")
        for key, count in (result.vfio_errors + result.os_errors).most_common():
            print(f"    {count:4} x {key}")
        for entry in result.unexpected + result.splats:
            print(f"    !! {entry}")
        print(f"fail-nth result: {json.dumps(result.as_dict(), sort_keys=True)}")
    # A kernel WARN on an injected allocation failure is the kernel's own
    # report about its error path (seen on 7.3: in the generic IRQ code when
    # an interrupt's sysfs entry cannot be allocated, and once at the last
    # allocation of the legacy sequence): printed above and kept in the
    # JUnit property, not failed.  An oops or BUG fails the test.
    fatal = [entry for entry in result.splats
             if not ("cut here" in entry or "WARNING: CPU:" in entry)]
    assert not fatal, f"{result.sequence}: the kernel reported: {fatal}"
    assert not result.unexpected, (f"{result.sequence}: failures that did not reach the "
                                   f"caller as VfioError/OSError: {result.unexpected}")
    assert result.walked > 0, f"{result.sequence}: no failure was ever injected"
    assert sysfs.device_driver(bdf, KB) == "vfio-pci", f"{bdf} left vfio-pci"


# -- the sequences -----------------------------------------------------------------------------
def cdev_open_to_ready(bdf: str, backend: Backend = KB) -> Sequence:
    """iommufd and the vfio cdev: open, bind, IOAS, attach, map 64 KiB at a
    fixed IOVA, unmap, and every release on the way out."""

    def run(arm: Arm) -> None:
        # The buffer is the outermost: the IOAS is gone (its pages unpinned)
        # before the memory is unmapped from the process.  The device is
        # opened and closed outside the window (see Sequence).
        with (
            DmaBuffer(BUFFER_SIZE, backend=backend) as buf,
            IommuFd(backend=backend) as iommufd,
            Device.open(bdf, backend=backend) as dev,
        ):
            dev.bind(iommufd)  # enables the PCI device (see Sequence)
            with arm():
                with iommufd.ioas() as ioas:
                    dev.attach(ioas)
                    mapping = ioas.map(buf, IOVA)
                    mapping.close()
                    dev.detach()

    return run


def legacy_open_to_ready(bdf: str, backend: Backend = KB) -> Sequence:
    """The group and a type1v2 container: open both, set the container and
    the IOMMU, open the device, map 64 KiB at a fixed IOVA, unmap."""

    def run(arm: Arm) -> None:
        with DmaBuffer(BUFFER_SIZE, backend=backend) as buf:
            with arm():
                with (
                    Container(backend=backend) as container,
                    Group.for_device(bdf, backend=backend) as group,
                ):
                    group.set_container(container)
                    container.set_iommu(IommuType.TYPE1v2)
                    container.map_dma(buf, IOVA)
                    container.unmap_dma(IOVA, BUFFER_SIZE)

    return run


def msi_setup(bdf: str, backend: Backend = KB) -> Sequence:
    """A device ready on iommufd (not walked: that is the cdev sequence),
    then its interrupts: the IRQ infos, one MSI vector on an eventfd, a
    loopback trigger that must reach it, disable, and the releases."""

    def run(arm: Arm) -> None:
        with IommuFd(backend=backend) as iommufd, Device.open(bdf, backend=backend) as dev:
            dev.bind(iommufd)
            with iommufd.ioas() as ioas:
                dev.attach(ioas)
                msi = dev.irqs["MSI"]
                with arm():
                    (vector,) = msi.enable()
                    msi.trigger()
                    count = vector.wait(MSI_TIMEOUT)
                    if count != 1:
                        raise AssertionError(f"the MSI eventfd counted {count}, not 1")
                    msi.disable()

    return run


# -- the tests ---------------------------------------------------------------------------------
def test_fail_nth_cdev_open_to_ready(edu: str, fail_nth: int,
                                     capsys: pytest.CaptureFixture[str],
                                     record_testsuite_property: Record) -> None:
    result = walk("cdev-open-to-ready", cdev_open_to_ready(edu), lambda n: Shot(fail_nth, n))
    _report(result, edu, capsys, record_testsuite_property)


@pytest.mark.skipif(
    os.environ.get("PYVFIO_GUEST_IOMMU") == "virtio",
    reason="virtio-iommu guest (Linux 7.3.4, small guest kernel): at one injected "
           "allocation failure of the type1 set-up the kernel absorbs the failure, "
           "WARNs and keeps 64 kB charged to locked_vm after every fd is closed "
           "(a kernel leak, tests/vm/README.md)")
def test_fail_nth_legacy_open_to_ready(edu: str, fail_nth: int,
                                       capsys: pytest.CaptureFixture[str],
                                       record_testsuite_property: Record) -> None:
    result = walk("legacy-open-to-ready", legacy_open_to_ready(edu),
                  lambda n: Shot(fail_nth, n))
    _report(result, edu, capsys, record_testsuite_property)


@pytest.mark.skipif(
    os.environ.get("PYVFIO_GUEST_IOMMU", "").startswith("smmuv3"),
    reason="arm64 guest (GICv3 ITS, SMMUv3, Linux 7.3.4): one of the first 23 injected "
           "failures in MSI set-up leaks, after which VFIO_DEVICE_SET_IRQS gives ENOSPC for "
           "good and every later MSI test of the boot fails (not yet bisected)")
def test_fail_nth_msi_setup(edu: str, fail_nth: int, capsys: pytest.CaptureFixture[str],
                            record_testsuite_property: Record) -> None:
    result = walk("msi-setup", msi_setup(edu), lambda n: Shot(fail_nth, n))
    _report(result, edu, capsys, record_testsuite_property)
