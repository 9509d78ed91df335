"""The legacy VFIO interface of the fake kernel: /dev/vfio/vfio containers,
/dev/vfio/N groups and the type1 IOMMU, driven through the Backend with
the kernel's structs, checked against Linux 7.3's results and errnos."""

from __future__ import annotations

import errno
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvfio._uapi import ffi, lib
from pyvfio.backend.base import PROT_READ
from pyvfio.fake.core import FakeFile, IommuFault
from pyvfio.fake.machine.system import System
from pyvfio.fake.vfio import Type1Iommu

EDU = "0000:00:02.0"
NVME = "0000:00:03.0"
E1000E = "0000:00:04.0"
BRIDGE = "0000:00:05.0"
E1000_A = "0000:01:01.0"
E1000_B = "0000:01:02.0"
PAGE = 4096
MIB = 1 << 20
RW = None  # map_dma default flags: READ | WRITE
TYPE1 = 1
TYPE1v2 = 3


# -- container basics --------------------------------------------------------------------
def test_api_version(b, v):
    cfd = b.open("/dev/vfio/vfio")
    assert b.ioctl(cfd, lib.VFIO_GET_API_VERSION) == lib.VFIO_API_VERSION == 0


def test_check_extension_without_iommu(b):
    cfd = b.open("/dev/vfio/vfio")
    ext = {n: b.ioctl(cfd, lib.VFIO_CHECK_EXTENSION, n) for n in range(0, 12)}
    assert ext[lib.VFIO_TYPE1_IOMMU] == 1
    assert ext[lib.VFIO_TYPE1v2_IOMMU] == 1
    assert ext[lib.VFIO_UNMAP_ALL] == 1
    # only once an IOMMU is set
    assert ext[lib.VFIO_UPDATE_VADDR] == 0
    assert ext[lib.VFIO_DMA_CC_IOMMU] == 0
    # no-IOMMU mode is off; the nesting type is retired; no SPAPR/EEH on x86
    assert ext[lib.VFIO_NOIOMMU_IOMMU] == 0
    assert ext[6] == 0
    assert ext[lib.VFIO_SPAPR_TCE_IOMMU] == ext[lib.VFIO_EEH] == 0


def test_check_extension_noiommu_enabled(make_system):
    b = make_system("default", noiommu=True).backend
    cfd = b.open("/dev/vfio/vfio")
    assert b.ioctl(cfd, lib.VFIO_CHECK_EXTENSION, lib.VFIO_NOIOMMU_IOMMU) == 1


def test_check_extension_with_type1_module_missing(make_system):
    b = make_system("default", modules={"vfio_iommu_type1": False}).backend
    cfd = b.open("/dev/vfio/vfio")
    assert b.ioctl(cfd, lib.VFIO_CHECK_EXTENSION, lib.VFIO_TYPE1v2_IOMMU) == 0


def test_set_iommu_needs_a_group(b, v):
    cfd = b.open("/dev/vfio/vfio")
    assert v.errno_of(lambda: b.ioctl(cfd, lib.VFIO_SET_IOMMU, TYPE1v2)) == errno.EINVAL


def test_iommu_ioctls_before_set_iommu_are_einval(b, v):
    cfd, _gfd = v.ready([EDU], 0)
    info = ffi.new("struct vfio_iommu_type1_info *")
    info.argsz = ffi.sizeof(info[0])
    assert v.errno_of(lambda: b.ioctl(cfd, lib.VFIO_IOMMU_GET_INFO, info)) == errno.EINVAL
    assert v.errno_of(lambda: b.ioctl(cfd, 0x3B99, 0)) == errno.EINVAL


def test_set_iommu_twice_and_unknown_ioctl(b, v):
    cfd, _gfd = v.ready([EDU], 0, iommu=TYPE1v2)
    assert v.errno_of(lambda: b.ioctl(cfd, lib.VFIO_SET_IOMMU, TYPE1v2)) == errno.EINVAL
    assert b.ioctl(cfd, lib.VFIO_CHECK_EXTENSION, lib.VFIO_UPDATE_VADDR) == 1
    # The default topology models QEMU's VT-d, which has no snoop control:
    # the real VM's kernel answers 0 here (tests/parity, legacy_container_state).
    assert b.ioctl(cfd, lib.VFIO_CHECK_EXTENSION, lib.VFIO_DMA_CC_IOMMU) == 0
    assert b.ioctl(cfd, lib.VFIO_CHECK_EXTENSION, lib.VFIO_NOIOMMU_IOMMU) == 0
    # type1 passes through unknown ioctls and answers ENOTTY
    assert v.errno_of(lambda: b.ioctl(cfd, 0x3B99, 0)) == errno.ENOTTY


@pytest.mark.parametrize("kind", [lib.VFIO_SPAPR_TCE_IOMMU, lib.VFIO_NOIOMMU_IOMMU, 6, 0, 99])
def test_set_iommu_unsupported_type_is_enodev(b, v, kind):
    cfd, _gfd = v.ready([EDU], 0)
    assert v.errno_of(lambda: b.ioctl(cfd, lib.VFIO_SET_IOMMU, kind)) == errno.ENODEV


def test_set_iommu_without_type1_module(make_system, vfio_helper):
    b = make_system("default", modules={"vfio_iommu_type1": False}).backend
    v = vfio_helper(b)
    cfd, _gfd = v.ready([EDU], 0)
    assert v.errno_of(lambda: b.ioctl(cfd, lib.VFIO_SET_IOMMU, TYPE1v2)) == errno.ENODEV


def test_set_iommu_needs_interrupt_remapping(make_system, vfio_helper):
    system = make_system("default", iommu={"interrupt_remapping": False})
    b = system.backend
    v = vfio_helper(b)
    cfd, gfd = v.ready([EDU], 0)
    assert v.errno_of(lambda: b.ioctl(cfd, lib.VFIO_SET_IOMMU, TYPE1v2)) == errno.EPERM
    b.sysfs_write("/sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts", "Y")
    assert b.ioctl(cfd, lib.VFIO_SET_IOMMU, TYPE1v2) == 0


# -- GET_INFO ---------------------------------------------------------------------------------
def _parse_caps(buf: Any, first: int) -> dict[int, Any]:
    caps = {}
    off = first
    base = ffi.cast("char *", buf)
    while off:
        hdr = ffi.cast("struct vfio_info_cap_header *", base + off)
        caps[int(hdr.id)] = (off, int(hdr.version))
        off = int(hdr.next)
    return caps


