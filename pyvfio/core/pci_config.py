"""PCI configuration space through vfio's config region.

``device.config`` is a :class:`PciConfig`: typed header fields, the
capability and extended-capability lists, typed views of the common
capabilities, and the Command register helpers a driver needs first::

    cfg = device.config
    print(hex(cfg.vendor_id), hex(cfg.device_id), cfg.capabilities())
    cfg.enable(memory=True, bus_master=True)     # before MMIO and DMA
    msix = cfg.msix                               # MsixCapability or None
    print(msix.table_size, msix.table_bar, hex(msix.table_offset))

Every access is one ``pread``/``pwrite`` of exactly the register's width
on the config region, which vfio-pci turns into one config access.

vfio-pci does not pass config space through unchanged
(``drivers/vfio/pci/vfio_pci_config.c``); what a driver sees:

* Command: I/O, Memory and Bus Master go to the device; INTx Disable is
  virtualised (vfio owns INTx masking).  Status is read-only except its
  write-1-to-clear error bits.
* BARs and the ROM BAR are virtualised: sizing them (write all-ones, read
  back) works, but the value is not the host's bus address.
* MSI and MSI-X control (enable, vector counts) is virtualised: enabling
  MSI in config space does nothing -- use ``device.irqs`` (:mod:`pyvfio.core.irq`).
* Capabilities vfio does not know are hidden from the list; a hidden first
  extended capability leaves a placeholder with ID 0 that the walk skips.
* Writing Initiate FLR in the Express Device Control register makes vfio
  reset the function; power-state writes go through vfio's PM handling.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import InvalidArgumentError
from .registers import Field, Register, RegisterBlock, RegisterIO

if TYPE_CHECKING:
    from .region import Region

__all__ = [
    "PciCap",
    "PciExtCap",
    "PCI_HEADER",
    "COMMAND_IO",
    "COMMAND_MEMORY",
    "COMMAND_MASTER",
    "COMMAND_INTX_DISABLE",
    "PciCapability",
    "PciConfig",
    "CapabilityView",
    "MsiCapability",
    "MsixCapability",
    "PcieCapability",
    "PmCapability",
    "AerCapability",
    "SriovCapability",
]

COMMAND_IO = 0x1  #: PCI_COMMAND_IO: I/O space decode
COMMAND_MEMORY = 0x2  #: PCI_COMMAND_MEMORY: memory space decode
COMMAND_MASTER = 0x4  #: PCI_COMMAND_MASTER: Bus Master Enable (DMA, MSI)
COMMAND_INTX_DISABLE = 0x400  #: PCI_COMMAND_INTX_DISABLE

PCI_STATUS_CAP_LIST = 0x10
PCI_CAPABILITY_LIST = 0x34
PCI_CFG_SPACE_SIZE = 256


class PciCap(enum.IntEnum):
    """Standard capability IDs (``PCI_CAP_ID_*``).

    Thread safety: a constant; safe to share.
    """

    PM = 0x01
    AGP = 0x02
    VPD = 0x03
    SLOTID = 0x04
    MSI = 0x05
    CHSWP = 0x06
    PCIX = 0x07
    HT = 0x08
    VNDR = 0x09
    DBG = 0x0A
    CCRC = 0x0B
    SHPC = 0x0C
    SSVID = 0x0D
    AGP3 = 0x0E
    SECDEV = 0x0F
    EXP = 0x10
    MSIX = 0x11
    SATA = 0x12
    AF = 0x13
    EA = 0x14


class PciExtCap(enum.IntEnum):
    """Extended capability IDs (``PCI_EXT_CAP_ID_*``).

    Thread safety: a constant; safe to share.
    """

    ERR = 0x01
    VC = 0x02
    DSN = 0x03
    PWR = 0x04
    RCLD = 0x05
    RCILC = 0x06
    RCEC = 0x07
    MFVC = 0x08
    VC9 = 0x09
    RCRB = 0x0A
    VNDR = 0x0B
    CAC = 0x0C
    ACS = 0x0D
    ARI = 0x0E
    ATS = 0x0F
    SRIOV = 0x10
    MRIOV = 0x11
    MCAST = 0x12
    PRI = 0x13
    AMD_XXX = 0x14
    REBAR = 0x15
    DPA = 0x16
    TPH = 0x17
    LTR = 0x18
    SECPCI = 0x19
    PMUX = 0x1A
    PASID = 0x1B
    LNR = 0x1C
    DPC = 0x1D
    L1SS = 0x1E
    PTM = 0x1F
    DVSEC = 0x23
    DLF = 0x25
    PL_16GT = 0x26
    NPEM = 0x29
    PL_32GT = 0x2A
    DOE = 0x2E
    IDE = 0x30


#: The type-0 header (``include/uapi/linux/pci_regs.h``).
PCI_HEADER = RegisterBlock("PCI header", [
    Register("VENDOR_ID", 0x00, 2, access="ro"),
    Register("DEVICE_ID", 0x02, 2, access="ro"),
    Register("COMMAND", 0x04, 2, fields=(
        Field("IO", 0), Field("MEMORY", 1), Field("MASTER", 2), Field("SPECIAL", 3),
        Field("INVALIDATE", 4), Field("VGA_PALETTE", 5), Field("PARITY", 6), Field("WAIT", 7),
        Field("SERR", 8), Field("FAST_BACK", 9), Field("INTX_DISABLE", 10))),
    Register("STATUS", 0x06, 2, fields=(
        Field("IMM_READY", 0, access="ro"), Field("INTERRUPT", 3, access="ro"),
        Field("CAP_LIST", 4, access="ro"), Field("66MHZ", 5, access="ro"),
        Field("FAST_BACK", 7, access="ro"), Field("PARITY", 8), Field("DEVSEL", 9, 2, "ro"),
        Field("SIG_TARGET_ABORT", 11), Field("REC_TARGET_ABORT", 12),
        Field("REC_MASTER_ABORT", 13), Field("SIG_SYSTEM_ERROR", 14),
        Field("DETECTED_PARITY", 15))),
    Register("REVISION_ID", 0x08, 1, access="ro"),
    Register("CLASS_PROG", 0x09, 1, access="ro"),
    Register("CLASS_DEVICE", 0x0A, 2, access="ro"),
    Register("CACHE_LINE_SIZE", 0x0C, 1),
    Register("LATENCY_TIMER", 0x0D, 1),
    Register("HEADER_TYPE", 0x0E, 1, access="ro", fields=(
        Field("LAYOUT", 0, 7, "ro"), Field("MULTI_FUNCTION", 7, 1, "ro"))),
    Register("BIST", 0x0F, 1),
    *(Register(f"BAR{i}", 0x10 + 4 * i, 4) for i in range(6)),
    Register("CARDBUS_CIS", 0x28, 4, access="ro"),
    Register("SUBSYSTEM_VENDOR_ID", 0x2C, 2, access="ro"),
    Register("SUBSYSTEM_ID", 0x2E, 2, access="ro"),
    Register("ROM_ADDRESS", 0x30, 4),
    Register("CAPABILITY_LIST", 0x34, 1, access="ro"),
    Register("INTERRUPT_LINE", 0x3C, 1),
    Register("INTERRUPT_PIN", 0x3D, 1, access="ro"),
    Register("MIN_GNT", 0x3E, 1, access="ro"),
    Register("MAX_LAT", 0x3F, 1, access="ro"),
], size=0x40, doc="PCI type-0 configuration header")


@dataclass(frozen=True)
class PciCapability:
    """A capability found in the list: its ID and byte offset in config
    space (``version`` for extended capabilities, 0 otherwise).

    Thread safety: immutable; safe to share between threads.
    """

    id: int  #: the capability ID (PCI_CAP_ID_* or PCI_EXT_CAP_ID_*)
    offset: int  #: bytes from the start of config space
    extended: bool = False  #: an extended (PCIe, offset >= 0x100) capability
    version: int = 0  #: the extended capability's version (0 for standard ones)

    @property
    def name(self) -> str:
        """``"MSI"``, ``"EXP"``, ``"ERR"`` ... or ``"0x.."`` when unknown."""
        enum_type: type[enum.IntEnum] = PciExtCap if self.extended else PciCap
        try:
            return enum_type(self.id).name
        except ValueError:
            return f"{self.id:#x}"

    def __str__(self) -> str:
        return f"{self.name}@{self.offset:#x}"


class PciConfig(RegisterIO):
    """A device's configuration space (the vfio ``CONFIG`` region).

    Offsets are bytes from the start of config space; :attr:`size` is 256
    (conventional PCI) or 4096 (PCI Express).

    Thread safety: keeps no state of its own besides the region: every
    access is a ``pread``/``pwrite`` the kernel serialises. A
    read-modify-write of a register is not atomic: serialise those in the
    driver.
    """

    def __init__(self, region: Region) -> None:
        self.region = region  #: the CONFIG region
        self.size = region.size  #: bytes: 256, or 4096 with PCI Express extended space
        #: The type-0 header registers by name (``cfg.header.COMMAND.read()``).
        self.header = PCI_HEADER.bind(self)

    def describe(self) -> str:
        """``"device 0000:00:02.0 CONFIG"``."""
        return self.region.describe()

    def __repr__(self) -> str:
        return f"<PciConfig of {self.region.device.describe()} ({self.size} bytes)>"

    def _read(self, offset: int, width: int) -> int:
        return self.region._read(offset, width)

    def _write(self, offset: int, width: int, value: int) -> None:
        self.region._write(offset, width, value)

    # -- header fields ------------------------------------------------------------------------
    @property
    def vendor_id(self) -> int:
        """Vendor ID."""
        return self.read16(0x00)

    @property
    def device_id(self) -> int:
        """Device ID."""
        return self.read16(0x02)

    @property
    def command(self) -> int:
        """The Command register."""
        return self.read16(0x04)

    @command.setter
    def command(self, value: int) -> None:
        self.write16(0x04, value)

    @property
    def status(self) -> int:
        """The Status register."""
        return self.read16(0x06)

    @property
    def revision(self) -> int:
        """Revision ID."""
        return self.read8(0x08)

    @property
    def class_code(self) -> int:
        """24-bit class code (base class, sub-class, programming interface)."""
        return (self.read16(0x0A) << 8) | self.read8(0x09)

    @property
    def header_type(self) -> int:
        """Header layout (0 for endpoints), without the multi-function bit."""
        return self.read8(0x0E) & 0x7F

    @property
    def multi_function(self) -> bool:
        """The multi-function bit of the header type."""
        return bool(self.read8(0x0E) & 0x80)

    @property
    def subsystem_vendor_id(self) -> int:
        """Subsystem vendor ID."""
        return self.read16(0x2C)

    @property
    def subsystem_id(self) -> int:
        """Subsystem ID."""
        return self.read16(0x2E)

    @property
    def interrupt_pin(self) -> int:
        """INTx pin: 0 none, 1 INTA ... 4 INTD."""
        return self.read8(0x3D)

    @property
    def interrupt_line(self) -> int:
        """Interrupt Line (scratch byte for software)."""
        return self.read8(0x3C)

    def bar(self, index: int) -> int:
        """The (virtualised) 32-bit BAR register ``index`` (0-5)."""
        if not 0 <= index <= 5:
            raise InvalidArgumentError(f"BAR index {index} is not 0-5", target=self.describe())
        return self.read32(0x10 + 4 * index)

    # -- Command register ---------------------------------------------------------------------
    def update_command(self, set_bits: int = 0, clear_bits: int = 0) -> int:
        """One 2-byte read and one 2-byte write of Command: set ``set_bits``,
        clear ``clear_bits``; returns the value written."""
        value = (self.command | set_bits) & ~clear_bits & 0xFFFF
        self.command = value
        return value

    def enable(self, *, memory: bool | None = None, io: bool | None = None,
               bus_master: bool | None = None) -> int:
        """Turn decoders and bus mastering on (True) or off (False); None
        leaves a bit as it is.  Returns the Command value written."""
        set_bits = clear_bits = 0
        for flag, bit in ((memory, COMMAND_MEMORY), (io, COMMAND_IO),
                          (bus_master, COMMAND_MASTER)):
            if flag is True:
                set_bits |= bit
            elif flag is False:
                clear_bits |= bit
        return self.update_command(set_bits, clear_bits)

    def enable_memory(self, on: bool = True) -> None:
        """Memory Space decode (needed for BAR access, mmapped or not)."""
        self.enable(memory=on)

    def enable_io(self, on: bool = True) -> None:
        """I/O Space decode."""
        self.enable(io=on)

    def enable_bus_master(self, on: bool = True) -> None:
        """Bus Master Enable: without it the device cannot DMA (nor send MSIs)."""
        self.enable(bus_master=on)

    def disable_bus_master(self) -> None:
        """Clear Bus Master Enable: the device stops issuing DMA."""
        self.enable(bus_master=False)

    @property
    def memory_enabled(self) -> bool:
        """Memory Space decode is on."""
        return bool(self.command & COMMAND_MEMORY)

    @property
    def bus_master_enabled(self) -> bool:
        """Bus Master Enable is set."""
        return bool(self.command & COMMAND_MASTER)

    # -- capability lists -----------------------------------------------------------------------
    def capabilities(self) -> list[PciCapability]:
        """The standard capability list, in chain order (a looping or
        out-of-range chain ends the walk)."""
        out: list[PciCapability] = []
        if not self.status & PCI_STATUS_CAP_LIST:
            return out
        pos = self.read8(PCI_CAPABILITY_LIST) & 0xFC
        seen: set[int] = set()
        while 0x40 <= pos < min(self.size, PCI_CFG_SPACE_SIZE) and pos not in seen \
                and len(out) < 48:
            seen.add(pos)
            header = self.read16(pos)
            out.append(PciCapability(header & 0xFF, pos))
            pos = (header >> 8) & 0xFC
        return out

    def extended_capabilities(self) -> list[PciCapability]:
        """The PCI Express extended capability list (empty for 256-byte
        config spaces); vfio's ID-0 placeholder for a hidden first
        capability is skipped."""
        out: list[PciCapability] = []
        if self.size <= PCI_CFG_SPACE_SIZE:
            return out
        pos = PCI_CFG_SPACE_SIZE
        seen: set[int] = set()
        while PCI_CFG_SPACE_SIZE <= pos < self.size and pos not in seen and len(seen) < 960:
            seen.add(pos)
            header = self.read32(pos)
            if header in (0, 0xFFFFFFFF):
                break
            cap_id = header & 0xFFFF
            if cap_id:
                out.append(PciCapability(cap_id, pos, True, (header >> 16) & 0xF))
            pos = (header >> 20) & 0xFFC
        return out

    def find_capability(self, cap_id: int) -> int | None:
        """Offset of the first standard capability ``cap_id``, or None."""
        return next((c.offset for c in self.capabilities() if c.id == cap_id), None)

    def find_extended_capability(self, cap_id: int) -> int | None:
        """Offset of the first extended capability ``cap_id``, or None."""
        return next((c.offset for c in self.extended_capabilities() if c.id == cap_id), None)

    # -- typed views ----------------------------------------------------------------------------
    @property
    def msi(self) -> MsiCapability | None:
        """The MSI capability, or None."""
        pos = self.find_capability(PciCap.MSI)
        return None if pos is None else MsiCapability(self, pos)

    @property
    def msix(self) -> MsixCapability | None:
        """The MSI-X capability, or None."""
        pos = self.find_capability(PciCap.MSIX)
        return None if pos is None else MsixCapability(self, pos)

    @property
    def pcie(self) -> PcieCapability | None:
        """The PCI Express capability, or None (conventional PCI)."""
        pos = self.find_capability(PciCap.EXP)
        return None if pos is None else PcieCapability(self, pos)

    @property
    def pm(self) -> PmCapability | None:
        """The Power Management capability, or None."""
        pos = self.find_capability(PciCap.PM)
        return None if pos is None else PmCapability(self, pos)

    @property
    def aer(self) -> AerCapability | None:
        """The Advanced Error Reporting extended capability, or None."""
        pos = self.find_extended_capability(PciExtCap.ERR)
        return None if pos is None else AerCapability(self, pos)

    @property
    def sriov(self) -> SriovCapability | None:
        """The SR-IOV extended capability, or None."""
        pos = self.find_extended_capability(PciExtCap.SRIOV)
        return None if pos is None else SriovCapability(self, pos)


class CapabilityView:
    """Registers of one capability at :attr:`offset`; offsets of the
    accessors are relative to it.

    Thread safety: keeps no state of its own: accesses go to the config
    space (see :class:`PciConfig`).
    """

    #: Capability name for messages.
    name = "capability"

    def __init__(self, config: PciConfig, offset: int) -> None:
        self.config = config  #: the config space
        self.offset = offset  #: byte offset of the capability header

    def __repr__(self) -> str:
        return f"<{type(self).__name__} at {self.offset:#x}>"

    def read8(self, rel: int) -> int:
        """One 1-byte read at ``offset + rel``."""
        return self.config.read8(self.offset + rel)

    def read16(self, rel: int) -> int:
        """One 2-byte read at ``offset + rel``."""
        return self.config.read16(self.offset + rel)

    def read32(self, rel: int) -> int:
        """One 4-byte read at ``offset + rel``."""
        return self.config.read32(self.offset + rel)

    def write16(self, rel: int, value: int) -> None:
        """One 2-byte write at ``offset + rel``."""
        self.config.write16(self.offset + rel, value)

    def write32(self, rel: int, value: int) -> None:
        """One 4-byte write at ``offset + rel``."""
        self.config.write32(self.offset + rel, value)


class MsiCapability(CapabilityView):
    """MSI (vfio virtualises its control: read it, do not program it).

    Thread safety: keeps no state of its own: accesses go to the config
    space (see :class:`PciConfig`).
    """

    name = "MSI"

    @property
    def control(self) -> int:
        """Message Control."""
        return self.read16(2)

    @property
    def enabled(self) -> bool:
        """MSI Enable (as vfio presents it)."""
        return bool(self.control & 0x1)

    @property
    def vectors(self) -> int:
        """Multiple Message Capable, as a vector count."""
        return 1 << ((self.control >> 1) & 0x7)

    @property
    def enabled_vectors(self) -> int:
        """Multiple Message Enable, as a vector count."""
        return 1 << ((self.control >> 4) & 0x7)

    @property
    def is_64bit(self) -> bool:
        """64-bit message address capable."""
        return bool(self.control & 0x80)

    @property
    def per_vector_mask(self) -> bool:
        """Per-vector masking capable."""
        return bool(self.control & 0x100)


class MsixCapability(CapabilityView):
    """MSI-X: where the table and the Pending Bit Array are.

    Thread safety: keeps no state of its own: accesses go to the config
    space (see :class:`PciConfig`).
    """

    name = "MSI-X"

    @property
    def control(self) -> int:
        """Message Control."""
        return self.read16(2)

    @property
    def table_size(self) -> int:
        """Number of table entries (vectors)."""
        return (self.control & 0x7FF) + 1

    @property
    def enabled(self) -> bool:
        """MSI-X Enable (as vfio presents it)."""
        return bool(self.control & 0x8000)

    @property
    def function_masked(self) -> bool:
        """Function Mask."""
        return bool(self.control & 0x4000)

    @property
    def table_bar(self) -> int:
        """BAR index holding the table."""
        return self.read32(4) & 0x7

    @property
    def table_offset(self) -> int:
        """Byte offset of the table in its BAR."""
        return self.read32(4) & ~0x7

    @property
    def pba_bar(self) -> int:
        """BAR index holding the Pending Bit Array."""
        return self.read32(8) & 0x7

    @property
    def pba_offset(self) -> int:
        """Byte offset of the Pending Bit Array in its BAR."""
        return self.read32(8) & ~0x7


class PcieCapability(CapabilityView):
    """PCI Express capability.

    Thread safety: keeps no state of its own: accesses go to the config
    space (see :class:`PciConfig`).
    """

    name = "PCI Express"

    @property
    def flags(self) -> int:
        """PCI Express Capabilities register."""
        return self.read16(2)

    @property
    def version(self) -> int:
        """Capability version."""
        return self.flags & 0xF

    @property
    def port_type(self) -> int:
        """Device/port type (0 endpoint, 1 legacy endpoint, 9 RC integrated ...)."""
        return (self.flags >> 4) & 0xF

    @property
    def devcap(self) -> int:
        """Device Capabilities."""
        return self.read32(4)

    @property
    def flr(self) -> bool:
        """Function Level Reset capable."""
        return bool(self.devcap & 0x10000000)

    @property
    def max_payload(self) -> int:
        """Max Payload Size Supported, bytes."""
        return 128 << (self.devcap & 0x7)

    @property
    def devctl(self) -> int:
        """Device Control."""
        return self.read16(8)

    @property
    def devsta(self) -> int:
        """Device Status."""
        return self.read16(10)

    @property
    def link_capabilities(self) -> int:
        """Link Capabilities."""
        return self.read32(12)

    @property
    def link_status(self) -> int:
        """Link Status."""
        return self.read16(18)

    @property
    def link_speed(self) -> int:
        """Current link speed code (1 = 2.5 GT/s, 2 = 5 GT/s, ...)."""
        return self.link_status & 0xF

    @property
    def link_width(self) -> int:
        """Negotiated link width (lanes)."""
        return (self.link_status >> 4) & 0x3F

    @property
    def devcap2(self) -> int:
        """Device Capabilities 2."""
        return self.read32(0x24)


class PmCapability(CapabilityView):
    """Power Management capability.

    Thread safety: keeps no state of its own: accesses go to the config
    space (see :class:`PciConfig`).
    """

    name = "PM"

    @property
    def pmc(self) -> int:
        """Power Management Capabilities."""
        return self.read16(2)

    @property
    def control(self) -> int:
        """PMCSR: control and status."""
        return self.read16(4)

    @property
    def power_state(self) -> int:
        """Current D-state (0 = D0 ... 3 = D3hot)."""
        return self.control & 0x3

    @property
    def no_soft_reset(self) -> bool:
        """No_Soft_Reset: D3hot -> D0 keeps the function's state."""
        return bool(self.control & 0x8)


