"""DMA memory on the fake kernel: DmaBuffer (anonymous, memfd, hugetlb),
its buffer faces, the IOVA allocator, map_buffer on both IOMMU paths, the
descriptor pool, and real DMA by the edu model through them."""

from __future__ import annotations

import errno
import gc
import mmap
import os
import socket
import sys
import tempfile
from typing import Any, Iterator

import pytest
from toolkit_env import FakeMachine, open_cdev, open_group

from pyvfio import DmaBuffer, DmaPool, IovaAllocator, map_buffer
from pyvfio.core.caps import IovaRange
from pyvfio.errors import ClosedError, InvalidArgumentError, UnsupportedError
from pyvfio.toolkit.dma import HUGE_1G, HUGE_2M, hugepages_available

MSI_WINDOW = 0xFEE00000


@pytest.fixture
def machine() -> Iterator[FakeMachine]:
    m = FakeMachine()
    yield m
    m.check_no_leaks()


def edu_copy(dev, src: int, dst: int, count: int, to_ram: bool) -> None:  # type: ignore[no-untyped-def]
    """One edu DMA transfer through the pread/pwrite accessors."""
    bar0 = dev.regions["BAR0"]
    bar0.write64(0x80, src)
    bar0.write64(0x88, dst)
    bar0.write64(0x90, count)
    bar0.write64(0x98, 1 | (2 if to_ram else 0))
    assert bar0.read64(0x98) & 1 == 0


def test_anonymous_buffer(machine: FakeMachine) -> None:
    with DmaBuffer(5000, backend=machine.backend) as buf:
        assert buf.length == len(buf) == 8192 and buf.page_size == 4096
        assert buf.address % 4096 == 0 and not buf.hugetlb and buf.fd == -1
        buf[0:4] = b"abcd"
        assert bytes(buf.view[0:4]) == b"abcd" and buf[1] == ord("b")
        p = buf.pointer("uint32_t *")
        assert p[0] == int.from_bytes(b"abcd", "little")
        p[1] = 0x11223344
        assert bytes(buf[4:8]) == (0x11223344).to_bytes(4, "little")
        buf.fill(0xA5)
        assert bytes(buf[0:2]) == b"\xa5\xa5"
        with pytest.raises(InvalidArgumentError, match="outside the buffer"):
            buf.pointer(offset=8192)
        assert "DMA buffer 0x" in repr(buf)
    assert buf.closed
    with pytest.raises(ClosedError):
        buf.view  # noqa: B018


def test_numpy_without_copies(machine: FakeMachine) -> None:
    import numpy as np
    with DmaBuffer(4096, backend=machine.backend) as buf:
        array = np.asarray(buf)  # the array interface: no copy
        assert array.dtype == np.uint8 and array.shape == (4096,)
        array[10] = 42
        assert buf[10] == 42
        words = buf.numpy("uint32")
        words[0] = 0xDEADBEEF
        assert bytes(buf[0:4]) == (0xDEADBEEF).to_bytes(4, "little")
        assert np.shares_memory(array, words)
        del array, words


def test_invalid_buffers(machine: FakeMachine) -> None:
    with pytest.raises(InvalidArgumentError, match="positive int"):
        DmaBuffer(0, backend=machine.backend)
    with pytest.raises(InvalidArgumentError, match="not a power of two"):
        DmaBuffer(4096, backend=machine.backend, page_size=3 << 12)


HUGETLB_ERRNOS = (errno.ENOMEM, errno.EINVAL, errno.ENOENT, errno.ENODEV)


def hugetlb_refusal(page: int) -> str:
    """The message expected when ``page``-byte huge pages cannot be had."""
    if os.path.isdir(f"/sys/kernel/mm/hugepages/hugepages-{page // 1024}kB"):
        return r"huge pages .*reserve some with 'echo N > /sys/kernel/mm/hugepages/"
    return rf"this machine does not support {page // 1024} kB huge pages"


@pytest.mark.parametrize("memfd", [False, True])
@pytest.mark.parametrize("page", [HUGE_2M, HUGE_1G])
def test_hugetlb_buffers(machine: FakeMachine, page: int, memfd: bool) -> None:
    if hugepages_available(page) == 0:
        with pytest.raises(UnsupportedError, match=hugetlb_refusal(page)) as info:
            DmaBuffer(page, backend=machine.backend, page_size=page, memfd=memfd)
        assert info.value.errno in HUGETLB_ERRNOS
        return
    with DmaBuffer(page, backend=machine.backend, page_size=page, memfd=memfd) as buf:
        assert buf.hugetlb and buf.length == page and buf.address % page == 0


