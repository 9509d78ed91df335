"""How the ``pyvfio`` command shows things on a terminal: tables, headings and
the ``status`` report (the command's data gathering stays in :mod:`.cli`)."""

from __future__ import annotations

import textwrap
from typing import Any

from ..core import sysfs

def table(rows: list[list[str]], header: list[str]) -> str:
    """``rows`` under ``header``, columns padded to their widest cell."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths)).rstrip()]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def heading(title: str) -> str:
    """``title`` underlined."""
    return f"{title}\n{'=' * len(title)}"


def short(bdf: str) -> str:
    """``bdf`` without the PCI domain when it is 0000."""
    return bdf[5:] if bdf.startswith("0000:") else bdf


def print_status(ctx: Any, data: dict[str, Any]) -> None:
    """Print ``pyvfio status``'s report of ``data`` (its JSON form) for the
    command context ``ctx``."""
    s = data["support"]
    if ctx.kind == "fake":
        print(f"System: FAKE system {ctx.fake_name!r} (simulated by pyvfio.fake)")
        if ctx.description:
            print(textwrap.fill(ctx.description, width=78, initial_indent="  ",
                                subsequent_indent="  "))
        if ctx.session is not None and ctx.session.path is not None:
            print(f"State: {ctx.session.path} (kept between commands; --fake-reset "
                  "starts over)")
    else:
        print(f"System: this machine ({ctx.kind} backend)")
    if s["iommu_enabled"]:
        print(f"IOMMU: {', '.join(s['iommus'])}, {s['group_count']} groups")
    elif s["noiommu_mode"]:
        print("IOMMU: none, unsafe no-IOMMU mode is on")
    else:
        print("IOMMU: none: VFIO cannot assign devices here (see `pyvfio doctor`)")
    print(f"VFIO: vfio-pci {'loaded' if s['vfio_pci_driver'] else 'not loaded'}; "
          f"usable interfaces: {interfaces(s)}")
    devices = data["devices"]
    if not devices:
        print("\nno PCI devices found")
        return
    sections: dict[str, list[dict[str, Any]]] = {"vfio": [], "kernel": [], "none": []}
    for d in devices:
        key = "vfio" if d["driver"] == "vfio-pci" else "none" if d["driver"] is None else "kernel"
        sections[key].append(d)

    def viable(d: dict[str, Any]) -> str:
        return {True: "yes", False: "no", None: "-"}[d["group_viable"]]

    def group(d: dict[str, Any]) -> str:
        return "-" if d["iommu_group"] is None else str(d["iommu_group"])

    def ident(d: dict[str, Any]) -> str:
        return f"{d['vendor'][2:]}:{d['device'][2:]}"

    def notes(d: dict[str, Any]) -> str:
        parts = [u["what"] for u in d["in_use"]]
        if d["physfn"]:
            parts.append(f"SR-IOV VF of {d['physfn']}")
        if d["sriov_totalvfs"]:
            parts.append(f"SR-IOV PF, {d['sriov_numvfs'] or 0}/{d['sriov_totalvfs']} VFs")
        if d["driver_override"] and d["driver_override"] != d["driver"]:
            parts.append(f"driver_override={d['driver_override']}")
        return "; ".join(parts) or "-"

    if sections["vfio"]:
        print("\n" + heading("Devices on vfio-pci"))
        rows = [[d["bdf"], ident(d), d["class_name"], group(d), viable(d),
                 ", ".join(p for p in (sysfs.group_dev_path(d["iommu_group"], ctx.backend)
                                       if d["iommu_group"] is not None else "",
                                       f"/dev/vfio/devices/{d['vfio_dev']}" if d["vfio_dev"] else "")
                           if p) or "-"]
                for d in sections["vfio"]]
        print(table(rows, ["BDF", "ID", "CLASS", "GROUP", "VIABLE", "NODES"]))
    if sections["kernel"]:
        print("\n" + heading("Devices on host drivers"))
        rows = [[d["bdf"], ident(d), d["class_name"], d["driver"], group(d), viable(d), notes(d)]
                for d in sections["kernel"]]
        print(table(rows, ["BDF", "ID", "CLASS", "DRIVER", "GROUP", "VIABLE", "IN USE / NOTES"]))
    if sections["none"]:
        print("\n" + heading("Devices without a driver"))
        rows = [[d["bdf"], ident(d), d["class_name"], group(d), viable(d), notes(d)]
                for d in sections["none"]]
        print(table(rows, ["BDF", "ID", "CLASS", "GROUP", "VIABLE", "NOTES"]))
    multi = [g for g in data["groups"] if len(g["members"]) > 1]
    if multi:
        print("\nGroups with several devices (all of them share one I/O address space):")
        for g in multi:
            members = ", ".join(f"{short(m['bdf'])} ({m['driver'] or 'no driver'})"
                                for m in g["members"])
            state = "viable" if g["viable"] else "NOT viable"
            print(f"  group {g['group']}: {state}: {members}")
    print("\nBind a device: pyvfio bind BDF; explain a group: pyvfio groups N")


def interfaces(s: dict[str, Any]) -> str:
    """The usable VFIO interfaces of a ``support`` record."""
    return str(s["interfaces"])
