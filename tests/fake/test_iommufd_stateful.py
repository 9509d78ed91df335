"""Random sequences of iommufd operations against an independent model.

The model keeps, per IOAS, a plain list of mappings (IOVA, length, the
"pages" they came from, permissions) and derives everything else from
scratch at every step: reserved ranges (the MSI window of each attached
device, the top of the 48-bit aperture once a domain exists), the first-fit
IOVA the kernel's allocator must pick, which pages must be pinned (each page
of a pages object once, while an IOAS holding it has a domain) and which
errno an operation must fail with.  Invariants are checked after every
step; closing everything must leave no pins and no objects behind.
"""

from __future__ import annotations

import errno
import os
import random
import sys
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)

from pyvfio._uapi import ffi, lib
from pyvfio.backend.base import (
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    PROT_READ,
    PROT_WRITE,
    MemoryMap,
)
from pyvfio.fake.core import IommuFault
from pyvfio.fake.iommufd import IommufdFile
from pyvfio.fake.machine.system import System
from pyvfio.fake.machine.topology import load

PAGE = 4096
U64_MAX = (1 << 64) - 1
MSI = (0xFEE00000, 0xFEEFFFFF)
APERTURE_TOP = (1 << 48, U64_MAX)
#: the IOVAs fixed maps use: 32 pages below the MSI window and 32 inside it
BASE = MSI[0] - 32 * PAGE
SLOTS = 64
BUF_PAGES = 16
MEMLOCK_PAGES = 16
READ, WRITE = 1, 2
DEVICES = ("0000:00:02.0", "0000:00:04.0")
THP_ALIGN = 2 << 20


@dataclass(eq=False)
class MPages:
    buf: int
    va: int  # page-aligned address the pages start at
    writable: bool


@dataclass(eq=False)
class MArea:
    iova: int
    length: int
    pages: MPages
    start_byte: int
    prot: int

    @property
    def last(self) -> int:
        return self.iova + self.length - 1

    def index_span(self) -> tuple[int, int]:
        return self.start_byte // PAGE, (self.start_byte + self.length - 1) // PAGE


@dataclass
class MIoas:
    areas: list[MArea] = field(default_factory=list)
    allowed: list[tuple[int, int]] = field(default_factory=list)
    hwpts: int = 0  # manually allocated HWPTs


def merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, l in sorted(spans):
        if out and s <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], l))
        else:
            out.append((s, l))
    return out


def holes(used: list[tuple[int, int]], lo: int, hi: int) -> list[tuple[int, int]]:
    out = []
    pos = lo
    for s, l in merged(used):
        if l < pos:
            continue
        if s > hi:
            break
        if s > pos:
            out.append((pos, s - 1))
        pos = l + 1
        if pos > hi:
            return out
    if pos <= hi:
        out.append((pos, hi))
    return out


def overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


