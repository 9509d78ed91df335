"""The fake's arm-smmu-v3 driver (Linux 7.3's arm-smmu-v3.c and
arm-smmu-v3-iommufd.c) on the ``arm64-smmuv3`` machine: hw_info, stage-1
and stage-2 paging domains, nesting parents, vIOMMU and vDEVICE, nested
HWPTs made from a virtual STE, the vIOMMU's command checks, and DMA
through a nested domain."""

from __future__ import annotations

import copy
import errno
import mmap
import struct
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from pyvfio import IommuFd
from pyvfio._uapi import ffi, lib
from pyvfio.core.device import Device
from pyvfio.core.hw_pagetable import HwInfoType, HwptDataType
from pyvfio.core.iommufd import IOAS
from pyvfio.errors import IoctlError
from pyvfio.fake import System, fault_walk
from pyvfio.fake.fail_nth import machine_state
from pyvfio.fake.core import IommuFault
from pyvfio.fake.iommufd._arm_smmu_v3 import QEMU_IDR, smmu_regs, stream_id
from pyvfio.fake.machine.topology import load
from pyvfio.setup import cli
from pyvfio.toolkit.attach import open_attached

EDU = "0000:01:00.0"            # behind pcie-root-port 00:10.0
NVME = "0000:02:00.0"
S1_LAST = (1 << 48) - 1          # a stage-1 domain: 48-bit input (VA_BITS >= 48, no VAX)
S2_LAST = (1 << 44) - 1          # a stage-2 domain: QEMU's 44-bit OAS
SMMUV3 = lib.IOMMU_VIOMMU_TYPE_ARM_SMMUV3
STE_DATA = HwptDataType.ARM_SMMUV3
INV_DATA = lib.IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3

# vSTE word 0: V, Config (bits 3:1)
V = 1
ABORT, BYPASS, S1_TRANS, S2_TRANS = 0 << 1, 4 << 1, 5 << 1, 6 << 1
# command opcodes
CFGI_STE, CFGI_CD, CFGI_CD_ALL = 0x03, 0x05, 0x06
NH_ALL, NH_ASID, NH_VA, NSNH_ALL, ATC_INV = 0x10, 0x11, 0x12, 0x30, 0x40


def ste(word0: int, word1: int = 0) -> bytes:
    return struct.pack("<QQ", word0, word1)


def cmd(word0: int, word1: int = 0) -> bytes:
    return struct.pack("<QQ", word0, word1)


def machine(*, s2fwb: bool = False, canwbs: bool = False, idr0: int | None = None) -> System:
    """The arm64-smmuv3 machine, with S2FWB (SMMU_IDR3.FWB), the root
    complex's CANWBS or another SMMU_IDR0 when asked; edu and NVMe bound
    to vfio-pci."""
    topo: dict[str, Any] = copy.deepcopy(load("arm64-smmuv3"))
    idr = list(QEMU_IDR)
    if s2fwb:
        idr[3] |= 1 << 8
    if idr0 is not None:
        idr[0] = idr0
    if idr != list(QEMU_IDR):
        topo["iommu"]["smmu_idr"] = idr
    topo["iommu"]["enforce_cache_coherency"] = canwbs
    system = System(topo)
    b = system.backend
    for bdf in (EDU, NVME):
        if system.device(bdf).driver is not None:  # nvme
            b.sysfs_write(f"/sys/bus/pci/devices/{bdf}/driver/unbind", bdf)
        b.sysfs_write(f"/sys/bus/pci/devices/{bdf}/driver_override", "vfio-pci")
        b.sysfs_write("/sys/bus/pci/drivers_probe", bdf)
    return system


@pytest.fixture
def edu() -> Iterator[tuple[System, Device, IOAS, IommuFd]]:
    """edu attached to an IOAS of a new iommufd, on a machine that can make
    vIOMMUs (S2FWB)."""
    system = machine(s2fwb=True)
    with open_attached(EDU, backend=system.backend) as (dev, ioas):
        fd = dev.iommufd
        assert isinstance(fd, IommuFd) and isinstance(ioas, IOAS)
        yield system, dev, ioas, fd


def errno_of(fn: Any, *args: Any, **kwargs: Any) -> int:
    with pytest.raises(IoctlError) as exc:
        fn(*args, **kwargs)
    return int(exc.value.errno)