def test_get_info_with_capabilities(b, v):
    cfd, _gfd = v.ready([EDU], 0, iommu=TYPE1v2)
    size = ffi.sizeof("struct vfio_iommu_type1_info")
    # first call with the bare struct: the kernel reports the size it needs
    info = ffi.new("struct vfio_iommu_type1_info *")
    info.argsz = size
    assert b.ioctl(cfd, lib.VFIO_IOMMU_GET_INFO, info) == 0
    assert info.flags == lib.VFIO_IOMMU_INFO_PGSIZES | lib.VFIO_IOMMU_INFO_CAPS
    assert info.iova_pgsizes == 0x40201000
    assert info.cap_offset == 0
    need = int(info.argsz)
    # migration (32) + dma avail (16) + 2 IOVA ranges (16 + 2 * 16)
    assert need == size + 32 + 16 + 48
    buf = ffi.new("char[]", need)
    full = ffi.cast("struct vfio_iommu_type1_info *", buf)
    full.argsz = need
    assert b.ioctl(cfd, lib.VFIO_IOMMU_GET_INFO, buf) == 0
    assert full.cap_offset == size
    caps = _parse_caps(buf, int(full.cap_offset))
    assert set(caps) == {lib.VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION,
                         lib.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL,
                         lib.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE}
    assert [caps[k][0] for k in (2, 3, 1)] == [size, size + 32, size + 48]
    mig = ffi.cast("struct vfio_iommu_type1_info_cap_migration *", buf + caps[2][0])
    assert mig.pgsize_bitmap == PAGE
    assert mig.max_dirty_bitmap_size == 1 << 28
    avail = ffi.cast("struct vfio_iommu_type1_info_dma_avail *", buf + caps[3][0])
    assert avail.avail == 65535
    rng = ffi.cast("struct vfio_iommu_type1_info_cap_iova_range *", buf + caps[1][0])
    assert rng.nr_iovas == 2
    ranges = ffi.cast("struct vfio_iova_range *", buf + caps[1][0] + 16)
    assert [(ranges[i].start, ranges[i].end) for i in range(2)] == [
        (0, 0xFEDFFFFF), (0xFEF00000, (1 << 48) - 1)]


def test_get_info_short_argsz(b, v):
    cfd, _gfd = v.ready([EDU], 0, iommu=TYPE1v2)
    info = ffi.new("struct vfio_iommu_type1_info *")
    info.argsz = 15
    assert v.errno_of(lambda: b.ioctl(cfd, lib.VFIO_IOMMU_GET_INFO, info)) == errno.EINVAL
    # 16 bytes (up to iova_pgsizes) is the minimum; cap_offset is not written
    info.argsz = 16
    info.cap_offset = 0xDEAD
    assert b.ioctl(cfd, lib.VFIO_IOMMU_GET_INFO, info) == 0
    assert info.argsz > 24 and info.cap_offset == 0xDEAD


def test_get_info_dma_avail_follows_mappings(b, v):
    cfd, _gfd = v.ready([EDU], 0, iommu=TYPE1v2)
    buf = v.buffer(2 * PAGE)
    v.map_dma(cfd, buf.address, 0x100000, PAGE)
    v.map_dma(cfd, buf.address + PAGE, 0x200000, PAGE)
    raw = ffi.new("char[]", 256)
    info = ffi.cast("struct vfio_iommu_type1_info *", raw)
    info.argsz = 256
    b.ioctl(cfd, lib.VFIO_IOMMU_GET_INFO, raw)
    caps = _parse_caps(raw, int(info.cap_offset))
    avail = ffi.cast("struct vfio_iommu_type1_info_dma_avail *", raw + caps[3][0])
    assert avail.avail == 65533


def test_reserved_regions_of_every_group_shape_the_iova_ranges(make_system, vfio_helper):
    system = make_system("default", iommu={"reserved_regions": [
        {"start": 0xFEE00000, "last": 0xFEEFFFFF, "type": "msi"},
        {"start": 0x1000, "last": 0x1FFF, "type": "direct-relaxable"},
    ]})
    system.device(NVME).extra_reserved = []
    from pyvfio.fake.machine.iommu import ReservedRegion

    system.device(NVME).extra_reserved.append(ReservedRegion(0x10000000, 0x1000FFFF, "direct"))
    b = system.backend
    v = vfio_helper(b)
    cfd, _g0 = v.ready([EDU], 0, iommu=TYPE1v2)
    buf = v.buffer(PAGE)
    # a relaxable region stays usable
    assert v.map_dma(cfd, buf.address, 0x1000, PAGE) == 0
    # a mapping where the next group has a direct region: attaching it fails
    assert v.map_dma(cfd, buf.address, 0x10000000, PAGE) == 0
    v.bind_vfio(NVME)
    g1 = b.open("/dev/vfio/1")
    assert v.errno_of(lambda: v.set_container(g1, cfd)) == errno.EINVAL
    # the failed attach left the group unowned and viable
    assert v.group_status(g1) == lib.VFIO_GROUP_FLAGS_VIABLE
    assert v.unmap_dma(cfd, 0x10000000, PAGE) == PAGE
    assert v.set_container(g1, cfd) == 0
    assert v.errno_of(lambda: v.map_dma(cfd, buf.address, 0x10000000, PAGE)) == errno.EINVAL
    assert v.map_dma(cfd, buf.address, 0x10010000, PAGE) == 0
    v.close()


# -- MAP_DMA ------------------------------------------------------------------------------------
@pytest.fixture
def type1(b, v):
    cfd, gfd = v.ready([EDU], 0, iommu=TYPE1v2)
    return cfd, gfd