class IommufdMachine(RuleBasedStateMachine):
    ioases = Bundle("ioases")

    def __init__(self) -> None:
        super().__init__()
        topo = load("default")
        topo["memlock_limit"] = MEMLOCK_PAGES * PAGE
        self.system = System(topo)
        self.b = self.system.backend
        self.fd = self.b.open("/dev/iommu")
        self.rng = random.Random(0)
        self.maps: list[MemoryMap] = []
        self.ro: list[bool] = []
        for i in range(3):
            m = self.b.mmap(BUF_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
            m.write_bytes(0, bytes(self.rng.randrange(256) for _ in range(BUF_PAGES * PAGE)))
            self.maps.append(m)
            self.ro.append(False)
        # one read-only buffer: writable maps of it cannot be pinned
        ro = self.b.mmap(BUF_PAGES * PAGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS)
        self.maps.append(ro)
        self.ro.append(True)
        self.dev_fds: list[int] = []
        self.dev_ids: list[int] = []
        for bdf in DEVICES:
            self._bind_vfio(bdf)
            name = self.b.sysfs_listdir(f"/sys/bus/pci/devices/{bdf}/vfio-dev")[0]
            dfd = self.b.open(f"/dev/vfio/devices/{name}")
            bind = ffi.new("struct vfio_device_bind_iommufd *")
            bind.argsz = ffi.sizeof(bind[0])
            bind.iommufd = self.fd
            assert self.b.ioctl(dfd, lib.VFIO_DEVICE_BIND_IOMMUFD, bind) == 0
            self.dev_fds.append(dfd)
            self.dev_ids.append(int(bind.out_devid))
        self.model: dict[int, MIoas] = {}
        self.attached: list[int | None] = [None, None]
        self.manual: dict[int, int] = {}  # hwpt id -> ioas id

    def _bind_vfio(self, bdf: str) -> None:
        dev = f"/sys/bus/pci/devices/{bdf}"
        self.b.sysfs_write(f"{dev}/driver_override", "vfio-pci")
        driver = self.b.sysfs_basename_of_link(f"{dev}/driver")
        if driver is not None and driver != "vfio-pci":
            self.b.sysfs_write(f"/sys/bus/pci/drivers/{driver}/unbind", bdf)
        if driver != "vfio-pci":
            self.b.sysfs_write("/sys/bus/pci/drivers_probe", bdf)

    # -- helpers ------------------------------------------------------------------------
    def ioctl(self, request: int, arg: Any) -> int:
        return self.b.ioctl(self.fd, request, arg)

    @staticmethod
    def cmd(ctype: str, **fields: int) -> Any:
        c = ffi.new(f"struct {ctype} *")
        c.size = ffi.sizeof(c[0])
        for k, v in fields.items():
            setattr(c, k, v)
        return c

    def call(self, fn: Any) -> int:
        """0 or the errno ``fn`` failed with."""
        rule_name = sys._getframe(1).f_code.co_name
        try:
            fn()
        except OSError as e:
            assert e.errno
            event(f"{rule_name}: {errno.errorcode[e.errno]}")
            return int(e.errno)
        event(f"{rule_name}: ok")
        return 0

    def stale(self, *ids: int) -> bool:
        """An IOAS ID of the bundle that was destroyed and reused by another
        kind of object: the rule does not apply."""
        return any(i not in self.model and i in self.file.objects for i in ids)

    @property
    def file(self) -> IommufdFile:
        f = self.b.file(self.fd)
        assert isinstance(f, IommufdFile)
        return f

    # -- model derivations -----------------------------------------------------------------
    def has_domain(self, ioas: int) -> bool:
        return ioas in self.attached or self.model[ioas].hwpts > 0

    def reserved(self, ioas: int) -> list[tuple[int, int]]:
        out = []
        if ioas in self.attached:
            out.append(MSI)
        if self.has_domain(ioas):
            out.append(APERTURE_TOP)
        return out

    def expected_pins(self, domains: set[int] | None = None,
                      extra: list[MArea] | None = None) -> int:
        """Pages pinned when the IOASes in ``domains`` have a domain (and
        ``extra`` areas are filled too)."""
        if domains is None:
            domains = {i for i in self.model if self.has_domain(i)}
        spans: dict[int, list[tuple[int, int]]] = {}
        objs: dict[int, MPages] = {}
        areas = [a for i in domains for a in self.model[i].areas] + list(extra or [])
        for area in areas:
            spans.setdefault(id(area.pages), []).append(area.index_span())
            objs[id(area.pages)] = area.pages
        return sum(l - s + 1 for sp in spans.values() for s, l in merged(sp))

    def fill_error(self, areas: list[MArea], domains: set[int],
                   extra: list[MArea] | None = None) -> int:
        """The errno filling ``areas`` in order fails with (0 if none):
        EFAULT pinning a read-only buffer writable, ENOMEM past the limit."""
        done: list[MArea] = list(extra or [])
        for area in areas:
            before = self.expected_pins(domains, done)
            after = self.expected_pins(domains, done + [area])
            if after > before and area.pages.writable and self.ro[area.pages.buf]:
                return errno.EFAULT
            if after > MEMLOCK_PAGES:
                return errno.ENOMEM
            done.append(area)
        return 0

    def first_fit(self, ioas: int, addr: int, length: int) -> int | None:
        """iopt_alloc_iova, re-derived: the lowest aligned IOVA inside the
        allowed ranges that is neither reserved nor mapped."""
        m = self.model[ioas]
        if addr:
            align = min(1 << (length - 1).bit_length(), addr & -addr)
        else:
            align = 1 << (length - 1).bit_length()
        align = min(align, THP_ALIGN)
        offset = addr % PAGE
        lo, hi = PAGE, U64_MAX - PAGE
        spans = [(max(s, lo), min(l, hi)) for s, l in merged(m.allowed)
                 if l >= lo and s <= hi] if m.allowed else [(lo, hi)]
        used = self.reserved(ioas) + [(a.iova, a.last) for a in m.areas]

        def fit(s: int, l: int) -> int | None:
            a = ((s + align - 1) & ~(align - 1)) | offset
            if a >= l or l - a < length - 1:
                return None
            return a

        for s, l in spans:
            start = fit(s, l)
            if start is None:
                continue
            for hs, hl in holes(used, start, l):
                found = fit(hs, hl)
                if found is not None:
                    return found
        return None

    # -- rules --------------------------------------------------------------------------
    def _alloc(self) -> int:
        c = self.cmd("iommu_ioas_alloc")
        assert self.ioctl(lib.IOMMU_IOAS_ALLOC, c) == 0
        ioas = int(c.out_ioas_id)
        assert ioas not in self.model
        self.model[ioas] = MIoas()
        return ioas

    @initialize(target=ioases)
    def first_ioases(self) -> Any:
        return multiple(self._alloc(), self._alloc())

    @precondition(lambda self: len(self.model) < 4)
    @rule(target=ioases)
    def alloc_ioas(self) -> int:
        return self._alloc()

    @precondition(lambda self: len(self.model) > 1)
    @rule(ioas=ioases)
    def destroy_ioas(self, ioas: int) -> None:
        if self.stale(ioas):
            return
        rc = self.call(lambda: self.ioctl(lib.IOMMU_DESTROY, self.cmd("iommu_destroy", id=ioas)))
        if ioas not in self.model:
            assert rc == errno.ENOENT
        elif self.has_domain(ioas):
            assert rc == errno.EBUSY
        else:
            assert rc == 0
            del self.model[ioas]

    @rule(ioas=ioases, buf=st.integers(0, 3), first=st.integers(0, BUF_PAGES - 1),
          npages=st.integers(1, 10), slot=st.none() | st.integers(0, SLOTS - 1),
          prot=st.sampled_from([READ, WRITE, READ | WRITE]))
    def map(self, ioas: int, buf: int, first: int, npages: int, slot: int | None,
            prot: int) -> None:
        if self.stale(ioas):
            return
        npages = min(npages, BUF_PAGES - first)
        length = npages * PAGE
        va = self.maps[buf].address + first * PAGE
        flags = 0
        if prot & READ:
            flags |= lib.IOMMU_IOAS_MAP_READABLE
        if prot & WRITE:
            flags |= lib.IOMMU_IOAS_MAP_WRITEABLE
        iova = 0 if slot is None else BASE + slot * PAGE
        if slot is not None:
            flags |= lib.IOMMU_IOAS_MAP_FIXED_IOVA
        c = self.cmd("iommu_ioas_map", ioas_id=ioas, user_va=va, length=length, iova=iova,
                     flags=flags)
        rc = self.call(lambda: self.ioctl(lib.IOMMU_IOAS_MAP, c))
        if ioas not in self.model:
            assert rc == errno.ENOENT
            return
        m = self.model[ioas]
        if slot is None:
            expect_iova = self.first_fit(ioas, va, length)
            if expect_iova is None:
                assert rc == errno.ENOSPC
                return
        else:
            expect_iova = iova
            rng = (iova, iova + length - 1)
            if any(overlaps(rng, r) for r in self.reserved(ioas)):
                assert rc == errno.EINVAL
                return
            if any(overlaps(rng, (a.iova, a.last)) for a in m.areas):
                assert rc == errno.EEXIST
                return
        pages = MPages(buf, va, bool(prot & WRITE))
        area = MArea(expect_iova, length, pages, 0, prot)
        expect = 0
        if self.has_domain(ioas):
            expect = self.fill_error([area], {i for i in self.model if self.has_domain(i)})
        assert rc == expect, f"map: got {rc}, expected {expect}"
        if not rc:
            assert int(c.iova) == expect_iova
            m.areas.append(area)

    @rule(ioas=ioases, data=st.data())
    def unmap(self, ioas: int, data: st.DataObject) -> None:
        if self.stale(ioas):
            return
        areas = sorted(self.model[ioas].areas, key=lambda a: a.iova) if ioas in self.model else []
        mode = data.draw(st.sampled_from(["areas", "random", "everything"] if areas
                                         else ["random", "everything"]))
        everything = mode == "everything"
        if mode == "areas":
            # whole mappings, or ranges cutting one of them
            i = data.draw(st.integers(0, len(areas) - 1))
            j = data.draw(st.integers(i, min(i + 2, len(areas) - 1)))
            lo = areas[i].iova - data.draw(st.sampled_from([0, 0, PAGE]))
            hi = areas[j].last + data.draw(st.sampled_from([0, 0, PAGE, -PAGE]))
            iova, length = lo, max(hi - lo + 1, PAGE)
        elif mode == "random":
            slot = data.draw(st.integers(0, SLOTS - 1))
            iova, length = BASE + slot * PAGE, data.draw(st.integers(1, 12)) * PAGE
        else:
            iova, length = 0, U64_MAX
        c = self.cmd("iommu_ioas_unmap", ioas_id=ioas, iova=iova, length=length)
        rc = self.call(lambda: self.ioctl(lib.IOMMU_IOAS_UNMAP, c))
        if ioas not in self.model:
            assert rc == errno.ENOENT
            return
        m = self.model[ioas]
        last = iova + length - 1
        unmapped = 0
        expect = 0
        for area in sorted(m.areas, key=lambda a: a.iova):
            if not overlaps((iova, last), (area.iova, area.last)):
                continue
            if area.iova < iova or area.last > last:
                expect = errno.ENOENT  # earlier areas stay unmapped
                break
            m.areas.remove(area)
            unmapped += area.length
        if not expect and not unmapped and not everything:
            expect = errno.ENOENT
        assert rc == expect
        if not rc:
            assert int(c.length) == unmapped

    @rule(src=ioases, dst=ioases, data=st.data(),
          dst_slot=st.none() | st.integers(0, SLOTS - 1),
          prot=st.sampled_from([READ, WRITE, READ | WRITE]))
    def copy(self, src: int, dst: int, data: st.DataObject, dst_slot: int | None,
             prot: int) -> None:
        if self.stale(src, dst):
            return
        src_areas = self.model[src].areas if src in self.model else []
        pick: bool = data.draw(st.booleans())
        if src_areas and pick:
            area = data.draw(st.sampled_from(src_areas))
            first = data.draw(st.integers(0, area.length // PAGE - 1))
            src_iova = area.iova + first * PAGE
            length = data.draw(st.integers(1, area.length // PAGE - first + 1)) * PAGE
        else:
            src_iova = BASE + data.draw(st.integers(0, SLOTS - 1)) * PAGE
            length = data.draw(st.integers(1, 8)) * PAGE
        flags = (lib.IOMMU_IOAS_MAP_READABLE if prot & READ else 0) | \
            (lib.IOMMU_IOAS_MAP_WRITEABLE if prot & WRITE else 0)
        if dst_slot is not None:
            flags |= lib.IOMMU_IOAS_MAP_FIXED_IOVA
        dst_iova = 0 if dst_slot is None else BASE + dst_slot * PAGE
        c = self.cmd("iommu_ioas_copy", src_ioas_id=src, dst_ioas_id=dst, src_iova=src_iova,
                     length=length, dst_iova=dst_iova, flags=flags)
        rc = self.call(lambda: self.ioctl(lib.IOMMU_IOAS_COPY, c))
        if src not in self.model:
            assert rc == errno.ENOENT
            return
        # iopt_get_pages: contiguous coverage of the source range
        pieces: list[tuple[MArea, int, int]] = []
        pos, last = src_iova, src_iova + length - 1
        by_start = {a.iova: a for a in self.model[src].areas}
        cover = next((a for a in self.model[src].areas if a.iova <= pos <= a.last), None)
        while cover is not None:
            end = min(last, cover.last)
            pieces.append((cover, pos, end))
            if end == last:
                break
            pos = cover.last + 1
            cover = by_start.get(pos)
        if not pieces or pieces[-1][2] != last:
            assert rc == errno.ENOENT
            return
        if dst not in self.model:
            assert rc == errno.ENOENT
            return
        first_area, first_pos, _ = pieces[0]
        if dst_slot is None:
            addr = first_area.pages.va + first_area.start_byte + (first_pos - first_area.iova)
            expect_iova = self.first_fit(dst, addr, length)
            if expect_iova is None:
                assert rc == errno.ENOSPC
                return
        else:
            expect_iova = dst_iova
            rng = (dst_iova, dst_iova + length - 1)
            if any(overlaps(rng, r) for r in self.reserved(dst)):
                assert rc == errno.EINVAL
                return
            if any(overlaps(rng, (a.iova, a.last)) for a in self.model[dst].areas):
                assert rc == errno.EEXIST
                return
        new: list[MArea] = []
        cur = expect_iova
        for area, start, end in pieces:
            if prot & WRITE and not area.pages.writable:
                assert rc == errno.EPERM
                return
            new.append(MArea(cur, end - start + 1, area.pages,
                             area.start_byte + (start - area.iova), prot))
            cur += end - start + 1
        expect = 0
        if self.has_domain(dst):
            expect = self.fill_error(new, {i for i in self.model if self.has_domain(i)})
        assert rc == expect, f"copy: got {rc}, expected {expect}"
        if not rc:
            assert int(c.dst_iova) == expect_iova
            self.model[dst].areas.extend(new)

    @rule(ioas=ioases, start=st.integers(0, SLOTS - 1), npages=st.integers(2, 40),
          clear=st.booleans())
    def allow_iovas(self, ioas: int, start: int, npages: int, clear: bool) -> None:
        if self.stale(ioas):
            return
        ranges = [] if clear else [(BASE + start * PAGE, BASE + (start + npages) * PAGE - 1)]
        arr = ffi.new("struct iommu_iova_range[1]")
        if ranges:
            arr[0].start, arr[0].last = ranges[0]
        c = self.cmd("iommu_ioas_allow_iovas", ioas_id=ioas, num_iovas=len(ranges),
                     allowed_iovas=int(ffi.cast("uintptr_t", arr)))
        rc = self.call(lambda: self.ioctl(lib.IOMMU_IOAS_ALLOW_IOVAS, c))
        if ioas not in self.model:
            assert rc == errno.ENOENT
            return
        if any(overlaps(r, res) for r in ranges for res in self.reserved(ioas)):
            assert rc == errno.EADDRINUSE
            return
        assert rc == 0
        self.model[ioas].allowed = ranges

    def _attach_expect(self, dev: int, ioas: int) -> int:
        """The errno attaching (or replacing) ``dev`` to ``ioas`` gives."""
        old = self.attached[dev]
        if old == ioas:
            return 0
        m = self.model[ioas]
        domains = {i for i in self.model if self.has_domain(i)}
        resv_err = 0
        # the device's MSI window over a mapping or an allowed range
        if any(overlaps(MSI, (a.iova, a.last)) for a in m.areas) or \
                any(overlaps(MSI, r) for r in m.allowed):
            resv_err = errno.EADDRINUSE
        has_auto = ioas in self.attached
        if has_auto:
            return resv_err  # joins the existing automatic domain
        fill_err = 0
        if not self.has_domain(ioas):
            areas = sorted(m.areas, key=lambda a: a.iova)
            fill_err = self.fill_error(areas, domains)
        if old is None:
            # immediate attach: reserved regions first, then the domain fill
            return resv_err or fill_err
        # replace: the new domain is filled first, then the reservations
        return fill_err or resv_err

    @rule(dev=st.integers(0, 1), ioas=ioases)
    def attach(self, dev: int, ioas: int) -> None:
        if self.stale(ioas):
            return
        at = ffi.new("struct vfio_device_attach_iommufd_pt *")
        at.argsz = ffi.sizeof(at[0])
        at.pt_id = ioas
        rc = self.call(lambda: self.b.ioctl(self.dev_fds[dev], lib.VFIO_DEVICE_ATTACH_IOMMUFD_PT, at))
        if ioas not in self.model:
            assert rc == errno.ENOENT
            return
        expect = self._attach_expect(dev, ioas)
        assert rc == expect, f"attach: got {rc}, expected {expect}"
        if not rc:
            self.attached[dev] = ioas
            hwpt = int(at.pt_id)
            assert self.file.objects[hwpt].kind == "hwpt_paging"

    @rule(dev=st.integers(0, 1))
    def detach(self, dev: int) -> None:
        de = ffi.new("struct vfio_device_detach_iommufd_pt *")
        de.argsz = ffi.sizeof(de[0])
        assert self.b.ioctl(self.dev_fds[dev], lib.VFIO_DEVICE_DETACH_IOMMUFD_PT, de) == 0
        self.attached[dev] = None

    @rule(ioas=ioases, dev=st.integers(0, 1))
    def hwpt_alloc(self, ioas: int, dev: int) -> None:
        if self.stale(ioas):
            return
        c = self.cmd("iommu_hwpt_alloc", dev_id=self.dev_ids[dev], pt_id=ioas)
        rc = self.call(lambda: self.ioctl(lib.IOMMU_HWPT_ALLOC, c))
        if ioas not in self.model:
            assert rc == errno.EINVAL  # an unknown pt_id
            return
        expect = 0
        if not self.has_domain(ioas):
            domains = {i for i in self.model if self.has_domain(i)}
            expect = self.fill_error(sorted(self.model[ioas].areas, key=lambda a: a.iova), domains)
        assert rc == expect
        if not rc:
            self.manual[int(c.out_hwpt_id)] = ioas
            self.model[ioas].hwpts += 1

    @precondition(lambda self: bool(self.manual))
    @rule(data=st.data())
    def hwpt_destroy(self, data: st.DataObject) -> None:
        hwpt = data.draw(st.sampled_from(sorted(self.manual)))
        assert self.ioctl(lib.IOMMU_DESTROY, self.cmd("iommu_destroy", id=hwpt)) == 0
        ioas = self.manual.pop(hwpt)
        self.model[ioas].hwpts -= 1

    @rule(dev=st.integers(0, 1), data=st.data())
    def dma(self, dev: int, data: st.DataObject) -> None:
        ioas = self.attached[dev]
        if ioas is None or not self.model[ioas].areas:
            return
        area = data.draw(st.sampled_from(self.model[ioas].areas))
        off = data.draw(st.integers(0, area.length - 1))
        pdev = self.system.device(DEVICES[dev])
        if area.prot & READ:
            got = pdev.dma_read(area.iova + off, 1)
            va = area.pages.va + area.start_byte + off
            assert got == bytes(ffi.buffer(ffi.cast("char *", va), 1))
        else:
            with pytest.raises(IommuFault):
                pdev.dma_read(area.iova + off, 1)

    # -- invariants -------------------------------------------------------------------
    @invariant()
    def matches_model(self) -> None:
        file = self.file
        assert self.system.user_memory.pinned_pages == self.expected_pins()
        for ioas, m in self.model.items():
            obj: Any = file.objects[ioas]
            got = [(s, l) for s, l, _a in obj.iopt.areas]
            want = sorted((a.iova, a.last) for a in m.areas)
            assert got == want
            for (s1, l1), (s2, _l2) in zip(got, got[1:]):
                assert l1 < s2
            arr = ffi.new("struct iommu_iova_range[8]")
            c = self.cmd("iommu_ioas_iova_ranges", ioas_id=ioas, num_iovas=8,
                         allowed_iovas=int(ffi.cast("uintptr_t", arr)))
            assert self.ioctl(lib.IOMMU_IOAS_IOVA_RANGES, c) == 0
            ranges = [(int(arr[i].start), int(arr[i].last)) for i in range(c.num_iovas)]
            assert ranges == holes(self.reserved(ioas), 0, U64_MAX)
            assert c.out_iova_alignment == (PAGE if self.has_domain(ioas) else 1)
        for dev, target in enumerate(self.attached):
            pdev = self.system.device(DEVICES[dev])
            assert (pdev.domain is None) == (target is None)
        live = set(self.model) | set(self.manual) | set(self.dev_ids)
        autos = {o.id for o in file.objects.values() if getattr(o, "auto_domain", False)}
        assert set(file.objects) == live | autos
        assert len(autos) == len({i for i in self.attached if i is not None})

    def teardown(self) -> None:
        file = self.file
        self.b.close(self.fd)
        for dfd in self.dev_fds:
            self.b.close(dfd)
        assert file.objects == {}
        assert self.system.user_memory.pinned_pages == 0
        for dev in DEVICES:
            assert self.system.device(dev).domain is None
        for m in self.maps:
            m.close()


IommufdMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("IOMMUFD_STATEFUL_EXAMPLES", "50")), stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestIommufdStateful = IommufdMachine.TestCase
