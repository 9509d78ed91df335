"""The syscall-level interface every backend implements.

pyvfio's objects never touch the operating system directly: they call a
:class:`Backend`.  :class:`~pyvfio.backend.kernel.KernelBackend` turns the
calls into real syscalls; :class:`pyvfio.fake.FakeBackend` implements the
same VFIO and iommufd ioctls on the same cffi structs in Python.  The
interface is deliberately the size of the syscalls involved (open, ioctl,
mmap, pread/pwrite, eventfd, plus sysfs file access) so that a simulated
kernel sees exactly what the real one would.

Conventions shared by all backends:

* Failures raise :class:`OSError` with the errno the kernel gives; the
  objects layer wraps them into :class:`pyvfio.errors.IoctlError`.
* ``ioctl`` takes either a cffi pointer (``ffi.new("struct ... *")`` or a
  ``char[]`` buffer cast by the kernel to the struct it expects) or an int,
  and returns the ioctl's non-negative return value (a new fd for the
  ioctls that create one).
* File descriptors are integers; eventfds are always real eventfds so that
  ``select``/``asyncio`` work on every backend.
* Paths are absolute (``/dev/vfio/3``, ``/sys/bus/pci/devices/...``).
"""

from __future__ import annotations

import abc
import os
from typing import Any, Callable, Mapping, NamedTuple, Union

#: A cffi pointer or array.
CData = Any

__all__ = ["Backend", "MemoryMap", "DirectAccess", "DirectIoctls", "direct_ioctls", "IoctlArg",
           "PROT_READ", "PROT_WRITE", "MAP_SHARED", "MAP_PRIVATE", "MAP_ANONYMOUS", "MAP_HUGETLB",
           "MAP_POPULATE", "MAP_HUGE_SHIFT"]

#: The argument of an ioctl: a cffi pointer or a plain integer.
IoctlArg = Union[CData, int]

# mmap(2) constants; identical on every Linux architecture pyvfio supports
# except MAP_ANONYMOUS/MAP_HUGETLB on a few (mips, alpha), which take their
# values from the compiled helpers instead.
PROT_READ = 0x1
PROT_WRITE = 0x2
MAP_SHARED = 0x01
MAP_PRIVATE = 0x02
MAP_ANONYMOUS = 0x20
MAP_HUGETLB = 0x40000
MAP_POPULATE = 0x8000
MAP_HUGE_SHIFT = 26


class DirectAccess(NamedTuple):
    """Volatile load/store functions by width (1, 2, 4, 8 bytes), taking a
    process virtual address (and the value, for stores)."""

    readers: Mapping[int, Callable[[int], int]]  #: width -> load(address)
    writers: Mapping[int, Callable[[int, int], None]]  #: width -> store(address, value)


class DirectIoctls(NamedTuple):
    """Compiled DMA map and unmap calls that fill the ioctl's struct and
    issue it in one call (the hot path of a driver that maps and unmaps
    per I/O).  Each returns 0 or the kernel's errno (positive) and takes
    plain integers -- fd, then the struct's fields in uAPI order -- and, for
    the value the kernel writes back, a ``uint64_t *`` or ``ffi.NULL``:

    * ``ioas_map(fd, ioas_id, flags, user_va, length, iova, out_iova)``
      (IOMMU_IOAS_MAP),
    * ``ioas_unmap(fd, ioas_id, iova, length, out_length)`` (IOMMU_IOAS_UNMAP),
    * ``dma_map(fd, flags, vaddr, iova, size, page_mask)`` (VFIO_IOMMU_MAP_DMA),
    * ``dma_unmap(fd, flags, iova, size, out_size)`` (VFIO_IOMMU_UNMAP_DMA,
      without a dirty bitmap).

    The map calls return -1, without a syscall, for what pyvfio refuses
    before a map (a zero length, a range that wraps past 2**64, and for
    ``dma_map`` an address, IOVA or size that is not a multiple of
    ``page_mask + 1`` bytes); a value that does not fit its field raises
    OverflowError.  The caller's own checks then say what is wrong.

    A backend offers them (:meth:`Backend.direct_ioctls`) only when they
    are the same syscalls its :meth:`Backend.ioctl` would make: a backend
    that must see each ioctl (the fake, a tracing or fault-injecting
    wrapper) offers none, and the objects then go through
    :meth:`Backend.ioctl`.

    Thread safety: plain syscalls, safe from any thread.
    """

    ioas_map: Callable[..., int]  #: IOMMU_IOAS_MAP
    ioas_unmap: Callable[..., int]  #: IOMMU_IOAS_UNMAP
    dma_map: Callable[..., int]  #: VFIO_IOMMU_MAP_DMA
    dma_unmap: Callable[..., int]  #: VFIO_IOMMU_UNMAP_DMA


def direct_ioctls(backend: object) -> DirectIoctls | None:
    """The compiled map/unmap calls ``backend`` offers, or None.  Looked up
    on the backend's class, so that a wrapper forwarding unknown attributes
    (``__getattr__``) to another backend never hands out the wrapped
    backend's calls: its ioctls keep going through its own ``ioctl``."""
    method = getattr(type(backend), "direct_ioctls", None)
    return method(backend) if method is not None else None


