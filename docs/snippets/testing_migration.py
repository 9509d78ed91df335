"""How-to: test live-migration code on the fake kernel.  An edu device
declared with ``model_migration`` gets the migration features a variant
driver offers on Linux; its state moves from one fake machine to another.

    python3 docs/snippets/testing_migration.py
"""

from __future__ import annotations

import copy

from pyvfio import Device, IommuFd, MigrationState
from pyvfio.setup import binding
from pyvfio.fake import System
from pyvfio.fake.machine.topology import load

# -- [migration]
EDU = "0000:00:02.0"
topo = copy.deepcopy(load("default"))
spec = next(d for d in topo["devices"] if d["bdf"] == EDU)
spec["model_migration"] = {"flags": ["STOP_COPY", "P2P", "PRE_COPY"], "dma_logging": True}
source, destination = System(topo), System(topo)
for machine in (source, destination):
    binding.bind(EDU, backend=machine.backend)

with IommuFd(backend=source.backend) as iommufd, \
        Device.open(EDU, backend=source.backend) as dev:
    dev.bind(iommufd)
    dev.config.enable(memory=True)
    dev.regions["BAR0"].write32(0x04, 0x1234)          # edu's liveness register
    print(f"source offers {dev.features.migration_flags()!r}")
    saved = dev.features.set_migration_state(MigrationState.STOP_COPY)
    assert saved is not None
    stream = saved.read_all()                          # the device's state

with IommuFd(backend=destination.backend) as iommufd, \
        Device.open(EDU, backend=destination.backend) as dev:
    dev.bind(iommufd)
    resume = dev.features.set_migration_state(MigrationState.RESUMING)
    assert resume is not None
    resume.write(stream)
    dev.features.set_migration_state(MigrationState.RUNNING)  # leaving RESUMING loads it
    dev.config.enable(memory=True)
    assert dev.regions["BAR0"].read32(0x04) == ~0x1234 & 0xFFFFFFFF
    print(f"moved {len(stream)} bytes of device state; liveness arrived")
# -- [/migration]
