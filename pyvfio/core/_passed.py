"""What can be checked about a file descriptor received from elsewhere
(another process, an fd passed over a Unix socket) before an object adopts
it: the ``from_fd`` constructors of :class:`~pyvfio.IommuFd`,
:class:`~pyvfio.Container`, :class:`~pyvfio.Group` and
:class:`~pyvfio.Device`.

fstat(2) gives the file type and, for a device node, its device number;
sysfs names the device behind each number (``/sys/class/misc/iommu/dev``,
``/sys/class/vfio/<group>/dev``, ``/sys/class/vfio-dev/vfioN/dev``).  A
device fd obtained from a group is an anonymous inode, which only an ioctl
can tell apart from other anonymous files.  Without a readable sysfs (a
sandbox), only the file type is checked.
"""

from __future__ import annotations

import errno
import os
import stat

from ..backend import Backend
from ..errors import InvalidArgumentError, ioctl_error

__all__ = ["check_fd", "fd_stat", "require_chrdev", "class_devices", "class_device_of",
           "shown_type"]


def check_fd(fd: object, what: str) -> int:
    """``fd`` as a file descriptor number; InvalidArgumentError (EBADF)
    for anything but a non-negative int."""
    if not isinstance(fd, int) or isinstance(fd, bool) or fd < 0:
        raise InvalidArgumentError(f"{what}: {fd!r} is not a file descriptor", err=errno.EBADF)
    return fd


def fd_stat(backend: Backend, fd: int, what: str) -> os.stat_result:
    """fstat(2) of ``fd`` through the backend; a failure (EBADF: not open)
    becomes an IoctlError naming ``fstat`` and the fd."""
    try:
        return backend.fstat(fd)
    except OSError as exc:
        raise ioctl_error(exc.errno or errno.EBADF, "fstat", f"fd {fd} ({what})") from None


def shown_type(st: os.stat_result) -> str:
    """The file type of ``st`` in words (for messages)."""
    mode = st.st_mode
    if stat.S_ISCHR(mode):
        return f"character device {os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    for test, name in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISFIFO, "a pipe"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "an anonymous file (eventfd, device fd of a group, ...)"


def require_chrdev(st: os.stat_result, fd: int, what: str) -> None:
    """InvalidArgumentError (ENOTTY, what the first ioctl would give) unless
    ``st`` is a character device."""
    if not stat.S_ISCHR(st.st_mode):
        raise InvalidArgumentError(f"fd {fd} is {shown_type(st)}, not {what}",
                                   err=errno.ENOTTY)


def class_devices(backend: Backend, cls: str) -> dict[str, int] | None:
    """The devices of ``/sys/class/<cls>`` by name -> device number, or
    None when sysfs cannot be read (the class folder is absent when no
    such device exists: an empty dict)."""
    base = f"/sys/class/{cls}"
    try:
        names = backend.sysfs_listdir(base)
    except FileNotFoundError:
        return {}
    except OSError:
        return None
    out: dict[str, int] = {}
    for name in names:
        try:
            major, minor = backend.sysfs_read(f"{base}/{name}/dev").strip().split(":")
            out[name] = os.makedev(int(major), int(minor))
        except (OSError, ValueError):
            continue
    return out


def class_device_of(backend: Backend, st: os.stat_result, fd: int, what: str,
                    classes: tuple[str, ...], names: tuple[str, ...] = ()) -> tuple[str, str] | None:
    """``(class, name)`` of the class device whose number is ``st``'s
    (optionally only among ``names``); None when sysfs cannot be read.
    InvalidArgumentError (ENOTTY) when sysfs is readable and no such device
    has this number."""
    readable = False
    for cls in classes:
        devices = class_devices(backend, cls)
        if devices is None:
            continue
        readable = True
        for name, rdev in devices.items():
            if rdev == st.st_rdev and (not names or name in names):
                return cls, name
    if not readable:
        return None
    raise InvalidArgumentError(f"fd {fd} is {shown_type(st)}, not {what}", err=errno.ENOTTY)