@pytest.mark.parametrize("memfd", [False, True])
def test_hugetlb_size_the_machine_lacks(machine: FakeMachine, memfd: bool) -> None:
    """A huge page size without a hugepages-<kB>kB directory (64 kB on
    x86-64): memfd_create answers ENODEV, mmap EINVAL; both are an
    UnsupportedError naming the size, not an advice to reserve pages of it."""
    page = 1 << 16
    if hugepages_available(page):
        pytest.skip("this machine has free 64 kB huge pages")
    with pytest.raises(UnsupportedError, match=hugetlb_refusal(page)) as info:
        DmaBuffer(4096, backend=machine.backend, page_size=page, memfd=memfd)
    assert info.value.errno in HUGETLB_ERRNOS
    if not os.path.isdir("/sys/kernel/mm/hugepages/hugepages-64kB"):
        assert "echo" not in str(info.value) and "sizes it supports" in str(info.value)


def test_memfd_buffer_for_map_file(machine: FakeMachine) -> None:
    with open_cdev(machine.backend, machine.edu) as (dev, ioas):
        dev.config.enable(memory=True, bus_master=True)
        with DmaBuffer(0x2000, backend=machine.backend, memfd=True) as buf:
            assert buf.fd >= 0
            buf[0:16] = b"memfd to device!"
            assert os.pread(buf.fd, 16, 0) == b"memfd to device!"  # MAP_SHARED: one memory
            mapping = ioas.map_file(buf.fd, buf.length, iova=0x200000)
            edu_copy(dev, 0x200000, 0x40000, 16, to_ram=False)
            edu_copy(dev, 0x40000, 0x201000, 16, to_ram=True)
            assert bytes(buf[0x1000:0x1010]) == b"memfd to device!"
            mapping.close()


def test_iova_allocator() -> None:
    alloc = IovaAllocator([(0, 0xFFFF_FFFF), IovaRange(0x1_0000_0000, 0x1_FFFF_FFFF)],
                          limit=1 << 28)
    assert alloc.free_ranges() == [IovaRange(0x1000, (1 << 28) - 1)]  # page 0 kept free
    a = alloc.alloc(1)
    assert a == 0x1000 and alloc.allocated == {0x1000: 0x1000}
    b = alloc.alloc(0x3000, alignment=0x10000)
    assert b == 0x10000
    c = alloc.alloc(0x1000)
    assert c == 0x2000  # the gap before b is used first
    alloc.free(b)
    alloc.free(a)
    alloc.free(c)
    assert alloc.free_ranges() == [IovaRange(0x1000, (1 << 28) - 1)] and alloc.allocated == {}
    alloc.reserve(0x100000, 0x2000)
    assert 0x100000 in alloc.allocated
    with pytest.raises(InvalidArgumentError, match="is not free"):
        alloc.reserve(0x101000, 0x1000)
    with pytest.raises(UnsupportedError, match="below 0x10000000") as info:
        alloc.alloc(1 << 28)
    assert info.value.errno == errno.ENOSPC
    with pytest.raises(InvalidArgumentError, match="was not allocated"):
        alloc.free(0x5000)
    with pytest.raises(InvalidArgumentError, match="power of two"):
        IovaAllocator([(0, 100)], alignment=3)


def test_allocator_follows_the_iommu(machine: FakeMachine) -> None:
    with open_cdev(machine.backend, machine.edu) as (_dev, ioas):
        alloc = IovaAllocator.for_space(ioas)
        ranges = alloc.free_ranges()
        assert ranges and not any(MSI_WINDOW in r for r in ranges)  # reserved: excluded
        assert alloc.alignment >= 4096
    with open_group(machine.backend, machine.edu) as (_dev, container):
        alloc = IovaAllocator.for_space(container, limit=1 << 32)
        assert not any(MSI_WINDOW in r for r in alloc.free_ranges())
        assert alloc.free_ranges()[-1].last < 1 << 32


