"""The simulated machine under the fake kernel: the PCI device and BAR
model, the driver core (:mod:`.system`), sysfs and the topology format.
"""
