"""The compiled map/unmap path (Backend.direct_ioctls) against the path
through ``backend.ioctl``: the same results, the same errors.

On the host there is no /dev/iommu, so the objects' use of the direct
calls is checked on the fake kernel, through direct calls written in
Python over the fake's ``ioctl`` (:func:`python_direct`): every scenario
runs twice, once through ``backend.ioctl`` and once through the direct
calls, and must give the same answers.  The compiled helpers themselves
are checked here for what needs no IOMMU (their argument checks, errno
return) and, in the test VM, by the kernel-marked object tests, whose
KernelBackend takes the compiled path.
"""

from __future__ import annotations

import errno
import mmap
import os
import re
from typing import Any, Callable, Iterator

import pytest

import pyvfio
from pyvfio import Container, Group, IommuFd, IommuType, ffi, lib
from pyvfio.backend.base import DirectIoctls, direct_ioctls
from pyvfio.backend.kernel import KernelBackend
from pyvfio.errors import VfioError

U64_MAX = (1 << 64) - 1
PAGE = 4096
EDU = "0000:00:02.0"  # conftest's EDU_BDF, bound to vfio-pci by fake_system


def python_direct(backend: Any, calls: list[str]) -> DirectIoctls:
    """DirectIoctls that do what the compiled helpers do (the checks, one
    struct, one ioctl, errno back) through ``backend.ioctl``, recording
    each call's name in ``calls``."""

    def issue(request: int, cmd: Any, fd: int) -> int:
        try:
            backend.ioctl(fd, request, cmd)
        except OSError as exc:
            return exc.errno or errno.EIO
        return 0

    def ioas_map(fd: int, ioas_id: int, flags: int, user_va: int, length: int, iova: int,
                 out: Any) -> int:
        calls.append("ioas_map")
        cmd = ffi.new("struct iommu_ioas_map *")  # raises OverflowError as cffi does
        cmd.size, cmd.flags, cmd.ioas_id = ffi.sizeof(cmd[0]), flags, ioas_id
        cmd.user_va, cmd.length, cmd.iova = user_va, length, iova
        if (not length or user_va + length - 1 > U64_MAX
                or (flags & lib.IOMMU_IOAS_MAP_FIXED_IOVA and iova + length - 1 > U64_MAX)):
            return -1
        err = issue(lib.IOMMU_IOAS_MAP, cmd, fd)
        if not err and out != ffi.NULL:
            out[0] = cmd.iova
        return err

    def ioas_unmap(fd: int, ioas_id: int, iova: int, length: int, out: Any) -> int:
        calls.append("ioas_unmap")
        cmd = ffi.new("struct iommu_ioas_unmap *")
        cmd.size, cmd.ioas_id, cmd.iova, cmd.length = ffi.sizeof(cmd[0]), ioas_id, iova, length
        err = issue(lib.IOMMU_IOAS_UNMAP, cmd, fd)
        if not err and out != ffi.NULL:
            out[0] = cmd.length
        return err

    def dma_map(fd: int, flags: int, vaddr: int, iova: int, size: int, page_mask: int) -> int:
        calls.append("dma_map")
        cmd = ffi.new("struct vfio_iommu_type1_dma_map *")
        cmd.argsz, cmd.flags = ffi.sizeof(cmd[0]), flags
        cmd.vaddr, cmd.iova, cmd.size = vaddr, iova, size
        if (not size or iova + size - 1 > U64_MAX or vaddr + size - 1 > U64_MAX
                or (vaddr | iova | size) & page_mask):
            return -1
        return issue(lib.VFIO_IOMMU_MAP_DMA, cmd, fd)

    def dma_unmap(fd: int, flags: int, iova: int, size: int, out: Any) -> int:
        calls.append("dma_unmap")
        cmd = ffi.new("struct vfio_iommu_type1_dma_unmap *")
        cmd.argsz, cmd.flags, cmd.iova, cmd.size = ffi.sizeof(cmd[0]), flags, iova, size
        err = issue(lib.VFIO_IOMMU_UNMAP_DMA, cmd, fd)
        if not err and out != ffi.NULL:
            out[0] = cmd.size
        return err

    return DirectIoctls(ioas_map, ioas_unmap, dma_map, dma_unmap)