# -- the machine and IOMMU_GET_HW_INFO -------------------------------------------------------
def test_machine_is_qemu_virt_with_a_two_stage_smmu() -> None:
    system = System("arm64-smmuv3")
    iommu = system.iommu
    assert iommu is not None and iommu.hw_info_type == "arm_smmuv3"
    # sysfs does not show the registers: the SMMUv3 default is QEMU's
    assert iommu.smmu_idr is None and smmu_regs(system)[0] == QEMU_IDR
    assert QEMU_IDR[0] & 3 == 3                                        # S1P and S2P
    assert not iommu.enforce_cache_coherency                          # no IORT CANWBS
    assert iommu.pgsize_bitmap == (1 << 12) | (1 << 21) | (1 << 30)
    assert [(r.start, r.last, r.type) for r in iommu.reserved_regions] == \
        [(0x8000000, 0x80FFFFF, "msi")]
    assert system.device(EDU).model is not None and system.device(NVME).model is not None
    assert system.device(EDU).group is not system.device(NVME).group


#: What IOMMU_GET_HW_INFO gave for edu in the arm64 test VM (QEMU 10.0.2,
#: Linux 7.3.4): struct iommu_hw_info_arm_smmuv3's idr[], and the capabilities
#: (IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED alone).
VM_IDR = [0x0D44101B, 0x02730010, 0x0, 0x1414, 0x0, 0x74]
VM_CAPABILITIES = 8


def test_hw_info_is_what_the_vm_reported() -> None:
    system = machine()
    with open_attached(EDU, backend=system.backend) as (dev, ioas):
        fd = dev.iommufd
        assert isinstance(fd, IommuFd)
        info = fd.hw_info(dev)
        assert info.type == HwInfoType.ARM_SMMUV3
        decoded = info.decoded()
        # arm_smmu_hw_info: the registers as read, nothing masked, no erratum flag
        assert decoded == {"flags": 0, "__reserved": 0, "idr": VM_IDR, "iidr": 0, "aidr": 1}
        assert (info.capabilities, info.max_pasid_log2) == (VM_CAPABILITIES, 0)
        assert [(r.start, r.last) for r in ioas.iova_ranges()] == \
            [(0x0, 0x7FFFFFF), (0x8100000, 0xFFFFFFFFFFFF)]


def test_hw_info_reports_the_smmu_registers(edu: Any) -> None:
    system, dev, _ioas, fd = edu
    info = fd.hw_info(dev)
    assert info.type == HwInfoType.ARM_SMMUV3
    decoded = info.decoded()
    iommu = system.iommu
    # a machine's own registers (here with IDR3.FWB) are reported as given
    assert decoded["idr"] == list(iommu.smmu_idr) and decoded["idr"][3] & (1 << 8)
    assert (decoded["flags"], decoded["iidr"], decoded["aidr"]) == (0, 0, 1)
    assert not info.dirty_tracking and info.max_pasid_log2 == 0
    # another type than the SMMUv3's: EOPNOTSUPP (no impl_ops->hw_info)
    with pytest.raises(IoctlError) as exc:
        fd.hw_info(dev, data_type=HwInfoType.INTEL_VTD)
    assert exc.value.errno == errno.EOPNOTSUPP


def test_intel_machines_are_unchanged() -> None:
    system = System("qemu-vtd-sm")
    b = system.backend
    b.sysfs_write(f"/sys/bus/pci/devices/{EDU}/driver_override", "vfio-pci")
    b.sysfs_write("/sys/bus/pci/drivers_probe", EDU)
    with open_attached(EDU, backend=b) as (dev, ioas):
        fd = dev.iommufd
        assert isinstance(fd, IommuFd)
        info = fd.hw_info(dev)
        assert info.type == HwInfoType.INTEL_VTD
        assert info.decoded()["cap_reg"] == system.iommu.cap_reg  # type: ignore[union-attr]
        assert ioas.iova_ranges()[-1].last == (1 << 47) - 1
        # no nesting on this VT-d, and intel-iommu has no vIOMMU
        assert errno_of(fd.hwpt_alloc, dev, ioas, nest_parent=True) == errno.EOPNOTSUPP
        hwpt = fd.hwpt_alloc(dev, ioas)
        assert errno_of(fd.viommu_alloc, dev, hwpt, SMMUV3) == errno.EOPNOTSUPP
        hwpt.close()


