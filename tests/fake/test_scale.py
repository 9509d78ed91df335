"""What the fake's scaling work must not change: IOMMU_IOAS_ALLOW_IOVAS's
and IOMMU_IOAS_IOVA_RANGES's verdicts with many, unsorted, touching or
faulting ranges, copy_struct_from_user's with a large struct size, and the
setup layer's view of a machine with many devices.  How fast these are is
measured in bench/ (bench/host_suite.py), never asserted here."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import mmap
from pathlib import Path
from typing import Any, Callable

import pytest

from fixtures.big_topology import big_topology
from pyvfio._uapi import ffi, lib
from pyvfio.fake.machine.system import System
from test_iommufd import (  # noqa: F401 (fixtures)
    FIXED,
    MSI_LAST,
    MSI_START,
    PAGE,
    RW,
    Iommufd,
    Machine,
    addr,
    ctx,
    err,
    m,
    machine_factory,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def _allow_raw(ctx: Iommufd, ioas: int, ranges: list[tuple[int, int]],
               where: int | None = None, num: int | None = None) -> int:
    """IOMMU_IOAS_ALLOW_IOVAS of ``ranges`` laid out at ``where`` (a raw
    user address; default: a cffi array); returns the ioctl's result."""
    if where is None:
        arr = ffi.new("struct iommu_iova_range[]", max(len(ranges), 1))
        where = addr(arr)
    for i, (s, l) in enumerate(ranges):
        elm = ffi.cast("struct iommu_iova_range *", where + 16 * i)
        elm.start, elm.last = s, l
    c = ctx.cmd("iommu_ioas_allow_iovas", ioas_id=ioas,
                num_iovas=len(ranges) if num is None else num, allowed_iovas=where)
    return ctx.ioctl(lib.IOMMU_IOAS_ALLOW_IOVAS, c)


def _auto_map(ctx: Iommufd, ioas: int, va: int, length: int) -> int:
    c = ctx.cmd("iommu_ioas_map", ioas_id=ioas, user_va=va, length=length, flags=RW)
    assert ctx.ioctl(lib.IOMMU_IOAS_MAP, c) == 0
    return int(c.iova)


# -- IOMMU_IOAS_ALLOW_IOVAS ---------------------------------------------------------------------
def test_allow_iovas_unsorted_and_adjacent_ranges(ctx: Iommufd, m: Machine) -> None:
    ioas = ctx.ioas()
    # iommufd_ioas_load_iovas: the order does not matter, and touching
    # ranges (last + 1 == the next start) do not overlap
    assert _allow_raw(ctx, ioas, [(0x40 * PAGE, 0x41 * PAGE - 1), (0x10 * PAGE, 0x11 * PAGE - 1),
                                  (0x11 * PAGE, 0x12 * PAGE - 1)]) == 0
    va = m.buffer(PAGE).address
    assert [_auto_map(ctx, ioas, va, PAGE) for _ in range(3)] == [
        0x10 * PAGE, 0x11 * PAGE, 0x40 * PAGE]
    c = ctx.cmd("iommu_ioas_map", ioas_id=ioas, user_va=va, length=PAGE, flags=RW)
    assert err(lambda: ctx.ioctl(lib.IOMMU_IOAS_MAP, c)) == errno.ENOSPC


@pytest.mark.parametrize("ranges", [
    [(PAGE, 4 * PAGE), (4 * PAGE, 8 * PAGE)],               # sharing one IOVA
    [(16 * PAGE, 32 * PAGE), (PAGE, 2 * PAGE), (20 * PAGE, 21 * PAGE)],  # inside, unsorted
    [(PAGE, 8 * PAGE), (PAGE, 2 * PAGE)],                   # the same start
    [(PAGE, 2 * PAGE), (3 * PAGE, 3 * PAGE)],               # empty (start == last)
    [(PAGE, 2 * PAGE), (8 * PAGE, 3 * PAGE)],               # inverted
])
def test_allow_iovas_invalid_ranges_are_einval(ctx: Iommufd, ranges: list[tuple[int, int]]) -> None:
    ioas = ctx.ioas()
    assert err(lambda: _allow_raw(ctx, ioas, ranges)) == errno.EINVAL
    assert err(lambda: _allow_raw(ctx, ioas, ranges[::-1])) == errno.EINVAL


