"""What every section of a topology (:mod:`.topology`) is checked with:
:class:`TopologyError`, PCI addresses and the field checkers, each
raising TopologyError with the offending key in the message."""

from __future__ import annotations

import re
from typing import Any

__all__ = ["TopologyError", "normalize_bdf", "check_int", "check_bool", "check_keys",
           "MODEL_PARAM_PREFIX"]

#: Keys that models may define for themselves (passed through untouched).
MODEL_PARAM_PREFIX = "model_"

_BDF = re.compile(r"^(?:([0-9a-fA-F]{4}):)?([0-9a-fA-F]{2}):([0-1][0-9a-fA-F])\.([0-7])$")


class TopologyError(ValueError):
    """A topology is malformed; the message names the offending entry."""


def normalize_bdf(bdf: object, where: str = "bdf") -> str:
    """``"00:02.0"`` -> ``"0000:00:02.0"``; TopologyError when malformed."""
    if not isinstance(bdf, str):
        raise TopologyError(f"{where}: a PCI address must be a string, not {_shown(bdf)}")
    m = _BDF.match(bdf.strip())
    if not m:
        raise TopologyError(f"{where}: {_shown(bdf)} is not a PCI address (DDDD:BB:DD.F)")
    domain, bus, dev, fn = m.groups()
    return f"{(domain or '0000').lower()}:{bus.lower()}:{dev.lower()}.{fn}"


def _shown(value: object) -> str:
    """``value`` for a one-line message: long strings and numbers cut short,
    containers by their kind (they may be huge or nested deeply)."""
    if isinstance(value, (list, dict)):
        return "a list" if isinstance(value, list) else "an object"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:#x}" if value.bit_length() <= 128 else f"a {value.bit_length()}-bit number"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


#: The longest integer string taken (a 64-bit value in binary, with prefix and sign).
_MAX_INT_TEXT = 80


def check_int(value: object, where: str, lo: int | None = None, hi: int | None = None) -> int:
    """An integer (or a string of one in ASCII digits, any base) within
    ``[lo, hi]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str):
            # int() also takes other scripts' digits ("\u0663" is 3): ASCII only
            if not value.isascii() or len(value) > _MAX_INT_TEXT:
                raise TopologyError(f"{where}: {_shown(value)} is not an integer")
            try:
                value = int(value, 0)
            except ValueError:
                raise TopologyError(f"{where}: {_shown(value)} is not an integer") from None
        else:
            raise TopologyError(f"{where}: {_shown(value)} is not an integer")
    assert isinstance(value, int)
    if lo is not None and value < lo:
        raise TopologyError(f"{where}: {_shown(value)} is below the minimum {lo:#x}")
    if hi is not None and value > hi:
        raise TopologyError(f"{where}: {_shown(value)} is above the maximum {hi:#x}")
    return value


def check_bool(value: object, where: str) -> bool:
    """true or false."""
    if not isinstance(value, bool):
        raise TopologyError(f"{where}: {_shown(value)} is not true or false")
    return value


def check_keys(d: dict[str, Any], allowed: set[str], where: str) -> None:
    """No key of ``d`` outside ``allowed`` (model parameters aside)."""
    extra = sorted(k for k in d if k not in allowed and not k.startswith(MODEL_PARAM_PREFIX))
    if extra:
        raise TopologyError(f"{where}: unknown key(s) {', '.join(map(repr, extra))}")
