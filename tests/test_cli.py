"""The ``pyvfio`` command on fake systems: output and exit codes of every
command; ``status`` and ``doctor`` on this machine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures.sysfs_overlay import Overlay

from pyvfio.core import sysfs
from pyvfio.fake import System
from pyvfio.setup import cli, kernel_support

REPO = Path(__file__).resolve().parent.parent
GUEST_TOPOLOGY = REPO / "tests" / "fixtures" / "qemu-guest-topology.json"
NVME, E1000A, E1000B = "0000:00:03.0", "0000:01:01.0", "0000:01:02.0"


def run(capsys: pytest.CaptureFixture[str], *argv: str,
        backend: object = None) -> tuple[int, str, str]:
    code = cli.main(list(argv), backend=backend)  # type: ignore[arg-type]
    out, err = capsys.readouterr()
    return code, out, err


def test_exit_codes_are_the_documented_ones() -> None:
    assert (cli.EXIT_OK, cli.EXIT_PROBLEM, cli.EXIT_USAGE, cli.EXIT_FAILED, cli.EXIT_IN_USE) == \
        (0, 1, 2, 3, 4)
    assert "Exit codes" in (cli.__doc__ or "")
    assert "4     refused because a device is in use" in (cli.__doc__ or "")


def test_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys)[0] == cli.EXIT_USAGE
    assert run(capsys, "frobnicate")[0] == cli.EXIT_USAGE
    code, out, _ = run(capsys, "--help")
    assert code == cli.EXIT_OK and "Exit codes" in out and "topology" in out
    code, _, err = run(capsys, "--fake", "no-such-topology", "status")
    assert code == cli.EXIT_USAGE and "no shipped topology" in err
    code, _, err = run(capsys, "bind", "--fake", "default", "zz:zz")
    assert code == cli.EXIT_USAGE and "neither a PCI address" in err
    code, _, err = run(capsys, "bind", "--fake", "default", "0000:00:09.0")
    assert code == cli.EXIT_USAGE and "no PCI device 0000:00:09.0" in err
    code, _, err = run(capsys, "bind", "--fake", "default", "dead:beef")
    assert code == cli.EXIT_USAGE and "no PCI device with ID dead:beef" in err
    code, _, err = run(capsys, "bind", "--fake", "default")
    assert code == cli.EXIT_USAGE and "needs a device" in err
    code, _, err = run(capsys, "groups", "--fake", "default", "42")
    assert code == cli.EXIT_USAGE and "no IOMMU group 42" in err


def test_status_on_a_fake_system(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "status", "--fake", "default")
    assert code == cli.EXIT_OK
    assert out.startswith("System: FAKE system 'default' (simulated by pyvfio.fake)")
    assert "IOMMU: dmar0, 4 groups" in out
    assert "Devices on host drivers\n=======================" in out
    assert "0000:00:03.0  1b36:0010  Non-Volatile memory controller  nvme    1      no" in out
    assert "Devices without a driver" in out and "Devices on vfio-pci" not in out
    assert "group 3: NOT viable: 00:05.0 (no driver), 01:01.0 (e1000), 01:02.0 (e1000)" in out
    assert "NO IOMMU ON THIS MACHINE" not in out
    # the option also works before the command
    assert run(capsys, "--fake", "default", "status")[1] == out


def test_status_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--json", "status", "--fake", "multi-group")
    assert code == cli.EXIT_OK
    data = json.loads(out)
    assert data["system"] == {"kind": "fake", "fake_topology": "multi-group", "fallback": False}
    assert data["support"]["iommu_enabled"] is True
    devices = {d["bdf"]: d for d in data["devices"]}
    assert devices["0000:00:06.2"]["driver"] == "e1000e"
    assert devices["0000:00:06.0"]["group_viable"] is False
    assert devices["0000:00:02.0"]["group_viable"] is True
    assert devices["0000:00:02.0"]["vfio_dev"] is not None and devices["0000:00:02.0"]["in_use"] == []
    groups = {g["group"]: g for g in data["groups"]}
    assert [b["bdf"] for b in groups[1]["blockers"]] == ["0000:00:06.2"]


def test_status_after_binding_on_one_system(capsys: pytest.CaptureFixture[str]) -> None:
    system = System("default")
    b = system.backend
    code, out, _ = run(capsys, "bind", "00:03.0", backend=b)
    assert code == cli.EXIT_OK
    assert out.splitlines() == [
        "(FAKE system 'default': nothing on this machine changes)",
        "0000:00:03.0: nvme -> vfio-pci (IOMMU group 1): /dev/vfio/1, /dev/vfio/devices/vfio0",
        "0000:00:03.0 stays on vfio-pci after a reboot: rule kept in memory (--nosave does not)"]
    code, out, _ = run(capsys, "status", backend=b)
    assert out.startswith("System: FAKE system 'default' (simulated by pyvfio.fake)\nIOMMU")
    assert "Devices on vfio-pci" in out
    assert "0000:00:03.0  1b36:0010  Non-Volatile memory controller  1      yes     /dev/vfio/1, " \
           "/dev/vfio/devices/vfio0" in out
    code, out, _ = run(capsys, "restore", backend=b)
    assert code == cli.EXIT_OK and out.splitlines()[1:] == [
        "0000:00:03.0: vfio-pci -> nvme (IOMMU group 1)",
        "0000:00:03.0 no longer goes to vfio-pci at boot: deleted its rule"]
    code, out, _ = run(capsys, "restore", backend=b)
    assert code == cli.EXIT_OK and "nothing to restore" in out


def test_status_falls_back_to_the_fake_on_a_machine_without_iommu(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    plain = System({"iommu": None, "modules": {"vfio": False, "iommufd": False},
                    "devices": [{"bdf": "00:02.0", "model": "edu"}]})
    monkeypatch.setattr(cli, "default_backend", lambda: plain.backend)
    code, out, _ = run(capsys, "status")
    assert code == cli.EXIT_OK
    assert out.startswith("=" * 69 + "\n NO IOMMU ON THIS MACHINE (1 PCI devices, no IOMMU groups)")
    assert "built-in FAKE system 'default'" in out and "None of the devices below is real" in out
    assert "System: FAKE system 'default'" in out
    assert out.rstrip().endswith("(the devices above are the FAKE system 'default'; "
                                 "`pyvfio status --real` shows this machine)")
    # --real: this machine (here simulated), saying what is missing
    code, out, _ = run(capsys, "status", "--real")
    assert code == cli.EXIT_OK and "NO IOMMU ON THIS MACHINE" not in out
    assert "IOMMU: none: VFIO cannot assign devices here (see `pyvfio doctor`)" in out
    assert "0000:00:02.0  1234:11e8  Unclassified device  -      -" in out
    # --json switches too, and says so
    code, out, _ = run(capsys, "status", "--json")
    data = json.loads(out)
    assert data["system"] == {"kind": "fake", "fake_topology": "default", "fallback": True}
    assert data["fake"]["machine"] == "default" and data["fake"]["fallback"] is True
    assert data["fake"]["state"].endswith("pyvfio/fake-default.json")
    assert len(data["groups"]) == 4
    # --real --json: the real, empty state
    code, out, _ = run(capsys, "status", "--json", "--real")
    data = json.loads(out)
    assert data["system"] == {"kind": "fake", "fake_topology": "custom", "fallback": False}
    assert data["support"]["iommu_enabled"] is False and data["groups"] == []
    assert [d["bdf"] for d in data["devices"]] == ["0000:00:02.0"]
    # groups falls back the same way
    code, out, _ = run(capsys, "groups")
    assert code == cli.EXIT_OK and "NO IOMMU ON THIS MACHINE" in out
    assert "`pyvfio groups --real` shows this machine" in out and "group 3 (3 device(s))" in out
    data = json.loads(run(capsys, "groups", "--json")[1])
    assert data["fake"]["fallback"] is True and len(data["groups"]) == 4
    code, out, _ = run(capsys, "groups", "--real")
    assert code == cli.EXIT_OK and "no IOMMU groups" in out and "NO IOMMU ON" not in out


def test_status_and_doctor_run_on_this_machine(capsys: pytest.CaptureFixture[str]) -> None:
    support = kernel_support.vfio_support()
    code, out, _ = run(capsys, "status")
    assert code == cli.EXIT_OK
    if support.group_count == 0 and not support.noiommu_mode:
        assert "NO IOMMU ON THIS MACHINE" in out and "FAKE system 'default'" in out
    else:
        assert out.startswith("System: this machine (kernel backend)")
    code, out, _ = run(capsys, "status", "--json")
    data = json.loads(out)
    if support.group_count == 0 and not support.noiommu_mode:
        assert code == cli.EXIT_OK and data["system"]["kind"] == "fake"
        assert data["system"]["fallback"] is True and data["fake"]["fallback"] is True
    else:
        assert code == cli.EXIT_OK and data["system"]["kind"] == "kernel"
        assert data["system"]["fallback"] is False and data["fake"] is None
    data = json.loads(run(capsys, "status", "--json", "--real")[1])
    assert data["system"]["kind"] == "kernel" and data["fake"] is None
    code, out, _ = run(capsys, "doctor")
    assert code in (cli.EXIT_OK, cli.EXIT_PROBLEM)
    assert out.startswith("STATUS  CHECK")
    if not support.iommu_enabled:
        assert "FAIL    iommu" in out and "fix: " in out
        assert "VFIO is not usable here" in out
    code, out, _ = run(capsys, "doctor", "--json")
    data = json.loads(out)
    assert {c["name"] for c in data["checks"]} >= {"iommu", "interfaces", "memlock"}
    assert data["ok"] is (code == cli.EXIT_OK)


def test_doctor_on_fakes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "doctor", "--fake", "default")
    assert code == cli.EXIT_OK
    assert out.startswith("(FAKE system 'default': nothing on this machine changes; state: ")
    assert out.splitlines()[1].startswith("STATUS  CHECK")
    assert "OK      iommu                    IOMMU active (dmar0), 4 groups" in out
    assert "OK      interfaces" in out
    plain = System({"iommu": None, "modules": {"vfio": False, "iommufd": False},
                    "devices": [{"bdf": "00:02.0", "model": "edu"}]})
    code, out, _ = run(capsys, "doctor", backend=plain.backend)
    assert code == cli.EXIT_PROBLEM
    assert "FAIL    iommu" in out and "fix: " in out
    assert "WARN    module vfio_pci" in out and "fix: modprobe vfio-pci" in out
    assert "FAIL    interfaces               usable: none" in out
    code, out, _ = run(capsys, "doctor", "--json", backend=plain.backend)
    data = json.loads(out)
    assert code == cli.EXIT_PROBLEM and data["ok"] is False
    iommu = next(c for c in data["checks"] if c["name"] == "iommu")
    assert iommu["status"] == "fail" and iommu["fix"]


def test_groups(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "groups", "--fake", "minimal")
    assert code == cli.EXIT_OK
    assert out.splitlines()[1:] == ["group 0 (1 device(s)): viable: 0000:00:02.0 (no driver)"]
    # a listing succeeds whatever the groups' viability
    code, out, _ = run(capsys, "groups", "--fake", "multi-group")
    assert code == cli.EXIT_OK
    assert "group 1 (3 device(s)): NOT viable: 0000:00:06.0 (vfio-pci), 0000:00:06.1 (vfio-pci), " \
           "0000:00:06.2 (e1000e)" in out
    assert "    blocked by 0000:00:06.2 (Ethernet controller 8086:10d3) is bound to the host " \
           "driver 'e1000e'" in out
    code, out, _ = run(capsys, "groups", "--fake", "default", "01:02.0")
    assert code == cli.EXIT_PROBLEM
    assert out.startswith("device 0000:01:02.0 is in IOMMU group 3 (3 device(s)): NOT viable")
    assert "reachable by the user's DMA" in out
    code, out, _ = run(capsys, "groups", "--fake", "default", "0", "--json")
    data = json.loads(out)
    assert code == cli.EXIT_OK and data["groups"][0]["viable"] is True
    assert data["groups"][0]["device"] is None


def test_bind_unbind_restore_on_one_fake(capsys: pytest.CaptureFixture[str]) -> None:
    system = System("default")
    b = system.backend
    code, out, _ = run(capsys, "bind", "8086:100e", backend=b)
    assert code == cli.EXIT_OK
    lines = out.splitlines()[1:]
    assert lines[0] == "0000:01:01.0: e1000 -> vfio-pci (IOMMU group 3): /dev/vfio/3, " \
                       "/dev/vfio/devices/vfio0"
    # the note is about the group once both moved, not half way
    assert lines[1].startswith("  note: group 3 has 2 other device(s) that share its I/O")
    assert lines[2].startswith("0000:01:02.0: e1000 -> vfio-pci")
    code, out, _ = run(capsys, "unbind", "--group", "1", backend=b)
    assert code == cli.EXIT_OK
    assert out.splitlines()[1:] == ["0000:00:03.0: nvme -> no driver (IOMMU group 1)"]
    code, out, _ = run(capsys, "restore", "--group", "3", backend=b)
    assert code == cli.EXIT_OK
    assert out.splitlines()[1:] == [
        "0000:01:01.0: vfio-pci -> e1000 (IOMMU group 3)",
        "0000:01:02.0: vfio-pci -> e1000 (IOMMU group 3)",
        "0000:01:01.0 no longer goes to vfio-pci at boot: deleted its rule",
        "0000:01:02.0 no longer goes to vfio-pci at boot: deleted its rule"]
    code, out, _ = run(capsys, "restore", "--json", backend=b)
    data = json.loads(out)
    assert code == cli.EXIT_OK and data["ok"] is True
    assert [(r["bdf"], r["driver"]) for r in data["results"]] == [(NVME, "nvme")]
    code, _, err = run(capsys, "restore", "--group", backend=b)
    assert code == cli.EXIT_USAGE


def test_bind_group_by_device_and_failures(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "bind", "--fake", "default", "--group", "01:02.0")
    assert code == cli.EXIT_OK
    assert out.splitlines()[0].startswith("(FAKE system 'default': nothing on this machine "
                                          "changes; state: ")
    assert [line.split(":")[0] for line in out.splitlines()[1:3]] == ["0000", "0000"]
    assert [line.split(" ")[1:3] for line in out.splitlines()[3:]] == [["stays", "on"]] * 2
    # a bridge is bad usage (2): nothing is tried
    code, out, err = run(capsys, "bind", "--fake", "default", "00:05.0")
    assert code == cli.EXIT_USAGE and "does not drive bridges" in err
    assert "pyvfio bind --group 3" in err and out == ""
    code, out, err = run(capsys, "bind", "--fake", "default", "00:05.0", "--json")
    data = json.loads(out)
    assert code == cli.EXIT_USAGE and data["ok"] is False and data["exit_code"] == 2
    assert data["error"]["kind"] == "usage" and "does not drive bridges" in data["error"]["message"]
    assert "does not drive bridges" in err
    # also when the bridge comes with other devices: none of them is bound
    system = System("default")
    code, _, err = run(capsys, "bind", NVME, "00:05.0", backend=system.backend)
    assert code == cli.EXIT_USAGE and sysfs.device_driver(NVME, system.backend) == "nvme"
    # a driver that is not loaded is a failed operation (3), not usage
    code, _, err = run(capsys, "bind", "--fake", "default", "00:02.0", "--driver", "nosuch")
    assert code == cli.EXIT_FAILED and "not loaded" in err


def test_bind_refuses_a_device_in_use(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    system = System("default")
    b = Overlay(system.backend, files={
        "/proc/self/mountinfo": "22 1 259:1 / / rw - ext4 /dev/nvme0n1p1 rw\n",
        "/sys/block/nvme0n1/nvme0n1p1/partition": "1",
        "/sys/block/nvme0n1/nvme0n1p1/dev": "259:1"},
        links={"/sys/block/nvme0n1": "../devices/pci0000:00/0000:00:03.0/nvme/nvme0/nvme0n1"})
    state = str(tmp_path / "bindings.json")
    code, out, err = run(capsys, "bind", NVME, "--state", state, backend=b)
    assert code == cli.EXIT_IN_USE
    assert "refusing to unbind 0000:00:03.0 from nvme" in err
    assert "/dev/nvme0n1p1 (nvme0n1) is mounted on /" in err
    assert sysfs.device_driver(NVME, b) == "nvme"  # type: ignore[arg-type]
    code, out, _ = run(capsys, "bind", NVME, "--json", "--state", state, backend=b)
    data = json.loads(out)
    assert code == cli.EXIT_IN_USE and data["error"]["usages"][0]["kind"] == "mount"
    code, out, _ = run(capsys, "status", backend=b)
    assert "/dev/nvme0n1p1 (nvme0n1) is mounted on /" in out
    code, out, _ = run(capsys, "bind", NVME, "--force", "--state", state, backend=b)
    assert code == cli.EXIT_OK and "nvme -> vfio-pci" in out
    assert json.loads(Path(state).read_text())["devices"][NVME]["driver"] == "nvme"
    del b.files["/proc/self/mountinfo"]  # on vfio-pci, the host cannot mount it
    code, out, _ = run(capsys, "restore", NVME, "--state", state, backend=b)
    assert code == cli.EXIT_OK and "vfio-pci -> nvme" in out


def test_restore_fails_while_the_group_is_user_owned(capsys: pytest.CaptureFixture[str]) -> None:
    from pyvfio import Container, Group

    system = System("default")
    b = system.backend
    assert run(capsys, "bind", "--group", "3", backend=b)[0] == cli.EXIT_OK
    with Container(backend=b) as c, Group(3, backend=b) as g:
        g.set_container(c)
        code, out, err = run(capsys, "restore", E1000A, backend=b)
    assert code == cli.EXIT_FAILED
    assert "e1000 did not take 0000:01:01.0 back" in err and "the record is kept" in err
    assert run(capsys, "restore", backend=b)[0] == cli.EXIT_OK
    assert sysfs.device_driver(E1000A, b) == sysfs.device_driver(E1000B, b) == "e1000"


def test_topology_dump_round_trips(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run(capsys, "topology", "dump", "--fake", "default", "--name", "copy")
    assert code == cli.EXIT_OK and "replays on the fake" in err
    topo = json.loads(out)
    assert topo["name"] == "copy" and len(topo["devices"]) == 6
    path = tmp_path / "copy.json"
    code, out, err = run(capsys, "--fake", "default", "topology", "dump", "-o", str(path))
    assert code == cli.EXIT_OK and out == "" and str(path) in err
    replay = System.from_file(path)
    assert {g.id: [d.bdf for d in g.devices] for g in replay.groups.values()} == \
        {0: ["0000:00:02.0"], 1: ["0000:00:03.0"], 2: ["0000:00:04.0"],
         3: ["0000:00:05.0", E1000A, E1000B]}
    assert {bdf: d.driver for bdf, d in replay.devices.items()} == \
        {bdf: d.driver for bdf, d in System("default").devices.items()}
    code, out, _ = run(capsys, "status", "--fake", str(path))
    assert code == cli.EXIT_OK and "System: FAKE system 'captured'" in out
    assert "Captured by `pyvfio topology dump` (Linux 7.3.0-fake): 6 PCI devices" in out


def test_the_guest_topology_replays_through_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "groups", "--fake", str(GUEST_TOPOLOGY), "11")
    assert code == cli.EXIT_PROBLEM
    assert out.startswith("IOMMU group 11 (3 device(s)): NOT viable")
    code, out, _ = run(capsys, "bind", "--fake", str(GUEST_TOPOLOGY), "--group", "11")
    assert code == cli.EXIT_OK and out.count("e1000 -> vfio-pci") == 2
    # what the guest used when it was captured: its root and share over 9p
    code, out, _ = run(capsys, "status", "--fake", str(GUEST_TOPOLOGY))
    root = next(line for line in out.splitlines() if line.startswith("0000:00:02.0"))
    assert root.endswith("9p file system 'hostroot' is mounted on /")
    code, _, err = run(capsys, "bind", "--fake", str(GUEST_TOPOLOGY), "00:03.0")
    assert code == cli.EXIT_IN_USE
    assert "9p file system 'share' is mounted on /run/pyvfio-share" in err


def test_python_dash_m_pyvfio() -> None:
    proc = subprocess.run([sys.executable, "-m", "pyvfio", "--fake", "minimal", "groups"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.endswith("group 0 (1 device(s)): viable: 0000:00:02.0 (no driver)\n")


def test_json_errors_are_json_on_stdout(capsys: pytest.CaptureFixture[str],
                                        tmp_path: Path) -> None:
    # argparse's errors
    code, out, err = run(capsys, "--json", "frobnicate")
    assert code == cli.EXIT_USAGE and "invalid choice: 'frobnicate'" in err
    data = json.loads(out)
    assert data["ok"] is False and data["exit_code"] == 2
    assert data["error"]["kind"] == "usage" and "frobnicate" in data["error"]["message"]
    code, out, err = run(capsys, "groups", "--json", "--bogus")
    assert code == cli.EXIT_USAGE and json.loads(out)["exit_code"] == 2 and "--bogus" in err
    # pyvfio's own usage errors, --json before or after the command
    for argv in (["--json", "bind", "--fake", "default", "zz:zz"],
                 ["bind", "--fake", "default", "--json", "0000:00:09.0"],
                 ["--fake", "no-such-topology", "status", "--json"],
                 ["groups", "--fake", "default", "42", "--json"]):
        code, out, err = run(capsys, *argv)
        assert code == cli.EXIT_USAGE and err.startswith("pyvfio: ")
        data = json.loads(out)
        assert data["error"]["message"] == err.strip()[len("pyvfio: "):]
    # without --json stdout stays empty
    code, out, _ = run(capsys, "bind", "--fake", "default", "zz:zz")
    assert code == cli.EXIT_USAGE and out == ""
    # a failed operation outside the binding commands: exit 3, also as JSON
    target = tmp_path / "missing" / "dump.json"
    code, out, err = run(capsys, "topology", "dump", "--fake", "minimal", "--json", "-o", str(target))
    assert code == cli.EXIT_FAILED and "No such file or directory" in err
    data = json.loads(out)
    assert data["exit_code"] == 3 and data["error"]["kind"] == "failed"
    assert data["error"]["errno"] == 2


def test_groups_without_iommu_groups_lists_nothing_with_a_hint(
        capsys: pytest.CaptureFixture[str]) -> None:
    plain = System({"iommu": None, "devices": [{"bdf": "00:02.0", "model": "edu"}]})
    code, out, _ = run(capsys, "groups", backend=plain.backend)
    assert code == cli.EXIT_OK
    assert "no IOMMU groups: the IOMMU is not enabled (see `pyvfio doctor`)" in out
    code, out, _ = run(capsys, "groups", "--json", backend=plain.backend)
    data = json.loads(out)
    assert code == cli.EXIT_OK and data["groups"] == [] and data["ok"] is True
    assert "pyvfio doctor" in data["hint"]
    # with groups, no hint
    code, out, _ = run(capsys, "groups", "--fake", "minimal", "--json")
    assert code == cli.EXIT_OK and json.loads(out)["hint"] is None


def test_restore_shows_the_fake_banner_first(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--fake", "default", "restore")
    assert code == cli.EXIT_OK
    lines = out.splitlines()
    assert len(lines) == 2 and lines[0].startswith(
        "(FAKE system 'default': nothing on this machine changes; state: ")
    assert lines[1] == "nothing to restore: pyvfio has changed no device's driver"


def test_doctor_and_status_agree_about_cdevs_on_the_fake(
        capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--fake", "default", "doctor")
    assert code == cli.EXIT_OK and "WARN" not in out
    assert "OK      cdev                     vfio device cdevs supported" in out
    assert "usable: iommufd + cdev, legacy container" in out
    assert out.rstrip().endswith("VFIO is usable; no problems found.")
    code, out, _ = run(capsys, "--fake", "default", "status", "--json")
    support = json.loads(out)["support"]
    assert support["cdev_supported"] is True and support["cdev_usable"] is True
    assert support["kernel"]["options"]["CONFIG_VFIO_DEVICE_CDEV"] == "y"
    code, out, _ = run(capsys, "--fake", "default", "doctor", "--json")
    found = {c["name"]: c for c in json.loads(out)["checks"]}
    assert found["cdev"]["status"] == "ok"


def test_every_documented_exit_code_occurs(capsys: pytest.CaptureFixture[str],
                                           tmp_path: Path) -> None:
    """The README's codes: 0 ok, 1 a problem, 2 bad usage, 3 a failed
    operation, 4 refused because in use."""
    assert run(capsys, "--fake", "minimal", "status")[0] == 0
    assert run(capsys, "--fake", "multi-group", "groups")[0] == 0
    assert run(capsys, "--fake", "multi-group", "groups", "1")[0] == 1
    assert run(capsys, "--fake", "default", "bind", "00:05.0")[0] == 2
    assert run(capsys, "--fake", "default", "bind", "00:02.0", "--driver", "nosuch")[0] == 3
    system = System("default")
    b = Overlay(system.backend, files={"/proc/self/mountinfo":
                                       "22 1 259:1 / / rw - ext4 /dev/nvme0n1p1 rw\n",
                                       "/sys/block/nvme0n1/nvme0n1p1/partition": "1",
                                       "/sys/block/nvme0n1/nvme0n1p1/dev": "259:1"},
                links={"/sys/block/nvme0n1":
                       "../devices/pci0000:00/0000:00:03.0/nvme/nvme0/nvme0n1"})
    assert run(capsys, "bind", NVME, "--state", str(tmp_path / "s.json"), backend=b)[0] == 4
    readme = (REPO / "README.md").read_text()
    assert "exit codes: 0 ok, 1 a problem found, 2 bad usage, 3 an\noperation failed, 4 " \
           "refused because a device is in use" in readme
