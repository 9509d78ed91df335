"""The vfio-pci device file of the fake kernel.

One :class:`VfioPciCore` per PCI device (``struct vfio_pci_core_device``)
holds what the kernel keeps per device while it is open: the virtualised
config space, the interrupt contexts, the saved state.  Every open file of
the device is a :class:`VfioDeviceFile` (``struct vfio_device_file``); the
group path may open a device several times, the cdev path once.

Contracts with the other modules:

* the System calls :func:`open_device_file` for ``/dev/vfio/devices/vfioN``
  and the group file (:mod:`pyvfio.fake.legacy`) for
  VFIO_GROUP_GET_DEVICE_FD; on the device's first open the group path
  calls ``group_file.use_container(pdev)`` (or binds to the group's
  iommufd and ``compat_attach_device(devid)``), on its last close
  ``group_file.unuse_container(pdev)`` (or unbinds);
* the cdev path calls the iommufd file's ``bind_device(pdev, file) ->
  devid``, ``attach_device(devid, pt_id, pasid) -> id``,
  ``detach_device(devid, pasid)`` and ``unbind_device(devid)``, and the
  IOMMU group's ``vfio_group.block_group()`` / ``unblock_group()``;
* while the device is open, ``pdev.request_release`` is the device's REQ
  hook (the System calls it when vfio-pci is asked to let go of the
  device); :func:`inject_error` raises the ERR interrupt.

Rules follow Linux 7.3's drivers/vfio/pci/vfio_pci_core.c,
vfio_pci_config.c, vfio_pci_intrs.c, vfio_pci_rdwr.c and
drivers/vfio/vfio_main.c, device_cdev.c; each check names the kernel
function it mirrors.  Deliberate differences:

* Interrupts are delivered synchronously: a model's ``raise_irq`` writes
  the user's eventfd before the call that caused it returns.
* Eventfd-driven actions (INTx unmask through an eventfd, ioeventfds) run
  when the fake next handles a call for the device (there are no kernel
  threads); :meth:`VfioPciCore.poll` runs them on demand.
* A memory access that would raise SIGBUS on Linux (mmap'd BAR while
  memory decode is off, in D3hot or in low-power mode) raises
  :class:`BusError` instead.
* A mapping of a BAR keeps the device open after its fd is closed (as the
  kernel's VMA does), but the system no longer lists the file.

Live migration.  For a model that declares it (``model_migration``, see
:mod:`pyvfio.fake.models`) vfio-pci acts as the device's variant driver
(mlx5_vfio_pci, hisi_acc_vfio_pci, mtty): VFIO_DEVICE_FEATURE_MIGRATION,
MIG_DEVICE_STATE, MIG_DATA_SIZE and MIG_PRECOPY_INFOv2 are served as
vfio_ioctl_device_feature does, the state machine walks single arcs with
:func:`mig_next_state` (vfio_mig_get_next_state), and with
``dma_logging`` the DMA_LOGGING_START/STOP/REPORT features read and clear
the model's log of its DMA writes.  Otherwise those features stay ENOTTY.

* The data fds are real files (a memfd opened read-only for a saving
  session, write-only for resuming): ``os.read``/``os.write`` work on them.
  Through the backend (pyvfio's
  :class:`~pyvfio.features.MigrationDataFile`), reads also give ENOMSG at
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
import mmap as _mmap
import os
import select
import stat
import struct
import weakref
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator

from ..._uapi import ffi, lib
from ...backend.base import MAP_SHARED, PROT_WRITE, IoctlArg, MemoryMap
from ..core import FakeBackend, FakeFile, cast_arg, errno_error
from ..models._migration import DmaDirtyLog, MigratableDevice, MigrationCapability
from ..machine.pci import (
    IRQ_ERR,
    IRQ_INTX,
    IRQ_MSI,
    IRQ_MSIX,
    IRQ_REQ,
    PCI_BASE_ADDRESS_0,
    PCI_CAP_ID_EXP,
    PCI_CAP_ID_MSI,
    PCI_CAP_ID_PM,
    PCI_CAP_ID_VNDR,
    PCI_CAPABILITY_LIST,
    PCI_CFG_SPACE_SIZE,
    PCI_COMMAND,
    PCI_COMMAND_INTX_DISABLE,
    PCI_COMMAND_IO,
    PCI_COMMAND_MASTER,
    PCI_COMMAND_MEMORY,
    PCI_EXP_DEVCAP,
    PCI_EXP_DEVCAP2,
    PCI_EXP_DEVCAP2_ATOMIC_COMP32,
    PCI_EXP_DEVCAP2_ATOMIC_COMP64,
    PCI_EXP_DEVCAP2_ATOMIC_COMP128,
    PCI_EXP_DEVCAP_FLR,
    PCI_EXP_DEVCTL,
    PCI_EXP_DEVCTL2,
    PCI_EXP_DEVCTL_BCR_FLR,
    PCI_EXT_CAP_ID_ERR,
    PCI_INTERRUPT_LINE,
    PCI_INTERRUPT_PIN,
    PCI_MSI_ADDRESS_HI,
    PCI_MSI_ADDRESS_LO,
    PCI_MSI_DATA_32,
    PCI_MSI_DATA_64,
    PCI_MSI_FLAGS,
    PCI_MSI_FLAGS_64BIT,
    PCI_MSI_FLAGS_ENABLE,
    PCI_MSI_FLAGS_MASKBIT,
    PCI_MSI_FLAGS_QMASK,
    PCI_MSI_FLAGS_QSIZE,
    PCI_MSI_MASK_32,
    PCI_MSI_MASK_64,
    PCI_MSI_PENDING_32,
    PCI_MSI_PENDING_64,
    PCI_MSIX_ENTRY_SIZE,
    PCI_MSIX_FLAGS,
    PCI_MSIX_FLAGS_ENABLE,
    PCI_MSIX_FLAGS_MASKALL,
    PCI_PM_CTRL,
    PCI_PM_CTRL_NO_SOFT_RESET,
    PCI_PM_CTRL_PME_ENABLE,
    PCI_PM_CTRL_PME_STATUS,
    PCI_PM_CTRL_STATE_MASK,
    PCI_PM_PMC,
    PCI_ROM_ADDRESS,
    PCI_STATUS,
    PCI_STATUS_CAP_LIST,
    PCI_STATUS_INTERRUPT,
    PCI_STD_HEADER_SIZEOF,
    Bar,
    DeviceModel,
)

if TYPE_CHECKING:
    from ..machine.system import PciDevice

__all__ = [
    "open_device_file",
    "VfioDeviceFile",
    "VfioPciCore",
    "BusError",
    "core_of",
    "inject_error",
    "inject_migration_failure",
    "mig_next_state",
    "VFIO_PCI_OFFSET_SHIFT",
    "index_to_offset",
]

#: A region's offset in the device file is its index shifted left by this
#: many bits (VFIO_PCI_OFFSET_SHIFT of vfio_pci_core.h): BAR ``n`` starts
#: at byte ``n << 40``, config space at ``7 << 40``.
VFIO_PCI_OFFSET_SHIFT = 40
VFIO_PCI_OFFSET_MASK = (1 << VFIO_PCI_OFFSET_SHIFT) - 1
VFIO_PCI_NUM_REGIONS = 9  # BAR0-5, ROM, config, VGA
VFIO_PCI_NUM_IRQS = 5  # INTx, MSI, MSI-X, ERR, REQ
VFIO_PCI_ROM_REGION_INDEX = 6
VFIO_PCI_CONFIG_REGION_INDEX = 7
VFIO_PCI_VGA_REGION_INDEX = 8
#: The kernel's "no interrupt mode" irq_type.
_IRQ_NONE = VFIO_PCI_NUM_IRQS
#: VFIO_PCI_IOEVENTFD_MAX
_IOEVENTFD_MAX = 1000
#: The features vfio_ioctl_device_feature serves itself for a driver with
#: migration (mig_ops) or DMA logging (log_ops) support.
_MIG_FEATURES = frozenset({
    lib.VFIO_DEVICE_FEATURE_MIGRATION, lib.VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
    lib.VFIO_DEVICE_FEATURE_MIG_DATA_SIZE, lib.VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2,
    lib.VFIO_DEVICE_FEATURE_DMA_LOGGING_START, lib.VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP,
    lib.VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT,
})

_PAGE = _mmap.PAGESIZE
_U32 = 0xFFFFFFFF

# Capability IDs the config map uses for bytes outside any capability.
_CAP_BASIC = 0x00
_CAP_INVALID = 0xFF

#: pci_cap_length (vfio_pci_config.c): 0 hides the capability from the
#: user's chain; 0xFF means "computed from the capability".
_CAP_LENGTH = {
    0x01: 8,  # PM
    0x02: 8,  # AGP
    0x03: 8,  # VPD
    0x04: 0,  # slot ID
    0x05: 0xFF,  # MSI
    0x06: 0,  # CompactPCI hot swap
    0x07: 0xFF,  # PCI-X
    0x08: 0,  # HyperTransport
    0x09: 0xFF,  # vendor specific
    0x0A: 0,  # debug port
    0x0B: 0,  # CompactPCI CRC
    0x0C: 0,  # SHPC
    0x0D: 0,  # subsystem vendor ID (bridges)
    0x0E: 0,  # AGP 8x
    0x0F: 0,  # secure device
    0x10: 0xFF,  # PCI Express
    0x11: 12,  # MSI-X
    0x12: 0xFF,  # SATA
    0x13: 6,  # advanced features
}
#: pci_ext_cap_length: the extended capabilities vfio exposes.
_ECAP_LENGTH = {
    0x01: 0x2C,  # AER (up to PCI_ERR_ROOT_COMMAND)
    0x02: 0xFF,  # virtual channel
    0x03: 12,  # device serial number
    0x04: 16,  # power budgeting
    0x0B: 0xFF,  # vendor specific
    0x0D: 0xFF,  # ACS
    0x0E: 8,  # ARI
    0x0F: 8,  # ATS
    0x10: 0x40,  # SR-IOV
    0x13: 16,  # PRI
    0x15: 0xFF,  # resizable BAR
    0x18: 8,  # LTR
    0x19: 0xFF,  # secondary PCIe
    0x1B: 8,  # PASID
    0x23: 0xFF,  # DVSEC
}


def index_to_offset(index: int) -> int:
    """VFIO_PCI_INDEX_TO_OFFSET: where region ``index`` starts in the file."""
    return index << VFIO_PCI_OFFSET_SHIFT


class BusError(Exception):
    """An access through a mapping that would raise SIGBUS on Linux."""


# -- small helpers ------------------------------------------------------------------------
def _addr(arg: IoctlArg) -> int:
    if isinstance(arg, int):
        return arg
    return int(ffi.cast("uintptr_t", arg))


def _read_user(address: int, length: int) -> bytes:
    if length <= 0:
        return b""
    if address == 0:
        raise errno_error(errno.EFAULT, "NULL user pointer")
    return bytes(ffi.buffer(ffi.cast("char *", address), length))


def _write_user(address: int, data: bytes) -> None:
    if not data:
        return
    if address == 0:
        raise errno_error(errno.EFAULT, "NULL user pointer")
    ffi.memmove(ffi.cast("char *", address), data, len(data))


def _offsetofend(ctype: str, member: str) -> int:
    field_type = ffi.typeof(ctype).fields
    for name, f in field_type:
        if name == member:
            return int(f.offset) + int(ffi.sizeof(f.type))
    raise KeyError(member)


def _struct_bytes(ctype: str, **values: Any) -> bytes:
    obj = ffi.new(ctype + " *")
    for name, value in values.items():
        setattr(obj, name, value)
    return bytes(ffi.buffer(obj))


class _CapChain:
    """vfio_info_add_capability / vfio_info_cap_shift."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self._last: int | None = None

    def add(self, data: bytes) -> None:
        offset = (len(self.buf) + 7) & ~7
        self.buf.extend(b"\0" * (offset - len(self.buf)))
        if self._last is not None:
            self.buf[self._last + 4:self._last + 8] = offset.to_bytes(4, "little")
        self.buf.extend(data)
        self._last = offset

    @property
    def size(self) -> int:
        return len(self.buf)

    def shifted(self, shift: int) -> bytes:
        out = bytearray(self.buf)
        pos = 0
        while True:
            nxt = int.from_bytes(out[pos + 4:pos + 8], "little")
            if nxt:
                out[pos + 4:pos + 8] = (nxt + shift).to_bytes(4, "little")
                pos = nxt
            else:
                break
        return bytes(out)


class _Eventfd:
    """A reference to the user's eventfd (``struct eventfd_ctx``): a dup of
    the fd, so that the user closing theirs does not end it."""

    def __init__(self, fd: int) -> None:
        # eventfd_ctx_fdget: EBADF for a closed fd, EINVAL when not an eventfd
        try:
            st = os.fstat(fd)
        except OSError:
            raise errno_error(errno.EBADF, f"fd {fd} is not open") from None
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        if target != "anon_inode:[eventfd]" or stat.S_ISREG(st.st_mode):
            raise errno_error(errno.EINVAL, f"fd {fd} is not an eventfd")
        self.fd = os.dup(fd)
        self.closed = False

    def signal(self) -> None:
        if self.closed:
            return
        try:
            os.eventfd_write(self.fd, 1)
        except BlockingIOError:  # pragma: no cover - counter saturated
            pass

    def readable(self) -> bool:
        if self.closed:
            return False
        ready, _, _ = select.select([self.fd], [], [], 0)
        return bool(ready)

    def consume(self) -> bool:
        """Read the counter if it is non-zero (a virqfd's wakeup)."""
        if not self.readable():
            return False
        try:
            os.eventfd_read(self.fd)
        except BlockingIOError:
            return False
        return True

    def put(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.fd)


@dataclass
class _Perm:
    """A permission table for one capability (``struct perm_bits``)."""

    virt: bytearray
    write: bytearray
    read_kind: str = "default"  # default | direct | raw | basic | msi
    write_kind: str = "default"  # default | none | raw | basic | msi | pm | exp


def _perm(size: int, read_kind: str = "default", write_kind: str = "default") -> _Perm:
    size = (size + 3) & ~3
    return _Perm(bytearray(size), bytearray(size), read_kind, write_kind)


def _p_set(perm: _Perm, offset: int, width: int, virt: int, write: int) -> None:
    for i in range(width):
        perm.virt[offset + i] = (virt >> (8 * i)) & 0xFF
        perm.write[offset + i] = (write >> (8 * i)) & 0xFF


def _basic_perm() -> _Perm:
    """init_pci_cap_basic_perm."""
    p = _perm(PCI_STD_HEADER_SIZEOF, "basic", "basic")
    _p_set(p, 0x00, 2, 0xFFFF, 0)  # vendor ID: virtualized
    _p_set(p, 0x02, 2, 0xFFFF, 0)  # device ID
    _p_set(p, PCI_COMMAND, 2, PCI_COMMAND_INTX_DISABLE, 0xFFFF)
    _p_set(p, PCI_STATUS, 2, PCI_STATUS_CAP_LIST, 0)
    _p_set(p, 0x0C, 1, 0, 0xFF)  # cache line size
    _p_set(p, 0x0D, 1, 0, 0xFF)  # latency timer
    _p_set(p, 0x0F, 1, 0, 0xFF)  # BIST
    for i in range(6):
        _p_set(p, PCI_BASE_ADDRESS_0 + 4 * i, 4, _U32, _U32)
    _p_set(p, PCI_ROM_ADDRESS, 4, _U32, _U32)
    _p_set(p, PCI_CAPABILITY_LIST, 1, 0xFF, 0)
    _p_set(p, PCI_INTERRUPT_LINE, 1, 0xFF, 0xFF)
    _p_set(p, PCI_INTERRUPT_PIN, 1, 0xFF, 0)
    return p