def test_allow_iovas_many_ranges(ctx: Iommufd, m: Machine) -> None:
    """10,000 unsorted ranges: accepted, and automatic IOVAs come from
    them in address order; one overlap among them is EINVAL and leaves the
    previous ranges in force."""
    ioas = ctx.ioas()
    n = 10_000
    ranges = [((1 << 30) + 2 * i * PAGE, (1 << 30) + (2 * i + 1) * PAGE - 1) for i in range(n)]
    shuffled = ranges[1::2] + ranges[::2]
    assert _allow_raw(ctx, ioas, shuffled) == 0
    bad = shuffled + [(ranges[-1][0] - PAGE // 2, ranges[-1][0])]
    assert err(lambda: _allow_raw(ctx, ioas, bad)) == errno.EINVAL
    va = m.buffer(PAGE).address
    assert [_auto_map(ctx, ioas, va, PAGE) for _ in range(3)] == [s for s, _l in ranges[:3]]


def test_allow_iovas_over_reserved_and_mappings(ctx: Iommufd, m: Machine) -> None:
    """iopt_set_allow_iova: EADDRINUSE for any allowed range over a reserved
    one, wherever it sits in the array; existing mappings outside the
    allowed ranges do not matter."""
    ioas = ctx.ioas()
    dfd, _dev = m.cdev("0000:00:02.0", ctx)
    m.attach(dfd, ioas)
    va = m.buffer(PAGE).address
    ctx.map(ioas, va, PAGE, 0x800 * PAGE)
    many = [((1 << 30) + 2 * i * PAGE, (1 << 30) + (2 * i + 1) * PAGE - 1) for i in range(5000)]
    for at in (0, 2500, 5000):
        ranges = many[:at] + [(MSI_START - PAGE, MSI_START)] + many[at:]
        assert err(lambda: _allow_raw(ctx, ioas, ranges)) == errno.EADDRINUSE
    assert err(lambda: _allow_raw(ctx, ioas, [(MSI_LAST, MSI_LAST + PAGE)])) == errno.EADDRINUSE
    assert _allow_raw(ctx, ioas, [(MSI_START - PAGE, MSI_START - 1), (MSI_LAST + 1, MSI_LAST + PAGE)]
                      + many) == 0


@contextlib.contextmanager
def _guarded(pages: int) -> Any:
    """``pages`` readable, writable pages followed by one inaccessible page:
    yields the address of the first."""
    buf = mmap.mmap(-1, (pages + 1) * PAGE)
    base = addr(ffi.from_buffer(buf))
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    assert libc.mprotect(base + pages * PAGE, PAGE, 0) == 0
    try:
        yield base
    finally:
        assert libc.mprotect(base + pages * PAGE, PAGE, mmap.PROT_READ | mmap.PROT_WRITE) == 0
        buf.close()


def test_allow_iovas_fault_against_invalid_range(ctx: Iommufd) -> None:
    """iommufd_ioas_load_iovas reads one range at a time: an invalid range
    before the fault is EINVAL, a fault before any invalid range EFAULT."""
    ioas = ctx.ioas()
    fit = 2 * PAGE // 16  # ranges that fit before the guard page
    good = [((1 << 30) + 2 * i * PAGE, (1 << 30) + (2 * i + 1) * PAGE - 1) for i in range(fit)]
    with _guarded(2) as base:
        # all readable ranges valid, the array runs into the guard page
        assert err(lambda: _allow_raw(ctx, ioas, good, base, num=fit + 1)) == errno.EFAULT
        assert err(lambda: _allow_raw(ctx, ioas, good, base, num=fit + 5000)) == errno.EFAULT
        # an invalid range before the fault wins
        bad = good[:-1] + [(5 * PAGE, 4 * PAGE)]
        assert err(lambda: _allow_raw(ctx, ioas, bad, base, num=fit + 5000)) == errno.EINVAL
        overlapping = good[:-1] + [good[0]]
        assert err(lambda: _allow_raw(ctx, ioas, overlapping, base, num=fit + 1)) == errno.EINVAL
        # the whole array readable: accepted
        assert _allow_raw(ctx, ioas, good, base) == 0


# -- IOMMU_IOAS_IOVA_RANGES ---------------------------------------------------------------------
def test_iova_ranges_with_many_reserved_regions(machine_factory: Callable[..., Machine]) -> None:
    """A device with 3,000 reserved regions: IOMMU_IOAS_IOVA_RANGES reports
    their 3,002 holes (between them, and around the MSI window) in order,
    and a user array that ends early gets the ranges before the fault."""
    from pyvfio.fake.machine.topology import load

    topo = load("default")
    edu = next(d for d in topo["devices"] if d["bdf"] == "0000:00:02.0")
    edu["reserved_regions"] = [
        {"start": (1 << 32) + 2 * i * PAGE, "last": (1 << 32) + (2 * i + 1) * PAGE - 1,
         "type": "reserved"} for i in range(3000)]
    mach2 = machine_factory(topo)
    ctx2 = mach2.iommufd()
    ioas = ctx2.ioas()
    dfd, _dev = mach2.cdev("0000:00:02.0", ctx2)
    mach2.attach(dfd, ioas)
    arr = ffi.new("struct iommu_iova_range[]", 4000)
    c = ctx2.cmd("iommu_ioas_iova_ranges", ioas_id=ioas, num_iovas=4000, allowed_iovas=addr(arr))
    assert ctx2.ioctl(lib.IOMMU_IOAS_IOVA_RANGES, c) == 0
    got = [(int(arr[i].start), int(arr[i].last)) for i in range(int(c.num_iovas))]
    assert len(got) == 3002
    assert got[0] == (0, MSI_START - 1) and got[1][0] == MSI_LAST + 1
    assert got[2:5] == [((1 << 32) + (2 * i + 1) * PAGE, (1 << 32) + (2 * i + 2) * PAGE - 1)
                        for i in range(3)]
    with _guarded(2) as base:
        fit = 2 * PAGE // 16
        c = ctx2.cmd("iommu_ioas_iova_ranges", ioas_id=ioas, num_iovas=4000, allowed_iovas=base)
        assert err(lambda: ctx2.ioctl(lib.IOMMU_IOAS_IOVA_RANGES, c)) == errno.EFAULT
        written = ffi.cast("struct iommu_iova_range *", base)
        assert [(int(written[i].start), int(written[i].last)) for i in range(fit)] == got[:fit]


# -- copy_struct_from_user with a large struct size ---------------------------------------------
def _alloc_with_size(ctx: Iommufd, where: int, size: int) -> int:
    head = ffi.cast("struct iommu_ioas_alloc *", where)
    head.size, head.flags = size, 0
    return ctx.ioctl(lib.IOMMU_IOAS_ALLOC, where)


def test_copy_struct_from_user_large_tail(ctx: Iommufd) -> None:
    """check_zeroed_user: a zero tail of any size is accepted, a nonzero
    byte anywhere in it is E2BIG, a tail running into unmapped memory is
    EFAULT unless a nonzero byte comes before the fault."""
    size = 1 << 20
    with _guarded(size // PAGE) as base:
        assert _alloc_with_size(ctx, base, size) == 0
        for offset in (ffi.sizeof("struct iommu_ioas_alloc"), 70_000, size - 1):
            ffi.cast("char *", base)[offset] = b"\x01"
            assert err(lambda: _alloc_with_size(ctx, base, size)) == errno.E2BIG
            ffi.cast("char *", base)[offset] = b"\x00"
        # the tail reaches the guard page: EFAULT ...
        assert err(lambda: _alloc_with_size(ctx, base, size + 1)) == errno.EFAULT
        assert err(lambda: _alloc_with_size(ctx, base, 256 << 20)) == errno.EFAULT
        # ... unless a nonzero byte comes first
        ffi.cast("char *", base)[size - 1] = b"\x01"
        assert err(lambda: _alloc_with_size(ctx, base, 256 << 20)) == errno.E2BIG


def test_copy_struct_from_user_bounded_argument(ctx: Iommufd) -> None:
    """A cffi array argument bounds the tail to its own bytes."""
    size = 200_000
    arr = ffi.new("char[]", size)
    where = addr(arr)
    head = ffi.cast("struct iommu_ioas_alloc *", where)
    head.size = size
    assert ctx.ioctl(lib.IOMMU_IOAS_ALLOC, arr) == 0
    head.size = size + 1
    assert err(lambda: ctx.ioctl(lib.IOMMU_IOAS_ALLOC, arr)) == errno.EFAULT
    arr[size - 1] = b"\x02"
    head.size = size
    assert err(lambda: ctx.ioctl(lib.IOMMU_IOAS_ALLOC, arr)) == errno.E2BIG


# -- the setup layer on a machine with many devices ---------------------------------------------
def _cli(path: Path, *args: str) -> tuple[int, str]:
    from pyvfio.setup.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["--fake", str(path), "--fake-state", "-", *args])
    return rc, out.getvalue()


def test_status_of_big_topology_is_unchanged(tmp_path: Path) -> None:
    """``status`` (text and JSON) and ``groups --json`` on the default
    machine with 30 more devices (root ports, PFs and their VFs) give what
    they gave before the fake's sysfs walked device folders by lookup
    (tests/fixtures/big_topology_30.json)."""
    path = tmp_path / "big.json"
    path.write_text(json.dumps(big_topology(30, per_pf=7)))
    expected = json.loads((FIXTURES / "big_topology_30.json").read_text())
    for command, want in expected.items():
        rc, out = _cli(path, *command.split())
        assert (rc, out) == (want["rc"], want["stdout"]), command


def test_big_topology_sysfs(tmp_path: Path) -> None:
    """The VF links and bus numbers of the generated machine, listed and
    looked up one by one."""
    system = System(big_topology(450, per_pf=199))
    b = system.backend
    pf = "/sys/bus/pci/devices/0000:10:00.0"
    names = b.sysfs_listdir(pf)
    assert [n for n in names if n.startswith("virtfn")][:3] == ["virtfn0", "virtfn1", "virtfn10"]
    assert len([n for n in names if n.startswith("virtfn")]) == 199
    assert b.sysfs_readlink(f"{pf}/virtfn198") == "../0000:10:18.7"
    assert not b.exists(f"{pf}/virtfn199") and not b.exists(f"{pf}/virtfn01")
    assert b.sysfs_read(f"{pf}/sriov_numvfs").strip() == "199"
    assert b.sysfs_read("/sys/bus/pci/devices/0000:00:08.0/subordinate_bus_number").strip() \
        == str(0x10)
    vf = "/sys/bus/pci/devices/0000:11:00.3"
    assert b.sysfs_readlink(f"{vf}/physfn") == "../0000:11:00.0"
    assert b.sysfs_read(f"{vf}/vendor").strip() == "0x8086"
    assert b.sysfs_read(f"{vf}/../0000:11:00.0/device").strip() == "0x1572"
    assert b.sysfs_read(
        "/sys/devices/pci0000:00/0000:00:08.1/0000:11:00.3/class").strip() == "0x020000"
    assert not b.exists("/sys/devices/pci0000:00/0000:00:08.1/0000:11:00.0/0000:11:00.3")
    assert not b.exists("/sys/devices/pci0000:00/0000:11:00.3")
    assert not b.exists("/sys/devices/pci0000:00/0000:00:08.0/0000:11:00.3")
