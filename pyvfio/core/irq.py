"""Interrupts: INTx, MSI, MSI-X, ERR and REQ through eventfds.

``device.irqs`` is an :class:`IrqMap` of the interrupt indexes the device
has (``VFIO_DEVICE_GET_IRQ_INFO``), by index (``irqs[PciIrq.MSI]``) or name
(``irqs["MSI"]``).  :meth:`Irq.enable` creates one eventfd per vector and
hands them to the kernel (``VFIO_DEVICE_SET_IRQS`` with
``DATA_EVENTFD | ACTION_TRIGGER``); every interrupt the device raises
increments its vector's eventfd::

    (vector,) = device.irqs["MSI"].enable(1)
    ...start the device...
    vector.wait(timeout=1.0)          # blocks; returns the interrupt count
    await vector.wait_async()         # in asyncio: loop.add_reader, no polling
    async for count in vector: ...    # every interrupt
    selector.register(vector, EVENT_READ)   # vector.fileno() is the eventfd

INTx is level-triggered and automasked: after each interrupt the kernel
masks it until :meth:`Irq.unmask` (clear the device's interrupt cause
first).  ``ERR`` (uncorrectable errors the kernel's AER handling reports;
Linux 7.3 offers it for every device, older kernels for PCI Express
functions only) and ``REQ`` (the
host asks the user to release the device, e.g. before a hot-unplug) are
single-vector indexes used the same way.  :meth:`Irq.trigger` makes the
kernel signal a vector's eventfd (loopback, for tests) with ``DATA_NONE``
or ``DATA_BOOL``.

Eventfds are :class:`~pyvfio.core.resource.Resource` objects: :meth:`Irq.disable`
disables the index in the kernel and then closes them; closing the device
does the same first.
"""

from __future__ import annotations

import errno
import math
import os
import select
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, AsyncIterator, Iterable, Iterator, Sequence

from .._uapi import ffi, lib
from ..backend import Backend
from ..errors import (
    ClosedError,
    InvalidArgumentError,
    IoctlError,
    UnsupportedError,
    VfioError,
)
from .resource import FdResource, Resource

if TYPE_CHECKING:
    import asyncio

    from .device import Device, IrqInfo

__all__ = ["EventFd", "Irq", "IrqMap", "IrqVector"]

_ALIASES = {"MSI-X": "MSIX", "INTA": "INTX"}
_EXCLUSIVE = (lib.VFIO_PCI_INTX_IRQ_INDEX, lib.VFIO_PCI_MSI_IRQ_INDEX, lib.VFIO_PCI_MSIX_IRQ_INDEX)


