"""Arm SMMUv3 nesting, as Linux's arm-smmu-v3 driver offers it through iommufd.

Guest-side helpers for tests/kernel/test_real_smmuv3.py, and a probe:

    python3 tests/vm/smmuv3.py        # in the arm64 guest: JSON of what the kernel answered

The probe binds edu to vfio-pci and asks, in order: IOMMU_GET_HW_INFO (the
SMMU's ID registers), a nesting-parent (stage-2) HWPT, a nested HWPT on
that parent directly, a vIOMMU of type ARM_SMMUV3, a vDEVICE, nested HWPTs
from STEs (abort, bypass, stage-1 translate, invalid ones), invalidation
commands through the vIOMMU, and a dirty-tracking HWPT.  Each step records
"ok" or the errno's name.

Field layouts (Arm IHI 0070, Linux drivers/iommu/arm/arm-smmu-v3): STE
dword 0 has V in bit 0 and Config in bits 3:1 (0b000 abort, 0b100 bypass,
0b101 stage-1 translate); a command's opcode is bits 7:0 of dword 0, the
StreamID of CFGI_* bits 63:32.
"""

from __future__ import annotations

import errno
import json
import mmap
import os
import struct
import sys
from typing import Any, Callable

if __name__ == "__main__":  # run as a script: the checkout's pyvfio
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import pyvfio  # noqa: E402
from pyvfio import lib  # noqa: E402
from pyvfio.errors import IoctlError  # noqa: E402

VIOMMU_TYPE_ARM_SMMUV3 = lib.IOMMU_VIOMMU_TYPE_ARM_SMMUV3
INVALIDATE_DATA_ARM_SMMUV3 = lib.IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3
HWPT_DATA_ARM_SMMUV3 = lib.IOMMU_HWPT_DATA_ARM_SMMUV3

#: STE dword 0 Config values (bits 3:1).
STE_CFG_ABORT, STE_CFG_BYPASS, STE_CFG_S1_TRANS, STE_CFG_NESTED = 0, 4, 5, 7
#: Command opcodes (dword 0 bits 7:0).
CMD_CFGI_STE, CMD_CFGI_CD_ALL, CMD_TLBI_NH_ALL, CMD_TLBI_NSNH_ALL = 0x03, 0x06, 0x10, 0x30

#: SMMU_IDR0: S2P (bit 0), S1P (bit 1); SMMU_IDR3: FWB (bit 8).
IDR0_S2P, IDR0_S1P, IDR3_FWB = 1 << 0, 1 << 1, 1 << 8


def ste(cfg: int, valid: bool = True, extra0: int = 0) -> bytes:
    """struct iommu_hwpt_arm_smmuv3: a guest STE (two little-endian u64)."""
    return struct.pack("<QQ", (1 if valid else 0) | (cfg << 1) | extra0, 0)


def command(opcode: int, sid: int = 0, dword1: int = 0) -> bytes:
    """struct iommu_viommu_arm_smmuv3_invalidate: one command (two u64)."""
    return struct.pack("<QQ", opcode | (sid << 32), dword1)


def viommu_invalidate(viommu: pyvfio.Viommu, commands: list[bytes]) -> int:
    """IOMMU_HWPT_INVALIDATE on a vIOMMU with SMMUv3 commands; returns how
    many the kernel handled."""
    return viommu.invalidate(INVALIDATE_DATA_ARM_SMMUV3, commands)


def outcome(step: Callable[[], Any]) -> str:
    """"ok", or the errno name of the IoctlError the step raised."""
    try:
        step()
    except IoctlError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return "ok"


def probe(bdf: str) -> dict[str, Any]:
    """What the kernel answers for ``bdf`` (bound to vfio-pci)."""
    out: dict[str, Any] = {}
    with pyvfio.IommuFd() as fd, pyvfio.Device.open(bdf) as dev:
        dev.bind(fd)
        ioas = fd.ioas()
        dev.attach(ioas)
        info = fd.hw_info(dev)
        out["hw_info"] = {"type": pyvfio.HwInfoType(info.type).name,
                          "capabilities": info.capabilities,
                          "max_pasid_log2": info.max_pasid_log2, **info.decoded()}
        out["iova_ranges"] = [[hex(r.start), hex(r.last)] for r in ioas.iova_ranges()]
        out["dirty_tracking_hwpt"] = outcome(lambda: fd.hwpt_alloc(dev, ioas, dirty_tracking=True))
        try:
            parent = fd.hwpt_alloc(dev, ioas, nest_parent=True)
        except IoctlError as exc:
            out["nest_parent"] = errno.errorcode.get(exc.errno or 0)
            return out
        out["nest_parent"] = "ok"
        out["attach_nest_parent"] = outcome(lambda: dev.replace(parent))
        buf = mmap.mmap(-1, 0x10000)
        out["map_under_nest_parent"] = outcome(lambda: ioas.map(buf, 0x100000))
        out["nested_on_hwpt"] = outcome(lambda: fd.hwpt_alloc(
            dev, parent, data_type=HWPT_DATA_ARM_SMMUV3, data=ste(STE_CFG_ABORT)))
        try:
            viommu = fd.viommu_alloc(dev, parent, VIOMMU_TYPE_ARM_SMMUV3)
        except IoctlError as exc:
            out["viommu"] = errno.errorcode.get(exc.errno or 0)
            return out
        out["viommu"] = "ok"
        out["vdevice"] = outcome(lambda: viommu.vdevice(dev, 0x10))
        for name, data in (("abort", ste(STE_CFG_ABORT)), ("bypass", ste(STE_CFG_BYPASS)),
                           ("s1_translate", ste(STE_CFG_S1_TRANS)),
                           ("invalid_v0", ste(STE_CFG_S1_TRANS, valid=False)),
                           ("nested_cfg", ste(STE_CFG_NESTED)),
                           ("reserved_bit", ste(STE_CFG_BYPASS, extra0=1 << 4))):
            def nested(data: bytes = data) -> None:
                hwpt = fd.hwpt_alloc(dev, viommu, data_type=HWPT_DATA_ARM_SMMUV3, data=data)
                dev.replace(hwpt)
                dev.replace(parent)
                hwpt.close()
            out[f"nested_ste_{name}"] = outcome(nested)
        for name, cmds in (("tlbi_nsnh_all", [command(CMD_TLBI_NSNH_ALL)]),
                           ("tlbi_nh_all", [command(CMD_TLBI_NH_ALL)]),
                           ("cfgi_cd_all_vsid", [command(CMD_CFGI_CD_ALL, 0x10)]),
                           ("cfgi_cd_all_unknown_vsid", [command(CMD_CFGI_CD_ALL, 0x11)]),
                           ("cfgi_ste", [command(CMD_CFGI_STE, 0x10)])):
            out[f"invalidate_{name}"] = outcome(lambda cmds=cmds: viommu_invalidate(viommu, cmds))
    return out


def main() -> int:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import guestpci
    bdf = guestpci.find_one(*guestpci.EDU)
    guestpci.bind_vfio(bdf)
    try:
        print(json.dumps(probe(bdf), indent=1))
    finally:
        guestpci.unbind_vfio(bdf)
    return 0


if __name__ == "__main__":
    sys.exit(main())