def test_map_buffer_on_both_paths(machine: FakeMachine) -> None:
    with open_group(machine.backend, machine.edu) as (dev, container):
        alloc = IovaAllocator.for_container(container, limit=1 << 28)
        buf = DmaBuffer(0x2000, backend=machine.backend)
        m = map_buffer(container, buf, allocator=alloc)
        assert m.iova == 0x1000 and container.mappings == (m,)
        with pytest.raises(InvalidArgumentError, match="needs an IOVA"):
            map_buffer(container, buf)
        closed = DmaBuffer(4096, backend=machine.backend)
        closed.close()
        with pytest.raises(InvalidArgumentError, match="closed"):
            map_buffer(container, closed, allocator=alloc)
        assert list(alloc.allocated) == [0x1000]  # the failed map gave its IOVA back
        m.close()
        buf.close()
    with open_cdev(machine.backend, machine.edu) as (dev, ioas):
        with DmaBuffer(0x1000, backend=machine.backend) as buf:
            m2 = map_buffer(ioas, buf)  # the kernel picks the IOVA
            assert m2.length == 0x1000 and ioas.mappings == (m2,)
            fixed = map_buffer(ioas, buf, 0x300000, writeable=False)
            assert fixed.iova == 0x300000 and not fixed.writeable
            assert buf.mappings == (m2, fixed) and fixed.buffer is buf
            buf.close(unmap=True)  # a buffer still mapped does not close without it
            assert m2.closed and fixed.closed and not ioas.mappings


def test_dma_pool(machine: FakeMachine) -> None:
    with open_cdev(machine.backend, machine.edu) as (dev, ioas):
        dev.config.enable(memory=True, bus_master=True)
        iovas = IovaAllocator.for_ioas(ioas, limit=1 << 28)
        pool = DmaPool.create(ioas, 0x10000, allocator=iovas)
        assert pool.iova in iovas.allocated and pool.length == 0x10000
        small = pool.alloc(24)
        assert small.length == 64 and small.iova % 64 == 0 and small.offset == 0
        page = pool.alloc(4096, align=4096)
        assert page.iova % 4096 == 0 and page.offset == 0x1000
        middle = pool.alloc(100)
        assert middle.offset == 64  # the gap left by the page alignment
        assert pool.used == 64 + 4096 + 128 and pool.available == 0x10000 - pool.used
        page.write(b"descriptor", 8)
        assert page.read(8, 10) == b"descriptor"
        assert bytes(pool.buffer[page.offset + 8:page.offset + 18]) == b"descriptor"
        assert page.pointer("char *", 8)[0] == b"d"
        # the device reads a chunk and writes another, by their IOVAs
        edu_copy(dev, page.iova + 8, 0x40000, 10, to_ram=False)
        edu_copy(dev, 0x40000, middle.iova, 10, to_ram=True)
        assert middle.read(0, 10) == b"descriptor"
        with pytest.raises(InvalidArgumentError, match="does not fit"):
            small.write(bytes(65))
        page.free()
        page.free()  # idempotent
        with pytest.raises(InvalidArgumentError, match="was freed"):
            page.view  # noqa: B018
        with pool.alloc(4096, align=4096) as again:
            assert again.offset == 0x1000 and again.read(8, 10) == bytes(10)  # zeroed
        with pytest.raises(UnsupportedError, match="no free chunk") as info:
            pool.alloc(0x10000)
        assert info.value.errno == errno.ENOMEM
        mapping = pool.mapping
        assert mapping is not None
        pool.close()
        assert mapping.closed and pool.buffer.closed and iovas.allocated == {}
        with pytest.raises(ClosedError):
            pool.alloc(64)


def test_pool_over_a_caller_mapping(machine: FakeMachine) -> None:
    with open_cdev(machine.backend, machine.edu) as (_dev, ioas):
        with DmaBuffer(0x4000, backend=machine.backend) as buf:
            mapping = ioas.map(buf, 0x400000)
            with DmaPool(buf, mapping.iova, min_align=512) as pool:
                chunk = pool.alloc(1)
                assert chunk.length == 512 and chunk.iova == 0x400000
                assert "DmaChunk iova=0x400000" in repr(chunk)
            assert not mapping.closed and not buf.closed  # not the pool's to close
            mapping.close()


# -- the buffer protocol ------------------------------------------------------------------


@pytest.mark.parametrize("memfd", [False, True])
def test_buffer_protocol(machine: FakeMachine, memfd: bool) -> None:
    """memoryview(buf) and everything built on it, on every Python version."""
    with DmaBuffer(5000, backend=machine.backend, memfd=memfd) as buf:
        assert isinstance(buf, mmap.mmap)
        view = memoryview(buf)
        assert view.nbytes == 8192 and view.format == "B" and not view.readonly
        view[0:3] = b"abc"
        view.release()
        assert bytes(buf)[:4] == b"abc\0" and len(bytes(buf)) == 8192
        r, w = os.pipe()
        try:
            os.write(w, b"readv")
            assert os.readv(r, [buf]) == 5 and bytes(buf[0:5]) == b"readv"
        finally:
            os.close(r)
            os.close(w)
        a, b = socket.socketpair()
        with a, b:
            a.sendall(b"recv_into")
            assert b.recv_into(buf) == 9 and bytes(buf[0:9]) == b"recv_into"
        with tempfile.TemporaryFile() as f:
            f.write(b"readinto")
            f.seek(0)
            assert f.readinto(buf) == 8 and bytes(buf[0:8]) == b"readinto"
        assert buf.pointer("char *")[0] == b"r"  # the same memory
        with pytest.raises(UnsupportedError, match="cannot be resized"):
            buf.resize(16384)
        assert buf.length == 8192