def test_map_dma_rules(b, v, type1, system):
    cfd, _gfd = type1
    buf = v.buffer(4 * PAGE)
    R, W, VADDR = lib.VFIO_DMA_MAP_FLAG_READ, lib.VFIO_DMA_MAP_FLAG_WRITE, lib.VFIO_DMA_MAP_FLAG_VADDR
    e = v.errno_of
    assert e(lambda: v.map_dma(cfd, buf.address, 0x100000, 0)) == errno.EINVAL
    assert e(lambda: v.map_dma(cfd, buf.address, 0x100800, PAGE)) == errno.EINVAL
    assert e(lambda: v.map_dma(cfd, buf.address, 0x100000, PAGE + 1)) == errno.EINVAL
    assert e(lambda: v.map_dma(cfd, buf.address + 8, 0x100000, PAGE)) == errno.EINVAL
    assert e(lambda: v.map_dma(cfd, buf.address, 0x100000, PAGE, flags=0)) == errno.EINVAL
    assert e(lambda: v.map_dma(cfd, buf.address, 0x100000, PAGE, flags=R | VADDR)) == errno.EINVAL
    assert e(lambda: v.map_dma(cfd, buf.address, 0x100000, PAGE, flags=R | 0x8)) == errno.EINVAL
    assert e(lambda: v.map_dma(cfd, buf.address, 0x100000, PAGE, argsz=31)) == errno.EINVAL
    # iova + size wraps: EOVERFLOW before any alignment check
    assert e(lambda: v.map_dma(cfd, buf.address, (1 << 64) - PAGE, 2 * PAGE)) == errno.EOVERFLOW
    # the MSI window and beyond the 48-bit aperture are not usable
    assert e(lambda: v.map_dma(cfd, buf.address, 0xFEE00000, PAGE)) == errno.EINVAL
    assert e(lambda: v.map_dma(cfd, buf.address, 1 << 48, PAGE)) == errno.EINVAL
    assert system.user_memory.pinned_pages == 0
    assert v.map_dma(cfd, buf.address, 0x100000, 2 * PAGE, flags=R | W) == 0
    assert system.user_memory.pinned_pages == 2
    assert e(lambda: v.map_dma(cfd, buf.address, 0x101000, 2 * PAGE)) == errno.EEXIST
    assert e(lambda: v.map_dma(cfd, buf.address, 0xFF000, 2 * PAGE)) == errno.EEXIST
    assert v.map_dma(cfd, buf.address, 0x102000, PAGE, flags=W) == 0
    assert system.user_memory.pinned_pages == 3


def test_map_dma_user_memory_must_be_mapped(b, v, type1, system):
    cfd, _gfd = type1
    buf = v.buffer(2 * PAGE)
    buf.close()  # now unmapped
    assert v.errno_of(lambda: v.map_dma(cfd, buf.address, 0x100000, PAGE)) == errno.EFAULT
    ro = v.buffer(PAGE, PROT_READ)
    # device-writable needs writable memory; read-only DMA does not
    assert v.errno_of(lambda: v.map_dma(cfd, ro.address, 0x100000, PAGE)) == errno.EFAULT
    assert v.map_dma(cfd, ro.address, 0x100000, PAGE, flags=lib.VFIO_DMA_MAP_FLAG_READ) == 0
    assert system.user_memory.pinned_pages == 1
    v.buffers.remove(buf)


def test_map_dma_memlock_limit(b, v, type1, system):
    cfd, _gfd = type1
    system.memlock_limit = 3 * PAGE
    buf = v.buffer(4 * PAGE)
    assert v.map_dma(cfd, buf.address, 0x100000, 2 * PAGE) == 0
    assert v.errno_of(lambda: v.map_dma(cfd, buf.address, 0x200000, 2 * PAGE)) == errno.ENOMEM
    # the failed mapping does not exist and pinned nothing
    assert system.user_memory.pinned_pages == 2
    assert v.map_dma(cfd, buf.address, 0x200000, PAGE) == 0
    assert v.unmap_dma(cfd, 0x200000, 2 * PAGE) == PAGE
    # pages mapped twice are charged twice
    assert v.map_dma(cfd, buf.address, 0x300000, PAGE) == 0
    assert system.user_memory.pinned_pages == 3


def test_dma_entry_limit(b, v, system):
    b.sysfs_write("/sys/module/vfio_iommu_type1/parameters/dma_entry_limit", "2")
    cfd, _gfd = v.ready([EDU], 0, iommu=TYPE1v2)
    buf = v.buffer(PAGE)
    assert v.map_dma(cfd, buf.address, 0x1000, PAGE) == 0
    assert v.map_dma(cfd, buf.address, 0x3000, PAGE) == 0
    assert v.errno_of(lambda: v.map_dma(cfd, buf.address, 0x5000, PAGE)) == errno.ENOSPC
    # overlap is reported before the entry limit
    assert v.errno_of(lambda: v.map_dma(cfd, buf.address, 0x1000, PAGE)) == errno.EEXIST
    assert v.unmap_dma(cfd, 0x1000, PAGE) == PAGE
    assert v.map_dma(cfd, buf.address, 0x5000, PAGE) == 0


# -- UNMAP_DMA ----------------------------------------------------------------------------------
def test_unmap_dma_v2_rules(b, v, type1, system):
    cfd, _gfd = type1
    buf = v.buffer(8 * PAGE)
    for i in range(3):
        v.map_dma(cfd, buf.address, 0x100000 + i * 0x10000, 2 * PAGE)
    e = v.errno_of
    # the range may not bisect a mapping at either end
    assert e(lambda: v.unmap_dma(cfd, 0x101000, PAGE)) == errno.EINVAL
    assert e(lambda: v.unmap_dma(cfd, 0x100000, PAGE)) == errno.EINVAL
    assert e(lambda: v.unmap_dma(cfd, 0x100000, 0x11000)) == errno.EINVAL
    assert e(lambda: v.unmap_dma(cfd, 0x100000, 0)) == errno.EINVAL
    assert e(lambda: v.unmap_dma(cfd, 0x100800, PAGE)) == errno.EINVAL
    assert e(lambda: v.unmap_dma(cfd, 0x100000, PAGE + 1)) == errno.EINVAL
    assert e(lambda: v.unmap_dma(cfd, 0x100000, PAGE, flags=0x8)) == errno.EINVAL
    assert e(lambda: v.unmap_dma(cfd, (1 << 64) - PAGE, 2 * PAGE)) == errno.EOVERFLOW
    assert e(lambda: v.unmap_dma(cfd, 0x1000, PAGE, flags=lib.VFIO_DMA_UNMAP_FLAG_ALL)) == errno.EINVAL
    # nothing there: success, zero unmapped
    assert v.unmap_dma(cfd, 0x500000, PAGE) == 0
    # a range covering two whole mappings and empty space between them
    assert v.unmap_dma(cfd, 0xF0000, 0x20000 + 2 * PAGE) == 4 * PAGE
    assert system.user_memory.pinned_pages == 2
    assert v.unmap_dma(cfd, 0, 0, flags=lib.VFIO_DMA_UNMAP_FLAG_ALL) == 2 * PAGE
    assert system.user_memory.pinned_pages == 0


def test_unmap_dma_error_leaves_the_struct_alone(b, v, type1):
    cfd, _gfd = type1
    buf = v.buffer(2 * PAGE)
    v.map_dma(cfd, buf.address, 0x100000, 2 * PAGE)
    u = ffi.new("struct vfio_iommu_type1_dma_unmap *")
    u.argsz = ffi.sizeof(u[0])
    u.iova = 0x100000
    u.size = PAGE
    assert v.errno_of(lambda: b.ioctl(cfd, lib.VFIO_IOMMU_UNMAP_DMA, u)) == errno.EINVAL
    assert u.size == PAGE


