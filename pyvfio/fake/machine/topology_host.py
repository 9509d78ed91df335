"""The ``host`` section of a topology: what the host uses the devices for
(disks with their partitions and holders, network interfaces, virtio-fs
tags, mounts and swaps), validated against the topology's devices.  The
format is described in :mod:`.topology`; :mod:`.host_use` and
:mod:`.procfs` serve it."""

from __future__ import annotations

import re
from typing import Any

from .topology_fields import TopologyError, check_bool, check_int, check_keys, normalize_bdf

__all__ = ["HOST_KEYS", "normalize_host"]

_DEVNO = re.compile(r"^\d+:\d+$")
#: The lists of the ``host`` section.
HOST_KEYS = ("block", "net", "virtio_fs", "mounts", "swaps")


def _name(value: object, where: str) -> str:
    if not isinstance(value, str) or not value or "/" in value or value.strip() != value:
        raise TopologyError(f"{where}: {value!r} is not a device name")
    return value


def _devno(value: object, where: str) -> str:
    if not isinstance(value, str) or not _DEVNO.match(value):
        raise TopologyError(f"{where}: {value!r} is not a device number (major:minor)")
    return value


def _path(value: object, where: str) -> str:
    # any characters: mountinfo escapes space, tab, newline and backslash
    if not isinstance(value, str) or not value or "\0" in value:
        raise TopologyError(f"{where}: {value!r} is not a path")
    return value


def _host_device(entry: dict[str, Any], where: str, devices: dict[str, dict[str, Any]]) -> str:
    bdf = normalize_bdf(entry.get("device"), f"{where}.device")
    dev = devices.get(bdf)
    if dev is None:
        raise TopologyError(f"{where}.device: {bdf} is not in devices")
    if dev["driver"] is None:
        raise TopologyError(f"{where}.device: {bdf} starts without a driver, so the host "
                            "cannot use it")
    return bdf


def normalize_host(raw: object, devices: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``host`` section, validated against ``devices`` (normalised
    device entries), with every list present."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise TopologyError("host: an object with block, net, virtio_fs, mounts, swaps")
    check_keys(raw, set(HOST_KEYS), "host")
    for key in HOST_KEYS:
        if not isinstance(raw.get(key, []), list):
            raise TopologyError(f"host.{key}: a list")
    by_bdf = {d["bdf"]: d for d in devices}
    names: set[str] = set()

    def unique(name: str, where: str) -> str:
        if name in names:
            raise TopologyError(f"{where}: {name!r} is named twice")
        names.add(name)
        return name

    def obj(x: object, where: str, keys: set[str]) -> dict[str, Any]:
        if not isinstance(x, dict):
            raise TopologyError(f"{where}: an object")
        check_keys(x, keys, where)
        return x

    host: dict[str, Any] = {k: [] for k in HOST_KEYS}
    for i, e in enumerate(raw.get("block", [])):
        w = f"host.block[{i}]"
        e = obj(e, w, {"device", "name", "dev", "partitions", "holders"})
        disk = unique(_name(e.get("name"), f"{w}.name"), f"{w}.name")
        out: dict[str, Any] = {"device": _host_device(e, w, by_bdf), "name": disk,
                               "dev": _devno(e.get("dev"), f"{w}.dev"),
                               "partitions": [], "holders": []}
        for key in ("partitions", "holders"):
            if not isinstance(e.get(key, []), list):
                raise TopologyError(f"{w}.{key}: a list")
        here = {disk}
        for j, p in enumerate(e.get("partitions", [])):
            pw = f"{w}.partitions[{j}]"
            p = obj(p, pw, {"name", "dev"})
            name = unique(_name(p.get("name"), f"{pw}.name"), f"{pw}.name")
            if not name.startswith(disk):
                # the kernel names partitions after their disk
                raise TopologyError(f"{pw}.name: {name!r} does not start with {disk!r}")
            out["partitions"].append({"name": name, "dev": _devno(p.get("dev"), f"{pw}.dev")})
            here.add(name)
        for j, h in enumerate(e.get("holders", [])):
            hw = f"{w}.holders[{j}]"
            h = obj(h, hw, {"name", "dev", "of", "dm_name"})
            name = unique(_name(h.get("name"), f"{hw}.name"), f"{hw}.name")
            of = h.get("of")
            if of not in here:
                raise TopologyError(f"{hw}.of: {of!r} is not {disk!r}, one of its partitions "
                                    "or a holder listed before")
            holder = {"name": name, "dev": _devno(h.get("dev"), f"{hw}.dev"), "of": of}
            if h.get("dm_name") is not None:
                holder["dm_name"] = _name(h["dm_name"], f"{hw}.dm_name")
            out["holders"].append(holder)
            here.add(name)
        host["block"].append(out)
    for i, e in enumerate(raw.get("net", [])):
        w = f"host.net[{i}]"
        e = obj(e, w, {"device", "name", "up", "routes"})
        host["net"].append({
            "device": _host_device(e, w, by_bdf),
            "name": unique(_name(e.get("name"), f"{w}.name"), f"{w}.name"),
            "up": check_bool(e.get("up", True), f"{w}.up"),
            "routes": check_int(e.get("routes", 0), f"{w}.routes", 0, 1 << 20)})
    for i, e in enumerate(raw.get("virtio_fs", [])):
        w = f"host.virtio_fs[{i}]"
        e = obj(e, w, {"device", "tag"})
        tag = e.get("tag")
        if not isinstance(tag, str) or not tag or tag.strip() != tag:
            raise TopologyError(f"{w}.tag: {tag!r} is not a mount tag")
        host["virtio_fs"].append({"device": _host_device(e, w, by_bdf), "tag": tag})
    for i, e in enumerate(raw.get("mounts", [])):
        w = f"host.mounts[{i}]"
        e = obj(e, w, {"source", "target", "fstype", "dev"})
        fstype = e.get("fstype")
        if not isinstance(fstype, str) or not fstype or any(c.isspace() for c in fstype):
            raise TopologyError(f"{w}.fstype: {fstype!r} is not a file system type")
        host["mounts"].append({"source": _path(e.get("source"), f"{w}.source"),
                               "target": _path(e.get("target"), f"{w}.target"),
                               "fstype": fstype, "dev": _devno(e.get("dev", "0:0"), f"{w}.dev")})
    for i, e in enumerate(raw.get("swaps", [])):
        path = _path(e, f"host.swaps[{i}]")
        if any(c.isspace() for c in path):
            raise TopologyError(f"host.swaps[{i}]: {path!r} has white space")
        host["swaps"].append(path)
    return host
