"""Interrupts on the fake kernel: INTx, MSI, MSI-X, ERR and REQ through
eventfds; blocking, selector and asyncio waits; loopback triggers;
masking; lifetimes."""

from __future__ import annotations

import asyncio
import errno
import os
import resource
import selectors
import threading
import time
from typing import Iterator

import pytest
from toolkit_env import FakeMachine, open_cdev, open_group

import pyvfio
from pyvfio import EventFd, PciIrq
from pyvfio.errors import ClosedError, InvalidArgumentError, UnsupportedError
from pyvfio.fake import vfio_pci
from pyvfio.fake.machine.pci import IRQ_MSIX

IRQ_RAISE = 0x60
IRQ_ACK = 0x64


@pytest.fixture
def machine() -> Iterator[FakeMachine]:
    m = FakeMachine()
    yield m
    m.check_no_leaks()


def test_irq_map(machine: FakeMachine) -> None:
    with open_cdev(machine.backend, machine.edu) as (dev, _ioas):
        irqs = dev.irqs
        assert irqs is dev.irqs
        names = [irqs[i].name for i in irqs]
        # ERR: Linux 7.3 offers it on every device, the fake (like older
        # kernels) on PCI Express functions only
        assert names in (["INTX", "MSI", "MSIX", "REQ"], ["INTX", "MSI", "MSIX", "ERR", "REQ"])
        assert irqs["msi"] is irqs[PciIrq.MSI] is irqs.msi and PciIrq.MSI in irqs
        assert irqs["MSI-X"] is irqs.msix and irqs.msix is not None and irqs.msix.count == 0
        assert (irqs.err is None) == ("ERR" not in irqs)
        intx = irqs.intx
        assert intx is not None and intx.maskable and intx.automasked and intx.eventfd
        assert irqs[PciIrq.MSI].count == 1 and irqs[PciIrq.MSI].noresize
        assert "MSI:1" in repr(irqs) and "count=1" in repr(irqs["MSI"])
        with pytest.raises(KeyError, match="no interrupt index named 'NMI'"):
            irqs["NMI"]
        assert irqs.msi is not None and irqs.msi.refresh().count == 1
    with open_cdev(machine.backend, machine.nvme) as (dev, _ioas):
        assert [dev.irqs[i].name for i in dev.irqs] == ["INTX", "MSI", "MSIX", "ERR", "REQ"]
        assert dev.irqs["MSIX"].count == 65


def test_msi_completion_interrupt(machine: FakeMachine) -> None:
    with open_cdev(machine.backend, machine.edu) as (dev, _ioas):
        dev.config.enable(memory=True, bus_master=True)
        bar0 = dev.regions["BAR0"].mmap()
        msi = dev.irqs["MSI"]
        (vector,) = msi.enable()
        assert msi.enabled and msi.vectors == (vector,) and msi.vector(0) is vector
        assert dev.irqs.enabled == [msi] and vector.vector == 0
        assert "MSI vector 0" in vector.describe()
        bar0.write32(0x20, 0x80)  # raise an interrupt when the factorial is done
        bar0.write32(0x08, 6)
        assert vector.wait(timeout=1.0) == 1
        assert bar0.read32(0x08) == 720 and bar0.read32(0x24) == 1
        bar0.write32(IRQ_ACK, 1)
        assert vector.poll() == 0
        start = time.monotonic()
        with pytest.raises(TimeoutError, match="not signalled within 0.05 s"):
            vector.wait(timeout=0.05)
        assert time.monotonic() - start >= 0.05
        for _ in range(3):
            bar0.write32(IRQ_RAISE, 0x10)
        assert vector.wait(0) == 3  # the counter: interrupts since the last read
        msi.disable()
        assert not msi.enabled and vector.closed and msi.vectors == ()
        msi.disable()  # idempotent
        with pytest.raises(ClosedError):
            vector.wait(0)


def test_selector_and_fileno(machine: FakeMachine) -> None:
    with open_cdev(machine.backend, machine.edu) as (dev, _ioas):
        dev.config.enable(memory=True, bus_master=True)
        (vector,) = dev.irqs["MSI"].enable()
        with selectors.DefaultSelector() as sel:
            sel.register(vector, selectors.EVENT_READ, "msi")
            assert sel.select(timeout=0) == []
            dev.regions["BAR0"].write32(IRQ_RAISE, 1)
            events = sel.select(timeout=1)
            assert [key.data for key, _mask in events] == ["msi"]
            assert events[0][0].fd == vector.fileno() == vector.fd
            assert vector.poll() == 1
            sel.unregister(vector)