def test_unmap_dma_v1_semantics(b, v):
    cfd, _gfd = v.ready([EDU], 0, iommu=TYPE1)
    buf = v.buffer(4 * PAGE)
    v.map_dma(cfd, buf.address, 0x100000, 4 * PAGE)
    # v1: a range starting inside a mapping unmaps nothing, successfully
    assert v.unmap_dma(cfd, 0x101000, PAGE) == 0
    # v1: a range covering the first IOVA unmaps the whole mapping
    assert v.unmap_dma(cfd, 0x100000, PAGE) == 4 * PAGE
    # v1 has no dirty tracking
    d = ffi.new("struct vfio_iommu_type1_dirty_bitmap *")
    d.argsz = ffi.sizeof(d[0])
    d.flags = lib.VFIO_IOMMU_DIRTY_PAGES_FLAG_START
    assert v.errno_of(lambda: b.ioctl(cfd, lib.VFIO_IOMMU_DIRTY_PAGES, d)) == errno.EACCES


# -- VADDR update ---------------------------------------------------------------------------------
def test_vaddr_invalidate_and_update(b, v, type1, system):
    cfd, _gfd = type1
    VADDR = lib.VFIO_DMA_MAP_FLAG_VADDR
    buf = v.buffer(4 * PAGE)
    other = v.buffer(4 * PAGE)
    v.map_dma(cfd, buf.address, 0x100000, 2 * PAGE)
    v.map_dma(cfd, buf.address, 0x200000, 2 * PAGE)
    e = v.errno_of
    # VADDR on a mapping that is still valid, or no mapping at all
    assert e(lambda: v.map_dma(cfd, other.address, 0x100000, 2 * PAGE, flags=VADDR)) == errno.EINVAL
    assert e(lambda: v.map_dma(cfd, other.address, 0x700000, PAGE, flags=VADDR)) == errno.ENOENT
    assert v.unmap_dma(cfd, 0x100000, 2 * PAGE, flags=lib.VFIO_DMA_UNMAP_FLAG_VADDR) == 2 * PAGE
    # invalidating again fails and rolls back the mappings it just invalidated
    assert e(lambda: v.unmap_dma(cfd, 0, 0x300000, flags=lib.VFIO_DMA_UNMAP_FLAG_VADDR)) == errno.EINVAL
    iommu = system.device(EDU).domain
    assert isinstance(iommu, Type1Iommu)
    assert iommu.vaddr_invalid_count == 1
    # size must match the invalidated mapping exactly
    assert e(lambda: v.map_dma(cfd, other.address, 0x100000, PAGE, flags=VADDR)) == errno.EINVAL
    # a group cannot join while a vaddr is invalid
    v.bind_vfio(NVME)
    g1 = b.open("/dev/vfio/1")
    assert e(lambda: v.set_container(g1, cfd)) == errno.EBUSY
    assert v.map_dma(cfd, other.address, 0x100000, 2 * PAGE, flags=VADDR) == 0
    assert iommu.vaddr_invalid_count == 0
    assert v.set_container(g1, cfd) == 0
    # the device now reaches the new vaddr
    ffi.memmove(ffi.cast("char *", other.address), b"fresh", 5)
    assert system.device(EDU).dma_read(0x100000, 5) == b"fresh"
    # accounting did not change
    assert system.user_memory.pinned_pages == 4


# -- dirty page tracking ------------------------------------------------------------------------
def _dirty(b, cfd, flags, rng=None):
    minsz = 8
    size = minsz + (ffi.sizeof("struct vfio_iommu_type1_dirty_bitmap_get") if rng else 0)
    raw = ffi.new("char[]", size)
    d = ffi.cast("struct vfio_iommu_type1_dirty_bitmap *", raw)
    d.argsz = size
    d.flags = flags
    if rng:
        r = ffi.cast("struct vfio_iommu_type1_dirty_bitmap_get *", raw + minsz)
        r.iova, r.size, r.bitmap.pgsize, r.bitmap.size, data = rng
        r.bitmap.data = ffi.cast(ffi.typeof(r.bitmap.data), data)
    return b.ioctl(cfd, lib.VFIO_IOMMU_DIRTY_PAGES, raw)


def test_dirty_pages(b, v, type1, system):
    cfd, _gfd = type1
    START = lib.VFIO_IOMMU_DIRTY_PAGES_FLAG_START
    STOP = lib.VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP
    GET = lib.VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP
    buf = v.buffer(8 * PAGE)
    v.map_dma(cfd, buf.address, 0x100000, 4 * PAGE)
    v.map_dma(cfd, buf.address, 0x104000, 2 * PAGE)
    bitmap = ffi.new("uint64_t[2]")
    addr = int(ffi.cast("uintptr_t", bitmap))
    e = v.errno_of
    assert e(lambda: _dirty(b, cfd, 0)) == errno.EINVAL
    assert e(lambda: _dirty(b, cfd, START | STOP)) == errno.EINVAL
    assert e(lambda: _dirty(b, cfd, 0x8)) == errno.EINVAL
    assert e(lambda: _dirty(b, cfd, GET)) == errno.EINVAL  # no room for the range
    assert e(lambda: _dirty(b, cfd, GET, (0x100000, 6 * PAGE, PAGE, 16, addr))) == errno.EINVAL
    assert _dirty(b, cfd, START) == 0
    assert _dirty(b, cfd, START) == 0
    assert e(lambda: _dirty(b, cfd, GET, (0x100000, 6 * PAGE, 2 * PAGE, 16, addr))) == errno.EINVAL
    assert e(lambda: _dirty(b, cfd, GET, (0x100000, 6 * PAGE, PAGE, 0, addr))) == errno.EINVAL
    assert e(lambda: _dirty(b, cfd, GET, (0x101000, 5 * PAGE, PAGE, 16, addr))) == errno.EINVAL
    assert e(lambda: _dirty(b, cfd, GET, (0x100000, 0, PAGE, 16, addr))) == errno.EINVAL
    assert e(lambda: _dirty(b, cfd, GET, (0x100000, 6 * PAGE, PAGE, 16, 1 << 47))) == errno.EINVAL
    # the device writes one page; type1 cannot tell which pages a physical
    # device dirtied, so every mapped page is reported dirty
    system.device(EDU).dma_write(0x100000, b"x")
    assert _dirty(b, cfd, GET, (0x100000, 6 * PAGE, PAGE, 16, addr)) == 0
    assert bitmap[0] == 0b111111 and bitmap[1] == 0
    # unmap can return the bitmap of what it removes
    raw = ffi.new("char[]", 24 + ffi.sizeof("struct vfio_bitmap"))
    u = ffi.cast("struct vfio_iommu_type1_dma_unmap *", raw)
    u.argsz = ffi.sizeof(raw)
    u.flags = lib.VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP
    u.iova = 0x104000
    u.size = 2 * PAGE
    bm = ffi.cast("struct vfio_bitmap *", raw + 24)
    bm.pgsize = PAGE
    bm.size = 8
    out = ffi.new("uint64_t[1]")
    bm.data = ffi.cast(ffi.typeof(bm.data), out)
    assert b.ioctl(cfd, lib.VFIO_IOMMU_UNMAP_DMA, raw) == 0
    assert u.size == 2 * PAGE and out[0] == 0b11
    # GET_DIRTY_BITMAP cannot be combined with ALL
    u.flags = lib.VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP | lib.VFIO_DMA_UNMAP_FLAG_ALL
    assert e(lambda: b.ioctl(cfd, lib.VFIO_IOMMU_UNMAP_DMA, raw)) == errno.EINVAL
    assert _dirty(b, cfd, STOP) == 0
    assert e(lambda: _dirty(b, cfd, GET, (0x100000, 4 * PAGE, PAGE, 16, addr))) == errno.EINVAL
    u.flags = lib.VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP
    u.iova = 0x100000
    u.size = 4 * PAGE
    assert e(lambda: b.ioctl(cfd, lib.VFIO_IOMMU_UNMAP_DMA, raw)) == errno.EINVAL


