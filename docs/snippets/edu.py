"""Helpers shared by the tutorial snippets: choose a backend, find QEMU's
edu device, hand it to vfio-pci and drive its DMA engine.

Every snippet runs on the fake kernel by default.  With ``--real`` it runs
on this machine's kernel instead (as root, on a machine with an edu device
behind an IOMMU, such as the test VM of ``tests/vm``).
"""

from __future__ import annotations

import sys
import time

import pyvfio
from pyvfio import Backend, Device


# -- [backend]
def choose_backend() -> Backend:
    """The real kernel with ``--real``, else a simulated machine."""
    if "--real" in sys.argv:
        return pyvfio.default_backend()
    from pyvfio.fake import System

    # The "default" topology models the test VM: an edu device alone in
    # its IOMMU group, an NVMe controller, network cards on kernel drivers.
    return System("default").backend
# -- [/backend]


# -- [setup]
PCI_DEVICES = "/sys/bus/pci/devices"


def find_device(backend: Backend, vendor: int, device: int) -> str:
    """The PCI address of the first device with these IDs."""
    for bdf in backend.sysfs_listdir(PCI_DEVICES):
        ids = (int(backend.sysfs_read(f"{PCI_DEVICES}/{bdf}/vendor"), 16),
               int(backend.sysfs_read(f"{PCI_DEVICES}/{bdf}/device"), 16))
        if ids == (vendor, device):
            return bdf
    raise LookupError(f"no PCI device {vendor:04x}:{device:04x}")


def bind_vfio_pci(backend: Backend, bdf: str) -> None:
    """Give the device to vfio-pci, as a setup script would (needs root)."""
    driver = pyvfio.core.sysfs.device_driver(bdf, backend)
    if driver == "vfio-pci":
        return
    # Only vfio-pci may bind the device from now on...
    backend.sysfs_write(f"{PCI_DEVICES}/{bdf}/driver_override", "vfio-pci")
    # ...release it from its current driver, if any...
    if driver is not None:
        backend.sysfs_write(f"/sys/bus/pci/drivers/{driver}/unbind", bdf)
    # ...and let the driver core probe it again: vfio-pci takes it.
    backend.sysfs_write("/sys/bus/pci/drivers_probe", bdf)
# -- [/setup]


# -- [edu]
EDU_IDS = (0x1234, 0x11E8)
EDU_BUFFER = 0x40000  # edu's internal 4 KiB buffer, as a device address

# BAR0 registers of the DMA engine (QEMU docs/specs/edu.rst)
DMA_SRC, DMA_DST, DMA_COUNT, DMA_CMD = 0x80, 0x88, 0x90, 0x98
CMD_START, CMD_TO_RAM = 0x1, 0x2


def enable_bus_master(dev: Device) -> None:
    """Set Memory Space and Bus Master Enable in the PCI command register:
    without Bus Master the device cannot DMA at all."""
    config = pyvfio.PciRegion.CONFIG
    command = int.from_bytes(dev.pread(config, 0x04, 2), "little")
    dev.pwrite(config, 0x04, (command | 0x6).to_bytes(2, "little"))


def edu_dma(dev: Device, src: int, dst: int, count: int, *, to_ram: bool) -> None:
    """One transfer by edu's DMA engine; waits until it is done."""
    bar0 = dev.region_info(pyvfio.PciRegion.BAR0)

    def write64(offset: int, value: int) -> None:
        dev.pwrite(bar0, offset, value.to_bytes(8, "little"))

    write64(DMA_SRC, src)
    write64(DMA_DST, dst)
    write64(DMA_COUNT, count)
    write64(DMA_CMD, CMD_START | (CMD_TO_RAM if to_ram else 0))
    deadline = time.monotonic() + 5
    while int.from_bytes(dev.pread(bar0, DMA_CMD, 8), "little") & CMD_START:
        if time.monotonic() > deadline:
            raise TimeoutError("edu DMA did not complete")
        time.sleep(0.001)
# -- [/edu]
