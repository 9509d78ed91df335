#!/usr/bin/env python3
"""What can this device's driver do beyond plain vfio-pci?  Probe its
VFIO_DEVICE_FEATUREs, and save its state when it supports migration.

    python3 examples/migration_probe.py --fake                 # the fake's edu
    python3 examples/migration_probe.py --bdf 0000:01:00.0     # a device on vfio-pci

Each feature is asked with VFIO_DEVICE_FEATURE_PROBE, for GET and for SET.
Plain vfio-pci offers low-power entry/exit and the SR-IOV VF token;
migration (the VFIO_DEVICE_STATE_* machine and its data fd), device DMA
logging and the data-size query come from variant drivers such as mlx5 or
hisi_acc.  When migration is there, the device is stopped, its state read
through the STOP_COPY data fd, and the device set running again -- what a
VMM does at the end of a migration, without a destination.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

try:
    import pyvfio
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import pyvfio
from pyvfio import Device, IommuFd, MigrationState
from pyvfio.backend import Backend
from pyvfio.core.features import Feature, MigrationFlags
from pyvfio.setup import devices


@dataclass
class ProbeResult:
    """What the device's driver offers."""

    supported: dict[str, str] = field(default_factory=dict)  #: feature -> "get"/"set"/"get/set"
    migration: MigrationFlags | None = None  #: None: no migration support
    saved_bytes: int | None = None  #: size of the state read in STOP_COPY
    final_state: MigrationState | None = None


def run(bdf: str, backend: Backend, out: Callable[[str], None] = print) -> ProbeResult:
    """Probe the device at ``bdf`` (bound to vfio-pci, opened as a cdev)."""
    result = ProbeResult()
    with IommuFd(backend=backend) as iommufd, Device.open(bdf, backend=backend) as device:
        device.bind(iommufd)
        features = device.features
        result.supported = {f.name: ops for f, ops in features.supported().items()}
        out(f"{device.describe()}: driver features")
        for name in Feature.__members__:
            out(f"  {name:28} {result.supported.get(name, '-')}")
        if Feature.MIGRATION.name not in result.supported:
            out("no migration support: the driver is plain vfio-pci or a variant without it")
            return result
        result.migration = features.migration_flags()
        out(f"migration: {result.migration!r}, state {features.migration_state().name}")
        device.attach(iommufd.ioas())
        features.set_migration_state(MigrationState.STOP)
        data = features.set_migration_state(MigrationState.STOP_COPY)
        if data is not None:
            with data:
                result.saved_bytes = len(data.read_all())
        features.set_migration_state(MigrationState.STOP)
        features.set_migration_state(MigrationState.RUNNING)
        result.final_state = features.migration_state()
        out(f"saved {result.saved_bytes} bytes of device state; "
            f"the device is {result.final_state.name} again")
    return result


def fake_backend() -> tuple[Backend, str]:
    """A fake machine with its edu device on vfio-pci."""
    from pyvfio.fake import System
    from pyvfio.setup import binding

    backend = System("minimal").backend
    (bdf,) = [d.bdf for d in devices.pci_devices(backend)]
    binding.bind(bdf, backend=backend)
    return backend, bdf


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--fake", action="store_true", help="use pyvfio's fake kernel")
    where.add_argument("--bdf", help="PCI address of a device on vfio-pci")
    args = ap.parse_args(argv)
    backend, bdf = fake_backend() if args.fake else (pyvfio.backend.default_backend(), args.bdf)
    result = run(bdf, backend)
    return 0 if result.migration is None or result.final_state is MigrationState.RUNNING else 1


if __name__ == "__main__":
    sys.exit(main())