def test_dirty_bitmap_offsets_pack_into_words(b, v, type1):
    cfd, _gfd = type1
    buf = v.buffer(PAGE)
    # mappings at page 3 and page 70 of the range: bits land in two words,
    # earlier bits of a shared word are preserved
    v.map_dma(cfd, buf.address, 0x100000 + 3 * PAGE, PAGE)
    v.map_dma(cfd, buf.address, 0x100000 + 70 * PAGE, PAGE)
    _dirty(b, cfd, lib.VFIO_IOMMU_DIRTY_PAGES_FLAG_START)
    bitmap = ffi.new("uint64_t[2]", [0x1, 0])
    addr = int(ffi.cast("uintptr_t", bitmap))
    assert _dirty(b, cfd, lib.VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP,
                  (0x100000, 128 * PAGE, PAGE, 16, addr)) == 0
    assert bitmap[0] == (1 << 3) | 1
    assert bitmap[1] == 1 << 6


# -- DMA through the type1 domain --------------------------------------------------------------
def test_device_dma_goes_through_the_container(b, v, system):
    edu = system.device(EDU)
    assert edu.domain is None
    cfd, gfd = v.ready([EDU], 0)
    # attached but no IOMMU yet: DMA is blocked
    assert edu.domain is None
    b.ioctl(cfd, lib.VFIO_SET_IOMMU, TYPE1v2)
    assert isinstance(edu.domain, Type1Iommu)
    buf = v.buffer(2 * PAGE)
    v.map_dma(cfd, buf.address, 0x100000, PAGE)
    v.map_dma(cfd, buf.address + PAGE, 0x101000, PAGE, flags=lib.VFIO_DMA_MAP_FLAG_READ)
    edu.dma_write(0x100ff0, b"0123456789abcdef")
    assert bytes(ffi.buffer(ffi.cast("char *", buf.address + 0xFF0), 16)) == b"0123456789abcdef"
    # a read crossing two mappings
    ffi.memmove(ffi.cast("char *", buf.address + PAGE), b"next", 4)
    assert edu.dma_read(0x100ffc, 8) == b"cdefnext"
    with pytest.raises(IommuFault):
        edu.dma_write(0x101000, b"ro")
    with pytest.raises(IommuFault):
        edu.dma_read(0x200000, 4)
    assert [(f.bdf, f.iova, f.write) for f in system.faults] == [
        (EDU, 0x101000, True), (EDU, 0x200000, False)]
    v.unmap_dma(cfd, 0x100000, PAGE)
    with pytest.raises(IommuFault):
        edu.dma_read(0x100000, 1)
    assert v.unset_container(gfd) == 0
    assert edu.domain is None


def test_groups_share_the_container_page_table(b, v, system):
    cfd, _g0 = v.ready([EDU], 0, iommu=TYPE1v2)
    v.bind_vfio(NVME)
    g1 = b.open("/dev/vfio/1")
    v.set_container(g1, cfd)
    buf = v.buffer(PAGE)
    v.map_dma(cfd, buf.address, 0x100000, PAGE)
    system.device(NVME).dma_write(0x100000, b"nvme")
    assert system.device(EDU).dma_read(0x100000, 4) == b"nvme"


# -- container lifetime ------------------------------------------------------------------------
def test_container_outlives_its_fd(b, v, system):
    cfd, gfd = v.ready([EDU], 0, iommu=TYPE1v2)
    buf = v.buffer(PAGE)
    v.map_dma(cfd, buf.address, 0x100000, PAGE)
    b.close(cfd)
    # the group keeps the container and its mappings alive
    assert v.group_status(gfd) == lib.VFIO_GROUP_FLAGS_VIABLE | lib.VFIO_GROUP_FLAGS_CONTAINER_SET
    system.device(EDU).dma_write(0x100000, b"still")
    assert system.user_memory.pinned_pages == 1
    b.close(gfd)
    assert system.user_memory.pinned_pages == 0
    assert system.device(EDU).domain is None
    assert system.group(0).owner is None


def test_last_group_leaving_releases_the_iommu(b, v, system):
    cfd, gfd = v.ready([EDU], 0, iommu=TYPE1v2)
    buf = v.buffer(PAGE)
    v.map_dma(cfd, buf.address, 0x100000, PAGE)
    assert v.unset_container(gfd) == 0
    assert system.user_memory.pinned_pages == 0
    # back to the initial state: no IOMMU, no group
    assert b.ioctl(cfd, lib.VFIO_CHECK_EXTENSION, lib.VFIO_UPDATE_VADDR) == 0
    assert v.errno_of(lambda: b.ioctl(cfd, lib.VFIO_SET_IOMMU, TYPE1v2)) == errno.EINVAL
    info = ffi.new("struct vfio_iommu_type1_info *")
    info.argsz = 24
    assert v.errno_of(lambda: b.ioctl(cfd, lib.VFIO_IOMMU_GET_INFO, info)) == errno.EINVAL
    # and it can be set up again
    assert v.set_container(gfd, cfd) == 0
    assert b.ioctl(cfd, lib.VFIO_SET_IOMMU, TYPE1) == 0