def test_asyncio_waits_without_polling(machine: FakeMachine) -> None:
    with open_cdev(machine.backend, machine.edu) as (dev, _ioas):
        dev.config.enable(memory=True, bus_master=True)
        bar0 = dev.regions["BAR0"]
        (vector,) = dev.irqs["MSI"].enable()
        polls = 0
        real_poll = vector.poll

        def counting_poll() -> int:
            nonlocal polls
            polls += 1
            return real_poll()

        vector.poll = counting_poll  # type: ignore[method-assign]

        async def scenario() -> list[int]:
            loop = asyncio.get_running_loop()
            loop.call_later(0.05, bar0.write32, IRQ_RAISE, 1)
            first = await vector.wait_async(timeout=2)
            waits = polls
            counts = [first]
            for i in range(3):
                loop.call_later(0.01 * (i + 1), bar0.write32, IRQ_RAISE, 2)

            async def collect() -> None:
                # the eventfd adds up signals that arrive between two reads
                async for count in vector:
                    counts.append(count)
                    if sum(counts) >= 4:
                        break

            await asyncio.wait_for(collect(), timeout=5)
            with pytest.raises(TimeoutError):
                await vector.wait_async(timeout=0.02)
            assert waits <= 3, f"{waits} polls for one 50 ms wait: busy polling"
            return counts

        counts = asyncio.run(scenario())
        assert counts[0] == 1 and sum(counts) == 4


def test_loopback_triggers(machine: FakeMachine) -> None:
    with open_cdev(machine.backend, machine.nvme) as (dev, _ioas):
        msix = dev.irqs["MSIX"]
        vectors = msix.enable(3)
        assert [v.vector for v in vectors] == [0, 1, 2] and len(msix.vectors) == 3
        msix.trigger(1)
        assert [v.poll() for v in vectors] == [0, 1, 0]
        msix.trigger(0, 3)
        assert [v.poll() for v in vectors] == [1, 1, 1]
        msix.trigger(0, values=[True, False, True])
        assert [v.poll() for v in vectors] == [1, 0, 1]
        vectors[2].trigger()
        assert vectors[2].wait(1) == 1
        # the device's own MSI-X message reaches its vector's eventfd only
        dev.config.enable(bus_master=True)  # the message is a memory write
        machine.model(machine.nvme).raise_irq(IRQ_MSIX, 2)
        assert [v.poll() for v in vectors] == [0, 0, 1]
        with pytest.raises(InvalidArgumentError, match="exceed the 65"):
            msix.trigger(64, 2)
        for name in ("ERR", "REQ"):
            (v,) = dev.irqs[name].enable()
            dev.irqs[name].trigger()
            assert v.wait(1) == 1
            dev.irqs[name].disable()
            assert v.closed


def test_intx_is_automasked(machine: FakeMachine) -> None:
    with open_group(machine.backend, machine.edu) as (dev, _c):
        dev.config.enable(memory=True)
        bar0 = dev.regions["BAR0"].mmap()
        intx = dev.irqs["INTX"]
        (line,) = intx.enable()
        bar0.write32(IRQ_RAISE, 1)
        assert line.wait(1) == 1
        bar0.write32(IRQ_RAISE, 2)  # masked by the kernel until unmasked
        assert line.poll() == 0
        bar0.write32(IRQ_ACK, 3)  # clear the cause, then re-arm
        line.unmask()
        assert line.poll() == 0
        bar0.write32(IRQ_RAISE, 4)
        assert line.wait(1) == 1
        bar0.write32(IRQ_ACK, 4)
        intx.unmask()
        # explicit mask: a level raised while masked fires at unmask
        intx.mask()
        bar0.write32(IRQ_RAISE, 8)
        assert line.poll() == 0
        intx.unmask()
        assert line.wait(1) == 1
        bar0.write32(IRQ_ACK, 8)
        intx.unmask()
        intx.trigger()  # loopback
        assert line.wait(1) == 1


def test_msi_cannot_be_masked(machine: FakeMachine) -> None:
    with open_cdev(machine.backend, machine.edu) as (dev, _ioas):
        msi = dev.irqs["MSI"]
        (vector,) = msi.enable()
        with pytest.raises(UnsupportedError, match="cannot mask MSI vectors") as info:
            vector.mask()
        assert info.value.errno == errno.ENOTTY
        with pytest.raises(UnsupportedError, match="cannot unmask"):
            msi.unmask()


