"""How sysfs attributes parse what is written to them: the kernel's
string-to-number conversions (lib/kstrtox.c), sysfs_streq (lib/string.c)
and the boolean module parameters (kernel/params.c)."""

from __future__ import annotations

import errno
import re

from ..core import errno_error

__all__ = ["sysfs_streq", "scan_hex", "parse_bool", "parse_uint", "parse_int"]


def sysfs_streq(a: str, b: str) -> bool:
    """sysfs_streq: equal, ignoring one trailing newline on either side."""
    return a.removesuffix("\n") == b.removesuffix("\n")


def scan_hex(buf: str, limit: int) -> list[int]:
    """sscanf(buf, "%x %x ...") with up to ``limit`` conversions."""
    values: list[int] = []
    pos = 0
    pattern = re.compile(r"\s*(?:0[xX])?([0-9a-fA-F]+)")
    while len(values) < limit:
        m = pattern.match(buf, pos)
        if not m:
            break
        values.append(int(m.group(1), 16) & 0xFFFFFFFF)
        pos = m.end()
    return values


def parse_bool(buf: str) -> bool:
    """param_set_bool / kstrtobool."""
    s = buf.strip()
    if s[:1] in ("y", "Y", "1"):
        return True
    if s[:1] in ("n", "N", "0"):
        return False
    if s.lower() == "on":
        return True
    if s.lower() == "off":
        return False
    raise errno_error(errno.EINVAL, f"{buf!r} is not a boolean")


def parse_uint(buf: str, bits: int = 32) -> int:
    """kstrtouint with base 0 (one trailing newline allowed)."""
    s = buf.removesuffix("\n")
    m = re.fullmatch(r"\+?(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)", s)
    if not m:
        raise errno_error(errno.EINVAL, f"{buf!r} is not a number")
    value = int(m.group(1), 0)
    if value >= 1 << bits:
        raise errno_error(errno.ERANGE, f"{buf!r} is out of range")
    return value


def parse_int(buf: str) -> int:
    """kstrtoint with base 0."""
    s = buf.removesuffix("\n")
    m = re.fullmatch(r"([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)", s)
    if not m:
        raise errno_error(errno.EINVAL, f"{buf!r} is not a number")
    value = int(m.group(2), 0) * (-1 if m.group(1) == "-" else 1)
    if not -(1 << 31) <= value < 1 << 31:
        raise errno_error(errno.ERANGE, f"{buf!r} is out of range")
    return value
