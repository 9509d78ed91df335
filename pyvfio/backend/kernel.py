"""The real-kernel backend: syscalls through the compiled helpers.

ioctl, mmap and the MMIO accessors go through the small C helpers of
``pyvfio._uapi``; cffi releases the GIL around each of those calls, so a
long ioctl (pinning a large DMA mapping, a device reset) does not stall
the process's other Python threads.  The other calls are the :mod:`os`
functions of the same names, which release the GIL as well.
"""

from __future__ import annotations

import errno
import mmap as _mmap
import os
import resource

from .._uapi import ffi, lib
from .base import Backend, DirectAccess, DirectIoctls, IoctlArg, MemoryMap

__all__ = ["KernelBackend", "KernelMemoryMap"]

_READERS = {1: lib.pyvfio_read8, 2: lib.pyvfio_read16, 4: lib.pyvfio_read32, 8: lib.pyvfio_read64}
_WRITERS = {
    1: lib.pyvfio_write8,
    2: lib.pyvfio_write16,
    4: lib.pyvfio_write32,
    8: lib.pyvfio_write64,
}
_DIRECT = DirectAccess(_READERS, _WRITERS)
_DIRECT_IOCTLS = DirectIoctls(lib.pyvfio_ioas_map, lib.pyvfio_ioas_unmap, lib.pyvfio_dma_map,
                              lib.pyvfio_dma_unmap)


def _check_access(offset: int, width: int, length: int) -> None:
    if width not in _READERS:
        raise ValueError(f"access width must be 1, 2, 4 or 8 bytes, not {width}")
    if offset < 0 or offset + width > length:
        raise ValueError(
            f"access of {width} bytes at offset {offset:#x} is outside the mapping "
            f"of {length:#x} bytes"
        )
    if offset % width:
        raise ValueError(f"offset {offset:#x} is not aligned to the access width {width}")


class KernelMemoryMap(MemoryMap):
    """Memory mapped with mmap(2) in this process.

    ``read``/``write`` are single volatile loads and stores of the given
    width (one bus transaction on device memory); ``read_bytes``,
    ``write_bytes`` and ``buffer`` copy or expose the memory with no
    guarantee about access widths, for RAM only.
    """

    def __init__(self, pointer: object, length: int) -> None:
        self._pointer = pointer
        self.address = int(ffi.cast("uintptr_t", pointer))
        self.length = length
        self._closed = False

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has called munmap(2)."""
        return self._closed

    def _live(self) -> None:
        if self._closed:
            raise ValueError(f"memory map at {self.address:#x} is unmapped")

    def read(self, offset: int, width: int) -> int:
        """One volatile load of ``width`` bytes at byte ``offset``.

        ValueError unless ``width`` is 1, 2, 4 or 8, the access is inside
        the mapping and ``offset`` is a multiple of ``width``; also after
        :meth:`close`.
        """
        self._live()
        _check_access(offset, width, self.length)
        return int(_READERS[width](self.address + offset))

    def write(self, offset: int, width: int, value: int) -> None:
        """One volatile store of ``width`` bytes at byte ``offset``.

        The checks of :meth:`read`, and ValueError when ``value`` does not
        fit in ``width`` bytes.
        """
        self._live()
        _check_access(offset, width, self.length)
        if not 0 <= value < 1 << (8 * width):
            raise ValueError(f"value {value:#x} does not fit in {width} bytes")
        _WRITERS[width](self.address + offset, value)

    def direct_access(self) -> DirectAccess:
        """The compiled volatile load/store helpers (see :meth:`read`)."""
        return _DIRECT

    def _range(self, offset: int, size: int) -> None:
        self._live()
        if offset < 0 or size < 0 or offset + size > self.length:
            raise ValueError(
                f"range [{offset:#x}, {offset + size:#x}) is outside the mapping "
                f"of {self.length:#x} bytes"
            )

    def read_bytes(self, offset: int, size: int) -> bytes:
        """Copy ``size`` bytes from byte ``offset`` (memcpy; ValueError
        outside the mapping)."""
        self._range(offset, size)
        return bytes(ffi.buffer(ffi.cast("char *", self.address + offset), size))

    def write_bytes(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` to byte ``offset`` (memmove; ValueError outside
        the mapping)."""
        size = len(memoryview(data).cast("B"))
        self._range(offset, size)
        ffi.memmove(ffi.cast("char *", self.address + offset), data, size)

    def buffer(self) -> memoryview:
        """A writable memoryview of the mapping's bytes (no copy); do not
        use it after :meth:`close`."""
        self._live()
        return memoryview(ffi.buffer(self._pointer, self.length))

    def close(self) -> None:
        """munmap(2) the range; a second call does nothing."""
        if self._closed:
            return
        self._closed = True
        ret = lib.pyvfio_munmap(self._pointer, self.length)
        if ret < 0:  # pragma: no cover - munmap of our own mapping cannot fail
            raise OSError(-ret, os.strerror(-ret))

    def __repr__(self) -> str:
        state = "unmapped" if self._closed else f"{self.length:#x} bytes"
        return f"<KernelMemoryMap {self.address:#x} {state}>"


