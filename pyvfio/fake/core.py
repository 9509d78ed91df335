"""The fake kernel's core: file table, user memory and the DMA path.

The fake kernel serves pyvfio's :class:`~pyvfio.backend.base.Backend`
interface.  Every file it opens is a :class:`FakeFile`; each fd handed to
the user is a real file descriptor (a duplicate of ``/dev/null``) so that
numbers never collide with the process's other fds and stay valid for
``fcntl``-style bookkeeping, while all VFIO/iommufd semantics are served
from Python.  Eventfds are real eventfds.

User memory is real memory of this process: the fake pins it by address
(checked against ``/proc/self/maps``) and device models DMA into it through
the simulated IOMMU (:class:`IoDomain`).
"""

from __future__ import annotations

import abc
import errno
import logging
import os
import threading
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from .._uapi import ffi
from ..backend.base import Backend, IoctlArg, MemoryMap
from ..backend.kernel import KernelBackend
from .current import enter, leave, running
from .uaccess import check_user_range

if TYPE_CHECKING:
    from .fault_inject import FaultInjector
    from .machine.system import System

__all__ = [
    "FakeFile",
    "FakeBackend",
    "IoDomain",
    "IommuFault",
    "UserMemory",
    "errno_error",
]


_LOG = logging.getLogger(__name__)


def errno_error(err: int, detail: str = "") -> OSError:
    """An OSError as the kernel would return it (``detail`` is for debugging)."""
    message = os.strerror(err)
    if detail:
        message = f"{message} ({detail})"
    return OSError(err, message)


class FakeFile:
    """An open file description on the fake kernel.

    Subclasses override the operations their file supports; the defaults
    fail the way the kernel's default file operations do.
    """

    #: Path the file was opened at (or a description for anonymous files).
    path: str = "anon"

    def __init__(self, kernel: FakeBackend) -> None:
        self.kernel = kernel

    @property
    def system(self) -> System:
        """The :class:`~pyvfio.fake.machine.system.System` the file belongs to."""
        return self.kernel.system

    def ioctl(self, request: int, arg: IoctlArg) -> int:
        """Serve ioctl ``request`` (called with the system lock held);
        returns the ioctl's result or raises :class:`OSError`.  Default:
        ENOTTY, as for a file without an ``unlocked_ioctl``."""
        raise errno_error(errno.ENOTTY)

    def pread(self, size: int, offset: int) -> bytes:
        """Up to ``size`` bytes at byte ``offset`` of the file.  Default:
        EINVAL."""
        raise errno_error(errno.EINVAL)

    def pwrite(self, data: bytes, offset: int) -> int:
        """Write ``data`` at byte ``offset``; returns the number of bytes
        written.  Default: EINVAL."""
        raise errno_error(errno.EINVAL)

    def read(self, size: int) -> bytes:
        """read(2) of up to ``size`` bytes at the file position.  Default:
        EINVAL."""
        raise errno_error(errno.EINVAL)

    def write(self, data: bytes) -> int:
        """write(2) of ``data`` at the file position; returns the number of
        bytes written.  Default: EINVAL."""
        raise errno_error(errno.EINVAL)

    def mmap(self, length: int, prot: int, flags: int, offset: int) -> MemoryMap:
        """Map ``length`` bytes from byte ``offset`` of the file.  Default:
        ENODEV, as for a file without an ``mmap`` operation."""
        raise errno_error(errno.ENODEV)

    def release(self) -> None:
        """Called when the last fd referring to this file is closed."""


class IommuFault(Exception):
    """A DMA was blocked by the simulated IOMMU."""

    def __init__(self, iova: int, length: int, write: bool, reason: str) -> None:
        super().__init__(f"IOMMU fault: {'write' if write else 'read'} of {length} bytes at IOVA {iova:#x}: {reason}")
        self.iova = iova
        self.length = length
        self.write = write
        self.reason = reason


class IoDomain(abc.ABC):
    """An I/O page table that device DMA is translated through."""

    @abc.abstractmethod
    def translate(self, iova: int, length: int, write: bool) -> list[tuple[int, int]]:
        """Translate ``[iova, iova + length)`` into ``(user_va, length)`` runs.

        Raises :class:`IommuFault` when any byte is unmapped or, for a
        write, mapped read-only.
        """

    def note_dirty(self, iova: int, length: int) -> None:
        """Called after a device wrote ``[iova, iova + length)`` (dirty tracking)."""


