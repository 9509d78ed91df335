"""PCI config space through vfio's config region, on the fake kernel:
header fields, the capability lists as vfio presents them (hidden
capabilities, the extended-capability placeholder), typed capability views,
Command register helpers, BAR sizing through the virtualised BARs."""

from __future__ import annotations

from typing import Any, Iterator, Mapping

import pytest
from toolkit_env import FakeMachine, bind_vfio, open_cdev

from pyvfio.core.pci_config import PCI_HEADER, PciCap, PciExtCap
from pyvfio.errors import InvalidArgumentError
from pyvfio.fake import System, models
from pyvfio.fake.machine.pci import Bar, DeviceModel


@pytest.fixture
def machine() -> Iterator[FakeMachine]:
    m = FakeMachine()
    yield m
    m.check_no_leaks()


class CapsDevice(DeviceModel):
    """A PCI Express function with many capabilities, including some vfio
    hides: slot ID (standard) and an unknown extended capability first in
    the extended list (vfio leaves an ID-0 placeholder there)."""

    model_name = "toolkit-caps"
    vendor_id = 0x1AF4
    device_id = 0x10F0
    class_code = 0xFF0000
    default_bars = (Bar(0, 0x4000),)

    def __init__(self, spec: Mapping[str, Any] | None = None) -> None:
        super().__init__(spec)
        self.add_pm_capability()
        self.add_capability(0x04, b"\x00\x00")  # slot ID: hidden by vfio
        self.add_msi_capability(4, per_vector_mask=True)
        self.add_msix_capability(8, table_bar=0, table_offset=0x1000, pba_offset=0x1800)
        self.add_pcie_capability(flr=True, link_speed=3, link_width=4)
        self.add_capability(0x09, b"\x06\x00\xAA\xBB")  # vendor specific, 6 bytes
        self.add_extended_capability(0x0021, 1, bytes(8))  # unknown to vfio: hidden
        self.add_aer_capability()
        sriov = bytearray(0x3C)
        sriov[0x0C - 4:0x0E - 4] = (4).to_bytes(2, "little")  # InitialVFs
        sriov[0x0E - 4:0x10 - 4] = (8).to_bytes(2, "little")  # TotalVFs
        sriov[0x14 - 4:0x16 - 4] = (0x80).to_bytes(2, "little")  # First VF offset
        sriov[0x16 - 4:0x18 - 4] = (2).to_bytes(2, "little")  # VF stride
        sriov[0x1A - 4:0x1C - 4] = (0x10F1).to_bytes(2, "little")  # VF device ID
        self.add_extended_capability(0x0010, 1, bytes(sriov))
        self.add_extended_capability(0x0003, 1, (0x0123456789ABCDEF).to_bytes(8, "little"))


def _factory(spec: Mapping[str, Any]) -> DeviceModel:
    if spec.get("model") == "toolkit-caps":
        return CapsDevice(spec)
    return models.create(spec)


@pytest.fixture
def caps_system() -> Iterator[tuple[System, str]]:
    bdf = "0000:00:05.0"
    system = System({"name": "toolkit-caps", "devices": [
        {"bdf": bdf, "model": "toolkit-caps", "driver": None}]}, models=_factory)
    bind_vfio(system.backend, bdf)
    yield system, bdf
    assert not system.backend.open_files


def test_header_fields(machine: FakeMachine) -> None:
    with open_cdev(machine.backend, machine.edu) as (dev, _ioas):
        cfg = dev.config
        assert dev.config is cfg
        assert (cfg.vendor_id, cfg.device_id, cfg.revision) == (0x1234, 0x11E8, 0x10)
        assert cfg.class_code == 0x00FF00 and cfg.header_type == 0 and not cfg.multi_function
        assert (cfg.subsystem_vendor_id, cfg.subsystem_id) == (0x1AF4, 0x1100)
        assert cfg.interrupt_pin == 1 and cfg.size == 256
        assert cfg.header.VENDOR_ID.read() == 0x1234
        assert cfg.header.STATUS.get("CAP_LIST") == 1
        assert "PciConfig of device 0000:00:02.0" in repr(cfg)
        with pytest.raises(InvalidArgumentError, match="outside the 0x100-byte window"):
            cfg.read32(0x100)
        with pytest.raises(InvalidArgumentError, match="BAR index 6"):
            cfg.bar(6)
        assert PCI_HEADER["COMMAND"].field("MASTER").lsb == 2


def test_command_helpers_reach_the_device(machine: FakeMachine) -> None:
    model = machine.model(machine.edu)
    with open_cdev(machine.backend, machine.edu) as (dev, _ioas):
        cfg = dev.config
        assert cfg.enable(memory=True, bus_master=True) & 0x6 == 0x6
        assert cfg.memory_enabled and cfg.bus_master_enabled
        assert model.bus_master and model.memory_enabled
        assert cfg.header.COMMAND.fields()["MASTER"] == 1
        cfg.disable_bus_master()
        assert not cfg.bus_master_enabled and not model.bus_master
        cfg.enable_bus_master()
        cfg.enable_memory(False)
        assert not model.memory_enabled and model.bus_master
        cfg.enable_memory()
        cfg.enable_io(False)  # edu has no I/O BAR: nothing to decode either way
        assert model.memory_enabled