# -- paging domains ----------------------------------------------------------------------------
def test_stage1_and_nesting_parent_apertures(edu: Any) -> None:
    _system, dev, ioas, fd = edu
    # an automatic domain is stage 1: 48-bit input, the MSI window reserved
    ranges = [(r.start, r.last) for r in ioas.iova_ranges()]
    assert ranges == [(0, 0x7FFFFFF), (0x8100000, S1_LAST)]
    # a nesting parent is stage 2: its input size is the OAS (44 bits)
    ioas2 = fd.ioas()
    parent = fd.hwpt_alloc(dev, ioas2, nest_parent=True)
    dev.replace(parent)
    assert ioas2.iova_ranges()[-1].last == S2_LAST
    dev.replace(ioas)
    parent.close()
    ioas2.close()


def test_paging_flags(edu: Any) -> None:
    _system, dev, ioas, fd = edu
    # iommufd_hwpt_paging_alloc: no IOMMU_CAP_DIRTY_TRACKING without HTTU
    assert errno_of(fd.hwpt_alloc, dev, ioas, dirty_tracking=True) == errno.EOPNOTSUPP
    # arm_smmu_domain_alloc_paging_flags: a nesting parent takes no other flag
    assert errno_of(fd.hwpt_alloc, dev, ioas, nest_parent=True, pasid=True) == errno.EOPNOTSUPP
    # a PASID-capable domain is stage 1
    pasid = fd.hwpt_alloc(dev, ioas, pasid=True)
    pasid.close()


def test_dirty_tracking_with_httu() -> None:
    httu = QEMU_IDR[0] | (2 << 6)      # IDR0.HTTU: access and dirty
    system = machine(idr0=httu)
    with open_attached(EDU, backend=system.backend) as (dev, ioas):
        fd = dev.iommufd
        assert isinstance(fd, IommuFd)
        assert fd.hw_info(dev).dirty_tracking
        hwpt = fd.hwpt_alloc(dev, ioas, dirty_tracking=True)   # stage 1
        hwpt.set_dirty_tracking(True)
        # a stage-2 nesting parent cannot track dirty pages
        assert errno_of(fd.hwpt_alloc, dev, ioas, nest_parent=True,
                        dirty_tracking=True) == errno.EOPNOTSUPP
        hwpt.close()


def test_no_nesting_with_one_stage() -> None:
    system = machine(idr0=QEMU_IDR[0] & ~1)   # stage 1 only (no S2P)
    with open_attached(EDU, backend=system.backend) as (dev, ioas):
        fd = dev.iommufd
        assert isinstance(fd, IommuFd)
        assert errno_of(fd.hwpt_alloc, dev, ioas, nest_parent=True) == errno.EOPNOTSUPP


def test_pasids_need_substreams_and_stage_1() -> None:
    system = machine(s2fwb=True)
    with open_attached(EDU, backend=system.backend) as (dev, ioas):
        fd = dev.iommufd
        assert isinstance(fd, IommuFd)
        assert fd.hw_info(dev).max_pasid_log2 == 0                        # SSIDSIZE 0
    idr = list(QEMU_IDR)
    idr[1] |= 16 << 6                       # SMMU_IDR1.SSIDSIZE: 16-bit substream IDs
    topo: dict[str, Any] = copy.deepcopy(load("arm64-smmuv3"))
    topo["iommu"]["smmu_idr"] = idr
    system = System(topo)
    b = system.backend
    b.sysfs_write(f"/sys/bus/pci/devices/{EDU}/driver_override", "vfio-pci")
    b.sysfs_write("/sys/bus/pci/drivers_probe", EDU)
    system.device(EDU).pasid_bits = 8       # type: ignore[attr-defined]
    with open_attached(EDU, backend=b) as (dev, ioas):
        fd = dev.iommufd
        assert isinstance(fd, IommuFd)
        assert fd.hw_info(dev).max_pasid_log2 == 8
        s1 = fd.hwpt_alloc(dev, ioas, pasid=True)
        s2 = fd.hwpt_alloc(dev, ioas, nest_parent=True)
        dev.replace(s1)
        # arm_smmu_s1_set_dev_pasid: only a stage-1 domain goes to a PASID
        assert errno_of(dev.attach, s2, pasid=3) == errno.EINVAL
        dev.attach(s1, pasid=3)
        # iommufd_hwpt_pasid_compat: a nesting parent is never PASID
        # compatible (NEST_PARENT | PASID is refused), so it cannot replace
        # a domain that has PASIDs (before the driver's own EBUSY)
        assert errno_of(dev.replace, s2) == errno.EINVAL
        dev.detach(pasid=3)
        dev.replace(ioas)
        s2.close()
        s1.close()


