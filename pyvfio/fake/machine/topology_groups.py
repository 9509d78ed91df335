"""The PCI bridge hierarchy and the IOMMU groups of a topology's devices
(its ``groups`` section, and the groups derived for the devices it does
not list): a device behind a conventional PCI bridge shares the group of
the topmost such bridge above it, as the IOMMU cannot tell their requester
IDs apart.  The format is described in :mod:`.topology`."""

from __future__ import annotations

from typing import Any

from .topology_fields import TopologyError, check_int, check_keys, normalize_bdf

__all__ = ["bridge_parents", "iommu_groups"]


def bridge_parents(devices: list[dict[str, Any]]) -> dict[str, str | None]:
    """bdf -> bdf of the bridge whose secondary bus the device sits on."""
    bridges: dict[tuple[str, int], str] = {}
    for d in devices:
        if "bridge" in d:
            key = (d["bdf"][:4], d["bridge"]["secondary_bus"])
            if key in bridges:
                raise TopologyError(
                    f"device {d['bdf']}: bus {key[1]:02x} is already the secondary bus of {bridges[key]}"
                )
            bridges[key] = d["bdf"]
    parents: dict[str, str | None] = {}
    for d in devices:
        bus = int(d["bdf"][5:7], 16)
        parents[d["bdf"]] = bridges.get((d["bdf"][:4], bus))
    # No cycles: walking up must terminate.
    for bdf in parents:
        seen = {bdf}
        p = parents[bdf]
        while p is not None:
            if p in seen:
                raise TopologyError(f"device {bdf}: the bridge hierarchy has a cycle")
            seen.add(p)
            p = parents[p]
    return parents


def iommu_groups(raw: object, devices: list[dict[str, Any]],
                 parents: dict[str, str | None]) -> list[dict[str, Any]]:
    """The normalised ``groups`` section: the groups listed in ``raw``
    (with their ids, or the lowest free ones) and derived groups for the
    other devices, sorted by id."""
    bdfs = [d["bdf"] for d in devices]
    by_bdf = {d["bdf"]: d for d in devices}
    explicit: list[tuple[int | None, list[str]]] = []
    if raw is not None:
        if not isinstance(raw, list):
            raise TopologyError("groups: a list of groups (lists of PCI addresses)")
        for i, g in enumerate(raw):
            where = f"groups[{i}]"
            gid: int | None = None
            members: object = g
            if isinstance(g, dict):
                check_keys(g, {"id", "devices"}, where)
                gid = check_int(g.get("id"), f"{where}.id", 0, (1 << 31) - 1)
                members = g.get("devices")
            if not isinstance(members, list) or not members:
                raise TopologyError(f"{where}: a non-empty list of PCI addresses")
            explicit.append((gid, [normalize_bdf(b, where) for b in members]))
    placed: dict[str, int] = {}
    for i, (_gid, members) in enumerate(explicit):
        for b in members:
            if b not in by_bdf:
                raise TopologyError(f"groups[{i}]: no device {b} in the topology")
            if b in placed:
                raise TopologyError(f"groups[{i}]: device {b} is already in groups[{placed[b]}]")
            placed[b] = i
    # Derived groups for the rest: each device's isolation root is the
    # topmost conventional bridge above it (or itself).
    derived: dict[str, list[str]] = {}
    for b in bdfs:
        if b in placed:
            continue
        root = b
        p = parents[b]
        while p is not None:
            if by_bdf[p].get("bridge", {}).get("conventional"):
                root = p
            p = parents[p]
        if root in placed:
            raise TopologyError(
                f"device {b} is behind the conventional PCI bridge {root}, which is listed in "
                "'groups' without it: list them in the same group"
            )
        derived.setdefault(root, []).append(b)
    used = {gid for gid, _ in explicit if gid is not None}
    if len(used) != len([g for g, _ in explicit if g is not None]):
        raise TopologyError("groups: duplicate group id")
    out: list[dict[str, Any]] = []
    next_id = 0

    def fresh() -> int:
        nonlocal next_id
        while next_id in used:
            next_id += 1
        used.add(next_id)
        return next_id

    pending: list[tuple[int | None, list[str]]] = list(explicit)
    position = {b: i for i, b in enumerate(bdfs)}
    derived_groups = sorted(derived.values(), key=lambda m: min(position[x] for x in m))
    pending += [(None, members) for members in derived_groups]
    # Plain lists and derived groups are numbered in order of their first
    # device in the device list, after the explicitly numbered ones.
    for gid, members in pending:
        if gid is None:
            gid = fresh()
        members = sorted(members, key=position.__getitem__)
        out.append({"id": gid, "devices": members})
    return sorted(out, key=lambda g: int(g["id"]))
