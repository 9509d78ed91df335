"""User memory access for the fake kernel: its copy_from_user/copy_to_user.

Every read or write of memory named by a user pointer -- an ioctl's
argument, or a pointer found inside a command (``token_uuid_ptr``, a dirty
bitmap, an invalidation array, a DMA-logging range list) -- goes through
this module, as every access of the kernel goes through
``copy_from_user``/``copy_to_user`` (include/linux/uaccess.h).  Nothing
else in the fake dereferences a user address.

What a user pointer may reach, checked before any byte moves:

* ``NULL`` and addresses at or past ``TASK_SIZE_MAX`` give EFAULT (the
  kernel's ``access_ok``);
* a cffi array (``ffi.new("char[]", n)``, ``ffi.from_buffer(...)``) or an
  owning struct pointer (``ffi.new("struct x *")``) bounds the access to
  its own bytes: beyond them is EFAULT, never a write past the object;
* any other address (an int, a cast pointer) must lie in memory this
  process has mapped, readable, and writable for a write, as
  ``/proc/self/maps`` shows it: anything else is EFAULT, never a fault of
  the interpreter.

Each copy is an injection point of :mod:`pyvfio.fake.fault_inject`
(kinds ``copy_from_user`` and ``copy_to_user``, should_fail_usercopy):
while an injector is armed it may fail with EFAULT before any byte moves.

Arguments that are neither an int nor a cffi pointer are refused with
:class:`TypeError`, as :class:`~pyvfio.backend.kernel.KernelBackend` does.
"""

from __future__ import annotations

import bisect
import errno
import os
import re
from typing import Any

from .._uapi import ffi
from ..backend.base import IoctlArg
from . import fault_inject

__all__ = [
    "TASK_SIZE_MAX",
    "UserPtr",
    "access_ok",
    "copy_from_user",
    "copy_to_user",
    "check_user_range",
]

#: TASK_SIZE_MAX on x86-64 (4-level paging): user addresses end below it.
TASK_SIZE_MAX = (1 << 47) - 4096
_ULONG = (1 << 64) - 1
_OWNING = re.compile(r"owning (\d+) bytes")


def _efault(detail: str) -> OSError:
    return OSError(errno.EFAULT, f"{os.strerror(errno.EFAULT)} ({detail})")


def _mappings() -> list[tuple[int, int, str]]:
    """``(start, end, perms)`` of every mapping of this process, sorted."""
    regions = []
    with open("/proc/self/maps", encoding="ascii") as f:
        for line in f:
            addr, perms = line.split()[:2]
            lo, hi = addr.split("-")
            regions.append((int(lo, 16), int(hi, 16), perms))
    return regions


def access_ok(address: int, length: int) -> bool:
    """access_ok: ``[address, address + length)`` lies in the user half of
    the address space (no memory is looked at)."""
    return 0 <= address and length >= 0 and address + length <= TASK_SIZE_MAX


def check_user_range(address: int, length: int, write: bool) -> None:
    """EFAULT unless every byte of ``[address, address + length)`` is mapped
    in this process, readable, and writable when ``write``."""
    if length <= 0:
        return
    if address == 0:
        raise _efault("NULL user pointer")
    if not access_ok(address, length):
        raise _efault(f"user address {address:#x} (+{length} bytes) is not a user address")
    end = address + length
    regions = _mappings()
    starts = [r[0] for r in regions]
    pos = address
    i = bisect.bisect_right(starts, pos) - 1
    while pos < end:
        if i < 0 or i >= len(regions) or not regions[i][0] <= pos < regions[i][1]:
            raise _efault(f"user address {pos:#x} is not mapped")
        lo, hi, perms = regions[i]
        if "r" not in perms or (write and "w" not in perms):
            raise _efault(f"user address {pos:#x} is not {'writable' if write else 'readable'}")
        pos = hi
        i += 1


def copy_from_user(address: int, length: int) -> bytes:
    """copy_from_user of ``length`` bytes at a raw user ``address``."""
    if length <= 0:
        return b""
    if fault_inject.ARMED:  # should_fail_usercopy
        fault_inject.inject("copy_from_user")
    check_user_range(address, length, False)
    return bytes(ffi.buffer(ffi.cast("char *", address), length))


def copy_to_user(address: int, data: bytes | bytearray | memoryview) -> None:
    """copy_to_user of ``data`` to a raw user ``address``."""
    length = len(data)
    if length <= 0:
        return
    if fault_inject.ARMED:  # should_fail_usercopy
        fault_inject.inject("copy_to_user")
    check_user_range(address, length, True)
    ffi.memmove(ffi.cast("char *", address), bytes(data), length)


