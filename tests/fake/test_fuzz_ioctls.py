"""Random ioctls on every fd the fake kernel serves (hypothesis).

For each fd kind -- ``/dev/iommu``, the type1 container, a group, the
device through its group and through its cdev (bound and unbound), the
fault queue fd, the migration data fd -- hypothesis draws batches of
ioctls: a request number (every ``IOMMU_*``/``VFIO_*`` ioctl of the
bindings, numbers near them, random ones) with an argument that is either
a raw int or pointer, or a struct of the ioctl's type with random
``argsz``/``size``, flags, ids (valid ones of the state, random ones),
pointers (valid buffers and memory, NULL, an unmapped page, a PROT_NONE
page, a kernel address), lengths and IOVAs (aligned, unaligned,
overflowing), and inline data after it.

Each batch runs in a forked child on a fresh machine in the state of
:class:`test_bad_pointers.Env`; the child reports through a pipe, the
parent kills it after a timeout.  A batch fails on:

* an OSError whose errno is not in :data:`ERRNOS` (errnos these ioctls
  return in the kernel);
* any other exception, a signal, a hang;
* a failed call that changed the fake's state: :func:`fake_state.digest`
  before and after must be equal (the kernel undoes a failed call).

Budget: profile ``ci`` (env ``CI`` set: derandomized, few examples) or
``dev``; ``PYVFIO_FUZZ_EXAMPLES`` sets the number of batches per fd kind.
"""

from __future__ import annotations

import ctypes
import errno
import os
import traceback
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fake_state import diff, digest
from pyvfio._uapi import ffi, lib
from test_bad_pointers import (EDU, E1000, E1000_PEER, FD_CONTEXT, IOVA, KERNEL_ADDR, NPAGES, PAGE, Env,
                               _libc, guard_page, in_child)

#: errnos the kernel returns from these ioctls (a call failing with another one is a finding)
ERRNOS = frozenset({
    errno.EPERM, errno.ENOENT, errno.ESRCH, errno.EIO, errno.ENXIO, errno.E2BIG, errno.EBADF,
    errno.EAGAIN, errno.ENOMEM, errno.EACCES, errno.EFAULT, errno.EBUSY, errno.EEXIST, errno.ENODEV,
    errno.EINVAL, errno.ENOSPC, errno.ERANGE, errno.ENOTTY, errno.EOVERFLOW, errno.EOPNOTSUPP,
    errno.EMSGSIZE,  # IOMMU_IOAS_IOVA_RANGES: num_iovas too small
    errno.EADDRINUSE,  # iopt_reserve_iova / iopt_alloc_iova: the IOVA range is taken
    errno.EBADFD,  # VFIO_GROUP_SET_CONTAINER, VFIO_DEVICE_BIND_IOMMUFD: fd of the wrong kind
    errno.ENOMSG,  # VFIO_MIG_GET_PRECOPY_INFO: no pre-copy data
})

#: (request name, fd kind) whose failure may change the fake's state, and why
STATE_ON_ERROR: dict[tuple[str, str], str] = {}

BATCH = 16  # calls per forked child, at most
TIMEOUT = 30.0

settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True, print_blob=True,
                          suppress_health_check=list(HealthCheck))
settings.register_profile("dev", max_examples=40, deadline=None, print_blob=True,
                          suppress_health_check=list(HealthCheck))
settings.load_profile("ci" if os.environ.get("CI") else "dev")
LOG = os.environ.get("PYVFIO_FUZZ_LOG")  # a file each call's outcome is appended to
EXAMPLES = int(os.environ.get("PYVFIO_FUZZ_EXAMPLES", "0")) or settings().max_examples


# -- the ioctls and their structs ---------------------------------------------------------------------
IOCTLS: dict[str, int] = {n: getattr(lib, n) for n in dir(lib)
                          if n.startswith(("IOMMU_", "VFIO_")) and isinstance(getattr(lib, n), int)
                          and getattr(lib, n) >> 8 == ord(";")}