@dataclass
class FaultRecord:
    """One blocked DMA, as an IOMMU would log it."""

    #: PCI address of the device that issued the DMA.
    bdf: str
    #: First IOVA of the access.
    iova: int
    #: Length of the access in bytes.
    length: int
    #: True for a write to memory, False for a read.
    write: bool
    #: Why the IOMMU blocked it, in words (for messages).
    reason: str


class UserMemory:
    """Validation of user virtual addresses, and pinned-page accounting.

    The kernel pins user pages with ``pin_user_pages`` and charges them to
    RLIMIT_MEMLOCK (iommufd's default "user" accounting, type1's
    ``vfio_lock_acct``).  A page pinned twice by the same IOAS counts once.
    """

    def __init__(self, limit: Callable[[], int], fault_inject: FaultInjector | None = None) -> None:
        self._limit = limit
        self._fault_inject = fault_inject
        self.pinned_pages = 0
        self._lock = threading.Lock()

    @staticmethod
    def check(va: int, length: int, write: bool = True) -> None:
        """EFAULT unless every byte of ``[va, va + length)`` is mapped
        (and writable when ``write``): :func:`.uaccess.check_user_range`."""
        check_user_range(va, length, write)

    def pin(self, pages: int) -> None:
        """Charge ``pages`` pages; ENOMEM past RLIMIT_MEMLOCK."""
        fi = self._fault_inject
        if fi is not None and fi.armed:
            # pin_user_pages / incr_user_locked_vm failing
            fi.maybe_fail("pin")
        with self._lock:
            limit = self._limit()
            if limit >= 0:
                page = os.sysconf("SC_PAGE_SIZE")
                if (self.pinned_pages + pages) * page > limit:
                    raise errno_error(errno.ENOMEM, "RLIMIT_MEMLOCK exceeded")
            self.pinned_pages += pages

    def unpin(self, pages: int) -> None:
        """Give back the charge of ``pages`` pages pinned before."""
        with self._lock:
            assert pages <= self.pinned_pages, "unpinning more pages than pinned"
            self.pinned_pages -= pages

    @staticmethod
    def read(va: int, length: int) -> bytes:
        """Read process memory at ``va`` (already validated)."""
        return bytes(ffi.buffer(ffi.cast("char *", va), length))

    @staticmethod
    def write(va: int, data: bytes) -> None:
        """Write ``data`` to process memory at ``va`` (already validated)."""
        ffi.memmove(ffi.cast("char *", va), data, len(data))


@dataclass
class _OpenFile:
    file: FakeFile
    refs: int = 1


def _log_refusal(file: FakeFile, request: int, exc: OSError) -> None:
    """Log (DEBUG) which function of the fake refused an ioctl: the frame
    that raised, named after the kernel function enforcing the rule."""
    from ..backend.trace import ioctl_name, path_kind

    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = (f"{tb.tb_frame.f_code.co_name} ({os.path.basename(tb.tb_frame.f_code.co_filename)}"
             f":{tb.tb_lineno})") if tb is not None else "?"
    # a device file from VFIO_GROUP_GET_DEVICE_FD is named "/dev/vfio/N:<bdf>"
    kind = "device" if getattr(file, "core", None) is not None else path_kind(file.path)
    _LOG.debug("%s on %s refused by %s: %s %s", ioctl_name(request, kind), file.path, where,
               errno.errorcode.get(exc.errno or 0, exc.errno), exc.strerror)


