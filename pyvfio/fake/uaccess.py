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
  the interpreter.  The maps are asked with PROCMAP_QUERY (Linux 6.11: one
  system call per VMA the range crosses), or read as text where the
  kernel lacks it.

Each copy is an injection point of :mod:`pyvfio.fake.fault_inject`
(kinds ``copy_from_user`` and ``copy_to_user``, should_fail_usercopy):
while an injector is armed it may fail with EFAULT before any byte moves.

Arguments that are neither an int nor a cffi pointer are refused with
:class:`TypeError`, as :class:`~pyvfio.backend.kernel.KernelBackend` does.
"""

from __future__ import annotations

import bisect
import errno
import fcntl
import os
import platform
import struct
import threading
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

#: TASK_SIZE_MAX of the architecture the fake runs on: user addresses end
#: below it (x86-64 with 4-level paging: 2^47 minus a guard page; arm64:
#: 2^VA_BITS, 52 at most, so that the 48-bit user half arm64 processes are
#: given is all in it).
TASK_SIZE_MAX = (1 << 52) if platform.machine() in ("aarch64", "arm64") else (1 << 47) - 4096
_ULONG = (1 << 64) - 1
_CHARP = ffi.typeof("char *")
_UINTPTR = ffi.typeof("uintptr_t")


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


# PROCMAP_QUERY (include/uapi/linux/fs.h, Linux 6.11): an ioctl on an open
# /proc/<pid>/maps that answers for the one VMA covering an address, with
# the same start, end and permissions the text shows, in one system call
# instead of a read and parse of the whole file.
_PROCMAP_QUERY_SIZE = 104  # sizeof(struct procmap_query)
_PROCMAP_QUERY = (3 << 30) | (_PROCMAP_QUERY_SIZE << 16) | (ord("f") << 8) | 17  # _IOWR('f', 17, ...)
_VMA_READABLE, _VMA_WRITABLE = 0x1, 0x2
_QUERY = struct.Struct("<QQQQQQ")  # size, query_flags, query_addr, vma_start, vma_end, vma_flags
# (pid, fd) of this process's open /proc/self/maps; fd -1 when the kernel
# has no PROCMAP_QUERY (then the text is read on each check)
_maps_fd: tuple[int, int] | None = None
_maps_lock = threading.Lock()


def _query_fd() -> int:
    """This process's /proc/self/maps opened for PROCMAP_QUERY, or -1
    without it (a child after fork opens its own: the parent's file
    answers for the parent's memory)."""
    global _maps_fd
    held = _maps_fd
    pid = os.getpid()
    if held is not None and held[0] == pid:
        return held[1]
    with _maps_lock:
        held = _maps_fd
        if held is not None and held[0] == pid:
            return held[1]
        fd = os.open("/proc/self/maps", os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, _PROCMAP_QUERY, _query_buffer(0), True)
        except OSError as e:
            if e.errno in (errno.ENOTTY, errno.EINVAL, errno.E2BIG, errno.ENOSYS,
                           errno.EOPNOTSUPP):  # ENOSYS: under qemu-user, for one
                os.close(fd)
                fd = -1
            # ENOENT (nothing mapped at 0): the query works
        _maps_fd = (pid, fd)
        return fd


def _query_buffer(address: int) -> bytearray:
    buf = bytearray(_PROCMAP_QUERY_SIZE)
    _QUERY.pack_into(buf, 0, _PROCMAP_QUERY_SIZE, 0, address, 0, 0, 0)
    return buf


def _forget_maps_fd() -> None:
    global _maps_fd
    _maps_fd = None  # the inherited fd stays open and unused (another thread may hold it)


os.register_at_fork(after_in_child=_forget_maps_fd)


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
    fd = _query_fd()
    if fd < 0:
        _check_in_text(address, end, write)
        return
    pos = address
    need = _VMA_READABLE | (_VMA_WRITABLE if write else 0)
    while pos < end:
        buf = _query_buffer(pos)
        try:
            fcntl.ioctl(fd, _PROCMAP_QUERY, buf, True)
        except OSError as e:
            if e.errno == errno.ENOENT:  # no VMA covers pos
                raise _efault(f"user address {pos:#x} is not mapped") from None
            raise
        _size, _qflags, _addr, _lo, hi, flags = _QUERY.unpack_from(buf)
        if flags & need != need:
            raise _efault(f"user address {pos:#x} is not {'writable' if write else 'readable'}")
        pos = hi


def _check_in_text(address: int, end: int, write: bool) -> None:
    """check_user_range over the text of /proc/self/maps (kernels without
    PROCMAP_QUERY)."""
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
    data: bytes = ffi.buffer(ffi.cast(_CHARP, address), length)[:]
    return data


def copy_to_user(address: int, data: bytes | bytearray | memoryview) -> None:
    """copy_to_user of ``data`` to a raw user ``address``."""
    length = len(data)
    if length <= 0:
        return
    if fault_inject.ARMED:  # should_fail_usercopy
        fault_inject.inject("copy_to_user")
    check_user_range(address, length, True)
    ffi.memmove(ffi.cast(_CHARP, address), bytes(data), length)


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
        if isinstance(arg, int):
            self.address = arg & _ULONG
            return
        if not isinstance(arg, ffi.CData):
            raise TypeError(f"an ioctl argument is an int or a cffi pointer, not {type(arg).__name__}")
        ctype = ffi.typeof(arg)
        kind = ctype.kind
        if kind == "pointer":
            self.address = int(ffi.cast(_UINTPTR, arg))
            # an owning pointer (ffi.new) shows its size: "... owning 40 bytes>"
            text = repr(arg)
            if text.endswith(" bytes>"):
                at = text.rfind(" owning ")
                if at >= 0:
                    self.extent = int(text[at + 8:-7])
        elif kind == "array":
            self.address = int(ffi.cast(_UINTPTR, arg))
            self.extent = int(ffi.sizeof(arg))
        else:
            raise TypeError(f"an ioctl argument is an int or a cffi pointer, not {ctype.cname}")

    @classmethod
    def from_value(cls, value: Any) -> UserPtr:
        """A pointer stored in a command field (``__aligned_u64`` or a cffi
        pointer member): a raw address, checked against the mappings."""
        if isinstance(value, int):
            return cls(value)
        return cls(int(ffi.cast(_UINTPTR, value)))

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
        data: bytes = ffi.buffer(ffi.cast(_CHARP, self.address + offset), length)[:]
        return data

    def read_into(self, offset: int, obj: Any, length: int) -> None:
        """copy_from_user of ``length`` bytes at ``offset`` into the kernel
        object ``obj`` (a cffi pointer to at least ``length`` bytes)."""
        if length <= 0:
            return
        if fault_inject.ARMED:  # should_fail_usercopy
            fault_inject.inject("copy_from_user")
        self.check(offset, length, False)
        ffi.memmove(obj, ffi.cast(_CHARP, self.address + offset), length)

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """copy_to_user of ``data`` at ``offset``."""
        length = len(data)
        if length <= 0:
            return
        if fault_inject.ARMED:  # should_fail_usercopy
            fault_inject.inject("copy_to_user")
        self.check(offset, length, True)
        if type(data) is not bytes:
            data = bytes(data)
        ffi.memmove(ffi.cast(_CHARP, self.address + offset), data, length)

    def write_from(self, offset: int, obj: Any, length: int) -> None:
        """copy_to_user of the first ``length`` bytes of the kernel object
        ``obj`` (a cffi pointer to at least ``length`` bytes) at ``offset``."""
        if length <= 0:
            return
        if fault_inject.ARMED:  # should_fail_usercopy
            fault_inject.inject("copy_to_user")
        self.check(offset, length, True)
        ffi.memmove(ffi.cast(_CHARP, self.address + offset), obj, length)

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
        self.read_into(offset, obj, n)
        return obj

    def write_struct(self, obj: Any, offset: int = 0, length: int | None = None) -> None:
        """copy_to_user of the first ``length`` bytes (default: all) of the
        kernel struct ``obj``."""
        size = len(ffi.buffer(obj))
        if length is None:
            n = size
        else:  # as bytes(obj)[:length] would cut it
            n = min(length, size) if length >= 0 else max(size + length, 0)
        self.write_from(offset, obj, n)

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
