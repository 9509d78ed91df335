"""/dev/iommu: the iommufd context of the fake kernel.

After drivers/iommu/iommufd/main.c of Linux 7.3: the context
(:class:`IommufdFile`, struct iommufd_ctx), its object table, the ioctl
table and dispatch (iommufd_fops_ioctl: request -> struct, last member,
handler), the copy of the command in and out (struct iommufd_ucmd:
copy_struct_from_user, iommufd_ucmd_respond, through
:mod:`pyvfio.fake.uaccess`), IOMMU_DESTROY and IOMMU_OPTION.  The handlers
live in the modules named after the kernel's files: :mod:`.ioas`,
:mod:`.device`, :mod:`.hw_pagetable`, :mod:`.vfio_compat`, :mod:`.eventq`,
:mod:`.viommu`; the page table in :mod:`.io_pagetable` and :mod:`.pages`.
Every check carries a comment naming the kernel function whose rule it
mirrors, and checks run in the kernel's order so that a call breaking two
rules fails with the same errno as on Linux.

Contract with the vfio-pci device file (:mod:`pyvfio.fake.vfio_pci`), methods
of :class:`IommufdFile` served by :mod:`.device` and :mod:`.vfio_compat`:

* ``bind_device(pdev, device_file) -> dev_id`` (iommufd_device_bind: claims
  DMA ownership of the device for this context),
* ``attach_device(dev_id, pt_id, pasid=None) -> pt_id`` (attach, or replace
  when already attached at that PASID; returns the ID actually attached,
  an automatically chosen HWPT when ``pt_id`` names an IOAS),
* ``detach_device(dev_id, pasid=None)`` (a no-op when not attached),
* ``unbind_device(dev_id)`` (detaches what is still attached first),
* ``compat_attach_device(dev_id)`` for the group path with an iommufd
  (vfio_iommufd_compat_attach_ioas), ``device_id_of(pdev)`` and
  ``has_group(iommu_group)`` (vfio_iommufd_get_dev_id).

Contract with the group file (:mod:`pyvfio.fake.vfio.group`):
``compat_attach_group(vgroup)`` / ``compat_detach_group(vgroup)`` for
VFIO_GROUP_SET_CONTAINER with an iommufd.

Differences from the kernel:

* the IOMMU driver is intel-iommu's (VT-d, or no IOMMU at all), or, on a
  machine whose ``iommu.hw_info_type`` is "arm_smmuv3", arm-smmu-v3's.  On
  VT-d vIOMMU, vDEVICE, vEVENTQ and HW queue objects cannot be created
  (EOPNOTSUPP, as the intel-iommu driver gives), nested HWPTs need a
  nesting parent, which this IOMMU cannot allocate, and
  IOMMU_HWPT_INVALIDATE never finds a target.  On the SMMUv3, nesting
  parents, vIOMMUs, vDEVICEs, nested HWPTs on a vIOMMU and the vIOMMU's
  invalidation work as the driver allows; a vEVENTQ and a HW queue are not
  simulated (EOPNOTSUPP), nor is stage-1 translation through the guest's
  tables (a DMA through a stage-1 vSTE faults);
* the self-test ioctl (IOMMU_TEST_CMD) is not provided (ENOTTY);
* pinned pages of every accounting mode are charged to the one
  ``System.user_memory`` counter;
* dirty bits are tracked at 4 KiB granularity even where the kernel would
  use a huge IOPTE;
* IOMMU_IOAS_NOIOMMU_GET_PA reports the process address of the page as its
  "physical" address, and no-IOMMU devices get no DMA translation.

Machine features read from the :class:`~pyvfio.fake.machine.system.System` when
present (defaults in brackets): ``transparent_hugepage`` [True: automatic
IOVAs are aligned up to 2 MiB, as with CONFIG_TRANSPARENT_HUGEPAGE],
``cap_ipc_lock`` [False: pinned pages are charged], ``cap_sys_resource``
[True], ``cap_sys_rawio``, ``iommufd_params`` (the module's
``allow_unsafe_interrupts`` [False]);
``iommu.nesting``, ``iommu.cap_reg``/``iommu.ecap_reg``; per device
``pasid_bits``, ``pri_supported`` and ``ats_supported`` [none].
"""

