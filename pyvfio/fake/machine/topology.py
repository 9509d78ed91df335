"""Declarative descriptions of simulated machines.

A topology is a plain dict (usually loaded from JSON) that lists the PCI
devices of a :class:`~pyvfio.fake.machine.system.System`, how they are grouped by
the IOMMU, what the IOMMU can do and which kernel drivers start out bound.
:func:`load` accepts a dict, the path of a JSON file or the name of a
shipped topology (``pyvfio/fake/machine/topologies/<name>.json``) and returns a
validated, normalised copy with every default filled in; errors are
:class:`TopologyError` with the offending key in the message.

Schema (all keys but ``devices`` are optional)::

    {
      "name": "default",
      "memlock_limit": 67108864,          # RLIMIT_MEMLOCK in bytes, -1 = unlimited
      "numa_nodes": 1,                    # nodes 0..N-1 are online
      "noiommu": false,                   # vfio.enable_unsafe_noiommu_mode
      "modules": {"vfio": true, "vfio_pci": true, "vfio_iommu_type1": true,
                  "iommufd": true, "pci_stub": true},
      "type1": {"dma_entry_limit": 65535, "allow_unsafe_interrupts": false},
      "iommufd": {"allow_unsafe_interrupts": false},  # iommufd module parameters
      "iommu": {                          # null: no IOMMU (no groups)
        "name": "dmar0",
        "aperture": [0, 281474976710655],
        "pgsize_bitmap": 1075843072,      # 4K | 2M | 1G
        "reserved_regions": [{"start": 4276092928, "last": 4277141503, "type": "msi"}],
        "dirty_tracking": false, "pasid_bits": 0, "hw_info_type": "intel_vtd",
        "cache_coherency": true, "enforce_cache_coherency": true,
        "interrupt_remapping": true, "default_domain": "DMA-FQ",
        "cap_reg": "0x1d2008c222f0686",   # optional, VT-d: sysfs intel-iommu/cap and
        "ecap_reg": "0x880000f00f4a",     # ecap as captured (scalable mode, first stage)
        "smmu_idr": ["0xd44101b", ...],   # optional, Arm SMMUv3: SMMU_IDR0..IDR5, and
        "smmu_iidr": "0x0", "smmu_aidr": "0x1"  # SMMU_IIDR / SMMU_AIDR (IOMMU_GET_HW_INFO)
      },
      "kernel": {                         # the kernel build doctor reads
        "release": "7.3.0-fake",          # /proc/sys/kernel/osrelease
        "config": {"CONFIG_IOMMUFD": "n"},  # over the default VFIO config; null: no config file
        "modules_dir": true               # /lib/modules/<release>/modules.{builtin,dep}
      },
      "devices": [
        {"bdf": "0000:00:02.0", "model": "edu", "driver": null, ...},
        ...
      ],
      "groups": [["0000:00:05.0", "0000:01:01.0"], {"id": 7, "devices": [...]}],
      "host": {                           # what the host uses devices for (see below)
        "block": [{"device": "0000:00:03.0", "name": "nvme0n1", "dev": "259:0",
                   "partitions": [{"name": "nvme0n1p1", "dev": "259:1"}],
                   "holders": [{"name": "dm-0", "dev": "253:0", "of": "nvme0n1p1",
                                "dm_name": "vg-root"}]}],
        "net": [{"device": "0000:00:04.0", "name": "eth0", "up": true, "routes": 2}],
        "virtio_fs": [{"device": "0000:00:02.0", "tag": "hostroot"}],
        "mounts": [{"source": "/dev/mapper/vg-root", "target": "/", "fstype": "ext4",
                    "dev": "253:0"}],
        "swaps": ["/dev/nvme0n1p2"]
      }
    }

Device entries carry the keys shared with the device models
(``pyvfio.fake.models.create(spec)``): ``bdf``, ``model``, ``vendor``,
``device``, ``class``, ``subsystem_vendor``, ``subsystem_device``,
``revision``, ``bars`` (``[{"index", "size", "type": "mem32|mem64|io",
"prefetchable"}]``), ``driver`` (bound at start, or null),
``default_driver`` (what ``drivers_probe`` picks), ``numa_node`` and
``reset_methods`` (and ``pcie`` and ``model_*`` parameters, passed to the
model untouched); plus, for the system only, ``bridge`` (``{"secondary_bus":
N, "conventional": bool}``) for PCI bridges and ``reserved_regions`` (extra
per-device IOMMU reserved regions, like an RMRR).

SR-IOV: a physical function has ``sriov_totalvfs`` (how many VFs it
supports) and optionally ``sriov_numvfs`` (how many are enabled: the number
of entries naming it, filled in when absent); each enabled virtual
function is a device entry with ``physfn`` (its PF's address).  The VFs of
a PF are ``virtfn0``, ``virtfn1``... in address order.

``kernel`` describes the kernel build as ``/boot/config-<release>`` and
``/lib/modules/<release>`` show it.  ``config`` is merged over
:data:`DEFAULT_KERNEL_CONFIG` (a Debian-like build with VFIO, vfio-pci,
type1, iommufd and pci-stub as modules); a value is ``"y"``, ``"m"``, a
string or number, or ``"n"``/null for "is not set" (the ``CONFIG_VFIO_*``
options are unset with an unset ``CONFIG_VFIO``).
``"config": null`` gives a machine whose config cannot be read.  A module
whose option is unset cannot be loaded (``modules`` defaults to false for
it), and a built-in (``"y"``) one is always loaded.  The fake always gives
vfio devices cdevs and the group interface, so with VFIO built those
options stay on.  A :class:`~pyvfio.fake.System` keeps the section as
``system.kernel`` and serves it; without one, the default build.

``host`` is what the host uses the devices for, so that
:mod:`pyvfio.setup.binding` refuses to take them from their drivers on the fake
as it does on the machine a topology was captured from.  A ``block`` disk
(with its partitions and the device-mapper/md ``holders`` stacked on them,
``of`` naming what each holds), a ``net`` interface and a ``virtio_fs`` tag
belong to a device and exist while that device is bound to the driver the
topology starts it with (unbinding it removes them, as the kernel removes a
driver's disks and interfaces); ``mounts`` (``dev`` is the ``major:minor``
of ``/proc/self/mountinfo``, ``0:0`` when unknown) and ``swaps`` are the
host's, served as ``/proc/self/mountinfo`` and ``/proc/swaps``; ``routes``
is how many routes ``/proc/net/route`` lists for an interface.  Without
``host`` the fake machine has none of these files and uses no device.

Without ``groups`` every device is alone in its group, except that the
devices behind a conventional PCI bridge (a PCIe-to-PCI bridge) share the
bridge's group: the IOMMU cannot tell their requester IDs apart.  Listed
groups take the ids given (``{"id": N, ...}``) or, for plain lists, the
lowest free ids in order; devices not listed get derived groups.
"""