def _pm_perm() -> _Perm:
    """init_pci_cap_pm_perm."""
    p = _perm(8, "default", "pm")
    _p_set(p, 1, 1, 0xFF, 0)  # next pointer
    _p_set(p, PCI_PM_PMC, 2, 0xF800, 0)  # PME_Support virtualized
    _p_set(p, PCI_PM_CTRL, 4, PCI_PM_CTRL_PME_ENABLE | PCI_PM_CTRL_PME_STATUS,
           ~(PCI_PM_CTRL_PME_ENABLE | PCI_PM_CTRL_PME_STATUS | PCI_PM_CTRL_STATE_MASK) & _U32)
    return p


def _msi_perm(length: int, flags: int) -> _Perm:
    """init_pci_cap_msi_perm."""
    p = _perm(length, "msi", "msi")
    _p_set(p, 1, 1, 0xFF, 0)
    _p_set(p, PCI_MSI_FLAGS, 1, 0xFF, 0xFF)
    _p_set(p, PCI_MSI_ADDRESS_LO, 4, _U32, _U32)
    if flags & PCI_MSI_FLAGS_64BIT:
        _p_set(p, PCI_MSI_ADDRESS_HI, 4, _U32, _U32)
        _p_set(p, PCI_MSI_DATA_64, 2, 0xFFFF, 0xFFFF)
        if flags & PCI_MSI_FLAGS_MASKBIT:
            _p_set(p, PCI_MSI_MASK_64, 4, 0, _U32)
            _p_set(p, PCI_MSI_PENDING_64, 4, 0, 0)
    else:
        _p_set(p, PCI_MSI_DATA_32, 2, 0xFFFF, 0xFFFF)
        if flags & PCI_MSI_FLAGS_MASKBIT:
            _p_set(p, PCI_MSI_MASK_32, 4, 0, _U32)
            _p_set(p, PCI_MSI_PENDING_32, 4, 0, 0)
    return p


def _exp_perm(length: int) -> _Perm:
    """init_pci_cap_exp_perm."""
    p = _perm(length, "default", "exp")
    _p_set(p, 1, 1, 0xFF, 0)
    # FLR and MRRS are virtualized (handled by the write function), MPS too;
    # phantom functions may not be written.
    _p_set(p, PCI_EXP_DEVCTL, 2, PCI_EXP_DEVCTL_BCR_FLR | 0x00E0 | 0x7000, ~0x0200 & 0xFFFF)
    _p_set(p, PCI_EXP_DEVCTL2, 2, 0, ~0x0020 & 0xFFFF)  # ARI forwarding is the host's
    return p


def _aer_perm() -> _Perm:
    """init_pci_ext_cap_err_perm."""
    p = _perm(0x2C, "default", "default")
    _p_set(p, 0, 4, _U32, 0)  # header (next pointer) virtualized
    _p_set(p, 4, 4, 0, _U32)  # uncorrectable status (RW1C)
    _p_set(p, 8, 4, 0, _U32)  # uncorrectable mask
    _p_set(p, 12, 4, 0, _U32)  # uncorrectable severity
    _p_set(p, 16, 4, 0, _U32)  # correctable status
    _p_set(p, 20, 4, 0, _U32)  # correctable mask
    _p_set(p, 24, 4, 0, 0x00000140)  # ECRC generation/check enable
    return p


# -- the per-device state ------------------------------------------------------------------
@dataclass
class _IoEventfd:
    bar: int
    pos: int
    data: int
    count: int
    eventfd: _Eventfd


@dataclass
class _Saved:
    """pci_save_state: what pci_restore_state writes back."""

    config: bytes
    msix_table: bytes | None
    pm_state: int = 0


@dataclass
class _Intx:
    trigger: _Eventfd | None = None
    masked: bool = False
    unmask_fd: _Eventfd | None = None


_CORES: "weakref.WeakKeyDictionary[Any, VfioPciCore]" = weakref.WeakKeyDictionary()


def _save_state(model: DeviceModel) -> _Saved:
    """pci_save_state."""
    table = bytes(model.msix.table) if model.msix is not None else None
    return _Saved(bytes(model.config), table, model.power_state)


def _restore_state(model: DeviceModel, saved: _Saved) -> None:
    """pci_restore_state: the saved header, capabilities and MSI/MSI-X
    state go back (the status register is left alone)."""
    status = model.config[PCI_STATUS:PCI_STATUS + 2]
    old_cmd = model.command
    model.config[:] = saved.config
    model.config[PCI_STATUS:PCI_STATUS + 2] = status
    if model.pcie_offset is not None:
        pos = model.pcie_offset + PCI_EXP_DEVCTL
        value = model.config_word(pos) & ~PCI_EXP_DEVCTL_BCR_FLR
        model.config[pos:pos + 2] = value.to_bytes(2, "little")
    if model.msix is not None and saved.msix_table is not None:
        model.msix.table[:] = saved.msix_table
    model.refresh_intx()
    if old_cmd != model.command:
        model.command_changed(old_cmd, model.command)


def core_of(pdev: PciDevice) -> VfioPciCore | None:
    """The vfio-pci state of ``pdev`` while any of its files is open."""
    return _CORES.get(pdev)


def inject_error(pdev: PciDevice) -> bool:
    """Report an AER error on ``pdev`` (vfio_pci_core_aer_err_detected):
    signals the ERR eventfd the user registered; returns whether one was."""
    core = _CORES.get(pdev)
    if core is None or core.err_trigger is None:
        return False
    core.err_trigger.signal()
    return True