def test_close_waits_for_views(machine: FakeMachine) -> None:
    """A live memoryview or array keeps the memory mapped: close() refuses
    (no dangling views) and works once they are gone."""
    buf = DmaBuffer(4096, backend=machine.backend)
    view = buf.view[16:32]
    with pytest.raises(BufferError, match="release them"):
        buf.close()
    assert not buf.closed
    view[0] = 7  # still valid memory
    view.release()
    import numpy as np
    array = np.asarray(buf)
    with pytest.raises(BufferError):
        buf.close()
    del array
    buf.close()
    assert buf.closed
    with pytest.raises(ValueError):  # mmap's own check
        memoryview(buf)
    with pytest.raises(ClosedError):
        np.asarray(buf)


def test_closed_buffer_raises(machine: FakeMachine) -> None:
    """Every operation on a closed buffer raises ClosedError (fill used to
    write to unmapped memory)."""
    import numpy  # noqa: F401  (np.asarray below needs it)
    buf = DmaBuffer(0x2000, backend=machine.backend, memfd=True)
    buf.close()
    buf.close()  # idempotent
    calls: list[Any] = [
        lambda: buf.fill(0xFF), lambda: buf.pointer(), lambda: buf.view, lambda: buf.fd,
        lambda: buf[0], lambda: buf.__setitem__(0, 1), lambda: bytes(buf),
        lambda: buf.numpy(), lambda: buf.__array_interface__,
    ]
    for call in calls:
        with pytest.raises(ClosedError):
            call()
    assert len(buf) == buf.length == 0x2000 and "closed" in repr(buf)
    with pytest.raises(ClosedError):
        with buf:
            pass


def test_fill(machine: FakeMachine) -> None:
    with DmaBuffer(3 << 20, backend=machine.backend) as buf:  # several fill blocks
        buf.fill(0x5A)
        assert bytes(buf) == b"\x5a" * (3 << 20)
        with pytest.raises(InvalidArgumentError, match="0..255"):
            buf.fill(256)


def test_unclosed_buffer_warns(machine: FakeMachine) -> None:
    buf = DmaBuffer(4096, backend=machine.backend, memfd=True)
    buf[0] = 1
    with pytest.warns(ResourceWarning, match="unclosed DMA buffer"):
        del buf
        gc.collect()


# -- pools and chunks after their buffer is gone --------------------------------------------


def test_chunks_of_a_closed_caller_buffer(machine: FakeMachine) -> None:
    """A pool over a caller's buffer does not own it: once the buffer is
    closed, chunks and the pool raise ClosedError (no dangling pointer)."""
    with open_cdev(machine.backend, machine.edu) as (_dev, ioas):
        buf = DmaBuffer(0x4000, backend=machine.backend)
        mapping = ioas.map(buf, 0x400000)
        with DmaPool(buf, mapping.iova) as pool:
            chunk = pool.alloc(64)
            mapping.close()
            buf.close()
            calls: list[Any] = [
                lambda: chunk.pointer(), lambda: chunk.view, lambda: chunk.read(),
                lambda: chunk.write(b"x"), lambda: chunk.zero(), lambda: pool.alloc(64),
            ]
            for call in calls:
                with pytest.raises(ClosedError):
                    call()
            chunk.free()
            assert pool.used == 0  # the failed alloc took nothing
        with pytest.raises(ClosedError):
            DmaPool(buf, 0x400000)


def test_chunks_of_a_closed_pool(machine: FakeMachine) -> None:
    with open_cdev(machine.backend, machine.edu) as (_dev, ioas):
        pool = DmaPool.create(ioas, 0x4000, iova=0x800000)
        chunk = pool.alloc(128)
        view = chunk.view
        with pytest.raises(BufferError):  # the view pins the buffer
            pool.close()
        assert pool.closed and ioas.mappings == () and not pool.buffer.closed
        del view
        pool.buffer.close()
        for call in (lambda: chunk.pointer(), lambda: chunk.view, lambda: chunk.write(b"x")):
            with pytest.raises(ClosedError):
                call()
        chunk.free()


# -- pools that fail to build ---------------------------------------------------------------