#: the argument of each ioctl: a struct, "int" (by value), "int*", "str" or None (unused)
ARGS: dict[str, str | None] = {
    "IOMMU_DESTROY": "iommu_destroy", "IOMMU_FAULT_QUEUE_ALLOC": "iommu_fault_alloc",
    "IOMMU_GET_HW_INFO": "iommu_hw_info", "IOMMU_HWPT_ALLOC": "iommu_hwpt_alloc",
    "IOMMU_HWPT_GET_DIRTY_BITMAP": "iommu_hwpt_get_dirty_bitmap",
    "IOMMU_HWPT_INVALIDATE": "iommu_hwpt_invalidate",
    "IOMMU_HWPT_SET_DIRTY_TRACKING": "iommu_hwpt_set_dirty_tracking",
    "IOMMU_HW_QUEUE_ALLOC": "iommu_hw_queue_alloc", "IOMMU_IOAS_ALLOC": "iommu_ioas_alloc",
    "IOMMU_IOAS_ALLOW_IOVAS": "iommu_ioas_allow_iovas",
    "IOMMU_IOAS_CHANGE_PROCESS": "iommu_ioas_change_process", "IOMMU_IOAS_COPY": "iommu_ioas_copy",
    "IOMMU_IOAS_IOVA_RANGES": "iommu_ioas_iova_ranges", "IOMMU_IOAS_MAP": "iommu_ioas_map",
    "IOMMU_IOAS_MAP_FILE": "iommu_ioas_map_file", "IOMMU_IOAS_NOIOMMU_GET_PA": "iommu_ioas_noiommu_get_pa",
    "IOMMU_IOAS_UNMAP": "iommu_ioas_unmap", "IOMMU_OPTION": "iommu_option",
    "IOMMU_VDEVICE_ALLOC": "iommu_vdevice_alloc", "IOMMU_VEVENTQ_ALLOC": "iommu_veventq_alloc",
    "IOMMU_VFIO_IOAS": "iommu_vfio_ioas", "IOMMU_VIOMMU_ALLOC": "iommu_viommu_alloc",
    "VFIO_GET_API_VERSION": None, "VFIO_CHECK_EXTENSION": "int", "VFIO_SET_IOMMU": "int",
    "VFIO_GROUP_GET_STATUS": "vfio_group_status", "VFIO_GROUP_SET_CONTAINER": "int*",
    "VFIO_GROUP_UNSET_CONTAINER": None, "VFIO_GROUP_GET_DEVICE_FD": "str",
    "VFIO_DEVICE_GET_INFO": "vfio_device_info", "VFIO_DEVICE_GET_REGION_INFO": "vfio_region_info",
    "VFIO_DEVICE_GET_IRQ_INFO": "vfio_irq_info", "VFIO_DEVICE_SET_IRQS": "vfio_irq_set",
    "VFIO_DEVICE_RESET": None, "VFIO_DEVICE_GET_PCI_HOT_RESET_INFO": "vfio_pci_hot_reset_info",
    "VFIO_DEVICE_PCI_HOT_RESET": "vfio_pci_hot_reset", "VFIO_DEVICE_QUERY_GFX_PLANE": "vfio_device_gfx_plane_info",
    "VFIO_DEVICE_GET_GFX_DMABUF": "int", "VFIO_DEVICE_IOEVENTFD": "vfio_device_ioeventfd",
    "VFIO_DEVICE_FEATURE": "vfio_device_feature", "VFIO_DEVICE_BIND_IOMMUFD": "vfio_device_bind_iommufd",
    "VFIO_DEVICE_ATTACH_IOMMUFD_PT": "vfio_device_attach_iommufd_pt",
    "VFIO_DEVICE_DETACH_IOMMUFD_PT": "vfio_device_detach_iommufd_pt",
    "VFIO_IOMMU_GET_INFO": "vfio_iommu_type1_info", "VFIO_IOMMU_MAP_DMA": "vfio_iommu_type1_dma_map",
    "VFIO_IOMMU_UNMAP_DMA": "vfio_iommu_type1_dma_unmap", "VFIO_IOMMU_ENABLE": None,
    "VFIO_IOMMU_DISABLE": None, "VFIO_IOMMU_DIRTY_PAGES": "vfio_iommu_type1_dirty_bitmap",
    "VFIO_IOMMU_SPAPR_TCE_GET_INFO": "vfio_iommu_spapr_tce_info",
    "VFIO_IOMMU_SPAPR_REGISTER_MEMORY": "vfio_iommu_spapr_register_memory",
    "VFIO_IOMMU_SPAPR_UNREGISTER_MEMORY": "vfio_iommu_spapr_register_memory",
    "VFIO_IOMMU_SPAPR_TCE_CREATE": "vfio_iommu_spapr_tce_create",
    "VFIO_IOMMU_SPAPR_TCE_REMOVE": "vfio_iommu_spapr_tce_remove", "VFIO_EEH_PE_OP": "vfio_eeh_pe_op",
    "VFIO_MIG_GET_PRECOPY_INFO": "vfio_precopy_info",
}

