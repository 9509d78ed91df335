"""The simulated machine under the fake kernel, one module per concern
(and, where it imitates one, per kernel source file):

* the machine: :mod:`.system` (``System``: construction, lookups, device
  nodes), :mod:`.chrdev` (which driver opens which node);
* PCI: :mod:`.pci_device` (struct pci_dev), :mod:`.pci_driver` (drivers
  and matching, pci-driver.c), :mod:`.driver_core` (binding rules, dd.c),
  :mod:`.dma` (device DMA through the IOMMU);
* the IOMMU: :mod:`.iommu` (reserved regions, groups and DMA ownership,
  iommu.c), :mod:`.vfio_group` (vfio groups and device registration);
* the device models' hardware side: :mod:`.pci` (``DeviceModel``, ``Bar``),
  :mod:`.config_space` (config space and capability layout),
  :mod:`.pci_regs` (pci_regs.h);
* /sys and the host files: :mod:`.sysfs` (the tree and path walk) with
  :mod:`.kernfs`, :mod:`.kstrtox`, :mod:`.pci_sysfs`, :mod:`.resets`,
  :mod:`.iov`, :mod:`.bus_sysfs`, :mod:`.iommu_sysfs`,
  :mod:`.module_sysfs`, :mod:`.host_use` and :mod:`.procfs`;
* the topology format: :mod:`.topology` with :mod:`.topology_fields`,
  :mod:`.topology_groups` and :mod:`.topology_host`.
"""
