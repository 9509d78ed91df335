"""IntervalMap and the SortedKeys beneath it against brute-force references."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvfio import _sorted
from pyvfio._sorted import SortedKeys
from pyvfio.fake.intervals import IntervalMap, align_up


def test_basic_queries() -> None:
    m: IntervalMap[str] = IntervalMap()
    m.insert(0x1000, 0x1FFF, "a")
    m.insert(0x4000, 0x4FFF, "b")
    assert m.find(0x1800) == (0x1000, 0x1FFF, "a")
    assert m.find(0x2000) is None
    assert [s for s, _, _ in m.overlapping(0x1FFF, 0x4000)] == [0x1000, 0x4000]
    assert not m.overlaps(0x2000, 0x3FFF)
    with pytest.raises(ValueError, match="overlaps"):
        m.insert(0x1FFF, 0x2FFF, "c")
    with pytest.raises(ValueError, match="empty"):
        m.insert(5, 4, "d")
    assert m.first_fit(0, 0xFFFF, 0x2000, 0x1000) == 0x2000
    assert m.first_fit(0x1000, 0x3FFF, 0x3000, 0x1000) is None
    assert m.remove(0x1000) == (0x1FFF, "a")
    with pytest.raises(KeyError):
        m.remove(0x1000)
    assert len(m) == 1 and list(m) == [(0x4000, 0x4FFF, "b")]


def test_top_of_address_space() -> None:
    m: IntervalMap[int] = IntervalMap()
    top = (1 << 64) - 1
    m.insert(top - 0xFFF, top, 1)
    assert m.find(top) == (top - 0xFFF, top, 1)
    assert m.first_fit(top - 0x1FFF, top, 0x1000) == top - 0x1FFF


def test_align_up() -> None:
    assert align_up(0, 4096) == 0
    assert align_up(1, 4096) == 4096
    assert align_up(4096, 4096) == 4096


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 3000), st.integers(1, 40)), max_size=400))
def test_matches_reference(ops: list[tuple[bool, int, int]]) -> None:
    """Random inserts/removes (many, to force block splits) agree with a
    set of occupied addresses."""
    saved, _sorted.BLOCK = _sorted.BLOCK, 4  # tiny blocks: exercise splits
    try:
        _run_against_reference(ops)
    finally:
        _sorted.BLOCK = saved


def _run_against_reference(ops: list[tuple[bool, int, int]]) -> None:
    m: IntervalMap[int] = IntervalMap()
    ref: dict[int, int] = {}  # start -> last
    for insert, start, length in ops:
        last = start + length - 1
        clash = any(s <= last and start <= l for s, l in ref.items())
        if insert:
            if clash:
                with pytest.raises(ValueError):
                    m.insert(start, last, start)
            else:
                m.insert(start, last, start)
                ref[start] = last
        elif start in ref:
            assert m.remove(start) == (ref.pop(start), start)
        assert m.overlaps(start, last) == any(s <= last and start <= l for s, l in ref.items())
        probe = start + length // 2
        expected = next(((s, l) for s, l in ref.items() if s <= probe <= l), None)
        found = m.find(probe)
        assert (found[:2] if found else None) == expected
    assert [(s, l) for s, l, _ in m] == sorted(ref.items())
    q0, q1 = 1000, 1500
    assert [s for s, _, _ in m.overlapping(q0, q1)] == sorted(
        s for s, l in ref.items() if s <= q1 and q0 <= l)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["add", "remove", "floor", "irange"]),
                          st.integers(0, 300), st.integers(0, 60)), max_size=500))
def test_sorted_keys_match_a_sorted_list(ops: list[tuple[str, int, int]]) -> None:
    """SortedKeys with tiny blocks (many splits and emptied blocks) against
    a plain sorted list."""
    saved, _sorted.BLOCK = _sorted.BLOCK, 2
    try:
        keys = SortedKeys()
        ref: list[int] = []
        for op, key, span in ops:
            if op == "add" and key not in ref:
                keys.add(key)
                ref = sorted(ref + [key])
            elif op == "remove":
                if key in ref:
                    keys.remove(key)
                    ref.remove(key)
                else:
                    with pytest.raises(KeyError):
                        keys.remove(key)
            elif op == "floor":
                below = [k for k in ref if k <= key]
                assert keys.floor(key) == (below[-1] if below else None)
            elif op == "irange":
                assert list(keys.irange(key, key + span)) == \
                    [k for k in ref if key <= k <= key + span]
                assert list(keys.irange(key)) == [k for k in ref if k >= key]
            assert list(keys) == ref and len(keys) == len(ref)
            assert bool(keys) == bool(ref)
            assert all(k in keys for k in ref) and (key in keys) == (key in ref)
            # every block within its bound, none empty, firsts in step
            assert all(0 < len(b) <= 2 * _sorted.BLOCK for b in keys._blocks)
            assert keys._firsts == [b[0] for b in keys._blocks]
    finally:
        _sorted.BLOCK = saved
