"""The driver toolkit on top of the objects: DMA buffers and descriptor
pools mapped into any address space (:mod:`.dma`), and devices opened
ready for DMA (:mod:`.attach`).
"""