from __future__ import annotations

import errno
import functools
import heapq
from typing import TYPE_CHECKING, Any, Callable

from ..._uapi import ffi, lib
from ...backend.base import IoctlArg
from ..core import FakeBackend, FakeFile, errno_error
from ..uaccess import UserPtr
from . import device, eventq, hw_pagetable, ioas, vfio_compat, viommu
from ._private import (
    INT_MAX,
    NO_PASID,
    IGroup,
    IommufdObject,
    Ioas,
    offsetofend,
    reserved_nonzero,
)
from .eventq import FaultFile
from .ioas import iommufd_ioas_option
from .pages import ACCOUNT_MM, ACCOUNT_USER

if TYPE_CHECKING:
    from ..machine.system import IommuGroup, PciDevice, VfioGroup

__all__ = ["IommufdFile", "FaultFile", "NO_PASID", "Ucmd", "IOMMUFD_CMD_BASE"]

#: IOMMUFD_TYPE: the ioctl type of every iommufd command.
IOMMUFD_TYPE = ord(";")
#: IOMMUFD_CMD_BASE: the number of the first iommufd command.
IOMMUFD_CMD_BASE = 0x80


@functools.lru_cache(maxsize=None)
def _kernel_struct(ctype: str) -> tuple[Any, int]:
    """The parsed ``ctype *`` and ``sizeof(ctype)``, once per command type."""
    return ffi.typeof(ctype + " *"), int(ffi.sizeof(ctype))


class Ucmd:
    """struct iommufd_ucmd: the kernel's copy of the command.

    :ivar user: the ioctl's user pointer.
    :ivar user_size: the ``size`` the user gave.
    :ivar ksize: the size of the kernel's struct.
    :ivar cmd: the kernel copy (``ctype *``) the handler works on.
    """

    __slots__ = ("user", "user_size", "ksize", "cmd")

    def __init__(self, user: UserPtr, ctype: str, user_size: int) -> None:
        self.user = user
        self.user_size = user_size
        ptype, self.ksize = _kernel_struct(ctype)
        self.cmd: Any
        if user_size > self.ksize:
            # copy_struct_from_user: E2BIG unless the tail the kernel does not
            # know is zero
            self.cmd = user.copy_struct_from_user(ctype, user_size)
        else:
            # copy_struct_from_user of a struct no larger than the kernel's:
            # one copy_from_user into a zeroed kernel struct
            self.cmd = ffi.new(ptype)
            user.read_into(0, self.cmd, user_size)

    def respond(self) -> None:
        """iommufd_ucmd_respond: copy back up to the user's size."""
        self.user.write_from(0, self.cmd, min(self.user_size, self.ksize))