@pytest.fixture(params=["ioctl", "direct"])
def env(request: pytest.FixtureRequest, fake_system: Any,
        monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, list[str]]]:
    """The fake machine's backend, offering direct calls or not."""
    backend = fake_system.backend
    calls: list[str] = []
    if request.param == "direct":
        direct = python_direct(backend, calls)
        monkeypatch.setattr(type(backend), "direct_ioctls", lambda self: direct)
    yield backend, calls
    if request.param == "direct":
        assert calls, "the objects did not take the direct path"
    else:
        assert not calls


def outcome(fn: Callable[[], Any]) -> Any:
    """What a call gives: its value, or its error's type, errno, ioctl,
    target and message."""
    try:
        value = fn()
    except (VfioError, ValueError, TypeError) as exc:
        return (type(exc).__name__, getattr(exc, "errno", None), getattr(exc, "ioctl", None),
                getattr(exc, "target", None),
                re.sub(r"address 0x[0-9a-f]+", "address <va>", str(exc)))
    if isinstance(value, pyvfio.IovaMapping):
        return ("mapped", value.iova, value.length, value.flags)
    return ("ok", value)


#: Read-only and page-aligned: type1 checks the alignment first, and a
#: ``bytes`` object is page-aligned only by chance.
_READ_ONLY_PAGE = mmap.mmap(-1, PAGE, prot=mmap.PROT_READ)


def ioas_scenario(backend: Any) -> list[Any]:
    out: list[Any] = []
    buf = mmap.mmap(-1, 4 * PAGE)
    ro = bytes(PAGE)
    with IommuFd(backend=backend) as iommufd:
        ioas = iommufd.ioas()
        a = ioas.map(buf, 0x100000)
        out.append((a.iova, a.length, a.flags, a.readable, a.writeable))
        auto = ioas.map(buf)  # the kernel picks the IOVA
        out.append((auto.iova, auto.length, auto.flags))
        out.append(outcome(lambda: ioas.map(buf, 0x100000)))  # EEXIST
        out.append(outcome(lambda: ioas.map(buf, U64_MAX - PAGE)))  # wraps: EOVERFLOW
        out.append(outcome(lambda: ioas.map(buf, -PAGE)))
        out.append(outcome(lambda: ioas.map(buf, 1 << 64)))
        out.append(outcome(lambda: ioas.map(buf, True)))
        out.append(outcome(lambda: ioas.map(bytearray(), 0x400000)))
        out.append(outcome(lambda: ioas.map(ro, 0x400000)))  # read-only, writeable
        r = ioas.map(ro, 0x400000, writeable=False)
        out.append((r.iova, r.flags, r.readable, r.writeable))
        out.append(outcome(lambda: ioas.map(buf, 0x500000, readable=False, writeable=False)))
        out.append(outcome(lambda: ioas.map_va(0, PAGE, 0x600000)))  # EFAULT
        out.append(outcome(lambda: ioas.unmap(0x100000, PAGE)))  # cuts a mapping: ENOENT
        out.append([(m.iova, m.length) for m in ioas.mappings])
        a.close()
        out.append((a.closed, [m.iova for m in ioas.mappings]))
        a.close()  # idempotent
        b = ioas.map(buf, 0x100000)  # the IOVA again
        out.append(outcome(lambda: ioas.unmap(0, 0x200000)))
        out.append((b.closed, [m.iova for m in ioas.mappings]))
        c = ioas.map(buf, 0x800000)
        out.append(outcome(lambda: ioas.unmap_all()))
        out.append((c.closed, r.closed, auto.closed, ioas.mappings))
        d = ioas.map(buf, 0x900000)
        ioas.close()
        out.append((d.closed, outcome(lambda: ioas.map(buf, 0xA00000))))
        e_ioas = iommufd.ioas()
        e = e_ioas.map(buf, 0x100000)
    out.append((e.closed, outcome(lambda: e_ioas.map(buf, 0x200000))))
    buf.close()
    return out


def reference(scenario: Callable[[Any], list[Any]], backend: Any,
              calls: list[str]) -> list[Any]:
    """The scenario's answers through ``backend.ioctl`` on a fresh machine."""
    from pyvfio.fake import System

    saved = type(backend).direct_ioctls
    type(backend).direct_ioctls = lambda self: None
    try:
        other = System("minimal")
        other.backend.sysfs_write(f"/sys/bus/pci/devices/{EDU}/driver_override", "vfio-pci")
        other.backend.sysfs_write("/sys/bus/pci/drivers_probe", EDU)
        n = len(calls)
        answers = scenario(other.backend)
        assert len(calls) == n  # none of it took the direct path
        return answers
    finally:
        type(backend).direct_ioctls = saved


