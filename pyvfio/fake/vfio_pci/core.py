"""vfio_pci_core of the fake kernel (drivers/vfio/pci/vfio_pci_core.c).

One :class:`VfioPciCore` per PCI device (``struct vfio_pci_core_device``)
holds what the kernel keeps per device while it is open: the virtualised
config space, the interrupt contexts, the saved state.  It enables the
device on its first open and disables it on its last close, resets it,
manages its power state, and serves the driver's ioctls through
:data:`VFIO_PCI_CORE_IOCTLS` (vfio_pci_core_ioctl's switch): device, IRQ
and region information, resets and hot resets, and -- in the module of
the kernel file they belong to -- VFIO_DEVICE_SET_IRQS (:mod:`.intrs`) and
VFIO_DEVICE_IOEVENTFD (:mod:`.rdwr`).  The device file that reaches it is
:mod:`.vfio_main`.

Rules follow Linux 7.3; each check names the kernel function it mirrors.
Eventfd-driven actions (INTx unmask through an eventfd, ioeventfds) run
when the fake next handles a call for the device (there are no kernel
threads); :meth:`VfioPciCore.poll` runs them on demand.
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING, Any, Callable

from ..._uapi import ffi, lib
from ...backend.base import IoctlArg, MemoryMap
from ..core import FakeBackend, FakeFile, errno_error
from ..machine.pci import (
    IRQ_INTX,
    IRQ_MSIX,
    PCI_COMMAND_INTX_DISABLE,
    PCI_COMMAND_IO,
    PCI_COMMAND_MASTER,
    PCI_COMMAND_MEMORY,
    PCI_EXP_DEVCAP2,
    PCI_EXP_DEVCAP2_ATOMIC_COMP32,
    PCI_EXP_DEVCAP2_ATOMIC_COMP64,
    PCI_EXP_DEVCAP2_ATOMIC_COMP128,
    PCI_MSIX_ENTRY_SIZE,
    PCI_PM_CTRL,
    PCI_PM_CTRL_NO_SOFT_RESET,
    PCI_PM_CTRL_STATE_MASK,
    Bar,
    DeviceModel,
)
from ..models._migration import MigratableDevice
from ..uaccess import UserPtr
from .config import PermBits, vfio_config_init
from .intrs import (
    Eventfd,
    IntxCtx,
    vfio_intx_handler,
    vfio_msihandler,
    vfio_pci_get_irq_count,
    vfio_pci_intx_mask,
    vfio_pci_intx_unmask,
    vfio_pci_ioctl_set_irqs,
    vfio_pci_set_irqs_ioctl,
)
from .migration import MigrationDriver
from .pci import (
    SavedState,
    pci_raw_set_power_state,
    pci_read_command,
    pci_reset_methods,
    pci_restore_state,
    pci_save_state,
    pci_walk_bus,
    pci_write_command,
)
from .priv import (
    IRQ_NONE,
    PAGE_SIZE,
    U32,
    VFIO_PCI_CONFIG_REGION_INDEX,
    VFIO_PCI_NUM_IRQS,
    VFIO_PCI_NUM_REGIONS,
    VFIO_PCI_ROM_REGION_INDEX,
    VFIO_PCI_VGA_REGION_INDEX,
    CapChain,
    core_of,
    index_to_offset,
    offsetofend,
    struct_bytes,
)
from .rdwr import IoEventfd, vfio_pci_ioctl_ioeventfd, vfio_pci_ioeventfd_poll

if TYPE_CHECKING:
    from ..machine.system import PciDevice
    from .vfio_main import VfioDeviceFile

__all__ = [
    "VfioPciCore",
    "inject_error",
    "CoreIoctl",
    "VFIO_PCI_CORE_IOCTLS",
    "vfio_pci_core_ioctl",
    "vfio_pci_ioctl_get_region_info",
]


def inject_error(pdev: PciDevice) -> bool:
    """Report an AER error on ``pdev`` (vfio_pci_core_aer_err_detected):
    signals the ERR eventfd the user registered; returns whether one was."""
    core = core_of(pdev)
    if core is None or core.err_trigger is None:
        return False
    core.err_trigger.signal()
    return True


class VfioPciCore:
    """What vfio-pci keeps per device (``struct vfio_pci_core_device``).

    :ivar irq_type: the interrupt type set up (VFIO_PCI_*_IRQ_INDEX, or
        VFIO_PCI_NUM_IRQS for none).
    :ivar err_trigger: the ERR eventfd, if set.
    :ivar req_trigger: the REQ eventfd, if set.
    :ivar pm_runtime_engaged: the user asked for low power.
    :ivar msix_mappable: VFIO_REGION_INFO_CAP_MSIX_MAPPABLE is reported
        (Linux >= 4.16 on every platform with interrupt remapping); when
        False the MSI-X table pages are excluded through a sparse mmap
        capability and cannot be mapped, as older kernels did.
    """

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
        self.saved: SavedState | None = None
        # config space (vfio_pci_config.c)
        self.vconfig = bytearray()
        self.config_map = bytearray()
        self.msi_perm: PermBits | None = None
        self.msi_qmax = 0
        self.bardirty = True
        self.msix_bar = 0xFF
        self.msix_offset = 0
        self.msix_size = 0
        self.msix_mappable = True
        self.bar_mmap_supported: dict[int, bool] = {}
        # interrupts (vfio_pci_intrs.c)
        self.irq_type = IRQ_NONE
        self.intx_ctx = IntxCtx()
        self.virq_disabled = False
        self.msi_vectors: set[int] = set()  # allocated vectors
        self.msi_triggers: dict[int, Eventfd] = {}
        self.err_trigger: Eventfd | None = None
        self.req_trigger: Eventfd | None = None
        self.ioeventfds: list[IoEventfd] = []
        # power management
        self.pm_runtime_engaged = False
        self.pm_wake_eventfd: Eventfd | None = None
        self.pm_intx_masked = False
        self.suspended = False
        self.pm_save: SavedState | None = None
        self.needs_pm_restore = False
        #: Live mappings of BARs (they keep the device open).
        self.maps: list[MemoryMap] = []
        self._request_hook: Callable[[], None] | None = None
        #: The migration ops of a variant driver, for a model that declares
        #: migration (``model_migration``); None for plain vfio-pci.
        self.migration: MigrationDriver | None = None
        if isinstance(model, MigratableDevice) and model.migration is not None:
            self.migration = MigrationDriver(self, model, model.migration)

    @property
    def system(self) -> Any:
        """The :class:`~pyvfio.fake.machine.system.System` of the device."""
        return self.kernel.system

    # -- open / close (vfio_pci_core_enable / _disable) ---------------------------------
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

    def _enable(self) -> None:
        """vfio_pci_core_enable."""
        model = self.model
        self.suspended = False
        if model.pm_offset is not None:
            ctrl = model.config_word(model.pm_offset + PCI_PM_CTRL)
            # vfio_pci_probe_power_state
            self.needs_pm_restore = not ctrl & PCI_PM_CTRL_NO_SOFT_RESET
            if ctrl & PCI_PM_CTRL_STATE_MASK:
                pci_raw_set_power_state(model, 0)
        # vfio_pci_core_enable: the initial saved state has no bus mastering
        pci_write_command(model, pci_read_command(model) & ~PCI_COMMAND_MASTER)
        # pci_enable_device: decode the resources the device has
        cmd = pci_read_command(model)
        if any(not b.is_io for b in model.bars.values()):
            cmd |= PCI_COMMAND_MEMORY
        if any(b.is_io for b in model.bars.values()):
            cmd |= PCI_COMMAND_IO
        pci_write_command(model, cmd)
        self.reset_works = self.try_reset_function()
        self.saved = pci_save_state(model)
        if self.pci_2_3 and pci_read_command(model) & PCI_COMMAND_INTX_DISABLE:
            pci_write_command(model, pci_read_command(model) & ~PCI_COMMAND_INTX_DISABLE)
        vfio_config_init(self)
        if model.msix is not None:
            self.msix_bar = model.msix.table_bar
            self.msix_offset = model.msix.table_offset
            self.msix_size = model.msix.vectors * PCI_MSIX_ENTRY_SIZE
        else:
            self.msix_bar = 0xFF
        self._probe_mmaps()

    def _disable(self) -> None:
        """vfio_pci_core_disable."""
        model = self.model
        self.runtime_pm_exit()
        self._resume()
        self.set_power_state(0)
        pci_write_command(model, pci_read_command(model) & ~PCI_COMMAND_MASTER)
        if self.irq_type != IRQ_NONE:
            vfio_pci_set_irqs_ioctl(self, lib.VFIO_IRQ_SET_DATA_NONE | lib.VFIO_IRQ_SET_ACTION_TRIGGER,
                                    self.irq_type, 0, 0, b"")
        for ioe in self.ioeventfds:
            ioe.eventfd.put()
        self.ioeventfds.clear()
        self.virq_disabled = False
        self.needs_reset = True
        saved = self.saved
        self.saved = None
        pci_write_command(model, PCI_COMMAND_INTX_DISABLE)
        if self.reset_works and self._reset_function_locked():
            self.needs_reset = False
        if saved is not None:
            pci_restore_state(model, saved)
        # pci_disable_device clears bus mastering
        pci_write_command(model, pci_read_command(model) & ~PCI_COMMAND_MASTER)

    def _probe_mmaps(self) -> None:
        """vfio_pci_probe_mmaps."""
        self.bar_mmap_supported = {}
        for index, bar in self.model.bars.items():
            ok = not bar.is_io and bar.mmappable
            if ok and bar.size < PAGE_SIZE:
                ok = bar.address % PAGE_SIZE == 0
            self.bar_mmap_supported[index] = ok

    # -- resets ---------------------------------------------------------------------------
    def _reset_function_locked(self) -> bool:
        """__pci_reset_function_locked: the first working method resets the
        function (every method ends in the model's reset)."""
        if not pci_reset_methods(self.pdev):
            return False
        self.model.reset()
        self.reset_done()
        return True

    def reset_done(self) -> None:
        """The PCI core's reset_done callback (a variant driver's
        err_handler): migration returns to RUNNING."""
        if self.migration is not None:
            self.migration.reset_done()

    def try_reset_function(self) -> bool:
        """pci_try_reset_function: save, reset, restore."""
        if not pci_reset_methods(self.pdev):
            return False
        saved = pci_save_state(self.model)
        pci_write_command(self.model, PCI_COMMAND_INTX_DISABLE)
        self.model.reset()
        pci_restore_state(self.model, saved)
        self.reset_done()
        return True

    # -- power management ------------------------------------------------------------------
    def set_power_state(self, state: int) -> None:
        """vfio_pci_set_power_state: D3hot saves the state when the device
        loses it (no NoSoftReset), D0 restores it."""
        model = self.model
        if model.pm_offset is None:
            return
        current = model.power_state
        if state == current:
            return
        if self.needs_pm_restore and current < 3 <= state:
            self.pm_save = pci_save_state(model)
        pci_raw_set_power_state(model, state)
        if self.needs_pm_restore and current >= 3 and state == 0 and self.pm_save is not None:
            saved, self.pm_save = self.pm_save, None
            pci_restore_state(model, saved)

    def runtime_pm_entry(self, efd: Eventfd | None) -> None:
        """vfio_pci_runtime_pm_entry."""
        if self.pm_runtime_engaged:
            # vfio_pci_runtime_pm_entry: EINVAL when already engaged
            raise errno_error(errno.EINVAL, "low power is already engaged")
        self.pm_runtime_engaged = True
        self.pm_wake_eventfd = efd

    def runtime_pm_exit(self) -> None:
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
        self.pm_intx_masked = self.irq_type == IRQ_INTX and vfio_pci_intx_mask(self)
        self.suspended = True
        self.pm_save = pci_save_state(self.model)
        pci_raw_set_power_state(self.model, 3)

    def _resume(self) -> None:
        """vfio_pci_core_runtime_resume (after the PCI core's D0 entry)."""
        if not self.suspended:
            return
        self.suspended = False
        pci_raw_set_power_state(self.model, 0)
        if self.pm_save is not None:
            saved, self.pm_save = self.pm_save, None
            pci_restore_state(self.model, saved)
        if self.pm_wake_eventfd is not None:
            self.pm_wake_eventfd.signal()
            self.runtime_pm_exit()
        if self.pm_intx_masked:
            vfio_pci_intx_unmask(self)
            self.pm_intx_masked = False

    def pm_get(self) -> None:
        """vfio_device_pm_runtime_get: the device is resumed for the call."""
        self._resume()

    def pm_put(self) -> None:
        """vfio_device_pm_runtime_put: idle again; suspends while the user
        allowed low power."""
        if self.pm_runtime_engaged:
            self._suspend()

    # -- the model's IrqSink ----------------------------------------------------------------
    def deliver(self, index: int, vector: int) -> None:
        """An MSI/MSI-X message from the device (vfio_msihandler)."""
        vfio_msihandler(self, index, vector)

    def intx(self, level: bool) -> None:
        """The INTx line changed (vfio_intx_handler on assertion)."""
        vfio_intx_handler(self, level)

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

    def poll(self) -> None:
        """Run the actions of signalled virqfds (INTx unmask, ioeventfds)."""
        unmask = self.intx_ctx.unmask_fd
        if unmask is not None and unmask.consume():
            vfio_pci_intx_unmask(self)
        vfio_pci_ioeventfd_poll(self)


# -- the information ioctls (vfio_pci_core.c) ---------------------------------------------------
def vfio_pci_info_atomic_cap(vdev: VfioPciCore) -> bytes:
    """vfio_pci_info_atomic_cap: the AtomicOp completer widths the
    device's DevCap2 reports (the root port is assumed to route them)."""
    model = vdev.model
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


def vfio_pci_ioctl_get_info(vdev: VfioPciCore, arg: IoctlArg) -> int:
    """vfio_pci_ioctl_get_info."""
    uptr = UserPtr(arg)
    ctype = "struct vfio_device_info"
    minsz = offsetofend(ctype, "num_irqs")
    info = uptr.read_struct(ctype, 0, minsz)
    argsz = int(info.argsz)
    if argsz < minsz:
        raise errno_error(errno.EINVAL, "argsz too small")
    size = ffi.sizeof(ctype)
    outsz = min(argsz, size)
    flags = lib.VFIO_DEVICE_FLAGS_PCI
    if vdev.reset_works:
        flags |= lib.VFIO_DEVICE_FLAGS_RESET
    caps = CapChain()
    atomic = vfio_pci_info_atomic_cap(vdev)
    if atomic:
        caps.add(atomic)
    if caps.size:
        flags |= lib.VFIO_DEVICE_FLAGS_CAPS
        if argsz < size + caps.size:
            info.argsz = size + caps.size
        else:
            uptr.write(size, caps.shifted(size))
            info.cap_offset = size
    info.flags = flags
    info.num_regions = VFIO_PCI_NUM_REGIONS
    info.num_irqs = VFIO_PCI_NUM_IRQS
    uptr.write_struct(info, 0, outsz)
    return 0


def _msix_cap(vdev: VfioPciCore, bar: Bar) -> bytes:
    """The MSI-X capability of the BAR holding the table: mappable, or
    (before 4.16) a sparse mmap capability around the table's pages."""
    if vdev.msix_mappable:
        return struct_bytes("struct vfio_info_cap_header", id=lib.VFIO_REGION_INFO_CAP_MSIX_MAPPABLE, version=1)
    start = vdev.msix_offset & ~(PAGE_SIZE - 1)
    end = (vdev.msix_offset + vdev.msix_size + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
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
        data += struct_bytes("struct vfio_region_sparse_mmap_area", offset=off, size=length)
    return data


def vfio_pci_ioctl_get_region_info(vdev: VfioPciCore, arg: IoctlArg) -> int:
    """vfio_get_region_info (vfio_main.c) + vfio_pci_ioctl_get_region_info."""
    uptr = UserPtr(arg)
    ctype = "struct vfio_region_info"
    minsz = offsetofend(ctype, "offset")
    info = uptr.read_struct(ctype, 0, minsz)
    argsz = int(info.argsz)
    if argsz < minsz:
        raise errno_error(errno.EINVAL, "argsz too small")
    index = int(info.index)
    model = vdev.model
    caps = CapChain()
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
            if vdev.bar_mmap_supported.get(index):
                flags |= lib.VFIO_REGION_INFO_FLAG_MMAP
                if index == vdev.msix_bar:
                    caps.add(_msix_cap(vdev, bar))
    elif index == VFIO_PCI_ROM_REGION_INDEX:
        size = 0  # no option ROM
    elif index == VFIO_PCI_VGA_REGION_INDEX:
        # vfio_pci_ioctl_get_region_info: EINVAL without VGA support
        raise errno_error(errno.EINVAL, "the device has no VGA region")
    else:
        raise errno_error(errno.EINVAL, f"region index {index} out of range")
    rsize = ffi.sizeof(ctype)
    if caps.size:
        flags |= lib.VFIO_REGION_INFO_FLAG_CAPS
        if argsz < rsize + caps.size:
            info.argsz = rsize + caps.size
            info.cap_offset = 0
        else:
            uptr.write(rsize, caps.shifted(rsize))
            info.cap_offset = rsize
    info.flags = flags
    info.size = size
    info.offset = index_to_offset(index)
    uptr.write_struct(info, 0, minsz)
    return 0


def vfio_pci_ioctl_get_irq_info(vdev: VfioPciCore, arg: IoctlArg) -> int:
    """vfio_pci_ioctl_get_irq_info."""
    uptr = UserPtr(arg)
    ctype = "struct vfio_irq_info"
    minsz = offsetofend(ctype, "count")
    info = uptr.read_struct(ctype, 0, minsz)
    index = int(info.index)
    if int(info.argsz) < minsz or index >= VFIO_PCI_NUM_IRQS:
        raise errno_error(errno.EINVAL, "argsz too small or index out of range")
    flags = lib.VFIO_IRQ_INFO_EVENTFD
    if index == IRQ_INTX:
        flags |= lib.VFIO_IRQ_INFO_MASKABLE | lib.VFIO_IRQ_INFO_AUTOMASKED
    elif index != IRQ_MSIX or vdev.model.msix is None:
        # MSI-X vectors are allocated on demand (has_dyn_msix, as on x86,
        # for a device with MSI-X): their count may grow while enabled;
        # every other index is fixed.
        flags |= lib.VFIO_IRQ_INFO_NORESIZE
    info.flags = flags
    info.count = vfio_pci_get_irq_count(vdev, index)
    uptr.write_struct(info, 0, minsz)
    return 0


# -- resets (vfio_pci_core.c) ---------------------------------------------------------------------
def vfio_pci_ioctl_reset(vdev: VfioPciCore, arg: IoctlArg) -> int:
    """vfio_pci_ioctl_reset."""
    if not vdev.reset_works:
        raise errno_error(errno.EINVAL, "the device has no reset method")
    vdev.set_power_state(0)
    if not vdev.try_reset_function():
        raise errno_error(errno.ENOTTY, "reset failed")
    return 0


def _dev_set(vdev: VfioPciCore) -> list[Any]:
    """vfio_assign_device_set(pdev->bus): vfio-pci devices on the bus."""
    parent = getattr(vdev.pdev, "parent", None)
    if parent is None:
        return [vdev.pdev]
    return [d for d in parent.children if getattr(d, "driver", None) == "vfio-pci"]


def vfio_iommufd_get_dev_id(pdev: Any, ictx: Any) -> int:
    """vfio_iommufd_get_dev_id: >0 bound to ictx, -ENOENT owned through
    the IOMMU group, -ENODEV not owned."""
    core = core_of(pdev)
    if core is not None and core.iommufd is ictx and core.devid is not None and ictx is not None:
        return core.devid
    group = getattr(pdev, "group", None)
    if group is None:
        return -errno.ENODEV
    for other in getattr(group, "devices", []):
        oc = core_of(other)
        if oc is not None and oc.iommufd is ictx and ictx is not None and oc.devid is not None:
            return -errno.ENOENT
    return -errno.ENODEV


def _seg_bus_devfn(bdf: str) -> tuple[int, int, int]:
    return int(bdf[0:4], 16), int(bdf[5:7], 16), (int(bdf[8:10], 16) << 3) | int(bdf[11], 16)


def vfio_pci_ioctl_get_pci_hot_reset_info(vdev: VfioPciCore, arg: IoctlArg) -> int:
    """vfio_pci_ioctl_get_pci_hot_reset_info + vfio_pci_fill_devs."""
    uptr = UserPtr(arg)
    ctype = "struct vfio_pci_hot_reset_info"
    minsz = offsetofend(ctype, "count")
    hdr = uptr.read_struct(ctype, 0, minsz)
    argsz = int(hdr.argsz)
    if argsz < minsz:
        raise errno_error(errno.EINVAL, "argsz too small")
    hdr.flags = 0
    devices = pci_walk_bus(vdev.pdev)
    count = len(devices)
    dsize = ffi.sizeof("struct vfio_pci_dependent_device")
    if count > (argsz - ffi.sizeof(ctype)) // dsize:
        # vfio_pci_ioctl_get_pci_hot_reset_info: the count, then ENOSPC
        hdr.count = count
        uptr.write_struct(hdr, 0, minsz)
        raise errno_error(errno.ENOSPC, f"{count} devices affected")
    flags = 0
    if vdev.cdev_opened:
        flags = lib.VFIO_PCI_HOT_RESET_FLAG_DEV_ID | lib.VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED
    dev_set = _dev_set(vdev)
    out = bytearray()
    for d in devices:
        entry = ffi.new("struct vfio_pci_dependent_device *")
        if flags & lib.VFIO_PCI_HOT_RESET_FLAG_DEV_ID:
            if d not in dev_set:
                devid = lib.VFIO_PCI_DEVID_NOT_OWNED
            else:
                got = vfio_iommufd_get_dev_id(d, vdev.iommufd)
                if got > 0:
                    devid = got
                elif got == -errno.ENOENT:
                    devid = lib.VFIO_PCI_DEVID_OWNED
                else:
                    devid = lib.VFIO_PCI_DEVID_NOT_OWNED
            if devid == lib.VFIO_PCI_DEVID_NOT_OWNED:
                flags &= ~lib.VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED
            entry.devid = devid & U32
        else:
            group = getattr(d, "group", None)
            if group is None:
                # vfio_pci_fill_devs: EPERM for a device without an IOMMU group
                raise errno_error(errno.EPERM, f"{d.bdf} has no IOMMU group")
            entry.group_id = int(group.id)
        entry.segment, entry.bus, entry.devfn = _seg_bus_devfn(d.bdf)
        out += bytes(ffi.buffer(entry))
    uptr.write(ffi.sizeof(ctype), bytes(out))
    hdr.count = count
    hdr.flags = flags
    uptr.write_struct(hdr, 0, minsz)
    return 0


def _group_of_file(vdev: VfioPciCore, file: FakeFile | None) -> Any:
    """vfio_file_is_group: the IOMMU group of a VFIO group file."""
    if file is None:
        return None
    for vgroup in vdev.system.vfio_groups():
        if vgroup.opened_file is file:
            return vgroup.iommu_group
    if type(file).__name__ == "GroupFile":
        return getattr(getattr(file, "vgroup", None), "iommu_group", None)
    return None


def vfio_pci_ioctl_pci_hot_reset(vdev: VfioPciCore, arg: IoctlArg) -> int:
    """vfio_pci_ioctl_pci_hot_reset (+ _groups: the group fds proving
    ownership on the group path)."""
    uptr = UserPtr(arg)
    ctype = "struct vfio_pci_hot_reset"
    minsz = offsetofend(ctype, "count")
    hdr = uptr.read_struct(ctype, 0, minsz)
    if int(hdr.argsz) < minsz or int(hdr.flags):
        raise errno_error(errno.EINVAL, "argsz too small or flags set")
    count = int(hdr.count)
    if bool(count) == vdev.cdev_opened:
        # vfio_pci_ioctl_pci_hot_reset: group fds only (and always) for group-opened devices
        raise errno_error(errno.EINVAL, "group fds are for group-opened devices only")
    devices = pci_walk_bus(vdev.pdev)
    groups: list[Any] | None = None
    if count:
        if count > len(devices):
            raise errno_error(errno.EINVAL, "more group fds than affected devices")
        raw = uptr.read(minsz, 4 * count)
        groups = []
        for i in range(count):
            fd = int.from_bytes(raw[4 * i:4 * i + 4], "little", signed=True)
            file = vdev.kernel.file_or_none(fd)
            if file is None:
                try:
                    os.fstat(fd)
                except OSError:
                    raise errno_error(errno.EBADF, f"fd {fd}") from None
            group = _group_of_file(vdev, file)
            if group is None:
                # vfio_file_is_group: EINVAL for anything but a group file
                raise errno_error(errno.EINVAL, f"fd {fd} is not a VFIO group")
            groups.append(group)
    vfio_pci_dev_set_hot_reset(vdev, devices, groups, None if groups is not None else vdev.iommufd)
    return 0


def vfio_pci_dev_set_hot_reset(vdev: VfioPciCore, devices: list[Any], groups: list[Any] | None,
                               ictx: Any) -> None:
    """vfio_pci_dev_set_hot_reset."""
    dev_set = _dev_set(vdev)
    # vfio_pci_dev_set_resettable: every device the reset hits must be ours
    if any(d not in dev_set for d in devices):
        raise errno_error(errno.EINVAL, "a device on the bus is not bound to vfio-pci")
    for d in dev_set:
        if groups is not None:
            owned = getattr(d, "group", None) in groups
        else:
            devid = vfio_iommufd_get_dev_id(d, ictx)
            owned = devid > 0 or devid == -errno.ENOENT
        if not owned:
            # vfio_pci_dev_set_hot_reset: every device of the set must be the caller's
            raise errno_error(errno.EINVAL, f"{d.bdf} is not owned by the caller")
    # pci_reset_bus: save, reset, restore every function below the bridge
    saved = []
    for d in devices:
        model = getattr(d, "model", None)
        if isinstance(model, DeviceModel):
            c = core_of(d)
            if c is not None:
                c.set_power_state(0)
            saved.append((model, pci_save_state(model)))
    for model, _state in saved:
        model.bus_reset()
    for model, state in saved:
        pci_restore_state(model, state)
    for d in devices:
        c = core_of(d)
        if c is not None:
            c.reset_done()


#: A vfio_pci_core_ioctl handler: ``(vdev, arg) -> 0``.
CoreIoctl = Callable[[VfioPciCore, IoctlArg], int]

#: vfio_pci_core_ioctl's switch.
VFIO_PCI_CORE_IOCTLS: dict[int, CoreIoctl] = {
    lib.VFIO_DEVICE_GET_INFO: vfio_pci_ioctl_get_info,
    lib.VFIO_DEVICE_GET_IRQ_INFO: vfio_pci_ioctl_get_irq_info,
    lib.VFIO_DEVICE_GET_PCI_HOT_RESET_INFO: vfio_pci_ioctl_get_pci_hot_reset_info,
    lib.VFIO_DEVICE_IOEVENTFD: vfio_pci_ioctl_ioeventfd,
    lib.VFIO_DEVICE_PCI_HOT_RESET: vfio_pci_ioctl_pci_hot_reset,
    lib.VFIO_DEVICE_RESET: vfio_pci_ioctl_reset,
    lib.VFIO_DEVICE_SET_IRQS: vfio_pci_ioctl_set_irqs,
}


def vfio_pci_core_ioctl(vdev: VfioPciCore, request: int, arg: IoctlArg) -> int:
    """vfio_pci_core_ioctl: the device ops' ioctl."""
    handler = VFIO_PCI_CORE_IOCTLS.get(request)
    if handler is None:
        # vfio_pci_core_ioctl: ENOTTY for anything else
        raise errno_error(errno.ENOTTY, f"ioctl {request:#x}")
    return handler(vdev, arg)
