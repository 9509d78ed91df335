"""The simulated machine: its PCI devices, IOMMU groups and drivers, its
lock, and its device nodes.

A :class:`System` is built from a topology (:mod:`.topology`) and owns
one :class:`~pyvfio.fake.core.FakeBackend` (:attr:`System.backend`)
through which everything is driven, exactly as user code drives the real
kernel::

    system = System("default")
    b = system.backend
    b.sysfs_write("/sys/bus/pci/devices/0000:00:02.0/driver_override", "vfio-pci")
    b.sysfs_write("/sys/bus/pci/drivers_probe", "0000:00:02.0")
    fd = b.open("/dev/vfio/0")

The parts of the machine, with the kernel code each follows:

* :mod:`.pci_device` -- the PCI functions (struct pci_dev), :mod:`.dma`
  -- their DMA through the IOMMU;
* :mod:`.iommu` -- the IOMMU, its reserved regions and the IOMMU groups'
  DMA-ownership API (drivers/iommu/iommu.c);
* :mod:`.pci_driver` -- drivers and their matching (drivers/pci/pci-driver.c),
  :mod:`.driver_core` -- probing and unbinding (drivers/base/dd.c);
* :mod:`.vfio_group` -- vfio groups and the registration of vfio devices
  (drivers/vfio/group.c, vfio_main.c);
* :mod:`.chrdev` -- which driver opens which device node;
* :mod:`.sysfs` -- /sys and the host files, generated from the state here.
"""

from __future__ import annotations

import copy
import errno
import os
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterator

from . import topology as _topology
from ..core import FakeBackend, FakeFile, FaultRecord, UserMemory, errno_error
from ..fault_inject import FaultInjector
from .chrdev import chrdev_open
from .driver_core import device_driver_attach
from .iommu import IommuGroup, IommuInfo, ReservedRegion, merge_reserved_regions
from .pci_device import PciDevice
from .pci_driver import PCI_ANY_ID, Driver, PciId, register_drivers
from .vfio_group import VfioGroup

if TYPE_CHECKING:
    from .sysfs import Sysfs

__all__ = ["System", "ModelFactory", "set_default_model_factory"]

# The names the fake's drivers import from here (they live in the modules above).
__all__ += ["PciDevice", "IommuGroup", "VfioGroup", "Driver", "PciId", "IommuInfo",
            "ReservedRegion", "PCI_ANY_ID", "merge_reserved_regions"]

#: A device model factory: ``spec -> model`` (``pyvfio.fake.models.create``).
ModelFactory = Callable[[dict[str, Any]], Any]

_AUTO: Any = object()
_default_models: ModelFactory | None = None


def set_default_model_factory(factory: ModelFactory | None) -> None:
    """The factory a :class:`System` uses when it is given none
    (``pyvfio.fake`` registers ``pyvfio.fake.models.create``)."""
    global _default_models
    _default_models = factory


