"""Live migration of the fake vfio-pci driver, the part a variant driver
(mlx5_vfio_pci, hisi_acc_vfio_pci, mtty) adds to vfio-pci: its
``mig_ops`` (the state machine walked one arc at a time with
:func:`mig_next_state`, vfio_mig_get_next_state of vfio_main.c, and the
data files) and its ``log_ops`` over the model's log of its DMA writes.

Served for a model that declares it (``model_migration``, see
:mod:`pyvfio.fake.models`); the features that reach it are in
:mod:`pyvfio.fake.vfio_pci.features`.

* The data fds are real files (a memfd opened read-only for a saving
  session, write-only for resuming): ``os.read``/``os.write`` work on them.
  Through the backend (pyvfio's
  :class:`~pyvfio.core.features.MigrationDataFile`), reads also give ENOMSG at
  the temporary end of the pre-copy data and ENODEV once the session is
  over, and VFIO_MIG_GET_PRECOPY_INFO is served; a raw ``os.read`` sees
  the end of the file instead.
* The stream is a sequence of checked records around the model's own
  state format: the device identity, a snapshot on entering PRE_COPY (and
  one more each time VFIO_MIG_GET_PRECOPY_INFO finds everything read and
  the device changed), and the final state on entering STOP_COPY.
  Leaving RESUMING loads the final state; a stream that is incomplete,
  damaged or from another kind of device fails with EINVAL and leaves the
  device in RESUMING with the data written so far.
* While the device is stopped (STOP, STOP_COPY, RESUMING, ERROR) its
  registers read as all-ones and ignore writes (ioeventfds included);
  config space and the MSI-X table keep working.
* :func:`inject_migration_failure` makes the next arc fail into the ERROR
  state; VFIO_DEVICE_RESET (or any reset vfio-pci does, and closing the
  device) returns to RUNNING and ends the data sessions.
* The driver is still called ``vfio-pci`` in sysfs.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import zlib
from typing import TYPE_CHECKING

from ..._uapi import lib
from ...backend.base import IoctlArg
from ..core import FakeBackend, FakeFile, errno_error
from ..machine.pci import DeviceModel
from ..models._migration import DmaDirtyLog, MigratableDevice, MigrationCapability
from ..uaccess import UserPtr
from .priv import PAGE_SIZE, core_of, offsetofend

if TYPE_CHECKING:
    from ..machine.system import PciDevice
    from .core import VfioPciCore

__all__ = [
    "mig_next_state",
    "inject_migration_failure",
    "MigrationDriver",
    "MigrationFile",
    "LOG_MAX_RANGES",
]

_ST_ERROR = lib.VFIO_DEVICE_STATE_ERROR
_ST_STOP = lib.VFIO_DEVICE_STATE_STOP
_ST_RUNNING = lib.VFIO_DEVICE_STATE_RUNNING
_ST_STOP_COPY = lib.VFIO_DEVICE_STATE_STOP_COPY
_ST_RESUMING = lib.VFIO_DEVICE_STATE_RESUMING
_ST_RUNNING_P2P = lib.VFIO_DEVICE_STATE_RUNNING_P2P
_ST_PRE_COPY = lib.VFIO_DEVICE_STATE_PRE_COPY
_ST_PRE_COPY_P2P = lib.VFIO_DEVICE_STATE_PRE_COPY_P2P
_MIG_SC = lib.VFIO_MIGRATION_STOP_COPY
_MIG_P2P = lib.VFIO_MIGRATION_P2P
_MIG_PRE = lib.VFIO_MIGRATION_PRE_COPY

#: vfio_mig_get_next_state, state_flags_table: the VFIO_MIGRATION_* bits a
#: state needs (ERROR needs every bit: it is never a valid argument).
_MIG_STATE_NEEDS = {
    _ST_STOP: _MIG_SC, _ST_RUNNING: _MIG_SC, _ST_STOP_COPY: _MIG_SC, _ST_RESUMING: _MIG_SC,
    _ST_RUNNING_P2P: _MIG_SC | _MIG_P2P, _ST_PRE_COPY: _MIG_SC | _MIG_PRE,
    _ST_PRE_COPY_P2P: _MIG_SC | _MIG_P2P | _MIG_PRE, _ST_ERROR: 0xFFFFFFFF,
}


def _mig_row(stop: int, running: int, stop_copy: int, resuming: int, running_p2p: int,
             pre_copy: int, pre_copy_p2p: int) -> dict[int, int]:
    return {_ST_STOP: stop, _ST_RUNNING: running, _ST_STOP_COPY: stop_copy,
            _ST_RESUMING: resuming, _ST_RUNNING_P2P: running_p2p, _ST_PRE_COPY: pre_copy,
            _ST_PRE_COPY_P2P: pre_copy_p2p, _ST_ERROR: _ST_ERROR}


#: vfio_mig_get_next_state, vfio_from_fsm_table: from a state, the first
#: arc towards each target when the device has P2P and PRE_COPY; arcs into
#: states the device lacks are skipped by looking again from there.  The
#: saving states (PRE_COPY, PRE_COPY_P2P, STOP_COPY) are never in the middle
#: of a path, and nothing leads from STOP_COPY back into pre-copy.
_MIG_NEXT: dict[int, dict[int, int]] = {
    #                    STOP            RUNNING          STOP_COPY         RESUMING
    #                    RUNNING_P2P     PRE_COPY         PRE_COPY_P2P
    _ST_STOP: _mig_row(_ST_STOP, _ST_RUNNING_P2P, _ST_STOP_COPY, _ST_RESUMING,
                       _ST_RUNNING_P2P, _ST_RUNNING_P2P, _ST_RUNNING_P2P),
    _ST_RUNNING: _mig_row(_ST_RUNNING_P2P, _ST_RUNNING, _ST_RUNNING_P2P, _ST_RUNNING_P2P,
                          _ST_RUNNING_P2P, _ST_PRE_COPY, _ST_RUNNING_P2P),
    _ST_STOP_COPY: _mig_row(_ST_STOP, _ST_STOP, _ST_STOP_COPY, _ST_STOP,
                            _ST_STOP, _ST_ERROR, _ST_ERROR),
    _ST_RESUMING: _mig_row(_ST_STOP, _ST_STOP, _ST_STOP, _ST_RESUMING,
                           _ST_STOP, _ST_STOP, _ST_STOP),
    _ST_RUNNING_P2P: _mig_row(_ST_STOP, _ST_RUNNING, _ST_STOP, _ST_STOP,
                              _ST_RUNNING_P2P, _ST_RUNNING, _ST_PRE_COPY_P2P),
    _ST_PRE_COPY: _mig_row(_ST_RUNNING, _ST_RUNNING, _ST_PRE_COPY_P2P, _ST_RUNNING,
                           _ST_RUNNING, _ST_PRE_COPY, _ST_PRE_COPY_P2P),
    _ST_PRE_COPY_P2P: _mig_row(_ST_RUNNING_P2P, _ST_RUNNING_P2P, _ST_STOP_COPY, _ST_RUNNING_P2P,
                               _ST_RUNNING_P2P, _ST_PRE_COPY, _ST_PRE_COPY_P2P),
    _ST_ERROR: _mig_row(*([_ST_ERROR] * 7)),
}

#: States in which the device is stopped: it changes neither its own state
#: nor anything outside (no DMA, no interrupts).
_MIG_STOPPED = frozenset({_ST_STOP, _ST_STOP_COPY, _ST_RESUMING, _ST_ERROR})
_MIG_PRE_COPY_STATES = frozenset({_ST_PRE_COPY, _ST_PRE_COPY_P2P})
#: LOG_MAX_RANGES: the ranges that fit in one kernel page.
LOG_MAX_RANGES = PAGE_SIZE // 16
#: Tracking granularities the fake device supports (4 KiB .. 1 GiB).
_LOG_MIN_PAGE, _LOG_MAX_PAGE = 1 << 12, 1 << 30


def mig_next_state(migration_flags: int, cur: int, new: int) -> int:
    """vfio_mig_get_next_state: the state after ``cur`` on the way to
    ``new`` for a device with ``migration_flags``; EINVAL for a state the
    device does not have (ERROR included) or a blocked path."""

    def supported(state: int) -> bool:
        needs = _MIG_STATE_NEEDS.get(state)
        return needs is not None and needs & migration_flags == needs

    if not supported(cur) or not supported(new):
        raise errno_error(errno.EINVAL, f"migration state {new} is not valid from {cur}")
    nxt = _MIG_NEXT[cur][new]
    while nxt != _ST_ERROR and not supported(nxt):  # a blocked arc ends the walk
        nxt = _MIG_NEXT[nxt][new]
    if nxt == _ST_ERROR:
        raise errno_error(errno.EINVAL, f"no path from migration state {cur} to {new}")
    return nxt


# The migration data stream (the driver's framing around the model's own
# state format): records of a 16-byte header -- magic, version, kind,
# payload length, CRC-32 of the payload -- and the payload.  A stream is an
# identity record (model and PCI IDs), pre-copy snapshots, and a final
# snapshot written when STOP_COPY is entered.
_REC = struct.Struct("<4sHHII")
_REC_MAGIC = b"PVFM"
_REC_VERSION = 1
_REC_IDENTITY, _REC_PRECOPY, _REC_FINAL = 1, 2, 3


def _mig_record(kind: int, payload: bytes) -> bytes:
    return _REC.pack(_REC_MAGIC, _REC_VERSION, kind, len(payload), zlib.crc32(payload)) + payload


def _mig_identity(model: DeviceModel) -> bytes:
    return f"{model.model_name} {model.vendor_id:04x}:{model.device_id:04x}".encode()


def _mig_parse(data: bytes, model: DeviceModel) -> bytes:
    """The final state of a complete stream for ``model``; ValueError when
    the stream is truncated, damaged or from another kind of device."""
    pos = 0
    final: bytes | None = None
    first = True
    while pos < len(data):
        if final is not None:
            raise ValueError("data after the end of the migration stream")
        if len(data) - pos < _REC.size:
            raise ValueError("truncated migration stream")
        magic, version, kind, length, crc = _REC.unpack_from(data, pos)
        if magic != _REC_MAGIC or version != _REC_VERSION:
            raise ValueError("not a migration stream of this driver")
        payload = data[pos + _REC.size:pos + _REC.size + length]
        if len(payload) != length:
            raise ValueError("truncated migration stream")
        if zlib.crc32(payload) != crc:
            raise ValueError("damaged migration stream (CRC mismatch)")
        if first:
            if kind != _REC_IDENTITY:
                raise ValueError("the migration stream does not start with the device identity")
            if payload != _mig_identity(model):
                raise ValueError(f"migration stream of {payload.decode(errors='replace')!r}, "
                                 f"not {_mig_identity(model).decode()!r}")
            first = False
        elif kind == _REC_FINAL:
            final = payload
        elif kind != _REC_PRECOPY:
            raise ValueError(f"unknown record kind {kind} in the migration stream")
        pos += _REC.size + length
    if final is None:
        raise ValueError("incomplete migration stream (no STOP_COPY data)")
    return final


class MigrationFile(FakeFile):
    """A migration data fd (the ``struct file`` a variant driver's
    migration_set_state returns).

    The fd the user gets is a real file: a memfd holding the stream, opened
    read-only (saving) or write-only (resuming), so ``os.read``/``os.write``
    work on it as on the kernel's fd.  Through the backend (what pyvfio's
    :class:`~pyvfio.core.features.MigrationDataFile` uses) the driver's rules
    apply too: ENOMSG at the temporary end of the pre-copy data, ENODEV
    once the session is over, ``VFIO_MIG_GET_PRECOPY_INFO``.  A raw
    ``os.read`` cannot return those errors: it sees the end of the file
    instead, and a file whose session ended reads as empty (writes fail
    with EPERM).
    """

    path = "anon_inode:[vfio-migration]"

    def __init__(self, kernel: FakeBackend, driver: MigrationDriver, *, saving: bool) -> None:
        super().__init__(kernel)
        self.driver = driver
        self.saving = saving
        self._data: int | None = os.memfd_create("pyvfio-migration", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        #: the open file description the user's fd shares (its file offset)
        self._view: int | None = None
        #: bytes of stream written (saving)
        self.size = 0
        #: where the initial pre-copy data ends
        self.initial_end = 0
        self.disabled = False
        self.released = False

    def __repr__(self) -> str:
        kind = "saving" if self.saving else "resuming"
        return f"<migration data file {kind}{' (disabled)' if self.disabled else ''}>"

    def install(self) -> int:
        """Give the file an fd of the user's (vfio_ioct_mig_return_fd)."""
        assert self._data is not None
        mode = os.O_RDONLY if self.saving else os.O_WRONLY
        try:
            view = os.open(f"/proc/self/fd/{self._data}", mode | os.O_CLOEXEC)
        except OSError:  # pragma: no cover - /proc without memfd reopening
            view = os.dup(self._data)
        try:
            fd = self.kernel.install(self)
        except BaseException:
            os.close(view)
            raise
        os.dup2(view, fd, inheritable=False)
        self._view = view
        return fd

    # -- the driver's side -------------------------------------------------------------------
    def append(self, data: bytes) -> None:
        """Add ``data`` to the stream the user reads."""
        assert self._data is not None and not self.disabled
        os.pwrite(self._data, data, self.size)
        self.size += len(data)

    def position(self) -> int:
        """How far the user has read."""
        if self._view is None:
            return 0
        return os.lseek(self._view, 0, os.SEEK_CUR)

    def contents(self) -> bytes:
        """Everything the user wrote (resuming)."""
        assert self._data is not None
        size = os.fstat(self._data).st_size
        return os.pread(self._data, size, 0) if size else b""

    def disable(self) -> None:
        """The session ended (mlx5vf_disable_fd): the data is dropped,
        reads and writes fail with ENODEV."""
        if self.disabled:
            return
        self.disabled = True
        if self._data is not None:
            try:
                os.ftruncate(self._data, 0)
                fcntl.fcntl(self._data, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
                            | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)
            except OSError:  # pragma: no cover - sealing refused
                pass
        if self.released:
            self._close_data()

    def _close_data(self) -> None:
        if self._data is not None:
            os.close(self._data)
            self._data = None

    # -- the user's side ----------------------------------------------------------------------
    def read(self, size: int) -> bytes:
        """read(2) of the saving stream: ENOMSG at the temporary end of the
        pre-copy data, end of file after the STOP_COPY data."""
        if not self.saving or self._view is None:
            raise errno_error(errno.EBADF, "the resuming data fd is write-only")
        if self.disabled:
            raise errno_error(errno.ENODEV, "the migration session is over")
        if size <= 0:
            return b""
        if self.position() >= self.size and self.driver.state in _MIG_PRE_COPY_STATES:
            raise errno_error(errno.ENOMSG, "no pre-copy data right now")
        return os.read(self._view, size)

    def write(self, data: bytes) -> int:
        """write(2) of the resuming stream."""
        if self.saving or self._view is None:
            raise errno_error(errno.EBADF, "the saving data fd is read-only")
        if self.disabled:
            raise errno_error(errno.ENODEV, "the migration session is over")
        return os.write(self._view, data)

    def pread(self, size: int, offset: int) -> bytes:
        """ESPIPE: the data fd is a stream (stream_open)."""
        raise errno_error(errno.ESPIPE, "the migration data fd is a stream")

    def pwrite(self, data: bytes, offset: int) -> int:
        """ESPIPE: the data fd is a stream (stream_open)."""
        raise errno_error(errno.ESPIPE, "the migration data fd is a stream")

    def ioctl(self, request: int, arg: IoctlArg) -> int:
        """VFIO_MIG_GET_PRECOPY_INFO (mlx5vf_precopy_ioctl); ENOTTY for
        anything else and on the resuming fd."""
        if not self.saving or request != lib.VFIO_MIG_GET_PRECOPY_INFO:
            raise errno_error(errno.ENOTTY, f"ioctl {request:#x} on a migration data fd")
        uptr = UserPtr(arg)
        minsz = offsetofend("struct vfio_precopy_info", "dirty_bytes")
        info = uptr.read_struct("struct vfio_precopy_info", 0, minsz)
        if int(info.argsz) < minsz:
            raise errno_error(errno.EINVAL, "argsz too small")
        driver = self.driver
        if driver.state not in _MIG_PRE_COPY_STATES:
            raise errno_error(errno.EINVAL, "the device is not in a PRE_COPY state")
        if self.disabled:
            raise errno_error(errno.ENODEV, "the migration session is over")
        initial, dirty = driver.precopy_info(self)
        if driver.precopy_info_v2:
            info.flags = 0  # an output field after the v2 opt-in (no REINIT here)
        info.initial_bytes = initial
        info.dirty_bytes = dirty
        uptr.write_struct(info, 0, minsz)
        return 0

    def release(self) -> None:
        """The user closed the fd; the driver keeps the data until the
        session ends (a resuming stream is loaded when RESUMING is left)."""
        if self.released:
            return
        self.released = True
        if self._view is not None:
            os.close(self._view)
            self._view = None
        if self.disabled:
            self._close_data()