def test_ioas_map_unmap_same_through_direct_calls(env: tuple[Any, list[str]]) -> None:
    backend, calls = env
    got = ioas_scenario(backend)
    assert got == reference(ioas_scenario, backend, calls)
    if calls:
        assert calls.count("ioas_map") >= 8 and calls.count("ioas_unmap") >= 1


def type1_scenario(backend: Any) -> list[Any]:
    out: list[Any] = []
    buf = mmap.mmap(-1, 4 * PAGE)
    with Container(backend=backend) as container, Group.for_device(EDU, backend=backend) as grp:
        grp.set_container(container)
        container.set_iommu(IommuType.TYPE1v2)
        a = container.map_dma(buf, 0x100000)
        out.append((a.iova, a.length, a.flags, a.vaddr == container.mappings[0].vaddr))
        out.append(outcome(lambda: container.map_dma(buf, 0x100000)))  # EEXIST
        out.append(outcome(lambda: container.map_dma(buf, 0x100800)))  # misaligned
        out.append(outcome(lambda: container.map_dma(buf, U64_MAX - PAGE + 1)))  # wraps
        out.append(outcome(lambda: container.map_dma(buf, -PAGE)))
        out.append(outcome(lambda: container.map_dma(_READ_ONLY_PAGE, 0x200000)))  # read-only
        out.append(outcome(lambda: container.map_dma(memoryview(buf)[1:PAGE + 1], 0x300000)))
        out.append(outcome(lambda: container.map_dma_va(0, 0x400000, PAGE)))
        b = container.map(buf)  # an IOVA from the allocator
        out.append((b.iova, b.length))
        a.close()
        out.append((a.closed, [m.iova for m in container.mappings]))
        c = container.map(buf)  # the allocator got b's neighbour back
        out.append(c.iova)
        c.close()
        b.close()
        d = container.map(buf)
        out.append(d.iova)
        out.append(outcome(lambda: container.unmap_dma(0, 1 << 40)))
        out.append((d.closed, container.mappings))
        e = container.map_dma(buf, 0x100000)
        grp.unset_container()
        out.append(e.closed)
    buf.close()
    return out


def test_type1_map_unmap_same_through_direct_calls(env: tuple[Any, list[str]]) -> None:
    backend, calls = env
    got = type1_scenario(backend)
    assert got == reference(type1_scenario, backend, calls)
    if calls:
        assert calls.count("dma_map") >= 5 and calls.count("dma_unmap") >= 3


