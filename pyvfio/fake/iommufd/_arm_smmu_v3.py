"""The arm-smmu-v3 driver's IOMMU ops, as far as iommufd calls them.

After drivers/iommu/arm/arm-smmu-v3/arm-smmu-v3.c of Linux 7.3: the
features the driver reads from the SMMU's ID registers
(arm_smmu_device_hw_probe), its capabilities (arm_smmu_capable), paging
domain allocation with its stage and aperture
(arm_smmu_domain_alloc_paging_flags, arm_smmu_domain_finalise) and the
checks of attaching a paging domain (arm_smmu_attach_dev).  The iommufd
side of the driver (hw_info, vIOMMU, nested domains, invalidation) is
:mod:`._arm_smmu_v3_iommufd`.

The registers are the machine's ``iommu.smmu_idr`` when given, or QEMU
10.0's SMMUv3 with both stages (``arm-smmuv3.stage=nested``; smmuv3_init_regs
of hw/arm/smmuv3.c, as the arm64 test VM reported them) adjusted to the
topology's ``dirty_tracking`` (IDR0.HTTU) and ``pasid_bits``
(IDR1.SSIDSIZE).
"""

from __future__ import annotations

import errno
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..._uapi import lib
from ..core import errno_error

if TYPE_CHECKING:
    from ..machine.system import PciDevice, System
    from ._private import HwptPaging, Idev

__all__ = [
    "QEMU_IDR", "QEMU_IIDR", "QEMU_AIDR", "STAGE_S1", "STAGE_S2", "ArmSmmuDevice",
    "smmu_regs", "arm_smmu_device_hw_probe", "arm_smmu_dbm_capable",
    "arm_smmu_domain_alloc_paging_flags", "arm_smmu_domain_aperture", "arm_smmu_attach_dev",
    "arm_smmu_ssids_in_use", "stream_id", "arm_smmu_vmid_alloc",
]

# SMMU_IDR0 fields (arm-smmu-v3.h)
_IDR0_S2P = 1 << 0
_IDR0_S1P = 1 << 1
_IDR0_COHACC = 1 << 4
_IDR0_HTTU_SHIFT = 6
_IDR0_HTTU_ACCESS_DIRTY = 2
_IDR0_ATS = 1 << 10
_IDR0_ASID16 = 1 << 12
_IDR0_PRI = 1 << 16
_IDR0_VMID16 = 1 << 18
# SMMU_IDR1
_IDR1_SSIDSIZE_SHIFT = 6
# SMMU_IDR3
_IDR3_FWB = 1 << 8
_IDR3_RIL = 1 << 10
# SMMU_IDR5
_IDR5_OAS_BITS = (32, 36, 40, 42, 44, 48, 52)
_IDR5_GRAN4K = 1 << 4
_IDR5_GRAN16K = 1 << 5
_IDR5_GRAN64K = 1 << 6
_IDR5_DS = 1 << 7
_IDR5_VAX_SHIFT = 10

#: QEMU 10.0's SMMUv3 with ``stage=nested``, as IOMMU_GET_HW_INFO reported
#: it in the arm64 test VM (QEMU 10.0.2): IDR0 = S1P, S2P, AArch64 tables,
#: coherent, 16-bit ASIDs and VMIDs, little endian, no stall, aborting
#: terminate model, 2-level stream tables; IDR1 = 2^19-entry command and
#: event queues, 16-bit stream IDs, no substreams; IDR3 = HAD, XNX, RIL,
#: BBML2; IDR5 = 4K/16K/64K granules, 44-bit OAS.
QEMU_IDR = (0x0D44101B, 0x02730010, 0x0, 0x1414, 0x0, 0x74)
#: QEMU's SMMU_IIDR (never set: 0).
QEMU_IIDR = 0x0
#: QEMU's SMMU_AIDR (SMMUv3.1).
QEMU_AIDR = 0x1

#: ARM_SMMU_DOMAIN_S1 / ARM_SMMU_DOMAIN_S2 (smmu_domain->stage).
STAGE_S1 = 1
STAGE_S2 = 2

#: VA_BITS of the arm64 kernel (CONFIG_ARM64_VA_BITS; 48 or more): a stage-1
#: domain's input size is min(48 or 52, VA_BITS).
_VA_BITS = 48


