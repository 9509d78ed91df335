"""Exact-width register access and declarative register blocks.

Device registers must be accessed with the width the hardware documents:
one 4-byte load is not the same as four 1-byte loads (a read may have side
effects, a register may only decode 4-byte accesses).  :class:`RegisterIO`
is the interface every register window in pyvfio implements -- an mmapped
region (:class:`pyvfio.core.region.RegionMapping`, volatile C accessors on the
real kernel), a region accessed through ``pread``/``pwrite`` on the device
file (:class:`pyvfio.core.region.Region`) and PCI configuration space
(:class:`pyvfio.core.pci_config.PciConfig`): ``read32(offset)`` is exactly one
access of exactly 4 bytes.

On top of it, a small declarative description of a register block names
registers and their bit fields::

    EDU = RegisterBlock("edu", [
        Register("IDENT", 0x00, 4, access="ro"),
        Register("STATUS", 0x20, 4, fields=[Field("COMPUTING", 0, access="ro"),
                                             Field("IRQ_FACT", 7)]),
        Register("DMA_SRC", 0x80, 8),
    ])
    regs = EDU.bind(bar0)                 # any RegisterIO
    regs.IDENT.read()                     # one 4-byte read at 0x00
    regs.STATUS.get("COMPUTING")          # one read, the field extracted
    regs.STATUS.modify(IRQ_FACT=1)        # read-modify-write of one field
    regs.DMA_SRC.write(0x100000)          # one 8-byte write

Offsets and widths are in bytes, field positions and widths in bits.
"""

from __future__ import annotations

import abc
from array import array
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Iterable, Iterator, Mapping, Sequence

from ..errors import InvalidArgumentError

__all__ = [
    "WIDTHS",
    "RegisterIO",
    "Field",
    "Register",
    "RegisterBlock",
    "BoundRegister",
    "BoundRegisters",
]

#: Access widths in bytes that a single load or store can have.
WIDTHS = (1, 2, 4, 8)

_ACCESS = ("rw", "ro", "wo")


