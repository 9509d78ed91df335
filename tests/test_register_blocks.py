"""Block register accessors (read32_block, write32_block and the 64-bit
pair): one call for an array of registers, each access of exactly the
width, every access checked before the first is made.  On plain memory
(the compiled loop of the real kernel's mappings) and on the fake's edu
(RegisterIO's loop, which the device model sees access by access)."""

from __future__ import annotations

from array import array
from types import SimpleNamespace
from typing import Any, Iterator

import pytest
from toolkit_env import FakeMachine, open_cdev

from pyvfio.backend.base import MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE
from pyvfio.backend.kernel import KernelBackend
from pyvfio.core.region import RegionMapping
from pyvfio.errors import ClosedError, InvalidArgumentError

EDU_IDENT = 0x010000ED


@pytest.fixture
def ram() -> Iterator[RegionMapping]:
    """A 'region' of 4 KiB of anonymous memory mapped as the kernel backend
    maps a BAR: the accessors take the compiled path."""
    kb = KernelBackend()
    mm = kb.mmap(4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
    region = SimpleNamespace(size=4096, name="BAR0", device=SimpleNamespace(backend=kb),
                             _mapping=None, describe=lambda: "test BAR0")
    mapping = RegionMapping(region, [(0, 4096, mm)], writable=True)  # type: ignore[arg-type]
    assert mapping.direct_path
    yield mapping
    mapping.close()


def test_blocks_on_plain_memory(ram: RegionMapping) -> None:
    ram.write32_block(0x100, [1, 2, 0xFFFFFFFF, 4])
    assert [ram.read32(0x100 + 4 * i) for i in range(4)] == [1, 2, 0xFFFFFFFF, 4]
    got = ram.read32_block(0x100, 4)
    assert isinstance(got, array) and got.itemsize == 4 and list(got) == [1, 2, 0xFFFFFFFF, 4]
    assert list(ram.read32_block(0x100, 2, stride=8)) == [1, 0xFFFFFFFF]
    assert list(ram.read32_block(0x104, 3, stride=0)) == [2, 2, 2]  # one register, 3 times
    ram.write32_block(0x200, array("I", [7, 8]), stride=12)
    assert (ram.read32(0x200), ram.read32(0x204), ram.read32(0x20C)) == (7, 0, 8)
    ram.write32_block(0x300, [5, 6, 9], stride=0)  # a FIFO: the last value stays
    assert ram.read32(0x300) == 9 and ram.read32(0x304) == 0
    ram.write64_block(0x400, [1 << 63, 3])
    assert ram.read64(0x400) == 1 << 63 and list(ram.read64_block(0x400, 2)) == [1 << 63, 3]
    assert ram.read64_block(0x400, 2).itemsize == 8
    assert list(ram.read32_block(0xFFC, 1)) == [0] and list(ram.read32_block(0, 0)) == []
    ram.write32_block(0xFF8, [])  # nothing to do


@pytest.mark.parametrize("call, message", [
    (lambda io: io.read32_block(0xFF8, 3), "outside"),
    (lambda io: io.read32_block(0x2, 1), "not aligned"),
    (lambda io: io.read32_block(0x0, 2, stride=6), "stride"),
    (lambda io: io.read32_block(0x0, -1), "count"),
    (lambda io: io.read64_block(0x0, 2, stride=4), "stride"),
    (lambda io: io.write32_block(0xFF8, [1, 2, 3]), "outside"),
    (lambda io: io.write32_block(0x0, [1, 1 << 32]), "does not fit in 4 bytes"),
    (lambda io: io.write32_block(0x0, [1, -1]), "does not fit in 4 bytes"),
    (lambda io: io.write32_block(0x0, [1, 2.0]), "does not fit in 4 bytes"),
    (lambda io: io.write64_block(0x0, [1 << 64]), "does not fit in 8 bytes"),
])
def test_block_checks_come_before_any_access(ram: RegionMapping, call: Any,
                                             message: str) -> None:
    ram.write32_block(0, [0xAA] * 4)
    with pytest.raises(InvalidArgumentError, match=message) as exc:
        call(ram)
    assert exc.value.target == "mapping of test BAR0"
    # nothing was written before the error
    assert list(ram.read32_block(0, 4)) == [0xAA] * 4 and ram.read32(0xFF8) == 0


def test_blocks_after_close_raise(ram: RegionMapping) -> None:
    ram.close()
    with pytest.raises(ClosedError):
        ram.read32_block(0, 1)
    with pytest.raises(ClosedError):
        ram.write32_block(0, [1])
    with pytest.raises(ClosedError):
        ram.read32(0)


@pytest.fixture
def machine() -> Iterator[FakeMachine]:
    m = FakeMachine()
    yield m
    m.check_no_leaks()


def edu_blocks(bar0: Any) -> None:
    """The block accessors on edu's BAR0 (any RegisterIO of it)."""
    assert bar0.read32_block(0, 1)[0] == EDU_IDENT
    bar0.write32_block(0x04, [0x0F0F0F0F])  # liveness: reads back inverted
    assert list(bar0.read32_block(0x00, 2)) == [EDU_IDENT, 0xF0F0F0F0]
    bar0.write32_block(0x04, [1, 2, 0x12345678], stride=0)  # three writes, one register
    assert bar0.read32(0x04) == 0x12345678 ^ 0xFFFFFFFF
    # the DMA source, destination and count (8-byte registers; no command)
    bar0.write64_block(0x80, [0x0000_0ABC_1234_5000, 0x40000, 0x100])
    assert list(bar0.read64_block(0x80, 3)) == [0x0000_0ABC_1234_5000, 0x40000, 0x100]
    assert list(bar0.read32_block(0x80, 2, stride=8)) == [0x1234_5000, 0x40000]


def test_blocks_on_the_fake_edu(machine: FakeMachine) -> None:
    with open_cdev(machine.backend, machine.edu) as (dev, _ioas):
        dev.config.enable(memory=True)
        bar0 = dev.regions["BAR0"]
        mapping = bar0.mmap()
        assert not mapping.direct_path  # the model sees every access
        for io in (mapping, bar0):  # mmap, then pread/pwrite
            edu_blocks(io)
        with pytest.raises(InvalidArgumentError, match="outside"):
            mapping.read32_block(bar0.size - 4, 2)
