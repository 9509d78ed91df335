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
    for script, expect in (("edu_dma.py", "all checks passed"), ("nvme_identify.py", "LBA 0")):
        proc = subprocess.run([sys.executable, os.path.join(REPO, "examples", script), "--fake"],
                              capture_output=True, text=True, timeout=60, env=env,
                              cwd="/")
        assert proc.returncode == 0, proc.stderr
        assert expect in proc.stdout