class RegisterIO(abc.ABC):
    """A window of registers accessed one exact-width access at a time.

    Subclasses implement ``_read(offset, width)`` and ``_write(offset, width, value)``; the public
    methods check the width (1, 2, 4 or 8 bytes), the natural alignment
    (``offset % width == 0``) and the bounds (``[0, size)``) first and
    raise :class:`~pyvfio.errors.InvalidArgumentError` (a ``ValueError``)
    naming the window when one is violated.

    Thread safety: the accessors keep no state of their own: as safe as the
    memory or syscalls under them (see
    :class:`~pyvfio.core.region.RegionMapping` and
    :class:`~pyvfio.core.region.Region`). A read-modify-write is not atomic:
    serialise those in the driver.
    """

    #: Size of the window in bytes.
    size: int

    def describe(self) -> str:
        """Name of the window used in error messages."""
        return type(self).__name__

    # -- the primitive ------------------------------------------------------------------
    @abc.abstractmethod
    def _read(self, offset: int, width: int) -> int:
        """One load of ``width`` bytes at ``offset`` (already checked)."""

    @abc.abstractmethod
    def _write(self, offset: int, width: int, value: int) -> None:
        """One store of ``width`` bytes at ``offset`` (already checked)."""

    def check_access(self, offset: int, width: int) -> None:
        """Raise :class:`InvalidArgumentError` unless an access of ``width``
        bytes at ``offset`` is allowed (width, alignment, bounds)."""
        if width not in WIDTHS:
            raise InvalidArgumentError(
                f"access width must be 1, 2, 4 or 8 bytes, not {width!r}", target=self.describe())
        if not isinstance(offset, int) or isinstance(offset, bool):
            raise InvalidArgumentError(f"offset must be an int, not {type(offset).__name__}",
                                       target=self.describe())
        if offset < 0 or offset + width > self.size:
            raise InvalidArgumentError(
                f"{width}-byte access at offset {offset:#x} is outside the "
                f"{self.size:#x}-byte window", target=self.describe())
        if offset % width:
            raise InvalidArgumentError(
                f"offset {offset:#x} is not aligned to the access width ({width} bytes)",
                target=self.describe())

    def read(self, offset: int, width: int) -> int:
        """One read of exactly ``width`` bytes at ``offset`` (little-endian)."""
        self.check_access(offset, width)
        return self._read(offset, width)

    def write(self, offset: int, width: int, value: int) -> None:
        """One write of exactly ``width`` bytes at ``offset``."""
        self.check_access(offset, width)
        if not isinstance(value, int) or not 0 <= value < 1 << (8 * width):
            raise InvalidArgumentError(f"value {value!r} does not fit in {width} bytes",
                                       target=self.describe())
        self._write(offset, width, value)

    # -- typed accessors -------------------------------------------------------------------
    def read8(self, offset: int) -> int:
        """One 1-byte read at ``offset``."""
        return self.read(offset, 1)

    def read16(self, offset: int) -> int:
        """One 2-byte read at ``offset`` (2-byte aligned)."""
        return self.read(offset, 2)

    def read32(self, offset: int) -> int:
        """One 4-byte read at ``offset`` (4-byte aligned)."""
        return self.read(offset, 4)

    def read64(self, offset: int) -> int:
        """One 8-byte read at ``offset`` (8-byte aligned)."""
        return self.read(offset, 8)

    def write8(self, offset: int, value: int) -> None:
        """One 1-byte write at ``offset``."""
        self.write(offset, 1, value)

    def write16(self, offset: int, value: int) -> None:
        """One 2-byte write at ``offset`` (2-byte aligned)."""
        self.write(offset, 2, value)

    def write32(self, offset: int, value: int) -> None:
        """One 4-byte write at ``offset`` (4-byte aligned)."""
        self.write(offset, 4, value)

    def write64(self, offset: int, value: int) -> None:
        """One 8-byte write at ``offset`` (8-byte aligned)."""
        self.write(offset, 8, value)

    # -- bulk accessors -----------------------------------------------------------------
    def _check_block(self, offset: int, count: int, stride: int, width: int) -> None:
        """Raise :class:`InvalidArgumentError` unless ``count`` accesses of
        ``width`` bytes from ``offset``, ``stride`` bytes apart, are all
        allowed (the first and the last are checked: the rest lie between)."""
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise InvalidArgumentError(f"count must be an int >= 0, not {count!r}",
                                       target=self.describe())
        if not isinstance(stride, int) or isinstance(stride, bool) or stride < 0 \
                or stride % width:
            raise InvalidArgumentError(
                f"stride must be 0 or a positive multiple of the access width ({width} "
                f"bytes), not {stride!r}", target=self.describe())
        self.check_access(offset, width)
        if count > 1:
            self.check_access(offset + (count - 1) * stride, width)

    def _read_block(self, offset: int, count: int, stride: int, width: int) -> array[int]:
        self._check_block(offset, count, stride, width)
        return array(_TYPECODES[width], [self._read(offset + i * stride, width)
                                         for i in range(count)])

    def _write_block(self, offset: int, values: Sequence[int], stride: int,
                     width: int) -> None:
        self._check_block(offset, len(values), stride, width)
        limit = 1 << (8 * width)
        for value in values:
            if not isinstance(value, int) or not 0 <= value < limit:
                raise InvalidArgumentError(f"value {value!r} does not fit in {width} bytes",
                                           target=self.describe())
        for i, value in enumerate(values):
            self._write(offset + i * stride, width, value)

    def read32_block(self, offset: int, count: int, *, stride: int = 4) -> array[int]:
        """``count`` 4-byte reads, in order, from ``offset``, ``offset +
        stride``, ... (bytes; ``stride`` 0 reads one register ``count``
        times, e.g. a FIFO): each one access of exactly 4 bytes, as the
        loop over :meth:`read32` would make, in one call.  Returns an
        ``array('I')`` of the values.  Every access is checked before the
        first is made."""
        return self._read_block(offset, count, stride, 4)

    def write32_block(self, offset: int, values: Sequence[int], *, stride: int = 4) -> None:
        """One 4-byte write of each of ``values``, in order, at ``offset``,
        ``offset + stride``, ... (bytes; ``stride`` 0 writes one register
        ``len(values)`` times): a descriptor or a block of registers in one
        call.  Every access and value is checked before the first write."""
        self._write_block(offset, values, stride, 4)

    def read64_block(self, offset: int, count: int, *, stride: int = 8) -> array[int]:
        """As :meth:`read32_block` with 8-byte accesses; an ``array('Q')``."""
        return self._read_block(offset, count, stride, 8)

    def write64_block(self, offset: int, values: Sequence[int], *, stride: int = 8) -> None:
        """As :meth:`write32_block` with 8-byte accesses."""
        self._write_block(offset, values, stride, 8)


#: array typecodes of unsigned integers of 4 and 8 bytes
_TYPECODES = {4: "I" if array("I").itemsize == 4 else "L", 8: "Q"}