# -- vIOMMU and vDEVICE ---------------------------------------------------------------------------
@pytest.mark.parametrize("s2fwb, canwbs, ok", [(False, False, False), (True, False, True),
                                               (False, True, True)])
def test_viommu_needs_canwbs_or_s2fwb(s2fwb: bool, canwbs: bool, ok: bool) -> None:
    system = machine(s2fwb=s2fwb, canwbs=canwbs)
    with open_attached(EDU, backend=system.backend) as (dev, ioas):
        fd = dev.iommufd
        assert isinstance(fd, IommuFd)
        parent = fd.hwpt_alloc(dev, ioas, nest_parent=True)
        if ok:
            fd.viommu_alloc(dev, parent, SMMUV3).close()
        else:
            # arm_smmu_get_viommu_size: 0, the VM could bypass the cache
            assert errno_of(fd.viommu_alloc, dev, parent, SMMUV3) == errno.EOPNOTSUPP
        parent.close()


def test_viommu_checks(edu: Any) -> None:
    _system, dev, ioas, fd = edu
    plain = fd.hwpt_alloc(dev, ioas)
    parent = fd.hwpt_alloc(dev, ioas, nest_parent=True)
    assert errno_of(fd.viommu_alloc, dev, parent, lib.IOMMU_VIOMMU_TYPE_DEFAULT) == errno.EOPNOTSUPP
    # another driver's type (no impl_ops): get_viommu_size gives 0
    assert errno_of(fd.viommu_alloc, dev, parent,
                    lib.IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV) == errno.EOPNOTSUPP
    assert errno_of(fd.viommu_alloc, dev, plain, SMMUV3) == errno.EINVAL
    assert errno_of(fd.viommu_alloc, dev, ioas, SMMUV3) == errno.ENOENT
    viommu = fd.viommu_alloc(dev, parent, SMMUV3)
    # the vIOMMU holds its parent; its HW queues and vEVENTQs are not offered
    assert errno_of(fd.destroy, parent.id) == errno.EBUSY
    assert errno_of(viommu.hw_queue, lib.IOMMU_HW_QUEUE_TYPE_TEGRA241_CMDQV, 0, 0,
                    4096) == errno.EOPNOTSUPP
    viommu.close()
    parent.close()
    plain.close()


def test_vdevice_uniqueness_and_unbind(edu: Any) -> None:
    system, dev, ioas, fd = edu
    parent = fd.hwpt_alloc(dev, ioas, nest_parent=True)
    viommu = fd.viommu_alloc(dev, parent, SMMUV3)
    vdev = viommu.vdevice(dev, 0x8)
    # iommufd_vdevice_alloc_ioctl: one vDEVICE per device, one device per virtual ID
    assert errno_of(viommu.vdevice, dev, 0x9) == errno.EEXIST
    with Device.open(NVME, backend=system.backend) as nvme:
        nvme.bind(fd)
        assert errno_of(viommu.vdevice, nvme, 0x8) == errno.EEXIST
        nvdev = viommu.vdevice(nvme, 0x10)
        assert errno_of(fd.destroy, viommu.id) == errno.EBUSY
        nvdev.close()
    vdev.close()
    vdev2 = viommu.vdevice(dev, 0x8)         # the virtual ID is free again
    assert vdev2.id == vdev.id               # and so is the object ID
    vdev2.close()
    viommu.close()
    parent.close()


def test_unbinding_leaves_the_vdevice_a_tombstone() -> None:
    system = machine(s2fwb=True)
    fd = IommuFd(backend=system.backend)
    ioas = fd.ioas()
    with Device.open(EDU, backend=system.backend) as dev:
        dev.bind(fd)
        dev.attach(ioas)
        parent = fd.hwpt_alloc(dev, ioas, nest_parent=True)
        viommu = fd.viommu_alloc(dev, parent, SMMUV3)
        vdev_id = viommu.vdevice(dev, 0x8).id
    # iommufd_device_remove_vdev: the unbind destroyed it; its ID stays taken
    assert errno_of(fd.destroy, vdev_id) == errno.ENOENT
    other = fd.ioas()
    assert other.id != vdev_id
    viommu.close()
    parent.close()
    ioas.close()
    fd.close()


