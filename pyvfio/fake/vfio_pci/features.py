"""VFIO_DEVICE_FEATURE of the fake vfio-pci device file: the dispatch of
vfio_ioctl_device_feature (drivers/vfio/vfio_main.c) with the features the
VFIO core serves for a driver with ``mig_ops``/``log_ops`` (migration,
DMA logging), and those of vfio_pci_core_ioctl_feature (low power entry
and exit).  Each handler is named after the kernel function and has the
kernel's signature: ``(vdev, flags, data, argsz)`` with ``data`` the user
pointer to the feature's payload."""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Callable

from ..._uapi import ffi, lib
from ...backend.base import IoctlArg
from ..core import errno_error
from ..iommufd.iova_bitmap import iova_bitmap_set
from ..uaccess import UserPtr
from .intrs import Eventfd
from .migration import LOG_MAX_RANGES, MigrationDriver
from .priv import U64, offsetofend

if TYPE_CHECKING:
    from .core import VfioPciCore

__all__ = [
    "FeatureHandler",
    "DEVICE_FEATURES",
    "vfio_ioctl_device_feature",
    "vfio_check_feature",
]

#: ``(vdev, flags, data, argsz) -> 0``: a feature's handler.
FeatureHandler = Callable[["VfioPciCore", int, UserPtr, int], int]

_GET = lib.VFIO_DEVICE_FEATURE_GET
_SET = lib.VFIO_DEVICE_FEATURE_SET


def vfio_check_feature(flags: int, argsz: int, supported: int, minsz: int) -> int:
    """vfio_check_feature: 1 to go on, 0 for a successful probe."""
    if flags & (_GET | _SET) & ~supported:
        raise errno_error(errno.EINVAL, "operation not supported by the feature")
    if flags & lib.VFIO_DEVICE_FEATURE_PROBE:
        return 0
    if not flags & (_GET | _SET):
        raise errno_error(errno.EINVAL, "GET or SET is required")
    if argsz < minsz:
        raise errno_error(errno.EINVAL, "argsz too small for the feature")
    return 1


def _mig_ops(vdev: VfioPciCore, feature: str) -> MigrationDriver:
    """The driver's mig_ops: ENOTTY without them."""
    if vdev.migration is None:
        raise errno_error(errno.ENOTTY, f"feature {feature} is not supported")
    return vdev.migration


def _log_ops(vdev: VfioPciCore, feature: str) -> MigrationDriver:
    """The driver's log_ops: ENOTTY without them."""
    mig = vdev.migration
    if mig is None or not mig.dma_logging:
        raise errno_error(errno.ENOTTY, f"feature {feature} is not supported")
    return mig


# -- migration (vfio_main.c) ----------------------------------------------------------------------
def vfio_ioctl_device_feature_migration(vdev: VfioPciCore, flags: int, data: UserPtr, argsz: int) -> int:
    """vfio_ioctl_device_feature_migration: the migration flags."""
    mig = _mig_ops(vdev, "MIGRATION")
    if vfio_check_feature(flags, argsz, _GET, 8) != 1:
        return 0
    data.write_u64(0, mig.flags)
    return 0


def vfio_ioctl_device_feature_mig_device_state(vdev: VfioPciCore, flags: int, data: UserPtr,
                                               argsz: int) -> int:
    """vfio_ioctl_device_feature_mig_device_state: read or change the
    state; a new data session's fd comes back in ``data_fd``."""
    mig = _mig_ops(vdev, "MIG_DEVICE_STATE")
    ctype = "struct vfio_device_feature_mig_state"
    if vfio_check_feature(flags, argsz, _GET | _SET, ffi.sizeof(ctype)) != 1:
        return 0
    state = data.read_struct(ctype)

    def out(device_state: int, fd: int) -> None:
        state.device_state, state.data_fd = device_state, fd
        data.write_struct(state)

    if flags & _GET:
        out(mig.state, -1)
        return 0
    device_state = int(state.device_state)
    try:
        f = mig.set_state(device_state)
    except OSError:
        out(device_state, -1)
        raise
    if f is None:
        out(device_state, -1)
        return 0
    # vfio_ioct_mig_return_fd: no fd is installed when it cannot be copied out
    try:
        data.check(0, ffi.sizeof(ctype), True)
    except OSError:
        f.release()
        raise
    try:
        fd = f.install()
    except BaseException:
        # vfio_ioct_mig_return_fd: no fd for the file: fput(filp)
        f.release()
        raise
    try:
        out(device_state, fd)
    except BaseException:
        # vfio_ioct_mig_return_fd: the fd could not be copied out: put_unused_fd
        # and fput(filp)
        f.kernel.close(fd)
        raise
    return 0


