"""The objects: pyvfio's safe wrappers over the VFIO and iommufd ioctls.

Resources with ordered, idempotent close (:mod:`.resource`), capability
chains (:mod:`.caps`), the legacy container and groups (:mod:`.container`),
iommufd, IOAS and HWPT objects (:mod:`.iommufd`), devices with their
regions, interrupts, features and PCI config space, and the sysfs lookups
and group viability the objects need to open a device and to explain a
refusal (:mod:`.sysfs`, :mod:`.viability`).  Nothing here imports the
toolkit, set-up or testing layers above it.
"""
