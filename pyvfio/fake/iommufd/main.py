"""/dev/iommu: the iommufd context of the fake kernel.

After drivers/iommu/iommufd/ of Linux 7.3 (main.c, ioas.c, device.c,
hw_pagetable.c, vfio_compat.c, eventq.c, viommu.c); the I/O page table
itself lives in :mod:`.io_pagetable` and :mod:`.pages`.  Every check carries a
comment naming the kernel function whose rule it mirrors, and checks run in
the kernel's order so that a call breaking two rules fails with the same
errno as on Linux.

Contract with the vfio-pci device file (:mod:`pyvfio.fake.vfio_pci`):

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

Contract with the legacy group file: ``compat_attach_group(vgroup)`` /
``compat_detach_group(vgroup)`` for VFIO_GROUP_SET_CONTAINER with an iommufd.

Differences from the kernel:

* the IOMMU is an Intel VT-d (or no IOMMU at all): vIOMMU, vDEVICE,
  vEVENTQ and HW queue objects cannot be created (EOPNOTSUPP, as the
  intel-iommu driver gives), nested HWPTs need a nesting parent, which this
  IOMMU cannot allocate, and IOMMU_HWPT_INVALIDATE never finds a target;
* the self-test ioctl (IOMMU_TEST_CMD) is not provided (ENOTTY);
* pinned pages of every accounting mode are charged to the one
  ``System.user_memory`` counter;
* dirty bits are tracked at 4 KiB granularity even where the kernel would
  use a huge IOPTE;
* IOMMU_IOAS_NOIOMMU_GET_PA reports the process address of the page as its
  "physical" address, and no-IOMMU devices get no DMA translation.

Machine features read from the :class:`~pyvfio.fake.system.System` when
present (defaults in brackets): ``transparent_hugepage`` [True: automatic
IOVAs are aligned up to 2 MiB, as with CONFIG_TRANSPARENT_HUGEPAGE],
``cap_ipc_lock`` [False: pinned pages are charged], ``cap_sys_resource``
[True], ``cap_sys_rawio``, ``iommufd_allow_unsafe_interrupts`` [False];
``iommu.nesting``, ``iommu.cap_reg``/``iommu.ecap_reg``; per device
``pasid_bits``, ``pri_supported`` and ``ats_supported`` [none].
"""

from __future__ import annotations

import errno
import heapq
import os
from typing import TYPE_CHECKING, Any, Callable

from ..._uapi import ffi, lib
from ...backend.base import IoctlArg
from ..core import FakeBackend, FakeFile, IoDomain, IommuFault, UserMemory, errno_error
from .io_pagetable import (
    HPAGE_SIZE,
    IOMMU_READ,
    IOMMU_WRITE,
    ULONG_MAX,
    ElmPages,
    IoPagetable,
    IoptDomain,
    page_runs,
)
from .pages import ACCOUNT_MM, ACCOUNT_NONE, ACCOUNT_USER, Pages

if TYPE_CHECKING:
    from ..machine.system import IommuGroup, PciDevice, VfioGroup

__all__ = ["IommufdFile", "FaultFile", "NO_PASID"]

U64_MAX = ULONG_MAX
INT_MAX = (1 << 31) - 1
#: IOMMU_NO_PASID
NO_PASID = 0
IOMMUFD_TYPE = ord(";")
IOMMUFD_CMD_BASE = 0x80
#: IOMMU_HWPT_INVALIDATE_ENTRY_NUM_MAX, VEVENTQ_MAX_DEPTH
_INVALIDATE_ENTRY_NUM_MAX = 1 << 19
_VEVENTQ_MAX_DEPTH = 1 << 19

# Object types (enum iommufd_object_type)
OBJ_DEVICE = "device"
OBJ_HWPT_PAGING = "hwpt_paging"
OBJ_HWPT_NESTED = "hwpt_nested"
OBJ_IOAS = "ioas"
OBJ_FAULT = "fault"
OBJ_VIOMMU = "viommu"

_HW_INFO_TYPES = {
    "none": lib.IOMMU_HW_INFO_TYPE_NONE,
    "intel_vtd": lib.IOMMU_HW_INFO_TYPE_INTEL_VTD,
    "arm_smmuv3": lib.IOMMU_HW_INFO_TYPE_ARM_SMMUV3,
    "amd": lib.IOMMU_HW_INFO_TYPE_AMD,
}
_HW_INFO_STRUCTS = {
    lib.IOMMU_HW_INFO_TYPE_INTEL_VTD: "struct iommu_hw_info_vtd",
    lib.IOMMU_HW_INFO_TYPE_ARM_SMMUV3: "struct iommu_hw_info_arm_smmuv3",
    lib.IOMMU_HW_INFO_TYPE_AMD: "struct iommu_hw_info_amd",
}

_MAP_FLAGS = (lib.IOMMU_IOAS_MAP_FIXED_IOVA | lib.IOMMU_IOAS_MAP_WRITEABLE
              | lib.IOMMU_IOAS_MAP_READABLE)


def _offsetofend(ctype: str, field: str) -> int:
    for name, f in ffi.typeof(ctype).fields:
        if name == field:
            return int(f.offset) + int(ffi.sizeof(f.type))
    raise KeyError(field)


def _reserved(cmd: Any, name: str = "__reserved") -> bool:
    """Whether a ``__reserved`` member is nonzero (getattr avoids Python's
    name mangling of double-underscore attributes)."""
    value = getattr(cmd, name)
    if isinstance(value, int):
        return value != 0
    return any(int(x) for x in value)


def _conv_iommu_prot(flags: int) -> int:
    """conv_iommu_prot (IOMMU_CACHE is implied)."""
    prot = 0
    if flags & lib.IOMMU_IOAS_MAP_WRITEABLE:
        prot |= IOMMU_WRITE
    if flags & lib.IOMMU_IOAS_MAP_READABLE:
        prot |= IOMMU_READ
    return prot


# -- user memory ---------------------------------------------------------------------------
class _UserArg:
    """The user pointer an ioctl received, with copy_from_user/copy_to_user
    semantics: EFAULT outside a cffi argument's extent, or for raw
    addresses the process does not have mapped."""

    def __init__(self, memory: UserMemory, arg: IoctlArg) -> None:
        self.memory = memory
        self.extent: int | None = None
        if isinstance(arg, int):
            self.address = arg & ULONG_MAX
        else:
            self.address = int(ffi.cast("uintptr_t", arg))
            ctype = ffi.typeof(arg)
            if ctype.kind == "array":
                self.extent = int(ffi.sizeof(arg))
            elif ctype.kind == "pointer" and ctype.item.kind in ("struct", "union"):
                self.extent = int(ffi.sizeof(ctype.item))

    def check(self, offset: int, length: int, write: bool) -> None:
        if length <= 0:
            return
        if self.address == 0:
            raise errno_error(errno.EFAULT, "NULL user pointer")
        if self.extent is not None:
            if offset < 0 or offset + length > self.extent:
                raise errno_error(errno.EFAULT, f"{length} bytes at offset {offset} are outside "
                                  f"the {self.extent}-byte argument")
            return
        self.memory.check(self.address + offset, length, write)

    def read(self, offset: int, length: int) -> bytes:
        self.check(offset, length, False)
        return bytes(ffi.buffer(ffi.cast("char *", self.address + offset), length))

    def write(self, offset: int, data: bytes) -> None:
        self.check(offset, len(data), True)
        ffi.memmove(ffi.cast("char *", self.address + offset), data, len(data))


def _user_read(memory: UserMemory, address: int, length: int) -> bytes:
    """copy_from_user of a user pointer found inside a command."""
    if length <= 0:
        return b""
    if address == 0:
        raise errno_error(errno.EFAULT, "NULL user pointer")
    memory.check(address, length, False)
    return memory.read(address, length)


def _user_write(memory: UserMemory, address: int, data: bytes) -> None:
    """copy_to_user of a user pointer found inside a command."""
    if not data:
        return
    if address == 0:
        raise errno_error(errno.EFAULT, "NULL user pointer")
    memory.check(address, len(data), True)
    memory.write(address, data)


class _Ucmd:
    """struct iommufd_ucmd: the kernel's copy of the command."""

    def __init__(self, user: _UserArg, ctype: str, user_size: int) -> None:
        self.user = user
        self.ctype = ctype
        self.user_size = user_size
        self.ksize = int(ffi.sizeof(ctype))
        self.cmd: Any = ffi.new(ctype + " *")
        # copy_struct_from_user: the tail the kernel does not know must be zero
        if user_size > self.ksize:
            tail = user.read(self.ksize, user_size - self.ksize)
            if any(tail):
                raise errno_error(errno.E2BIG, "unknown trailing bytes are not zero")
        n = min(user_size, self.ksize)
        ffi.memmove(self.cmd, user.read(0, n), n)

    def respond(self) -> None:
        """iommufd_ucmd_respond: copy back up to the user's size."""
        n = min(self.user_size, self.ksize)
        self.user.write(0, bytes(ffi.buffer(self.cmd, n)))


# -- objects -------------------------------------------------------------------------------------
class _Obj:
    """struct iommufd_object."""

    kind = "any"

    def __init__(self) -> None:
        self.id = 0
        #: refcount users: 1 for the object table, +1 per holder
        self.users = 1

    def destroy(self) -> None:
        """The type's destroy op."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} users={self.users}>"


class _Ioas(_Obj):
    kind = OBJ_IOAS

    def __init__(self, page_size: int, max_alignment: int) -> None:
        super().__init__()
        self.iopt = IoPagetable(page_size, max_alignment)
        #: paging HWPTs built on this IOAS, in creation order (hwpt_list)
        self.hwpt_list: list[_Hwpt] = []

    def destroy(self) -> None:
        # iommufd_ioas_destroy
        self.iopt.destroy()


class _HwptDomain(IoDomain):
    """The I/O page table a device attached to a paging HWPT DMAs through."""

    def __init__(self, hwpt: _Hwpt) -> None:
        self.hwpt = hwpt

    def translate(self, iova: int, length: int, write: bool) -> list[tuple[int, int]]:
        hwpt = self.hwpt
        if hwpt.destroyed:
            raise IommuFault(iova, length, write, "the page table was destroyed")

        def fault(pos: int, reason: str) -> Exception:
            return IommuFault(pos, length, write, reason)

        return page_runs(hwpt.ioas.iopt.areas, iova, length, write, fault)

    def note_dirty(self, iova: int, length: int) -> None:
        hwpt = self.hwpt
        # The IOMMU sets dirty bits only while tracking is enabled (SSADS)
        if not hwpt.dirty_enabled or length <= 0:
            return
        ps = hwpt.dirty_page
        hwpt.dirty.update(range(iova // ps, (iova + length - 1) // ps + 1))

    def __repr__(self) -> str:
        return f"<HWPT {self.hwpt.id} domain>"


class _Hwpt(_Obj):
    """struct iommufd_hwpt_paging."""

    kind = OBJ_HWPT_PAGING

    def __init__(self, ioas: _Ioas, domain: IoptDomain) -> None:
        super().__init__()
        self.ioas = ioas
        self.domain = domain
        self.io_domain = _HwptDomain(self)
        self.auto_domain = False
        self.nest_parent = False
        self.pasid_compat = False
        self.enforce_cache_coherency = False
        #: allocated with IOMMU_HWPT_ALLOC_DIRTY_TRACKING (domain->dirty_ops)
        self.dirty_ops = False
        self.dirty_enabled = False
        self.dirty: set[int] = set()
        self.dirty_page = 4096
        self.fault: _Fault | None = None
        self.destroyed = False

    def destroy(self) -> None:
        # iommufd_hwpt_paging_destroy
        if self in self.ioas.hwpt_list:
            self.ioas.hwpt_list.remove(self)
            self.ioas.iopt.remove_domain(self.domain)
        if self.fault is not None:
            self.fault.users -= 1
        self.ioas.users -= 1
        self.destroyed = True


class _Fault(_Obj):
    """struct iommufd_fault (IOMMU_FAULT_QUEUE_ALLOC)."""

    kind = OBJ_FAULT

    def __init__(self) -> None:
        super().__init__()
        #: fault groups waiting to be read, each a list of struct
        #: iommu_hwpt_pgfault records without the cookie
        self.deliver: list[list[bytes]] = []
        #: cookie -> fault group read but not answered yet
        self.response: dict[int, list[bytes]] = {}
        self.next_cookie = 1


class _IGroup:
    """struct iommufd_group: this context's view of an IOMMU group."""

    def __init__(self, group: IommuGroup | None) -> None:
        self.group = group
        self.refs = 0
        #: pasid -> attachment (pasid_attach)
        self.pasid_attach: dict[int, _Attach] = {}


