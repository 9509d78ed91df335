"""The test-VM launcher: retrying runs that QEMU itself ended, and the vCPU
count chosen for QEMU versions with the TCG dispatch race."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "vm"))

import guest  # noqa: E402


def _fake_boots(monkeypatch: pytest.MonkeyPatch,
                outcomes: list[tuple[int, bool, bool]]) -> list[bool]:
    """Replace one boot by the next of ``outcomes``; returns the ``last``
    flags the launcher passed."""
    lasts: list[bool] = []

    def once(command, args, *, accel, timeout, echo, after, last):  # type: ignore[no-untyped-def]
        lasts.append(last)
        return outcomes[len(lasts) - 1]

    monkeypatch.setattr(guest, "_run_guest_once", once)
    return lasts


def test_a_boot_that_dies_before_init_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    lasts = _fake_boots(monkeypatch, [(guest.EXIT_VM_FAILED, False, False), (0, True, False)])
    assert guest.run_guest("true", types.SimpleNamespace()) == 0
    assert lasts == [False, False]


def test_it_gives_up_after_the_last_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    lasts = _fake_boots(monkeypatch, [(guest.EXIT_VM_FAILED, False, False)] * guest.BOOT_ATTEMPTS)
    assert guest.run_guest("true", types.SimpleNamespace()) == guest.EXIT_VM_FAILED
    assert lasts == [False] * (guest.BOOT_ATTEMPTS - 1) + [True]


def test_a_run_that_qemu_aborted_after_init_is_tried_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    lasts = _fake_boots(monkeypatch, [(guest.EXIT_VM_FAILED, True, True), (3, True, False)])
    assert guest.run_guest("true", types.SimpleNamespace()) == 3
    assert lasts == [False, False]


# A command that finished (any status, even when QEMU then crashed while
# powering off), a guest that ran and then failed without QEMU crashing, and
# a timeout are results: never run again.
@pytest.mark.parametrize("outcome", [(1, True, False), (0, True, True),
                                     (guest.EXIT_VM_FAILED, True, False),
                                     (guest.EXIT_TIMEOUT, False, False),
                                     (guest.EXIT_TIMEOUT, True, False)])
def test_a_guest_that_ran_is_never_booted_again(monkeypatch: pytest.MonkeyPatch,
                                                outcome: tuple[int, bool, bool]) -> None:
    lasts = _fake_boots(monkeypatch, [outcome])
    assert guest.run_guest("false", types.SimpleNamespace()) == outcome[0]
    assert len(lasts) == 1


@pytest.mark.parametrize("version,accel,smp", [
    ("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)", "tcg", 1),
    ("QEMU emulator version 10.0.4", "tcg", 2),
    ("QEMU emulator version 10.1.0", "tcg", 2),
    ("QEMU emulator version 9.2.3", "tcg", 1),
    ("no version here", "tcg", 1),
    ("QEMU emulator version 10.0.2", "kvm", 2),
])
def test_tcg_uses_one_vcpu_on_a_qemu_with_the_dispatch_race(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        version: str, accel: str, smp: int) -> None:
    qemu = tmp_path / "qemu-system-x86_64"
    qemu.write_text(f"#!/bin/sh\necho '{version}'\n")
    qemu.chmod(0o755)
    assert guest.default_smp(str(qemu), accel) == smp


def test_arm64_boots_virt_with_a_two_stage_smmuv3(tmp_path: Path) -> None:
    argv = guest.qemu_args("qemu-system-aarch64", "tcg", tmp_path / "Image", tmp_path / "i.gz",
                           "console=ttyAMA0", tmp_path, tmp_path / "q.sock", [], "2G", 1,
                           "smmuv3", "arm64")
    machine = argv[argv.index("-machine") + 1]
    assert machine == "virt,gic-version=3,iommu=smmuv3"
    assert argv[argv.index("-global") + 1] == "arm-smmuv3.stage=nested"
    assert "intel-iommu" not in " ".join(argv)
    x86 = guest.qemu_args("qemu-system-x86_64", "tcg", tmp_path / "bz", tmp_path / "i.gz",
                          "console=ttyS0", tmp_path, tmp_path / "q.sock", [], "2G", 1)
    assert "q35,kernel-irqchip=split" in x86 and "-global" not in x86


@pytest.mark.parametrize("argv, message", [
    (["--arch", "arm64", "--iommu", "intel", "--run", "true"], "intel does not exist on arm64"),
    (["--iommu", "smmuv3", "--run", "true"], "smmuv3 does not exist on x86_64"),
])
def test_an_iommu_of_the_other_architecture_is_refused(argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exc:
        guest.main(argv)
    assert message in str(exc.value)


def test_the_arm64_pytest_runs_the_arm64_python() -> None:
    assert guest.pytest_command(["-q"], "arm64").startswith("/usr/bin/python3.11 -m pytest ")
    assert guest.pytest_command(["-q"]).startswith(sys.executable)