#: request number -> the argument kinds of the ioctls with that number (VFIO numbers repeat per fd kind)
BY_NUMBER: dict[int, list[str | None]] = {}
for _name, _number in sorted(IOCTLS.items()):
    BY_NUMBER.setdefault(_number, []).append(ARGS[_name])

#: inline data after a struct: the structs it may hold
TAILS: dict[str, list[str]] = {
    "vfio_device_feature": ["vfio_device_feature_migration", "vfio_device_feature_mig_state",
                            "vfio_device_feature_mig_data_size", "vfio_device_feature_dma_logging_control",
                            "vfio_device_feature_dma_logging_report", "vfio_device_feature_bus_master",
                            "vfio_device_low_power_entry_with_wakeup", "vfio_device_feature_dma_buf",
                            "vfio_device_feature_zpci_err"],
    "vfio_iommu_type1_dirty_bitmap": ["vfio_iommu_type1_dirty_bitmap_get"],
    "vfio_iommu_type1_dma_unmap": ["vfio_bitmap"],
}
FD_ARRAYS = {"vfio_irq_set", "vfio_pci_hot_reset"}  # inline int32 fds (or bools for irq_set)
ALL_STRUCTS = sorted(n for n in ffi.list_types()[1])

POINTERS = {"data_uptr", "user_va", "vaddr", "allowed_iovas", "ranges", "bitmap", "token_uuid_ptr"}
FDS = {"fd", "iommufd", "event_fd", "eventfd"}

U64 = 2**64 - 1
SIZES = [0, 1, 3, 4, 7, 8, 12, 16, 24, PAGE - 1, PAGE, PAGE + 1, 2 * PAGE, NPAGES * PAGE, 2**20, 2**32,
         2**32 - 1, 2**63, U64, U64 - PAGE + 1, U64 - PAGE + 2, 2**48, 2**47]
IOVAS = [0, IOVA, IOVA + PAGE, IOVA + 1, IOVA - PAGE, IOVA + (NPAGES - 1) * PAGE, IOVA + NPAGES * PAGE,
         IOVA + 0x400000, 0xFEE00000, 2**32, 2**48 - PAGE, 2**57, U64 - PAGE + 1, U64, 2**63]


# -- strategies: plain data, resolved in the child -----------------------------------------------------
def _ints(bits: int) -> st.SearchStrategy[Any]:
    top = 2**bits - 1
    return st.one_of(st.sampled_from([0, 1, 2, 3, 4, 8, 16, top, top >> 1, (top >> 1) + 1]),
                     st.integers(0, 32), st.integers(0, top))


def _pointer(size: int = 64) -> st.SearchStrategy[Any]:
    """A user pointer: ("buf", bytes), ("mem", pages, offset) or ("addr", kind)."""
    return st.one_of(
        st.tuples(st.just("buf"), st.binary(min_size=0, max_size=max(size, 8))),
        st.tuples(st.just("ranges"), st.lists(st.tuples(st.sampled_from(IOVAS), st.sampled_from(SIZES)),
                                               max_size=4)),
        st.tuples(st.just("mem"), st.integers(1, 8), st.sampled_from([0, 0, 1, 8, PAGE - 8])),
        st.tuples(st.just("addr"), st.sampled_from(["null", "unmapped", "prot_none", "kernel", "mapped"])),
    )


def _flags(ctype: str) -> st.SearchStrategy[Any]:
    """Mostly a few of the low bits (where every uAPI flag lives), sometimes anything."""
    few = st.lists(st.integers(0, 6), max_size=3).map(lambda bits: sum({1 << b for b in bits}))
    if ctype == "vfio_device_feature":  # the feature index and GET/SET/PROBE
        few = st.tuples(st.integers(0, 14), st.lists(st.sampled_from([1 << 16, 1 << 17, 1 << 18]), max_size=2)
                        ).map(lambda t: t[0] | sum(set(t[1])))
    return st.one_of(few, few, few, st.integers(0, 2**32 - 1))


def _small(bits: int) -> st.SearchStrategy[Any]:
    return st.one_of(st.integers(0, 4), st.integers(0, 4), _ints(bits))