def test_enable_rules(machine: FakeMachine) -> None:
    with open_cdev(machine.backend, machine.edu) as (dev, _ioas):
        irqs = dev.irqs
        with pytest.raises(UnsupportedError, match="no MSIX vectors"):
            irqs["MSIX"].enable()
        with pytest.raises(InvalidArgumentError, match="exceed the 1 the device has"):
            irqs["MSI"].enable(2)
        with pytest.raises(InvalidArgumentError, match="count >= 1"):
            irqs["MSI"].enable(0)
        with pytest.raises(OSError) as info:
            irqs["INTX"].unmask()  # not enabled: the kernel says EINVAL
        assert info.value.errno == errno.EINVAL
        irqs["MSI"].enable()
        with pytest.raises(InvalidArgumentError, match="count is fixed .VFIO_IRQ_INFO_NORESIZE"):
            irqs["MSI"].enable()
        with pytest.raises(InvalidArgumentError, match="exclude each other; disable MSI"):
            irqs["INTX"].enable()
        (req,) = irqs["REQ"].enable()  # REQ is independent of the others
        irqs["MSI"].disable()
        (line,) = irqs["INTX"].enable()
        core = vfio_pci.core_of(machine.system.devices[machine.edu])
        assert core is not None and core.irq_type == 0
    # closing the device disables interrupts (in the kernel too) and closes eventfds
    assert line.closed and req.closed and not irqs["INTX"].enabled
    assert core.irq_type == 5 and core.req_trigger is None


def test_err_interrupt(machine: FakeMachine) -> None:
    with open_cdev(machine.backend, machine.nvme) as (dev, _ioas):
        (err,) = dev.irqs["ERR"].enable()
        assert vfio_pci.inject_error(machine.system.devices[machine.nvme])
        assert err.wait(1) == 1


def test_req_interrupt_on_unbind(machine: FakeMachine) -> None:
    """The host asks the user to release the device: REQ fires.  (Linux
    then waits in the unbind until the device is closed; the fake gives
    EBUSY instead.)"""
    with open_cdev(machine.backend, machine.edu) as (dev, _ioas):
        (req,) = dev.irqs["REQ"].enable()
        with pytest.raises(OSError):
            machine.backend.sysfs_write("/sys/bus/pci/drivers/vfio-pci/unbind", machine.edu)
        assert req.wait(1) >= 1


def test_plain_eventfd(machine: FakeMachine) -> None:
    with EventFd(machine.backend) as efd:
        assert efd.poll() == 0
        efd.signal(5)
        assert efd.wait(0) == 5
        assert "eventfd" in efd.describe()

        async def later() -> int:
            asyncio.get_running_loop().call_later(0.01, efd.signal)
            return await efd.wait_async(1)

        assert asyncio.run(later()) == 1
    assert efd.closed


# -- several asyncio waiters on one vector --------------------------------------------------


def test_concurrent_async_waiters_all_wake(machine: FakeMachine) -> None:
    """Every task waiting when the interrupt arrives gets its count (the
    loop has one reader for the eventfd, not one per waiter)."""
    with open_cdev(machine.backend, machine.edu) as (dev, _ioas):
        dev.config.enable(memory=True, bus_master=True)
        (vector,) = dev.irqs["MSI"].enable()

        async def scenario() -> None:
            loop = asyncio.get_running_loop()
            waiters = [asyncio.create_task(vector.wait_async(timeout=2)) for _ in range(3)]
            await asyncio.sleep(0.01)
            loop.call_later(0.02, vector.trigger)
            assert await asyncio.gather(*waiters) == [1, 1, 1]
            # nothing stays registered to eat later interrupts
            vector.trigger()
            await asyncio.sleep(0.02)
            assert vector.poll() == 1

        asyncio.run(scenario())


def test_async_for_and_wait_async_together(machine: FakeMachine) -> None:
    with EventFd(machine.backend) as efd:

        async def scenario() -> None:
            seen: list[int] = []

            async def monitor() -> None:
                async for count in efd:
                    seen.append(count)
                    if len(seen) == 2:
                        return

            task = asyncio.create_task(monitor())
            await asyncio.sleep(0.01)
            asyncio.get_running_loop().call_later(0.01, efd.signal, 2)
            assert await efd.wait_async(timeout=2) == 2
            await asyncio.sleep(0.01)
            asyncio.get_running_loop().call_later(0.01, efd.signal, 5)
            assert await efd.wait_async(timeout=2) == 5
            await asyncio.wait_for(task, 2)
            assert seen == [2, 5]

        asyncio.run(scenario())


