"""The IOMMU below iommufd: what the IOMMU core and the IOMMU driver answer
when iommufd asks.

After drivers/iommu/iommu.c and drivers/iommu/intel/iommu.c of Linux 7.3,
as far as iommufd calls them: reserved regions of a device, device
capabilities, PASID width, paging-domain allocation, the driver's checks
on attach, and the VT-d registers IOMMU_GET_HW_INFO reports.  The IOMMU is
the :class:`~pyvfio.fake.machine.system.System`'s ``iommu`` (None: no
IOMMU); its ``hw_info_type`` picks the driver, as the device's iommu_ops
would: "arm_smmuv3" is the arm-smmu-v3 driver (:mod:`._arm_smmu_v3`,
:mod:`._arm_smmu_v3_iommufd`), anything else intel-iommu's behaviour.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from ..._uapi import ffi, lib
from ..core import errno_error
from . import _arm_smmu_v3 as smmu_v3
from . import _arm_smmu_v3_iommufd as smmu_v3_iommufd
from ._private import HwptNested, HwptPaging

if TYPE_CHECKING:
    from ..machine.system import PciDevice, System
    from ._private import Hwpt, Idev

__all__ = [
    "HW_INFO_TYPES", "HW_INFO_STRUCTS", "iommu_get_resv_regions", "dirty_tracking_capable",
    "max_pasids", "pri_supported", "driver_attach_check", "pasid_attach_check",
    "domain_alloc_paging_flags", "paging_domain_aperture", "vtd_regs", "is_arm_smmuv3",
    "iommu_hw_info", "domain_alloc_nested_supported", "viommu_supported", "viommu_init",
]

#: ``System.iommu.hw_info_type`` -> enum iommu_hw_info_type
HW_INFO_TYPES = {
    "none": lib.IOMMU_HW_INFO_TYPE_NONE,
    "intel_vtd": lib.IOMMU_HW_INFO_TYPE_INTEL_VTD,
    "arm_smmuv3": lib.IOMMU_HW_INFO_TYPE_ARM_SMMUV3,
    "amd": lib.IOMMU_HW_INFO_TYPE_AMD,
}
#: enum iommu_hw_info_type -> the struct IOMMU_GET_HW_INFO fills
HW_INFO_STRUCTS = {
    lib.IOMMU_HW_INFO_TYPE_INTEL_VTD: "struct iommu_hw_info_vtd",
    lib.IOMMU_HW_INFO_TYPE_ARM_SMMUV3: "struct iommu_hw_info_arm_smmuv3",
    lib.IOMMU_HW_INFO_TYPE_AMD: "struct iommu_hw_info_amd",
}


def iommu_get_resv_regions(system: System, idev: Idev) -> list[tuple[int, int, str]]:
    """iommu_get_resv_regions(dev) (intel_iommu_get_resv_regions: the
    device's RMRRs and the interrupt window)."""
    iommu = system.iommu
    regions = []
    if iommu is not None:
        regions += [(r.start, r.last, r.type) for r in iommu.reserved_regions]
    regions += [(r.start, r.last, r.type) for r in idev.pdev.extra_reserved]
    group = idev.pdev.group
    if group is not None:
        regions += [(r.start, r.last, r.type) for r in group.extra_reserved]
    return regions


def is_arm_smmuv3(system: System) -> bool:
    """The machine's IOMMU is an Arm SMMUv3 (the arm-smmu-v3 driver's ops)."""
    iommu = system.iommu
    return iommu is not None and iommu.hw_info_type == "arm_smmuv3"


def dirty_tracking_capable(system: System, idev: Idev) -> bool:
    """device_iommu_capable(IOMMU_CAP_DIRTY_TRACKING)."""
    iommu = system.iommu
    if idev.noiommu or iommu is None:
        return False
    if is_arm_smmuv3(system):
        # arm_smmu_capable: arm_smmu_dbm_capable (HTTU dirty and coherent)
        return smmu_v3.arm_smmu_dbm_capable(system)
    return bool(iommu.dirty_tracking)


def max_pasids(system: System, pdev: PciDevice) -> int:
    """dev->iommu->max_pasids: PASID enabled when both the IOMMU and the
    device support it."""
    iommu_bits = _iommu_pasid_bits(system)
    if not iommu_bits:
        return 0
    bits = getattr(pdev, "pasid_bits", None)
    if bits is None:
        bits = pdev.spec.get("pasid_bits", getattr(pdev.model, "pasid_bits", 0))
    bits = int(bits or 0)
    if not bits:
        return 0
    return 1 << min(bits, iommu_bits)


def _iommu_pasid_bits(system: System) -> int:
    """The IOMMU's PASID width in bits (the SMMUv3's SSIDSIZE)."""
    iommu = system.iommu
    if iommu is None:
        return 0
    if is_arm_smmuv3(system):
        # arm_smmu_device_hw_probe: ssid_bits from SMMU_IDR1.SSIDSIZE
        return smmu_v3.arm_smmu_device_hw_probe(system).ssid_bits
    return int(iommu.pasid_bits)


def pri_supported(pdev: PciDevice) -> bool:
    """pci_pri_supported."""
    return bool(getattr(pdev, "pri_supported", False) or pdev.spec.get("pri", False))


def driver_attach_check(hwpt: Hwpt, idev: Idev) -> None:
    """The driver's attach_dev checks (intel_iommu_attach_device /
    set_dev_pasid: iopf_for_domain_set; arm_smmu_attach_dev,
    arm_smmu_attach_dev_nested)."""
    if isinstance(hwpt, HwptNested):
        domain = hwpt.io_domain
        assert isinstance(domain, smmu_v3_iommufd.ArmSmmuNestedDomain)
        assert hwpt.viommu is not None
        smmu_v3_iommufd.arm_smmu_attach_dev_nested(domain, hwpt.viommu, idev)
        return
    if is_arm_smmuv3(idev.pdev.system):
        smmu_v3.arm_smmu_attach_dev(hwpt, idev)
        return
    if hwpt.fault is not None and not pri_supported(idev.pdev):
        # intel_iommu_enable_iopf: ENODEV without PCI PRI
        raise errno_error(errno.ENODEV, f"{idev.pdev.bdf} cannot report page faults (no PRI)")


def pasid_attach_check(system: System, hwpt: Hwpt, idev: Idev,
                       pasid: int) -> list[PciDevice]:
    """iommu_attach_device_pasid / intel_iommu_set_dev_pasid checks;
    returns the devices of the group."""
    group = idev.pdev.group
    assert group is not None
    for dev in group.devices:
        mp = max_pasids(system, dev)
        if mp > 0 and pasid >= mp:
            # iommu_attach_device_pasid: EINVAL beyond a device's PASID width
            raise errno_error(errno.EINVAL, f"PASID {pasid} is beyond {dev.bdf}'s width")
    if not _iommu_pasid_bits(system):
        # intel_iommu_set_dev_pasid: EOPNOTSUPP without PASID support
        # (arm_smmu_s1_set_dev_pasid: no substreams, SMMU_IDR1.SSIDSIZE 0)
        raise errno_error(errno.EOPNOTSUPP, "the IOMMU does not support PASID")
    if is_arm_smmuv3(system):
        if not isinstance(hwpt, HwptPaging) or hwpt.stage != smmu_v3.STAGE_S1:
            # arm_smmu_s1_set_dev_pasid: EINVAL unless a stage-1 domain (a
            # nested domain has no set_dev_pasid: EOPNOTSUPP)
            if isinstance(hwpt, HwptNested):
                raise errno_error(errno.EOPNOTSUPP, "a nested domain cannot attach to a PASID")
            raise errno_error(errno.EINVAL, "only a stage-1 domain attaches to a PASID")
        return list(group.devices)
    driver_attach_check(hwpt, idev)
    return list(group.devices)


def domain_alloc_paging_flags(system: System, idev: Idev, flags: int, user_data: bool) -> int:
    """ops->domain_alloc_paging_flags of the device's IOMMU driver; the
    driver's stage of the domain (the SMMUv3's 1 or 2, else 0)."""
    if idev.noiommu:
        if flags or user_data:
            # noiommu_alloc_paging_flags: EOPNOTSUPP for flags or data
            raise errno_error(errno.EOPNOTSUPP, "no-IOMMU domains take no flags")
        return 0
    iommu = system.iommu
    assert iommu is not None
    if is_arm_smmuv3(system):
        return smmu_v3.arm_smmu_domain_alloc_paging_flags(system, flags, user_data)
    if user_data:
        # intel_iommu_domain_alloc_paging_flags: EOPNOTSUPP for driver data
        raise errno_error(errno.EOPNOTSUPP, "paging domains take no driver data")
    if flags & lib.IOMMU_HWPT_ALLOC_NEST_PARENT and not getattr(iommu, "nesting", False):
        # intel_iommu_domain_alloc_second_stage: EOPNOTSUPP without nesting support
        raise errno_error(errno.EOPNOTSUPP, "the IOMMU does not support nesting")
    if flags & lib.IOMMU_HWPT_ALLOC_DIRTY_TRACKING and not iommu.dirty_tracking:
        # intel_iommu_domain_alloc_second_stage: EOPNOTSUPP without SSADS
        raise errno_error(errno.EOPNOTSUPP, "the IOMMU cannot track dirty pages")
    return 0


#: VT-d ECAP_REG bits: scalable mode (SMTS) and first-stage translation (FLTS).
_ECAP_SMTS = 1 << 43
_ECAP_FLTS = 1 << 47
#: VT-d CAP_REG bit: 5-level first-stage paging (FL5LP).
_CAP_FL5LP = 1 << 60


def paging_domain_aperture(system: System, flags: int) -> tuple[int, int]:
    """The inclusive IOVA range a paging domain allocated with ``flags``
    translates (its geometry's aperture)."""
    iommu = system.iommu
    assert iommu is not None
    if is_arm_smmuv3(system):
        # arm_smmu_domain_alloc_paging_flags: a nesting parent (or an SMMU
        # without stage 1) gets a stage-2 domain, anything else stage 1
        s1 = smmu_v3.arm_smmu_device_hw_probe(system).trans_s1
        stage = (smmu_v3.STAGE_S2 if flags & lib.IOMMU_HWPT_ALLOC_NEST_PARENT or not s1
                 else smmu_v3.STAGE_S1)
        return smmu_v3.arm_smmu_domain_aperture(system, stage)
    start, last = int(iommu.aperture[0]), int(iommu.aperture[1])
    if iommu.hw_info_type != "intel_vtd" or iommu.ecap_reg is None:
        return start, last
    cap, ecap = vtd_regs(system)
    second_stage = lib.IOMMU_HWPT_ALLOC_NEST_PARENT | lib.IOMMU_HWPT_ALLOC_DIRTY_TRACKING
    if ecap & _ECAP_SMTS and ecap & _ECAP_FLTS and not flags & second_stage:
        # intel_iommu_domain_alloc_paging_flags: a scalable-mode IOMMU with
        # first-stage translation gets a first-stage domain unless the flags
        # need the second stage; its aperture is the lower canonical half of
        # a 4- (48-bit) or 5-level (57-bit) CPU page table
        # (intel_iommu_domain_alloc_first_stage)
        width = 57 if cap & _CAP_FL5LP else 48
        last = min(last, (1 << (width - 1)) - 1)
    return start, last


def vtd_regs(system: System) -> tuple[int, int]:
    """CAP_REG / ECAP_REG of the emulated VT-d (QEMU's intel-iommu
    defaults, adjusted to the topology's features)."""
    iommu = system.iommu
    assert iommu is not None
    cap = getattr(iommu, "cap_reg", None)
    ecap = getattr(iommu, "ecap_reg", None)
    if cap is not None and ecap is not None:
        return int(cap), int(ecap)
    aw = max(int(iommu.aperture[1]).bit_length(), 39)
    cap = (0x220 << 20) | 6 | (18 << 48) | (1 << 39) | ((aw - 1) << 16) | (0x2 << 8)
    if aw >= 48:
        cap |= 0x4 << 8
    if iommu.pgsize_bitmap & (1 << 21):
        cap |= 1 << 34
    if iommu.pgsize_bitmap & (1 << 30):
        cap |= 1 << 35
    ecap = (0xF0 << 4) | (1 << 1) | (1 << 6)
    if iommu.interrupt_remapping:
        ecap |= (1 << 3) | (1 << 4) | (15 << 20)
    if iommu.enforce_cache_coherency:
        ecap |= 1 << 7
    if iommu.dirty_tracking or iommu.pasid_bits:
        ecap |= (1 << 43) | (1 << 46) | (1 << 48)
    if iommu.dirty_tracking:
        ecap |= 1 << 55
    if iommu.pasid_bits:
        ecap |= (1 << 40) | ((int(iommu.pasid_bits) - 1) << 35)
    return cap, ecap


def iommu_hw_info(system: System, in_type: int) -> tuple[int, bytes]:
    """ops->hw_info: ``(out_data_type, data)`` for IOMMU_GET_HW_INFO."""
    iommu = system.iommu
    assert iommu is not None
    if is_arm_smmuv3(system):
        return smmu_v3_iommufd.arm_smmu_hw_info(system, in_type)
    hw_type = HW_INFO_TYPES.get(str(iommu.hw_info_type), lib.IOMMU_HW_INFO_TYPE_NONE)
    if hw_type == lib.IOMMU_HW_INFO_TYPE_NONE:
        return hw_type, b""
    if in_type not in (lib.IOMMU_HW_INFO_TYPE_DEFAULT, hw_type):
        # intel_iommu_hw_info: EOPNOTSUPP for another requested type
        raise errno_error(errno.EOPNOTSUPP, f"type {in_type} not supported")
    info = ffi.new(HW_INFO_STRUCTS[hw_type] + " *")
    if hw_type == lib.IOMMU_HW_INFO_TYPE_INTEL_VTD:
        info.flags = lib.IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17
        info.cap_reg, info.ecap_reg = vtd_regs(system)
    return hw_type, bytes(ffi.buffer(info))


def domain_alloc_nested_supported(system: System) -> bool:
    """ops->domain_alloc_nested is set: intel-iommu has it; the SMMUv3
    allocates nested domains only through a vIOMMU."""
    return not is_arm_smmuv3(system)


def viommu_supported(system: System, viommu_type: int) -> bool:
    """ops->get_viommu_size and ops->viommu_init exist and the size is
    nonzero for ``viommu_type`` (only the SMMUv3 has them)."""
    if not is_arm_smmuv3(system):
        return False
    return smmu_v3_iommufd.arm_smmu_get_viommu_size(system, viommu_type)


def viommu_init(system: System, parent: HwptPaging) -> smmu_v3_iommufd.ArmVsmmu:
    """ops->viommu_init (arm_vsmmu_init)."""
    return smmu_v3_iommufd.arm_vsmmu_init(system, parent)
