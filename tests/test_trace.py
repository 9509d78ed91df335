"""Seeing what happens: the ioctl trace (pyvfio.backend.trace), the
``pyvfio`` loggers and the progress of long operations."""

from __future__ import annotations

import dataclasses
import errno
import io
import logging
import mmap
import os
import re
import subprocess
import sys
from typing import Any

import pytest
from toolkit_env import REPO, FakeMachine, load_example

import pyvfio
from pyvfio.backend import Backend, override_default_backend
from pyvfio.backend.trace import TraceBackend, disable, enable, enabled, ioctl_name
from pyvfio.errors import IoctlError
from pyvfio.fake import System
from pyvfio.setup import binding, cli
from pyvfio.setup.capture import capture

edu_dma = load_example("edu_dma")
nvme_identify = load_example("nvme_identify")


_NUMBER = re.compile(r"\d+(\.\d+)? us")


def _lines(buf: io.StringIO) -> list[str]:
    return buf.getvalue().splitlines()


# -- the trace's lines ------------------------------------------------------------------------------
def test_ioas_map_is_decoded_and_a_refusal_names_its_errno() -> None:
    system = System("minimal")
    out = io.StringIO()
    b = TraceBackend(system.backend, file=out)
    buf = mmap.mmap(-1, 0x2000)
    with pyvfio.IommuFd(backend=b) as fd:
        ioas = fd.ioas()
        ioas.map(buf, 0x100000)
        with pytest.raises(IoctlError) as exc:
            ioas.map(buf, 0x101000)
        assert exc.value.errno == errno.EEXIST
    maps = [line for line in _lines(out) if " IOMMU_IOAS_MAP " in line]
    assert len(maps) == 2, _lines(out)
    ok, refused = maps
    assert ok.startswith("pyvfio-trace: iommufd(")
    assert "flags=IOMMU_IOAS_MAP_FIXED_IOVA|IOMMU_IOAS_MAP_WRITEABLE|IOMMU_IOAS_MAP_READABLE" in ok
    assert "length=0x2000, iova=0x100000}" in ok
    assert re.search(r"user_va=0x[0-9a-f]+,", ok)
    assert re.search(r"\} = 0 \(\d+\.\d{3} ms\)$", ok)
    assert "iova=0x101000}" in refused
    assert re.search(r"= -1 EEXIST \(File exists.*\) \(\d+\.\d{3} ms\)$", refused)
    # the IOAS's ID comes back from IOMMU_IOAS_ALLOC: an out field
    alloc = next(line for line in _lines(out) if " IOMMU_IOAS_ALLOC " in line)
    assert re.search(r"= 0 -> \{out_ioas_id=\d+\}", alloc)
    assert any(line.startswith("pyvfio-trace: open('/dev/iommu'") for line in _lines(out))
    assert any(re.match(r"pyvfio-trace: close\(iommufd\(\d+\)\) = 0", line) for line in _lines(out))


def test_the_fd_kind_picks_among_ioctls_sharing_a_number() -> None:
    from pyvfio._uapi import lib

    # the VFIO numbers are per file: the same number is two ioctls
    assert lib.VFIO_IOMMU_MAP_DMA == lib.VFIO_DEVICE_PCI_HOT_RESET
    assert ioctl_name(lib.VFIO_IOMMU_MAP_DMA, "container") == "VFIO_IOMMU_MAP_DMA"
    assert ioctl_name(lib.VFIO_IOMMU_MAP_DMA, "iommufd") == "VFIO_IOMMU_MAP_DMA"
    assert ioctl_name(lib.VFIO_IOMMU_MAP_DMA, "device") == "VFIO_DEVICE_PCI_HOT_RESET"
    assert ioctl_name(lib.IOMMU_IOAS_MAP) == "IOMMU_IOAS_MAP"
    assert ioctl_name(0x1234) == "0x1234"


