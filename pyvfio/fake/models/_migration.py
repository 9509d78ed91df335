"""Live migration of device models: the hardware side of a vfio variant
driver.

On Linux, a device whose state can be saved and restored (a ConnectX VF
with ``mlx5_vfio_pci``, a HiSilicon accelerator with
``hisi_acc_vfio_pci``, the ``mtty`` sample) gets a vfio driver that adds
the migration ops to vfio-pci: the ``VFIO_DEVICE_STATE_*`` machine with its
data fds, and optionally device DMA logging.  In the fake kernel a model
takes that part by subclassing :class:`MigratableDevice`; the fake's
vfio-pci (:mod:`pyvfio.fake.vfio_pci`) then serves the migration features
for it.  A topology turns migration on per device with the
``model_migration`` key::

    {"bdf": "0000:00:02.0", "model": "edu",
     "model_migration": {"flags": ["STOP_COPY", "P2P", "PRE_COPY"],
                         "dma_logging": true}}

``flags`` names the ``VFIO_MIGRATION_*`` bits the device reports
(``STOP_COPY`` is required and is the default); ``dma_logging`` adds
``VFIO_DEVICE_FEATURE_DMA_LOGGING_*`` (default false).
``"model_migration": true`` is short for every flag and DMA logging.

What a model provides:

* :meth:`MigratableDevice.save_device_state` and
  :meth:`~MigratableDevice.load_device_state`: the device's internal state
  as bytes, in a format private to the model (the driver frames and checks
  the stream around it);
* optionally :meth:`~MigratableDevice.migration_stopped` and
  :meth:`~MigratableDevice.migration_resumed`, called when the device
  leaves or re-enters a running state (RUNNING, RUNNING_P2P, PRE_COPY,
  PRE_COPY_P2P);
* its DMA writes go through :meth:`MigratableDevice.dma_write`, which
  records them in :attr:`MigratableDevice.dirty_log` while DMA logging is
  on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..._uapi import lib
from ..machine.pci import DeviceModel

__all__ = [
    "MIGRATION_FLAG_NAMES",
    "MigrationCapability",
    "DmaDirtyLog",
    "MigratableDevice",
]

#: The ``flags`` names of ``model_migration`` and their ``VFIO_MIGRATION_*`` bits.
MIGRATION_FLAG_NAMES: dict[str, int] = {
    "STOP_COPY": lib.VFIO_MIGRATION_STOP_COPY,
    "P2P": lib.VFIO_MIGRATION_P2P,
    "PRE_COPY": lib.VFIO_MIGRATION_PRE_COPY,
}

_U64 = (1 << 64) - 1


@dataclass(frozen=True)
class MigrationCapability:
    """What a device's ``model_migration`` key declares."""

    #: ``VFIO_MIGRATION_*`` bits (always with ``VFIO_MIGRATION_STOP_COPY``).
    flags: int
    #: The device logs its DMA writes (``VFIO_DEVICE_FEATURE_DMA_LOGGING_*``).
    dma_logging: bool = False

    @classmethod
    def from_spec(cls, value: object) -> MigrationCapability | None:
        """Parse a ``model_migration`` value: ``None``/``False`` (no
        migration), ``True`` (everything), or an object with ``flags`` and
        ``dma_logging``.  Raises ``ValueError`` for anything else."""
        if value is None or value is False:
            return None
        if value is True:
            return cls(sum(MIGRATION_FLAG_NAMES.values()), True)
        if not isinstance(value, Mapping):
            raise ValueError("model_migration: true, or an object with 'flags' and 'dma_logging'")
        unknown = sorted(set(value) - {"flags", "dma_logging"})
        if unknown:
            raise ValueError(f"model_migration: unknown key(s) {', '.join(map(repr, unknown))}")
        names = value.get("flags", ["STOP_COPY"])
        if isinstance(names, str) or not isinstance(names, Sequence):
            raise ValueError("model_migration.flags: a list of STOP_COPY, P2P, PRE_COPY")
        flags = 0
        for name in names:
            bit = MIGRATION_FLAG_NAMES.get(name) if isinstance(name, str) else None
            if bit is None:
                raise ValueError(f"model_migration.flags: {name!r} is not one of "
                                 f"{', '.join(MIGRATION_FLAG_NAMES)}")
            flags |= bit
        if not flags & lib.VFIO_MIGRATION_STOP_COPY:
            # vfio_register_group_dev refuses migration ops without STOP_COPY
            raise ValueError("model_migration.flags: STOP_COPY is required")
        logging = value.get("dma_logging", False)
        if not isinstance(logging, bool):
            raise ValueError("model_migration.dma_logging: true or false")
        return cls(flags, logging)


