"""An Intel 82576 Gigabit Ethernet function like QEMU's ``igb`` (8086:10c9,
class 0x020000; hw/net/igb.c, igb_core.c, igb_regs.h).

Layout (QEMU's): BAR0 128 KiB of registers, BAR1 128 KiB flash, BAR2 32
bytes of I/O, BAR3 16 KiB holding the MSI-X table (10 vectors, offset 0)
and its PBA (offset 0x2000).  Capabilities: PM, MSI, MSI-X and PCI Express
with FLR.  No SR-IOV (the fake has no VFs of its own making).

What the model does (the part of the device a userspace driver needs):

=============  ==========  =================================================
register       offset      behaviour
=============  ==========  =================================================
CTRL           0x0000      RST (bit 26) resets the registers and self-clears;
                           the link is down afterwards
STATUS         0x0008      FD, LU (link up), 1000 Mb/s; read-only
MDIC           0x0020      PHY 1 registers BMCR, BMSR; writing BMCR with
                           AUTOEN and ANRESTART brings the link up
EECD / EERD    0x0010/14   EEPROM present; EERD reads words 0-2 (the MAC)
ICR, ICS,      0x1500-     legacy causes: TXDW (bit 0), RXDW (bit 7), RXO;
IMS, IMC                   ICR clears when read
GPIE           0x1514      MSIX_MODE (bit 4): causes go through IVAR/EICR
EICS, EIMS,    0x1520-     extended causes, one bit per MSI-X vector; EIAC
EIMC, EIAC,                bits clear after their message, EICR clears when
EICR           0x1580      read and is write-1-to-clear
IVAR0,         0x1700,     queue -> vector: byte 0 RX queue 0, byte 1 TX
IVAR_MISC      0x1740      queue 0 (bit 7 valid); the other causes' vector
RCTL           0x0100      EN, UPE/MPE/BAM filters, LBM (bits 6-7; 01 MAC
                           loopback), BSIZE, SECRC (strip the 4-byte FCS)
TCTL           0x0400      EN (bit 1)
RAL/RAH(n)     0x5400+8n   receive addresses; RAH bit 31 Address Valid
RX queue n     0xC000+40n  RDBAL, RDBAH, RDLEN, SRRCTL, RDH, RDT, RXDCTL
                           (alias 0x2800+100n for n < 4)
TX queue n     0xE000+40n  TDBAL, TDBAH, TDLEN, TDH, TDT, TXDCTL
                           (alias 0x3800+100n for n < 4)
statistics     0x4000-     GPRC, GPTC, GORC, GOTC, TPR, TPT; clear on read
=============  ==========  =================================================

Other offsets of BAR0 keep what was written (zero at reset).  Accesses are
32-bit (an 8-byte access is two, smaller writes are ignored), as QEMU's
register array is.

Descriptors, queue 0 (QEMU processes the other queues too; here they are
plain registers): TX descriptors are 16 bytes, advanced (DEXT, data or
context type) or legacy: buffer address, length in bits 0-15, EOP (bit 24)
ends a frame, RS (bit 27) asks for the write-back of DD (bit 0 of the
dword at offset 12).  RX descriptors are always the advanced one-buffer
format (like QEMU, whatever SRRCTL.DESCTYPE says): the driver writes the
buffer address at offset 0; the device writes back status DD (bit 0) and
EOP (bit 1) at offset 8 and the length at offset 12.  Buffers are
SRRCTL.BSIZEPKT KiB, else RCTL.BSIZE; a frame spans descriptors when
longer; frames shorter than 60 bytes are padded to 60; without
RCTL.SECRC four zero bytes stand for the FCS.

A frame written to TX queue 0 with RCTL.LBM = 01 (MAC loopback) is
received on RX queue 0 before its TX write-back (igb_tx_pkt_send); without
loopback it goes to :attr:`IgbDevice.wire`, and :meth:`IgbDevice.inject`
receives a frame from the wire.  Reception needs RCTL.EN, STATUS.LU,
RXDCTL0 enable and free descriptors (else RXO and the frame is dropped,
counted in :attr:`IgbDevice.rx_dropped`).  Interrupts follow
igb_raise_interrupts: in MSI-X mode (GPIE.MSIX_MODE) the queue's IVAR entry
sets its EICR bit and a newly pending, enabled (EIMS) bit sends that
vector; otherwise ICR & IMS raises MSI-X vector 0, MSI or INTx.  No
interrupt throttling (EITR): QEMU's default is none.

Every descriptor fetch, buffer access and write-back goes through the
:class:`~pyvfio.fake.machine.pci_device.PciDevice` (the IOMMU).  A
blocked access (IOMMU fault, Bus Master Enable clear) is counted in
:attr:`IgbDevice.dma_errors` and stops the ring where it is (its head does
not move): QEMU's device would read zeros and go on, which on real
hardware is a fault and a stuck queue.
"""