class System:
    """A simulated Linux machine with PCI devices behind an IOMMU.

    ``topology`` is a dict, the path of a JSON file, or the name of a
    shipped topology (see :mod:`pyvfio.fake.machine.topology`).  ``models``
    is the device model factory; by default the one registered with
    ``set_default_model_factory()`` (``pyvfio.fake.models.create``), with
    None devices have no model (their config space is synthesised from the
    topology and DMA still works).
    """

    #: The CPU page size the fake reports (mmap granularity, pinning unit).
    page_size = 4096

    def __init__(self, topology: dict[str, Any] | str | os.PathLike[str] = "default", *,
                 models: ModelFactory | None = _AUTO) -> None:
        topo = _topology.load(topology)
        self.lock = threading.RLock()
        self.topology_name: str = topo["name"]
        self._description: str | None = topo.get("description")
        self.memlock_limit: int = topo["memlock_limit"]
        #: Fault injection into the kernel's allocations and copies
        #: (:mod:`pyvfio.fake.fault_inject`).
        self.fault_inject = FaultInjector()
        self.user_memory = UserMemory(lambda: self.memlock_limit, self.fault_inject)
        self.faults: list[FaultRecord] = []  #: DMA the IOMMU blocked, oldest first
        self.numa_nodes: int = topo["numa_nodes"]
        #: The kernel build the machine runs (the topology's ``kernel``
        #: section: ``release``, ``config``, ``modules_dir``), served in its
        #: /proc and /lib/modules files.
        self.kernel: dict[str, Any] = topo["kernel"]
        #: What the host uses the devices for (the topology's ``host``
        #: section): disks, interfaces and 9p tags of devices while their
        #: first driver has them, the mounts and swaps on them.
        self.host: dict[str, Any] = topo["host"]
        self.modules: dict[str, bool] = dict(topo["modules"])
        #: vfio.enable_unsafe_noiommu_mode
        self.noiommu: bool = topo["noiommu"]
        #: The process has CAP_SYS_RAWIO (needed for no-IOMMU groups).
        self.cap_sys_rawio = True
        #: vfio_iommu_type1 module parameters.
        self.type1_params: dict[str, Any] = {
            "dma_entry_limit": topo["type1"]["dma_entry_limit"],
            "allow_unsafe_interrupts": topo["type1"]["allow_unsafe_interrupts"],
            "disable_hugepages": False,
        }
        #: iommufd module parameters.
        self.iommufd_params: dict[str, Any] = dict(topo["iommufd"])
        self.iommu: IommuInfo | None = (
            IommuInfo.from_topology(topo["iommu"]) if topo["iommu"] is not None else None
        )
        self.devices: dict[str, PciDevice] = {}
        self.groups: dict[int, IommuGroup] = {}
        self.drivers: dict[str, Driver] = {}
        #: Device indexes in use (vfio's device_ida: ``vfioN``).
        self.vfio_device_ida: set[int] = set()
        self._iommufd_loaded = self.modules["iommufd"]
        factory = _default_models if models is _AUTO else models
        self._build(topo, factory)
        self.backend = FakeBackend(self)
        from .sysfs import Sysfs

        self.sysfs: Sysfs = Sysfs(self)

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *,
                  models: ModelFactory | None = _AUTO) -> System:
        """A system described by the JSON topology at ``path``."""
        return cls(os.fspath(path), models=models)

    def _build(self, topo: dict[str, Any], factory: ModelFactory | None) -> None:
        for spec in topo["devices"]:
            model_spec = {k: v for k, v in spec.items() if k not in ("reserved_regions", "bridge")}
            model = None
            if factory is not None:
                try:
                    model = factory(model_spec)
                except (KeyError, ValueError) as e:
                    raise _topology.TopologyError(f"device {spec['bdf']}: {e}") from None
            pdev = PciDevice(self, spec, model)
            self.devices[pdev.bdf] = pdev
        bridges = {(d.bdf[:4], d.bridge["secondary_bus"]): d
                   for d in self.devices.values() if d.bridge is not None}
        for d in self.devices.values():
            parent = bridges.get((d.bdf[:4], d.bus))
            if parent is not None:
                d.parent = parent
                parent.children.append(d)
        #: The root buses (``pci0000:00``, ...) with the devices directly on
        #: each, in topology order (the hierarchy is fixed: no hotplug).
        self.root_buses: dict[str, list[PciDevice]] = {}
        for d in self.devices.values():
            d.fix_sysfs_path()
            if d.parent is None:
                self.root_buses.setdefault(d.sysfs_path.split("/")[3], []).append(d)
        #: The enabled VFs of each PF (by the PF's address), in address
        #: order: the devices whose topology entry names it as ``physfn``.
        self.vfs: dict[str, list[PciDevice]] = {}
        for d in sorted(self.devices.values(), key=lambda d: d.bdf):
            physfn = d.spec.get("physfn")
            if physfn is not None:
                self.vfs.setdefault(physfn, []).append(d)
        self._assign_bars()
        for g in topo["groups"]:
            group = IommuGroup(self, g["id"])
            for bdf in g["devices"]:
                pdev = self.devices[bdf]
                pdev.group = group
                group.devices.append(pdev)
            self.groups[group.id] = group
        register_drivers(self, topo)
        for pdev in self.devices.values():
            # model hook: the device learns which PciDevice it DMAs through
            attach = getattr(pdev.model, "attach", None)
            if callable(attach):
                attach(pdev)
        for spec in topo["devices"]:
            if spec["driver"] is None:
                continue
            pdev = self.devices[spec["bdf"]]
            drv = self.drivers.get(spec["driver"])
            if drv is None:
                raise _topology.TopologyError(f"device {pdev.bdf}: driver {spec['driver']!r} is not loaded")
            try:
                device_driver_attach(drv, pdev)
            except OSError as e:
                raise _topology.TopologyError(
                    f"device {pdev.bdf}: binding {drv.name} fails: {e.strerror}"
                ) from None

    def _assign_bars(self) -> None:
        mem32 = 0xFE000000
        mem64 = 0x8_0000_0000
        io = 0xC000
        for pdev in self.devices.values():
            for bar in sorted(pdev.bars, key=lambda b: -int(b["size"])):
                size = int(bar["size"])
                if bar["type"] == "io":
                    io = (io + size - 1) & ~(size - 1)
                    pdev.bar_addresses[bar["index"]] = io
                    io += size
                elif bar["type"] == "mem64":
                    mem64 = (mem64 + size - 1) & ~(size - 1)
                    pdev.bar_addresses[bar["index"]] = mem64
                    mem64 += size
                else:
                    mem32 = (mem32 - size) & ~(size - 1)
                    pdev.bar_addresses[bar["index"]] = mem32
            setter = getattr(pdev.model, "set_bar_address", None)
            if callable(setter):
                for index, address in pdev.bar_addresses.items():
                    setter(index, address)

    # -- lookups ---------------------------------------------------------------------
    def device(self, bdf: str) -> PciDevice:
        """The device at ``bdf`` (``"00:02.0"`` or ``"0000:00:02.0"``)."""
        key = _topology.normalize_bdf(bdf)
        try:
            return self.devices[key]
        except KeyError:
            raise KeyError(f"no PCI device {key}") from None

    def group(self, gid: int) -> IommuGroup:
        """IOMMU group number ``gid``; KeyError when there is none."""
        return self.groups[gid]

    def vfio_groups(self) -> list[VfioGroup]:
        """Live vfio groups (``/dev/vfio/N`` nodes)."""
        return [g.vfio_group for g in self.groups.values() if g.vfio_group is not None]

    def vfio_group_by_name(self, name: str) -> VfioGroup | None:
        """The live vfio group whose node is ``/dev/vfio/<name>``, or None."""
        for vg in self.vfio_groups():
            if vg.name == name:
                return vg
        return None

    def vfio_device_by_cdev(self, name: str) -> PciDevice | None:
        """The device whose cdev is ``/dev/vfio/devices/<name>``, or None."""
        for pdev in self.devices.values():
            if pdev.vfio_cdev_name == name:
                return pdev
        return None

    def __repr__(self) -> str:
        return f"<System {self.topology_name!r}: {len(self.devices)} devices>"

    # -- device nodes -----------------------------------------------------------------------
    def device_nodes(self) -> list[str]:
        """Every device node that currently exists."""
        nodes: list[str] = []
        if self.modules["vfio"]:
            nodes.append("/dev/vfio/vfio")
            nodes += [vg.dev_path for vg in self.vfio_groups()]
            nodes += [f"/dev/vfio/devices/{p.vfio_cdev_name}" for p in self.devices.values()
                      if p.vfio_cdev_name is not None]
        if self._iommufd_loaded:
            nodes.append("/dev/iommu")
        return sorted(nodes)

    def _dev_dirs(self) -> set[str]:
        dirs = {"/dev"}
        if self.modules["vfio"]:
            dirs.add("/dev/vfio")
            if any(p.vfio_cdev_name for p in self.devices.values()):
                dirs.add("/dev/vfio/devices")
        return dirs

    def path_exists(self, path: str) -> bool:
        """Whether a device node or sysfs path exists."""
        path = os.path.normpath(path) if path else path
        with self.lock:
            if path.startswith("/sys"):
                return self.sysfs.exists(path)
            return path in self.device_nodes() or path in self._dev_dirs()

    def open_path(self, backend: FakeBackend, path: str, flags: int) -> FakeFile:
        """open(2) of a device node: the file that serves it."""
        with self.lock:
            return self._open_path(backend, os.path.normpath(path), flags)

    def _open_path(self, backend: FakeBackend, path: str, flags: int) -> FakeFile:
        if path in self._dev_dirs():
            raise errno_error(errno.EISDIR, path)
        if path not in self.device_nodes():
            if path.startswith("/sys") and self.sysfs.exists(path):
                raise errno_error(errno.EACCES, f"{path}: use the sysfs_* calls for sysfs")
            raise errno_error(errno.ENOENT, path)
        name = path.rsplit("/", 1)[1]
        if path == "/dev/vfio/vfio":
            return chrdev_open("vfio", backend)
        if path == "/dev/iommu":
            return chrdev_open("iommu", backend)
        if path.startswith("/dev/vfio/devices/"):
            pdev = self.vfio_device_by_cdev(name)
            assert pdev is not None
            return chrdev_open("vfio-dev", backend, pdev)
        vgroup = self.vfio_group_by_name(name)
        assert vgroup is not None
        return chrdev_open("vfio-group", backend, vgroup)

    # -- state ----------------------------------------------------------------------------
    def to_topology(self) -> dict[str, Any]:
        """The topology of the system as it is now (current drivers
        included): ``System(s.to_topology())`` builds an equivalent machine."""
        devices = []
        for pdev in self.devices.values():
            spec = {k: v for k, v in pdev.spec.items()}
            spec["vendor"] = pdev.vendor
            spec["device"] = pdev.device
            spec["class"] = pdev.class_code
            spec["revision"] = pdev.revision
            spec["subsystem_vendor"] = pdev.subsystem_vendor
            spec["subsystem_device"] = pdev.subsystem_device
            spec["driver"] = pdev.driver
            spec["numa_node"] = pdev.numa_node
            devices.append(spec)
        groups = [{"id": g.id, "devices": [d.bdf for d in g.devices]}
                  for g in sorted(self.groups.values(), key=lambda g: g.id)
                  if g.name != "vfio-noiommu"]
        topo: dict[str, Any] = {
            "name": self.topology_name,
            "memlock_limit": self.memlock_limit,
            "numa_nodes": self.numa_nodes,
            "noiommu": self.noiommu,
            "modules": dict(self.modules),
            "type1": {
                "dma_entry_limit": self.type1_params["dma_entry_limit"],
                "allow_unsafe_interrupts": self.type1_params["allow_unsafe_interrupts"],
            },
            "iommufd": dict(self.iommufd_params),
            "iommu": self.iommu.to_topology() if self.iommu is not None else None,
            "kernel": dict(self.kernel),
            "devices": devices,
            "groups": groups,
            "host": copy.deepcopy(self.host),
        }
        if self._description is not None:
            topo["description"] = self._description
        return _topology.load(topo)

    def iter_devices(self) -> Iterator[PciDevice]:
        """Every PCI device, in topology order."""
        return iter(self.devices.values())