class DmaDirtyLog:
    """The device's own record of the memory its DMA wrote (device dirty
    tracking, as an mlx5 VF keeps it): the pages of ``page_size`` bytes
    inside the tracked IOVA ranges that a DMA write touched."""

    def __init__(self, ranges: Sequence[tuple[int, int]], page_size: int) -> None:
        if page_size <= 0 or page_size & (page_size - 1):
            raise ValueError(f"page size {page_size} is not a power of two")
        #: Tracked ``(iova, length)`` ranges.
        self.ranges = sorted((int(iova), int(length)) for iova, length in ranges if length)
        #: The tracking granularity in bytes.
        self.page_size = page_size
        #: Numbers (IOVA // page_size) of the pages written since the last report.
        self.dirty: set[int] = set()

    def record(self, iova: int, length: int) -> None:
        """A DMA write of ``length`` bytes at ``iova``: mark the tracked
        pages it touched."""
        if length <= 0:
            return
        end = iova + length
        ps = self.page_size
        for start, size in self.ranges:
            lo, hi = max(iova, start), min(end, start + size)
            if lo < hi:
                self.dirty.update(range(lo // ps, (hi - 1) // ps + 1))

    def read_and_clear(self, iova: int, length: int) -> list[tuple[int, int]]:
        """The dirty ``(address, length)`` pieces of ``[iova, iova + length)``,
        in address order; their pages are clean afterwards."""
        if length <= 0 or not self.dirty:
            return []
        ps = self.page_size
        end = min(iova + length, _U64 + 1)
        first, last = iova // ps, (end - 1) // ps
        if last - first + 1 <= len(self.dirty):
            pages = [p for p in range(first, last + 1) if p in self.dirty]
        else:
            pages = sorted(p for p in self.dirty if first <= p <= last)
        out = []
        for page in pages:
            self.dirty.discard(page)
            lo, hi = max(page * ps, iova), min((page + 1) * ps, end)
            out.append((lo, hi - lo))
        return out


class MigratableDevice(DeviceModel):
    """A device model whose internal state can be saved and restored.

    The spec's ``model_migration`` key (see the module documentation)
    decides whether the fake's vfio-pci offers migration for the device;
    without it the device behaves as any other model and vfio-pci answers
    ``ENOTTY`` for the migration features.
    """

    def __init__(self, spec: Mapping[str, Any] | None = None) -> None:
        super().__init__(spec)
        #: What the device declares, or ``None``: no migration support.
        self.migration: MigrationCapability | None = MigrationCapability.from_spec(
            self.spec.get("model_migration"))
        #: The DMA write log while the driver has DMA logging started.
        self.dirty_log: DmaDirtyLog | None = None

    def save_device_state(self) -> bytes:
        """The device's internal state (registers, internal memory,
        operations in progress), in the model's own format.  Called while
        the device runs (PRE_COPY) and while it is stopped (STOP_COPY); the
        same state must give the same bytes."""
        raise NotImplementedError(f"{type(self).__name__} does not save its state")

    def load_device_state(self, data: bytes) -> None:
        """Replace the device's internal state with one
        :meth:`save_device_state` produced (on this or another device of the
        same model).  Raises ``ValueError``, changing nothing, when ``data``
        is incomplete or inconsistent.  Called while the device is stopped:
        effects on the outside (interrupts) wait for
        :meth:`migration_resumed`."""
        raise NotImplementedError(f"{type(self).__name__} does not load a state")

    def migration_stopped(self) -> None:
        """Hook: the device left the running states (STOP, STOP_COPY,
        RESUMING or ERROR follow); the default does nothing."""

    def migration_resumed(self) -> None:
        """Hook: the device runs again after being stopped (for example
        with a state just loaded); the default does nothing."""

    def dma_write(self, address: int, data: bytes | bytearray | memoryview, *, pasid: int | None = None) -> None:
        """:meth:`DeviceModel.dma_write`; a write that reached memory is
        recorded in :attr:`dirty_log` while DMA logging is on (requests
        without a PASID only: the log covers the device's own IOVA space)."""
        super().dma_write(address, data, pasid=pasid)
        log = self.dirty_log
        if log is not None and pasid is None:
            log.record(address, len(memoryview(data).cast("B")))