def _value(ctype: str, name: str, kind: str, bits: int) -> st.SearchStrategy[Any]:
    """A field's value: an int or ("id", k) / ("fd", k) / a pointer spec;
    mostly one the ioctl can take, so that calls reach deep."""
    if name in POINTERS or (name == "data" and kind != "array"):
        return st.one_of(_pointer(), _pointer(), _pointer(), _ints(bits))
    if name in FDS or name.endswith("_fd"):
        fd = st.tuples(st.just("fd"), st.integers(0, 20))
        return st.one_of(fd, fd, fd, st.sampled_from([-1, 0, 1, 2, 9999]), _ints(bits))
    if name == "id" or name.endswith("_id") or name == "pt_id":
        oid = st.tuples(st.just("id"), st.integers(0, 20))
        return st.one_of(oid, oid, oid, _ints(bits))
    if name == "flags":
        return _flags(ctype)
    if "reserved" in name or name.startswith("__"):
        return st.one_of(st.just(0), st.just(0), st.just(0), _ints(bits))
    if "iova" in name or name in ("start", "offset", "addr"):
        return st.one_of(st.sampled_from(IOVAS), st.sampled_from(IOVAS), _ints(bits))
    if name in ("length", "size", "pgsize", "page_size", "data_len", "entry_len", "num_iovas",
                "entry_num"):
        pages = st.integers(1, 8).map(lambda n: n * PAGE)
        return st.one_of(pages, pages, st.sampled_from(SIZES), _ints(bits))
    return _small(bits)


def _env(name: str) -> tuple[str, str]:
    return ("env", name)  # an attribute of the Env (0 where the context has none)


FIXED = lib.IOMMU_IOAS_MAP_READABLE | lib.IOMMU_IOAS_MAP_WRITEABLE | lib.IOMMU_IOAS_MAP_FIXED_IOVA
RW = lib.VFIO_DMA_MAP_FLAG_READ | lib.VFIO_DMA_MAP_FLAG_WRITE
BUF8, BUF64 = ("buf", bytes(8)), ("buf", bytes(64))
EVENTFD = ("env", "evfd")
S = st.sampled_from

#: a valid command of each struct in the contexts (values or strategies), mutated by the cases
TEMPLATES: dict[str, dict[str, Any]] = {
    "iommu_destroy": {"id": st.tuples(st.just("id"), st.integers(0, 20))},
    "iommu_ioas_allow_iovas": {"ioas_id": _env("ioas"), "num_iovas": S([0, 1, 2]),
                               "allowed_iovas": ("ranges", [(IOVA, 2**30), (2**32, 2**20)])},
    "iommu_ioas_copy": {"dst_ioas_id": _env("ioas"), "src_ioas_id": _env("ioas"), "flags": FIXED,
                        "length": S([PAGE, NPAGES * PAGE]), "src_iova": IOVA, "dst_iova": IOVA + 0x400000},
    "iommu_ioas_iova_ranges": {"ioas_id": _env("ioas"), "num_iovas": S([0, 1, 4]), "allowed_iovas": BUF64},
    "iommu_ioas_map": {"flags": S([FIXED, FIXED & ~lib.IOMMU_IOAS_MAP_FIXED_IOVA]), "ioas_id": _env("ioas"),
                       "user_va": ("mem", 2, 0), "length": 2 * PAGE, "iova": S([IOVA + 0x400000, IOVA])},
    "iommu_ioas_map_file": {"flags": FIXED, "ioas_id": _env("ioas"), "fd": _env("memfd"), "start": 0,
                            "length": PAGE, "iova": IOVA + 0x400000},
    "iommu_ioas_unmap": {"ioas_id": _env("ioas"), "iova": S([0, IOVA]), "length": S([NPAGES * PAGE, PAGE, U64])},
    "iommu_option": {"option_id": S([0, 1]), "op": S([0, 1]), "object_id": S([0, _env("ioas")]),
                     "val64": S([0, 1])},
    "iommu_vfio_ioas": {"ioas_id": _env("ioas"), "op": S([0, 1, 2])},
    "iommu_hwpt_alloc": {"dev_id": _env("dev_id"), "pt_id": _env("ioas"), "flags": S([0, 1, 2, 4]),
                         "fault_id": ("id", 3)},
    "iommu_hw_info": {"dev_id": _env("dev_id"), "data_len": 32, "data_uptr": BUF64},
    "iommu_hwpt_set_dirty_tracking": {"hwpt_id": _env("hwpt"), "flags": S([0, 1])},
    "iommu_hwpt_get_dirty_bitmap": {"hwpt_id": _env("hwpt"), "iova": IOVA, "length": NPAGES * PAGE,
                                    "page_size": PAGE, "data": BUF8, "flags": S([0, 1])},
    "iommu_hwpt_invalidate": {"hwpt_id": _env("hwpt"), "data_type": 0, "entry_num": 1,
                              "entry_len": ffi.sizeof("struct iommu_hwpt_vtd_s1_invalidate"), "data_uptr": BUF64},
    "iommu_viommu_alloc": {"type": S([0, 1, 2]), "dev_id": _env("dev_id"), "hwpt_id": _env("hwpt")},
    "iommu_vdevice_alloc": {"viommu_id": ("id", 5), "dev_id": _env("dev_id")},
    "vfio_iommu_type1_dma_map": {"flags": RW, "vaddr": ("mem", 2, 0), "iova": S([IOVA + 0x400000, IOVA]),
                                 "size": 2 * PAGE},
    "vfio_iommu_type1_dma_unmap": {"iova": S([IOVA, 0]), "size": S([NPAGES * PAGE, PAGE, 0]),
                                   "flags": S([0, 1, 2, 4])},
    "vfio_iommu_type1_dirty_bitmap": {"flags": S([1, 2, 4])},
    "vfio_iommu_type1_dirty_bitmap_get": {"iova": IOVA, "size": NPAGES * PAGE,
                                          "bitmap": ("struct", "vfio_bitmap", None,
                                                     {"pgsize": PAGE, "size": 8, "data": BUF8}, None, "heap")},
    "vfio_bitmap": {"pgsize": PAGE, "size": 8, "data": BUF8},
    "vfio_region_info": {"index": S(range(10))},
    "vfio_irq_info": {"index": S(range(6))},
    "vfio_irq_set": {"flags": S([0x24, 0x21, 0x22, 0x09, 0x11, 0x0A, 0x12, 0x44]), "index": S(range(5)),
                     "start": S([0, 1]), "count": S([0, 1, 2])},
    "vfio_device_ioeventfd": {"flags": S([1, 2, 4, 8]), "offset": S([0x80, 0x0, 0x7F]), "data": 1,
                              "fd": S([EVENTFD, -1])},
    "vfio_pci_hot_reset": {"count": S([0, 1])},
    "vfio_device_feature": {"flags": st.tuples(S(range(12)), S([1 << 16, 1 << 17, 1 << 18, 3 << 16])
                                               ).map(lambda t: t[0] | t[1])},
    "vfio_device_feature_mig_state": {"device_state": S(range(10))},
    "vfio_device_feature_bus_master": {"op": S([0, 1, 2])},
    "vfio_device_feature_dma_logging_control": {"page_size": PAGE, "num_ranges": 1,
                                                "ranges": ("ranges", [(IOVA, NPAGES * PAGE)])},
    "vfio_device_feature_dma_logging_report": {"iova": IOVA, "length": NPAGES * PAGE, "page_size": PAGE,
                                               "bitmap": BUF8},
    "vfio_device_low_power_entry_with_wakeup": {"wakeup_eventfd": EVENTFD},
    "vfio_device_bind_iommufd": {"iommufd": _env("ifd"), "flags": 0},
    "vfio_device_attach_iommufd_pt": {"pt_id": S([_env("hwpt"), _env("ioas")]), "flags": 0},
}


