"""The fake kernel's core: file table, user memory and the DMA path.

The fake kernel serves pyvfio's :class:`~pyvfio.backend.base.Backend`
interface.  Every file it opens is a :class:`FakeFile`; each fd handed to
the user is a real file descriptor (the read end of a pipe the fake keeps
the write end of) so that numbers never collide with the process's other
fds and stay valid for ``fcntl``-style bookkeeping, while all VFIO/iommufd
semantics are served from Python.  Eventfds are real eventfds.

Passing fds.  The placeholder pipe is the fake's ``struct file``: an fd
that reaches this process another way -- ``os.dup``, or ``SCM_RIGHTS``
from a thread of this process or from a process forked after the file was
opened -- names the same pipe, and the fake recognises it by the pipe's
inode the first time the fd is given to ``fstat``, ``ioctl``, ``mmap``
or ``close`` (not to ``read``/``write``, the interrupt path), as the
kernel's fd tables share one ``struct file``.  A file is released when the last reference to
its pipe is gone anywhere (the kept write end then sees no reader), not
merely when the fd it was opened as is closed.

User memory is real memory of this process: the fake pins it by address
(checked against ``/proc/self/maps``) and device models DMA into it through
the simulated IOMMU (:class:`IoDomain`).
"""

from __future__ import annotations

import abc
import errno
import logging
import os
import select
import stat
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

#: The host's page size in bytes (pinned pages are charged in these).
_HOST_PAGE = os.sysconf("SC_PAGE_SIZE")


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
    #: The device node the file was opened through (its inode gives fstat
    #: the node's mode and device number); None for an anonymous inode
    #: (anon_inode_getfile: a device fd from a group, a fault queue, ...).
    node: str | None = None

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
                if (self.pinned_pages + pages) * _HOST_PAGE > limit:
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


class _OpenFile:
    """An fd table entry (a plain class: a dataclass costs its import time)."""

    __slots__ = ("file", "refs", "holder", "key")

    def __init__(self, file: FakeFile, refs: int = 1, holder: int = -1,
                 key: tuple[int, int] = (0, 0)) -> None:
        self.file = file
        self.refs = refs  #: fds of the fake's table that name the file
        self.holder = holder  #: the write end of the placeholder pipe, kept by the fake
        self.key = key  #: (st_dev, st_ino) of the placeholder pipe


