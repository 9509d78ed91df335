"""Binding (pyvfio.setup.binding) on the fake kernel: bind, unbind, restore,
whole groups, the host-use checks and the state file."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from fixtures.sysfs_overlay import Overlay

from pyvfio import Container, Group
from pyvfio.backend.kernel import KernelBackend
from pyvfio.core import sysfs, viability
from pyvfio.fake import System
from pyvfio.setup import binding
from pyvfio.setup.binding import BindError, BindingState, DeviceInUseError

EDU, NVME, E1000E = "0000:00:02.0", "0000:00:03.0", "0000:00:04.0"
BRIDGE, E1000A, E1000B = "0000:00:05.0", "0000:01:01.0", "0000:01:02.0"
NVME_PATH = "../devices/pci0000:00/0000:00:03.0/nvme/nvme0/nvme0n1"
NET_PATH = "../../devices/pci0000:00/0000:00:04.0/net/eth0"


@pytest.fixture
def system() -> System:
    return System("default")


def driver(system: System, bdf: str) -> str | None:
    return sysfs.device_driver(bdf, system.backend)


def override(system: System, bdf: str) -> str:
    return system.backend.sysfs_read(f"/sys/bus/pci/devices/{bdf}/driver_override")


def test_bind_and_restore_a_driverless_device(system: System) -> None:
    st = BindingState()
    res = binding.bind("00:02.0", backend=system.backend, state=st)
    assert (res.bdf, res.previous_driver, res.driver, res.changed, res.group) == \
        (EDU, None, "vfio-pci", True, 0)
    assert res.nodes == ["/dev/vfio/0", "/dev/vfio/devices/vfio0"]
    assert res.original is not None and res.original.driver is None
    assert str(res).startswith("0000:00:02.0: no driver -> vfio-pci (IOMMU group 0): /dev/vfio/0")
    again = binding.bind(EDU, backend=system.backend, state=st)
    assert not again.changed and "already on vfio-pci" in str(again)
    back = binding.restore(EDU, backend=system.backend, state=st)
    assert (back.previous_driver, back.driver, back.changed) == ("vfio-pci", None, True)
    assert driver(system, EDU) is None and override(system, EDU) == "(null)"
    assert st.records() == []
    assert not system.backend.exists("/dev/vfio/0")


def test_bind_a_kernel_driven_device_and_restore_it(system: System) -> None:
    res = binding.bind(NVME, backend=system.backend)
    assert (res.previous_driver, res.driver) == ("nvme", "vfio-pci")
    assert BindingState.default(system.backend).get(NVME).driver == "nvme"  # type: ignore[union-attr]
    back = binding.restore(res, backend=system.backend)
    assert back.driver == "nvme" and driver(system, NVME) == "nvme"
    assert override(system, NVME) == "(null)"
    assert BindingState.default(system.backend).records() == []


def test_bind_to_another_driver_and_the_default_state_is_per_backend(system: System) -> None:
    res = binding.bind(EDU, "pci-stub", backend=system.backend)
    assert res.driver == "pci-stub" and res.nodes == []
    other = System("default")
    assert BindingState.default(other.backend).records() == []
    assert [r.bdf for r in BindingState.default(system.backend).records()] == [EDU]
    binding.restore(EDU, backend=system.backend)
    assert driver(system, EDU) is None


def test_refusals_change_nothing(system: System) -> None:
    st = BindingState()
    with pytest.raises(BindError) as exc:
        binding.bind(BRIDGE, backend=system.backend, state=st)
    assert exc.value.errno == errno.EINVAL and "does not drive bridges" in str(exc.value)
    with pytest.raises(BindError) as exc:
        binding.bind(NVME, "no-such-driver", backend=system.backend, state=st)
    assert exc.value.errno == errno.ENODEV and "modprobe no_such_driver" in str(exc.value)
    with pytest.raises(BindError) as exc:
        binding.bind("0000:00:09.0", backend=system.backend, state=st)
    assert exc.value.errno == errno.ENODEV
    assert st.records() == [] and driver(system, NVME) == "nvme"


def test_no_iommu_group_no_vfio() -> None:
    system = System({"iommu": None, "devices": [{"bdf": "00:02.0", "model": "edu"}]})
    with pytest.raises(BindError) as exc:
        binding.bind(EDU, backend=system.backend)
    assert "needs an active IOMMU" in str(exc.value)


def test_unbind_keeps_the_device_driverless_until_restored(system: System) -> None:
    res = binding.unbind(E1000E, backend=system.backend)
    assert (res.previous_driver, res.driver, res.changed) == ("e1000e", None, True)
    assert override(system, E1000E) == "none"
    # a probe (a rescan, a module load) does not bring a driver back
    system.backend.sysfs_write("/sys/bus/pci/drivers_probe", E1000E)
    assert driver(system, E1000E) is None
    assert not binding.unbind(E1000E, backend=system.backend).changed
    # a driver-less device keeps its group viable
    assert viability.explain_device(E1000E, system.backend).viable
    back = binding.restore(E1000E, backend=system.backend)
    assert back.driver == "e1000e" and override(system, E1000E) == "(null)"


def test_bind_after_unbind_keeps_the_first_original(system: System) -> None:
    st = BindingState()
    binding.unbind(NVME, backend=system.backend, state=st)
    binding.bind(NVME, backend=system.backend, state=st)
    assert st.get(NVME).driver == "nvme"  # type: ignore[union-attr]
    assert binding.restore(NVME, backend=system.backend, state=st).driver == "nvme"


def test_restore_without_a_record_lets_the_kernel_choose(system: System) -> None:
    b = system.backend
    b.sysfs_write(f"/sys/bus/pci/devices/{NVME}/driver_override", "vfio-pci")
    b.sysfs_write("/sys/bus/pci/drivers/nvme/unbind", NVME)
    b.sysfs_write("/sys/bus/pci/drivers_probe", NVME)
    res = binding.restore(NVME, backend=b, state=BindingState())
    assert res.driver == "nvme" and "the kernel chose nvme" in res.notes[0]
    untouched = binding.restore(E1000E, backend=b, state=BindingState())
    assert not untouched.changed and untouched.driver == "e1000e"


def test_restore_all(system: System) -> None:
    st = BindingState()
    binding.bind(EDU, backend=system.backend, state=st)
    binding.bind(NVME, backend=system.backend, state=st)
    results = binding.restore_all(backend=system.backend, state=st)
    assert [(r.bdf, r.driver) for r in results] == [(EDU, None), (NVME, "nvme")]
    assert st.records() == []


def test_bind_group_and_restore_group(system: System) -> None:
    st = BindingState()
    assert not viability.explain_group(3, None, system.backend).viable
    results = binding.bind_group(3, backend=system.backend, state=st)
    assert [(r.bdf, r.previous_driver, r.driver) for r in results] == \
        [(E1000A, "e1000", "vfio-pci"), (E1000B, "e1000", "vfio-pci")]
    assert driver(system, BRIDGE) is None  # bridges are left alone
    assert viability.explain_group(3, None, system.backend).viable
    back = binding.restore_group(3, backend=system.backend, state=st)
    assert [r.driver for r in back] == ["e1000", "e1000"] and st.records() == []


def test_bind_one_device_of_a_shared_group_warns(system: System) -> None:
    res = binding.bind(E1000A, backend=system.backend, state=BindingState())
    assert res.notes and res.notes[0].startswith("group 3 is not viable: 0000:01:02.0")
    res = binding.bind(E1000B, backend=system.backend, state=BindingState())
    assert res.notes == ["group 3 has 2 other device(s) that share its I/O address space: "
                         "0000:00:05.0 (no driver), 0000:01:01.0 (vfio-pci)"]


def test_unbind_group(system: System) -> None:
    results = binding.unbind_group(3, backend=system.backend, state=BindingState())
    assert [r.bdf for r in results] == [E1000A, E1000B]
    assert viability.explain_group(3, None, system.backend).viable


def test_a_kernel_driver_cannot_take_back_a_device_of_a_user_owned_group(system: System) -> None:
    """Linux 7.3 (measured in the test VM): while a user owns the group,
    bind fails with EBUSY and drivers_probe with EINVAL; the device stays
    driver-less and the record is kept for a retry."""
    b = system.backend
    st = BindingState()
    binding.bind_group(3, backend=b, state=st)
    with Container(backend=b) as c, Group(3, backend=b) as g:
        g.set_container(c)
        with pytest.raises(BindError) as exc:
            binding.restore(E1000A, backend=b, state=st)
        text = str(exc.value)
        assert exc.value.errno in (errno.EBUSY, errno.EINVAL)
        assert "e1000 did not take 0000:01:01.0 back" in text and "now on no driver" in text
        assert "IOMMU group 3 may be owned by user space" in text and "the record is kept" in text
        assert driver(system, E1000A) is None and st.get(E1000A) is not None
    assert binding.restore(E1000A, backend=b, state=st).driver == "e1000"
    binding.restore(E1000B, backend=b, state=st)


def test_a_failed_group_bind_rolls_back(system: System) -> None:
    st = BindingState()
    real_bind = binding.bind
    calls = []

    def flaky(bdf: str, *args: object, **kwargs: object) -> binding.Binding:
        calls.append(bdf)
        if bdf == E1000B:
            raise BindError(errno.EIO, "simulated failure")
        return real_bind(bdf, *args, **kwargs)  # type: ignore[arg-type]

    binding.bind = flaky  # type: ignore[assignment]
    try:
        with pytest.raises(BindError):
            binding.bind_group(3, backend=system.backend, state=st)
    finally:
        binding.bind = real_bind  # type: ignore[assignment]
    assert calls == [E1000A, E1000B]
    assert driver(system, E1000A) == "e1000" and st.records() == []


# -- host use ----------------------------------------------------------------------------
def mounted(system: System, mountinfo: str, **extra: str) -> Overlay:
    files = {
        "/proc/self/mountinfo": mountinfo,
        "/sys/block/nvme0n1/dev": "259:0",
        "/sys/block/nvme0n1/nvme0n1p1/dev": "259:1",
        "/sys/block/nvme0n1/nvme0n1p1/partition": "1",
        "/sys/block/nvme0n1/nvme0n1p2/dev": "259:2",
        "/sys/block/nvme0n1/nvme0n1p2/partition": "2",
    }
    files.update(extra)
    return Overlay(system.backend, files=files, links={"/sys/block/nvme0n1": NVME_PATH})


def test_a_mounted_partition_blocks_unbinding(system: System) -> None:
    b = mounted(system, "22 1 259:1 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p1 rw\n"
                        "23 22 0:5 / /proc rw - proc proc rw\n")
    users = binding.device_users(NVME, b)
    assert [(u.bdf, u.kind, u.what) for u in users] == \
        [(NVME, "mount", "/dev/nvme0n1p1 (nvme0n1) is mounted on /")]
    st = BindingState()
    with pytest.raises(DeviceInUseError) as exc:
        binding.bind(NVME, backend=b, state=st)
    assert exc.value.errno == errno.EBUSY and exc.value.usages == users
    assert "refusing to unbind 0000:00:03.0 from nvme" in str(exc.value)
    assert "--force" in str(exc.value)
    assert driver(system, NVME) == "nvme" and st.records() == []
    # also for the whole group, and for unbind
    with pytest.raises(DeviceInUseError):
        binding.bind_group(1, backend=b, state=st)
    with pytest.raises(DeviceInUseError):
        binding.unbind(NVME, backend=b, state=st)
    # --force
    assert binding.bind(NVME, force=True, backend=b, state=st).driver == "vfio-pci"
    # other devices are not affected
    assert binding.device_users(E1000E, b) == []


def test_mounts_found_by_name_when_numbers_do_not_match(system: System) -> None:
    # btrfs reports an anonymous device number; /proc/mounts has no numbers
    b = mounted(system, "30 1 0:41 / /data rw - btrfs /dev/nvme0n1p2 rw\n")
    assert [u.what for u in binding.device_users(NVME, b)] == \
        ["/dev/nvme0n1p2 (nvme0n1) is mounted on /data"]
    b = Overlay(system.backend, files={"/proc/mounts": "/dev/nvme0n1 /mnt\\040x ext4 rw 0 0\n",
                                       "/sys/block/nvme0n1/dev": "259:0"},
                links={"/sys/block/nvme0n1": NVME_PATH})
    assert [u.what for u in binding.device_users(NVME, b)] == \
        ["/dev/nvme0n1 (nvme0n1) is mounted on /mnt x"]


def test_device_mapper_holders_and_swap(system: System) -> None:
    b = mounted(system, "40 1 253:0 / / rw - xfs /dev/mapper/vg-root rw\n",
                **{"/sys/block/nvme0n1/nvme0n1p2/holders/dm-0/dev": "253:0",
                   "/sys/block/dm-0/dev": "253:0", "/sys/block/dm-0/dm/name": "vg-root",
                   "/proc/swaps": "Filename Type Size Used Priority\n"
                                  "/dev/nvme0n1p1 partition 1048572 0 -2\n"})
    whats = [u.what for u in binding.device_users(NVME, b)]
    assert whats == ["/dev/mapper/vg-root (nvme0n1) is mounted on /",
                     "/dev/nvme0n1p1 (nvme0n1) is active swap"]


# An NVMe multipath head disk hangs off the virtual subsystem device; its
# controllers (here two, at NVME and E1000E's addresses) carry it.
HEAD = "../devices/virtual/nvme-subsystem/nvme-subsys0/nvme0n1"
HEAD_FILES = {"/sys/block/nvme0n1/dev": "259:0",
              "/sys/block/nvme0n1/nvme0n1p1/dev": "259:1",
              "/sys/block/nvme0n1/nvme0n1p1/partition": "1",
              "/proc/self/mountinfo": "22 1 259:1 / / rw - xfs /dev/nvme0n1p1 rw\n"}


def _both_controllers_refuse(b: Overlay) -> None:
    for bdf in (NVME, E1000E):
        assert [u.what for u in binding.device_users(bdf, b)] == \
            ["/dev/nvme0n1p1 (nvme0n1) is mounted on /"]
        with pytest.raises(DeviceInUseError):
            binding.bind(bdf, backend=b, state=BindingState())
    assert binding.device_users(EDU, b) == []


def test_an_nvme_multipath_disk_blocks_every_controller(system: System) -> None:
    # Linux 6.15+: the head disk's multipath/ group links to its path disks
    paths = "../../../../../pci0000:00"
    b = Overlay(system.backend, files=HEAD_FILES, links={
        "/sys/block/nvme0n1": HEAD,
        "/sys/block/nvme0n1/multipath/nvme0c0n1": f"{paths}/{NVME}/nvme/nvme0/nvme0c0n1",
        "/sys/block/nvme0n1/multipath/nvme0c1n1": f"{paths}/{E1000E}/nvme/nvme1/nvme0c1n1"})
    _both_controllers_refuse(b)
    scan = binding.UsageScan(b)
    assert [(e["device"], e["name"]) for e in scan.facts["block"]] == [(NVME, "nvme0n1")]


def test_an_nvme_multipath_disk_before_the_multipath_links(system: System) -> None:
    # before Linux 6.15: the subsystem's folder links to its controllers
    subsys = "/sys/devices/virtual/nvme-subsystem/nvme-subsys0"
    b = Overlay(system.backend, files={**HEAD_FILES, f"{subsys}/nvme0n1/dev": "259:0"}, links={
        "/sys/block/nvme0n1": HEAD,
        f"{subsys}/nvme0": f"../../../pci0000:00/{NVME}/nvme/nvme0",
        f"{subsys}/nvme1": f"../../../pci0000:00/{E1000E}/nvme/nvme1"})
    _both_controllers_refuse(b)


def test_a_network_interface_that_is_up_blocks_unbinding(system: System) -> None:
    files = {"/sys/class/net/eth0/flags": "0x1003",
             "/proc/net/route": "Iface\tDestination\tGateway\n"
                                "eth0\t00000000\t0102A8C0\neth0\t0002A8C0\t00000000\n",
             "/proc/net/ipv6_route": "fe800000000000000000000000000000 40 "
                                     "00000000000000000000000000000000 00 "
                                     "00000000000000000000000000000000 00000100 00000001 "
                                     "00000000 00000001     eth0\n"}
    b = Overlay(system.backend, files=files, links={"/sys/class/net/eth0": NET_PATH,
                                                    "/sys/class/net/lo": "../../devices/virtual/net/lo"})
    users = binding.device_users(E1000E, b)
    assert [u.what for u in users] == ["network interface eth0 is up with 3 route(s)"]
    with pytest.raises(DeviceInUseError):
        binding.bind(E1000E, backend=b, state=BindingState())
    files["/sys/class/net/eth0/flags"] = "0x1002"
    files["/proc/net/route"] = "Iface\tDestination\n"
    files["/proc/net/ipv6_route"] = ""
    down = Overlay(system.backend, files=files, links={"/sys/class/net/eth0": NET_PATH})
    assert binding.device_users(E1000E, down) == []
    assert binding.bind(E1000E, backend=down, state=BindingState()).driver == "vfio-pci"


def test_a_9p_root_file_system_blocks_unbinding(system: System) -> None:
    b = Overlay(system.backend, files={
        "/proc/self/mountinfo": "20 1 0:20 / / ro - 9p hostroot ro,trans=virtio\n",
        f"/sys/bus/pci/devices/{NVME}/virtio0/mount_tag": "hostroot\0",
    })
    assert [u.what for u in binding.device_users(NVME, b)] == \
        ["9p file system 'hostroot' is mounted on /"]


def test_open_vfio_files_block_unbinding_from_vfio_pci(system: System) -> None:
    st = BindingState()
    binding.bind(EDU, backend=system.backend, state=st)
    b = Overlay(system.backend, files={
        "/proc/123/comm": "qemu-system-x86",
        "/proc/123/fdinfo/8": "pos:\t0\nflags:\t02000002\nmnt_id:\t19\nino:\t35\n"
                              "vfio-device-syspath: /sys/devices/pci0000:00/0000:00:02.0\n",
    }, links={"/proc/123/fd/0": "/dev/null", "/proc/123/fd/7": "/dev/vfio/0",
              "/proc/123/fd/8": "anon_inode:[vfio-device]"})
    users = binding.device_users(EDU, b)
    assert [(u.kind, u.what) for u in users] == [
        ("vfio", "process 123 (qemu-system-x86) has a VFIO device file open"),
        ("vfio-group", "process 123 (qemu-system-x86) has /dev/vfio/0 open")]
    with pytest.raises(DeviceInUseError):
        binding.restore(EDU, backend=b, state=st)
    assert driver(system, EDU) == "vfio-pci"
    assert binding.restore(EDU, force=True, backend=b, state=st).driver is None


def test_a_held_group_blocks_only_host_drivers(system: System) -> None:
    st = BindingState()
    binding.bind_group(3, backend=system.backend, state=st)
    b = Overlay(system.backend, files={"/proc/77/comm": "app"},
                links={"/proc/77/fd/3": "/dev/vfio/3", "/proc/77/fd/4": "/dev/vfio/devices/vfio1"})
    # vfio1 is 01:02.0's cdev: open, so 01:01.0's group is held twice over
    assert [(u.kind, u.what) for u in binding.device_users(E1000A, b)] == [
        ("vfio-group", "process 77 (app) has /dev/vfio/3 open"),
        ("vfio-group", "process 77 (app) has /dev/vfio/devices/vfio1 open "
                       "(device 0000:01:02.0 of the same IOMMU group)")]
    with pytest.raises(DeviceInUseError) as exc:
        binding.restore(E1000A, backend=b, state=st)
    assert "refusing to give 0000:01:01.0 back to e1000" in str(exc.value)
    # leaving it driver-less (or on vfio-pci) is fine while the group is held
    assert binding.unbind(E1000A, backend=b, state=st).driver is None
    with pytest.raises(DeviceInUseError):
        binding.bind(E1000A, "e1000", backend=b, state=st)
    assert binding.bind(E1000A, backend=b, state=st).driver == "vfio-pci"


def test_the_scan_marks_bridges_above_a_used_device(system: System) -> None:
    b = Overlay(system.backend, files={"/sys/class/net/eth1/flags": "0x1003"},
                links={"/sys/class/net/eth1":
                       "../../devices/pci0000:00/0000:00:05.0/0000:01:01.0/net/eth1"})
    scan = binding.UsageScan(b)
    assert [u.bdf for u in scan.for_device(BRIDGE)] == [E1000A]
    assert scan.for_device(E1000B) == []


# -- the state file ------------------------------------------------------------------------
def test_state_file_round_trip(tmp_path: Path, system: System) -> None:
    path = tmp_path / "state" / "bindings.json"
    st = BindingState(str(path))
    binding.bind(NVME, backend=system.backend, state=st)
    data = json.loads(path.read_text())
    assert data["version"] == 1 and data["devices"][NVME]["driver"] == "nvme"
    assert BindingState(str(path)).get(NVME).driver == "nvme"  # type: ignore[union-attr]
    binding.restore(NVME, backend=system.backend, state=BindingState(str(path)))
    assert json.loads(path.read_text())["devices"] == {}


def test_state_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bindings.json"
    bad.write_text("{not json")
    with pytest.raises(BindError) as exc:
        BindingState(str(bad)).records()
    assert "cannot read the binding state" in str(exc.value)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(BindError) as exc:
        BindingState(str(blocker / "sub" / "bindings.json")).remember(EDU, None, None)
    assert "PYVFIO_STATE_DIR" in str(exc.value)


def test_default_state_of_the_real_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYVFIO_STATE_DIR", str(tmp_path))
    st = BindingState.default(KernelBackend())
    assert st.path == os.path.join(str(tmp_path), "bindings.json")
    monkeypatch.delenv("PYVFIO_STATE_DIR")
    assert BindingState.default(KernelBackend()).path == "/run/pyvfio/bindings.json"


def test_the_setup_example_on_the_captured_guest(capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    repo = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("setup_devices",
                                                  repo / "examples" / "setup_devices.py")
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    system = System.from_file(repo / "tests" / "fixtures" / "qemu-guest-topology.json")
    b = system.backend
    assert example.main(["8086:100e"], backend=b) == 0
    out = capsys.readouterr().out
    assert "0000:05:01.0 shares IOMMU group 11; the user's DMA will also reach:" in out
    assert "0000:04:00.0 PCI bridge 1b36:000e (driver: none)" in out
    assert sysfs.device_driver("05:02.0", b) == "vfio-pci"
    assert example.main(["--restore", "8086:100e"], backend=b) == 0
    assert sysfs.device_driver("05:01.0", b) == sysfs.device_driver("05:02.0", b) == "e1000"
    assert example.main(["1234:11e8", "02:00.0"], backend=b) == 0
    assert sysfs.device_driver("02:00.0", b) == "vfio-pci"
