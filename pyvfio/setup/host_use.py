"""What the host uses a PCI device for, so that it is not taken away.

A device carries the host's work when a block device under it has mounted
file systems or active swap (also through partitions, device-mapper and md
holders, and on every controller of an NVMe multipath disk), when it serves
a mounted 9p or virtio-fs file system, when a network interface under it is
up, or, for a device on vfio-pci, when processes hold its VFIO files open.
:class:`UsageScan` reads all of that once from sysfs and /proc through a
:class:`~pyvfio.backend.base.Backend`; :func:`device_users` asks for one
device.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass
from typing import Any

from ..backend import Backend, resolve_backend
from ..core import sysfs
from ..errors import VfioError

__all__ = ["Usage", "UsageScan", "device_users", "DeviceInUseError"]

_read = sysfs.try_read
_listdir = sysfs.try_listdir

_IFF_UP = 0x1


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


class DeviceInUseError(VfioError):
    """The device (or one of a group) is in use by the host; nothing was
    changed.  Pass ``force=True`` (``--force``) to unbind anyway.

    :ivar usages: what uses it.
    """

    usages: list[Usage]

    def __init__(self, message: str, usages: list[Usage], *, target: str | None = None) -> None:
        super().__init__(errno.EBUSY, message, target=target)
        self.usages = list(usages)
