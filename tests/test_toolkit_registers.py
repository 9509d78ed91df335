"""Register helpers: exact-width accessors and declarative register blocks."""

from __future__ import annotations

import pytest

from pyvfio import Field, Register, RegisterBlock, RegisterIO
from pyvfio.errors import InvalidArgumentError


class Memory(RegisterIO):
    """An in-memory window that logs every access."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.data = bytearray(size)
        self.log: list[tuple[str, int, int]] = []

    def _read(self, offset: int, width: int) -> int:
        self.log.append(("r", offset, width))
        return int.from_bytes(self.data[offset:offset + width], "little")

    def _write(self, offset: int, width: int, value: int) -> None:
        self.log.append(("w", offset, width))
        self.data[offset:offset + width] = value.to_bytes(width, "little")


BLOCK = RegisterBlock("dev", [
    Register("ID", 0x00, 4, access="ro"),
    Register("CTRL", 0x04, 4, fields=(Field("EN", 0), Field("MODE", 4, 3), Field("GO", 31,
                                                                                  access="wo"))),
    Register("DOORBELL", 0x08, 2, access="wo"),
    Register("ADDR", 0x10, 8),
], size=0x20)


def test_typed_accessors_are_single_exact_accesses() -> None:
    m = Memory(0x20)
    m.write64(0x10, 0x1122334455667788)
    assert m.read64(0x10) == 0x1122334455667788
    assert m.read32(0x14) == 0x11223344
    assert m.read16(0x12) == 0x5566
    assert m.read8(0x11) == 0x77
    m.write8(0, 0xAB)
    m.write16(2, 0xBEEF)
    m.write32(4, 0xCAFEF00D)
    assert m.log == [("w", 0x10, 8), ("r", 0x10, 8), ("r", 0x14, 4), ("r", 0x12, 2),
                     ("r", 0x11, 1), ("w", 0, 1), ("w", 2, 2), ("w", 4, 4)]


@pytest.mark.parametrize("call, message", [
    (lambda m: m.read32(2), "not aligned"),
    (lambda m: m.read64(0x1C), "outside"),
    (lambda m: m.read(0, 3), "1, 2, 4 or 8"),
    (lambda m: m.read16(-2), "outside"),
    (lambda m: m.write8(0, 0x100), "does not fit"),
    (lambda m: m.write32(0, -1), "does not fit"),
])
def test_bad_accesses_are_refused_before_touching_anything(call, message) -> None:  # type: ignore[no-untyped-def]
    m = Memory(0x20)
    with pytest.raises(InvalidArgumentError, match=message) as info:
        call(m)
    assert info.value.errno == 22 and isinstance(info.value, ValueError)
    assert m.log == []


def test_fields_encode_decode() -> None:
    ctrl = BLOCK["CTRL"]
    assert ctrl.field("MODE").mask == 0x70 and ctrl.field("MODE").max == 7
    assert ctrl.encode(EN=1, MODE=5) == 0x51
    assert ctrl.decode(0x8000_0051) == {"EN": 1, "MODE": 5, "GO": 1}
    with pytest.raises(InvalidArgumentError, match="does not fit field MODE"):
        ctrl.encode(MODE=8)
    with pytest.raises(KeyError, match="no field 'NOPE'"):
        ctrl.field("NOPE")


def test_block_validation() -> None:
    with pytest.raises(ValueError, match="not aligned"):
        Register("X", 2, 4)
    with pytest.raises(ValueError, match="overlaps"):
        Register("X", 0, 4, fields=(Field("A", 0, 4), Field("B", 3, 2)))
    with pytest.raises(ValueError, match="does not fit register"):
        Register("X", 0, 1, fields=(Field("A", 6, 4),))
    with pytest.raises(ValueError, match="two registers"):
        RegisterBlock("b", [Register("A", 0), Register("A", 4)])
    assert BLOCK.size == 0x20 and len(BLOCK) == 4 and "CTRL" in BLOCK
    assert [r.name for r in BLOCK] == ["ID", "CTRL", "DOORBELL", "ADDR"]
    with pytest.raises(InvalidArgumentError, match="does not fit"):
        BLOCK.bind(Memory(0x10))


def test_bound_registers() -> None:
    m = Memory(0x40)
    regs = BLOCK.bind(m, base=0x20)
    m.data[0x20:0x24] = (0x1234).to_bytes(4, "little")
    assert regs.ID.read() == 0x1234 and regs.read("ID") == 0x1234
    assert m.log == [("r", 0x20, 4), ("r", 0x20, 4)]
    m.log.clear()
    regs.CTRL.write(EN=1, MODE=3)
    assert regs.CTRL.fields() == {"EN": 1, "MODE": 3, "GO": 0}
    assert regs.CTRL.modify(MODE=6) == 0x61
    assert regs.read_field("CTRL", "MODE") == 6
    assert regs.write_field("CTRL", "EN", 0) == 0x60
    # modify is exactly one read and one write of the register's width
    assert m.log[-2:] == [("r", 0x24, 4), ("w", 0x24, 4)]
    regs.ADDR.write(0x1_0000_2000)
    assert m.read64(0x30) == 0x1_0000_2000 and regs["ADDR"].read() == 0x1_0000_2000
    regs.DOORBELL.write(7)
    with pytest.raises(InvalidArgumentError, match="read-only"):
        regs.ID.write(1)
    with pytest.raises(InvalidArgumentError, match="write-only"):
        regs.DOORBELL.read()
    with pytest.raises(AttributeError, match="no register 'NOPE'"):
        regs.NOPE  # noqa: B018
    dump = regs.dump()
    assert "DOORBELL" not in dump and dump["ADDR"] == 0x1_0000_2000
    assert "CTRL" in repr(regs.CTRL) and "dev registers" in repr(regs)
