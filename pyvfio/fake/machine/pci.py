"""PCI device models for the fake kernel.

A :class:`DeviceModel` is the hardware side of a simulated PCI function:
its configuration space (type-0 header and capabilities), its BARs (plain
RAM or registers served by Python hooks), its interrupts (INTx, MSI and
MSI-X as the hardware would signal them) and its DMA, which goes through
the :class:`~pyvfio.fake.machine.pci_device.PciDevice` the model is attached to and
therefore through the simulated IOMMU.  DMA and MSI/MSI-X messages are
both memory writes of the function: they leave it only while Bus Master
Enable is set in the Command register (a DMA raises
:class:`BusMasterDisabled`, a message is lost); INTx is a wire that only
Interrupt Disable holds back.  Both rules live here, once, for every model.

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

The parts of a model live in their own modules: the register layout in
:mod:`.pci_regs`, the config space and its capabilities in
:mod:`.config_space` (the base of :class:`DeviceModel`), the DMA errors in
:mod:`.dma`.  The names a model author needs are importable from here.
"""

from __future__ import annotations

import enum
import mmap as _mmap
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Protocol, Sequence

from ..._uapi import ffi
from .config_space import ConfigSpace, MsiState, MsixState
from .dma import DMA_ERRORS, BusMasterDisabled, DmaError, NotAttached
from .pci_regs import *  # noqa: F403 -- the register names, for the drivers that import them from here
from .pci_regs import (
    PCI_BASE_ADDRESS_MEM_PREFETCH,
    PCI_BASE_ADDRESS_MEM_TYPE_64,
    PCI_BASE_ADDRESS_SPACE_IO,
    PCI_COMMAND,
    PCI_COMMAND_INTX_DISABLE,
    PCI_COMMAND_MASTER,
    PCI_COMMAND_MEMORY,
    PCI_EXP_DEVCAP,
    PCI_EXP_DEVCAP_FLR,
    PCI_EXP_DEVCTL,
    PCI_EXP_DEVCTL_BCR_FLR,
    PCI_MSI_FLAGS_ENABLE,
    PCI_MSI_FLAGS_QSIZE,
    PCI_MSIX_ENTRY_SIZE,
    PCI_MSIX_FLAGS,
    PCI_MSIX_FLAGS_ENABLE,
    PCI_MSIX_FLAGS_MASKALL,
    PCI_PM_CTRL,
    PCI_PM_CTRL_NO_SOFT_RESET,
    PCI_PM_CTRL_STATE_MASK,
    PCI_STATUS,
    PCI_STATUS_INTERRUPT,
)

if TYPE_CHECKING:
    from .pci_device import PciDevice

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
_WIDTHS = frozenset((1, 2, 4, 8))

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


class IrqSink(Protocol):
    """Where a model's interrupts go (the vfio-pci device file).

    ``deliver`` is an MSI or MSI-X message for ``vector`` (already checked
    by the model against enable and mask state and against Bus Master
    Enable, without which the message, a memory write, never leaves the
    function); ``intx`` reports a change of the INTx line as seen by the
    interrupt controller (asserted and not disabled in the Command
    register).
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


def _int_field(spec: Mapping[str, Any], key: str, default: int) -> int:
    value = spec.get(key)
    if value is None:
        return default
    if isinstance(value, str):
        return int(value, 0)
    return int(value)


class DeviceModel(ConfigSpace):
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
        self._intx_level = False  # the device's internal INTx assertion
        self._intx_line = False  # what the interrupt controller sees
        #: Number of function level resets (FLR, PM or bus) the model saw.
        self.reset_count = 0
        #: MSI/MSI-X messages lost because Bus Master Enable was clear.
        self.lost_messages = 0

        self._init_config_space()

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
        bar = self.bars.get(index)
        if bar is None or width not in _WIDTHS or offset < 0 or offset + width > bar.size:
            bar = self._bar_access(index, offset, width)  # raises the error
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
        bar = self.bars.get(index)
        if bar is None or width not in _WIDTHS or offset < 0 or offset + width > bar.size:
            bar = self._bar_access(index, offset, width)  # raises the error
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
        hardware does (masked vectors become pending).  An unmasked MSI or
        MSI-X message is a memory write: with Bus Master Enable clear it is
        lost (counted in :attr:`lost_messages`).  INTx is a wire, not a
        write: it does not need Bus Master, only Interrupt Disable clear.
        Returns whether a message/level reached the interrupt controller."""
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
        """The one path of every MSI and MSI-X message a model sends, after
        the enable, mask and pending rules (QEMU's msi_send_message)."""
        # pci_msi_trigger: the message is a memory write issued through
        # the function's bus-master address space, which is disabled while
        # Bus Master Enable is clear (pci_default_write_config).  The write
        # goes nowhere: the interrupt is lost, no pending bit keeps it.
        if not self.bus_master:
            self.lost_messages += 1
            return False
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
