"""Discovery (pyvfio.core.sysfs) on the fake kernel: devices, groups, VFIO
support, viability explained."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import pytest
from fixtures.sysfs_overlay import Overlay

import pyvfio
from pyvfio.core import sysfs, viability
from pyvfio.errors import NotViableError, VfioError
from pyvfio.fake import System
from pyvfio.setup import binding, devices, kernel_support
from pyvfio.setup.capture import capture, replay_check, to_json

E1000A, E1000B, BRIDGE = "0000:01:01.0", "0000:01:02.0", "0000:00:05.0"


@pytest.fixture
def default() -> System:
    return System("default")


def test_pci_devices_describe_the_default_machine(default: System) -> None:
    pci = {d.bdf: d for d in devices.pci_devices(default.backend)}
    assert list(pci) == sorted(pci)
    edu = pci["0000:00:02.0"]
    assert (edu.id, edu.class_code, edu.driver, edu.iommu_group) == ("1234:11e8", 0x00FF00, None, 0)
    assert edu.description == "Unclassified device 1234:11e8"
    assert edu.driver_override is None and edu.numa_node == -1
    assert edu.bars[0].index == 0 and edu.bars[0].size == 1 << 20 and edu.bars[0].kind == "mem32"
    nvme = pci["0000:00:03.0"]
    assert (nvme.driver, nvme.class_name, nvme.iommu_group) == ("nvme", "Non-Volatile memory controller", 1)
    e1000e = pci["0000:00:04.0"]
    assert e1000e.reset_methods == ("flr", "pm")
    assert [(b.index, b.size, b.kind) for b in e1000e.bars] == [
        (0, 0x20000, "mem32"), (1, 0x20000, "mem32"), (2, 0x20, "io"), (3, 0x4000, "mem32")]
    bridge = pci[BRIDGE]
    assert bridge.is_bridge and bridge.secondary_bus == 1 and bridge.driver is None
    assert pci[E1000A].parent == BRIDGE and pci[E1000A].iommu_group == 3
    assert not pci[E1000A].is_vf and pci[E1000A].virtfns == ()
    assert pci[E1000A].as_dict()["class"] == "0x020000"


def test_pci_device_errors(default: System) -> None:
    with pytest.raises(VfioError) as exc:
        devices.pci_device("0000:09:00.0", default.backend)
    assert exc.value.errno == errno.ENOENT
    with pytest.raises(pyvfio.InvalidArgumentError):
        devices.pci_device("not-a-bdf", default.backend)


def test_vfio_cdev_shows_once_bound(default: System) -> None:
    b = default.backend
    b.sysfs_write("/sys/bus/pci/devices/0000:00:02.0/driver_override", "vfio-pci")
    b.sysfs_write("/sys/bus/pci/drivers_probe", "0000:00:02.0")
    edu = devices.pci_device("00:02.0", b)
    assert edu.driver == "vfio-pci" and edu.vfio_dev == "vfio0"
    assert edu.cdev_path == "/dev/vfio/devices/vfio0" == sysfs.device_cdev_path("00:02.0", b)
    assert edu.driver_override == "vfio-pci"


def test_iommu_groups_with_members_and_reserved_regions(default: System) -> None:
    groups = devices.iommu_groups(default.backend)
    assert [g.id for g in groups] == [0, 1, 2, 3]
    g3 = groups[3]
    assert g3.devices == (BRIDGE, E1000A, E1000B)
    assert g3.reserved_regions == (devices.ReservedRegion(0xFEE00000, 0xFEEFFFFF, "msi"),)
    assert g3.type in ("DMA", "DMA-FQ") and not g3.noiommu
    assert devices.iommu_group(3, default.backend) == g3
    with pytest.raises(VfioError):
        devices.iommu_group(42, default.backend)


def test_vfio_support_of_a_full_machine(default: System) -> None:
    s = kernel_support.vfio_support(default.backend)
    assert s.iommu_enabled and s.iommus == ("dmar0",) and s.group_count == 4
    assert s.modules == {"vfio": True, "vfio_pci": True, "vfio_iommu_type1": True, "iommufd": True}
    assert s.vfio_pci_driver and s.container_node and s.iommufd_node
    assert s.noiommu_mode is False
    # /dev/vfio/devices appears only once a device is bound
    assert not s.cdev_dir
    # nothing bound yet: /proc/devices has the vfio-dev region (and the
    # config says CONFIG_VFIO_DEVICE_CDEV=y)
    assert s.cdev_supported is True and "unconfirmed" not in s.interfaces
    assert s.legacy_usable and s.cdev_usable and s.usable
    assert "legacy container" in s.interfaces and s.as_dict()["usable"] is True
    default.backend.sysfs_write("/sys/bus/pci/devices/0000:00:02.0/driver_override", "vfio-pci")
    default.backend.sysfs_write("/sys/bus/pci/drivers_probe", "0000:00:02.0")
    s = kernel_support.vfio_support(default.backend)
    assert s.cdev_dir and s.cdev_supported is True


def test_vfio_support_of_a_machine_without_iommu_or_modules() -> None:
    system = System({"iommu": None, "modules": {"vfio": False, "iommufd": False},
                     "devices": [{"bdf": "00:02.0", "model": "edu"}]})
    s = kernel_support.vfio_support(system.backend)
    assert not s.iommu_enabled and s.group_count == 0 and not s.iommus
    assert not any(s.modules.values()) and not s.vfio_pci_driver
    assert not s.container_node and not s.iommufd_node
    # the kernel has CONFIG_VFIO_DEVICE_CDEV=y (the fake's default config):
    # vfio is just not loaded, so no interface is usable yet
    assert s.cdev_supported is True and s.kernel is not None
    assert s.kernel.module("vfio") == kernel_support.MODULE
    assert not s.usable and s.interfaces == "none"
    assert devices.pci_device("00:02.0", system.backend).iommu_group is None


def test_sriov_relations_and_noiommu_group_name(default: System) -> None:
    pf = "/sys/bus/pci/devices/0000:00:04.0"
    b = Overlay(default.backend, files={
        f"{pf}/sriov_totalvfs": "7", f"{pf}/sriov_numvfs": "2",
        "/sys/kernel/iommu_groups/0/name": "vfio-noiommu",
    }, links={
        f"{pf}/virtfn0": "../0000:00:04.1", f"{pf}/virtfn1": "../0000:00:04.2",
        "/sys/bus/pci/devices/0000:00:03.0/physfn": "../0000:00:04.0",
    })
    info = devices.pci_device("00:04.0", b)
    assert info.virtfns == ("0000:00:04.1", "0000:00:04.2")
    assert (info.sriov_totalvfs, info.sriov_numvfs) == (7, 2)
    vf = devices.pci_device("00:03.0", b)
    assert vf.physfn == "0000:00:04.0" and vf.is_vf
    assert devices.iommu_group(0, b).noiommu
    assert viability.explain_group(0, None, b).noiommu


def test_resource_parsing_of_64bit_prefetchable_and_io_bars() -> None:
    text = "\n".join([
        "0x00000000fe000000 0x00000000fe003fff 0x0000000000040200",
        "0x0000000000000000 0x0000000000000000 0x0000000000000000",
        "0x0000008000000000 0x00000080ffffffff 0x000000000014220c",
        "0x0000000000000000 0x0000000000000000 0x0000000000000000",
        "0x000000000000c000 0x000000000000c01f 0x0000000000040101",
        "0x0000000000000000 0x0000000000000000 0x0000000000000000",
        "0x00000000fe800000 0x00000000fe87ffff 0x0000000000046200",  # ROM: not a BAR
    ])
    bars = devices._parse_resource(text)
    assert [(b.index, b.size, b.kind, b.prefetchable) for b in bars] == [
        (0, 0x4000, "mem32", False), (2, 1 << 32, "mem64", True), (4, 0x20, "io", False)]


def test_class_names() -> None:
    assert sysfs.class_name(0x020000) == "Ethernet controller"
    assert sysfs.class_name(0x010802) == "Non-Volatile memory controller"
    assert sysfs.class_name(0x060400) == "PCI bridge"
    assert sysfs.class_name(0x028000) == "Network controller"
    assert sysfs.class_name(0x0B4000) == "Processor"
    assert sysfs.class_name(0x420000) == "Class 4200"


def test_driver_rule_follows_driver_managed_dma() -> None:
    for driver in (None, "vfio-pci", "pci-stub", "pcieport", "mlx5_vfio_pci", "virtio-vfio-pci"):
        assert viability.driver_keeps_group_viable(driver), driver
    for driver in ("nvme", "e1000", "vfio", "pci_pf_stub"):
        assert not viability.driver_keeps_group_viable(driver), driver


def test_explain_a_blocked_multi_device_group(default: System) -> None:
    why = viability.explain_group(3, E1000A, default.backend)
    assert not why.viable and why.device == E1000A
    assert [b.bdf for b in why.blockers] == [E1000A, E1000B]
    assert all(b.driver == "e1000" for b in why.blockers)
    assert "Ethernet controller 8086:100e" in why.blockers[0].reason
    assert [m.bdf for m in why.at_risk] == [BRIDGE, E1000B]
    assert why.at_risk[0].is_bridge and not why.at_risk[0].blocks
    text = why.message()
    assert "IOMMU group 3 (3 device(s)): NOT viable" in text
    assert "pyvfio bind --group 3" in text and "0000:01:02.0 (Ethernet controller 8086:100e), driver: e1000" in text
    assert why.summary().startswith("group 3 is not viable: ")
    data = why.as_dict()
    assert data["viable"] is False and [m["bdf"] for m in data["at_risk"]] == [BRIDGE, E1000B]
    # the whole group: every member shares the address space
    whole = viability.explain_group(3, None, default.backend)
    assert [m.bdf for m in whole.at_risk] == [BRIDGE, E1000A, E1000B]
    # a group of one: nothing else at risk
    alone = viability.explain_device("00:02.0", default.backend)
    assert alone.viable and alone.at_risk == () and alone.group == 0
    assert alone.summary() == "group 0 is viable"
    with pytest.raises(VfioError):
        viability.explain_group(99, None, default.backend)


def test_viability_blockers_keep_their_api() -> None:
    system = System("multi-group")
    blockers = viability.viability_blockers(1, system.backend)
    assert blockers == [viability.Blocker("0000:00:06.2", "e1000e")]
    assert blockers[0].reason.startswith("0000:00:06.2 (Ethernet controller 8086:10d3) is bound to "
                                         "the host driver 'e1000e'")
    assert "unbind it or bind it to vfio-pci" in blockers[0].reason


def test_not_viable_error_for_the_cdev_path(default: System) -> None:
    """What Device.bind should raise when VFIO_DEVICE_BIND_IOMMUFD fails with
    EPERM: the fake (like Linux 7.3) refuses the cdev bind of a device whose
    group still has a device on a host driver."""
    b = default.backend
    b.sysfs_write(f"/sys/bus/pci/devices/{E1000A}/driver_override", "vfio-pci")
    b.sysfs_write(f"/sys/bus/pci/drivers/e1000/unbind", E1000A)
    b.sysfs_write("/sys/bus/pci/drivers_probe", E1000A)
    with pyvfio.IommuFd(backend=b) as iommufd, pyvfio.Device.open(E1000A, backend=b) as dev:
        with pytest.raises(OSError) as exc:
            dev.bind(iommufd)
        assert exc.value.errno == errno.EPERM
        err = viability.explain_device(E1000A, b).error(
            ioctl="VFIO_DEVICE_BIND_IOMMUFD", target=dev.describe(), cause=exc.value)
    assert isinstance(err, NotViableError) and err.errno == errno.EPERM
    assert err.blockers == [(E1000B, err.blockers[0][1])]
    text = str(err)
    assert text.startswith(f"VFIO_DEVICE_BIND_IOMMUFD on device {E1000A}: device {E1000A} is in "
                           "IOMMU group 3")
    assert "0000:01:02.0 (Ethernet controller 8086:100e) is bound to the host driver 'e1000'" in text
    assert "reachable by the user's DMA" in text


def test_error_without_blockers_names_another_owner(default: System) -> None:
    err = viability.explain_device("00:02.0", default.backend).error(ioctl="VFIO_GROUP_SET_CONTAINER")
    assert "another process or iommufd owns the group" in str(err)
    assert err.blockers == []


# -- topology capture and replay ------------------------------------------------------------
GUEST_TOPOLOGY = Path(__file__).resolve().parent / "fixtures" / "qemu-guest-topology.json"


@pytest.mark.parametrize("name", ["default", "minimal", "multi-group"])
def test_a_topology_dumped_from_the_fake_round_trips(name: str) -> None:
    original = System(name)
    captured = capture(original.backend, name=name)
    assert replay_check(captured) == []
    replay = System(captured)
    assert capture(replay.backend, name=name) == captured
    assert {b: d.driver for b, d in replay.devices.items()} == \
        {b: d.driver for b, d in original.devices.items()}
    assert {g: [d.bdf for d in grp.devices] for g, grp in replay.groups.items()} == \
        {g: [d.bdf for d in grp.devices] for g, grp in original.groups.items()}
    assert json.loads(to_json(captured)) == captured


def test_capture_keeps_the_original_driver_of_a_bound_device() -> None:
    system = System("default")
    binding.bind("00:03.0", backend=system.backend)
    captured = capture(system.backend)
    nvme = next(d for d in captured["devices"] if d["bdf"] == "0000:00:03.0")
    assert (nvme["driver"], nvme["default_driver"]) == ("vfio-pci", "nvme")
    replay = System(captured)
    binding.restore("00:03.0", backend=replay.backend, state=binding.BindingState())
    assert replay.device("00:03.0").driver == "nvme"


SRIOV_HOST = {"devices": [
    {"bdf": "00:1c.0", "model": "pcie-root-port", "bridge": {"secondary_bus": 3}},
    {"bdf": "03:00.0", "model": "generic", "vendor": "0x8086", "device": "0x1572",
     "class": "0x020000", "driver": "i40e", "sriov_totalvfs": 64},
    {"bdf": "03:02.0", "model": "generic", "vendor": "0x8086", "device": "0x154c",
     "class": "0x020000", "driver": "iavf", "physfn": "03:00.0"},
    {"bdf": "03:02.1", "model": "generic", "vendor": "0x8086", "device": "0x154c",
     "class": "0x020000", "physfn": "03:00.0"},
]}


def test_capture_and_replay_keep_sriov_relations() -> None:
    pf, vfs = "0000:03:00.0", ("0000:03:02.0", "0000:03:02.1")
    original = System(SRIOV_HOST)
    captured = capture(original.backend)
    specs = {d["bdf"]: d for d in captured["devices"]}
    assert (specs[pf]["sriov_totalvfs"], specs[pf]["sriov_numvfs"]) == (64, 2)
    assert [specs[v]["physfn"] for v in vfs] == [pf, pf]
    assert "physfn" not in specs[pf] and "sriov_totalvfs" not in specs[vfs[0]]
    assert replay_check(captured) == []
    replay = System(json.loads(to_json(captured)))
    info = devices.pci_device(pf, replay.backend)
    assert (info.sriov_totalvfs, info.sriov_numvfs, info.virtfns) == (64, 2, vfs)
    assert devices.pci_device(vfs[1], replay.backend).physfn == pf
    assert capture(replay.backend) == captured


def test_capture_of_a_host_sysfs_with_sriov(default: System) -> None:
    # SR-IOV attributes as a real kernel shows them, over the fake's /sys
    pf = "/sys/bus/pci/devices/0000:00:04.0"
    b = Overlay(default.backend, files={f"{pf}/sriov_totalvfs": "7", f"{pf}/sriov_numvfs": "1"},
                links={f"{pf}/virtfn0": "../0000:00:03.0",
                       "/sys/bus/pci/devices/0000:00:03.0/physfn": "../0000:00:04.0"})
    captured = capture(b)  # type: ignore[arg-type]
    specs = {d["bdf"]: d for d in captured["devices"]}
    assert (specs["0000:00:04.0"]["sriov_totalvfs"], specs["0000:00:04.0"]["sriov_numvfs"]) == (7, 1)
    assert specs["0000:00:03.0"]["physfn"] == "0000:00:04.0"
    assert replay_check(captured) == []
    replay = System(captured)
    assert replay.backend.sysfs_readlink("/sys/bus/pci/devices/0000:00:04.0/virtfn0") == \
        "../0000:00:03.0"


def test_capture_keeps_the_kernel_build() -> None:
    from pyvfio.fake.machine.topology import load
    from pyvfio.setup.environment import check_environment

    topo = load({"devices": [{"bdf": "00:02.0", "model": "edu"}],
                 "modules": {"vfio_pci": False},
                 "kernel": {"release": "6.8.0-41-generic", "modules_dir": False,
                            "config": {"CONFIG_IOMMUFD": "n", "CONFIG_VFIO_IOMMU_TYPE1": "y"}}})
    system = System(topo)
    system.sysfs.kernel = topo["kernel"]
    captured = capture(system.backend)
    kernel = captured["kernel"]
    assert kernel["release"] == "6.8.0-41-generic" and kernel["modules_dir"] is False
    assert kernel["config"]["CONFIG_IOMMUFD"] == "n"
    assert kernel["config"]["CONFIG_VFIO_IOMMU_TYPE1"] == "y"
    assert "Linux 6.8.0-41-generic" in captured["description"]
    assert replay_check(captured) == []
    replay_topo = load(captured)
    replay = System(replay_topo)
    replay.sysfs.kernel = replay_topo["kernel"]

    def fixes(b: object) -> dict[str, str]:
        return {c.name: c.fix for c in check_environment(b)}  # type: ignore[arg-type]

    assert fixes(replay.backend) == fixes(system.backend)
    assert "built without CONFIG_IOMMUFD" in fixes(replay.backend)["module iommufd"]
    assert fixes(replay.backend)["module vfio_pci"].startswith("CONFIG_VFIO_PCI=m, but")


def test_capture_of_a_machine_without_iommu() -> None:
    system = System({"iommu": None, "devices": [{"bdf": "00:02.0", "model": "edu"}]})
    captured = capture(system.backend)
    assert captured["iommu"] is None and "groups" not in captured
    assert replay_check(captured) == []


def test_the_captured_guest_topology_replays() -> None:
    """tests/fixtures/qemu-guest-topology.json: `pyvfio topology dump` run in
    the test VM (tests/vm/README.md lists its devices)."""
    topo = json.loads(GUEST_TOPOLOGY.read_text())
    assert replay_check(topo) == []
    system = System.from_file(GUEST_TOPOLOGY)
    b = system.backend
    groups = {g.id: g.devices for g in devices.iommu_groups(b)}
    assert len(groups) == 12
    assert groups[7] == ("0000:00:1f.0", "0000:00:1f.2", "0000:00:1f.3")
    assert groups[8] == ("0000:01:00.0",) and groups[9] == ("0000:02:00.0",)
    assert groups[11] == ("0000:04:00.0", "0000:05:01.0", "0000:05:02.0")
    drivers = {d.bdf: d.driver for d in devices.pci_devices(b)}
    assert drivers["0000:01:00.0"] is None and drivers["0000:02:00.0"] == "nvme"
    assert drivers["0000:03:00.0"] == "e1000e" and drivers["0000:00:10.0"] == "pcieport"
    assert drivers["0000:05:01.0"] == drivers["0000:05:02.0"] == "e1000"
    assert drivers["0000:00:02.0"] == "virtio-pci" and drivers["0000:00:1f.2"] == "ahci"
    edu = devices.pci_device("01:00.0", b)
    assert edu.id == "1234:11e8" and edu.parent == "0000:00:10.0"
    assert type(system.device("01:00.0").model).__name__ == "EduDevice"
    why = viability.explain_group(11, "0000:05:01.0", b)
    assert [x.bdf for x in why.blockers] == ["0000:05:01.0", "0000:05:02.0"]
    # the replay captures back to the same devices and groups
    again = capture(b, name="qemu-guest")

    def without_resets(devices: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in d.items() if k != "reset_methods"} for d in devices]

    assert without_resets(again["devices"]) == without_resets(topo["devices"])
    assert again["groups"] == topo["groups"]
    # reset methods: the guest's kernel listed what probed fine when each
    # device was added (05:01.0 before its sibling 05:02.0 existed, the
    # bridge 04:00.0 before its bus was scanned); the fake lists what works
    # now, as vfio-pci decides VFIO_DEVICE_FLAGS_RESET
    resets = {d["bdf"]: d["reset_methods"] for d in again["devices"]}
    for d in topo["devices"]:
        assert set(resets[d["bdf"]]) <= set(d["reset_methods"])
    assert resets["0000:05:01.0"] == [] and "bus" not in resets["0000:04:00.0"]
    assert resets["0000:01:00.0"] == ["bus"] and resets["0000:02:00.0"] == ["flr", "bus"]
    assert (again["iommu"]["name"], again["iommu"]["hw_info_type"]) == ("dmar0", "intel_vtd")
    assert again["iommu"]["reserved_regions"] == topo["iommu"]["reserved_regions"]
    assert again["host"] == topo["host"]
    # binding works on it as on the guest
    results = binding.bind_group(11, backend=b, state=binding.BindingState())
    assert [r.driver for r in results] == ["vfio-pci", "vfio-pci"]
    # and refuses the device that serves the guest's root file system
    with pytest.raises(binding.DeviceInUseError) as exc:
        binding.bind("00:02.0", backend=b, state=binding.BindingState())
    assert "9p file system 'hostroot' is mounted on /" in str(exc.value)
    assert drivers["0000:00:02.0"] == sysfs.device_driver("00:02.0", b) == "virtio-pci"


# -- what the host uses, captured and replayed -------------------------------------------------
NVME, E1000E = "0000:00:03.0", "0000:00:04.0"
USED_HOST: dict[str, Any] = {
    "block": [{"device": NVME, "name": "nvme0n1", "dev": "259:0",
               "partitions": [{"name": "nvme0n1p1", "dev": "259:1"},
                              {"name": "nvme0n1p2", "dev": "259:2"}],
               "holders": [{"name": "dm-0", "dev": "253:0", "of": "nvme0n1p2",
                            "dm_name": "vg-root"}]}],
    "net": [{"device": E1000E, "name": "eth0", "up": True, "routes": 2}],
    "virtio_fs": [],
    "mounts": [{"source": "/dev/mapper/vg-root", "target": "/", "fstype": "ext4",
                "dev": "253:0"},
               {"source": "/dev/nvme0n1p1", "target": "/boot/efi x", "fstype": "vfat",
                "dev": "259:1"}],
    "swaps": ["/dev/nvme0n1p2"],
}


def used_machine() -> System:
    topo = System("default").to_topology()
    topo["host"] = USED_HOST
    return System(topo)


def test_a_topology_says_what_the_host_uses() -> None:
    system = used_machine()
    b = system.backend
    assert [u.what for u in binding.device_users(NVME, b)] == [
        "/dev/mapper/vg-root (nvme0n1) is mounted on /",
        "/dev/nvme0n1p1 (nvme0n1) is mounted on /boot/efi x",
        "/dev/nvme0n1p2 (nvme0n1) is active swap"]
    assert [u.what for u in binding.device_users(E1000E, b)] == \
        ["network interface eth0 is up with 2 route(s)"]
    assert binding.device_users("0000:00:02.0", b) == []
    # served as the kernel shows them
    assert b.sysfs_readlink("/sys/block/nvme0n1") == \
        "../devices/pci0000:00/0000:00:03.0/block/nvme0n1"
    assert b.sysfs_read("/sys/block/nvme0n1/nvme0n1p2/partition").strip() == "2"
    assert b.sysfs_listdir("/sys/block/nvme0n1/nvme0n1p2/holders") == ["dm-0"]
    assert b.sysfs_read("/sys/block/dm-0/dm/name").strip() == "vg-root"
    assert "/boot/efi\\040x" in b.sysfs_read("/proc/self/mountinfo")
    assert b.sysfs_listdir("/sys/class/net") == ["eth0"]
    state = binding.BindingState()
    for bdf in (NVME, E1000E):
        with pytest.raises(binding.DeviceInUseError) as exc:
            binding.bind(bdf, backend=b, state=state)
        assert exc.value.errno == errno.EBUSY and exc.value.usages
    assert state.records() == []
    # forced away from its driver, the disk and the interface go (the
    # mounts stay listed, as the kernel keeps a dead disk's mounts)
    binding.bind(NVME, force=True, backend=b, state=state)
    binding.bind(E1000E, force=True, backend=b, state=state)
    assert b.sysfs_listdir("/sys/block") == []
    assert binding.device_users(NVME, b) == [] and binding.device_users(E1000E, b) == []
    assert "vg-root" in b.sysfs_read("/proc/self/mountinfo")
    binding.restore(NVME, backend=b, state=state)
    assert b.sysfs_listdir("/sys/block") == ["dm-0", "nvme0n1"]


def test_capture_keeps_what_the_host_uses() -> None:
    captured = capture(used_machine().backend, name="used")
    assert captured["host"] == USED_HOST
    assert replay_check(captured) == []
    replay = System(json.loads(to_json(captured)))
    assert capture(replay.backend, name="used") == captured
    assert [u.kind for u in binding.device_users(NVME, replay.backend)] == \
        ["mount", "mount", "swap"]
    # a machine that uses nothing has no host section
    assert "host" not in capture(System("default").backend)
    # mount points with the characters mountinfo escapes survive the trip
    odd = json.loads(json.dumps(USED_HOST))
    odd["mounts"][1]["target"] = "/mnt/a b\tc\nd\\e"
    topo = System("default").to_topology()
    topo["host"] = odd
    assert capture(System(topo).backend)["host"] == odd


def test_replay_check_compares_the_host_use(monkeypatch: pytest.MonkeyPatch) -> None:
    from pyvfio.fake.machine import procfs

    captured = capture(used_machine().backend)
    # a fake that served no /proc files would lose the mounts and swaps
    monkeypatch.setattr(procfs, "host_proc", lambda fs: {})
    problems = replay_check(captured)
    assert any(p.startswith("host mounts: [] on the fake") for p in problems)
    assert any(p.startswith("host swaps: [] on the fake") for p in problems)


@pytest.mark.parametrize("change,message", [
    (lambda h: h["block"][0].update(device="0000:09:00.0"), "0000:09:00.0 is not in devices"),
    (lambda h: h["block"][0].update(device="0000:00:02.0"), "starts without a driver"),
    (lambda h: h["block"][0].update(dev="259"), "not a device number"),
    (lambda h: h["block"][0]["partitions"][0].update(name="sda1"), "does not start with"),
    (lambda h: h["block"][0]["holders"][0].update(of="sdb"), "holders[0].of"),
    (lambda h: h["block"][0]["holders"][0].update(name="nvme0n1p1"), "named twice"),
    (lambda h: h["net"][0].update(name="eth0/x"), "not a device name"),
    (lambda h: h["net"][0].update(up="yes"), "not true or false"),
    (lambda h: h["mounts"][0].update(fstype="ext 4"), "not a file system type"),
    (lambda h: h.update(swaps=["/dev/a b"]), "white space"),
    (lambda h: h.update(disks=[]), "unknown key"),
])
def test_a_bad_host_section_is_refused(change: Any, message: str) -> None:
    from pyvfio.fake.machine.topology import TopologyError

    topo = System("default").to_topology()
    topo["host"] = json.loads(json.dumps(USED_HOST))
    change(topo["host"])
    with pytest.raises(TopologyError, match=message.replace("[", r"\[").replace("]", r"\]")):
        System(topo)


def test_find_devices_by_ids_and_class() -> None:
    from pyvfio.fake import System

    b = System("default").backend
    assert devices.find_devices(0x8086, 0x100E, backend=b) == ["0000:01:01.0", "0000:01:02.0"]
    assert devices.find_devices(0x8086, backend=b) == ["0000:00:04.0", "0000:01:01.0",
                                                     "0000:01:02.0"]
    assert devices.find_devices(class_code=0x010802, backend=b) == ["0000:00:03.0"]  # NVMe
    assert devices.find_devices(0x1234, 0xFFFF, backend=b) == []
    assert devices.find_devices(backend=b) == [d.bdf for d in devices.pci_devices(b)]
