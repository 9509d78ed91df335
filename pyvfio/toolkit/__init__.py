"""The driver toolkit on top of the objects: DMA buffers, IOVA allocation,
descriptor pools, and devices opened ready for DMA.
"""