class IommufdFile(FakeFile):
    """An open /dev/iommu: one iommufd context (struct iommufd_ctx)."""

    path = "/dev/iommu"

    def __init__(self, kernel: FakeBackend) -> None:
        super().__init__(kernel)
        # iommufd_fops_open
        self.account_mode = ACCOUNT_USER
        self.no_iommu_mode = False
        self.vfio_ioas: Ioas | None = None
        self.objects: dict[int, IommufdObject] = {}
        self._pending: dict[int, IommufdObject] = {}
        self._free_ids: list[int] = []
        self._next_id = 1
        self.groups: dict[object, IGroup] = {}
        #: references on the context: the fd, bound devices, event queue
        #: fds and vfio groups using it as their container
        self._refs = 1
        self.closed = False

    def __repr__(self) -> str:
        return f"<IommufdFile {len(self.objects)} objects>"

    # -- context lifetime ------------------------------------------------------------------------
    def release(self) -> None:
        """The fd closed; the context lives on while devices, event queue
        fds or vfio groups hold it (iommufd_ctx_get)."""
        if self.closed:
            return
        self.closed = True
        self.ctx_put()

    def ctx_get(self) -> None:
        """iommufd_ctx_get: one more holder of the context."""
        self._refs += 1

    def ctx_put(self) -> None:
        """iommufd_ctx_put: the last holder gone, the context is torn down."""
        assert self._refs > 0
        self._refs -= 1
        if not self._refs:
            self._teardown()

    def _teardown(self) -> None:
        """iommufd_fops_release: destroy leaf objects until none is left."""
        while self.objects:
            destroyed = 0
            for oid in sorted(self.objects):
                obj = self.objects.get(oid)
                if obj is None or obj.users != 1:
                    continue
                del self.objects[oid]
                obj.users = 0
                obj.destroy()
                destroyed += 1
            if not destroyed:  # pragma: no cover - a refcount bug
                break
        self.vfio_ioas = None

    @property
    def system_page_size(self) -> int:
        """PAGE_SIZE of the simulated kernel in bytes: the granule of IOAS
        mappings and of pinning."""
        return int(self.system.page_size)

    # -- the object table -------------------------------------------------------------------------
    def object_alloc(self, obj: IommufdObject) -> None:
        """_iommufd_object_alloc: the lowest free ID from 1 (xa_alloc with
        XA_FLAGS_ALLOC1 and xa_limit_31b), reserved until finalized."""
        fi = self.system.fault_inject
        if fi.armed:
            # _iommufd_object_alloc: the kzalloc of the object failing
            fi.maybe_fail("id_alloc")
        if self._free_ids:
            oid = heapq.heappop(self._free_ids)
        else:
            if self._next_id > INT_MAX:
                # xa_alloc: EBUSY when the ID space is full
                raise errno_error(errno.EBUSY, "no free object ID")
            oid = self._next_id
            self._next_id += 1
        obj.id = oid
        self._pending[oid] = obj

    def object_finalize(self, obj: IommufdObject) -> None:
        """iommufd_object_finalize: the object becomes visible."""
        del self._pending[obj.id]
        self.objects[obj.id] = obj

    def object_abort(self, obj: IommufdObject) -> None:
        """iommufd_object_abort: give back the ID of an object never
        finalized."""
        self._pending.pop(obj.id, None)
        heapq.heappush(self._free_ids, obj.id)

    def object_abort_and_destroy(self, obj: IommufdObject) -> None:
        """iommufd_object_abort_and_destroy."""
        self._pending.pop(obj.id, None)
        obj.destroy()
        heapq.heappush(self._free_ids, obj.id)

    def get_object(self, oid: int, kind: str | None = None) -> Any:
        """iommufd_get_object: ENOENT for an unknown ID or the wrong type."""
        obj = self.objects.get(oid)
        if obj is None or (kind is not None and obj.kind != kind):
            raise errno_error(errno.ENOENT, f"no object {oid}" + (f" of type {kind}" if kind else ""))
        return obj

    def object_tombstone(self, obj: IommufdObject) -> None:
        """iommufd_object_tombstone_user: destroy ``obj`` and keep its ID
        taken (a tombstone: the ID is not reused while the context lives)."""
        del self.objects[obj.id]
        obj.users = 0
        obj.destroy()

    def object_unlink(self, obj: IommufdObject) -> None:
        """Take ``obj`` out of the table and free its ID, without its
        destroy op (the caller tears it down)."""
        del self.objects[obj.id]
        heapq.heappush(self._free_ids, obj.id)
        obj.users = 0

    def object_remove(self, obj: IommufdObject) -> None:
        """Take ``obj`` out of the table and destroy it."""
        del self.objects[obj.id]
        if self.vfio_ioas is obj:
            self.vfio_ioas = None
        obj.users = 0
        obj.destroy()
        heapq.heappush(self._free_ids, obj.id)

    def object_ids(self, kind: str | None = None) -> list[int]:
        """IDs of live objects (for tests and debugging)."""
        return sorted(o.id for o in self.objects.values() if kind is None or o.kind == kind)

    # -- dispatch -----------------------------------------------------------------------------------
    def ioctl(self, request: int, arg: IoctlArg) -> int:
        """iommufd_fops_ioctl."""
        nr = request & 0xFF
        if nr < IOMMUFD_CMD_BASE or nr - IOMMUFD_CMD_BASE >= len(_OPS):
            # iommufd_fops_ioctl: numbers outside the table are vfio compat ioctls
            return vfio_compat.iommufd_vfio_ioctl(self, request, arg)
        user = UserPtr(arg)
        # get_user of the size: EFAULT for a bad pointer
        user_size = user.read_u32(0)
        op = _OPS[nr - IOMMUFD_CMD_BASE]
        if op is None or op.request != request:
            # iommufd_fops_ioctl: ENOIOCTLCMD (ENOTTY) when the number does not match
            raise errno_error(errno.ENOTTY)
        if user_size < op.min_size:
            # iommufd_fops_ioctl: EINVAL below the minimum size
            raise errno_error(errno.EINVAL, f"size {user_size} < {op.min_size}")
        ucmd = Ucmd(user, op.ctype, user_size)
        return op.handler(self, ucmd)

    # -- the device side: what the vfio files call ----------------------------------------------------
    def bind_device(self, pdev: PciDevice, device_file: object) -> int:
        """iommufd_device_bind: a new device object claiming DMA ownership;
        returns its ID."""
        return device.iommufd_device_bind(self, pdev, device_file)

    def unbind_device(self, dev_id: int) -> None:
        """iommufd_device_unbind (detaches what is still attached first)."""
        device.iommufd_device_unbind(self, dev_id)

    def attach_device(self, dev_id: int, pt_id: int, pasid: int | None = None) -> int:
        """iommufd_device_attach, or iommufd_device_replace when the device
        is already attached at ``pasid``; returns the ID attached."""
        return device.iommufd_device_attach(self, dev_id, pt_id, pasid)

    def detach_device(self, dev_id: int, pasid: int | None = None) -> None:
        """iommufd_device_detach (a no-op when not attached)."""
        device.iommufd_device_detach(self, dev_id, pasid)

    def device_id_of(self, pdev: PciDevice) -> int | None:
        """The device ID ``pdev`` is bound with here, or None."""
        return device.iommufd_device_id_of(self, pdev)

    def has_group(self, group: IommuGroup | None) -> bool:
        """iommufd_ctx_has_group."""
        return device.iommufd_ctx_has_group(self, group)

    def compat_attach_group(self, vgroup: VfioGroup) -> None:
        """VFIO_GROUP_SET_CONTAINER with this iommufd:
        iommufd_vfio_compat_set_no_iommu or iommufd_vfio_compat_ioas_create;
        the group then holds a context reference."""
        vfio_compat.iommufd_vfio_compat_attach_group(self, vgroup)

    def compat_detach_group(self, vgroup: VfioGroup) -> None:
        """The group drops its context reference (vfio_group_detach_container)."""
        self.ctx_put()

    def compat_attach_device(self, dev_id: int) -> int:
        """vfio_iommufd_compat_attach_ioas: attach to the compat IOAS."""
        return vfio_compat.iommufd_vfio_compat_attach_device(self, dev_id)