class _Attach:
    """struct iommufd_attach."""

    def __init__(self) -> None:
        self.hwpt: _Hwpt | None = None
        self.devices: dict[int, _Idev] = {}


class _Idev(_Obj):
    """struct iommufd_device."""

    kind = OBJ_DEVICE

    def __init__(self, pdev: PciDevice, device_file: object, noiommu: bool) -> None:
        super().__init__()
        self.pdev = pdev
        self.device_file = device_file
        self.noiommu = noiommu
        self.igroup: _IGroup | None = None
        self.enforce_cache_coherency = False
        self.claimed = False


_Handler = Callable[["IommufdFile", _Ucmd], int]


class _Op:
    def __init__(self, request: int, ctype: str, last: str, handler: _Handler) -> None:
        self.request = request
        self.ctype = ctype
        self.min_size = _offsetofend(ctype, last)
        self.handler = handler


# -- the fault queue file -------------------------------------------------------------------------
class FaultFile(FakeFile):
    """The fd of an IOMMU_FAULT_QUEUE_ALLOC fault object (eventq.c)."""

    path = "anon_inode:[iommufd-pgfault]"

    def __init__(self, kernel: FakeBackend, ctx: IommufdFile, fault: _Fault) -> None:
        super().__init__(kernel)
        self.ctx = ctx
        self.fault = fault
        self._released = False

    def read(self, size: int) -> bytes:
        """iommufd_fault_fops_read."""
        fault_size = int(ffi.sizeof("struct iommu_hwpt_pgfault"))
        if size % fault_size:
            # iommufd_fault_fops_read: ESPIPE unless whole records are read
            raise errno_error(errno.ESPIPE, "read size is not a multiple of the record size")
        out = b""
        fault = self.fault
        while fault.deliver:
            group = fault.deliver[0]
            if len(out) >= size or len(group) * fault_size > size - len(out):
                if not out:
                    # iommufd_fault_fops_read: EINVAL when the first group does not fit
                    raise errno_error(errno.EINVAL, "the buffer cannot hold a fault group")
                break
            fault.deliver.pop(0)
            cookie = fault.next_cookie
            fault.next_cookie += 1
            fault.response[cookie] = group
            for record in group:
                rec = ffi.new("struct iommu_hwpt_pgfault *")
                ffi.memmove(rec, record, fault_size)
                rec.cookie = cookie
                out += bytes(ffi.buffer(rec))
        return out

    def write(self, data: bytes) -> int:
        """iommufd_fault_fops_write."""
        response_size = int(ffi.sizeof("struct iommu_hwpt_page_response"))
        if len(data) % response_size:
            # iommufd_fault_fops_write: ESPIPE unless whole responses are written
            raise errno_error(errno.ESPIPE, "write size is not a multiple of the response size")
        done = 0
        while done < len(data):
            resp = ffi.new("struct iommu_hwpt_page_response *")
            ffi.memmove(resp, data[done:done + response_size], response_size)
            if resp.code not in (lib.IOMMUFD_PAGE_RESP_SUCCESS, lib.IOMMUFD_PAGE_RESP_INVALID):
                # iommufd_fault_fops_write: EINVAL for an unknown response code
                if not done:
                    raise errno_error(errno.EINVAL, f"bad response code {resp.code}")
                break
            if self.fault.response.pop(int(resp.cookie), None) is None:
                # iommufd_fault_fops_write: EINVAL for an unknown cookie
                if not done:
                    raise errno_error(errno.EINVAL, f"unknown cookie {resp.cookie}")
                break
            done += response_size
        return done

    def pread(self, size: int, offset: int) -> bytes:
        """ESPIPE: the file is opened with nonseekable_open, so positional
        reads are refused."""
        raise errno_error(errno.ESPIPE)

    def pwrite(self, data: bytes, offset: int) -> int:
        """ESPIPE, like :meth:`pread`."""
        raise errno_error(errno.ESPIPE)

    def release(self) -> None:
        """iommufd_eventq_fops_release."""
        if self._released:
            return
        self._released = True
        self.fault.users -= 1
        self.ctx._ctx_put()


