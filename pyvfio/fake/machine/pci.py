"""PCI device models for the fake kernel.

A :class:`DeviceModel` is the hardware side of a simulated PCI function:
its configuration space (type-0 header and capabilities), its BARs (plain
RAM or registers served by Python hooks), its interrupts (INTx, MSI and
MSI-X as the hardware would signal them) and its DMA, which goes through
the :class:`~pyvfio.fake.system.PciDevice` the model is attached to and
therefore through the simulated IOMMU.

The model's config space is the *physical* one.  The vfio-pci device file
(:mod:`pyvfio.fake.vfio_pci`) keeps its own virtualised view on top of it,
exactly as the kernel's ``vfio_pci_config.c`` does on top of a real device.

Writing a model
---------------

Subclass :class:`DeviceModel`, set the identity as class attributes (or
pass them in the ``spec``), describe the BARs, add capabilities in
``__init__`` and implement the register hooks::

    class Counter(DeviceModel):
        vendor_id = 0x1234
        device_id = 0xbeef
        class_code = 0xff0000
        default_bars = (Bar(0, 0x1000),)

        def __init__(self, spec=None):
            super().__init__(spec)
            self.add_msi_capability(vectors=1)
            self.count = 0

        def on_read(self, bar, offset, width):
            return self.count if offset == 0 else 0

        def on_write(self, bar, offset, width, value):
            if offset == 0:
                self.count = value
                self.notify()          # MSI if enabled, else INTx

        def device_reset(self):
            self.count = 0

Register hooks see every access with the width the driver used (1, 2, 4
or 8 bytes), whether it came from ``pread``/``pwrite`` on the device file
or from an ``mmap`` of the BAR.
"""

from __future__ import annotations

import enum
import mmap as _mmap
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Protocol, Sequence

from ..._uapi import ffi
from ..core import IommuFault

if TYPE_CHECKING:
    from .system import PciDevice

__all__ = [
    "Bar",
    "BarKind",
    "DeviceModel",
    "DmaError",
    "BusMasterDisabled",
    "NotAttached",
    "DMA_ERRORS",
    "IrqSink",
    "MsiState",
    "MsixState",
    "IRQ_INTX",
    "IRQ_MSI",
    "IRQ_MSIX",
    "IRQ_ERR",
    "IRQ_REQ",
]

_PAGE = _mmap.PAGESIZE

# -- interrupt indexes (the values of VFIO_PCI_*_IRQ_INDEX) -------------------
#: Interrupt index of the legacy INTx line (VFIO_PCI_INTX_IRQ_INDEX).
IRQ_INTX = 0
#: Interrupt index of MSI (VFIO_PCI_MSI_IRQ_INDEX).
IRQ_MSI = 1
#: Interrupt index of MSI-X (VFIO_PCI_MSIX_IRQ_INDEX).
IRQ_MSIX = 2
#: Interrupt index of the AER error notification (VFIO_PCI_ERR_IRQ_INDEX).
IRQ_ERR = 3
#: Interrupt index of the device release request (VFIO_PCI_REQ_IRQ_INDEX).
IRQ_REQ = 4

# -- config space layout (include/uapi/linux/pci_regs.h) --------------------
PCI_CFG_SPACE_SIZE = 256
PCI_CFG_SPACE_EXP_SIZE = 4096

PCI_VENDOR_ID = 0x00
PCI_DEVICE_ID = 0x02
PCI_COMMAND = 0x04
PCI_STATUS = 0x06
PCI_CLASS_REVISION = 0x08
PCI_REVISION_ID = 0x08
PCI_CLASS_PROG = 0x09
PCI_CLASS_DEVICE = 0x0A
PCI_CACHE_LINE_SIZE = 0x0C
PCI_LATENCY_TIMER = 0x0D
PCI_HEADER_TYPE = 0x0E
PCI_BIST = 0x0F
PCI_BASE_ADDRESS_0 = 0x10
PCI_CARDBUS_CIS = 0x28
PCI_SUBSYSTEM_VENDOR_ID = 0x2C
PCI_SUBSYSTEM_ID = 0x2E
PCI_ROM_ADDRESS = 0x30
PCI_CAPABILITY_LIST = 0x34
PCI_INTERRUPT_LINE = 0x3C
PCI_INTERRUPT_PIN = 0x3D
PCI_MIN_GNT = 0x3E
PCI_MAX_LAT = 0x3F
PCI_STD_HEADER_SIZEOF = 0x40

PCI_COMMAND_IO = 0x1
PCI_COMMAND_MEMORY = 0x2
PCI_COMMAND_MASTER = 0x4
PCI_COMMAND_SPECIAL = 0x8
PCI_COMMAND_INVALIDATE = 0x10
PCI_COMMAND_VGA_PALETTE = 0x20
PCI_COMMAND_PARITY = 0x40
PCI_COMMAND_SERR = 0x100
PCI_COMMAND_FAST_BACK = 0x200
PCI_COMMAND_INTX_DISABLE = 0x400