#: Permissions of the device nodes (the misc devices' ``mode``: vfio's
#: 0666, iommufd's 0660; devtmpfs's 0600 for the others).
_NODE_PERMS = {"/dev/vfio/vfio": 0o666, "/dev/iommu": 0o660}


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
        #: fds reserved by get_unused_fd -> the write end of their pipe
        self._reserved: dict[int, int] = {}
        #: every file with a placeholder pipe, by the pipe's (st_dev, st_ino)
        self._by_key: dict[tuple[int, int], _OpenFile] = {}
        #: files no fd of the table names, still referenced elsewhere
        self._orphans: set[tuple[int, int]] = set()
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
        fd, holder = os.pipe()  # close-on-exec (PEP 446)
        with self._lock:
            self._reserved[fd] = holder
        return fd

    def put_unused_fd(self, fd: int) -> None:
        """put_unused_fd: give back an fd reserved by :meth:`get_unused_fd`."""
        with self._lock:
            holder = self._reserved.pop(fd, -1)
        os.close(fd)
        if holder >= 0:
            os.close(holder)

    def fd_install(self, fd: int, file: FakeFile) -> None:
        """fd_install: ``fd`` (from :meth:`get_unused_fd`) now refers to
        ``file``; cannot fail."""
        st = os.fstat(fd)
        with self._lock:
            entry = _OpenFile(file, 1, self._reserved.pop(fd, -1), (st.st_dev, st.st_ino))
            self._files[fd] = entry
            if entry.holder >= 0:
                self._by_key[entry.key] = entry
            self._installed.add(file)

    def _entry(self, fd: int) -> _OpenFile | None:
        """The table entry of ``fd``; an fd the table has not seen that
        names a fake file's placeholder (received with SCM_RIGHTS, or a
        dup) joins the table as one more reference to that file
        (receive_fd_replace / dup: fd_install of the same struct file)."""
        entry = self._files.get(fd)
        if entry is not None or not self._by_key:
            return entry
        try:
            st = os.fstat(fd)
        except OSError:
            return None
        if not stat.S_ISFIFO(st.st_mode):
            return None
        with self._lock:
            entry = self._by_key.get((st.st_dev, st.st_ino))
            if entry is None or fd in self._files:
                return self._files.get(fd)
            entry.refs += 1
            self._files[fd] = entry
            self._orphans.discard(entry.key)
            return entry

    @staticmethod
    def _referenced(holder: int) -> bool:
        """Whether any fd anywhere (another process, a message in flight)
        still names the placeholder pipe: its write end sees a reader."""
        if holder < 0:
            return False
        poller = select.poll()
        poller.register(holder, select.POLLOUT)
        return not any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))

    def _put(self, entry: _OpenFile) -> None:
        """fput: release the file once nothing references its placeholder;
        until then it stays known by its pipe (an orphan of the table)."""
        if self._referenced(entry.holder):
            with self._lock:
                self._orphans.add(entry.key)
            return
        with self._lock:
            self._orphans.discard(entry.key)
            if self._by_key.get(entry.key) is entry:
                del self._by_key[entry.key]
            holder, entry.holder = entry.holder, -1
        if holder >= 0:
            os.close(holder)
        with running(self.system):
            entry.file.release()

    def _sweep(self) -> None:
        """Release the orphans whose last reference went away elsewhere
        (a child process exited, a message was dropped)."""
        for key in list(self._orphans):
            entry = self._by_key.get(key)
            if entry is None or entry.refs:
                self._orphans.discard(key)
            else:
                self._put(entry)

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
        entry = self._entry(fd)
        if entry is None:
            raise errno_error(errno.EBADF, f"fd {fd} is not open on the fake kernel")
        return entry.file

    def file_or_none(self, fd: int) -> FakeFile | None:
        """The file behind ``fd``, or None for a real fd (eventfd, memfd)."""
        entry = self._entry(fd)
        return entry.file if entry else None

    @property
    def installed_files(self) -> list[FakeFile]:
        """Every file ever given an fd that is still referenced, open or
        closed (for leak checks: a context kept alive by a lost reference)."""
        with self._lock:
            return list(self._installed)

    @property
    def open_files(self) -> list[FakeFile]:
        """Every file currently open (for leak checks in tests): named by
        an fd of the table, or still referenced elsewhere (an fd passed to
        another process, or in flight in a socket)."""
        self._sweep()
        with self._lock:
            entries = list(self._files.values())
            entries += [self._by_key[key] for key in self._orphans if key in self._by_key]
        seen: dict[int, FakeFile] = {}
        for entry in entries:
            seen.setdefault(id(entry.file), entry.file)
        return list(seen.values())

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
            file.node = path
            self.fd_install(fd, file)
            return fd

    def _node_inode(self, path: str) -> tuple[int, int]:
        """``(st_mode, st_rdev)`` of device node ``path``: devtmpfs makes
        each node with the dev_t its class device registered
        (devtmpfs_create_node), which the fake's sysfs shows in ``dev``."""
        path = os.path.normpath(path)
        name = path.rsplit("/", 1)[-1]
        if path in ("/dev/iommu", "/dev/vfio/vfio"):
            attr = f"/sys/class/misc/{'iommu' if name == 'iommu' else 'vfio'}/dev"
        elif path.startswith("/dev/vfio/devices/"):
            attr = f"/sys/class/vfio-dev/{name}/dev"
        else:
            attr = f"/sys/class/vfio/{name}/dev"
        try:
            with self.system.lock:
                major, minor = self.system.sysfs.read(attr).strip().split(":")
            rdev = os.makedev(int(major), int(minor))
        except (OSError, ValueError):  # pragma: no cover - every node has a class device
            rdev = 0
        return stat.S_IFCHR | _NODE_PERMS.get(path, 0o600), rdev

    def close(self, fd: int) -> None:
        """Drop ``fd``; the file's :meth:`~FakeFile.release` runs when it was
        a fake file and nothing else references it (an fd passed to another
        process or in flight keeps it).  A real fd (eventfd, memfd) is
        closed for real."""
        entry = self._entry(fd)
        last = False
        if entry is not None:
            with self._lock:
                if self._files.pop(fd, None) is entry:
                    entry.refs -= 1
                    last = entry.refs == 0
        os.close(fd)  # a real fd (eventfd, memfd): the real close
        if last:
            assert entry is not None
            self._put(entry)
        if self._orphans:
            self._sweep()

    def fstat(self, fd: int) -> os.stat_result:
        """vfs_fstat: for a fake file, the node it was opened through
        (``S_IFCHR`` and its device number) or an anonymous inode (mode
        0600 and no file type, as anon_inode_getfile's inode shows);
        otherwise the real fstat(2)."""
        entry = self._entry(fd)
        st = os.fstat(fd)
        if entry is None:
            return st
        node = entry.file.node
        mode, rdev = self._node_inode(node) if node is not None else (0o600, 0)
        fields = (mode, st.st_ino, st.st_dev, 1, 0, 0, 0,
                  int(st.st_atime), int(st.st_mtime), int(st.st_ctime))
        return os.stat_result(fields, {"st_rdev": rdev, "st_blksize": st.st_blksize,
                                       "st_blocks": 0})

    def ioctl(self, fd: int, request: int, arg: IoctlArg = 0) -> int:
        """:meth:`FakeFile.ioctl` of the file behind ``fd``, under the
        system lock; EBADF for an fd that is not a fake file."""
        if not isinstance(arg, (int, ffi.CData)):
            # what fcntl.ioctl says to the real backend for such an argument
            raise TypeError(f"an ioctl argument is an int or a cffi pointer, not {type(arg).__name__}")
        entry = self._files.get(fd)
        file = entry.file if entry is not None else self.file(fd)  # EBADF
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
        entry = self._files.get(fd)  # the hot path: no lookup of passed fds
        file = entry.file if entry is not None else None
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
        entry = self._files.get(fd)
        file = entry.file if entry is not None else None
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
        entry = self._files.get(fd)  # eventfds: the interrupt path
        file = entry.file if entry is not None else None
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
        entry = self._files.get(fd)
        file = entry.file if entry is not None else None
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