class AerCapability(CapabilityView):
    """Advanced Error Reporting (extended capability).

    Thread safety: keeps no state of its own: accesses go to the config
    space (see :class:`PciConfig`).
    """

    name = "AER"

    @property
    def uncorrectable_status(self) -> int:
        """Uncorrectable Error Status (write 1 to clear)."""
        return self.read32(4)

    @property
    def uncorrectable_mask(self) -> int:
        """Uncorrectable Error Mask."""
        return self.read32(8)

    @property
    def uncorrectable_severity(self) -> int:
        """Uncorrectable Error Severity."""
        return self.read32(12)

    @property
    def correctable_status(self) -> int:
        """Correctable Error Status (write 1 to clear)."""
        return self.read32(16)

    @property
    def correctable_mask(self) -> int:
        """Correctable Error Mask."""
        return self.read32(20)

    def clear_status(self) -> None:
        """Write-1-to-clear both status registers."""
        self.write32(4, self.uncorrectable_status)
        self.write32(16, self.correctable_status)


class SriovCapability(CapabilityView):
    """Single Root I/O Virtualization (extended capability).

    Thread safety: keeps no state of its own: accesses go to the config
    space (see :class:`PciConfig`).
    """

    name = "SR-IOV"

    @property
    def control(self) -> int:
        """SR-IOV Control."""
        return self.read16(8)

    @property
    def initial_vfs(self) -> int:
        """InitialVFs."""
        return self.read16(0x0C)

    @property
    def total_vfs(self) -> int:
        """TotalVFs."""
        return self.read16(0x0E)

    @property
    def num_vfs(self) -> int:
        """NumVFs."""
        return self.read16(0x10)

    @property
    def vf_offset(self) -> int:
        """First VF Offset (routing ID)."""
        return self.read16(0x14)

    @property
    def vf_stride(self) -> int:
        """VF Stride (routing ID)."""
        return self.read16(0x16)

    @property
    def vf_device_id(self) -> int:
        """VF Device ID."""
        return self.read16(0x1A)