class VfioPciCore:
    """What vfio-pci keeps per device (``struct vfio_pci_core_device``)."""

    def __init__(self, kernel: FakeBackend, pdev: PciDevice) -> None:
        model = getattr(pdev, "model", None)
        if not isinstance(model, DeviceModel):
            raise errno_error(errno.ENODEV, f"{pdev.bdf} has no device model")
        self.kernel = kernel
        self.pdev = pdev
        self.model: DeviceModel = model
        self.files: list[VfioDeviceFile] = []
        self.open_count = 0
        self.cdev_opened = False
        # vfio_device's iommufd binding (cdev path, or group path with an iommufd)
        self.iommufd: Any = None
        self.devid: int | None = None
        self.iommufd_attached = False
        self.pasids: set[int] = set()
        # set up by vfio_pci_core_enable
        self.reset_works = False
        self.needs_reset = False
        self.pci_2_3 = True
        self.saved: _Saved | None = None
        self.vconfig = bytearray()
        self.config_map = bytearray()
        self.cap_start: dict[int, int] = {}
        self.perms: dict[tuple[bool, int], _Perm] = {}
        self.msi_perm: _Perm | None = None
        self.msi_qmax = 0
        self.bardirty = True
        self.msix_bar = 0xFF
        self.msix_offset = 0
        self.msix_size = 0
        #: VFIO_REGION_INFO_CAP_MSIX_MAPPABLE is reported (Linux >= 4.16 on
        #: every platform with interrupt remapping); when False the MSI-X
        #: table pages are excluded through a sparse mmap capability and
        #: cannot be mapped, as older kernels did.
        self.msix_mappable = True
        self.bar_mmap_supported: dict[int, bool] = {}
        # interrupts (vfio_pci_intrs.c)
        self.irq_type = _IRQ_NONE
        self.intx_ctx = _Intx()
        self.virq_disabled = False
        self.msi_vectors: set[int] = set()  # allocated vectors
        self.msi_triggers: dict[int, _Eventfd] = {}
        self.err_trigger: _Eventfd | None = None
        self.req_trigger: _Eventfd | None = None
        self.ioeventfds: list[_IoEventfd] = []
        # power management
        self.pm_runtime_engaged = False
        self.pm_wake_eventfd: _Eventfd | None = None
        self.pm_intx_masked = False
        self.suspended = False
        self.pm_save: _Saved | None = None
        self.needs_pm_restore = False
        #: Live mappings of BARs (they keep the device open).
        self.maps: list[MemoryMap] = []
        self._request_hook: Callable[[], None] | None = None
        #: The migration ops of a variant driver, for a model that declares
        #: migration (``model_migration``); None for plain vfio-pci.
        self.migration: _MigrationDriver | None = None
        if isinstance(model, MigratableDevice) and model.migration is not None:
            self.migration = _MigrationDriver(self, model, model.migration)

    @property
    def system(self) -> Any:
        """The :class:`~pyvfio.fake.system.System` of the device."""
        return self.kernel.system

    # -- open / close (vfio_df_open, vfio_pci_core_enable / _disable) -------------
    def first_open(self) -> None:
        """vfio_pci_open_device: vfio_pci_core_enable + finish_enable."""
        self.model.irq_sink = self
        self._enable()

    def last_close(self) -> None:
        """vfio_pci_core_close_device (after the variant driver's close)."""
        if self.migration is not None:
            self.migration.close()
        self._disable()
        if self.err_trigger is not None:
            self.err_trigger.put()
            self.err_trigger = None
        if self.req_trigger is not None:
            self.req_trigger.put()
            self.req_trigger = None
        if self.model.irq_sink is self:
            self.model.irq_sink = None

    def _phys_cmd(self) -> int:
        return self.model.config_word(PCI_COMMAND)

    def _write_phys_cmd(self, value: int) -> None:
        self.model.config_write(PCI_COMMAND, (value & 0xFFFF).to_bytes(2, "little"))

    def _enable(self) -> None:
        """vfio_pci_core_enable."""
        model = self.model
        self.suspended = False
        if model.pm_offset is not None:
            ctrl = model.config_word(model.pm_offset + PCI_PM_CTRL)
            # vfio_pci_probe_power_state
            self.needs_pm_restore = not ctrl & PCI_PM_CTRL_NO_SOFT_RESET
            if ctrl & PCI_PM_CTRL_STATE_MASK:
                self._set_phys_power(0)
        # "Don't allow our initial saved state to include busmaster"
        self._write_phys_cmd(self._phys_cmd() & ~PCI_COMMAND_MASTER)
        # pci_enable_device: decode the resources the device has
        cmd = self._phys_cmd()
        if any(not b.is_io for b in model.bars.values()):
            cmd |= PCI_COMMAND_MEMORY
        if any(b.is_io for b in model.bars.values()):
            cmd |= PCI_COMMAND_IO
        self._write_phys_cmd(cmd)
        # pci_try_reset_function
        self.reset_works = self._try_reset_function()
        self.saved = self._save_state()
        if self.pci_2_3 and self._phys_cmd() & PCI_COMMAND_INTX_DISABLE:
            self._write_phys_cmd(self._phys_cmd() & ~PCI_COMMAND_INTX_DISABLE)
        self._config_init()
        if model.msix is not None:
            self.msix_bar = model.msix.table_bar
            self.msix_offset = model.msix.table_offset
            self.msix_size = model.msix.vectors * PCI_MSIX_ENTRY_SIZE
        else:
            self.msix_bar = 0xFF
        self._probe_mmaps()

    def _disable(self) -> None:
        """vfio_pci_core_disable."""
        self._runtime_pm_exit()
        self._resume()
        self._set_power_state(0)
        self._write_phys_cmd(self._phys_cmd() & ~PCI_COMMAND_MASTER)
        self.set_irqs(lib.VFIO_IRQ_SET_DATA_NONE | lib.VFIO_IRQ_SET_ACTION_TRIGGER, self.irq_type, 0, 0, b"")
        for ioe in self.ioeventfds:
            ioe.eventfd.put()
        self.ioeventfds.clear()
        self.virq_disabled = False
        self.needs_reset = True
        saved = self.saved
        self.saved = None
        self._write_phys_cmd(PCI_COMMAND_INTX_DISABLE)
        if self.reset_works:
            if self._reset_function_locked():
                self.needs_reset = False
        if saved is not None:
            self._restore_state(saved)
        # pci_disable_device clears bus mastering
        self._write_phys_cmd(self._phys_cmd() & ~PCI_COMMAND_MASTER)

    def _probe_mmaps(self) -> None:
        """vfio_pci_probe_mmaps."""
        self.bar_mmap_supported = {}
        for index, bar in self.model.bars.items():
            ok = not bar.is_io and bar.mmappable
            if ok and bar.size < _PAGE:
                ok = bar.address % _PAGE == 0
            self.bar_mmap_supported[index] = ok

    # -- state save/restore and resets --------------------------------------------
    def _save_state(self) -> _Saved:
        return _save_state(self.model)

    def _restore_state(self, saved: _Saved) -> None:
        _restore_state(self.model, saved)

    def _probe_reset_methods(self) -> list[str]:
        """The reset methods that work for this device: those enabled in its
        sysfs ``reset_method`` that fit its capabilities and position
        (pci_init_reset_methods; an emptied list means no reset)."""
        return self.pdev.system.sysfs.enabled_reset_methods(self.pdev)

    def _reset_function_locked(self) -> bool:
        """__pci_reset_function_locked: the first working method resets the
        function (every method ends in the model's reset)."""
        if not self._probe_reset_methods():
            return False
        self.model.reset()
        self._reset_done()
        return True

    def _reset_done(self) -> None:
        """The PCI core's reset_done callback (a variant driver's
        err_handler): migration returns to RUNNING."""
        if self.migration is not None:
            self.migration.reset_done()

    def _try_reset_function(self) -> bool:
        """pci_try_reset_function: save, reset, restore."""
        if not self._probe_reset_methods():
            return False
        saved = self._save_state()
        self._write_phys_cmd(PCI_COMMAND_INTX_DISABLE)
        self.model.reset()
        self._restore_state(saved)
        self._reset_done()
        return True

    def _set_phys_power(self, state: int) -> None:
        model = self.model
        if model.pm_offset is None:
            return
        pos = model.pm_offset + PCI_PM_CTRL
        ctrl = (model.config_word(pos) & ~PCI_PM_CTRL_STATE_MASK & ~PCI_PM_CTRL_PME_STATUS) | state
        model.config_write(pos, ctrl.to_bytes(2, "little"))

    def _set_power_state(self, state: int) -> None:
        """vfio_pci_set_power_state."""
        model = self.model
        if model.pm_offset is None:
            return
        current = model.power_state
        if state == current:
            return
        if self.needs_pm_restore and current < 3 <= state:
            self.pm_save = self._save_state()
        self._set_phys_power(state)
        if self.needs_pm_restore and current >= 3 and state == 0 and self.pm_save is not None:
            saved, self.pm_save = self.pm_save, None
            self._restore_state(saved)

    # -- runtime PM (low power features) ---------------------------------------------
    def _runtime_pm_exit(self) -> None:
        """__vfio_pci_runtime_pm_exit."""
        if self.pm_runtime_engaged:
            self.pm_runtime_engaged = False
            if self.pm_wake_eventfd is not None:
                self.pm_wake_eventfd.put()
                self.pm_wake_eventfd = None

    def _suspend(self) -> None:
        """vfio_pci_core_runtime_suspend + the PCI core's D3hot entry."""
        if self.suspended:
            return
        self.pm_intx_masked = self.irq_type == IRQ_INTX and self._intx_mask()
        self.suspended = True
        self.pm_save = self._save_state()
        self._set_phys_power(3)

    def _resume(self) -> None:
        """vfio_pci_core_runtime_resume (after the PCI core's D0 entry)."""
        if not self.suspended:
            return
        self.suspended = False
        self._set_phys_power(0)
        if self.pm_save is not None:
            saved, self.pm_save = self.pm_save, None
            self._restore_state(saved)
        if self.pm_wake_eventfd is not None:
            self.pm_wake_eventfd.signal()
            self._runtime_pm_exit()
        if self.pm_intx_masked:
            self._intx_unmask()
            self.pm_intx_masked = False

    def pm_get(self) -> None:
        """vfio_device_pm_runtime_get: the device is resumed for the call."""
        self._resume()

    def pm_put(self) -> None:
        """vfio_device_pm_runtime_put: idle again; suspends while the user
        allowed low power."""
        if self.pm_runtime_engaged:
            self._suspend()

    # -- config space virtualisation (vfio_pci_config.c) --------------------------
    def _config_init(self) -> None:
        """vfio_config_init + vfio_cap_init + vfio_ecap_init."""
        model = self.model
        size = model.config_size
        self.vconfig = bytearray(model.config)
        self.config_map = bytearray([_CAP_BASIC] * PCI_STD_HEADER_SIZEOF + [_CAP_INVALID] * (size - PCI_STD_HEADER_SIZEOF))
        self.cap_start = {}
        self.perms = {(False, _CAP_BASIC): _basic_perm()}
        self.bardirty = True
        if model.interrupt_pin == 0:
            self.vconfig[PCI_INTERRUPT_PIN] = 0
        self._cap_init()
        if size > PCI_CFG_SPACE_SIZE:
            self._ecap_init()

    def _mark(self, pos: int, length: int, cap_id: int) -> None:
        for i in range(pos, min(pos + length, len(self.config_map))):
            self.config_map[i] = cap_id
            self.cap_start[i] = pos

    def _cap_init(self) -> None:
        """vfio_cap_init: map every capability, hide the ones vfio does not
        expose by unlinking them from the virtual chain."""
        model = self.model
        vc = self.vconfig
        if not model.config_word(PCI_STATUS) & PCI_STATUS_CAP_LIST:
            return
        prev = PCI_CAPABILITY_LIST
        pos = model.config[PCI_CAPABILITY_LIST] & ~3
        caps = 0
        loops = 0
        while pos and loops < 48:
            loops += 1
            cap = model.config[pos]
            nxt = model.config[pos + 1] & ~3
            length = _CAP_LENGTH.get(cap, 0)
            if length == 0xFF:
                length = self._cap_len(cap, pos)
            if not length:
                vc[prev] = nxt  # hide: the previous pointer skips it
                pos = nxt
                continue
            self._mark(pos, length, cap)
            if cap == PCI_CAP_ID_MSI:
                flags = model.config_word(pos + PCI_MSI_FLAGS)
                self.msi_perm = _msi_perm(length, flags)
                self.msi_qmax = (flags & PCI_MSI_FLAGS_QMASK) >> 1
            elif cap == PCI_CAP_ID_PM:
                self.perms[(False, cap)] = _pm_perm()
                # vfio_update_pm_vconfig_bytes: no PME for the user
                pmc = int.from_bytes(vc[pos + PCI_PM_PMC:pos + PCI_PM_PMC + 2], "little") & ~0xF800
                vc[pos + PCI_PM_PMC:pos + PCI_PM_PMC + 2] = pmc.to_bytes(2, "little")
                ctrl = int.from_bytes(vc[pos + PCI_PM_CTRL:pos + PCI_PM_CTRL + 2], "little")
                ctrl &= ~(PCI_PM_CTRL_PME_ENABLE | PCI_PM_CTRL_PME_STATUS)
                vc[pos + PCI_PM_CTRL:pos + PCI_PM_CTRL + 2] = ctrl.to_bytes(2, "little")
            elif cap == PCI_CAP_ID_EXP:
                self.perms[(False, cap)] = _exp_perm(length)
            elif cap == PCI_CAP_ID_VNDR:
                self.perms[(False, cap)] = _perm(length, "direct", "raw")
            else:
                self.perms.setdefault((False, cap), _perm(length, "direct", "none"))
            caps += 1
            prev = pos + 1
            pos = nxt
        if not caps:
            # no capability left: the list is empty
            status = int.from_bytes(vc[PCI_STATUS:PCI_STATUS + 2], "little") & ~PCI_STATUS_CAP_LIST
            vc[PCI_STATUS:PCI_STATUS + 2] = status.to_bytes(2, "little")
            vc[PCI_CAPABILITY_LIST] = 0

    def _cap_len(self, cap: int, pos: int) -> int:
        """vfio_cap_len for the variable-length capabilities."""
        model = self.model
        if cap == PCI_CAP_ID_MSI:
            flags = model.config_word(pos + PCI_MSI_FLAGS)
            length = PCI_MSI_MASK_32
            if flags & PCI_MSI_FLAGS_64BIT:
                length += 4
            if flags & PCI_MSI_FLAGS_MASKBIT:
                length += 10
            return length
        if cap == PCI_CAP_ID_VNDR:
            return model.config[pos + 2]
        if cap == PCI_CAP_ID_EXP:
            flags = model.config_word(pos + 2)
            return 0x3C if flags & 0xF >= 2 else 20
        return 0

    def _ecap_init(self) -> None:
        """vfio_ecap_init: expose the known extended capabilities."""
        model = self.model
        vc = self.vconfig
        epos = PCI_CFG_SPACE_SIZE
        prev: int | None = None
        exposed = 0
        loops = 0
        while epos and loops < 480:
            loops += 1
            header = model.config_dword(epos)
            if header in (0, _U32):
                break
            ecap = header & 0xFFFF
            nxt = (header >> 20) & 0xFFC
            length = _ECAP_LENGTH.get(ecap, 0)
            if length == 0xFF:
                length = 0x10
            if not length:
                if prev is not None:
                    ph = int.from_bytes(vc[prev:prev + 4], "little")
                    ph = (ph & 0xFFFFF) | (nxt << 20)
                    vc[prev:prev + 4] = ph.to_bytes(4, "little")
                else:
                    # the first capability cannot move: it becomes an
                    # empty header pointing at the next one
                    vc[epos:epos + 4] = (nxt << 20).to_bytes(4, "little")
                    self._mark(epos, 4, _CAP_INVALID - 1)
                    self.perms[(True, _CAP_INVALID - 1)] = _perm(4, "direct", "none")
                    prev = epos
                epos = nxt
                continue
            self._mark(epos, length, ecap)
            if ecap == PCI_EXT_CAP_ID_ERR:
                self.perms[(True, ecap)] = _aer_perm()
            elif ecap in (0x0B, 0x23):
                self.perms[(True, ecap)] = _perm(length, "direct", "raw")
            else:
                self.perms.setdefault((True, ecap), _perm(length, "direct", "none"))
            exposed += 1
            prev = epos
            epos = nxt
        if not exposed and prev is None:
            vc[PCI_CFG_SPACE_SIZE:PCI_CFG_SPACE_SIZE + 4] = b"\0\0\0\0"

    def _phys_read(self, pos: int, count: int) -> int:
        """vfio_user_config_read: all-ones while the device is unreachable."""
        return int.from_bytes(self.model.config_read(pos, count), "little")

    def _phys_write(self, pos: int, count: int, value: int) -> None:
        self.model.config_write(pos, (value & ((1 << (8 * count)) - 1)).to_bytes(count, "little"))

    def _vget(self, pos: int, count: int) -> int:
        return int.from_bytes(self.vconfig[pos:pos + count], "little")

    def _vset(self, pos: int, count: int, value: int) -> None:
        self.vconfig[pos:pos + count] = (value & ((1 << (8 * count)) - 1)).to_bytes(count, "little")

    def config_rw(self, pos: int, data: bytes | None, count: int) -> bytes | int:
        """vfio_pci_config_rw: aligned chunks, each within one capability."""
        size = self.model.config_size
        if pos < 0 or pos >= size or pos + count > size:
            # vfio_config_do_rw: EFAULT outside the config space
            raise errno_error(errno.EFAULT, f"config access at {pos:#x}+{count}")
        out = bytearray()
        done = 0
        while done < count:
            p = pos + done
            remaining = count - done
            # vfio_pci_cap_remaining_dword
            cap = self.config_map[p]
            i = 1
            while (p + i) % 4 and p + i < size and self.config_map[p + i] == cap:
                i += 1
            n = min(remaining, i)
            if n >= 4 and p % 4 == 0:
                n = 4
            elif n >= 2 and p % 2 == 0:
                n = 2
            else:
                n = 1
            if data is None:
                out += self._config_do_read(p, n).to_bytes(n, "little")
            else:
                self._config_do_write(p, n, int.from_bytes(data[done:done + n], "little"))
            done += n
        return bytes(out) if data is None else done

    def _perm_for(self, pos: int) -> tuple[_Perm | None, int, int]:
        cap = self.config_map[pos]
        if cap == _CAP_INVALID:
            return None, pos, cap
        if pos >= PCI_CFG_SPACE_SIZE:
            perm = self.perms.get((True, cap)) or _perm(16, "direct", "none")
            return perm, self.cap_start.get(pos, pos), cap
        if cap == _CAP_BASIC:
            return self.perms[(False, _CAP_BASIC)], 0, cap
        if cap == PCI_CAP_ID_MSI and self.msi_perm is not None:
            return self.msi_perm, self.cap_start[pos], cap
        perm = self.perms.get((False, cap)) or _perm(16, "direct", "none")
        return perm, self.cap_start[pos], cap

    def _config_do_read(self, pos: int, count: int) -> int:
        perm, start, cap = self._perm_for(pos)
        if perm is None:
            return self._phys_read(pos, count)  # unassigned_perms: raw
        offset = pos - start
        if perm.read_kind == "direct":
            return self._direct_read(pos, count, offset)
        if perm.read_kind == "basic" and PCI_BASE_ADDRESS_0 <= offset < PCI_CAPABILITY_LIST:
            self._bar_fixup()
        if perm.read_kind == "msi" and offset <= PCI_MSI_FLAGS < offset + count + 1:
            # vfio_msi_config_read: report msi_qmax as the capable count
            fpos = start + PCI_MSI_FLAGS
            flags = (self._vget(fpos, 2) & ~PCI_MSI_FLAGS_QMASK) | (self.msi_qmax << 1)
            self._vset(fpos, 2, flags)
        return self._default_read(pos, count, perm, offset)

    def _default_read(self, pos: int, count: int, perm: _Perm, offset: int) -> int:
        """vfio_default_config_read."""
        val = self._vget(pos, count)
        virt = int.from_bytes(perm.virt[offset:offset + count].ljust(count, b"\0"), "little")
        if virt != (1 << (8 * count)) - 1:
            phys = self._phys_read(pos, count)
            val = (phys & ~virt) | (val & virt)
        return val

    def _direct_read(self, pos: int, count: int, offset: int) -> int:
        """vfio_direct_config_read: raw, with the capability header from vconfig."""
        raw = bytearray(self._phys_read(pos, count).to_bytes(count, "little"))
        if pos >= PCI_CFG_SPACE_SIZE:
            for i in range(count):
                if offset + i < 4:
                    raw[i] = self.vconfig[pos + i]
        elif pos >= PCI_STD_HEADER_SIZEOF:
            if offset == 0 and count > 1:
                raw[0:2] = self.vconfig[pos:pos + 2]
            elif offset == 1:
                raw[0] = self.vconfig[pos]
        return int.from_bytes(raw, "little")

    def _default_write(self, pos: int, count: int, perm: _Perm, offset: int, val: int) -> None:
        """vfio_default_config_write."""
        write = int.from_bytes(perm.write[offset:offset + count].ljust(count, b"\0"), "little")
        if not write:
            return
        virt = int.from_bytes(perm.virt[offset:offset + count].ljust(count, b"\0"), "little")
        if write & virt:
            v = self._vget(pos, count)
            v = (v & ~(write & virt)) | (val & write & virt)
            self._vset(pos, count, v)
        if write & ~virt:
            phys = self._phys_read(pos, count)
            phys = (phys & ~(write & ~virt)) | (val & write & ~virt)
            self._phys_write(pos, count, phys)

    def _config_do_write(self, pos: int, count: int, val: int) -> None:
        perm, start, cap = self._perm_for(pos)
        if perm is None:
            self._phys_write(pos, count, val)  # unassigned_perms: raw
            return
        offset = pos - start
        kind = perm.write_kind
        if kind == "none":
            return
        if kind == "raw":
            self._phys_write(pos, count, val)
            return
        if kind == "basic":
            self._basic_write(pos, count, perm, offset, val)
        elif kind == "msi":
            self._msi_write(pos, count, perm, offset, val, start)
        elif kind == "pm":
            self._default_write(pos, count, perm, offset, val)
            if offset == PCI_PM_CTRL:
                # vfio_pm_config_write: the kernel changes the power state
                state = val & PCI_PM_CTRL_STATE_MASK
                if state in (0, 3):
                    self._set_power_state(state)
        elif kind == "exp":
            self._exp_write(pos, count, perm, offset, val, start)
        else:
            self._default_write(pos, count, perm, offset, val)

    def _basic_write(self, pos: int, count: int, perm: _Perm, offset: int, val: int) -> None:
        """vfio_basic_config_write."""
        new_cmd = 0
        if offset == PCI_COMMAND:
            new_cmd = val & 0xFFFF
            phys_cmd = self._phys_cmd()
            virt_cmd = self._vget(PCI_COMMAND, 2)
            # a backdoor reset cleared the decode bits: restore the BARs first
            if ((new_cmd & PCI_COMMAND_MEMORY and virt_cmd & PCI_COMMAND_MEMORY and not phys_cmd & PCI_COMMAND_MEMORY)
                    or (new_cmd & PCI_COMMAND_IO and virt_cmd & PCI_COMMAND_IO and not phys_cmd & PCI_COMMAND_IO)):
                self._bar_restore()
        self._default_write(pos, count, perm, offset, val)
        if offset == PCI_COMMAND:
            mask = PCI_COMMAND_MEMORY | PCI_COMMAND_IO
            self._vset(PCI_COMMAND, 2, (self._vget(PCI_COMMAND, 2) & ~mask) | (new_cmd & mask))
        if PCI_COMMAND <= offset <= PCI_COMMAND + 1:
            # emulate INTx disable
            virt_intx_disable = bool(self._vget(PCI_COMMAND, 2) & PCI_COMMAND_INTX_DISABLE)
            if virt_intx_disable and not self.virq_disabled:
                self.virq_disabled = True
                self._intx_mask()
            elif not virt_intx_disable and self.virq_disabled:
                self.virq_disabled = False
                self._intx_unmask()
        if PCI_BASE_ADDRESS_0 <= offset < PCI_CAPABILITY_LIST:
            self.bardirty = True

    def _bar_restore(self) -> None:
        """vfio_bar_restore: put the host's BAR addresses back."""
        if self.saved is None:
            return
        for i in range(6):
            reg = PCI_BASE_ADDRESS_0 + 4 * i
            self.model.config[reg:reg + 4] = self.saved.config[reg:reg + 4]

    def _bar_fixup(self) -> None:
        """vfio_bar_fixup: the user's BAR values reflect sizes and flags."""
        if not self.bardirty:
            return
        model = self.model
        i = 0
        while i < 6:
            reg = PCI_BASE_ADDRESS_0 + 4 * i
            bar = model.bars.get(i)
            if bar is None:
                self._vset(reg, 4, 0)  # unimplemented
                i += 1
                continue
            mask = ~(bar.size - 1)
            value = (self._vget(reg, 4) & mask & _U32) | bar.flag_bits
            self._vset(reg, 4, value)
            if bar.is_64bit:
                self._vset(reg + 4, 4, self._vget(reg + 4, 4) & (mask >> 32) & _U32)
                i += 1
            i += 1
        self._vset(PCI_ROM_ADDRESS, 4, 0)  # no option ROM
        self.bardirty = False

    def _msi_write(self, pos: int, count: int, perm: _Perm, offset: int, val: int, start: int) -> None:
        """vfio_msi_config_write: MSI is enabled through the ioctl."""
        self._default_write(pos, count, perm, offset, val)
        if offset <= PCI_MSI_FLAGS < offset + count + 1 and offset <= PCI_MSI_FLAGS:
            fpos = start + PCI_MSI_FLAGS
            flags = self._vget(fpos, 2)
            if self.irq_type != IRQ_MSI:
                flags &= ~PCI_MSI_FLAGS_ENABLE
            if (flags & PCI_MSI_FLAGS_QSIZE) >> 4 > self.msi_qmax:
                flags = (flags & ~PCI_MSI_FLAGS_QSIZE) | (self.msi_qmax << 4)
            self._vset(fpos, 2, flags)
            self._phys_write(fpos, 2, flags)

    def _exp_write(self, pos: int, count: int, perm: _Perm, offset: int, val: int, start: int) -> None:
        """vfio_exp_config_write: FLR through the kernel's reset."""
        self._default_write(pos, count, perm, offset, val)
        cpos = start + PCI_EXP_DEVCTL
        ctrl = self._vget(cpos, 2)
        if ctrl & PCI_EXP_DEVCTL_BCR_FLR:
            self._vset(cpos, 2, ctrl & ~PCI_EXP_DEVCTL_BCR_FLR)
            cap = self._phys_read(start + PCI_EXP_DEVCAP, 4)
            if cap & PCI_EXP_DEVCAP_FLR:
                self._try_reset_function()

    # -- memory enable ---------------------------------------------------------------
    def memory_enabled(self) -> bool:
        """__vfio_pci_memory_enabled."""
        return self.model.power_state < 3 and bool(self._vget(PCI_COMMAND, 2) & PCI_COMMAND_MEMORY)

    # -- interrupts: the model's sink (IrqSink) -----------------------------------------
    def deliver(self, index: int, vector: int) -> None:
        """An MSI/MSI-X message from the device (vfio_msihandler)."""
        if index != self.irq_type:
            return
        trigger = self.msi_triggers.get(vector)
        if trigger is not None:
            trigger.signal()

    def intx(self, level: bool) -> None:
        """The INTx line changed (vfio_intx_handler on assertion)."""
        if not level or self.irq_type != IRQ_INTX:
            return
        if not self.intx_ctx.masked and self._check_and_set_intx_mask(True):
            self.intx_ctx.masked = True
            self._send_intx_eventfd()

    def _send_intx_eventfd(self) -> None:
        """vfio_send_intx_eventfd."""
        if self.irq_type == IRQ_INTX and not self.virq_disabled and self.intx_ctx.trigger is not None:
            self.intx_ctx.trigger.signal()

    def _check_and_set_intx_mask(self, mask: bool) -> bool:
        """pci_check_and_set_intx_mask: change DisINTx only when the pending
        state matches (masking: our interrupt; unmasking: nothing pending)."""
        pending = bool(self.model.config_word(PCI_STATUS) & PCI_STATUS_INTERRUPT)
        if mask != pending:
            return False
        cmd = self._phys_cmd()
        new = (cmd | PCI_COMMAND_INTX_DISABLE) if mask else (cmd & ~PCI_COMMAND_INTX_DISABLE)
        if new != cmd:
            self._write_phys_cmd(new)
        return True

    def _pci_intx(self, enable: bool) -> None:
        cmd = self._phys_cmd()
        new = (cmd & ~PCI_COMMAND_INTX_DISABLE) if enable else (cmd | PCI_COMMAND_INTX_DISABLE)
        if new != cmd:
            self._write_phys_cmd(new)

    def _intx_mask(self) -> bool:
        """vfio_pci_intx_mask; returns whether this call masked it."""
        if self.irq_type != IRQ_INTX:
            if self.pci_2_3:
                self._pci_intx(False)
            return False
        if self.intx_ctx.masked:
            return False
        self._pci_intx(False)
        self.intx_ctx.masked = True
        return True

    def _intx_unmask_handler(self) -> bool:
        """vfio_pci_intx_unmask_handler; True when the interrupt must be
        re-sent (still pending)."""
        if self.irq_type != IRQ_INTX:
            if self.pci_2_3:
                self._pci_intx(True)
            return False
        resend = False
        if self.intx_ctx.masked and not self.virq_disabled:
            resend = not self._check_and_set_intx_mask(False)
            self.intx_ctx.masked = resend
        return resend

    def _intx_unmask(self) -> None:
        """vfio_pci_intx_unmask."""
        if self._intx_unmask_handler():
            self._send_intx_eventfd()

    # -- VFIO_DEVICE_SET_IRQS (vfio_pci_set_irqs_ioctl) -------------------------------
    def irq_count(self, index: int) -> int:
        """vfio_pci_get_irq_count."""
        model = self.model
        if index == IRQ_INTX:
            return 1 if model.config[PCI_INTERRUPT_PIN] else 0
        if index == IRQ_MSI:
            if model.msi is None:
                return 0
            flags = model.config_word(model.msi.offset + PCI_MSI_FLAGS)
            return 1 << ((flags & PCI_MSI_FLAGS_QMASK) >> 1)
        if index == IRQ_MSIX:
            return model.msix.vectors if model.msix is not None else 0
        if index == IRQ_ERR:
            # Linux 7.3 offers ERR for every device (older kernels: PCIe only);
            # measured on QEMU's edu, a conventional PCI function.
            return 1
        if index == IRQ_REQ:
            return 1
        return 0

    def set_irqs(self, flags: int, index: int, start: int, count: int, data: bytes) -> int:
        """vfio_pci_set_irqs_ioctl (after validation)."""
        action = flags & lib.VFIO_IRQ_SET_ACTION_TYPE_MASK
        func: Callable[[int, int, int, bytes], int] | None = None
        if index == IRQ_INTX:
            func = {
                lib.VFIO_IRQ_SET_ACTION_MASK: self._set_intx_mask,
                lib.VFIO_IRQ_SET_ACTION_UNMASK: self._set_intx_unmask,
                lib.VFIO_IRQ_SET_ACTION_TRIGGER: self._set_intx_trigger,
            }.get(action)
        elif index in (IRQ_MSI, IRQ_MSIX):
            if action == lib.VFIO_IRQ_SET_ACTION_TRIGGER:
                func = (lambda f, s, c, d, _i=index: self._set_msi_trigger(_i, f, s, c, d))
        elif index == IRQ_ERR:
            if action == lib.VFIO_IRQ_SET_ACTION_TRIGGER:  # every device on 7.3
                func = self._set_err_trigger
        elif index == IRQ_REQ:
            if action == lib.VFIO_IRQ_SET_ACTION_TRIGGER:
                func = self._set_req_trigger
        elif index == _IRQ_NONE:
            return 0  # vfio_pci_core_disable with no interrupts set up
        if func is None:
            # vfio_pci_set_irqs_ioctl: ENOTTY for unsupported index/action pairs
            raise errno_error(errno.ENOTTY, f"action {action:#x} on IRQ index {index}")
        return func(flags, start, count, data)

    def _set_intx_mask(self, flags: int, start: int, count: int, data: bytes) -> int:
        """vfio_pci_set_intx_mask."""
        if self.irq_type != IRQ_INTX or start != 0 or count != 1:
            raise errno_error(errno.EINVAL, "INTx is not enabled or start/count is not 0/1")
        if flags & lib.VFIO_IRQ_SET_DATA_NONE:
            self._intx_mask()
        elif flags & lib.VFIO_IRQ_SET_DATA_BOOL:
            if data[0]:
                self._intx_mask()
        elif flags & lib.VFIO_IRQ_SET_DATA_EVENTFD:
            # vfio_pci_set_intx_mask: masking through an eventfd is not implemented
            raise errno_error(errno.ENOTTY, "INTx mask through an eventfd")
        return 0

    def _set_intx_unmask(self, flags: int, start: int, count: int, data: bytes) -> int:
        """vfio_pci_set_intx_unmask."""
        if self.irq_type != IRQ_INTX or start != 0 or count != 1:
            raise errno_error(errno.EINVAL, "INTx is not enabled or start/count is not 0/1")
        if flags & lib.VFIO_IRQ_SET_DATA_NONE:
            self._intx_unmask()
        elif flags & lib.VFIO_IRQ_SET_DATA_BOOL:
            if data[0]:
                self._intx_unmask()
        elif flags & lib.VFIO_IRQ_SET_DATA_EVENTFD:
            fd = int.from_bytes(data[:4], "little", signed=True)
            if self.intx_ctx.unmask_fd is not None:
                self.intx_ctx.unmask_fd.put()
                self.intx_ctx.unmask_fd = None
            if fd >= 0:
                # vfio_virqfd_enable: the eventfd unmasks when signalled
                self.intx_ctx.unmask_fd = _Eventfd(fd)
        return 0

    def _intx_enable(self, trigger: _Eventfd | None) -> None:
        """vfio_intx_enable."""
        if self.irq_type != _IRQ_NONE:
            raise errno_error(errno.EINVAL, "another interrupt type is enabled")
        if not self.model.config[PCI_INTERRUPT_PIN]:
            raise errno_error(errno.ENODEV, "the device has no INTx pin")
        self.intx_ctx = _Intx(trigger=trigger, masked=self.virq_disabled)
        self.irq_type = IRQ_INTX
        if self.pci_2_3:
            self._pci_intx(not self.intx_ctx.masked)
        # an interrupt already asserted fires as soon as the handler is set up
        if not self.intx_ctx.masked and self.model.intx_asserted:
            self.intx(True)

    def _intx_disable(self) -> None:
        """vfio_intx_disable."""
        if self.intx_ctx.unmask_fd is not None:
            self.intx_ctx.unmask_fd.put()
        if self.intx_ctx.trigger is not None:
            self.intx_ctx.trigger.put()
        self.intx_ctx = _Intx()
        self.irq_type = _IRQ_NONE

    def _set_intx_trigger(self, flags: int, start: int, count: int, data: bytes) -> int:
        """vfio_pci_set_intx_trigger."""
        is_intx = self.irq_type == IRQ_INTX
        if is_intx and not count and flags & lib.VFIO_IRQ_SET_DATA_NONE:
            self._intx_disable()
            return 0
        if not (is_intx or self.irq_type == _IRQ_NONE) or start != 0 or count != 1:
            raise errno_error(errno.EINVAL, "INTx trigger: bad state, start or count")
        if flags & lib.VFIO_IRQ_SET_DATA_EVENTFD:
            fd = int.from_bytes(data[:4], "little", signed=True)
            trigger = _Eventfd(fd) if fd >= 0 else None
            try:
                if is_intx:
                    # vfio_intx_set_signal: swap the eventfd
                    if self.intx_ctx.trigger is not None:
                        self.intx_ctx.trigger.put()
                    self.intx_ctx.trigger = trigger
                else:
                    self._intx_enable(trigger)
            except OSError:
                if trigger is not None:
                    trigger.put()
                raise
            return 0
        if not is_intx:
            raise errno_error(errno.EINVAL, "INTx is not enabled")
        if flags & lib.VFIO_IRQ_SET_DATA_NONE or (flags & lib.VFIO_IRQ_SET_DATA_BOOL and data[0]):
            self._send_intx_eventfd()  # loopback
        return 0

    def _msi_enable(self, nvec: int, msix: bool) -> None:
        """vfio_msi_enable: pci_alloc_irq_vectors on the device."""
        if self.irq_type != _IRQ_NONE:
            raise errno_error(errno.EINVAL, "another interrupt type is enabled")
        if nvec < 1:
            raise errno_error(errno.ERANGE, "no vectors requested")
        model = self.model
        if msix:
            assert model.msix is not None
            pos = model.msix.offset + PCI_MSIX_FLAGS
            ctrl = model.config_word(pos) | PCI_MSIX_FLAGS_ENABLE | PCI_MSIX_FLAGS_MASKALL
            model.config_write(pos, ctrl.to_bytes(2, "little"))
            for vector in range(nvec):
                self._msix_program(vector)
            model.config_write(pos, (ctrl & ~PCI_MSIX_FLAGS_MASKALL).to_bytes(2, "little"))
        else:
            assert model.msi is not None
            msi = model.msi
            order = (nvec - 1).bit_length()
            data_pos = msi.offset + (PCI_MSI_DATA_64 if msi.is64 else PCI_MSI_DATA_32)
            model.config_write(msi.offset + PCI_MSI_ADDRESS_LO, (0xFEE00000).to_bytes(4, "little"))
            model.config_write(data_pos, (0x4020).to_bytes(2, "little"))
            flags = (model.config_word(msi.control) & ~PCI_MSI_FLAGS_QSIZE) | (order << 4) | PCI_MSI_FLAGS_ENABLE
            model.config_write(msi.control, flags.to_bytes(2, "little"))
            self.msi_qmax = order
        # pci_intx_for_msi: INTx is disabled while MSI/MSI-X is on
        self._pci_intx(False)
        self.msi_vectors = set(range(nvec))
        self.irq_type = IRQ_MSIX if msix else IRQ_MSI

    def _msix_program(self, vector: int) -> None:
        """The host writes the message address/data of a vector (masked)."""
        msix = self.model.msix
        assert msix is not None
        entry = bytearray(16)
        entry[0:4] = (0xFEE00000).to_bytes(4, "little")
        entry[8:12] = (0x4040 + vector).to_bytes(4, "little")
        entry[12] = 1  # masked until an interrupt handler is set up
        msix.table[vector * 16:vector * 16 + 16] = entry

    def _msi_disable(self, msix: bool) -> None:
        """vfio_msi_disable."""
        for vector in sorted(self.msi_triggers):
            self._msi_set_vector_signal(vector, -1, msix)
        model = self.model
        if msix and model.msix is not None:
            pos = model.msix.offset + PCI_MSIX_FLAGS
            ctrl = model.config_word(pos) & ~(PCI_MSIX_FLAGS_ENABLE | PCI_MSIX_FLAGS_MASKALL)
            model.config_write(pos, ctrl.to_bytes(2, "little"))
            for vector in range(model.msix.vectors):
                model.msix.set_vector_masked(vector, True)
        elif model.msi is not None:
            flags = model.config_word(model.msi.control) & ~(PCI_MSI_FLAGS_ENABLE | PCI_MSI_FLAGS_QSIZE)
            model.config_write(model.msi.control, flags.to_bytes(2, "little"))
        self._pci_intx(True)
        self.msi_vectors = set()
        self.irq_type = _IRQ_NONE

    def _msi_set_vector_signal(self, vector: int, fd: int, msix: bool) -> None:
        """vfio_msi_set_vector_signal."""
        model = self.model
        old = self.msi_triggers.pop(vector, None)
        if old is not None:
            # free_irq: the vector is masked again
            if msix and model.msix is not None:
                model.msix.set_vector_masked(vector, True)
            old.put()
        if fd < 0:
            return
        if vector not in self.msi_vectors:
            if not msix:
                # pci_irq_vector: EINVAL beyond the vectors MSI was enabled with
                raise errno_error(errno.EINVAL, f"MSI vector {vector} was not allocated")
            # vfio_msi_alloc_irq: MSI-X vectors are allocated on demand
            self._msix_program(vector)
            self.msi_vectors.add(vector)
        trigger = _Eventfd(fd)
        self.msi_triggers[vector] = trigger
        if msix and model.msix is not None:
            # request_irq unmasks the vector (a pending message is delivered)
            model.bar_write(model.msix.table_bar, model.msix.table_offset + vector * 16 + 12, 4,
                            int.from_bytes(model.msix.table[vector * 16 + 12:vector * 16 + 16], "little") & ~1)

    def _msi_set_block(self, start: int, count: int, fds: list[int] | None, msix: bool) -> None:
        """vfio_msi_set_block: all or nothing."""
        j = start
        try:
            for i in range(count):
                self._msi_set_vector_signal(j, fds[i] if fds is not None else -1, msix)
                j += 1
        except OSError:
            for k in range(start, j):
                self._msi_set_vector_signal(k, -1, msix)
            raise

    def _set_msi_trigger(self, index: int, flags: int, start: int, count: int, data: bytes) -> int:
        """vfio_pci_set_msi_trigger."""
        msix = index == IRQ_MSIX
        if self.irq_type == index and not count and flags & lib.VFIO_IRQ_SET_DATA_NONE:
            self._msi_disable(msix)
            return 0
        if not (self.irq_type == index or self.irq_type == _IRQ_NONE):
            raise errno_error(errno.EINVAL, "another interrupt type is enabled")
        if flags & lib.VFIO_IRQ_SET_DATA_EVENTFD:
            fds = [int.from_bytes(data[4 * i:4 * i + 4], "little", signed=True) for i in range(count)]
            if self.irq_type == index:
                self._msi_set_block(start, count, fds, msix)
                return 0
            self._msi_enable(start + count, msix)
            try:
                self._msi_set_block(start, count, fds, msix)
            except OSError:
                self._msi_disable(msix)
                raise
            return 0
        if self.irq_type != index:
            raise errno_error(errno.EINVAL, "the interrupt type is not enabled")
        for i in range(start, start + count):
            trigger = self.msi_triggers.get(i)
            if trigger is None:
                continue
            if flags & lib.VFIO_IRQ_SET_DATA_NONE or (flags & lib.VFIO_IRQ_SET_DATA_BOOL and data[i - start]):
                trigger.signal()  # loopback
        return 0

    @staticmethod
    def _trigger_single(slot: list[_Eventfd | None], count: int, flags: int, data: bytes) -> int:
        """vfio_pci_set_ctx_trigger_single."""
        if flags & lib.VFIO_IRQ_SET_DATA_NONE:
            if slot[0] is not None:
                if count:
                    slot[0].signal()
                else:
                    slot[0].put()
                    slot[0] = None
                return 0
        elif flags & lib.VFIO_IRQ_SET_DATA_BOOL:
            if not count:
                raise errno_error(errno.EINVAL, "count 0 with DATA_BOOL")
            if data[0] and slot[0] is not None:
                slot[0].signal()
            return 0
        elif flags & lib.VFIO_IRQ_SET_DATA_EVENTFD:
            if not count:
                raise errno_error(errno.EINVAL, "count 0 with DATA_EVENTFD")
            fd = int.from_bytes(data[:4], "little", signed=True)
            if fd == -1:
                if slot[0] is not None:
                    slot[0].put()
                slot[0] = None
            elif fd >= 0:
                new = _Eventfd(fd)
                if slot[0] is not None:
                    slot[0].put()
                slot[0] = new
            return 0
        raise errno_error(errno.EINVAL, "no trigger set")

    def _set_err_trigger(self, flags: int, start: int, count: int, data: bytes) -> int:
        """vfio_pci_set_err_trigger."""
        if start != 0 or count > 1:
            raise errno_error(errno.EINVAL, "ERR: start must be 0 and count at most 1")
        slot = [self.err_trigger]
        try:
            return self._trigger_single(slot, count, flags, data)
        finally:
            self.err_trigger = slot[0]

    def _set_req_trigger(self, flags: int, start: int, count: int, data: bytes) -> int:
        """vfio_pci_set_req_trigger."""
        if start != 0 or count > 1:
            raise errno_error(errno.EINVAL, "REQ: start must be 0 and count at most 1")
        slot = [self.req_trigger]
        try:
            return self._trigger_single(slot, count, flags, data)
        finally:
            self.req_trigger = slot[0]

    def request(self, count: int) -> None:
        """vfio_pci_core_request: the driver is being unbound."""
        if self.req_trigger is not None:
            self.req_trigger.signal()

    @property
    def request_hook(self) -> Callable[[], None]:
        """What ``PciDevice.request_release`` is set to while the device is
        open: the System calls it when vfio-pci is asked to let go."""
        if self._request_hook is None:
            def hook() -> None:
                self.request(max(0, int(getattr(self.pdev, "release_requests", 1)) - 1))

            self._request_hook = hook
        return self._request_hook

    # -- eventfd-driven actions ---------------------------------------------------------
    def poll(self) -> None:
        """Run the actions of signalled virqfds (INTx unmask, ioeventfds)."""
        unmask = self.intx_ctx.unmask_fd
        if unmask is not None and unmask.consume():
            self._intx_unmask()
        for ioe in list(self.ioeventfds):
            while ioe.eventfd.consume():
                # vfio_pci_ioeventfd_handler: the write, without the memory check
                self.device_write(ioe.bar, ioe.pos, ioe.count, ioe.data)

    # -- BAR access (vfio_pci_rdwr.c) ---------------------------------------------------
    def _stopped_register(self, index: int, pos: int) -> bool:
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
        mig = self.migration
        if mig is None or not mig.stopped:
            return False
        msix = self.model.msix
        if msix is not None:
            if index == msix.table_bar and msix.table_offset <= pos < msix.table_offset + msix.table_size:
                return False
            if index == msix.pba_bar and msix.pba_offset <= pos < msix.pba_offset + msix.pba_size:
                return False
        return True

    def device_read(self, index: int, pos: int, width: int) -> int:
        """One read of the device's BAR ``index`` (all-ones for registers
        of a device migration stopped)."""
        if self._stopped_register(index, pos):
            return (1 << (8 * width)) - 1
        return self.model.bar_read(index, pos, width)

    def device_write(self, index: int, pos: int, width: int, value: int) -> None:
        """One write of the device's BAR ``index`` (dropped for registers
        of a device migration stopped)."""
        if not self._stopped_register(index, pos):
            self.model.bar_write(index, pos, width, value)

    def bar_rw(self, index: int, pos: int, data: bytes | None, count: int) -> bytes | int:
        """vfio_pci_bar_rw + vfio_pci_core_do_io_rw."""
        bar = self.model.bars.get(index)
        if bar is None:
            raise errno_error(errno.EINVAL, f"BAR{index} is not implemented")
        end = bar.size
        if pos >= end:
            raise errno_error(errno.EINVAL, f"offset {pos:#x} is beyond BAR{index}")
        count = min(count, end - pos)
        x_start = x_end = 0
        if index == self.msix_bar:
            x_start, x_end = self.msix_offset, self.msix_offset + self.msix_size
        test_mem = not bar.is_io
        out = bytearray()
        done = 0
        off = pos
        while done < count:
            remaining = count - done
            if off < x_start:
                fillable = min(remaining, x_start - off)
            elif off >= x_end:
                fillable = remaining
            else:
                fillable = 0
            if fillable >= 8 and off % 8 == 0:
                width = 8
            elif fillable >= 4 and off % 4 == 0:
                width = 4
            elif fillable >= 2 and off % 2 == 0:
                width = 2
            elif fillable:
                width = 1
            else:
                # the MSI-X table: reads fill with all-ones, writes are dropped
                filled = min(remaining, x_end - off)
                if data is None:
                    out += b"\xff" * filled
                done += filled
                off += filled
                continue
            if test_mem and not self.memory_enabled():
                # vfio_pci_iordwr*: EIO while memory decode is off
                raise errno_error(errno.EIO, "memory decode is disabled")
            if data is None:
                out += self.device_read(index, off, width).to_bytes(width, "little")
            else:
                self.device_write(index, off, width, int.from_bytes(data[done:done + width], "little"))
            done += width
            off += width
        return bytes(out) if data is None else done


