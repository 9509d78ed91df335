"""An NVMe controller, register-compatible with QEMU's ``nvme`` device
(1b36:0010, class 0x010802; hw/nvme/ctrl.c).

Layout (QEMU's defaults): BAR0 is 16 KiB of 64-bit MMIO holding the
controller registers (CAP, VS, INTMS, INTMC, CC, CSTS, NSSR, AQA, ASQ,
ACQ), the doorbells at 0x1000 (stride ``4 << CAP.DSTRD``), the MSI-X table
(65 vectors) at 0x2000 and its PBA at 0x3000.  Capabilities: PM, MSI-X and
PCI Express with FLR.  Interrupts are MSI-X when enabled, INTx pin A
otherwise (masked through INTMS/INTMC); like QEMU's device there is no MSI.
Queue fetches, data transfers and MSI-X messages are memory writes and
reads of the function and need Bus Master Enable; an MSI-X message sent
while it is clear is lost (:mod:`pyvfio.fake.machine.pci`).

Supported commands:

* admin: Delete/Create I/O SQ, Get Log Page (error, SMART and firmware
  logs read as zeros), Delete/Create I/O CQ, Identify (CNS 0 namespace,
  1 controller, 2 active namespace list, 3 namespace descriptors), Set and
  Get Features (Number of Queues, Volatile Write Cache, Interrupt
  Coalescing, Asynchronous Event Configuration, Arbitration, Power
  Management, Temperature Threshold, Error Recovery), Asynchronous Event
  Request (held until the controller resets);
* NVM: Flush, Write, Read on namespace 1, a RAM disk of 512-byte blocks
  (4 MiB unless the spec sets ``model_ns_size`` in bytes).

Data moves with PRP1/PRP2 and PRP lists (chained lists too); SGLs are not
supported (Invalid Field).  Every memory access -- fetching commands,
reading PRP lists, moving data, posting completions -- goes through the
:class:`~pyvfio.fake.machine.pci_device.PciDevice`, i.e. through the IOMMU.

Timing: the controller processes a submission queue synchronously when its
tail doorbell is written and posts every completion before the doorbell
write returns.  Completion queues that are full hold back further
completions until the host moves the head doorbell.

Errors as hardware reports them: a data transfer the IOMMU blocks
completes the command with *Data Transfer Error* (segments before the
blocked one have been transferred); a command fetch or a completion post
that is blocked sets CSTS.CFS (Controller Fatal Status), as QEMU does.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..machine.pci import DMA_ERRORS, IRQ_MSIX, Bar, DeviceModel

__all__ = ["NvmeController"]

# registers
REG_CAP = 0x00
REG_VS = 0x08
REG_INTMS = 0x0C
REG_INTMC = 0x10
REG_CC = 0x14
REG_CSTS = 0x1C
REG_NSSR = 0x20
REG_AQA = 0x24
REG_ASQ = 0x28
REG_ACQ = 0x30
REG_END = 0x38  # the registers QEMU's BAR structure covers up to here
DOORBELL_BASE = 0x1000

CC_EN = 1 << 0
CSTS_RDY = 1 << 0
CSTS_CFS = 1 << 1
CSTS_SHST_COMPLETE = 2 << 2
CSTS_NSSRO = 1 << 4

NVME_VS_1_4 = 0x00010400

# admin opcodes
ADM_DELETE_SQ = 0x00
ADM_CREATE_SQ = 0x01
ADM_GET_LOG_PAGE = 0x02
ADM_DELETE_CQ = 0x04
ADM_CREATE_CQ = 0x05
ADM_IDENTIFY = 0x06
ADM_ABORT = 0x08
ADM_SET_FEATURES = 0x09
ADM_GET_FEATURES = 0x0A
ADM_ASYNC_EVENT = 0x0C
# NVM opcodes
NVM_FLUSH = 0x00
NVM_WRITE = 0x01
NVM_READ = 0x02

# status codes as QEMU encodes them (SCT << 8 | SC, DNR = 0x4000)
SC_SUCCESS = 0x0000
SC_INVALID_OPCODE = 0x0001
SC_INVALID_FIELD = 0x0002
SC_DATA_TRANSFER_ERROR = 0x0004
SC_ABORT_REQ = 0x0007
SC_SQ_DELETED = 0x0008
SC_INVALID_NSID = 0x000B
SC_INVALID_PRP_OFFSET = 0x0013
SC_LBA_RANGE = 0x0080
SC_INVALID_CQID = 0x0100
SC_INVALID_QID = 0x0101
SC_MAX_QSIZE_EXCEEDED = 0x0102
SC_INVALID_IRQ_VECTOR = 0x0108
SC_INVALID_QUEUE_DEL = 0x010C
DNR = 0x4000

FEAT_ARBITRATION = 0x01
FEAT_POWER_MGMT = 0x02
FEAT_TEMP_THRESHOLD = 0x04
FEAT_ERROR_RECOVERY = 0x05
FEAT_VOLATILE_WC = 0x06
FEAT_NUM_QUEUES = 0x07
FEAT_IRQ_COALESCING = 0x08
FEAT_ASYNC_EVENT_CONF = 0x0B

LBA_SIZE = 512
LBA_SHIFT = 9


@dataclass
class _CompletionQueue:
    qid: int
    base: int
    size: int
    vector: int
    irq_enabled: bool
    head: int = 0
    tail: int = 0
    phase: int = 1
    sqs: set[int] = field(default_factory=set)
    pending: deque[bytes] = field(default_factory=deque)

    def full(self) -> bool:
        return (self.tail + 1) % self.size == self.head


@dataclass
class _SubmissionQueue:
    qid: int
    base: int
    size: int
    cqid: int
    head: int = 0
    tail: int = 0


class _TransferError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class NvmeController(DeviceModel):
    """QEMU's NVMe controller (see the module documentation)."""

    model_name = "nvme"
    vendor_id = 0x1B36
    device_id = 0x0010
    class_code = 0x010802
    revision = 0x02
    subsystem_vendor_id = 0x1AF4
    subsystem_id = 0x1100
    pcie = True
    interrupt_pin = 1
    default_bars = (Bar(0, 0x4000, "mem64"),)

    #: Queue pairs besides the admin queue (QEMU's ``max_ioqpairs``).
    max_ioqpairs = 64
    #: MSI-X vectors (QEMU's ``msix_qsize``).
    msix_qsize = 65
    #: Maximum Queue Entries Supported, 0-based (QEMU's ``mqes``).
    mqes = 0x7FF
    #: Maximum Data Transfer Size as a power of two of the minimum page.
    mdts = 7

    def __init__(self, spec: Mapping[str, Any] | None = None) -> None:
        spec = dict(spec or {})
        if not spec.get("bars"):
            spec.pop("bars", None)
        super().__init__(spec)
        bar0 = self.bars.get(0)
        if bar0 is None or bar0.is_io or bar0.size < 0x4000:
            raise ValueError("nvme needs a memory BAR0 of at least 16 KiB")
        bar0.on_read = self._mmio_read
        bar0.on_write = self._mmio_write
        self.dstrd = int(spec.get("model_dstrd", 0))
        self.serial = str(spec.get("model_serial", "deadbeef"))
        self.model_number = str(spec.get("model_model", "QEMU NVMe Ctrl"))
        self.firmware = str(spec.get("model_firmware", "1.0"))
        ns_size = int(spec.get("model_ns_size", 4 << 20))
        if ns_size % LBA_SIZE or ns_size <= 0:
            raise ValueError("model_ns_size must be a positive multiple of 512")
        self._ns_size = ns_size
        self._namespace: bytearray | None = None  # allocated on first use
        # the order QEMU's nvme lists them in (measured in the VM)
        self.add_msix_capability(self.msix_qsize, table_bar=0, table_offset=0x2000, pba_offset=0x3000)
        self.add_pcie_capability(flr=True)
        self.add_pm_capability()
        #: Counts of what happened (for tests): commands by (queue, opcode),
        #: blocked transfers.
        self.dma_errors = 0
        self.commands: list[tuple[int, int, int]] = []
        self._init_state()

    @property
    def namespace(self) -> bytearray:
        """Namespace 1: the disk's contents (zeros until written), allocated
        when first used."""
        if self._namespace is None:
            self._namespace = bytearray(self._ns_size)
        return self._namespace

    # -- controller state -----------------------------------------------------------
    def _init_state(self) -> None:
        self.cap = (
            self.mqes
            | 1 << 16  # CQR: queues must be physically contiguous
            | 0xF << 24  # TO
            | self.dstrd << 32
            | (1 << 0 | 1 << 6 | 1 << 7) << 37  # CSS: NVM, I/O command sets, admin only
            | 0 << 48  # MPSMIN 4 KiB
            | 4 << 52  # MPSMAX 64 KiB
        )
        self.intms = 0
        self.cc = 0
        self.csts = 0
        self.aqa = 0
        self.asq = 0
        self.acq = 0
        self.irq_status = 0
        self.sqs: dict[int, _SubmissionQueue] = {}
        self.cqs: dict[int, _CompletionQueue] = {}
        self.features: dict[int, int] = {
            FEAT_ARBITRATION: 0,
            FEAT_POWER_MGMT: 0,
            FEAT_TEMP_THRESHOLD: 0x0157,
            FEAT_ERROR_RECOVERY: 0,
            FEAT_VOLATILE_WC: 0,
            FEAT_IRQ_COALESCING: 0,
            FEAT_ASYNC_EVENT_CONF: 0,
        }
        self.aers: list[tuple[int, int]] = []

    def device_reset(self) -> None:
        """A function reset brings the controller back to its power-on state."""
        self._init_state()
        self.set_intx(False)

    @property
    def page_size(self) -> int:
        """The memory page size CC.MPS selects, in bytes (4 KiB << MPS)."""
        return 1 << (12 + ((self.cc >> 7) & 0xF))

    @property
    def ready(self) -> bool:
        """CSTS.RDY: the controller is enabled and processes commands."""
        return bool(self.csts & CSTS_RDY)

    # -- BAR0 (nvme_mmio_read / nvme_mmio_write) -------------------------------------
    def _regs(self) -> bytes:
        data = bytearray(REG_END)
        data[REG_CAP:REG_CAP + 8] = self.cap.to_bytes(8, "little")
        data[REG_VS:REG_VS + 4] = NVME_VS_1_4.to_bytes(4, "little")
        data[REG_INTMS:REG_INTMS + 4] = self.intms.to_bytes(4, "little")
        data[REG_INTMC:REG_INTMC + 4] = self.intms.to_bytes(4, "little")
        data[REG_CC:REG_CC + 4] = self.cc.to_bytes(4, "little")
        data[REG_CSTS:REG_CSTS + 4] = self.csts.to_bytes(4, "little")
        data[REG_AQA:REG_AQA + 4] = self.aqa.to_bytes(4, "little")
        data[REG_ASQ:REG_ASQ + 8] = self.asq.to_bytes(8, "little")
        data[REG_ACQ:REG_ACQ + 8] = self.acq.to_bytes(8, "little")
        return bytes(data)

    def _mmio_read(self, offset: int, width: int) -> int:
        if offset + width <= REG_END:
            return int.from_bytes(self._regs()[offset:offset + width], "little")
        return 0  # reserved registers and doorbells read as zero

    def _mmio_write(self, offset: int, width: int, value: int) -> None:
        if offset >= DOORBELL_BASE:
            if width == 4 and offset % 4 == 0:
                self._doorbell(offset, value)
            return
        if offset % 4:
            return  # unaligned register writes are ignored
        if width == 8 and offset in (REG_ASQ, REG_ACQ):
            self._write_reg(offset, value & 0xFFFFFFFF)
            self._write_reg(offset + 4, value >> 32)
            return
        if width == 8:
            self._write_reg(offset, value & 0xFFFFFFFF)
            self._write_reg(offset + 4, value >> 32)
            return
        if width != 4:
            return
        self._write_reg(offset, value)

    def _write_reg(self, offset: int, value: int) -> None:
        if offset == REG_INTMS:
            self.intms |= value
            self._irq_check()
        elif offset == REG_INTMC:
            self.intms &= ~value & 0xFFFFFFFF
            self._irq_check()
        elif offset == REG_CC:
            self._write_cc(value)
        elif offset == REG_NSSR:
            if value == 0x4E564D65:  # "NVMe": subsystem reset, CAP.NSSRS is 0
                pass
        elif offset == REG_AQA:
            self.aqa = value & 0x0FFF0FFF
        elif offset == REG_ASQ:
            self.asq = (self.asq & ~0xFFFFFFFF) | (value & 0xFFFFF000)
        elif offset == REG_ASQ + 4:
            self.asq = (self.asq & 0xFFFFFFFF) | (value << 32)
        elif offset == REG_ACQ:
            self.acq = (self.acq & ~0xFFFFFFFF) | (value & 0xFFFFF000)
        elif offset == REG_ACQ + 4:
            self.acq = (self.acq & 0xFFFFFFFF) | (value << 32)

    def _write_cc(self, value: int) -> None:
        """nvme_write_bar(CC): enable, disable, shutdown."""
        old = self.cc
        self.cc = value
        if value & CC_EN and not old & CC_EN:
            if self._start():
                self.csts |= CSTS_RDY
            else:
                self.csts = CSTS_CFS
        elif not value & CC_EN and old & CC_EN:
            self._controller_reset()
            self.csts &= ~CSTS_RDY
        shn = (value >> 14) & 3
        if shn and not (old >> 14) & 3:
            self.csts = (self.csts & ~(3 << 2)) | CSTS_SHST_COMPLETE
        elif not shn and (old >> 14) & 3:
            self.csts &= ~(3 << 2)

    def _start(self) -> bool:
        """nvme_start_ctrl: the checks QEMU makes before setting RDY."""
        cc = self.cc
        mps = (cc >> 7) & 0xF
        css = (cc >> 4) & 0x7
        iosqes = (cc >> 16) & 0xF
        iocqes = (cc >> 20) & 0xF
        asqs = self.aqa & 0xFFF
        acqs = (self.aqa >> 16) & 0xFFF
        page = 1 << (12 + mps)
        if self.asq & (page - 1) or self.acq & (page - 1):
            return False
        if not (self.cap >> 37) & (1 << css):
            return False
        if not 0 <= mps <= 4:
            return False
        if iocqes and not 4 <= iocqes <= 4:
            return False
        if iosqes and not 6 <= iosqes <= 6:
            return False
        if not asqs or not acqs:
            return False
        self.cqs[0] = _CompletionQueue(0, self.acq, acqs + 1, 0, True)
        self.sqs[0] = _SubmissionQueue(0, self.asq, asqs + 1, 0)
        self.cqs[0].sqs.add(0)
        return True

    def _controller_reset(self) -> None:
        """nvme_ctrl_reset: queues go away, pending events are dropped."""
        self.sqs.clear()
        self.cqs.clear()
        self.aers.clear()
        self.irq_status = 0
        self._irq_check()

    # -- doorbells (nvme_process_db) -------------------------------------------------------
    def _doorbell(self, offset: int, value: int) -> None:
        stride = 4 << self.dstrd
        pos = offset - DOORBELL_BASE
        if pos % stride:
            return
        index = pos // stride
        qid, is_cq = index >> 1, bool(index & 1)
        if not self.ready:
            return
        if is_cq:
            cq = self.cqs.get(qid)
            if cq is None or value >= cq.size:
                return
            cq.head = value
            self._flush_pending(cq)
            if cq.head == cq.tail and cq.irq_enabled:
                self._irq_deassert(cq)
            # completions held back may now make progress
            for sqid in sorted(cq.sqs):
                self._process_sq(self.sqs[sqid])
        else:
            sq = self.sqs.get(qid)
            if sq is None or value >= sq.size:
                return
            sq.tail = value
            self._process_sq(sq)

    def _process_sq(self, sq: _SubmissionQueue) -> None:
        """nvme_process_sq: fetch and execute until the queue is empty or
        its completion queue is full."""
        entry = 64
        while sq.head != sq.tail and self.ready:
            cq = self.cqs.get(sq.cqid)
            if cq is None or cq.pending or cq.full():
                return
            try:
                cmd = self.dma_read(sq.base + sq.head * entry, entry)
            except DMA_ERRORS:
                self.dma_errors += 1
                self.csts |= CSTS_CFS
                return
            sq.head = (sq.head + 1) % sq.size
            opcode = cmd[0]
            cid = int.from_bytes(cmd[2:4], "little")
            self.commands.append((sq.qid, opcode, cid))
            if sq.qid == 0:
                status, result = self._admin(cmd)
            else:
                status, result = self._io(cmd)
            if status is None:
                continue  # held (asynchronous event request)
            self._complete(cq, sq, cid, status, result)

    def _complete(self, cq: _CompletionQueue, sq: _SubmissionQueue, cid: int, status: int, result: int) -> None:
        entry = bytearray(16)
        entry[0:4] = (result & 0xFFFFFFFF).to_bytes(4, "little")
        entry[8:10] = sq.head.to_bytes(2, "little")
        entry[10:12] = sq.qid.to_bytes(2, "little")
        entry[12:14] = cid.to_bytes(2, "little")
        entry[14:16] = (status << 1).to_bytes(2, "little")  # phase added when posted
        cq.pending.append(bytes(entry))
        self._flush_pending(cq)

    def _flush_pending(self, cq: _CompletionQueue) -> None:
        """nvme_post_cqes."""
        posted = False
        while cq.pending and not cq.full():
            entry = bytearray(cq.pending[0])
            status = int.from_bytes(entry[14:16], "little") | cq.phase
            entry[14:16] = status.to_bytes(2, "little")
            try:
                self.dma_write(cq.base + cq.tail * 16, bytes(entry))
            except DMA_ERRORS:
                self.dma_errors += 1
                self.csts |= CSTS_CFS
                return
            cq.pending.popleft()
            cq.tail += 1
            if cq.tail == cq.size:
                cq.tail = 0
                cq.phase ^= 1
            posted = True
        if posted and cq.irq_enabled:
            self._irq_assert(cq)

    # -- interrupts (nvme_irq_assert / nvme_irq_check) --------------------------------------
    def _irq_assert(self, cq: _CompletionQueue) -> None:
        if self.msix_enabled:
            self.raise_irq(IRQ_MSIX, cq.vector)
            return
        self.irq_status |= 1 << cq.vector
        self._irq_check()

    def _irq_deassert(self, cq: _CompletionQueue) -> None:
        if self.msix_enabled:
            return
        self.irq_status &= ~(1 << cq.vector)
        self._irq_check()

    def _irq_check(self) -> None:
        if self.msix_enabled:
            return
        self.set_intx(bool(~self.intms & self.irq_status))

    # -- PRPs (nvme_map_prp) -------------------------------------------------------------------
    def _prp_segments(self, prp1: int, prp2: int, length: int) -> list[tuple[int, int]]:
        page = self.page_size
        segs: list[tuple[int, int]] = []
        first = min(length, page - (prp1 % page))
        segs.append((prp1, first))
        remaining = length - first
        if not remaining:
            return segs
        if remaining <= page:
            if prp2 & (page - 1):
                raise _TransferError(SC_INVALID_PRP_OFFSET | DNR)
            segs.append((prp2, remaining))
            return segs
        list_addr = prp2
        nents = (page - (list_addr & (page - 1))) >> 3
        entries = self._read_prp_list(list_addr, nents)
        i = 0
        while remaining:
            ent = entries[i]
            if i == nents - 1 and remaining > page:
                # the last entry chains to the next list page
                if ent & (page - 1):
                    raise _TransferError(SC_INVALID_PRP_OFFSET | DNR)
                nents = min((remaining + page - 1) // page, page >> 3)
                entries = self._read_prp_list(ent, nents)
                i = 0
                ent = entries[0]
            if ent & (page - 1):
                raise _TransferError(SC_INVALID_PRP_OFFSET | DNR)
            n = min(remaining, page)
            segs.append((ent, n))
            remaining -= n
            i += 1
        return segs

    def _read_prp_list(self, address: int, nents: int) -> list[int]:
        try:
            raw = self.dma_read(address, nents * 8)
        except DMA_ERRORS:
            self.dma_errors += 1
            raise _TransferError(SC_DATA_TRANSFER_ERROR) from None
        return [int.from_bytes(raw[i:i + 8], "little") for i in range(0, len(raw), 8)]

    def _to_host(self, cmd: bytes, data: bytes) -> None:
        prp1 = int.from_bytes(cmd[24:32], "little")
        prp2 = int.from_bytes(cmd[32:40], "little")
        pos = 0
        for address, n in self._prp_segments(prp1, prp2, len(data)):
            try:
                self.dma_write(address, data[pos:pos + n])
            except DMA_ERRORS:
                self.dma_errors += 1
                raise _TransferError(SC_DATA_TRANSFER_ERROR) from None
            pos += n

    def _from_host(self, cmd: bytes, length: int) -> bytes:
        prp1 = int.from_bytes(cmd[24:32], "little")
        prp2 = int.from_bytes(cmd[32:40], "little")
        out = bytearray()
        for address, n in self._prp_segments(prp1, prp2, length):
            try:
                out += self.dma_read(address, n)
            except DMA_ERRORS:
                self.dma_errors += 1
                raise _TransferError(SC_DATA_TRANSFER_ERROR) from None
        return bytes(out)

    # -- admin commands -------------------------------------------------------------------------
    def _admin(self, cmd: bytes) -> tuple[int | None, int]:
        opcode = cmd[0]
        if (cmd[1] >> 6) & 3:
            return SC_INVALID_FIELD | DNR, 0  # SGLs are not supported
        cdw10 = int.from_bytes(cmd[40:44], "little")
        cdw11 = int.from_bytes(cmd[44:48], "little")
        try:
            if opcode == ADM_IDENTIFY:
                return self._identify(cmd, cdw10)
            if opcode == ADM_CREATE_CQ:
                return self._create_cq(cmd, cdw10, cdw11), 0
            if opcode == ADM_CREATE_SQ:
                return self._create_sq(cmd, cdw10, cdw11), 0
            if opcode == ADM_DELETE_SQ:
                return self._delete_sq(cdw10 & 0xFFFF), 0
            if opcode == ADM_DELETE_CQ:
                return self._delete_cq(cdw10 & 0xFFFF), 0
            if opcode == ADM_SET_FEATURES:
                return self._set_features(cdw10, cdw11)
            if opcode == ADM_GET_FEATURES:
                return self._get_features(cdw10)
            if opcode == ADM_GET_LOG_PAGE:
                numd = ((cdw10 >> 16) & 0xFFFF) | ((cdw11 & 0xFFFF) << 16)
                lid = cdw10 & 0xFF
                if lid not in (0x01, 0x02, 0x03):
                    return SC_INVALID_FIELD | DNR, 0
                self._to_host(cmd, bytes(min((numd + 1) * 4, 4096)))
                return SC_SUCCESS, 0
            if opcode == ADM_ASYNC_EVENT:
                self.aers.append((0, int.from_bytes(cmd[2:4], "little")))
                return None, 0
            if opcode == ADM_ABORT:
                return SC_SUCCESS, 1  # DW0 bit 0: the command was not aborted
        except _TransferError as e:
            return e.status, 0
        return SC_INVALID_OPCODE | DNR, 0

    def _identify(self, cmd: bytes, cdw10: int) -> tuple[int, int]:
        cns = cdw10 & 0xFF
        nsid = int.from_bytes(cmd[4:8], "little")
        if cns == 0x00:
            if nsid != 1:
                return SC_INVALID_NSID | DNR, 0
            data = self._id_ns()
        elif cns == 0x01:
            data = self._id_ctrl()
        elif cns == 0x02:
            data = bytearray(4096)
            if nsid < 1:
                data[0:4] = (1).to_bytes(4, "little")
            if nsid >= 0xFFFFFFFE:
                return SC_INVALID_NSID | DNR, 0
        elif cns == 0x03:
            if nsid != 1:
                return SC_INVALID_NSID | DNR, 0
            data = bytearray(4096)
            # NIDT 3 (UUID) descriptor
            data[0] = 3
            data[1] = 16
            data[4:20] = bytes.fromhex("5f0dbd9d6a324b58b9a0c1d2e3f40001")
        else:
            return SC_INVALID_FIELD | DNR, 0
        self._to_host(cmd, bytes(data))
        return SC_SUCCESS, 0

    def _id_ctrl(self) -> bytearray:
        d = bytearray(4096)
        d[0:2] = self.vendor_id.to_bytes(2, "little")
        d[2:4] = self.subsystem_vendor_id.to_bytes(2, "little")
        d[4:24] = self.serial.encode("ascii")[:20].ljust(20, b" ")
        d[24:64] = self.model_number.encode("ascii")[:40].ljust(40, b" ")
        d[64:72] = self.firmware.encode("ascii")[:8].ljust(8, b" ")
        d[72] = 6  # RAB
        d[73:76] = bytes([0x00, 0x54, 0x52])  # IEEE OUI 525400, little endian
        d[77] = self.mdts
        d[78:80] = (0).to_bytes(2, "little")  # CNTLID
        d[80:84] = NVME_VS_1_4.to_bytes(4, "little")
        d[111] = 1  # CNTRLTYPE: I/O controller
        d[258] = 3  # ACL
        d[259] = 3  # AERL
        d[260] = 0x02  # FRMW: one slot
        d[261] = 0x02  # LPA
        d[512] = 0x66  # SQES
        d[513] = 0x44  # CQES
        d[516:520] = (1).to_bytes(4, "little")  # NN
        d[520:522] = (0).to_bytes(2, "little")  # ONCS
        d[525] = 0x01  # VWC present
        nqn = f"nqn.2019-08.org.qemu:{self.serial}".encode("ascii")[:255]
        d[768:768 + len(nqn)] = nqn
        return d

    def _id_ns(self) -> bytearray:
        d = bytearray(4096)
        blocks = self._ns_size >> LBA_SHIFT
        d[0:8] = blocks.to_bytes(8, "little")  # NSZE
        d[8:16] = blocks.to_bytes(8, "little")  # NCAP
        d[16:24] = blocks.to_bytes(8, "little")  # NUSE
        d[25] = 0  # NLBAF: one format
        d[26] = 0  # FLBAS: format 0
        d[128:132] = (LBA_SHIFT << 16).to_bytes(4, "little")  # LBAF0: LBADS 9
        return d

    def _create_cq(self, cmd: bytes, cdw10: int, cdw11: int) -> int:
        """nvme_create_cq."""
        qid = cdw10 & 0xFFFF
        qsize = (cdw10 >> 16) & 0xFFFF
        vector = (cdw11 >> 16) & 0xFFFF
        prp1 = int.from_bytes(cmd[24:32], "little")
        if not qid or qid > self.max_ioqpairs or qid in self.cqs:
            return SC_INVALID_QID | DNR
        if not qsize or qsize > self.mqes:
            return SC_MAX_QSIZE_EXCEEDED | DNR
        if prp1 & (self.page_size - 1):
            return SC_INVALID_PRP_OFFSET | DNR
        if not self.msix_enabled and vector:
            return SC_INVALID_IRQ_VECTOR | DNR
        if vector >= self.msix_qsize:
            return SC_INVALID_IRQ_VECTOR | DNR
        if not cdw11 & 1:
            return SC_INVALID_FIELD | DNR
        self.cqs[qid] = _CompletionQueue(qid, prp1, qsize + 1, vector, bool(cdw11 & 2))
        return SC_SUCCESS

    def _create_sq(self, cmd: bytes, cdw10: int, cdw11: int) -> int:
        """nvme_create_sq."""
        qid = cdw10 & 0xFFFF
        qsize = (cdw10 >> 16) & 0xFFFF
        cqid = (cdw11 >> 16) & 0xFFFF
        prp1 = int.from_bytes(cmd[24:32], "little")
        if not cqid or cqid not in self.cqs:
            return SC_INVALID_CQID | DNR
        if not qid or qid > self.max_ioqpairs or qid in self.sqs:
            return SC_INVALID_QID | DNR
        if not qsize or qsize > self.mqes:
            return SC_MAX_QSIZE_EXCEEDED | DNR
        if prp1 & (self.page_size - 1):
            return SC_INVALID_PRP_OFFSET | DNR
        if not cdw11 & 1:
            return SC_INVALID_FIELD | DNR
        self.sqs[qid] = _SubmissionQueue(qid, prp1, qsize + 1, cqid)
        self.cqs[cqid].sqs.add(qid)
        return SC_SUCCESS

    def _delete_sq(self, qid: int) -> int:
        """nvme_del_sq."""
        if not qid or qid not in self.sqs:
            return SC_INVALID_QID | DNR
        sq = self.sqs.pop(qid)
        cq = self.cqs.get(sq.cqid)
        if cq is not None:
            cq.sqs.discard(qid)
        return SC_SUCCESS

    def _delete_cq(self, qid: int) -> int:
        """nvme_del_cq."""
        if not qid or qid not in self.cqs:
            return SC_INVALID_CQID | DNR
        cq = self.cqs[qid]
        if cq.sqs:
            return SC_INVALID_QUEUE_DEL
        if cq.irq_enabled:
            self._irq_deassert(cq)
        del self.cqs[qid]
        return SC_SUCCESS

    def _set_features(self, cdw10: int, cdw11: int) -> tuple[int, int]:
        fid = cdw10 & 0xFF
        if fid == FEAT_NUM_QUEUES:
            if (cdw11 & 0xFFFF) == 0xFFFF or (cdw11 >> 16) == 0xFFFF:
                return SC_INVALID_FIELD | DNR, 0
            n = self.max_ioqpairs - 1
            return SC_SUCCESS, n | n << 16
        if fid in self.features:
            self.features[fid] = cdw11
            return SC_SUCCESS, 0
        return SC_INVALID_FIELD | DNR, 0

    def _get_features(self, cdw10: int) -> tuple[int, int]:
        fid = cdw10 & 0xFF
        if fid == FEAT_NUM_QUEUES:
            n = self.max_ioqpairs - 1
            return SC_SUCCESS, n | n << 16
        if fid in self.features:
            return SC_SUCCESS, self.features[fid]
        return SC_INVALID_FIELD | DNR, 0

    # -- NVM commands ---------------------------------------------------------------------
    def _io(self, cmd: bytes) -> tuple[int | None, int]:
        opcode = cmd[0]
        if (cmd[1] >> 6) & 3:
            return SC_INVALID_FIELD | DNR, 0
        nsid = int.from_bytes(cmd[4:8], "little")
        if opcode == NVM_FLUSH:
            if nsid not in (1, 0xFFFFFFFF):
                return SC_INVALID_NSID | DNR, 0
            return SC_SUCCESS, 0
        if opcode not in (NVM_READ, NVM_WRITE):
            return SC_INVALID_OPCODE | DNR, 0
        if nsid != 1:
            return SC_INVALID_NSID | DNR, 0
        slba = int.from_bytes(cmd[40:48], "little")
        nlb = (int.from_bytes(cmd[48:52], "little") & 0xFFFF) + 1
        length = nlb << LBA_SHIFT
        if length > (1 << self.mdts) * 4096:
            return SC_INVALID_FIELD | DNR, 0
        blocks = self._ns_size >> LBA_SHIFT
        if slba + nlb > blocks:
            return SC_LBA_RANGE | DNR, 0
        start = slba << LBA_SHIFT
        try:
            if opcode == NVM_WRITE:
                self.namespace[start:start + length] = self._from_host(cmd, length)
            else:
                self._to_host(cmd, bytes(self.namespace[start:start + length]))
        except _TransferError as e:
            return e.status, 0
        return SC_SUCCESS, 0