class FakeBackend(Backend):
    """The :class:`~pyvfio.backend.base.Backend` of a fake :class:`System`."""

    name = "fake"

    def __init__(self, system: System) -> None:
        self.system = system
        self._files: dict[int, _OpenFile] = {}
        #: every file given an fd, while it exists (for leak checks)
        self._installed: weakref.WeakSet[FakeFile] = weakref.WeakSet()
        self._real = KernelBackend()
        self._lock = threading.RLock()

    # -- the fd table -------------------------------------------------------
    def get_unused_fd(self) -> int:
        """get_unused_fd_flags: reserve a new fd (EMFILE past RLIMIT_NOFILE,
        or an injected ``fd_install`` failure); give it a file with
        :meth:`fd_install` or back with :meth:`put_unused_fd`."""
        fi = self.system.fault_inject
        if fi.armed:
            fi.maybe_fail("fd_install")
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)

    def put_unused_fd(self, fd: int) -> None:
        """put_unused_fd: give back an fd reserved by :meth:`get_unused_fd`."""
        os.close(fd)

    def fd_install(self, fd: int, file: FakeFile) -> None:
        """fd_install: ``fd`` (from :meth:`get_unused_fd`) now refers to
        ``file``; cannot fail."""
        with self._lock:
            self._files[fd] = _OpenFile(file)
            self._installed.add(file)

    def install(self, file: FakeFile) -> int:
        """Give ``file`` a new fd (used by ioctls that return fds).  When no
        fd can be had, the error propagates and ``file`` is untouched: the
        caller unwinds (fput of the new file), as after a failed
        get_unused_fd_flags."""
        fd = self.get_unused_fd()
        self.fd_install(fd, file)
        return fd

    def file(self, fd: int) -> FakeFile:
        """The file behind ``fd``; EBADF when it is not a fake file."""
        entry = self._files.get(fd)
        if entry is None:
            raise errno_error(errno.EBADF, f"fd {fd} is not open on the fake kernel")
        return entry.file

    def file_or_none(self, fd: int) -> FakeFile | None:
        """The file behind ``fd``, or None for a real fd (eventfd, memfd)."""
        entry = self._files.get(fd)
        return entry.file if entry else None

    @property
    def installed_files(self) -> list[FakeFile]:
        """Every file ever given an fd that is still referenced, open or
        closed (for leak checks: a context kept alive by a lost reference)."""
        with self._lock:
            return list(self._installed)

    @property
    def open_files(self) -> list[FakeFile]:
        """Every file currently open (for leak checks in tests)."""
        return [entry.file for entry in self._files.values()]

    # -- Backend: files -----------------------------------------------------
    def open(self, path: str, flags: int = os.O_RDWR | os.O_CLOEXEC) -> int:
        """Open a device node of the simulated machine (``/dev/vfio/...``,
        ``/dev/iommu``) as a new fake file; ENOENT for a path that is not
        a device node."""
        with running(self.system):
            # do_sys_openat2: the fd first, then the file; put_unused_fd
            # when the open fails
            fd = self.get_unused_fd()
            try:
                file = self.system.open_path(self, path, flags)
            except BaseException:
                self.put_unused_fd(fd)
                raise
            self.fd_install(fd, file)
            return fd

    def close(self, fd: int) -> None:
        """Drop ``fd``; the file's :meth:`~FakeFile.release` runs when it was
        a fake file.  A real fd (eventfd, memfd) is closed for real."""
        with self._lock:
            entry = self._files.pop(fd, None)
        if entry is None:
            os.close(fd)  # a real fd (eventfd, memfd): the real close
            return
        os.close(fd)
        with running(self.system):
            entry.file.release()

    def ioctl(self, fd: int, request: int, arg: IoctlArg = 0) -> int:
        """:meth:`FakeFile.ioctl` of the file behind ``fd``, under the
        system lock; EBADF for an fd that is not a fake file."""
        if not isinstance(arg, (int, ffi.CData)):
            # what fcntl.ioctl says to the real backend for such an argument
            raise TypeError(f"an ioctl argument is an int or a cffi pointer, not {type(arg).__name__}")
        file = self.file(fd)
        with self.system.lock:
            token = enter(self.system)
            try:
                return file.ioctl(request, arg)
            except OSError as exc:
                if _LOG.isEnabledFor(logging.DEBUG):
                    _log_refusal(file, request, exc)
                raise
            finally:
                leave(token)

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        """The fake file's :meth:`~FakeFile.pread`, or the real pread(2) for
        a real fd."""
        file = self.file_or_none(fd)
        if file is None:
            return os.pread(fd, size, offset)
        with self.system.lock:
            token = enter(self.system)
            try:
                return file.pread(size, offset)
            finally:
                leave(token)

    def pwrite(self, fd: int, data: bytes | bytearray | memoryview, offset: int) -> int:
        """The fake file's :meth:`~FakeFile.pwrite`, or the real pwrite(2)
        for a real fd."""
        file = self.file_or_none(fd)
        if file is None:
            return os.pwrite(fd, data, offset)
        with self.system.lock:
            token = enter(self.system)
            try:
                return file.pwrite(bytes(data), offset)
            finally:
                leave(token)

    def read(self, fd: int, size: int) -> bytes:
        """The fake file's :meth:`~FakeFile.read`, or the real read(2) for
        a real fd (eventfds)."""
        file = self.file_or_none(fd)
        if file is None:
            return os.read(fd, size)
        with self.system.lock:
            token = enter(self.system)
            try:
                return file.read(size)
            finally:
                leave(token)

    def write(self, fd: int, data: bytes | bytearray | memoryview) -> int:
        """The fake file's :meth:`~FakeFile.write`, or the real write(2) for
        a real fd (eventfds)."""
        file = self.file_or_none(fd)
        if file is None:
            return os.write(fd, data)
        with self.system.lock:
            token = enter(self.system)
            try:
                return file.write(bytes(data))
            finally:
                leave(token)

    def exists(self, path: str) -> bool:
        """Whether the simulated machine has ``path`` (a device node or a
        sysfs entry)."""
        return self.system.path_exists(path)

    def access(self, path: str, mode: int) -> bool:
        """Whether ``path`` exists: the fake has no permissions, every
        existing path may be opened with any ``mode``."""
        return self.system.path_exists(path)

    # -- Backend: memory ----------------------------------------------------
    def mmap(
        self, length: int, prot: int, flags: int, fd: int = -1, offset: int = 0
    ) -> MemoryMap:
        """The fake file's :meth:`~FakeFile.mmap` (a device region), or a
        real mmap(2) of anonymous memory or a real fd (memfd)."""
        file = self.file_or_none(fd) if fd >= 0 else None
        if file is None:
            # Anonymous memory, memfds and other real files: real mmap.
            return self._real.mmap(length, prot, flags, fd, offset)
        with self.system.lock:
            token = enter(self.system)
            try:
                return file.mmap(length, prot, flags, offset)
            finally:
                leave(token)

    def memfd_create(self, name: str, flags: int = 0) -> int:
        """A real memfd (memory the fake's IOMMU can map by address)."""
        return self._real.memfd_create(name, flags)

    def ftruncate(self, fd: int, length: int) -> None:
        """The real ftruncate(2) (memfds)."""
        self._real.ftruncate(fd, length)

    def eventfd(self, initval: int = 0, flags: int = 0) -> int:
        """A real eventfd, which the fake signals for interrupts."""
        return self._real.eventfd(initval, flags)

    @property
    def page_size(self) -> int:
        """The simulated machine's page size in bytes."""
        return self.system.page_size

    def memlock_limit(self) -> int:
        """The topology's RLIMIT_MEMLOCK in bytes (``-1``: unlimited), which
        the fake's pinning is charged against."""
        return self.system.memlock_limit

    # -- Backend: sysfs -----------------------------------------------------
    def sysfs_read(self, path: str) -> str:
        """An attribute of the simulated sysfs (:mod:`pyvfio.fake.machine.sysfs`)."""
        with self.system.lock:
            return self.system.sysfs.read(path)

    def sysfs_write(self, path: str, value: str) -> None:
        """Write an attribute of the simulated sysfs; binding, unbinding and
        ``driver_override`` act on the simulated driver core."""
        with self.system.lock:
            self.system.sysfs.write(path, value)

    def sysfs_listdir(self, path: str) -> list[str]:
        """A directory of the simulated sysfs, sorted."""
        with self.system.lock:
            return self.system.sysfs.listdir(path)

    def sysfs_readlink(self, path: str) -> str:
        """A symlink of the simulated sysfs (relative, as the kernel writes it)."""
        with self.system.lock:
            return self.system.sysfs.readlink(path)

    def __repr__(self) -> str:
        return f"<FakeBackend of {self.system!r}>"
