"""Device features: ``VFIO_DEVICE_FEATURE`` probe, get and set.

``device.features`` is a :class:`DeviceFeatures`.  :meth:`DeviceFeatures.call`
builds ``struct vfio_device_feature`` with any payload; the methods on top
give the features vfio defines a typed face:

* migration (v2): :meth:`~DeviceFeatures.migration_flags`, the state
  machine (:class:`MigrationState`: RUNNING, STOP, STOP_COPY, RESUMING,
  PRE_COPY, RUNNING_P2P, PRE_COPY_P2P) through
  :meth:`~DeviceFeatures.set_migration_state`, which returns the data fd
  (:class:`MigrationDataFile`) when the new state transfers data;
* runtime low power: :meth:`~DeviceFeatures.low_power_entry` (optionally
  with a wake-up eventfd) and :meth:`~DeviceFeatures.low_power_exit`;
* device DMA dirty logging: start, stop and report;
* bus-master control (``VFIO_DEVICE_FEATURE_BUS_MASTER``, CDX devices);
* the SR-IOV VF token.

A device without a feature answers ``ENOTTY`` (and ``EINVAL`` for an
operation the feature does not have); the methods raise
:class:`~pyvfio.errors.UnsupportedError` then, and :meth:`~DeviceFeatures.probe`
returns False.  vfio-pci itself offers only the low-power features and the
VF token; migration and DMA logging come from variant drivers (mlx5,
hisi_acc, ...).  On the fake kernel, a device model declared with
``model_migration`` (edu) has them too: see :mod:`pyvfio.fake.models`.
"""

from __future__ import annotations

import enum
import errno
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from .._uapi import ffi, lib
from ..errors import InvalidArgumentError, IoctlError, UnsupportedError, ioctl_error
from .irq import EventFd
from .resource import FdResource

if TYPE_CHECKING:
    import uuid  # annotations only: uuid (and platform) cost ~2 ms to import

    from .device import Device

__all__ = [
    "Feature",
    "MigrationState",
    "MigrationFlags",
    "PrecopyInfo",
    "MigrationDataFile",
    "DeviceFeatures",
]

_IOCTL = "VFIO_DEVICE_FEATURE"


class Feature(enum.IntEnum):
    """``VFIO_DEVICE_FEATURE_*`` numbers.

    Thread safety: a constant; safe to share.
    """

    PCI_VF_TOKEN = lib.VFIO_DEVICE_FEATURE_PCI_VF_TOKEN
    MIGRATION = lib.VFIO_DEVICE_FEATURE_MIGRATION
    MIG_DEVICE_STATE = lib.VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE
    LOW_POWER_ENTRY = lib.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY
    LOW_POWER_ENTRY_WITH_WAKEUP = lib.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP
    LOW_POWER_EXIT = lib.VFIO_DEVICE_FEATURE_LOW_POWER_EXIT
    DMA_LOGGING_START = lib.VFIO_DEVICE_FEATURE_DMA_LOGGING_START
    DMA_LOGGING_STOP = lib.VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP
    DMA_LOGGING_REPORT = lib.VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT
    MIG_DATA_SIZE = lib.VFIO_DEVICE_FEATURE_MIG_DATA_SIZE
    BUS_MASTER = lib.VFIO_DEVICE_FEATURE_BUS_MASTER
    DMA_BUF = lib.VFIO_DEVICE_FEATURE_DMA_BUF
    MIG_PRECOPY_INFOv2 = lib.VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2
    ZPCI_ERROR = lib.VFIO_DEVICE_FEATURE_ZPCI_ERROR


class MigrationState(enum.IntEnum):
    """``enum vfio_device_mig_state``.

    Thread safety: a constant; safe to share.
    """

    ERROR = lib.VFIO_DEVICE_STATE_ERROR
    STOP = lib.VFIO_DEVICE_STATE_STOP
    RUNNING = lib.VFIO_DEVICE_STATE_RUNNING
    STOP_COPY = lib.VFIO_DEVICE_STATE_STOP_COPY
    RESUMING = lib.VFIO_DEVICE_STATE_RESUMING
    RUNNING_P2P = lib.VFIO_DEVICE_STATE_RUNNING_P2P
    PRE_COPY = lib.VFIO_DEVICE_STATE_PRE_COPY
    PRE_COPY_P2P = lib.VFIO_DEVICE_STATE_PRE_COPY_P2P

    @property
    def transfers_data(self) -> bool:
        """The kernel opens a data fd when entering this state."""
        return self in (MigrationState.STOP_COPY, MigrationState.RESUMING,
                        MigrationState.PRE_COPY, MigrationState.PRE_COPY_P2P)