def test_bar_sizing_through_virtualised_bars(machine: FakeMachine) -> None:
    with open_cdev(machine.backend, machine.nvme) as (dev, _ioas):
        cfg = dev.config
        saved_lo, saved_hi = cfg.bar(0), cfg.bar(1)
        assert saved_lo & 0x7 == 0x4  # a 64-bit memory BAR
        cfg.write32(0x10, 0xFFFFFFFF)
        cfg.write32(0x14, 0xFFFFFFFF)
        assert cfg.bar(0) == (~(0x4000 - 1) & 0xFFFFFFF0) | 0x4  # 16 KiB
        assert cfg.bar(1) == 0xFFFFFFFF
        cfg.write32(0x10, saved_lo)
        cfg.write32(0x14, saved_hi)
        assert (cfg.bar(0), cfg.bar(1)) == (saved_lo, saved_hi)


def test_edu_and_nvme_capabilities(machine: FakeMachine) -> None:
    with open_cdev(machine.backend, machine.edu) as (dev, _ioas):
        cfg = dev.config
        assert [c.name for c in cfg.capabilities()] == ["MSI"]
        assert cfg.extended_capabilities() == [] and cfg.pcie is None and cfg.msix is None
        msi = cfg.msi
        assert msi is not None and msi.vectors == 1 and msi.is_64bit and not msi.per_vector_mask
    with open_cdev(machine.backend, machine.nvme) as (dev, _ioas):
        cfg = dev.config
        assert [c.name for c in cfg.capabilities()] == ["MSIX", "EXP", "PM"]  # as QEMU lists them
        assert cfg.size == 4096 and cfg.extended_capabilities() == []
        msix = cfg.msix
        assert msix is not None and repr(msix).startswith("<MsixCapability at 0x")
        assert (msix.table_size, msix.table_bar, msix.table_offset) == (65, 0, 0x2000)
        assert (msix.pba_bar, msix.pba_offset) == (0, 0x3000)
        assert not msix.enabled and not msix.function_masked
        pcie = cfg.pcie
        assert pcie is not None and pcie.flr and pcie.version == 2 and pcie.port_type == 0
        assert pcie.max_payload == 256 and pcie.link_width == 1
        pm = cfg.pm
        assert pm is not None and pm.power_state == 0 and pm.no_soft_reset
        assert cfg.find_capability(PciCap.MSI) is None


def test_capability_lists_as_vfio_presents_them(caps_system: tuple[System, str]) -> None:
    system, bdf = caps_system
    with open_cdev(system.backend, bdf) as (dev, _ioas):
        cfg = dev.config
        caps = cfg.capabilities()
        # slot ID is hidden by vfio; every other capability is listed in order
        assert [c.name for c in caps] == ["PM", "MSI", "MSIX", "EXP", "VNDR"]
        assert str(caps[0]) == f"PM@{caps[0].offset:#x}"
        ext = cfg.extended_capabilities()
        # the unknown first one became an ID-0 placeholder, skipped by the walk
        assert [c.name for c in ext] == ["ERR", "SRIOV", "DSN"]
        assert ext[0].offset > 0x100 and [c.version for c in ext] == [2, 1, 1]
        assert cfg.read32(0x100) & 0xFFFF == 0
        assert cfg.find_extended_capability(PciExtCap.DSN) == ext[2].offset
        msi = cfg.msi
        assert msi is not None and msi.vectors == 4 and msi.per_vector_mask
        pcie = cfg.pcie
        assert pcie is not None and (pcie.link_speed, pcie.link_width) == (3, 4)
        aer = cfg.aer
        assert aer is not None and aer.uncorrectable_status == 0 and aer.correctable_mask == 0
        aer.clear_status()
        sriov = cfg.sriov
        assert sriov is not None
        assert (sriov.initial_vfs, sriov.total_vfs, sriov.num_vfs) == (4, 8, 0)
        assert (sriov.vf_offset, sriov.vf_stride, sriov.vf_device_id) == (0x80, 2, 0x10F1)
        msix = cfg.msix
        assert msix is not None and msix.table_size == 8 and msix.pba_offset == 0x1800


def test_config_accesses_are_single_preads_of_the_width(machine: FakeMachine,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    backend = machine.backend
    calls: list[tuple[str, int, int]] = []
    real_pread, real_pwrite = backend.pread, backend.pwrite

    def pread(fd: int, size: int, offset: int) -> bytes:
        calls.append(("r", offset & 0xFFFF, size))
        return real_pread(fd, size, offset)

    def pwrite(fd: int, data: Any, offset: int) -> int:
        calls.append(("w", offset & 0xFFFF, len(data)))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(backend, "pread", pread)
    monkeypatch.setattr(backend, "pwrite", pwrite)
    with open_cdev(backend, machine.nvme) as (dev, _ioas):
        cfg = dev.config
        calls.clear()
        cfg.read32(0)
        cfg.read16(2)
        cfg.read8(0x3D)
        cfg.enable_bus_master()
        assert calls == [("r", 0, 4), ("r", 2, 2), ("r", 0x3D, 1), ("r", 4, 2), ("w", 4, 2)]
