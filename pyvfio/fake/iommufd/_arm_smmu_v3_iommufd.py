"""The arm-smmu-v3 driver's iommufd side: hw_info, the vSMMU, nested domains
and the guest's invalidation commands.

After drivers/iommu/arm/arm-smmu-v3/arm-smmu-v3-iommufd.c of Linux 7.3:
IOMMU_GET_HW_INFO's ``struct iommu_hw_info_arm_smmuv3`` (arm_smmu_hw_info:
the ID registers as the SMMU reports them, nothing masked), whether a
vIOMMU can be made (arm_smmu_get_viommu_size) and its set-up
(arm_vsmmu_init), the nested domain a virtual STE describes
(arm_smmu_validate_vste, arm_vsmmu_alloc_domain_nested), attaching it
(arm_smmu_attach_dev_nested, arm_smmu_attach_prepare_vmaster), vDEVICEs
(arm_vsmmu_vdevice_init) and the guest's command-queue entries
(arm_vsmmu_validate_user_cmd, arm_vsmmu_convert_user_cmd,
arm_vsmmu_cache_invalidate).

DMA through a nested domain (:class:`ArmSmmuNestedDomain`): an abort (or
invalid) vSTE blocks it, a bypass vSTE goes through the nesting parent's
stage-2 table alone, and a stage-1 vSTE faults: the fake does not walk
the guest's context descriptors and stage-1 tables, so such a DMA is
recorded as an IOMMU fault naming that.  The commands a vIOMMU issues are
kept (converted: the VMID and the physical stream ID in place) in
:attr:`ArmVsmmu.issued`, since the fake has no TLB to invalidate.
"""

from __future__ import annotations

import collections
import errno
import struct
from typing import TYPE_CHECKING

from ..._uapi import ffi, lib
from ..core import IoDomain, IommuFault, errno_error
from ._arm_smmu_v3 import (
    ArmSmmuDevice,
    arm_smmu_device_hw_probe,
    arm_smmu_ssids_in_use,
    stream_id,
)

if TYPE_CHECKING:
    from ..machine.system import System
    from ..uaccess import UserPtr
    from ._private import HwptPaging, Idev, Vdevice, Viommu

__all__ = [
    "ArmVsmmu", "ArmSmmuNestedDomain", "arm_smmu_hw_info", "arm_smmu_validate_vste",
    "arm_smmu_get_viommu_size", "arm_vsmmu_init", "arm_smmu_attach_dev_nested",
    "STE_CFG_ABORT", "STE_CFG_BYPASS", "STE_CFG_S1_TRANS",
]

# STE word 0 (arm-smmu-v3.h)
_STE0_V = 1 << 0
_STE0_CFG_SHIFT = 1
_STE0_CFG = 0x7 << _STE0_CFG_SHIFT
#: STRTAB_STE_0_CFG_ABORT / _BYPASS / _S1_TRANS
STE_CFG_ABORT = 0
STE_CFG_BYPASS = 4
STE_CFG_S1_TRANS = 5
_STE0_S1FMT = 0x3 << 4
_STE0_S1CTXPTR = ((1 << 52) - 1) & ~((1 << 6) - 1)
_STE0_S1CDMAX = 0x1F << 59
# STE word 1
_STE1_S1DSS = 0x3
_STE1_S1CIR = 0x3 << 2
_STE1_S1COR = 0x3 << 4
_STE1_S1CSH = 0x3 << 6
_STE1_S1STALLD = 1 << 27
_STE1_EATS_SHIFT = 28
_STE1_EATS = 0x3 << _STE1_EATS_SHIFT
_STE1_EATS_ABT = 0
_STE1_EATS_TRANS = 1
#: STRTAB_STE_0_NESTING_ALLOWED / STRTAB_STE_1_NESTING_ALLOWED: the vSTE
#: bits the user may set.
_STE0_NESTING_ALLOWED = _STE0_V | _STE0_CFG | _STE0_S1FMT | _STE0_S1CTXPTR | _STE0_S1CDMAX
_STE1_NESTING_ALLOWED = (_STE1_S1DSS | _STE1_S1CIR | _STE1_S1COR | _STE1_S1CSH
                         | _STE1_S1STALLD | _STE1_EATS)