from __future__ import annotations

import collections
from typing import Any, Mapping

from ..machine.pci import DMA_ERRORS, IRQ_MSI, IRQ_MSIX, Bar, DeviceModel

__all__ = ["IgbDevice"]

# -- registers (byte offsets in BAR0) -------------------------------------------
CTRL = 0x0000
STATUS = 0x0008
EECD = 0x0010
EERD = 0x0014
CTRL_EXT = 0x0018
MDIC = 0x0020
RCTL = 0x0100
TCTL = 0x0400
ICR = 0x1500
ICS = 0x1504
IMS = 0x1508
IMC = 0x150C
GPIE = 0x1514
EICS = 0x1520
EIMS = 0x1524
EIMC = 0x1528
EIAC = 0x152C
EIAM = 0x1530
EICR = 0x1580
IVAR0 = 0x1700
IVAR_MISC = 0x1740
RA = 0x5400  # RAL(n) = RA + 8n, RAH(n) = RA + 8n + 4
RX_BASE = 0xC000
TX_BASE = 0xE000
QUEUE_STRIDE = 0x40
RX_ALIAS = 0x2800
TX_ALIAS = 0x3800
# queue register offsets within a queue's block
Q_DBAL, Q_DBAH, Q_DLEN, Q_SRRCTL, Q_DH, Q_DT, Q_DCTL = 0x00, 0x04, 0x08, 0x0C, 0x10, 0x18, 0x28
# statistics (clear on read)
GPRC = 0x4074
GPTC = 0x4080
GORCL = 0x4088
GORCH = 0x408C
GOTCL = 0x4090
GOTCH = 0x4094
TPR = 0x40D0
TPT = 0x40D4
_STATS = (GPRC, GPTC, GORCL, GORCH, GOTCL, GOTCH, TPR, TPT)

CTRL_RST = 1 << 26
STATUS_FD = 1 << 0
STATUS_LU = 1 << 1
STATUS_SPEED_1000 = 1 << 7
EECD_PRES = 1 << 8
EECD_AUTO_RD = 1 << 9
EERD_START = 1 << 0
EERD_DONE = 1 << 1
RCTL_EN = 1 << 1
RCTL_UPE = 1 << 3
RCTL_MPE = 1 << 4
RCTL_LBM_MASK = 3 << 6
RCTL_LBM_MAC = 1 << 6
RCTL_BAM = 1 << 15
RCTL_SECRC = 1 << 26
TCTL_EN = 1 << 1
DCTL_ENABLE = 1 << 25
RAH_AV = 1 << 31
GPIE_MSIX_MODE = 1 << 4
ICR_TXDW = 1 << 0
ICR_RXDW = 1 << 7
ICR_RXO = 1 << 6
ICR_DRSTA = 1 << 30
ICR_ASSERTED = 1 << 31
EICR_OTHER = 1 << 31
EICR_MSIX_MASK = 0x01FFFFFF
EICR_LEGACY_MASK = 0xC000FFFF
IVAR_VALID = 0x80
MDIC_REG_SHIFT = 16
MDIC_PHY_SHIFT = 21
MDIC_OP_WRITE = 1 << 26
MDIC_OP_READ = 2 << 26
MDIC_READY = 1 << 28
MDIC_ERROR = 1 << 30
PHY_ADDRESS = 1
MII_BMCR = 0
MII_BMSR = 1
BMCR_ANRESTART = 1 << 9
BMCR_AUTOEN = 1 << 12
BMSR_LSTATUS = 1 << 2
BMSR_ANEGCOMPLETE = 1 << 5