PCI_STATUS_INTERRUPT = 0x08
PCI_STATUS_CAP_LIST = 0x10
PCI_STATUS_66MHZ = 0x20
PCI_STATUS_FAST_BACK = 0x80
PCI_STATUS_PARITY = 0x100
PCI_STATUS_SIG_TARGET_ABORT = 0x800
PCI_STATUS_REC_TARGET_ABORT = 0x1000
PCI_STATUS_REC_MASTER_ABORT = 0x2000
PCI_STATUS_SIG_SYSTEM_ERROR = 0x4000
PCI_STATUS_DETECTED_PARITY = 0x8000
#: Status bits that are write-1-to-clear.
PCI_STATUS_W1C = (
    PCI_STATUS_PARITY
    | PCI_STATUS_SIG_TARGET_ABORT
    | PCI_STATUS_REC_TARGET_ABORT
    | PCI_STATUS_REC_MASTER_ABORT
    | PCI_STATUS_SIG_SYSTEM_ERROR
    | PCI_STATUS_DETECTED_PARITY
)

PCI_BASE_ADDRESS_SPACE_IO = 0x01
PCI_BASE_ADDRESS_MEM_TYPE_64 = 0x04
PCI_BASE_ADDRESS_MEM_PREFETCH = 0x08
PCI_ROM_ADDRESS_ENABLE = 0x01

# capability IDs
PCI_CAP_ID_PM = 0x01
PCI_CAP_ID_MSI = 0x05
PCI_CAP_ID_VNDR = 0x09
PCI_CAP_ID_EXP = 0x10
PCI_CAP_ID_MSIX = 0x11
PCI_EXT_CAP_ID_ERR = 0x0001
PCI_EXT_CAP_ID_DSN = 0x0003

# PM
PCI_PM_PMC = 2
PCI_PM_CTRL = 4
PCI_PM_CTRL_STATE_MASK = 0x0003
PCI_PM_CTRL_NO_SOFT_RESET = 0x0008
PCI_PM_CTRL_PME_ENABLE = 0x0100
PCI_PM_CTRL_PME_STATUS = 0x8000
PCI_PM_SIZEOF = 8

# MSI
PCI_MSI_FLAGS = 2
PCI_MSI_FLAGS_ENABLE = 0x0001
PCI_MSI_FLAGS_QMASK = 0x000E
PCI_MSI_FLAGS_QSIZE = 0x0070
PCI_MSI_FLAGS_64BIT = 0x0080
PCI_MSI_FLAGS_MASKBIT = 0x0100
PCI_MSI_ADDRESS_LO = 4
PCI_MSI_ADDRESS_HI = 8
PCI_MSI_DATA_32 = 8
PCI_MSI_MASK_32 = 12
PCI_MSI_PENDING_32 = 16
PCI_MSI_DATA_64 = 12
PCI_MSI_MASK_64 = 16
PCI_MSI_PENDING_64 = 20

# MSI-X
PCI_MSIX_FLAGS = 2
PCI_MSIX_FLAGS_QSIZE = 0x07FF
PCI_MSIX_FLAGS_MASKALL = 0x4000
PCI_MSIX_FLAGS_ENABLE = 0x8000
PCI_MSIX_TABLE = 4
PCI_MSIX_PBA = 8
PCI_MSIX_TABLE_BIR = 0x7
PCI_MSIX_ENTRY_SIZE = 16
PCI_MSIX_ENTRY_VECTOR_CTRL = 12
PCI_MSIX_ENTRY_CTRL_MASKBIT = 0x1
PCI_CAP_MSIX_SIZEOF = 12

# PCI Express
PCI_EXP_FLAGS = 2
PCI_EXP_FLAGS_TYPE = 0x00F0
PCI_EXP_TYPE_ENDPOINT = 0x0
PCI_EXP_TYPE_LEG_END = 0x1
PCI_EXP_TYPE_RC_END = 0x9
PCI_EXP_DEVCAP = 4
PCI_EXP_DEVCAP_FLR = 0x10000000
PCI_EXP_DEVCTL = 8
PCI_EXP_DEVCTL_BCR_FLR = 0x8000
PCI_EXP_DEVSTA = 10
PCI_EXP_DEVSTA_TRPND = 0x0020
PCI_EXP_LNKCAP = 12
PCI_EXP_LNKCTL = 16
PCI_EXP_LNKSTA = 18
PCI_EXP_DEVCAP2 = 36
PCI_EXP_DEVCAP2_ATOMIC_COMP32 = 0x00000080
PCI_EXP_DEVCAP2_ATOMIC_COMP64 = 0x00000100
PCI_EXP_DEVCAP2_ATOMIC_COMP128 = 0x00000200
PCI_EXP_DEVCTL2 = 40
PCI_EXP_LNKCAP2 = 44
PCI_EXP_LNKCTL2 = 48
PCI_EXP_LNKSTA2 = 50
PCI_CAP_EXP_ENDPOINT_SIZEOF_V2 = 0x3C