def _draw_value(draw: Any, v: Any) -> Any:
    return draw(v) if isinstance(v, st.SearchStrategy) else v


@st.composite
def _struct(draw: Any, ctype: str, outer: bool = True) -> tuple[Any, ...]:
    """("struct", ctype, argsz spec, fields, tail, placement): the template
    with a few fields changed, or random fields."""
    fields: dict[str, Any] = {}
    t = ffi.typeof("struct " + ctype)
    first = t.fields[0][0]
    members = [(name, f) for name, f in t.fields if not (outer and name == first)
               and f.type.kind in ("struct", "primitive", "pointer")]
    template = TEMPLATES.get(ctype, {})
    if draw(st.integers(0, 3)):  # a template with up to two fields changed
        fields = {k: _draw_value(draw, v) for k, v in template.items()}
        mutate = draw(st.lists(st.integers(0, 99), max_size=2)) if members else []
        names = {members[i % len(members)][0] for i in mutate}
    else:
        names = {name for name, _ in members if draw(st.integers(0, 9)) < 8}
    for name, f in members:
        if name not in names:
            continue
        if f.type.kind == "struct":
            fields[name] = draw(_struct(f.type.cname.split()[-1], outer=False))
        elif f.type.kind == "primitive":
            fields[name] = draw(_value(ctype, name, f.type.kind, ffi.sizeof(f.type) * 8))
        else:
            fields[name] = draw(_pointer())
    if not outer:
        return ("struct", ctype, None, fields, None, "heap")
    tail: Any = None
    if ctype in TAILS and draw(st.integers(0, 4)):
        tails = TAILS[ctype]
        if ctype == "vfio_device_feature" and "flags" in fields and isinstance(fields["flags"], int):
            index = fields["flags"] & 0xFFFF  # the payload of that feature, mostly
            matching = [c for c in tails if FEATURES.get(c) == index]
            tails = matching * 3 + tails if matching else tails
        tail = draw(st.sampled_from(tails).flatmap(lambda c: _struct(c, outer=False)))
    elif ctype in FD_ARRAYS and draw(st.integers(0, 3)):
        fd = st.one_of(st.just(EVENTFD), st.just(_env("gfd")), st.tuples(st.just("fd"), st.integers(0, 20)),
                       st.sampled_from([-1, 0, 1, 2]))
        count = fields.get("count")
        if isinstance(count, int) and count <= 8 and draw(st.integers(0, 3)):  # as many as the count says
            if ctype == "vfio_irq_set" and isinstance(fields.get("flags"), int) and fields["flags"] & 2:
                tail = ("bytes", draw(st.binary(min_size=count, max_size=count)))  # DATA_BOOL
            else:
                tail = ("fds", draw(st.lists(fd, min_size=count, max_size=count)))
        else:
            tail = ("fds", draw(st.lists(fd, max_size=4)))
    elif draw(st.integers(0, 5)) == 0:
        tail = ("bytes", draw(st.binary(max_size=48)))
    exact = st.just("exact")
    argsz = draw(st.one_of(exact, exact, exact, exact, exact, exact, st.just("struct"),
                           st.sampled_from([0, 1, 4, 7, 8, 12, 16, 4096, 2**31, 2**32 - 1]),
                           st.integers(0, 256)))
    placement = draw(st.sampled_from(["heap", "heap", "heap", "guard"]))
    return ("struct", ctype, argsz, fields, tail, placement)


