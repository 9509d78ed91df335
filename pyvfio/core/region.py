"""Device regions: BARs, ROM, config space and device-specific regions.

``device.regions`` is a :class:`RegionMap`: ``regions[0]``,
``regions["BAR0"]``, ``regions[PciRegion.CONFIG]`` and
``regions.by_type(type, subtype)`` all give a :class:`Region`.  A region
can be accessed two ways, both with exact-width accessors
(:class:`~pyvfio.core.registers.RegisterIO`):

* through the device file: ``region.read32(offset)`` is one ``pread`` of 4
  bytes at that offset, which vfio-pci turns into one 4-byte access of the
  device (``vfio_pci_core_do_io_rw``); this works for every readable region,
  including those that cannot be mmapped (I/O BARs, the config space, parts
  of a BAR vfio keeps to itself);
* through a mapping: ``mapping = region.mmap()`` maps the areas vfio allows
  (the sparse-mmap areas when the region reports them, the whole region
  otherwise -- with ``VFIO_REGION_INFO_CAP_MSIX_MAPPABLE`` that includes the
  MSI-X table) and ``mapping.read32(offset)`` is one volatile 4-byte load.
  An access outside the mapped areas raises
  :class:`~pyvfio.errors.InvalidArgumentError` saying so.

A mapping is a :class:`~pyvfio.core.resource.Resource` of its device: ``close()``
unmaps it, and closing the device closes its mappings first.  While a BAR
is mapped, keep Memory Space enabled in the Command register
(:meth:`pyvfio.core.pci_config.PciConfig.enable_memory`): vfio-pci answers an
access to a BAR with memory decode off (or in low power) with ``SIGBUS``
(the fake kernel raises ``BusError``).
"""

from __future__ import annotations

import errno
from array import array
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

from .._uapi import ffi, lib

from ..backend.base import MAP_SHARED, PROT_READ, PROT_WRITE, DirectAccess, MemoryMap
from ..errors import InvalidArgumentError, UnsupportedError, ioctl_error
from .caps import Capability, MsixMappableCap, SparseMmapArea
from .registers import _TYPECODES as _TYPECODE
from .registers import RegisterIO
from .resource import Resource

if TYPE_CHECKING:
    from .device import Device, RegionInfo

__all__ = ["Region", "RegionMap", "RegionMapping"]

# The checked accessors of a window of plain memory (helpers.c): one call
# checks the offset and makes the access, -1 when it refuses.
_wread8, _wread16, _wread32 = lib.pyvfio_window_read8, lib.pyvfio_window_read16, \
    lib.pyvfio_window_read32
_wwrite8, _wwrite16, _wwrite32 = lib.pyvfio_window_write8, lib.pyvfio_window_write16, \
    lib.pyvfio_window_write32
_from_buffer = ffi.from_buffer
_BLOCK_READ = {4: lib.pyvfio_read32_block, 8: lib.pyvfio_read64_block}
_BLOCK_WRITE = {4: lib.pyvfio_write32_block, 8: lib.pyvfio_write64_block}
_BLOCK_CTYPE = {4: "uint32_t[]", 8: "uint64_t[]"}