# -- nested HWPTs -----------------------------------------------------------------------------
@pytest.mark.parametrize("word0, word1", [
    (V | ABORT, 0), (V | BYPASS, 0), (V | S1_TRANS | (0x1234 << 6), 1 << 28),
    (0, 0), (S2_TRANS | (1 << 8), 1 << 19),   # not valid: anything else is ignored
], ids=["abort", "bypass", "s1", "zero", "not-valid"])
def test_vste_accepted(edu: Any, word0: int, word1: int) -> None:
    _system, dev, ioas, fd = edu
    parent = fd.hwpt_alloc(dev, ioas, nest_parent=True)
    viommu = fd.viommu_alloc(dev, parent, SMMUV3)
    hwpt = fd.hwpt_alloc(dev, viommu, data_type=STE_DATA, data=ste(word0, word1))
    hwpt.close()
    viommu.close()
    parent.close()


@pytest.mark.parametrize("data, flags, err", [
    (ste(V | S2_TRANS), {}, errno.EIO),                    # config: S2 translate
    (ste(V | (7 << 1)), {}, errno.EIO),                    # config: nested
    (ste(V | BYPASS | (1 << 52)), {}, errno.EIO),          # word 0: a bit not allowed
    (ste(V | BYPASS, 1 << 19), {}, errno.EIO),             # word 1: MEV is the kernel's
    (ste(V | BYPASS, 2 << 28), {}, errno.EIO),             # EATS: S1CHK
    (ste(V | BYPASS)[:8], {}, errno.EINVAL),               # shorter than the struct
    (ste(V | BYPASS) + bytes(8), {}, errno.EINVAL),        # longer than the struct
    (ste(V | BYPASS), {"pasid": True}, errno.EOPNOTSUPP),  # the driver takes no flags
    (ste(V | BYPASS), {"nest_parent": True}, errno.EOPNOTSUPP),
], ids=["s2-trans", "nested", "word0-bit", "mev", "eats", "short", "long", "pasid",
        "nest-parent"])
def test_vste_refused(edu: Any, data: bytes, flags: dict[str, bool], err: int) -> None:
    _system, dev, ioas, fd = edu
    parent = fd.hwpt_alloc(dev, ioas, nest_parent=True)
    viommu = fd.viommu_alloc(dev, parent, SMMUV3)
    assert errno_of(fd.hwpt_alloc, dev, viommu, data_type=STE_DATA, data=data, **flags) == err
    viommu.close()
    parent.close()


def test_nested_needs_a_viommu_and_smmu_data(edu: Any) -> None:
    _system, dev, ioas, fd = edu
    parent = fd.hwpt_alloc(dev, ioas, nest_parent=True)
    viommu = fd.viommu_alloc(dev, parent, SMMUV3)
    # the SMMUv3 has no domain_alloc_nested: not on the parent HWPT
    assert errno_of(fd.hwpt_alloc, dev, parent, data_type=STE_DATA,
                    data=ste(V | BYPASS)) == errno.EOPNOTSUPP
    # __iommu_copy_struct_from_user: EINVAL for another data type
    assert errno_of(fd.hwpt_alloc, dev, viommu, data_type=HwptDataType.VTD_S1,
                    data=ste(V | BYPASS)) == errno.EINVAL
    # iommufd_viommu_alloc_hwpt_nested: EOPNOTSUPP without data
    assert errno_of(fd.hwpt_alloc, dev, viommu) == errno.EOPNOTSUPP
    hwpt = fd.hwpt_alloc(dev, viommu, data_type=STE_DATA, data=ste(V | BYPASS))
    assert errno_of(fd.destroy, viommu.id) == errno.EBUSY
    hwpt.close()
    viommu.close()
    parent.close()