#: the payload struct of each device feature index
FEATURES = {"vfio_device_feature_migration": 1, "vfio_device_feature_mig_state": 2,
            "vfio_device_low_power_entry_with_wakeup": 4, "vfio_device_feature_dma_logging_control": 6,
            "vfio_device_feature_dma_logging_report": 8, "vfio_device_feature_mig_data_size": 9,
            "vfio_device_feature_bus_master": 10, "vfio_device_feature_dma_buf": 11}


def _arg(kinds: list[str | None]) -> st.SearchStrategy[Any]:
    options: list[st.SearchStrategy[Any]] = [
        st.tuples(st.just("int"), st.one_of(_ints(64), st.integers(0, 16),
                                            st.sampled_from([lib.VFIO_TYPE1v2_IOMMU, lib.VFIO_TYPE1_IOMMU,
                                                             lib.VFIO_NOIOMMU_IOMMU])),),
        st.tuples(st.just("ptr"), _pointer()),
        st.tuples(st.just("fdptr"), st.tuples(st.just("fd"), st.integers(0, 20))),
        st.tuples(st.just("str"), st.one_of(st.sampled_from([EDU, E1000, E1000_PEER, "0000:00:02.1", ""]),
                                            st.text(max_size=20))),
        st.sampled_from(ALL_STRUCTS).flatmap(_struct),
    ]
    structs = [k for k in kinds if k not in (None, "int", "int*", "str")]
    if structs:
        options = [st.sampled_from(structs).flatmap(_struct)] * 12 + options
    return st.one_of(*options)


#: the requests each fd kind serves (drawn most often)
SERVED = {
    "iommufd": [n for n in IOCTLS if n.startswith("IOMMU_")] + [
        "VFIO_GET_API_VERSION", "VFIO_CHECK_EXTENSION", "VFIO_SET_IOMMU", "VFIO_IOMMU_GET_INFO",
        "VFIO_IOMMU_MAP_DMA", "VFIO_IOMMU_UNMAP_DMA", "VFIO_IOMMU_DIRTY_PAGES"],
    "container": ["VFIO_GET_API_VERSION", "VFIO_CHECK_EXTENSION", "VFIO_SET_IOMMU", "VFIO_IOMMU_GET_INFO",
                  "VFIO_IOMMU_MAP_DMA", "VFIO_IOMMU_UNMAP_DMA", "VFIO_IOMMU_DIRTY_PAGES",
                  "VFIO_IOMMU_ENABLE", "VFIO_IOMMU_DISABLE"],
    "group": [n for n in IOCTLS if n.startswith("VFIO_GROUP_")],
    "device": [n for n in IOCTLS if n.startswith("VFIO_DEVICE_")],
    "migration": ["VFIO_MIG_GET_PRECOPY_INFO"],
    "fault": sorted(IOCTLS),
}