from __future__ import annotations

import copy
import os
import re
from typing import Any

# TopologyError, normalize_bdf and normalize_host are part of this module's API;
# the field checkers, the groups and the host section are kept in modules of their own.
from .topology_fields import TopologyError, _shown, check_bool, check_int, check_keys, normalize_bdf
from .topology_groups import bridge_parents, iommu_groups
from .topology_host import normalize_host

__all__ = [
    "TopologyError",
    "load",
    "shipped",
    "normalize_bdf",
    "RESERVED_REGION_TYPES",
    "DEFAULT_IOMMU",
    "KNOWN_MODELS",
    "DEFAULT_KERNEL_CONFIG",
    "DEFAULT_KERNEL_RELEASE",
    "MODULE_OPTIONS",
    "normalize_kernel",
    "normalize_host",
]

TOPOLOGY_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "topologies")

#: Types of IOMMU reserved regions, in the kernel's order (enum iommu_resv_type).
RESERVED_REGION_TYPES = ("direct", "direct-relaxable", "reserved", "msi")

#: 4 KiB | 2 MiB | 1 GiB: Intel VT-d second-stage page sizes.
_VTD_PGSIZES = (1 << 12) | (1 << 21) | (1 << 30)

DEFAULT_IOMMU: dict[str, Any] = {
    "name": "dmar0",
    "aperture": [0, (1 << 48) - 1],
    "pgsize_bitmap": _VTD_PGSIZES,
    # The x86 interrupt (MSI) address window, reserved in every group.
    "reserved_regions": [{"start": 0xFEE00000, "last": 0xFEEFFFFF, "type": "msi"}],
    "dirty_tracking": False,
    "pasid_bits": 0,
    "hw_info_type": "intel_vtd",
    "cache_coherency": True,
    "enforce_cache_coherency": True,
    "interrupt_remapping": True,
    "default_domain": "DMA-FQ",
}

#: Optional IOMMU registers of the ``iommu`` section and their widths in
#: bits: VT-d's CAP_REG/ECAP_REG, the SMMUv3's IIDR and AIDR.
_OPTIONAL_IOMMU_REGS = {"cap_reg": 64, "ecap_reg": 64, "smmu_iidr": 32, "smmu_aidr": 32}

