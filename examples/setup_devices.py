#!/usr/bin/env python3
"""Prepare PCI devices for a VFIO user-space driver, and undo it.

    python examples/setup_devices.py 8086:10d3             # every 82574L -> vfio-pci
    python examples/setup_devices.py --restore 8086:10d3   # give them back
    python examples/setup_devices.py --fake default 8086:100e
    python examples/setup_devices.py --fake server.json 15b3:1017

Devices are named by PCI address or vendor:device ID.  For each one the
script explains its IOMMU group; a device that shares its group with others
is only usable when the whole group is (the kernel's rule), so the script
binds the whole group, after listing which other devices the user's DMA
will be able to reach.  It refuses devices the host is using (a mounted
disk, an interface that is up) unless ``--force``.  Exit status: 0 when
every device ended up usable, 1 otherwise.

``--fake NAME|FILE`` runs against a fake machine (a shipped topology or a
file from ``pyvfio topology dump``), so the script can be tried anywhere:
nothing on this machine changes.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from pyvfio.backend import Backend, default_backend
from pyvfio.core import sysfs, viability
from pyvfio.setup import binding, devices


def find(specs: Sequence[str], b: Backend) -> list[str]:
    """PCI addresses for addresses and vendor:device IDs."""
    pci = devices.pci_devices(b)
    out: list[str] = []
    for spec in specs:
        if ":" in spec and "." not in spec:
            hits = [d.bdf for d in pci if d.id == spec.lower()]
        else:
            bdf = sysfs.normalize_bdf(spec)
            hits = [d.bdf for d in pci if d.bdf == bdf]
        if not hits:
            raise SystemExit(f"no PCI device matches {spec}")
        out += [h for h in hits if h not in out]
    return out


def setup(bdf: str, b: Backend, force: bool) -> bool:
    """Make ``bdf`` usable through VFIO; True when it is."""
    why = viability.explain_device(bdf, b)
    if why.at_risk:
        print(f"{bdf} shares IOMMU group {why.group}; the user's DMA will also reach:")
        for m in why.at_risk:
            print(f"    {m.bdf} {m.description} (driver: {m.driver or 'none'})")
        results = binding.bind_group(why.group, force=force, backend=b)
    else:
        results = [binding.bind(bdf, force=force, backend=b)]
    for r in results:
        print(r)
    after = viability.explain_device(bdf, b)
    if not after.viable:
        print(after.message())
    return after.viable


def main(argv: Sequence[str] | None = None, backend: Backend | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("devices", nargs="+", help="PCI addresses or vendor:device IDs")
    ap.add_argument("--restore", action="store_true", help="give the devices their drivers back")
    ap.add_argument("--force", action="store_true", help="even if the host uses them")
    ap.add_argument("--fake", metavar="NAME|FILE", help="run against a fake machine")
    args = ap.parse_args(argv)
    if backend is None:
        if args.fake:
            from pyvfio.fake import System

            backend = System(args.fake).backend
            print(f"(fake machine {args.fake!r}: nothing on this machine changes)")
        else:
            backend = default_backend()
    ok = True
    try:
        for bdf in find(args.devices, backend):
            if args.restore:
                group = sysfs.device_group(bdf, backend)
                for r in binding.restore_group(group, force=args.force, backend=backend):
                    print(r)
            else:
                ok = setup(bdf, backend, args.force) and ok
    except binding.DeviceInUseError as e:
        print(e, file=sys.stderr)
        return 1
    except OSError as e:
        print(f"failed: {e}", file=sys.stderr)
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
