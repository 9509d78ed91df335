"""Free lists of byte ranges: what the IOVA allocator and the DMA pool
carve their allocations out of and merge freed ranges back into."""

from __future__ import annotations

from dataclasses import dataclass


def round_up(value: int, align: int) -> int:
    """``value`` rounded up to a multiple of ``align``."""
    return (value + align - 1) // align * align


def is_pow2(value: int) -> bool:
    """``value`` is a positive power of two."""
    return value > 0 and not value & (value - 1)


@dataclass(frozen=True)
class Block:
    """A free range: ``size`` bytes from ``start``."""

    start: int
    size: int


def carve(free: list[Block], i: int, start: int, size: int) -> None:
    """Replace the free block ``free[i]`` by what is left of it around
    ``[start, start + size)`` (which lies inside it)."""
    block = free[i]
    end = block.start + block.size
    pieces = []
    if start > block.start:
        pieces.append(Block(block.start, start - block.start))
    if start + size < end:
        pieces.append(Block(start + size, end - start - size))
    free[i:i + 1] = pieces


def give_back(free: list[Block], start: int, size: int) -> list[Block]:
    """The free list with ``[start, start + size)`` added back, sorted,
    adjacent blocks merged."""
    blocks = sorted(free + [Block(start, size)], key=lambda b: b.start)
    merged: list[Block] = []
    for b in blocks:
        if merged and merged[-1].start + merged[-1].size == b.start:
            merged[-1] = Block(merged[-1].start, merged[-1].size + b.size)
        else:
            merged.append(b)
    return merged
