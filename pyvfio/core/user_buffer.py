"""Turning user buffers into (address, length) for DMA mapping ioctls."""

from __future__ import annotations

import array
import mmap
from typing import Any, NamedTuple

from .._uapi import ffi
from ..errors import InvalidArgumentError

__all__ = ["UserBuffer", "user_buffer"]


class UserBuffer(NamedTuple):
    """A range of this process's memory and the object that keeps it alive
    (a tuple: built on every map call, it must be cheap).

    Thread safety: an immutable value; safe to share.
    """

    address: int  #: virtual address of the first byte
    length: int  #: bytes
    owner: Any  #: referenced while the memory is mapped for DMA
    writable: bool  #: whether the device may write the memory (DMA to memory)


#: Buffer types that carry no ``address``/``length`` of their own.
_PLAIN_BUFFERS = frozenset({bytearray, bytes, memoryview, mmap.mmap, array.array})


def _text(target: Any) -> str | None:
    return target if target is None or isinstance(target, str) else str(target.describe())


def user_buffer(obj: Any, *, ioctl: str | None = None, target: Any = None) -> UserBuffer:
    """Accept a :class:`~pyvfio.backend.base.MemoryMap` (or anything with
    ``address`` and ``length``, such as a DMA buffer) or any object exposing
    the buffer protocol (``bytearray``, ``mmap.mmap``, numpy arrays).
    ``target`` (a string, or an object with ``describe()``) names the
    object in an error message; it is described only on failure."""
    return UserBuffer(*_user_buffer(obj, ioctl, target))


_from_buffer = ffi.from_buffer
_cast = ffi.cast
_UINTPTR = ffi.typeof("uintptr_t")


def _user_buffer(obj: Any, ioctl: str | None, target: Any) -> tuple[int, int, Any, bool]:
    """:func:`user_buffer` as a plain tuple (the map calls' hot path)."""
    if type(obj) in _PLAIN_BUFFERS:  # no address/length to look for (a missed getattr is slow)
        try:
            cdata = _from_buffer("char[]", obj, True)  # positional: the cheapest call
        except (TypeError, BufferError):
            pass  # read-only, or not a buffer: the general path says which
        else:
            n = len(cdata)
            if n:
                return int(_cast(_UINTPTR, cdata)), n, (obj, cdata), True
        address = length = None
    else:
        address = getattr(obj, "address", None)
        length = getattr(obj, "length", None)
    if isinstance(address, int) and isinstance(length, int):
        if getattr(obj, "closed", False):
            raise InvalidArgumentError("the buffer is closed", ioctl=ioctl, target=_text(target))
        return address, length, obj, True
    try:
        cdata = ffi.from_buffer(obj, require_writable=True)
        writable = True
    except (TypeError, BufferError):
        try:
            cdata = ffi.from_buffer(obj)
        except TypeError:
            raise InvalidArgumentError(
                f"cannot map a {type(obj).__name__}: pass a DMA buffer, a memory map "
                "or an object supporting the buffer protocol",
                ioctl=ioctl,
                target=_text(target),
            ) from None
        writable = False
    n = ffi.sizeof(cdata)
    if n == 0:
        raise InvalidArgumentError("the buffer is empty", ioctl=ioctl, target=_text(target))
    return int(ffi.cast("uintptr_t", cdata)), n, (obj, cdata), writable