DEFAULT_MODULES = {
    "vfio": True,
    "vfio_pci": True,
    "vfio_iommu_type1": True,
    "iommufd": True,
    "pci_stub": True,
}

DEFAULT_TYPE1 = {"dma_entry_limit": 65535, "allow_unsafe_interrupts": False}
#: iommufd module parameters (``/sys/module/iommufd/parameters``).
DEFAULT_IOMMUFD = {"allow_unsafe_interrupts": False}

#: ``/proc/sys/kernel/osrelease`` of a fake machine.
DEFAULT_KERNEL_RELEASE = "7.3.0-fake"

#: The kernel configuration of a fake machine (the VFIO-related options;
#: an option not listed is not set).
DEFAULT_KERNEL_CONFIG: dict[str, str] = {
    "CONFIG_PCI_IOV": "y",
    "CONFIG_PCI_STUB": "m",
    "CONFIG_IOMMU_SUPPORT": "y",
    "CONFIG_IOMMUFD": "m",
    "CONFIG_VFIO": "m",
    "CONFIG_VFIO_DEVICE_CDEV": "y",
    "CONFIG_VFIO_GROUP": "y",
    "CONFIG_VFIO_CONTAINER": "y",
    "CONFIG_VFIO_IOMMU_TYPE1": "m",
    "CONFIG_VFIO_NOIOMMU": "y",
    "CONFIG_VFIO_VIRQFD": "y",
    "CONFIG_VFIO_PCI_CORE": "m",
    "CONFIG_VFIO_PCI_INTX": "y",
    "CONFIG_VFIO_PCI": "m",
}

#: The module of each entry of ``modules`` and its kernel option.
MODULE_OPTIONS = {
    "vfio": "CONFIG_VFIO",
    "vfio_pci": "CONFIG_VFIO_PCI",
    "vfio_iommu_type1": "CONFIG_VFIO_IOMMU_TYPE1",
    "iommufd": "CONFIG_IOMMUFD",
    "pci_stub": "CONFIG_PCI_STUB",
}

#: IDs of QEMU's devices the shipped models implement, used when no device
#: model is available to report them.  ``class`` is the 24-bit class code.
KNOWN_MODELS: dict[str, dict[str, int]] = {
    "edu": {"vendor": 0x1234, "device": 0x11E8, "class": 0x00FF00,
            "subsystem_vendor": 0x1AF4, "subsystem_device": 0x1100, "revision": 0x10},
    "nvme": {"vendor": 0x1B36, "device": 0x0010, "class": 0x010802,
             "subsystem_vendor": 0x1AF4, "subsystem_device": 0x1100, "revision": 0x02},
    "igb": {"vendor": 0x8086, "device": 0x10C9, "class": 0x020000,
            "subsystem_vendor": 0x1AF4, "subsystem_device": 0x1100, "revision": 0x01},
    "e1000e": {"vendor": 0x8086, "device": 0x10D3, "class": 0x020000,
               "subsystem_vendor": 0x8086, "subsystem_device": 0x0000},
    "e1000": {"vendor": 0x8086, "device": 0x100E, "class": 0x020000,
              "subsystem_vendor": 0x1AF4, "subsystem_device": 0x1100, "revision": 0x03},
    "virtio-net": {"vendor": 0x1AF4, "device": 0x1041, "class": 0x020000,
                   "subsystem_vendor": 0x1AF4, "subsystem_device": 0x1100, "revision": 0x01},
    "pcie-pci-bridge": {"vendor": 0x1B36, "device": 0x000E, "class": 0x060400},
    "pcie-root-port": {"vendor": 0x1B36, "device": 0x000C, "class": 0x060400},
}

_DEVICE_KEYS = {
    "bdf", "model", "vendor", "device", "class", "subsystem_vendor", "subsystem_device",
    "revision", "bars", "driver", "default_driver", "numa_node", "reset_methods",
    "bridge", "reserved_regions", "pcie", "physfn", "sriov_totalvfs", "sriov_numvfs",
}
_TOP_KEYS = {
    "name", "memlock_limit", "numa_nodes", "noiommu", "modules", "type1", "iommufd", "iommu",
    "devices", "groups", "description", "kernel", "host",
}
_RESET_METHODS = ("device_specific", "acpi", "flr", "af_flr", "pm", "bus", "cxl_bus")
_BAR_TYPES = ("mem32", "mem64", "io")
_DOMAIN_TYPES = ("DMA", "DMA-FQ", "identity", "blocked", "unmanaged")
_HW_INFO_TYPES = ("none", "intel_vtd", "arm_smmuv3", "amd")


_SCALARS = (str, int, float, bool, type(None))


