"""Nesting on a real IOMMU driver: Linux's arm-smmu-v3 behind QEMU's SMMUv3.

Runs in the arm64 guest (``tests/vm/guest.py --arch arm64``, whose SMMUv3
has both stages: ``arm-smmuv3.stage=nested``); elsewhere these tests skip.
On x86 the same calls only reach the kernel's self-test mock domain
(test_real_mock_domain.py).  Helpers and bit layouts: tests/vm/smmuv3.py.

What the driver allows depends on the SMMU: a vIOMMU (and with it vDEVICEs,
nested HWPTs from guest STEs and invalidation commands) needs a stage 2
that forces write-back memory types (SMMU_IDR3.FWB) or a root complex
described as CANWBS by ACPI IORT (arm_smmu_get_viommu_size); these tests
check whichever answer the SMMU's ID registers call for.
"""

from __future__ import annotations

import errno
import mmap
import os
from typing import Iterator

import pytest

import pyvfio
from pyvfio import Device, IommuFd
from pyvfio.errors import IoctlError

import smmuv3  # tests/vm, on sys.path through conftest.py
from test_real_dma import EDU_BUFFER, PATTERN, _dma, _enable_bus_master, _round_trip

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.environ.get("PYVFIO_GUEST_IOMMU") != "smmuv3",
                       reason="needs an Arm SMMUv3 with both stages (the arm64 guest: "
                              "tests/vm/guest.py --arch arm64 --iommu smmuv3)"),
]


@pytest.fixture
def bound(edu: str) -> Iterator[tuple[IommuFd, Device, pyvfio.IOAS]]:
    """edu bound to a fresh iommufd and attached to an IOAS."""
    with IommuFd() as fd, Device.open(edu) as dev:
        dev.bind(fd)
        ioas = fd.ioas()
        dev.attach(ioas)
        yield fd, dev, ioas


def _idr(fd: IommuFd, dev: Device) -> list[int]:
    decoded = fd.hw_info(dev).decoded()
    idr = decoded["idr"]
    assert isinstance(idr, list)
    return idr


def _errno(exc: pytest.ExceptionInfo[IoctlError]) -> str:
    return errno.errorcode.get(exc.value.errno or 0, str(exc.value.errno))


def test_hw_info_is_smmuv3_with_both_stages(
        bound: tuple[IommuFd, Device, pyvfio.IOAS]) -> None:
    fd, dev, ioas = bound
    info = fd.hw_info(dev)
    assert info.type == pyvfio.HwInfoType.ARM_SMMUV3
    decoded = info.decoded()
    assert set(decoded) >= {"flags", "idr", "iidr", "aidr"}
    idr = _idr(fd, dev)
    assert len(idr) == 6
    assert idr[0] & smmuv3.IDR0_S1P and idr[0] & smmuv3.IDR0_S2P, hex(idr[0])
    # QEMU's SMMUv3 updates no access/dirty flags (SMMU_IDR0.HTTU is 0)
    assert not info.dirty_tracking
    with pytest.raises(IoctlError) as exc:
        fd.hwpt_alloc(dev, ioas, dirty_tracking=True)
    assert exc.value.ioctl == "IOMMU_HWPT_ALLOC" and exc.value.errno == errno.EOPNOTSUPP
    # asking for the type by name gives the same data
    assert fd.hw_info(dev, pyvfio.HwInfoType.ARM_SMMUV3).data == info.data


def test_msi_window_is_carved_out_of_the_iova_space(
        bound: tuple[IommuFd, Device, pyvfio.IOAS]) -> None:
    _, _, ioas = bound
    ranges = [(r.start, r.last) for r in ioas.iova_ranges()]
    # the SMMU's software MSI window (MSI_IOVA_BASE 0x8000000, 1 MiB), reserved
    assert not any(start <= 0x8000000 <= last or start <= 0x80FFFFF <= last
                   for start, last in ranges), ranges
    assert any(start <= 0x80FFFFF + 1 <= last for start, last in ranges), ranges


def test_nest_parent_is_a_stage2_table_that_translates_dma(
        bound: tuple[IommuFd, Device, pyvfio.IOAS]) -> None:
    fd, dev, ioas = bound
    parent = fd.hwpt_alloc(dev, ioas, nest_parent=True)
    assert parent.flags & pyvfio.lib.IOMMU_HWPT_ALLOC_NEST_PARENT
    dev.replace(parent)
    assert dev.attached is parent
    _enable_bus_master(dev)
    buf = mmap.mmap(-1, 0x2000)
    mapping = ioas.map(buf, 0x300000)
    _round_trip(dev, buf, mapping.iova)
    assert buf[0x1000:0x1040] == PATTERN
    mapping.close()
    # unmapped from the stage-2 table: the device's write is blocked
    buf[0x1000:0x1040] = bytes(64)
    _dma(dev, EDU_BUFFER, 0x301000, 64, to_ram=True)
    assert buf[0x1000:0x1040] == bytes(64)


