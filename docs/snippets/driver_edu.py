"""How-to: a userspace driver for QEMU's edu device, with the raw
primitives: BAR0 mapped with mmap, an MSI delivered to an eventfd, and a
DMA buffer mapped into an IOAS at an IOVA the kernel picks.

    python3 docs/snippets/driver_edu.py          # on the fake kernel
    python3 docs/snippets/driver_edu.py --real   # on this machine (root)
"""

from __future__ import annotations

import select

from edu import EDU_BUFFER, EDU_IDS, bind_vfio_pci, choose_backend, find_device

from pyvfio import IOAS, Device, IommuFd, PciIrq, PciRegion, ffi, lib
from pyvfio.backend.base import MAP_ANONYMOUS, MAP_PRIVATE, MAP_SHARED, PROT_READ, PROT_WRITE


# -- [driver]
class EduDriver:
    """Drives one edu device that is bound to an iommufd and attached to ``ioas``."""

    FACTORIAL, STATUS, IRQ_STATUS, IRQ_ACK = 0x08, 0x20, 0x24, 0x64
    DMA_SRC, DMA_DST, DMA_COUNT, DMA_CMD = 0x80, 0x88, 0x90, 0x98
    STATUS_IRQ_ON_FACTORIAL = 0x80
    DMA_START, DMA_TO_RAM, DMA_IRQ = 0x1, 0x2, 0x4

    def __init__(self, dev: Device, ioas: IOAS) -> None:
        self.dev = dev
        b = self.backend = dev.backend
        # Config space: Memory Space and Bus Master Enable on.
        command = int.from_bytes(dev.pread(PciRegion.CONFIG, 0x04, 2), "little")
        dev.pwrite(PciRegion.CONFIG, 0x04, (command | 0x6).to_bytes(2, "little"))
        # MMIO: map BAR0; every read()/write() is one access of that width.
        bar0 = dev.region_info(PciRegion.BAR0)
        assert bar0.mmappable
        self.regs = b.mmap(bar0.size, PROT_READ | PROT_WRITE, MAP_SHARED, dev.fd, bar0.offset)
        # Interrupts: MSI vector 0 signals an eventfd.
        self.irq_fd = b.eventfd()
        self._set_msi([self.irq_fd])
        # DMA: edu drives only 28 address bits, so keep kernel-chosen IOVAs low:
        # under 128 MiB, where Arm's SMMUv3 reserves its MSI window (allowing a
        # reserved IOVA fails with EADDRINUSE).
        ioas.allow_iovas([(0, (1 << 27) - 1)])
        self.buffer = b.mmap(0x1000, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
        self.mapping = ioas.map(self.buffer)         # the kernel picks the IOVA

    def _set_msi(self, eventfds: list[int]) -> None:
        """VFIO_DEVICE_SET_IRQS: DATA_EVENTFD | ACTION_TRIGGER on the MSI index
        (an empty list disables MSI again)."""
        size = ffi.sizeof("struct vfio_irq_set") + 4 * len(eventfds)
        raw = ffi.new("char[]", size)
        irq_set = ffi.cast("struct vfio_irq_set *", raw)
        irq_set.argsz = size
        irq_set.flags = (lib.VFIO_IRQ_SET_DATA_EVENTFD if eventfds else lib.VFIO_IRQ_SET_DATA_NONE) \
            | lib.VFIO_IRQ_SET_ACTION_TRIGGER
        irq_set.index = PciIrq.MSI
        irq_set.start = 0
        irq_set.count = len(eventfds)
        fds = ffi.cast("__s32 *", irq_set.data)
        for i, fd in enumerate(eventfds):
            fds[i] = fd
        self.backend.ioctl(self.dev.fd, lib.VFIO_DEVICE_SET_IRQS, raw)

    def wait_irq(self, timeout: float = 5.0) -> int:
        """Wait for the interrupt, acknowledge it at the device, return its cause."""
        ready, _, _ = select.select([self.irq_fd], [], [], timeout)
        if not ready:
            raise TimeoutError("no interrupt from edu")
        self.backend.read(self.irq_fd, 8)            # reset the eventfd counter
        cause = self.regs.read(self.IRQ_STATUS, 4)
        self.regs.write(self.IRQ_ACK, 4, cause)
        return cause

    def factorial(self, n: int) -> int:
        self.regs.write(self.STATUS, 4, self.STATUS_IRQ_ON_FACTORIAL)
        self.regs.write(self.FACTORIAL, 4, n)
        assert self.wait_irq() == 0x001
        return self.regs.read(self.FACTORIAL, 4)

    def _dma(self, src: int, dst: int, count: int, to_ram: bool) -> None:
        self.regs.write(self.DMA_SRC, 8, src)
        self.regs.write(self.DMA_DST, 8, dst)
        self.regs.write(self.DMA_COUNT, 8, count)
        self.regs.write(self.DMA_CMD, 8,
                        self.DMA_START | self.DMA_IRQ | (self.DMA_TO_RAM if to_ram else 0))
        assert self.wait_irq() == 0x100

    def copy_through_device(self, data: bytes) -> bytes:
        """RAM -> edu's buffer -> RAM, by DMA."""
        self.buffer.write_bytes(0, data)
        self._dma(self.mapping.iova, EDU_BUFFER, len(data), to_ram=False)
        self._dma(EDU_BUFFER, self.mapping.iova + 0x800, len(data), to_ram=True)
        return self.buffer.read_bytes(0x800, len(data))

    def close(self) -> None:
        self._set_msi([])                            # MSI off before the eventfd goes
        self.backend.close(self.irq_fd)
        self.regs.close()
        self.mapping.close()
        self.buffer.close()
# -- [/driver]


# -- [use]
backend = choose_backend()
edu = find_device(backend, *EDU_IDS)
bind_vfio_pci(backend, edu)

with IommuFd(backend=backend) as iommufd, Device.open(edu, backend=backend) as dev:
    dev.bind(iommufd)
    ioas = iommufd.ioas()
    dev.attach(ioas)
    driver = EduDriver(dev, ioas)
    try:
        print(f"ident {driver.regs.read(0x00, 4):#010x}")    # 0x010000ed
        print(f"10! = {driver.factorial(10)}")              # by interrupt
        print(driver.copy_through_device(b"hello, DMA") + b" (IOVA %#x)" % driver.mapping.iova)
    finally:
        driver.close()
# -- [/use]