class VfioDeviceFile(FakeFile):
    """An open vfio-pci device file (``struct vfio_device_file``)."""

    def __init__(self, kernel: FakeBackend, core: VfioPciCore, *, cdev: bool, group_file: Any = None) -> None:
        super().__init__(kernel)
        self.core = core
        self.pdev = core.pdev
        self.cdev = cdev
        self.group_file = group_file
        self.access_granted = False
        self.iommufd: Any = None
        self.devid: int | None = None
        self.path = (f"/dev/vfio/devices/{core.pdev.vfio_cdev_name}" if cdev
                     else f"{getattr(group_file, 'path', 'vfio-group')}:{core.pdev.bdf}")
        self._refs = 1  # the fd
        self._released = False
        self._opened = False

    def __repr__(self) -> str:
        return f"<VfioDeviceFile {self.pdev.bdf} {'cdev' if self.cdev else 'group'}>"

    # -- open / close (vfio_df_open / vfio_df_close) ------------------------------------
    def _df_open(self) -> None:
        """vfio_df_open."""
        core = self.core
        if core.open_count != 0 and self.cdev:
            # vfio_df_open: a cdev may open a device only once
            raise errno_error(errno.EINVAL, "the device is already open")
        core.open_count += 1
        if core.open_count == 1:
            try:
                self._first_open()
            except BaseException:
                core.open_count -= 1
                raise
        self._opened = True

    def _first_open(self) -> None:
        """vfio_df_device_first_open."""
        core = self.core
        if self.cdev:
            core.iommufd = self.iommufd
            core.devid = self.devid
        elif self.group_file is not None:
            iommufd = getattr(self.group_file, "iommufd", None)
            if iommufd is None:
                self.group_file.use_container(self.pdev)
            else:
                # vfio_df_iommufd_bind + the compat IOAS attach
                core.iommufd = iommufd
                core.devid = int(iommufd.bind_device(self.pdev, self))
                compat = getattr(iommufd, "compat_attach_device", None)
                if callable(compat):
                    compat(core.devid)
                    core.iommufd_attached = True
        try:
            core.first_open()
        except BaseException:
            self._undo_iommu()
            raise

    def _undo_iommu(self) -> None:
        core = self.core
        if self.cdev:
            return  # the bind ioctl unbinds
        if self.group_file is not None:
            if core.iommufd is not None:
                self._iommufd_unbind()
            else:
                self.group_file.unuse_container(self.pdev)

    def _iommufd_unbind(self) -> None:
        """vfio_iommufd_physical_unbind."""
        core = self.core
        ictx = core.iommufd
        if ictx is None or core.devid is None:
            return
        for pasid in sorted(core.pasids):
            ictx.detach_device(core.devid, pasid)
        core.pasids.clear()
        if core.iommufd_attached:
            ictx.detach_device(core.devid, None)
            core.iommufd_attached = False
        ictx.unbind_device(core.devid)
        core.iommufd = None
        core.devid = None

    def _df_close(self) -> None:
        """vfio_df_close."""
        if not self._opened:
            return
        self._opened = False
        core = self.core
        core.open_count -= 1
        if core.open_count == 0:
            core.last_close()
            if self.cdev:
                self._iommufd_unbind()
            else:
                self._undo_iommu()
            core.cdev_opened = False

    def release(self) -> None:
        """The fd closed (vfio_device_fops_release); the device closes when
        no mapping holds the file any more."""
        if self._released:
            return
        self._released = True
        self._put()

    def _put(self) -> None:
        self._refs -= 1
        if self._refs > 0:
            return
        core = self.core
        with self.system.lock:
            if self.cdev:
                if self.access_granted:
                    self._df_close()
                    vgroup = self._vgroup()
                    if vgroup is not None:
                        vgroup.unblock_group()
            else:
                self._df_close()
            if self in core.files:
                core.files.remove(self)
            if not core.files:
                if getattr(self.pdev, "request_release", None) == core.request_hook:
                    self.pdev.request_release = None
                if _CORES.get(self.pdev) is core:
                    del _CORES[self.pdev]

    def _vgroup(self) -> Any:
        group = getattr(self.pdev, "group", None)
        return getattr(group, "vfio_group", None) if group is not None else None

    # -- the ioctl switch (vfio_device_fops_unl_ioctl) ---------------------------------
    def ioctl(self, request: int, arg: IoctlArg) -> int:
        """vfio_device_fops_unl_ioctl: the VFIO_DEVICE_* ioctls (binding and
        attaching for a cdev, info, regions, IRQs, resets, features).  On a
        cdev every ioctl but VFIO_DEVICE_BIND_IOMMUFD is EINVAL until the
        device is bound to an iommufd."""
        core = self.core
        if request == lib.VFIO_DEVICE_BIND_IOMMUFD:
            return self._bind_iommufd(arg)
        if not self.access_granted:
            # vfio_device_fops_unl_ioctl: EINVAL until the cdev is bound
            raise errno_error(errno.EINVAL, "the device is not bound to an iommufd")
        core.poll()
        core.pm_get()
        try:
            if self.cdev:
                if request == lib.VFIO_DEVICE_ATTACH_IOMMUFD_PT:
                    return self._attach_pt(arg)
                if request == lib.VFIO_DEVICE_DETACH_IOMMUFD_PT:
                    return self._detach_pt(arg)
            if request == lib.VFIO_DEVICE_FEATURE:
                return self._feature(arg)
            if request == lib.VFIO_DEVICE_GET_REGION_INFO:
                return self._get_region_info(arg)
            handler = {
                lib.VFIO_DEVICE_GET_INFO: self._get_info,
                lib.VFIO_DEVICE_GET_IRQ_INFO: self._get_irq_info,
                lib.VFIO_DEVICE_SET_IRQS: self._set_irqs,
                lib.VFIO_DEVICE_RESET: self._reset,
                lib.VFIO_DEVICE_GET_PCI_HOT_RESET_INFO: self._hot_reset_info,
                lib.VFIO_DEVICE_PCI_HOT_RESET: self._hot_reset,
                lib.VFIO_DEVICE_IOEVENTFD: self._ioeventfd,
            }.get(request)
            if handler is None:
                # vfio_pci_core_ioctl: ENOTTY for anything else
                raise errno_error(errno.ENOTTY, f"ioctl {request:#x}")
            return handler(arg)
        finally:
            core.pm_put()

    # -- cdev: bind / attach / detach (device_cdev.c) --------------------------------------
    def _bind_iommufd(self, arg: IoctlArg) -> int:
        """vfio_df_ioctl_bind_iommufd."""
        address = _addr(arg)
        argsz = int.from_bytes(_read_user(address, 4), "little")
        minsz = _offsetofend("struct vfio_device_bind_iommufd", "out_devid")
        if argsz < minsz:
            raise errno_error(errno.EINVAL, "argsz too small")
        ksize = ffi.sizeof("struct vfio_device_bind_iommufd")
        raw = _read_user(address, min(argsz, ksize))
        if argsz > ksize and any(_read_user(address + ksize, argsz - ksize)):
            # copy_struct_from_user: E2BIG for a non-zero tail
            raise errno_error(errno.E2BIG, "unknown trailing fields are not zero")
        bind = ffi.new("struct vfio_device_bind_iommufd *")
        ffi.memmove(bind, raw.ljust(ksize, b"\0")[:ksize], ksize)
        if bind.iommufd < 0 or bind.flags & ~lib.VFIO_DEVICE_BIND_FLAG_TOKEN:
            raise errno_error(errno.EINVAL, "bad iommufd or flags")
        if not self.cdev:
            # vfio_df_ioctl_bind_iommufd: only for cdev files
            raise errno_error(errno.EINVAL, "BIND_IOMMUFD on a group-path device file")
        vgroup = self._vgroup()
        if vgroup is not None:
            vgroup.block_group()  # EBUSY while /dev/vfio/N is open
        try:
            if self.access_granted:
                # one device file cannot be bound twice
                raise errno_error(errno.EINVAL, "already bound")
            if bind.flags & lib.VFIO_DEVICE_BIND_FLAG_TOKEN:
                # vfio_df_check_token: copy the UUID (EFAULT for a bad
                # pointer; a short argsz leaves the pointer zero)
                _read_user(int(bind.token_uuid_ptr), 16)
                # vfio_pci_core_match_token_uuid: no token for a device that
                # is neither a PF with VFs nor a VF
                raise errno_error(errno.EINVAL, "VF token given for a device that is not a PF/VF")
            ictx: Any = self.kernel.file_or_none(int(bind.iommufd))
            if ictx is None:
                try:
                    os.fstat(int(bind.iommufd))
                except OSError:
                    raise errno_error(errno.EBADF, f"fd {bind.iommufd}") from None
            if ictx is None or not callable(getattr(ictx, "bind_device", None)):
                # iommufd_ctx_from_fd: EBADFD for a file that is not an iommufd
                raise errno_error(errno.EBADFD, f"fd {bind.iommufd} is not an iommufd")
            if self.core.open_count != 0:
                raise errno_error(errno.EINVAL, "the device is already open")
            devid = int(ictx.bind_device(self.pdev, self))
            self.iommufd = ictx
            self.devid = devid
            try:
                self._df_open()
            except BaseException:
                ictx.unbind_device(devid)
                self.iommufd = None
                self.devid = None
                self.core.iommufd = None
                self.core.devid = None
                raise
            out = ffi.offsetof("struct vfio_device_bind_iommufd", "out_devid")
            _write_user(address + out, devid.to_bytes(4, "little"))
        except BaseException:
            if vgroup is not None:
                vgroup.unblock_group()
            raise
        self.core.cdev_opened = True
        self.access_granted = True
        return 0

    def _attach_pt(self, arg: IoctlArg) -> int:
        """vfio_df_ioctl_attach_pt."""
        ctype = "struct vfio_device_attach_iommufd_pt"
        address = _addr(arg)
        minsz = _offsetofend(ctype, "pt_id")
        raw = _read_user(address, minsz)
        argsz = int.from_bytes(raw[0:4], "little")
        flags = int.from_bytes(raw[4:8], "little")
        pt_id = int.from_bytes(raw[8:12], "little")
        if argsz < minsz:
            raise errno_error(errno.EINVAL, "argsz too small")
        if flags & ~lib.VFIO_DEVICE_ATTACH_PASID:
            raise errno_error(errno.EINVAL, f"unknown flags {flags:#x}")
        pasid: int | None = None
        if flags & lib.VFIO_DEVICE_ATTACH_PASID:
            xend = _offsetofend(ctype, "pasid")
            if argsz < xend:
                raise errno_error(errno.EINVAL, "argsz does not cover pasid")
            pasid = int.from_bytes(_read_user(address + minsz, 4), "little")
        core = self.core
        ictx = core.iommufd
        # vfio_iommufd_physical_(pasid_)attach_ioas: attach or replace
        out = int(ictx.attach_device(core.devid, pt_id, pasid))
        if pasid is None:
            core.iommufd_attached = True
        else:
            core.pasids.add(pasid)
        _write_user(address + 8, out.to_bytes(4, "little"))
        return 0

    def _detach_pt(self, arg: IoctlArg) -> int:
        """vfio_df_ioctl_detach_pt."""
        ctype = "struct vfio_device_detach_iommufd_pt"
        address = _addr(arg)
        minsz = _offsetofend(ctype, "flags")
        raw = _read_user(address, minsz)
        argsz = int.from_bytes(raw[0:4], "little")
        flags = int.from_bytes(raw[4:8], "little")
        if argsz < minsz:
            raise errno_error(errno.EINVAL, "argsz too small")
        if flags & ~lib.VFIO_DEVICE_DETACH_PASID:
            raise errno_error(errno.EINVAL, f"unknown flags {flags:#x}")
        core = self.core
        if flags & lib.VFIO_DEVICE_DETACH_PASID:
            if argsz < _offsetofend(ctype, "pasid"):
                raise errno_error(errno.EINVAL, "argsz does not cover pasid")
            pasid = int.from_bytes(_read_user(address + minsz, 4), "little")
            if pasid in core.pasids:
                core.iommufd.detach_device(core.devid, pasid)
                core.pasids.discard(pasid)
            return 0
        if core.iommufd_attached:
            core.iommufd.detach_device(core.devid, None)
            core.iommufd_attached = False
        return 0

    # -- information ioctls ------------------------------------------------------------------
    def _get_info(self, arg: IoctlArg) -> int:
        """vfio_pci_ioctl_get_info."""
        info = cast_arg(arg, "struct vfio_device_info")
        minsz = _offsetofend("struct vfio_device_info", "num_irqs")
        capsz = _offsetofend("struct vfio_iommu_type1_info", "cap_offset")
        argsz = int(info.argsz)
        if argsz < minsz:
            raise errno_error(errno.EINVAL, "argsz too small")
        core = self.core
        flags = lib.VFIO_DEVICE_FLAGS_PCI
        if core.reset_works:
            flags |= lib.VFIO_DEVICE_FLAGS_RESET
        caps = _CapChain()
        atomic = self._atomic_cap()
        if atomic:
            caps.add(atomic)
        cap_offset: int | None = 0 if argsz >= capsz else None
        size = ffi.sizeof("struct vfio_device_info")
        if caps.size:
            flags |= lib.VFIO_DEVICE_FLAGS_CAPS
            if argsz < size + caps.size:
                argsz = size + caps.size
            else:
                _write_user(_addr(info) + size, caps.shifted(size))
                cap_offset = size
        info.argsz = argsz
        info.flags = flags
        info.num_regions = VFIO_PCI_NUM_REGIONS
        info.num_irqs = VFIO_PCI_NUM_IRQS
        if cap_offset is not None:
            info.cap_offset = cap_offset
        return 0

    def _atomic_cap(self) -> bytes:
        """vfio_pci_info_atomic_cap: the AtomicOp completer widths the
        device's DevCap2 reports (the root port is assumed to route them)."""
        model = self.core.model
        if model.pcie_offset is None:
            return b""
        devcap2 = model.config_dword(model.pcie_offset + PCI_EXP_DEVCAP2)
        flags = 0
        if devcap2 & PCI_EXP_DEVCAP2_ATOMIC_COMP32:
            flags |= lib.VFIO_PCI_ATOMIC_COMP32
        if devcap2 & PCI_EXP_DEVCAP2_ATOMIC_COMP64:
            flags |= lib.VFIO_PCI_ATOMIC_COMP64
        if devcap2 & PCI_EXP_DEVCAP2_ATOMIC_COMP128:
            flags |= lib.VFIO_PCI_ATOMIC_COMP128
        if not flags:
            return b""
        cap = ffi.new("struct vfio_device_info_cap_pci_atomic_comp *")
        cap.header.id = lib.VFIO_DEVICE_INFO_CAP_PCI_ATOMIC_COMP
        cap.header.version = 1
        cap.flags = flags
        return bytes(ffi.buffer(cap))

    def _get_region_info(self, arg: IoctlArg) -> int:
        """vfio_get_region_info + vfio_pci_ioctl_get_region_info."""
        info = cast_arg(arg, "struct vfio_region_info")
        minsz = _offsetofend("struct vfio_region_info", "offset")
        argsz = int(info.argsz)
        if argsz < minsz:
            raise errno_error(errno.EINVAL, "argsz too small")
        index = int(info.index)
        core = self.core
        model = core.model
        caps = _CapChain()
        flags = 0
        size = 0
        if index == VFIO_PCI_CONFIG_REGION_INDEX:
            size = model.config_size
            flags = lib.VFIO_REGION_INFO_FLAG_READ | lib.VFIO_REGION_INFO_FLAG_WRITE
        elif 0 <= index <= 5:
            bar = model.bars.get(index)
            if bar is not None:
                size = bar.size
                flags = lib.VFIO_REGION_INFO_FLAG_READ | lib.VFIO_REGION_INFO_FLAG_WRITE
                if core.bar_mmap_supported.get(index):
                    flags |= lib.VFIO_REGION_INFO_FLAG_MMAP
                    if index == core.msix_bar:
                        caps.add(self._msix_cap(bar))
        elif index == VFIO_PCI_ROM_REGION_INDEX:
            size = 0  # no option ROM
        elif index == VFIO_PCI_VGA_REGION_INDEX:
            # vfio_pci_ioctl_get_region_info: EINVAL without VGA support
            raise errno_error(errno.EINVAL, "the device has no VGA region")
        else:
            raise errno_error(errno.EINVAL, f"region index {index} out of range")
        rsize = ffi.sizeof("struct vfio_region_info")
        if caps.size:
            flags |= lib.VFIO_REGION_INFO_FLAG_CAPS
            if argsz < rsize + caps.size:
                argsz = rsize + caps.size
                info.cap_offset = 0
            else:
                _write_user(_addr(info) + rsize, caps.shifted(rsize))
                info.cap_offset = rsize
        info.argsz = argsz
        info.flags = flags
        info.size = size
        info.offset = index_to_offset(index)
        return 0

    def _msix_cap(self, bar: Bar) -> bytes:
        core = self.core
        if core.msix_mappable:
            return _struct_bytes("struct vfio_info_cap_header", id=lib.VFIO_REGION_INFO_CAP_MSIX_MAPPABLE, version=1)
        # the pre-4.16 layout: everything but the pages holding the table
        start = core.msix_offset & ~(_PAGE - 1)
        end = (core.msix_offset + core.msix_size + _PAGE - 1) & ~(_PAGE - 1)
        areas = []
        if start > 0:
            areas.append((0, start))
        if end < bar.size:
            areas.append((end, bar.size - end))
        head = ffi.new("struct vfio_region_info_cap_sparse_mmap *")
        head.header.id = lib.VFIO_REGION_INFO_CAP_SPARSE_MMAP
        head.header.version = 1
        head.nr_areas = len(areas)
        data = bytes(ffi.buffer(head, ffi.sizeof("struct vfio_region_info_cap_sparse_mmap")))
        for off, length in areas:
            data += _struct_bytes("struct vfio_region_sparse_mmap_area", offset=off, size=length)
        return data

    def _get_irq_info(self, arg: IoctlArg) -> int:
        """vfio_pci_ioctl_get_irq_info."""
        info = cast_arg(arg, "struct vfio_irq_info")
        minsz = _offsetofend("struct vfio_irq_info", "count")
        index = int(info.index)
        if int(info.argsz) < minsz or index >= VFIO_PCI_NUM_IRQS:
            raise errno_error(errno.EINVAL, "argsz too small or index out of range")
        flags = lib.VFIO_IRQ_INFO_EVENTFD
        if index == IRQ_INTX:
            flags |= lib.VFIO_IRQ_INFO_MASKABLE | lib.VFIO_IRQ_INFO_AUTOMASKED
        elif index != IRQ_MSIX or self.core.model.msix is None:
            # MSI-X vectors are allocated on demand (has_dyn_msix, as on x86,
            # for a device with MSI-X): their count may grow while enabled;
            # every other index is fixed.
            flags |= lib.VFIO_IRQ_INFO_NORESIZE
        info.flags = flags
        info.count = self.core.irq_count(index)
        return 0

    def _set_irqs(self, arg: IoctlArg) -> int:
        """vfio_pci_ioctl_set_irqs + vfio_set_irqs_validate_and_prepare."""
        hdr = cast_arg(arg, "struct vfio_irq_set")
        minsz = _offsetofend("struct vfio_irq_set", "count")
        argsz, flags = int(hdr.argsz), int(hdr.flags)
        index, start, count = int(hdr.index), int(hdr.start), int(hdr.count)
        core = self.core
        num_irqs = core.irq_count(index) if index < VFIO_PCI_NUM_IRQS else 0
        data_mask = lib.VFIO_IRQ_SET_DATA_TYPE_MASK
        action_mask = lib.VFIO_IRQ_SET_ACTION_TYPE_MASK
        if (argsz < minsz or index >= VFIO_PCI_NUM_IRQS or count >= _U32 - start
                or flags & ~(data_mask | action_mask)):
            raise errno_error(errno.EINVAL, "argsz, index, count or flags invalid")
        if start >= num_irqs or start + count > num_irqs:
            raise errno_error(errno.EINVAL, f"start {start} count {count} beyond {num_irqs} interrupts")
        data_type = flags & data_mask
        if data_type == lib.VFIO_IRQ_SET_DATA_NONE:
            size = 0
        elif data_type == lib.VFIO_IRQ_SET_DATA_BOOL:
            size = 1
        elif data_type == lib.VFIO_IRQ_SET_DATA_EVENTFD:
            size = 4
        else:
            raise errno_error(errno.EINVAL, "exactly one DATA_ type is required")
        data = b""
        if size:
            if argsz - minsz < count * size:
                raise errno_error(errno.EINVAL, "argsz does not cover the data")
            data = _read_user(_addr(hdr) + minsz, count * size)
        return core.set_irqs(flags, index, start, count, data)

    # -- resets ---------------------------------------------------------------------------
    def _reset(self, arg: IoctlArg) -> int:
        """vfio_pci_ioctl_reset."""
        core = self.core
        if not core.reset_works:
            raise errno_error(errno.EINVAL, "the device has no reset method")
        core._set_power_state(0)
        if not core._try_reset_function():
            raise errno_error(errno.ENOTTY, "reset failed")
        return 0

    def _slot_or_bus(self) -> list[Any]:
        """pci_probe_reset_bus + pci_walk_bus: the devices a secondary bus
        reset hits (ENODEV when the device's bus cannot be reset)."""
        parent = getattr(self.pdev, "parent", None)
        if parent is None:
            raise errno_error(errno.ENODEV, "the device is on a root bus: no bus reset")

        def walk(devs: list[Any]) -> Iterator[Any]:
            for d in sorted(devs, key=lambda d: d.bdf):
                yield d
                yield from walk(list(getattr(d, "children", [])))

        return list(walk(list(parent.children)))

    def _dev_set(self) -> list[Any]:
        """vfio_assign_device_set(pdev->bus): vfio-pci devices on the bus."""
        parent = getattr(self.pdev, "parent", None)
        if parent is None:
            return [self.pdev]
        return [d for d in parent.children if getattr(d, "driver", None) == "vfio-pci"]

    def _devid_for(self, pdev: Any, ictx: Any) -> int:
        """vfio_iommufd_get_dev_id: >0 bound to ictx, -ENOENT owned through
        the IOMMU group, -ENODEV not owned."""
        core = _CORES.get(pdev)
        if core is not None and core.iommufd is ictx and core.devid is not None and ictx is not None:
            return core.devid
        group = getattr(pdev, "group", None)
        if group is None:
            return -errno.ENODEV
        for other in getattr(group, "devices", []):
            oc = _CORES.get(other)
            if oc is not None and oc.iommufd is ictx and ictx is not None and oc.devid is not None:
                return -errno.ENOENT
        return -errno.ENODEV

    @staticmethod
    def _seg_bus_devfn(bdf: str) -> tuple[int, int, int]:
        seg = int(bdf[0:4], 16)
        bus = int(bdf[5:7], 16)
        dev = int(bdf[8:10], 16)
        fn = int(bdf[11], 16)
        return seg, bus, (dev << 3) | fn

    def _hot_reset_info(self, arg: IoctlArg) -> int:
        """vfio_pci_ioctl_get_pci_hot_reset_info."""
        hdr = cast_arg(arg, "struct vfio_pci_hot_reset_info")
        minsz = _offsetofend("struct vfio_pci_hot_reset_info", "count")
        argsz = int(hdr.argsz)
        if argsz < minsz:
            raise errno_error(errno.EINVAL, "argsz too small")
        hdr.flags = 0
        devices = self._slot_or_bus()
        count = len(devices)
        hsize = ffi.sizeof("struct vfio_pci_hot_reset_info")
        dsize = ffi.sizeof("struct vfio_pci_dependent_device")
        if count > (argsz - hsize) // dsize:
            hdr.count = count
            raise errno_error(errno.ENOSPC, f"{count} devices affected")
        flags = 0
        core = self.core
        if core.cdev_opened:
            flags = lib.VFIO_PCI_HOT_RESET_FLAG_DEV_ID | lib.VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED
        dev_set = self._dev_set()
        out = bytearray()
        for d in devices:
            entry = ffi.new("struct vfio_pci_dependent_device *")
            if flags & lib.VFIO_PCI_HOT_RESET_FLAG_DEV_ID:
                if d not in dev_set:
                    devid = lib.VFIO_PCI_DEVID_NOT_OWNED
                else:
                    got = self._devid_for(d, core.iommufd)
                    if got > 0:
                        devid = got
                    elif got == -errno.ENOENT:
                        devid = lib.VFIO_PCI_DEVID_OWNED
                    else:
                        devid = lib.VFIO_PCI_DEVID_NOT_OWNED
                if devid == lib.VFIO_PCI_DEVID_NOT_OWNED:
                    flags &= ~lib.VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED
                entry.devid = devid & _U32
            else:
                group = getattr(d, "group", None)
                if group is None:
                    # vfio_pci_fill_devs: EPERM for a device without an IOMMU group
                    raise errno_error(errno.EPERM, f"{d.bdf} has no IOMMU group")
                entry.group_id = int(group.id)
            entry.segment, entry.bus, entry.devfn = self._seg_bus_devfn(d.bdf)
            out += bytes(ffi.buffer(entry))
        _write_user(_addr(hdr) + hsize, bytes(out))
        hdr.count = count
        hdr.flags = flags
        return 0

    def _hot_reset(self, arg: IoctlArg) -> int:
        """vfio_pci_ioctl_pci_hot_reset."""
        hdr = cast_arg(arg, "struct vfio_pci_hot_reset")
        minsz = _offsetofend("struct vfio_pci_hot_reset", "count")
        if int(hdr.argsz) < minsz or int(hdr.flags):
            raise errno_error(errno.EINVAL, "argsz too small or flags set")
        count = int(hdr.count)
        core = self.core
        if bool(count) == core.cdev_opened:
            # zero-length array only (and always) for cdev-opened devices
            raise errno_error(errno.EINVAL, "group fds are for group-opened devices only")
        devices = self._slot_or_bus()
        groups: list[Any] | None = None
        if count:
            if count > len(devices):
                raise errno_error(errno.EINVAL, "more group fds than affected devices")
            raw = _read_user(_addr(hdr) + minsz, 4 * count)
            groups = []
            for i in range(count):
                fd = int.from_bytes(raw[4 * i:4 * i + 4], "little", signed=True)
                file = self.kernel.file_or_none(fd)
                if file is None:
                    try:
                        os.fstat(fd)
                    except OSError:
                        raise errno_error(errno.EBADF, f"fd {fd}") from None
                group = self._group_of_file(file)
                if group is None:
                    # vfio_file_is_group: EINVAL for anything but a group file
                    raise errno_error(errno.EINVAL, f"fd {fd} is not a VFIO group")
                groups.append(group)
        self._dev_set_hot_reset(devices, groups, None if groups is not None else core.iommufd)
        return 0

    def _group_of_file(self, file: FakeFile | None) -> Any:
        if file is None:
            return None
        for vgroup in self.system.vfio_groups():
            if vgroup.opened_file is file:
                return vgroup.iommu_group
        if type(file).__name__ == "GroupFile":
            return getattr(getattr(file, "vgroup", None), "iommu_group", None)
        return None

    def _dev_set_hot_reset(self, devices: list[Any], groups: list[Any] | None, ictx: Any) -> None:
        """vfio_pci_dev_set_hot_reset."""
        dev_set = self._dev_set()
        # vfio_pci_dev_set_resettable: every device the reset hits must be ours
        if any(d not in dev_set for d in devices):
            raise errno_error(errno.EINVAL, "a device on the bus is not bound to vfio-pci")
        for d in dev_set:
            if groups is not None:
                owned = getattr(d, "group", None) in groups
            else:
                devid = self._devid_for(d, ictx)
                owned = devid > 0 or devid == -errno.ENOENT
            if not owned:
                raise errno_error(errno.EINVAL, f"{d.bdf} is not owned by the caller")
        # pci_reset_bus: save, reset, restore every function below the bridge
        saved = []
        for d in devices:
            model = getattr(d, "model", None)
            if isinstance(model, DeviceModel):
                c = _CORES.get(d)
                if c is not None:
                    c._set_power_state(0)
                saved.append((model, _save_state(model)))
        for model, _state in saved:
            model.bus_reset()
        for model, state in saved:
            _restore_state(model, state)
        for d in devices:
            c = _CORES.get(d)
            if c is not None:
                c._reset_done()

    # -- features (vfio_ioctl_device_feature) ------------------------------------------------
    def _feature(self, arg: IoctlArg) -> int:
        hdr = cast_arg(arg, "struct vfio_device_feature")
        minsz = _offsetofend("struct vfio_device_feature", "flags")
        argsz, flags = int(hdr.argsz), int(hdr.flags)
        if argsz < minsz:
            raise errno_error(errno.EINVAL, "argsz too small")
        known = (lib.VFIO_DEVICE_FEATURE_MASK | lib.VFIO_DEVICE_FEATURE_SET | lib.VFIO_DEVICE_FEATURE_GET
                 | lib.VFIO_DEVICE_FEATURE_PROBE)
        if flags & ~known:
            raise errno_error(errno.EINVAL, f"unknown flags {flags:#x}")
        get_set = lib.VFIO_DEVICE_FEATURE_GET | lib.VFIO_DEVICE_FEATURE_SET
        if not flags & lib.VFIO_DEVICE_FEATURE_PROBE and flags & get_set == get_set:
            raise errno_error(errno.EINVAL, "GET and SET together need PROBE")
        feature = flags & lib.VFIO_DEVICE_FEATURE_MASK
        data = _addr(hdr) + minsz
        size = argsz - minsz
        core = self.core
        if feature in _MIG_FEATURES:
            # vfio_ioctl_device_feature: the core's migration and logging
            # features, ENOTTY without the driver's mig_ops / log_ops
            if core.migration is None:
                raise errno_error(errno.ENOTTY, f"feature {feature} is not supported")
            return self._mig_feature(core.migration, feature, flags, data, size)
        if feature == lib.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY:
            if self._check_feature(flags, size, lib.VFIO_DEVICE_FEATURE_SET, 0) != 1:
                return 0
            self._pm_entry(None)
            return 0
        if feature == lib.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP:
            esize = ffi.sizeof("struct vfio_device_low_power_entry_with_wakeup")
            if self._check_feature(flags, size, lib.VFIO_DEVICE_FEATURE_SET, esize) != 1:
                return 0
            fd = int.from_bytes(_read_user(data, 4), "little", signed=True)
            if fd < 0:
                raise errno_error(errno.EINVAL, "wakeup_eventfd < 0")
            efd = _Eventfd(fd)
            try:
                self._pm_entry(efd)
            except OSError:
                efd.put()
                raise
            return 0
        if feature == lib.VFIO_DEVICE_FEATURE_LOW_POWER_EXIT:
            if self._check_feature(flags, size, lib.VFIO_DEVICE_FEATURE_SET, 0) != 1:
                return 0
            core._runtime_pm_exit()
            return 0
        # migration, dirty logging, VF token, bus master (CDX only), DMA-buf,
        # zPCI: not offered by this device (no mig_ops/log_ops/vf_token)
        raise errno_error(errno.ENOTTY, f"feature {feature} is not supported")

    # -- migration and DMA logging (vfio_main.c, for a device with mig_ops/log_ops) -----------
    def _mig_feature(self, mig: _MigrationDriver, feature: int, flags: int, data: int, size: int) -> int:
        get, set_ = lib.VFIO_DEVICE_FEATURE_GET, lib.VFIO_DEVICE_FEATURE_SET
        if feature == lib.VFIO_DEVICE_FEATURE_MIGRATION:
            # vfio_ioctl_device_feature_migration
            if self._check_feature(flags, size, get, 8) != 1:
                return 0
            _write_user(data, mig.flags.to_bytes(8, "little"))
            return 0
        if feature == lib.VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE:
            return self._mig_device_state(mig, flags, data, size)
        if feature == lib.VFIO_DEVICE_FEATURE_MIG_DATA_SIZE:
            # vfio_ioctl_device_feature_migration_data_size
            if self._check_feature(flags, size, get, 8) != 1:
                return 0
            _write_user(data, mig.data_size().to_bytes(8, "little"))
            return 0
        if feature == lib.VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2:
            # vfio_ioctl_device_feature_migration_precopy_info_v2
            if not mig.flags & _MIG_PRE:
                raise errno_error(errno.EINVAL, "the device has no PRE_COPY")
            if self._check_feature(flags, size, set_, 0) != 1:
                return 0
            mig.precopy_info_v2 = True
            return 0
        if not mig.dma_logging:
            # vfio_ioctl_device_feature_logging_*: no log_ops
            raise errno_error(errno.ENOTTY, f"feature {feature} is not supported")
        if feature == lib.VFIO_DEVICE_FEATURE_DMA_LOGGING_START:
            return self._log_start(mig, flags, data, size)
        if feature == lib.VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP:
            # vfio_ioctl_device_feature_logging_stop
            if self._check_feature(flags, size, set_, 0) != 1:
                return 0
            mig.log_stop()
            return 0
        return self._log_report(mig, flags, data, size)

    def _mig_device_state(self, mig: _MigrationDriver, flags: int, data: int, size: int) -> int:
        """vfio_ioctl_device_feature_mig_device_state."""
        get = lib.VFIO_DEVICE_FEATURE_GET
        ctype = "struct vfio_device_feature_mig_state"
        if self._check_feature(flags, size, get | lib.VFIO_DEVICE_FEATURE_SET, ffi.sizeof(ctype)) != 1:
            return 0
        raw = _read_user(data, ffi.sizeof(ctype))
        device_state = int.from_bytes(raw[0:4], "little")

        def out(state: int, fd: int) -> None:
            _write_user(data, state.to_bytes(4, "little") + fd.to_bytes(4, "little", signed=True))

        if flags & get:
            out(mig.state, -1)
            return 0
        try:
            f = mig.set_state(device_state)
        except OSError:
            out(device_state, -1)
            raise
        if f is None:
            out(device_state, -1)
            return 0
        # vfio_ioct_mig_return_fd
        out(device_state, f.install())
        return 0

    def _log_start(self, mig: _MigrationDriver, flags: int, data: int, size: int) -> int:
        """vfio_ioctl_device_feature_logging_start."""
        ctype = "struct vfio_device_feature_dma_logging_control"
        if self._check_feature(flags, size, lib.VFIO_DEVICE_FEATURE_SET, ffi.sizeof(ctype)) != 1:
            return 0
        control = ffi.new(ctype + " *")
        ffi.memmove(control, _read_user(data, ffi.sizeof(ctype)), ffi.sizeof(ctype))
        count = int(control.num_ranges)
        if not count:
            raise errno_error(errno.EINVAL, "no ranges")
        if count > _LOG_MAX_RANGES:
            raise errno_error(errno.E2BIG, f"more than {_LOG_MAX_RANGES} ranges")
        page_size = int(control.page_size)
        align = (page_size - 1) & _U64  # IS_ALIGNED
        rsize = ffi.sizeof("struct vfio_device_feature_dma_logging_range")
        address = int(control.ranges)
        nodes: list[tuple[int, int]] = []
        ranges: list[tuple[int, int]] = []
        for i in range(count):
            raw = _read_user(address + i * rsize, rsize)
            iova = int.from_bytes(raw[0:8], "little")
            length = int.from_bytes(raw[8:16], "little")
            if iova & align or length & align:
                raise errno_error(errno.EINVAL, f"range {i} is not aligned to the page size")
            if iova + length > _U64:
                raise errno_error(errno.EOVERFLOW, f"range {i} wraps around")
            last = (iova + length - 1) & _U64
            if any(start <= last and iova <= end for start, end in nodes):
                raise errno_error(errno.EINVAL, f"range {i} overlaps another one")
            nodes.append((iova, last))
            ranges.append((iova, length))
        control.page_size = mig.log_start(ranges, page_size)
        _write_user(data, bytes(ffi.buffer(control)))
        return 0

    def _log_report(self, mig: _MigrationDriver, flags: int, data: int, size: int) -> int:
        """vfio_ioctl_device_feature_logging_report + iova_bitmap: the
        user's bitmap gets bit ``n`` set for each dirty page
        ``[iova + n * page_size, ...)``; no bit is cleared."""
        ctype = "struct vfio_device_feature_dma_logging_report"
        if self._check_feature(flags, size, lib.VFIO_DEVICE_FEATURE_GET, ffi.sizeof(ctype)) != 1:
            return 0
        raw = _read_user(data, ffi.sizeof(ctype))
        iova, length, page_size, bitmap = (int.from_bytes(raw[i:i + 8], "little") for i in range(0, 32, 8))
        if page_size < 4096 or page_size & (page_size - 1):
            raise errno_error(errno.EINVAL, "page_size must be a power of two of at least 4 KiB")
        if iova + length > _U64:
            raise errno_error(errno.EOVERFLOW, "the range wraps around")
        if not length:
            return 0
        if not bitmap:
            raise errno_error(errno.EFAULT, "bitmap is NULL")
        words: dict[int, int] = {}
        for start, n in mig.log_read_and_clear(iova, length):
            for bit in range((start - iova) // page_size, (start + n - 1 - iova) // page_size + 1):
                words[bit // 64] = words.get(bit // 64, 0) | 1 << (bit % 64)
        for word, bits in words.items():
            at = bitmap + 8 * word
            old = int.from_bytes(_read_user(at, 8), "little")
            _write_user(at, (old | bits).to_bytes(8, "little"))
        return 0

    @staticmethod
    def _check_feature(flags: int, argsz: int, supported: int, minsz: int) -> int:
        """vfio_check_feature: 1 to go on, 0 for a successful probe."""
        get_set = lib.VFIO_DEVICE_FEATURE_GET | lib.VFIO_DEVICE_FEATURE_SET
        if flags & get_set & ~supported:
            raise errno_error(errno.EINVAL, "operation not supported by the feature")
        if flags & lib.VFIO_DEVICE_FEATURE_PROBE:
            return 0
        if not flags & get_set:
            raise errno_error(errno.EINVAL, "GET or SET is required")
        if argsz < minsz:
            raise errno_error(errno.EINVAL, "argsz too small for the feature")
        return 1

    def _pm_entry(self, efd: _Eventfd | None) -> None:
        """vfio_pci_runtime_pm_entry."""
        core = self.core
        if core.pm_runtime_engaged:
            raise errno_error(errno.EINVAL, "low power is already engaged")
        core.pm_runtime_engaged = True
        core.pm_wake_eventfd = efd

    # -- ioeventfd (vfio_pci_ioeventfd) ------------------------------------------------------
    def _ioeventfd(self, arg: IoctlArg) -> int:
        ioe = cast_arg(arg, "struct vfio_device_ioeventfd")
        minsz = _offsetofend("struct vfio_device_ioeventfd", "fd")
        if int(ioe.argsz) < minsz:
            raise errno_error(errno.EINVAL, "argsz too small")
        flags = int(ioe.flags)
        if flags & ~lib.VFIO_DEVICE_IOEVENTFD_SIZE_MASK:
            raise errno_error(errno.EINVAL, "unknown flags")
        count = flags & lib.VFIO_DEVICE_IOEVENTFD_SIZE_MASK
        fd = int(ioe.fd)
        if bin(count).count("1") != 1 or fd < -1:
            raise errno_error(errno.EINVAL, "exactly one size, fd >= -1")
        offset = int(ioe.offset)
        data = int(ioe.data)
        core = self.core
        index = offset >> VFIO_PCI_OFFSET_SHIFT
        pos = offset & VFIO_PCI_OFFSET_MASK
        bar = core.model.bars.get(index) if index <= 5 else None
        if bar is None or pos + count > bar.size:
            raise errno_error(errno.EINVAL, "not inside a BAR")
        if index == core.msix_bar and not (pos + count <= core.msix_offset
                                           or pos >= core.msix_offset + core.msix_size):
            raise errno_error(errno.EINVAL, "overlaps the MSI-X table")
        mask = (1 << (8 * count)) - 1
        for existing in core.ioeventfds:
            if (existing.bar, existing.pos, existing.data & mask, existing.count) == (index, pos, data & mask, count):
                if fd == -1:
                    existing.eventfd.put()
                    core.ioeventfds.remove(existing)
                    return 0
                raise errno_error(errno.EEXIST, "the same ioeventfd exists")
        if fd == -1:
            raise errno_error(errno.ENODEV, "no such ioeventfd")
        if len(core.ioeventfds) >= _IOEVENTFD_MAX:
            raise errno_error(errno.ENOSPC, "too many ioeventfds")
        core.ioeventfds.append(_IoEventfd(index, pos, data & mask, count, _Eventfd(fd)))
        return 0

    # -- read / write / mmap (vfio_pci_rw, vfio_pci_core_mmap) ------------------------------
    def _rw(self, offset: int, data: bytes | None, size: int) -> bytes | int:
        if not self.access_granted:
            # vfio_device_fops_read/write: EINVAL until the cdev is bound
            raise errno_error(errno.EINVAL, "the device is not bound to an iommufd")
        if size == 0:
            return b"" if data is None else 0
        core = self.core
        index = offset >> VFIO_PCI_OFFSET_SHIFT
        pos = offset & VFIO_PCI_OFFSET_MASK
        if index >= VFIO_PCI_NUM_REGIONS:
            raise errno_error(errno.EINVAL, f"region index {index} out of range")
        core.poll()
        core.pm_get()
        try:
            if index == VFIO_PCI_CONFIG_REGION_INDEX:
                return core.config_rw(pos, data, size)
            if index == VFIO_PCI_ROM_REGION_INDEX:
                raise errno_error(errno.EINVAL, "no option ROM")
            if index == VFIO_PCI_VGA_REGION_INDEX:
                raise errno_error(errno.EINVAL, "no VGA region")
            return core.bar_rw(index, pos, data, size)
        finally:
            core.pm_put()

    def pread(self, size: int, offset: int) -> bytes:
        """vfio_pci_rw: read up to ``size`` bytes of the region the high
        bits of ``offset`` select (:data:`VFIO_PCI_OFFSET_SHIFT`), from the
        byte offset in the low bits: the virtualised config space, or a BAR
        in the widest aligned accesses that fit (the MSI-X table reads as
        all-ones).  EINVAL outside a region and for the ROM and VGA regions
        (absent here); EIO on a memory BAR while memory decode is off."""
        result = self._rw(offset, None, size)
        assert isinstance(result, bytes)
        return result

    def pwrite(self, data: bytes, offset: int) -> int:
        """vfio_pci_rw: write ``data`` to the region the high bits of
        ``offset`` select, the way :meth:`pread` reads (writes to the MSI-X
        table are dropped); returns the number of bytes written."""
        result = self._rw(offset, data, len(data))
        assert isinstance(result, int)
        return result

    def mmap(self, length: int, prot: int, flags: int, offset: int) -> MemoryMap:
        """vfio_pci_core_mmap."""
        if not self.access_granted:
            raise errno_error(errno.EINVAL, "the device is not bound to an iommufd")
        if length <= 0 or offset % _PAGE:
            raise errno_error(errno.EINVAL, "bad length or unaligned offset")
        core = self.core
        index = offset >> VFIO_PCI_OFFSET_SHIFT
        if index >= VFIO_PCI_NUM_REGIONS:
            raise errno_error(errno.EINVAL, f"region index {index} out of range")
        if not flags & MAP_SHARED:
            raise errno_error(errno.EINVAL, "BARs must be mapped MAP_SHARED")
        if index >= VFIO_PCI_ROM_REGION_INDEX:
            raise errno_error(errno.EINVAL, "only BARs can be mapped")
        if not core.bar_mmap_supported.get(index):
            raise errno_error(errno.EINVAL, f"BAR{index} cannot be mapped")
        bar = core.model.bars[index]
        start = offset & VFIO_PCI_OFFSET_MASK
        phys_len = (bar.size + _PAGE - 1) & ~(_PAGE - 1)
        length = (length + _PAGE - 1) & ~(_PAGE - 1)
        if start + length > phys_len:
            raise errno_error(errno.EINVAL, "the mapping extends beyond the BAR")
        if index == core.msix_bar and not core.msix_mappable:
            t0 = core.msix_offset & ~(_PAGE - 1)
            t1 = (core.msix_offset + core.msix_size + _PAGE - 1) & ~(_PAGE - 1)
            if start < t1 and t0 < start + length:
                raise errno_error(errno.EINVAL, "the MSI-X table cannot be mapped")
        if bar.ram:
            m: MemoryMap = _RamMap(self, index, bar, start, length, bool(prot & PROT_WRITE))
        else:
            m = _RegisterMap(self, index, bar, start, length, bool(prot & PROT_WRITE))
        self._refs += 1
        core.maps.append(m)
        return m

    def _unmap(self, m: MemoryMap) -> None:
        core = self.core
        if m in core.maps:
            core.maps.remove(m)
        self._put()


# -- live migration: a variant driver's mig_ops and log_ops ---------------------------------------
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
_LOG_MAX_RANGES = _PAGE // 16
#: Tracking granularities the fake device supports (4 KiB .. 1 GiB).
_LOG_MIN_PAGE, _LOG_MAX_PAGE = 1 << 12, 1 << 30
_U64 = (1 << 64) - 1


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


class _MigrationFile(FakeFile):
    """A migration data fd (the ``struct file`` a variant driver's
    migration_set_state returns).

    The fd the user gets is a real file: a memfd holding the stream, opened
    read-only (saving) or write-only (resuming), so ``os.read``/``os.write``
    work on it as on the kernel's fd.  Through the backend (what pyvfio's
    :class:`~pyvfio.features.MigrationDataFile` uses) the driver's rules
    apply too: ENOMSG at the temporary end of the pre-copy data, ENODEV
    once the session is over, ``VFIO_MIG_GET_PRECOPY_INFO``.  A raw
    ``os.read`` cannot return those errors: it sees the end of the file
    instead, and a file whose session ended reads as empty (writes fail
    with EPERM).
    """

    path = "anon_inode:[vfio-migration]"

    def __init__(self, kernel: FakeBackend, driver: _MigrationDriver, *, saving: bool) -> None:
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
        fd = self.kernel.install(self)
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
        info = cast_arg(arg, "struct vfio_precopy_info")
        minsz = _offsetofend("struct vfio_precopy_info", "dirty_bytes")
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


class _MigrationDriver:
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
        self.saving: _MigrationFile | None = None
        self.resuming: _MigrationFile | None = None
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
    def set_state(self, new: int) -> _MigrationFile | None:
        """migration_set_state: walk single arcs until ``new``; the file of
        a data session the last arc opened, if any.  On an error the state
        is the last one reached (or ERROR)."""
        result: _MigrationFile | None = None
        while self.state != new:
            nxt = mig_next_state(self.flags, self.state, new)
            result = self._step(self.state, nxt)
            self.state = nxt
            if result is not None and nxt != new:  # pragma: no cover - the table prevents it
                result.disable()
                raise errno_error(errno.EINVAL, "a data session opened in the middle of a path")
        return result

    def _new_file(self, saving: bool) -> _MigrationFile:
        return _MigrationFile(self.core.kernel, self, saving=saving)

    def _step(self, cur: int, nxt: int) -> _MigrationFile | None:
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
        result: _MigrationFile | None = None
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

    def precopy_info(self, f: _MigrationFile) -> tuple[int, int]:
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
    core = _CORES.get(pdev)
    if core is None or core.migration is None:
        return False
    core.migration.fail_next = err
    return True


# -- mappings of BARs ---------------------------------------------------------------------------
_READERS = {1: "pyvfio_read8", 2: "pyvfio_read16", 4: "pyvfio_read32", 8: "pyvfio_read64"}
_WRITERS = {1: "pyvfio_write8", 2: "pyvfio_write16", 4: "pyvfio_write32", 8: "pyvfio_write64"}


class _BarMap(MemoryMap):
    """A mapping of a BAR; accesses check what the kernel's fault handler
    checks (memory decode on, D0, no low-power)."""

    def __init__(self, file: VfioDeviceFile, index: int, bar: Bar, start: int, length: int, writable: bool) -> None:
        self.file = file
        self.index = index
        self.bar = bar
        self.start = start
        self.length = length
        self.writable = writable
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def _check(self, offset: int, width: int) -> None:
        if self._closed:
            raise ValueError("the mapping is closed")
        if width not in (1, 2, 4, 8):
            raise ValueError(f"access width must be 1, 2, 4 or 8 bytes, not {width}")
        if offset < 0 or offset + width > self.length:
            raise ValueError(f"access of {width} bytes at offset {offset:#x} is outside the mapping")
        if offset % width:
            raise ValueError(f"offset {offset:#x} is not aligned to the access width {width}")
        core = self.file.core
        core.poll()
        if core.pm_runtime_engaged or core.suspended or not core.memory_enabled():
            # vfio_pci_mmap_fault: VM_FAULT_SIGBUS
            raise BusError(f"BAR{self.index} access while memory decode is off or the device is in low power")

    def _range(self, offset: int, size: int) -> None:
        if self._closed:
            raise ValueError("the mapping is closed")
        if offset < 0 or size < 0 or offset + size > self.length:
            raise ValueError(f"range [{offset:#x}, {offset + size:#x}) is outside the mapping")

    def read_bytes(self, offset: int, size: int) -> bytes:
        self._range(offset, size)
        out = bytearray()
        pos = offset
        end = offset + size
        while pos < end:
            width = 8
            while width > 1 and (pos % width or pos + width > end):
                width //= 2
            out += self.read(pos, width).to_bytes(width, "little")
            pos += width
        return bytes(out)

    def write_bytes(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        payload = bytes(memoryview(data).cast("B"))
        self._range(offset, len(payload))
        pos = 0
        while pos < len(payload):
            width = 8
            at = offset + pos
            while width > 1 and (at % width or pos + width > len(payload)):
                width //= 2
            self.write(at, width, int.from_bytes(payload[pos:pos + width], "little"))
            pos += width

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._unmapped()
        with self.file.system.lock:
            self.file._unmap(self)

    def _unmapped(self) -> None:
        """Release the address range."""


class _RegisterMap(_BarMap):
    """A BAR served by register hooks: every access reaches the model with
    exactly the width used.  The address range is reserved (PROT_NONE)
    so that it is unique in this process; touching it directly faults."""

    def __init__(self, file: VfioDeviceFile, index: int, bar: Bar, start: int, length: int, writable: bool) -> None:
        super().__init__(file, index, bar, start, length, writable)
        err = ffi.new("int *")
        pointer = lib.pyvfio_mmap(ffi.NULL, length, 0, lib.PYVFIO_MAP_PRIVATE | lib.PYVFIO_MAP_ANONYMOUS, -1, 0, err)
        if pointer == ffi.NULL:
            raise OSError(err[0], os.strerror(err[0]))
        self._pointer = pointer
        self.address = int(ffi.cast("uintptr_t", pointer))

    def read(self, offset: int, width: int) -> int:
        with self.file.system.lock:
            self._check(offset, width)
            pos = self.start + offset
            if pos + width > self.bar.size:
                return (1 << (8 * width)) - 1  # beyond a sub-page BAR
            return self.file.core.device_read(self.index, pos, width)

    def write(self, offset: int, width: int, value: int) -> None:
        if not 0 <= value < 1 << (8 * width):
            raise ValueError(f"value {value:#x} does not fit in {width} bytes")
        with self.file.system.lock:
            self._check(offset, width)
            if not self.writable:
                raise BusError("write to a read-only mapping")
            pos = self.start + offset
            if pos + width > self.bar.size:
                return
            self.file.core.device_write(self.index, pos, width, value)

    def buffer(self) -> memoryview:
        raise BusError(f"BAR{self.index} is device registers: use read()/write() with a width")

    def _unmapped(self) -> None:
        lib.pyvfio_munmap(self._pointer, self.length)


class _RamMap(_BarMap):
    """A RAM-backed BAR: the mapping is the BAR's memory itself."""

    def __init__(self, file: VfioDeviceFile, index: int, bar: Bar, start: int, length: int, writable: bool) -> None:
        super().__init__(file, index, bar, start, length, writable)
        self.address = bar.memory_address + start

    def read(self, offset: int, width: int) -> int:
        with self.file.system.lock:
            self._check(offset, width)
            return int(getattr(lib, _READERS[width])(self.address + offset))

    def write(self, offset: int, width: int, value: int) -> None:
        if not 0 <= value < 1 << (8 * width):
            raise ValueError(f"value {value:#x} does not fit in {width} bytes")
        with self.file.system.lock:
            self._check(offset, width)
            getattr(lib, _WRITERS[width])(self.address + offset, value)

    def read_bytes(self, offset: int, size: int) -> bytes:
        self._range(offset, size)
        return bytes(ffi.buffer(ffi.cast("char *", self.address + offset), size))

    def write_bytes(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        payload = bytes(memoryview(data).cast("B"))
        self._range(offset, len(payload))
        ffi.memmove(ffi.cast("char *", self.address + offset), payload, len(payload))

    def buffer(self) -> memoryview:
        if self._closed:
            raise ValueError("the mapping is closed")
        return memoryview(ffi.buffer(ffi.cast("char *", self.address), self.length))


# -- entry point ------------------------------------------------------------------------------
def open_device_file(kernel: FakeBackend, pdev: PciDevice, *, cdev: bool, group_file: Any = None) -> FakeFile:
    """Open the vfio-pci device file of ``pdev``.

    ``cdev=True``: ``/dev/vfio/devices/vfioN``; nothing but
    VFIO_DEVICE_BIND_IOMMUFD works until the file is bound.  Otherwise the
    file comes from VFIO_GROUP_GET_DEVICE_FD of ``group_file`` and the
    device is opened now (vfio_df_group_open)."""
    with kernel.system.lock:
        core = _CORES.get(pdev)
        if core is None:
            core = VfioPciCore(kernel, pdev)
            _CORES[pdev] = core
        f = VfioDeviceFile(kernel, core, cdev=cdev, group_file=group_file)
        if not cdev:
            try:
                f._df_open()
            except BaseException:
                if not core.files:
                    _CORES.pop(pdev, None)
                raise
            f.access_granted = True
        core.files.append(f)
        pdev.request_release = core.request_hook
        return f