class KernelBackend(Backend):
    """Real syscalls on this machine's kernel.

    Each method is the syscall of its name on this process; failures raise
    :class:`OSError` with the kernel's errno.  Every fd it creates is
    close-on-exec.
    """

    name = "kernel"

    def open(self, path: str, flags: int = os.O_RDWR | os.O_CLOEXEC) -> int:
        """open(2) through :func:`os.open`; ``flags`` are passed as given."""
        return os.open(path, flags)

    def close(self, fd: int) -> None:
        """close(2) through :func:`os.close`."""
        os.close(fd)

    def ioctl(self, fd: int, request: int, arg: IoctlArg = 0) -> int:
        """ioctl(2) in C with the GIL released: a cffi pointer is passed as
        the kernel's user pointer (the struct is read and written in place),
        an int as an ``unsigned long`` argument.  Returns the ioctl's
        non-negative result; a negative one becomes :class:`OSError`."""
        if isinstance(arg, int):
            ret = lib.pyvfio_ioctl_int(fd, request, arg)
        else:
            ret = lib.pyvfio_ioctl_ptr(fd, request, arg)
        if ret < 0:
            raise OSError(-ret, os.strerror(-ret))
        return int(ret)

    def direct_ioctls(self) -> DirectIoctls | None:
        """The compiled map/unmap helpers (the same ioctls as :meth:`ioctl`,
        the struct filled in C), unless :meth:`ioctl` was replaced -- in a
        subclass or on this object -- to see or change every ioctl: then
        None."""
        if type(self).ioctl is not KernelBackend.ioctl or "ioctl" in vars(self):
            return None
        return _DIRECT_IOCTLS

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        """pread(2) through :func:`os.pread`: a single syscall."""
        return os.pread(fd, size, offset)

    def pwrite(self, fd: int, data: bytes | bytearray | memoryview, offset: int) -> int:
        """pwrite(2) through :func:`os.pwrite`: a single syscall."""
        return os.pwrite(fd, data, offset)

    def read(self, fd: int, size: int) -> bytes:
        """read(2) through :func:`os.read`."""
        return os.read(fd, size)

    def write(self, fd: int, data: bytes | bytearray | memoryview) -> int:
        """write(2) through :func:`os.write`."""
        return os.write(fd, data)

    def fstat(self, fd: int) -> os.stat_result:
        """fstat(2) through :func:`os.fstat`."""
        return os.fstat(fd)

    def exists(self, path: str) -> bool:
        """:func:`os.path.exists` (stat(2), following symlinks)."""
        return os.path.exists(path)

    def access(self, path: str, mode: int) -> bool:
        """access(2) through :func:`os.access`: checked with the real user
        and group IDs."""
        return os.access(path, mode)

    def mmap(
        self, length: int, prot: int, flags: int, fd: int = -1, offset: int = 0
    ) -> MemoryMap:
        """mmap(2) in C with the GIL released, at an address the kernel
        picks; a :class:`KernelMemoryMap` whose accessors are single loads
        and stores.  EINVAL for a ``length`` that is not positive."""
        if length <= 0:
            raise OSError(errno.EINVAL, "mmap length must be positive")
        err = ffi.new("int *")
        pointer = lib.pyvfio_mmap(ffi.NULL, length, prot, flags, fd, offset, err)
        if pointer == ffi.NULL:
            raise OSError(err[0], os.strerror(err[0]))
        return KernelMemoryMap(pointer, length)

    def memfd_create(self, name: str, flags: int = 0) -> int:
        """memfd_create(2) through :func:`os.memfd_create`, MFD_CLOEXEC added."""
        return os.memfd_create(name, flags | os.MFD_CLOEXEC)

    def ftruncate(self, fd: int, length: int) -> None:
        """ftruncate(2) through :func:`os.ftruncate`; ``length`` in bytes."""
        os.ftruncate(fd, length)

    def eventfd(self, initval: int = 0, flags: int = 0) -> int:
        """eventfd(2) through :func:`os.eventfd`, EFD_CLOEXEC added."""
        return os.eventfd(initval, flags | os.EFD_CLOEXEC)

    @property
    def page_size(self) -> int:
        """``mmap.PAGESIZE``: the kernel's base page size in bytes."""
        return _mmap.PAGESIZE

    def memlock_limit(self) -> int:
        """The soft RLIMIT_MEMLOCK of this process (getrlimit(2)), in bytes;
        ``-1`` for RLIM_INFINITY."""
        soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
        return -1 if soft == resource.RLIM_INFINITY else soft

    def sysfs_read(self, path: str) -> str:
        """Read the attribute file (ASCII, undecodable bytes replaced) and
        strip trailing newlines."""
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().rstrip("\n")

    def sysfs_write(self, path: str, value: str) -> None:
        """Write ``value`` with a single write(2), since a sysfs attribute
        acts on each write (no newline is added)."""
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)

    def sysfs_listdir(self, path: str) -> list[str]:
        """:func:`os.listdir`, sorted."""
        return sorted(os.listdir(path))

    def sysfs_readlink(self, path: str) -> str:
        """readlink(2) through :func:`os.readlink` (the target as stored)."""
        return os.readlink(path)
