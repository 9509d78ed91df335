"""Shared objects used from several threads at once, on the fake kernel.

Every test runs its threads with ``sys.setswitchinterval(1e-6)`` so that
the interpreter switches threads between almost any two bytecodes: a
read-modify-write of shared Python state without a lock shows up as a
duplicate IOVA (EEXIST), a range lost from a free list, or a mapping the
table forgot.  The kernel's contract is "any thread, any order"; these
tests hold pyvfio's objects to it.
"""

from __future__ import annotations

import sys
import threading
from typing import Any, Callable, Iterator

import pytest
from toolkit_env import FakeMachine, open_cdev

import pyvfio
from pyvfio import Container, DmaBuffer, DmaPool, Group, IommuType, IovaAllocator, map_buffer
from pyvfio.core.caps import IovaRange
from pyvfio.errors import ClosedError, VfioError

THREADS = 8


@pytest.fixture(autouse=True)
def fast_switching() -> Iterator[None]:
    """Switch threads as often as the interpreter can; restored after."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def run_threads(target: Callable[[int], None], n: int = THREADS) -> None:
    """Run ``target(i)`` in ``n`` threads started together; re-raise the
    first exception any of them raised."""
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            barrier.wait()
            target(i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
        assert not t.is_alive(), "a thread hung"
    if errors:
        raise errors[0]


@pytest.fixture
def machine() -> Iterator[FakeMachine]:
    m = FakeMachine()
    yield m
    m.check_no_leaks()


@pytest.fixture
def type1(machine: FakeMachine) -> Iterator[Container]:
    """A type1v2 container holding edu's group."""
    backend = machine.backend
    container = Container(backend=backend)
    group = Group.for_device(machine.edu, backend=backend)
    group.set_container(container)
    container.set_iommu(IommuType.TYPE1v2)
    try:
        yield container
    finally:
        group.close()
        container.close()


def test_container_map_picks_distinct_iovas(type1: Container) -> None:
    """Container.map() without an IOVA from 8 threads: no EEXIST, no IOVA
    handed out twice, and once everything is unmapped the allocator's free
    space is the whole usable range again."""
    allocator = type1.iova_allocator
    whole = allocator.free_ranges()
    buffers = [DmaBuffer(4096, backend=type1.backend) for _ in range(THREADS)]
    live: list[list[pyvfio.DmaMapping]] = [[] for _ in range(THREADS)]

    def work(i: int) -> None:
        mine = live[i]
        for n in range(150):
            mine.append(type1.map(buffers[i]))
            if n % 3 == 2:
                mine.pop(0).close()  # frees an IOVA while others allocate

    try:
        run_threads(work)
        mappings = [m for mine in live for m in mine]
        iovas = [m.iova for m in mappings]
        assert len(set(iovas)) == len(iovas)
        assert sorted(iovas) == [m.iova for m in type1.mappings]
        assert sorted(allocator.allocated) == sorted(iovas)
        assert not any(m.closed for m in mappings)
        run_threads(lambda i: [m.close() for m in live[i]])
        assert type1.mappings == () and allocator.allocated == {}
        assert allocator.free_ranges() == whole
    finally:
        for m in (m for mine in live for m in mine):
            m.close()
        for b in buffers:
            b.close()


def test_container_fixed_and_picked_iovas_together(type1: Container) -> None:
    """map_dma at fixed IOVAs (the container claims them in its allocator)
    beside map() picking IOVAs: nothing overlaps, nothing stays claimed."""
    allocator = type1.iova_allocator
    whole = allocator.free_ranges()
    top = whole[-1].last + 1 - THREADS * 0x100000
    buffers = [DmaBuffer(4096, backend=type1.backend) for _ in range(THREADS)]

    def work(i: int) -> None:
        for n in range(60):
            if i % 2:
                type1.map_dma(buffers[i], top + i * 0x100000 + n * 4096).close()
            else:
                type1.map(buffers[i]).close()

    try:
        run_threads(work)
        assert type1.mappings == () and allocator.allocated == {}
        assert allocator.free_ranges() == whole
    finally:
        for b in buffers:
            b.close()