def test_a_late_waiter_shares_the_count(machine: FakeMachine) -> None:
    """A task that starts waiting after the eventfd was signalled reads the
    count at once; the tasks already waiting get it too."""
    with EventFd(machine.backend) as efd:

        async def scenario() -> None:
            early = asyncio.create_task(efd.wait_async(timeout=2))
            await asyncio.sleep(0.01)
            efd.signal(3)  # no loop iteration before the next read
            assert await efd.wait_async(timeout=2) == 3
            assert await early == 3
            with pytest.raises(TimeoutError, match="not signalled within 0.02 s"):
                await efd.wait_async(timeout=0.02)

        asyncio.run(scenario())


def test_close_wakes_async_waiters(machine: FakeMachine) -> None:
    with open_cdev(machine.backend, machine.edu) as (dev, _ioas):
        msi = dev.irqs["MSI"]
        (vector,) = msi.enable()

        async def scenario() -> list[int]:
            seen: list[int] = []

            async def monitor() -> None:
                async for count in vector:
                    seen.append(count)

            waiter = asyncio.create_task(vector.wait_async())
            iterator = asyncio.create_task(monitor())
            await asyncio.sleep(0.01)
            msi.disable()
            with pytest.raises(ClosedError, match="MSI vector 0 is closed"):
                await asyncio.wait_for(waiter, 2)
            await asyncio.wait_for(iterator, 2)  # the async for just ends
            return seen

        assert asyncio.run(scenario()) == []
        with pytest.raises(ClosedError):
            vector.trigger()  # not the kernel's EINVAL: the vector is gone
        with pytest.raises(ClosedError):
            vector.unmask()


# -- blocking waits on any fd number ------------------------------------------------------------


@pytest.fixture
def high_fds() -> Iterator[None]:
    """Fds 0..1099 taken, so the next one opened is above select()'s 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 1200
    if soft != resource.RLIM_INFINITY and soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is too low")
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    fillers: list[int] = []
    try:
        null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        fillers.append(null)
        while fillers[-1] < 1100:
            fillers.append(os.dup(null))
        yield
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_wait_on_a_high_fd(machine: FakeMachine, high_fds: None) -> None:
    with EventFd(machine.backend) as efd:
        assert efd.fileno() >= 1024
        with pytest.raises(TimeoutError, match="within 0.02 s"):
            efd.wait(0.02)
        timer = threading.Timer(0.02, efd.signal, (4,))
        timer.start()
        try:
            assert efd.wait(2) == 4
        finally:
            timer.join()


def test_msix_vectors_can_be_added_while_enabled(machine: FakeMachine) -> None:
    """MSI-X with NORESIZE clear (vectors allocated on demand, as Linux 7.3
    does on x86): more vectors join an enabled index."""
    with open_cdev(machine.backend, machine.nvme) as (dev, _ioas):
        msix = dev.irqs["MSIX"]
        assert not msix.noresize
        first = msix.enable(2)
        (late,) = msix.enable(1, start=10)
        msix.trigger(10)
        assert late.wait(1) == 1 and first[0].poll() == 0
        assert [v.vector for v in msix.vectors] == [0, 1, 10]
        with pytest.raises(InvalidArgumentError, match=r"vectors \[0, 1\] are already enabled"):
            msix.enable(2, start=0)
        msix.disable()
        assert msix.vectors == () and late.closed


def test_eventfd_failure_is_a_vfio_error(machine: FakeMachine,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed eventfd(2) (EMFILE, ENOMEM) reaches the user as a VfioError
    naming it, like every other failure of pyvfio's calls."""
    def no_eventfd(initval: int = 0, flags: int = 0) -> int:
        raise OSError(errno.ENOMEM, os.strerror(errno.ENOMEM))

    monkeypatch.setattr(machine.backend, "eventfd", no_eventfd)
    with pytest.raises(pyvfio.VfioError) as info:
        EventFd(backend=machine.backend)
    assert info.value.errno == errno.ENOMEM and "eventfd" in str(info.value)