def test_attach_rules(edu: Any) -> None:
    _system, dev, ioas, fd = edu
    parent = fd.hwpt_alloc(dev, ioas, nest_parent=True)
    viommu = fd.viommu_alloc(dev, parent, SMMUV3)
    s1 = fd.hwpt_alloc(dev, viommu, data_type=STE_DATA, data=ste(V | S1_TRANS))
    bypass = fd.hwpt_alloc(dev, viommu, data_type=STE_DATA, data=ste(V | BYPASS))
    abort = fd.hwpt_alloc(dev, viommu, data_type=STE_DATA, data=ste(V | ABORT))
    # arm_smmu_attach_prepare_vmaster: a stage-1 vSTE needs the device's vDEVICE
    assert errno_of(dev.replace, s1) == errno.ENOENT
    dev.replace(bypass)
    dev.replace(abort)
    vdev = viommu.vdevice(dev, 0x8)
    dev.replace(s1)
    assert errno_of(fd.destroy, s1.id) == errno.EBUSY
    dev.replace(ioas)
    for obj in (s1, bypass, abort, vdev, viommu, parent):
        obj.close()


# -- DMA through a nested domain -----------------------------------------------------------------
def test_dma_follows_the_vste(edu: Any) -> None:
    system, dev, ioas, fd = edu
    buf = mmap.mmap(-1, 0x1000)
    buf[:5] = b"hello"
    mapping = ioas.map(buf, 0x100000)
    parent = fd.hwpt_alloc(dev, ioas, nest_parent=True)
    viommu = fd.viommu_alloc(dev, parent, SMMUV3)
    vdev = viommu.vdevice(dev, 0x8)
    pdev = system.device(EDU)
    hwpts = {cfg: fd.hwpt_alloc(dev, viommu, data_type=STE_DATA, data=ste(word0))
             for cfg, word0 in (("bypass", V | BYPASS), ("abort", V | ABORT),
                                ("invalid", 0), ("s1", V | S1_TRANS))}
    # bypass: the stage-2 table (the nesting parent's IOAS) alone
    dev.replace(hwpts["bypass"])
    assert pdev.dma_read(0x100000, 5) == b"hello"
    pdev.dma_write(0x100000, b"HE")
    assert buf[:5] == b"HEllo"
    with pytest.raises(IommuFault):
        pdev.dma_read(0x200000, 4)       # not mapped in stage 2
    # abort, and a non-valid vSTE (an abort STE): blocked and recorded
    for cfg in ("abort", "invalid"):
        dev.replace(hwpts[cfg])
        before = len(system.faults)
        with pytest.raises(IommuFault) as exc:
            pdev.dma_read(0x100000, 4)
        assert "aborts" in exc.value.reason and len(system.faults) == before + 1
    # stage 1: the guest's tables are not walked; the DMA faults, saying so
    dev.replace(hwpts["s1"])
    with pytest.raises(IommuFault) as exc:
        pdev.dma_read(0x100000, 4)
    assert "not simulated" in exc.value.reason
    dev.replace(ioas)
    assert pdev.dma_read(0x100000, 5) == b"HEllo"
    for obj in (*hwpts.values(), vdev, viommu, parent, mapping):
        obj.close()


# -- invalidation ----------------------------------------------------------------------------
def _driver(system: System, fd: IommuFd, viommu_id: int) -> Any:
    ictx = system.backend.file(fd.fileno())
    return ictx.objects[viommu_id].driver


def test_invalidate_good_commands(edu: Any) -> None:
    system, dev, ioas, fd = edu
    parent = fd.hwpt_alloc(dev, ioas, nest_parent=True)
    viommu = fd.viommu_alloc(dev, parent, SMMUV3)
    viommu.vdevice(dev, 0x8)
    good = [
        cmd(NH_ALL),
        cmd(NH_ASID | (0xBEEF << 48)),
        cmd(NH_VA | (0x7 << 48) | (3 << 12) | (1 << 20), 0x40000 | (1 << 10) | (3 << 8) | 1),
        cmd(NSNH_ALL),
        cmd(CFGI_CD_ALL | (0x8 << 32)),
        cmd(CFGI_CD | (0x8 << 32), 1),
        cmd(NH_ALL | (0x55 << 32)),            # the guest's VMID is replaced
    ]
    assert viommu.invalidate(INV_DATA, good) == len(good)
    driver = _driver(system, fd, viommu.id)
    vmid = driver.vmid << 32
    sid = stream_id(system.device(EDU))
    assert sid == 0x100
    assert list(driver.issued) == [
        (NH_ALL | vmid, 0),
        (NH_ASID | (0xBEEF << 48) | vmid, 0),
        (NH_VA | (0x7 << 48) | (3 << 12) | (1 << 20) | vmid, 0x40000 | (1 << 10) | (3 << 8) | 1),
        (NH_ALL | vmid, 0),                    # NSNH_ALL becomes NH_ALL of the VMID
        (CFGI_CD_ALL | (sid << 32), 0),        # the vSID becomes the stream ID
        (CFGI_CD | (sid << 32), 1),
        (NH_ALL | vmid, 0),
    ]
    # shorter entries are zero-extended
    assert viommu.invalidate(INV_DATA, [cmd(NH_ALL)[:8]]) == 1


