"""VFIO devices: opened through a group (legacy) or as a character device
bound to an iommufd (``/dev/vfio/devices/vfioN``).

::

    # iommufd + cdev
    with IommuFd() as iommufd, Device.open("0000:00:04.0") as dev:
        dev.bind(iommufd)
        ioas = iommufd.ioas()
        dev.attach(ioas)
        print(dev.info, dev.regions["BAR0"])

What a driver uses once the device is open:

* ``dev.regions`` (:mod:`pyvfio.core.region`): BARs, ROM, config and
  device-specific regions, with exact-width accessors through the device
  file and ``mmap()`` for MMIO;
* ``dev.config`` (:mod:`pyvfio.core.pci_config`): typed config-space access,
  capabilities, bus mastering;
* ``dev.irqs`` (:mod:`pyvfio.core.irq`): INTx/MSI/MSI-X/ERR/REQ with eventfds;
* ``dev.features`` (:mod:`pyvfio.core.features`): ``VFIO_DEVICE_FEATURE``;
* :meth:`Device.reset`, :meth:`Device.hot_reset_info`,
  :meth:`Device.hot_reset`, :attr:`Device.reset_methods`.

Mappings, enabled interrupts and feature fds are resources of the device:
closing the device closes them first.
"""

from __future__ import annotations

import enum
import errno
import os
import stat
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from .._uapi import ffi, lib
from ..backend import Backend, resolve_backend
from ..errors import (
    InvalidArgumentError,
    IoctlError,
    UnsupportedError,
    VfioError,
    ioctl_error,
)
from . import sysfs, viability
from ._passed import check_fd, class_device_of, fd_stat, shown_type
from .caps import Capability, RegionTypeCap, SparseMmapCap, parse_chain
from .features import DeviceFeatures
from .irq import Irq, IrqMap
from .pci_config import PciConfig
from .region import Region, RegionMap
from .resource import FdResource, check_u32, check_u64, open_node

if TYPE_CHECKING:
    import uuid  # annotations only: uuid (and platform) cost ~2 ms to import

    from .group import Group
    from .hw_pagetable import HWPT
    from .iommufd import IOAS, IommuFd

__all__ = [
    "Device",
    "DeviceInfo",
    "RegionInfo",
    "IrqInfo",
    "HotResetDevice",
    "PciRegion",
    "PciIrq",
    "region_offset",
]


class PciRegion(enum.IntEnum):
    """vfio-pci's fixed region indices.

    Thread safety: a constant; safe to share.
    """

    BAR0 = lib.VFIO_PCI_BAR0_REGION_INDEX
    BAR1 = lib.VFIO_PCI_BAR1_REGION_INDEX
    BAR2 = lib.VFIO_PCI_BAR2_REGION_INDEX
    BAR3 = lib.VFIO_PCI_BAR3_REGION_INDEX
    BAR4 = lib.VFIO_PCI_BAR4_REGION_INDEX
    BAR5 = lib.VFIO_PCI_BAR5_REGION_INDEX
    ROM = lib.VFIO_PCI_ROM_REGION_INDEX
    CONFIG = lib.VFIO_PCI_CONFIG_REGION_INDEX
    VGA = lib.VFIO_PCI_VGA_REGION_INDEX


class PciIrq(enum.IntEnum):
    """vfio-pci's IRQ indices.

    Thread safety: a constant; safe to share.
    """

    INTX = lib.VFIO_PCI_INTX_IRQ_INDEX
    MSI = lib.VFIO_PCI_MSI_IRQ_INDEX
    MSIX = lib.VFIO_PCI_MSIX_IRQ_INDEX
    ERR = lib.VFIO_PCI_ERR_IRQ_INDEX
    REQ = lib.VFIO_PCI_REQ_IRQ_INDEX


def region_offset(index: int) -> int:
    """File offset of vfio-pci region ``index`` (VFIO_PCI_INDEX_TO_OFFSET)."""
    return index << 40