def test_one_group_leaving_keeps_the_others_mappings(b, v, system):
    cfd, g0 = v.ready([EDU], 0, iommu=TYPE1v2)
    v.bind_vfio(NVME)
    g1 = b.open("/dev/vfio/1")
    v.set_container(g1, cfd)
    buf = v.buffer(PAGE)
    v.map_dma(cfd, buf.address, 0x100000, PAGE)
    b.close(g0)
    assert system.device(EDU).domain is None
    system.device(NVME).dma_write(0x100000, b"ok")
    assert system.user_memory.pinned_pages == 1


# -- group files --------------------------------------------------------------------------------
def test_group_node_exists_only_with_vfio_devices(b, v, system):
    assert not b.exists("/dev/vfio/0")
    assert v.errno_of(lambda: b.open("/dev/vfio/0")) == errno.ENOENT
    v.bind_vfio(EDU)
    assert b.exists("/dev/vfio/0")
    gfd = b.open("/dev/vfio/0")
    # one open at a time
    assert v.errno_of(lambda: b.open("/dev/vfio/0")) == errno.EBUSY
    b.close(gfd)
    b.close(b.open("/dev/vfio/0"))


def test_group_status_and_viability(b, v, system):
    # group 3: the bridge (no driver) and two e1000 functions
    v.bind_vfio(E1000_A)
    gfd = b.open("/dev/vfio/3")
    assert v.group_status(gfd) == 0  # e1000 still drives 01:02.0
    cfd = b.open("/dev/vfio/vfio")
    assert v.errno_of(lambda: v.set_container(gfd, cfd)) == errno.EPERM
    b.sysfs_write("/sys/bus/pci/drivers/e1000/unbind", E1000_B)
    assert v.group_status(gfd) == lib.VFIO_GROUP_FLAGS_VIABLE
    assert v.set_container(gfd, cfd) == 0
    assert v.group_status(gfd) == lib.VFIO_GROUP_FLAGS_VIABLE | lib.VFIO_GROUP_FLAGS_CONTAINER_SET
    st = ffi.new("struct vfio_group_status *")
    st.argsz = 7
    assert v.errno_of(lambda: b.ioctl(gfd, lib.VFIO_GROUP_GET_STATUS, st)) == errno.EINVAL
    assert v.errno_of(lambda: b.ioctl(gfd, lib.VFIO_GROUP_GET_STATUS, 0)) == errno.EFAULT
    assert v.errno_of(lambda: b.ioctl(gfd, 0x3B99, 0)) == errno.ENOTTY


def test_kernel_driver_cannot_bind_into_a_user_owned_group(b, v, system):
    v.bind_vfio(E1000_A)
    b.sysfs_write("/sys/bus/pci/drivers/e1000/unbind", E1000_B)
    cfd = b.open("/dev/vfio/vfio")
    gfd = b.open("/dev/vfio/3")
    v.set_container(gfd, cfd)
    # iommu_device_use_default_domain refuses: the device stays unbound
    err = v.errno_of(lambda: b.sysfs_write("/sys/bus/pci/drivers/e1000/bind", E1000_B))
    assert err == errno.EBUSY
    assert v.driver(E1000_B) is None
    err = v.errno_of(lambda: b.sysfs_write("/sys/bus/pci/drivers_probe", E1000_B))
    assert err == errno.EINVAL
    assert v.driver(E1000_B) is None
    # a driver that does no DMA may bind
    b.sysfs_write(f"/sys/bus/pci/devices/{E1000_B}/driver_override", "pci-stub")
    b.sysfs_write("/sys/bus/pci/drivers_probe", E1000_B)
    assert v.driver(E1000_B) == "pci-stub"
    b.close(gfd)
    b.sysfs_write("/sys/bus/pci/drivers/pci-stub/unbind", E1000_B)
    b.sysfs_write(f"/sys/bus/pci/devices/{E1000_B}/driver_override", "\n")
    b.sysfs_write("/sys/bus/pci/drivers/e1000/bind", E1000_B)
    assert v.driver(E1000_B) == "e1000"


def test_set_container_errors(b, v, system):
    cfd, gfd = v.ready([EDU], 0)
    cfd2 = b.open("/dev/vfio/vfio")
    assert v.errno_of(lambda: v.set_container(gfd, cfd2)) == errno.EINVAL
    assert v.errno_of(lambda: b.ioctl(gfd, lib.VFIO_GROUP_SET_CONTAINER, 0)) == errno.EFAULT
    v.unset_container(gfd)
    r, w = os.pipe()
    os.close(w)
    os.close(r)
    assert v.errno_of(lambda: v.set_container(gfd, r)) == errno.EBADF
    efd = b.eventfd()
    try:
        assert v.errno_of(lambda: v.set_container(gfd, efd)) == errno.EBADFD
    finally:
        b.close(efd)
    # a group file is not a container either
    v.bind_vfio(NVME)
    g1 = b.open("/dev/vfio/1")
    assert v.errno_of(lambda: v.set_container(gfd, g1)) == errno.EBADFD
    assert v.errno_of(lambda: v.unset_container(gfd)) == errno.EINVAL


def test_set_container_with_an_iommufd(b, v, system):
    calls = []

    class FakeIommufd(FakeFile):
        def compat_attach_group(self, vgroup):
            calls.append(("attach", vgroup.name))

        def compat_detach_group(self, vgroup):
            calls.append(("detach", vgroup.name))

    v.bind_vfio(EDU)
    gfd = b.open("/dev/vfio/0")
    ifd = b.install(FakeIommufd(b))
    assert v.set_container(gfd, ifd) == 0
    assert v.group_status(gfd) == lib.VFIO_GROUP_FLAGS_VIABLE | lib.VFIO_GROUP_FLAGS_CONTAINER_SET
    # with iommufd the ownership is claimed when a device is opened, not here
    assert system.group(0).owner is None
    assert v.unset_container(gfd) == 0
    assert calls == [("attach", "0"), ("detach", "0")]


