"""Persistent bindings on the real kernel.  The guest runs no udevd, so a
reboot is played by hand: the device is given back to its driver as a boot
without the rule would leave it, then the rule's two actions run as udevd
runs them -- its ATTR{driver_override} assignment, and its RUN command
executed by /bin/sh exactly as written in the file."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import guestpci
import pytest

from pyvfio.core import sysfs
from pyvfio.setup import cli, persist
from pyvfio.setup.binding import BindingState

pytestmark = pytest.mark.kernel

_RUN = re.compile(r"RUN\+=\"/bin/sh -c '([^']*)'\"")


def _boot_without_rule(bdf: str, native: str) -> None:
    """What a boot without the rule leaves: no override, the native driver."""
    dev = f"/sys/bus/pci/devices/{bdf}"
    Path(f"{dev}/driver_override").write_text("\n")
    current = sysfs.device_driver(bdf)
    if current is not None:
        Path(f"/sys/bus/pci/drivers/{current}/unbind").write_text(bdf)
    Path("/sys/bus/pci/drivers_probe").write_text(bdf)
    assert sysfs.device_driver(bdf) == native


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a shell")
def test_bind_keeps_the_device_on_vfio_pci_after_a_reboot(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nvme = guestpci.find_one(*guestpci.NVME)
    rules_dir = tmp_path / "rules.d"
    monkeypatch.setenv("PYVFIO_RULES_DIR", str(rules_dir))
    state = str(tmp_path / "bindings.json")
    assert cli.main(["bind", nvme, "--state", state]) == cli.EXIT_OK
    try:
        rule = rules_dir / f"70-pyvfio-{nvme}.rules"
        assert rule.read_text() == persist.rule_text(nvme, "vfio-pci")
        assert sysfs.device_driver(nvme) == "vfio-pci"
        # the reboot: nvme takes the device first (as a driver loaded for
        # another device, or built in, would) ...
        _boot_without_rule(nvme, "nvme")
        # ... then udevd: ATTR{driver_override}, then the RUN command
        text = rule.read_text()
        override = re.search(r'ATTR\{driver_override\}="([^"]+)"', text)
        assert override is not None
        Path(f"/sys/bus/pci/devices/{nvme}/driver_override").write_text(override.group(1))
        assert sysfs.device_driver(nvme) == "nvme"  # the override alone moves nothing
        command = _RUN.search(text)
        assert command is not None
        subprocess.run(["sh", "-c", command.group(1)], check=True, timeout=60)
        assert sysfs.device_driver(nvme) == "vfio-pci"
        # the same through apply_rules (the fake's stand-in for udevd)
        _boot_without_rule(nvme, "nvme")
        assert persist.apply_rules(persist.PersistentRules(str(rules_dir)).list()) == [nvme]
        assert sysfs.device_driver(nvme) == "vfio-pci"
    finally:
        code = cli.main(["restore", nvme, "--state", state])
    assert code == cli.EXIT_OK and sysfs.device_driver(nvme) == "nvme"
    assert list(rules_dir.iterdir()) == [] and BindingState(state).records() == []


def test_several_devices_roll_back_on_the_real_kernel(tmp_path: Path) -> None:
    """edu and nvme bound all or nothing: a driver that is not there stops
    both before either moves."""
    edu, nvme = guestpci.find_one(*guestpci.EDU), guestpci.find_one(*guestpci.NVME)
    state = str(tmp_path / "bindings.json")
    code = cli.main(["bind", "--nosave", edu, nvme, "--driver", "nosuch", "--state", state])
    assert code == cli.EXIT_FAILED
    assert (sysfs.device_driver(edu), sysfs.device_driver(nvme)) == (None, "nvme")
    assert BindingState(state).records() == []