def test_unmap_error_keeps_mapping_open(fake_system: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unmap the kernel refuses (through the direct call) raises the
    IoctlError the ioctl path gives and leaves the mapping open."""
    backend = fake_system.backend
    calls: list[str] = []
    real = python_direct(backend, calls)
    failing = real._replace(ioas_unmap=lambda *args: errno.EBUSY,
                            dma_unmap=lambda *args: errno.EBUSY)
    monkeypatch.setattr(type(backend), "direct_ioctls", lambda self: failing)
    buf = mmap.mmap(-1, PAGE)
    with IommuFd(backend=backend) as iommufd:
        ioas = iommufd.ioas()
        m = ioas.map(buf, 0x100000)
        with pytest.raises(pyvfio.IoctlError) as exc:
            m.close()
        assert exc.value.errno == errno.EBUSY and exc.value.ioctl == "IOMMU_IOAS_UNMAP"
        assert str(exc.value) == str(pyvfio.errors.ioctl_error(
            errno.EBUSY, "IOMMU_IOAS_UNMAP", ioas.describe(), "iommufd"))
        assert not m.closed and ioas.mappings == (m,)
        monkeypatch.setattr(type(backend), "direct_ioctls", lambda self: real)
        # a new IOAS takes the working calls; the old one keeps what it had
        ioas2 = iommufd.ioas()
        m2 = ioas2.map(buf, 0x100000)
        m2.close()
        assert m2.closed
        ioas._unmap_call = real.ioas_unmap
        m.close()
        assert m.closed and ioas.mappings == ()
    buf.close()


def test_only_the_kernel_backend_offers_compiled_calls(fake_system: Any) -> None:
    """The fake, a subclass or an object that replaced ``ioctl`` and a
    wrapper forwarding attributes all go through ``ioctl``."""
    assert direct_ioctls(fake_system.backend) is None
    kb = KernelBackend()
    direct = direct_ioctls(kb)
    assert direct is not None and direct.ioas_map is lib.pyvfio_ioas_map

    class Tracing(KernelBackend):
        def ioctl(self, fd: int, request: int, arg: Any = 0) -> int:
            return super().ioctl(fd, request, arg)

    assert direct_ioctls(Tracing()) is None
    patched = KernelBackend()
    patched.ioctl = lambda fd, request, arg=0: 0  # type: ignore[method-assign]
    assert direct_ioctls(patched) is None

    class Wrapper:
        def __init__(self, inner: Any) -> None:
            self._inner = inner

        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

    assert direct_ioctls(Wrapper(kb)) is None


def test_compiled_helpers_check_and_return_errno() -> None:
    """The compiled calls: -1 (no syscall) for what pyvfio refuses before a
    map, OverflowError for a value beyond its field, else the syscall's
    errno (an fd that is no VFIO file: ENOTTY)."""
    fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fixed = lib.IOMMU_IOAS_MAP_FIXED_IOVA
        assert lib.pyvfio_ioas_map(fd, 1, fixed, 0x1000, 0, 0, ffi.NULL) == -1
        assert lib.pyvfio_ioas_map(fd, 1, fixed, U64_MAX - 0xFFF, 0x2000, 0, ffi.NULL) == -1
        assert lib.pyvfio_ioas_map(fd, 1, fixed, 0x1000, 0x2000, U64_MAX - 0xFFF,
                                   ffi.NULL) == -1
        # without FIXED_IOVA the iova field is not looked at
        assert lib.pyvfio_ioas_map(fd, 1, 0, 0x1000, 0x2000, U64_MAX, ffi.NULL) == errno.ENOTTY
        assert lib.pyvfio_ioas_map(fd, 1, fixed, 0x1000, 0x1000, 0, ffi.NULL) == errno.ENOTTY
        assert lib.pyvfio_ioas_unmap(fd, 1, 0, 0x1000, ffi.NULL) == errno.ENOTTY
        assert lib.pyvfio_dma_map(fd, 3, 0x1000, 0x2000, 0x1000, 0xFFF) == errno.ENOTTY
        for vaddr, iova, size in ((0x1800, 0x2000, 0x1000), (0x1000, 0x2800, 0x1000),
                                  (0x1000, 0x2000, 0x800), (0x1000, 0x2000, 0),
                                  (0x1000, U64_MAX - 0xFFF, 0x2000)):
            assert lib.pyvfio_dma_map(fd, 3, vaddr, iova, size, 0xFFF) == -1
        assert lib.pyvfio_dma_unmap(fd, 0, 0x2000, 0x1000, ffi.NULL) == errno.ENOTTY
        with pytest.raises(OverflowError):
            lib.pyvfio_dma_map(fd, 3, 0x1000, -0x1000, 0x1000, 0xFFF)
        with pytest.raises(OverflowError):
            lib.pyvfio_ioas_map(fd, 1, fixed, 0x1000, 0x1000, 1 << 64, ffi.NULL)
        assert lib.pyvfio_ioas_map(-1, 1, fixed, 0x1000, 0x1000, 0, ffi.NULL) == errno.EBADF
        # the twins without the syscall: what a no-op kernel answers
        out = ffi.new("uint64_t *", 7)
        assert lib.pyvfio_dry_ioas_map(-1, 1, 0, 0x1000, 0x1000, 0x5000, out) == 0
        assert out[0] == 0x5000  # the struct's iova, written back
        assert lib.pyvfio_dry_ioas_unmap(-1, 1, 0x5000, 0x1000, out) == 0 and out[0] == 0x1000
        assert lib.pyvfio_dry_dma_unmap(-1, 0, 0x5000, 0x3000, out) == 0 and out[0] == 0x3000
        assert lib.pyvfio_dry_dma_map(-1, 3, 0x1000, 0x2000, 0x1000, 0xFFF) == 0
        assert lib.pyvfio_dry_dma_map(-1, 3, 0x1000, 0x2000, 0x800, 0xFFF) == -1
    finally:
        os.close(fd)