def test_nested_hwpt_needs_a_viommu(bound: tuple[IommuFd, Device, pyvfio.IOAS]) -> None:
    fd, dev, ioas = bound
    parent = fd.hwpt_alloc(dev, ioas, nest_parent=True)
    # arm-smmu-v3 makes nested domains only through a vIOMMU (no
    # domain_alloc_nested on the device's ops: iommufd_hwpt_nested_alloc)
    with pytest.raises(IoctlError) as exc:
        fd.hwpt_alloc(dev, parent, data_type=pyvfio.HwptDataType.ARM_SMMUV3,
                      data=smmuv3.ste(smmuv3.STE_CFG_ABORT))
    assert exc.value.errno == errno.EOPNOTSUPP, _errno(exc)
    # a plain (not nesting-parent) HWPT cannot carry a vIOMMU
    plain = fd.hwpt_alloc(dev, ioas)
    with pytest.raises(IoctlError) as exc:
        fd.viommu_alloc(dev, plain, smmuv3.VIOMMU_TYPE_ARM_SMMUV3)
    assert exc.value.ioctl == "IOMMU_VIOMMU_ALLOC"


def test_viommu_follows_the_smmu_coherency(bound: tuple[IommuFd, Device, pyvfio.IOAS]) -> None:
    fd, dev, ioas = bound
    fwb = bool(_idr(fd, dev)[3] & smmuv3.IDR3_FWB)
    parent = fd.hwpt_alloc(dev, ioas, nest_parent=True)
    if not fwb:
        # no S2FWB and no ACPI CANWBS (a device-tree guest): the driver
        # offers no vIOMMU (arm_smmu_get_viommu_size returns 0)
        with pytest.raises(IoctlError) as exc:
            fd.viommu_alloc(dev, parent, smmuv3.VIOMMU_TYPE_ARM_SMMUV3)
        assert exc.value.errno == errno.EOPNOTSUPP, _errno(exc)
        return
    _viommu_path(fd, dev, parent)


def _viommu_path(fd: IommuFd, dev: Device, parent: pyvfio.HWPT) -> None:
    """vIOMMU, vDEVICE, nested HWPTs from STEs and invalidation, where the
    SMMU offers a vIOMMU."""
    viommu = fd.viommu_alloc(dev, parent, smmuv3.VIOMMU_TYPE_ARM_SMMUV3)
    vdevice = viommu.vdevice(dev, 0x10)
    for cfg in (smmuv3.STE_CFG_ABORT, smmuv3.STE_CFG_BYPASS, smmuv3.STE_CFG_S1_TRANS):
        nested = fd.hwpt_alloc(dev, viommu, data_type=pyvfio.HwptDataType.ARM_SMMUV3,
                               data=smmuv3.ste(cfg))
        assert nested.parent is viommu
        dev.replace(nested)
        dev.replace(parent)
        nested.close()
    # EIO is the driver's answer to STE contents it does not take
    for bad in (smmuv3.ste(smmuv3.STE_CFG_NESTED), smmuv3.ste(smmuv3.STE_CFG_BYPASS, extra0=1 << 4)):
        with pytest.raises(IoctlError) as exc:
            fd.hwpt_alloc(dev, viommu, data_type=pyvfio.HwptDataType.ARM_SMMUV3, data=bad)
        assert exc.value.errno == errno.EIO, _errno(exc)
    assert smmuv3.viommu_invalidate(viommu, [smmuv3.command(smmuv3.CMD_TLBI_NSNH_ALL),
                                             smmuv3.command(smmuv3.CMD_CFGI_CD_ALL, 0x10)]) == 2
    for bad_cmd in (smmuv3.command(smmuv3.CMD_CFGI_STE, 0x10),      # not a guest command
                    smmuv3.command(smmuv3.CMD_CFGI_CD_ALL, 0x11)):  # no such vSID
        with pytest.raises(IoctlError) as exc:
            smmuv3.viommu_invalidate(viommu, [bad_cmd])
        assert exc.value.errno == errno.EIO, _errno(exc)
    vdevice.close()
    viommu.close()
    assert viommu.closed
