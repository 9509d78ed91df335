"""Sorted maps of non-overlapping address intervals.

Used by the fake kernel for IOVA mappings (type1 and iommufd), reserved
and allowed ranges.  Intervals are inclusive ``[start, last]`` like the
kernel's interval trees (``last`` avoids overflow at the top of the 64-bit
space).  Lookups cost O(log n); inserts and removals O(log n + B) with a
bounded block size B (the starts are a :class:`pyvfio._sorted.SortedKeys`),
so the cost stays flat from a thousand to hundreds of thousands of live
mappings.
"""

from __future__ import annotations

from typing import Generic, Iterable, Iterator, TypeVar

from .._sorted import SortedKeys

__all__ = ["IntervalMap", "align_up"]

V = TypeVar("V")


def align_up(value: int, alignment: int) -> int:
    """Round ``value`` up to a multiple of ``alignment`` (a power of two)."""
    return (value + alignment - 1) & ~(alignment - 1)


class IntervalMap(Generic[V]):
    """Non-overlapping inclusive intervals ``[start, last]`` -> value."""

    def __init__(self) -> None:
        self._starts = SortedKeys()
        self._entries: dict[int, tuple[int, V]] = {}  # start -> (last, value)

    @classmethod
    def from_sorted(cls, items: Iterable[tuple[int, int, V]]) -> IntervalMap[V]:
        """A map of ``(start, last, value)`` intervals given sorted by start
        and disjoint (not checked: the caller has), built in O(n)."""
        out: IntervalMap[V] = cls()
        for start, last, value in items:
            out._entries[start] = (last, value)
            out._starts.add(start)
        return out

    # -- basic container protocol -------------------------------------------
    def __len__(self) -> int:
        return len(self._entries)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def __iter__(self) -> Iterator[tuple[int, int, V]]:
        for start in self._starts:
            last, value = self._entries[start]
            yield start, last, value

    def __repr__(self) -> str:
        body = ", ".join(f"[{s:#x}, {l:#x}]" for s, l, _ in self)
        return f"IntervalMap({body})"

    def clear(self) -> None:
        """Remove every interval."""
        self._starts.clear()
        self._entries.clear()

    # -- queries ----------------------------------------------------------------
    def get(self, start: int) -> tuple[int, V] | None:
        """``(last, value)`` of the interval beginning exactly at ``start``."""
        return self._entries.get(start)

    def find(self, addr: int) -> tuple[int, int, V] | None:
        """The interval containing ``addr``."""
        start = self._starts.floor(addr)
        if start is None:
            return None
        last, value = self._entries[start]
        return (start, last, value) if addr <= last else None

    def overlapping(self, start: int, last: int) -> Iterator[tuple[int, int, V]]:
        """Intervals that share at least one address with ``[start, last]``."""
        first = self._starts.floor(start)
        if first is not None and self._entries[first][0] >= start:
            begin = first
        else:
            begin = start
        for s in self._starts.irange(begin, last):
            l, v = self._entries[s]
            if l >= start:
                yield s, l, v

    def overlaps(self, start: int, last: int) -> bool:
        """Whether any interval overlaps ``[start, last]``."""
        # The intervals are disjoint and sorted, so their ends are sorted
        # too: the one starting last at or before ``last`` ends last.
        first = self._starts.floor(last)
        return first is not None and self._entries[first][0] >= start

    # -- updates ----------------------------------------------------------------
    def insert(self, start: int, last: int, value: V) -> None:
        """Add ``[start, last]``; ValueError if it overlaps an interval."""
        if last < start:
            raise ValueError(f"empty interval [{start:#x}, {last:#x}]")
        if self.overlaps(start, last):
            raise ValueError(f"[{start:#x}, {last:#x}] overlaps an existing interval")
        self._entries[start] = (last, value)
        self._starts.add(start)

    def remove(self, start: int) -> tuple[int, V]:
        """Remove the interval beginning at ``start``; KeyError if none."""
        last, value = self._entries.pop(start)
        self._starts.remove(start)
        return last, value

    def replace(self, start: int, value: V) -> None:
        """Change the value of the interval beginning at ``start``."""
        last, _old = self._entries[start]
        self._entries[start] = (last, value)

    # -- free-space search ------------------------------------------------------
    def first_fit(self, lo: int, hi: int, length: int, alignment: int = 1) -> int | None:
        """Lowest ``alignment``-aligned start ``s`` with ``[s, s + length - 1]``
        inside ``[lo, hi]`` and overlapping no interval; ``None`` if none."""
        if length <= 0:
            return None
        candidate = align_up(lo, alignment)
        while candidate + length - 1 <= hi:
            clash = next(self.overlapping(candidate, candidate + length - 1), None)
            if clash is None:
                return candidate
            candidate = align_up(clash[1] + 1, alignment)
        return None