@dataclass(frozen=True)
class DeviceInfo:
    """VFIO_DEVICE_GET_INFO.

    Thread safety: immutable; safe to share between threads.
    """

    flags: int  #: VFIO_DEVICE_FLAGS_* bits
    num_regions: int  #: how many region indexes exist
    num_irqs: int  #: how many interrupt indexes exist
    capabilities: tuple[Capability, ...]  #: the decoded capability chain

    @property
    def is_pci(self) -> bool:
        """A PCI device (VFIO_DEVICE_FLAGS_PCI): its regions and IRQs are
        indexed as in :class:`PciRegion` and :class:`PciIrq`."""
        return bool(self.flags & lib.VFIO_DEVICE_FLAGS_PCI)

    @property
    def can_reset(self) -> bool:
        """VFIO_DEVICE_RESET is available."""
        return bool(self.flags & lib.VFIO_DEVICE_FLAGS_RESET)


@dataclass(frozen=True)
class RegionInfo:
    """VFIO_DEVICE_GET_REGION_INFO: a region of the device file.

    Thread safety: immutable; safe to share between threads.
    """

    index: int  #: the region index (see PciRegion)
    flags: int  #: VFIO_REGION_INFO_FLAG_* bits
    size: int  #: bytes
    offset: int  #: file offset of the region in the device fd
    capabilities: tuple[Capability, ...]  #: the decoded capability chain

    @property
    def name(self) -> str:
        """``BAR0``..``BAR5``, ``ROM``, ``CONFIG``, ``VGA`` or ``region<N>``."""
        try:
            return PciRegion(self.index).name
        except ValueError:
            return f"region{self.index}"

    @property
    def readable(self) -> bool:
        """The region can be read (pread, or loads through a mapping)."""
        return bool(self.flags & lib.VFIO_REGION_INFO_FLAG_READ)

    @property
    def writable(self) -> bool:
        """The region can be written."""
        return bool(self.flags & lib.VFIO_REGION_INFO_FLAG_WRITE)

    @property
    def mmappable(self) -> bool:
        """The region (or the areas of its sparse-mmap capability) can be
        mapped into the process."""
        return bool(self.flags & lib.VFIO_REGION_INFO_FLAG_MMAP)

    @property
    def sparse_areas(self) -> tuple[tuple[int, int], ...] | None:
        """``(offset, size)`` of the mmap-able areas when the region is sparse."""
        for cap in self.capabilities:
            if isinstance(cap, SparseMmapCap):
                return tuple((a.offset, a.size) for a in cap.areas)
        return None

    @property
    def type(self) -> tuple[int, int] | None:
        """``(type, subtype)`` of a device-specific region."""
        for cap in self.capabilities:
            if isinstance(cap, RegionTypeCap):
                return cap.type, cap.subtype
        return None


@dataclass(frozen=True)
class IrqInfo:
    """VFIO_DEVICE_GET_IRQ_INFO: an interrupt index and its vector count.

    Thread safety: immutable; safe to share between threads.
    """

    index: int  #: the interrupt index (see PciIrq)
    flags: int  #: VFIO_IRQ_INFO_* bits
    count: int  #: how many interrupts the index has (0: none)

    @property
    def name(self) -> str:
        """``INTX``, ``MSI``, ``MSIX``, ``ERR``, ``REQ`` or ``irq<N>``."""
        try:
            return PciIrq(self.index).name
        except ValueError:
            return f"irq{self.index}"

    @property
    def eventfd(self) -> bool:
        """Vectors are signalled through eventfds (VFIO_IRQ_INFO_EVENTFD)."""
        return bool(self.flags & lib.VFIO_IRQ_INFO_EVENTFD)

    @property
    def maskable(self) -> bool:
        """Vectors can be masked and unmasked through VFIO_DEVICE_SET_IRQS."""
        return bool(self.flags & lib.VFIO_IRQ_INFO_MASKABLE)

    @property
    def automasked(self) -> bool:
        """The kernel masks the line when it fires (INTx): unmask it after
        handling."""
        return bool(self.flags & lib.VFIO_IRQ_INFO_AUTOMASKED)

    @property
    def noresize(self) -> bool:
        """The vector count is fixed once enabled: to use more vectors,
        disable and enable again (VFIO_IRQ_INFO_NORESIZE)."""
        return bool(self.flags & lib.VFIO_IRQ_INFO_NORESIZE)


