"""Device models of the fake kernel and the registry topologies use.

``create(spec)`` builds the :class:`~pyvfio.fake.machine.pci.DeviceModel` a
topology entry names in its ``model`` key:

========================  ==================================================
``generic``               identity and BARs from the spec, RAM-backed BARs,
                          PM + MSI + PCIe (FLR) capabilities
``edu``                   QEMU's ``edu`` educational device (:mod:`.edu`)
``nvme``                  an NVMe controller like QEMU's ``nvme`` (:mod:`.nvme`)
``igb``                   an Intel 82576 NIC like QEMU's ``igb`` (:mod:`.igb`)
``e1000e``, ``e1000``,    stand-ins for devices only kernel drivers use in
``pcie-pci-bridge``, ...  the topologies: generic models with the real
                          devices' IDs, class and BAR layout
========================  ==================================================

Register your own with :func:`register`.

Live migration
--------------

On Linux a device whose state can be saved and restored gets a vfio
variant driver (``mlx5_vfio_pci``, ``hisi_acc_vfio_pci``, the ``mtty``
sample) that adds the migration features to vfio-pci.  In the fake, a
model that can save and restore its state subclasses
:class:`MigratableDevice` (``edu`` does), and the topology turns migration
on per device with ``model_migration``::

    {"bdf": "0000:00:02.0", "model": "edu",
     "model_migration": {"flags": ["STOP_COPY", "P2P", "PRE_COPY"],
                         "dma_logging": true}}

``flags`` are the ``VFIO_MIGRATION_*`` bits the device reports, by name
(``STOP_COPY``, ``P2P``, ``PRE_COPY``; ``STOP_COPY`` is required and the
default),
``dma_logging`` adds ``VFIO_DEVICE_FEATURE_DMA_LOGGING_*`` (default
false); ``"model_migration": true`` means every flag and DMA logging.  The
fake's vfio-pci then serves ``VFIO_DEVICE_FEATURE_MIGRATION``,
``MIG_DEVICE_STATE`` with its data fds, ``MIG_DATA_SIZE``,
``MIG_PRECOPY_INFOv2`` and, with ``dma_logging``, the DMA logging features
for the device (:mod:`pyvfio.fake.vfio_pci` describes the rules); without
the key the device answers ``ENOTTY`` for them, as under plain vfio-pci.
:func:`create` refuses the key for a model that cannot save its state.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from ..machine.pci import (
    PCI_EXP_DEVCAP2_ATOMIC_COMP32,
    PCI_EXP_DEVCAP2_ATOMIC_COMP64,
    Bar,
    DeviceModel,
)
from ._migration import DmaDirtyLog, MigratableDevice, MigrationCapability

__all__ = ["create", "register", "available", "GenericDevice", "ModelFactory", "MigratableDevice",
           "MigrationCapability", "DmaDirtyLog"]

#: ``spec -> model``.
ModelFactory = Callable[[Mapping[str, Any]], DeviceModel]


class GenericDevice(DeviceModel):
    """A function with no behaviour of its own.

    Memory BARs are plain RAM (what is written reads back; mmap gives real
    memory), I/O BARs are RAM too.  Capabilities: PM, MSI (1 vector,
    64-bit) and, for PCI Express (the default), the Express capability with
    FLR when ``reset_methods`` includes ``"flr"`` (or is not given).

    Extra spec keys: ``pcie`` (bool), ``model_msi_vectors`` (int),
    ``model_msix_vectors`` (int, adds a register BAR for the table) and
    ``model_atomic_comp`` (list of 32/64/128).  No live migration
    (``model_migration``): the BARs' contents can change behind the
    device's back through their mappings.
    """

    model_name = "generic"

    def __init__(self, spec: Mapping[str, Any] | None = None) -> None:
        spec = dict(spec or {})
        bars = spec.get("bars")
        if bars is None:
            bars = [{"index": 0, "size": 0x1000, "type": "mem32"}]
        spec["bars"] = [
            b if isinstance(b, Bar) else Bar(
                index=int(b["index"]), size=int(b["size"]), kind=str(b.get("type", "mem32")),
                prefetchable=bool(b.get("prefetchable", False)), ram=True,
            )
            for b in bars
        ]
        super().__init__(spec)
        methods = spec.get("reset_methods") or []
        self.add_pm_capability(no_soft_reset="pm" not in methods)
        self.add_msi_capability(int(spec.get("model_msi_vectors", 1)))
        msix_vectors = int(spec.get("model_msix_vectors", 0))
        if msix_vectors:
            free = next(i for i in range(6) if self._slot_free(i))
            table = max(0x1000, (msix_vectors * 16 + 0x7FF) & ~0x7FF)
            size = 1 << (2 * table - 1).bit_length()
            self.bars[free] = Bar(free, size)
            self._init_bar(self.bars[free])
            self.add_msix_capability(msix_vectors, table_bar=free, table_offset=0, pba_offset=table)
        if self.pcie:
            methods = methods or ["flr"]
            atomic = 0
            for width, bit in ((32, PCI_EXP_DEVCAP2_ATOMIC_COMP32), (64, PCI_EXP_DEVCAP2_ATOMIC_COMP64),
                               (128, 0x200)):
                if width in spec.get("model_atomic_comp", ()):
                    atomic |= bit
            self.add_pcie_capability(flr="flr" in methods, atomic_completer=atomic)

    def _slot_free(self, index: int) -> bool:
        for bar in self.bars.values():
            if bar.index == index or (bar.is_64bit and bar.index + 1 == index):
                return False
        return True


def _stand_in(name: str, ids: Mapping[str, Any], bars: tuple[Bar, ...], *, pcie: bool = True,
              interrupt_pin: int = 1) -> ModelFactory:
    def factory(spec: Mapping[str, Any]) -> DeviceModel:
        full: dict[str, Any] = dict(ids)
        full["pcie"] = pcie
        full.update({k: v for k, v in spec.items() if v is not None})
        if "bars" not in spec or spec["bars"] is None:
            full["bars"] = [
                {"index": b.index, "size": b.size, "type": str(b.kind.value if hasattr(b.kind, "value") else b.kind),
                 "prefetchable": b.prefetchable} for b in bars
            ]
        model = GenericDevice(full)
        model.model_name = name
        return model

    return factory


class _BridgeStandIn(DeviceModel):
    """A PCI-to-PCI bridge's header (type 1); vfio-pci refuses bridges."""

    model_name = "pcie-pci-bridge"
    vendor_id = 0x1B36
    device_id = 0x000E
    class_code = 0x060400

    def __init__(self, spec: Mapping[str, Any] | None = None) -> None:
        spec = dict(spec or {})
        spec["bars"] = []
        super().__init__(spec)
        self.init_config(0x0E, 0x01, 1)  # header type 1
        # QEMU's pcie-pci-bridge has power management without No_Soft_Reset
        # (Linux offers it a "pm" reset)
        self.add_pm_capability(no_soft_reset=False)
        if self.pcie:
            self.add_pcie_capability(flr=False, port_type=0x8)  # PCIe to PCI bridge