# -- IOMMU_DESTROY ----------------------------------------------------------------------------------
def iommufd_destroy(ictx: IommufdFile, u: Ucmd) -> int:
    """iommufd_destroy -> iommufd_object_remove."""
    oid = int(u.cmd.id)
    obj = ictx.objects.get(oid)
    if obj is None:
        # iommufd_object_remove: ENOENT for an unknown ID
        raise errno_error(errno.ENOENT, f"no object {oid}")
    if obj.users != 1:
        # iommufd_object_remove: EBUSY while other objects hold it
        raise errno_error(errno.EBUSY, f"object {oid} is in use")
    ictx.object_remove(obj)
    return 0


# -- IOMMU_OPTION -----------------------------------------------------------------------------------
def iommufd_option(ictx: IommufdFile, u: Ucmd) -> int:
    """iommufd_option."""
    cmd = u.cmd
    if reserved_nonzero(cmd):
        # iommufd_option: EOPNOTSUPP for a nonzero __reserved
        raise errno_error(errno.EOPNOTSUPP, "__reserved must be 0")
    if cmd.option_id == lib.IOMMU_OPTION_RLIMIT_MODE:
        _option_rlimit_mode(ictx, cmd)
    elif cmd.option_id == lib.IOMMU_OPTION_HUGE_PAGES:
        iommufd_ioas_option(ictx, cmd)
    else:
        # iommufd_option: EOPNOTSUPP for an unknown option
        raise errno_error(errno.EOPNOTSUPP, f"unknown option {cmd.option_id}")
    # put_user of val64
    u.user.write_u64(int(ffi.offsetof("struct iommu_option", "val64")), int(cmd.val64))
    return 0