@dataclass(frozen=True)
class Field:
    """A bit field of a register: ``width`` bits starting at bit ``lsb``.

    Thread safety: immutable; safe to share between threads.
    """

    name: str  #: the field's name (attribute and keyword of the register)
    lsb: int  #: least significant bit (0 = bit 0)
    width: int = 1  #: bits
    access: str = "rw"  #: "rw", "ro" (read-only) or "wo" (write-only)
    doc: str = ""  #: what the field means

    def __post_init__(self) -> None:
        if self.lsb < 0 or self.width < 1:
            raise ValueError(f"field {self.name}: lsb must be >= 0 and width >= 1")
        if self.access not in _ACCESS:
            raise ValueError(f"field {self.name}: access must be one of {_ACCESS}")

    @property
    def mask(self) -> int:
        """The field's bits in place (``((1 << width) - 1) << lsb``)."""
        return ((1 << self.width) - 1) << self.lsb

    @property
    def max(self) -> int:
        """Largest value the field holds."""
        return (1 << self.width) - 1

    def get(self, register_value: int) -> int:
        """The field's value in ``register_value``."""
        return (register_value >> self.lsb) & self.max

    def put(self, register_value: int, value: int) -> int:
        """``register_value`` with the field replaced by ``value``."""
        if not isinstance(value, int) or not 0 <= value <= self.max:
            raise InvalidArgumentError(
                f"value {value!r} does not fit field {self.name} ({self.width} bits)")
        return (register_value & ~self.mask) | (value << self.lsb)


@dataclass(frozen=True)
class Register:
    """A register: ``width`` bytes at byte ``offset`` of its block.

    Thread safety: immutable; safe to share between threads.
    """

    name: str  #: the register's name (attribute of the bound block)
    offset: int  #: bytes from the start of the block
    width: int = 4  #: bytes (1, 2, 4 or 8)
    fields: tuple[Field, ...] = ()  #: the bit fields, if the register has named ones
    access: str = "rw"  #: "rw", "ro" (writes refused) or "wo" (reads refused)
    doc: str = ""  #: what the register does
    _by_name: Mapping[str, Field] = dc_field(default_factory=dict, init=False, repr=False,
                                          compare=False)

    def __post_init__(self) -> None:
        if self.width not in WIDTHS:
            raise ValueError(f"register {self.name}: width must be 1, 2, 4 or 8 bytes")
        if self.offset < 0 or self.offset % self.width:
            raise ValueError(f"register {self.name}: offset {self.offset:#x} is not aligned "
                             f"to its width ({self.width} bytes)")
        if self.access not in _ACCESS:
            raise ValueError(f"register {self.name}: access must be one of {_ACCESS}")
        object.__setattr__(self, "fields", tuple(self.fields))
        names: dict[str, Field] = {}
        used = 0
        for f in self.fields:
            if f.lsb + f.width > 8 * self.width:
                raise ValueError(f"field {f.name} does not fit register {self.name}")
            if f.mask & used:
                raise ValueError(f"field {f.name} overlaps another field of {self.name}")
            if f.name in names:
                raise ValueError(f"register {self.name} has two fields named {f.name}")
            used |= f.mask
            names[f.name] = f
        object.__setattr__(self, "_by_name", names)

    def field(self, name: str) -> Field:
        """The field called ``name`` (KeyError naming the known ones)."""
        try:
            return self._by_name[name]
        except KeyError:
            known = ", ".join(self._by_name) or "none"
            raise KeyError(f"register {self.name} has no field {name!r} (fields: {known})") \
                from None

    def decode(self, value: int) -> dict[str, int]:
        """Every field's value in ``value``."""
        return {f.name: f.get(value) for f in self.fields}

    def encode(self, base: int = 0, **fields: int) -> int:
        """``base`` with the named fields replaced."""
        value = base
        for name, v in fields.items():
            value = self.field(name).put(value, v)
        return value


