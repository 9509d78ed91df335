"""The configuration space of a device model: the registers' power-on
values with their writable and write-1-to-clear bits, the type-0 header,
the capability chains and how they are laid out (PM, MSI, MSI-X, PCI
Express, AER and any other), and config reads and writes as the bus
performs them.

:class:`ConfigSpace` is the base of :class:`~.pci.DeviceModel`, which
reacts to the registers a write changed (:meth:`ConfigSpace._config_changed`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .pci_regs import (
    PCI_BASE_ADDRESS_0,
    PCI_CACHE_LINE_SIZE,
    PCI_CAP_ID_EXP,
    PCI_CAP_ID_MSI,
    PCI_CAP_ID_MSIX,
    PCI_CAP_ID_PM,
    PCI_CAP_EXP_ENDPOINT_SIZEOF_V2,
    PCI_CAP_MSIX_SIZEOF,
    PCI_CAPABILITY_LIST,
    PCI_CFG_SPACE_EXP_SIZE,
    PCI_CFG_SPACE_SIZE,
    PCI_CLASS_PROG,
    PCI_COMMAND,
    PCI_COMMAND_INTX_DISABLE,
    PCI_COMMAND_IO,
    PCI_COMMAND_MASTER,
    PCI_COMMAND_MEMORY,
    PCI_COMMAND_PARITY,
    PCI_COMMAND_SERR,
    PCI_DEVICE_ID,
    PCI_ERR_COR_MASK,
    PCI_ERR_COR_STATUS,
    PCI_ERR_SIZEOF,
    PCI_ERR_UNCOR_MASK,
    PCI_ERR_UNCOR_SEVER,
    PCI_ERR_UNCOR_STATUS,
    PCI_EXP_DEVCAP,
    PCI_EXP_DEVCAP2,
    PCI_EXP_DEVCAP_FLR,
    PCI_EXP_DEVCTL,
    PCI_EXP_DEVCTL2,
    PCI_EXP_DEVCTL_BCR_FLR,
    PCI_EXP_DEVSTA,
    PCI_EXP_FLAGS,
    PCI_EXP_LNKCAP,
    PCI_EXP_LNKCAP2,
    PCI_EXP_LNKCTL,
    PCI_EXP_LNKCTL2,
    PCI_EXP_LNKSTA,
    PCI_EXP_TYPE_ENDPOINT,
    PCI_EXT_CAP_ID_ERR,
    PCI_HEADER_TYPE,
    PCI_INTERRUPT_LINE,
    PCI_INTERRUPT_PIN,
    PCI_LATENCY_TIMER,
    PCI_MSI_ADDRESS_HI,
    PCI_MSI_ADDRESS_LO,
    PCI_MSI_DATA_32,
    PCI_MSI_DATA_64,
    PCI_MSI_FLAGS,
    PCI_MSI_FLAGS_64BIT,
    PCI_MSI_FLAGS_ENABLE,
    PCI_MSI_FLAGS_MASKBIT,
    PCI_MSI_FLAGS_QSIZE,
    PCI_MSI_MASK_32,
    PCI_MSI_MASK_64,
    PCI_MSI_PENDING_32,
    PCI_MSI_PENDING_64,
    PCI_MSIX_ENTRY_CTRL_MASKBIT,
    PCI_MSIX_ENTRY_SIZE,
    PCI_MSIX_ENTRY_VECTOR_CTRL,
    PCI_MSIX_FLAGS,
    PCI_MSIX_FLAGS_ENABLE,
    PCI_MSIX_FLAGS_MASKALL,
    PCI_MSIX_PBA,
    PCI_MSIX_TABLE,
    PCI_PM_CTRL,
    PCI_PM_CTRL_NO_SOFT_RESET,
    PCI_PM_CTRL_PME_ENABLE,
    PCI_PM_CTRL_PME_STATUS,
    PCI_PM_CTRL_STATE_MASK,
    PCI_PM_PMC,
    PCI_PM_SIZEOF,
    PCI_REVISION_ID,
    PCI_STATUS,
    PCI_STATUS_CAP_LIST,
    PCI_STATUS_W1C,
    PCI_STD_HEADER_SIZEOF,
    PCI_SUBSYSTEM_ID,
    PCI_SUBSYSTEM_VENDOR_ID,
    PCI_VENDOR_ID,
)

if TYPE_CHECKING:
    from .pci import Bar

__all__ = ["MsiState", "MsixState", "ConfigSpace"]


@dataclass
class MsiState:
    """Where the MSI capability is and what it can do."""

    #: Config space offset of the capability (its ID byte).
    offset: int
    #: Multiple Message Capable, as a number of vectors (1, 2, 4, ... 32).
    vectors: int
    #: 64-bit Address Capable: the message address has a high dword.
    is64: bool
    #: Per-Vector Masking Capable: the Mask and Pending Bits registers exist.
    maskable: bool

    @property
    def control(self) -> int:
        """Config space offset of Message Control."""
        return self.offset + PCI_MSI_FLAGS

    @property
    def mask_offset(self) -> int:
        """Config space offset of the Mask Bits register (``maskable`` only)."""
        return self.offset + (PCI_MSI_MASK_64 if self.is64 else PCI_MSI_MASK_32)

    @property
    def pending_offset(self) -> int:
        """Config space offset of the Pending Bits register (``maskable`` only)."""
        return self.offset + (PCI_MSI_PENDING_64 if self.is64 else PCI_MSI_PENDING_32)


@dataclass
class MsixState:
    """The MSI-X capability, its table and its Pending Bit Array."""

    #: Config space offset of the capability (its ID byte).
    offset: int
    #: Table Size, as a number of vectors (1-2048).
    vectors: int
    #: BAR holding the vector table (the Table BIR).
    table_bar: int
    #: Byte offset of the vector table in ``table_bar``.
    table_offset: int
    #: BAR holding the Pending Bit Array (the PBA BIR).
    pba_bar: int
    #: Byte offset of the Pending Bit Array in ``pba_bar``.
    pba_offset: int
    #: The vector table: 16 bytes a vector (address, data, vector control).
    table: bytearray = field(default_factory=bytearray, repr=False)
    #: The Pending Bit Array: one bit a vector, in whole qwords.
    pba: bytearray = field(default_factory=bytearray, repr=False)

    @property
    def table_size(self) -> int:
        """Size of the vector table in bytes."""
        return self.vectors * PCI_MSIX_ENTRY_SIZE

    @property
    def pba_size(self) -> int:
        """Size of the Pending Bit Array in bytes (a multiple of 8)."""
        return ((self.vectors + 63) // 64) * 8

    def reset(self) -> None:
        """The state after a function reset: a zeroed table with every
        vector masked, nothing pending."""
        self.table = bytearray(self.table_size)
        for vector in range(self.vectors):  # every vector masked at reset
            self.table[vector * 16 + PCI_MSIX_ENTRY_VECTOR_CTRL] = PCI_MSIX_ENTRY_CTRL_MASKBIT
        self.pba = bytearray(self.pba_size)

    def vector_masked(self, vector: int) -> bool:
        """Whether the Mask bit of ``vector``'s Vector Control is set."""
        return bool(self.table[vector * 16 + PCI_MSIX_ENTRY_VECTOR_CTRL] & PCI_MSIX_ENTRY_CTRL_MASKBIT)

    def set_vector_masked(self, vector: int, masked: bool) -> None:
        """Set or clear the Mask bit of ``vector``'s Vector Control."""
        pos = vector * 16 + PCI_MSIX_ENTRY_VECTOR_CTRL
        if masked:
            self.table[pos] |= PCI_MSIX_ENTRY_CTRL_MASKBIT
        else:
            self.table[pos] &= ~PCI_MSIX_ENTRY_CTRL_MASKBIT & 0xFF

    def pending(self, vector: int) -> bool:
        """Whether ``vector``'s Pending bit is set."""
        return bool(self.pba[vector // 8] & (1 << (vector % 8)))

    def set_pending(self, vector: int, pending: bool) -> None:
        """Set or clear ``vector``'s Pending bit."""
        if pending:
            self.pba[vector // 8] |= 1 << (vector % 8)
        else:
            self.pba[vector // 8] &= ~(1 << (vector % 8)) & 0xFF



class ConfigSpace:
    """The config space of one device model and its layout.

    The subclass sets the identity (``vendor_id`` ... ``interrupt_pin``),
    ``pcie`` and ``bars`` before ``_init_config_space()`` builds the
    power-on image; capabilities are added after that.
    """

    if TYPE_CHECKING:  # set by the subclass (see DeviceModel)
        vendor_id: int
        device_id: int
        class_code: int
        subsystem_vendor_id: int
        subsystem_id: int
        revision: int
        pcie: bool
        interrupt_pin: int
        bars: dict[int, Bar]

    def _init_config_space(self) -> None:
        """The power-on image: an empty config space with the type-0 header
        and the BARs; no capabilities yet."""
        #: The MSI capability, once added.
        self.msi: MsiState | None = None
        #: The MSI-X capability, once added.
        self.msix: MsixState | None = None
        #: Offset of the Power Management capability, once added.
        self.pm_offset: int | None = None
        #: Offset of the PCI Express capability, once added.
        self.pcie_offset: int | None = None
        #: Offset of the AER extended capability, once added.
        self.aer_offset: int | None = None
        size = PCI_CFG_SPACE_EXP_SIZE if self.pcie else PCI_CFG_SPACE_SIZE
        self.config = bytearray(size)
        self.wmask = bytearray(size)  # bits software may write
        self.w1cmask = bytearray(size)  # bits that are write-1-to-clear
        self._power_on = bytearray(size)
        self._last_cap = 0  # offset of the last standard capability
        self._next_cap = PCI_STD_HEADER_SIZEOF
        self._last_ext_cap: int | None = None
        self._next_ext_cap = PCI_CFG_SPACE_SIZE
        self._build_header()

    @property
    def config_size(self) -> int:
        """Size of the config space in bytes: 4096 for PCI Express, else 256."""
        return len(self.config)


    # -- config space construction (the power-on image) ----------------------
    def init_config(self, offset: int, value: int, width: int, *, wmask: int = 0, w1c: int = 0) -> None:
        """Set a power-on register value and its writable / write-1-to-clear bits."""
        end = offset + width
        if offset < 0 or end > len(self.config):  # self.config_size
            raise ValueError(f"config offset {offset:#x} width {width} outside the config space")
        if width <= 0:
            return
        # little-endian, each value cut to ``width`` bytes
        mask = (1 << (8 * width)) - 1
        data = (value & mask).to_bytes(width, "little")
        self.config[offset:end] = data
        self._power_on[offset:end] = data
        self.wmask[offset:end] = (wmask & mask).to_bytes(width, "little")
        self.w1cmask[offset:end] = (w1c & mask).to_bytes(width, "little")

    def _build_header(self) -> None:
        self.init_config(PCI_VENDOR_ID, self.vendor_id, 2)
        self.init_config(PCI_DEVICE_ID, self.device_id, 2)
        command_w = (
            PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER | PCI_COMMAND_PARITY | PCI_COMMAND_SERR
            | PCI_COMMAND_INTX_DISABLE
        )
        if any(b.is_io for b in self.bars.values()):
            command_w |= PCI_COMMAND_IO
        self.init_config(PCI_COMMAND, 0, 2, wmask=command_w)
        self.init_config(PCI_STATUS, 0, 2, w1c=PCI_STATUS_W1C)
        self.init_config(PCI_REVISION_ID, self.revision, 1)
        self.init_config(PCI_CLASS_PROG, self.class_code, 3)
        self.init_config(PCI_CACHE_LINE_SIZE, 0, 1, wmask=0xFF)
        self.init_config(PCI_LATENCY_TIMER, 0, 1, wmask=0xFF)
        self.init_config(PCI_HEADER_TYPE, 0, 1)
        self.init_config(PCI_SUBSYSTEM_VENDOR_ID, self.subsystem_vendor_id, 2)
        self.init_config(PCI_SUBSYSTEM_ID, self.subsystem_id, 2)
        self.init_config(PCI_INTERRUPT_LINE, 0, 1, wmask=0xFF)
        self.init_config(PCI_INTERRUPT_PIN, self.interrupt_pin, 1)
        for bar in self.bars.values():
            self._init_bar(bar)

    def _init_bar(self, bar: Bar) -> None:
        reg = PCI_BASE_ADDRESS_0 + 4 * bar.index
        if bar.is_io:
            mask = ~(bar.size - 1) & 0xFFFFFFFC
            self.init_config(reg, bar.flag_bits | (bar.address & mask), 4, wmask=mask)
            return
        mask = ~(bar.size - 1) & 0xFFFFFFF0
        self.init_config(reg, bar.flag_bits | (bar.address & mask), 4, wmask=mask)
        if bar.is_64bit:
            high_mask = (~(bar.size - 1) >> 32) & 0xFFFFFFFF
            self.init_config(reg + 4, (bar.address >> 32) & high_mask, 4, wmask=high_mask)

    def set_bar_address(self, index: int, address: int) -> None:
        """Assign the host bus address of a BAR (the System does this; the
        address is part of the saved state restored after resets)."""
        bar = self.bars[index]
        bar.address = address
        self._init_bar(bar)

    def _alloc_cap(self, cap_id: int, size: int) -> int:
        offset = (self._next_cap + 3) & ~3
        if offset + size > PCI_CFG_SPACE_SIZE:
            raise ValueError("no room left for capabilities in the first 256 bytes")
        self._next_cap = offset + size
        self.init_config(offset, cap_id, 1)
        self.init_config(offset + 1, 0, 1)
        if self._last_cap:
            self.init_config(self._last_cap + 1, offset, 1)
        else:
            self.init_config(PCI_CAPABILITY_LIST, offset, 1)
            status = self.config_word(PCI_STATUS) | PCI_STATUS_CAP_LIST
            self.init_config(PCI_STATUS, status, 2, w1c=PCI_STATUS_W1C)
        self._last_cap = offset
        return offset

    def add_capability(self, cap_id: int, body: bytes, *, wmask: bytes | None = None) -> int:
        """Append a standard capability (``body`` starts after the ID and
        next-pointer bytes); returns its offset."""
        offset = self._alloc_cap(cap_id, 2 + len(body))
        for i, byte in enumerate(body):
            self.init_config(offset + 2 + i, byte, 1, wmask=wmask[i] if wmask else 0)
        return offset

    def add_pm_capability(self, *, no_soft_reset: bool = True) -> int:
        """Power Management capability (version 3, D0 and D3hot)."""
        offset = self._alloc_cap(PCI_CAP_ID_PM, PCI_PM_SIZEOF)
        self.init_config(offset + PCI_PM_PMC, 0x0003, 2)
        ctrl = PCI_PM_CTRL_NO_SOFT_RESET if no_soft_reset else 0
        self.init_config(offset + PCI_PM_CTRL, ctrl, 2, wmask=PCI_PM_CTRL_STATE_MASK | PCI_PM_CTRL_PME_ENABLE,
                         w1c=PCI_PM_CTRL_PME_STATUS)
        self.pm_offset = offset
        return offset

    def add_msi_capability(self, vectors: int = 1, *, is64: bool = True, per_vector_mask: bool = False) -> int:
        """MSI capability with ``vectors`` (1, 2, 4, ... 32) messages."""
        if vectors not in (1, 2, 4, 8, 16, 32):
            raise ValueError("MSI vectors must be a power of two up to 32")
        if self.msi is not None:
            raise ValueError("the model already has an MSI capability")
        size = 10 if not is64 else 14
        if per_vector_mask:
            size += 10
        size = (size + 3) & ~3
        offset = self._alloc_cap(PCI_CAP_ID_MSI, size)
        flags = (vectors.bit_length() - 1) << 1
        if is64:
            flags |= PCI_MSI_FLAGS_64BIT
        if per_vector_mask:
            flags |= PCI_MSI_FLAGS_MASKBIT
        self.init_config(offset + PCI_MSI_FLAGS, flags, 2, wmask=PCI_MSI_FLAGS_ENABLE | PCI_MSI_FLAGS_QSIZE)
        self.init_config(offset + PCI_MSI_ADDRESS_LO, 0, 4, wmask=0xFFFFFFFC)
        if is64:
            self.init_config(offset + PCI_MSI_ADDRESS_HI, 0, 4, wmask=0xFFFFFFFF)
        data = offset + (PCI_MSI_DATA_64 if is64 else PCI_MSI_DATA_32)
        self.init_config(data, 0, 2, wmask=0xFFFF)
        self.msi = MsiState(offset, vectors, is64, per_vector_mask)
        if per_vector_mask:
            self.init_config(self.msi.mask_offset, 0, 4, wmask=(1 << vectors) - 1 if vectors < 32 else 0xFFFFFFFF)
            self.init_config(self.msi.pending_offset, 0, 4)
        return offset

    def add_msix_capability(
        self, vectors: int, *, table_bar: int, table_offset: int, pba_bar: int | None = None,
        pba_offset: int | None = None,
    ) -> int:
        """MSI-X capability; the table and PBA live in (register) BARs and
        are served by the model."""
        if not 1 <= vectors <= 2048:
            raise ValueError("MSI-X supports 1-2048 vectors")
        if self.msix is not None:
            raise ValueError("the model already has an MSI-X capability")
        pba_bar = table_bar if pba_bar is None else pba_bar
        if pba_offset is None:
            pba_offset = (table_offset + vectors * PCI_MSIX_ENTRY_SIZE + 7) & ~7
        if table_offset % 8 or pba_offset % 8:
            raise ValueError("the MSI-X table and PBA must be 8-byte aligned")
        for bar_index, start, length in ((table_bar, table_offset, vectors * 16), (pba_bar, pba_offset, ((vectors + 63) // 64) * 8)):
            bar = self.bars.get(bar_index)
            if bar is None or bar.is_io:
                raise ValueError(f"MSI-X structures need memory BAR{bar_index}")
            if bar.ram:
                raise ValueError(f"MSI-X structures cannot live in RAM-backed BAR{bar_index}")
            if start + length > bar.size:
                raise ValueError(f"MSI-X structure at {start:#x} does not fit in BAR{bar_index}")
        offset = self._alloc_cap(PCI_CAP_ID_MSIX, PCI_CAP_MSIX_SIZEOF)
        self.init_config(offset + PCI_MSIX_FLAGS, vectors - 1, 2, wmask=PCI_MSIX_FLAGS_ENABLE | PCI_MSIX_FLAGS_MASKALL)
        self.init_config(offset + PCI_MSIX_TABLE, table_offset | table_bar, 4)
        self.init_config(offset + PCI_MSIX_PBA, pba_offset | pba_bar, 4)
        self.msix = MsixState(offset, vectors, table_bar, table_offset, pba_bar, pba_offset)
        self.msix.reset()
        return offset

    def add_pcie_capability(
        self, *, flr: bool = True, port_type: int = PCI_EXP_TYPE_ENDPOINT, max_payload: int = 256,
        atomic_completer: int = 0, link_speed: int = 1, link_width: int = 1,
    ) -> int:
        """PCI Express capability (version 2).  ``flr`` sets Function Level
        Reset Capability in DevCap; ``atomic_completer`` is a mask of
        ``PCI_EXP_DEVCAP2_ATOMIC_COMP*`` bits."""
        if not self.pcie:
            raise ValueError("a conventional PCI model cannot have an Express capability")
        offset = self._alloc_cap(PCI_CAP_ID_EXP, PCI_CAP_EXP_ENDPOINT_SIZEOF_V2)
        self.init_config(offset + PCI_EXP_FLAGS, 0x2 | (port_type << 4), 2)
        payload = {128: 0, 256: 1, 512: 2, 1024: 3, 2048: 4, 4096: 5}[max_payload]
        devcap = payload | (PCI_EXP_DEVCAP_FLR if flr else 0)
        self.init_config(offset + PCI_EXP_DEVCAP, devcap, 4)
        # DevCtl: error reporting enables, relaxed ordering, MPS, no snoop,
        # MRRS and (when capable) Initiate FLR are writable.
        devctl_w = 0x7FFF | (PCI_EXP_DEVCTL_BCR_FLR if flr else 0)
        self.init_config(offset + PCI_EXP_DEVCTL, 0x2810, 2, wmask=devctl_w)
        self.init_config(offset + PCI_EXP_DEVSTA, 0, 2, w1c=0x000F)
        self.init_config(offset + PCI_EXP_LNKCAP, link_speed | (link_width << 4), 4)
        self.init_config(offset + PCI_EXP_LNKCTL, 0, 2, wmask=0x01C3)
        self.init_config(offset + PCI_EXP_LNKSTA, link_speed | (link_width << 4), 2)
        self.init_config(offset + PCI_EXP_DEVCAP2, atomic_completer, 4)
        self.init_config(offset + PCI_EXP_DEVCTL2, 0, 2, wmask=0x0460)
        self.init_config(offset + PCI_EXP_LNKCAP2, (1 << link_speed) - 2 if link_speed else 0, 4)
        self.init_config(offset + PCI_EXP_LNKCTL2, link_speed, 2, wmask=0x000F)
        self.pcie_offset = offset
        return offset

    def add_extended_capability(self, cap_id: int, version: int, body: bytes, *, wmask: bytes | None = None,
                                w1c: bytes | None = None) -> int:
        """Append a PCIe extended capability (``body`` follows the 4-byte
        header); returns its offset."""
        if not self.pcie:
            raise ValueError("extended capabilities need PCI Express config space")
        offset = (self._next_ext_cap + 3) & ~3
        size = 4 + len(body)
        if offset + size > PCI_CFG_SPACE_EXP_SIZE:
            raise ValueError("no room left for extended capabilities")
        self._next_ext_cap = offset + size
        self.init_config(offset, cap_id | (version << 16), 4)
        if self._last_ext_cap is not None:
            header = self.config_dword(self._last_ext_cap)
            self.init_config(self._last_ext_cap, (header & 0xFFFFF) | (offset << 20), 4)
        self._last_ext_cap = offset
        for i, byte in enumerate(body):
            self.init_config(offset + 4 + i, byte, 1, wmask=wmask[i] if wmask else 0, w1c=w1c[i] if w1c else 0)
        return offset

    def add_aer_capability(self) -> int:
        """Advanced Error Reporting (status registers RW1C, masks writable)."""
        body = bytearray(PCI_ERR_SIZEOF - 4)
        wmask = bytearray(len(body))
        w1c = bytearray(len(body))
        for reg in (PCI_ERR_UNCOR_STATUS, PCI_ERR_COR_STATUS):
            w1c[reg - 4:reg] = b"\xff\xff\xff\xff"
        for reg in (PCI_ERR_UNCOR_MASK, PCI_ERR_UNCOR_SEVER, PCI_ERR_COR_MASK):
            wmask[reg - 4:reg] = b"\xff\xff\xff\xff"
        offset = self.add_extended_capability(PCI_EXT_CAP_ID_ERR, 2, bytes(body), wmask=bytes(wmask), w1c=bytes(w1c))
        self.aer_offset = offset
        return offset

    def find_capability(self, cap_id: int) -> int | None:
        """Offset of the first standard capability ``cap_id`` in the chain."""
        if not self.config_word(PCI_STATUS) & PCI_STATUS_CAP_LIST:
            return None
        pos = self.config[PCI_CAPABILITY_LIST] & ~3
        seen = 0
        while pos and seen < 48:
            if self.config[pos] == cap_id:
                return pos
            pos = self.config[pos + 1] & ~3
            seen += 1
        return None

    def capabilities(self) -> list[tuple[int, int]]:
        """``(cap_id, offset)`` of every standard capability."""
        result: list[tuple[int, int]] = []
        if self.config_word(PCI_STATUS) & PCI_STATUS_CAP_LIST:
            pos = self.config[PCI_CAPABILITY_LIST] & ~3
            while pos and len(result) < 48:
                result.append((self.config[pos], pos))
                pos = self.config[pos + 1] & ~3
        return result

    def extended_capabilities(self) -> list[tuple[int, int, int]]:
        """``(cap_id, version, offset)`` of every extended capability."""
        result: list[tuple[int, int, int]] = []
        if not self.pcie:
            return result
        pos = PCI_CFG_SPACE_SIZE
        while pos and len(result) < 960:
            header = self.config_dword(pos)
            if header == 0 or header == 0xFFFFFFFF:
                break
            result.append((header & 0xFFFF, (header >> 16) & 0xF, pos))
            pos = (header >> 20) & 0xFFC
        return result

    # -- config space access (what the bus sees) -------------------------------
    def config_word(self, offset: int) -> int:
        """The 16-bit little-endian value at config space ``offset`` (no
        side effects)."""
        return int.from_bytes(self.config[offset:offset + 2], "little")

    def config_dword(self, offset: int) -> int:
        """The 32-bit little-endian value at config space ``offset`` (no
        side effects)."""
        return int.from_bytes(self.config[offset:offset + 4], "little")

    def config_read(self, offset: int, size: int) -> bytes:
        """Read ``size`` bytes of config space (beyond its end reads as
        all-ones, like a master abort)."""
        if offset < 0 or size < 0:
            raise ValueError("negative config offset or size")
        data = bytes(self.config[offset:offset + size])
        return data + b"\xff" * (size - len(data))

    def config_write(self, offset: int, data: bytes) -> None:
        """A config write: applies the writable and write-1-to-clear masks,
        then reacts to the registers that changed."""
        if offset < 0:
            raise ValueError("negative config offset")
        end = min(offset + len(data), self.config_size)
        old = bytes(self.config[offset:end])
        for i in range(offset, end):
            value = data[i - offset]
            wm = self.wmask[i]
            w1c = self.w1cmask[i]
            byte = (self.config[i] & ~wm) | (value & wm)
            byte &= ~(value & w1c)
            self.config[i] = byte & 0xFF
        if end > offset:
            self._config_changed(offset, old, bytes(self.config[offset:end]))

    def _overlaps(self, offset: int, length: int, reg: int, reg_len: int) -> bool:
        return offset < reg + reg_len and reg < offset + length


    def _config_changed(self, offset: int, old: bytes, new: bytes) -> None:
        """Hook: a config write changed ``old`` to ``new`` at ``offset``
        (the device reacts to the registers it touched)."""
