"""Random sequences of type1v2 DMA operations against an independent model.

A :class:`pyvfio.Container` with one :class:`pyvfio.Group` (QEMU's edu
device on the ``minimal`` machine) is driven through the public objects;
the model is a plain list of mappings (IOVA, size, the buffer page they
come from, permissions) from which every expected result is derived:

* MAP_DMA at a fixed IOVA: EEXIST over an existing mapping, ENOSPC once
  ``dma_entry_limit`` mappings exist, EINVAL outside the usable IOVA
  ranges (the IOVA window straddles the x86 MSI window), EFAULT for a
  device-writable mapping of read-only memory, ENOMEM past RLIMIT_MEMLOCK
  (checked in that order, as vfio_dma_do_map and vfio_pin_map_dma do);
* UNMAP_DMA: EINVAL when the range starts or ends inside a mapping (v2
  never splits one), otherwise every mapping inside the range goes and
  the size reported is theirs, 0 when the range covers nothing;
* UNMAP_DMA with VFIO_DMA_UNMAP_FLAG_ALL, and closing a
  :class:`~pyvfio.core.container.DmaMapping`.

After every step the fake's table, the container's DmaMapping objects,
``dma_avail`` of GET_INFO, the pinned-page count and what the device's
DMA reaches must all agree with the model.  Closing everything must
leave no pins, no owner and no fd behind.
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import pyvfio
from pyvfio.backend.base import (
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    PROT_READ,
    PROT_WRITE,
    MemoryMap,
)
from pyvfio.fake.core import IommuFault
from pyvfio.fake.machine.system import System
from pyvfio.fake.machine.topology import load
from pyvfio.fake.vfio import ContainerFile, Type1Iommu

PAGE = 4096
EDU = "0000:00:02.0"
MSI = (0xFEE00000, 0xFEEFFFFF)
APERTURE_LAST = (1 << 48) - 1
#: pages of IOVA the rules use: 28 below the MSI window, 4 inside it
WINDOW = 32
BASE = MSI[0] - 28 * PAGE
MEMLOCK_PAGES = 12
READ, WRITE = 1, 2
RW_BUF, RO_BUF = 0, 1


@dataclass(eq=False)
class MMap:
    """One mapping of the model."""

    iova: int
    size: int
    buf: int
    page: int  # first page of the buffer it maps
    prot: int

    @property
    def last(self) -> int:
        return self.iova + self.size - 1

    @property
    def pages(self) -> int:
        return self.size // PAGE


def usable(first: int, last: int) -> bool:
    """Inside one of the IOVA ranges type1 allows (the aperture minus the
    MSI window): vfio_iommu_iova_dma_valid."""
    return last < MSI[0] or (first > MSI[1] and last <= APERTURE_LAST)


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def tag(buf: int, page: int) -> bytes:
    """What the first bytes of ``page`` of buffer ``buf`` hold."""
    return bytes([buf, page]) + b"tag"


def mprotect(address: int, length: int, prot: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    if libc.mprotect(address, length, prot) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class Type1Machine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.fds_before = open_fds()
        topo = load("minimal")
        topo["memlock_limit"] = MEMLOCK_PAGES * PAGE
        self.system = System(topo, models=None)
        self.b = self.system.backend
        b = self.b
        dev = f"/sys/bus/pci/devices/{EDU}"
        b.sysfs_write(f"{dev}/driver_override", "vfio-pci")
        driver = b.sysfs_basename_of_link(f"{dev}/driver")
        if driver is not None:
            b.sysfs_write(f"/sys/bus/pci/drivers/{driver}/unbind", EDU)
        b.sysfs_write("/sys/bus/pci/drivers_probe", EDU)
        # RW_BUF and RO_BUF: a tag at the start of each page tells which
        # page a DMA reached; RO_BUF is then made read-only, so that a
        # device-writable mapping of it cannot be pinned
        self.bufs: list[MemoryMap] = []
        for buf in (RW_BUF, RO_BUF):
            m = b.mmap(WINDOW * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
            for page in range(WINDOW):
                m.write_bytes(page * PAGE, tag(buf, page))
            self.bufs.append(m)
        mprotect(self.bufs[RO_BUF].address, WINDOW * PAGE, PROT_READ)
        self.model: list[MMap] = []
        self.limit = 0
        self.container: pyvfio.Container | None = None
        self.group: pyvfio.Group | None = None

    # -- helpers -------------------------------------------------------------------------
    @property
    def c(self) -> pyvfio.Container:
        assert self.container is not None
        return self.container

    @property
    def iommu(self) -> Type1Iommu:
        file = self.b.file(self.c.fd)
        assert isinstance(file, ContainerFile) and isinstance(file.iommu, Type1Iommu)
        return file.iommu

    def call(self, fn: Any) -> tuple[int, Any]:
        """``(0, result)`` or ``(errno, None)`` of ``fn()``."""
        rule_name = sys._getframe(1).f_code.co_name
        try:
            result = fn()
        except OSError as e:
            assert e.errno
            event(f"{rule_name}: {errno.errorcode[e.errno]}")
            return int(e.errno), None
        event(f"{rule_name}: ok")
        return 0, result

    def pinned(self) -> int:
        return sum(m.pages for m in self.model)

    def iova(self, slot: int) -> int:
        return BASE + slot * PAGE

    def forget(self, first: int, last: int) -> int:
        """Drop the model's mappings inside ``[first, last]``; their size."""
        gone = [m for m in self.model if first <= m.iova and m.last <= last]
        for m in gone:
            self.model.remove(m)
        return sum(m.size for m in gone)

    def unmap_expect(self, first: int, last: int) -> int:
        """vfio_dma_do_unmap (v2): EINVAL when ``first`` or ``last`` falls
        inside a mapping without being its first or last byte."""
        for m in self.model:
            if m.iova < first <= m.last or m.iova <= last < m.last:
                return errno.EINVAL
        return 0

    # -- rules -----------------------------------------------------------------------------
    @initialize(limit=st.integers(1, 4))
    def open_container(self, limit: int) -> None:
        # vfio_iommu_type1_open reads the module parameter once
        self.b.sysfs_write("/sys/module/vfio_iommu_type1/parameters/dma_entry_limit", str(limit))
        self.limit = limit
        self.container = pyvfio.Container(backend=self.b)
        self.group = pyvfio.Group(0, backend=self.b)
        self.group.set_container(self.container)
        self.container.set_iommu(pyvfio.IommuType.TYPE1v2)
        ranges = [(r.start, r.last) for r in self.container.info().iova_ranges]
        assert ranges == [(0, MSI[0] - 1), (MSI[1] + 1, APERTURE_LAST)]

    @rule(slot=st.integers(0, WINDOW - 1), npages=st.integers(1, 8),
          buf=st.sampled_from([RW_BUF, RW_BUF, RO_BUF]),
          prot=st.sampled_from([READ, WRITE, READ | WRITE]))
    def map_dma(self, slot: int, npages: int, buf: int, prot: int) -> None:
        npages = min(npages, WINDOW - slot)
        iova, size = self.iova(slot), npages * PAGE
        vaddr = self.bufs[buf].address + slot * PAGE
        rc, mapping = self.call(lambda: self.c.map_dma_va(
            vaddr, iova, size, readable=bool(prot & READ), writeable=bool(prot & WRITE)))
        last = iova + size - 1
        if any(m.iova <= last and iova <= m.last for m in self.model):
            expect = errno.EEXIST
        elif len(self.model) >= self.limit:
            expect = errno.ENOSPC
        elif not usable(iova, last):
            expect = errno.EINVAL
        elif prot & WRITE and buf == RO_BUF:
            expect = errno.EFAULT
        elif self.pinned() + npages > MEMLOCK_PAGES:
            expect = errno.ENOMEM
        else:
            expect = 0
        assert rc == expect, f"map [{iova:#x}, {last:#x}]: got {rc}, expected {expect}"
        if not rc:
            assert (mapping.iova, mapping.length) == (iova, size)
            self.model.append(MMap(iova, size, buf, slot, prot))

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def unmap_dma(self, data: st.DataObject) -> None:
        maps = sorted(self.model, key=lambda m: m.iova)
        if data.draw(st.booleans(), label="around mappings"):
            # whole mappings, or a range cutting into one at either end
            i = data.draw(st.integers(0, len(maps) - 1))
            j = data.draw(st.integers(i, min(i + 2, len(maps) - 1)))
            first = maps[i].iova + data.draw(st.sampled_from([0, 0, -PAGE, PAGE]))
            last = maps[j].last + data.draw(st.sampled_from([0, 0, PAGE, -PAGE]))
            last = max(last, first + PAGE - 1)
        else:
            slot = data.draw(st.integers(0, WINDOW - 1))
            first = self.iova(slot)
            last = first + data.draw(st.integers(1, 12)) * PAGE - 1
        rc, size = self.call(lambda: self.c.unmap_dma(first, last - first + 1))
        expect = self.unmap_expect(first, last)
        assert rc == expect, f"unmap [{first:#x}, {last:#x}]: got {rc}, expected {expect}"
        if not rc:
            assert size == self.forget(first, last)
            if not size:
                event("unmap_dma: nothing in the range")

    @precondition(lambda self: bool(self.model))
    @rule()
    def unmap_all(self) -> None:
        total = sum(m.size for m in self.model)
        assert self.c.unmap_all() == total
        self.model.clear()
        # every pin is given back with the mappings
        assert self.system.user_memory.pinned_pages == 0
        assert self.c.mappings == ()

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def close_mapping(self, data: st.DataObject) -> None:
        mapping = data.draw(st.sampled_from(self.c.mappings))
        mapping.close()
        assert mapping.closed
        assert self.forget(mapping.iova, mapping.iova + mapping.length - 1) == mapping.length

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def device_write(self, data: st.DataObject) -> None:
        m = data.draw(st.sampled_from(self.model))
        # past the page's tag
        off = data.draw(st.integers(0, m.pages - 1)) * PAGE + data.draw(st.integers(8, PAGE - 1))
        pdev = self.system.device(EDU)
        byte = data.draw(st.integers(0, 255))
        if m.prot & WRITE:
            pdev.dma_write(m.iova + off, bytes([byte]))
            assert self.bufs[m.buf].read_bytes(m.page * PAGE + off, 1) == bytes([byte])
        else:
            with pytest.raises(IommuFault):
                pdev.dma_write(m.iova + off, bytes([byte]))

    # -- invariants ----------------------------------------------------------------------
    @invariant()
    def fake_table_matches(self) -> None:
        got = [(s, l, d.vaddr, d.prot) for s, l, d in self.iommu.dma]
        want = sorted((m.iova, m.last, self.bufs[m.buf].address + m.page * PAGE, m.prot)
                      for m in self.model)
        assert got == want

    @invariant()
    def objects_match(self) -> None:
        assert [(m.iova, m.length) for m in self.c.mappings] == sorted(
            (m.iova, m.size) for m in self.model)
        assert self.c.info().dma_avail == self.limit - len(self.model)

    @invariant()
    def pinned_pages_match(self) -> None:
        assert self.system.user_memory.pinned_pages == self.pinned()

    @invariant()
    def device_sees_the_model(self) -> None:
        pdev = self.system.device(EDU)
        by_page = {(m.iova - BASE) // PAGE + i: (m, i) for m in self.model for i in range(m.pages)}
        for slot in range(WINDOW):
            hit = by_page.get(slot)
            if hit is not None and hit[0].prot & READ:
                m, i = hit
                assert pdev.dma_read(self.iova(slot), 5) == tag(m.buf, m.page + i)
            else:
                with pytest.raises(IommuFault):
                    pdev.dma_read(self.iova(slot), 1)

    def teardown(self) -> None:
        try:
            if self.container is not None:
                file = self.b.file(self.c.fd)
                self.c.close()  # unmaps its DmaMapping objects first
                assert self.system.user_memory.pinned_pages == 0
                assert self.group is not None
                self.group.close()  # the last group: the IOMMU is released
                assert isinstance(file, ContainerFile) and file.iommu is None
            assert self.system.user_memory.pinned_pages == 0
            assert self.system.group(0).owner is None
            assert self.b.open_files == []
        finally:
            for m in self.bufs:
                m.close()
        assert open_fds() <= self.fds_before


Type1Machine.TestCase.settings = settings(
    max_examples=int(os.environ.get("TYPE1_STATEFUL_EXAMPLES", "50")), stateful_step_count=40,
    deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestType1Stateful = Type1Machine.TestCase