# Command queue entries (arm-smmu-v3.h)
_CMDQ_0_OP = 0xFF
_CMDQ_0_SSV = 1 << 11
_OP_CFGI_CD = 0x05
_OP_CFGI_CD_ALL = 0x06
_OP_TLBI_NH_ALL = 0x10
_OP_TLBI_NH_ASID = 0x11
_OP_TLBI_NH_VA = 0x12
_OP_TLBI_NH_VAA = 0x13
_OP_TLBI_NSNH_ALL = 0x30
_OP_ATC_INV = 0x40
_CFGI_0_SSID = ((1 << 20) - 1) << 12
_CFGI_0_SID_SHIFT = 32
_CFGI_0_SID = ((1 << 32) - 1) << _CFGI_0_SID_SHIFT
_CFGI_1_LEAF = 1 << 0
_TLBI_0_NUM = 0x1F << 12
_TLBI_0_SCALE_SHIFT = 20
_TLBI_0_SCALE = 0x3F << _TLBI_0_SCALE_SHIFT
_TLBI_0_VMID_SHIFT = 32
_TLBI_0_VMID = 0xFFFF << _TLBI_0_VMID_SHIFT
_TLBI_0_ASID_SHIFT = 48
_TLBI_1_LEAF = 1 << 0
_TLBI_1_TTL_SHIFT = 8
_TLBI_1_TTL = 0x3 << _TLBI_1_TTL_SHIFT
_TLBI_1_TG_SHIFT = 10
_TLBI_1_TG = 0x3 << _TLBI_1_TG_SHIFT
_TLBI_1_VA_MASK = ((1 << 64) - 1) & ~((1 << 12) - 1)
_ATC_0_GLOBAL = 1 << 9
_ATC_0_SSID = _CFGI_0_SSID
_ATC_0_SID = _CFGI_0_SID
_ATC_1_SIZE = 0x3F
_ATC_1_ADDR_MASK = _TLBI_1_VA_MASK
#: ATC_INV_SIZE_ALL
_ATC_INV_SIZE_ALL = 52
#: CMDQ_BATCH_ENTRIES (BITS_PER_LONG)
_CMDQ_BATCH_ENTRIES = 64


# -- IOMMU_GET_HW_INFO ---------------------------------------------------------------------------
def arm_smmu_hw_info(system: System, in_type: int) -> tuple[int, bytes]:
    """arm_smmu_hw_info: ``(type, struct iommu_hw_info_arm_smmuv3)``."""
    if in_type not in (lib.IOMMU_HW_INFO_TYPE_DEFAULT, lib.IOMMU_HW_INFO_TYPE_ARM_SMMUV3):
        # arm_smmu_hw_info: EOPNOTSUPP for another type (no impl_ops->hw_info)
        raise errno_error(errno.EOPNOTSUPP, f"hw_info type {in_type} not supported")
    smmu = arm_smmu_device_hw_probe(system)
    info = ffi.new("struct iommu_hw_info_arm_smmuv3 *")
    # arm_smmu_hw_info: IDR0..5, IIDR and AIDR read as they are; the
    # REPEAT_TLBI_CFGI erratum flag only on the SMMUs that have it
    for i, reg in enumerate(smmu.idr):
        info.idr[i] = reg
    info.iidr = smmu.iidr
    info.aidr = smmu.aidr
    return lib.IOMMU_HW_INFO_TYPE_ARM_SMMUV3, bytes(ffi.buffer(info))


