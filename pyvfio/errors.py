"""The exception hierarchy.

Every error pyvfio raises is a :class:`VfioError`, a subclass of
:class:`OSError` whose ``errno`` is the kernel's (or, for checks made in
Python before any syscall, the errno the kernel would have given).  The
message names the ioctl, the object it was issued on and what the errno
means for that ioctl in the uAPI's own vocabulary, e.g.::

    IOMMU_IOAS_MAP on IOAS 2: [EEXIST] the IOVA range overlaps an
    existing mapping (File exists)
"""

from __future__ import annotations

import errno as _errno
import os

__all__ = [
    "VfioError",
    "IoctlError",
    "ClosedError",
    "InvalidArgumentError",
    "NotViableError",
    "UnsupportedError",
    "errno_meaning",
]


class VfioError(OSError):
    """Base class of every pyvfio error.

    :ivar errno: the errno (from the kernel, or the one it would give).
    :ivar ioctl: name of the ioctl that failed, or ``None``.
    :ivar target: description of the object, e.g. ``"IOAS 2"``.
    """

    ioctl: str | None
    target: str | None

    def __init__(
        self,
        err: int,
        message: str,
        *,
        ioctl: str | None = None,
        target: str | None = None,
    ) -> None:
        super().__init__(err, message)
        self.ioctl = ioctl
        self.target = target

    def __str__(self) -> str:
        return str(self.strerror)

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), self.errno, self.strerror, dict(self.__dict__)))


def _rebuild(cls: type[VfioError], err: int, message: str, state: dict[str, object]) -> VfioError:
    # Subclasses take other constructor arguments: bypass them.
    obj = cls.__new__(cls, err, message)
    OSError.__init__(obj, err, message)
    obj.__dict__.update(state)
    return obj


class IoctlError(VfioError):
    """An ioctl (or another syscall on a VFIO/iommufd file) failed."""


class ClosedError(VfioError, ValueError):
    """The object was closed; nothing can be done with it any more."""

    def __init__(self, target: str) -> None:
        super().__init__(_errno.EBADF, f"{target} is closed", target=target)


class InvalidArgumentError(VfioError, ValueError):
    """An argument was rejected in Python before any syscall was made."""

    def __init__(
        self, message: str, *, ioctl: str | None = None, target: str | None = None
    ) -> None:
        prefix = _prefix(ioctl, target)
        super().__init__(_errno.EINVAL, prefix + message, ioctl=ioctl, target=target)


class NotViableError(VfioError):
    """An IOMMU group cannot be used: a device in it is bound to a host driver.

    :ivar blockers: ``(device, reason)`` pairs that keep the group from
        being viable.
    """

    blockers: list[tuple[str, str]]

    def __init__(
        self, message: str, *, blockers: list[tuple[str, str]] | None = None,
        target: str | None = None, ioctl: str | None = None,
    ) -> None:
        super().__init__(_errno.EPERM, message, ioctl=ioctl, target=target)
        self.blockers = list(blockers or [])


class UnsupportedError(VfioError):
    """The kernel, IOMMU or device does not offer the requested feature."""


def _prefix(ioctl: str | None, target: str | None) -> str:
    if ioctl and target:
        return f"{ioctl} on {target}: "
    if ioctl or target:
        return f"{ioctl or target}: "
    return ""


# What an errno means, per family of calls.  Keys are (family, errno);
# family "" is the fallback.  The wording follows the uAPI documentation of
# linux/iommufd.h and linux/vfio.h.
_MEANINGS: dict[tuple[str, int], str] = {
    ("iommufd", _errno.ENOTTY): "the ioctl number is not supported by this kernel",
    ("iommufd", _errno.E2BIG): "the structure is larger than the kernel knows and its tail is not zero",
    ("iommufd", _errno.EOPNOTSUPP): "a flag, option or field value is not supported",
    ("iommufd", _errno.EINVAL): "a field value is invalid (reserved bits set, bad alignment or range)",
    ("iommufd", _errno.ENOENT): "the object ID does not exist or names an object of the wrong type",
    ("iommufd", _errno.ENOMEM): "out of memory, or the pinned-page limit (RLIMIT_MEMLOCK) was exceeded",
    ("iommufd", _errno.EOVERFLOW): "a mathematical overflow of IOVA or length",
    ("iommufd", _errno.EEXIST): "the IOVA range overlaps an existing mapping",
    ("iommufd", _errno.EBUSY): "the object is in use (devices attached, mappings present or referenced)",
    ("iommufd", _errno.EFAULT): "the user memory address is invalid or not mapped",
    ("iommufd", _errno.ENOSPC): "no free IOVA space satisfies the request",
    ("iommufd", _errno.EMSGSIZE): "the supplied array is too small; the required count was returned",
    ("iommufd", _errno.EPERM): "the operation is not permitted on this object",
    ("iommufd", _errno.EDEADLK): "the object is still referenced and cannot be destroyed",
    ("vfio", _errno.ENOTTY): "the ioctl is not supported on this file",
    ("vfio", _errno.EINVAL): "a field value is invalid (argsz too small, unknown flags, bad index or range)",
    ("vfio", _errno.EBUSY): "the resource is busy (already set, in use or owned elsewhere)",
    ("vfio", _errno.EPERM): "not permitted (group not viable, or privilege required)",
    ("vfio", _errno.EEXIST): "the IOVA range overlaps an existing DMA mapping",
    ("vfio", _errno.EFAULT): "a user pointer is invalid",
    ("vfio", _errno.ENOSPC): "the maximum number of DMA mappings was reached",
    ("vfio", _errno.ENOMEM): "out of memory, or the locked-memory limit (RLIMIT_MEMLOCK) was exceeded",
    ("vfio", _errno.ENODEV): "the device or IOMMU is gone or not present",
    ("vfio", _errno.ENOENT): "no such device, region or capability",
    ("vfio", _errno.EOPNOTSUPP): "the operation is not supported by this device or IOMMU",
    ("vfio", _errno.ENXIO): "no such index or IOMMU group",
    ("vfio", _errno.EAGAIN): "temporarily unavailable; try again",
    ("vfio", _errno.E2BIG): "the request is too large",
    ("vfio", _errno.EIO): "the device failed the operation",
}


def errno_meaning(err: int, family: str = "") -> str:
    """What ``err`` means for a call of ``family`` (``"vfio"``/``"iommufd"``)."""
    meaning = _MEANINGS.get((family, err))
    if meaning is None:
        try:
            meaning = os.strerror(err)
        except ValueError:  # pragma: no cover - unknown errno
            meaning = f"error {err}"
    return meaning


def ioctl_error(err: int, ioctl: str, target: str, family: str = "") -> IoctlError:
    """Build the :class:`IoctlError` for a failed ioctl."""
    name = _errno.errorcode.get(err, str(err))
    message = (
        f"{ioctl} on {target}: [{name}] {errno_meaning(err, family)} ({os.strerror(err)})"
    )
    return IoctlError(err, message, ioctl=ioctl, target=target)