def _option_rlimit_mode(ictx: IommufdFile, cmd: Any) -> None:
    """iommufd_option_rlimit_mode."""
    if cmd.object_id:
        # iommufd_option_rlimit_mode: EOPNOTSUPP for an object ID
        raise errno_error(errno.EOPNOTSUPP, "RLIMIT_MODE is global")
    if cmd.op == lib.IOMMU_OPTION_OP_GET:
        cmd.val64 = 1 if ictx.account_mode == ACCOUNT_MM else 0
        return
    if cmd.op == lib.IOMMU_OPTION_OP_SET:
        if not getattr(ictx.system, "cap_sys_resource", True):
            # iommufd_option_rlimit_mode: EPERM without CAP_SYS_RESOURCE
            raise errno_error(errno.EPERM, "needs CAP_SYS_RESOURCE")
        if ictx.objects or ictx._pending:
            # iommufd_option_rlimit_mode: EBUSY once objects exist
            raise errno_error(errno.EBUSY, "objects exist")
        if cmd.val64 == 0:
            ictx.account_mode = ACCOUNT_USER
        elif cmd.val64 == 1:
            ictx.account_mode = ACCOUNT_MM
        else:
            # iommufd_option_rlimit_mode: EINVAL for other values
            raise errno_error(errno.EINVAL, f"bad value {cmd.val64}")
        return
    # iommufd_option_rlimit_mode: EOPNOTSUPP for an unknown op
    raise errno_error(errno.EOPNOTSUPP, f"unknown op {cmd.op}")


# -- iommufd_ioctl_ops --------------------------------------------------------------------------------
_Handler = Callable[[IommufdFile, Ucmd], int]


class _Op:
    """struct iommufd_ioctl_op: request, command struct, minimum size."""

    __slots__ = ("request", "ctype", "min_size", "handler")

    def __init__(self, request: int, ctype: str, last: str, handler: _Handler) -> None:
        self.request = request
        self.ctype = ctype
        self.min_size = offsetofend(ctype, last)
        self.handler = handler