@pytest.mark.parametrize("bad", [
    cmd(CFGI_STE | (0x8 << 32)),               # an opcode the guest may not send
    cmd(ATC_INV | (0x8 << 32)),                # ATC_INV without ATS
    cmd(CFGI_CD_ALL | (0x9 << 32)),            # a vSID no vDEVICE has
    cmd(NH_ALL | (1 << 8)),                    # a reserved bit
    cmd(CFGI_CD | (0x8 << 32) | (1 << 12)),    # an SSID without substreams
    cmd(NH_VA, 1 << 10),                       # TG without range or TTL
    cmd(NH_VA | (1 << 12), 0),                 # NUM without TG
    cmd(NH_VA | (0x20 << 20), (1 << 10) | 1),  # SCALE bit 5 without DS
], ids=["cfgi-ste", "atc-inv", "unknown-vsid", "res0", "ssid", "tg-alone", "num-alone",
        "scale-ds"])
def test_invalidate_bad_command_reports_its_index(edu: Any, bad: bytes) -> None:
    system, dev, ioas, fd = edu
    parent = fd.hwpt_alloc(dev, ioas, nest_parent=True)
    viommu = fd.viommu_alloc(dev, parent, SMMUV3)
    viommu.vdevice(dev, 0x8)
    with pytest.raises(IoctlError) as exc:
        viommu.invalidate(INV_DATA, [cmd(NH_ALL), cmd(NSNH_ALL), bad, cmd(NH_ALL)])
    assert exc.value.errno == errno.EIO and exc.value.entry_num == 2
    # the commands before it were checked but their batch was not issued
    assert list(_driver(system, fd, viommu.id).issued) == []


def test_invalidate_array_errors(edu: Any) -> None:
    _system, dev, ioas, fd = edu
    parent = fd.hwpt_alloc(dev, ioas, nest_parent=True)
    viommu = fd.viommu_alloc(dev, parent, SMMUV3)
    nested = fd.hwpt_alloc(dev, viommu, data_type=STE_DATA, data=ste(V | BYPASS))
    cases = [
        (viommu, lib.IOMMU_HWPT_INVALIDATE_DATA_VTD_S1, [cmd(NH_ALL)], errno.EINVAL),
        (viommu, INV_DATA, [], errno.EINVAL),                            # no entries
        (viommu, INV_DATA, [cmd(NH_ALL) + b"\x01" + bytes(7)], errno.E2BIG),
        (nested, INV_DATA, [cmd(NH_ALL)], errno.EOPNOTSUPP),             # not a nested HWPT
        (parent, INV_DATA, [cmd(NH_ALL)], errno.EINVAL),                 # nor a paging one
    ]
    for target, data_type, entries, err in cases:
        with pytest.raises(IoctlError) as exc:
            target.invalidate(data_type, entries)
        assert (exc.value.errno, exc.value.entry_num) == (err, 0), (target, data_type)
    nested.close()
    viommu.close()
    parent.close()


def test_invalidate_batches_of_63() -> None:
    system = machine(canwbs=True)
    with open_attached(EDU, backend=system.backend) as (dev, ioas):
        fd = dev.iommufd
        assert isinstance(fd, IommuFd)
        parent = fd.hwpt_alloc(dev, ioas, nest_parent=True)
        viommu = fd.viommu_alloc(dev, parent, SMMUV3)
        entries = [cmd(NH_ALL)] * 70 + [cmd(CFGI_STE)]
        with pytest.raises(IoctlError) as exc:
            viommu.invalidate(INV_DATA, entries)
        assert exc.value.entry_num == 70
        # __arm_smmu_cmdq_issue_cmdlist ran once, for the first full batch
        assert len(_driver(system, fd, viommu.id).issued) == 63
        viommu.close()
        parent.close()