def test_ioas_map_kernel_picks(machine: FakeMachine) -> None:
    """IOAS.map without an IOVA from 8 threads, each unmapping as it goes:
    the table records exactly the live mappings (an unmap in one thread
    never forgets the mapping another thread just got at a reused IOVA)."""
    with open_cdev(machine.backend, machine.edu) as (_dev, ioas):
        buffers = [DmaBuffer(4096, backend=machine.backend) for _ in range(THREADS)]
        live: list[list[pyvfio.IoasMapping]] = [[] for _ in range(THREADS)]

        def work(i: int) -> None:
            mine = live[i]
            for n in range(200):
                mine.append(ioas.map(buffers[i]))
                if n % 2:
                    mine.pop(0).close()

        try:
            run_threads(work)
            mappings = [m for mine in live for m in mine]
            assert not any(m.closed for m in mappings)
            assert sorted(m.iova for m in mappings) == [m.iova for m in ioas.mappings]
            run_threads(lambda i: [m.close() for m in live[i]])
            assert ioas.mappings == ()
            assert ioas.unmap_all() == 0  # the kernel holds nothing either
        finally:
            for m in (m for mine in live for m in mine):
                m.close()
            for b in buffers:
                b.close()


def test_ioas_map_with_a_shared_allocator(machine: FakeMachine) -> None:
    """map_buffer with one IovaAllocator shared by 8 threads: no EEXIST,
    distinct IOVAs, the allocator whole again at the end."""
    with open_cdev(machine.backend, machine.edu) as (_dev, ioas):
        allocator = IovaAllocator.for_ioas(ioas)
        whole = allocator.free_ranges()
        buffers = [DmaBuffer(4096, backend=machine.backend) for _ in range(THREADS)]
        live: list[list[pyvfio.IovaMapping]] = [[] for _ in range(THREADS)]

        def work(i: int) -> None:
            mine = live[i]
            for n in range(150):
                mine.append(map_buffer(ioas, buffers[i], allocator=allocator))
                if n % 3 == 2:
                    m = mine.pop(0)
                    m.close()
                    allocator.free(m.iova)

        try:
            run_threads(work)
            iovas = [m.iova for mine in live for m in mine]
            assert len(set(iovas)) == len(iovas)
            assert sorted(iovas) == sorted(allocator.allocated)
            for mine in live:
                for m in mine:
                    m.close()
                    allocator.free(m.iova)
            assert allocator.free_ranges() == whole and ioas.mappings == ()
        finally:
            for m in (m for mine in live for m in mine):
                m.close()
            for b in buffers:
                b.close()


def test_iova_allocator_alloc_free() -> None:
    """IovaAllocator.alloc/free/reserve straight from 8 threads."""
    allocator = IovaAllocator([IovaRange(0, (1 << 32) - 1)])
    whole = allocator.free_ranges()
    held: list[list[int]] = [[] for _ in range(THREADS)]

    def work(i: int) -> None:
        mine = held[i]
        for n in range(400):
            mine.append(allocator.alloc(4096 * (1 + n % 4), alignment=4096 << (n % 3)))
            if n % 2:
                allocator.free(mine.pop(0))
        base = 0x8000_0000 + i * 0x10_0000
        for n in range(20):
            allocator.reserve(base + n * 4096, 4096)
            mine.append(base + n * 4096)

    run_threads(work)
    starts = sorted(s for mine in held for s in mine)
    assert starts == sorted(allocator.allocated)
    used = allocator.allocated
    for a, b in zip(starts, starts[1:]):
        assert a + used[a] <= b, "two allocations overlap"
    run_threads(lambda i: [allocator.free(s) for s in held[i]])
    assert allocator.allocated == {} and allocator.free_ranges() == whole


def test_dma_pool_alloc_free(machine: FakeMachine) -> None:
    """DmaPool.alloc and chunk.free from 8 threads: no chunk handed out
    twice, the pool whole again at the end; a chunk freed by two threads
    at once is given back once."""
    with open_cdev(machine.backend, machine.edu) as (_dev, ioas):
        with DmaPool.create(ioas, 1 << 20, min_align=64) as pool:
            held: list[list[pyvfio.DmaChunk]] = [[] for _ in range(THREADS)]

            def work(i: int) -> None:
                mine = held[i]
                for n in range(300):
                    mine.append(pool.alloc(64 * (1 + n % 3), zero=False))
                    if n % 2:
                        mine.pop(0).free()

            run_threads(work)
            chunks = sorted((c for mine in held for c in mine), key=lambda c: c.offset)
            for a, b in zip(chunks, chunks[1:]):
                assert a.offset + a.length <= b.offset, "two chunks overlap"
            assert pool.used == sum(c.length for c in chunks)
            shared = [c for mine in held for c in mine]
            # every thread frees every chunk: each goes back exactly once,
            # while the others allocate (and may get the freed offsets)
            again: list[list[pyvfio.DmaChunk]] = [[] for _ in range(THREADS)]

            def free_all(i: int) -> None:
                for c in shared:
                    c.free()
                    if len(again[i]) < 5:
                        again[i].append(pool.alloc(64, zero=False))

            run_threads(free_all)
            extra = [c for mine in again for c in mine]
            assert pool.used == 64 * len(extra)
            for c in extra:
                c.free()
            assert pool.used == 0 and pool.available == pool.length