class UserPtr:
    """A user pointer as an ioctl handler receives it (``void __user *``).

    Built from the ioctl's argument, or from a pointer value found inside a
    command (:meth:`from_value`).  :attr:`extent` is the size in bytes of
    the cffi object behind the pointer when it is known (an array or an
    owning struct pointer), else None (checked against the process's
    mappings on each access).

    :ivar address: the user address (the kernel's ``unsigned long``).
    :ivar extent: bytes reachable from ``address`` when the cffi object is
        known, else None.
    """

    __slots__ = ("address", "extent")

    def __init__(self, arg: IoctlArg) -> None:
        self.address: int
        self.extent: int | None = None
        if not isinstance(arg, (int, ffi.CData)):
            raise TypeError(f"an ioctl argument is an int or a cffi pointer, not {type(arg).__name__}")
        if isinstance(arg, int):
            self.address = arg & _ULONG
            return
        kind = ffi.typeof(arg).kind
        if kind not in ("pointer", "array"):
            raise TypeError(f"an ioctl argument is an int or a cffi pointer, not {ffi.typeof(arg).cname}")
        self.address = int(ffi.cast("uintptr_t", arg))
        if kind == "array":
            self.extent = int(ffi.sizeof(arg))
        else:
            owning = _OWNING.search(repr(arg))
            if owning is not None:
                self.extent = int(owning.group(1))

    @classmethod
    def from_value(cls, value: Any) -> UserPtr:
        """A pointer stored in a command field (``__aligned_u64`` or a cffi
        pointer member): a raw address, checked against the mappings."""
        if isinstance(value, int):
            return cls(value)
        return cls(int(ffi.cast("uintptr_t", value)))

    def check(self, offset: int, length: int, write: bool) -> None:
        """EFAULT unless ``length`` bytes at ``offset`` may be accessed."""
        if length <= 0:
            return
        if self.address == 0:
            raise _efault("NULL user pointer")
        if offset < 0:
            raise _efault(f"negative offset {offset}")
        if self.extent is not None:
            if offset + length > self.extent:
                raise _efault(f"{length} bytes at offset {offset} are outside "
                              f"the {self.extent}-byte argument")
            return
        check_user_range(self.address + offset, length, write)

    def read(self, offset: int, length: int) -> bytes:
        """copy_from_user of ``length`` bytes at ``offset``."""
        if length <= 0:
            return b""
        if fault_inject.ARMED:  # should_fail_usercopy
            fault_inject.inject("copy_from_user")
        self.check(offset, length, False)
        return bytes(ffi.buffer(ffi.cast("char *", self.address + offset), length))

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """copy_to_user of ``data`` at ``offset``."""
        length = len(data)
        if length <= 0:
            return
        if fault_inject.ARMED:  # should_fail_usercopy
            fault_inject.inject("copy_to_user")
        self.check(offset, length, True)
        ffi.memmove(ffi.cast("char *", self.address + offset), bytes(data), length)

    def read_u32(self, offset: int = 0) -> int:
        """get_user of a ``__u32`` at ``offset``."""
        return int.from_bytes(self.read(offset, 4), "little")

    def read_u64(self, offset: int = 0) -> int:
        """get_user of a ``__u64`` at ``offset``."""
        return int.from_bytes(self.read(offset, 8), "little")

    def write_u32(self, offset: int, value: int) -> None:
        """put_user of a ``__u32`` at ``offset``."""
        self.write(offset, (value & 0xFFFFFFFF).to_bytes(4, "little"))

    def write_u64(self, offset: int, value: int) -> None:
        """put_user of a ``__u64`` at ``offset``."""
        self.write(offset, (value & _ULONG).to_bytes(8, "little"))

    def read_struct(self, ctype: str, offset: int = 0, length: int | None = None) -> Any:
        """A kernel copy (``ctype *``, zero-filled) of ``length`` bytes at
        ``offset`` (default: the whole struct); the user's memory is not
        referenced afterwards."""
        size = int(ffi.sizeof(ctype))
        n = size if length is None else min(length, size)
        obj = ffi.new(ctype + " *")
        if n > 0:
            ffi.memmove(obj, self.read(offset, n), n)
        return obj

    def write_struct(self, obj: Any, offset: int = 0, length: int | None = None) -> None:
        """copy_to_user of the first ``length`` bytes (default: all) of the
        kernel struct ``obj``."""
        data = bytes(ffi.buffer(obj))
        self.write(offset, data if length is None else data[:length])

    def copy_struct_from_user(self, ctype: str, usize: int) -> Any:
        """copy_struct_from_user: the kernel's ``ctype`` from a user struct
        of ``usize`` bytes.  A larger user struct must have a zero tail
        (E2BIG), a smaller one is zero-extended."""
        ksize = int(ffi.sizeof(ctype))
        if usize > ksize:
            # check_zeroed_user: the tail is read in chunks up to its first
            # nonzero byte (E2BIG), never copied whole.  One access check
            # covers the whole tail; where it fails, the readable part
            # before the fault is found (bisecting) and read, so that a
            # nonzero byte before the fault gives E2BIG and the fault
            # EFAULT, as the kernel's word-by-word walk does.
            rest = usize - ksize
            fault: OSError | None = None
            readable = rest
            try:
                self.check(ksize, rest, False)
            except OSError as e:
                if e.errno != errno.EFAULT:
                    raise
                fault = e
                lo, hi = 0, rest  # lo bytes are readable, hi are not
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    try:
                        self.check(ksize, mid, False)
                        lo = mid
                    except OSError:
                        hi = mid
                readable = lo
            chunk = 64 << 10
            zeros = bytes(min(chunk, readable))
            for offset in range(ksize, ksize + readable, chunk):
                n = min(chunk, ksize + readable - offset)
                if ffi.buffer(ffi.cast("char *", self.address + offset), n)[:] != zeros[:n]:
                    raise OSError(errno.E2BIG, f"{os.strerror(errno.E2BIG)} (unknown trailing bytes are not zero)")
            if fault is not None:
                raise fault
        return self.read_struct(ctype, 0, usize)

    def __add__(self, offset: int) -> UserPtr:
        out = UserPtr.__new__(UserPtr)
        out.address = (self.address + offset) & _ULONG
        out.extent = None if self.extent is None else max(self.extent - offset, 0)
        return out

    def __repr__(self) -> str:
        bound = "" if self.extent is None else f" ({self.extent} bytes)"
        return f"<UserPtr {self.address:#x}{bound}>"
