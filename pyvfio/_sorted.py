"""A sorted set of integers (IOVAs) with cheap inserts at any size.

A plain sorted list costs O(n) per insert or removal (the list shifts its
tail), which shows at 100k live mappings.  Here the keys live in blocks of
at most ``2 * BLOCK`` sorted keys, found by bisecting the blocks' first
keys: lookups cost O(log n), inserts and removals O(log n + BLOCK).  Used by
the objects layer to index its mappings and by the fake kernel's interval
maps.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from typing import Iterator

__all__ = ["SortedKeys", "BLOCK"]

#: keys per block after a split (a block splits when it exceeds twice this)
BLOCK = 512


class SortedKeys:
    """Distinct integers in ascending order.  The caller keeps them
    distinct (:meth:`add` of a present key adds it twice)."""

    __slots__ = ("_blocks", "_firsts", "_len")

    def __init__(self) -> None:
        self._blocks: list[list[int]] = []  # sorted keys, in blocks
        self._firsts: list[int] = []  # first key of each block
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def __iter__(self) -> Iterator[int]:
        for block in self._blocks:
            yield from block

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, int) or not self._blocks:
            return False
        block = self._blocks[max(bisect_right(self._firsts, key) - 1, 0)]
        i = bisect_left(block, key)
        return i < len(block) and block[i] == key

    def clear(self) -> None:
        """Remove every key."""
        self._blocks.clear()
        self._firsts.clear()
        self._len = 0

    def add(self, key: int) -> None:
        """Insert ``key``."""
        self._len += 1
        if not self._blocks:
            self._blocks.append([key])
            self._firsts.append(key)
            return
        b = bisect_right(self._firsts, key) - 1
        if b < 0:
            b = 0
            self._firsts[0] = key
        block = self._blocks[b]
        insort(block, key)
        if len(block) > 2 * BLOCK:
            self._blocks[b:b + 1] = [block[:BLOCK], block[BLOCK:]]
            self._firsts[b:b + 1] = [block[0], block[BLOCK]]

    def remove(self, key: int) -> None:
        """Delete ``key``; KeyError if it is not present."""
        b = bisect_right(self._firsts, key) - 1
        if b >= 0:
            block = self._blocks[b]
            i = bisect_left(block, key)
            if i < len(block) and block[i] == key:
                del block[i]
                self._len -= 1
                if not block:
                    del self._blocks[b]
                    del self._firsts[b]
                elif i == 0:
                    self._firsts[b] = block[0]
                return
        raise KeyError(key)

    def floor(self, key: int) -> int | None:
        """The largest key <= ``key``, or None."""
        b = bisect_right(self._firsts, key) - 1
        if b < 0:
            return None
        block = self._blocks[b]
        return block[bisect_right(block, key) - 1]

    def irange(self, lo: int, hi: int | None = None) -> Iterator[int]:
        """Keys ``k`` with ``lo <= k`` (and ``k <= hi`` when given), ascending."""
        b = max(bisect_right(self._firsts, lo) - 1, 0)
        for bi in range(b, len(self._blocks)):
            block = self._blocks[bi]
            i = bisect_left(block, lo) if bi == b else 0
            if hi is None or block[-1] <= hi:
                yield from block[i:]
            else:
                yield from block[i:bisect_right(block, hi)]
                return