TXD_EOP = 1 << 24
TXD_RS = 1 << 27
TXD_DEXT = 1 << 29
TXD_DTYP_MASK = 0xF << 20
TXD_DTYP_CTXT = 0x2 << 20
TXD_DTYP_DATA = 0x3 << 20
TXD_STAT_DD = 1 << 0
RXD_STAT_DD = 1 << 0
RXD_STAT_EOP = 1 << 1

DESC_LEN = 16
ETH_ZLEN = 60
FCS_LEN = 4
MSIX_VECTORS = 10
DEFAULT_MAC = "52:54:00:12:34:56"

_U32 = 0xFFFFFFFF


def _canonical(offset: int) -> int:
    """The 82576's queue 0-3 registers also answer at their 82575
    addresses (0x2800/0x3800 + 0x100 n); QEMU maps them to the same
    register."""
    for alias, base in ((RX_ALIAS, RX_BASE), (TX_ALIAS, TX_BASE)):
        if alias <= offset < alias + 0x400 and (offset - alias) % 0x100 < QUEUE_STRIDE:
            queue, reg = divmod(offset - alias, 0x100)
            return base + queue * QUEUE_STRIDE + reg
    return offset


class IgbDevice(DeviceModel):
    """QEMU's igb (Intel 82576) function (see the module documentation).

    Extra spec key: ``model_mac`` (``"52:54:00:12:34:56"`` by default), the
    address in the EEPROM and RAL0/RAH0 after reset.
    """

    model_name = "igb"
    vendor_id = 0x8086
    device_id = 0x10C9
    class_code = 0x020000
    revision = 0x01
    subsystem_vendor_id = 0x1AF4
    subsystem_id = 0x1100
    pcie = True
    interrupt_pin = 1
    default_bars = (Bar(0, 0x20000), Bar(1, 0x20000, ram=True), Bar(2, 0x20, "io", ram=True),
                    Bar(3, 0x4000))

    def __init__(self, spec: Mapping[str, Any] | None = None) -> None:
        spec = dict(spec or {})
        if not spec.get("bars"):
            spec.pop("bars", None)
        super().__init__(spec)
        bar0 = self.bars.get(0)
        if bar0 is None or bar0.is_io or bar0.size < 0x10000 or 3 not in self.bars:
            raise ValueError("igb needs a memory BAR0 of at least 64 KiB and BAR3 for MSI-X")
        bar0.on_read = self._mmio_read
        bar0.on_write = self._mmio_write
        mac = str(spec.get("model_mac", DEFAULT_MAC))
        parts = mac.split(":")
        if len(parts) != 6:
            raise ValueError(f"model_mac {mac!r} is not six colon-separated bytes")
        #: The permanent MAC address (EEPROM words 0-2).
        self.mac_address = bytes(int(p, 16) for p in parts)
        self.add_pm_capability(no_soft_reset=False)
        self.add_msi_capability(1, is64=True, per_vector_mask=True)
        self.add_msix_capability(MSIX_VECTORS, table_bar=3, table_offset=0, pba_offset=0x2000)
        self.add_pcie_capability(flr=True)
        #: Frames transmitted without loopback (the newest 256).
        self.wire: collections.deque[bytes] = collections.deque(maxlen=256)
        #: Descriptor or buffer accesses the IOMMU (or a clear Bus Master
        #: Enable) blocked.
        self.dma_errors = 0
        #: Frames received with no free RX descriptor (or RX disabled).
        self.rx_dropped = 0
        self.regs: dict[int, int] = {}
        self._tx_frame = bytearray()
        self._reset_registers()

    # -- reset (igb_reset) -----------------------------------------------------------
    def _reset_registers(self, link: bool = True) -> None:
        mac = self.mac_address
        #: The PHY's MII registers (BMCR, BMSR), reached through MDIC.
        self.phy = {MII_BMCR: BMCR_AUTOEN,
                    MII_BMSR: 0x7949 | (BMSR_LSTATUS | BMSR_ANEGCOMPLETE if link else 0)}
        self.regs = {
            CTRL: 0,
            STATUS: STATUS_FD | STATUS_SPEED_1000 | (STATUS_LU if link else 0),
            EECD: EECD_PRES | EECD_AUTO_RD,
            # queue 0 is enabled at power-on (82576 datasheet, RXDCTL/TXDCTL)
            RX_BASE + Q_DCTL: DCTL_ENABLE | 1 << 16,
            TX_BASE + Q_DCTL: DCTL_ENABLE,
            RA: int.from_bytes(mac[0:4], "little"),
            RA + 4: int.from_bytes(mac[4:6], "little") | RAH_AV,
        }
        self._tx_frame = bytearray()

    def device_reset(self) -> None:
        """A function reset (FLR, bus reset) is a full reset of the MAC."""
        self._reset_registers()
        self.set_intx(False)

    def _reg(self, offset: int) -> int:
        return self.regs.get(offset, 0)

    # -- BAR0 (igb_core_read / igb_core_write) --------------------------------------
    def _mmio_read(self, offset: int, width: int) -> int:
        if width == 8:
            return self._mmio_read(offset, 4) | self._mmio_read(offset + 4, 4) << 32
        aligned = offset & ~3
        value = self._read32(aligned)
        return (value >> (8 * (offset - aligned))) & ((1 << (8 * width)) - 1)

    def _mmio_write(self, offset: int, width: int, value: int) -> None:
        if width == 8:
            self._mmio_write(offset, 4, value & _U32)
            self._mmio_write(offset + 4, 4, value >> 32)
            return
        if width != 4 or offset % 4:
            return
        self._write32(offset, value & _U32)

    def _read32(self, offset: int) -> int:
        offset = _canonical(offset)
        if offset == ICR:
            # igb_mac_icr_read: the causes clear when read
            value = self._reg(ICR)
            self._lower(ICR, _U32)
            return value
        if offset == EICR:
            value = self._reg(EICR)
            self._lower(EICR, _U32)
            return value
        if offset in (ICS, IMC, EICS, EIMC):
            return 0  # write-only
        if offset in _STATS:
            value = self._reg(offset)
            self.regs[offset] = 0
            return value
        return self._reg(offset)

    def _write32(self, offset: int, value: int) -> None:
        offset = _canonical(offset)
        if offset == CTRL:
            # igb_set_ctrl: RST self-clears and resets the MAC
            self.regs[CTRL] = value & ~CTRL_RST
            if value & CTRL_RST:
                # as QEMU's igb: the link stays down after a software reset
                # until the driver restarts auto-negotiation (MDIC, BMCR)
                self._reset_registers(link=False)
                self.set_intx(False)
        elif offset in (STATUS, EECD) or offset in _STATS:
            return  # read-only here
        elif offset == EERD:
            self.regs[EERD] = self._eeprom_read(value)
        elif offset == MDIC:
            self.regs[MDIC] = self._mdic(value)
        elif offset == ICR:
            self._lower(ICR, value)
        elif offset == ICS:
            self._raise(ICR, value)
        elif offset == IMS:
            self._raise(IMS, value)
        elif offset == IMC:
            self._lower(IMS, value)
        elif offset == EICR:
            self._lower(EICR, value)  # write 1 to clear
        elif offset == EICS:
            self._raise(EICR, value & self._eicr_mask())
        elif offset == EIMS:
            self._raise(EIMS, value & self._eicr_mask())
        elif offset == EIMC:
            self._lower(EIMS, value & self._eicr_mask())
        elif RX_BASE <= offset < RX_BASE + 16 * QUEUE_STRIDE or TX_BASE <= offset < TX_BASE + 16 * QUEUE_STRIDE:
            self._write_queue(offset, value)
        else:
            self.regs[offset] = value
            if offset in (TCTL,):
                self._start_xmit()

    def _eeprom_read(self, value: int) -> int:
        """EERD: word address in bits 2-15, START in bit 0; the data come
        back in bits 16-31 with DONE."""
        if not value & EERD_START:
            return value & ~EERD_DONE
        address = (value >> 2) & 0x3FFF
        word = int.from_bytes(self.mac_address[2 * address:2 * address + 2], "little") if address < 3 else 0
        return (word << 16) | (address << 2) | EERD_DONE

    def _mdic(self, value: int) -> int:
        """igb_set_mdic: one PHY register access; PHY address 1 only.
        BMCR with ANRESTART and AUTOEN completes auto-negotiation at once
        (QEMU: after its 500 ms autoneg timer) and brings the link up."""
        register = (value >> MDIC_REG_SHIFT) & 0x1F
        data = value & 0xFFFF
        if (value >> MDIC_PHY_SHIFT) & 0x1F != PHY_ADDRESS:
            return self._reg(MDIC) | MDIC_ERROR | MDIC_READY
        if value & MDIC_OP_READ:
            if register not in self.phy:
                return value | MDIC_ERROR | MDIC_READY
            return (value & ~0xFFFF) | self.phy[register] | MDIC_READY
        if value & MDIC_OP_WRITE:
            if register != MII_BMCR:
                return value | MDIC_ERROR | MDIC_READY
            self.phy[MII_BMCR] = data & ~(BMCR_ANRESTART | 0x3F | 1 << 15)
            if data & BMCR_ANRESTART and data & BMCR_AUTOEN:
                self.phy[MII_BMSR] |= BMSR_LSTATUS | BMSR_ANEGCOMPLETE
                self.regs[STATUS] = self._reg(STATUS) | STATUS_LU
        return value | MDIC_READY

    def _write_queue(self, offset: int, value: int) -> None:
        reg = (offset - RX_BASE if offset < TX_BASE else offset - TX_BASE) % QUEUE_STRIDE
        if reg in (Q_DBAL,):
            value &= ~0xF  # 16-byte aligned rings
        elif reg == Q_DLEN:
            value &= 0xFFF80  # multiples of 128 bytes
        elif reg in (Q_DH, Q_DT):
            value &= 0xFFFF
        self.regs[offset] = value
        if offset >= TX_BASE and reg in (Q_DT, Q_DCTL):
            self._start_xmit()

    # -- interrupts (igb_raise_interrupts / igb_lower_interrupts) --------------------
    def _eicr_mask(self) -> int:
        return EICR_MSIX_MASK if self._reg(GPIE) & GPIE_MSIX_MODE else EICR_LEGACY_MASK

    def _raise(self, index: int, causes: int) -> None:
        old = self._reg(ICR) & self._reg(IMS)
        old_ext = self._reg(EICR) & self._reg(EIMS)
        self.regs[index] = self._reg(index) | causes
        if self._reg(GPIE) & GPIE_MSIX_MODE:
            raised = self._reg(ICR) & self._reg(IMS) & ~old
            misc = self._reg(IVAR_MISC)
            if raised & ICR_DRSTA and misc & IVAR_VALID:
                self.regs[EICR] = self._reg(EICR) | 1 << (misc & 0x1F)
            if raised & ~ICR_DRSTA and (misc >> 8) & IVAR_VALID:
                self.regs[EICR] = self._reg(EICR) | 1 << ((misc >> 8) & 0x1F)
            raised_ext = self._reg(EICR) & self._reg(EIMS) & ~old_ext
            for vector in range(MSIX_VECTORS):
                if raised_ext & (1 << vector):
                    self._msix_notify(vector)
            return
        # legacy and MSI: ICR bit 31 says an interrupt is asserted
        icr = self._reg(ICR) & ~ICR_ASSERTED
        self.regs[ICR] = icr | ICR_ASSERTED if icr else icr
        raised = self._reg(ICR) & self._reg(IMS) & ~old
        if not raised:
            return
        self.regs[EICR] = self._reg(EICR) | (raised & ICR_DRSTA) | EICR_OTHER
        if self.msix_enabled:
            self.raise_irq(IRQ_MSIX, 0)
        elif self.msi_enabled:
            self.raise_irq(IRQ_MSI, 0)
        else:
            self.set_intx(True)

    def _msix_notify(self, vector: int) -> None:
        """igb_msix_notify: send the vector, then clear its EICR bit if
        EIAC auto-clears it."""
        self.raise_irq(IRQ_MSIX, vector)
        self.regs[EICR] = self._reg(EICR) & ~(self._reg(EIAC) & (1 << vector))

    def _lower(self, index: int, causes: int) -> None:
        self.regs[index] = self._reg(index) & ~causes
        if index == ICR and not self._reg(ICR) & ~ICR_ASSERTED:
            self.regs[ICR] = 0
        if not self._reg(ICR) & self._reg(IMS) and not self._reg(GPIE) & GPIE_MSIX_MODE:
            self.regs[EICR] = self._reg(EICR) & ~EICR_OTHER
            if not self.msix_enabled and not self.msi_enabled:
                self.set_intx(False)

    def _queue_vector_bit(self, tx: bool) -> int:
        """The EICR bit IVAR0 assigns to queue 0's RX (byte 0) or TX (byte 1)
        cause (igb_rx_wb_eic / igb_tx_wb_eic)."""
        entry = (self._reg(IVAR0) >> (8 if tx else 0)) & 0xFF
        return 1 << (entry & 0x1F) if entry & IVAR_VALID else 0

    # -- transmit (igb_start_xmit / igb_process_tx_desc) -----------------------------
    def _ring(self, base: int) -> tuple[int, int, int, int]:
        address = self._reg(base + Q_DBAH) << 32 | self._reg(base + Q_DBAL)
        count = self._reg(base + Q_DLEN) // DESC_LEN
        return address, count, self._reg(base + Q_DH), self._reg(base + Q_DT)

    def _start_xmit(self) -> None:
        if not self._reg(TCTL) & TCTL_EN or not self._reg(TX_BASE + Q_DCTL) & DCTL_ENABLE:
            return
        eic = 0
        while True:
            address, count, head, tail = self._ring(TX_BASE)
            if head == tail or tail >= count:  # igb_ring_empty
                break
            slot = address + head * DESC_LEN
            try:
                desc = bytearray(self.dma_read(slot, DESC_LEN))
            except DMA_ERRORS:
                self.dma_errors += 1
                break
            if not self._tx_descriptor(desc):
                break
            self.regs[TX_BASE + Q_DH] = (head + 1) % count
            cmd = int.from_bytes(desc[8:12], "little")
            if cmd & TXD_RS:
                status = int.from_bytes(desc[12:16], "little") | TXD_STAT_DD
                desc[12:16] = status.to_bytes(4, "little")
                try:
                    self.dma_write(slot + 8, bytes(desc[8:16]))
                except DMA_ERRORS:
                    self.dma_errors += 1
                eic |= self._queue_vector_bit(tx=True)
        if eic:
            self._raise(EICR, eic)
            self._raise(ICR, ICR_TXDW)

    def _tx_descriptor(self, desc: bytearray) -> bool:
        """One descriptor; False when its buffer could not be read."""
        cmd = int.from_bytes(desc[8:12], "little")
        if cmd & TXD_DEXT and (cmd & TXD_DTYP_MASK) == TXD_DTYP_CTXT:
            return True  # offload context: no data
        if cmd & TXD_DEXT and (cmd & TXD_DTYP_MASK) != TXD_DTYP_DATA:
            return True  # unknown type: skipped
        buffer = int.from_bytes(desc[0:8], "little")
        length = cmd & 0xFFFF
        if length:
            try:
                self._tx_frame += self.dma_read(buffer, length)
            except DMA_ERRORS:
                self.dma_errors += 1
                return False
        if cmd & TXD_EOP:
            frame = bytes(self._tx_frame)
            self._tx_frame = bytearray()
            if len(frame) >= 14:
                self._count(GPTC, GOTCL, TPT, len(frame) + FCS_LEN)
                if self._reg(RCTL) & RCTL_LBM_MASK == RCTL_LBM_MAC:
                    self.receive(frame)
                else:
                    self.wire.append(frame)
        return True

    def _count(self, packets: int, octets: int, total: int, size: int) -> None:
        self.regs[packets] = min(self._reg(packets) + 1, _U32)
        self.regs[total] = min(self._reg(total) + 1, _U32)
        octets64 = (self._reg(octets + 4) << 32 | self._reg(octets)) + size
        self.regs[octets] = octets64 & _U32
        self.regs[octets + 4] = (octets64 >> 32) & _U32

    # -- receive (igb_receive_internal / igb_write_packet_to_guest) ------------------
    def inject(self, frame: bytes) -> bool:
        """A frame arrives from the wire; returns whether it was written to
        RX queue 0."""
        return self.receive(frame)

    def _accepted(self, frame: bytes) -> bool:
        """e1000x_rx_group_filter: promiscuous modes, broadcast, receive
        addresses."""
        rctl = self._reg(RCTL)
        dest = frame[:6]
        if rctl & RCTL_UPE and not dest[0] & 1:
            return True
        if dest == b"\xff" * 6:
            return bool(rctl & (RCTL_BAM | RCTL_MPE))
        if dest[0] & 1:
            return bool(rctl & RCTL_MPE)
        for n in range(16):
            high = self._reg(RA + 8 * n + 4)
            if high & RAH_AV:
                address = self._reg(RA + 8 * n).to_bytes(4, "little") + (high & 0xFFFF).to_bytes(2, "little")
                if address == dest:
                    return True
        return False

    def _buffer_size(self) -> int:
        packet_kib = self._reg(RX_BASE + Q_SRRCTL) & 0x7F
        if packet_kib:
            return packet_kib << 10
        return 2048 >> ((self._reg(RCTL) >> 16) & 3)

    def receive(self, frame: bytes) -> bool:
        """Receive ``frame`` on RX queue 0 (loopback or :meth:`inject`)."""
        if not self._reg(RCTL) & RCTL_EN or not self._reg(STATUS) & STATUS_LU:
            return False
        frame = bytes(frame).ljust(ETH_ZLEN, b"\0")
        if not self._accepted(frame):
            return False
        if not self._reg(RX_BASE + Q_DCTL) & DCTL_ENABLE:
            return False
        address, count, head, tail = self._ring(RX_BASE)
        fcs = 0 if self._reg(RCTL) & RCTL_SECRC else FCS_LEN
        total = len(frame) + fcs
        bufsize = self._buffer_size()
        free = (tail - head) % count if count else 0
        if not count or tail >= count or total > free * bufsize:
            self.rx_dropped += 1
            self._raise(ICR, ICR_RXO)
            return False
        data = frame + bytes(fcs)
        done = 0
        while done < total:
            chunk = data[done:done + bufsize]
            slot = address + head * DESC_LEN
            last = done + len(chunk) >= total
            try:
                buffer = int.from_bytes(self.dma_read(slot, 8), "little")
                if buffer:
                    self.dma_write(buffer, chunk)
                status = RXD_STAT_DD | (RXD_STAT_EOP if last else 0)
                # the descriptor first, its DD bit last (igb_pci_dma_write_rx_desc)
                self.dma_write(slot, bytes(8) + (status & ~RXD_STAT_DD).to_bytes(4, "little")
                               + len(chunk).to_bytes(2, "little") + bytes(2))
                self.dma_write(slot + 8, status.to_bytes(4, "little"))
            except DMA_ERRORS:
                self.dma_errors += 1
                self.regs[RX_BASE + Q_DH] = head
                return False
            done += len(chunk)
            head = (head + 1) % count
            self.regs[RX_BASE + Q_DH] = head
        self._count(GPRC, GORCL, TPR, len(frame) + FCS_LEN)
        eic = self._queue_vector_bit(tx=False)
        if eic:
            self._raise(EICR, eic)
        self._raise(ICR, ICR_RXDW)
        return True