# -- /dev/iommu -------------------------------------------------------------------------------------
class IommufdFile(FakeFile):
    """An open /dev/iommu: one iommufd context (struct iommufd_ctx)."""

    path = "/dev/iommu"

    def __init__(self, kernel: FakeBackend) -> None:
        super().__init__(kernel)
        # iommufd_fops_open
        self.account_mode = ACCOUNT_USER
        self.no_iommu_mode = False
        self.vfio_ioas: _Ioas | None = None
        self.objects: dict[int, _Obj] = {}
        self._pending: dict[int, _Obj] = {}
        self._free_ids: list[int] = []
        self._next_id = 1
        self.groups: dict[object, _IGroup] = {}
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
        self._ctx_put()

    def _ctx_get(self) -> None:
        self._refs += 1

    def _ctx_put(self) -> None:
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

    # -- the object table -------------------------------------------------------------------------
    @property
    def system_page_size(self) -> int:
        """PAGE_SIZE of the simulated kernel in bytes: the granule of IOAS
        mappings and of pinning."""
        return int(self.system.page_size)

    def _alloc_id(self, obj: _Obj) -> None:
        """_iommufd_object_alloc: the lowest free ID from 1 (xa_alloc with
        XA_FLAGS_ALLOC1 and xa_limit_31b), reserved until finalized."""
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

    def _finalize(self, obj: _Obj) -> None:
        """iommufd_object_finalize."""
        del self._pending[obj.id]
        self.objects[obj.id] = obj

    def _release_id(self, oid: int) -> None:
        heapq.heappush(self._free_ids, oid)

    def _abort(self, obj: _Obj) -> None:
        """iommufd_object_abort_and_destroy."""
        self._pending.pop(obj.id, None)
        obj.destroy()
        self._release_id(obj.id)

    def _get(self, oid: int, kind: str | None = None) -> Any:
        """iommufd_get_object: ENOENT for an unknown ID or the wrong type."""
        obj = self.objects.get(oid)
        if obj is None or (kind is not None and obj.kind != kind):
            raise errno_error(errno.ENOENT, f"no object {oid}" + (f" of type {kind}" if kind else ""))
        return obj

    def _remove(self, obj: _Obj) -> None:
        """Take ``obj`` out of the table and destroy it."""
        del self.objects[obj.id]
        if self.vfio_ioas is obj:
            self.vfio_ioas = None
        obj.users = 0
        obj.destroy()
        self._release_id(obj.id)

    def object_ids(self, kind: str | None = None) -> list[int]:
        """IDs of live objects (for tests and debugging)."""
        return sorted(o.id for o in self.objects.values() if kind is None or o.kind == kind)

    # -- dispatch -----------------------------------------------------------------------------------
    def ioctl(self, request: int, arg: IoctlArg) -> int:
        """iommufd_fops_ioctl."""
        nr = request & 0xFF
        if nr < IOMMUFD_CMD_BASE or nr - IOMMUFD_CMD_BASE >= len(_OPS):
            # iommufd_fops_ioctl: numbers outside the table are vfio compat ioctls
            return self._vfio_ioctl(request, arg)
        if isinstance(arg, int) and arg == 0:
            # get_user: EFAULT for a bad pointer
            raise errno_error(errno.EFAULT, "NULL user pointer")
        user = _UserArg(self.system.user_memory, arg)
        user_size = int.from_bytes(user.read(0, 4), "little")
        op = _OPS[nr - IOMMUFD_CMD_BASE]
        if op is None or op.request != request:
            # iommufd_fops_ioctl: ENOIOCTLCMD (ENOTTY) when the number does not match
            raise errno_error(errno.ENOTTY)
        if user_size < op.min_size:
            # iommufd_fops_ioctl: EINVAL below the minimum size
            raise errno_error(errno.EINVAL, f"size {user_size} < {op.min_size}")
        ucmd = _Ucmd(user, op.ctype, user_size)
        return op.handler(self, ucmd)

    # -- IOMMU_DESTROY ------------------------------------------------------------------------------
    def _destroy(self, u: _Ucmd) -> int:
        """iommufd_destroy -> iommufd_object_remove."""
        oid = int(u.cmd.id)
        obj = self.objects.get(oid)
        if obj is None:
            # iommufd_object_remove: ENOENT for an unknown ID
            raise errno_error(errno.ENOENT, f"no object {oid}")
        if obj.users != 1:
            # iommufd_object_remove: EBUSY while other objects hold it
            raise errno_error(errno.EBUSY, f"object {oid} is in use")
        self._remove(obj)
        return 0

    # -- IOAS ---------------------------------------------------------------------------------------
    @property
    def _max_alignment(self) -> int:
        """HPAGE_SIZE with CONFIG_TRANSPARENT_HUGEPAGE, else PAGE_SIZE."""
        thp = getattr(self.system, "transparent_hugepage", True)
        return HPAGE_SIZE if thp else self.system_page_size

    def _new_ioas(self) -> _Ioas:
        ioas = _Ioas(self.system_page_size, self._max_alignment)
        self._alloc_id(ioas)
        return ioas

    def _ioas_alloc(self, u: _Ucmd) -> int:
        """iommufd_ioas_alloc_ioctl."""
        cmd = u.cmd
        if cmd.flags:
            # iommufd_ioas_alloc_ioctl: EOPNOTSUPP for any flag
            raise errno_error(errno.EOPNOTSUPP, "flags must be 0")
        ioas = self._new_ioas()
        cmd.out_ioas_id = ioas.id
        try:
            u.respond()
        except OSError:
            self._abort(ioas)
            raise
        self._finalize(ioas)
        return 0

    def _ioas_iova_ranges(self, u: _Ucmd) -> int:
        """iommufd_ioas_iova_ranges."""
        cmd = u.cmd
        if _reserved(cmd):
            # iommufd_ioas_iova_ranges: EOPNOTSUPP for a nonzero __reserved
            raise errno_error(errno.EOPNOTSUPP, "__reserved must be 0")
        ioas: _Ioas = self._get(int(cmd.ioas_id), OBJ_IOAS)
        max_iovas = int(cmd.num_iovas)
        base = int(cmd.allowed_iovas)
        cmd.num_iovas = 0
        cmd.out_iova_alignment = ioas.iopt.iova_alignment
        memory = self.system.user_memory
        count = 0
        for start, last in ioas.iopt.iova_ranges():
            if count < max_iovas:
                elm = ffi.new("struct iommu_iova_range *", {"start": start, "last": last})
                # copy_to_user: EFAULT for a bad array
                _user_write(memory, base + count * 16, bytes(ffi.buffer(elm)))
            count += 1
        cmd.num_iovas = count
        u.respond()
        if count > max_iovas:
            # iommufd_ioas_iova_ranges: EMSGSIZE (after reporting the count)
            raise errno_error(errno.EMSGSIZE, f"{count} ranges, room for {max_iovas}")
        return 0

    def _ioas_allow_iovas(self, u: _Ucmd) -> int:
        """iommufd_ioas_allow_iovas."""
        cmd = u.cmd
        if _reserved(cmd):
            # iommufd_ioas_allow_iovas: EOPNOTSUPP for a nonzero __reserved
            raise errno_error(errno.EOPNOTSUPP, "__reserved must be 0")
        ioas: _Ioas = self._get(int(cmd.ioas_id), OBJ_IOAS)
        ranges: list[tuple[int, int]] = []
        base = int(cmd.allowed_iovas)
        memory = self.system.user_memory
        for i in range(int(cmd.num_iovas)):
            # iommufd_ioas_load_iovas: EFAULT for a bad array
            raw = _user_read(memory, base + i * 16, 16)
            start = int.from_bytes(raw[0:8], "little")
            last = int.from_bytes(raw[8:16], "little")
            if start >= last:
                # iommufd_ioas_load_iovas: EINVAL for an empty or inverted range
                raise errno_error(errno.EINVAL, f"range [{start:#x}, {last:#x}] is invalid")
            if any(s <= last and start <= l for s, l in ranges):
                # iommufd_ioas_load_iovas: EINVAL for overlapping ranges
                raise errno_error(errno.EINVAL, f"range [{start:#x}, {last:#x}] overlaps another")
            ranges.append((start, last))
        ioas.iopt.set_allow_iova(ranges)
        return 0

    def _map_common(self, ioas: _Ioas, pages: Pages, start_byte: int, length: int, iova: int,
                    prot: int, alloc: bool) -> int:
        """iopt_map_common."""
        if self.account_mode == ACCOUNT_MM and pages.account_mode == ACCOUNT_USER:
            pages.account_mode = ACCOUNT_MM
        try:
            return ioas.iopt.map_pages([ElmPages(pages, start_byte, length)], length, iova,
                                       prot, alloc)
        except BaseException:
            pages.put()
            raise

    def _pages_account_mode(self) -> int:
        """iopt_alloc_pages: CAP_IPC_LOCK skips accounting."""
        return ACCOUNT_NONE if getattr(self.system, "cap_ipc_lock", False) else ACCOUNT_USER

    def _map_user(self, ioas: _Ioas, uptr: int, length: int, iova: int, prot: int,
                  alloc: bool) -> int:
        """iopt_map_user_pages."""
        pages = Pages.user(self.kernel, self.system_page_size, uptr, length,
                           bool(prot & IOMMU_WRITE), self._pages_account_mode())
        return self._map_common(ioas, pages, uptr - pages.uptr, length, iova, prot, alloc)

    def _ioas_map(self, u: _Ucmd) -> int:
        """iommufd_ioas_map."""
        cmd = u.cmd
        flags = int(cmd.flags)
        if flags & ~_MAP_FLAGS or _reserved(cmd):
            # iommufd_ioas_map: EOPNOTSUPP for unknown flags or a nonzero __reserved
            raise errno_error(errno.EOPNOTSUPP, f"unsupported flags {flags:#x} or __reserved")
        iova, length = int(cmd.iova), int(cmd.length)
        if iova >= ULONG_MAX or length >= ULONG_MAX:
            # iommufd_ioas_map: EOVERFLOW
            raise errno_error(errno.EOVERFLOW, "iova or length too large")
        if not flags & (lib.IOMMU_IOAS_MAP_WRITEABLE | lib.IOMMU_IOAS_MAP_READABLE):
            # iommufd_ioas_map: EINVAL without READABLE or WRITEABLE
            raise errno_error(errno.EINVAL, "neither READABLE nor WRITEABLE")
        ioas: _Ioas = self._get(int(cmd.ioas_id), OBJ_IOAS)
        alloc = not flags & lib.IOMMU_IOAS_MAP_FIXED_IOVA
        cmd.iova = self._map_user(ioas, int(cmd.user_va), length, iova,
                                  _conv_iommu_prot(flags), alloc)
        u.respond()
        return 0

    def _ioas_map_file(self, u: _Ucmd) -> int:
        """iommufd_ioas_map_file."""
        cmd = u.cmd
        flags = int(cmd.flags)
        if flags & ~_MAP_FLAGS:
            # iommufd_ioas_map_file: EOPNOTSUPP for unknown flags
            raise errno_error(errno.EOPNOTSUPP, f"unsupported flags {flags:#x}")
        iova, length, start = int(cmd.iova), int(cmd.length), int(cmd.start)
        if iova >= ULONG_MAX or length >= ULONG_MAX:
            # iommufd_ioas_map_file: EOVERFLOW
            raise errno_error(errno.EOVERFLOW, "iova or length too large")
        if not flags & (lib.IOMMU_IOAS_MAP_WRITEABLE | lib.IOMMU_IOAS_MAP_READABLE):
            # iommufd_ioas_map_file: EINVAL without READABLE or WRITEABLE
            raise errno_error(errno.EINVAL, "neither READABLE nor WRITEABLE")
        ioas: _Ioas = self._get(int(cmd.ioas_id), OBJ_IOAS)
        alloc = not flags & lib.IOMMU_IOAS_MAP_FIXED_IOVA
        if not length:
            # iopt_map_file_pages: EINVAL for a zero length
            raise errno_error(errno.EINVAL, "zero length")
        if start + length - 1 > ULONG_MAX:
            # iopt_map_file_pages: EOVERFLOW when start + length wraps
            raise errno_error(errno.EOVERFLOW, "start + length overflows")
        fd = int(cmd.fd)
        try:
            if fd < 0:
                raise OSError(errno.EBADF, "negative fd")
            os.fstat(fd)
        except OSError:
            # iopt_map_file_pages: EBADF when fget fails
            raise errno_error(errno.EBADF, f"fd {fd} is not open") from None
        prot = _conv_iommu_prot(flags)
        pages = Pages.file(self.kernel, self.system_page_size, fd, start, length,
                           bool(prot & IOMMU_WRITE), self._pages_account_mode())
        cmd.iova = self._map_common(ioas, pages, start % self.system_page_size, length, iova,
                                    prot, alloc)
        u.respond()
        return 0

    def _ioas_copy(self, u: _Ucmd) -> int:
        """iommufd_ioas_copy."""
        cmd = u.cmd
        flags = int(cmd.flags)
        if flags & ~_MAP_FLAGS:
            # iommufd_ioas_copy: EOPNOTSUPP for unknown flags
            raise errno_error(errno.EOPNOTSUPP, f"unsupported flags {flags:#x}")
        length, src_iova, dst_iova = int(cmd.length), int(cmd.src_iova), int(cmd.dst_iova)
        if length >= ULONG_MAX or src_iova >= ULONG_MAX or dst_iova >= ULONG_MAX:
            # iommufd_ioas_copy: EOVERFLOW
            raise errno_error(errno.EOVERFLOW, "length or IOVA too large")
        if not flags & (lib.IOMMU_IOAS_MAP_WRITEABLE | lib.IOMMU_IOAS_MAP_READABLE):
            # iommufd_ioas_copy: EINVAL without READABLE or WRITEABLE
            raise errno_error(errno.EINVAL, "neither READABLE nor WRITEABLE")
        src: _Ioas = self._get(int(cmd.src_ioas_id), OBJ_IOAS)
        elms = src.iopt.get_pages(src_iova, length)
        try:
            dst: _Ioas = self._get(int(cmd.dst_ioas_id), OBJ_IOAS)
            alloc = not flags & lib.IOMMU_IOAS_MAP_FIXED_IOVA
            cmd.dst_iova = dst.iopt.map_pages(elms, length, dst_iova, _conv_iommu_prot(flags), alloc)
        except BaseException:
            for elm in elms:
                elm.pages.put()
            raise
        u.respond()
        return 0

    def _ioas_unmap(self, u: _Ucmd) -> int:
        """iommufd_ioas_unmap."""
        cmd = u.cmd
        ioas: _Ioas = self._get(int(cmd.ioas_id), OBJ_IOAS)
        iova, length = int(cmd.iova), int(cmd.length)
        if iova == 0 and length == U64_MAX:
            unmapped = ioas.iopt.unmap_all()
        else:
            if iova >= ULONG_MAX or length >= ULONG_MAX:
                # iommufd_ioas_unmap: EOVERFLOW
                raise errno_error(errno.EOVERFLOW, "iova or length too large")
            err, unmapped = ioas.iopt.unmap_iova(iova, length)
            if err:
                raise errno_error(err, f"[{iova:#x}, +{length:#x}) splits a mapping")
            if not unmapped:
                # iommufd_ioas_unmap: ENOENT when nothing was mapped there
                raise errno_error(errno.ENOENT, f"nothing mapped in [{iova:#x}, +{length:#x})")
        cmd.length = unmapped
        u.respond()
        return 0

    def _ioas_change_process(self, u: _Ucmd) -> int:
        """iommufd_ioas_change_process: one process, so only the checks."""
        if _reserved(u.cmd):
            # iommufd_ioas_change_process: EOPNOTSUPP for a nonzero __reserved
            raise errno_error(errno.EOPNOTSUPP, "__reserved must be 0")
        for oid in sorted(self.objects):
            obj = self.objects[oid]
            if not isinstance(obj, _Ioas):
                continue
            for _s, _l, area in obj.iopt.areas:
                if area.pages.kind != "file":
                    # iommufd_ioas_change_process: EINVAL with user-address mappings
                    raise errno_error(errno.EINVAL, "only file mappings can change process")
        return 0

    def _ioas_noiommu_get_pa(self, u: _Ucmd) -> int:
        """iommufd_ioas_noiommu_get_pa."""
        cmd = u.cmd
        if not getattr(self.system, "cap_sys_rawio", True):
            # iommufd_ioas_noiommu_get_pa: EPERM without CAP_SYS_RAWIO
            raise errno_error(errno.EPERM, "needs CAP_SYS_RAWIO")
        if cmd.flags or _reserved(cmd):
            # iommufd_ioas_noiommu_get_pa: EOPNOTSUPP for flags or __reserved
            raise errno_error(errno.EOPNOTSUPP, "flags and __reserved must be 0")
        if not cmd.length:
            # iommufd_ioas_noiommu_get_pa: EINVAL for a zero length
            raise errno_error(errno.EINVAL, "zero length")
        iova = int(cmd.iova)
        if iova >= ULONG_MAX:
            # iommufd_ioas_noiommu_get_pa: EOVERFLOW
            raise errno_error(errno.EOVERFLOW, "iova too large")
        ioas: _Ioas = self._get(int(cmd.ioas_id), OBJ_IOAS)
        found = ioas.iopt.areas.find(iova)
        if found is None:
            # iopt_get_phys: ENOENT for an unmapped IOVA
            raise errno_error(errno.ENOENT, f"IOVA {iova:#x} is not mapped")
        area = found[2]
        storage = ioas.iopt.storage_domain()
        if not area.filled or storage is None or not storage.noiommu:
            # iopt_get_phys: EOPNOTSUPP unless a no-IOMMU domain stores the pages
            raise errno_error(errno.EOPNOTSUPP, "the IOVA is not held by a no-IOMMU domain")
        cmd.out_phys = area.pages.va(area.start_byte_at(iova))
        cmd.length = min(int(cmd.length), area.last - iova + 1)
        u.respond()
        return 0

    # -- IOMMU_OPTION ---------------------------------------------------------------------------------
    def _option(self, u: _Ucmd) -> int:
        """iommufd_option."""
        cmd = u.cmd
        if _reserved(cmd):
            # iommufd_option: EOPNOTSUPP for a nonzero __reserved
            raise errno_error(errno.EOPNOTSUPP, "__reserved must be 0")
        if cmd.option_id == lib.IOMMU_OPTION_RLIMIT_MODE:
            self._option_rlimit_mode(cmd)
        elif cmd.option_id == lib.IOMMU_OPTION_HUGE_PAGES:
            self._option_huge_pages(cmd)
        else:
            # iommufd_option: EOPNOTSUPP for an unknown option
            raise errno_error(errno.EOPNOTSUPP, f"unknown option {cmd.option_id}")
        off = ffi.offsetof("struct iommu_option", "val64")
        u.user.write(off, int(cmd.val64).to_bytes(8, "little"))
        return 0

    def _option_rlimit_mode(self, cmd: Any) -> None:
        """iommufd_option_rlimit_mode."""
        if cmd.object_id:
            # iommufd_option_rlimit_mode: EOPNOTSUPP for an object ID
            raise errno_error(errno.EOPNOTSUPP, "RLIMIT_MODE is global")
        if cmd.op == lib.IOMMU_OPTION_OP_GET:
            cmd.val64 = 1 if self.account_mode == ACCOUNT_MM else 0
            return
        if cmd.op == lib.IOMMU_OPTION_OP_SET:
            if not getattr(self.system, "cap_sys_resource", True):
                # iommufd_option_rlimit_mode: EPERM without CAP_SYS_RESOURCE
                raise errno_error(errno.EPERM, "needs CAP_SYS_RESOURCE")
            if self.objects or self._pending:
                # iommufd_option_rlimit_mode: EBUSY once objects exist
                raise errno_error(errno.EBUSY, "objects exist")
            if cmd.val64 == 0:
                self.account_mode = ACCOUNT_USER
            elif cmd.val64 == 1:
                self.account_mode = ACCOUNT_MM
            else:
                # iommufd_option_rlimit_mode: EINVAL for other values
                raise errno_error(errno.EINVAL, f"bad value {cmd.val64}")
            return
        # iommufd_option_rlimit_mode: EOPNOTSUPP for an unknown op
        raise errno_error(errno.EOPNOTSUPP, f"unknown op {cmd.op}")

    def _option_huge_pages(self, cmd: Any) -> None:
        """iommufd_ioas_option."""
        ioas: _Ioas = self._get(int(cmd.object_id), OBJ_IOAS)
        iopt = ioas.iopt
        if cmd.op == lib.IOMMU_OPTION_OP_GET:
            cmd.val64 = 0 if iopt.disable_large_pages else 1
            return
        if cmd.op == lib.IOMMU_OPTION_OP_SET:
            if cmd.val64 == 0:
                iopt.disable_large_pages_()
            elif cmd.val64 == 1:
                iopt.enable_large_pages()
            else:
                # iommufd_ioas_option_huge_pages: EINVAL for other values
                raise errno_error(errno.EINVAL, f"bad value {cmd.val64}")
            return
        # iommufd_ioas_option_huge_pages: EOPNOTSUPP for an unknown op
        raise errno_error(errno.EOPNOTSUPP, f"unknown op {cmd.op}")

    # -- IOMMU_VFIO_IOAS -------------------------------------------------------------------------------
    def _compat_ioas(self) -> _Ioas:
        """get_compat_ioas: ENODEV without a compat IOAS."""
        if self.vfio_ioas is None or self.vfio_ioas.id not in self.objects:
            raise errno_error(errno.ENODEV, "no compat IOAS")
        return self.vfio_ioas

    def _vfio_ioas(self, u: _Ucmd) -> int:
        """iommufd_vfio_ioas."""
        cmd = u.cmd
        if _reserved(cmd):
            # iommufd_vfio_ioas: EOPNOTSUPP for a nonzero __reserved
            raise errno_error(errno.EOPNOTSUPP, "__reserved must be 0")
        if cmd.op == lib.IOMMU_VFIO_IOAS_GET:
            cmd.ioas_id = self._compat_ioas().id
            u.respond()
            return 0
        if cmd.op == lib.IOMMU_VFIO_IOAS_SET:
            self.vfio_ioas = self._get(int(cmd.ioas_id), OBJ_IOAS)
            return 0
        if cmd.op == lib.IOMMU_VFIO_IOAS_CLEAR:
            self.vfio_ioas = None
            return 0
        # iommufd_vfio_ioas: EOPNOTSUPP for an unknown op
        raise errno_error(errno.EOPNOTSUPP, f"unknown op {cmd.op}")

    # -- devices: helpers ------------------------------------------------------------------------------
    def _is_noiommu(self, pdev: PciDevice) -> bool:
        """iommufd_device_is_noiommu: no IOMMU driver manages the device."""
        group = pdev.group
        return self.system.iommu is None or group is None or group.name == "vfio-noiommu"

    def _resv_regions(self, idev: _Idev) -> list[tuple[int, int, str]]:
        """iommu_get_resv_regions(dev) (intel_iommu_get_resv_regions: the
        device's RMRRs and the interrupt window)."""
        iommu = self.system.iommu
        regions = []
        if iommu is not None:
            regions += [(r.start, r.last, r.type) for r in iommu.reserved_regions]
        regions += [(r.start, r.last, r.type) for r in idev.pdev.extra_reserved]
        group = idev.pdev.group
        if group is not None:
            regions += [(r.start, r.last, r.type) for r in group.extra_reserved]
        return regions

    def _dirty_capable(self, idev: _Idev) -> bool:
        """device_iommu_capable(IOMMU_CAP_DIRTY_TRACKING)."""
        iommu = self.system.iommu
        return not idev.noiommu and iommu is not None and bool(iommu.dirty_tracking)

    def _max_pasids(self, pdev: PciDevice) -> int:
        """dev->iommu->max_pasids: PASID enabled when both the IOMMU and the
        device support it."""
        iommu = self.system.iommu
        if iommu is None or not iommu.pasid_bits:
            return 0
        bits = getattr(pdev, "pasid_bits", None)
        if bits is None:
            bits = pdev.spec.get("pasid_bits", getattr(pdev.model, "pasid_bits", 0))
        bits = int(bits or 0)
        if not bits:
            return 0
        return 1 << min(bits, int(iommu.pasid_bits))

    @staticmethod
    def _pri_supported(pdev: PciDevice) -> bool:
        return bool(getattr(pdev, "pri_supported", False) or pdev.spec.get("pri", False))

    def _idev(self, dev_id: int) -> _Idev:
        obj = self.objects.get(dev_id)
        if not isinstance(obj, _Idev):
            raise errno_error(errno.ENOENT, f"no device {dev_id}")
        return obj

    # -- devices: bind ---------------------------------------------------------------------------------
    def bind_device(self, pdev: PciDevice, device_file: object) -> int:
        """iommufd_device_bind: a new device object claiming DMA ownership."""
        noiommu = self._is_noiommu(pdev)
        idev = _Idev(pdev, device_file, noiommu)
        self._alloc_id(idev)
        try:
            if noiommu:
                # iommufd_bind_noiommu: a dummy group
                igroup = _IGroup(None)
                igroup.refs = 1
                idev.igroup = igroup
            else:
                self._bind_iommu(idev)
        except BaseException:
            self._pending.pop(idev.id, None)
            self._release_id(idev.id)
            raise
        self._ctx_get()
        # the calling driver is a user until iommufd_device_unbind
        idev.users += 1
        self._finalize(idev)
        return idev.id

    def _bind_iommu(self, idev: _Idev) -> None:
        """iommufd_bind_iommu."""
        system = self.system
        iommu = system.iommu
        pdev = idev.pdev
        if iommu is None or not iommu.cache_coherency:
            # iommufd_bind_iommu: EINVAL without IOMMU_CAP_CACHE_COHERENCY
            raise errno_error(errno.EINVAL, "the IOMMU cannot keep DMA cache coherent")
        group = pdev.group
        if group is None:
            # iommufd_get_group: ENODEV without an IOMMU group
            raise errno_error(errno.ENODEV, f"{pdev.bdf} has no IOMMU group")
        if not iommu.interrupt_remapping and not getattr(system, "iommufd_allow_unsafe_interrupts", False):
            # iommufd_bind_iommu: EPERM when MSIs cannot be isolated
            raise errno_error(errno.EPERM, "MSI interrupts cannot be isolated (no interrupt remapping)")
        # iommu_device_claim_dma_owner: EPERM/EBUSY when owned elsewhere
        group.device_claim_dma_owner(pdev, self)
        igroup = self.groups.get(group.id)
        if igroup is None:
            igroup = _IGroup(group)
            self.groups[group.id] = igroup
        igroup.refs += 1
        idev.igroup = igroup
        idev.claimed = True
        idev.enforce_cache_coherency = bool(iommu.enforce_cache_coherency)

    def unbind_device(self, dev_id: int) -> None:
        """iommufd_device_unbind (after vfio_iommufd_physical_unbind's
        detaches): the device object goes away and ownership is released."""
        idev = self._idev(dev_id)
        igroup = idev.igroup
        assert igroup is not None
        for pasid in sorted(p for p, a in igroup.pasid_attach.items() if idev.id in a.devices):
            self.detach_device(dev_id, None if pasid == NO_PASID else pasid)
        del self.objects[idev.id]
        self._release_id(idev.id)
        idev.users = 0
        # iommufd_device_destroy
        if idev.claimed:
            group = idev.pdev.group
            assert group is not None
            group.device_release_dma_owner(idev.pdev)
            idev.claimed = False
        igroup.refs -= 1
        if not igroup.refs and igroup.group is not None:
            self.groups.pop(igroup.group.id, None)
        self._ctx_put()

    def device_id_of(self, pdev: PciDevice) -> int | None:
        """The device ID ``pdev`` is bound with here, or None."""
        for obj in self.objects.values():
            if isinstance(obj, _Idev) and obj.pdev is pdev:
                return obj.id
        return None

    def has_group(self, group: IommuGroup | None) -> bool:
        """iommufd_ctx_has_group."""
        if group is None:
            return False
        return any(isinstance(o, _Idev) and o.igroup is not None and o.igroup.group is group
                   for o in self.objects.values())

    # -- devices: attach --------------------------------------------------------------------------------
    def attach_device(self, dev_id: int, pt_id: int, pasid: int | None = None) -> int:
        """iommufd_device_attach, or iommufd_device_replace when the device
        is already attached at ``pasid``; returns the ID attached."""
        idev = self._idev(dev_id)
        key = NO_PASID if pasid is None else pasid
        igroup = idev.igroup
        assert igroup is not None
        attach = igroup.pasid_attach.get(key)
        if attach is not None and idev.id in attach.devices:
            return self._change_pt(idev, key, pt_id, replace=True)
        out = self._change_pt(idev, key, pt_id, replace=False)
        idev.users += 1
        return out

    def detach_device(self, dev_id: int, pasid: int | None = None) -> None:
        """iommufd_device_detach (a no-op when not attached)."""
        idev = self._idev(dev_id)
        hwpt = self._hw_pagetable_detach(idev, NO_PASID if pasid is None else pasid)
        if hwpt is not None:
            idev.users -= 1

    def _change_pt(self, idev: _Idev, pasid: int, pt_id: int, replace: bool) -> int:
        """iommufd_device_change_pt."""
        pt = self.objects.get(pt_id)
        if pt is None:
            # iommufd_get_object: ENOENT for an unknown pt_id
            raise errno_error(errno.ENOENT, f"no object {pt_id}")
        do = self._do_replace if replace else self._do_attach
        if isinstance(pt, _Hwpt):
            destroy = do(idev, pasid, pt)
        elif isinstance(pt, _Ioas):
            destroy, pt_id = self._auto_get_domain(idev, pasid, pt, replace)
        else:
            # iommufd_device_change_pt: EINVAL for other object types
            raise errno_error(errno.EINVAL, f"object {pt_id} is not an IOAS or HWPT")
        if destroy is not None:
            self._hwpt_put(destroy)
        return pt_id

    def _auto_get_domain(self, idev: _Idev, pasid: int, ioas: _Ioas,
                         replace: bool) -> tuple[_Hwpt | None, int]:
        """iommufd_device_auto_get_domain: reuse an automatic HWPT of the
        IOAS that accepts the device, else allocate one."""
        do = self._do_replace if replace else self._do_attach
        for hwpt in list(ioas.hwpt_list):
            if not hwpt.auto_domain:
                continue
            try:
                destroy = do(idev, pasid, hwpt)
            except OSError as e:
                # iommufd_device_auto_get_domain: EINVAL means incompatible, try the next
                if e.errno == errno.EINVAL:
                    continue
                raise
            return destroy, hwpt.id
        hwpt = self._hwpt_paging_alloc(ioas, idev, pasid, 0, immediate_attach=not replace,
                                       user_data=False)
        destroy = None
        if replace:
            try:
                destroy = self._do_replace(idev, pasid, hwpt)
            except BaseException:
                self._abort(hwpt)
                raise
        hwpt.auto_domain = True
        self._finalize(hwpt)
        return destroy, hwpt.id

    def _do_attach(self, idev: _Idev, pasid: int, hwpt: _Hwpt) -> _Hwpt | None:
        self._hw_pagetable_attach(hwpt, idev, pasid)
        return None

    def _pasid_compat(self, hwpt: _Hwpt, idev: _Idev, pasid: int) -> None:
        """iommufd_hwpt_pasid_compat."""
        igroup = idev.igroup
        assert igroup is not None
        if pasid == NO_PASID:
            if not hwpt.pasid_compat and any(p != NO_PASID for p in igroup.pasid_attach):
                # iommufd_hwpt_pasid_compat: EINVAL, PASIDs are attached
                raise errno_error(errno.EINVAL, "the HWPT is not PASID compatible")
        else:
            if not hwpt.pasid_compat:
                # iommufd_hwpt_pasid_compat: EINVAL, not allocated with IOMMU_HWPT_ALLOC_PASID
                raise errno_error(errno.EINVAL, "the HWPT is not PASID compatible")
            main = igroup.pasid_attach.get(NO_PASID)
            if main is not None and main.hwpt is not None and not main.hwpt.pasid_compat:
                # iommufd_hwpt_pasid_compat: EINVAL, the RID attachment is not PASID compatible
                raise errno_error(errno.EINVAL, "the device's HWPT is not PASID compatible")

    def _driver_attach_check(self, hwpt: _Hwpt, idev: _Idev) -> None:
        """intel_iommu_attach_device / set_dev_pasid: iopf_for_domain_set."""
        if hwpt.fault is not None and not self._pri_supported(idev.pdev):
            # intel_iommu_enable_iopf: ENODEV without PCI PRI
            raise errno_error(errno.ENODEV, f"{idev.pdev.bdf} cannot report page faults (no PRI)")

    def _pasid_attach_check(self, hwpt: _Hwpt, idev: _Idev, pasid: int) -> list[PciDevice]:
        """iommu_attach_device_pasid / intel_iommu_set_dev_pasid checks;
        returns the devices of the group."""
        group = idev.pdev.group
        assert group is not None
        for dev in group.devices:
            mp = self._max_pasids(dev)
            if mp > 0 and pasid >= mp:
                # iommu_attach_device_pasid: EINVAL beyond a device's PASID width
                raise errno_error(errno.EINVAL, f"PASID {pasid} is beyond {dev.bdf}'s width")
        iommu = self.system.iommu
        if iommu is None or not iommu.pasid_bits:
            # intel_iommu_set_dev_pasid: EOPNOTSUPP without PASID support
            raise errno_error(errno.EOPNOTSUPP, "the IOMMU does not support PASID")
        self._driver_attach_check(hwpt, idev)
        return list(group.devices)

    def _hwpt_attach_device(self, hwpt: _Hwpt, idev: _Idev, pasid: int) -> None:
        """iommufd_hwpt_attach_device: the first device of the group attaches
        the group (or the PASID) to the HWPT's domain."""
        self._pasid_compat(hwpt, idev, pasid)
        if idev.noiommu:
            return
        group = idev.pdev.group
        assert group is not None
        if pasid == NO_PASID:
            # __iommu_attach_group: EBUSY while another domain is attached
            group.attach_domain(self, hwpt.io_domain)
            try:
                self._driver_attach_check(hwpt, idev)
            except OSError:
                group.detach_domain(self)
                raise
            return
        devices = self._pasid_attach_check(hwpt, idev, pasid)
        if any(pasid in dev.pasid_domains for dev in devices):
            # iommu_attach_device_pasid: EBUSY when the PASID is in use
            raise errno_error(errno.EBUSY, f"PASID {pasid} is attached")
        for dev in devices:
            dev.pasid_domains[pasid] = hwpt.io_domain

    def _hwpt_detach_device(self, idev: _Idev, pasid: int) -> None:
        """iommufd_hwpt_detach_device."""
        if idev.noiommu:
            return
        group = idev.pdev.group
        assert group is not None
        if pasid == NO_PASID:
            group.detach_domain(self)
        else:
            for dev in group.devices:
                dev.pasid_domains.pop(pasid, None)

    def _hwpt_replace_device(self, idev: _Idev, pasid: int, hwpt: _Hwpt) -> None:
        """iommufd_hwpt_replace_device."""
        self._pasid_compat(hwpt, idev, pasid)
        if idev.noiommu:
            return
        group = idev.pdev.group
        assert group is not None
        if pasid == NO_PASID:
            self._driver_attach_check(hwpt, idev)
            group.detach_domain(self)
            group.attach_domain(self, hwpt.io_domain)
            return
        devices = self._pasid_attach_check(hwpt, idev, pasid)
        for dev in devices:
            dev.pasid_domains[pasid] = hwpt.io_domain

    def _hw_pagetable_attach(self, hwpt: _Hwpt, idev: _Idev, pasid: int) -> None:
        """iommufd_hw_pagetable_attach."""
        igroup = idev.igroup
        assert igroup is not None
        attach = igroup.pasid_attach.get(pasid)
        first = attach is None
        if attach is None:
            attach = _Attach()
        if idev.id in attach.devices:
            # iommufd_hw_pagetable_attach: EBUSY, the device is attached already
            raise errno_error(errno.EBUSY, "the device is already attached")
        if attach.hwpt is not None and attach.hwpt is not hwpt:
            # iommufd_hw_pagetable_attach: EINVAL, the group uses another HWPT
            raise errno_error(errno.EINVAL, "the IOMMU group is attached to another HWPT")
        resv = pasid == NO_PASID and not idev.noiommu
        if resv:
            # iopt_table_enforce_dev_resv_regions: EADDRINUSE over a mapping
            hwpt.ioas.iopt.enforce_dev_resv_regions(idev, self._resv_regions(idev))
        if first:
            try:
                self._hwpt_attach_device(hwpt, idev, pasid)
            except BaseException:
                if resv:
                    hwpt.ioas.iopt.remove_reserved_iova(idev)
                raise
            attach.hwpt = hwpt
            igroup.pasid_attach[pasid] = attach
        hwpt.users += 1
        attach.devices[idev.id] = idev

    def _hw_pagetable_detach(self, idev: _Idev, pasid: int) -> _Hwpt | None:
        """iommufd_hw_pagetable_detach."""
        igroup = idev.igroup
        assert igroup is not None
        attach = igroup.pasid_attach.get(pasid)
        if attach is None or idev.id not in attach.devices:
            return None
        hwpt = attach.hwpt
        assert hwpt is not None
        del attach.devices[idev.id]
        if not attach.devices:
            self._hwpt_detach_device(idev, pasid)
            del igroup.pasid_attach[pasid]
        if pasid == NO_PASID:
            hwpt.ioas.iopt.remove_reserved_iova(idev)
        self._hwpt_put(hwpt)
        return hwpt

    def _hwpt_put(self, hwpt: _Hwpt) -> None:
        """iommufd_hw_pagetable_put: an automatic HWPT goes away with its
        last user (iommufd_object_put_and_try_destroy)."""
        hwpt.users -= 1
        if hwpt.auto_domain and hwpt.users == 1 and self.objects.get(hwpt.id) is hwpt:
            self._remove(hwpt)

    def _do_replace(self, idev: _Idev, pasid: int, hwpt: _Hwpt) -> _Hwpt | None:
        """iommufd_device_do_replace."""
        igroup = idev.igroup
        assert igroup is not None
        attach = igroup.pasid_attach.get(pasid)
        if attach is None or idev.id not in attach.devices:
            # iommufd_device_do_replace: EINVAL unless attached
            raise errno_error(errno.EINVAL, "the device is not attached")
        old = attach.hwpt
        assert old is not None
        if hwpt is old:
            return None
        resv = pasid == NO_PASID and not idev.noiommu
        if resv and hwpt.ioas is not old.ioas:
            # iommufd_group_do_replace_reserved_iova
            try:
                for dev in attach.devices.values():
                    hwpt.ioas.iopt.enforce_dev_resv_regions(dev, self._resv_regions(dev))
            except BaseException:
                for dev in attach.devices.values():
                    hwpt.ioas.iopt.remove_reserved_iova(dev)
                raise
        try:
            self._hwpt_replace_device(idev, pasid, hwpt)
        except BaseException:
            if resv:
                # iommufd_device_do_replace: err_unresv drops the group's
                # reservations on the new IOAS
                for dev in attach.devices.values():
                    hwpt.ioas.iopt.remove_reserved_iova(dev)
            raise
        if pasid == NO_PASID and hwpt.ioas is not old.ioas:
            for dev in attach.devices.values():
                old.ioas.iopt.remove_reserved_iova(dev)
        attach.hwpt = hwpt
        n = len(attach.devices)
        hwpt.users += n
        if n > 1:
            old.users -= n - 1
        return old

    # -- HWPT -----------------------------------------------------------------------------------------
    def _hwpt_paging_alloc(self, ioas: _Ioas, idev: _Idev, pasid: int, flags: int,
                           immediate_attach: bool, user_data: bool) -> _Hwpt:
        """iommufd_hwpt_paging_alloc (the caller finalizes or aborts)."""
        valid = (lib.IOMMU_HWPT_ALLOC_NEST_PARENT | lib.IOMMU_HWPT_ALLOC_DIRTY_TRACKING
                 | lib.IOMMU_HWPT_FAULT_ID_VALID | lib.IOMMU_HWPT_ALLOC_PASID)
        if flags & ~valid:
            # iommufd_hwpt_paging_alloc: EOPNOTSUPP for unknown flags
            raise errno_error(errno.EOPNOTSUPP, f"unsupported flags {flags:#x}")
        if flags & lib.IOMMU_HWPT_ALLOC_DIRTY_TRACKING and not self._dirty_capable(idev):
            # iommufd_hwpt_paging_alloc: EOPNOTSUPP without IOMMU_CAP_DIRTY_TRACKING
            raise errno_error(errno.EOPNOTSUPP, "the IOMMU cannot track dirty pages")
        if flags & lib.IOMMU_HWPT_FAULT_ID_VALID and flags & lib.IOMMU_HWPT_ALLOC_NEST_PARENT:
            # iommufd_hwpt_paging_alloc: EOPNOTSUPP for a nesting parent with a fault queue
            raise errno_error(errno.EOPNOTSUPP, "a nesting parent cannot have a fault queue")
        iommu = self.system.iommu
        ps = self.system_page_size
        if idev.noiommu or iommu is None:
            domain = IoptDomain(ps | (ps << 9) | (ps << 18), (0, ULONG_MAX), noiommu=True)
        else:
            domain = IoptDomain(int(iommu.pgsize_bitmap),
                                (int(iommu.aperture[0]), int(iommu.aperture[1])))
        hwpt = _Hwpt(ioas, domain)
        self._alloc_id(hwpt)
        hwpt.pasid_compat = bool(flags & lib.IOMMU_HWPT_ALLOC_PASID)
        ioas.users += 1
        hwpt.nest_parent = bool(flags & lib.IOMMU_HWPT_ALLOC_NEST_PARENT)
        try:
            self._domain_alloc_paging(idev, flags & ~lib.IOMMU_HWPT_FAULT_ID_VALID, user_data)
            hwpt.dirty_ops = bool(flags & lib.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
            if idev.enforce_cache_coherency:
                hwpt.enforce_cache_coherency = True
            if immediate_attach:
                self._hw_pagetable_attach(hwpt, idev, pasid)
            try:
                ioas.iopt.add_domain(domain)
            except BaseException:
                if immediate_attach:
                    self._hw_pagetable_detach(idev, pasid)
                raise
            ioas.hwpt_list.append(hwpt)
        except BaseException:
            self._abort(hwpt)
            raise
        return hwpt

    def _domain_alloc_paging(self, idev: _Idev, flags: int, user_data: bool) -> None:
        """ops->domain_alloc_paging_flags of the device's IOMMU driver."""
        if idev.noiommu:
            if flags or user_data:
                # noiommu_alloc_paging_flags: EOPNOTSUPP for flags or data
                raise errno_error(errno.EOPNOTSUPP, "no-IOMMU domains take no flags")
            return
        iommu = self.system.iommu
        assert iommu is not None
        if user_data:
            # intel_iommu_domain_alloc_paging_flags: EOPNOTSUPP for driver data
            raise errno_error(errno.EOPNOTSUPP, "paging domains take no driver data")
        if flags & lib.IOMMU_HWPT_ALLOC_NEST_PARENT and not getattr(iommu, "nesting", False):
            # intel_iommu_domain_alloc_second_stage: EOPNOTSUPP without nesting support
            raise errno_error(errno.EOPNOTSUPP, "the IOMMU does not support nesting")
        if flags & lib.IOMMU_HWPT_ALLOC_DIRTY_TRACKING and not iommu.dirty_tracking:
            # intel_iommu_domain_alloc_second_stage: EOPNOTSUPP without SSADS
            raise errno_error(errno.EOPNOTSUPP, "the IOMMU cannot track dirty pages")

    def _hwpt_alloc(self, u: _Ucmd) -> int:
        """iommufd_hwpt_alloc."""
        cmd = u.cmd
        if _reserved(cmd):
            # iommufd_hwpt_alloc: EOPNOTSUPP for a nonzero __reserved
            raise errno_error(errno.EOPNOTSUPP, "__reserved must be 0")
        data_type, data_len = int(cmd.data_type), int(cmd.data_len)
        if (data_type == lib.IOMMU_HWPT_DATA_NONE and data_len) or \
                (data_type != lib.IOMMU_HWPT_DATA_NONE and not data_len):
            # iommufd_hwpt_alloc: EINVAL when data_type and data_len disagree
            raise errno_error(errno.EINVAL, "data_type and data_len disagree")
        idev: _Idev = self._get(int(cmd.dev_id), OBJ_DEVICE)
        pt = self.objects.get(int(cmd.pt_id))
        if pt is None:
            # iommufd_hwpt_alloc: EINVAL for an unknown pt_id
            raise errno_error(errno.EINVAL, f"no object {cmd.pt_id}")
        flags = int(cmd.flags)
        if isinstance(pt, _Ioas):
            hwpt = self._hwpt_paging_alloc(pt, idev, NO_PASID, flags, immediate_attach=False,
                                           user_data=bool(data_len))
        elif isinstance(pt, _Hwpt):
            self._hwpt_nested_alloc(pt, idev, flags, data_len)
            raise AssertionError("unreachable")  # pragma: no cover
        else:
            # iommufd_hwpt_alloc: EINVAL for other object types
            raise errno_error(errno.EINVAL, f"object {cmd.pt_id} is not an IOAS or HWPT")
        try:
            if flags & lib.IOMMU_HWPT_FAULT_ID_VALID:
                fault: _Fault = self._get(int(cmd.fault_id), OBJ_FAULT)
                hwpt.fault = fault
                fault.users += 1
            cmd.out_hwpt_id = hwpt.id
            u.respond()
        except BaseException:
            self._abort(hwpt)
            raise
        self._finalize(hwpt)
        return 0

    def _hwpt_nested_alloc(self, parent: _Hwpt, idev: _Idev, flags: int, data_len: int) -> None:
        """iommufd_hwpt_nested_alloc: this IOMMU builds no nested domains."""
        if flags & ~(lib.IOMMU_HWPT_FAULT_ID_VALID | lib.IOMMU_HWPT_ALLOC_PASID) or not data_len \
                or idev.noiommu:
            # iommufd_hwpt_nested_alloc: EOPNOTSUPP for flags, no data or no nesting op
            raise errno_error(errno.EOPNOTSUPP, "unsupported nested HWPT request")
        if parent.auto_domain or not parent.nest_parent:
            # iommufd_hwpt_nested_alloc: EINVAL unless the parent is a nesting parent
            raise errno_error(errno.EINVAL, f"HWPT {parent.id} is not a nesting parent")
        # intel_iommu_domain_alloc_nested: the fake simulates no stage-1 tables
        raise errno_error(errno.EOPNOTSUPP, "nested translation is not simulated")

    def _hwpt_set_dirty_tracking(self, u: _Ucmd) -> int:
        """iommufd_hwpt_set_dirty_tracking."""
        cmd = u.cmd
        if cmd.flags & ~lib.IOMMU_HWPT_DIRTY_TRACKING_ENABLE:
            # iommufd_hwpt_set_dirty_tracking: EOPNOTSUPP for unknown flags
            raise errno_error(errno.EOPNOTSUPP, f"unsupported flags {cmd.flags:#x}")
        hwpt: _Hwpt = self._get(int(cmd.hwpt_id), OBJ_HWPT_PAGING)
        if not hwpt.dirty_ops:
            # iopt_set_dirty_tracking: EOPNOTSUPP without dirty ops
            raise errno_error(errno.EOPNOTSUPP, "the HWPT was not allocated with DIRTY_TRACKING")
        enable = bool(cmd.flags & lib.IOMMU_HWPT_DIRTY_TRACKING_ENABLE)
        if enable:
            # iopt_set_dirty_tracking: clear the dirty bits for a clean snapshot
            hwpt.dirty.clear()
        hwpt.dirty_enabled = enable
        return 0

    def _hwpt_get_dirty_bitmap(self, u: _Ucmd) -> int:
        """iommufd_hwpt_get_dirty_bitmap."""
        cmd = u.cmd
        flags = int(cmd.flags)
        if flags & ~lib.IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR or _reserved(cmd):
            # iommufd_hwpt_get_dirty_bitmap: EOPNOTSUPP for unknown flags or __reserved
            raise errno_error(errno.EOPNOTSUPP, "unsupported flags or __reserved")
        hwpt: _Hwpt = self._get(int(cmd.hwpt_id), OBJ_HWPT_PAGING)
        iopt = hwpt.ioas.iopt
        iova, length, page_size = int(cmd.iova), int(cmd.length), int(cmd.page_size)
        # iommufd_check_iova_range
        if not length:
            raise errno_error(errno.EINVAL, "zero length")
        last = iova + length - 1
        if last > ULONG_MAX:
            raise errno_error(errno.EOVERFLOW, "iova + length overflows")
        pg = iopt.iova_alignment
        if iova & (pg - 1) or (last + 1) & (pg - 1):
            raise errno_error(errno.EINVAL, "range not aligned to the IOMMU page size")
        if not page_size:
            raise errno_error(errno.EINVAL, "zero page_size")
        if iova & (page_size - 1) or (last + 1) & (page_size - 1):
            raise errno_error(errno.EINVAL, "range not aligned to page_size")
        if not hwpt.dirty_ops:
            # iommu_read_and_clear_dirty: EOPNOTSUPP without dirty ops
            raise errno_error(errno.EOPNOTSUPP, "the HWPT was not allocated with DIRTY_TRACKING")
        self._read_and_clear_dirty(hwpt, iova, last, page_size, int(cmd.data),
                                   not flags & lib.IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR)
        return 0

    def _read_and_clear_dirty(self, hwpt: _Hwpt, iova: int, last: int, page_size: int,
                              data: int, clear: bool) -> None:
        """iommu_read_and_clear_dirty over the contiguous mappings from
        ``iova`` (iopt_for_each_contig_area); bitmap write failures are
        silently dropped as iova_bitmap_set does."""
        areas = hwpt.ioas.iopt.areas
        ps = hwpt.dirty_page
        shift = (page_size & -page_size).bit_length() - 1
        spans: list[tuple[int, int]] = []
        found = areas.find(iova)
        cur = iova
        while found is not None:
            area = found[2]
            end = min(last, area.last)
            spans.append((cur, end))
            if end == last:
                break
            cur = area.last + 1
            nxt = areas.get(cur)
            found = (cur, nxt[0], nxt[1]) if nxt is not None else None
        dirty_pages: list[int] = []
        for start, end in spans:
            lo, hi = start // ps, end // ps
            if hi - lo + 1 <= len(hwpt.dirty):
                dirty_pages += [p for p in range(lo, hi + 1) if p in hwpt.dirty]
            else:
                dirty_pages += [p for p in hwpt.dirty if lo <= p <= hi]
        if not dirty_pages:
            return
        bits: dict[int, int] = {}
        for p in dirty_pages:
            first = max(p * ps, iova)
            end = min(p * ps + ps - 1, last)
            for bit in range((first - iova) >> shift, ((end - iova) >> shift) + 1):
                bits[bit >> 3] = bits.get(bit >> 3, 0) | (1 << (bit & 7))
            if clear:
                hwpt.dirty.discard(p)
        memory = self.system.user_memory
        for byte, mask in sorted(bits.items()):
            address = data + byte
            try:
                memory.check(address, 1, True)
            except OSError:
                continue
            old = memory.read(address, 1)[0]
            memory.write(address, bytes([old | mask]))

    def _hwpt_invalidate(self, u: _Ucmd) -> int:
        """iommufd_hwpt_invalidate: entry_num is written back even on error."""
        cmd = u.cmd
        try:
            self._hwpt_invalidate_checks(cmd)
        finally:
            cmd.entry_num = 0
            u.respond()
        return 0  # pragma: no cover - no target can exist

    def _hwpt_invalidate_checks(self, cmd: Any) -> None:
        if _reserved(cmd):
            # iommufd_hwpt_invalidate: EOPNOTSUPP for a nonzero __reserved
            raise errno_error(errno.EOPNOTSUPP, "__reserved must be 0")
        if cmd.entry_num and (not cmd.data_uptr or not cmd.entry_len
                              or cmd.entry_len > self.system_page_size
                              or cmd.entry_num > _INVALIDATE_ENTRY_NUM_MAX):
            # iommufd_hwpt_invalidate: EINVAL for a bad entry array
            raise errno_error(errno.EINVAL, "bad entry array")
        if int(cmd.hwpt_id) not in self.objects:
            # iommufd_get_object: ENOENT for an unknown ID
            raise errno_error(errno.ENOENT, f"no object {cmd.hwpt_id}")
        # iommufd_hwpt_invalidate: EINVAL for anything but a nested HWPT or a
        # vIOMMU (neither can exist on this IOMMU)
        raise errno_error(errno.EINVAL, f"object {cmd.hwpt_id} is not a nested HWPT or vIOMMU")

    # -- fault queues --------------------------------------------------------------------------------------
    def _fault_queue_alloc(self, u: _Ucmd) -> int:
        """iommufd_fault_alloc."""
        cmd = u.cmd
        if cmd.flags:
            # iommufd_fault_alloc: EOPNOTSUPP for any flag
            raise errno_error(errno.EOPNOTSUPP, "flags must be 0")
        fault = _Fault()
        self._alloc_id(fault)
        file = FaultFile(self.kernel, self, fault)
        fault.users += 1
        self._ctx_get()
        fd = self.kernel.install(file)
        cmd.out_fault_id = fault.id
        cmd.out_fault_fd = fd
        try:
            u.respond()
        except BaseException:
            self.kernel.close(fd)
            self._abort(fault)
            raise
        self._finalize(fault)
        return 0

    # -- vIOMMU and friends --------------------------------------------------------------------------------
    def _viommu_alloc(self, u: _Ucmd) -> int:
        """iommufd_viommu_alloc_ioctl."""
        cmd = u.cmd
        if cmd.flags or cmd.type == lib.IOMMU_VIOMMU_TYPE_DEFAULT:
            # iommufd_viommu_alloc_ioctl: EOPNOTSUPP for flags or the default type
            raise errno_error(errno.EOPNOTSUPP, "flags or type not supported")
        self._get(int(cmd.dev_id), OBJ_DEVICE)
        # iommufd_viommu_alloc_ioctl: EOPNOTSUPP, intel-iommu has no viommu_init
        # (and no-IOMMU devices have no IOMMU at all)
        raise errno_error(errno.EOPNOTSUPP, "the IOMMU driver does not support vIOMMUs")

    def _vdevice_alloc(self, u: _Ucmd) -> int:
        """iommufd_vdevice_alloc_ioctl."""
        cmd = u.cmd
        # (virt_id > ULONG_MAX cannot happen with a 64-bit ulong)
        self._get(int(cmd.viommu_id), OBJ_VIOMMU)
        raise AssertionError("unreachable: no vIOMMU can exist")  # pragma: no cover

    def _veventq_alloc(self, u: _Ucmd) -> int:
        """iommufd_veventq_alloc."""
        cmd = u.cmd
        if cmd.flags or _reserved(cmd) or cmd.type == lib.IOMMU_VEVENTQ_TYPE_DEFAULT:
            # iommufd_veventq_alloc: EOPNOTSUPP for flags, __reserved or the default type
            raise errno_error(errno.EOPNOTSUPP, "flags, __reserved or type not supported")
        if not cmd.veventq_depth or cmd.veventq_depth > _VEVENTQ_MAX_DEPTH:
            # iommufd_veventq_alloc: EINVAL for a bad depth
            raise errno_error(errno.EINVAL, f"bad depth {cmd.veventq_depth}")
        self._get(int(cmd.viommu_id), OBJ_VIOMMU)
        raise AssertionError("unreachable: no vIOMMU can exist")  # pragma: no cover

    def _hw_queue_alloc(self, u: _Ucmd) -> int:
        """iommufd_hw_queue_alloc_ioctl."""
        cmd = u.cmd
        if cmd.flags or cmd.type == lib.IOMMU_HW_QUEUE_TYPE_DEFAULT:
            # iommufd_hw_queue_alloc_ioctl: EOPNOTSUPP for flags or the default type
            raise errno_error(errno.EOPNOTSUPP, "flags or type not supported")
        if not cmd.length:
            # iommufd_hw_queue_alloc_ioctl: EINVAL for a zero length
            raise errno_error(errno.EINVAL, "zero length")
        if int(cmd.nesting_parent_iova) + int(cmd.length) - 1 > ULONG_MAX:
            # iommufd_hw_queue_alloc_ioctl: EOVERFLOW
            raise errno_error(errno.EOVERFLOW, "iova + length overflows")
        self._get(int(cmd.viommu_id), OBJ_VIOMMU)
        raise AssertionError("unreachable: no vIOMMU can exist")  # pragma: no cover

    # -- IOMMU_GET_HW_INFO ---------------------------------------------------------------------------------
    def _vtd_regs(self) -> tuple[int, int]:
        """CAP_REG / ECAP_REG of the emulated VT-d (QEMU's intel-iommu
        defaults, adjusted to the topology's features)."""
        iommu = self.system.iommu
        assert iommu is not None
        cap = getattr(iommu, "cap_reg", None)
        ecap = getattr(iommu, "ecap_reg", None)
        if cap is not None and ecap is not None:
            return int(cap), int(ecap)
        aw = max(int(iommu.aperture[1]).bit_length(), 39)
        cap = (0x220 << 20) | 6 | (18 << 48) | (1 << 39) | ((aw - 1) << 16) | (0x2 << 8)
        if aw >= 48:
            cap |= 0x4 << 8
        if iommu.pgsize_bitmap & (1 << 21):
            cap |= 1 << 34
        if iommu.pgsize_bitmap & (1 << 30):
            cap |= 1 << 35
        ecap = (0xF0 << 4) | (1 << 1) | (1 << 6)
        if iommu.interrupt_remapping:
            ecap |= (1 << 3) | (1 << 4) | (15 << 20)
        if iommu.enforce_cache_coherency:
            ecap |= 1 << 7
        if iommu.dirty_tracking or iommu.pasid_bits:
            ecap |= (1 << 43) | (1 << 46) | (1 << 48)
        if iommu.dirty_tracking:
            ecap |= 1 << 55
        if iommu.pasid_bits:
            ecap |= (1 << 40) | ((int(iommu.pasid_bits) - 1) << 35)
        return cap, ecap

    def _get_hw_info(self, u: _Ucmd) -> int:
        """iommufd_get_hw_info."""
        cmd = u.cmd
        flags = int(cmd.flags)
        if flags & ~lib.IOMMU_HW_INFO_FLAG_INPUT_TYPE:
            # iommufd_get_hw_info: EOPNOTSUPP for unknown flags
            raise errno_error(errno.EOPNOTSUPP, f"unsupported flags {flags:#x}")
        if _reserved(cmd):
            # iommufd_get_hw_info: EOPNOTSUPP for a nonzero __reserved
            raise errno_error(errno.EOPNOTSUPP, "__reserved must be 0")
        if not flags & lib.IOMMU_HW_INFO_FLAG_INPUT_TYPE:
            cmd.in_data_type = lib.IOMMU_HW_INFO_TYPE_DEFAULT
        idev: _Idev = self._get(int(cmd.dev_id), OBJ_DEVICE)
        if idev.noiommu:
            # iommufd_get_hw_info: EOPNOTSUPP for a no-IOMMU device
            raise errno_error(errno.EOPNOTSUPP, "no IOMMU behind the device")
        iommu = self.system.iommu
        assert iommu is not None
        hw_type = _HW_INFO_TYPES.get(str(iommu.hw_info_type), lib.IOMMU_HW_INFO_TYPE_NONE)
        data = b""
        if hw_type != lib.IOMMU_HW_INFO_TYPE_NONE:
            if cmd.in_data_type not in (lib.IOMMU_HW_INFO_TYPE_DEFAULT, hw_type):
                # intel_iommu_hw_info: EOPNOTSUPP for another requested type
                raise errno_error(errno.EOPNOTSUPP, f"type {cmd.in_data_type} not supported")
            info = ffi.new(_HW_INFO_STRUCTS[hw_type] + " *")
            if hw_type == lib.IOMMU_HW_INFO_TYPE_INTEL_VTD:
                info.flags = lib.IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17
                info.cap_reg, info.ecap_reg = self._vtd_regs()
            data = bytes(ffi.buffer(info))
        cmd.out_data_type = hw_type
        user_len = int(cmd.data_len)
        copy_len = min(user_len, len(data))
        uptr = int(cmd.data_uptr)
        memory = self.system.user_memory
        # copy_to_user, then clear_user of the rest: EFAULT for a bad buffer
        _user_write(memory, uptr, data[:copy_len])
        if copy_len < user_len:
            _user_write(memory, uptr + copy_len, bytes(user_len - copy_len))
        cmd.data_len = len(data)
        caps = 0
        if self._dirty_capable(idev):
            caps |= lib.IOMMU_HW_CAP_DIRTY_TRACKING
        if not getattr(idev.pdev, "ats_supported", False):
            caps |= lib.IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED
        cmd.out_max_pasid_log2 = 0
        max_pasids = self._max_pasids(idev.pdev)
        if max_pasids:
            cmd.out_max_pasid_log2 = max_pasids.bit_length() - 1
        cmd.out_capabilities = caps
        u.respond()
        return 0

    # -- vfio compatibility (vfio_compat.c) -------------------------------------------------------------------
    def compat_attach_group(self, vgroup: VfioGroup) -> None:
        """VFIO_GROUP_SET_CONTAINER with this iommufd:
        iommufd_vfio_compat_set_no_iommu or iommufd_vfio_compat_ioas_create;
        the group then holds a context reference."""
        if vgroup.noiommu:
            if self.vfio_ioas is not None:
                # iommufd_vfio_compat_set_no_iommu: EINVAL with a compat IOAS
                raise errno_error(errno.EINVAL, "the iommufd has a compat IOAS")
            self.no_iommu_mode = True
        else:
            ioas = self._new_ioas()
            if self.no_iommu_mode:
                self._abort(ioas)
                # iommufd_vfio_compat_ioas_create: EINVAL in no-IOMMU mode
                raise errno_error(errno.EINVAL, "the iommufd is in no-IOMMU mode")
            if self.vfio_ioas is not None and self.vfio_ioas.id in self.objects:
                self._abort(ioas)
            else:
                self.vfio_ioas = ioas
                self._finalize(ioas)
        self._ctx_get()

    def compat_detach_group(self, vgroup: VfioGroup) -> None:
        """The group drops its context reference (vfio_group_detach_container)."""
        self._ctx_put()

    def compat_attach_device(self, dev_id: int) -> int:
        """vfio_iommufd_compat_attach_ioas: attach to the compat IOAS."""
        idev = self._idev(dev_id)
        if idev.noiommu:
            return 0
        return self.attach_device(dev_id, self._compat_ioas().id)

    def _vfio_ioctl(self, request: int, arg: IoctlArg) -> int:
        """iommufd_vfio_ioctl."""
        if request == lib.VFIO_GET_API_VERSION:
            return int(lib.VFIO_API_VERSION)
        if request == lib.VFIO_SET_IOMMU:
            return self._vfio_set_iommu(_int_arg(arg))
        if request == lib.VFIO_CHECK_EXTENSION:
            return self._vfio_check_extension(_int_arg(arg))
        if request == lib.VFIO_IOMMU_GET_INFO:
            return self._vfio_iommu_get_info(arg)
        if request == lib.VFIO_IOMMU_MAP_DMA:
            return self._vfio_map_dma(arg)
        if request == lib.VFIO_IOMMU_UNMAP_DMA:
            return self._vfio_unmap_dma(arg)
        # iommufd_vfio_ioctl: ENOIOCTLCMD (ENOTTY) for anything else
        raise errno_error(errno.ENOTTY)

    def _vfio_set_iommu(self, type_: int) -> int:
        """iommufd_vfio_set_iommu."""
        if type_ == lib.VFIO_NOIOMMU_IOMMU and self.no_iommu_mode:
            if not getattr(self.system, "cap_sys_rawio", True):
                # iommufd_vfio_set_iommu: EPERM without CAP_SYS_RAWIO
                raise errno_error(errno.EPERM, "no-IOMMU needs CAP_SYS_RAWIO")
            return 0
        if type_ not in (lib.VFIO_TYPE1_IOMMU, lib.VFIO_TYPE1v2_IOMMU) or self.no_iommu_mode:
            # iommufd_vfio_set_iommu: EINVAL for other types or in no-IOMMU mode
            raise errno_error(errno.EINVAL, f"IOMMU type {type_} not supported")
        ioas = self._compat_ioas()
        if type_ == lib.VFIO_TYPE1_IOMMU:
            # type1 can unmap inside mappings: no huge IOPTEs
            ioas.iopt.disable_large_pages_()
        return 0

    def _vfio_check_extension(self, ext: int) -> int:
        """iommufd_vfio_check_extension."""
        if ext in (lib.VFIO_TYPE1_IOMMU, lib.VFIO_TYPE1v2_IOMMU, lib.VFIO_UNMAP_ALL):
            return 0 if self.no_iommu_mode else 1
        if ext == lib.VFIO_NOIOMMU_IOMMU:
            return 1  # CONFIG_VFIO_NOIOMMU
        if ext == lib.VFIO_DMA_CC_IOMMU:
            # iommufd_vfio_cc_iommu: ENODEV without a compat IOAS
            ioas = self._compat_ioas()
            return 0 if any(not h.enforce_cache_coherency for h in ioas.hwpt_list) else 1
        return 0

    def _vfio_iommu_get_info(self, arg: IoctlArg) -> int:
        """iommufd_vfio_iommu_get_info."""
        user = _UserArg(self.system.user_memory, arg)
        info_size = int(ffi.sizeof("struct vfio_iommu_type1_info"))
        minsz = _offsetofend("struct vfio_iommu_type1_info", "iova_pgsizes")
        head = ffi.new("struct vfio_iommu_type1_info *")
        # copy_from_user: EFAULT
        ffi.memmove(head, user.read(0, minsz), minsz)
        argsz = int(head.argsz)
        if argsz < minsz:
            # iommufd_vfio_iommu_get_info: EINVAL below the minimum size
            raise errno_error(errno.EINVAL, f"argsz {argsz} < {minsz}")
        copy = min(argsz, info_size)
        ioas = self._compat_ioas()
        info = ffi.new("struct vfio_iommu_type1_info *")
        info.flags = lib.VFIO_IOMMU_INFO_PGSIZES
        info.iova_pgsizes = self._compat_pagesizes(ioas)
        total = info_size
        last_cap: int | None = None
        for fill in (self._cap_dma_avail, self._cap_iova):
            avail = argsz - total if argsz > total else 0
            # iommufd_fill_cap_*: write what fits, report the full size
            size = fill(ioas, user, total, avail)
            size = (size + 7) & ~7
            if last_cap is not None and argsz >= total:
                # put_user of the previous header's next
                user.write(last_cap + 4, total.to_bytes(4, "little"))
            last_cap = total
            total += size
        if argsz >= total:
            info.cap_offset = info_size
        info.argsz = total
        info.flags |= lib.VFIO_IOMMU_INFO_CAPS
        user.write(0, bytes(ffi.buffer(info))[:copy])
        return 0

    def _compat_pagesizes(self, ioas: _Ioas) -> int:
        """iommufd_get_pagesizes."""
        ps = self.system_page_size
        bitmap = ULONG_MAX
        for hwpt in ioas.hwpt_list:
            bitmap &= hwpt.domain.pgsize_bitmap
        if bitmap & (ps - 1):
            bitmap &= ~(ps - 1) & ULONG_MAX
            bitmap |= ps
        return max(bitmap, ioas.iopt.iova_alignment)

    @staticmethod
    def _cap_dma_avail(ioas: _Ioas, user: _UserArg, offset: int, avail: int) -> int:
        """iommufd_fill_cap_dma_avail."""
        cap = ffi.new("struct vfio_iommu_type1_info_dma_avail *")
        cap.header.id = lib.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL
        cap.header.version = 1
        cap.avail = 0xFFFFFFFF
        data = bytes(ffi.buffer(cap))
        if avail >= len(data):
            user.write(offset, data)
        return len(data)

    @staticmethod
    def _cap_iova(ioas: _Ioas, user: _UserArg, offset: int, avail: int) -> int:
        """iommufd_fill_cap_iova: each range that fits, then the header if
        everything fits."""
        ranges = ioas.iopt.iova_ranges()
        head = int(ffi.sizeof("struct vfio_iommu_type1_info_cap_iova_range"))
        entry = int(ffi.sizeof("struct vfio_iova_range"))
        for i, (start, last) in enumerate(ranges):
            if avail >= head + (i + 1) * entry:
                user.write(offset + head + i * entry,
                           start.to_bytes(8, "little") + last.to_bytes(8, "little"))
        size = head + len(ranges) * entry
        if avail >= size:
            cap = ffi.new("struct vfio_iommu_type1_info_cap_iova_range *")
            cap.header.id = lib.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE
            cap.header.version = 1
            cap.nr_iovas = len(ranges)
            user.write(offset, bytes(ffi.buffer(cap))[:head])
        return size

    def _vfio_map_dma(self, arg: IoctlArg) -> int:
        """iommufd_vfio_map_dma."""
        user = _UserArg(self.system.user_memory, arg)
        minsz = _offsetofend("struct vfio_iommu_type1_dma_map", "size")
        m = ffi.new("struct vfio_iommu_type1_dma_map *")
        # copy_from_user: EFAULT
        ffi.memmove(m, user.read(0, minsz), minsz)
        supported = lib.VFIO_DMA_MAP_FLAG_READ | lib.VFIO_DMA_MAP_FLAG_WRITE
        if m.argsz < minsz or m.flags & ~supported:
            # iommufd_vfio_map_dma: EINVAL for a short argsz or unknown flags
            raise errno_error(errno.EINVAL, "bad argsz or flags")
        prot = 0
        if m.flags & lib.VFIO_DMA_MAP_FLAG_READ:
            prot |= IOMMU_READ
        if m.flags & lib.VFIO_DMA_MAP_FLAG_WRITE:
            prot |= IOMMU_WRITE
        ioas = self._compat_ioas()
        self._map_user(ioas, int(m.vaddr), int(m.size), int(m.iova), prot, alloc=False)
        return 0

    def _vfio_unmap_dma(self, arg: IoctlArg) -> int:
        """iommufd_vfio_unmap_dma: the unmapped size is written back even
        when the unmap fails part way."""
        user = _UserArg(self.system.user_memory, arg)
        minsz = _offsetofend("struct vfio_iommu_type1_dma_unmap", "size")
        um = ffi.new("struct vfio_iommu_type1_dma_unmap *")
        # copy_from_user: EFAULT
        ffi.memmove(um, user.read(0, minsz), minsz)
        if um.argsz < minsz or um.flags & ~lib.VFIO_DMA_UNMAP_FLAG_ALL:
            # iommufd_vfio_unmap_dma: EINVAL for a short argsz or unsupported flags
            raise errno_error(errno.EINVAL, "bad argsz or flags")
        ioas = self._compat_ioas()
        iova, size = int(um.iova), int(um.size)
        err = 0
        if um.flags & lib.VFIO_DMA_UNMAP_FLAG_ALL:
            if iova or size:
                # iommufd_vfio_unmap_dma: EINVAL, UNMAP_ALL takes no range
                raise errno_error(errno.EINVAL, "UNMAP_ALL with a range")
            unmapped = ioas.iopt.unmap_all()
        else:
            if ioas.iopt.disable_large_pages:
                # type1 semantics: cut the mappings at the range's ends
                cuts = [(iova + size - 1) & ULONG_MAX] + ([(iova - 1) & ULONG_MAX] if iova else [])
                ioas.iopt.cut_iova(cuts)
            try:
                err, unmapped = ioas.iopt.unmap_iova(iova, size)
            except OSError as e:
                # iommufd_vfio_unmap_dma: the size (0) is written back on errors too
                err, unmapped = int(e.errno or errno.EINVAL), 0
        um.size = unmapped
        user.write(0, bytes(ffi.buffer(um))[:minsz])
        if err:
            raise errno_error(err, "the range is empty, overflows or splits a mapping")
        return 0


def _int_arg(arg: IoctlArg) -> int:
    """An ioctl argument passed by value (VFIO_SET_IOMMU, VFIO_CHECK_EXTENSION)."""
    if isinstance(arg, int):
        return arg & ULONG_MAX
    return int(ffi.cast("uintptr_t", arg))


def _op(request: int, ctype: str, last: str, handler: _Handler) -> _Op:
    return _Op(request, ctype, last, handler)


_OP_LIST: list[_Op] = [
    _op(lib.IOMMU_DESTROY, "struct iommu_destroy", "id", IommufdFile._destroy),
    _op(lib.IOMMU_FAULT_QUEUE_ALLOC, "struct iommu_fault_alloc", "out_fault_fd",
        IommufdFile._fault_queue_alloc),
    _op(lib.IOMMU_GET_HW_INFO, "struct iommu_hw_info", "__reserved", IommufdFile._get_hw_info),
    _op(lib.IOMMU_HW_QUEUE_ALLOC, "struct iommu_hw_queue_alloc", "length",
        IommufdFile._hw_queue_alloc),
    _op(lib.IOMMU_HWPT_ALLOC, "struct iommu_hwpt_alloc", "__reserved", IommufdFile._hwpt_alloc),
    _op(lib.IOMMU_HWPT_GET_DIRTY_BITMAP, "struct iommu_hwpt_get_dirty_bitmap", "data",
        IommufdFile._hwpt_get_dirty_bitmap),
    _op(lib.IOMMU_HWPT_INVALIDATE, "struct iommu_hwpt_invalidate", "__reserved",
        IommufdFile._hwpt_invalidate),
    _op(lib.IOMMU_HWPT_SET_DIRTY_TRACKING, "struct iommu_hwpt_set_dirty_tracking", "__reserved",
        IommufdFile._hwpt_set_dirty_tracking),
    _op(lib.IOMMU_IOAS_ALLOC, "struct iommu_ioas_alloc", "out_ioas_id", IommufdFile._ioas_alloc),
    _op(lib.IOMMU_IOAS_ALLOW_IOVAS, "struct iommu_ioas_allow_iovas", "allowed_iovas",
        IommufdFile._ioas_allow_iovas),
    _op(lib.IOMMU_IOAS_CHANGE_PROCESS, "struct iommu_ioas_change_process", "__reserved",
        IommufdFile._ioas_change_process),
    _op(lib.IOMMU_IOAS_COPY, "struct iommu_ioas_copy", "src_iova", IommufdFile._ioas_copy),
    _op(lib.IOMMU_IOAS_IOVA_RANGES, "struct iommu_ioas_iova_ranges", "out_iova_alignment",
        IommufdFile._ioas_iova_ranges),
    _op(lib.IOMMU_IOAS_MAP, "struct iommu_ioas_map", "iova", IommufdFile._ioas_map),
    _op(lib.IOMMU_IOAS_MAP_FILE, "struct iommu_ioas_map_file", "iova", IommufdFile._ioas_map_file),
    _op(lib.IOMMU_IOAS_NOIOMMU_GET_PA, "struct iommu_ioas_noiommu_get_pa", "out_phys",
        IommufdFile._ioas_noiommu_get_pa),
    _op(lib.IOMMU_IOAS_UNMAP, "struct iommu_ioas_unmap", "length", IommufdFile._ioas_unmap),
    _op(lib.IOMMU_OPTION, "struct iommu_option", "val64", IommufdFile._option),
    _op(lib.IOMMU_VDEVICE_ALLOC, "struct iommu_vdevice_alloc", "virt_id",
        IommufdFile._vdevice_alloc),
    _op(lib.IOMMU_VEVENTQ_ALLOC, "struct iommu_veventq_alloc", "out_veventq_fd",
        IommufdFile._veventq_alloc),
    _op(lib.IOMMU_VFIO_IOAS, "struct iommu_vfio_ioas", "__reserved", IommufdFile._vfio_ioas),
    _op(lib.IOMMU_VIOMMU_ALLOC, "struct iommu_viommu_alloc", "out_viommu_id",
        IommufdFile._viommu_alloc),
]

#: iommufd_ioctl_ops, indexed by _IOC_NR - IOMMUFD_CMD_BASE
_OPS: list[_Op | None] = [None] * (max((o.request & 0xFF) for o in _OP_LIST) - IOMMUFD_CMD_BASE + 1)
for _o in _OP_LIST:
    _OPS[(_o.request & 0xFF) - IOMMUFD_CMD_BASE] = _o
del _o