@pytest.fixture
def unraisable(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Exceptions raised where nobody can catch them (``__del__``)."""
    seen: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    return seen


def test_pool_constructor_validates_first(machine: FakeMachine, unraisable: list[Any]) -> None:
    with DmaBuffer(0x4000, backend=machine.backend) as buf:
        for bad in (3, 0, -64, 1.5):
            with pytest.raises(InvalidArgumentError, match="not a power of two"):
                DmaPool(buf, 0x400000, min_align=bad)  # type: ignore[arg-type]
        gc.collect()
    assert unraisable == []


def test_pool_create_leaves_nothing_behind(machine: FakeMachine, unraisable: list[Any]) -> None:
    with open_cdev(machine.backend, machine.edu) as (_dev, ioas):
        iovas = IovaAllocator.for_ioas(ioas, limit=1 << 28)
        with pytest.raises(InvalidArgumentError, match="not a power of two"):
            DmaPool.create(ioas, 0x4000, allocator=iovas, min_align=3)
        assert iovas.allocated == {} and ioas.mappings == ()

        class Failing(DmaPool):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                raise RuntimeError("no pool today")

        with pytest.raises(RuntimeError, match="no pool today"):
            Failing.create(ioas, 0x4000, allocator=iovas)
        assert iovas.allocated == {} and ioas.mappings == ()
        with pytest.raises(RuntimeError):
            Failing.create(ioas, 0x4000, iova=0x900000, allocator=iovas)
        assert iovas.allocated == {} and ioas.mappings == ()
        gc.collect()  # a leaked DmaBuffer would warn here (an error in these tests)
    assert unraisable == []


# -- the allocator and allow_iovas ------------------------------------------------------------


def test_allocator_within_allowed_iovas(machine: FakeMachine) -> None:
    with open_cdev(machine.backend, machine.edu) as (_dev, ioas):
        ioas.allow_iovas([(0x10000000, 0x1FFFFFFF)])
        alloc = IovaAllocator.for_ioas(ioas)
        assert alloc.alloc(4096) == 0x10000000
        assert alloc.free_ranges() == [IovaRange(0x10001000, 0x1FFFFFFF)]
        ioas.allow_iovas([(0x2000, 0x2FFF), (0x30000000, 0x3FFFFFFF)])
        assert IovaAllocator.for_ioas(ioas).free_ranges() == [
            IovaRange(0x2000, 0x2FFF), IovaRange(0x30000000, 0x3FFFFFFF)]
        assert IovaAllocator.for_ioas(ioas, limit=0x30000000).free_ranges() == [
            IovaRange(0x2000, 0x2FFF)]
        ioas.allow_iovas([])  # everything again
        assert IovaAllocator.for_ioas(ioas).alloc(4096) == 0x1000
        with DmaBuffer(0x1000, backend=machine.backend) as buf:
            ioas.allow_iovas([(0x40000000, 0x4FFFFFFF)])
            alloc = IovaAllocator.for_ioas(ioas)
            m = map_buffer(ioas, buf, allocator=alloc)
            assert m.iova == 0x40000000
            m.close()


def test_reserve_rejects_empty_ranges() -> None:
    alloc = IovaAllocator([(0, 0xFFFF)])
    with pytest.raises(InvalidArgumentError, match="positive"):
        alloc.reserve(0x2000, 0)


def test_allocators_leave_out_what_is_already_mapped() -> None:
    import mmap

    from pyvfio import Container, Group, IommuFd, IommuType
    from pyvfio.fake import System

    system = System("minimal")
    b = system.backend
    b.sysfs_write("/sys/bus/pci/devices/0000:00:02.0/driver_override", "vfio-pci")
    b.sysfs_write("/sys/bus/pci/drivers_probe", "0000:00:02.0")
    with IommuFd(backend=b) as fd:
        ioas = fd.ioas()
        first = ioas.iova_ranges()[0].start
        low = max(first, 0x1000)
        ioas.map(mmap.mmap(-1, 0x3000), low)
        iova = IovaAllocator.for_ioas(ioas).alloc(0x1000)
        assert not low <= iova < low + 0x3000
        ioas.map(mmap.mmap(-1, 0x1000), iova)  # no EEXIST
    with Container(backend=b) as c, Group(0, backend=b) as g:
        g.set_container(c)
        c.set_iommu(IommuType.TYPE1v2)
        c.map_dma(mmap.mmap(-1, 0x2000), 0x1000)
        iova = IovaAllocator.for_container(c).alloc(0x1000)
        assert iova >= 0x3000
        c.map_dma(mmap.mmap(-1, 0x1000), iova)