@dataclass(frozen=True)
class ArmSmmuDevice:
    """struct arm_smmu_device: what arm_smmu_device_hw_probe found."""

    idr: tuple[int, ...]
    iidr: int
    aidr: int
    trans_s1: bool
    trans_s2: bool
    #: ARM_SMMU_FEAT_NESTING: both stages
    nesting: bool
    coherency: bool
    #: ARM_SMMU_FEAT_HD: hardware dirty-bit updates (IDR0.HTTU >= 2)
    hd: bool
    ats: bool
    pri: bool
    s2fwb: bool
    range_inv: bool
    ds: bool
    vax: bool
    asid_bits: int
    vmid_bits: int
    ssid_bits: int
    #: output address size in bits (IDR5.OAS)
    oas: int


def smmu_regs(system: System) -> tuple[tuple[int, ...], int, int]:
    """SMMU_IDR0..5, SMMU_IIDR and SMMU_AIDR of the machine's SMMU."""
    iommu = system.iommu
    assert iommu is not None
    iidr = QEMU_IIDR if iommu.smmu_iidr is None else int(iommu.smmu_iidr)
    aidr = QEMU_AIDR if iommu.smmu_aidr is None else int(iommu.smmu_aidr)
    if iommu.smmu_idr is not None:
        return tuple(int(r) for r in iommu.smmu_idr), iidr, aidr
    idr = list(QEMU_IDR)
    if iommu.dirty_tracking:
        idr[0] |= _IDR0_HTTU_ACCESS_DIRTY << _IDR0_HTTU_SHIFT
    if iommu.pasid_bits:
        idr[1] |= int(iommu.pasid_bits) << _IDR1_SSIDSIZE_SHIFT
    return tuple(idr), iidr, aidr


def arm_smmu_device_hw_probe(system: System) -> ArmSmmuDevice:
    """arm_smmu_device_hw_probe: the features of the machine's SMMU."""
    idr, iidr, aidr = smmu_regs(system)
    idr0, idr1, idr3, idr5 = idr[0], idr[1], idr[3], idr[5]
    s1 = bool(idr0 & _IDR0_S1P)
    s2 = bool(idr0 & _IDR0_S2P)
    oas_field = idr5 & 0x7
    # arm_smmu_device_hw_probe: an unknown OAS value is taken as 48 bits
    oas = _IDR5_OAS_BITS[oas_field] if oas_field < len(_IDR5_OAS_BITS) else 48
    return ArmSmmuDevice(
        idr=tuple(idr), iidr=iidr, aidr=aidr,
        trans_s1=s1, trans_s2=s2,
        # arm_smmu_device_hw_probe: nesting needs both stages
        nesting=s1 and s2,
        coherency=bool(idr0 & _IDR0_COHACC),
        # arm_smmu_get_httu: HD from IDR0.HTTU (access and dirty)
        hd=((idr0 >> _IDR0_HTTU_SHIFT) & 3) >= _IDR0_HTTU_ACCESS_DIRTY,
        ats=bool(idr0 & _IDR0_ATS),
        pri=bool(idr0 & _IDR0_PRI),
        s2fwb=bool(idr3 & _IDR3_FWB),
        range_inv=bool(idr3 & _IDR3_RIL),
        ds=bool(idr5 & _IDR5_DS),
        vax=((idr5 >> _IDR5_VAX_SHIFT) & 3) == 1,
        asid_bits=16 if idr0 & _IDR0_ASID16 else 8,
        vmid_bits=16 if idr0 & _IDR0_VMID16 else 8,
        ssid_bits=(idr1 >> _IDR1_SSIDSIZE_SHIFT) & 0x1F,
        oas=oas,
    )


def arm_smmu_dbm_capable(system: System) -> bool:
    """arm_smmu_dbm_capable (IOMMU_CAP_DIRTY_TRACKING): HD and a coherent
    SMMU."""
    smmu = arm_smmu_device_hw_probe(system)
    return smmu.hd and smmu.coherency