def _copy(value: Any) -> Any:
    """``copy.deepcopy(value)`` for JSON data (plain dicts, lists and
    scalars) without deepcopy's bookkeeping; anything else is deep-copied."""
    kind = type(value)
    if kind is dict:
        return {k: v if type(v) in _SCALARS else _copy(v) for k, v in value.items()}
    if kind is list:
        return [v if type(v) in _SCALARS else _copy(v) for v in value]
    if kind in _SCALARS:
        return value
    return copy.deepcopy(value)


def shipped() -> list[str]:
    """Names of the topologies shipped with pyvfio."""
    return sorted(n[:-5] for n in os.listdir(TOPOLOGY_DIR) if n.endswith(".json"))


def _read_json(path: str) -> dict[str, Any]:
    import json  # only when a file is read (pyvfio.fake's import does not need it)

    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
        data = json.loads(text)
    except OSError as e:  # a folder, no permission...
        raise TopologyError(f"{path}: cannot read it: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise TopologyError(f"{path}: not UTF-8 text (byte {e.start}: "
                            f"{e.object[e.start:e.start + 1]!r})") from None
    except json.JSONDecodeError as e:
        raise TopologyError(f"{path}: invalid JSON: {e}") from None
    except RecursionError:
        raise TopologyError(f"{path}: invalid JSON: nested too deeply") from None
    except ValueError as e:  # an integer longer than sys.get_int_max_str_digits()
        raise TopologyError(f"{path}: invalid JSON: {str(e).split(';')[0]}") from None
    if not isinstance(data, dict):
        raise TopologyError(f"{path}: a topology is a JSON object, not {type(data).__name__}")
    return data


#: Validated topologies of files by (path, contents): each machine of a
#: test suite built from the same file checks it once.
_FILE_CACHE: dict[tuple[str, bytes], dict[str, Any]] = {}
_FILE_CACHE_MAX = 16


def _load_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            key: tuple[str, bytes] | None = (os.path.abspath(path), f.read())
    except OSError:
        key = None  # _read_json says why
    cached = _FILE_CACHE.get(key) if key is not None else None
    if cached is None:
        raw = _read_json(path)
        raw.setdefault("name", os.path.splitext(os.path.basename(path))[0])
        cached = _validate(raw)
        if key is not None:
            if len(_FILE_CACHE) >= _FILE_CACHE_MAX:
                _FILE_CACHE.clear()
            _FILE_CACHE[key] = cached
    copied: dict[str, Any] = _copy(cached)
    return copied


def load(source: dict[str, Any] | str | os.PathLike[str]) -> dict[str, Any]:
    """Validate ``source`` (dict, JSON path or shipped name) and return a
    normalised deep copy with all defaults filled in."""
    try:
        return _load(source)
    except RecursionError:
        raise TopologyError("the topology is nested too deeply") from None


def _load(source: dict[str, Any] | str | os.PathLike[str]) -> dict[str, Any]:
    if isinstance(source, dict):
        raw = _copy(source)
    elif isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        if os.sep not in text and not text.endswith(".json"):
            path = os.path.join(TOPOLOGY_DIR, text + ".json")
            if not os.path.exists(path):
                raise TopologyError(
                    f"no shipped topology {text!r} (shipped: {', '.join(shipped())})"
                )
        else:
            path = text
            if not os.path.exists(path):
                raise TopologyError(f"no topology file {path!r}")
        return _load_file(path)
    else:
        raise TopologyError(
            f"a topology is a dict, a JSON file path or a shipped name, not {type(source).__name__}"
        )
    return _validate(raw)


def _regions(value: object, where: str) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise TopologyError(f"{where}: reserved regions are a list")
    out = []
    for i, r in enumerate(value):
        w = f"{where}[{i}]"
        if not isinstance(r, dict):
            raise TopologyError(f"{w}: a reserved region is an object with start, last, type")
        check_keys(r, {"start", "last", "type"}, w)
        start = check_int(r.get("start"), f"{w}.start", 0, (1 << 64) - 1)
        last = check_int(r.get("last"), f"{w}.last", 0, (1 << 64) - 1)
        if last < start:
            raise TopologyError(f"{w}: last {last:#x} is below start {start:#x}")
        rtype = r.get("type", "reserved")
        if rtype not in RESERVED_REGION_TYPES:
            raise TopologyError(
                f"{w}.type: {_shown(rtype)} is not one of {', '.join(RESERVED_REGION_TYPES)}"
            )
        out.append({"start": start, "last": last, "type": rtype})
    return out


def _iommu(value: object) -> dict[str, Any] | None:
    if value is None or value is False:
        return None
    if value is True:
        value = {}
    if not isinstance(value, dict):
        raise TopologyError("iommu: an object, or null for a machine without an IOMMU")
    check_keys(value, set(DEFAULT_IOMMU) | set(_OPTIONAL_IOMMU_REGS) | {"smmu_idr"}, "iommu")
    out = copy.deepcopy(DEFAULT_IOMMU)
    out.update(copy.deepcopy(value))
    if not isinstance(out["name"], str) or not out["name"]:
        raise TopologyError("iommu.name: a non-empty string")
    ap = out["aperture"]
    if not isinstance(ap, (list, tuple)) or len(ap) != 2:
        raise TopologyError("iommu.aperture: [start, last]")
    start = check_int(ap[0], "iommu.aperture[0]", 0, (1 << 64) - 1)
    last = check_int(ap[1], "iommu.aperture[1]", 0, (1 << 64) - 1)
    if last <= start:
        raise TopologyError(f"iommu.aperture: last {last:#x} must be above start {start:#x}")
    out["aperture"] = [start, last]
    pgs = check_int(out["pgsize_bitmap"], "iommu.pgsize_bitmap", 1, (1 << 64) - 1)
    out["pgsize_bitmap"] = pgs
    out["reserved_regions"] = _regions(out["reserved_regions"], "iommu.reserved_regions")
    for key in ("dirty_tracking", "cache_coherency", "enforce_cache_coherency",
                "interrupt_remapping"):
        out[key] = check_bool(out[key], f"iommu.{key}")
    out["pasid_bits"] = check_int(out["pasid_bits"], "iommu.pasid_bits", 0, 20)
    for key, bits in _OPTIONAL_IOMMU_REGS.items():  # registers, as captured
        if key in out:
            out[key] = check_int(out[key], f"iommu.{key}", 0, (1 << bits) - 1)
    if "smmu_idr" in out:  # SMMU_IDR0..5, as IOMMU_GET_HW_INFO reports them
        idr = out["smmu_idr"]
        if not isinstance(idr, (list, tuple)) or len(idr) != 6:
            raise TopologyError("iommu.smmu_idr: a list of the six registers SMMU_IDR0..IDR5")
        out["smmu_idr"] = [check_int(v, f"iommu.smmu_idr[{i}]", 0, (1 << 32) - 1)
                           for i, v in enumerate(idr)]
    if out["hw_info_type"] not in _HW_INFO_TYPES:
        raise TopologyError(
            f"iommu.hw_info_type: {_shown(out['hw_info_type'])} is not one of {', '.join(_HW_INFO_TYPES)}"
        )
    if out["default_domain"] not in _DOMAIN_TYPES:
        raise TopologyError(
            f"iommu.default_domain: {_shown(out['default_domain'])} is not one of {', '.join(_DOMAIN_TYPES)}"
        )
    return out


def _bars(value: object, where: str) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise TopologyError(f"{where}: bars are a list")
    out = []
    seen: set[int] = set()
    for i, bar in enumerate(value):
        w = f"{where}[{i}]"
        if not isinstance(bar, dict):
            raise TopologyError(f"{w}: a BAR is an object with index, size, type")
        check_keys(bar, {"index", "size", "type", "prefetchable", "ram", "mmappable"}, w)
        index = check_int(bar.get("index"), f"{w}.index", 0, 5)
        size = check_int(bar.get("size"), f"{w}.size", 1)
        if size & (size - 1):
            raise TopologyError(f"{w}.size: {_shown(size)} is not a power of two")
        btype = bar.get("type", "mem32")
        if btype not in _BAR_TYPES:
            raise TopologyError(f"{w}.type: {_shown(btype)} is not one of {', '.join(_BAR_TYPES)}")
        if btype == "mem64" and index == 5:
            raise TopologyError(f"{w}: a 64-bit BAR cannot start at index 5")
        if btype == "io" and size > 256:
            raise TopologyError(f"{w}.size: I/O BARs are at most 256 bytes")
        if btype == "mem32" and size > (1 << 31):
            raise TopologyError(f"{w}.size: {size:#x} does not fit a 32-bit BAR")
        taken = {index, index + 1} if btype == "mem64" else {index}
        if taken & seen:
            raise TopologyError(f"{w}: BAR {index} overlaps another BAR")
        seen |= taken
        pref = check_bool(bar.get("prefetchable", False), f"{w}.prefetchable")
        if btype == "io" and pref:
            raise TopologyError(f"{w}: I/O BARs cannot be prefetchable")
        entry = {"index": index, "size": size, "type": btype, "prefetchable": pref}
        for flag in ("ram", "mmappable"):
            if flag in bar:
                entry[flag] = check_bool(bar[flag], f"{w}.{flag}")
        out.append(entry)
    return sorted(out, key=lambda b: b["index"])


def _driver_name(value: object, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", value):
        raise TopologyError(f"{where}: {_shown(value)} is not a driver name")
    return value


def _device(raw: object, i: int, numa_nodes: int) -> dict[str, Any]:
    where = f"devices[{i}]"
    if not isinstance(raw, dict):
        raise TopologyError(f"{where}: a device is an object")
    check_keys(raw, _DEVICE_KEYS, where)
    dev: dict[str, Any] = _copy(raw)
    bdf = normalize_bdf(raw.get("bdf"), f"{where}.bdf")
    where = f"device {bdf}"
    dev["bdf"] = bdf
    model = raw.get("model", "generic")
    if not isinstance(model, str) or not model:
        raise TopologyError(f"{where}.model: a model name")
    dev["model"] = model
    for key, bits in (("vendor", 16), ("device", 16), ("subsystem_vendor", 16),
                      ("subsystem_device", 16), ("revision", 8), ("class", 24)):
        if key in raw:
            dev[key] = check_int(raw[key], f"{where}.{key}", 0, (1 << bits) - 1)
        elif key in ("vendor", "device") and model == "generic":
            raise TopologyError(f"{where}: {key!r} is required for model {model!r}")
    if dev.get("vendor") == 0xFFFF:
        raise TopologyError(f"{where}.vendor: 0xffff is not a valid vendor ID")
    if "bars" in raw:
        dev["bars"] = _bars(raw["bars"], f"{where}.bars")
    dev["driver"] = _driver_name(raw.get("driver"), f"{where}.driver")
    dev["default_driver"] = _driver_name(
        raw.get("default_driver", dev["driver"] if dev["driver"] not in
                ("vfio-pci", "pci-stub") else None),
        f"{where}.default_driver",
    )
    if dev["default_driver"] in ("vfio-pci", "pci-stub"):
        raise TopologyError(
            f"{where}.default_driver: {dev['default_driver']!r} binds only through "
            "driver_override or new_id"
        )
    node = check_int(raw.get("numa_node", -1), f"{where}.numa_node", -1, 1023)
    if node >= numa_nodes:
        raise TopologyError(f"{where}.numa_node: node {node} is not online (numa_nodes={numa_nodes})")
    dev["numa_node"] = node
    if "reset_methods" in raw:
        methods = raw["reset_methods"]
        if not isinstance(methods, list) or any(m not in _RESET_METHODS for m in methods):
            raise TopologyError(
                f"{where}.reset_methods: a list of {', '.join(_RESET_METHODS)}"
            )
        if len(set(methods)) != len(methods):
            raise TopologyError(f"{where}.reset_methods: duplicate method")
        dev["reset_methods"] = list(methods)
    bridge = raw.get("bridge")
    if bridge is None:
        dev.pop("bridge", None)  # null: not a bridge, as when the key is absent
    else:
        if not isinstance(bridge, dict):
            raise TopologyError(f"{where}.bridge: {{'secondary_bus': N, 'conventional': bool}}")
        check_keys(bridge, {"secondary_bus", "conventional"}, f"{where}.bridge")
        dev["bridge"] = {
            "secondary_bus": check_int(bridge.get("secondary_bus"), f"{where}.bridge.secondary_bus", 1, 255),
            "conventional": check_bool(bridge.get("conventional", False), f"{where}.bridge.conventional"),
        }
        if dev.get("class", 0x060400) >> 8 != 0x0604:
            raise TopologyError(f"{where}.bridge: the class of a PCI bridge is 0x0604xx")
    if "pcie" in raw:
        dev["pcie"] = check_bool(raw["pcie"], f"{where}.pcie")
    if "reserved_regions" in raw:
        dev["reserved_regions"] = _regions(raw["reserved_regions"], f"{where}.reserved_regions")
    if raw.get("physfn") is not None:
        dev["physfn"] = normalize_bdf(raw["physfn"], f"{where}.physfn")
    else:
        dev.pop("physfn", None)
    for key in ("sriov_totalvfs", "sriov_numvfs"):
        if raw.get(key) is not None:
            dev[key] = check_int(raw[key], f"{where}.{key}", 0, 0xFFFF)
        else:
            dev.pop(key, None)
    if "sriov_numvfs" in dev and "sriov_totalvfs" not in dev:
        raise TopologyError(f"{where}.sriov_numvfs: only an SR-IOV PF (sriov_totalvfs) has VFs")
    return dev


def _sriov(devices: list[dict[str, Any]]) -> None:
    """Check the PF/VF links and fill in each PF's ``sriov_numvfs``."""
    by_bdf = {d["bdf"]: d for d in devices}
    vfs: dict[str, list[str]] = {}
    for d in devices:
        pf = d.get("physfn")
        if pf is None:
            continue
        where = f"device {d['bdf']}.physfn"
        if pf == d["bdf"]:
            raise TopologyError(f"{where}: a VF is not its own PF")
        if pf not in by_bdf:
            raise TopologyError(f"{where}: no device {pf} in the topology")
        if "sriov_totalvfs" not in by_bdf[pf]:
            raise TopologyError(f"{where}: {pf} is not an SR-IOV PF (it has no sriov_totalvfs)")
        if "sriov_totalvfs" in d:
            raise TopologyError(f"device {d['bdf']}: a VF cannot be an SR-IOV PF itself")
        if pf[:4] != d["bdf"][:4]:
            raise TopologyError(f"{where}: a VF is in the PCI domain of its PF ({pf[:4]})")
        vfs.setdefault(pf, []).append(d["bdf"])
    for d in devices:
        if "sriov_totalvfs" not in d:
            continue
        mine = vfs.get(d["bdf"], [])
        where = f"device {d['bdf']}"
        if len(mine) > d["sriov_totalvfs"]:
            raise TopologyError(f"{where}: {len(mine)} VFs name it as physfn, but sriov_totalvfs "
                                f"is {d['sriov_totalvfs']}")
        if d.get("sriov_numvfs", len(mine)) != len(mine):
            raise TopologyError(f"{where}.sriov_numvfs: {d['sriov_numvfs']}, but {len(mine)} "
                                "device(s) name it as physfn (list every enabled VF)")
        d["sriov_numvfs"] = len(mine)


_OPTION = re.compile(r"^CONFIG_[A-Z0-9_]+$")
# Options that need CONFIG_VFIO and are unset without it.
_VFIO_OPTION = re.compile(r"^CONFIG_VFIO_")
# The fake always has these while VFIO is built: it gives every vfio device
# a cdev and every group a /dev/vfio/N.
_ALWAYS_WITH_VFIO = ("CONFIG_VFIO_DEVICE_CDEV", "CONFIG_VFIO_GROUP")


def normalize_kernel(raw: object) -> dict[str, Any]:
    """The normalised ``kernel`` section: release, the full config (unset
    options as "n") or None, modules_dir."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise TopologyError("kernel: an object with release, config, modules_dir")
    check_keys(raw, {"release", "config", "modules_dir"}, "kernel")
    release = raw.get("release", DEFAULT_KERNEL_RELEASE)
    if not isinstance(release, str) or not re.fullmatch(r"[A-Za-z0-9._+~-]+", release):
        raise TopologyError(f"kernel.release: {_shown(release)} is not a kernel release (like 7.3.0)")
    out: dict[str, Any] = {"release": release,
                           "modules_dir": check_bool(raw.get("modules_dir", True), "kernel.modules_dir")}
    if "config" in raw and raw["config"] is None:
        out["config"] = None
        return out
    declared = raw.get("config", {})
    if not isinstance(declared, dict):
        raise TopologyError("kernel.config: an object of CONFIG_NAME -> value, or null")
    config: dict[str, str] = dict(DEFAULT_KERNEL_CONFIG)
    for name, value in declared.items():
        where = f"kernel.config.{name}"
        if not isinstance(name, str) or not _OPTION.match(name):
            raise TopologyError(f"{where}: option names are CONFIG_ and capitals")
        if value is None or value is False:
            value = "n"
        elif value is True:
            value = "y"
        elif isinstance(value, int):
            value = str(value)
        if not isinstance(value, str) or "\n" in value:
            raise TopologyError(f"{where}: {_shown(value)} is not y, m, n or a value")
        config[name] = value
    if config.get("CONFIG_VFIO", "n") == "n":
        for name in config:
            if _VFIO_OPTION.match(name):
                config[name] = "n"
    if config.get("CONFIG_VFIO", "n") != "n":
        for name in _ALWAYS_WITH_VFIO:
            if config.get(name, "n") != "y":
                raise TopologyError(f"kernel.config.{name}: the fake simulates a kernel that "
                                    "has it while CONFIG_VFIO is set")
    for module, option in MODULE_OPTIONS.items():
        if config.get(option, "n") not in ("y", "m", "n"):
            raise TopologyError(f"kernel.config.{option}: y, m or n (the {module} module)")
    out["config"] = config
    return out


def _validate(raw: dict[str, Any]) -> dict[str, Any]:
    check_keys(raw, _TOP_KEYS, "topology")
    topo: dict[str, Any] = {}
    name = raw.get("name", "custom")
    if not isinstance(name, str):
        raise TopologyError("name: a string")
    topo["name"] = name
    if "description" in raw:
        topo["description"] = str(raw["description"])
    topo["memlock_limit"] = check_int(raw.get("memlock_limit", 64 << 20), "memlock_limit", -1)
    topo["numa_nodes"] = check_int(raw.get("numa_nodes", 1), "numa_nodes", 1, 1024)
    topo["noiommu"] = check_bool(raw.get("noiommu", False), "noiommu")
    kernel = normalize_kernel(raw.get("kernel"))
    topo["kernel"] = kernel
    config = kernel["config"]
    modules = dict(DEFAULT_MODULES)
    mods = raw.get("modules", {})
    if not isinstance(mods, dict):
        raise TopologyError("modules: an object of module name -> loaded")
    check_keys(mods, set(DEFAULT_MODULES), "modules")
    for k, v in mods.items():
        modules[k] = check_bool(v, f"modules.{k}")
    if config is not None:
        for k, option in MODULE_OPTIONS.items():
            state = config.get(option, "n")
            if state == "n" and modules[k]:
                if k in mods:
                    raise TopologyError(f"modules.{k}: loaded, but the kernel is built without "
                                        f"{option} (kernel.config)")
                modules[k] = False
            elif state == "y" and not modules[k]:
                raise TopologyError(f"modules.{k}: not loaded, but {option}=y builds it into "
                                    "the kernel")
    if not modules["vfio"] and (modules["vfio_pci"] or modules["vfio_iommu_type1"]):
        if "vfio_pci" in mods or "vfio_iommu_type1" in mods:
            raise TopologyError("modules: vfio_pci and vfio_iommu_type1 need the vfio module")
        modules["vfio_pci"] = modules["vfio_iommu_type1"] = False
    topo["modules"] = modules
    t1 = dict(DEFAULT_TYPE1)
    t1raw = raw.get("type1", {})
    if not isinstance(t1raw, dict):
        raise TopologyError("type1: an object")
    check_keys(t1raw, set(DEFAULT_TYPE1), "type1")
    if "dma_entry_limit" in t1raw:
        t1["dma_entry_limit"] = check_int(t1raw["dma_entry_limit"], "type1.dma_entry_limit", 0,
                                     (1 << 32) - 1)
    if "allow_unsafe_interrupts" in t1raw:
        t1["allow_unsafe_interrupts"] = check_bool(t1raw["allow_unsafe_interrupts"],
                                              "type1.allow_unsafe_interrupts")
    topo["type1"] = t1
    ifd = dict(DEFAULT_IOMMUFD)
    ifdraw = raw.get("iommufd", {})
    if not isinstance(ifdraw, dict):
        raise TopologyError("iommufd: an object")
    check_keys(ifdraw, set(DEFAULT_IOMMUFD), "iommufd")
    if "allow_unsafe_interrupts" in ifdraw:
        ifd["allow_unsafe_interrupts"] = check_bool(ifdraw["allow_unsafe_interrupts"],
                                                    "iommufd.allow_unsafe_interrupts")
    topo["iommufd"] = ifd
    topo["iommu"] = _iommu(raw.get("iommu", {}))
    if topo["noiommu"] and not modules["vfio"]:
        raise TopologyError("noiommu: needs the vfio module")
    devs = raw.get("devices")
    if not isinstance(devs, list):
        raise TopologyError("devices: a list of PCI devices is required")
    devices = [_device(d, i, topo["numa_nodes"]) for i, d in enumerate(devs)]
    seen: set[str] = set()
    for d in devices:
        if d["bdf"] in seen:
            raise TopologyError(f"devices: {d['bdf']} is listed twice")
        seen.add(d["bdf"])
    parents = bridge_parents(devices)
    _sriov(devices)
    for d in devices:
        if d["driver"] == "vfio-pci" and not modules["vfio_pci"]:
            raise TopologyError(f"device {d['bdf']}: vfio-pci is not loaded (modules.vfio_pci)")
        if d["driver"] == "pci-stub" and not modules["pci_stub"]:
            raise TopologyError(f"device {d['bdf']}: pci-stub is not loaded (modules.pci_stub)")
    topo["devices"] = devices
    if topo["iommu"] is None:
        if raw.get("groups"):
            raise TopologyError("groups: a machine without an IOMMU has no IOMMU groups")
        topo["groups"] = []
    else:
        topo["groups"] = iommu_groups(raw.get("groups"), devices, parents)
    topo["host"] = normalize_host(raw.get("host"), devices)
    return topo
