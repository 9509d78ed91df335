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
import warnings

__all__ = [
    "VfioError",
    "IoctlError",
    "ClosedError",
    "InvalidArgumentError",
    "NotViableError",
    "UnsupportedError",
    "errno_meaning",
    "errno_name",
    "ioctl_error",
]


class VfioError(OSError):
    """Base class of every pyvfio error.

    :ivar errno: the errno (from the kernel, or the one it would give).
    :ivar ioctl: name of the ioctl that failed, or ``None``.
    :ivar target: description of the object, e.g. ``"IOAS 2"``.

    Thread safety: an exception value, made and raised by one thread;
    nothing shared.
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
    """An ioctl (or another syscall on a VFIO/iommufd file) failed.

    :ivar entry_num: for IOMMU_HWPT_INVALIDATE, how many entries the kernel
        handled before the one that failed (the ``entry_num`` it wrote
        back); ``None`` for other ioctls.

    Thread safety: an exception value, made and raised by one thread;
    nothing shared.
    """

    entry_num: int | None = None


class ClosedError(VfioError, ValueError):
    """The object was closed; nothing can be done with it any more.

    Thread safety: an exception value, made and raised by one thread;
    nothing shared.
    """

    def __init__(self, target: str) -> None:
        super().__init__(_errno.EBADF, f"{target} is closed", target=target)


class InvalidArgumentError(VfioError, ValueError):
    """An argument was rejected in Python before any syscall was made.

    ``errno`` is the one the kernel would give: EINVAL, or EOVERFLOW for a
    range that wraps past the end of the address space.

    Thread safety: an exception value, made and raised by one thread;
    nothing shared.
    """

    def __init__(
        self, message: str, *, ioctl: str | None = None, target: str | None = None,
        err: int = _errno.EINVAL,
    ) -> None:
        prefix = _prefix(ioctl, target)
        super().__init__(err, prefix + message, ioctl=ioctl, target=target)


class NotViableError(VfioError):
    """An IOMMU group cannot be used: a device in it is bound to a host driver.

    :ivar blockers: ``(device, reason)`` pairs that keep the group from
        being viable.

    Thread safety: an exception value, made and raised by one thread;
    nothing shared.
    """

    blockers: list[tuple[str, str]]

    def __init__(
        self, message: str, *, blockers: list[tuple[str, str]] | None = None,
        target: str | None = None, ioctl: str | None = None,
    ) -> None:
        super().__init__(_errno.EPERM, message, ioctl=ioctl, target=target)
        self.blockers = list(blockers or [])


class UnsupportedError(VfioError):
    """The kernel, IOMMU or device does not offer the requested feature.

    Thread safety: an exception value, made and raised by one thread;
    nothing shared.
    """


def _prefix(ioctl: str | None, target: str | None) -> str:
    if ioctl and target:
        return f"{ioctl} on {target}: "
    if ioctl or target:
        return f"{ioctl or target}: "
    return ""


# What an errno means, per family of calls.  Keys are (family, errno).
# The wording follows the uAPI documentation of linux/iommufd.h and
# linux/vfio.h.
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
    ("iommufd", _errno.EADDRINUSE): "the IOVA range covers a reserved range of an attached device",
    ("iommufd", _errno.EDEADLK): "the object is still referenced and cannot be destroyed",
    ("vfio", _errno.ENOTTY): "the ioctl is not supported on this file",
    ("vfio", _errno.EINVAL): "a field value is invalid (argsz too small, unknown flags, bad index or range)",
    ("vfio", _errno.EBUSY): "the resource is busy (already set, in use or owned elsewhere)",
    ("vfio", _errno.EPERM): "not permitted (group not viable, or privilege required)",
    ("vfio", _errno.EEXIST): "the IOVA range overlaps an existing DMA mapping",
    ("vfio", _errno.EFAULT): "a user pointer is invalid",
    ("vfio", _errno.ENOSPC): "no room: a limit was reached or the supplied array is too small",
    ("vfio", _errno.ENOMEM): "out of memory, or the locked-memory limit (RLIMIT_MEMLOCK) was exceeded",
    ("vfio", _errno.ENODEV): "the device or IOMMU is gone or not present",
    ("vfio", _errno.ENOENT): "no such device, region or capability",
    ("vfio", _errno.EOPNOTSUPP): "the operation is not supported by this device or IOMMU",
    ("vfio", _errno.ENXIO): "no such index or IOMMU group",
    ("vfio", _errno.EAGAIN): "temporarily unavailable; try again",
    ("vfio", _errno.E2BIG): "the request is too large",
    ("vfio", _errno.EIO): "the device failed the operation",
    ("vfio", _errno.EOVERFLOW): "IOVA + size or vaddr + size wraps around",
    ("vfio", _errno.EADDRINUSE): "a mapping of the IOAS covers a reserved range of the device",
}

# Where one ioctl (or the open of a device node) gives an errno a meaning
# of its own (Linux 7.3).
_IOCTL_MEANINGS: dict[tuple[str, int], str] = {
    ("open", _errno.ENOENT):
        "no such device node (is the IOMMU on, the module loaded and the device bound "
        "to vfio-pci? see `pyvfio doctor`)",
    ("open", _errno.EBUSY): "the file is already open: a VFIO group can be open only once",
    ("open", _errno.EACCES): "permission denied: run as root or give the user the node",
    ("open", _errno.EPERM): "not permitted (no-IOMMU mode needs CAP_SYS_RAWIO)",
    ("open", _errno.ENODEV): "the device is gone, or its driver is not vfio-pci",
    ("IOMMU_IOAS_UNMAP", _errno.ENOENT):
        "the range cuts a mapping (each mapping touched must lie wholly inside it) "
        "or nothing is mapped there",
    ("IOMMU_IOAS_COPY", _errno.ENOENT):
        "the source range is not entirely mapped, or an ID is not an IOAS",
    ("IOMMU_IOAS_COPY", _errno.EPERM): "a writeable copy of pages that were mapped read-only",
    ("IOMMU_IOAS_MAP", _errno.EINVAL):
        "zero length, no READABLE/WRITEABLE, a misaligned fixed IOVA, or a fixed IOVA "
        "over a reserved range",
    ("IOMMU_IOAS_MAP_FILE", _errno.EINVAL):
        "zero length, no READABLE/WRITEABLE, a misaligned fixed IOVA or file offset, or a "
        "fixed IOVA over a reserved range",
    ("IOMMU_IOAS_ALLOW_IOVAS", _errno.EINVAL): "two ranges overlap, or a range ends before it starts",
    ("IOMMU_IOAS_IOVA_RANGES", _errno.EMSGSIZE):
        "the array is too small; num_iovas was set to the number needed",
    ("IOMMU_DESTROY", _errno.ENOENT): "no object has this ID (or it was already destroyed)",
    ("IOMMU_DESTROY", _errno.EBUSY):
        "the object is in use: devices attached, or an HWPT or other object built on it",
    ("IOMMU_OPTION", _errno.EBUSY): "RLIMIT_MODE can only change while the iommufd holds no objects",
    ("IOMMU_OPTION", _errno.EINVAL):
        "the value is not 0 or 1, or HUGE_PAGES cannot change once pages are mapped",
    ("IOMMU_VFIO_IOAS", _errno.ENODEV):
        "no vfio-compat IOAS yet (IOMMU_VFIO_IOAS_SET or a group's SET_CONTAINER makes one)",
    ("IOMMU_HWPT_ALLOC", _errno.ENOENT): "dev_id is not a bound device, or fault_id is no fault queue",
    ("IOMMU_HWPT_GET_DIRTY_BITMAP", _errno.EINVAL):
        "dirty tracking is off, or the range or page size does not match the mappings",
    ("VFIO_GROUP_SET_CONTAINER", _errno.EPERM):
        "the group is not viable, mixes no-IOMMU and IOMMU groups, or interrupts cannot be "
        "remapped",
    ("VFIO_GROUP_SET_CONTAINER", _errno.EINVAL):
        "the group already has a container or iommufd, or existing mappings do not fit it",
    ("VFIO_GROUP_UNSET_CONTAINER", _errno.EINVAL): "the group has no container",
    ("VFIO_GROUP_UNSET_CONTAINER", _errno.EBUSY): "a device file of the group is still open",
    ("VFIO_GROUP_GET_DEVICE_FD", _errno.EINVAL):
        "the group has no container with an IOMMU set, or the name/VF token is invalid",
    ("VFIO_GROUP_GET_DEVICE_FD", _errno.ENODEV): "no device of the group has this name",
    ("VFIO_SET_IOMMU", _errno.EINVAL): "no group is attached, or an IOMMU model is already set",
    ("VFIO_SET_IOMMU", _errno.ENODEV): "no IOMMU driver offers this model",
    ("VFIO_IOMMU_MAP_DMA", _errno.EINVAL):
        "zero size, no READ/WRITE, misaligned to the IOMMU page size, or outside the usable "
        "IOVA ranges",
    ("VFIO_IOMMU_MAP_DMA", _errno.ENOSPC): "the container has dma_entry_limit mappings already",
    ("VFIO_IOMMU_MAP_DMA", _errno.ENOENT): "no mapping at this IOVA to update the vaddr of",
    ("VFIO_IOMMU_UNMAP_DMA", _errno.EINVAL):
        "the range starts or ends inside a mapping (type1v2 never splits one), or is "
        "misaligned or empty",
    ("VFIO_DEVICE_BIND_IOMMUFD", _errno.EPERM):
        "the group is not viable, its DMA is owned by a container or another iommufd, or "
        "interrupts cannot be remapped",
    ("VFIO_DEVICE_BIND_IOMMUFD", _errno.EBUSY): "the group file /dev/vfio/N is open",
    ("VFIO_DEVICE_BIND_IOMMUFD", _errno.EINVAL):
        "the device file is already bound, came from a group, or a field is invalid",
    ("VFIO_DEVICE_ATTACH_IOMMUFD_PT", _errno.EINVAL):
        "pt_id is not an IOAS or HWPT, or another device of the group uses another page table",
    ("VFIO_DEVICE_ATTACH_IOMMUFD_PT", _errno.ENOENT): "pt_id does not exist",
    ("VFIO_DEVICE_GET_PCI_HOT_RESET_INFO", _errno.ENOSPC):
        "the array is too small; count was set to the number of devices affected",
    ("VFIO_DEVICE_PCI_HOT_RESET", _errno.EPERM):
        "not every affected device is owned by the caller (its group or iommufd)",
    ("VFIO_DEVICE_RESET", _errno.EINVAL): "the device has no reset method",
    ("VFIO_DEVICE_SET_IRQS", _errno.EINVAL):
        "the index, range, flags or eventfds do not fit the interrupt",
}


def _family(ioctl: str) -> str:
    if ioctl.startswith("IOMMU_"):
        return "iommufd"
    if ioctl.startswith("VFIO_"):
        return "vfio"
    return ""


def errno_name(err: int) -> str:
    """The symbolic name of ``err`` (``"EOPNOTSUPP"`` rather than its Linux
    alias ``"ENOTSUP"``)."""
    if err == _errno.EOPNOTSUPP:
        return "EOPNOTSUPP"
    return _errno.errorcode.get(err, str(err))


def errno_meaning(err: int, family: str = "", ioctl: str | None = None) -> str:
    """What ``err`` means for ``ioctl`` (when it has a meaning of its own),
    else for a call of ``family`` (``"vfio"``/``"iommufd"``; taken from the
    ioctl's name when not given), else the C library's text."""
    meaning = _IOCTL_MEANINGS.get((ioctl, err)) if ioctl else None
    if meaning is None:
        meaning = _MEANINGS.get((family or _family(ioctl or ""), err))
    if meaning is None:
        try:
            meaning = os.strerror(err)
        except ValueError:  # pragma: no cover - unknown errno
            meaning = f"error {err}"
    return meaning


def ioctl_error(err: int, ioctl: str, target: str, family: str = "") -> IoctlError:
    """Build the :class:`IoctlError` for a failed ioctl."""
    message = (
        f"{ioctl} on {target}: [{errno_name(err)}] {errno_meaning(err, family, ioctl)} "
        f"({os.strerror(err)})"
    )
    return IoctlError(err, message, ioctl=ioctl, target=target)


def _explained(error: IoctlError, reason: str) -> IoctlError:
    """``error`` with ``reason`` (what went wrong in this call and what to
    do) in place of the errno's generic meaning, e.g. ``IOMMU_IOAS_MAP on
    IOAS 2: [EINVAL] the buffer's address 0x7f0010 is not aligned ...``.
    Built on the failure path only, by the object that issued the ioctl."""
    err = error.errno or _errno.EIO
    head = _prefix(error.ioctl, error.target)
    message = f"{head}[{errno_name(err)}] {reason} ({os.strerror(err)})"
    error.strerror = message
    error.args = (err, message)
    return error


def _deprecated(old: str, new: str) -> None:
    """Warn (:class:`DeprecationWarning`, pointing at the caller's line)
    that ``old`` is deprecated and ``new`` replaces it.  The deprecated
    names are listed in the documentation (``api/deprecated``)."""
    warnings.warn(f"{old} is deprecated: use {new} (the same thing)", DeprecationWarning,
                  stacklevel=3)