def test_get_device_fd(b, v, system, stub_device_files):
    v.bind_vfio(EDU)
    gfd = b.open("/dev/vfio/0")
    e = v.errno_of
    assert e(lambda: v.get_device_fd(gfd, "0000:00:03.0")) == errno.ENODEV
    # the device exists but the group has no container yet
    assert e(lambda: v.get_device_fd(gfd, EDU)) == errno.EINVAL
    cfd = b.open("/dev/vfio/vfio")
    v.set_container(gfd, cfd)
    # the container has no IOMMU: the first open cannot use it
    assert e(lambda: v.get_device_fd(gfd, EDU)) == errno.EINVAL
    b.ioctl(cfd, lib.VFIO_SET_IOMMU, TYPE1v2)
    assert e(lambda: v.get_device_fd(gfd, EDU + "x")) == errno.ENODEV
    assert e(lambda: v.get_device_fd(gfd, EDU + " bogus")) == errno.EINVAL
    token = "bd8d9d2b-5a5f-4f5a-a211-f591514ba1f3"
    # not a PF with VFs, not a VF: a token is an error
    assert e(lambda: v.get_device_fd(gfd, f"{EDU} vf_token={token}")) == errno.EINVAL
    assert e(lambda: v.get_device_fd(gfd, f"{EDU} vf_token=1234")) == errno.EINVAL
    assert e(lambda: b.ioctl(gfd, lib.VFIO_GROUP_GET_DEVICE_FD, 0)) == errno.EFAULT
    long_name = ffi.new("char[]", b"a" * 5000)
    assert e(lambda: b.ioctl(gfd, lib.VFIO_GROUP_GET_DEVICE_FD, long_name)) == errno.EINVAL
    dfd = v.get_device_fd(gfd, EDU)
    dfd2 = v.get_device_fd(gfd, EDU + "  ")
    assert dfd != dfd2 and len(stub_device_files) == 2
    assert stub_device_files[0].pdev is system.device(EDU)
    assert not stub_device_files[0].cdev
    # devices use the container: it cannot be unset
    assert e(lambda: v.unset_container(gfd)) == errno.EBUSY
    b.close(dfd)
    assert e(lambda: v.unset_container(gfd)) == errno.EBUSY
    b.close(dfd2)
    assert v.unset_container(gfd) == 0


def test_group_file_lives_while_devices_are_open(b, v, system, stub_device_files):
    cfd, gfd = v.ready([EDU], 0, iommu=TYPE1v2)
    dfd = v.get_device_fd(gfd, EDU)
    b.close(gfd)
    b.close(cfd)
    # the device still holds the group (and so the container)
    assert system.group(0).owner is not None
    assert v.errno_of(lambda: b.open("/dev/vfio/0")) == errno.EBUSY
    assert isinstance(system.device(EDU).domain, Type1Iommu)
    b.close(dfd)
    assert system.group(0).owner is None
    assert system.device(EDU).domain is None
    b.close(b.open("/dev/vfio/0"))


def test_unbinding_an_open_device_fails_and_requests_release(b, v, system, stub_device_files):
    _cfd, gfd = v.ready([EDU], 0, iommu=TYPE1v2)
    dfd = v.get_device_fd(gfd, EDU)
    err = v.errno_of(lambda: b.sysfs_write("/sys/bus/pci/drivers/vfio-pci/unbind", EDU))
    assert err == errno.EBUSY
    assert stub_device_files[0].requests == 1
    assert v.driver(EDU) == "vfio-pci"
    b.close(dfd)
    b.sysfs_write("/sys/bus/pci/drivers/vfio-pci/unbind", EDU)
    assert v.driver(EDU) is None


def test_unbinding_the_last_vfio_device_kills_the_group(b, v, system):
    cfd, gfd = v.ready([EDU], 0, iommu=TYPE1v2)
    buf = v.buffer(PAGE)
    v.map_dma(cfd, buf.address, 0x100000, PAGE)
    b.sysfs_write("/sys/bus/pci/drivers/vfio-pci/unbind", EDU)
    assert not b.exists("/dev/vfio/0")
    # the container lost its group and IOMMU; the open group file is stale
    assert system.user_memory.pinned_pages == 0
    st = ffi.new("struct vfio_group_status *")
    st.argsz = 8
    assert v.errno_of(lambda: b.ioctl(gfd, lib.VFIO_GROUP_GET_STATUS, st)) == errno.ENODEV
    assert v.errno_of(lambda: v.set_container(gfd, cfd)) == errno.ENODEV
    assert v.errno_of(lambda: v.get_device_fd(gfd, EDU)) == errno.ENODEV
    # binding again makes a new group that can be opened next to the stale file
    v.bind_vfio(EDU)
    b.close(b.open("/dev/vfio/0"))


def test_cdev_use_blocks_the_group_and_vice_versa(b, v, system):
    v.bind_vfio(EDU)
    vgroup = system.group(0).vfio_group
    assert vgroup is not None
    vgroup.block_group()
    assert v.errno_of(lambda: b.open("/dev/vfio/0")) == errno.EBUSY
    vgroup.unblock_group()
    gfd = b.open("/dev/vfio/0")
    with pytest.raises(OSError) as info:
        vgroup.block_group()
    assert info.value.errno == errno.EBUSY
    b.close(gfd)


# -- no-IOMMU mode --------------------------------------------------------------------------------
def test_noiommu_groups(make_system, vfio_helper):
    system = make_system("default", iommu=None, noiommu=True)
    b = system.backend
    v = vfio_helper(b)
    assert b.sysfs_listdir("/sys/kernel/iommu_groups") == []
    v.bind_vfio(NVME)
    assert b.exists("/dev/vfio/noiommu-0")
    assert b.exists("/dev/vfio/devices/noiommu-vfio0")
    assert b.sysfs_read("/sys/kernel/iommu_groups/0/name") == "vfio-noiommu"
    assert b.sysfs_read("/sys/kernel/iommu_groups/0/reserved_regions") == ""
    cfd = b.open("/dev/vfio/vfio")
    gfd = b.open("/dev/vfio/noiommu-0")
    assert v.set_container(gfd, cfd) == 0
    assert b.ioctl(cfd, lib.VFIO_CHECK_EXTENSION, lib.VFIO_TYPE1v2_IOMMU) == 0
    assert b.ioctl(cfd, lib.VFIO_CHECK_EXTENSION, lib.VFIO_NOIOMMU_IOMMU) == 1
    assert v.errno_of(lambda: b.ioctl(cfd, lib.VFIO_SET_IOMMU, TYPE1v2)) == errno.ENODEV
    assert b.ioctl(cfd, lib.VFIO_SET_IOMMU, lib.VFIO_NOIOMMU_IOMMU) == 0
    m = ffi.new("struct vfio_iommu_type1_dma_map *")
    assert v.errno_of(lambda: b.ioctl(cfd, lib.VFIO_IOMMU_MAP_DMA, m)) == errno.ENOTTY
    b.close(gfd)
    b.close(cfd)
    system.cap_sys_rawio = False
    assert v.errno_of(lambda: b.open("/dev/vfio/noiommu-0")) == errno.EPERM
    system.cap_sys_rawio = True
    b.sysfs_write("/sys/bus/pci/drivers/vfio-pci/unbind", NVME)
    assert not b.exists("/dev/vfio/noiommu-0")
    assert b.sysfs_listdir("/sys/kernel/iommu_groups") == []