def vfio_ioctl_device_feature_migration_data_size(vdev: VfioPciCore, flags: int, data: UserPtr,
                                                  argsz: int) -> int:
    """vfio_ioctl_device_feature_migration_data_size."""
    mig = _mig_ops(vdev, "MIG_DATA_SIZE")
    if vfio_check_feature(flags, argsz, _GET, 8) != 1:
        return 0
    data.write_u64(0, mig.data_size())
    return 0


def vfio_ioctl_device_feature_migration_precopy_info_v2(vdev: VfioPciCore, flags: int, data: UserPtr,
                                                        argsz: int) -> int:
    """vfio_ioctl_device_feature_migration_precopy_info_v2: opt in to the
    v2 VFIO_MIG_GET_PRECOPY_INFO."""
    mig = _mig_ops(vdev, "MIG_PRECOPY_INFOv2")
    if not mig.flags & lib.VFIO_MIGRATION_PRE_COPY:
        raise errno_error(errno.EINVAL, "the device has no PRE_COPY")
    if vfio_check_feature(flags, argsz, _SET, 0) != 1:
        return 0
    mig.precopy_info_v2 = True
    return 0


# -- DMA logging (vfio_main.c) -------------------------------------------------------------------
def vfio_ioctl_device_feature_logging_start(vdev: VfioPciCore, flags: int, data: UserPtr,
                                            argsz: int) -> int:
    """vfio_ioctl_device_feature_logging_start: the ranges are read one by
    one and checked before the next is read."""
    mig = _log_ops(vdev, "DMA_LOGGING_START")
    ctype = "struct vfio_device_feature_dma_logging_control"
    if vfio_check_feature(flags, argsz, _SET, ffi.sizeof(ctype)) != 1:
        return 0
    control = data.read_struct(ctype)
    count = int(control.num_ranges)
    if not count:
        raise errno_error(errno.EINVAL, "no ranges")
    if count > LOG_MAX_RANGES:
        raise errno_error(errno.E2BIG, f"more than {LOG_MAX_RANGES} ranges")
    page_size = int(control.page_size)
    align = (page_size - 1) & U64  # IS_ALIGNED
    rtype = "struct vfio_device_feature_dma_logging_range"
    rsize = ffi.sizeof(rtype)
    ranges_ptr = UserPtr.from_value(control.ranges)
    nodes: list[tuple[int, int]] = []
    ranges: list[tuple[int, int]] = []
    for i in range(count):
        r = ranges_ptr.read_struct(rtype, i * rsize)
        iova, length = int(r.iova), int(r.length)
        if iova & align or length & align:
            raise errno_error(errno.EINVAL, f"range {i} is not aligned to the page size")
        if iova + length > U64:
            raise errno_error(errno.EOVERFLOW, f"range {i} wraps around")
        last = (iova + length - 1) & U64
        if any(start <= last and iova <= end for start, end in nodes):
            raise errno_error(errno.EINVAL, f"range {i} overlaps another one")
        nodes.append((iova, last))
        ranges.append((iova, length))
    control.page_size = mig.log_start(ranges, page_size)
    try:
        data.write_struct(control)
    except OSError:
        # vfio_ioctl_device_feature_logging_start: stop again on EFAULT
        mig.log_stop()
        raise
    return 0


def vfio_ioctl_device_feature_logging_stop(vdev: VfioPciCore, flags: int, data: UserPtr,
                                           argsz: int) -> int:
    """vfio_ioctl_device_feature_logging_stop."""
    mig = _log_ops(vdev, "DMA_LOGGING_STOP")
    if vfio_check_feature(flags, argsz, _SET, 0) != 1:
        return 0
    mig.log_stop()
    return 0