class MemoryMap(abc.ABC):
    """A range of memory mapped by :meth:`Backend.mmap`.

    Offsets are in bytes from the start of the mapping.  ``read``/``write``
    perform exactly one access of exactly ``width`` bytes (1, 2, 4 or 8):
    on device memory that is what the device sees.

    Thread safety: its accessors are plain loads and stores, safe from any
    thread (ordering is the caller's business); close it after the threads
    using it are done.
    """

    #: Virtual address of the first byte in this process.
    address: int
    #: Length of the mapping in bytes.
    length: int

    @property
    @abc.abstractmethod
    def closed(self) -> bool:
        """True once :meth:`close` has unmapped the memory."""

    @abc.abstractmethod
    def read(self, offset: int, width: int) -> int:
        """One little-endian-native load of ``width`` bytes at ``offset``."""

    @abc.abstractmethod
    def write(self, offset: int, width: int, value: int) -> None:
        """One store of ``width`` bytes at ``offset``."""

    @abc.abstractmethod
    def read_bytes(self, offset: int, size: int) -> bytes:
        """Copy ``size`` bytes out (for memory, not for registers)."""

    @abc.abstractmethod
    def write_bytes(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` in (for memory, not for registers)."""

    @abc.abstractmethod
    def buffer(self) -> memoryview:
        """A writable memoryview over the whole mapping (no copy)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Unmap; idempotent."""

    def direct_access(self) -> DirectAccess | None:
        """The loads and stores behind :meth:`read`/:meth:`write` when they
        are plain volatile accesses at ``address + offset`` (callers that
        check bounds and alignment themselves may call them directly, on a
        hot path); None when every access must go through :meth:`read` and
        :meth:`write` (a simulated device that sees each one)."""
        return None

    def __enter__(self) -> MemoryMap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Backend(abc.ABC):
    """Everything pyvfio needs from an operating system.

    Thread safety: the kernel backend's calls are plain syscalls, safe from
    any thread (the kernel serialises what must be); the fake's serialise on
    the fake kernel's lock, as the kernel's own locks would. The fd a call
    names must stay open until it returns.
    """

    #: Short name used in messages ("kernel", "fake").
    name: str = "backend"

    # -- files ------------------------------------------------------------
    @abc.abstractmethod
    def open(self, path: str, flags: int = os.O_RDWR | os.O_CLOEXEC) -> int:
        """open(2); returns a file descriptor."""

    @abc.abstractmethod
    def close(self, fd: int) -> None:
        """close(2)."""

    @abc.abstractmethod
    def ioctl(self, fd: int, request: int, arg: IoctlArg = 0) -> int:
        """ioctl(2); returns the non-negative result, raises OSError."""

    @abc.abstractmethod
    def pread(self, fd: int, size: int, offset: int) -> bytes:
        """pread(2): up to ``size`` bytes at ``offset``."""

    @abc.abstractmethod
    def pwrite(self, fd: int, data: bytes | bytearray | memoryview, offset: int) -> int:
        """pwrite(2); returns the number of bytes written."""

    @abc.abstractmethod
    def read(self, fd: int, size: int) -> bytes:
        """read(2) (eventfds, migration data fds)."""

    @abc.abstractmethod
    def write(self, fd: int, data: bytes | bytearray | memoryview) -> int:
        """write(2)."""

    @abc.abstractmethod
    def exists(self, path: str) -> bool:
        """Whether a device node or sysfs path exists."""

    @abc.abstractmethod
    def access(self, path: str, mode: int) -> bool:
        """access(2): may this process open ``path`` with ``mode``?"""

    def direct_ioctls(self) -> DirectIoctls | None:
        """Compiled DMA map/unmap calls equivalent to :meth:`ioctl` (see
        :class:`DirectIoctls`), or None (the default): every ioctl must go
        through :meth:`ioctl`."""
        return None

    # -- memory -----------------------------------------------------------
    @abc.abstractmethod
    def mmap(
        self, length: int, prot: int, flags: int, fd: int = -1, offset: int = 0
    ) -> MemoryMap:
        """mmap(2) of ``length`` bytes; ``fd=-1`` with MAP_ANONYMOUS for RAM."""

    @abc.abstractmethod
    def memfd_create(self, name: str, flags: int = 0) -> int:
        """memfd_create(2)."""

    @abc.abstractmethod
    def ftruncate(self, fd: int, length: int) -> None:
        """ftruncate(2)."""

    @abc.abstractmethod
    def eventfd(self, initval: int = 0, flags: int = 0) -> int:
        """eventfd(2); always a real eventfd."""

    @property
    @abc.abstractmethod
    def page_size(self) -> int:
        """The CPU page size in bytes."""

    @abc.abstractmethod
    def memlock_limit(self) -> int:
        """RLIMIT_MEMLOCK soft limit in bytes; ``-1`` when unlimited."""

    # -- sysfs ------------------------------------------------------------
    @abc.abstractmethod
    def sysfs_read(self, path: str) -> str:
        """Contents of a sysfs attribute, trailing newline stripped."""

    @abc.abstractmethod
    def sysfs_write(self, path: str, value: str) -> None:
        """Write a sysfs attribute (bind, unbind, driver_override, ...)."""

    @abc.abstractmethod
    def sysfs_listdir(self, path: str) -> list[str]:
        """Names in a sysfs directory, sorted."""

    @abc.abstractmethod
    def sysfs_readlink(self, path: str) -> str:
        """Target of a sysfs symlink (as the kernel writes it, relative)."""

    def sysfs_basename_of_link(self, path: str) -> str | None:
        """Last component of a symlink's target, or ``None`` when absent.

        ``/sys/bus/pci/devices/<bdf>/driver`` -> ``"vfio-pci"``.
        """
        try:
            return os.path.basename(self.sysfs_readlink(path))
        except (FileNotFoundError, NotADirectoryError):
            return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"