# -- the vSMMU ---------------------------------------------------------------------------------
def arm_smmu_get_viommu_size(system: System, viommu_type: int) -> bool:
    """arm_smmu_get_viommu_size: whether a vIOMMU of ``viommu_type`` can be
    made (the size is nonzero)."""
    smmu = arm_smmu_device_hw_probe(system)
    if not smmu.nesting:
        # arm_smmu_get_viommu_size: 0 without nesting (both stages)
        return False
    iommu = system.iommu
    assert iommu is not None
    canwbs = bool(iommu.enforce_cache_coherency)
    if not canwbs and not smmu.s2fwb:
        # arm_smmu_get_viommu_size: 0 unless the device is fully coherent
        # (IORT CANWBS) or the SMMU has S2FWB: the VM could bypass the cache
        return False
    # arm_smmu_get_viommu_size: only the ARM_SMMUV3 type (no impl_ops)
    return bool(viommu_type == lib.IOMMU_VIOMMU_TYPE_ARM_SMMUV3)


class ArmVsmmu:
    """struct arm_vsmmu: the driver's part of a vIOMMU (its viommu ops)."""

    def __init__(self, smmu: ArmSmmuDevice, s2_parent: HwptPaging) -> None:
        self.smmu = smmu
        self.s2_parent = s2_parent
        #: the stage-2 domain's VMID (arm_vsmmu_init)
        self.vmid = s2_parent.vmid
        #: the converted commands issued to the SMMU's command queue, as
        #: ``(word0, word1)`` pairs, oldest first (the last 4096)
        self.issued: collections.deque[tuple[int, int]] = collections.deque(maxlen=4096)

    # viommu->ops->alloc_domain_nested
    def alloc_domain_nested(self, flags: int, data_type: int, data: UserPtr,
                            data_len: int) -> ArmSmmuNestedDomain:
        """arm_vsmmu_alloc_domain_nested."""
        if flags:
            # arm_vsmmu_alloc_domain_nested: EOPNOTSUPP for any flag
            raise errno_error(errno.EOPNOTSUPP, f"nested SMMUv3 domains take no flags {flags:#x}")
        size = int(ffi.sizeof("struct iommu_hwpt_arm_smmuv3"))
        if data_type != lib.IOMMU_HWPT_DATA_ARM_SMMUV3:
            # __iommu_copy_struct_from_user: EINVAL for another data type
            raise errno_error(errno.EINVAL, f"data_type {data_type} is not ARM_SMMUV3")
        if data_len < size or data_len > size:
            # __iommu_copy_struct_from_user: EINVAL below the first version's
            # size (offsetofend ste) or above the kernel's struct
            raise errno_error(errno.EINVAL, f"data_len {data_len} is not {size}")
        arg = data.copy_struct_from_user("struct iommu_hwpt_arm_smmuv3", data_len)
        ste0, ste1, enable_ats = arm_smmu_validate_vste(int(arg.ste[0]), int(arg.ste[1]))
        return ArmSmmuNestedDomain(self, ste0, ste1 & ~_STE1_EATS, enable_ats)

    # viommu->ops->vdevice_init
    def vdevice_init(self, vdev: Vdevice) -> None:
        """arm_vsmmu_vdevice_init: a PCI device has one stream (always
        accepted)."""

    # viommu->ops->cache_invalidate
    def cache_invalidate(self, viommu: Viommu, data_type: int, uptr: UserPtr,
                         entry_len: int, entry_num: int) -> tuple[int, OSError | None]:
        """arm_vsmmu_cache_invalidate: ``(entries handled, error)``."""
        cmds: list[tuple[int, int]] = []
        size = int(ffi.sizeof("struct iommu_viommu_arm_smmuv3_invalidate"))
        try:
            # iommu_copy_struct_from_full_user_array
            if data_type != lib.IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3:
                raise errno_error(errno.EINVAL, f"data_type {data_type} is not ARM_SMMUV3")
            if not entry_num:
                raise errno_error(errno.EINVAL, "no entries")
            if entry_len == size:
                raw = uptr.read(0, entry_num * entry_len)
                cmds = [struct.unpack_from("<QQ", raw, i * size) for i in range(entry_num)]
            else:
                for i in range(entry_num):
                    one = (uptr + i * entry_len).copy_struct_from_user(
                        "struct iommu_viommu_arm_smmuv3_invalidate", entry_len)
                    cmds.append((int(one.cmd[0]), int(one.cmd[1])))
        except OSError as e:
            return 0, e
        last = 0
        batch: list[tuple[int, int]] = []
        for cur, cmd in enumerate(cmds):
            try:
                batch.append(self._convert_user_cmd(viommu, cmd))
            except OSError as e:
                # arm_vsmmu_cache_invalidate: entry_num is the index of the
                # failing command; the unissued part of its batch is dropped
                return cur, e
            if cur + 1 != len(cmds) and cur + 1 - last != _CMDQ_BATCH_ENTRIES - 1:
                continue
            # __arm_smmu_cmdq_issue_cmdlist (with a CMD_SYNC)
            self.issued.extend(batch)
            batch = []
            last = cur + 1
        return len(cmds), None

    def _validate_user_cmd(self, data0: int, data1: int) -> None:
        """arm_vsmmu_validate_user_cmd: EIO for an opcode or a field the
        guest may not use."""
        smmu = self.smmu
        allowed0, allowed1 = _CMDQ_0_OP, 0
        op = data0 & _CMDQ_0_OP
        asid = ((1 << smmu.asid_bits) - 1) << _TLBI_0_ASID_SHIFT
        if op == _OP_TLBI_NSNH_ALL:
            pass
        elif op in (_OP_TLBI_NH_VA, _OP_TLBI_NH_VAA):
            if op == _OP_TLBI_NH_VA:
                # arm_vsmmu_validate_user_cmd: ASID within asid_bits
                allowed0 |= asid
            if smmu.range_inv:
                # arm_vsmmu_validate_user_cmd: the range fields need RIL
                # and valid values (arm_vsmmu_validate_range)
                self._validate_range(data0, data1)
                allowed0 |= _TLBI_0_NUM | _TLBI_0_SCALE
                allowed1 |= _TLBI_1_TG | _TLBI_1_TTL
                if not smmu.ds:
                    allowed0 &= ~(0x20 << _TLBI_0_SCALE_SHIFT)
            allowed0 |= _TLBI_0_VMID
            allowed1 |= _TLBI_1_LEAF | _TLBI_1_VA_MASK
        elif op in (_OP_TLBI_NH_ASID, _OP_TLBI_NH_ALL):
            if op == _OP_TLBI_NH_ASID:
                allowed0 |= asid
            allowed0 |= _TLBI_0_VMID
        elif op == _OP_ATC_INV:
            if not smmu.ats:
                # arm_vsmmu_validate_user_cmd: EIO, ATC_INV without ATS
                raise errno_error(errno.EIO, "ATC_INV: the SMMU has no ATS")
            if data1 & _ATC_1_SIZE > _ATC_INV_SIZE_ALL:
                # arm_vsmmu_validate_user_cmd: EIO for a size above 52
                raise errno_error(errno.EIO, "ATC_INV: size above 52")
            if smmu.ssid_bits:
                allowed0 |= _CMDQ_0_SSV | _ATC_0_SSID | _ATC_0_GLOBAL
            allowed0 |= _ATC_0_SID
            allowed1 |= _ATC_1_SIZE | _ATC_1_ADDR_MASK
        elif op in (_OP_CFGI_CD, _OP_CFGI_CD_ALL):
            if op == _OP_CFGI_CD:
                if smmu.ssid_bits:
                    allowed0 |= _CFGI_0_SSID
                allowed1 |= _CFGI_1_LEAF
            allowed0 |= _CFGI_0_SID
        else:
            # arm_vsmmu_validate_user_cmd: EIO for any other opcode
            raise errno_error(errno.EIO, f"command opcode {op:#x} is not allowed")
        if data0 & ~allowed0 or data1 & ~allowed1:
            # arm_vsmmu_validate_user_cmd: EIO for a bit the opcode does not
            # allow (a RES0 or Secure bit would stall the shared queue)
            raise errno_error(errno.EIO, f"command {op:#x} sets bits it may not "
                              f"({data0 & ~allowed0:#x}, {data1 & ~allowed1:#x})")

    def _validate_range(self, data0: int, data1: int) -> None:
        """arm_vsmmu_validate_range."""
        rng = bool(data0 & (_TLBI_0_NUM | _TLBI_0_SCALE))
        ttl = (data1 & _TLBI_1_TTL) >> _TLBI_1_TTL_SHIFT
        tg = (data1 & _TLBI_1_TG) >> _TLBI_1_TG_SHIFT
        if not tg:
            if rng or ttl:
                # arm_vsmmu_validate_range: NUM/SCALE/TTL are RES0 with TG 0
                raise errno_error(errno.EIO, "TLBI range fields without TG")
            return
        if tg == 2 and ttl == 1 and not self.smmu.ds:
            # arm_vsmmu_validate_range: TTL 1 with 16K TG needs IDR5.DS
            raise errno_error(errno.EIO, "TLBI TTL 1 with a 16K granule needs DS")
        if not rng and not ttl:
            # arm_vsmmu_validate_range: NUM 0, SCALE 0, TTL 0 is reserved
            raise errno_error(errno.EIO, "TLBI with TG but neither range nor TTL")

    def _convert_user_cmd(self, viommu: Viommu, cmd: tuple[int, int]) -> tuple[int, int]:
        """arm_vsmmu_convert_user_cmd: the command with this vIOMMU's VMID
        or the device's physical stream ID."""
        data0, data1 = cmd
        self._validate_user_cmd(data0, data1)
        op = data0 & _CMDQ_0_OP
        vmid = (self.vmid << _TLBI_0_VMID_SHIFT) & _TLBI_0_VMID
        if op == _OP_TLBI_NSNH_ALL:
            # arm_vsmmu_convert_user_cmd: NSNH_ALL becomes NH_ALL of the VMID
            return _OP_TLBI_NH_ALL | vmid, 0
        if op in (_OP_TLBI_NH_VA, _OP_TLBI_NH_VAA, _OP_TLBI_NH_ALL, _OP_TLBI_NH_ASID):
            return (data0 & ~_TLBI_0_VMID) | vmid, data1
        # ATC_INV, CFGI_CD, CFGI_CD_ALL: the vSID becomes the SID
        # (arm_vsmmu_vsid_to_sid: EIO for a vSID no vDEVICE has)
        vsid = (data0 & _CFGI_0_SID) >> _CFGI_0_SID_SHIFT
        vdev = viommu.vdevs.get(vsid)
        if vdev is None:
            raise errno_error(errno.EIO, f"no vDEVICE has virtual stream ID {vsid:#x}")
        sid = stream_id(vdev.idev.pdev)
        return (data0 & ~_CFGI_0_SID) | (sid << _CFGI_0_SID_SHIFT), data1


