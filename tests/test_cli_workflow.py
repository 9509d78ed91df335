"""The ``pyvfio`` command as a user rehearses with it: ``--fake`` keeps the
fake machine's state between commands (bind -> status -> groups ->
restore), ``bind`` keeps devices bound across reboots (udev rules below
the fake's host root), several devices move all or nothing, every
subcommand's help has examples and exit codes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pyvfio.fake import System
from pyvfio.setup import cli, persist
from pyvfio.setup.fake_session import default_state_path

NVME, EDU, E1000A, E1000B = "0000:00:03.0", "0000:00:02.0", "0000:01:01.0", "0000:01:02.0"


def run(capsys: pytest.CaptureFixture[str], *argv: str,
        backend: object = None) -> tuple[int, str, str]:
    code = cli.main(list(argv), backend=backend)  # type: ignore[arg-type]
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, object]]:
    code, out, _ = run(capsys, *argv, "--json")
    return code, json.loads(out)


def status_drivers(capsys: pytest.CaptureFixture[str], *fake: str) -> dict[str, str | None]:
    _, data = run_json(capsys, *fake, "status")
    return {d["bdf"]: d["driver"] for d in data["devices"]}  # type: ignore[attr-defined, index]


# -- the fake keeps its state ----------------------------------------------------------------
def test_a_workflow_on_the_fake(capsys: pytest.CaptureFixture[str]) -> None:
    state = default_state_path("default")
    root = state[:-len(".json")] + ".root"
    assert state.startswith(os.environ["XDG_STATE_HOME"])
    code, out, _ = run(capsys, "--fake", "default", "bind", "00:03.0")
    assert code == cli.EXIT_OK
    assert out.splitlines()[0] == ("(FAKE system 'default': nothing on this machine changes; "
                                   f"state: {state} (--fake-reset starts over))")
    rule = f"{root}/etc/udev/rules.d/70-pyvfio-0000:00:03.0.rules"
    assert f"0000:00:03.0 stays on vfio-pci after a reboot: {rule} (--nosave does not)" in out
    assert Path(rule).read_text() == persist.rule_text(NVME, "vfio-pci")
    assert json.loads(Path(f"{root}/run/pyvfio/bindings.json").read_text())[
        "devices"][NVME]["driver"] == "nvme"
    # the next commands see the machine as bind left it
    code, out, _ = run(capsys, "--fake", "default", "status")
    assert f"State: {state} (kept between commands; --fake-reset starts over)" in out
    assert "Devices on vfio-pci" in out and "0000:00:03.0  1b36:0010" in out
    code, data = run_json(capsys, "--fake", "default", "groups", "1")
    assert code == cli.EXIT_OK and data["groups"][0]["viable"] is True  # type: ignore[index]
    assert data["fake"] == {"machine": "default", "state": state, "root": root,
                            "fallback": False, "resumed": True}
    code, out, _ = run(capsys, "--fake", "default", "bind", "--list-persistent")
    assert code == cli.EXIT_OK and out.splitlines()[1].split() == ["BDF", "AT", "BOOT", "NOW",
                                                                   "RULE"]
    assert out.splitlines()[2].split() == [NVME, "vfio-pci", "vfio-pci", rule]
    # restore with no argument: every remembered device, and its rule goes
    code, out, _ = run(capsys, "--fake", "default", "restore")
    assert code == cli.EXIT_OK
    assert out.splitlines()[1:] == ["0000:00:03.0: vfio-pci -> nvme (IOMMU group 1)",
                                    f"0000:00:03.0 no longer goes to vfio-pci at boot: deleted "
                                    f"{rule}"]
    assert not os.path.exists(rule)
    assert status_drivers(capsys, "--fake", "default")[NVME] == "nvme"
    code, out, _ = run(capsys, "--fake", "default", "restore")
    assert "nothing to restore" in out


def test_fake_reset_and_fake_state(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert run(capsys, "--fake", "default", "bind", "--nosave", "00:02.0")[0] == cli.EXIT_OK
    assert status_drivers(capsys, "--fake", "default")[EDU] == "vfio-pci"
    # another state file is another machine
    mine = tmp_path / "mine.json"
    assert status_drivers(capsys, "--fake", "default", "--fake-state", str(mine))[EDU] is None
    assert run(capsys, "--fake", "default", "--fake-state", str(mine), "bind", "00:02.0",
               "--driver", "pci-stub")[0] == cli.EXIT_OK
    assert mine.exists() and (tmp_path / "mine.root" / "etc" / "udev" / "rules.d").is_dir()
    assert status_drivers(capsys, "--fake", "default", "--fake-state", str(mine))[EDU] == "pci-stub"
    # '-': no state at all
    assert status_drivers(capsys, "--fake", "default", "--fake-state", "-")[EDU] is None
    # --fake-reset starts over
    code, _, err = run(capsys, "--fake", "default", "--fake-reset", "status")
    assert code == cli.EXIT_OK and f"deleted {default_state_path('default')}" in err
    assert status_drivers(capsys, "--fake", "default")[EDU] is None
    assert not os.path.exists(default_state_path("default"))
    code, _, err = run(capsys, "--fake-reset", "status")
    assert code == cli.EXIT_USAGE and "go with --fake" in err


def test_read_only_commands_write_no_state(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["status"], ["groups"], ["doctor"], ["bind", "--list-persistent"]):
        run(capsys, "--fake", "multi-group", *argv)
    assert not os.path.exists(default_state_path("multi-group"))


def test_a_damaged_state_file_is_one_line_and_writes_nothing(
        capsys: pytest.CaptureFixture[str]) -> None:
    state = Path(default_state_path("default"))
    assert run(capsys, "--fake", "default", "bind", "--nosave", "00:02.0")[0] == cli.EXIT_OK
    data = json.loads(state.read_text())
    for bad in ("../../x", "vfio-pci\nnvme", 5):
        data["devices"][EDU]["driver"] = bad
        state.write_text(json.dumps(data))
        code, out, err = run(capsys, "--fake", "default", "status")
        assert code == cli.EXIT_FAILED and out == ""
        assert len(err.strip().splitlines()) == 1 and str(state) in err
        assert "is not a driver name" in err and "--fake-reset starts over" in err
    state.write_text("{")
    code, out = run_json(capsys, "--fake", "default", "status")
    assert code == cli.EXIT_FAILED and out["error"]["kind"] == "failed"  # type: ignore[index]
    os.chmod(state, 0o666)
    code, _, err = run(capsys, "--fake", "default", "status")
    assert code == cli.EXIT_FAILED and "writable by others" in err
    os.unlink(state)
    os.symlink("/etc/passwd", state)
    code, _, err = run(capsys, "--fake", "default", "status")
    assert code == cli.EXIT_FAILED and "symbolic link" in err
    assert run(capsys, "--fake", "default", "--fake-reset", "status")[0] == cli.EXIT_OK
    assert not os.path.lexists(state)


def test_a_state_of_another_topology_is_not_replayed(capsys: pytest.CaptureFixture[str],
                                                     tmp_path: Path) -> None:
    topo = tmp_path / "mine.json"
    topo.write_text(json.dumps({"name": "mine", "devices": [{"bdf": "00:02.0", "model": "edu"}]}))
    assert run(capsys, "--fake", str(topo), "bind", "--nosave", "00:02.0")[0] == cli.EXIT_OK
    assert status_drivers(capsys, "--fake", str(topo))[EDU] == "vfio-pci"
    topo.write_text(json.dumps({"name": "mine", "devices": [{"bdf": "00:02.0", "model": "edu"},
                                                            {"bdf": "00:03.0", "model": "edu"}]}))
    code, out, err = run(capsys, "--fake", str(topo), "status", "--json")
    assert code == cli.EXIT_OK and "is of another topology: starting over" in err
    assert {d["bdf"]: d["driver"] for d in json.loads(out)["devices"]} == {EDU: None, NVME: None}


def test_every_command_says_fake_in_json(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["status"], ["groups"], ["doctor"], ["bind", "00:02.0"],
                 ["bind", "--list-persistent"], ["unbind", "00:02.0"], ["restore"]):
        _, data = run_json(capsys, "--fake", "minimal", *argv)
        fake = data["fake"]
        assert isinstance(fake, dict) and fake["machine"] == "minimal", argv
        assert fake["state"] == default_state_path("minimal") and fake["fallback"] is False
    # with a backend given (a library caller's machine): no state
    _, out, _ = run(capsys, "status", "--json", backend=System("minimal").backend)
    assert json.loads(out)["fake"]["state"] is None


# -- persistence through the command ----------------------------------------------------------
def test_nosave_and_unbind(capsys: pytest.CaptureFixture[str]) -> None:
    rules = f"{default_state_path('default')[:-5]}.root/etc/udev/rules.d"
    code, data = run_json(capsys, "--fake", "default", "bind", "--nosave", "00:02.0")
    assert code == cli.EXIT_OK and data["persistent"] == {"saved": [], "removed": []}
    assert not os.path.exists(rules) or os.listdir(rules) == []
    code, data = run_json(capsys, "--fake", "default", "bind", "00:02.0", "00:03.0")
    assert [x["bdf"] for x in data["persistent"]["saved"]] == [EDU, NVME]  # type: ignore[index]
    assert sorted(os.listdir(rules)) == ["70-pyvfio-0000:00:02.0.rules",
                                         "70-pyvfio-0000:00:03.0.rules"]
    # unbind --nosave keeps the rule; unbind deletes it
    assert run(capsys, "--fake", "default", "unbind", "--nosave", "00:02.0")[0] == cli.EXIT_OK
    assert len(os.listdir(rules)) == 2
    code, data = run_json(capsys, "--fake", "default", "unbind", "00:03.0")
    assert [x["bdf"] for x in data["persistent"]["removed"]] == [NVME]  # type: ignore[index]
    assert os.listdir(rules) == ["70-pyvfio-0000:00:02.0.rules"]
    code, data = run_json(capsys, "--fake", "default", "bind", "--list-persistent")
    assert data["persistent"] == [{"bdf": EDU, "driver": "vfio-pci",
                                   "path": f"{rules}/70-pyvfio-0000:00:02.0.rules",
                                   "present": True, "current_driver": None}]


def test_a_rule_for_a_device_without_record_is_restored(capsys: pytest.CaptureFixture[str]) -> None:
    """After a reboot /run is empty: the rule alone says the device is kept."""
    rules = Path(f"{default_state_path('default')[:-5]}.root/etc/udev/rules.d")
    assert run(capsys, "--fake", "default", "bind", "00:03.0")[0] == cli.EXIT_OK
    os.unlink(Path(default_state_path("default")[:-5] + ".root") / "run/pyvfio/bindings.json")
    code, out, _ = run(capsys, "--fake", "default", "restore")
    assert code == cli.EXIT_OK and "0000:00:03.0: vfio-pci -> nvme" in out
    assert list(rules.iterdir()) == []


def test_a_damaged_rule_stops_before_anything_moves(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "--fake", "default", "bind", "00:03.0")[0] == cli.EXIT_OK
    rule = Path(f"{default_state_path('default')[:-5]}.root/etc/udev/rules.d/"
                "70-pyvfio-0000:00:03.0.rules")
    rule.write_text(rule.read_text() + 'RUN+="/bin/evil"\n')
    code, _, err = run(capsys, "--fake", "default", "restore", "00:03.0")
    assert code == cli.EXIT_FAILED and str(rule) in err and "not the rule pyvfio writes" in err
    assert status_drivers(capsys, "--fake", "default")[NVME] == "vfio-pci"
    code, _, err = run(capsys, "--fake", "default", "bind", "--list-persistent")
    assert code == cli.EXIT_FAILED and "edited by hand" in err


def test_an_unwritable_rules_folder_stops_the_bind(capsys: pytest.CaptureFixture[str],
                                                   tmp_path: Path) -> None:
    root = Path(f"{default_state_path('default')[:-5]}.root")
    (root / "etc" / "udev").mkdir(parents=True)
    os.symlink(tmp_path, root / "etc" / "udev" / "rules.d")
    code, _, err = run(capsys, "--fake", "default", "bind", "00:03.0")
    assert code == cli.EXIT_FAILED and "symbolic link" in err
    assert status_drivers(capsys, "--fake", "default")[NVME] == "nvme"
    assert run(capsys, "--fake", "default", "bind", "--nosave", "00:03.0")[0] == cli.EXIT_OK


def test_several_devices_all_or_nothing_through_the_command(
        capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "--fake", "default", "bind", "00:02.0", "00:03.0", "--driver",
                       "nosuch")
    assert code == cli.EXIT_FAILED and "nosuch driver is not loaded" in err
    assert run(capsys, "--fake", "default", "bind", "00:02.0", "00:03.0")[0] == cli.EXIT_OK
    drivers = status_drivers(capsys, "--fake", "default")
    assert drivers[EDU] == drivers[NVME] == "vfio-pci"


# -- help and options ---------------------------------------------------------------------------
@pytest.mark.parametrize("command", [["status"], ["groups"], ["doctor"], ["bind"], ["unbind"],
                                     ["restore"], ["topology", "dump"]])
def test_every_subcommand_has_a_description_examples_and_exit_codes(
        capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    code, out, _ = run(capsys, *command, "--help")
    assert code == cli.EXIT_OK
    examples = out[out.index("examples:\n"):out.index("exit codes:\n")]
    assert f"  pyvfio {' '.join(command)}" in examples or "pyvfio" in examples
    codes = out[out.index("exit codes:\n"):].splitlines()[1:]
    assert codes[0].startswith("  0  ") and any(c.startswith("  2  bad usage") for c in codes)
    assert max(len(line) for line in out.splitlines()) <= 80


def test_state_is_accepted_before_or_after_the_command(capsys: pytest.CaptureFixture[str],
                                                       tmp_path: Path) -> None:
    system = System("default")
    before, after = tmp_path / "before.json", tmp_path / "after.json"
    assert run(capsys, "--state", str(before), "bind", "--nosave", "00:02.0",
               backend=system.backend)[0] == cli.EXIT_OK
    assert json.loads(before.read_text())["devices"][EDU]["driver"] is None
    assert run(capsys, "bind", "--nosave", "00:03.0", "--state", str(after),
               backend=system.backend)[0] == cli.EXIT_OK
    assert json.loads(after.read_text())["devices"][NVME]["driver"] == "nvme"


def test_host_use_is_reported_before_the_rules_folder(capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A device in use is exit 4 even where no rule could be written (the
    guest's read-only /etc): the rules folder is tried once every device
    passed bind's checks, before the first move."""
    from fixtures.sysfs_overlay import Overlay

    tried: list[str] = []

    def read_only(self: persist.PersistentRules) -> None:
        tried.append("check")
        raise persist.PersistError(30, "cannot write the persistent bindings: Read-only")
    monkeypatch.setattr(persist.PersistentRules, "check_writable", read_only)
    system = System("default")
    b = Overlay(system.backend, files={
        "/proc/self/mountinfo": "22 1 259:1 / / rw - ext4 /dev/nvme0n1p1 rw\n",
        "/sys/block/nvme0n1/nvme0n1p1/partition": "1",
        "/sys/block/nvme0n1/nvme0n1p1/dev": "259:1"},
        links={"/sys/block/nvme0n1": "../devices/pci0000:00/0000:00:03.0/nvme/nvme0/nvme0n1"})
    code, _, err = run(capsys, "bind", NVME, backend=b)
    assert code == cli.EXIT_IN_USE and "is mounted on /" in err and tried == []
    code, _, err = run(capsys, "bind", EDU, NVME, "--force", backend=b)
    assert code == cli.EXIT_FAILED and "Read-only" in err and tried == ["check"]
    assert [system.device(x).driver for x in (EDU, NVME)] == [None, "nvme"]
    assert run(capsys, "bind", "--nosave", EDU, backend=b)[0] == cli.EXIT_OK