# -- the CLI ---------------------------------------------------------------------------------
def test_cli_status(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["--fake", "arm64-smmuv3", "status"])
    out = capsys.readouterr().out
    assert code == cli.EXIT_OK
    assert "IOMMU: smmu3.0x0000000009050000" in out
    assert "1234:11e8" in out and "1b36:0010" in out


# -- user memory ------------------------------------------------------------------------------
def _unmapped_address() -> int:
    area = mmap.mmap(-1, 0x1000)
    address = int(ffi.cast("uintptr_t", ffi.from_buffer(area)))
    area.close()
    return address


def test_bad_pointers_are_efault(edu: Any) -> None:
    _system, dev, ioas, fd = edu
    parent = fd.hwpt_alloc(dev, ioas, nest_parent=True)
    viommu = fd.viommu_alloc(dev, parent, SMMUV3)
    bad = _unmapped_address()
    objects = len(fd.backend.file(fd.fileno()).objects)
    # the vSTE is read through copy_struct_from_user
    alloc = ffi.new("struct iommu_hwpt_alloc *")
    alloc.size = ffi.sizeof("struct iommu_hwpt_alloc")
    alloc.dev_id, alloc.pt_id = dev.dev_id, viommu.id
    alloc.data_type, alloc.data_len, alloc.data_uptr = STE_DATA, 16, bad
    with pytest.raises(OSError) as exc:
        fd.backend.ioctl(fd.fileno(), lib.IOMMU_HWPT_ALLOC, alloc)
    assert exc.value.errno == errno.EFAULT
    assert len(fd.backend.file(fd.fileno()).objects) == objects   # nothing left behind
    # the commands are read with one copy_from_user; entry_num is 0
    inv = ffi.new("struct iommu_hwpt_invalidate *")
    inv.size = ffi.sizeof("struct iommu_hwpt_invalidate")
    inv.hwpt_id, inv.data_type = viommu.id, INV_DATA
    inv.entry_len, inv.entry_num, inv.data_uptr = 16, 3, bad
    with pytest.raises(OSError) as exc:
        fd.backend.ioctl(fd.fileno(), lib.IOMMU_HWPT_INVALIDATE, inv)
    assert exc.value.errno == errno.EFAULT and inv.entry_num == 0
    viommu.close()
    parent.close()


# -- failure walk ------------------------------------------------------------------------------
def test_nesting_sequence_unwinds_at_every_failure() -> None:
    """Each kernel operation of the nesting set-up failing in turn: the error
    reaches the caller and nothing is left behind (fault_walk)."""
    system = machine(s2fwb=True)
    backend = system.backend

    def sequence() -> None:
        with IommuFd(backend=backend) as fd, Device.open(EDU, backend=backend) as dev:
            dev.bind(fd)
            ioas = fd.ioas()
            dev.attach(ioas)
            parent = fd.hwpt_alloc(dev, ioas, nest_parent=True)
            viommu = fd.viommu_alloc(dev, parent, SMMUV3)
            vdev = viommu.vdevice(dev, 0x8)
            nested = fd.hwpt_alloc(dev, viommu, data_type=STE_DATA, data=ste(V | S1_TRANS))
            dev.replace(nested)
            viommu.invalidate(INV_DATA, [cmd(CFGI_CD_ALL | (0x8 << 32)), cmd(NH_ALL)])
            dev.replace(ioas)
            for obj in (nested, vdev, viommu, parent):
                obj.close()

    idle = machine_state(system)
    result = fault_walk(system, sequence)
    assert result.walked >= 8 and result.steps[-1].injected is None
    result.assert_clean()
    assert machine_state(system) == idle
    assert not backend.open_files


def test_a_capture_of_the_machine_is_the_machine() -> None:
    """``pyvfio topology dump`` of the fake arm64 machine gives its IOMMU and
    groups back (what tests/parity/test_vm_machine.py compares in the arm64
    VM): on a device-tree machine the capture knows the SMMUv3 has no
    CANWBS."""
    from pyvfio.setup.capture import capture

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from parity.test_vm_machine import differences, machine_facts

    shipped = machine_facts(load("arm64-smmuv3"))
    captured = machine_facts(load(capture(System("arm64-smmuv3").backend)))
    # (the devices behind the PCIe-to-PCI bridge lose their bus reset in the
    # fake's capture, on the x86 machines too: compared in the VM, not here)
    del shipped["devices"], captured["devices"]
    assert differences(shipped, captured) == []
    assert captured["iommu"]["enforce_cache_coherency"] is False
