"""Inclusive ``[start, last]`` span arithmetic of the iommufd fake.

What the kernel does with interval_tree_span_iter (lib/interval_tree.c)
and a few bit helpers of include/linux/log2.h and bitops.h, on sorted
lists of inclusive spans: used by the I/O page table (holes of the
reserved ranges, free IOVA space) and by the pin accounting of
:mod:`.pages` (the union of the filled page ranges).
"""

from __future__ import annotations

from typing import Iterable

__all__ = ["ULONG_MAX", "roundup_pow_of_two", "lowest_bit", "merge_spans", "span_holes",
           "subtract_spans", "spans_size"]

#: The largest ``unsigned long`` (64-bit): the last IOVA.
ULONG_MAX = (1 << 64) - 1


def roundup_pow_of_two(value: int) -> int:
    """roundup_pow_of_two: the smallest power of two >= ``value`` (1 for 0)."""
    return 1 << (value - 1).bit_length() if value > 1 else 1


def lowest_bit(value: int) -> int:
    """1 << __ffs(value) (value != 0)."""
    return value & -value


def merge_spans(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sort inclusive spans and merge overlapping or touching ones (the
    "used" spans of interval_tree_span_iter)."""
    out: list[tuple[int, int]] = []
    for start, last in sorted(spans):
        if out and start <= out[-1][1] + 1:
            if last > out[-1][1]:
                out[-1] = (out[-1][0], last)
        else:
            out.append((start, last))
    return out


def span_holes(merged: list[tuple[int, int]], lo: int, hi: int) -> list[tuple[int, int]]:
    """The holes of ``merged`` (sorted, disjoint) inside ``[lo, hi]``."""
    holes: list[tuple[int, int]] = []
    pos = lo
    for start, last in merged:
        if last < pos:
            continue
        if start > hi:
            break
        if start > pos:
            holes.append((pos, start - 1))
        if last >= hi:
            return holes
        pos = last + 1
    if pos <= hi:
        holes.append((pos, hi))
    return holes


def subtract_spans(span: tuple[int, int], merged: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of ``span`` not covered by ``merged``."""
    return span_holes(merged, span[0], span[1])


def spans_size(spans: Iterable[tuple[int, int]]) -> int:
    """The number of units the inclusive ``(start, last)`` spans cover
    (summed; overlapping spans count twice)."""
    return sum(last - start + 1 for start, last in spans)