def test_legacy_path_buffers_and_device_fds_are_decoded(fake_system: Any) -> None:
    out = io.StringIO()
    b = TraceBackend(fake_system.backend, file=out)
    buf = mmap.mmap(-1, 0x1000)
    with pyvfio.open_attached("0000:00:02.0", backend=b, legacy=True) as (device, space):
        assert device.info.num_regions > 0
        space.map(buf, 0x200000)
        list(device.regions)
    lines = _lines(out)
    text = "\n".join(lines)
    assert re.search(r"group\(\d+\) VFIO_GROUP_SET_CONTAINER &\d+ = 0", text)
    assert re.search(r"group\(\d+\) VFIO_GROUP_GET_DEVICE_FD '0000:00:02.0' = \d+", text)
    # VFIO_DEVICE_GET_INFO's argument is a char[] buffer: decoded as vfio_device_info
    info = next(line for line in lines if " VFIO_DEVICE_GET_INFO " in line)
    assert re.match(r"pyvfio-trace: device\(\d+\) VFIO_DEVICE_GET_INFO \{argsz=\d+, flags=0", info)
    assert re.search(r"-> \{flags=VFIO_DEVICE_FLAGS_PCI, num_regions=\d+, num_irqs=\d+\}", info)
    dma = next(line for line in lines if " VFIO_IOMMU_MAP_DMA " in line)
    assert dma.startswith("pyvfio-trace: container(")
    assert "flags=VFIO_DMA_MAP_FLAG_READ|VFIO_DMA_MAP_FLAG_WRITE" in dma
    assert "iova=0x200000, size=0x1000}" in dma