_REGISTRY: dict[str, ModelFactory] = {}


def register(name: str, factory: ModelFactory) -> None:
    """Make ``{"model": name}`` build a model with ``factory(spec)``."""
    _REGISTRY[name] = factory


def available() -> list[str]:
    """Names :func:`create` accepts."""
    return sorted(_REGISTRY)


def create(spec: Mapping[str, Any]) -> DeviceModel:
    """Build the model a topology entry describes (``spec["model"]``,
    default ``"generic"``).  Raises ``KeyError`` for an unknown model and
    ``ValueError`` for an invalid spec."""
    name = spec.get("model") or "generic"
    factory = _REGISTRY.get(str(name))
    if factory is None:
        raise KeyError(f"unknown device model {name!r} (known: {', '.join(available())})")
    model = factory(spec)
    if spec.get("model_migration") not in (None, False) and (
            not isinstance(model, MigratableDevice) or model.migration is None):
        raise ValueError(f"model {name!r} cannot save its state: model_migration is not supported")
    return model


def _edu(spec: Mapping[str, Any]) -> DeviceModel:
    from .edu import EduDevice

    return EduDevice(spec)


def _nvme(spec: Mapping[str, Any]) -> DeviceModel:
    from .nvme import NvmeController

    return NvmeController(spec)


def _igb(spec: Mapping[str, Any]) -> DeviceModel:
    from .igb import IgbDevice

    return IgbDevice(spec)


register("generic", GenericDevice)
register("edu", _edu)
register("nvme", _nvme)
register("igb", _igb)
# QEMU's e1000e (82574L): BAR0 MMIO 128K, BAR1 flash 128K, BAR2 I/O 32, BAR3 MSI-X 16K.
register("e1000e", _stand_in(
    "e1000e", {"vendor": 0x8086, "device": 0x10D3, "class": 0x020000, "subsystem_vendor": 0x8086,
               "subsystem_device": 0x0000},
    (Bar(0, 0x20000), Bar(1, 0x20000), Bar(2, 0x20, "io"), Bar(3, 0x4000)),
))
# QEMU's e1000 (82540EM), conventional PCI: BAR0 MMIO 128K, BAR1 I/O 64.
register("e1000", _stand_in(
    "e1000", {"vendor": 0x8086, "device": 0x100E, "class": 0x020000, "subsystem_vendor": 0x1AF4,
              "subsystem_device": 0x1100, "reset_methods": ["bus"]},
    (Bar(0, 0x20000), Bar(1, 0x40, "io")), pcie=False,
))
# virtio-net (modern): BAR1 4K MSI-X, BAR4 16K 64-bit prefetchable.
register("virtio-net", _stand_in(
    "virtio-net", {"vendor": 0x1AF4, "device": 0x1041, "class": 0x020000, "subsystem_vendor": 0x1AF4,
                   "subsystem_device": 0x1100, "revision": 1},
    (Bar(1, 0x1000), Bar(4, 0x4000, "mem64", prefetchable=True)),
))
register("pcie-pci-bridge", _BridgeStandIn)
register("pcie-root-port", lambda spec: _BridgeStandIn(
    {"vendor": 0x1B36, "device": 0x000C, **{k: v for k, v in spec.items() if v is not None}}
))
