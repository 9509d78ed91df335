"""The example drivers on the fake kernel: they pass, and every register
access they make reaches the device model as one access of the width the
register is declared with."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Iterator

import pytest
from toolkit_env import REPO, FakeMachine, WidthLog, load_example

edu_dma = load_example("edu_dma")
nvme_identify = load_example("nvme_identify")
dirty_tracking = load_example("dirty_tracking")
migration_probe = load_example("migration_probe")


@pytest.fixture
def machine() -> Iterator[FakeMachine]:
    m = FakeMachine()
    yield m
    m.check_no_leaks()


def _declared_widths(block) -> dict[int, int]:  # type: ignore[no-untyped-def]
    return {r.offset: r.width for r in block}


@pytest.mark.parametrize("legacy, intx", [(False, False), (True, True)])
def test_edu_example(machine: FakeMachine, legacy: bool, intx: bool) -> None:
    model = machine.model(machine.edu)
    model.mmio_log.clear()
    lines: list[str] = []
    result = edu_dma.run(machine.edu, machine.backend, legacy=legacy, intx=intx,
                         out=lines.append)
    assert result.ok, lines
    assert result.factorials == {0: 1, 5: 120, 10: 3628800, 12: 479001600}
    assert result.dma_iova < 1 << 28 and result.interrupts == 7  # 4 factorials, 1 raise, 2 DMAs
    assert lines[-1].startswith("edu: all checks passed")
    assert ("INTX" if intx else "MSI") in "\n".join(lines)
    widths = _declared_widths(edu_dma.EDU_REGS)
    assert len(model.mmio_log) > 50
    wrong = [(off, w) for off, w, _write in model.mmio_log if widths.get(off) != w]
    assert wrong == [], "accesses of another width than the register's"
    assert model.dma_errors == 0 and model.range_errors == 0


def test_edu_example_main(capsys: pytest.CaptureFixture[str]) -> None:
    assert edu_dma.main(["--fake"]) == 0
    out = capsys.readouterr().out
    assert "ident 0x010000ed" in out and "DMA RAM -> edu -> RAM" in out


def test_nvme_example(machine: FakeMachine) -> None:
    model = machine.model(machine.nvme)
    pattern = bytes((i * 13 + 1) & 0xFF for i in range(512))
    model.namespace[0:512] = pattern
    log = WidthLog(model.bars[0])
    lines: list[str] = []
    result = nvme_identify.run(machine.nvme, machine.backend, out=lines.append)
    assert (result.model, result.serial, result.firmware) == ("QEMU NVMe Ctrl", "deadbeef", "1.0")
    assert result.version == "1.4.0" and result.block_size == 512
    assert result.namespace_blocks == len(model.namespace) // 512
    assert result.lba0 == pattern
    assert result.interrupts >= 5  # admin and I/O completions through MSI-X
    assert any("model    QEMU NVMe Ctrl" in line for line in lines)
    widths = _declared_widths(nvme_identify.NVME_REGS)
    for offset, width, _write in log.log:
        expected = 4 if offset >= 0x1000 else widths[offset]  # doorbells are dwords
        assert width == expected, (hex(offset), width)
    # opcodes the controller saw: identify x2, create CQ/SQ, read, delete SQ/CQ
    assert [(q, op) for q, op, _cid in model.commands] == [
        (0, 0x06), (0, 0x06), (0, 0x05), (0, 0x01), (1, 0x02), (0, 0x00), (0, 0x04)]
    assert not model.ready and model.dma_errors == 0


def test_nvme_example_polling_legacy(machine: FakeMachine) -> None:
    result = nvme_identify.run(machine.nvme, machine.backend, legacy=True, poll=True,
                               out=lambda _line: None)
    assert result.model == "QEMU NVMe Ctrl" and result.interrupts == 0
    assert result.lba0 == bytes(512)


def test_nvme_example_main(capsys: pytest.CaptureFixture[str]) -> None:
    assert nvme_identify.main(["--fake"]) == 0
    assert "serial   deadbeef" in capsys.readouterr().out


def test_examples_run_as_scripts() -> None:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    for script, expect in (("edu_dma.py", "all checks passed"), ("nvme_identify.py", "LBA 0"),
                           ("dirty_tracking.py", "exact: the IOMMU saw"),
                           ("migration_probe.py", "LOW_POWER_ENTRY")):
        proc = subprocess.run([sys.executable, os.path.join(REPO, "examples", script), "--fake"],
                              capture_output=True, text=True, timeout=60, env=env,
                              cwd="/")
        assert proc.returncode == 0, proc.stderr
        assert expect in proc.stdout


# -- dirty tracking --------------------------------------------------------------------------
def test_dirty_tracking_example_sees_exactly_the_pages_written() -> None:
    backend, bdf = dirty_tracking.fake_backend()
    lines: list[str] = []
    result = dirty_tracking.run(bdf, backend, out=lines.append)
    assert result.method == "iommufd HWPT", lines
    assert result.before == [] and result.cleared == []
    assert result.after == sorted(dirty_tracking.WRITTEN) and result.exact
    assert backend.open_files == []  # type: ignore[attr-defined]


def test_dirty_tracking_example_on_type1_reports_every_pinned_page() -> None:
    backend, bdf = dirty_tracking.fake_backend()
    result = dirty_tracking.run(bdf, backend, legacy=True, out=lambda _line: None)
    everything = list(range(dirty_tracking.PAGES))
    assert result.method == "type1 container"
    assert result.before == result.after == result.cleared == everything
    assert not result.exact


def test_dirty_tracking_example_falls_back_without_the_capability(machine: FakeMachine) -> None:
    lines: list[str] = []
    result = dirty_tracking.run(machine.edu, machine.backend, out=lines.append)
    assert result.method == "type1 container"
    assert "IOMMU_HW_CAP_DIRTY_TRACKING" in lines[0]
    assert set(dirty_tracking.WRITTEN) <= set(result.after)


# -- feature probe and migration -------------------------------------------------------------
def test_migration_probe_on_plain_vfio_pci() -> None:
    backend, bdf = migration_probe.fake_backend()
    lines: list[str] = []
    result = migration_probe.run(bdf, backend, out=lines.append)
    assert result.supported == {"LOW_POWER_ENTRY": "set", "LOW_POWER_ENTRY_WITH_WAKEUP": "set",
                                "LOW_POWER_EXIT": "set"}
    assert result.migration is None and result.saved_bytes is None
    assert lines[-1].startswith("no migration support")


def test_migration_probe_saves_the_state_of_a_migratable_device(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from test_toolkit_features import FeatureDouble

    from pyvfio import MigrationState, lib

    backend, bdf = migration_probe.fake_backend()
    double = FeatureDouble(backend.ioctl, -1)

    def ioctl(fd: int, request: int, arg: object = 0) -> int:
        if request == lib.VFIO_DEVICE_FEATURE:
            double.device_fd = fd  # the device the example opened
        return double.ioctl(fd, request, arg)

    monkeypatch.setattr(backend, "ioctl", ioctl)
    result = migration_probe.run(bdf, backend, out=lambda _line: None)
    assert result.supported == {"MIGRATION": "get", "MIG_DEVICE_STATE": "get/set",
                                "MIG_DATA_SIZE": "get", "DMA_LOGGING_START": "set",
                                "DMA_LOGGING_STOP": "set", "DMA_LOGGING_REPORT": "get"}
    assert result.saved_bytes == len(double.blob)
    assert result.final_state is MigrationState.RUNNING and double.state is MigrationState.RUNNING