def _request(names: list[str]) -> st.SearchStrategy[tuple[int, Any]]:
    return st.sampled_from(sorted(names)).flatmap(
        lambda n: st.tuples(st.just(IOCTLS[n]), _arg([ARGS[n]])))


def _call(fd: str) -> st.SearchStrategy[tuple[int, Any]]:
    served = SERVED["device" if fd.startswith(("dev/", "e1000/")) else fd]
    known = st.sampled_from(sorted(BY_NUMBER)).flatmap(lambda n: st.tuples(st.just(n), _arg(BY_NUMBER[n])))
    other = st.tuples(st.one_of(st.integers(0x3B00, 0x3BFF), st.integers(0, 2**32 - 1),
                                st.sampled_from(sorted(BY_NUMBER)).map(lambda n: n | (1 << 30) | (8 << 16))),
                      _arg([]))
    return st.one_of(*[_request(served)] * 8, known, other)


# -- the child: resolve and run a batch ---------------------------------------------------------------
def guarded(size: int) -> int:
    """``size`` zeroed bytes of fresh memory right before a PROT_NONE page:
    the kernel may read or write a user buffer as far as the command says,
    and past the buffer it must meet a fault (EFAULT), never the heap."""
    pages = (size + PAGE - 1) // PAGE or 1
    base = _libc.mmap(None, (pages + 1) * PAGE, 3, 0x22, -1, 0)  # PROT_READ|WRITE, MAP_PRIVATE|ANONYMOUS
    assert base and base != ctypes.c_void_p(-1).value, "mmap failed"
    assert _libc.mprotect(base + pages * PAGE, PAGE, 0) == 0, "mprotect failed"
    return int(base) + pages * PAGE - size


class Runner:
    """One machine in the state of ``fd``'s context; runs calls and checks them."""

    def __init__(self, fd: str) -> None:
        self.env = Env(FD_CONTEXT[fd])
        self.fd = self.env.fds[fd]
        self.name = fd
        self.evfd = self.env.b.eventfd()

    def ids(self) -> list[int]:
        out: set[int] = {0, 1, 2, 3}
        for f in self.env.b.open_files:
            out.update(getattr(f, "objects", {}))
        return sorted(out)

    def fds(self) -> list[int]:
        return sorted(self.env.b._files) + [self.evfd, -1]

    def pointer(self, spec: Any) -> int:
        kind = spec[0]
        if kind == "buf":
            buf = guarded(max(len(spec[1]), 8))
            ffi.memmove(ffi.cast("char *", buf), spec[1], len(spec[1]))
            return buf
        if kind == "ranges":
            data = b"".join(a.to_bytes(8, "little") + ((a + s - 1) & U64).to_bytes(8, "little")
                            for a, s in spec[1])
            return self.pointer(("buf", data))
        if kind == "mem":  # pinnable memory (a whole number of pages)
            return guarded(spec[1] * PAGE) + spec[2]
        if spec[1] == "mapped":
            return guarded(PAGE)
        if spec[1] == "prot_none":
            return guard_page()
        return {"null": 0, "unmapped": 0x1000, "kernel": KERNEL_ADDR}[spec[1]]

    def value(self, spec: Any) -> int:
        if isinstance(spec, int):
            return spec
        if spec[0] == "env":
            return int(getattr(self, spec[1], None) or getattr(self.env, spec[1], 0) or 0)
        if spec[0] == "struct":
            raise AssertionError(spec)
        if spec[0] == "id":
            ids = self.ids()
            return ids[spec[1] % len(ids)]
        if spec[0] == "fd":
            fds = self.fds()
            return fds[spec[1] % len(fds)]
        return self.pointer(spec)

    def fill(self, obj: Any, fields: dict[str, Any]) -> None:
        members = dict(ffi.typeof(obj).item.fields)
        for name, spec in fields.items():
            if isinstance(spec, tuple) and spec[0] == "struct":
                self.fill(ffi.addressof(obj[0], name), spec[3])
                continue
            v, ctype = self.value(spec), members[name].type
            if ctype.kind == "pointer":
                setattr(obj, name, ffi.cast("void *", v & U64))
                continue
            bits = ffi.sizeof(ctype) * 8
            v &= (1 << bits) - 1
            if ffi.cast(ctype, -1) < 0 and v >> (bits - 1):  # a signed member
                v -= 1 << bits
            setattr(obj, name, v)

    def struct_bytes(self, spec: Any) -> bytes:
        obj = ffi.new(f"struct {spec[1]} *")
        self.fill(obj, spec[3])
        return bytes(ffi.buffer(obj))

    def argument(self, spec: Any) -> Any:
        kind = spec[0]
        if kind == "int":
            return spec[1]
        if kind == "ptr":
            return self.pointer(spec[1])
        if kind == "fdptr":
            return self.pointer(("buf", (self.value(spec[1]) & 0xFFFFFFFF).to_bytes(4, "little")))
        if kind == "str":
            return self.pointer(("buf", spec[1].encode() + b"\0"))
        _, ctype, argsz, fields, tail, placement = spec
        size = ffi.sizeof(f"struct {ctype}")
        data = b""
        if tail is not None:
            if tail[0] == "struct":
                data = self.struct_bytes(tail)
            elif tail[0] == "fds":
                data = b"".join((self.value(v) & 0xFFFFFFFF).to_bytes(4, "little") for v in tail[1])
            else:
                data = tail[1]
        total = size + len(data)
        # "guard": the struct ends at a PROT_NONE page; "heap": zeroed room up to argsz (up to 64 KiB) after it
        room = total if placement == "guard" or not isinstance(argsz, int) or argsz > 16 * PAGE else argsz
        base = guarded(max(total, room))
        obj = ffi.cast(f"struct {ctype} *", base)
        self.fill(obj, fields)
        ffi.memmove(ffi.cast("char *", base) + size, data, len(data))
        first = ffi.typeof(f"struct {ctype}").fields[0][0]
        if first in ("argsz", "size"):
            setattr(obj, first, total if argsz == "exact" else size if argsz == "struct" else argsz)
        return base

    def run(self, calls: list[tuple[int, Any]]) -> list[str]:
        findings: list[str] = []
        b, system = self.env.b, self.env.system
        before = None
        for i, (request, spec) in enumerate(calls):
            where = f"call {i}: {request:#x} on {self.name} with {spec!r}"
            arg = self.argument(spec)
            before = before or digest(system)  # a failed call left it as it was
            failed = 0
            try:
                b.ioctl(self.fd, request, arg)
                before = None
            except OSError as e:
                failed = e.errno or -1
                if e.errno not in ERRNOS:
                    findings.append(f"{where}: errno {errno.errorcode.get(e.errno or 0, e.errno)} ({e})")
                after = digest(system)
                changed = diff(before, after)
                before = after
                names = [n for n, v in IOCTLS.items() if v == request]
                if changed and not any((n, self.name) in STATE_ON_ERROR for n in names):
                    findings.append(f"{where}: failed with {errno.errorcode.get(e.errno or 0)} "
                                    f"but changed the state:\n    " + "\n    ".join(changed))
            except Exception as e:  # noqa: BLE001 - every other exception is a finding
                failed = -1
                findings.append(f"{where}: {type(e).__name__}: {e}\n{traceback.format_exc()}")
            if LOG:
                with open(LOG, "a") as log:
                    outcome = "ok" if not failed else errno.errorcode.get(failed, str(failed))
                    log.write(f"{self.name} {request:#x} {outcome}\n")
            if findings:
                break
        return findings


