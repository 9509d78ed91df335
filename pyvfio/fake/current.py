"""``current`` of the fake kernel: the machine the running system call
belongs to.

The kernel always knows the task a system call runs for (``current``,
include/asm-generic/current.h).  Code of the fake that has no
:class:`~pyvfio.fake.machine.system.System` in hand -- the user copies of
:mod:`pyvfio.fake.uaccess`, an eventfd reference, the I/O page table --
asks :func:`current` for the machine whose backend call is running.
:class:`~pyvfio.fake.core.FakeBackend` enters :class:`running` around every
call it serves (open, close, ioctl, read/write, mmap, sysfs).

The value lives in a :class:`contextvars.ContextVar`, so that threads and
asyncio tasks each see their own call.
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .machine.system import System

__all__ = ["current", "running", "enter", "leave"]

_current: ContextVar[System | None] = ContextVar("pyvfio_fake_current", default=None)


def current() -> System | None:
    """The machine whose backend call is running in this thread or task,
    or None outside a call."""
    return _current.get()


#: ``enter(system) -> token``: make ``system`` current (the fast form of
#: :class:`running` for the backend's hot paths); undo with :func:`leave`.
enter = _current.set
#: ``leave(token)``: the value before the matching :func:`enter` comes back.
leave = _current.reset


class running:
    """Context manager: ``system`` is :func:`current` inside the block
    (blocks nest; the outer value comes back on exit)."""

    __slots__ = ("_system", "_token")

    def __init__(self, system: System) -> None:
        self._system = system
        self._token: Token[System | None] | None = None

    def __enter__(self) -> System:
        self._token = _current.set(self._system)
        return self._system

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        assert self._token is not None
        _current.reset(self._token)
        self._token = None
