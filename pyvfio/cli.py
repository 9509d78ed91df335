"""The ``pyvfio`` command: device setup and environment checks.

Exit codes: 0 success; 1 the command ran but found a problem (a failed
check, a non-viable group); 2 bad usage; 3 an operation failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from . import sysfs
from .backend import Backend, default_backend
from .environment import FAIL, check_environment

__all__ = ["main"]

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, EXIT_FAILED = 0, 1, 2, 3


def _backend(args: argparse.Namespace) -> Backend:
    if args.fake:
        from .fake import System

        backend: Backend = System(args.fake).backend
        return backend
    return default_backend()


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths)).rstrip()]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def _devices(b: Backend) -> list[dict[str, Any]]:
    out = []
    try:
        bdfs = b.sysfs_listdir(sysfs.PCI_DEVICES)
    except OSError:
        bdfs = []
    for bdf in bdfs:
        base = f"{sysfs.PCI_DEVICES}/{bdf}"

        def attr(name: str) -> str:
            try:
                return b.sysfs_read(f"{base}/{name}")
            except OSError:
                return ""

        try:
            group: int | None = sysfs.device_group(bdf, b)
        except OSError:
            group = None
        out.append({
            "bdf": bdf,
            "vendor": attr("vendor"),
            "device": attr("device"),
            "class": attr("class"),
            "driver": sysfs.device_driver(bdf, b),
            "iommu_group": group,
        })
    return out


def cmd_doctor(args: argparse.Namespace) -> int:
    b = _backend(args)
    checks = check_environment(b)
    if args.json:
        print(json.dumps([c.as_dict() for c in checks], indent=2))
    else:
        if args.fake:
            print(f"(fake system: {args.fake})")
        rows = [[c.status.upper(), c.name, c.detail + (f"  -> {c.fix}" if c.fix else "")]
                for c in checks]
        print(_table(rows, ["STATUS", "CHECK", "DETAIL"]))
    return EXIT_PROBLEM if any(c.status == FAIL for c in checks) else EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    b = _backend(args)
    devices = _devices(b)
    groups: dict[int, bool] = {}
    for d in devices:
        g = d["iommu_group"]
        if g is not None and g not in groups:
            groups[g] = not sysfs.viability_blockers(g, b)
    for d in devices:
        g = d["iommu_group"]
        d["group_viable"] = groups.get(g) if g is not None else None
    if args.json:
        print(json.dumps(devices, indent=2))
        return EXIT_OK
    if args.fake:
        print(f"(fake system: {args.fake})")
    if not devices:
        print("no PCI devices found")
        return EXIT_OK
    by_driver: dict[str, list[dict[str, Any]]] = {}
    for d in devices:
        key = ("vfio-pci" if d["driver"] == "vfio-pci" else
               "no driver" if d["driver"] is None else "kernel driver")
        by_driver.setdefault(key, []).append(d)
    for title in ("vfio-pci", "kernel driver", "no driver"):
        items = by_driver.get(title, [])
        if not items:
            continue
        print(f"Devices with {title}:" if title != "no driver" else "Devices without a driver:")
        rows = [[d["bdf"], f"{d['vendor'][2:]}:{d['device'][2:]}", d["class"],
                 d["driver"] or "-", "-" if d["iommu_group"] is None else str(d["iommu_group"]),
                 {True: "viable", False: "not viable", None: "-"}[d["group_viable"]]]
                for d in items]
        print(_table(rows, ["BDF", "ID", "CLASS", "DRIVER", "GROUP", "GROUP STATE"]))
        print()
    return EXIT_OK


def cmd_groups(args: argparse.Namespace) -> int:
    b = _backend(args)
    try:
        ids = sorted(int(g) for g in b.sysfs_listdir(sysfs.IOMMU_GROUPS))
    except OSError:
        ids = []
    result: list[dict[str, Any]] = []
    for g in ids:
        blockers = sysfs.viability_blockers(g, b)
        result.append({
            "group": g,
            "devices": sysfs.group_devices(g, b),
            "viable": not blockers,
            "blockers": [{"bdf": x.bdf, "driver": x.driver, "reason": x.reason} for x in blockers],
        })
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        if not result:
            print("no IOMMU groups (is the IOMMU enabled? see `pyvfio doctor`)")
        for r in result:
            state = "viable" if r["viable"] else "NOT viable"
            print(f"group {r['group']}: {state}: {', '.join(r['devices'])}")
            for x in r["blockers"]:
                print(f"    blocked by {x['reason']}")
    return EXIT_OK if all(r["viable"] for r in result) else EXIT_PROBLEM


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyvfio", description=__doc__.splitlines()[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--fake", metavar="NAME|FILE",
                        help="run against a fake system (a shipped topology name or a JSON file)")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("doctor", parents=[common],
                   help="check IOMMU, modules, device nodes and limits").set_defaults(
        func=cmd_doctor)
    sub.add_parser("status", parents=[common],
                   help="PCI devices by driver, with IOMMU groups").set_defaults(func=cmd_status)
    sub.add_parser("groups", parents=[common],
                   help="IOMMU groups, members and viability").set_defaults(func=cmd_groups)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0) and EXIT_USAGE
    try:
        return int(args.func(args))
    except OSError as exc:
        print(f"pyvfio: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