def run_batch(fd: str, calls: list[tuple[int, Any]]) -> tuple[Any, ...]:
    """The batch's result from a forked child: ("ok", findings),
    ("setup", text), ("signal", name) or ("hang",)."""

    def work() -> tuple[str, Any]:
        try:
            runner = Runner(fd)
        except BaseException as e:
            return ("setup", f"{type(e).__name__}: {e}")
        try:
            return ("ok", runner.run(calls))
        except BaseException:
            return ("setup", traceback.format_exc())

    return in_child(work, TIMEOUT)


FD_KINDS = ["iommufd", "container", "group", "dev/group", "dev/cdev", "dev/cdev-unbound", "fault",
            "migration", "e1000/group", "e1000/cdev"]


@pytest.fixture(scope="module")
def warm() -> None:
    """Every context built once: the children start with the fake's imports in place."""
    for context in set(FD_CONTEXT.values()):
        Env(context).close()


@pytest.mark.parametrize("fd", FD_KINDS)
def test_fuzz_ioctls(fd: str, warm: None) -> None:
    @settings(max_examples=EXAMPLES)
    @given(st.lists(_call(fd), min_size=1, max_size=BATCH))
    def batch(calls: list[tuple[int, Any]]) -> None:
        kind, *rest = run_batch(fd, calls)
        result = rest[0] if rest else None
        assert kind != "setup", f"setting up {fd} failed: {result}"
        assert kind != "hang", f"{fd}: no answer within {TIMEOUT:.0f} s for {calls!r}"
        assert kind != "signal", f"{fd}: the child died of {result} running {calls!r}"
        assert not result, "\n".join(result)

    batch()