class RegisterBlock:
    """A named set of registers, bound to a :class:`RegisterIO` with
    :meth:`bind`.

    Thread safety: immutable after construction; safe to share.
    """

    def __init__(self, name: str, registers: Iterable[Register], *, size: int | None = None,
                 doc: str = "") -> None:
        self.name = name  #: block name used in messages
        self.doc = doc  #: free-form description
        self._registers: dict[str, Register] = {}
        for reg in registers:
            if reg.name in self._registers:
                raise ValueError(f"block {name} has two registers named {reg.name}")
            self._registers[reg.name] = reg
        end = max((r.offset + r.width for r in self._registers.values()), default=0)
        #: Bytes the block spans (at least up to the end of its last register).
        self.size = end if size is None else size
        if self.size < end:
            raise ValueError(f"block {name}: size {self.size:#x} is smaller than its registers")

    def __getitem__(self, name: str) -> Register:
        try:
            return self._registers[name]
        except KeyError:
            raise KeyError(f"block {self.name} has no register {name!r}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._registers

    def __iter__(self) -> Iterator[Register]:
        return iter(self._registers.values())

    def __len__(self) -> int:
        return len(self._registers)

    def __repr__(self) -> str:
        return f"<RegisterBlock {self.name}: {len(self)} registers>"

    def bind(self, io: RegisterIO, base: int = 0) -> BoundRegisters:
        """The registers of this block at byte ``base`` of ``io``."""
        if base < 0 or base + self.size > io.size:
            raise InvalidArgumentError(
                f"block {self.name} ({self.size:#x} bytes at {base:#x}) does not fit the "
                f"{io.size:#x}-byte window", target=io.describe())
        return BoundRegisters(self, io, base)


class BoundRegister:
    """One register of a bound block: every method is one access (reads)
    or one access (writes), or exactly one read then one write
    (:meth:`modify`, :meth:`set`).

    Thread safety: keeps no state of its own; a read-modify-write (setting a
    field) is not atomic: serialise those in the driver.
    """

    def __init__(self, register: Register, io: RegisterIO, base: int) -> None:
        self.register = register  #: the description
        self.io = io  #: where it is accessed
        self.address = base + register.offset  #: byte offset in ``io``

    def __repr__(self) -> str:
        return f"<register {self.register.name} at {self.address:#x} of {self.io.describe()}>"

    def _check(self, writing: bool) -> None:
        reg = self.register
        if writing and reg.access == "ro":
            raise InvalidArgumentError(f"register {reg.name} is read-only",
                                       target=self.io.describe())
        if not writing and reg.access == "wo":
            raise InvalidArgumentError(f"register {reg.name} is write-only",
                                       target=self.io.describe())

    def read(self) -> int:
        """One read of the whole register."""
        self._check(False)
        return self.io.read(self.address, self.register.width)

    def write(self, value: int | None = None, **fields: int) -> None:
        """One write: ``value``, or the named fields over zero (or over
        ``value`` when both are given)."""
        self._check(True)
        out = self.register.encode(value or 0, **fields) if fields else (value or 0)
        self.io.write(self.address, self.register.width, out)

    def get(self, name: str) -> int:
        """One read; the value of field ``name``."""
        return self.register.field(name).get(self.read())

    def fields(self) -> dict[str, int]:
        """One read, decoded into every field."""
        return self.register.decode(self.read())

    def modify(self, **fields: int) -> int:
        """Read-modify-write of the named fields; returns the value written."""
        self._check(True)
        value = self.register.encode(self.read(), **fields)
        self.io.write(self.address, self.register.width, value)
        return value

    def set(self, name: str, value: int) -> int:
        """Read-modify-write of one field; returns the register value written."""
        return self.modify(**{name: value})


class BoundRegisters:
    """A register block bound to a window: registers by attribute
    (``regs.STATUS``) or by name (``regs["STATUS"]``).

    Thread safety: immutable after construction; a read-modify-write
    (setting a field) is not atomic: serialise those in the driver.
    """

    def __init__(self, block: RegisterBlock, io: RegisterIO, base: int) -> None:
        self.block = block  #: the description
        self.io = io  #: where the registers are accessed
        self.base = base  #: byte offset of the block in ``io``
        self._bound = {r.name: BoundRegister(r, io, base) for r in block}

    def __getitem__(self, name: str) -> BoundRegister:
        try:
            return self._bound[name]
        except KeyError:
            raise KeyError(f"block {self.block.name} has no register {name!r}") from None

    def __getattr__(self, name: str) -> BoundRegister:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._bound[name]
        except KeyError:
            raise AttributeError(f"block {self.block.name} has no register {name!r}") from None

    def __iter__(self) -> Iterator[BoundRegister]:
        return iter(self._bound.values())

    def __repr__(self) -> str:
        return f"<{self.block.name} registers at {self.base:#x} of {self.io.describe()}>"

    def read(self, name: str) -> int:
        """One read of register ``name``."""
        return self[name].read()

    def write(self, name: str, value: int | None = None, **fields: int) -> None:
        """One write of register ``name`` (see :meth:`BoundRegister.write`)."""
        self[name].write(value, **fields)

    def read_field(self, register: str, field_name: str) -> int:
        """One read of ``register``; the value of its field ``field_name``."""
        return self[register].get(field_name)

    def write_field(self, register: str, field_name: str, value: int) -> int:
        """Read-modify-write of one field; returns the register value written."""
        return self[register].set(field_name, value)

    def dump(self) -> dict[str, int]:
        """One read of every readable register, by name (reads can have
        side effects on devices: use on registers where they do not)."""
        return {r.register.name: r.read() for r in self if r.register.access != "wo"}