# AER (extended capability)
PCI_ERR_UNCOR_STATUS = 4
PCI_ERR_UNCOR_MASK = 8
PCI_ERR_UNCOR_SEVER = 12
PCI_ERR_COR_STATUS = 16
PCI_ERR_COR_MASK = 20
PCI_ERR_CAP = 24
PCI_ERR_ROOT_STATUS = 48
PCI_ERR_SIZEOF = 0x38


class DmaError(Exception):
    """A DMA the device attempted did not reach memory (other than an
    IOMMU fault, which is :class:`~pyvfio.fake.core.IommuFault`)."""


class BusMasterDisabled(DmaError):
    """The device tried to DMA with Bus Master Enable clear in its Command
    register: a real function cannot issue memory requests then."""


class NotAttached(DmaError):
    """The model is not attached to a :class:`PciDevice` (no bus to DMA on)."""


#: Every exception a DMA through :meth:`DeviceModel.dma_read` /
#: :meth:`DeviceModel.dma_write` can raise; models catch these and report
#: the error the way their hardware would.
DMA_ERRORS: tuple[type[Exception], ...] = (IommuFault, DmaError)


class IrqSink(Protocol):
    """Where a model's interrupts go (the vfio-pci device file).

    ``deliver`` is an MSI or MSI-X message for ``vector`` (already checked
    against enable and mask state by the model); ``intx`` reports a change
    of the INTx line as seen by the interrupt controller (asserted and not
    disabled in the Command register).
    """

    def deliver(self, index: int, vector: int) -> None:
        """Signal vector ``vector`` of interrupt index ``index``
        (:data:`IRQ_MSI` or :data:`IRQ_MSIX`)."""

    def intx(self, level: bool) -> None:
        """The INTx line is now asserted (``level`` true) or deasserted."""


class BarKind(str, enum.Enum):
    """What a BAR decodes: 32-bit memory, 64-bit memory or I/O ports.
    The values are the ``type`` strings of a topology's BAR entries."""

    MEM32 = "mem32"
    MEM64 = "mem64"
    IO = "io"


RegisterRead = Callable[[int, int], int]
RegisterWrite = Callable[[int, int, int], None]


