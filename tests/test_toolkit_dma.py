"""DMA memory on the fake kernel: DmaBuffer (anonymous, memfd, hugetlb),
its buffer faces, the IOVA allocator, map_buffer on both IOMMU paths, the
descriptor pool, and real DMA by the edu model through them."""

from __future__ import annotations

import errno
import os
from typing import Iterator

import pytest
from toolkit_env import FakeMachine, open_cdev, open_group

from pyvfio import DmaBuffer, DmaPool, IovaAllocator, map_buffer
from pyvfio.caps import IovaRange
from pyvfio.dma import HUGE_1G, HUGE_2M, hugepages_available
from pyvfio.errors import ClosedError, InvalidArgumentError, UnsupportedError

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
        assert buf.length == buf.size == len(buf) == 8192 and buf.page_size == 4096
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
    np = pytest.importorskip("numpy")
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


@pytest.mark.parametrize("memfd", [False, True])
@pytest.mark.parametrize("page", [HUGE_2M, HUGE_1G])
def test_hugetlb_buffers(machine: FakeMachine, page: int, memfd: bool) -> None:
    if hugepages_available(page) == 0:
        with pytest.raises(UnsupportedError, match=r"huge pages .*reserve some with 'echo N > "
                                                    r"/sys/kernel/mm/hugepages/") as info:
            DmaBuffer(page, backend=machine.backend, page_size=page, memfd=memfd)
        assert info.value.errno in (errno.ENOMEM, errno.EINVAL, errno.ENOENT)
        return
    with DmaBuffer(page, backend=machine.backend, page_size=page, memfd=memfd) as buf:
        assert buf.hugetlb and buf.length == page and buf.address % page == 0


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