class EventFd(FdResource):
    """A non-blocking eventfd with blocking, selector and asyncio waits.

    Waiting never busy-polls: :meth:`wait` sleeps in ``poll(2)`` (any fd
    number), :meth:`wait_async` registers the fd with the running loop
    (``loop.add_reader``; the reader stays for the next wait until an event
    finds no task waiting, which leaves the count in the counter, or the
    eventfd closes).  Reading returns and resets the counter.

    Any number of tasks may wait at once (:meth:`wait_async`, ``async
    for``): the loop has one reader for the fd, and every task of that loop
    waiting when the counter is read wakes with that same count.  Waits in
    other threads or loops, and :meth:`poll`/:meth:`wait`, take the count
    for themselves.  Closing the eventfd wakes waiting tasks with
    :class:`~pyvfio.errors.ClosedError` (an ``async for`` just ends).

    Thread safety: safe to wait on and signal from several threads.  The
    counter lives in the kernel: each read takes and resets it atomically,
    so every event is counted by exactly one :meth:`poll`/:meth:`wait`
    (the waits block in ``poll(2)`` without holding any lock).  The
    per-loop waiter lists are kept per event loop, each changed from its
    loop's thread.  Close it after the waiting threads are done (a
    :meth:`wait` without timeout does not wake on close).
    """

    kind = "eventfd"

    _number = -1  # the fd number, for messages after close

    def __init__(self, backend: Backend | None = None, *, initval: int = 0) -> None:
        from ..backend import resolve_backend

        b = resolve_backend(backend)
        try:
            fd = b.eventfd(initval, os.EFD_NONBLOCK)
        except OSError as exc:  # e.g. EMFILE, or ENOMEM from the kernel
            err = exc.errno or errno.EIO
            raise VfioError(err, f"eventfd: {os.strerror(err)}", target="a new eventfd") from exc
        super().__init__(fd, b)
        self._number = fd
        # the tasks waiting in each loop (the loop has a reader while any wait)
        self._waiters: dict[asyncio.AbstractEventLoop, list[asyncio.Future[int]]] = {}

    def describe(self) -> str:
        """``"eventfd 7"``."""
        return f"eventfd {self._number}"

    def poll(self) -> int:
        """The counter (events since the last read) without blocking; 0
        when nothing happened.  Resets the counter."""
        try:
            data = self._backend.read(self.fd, 8)
        except BlockingIOError:
            return 0
        return int.from_bytes(data, "little")

    def wait(self, timeout: float | None = None) -> int:
        """Block until the eventfd is signalled; returns the count.
        Raises :class:`TimeoutError` after ``timeout`` seconds."""
        # poll()'s work, inline (this is the interrupt's path to the caller):
        # a count that is there already is read without a poller
        if self._closed:
            raise ClosedError(self.describe())
        fd = self._fd
        read = self._backend.read
        try:
            n = int.from_bytes(read(fd, 8), "little")
        except BlockingIOError:
            n = 0
        if n:
            return n
        deadline = None if timeout is None else time.monotonic() + timeout
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while True:
            ms: int | None = None
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{self.describe()} was not signalled within {timeout} s")
                ms = math.ceil(remaining * 1000)
            poller.poll(ms)
            if self._closed:
                raise ClosedError(self.describe())
            try:
                n = int.from_bytes(read(fd, 8), "little")
            except BlockingIOError:  # another waiter took the count, or the timeout
                continue
            if n:
                return n

    async def wait_async(self, timeout: float | None = None) -> int:
        """Wait in the running asyncio loop (``add_reader``: no polling);
        returns the count.  Raises :class:`TimeoutError` after ``timeout``
        seconds, :class:`~pyvfio.errors.ClosedError` when the eventfd is
        closed meanwhile."""
        import asyncio  # only here: it costs import time to every user

        loop = asyncio.get_running_loop()
        n = self.poll()
        if n:
            self._wake(loop, n)  # the tasks already waiting see these events too
            return n
        fut: asyncio.Future[int] = loop.create_future()
        waiters = self._waiters.get(loop)
        if waiters is None:
            for old in [lp for lp in self._waiters if lp.is_closed()]:
                del self._waiters[old]  # loops closed while their reader stayed
            loop.add_reader(self._fd, self._readable, loop)
            waiters = self._waiters[loop] = []
        waiters.append(fut)
        try:
            if timeout is None:
                return await fut
            try:
                return await asyncio.wait_for(fut, timeout)
            except asyncio.TimeoutError:
                raise TimeoutError(
                    f"{self.describe()} was not signalled within {timeout} s") from None
        finally:
            # The reader stays for the next wait (an ``async for`` waits again
            # at once): _readable removes it when an event finds nobody waiting.
            waiters = self._waiters.get(loop)
            if waiters is not None and fut in waiters:
                waiters.remove(fut)

    def _readable(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop's reader: one read, its count to every waiting task."""
        if not any(not f.done() for f in self._waiters.get(loop, ())):
            self._unregister(loop)  # nobody to give a count to: leave it in the counter
            return
        try:
            count = self.poll()
        except Exception as exc:  # the fd was closed under us
            for f in self._waiters.get(loop, ()):
                if not f.done():
                    f.set_exception(exc)
            self._unregister(loop)
            return
        if count:
            self._wake(loop, count)

    def _wake(self, loop: asyncio.AbstractEventLoop, count: int) -> None:
        """Give ``count`` to every task waiting in ``loop`` (its thread)."""
        waiters = self._waiters.get(loop)
        if waiters:
            for f in waiters:
                if not f.done():
                    f.set_result(count)
            # The woken tasks have their count: a new list for later waits.  An
            # event before anyone waits again is left in the counter (_readable).
            self._waiters[loop] = []

    def _unregister(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._waiters.pop(loop, None) is not None and self._fd >= 0:
            try:
                loop.remove_reader(self._fd)
            except Exception:  # the loop is closed
                pass

    def __aiter__(self) -> AsyncIterator[int]:
        return self._events()

    async def _events(self) -> AsyncIterator[int]:
        while not self.closed:
            try:
                count = await self.wait_async()
            except ClosedError:
                return
            yield count

    def signal(self, count: int = 1) -> None:
        """Add ``count`` to the counter (what the kernel does per interrupt)."""
        self._backend.write(self.fd, count.to_bytes(8, "little"))

    def _release(self) -> None:
        waiting, self._waiters = self._waiters, {}
        current: asyncio.AbstractEventLoop | None = None
        if waiting:  # asyncio is imported once somebody waited with it
            import asyncio

            try:
                current = asyncio.get_running_loop()
            except RuntimeError:
                pass
        for loop, futures in waiting.items():
            try:
                loop.remove_reader(self._fd)
            except Exception:  # the loop is closed
                pass
            pending = [f for f in futures if not f.done()]
            if not pending:
                continue
            if loop is current:
                _fail(pending, self.describe())
            else:  # futures belong to their loop's thread
                try:
                    loop.call_soon_threadsafe(_fail, pending, self.describe())
                except RuntimeError:  # the loop is closed: nobody waits any more
                    pass
        super()._release()


def _fail(futures: list[asyncio.Future[int]], target: str) -> None:
    for f in futures:
        if not f.done():
            f.set_exception(ClosedError(target))


class IrqVector(EventFd):
    """The eventfd of one interrupt vector of an :class:`Irq`.

    Thread safety: as :class:`EventFd`; :meth:`trigger`, :meth:`mask` and
    :meth:`unmask` are single ioctls the kernel serialises.
    """

    kind = "interrupt vector"

    def __init__(self, irq: Irq, vector: int) -> None:
        super().__init__(irq.device.backend)
        self.irq = irq  #: the interrupt index
        self.vector = vector  #: the vector number within the index

    def describe(self) -> str:
        """``"device 0000:00:02.0 MSI vector 0"``."""
        return f"{self.irq.describe()} vector {self.vector}"

    def trigger(self) -> None:
        """Make the kernel signal this vector (loopback, ``DATA_NONE``)."""
        self._check_open()
        self.irq.trigger(self.vector)

    def mask(self) -> None:
        """Mask this vector (``ACTION_MASK``; see :meth:`Irq.mask`)."""
        self._check_open()
        self.irq.mask(self.vector)

    def unmask(self) -> None:
        """Unmask this vector (``ACTION_UNMASK``; see :meth:`Irq.unmask`)."""
        self._check_open()
        self.irq.unmask(self.vector)


class _IrqState(Resource):
    """The vectors of an enabled index; closing disables the index in the
    kernel, then closes the eventfds."""

    kind = "enabled interrupt"

    def __init__(self, irq: Irq) -> None:
        super().__init__(irq.device.backend)
        self.irq = irq
        self.vectors: dict[int, IrqVector] = {}

    def describe(self) -> str:
        return f"enabled {self.irq.describe()}"

    def close(self) -> None:
        if self._closed:
            return
        error: VfioError | None = None
        if not self.irq.device.closed:
            try:
                self.irq._set_irqs(lib.VFIO_IRQ_SET_DATA_NONE | lib.VFIO_IRQ_SET_ACTION_TRIGGER,
                                   0, 0)
            except VfioError as exc:
                error = exc
        try:
            super().close()
        finally:
            if self.irq._state is self:
                self.irq._state = None
        if error is not None:
            raise error


class Irq:
    """One interrupt index of a device (INTx, MSI, MSI-X, ERR, REQ or a
    device-specific one).

    Thread safety: safe to use from several threads.  :meth:`enable` and
    :meth:`disable` take the index's lock around the vector table and the
    SET_IRQS ioctl that must agree with it; :meth:`mask`, :meth:`unmask`
    and :meth:`trigger` are single ioctls the kernel serialises.  Waiting
    on the vectors takes no lock (see :class:`EventFd`).
    """

    def __init__(self, device: Device, info: IrqInfo) -> None:
        self.device = device  #: the device
        self.info = info  #: VFIO_DEVICE_GET_IRQ_INFO (see :meth:`refresh`)
        self._state: _IrqState | None = None
        # Guards _state and its vector table with the kernel's eventfds.
        self._lock = threading.RLock()

    # -- what the kernel says -----------------------------------------------------------------
    @property
    def index(self) -> int:
        """The interrupt index (``VFIO_PCI_MSI_IRQ_INDEX`` ...)."""
        return self.info.index

    @property
    def name(self) -> str:
        """``INTX``, ``MSI``, ``MSIX``, ``ERR``, ``REQ`` or ``irq<N>``."""
        return self.info.name

    @property
    def count(self) -> int:
        """Number of vectors."""
        return self.info.count

    @property
    def flags(self) -> int:
        """``VFIO_IRQ_INFO_*`` bits."""
        return self.info.flags

    @property
    def eventfd(self) -> bool:
        """Vectors can be signalled through eventfds."""
        return self.info.eventfd

    @property
    def maskable(self) -> bool:
        """``ACTION_MASK``/``ACTION_UNMASK`` are supported."""
        return self.info.maskable

    @property
    def automasked(self) -> bool:
        """The kernel masks the interrupt after each one (INTx)."""
        return self.info.automasked

    @property
    def noresize(self) -> bool:
        """Vectors cannot be added while enabled."""
        return self.info.noresize

    def refresh(self) -> IrqInfo:
        """Query ``VFIO_DEVICE_GET_IRQ_INFO`` again (the MSI count follows
        the device's capability)."""
        self.info = self.device.irq_info(self.index)
        return self.info

    def describe(self) -> str:
        """``"device 0000:00:02.0 MSI"``."""
        return f"{self.device.describe()} {self.name}"

    def __repr__(self) -> str:
        state = f" enabled ({len(self.vectors)} vectors)" if self.enabled else ""
        return f"<Irq {self.describe()} count={self.count}{state}>"

    # -- state --------------------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        """Eventfds are set up for this index (through this object)."""
        state = self._state  # read once: another thread may disable
        return state is not None and not state.closed

    @property
    def vectors(self) -> tuple[IrqVector, ...]:
        """The vectors set up by :meth:`enable`, by number."""
        state = self._state
        if state is None or state.closed:
            return ()
        table = dict(state.vectors)  # a snapshot: enable() may add to it
        return tuple(table[k] for k in sorted(table))

    def vector(self, number: int) -> IrqVector:
        """The enabled vector ``number``."""
        for v in self.vectors:
            if v.vector == number:
                return v
        raise KeyError(f"{self.describe()} vector {number} is not enabled")

    # -- VFIO_DEVICE_SET_IRQS ------------------------------------------------------------------------
    def _set_irqs(self, flags: int, start: int, count: int, data: bytes = b"") -> None:
        size = ffi.sizeof("struct vfio_irq_set") + len(data)
        raw = ffi.new("char[]", size)
        arg = ffi.cast("struct vfio_irq_set *", raw)
        arg.argsz = size
        arg.flags = flags
        arg.index = self.index
        arg.start = start
        arg.count = count
        if data:
            ffi.memmove(arg.data, data, len(data))
        self.device._ioctl("VFIO_DEVICE_SET_IRQS", lib.VFIO_DEVICE_SET_IRQS, raw,
                           target=self.describe())

    def _check_range(self, start: int, count: int, what: str) -> None:
        if not isinstance(start, int) or not isinstance(count, int) or start < 0 or count < 1:
            raise InvalidArgumentError(f"{what}: start must be >= 0 and count >= 1",
                                       ioctl="VFIO_DEVICE_SET_IRQS", target=self.describe())
        if start + count > self.count:
            raise InvalidArgumentError(
                f"{what}: vectors [{start}, {start + count}) exceed the {self.count} the "
                f"device has", ioctl="VFIO_DEVICE_SET_IRQS", target=self.describe())

    def enable(self, count: int | None = None, *, start: int = 0) -> list[IrqVector]:
        """Set up vectors ``[start, start + count)`` with one new eventfd
        each (``DATA_EVENTFD | ACTION_TRIGGER``); ``count`` defaults to
        every vector from ``start``.  INTx, MSI and MSI-X exclude each
        other: disable one before enabling another.  On an enabled index
        whose count may change (MSI-X with ``noresize`` False) this adds
        vectors; otherwise disable first."""
        with self._lock:
            return self._enable(count, start)

    def _enable(self, count: int | None, start: int) -> list[IrqVector]:
        device = self.device
        device._check_open()
        if self.count == 0:
            raise UnsupportedError(errno.EINVAL,
                                   f"{self.describe()}: the device has no {self.name} vectors",
                                   ioctl="VFIO_DEVICE_SET_IRQS", target=self.describe())
        if count is None:
            count = self.count - start
        self._check_range(start, count, "enable")
        if self.enabled:
            return self._grow(start, count)
        if self.index in _EXCLUSIVE:
            for other in device.irqs.values():
                if other is not self and other.index in _EXCLUSIVE and other.enabled:
                    raise InvalidArgumentError(
                        f"{other.name} is enabled: INTx, MSI and MSI-X exclude each other; "
                        f"disable {other.name} first", ioctl="VFIO_DEVICE_SET_IRQS",
                        target=self.describe())
        state = _IrqState(self)
        try:
            for n in range(start, start + count):
                state.vectors[n] = state._adopt(IrqVector(self, n))
            data = b"".join(state.vectors[n].fd.to_bytes(4, "little", signed=True)
                            for n in range(start, start + count))
            self._set_irqs(lib.VFIO_IRQ_SET_DATA_EVENTFD | lib.VFIO_IRQ_SET_ACTION_TRIGGER,
                           start, count, data)
        except BaseException:
            # nothing was enabled: close the eventfds without the disable ioctl
            Resource.close(state)
            raise
        self._state = device._adopt(state)
        return [state.vectors[n] for n in range(start, start + count)]

    def _grow(self, start: int, count: int) -> list[IrqVector]:
        # More vectors while enabled: only where the kernel allocates them on
        # demand (MSI-X with dynamic allocation, VFIO_IRQ_INFO_NORESIZE clear).
        state = self._state
        assert state is not None
        if self.noresize:
            raise InvalidArgumentError(
                f"{self.name} is enabled and its vector count is fixed "
                "(VFIO_IRQ_INFO_NORESIZE): disable() it first", ioctl="VFIO_DEVICE_SET_IRQS",
                target=self.describe())
        taken = sorted(n for n in range(start, start + count) if n in state.vectors)
        if taken:
            raise InvalidArgumentError(f"vectors {taken} are already enabled",
                                       ioctl="VFIO_DEVICE_SET_IRQS", target=self.describe())
        new = {n: IrqVector(self, n) for n in range(start, start + count)}
        try:
            data = b"".join(v.fd.to_bytes(4, "little", signed=True) for v in new.values())
            self._set_irqs(lib.VFIO_IRQ_SET_DATA_EVENTFD | lib.VFIO_IRQ_SET_ACTION_TRIGGER,
                           start, count, data)
        except BaseException:
            for v in new.values():
                v.close()
            raise
        for n, v in new.items():
            state.vectors[n] = state._adopt(v)
        return list(new.values())

    def disable(self) -> None:
        """Disable the index (``DATA_NONE | ACTION_TRIGGER``, count 0) and
        close its eventfds; does nothing when not enabled."""
        with self._lock:
            state = self._state
            if state is not None:
                state.close()

    def mask(self, vector: int = 0, count: int = 1) -> None:
        """``ACTION_MASK`` of vectors ``[vector, vector + count)``.

        vfio-pci masks INTx only (MSI and MSI-X answer ENOTTY: raised as
        :class:`~pyvfio.errors.UnsupportedError`)."""
        self._mask_action(lib.VFIO_IRQ_SET_ACTION_MASK, vector, count, "mask")

    def unmask(self, vector: int = 0, count: int = 1) -> None:
        """``ACTION_UNMASK`` of vectors ``[vector, vector + count)``: for
        automasked INTx, re-arm the interrupt after handling one (clear
        the device's interrupt cause first, or it fires again at once)."""
        self._mask_action(lib.VFIO_IRQ_SET_ACTION_UNMASK, vector, count, "unmask")

    def _mask_action(self, action: int, vector: int, count: int, what: str) -> None:
        self.device._check_open()
        self._check_range(vector, count, what)
        try:
            self._set_irqs(lib.VFIO_IRQ_SET_DATA_NONE | action, vector, count)
        except IoctlError as exc:
            if exc.errno == errno.ENOTTY:
                raise UnsupportedError(
                    errno.ENOTTY, f"VFIO_DEVICE_SET_IRQS on {self.describe()}: [ENOTTY] the kernel cannot "
                    f"{what} {self.name} vectors (VFIO_IRQ_INFO_MASKABLE is "
                    f"{'set' if self.maskable else 'clear'})",
                    ioctl="VFIO_DEVICE_SET_IRQS", target=self.describe()) from None
            raise

    def trigger(self, vector: int = 0, count: int = 1, *,
                values: Sequence[bool] | None = None) -> None:
        """Make the kernel signal vectors ``[vector, vector + count)``
        (loopback, as if the device had interrupted): ``DATA_NONE``, or
        ``DATA_BOOL`` with one flag per vector when ``values`` is given."""
        self.device._check_open()
        if values is not None:
            count = len(values)
        self._check_range(vector, count, "trigger")
        if values is None:
            self._set_irqs(lib.VFIO_IRQ_SET_DATA_NONE | lib.VFIO_IRQ_SET_ACTION_TRIGGER,
                           vector, count)
        else:
            self._set_irqs(lib.VFIO_IRQ_SET_DATA_BOOL | lib.VFIO_IRQ_SET_ACTION_TRIGGER,
                           vector, count, bytes(1 if v else 0 for v in values))


class IrqMap(Mapping[int, Irq]):
    """A device's interrupt indexes by number, or by name (``"MSI"``,
    ``"msix"``, ``"MSI-X"``: case-insensitive).

    Thread safety: immutable after it is built (the device builds one, once).
    """

    def __init__(self, irqs: Iterable[Irq]) -> None:
        self._by_index = {i.index: i for i in irqs}
        self._by_name = {i.name.upper(): i for i in self._by_index.values()}

    def __getitem__(self, key: int | str) -> Irq:
        if isinstance(key, str):
            name = key.upper()
            irq = self._by_name.get(_ALIASES.get(name, name))
            if irq is None:
                raise KeyError(f"no interrupt index named {key!r} "
                               f"(indexes: {', '.join(self._by_name)})")
            return irq
        try:
            return self._by_index[key]
        except KeyError:
            raise KeyError(f"no interrupt index {key!r} "
                           f"(indexes: {', '.join(self._by_name)})") from None

    def __iter__(self) -> Iterator[int]:
        return iter(sorted(self._by_index))

    def __len__(self) -> int:
        return len(self._by_index)

    def __repr__(self) -> str:
        return "<IrqMap " + ", ".join(f"{i.name}:{i.count}" for i in self.values()) + ">"

    def _named(self, name: str) -> Irq | None:
        return self._by_name.get(name)

    @property
    def intx(self) -> Irq | None:
        """The INTx index, or ``None``."""
        return self._named("INTX")

    @property
    def msi(self) -> Irq | None:
        """The MSI index, or ``None``."""
        return self._named("MSI")

    @property
    def msix(self) -> Irq | None:
        """The MSI-X index, or ``None``."""
        return self._named("MSIX")

    @property
    def err(self) -> Irq | None:
        """The ERR (error reporting) index, or ``None`` (older kernels offer
        it for PCI Express functions only)."""
        return self._named("ERR")

    @property
    def req(self) -> Irq | None:
        """The REQ (release request) index, or ``None``."""
        return self._named("REQ")

    @property
    def enabled(self) -> list[Irq]:
        """Indexes with vectors set up."""
        return [i for i in self.values() if i.enabled]