def test_container_close_during_map_unmap(machine: FakeMachine) -> None:
    """Threads map and unmap while another closes the container: no crash,
    the only errors are ClosedError and VfioError, every mapping ends
    closed and nothing is left open (the fixture checks the fds)."""
    backend = machine.backend
    for _round in range(5):
        container = Container(backend=backend)
        group = Group.for_device(machine.edu, backend=backend)
        group.set_container(container)
        container.set_iommu(IommuType.TYPE1v2)
        container.iova_allocator  # built before the race
        buffers = [DmaBuffer(4096, backend=backend) for _ in range(THREADS)]
        made: list[pyvfio.DmaMapping] = []
        unexpected: list[BaseException] = []
        started = threading.Event()

        def work(i: int) -> None:
            try:
                for n in range(10_000):
                    m = container.map(buffers[i]) if i % 2 else \
                        container.map_dma(buffers[i], 0x1000_0000 + i * 0x10_0000 + n % 16 * 4096)
                    made.append(m)
                    started.set()
                    m.close()
            except (ClosedError, VfioError):
                pass
            except BaseException as exc:  # noqa: BLE001 - reported below
                unexpected.append(exc)

        def close(i: int) -> None:
            if i == 0:
                started.wait(5)
                container.close()
            else:
                work(i)

        try:
            run_threads(close)
            assert unexpected == []
            assert container.closed and all(m.closed for m in made)
            assert container.mappings == ()
        finally:
            group.close()
            container.close()
            for b in buffers:
                b.close()


def test_device_tables_are_built_once(machine: FakeMachine) -> None:
    """The first use of Device.regions/irqs/config from 8 threads at once:
    every thread gets the same tables (one Irq per index, so an index
    enabled by one thread is enabled for all), and Region.io() maps once.
    Several rounds, each on a freshly opened device: the race is lost only
    when two threads find a table missing at the same time."""
    for _round in range(10):
        with open_cdev(machine.backend, machine.edu) as (dev, _ioas):
            seen: list[tuple[Any, Any, Any, Any]] = []

            def work(i: int) -> None:
                seen.append((dev.irqs, dev.regions, dev.config, dev.regions["BAR0"].io()))

            run_threads(work)
            irqs, regions, config, io = seen[0]
            for other in seen[1:]:
                assert other[0] is irqs and other[1] is regions and other[2] is config
                assert other[3] is io


def test_irq_vector_wait_from_several_threads(machine: FakeMachine) -> None:
    """Several threads wait on one MSI vector while another raises
    interrupts: every interrupt is counted by exactly one waiter (the
    kernel's counter is read and reset atomically).  A guard: the counter
    lives in the kernel, pyvfio keeps no state here to protect."""
    with open_cdev(machine.backend, machine.edu) as (dev, _ioas):
        dev.config.enable(memory=True, bus_master=True)
        (vector,) = dev.irqs["MSI"].enable()
        raises = 400
        counted = [0] * (THREADS - 1)
        done = threading.Event()

        def work(i: int) -> None:
            if i == 0:
                for _ in range(raises):
                    vector.trigger()
                done.set()
                return
            while True:
                try:
                    counted[i - 1] += vector.wait(timeout=0.02)
                except TimeoutError:
                    if done.is_set():
                        return

        run_threads(work)
        assert sum(counted) + vector.poll() == raises
        dev.irqs["MSI"].disable()


def test_irq_enable_disable_from_several_threads(machine: FakeMachine) -> None:
    """MSI enabled and disabled from 8 threads: the vector table always
    matches what the kernel holds (each enable either succeeds with one
    vector or finds it enabled), and nothing leaks."""
    with open_cdev(machine.backend, machine.edu) as (dev, _ioas):
        msi = dev.irqs["MSI"]

        def work(i: int) -> None:
            for _ in range(100):
                try:
                    msi.enable()
                except VfioError:
                    pass  # enabled already: its count is fixed
                vectors = msi.vectors
                assert len(vectors) <= 1
                msi.disable()

        run_threads(work)
        assert not msi.enabled and msi.vectors == ()