class MigrationFlags(enum.IntFlag):
    """``VFIO_MIGRATION_*``: the optional parts of the state machine.

    Thread safety: a constant; safe to share.
    """

    STOP_COPY = lib.VFIO_MIGRATION_STOP_COPY
    P2P = lib.VFIO_MIGRATION_P2P
    PRE_COPY = lib.VFIO_MIGRATION_PRE_COPY


@dataclass(frozen=True)
class PrecopyInfo:
    """``VFIO_MIG_GET_PRECOPY_INFO``: bytes still to read in pre-copy.

    Thread safety: immutable; safe to share between threads.
    """

    initial_bytes: int  #: bytes of the initial state still to read
    dirty_bytes: int  #: bytes of state changed since, still to read (an estimate)
    flags: int  #: VFIO_PRECOPY_INFO_* bits

    @property
    def reinit(self) -> bool:
        """``VFIO_PRECOPY_INFO_REINIT``: the initial data was re-generated."""
        return bool(self.flags & lib.VFIO_PRECOPY_INFO_REINIT)


class MigrationDataFile(FdResource):
    """The data fd of a migration state with a data transfer: ``read`` the
    device state out (STOP_COPY, PRE_COPY), ``write`` it in (RESUMING).

    Thread safety: reads and writes are syscalls on its fd; the migration
    data is a stream, so use it from one thread at a time.
    """

    kind = "migration data fd"

    def __init__(self, device: Device, fd: int, state: MigrationState) -> None:
        super().__init__(fd, device.backend)
        self.device = device  #: the device migrating
        self.state = state  #: the state that opened the fd

    def describe(self) -> str:
        """``"migration data fd of device ... (STOP_COPY)"``."""
        return f"migration data fd of {self.device.describe()} ({self.state.name})"

    def read(self, size: int = 1 << 20) -> bytes:
        """Up to ``size`` bytes of device state; ``b""`` at the end."""
        try:
            return self._backend.read(self.fd, size)
        except OSError as exc:
            raise ioctl_error(exc.errno or errno.EIO, "read", self.describe()) from None

    def read_all(self, chunk: int = 1 << 20) -> bytes:
        """Everything until the end of the stream."""
        out = bytearray()
        while True:
            data = self.read(chunk)
            if not data:
                return bytes(out)
            out += data

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Write device state (RESUMING); returns the bytes accepted."""
        try:
            return self._backend.write(self.fd, data)
        except OSError as exc:
            raise ioctl_error(exc.errno or errno.EIO, "write", self.describe()) from None

    def precopy_info(self) -> PrecopyInfo:
        """``VFIO_MIG_GET_PRECOPY_INFO`` (PRE_COPY states)."""
        arg = ffi.new("struct vfio_precopy_info *")
        arg.argsz = ffi.sizeof(arg[0])
        self._ioctl("VFIO_MIG_GET_PRECOPY_INFO", lib.VFIO_MIG_GET_PRECOPY_INFO, arg)
        return PrecopyInfo(int(arg.initial_bytes), int(arg.dirty_bytes), int(arg.flags))


class DeviceFeatures:
    """``VFIO_DEVICE_FEATURE`` on one device.

    Thread safety: keeps no state: each call is one VFIO_DEVICE_FEATURE
    ioctl the kernel serialises. Migration state changes are a sequence the
    driver must not interleave from several threads.
    """

    def __init__(self, device: Device) -> None:
        self.device = device  #: the device

    def __repr__(self) -> str:
        return f"<DeviceFeatures of {self.device.describe()}>"

    @staticmethod
    def _name(feature: int) -> str:
        try:
            return Feature(feature).name
        except ValueError:
            return str(feature)

    # -- the generic call ---------------------------------------------------------------------
    def call(self, feature: int, op: int, payload: bytes | bytearray | int = b"") -> bytes:
        """Issue ``VFIO_DEVICE_FEATURE`` with ``flags = feature | op``
        (``op``: a mix of ``VFIO_DEVICE_FEATURE_GET``/``SET``/``PROBE``)
        and ``payload`` after the header (bytes, or a size to zero-fill);
        returns the payload as the kernel left it.  ENOTTY becomes
        :class:`~pyvfio.errors.UnsupportedError`."""
        self.device._check_open()
        if not 0 <= feature <= lib.VFIO_DEVICE_FEATURE_MASK:
            raise InvalidArgumentError(f"feature {feature} is out of range", ioctl=_IOCTL,
                                       target=self.device.describe())
        data = bytes(payload)  # an int gives that many zero bytes
        hdr = ffi.sizeof("struct vfio_device_feature")
        raw = ffi.new("char[]", hdr + len(data))
        arg = ffi.cast("struct vfio_device_feature *", raw)
        arg.argsz = hdr + len(data)
        arg.flags = feature | op
        if data:
            ffi.memmove(raw + hdr, data, len(data))
        try:
            self.device._ioctl(_IOCTL, lib.VFIO_DEVICE_FEATURE, raw,
                               target=f"{self.device.describe()} feature {self._name(feature)}")
        except IoctlError as exc:
            if exc.errno == errno.ENOTTY:
                raise UnsupportedError(
                    errno.ENOTTY,
                    f"{_IOCTL} on {self.device.describe()}: [ENOTTY] the device does not "
                    f"support feature {self._name(feature)}",
                    ioctl=_IOCTL, target=self.device.describe()) from None
            raise
        return bytes(ffi.buffer(raw + hdr, len(data)))

    def probe(self, feature: int, *, get: bool = False, set: bool = False) -> bool:
        """Whether the device supports ``feature`` (with GET and/or SET
        when asked): ``VFIO_DEVICE_FEATURE_PROBE``.  ENOTTY (no such
        feature) and EINVAL (no such operation) give False."""
        op = lib.VFIO_DEVICE_FEATURE_PROBE
        if get:
            op |= lib.VFIO_DEVICE_FEATURE_GET
        if set:
            op |= lib.VFIO_DEVICE_FEATURE_SET
        try:
            self.call(feature, op)
        except UnsupportedError:
            return False
        except IoctlError as exc:
            if exc.errno == errno.EINVAL:
                return False
            raise
        return True

    def supported(self) -> dict[Feature, str]:
        """Every feature the device supports, with ``"get"``, ``"set"``
        or ``"get/set"``."""
        out: dict[Feature, str] = {}
        for f in Feature:
            ops = [name for name, kw in (("get", {"get": True}), ("set", {"set": True}))
                   if self.probe(f, **kw)]
            if ops:
                out[f] = "/".join(ops)
        return out

    def get(self, feature: int, size: int) -> bytes:
        """``VFIO_DEVICE_FEATURE_GET`` with a ``size``-byte payload."""
        return self.call(feature, lib.VFIO_DEVICE_FEATURE_GET, size)

    def set(self, feature: int, payload: bytes | bytearray = b"") -> bytes:
        """``VFIO_DEVICE_FEATURE_SET`` with ``payload``; returns it as the
        kernel left it (some features return values in it)."""
        return self.call(feature, lib.VFIO_DEVICE_FEATURE_SET, payload)

    # -- migration ----------------------------------------------------------------------------
    def migration_flags(self) -> MigrationFlags:
        """``VFIO_DEVICE_FEATURE_MIGRATION``: which optional states exist."""
        data = self.get(Feature.MIGRATION, ffi.sizeof("struct vfio_device_feature_migration"))
        return MigrationFlags(int.from_bytes(data[:8], "little"))

    def migration_state(self) -> MigrationState:
        """The current migration state (``MIG_DEVICE_STATE`` GET)."""
        data = self.get(Feature.MIG_DEVICE_STATE,
                        ffi.sizeof("struct vfio_device_feature_mig_state"))
        return MigrationState(int.from_bytes(data[:4], "little"))

    def set_migration_state(self, state: MigrationState | int) -> MigrationDataFile | None:
        """Move the device to ``state`` (the kernel walks the arcs between);
        returns the data fd when the new state transfers data (closed with
        the device)."""
        state = MigrationState(state)
        payload = ffi.new("struct vfio_device_feature_mig_state *")
        payload.device_state = int(state)
        payload.data_fd = -1
        out = self.set(Feature.MIG_DEVICE_STATE, bytes(ffi.buffer(payload)))
        fd = int.from_bytes(out[4:8], "little", signed=True)
        if fd < 0 or not state.transfers_data:
            return None
        return self.device._adopt(MigrationDataFile(self.device, fd, state))

    def migration_data_size(self) -> int:
        """Estimated bytes the STOP_COPY state will produce."""
        data = self.get(Feature.MIG_DATA_SIZE,
                        ffi.sizeof("struct vfio_device_feature_mig_data_size"))
        return int.from_bytes(data[:8], "little")

    # -- low power --------------------------------------------------------------------------------
    def low_power_entry(self, *, wakeup: bool = False) -> EventFd | None:
        """Let the device enter runtime low power (D3) while idle.  With
        ``wakeup`` an eventfd is returned that the kernel signals when the
        device wakes (``LOW_POWER_ENTRY_WITH_WAKEUP``).  While in low
        power, touching an mmapped BAR faults (SIGBUS): exit first."""
        if not wakeup:
            self.set(Feature.LOW_POWER_ENTRY)
            return None
        efd = EventFd(self.device.backend)
        try:
            payload = ffi.new("struct vfio_device_low_power_entry_with_wakeup *")
            payload.wakeup_eventfd = efd.fd
            self.set(Feature.LOW_POWER_ENTRY_WITH_WAKEUP, bytes(ffi.buffer(payload)))
        except BaseException:
            efd.close()
            raise
        return self.device._adopt(efd)

    def low_power_exit(self) -> None:
        """Leave runtime low power (``LOW_POWER_EXIT``)."""
        self.set(Feature.LOW_POWER_EXIT)

    # -- DMA logging -------------------------------------------------------------------------------
    def dma_logging_start(self, ranges: Sequence[tuple[int, int]], page_size: int = 4096) -> None:
        """Start device dirty tracking of ``(iova, length)`` ranges with
        ``page_size``-byte granularity."""
        if not ranges:
            raise InvalidArgumentError("give at least one (iova, length) range", ioctl=_IOCTL,
                                       target=self.device.describe())
        array = ffi.new("struct vfio_device_feature_dma_logging_range[]", len(ranges))
        for i, (iova, length) in enumerate(ranges):
            array[i].iova = iova
            array[i].length = length
        control = ffi.new("struct vfio_device_feature_dma_logging_control *")
        control.page_size = page_size
        control.num_ranges = len(ranges)
        control.ranges = int(ffi.cast("uintptr_t", array))
        self.set(Feature.DMA_LOGGING_START, bytes(ffi.buffer(control)))

    def dma_logging_stop(self) -> None:
        """Stop device dirty tracking."""
        self.set(Feature.DMA_LOGGING_STOP)

    def dma_logging_report(self, iova: int, length: int, page_size: int = 4096) -> bytes:
        """The dirty bitmap of ``[iova, iova + length)``: bit ``n`` is page
        ``n`` (``page_size`` bytes each); reading clears it."""
        pages = (length + page_size - 1) // page_size
        bitmap = ffi.new("uint64_t[]", max(1, (pages + 63) // 64))
        report = ffi.new("struct vfio_device_feature_dma_logging_report *")
        report.iova = iova
        report.length = length
        report.page_size = page_size
        report.bitmap = int(ffi.cast("uintptr_t", bitmap))
        self.call(Feature.DMA_LOGGING_REPORT, lib.VFIO_DEVICE_FEATURE_GET,
                  bytes(ffi.buffer(report)))
        return bytes(ffi.buffer(bitmap))[: (pages + 7) // 8]

    # -- others --------------------------------------------------------------------------------
    def set_bus_master(self, enable: bool) -> None:
        """``VFIO_DEVICE_FEATURE_BUS_MASTER`` (devices whose bus mastering is
        not in a PCI Command register; vfio-pci answers ENOTTY: use
        :meth:`pyvfio.core.pci_config.PciConfig.enable_bus_master`)."""
        payload = ffi.new("struct vfio_device_feature_bus_master *")
        payload.op = (lib.VFIO_DEVICE_FEATURE_SET_MASTER if enable
                      else lib.VFIO_DEVICE_FEATURE_CLEAR_MASTER)
        self.set(Feature.BUS_MASTER, bytes(ffi.buffer(payload)))

    def set_vf_token(self, token: uuid.UUID) -> None:
        """Set the SR-IOV VF token of a PF (``PCI_VF_TOKEN``)."""
        self.set(Feature.PCI_VF_TOKEN, token.bytes)