@dataclass(frozen=True)
class HotResetDevice:
    """A device affected by a PCI hot reset (VFIO_DEVICE_GET_PCI_HOT_RESET_INFO).

    Thread safety: immutable; safe to share between threads.
    """

    segment: int  #: PCI segment (domain)
    bus: int  #: PCI bus number
    devfn: int  #: device << 3 | function
    #: IOMMU group (group form) or iommufd dev_id (cdev form; -1 when the
    #: device is not owned by the caller, 0 when owned but unbound).
    id: int

    @property
    def bdf(self) -> str:
        """The affected device's PCI address, ``0000:00:04.0``."""
        return f"{self.segment:04x}:{self.bus:02x}:{self.devfn >> 3:02x}.{self.devfn & 7}"


class Device(FdResource):
    """An open VFIO device.

    Obtain one with :meth:`pyvfio.Group.open_device` (legacy) or
    :meth:`Device.open` (cdev; then :meth:`bind` to an iommufd).

    Thread safety: safe to use from several threads for I/O and queries:
    :attr:`info`, :attr:`regions`, :attr:`irqs` and :attr:`config` are
    built once under the device's lock (every thread sees the same
    :class:`~pyvfio.core.region.Region` and :class:`~pyvfio.core.irq.Irq`
    objects), ``pread``/``pwrite``, resets and interrupt set-up are ioctls
    or syscalls the kernel serialises.  Set it up (:meth:`bind`,
    :meth:`attach`, :meth:`detach`) from one thread, and close it after
    the others are done.
    """

    kind = "device"

    def __init__(self, fd: int, name: str, *, backend: Backend | None = None,
                 group: Group | None = None, path: str | None = None) -> None:
        super().__init__(fd, backend)
        self.name = name  #: the device name (PCI address for PCI devices)
        self.group = group  #: the group it was opened through (legacy path)
        self.path = path  #: the cdev path (cdev path)
        self._iommufd: IommuFd | None = None
        self._dev_id: int | None = None
        self._attached: dict[int | None, IOAS | HWPT] = {}
        self._info: DeviceInfo | None = None
        self._regions: RegionMap | None = None
        self._irqs: IrqMap | None = None
        self._config: PciConfig | None = None
        # Builds the cached tables above once (re-entered: regions needs info).
        self._lock = threading.RLock()

    @classmethod
    def open(cls, device: str, *, backend: Backend | None = None) -> Device:
        """Open a device's vfio character device, by PCI address or by path
        (``/dev/vfio/devices/vfioN``)."""
        b = resolve_backend(backend)
        if device.startswith("/"):
            path, name = device, device
        else:
            name = sysfs.normalize_bdf(device)
            path = sysfs.device_cdev_path(name, b)
        fd = open_node(b, path)
        return cls(fd, name, backend=b, path=path)

    @classmethod
    def from_fd(cls, fd: int, *, closefd: bool = True, name: str | None = None,
                group: Group | None = None, backend: Backend | None = None) -> Device:
        """A device opened elsewhere, e.g. received from a privileged
        process (:mod:`pyvfio.toolkit.fdpass`) or inherited.  Either

        * a cdev fd (``/dev/vfio/devices/vfioN``, a character device): its
          PCI address comes from sysfs (``name``, when given, must match);
          :meth:`bind` it to an iommufd as usual; or
        * a device fd from VFIO_GROUP_GET_DEVICE_FD (an anonymous inode):
          checked with VFIO_DEVICE_GET_INFO, named ``name`` (its PCI
          address: the fd does not say), already usable with the
          container its group is attached to; ``group`` (the
          :class:`~pyvfio.Group`, e.g. from ``Group.from_fd``) closes it
          before the group is closed.

        Anything else is an InvalidArgumentError (ENOTTY).

        ``closefd`` says who closes ``fd``: True (the default, as with
        Rust's ``OwnedFd::from_raw_fd`` and :func:`os.fdopen`) gives it to
        the object, which closes it on :meth:`close`; False borrows it:
        closing the object releases what pyvfio made through it and leaves
        ``fd`` open, the caller's to close.  When a check fails, nothing
        is closed and the fd is still the caller's."""
        b = resolve_backend(backend)
        check_fd(fd, "Device.from_fd")
        if name is not None:
            try:
                name = sysfs.normalize_bdf(name)
            except InvalidArgumentError:
                pass  # a non-PCI device's name
        st = fd_stat(b, fd, "Device.from_fd")
        if stat.S_ISCHR(st.st_mode):
            what = "a VFIO device cdev (/dev/vfio/devices/vfioN)"
            found = class_device_of(b, st, fd, what, ("vfio-dev",))
            if group is not None:
                raise InvalidArgumentError(f"fd {fd} is a cdev: it belongs to no group "
                                           f"({group.describe()} given)")
            path = None if found is None else f"/dev/vfio/devices/{found[1]}"
            bdf = None if found is None else _cdev_bdf(b, found[1])
            if bdf is not None and name is not None and name != bdf:
                raise InvalidArgumentError(f"fd {fd} is the cdev of {bdf}, not of {name}")
            obj = cls(fd, bdf or name or (found[1] if found else f"fd {fd}"), backend=b,
                      path=path)
        elif stat.S_IFMT(st.st_mode) not in (0, stat.S_IFREG):
            # an anonymous inode has no file type (or S_IFREG): a socket,
            # pipe, directory or block device cannot be a device fd
            raise InvalidArgumentError(f"fd {fd} is {shown_type(st)}, not a VFIO device",
                                       err=errno.ENOTTY)
        else:
            obj = cls(fd, name or f"fd {fd}", backend=b, group=group)
            obj._closefd = False  # the caller's until the check passed
            try:
                obj._info = obj._query_info()
            except (OSError, VfioError) as exc:
                obj.close()
                raise InvalidArgumentError(
                    f"fd {fd} is {shown_type(st)}, not a VFIO device "
                    f"(VFIO_DEVICE_GET_INFO: {errno.errorcode.get(exc.errno or 0, exc.errno)})",
                    err=errno.ENOTTY) from None
            if group is not None:
                group._adopt(obj)
        obj._closefd = closefd
        return obj

    def describe(self) -> str:
        return f"device {self.name}"

    def _hint(self, err: int, name: str, arg: Any, target: Any) -> str | None:
        if name == "VFIO_DEVICE_ATTACH_IOMMUFD_PT" and err == errno.EADDRINUSE:
            return self._misaligned_mapping(int(arg.pt_id))
        # vfio_device_fops_unl_ioctl: a cdev not bound to an iommufd answers
        # every ioctl but the bind with EINVAL (access not granted yet).
        if (err != errno.EINVAL or self.group is not None or self._dev_id is not None
                or name == "VFIO_DEVICE_BIND_IOMMUFD"):
            return None
        if name != "VFIO_DEVICE_GET_INFO":
            # Another EINVAL (a bad index ...) unless GET_INFO fails too.
            probe = ffi.new("struct vfio_device_info *")
            probe.argsz = ffi.sizeof(probe[0])
            try:
                self._backend.ioctl(self._fd, lib.VFIO_DEVICE_GET_INFO, probe)
                return None
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    return None
        return ("the device is not bound to an iommufd yet: call device.bind(iommufd) "
                "first (then device.attach(ioas) for DMA); until then the kernel refuses "
                "its info, regions and interrupts")

    def _misaligned_mapping(self, pt_id: int) -> str | None:
        # iopt_check_iova_alignment: EADDRINUSE when a mapping of the IOAS
        # is not aligned to the IOMMU page size the device brings.
        pt = self._iommufd._objects.get(pt_id) if self._iommufd is not None else None
        page = self._backend.page_size
        for m in getattr(pt, "mappings", ()):
            if m.iova % page or m.length % page:
                return (f"{m.describe()} is not page-aligned, and the device's IOMMU maps "
                        f"whole {page:#x}-byte pages: close it and map page-aligned memory "
                        "(a pyvfio.DmaBuffer or an mmap.mmap)")
        return None

    # -- iommufd binding (cdev) ---------------------------------------------------------------
    @property
    def dev_id(self) -> int | None:
        """The iommufd device ID once bound."""
        return self._dev_id

    @property
    def iommufd(self) -> IommuFd | None:
        """The iommufd the device is bound to."""
        return self._iommufd

    def bind(self, iommufd: IommuFd, token: uuid.UUID | None = None) -> int:
        """Bind this open device file to an iommufd (VFIO_DEVICE_BIND_IOMMUFD);
        returns the device's ID in the iommufd.  ``token`` is the VF token
        of an SR-IOV PF/VF pair, if one is set.

        Not to be confused with :func:`pyvfio.setup.binding.bind` (``pyvfio
        bind``), which binds the PCI device to a kernel driver (vfio-pci)
        so that its vfio files exist at all: that comes first, once per
        boot; this call then claims the opened device for an iommufd."""
        self._check_open()
        iommufd._check_open()
        arg = ffi.new("struct vfio_device_bind_iommufd *")
        arg.argsz = ffi.sizeof(arg[0])
        arg.iommufd = iommufd.fd
        token_buf = None
        if token is not None:
            token_buf = ffi.new("char[16]", token.bytes)
            arg.flags = lib.VFIO_DEVICE_BIND_FLAG_TOKEN
            arg.token_uuid_ptr = int(ffi.cast("uintptr_t", token_buf))
        try:
            self._ioctl("VFIO_DEVICE_BIND_IOMMUFD", lib.VFIO_DEVICE_BIND_IOMMUFD, arg)
        except IoctlError as exc:
            if exc.errno == errno.EPERM:
                self._raise_not_viable(exc)
            raise
        self._iommufd = iommufd
        self._dev_id = int(arg.out_devid)
        return self._dev_id

    def _raise_not_viable(self, exc: IoctlError) -> None:
        """EPERM from VFIO_DEVICE_BIND_IOMMUFD: when a device of the group is
        on a host driver, raise the explained :class:`NotViableError`."""
        try:
            verdict = viability.explain_device(self.bdf, self._backend)
        except (VfioError, OSError):
            return  # not a PCI device, or its group cannot be read
        if verdict.blockers:
            raise verdict.error(ioctl="VFIO_DEVICE_BIND_IOMMUFD", target=self.describe(),
                                  cause=exc) from None

    def attach(self, pt: IOAS | HWPT, *, pasid: int | None = None) -> int:
        """VFIO_DEVICE_ATTACH_IOMMUFD_PT: route the device's DMA (or one
        PASID's) through an IOAS or HWPT.  Attaching while attached replaces
        the page table atomically.  Returns the ID the kernel attached (the
        automatically created HWPT's when ``pt`` is an IOAS)."""
        self._check_open()
        pt._check_open()
        if self._dev_id is None:
            raise InvalidArgumentError("bind the device to an iommufd first",
                                       ioctl="VFIO_DEVICE_ATTACH_IOMMUFD_PT",
                                       target=self.describe())
        arg = ffi.new("struct vfio_device_attach_iommufd_pt *")
        arg.argsz = ffi.sizeof(arg[0])
        arg.pt_id = pt.id
        if pasid is not None:
            check_u32("pasid", pasid, ioctl="VFIO_DEVICE_ATTACH_IOMMUFD_PT",
                      target=self.describe())
            arg.flags = lib.VFIO_DEVICE_ATTACH_PASID
            arg.pasid = pasid
        self._ioctl("VFIO_DEVICE_ATTACH_IOMMUFD_PT", lib.VFIO_DEVICE_ATTACH_IOMMUFD_PT, arg)
        old = self._attached.get(pasid)
        if old is not None:
            old._attached.pop((id(self), pasid), None)
        self._attached[pasid] = pt
        pt._attached[(id(self), pasid)] = self
        return int(arg.pt_id)

    def replace(self, pt: IOAS | HWPT, *, pasid: int | None = None) -> int:
        """Replace the attached page table (same as :meth:`attach` when attached)."""
        return self.attach(pt, pasid=pasid)

    def detach(self, *, pasid: int | None = None) -> None:
        """VFIO_DEVICE_DETACH_IOMMUFD_PT: DMA (of ``pasid``) is blocked again."""
        self._check_open()
        arg = ffi.new("struct vfio_device_detach_iommufd_pt *")
        arg.argsz = ffi.sizeof(arg[0])
        if pasid is not None:
            check_u32("pasid", pasid, ioctl="VFIO_DEVICE_DETACH_IOMMUFD_PT",
                      target=self.describe())
            arg.flags = lib.VFIO_DEVICE_DETACH_PASID
            arg.pasid = pasid
        self._ioctl("VFIO_DEVICE_DETACH_IOMMUFD_PT", lib.VFIO_DEVICE_DETACH_IOMMUFD_PT, arg)
        old = self._attached.pop(pasid, None)
        if old is not None:
            old._attached.pop((id(self), pasid), None)

    @property
    def attached(self) -> IOAS | HWPT | None:
        """The IOAS or HWPT the device (without PASID) is attached to."""
        return self._attached.get(None)

    # -- information ------------------------------------------------------------------------
    @property
    def info(self) -> DeviceInfo:
        """VFIO_DEVICE_GET_INFO (cached after the first call)."""
        self._check_open()
        if self._info is None:
            with self._lock:
                if self._info is None:
                    self._info = self._query_info()
        return self._info

    def _query_info(self) -> DeviceInfo:
        info, raw = self._ioctl_argsz("VFIO_DEVICE_GET_INFO", lib.VFIO_DEVICE_GET_INFO,
                                      "struct vfio_device_info")
        caps: list[Capability] = []
        if info.flags & lib.VFIO_DEVICE_FLAGS_CAPS and info.cap_offset:
            caps = parse_chain("device", raw, int(info.cap_offset), int(info.argsz))
        return DeviceInfo(int(info.flags), int(info.num_regions), int(info.num_irqs),
                          tuple(caps))

    def region_info(self, index: int) -> RegionInfo:
        """VFIO_DEVICE_GET_REGION_INFO of region ``index``, capabilities parsed."""
        check_u64("index", index, ioctl="VFIO_DEVICE_GET_REGION_INFO", target=self.describe())

        def fill(info: Any) -> None:
            info.index = index

        info, raw = self._ioctl_argsz("VFIO_DEVICE_GET_REGION_INFO",
                                      lib.VFIO_DEVICE_GET_REGION_INFO, "struct vfio_region_info",
                                      fill, target=f"{self.describe()} region {index}")
        caps: list[Capability] = []
        if info.flags & lib.VFIO_REGION_INFO_FLAG_CAPS and info.cap_offset:
            caps = parse_chain("region", raw, int(info.cap_offset), int(info.argsz))
        return RegionInfo(index, int(info.flags), int(info.size), int(info.offset), tuple(caps))

    @property
    def regions(self) -> RegionMap:
        """The device's regions (:class:`~pyvfio.core.region.RegionMap`): by index
        (``regions[0]``), by name (``regions["BAR0"]``) or by device-specific
        type (``regions.by_type(type, subtype)``).  Indices the device does
        not implement (vfio-pci's VGA region without VGA, for example:
        EINVAL) are left out.  Queried once, then cached."""
        self._check_open()
        if self._regions is None:
            with self._lock:  # one table for every thread
                if self._regions is None:
                    regions: list[Region] = []
                    for i in range(self.info.num_regions):
                        try:
                            regions.append(Region(self, self.region_info(i)))
                        except IoctlError as exc:
                            if exc.errno != errno.EINVAL:
                                raise
                    self._regions = RegionMap(regions)
        return self._regions

    @property
    def config(self) -> PciConfig:
        """PCI configuration space (:class:`~pyvfio.core.pci_config.PciConfig`)
        through the ``CONFIG`` region."""
        self._check_open()
        if self._config is None:
            with self._lock:
                if self._config is None:
                    try:
                        region = self.regions[PciRegion.CONFIG]
                    except KeyError:
                        raise UnsupportedError(
                            errno.EINVAL, f"{self.describe()} has no PCI config region",
                            target=self.describe()) from None
                    self._config = PciConfig(region)
        return self._config

    @property
    def features(self) -> DeviceFeatures:
        """``VFIO_DEVICE_FEATURE`` (:class:`~pyvfio.core.features.DeviceFeatures`)."""
        self._check_open()
        return DeviceFeatures(self)

    def irq_info(self, index: int) -> IrqInfo:
        """VFIO_DEVICE_GET_IRQ_INFO of interrupt index ``index``."""
        check_u64("index", index, ioctl="VFIO_DEVICE_GET_IRQ_INFO", target=self.describe())
        arg = ffi.new("struct vfio_irq_info *")
        arg.argsz = ffi.sizeof(arg[0])
        arg.index = index
        self._ioctl("VFIO_DEVICE_GET_IRQ_INFO", lib.VFIO_DEVICE_GET_IRQ_INFO, arg,
                    target=f"{self.describe()} irq {index}")
        return IrqInfo(index, int(arg.flags), int(arg.count))

    @property
    def irqs(self) -> IrqMap:
        """The device's interrupt indexes (:class:`~pyvfio.core.irq.IrqMap` of
        :class:`~pyvfio.core.irq.Irq`): by index (``irqs[PciIrq.MSI]``) or name
        (``irqs["MSIX"]``).  Indices the device does not implement
        (the ERR index of a conventional PCI function on kernels before
        7.x: EINVAL) are left out.
        Queried once, then cached."""
        self._check_open()
        if self._irqs is None:
            with self._lock:  # one Irq per index for every thread
                if self._irqs is None:
                    irqs: list[Irq] = []
                    for i in range(self.info.num_irqs):
                        try:
                            irqs.append(Irq(self, self.irq_info(i)))
                        except IoctlError as exc:
                            if exc.errno != errno.EINVAL:
                                raise
                    self._irqs = IrqMap(irqs)
        return self._irqs

    # -- region access ----------------------------------------------------------------------
    def _region(self, region: Region | RegionInfo | int) -> RegionInfo:
        if isinstance(region, Region):
            return region.info
        if isinstance(region, RegionInfo):
            return region
        if self._regions is not None and region in self._regions:
            return self._regions[region].info
        return self.region_info(region)

    def pread(self, region: Region | RegionInfo | int, offset: int, size: int) -> bytes:
        """Read ``size`` bytes at ``offset`` of a region via pread(2).

        vfio-pci splits the request into the widest naturally aligned
        accesses (8, 4, 2, 1 bytes): a read of 1, 2, 4 or 8 aligned bytes
        is one device access of that width."""
        info = self._region(region)
        self._check_region_range(info, offset, size)
        try:
            return self._backend.pread(self.fd, size, info.offset + offset)
        except OSError as exc:
            if isinstance(exc, VfioError):
                raise
            raise ioctl_error(exc.errno or errno.EIO, "pread", f"{self.describe()} {info.name}") from None

    def pwrite(self, region: Region | RegionInfo | int, offset: int,
               data: bytes | bytearray | memoryview) -> int:
        """Write ``data`` at ``offset`` of a region via pwrite(2) (split
        like :meth:`pread`)."""
        info = self._region(region)
        payload = bytes(data)
        self._check_region_range(info, offset, len(payload))
        try:
            return self._backend.pwrite(self.fd, payload, info.offset + offset)
        except OSError as exc:
            if isinstance(exc, VfioError):
                raise
            raise ioctl_error(exc.errno or errno.EIO, "pwrite", f"{self.describe()} {info.name}") from None

    def _check_region_range(self, info: RegionInfo, offset: int, size: int) -> None:
        if offset < 0 or size < 0 or offset + size > info.size:
            raise InvalidArgumentError(
                f"[{offset:#x}, +{size:#x}) is outside {info.name} ({info.size:#x} bytes)",
                target=self.describe())

    # -- sysfs --------------------------------------------------------------------------------
    @property
    def bdf(self) -> str:
        """The PCI address (``0000:00:04.0``), also for a device opened by
        its cdev path."""
        try:
            return sysfs.normalize_bdf(self.name)
        except InvalidArgumentError:
            pass
        cdev = self.name.rsplit("/", 1)[-1]
        for bdf in self._backend.sysfs_listdir(sysfs.PCI_DEVICES):
            try:
                names = self._backend.sysfs_listdir(f"{sysfs.PCI_DEVICES}/{bdf}/vfio-dev")
            except OSError:
                continue
            if cdev in names:
                return bdf
        raise UnsupportedError(errno.ENODEV, f"cannot find the PCI address of {self.describe()}",
                               target=self.describe())

    @property
    def sysfs_path(self) -> str:
        """``/sys/bus/pci/devices/<bdf>``."""
        return f"{sysfs.PCI_DEVICES}/{self.bdf}"

    @property
    def reset_methods(self) -> list[str]:
        """The PCI reset methods the kernel will try, best first
        (``reset_method`` in sysfs: ``flr``, ``pm``, ``bus`` ...); empty
        when the device has none."""
        self._check_open()
        try:
            text = self._backend.sysfs_read(f"{self.sysfs_path}/reset_method")
        except OSError:
            return []
        return text.split()

    # -- reset ------------------------------------------------------------------------------
    def reset(self) -> None:
        """VFIO_DEVICE_RESET: a function-level reset (FLR or the best
        available method).  :class:`UnsupportedError` (EINVAL, as the
        kernel would give) when the device reports no reset method."""
        self._check_open()
        if not self.info.can_reset:
            raise UnsupportedError(
                errno.EINVAL,
                f"VFIO_DEVICE_RESET on {self.describe()}: the device has no reset method "
                "(VFIO_DEVICE_FLAGS_RESET is clear)",
                ioctl="VFIO_DEVICE_RESET", target=self.describe())
        self._ioctl("VFIO_DEVICE_RESET", lib.VFIO_DEVICE_RESET)

    def hot_reset_info(self) -> list[HotResetDevice]:
        """VFIO_DEVICE_GET_PCI_HOT_RESET_INFO: devices a bus reset would affect."""
        name = "VFIO_DEVICE_GET_PCI_HOT_RESET_INFO"
        count = 8
        while True:
            size = (ffi.sizeof("struct vfio_pci_hot_reset_info")
                    + count * ffi.sizeof("struct vfio_pci_dependent_device"))
            raw = ffi.new("char[]", size)
            arg = ffi.cast("struct vfio_pci_hot_reset_info *", raw)
            arg.argsz = size
            try:
                self._ioctl(name, lib.VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, raw)
            except OSError as exc:
                # ENOSPC: the array was too small; count says how many.
                if exc.errno == errno.ENOSPC and arg.count > count:
                    count = int(arg.count)
                    continue
                raise
            cdev = bool(arg.flags & lib.VFIO_PCI_HOT_RESET_FLAG_DEV_ID)
            out = []
            for d in arg.devices[0: int(arg.count)]:
                ident = ffi.cast("__s32", d.devid) if cdev else d.group_id
                out.append(HotResetDevice(int(d.segment), int(d.bus), int(d.devfn), int(ident)))
            return out

    def hot_reset(self, groups: Sequence[Group] = ()) -> None:
        """VFIO_DEVICE_PCI_HOT_RESET.  Legacy form: pass the open groups of
        every affected device.  cdev form (no groups): the kernel checks that
        every affected device is bound to the same iommufd."""
        fds = [g.fd for g in groups]
        size = ffi.sizeof("struct vfio_pci_hot_reset") + 4 * len(fds)
        raw = ffi.new("char[]", size)
        arg = ffi.cast("struct vfio_pci_hot_reset *", raw)
        arg.argsz = size
        arg.count = len(fds)
        for i, fd in enumerate(fds):
            arg.group_fds[i] = fd
        self._ioctl("VFIO_DEVICE_PCI_HOT_RESET", lib.VFIO_DEVICE_PCI_HOT_RESET, raw)

    # -- lifetime -----------------------------------------------------------------------------
    def _release(self) -> None:
        for pasid, pt in self._attached.items():
            pt._attached.pop((id(self), pasid), None)
        self._attached.clear()
        self._iommufd = None
        self._dev_id = None
        super()._release()


def _cdev_bdf(backend: Backend, cdev: str) -> str | None:
    """The PCI address of the device whose cdev is ``vfioN``: the parent of
    its class device (``/sys/class/vfio-dev/vfioN`` links to
    ``.../<bdf>/vfio-dev/vfioN``); None when sysfs does not say."""
    try:
        parts = os.path.normpath(backend.sysfs_readlink(f"/sys/class/vfio-dev/{cdev}")).split("/")
        return sysfs.normalize_bdf(parts[-3])
    except (OSError, IndexError, VfioError):
        return None
