"""Moving PCI devices between their kernel driver and vfio-pci, safely.

The mechanism is the one ``driverctl`` and ``dpdk-devbind`` use: write the
wanted driver's name to the device's ``driver_override``, unbind the
current driver, then ask the PCI bus to probe the device again
(``/sys/bus/pci/drivers_probe``); only the overridden driver can take it::

    from pyvfio.setup import binding

    b = binding.bind("0000:03:00.0")          # e1000e -> vfio-pci
    ...                                       # use it through VFIO
    binding.restore("0000:03:00.0")           # vfio-pci -> e1000e

Safety rules:

* A device the host is using is not unbound unless ``force=True``
  (:class:`DeviceInUseError`, errno EBUSY): block devices under it with
  mounted file systems or active swap (also through partitions, device
  mapper and md holders, and on every controller of an NVMe multipath
  disk), 9p/virtiofs file systems served by it, network interfaces under
  it that are up (their routes are listed), and, for a device on
  vfio-pci, processes holding its VFIO files open (the kernel's unbind
  would wait for them).  See :func:`device_users`.
* The original driver and ``driver_override`` are remembered before
  anything changes, in a :class:`BindingState`: by default the file
  ``/run/pyvfio/bindings.json`` (``$PYVFIO_STATE_DIR`` overrides the
  folder) for the real kernel, and memory kept per backend for a fake
  system.  :func:`restore` puts the device back and forgets the record.
* Failures say what the kernel refused and where the device was left.  One
  case worth knowing (measured on Linux 7.3): while a user owns the IOMMU
  group (``/dev/vfio/N`` open, or a device of it bound to an iommufd), a
  DMA-capable kernel driver cannot take a device of that group: ``bind``
  fails with EBUSY and ``drivers_probe`` with EINVAL, and the device stays
  without a driver.  :func:`restore` then keeps the record so that it can
  be retried once the user is gone.

Whole groups: :func:`bind_group`, :func:`unbind_group`, :func:`restore_group`
act on every device of an IOMMU group except bridges (pcieport, or no
driver: both keep the group viable, and vfio-pci does not drive bridges).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from ..backend import Backend, resolve_backend
from ..core import sysfs, viability
from ..errors import VfioError
from . import devices

__all__ = [
    "Usage",
    "UsageScan",
    "device_users",
    "DeviceInUseError",
    "BindError",
    "Binding",
    "BindingRecord",
    "BindingState",
    "STATE_DIR",
    "bind",
    "unbind",
    "restore",
    "restore_all",
    "bind_group",
    "unbind_group",
    "restore_group",
]

#: Default folder of the state file (``$PYVFIO_STATE_DIR`` overrides it).
STATE_DIR = "/run/pyvfio"
_STATE_FILE = "bindings.json"

_IFF_UP = 0x1
#: What ``unbind`` writes to driver_override: no driver has this name, so
#: nothing binds the device again until :func:`restore` (driverctl's "none").
_NO_DRIVER = "none"


# -- what the host uses ------------------------------------------------------------
@dataclass(frozen=True)
class Usage:
    """One way the host is using a PCI device (or something below it)."""

    bdf: str  #: the PCI device that carries it (the nearest on the path)
    kind: str  #: ``"mount"``, ``"swap"``, ``"net"`` or ``"vfio"``
    what: str  #: e.g. ``"/dev/nvme0n1p1 is mounted on /"``

    def __str__(self) -> str:
        return self.what

    def as_dict(self) -> dict[str, str]:
        """JSON-friendly form."""
        return {"bdf": self.bdf, "kind": self.kind, "what": self.what}


_read = sysfs.try_read
_listdir = sysfs.try_listdir


def _path_bdfs(b: Backend, link: str) -> list[str]:
    """PCI addresses on the canonical sysfs path a link points to, top down."""
    try:
        target = b.sysfs_readlink(link)
    except OSError:
        return []
    return [p for p in target.split("/") if sysfs._BDF_COMPONENT.match(p)]


_NVME_CTRL = re.compile(r"^nvme\d+$")


def _disk_paths(b: Backend, disk: str) -> list[list[str]]:
    """The PCI address chains of the devices behind ``/sys/block/<disk>``:
    one for a disk on a device, one per path for an NVMe multipath head
    disk, whose own parent is the virtual subsystem device (its
    ``multipath/`` group links to the path disks since Linux 6.15; before,
    the subsystem's folder links to its controllers)."""
    own = _path_bdfs(b, f"/sys/block/{disk}")
    if own:
        return [own]
    chains = [c for c in (_path_bdfs(b, f"/sys/block/{disk}/multipath/{p}")
                          for p in _listdir(b, f"/sys/block/{disk}/multipath")) if c]
    if chains:
        return chains
    try:
        target = b.sysfs_readlink(f"/sys/block/{disk}")
    except OSError:
        return []
    head = os.path.normpath(os.path.join("/sys/block", target))
    if "/nvme-subsystem/" not in head:
        return []
    subsys = os.path.dirname(head)
    return [c for c in (_path_bdfs(b, f"{subsys}/{ctrl}") for ctrl in _listdir(b, subsys)
                        if _NVME_CTRL.match(ctrl)) if c]


@dataclass
class _Mount:
    devno: str  # "major:minor"
    source: str
    target: str
    fstype: str


def _unescape(s: str) -> str:
    # /proc/mounts escapes space, tab, newline and backslash as \ooo
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and i + 4 <= len(s) and s[i + 1:i + 4].isdigit():
            out.append(chr(int(s[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def _mounts(b: Backend) -> list[_Mount]:
    text = _read(b, "/proc/self/mountinfo")
    mounts: list[_Mount] = []
    if text is not None:
        for line in text.splitlines():
            parts = line.split()
            if "-" not in parts:
                continue
            sep = parts.index("-")
            if len(parts) < sep + 3 or len(parts) < 5:
                continue
            mounts.append(_Mount(parts[2], _unescape(parts[sep + 2]), _unescape(parts[4]),
                                 parts[sep + 1]))
        return mounts
    for line in (_read(b, "/proc/mounts") or "").splitlines():
        parts = line.split()
        if len(parts) >= 3:
            mounts.append(_Mount("", _unescape(parts[0]), _unescape(parts[1]), parts[2]))
    return mounts


class UsageScan:
    """One scan of what the host uses: mounts, swap, network interfaces and
    open VFIO files, mapped to the PCI devices that carry them.

    Reading everything once makes :meth:`for_device` cheap, so ``pyvfio
    status`` can mark every device.  Paths not present (a fake system has
    no /proc) count as "nothing in use".
    """

    def __init__(self, backend: Backend | None = None, *, vfio_files: bool = False) -> None:
        self.backend = resolve_backend(backend)
        #: usages keyed by every PCI address on the carrying path
        self._by_bdf: dict[str, list[Usage]] = {}
        #: The facts behind the usages, in the form of a fake topology's
        #: ``host`` section (:mod:`pyvfio.fake.machine.topology`): the used block
        #: devices (with partitions and holders), network interfaces and
        #: 9p/virtiofs tags, keyed to the nearest PCI device, and the mounts
        #: and swaps that use them.
        self.facts: dict[str, list[Any]] = {
            "block": [], "net": [], "virtio_fs": [], "mounts": [], "swaps": []}
        self._scan_block()
        self._scan_virtio_fs()
        self._scan_net()
        if vfio_files:
            self._scan_vfio_files()

    def _add(self, path_bdfs: list[str], kind: str, what: str) -> None:
        if not path_bdfs:
            return
        usage = Usage(path_bdfs[-1], kind, what)
        for bdf in path_bdfs:
            self._by_bdf.setdefault(bdf, []).append(usage)

    # -- block devices -------------------------------------------------------------
    def _scan_block(self) -> None:
        b = self.backend
        mounts = _mounts(b)
        swaps = [line.split()[0] for line in (_read(b, "/proc/swaps") or "").splitlines()[1:]
                 if line.split()]
        if not mounts and not swaps:
            return
        # every block device name -> (device numbers, names incl. holders)
        mapper = {}
        for name in _listdir(b, "/sys/block"):
            dm_name = _read(b, f"/sys/block/{name}/dm/name")
            if dm_name:
                mapper[dm_name] = name
        for disk in _listdir(b, "/sys/block"):
            chains = _disk_paths(b, disk)
            if not chains:
                continue
            names, devnos, entry = self._block_closure(disk)
            used = False
            for m in mounts:
                src = os.path.basename(m.source) if m.source.startswith("/dev/") else None
                if src is not None and m.source.startswith("/dev/mapper/"):
                    src = mapper.get(src, src)
                if (m.devno and m.devno in devnos and not m.devno.startswith("0:")) \
                        or (src is not None and src in names):
                    for bdfs in chains:
                        self._add(bdfs, "mount", f"{m.source} ({disk}) is mounted on {m.target}")
                    self._mount_fact(m)
                    used = True
            for s in swaps:
                if s.startswith("/dev/") and os.path.basename(s) in names:
                    for bdfs in chains:
                        self._add(bdfs, "swap", f"{s} ({disk}) is active swap")
                    if s not in self.facts["swaps"]:
                        self.facts["swaps"].append(s)
                    used = True
            if used:
                # a topology gives a disk one device: the first path's
                self.facts["block"].append({"device": chains[0][-1], **entry})

    def _mount_fact(self, m: _Mount) -> None:
        fact = {"source": m.source, "target": m.target, "fstype": m.fstype,
                "dev": m.devno or "0:0"}
        if fact not in self.facts["mounts"]:
            self.facts["mounts"].append(fact)

    def _block_closure(self, disk: str) -> tuple[set[str], set[str], dict[str, Any]]:
        """Names and device numbers of a disk, its partitions and (through
        ``holders``) the device-mapper/md devices stacked on them, and the
        same as a ``host.block`` entry of a topology (without ``device``)."""
        b = self.backend
        names: set[str] = set()
        devnos: set[str] = set()
        entry: dict[str, Any] = {"name": disk, "dev": "", "partitions": [], "holders": []}
        todo: list[tuple[str, str, str | None]] = [(f"/sys/block/{disk}", "disk", None)]
        seen: set[str] = set()
        while todo:
            path, kind, of = todo.pop(0)
            if path in seen:
                continue
            seen.add(path)
            name = os.path.basename(path)
            names.add(name)
            dev = (_read(b, f"{path}/dev") or "").strip()
            if dev:
                devnos.add(dev)
            if kind == "disk":
                entry["dev"] = dev
            elif kind == "partition":
                entry["partitions"].append({"name": name, "dev": dev})
            else:
                holder = {"name": name, "dev": dev, "of": of}
                dm_name = _read(b, f"{path}/dm/name")
                if dm_name:
                    holder["dm_name"] = dm_name.strip()
                entry["holders"].append(holder)
            for sub in _listdir(b, path):
                if sub.startswith(name) and b.exists(f"{path}/{sub}/partition"):
                    todo.append((f"{path}/{sub}", "partition", None))
            for h in _listdir(b, f"{path}/holders"):
                todo.append((f"/sys/block/{h}", "holder", name))
        return names, devnos, entry

    # -- 9p and virtiofs ---------------------------------------------------------------
    def _scan_virtio_fs(self) -> None:
        b = self.backend
        mounts = [m for m in _mounts(b) if m.fstype in ("9p", "virtiofs")]
        if not mounts:
            return
        tags: dict[str, list[str]] = {}
        for bdf in _listdir(b, sysfs.PCI_DEVICES):
            base = f"{sysfs.PCI_DEVICES}/{bdf}"
            for entry in _listdir(b, base):
                if entry.startswith("virtio") and entry[6:].isdigit():
                    tag = _read(b, f"{base}/{entry}/mount_tag")
                    if tag:
                        tags[tag.rstrip("\0").strip()] = _path_bdfs(b, base)
        for fs in _listdir(b, "/sys/fs/virtiofs"):
            tag = _read(b, f"/sys/fs/virtiofs/{fs}/tag")
            bdfs = _path_bdfs(b, f"/sys/fs/virtiofs/{fs}/device")
            if tag and bdfs:
                tags[tag.strip()] = bdfs
        for m in mounts:
            if m.source in tags:
                self._add(tags[m.source], "mount",
                          f"{m.fstype} file system {m.source!r} is mounted on {m.target}")
                self._mount_fact(m)
                fact = {"device": tags[m.source][-1], "tag": m.source}
                if fact not in self.facts["virtio_fs"]:
                    self.facts["virtio_fs"].append(fact)

    # -- network -------------------------------------------------------------------------
    def _scan_net(self) -> None:
        b = self.backend
        routes: dict[str, int] = {}
        for line in (_read(b, "/proc/net/route") or "").splitlines()[1:]:
            parts = line.split()
            if parts:
                routes[parts[0]] = routes.get(parts[0], 0) + 1
        for line in (_read(b, "/proc/net/ipv6_route") or "").splitlines():
            parts = line.split()
            if len(parts) >= 10:
                routes[parts[-1]] = routes.get(parts[-1], 0) + 1
        for iface in _listdir(b, "/sys/class/net"):
            bdfs = _path_bdfs(b, f"/sys/class/net/{iface}")
            if not bdfs:
                continue
            flags = sysfs._int(_read(b, f"/sys/class/net/{iface}/flags"), 16) or 0
            n = routes.get(iface, 0)
            if flags & _IFF_UP or n:
                state = "is up" if flags & _IFF_UP else "is down"
                extra = f" with {n} route(s)" if n else ""
                self._add(bdfs, "net", f"network interface {iface} {state}{extra}")
                self.facts["net"].append({"device": bdfs[-1], "name": iface,
                                          "up": bool(flags & _IFF_UP), "routes": n})

    # -- open VFIO files -------------------------------------------------------------------
    def _scan_vfio_files(self) -> None:
        b = self.backend
        #: bdf -> "process P (comm) has X open" for the device's own VFIO files
        self._device_open: dict[str, list[str]] = {}
        #: group node (/dev/vfio/N) -> processes holding it
        self._group_open: dict[str, list[str]] = {}
        for pid in _listdir(b, "/proc"):
            if not pid.isdigit():
                continue
            comm: str | None = None
            for fd in _listdir(b, f"/proc/{pid}/fd"):
                try:
                    target = b.sysfs_readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if not (target.startswith("/dev/vfio/") or target == "anon_inode:[vfio-device]"):
                    continue
                if comm is None:
                    comm = (_read(b, f"/proc/{pid}/comm") or "?").strip()
                who = f"process {pid} ({comm})"
                tail = target[len("/dev/vfio/"):]
                if tail.isdigit() or tail.startswith("noiommu-"):
                    self._group_open.setdefault(target, []).append(who)
                    continue
                # a device file (cdev, or a group's device fd): Linux 6.10+
                # names the device in fdinfo
                bdf = None
                for line in (_read(b, f"/proc/{pid}/fdinfo/{fd}") or "").splitlines():
                    if line.startswith("vfio-device-syspath:"):
                        bdf = os.path.basename(line.split(":", 1)[1].strip())
                if bdf is None and target.startswith("/dev/vfio/devices/"):
                    bdf = self._cdev_owner(os.path.basename(target))
                if bdf is not None:
                    what = target if target.startswith("/dev/") else "a VFIO device file"
                    self._device_open.setdefault(bdf, []).append(f"{who} has {what} open")

    def _cdev_owner(self, name: str) -> str | None:
        b = self.backend
        for bdf in _listdir(b, sysfs.PCI_DEVICES):
            if name in _listdir(b, f"{sysfs.PCI_DEVICES}/{bdf}/vfio-dev"):
                return bdf
        return None

    def for_device(self, bdf: str) -> list[Usage]:
        """How the host uses ``bdf`` or anything below it, and (with
        ``vfio_files=True``) processes with the device's VFIO files open:
        unbinding it from vfio-pci would wait until they close them."""
        bdf = sysfs.normalize_bdf(bdf)
        usages = list(self._by_bdf.get(bdf, []))
        for what in sorted(set(getattr(self, "_device_open", {}).get(bdf, []))):
            usages.append(Usage(bdf, "vfio", what))
        return usages

    def group_users(self, bdf: str) -> list[Usage]:
        """Processes that hold ``bdf``'s IOMMU group (``/dev/vfio/N``) or
        another device of it open (needs ``vfio_files=True``): while a user
        owns the group, the kernel refuses DMA-capable host drivers for all
        of its devices."""
        device_open: dict[str, list[str]] = getattr(self, "_device_open", {})
        group_open: dict[str, list[str]] = getattr(self, "_group_open", {})
        if not device_open and not group_open:
            return []
        b = self.backend
        bdf = sysfs.normalize_bdf(bdf)
        try:
            gid = sysfs.device_group(bdf, b)
        except VfioError:
            return []
        out = []
        for node in (f"/dev/vfio/{gid}", f"/dev/vfio/noiommu-{gid}"):
            for who in sorted(set(group_open.get(node, []))):
                out.append(Usage(bdf, "vfio-group", f"{who} has {node} open"))
        for other in sysfs.group_devices(gid, b):
            if other != bdf:
                for what in sorted(set(device_open.get(other, []))):
                    out.append(Usage(bdf, "vfio-group",
                                     f"{what} (device {other} of the same IOMMU group)"))
        return out


def device_users(bdf: str, backend: Backend | None = None) -> list[Usage]:
    """What keeps PCI device ``bdf`` busy: mounted file systems and swap on
    block devices under it, network interfaces under it that are up, 9p and
    virtiofs mounts it serves (kinds ``mount``, ``swap``, ``net``);
    processes with its VFIO files open (``vfio``); processes holding its
    IOMMU group (``vfio-group``: a host driver cannot take the device back
    then).  Empty when nothing pyvfio can see uses it."""
    scan = UsageScan(backend, vfio_files=True)
    return scan.for_device(bdf) + scan.group_users(bdf)


# -- errors -----------------------------------------------------------------------------
class DeviceInUseError(VfioError):
    """The device (or one of a group) is in use by the host; nothing was
    changed.  Pass ``force=True`` (``--force``) to unbind anyway.

    :ivar usages: what uses it.
    """

    usages: list[Usage]

    def __init__(self, message: str, usages: list[Usage], *, target: str | None = None) -> None:
        super().__init__(errno.EBUSY, message, target=target)
        self.usages = list(usages)


class BindError(VfioError):
    """Binding, unbinding or restoring a device failed.  The message says
    what the kernel refused and which driver the device was left on."""


# -- state ------------------------------------------------------------------------------
@dataclass(frozen=True)
class BindingRecord:
    """What a device was bound to before pyvfio changed it."""

    bdf: str  #: the device's PCI address
    driver: str | None  #: the original driver (None: it had none)
    driver_override: str | None  #: the original driver_override
    since: float = 0.0  #: when the record was made (time.time())

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {"bdf": self.bdf, "driver": self.driver,
                "driver_override": self.driver_override, "since": self.since}


_memory_states: weakref.WeakKeyDictionary[Backend, BindingState] = weakref.WeakKeyDictionary()


class BindingState:
    """Where original drivers are remembered: a JSON file (shared between
    processes, guarded by an flock on ``<file>.lock``) or, with
    ``path=None``, memory."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self._memory: dict[str, dict[str, Any]] = {}

    @classmethod
    def default(cls, backend: Backend | None = None) -> BindingState:
        """The state for ``backend``: the state file for the real kernel,
        memory kept for the backend's lifetime otherwise."""
        b = resolve_backend(backend)
        if b.name == "kernel":
            folder = os.environ.get("PYVFIO_STATE_DIR") or STATE_DIR
            return cls(os.path.join(folder, _STATE_FILE))
        state = _memory_states.get(b)
        if state is None:
            state = cls(None)
            _memory_states[b] = state
        return state

    def _load(self) -> dict[str, dict[str, Any]]:
        if self.path is None:
            return self._memory
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise BindError(errno.EIO, f"cannot read the binding state {self.path}: {e}") from None
        devices = data.get("devices", {}) if isinstance(data, dict) else {}
        return {k: v for k, v in devices.items() if isinstance(v, dict)}

    def _update(self, change: Callable[[dict[str, dict[str, Any]]], None]) -> None:
        if self.path is None:
            change(self._memory)
            return
        folder = os.path.dirname(self.path) or "."
        try:
            os.makedirs(folder, mode=0o755, exist_ok=True)
            lock = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise BindError(e.errno or errno.EIO,
                            f"cannot write the binding state in {folder}: {e.strerror} "
                            "(run as root, or set PYVFIO_STATE_DIR)") from None
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self._load()
            change(data)
            tmp = f"{self.path}.{os.getpid()}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"version": 1, "devices": data}, f, indent=2, sort_keys=True)
                f.write("\n")
            os.replace(tmp, self.path)
        finally:
            os.close(lock)

    def get(self, bdf: str) -> BindingRecord | None:
        """The record of ``bdf``, if pyvfio changed its driver."""
        raw = self._load().get(bdf)
        if raw is None:
            return None
        return BindingRecord(bdf, raw.get("driver"), raw.get("driver_override"),
                             float(raw.get("since", 0.0)))

    def records(self) -> list[BindingRecord]:
        """Every record, by address."""
        out = []
        for bdf in sorted(self._load()):
            rec = self.get(bdf)
            if rec is not None:
                out.append(rec)
        return out

    def remember(self, bdf: str, driver: str | None, override: str | None) -> None:
        """Record the original state, unless a record exists (the first
        record is the original)."""
        def change(data: dict[str, dict[str, Any]]) -> None:
            data.setdefault(bdf, {"driver": driver, "driver_override": override,
                                  "since": time.time()})
        self._update(change)

    def forget(self, bdf: str) -> None:
        """Drop the record of ``bdf``."""
        def change(data: dict[str, dict[str, Any]]) -> None:
            data.pop(bdf, None)
        self._update(change)


# -- results ----------------------------------------------------------------------------
@dataclass
class Binding:
    """The outcome of :func:`bind`, :func:`unbind` or :func:`restore` for
    one device."""

    bdf: str  #: the device's PCI address
    previous_driver: str | None  #: the driver before this call
    driver: str | None  #: the driver now
    changed: bool  #: whether this call changed anything
    group: int | None  #: the IOMMU group
    #: The device's original state, as remembered (None after a restore).
    original: BindingRecord | None = None
    #: VFIO device nodes of the device, once bound to vfio-pci.
    nodes: list[str] = field(default_factory=list)
    #: Notes for people (e.g. "group 11 is not viable yet: ...").
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {"bdf": self.bdf, "previous_driver": self.previous_driver,
                "driver": self.driver, "changed": self.changed, "group": self.group,
                "original": self.original.as_dict() if self.original else None,
                "nodes": list(self.nodes), "notes": list(self.notes)}

    def __str__(self) -> str:
        if not self.changed:
            line = f"{self.bdf}: already on {self.driver or 'no driver'}"
        else:
            line = (f"{self.bdf}: {self.previous_driver or 'no driver'} -> "
                    f"{self.driver or 'no driver'}")
        if self.group is not None:
            line += f" (IOMMU group {self.group})"
        if self.nodes:
            line += ": " + ", ".join(self.nodes)
        return "\n".join([line] + [f"  note: {n}" for n in self.notes])


# -- the sysfs steps --------------------------------------------------------------------
def _write(b: Backend, path: str, value: str, what: str) -> None:
    try:
        b.sysfs_write(path, value)
    except OSError as e:
        err = e.errno or errno.EIO
        hint = " (run as root)" if err in (errno.EACCES, errno.EPERM) else ""
        raise BindError(err, f"{what}: writing {value.strip()!r} to {path} failed: "
                             f"{os.strerror(err)}{hint}") from None


def _override(b: Backend, bdf: str) -> str | None:
    text = _read(b, f"{sysfs.PCI_DEVICES}/{bdf}/driver_override")
    return None if text in (None, "", "(null)") else text


def _set_override(b: Backend, bdf: str, driver: str | None) -> None:
    # An empty write never reaches the kernel's store function: "\n" clears.
    _write(b, f"{sysfs.PCI_DEVICES}/{bdf}/driver_override", driver or "\n",
           f"setting the driver override of {bdf}")


def _unbind_driver(b: Backend, bdf: str, driver: str) -> None:
    _write(b, f"/sys/bus/pci/drivers/{driver}/unbind", bdf, f"unbinding {bdf} from {driver}")


def _probe(b: Backend, bdf: str) -> OSError | None:
    try:
        b.sysfs_write("/sys/bus/pci/drivers_probe", bdf)
    except OSError as e:
        return e
    return None


def _group_of(b: Backend, bdf: str) -> int | None:
    try:
        return sysfs.device_group(bdf, b)
    except VfioError:
        return None


def _vfio_nodes(b: Backend, bdf: str, group: int | None, timeout: float) -> list[str]:
    """The device's VFIO nodes; waits up to ``timeout`` for udev/devtmpfs to
    create them (they appear asynchronously after the bind)."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = []
        if group is not None:
            path = sysfs.group_dev_path(group, b)
            if b.exists(path):
                nodes.append(path)
        try:
            cdev = sysfs.device_cdev_path(bdf, b)
        except VfioError:
            cdev = None
        if cdev is not None and b.exists(cdev):
            nodes.append(cdev)
        expected = (group is not None) + (cdev is not None)
        if len(nodes) >= max(expected, 1) or time.monotonic() >= deadline:
            return nodes
        time.sleep(0.02)


def _busy_group_note(b: Backend, bdf: str, group: int | None) -> str:
    """Why a kernel driver may have been refused: the group is user-owned."""
    if group is None:
        return ""
    others = [m for m in sysfs.group_devices(group, b) if m != bdf]
    on_vfio = [m for m in others if sysfs.device_driver(m, b) == "vfio-pci"]
    holders = [u.what for u in UsageScan(b, vfio_files=True).group_users(bdf)]
    if not on_vfio and not holders:
        return ""
    text = (f"IOMMU group {group} may be owned by user space ({', '.join(on_vfio)} on vfio-pci"
            + (f"; {'; '.join(sorted(set(holders)))}" if holders else "") + "): while a user owns "
            "the group the kernel refuses DMA-capable drivers for its devices (bind: EBUSY, "
            f"drivers_probe: EINVAL); close the VFIO files and run `pyvfio restore {bdf}` again")
    return text


def _in_use(b: Backend, bdfs: Iterable[str], what: str, host_driver: bool = False) -> None:
    """DeviceInUseError when something uses the devices; ``host_driver``:
    a DMA-capable host driver is to take them, so holders of their IOMMU
    group count too."""
    scan = UsageScan(b, vfio_files=True)
    usages = [u for bdf in bdfs for u in scan.for_device(bdf)
              + (scan.group_users(bdf) if host_driver else [])]
    if usages:
        lines = "\n".join(f"  - {u.bdf}: {u.what}" for u in usages)
        raise DeviceInUseError(
            f"refusing to {what}: the host is using it:\n{lines}\n"
            "stop using it first, or pass --force (force=True) to do it anyway", usages)


def _device(b: Backend, bdf: str) -> devices.PciDeviceInfo:
    try:
        return devices.pci_device(bdf, b)
    except VfioError as e:
        raise BindError(errno.ENODEV, str(e), target=f"device {bdf}") from None


# -- operations -------------------------------------------------------------------------
def bind(bdf: str, driver: str = "vfio-pci", *, force: bool = False,
         backend: Backend | None = None, state: BindingState | None = None,
         timeout: float = 5.0) -> Binding:
    """Bind PCI device ``bdf`` to ``driver`` (vfio-pci by default).

    Raises :class:`DeviceInUseError` when the host uses the device (unless
    ``force``), :class:`BindError` when the kernel refuses.  The original
    driver is remembered in ``state`` (:meth:`BindingState.default`) for
    :func:`restore`.  For vfio-pci, waits up to ``timeout`` seconds for the
    device nodes to appear.
    """
    b = resolve_backend(backend)
    st = state if state is not None else BindingState.default(b)
    info = _device(b, sysfs.normalize_bdf(bdf))
    bdf = info.bdf
    group = info.iommu_group
    if info.driver == driver:
        nodes = _vfio_nodes(b, bdf, group, 0) if driver == "vfio-pci" else []
        return Binding(bdf, driver, driver, False, group, st.get(bdf), nodes)
    if driver == "vfio-pci" and info.is_bridge:
        raise BindError(errno.EINVAL, f"{bdf} is a PCI bridge ({info.description}): vfio-pci "
                                      "does not drive bridges, and a bridge on pcieport or "
                                      "without a driver keeps its group viable",
                        target=f"device {bdf}")
    if not b.exists(f"/sys/bus/pci/drivers/{driver}"):
        module = driver.replace("-", "_")
        raise BindError(errno.ENODEV, f"the {driver} driver is not loaded (modprobe {module})",
                        target=f"device {bdf}")
    if driver == "vfio-pci" and group is None and not _noiommu(b):
        raise BindError(errno.EINVAL, f"{bdf} is in no IOMMU group: vfio-pci needs an active "
                                      "IOMMU (see `pyvfio doctor`)", target=f"device {bdf}")
    host_driver = not viability.driver_keeps_group_viable(driver)
    if (info.driver is not None or host_driver) and not force:
        _in_use(b, [bdf], f"unbind {bdf} from {info.driver}" if info.driver is not None
                else f"bind {bdf} to {driver}", host_driver)
    st.remember(bdf, info.driver, info.driver_override)
    _set_override(b, bdf, driver)
    if info.driver is not None:
        _unbind_driver(b, bdf, info.driver)
    err = _probe(b, bdf)
    now = sysfs.device_driver(bdf, b)
    if now != driver:
        why = f" (drivers_probe: {os.strerror(err.errno)})" if err is not None and err.errno else ""
        note = _busy_group_note(b, bdf, group) if driver not in viability.VIABLE_DRIVERS else ""
        raise BindError(errno.EIO if err is None else (err.errno or errno.EIO),
                        f"{driver} did not take {bdf}{why}; the device is now on "
                        f"{now or 'no driver'}" + (f"; {note}" if note else "")
                        + f"; `pyvfio restore {bdf}` returns it to "
                          f"{info.driver or 'no driver'}", target=f"device {bdf}")
    result = Binding(bdf, info.driver, now, True, group, st.get(bdf))
    if driver == "vfio-pci":
        result.nodes = _vfio_nodes(b, bdf, group, timeout)
    if group is not None:
        verdict = viability.explain_group(group, bdf, b)
        if not verdict.viable:
            result.notes.append(verdict.summary())
        elif verdict.at_risk and driver == "vfio-pci":
            result.notes.append(
                f"group {group} has {len(verdict.at_risk)} other device(s) that share its I/O "
                "address space: " + ", ".join(f"{m.bdf} ({m.driver or 'no driver'})"
                                              for m in verdict.at_risk))
    return result


def _noiommu(b: Backend) -> bool:
    return (_read(b, "/sys/module/vfio/parameters/enable_unsafe_noiommu_mode") or "N") in ("Y", "1")


def unbind(bdf: str, *, force: bool = False, backend: Backend | None = None,
           state: BindingState | None = None) -> Binding:
    """Detach ``bdf`` from its driver and keep it driver-less (its
    driver_override becomes ``none``, so no driver takes it until
    :func:`restore`).  A driver-less device keeps its group viable."""
    b = resolve_backend(backend)
    st = state if state is not None else BindingState.default(b)
    info = _device(b, sysfs.normalize_bdf(bdf))
    bdf = info.bdf
    if info.driver is None and info.driver_override == _NO_DRIVER:
        return Binding(bdf, None, None, False, info.iommu_group, st.get(bdf))
    if info.driver is not None and not force:
        _in_use(b, [bdf], f"unbind {bdf} from {info.driver}")
    st.remember(bdf, info.driver, info.driver_override)
    _set_override(b, bdf, _NO_DRIVER)
    if info.driver is not None:
        _unbind_driver(b, bdf, info.driver)
    return Binding(bdf, info.driver, sysfs.device_driver(bdf, b), info.driver is not None,
                   info.iommu_group, st.get(bdf))


def restore(bdf: str | Binding, *, force: bool = False, backend: Backend | None = None,
            state: BindingState | None = None) -> Binding:
    """Give ``bdf`` back its original driver and driver_override (from the
    :class:`Binding` passed, else from ``state``).  Without a record, the
    override is cleared and the kernel picks the driver, as after boot.

    Raises :class:`BindError` when the original driver does not take the
    device back (the record is kept, so it can be retried).
    """
    b = resolve_backend(backend)
    st = state if state is not None else BindingState.default(b)
    record = bdf.original if isinstance(bdf, Binding) else None
    name = sysfs.normalize_bdf(bdf.bdf if isinstance(bdf, Binding) else bdf)
    if record is None:
        record = st.get(name)
    info = _device(b, name)
    bdf = info.bdf
    group = info.iommu_group
    if record is not None:
        target, target_override = record.driver, record.driver_override
        if info.driver == target and info.driver_override == target_override:
            st.forget(bdf)
            return Binding(bdf, info.driver, info.driver, False, group, None)
    else:
        target, target_override = None, None
        if info.driver_override is None and info.driver not in (None, "vfio-pci"):
            return Binding(bdf, info.driver, info.driver, False, group, None,
                           notes=["no record of another original driver: left as it is"])
    need_unbind = info.driver is not None and (record is None or info.driver != target)
    host_driver = (record is None or target is not None) \
        and not viability.driver_keeps_group_viable(target)
    if (need_unbind or host_driver) and not force:
        _in_use(b, [bdf], f"give {bdf} back to {target or 'the kernel'}"
                if host_driver else f"unbind {bdf} from {info.driver}", host_driver)
    if info.driver_override != target_override:
        _set_override(b, bdf, target_override)
    if need_unbind:
        assert info.driver is not None
        _unbind_driver(b, bdf, info.driver)
    err: OSError | None = None
    if sysfs.device_driver(bdf, b) is None and (record is None or target is not None):
        err = _probe(b, bdf)
        if target is not None and sysfs.device_driver(bdf, b) is None \
                and b.exists(f"/sys/bus/pci/drivers/{target}"):
            try:
                b.sysfs_write(f"/sys/bus/pci/drivers/{target}/bind", bdf)
            except OSError as e:
                err = e
    now = sysfs.device_driver(bdf, b)
    if record is not None and now != target:
        why = f" ({os.strerror(err.errno)})" if err is not None and err.errno else ""
        note = _busy_group_note(b, bdf, group)
        raise BindError(errno.EIO if err is None else (err.errno or errno.EIO),
                        f"{target} did not take {bdf} back{why}; the device is now on "
                        f"{now or 'no driver'}" + (f"; {note}" if note else "")
                        + "; the record is kept", target=f"device {bdf}")
    if record is not None:
        st.forget(bdf)
    result = Binding(bdf, info.driver, now, now != info.driver or need_unbind, group, None)
    if record is None:
        result.notes.append(f"no record of its original driver: the kernel chose {now or 'no driver'}")
    return result


def restore_all(*, force: bool = False, backend: Backend | None = None,
                state: BindingState | None = None) -> list[Binding]:
    """:func:`restore` every device with a record.  Stops at the first
    failure (:class:`BindError`, :class:`DeviceInUseError`)."""
    b = resolve_backend(backend)
    st = state if state is not None else BindingState.default(b)
    return [restore(rec.bdf, force=force, backend=b, state=st) for rec in st.records()]


def _group_targets(b: Backend, group: int) -> list[str]:
    why = viability.explain_group(group, None, b)
    return [m.bdf for m in why.members
            if not m.is_bridge and sysfs._BDF_COMPONENT.match(m.bdf)]


def bind_group(group: int, driver: str = "vfio-pci", *, force: bool = False,
               backend: Backend | None = None, state: BindingState | None = None,
               timeout: float = 5.0) -> list[Binding]:
    """Bind every device of IOMMU group ``group`` except bridges to
    ``driver``.  Checks all devices for host use first (nothing changes if
    one is in use); if one bind fails, the devices this call moved are
    restored and the error is raised."""
    b = resolve_backend(backend)
    st = state if state is not None else BindingState.default(b)
    targets = _group_targets(b, group)
    if not force:
        host_driver = not viability.driver_keeps_group_viable(driver)
        busy = [t for t in targets if sysfs.device_driver(t, b) not in (None, driver)
                or host_driver]
        _in_use(b, busy, f"bind IOMMU group {group} to {driver}", host_driver)
    done: list[Binding] = []
    try:
        for bdf in targets:
            done.append(bind(bdf, driver, force=True, backend=b, state=st, timeout=timeout))
    except VfioError:
        for res in reversed(done):
            if res.changed:
                try:
                    restore(res.bdf, force=True, backend=b, state=st)
                except VfioError:
                    pass
        raise
    for res in done:
        res.notes = [n for n in res.notes if not n.startswith(f"group {group} ")]
    return done


def unbind_group(group: int, *, force: bool = False, backend: Backend | None = None,
                 state: BindingState | None = None) -> list[Binding]:
    """:func:`unbind` every device of IOMMU group ``group`` except bridges
    (checking all of them for host use first)."""
    b = resolve_backend(backend)
    targets = _group_targets(b, group)
    if not force:
        _in_use(b, [t for t in targets if sysfs.device_driver(t, b) is not None],
                f"unbind IOMMU group {group}")
    return [unbind(t, force=True, backend=b, state=state) for t in targets]


def restore_group(group: int, *, force: bool = False, backend: Backend | None = None,
                  state: BindingState | None = None) -> list[Binding]:
    """:func:`restore` every device of IOMMU group ``group`` that has a
    record (every non-bridge device when none has)."""
    b = resolve_backend(backend)
    st = state if state is not None else BindingState.default(b)
    targets = _group_targets(b, group)
    recorded = [t for t in targets if st.get(t) is not None]
    return [restore(t, force=force, backend=b, state=st) for t in (recorded or targets)]
