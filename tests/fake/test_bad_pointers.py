"""Bad user pointers on every ioctl the fake kernel serves.

The real kernel answers a bad user pointer with EFAULT (or with the errno
of a check it makes before touching the memory); it never dies.  The fake
must do the same: every user-memory access goes through
:mod:`pyvfio.fake.uaccess`.  Each case below runs in a forked child, so a
fake that dereferences a bad address shows up as a failure naming the
ioctl, the field and the kind of pointer, not as a dead test run.

Cases, one test each:

* ``arg-<kind>``: the ioctl's argument itself is NULL, an unmapped page
  (0x1000), a PROT_NONE page or a kernel address;
* ``<field>-<kind>``: a valid command whose user-pointer member points at
  an unmapped page, a PROT_NONE page, or a mapping too short for what the
  kernel reads or writes there (the rest lies in a PROT_NONE page);
* ``argsz``: an owning cffi struct (``struct x *``) that ends right before
  a PROT_NONE page, with ``argsz``/``size`` 4096 bytes larger than the
  struct: the kernel's errno, and never an access past the object;
* ``type-float``/``type-str``: an argument that is neither an int nor a
  cffi pointer: TypeError (as :class:`~pyvfio.backend.kernel.KernelBackend`
  gives) or OSError.

The fds: ``/dev/iommu`` (every ``IOMMU_*`` ioctl of the bindings and the
vfio compat ioctls), the type1 container, the group, the device through
the group and through its cdev (bound to an iommufd, or not yet bound for
VFIO_DEVICE_BIND_IOMMUFD), the migration data fd and the fault queue fd
(no ioctls: ENOTTY).  No veventq fd can exist: the fake's VT-d has no
vIOMMU.  The machine is the default one with migration and DMA logging on
edu and dirty tracking in the IOMMU.
"""

from __future__ import annotations

import copy
import ctypes
import errno
import faulthandler
import os
import pickle
import re
import resource
import select
import signal
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import pytest

from pyvfio._uapi import ffi, lib
from pyvfio.fake import System
from pyvfio.fake.machine.topology import load

PAGE = 4096
EDU, E1000, E1000_PEER = "0000:00:02.0", "0000:01:01.0", "0000:01:02.0"
IOVA = 0x100000
NPAGES = 64  # the pages mapped at IOVA in every context
DIRTY_PAGE = 40  # edu writes here: its bit lies past the first 4 bytes of a bitmap
EDU_BUFFER, DMA_SRC, DMA_DST, DMA_COUNT, DMA_CMD = 0x40000, 0x80, 0x88, 0x90, 0x98
CONFIG = lib.VFIO_PCI_CONFIG_REGION_INDEX << 40
TIMEOUT = 10.0
KERNEL_ADDR = 0xFFFF888000000000
MAP_FIXED = lib.IOMMU_IOAS_MAP_READABLE | lib.IOMMU_IOAS_MAP_WRITEABLE | lib.IOMMU_IOAS_MAP_FIXED_IOVA
GET, SET = lib.VFIO_DEVICE_FEATURE_GET, lib.VFIO_DEVICE_FEATURE_SET

OK = 0  # an outcome: the ioctl succeeds
EFAULT = frozenset({errno.EFAULT})

ARG_KINDS = ("null", "unmapped", "prot_none", "kernel")
FIELD_KINDS = ("unmapped", "prot_none", "short")
TYPE_KINDS = {"float": 1.5, "str": "0x1000"}


def _topology() -> dict[str, Any]:
    topo = copy.deepcopy(load("default"))
    topo["iommu"]["dirty_tracking"] = True
    for dev in topo["devices"]:
        if dev["bdf"] == EDU:
            dev["model_migration"] = True
    return topo


TOPOLOGY = _topology()


# -- user memory of the child ------------------------------------------------------------------------
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                       ctypes.c_long]
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def guard_page() -> int:
    """A fresh read-write page followed by a PROT_NONE page: the address
    of the PROT_NONE page."""
    base = _libc.mmap(None, 2 * PAGE, 3, 0x22, -1, 0)  # PROT_READ|WRITE, MAP_PRIVATE|ANONYMOUS
    assert base and base != ctypes.c_void_p(-1).value, "mmap failed"
    assert _libc.mprotect(base + PAGE, PAGE, 0) == 0, "mprotect failed"
    return int(base) + PAGE


