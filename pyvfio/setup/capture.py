"""Capture a machine's PCI/IOMMU topology in the fake kernel's format.

``pyvfio topology dump > server.json`` on a real machine, then
``pyvfio.fake.System.from_file("server.json")`` (or ``pyvfio --fake
server.json status``) gives a fake machine with the same devices, IOMMU
groups and drivers, so setup scripts can be tested against a server's
layout anywhere::

    from pyvfio.setup.capture import capture, to_json
    topology = capture()                  # a dict: pyvfio.fake.machine.topology schema
    open("server.json", "w").write(to_json(topology))

What is captured, from sysfs (see :mod:`pyvfio.fake.machine.topology` for the
schema): every PCI function with its IDs, class, BARs (``resource``),
driver, NUMA node and enabled reset methods; bridges with their secondary
bus; the IOMMU groups as they are (non-PCI members left out); the IOMMU's
reserved regions (those of every group at IOMMU level, the others on the
group's first device), default domain type and, for Intel VT-d, the address
width, page sizes, PASID width, interrupt remapping and snoop control
decoded from the ``cap``/``ecap`` registers (kept as well: hw_info reports them,
and they decide the stage of paging domains); loaded VFIO modules, vfio and
type1 module parameters, NUMA nodes and RLIMIT_MEMLOCK; SR-IOV PFs
(``sriov_totalvfs``, ``sriov_numvfs``) and their VFs (``physfn``); the
kernel build (release, the VFIO-related options of its configuration and
whether ``/lib/modules/<release>`` exists), so that ``pyvfio --fake FILE
doctor`` gives the same fixes; and what the host uses the devices for, as
:class:`pyvfio.setup.binding.UsageScan` finds it (the disks with mounted file
systems or active swap, with their partitions and holders; network
interfaces that are up or have routes; 9p/virtiofs tags that are mounted),
so that binding refuses the same devices on the fake.

Devices get the fake's model for their vendor:device when it has one
(``edu``, ``nvme``, ``igb``, ``e1000e``, ...); others become ``generic`` models with
the captured IDs, class and BARs.  A device on vfio-pci gets the original
driver pyvfio remembered for it (:mod:`pyvfio.setup.binding`) as its
``default_driver``.

Not captured (the fake has no notion of them): device behaviour of
unknown models, non-PCI devices, bridge windows and link properties, VFs
on a bus of their own (the fake puts them on the root of their bus),
unused disks and interfaces, other mounts, and which processes hold VFIO
files open.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from ..backend import Backend, resolve_backend
from ..core import sysfs
from . import _progress, devices, kernel_support
from .binding_state import BindingState
from .host_use import UsageScan

_LOG = logging.getLogger(__name__)

__all__ = ["capture", "to_json", "replay_check"]

_DOMAIN_TYPES = ("DMA", "DMA-FQ", "identity", "blocked", "unmanaged")
_RESET_METHODS = ("device_specific", "acpi", "flr", "af_flr", "pm", "bus", "cxl_bus")
#: Fake models whose behaviour (and BARs) comes from the model itself.
_BEHAVIOURAL = ("edu", "nvme", "igb")
_PCI_CAP_EXP = 0x10
_PCI_EXP_TYPE_PCI_BRIDGE = 0x7


_read = sysfs.try_read
_listdir = sysfs.try_listdir


def _yes(text: str | None) -> bool:
    return (text or "").strip() in ("Y", "1")


def _known_models() -> dict[tuple[int, int], str]:
    from ..fake.machine.topology import KNOWN_MODELS

    return {(ids["vendor"], ids["device"]): name for name, ids in KNOWN_MODELS.items()}


def _numa_nodes(b: Backend, pci: list[devices.PciDeviceInfo]) -> int:
    count = 1
    text = _read(b, "/sys/devices/system/node/online")
    for part in (text or "").strip().split(","):
        if part:
            try:
                count = max(count, int(part.split("-")[-1]) + 1)
            except ValueError:
                pass
    return max([count] + [d.numa_node + 1 for d in pci])


def _config(b: Backend, bdf: str) -> bytes | None:
    """The device's config space, when the backend lets us read it as bytes
    (the real kernel: root sees 256+ bytes, others the first 64)."""
    try:
        fd = b.open(f"{sysfs.PCI_DEVICES}/{bdf}/config", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return b.pread(fd, 256, 0)
    except OSError:
        return None
    finally:
        b.close(fd)


def _conventional_bridge(b: Backend, dev: devices.PciDeviceInfo,
                         by_bus: dict[int, list[devices.PciDeviceInfo]]) -> bool:
    """A PCI-to-PCI (not PCIe) bridge: its devices' requester IDs alias to
    the bridge, so they share its IOMMU group."""
    cfg = _config(b, dev.bdf)
    if cfg is not None and len(cfg) >= 0x40 and cfg[0x06] & 0x10:
        pos, seen = cfg[0x34] & 0xFC, 0
        while 0x40 <= pos < len(cfg) - 2 and seen < 48:
            if cfg[pos] == _PCI_CAP_EXP:
                return ((cfg[pos + 2] >> 4) & 0xF) == _PCI_EXP_TYPE_PCI_BRIDGE
            pos, seen = cfg[pos + 1] & 0xFC, seen + 1
        if pos == 0:
            return True  # a complete list without a PCI Express capability
    # Config space not readable: infer from the grouping.
    below = by_bus.get(dev.secondary_bus or -1, [])
    return bool(below) and dev.iommu_group is not None \
        and all(d.iommu_group == dev.iommu_group for d in below)


def _intel_iommu(b: Backend, name: str, iommu: dict[str, Any]) -> None:
    base = f"/sys/class/iommu/{name}/intel-iommu"
    cap = sysfs._int(_read(b, f"{base}/cap"), 16)
    ecap = sysfs._int(_read(b, f"{base}/ecap"), 16)
    if cap is not None and ecap is not None:
        # the registers themselves: hw_info reports them, and they decide
        # which stage (so which aperture) a paging domain gets
        iommu["cap_reg"], iommu["ecap_reg"] = hex(cap), hex(ecap)
    if cap is not None:
        mgaw = ((cap >> 16) & 0x3F) + 1
        iommu["aperture"] = ["0x0", hex((1 << mgaw) - 1)]
        sllps = (cap >> 34) & 0xF
        pgsizes = (1 << 12) | ((1 << 21) if sllps & 1 else 0) | ((1 << 30) if sllps & 2 else 0)
        iommu["pgsize_bitmap"] = hex(pgsizes)
    if ecap is not None:
        iommu["interrupt_remapping"] = bool(ecap & (1 << 3))
        iommu["enforce_cache_coherency"] = bool(ecap & (1 << 7))
        if ecap & (1 << 40):
            iommu["pasid_bits"] = min(20, ((ecap >> 35) & 0x1F) + 1)


#: virtio-iommu-pci's device ID (vendor 0x1af4), as sysfs shows it.
_VIRTIO_IOMMU_DEVICE = "0x1057"


def _iommu(b: Backend, groups: list[devices.IommuGroupInfo]) -> dict[str, Any] | None:
    hw = [n for n in _listdir(b, "/sys/class/iommu") if not n.startswith("iommufd_selftest")]
    real = [g for g in groups if not g.noiommu]
    if not hw and not real:
        return None
    name = hw[0] if hw else "iommu0"
    iommu: dict[str, Any] = {"name": name}
    if b.exists(f"/sys/class/iommu/{name}/intel-iommu"):
        iommu["hw_info_type"] = "intel_vtd"
        _intel_iommu(b, name, iommu)
    elif b.exists(f"/sys/class/iommu/{name}/amd-iommu") or name.startswith("ivhd"):
        iommu["hw_info_type"] = "amd"
    elif name.startswith("dmar"):  # Intel's naming, without the intel-iommu folder
        iommu["hw_info_type"] = "intel_vtd"
    elif "smmu" in name:
        iommu["hw_info_type"] = "arm_smmuv3"
        if not b.exists("/sys/firmware/acpi/tables/IORT"):
            # booted with a device tree: no IORT to mark the root complex
            # CANWBS, so the SMMUv3 cannot enforce cache coherency
            # (arm_smmu_master_canwbs); its ID registers are not in sysfs
            iommu["enforce_cache_coherency"] = False
    else:
        iommu["hw_info_type"] = "none"
        if _read(b, f"/sys/bus/pci/devices/{name}/device") == _VIRTIO_IOMMU_DEVICE and \
                _read(b, f"/sys/bus/pci/devices/{name}/vendor") == "0x1af4":
            # a virtio-iommu (named after its PCI function): the driver has
            # no hw_info op and remaps no interrupts; its input range and
            # page sizes are not in sysfs (the topology keeps the defaults)
            iommu["interrupt_remapping"] = False
            iommu["enforce_cache_coherency"] = False
    common: set[devices.ReservedRegion] | None = None
    for g in real:
        regions = set(g.reserved_regions)
        common = regions if common is None else common & regions
    iommu["reserved_regions"] = [
        {"start": hex(r.start), "last": hex(r.last), "type": r.type}
        for r in sorted(common or (), key=lambda r: (r.start, r.type))]
    types = [g.type for g in real if g.type in _DOMAIN_TYPES]
    if types:
        iommu["default_domain"] = max(set(types), key=types.count)
    return iommu


def _device_spec(b: Backend, dev: devices.PciDeviceInfo, model: str | None, conventional: bool,
                 original: str | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"bdf": dev.bdf}
    if model is None:
        model = "generic"
        if dev.is_bridge:
            model = "pcie-pci-bridge" if conventional else "pcie-root-port"
    spec["model"] = model
    spec.update({
        "vendor": f"0x{dev.vendor:04x}", "device": f"0x{dev.device:04x}",
        "class": f"0x{dev.class_code:06x}",
        "subsystem_vendor": f"0x{dev.subsystem_vendor:04x}",
        "subsystem_device": f"0x{dev.subsystem_device:04x}",
        "revision": f"0x{dev.revision:02x}",
    })
    if model not in _BEHAVIOURAL and not dev.is_bridge:
        bars = []
        for bar in dev.bars:
            if (bar.kind == "io" and bar.size > 256) or (bar.kind == "mem32" and bar.size > 1 << 31) \
                    or bar.size & (bar.size - 1):
                continue
            entry: dict[str, Any] = {"index": bar.index, "size": hex(bar.size), "type": bar.kind}
            if bar.prefetchable:
                entry["prefetchable"] = True
            bars.append(entry)
        spec["bars"] = bars
    if dev.is_bridge and dev.secondary_bus is not None and 1 <= dev.secondary_bus <= 255:
        spec["bridge"] = {"secondary_bus": dev.secondary_bus, "conventional": conventional}
    spec["driver"] = dev.driver
    if dev.driver in ("vfio-pci", "pci-stub") and original not in (None, "vfio-pci", "pci-stub"):
        spec["default_driver"] = original
    spec["numa_node"] = dev.numa_node
    spec["reset_methods"] = [m for m in dev.reset_methods if m in _RESET_METHODS]
    if dev.sriov_totalvfs is not None:
        spec["sriov_totalvfs"] = dev.sriov_totalvfs
    return spec


def _sriov(specs: list[dict[str, Any]], pci: list[devices.PciDeviceInfo]) -> None:
    """PF/VF links: ``physfn`` on each VF whose PF is captured (and is a PF),
    ``sriov_numvfs`` on each PF (the VFs that name it)."""
    by_bdf = {s["bdf"]: s for s in specs}
    counts: dict[str, int] = {}
    for dev in pci:
        pf = dev.physfn
        if pf is None or pf not in by_bdf or "sriov_totalvfs" not in by_bdf[pf] \
                or "sriov_totalvfs" in by_bdf[dev.bdf] or pf[:4] != dev.bdf[:4]:
            continue
        by_bdf[dev.bdf]["physfn"] = pf
        counts[pf] = counts.get(pf, 0) + 1
    for spec in specs:
        if "sriov_totalvfs" in spec:
            spec["sriov_totalvfs"] = max(spec["sriov_totalvfs"], counts.get(spec["bdf"], 0))
            spec["sriov_numvfs"] = counts.get(spec["bdf"], 0)


#: The kernel options a captured topology keeps (those doctor reads).
_KERNEL_OPTIONS = (
    "CONFIG_PCI_IOV", "CONFIG_PCI_STUB", "CONFIG_IOMMU_SUPPORT", "CONFIG_IOMMUFD",
    "CONFIG_IOMMUFD_VFIO_CONTAINER", "CONFIG_VFIO", "CONFIG_VFIO_DEVICE_CDEV",
    "CONFIG_VFIO_GROUP", "CONFIG_VFIO_CONTAINER", "CONFIG_VFIO_IOMMU_TYPE1",
    "CONFIG_VFIO_NOIOMMU", "CONFIG_VFIO_PCI_CORE", "CONFIG_VFIO_PCI",
)


def _kernel(b: Backend, modules: dict[str, bool]) -> dict[str, Any]:
    """The ``kernel`` section: what doctor reads of the build, made
    consistent with the captured modules (the fake cannot load a module
    its config lacks, nor unload a built-in one)."""
    from ..fake.machine.topology import MODULE_OPTIONS

    build = kernel_support.kernel_build(b)
    out: dict[str, Any] = {}
    if build.release:
        out["release"] = build.release
    out["modules_dir"] = build.modules_dir is not None
    if build.config is None:
        out["config"] = None
        return out
    config = {o: build.option(o) or "n" for o in _KERNEL_OPTIONS}
    for module, option in MODULE_OPTIONS.items():
        if modules.get(module) and config.get(option) == "n":
            config[option] = "m"  # loaded although the config says otherwise: trust sysfs
        elif not modules.get(module) and config.get(option) == "y":
            modules[module] = True  # built in: present even without sysfs traces
    if config.get("CONFIG_VFIO", "n") != "n":
        # the fake always has these with VFIO (a kernel without them
        # replays as one with them)
        config["CONFIG_VFIO_DEVICE_CDEV"] = config["CONFIG_VFIO_GROUP"] = "y"
    out["config"] = config
    return out


def capture(backend: Backend | None = None, *, name: str | None = None,
            description: str | None = None) -> dict[str, Any]:
    """The topology of the machine behind ``backend`` (the real one by
    default), as a dict in :mod:`pyvfio.fake.machine.topology`'s schema.  Integers
    are written as ``0x`` strings where sysfs shows them in hex."""

    b = resolve_backend(backend)
    _LOG.info("capturing the topology: reading the PCI devices and IOMMU groups")
    pci = devices.pci_devices(b)
    groups = devices.iommu_groups(b)
    _LOG.info("capturing the topology: %d PCI devices, %d IOMMU groups", len(pci), len(groups))
    host = (_read(b, "/proc/sys/kernel/hostname") or "").strip()
    if host == "(none)":  # the kernel's name for "not set"
        host = ""
    release = (_read(b, "/proc/sys/kernel/osrelease") or "").strip()
    topo: dict[str, Any] = {"name": name or host or "captured"}
    where = f" from {host}" if host else ""
    kernel = f" (Linux {release})" if release else ""
    topo["description"] = description or (
        f"Captured by `pyvfio topology dump`{where}{kernel}: {len(pci)} PCI devices, "
        f"{len(groups)} IOMMU groups.")
    topo["memlock_limit"] = b.memlock_limit()
    topo["numa_nodes"] = _numa_nodes(b, pci)
    topo["noiommu"] = _yes(_read(b, "/sys/module/vfio/parameters/enable_unsafe_noiommu_mode"))
    modules = {m: kernel_support.module_present(m, b)
               for m in ("vfio", "vfio_pci", "vfio_iommu_type1", "iommufd", "pci_stub")}
    modules["vfio_pci"] = modules["vfio_pci"] and b.exists("/sys/bus/pci/drivers/vfio-pci")
    topo["kernel"] = _kernel(b, modules)
    if not modules["vfio"]:
        modules["vfio_pci"] = modules["vfio_iommu_type1"] = False
        topo["noiommu"] = False
    topo["modules"] = modules
    t1 = "/sys/module/vfio_iommu_type1/parameters"
    type1: dict[str, Any] = {}
    limit = sysfs._int(_read(b, f"{t1}/dma_entry_limit"), 10)
    if limit is not None:
        type1["dma_entry_limit"] = limit
    unsafe = _read(b, f"{t1}/allow_unsafe_interrupts")
    if unsafe is not None:
        type1["allow_unsafe_interrupts"] = _yes(unsafe)
    topo["type1"] = type1
    unsafe = _read(b, "/sys/module/iommufd/parameters/allow_unsafe_interrupts")
    if unsafe is not None:
        topo["iommufd"] = {"allow_unsafe_interrupts": _yes(unsafe)}
    iommu = _iommu(b, groups)
    topo["iommu"] = iommu

    known = _known_models()
    by_bus: dict[int, list[devices.PciDeviceInfo]] = {}
    for dev in pci:
        by_bus.setdefault(int(dev.bdf[5:7], 16), []).append(dev)
    state = BindingState.default(b)
    specs: list[dict[str, Any]] = []
    common = {(r["start"], r["last"], r["type"]) for r in (iommu or {}).get("reserved_regions", [])}
    first_of_group = {g.id: next((d for d in g.devices if d in {x.bdf for x in pci}), None)
                      for g in groups}
    group_regions = {g.id: g.reserved_regions for g in groups}
    for dev in pci:
        record = state.get(dev.bdf) if dev.driver in ("vfio-pci", "pci-stub") else None
        conventional = dev.is_bridge and _conventional_bridge(b, dev, by_bus)
        spec = _device_spec(b, dev, known.get((dev.vendor, dev.device)), conventional,
                            record.driver if record is not None else None)
        _progress.report(len(specs) + 1, len(pci), "capturing the topology", dev.bdf)
        if iommu is not None and dev.iommu_group is not None \
                and first_of_group.get(dev.iommu_group) == dev.bdf:
            extra = [{"start": hex(r.start), "last": hex(r.last), "type": r.type}
                     for r in group_regions.get(dev.iommu_group, ())
                     if (hex(r.start), hex(r.last), r.type) not in common]
            if extra:
                spec["reserved_regions"] = extra
        specs.append(spec)
    _sriov(specs, pci)
    topo["devices"] = specs
    if iommu is not None:
        listed = {d.bdf for d in pci}
        out_groups: list[dict[str, Any]] = []
        grouped: set[str] = set()
        for g in groups:
            members = [d for d in g.devices if d in listed]
            if members and not g.noiommu:
                out_groups.append({"id": g.id, "devices": members})
                grouped.update(members)
        next_id = max([g.id for g in groups] + [-1]) + 1
        for dev in pci:
            if dev.bdf not in grouped:  # the IOMMU left it out: keep it alone
                out_groups.append({"id": next_id, "devices": [dev.bdf]})
                next_id += 1
        topo["groups"] = out_groups
    captured = {spec["bdf"]: spec for spec in specs}
    facts = UsageScan(b).facts
    for key in ("block", "net", "virtio_fs"):
        facts[key] = [e for e in facts[key]
                      if captured.get(e["device"], {}).get("driver") is not None]
    if any(facts.values()):
        topo["host"] = facts
    return topo


def to_json(topology: dict[str, Any]) -> str:
    """JSON text for a topology: one device and one group per line, so
    captured files diff well."""
    head = {k: v for k, v in topology.items() if k not in ("devices", "groups")}
    lines = ["{"]
    items = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in head.items()]
    for key in ("devices", "groups"):
        if key in topology:
            body = ",\n".join(f"    {json.dumps(x)}" for x in topology[key])
            items.append(f"  {json.dumps(key)}: [\n{body}\n  ]" if body else f"  {json.dumps(key)}: []")
    lines.append(",\n".join(items))
    lines.append("}")
    return "\n".join(lines) + "\n"


def replay_check(topology: dict[str, Any]) -> list[str]:
    """Build a fake :class:`~pyvfio.fake.System` from ``topology`` and compare
    its devices, groups, drivers and host use with the topology's; returns
    the differences (empty: it replays)."""
    from ..fake import System
    from ..fake.machine.topology import load

    topology = load(topology)
    system = System(topology)
    problems = []
    b = system.backend
    want_drivers = {d["bdf"]: d.get("driver") for d in topology["devices"]}
    got = {d.bdf: d for d in devices.pci_devices(b)}
    for bdf, driver in want_drivers.items():
        dev = got.get(bdf)
        if dev is None:
            problems.append(f"{bdf}: missing on the fake")
        elif dev.driver != driver:
            problems.append(f"{bdf}: driver {dev.driver} on the fake, {driver} captured")
    for bdf, spec in ((d["bdf"], d) for d in topology["devices"]):
        dev = got.get(bdf)
        if dev is None:
            continue
        if dev.physfn != spec.get("physfn"):
            problems.append(f"{bdf}: physfn {dev.physfn} on the fake, {spec.get('physfn')} "
                            "captured")
        if dev.sriov_totalvfs != spec.get("sriov_totalvfs") \
                or dev.sriov_numvfs != spec.get("sriov_numvfs"):
            problems.append(f"{bdf}: SR-IOV {dev.sriov_numvfs}/{dev.sriov_totalvfs} VFs on the "
                            f"fake, {spec.get('sriov_numvfs')}/{spec.get('sriov_totalvfs')} "
                            "captured")
    want_groups = {g["id"]: sorted(g["devices"]) for g in topology.get("groups", [])}
    got_groups = {g.id: sorted(g.devices) for g in devices.iommu_groups(b)}
    if want_groups != got_groups:
        problems.append(f"groups differ: fake {got_groups}, captured {want_groups}")

    got_host = UsageScan(b).facts
    for key, want in topology["host"].items():
        if got_host.get(key) != want:
            problems.append(f"host {key}: {got_host.get(key)} on the fake, {want} captured")
    return problems