class Region(RegisterIO):
    """One region of a device (``VFIO_DEVICE_GET_REGION_INFO``), accessed
    through ``pread``/``pwrite`` on the device file or mapped with
    :meth:`mmap`.  Offsets and sizes are in bytes from the region's start.

    Thread safety: safe to use from several threads: its accessors are
    ``pread``/``pwrite`` syscalls; :meth:`io` maps the region at most once
    (under the device's lock), so threads share one :class:`RegionMapping`.
    Each :meth:`mmap` call makes a new mapping.
    """

    def __init__(self, device: Device, info: RegionInfo) -> None:
        self.device = device  #: the device the region belongs to
        self.info = info  #: VFIO_DEVICE_GET_REGION_INFO
        self.size = info.size
        self._mapping: RegionMapping | None = None

    # -- what the kernel says ---------------------------------------------------------------
    @property
    def index(self) -> int:
        """The region index (``VFIO_PCI_BAR0_REGION_INDEX`` ...)."""
        return self.info.index

    @property
    def name(self) -> str:
        """``BAR0``..``BAR5``, ``ROM``, ``CONFIG``, ``VGA`` or ``region<N>``."""
        return self.info.name

    @property
    def flags(self) -> int:
        """``VFIO_REGION_INFO_FLAG_*`` bits."""
        return self.info.flags

    @property
    def offset(self) -> int:
        """File offset of the region in the device fd (bytes)."""
        return self.info.offset

    @property
    def readable(self) -> bool:
        """The region may be read."""
        return self.info.readable

    @property
    def writable(self) -> bool:
        """The region may be written."""
        return self.info.writable

    @property
    def mmappable(self) -> bool:
        """At least part of the region may be mmapped."""
        return self.info.mmappable

    @property
    def capabilities(self) -> tuple[Capability, ...]:
        """The region's capability chain."""
        return self.info.capabilities

    @property
    def sparse_areas(self) -> tuple[tuple[int, int], ...] | None:
        """``(offset, size)`` of the mmap-able areas when the region is sparse."""
        return self.info.sparse_areas

    @property
    def msix_mappable(self) -> bool:
        """``VFIO_REGION_INFO_CAP_MSIX_MAPPABLE``: the MSI-X table in this
        BAR may be mapped along with the rest."""
        return any(isinstance(c, MsixMappableCap) for c in self.info.capabilities)

    @property
    def type(self) -> tuple[int, int] | None:
        """``(type, subtype)`` of a device-specific region."""
        return self.info.type

    @property
    def mmap_areas(self) -> tuple[SparseMmapArea, ...]:
        """The areas :meth:`mmap` maps: the sparse areas, or the whole
        region; empty when the region cannot be mapped."""
        if not self.mmappable or self.size == 0:
            return ()
        sparse = self.sparse_areas
        if sparse is not None:
            return tuple(SparseMmapArea(o, s) for o, s in sparse if s > 0)
        return (SparseMmapArea(0, self.size),)

    def describe(self) -> str:
        """``"device 0000:00:02.0 BAR0"``."""
        return f"{self.device.describe()} {self.name}"

    def __repr__(self) -> str:
        kind = []
        if self.readable:
            kind.append("r")
        if self.writable:
            kind.append("w")
        if self.mmappable:
            kind.append("mmap")
        return f"<Region {self.describe()} {self.size:#x} bytes {'/'.join(kind) or '-'}>"

    # -- pread / pwrite ---------------------------------------------------------------------
    def _read(self, offset: int, width: int) -> int:
        if not self.readable:
            raise InvalidArgumentError("the region is not readable", target=self.describe())
        data = self.device.pread(self.info, offset, width)
        if len(data) != width:
            raise ioctl_error(errno.EIO, "pread", self.describe())
        return int.from_bytes(data, "little")

    def _write(self, offset: int, width: int, value: int) -> None:
        if not self.writable:
            raise InvalidArgumentError("the region is not writable", target=self.describe())
        n = self.device.pwrite(self.info, offset, value.to_bytes(width, "little"))
        if n != width:
            raise ioctl_error(errno.EIO, "pwrite", self.describe())

    def pread(self, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset`` through the device file (a bulk copy:
        vfio splits it into the widest aligned accesses; use the typed
        accessors for registers)."""
        return self.device.pread(self.info, offset, size)

    def pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> int:
        """Write ``data`` at ``offset`` through the device file (bulk copy)."""
        return self.device.pwrite(self.info, offset, bytes(data))

    # -- mmap -----------------------------------------------------------------------------------
    @property
    def mapping(self) -> RegionMapping | None:
        """The live mapping made by the last :meth:`mmap`, if any."""
        if self._mapping is not None and self._mapping.closed:
            self._mapping = None
        return self._mapping

    def mmap(self, *, writable: bool | None = None) -> RegionMapping:
        """Map the areas of the region vfio allows (:attr:`mmap_areas`).

        ``writable`` defaults to the region's write permission.  Raises
        :class:`~pyvfio.errors.UnsupportedError` when the region cannot be
        mapped (use the ``pread``/``pwrite`` accessors instead)."""
        device = self.device
        device._check_open()
        areas = self.mmap_areas
        if not areas:
            raise UnsupportedError(
                22, f"{self.describe()} cannot be mmapped (VFIO_REGION_INFO_FLAG_MMAP is clear "
                "or the region is empty): use its pread/pwrite accessors",
                ioctl="mmap", target=self.describe())
        if writable is None:
            writable = self.writable
        backend = device.backend
        page = backend.page_size
        prot = PROT_READ | (PROT_WRITE if writable else 0)
        maps: list[tuple[int, int, MemoryMap]] = []
        try:
            for area in areas:
                if area.offset % page:
                    raise InvalidArgumentError(
                        f"sparse area at {area.offset:#x} is not page aligned",
                        ioctl="mmap", target=self.describe())
                length = (area.size + page - 1) // page * page
                try:
                    mm = backend.mmap(length, prot, MAP_SHARED, device.fd,
                                      self.offset + area.offset)
                except OSError as exc:
                    raise ioctl_error(exc.errno or errno.EIO, "mmap", self.describe()) from None
                maps.append((area.offset, area.size, mm))
        except BaseException:
            for _o, _s, mm in maps:
                mm.close()
            raise
        mapping = device._adopt(RegionMapping(self, maps, writable))
        self._mapping = mapping
        return mapping

    def io(self) -> RegisterIO:
        """The fastest exact-width access path: the live mapping, a new
        mapping when the region can be mapped, else the region itself
        (``pread``/``pwrite``)."""
        mapping = self.mapping
        if mapping is not None:
            return mapping
        if self.mmap_areas:
            with self.device._lock:  # one mapping for the threads that race here
                mapping = self.mapping
                return mapping if mapping is not None else self.mmap()
        return self


class RegionMapping(Resource, RegisterIO):
    """The mmapped areas of a region.  Offsets are from the start of the
    region; an access must lie wholly inside one mapped area.

    Thread safety: its accessors are plain loads and stores on the mapped
    memory, safe from any thread (ordering and read-modify-write races
    between threads are the driver's business, as in C); close it after the
    threads using it are done.
    """

    kind = "region mapping"

    def __init__(self, region: Region, maps: list[tuple[int, int, MemoryMap]],
                 writable: bool) -> None:
        super().__init__(region.device.backend)
        self.region = region  #: the region mapped
        self.size = region.size  #: bytes
        self.writable = writable  #: mapped with PROT_WRITE
        self._maps = sorted(maps, key=lambda m: m[0])
        self._single = self._maps[0] if len(self._maps) == 1 else None
        # A whole-region mapping of plain memory: the typed accessors below
        # check and access it without going through read()/write().
        self._direct: DirectAccess | None = None
        self._base = 0
        single = self._single
        if single is not None and single[0] == 0 and single[1] >= self.size:
            self._direct = single[2].direct_access()
            self._base = single[2].address
        # The hot path's pieces, looked up once: the load and store of each
        # width (None: go through read()/write()) and the last offset at
        # which an access of that width fits.
        d = self._direct
        loads = d.readers if d is not None else {}
        stores = d.writers if d is not None and writable else {}
        self._r1: Callable[[int], int] | None = loads.get(1)
        self._r2: Callable[[int], int] | None = loads.get(2)
        self._r4: Callable[[int], int] | None = loads.get(4)
        self._r8: Callable[[int], int] | None = loads.get(8)
        self._w1: Callable[[int, int], None] | None = stores.get(1)
        self._w2: Callable[[int, int], None] | None = stores.get(2)
        self._w4: Callable[[int, int], None] | None = stores.get(4)
        self._w8: Callable[[int, int], None] | None = stores.get(8)
        self._lim1, self._lim2, self._lim4, self._lim8 = (
            self.size - 1, self.size - 2, self.size - 4, self.size - 8)
        # The window the compiled checked accessors use (read8/16/32,
        # write8/16/32, the block accessors): the whole region when its
        # loads and stores are the compiled plain ones, else empty (every
        # access refused there, so it goes through read()/write()).
        # Emptied on close, before the unmap.
        # (address, size in bytes); size 0 refuses every access
        self._win: Any = ffi.new("uint64_t[2]")
        self._wwin: Any = ffi.new("uint64_t[2]")  # for stores
        if d is not None and d.readers.get(4) is lib.pyvfio_read32:
            self._win[0:2] = [self._base, self.size]
            if writable and d.writers.get(4) is lib.pyvfio_write32:
                self._wwin[0:2] = [self._base, self.size]

    def describe(self) -> str:
        """``"mapping of device 0000:00:02.0 BAR0"``."""
        return f"mapping of {self.region.describe()}"

    @property
    def areas(self) -> tuple[SparseMmapArea, ...]:
        """The mapped areas (offset and size in bytes)."""
        return tuple(SparseMmapArea(o, s) for o, s, _m in self._maps)

    def _find(self, offset: int, size: int) -> tuple[MemoryMap, int]:
        self._check_open()
        single = self._single
        if single is not None and single[0] <= offset and offset + size <= single[0] + single[1]:
            return single[2], offset - single[0]
        for start, length, mm in self._maps:
            if start <= offset and offset + size <= start + length:
                return mm, offset - start
        areas = ", ".join(f"[{o:#x}, {o + s:#x})" for o, s, _m in self._maps)
        raise InvalidArgumentError(
            f"[{offset:#x}, {offset + size:#x}) is not inside a mapped area of "
            f"{self.region.name} (mapped: {areas}); vfio does not allow mapping the rest: "
            f"use the region's pread/pwrite accessors (region.read32 ...) there",
            target=self.describe())

    def _read(self, offset: int, width: int) -> int:
        mm, rel = self._find(offset, width)
        return mm.read(rel, width)

    # The typed accessors: one load or store, checked inline when the whole
    # region is mapped plain memory (the hot path of a driver), else through
    # read()/write() and their messages.
    @property
    def direct_path(self) -> bool:
        """The typed accessors load and store directly (the whole region is
        mapped plain memory, as on the real kernel); False where every
        access goes through the backend's mapping (the fake's devices)."""
        return self._direct is not None

    def read8(self, offset: int) -> int:
        """One 1-byte read at ``offset``."""
        if type(offset) is int:  # one compiled call checks and loads (-1: refused)
            try:
                value: int = _wread8(self._win, offset)
            except OverflowError:  # beyond int64: the checks below say so
                value = -1
            if value >= 0:
                return value
        return self.read(offset, 1)

    def read16(self, offset: int) -> int:
        """One 2-byte read at ``offset`` (2-byte aligned)."""
        if type(offset) is int:  # one compiled call checks and loads (-1: refused)
            try:
                value: int = _wread16(self._win, offset)
            except OverflowError:  # beyond int64: the checks below say so
                value = -1
            if value >= 0:
                return value
        return self.read(offset, 2)

    def read32(self, offset: int) -> int:
        """One 4-byte read at ``offset`` (4-byte aligned)."""
        if type(offset) is int:  # one compiled call checks and loads (-1: refused)
            try:
                value: int = _wread32(self._win, offset)
            except OverflowError:  # beyond int64: the checks below say so
                value = -1
            if value >= 0:
                return value
        return self.read(offset, 4)

    def read64(self, offset: int) -> int:
        """One 8-byte read at ``offset`` (8-byte aligned)."""
        load = self._r8
        if (load is not None and not self._closed and type(offset) is int
                and 0 <= offset <= self._lim8 and not offset & 7):
            return load(self._base + offset)
        return self.read(offset, 8)

    def write8(self, offset: int, value: int) -> None:
        """One 1-byte write at ``offset``."""
        if type(offset) is int:  # one compiled call checks and stores (-1: refused)
            try:
                if not _wwrite8(self._wwin, offset, value):
                    return
            except (OverflowError, TypeError):  # a value that does not fit: see write()
                pass
        self.write(offset, 1, value)

    def write16(self, offset: int, value: int) -> None:
        """One 2-byte write at ``offset`` (2-byte aligned)."""
        if type(offset) is int:  # one compiled call checks and stores (-1: refused)
            try:
                if not _wwrite16(self._wwin, offset, value):
                    return
            except (OverflowError, TypeError):  # a value that does not fit: see write()
                pass
        self.write(offset, 2, value)

    def write32(self, offset: int, value: int) -> None:
        """One 4-byte write at ``offset`` (4-byte aligned)."""
        if type(offset) is int:  # one compiled call checks and stores (-1: refused)
            try:
                if not _wwrite32(self._wwin, offset, value):
                    return
            except (OverflowError, TypeError):  # a value that does not fit: see write()
                pass
        self.write(offset, 4, value)

    def write64(self, offset: int, value: int) -> None:
        """One 8-byte write at ``offset`` (8-byte aligned)."""
        store = self._w8
        if (store is not None and not self._closed and type(offset) is int
                and 0 <= offset <= self._lim8 and not offset & 7
                and type(value) is int and 0 <= value <= 0xFFFFFFFFFFFFFFFF):
            store(self._base + offset, value)
        else:
            self.write(offset, 8, value)

    # The block accessors: one compiled loop over the window when it is
    # the whole region, else RegisterIO's loop over read()/write().
    def _read_block(self, offset: int, count: int, stride: int, width: int) -> array[int]:
        self._check_block(offset, count, stride, width)
        win = self._win
        if not win[1]:
            return super()._read_block(offset, count, stride, width)
        out = array(_TYPECODE[width], bytes(count * width))
        if count:
            _BLOCK_READ[width](win[0] + offset, stride, _from_buffer(_BLOCK_CTYPE[width], out),
                               count)
        return out

    def _write_block(self, offset: int, values: Sequence[int], stride: int,
                     width: int) -> None:
        win = self._wwin
        if not win[1]:
            super()._write_block(offset, values, stride, width)
            return
        self._check_block(offset, len(values), stride, width)
        try:
            data = ffi.new(_BLOCK_CTYPE[width], values)
        except (OverflowError, TypeError):  # a value that does not fit: RegisterIO says which
            super()._write_block(offset, values, stride, width)
            return
        if len(values):
            _BLOCK_WRITE[width](win[0] + offset, stride, data, len(values))

    def _write(self, offset: int, width: int, value: int) -> None:
        mm, rel = self._find(offset, width)
        if not self.writable:
            raise InvalidArgumentError("the mapping is read-only", target=self.describe())
        mm.write(rel, width, value)

    def read_bytes(self, offset: int, size: int) -> bytes:
        """Copy ``size`` bytes out (device memory such as a frame buffer,
        not registers: the copy uses whatever widths the CPU picks)."""
        mm, rel = self._find(offset, size)
        return mm.read_bytes(rel, size)

    def write_bytes(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` in (device memory, not registers)."""
        payload = memoryview(data).cast("B")
        mm, rel = self._find(offset, len(payload))
        if not self.writable:
            raise InvalidArgumentError("the mapping is read-only", target=self.describe())
        mm.write_bytes(rel, payload)

    def buffer(self, offset: int = 0, size: int | None = None) -> memoryview:
        """A memoryview of ``size`` bytes at ``offset`` (device memory only;
        do not use it after :meth:`close`).  Without ``size``: to the end of
        the mapped area that holds ``offset``."""
        if size is None:
            self._check_open()
            size = next((start + length - offset for start, length, _mm in self._maps
                         if start <= offset < start + length), 1)
        mm, rel = self._find(offset, size)
        return mm.buffer()[rel:rel + size]

    def address(self, offset: int = 0) -> int:
        """Process virtual address of byte ``offset`` of the region."""
        mm, rel = self._find(offset, 1)
        return mm.address + rel

    def _mark_closed(self) -> None:
        # the compiled accessors refuse every access from now on
        self._win[1] = self._wwin[1] = 0
        super()._mark_closed()

    def _release(self) -> None:
        # the compiled accessors refuse every access from now on
        self._win[1] = self._wwin[1] = 0
        errors: list[BaseException] = []
        for _o, _s, mm in self._maps:
            try:
                mm.close()
            except Exception as exc:  # keep unmapping the rest
                errors.append(exc)
        if self.region._mapping is self:
            self.region._mapping = None
        if errors:
            raise errors[0]


class RegionMap(Mapping[int, Region]):
    """A device's regions by index; also by name (``"BAR0"``, ``"config"``,
    ``"region9"``: case-insensitive) and by device-specific type.

    Thread safety: immutable after it is built (the device builds one, once,
    under its lock).
    """

    def __init__(self, regions: Iterable[Region]) -> None:
        self._by_index = {r.index: r for r in regions}
        self._by_name = {r.name.upper(): r for r in self._by_index.values()}

    def __getitem__(self, key: int | str) -> Region:
        if isinstance(key, str):
            region = self._by_name.get(key.upper())
            if region is None:
                raise KeyError(f"no region named {key!r} (regions: {', '.join(self.names)})")
            return region
        try:
            return self._by_index[key]
        except KeyError:
            raise KeyError(f"no region {key!r} (regions: {', '.join(self.names)})") from None

    def __iter__(self) -> Iterator[int]:
        return iter(sorted(self._by_index))

    def __len__(self) -> int:
        return len(self._by_index)

    def __repr__(self) -> str:
        return f"<RegionMap {', '.join(self.names)}>"

    @property
    def names(self) -> list[str]:
        """Region names, by index."""
        return [self._by_index[i].name for i in sorted(self._by_index)]

    @property
    def bars(self) -> list[Region]:
        """The BARs the device implements (non-empty BAR0..BAR5 regions)."""
        return [self._by_index[i] for i in sorted(self._by_index) if i <= 5
                and self._by_index[i].size > 0]

    def all_by_type(self, type: int, subtype: int | None = None) -> list[Region]:
        """Every device-specific region of ``type`` (and ``subtype``)."""
        out = []
        for i in sorted(self._by_index):
            t = self._by_index[i].type
            if t is not None and t[0] == type and (subtype is None or t[1] == subtype):
                out.append(self._by_index[i])
        return out

    def by_type(self, type: int, subtype: int | None = None) -> Region:
        """The first device-specific region of ``type`` (and ``subtype``),
        from ``VFIO_REGION_INFO_CAP_TYPE``; KeyError when there is none."""
        found = self.all_by_type(type, subtype)
        if not found:
            what = f"type {type:#x}" + (f" subtype {subtype:#x}" if subtype is not None else "")
            raise KeyError(f"no region of {what}")
        return found[0]