class MigrationDriver:
    """The migration part of a variant driver for one open device: the
    state machine walked one arc at a time (the driver's
    migration_set_state loop over vfio_mig_get_next_state), the data
    sessions, and the log ops over the model's DMA write log."""

    def __init__(self, core: VfioPciCore, model: MigratableDevice, capability: MigrationCapability) -> None:
        self.core = core
        self.model = model
        #: device->migration_flags
        self.flags = capability.flags
        #: device->log_ops is set
        self.dma_logging = capability.dma_logging
        self.state = _ST_RUNNING
        self.saving: MigrationFile | None = None
        self.resuming: MigrationFile | None = None
        #: VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2 was set
        self.precopy_info_v2 = False
        #: the last snapshot the saving stream carries
        self._last_snapshot = b""
        #: errno the next arc fails with (inject_migration_failure)
        self.fail_next: int | None = None

    @property
    def stopped(self) -> bool:
        """The device is in STOP, STOP_COPY, RESUMING or ERROR."""
        return self.state in _MIG_STOPPED

    def blocks_access(self, index: int, pos: int) -> bool:
        """Whether an access to BAR ``index`` at ``pos`` must not reach the
        device because migration stopped it.  enum vfio_device_mig_state
        (include/uapi/linux/vfio.h) has a stopped device keep its internal
        state and stay off the bus, yet still serve what the rest of the
        system needs, MSI-X and config space; accesses the user makes
        anyway must not harm anything outside.  So in STOP, STOP_COPY,
        RESUMING and ERROR the device's registers read as all-ones and
        ignore writes (as a device that does not decode them), while the
        MSI-X table and PBA keep working.  The P2P states run as RUNNING:
        the fake has no peer-to-peer DMA to quiesce."""
        if not self.stopped:
            return False
        msix = self.model.msix
        if msix is not None:
            if index == msix.table_bar and msix.table_offset <= pos < msix.table_offset + msix.table_size:
                return False
            if index == msix.pba_bar and msix.pba_offset <= pos < msix.pba_offset + msix.pba_size:
                return False
        return True

    # -- life cycle ------------------------------------------------------------------------------
    def _disable_fds(self) -> None:
        for f in (self.saving, self.resuming):
            if f is not None:
                f.disable()
        self.saving = self.resuming = None

    def _to_running(self) -> None:
        was_stopped = self.stopped
        self.state = _ST_RUNNING
        if was_stopped:
            self.model.migration_resumed()

    def reset_done(self) -> None:
        """A reset of the function (mlx5vf_pci_aer_reset_done): RUNNING
        again, data sessions over."""
        self._disable_fds()
        self._to_running()

    def close(self) -> None:
        """The device's last close (mlx5vf_cmd_close_migratable)."""
        self._disable_fds()
        self.log_stop()
        self._to_running()
        self.precopy_info_v2 = False
        self.fail_next = None

    # -- the state machine -------------------------------------------------------------------------
    def set_state(self, new: int) -> MigrationFile | None:
        """migration_set_state: walk single arcs until ``new``; the file of
        a data session the last arc opened, if any.  On an error the state
        is the last one reached (or ERROR)."""
        result: MigrationFile | None = None
        while self.state != new:
            nxt = mig_next_state(self.flags, self.state, new)
            result = self._step(self.state, nxt)
            self.state = nxt
            if result is not None and nxt != new:  # pragma: no cover - the table prevents it
                result.disable()
                raise errno_error(errno.EINVAL, "a data session opened in the middle of a path")
        return result

    def _new_file(self, saving: bool) -> MigrationFile:
        return MigrationFile(self.core.kernel, self, saving=saving)

    def _step(self, cur: int, nxt: int) -> MigrationFile | None:
        """One arc (the driver's step_device_state)."""
        if self.fail_next is not None:
            err, self.fail_next = self.fail_next, None
            self._disable_fds()
            if not self.stopped:
                self.model.migration_stopped()
            self.state = _ST_ERROR
            raise errno_error(err, f"the device failed the arc {cur} -> {nxt}")
        model = self.model
        if cur not in _MIG_STOPPED and nxt in _MIG_STOPPED:
            model.migration_stopped()
        result: MigrationFile | None = None
        if cur == _ST_STOP and nxt == _ST_STOP_COPY:
            result = self._new_file(saving=True)
            result.append(_mig_record(_REC_IDENTITY, _mig_identity(model)))
            result.append(_mig_record(_REC_FINAL, model.save_device_state()))
            self.saving = result
        elif cur == _ST_STOP and nxt == _ST_RESUMING:
            result = self._new_file(saving=False)
            self.resuming = result
        elif cur == _ST_RESUMING and nxt == _ST_STOP:
            resuming = self.resuming
            try:
                state = _mig_parse(resuming.contents() if resuming is not None else b"", model)
                model.load_device_state(state)
            except ValueError as e:
                # the load failed: the device stays in RESUMING with what
                # was written (mlx5vf/mtty return the error, state unchanged)
                raise errno_error(errno.EINVAL, f"the migration data is not valid: {e}") from None
            self._disable_fds()
        elif cur in (_ST_RUNNING, _ST_RUNNING_P2P) and nxt in _MIG_PRE_COPY_STATES:
            result = self._new_file(saving=True)
            snapshot = model.save_device_state()
            result.append(_mig_record(_REC_IDENTITY, _mig_identity(model)))
            result.append(_mig_record(_REC_PRECOPY, snapshot))
            result.initial_end = result.size
            self._last_snapshot = snapshot
            self.saving = result
        elif cur in _MIG_PRE_COPY_STATES and nxt == _ST_STOP_COPY:
            if self.saving is not None:
                self.saving.append(_mig_record(_REC_FINAL, model.save_device_state()))
        elif (cur == _ST_STOP_COPY and nxt == _ST_STOP) or (
                cur in _MIG_PRE_COPY_STATES and nxt in (_ST_RUNNING, _ST_RUNNING_P2P)):
            self._disable_fds()
        # else: RUNNING <-> RUNNING_P2P, RUNNING(_P2P) <-> STOP, PRE_COPY <->
        # PRE_COPY_P2P: the fake device does no peer-to-peer DMA, so the P2P
        # states quiesce nothing; stopping and running are the freeze itself.
        if cur in _MIG_STOPPED and nxt not in _MIG_STOPPED:
            model.migration_resumed()
        return result

    def precopy_info(self, f: MigrationFile) -> tuple[int, int]:
        """``(initial_bytes, dirty_bytes)`` of the pre-copy stream: when
        the user has read everything and the device changed since the last
        snapshot, a new snapshot is queued first (as mlx5 does on this
        ioctl), so that a read right after returns it."""
        pos = f.position()
        snapshot = self.model.save_device_state()
        changed = snapshot != self._last_snapshot
        if changed and pos >= f.size:
            f.append(_mig_record(_REC_PRECOPY, snapshot))
            self._last_snapshot = snapshot
            changed = False
        initial = max(0, f.initial_end - pos)
        dirty = f.size - max(pos, f.initial_end)
        if changed:
            dirty += _REC.size + len(snapshot)
        return initial, dirty

    def data_size(self) -> int:
        """migration_get_data_size: the bytes a STOP_COPY session would give."""
        return 2 * _REC.size + len(_mig_identity(self.model)) + len(self.model.save_device_state())

    # -- DMA logging (log_ops) ---------------------------------------------------------------------
    @property
    def logging(self) -> bool:
        """DMA logging is started."""
        return self.model.dirty_log is not None

    def log_start(self, ranges: list[tuple[int, int]], page_size: int) -> int:
        """log_start: returns the page size the device tracks with (the
        hint rounded up to a power of two in 4 KiB .. 1 GiB)."""
        if self.logging:
            # mlx5vf_start_page_tracker: a second start is EINVAL
            raise errno_error(errno.EINVAL, "DMA logging is already started")
        size = min(max(page_size, _LOG_MIN_PAGE), _LOG_MAX_PAGE)
        size = 1 << (size - 1).bit_length()
        self.model.dirty_log = DmaDirtyLog(ranges, size)
        return size

    def log_stop(self) -> None:
        """log_stop (stopping twice is fine)."""
        self.model.dirty_log = None

    def log_read_and_clear(self, iova: int, length: int) -> list[tuple[int, int]]:
        """log_read_and_clear: the dirty pieces of the range, cleared."""
        log = self.model.dirty_log
        if log is None:
            raise errno_error(errno.EINVAL, "DMA logging is not started")
        return log.read_and_clear(iova, length)


def inject_migration_failure(pdev: PciDevice, err: int = errno.EIO) -> bool:
    """Make the next migration arc of ``pdev`` fail with ``err`` and leave
    the device in the ERROR state (a device that could neither complete
    the arc nor go back), for testing a program's error handling; only
    VFIO_DEVICE_RESET or closing the device recover.  Returns whether the
    device is open with migration support."""
    core = core_of(pdev)
    if core is None or core.migration is None:
        return False
    core.migration.fail_next = err
    return True

