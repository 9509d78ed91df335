"""Device setup on the real kernel: discovery, binding with the host-use
checks, viability explained, the command and topology capture."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import guestpci
import pytest

import pyvfio
from pyvfio import Container, Group, IommuFd
from pyvfio.core import sysfs, viability
from pyvfio.setup import binding, cli, devices, kernel_support
from pyvfio.setup.binding import BindError, BindingState, DeviceInUseError
from pyvfio.setup.capture import capture, replay_check

pytestmark = pytest.mark.kernel


@pytest.fixture
def state(tmp_path: Path) -> Iterator[BindingState]:
    """A private state file; every device it recorded is restored after."""
    st = BindingState(str(tmp_path / "bindings.json"))
    yield st
    for rec in st.records():
        binding.restore(rec.bdf, force=True, state=st)


def _bdf(ids: tuple[int, int]) -> str:
    return guestpci.find_one(*ids)


def test_discovery_matches_the_guest() -> None:
    edu = devices.pci_device(_bdf(guestpci.EDU))
    assert edu.id == "1234:11e8" and edu.driver is None and edu.iommu_group is not None
    assert edu.class_name == "Unclassified device" and edu.bars[0].size == 1 << 20
    assert edu.parent is not None and devices.pci_device(edu.parent).is_bridge
    nvme = devices.pci_device(_bdf(guestpci.NVME))
    assert nvme.driver == "nvme" and "flr" in nvme.reset_methods
    group = devices.iommu_group(edu.iommu_group)
    assert group.devices == (edu.bdf,)
    assert devices.ReservedRegion(*guestpci.msi_window(), "msi") in group.reserved_regions
    assert group.type in ("DMA", "DMA-FQ")
    support = kernel_support.vfio_support()
    assert support.iommu_enabled
    assert any(name.startswith(guestpci.iommu_class_prefix()) for name in support.iommus)
    assert support.vfio_pci_driver and support.container_node and support.iommufd_node
    # CONFIG_VFIO_DEVICE_CDEV: /sys/class/vfio-dev exists from boot
    assert support.cdev_supported is True and support.cdev_usable and support.legacy_usable
    assert all(support.modules.values())


def test_discovery_of_the_bridge_group() -> None:
    e1000s = guestpci.bridge_group_or_skip()
    group = devices.iommu_group(guestpci.device_info(e1000s[0]).group)  # type: ignore[arg-type]
    if guestpci.bridge_group_of_three():
        assert set(e1000s) < set(group.devices) and len(group.devices) == 3
    else:
        assert e1000s[0] in group.devices
    assert devices.ReservedRegion(*guestpci.msi_window(), "msi") in group.reserved_regions


def test_bind_and_restore(state: BindingState) -> None:
    edu, nvme = _bdf(guestpci.EDU), _bdf(guestpci.NVME)
    res = binding.bind(edu, state=state)
    assert (res.previous_driver, res.driver) == (None, "vfio-pci")
    assert f"/dev/vfio/{res.group}" in res.nodes
    assert any(n.startswith("/dev/vfio/devices/vfio") for n in res.nodes)
    assert all(os.path.exists(n) for n in res.nodes)
    assert kernel_support.vfio_support().cdev_dir
    back = binding.restore(edu, state=state)
    assert back.driver is None and guestpci.device_info(edu).driver is None
    assert devices.pci_device(edu).driver_override is None
    res = binding.bind(nvme, state=state)
    assert (res.previous_driver, res.driver) == ("nvme", "vfio-pci")
    assert binding.restore(nvme, state=state).driver == "nvme"
    assert state.records() == []


def test_unbind_keeps_the_device_driverless(state: BindingState) -> None:
    e1000e = _bdf(guestpci.E1000E)
    assert binding.unbind(e1000e, state=state).driver is None
    with open("/sys/bus/pci/drivers_probe", "w") as f:
        f.write(e1000e)
    assert guestpci.device_info(e1000e).driver is None
    assert binding.restore(e1000e, state=state).driver == "e1000e"


@pytest.mark.skipif(guestpci.guest_iommu().startswith("smmuv3"),
                    reason="the arm64 guest's / is a tmpfs holding an arm64 user space; "
                           "the host's 9p root is mounted elsewhere")
def test_the_root_file_system_is_never_unbound(state: BindingState) -> None:
    # the guest's / is 9p over a virtio-pci device
    scan = binding.UsageScan()
    root = [d.bdf for d in devices.pci_devices()
            if any(u.what.endswith("is mounted on /") for u in scan.for_device(d.bdf))]
    assert len(root) == 1
    with pytest.raises(DeviceInUseError) as exc:
        binding.bind(root[0], state=state)
    assert "9p file system 'hostroot' is mounted on /" in str(exc.value)
    assert guestpci.device_info(root[0]).driver == "virtio-pci" and state.records() == []


@pytest.mark.skipif(shutil.which("mkfs.ext4") is None, reason="needs mkfs.ext4")
def test_a_mounted_disk_is_not_unbound(state: BindingState, tmp_path: Path) -> None:
    nvme = _bdf(guestpci.NVME)
    disk = next(n for n in os.listdir("/sys/block") if n.startswith("nvme"))
    subprocess.run(["mkfs.ext4", "-q", "-F", f"/dev/{disk}"], check=True)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", f"/dev/{disk}", str(mnt)], check=True)
    try:
        users = binding.device_users(nvme)
        assert [u.what for u in users] == [f"/dev/{disk} ({disk}) is mounted on {mnt}"]
        with pytest.raises(DeviceInUseError):
            binding.bind(nvme, state=state)
        assert cli.main(["bind", nvme, "--state", str(state.path)]) == cli.EXIT_IN_USE
        assert guestpci.device_info(nvme).driver == "nvme"
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    assert binding.device_users(nvme) == []


@pytest.mark.skipif(shutil.which("ip") is None, reason="needs ip(8)")
def test_an_interface_that_is_up_is_not_unbound(state: BindingState) -> None:
    e1000e = _bdf(guestpci.E1000E)
    iface = os.listdir(f"/sys/bus/pci/devices/{e1000e}/net")[0]
    subprocess.run(["ip", "link", "set", iface, "up"], check=True)
    try:
        users = binding.device_users(e1000e)
        assert users and users[0].what.startswith(f"network interface {iface} is up")
        with pytest.raises(DeviceInUseError):
            binding.bind(e1000e, state=state)
    finally:
        subprocess.run(["ip", "link", "set", iface, "down"], check=True)
    assert binding.device_users(e1000e) == []


def test_open_vfio_files_are_found(state: BindingState) -> None:
    edu = _bdf(guestpci.EDU)
    res = binding.bind(edu, state=state)
    with Group(res.group) as g:  # type: ignore[arg-type]
        users = binding.device_users(edu)
        assert [u.kind for u in users] == ["vfio-group"]
        assert users[0].what == f"process {os.getpid()} (python3) has {g.path} open" \
            or users[0].what.startswith(f"process {os.getpid()} (")
        # a held group does not stop unbinding from vfio-pci (edu had no driver)
    with IommuFd() as iommufd, pyvfio.Device.open(edu) as dev:
        dev.bind(iommufd)
        users = binding.device_users(edu)
        assert [u.kind for u in users] == ["vfio"] and str(dev.path) in users[0].what
        with pytest.raises(DeviceInUseError):  # the kernel's unbind would wait for us
            binding.restore(edu, state=state)
        assert guestpci.device_info(edu).driver == "vfio-pci"
    assert binding.restore(edu, state=state).driver is None


@pytest.mark.skipif(not guestpci.bridge_group_of_three(), reason=guestpci.SPLIT_BRIDGE_GROUP)
def test_groups_and_a_user_owned_group(state: BindingState) -> None:
    """Measured on Linux 7.3: a kernel driver cannot take a device of a
    user-owned group (bind: EBUSY, drivers_probe: EINVAL); restore says so,
    leaves the device driver-less and keeps the record."""
    e1000a, e1000b = guestpci.bridge_group_or_skip()
    gid = sysfs.device_group(e1000a)
    why = viability.explain_group(gid, e1000a)
    assert not why.viable and {b.bdf for b in why.blockers} == {e1000a, e1000b}
    assert len(why.at_risk) == 2 and any(m.is_bridge for m in why.at_risk)
    results = binding.bind_group(gid, state=state)
    assert [r.bdf for r in results] == [e1000a, e1000b]
    assert viability.explain_group(gid).viable
    with Container() as c, Group(gid) as g:
        g.set_container(c)
        with pytest.raises(DeviceInUseError) as refused:
            binding.restore(e1000a, state=state)
        assert f"has {g.path} open" in str(refused.value)
        assert guestpci.device_info(e1000a).driver == "vfio-pci"
        with pytest.raises(BindError) as exc:
            binding.restore(e1000a, force=True, state=state)
        assert exc.value.errno in (errno.EBUSY, errno.EINVAL)
        assert "may be owned by user space" in str(exc.value)
        assert guestpci.device_info(e1000a).driver is None and state.get(e1000a) is not None
    assert [r.driver for r in binding.restore_group(gid, state=state)] == ["e1000", "e1000"]


@pytest.mark.skipif(not guestpci.bridge_group_of_three(), reason=guestpci.SPLIT_BRIDGE_GROUP)
def test_cdev_bind_of_a_shared_group_fails_with_eperm(state: BindingState) -> None:
    """VFIO_DEVICE_BIND_IOMMUFD on a device whose group has another device on
    a host driver: EPERM; explain_device says why."""
    e1000a, e1000b = guestpci.bridge_group_or_skip()
    binding.bind(e1000a, state=state)
    with IommuFd() as iommufd, pyvfio.Device.open(e1000a) as dev:
        with pytest.raises(OSError) as exc:
            dev.bind(iommufd)
        assert exc.value.errno == errno.EPERM
        err = viability.explain_device(e1000a).error(ioctl="VFIO_DEVICE_BIND_IOMMUFD",
                                                 target=dev.describe())
    assert [bdf for bdf, _ in err.blockers] == [e1000b]
    assert f"{e1000b} (Ethernet controller 8086:100e) is bound to the host driver 'e1000'" \
        in str(err)


@pytest.mark.skipif(not guestpci.bridge_group_of_three(), reason=guestpci.SPLIT_BRIDGE_GROUP)
def test_the_command_on_the_guest(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert cli.main(["status", "--json"]) == cli.EXIT_OK
    data = json.loads(capsys.readouterr().out)
    assert data["system"] == {"kind": "kernel", "fake_topology": None, "fallback": False}
    assert data["support"]["iommu_enabled"] and len(data["groups"]) >= 12
    assert cli.main(["status"]) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert out.startswith("System: this machine (kernel backend)")
    assert "9p file system 'hostroot' is mounted on /" in out and "FAKE" not in out
    assert cli.main(["doctor"]) == cli.EXIT_OK
    assert "OK      cdev" in capsys.readouterr().out
    path = tmp_path / "guest.json"
    assert cli.main(["topology", "dump", "-o", str(path)]) == cli.EXIT_OK
    topo = json.loads(path.read_text())
    assert replay_check(topo) == []
    groups = {g.id: list(g.devices) for g in devices.iommu_groups()}
    captured = {g["id"]: g["devices"] for g in topo["groups"]}
    # the capture gives each PCI function the kernel left out of every
    # group (the virtio-iommu's own function) a group of its own
    ungrouped = [d.bdf for d in devices.pci_devices() if d.iommu_group is None]
    assert {k: v for k, v in captured.items() if k not in groups} == \
        {k: [bdf] for k, bdf in zip(sorted(set(captured) - set(groups)), ungrouped)}
    assert {k: v for k, v in captured.items() if k in groups} == groups
    assert topo["iommu"]["hw_info_type"] == guestpci.hw_info_type().lower()
    assert topo == capture(name=topo["name"]) | {"description": topo["description"]}