def vfio_ioctl_device_feature_logging_report(vdev: VfioPciCore, flags: int, data: UserPtr,
                                             argsz: int) -> int:
    """vfio_ioctl_device_feature_logging_report + iova_bitmap: the user's
    bitmap gets bit ``n`` set for each dirty page ``[iova + n * page_size,
    ...)``; no bit is cleared."""
    mig = _log_ops(vdev, "DMA_LOGGING_REPORT")
    ctype = "struct vfio_device_feature_dma_logging_report"
    if vfio_check_feature(flags, argsz, _GET, ffi.sizeof(ctype)) != 1:
        return 0
    report = data.read_struct(ctype)
    iova, length = int(report.iova), int(report.length)
    page_size, bitmap = int(report.page_size), UserPtr.from_value(report.bitmap)
    if page_size < 4096 or page_size & (page_size - 1):
        raise errno_error(errno.EINVAL, "page_size must be a power of two of at least 4 KiB")
    if iova + length > U64:
        raise errno_error(errno.EOVERFLOW, "the range wraps around")
    if not length:
        return 0
    if not bitmap.address:
        raise errno_error(errno.EFAULT, "bitmap is NULL")
    bits: list[int] = []
    for start, n in mig.log_read_and_clear(iova, length):
        bits.extend(range((start - iova) // page_size, (start + n - 1 - iova) // page_size + 1))
    iova_bitmap_set(bitmap, bits)
    return 0


# -- low power (vfio_pci_core.c) -------------------------------------------------------------------
def vfio_pci_core_pm_entry(vdev: VfioPciCore, flags: int, data: UserPtr, argsz: int) -> int:
    """vfio_pci_core_pm_entry."""
    if vfio_check_feature(flags, argsz, _SET, 0) != 1:
        return 0
    vdev.runtime_pm_entry(None)
    return 0


def vfio_pci_core_pm_entry_with_wakeup(vdev: VfioPciCore, flags: int, data: UserPtr, argsz: int) -> int:
    """vfio_pci_core_pm_entry_with_wakeup: the eventfd is signalled when
    the device wakes up on its own."""
    ctype = "struct vfio_device_low_power_entry_with_wakeup"
    if vfio_check_feature(flags, argsz, _SET, ffi.sizeof(ctype)) != 1:
        return 0
    fd = int(data.read_struct(ctype).wakeup_eventfd)
    if fd < 0:
        raise errno_error(errno.EINVAL, "wakeup_eventfd < 0")
    efd = Eventfd(fd)
    try:
        vdev.runtime_pm_entry(efd)
    except OSError:
        efd.put()
        raise
    return 0


def vfio_pci_core_pm_exit(vdev: VfioPciCore, flags: int, data: UserPtr, argsz: int) -> int:
    """vfio_pci_core_pm_exit."""
    if vfio_check_feature(flags, argsz, _SET, 0) != 1:
        return 0
    vdev.runtime_pm_exit()
    return 0


#: vfio_ioctl_device_feature's switch, then vfio_pci_core_ioctl_feature's:
#: the handler of each feature.  Anything else (VF token, bus master,
#: DMA-buf, zPCI) is ENOTTY: this device offers none of them.
DEVICE_FEATURES: dict[int, FeatureHandler] = {
    lib.VFIO_DEVICE_FEATURE_MIGRATION: vfio_ioctl_device_feature_migration,
    lib.VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE: vfio_ioctl_device_feature_mig_device_state,
    lib.VFIO_DEVICE_FEATURE_DMA_LOGGING_START: vfio_ioctl_device_feature_logging_start,
    lib.VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP: vfio_ioctl_device_feature_logging_stop,
    lib.VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT: vfio_ioctl_device_feature_logging_report,
    lib.VFIO_DEVICE_FEATURE_MIG_DATA_SIZE: vfio_ioctl_device_feature_migration_data_size,
    lib.VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2: vfio_ioctl_device_feature_migration_precopy_info_v2,
    # vfio_pci_core_ioctl_feature
    lib.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY: vfio_pci_core_pm_entry,
    lib.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP: vfio_pci_core_pm_entry_with_wakeup,
    lib.VFIO_DEVICE_FEATURE_LOW_POWER_EXIT: vfio_pci_core_pm_exit,
}


def vfio_ioctl_device_feature(vdev: VfioPciCore, arg: IoctlArg) -> int:
    """vfio_ioctl_device_feature: check the header, then the feature's
    handler with the payload after it."""
    uptr = UserPtr(arg)
    minsz = offsetofend("struct vfio_device_feature", "flags")
    hdr = uptr.read_struct("struct vfio_device_feature", 0, minsz)
    argsz, flags = int(hdr.argsz), int(hdr.flags)
    if argsz < minsz:
        raise errno_error(errno.EINVAL, "argsz too small")
    known = lib.VFIO_DEVICE_FEATURE_MASK | _SET | _GET | lib.VFIO_DEVICE_FEATURE_PROBE
    if flags & ~known:
        raise errno_error(errno.EINVAL, f"unknown flags {flags:#x}")
    if not flags & lib.VFIO_DEVICE_FEATURE_PROBE and flags & (_GET | _SET) == _GET | _SET:
        # vfio_ioctl_device_feature: GET and SET together only with PROBE
        raise errno_error(errno.EINVAL, "GET and SET together need PROBE")
    feature = flags & lib.VFIO_DEVICE_FEATURE_MASK
    handler = DEVICE_FEATURES.get(feature)
    if handler is None:
        # vfio_pci_core_ioctl_feature: ENOTTY for a feature it does not know
        raise errno_error(errno.ENOTTY, f"feature {feature} is not supported")
    return handler(vdev, flags, uptr + minsz, argsz - minsz)