def arm_smmu_domain_alloc_paging_flags(system: System, flags: int, user_data: bool) -> int:
    """arm_smmu_domain_alloc_paging_flags: the stage of the new domain
    (:data:`STAGE_S1` or :data:`STAGE_S2`), or EOPNOTSUPP."""
    paging_flags = (lib.IOMMU_HWPT_ALLOC_DIRTY_TRACKING | lib.IOMMU_HWPT_ALLOC_PASID
                    | lib.IOMMU_HWPT_ALLOC_NEST_PARENT)
    if flags & ~paging_flags:
        # arm_smmu_domain_alloc_paging_flags: EOPNOTSUPP for other flags
        raise errno_error(errno.EOPNOTSUPP, f"the SMMUv3 takes no flags {flags:#x}")
    if user_data:
        # arm_smmu_domain_alloc_paging_flags: EOPNOTSUPP for driver data
        raise errno_error(errno.EOPNOTSUPP, "SMMUv3 paging domains take no driver data")
    smmu = arm_smmu_device_hw_probe(system)
    dirty = lib.IOMMU_HWPT_ALLOC_DIRTY_TRACKING
    pasid = lib.IOMMU_HWPT_ALLOC_PASID
    if flags == 0:
        # arm_smmu_domain_alloc_paging_flags: stage 1 when the SMMU has it
        return STAGE_S1 if smmu.trans_s1 else STAGE_S2
    if flags == lib.IOMMU_HWPT_ALLOC_NEST_PARENT:
        if not smmu.nesting:
            # arm_smmu_domain_alloc_paging_flags: EOPNOTSUPP without both stages
            raise errno_error(errno.EOPNOTSUPP, "the SMMUv3 has no nesting (needs both stages)")
        return STAGE_S2
    if flags in (dirty, dirty | pasid, pasid):
        if not smmu.trans_s1:
            # arm_smmu_domain_alloc_paging_flags: EOPNOTSUPP without stage 1
            raise errno_error(errno.EOPNOTSUPP, "dirty tracking and PASIDs need stage 1")
        return STAGE_S1
    # arm_smmu_domain_alloc_paging_flags: EOPNOTSUPP for other combinations
    # (a nesting parent is a plain stage-2 domain: no dirty tracking, no PASID)
    raise errno_error(errno.EOPNOTSUPP, f"the SMMUv3 cannot combine flags {flags:#x}")


def arm_smmu_domain_aperture(system: System, stage: int) -> tuple[int, int]:
    """arm_smmu_domain_finalise: the aperture of a domain of ``stage`` (the
    input size: min(48, or 52 with VAX, VA_BITS) for stage 1, the OAS for
    stage 2), within the machine's aperture."""
    smmu = arm_smmu_device_hw_probe(system)
    iommu = system.iommu
    assert iommu is not None
    if stage == STAGE_S1:
        ias = min(52 if smmu.vax else 48, _VA_BITS)
    else:
        ias = smmu.oas
    return int(iommu.aperture[0]), min(int(iommu.aperture[1]), (1 << ias) - 1)


def arm_smmu_ssids_in_use(pdev: PciDevice) -> bool:
    """arm_smmu_ssids_in_use: a PASID of the device has a domain."""
    return bool(pdev.pasid_domains)


def arm_smmu_attach_dev(hwpt: HwptPaging, idev: Idev) -> None:
    """arm_smmu_attach_dev's checks for a paging domain."""
    if hwpt.stage == STAGE_S2 and arm_smmu_ssids_in_use(idev.pdev):
        # arm_smmu_attach_dev: EBUSY, a stage-2 STE cannot keep the PASIDs' CD table
        raise errno_error(errno.EBUSY, f"{idev.pdev.bdf} has PASIDs attached")
    # (arm_smmu_enable_iopf: a device without stall needs no IOPF, so a fault
    # queue attaches; enforce_cache_coherency holds for every device alike)


def stream_id(pdev: PciDevice) -> int:
    """The device's stream ID: its requester ID (QEMU's virt machine maps
    RIDs to stream IDs one to one)."""
    bdf = pdev.bdf
    bus = int(bdf[5:7], 16)
    dev = int(bdf[8:10], 16)
    fn = int(bdf[11], 16)
    return (bus << 8) | (dev << 3) | fn


#: system -> the last VMID handed out on it
_VMIDS: weakref.WeakKeyDictionary[System, int] = weakref.WeakKeyDictionary()


def arm_smmu_vmid_alloc(system: System) -> int:
    """arm_smmu_domain_finalise_s2: a VMID for a new stage-2 domain, from 1
    up (the fake hands them out in order and never reuses one; the
    kernel's ida reuses a freed VMID)."""
    vmid = _VMIDS.get(system, 0) + 1
    _VMIDS[system] = vmid
    return vmid
