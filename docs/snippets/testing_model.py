"""How-to: test a driver on the fake kernel with a device model of your own.

The model is a "stamp" device: BAR0 offset 0x0 is a counter, writing an
IOVA to 0x8 makes the device DMA the counter there (8 bytes) and raise its
interrupt; 0x10 reads 1 when that DMA was blocked by the IOMMU.

The functions named test_* are ordinary pytest tests; run this file
directly to run them without pytest.
"""

from __future__ import annotations

import errno
import mmap

import pyvfio
from pyvfio import Device, IommuFd, PciRegion
from pyvfio.fake import System, models
from pyvfio.fake.machine.pci import DMA_ERRORS, Bar, DeviceModel


# -- [model]
class StampDevice(DeviceModel):
    """The hardware side: identity, BARs, capabilities and register hooks."""

    model_name = "stamp"
    vendor_id = 0x1234
    device_id = 0xBEEF
    class_code = 0xFF0000
    default_bars = (Bar(0, 0x1000),)          # BAR0: 4 KiB of registers

    COUNTER, STAMP, ERROR = 0x0, 0x8, 0x10

    def __init__(self, spec=None):
        super().__init__(spec)
        self.add_msi_capability(vectors=1)
        self.add_pcie_capability(flr=True)   # PCI Express with function level reset
        self.counter = 0
        self.error = 0

    def on_read(self, bar, offset, width):
        if offset == self.COUNTER:
            return self.counter
        if offset == self.ERROR:
            return self.error
        return 0

    def on_write(self, bar, offset, width, value):
        if offset == self.COUNTER:
            self.counter = value
        elif offset == self.STAMP:
            try:
                self.dma_write(value, self.counter.to_bytes(8, "little"))
                self.error = 0
            except DMA_ERRORS:                # IOMMU fault or Bus Master off
                self.error = 1
            self.counter += 1
            self.notify()                     # MSI when enabled, else INTx

    def device_reset(self):                   # FLR / VFIO_DEVICE_RESET
        self.counter = self.error = 0


models.register("stamp", StampDevice)
# -- [/model]

# -- [topology]
TOPOLOGY = {
    "name": "stamp-lab",
    "devices": [
        {"bdf": "0000:00:03.0", "model": "stamp", "driver": "vfio-pci"},
        {"bdf": "0000:00:04.0", "model": "edu", "driver": None},
    ],
}
STAMP = "0000:00:03.0"
# -- [/topology]


# -- [tests]
def open_stamp(system):
    """Open, bind and attach the stamp device; returns (iommufd, device, ioas)."""
    iommufd = IommuFd(backend=system.backend)
    dev = Device.open(STAMP, backend=system.backend)
    dev.bind(iommufd)
    ioas = iommufd.ioas()
    dev.attach(ioas)
    command = int.from_bytes(dev.pread(PciRegion.CONFIG, 0x04, 2), "little")
    dev.pwrite(PciRegion.CONFIG, 0x04, (command | 0x6).to_bytes(2, "little"))
    return iommufd, dev, ioas


def stamp(dev, iova):
    bar0 = dev.region_info(PciRegion.BAR0)
    dev.pwrite(bar0, StampDevice.STAMP, iova.to_bytes(8, "little"))
    return int.from_bytes(dev.pread(bar0, StampDevice.ERROR, 4), "little")


def test_stamp_lands_in_mapped_memory():
    system = System(TOPOLOGY)
    iommufd, dev, ioas = open_stamp(system)
    with iommufd, dev:
        buf = mmap.mmap(-1, 0x1000)
        mapping = ioas.map(buf)
        assert stamp(dev, mapping.iova + 8) == 0
        assert buf[8:16] == (0).to_bytes(8, "little")
        assert system.device(STAMP).model.counter == 1   # look inside the hardware
    assert not system.backend.open_files                 # nothing leaked


def test_unmapped_iova_is_blocked_and_recorded():
    system = System(TOPOLOGY)
    iommufd, dev, ioas = open_stamp(system)
    with iommufd, dev:
        assert stamp(dev, 0x7000_0000) == 1              # the model saw the fault
        (fault,) = system.faults                         # so did the IOMMU
        assert (fault.bdf, fault.iova, fault.write) == (STAMP, 0x7000_0000, True)


def test_reset_clears_the_counter():
    system = System(TOPOLOGY)
    iommufd, dev, ioas = open_stamp(system)
    with iommufd, dev:
        system.device(STAMP).model.counter = 41
        dev.reset()                                      # VFIO_DEVICE_RESET -> FLR
        assert system.device(STAMP).model.counter == 0


def test_kernel_errors_are_the_kernels():
    system = System(TOPOLOGY)
    iommufd, dev, ioas = open_stamp(system)
    with iommufd, dev:
        buf = mmap.mmap(-1, 0x2000)
        ioas.map(buf, iova=0x100000)
        try:
            ioas.map(buf, iova=0x101000)                 # overlaps the first mapping
        except pyvfio.IoctlError as exc:
            assert exc.errno == errno.EEXIST and exc.ioctl == "IOMMU_IOAS_MAP"
        else:
            raise AssertionError("overlapping IOMMU_IOAS_MAP succeeded")
# -- [/tests]


if __name__ == "__main__":
    for name, test in list(globals().items()):
        if name.startswith("test_"):
            test()
            print(f"{name}: ok")