@dataclass
class Bar:
    """One Base Address Register and the space behind it.

    :param index: BAR number 0-5 (a 64-bit BAR also uses ``index + 1``).
    :param size: bytes, a power of two (>= 16 for memory, >= 4 for I/O).
    :param kind: ``"mem32"``, ``"mem64"`` or ``"io"``.
    :param prefetchable: the prefetchable bit of a memory BAR.
    :param ram: plain memory: reads return what was written, no hooks
        (``mmap`` of it is real memory).
    :param mmappable: whether vfio-pci lets the user mmap it (memory BARs
        only; I/O BARs never are).
    :param on_read: ``(offset, width) -> value`` hook for this BAR; when
        ``None`` the model's :meth:`DeviceModel.on_read` is called.
    :param on_write: ``(offset, width, value)`` hook; default
        :meth:`DeviceModel.on_write`.
    :param address: the bus address the host assigned (for sysfs
        ``resource``; vfio-pci never exposes it to the user).
    """

    index: int
    size: int
    kind: BarKind | str = BarKind.MEM32
    prefetchable: bool = False
    ram: bool = False
    mmappable: bool = True
    on_read: RegisterRead | None = None
    on_write: RegisterWrite | None = None
    address: int = 0
    #: The RAM behind a ``ram`` BAR (a cffi ``char[]`` of whole pages);
    #: ``None`` for register BARs.
    memory: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.kind = BarKind(self.kind)
        if not 0 <= self.index <= 5:
            raise ValueError(f"BAR index {self.index} is not 0-5")
        if self.kind is BarKind.MEM64 and self.index == 5:
            raise ValueError("a 64-bit BAR cannot start at BAR 5")
        minimum = 4 if self.kind is BarKind.IO else 16
        if self.size < minimum or self.size & (self.size - 1):
            raise ValueError(f"BAR{self.index} size {self.size:#x} is not a power of two >= {minimum}")
        if self.kind is BarKind.IO:
            if self.size > 256:
                raise ValueError("I/O BARs are at most 256 bytes")
            if self.prefetchable:
                raise ValueError("I/O BARs cannot be prefetchable")
            self.mmappable = False
        if self.kind is BarKind.MEM32 and self.size > 1 << 31:
            raise ValueError("a 32-bit BAR is at most 2 GiB")
        if self.ram and self.memory is None:
            # whole pages, so that a mapping of a small BAR stays in bounds
            self.memory = ffi.new("char[]", (self.size + _PAGE - 1) // _PAGE * _PAGE)

    @property
    def is_io(self) -> bool:
        """An I/O port BAR (never mmappable)."""
        return self.kind is BarKind.IO

    @property
    def is_64bit(self) -> bool:
        """A 64-bit memory BAR, which also takes BAR ``index + 1``."""
        return self.kind is BarKind.MEM64

    @property
    def flag_bits(self) -> int:
        """The read-only low bits of the BAR register."""
        if self.kind is BarKind.IO:
            return PCI_BASE_ADDRESS_SPACE_IO
        bits = PCI_BASE_ADDRESS_MEM_TYPE_64 if self.kind is BarKind.MEM64 else 0
        if self.prefetchable:
            bits |= PCI_BASE_ADDRESS_MEM_PREFETCH
        return bits

    @property
    def memory_address(self) -> int:
        """Address of the RAM backing (``ram`` BARs only)."""
        if self.memory is None:
            raise ValueError(f"BAR{self.index} is not RAM-backed")
        return int(ffi.cast("uintptr_t", self.memory))

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> Bar:
        """Build from a topology entry ``{"index", "size", "type", "prefetchable"}``."""
        return cls(
            index=int(spec["index"]),
            size=int(spec["size"]),
            kind=str(spec.get("type", "mem32")),
            prefetchable=bool(spec.get("prefetchable", False)),
            ram=bool(spec.get("ram", False)),
            mmappable=bool(spec.get("mmappable", True)),
        )


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


def _int_field(spec: Mapping[str, Any], key: str, default: int) -> int:
    value = spec.get(key)
    if value is None:
        return default
    if isinstance(value, str):
        return int(value, 0)
    return int(value)


class DeviceModel:
    """The hardware of one simulated PCI function.

    Identity defaults are class attributes; a ``spec`` (a topology entry)
    overrides them with the keys ``vendor``, ``device``, ``class``,
    ``subsystem_vendor``, ``subsystem_device``, ``revision``, ``bars`` and
    ``reset_methods`` (empty or absent: derived from the capabilities);
    other keys are ignored here.
    """

    #: Short name of the model ("generic", "edu", "nvme", ...).
    model_name: str = "generic"
    #: PCI Vendor ID (default 0x1b36, Red Hat, QEMU's PCI vendor ID).
    vendor_id: int = 0x1B36
    #: PCI Device ID (default 0x0005, QEMU's "PCI test device").
    device_id: int = 0x0005
    #: The 24-bit Class Code: base class, sub-class, programming interface
    #: (default 0xff0000, unassigned).
    class_code: int = 0xFF0000
    #: Subsystem Vendor ID.
    subsystem_vendor_id: int = 0x1AF4
    #: Subsystem ID.
    subsystem_id: int = 0x1100
    #: Revision ID.
    revision: int = 0
    #: PCI Express (4 KiB config space) or conventional PCI (256 bytes).
    pcie: bool = True
    #: INTx pin: 1 = INTA ... 4 = INTD, 0 = no INTx.
    interrupt_pin: int = 1
    #: The BARs a model has when the spec does not list any.
    default_bars: Sequence[Bar] = ()
    #: Reset methods in the order the kernel would try them
    #: (``/sys/bus/pci/devices/*/reset_method``).  ``None``: derived from
    #: the capabilities (``flr`` when the Express capability advertises
    #: it, ``pm`` when PM has No_Soft_Reset clear) plus ``bus``.
    default_reset_methods: Sequence[str] | None = None

    def __init__(self, spec: Mapping[str, Any] | None = None) -> None:
        spec = dict(spec or {})
        self.spec = spec
        self.vendor_id = _int_field(spec, "vendor", type(self).vendor_id)
        self.device_id = _int_field(spec, "device", type(self).device_id)
        self.class_code = _int_field(spec, "class", type(self).class_code)
        self.subsystem_vendor_id = _int_field(spec, "subsystem_vendor", type(self).subsystem_vendor_id)
        self.subsystem_id = _int_field(spec, "subsystem_device", type(self).subsystem_id)
        self.revision = _int_field(spec, "revision", type(self).revision)
        if "pcie" in spec:
            self.pcie = bool(spec["pcie"])
        bar_specs = spec.get("bars")
        bars: list[Bar]
        if bar_specs is None:
            bars = [Bar(b.index, b.size, b.kind, b.prefetchable, b.ram, b.mmappable) for b in self.default_bars]
        else:
            bars = [b if isinstance(b, Bar) else Bar.from_spec(b) for b in bar_specs]
        self.bars: dict[int, Bar] = {}
        for bar in bars:
            self._check_bar_slot(bar)
            self.bars[bar.index] = bar
        # An empty or absent list means "what the hardware offers".
        self._explicit_reset_methods: list[str] | None = (
            list(spec["reset_methods"]) if spec.get("reset_methods")
            else (list(self.default_reset_methods) if self.default_reset_methods is not None else None)
        )

        self.pdev: PciDevice | None = None
        self.irq_sink: IrqSink | None = None
        self.msi: MsiState | None = None
        self.msix: MsixState | None = None
        self.pm_offset: int | None = None
        self.pcie_offset: int | None = None
        self.aer_offset: int | None = None
        self._intx_level = False  # the device's internal INTx assertion
        self._intx_line = False  # what the interrupt controller sees
        #: Number of function level resets (FLR, PM or bus) the model saw.
        self.reset_count = 0

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

    def _check_bar_slot(self, bar: Bar) -> None:
        used = set()
        for other in self.bars.values():
            used.add(other.index)
            if other.is_64bit:
                used.add(other.index + 1)
        slots = {bar.index, bar.index + 1} if bar.is_64bit else {bar.index}
        if used & slots:
            raise ValueError(f"BAR{bar.index} overlaps another BAR")

    # -- identity ----------------------------------------------------------
    @property
    def config_size(self) -> int:
        """Size of the config space in bytes: 4096 for PCI Express, else 256."""
        return len(self.config)

    @property
    def reset_methods(self) -> list[str]:
        """Reset methods, best first, as ``reset_method`` in sysfs lists them."""
        if self._explicit_reset_methods is not None:
            return list(self._explicit_reset_methods)
        methods = []
        if self.has_flr:
            methods.append("flr")
        if self.pm_offset is not None and not self.config_dword(self.pm_offset + PCI_PM_CTRL) & PCI_PM_CTRL_NO_SOFT_RESET:
            methods.append("pm")
        methods.append("bus")
        return methods

    @property
    def has_flr(self) -> bool:
        """The Express capability advertises Function Level Reset."""
        if self.pcie_offset is None:
            return False
        return bool(self.config_dword(self.pcie_offset + PCI_EXP_DEVCAP) & PCI_EXP_DEVCAP_FLR)

    # -- config space construction (the power-on image) ----------------------
    def init_config(self, offset: int, value: int, width: int, *, wmask: int = 0, w1c: int = 0) -> None:
        """Set a power-on register value and its writable / write-1-to-clear bits."""
        if offset < 0 or offset + width > self.config_size:
            raise ValueError(f"config offset {offset:#x} width {width} outside the config space")
        for i in range(width):
            shift = 8 * i
            self.config[offset + i] = (value >> shift) & 0xFF
            self._power_on[offset + i] = (value >> shift) & 0xFF
            self.wmask[offset + i] = (wmask >> shift) & 0xFF
            self.w1cmask[offset + i] = (w1c >> shift) & 0xFF

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
        length = len(new)

        def before(reg: int, width: int) -> int:
            value = int.from_bytes(self.config[reg:reg + width], "little")
            for i in range(width):
                if offset <= reg + i < offset + length:
                    value &= ~(0xFF << (8 * i))
                    value |= old[reg + i - offset] << (8 * i)
            return value

        if self._overlaps(offset, length, PCI_COMMAND, 2):
            old_cmd = before(PCI_COMMAND, 2)
            cmd = self.config_word(PCI_COMMAND)
            if (old_cmd ^ cmd) & PCI_COMMAND_INTX_DISABLE:
                self._update_intx_line()
            if old_cmd != cmd:
                self.command_changed(old_cmd, cmd)
        if self.msi is not None and self._overlaps(offset, length, self.msi.offset, 24):
            self._msi_changed()
        if self.msix is not None and self._overlaps(offset, length, self.msix.offset + PCI_MSIX_FLAGS, 2):
            self._msix_deliver_pending()
        if self.pm_offset is not None and self._overlaps(offset, length, self.pm_offset + PCI_PM_CTRL, 2):
            old_ctrl = before(self.pm_offset + PCI_PM_CTRL, 2)
            self._pm_changed(old_ctrl, self.config_word(self.pm_offset + PCI_PM_CTRL))
        if self.pcie_offset is not None and self._overlaps(offset, length, self.pcie_offset + PCI_EXP_DEVCTL, 2):
            devctl = self.config_word(self.pcie_offset + PCI_EXP_DEVCTL)
            if devctl & PCI_EXP_DEVCTL_BCR_FLR:
                # Initiate FLR reads as zero; the function resets.
                self.reset()

    def command_changed(self, old: int, new: int) -> None:
        """Hook: the Command register changed (memory/io/bus-master decode)."""

    def _pm_changed(self, old: int, new: int) -> None:
        old_state = old & PCI_PM_CTRL_STATE_MASK
        state = new & PCI_PM_CTRL_STATE_MASK
        if state not in (0, 3):
            # D1/D2 unsupported: the write of the state field is ignored.
            pos = self.pm_offset + PCI_PM_CTRL  # type: ignore[operator]
            value = (new & ~PCI_PM_CTRL_STATE_MASK) | old_state
            self.config[pos:pos + 2] = value.to_bytes(2, "little")
            return
        if old_state == 3 and state == 0 and not new & PCI_PM_CTRL_NO_SOFT_RESET:
            # D3hot -> D0 with No_Soft_Reset clear: an internal reset.
            self.reset()

    @property
    def power_state(self) -> int:
        """Current D-state (0 = D0, 3 = D3hot); D0 without a PM capability."""
        if self.pm_offset is None:
            return 0
        return self.config_word(self.pm_offset + PCI_PM_CTRL) & PCI_PM_CTRL_STATE_MASK

    @property
    def command(self) -> int:
        """The Command register (``PCI_COMMAND_*`` bits)."""
        return self.config_word(PCI_COMMAND)

    @property
    def bus_master(self) -> bool:
        """Bus Master Enable: the function may issue DMA."""
        return bool(self.command & PCI_COMMAND_MASTER)

    @property
    def memory_enabled(self) -> bool:
        """Memory Space Enable: the memory BARs decode accesses."""
        return bool(self.command & PCI_COMMAND_MEMORY)

    # -- BAR access --------------------------------------------------------
    def bar_read(self, index: int, offset: int, width: int) -> int:
        """One read of ``width`` bytes at ``offset`` in BAR ``index``."""
        bar = self._bar_access(index, offset, width)
        msix = self.msix
        if msix is not None:
            if index == msix.table_bar and msix.table_offset <= offset < msix.table_offset + msix.table_size:
                return self._msix_table_read(offset - msix.table_offset, width)
            if index == msix.pba_bar and msix.pba_offset <= offset < msix.pba_offset + msix.pba_size:
                pos = offset - msix.pba_offset
                return int.from_bytes(msix.pba[pos:pos + width].ljust(width, b"\0"), "little")
        if bar.ram:
            return int.from_bytes(ffi.buffer(bar.memory + offset, width)[:], "little")
        if bar.on_read is not None:
            return bar.on_read(offset, width) & ((1 << (8 * width)) - 1)
        return self.on_read(index, offset, width) & ((1 << (8 * width)) - 1)

    def bar_write(self, index: int, offset: int, width: int, value: int) -> None:
        """One write of ``width`` bytes at ``offset`` in BAR ``index``."""
        bar = self._bar_access(index, offset, width)
        value &= (1 << (8 * width)) - 1
        msix = self.msix
        if msix is not None:
            if index == msix.table_bar and msix.table_offset <= offset < msix.table_offset + msix.table_size:
                self._msix_table_write(offset - msix.table_offset, width, value)
                return
            if index == msix.pba_bar and msix.pba_offset <= offset < msix.pba_offset + msix.pba_size:
                return  # the PBA is read-only
        if bar.ram:
            ffi.buffer(bar.memory + offset, width)[:] = value.to_bytes(width, "little")
            return
        if bar.on_write is not None:
            bar.on_write(offset, width, value)
            return
        self.on_write(index, offset, width, value)

    def _bar_access(self, index: int, offset: int, width: int) -> Bar:
        bar = self.bars.get(index)
        if bar is None:
            raise ValueError(f"the model has no BAR{index}")
        if width not in (1, 2, 4, 8):
            raise ValueError(f"access width {width} is not 1, 2, 4 or 8")
        if offset < 0 or offset + width > bar.size:
            raise ValueError(f"access at {offset:#x} width {width} is outside BAR{index}")
        return bar

    def on_read(self, bar: int, offset: int, width: int) -> int:
        """Register read hook for BARs without their own ``on_read``.

        The default reads as all-ones (nothing decodes the address)."""
        return (1 << (8 * width)) - 1

    def on_write(self, bar: int, offset: int, width: int, value: int) -> None:
        """Register write hook for BARs without their own ``on_write``;
        the default discards the write."""

    def _msix_table_read(self, pos: int, width: int) -> int:
        assert self.msix is not None
        return int.from_bytes(self.msix.table[pos:pos + width].ljust(width, b"\0"), "little")

    def _msix_table_write(self, pos: int, width: int, value: int) -> None:
        msix = self.msix
        assert msix is not None
        end = min(pos + width, msix.table_size)
        msix.table[pos:end] = value.to_bytes(width, "little")[:end - pos]
        first = pos // PCI_MSIX_ENTRY_SIZE
        last = (end - 1) // PCI_MSIX_ENTRY_SIZE
        for vector in range(first, last + 1):
            if not msix.vector_masked(vector) and msix.pending(vector):
                self._msix_send(vector)

    # -- DMA -----------------------------------------------------------------
    def attach(self, pdev: PciDevice | None) -> None:
        """Connect the model to the :class:`PciDevice` that carries its DMA
        (``None`` disconnects).  BAR addresses the machine assigned
        (``pdev.bar_addresses``) are programmed into the BAR registers."""
        self.pdev = pdev
        addresses = getattr(pdev, "bar_addresses", None) or {}
        for index, address in addresses.items():
            if index in self.bars:
                self.set_bar_address(index, int(address))

    def dma_read(self, address: int, length: int, *, pasid: int | None = None) -> bytes:
        """Read ``length`` bytes of memory at bus address ``address``
        (tagged with ``pasid`` when given).

        Raises :class:`BusMasterDisabled`, :class:`NotAttached` or
        :class:`~pyvfio.fake.core.IommuFault` (see :data:`DMA_ERRORS`);
        a blocked read transfers nothing."""
        pdev = self._dma_check()
        if pasid is None:
            return bytes(pdev.dma_read(address, length))
        return bytes(pdev.dma_read(address, length, pasid=pasid))

    def dma_write(self, address: int, data: bytes | bytearray | memoryview, *, pasid: int | None = None) -> None:
        """Write ``data`` to memory at bus address ``address``; a blocked
        write changes nothing."""
        pdev = self._dma_check()
        if pasid is None:
            pdev.dma_write(address, bytes(data))
        else:
            pdev.dma_write(address, bytes(data), pasid=pasid)

    def _dma_check(self) -> PciDevice:
        if not self.bus_master:
            raise BusMasterDisabled("Bus Master Enable is clear in the Command register")
        if self.pdev is None:
            raise NotAttached("the model is not attached to a PCI device")
        return self.pdev

    # -- interrupts ------------------------------------------------------------
    @property
    def msi_enabled(self) -> bool:
        """MSI Enable is set in the MSI capability (False without one)."""
        return self.msi is not None and bool(self.config_word(self.msi.control) & PCI_MSI_FLAGS_ENABLE)

    @property
    def msix_enabled(self) -> bool:
        """MSI-X Enable is set in the MSI-X capability (False without one)."""
        return self.msix is not None and bool(
            self.config_word(self.msix.offset + PCI_MSIX_FLAGS) & PCI_MSIX_FLAGS_ENABLE
        )

    @property
    def msix_function_masked(self) -> bool:
        """The MSI-X Function Mask bit is set: every vector is held pending."""
        return self.msix is not None and bool(
            self.config_word(self.msix.offset + PCI_MSIX_FLAGS) & PCI_MSIX_FLAGS_MASKALL
        )

    @property
    def msi_enabled_vectors(self) -> int:
        """Messages software allocated (Multiple Message Enable), 0 when off."""
        if not self.msi_enabled or self.msi is None:
            return 0
        qsize = (self.config_word(self.msi.control) & PCI_MSI_FLAGS_QSIZE) >> 4
        return min(1 << qsize, self.msi.vectors)

    def notify(self, vector: int = 0) -> bool:
        """Signal an interrupt the way a typical device does: an MSI-X
        message when MSI-X is enabled, else MSI, else assert INTx (a level:
        call :meth:`set_intx` ``(False)`` when the cause is cleared)."""
        if self.msix_enabled:
            return self.raise_irq(IRQ_MSIX, vector)
        if self.msi_enabled:
            return self.raise_irq(IRQ_MSI, vector)
        self.set_intx(True)
        return self._intx_line

    def raise_irq(self, index: int, vector: int = 0) -> bool:
        """Signal interrupt ``vector`` of type ``index`` (``IRQ_INTX``,
        ``IRQ_MSI``, ``IRQ_MSIX``), honouring enable and mask state as the
        hardware does (masked vectors become pending).  Returns whether a
        message/level reached the interrupt controller."""
        if index == IRQ_INTX:
            self.set_intx(True)
            return self._intx_line
        if index == IRQ_MSI:
            msi = self.msi
            if msi is None:
                raise ValueError("the model has no MSI capability")
            if not self.msi_enabled or vector >= self.msi_enabled_vectors:
                return False
            if msi.maskable:
                mask = self.config_dword(msi.mask_offset)
                if mask & (1 << vector):
                    self._set_msi_pending(vector, True)
                    return False
            return self._send(IRQ_MSI, vector)
        if index == IRQ_MSIX:
            msix = self.msix
            if msix is None:
                raise ValueError("the model has no MSI-X capability")
            if not 0 <= vector < msix.vectors:
                raise ValueError(f"MSI-X vector {vector} out of range")
            if not self.msix_enabled:
                return False
            if self.msix_function_masked or msix.vector_masked(vector):
                msix.set_pending(vector, True)
                return False
            return self._send(IRQ_MSIX, vector)
        raise ValueError(f"a device cannot raise interrupt index {index}")

    def _msix_send(self, vector: int) -> None:
        assert self.msix is not None
        if self.msix_enabled and not self.msix_function_masked and not self.msix.vector_masked(vector):
            self.msix.set_pending(vector, False)
            self._send(IRQ_MSIX, vector)

    def _msix_deliver_pending(self) -> None:
        if self.msix is None:
            return
        for vector in range(self.msix.vectors):
            if self.msix.pending(vector):
                self._msix_send(vector)

    def _set_msi_pending(self, vector: int, pending: bool) -> None:
        assert self.msi is not None
        pos = self.msi.pending_offset
        value = self.config_dword(pos)
        value = value | (1 << vector) if pending else value & ~(1 << vector)
        self.config[pos:pos + 4] = value.to_bytes(4, "little")

    def _msi_changed(self) -> None:
        msi = self.msi
        if msi is None or not msi.maskable or not self.msi_enabled:
            return
        mask = self.config_dword(msi.mask_offset)
        pending = self.config_dword(msi.pending_offset)
        for vector in range(self.msi_enabled_vectors):
            if pending & (1 << vector) and not mask & (1 << vector):
                self._set_msi_pending(vector, False)
                self._send(IRQ_MSI, vector)

    def _send(self, index: int, vector: int) -> bool:
        sink = self.irq_sink
        if sink is None:
            return False
        sink.deliver(index, vector)
        return True

    @property
    def intx_asserted(self) -> bool:
        """Whether the device is asserting INTx internally."""
        return self._intx_level

    def set_intx(self, level: bool) -> None:
        """Assert (``True``) or deassert the INTx pin.  Status bit 3
        follows; Interrupt Disable in the Command register keeps the level
        from reaching the interrupt controller."""
        if self.interrupt_pin == 0:
            return
        self._intx_level = bool(level)
        status = self.config_word(PCI_STATUS)
        status = status | PCI_STATUS_INTERRUPT if level else status & ~PCI_STATUS_INTERRUPT
        self.config[PCI_STATUS:PCI_STATUS + 2] = status.to_bytes(2, "little")
        self._update_intx_line()

    def lower_irq(self) -> None:
        """Deassert INTx (``set_intx(False)``)."""
        self.set_intx(False)

    def refresh_intx(self) -> None:
        """Recompute the INTx line after the Command register was changed
        behind the model's back (state restore)."""
        self._update_intx_line()

    def _update_intx_line(self) -> None:
        line = self._intx_level and not self.command & PCI_COMMAND_INTX_DISABLE
        if line != self._intx_line:
            self._intx_line = line
            if self.irq_sink is not None:
                self.irq_sink.intx(line)

    # -- reset -------------------------------------------------------------------
    def reset(self) -> None:
        """A function-level reset: config space returns to its power-on
        values (BARs keep the host-assigned addresses), MSI/MSI-X are
        disabled, INTx is deasserted, then :meth:`device_reset` resets the
        device's own state."""
        self.reset_count += 1
        self.config[:] = self._power_on
        if self.msix is not None:
            self.msix.reset()
        self._intx_level = False
        self._update_intx_line()
        self.device_reset()

    def device_reset(self) -> None:
        """Hook: reset the model's internal state (registers, queues)."""

    def bus_reset(self) -> None:
        """Secondary bus reset of the slot: the same as a function reset."""
        self.reset()

    # -- description -----------------------------------------------------------
    def bar_list(self) -> list[Bar]:
        """The BARs, by index."""
        return [self.bars[i] for i in sorted(self.bars)]

    @property
    def bars_spec(self) -> list[dict[str, Any]]:
        """The BARs as topology entries (``index``, ``size``, ``type``,
        ``prefetchable``)."""
        return [
            {"index": b.index, "size": b.size, "type": BarKind(b.kind).value, "prefetchable": b.prefetchable}
            for b in self.bar_list()
        ]

    def config_bytes(self) -> bytes:
        """The whole config space as sysfs ``config`` shows it to root."""
        return bytes(self.config)

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.vendor_id:04x}:{self.device_id:04x} "
                f"class {self.class_code:06x}>")


def bars_from_specs(specs: Iterable[Mapping[str, Any]]) -> list[Bar]:
    """Build :class:`Bar` objects from topology entries."""
    return [Bar.from_spec(s) for s in specs]