def arm_vsmmu_init(system: System, parent: HwptPaging) -> ArmVsmmu:
    """arm_vsmmu_init (the machine has one SMMU, so the parent is always
    on the device's SMMU)."""
    return ArmVsmmu(arm_smmu_device_hw_probe(system), parent)


# -- nested domains ---------------------------------------------------------------------------
def arm_smmu_validate_vste(ste0: int, ste1: int) -> tuple[int, int, bool]:
    """arm_smmu_validate_vste: ``(ste0, ste1, enable_ats)``; EIO for an STE
    the user may not install."""
    if not ste0 & _STE0_V:
        # arm_smmu_validate_vste: a non-valid vSTE is kept as all zeros (abort)
        return 0, 0, False
    if ste0 & ~_STE0_NESTING_ALLOWED or ste1 & ~_STE1_NESTING_ALLOWED:
        # arm_smmu_validate_vste: EIO for bits outside the allowed masks
        raise errno_error(errno.EIO, f"vSTE sets bits it may not ({ste0 & ~_STE0_NESTING_ALLOWED:#x}, "
                          f"{ste1 & ~_STE1_NESTING_ALLOWED:#x})")
    cfg = (ste0 & _STE0_CFG) >> _STE0_CFG_SHIFT
    if cfg not in (STE_CFG_ABORT, STE_CFG_BYPASS, STE_CFG_S1_TRANS):
        # arm_smmu_validate_vste: EIO for a config other than abort, bypass, S1
        raise errno_error(errno.EIO, f"vSTE config {cfg} is not abort, bypass or S1 translate")
    eats = (ste1 & _STE1_EATS) >> _STE1_EATS_SHIFT
    ste1 &= ~_STE1_EATS
    if eats not in (_STE1_EATS_ABT, _STE1_EATS_TRANS):
        # arm_smmu_validate_vste: EIO for EATS other than abort or full ATS
        raise errno_error(errno.EIO, f"vSTE EATS {eats} is not supported")
    return ste0, ste1, cfg == STE_CFG_S1_TRANS and eats == _STE1_EATS_TRANS


