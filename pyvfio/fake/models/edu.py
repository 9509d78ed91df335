"""QEMU's ``edu`` educational PCI device (1234:11e8).

Register-compatible with QEMU's ``hw/misc/edu.c`` as documented in
``docs/specs/edu.rst``.  BAR0 is 1 MiB of 32-bit, non-prefetchable MMIO:

=======  ====  =============================================================
offset   size  register
=======  ====  =============================================================
0x00     4     identification, reads 0x010000ed (RO)
0x04     4     liveness check: reads the bitwise inverse of what was written
0x08     4     factorial: write n, read n! (32-bit, wrapping) when done
0x20     4     status: bit 0 computing (RO), bit 7 raise IRQ 0x001 after
                the factorial
0x24     4     interrupt status (RO)
0x60     4     interrupt raise (WO): ORed into the interrupt status
0x64     4     interrupt acknowledge (WO): cleared from the interrupt status
0x80     4/8   DMA source bus address
0x88     4/8   DMA destination bus address
0x90     4/8   DMA transfer count
0x98     4/8   DMA command: bit 0 start, bit 1 direction (0: RAM -> edu,
                1: edu -> RAM), bit 2 raise IRQ 0x100 when done
=======  ====  =============================================================

The 4 KiB DMA buffer sits at device address 0x40000 (it is addressed by
``src``/``dst`` of a transfer; like QEMU's device it is not readable
through BAR0).  Accesses of other widths read all-ones and are ignored on
write, as QEMU's ``valid.min_access_size = 4`` makes them.

Interrupts: one MSI vector (64-bit, no per-vector masking) when software
enabled MSI, INTx pin A otherwise; the interrupt stays asserted while the
interrupt status is non-zero (INTx) and every raise sends a message (MSI).
As in QEMU the message is a memory write of the function: with Bus Master
Enable clear it is lost (the interrupt status register is still set), while
INTx needs only Interrupt Disable clear (see :mod:`pyvfio.fake.machine.pci`).
The device is conventional PCI (256-byte config space, no FLR).

Differences from QEMU, all deliberate:

* Timing.  QEMU computes the factorial in a thread and runs the DMA 100 ms
  after the start command.  Here both complete *synchronously* during the
  register write that starts them, unless the spec sets
  ``model_fact_latency`` / ``model_dma_latency`` to N > 0: the operation
  then completes after N further BAR0 accesses (so a driver's polling of
  the busy bits is exercised).  The busy bits (status bit 0, DMA command
  bit 0) and the completion interrupts behave as in QEMU either way;
  :meth:`EduDevice.complete_pending` finishes outstanding work at once.
* DMA errors.  edu has no error register.  QEMU's device would just access
  the (clamped) address; behind a real IOMMU the transfer is blocked and
  the IOMMU logs a fault.  Here a blocked transfer (IOMMU fault, or Bus
  Master Enable clear) transfers nothing -- memory and the DMA buffer are
  left untouched -- the fault is recorded in ``System.faults`` by the
  :class:`~pyvfio.fake.machine.pci_device.PciDevice`, :attr:`EduDevice.dma_errors`
  counts it, and the transfer completes (command bit 0 clears, the IRQ is
  raised if requested) as QEMU's would.
* Out-of-range transfers (the buffer window ``[0x40000, 0x41000)`` exceeded)
  are logged by QEMU and then overrun its buffer; here they are counted in
  :attr:`EduDevice.range_errors` and transfer nothing.

Bus addresses are clamped to QEMU's default ``dma_mask`` of 28 bits
(``address & 0x0fffffff``): map DMA buffers below 256 MiB of IOVA.
Like QEMU's edu, the device has no reset handler: its registers survive a
function reset (which clears the config space, MSI enable and INTx).

Live migration (not in QEMU's device): with ``model_migration`` in the spec
(see :mod:`pyvfio.fake.models`) the fake's vfio-pci offers the
migration features for the device, as a variant driver would.  The state
saved is every register (liveness, factorial, status, interrupt status,
the DMA registers), the factorial or transfer in progress with the number
of BAR0 accesses it still needs, and the 4 KiB DMA buffer.  After a load,
the interrupt line follows the loaded interrupt status once the device
runs again (no new MSI is sent).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from ..machine.pci import DMA_ERRORS, IRQ_MSI, Bar
from ._migration import MigratableDevice

__all__ = ["EduDevice"]

EDU_IDENT = 0x010000ED

REG_IDENT = 0x00
REG_LIVENESS = 0x04
REG_FACTORIAL = 0x08
REG_STATUS = 0x20
REG_IRQ_STATUS = 0x24
REG_IRQ_RAISE = 0x60
REG_IRQ_ACK = 0x64
REG_DMA_SRC = 0x80
REG_DMA_DST = 0x88
REG_DMA_COUNT = 0x90
REG_DMA_CMD = 0x98

STATUS_COMPUTING = 0x01
STATUS_IRQFACT = 0x80

FACT_IRQ = 0x00000001
DMA_IRQ = 0x00000100

DMA_CMD_RUN = 0x1
DMA_CMD_TO_RAM = 0x2
DMA_CMD_IRQ = 0x4

DMA_START = 0x40000
DMA_SIZE = 4096
DEFAULT_DMA_MASK = (1 << 28) - 1

_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF


@dataclass
class _Pending:
    remaining: int
    complete: Callable[[], None]


#: The saved state: magic, liveness, factorial, status, interrupt status,
#: DMA source, destination, count and command, then the number of
#: operations in progress; each of those is (kind, accesses left); then the
#: DMA buffer.
_STATE = struct.Struct("<4sIIIIQQQQI")
_STATE_OP = struct.Struct("<BI")
_STATE_MAGIC = b"edu\x01"
_OP_FACT, _OP_DMA = 1, 2


class EduDevice(MigratableDevice):
    """QEMU's edu device (see the module documentation)."""

    model_name = "edu"
    vendor_id = 0x1234
    device_id = 0x11E8
    class_code = 0x00FF00  # PCI_CLASS_OTHERS
    revision = 0x10
    subsystem_vendor_id = 0x1AF4
    subsystem_id = 0x1100
    pcie = False
    interrupt_pin = 1
    default_bars = (Bar(0, 1 << 20),)
    default_reset_methods = ("bus",)

    def __init__(self, spec: Mapping[str, Any] | None = None) -> None:
        spec = dict(spec or {})
        if not spec.get("bars"):
            spec.pop("bars", None)
        super().__init__(spec)
        if 0 not in self.bars or self.bars[0].size < DMA_START or self.bars[0].is_io:
            raise ValueError("edu needs BAR0 of memory space, at least 256 KiB (1 MiB by default)")
        bar0 = self.bars[0]
        bar0.on_read = self._mmio_read
        bar0.on_write = self._mmio_write
        self.add_msi_capability(1, is64=True, per_vector_mask=False)
        #: Bus-address mask applied to DMA addresses (QEMU's ``dma_mask``).
        self.dma_mask = int(spec.get("model_dma_mask", DEFAULT_DMA_MASK))
        self.fact_latency = int(spec.get("model_fact_latency", 0))
        self.dma_latency = int(spec.get("model_dma_latency", 0))
        self.liveness = 0
        self.fact = 0
        self.status = 0
        self.irq_status = 0
        self.dma_src = 0
        self.dma_dst = 0
        self.dma_count = 0
        self.dma_cmd = 0
        #: The device's 4 KiB DMA buffer (device address 0x40000).
        self.dma_buf = bytearray(DMA_SIZE)
        #: Transfers the IOMMU (or a clear Bus Master Enable) blocked.
        self.dma_errors = 0
        #: Transfers outside the DMA buffer window (not performed).
        self.range_errors = 0
        #: ``(offset, width, is_write)`` of every BAR0 access, in order.
        self.mmio_log: list[tuple[int, int, bool]] = []
        self._pending: list[_Pending] = []

    # -- interrupts (edu_raise_irq / edu_lower_irq) ------------------------
    def _raise(self, value: int) -> None:
        self.irq_status = (self.irq_status | value) & _U32
        if self.irq_status:
            if self.msi_enabled:
                self.raise_irq(IRQ_MSI, 0)
            else:
                self.set_intx(True)

    def _lower(self, value: int) -> None:
        self.irq_status &= ~value & _U32
        if not self.irq_status and not self.msi_enabled:
            self.set_intx(False)

    # -- deferred completion ------------------------------------------------
    def _schedule(self, latency: int, complete: Callable[[], None]) -> None:
        if latency <= 0:
            complete()
        else:
            self._pending.append(_Pending(latency, complete))

    def _tick(self) -> None:
        if not self._pending:
            return
        due = []
        for op in self._pending:
            op.remaining -= 1
            if op.remaining <= 0:
                due.append(op)
        for op in due:
            self._pending.remove(op)
            op.complete()

    def complete_pending(self) -> None:
        """Finish every factorial/DMA still in progress now."""
        while self._pending:
            self._pending.pop(0).complete()

    # -- the factorial unit (edu_fact_thread) --------------------------------
    def _fact_done(self) -> None:
        result = 1
        n = self.fact
        while n > 0:
            result = (result * n) & _U32
            n -= 1
        self.fact = result
        self.status &= ~STATUS_COMPUTING
        if self.status & STATUS_IRQFACT:
            self._raise(FACT_IRQ)

    # -- the DMA engine (edu_dma_timer) ---------------------------------------
    def _in_window(self, start: int, count: int) -> bool:
        end = start + count
        return start >= DMA_START and end <= DMA_START + DMA_SIZE and end >= start

    def _dma_done(self) -> None:
        if not self.dma_cmd & DMA_CMD_RUN:
            return
        count = self.dma_count
        if self.dma_cmd & DMA_CMD_TO_RAM:
            if not self._in_window(self.dma_src, count):
                self.range_errors += 1
            else:
                pos = self.dma_src - DMA_START
                try:
                    self.dma_write(self.dma_dst & self.dma_mask, bytes(self.dma_buf[pos:pos + count]))
                except DMA_ERRORS:
                    self.dma_errors += 1
        else:
            if not self._in_window(self.dma_dst, count):
                self.range_errors += 1
            else:
                pos = self.dma_dst - DMA_START
                try:
                    data = self.dma_read(self.dma_src & self.dma_mask, count)
                except DMA_ERRORS:
                    self.dma_errors += 1
                else:
                    self.dma_buf[pos:pos + count] = data
        self.dma_cmd &= ~DMA_CMD_RUN
        if self.dma_cmd & DMA_CMD_IRQ:
            self._raise(DMA_IRQ)

    # -- BAR0 (edu_mmio_read / edu_mmio_write) --------------------------------
    def _mmio_read(self, offset: int, width: int) -> int:
        self.mmio_log.append((offset, width, False))
        self._tick()
        if offset < 0x80 and width != 4:
            return _U64
        if offset >= 0x80 and width not in (4, 8):
            return _U64
        if offset == REG_IDENT:
            return EDU_IDENT
        if offset == REG_LIVENESS:
            return self.liveness
        if offset == REG_FACTORIAL:
            return self.fact
        if offset == REG_STATUS:
            return self.status
        if offset == REG_IRQ_STATUS:
            return self.irq_status
        if offset == REG_DMA_SRC:
            return self.dma_src
        if offset == REG_DMA_DST:
            return self.dma_dst
        if offset == REG_DMA_COUNT:
            return self.dma_count
        if offset == REG_DMA_CMD:
            return self.dma_cmd
        return _U64

    def _mmio_write(self, offset: int, width: int, value: int) -> None:
        self.mmio_log.append((offset, width, True))
        self._tick()
        if offset < 0x80 and width != 4:
            return
        if offset >= 0x80 and width not in (4, 8):
            return
        if offset == REG_LIVENESS:
            self.liveness = ~value & _U32
        elif offset == REG_FACTORIAL:
            if self.status & STATUS_COMPUTING:
                return
            self.fact = value & _U32
            self.status |= STATUS_COMPUTING
            self._schedule(self.fact_latency, self._fact_done)
        elif offset == REG_STATUS:
            if value & STATUS_IRQFACT:
                self.status |= STATUS_IRQFACT
            else:
                self.status &= ~STATUS_IRQFACT
        elif offset == REG_IRQ_RAISE:
            self._raise(value)
        elif offset == REG_IRQ_ACK:
            self._lower(value)
        elif offset in (REG_DMA_SRC, REG_DMA_DST, REG_DMA_COUNT):
            if self.dma_cmd & DMA_CMD_RUN:
                return  # registers are frozen while a transfer runs
            if offset == REG_DMA_SRC:
                self.dma_src = value
            elif offset == REG_DMA_DST:
                self.dma_dst = value
            else:
                self.dma_count = value
        elif offset == REG_DMA_CMD:
            if not value & DMA_CMD_RUN or self.dma_cmd & DMA_CMD_RUN:
                return
            self.dma_cmd = value
            self._schedule(self.dma_latency, self._dma_done)

    # -- live migration (MigratableDevice) ------------------------------------
    def save_device_state(self) -> bytes:
        """Registers, operations in progress and the DMA buffer."""
        ops = []
        for op in self._pending:
            kind = _OP_FACT if op.complete == self._fact_done else _OP_DMA
            ops.append(_STATE_OP.pack(kind, op.remaining))
        head = _STATE.pack(_STATE_MAGIC, self.liveness, self.fact, self.status, self.irq_status,
                           self.dma_src, self.dma_dst, self.dma_count, self.dma_cmd, len(ops))
        return head + b"".join(ops) + bytes(self.dma_buf)

    def load_device_state(self, data: bytes) -> None:
        """The state :meth:`save_device_state` wrote; ``ValueError`` (and no
        change) when it is truncated or inconsistent."""
        data = bytes(data)
        if len(data) < _STATE.size:
            raise ValueError("edu state: truncated header")
        (magic, liveness, fact, status, irq_status, dma_src, dma_dst, dma_count, dma_cmd,
         count) = _STATE.unpack_from(data)
        if magic != _STATE_MAGIC:
            raise ValueError("edu state: not an edu state (or another version)")
        if count > 2 or len(data) != _STATE.size + count * _STATE_OP.size + DMA_SIZE:
            raise ValueError("edu state: wrong length")
        ops: list[tuple[int, int]] = []
        for i in range(count):
            kind, remaining = _STATE_OP.unpack_from(data, _STATE.size + i * _STATE_OP.size)
            if kind not in (_OP_FACT, _OP_DMA) or remaining <= 0 or kind in (k for k, _ in ops):
                raise ValueError("edu state: bad operation in progress")
            ops.append((kind, remaining))
        kinds = {k for k, _ in ops}
        if bool(status & STATUS_COMPUTING) != (_OP_FACT in kinds):
            raise ValueError("edu state: the computing bit and the factorial in progress disagree")
        if bool(dma_cmd & DMA_CMD_RUN) != (_OP_DMA in kinds):
            raise ValueError("edu state: the DMA run bit and the transfer in progress disagree")
        self.liveness, self.fact, self.status, self.irq_status = liveness, fact, status, irq_status
        self.dma_src, self.dma_dst, self.dma_count, self.dma_cmd = dma_src, dma_dst, dma_count, dma_cmd
        self._pending = [_Pending(remaining, self._fact_done if kind == _OP_FACT else self._dma_done)
                         for kind, remaining in ops]
        self.dma_buf[:] = data[len(data) - DMA_SIZE:]

    def migration_resumed(self) -> None:
        """The INTx line follows the interrupt status again (a loaded
        state may have a different one)."""
        if not self.msi_enabled:
            self.set_intx(bool(self.irq_status))