def test_noiommu_off_vfio_pci_cannot_bind_without_iommu(make_system, vfio_helper):
    b = make_system("default", iommu=None).backend
    v = vfio_helper(b)
    b.sysfs_write(f"/sys/bus/pci/devices/{EDU}/driver_override", "vfio-pci")
    assert v.errno_of(lambda: b.sysfs_write("/sys/bus/pci/drivers/vfio-pci/bind", EDU)) == errno.EINVAL
    assert v.driver(EDU) is None


# -- a reference model of type1 v2 map/unmap --------------------------------------------------------
WINDOW = 24  # pages of IOVA space exercised

_op = st.one_of(
    st.tuples(st.just("map"), st.integers(0, WINDOW - 1), st.integers(1, 6), st.booleans()),
    st.tuples(st.just("unmap"), st.integers(0, WINDOW - 1), st.integers(1, 10), st.just(False)),
    st.tuples(st.just("unmap_all"), st.just(0), st.just(0), st.just(False)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(_op, max_size=25))
def test_type1_v2_against_a_reference(vfio_helper, ops):
    system = System("minimal", models=None)
    b = system.backend
    v = vfio_helper(b)
    base = 0x400000
    buf = v.buffer(WINDOW * PAGE)
    for i in range(WINDOW):
        ffi.memmove(ffi.cast("char *", buf.address + i * PAGE), i.to_bytes(4, "little"), 4)
    try:
        v.bind_vfio(EDU)
        cfd = b.open("/dev/vfio/vfio")
        gfd = b.open("/dev/vfio/0")
        v.set_container(gfd, cfd)
        b.ioctl(cfd, lib.VFIO_SET_IOMMU, TYPE1v2)
        # reference: page -> (first page, pages, writable) of its mapping
        pages: dict[int, tuple[int, int, bool]] = {}
        for kind, first, count, read_only in ops:
            if kind == "map":
                count = min(count, WINDOW - first)
                flags = lib.VFIO_DMA_MAP_FLAG_READ | (0 if read_only else lib.VFIO_DMA_MAP_FLAG_WRITE)
                overlap = any(p in pages for p in range(first, first + count))
                try:
                    v.map_dma(cfd, buf.address + first * PAGE, base + first * PAGE,
                              count * PAGE, flags=flags)
                except OSError as e:
                    assert overlap and e.errno == errno.EEXIST
                else:
                    assert not overlap
                    for p in range(first, first + count):
                        pages[p] = (first, count, not read_only)
            elif kind == "unmap":
                last = first + count - 1
                splits = (first in pages and pages[first][0] != first) or \
                    (last in pages and pages[last][0] + pages[last][1] - 1 != last)
                try:
                    size = v.unmap_dma(cfd, base + first * PAGE, count * PAGE)
                except OSError as e:
                    assert splits and e.errno == errno.EINVAL
                else:
                    assert not splits
                    gone = [p for p in range(first, last + 1) if p in pages]
                    assert size == len(gone) * PAGE
                    for p in gone:
                        del pages[p]
            else:
                size = v.unmap_dma(cfd, 0, 0, flags=lib.VFIO_DMA_UNMAP_FLAG_ALL)
                assert size == len(pages) * PAGE
                pages.clear()
            # invariants: what the device sees matches the reference
            assert system.user_memory.pinned_pages == len(pages)
            edu = system.device(EDU)
            for p in range(WINDOW):
                if p in pages:
                    assert edu.dma_read(base + p * PAGE, 4) == p.to_bytes(4, "little")
                    if pages[p][2]:
                        edu.dma_write(base + p * PAGE + 8, b"w")
                    else:
                        with pytest.raises(IommuFault):
                            edu.dma_write(base + p * PAGE + 8, b"w")
                else:
                    with pytest.raises(IommuFault):
                        edu.dma_read(base + p * PAGE, 4)
        b.close(gfd)
        b.close(cfd)
        assert system.user_memory.pinned_pages == 0
    finally:
        for fd in list(b._files):
            b.close(fd)
        v.close()


def test_cache_coherency(make_system, vfio_helper):
    system = make_system("default", iommu={"enforce_cache_coherency": False})
    b = system.backend
    v = vfio_helper(b)
    cfd, _gfd = v.ready([EDU], 0, iommu=TYPE1v2)
    assert b.ioctl(cfd, lib.VFIO_CHECK_EXTENSION, lib.VFIO_DMA_CC_IOMMU) == 0
    # without IOMMU_CAP_CACHE_COHERENCY vfio refuses to register the device
    b2 = make_system("default", iommu={"cache_coherency": False}).backend
    v2 = vfio_helper(b2)
    b2.sysfs_write(f"/sys/bus/pci/devices/{EDU}/driver_override", "vfio-pci")
    assert v2.errno_of(lambda: b2.sysfs_write("/sys/bus/pci/drivers/vfio-pci/bind", EDU)) == errno.EINVAL
    assert not b2.exists("/dev/vfio/0") and v2.driver(EDU) is None


def test_group_path_with_the_vfio_pci_device_file(vfio_helper):
    system = System("minimal")
    b = system.backend
    v = vfio_helper(b)
    try:
        cfd, gfd = v.ready([EDU], 0, iommu=TYPE1v2)
        dfd = v.get_device_fd(gfd, EDU)
        info = ffi.new("struct vfio_device_info *")
        info.argsz = ffi.sizeof(info[0])
        assert b.ioctl(dfd, lib.VFIO_DEVICE_GET_INFO, info) == 0
        assert info.flags & lib.VFIO_DEVICE_FLAGS_PCI
        assert v.errno_of(lambda: v.unset_container(gfd)) == errno.EBUSY
        # the group file outlives its fd while the device is open
        b.close(gfd)
        assert system.group(0).owner is not None
        b.close(dfd)
        assert system.group(0).owner is None
        b.close(cfd)
    finally:
        for fd in list(b._files):
            b.close(fd)
        v.close()
