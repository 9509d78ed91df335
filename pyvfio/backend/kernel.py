"""The real-kernel backend: syscalls through the compiled helpers."""

from __future__ import annotations

import errno
import mmap as _mmap
import os
import resource

from .._uapi import ffi, lib
from .base import Backend, IoctlArg, MemoryMap

__all__ = ["KernelBackend", "KernelMemoryMap"]

_READERS = {1: lib.pyvfio_read8, 2: lib.pyvfio_read16, 4: lib.pyvfio_read32, 8: lib.pyvfio_read64}
_WRITERS = {
    1: lib.pyvfio_write8,
    2: lib.pyvfio_write16,
    4: lib.pyvfio_write32,
    8: lib.pyvfio_write64,
}


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
    """Memory mapped with mmap(2) in this process."""

    def __init__(self, pointer: object, length: int) -> None:
        self._pointer = pointer
        self.address = int(ffi.cast("uintptr_t", pointer))
        self.length = length
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def _live(self) -> None:
        if self._closed:
            raise ValueError(f"memory map at {self.address:#x} is unmapped")

    def read(self, offset: int, width: int) -> int:
        self._live()
        _check_access(offset, width, self.length)
        return int(_READERS[width](self.address + offset))

    def write(self, offset: int, width: int, value: int) -> None:
        self._live()
        _check_access(offset, width, self.length)
        if not 0 <= value < 1 << (8 * width):
            raise ValueError(f"value {value:#x} does not fit in {width} bytes")
        _WRITERS[width](self.address + offset, value)

    def _range(self, offset: int, size: int) -> None:
        self._live()
        if offset < 0 or size < 0 or offset + size > self.length:
            raise ValueError(
                f"range [{offset:#x}, {offset + size:#x}) is outside the mapping "
                f"of {self.length:#x} bytes"
            )

    def read_bytes(self, offset: int, size: int) -> bytes:
        self._range(offset, size)
        return bytes(ffi.buffer(ffi.cast("char *", self.address + offset), size))

    def write_bytes(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        size = len(memoryview(data).cast("B"))
        self._range(offset, size)
        ffi.memmove(ffi.cast("char *", self.address + offset), data, size)

    def buffer(self) -> memoryview:
        self._live()
        return memoryview(ffi.buffer(self._pointer, self.length))

    def close(self) -> None:
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
    """Real syscalls on this machine's kernel."""

    name = "kernel"

    def open(self, path: str, flags: int = os.O_RDWR | os.O_CLOEXEC) -> int:
        return os.open(path, flags)

    def close(self, fd: int) -> None:
        os.close(fd)

    def ioctl(self, fd: int, request: int, arg: IoctlArg = 0) -> int:
        if isinstance(arg, int):
            ret = lib.pyvfio_ioctl_int(fd, request, arg)
        else:
            ret = lib.pyvfio_ioctl_ptr(fd, request, arg)
        if ret < 0:
            raise OSError(-ret, os.strerror(-ret))
        return int(ret)

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        return os.pread(fd, size, offset)

    def pwrite(self, fd: int, data: bytes | bytearray | memoryview, offset: int) -> int:
        return os.pwrite(fd, data, offset)

    def read(self, fd: int, size: int) -> bytes:
        return os.read(fd, size)

    def write(self, fd: int, data: bytes | bytearray | memoryview) -> int:
        return os.write(fd, data)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def access(self, path: str, mode: int) -> bool:
        return os.access(path, mode)

    def mmap(
        self, length: int, prot: int, flags: int, fd: int = -1, offset: int = 0
    ) -> MemoryMap:
        if length <= 0:
            raise OSError(errno.EINVAL, "mmap length must be positive")
        err = ffi.new("int *")
        pointer = lib.pyvfio_mmap(ffi.NULL, length, prot, flags, fd, offset, err)
        if pointer == ffi.NULL:
            raise OSError(err[0], os.strerror(err[0]))
        return KernelMemoryMap(pointer, length)

    def memfd_create(self, name: str, flags: int = 0) -> int:
        return os.memfd_create(name, flags | os.MFD_CLOEXEC)

    def ftruncate(self, fd: int, length: int) -> None:
        os.ftruncate(fd, length)

    def eventfd(self, initval: int = 0, flags: int = 0) -> int:
        return os.eventfd(initval, flags | os.EFD_CLOEXEC)

    @property
    def page_size(self) -> int:
        return _mmap.PAGESIZE

    def memlock_limit(self) -> int:
        soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
        return -1 if soft == resource.RLIM_INFINITY else soft

    def sysfs_read(self, path: str) -> str:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().rstrip("\n")

    def sysfs_write(self, path: str, value: str) -> None:
        # One write(2) call: sysfs attributes act on each write.
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)

    def sysfs_listdir(self, path: str) -> list[str]:
        return sorted(os.listdir(path))

    def sysfs_readlink(self, path: str) -> str:
        return os.readlink(path)