# -- pass-through: the same results, every ioctl seen ------------------------------------------------
class _Counting(Backend):
    """Counts the ioctls reaching the wrapped backend (the other calls pass)."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.name = inner.name
        self.ioctls = 0

    def ioctl(self, fd: int, request: int, arg: Any = 0) -> int:
        self.ioctls += 1
        return self.inner.ioctl(fd, request, arg)

    def __getattribute__(self, attr: str) -> Any:
        if attr in ("inner", "name", "ioctls", "ioctl", "__class__", "__dict__"):
            return object.__getattribute__(self, attr)
        return getattr(object.__getattribute__(self, "inner"), attr)

    open = close = pread = pwrite = read = write = exists = access = None  # type: ignore
    mmap = memfd_create = ftruncate = eventfd = memlock_limit = None  # type: ignore
    sysfs_read = sysfs_write = sysfs_listdir = sysfs_readlink = page_size = None  # type: ignore


@pytest.mark.parametrize("example, device, legacy", [
    (edu_dma, "edu", False), (edu_dma, "edu", True),
    (nvme_identify, "nvme", False), (nvme_identify, "nvme", True)])
def test_examples_give_the_same_results_traced(example: Any, device: str, legacy: bool) -> None:
    plain, traced = FakeMachine(), FakeMachine()
    plain_lines: list[str] = []
    traced_lines: list[str] = []
    expected = example.run(getattr(plain, device), plain.backend, legacy=legacy,
                           out=plain_lines.append)
    counting = _Counting(traced.backend)
    out = io.StringIO()
    got = example.run(getattr(traced, device), TraceBackend(counting, file=out), legacy=legacy,
                      out=traced_lines.append)
    # the same findings (the timings aside: the trace's own time is in them)
    assert dataclasses.replace(got, timings_us={}) == dataclasses.replace(expected, timings_us={})
    assert set(got.timings_us) == set(expected.timings_us)
    assert [_NUMBER.sub("N", line) for line in traced_lines] == \
        [_NUMBER.sub("N", line) for line in plain_lines]
    plain.check_no_leaks()
    traced.check_no_leaks()
    # every ioctl went through the wrapper: one trace line each
    ioctl_lines = [line for line in _lines(out) if re.match(r"pyvfio-trace: \w+\(\d+\) ", line)]
    assert counting.ioctls > 10
    assert len(ioctl_lines) == counting.ioctls


def test_errors_pass_through_unchanged() -> None:
    system = System("minimal")
    b = TraceBackend(system.backend, file=io.StringIO())
    with pytest.raises(FileNotFoundError):
        b.open("/dev/vfio/4711")
    fd = b.open("/dev/iommu")
    try:
        with pytest.raises(OSError) as exc:
            b.ioctl(fd, 0x3b00 | 0x7f, 0)
        assert exc.value.errno == errno.ENOTTY
        with pytest.raises(TypeError):
            b.ioctl(fd, 0x3b80, "not a pointer")  # type: ignore[arg-type]
    finally:
        b.close(fd)
    assert b.name == "fake" and b.system is system
    with pytest.raises(AttributeError):
        b.fast_ioctl  # noqa: B018 - no backend-specific fast path is offered


# -- turning it on ----------------------------------------------------------------------------------
def test_trace_block_traces_objects_made_with_the_default_backend() -> None:
    system = System("minimal")
    out = io.StringIO()
    with override_default_backend(system.backend):
        with pyvfio.trace(file=out) as traced:
            assert isinstance(traced, TraceBackend) and traced.inner is system.backend
            with pyvfio.IommuFd() as fd:
                fd.ioas()
        with pyvfio.IommuFd() as fd:  # after the block: not traced
            fd.ioas()
    assert sum(" IOMMU_IOAS_ALLOC " in line for line in _lines(out)) == 1


def test_trace_to_a_logger(caplog: pytest.LogCaptureFixture) -> None:
    system = System("minimal")
    with caplog.at_level(logging.DEBUG, logger="pyvfio.trace"):
        with pyvfio.trace(system.backend, logger="pyvfio.trace") as b:
            with pyvfio.IommuFd(backend=b) as fd:
                fd.ioas()
    messages = [r.getMessage() for r in caplog.records if r.name == "pyvfio.trace"]
    assert any(" IOMMU_IOAS_ALLOC " in m for m in messages), messages


def test_enable_and_disable() -> None:
    system = System("minimal")
    out = io.StringIO()
    assert not enabled()
    with override_default_backend(system.backend):
        enable(file=out)
        try:
            assert enabled()
            first, second = pyvfio.default_backend(), pyvfio.default_backend()
            assert isinstance(first, TraceBackend) and first is second
            with pyvfio.IommuFd():
                pass
        finally:
            disable()
        assert pyvfio.default_backend() is system.backend
    assert any(line.startswith("pyvfio-trace: open('/dev/iommu'") for line in _lines(out))


def _run(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": REPO, **env}, timeout=120)


def test_pyvfio_trace_environment_variable_in_a_subprocess() -> None:
    code = ("import pyvfio\n"
            "try:\n    pyvfio.IommuFd().close()\nexcept OSError as e:\n    print(e.errno)\n")
    proc = _run(code, {"PYVFIO_TRACE": "1"})
    assert "pyvfio-trace: open('/dev/iommu'" in proc.stderr, proc.stderr
    quiet = _run(code, {"PYVFIO_TRACE": "0"})
    assert "pyvfio-trace" not in quiet.stderr
    # the command's --fake systems are traced too
    cmd = [sys.executable, "-m", "pyvfio", "--fake", "default", "bind", "0000:00:04.0"]
    proc2 = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PYTHONPATH": REPO, "PYVFIO_TRACE": "1"})
    assert proc2.returncode == 0, proc2.stderr
    assert ("pyvfio-trace: sysfs_write('/sys/bus/pci/devices/0000:00:04.0/driver_override', "
            "'vfio-pci') = 0") in proc2.stderr


def test_pyvfio_trace_to_a_file(tmp_path: Any) -> None:
    path = tmp_path / "trace.txt"
    proc = _run("import pyvfio\nfrom pyvfio.fake import System\n"
                "from pyvfio.backend import override_default_backend\n"
                "with override_default_backend(System('minimal').backend):\n"
                "    pyvfio.IommuFd().close()\n", {"PYVFIO_TRACE": str(path)})
    assert proc.returncode == 0, proc.stderr
    assert "pyvfio-trace" not in proc.stderr
    assert "IOMMU_DESTROY" not in path.read_text()  # nothing allocated
    assert re.search(r"close\(iommufd\(\d+\)\) = 0", path.read_text())


# -- logging ----------------------------------------------------------------------------------------
def test_bind_logs_its_steps(caplog: pytest.LogCaptureFixture) -> None:
    system = System("default")
    with caplog.at_level(logging.INFO, logger="pyvfio"):
        binding.bind("0000:00:04.0", backend=system.backend)
        binding.restore("0000:00:04.0", backend=system.backend)
    steps = [r.getMessage() for r in caplog.records if r.name == "pyvfio.setup.binding"]
    assert steps[0] == "binding 0000:00:04.0 (group 2) from e1000e to vfio-pci"
    assert any("driver_override <- 'vfio-pci'" in s for s in steps), steps
    assert any("/sys/bus/pci/drivers/e1000e/unbind <- '0000:00:04.0'" in s for s in steps)
    assert "probing 0000:00:04.0: now on vfio-pci" in steps
    assert "restoring 0000:00:04.0 from vfio-pci to e1000e" in steps
    assert "probing 0000:00:04.0: now on e1000e" in steps


def test_open_attached_logs_its_choice(caplog: pytest.LogCaptureFixture, fake_system: Any) -> None:
    with caplog.at_level(logging.INFO, logger="pyvfio"):
        with pyvfio.open_attached("0000:00:02.0", backend=fake_system.backend):
            pass
        with pyvfio.open_attached("0000:00:02.0", backend=fake_system.backend, legacy=True):
            pass
    messages = [r.getMessage() for r in caplog.records if r.name == "pyvfio.toolkit.attach"]
    assert messages == ["0000:00:02.0: opening its VFIO cdev on a new iommufd",
                        "0000:00:02.0: legacy requested: using its group and a type1 container"]


def test_the_fake_logs_which_rule_refused(caplog: pytest.LogCaptureFixture) -> None:
    system = System("minimal")
    buf = mmap.mmap(-1, 0x1000)
    with caplog.at_level(logging.DEBUG, logger="pyvfio.fake"):
        with pyvfio.IommuFd(backend=system.backend) as fd:
            ioas = fd.ioas()
            ioas.map(buf, 0x100000)
            with pytest.raises(IoctlError):
                ioas.map(buf, 0x100000)
    refusals = [r.getMessage() for r in caplog.records if r.name == "pyvfio.fake.core"]
    assert len(refusals) == 1, refusals
    assert re.match(r"IOMMU_IOAS_MAP on /dev/iommu refused by \w+ \(\w+\.py:\d+\): EEXIST ",
                    refusals[0])


def test_nothing_is_logged_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    system = System("default")
    binding.bind("0000:00:04.0", backend=system.backend)
    assert capsys.readouterr().err == ""


# -- progress -------------------------------------------------------------------------------------------
def test_capture_reports_progress(caplog: pytest.LogCaptureFixture) -> None:
    system = System("default")
    with caplog.at_level(logging.INFO, logger="pyvfio.progress"):
        topo = capture(system.backend)
    steps = [r.pyvfio_progress for r in caplog.records  # type: ignore[attr-defined]
             if r.name == "pyvfio.progress"]
    total = len(topo["devices"])
    assert steps == [(i, total) for i in range(1, total + 1)]


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("tty", [True, False])
def test_cli_progress_line_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch, tty: bool) -> None:
    err = _Tty() if tty else io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    system = System("default")
    code = cli.main(["bind", "0000:00:04.0", "0000:01:01.0"], backend=system.backend)
    assert code == cli.EXIT_OK
    if tty:
        assert "\r\x1b[Kbinding to vfio-pci: 1/2 0000:00:04.0" in err.getvalue()
        assert err.getvalue().endswith("\r\x1b[K")  # erased at the end
    else:
        assert err.getvalue() == ""
    assert not logging.getLogger("pyvfio.progress").handlers  # undone after the command


def test_cli_verbose_prints_log_records(capsys: pytest.CaptureFixture[str]) -> None:
    system = System("default")
    assert cli.main(["-v", "bind", "0000:00:04.0"], backend=system.backend) == cli.EXIT_OK
    err = capsys.readouterr().err
    assert "pyvfio: INFO: pyvfio.setup.binding: binding 0000:00:04.0 (group 2) from e1000e " \
           "to vfio-pci" in err
    assert "DEBUG" not in err
    assert cli.main(["restore", "-vv", "0000:00:04.0"], backend=system.backend) == cli.EXIT_OK
    err = capsys.readouterr().err
    assert "pyvfio: INFO: pyvfio.setup.binding: restoring 0000:00:04.0" in err
    assert cli.main(["status"], backend=system.backend) == cli.EXIT_OK
    assert capsys.readouterr().err == ""  # the handler is gone after the command
    assert logging.getLogger("pyvfio").level == logging.NOTSET


def test_argsz_regrowth_is_logged_and_traced(caplog: pytest.LogCaptureFixture) -> None:
    machine = FakeMachine()
    out = io.StringIO()
    b = TraceBackend(machine.backend, file=out)
    with caplog.at_level(logging.DEBUG, logger="pyvfio.core"):
        with pyvfio.open_attached(machine.nvme, backend=b) as (device, _space):
            bar0 = device.regions["BAR0"]
            assert bar0.size > 0
    retries = [r.getMessage() for r in caplog.records if r.name == "pyvfio.core.resource"]
    first = re.match(r"VFIO_DEVICE_GET_REGION_INFO on device \S+ region 0: the kernel needs "
                     r"argsz (\d+) \(gave (\d+)\): retrying", retries[0] if retries else "")
    assert first is not None, retries
    need, gave = int(first.group(1)), int(first.group(2))
    assert need > gave
    # the trace shows both calls: the short one (argsz grows on return), then the full one
    calls = [line for line in _lines(out) if " VFIO_DEVICE_GET_REGION_INFO " in line
             and "index=0," in line]
    assert f"{{argsz={gave}, " in calls[0] and f"argsz={need}" in calls[0].split(" -> ")[1]
    assert f"{{argsz={need}, " in calls[1]
    assert "VFIO_REGION_INFO_FLAG_CAPS" in calls[1]
    machine.check_no_leaks()
