"""A PCI function of the simulated machine (struct pci_dev): its identity
(from the topology or its model's config space), its place in the
hierarchy and in an IOMMU group, its driver and vfio state, and its DMA
(:mod:`.dma`)."""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any, Callable

from . import dma as _dma
from . import topology as _topology
from ..core import FakeFile, IoDomain, errno_error
from .iommu import ReservedRegion

if TYPE_CHECKING:
    from .iommu import IommuGroup
    from .system import System
    from .vfio_group import VfioGroup

__all__ = ["PciDevice"]


class PciDevice:
    """A PCI function of the simulated machine."""

    def __init__(self, system: System, spec: dict[str, Any], model: Any) -> None:
        self.system = system
        self.spec = spec
        self.bdf: str = spec["bdf"]
        self.model = model
        cfg = _model_config(model)
        known = _topology.KNOWN_MODELS.get(spec.get("model", ""), {}) if cfg is None else {}

        def ident(key: str, offset: int, size: int, fallback: int) -> int:
            if key in spec:
                return int(spec[key])
            if cfg is not None and len(cfg) >= offset + size:
                return int.from_bytes(cfg[offset:offset + size], "little")
            return int(known.get(key, fallback))

        self.vendor: int = ident("vendor", 0x00, 2, 0xFFFF)
        self.device: int = ident("device", 0x02, 2, 0xFFFF)
        self.revision: int = ident("revision", 0x08, 1, 0)
        self.class_code: int = ident("class", 0x09, 3, 0xFF0000)
        self.subsystem_vendor: int = ident("subsystem_vendor", 0x2C, 2, 0)
        self.subsystem_device: int = ident("subsystem_device", 0x2E, 2, 0)
        if self.vendor == 0xFFFF:
            raise _topology.TopologyError(
                f"device {self.bdf}: no vendor ID (give 'vendor' and 'device' or a model)")
        self.bridge: dict[str, Any] | None = spec.get("bridge")
        self.header_type: int = (
            1 if self.bridge is not None or (self.class_code >> 8) == 0x0604 else
            (cfg[0x0E] & 0x7F if cfg else 0)
        )
        self.default_driver: str | None = spec.get("default_driver")
        self.numa_node: int = spec.get("numa_node", -1)
        #: Supported reset methods (what the hardware offers) and the ones
        #: enabled through sysfs ``reset_method``.
        methods = spec.get("reset_methods")
        if methods is None:
            methods = getattr(model, "reset_methods", None) or []
        self.supported_reset_methods: list[str] = list(methods)
        self.reset_methods: list[str] = list(self.supported_reset_methods)
        self.extra_reserved = [ReservedRegion(r["start"], r["last"], r["type"])
                               for r in spec.get("reserved_regions", [])]
        self.group: IommuGroup | None = None
        self.parent: PciDevice | None = None
        self._sysfs_path: str | None = None  # set by fix_sysfs_path
        self.children: list[PciDevice] = []
        self.driver: str | None = None
        self.driver_override: str | None = None
        #: pci_enable_device count (sysfs ``enable``).
        self.enable_cnt = 0
        #: vfio device index while bound to vfio-pci (``vfioN``).
        self.vfio_index: int | None = None
        #: Registered as a no-IOMMU vfio device (``noiommu-vfioN``).
        self.vfio_noiommu = False
        #: What the device's DMA is translated through (None blocks DMA).
        self.domain: IoDomain | None = None
        #: PASID -> domain for PASID-tagged DMA.
        self.pasid_domains: dict[int, IoDomain] = {}
        #: Called by the fake when the kernel would send the device's
        #: request (REQ) interrupt: the vfio device file registers it.
        self.request_release: Callable[[], None] | None = None
        #: How many release requests were sent (vfio's ``ops->request`` count).
        self.release_requests = 0
        self.bar_addresses: dict[int, int] = {}

    def __repr__(self) -> str:
        return f"<PciDevice {self.bdf} {self.vendor:04x}:{self.device:04x} driver={self.driver}>"

    # -- identity -------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The device name, as the kernel's ``dev_name``: the BDF."""
        return self.bdf

    @property
    def domain_nr(self) -> int:
        """The PCI domain (segment) number of the BDF."""
        return int(self.bdf[:4], 16)

    @property
    def bus(self) -> int:
        """The bus number of the BDF."""
        return int(self.bdf[5:7], 16)

    @property
    def is_bridge(self) -> bool:
        """A PCI-to-PCI bridge (type 1 header)."""
        return self.header_type == 1

    @property
    def bars(self) -> list[dict[str, Any]]:
        """The BARs as topology entries (``index``, ``size``, ``type``, ``prefetchable``)."""
        model_bars = getattr(self.model, "bars", None)
        if isinstance(model_bars, dict):
            out = []
            for bar in model_bars.values():
                kind = getattr(bar, "kind", "mem32")
                out.append({"index": int(bar.index), "size": int(bar.size),
                            "type": str(getattr(kind, "value", kind)),
                            "prefetchable": bool(getattr(bar, "prefetchable", False))})
            return sorted(out, key=lambda b: b["index"])
        return list(self.spec.get("bars", []))

    @property
    def vfio_group(self) -> VfioGroup | None:
        """The vfio group while the device is bound to vfio-pci."""
        return self.group.vfio_group if self.group is not None else None

    @property
    def vfio_cdev_name(self) -> str | None:
        """``vfioN`` (``noiommu-vfioN``) while bound to vfio-pci."""
        if self.vfio_index is None:
            return None
        return f"{'noiommu-' if self.vfio_noiommu else ''}vfio{self.vfio_index}"

    @property
    def sysfs_path(self) -> str:
        """Canonical path under /sys/devices."""
        if self._sysfs_path is not None:
            return self._sysfs_path
        chain: list[str] = []
        dev: PciDevice | None = self
        while dev is not None:
            chain.append(dev.bdf)
            dev = dev.parent
        root = f"pci{self.bdf[:4]}:{chain[-1][5:7]}"
        return "/sys/devices/" + "/".join([root] + chain[::-1])

    def fix_sysfs_path(self) -> None:
        """Remember :attr:`sysfs_path` once the bridge hierarchy is built
        (it is fixed: no hotplug)."""
        self._sysfs_path = None
        self._sysfs_path = self.sysfs_path

    def config_bytes(self) -> bytes:
        """The configuration space as sysfs ``config`` shows it."""
        cfg = _model_config(self.model)
        if cfg is not None:
            return cfg
        return self._synth_config()

    def _synth_config(self) -> bytes:
        cfg = bytearray(256)
        cfg[0:2] = self.vendor.to_bytes(2, "little")
        cfg[2:4] = self.device.to_bytes(2, "little")
        cfg[8] = self.revision
        cfg[9:12] = self.class_code.to_bytes(3, "little")
        cfg[0x0E] = self.header_type
        if self.header_type == 0:
            cfg[0x2C:0x2E] = self.subsystem_vendor.to_bytes(2, "little")
            cfg[0x2E:0x30] = self.subsystem_device.to_bytes(2, "little")
            for bar in self.bars:
                off = 0x10 + 4 * bar["index"]
                addr = self.bar_addresses.get(bar["index"], 0)
                if bar["type"] == "io":
                    cfg[off:off + 4] = (addr | 1).to_bytes(4, "little")
                else:
                    low = addr & 0xFFFFFFF0
                    if bar["type"] == "mem64":
                        low |= 0x4
                    if bar["prefetchable"]:
                        low |= 0x8
                    cfg[off:off + 4] = low.to_bytes(4, "little")
                    if bar["type"] == "mem64":
                        cfg[off + 4:off + 8] = (addr >> 32).to_bytes(4, "little")
        elif self.bridge is not None:
            cfg[0x18] = self.bus
            cfg[0x19] = self.bridge["secondary_bus"]
            cfg[0x1A] = self.bridge["secondary_bus"]
        return bytes(cfg)

    # -- DMA ownership of this device (the cdev/iommufd path) ---------------------------
    def claim_dma_owner(self, owner: object) -> None:
        """iommu_device_claim_dma_owner for this device."""
        if self.group is None:
            # iommu_device_claim_dma_owner: ENODEV for a device without an IOMMU group
            raise errno_error(errno.ENODEV, f"{self.bdf} has no IOMMU group")
        self.group.device_claim_dma_owner(self, owner)

    def release_dma_owner(self) -> None:
        """iommu_device_release_dma_owner for this device."""
        assert self.group is not None
        self.group.device_release_dma_owner(self)

    # -- vfio state ------------------------------------------------------------------
    def vfio_files(self) -> list[FakeFile]:
        """Open vfio device files of this device (files with ``pdev`` == self
        in the backend's fd table; each holds a vfio registration)."""
        return [f for f in self.system.backend.open_files if getattr(f, "pdev", None) is self]

    @property
    def vfio_open(self) -> bool:
        """A vfio device file of the device is open."""
        return bool(self.vfio_files())

    # -- DMA -------------------------------------------------------------------------
    def dma_read(self, iova: int, length: int, *, pasid: int | None = None) -> bytes:
        """The device reads ``length`` bytes at ``iova``.

        Raises :class:`~pyvfio.fake.core.IommuFault` (and records a
        :class:`~pyvfio.fake.core.FaultRecord` in :attr:`System.faults <pyvfio.fake.System.faults>`) when
        any byte is not mapped readable.
        """
        return _dma.dma_read(self, iova, length, pasid)

    def dma_write(self, iova: int, data: bytes | bytearray | memoryview, *,
                  pasid: int | None = None) -> None:
        """The device writes ``data`` at ``iova`` (see :meth:`dma_read`)."""
        _dma.dma_write(self, iova, data, pasid)


def _model_config(model: Any) -> bytes | None:
    """The model's configuration space, whatever form the model keeps it in."""
    if model is None:
        return None
    getter = getattr(model, "config_bytes", None)
    if callable(getter):
        data = getter()
        return bytes(data)
    for attr in ("config", "config_space"):
        data = getattr(model, attr, None)
        if isinstance(data, (bytes, bytearray, memoryview)):
            return bytes(data)
        inner = getattr(data, "data", None)
        if isinstance(inner, (bytes, bytearray, memoryview)):
            return bytes(inner)
    reader = getattr(model, "read_config", None)
    if callable(reader):
        size = int(getattr(model, "config_size", 256))
        return bytes(reader(off, 1) & 0xFF for off in range(size))
    return None