class ArmSmmuNestedDomain(IoDomain):
    """struct arm_smmu_nested_domain: the physical STE made from the
    user's vSTE decides what the device's DMA does."""

    def __init__(self, vsmmu: ArmVsmmu, ste0: int, ste1: int, enable_ats: bool) -> None:
        self.vsmmu = vsmmu
        #: the vSTE as kept (EATS cleared; all zero for a non-valid one)
        self.ste = (ste0, ste1)
        self.enable_ats = enable_ats

    @property
    def config(self) -> int:
        """The STE config installed (arm_smmu_make_nested_domain_ste: a
        non-valid vSTE becomes an abort STE)."""
        ste0 = self.ste[0]
        if not ste0 & _STE0_V:
            return STE_CFG_ABORT
        return (ste0 & _STE0_CFG) >> _STE0_CFG_SHIFT

    def translate(self, iova: int, length: int, write: bool) -> list[tuple[int, int]]:
        """Abort: blocked; bypass: the parent's stage 2; stage 1: faults
        (the guest's tables are not walked)."""
        cfg = self.config
        if cfg == STE_CFG_BYPASS:
            # arm_smmu_make_nested_domain_ste: bypass installs the S2 alone
            return self.vsmmu.s2_parent.io_domain.translate(iova, length, write)
        if cfg == STE_CFG_S1_TRANS:
            raise IommuFault(iova, length, write,
                             "stage-1 translation through the guest's context descriptors "
                             "is not simulated")
        # arm_make_abort_ste: the vSTE aborts the stream
        raise IommuFault(iova, length, write, "the vSTE aborts the stream")

    def note_dirty(self, iova: int, length: int) -> None:
        """The stage-2 table records writes (a nesting parent tracks none)."""
        self.vsmmu.s2_parent.io_domain.note_dirty(iova, length)

    def __repr__(self) -> str:
        return f"<SMMUv3 nested domain ste={self.ste[0]:#x},{self.ste[1]:#x}>"


def arm_smmu_attach_dev_nested(domain: ArmSmmuNestedDomain, viommu: Viommu, idev: Idev) -> None:
    """arm_smmu_attach_dev_nested's checks (the machine has one SMMU)."""
    if arm_smmu_ssids_in_use(idev.pdev):
        # arm_smmu_attach_dev_nested: EBUSY while PASIDs are attached
        raise errno_error(errno.EBUSY, f"{idev.pdev.bdf} has PASIDs attached")
    vdev = idev.vdev
    if (vdev is None or vdev.viommu is not viommu) and domain.config == STE_CFG_S1_TRANS:
        # arm_smmu_attach_prepare_vmaster: ENOENT (iommufd_viommu_get_vdev_id)
        # for a translating vSTE without a vDEVICE; abort and bypass may attach
        raise errno_error(errno.ENOENT, f"{idev.pdev.bdf} has no vDEVICE on vIOMMU {viommu.id}")