_OP_LIST: list[_Op] = [
    _Op(lib.IOMMU_DESTROY, "struct iommu_destroy", "id", iommufd_destroy),
    _Op(lib.IOMMU_FAULT_QUEUE_ALLOC, "struct iommu_fault_alloc", "out_fault_fd",
        eventq.iommufd_fault_alloc),
    _Op(lib.IOMMU_GET_HW_INFO, "struct iommu_hw_info", "__reserved", device.iommufd_get_hw_info),
    _Op(lib.IOMMU_HW_QUEUE_ALLOC, "struct iommu_hw_queue_alloc", "length",
        viommu.iommufd_hw_queue_alloc_ioctl),
    _Op(lib.IOMMU_HWPT_ALLOC, "struct iommu_hwpt_alloc", "__reserved",
        hw_pagetable.iommufd_hwpt_alloc),
    _Op(lib.IOMMU_HWPT_GET_DIRTY_BITMAP, "struct iommu_hwpt_get_dirty_bitmap", "data",
        hw_pagetable.iommufd_hwpt_get_dirty_bitmap),
    _Op(lib.IOMMU_HWPT_INVALIDATE, "struct iommu_hwpt_invalidate", "__reserved",
        hw_pagetable.iommufd_hwpt_invalidate),
    _Op(lib.IOMMU_HWPT_SET_DIRTY_TRACKING, "struct iommu_hwpt_set_dirty_tracking", "__reserved",
        hw_pagetable.iommufd_hwpt_set_dirty_tracking),
    _Op(lib.IOMMU_IOAS_ALLOC, "struct iommu_ioas_alloc", "out_ioas_id",
        ioas.iommufd_ioas_alloc_ioctl),
    _Op(lib.IOMMU_IOAS_ALLOW_IOVAS, "struct iommu_ioas_allow_iovas", "allowed_iovas",
        ioas.iommufd_ioas_allow_iovas),
    _Op(lib.IOMMU_IOAS_CHANGE_PROCESS, "struct iommu_ioas_change_process", "__reserved",
        ioas.iommufd_ioas_change_process),
    _Op(lib.IOMMU_IOAS_COPY, "struct iommu_ioas_copy", "src_iova", ioas.iommufd_ioas_copy),
    _Op(lib.IOMMU_IOAS_IOVA_RANGES, "struct iommu_ioas_iova_ranges", "out_iova_alignment",
        ioas.iommufd_ioas_iova_ranges),
    _Op(lib.IOMMU_IOAS_MAP, "struct iommu_ioas_map", "iova", ioas.iommufd_ioas_map),
    _Op(lib.IOMMU_IOAS_MAP_FILE, "struct iommu_ioas_map_file", "iova",
        ioas.iommufd_ioas_map_file),
    _Op(lib.IOMMU_IOAS_NOIOMMU_GET_PA, "struct iommu_ioas_noiommu_get_pa", "out_phys",
        ioas.iommufd_ioas_noiommu_get_pa),
    _Op(lib.IOMMU_IOAS_UNMAP, "struct iommu_ioas_unmap", "length", ioas.iommufd_ioas_unmap),
    _Op(lib.IOMMU_OPTION, "struct iommu_option", "val64", iommufd_option),
    _Op(lib.IOMMU_VDEVICE_ALLOC, "struct iommu_vdevice_alloc", "virt_id",
        viommu.iommufd_vdevice_alloc_ioctl),
    _Op(lib.IOMMU_VEVENTQ_ALLOC, "struct iommu_veventq_alloc", "out_veventq_fd",
        eventq.iommufd_veventq_alloc),
    _Op(lib.IOMMU_VFIO_IOAS, "struct iommu_vfio_ioas", "__reserved",
        vfio_compat.iommufd_vfio_ioas),
    _Op(lib.IOMMU_VIOMMU_ALLOC, "struct iommu_viommu_alloc", "out_viommu_id",
        viommu.iommufd_viommu_alloc_ioctl),
]

#: iommufd_ioctl_ops, indexed by _IOC_NR - IOMMUFD_CMD_BASE
_OPS: list[_Op | None] = [None] * (max((o.request & 0xFF) for o in _OP_LIST) - IOMMUFD_CMD_BASE + 1)
for _o in _OP_LIST:
    _OPS[(_o.request & 0xFF) - IOMMUFD_CMD_BASE] = _o
del _o