def bad_address(kind: str, payload: bytes = b"") -> int:
    """A user pointer of ``kind``; ``short``: the first half (at least 4
    bytes) of ``payload`` is readable, the rest lies in a PROT_NONE page."""
    if kind == "null":
        return 0
    if kind == "unmapped":
        return 0x1000
    if kind == "kernel":
        return KERNEL_ADDR
    guard = guard_page()
    if kind == "prot_none":
        return guard
    assert kind == "short" and len(payload) >= 8, (kind, payload)
    half = max(4, (len(payload) // 2) & ~3)
    ctypes.memmove(guard - half, payload[:half], half)
    return guard - half


def at_guard(ctype: str) -> Any:
    """An owning ``ctype *`` whose last byte is followed by a PROT_NONE page."""
    guard = guard_page()
    alloc = ffi.new_allocator(alloc=lambda n: ffi.cast("void *", guard - n), free=lambda p: None)
    return alloc(ctype + " *")


def heap(ctype: str) -> Any:
    return ffi.new(ctype + " *")  # an ordinary owning ``ctype *``


def address(obj: Any) -> int:
    return int(ffi.cast("uintptr_t", obj))


# -- the contexts: a machine brought to the state where each ioctl reaches its pointers ------------
class Env:
    """One machine, in the child, with the fds and object IDs the cases use."""

    def __init__(self, context: str) -> None:
        self.system = System(TOPOLOGY)
        self.b = self.system.backend
        self.keep: list[Any] = []
        self.fds: dict[str, int] = {}
        getattr(self, "_" + context)()

    def close(self) -> None:
        """Close every fd and mapping (only the parent's warm-up needs it)."""
        for fd in list(self.b._files):
            self.b.close(fd)
        if hasattr(self, "memfd"):
            os.close(self.memfd)
        for m in self.keep:
            if hasattr(m, "close"):
                m.close()

    # helpers
    def ioctl(self, fd: int, request: int, arg: Any = 0) -> int:
        return self.b.ioctl(fd, request, arg)

    def buffer(self, size: int) -> int:
        buf = ffi.new("char[]", size)
        self.keep.append(buf)
        return address(buf)

    def memory(self, pages: int) -> int:
        m = self.b.mmap(pages * PAGE, 3, 0x22)
        self.keep.append(m)
        return int(m.address)

    def bind_vfio(self, *bdfs: str) -> None:
        for bdf in bdfs:
            dev = f"/sys/bus/pci/devices/{bdf}"
            self.b.sysfs_write(f"{dev}/driver_override", "vfio-pci")
            driver = self.b.sysfs_basename_of_link(f"{dev}/driver")
            if driver is not None:
                self.b.sysfs_write(f"/sys/bus/pci/drivers/{driver}/unbind", bdf)
            self.b.sysfs_write("/sys/bus/pci/drivers_probe", bdf)

    def cmd(self, request: int, ctype: str, **fields: Any) -> Any:
        """An iommufd command on ``self.ifd``; returns the struct."""
        obj = ffi.new(ctype + " *", fields)
        obj.size = ffi.sizeof(ctype)
        self.ioctl(self.ifd, request, obj)
        return obj

    def edu_dma_to(self, iova: int) -> None:
        """Bus master on, then edu copies 64 bytes of its buffer to ``iova``."""
        b, dfd = self.b, self.dfd
        b.pwrite(dfd, (0x0006).to_bytes(2, "little"), CONFIG + 4)
        for reg, value in ((DMA_SRC, EDU_BUFFER), (DMA_DST, iova), (DMA_COUNT, 64), (DMA_CMD, 3)):
            b.pwrite(dfd, value.to_bytes(8, "little"), reg)

    def feature(self, flags: int, payload: bytes) -> bytes:
        buf = ffi.new("char[]", 8 + len(payload))
        hdr = ffi.cast("struct vfio_device_feature *", buf)
        hdr.argsz, hdr.flags = 8 + len(payload), flags
        ffi.memmove(buf + 8, payload, len(payload))
        self.ioctl(self.dfd, lib.VFIO_DEVICE_FEATURE, buf)
        return bytes(ffi.buffer(buf + 8, len(payload)))

    # contexts
    def _iommufd(self, bdf: str = EDU, bound: bool = True) -> None:
        """An iommufd with an IOAS (NPAGES mapped at IOVA, also the compat
        IOAS), the device bound through its cdev and attached to a
        dirty-tracking HWPT with tracking on, and a fault queue."""
        self.bind_vfio(*((E1000, E1000_PEER) if bdf == E1000 else (bdf,)))
        self.ifd = self.fds["iommufd"] = self.b.open("/dev/iommu")
        name = self.b.sysfs_listdir(f"/sys/bus/pci/devices/{bdf}/vfio-dev")[0]
        self.dfd = self.b.open(f"/dev/vfio/devices/{name}")
        if not bound:
            self.fds["dev/cdev-unbound"] = self.dfd
            return
        bind = ffi.new("struct vfio_device_bind_iommufd *")
        bind.argsz, bind.iommufd = ffi.sizeof(bind[0]), self.ifd
        self.ioctl(self.dfd, lib.VFIO_DEVICE_BIND_IOMMUFD, bind)
        self.dev_id = int(bind.out_devid)
        self.ioas = int(self.cmd(lib.IOMMU_IOAS_ALLOC, "struct iommu_ioas_alloc").out_ioas_id)
        self.cmd(lib.IOMMU_IOAS_MAP, "struct iommu_ioas_map", flags=MAP_FIXED, ioas_id=self.ioas,
                 user_va=self.memory(NPAGES), length=NPAGES * PAGE, iova=IOVA)
        self.cmd(lib.IOMMU_VFIO_IOAS, "struct iommu_vfio_ioas", ioas_id=self.ioas, op=lib.IOMMU_VFIO_IOAS_SET)
        self.hwpt = int(self.cmd(lib.IOMMU_HWPT_ALLOC, "struct iommu_hwpt_alloc", dev_id=self.dev_id,
                                 pt_id=self.ioas, flags=lib.IOMMU_HWPT_ALLOC_DIRTY_TRACKING).out_hwpt_id)
        attach = ffi.new("struct vfio_device_attach_iommufd_pt *")
        attach.argsz, attach.pt_id = ffi.sizeof(attach[0]), self.hwpt
        self.ioctl(self.dfd, lib.VFIO_DEVICE_ATTACH_IOMMUFD_PT, attach)
        self.cmd(lib.IOMMU_HWPT_SET_DIRTY_TRACKING, "struct iommu_hwpt_set_dirty_tracking",
                 hwpt_id=self.hwpt, flags=lib.IOMMU_HWPT_DIRTY_TRACKING_ENABLE)
        fault = self.cmd(lib.IOMMU_FAULT_QUEUE_ALLOC, "struct iommu_fault_alloc")
        self.fds["fault"] = int(fault.out_fault_fd)
        ranges = ffi.new("struct iommu_ioas_iova_ranges *", {"size": 32, "ioas_id": self.ioas})
        try:
            self.ioctl(self.ifd, lib.IOMMU_IOAS_IOVA_RANGES, ranges)
        except OSError as e:  # EMSGSIZE: no room for any range, the count is reported
            assert e.errno == errno.EMSGSIZE
        self.nranges = int(ranges.num_iovas)
        self.memfd = self.b.memfd_create("bad-pointers")
        self.b.ftruncate(self.memfd, PAGE)
        self.fds["e1000/cdev" if bdf == E1000 else "dev/cdev"] = self.dfd

    def _cdev_unbound(self) -> None:
        self._iommufd(bound=False)

    def _cdev_e1000(self) -> None:
        self._iommufd(E1000)

    def _group(self, bdf: str = EDU) -> None:
        """A type1v2 container with the device's group, NPAGES mapped at
        IOVA, dirty tracking started, and the device fd from the group."""
        self.bind_vfio(*((E1000, E1000_PEER) if bdf == E1000 else (bdf,)))
        group = os.path.basename(self.b.sysfs_readlink(f"/sys/bus/pci/devices/{bdf}/iommu_group"))
        self.cfd = self.fds["container"] = self.b.open("/dev/vfio/vfio")
        self.gfd = self.fds["group"] = self.b.open(f"/dev/vfio/{group}")
        self.ioctl(self.gfd, lib.VFIO_GROUP_SET_CONTAINER, ffi.new("int *", self.cfd))
        self.ioctl(self.cfd, lib.VFIO_SET_IOMMU, lib.VFIO_TYPE1v2_IOMMU)
        m = ffi.new("struct vfio_iommu_type1_dma_map *")
        m.argsz, m.flags = ffi.sizeof(m[0]), lib.VFIO_DMA_MAP_FLAG_READ | lib.VFIO_DMA_MAP_FLAG_WRITE
        m.vaddr, m.iova, m.size = self.memory(NPAGES), IOVA, NPAGES * PAGE
        self.ioctl(self.cfd, lib.VFIO_IOMMU_MAP_DMA, m)
        d = ffi.new("struct vfio_iommu_type1_dirty_bitmap *")
        d.argsz, d.flags = ffi.sizeof(d[0]), lib.VFIO_IOMMU_DIRTY_PAGES_FLAG_START
        self.ioctl(self.cfd, lib.VFIO_IOMMU_DIRTY_PAGES, d)
        self.dfd = self.ioctl(self.gfd, lib.VFIO_GROUP_GET_DEVICE_FD, ffi.new("char[]", bdf.encode()))
        self.fds["e1000/group" if bdf == E1000 else "dev/group"] = self.dfd

    def _group_e1000(self) -> None:
        self._group(E1000)

    def _migration(self) -> None:
        """The saving data fd of edu in PRE_COPY."""
        self._group()
        state = lib.VFIO_DEVICE_STATE_PRE_COPY
        out = self.feature(SET | lib.VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
                           state.to_bytes(4, "little") + bytes(4))
        self.fds["migration"] = int.from_bytes(out[4:], "little", signed=True)



#: fd name -> the context that opens it
FD_CONTEXT = {
    "iommufd": "iommufd", "fault": "iommufd", "dev/cdev": "iommufd", "dev/cdev-unbound": "cdev_unbound",
    "e1000/cdev": "cdev_e1000", "container": "group", "group": "group", "dev/group": "group",
    "e1000/group": "group_e1000", "migration": "migration",
}


# -- the ioctls ---------------------------------------------------------------------------------------
Builder = Callable[..., Any]  # (env, new, ptr) -> the argument
Tail = Callable[["Env", "int | None"], bytes]  # (env, ptr) -> inline data


@dataclass(frozen=True)
class Op:
    """One ioctl as the cases drive it.

    ``build(env, new, ptr)`` makes a valid argument whose struct comes from
    ``new(ctype)`` (:func:`heap`, or :func:`at_guard` for the argsz case);
    with ``ptr`` the pointer member ``field`` is set to it (with counts
    that make the kernel access ``payload(env)``'s length there).
    """

    name: str
    fds: tuple[str, ...]
    request: int
    build: Builder | None = None  # None: the argument is passed by value
    arg: frozenset[int] | None = EFAULT  # outcomes for a bad argument; None: no such case
    argsz: frozenset[int] | None = None  # outcomes for argsz + 4096; None: no argsz
    field: str | None = None
    payload: Callable[[Env], bytes] = lambda env: b""
    field_outcome: frozenset[int] = EFAULT
    field_fds: tuple[str, ...] | None = None  # default: fds
    prepare: Callable[[Env], None] | None = None  # run before building (field and argsz cases)


def struct(ctype: str, field: str | None = None, tail: Tail | None = None, **fields: Any) -> Builder:
    """``ctype`` with its first member (``argsz``/``size``) set to its size
    and ``fields`` (values or functions of the env); ``field`` is the
    pointer member.  ``tail(env, ptr)`` is inline data after the struct:
    sent with it in one cffi array in the field cases, left out (it would
    lie past the struct) in the argsz case."""

    def build(env: Env, new: Callable[[str], Any], ptr: int | None = None) -> Any:
        data = tail(env, ptr) if tail is not None and new is heap else b""
        size = ffi.sizeof(ctype)
        if data:
            arg = ffi.new("char[]", size + len(data))
            obj = ffi.cast(ctype + " *", arg)
            ffi.memmove(arg + size, data, len(data))
        else:
            arg = obj = new(ctype)
        setattr(obj, ffi.typeof(ctype).fields[0][0], size + len(data))
        for k, v in fields.items():
            setattr(obj, k, v(env) if callable(v) else v)
        if ptr is not None and field is not None and tail is None:
            setattr(obj, field, ptr)
        return arg

    return build


def packed(ctype: str, **fields: Any) -> Tail:
    """Inline data: a ``ctype``; the member named with a trailing ``*`` is
    the pointer (``ptr``, or the value given)."""

    def tail(env: Env, ptr: int | None) -> bytes:
        obj = ffi.new(ctype + " *")
        for k, v in fields.items():
            v = v(env) if callable(v) else v
            if k.endswith("*"):
                k, v = k[:-1], v if ptr is None else ptr
            *path, last = k.split(".")
            target = obj
            for p in path:
                target = getattr(target, p)
            if not isinstance(getattr(target, last), int):
                v = ffi.cast("void *", v)  # vfio_bitmap.data is a real pointer member
            setattr(target, last, v)
        return bytes(ffi.buffer(obj))

    return tail


def feature(flags: int, tail: Tail | None = None) -> Builder:
    return struct("struct vfio_device_feature", tail=tail, flags=flags)


def zeros(n: int) -> Callable[[Env], bytes]:
    return lambda env: bytes(n)


def dirty(env: Env) -> None:
    env.edu_dma_to(IOVA + DIRTY_PAGE * PAGE)


def log_start(env: Env) -> None:
    """DMA logging over the mapped pages, then edu dirties DIRTY_PAGE."""
    rng = ffi.new("struct vfio_device_feature_dma_logging_range *",
                  {"iova": IOVA, "length": NPAGES * PAGE})
    ctl = ffi.new("struct vfio_device_feature_dma_logging_control *",
                  {"page_size": PAGE, "num_ranges": 1, "ranges": address(rng)})
    env.feature(SET | lib.VFIO_DEVICE_FEATURE_DMA_LOGGING_START, bytes(ffi.buffer(ctl)))
    dirty(env)


def _ranges(env: Env) -> bytes:
    return b"".join(int(v).to_bytes(8, "little") for v in (0x100000, 0x1FFFFF, 0x300000, 0x3FFFFF))


IO = ("iommufd",)
DEV = ("dev/group", "dev/cdev")
E1000_FDS = ("e1000/group", "e1000/cdev")
DMA_RW = lib.VFIO_DMA_MAP_FLAG_READ | lib.VFIO_DMA_MAP_FLAG_WRITE
ENOTTY, EINVAL = frozenset({errno.ENOTTY}), frozenset({errno.EINVAL})
EOPNOTSUPP, EBUSY, SUCCESS = frozenset({errno.EOPNOTSUPP}), frozenset({errno.EBUSY}), frozenset({OK})

OPS: list[Op] = [
    # -- /dev/iommu: iommufd_fops_ioctl reads the size (EFAULT), then
    # copy_struct_from_user reads the tail up to size: past the struct, EFAULT
    Op("IOMMU_DESTROY", IO, lib.IOMMU_DESTROY, struct("struct iommu_destroy", id=lambda e: e.ioas),
       argsz=EFAULT),
    Op("IOMMU_IOAS_ALLOC", IO, lib.IOMMU_IOAS_ALLOC, struct("struct iommu_ioas_alloc"), argsz=EFAULT),
    # iommufd_ioas_load_iovas: one copy_from_user per range
    Op("IOMMU_IOAS_ALLOW_IOVAS", IO, lib.IOMMU_IOAS_ALLOW_IOVAS,
       struct("struct iommu_ioas_allow_iovas", "allowed_iovas", ioas_id=lambda e: e.ioas, num_iovas=2),
       argsz=EFAULT, field="allowed_iovas", payload=_ranges),
    Op("IOMMU_IOAS_COPY", IO, lib.IOMMU_IOAS_COPY,
       struct("struct iommu_ioas_copy", dst_ioas_id=lambda e: e.ioas, src_ioas_id=lambda e: e.ioas,
             flags=MAP_FIXED, length=PAGE, src_iova=IOVA, dst_iova=IOVA + 0x400000), argsz=EFAULT),
    # iommufd_ioas_iova_ranges: one copy_to_user per range the IOAS has
    Op("IOMMU_IOAS_IOVA_RANGES", IO, lib.IOMMU_IOAS_IOVA_RANGES,
       struct("struct iommu_ioas_iova_ranges", "allowed_iovas", ioas_id=lambda e: e.ioas,
             num_iovas=lambda e: e.nranges), argsz=EFAULT,
       field="allowed_iovas", payload=lambda env: bytes(16 * env.nranges)),
    # iopt_map_user_pages: the IOAS has a domain, the pages are pinned at once
    Op("IOMMU_IOAS_MAP", IO, lib.IOMMU_IOAS_MAP,
       struct("struct iommu_ioas_map", "user_va", flags=MAP_FIXED, ioas_id=lambda e: e.ioas,
             user_va=lambda e: e.memory(2), length=2 * PAGE, iova=IOVA + 0x400000),
       argsz=EFAULT, field="user_va", payload=zeros(2 * PAGE)),
    Op("IOMMU_IOAS_MAP_FILE", IO, lib.IOMMU_IOAS_MAP_FILE,
       struct("struct iommu_ioas_map_file", flags=MAP_FIXED, ioas_id=lambda e: e.ioas,
             fd=lambda e: e.memfd, length=PAGE, iova=IOVA + 0x400000), argsz=EFAULT),
    Op("IOMMU_IOAS_UNMAP", IO, lib.IOMMU_IOAS_UNMAP,
       struct("struct iommu_ioas_unmap", ioas_id=lambda e: e.ioas, iova=IOVA, length=NPAGES * PAGE),
       argsz=EFAULT),
    Op("IOMMU_OPTION", IO, lib.IOMMU_OPTION,
       struct("struct iommu_option", option_id=lib.IOMMU_OPTION_RLIMIT_MODE, op=lib.IOMMU_OPTION_OP_GET),
       argsz=EFAULT),
    Op("IOMMU_VFIO_IOAS", IO, lib.IOMMU_VFIO_IOAS,
       struct("struct iommu_vfio_ioas", op=lib.IOMMU_VFIO_IOAS_GET), argsz=EFAULT),
    # intel_iommu_domain_alloc_paging_flags: EOPNOTSUPP for driver data, unread
    Op("IOMMU_HWPT_ALLOC", IO, lib.IOMMU_HWPT_ALLOC,
       struct("struct iommu_hwpt_alloc", "data_uptr", dev_id=lambda e: e.dev_id, pt_id=lambda e: e.ioas,
             data_type=lib.IOMMU_HWPT_DATA_VTD_S1, data_len=ffi.sizeof("struct iommu_hwpt_vtd_s1"),
             data_uptr=lambda e: e.buffer(ffi.sizeof("struct iommu_hwpt_vtd_s1"))),
       argsz=EFAULT, field="data_uptr", payload=zeros(ffi.sizeof("struct iommu_hwpt_vtd_s1")),
       field_outcome=EOPNOTSUPP),
    # iommufd_get_hw_info: copy_to_user of the VT-d info, clear_user of the rest
    Op("IOMMU_GET_HW_INFO", IO, lib.IOMMU_GET_HW_INFO,
       struct("struct iommu_hw_info", "data_uptr", dev_id=lambda e: e.dev_id, data_len=32,
             data_uptr=lambda e: e.buffer(32)),
       argsz=EFAULT, field="data_uptr", payload=zeros(32)),
    Op("IOMMU_HWPT_SET_DIRTY_TRACKING", IO, lib.IOMMU_HWPT_SET_DIRTY_TRACKING,
       struct("struct iommu_hwpt_set_dirty_tracking", hwpt_id=lambda e: e.hwpt,
             flags=lib.IOMMU_HWPT_DIRTY_TRACKING_ENABLE), argsz=EFAULT),
    # iova_bitmap_set pins the bitmap lazily and drops what it cannot pin:
    # a bad bitmap is no error (edu dirtied DIRTY_PAGE, past the first 4 bytes)
    Op("IOMMU_HWPT_GET_DIRTY_BITMAP", IO, lib.IOMMU_HWPT_GET_DIRTY_BITMAP,
       struct("struct iommu_hwpt_get_dirty_bitmap", "data", hwpt_id=lambda e: e.hwpt, iova=IOVA,
             length=NPAGES * PAGE, page_size=PAGE, data=lambda e: e.buffer(8)),
       argsz=EFAULT, field="data", payload=zeros(8), field_outcome=SUCCESS, prepare=dirty),
    # iommufd_hwpt_invalidate: EINVAL for a paging HWPT, before the array is read
    Op("IOMMU_HWPT_INVALIDATE", IO, lib.IOMMU_HWPT_INVALIDATE,
       struct("struct iommu_hwpt_invalidate", "data_uptr", hwpt_id=lambda e: e.hwpt,
             data_type=lib.IOMMU_HWPT_INVALIDATE_DATA_VTD_S1, entry_num=1,
             entry_len=ffi.sizeof("struct iommu_hwpt_vtd_s1_invalidate"),
             data_uptr=lambda e: e.buffer(64)),
       argsz=EFAULT, field="data_uptr", payload=zeros(ffi.sizeof("struct iommu_hwpt_vtd_s1_invalidate")),
       field_outcome=EINVAL),
    Op("IOMMU_FAULT_QUEUE_ALLOC", IO, lib.IOMMU_FAULT_QUEUE_ALLOC, struct("struct iommu_fault_alloc"),
       argsz=EFAULT),
    Op("IOMMU_IOAS_CHANGE_PROCESS", IO, lib.IOMMU_IOAS_CHANGE_PROCESS,
       struct("struct iommu_ioas_change_process"), argsz=EFAULT),
    # iommufd_viommu_alloc_ioctl: EOPNOTSUPP (no viommu_init in intel-iommu), data unread
    Op("IOMMU_VIOMMU_ALLOC", IO, lib.IOMMU_VIOMMU_ALLOC,
       struct("struct iommu_viommu_alloc", "data_uptr", type=lib.IOMMU_VIOMMU_TYPE_ARM_SMMUV3,
             dev_id=lambda e: e.dev_id, hwpt_id=lambda e: e.hwpt, data_len=16,
             data_uptr=lambda e: e.buffer(16)),
       argsz=EFAULT, field="data_uptr", payload=zeros(16), field_outcome=EOPNOTSUPP),
    Op("IOMMU_VDEVICE_ALLOC", IO, lib.IOMMU_VDEVICE_ALLOC,
       struct("struct iommu_vdevice_alloc", viommu_id=0xBAD, dev_id=lambda e: e.dev_id), argsz=EFAULT),
    Op("IOMMU_VEVENTQ_ALLOC", IO, lib.IOMMU_VEVENTQ_ALLOC,
       struct("struct iommu_veventq_alloc", viommu_id=0xBAD, type=1, veventq_depth=1), argsz=EFAULT),
    Op("IOMMU_HW_QUEUE_ALLOC", IO, lib.IOMMU_HW_QUEUE_ALLOC,
       struct("struct iommu_hw_queue_alloc", viommu_id=0xBAD, type=1, length=PAGE), argsz=EFAULT),
    Op("IOMMU_IOAS_NOIOMMU_GET_PA", IO, lib.IOMMU_IOAS_NOIOMMU_GET_PA,
       struct("struct iommu_ioas_noiommu_get_pa", ioas_id=lambda e: e.ioas, iova=IOVA, length=PAGE),
       argsz=EFAULT),
    # -- vfio compat on /dev/iommu (iommufd_vfio_ioctl); by-value arguments are never dereferenced
    Op("VFIO_GET_API_VERSION", IO, lib.VFIO_GET_API_VERSION, arg=SUCCESS),
    Op("VFIO_CHECK_EXTENSION", IO, lib.VFIO_CHECK_EXTENSION, arg=SUCCESS),
    Op("VFIO_SET_IOMMU", IO, lib.VFIO_SET_IOMMU, arg=EINVAL),  # no such IOMMU type
    # iommufd_vfio_iommu_get_info: the capabilities go past the struct
    Op("VFIO_IOMMU_GET_INFO", IO, lib.VFIO_IOMMU_GET_INFO, struct("struct vfio_iommu_type1_info"),
       argsz=EFAULT),
    Op("VFIO_IOMMU_MAP_DMA", IO, lib.VFIO_IOMMU_MAP_DMA,
       struct("struct vfio_iommu_type1_dma_map", "vaddr", flags=DMA_RW, vaddr=lambda e: e.memory(2),
              iova=IOVA + 0x400000, size=2 * PAGE),
       argsz=SUCCESS, field="vaddr", payload=zeros(2 * PAGE)),
    Op("VFIO_IOMMU_UNMAP_DMA", IO, lib.VFIO_IOMMU_UNMAP_DMA,
       struct("struct vfio_iommu_type1_dma_unmap", iova=IOVA, size=NPAGES * PAGE), argsz=SUCCESS),
    # -- the type1 container (vfio_fops_unl_ioctl, vfio_iommu_type1_ioctl)
    Op("VFIO_GET_API_VERSION", ("container",), lib.VFIO_GET_API_VERSION, arg=SUCCESS),
    Op("VFIO_CHECK_EXTENSION", ("container",), lib.VFIO_CHECK_EXTENSION, arg=SUCCESS),
    Op("VFIO_SET_IOMMU", ("container",), lib.VFIO_SET_IOMMU, arg=EINVAL),  # an IOMMU is set
    Op("VFIO_IOMMU_GET_INFO", ("container",), lib.VFIO_IOMMU_GET_INFO, struct("struct vfio_iommu_type1_info"),
       argsz=EFAULT),
    # vfio_pin_map_dma: pinning the pages fails
    Op("VFIO_IOMMU_MAP_DMA", ("container",), lib.VFIO_IOMMU_MAP_DMA,
       struct("struct vfio_iommu_type1_dma_map", "vaddr", flags=DMA_RW, vaddr=lambda e: e.memory(2),
              iova=IOVA + 0x400000, size=2 * PAGE),
       argsz=SUCCESS, field="vaddr", payload=zeros(2 * PAGE)),
    # update_user_bitmap: copy_to_user of the dirty bits (every mapped page is
    # dirty with a physical device); argsz: struct vfio_bitmap lies past the struct
    Op("VFIO_IOMMU_UNMAP_DMA", ("container",), lib.VFIO_IOMMU_UNMAP_DMA,
       struct("struct vfio_iommu_type1_dma_unmap", flags=lib.VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP,
              iova=IOVA, size=NPAGES * PAGE,
              tail=packed("struct vfio_bitmap", pgsize=PAGE, size=8, **{"data*": lambda e: e.buffer(8)})),
       argsz=EFAULT, field="bitmap.data", payload=zeros(8)),
    Op("VFIO_IOMMU_DIRTY_PAGES", ("container",), lib.VFIO_IOMMU_DIRTY_PAGES,
       struct("struct vfio_iommu_type1_dirty_bitmap", flags=lib.VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP,
              tail=packed("struct vfio_iommu_type1_dirty_bitmap_get", iova=IOVA, size=NPAGES * PAGE,
                          **{"bitmap.pgsize": PAGE, "bitmap.size": 8,
                             "bitmap.data*": lambda e: e.buffer(8)})),
       argsz=EFAULT, field="bitmap.data", payload=zeros(8)),
    # not served by type1 (sPAPR, EEH, ENABLE/DISABLE): ENOTTY, nothing read
    *(Op(name, ("container",), getattr(lib, name), arg=ENOTTY) for name in (
        "VFIO_IOMMU_ENABLE", "VFIO_IOMMU_DISABLE", "VFIO_IOMMU_SPAPR_UNREGISTER_MEMORY",
        "VFIO_IOMMU_SPAPR_TCE_CREATE", "VFIO_IOMMU_SPAPR_TCE_REMOVE", "VFIO_EEH_PE_OP")),
    # -- the group (vfio_group_fops_unl_ioctl)
    Op("VFIO_GROUP_GET_STATUS", ("group",), lib.VFIO_GROUP_GET_STATUS, struct("struct vfio_group_status"),
       argsz=SUCCESS),
    Op("VFIO_GROUP_SET_CONTAINER", ("group",), lib.VFIO_GROUP_SET_CONTAINER),  # get_user first
    Op("VFIO_GROUP_UNSET_CONTAINER", ("group",), lib.VFIO_GROUP_UNSET_CONTAINER, arg=EBUSY),  # no argument
    # strndup_user of the name: the argument is the string
    Op("VFIO_GROUP_GET_DEVICE_FD", ("group",), lib.VFIO_GROUP_GET_DEVICE_FD, lambda env, new, ptr: ptr,
       field="name", payload=lambda env: EDU.encode() + b"\0"),
    # -- the device (vfio_device_fops_unl_ioctl, vfio_pci_core_ioctl)
    Op("VFIO_DEVICE_GET_INFO", DEV, lib.VFIO_DEVICE_GET_INFO, struct("struct vfio_device_info"),
       argsz=SUCCESS),  # edu is no PCIe device: no capability to copy past the struct
    Op("VFIO_DEVICE_GET_REGION_INFO", DEV, lib.VFIO_DEVICE_GET_REGION_INFO,
       struct("struct vfio_region_info", index=0), argsz=SUCCESS),  # BAR0 has no capability
    Op("VFIO_DEVICE_GET_IRQ_INFO", DEV, lib.VFIO_DEVICE_GET_IRQ_INFO, struct("struct vfio_irq_info", index=0),
       argsz=SUCCESS),
    # vfio_pci_ioctl_set_irqs: memdup_user of the eventfds after the header
    Op("VFIO_DEVICE_SET_IRQS", DEV, lib.VFIO_DEVICE_SET_IRQS,
       struct("struct vfio_irq_set", index=lib.VFIO_PCI_INTX_IRQ_INDEX, start=0, count=1,
              flags=lib.VFIO_IRQ_SET_DATA_EVENTFD | lib.VFIO_IRQ_SET_ACTION_TRIGGER), argsz=EFAULT),
    Op("VFIO_DEVICE_RESET", DEV, lib.VFIO_DEVICE_RESET, arg=EINVAL),  # no argument; edu cannot reset
    Op("VFIO_DEVICE_FEATURE", DEV, lib.VFIO_DEVICE_FEATURE),
    # vfio_ioctl_device_feature_*: the payload follows the header
    Op("VFIO_DEVICE_FEATURE[MIGRATION]", DEV, lib.VFIO_DEVICE_FEATURE,
       feature(GET | lib.VFIO_DEVICE_FEATURE_MIGRATION), arg=None, argsz=EFAULT),
    Op("VFIO_DEVICE_FEATURE[MIG_DEVICE_STATE]", DEV, lib.VFIO_DEVICE_FEATURE,
       feature(GET | lib.VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE), arg=None, argsz=EFAULT),
    Op("VFIO_DEVICE_FEATURE[MIG_DATA_SIZE]", DEV, lib.VFIO_DEVICE_FEATURE,
       feature(GET | lib.VFIO_DEVICE_FEATURE_MIG_DATA_SIZE), arg=None, argsz=EFAULT),
    Op("VFIO_DEVICE_FEATURE[LOW_POWER_ENTRY_WITH_WAKEUP]", DEV, lib.VFIO_DEVICE_FEATURE,
       feature(SET | lib.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP), arg=None, argsz=EFAULT),
    # vfio_ioctl_device_feature_logging_start: one copy_from_user per range
    Op("VFIO_DEVICE_FEATURE[DMA_LOGGING_START]", DEV, lib.VFIO_DEVICE_FEATURE,
       feature(SET | lib.VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
               packed("struct vfio_device_feature_dma_logging_control", page_size=PAGE, num_ranges=1,
                      **{"ranges*": 0})),
       arg=None, argsz=EFAULT, field="ranges",
       payload=lambda env: IOVA.to_bytes(8, "little") + (NPAGES * PAGE).to_bytes(8, "little")),
    # vfio_ioctl_device_feature_logging_report: iova_bitmap_set drops what it
    # cannot pin (edu dirtied DIRTY_PAGE, past the first 4 bytes)
    Op("VFIO_DEVICE_FEATURE[DMA_LOGGING_REPORT]", DEV, lib.VFIO_DEVICE_FEATURE,
       feature(GET | lib.VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT,
               packed("struct vfio_device_feature_dma_logging_report", iova=IOVA, length=NPAGES * PAGE,
                      page_size=PAGE, **{"bitmap*": lambda e: e.buffer(8)})),
       arg=None, argsz=EFAULT, field="bitmap", payload=zeros(8), field_outcome=SUCCESS, prepare=log_start),
    Op("VFIO_DEVICE_IOEVENTFD", DEV, lib.VFIO_DEVICE_IOEVENTFD,
       struct("struct vfio_device_ioeventfd", flags=4, offset=0x80, data=1, fd=lambda e: e.b.eventfd()),
       argsz=SUCCESS),
    Op("VFIO_DEVICE_GET_GFX_DMABUF", DEV, lib.VFIO_DEVICE_GET_GFX_DMABUF, arg=ENOTTY),  # not vfio-pci's
    Op("VFIO_DEVICE_QUERY_GFX_PLANE", DEV, lib.VFIO_DEVICE_QUERY_GFX_PLANE, arg=ENOTTY),
    # vfio_pci_ioctl_get_pci_hot_reset_info: the devices go after the header
    Op("VFIO_DEVICE_GET_PCI_HOT_RESET_INFO", E1000_FDS, lib.VFIO_DEVICE_GET_PCI_HOT_RESET_INFO,
       struct("struct vfio_pci_hot_reset_info"), argsz=EFAULT),
    # vfio_pci_ioctl_pci_hot_reset_groups: copy_from_user of the group fds
    Op("VFIO_DEVICE_PCI_HOT_RESET", ("e1000/group",), lib.VFIO_DEVICE_PCI_HOT_RESET,
       struct("struct vfio_pci_hot_reset", count=1), argsz=EFAULT),
    Op("VFIO_DEVICE_PCI_HOT_RESET", ("e1000/cdev",), lib.VFIO_DEVICE_PCI_HOT_RESET,
       struct("struct vfio_pci_hot_reset", count=0), argsz=SUCCESS),  # no array for a cdev
    # vfio_df_ioctl_bind_iommufd: get_user(argsz), copy_struct_from_user, then
    # (not for a group-path file) vfio_df_check_token copies the UUID
    Op("VFIO_DEVICE_BIND_IOMMUFD", ("dev/group", "dev/cdev-unbound"), lib.VFIO_DEVICE_BIND_IOMMUFD,
       struct("struct vfio_device_bind_iommufd", "token_uuid_ptr", iommufd=lambda e: getattr(e, "ifd", 0),
              flags=lib.VFIO_DEVICE_BIND_FLAG_TOKEN,
           token_uuid_ptr=lambda e: e.buffer(16)),
       argsz=EFAULT, field="token_uuid_ptr", payload=zeros(16), field_fds=("dev/cdev-unbound",)),
    Op("VFIO_DEVICE_ATTACH_IOMMUFD_PT", ("dev/cdev",), lib.VFIO_DEVICE_ATTACH_IOMMUFD_PT,
       struct("struct vfio_device_attach_iommufd_pt", pt_id=lambda e: e.hwpt), argsz=SUCCESS),
    Op("VFIO_DEVICE_DETACH_IOMMUFD_PT", ("dev/cdev",), lib.VFIO_DEVICE_DETACH_IOMMUFD_PT,
       struct("struct vfio_device_detach_iommufd_pt"), argsz=SUCCESS),
    # -- the migration data fd (the variant driver's precopy ioctl)
    Op("VFIO_MIG_GET_PRECOPY_INFO", ("migration",), lib.VFIO_MIG_GET_PRECOPY_INFO,
       struct("struct vfio_precopy_info"), argsz=SUCCESS),
    # -- the fault queue fd: no unlocked_ioctl
    Op("(any ioctl)", ("fault",), lib.IOMMU_DESTROY, arg=ENOTTY),
]


# -- the curated pointer members of the uAPI structs ----------------------------------------------------
#: Members whose names suggest a pointer, found in every struct of the
#: bindings (test_pointer_members_are_curated): where each user pointer is
#: tested, or why the member is none.
POINTER_MEMBERS = {
    "iommu_hw_info.data_uptr": "IOMMU_GET_HW_INFO: the info is written there",
    "iommu_hwpt_alloc.data_uptr": "IOMMU_HWPT_ALLOC: driver data (VT-d refuses it unread)",
    "iommu_hwpt_get_dirty_bitmap.data": "IOMMU_HWPT_GET_DIRTY_BITMAP: the bitmap",
    "iommu_hwpt_invalidate.data_uptr": "IOMMU_HWPT_INVALIDATE: the entry array (no target to reach it)",
    "iommu_viommu_alloc.data_uptr": "IOMMU_VIOMMU_ALLOC: driver data (no vIOMMU on VT-d)",
    "iommu_ioas_allow_iovas.allowed_iovas": "IOMMU_IOAS_ALLOW_IOVAS: the ranges read",
    "iommu_ioas_iova_ranges.allowed_iovas": "IOMMU_IOAS_IOVA_RANGES: the ranges written",
    "iommu_ioas_map.user_va": "IOMMU_IOAS_MAP: the memory pinned",
    "vfio_iommu_type1_dma_map.vaddr": "VFIO_IOMMU_MAP_DMA (type1 and compat): the memory pinned",
    "vfio_bitmap.data": "VFIO_IOMMU_UNMAP_DMA and VFIO_IOMMU_DIRTY_PAGES: the dirty bitmap",
    "vfio_iommu_type1_dirty_bitmap_get.bitmap": "a struct vfio_bitmap: its data is tested",
    "vfio_device_bind_iommufd.token_uuid_ptr": "VFIO_DEVICE_BIND_IOMMUFD: the VF token",
    "vfio_device_feature_dma_logging_control.ranges": "DMA_LOGGING_START: the range array",
    "vfio_device_feature_dma_logging_report.bitmap": "DMA_LOGGING_REPORT: the bitmap",
    # inline data after a header: the argsz cases read or write past the struct
    "vfio_device_feature.data": "inline payload: the VFIO_DEVICE_FEATURE[...] argsz cases",
    "vfio_iommu_type1_dirty_bitmap.data": "inline: VFIO_IOMMU_DIRTY_PAGES argsz case",
    "vfio_iommu_type1_dma_unmap.data": "inline: VFIO_IOMMU_UNMAP_DMA argsz case",
    "vfio_irq_set.data": "inline: VFIO_DEVICE_SET_IRQS argsz case",
    "vfio_pci_hot_reset.group_fds": "inline: VFIO_DEVICE_PCI_HOT_RESET argsz case",
    "vfio_device_feature_dma_buf.dma_ranges": "inline, and no DMA-buf feature on vfio-pci (ENOTTY)",
    # not user pointers
    "iommu_hwpt_pgfault.addr": "an IOVA in a fault record the kernel writes",
    "iommu_hwpt_vtd_s1.pgtbl_addr": "guest physical address of a stage-1 table",
    "iommu_hwpt_vtd_s1_invalidate.addr": "an IOVA to invalidate",
    "vfio_device_ioeventfd.data": "the value the ioeventfd writes",
    "vfio_device_feature_zpci_err.data": "a zPCI error code (s390 only)",
    "vfio_eeh_pe_err.addr": "sPAPR EEH (not served: ENOTTY)",
    "vfio_iommu_spapr_register_memory.vaddr": "sPAPR (not served: ENOTTY)",
    "vfio_iommu_spapr_tce_create.start_addr": "sPAPR DMA window (not served)",
    "vfio_iommu_spapr_tce_remove.start_addr": "sPAPR DMA window (not served)",
}
_POINTERISH = re.compile(r"uptr|_ptr$|^data$|^allowed_iovas$|^(dma_)?ranges$|^bitmap$|vaddr|user_va"
                         r"|addr$|fds$")

#: ioctl numbers the bindings spell twice (sPAPR shares type1's numbers)
ALIASES = {"VFIO_IOMMU_SPAPR_TCE_GET_INFO": "VFIO_IOMMU_GET_INFO",
           "VFIO_IOMMU_SPAPR_REGISTER_MEMORY": "VFIO_IOMMU_DIRTY_PAGES"}


def test_pointer_members_are_curated() -> None:
    found = set()
    for name in ffi.list_types()[1]:
        for member, _f in ffi.typeof("struct " + name).fields or ():
            if _POINTERISH.search(member):
                found.add(f"{name}.{member}")
    assert found == set(POINTER_MEMBERS)


def _uapi_ioctls(prefix: str) -> dict[str, int]:
    return {n: getattr(lib, n) for n in dir(lib) if n.startswith(prefix)
            and isinstance(getattr(lib, n), int) and getattr(lib, n) >> 8 == ord(";")}


def test_every_ioctl_is_covered() -> None:
    served = {(op.name, fd) for op in OPS for fd in op.fds}
    for name in _uapi_ioctls("IOMMU_"):
        assert (name, "iommufd") in served, name
    names = {op.name for op in OPS}
    for name, number in _uapi_ioctls("VFIO_").items():
        assert name in names or getattr(lib, ALIASES[name]) == number, name


# -- running one case in a child ---------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    op: Op
    fd: str
    kind: str  # "arg", "field", "argsz" or "type"
    bad: str  # the pointer's or the argument's kind

    @property
    def id(self) -> str:
        what = {"arg": "arg", "field": self.op.field, "argsz": "argsz", "type": "type"}[self.kind]
        return f"{self.op.name}@{self.fd}-{what}" + ("" if self.kind == "argsz" else f"-{self.bad}")

    def expected(self) -> frozenset[int]:
        out = {"arg": self.op.arg, "field": self.op.field_outcome, "argsz": self.op.argsz}[self.kind]
        assert out is not None
        return out

    def call(self, env: Env) -> tuple[int, int, Any]:
        """Build the argument (in the child): (fd, request, argument)."""
        op, fd = self.op, env.fds[self.fd]
        if self.kind == "arg":
            return fd, op.request, bad_address(self.bad)
        if self.kind == "type":
            return fd, op.request, TYPE_KINDS[self.bad]
        assert op.build is not None
        if op.prepare is not None:
            op.prepare(env)
        if self.kind == "field":
            return fd, op.request, op.build(env, heap, bad_address(self.bad, op.payload(env)))
        obj = op.build(env, at_guard)
        size = ffi.typeof(obj).item.fields[0][0]  # argsz or size
        setattr(obj, size, getattr(obj, size) + 4096)
        return fd, op.request, obj


def _cases() -> Iterator[Case]:
    for op in OPS:
        for fd in op.fds:
            if op.arg is not None:
                yield from (Case(op, fd, "arg", kind) for kind in ARG_KINDS)
            if op.field is not None and fd in (op.field_fds or op.fds):
                yield from (Case(op, fd, "field", kind) for kind in FIELD_KINDS)
            if op.argsz is not None:
                yield Case(op, fd, "argsz", "")
            if op.arg is not None:
                yield from (Case(op, fd, "type", kind) for kind in TYPE_KINDS)


CASES = list(_cases())


def _child(case: Case) -> tuple[Any, ...]:
    try:
        env = Env(FD_CONTEXT[case.fd])
        fd, request, arg = case.call(env)
    except BaseException as e:
        return ("setup", type(e).__name__, str(e))
    try:
        return ("ok", env.b.ioctl(fd, request, arg))
    except OSError as e:
        return ("oserror", e.errno, str(e))
    except BaseException as e:
        return ("exception", type(e).__name__, str(e))


def in_child(work: Callable[[], tuple[Any, ...]], timeout: float) -> tuple[Any, ...]:
    """``work()``'s result, computed in a forked child and sent back through
    a pipe: a crash of the child is ``("signal", name)``, no answer within
    ``timeout`` seconds ``("hang",)``."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(r)
            faulthandler.disable()  # a crash is the parent's finding, without a core file
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            os.write(w, pickle.dumps(work()))
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([r], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return ("hang",)
            chunk = os.read(r, 65536)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(r)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return ("signal", signal.Signals(os.WTERMSIG(status)).name)
    return pickle.loads(data) if data else ("signal", f"exit status {status} without a result")


def run_forked(case: Case) -> tuple[Any, ...]:
    """The case's result from a forked child: ``("ok", ret)``,
    ``("oserror", errno, text)``, ``("exception", type, text)``,
    ``("setup", type, text)``, ``("signal", name)`` or ``("hang",)``."""
    return in_child(lambda: _child(case), TIMEOUT)


def _name(outcome: int) -> str:
    return "success" if outcome == OK else errno.errorcode.get(outcome, str(outcome))


@pytest.fixture(scope="module")
def warm() -> None:
    """Every context built once here: the children start with the imports
    and caches of the fake in place (a few ms each instead of ~0.3 s)."""
    for context in set(FD_CONTEXT.values()):
        Env(context).close()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_pointer(case: Case, warm: None) -> None:
    result = run_forked(case)
    where = f"{case.op.name} on {case.fd} ({case.id})"
    kind = result[0]
    if kind == "signal":
        pytest.fail(f"{where}: the process died of {result[1]}")
    if kind == "hang":
        pytest.fail(f"{where}: no answer within {TIMEOUT:.0f} s")
    if kind == "setup":
        pytest.fail(f"{where}: setting up failed: {result[1]}: {result[2]}")
    if case.kind == "type":
        if kind == "exception" and result[1] != "TypeError":
            pytest.fail(f"{where}: {result[1]}: {result[2]} (TypeError or OSError expected)")
        assert kind != "ok", f"{where}: the ioctl took a {case.bad} argument (TypeError expected)"
        return
    if kind == "exception":
        pytest.fail(f"{where}: {result[1]}: {result[2]} (not an OSError)")
    outcome = OK if kind == "ok" else int(result[1])
    expected = case.expected()
    assert outcome in expected, (f"{where}: {_name(outcome)} ({result[-1]}), expected "
                                 + " or ".join(_name(e) for e in sorted(expected)))
