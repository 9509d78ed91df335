"""How-to: the driver toolkit on QEMU's edu device -- regions and exact-width
MMIO, a register block, config space, interrupt vectors (blocking and
asyncio), DMA buffers, an IOVA allocator, a descriptor pool, resets and
device features.

    python3 docs/snippets/toolkit_tour.py          # on the fake kernel
    python3 docs/snippets/toolkit_tour.py --real   # on this machine (root)
"""

from __future__ import annotations

import asyncio

from edu import EDU_BUFFER, EDU_IDS, bind_vfio_pci, choose_backend, find_device

from pyvfio import (
    Device,
    DmaBuffer,
    DmaPool,
    Field,
    IommuFd,
    IovaAllocator,
    Register,
    RegisterBlock,
    map_buffer,
)

backend = choose_backend()
bdf = find_device(backend, *EDU_IDS)
bind_vfio_pci(backend, bdf)

with IommuFd(backend=backend) as iommufd, Device.open(bdf, backend=backend) as dev:
    dev.bind(iommufd)
    ioas = iommufd.ioas()
    dev.attach(ioas)

    # -- [regions]
    bar0 = dev.regions["BAR0"]                   # or dev.regions[0]
    print(bar0)                                  # size, flags, mmap areas
    ident = bar0.read32(0x00)                    # one 4-byte pread of the device file
    mapping = bar0.mmap()                        # the mappable areas, MAP_SHARED
    assert mapping.read32(0x00) == ident         # one 32-bit load, no memcpy
    mapping.write32(0x04, 0x12345678)            # liveness: reads back inverted
    assert mapping.read32(0x04) == 0xEDCBA987
    # -- [/regions]

    # -- [registers]
    EDU = RegisterBlock("edu", [
        Register("IDENT", 0x00, 4, access="ro",
                 fields=(Field("ID", 0, 8), Field("MINOR", 16, 8), Field("MAJOR", 24, 8))),
        Register("FACTORIAL", 0x08, 4),
        Register("STATUS", 0x20, 4, fields=(Field("COMPUTING", 0, access="ro"),
                                            Field("IRQ_FACT", 7))),
        Register("IRQ_STATUS", 0x24, 4, access="ro"),
        Register("IRQ_ACK", 0x64, 4, access="wo"),
        Register("DMA_SRC", 0x80, 8), Register("DMA_DST", 0x88, 8),
        Register("DMA_COUNT", 0x90, 8),
        Register("DMA_CMD", 0x98, 8, fields=(Field("RUN", 0), Field("TO_RAM", 1),
                                             Field("IRQ", 2))),
    ])
    regs = EDU.bind(mapping)                     # any region or mapping works
    print("edu version", regs.IDENT.fields())    # {'ID': 0xed, 'MINOR': 0, 'MAJOR': 1}
    # -- [/registers]

    # -- [config]
    config = dev.config
    print(f"{config.vendor_id:04x}:{config.device_id:04x}",
          [cap.name for cap in config.capabilities()])
    config.enable(memory=True, bus_master=True)  # no DMA or MSI without Bus Master
    # -- [/config]

    # -- [irqs]
    msi = dev.irqs["MSI"]
    (vector,) = msi.enable(1)                    # one eventfd, handed to the kernel
    regs.STATUS.modify(IRQ_FACT=1)               # interrupt when a factorial is done
    regs.FACTORIAL.write(10)
    vector.wait(timeout=5)                       # blocks in poll(), no busy loop
    regs.IRQ_ACK.write(regs.IRQ_STATUS.read())
    print("10! =", regs.FACTORIAL.read())

    async def next_factorial(n: int) -> int:
        regs.FACTORIAL.write(n)
        await vector.wait_async(timeout=5)       # an asyncio reader on the eventfd
        regs.IRQ_ACK.write(regs.IRQ_STATUS.read())
        return regs.FACTORIAL.read()

    print("12! =", asyncio.run(next_factorial(12)))
    # -- [/irqs]

    # -- [dma]
    iovas = IovaAllocator.for_ioas(ioas, limit=1 << 28)  # edu drives 28 address bits
    with DmaBuffer(2 * 4096, backend=backend) as buf:
        buf[0:11] = b"hello, edu!"               # memoryview(buf) works too
        dma = map_buffer(ioas, buf, allocator=iovas)
        regs.DMA_SRC.write(dma.iova)             # RAM -> the device's buffer
        regs.DMA_DST.write(EDU_BUFFER)
        regs.DMA_COUNT.write(11)
        regs.DMA_CMD.write(RUN=1, IRQ=1)
        vector.wait(timeout=5)
        regs.IRQ_ACK.write(regs.IRQ_STATUS.read())
        regs.DMA_SRC.write(EDU_BUFFER)           # ... and back, to the second page
        regs.DMA_DST.write(dma.iova + 4096)
        regs.DMA_CMD.write(RUN=1, TO_RAM=1, IRQ=1)
        vector.wait(timeout=5)
        regs.IRQ_ACK.write(regs.IRQ_STATUS.read())
        print(bytes(buf[4096:4107]), "via IOVA", hex(dma.iova))
        dma.close()                              # unmap before the buffer goes
        iovas.free(dma.iova)
    # -- [/dma]

    # -- [pool]
    with DmaPool.create(ioas, 64 * 1024, allocator=iovas) as pool:
        ring = pool.alloc(16 * 64, align=4096)   # a queue of 16 64-byte entries
        entry = pool.alloc(64)
        entry.write(b"\x01" * 64)
        print("ring at IOVA", hex(ring.iova), "entry at", hex(entry.iova))
    # -- [/pool]

    # -- [reset]
    msi.disable()                                # interrupts off before a reset
    if dev.info.can_reset:
        print("reset methods", dev.reset_methods)
        dev.reset()                              # VFIO_DEVICE_RESET
    print("features", sorted(f.name for f in dev.features.supported()))
    # -- [/reset]
