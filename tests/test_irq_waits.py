"""EventFd's wait paths, as the interrupt latency benchmark relies on them:
a count that is there already is read without a poller; a woken
``wait()`` returns the count once; ``wait_async()`` keeps the loop's reader
between waits and drops it when an event finds no task waiting (leaving the
count in the counter) or when the eventfd closes.  Real eventfds
(``KernelBackend``), no device."""

from __future__ import annotations

import asyncio
import select
import threading
from typing import Any

import pytest

from pyvfio import EventFd
from pyvfio.backend.kernel import KernelBackend
from pyvfio.errors import ClosedError

KB = KernelBackend()


def test_wait_reads_a_pending_count_without_a_poller(monkeypatch: pytest.MonkeyPatch) -> None:
    with EventFd(KB) as efd:
        efd.signal(3)

        def no_poller() -> Any:
            raise AssertionError("a poller was set up for a count that was there")

        monkeypatch.setattr(select, "poll", no_poller)
        assert efd.wait(1.0) == 3
        assert efd.poll() == 0


def test_wait_sleeps_until_signalled_and_times_out() -> None:
    with EventFd(KB) as efd:
        timer = threading.Timer(0.05, efd.signal, (2,))
        timer.start()
        try:
            assert efd.wait(5.0) == 2
        finally:
            timer.join()
        with pytest.raises(TimeoutError, match="not signalled within 0.02 s"):
            efd.wait(0.02)
        efd.signal()
        assert efd.wait(0) == 1  # a count that is there needs no time


def test_wait_on_a_closed_eventfd() -> None:
    efd = EventFd(KB)
    efd.close()
    with pytest.raises(ClosedError):
        efd.wait(0.01)


class _Counting:
    """Counts a loop's add_reader calls (instance attributes shadow the methods)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.added = 0
        add = loop.add_reader

        def add_reader(*args: Any) -> None:
            self.added += 1
            add(*args)

        loop.add_reader = add_reader  # type: ignore[method-assign]


def test_async_waits_keep_one_reader() -> None:
    with EventFd(KB) as efd:
        async def main() -> tuple[list[int], int]:
            loop = asyncio.get_running_loop()
            counting = _Counting(loop)
            got = []
            for n in (1, 2, 3):
                loop.call_later(0.01, efd.signal, n)
                got.append(await efd.wait_async(timeout=5))
            return got, counting.added

        got, added = asyncio.run(main())
        assert got == [1, 2, 3]
        assert added == 1


def test_an_event_nobody_waits_for_stays_in_the_counter() -> None:
    with EventFd(KB) as efd:
        async def main() -> tuple[bool, int, bool]:
            loop = asyncio.get_running_loop()
            loop.call_later(0.01, efd.signal, 1)
            assert await efd.wait_async(timeout=5) == 1
            efd.signal(5)  # nobody waits: the reader sees it and goes
            for _ in range(3):
                await asyncio.sleep(0.01)
            still_registered = loop.remove_reader(efd.fileno())
            counting = _Counting(loop)
            loop.call_later(0.01, efd.signal, 1)
            count = await efd.wait_async(timeout=5)  # the 5 left behind (+ maybe the 1)
            return still_registered, count, counting.added == 0

        still_registered, count, no_new_reader = asyncio.run(main())
        assert not still_registered
        assert count >= 5
        assert no_new_reader  # the 5 was there: read at once, no reader set up
        efd.poll()


def test_close_removes_the_kept_reader() -> None:
    efd = EventFd(KB)

    async def main() -> bool:
        loop = asyncio.get_running_loop()
        loop.call_later(0.01, efd.signal, 1)
        await efd.wait_async(timeout=5)
        fd = efd.fileno()
        efd.close()
        return loop.remove_reader(fd)

    assert asyncio.run(main()) is False
    assert efd.closed


def test_a_new_loop_forgets_closed_ones() -> None:
    with EventFd(KB) as efd:
        async def once() -> int:
            asyncio.get_running_loop().call_later(0.01, efd.signal, 1)
            return await efd.wait_async(timeout=5)

        for _ in range(3):
            assert asyncio.run(once()) == 1
        assert len(efd._waiters) == 1  # the last loop's (closed) entry only
